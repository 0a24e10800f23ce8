//! gdb on a replayed boot: Debian's gdb-multiarch, in batch mode, drives `ftvm replay --gdb`:
//! a breakpoint at a kernel function, 100 steps forward and 100 back to the same registers,
//! reverse-continue to the last write of a kernel variable, and a replay that ends with the
//! digest of an undisturbed one.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(240);

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ftvm-debug-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Record a boot that powers off as soon as the guest is ready.
fn record_boot(log: &Path) {
    let mut child = guest_command(&["record", "--log", log.to_str().unwrap()])
        .spawn()
        .expect("spawn ftvm record");
    let (_, rest) = await_ready(&mut child).expect("the recorded guest became ready");
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"echo debug-$((6*7)); poweroff\n")
        .unwrap();
    let done = wait_limited(child, LIMIT, "recorded guest");
    assert!(done.status.success(), "record exit {:?}", done.status);
    let console = rest.recv_timeout(LIMIT).unwrap_or_default();
    assert!(String::from_utf8_lossy(&console).contains("debug-42"));
}

/// The text between `echo ==NAME==` markers of a gdb script's output.
fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = format!("=={name}==");
    let from = out
        .find(&start)
        .unwrap_or_else(|| panic!("no {start} in gdb's output:\n{out}"))
        + start.len();
    let rest = &out[from..];
    let end = rest.find("\n==").map_or(rest.len(), |i| i + 1);
    rest[..end].trim()
}

/// The instruction count `monitor count` printed in a section.
fn count_in(s: &str) -> u64 {
    let after = s
        .split("instruction ")
        .nth(1)
        .unwrap_or_else(|| panic!("no count in {s:?}"));
    after
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no count in {s:?}"))
}

fn value_in(s: &str) -> u64 {
    // "$N = 0x..."
    let v = s.rsplit("= 0x").next().unwrap_or("");
    let hex: String = v.chars().take_while(char::is_ascii_hexdigit).collect();
    u64::from_str_radix(&hex, 16).unwrap_or_else(|_| panic!("no value in {s:?}"))
}

