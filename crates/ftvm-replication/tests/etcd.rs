//! The etcd arbiter against a real etcd server (Debian's etcd-server), started by the test on
//! loopback ports of its own.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ftvm_replication::Arbiter;

struct Etcd {
    child: Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_etcd() -> Etcd {
    let dir = std::env::temp_dir().join(format!("ftvm-etcd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (port, peer) = (free_port(), free_port());
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--name", "ftvm-test", "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("ftvm-test={peer}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
        .spawn()
        .expect("etcd (Debian's etcd-server) is needed: scripts/setup.sh installs it");
    let e = Etcd { child, dir, port };
    let t0 = Instant::now();
    // Ready once a request through the gateway is answered.
    let a = Arbiter::parse(&format!("etcd:http://127.0.0.1:{port}/ready")).unwrap();
    while a.taken(0).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(TcpStream::connect(("127.0.0.1", e.port)).is_ok());
    e
}

/// The lease a key is bound to (0: none), read through etcd's JSON gateway.
fn lease_of(port: u16, key: &str) -> i64 {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = serde_json::json!({ "key": b64.encode(key) }).to_string();
    let text = ureq::post(&format!("http://127.0.0.1:{port}/v3/kv/range"))
        .send(body)
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let kv = &r["kvs"][0];
    assert!(kv.is_object(), "{key} is missing: {r}");
    // proto3 JSON leaves out zero; int64 travels as a string.
    kv["lease"].as_str().map_or(0, |l| l.parse().unwrap())
}

#[test]
fn etcd_arbiter_one_winner_per_generation() {
    let etcd = start_etcd();
    let spec = format!("etcd:http://127.0.0.1:{}/pair-a", etcd.port);
    let a = Arbiter::parse(&spec).unwrap();
    let other = Arbiter::parse(&format!("etcd:http://127.0.0.1:{}/pair-b", etcd.port)).unwrap();
    for g in 0..3u64 {
        assert!(!a.taken(g).unwrap());
        // Two sides race from two threads; exactly one wins.
        let b = a.clone();
        let t = std::thread::spawn(move || b.test_and_set(g, "backup").unwrap());
        let mine = a.test_and_set(g, "primary").unwrap();
        let theirs = t.join().unwrap();
        assert!(mine ^ theirs, "exactly one side wins generation {g}");
        assert!(a.taken(g).unwrap());
        assert!(
            !a.test_and_set(g, "late").unwrap(),
            "a generation is won once"
        );
        let w = a.winner(g).unwrap().unwrap();
        assert_eq!(w, if mine { "primary" } else { "backup" });
        // Another pair's keys are separate.
        assert!(!other.taken(g).unwrap());
    }
    // A won key is bound to no lease: it cannot expire while its winner is cut off from etcd
    // (or frozen), so nobody can win that generation later.
    for g in 0..3u64 {
        assert_eq!(
            lease_of(etcd.port, &format!("/pair-a/{g}")),
            0,
            "generation {g}"
        );
    }
    // A stopped etcd is an error, never a win.
    drop(etcd);
    assert!(a.test_and_set(9, "primary").is_err());
}
