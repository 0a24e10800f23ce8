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
const ETCD_ADDR: &str = "10.79.0.3:2379";

/// Read a key through etcd's JSON gateway: prints its value, or nothing.
const ETCD_GET: &str = r#"
import base64, json, sys, urllib.request
body = json.dumps({"key": base64.b64encode(sys.argv[2].encode()).decode()}).encode()
r = json.load(urllib.request.urlopen("http://%s/v3/kv/range" % sys.argv[1], body, timeout=2))
for kv in r.get("kvs", []):
    print(base64.b64decode(kv["value"]).decode())
"#;

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

    /// An etcd server (Debian's etcd-server) on the client host, which both hosts reach over
    /// the bridge: the arbiter `etcd:http://10.79.0.3:2379/...`.
    fn etcd(&self) -> Proc {
        let client = format!("http://{ETCD_ADDR}");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns[3], "etcd", "--name", "lab"])
            .arg("--data-dir")
            .arg(self.dir.join("etcd"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-cluster", "lab=http://127.0.0.1:2380"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd (Debian's etcd-server) is needed: scripts/setup.sh installs it");
        let p = Proc(Some(child));
        let t0 = Instant::now();
        while self.etcd_get("/ready/0").is_none() {
            assert!(t0.elapsed() < Duration::from_secs(20), "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// The value of `key` in the lab's etcd ("" when absent), None if etcd does not answer.
    fn etcd_get(&self, key: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns[3], "python3", "-c", ETCD_GET])
            .args([ETCD_ADDR, key])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
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

/// One side of the pair in host namespace `ns`; `name` names its status and stderr files.
fn side(lab: &Lab, ns: usize, name: &str, role: &[&str], disk: &Path, arbiter: &str) -> Proc {
    let out = guest_out();
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.ns[ns]])
        .arg(env!("CARGO_BIN_EXE_ftvm"))
        .args(role)
        .arg("--status-file")
        .arg(lab.dir.join(format!("{name}.status")))
        .arg("--psk")
        .arg(lab.dir.join("psk"))
        .arg("--arbiter")
        .arg(arbiter)
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
    let log = lab.dir.join(format!("{name}.stderr"));
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

/// A blank disk image of 32 MiB.
fn blank_disk(path: &Path) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
}

/// Start a pair: the primary on host 1, then a backup named `backup` on host 2 (its console
/// output drained), and wait until the guest is ready.
fn start_pair(lab: &Lab, tag: &str, backup: &str, arbiter: &str) -> (Proc, Proc) {
    let disk_p = lab.dir.join(format!("{tag}p.img"));
    let disk_b = lab.dir.join(format!("{tag}b.img"));
    blank_disk(&disk_p);
    blank_disk(&disk_b);
    let mut primary = side(
        lab,
        1,
        "primary",
        &["primary", "--listen", "10.80.0.1:7700"],
        &disk_p,
        arbiter,
    );
    std::thread::sleep(Duration::from_millis(300));
    let b = start_backup(lab, backup, &disk_b, arbiter);
    wait_ready(&mut primary);
    (primary, b)
}

/// A backup named `name` on host 2, attaching to the primary; its console output is drained.
fn start_backup(lab: &Lab, name: &str, disk: &Path, arbiter: &str) -> Proc {
    let mut b = side(
        lab,
        2,
        name,
        &["backup", "--primary", "10.80.0.1:7700"],
        disk,
        arbiter,
    );
    let mut out = b.c().stdout.take().unwrap();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    b
}

/// The client (CLIENT) on the client host, writing keys for `secs` seconds.
fn start_client(lab: &Lab, secs: &str) -> Proc {
    Proc(Some(
        Command::new("ip")
            .args([
                "netns", "exec", &lab.ns[3], "python3", "-c", CLIENT, GUEST_IP, secs,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("client"),
    ))
}

/// One trial; odd trials use the etcd arbiter, even ones the file arbiter.
fn trial(lab: &Lab, n: u32, seed: u64) {
    let arbiter = if n % 2 == 1 {
        format!("etcd:http://{ETCD_ADDR}/trial{n}")
    } else {
        format!("file:{}", lab.dir.join(format!("arbiter{n}")).display())
    };
    let (mut primary, mut backup) = start_pair(lab, &format!("t{n}"), "backup", &arbiter);
    let mut client = start_client(lab, "8");
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
    if n % 2 == 1 {
        assert_eq!(
            lab.etcd_get(&format!("/trial{n}/0")).as_deref(),
            Some("backup"),
            "trial {n}: the backup holds the etcd arbiter"
        );
    }
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
    let _etcd = lab.etcd();
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
    let _etcd = lab.etcd();
    let arbiter = format!("etcd:http://{ETCD_ADDR}/partition");
    let (mut primary, mut backup) = start_pair(&lab, "part", "backup", &arbiter);
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
    let winner = lab.etcd_get("/partition/0").expect("etcd answers");
    assert_eq!(winner, if alive.0 { "primary" } else { "backup" });
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

/// The value of `key=` in a side's status file.
fn status_of(lab: &Lab, name: &str, key: &str) -> String {
    std::fs::read_to_string(lab.dir.join(format!("{name}.status")))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
        .unwrap_or_default()
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn backup_killed_a_new_backup_attaches_and_the_pair_survives_a_second_failure() {
    let lab = Lab::new("r");
    let arbiter_path = lab.dir.join("arbiter-r");
    let arbiter = format!("file:{}", arbiter_path.display());
    let (mut primary, mut backup1) = start_pair(&lab, "r", "backup1", &arbiter);
    let mut client = start_client(&lab, "14");
    let (acks_tx, acks) = std::sync::mpsc::channel::<String>();
    let out = client.c().stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if acks_tx.send(l).is_err() {
                return;
            }
        }
    });
    let count_acks = |d: Duration| {
        let t0 = Instant::now();
        let mut n = 0;
        while let Some(left) = d.checked_sub(t0.elapsed()) {
            match acks.recv_timeout(left) {
                Ok(l) if l.starts_with("acked") => n += 1,
                Ok(l) => panic!("client: {l}"),
                Err(_) => break,
            }
        }
        n
    };
    assert!(count_acks(Duration::from_secs(2)) > 0, "no keys written");

    // First failure: the backup. The primary wins generation 0 and serves on, unprotected.
    let _ = backup1.c().kill();
    let _ = backup1.c().wait();
    wait_for(
        "the primary runs on unprotected",
        Duration::from_secs(10),
        || status_of(&lab, "primary", "protected") == "no",
    );
    assert_eq!(
        std::fs::read_to_string(&arbiter_path).unwrap().trim(),
        "primary"
    );
    assert!(
        count_acks(Duration::from_secs(1)) > 0,
        "the primary stopped serving without its backup"
    );

    // A new backup attaches to the running primary (generation 1).
    // Its host has no image yet: it receives the primary's.
    let mut backup2 = start_backup(&lab, "backup2", &lab.dir.join("rb2.img"), &arbiter);
    wait_for(
        "the new backup protects the guest",
        Duration::from_secs(30),
        || status_of(&lab, "primary", "protected") == "yes",
    );
    assert!(
        count_acks(Duration::from_secs(2)) > 0,
        "no progress once protected again"
    );

    // Second failure: the primary. The new backup wins generation 1 and goes live.
    let _ = primary.c().kill();
    let _ = primary.c().wait();
    let (mut missing, mut total) = (Vec::new(), None);
    while let Ok(l) = acks.recv_timeout(Duration::from_secs(60)) {
        if let Some(k) = l.strip_prefix("missing ") {
            missing.push(k.to_string());
        } else if let Some(k) = l.strip_prefix("done ") {
            total = Some(k.parse::<u64>().unwrap());
            break;
        }
    }
    let primary_err = std::fs::read_to_string(lab.dir.join("primary.stderr")).unwrap_or_default();
    let b2_err = std::fs::read_to_string(lab.dir.join("backup2.stderr")).unwrap_or_default();
    let total = total.unwrap_or_else(|| {
        panic!("the client's connection did not survive\nprimary: {primary_err}\nbackup2: {b2_err}")
    });
    assert!(missing.is_empty(), "acknowledged keys lost: {missing:?}");
    assert!(client.c().wait().unwrap().success());
    let won = file_winner(&arbiter_path, 1);
    assert_eq!(
        won.as_deref(),
        Some("backup"),
        "generation 1 of the arbiter"
    );
    let paused = primary_err
        .lines()
        .find(|l| l.contains("protected again"))
        .unwrap_or("")
        .trim()
        .to_string();
    eprintln!("re-protection: {total} keys read back; {paused}");
    let _ = backup2.c().stdin.as_mut().unwrap().write_all(b"poweroff\n");
    let child = backup2.0.take().expect("running");
    let _ = wait_limited(child, Duration::from_secs(60), "backup poweroff");
}

/// The file arbiter's winner of `generation` (its key for generation G > 0 is PATH.G).
fn file_winner(path: &Path, generation: u64) -> Option<String> {
    let p = PathBuf::from(format!("{}.{generation}", path.display()));
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}
