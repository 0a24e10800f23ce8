//! The network lab of the end-to-end tests of the pair and of live migration: network
//! namespaces as hosts (a primary host, a backup host, a client, one switch, a dedicated
//! replication link), the guest's processes on them, and a redis client on one TCP connection.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;

pub const GUEST_IP: &str = "10.79.0.10";
pub const GUEST_MAC: &str = "52:54:00:79:00:10";
pub const ETCD_ADDR: &str = "10.79.0.3:2379";

/// Read a key through etcd's JSON gateway: prints its value, or nothing.
pub const ETCD_GET: &str = r#"
import base64, json, sys, urllib.request
body = json.dumps({"key": base64.b64encode(sys.argv[2].encode()).decode()}).encode()
r = json.load(urllib.request.urlopen("http://%s/v3/kv/range" % sys.argv[1], body, timeout=2))
for kv in r.get("kvs", []):
    print(base64.b64decode(kv["value"]).decode())
"#;

pub fn sh(args: &[&str]) {
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

pub struct Lab {
    pub ns: Vec<String>,
    pub dir: PathBuf,
    pub id: String,
}

impl Lab {
    /// A lab of its own for each test (`tag`: one letter), so tests can run side by side.
    pub fn new(tag: &str) -> Lab {
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
            // Hosts 1 and 2 run guests: their uplink and the guest's TAP on a bridge of their own.
            lab.uplink(&lab.ns[host], i, ip, host != 3);
        }
        // A dedicated replication link between the two hosts (as an FT logging network).
        lab.wire(
            (&lab.ns[1], &format!("fr{id}a"), "10.80.0.1/24"),
            (&lab.ns[2], &format!("fr{id}b"), "10.80.0.2/24"),
        );
        std::fs::write(lab.dir.join("psk"), b"ftvm test pre-shared key 0123456789").unwrap();
        lab
    }

    /// A third host (namespace index 4) for a group of replicas: on the guests' network with a
    /// bridge and TAP of its own (10.79.0.4), and a replication link of its own to host 1
    /// (10.81.0.1 there, 10.81.0.3 here).
    pub fn third_host(&mut self) {
        let id = self.id.clone();
        let ns = format!("ftvm-fth{id}");
        sh(&["ip", "netns", "add", &ns]);
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        self.uplink(&ns, 3, "10.79.0.4/24", true);
        self.wire(
            (&self.ns[1], &format!("fr{id}c"), "10.81.0.1/24"),
            (&ns, &format!("fr{id}d"), "10.81.0.3/24"),
        );
        self.ns.push(ns);
    }

    /// Host `ns` on the guests' network (the switch's bridge) through veth number `i`, with
    /// address `ip`; with `guest`, on a bridge of its own that holds the guest's TAP too.
    fn uplink(&self, ns: &str, i: usize, ip: &str, guest: bool) {
        let (id, sw) = (&self.id, &self.ns[0]);
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
            let mut v = vec!["ip", "netns", "exec", ns];
            v.extend_from_slice(args);
            sh(&v);
        };
        if !guest {
            x(&["ip", "addr", "add", ip, "dev", &up]);
            x(&["ip", "link", "set", &up, "up"]);
            return;
        }
        x(&["ip", "link", "add", "brh", "type", "bridge"]);
        x(&["ip", "link", "set", &up, "master", "brh"]);
        x(&["ip", "tuntap", "add", "dev", "ftap0", "mode", "tap"]);
        x(&["ip", "link", "set", "ftap0", "master", "brh"]);
        x(&["ip", "addr", "add", ip, "dev", "brh"]);
        for d in ["brh", up.as_str(), "ftap0"] {
            x(&["ip", "link", "set", d, "up"]);
        }
    }

    /// A point-to-point link (a veth pair) between two hosts: `(namespace, device, address)`
    /// for each end.
    fn wire(&self, a: (&str, &str, &str), b: (&str, &str, &str)) {
        sh(&[
            "ip", "link", "add", a.1, "type", "veth", "peer", "name", b.1,
        ]);
        for (ns, dev, ip) in [a, b] {
            sh(&["ip", "link", "set", dev, "netns", ns]);
            sh(&[
                "ip", "netns", "exec", ns, "ip", "addr", "add", ip, "dev", dev,
            ]);
            sh(&["ip", "netns", "exec", ns, "ip", "link", "set", dev, "up"]);
        }
    }

    /// An etcd server (Debian's etcd-server) on the client host, which both hosts reach over
    /// the bridge: the arbiter `etcd:http://10.79.0.3:2379/...`.
    pub fn etcd(&self) -> Proc {
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
    pub fn etcd_get(&self, key: &str) -> Option<String> {
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
    pub fn partition(&self) {
        self.replication_link("down");
    }

    /// Restore the replication link.
    pub fn heal(&self) {
        self.replication_link("up");
    }

    pub fn replication_link(&self, state: &str) {
        let id = &self.id;
        for (ns, dev) in [
            (&self.ns[1], format!("fr{id}a")),
            (&self.ns[2], format!("fr{id}b")),
        ] {
            sh(&["ip", "netns", "exec", ns, "ip", "link", "set", &dev, state]);
        }
    }

    /// Make etcd unreachable from host `host` (its own traffic only: the guests' frames are
    /// bridged past the host's routes), or reachable again.
    pub fn etcd_reachable_from(&self, host: usize, reachable: bool) {
        let verb = if reachable { "del" } else { "add" };
        let dst = format!("{}/32", ETCD_ADDR.split(':').next().unwrap());
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns[host],
            "ip",
            "route",
            verb,
            "blackhole",
            &dst,
        ]);
    }

    pub fn cleanup(&self) {
        let third = format!("ftvm-fth{}", self.id);
        for ns in self.ns.iter().chain(std::iter::once(&third)) {
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
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn c(&mut self) -> &mut Child {
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
pub fn side(lab: &Lab, ns: usize, name: &str, role: &[&str], disk: &Path, arbiter: &str) -> Proc {
    let status = lab.dir.join(format!("{name}.status"));
    let psk = lab.dir.join("psk");
    let mut args = role.to_vec();
    args.extend_from_slice(&[
        "--status-file",
        status.to_str().unwrap(),
        "--psk",
        psk.to_str().unwrap(),
        "--arbiter",
        arbiter,
    ]);
    guest_on(lab, ns, name, &args, disk)
}

/// `ftvm ARGS` on host `ns` with the lab's guest (its images, the disk `disk`, the TAP and the
/// guest's address); stdin and stdout piped, stderr kept in `<name>.stderr`.
pub fn guest_on(lab: &Lab, ns: usize, name: &str, args: &[&str], disk: &Path) -> Proc {
    let out = guest_out();
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.ns[ns]])
        .arg(env!("CARGO_BIN_EXE_ftvm"))
        .args(args)
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
/// "acked i" per acknowledgement; after `secs` seconds (or at SIGUSR1, if sooner) it GETs
/// every acknowledged key on the same connection and prints "missing i" for any that does not
/// read back, then "done n".
pub const CLIENT: &str = r#"
import signal, socket, sys, time
def stop(*_):
    global end
    end = 0
signal.signal(signal.SIGUSR1, stop)
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

pub fn pair_status(lab: &Lab) -> String {
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

/// Wait for the guest's ready line; the console up to it.
pub fn wait_ready(p: &mut Proc) -> String {
    await_ready(p.c())
        .unwrap_or_else(|seen| panic!("primary never ready; console was:\n{seen}"))
        .0
}

/// A blank disk image of 32 MiB.
pub fn blank_disk(path: &Path) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
}

/// Start a pair: the primary on host 1, then a backup named `backup` on host 2 (its console
/// output drained), and wait until the guest is ready.
pub fn start_pair(lab: &Lab, tag: &str, backup: &str, arbiter: &str) -> (Proc, Proc) {
    let (p, b, _) = start_pair_with(lab, tag, backup, arbiter, &[]);
    (p, b)
}

/// `start_pair` with more options for the primary's machine (`--smp 2`); also returns the
/// guest's console up to its ready line.
pub fn start_pair_with(
    lab: &Lab,
    tag: &str,
    backup: &str,
    arbiter: &str,
    extra: &[&str],
) -> (Proc, Proc, String) {
    let disk_p = lab.dir.join(format!("{tag}p.img"));
    let disk_b = lab.dir.join(format!("{tag}b.img"));
    blank_disk(&disk_p);
    blank_disk(&disk_b);
    let mut role = vec!["primary", "--listen", "10.80.0.1:7700"];
    role.extend_from_slice(extra);
    let mut primary = side(lab, 1, "primary", &role, &disk_p, arbiter);
    std::thread::sleep(Duration::from_millis(300));
    let b = start_backup(lab, backup, &disk_b, arbiter);
    let seen = wait_ready(&mut primary);
    (primary, b, seen)
}

/// A backup named `name` on host 2, attaching to the primary; its console output is drained.
pub fn start_backup(lab: &Lab, name: &str, disk: &Path, arbiter: &str) -> Proc {
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
pub fn start_client(lab: &Lab, secs: &str) -> Proc {
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

/// The client's output as it comes: each line with the moment it arrived.
pub struct Client {
    pub proc: Proc,
    pub lines: mpsc::Receiver<(String, Instant)>,
    /// When each acknowledgement arrived.
    pub acks: Vec<Instant>,
    pub missing: Vec<String>,
    pub done: Option<u64>,
}

impl Client {
    /// The client (CLIENT) on the client host, writing keys for `secs` seconds.
    pub fn start(lab: &Lab, secs: u64) -> Client {
        let mut proc = start_client(lab, &secs.to_string());
        let out = proc.c().stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((l, Instant::now())).is_err() {
                    return;
                }
            }
        });
        Client {
            proc,
            lines,
            acks: Vec::new(),
            missing: Vec::new(),
            done: None,
        }
    }

    pub fn take(&mut self, (l, at): (String, Instant)) {
        if l.starts_with("acked") {
            self.acks.push(at);
        } else if let Some(k) = l.strip_prefix("missing ") {
            self.missing.push(k.to_string());
        } else if let Some(n) = l.strip_prefix("done ") {
            self.done = Some(n.parse().unwrap());
        }
    }

    /// Stop writing now (rather than when its `secs` run out): the client reads its keys back
    /// and ends. For a test whose load must last until something happened, however slowly
    /// the guest's instruction count moves on a loaded host.
    pub fn stop_writing(&mut self) {
        signal(self.proc.c(), libc::SIGUSR1);
    }

    /// Read what the client says for `d`; how many keys it acknowledged meanwhile.
    pub fn acks_for(&mut self, d: Duration) -> usize {
        let before = self.acks.len();
        let t0 = Instant::now();
        while let Some(left) = d.checked_sub(t0.elapsed()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => self.take(l),
                Err(_) => break,
            }
        }
        self.acks.len() - before
    }

    /// Wait (at most `limit`) for the client to finish; panics unless its connection
    /// survived and every acknowledged key read back. Returns the keys it wrote.
    pub fn finish(&mut self, limit: Duration, context: &dyn Fn() -> String) -> u64 {
        let t0 = Instant::now();
        while self.done.is_none() {
            let Some(left) = limit.checked_sub(t0.elapsed()) else {
                break;
            };
            match self.lines.recv_timeout(left) {
                Ok(l) => self.take(l),
                Err(_) => break,
            }
        }
        let status = wait_limited(
            self.proc.0.take().expect("running"),
            Duration::from_secs(5),
            "client",
        );
        let total = self.done.unwrap_or_else(|| {
            panic!(
                "the client's connection did not survive ({}): {}\n{}",
                status.status,
                String::from_utf8_lossy(&status.stderr),
                context()
            )
        });
        assert!(
            self.missing.is_empty(),
            "acknowledged keys lost: {:?}\n{}",
            self.missing,
            context()
        );
        assert!(status.status.success());
        total
    }

    /// The longest wait between two acknowledgements after `since`.
    pub fn longest_pause_after(&self, since: Instant) -> Duration {
        let i = self.acks.partition_point(|&a| a < since);
        let mut prev = since;
        let mut longest = Duration::ZERO;
        for &a in &self.acks[i..] {
            longest = longest.max(a - prev);
            prev = a;
        }
        longest
    }
}

