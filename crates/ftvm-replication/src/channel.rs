//! The replication channel: messages over TCP, both ends authenticated with a pre-shared key.
//!
//! Handshake: each side sends a random 32-byte nonce, then a proof
//! `BLAKE3-keyed(psk, "ftvm-auth" | its role | peer nonce | own nonce)`; each checks the other's.
//! Messages are then `len u32 | seq u64 | generation u64 | type u8 | payload | mac[32]` with
//! `mac = BLAKE3-keyed(session key, direction | seq | generation | type | payload)` and sequence
//! numbers that must grow by one: no third party can inject, replay, reorder or pose as a peer. A
//! message that fails any check ends the connection. Every message carries the pair generation
//! its sender belongs to (see the arbiter); a receiver drops a message of an older generation
//! than the newest it has seen.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use thiserror::Error;

/// The largest payload of one message.
pub const MAX_MSG: u32 = 64 << 20;
/// `len u32 | seq u64 | generation u64 | type u8`
const HEAD: usize = 21;
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum ChannelError {
    #[error("replication channel I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer failed authentication (wrong pre-shared key, or not an ftvm peer)")]
    Auth,
    #[error("malformed or unauthenticated message: {0}")]
    Bad(&'static str),
    #[error("pre-shared key file {0}: {1}")]
    Psk(String, String),
}

/// The pre-shared key, derived from the bytes of a key file.
#[derive(Clone)]
pub struct Psk([u8; 32]);

impl Psk {
    pub fn from_file(path: &Path) -> Result<Psk, ChannelError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ChannelError::Psk(path.display().to_string(), e.to_string()))?;
        if bytes.len() < 16 {
            return Err(ChannelError::Psk(
                path.display().to_string(),
                "too short (at least 16 bytes of secret)".into(),
            ));
        }
        Ok(Psk(blake3::derive_key("ftvm replication psk v1", &bytes)))
    }
    pub fn from_bytes(b: &[u8]) -> Psk {
        Psk(blake3::derive_key("ftvm replication psk v1", b))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Backup,
}

impl Role {
    fn tag(self) -> u8 {
        match self {
            Role::Primary => b'P',
            Role::Backup => b'B',
        }
    }
}

/// What travels on the channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Bytes of the input log (primary to backup), stamped with the primary's clock when it
    /// sent them ([`crate::lease::now_ns`]).
    Log { clock: u64, bytes: Vec<u8> },
    /// The backup holds the log up to `count`; `clock` is the newest primary stamp it has
    /// received (the echo that renews the primary's lease).
    Ack { count: u64, clock: u64 },
    /// Liveness. From the primary, `count` is the count up to which outputs were released and
    /// `clock` its clock when it sent the heartbeat ([`crate::lease::now_ns`]); from the
    /// backup, `count` is the count up to which it has replayed and `clock` the newest primary
    /// `clock` it has received (the echo that renews the primary's lease).
    Heartbeat { count: u64, clock: u64 },
    /// The first message to a backup: the pair's generation (see the arbiter) and the size of
    /// each of the primary's disks, whose contents follow as `Disk` messages, then the log.
    Attach { generation: u64, disks: Vec<u64> },
    /// Disk contents at `offset` of disk `index` (disks in the order of `Attach`); ranges not
    /// sent are zero.
    Disk {
        index: u32,
        offset: u64,
        data: Vec<u8>,
    },
}

fn random_nonce() -> Result<[u8; 32], ChannelError> {
    let mut n = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(n)
}

/// One authenticated connection; split into a sending and a receiving half.
pub struct Channel {
    stream: TcpStream,
    key: [u8; 32],
    role: Role,
    seq: u64,
    /// Sending: the generation stamped on every message. Receiving: the newest generation
    /// seen; messages of older ones are dropped.
    generation: u64,
    /// Messages dropped for their old generation.
    pub dropped: u64,
}