#[test]
fn gdb_steps_back_and_reverse_continues_to_a_watchpoint() {
    if Command::new("gdb-multiarch")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("gdb-multiarch is missing: scripts/setup.sh installs it");
    }
    let d = dir("gdb");
    let log = d.join("boot.log");
    record_boot(&log);
    let plain = run_ftvm(
        &["replay", "--log", log.to_str().unwrap(), "--digest"],
        LIMIT,
    );
    assert!(plain.status.success(), "plain replay failed");
    let plain_digest = digest_of(&plain);

    let addr = free_local_addr();
    let mut stub = ftvm()
        .args([
            "replay",
            "--log",
            log.to_str().unwrap(),
            "--digest",
            "--gdb",
            &addr,
            "--checkpoint-every",
            "5000000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ftvm replay --gdb");
    // Wait until it listens.
    let mut err = BufReader::new(stub.stderr.take().unwrap());
    let t0 = Instant::now();
    let mut line = String::new();
    while !line.contains("waiting on") {
        line.clear();
        if err.read_line(&mut line).unwrap_or(0) == 0 || t0.elapsed() > LIMIT {
            let _ = stub.kill();
            panic!("the stub never listened");
        }
    }
    let stub_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });

    let vmlinux = guest_out().join("vmlinux");
    let script = d.join("script.gdb");
    std::fs::write(
        &script,
        format!(
            "set pagination off
set confirm off
file {vmlinux}
target remote {addr}
break *run_init_process
continue
echo ==at-break==\\n
monitor count
info registers
p/x $satp
p/x $sstatus
p/x $fcsr
info registers priv
echo ==forward==\\n
stepi 100
monitor count
info registers
echo ==back==\\n
reverse-stepi 100
monitor count
info registers
p/x $satp
p/x $sstatus
p/x $fcsr
info registers priv
echo ==jiffies-now==\\n
p/x *(unsigned long *)&jiffies
delete
watch *(unsigned long *)&jiffies
echo ==reverse-continue==\\n
reverse-continue
echo ==after-reverse==\\n
monitor count
p/x *(unsigned long *)&jiffies
echo ==insn==\\n
x/i $pc
echo ==forward-watch==\\n
continue
monitor count
p/x *(unsigned long *)&jiffies
echo ==done==\\n
detach
",
            vmlinux = vmlinux.display()
        ),
    )
    .unwrap();
    // One stream, in order: gdb prints a monitor command's output on stderr.
    let gdb = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec gdb-multiarch -batch -nx -x '{}' 2>&1",
            script.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gdb-multiarch");
    let g = wait_limited(gdb, LIMIT, "gdb-multiarch");
    let done = wait_limited(stub, LIMIT, "ftvm replay --gdb");
    let out = String::from_utf8_lossy(&g.stdout).into_owned();
    let stub_log = stub_err.join().unwrap_or_default();
    let context = format!("gdb:\n{out}\nstub stderr:\n{stub_log}");

    // The breakpoint: in the kernel function, in supervisor mode, paging on.
    let at_break = section(&out, "at-break");
    assert!(
        at_break.contains("<run_init_process>"),
        "pc is not at the breakpoint: {context}"
    );
    assert!(
        at_break.contains("prv:1"),
        "not in supervisor mode: {context}"
    );
    let c0 = count_in(at_break);
    // 100 steps forward changed the registers; 100 back restored every one of them.
    let forward = section(&out, "forward");
    assert_eq!(count_in(forward), c0 + 100, "{context}");
    // Register lines (`name 0x...`) and printed values (`$N = v`, without the N).
    let regs = |s: &str| -> Vec<String> {
        s.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                match (w.next(), w.next()) {
                    (Some(n), Some(v)) if n.starts_with('$') && v == "=" => {
                        Some(w.collect::<Vec<_>>().join(" "))
                    }
                    (Some(n), Some(v))
                        if v.starts_with("0x") && n.chars().all(|c| c.is_ascii_alphanumeric()) =>
                    {
                        Some(l.split_whitespace().collect::<Vec<_>>().join(" "))
                    }
                    _ => None,
                }
            })
            .collect()
    };
    let pc = |s: &str| regs(s).into_iter().find(|l| l.starts_with("pc "));
    assert!(
        pc(forward).is_some() && pc(forward) != pc(at_break),
        "{context}"
    );
    let back = section(&out, "back");
    assert_eq!(count_in(back), c0, "{context}");
    let (b, a) = (regs(back), regs(at_break));
    assert!(a.len() >= 35, "too few registers compared: {context}");
    assert_eq!(b, a, "registers differ after 100 back: {context}");

    // Reverse-continue stops at the last store to jiffies before the breakpoint: the value
    // there is the one before that store, the instruction is the store, and it is earlier.
    let now = value_in(section(&out, "jiffies-now"));
    let rc = section(&out, "reverse-continue");
    assert!(rc.contains("atchpoint 2"), "no watchpoint stop: {context}");
    let after = section(&out, "after-reverse");
    let c1 = count_in(after);
    assert!(c1 < c0, "the watchpoint stop is not earlier: {context}");
    let before = value_in(after);
    assert!(before < now, "jiffies was not about to change: {context}");
    let insn = section(&out, "insn");
    assert!(
        insn.contains("\tsd\t") || insn.contains("\tsw\t") || insn.contains("amoadd"),
        "the watchpoint did not stop at a store: {context}"
    );
    // Forwards from there, the watchpoint stops right after that store, with its value.
    let fw = section(&out, "forward-watch");
    assert_eq!(count_in(fw), c1 + 1, "{context}");
    assert!(value_in(fw) > before, "{context}");
    assert!(section(&out, "done").contains("etached"), "{context}");

    // Debugging changed nothing: the replay ends where an undisturbed one does.
    assert!(done.status.success(), "the stub failed: {context}");
    assert_eq!(digest_of(&done), plain_digest, "{context}");
    let _ = std::fs::remove_dir_all(&d);
}

