//! The fault-tolerant pair end to end: network namespaces as hosts (a primary host, a backup
//! host, a client, one switch), redis in the guest, a client writing keys over ONE TCP
//! connection, each SET acknowledged before the next; the primary process is SIGKILLed at a
//! random moment; the same connection keeps working after a pause and every acknowledged key
//! reads back. FTVM_FAILOVER_TRIALS sets the number of randomized trials (default 10).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const GUEST_IP: &str = "10.79.0.10";

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Lab {
    ns: Vec<String>,
    dir: PathBuf,
    id: String,
}

impl Lab {
    /// A lab of its own for each test (`tag`: one letter), so tests can run side by side.
    fn new(tag: &str) -> Lab {
        let id = format!("{tag}{}", std::process::id() % 10_000);
        let name = |t: &str| format!("ftvm-f{t}{id}");
        let lab = Lab {
            ns: ["sw", "ph", "bh", "cl"].iter().map(|t| name(t)).collect(),
            dir: std::env::temp_dir().join(format!("ftvm-failover-{id}")),
            id: id.clone(),
        };
        lab.cleanup();
        std::fs::create_dir_all(&lab.dir).unwrap();
        for ns in &lab.ns {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
        }
        let sw = &lab.ns[0];
        sh(&[
            "ip", "netns", "exec", sw, "ip", "link", "add", "br0", "type", "bridge",
        ]);
        sh(&["ip", "netns", "exec", sw, "ip", "link", "set", "br0", "up"]);
        for (i, (host, ip)) in [
            (1, "10.79.0.1/24"),
            (2, "10.79.0.2/24"),
            (3, "10.79.0.3/24"),
        ]
        .into_iter()
        .enumerate()
        {
            let ns = &lab.ns[host];
            let (up, down) = (format!("fu{id}x{i}"), format!("fd{id}x{i}"));
            sh(&[
                "ip", "link", "add", &up, "type", "veth", "peer", "name", &down,
            ]);
            sh(&["ip", "link", "set", &down, "netns", sw]);
            sh(&["ip", "link", "set", &up, "netns", ns]);
            sh(&[
                "ip", "netns", "exec", sw, "ip", "link", "set", &down, "master", "br0",
            ]);
            sh(&["ip", "netns", "exec", sw, "ip", "link", "set", &down, "up"]);
            let x = |args: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", ns.as_str()];
                v.extend_from_slice(args);
                sh(&v);
            };
            if host == 3 {
                x(&["ip", "addr", "add", ip, "dev", &up]);
                x(&["ip", "link", "set", &up, "up"]);
            } else {
                // A host: its uplink and the guest's TAP on a bridge of its own.
                x(&["ip", "link", "add", "brh", "type", "bridge"]);
                x(&["ip", "link", "set", &up, "master", "brh"]);
                x(&["ip", "tuntap", "add", "dev", "ftap0", "mode", "tap"]);
                x(&["ip", "link", "set", "ftap0", "master", "brh"]);
                x(&["ip", "addr", "add", ip, "dev", "brh"]);
                for d in ["brh", up.as_str(), "ftap0"] {
                    x(&["ip", "link", "set", d, "up"]);
                }
            }
        }
        // A dedicated replication link between the two hosts (as an FT logging network).
        let (ra, rb) = (format!("fr{id}a"), format!("fr{id}b"));
        sh(&[
            "ip", "link", "add", &ra, "type", "veth", "peer", "name", &rb,
        ]);
        sh(&["ip", "link", "set", &ra, "netns", &lab.ns[1]]);
        sh(&["ip", "link", "set", &rb, "netns", &lab.ns[2]]);
        for (ns, dev, ip) in [
            (&lab.ns[1], &ra, "10.80.0.1/24"),
            (&lab.ns[2], &rb, "10.80.0.2/24"),
        ] {
            sh(&[
                "ip", "netns", "exec", ns, "ip", "addr", "add", ip, "dev", dev,
            ]);
            sh(&["ip", "netns", "exec", ns, "ip", "link", "set", dev, "up"]);
        }
        std::fs::write(lab.dir.join("psk"), b"ftvm test pre-shared key 0123456789").unwrap();
        lab
    }

    /// Cut the replication link, both ways.
    fn partition(&self) {
        let id = &self.id;
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns[1],
            "ip",
            "link",
            "set",
            &format!("fr{id}a"),
            "down",
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns[2],
            "ip",
            "link",
            "set",
            &format!("fr{id}b"),
            "down",
        ]);
    }

    fn cleanup(&self) {
        for ns in &self.ns {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
        if std::env::var_os("FTVM_KEEP_LAB").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A child killed on drop.
struct Proc(Option<Child>);

impl Proc {
    fn c(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn side(lab: &Lab, ns: usize, role: &[&str], disk: &Path, arbiter: &Path) -> Proc {
    let out = guest_out();
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.ns[ns]])
        .arg(env!("CARGO_BIN_EXE_ftvm"))
        .args(role)
        .arg("--status-file")
        .arg(lab.dir.join(format!("{}.status", role[0])))
        .arg("--psk")
        .arg(lab.dir.join("psk"))
        .arg("--arbiter")
        .arg(format!("file:{}", arbiter.display()))
        .arg("--kernel")
        .arg(out.join("Image"))
        .arg("--initrd")
        .arg(out.join("initramfs.cpio.gz"))
        .arg("--disk")
        .arg(disk)
        .args(["--net", "tap=ftap0,mac=52:54:00:79:00:10"])
        .args(["--append", &format!("console=ttyS0 ftvm.ip={GUEST_IP}/24")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ftvm");
    let mut p = Proc(Some(child));
    // Keep the side's diagnostics; never let a full pipe stall it.
    let mut err = p.c().stderr.take().unwrap();
    let log = lab.dir.join(format!("{}.stderr", role[0]));
    std::thread::spawn(move || {
        if let Ok(mut f) = std::fs::File::create(log) {
            let _ = std::io::copy(&mut err, &mut f);
        }
    });
    p
}

/// The client: one TCP connection; SET k<i> before k<i+1>, each acknowledged; prints
/// "acked i" per acknowledgement; after `secs` seconds it GETs every acknowledged key on the
/// same connection and prints "missing i" for any that does not read back, then "done n".
const CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], 6379), timeout=30)
s.settimeout(30)
f = s.makefile("rb")
def cmd(*a):
    s.sendall(b"*%d\r\n" % len(a) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in a))
    line = f.readline()
    if line.startswith(b"$"):
        n = int(line[1:])
        return None if n < 0 else f.read(n + 2)[:-2]
    return line.strip()
