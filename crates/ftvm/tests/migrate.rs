//! Live migration end to end, on network namespaces as hosts (the lab of the pair's tests): a
//! guest running redis moves from `ftvm run --control` on one host to `ftvm run --incoming` on
//! another while a client writes keys over ONE TCP connection, each acknowledged before the
//! next. In every mode the connection carries on, every acknowledged key reads back at the
//! destination, and the source's TAP carries no frame once the destination's has one. A
//! cancelled migration and a destination killed mid-way leave the source running with nothing
//! lost (and the source can migrate again); a source killed during a hand-over leaves the
//! destination live (it is a backup that wins the arbiter).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::lab::*;
use common::*;

const DEST: &str = "10.80.0.2:7800";

/// One migration at a time: each boots a guest and copies it, and the timing of heartbeats
/// should not depend on how many run beside it on a small machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// `ftvm run ARGS` on host `ns` with the lab's guest, TAP and the disk `disk`; stderr goes to
/// `<name>.stderr`; stdin and stdout are piped.
fn vm(lab: &Lab, ns: usize, name: &str, args: &[&str], disk: &Path) -> Proc {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    guest_on(lab, ns, name, &all, disk)
}

/// Drain a process's console output (a destination's, before and after it goes live).
fn drain_stdout(p: &mut Proc) {
    let mut out = p.c().stdout.take().unwrap();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
}

struct Hosts {
    lab: Lab,
    sock: PathBuf,
    psk: PathBuf,
    source: Proc,
    dest: Proc,
}

/// The source on host 1 (ready), a destination waiting on host 2 (`dest_args` more); `both`:
/// run options for both.
fn hosts(tag: &str, dest_args: &[&str]) -> Hosts {
    hosts_with(tag, dest_args, &[])
}

fn hosts_with(tag: &str, dest_args: &[&str], both: &[&str]) -> Hosts {
    let lab = Lab::new(tag);
    let sock = lab.dir.join("source.sock");
    let psk = lab.dir.join("psk");
    let (disk_s, disk_d) = (lab.dir.join("s.img"), lab.dir.join("d.img"));
    blank_disk(&disk_s);
    blank_disk(&disk_d);
    let mut src_args = vec!["--control", sock.to_str().unwrap()];
    src_args.extend_from_slice(both);
    let mut source = vm(&lab, 1, "source", &src_args, &disk_s);
    let mut dest_args = dest_args.to_vec();
    dest_args.extend_from_slice(both);
    let dest = destination(&lab, "destination", &dest_args, &disk_d);
    wait_ready(&mut source);
    Hosts {
        lab,
        sock,
        psk,
        source,
        dest,
    }
}

