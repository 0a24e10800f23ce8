//! Network: redis in the guest serves a real client over a TAP device, and its data survives a
//! power cycle on the same disk; a recorded networked session replays offline, with both
//! engines in lockstep too. The test builds its own network: a host namespace holding a
//! bridge, the TAP and one end of a veth pair, and a client namespace holding the other end.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const GUEST_IP: &str = "10.77.0.10";
const CLIENT_IP: &str = "10.77.0.2";

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect(args[0]);
    assert!(st.success(), "{args:?} failed");
}

/// Two namespaces joined by a bridge; removed on drop.
struct Net {
    host: String,
    client: String,
    tap: String,
}

impl Net {
    fn new() -> Net {
        Self::new_named("n")
    }

    /// Namespaces and links named after `tag` and this process, so tests can run side by side.
    fn new_named(tag: &str) -> Net {
        let id = std::process::id() % 10_000;
        let n = Net {
            host: format!("ftvm-h{tag}{id}"),
            client: format!("ftvm-c{tag}{id}"),
            tap: "ftap0".into(),
        };
        n.cleanup();
        let (h, c) = (n.host.as_str(), n.client.as_str());
        let (va, vb) = (format!("fv{tag}{id}a"), format!("fv{tag}{id}b"));
        sh(&["ip", "netns", "add", h]);
        sh(&["ip", "netns", "add", c]);
        sh(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ]);
        sh(&["ip", "link", "set", &va, "netns", h]);
        sh(&["ip", "link", "set", &vb, "netns", c]);
        let hx = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", h];
            v.extend_from_slice(args);
            sh(&v)
        };
        hx(&["ip", "link", "add", "fbr0", "type", "bridge"]);
        hx(&["ip", "tuntap", "add", "dev", &n.tap, "mode", "tap"]);
        hx(&["ip", "link", "set", &n.tap, "master", "fbr0"]);
        hx(&["ip", "link", "set", &va, "master", "fbr0"]);
        for dev in ["fbr0", n.tap.as_str(), va.as_str(), "lo"] {
            hx(&["ip", "link", "set", dev, "up"]);
        }
        let cx = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", c];
            v.extend_from_slice(args);
            sh(&v)
        };
        cx(&["ip", "addr", "add", &format!("{CLIENT_IP}/24"), "dev", &vb]);
        cx(&["ip", "link", "set", &vb, "up"]);
        cx(&["ip", "link", "set", "lo", "up"]);
        n
    }

    fn cleanup(&self) {
        for ns in [&self.host, &self.client] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// redis-benchmark against the guest, from the client namespace.
    fn redis_benchmark(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client,
                "redis-benchmark",
                "-h",
                GUEST_IP,
            ])
            .args(args)
            .output()
            .expect("redis-benchmark")
    }

    /// redis-cli in the client namespace.
    fn redis(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client, "redis-cli", "-h", GUEST_IP])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A running guest, killed if the test fails before powering it off.
struct Guest(Option<std::process::Child>);

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Boot the guest in the host namespace with the disk and the TAP; returns once it is ready.
fn boot(net: &Net, disk: &std::path::Path) -> Guest {
    boot_with(net, disk, &["run"]).0
}

/// Boot with `ftvm <how...>`; also returns the console output seen so far and a handle on the
/// rest of it.
fn boot_with(net: &Net, disk: &std::path::Path, how: &[&str]) -> (Guest, mpsc::Receiver<Vec<u8>>) {
    let append = format!("console=ttyS0 ftvm.ip={GUEST_IP}/24");
    boot_append(net, disk, how, &append)
}

/// Boot with `ftvm <how...>` and the kernel command line `append`.
fn boot_append(
    net: &Net,
    disk: &std::path::Path,
    how: &[&str],
    append: &str,
) -> (Guest, mpsc::Receiver<Vec<u8>>) {
    let out = guest_out();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &net.host])
        .arg(env!("CARGO_BIN_EXE_ftvm"))
        .args(how)
        .arg("--kernel")
        .arg(out.join("Image"))
        .arg("--initrd")
        .arg(out.join("initramfs.cpio.gz"))
        .arg("--disk")
        .arg(disk)
        .arg("--net")
        .arg(format!("tap={},mac=52:54:00:77:00:10", net.tap))
        .arg("--append")
        .arg(append)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ftvm");
    match await_ready(&mut child) {
        Ok((_, console)) => (Guest(Some(child)), console),
        Err(seen) => {
            let _ = child.kill();
            panic!("guest did not get ready; console was:\n{seen}");
        }
    }
}

fn power_off(mut guest: Guest) {
    let mut child = guest.0.take().unwrap();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"poweroff\n")
        .unwrap();
    let out = wait_limited(child, Duration::from_secs(60), "guest poweroff");
    assert!(out.status.success(), "ftvm exit {:?}", out.status);
}