end = time.time() + float(sys.argv[2])
i = 0
while time.time() < end:
    assert cmd(b"SET", b"k%d" % i, b"v%d" % i) == b"+OK"
    print("acked", i, flush=True)
    i += 1
for j in range(i):
    if cmd(b"GET", b"k%d" % j) != b"v%d" % j:
        print("missing", j, flush=True)
print("done", i, flush=True)
"#;

fn pair_status(lab: &Lab) -> String {
    let out = ftvm()
        .arg("status")
        .arg(lab.dir.join("primary.status"))
        .arg(lab.dir.join("backup.status"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_ready(p: &mut Proc) {
    if let Err(seen) = await_ready(p.c()) {
        panic!("primary never ready; console was:\n{seen}");
    }
}

fn trial(lab: &Lab, n: u32, seed: u64) {
    let disk_p = lab.dir.join(format!("p{n}.img"));
    let disk_b = lab.dir.join(format!("b{n}.img"));
    for d in [&disk_p, &disk_b] {
        std::fs::File::create(d).unwrap().set_len(32 << 20).unwrap();
    }
    let arbiter = lab.dir.join(format!("arbiter{n}"));
    let mut primary = side(
        lab,
        1,
        &["primary", "--listen", "10.80.0.1:7700"],
        &disk_p,
        &arbiter,
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut backup = side(
        lab,
        2,
        &["backup", "--primary", "10.80.0.1:7700"],
        &disk_b,
        &arbiter,
    );
    let mut backup_out = backup.c().stdout.take().unwrap();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut backup_out, &mut std::io::sink());
    });
    wait_ready(&mut primary);
    let mut client = Proc(Some(
        Command::new("ip")
            .args([
                "netns", "exec", &lab.ns[3], "python3", "-c", CLIENT, GUEST_IP, "8",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("client"),
    ));
    let reader = BufReader::new(client.c().stdout.take().unwrap());
    let mut lines = reader.lines();
    // Kill the primary at a random moment while keys are being written.
    let kill_after = Duration::from_millis(1000 + seed % 4000);
    let t0 = Instant::now();
    let mut acked_before = 0;
    while t0.elapsed() < kill_after {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("acked") => acked_before += 1,
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    if n == 0 {
        // `ftvm status` shows a protected primary and a backup close behind it.
        let st = pair_status(lab);
        assert!(st.contains("primary") && st.contains("backup"), "{st}");
        let primary_line = st.lines().find(|l| l.contains("primary.status")).unwrap();
        assert!(primary_line.contains(" yes "), "protected: {st}");
    }
    let _ = primary.c().kill();
    let _ = primary.c().wait();
    let killed_at = Instant::now();
    let mut max_gap = Duration::ZERO;
    let mut last = killed_at;
    let (mut total, mut missing, mut done) = (0u64, Vec::new(), false);
    for l in lines.map_while(Result::ok) {
        if l.starts_with("acked") {
            max_gap = max_gap.max(last.elapsed());
            last = Instant::now();
        } else if let Some(k) = l.strip_prefix("missing ") {
            missing.push(k.to_string());
        } else if let Some(k) = l.strip_prefix("done ") {
            total = k.parse().unwrap();
            done = true;
        }
    }
    let status = client.c().wait().unwrap();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(client.c().stderr.as_mut().unwrap(), &mut err);
    let backup_err = std::fs::read_to_string(lab.dir.join("backup.stderr")).unwrap_or_default();
    if n == 0 && done {
        // After the failover the backup reports itself live and unprotected.
        std::thread::sleep(Duration::from_millis(300));
        let st = pair_status(lab);
        let line = st
            .lines()
            .find(|l| l.contains("backup.status"))
            .unwrap()
            .to_string();
        assert!(line.contains(" live ") && line.contains(" no "), "{st}");
    }
    assert!(
        status.success() && done,
        "trial {n}: the client's connection did not survive ({status}): {err}\nbackup: {backup_err}"
    );
    assert!(
        missing.is_empty(),
        "trial {n}: acknowledged keys lost: {missing:?}"
    );
    assert!(
        total > acked_before,
        "trial {n}: no progress after failover"
    );
    let takeover = std::fs::read_to_string(lab.dir.join("backup.stderr"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("backup live"))
        .unwrap_or("")
        .to_string();
    eprintln!(
        "trial {n}: killed after {:?} ({acked_before} keys), {total} keys acknowledged and read back, longest pause {:?}; {takeover}",
        kill_after, max_gap
    );
    let _ = backup.c().stdin.as_mut().unwrap().write_all(b"poweroff\n");
    let child = backup.0.take().expect("running");
    let _ = wait_limited(child, Duration::from_secs(60), "backup poweroff");
}

#[test]
fn primary_killed_the_client_connection_survives() {
    let trials: u32 = std::env::var("FTVM_FAILOVER_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let lab = Lab::new("k");
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9;
    for n in 0..trials {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        trial(&lab, n, seed);
    }
}

#[test]
fn a_partition_leaves_exactly_one_side_live() {
    let lab = Lab::new("p");
    let disk_p = lab.dir.join("pp.img");
    let disk_b = lab.dir.join("pb.img");
    for d in [&disk_p, &disk_b] {
        std::fs::File::create(d).unwrap().set_len(32 << 20).unwrap();
    }
    let arbiter = lab.dir.join("arbiter-partition");
    let mut primary = side(
        &lab,
        1,
        &["primary", "--listen", "10.80.0.1:7700"],
        &disk_p,
        &arbiter,
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut backup = side(
        &lab,
        2,
        &["backup", "--primary", "10.80.0.1:7700"],
        &disk_b,
        &arbiter,
    );
    let mut backup_out = backup.c().stdout.take().unwrap();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut backup_out, &mut std::io::sink());
    });
    wait_ready(&mut primary);
    std::thread::sleep(Duration::from_secs(1));
    lab.partition();
    // Both sides see the other go silent; one wins the arbiter, the other stops its guest.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        let running = (
            primary.c().try_wait().unwrap().is_none(),
            backup.c().try_wait().unwrap().is_none(),
        );
        if running.0 != running.1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Give a late exit a moment, then look again: exactly one side must still run.
    std::thread::sleep(Duration::from_secs(1));
    let alive = (
        primary.c().try_wait().unwrap().is_none(),
        backup.c().try_wait().unwrap().is_none(),
    );
    assert!(alive.0 ^ alive.1, "exactly one side live, got {alive:?}");
    let winner = std::fs::read_to_string(&arbiter).unwrap();
    assert_eq!(winner.trim(), if alive.0 { "primary" } else { "backup" });
    // And the guest still serves its clients.
    let t0 = Instant::now();
    loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns[3],
                "redis-cli",
                "-h",
                GUEST_IP,
                "ping",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the live side does not serve"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("partition: the {} stayed live", winner.trim());
}
