//! The replication channel's cost, protocol 1 (BLAKE3 MACs, clear data) against protocol 2
//! (Noise, ChaCha20-Poly1305), over loopback, alternating A and B round by round:
//!
//! - throughput: 64 KiB `Log` messages one way, until the receiver acknowledges the last;
//! - latency: a 16-byte heartbeat answered by a 16-byte `Ack`, round trip;
//! - bytes on the wire per message (through a relay that counts them).
//!
//! Run: `cargo run --release -p ftvm-replication --example channel_bench [ROUNDS]`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftvm_replication::{Channel, Hello, Msg, Psk, Role};

const KEY: &[u8] = b"0123456789abcdef";
const LOG_BYTES: usize = 64 << 10;
const THROUGHPUT_MSGS: u64 = 2048;
const PINGS: usize = 5000;

/// Protocol 1, as it was (the handshake, send and receive of `Log`, `Ack` and `Heartbeat`).
mod v1 {
    use super::*;

    const HEAD: usize = 21;

    pub struct Channel {
        stream: TcpStream,
        key: [u8; 32],
        role: u8,
        seq: u64,
    }

    fn nonce() -> [u8; 32] {
        let mut n = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut n))
            .expect("urandom");
        n
    }

    pub fn handshake(mut stream: TcpStream, primary: bool, psk: &[u8]) -> (Channel, Channel) {
        let psk = blake3::derive_key("ftvm replication psk v1", psk);
        stream.set_nodelay(true).unwrap();
        let mine = nonce();
        stream.write_all(&mine).unwrap();
        let mut theirs = [0u8; 32];
        stream.read_exact(&mut theirs).unwrap();
        let (me, peer) = if primary { (b'P', b'B') } else { (b'B', b'P') };
        let proof = |r: u8, a: &[u8; 32], b: &[u8; 32]| {
            let mut h = blake3::Hasher::new_keyed(&psk);
            h.update(b"ftvm-auth");
            h.update(&[r]);
            h.update(a);
            h.update(b);
            *h.finalize().as_bytes()
        };
        stream.write_all(&proof(me, &theirs, &mine)).unwrap();
        let mut got = [0u8; 32];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(got, proof(peer, &mine, &theirs));
        let (p, b) = if primary {
            (mine, theirs)
        } else {
            (theirs, mine)
        };
        let mut h = blake3::Hasher::new_keyed(&psk);
        h.update(b"ftvm-session");
        h.update(&p);
        h.update(&b);
        let key = *h.finalize().as_bytes();
        let rx = stream.try_clone().unwrap();
        (
            Channel {
                stream,
                key,
                role: me,
                seq: 0,
            },
            Channel {
                stream: rx,
                key,
                role: peer,
                seq: 0,
            },
        )
    }

    impl Channel {
        fn mac(&self, seq: u64, generation: u64, kind: u8, payload: &[u8]) -> [u8; 32] {
            let mut h = blake3::Hasher::new_keyed(&self.key);
            h.update(&[self.role]);
            h.update(&seq.to_le_bytes());
            h.update(&generation.to_le_bytes());
            h.update(&[kind]);
            h.update(payload);
            *h.finalize().as_bytes()
        }

        pub fn send(&mut self, m: &Msg) {
            let (kind, payload) = match m {
                Msg::Log { clock, bytes } => {
                    let mut p = Vec::with_capacity(8 + bytes.len());
                    p.extend_from_slice(&clock.to_le_bytes());
                    p.extend_from_slice(bytes);
                    (1, p)
                }
                Msg::Ack { count, clock } | Msg::Heartbeat { count, clock } => {
                    let mut p = count.to_le_bytes().to_vec();
                    p.extend_from_slice(&clock.to_le_bytes());
                    (if matches!(m, Msg::Ack { .. }) { 2 } else { 3 }, p)
                }
                _ => unimplemented!(),
            };
            self.seq += 1;
            let mac = self.mac(self.seq, 0, kind, &payload);
            let mut buf = Vec::with_capacity(payload.len() + HEAD + 32);
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&self.seq.to_le_bytes());
            buf.extend_from_slice(&0u64.to_le_bytes());
            buf.push(kind);
            buf.extend_from_slice(&payload);
            buf.extend_from_slice(&mac);
            self.stream.write_all(&buf).unwrap();
        }

        pub fn recv(&mut self) -> Msg {
            let mut head = [0u8; HEAD];
            self.stream.read_exact(&mut head).unwrap();
            let len = u32::from_le_bytes(head[0..4].try_into().unwrap());
            let seq = u64::from_le_bytes(head[4..12].try_into().unwrap());
            let generation = u64::from_le_bytes(head[12..20].try_into().unwrap());
            let kind = head[20];
            let mut payload = vec![0u8; len as usize];
            self.stream.read_exact(&mut payload).unwrap();
            let mut mac = [0u8; 32];
            self.stream.read_exact(&mut mac).unwrap();
            assert_eq!(seq, self.seq + 1);
            assert_eq!(mac, self.mac(seq, generation, kind, &payload));
            self.seq = seq;
            let word = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().unwrap());
            match kind {
                1 => Msg::Log {
                    clock: word(0),
                    bytes: payload[8..].to_vec(),
                },
                2 => Msg::Ack {
                    count: word(0),
                    clock: word(8),
                },
                3 => Msg::Heartbeat {
                    count: word(0),
                    clock: word(8),
                },
                _ => panic!("kind {kind}"),
            }
        }
    }
}