/// Poll until redis in the guest answers (ARP and the first connection can take a moment).
fn wait_redis(net: &Net) {
    let t0 = Instant::now();
    while net.redis(&["ping"]) != "PONG" {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "redis never answered over the network"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn redis_over_tap_keeps_its_data_across_a_power_cycle() {
    let net = Net::new();
    let dir = std::env::temp_dir().join(format!("ftvm-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();

    let guest = boot(&net, &disk);
    wait_redis(&net);
    assert_eq!(net.redis(&["set", "ftvm-key", "survives"]), "OK");
    assert_eq!(net.redis(&["get", "ftvm-key"]), "survives");

    // Real load from Debian's redis-benchmark: every request must succeed.
    let bench = net.redis_benchmark(&["-c", "10", "-n", "2000", "-t", "set,get", "--csv"]);
    let report = String::from_utf8_lossy(&bench.stdout);
    let errors = String::from_utf8_lossy(&bench.stderr);
    assert!(bench.status.success(), "redis-benchmark failed: {errors}");
    assert!(
        !errors.contains("rror") && !report.contains("rror"),
        "{errors}{report}"
    );
    for test in ["\"SET\"", "\"GET\""] {
        let line = report
            .lines()
            .find(|l| l.starts_with(test))
            .unwrap_or_else(|| panic!("no {test} result in {report}"));
        let rps: f64 = line
            .split(',')
            .nth(1)
            .unwrap()
            .trim_matches('"')
            .parse()
            .unwrap();
        assert!(rps > 0.0, "{line}");
    }
    power_off(guest);

    let guest = boot(&net, &disk);
    wait_redis(&net);
    assert_eq!(net.redis(&["get", "ftvm-key"]), "survives");
    power_off(guest);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_networked_session_replays_offline() {
    networked_session_replays_offline("r", "1");
}

/// The same with four harts: redis, its clients' interrupts and the disk spread over them.
#[test]
fn a_four_hart_networked_session_replays_offline() {
    networked_session_replays_offline("s", "4");
}

/// Record a redis session over the TAP (with the harts `smp`), replay it offline verified,
/// and replay it with both engines in lockstep.
fn networked_session_replays_offline(tag: &str, smp: &str) {
    let net = Net::new_named(tag);
    let dir = std::env::temp_dir().join(format!("ftvm-netrec{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let log = dir.join("session.log");
    let (guest, console) = boot_with(
        &net,
        &disk,
        &[
            "record",
            "--log",
            log.to_str().unwrap(),
            "--digest-every",
            "50000000",
            "--smp",
            smp,
        ],
    );
    wait_redis(&net);
    for i in 0..20 {
        assert_eq!(
            net.redis(&["set", &format!("key{i}"), &format!("value{i}")]),
            "OK"
        );
    }
    assert_eq!(net.redis(&["get", "key7"]), "value7");
    let bench = net.redis_benchmark(&["-c", "4", "-n", "500", "-t", "set,get", "-q"]);
    assert!(bench.status.success());
    power_off(guest);
    let recorded_console = console.recv_timeout(Duration::from_secs(30)).unwrap();
    drop(net);

    // Offline: no TAP, no disk, no terminal.
    let replay_console = dir.join("console.txt");
    let frames = dir.join("frames.pcap");
    let out = run_ftvm(
        &[
            "replay",
            "--log",
            log.to_str().unwrap(),
            "--console-out",
            replay_console.to_str().unwrap(),
            "--frames-out",
            frames.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("replay verified:"), "{text}");
    let digests: u64 = text
        .split(", ")
        .find_map(|p| p.trim().strip_suffix(" digests"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(digests >= 2, "{text}");
    assert_eq!(std::fs::read(&replay_console).unwrap(), recorded_console);
    assert!(
        std::fs::metadata(&frames).unwrap().len() > 24 + 20 * 60,
        "the sent frames were written"
    );
    // The translator (which recorded it) and the interpreter replay it in lockstep.
    let check = run_ftvm(
        &[
            "--engine",
            "check",
            "replay",
            "--log",
            log.to_str().unwrap(),
            "--check-every",
            "20000000",
        ],
        Duration::from_secs(300),
    );
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && text.contains("engines agree"),
        "{text}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A guest that never brings its network interface up has no receive buffers: frames that
/// arrive wait on the host while the guest idles. The recorded run must still replay exactly
/// (an idle guest may leave its WFI only through a logged input).
#[test]
fn frames_waiting_for_a_guest_whose_network_is_down_replay() {
    let net = Net::new_named("d");
    let dir = std::env::temp_dir().join(format!("ftvm-netdown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let log = dir.join("down.log");
    let (guest, _console) = boot_append(
        &net,
        &disk,
        &["record", "--log", log.to_str().unwrap()],
        "console=ttyS0",
    );
    // Broadcasts from the client reach the TAP; the guest cannot take them.
    let sent = Command::new("ip")
        .args(["netns", "exec", &net.client, "python3", "-c"])
        .arg(
            "import socket, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n\
             for i in range(40):\n\
             \x20   s.sendto(b'frame %d' % i, ('10.77.0.255', 9))\n\
             \x20   time.sleep(0.05)\n",
        )
        .status()
        .unwrap();
    assert!(sent.success());
    power_off(guest);
    drop(net);
    let out = run_ftvm(
        &["replay", "--log", log.to_str().unwrap()],
        Duration::from_secs(300),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("replay verified:"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
