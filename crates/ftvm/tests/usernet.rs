//! User-mode networking through passt, no root, no namespaces, no TAP: the host's redis-cli
//! reaches redis in the guest through a forwarded loopback port, live and while recording (the
//! recording then replays offline); a plain `ftvm run` of the default guest forwards redis
//! from a free port it names; a backup on the same host takes the forwarded port over when the
//! primary dies; bad options and a missing or failing passt are clear errors.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use ftvm_log::{LogReader, Next, Record};
use ftvm_machine::Input;

const LIMIT: Duration = Duration::from_secs(120);

/// A running ftvm, killed (and so its passt) if the test ends before it powered off.
struct Guest(Option<Child>);

impl Guest {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the guest runs")
    }

    /// `poweroff` on the console; ftvm must exit 0.
    fn power_off(mut self) {
        let mut child = self.0.take().expect("the guest runs");
        child
            .stdin
            .as_mut()
            .expect("stdin is piped")
            .write_all(b"poweroff\n")
            .expect("write to the console");
        let out = wait_limited(child, Duration::from_secs(60), "guest poweroff");
        assert!(out.status.success(), "ftvm exit {:?}", out.status);
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    free_local_addr()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

/// Start `cmd` and wait for the guest's ready line.
fn start(mut cmd: Command) -> Guest {
    let mut g = Guest(Some(cmd.spawn().expect("spawn ftvm")));
    if let Err(seen) = await_ready(g.child()) {
        panic!("the guest did not get ready; console was:\n{seen}");
    }
    g
}

/// `redis-cli -p PORT ARGS` on the host, bounded in time; its trimmed output.
fn redis(port: u16, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["10", "redis-cli", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Retry PING until redis answers through the forwarded port.
fn wait_redis(port: u16) {
    let t0 = Instant::now();
    loop {
        let r = redis(port, &["ping"]);
        if r == "PONG" {
            return;
        }
        assert!(
            t0.elapsed() < LIMIT,
            "redis never answered on 127.0.0.1:{port} (last: {r:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn hostfwd(port: u16) -> String {
    format!("user,hostfwd=tcp:127.0.0.1:{port}-:6379")
}

#[test]
fn host_redis_cli_reaches_the_guest() {
    let port = free_port();
    let mut cmd = guest_command(&["run", "--net", &hostfwd(port)]);
    cmd.stderr(Stdio::null());
    let g = start(cmd);
    wait_redis(port);
    assert_eq!(redis(port, &["set", "usernet", "hello"]), "OK");
    assert_eq!(redis(port, &["get", "usernet"]), "hello");
    let big = "x".repeat(100_000);
    assert_eq!(redis(port, &["set", "big", &big]), "OK");
    assert_eq!(redis(port, &["strlen", "big"]), "100000");
    g.power_off();
    // Its passt went with it: the port is free again.
    let t0 = Instant::now();
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "port {port} still taken"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_recorded_user_network_session_replays() {
    let dir = std::env::temp_dir().join(format!("ftvm-usernet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("usernet.log");
    let port = free_port();
    let mut cmd = guest_command(&[
        "record",
        "--log",
        log.to_str().expect("utf-8 path"),
        "--digest-every",
        "20000000",
        "--net",
        &hostfwd(port),
    ]);
    cmd.stderr(Stdio::null());
    let g = start(cmd);
    wait_redis(port);
    assert_eq!(redis(port, &["set", "k", "recorded"]), "OK");
    assert_eq!(redis(port, &["incr", "n"]), "1");
    assert_eq!(redis(port, &["get", "k"]), "recorded");
    g.power_off();
    let out = run_ftvm(
        &["replay", "--log", log.to_str().expect("utf-8 path")],
        Duration::from_secs(300),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("replay verified:"),
        "replay failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The frames passt delivered are in the log, as inputs.
    let mut r = LogReader::open(&log).expect("open the log");
    let mut frames = 0;
    while let Ok(Next::Record(rec)) = r.next_record() {
        if let Record::Input { inputs, .. } = rec {
            frames += inputs
                .iter()
                .filter(|i| matches!(i, Input::Frame { .. }))
                .count();
        }
    }
    assert!(frames >= 6, "only {frames} received frames in the log");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plain `ftvm run` of the default guest images (no --kernel).
fn default_run(extra: &[&str], path: Option<&str>) -> Command {
    let mut c = ftvm();
    c.arg("run")
        .args(extra)
        .env("FTVM_GUEST_DIR", guest_out().join(".."))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = path {
        c.env("PATH", p);
    }
    c
}

/// Forward ftvm's stderr lines to a channel.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let err = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first stderr line holding `needle`, within the limit.
fn line_with(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let t0 = Instant::now();
    while let Some(left) = LIMIT.checked_sub(t0.elapsed()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no stderr line with {needle:?}");
}

#[test]
fn the_default_run_forwards_redis() {
    let mut g = Guest(Some(default_run(&[], None).spawn().expect("spawn ftvm")));
    let err = stderr_lines(g.child());
    let line = line_with(&err, "the guest's redis");
    let port: u16 = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    assert!(line.contains(&format!("redis-cli -p {port}")), "{line}");
    if let Err(seen) = await_ready(g.child()) {
        panic!("the guest did not get ready; console was:\n{seen}");
    }
    wait_redis(port);
    g.power_off();
}

#[test]
fn bad_user_network_options_are_refused() {
    let refused = |args: &[&str], message: &str| {
        let out = run_ftvm(args, Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(1 | 2)),
            "{args:?}: exit {:?}, {err}",
            out.status
        );
        assert!(err.contains(message), "{args:?}: {message:?} not in {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    for (spec, message) in [
        ("user,hostfwd=udp::5353-:53", "only TCP ports"),
        ("user,hostfwd=tcp::8022:22", "no '-'"),
        ("user,hostfwd=tcp::0-:22", "host port \"0\""),
        ("user,hostfwd=tcp::8022-:99999", "guest port \"99999\""),
        ("user,hostfwd=tcp:myhost:8022-:22", "not an IPv4 address"),
        ("user,hostfwd=tcp::8022-10.0.2.15:22", "no guest address"),
        (
            "user,hostfwd=tcp::8022-:22,hostfwd=tcp::8022-:23",
            "forwarded twice",
        ),
        ("tap=t0,hostfwd=tcp::8022-:22", "user networking only"),
        ("none,mac=52:54:00:00:00:01", "--net none takes no options"),
    ] {
        refused(&["run", "--net", spec], message);
    }
    let out = guest_out();
    let kernel = out.join("Image");
    let initrd = out.join("initramfs.cpio.gz");
    let (k, i) = (kernel.to_str().unwrap(), initrd.to_str().unwrap());
    refused(
        &["run", "--kernel", k, "--net", "none", "--net", "user"],
        "--net none cannot be combined",
    );
    refused(
        &[
            "run",
            "--kernel",
            k,
            "--initrd",
            i,
            "--net",
            "user",
            "--append",
            "ftvm.ip=10.0.2.15",
        ],
        "invalid ftvm.ip=10.0.2.15",
    );
    // A host port that is taken: passt's own message.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    let spec = format!("user,hostfwd=tcp::{port}-:6379");
    refused(
        &["run", "--kernel", k, "--initrd", i, "--net", &spec],
        "passt exited at start",
    );
    // No passt: an explicit user network is an error.
    let no_passt = ftvm()
        .args(["run", "--kernel", k, "--initrd", i, "--net", "user"])
        .env("PATH", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ftvm");
    let done = wait_limited(no_passt, Duration::from_secs(30), "ftvm without passt");
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(1), "{err}");
    assert!(err.contains("passt not found"), "{err}");
}

#[test]
fn without_passt_the_default_run_boots_with_no_network() {
    let mut g = Guest(Some(
        default_run(&[], Some("/nonexistent"))
            .spawn()
            .expect("spawn ftvm"),
    ));
    let err = stderr_lines(g.child());
    let line = line_with(&err, "warning");
    assert!(line.contains("passt is not installed"), "{line}");
    let (seen, _) = await_ready(g.child())
        .unwrap_or_else(|seen| panic!("the guest did not get ready; console was:\n{seen}"));
    assert!(!seen.contains("ftvm-guest: eth0"), "{seen}");
    g.power_off();
}

#[test]
fn a_backup_on_the_same_host_takes_the_forwarded_port_over() {
    let dir = std::env::temp_dir().join(format!("ftvm-usernet-pair-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let psk = dir.join("psk");
    std::fs::write(&psk, b"the user network pair test's key").expect("write the key");
    let arbiter = format!("file:{}", dir.join("arbiter").display());
    let addr = free_local_addr();
    let port = free_port();
    let net = hostfwd(port);
    let side = |role: &[&str]| {
        let mut c = guest_command(role);
        c.args(["--psk", psk.to_str().expect("utf-8 path")])
            .args(["--arbiter", &arbiter, "--net", &net])
            .stderr(Stdio::null());
        c
    };
    // The primary boots once the backup attached; the backup follows without a passt of its
    // own (the port is the primary's).
    let mut primary = Guest(Some(
        side(&["primary", "--listen", &addr])
            .spawn()
            .expect("spawn the primary"),
    ));
    let mut backup = side(&["backup", "--primary", &addr]);
    backup.stdin(Stdio::null()).stdout(Stdio::null());
    let backup = Guest(Some(backup.spawn().expect("spawn the backup")));
    if let Err(seen) = await_ready(primary.child()) {
        panic!("the primary's guest did not get ready; console was:\n{seen}");
    }
    wait_redis(port);
    assert_eq!(redis(port, &["set", "k", "before"]), "OK");
    // The primary dies; its passt with it; the backup's own takes the same port.
    let _ = primary.child().kill();
    let _ = primary.child().wait();
    wait_redis(port);
    assert_eq!(redis(port, &["get", "k"]), "before");
    drop(backup);
    let _ = std::fs::remove_dir_all(&dir);
}