/// The two ends of one protocol, behind one interface.
trait Half: Send + 'static {
    fn send(&mut self, m: &Msg);
    fn recv(&mut self) -> Msg;
}

impl Half for v1::Channel {
    fn send(&mut self, m: &Msg) {
        v1::Channel::send(self, m)
    }
    fn recv(&mut self) -> Msg {
        v1::Channel::recv(self)
    }
}

impl Half for Channel {
    fn send(&mut self, m: &Msg) {
        Channel::send(self, m).unwrap()
    }
    fn recv(&mut self) -> Msg {
        Channel::recv(self).unwrap()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    V1,
    V2,
}

type Halves = (Box<dyn Half>, Box<dyn Half>);

/// (primary tx, primary rx), (backup tx, backup rx), past the attach for protocol 2.
/// With `relay`, the backup connects through a relay that counts the bytes both ways.
fn connect(proto: Proto, relay: Option<Arc<AtomicU64>>) -> (Halves, Halves) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut addr = l.local_addr().unwrap();
    if let Some(count) = relay {
        let r = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = addr;
        addr = r.local_addr().unwrap();
        std::thread::spawn(move || {
            let (a, _) = r.accept().unwrap();
            let b = TcpStream::connect(target).unwrap();
            a.set_nodelay(true).unwrap();
            b.set_nodelay(true).unwrap();
            for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                let count = count.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            let _ = to.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        count.fetch_add(n as u64, Ordering::SeqCst);
                    }
                });
            }
        });
    }
    let t = std::thread::spawn(move || {
        let s = TcpStream::connect(addr).unwrap();
        match proto {
            Proto::V1 => {
                let (tx, rx) = v1::handshake(s, false, KEY);
                (Box::new(tx) as Box<dyn Half>, Box::new(rx) as Box<dyn Half>)
            }
            Proto::V2 => {
                let hello = Hello::new(Role::Backup, 256 << 20, "");
                let (tx, mut rx, _) = Channel::handshake(s, &Psk::from_bytes(KEY), &hello).unwrap();
                rx.recv().unwrap(); // the attach
                (Box::new(tx) as Box<dyn Half>, Box::new(rx) as Box<dyn Half>)
            }
        }
    });
    let (s, _) = l.accept().unwrap();
    let p: Halves = match proto {
        Proto::V1 => {
            let (tx, rx) = v1::handshake(s, true, KEY);
            (Box::new(tx), Box::new(rx))
        }
        Proto::V2 => {
            let hello = Hello::new(Role::Primary, 256 << 20, "");
            let (mut tx, rx, _) = Channel::handshake(s, &Psk::from_bytes(KEY), &hello).unwrap();
            tx.send(&Msg::Attach {
                generation: 0,
                disks: vec![],
            })
            .unwrap();
            (Box::new(tx), Box::new(rx))
        }
    };
    (p, t.join().unwrap())
}

/// MB/s (10^6 bytes of log a second) of THROUGHPUT_MSGS log messages of 64 KiB.
fn throughput(proto: Proto) -> f64 {
    let ((mut ptx, mut prx), (mut btx, mut brx)) = connect(proto, None);
    let backup = std::thread::spawn(move || {
        for _ in 0..THROUGHPUT_MSGS {
            brx.recv();
        }
        btx.send(&Msg::Ack {
            count: THROUGHPUT_MSGS,
            clock: 0,
        });
    });
    let bytes = vec![0xa5u8; LOG_BYTES];
    let t0 = Instant::now();
    for i in 0..THROUGHPUT_MSGS {
        // Each message is built anew, as the primary's log writer does.
        ptx.send(&Msg::Log {
            clock: i,
            bytes: bytes.clone(),
        });
    }
    prx.recv();
    let t = t0.elapsed();
    backup.join().unwrap();
    (THROUGHPUT_MSGS as f64 * LOG_BYTES as f64) / t.as_secs_f64() / 1e6
}