/// A capture (tcpdump) of the frames the guest sends out of the TAP of host `ns`, that is,
/// the frames a side of the pair put on the wire: those from the guest's MAC that the TAP
/// took in from its process (`-Q in`; frames of the other side's guest, flooded to this TAP by
/// the bridge, go out of it).
pub struct Capture {
    pub proc: Proc,
    pub file: PathBuf,
}

impl Capture {
    pub fn start(lab: &Lab, ns: usize, name: &str) -> Capture {
        let file = lab.dir.join(format!("{name}.pcap"));
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns[ns],
                "tcpdump",
                "-i",
                "ftap0",
                "-Q",
                "in",
            ])
            .args(["-U", "-n"])
            .args(["-s", "96", "-w"])
            .arg(&file)
            .args(["ether", "src", GUEST_MAC])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (Debian's tcpdump) is needed: scripts/setup.sh installs it");
        let mut err = child.stderr.take().unwrap();
        let started = read_until(&mut err, "listening on", Duration::from_secs(10));
        assert!(started.is_ok(), "tcpdump did not start: {started:?}");
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut err, &mut std::io::sink());
        });
        Capture {
            proc: Proc(Some(child)),
            file,
        }
    }

    /// Stop capturing; the times (since the Unix epoch) of the frames captured.
    pub fn frames(mut self) -> Vec<Duration> {
        // SIGINT: tcpdump writes out what it has and exits.
        signal(self.proc.c(), libc::SIGINT);
        let _ = wait_limited(
            self.proc.0.take().unwrap(),
            Duration::from_secs(5),
            "tcpdump",
        );
        pcap_times(&std::fs::read(&self.file).unwrap_or_default())
    }
}