impl Channel {
    /// Authenticate `stream` as `role` with `psk`. A peer that does not complete the handshake
    /// within HANDSHAKE_TIMEOUT is refused.
    pub fn handshake(
        mut stream: TcpStream,
        role: Role,
        psk: &Psk,
    ) -> Result<(Channel, Channel), ChannelError> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let mine = random_nonce()?;
        stream.write_all(&mine)?;
        let mut theirs = [0u8; 32];
        stream.read_exact(&mut theirs)?;
        let peer_role = match role {
            Role::Primary => Role::Backup,
            Role::Backup => Role::Primary,
        };
        let proof = |r: Role, a: &[u8; 32], b: &[u8; 32]| {
            let mut h = blake3::Hasher::new_keyed(&psk.0);
            h.update(b"ftvm-auth");
            h.update(&[r.tag()]);
            h.update(a);
            h.update(b);
            *h.finalize().as_bytes()
        };
        stream.write_all(&proof(role, &theirs, &mine))?;
        let mut got = [0u8; 32];
        stream.read_exact(&mut got)?;
        if got != proof(peer_role, &mine, &theirs) {
            return Err(ChannelError::Auth);
        }
        let (p_nonce, b_nonce) = match role {
            Role::Primary => (mine, theirs),
            Role::Backup => (theirs, mine),
        };
        let mut h = blake3::Hasher::new_keyed(&psk.0);
        h.update(b"ftvm-session");
        h.update(&p_nonce);
        h.update(&b_nonce);
        let key = *h.finalize().as_bytes();
        // From here on the peer's liveness is judged by heartbeats, not by socket timeouts.
        stream.set_read_timeout(None)?;
        let rx = stream.try_clone()?;
        Ok((
            Channel {
                stream,
                key,
                role,
                seq: 0,
                generation: 0,
                dropped: 0,
            },
            Channel {
                stream: rx,
                key,
                role: peer_role,
                seq: 0,
                generation: 0,
                dropped: 0,
            },
        ))
    }

    /// The generation this half sends as (sending half), or the oldest it accepts (receiving
    /// half).
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn mac(&self, seq: u64, generation: u64, kind: u8, payload: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&[self.role.tag()]);
        h.update(&seq.to_le_bytes());
        h.update(&generation.to_le_bytes());
        h.update(&[kind]);
        h.update(payload);
        *h.finalize().as_bytes()
    }

    /// Send a message (on the sending half).
    pub fn send(&mut self, m: &Msg) -> Result<(), ChannelError> {
        let (kind, payload): (u8, Vec<u8>) = match m {
            Msg::Log { clock, bytes } => {
                let mut p = Vec::with_capacity(8 + bytes.len());
                p.extend_from_slice(&clock.to_le_bytes());
                p.extend_from_slice(bytes);
                (1, p)
            }
            Msg::Ack { count, clock } => {
                let mut p = count.to_le_bytes().to_vec();
                p.extend_from_slice(&clock.to_le_bytes());
                (2, p)
            }
            Msg::Heartbeat { count, clock } => {
                let mut p = count.to_le_bytes().to_vec();
                p.extend_from_slice(&clock.to_le_bytes());
                (3, p)
            }
            Msg::Attach { generation, disks } => {
                let mut p = generation.to_le_bytes().to_vec();
                for d in disks {
                    p.extend_from_slice(&d.to_le_bytes());
                }
                (4, p)
            }
            Msg::Disk {
                index,
                offset,
                data,
            } => {
                let mut p = Vec::with_capacity(12 + data.len());
                p.extend_from_slice(&index.to_le_bytes());
                p.extend_from_slice(&offset.to_le_bytes());
                p.extend_from_slice(data);
                (5, p)
            }
        };
        // Send nothing the receiver would refuse.
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l <= MAX_MSG)
            .ok_or(ChannelError::Bad("message too large"))?;
        self.seq += 1;
        let mac = self.mac(self.seq, self.generation, kind, &payload);
        let mut buf = Vec::with_capacity(payload.len() + HEAD + 32);
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&self.seq.to_le_bytes());
        buf.extend_from_slice(&self.generation.to_le_bytes());
        buf.push(kind);
        buf.extend_from_slice(&payload);
        buf.extend_from_slice(&mac);
        self.stream.write_all(&buf)?;
        Ok(())
    }

    /// Receive the next message (on the receiving half), dropping those of an older
    /// generation than the newest seen.
    pub fn recv(&mut self) -> Result<Msg, ChannelError> {
        loop {
            let (generation, kind, payload) = self.recv_frame()?;
            if generation < self.generation {
                self.dropped += 1;
                tracing::debug!(
                    generation,
                    current = self.generation,
                    "dropped a message of an old generation"
                );
                continue;
            }
            self.generation = generation;
            return Self::decode(kind, payload);
        }
    }

    fn recv_frame(&mut self) -> Result<(u64, u8, Vec<u8>), ChannelError> {
        let mut head = [0u8; HEAD];
        self.stream.read_exact(&mut head)?;
        let word = |r: std::ops::Range<usize>| u64::from_le_bytes(head[r].try_into().expect("8"));
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
        let seq = word(4..12);
        let generation = word(12..20);
        let kind = head[20];
        if len > MAX_MSG {
            return Err(ChannelError::Bad("length"));
        }
        let mut payload = vec![0u8; len as usize];
        self.stream.read_exact(&mut payload)?;
        let mut mac = [0u8; 32];
        self.stream.read_exact(&mut mac)?;
        if seq != self.seq + 1 {
            return Err(ChannelError::Bad("sequence"));
        }
        if mac != self.mac(seq, generation, kind, &payload) {
            return Err(ChannelError::Bad("authentication code"));
        }
        self.seq = seq;
        Ok((generation, kind, payload))
    }

    fn decode(kind: u8, payload: Vec<u8>) -> Result<Msg, ChannelError> {
        let u64_of = |p: &[u8]| -> Result<u64, ChannelError> {
            Ok(u64::from_le_bytes(
                p.try_into().map_err(|_| ChannelError::Bad("payload"))?,
            ))
        };
        Ok(match kind {
            1 if payload.len() >= 8 => Msg::Log {
                clock: u64_of(&payload[..8])?,
                bytes: payload[8..].to_vec(),
            },
            2 if payload.len() == 16 => Msg::Ack {
                count: u64_of(&payload[..8])?,
                clock: u64_of(&payload[8..])?,
            },
            3 if payload.len() == 16 => Msg::Heartbeat {
                count: u64_of(&payload[..8])?,
                clock: u64_of(&payload[8..])?,
            },
            4 if payload.len() >= 8 && payload.len().is_multiple_of(8) => {
                let mut words = payload.chunks_exact(8).map(u64_of);
                Msg::Attach {
                    generation: words.next().expect("one word")?,
                    disks: words.collect::<Result<_, _>>()?,
                }
            }
            5 if payload.len() >= 12 => Msg::Disk {
                index: u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")),
                offset: u64_of(&payload[4..12])?,
                data: payload[12..].to_vec(),
            },
            _ => return Err(ChannelError::Bad("type")),
        })
    }

    /// Bound how long a receive may wait for the next bytes (`None`: forever).
    pub fn set_read_timeout(&self, limit: Option<std::time::Duration>) -> Result<(), ChannelError> {
        Ok(self.stream.set_read_timeout(limit)?)
    }

    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Bound how long a send may block on a peer that stops reading (`None`: forever). A send
    /// that times out fails; the channel is then unusable and should be shut down.
    pub fn set_write_timeout(
        &self,
        limit: Option<std::time::Duration>,
    ) -> Result<(), ChannelError> {
        Ok(self.stream.set_write_timeout(limit)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    type Halves = Result<(Channel, Channel), ChannelError>;

    fn pair(pk: &[u8], bk: &[u8]) -> (Halves, Halves) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let bk = bk.to_vec();
        let t = std::thread::spawn(move || {
            let s = TcpStream::connect(addr).unwrap();
            Channel::handshake(s, Role::Backup, &Psk::from_bytes(&bk))
        });
        let (s, _) = l.accept().unwrap();
        let p = Channel::handshake(s, Role::Primary, &Psk::from_bytes(pk));
        (p, t.join().unwrap())
    }

    #[test]
    fn authenticated_round_trip() {
        let (p, b) = pair(b"0123456789abcdef", b"0123456789abcdef");
        let (mut ptx, mut prx) = p.unwrap();
        let (mut btx, mut brx) = b.unwrap();
        let log = Msg::Log {
            clock: 5,
            bytes: b"log bytes".to_vec(),
        };
        ptx.send(&log).unwrap();
        let beat = Msg::Heartbeat { count: 7, clock: 9 };
        ptx.send(&beat).unwrap();
        assert_eq!(brx.recv().unwrap(), log);
        assert_eq!(brx.recv().unwrap(), beat);
        let ack = Msg::Ack {
            count: 42,
            clock: 5,
        };
        btx.send(&ack).unwrap();
        assert_eq!(prx.recv().unwrap(), ack);
        for m in [
            Msg::Attach {
                generation: 3,
                disks: vec![1 << 20, 512],
            },
            Msg::Attach {
                generation: 0,
                disks: vec![],
            },
            Msg::Disk {
                index: 1,
                offset: 4096,
                data: vec![7; 300],
            },
        ] {
            ptx.send(&m).unwrap();
            assert_eq!(brx.recv().unwrap(), m);
        }
    }

    #[test]
    fn a_wrong_key_is_refused() {
        let (p, b) = pair(b"0123456789abcdef", b"another key.....");
        assert!(matches!(p, Err(ChannelError::Auth)) || matches!(b, Err(ChannelError::Auth)));
    }

    #[test]
    fn injected_bytes_are_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let s = TcpStream::connect(addr).unwrap();
            let (_tx, mut rx) =
                Channel::handshake(s, Role::Backup, &Psk::from_bytes(b"0123456789abcdef")).unwrap();
            rx.recv()
        });
        let (s, _) = l.accept().unwrap();
        let (mut tx, _rx) =
            Channel::handshake(s, Role::Primary, &Psk::from_bytes(b"0123456789abcdef")).unwrap();
        // A message with a forged authentication code.
        let mut raw = tx.stream.try_clone().unwrap();
        let mut forged = Vec::new();
        forged.extend_from_slice(&3u32.to_le_bytes());
        forged.extend_from_slice(&1u64.to_le_bytes());
        forged.extend_from_slice(&0u64.to_le_bytes());
        forged.push(1);
        forged.extend_from_slice(b"bad");
        forged.extend_from_slice(&[0u8; 32]);
        raw.write_all(&forged).unwrap();
        tx.seq = 1;
        assert!(matches!(
            t.join().unwrap(),
            Err(ChannelError::Bad("authentication code"))
        ));
    }

    #[test]
    fn messages_of_an_old_generation_are_dropped() {
        let (p, b) = pair(b"0123456789abcdef", b"0123456789abcdef");
        let (mut ptx, _prx) = p.unwrap();
        let (_btx, mut brx) = b.unwrap();
        let beat = |count| Msg::Heartbeat { count, clock: 0 };
        ptx.set_generation(2);
        ptx.send(&beat(1)).unwrap();
        // A message stamped with an older generation (authentic, in sequence) is dropped;
        // the next one of the current generation arrives.
        ptx.set_generation(1);
        ptx.send(&beat(2)).unwrap();
        ptx.set_generation(2);
        ptx.send(&beat(3)).unwrap();
        assert_eq!(brx.recv().unwrap(), beat(1));
        assert_eq!(brx.generation(), 2);
        assert_eq!(brx.recv().unwrap(), beat(3));
        assert_eq!(brx.dropped, 1);
    }

    #[test]
    fn an_oversized_message_is_refused_before_it_is_sent() {
        let (p, _b) = pair(b"0123456789abcdef", b"0123456789abcdef");
        let (mut ptx, _prx) = p.unwrap();
        let big = Msg::Log {
            clock: 0,
            bytes: vec![0; MAX_MSG as usize],
        };
        assert!(matches!(
            ptx.send(&big),
            Err(ChannelError::Bad("message too large"))
        ));
        // Nothing was sent, so the channel still works.
        ptx.send(&Msg::Heartbeat { count: 1, clock: 0 }).unwrap();
    }
}