/// The median round trip of a 16-byte heartbeat answered by a 16-byte `Ack`.
fn latency(proto: Proto) -> Duration {
    let ((mut ptx, mut prx), (mut btx, mut brx)) = connect(proto, None);
    let backup = std::thread::spawn(move || {
        for _ in 0..PINGS {
            if let Msg::Heartbeat { count, clock } = brx.recv() {
                btx.send(&Msg::Ack { count, clock });
            }
        }
    });
    let mut rtts = Vec::with_capacity(PINGS);
    for i in 0..PINGS as u64 {
        let t0 = Instant::now();
        ptx.send(&Msg::Heartbeat { count: i, clock: 0 });
        prx.recv();
        rtts.push(t0.elapsed());
    }
    backup.join().unwrap();
    rtts.sort();
    rtts[rtts.len() / 2]
}

/// Bytes on the wire: (handshake both ways, per 64 KiB log message, per 16-byte ack).
fn wire_bytes(proto: Proto) -> (u64, f64, f64) {
    let count = Arc::new(AtomicU64::new(0));
    let ((mut ptx, _prx), (mut btx, mut brx)) = connect(proto, Some(count.clone()));
    // The relay counts a write once it forwarded it: wait for the count to settle.
    let settle = || {
        let mut last = u64::MAX;
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = count.load(Ordering::SeqCst);
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let n = 100u64;
    let mut handshake = settle();
    if proto == Proto::V2 {
        // Protocol 2's count includes the attach (8-byte payload) sent after the hellos.
        handshake -= (wire_len(8)) as u64;
    }
    let c0 = settle();
    for i in 0..n {
        ptx.send(&Msg::Log {
            clock: i,
            bytes: vec![0; LOG_BYTES],
        });
        brx.recv();
    }
    let c1 = settle();
    for i in 0..n {
        btx.send(&Msg::Ack { count: i, clock: 0 });
    }
    let c2 = settle();
    (
        handshake,
        (c1 - c0) as f64 / n as f64 - (LOG_BYTES + 8) as f64,
        (c2 - c1) as f64 / n as f64 - 16.0,
    )
}

/// Protocol 2's bytes on the wire for a payload of `len`.
fn wire_len(len: usize) -> usize {
    let plain = ftvm_replication::wire::HEAD + len;
    plain
        + plain.div_ceil(ftvm_replication::wire::MAX_FRAME_PLAIN)
            * (2 + ftvm_replication::wire::TAG)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let (mut t1, mut t2, mut l1, mut l2) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        // A then B, B then A: neither always goes first.
        let order = if round % 2 == 0 {
            [Proto::V1, Proto::V2]
        } else {
            [Proto::V2, Proto::V1]
        };
        for p in order {
            let (t, l) = (throughput(p), latency(p).as_secs_f64() * 1e6);
            match p {
                Proto::V1 => (t1.push(t), l1.push(l)),
                Proto::V2 => (t2.push(t), l2.push(l)),
            };
        }
        eprintln!(
            "round {round}: v1 {:.0} MB/s {:.1} us, v2 {:.0} MB/s {:.1} us",
            t1[round], l1[round], t2[round], l2[round]
        );
    }
    let (h1, log1, ack1) = wire_bytes(Proto::V1);
    let (h2, log2, ack2) = wire_bytes(Proto::V2);
    println!("{rounds} rounds, alternating; medians of the rounds");
    println!(
        "throughput, 64 KiB log messages: v1 {:.0} MB/s, v2 {:.0} MB/s ({:+.1}%)",
        median(t1.clone()),
        median(t2.clone()),
        (median(t2) / median(t1) - 1.0) * 100.0
    );
    println!(
        "round trip, 16-byte heartbeat and ack: v1 {:.1} us, v2 {:.1} us ({:+.1}%)",
        median(l1.clone()),
        median(l2.clone()),
        (median(l2) / median(l1) - 1.0) * 100.0
    );
    println!(
        "bytes on the wire beyond the payload: 64 KiB log v1 {log1:.0}, v2 {log2:.0} (formula {}); 16-byte ack v1 {ack1:.0}, v2 {ack2:.0} (formula {}); handshake v1 {h1}, v2 {h2} (both ways, v2 with the hellos)",
        wire_len(LOG_BYTES + 8) - LOG_BYTES - 8,
        wire_len(16) - 16
    );
}