/// The timestamps of the records of a pcap file (microsecond or nanosecond resolution).
pub fn pcap_times(b: &[u8]) -> Vec<Duration> {
    if b.len() < 24 {
        return Vec::new();
    }
    let word = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let nanos = match word(0) {
        0xa1b2_c3d4 => false,
        0xa1b2_3c4d => true,
        m => panic!("not a little-endian pcap file (magic {m:#x})"),
    };
    let mut at = 24;
    let mut times = Vec::new();
    while at + 16 <= b.len() {
        let (secs, frac, len) = (word(at), word(at + 4), word(at + 8) as usize);
        let sub = if nanos { frac } else { frac * 1000 };
        times.push(Duration::new(secs as u64, sub));
        at += 16 + len;
    }
    times
}

pub fn wall() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
}

pub fn signal(c: &mut Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    let r = unsafe { libc::kill(c.id() as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill({}, {sig})", c.id());
}

/// Wait up to `limit` for a side to exit; its exit status, or None if it still runs.
pub fn exits_within(p: &mut Proc, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(st) = p.c().try_wait().unwrap() {
            return Some(st);
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The side `name` (a thawed one, say) must exit non-zero within `limit`, saying all of `why`.
pub fn stops_saying(
    lab: &Lab,
    p: &mut Proc,
    name: &str,
    limit: Duration,
    why: &[&str],
    context: &dyn Fn() -> String,
) {
    let st = exits_within(p, limit);
    assert!(
        st.is_some_and(|s| !s.success()),
        "{name} still runs (or exited 0): {st:?}\n{}",
        context()
    );
    let err = stderr_of(lab, name);
    assert!(
        why.iter().all(|w| err.contains(w)),
        "{name} does not say why it stopped:\n{err}"
    );
}

/// Power the guest of the live side `p` off from its console, and wait for it (60 s at most).
pub fn poweroff(p: &mut Proc) {
    let _ = p.c().stdin.as_mut().unwrap().write_all(b"poweroff\n");
    let _ = wait_limited(
        p.0.take().expect("running"),
        Duration::from_secs(60),
        "poweroff",
    );
}

pub fn stderr_of(lab: &Lab, name: &str) -> String {
    std::fs::read_to_string(lab.dir.join(format!("{name}.stderr"))).unwrap_or_default()
}