fn destination(lab: &Lab, name: &str, extra: &[&str], disk: &Path) -> Proc {
    let psk = lab.dir.join("psk");
    let mut args = vec!["--incoming", DEST, "--psk", psk.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut d = vm(lab, 2, name, &args, disk);
    drain_stdout(&mut d);
    d
}

/// `ftvm migrate` to the destination, started (not waited for).
fn migrate(h: &Hosts, extra: &[&str]) -> Proc {
    Proc(Some(
        ftvm()
            .arg("migrate")
            .arg("--control")
            .arg(&h.sock)
            .args(["--to", DEST])
            .arg("--psk")
            .arg(&h.psk)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ftvm migrate"),
    ))
}

/// Wait for a process to end (at most `limit`): its exit status and stderr.
fn outcome(p: &mut Proc, limit: Duration) -> (std::process::ExitStatus, String) {
    let out = wait_limited(p.0.take().expect("running"), limit, "ftvm migrate");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wait until the side `name`'s stderr says `what`.
fn says(lab: &Lab, name: &str, what: &str, limit: Duration) {
    let t0 = Instant::now();
    while !stderr_of(lab, name).contains(what) {
        assert!(
            t0.elapsed() < limit,
            "{name} never said {what:?}:\n{}",
            stderr_of(lab, name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn context(lab: &Lab) -> String {
    format!(
        "source:\n{}\ndestination:\n{}",
        stderr_of(lab, "source"),
        stderr_of(lab, "destination")
    )
}

/// Frames the source put on the wire after the destination's first one (must be none).
fn overlap(dest: &[Duration], source: &[Duration]) -> usize {
    match dest.iter().min() {
        Some(first) => source.iter().filter(|&&t| t >= *first).count(),
        None => 0,
    }
}

fn moves_under_load(tag: &str, mode: &str, both: &[&str]) {
    let _one = serial();
    let mut h = hosts_with(tag, &[], both);
    let cap_s = Capture::start(&h.lab, 1, "source");
    let cap_d = Capture::start(&h.lab, 2, "destination");
    let mut client = Client::start(&h.lab, 8);
    assert!(
        client.acks_for(Duration::from_secs(2)) > 0,
        "no writes before the migration"
    );
    let t0 = Instant::now();
    let mut mig = migrate(&h, &["--mode", mode]);
    let (st, err) = outcome(&mut mig, Duration::from_secs(60));
    let took = t0.elapsed();
    assert!(
        st.success() && err.contains("handed over"),
        "ftvm migrate ({st}):\n{err}\n{}",
        context(&h.lab)
    );
    // The source stops at the hand-over, with success.
    let st = exits_within(&mut h.source, Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "the source after the hand-over: {st:?}\n{}",
        context(&h.lab)
    );
    assert!(
        client.acks_for(Duration::from_secs(1)) > 0,
        "no writes after the migration\n{}",
        context(&h.lab)
    );
    let keys = client.finish(Duration::from_secs(40), &|| context(&h.lab));
    let pause = client.longest_pause_after(t0);
    // Where the longest pause began, from the start of the migration.
    let at = client
        .acks
        .windows(2)
        .filter(|w| w[0] >= t0)
        .max_by_key(|w| w[1] - w[0])
        .map_or(Duration::ZERO, |w| w[0] - t0);
    let (fs, fd) = (cap_s.frames(), cap_d.frames());
    assert!(!fd.is_empty(), "the destination never answered");
    assert_eq!(
        overlap(&fd, &fs),
        0,
        "the source sent frames once the destination had"
    );
    let dest_err = stderr_of(&h.lab, "destination");
    assert!(
        dest_err.contains("handed over; live at instruction"),
        "{dest_err}"
    );
    if mode == "postcopy" {
        assert!(dest_err.contains("post-copy complete"), "{dest_err}");
    }
    poweroff(&mut h.dest);
    eprintln!(
        "{mode}: {keys} keys read back; migrate took {} ms; longest pause seen by the client {} ms, {} ms after the migration began",
        took.as_millis(),
        pause.as_millis(),
        at.as_millis()
    );
}

#[test]
fn a_precopy_migration_moves_the_guest_under_a_write_load() {
    moves_under_load("p", "precopy", &[]);
}

#[test]
fn a_hand_over_moves_the_guest_under_a_write_load() {
    moves_under_load("h", "handover", &[]);
}

#[test]
fn a_postcopy_migration_moves_the_guest_under_a_write_load() {
    moves_under_load("o", "postcopy", &[]);
}

/// Post-copy's cost: a source that dies before the last page arrived takes the guest with it.
/// The destination must say so and stop (not hang, not run on with pages of zeros).
#[test]
fn a_source_killed_during_post_copy_stops_the_destination_with_the_reason() {
    let _one = serial();
    let mut h = hosts("q", &[]);
    // 1 MiB/s: the guest's 20-odd MiB of RAM take 20 s to push.
    let mut mig = migrate(&h, &["--mode", "postcopy", "--max-bandwidth-mib", "1"]);
    says(
        &h.lab,
        "destination",
        "of RAM still to come",
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(500));
    signal(h.source.c(), libc::SIGKILL);
    let st = exits_within(&mut h.dest, Duration::from_secs(15));
    assert!(
        st.is_some_and(|s| !s.success()),
        "the destination after its source died mid-way: {st:?}\n{}",
        context(&h.lab)
    );
    let err = stderr_of(&h.lab, "destination");
    assert!(err.contains("the guest is lost"), "{err}");
    let _ = outcome(&mut mig, Duration::from_secs(10));
}

#[test]
fn a_two_hart_guest_moves_by_hand_over() {
    moves_under_load("t", "handover", &["--smp", "2"]);
}

/// A slow migration (capped at 2 MiB/s: about 10 s for the guest's RAM) that `stop` ends
/// mid-way; the source must run on with nothing lost, and migrate again afterwards.
fn interrupted(tag: &str, stop: &dyn Fn(&mut Hosts)) {
    let _one = serial();
    let mut h = hosts(tag, &[]);
    let mut client = Client::start(&h.lab, 10);
    assert!(client.acks_for(Duration::from_secs(1)) > 0);
    let mut mig = migrate(&h, &["--max-bandwidth-mib", "2"]);
    says(
        &h.lab,
        "source",
        "pre-copy to the destination",
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(700));
    stop(&mut h);
    let (st, err) = outcome(&mut mig, Duration::from_secs(20));
    assert!(!st.success(), "ftvm migrate succeeded:\n{err}");
    // The destination never had the guest: it stops (if it still ran).
    let st = exits_within(&mut h.dest, Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| !s.success()),
        "the destination: {st:?}\n{}",
        context(&h.lab)
    );
    assert!(
        h.source.c().try_wait().unwrap().is_none(),
        "the source stopped\n{}",
        context(&h.lab)
    );
    assert!(
        client.acks_for(Duration::from_secs(1)) > 0,
        "no writes after the interruption\n{}",
        context(&h.lab)
    );
    // The source migrates again, to a fresh destination.
    let disk = h.lab.dir.join("d2.img");
    blank_disk(&disk);
    h.dest = destination(&h.lab, "destination2", &[], &disk);
    std::thread::sleep(Duration::from_millis(300));
    let mut again = migrate(&h, &[]);
    let (st, err) = outcome(&mut again, Duration::from_secs(60));
    assert!(
        st.success(),
        "the second migration: {err}\n{}",
        context(&h.lab)
    );
    let keys = client.finish(Duration::from_secs(40), &|| context(&h.lab));
    poweroff(&mut h.dest);
    eprintln!("{keys} keys read back after an interrupted migration and a second one");
}

#[test]
fn a_cancelled_migration_leaves_the_source_running() {
    interrupted("c", &|h| {
        let out = ftvm()
            .arg("migrate")
            .arg("--control")
            .arg(&h.sock)
            .arg("--cancel")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

#[test]
fn a_destination_killed_mid_way_leaves_the_source_running() {
    interrupted("k", &|h| {
        signal(h.dest.c(), libc::SIGKILL);
    });
}

#[test]
fn a_source_killed_during_a_hand_over_leaves_the_destination_live() {
    let _one = serial();
    let arbiter_path = std::env::temp_dir().join(format!("ftvm-mig-arb-{}", std::process::id()));
    let _ = std::fs::remove_file(&arbiter_path);
    let arbiter = format!("file:{}", arbiter_path.display());
    let mut h = hosts("s", &["--arbiter", &arbiter]);
    let mut client = Client::start(&h.lab, 8);
    assert!(client.acks_for(Duration::from_secs(2)) > 0);
    // The destination follows in lockstep for 5 s before the hand-over: the source dies first.
    let mut mig = migrate(
        &h,
        &[
            "--mode",
            "handover",
            "--lockstep-ms",
            "5000",
            "--arbiter",
            &arbiter,
        ],
    );
    says(
        &h.lab,
        "source",
        "destination attached",
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    signal(h.source.c(), libc::SIGKILL);
    says(
        &h.lab,
        "destination",
        "backup live at instruction",
        Duration::from_secs(10),
    );
    let (st, _) = outcome(&mut mig, Duration::from_secs(10));
    assert!(
        !st.success(),
        "ftvm migrate succeeded with its source killed"
    );
    let keys = client.finish(Duration::from_secs(40), &|| context(&h.lab));
    let pause = client.longest_pause_after(killed);
    let winner = std::fs::read_to_string(&arbiter_path).unwrap_or_default();
    assert_eq!(winner.trim(), "backup", "the arbiter's winner");
    poweroff(&mut h.dest);
    let _ = std::fs::remove_file(&arbiter_path);
    eprintln!(
        "source killed during a hand-over: {keys} keys read back, longest pause {} ms",
        pause.as_millis()
    );
}

/// Bad requests get clear errors and a non-zero exit, and leave the source running: a
/// destination nobody listens on, a missing key file, a cancel with nothing to cancel, a
/// control socket that does not exist. (Loopback only: no lab needed.)
#[test]
fn bad_migration_requests_are_refused_and_the_source_runs_on() {
    let dir = std::env::temp_dir().join(format!("ftvm-mig-err-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("s.sock");
    let psk = dir.join("psk");
    std::fs::write(&psk, b"ftvm test pre-shared key 0123456789").unwrap();
    let mut source = Proc(Some(
        guest_command(&["run", "--control", sock.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ftvm run"),
    ));
    await_ready(source.c()).expect("the source boots");
    let closed = free_local_addr();
    let ask = |args: &[&str]| {
        let out = ftvm()
            .arg("migrate")
            .arg("--control")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (st, err) = ask(&["--to", &closed, "--psk", psk.to_str().unwrap()]);
    assert!(
        !st.success() && err.contains("cannot migrate to") && err.contains("cannot connect"),
        "{err}"
    );
    let (st, err) = ask(&["--to", &closed, "--psk", "/nonexistent/key"]);
    assert!(
        !st.success() && err.contains("cannot find the key file"),
        "{err}"
    );
    let (st, err) = ask(&["--cancel"]);
    assert!(
        !st.success() && err.contains("no migration is under way"),
        "{err}"
    );
    let out = ftvm()
        .args(["migrate", "--control", "/nonexistent/s.sock", "--status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = ftvm()
        .arg("migrate")
        .arg("--control")
        .arg(&sock)
        .arg("--status")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"migrating\":false"),
        "{out:?}"
    );
    assert!(
        source.c().try_wait().unwrap().is_none(),
        "the source stopped"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