/// The segments of a kept window, oldest first.
fn segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("kept-") && n.ends_with(".log"))
        .collect();
    v.sort();
    v
}

/// `ftvm record --keep-log` keeps the last seconds of a boot as segments that replay as one
/// log, and older segments are gone.
#[test]
fn record_keeps_a_rolling_window_that_replays_verified() {
    let d = dir("record-window");
    let kept = d.join("kept");
    let mut child = guest_command(&[
        "record",
        "--keep-log",
        kept.to_str().unwrap(),
        "--keep-for",
        "2s",
    ])
    .spawn()
    .expect("spawn ftvm record");
    let (_, _rest) = await_ready(&mut child).expect("the recorded guest became ready");
    // Let the window roll on past the boot.
    std::thread::sleep(Duration::from_secs(3));
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"poweroff\n")
        .unwrap();
    let done = wait_limited(child, LIMIT, "recorded guest");
    assert!(done.status.success(), "record exit {:?}", done.status);
    let segs = segments(&kept);
    assert!(segs.len() >= 2, "segments: {segs:?}");
    assert_ne!(segs[0], "kept-000000.log", "nothing was dropped: {segs:?}");
    let r = run_ftvm(
        &["replay", "--log", kept.to_str().unwrap(), "--digest"],
        LIMIT,
    );
    let text = String::from_utf8_lossy(&r.stdout);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{text}\n{err}");
    assert!(text.contains("replay verified"), "{text}\n{err}");
    // The segments' own states were checked on the way, and the run's end.
    let digests: u64 = text
        .split(" digests")
        .next()
        .and_then(|t| t.rsplit(", ").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(digests as usize >= segs.len(), "{text}");
    assert!(!err.contains("cut short"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A backup's flight recorder: the log it follows, kept as a window; after the backup's host
/// dies (SIGKILL), the window replays verified up to where it stopped.
#[test]
fn a_backups_kept_window_replays_verified_after_it_dies() {
    let d = dir("backup-window");
    let out = guest_out();
    let psk = d.join("psk");
    std::fs::write(&psk, b"the flight recorder test's key").unwrap();
    let kept = d.join("kept");
    let arbiter = format!("file:{}", d.join("arbiter").display());
    // This test is not about failure detection: a loaded host must not make a side seem dead
    // (the dead timeout is 1 s rather than 100 ms).
    let common: Vec<String> = [
        "--psk",
        psk.to_str().unwrap(),
        "--arbiter",
        &arbiter,
        "--heartbeat-misses",
        "100",
        "--digest-every",
        "20000000",
        "--kernel",
        out.join("Image").to_str().unwrap(),
        "--initrd",
        out.join("initramfs.cpio.gz").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The primary's messages go to a file, read if it fails.
    let p_log = d.join("primary.err");
    // The kernel gives the primary its port (`:0`): no other process can take it first.
    let mut primary = ftvm()
        .args(["primary", "--listen", "127.0.0.1:0"])
        .args(&common)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&p_log).unwrap())
        .spawn()
        .unwrap();
    let addr = primary_address(&mut primary, &p_log, LIMIT).unwrap_or_else(|e| {
        let _ = primary.kill();
        panic!("{e}")
    });
    let mut backup = ftvm()
        .args(["backup", "--primary", &addr])
        .args(["--keep-log", kept.to_str().unwrap(), "--keep-for", "3s"])
        .args(&common)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = await_ready(&mut primary);
    if ready.is_err() {
        let _ = primary.kill();
        let _ = backup.kill();
        let b = backup.wait_with_output().unwrap();
        panic!(
            "no ready line: {ready:?}\nprimary ({:?}):\n{}\nbackup:\n{}",
            primary.wait(),
            std::fs::read_to_string(&p_log).unwrap_or_default(),
            String::from_utf8_lossy(&b.stderr)
        );
    }
    // Work for the window to hold, then the incident: the backup's host dies.
    for i in 0..6 {
        let cmd = format!("echo flight-{i}; redis-cli set k{i} v{i}\n");
        primary
            .stdin
            .as_mut()
            .unwrap()
            .write_all(cmd.as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
    }
    let _ = backup.kill();
    let b = backup.wait_with_output().unwrap();
    let _ = primary.kill();
    let _ = primary.wait();
    let b_err = String::from_utf8_lossy(&b.stderr);
    let segs = segments(&kept);
    assert!(segs.len() >= 2, "segments: {segs:?}\n{b_err}");
    assert_ne!(segs[0], "kept-000000.log", "nothing was dropped: {segs:?}");
    let r = run_ftvm(
        &["replay", "--log", kept.to_str().unwrap(), "--digest"],
        LIMIT,
    );
    let text = String::from_utf8_lossy(&r.stdout);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{text}\n{err}\nbackup:\n{b_err}");
    assert!(text.contains("replay verified"), "{text}\n{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// `ftvm run --gdb`: the guest boots under gdb from its first instruction; going back and
/// forth re-executes, but what the guest printed reaches the console once.
#[test]
fn run_under_gdb_goes_back_and_prints_once() {
    let d = dir("run-gdb");
    let addr = free_local_addr();
    let out = guest_out();
    let stub = ftvm()
        .args(["run", "--gdb", &addr, "--kernel"])
        .arg(out.join("Image"))
        .arg("--initrd")
        .arg(out.join("initramfs.cpio.gz"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ftvm run --gdb");
    std::thread::sleep(Duration::from_millis(500));
    let script = d.join("script.gdb");
    std::fs::write(
        &script,
        format!(
            "set pagination off
set confirm off
file {vmlinux}
target remote {addr}
echo ==start==\\n
monitor count
break *run_init_process
continue
echo ==at-break==\\n
monitor count
info registers
stepi 50
reverse-stepi 50
echo ==back==\\n
monitor count
info registers
delete
break *start_kernel
reverse-continue
echo ==start-kernel==\\n
monitor count
delete
break *run_init_process
continue
echo ==again==\\n
monitor count
detach
",
            vmlinux = out.join("vmlinux").display()
        ),
    )
    .unwrap();
    let gdb = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec gdb-multiarch -batch -nx -x '{}' 2>&1",
            script.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gdb-multiarch");
    let g = wait_limited(gdb, LIMIT, "gdb-multiarch");
    let done = wait_limited(stub, LIMIT, "ftvm run --gdb");
    let out = String::from_utf8_lossy(&g.stdout).into_owned();
    let console = String::from_utf8_lossy(&done.stdout).into_owned();
    let context = format!(
        "gdb:\n{out}\nconsole:\n{console}\nstderr:\n{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(done.status.success(), "{context}");
    assert_eq!(count_in(section(&out, "start")), 0, "{context}");
    let c0 = count_in(section(&out, "at-break"));
    assert!(c0 > 0, "{context}");
    assert_eq!(count_in(section(&out, "back")), c0, "{context}");
    let regs = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|v| v.starts_with("0x"))
            })
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert!(regs(section(&out, "at-break")).len() >= 32, "{context}");
    assert_eq!(
        regs(section(&out, "back")),
        regs(section(&out, "at-break")),
        "{context}"
    );
    let ck = count_in(section(&out, "start-kernel"));
    assert!(ck > 0 && ck < c0, "{context}");
    assert_eq!(count_in(section(&out, "again")), c0, "{context}");
    // Printed once, though the kernel ran past it three times.
    assert_eq!(
        console.matches("Freeing unused kernel image").count(),
        1,
        "{context}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
