//! The replication protocol's messages as bytes, without a socket: the message header, the
//! payload of each kind, the reassembly of a message from the plaintext of its Noise frames,
//! the hello, and the order in which each side may send its messages. Everything here is pure
//! (the fuzz target `channel` drives it directly); [`crate::channel`] adds the socket and the
//! encryption.
//!
//! A message is `kind u8 | generation u64 | len u32 | payload[len]` (little-endian), cut into
//! pieces of at most [`MAX_FRAME_PLAIN`] bytes, each sealed as one Noise transport message.

use std::fmt;

use crate::channel::{ChannelError, Msg, Role};

/// The version of the replication protocol this build speaks (version 1 was the BLAKE3
/// handshake with per-message MACs, before Noise and the hello; version 2 shipped logs of
/// format version 1, without the clock's `Rate` input, which version 3's logs may hold; version
/// 3 sent RAM inside the log's header, where version 4 sends it as `Ram` pages, by pre-copy).
pub const PROTOCOL_VERSION: u32 = 4;
/// The most pages one `Ram` message carries (1 MiB of them).
pub const MAX_RAM_PAGES: usize = 256;
/// The size of a RAM page.
pub const PAGE: usize = 4096;
/// In a `Ram` message, a page number with this bit set names a page that is all zeros: no
/// bytes follow for it.
pub const ZERO_PAGE: u64 = 1 << 63;

/// The pages of a `Ram` message (checked by the decoder): each page number (without
/// [`ZERO_PAGE`]) and its bytes, `None` for a page of zeros.
pub fn ram_pages<'a>(
    pages: &'a [u64],
    data: &'a [u8],
) -> impl Iterator<Item = (u64, Option<&'a [u8]>)> + 'a {
    let mut chunks = data.chunks_exact(PAGE);
    pages.iter().map(move |&p| {
        if p & ZERO_PAGE != 0 {
            (p & !ZERO_PAGE, None)
        } else {
            (p, chunks.next())
        }
    })
}

/// Builds `Ram` messages: pages of zeros travel as their number alone.
#[derive(Default)]
pub struct RamBatch {
    pub pages: Vec<u64>,
    pub data: Vec<u8>,
}

impl RamBatch {
    pub fn push(&mut self, page: u64, bytes: &[u8]) {
        if bytes.iter().all(|&b| b == 0) {
            self.pages.push(page | ZERO_PAGE);
        } else {
            self.pages.push(page);
            self.data.extend_from_slice(bytes);
        }
    }
    pub fn len(&self) -> usize {
        self.pages.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
    /// The message, and the bytes it carries.
    pub fn take(&mut self) -> (Msg, u64) {
        let b = std::mem::take(self);
        let n = (b.pages.len() * 8 + b.data.len()) as u64;
        (
            Msg::Ram {
                pages: b.pages,
                data: b.data,
            },
            n,
        )
    }
}
/// The largest frame a `Relay` carries (a network device's largest, with its header room).
pub const MAX_RELAY_FRAME: usize = 65536 + 64;
/// The largest payload of one message (the bytes after its header): 64 MiB.
pub const MAX_MSG: u32 = 64 << 20;
/// The largest Noise message (ciphertext and tag).
pub const MAX_FRAME: usize = 65535;
/// The Noise (ChaChaPoly) authentication tag that ends each frame.
pub const TAG: usize = 16;
/// The most plaintext one frame carries.
pub const MAX_FRAME_PLAIN: usize = MAX_FRAME - TAG;
/// `kind u8 | generation u64 | len u32`, at the start of a message's first frame.
pub const HEAD: usize = 13;
/// The most a receiver reserves for a message before its bytes arrive: a peer that claims
/// [`MAX_MSG`] and sends nothing more costs this much, not the whole claim.
pub const FIRST_RESERVE: usize = 1 << 20;
/// The largest hello accepted (its layout is a short description of the devices).
pub const MAX_HELLO: usize = 64 << 10;

/// The length of a `Vote`'s payload: `what u8, count u64, hash [u8; 32], injected u64`.
const VOTE_LEN: usize = 49;

/// The kinds of message, as numbered on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Hello = 0,
    Log = 1,
    Ack = 2,
    Heartbeat = 3,
    Attach = 4,
    Disk = 5,
    Ram = 6,
    HandOver = 7,
    Relay = 8,
    PageRequest = 9,
    Vote = 10,
    Verdict = 11,
    Recheck = 12,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Hello,
            1 => Kind::Log,
            2 => Kind::Ack,
            3 => Kind::Heartbeat,
            4 => Kind::Attach,
            5 => Kind::Disk,
            6 => Kind::Ram,
            7 => Kind::HandOver,
            8 => Kind::Relay,
            9 => Kind::PageRequest,
            10 => Kind::Vote,
            11 => Kind::Verdict,
            12 => Kind::Recheck,
            _ => return None,
        })
    }

    pub fn of(m: &Msg) -> Kind {
        match m {
            Msg::Log { .. } => Kind::Log,
            Msg::Ack { .. } => Kind::Ack,
            Msg::Heartbeat { .. } => Kind::Heartbeat,
            Msg::Attach { .. } => Kind::Attach,
            Msg::Disk { .. } => Kind::Disk,
            Msg::Ram { .. } => Kind::Ram,
            Msg::HandOver { .. } => Kind::HandOver,
            Msg::Relay { .. } => Kind::Relay,
            Msg::PageRequest { .. } => Kind::PageRequest,
            Msg::Vote { .. } => Kind::Vote,
            Msg::Verdict { .. } => Kind::Verdict,
            Msg::Recheck { .. } => Kind::Recheck,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "a hello",
            Kind::Log => "log bytes",
            Kind::Ack => "an acknowledgement",
            Kind::Heartbeat => "a heartbeat",
            Kind::Attach => "an attach message",
            Kind::Disk => "disk contents",
            Kind::Ram => "RAM pages",
            Kind::HandOver => "a hand-over",
            Kind::Relay => "a relayed frame",
            Kind::PageRequest => "a page request",
            Kind::Vote => "a vote",
            Kind::Verdict => "a verdict",
            Kind::Recheck => "a request to re-execute",
        }
    }
}

/// The header of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub kind: Kind,
    /// The pair generation of the sender (see the arbiter).
    pub generation: u64,
    /// The length of the payload that follows, at most [`MAX_MSG`].
    pub len: u32,
}

impl Head {
    pub fn to_bytes(&self) -> [u8; HEAD] {
        let mut b = [0u8; HEAD];
        b[0] = self.kind as u8;
        b[1..9].copy_from_slice(&self.generation.to_le_bytes());
        b[9..13].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parse the header at the start of a message's first frame: an unknown kind or a length
    /// above [`MAX_MSG`] is refused here, before anything is allocated for the payload.
    pub fn parse(b: &[u8]) -> Result<Head, ChannelError> {
        let (kind, generation, len) = match b {
            [k, g0, g1, g2, g3, g4, g5, g6, g7, l0, l1, l2, l3, ..] => (
                *k,
                u64::from_le_bytes([*g0, *g1, *g2, *g3, *g4, *g5, *g6, *g7]),
                u32::from_le_bytes([*l0, *l1, *l2, *l3]),
            ),
            _ => return Err(ChannelError::Bad("a message shorter than its header")),
        };
        let kind = Kind::from_u8(kind).ok_or(ChannelError::Bad("unknown message type"))?;
        if len > MAX_MSG {
            return Err(ChannelError::TooLarge {
                len: u64::from(len),
                max: MAX_MSG,
            });
        }
        Ok(Head {
            kind,
            generation,
            len,
        })
    }
}

/// The payload length `m` encodes to, computed without encoding it (so that an oversized
/// message is refused before it is copied).
pub fn payload_len(m: &Msg) -> usize {
    match m {
        Msg::Log { bytes, .. } => bytes.len().saturating_add(8),
        Msg::Ack { .. } | Msg::Heartbeat { .. } => 16,
        Msg::HandOver { missing, .. } => missing.len().saturating_add(16),
        Msg::PageRequest { pages } => pages.len().saturating_mul(8).saturating_add(4),
        Msg::Attach { disks, .. } => disks.len().saturating_mul(8).saturating_add(8),
        Msg::Disk { data, .. } => data.len().saturating_add(12),
        Msg::Relay { frame, .. } => frame.len().saturating_add(4),
        Msg::Vote { .. } => VOTE_LEN,
        Msg::Verdict { .. } => 10,
        Msg::Recheck { .. } => 17,
        Msg::Ram { pages, data } => pages
            .len()
            .saturating_mul(8)
            .saturating_add(data.len())
            .saturating_add(4),
    }
}

/// Append the payload of `m` to `out`.
pub fn encode(m: &Msg, out: &mut Vec<u8>) {
    match m {
        Msg::Log { clock, bytes } => {
            out.extend_from_slice(&clock.to_le_bytes());
            out.extend_from_slice(bytes);
        }
        Msg::Ack { count, clock } | Msg::Heartbeat { count, clock } => {
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&clock.to_le_bytes());
        }
        Msg::HandOver {
            count,
            released,
            missing,
        } => {
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&released.to_le_bytes());
            out.extend_from_slice(missing);
        }
        Msg::PageRequest { pages } => {
            out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
            for p in pages {
                out.extend_from_slice(&p.to_le_bytes());
            }
        }
        Msg::Relay { slot, frame } => {
            out.extend_from_slice(&slot.to_le_bytes());
            out.extend_from_slice(frame);
        }
        Msg::Vote {
            what,
            count,
            hash,
            injected,
        } => {
            out.push(*what);
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(hash);
            out.extend_from_slice(&injected.to_le_bytes());
        }
        Msg::Verdict { count, how, action } => {
            out.extend_from_slice(&count.to_le_bytes());
            out.push(*how);
            out.push(*action);
        }
        Msg::Recheck { from, to, how } => {
            out.extend_from_slice(&from.to_le_bytes());
            out.extend_from_slice(&to.to_le_bytes());
            out.push(*how);
        }
        Msg::Attach { generation, disks } => {
            out.extend_from_slice(&generation.to_le_bytes());
            for d in disks {
                out.extend_from_slice(&d.to_le_bytes());
            }
        }
        Msg::Disk {
            index,
            offset,
            data,
        } => {
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(data);
        }
        Msg::Ram { pages, data } => {
            out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
            for p in pages {
                out.extend_from_slice(&p.to_le_bytes());
            }
            out.extend_from_slice(data);
        }
    }
}

fn u64_at(p: &[u8], at: usize) -> Result<u64, ChannelError> {
    p.get(at..at.saturating_add(8))
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_le_bytes)
        .ok_or(ChannelError::Bad("payload too short"))
}

fn u32_at(p: &[u8], at: usize) -> Result<u32, ChannelError> {
    p.get(at..at.saturating_add(4))
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_le_bytes)
        .ok_or(ChannelError::Bad("payload too short"))
}

/// A decoded message body: the hello, or one of the messages that follow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Hello(Hello),
    Msg(Msg),
}

/// Decode the payload of a message of `kind`. Each kind has a fixed layout; a payload that
/// does not fit it is refused.
pub fn decode(kind: Kind, mut payload: Vec<u8>) -> Result<Body, ChannelError> {
    let bad = ChannelError::Bad;
    Ok(Body::Msg(match kind {
        Kind::Hello => return Hello::decode(&payload).map(Body::Hello),
        Kind::Log => {
            let clock = u64_at(&payload, 0)?;
            payload.drain(..8);
            Msg::Log {
                clock,
                bytes: payload,
            }
        }
        Kind::Ack | Kind::Heartbeat => {
            if payload.len() != 16 {
                return Err(bad("an acknowledgement or heartbeat is 16 bytes"));
            }
            let (a, b) = (u64_at(&payload, 0)?, u64_at(&payload, 8)?);
            match kind {
                Kind::Ack => Msg::Ack { count: a, clock: b },
                _ => Msg::Heartbeat { count: a, clock: b },
            }
        }
        Kind::HandOver => {
            let (count, released) = (u64_at(&payload, 0)?, u64_at(&payload, 8)?);
            if released > count {
                return Err(bad("a hand-over releases past its count"));
            }
            payload.drain(..16);
            Msg::HandOver {
                count,
                released,
                missing: payload,
            }
        }
        Kind::PageRequest => {
            let n = u32_at(&payload, 0)? as usize;
            if n == 0 || n > MAX_RAM_PAGES || payload.len() != 4 + 8 * n {
                return Err(bad("a page request names 1 to 256 pages"));
            }
            Msg::PageRequest {
                pages: (0..n)
                    .map(|i| u64_at(&payload, 4 + 8 * i))
                    .collect::<Result<_, _>>()?,
            }
        }
        Kind::Vote => {
            if payload.len() != VOTE_LEN || payload[0] > 3 {
                return Err(bad(
                    "a vote is 49 bytes, on the outputs (0) or the digest (1), or on either again after a re-execution (2, 3)",
                ));
            }
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&payload[9..41]);
            Msg::Vote {
                what: payload[0],
                count: u64_at(&payload, 1)?,
                hash,
                injected: u64_at(&payload, 41)?,
            }
        }
        Kind::Verdict => {
            if payload.len() != 10 || payload[8] > 1 || payload[9] > 2 {
                return Err(bad("a verdict is 10 bytes"));
            }
            Msg::Verdict {
                count: u64_at(&payload, 0)?,
                how: payload[8],
                action: payload[9],
            }
        }
        Kind::Recheck => {
            if payload.len() != 17 || payload[16] > 1 {
                return Err(bad("a request to re-execute is 17 bytes"));
            }
            let (from, to) = (u64_at(&payload, 0)?, u64_at(&payload, 8)?);
            if to < from {
                return Err(bad("a request to re-execute goes backwards"));
            }
            Msg::Recheck {
                from,
                to,
                how: payload[16],
            }
        }
        Kind::Attach => {
            if payload.is_empty() || !payload.len().is_multiple_of(8) {
                return Err(bad("an attach message is a whole number of 8-byte words"));
            }
            let mut words = payload
                .chunks_exact(8)
                .map(|w| <[u8; 8]>::try_from(w).map(u64::from_le_bytes));
            let generation = words
                .next()
                .and_then(|w| w.ok())
                .ok_or(bad("attach without a generation"))?;
            let disks = words
                .collect::<Result<Vec<u64>, _>>()
                .map_err(|_| bad("attach"))?;
            Msg::Attach { generation, disks }
        }
        Kind::Disk => {
            let index = u32_at(&payload, 0)?;
            let offset = u64_at(&payload, 4)?;
            payload.drain(..12);
            Msg::Disk {
                index,
                offset,
                data: payload,
            }
        }
        Kind::Relay => {
            let slot = u32_at(&payload, 0)?;
            if payload.len() - 4 > MAX_RELAY_FRAME {
                return Err(bad("a relayed frame larger than a network device takes"));
            }
            payload.drain(..4);
            Msg::Relay {
                slot,
                frame: payload,
            }
        }
        Kind::Ram => {
            let n = u32_at(&payload, 0)? as usize;
            if n == 0 || n > MAX_RAM_PAGES || payload.len() < 4 + 8 * n {
                return Err(bad("a RAM message holds 1 to 256 pages"));
            }
            let pages = (0..n)
                .map(|i| u64_at(&payload, 4 + 8 * i))
                .collect::<Result<Vec<u64>, _>>()?;
            let with_bytes = pages.iter().filter(|&&p| p & ZERO_PAGE == 0).count();
            if payload.len() != 4 + 8 * n + PAGE * with_bytes {
                return Err(bad("a RAM message's length does not match its pages"));
            }
            payload.drain(..4 + 8 * n);
            Msg::Ram {
                pages,
                data: payload,
            }
        }
    }))
}

/// What each side tells the other right after the Noise handshake: the protocol it speaks and
/// the machine it runs, so that a pair of mismatched sides is refused at once, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// Optional protocol features the sender supports (none are defined yet: 0). A feature is
    /// used only if both sides set its bit; an unknown bit is ignored.
    pub features: u64,
    /// The sender's role.
    pub role: Role,
    /// The guest's memory size in bytes.
    pub mem_bytes: u64,
    /// The guest's device layout: an opaque canonical description, compared for equality.
    pub layout: String,
}

impl Hello {
    /// This build's hello as `role`, for a guest of `mem_bytes` with devices `layout`.
    pub fn new(role: Role, mem_bytes: u64, layout: impl Into<String>) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            features: 0,
            role,
            mem_bytes,
            layout: layout.into(),
        }
    }

    /// `version u32 | features u64 | role u8 ('P' or 'B') | mem_bytes u64 | layout (UTF-8,
    /// the rest)`. The version comes first so that any later version can be named.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.features.to_le_bytes());
        out.push(self.role.tag());
        out.extend_from_slice(&self.mem_bytes.to_le_bytes());
        out.extend_from_slice(self.layout.as_bytes());
    }

    pub fn encoded_len(&self) -> usize {
        21usize.saturating_add(self.layout.len())
    }

    /// Decode a hello. A version other than [`PROTOCOL_VERSION`] is refused first, naming
    /// both, since the rest of another version's hello may be laid out differently.
    pub fn decode(p: &[u8]) -> Result<Hello, ChannelError> {
        let version = u32_at(p, 0)?;
        if version != PROTOCOL_VERSION {
            return Err(ChannelError::Version {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
        if p.len() > MAX_HELLO {
            return Err(ChannelError::Bad("a hello larger than 64 KiB"));
        }
        let features = u64_at(p, 4)?;
        let role = match p.get(12) {
            Some(&t) => Role::from_tag(t).ok_or(ChannelError::Bad("a hello with no role"))?,
            None => return Err(ChannelError::Bad("payload too short")),
        };
        let mem_bytes = u64_at(p, 13)?;
        let layout = std::str::from_utf8(p.get(21..).unwrap_or_default())
            .map_err(|_| ChannelError::Bad("a hello whose layout is not UTF-8"))?
            .to_string();
        Ok(Hello {
            version,
            features,
            role,
            mem_bytes,
            layout,
        })
    }

    /// What the channel checks itself: the same protocol version, and opposite roles.
    pub fn check_protocol(&self, peer: &Hello) -> Result<(), ChannelError> {
        if peer.version != self.version {
            return Err(ChannelError::Version {
                ours: self.version,
                theirs: peer.version,
            });
        }
        if peer.role == self.role {
            return Err(ChannelError::SameRole(self.role));
        }
        Ok(())
    }

    /// Whether the two sides can form a pair: [`Hello::check_protocol`], the same memory
    /// size and the same device layout. The error names what differs, both ways.
    pub fn check_compatible(&self, peer: &Hello) -> Result<(), ChannelError> {
        self.check_protocol(peer)?;
        let mut differs = Vec::new();
        if peer.mem_bytes != self.mem_bytes {
            differs.push(format!(
                "memory: {} bytes here, {} bytes on the {}",
                self.mem_bytes, peer.mem_bytes, peer.role
            ));
        }
        if peer.layout != self.layout {
            differs.push(format!(
                "devices: `{}` here, `{}` on the {}",
                self.layout, peer.layout, peer.role
            ));
        }
        if differs.is_empty() {
            Ok(())
        } else {
            Err(ChannelError::Incompatible(differs.join("; ")))
        }
    }

    /// The features both sides support.
    pub fn common_features(&self, peer: &Hello) -> u64 {
        self.features & peer.features
    }
}

/// Where the messages from a peer stand, on the receiving half: what it may send next.
///
/// From the primary: `Hello`, then `Attach`, then `Disk` and `Heartbeat` in any mix, then
/// (from its first `Log` on) `Log` and `Heartbeat` in any mix. From the backup: `Hello`, then
/// `Heartbeat` and `Ack` in any mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Nothing yet: the hello comes first.
    Hello,
    /// The primary's hello came; its `Attach` comes next.
    Attach,
    /// The primary's `Attach` came: its disks (and heartbeats) until the log begins.
    Disks,
    /// The primary's log began: log and heartbeats.
    Log,
    /// The primary handed the guest over: frames it relays, nothing else.
    HandedOver,
    /// The backup's hello came: heartbeats and acknowledgements.
    Acks,
}

impl Order {
    /// The state after a message of `kind` from a peer of role `peer`, or the refusal of a
    /// message out of order.
    pub fn next(self, peer: Role, kind: Kind) -> Result<Order, ChannelError> {
        use Kind as K;
        use Order as O;
        let next = match (peer, self, kind) {
            (Role::Primary, O::Hello, K::Hello) => Some(O::Attach),
            (Role::Backup, O::Hello, K::Hello) => Some(O::Acks),
            (_, O::Hello, got) => {
                return Err(ChannelError::NoHello {
                    ours: PROTOCOL_VERSION,
                    got: got.name(),
                })
            }
            (Role::Primary, O::Attach, K::Attach) => Some(O::Disks),
            (Role::Primary, O::Disks, K::Disk | K::Ram | K::Heartbeat) => Some(O::Disks),
            (Role::Primary, O::Disks | O::Log, K::Log) => Some(O::Log),
            (Role::Primary, O::Log, K::Heartbeat | K::Verdict | K::Recheck) => Some(O::Log),
            (Role::Primary, O::Log, K::HandOver) => Some(O::HandedOver),
            (Role::Primary, O::HandedOver, K::Relay | K::Ram) => Some(O::HandedOver),
            (Role::Backup, O::Acks, K::Heartbeat | K::Ack | K::PageRequest | K::Vote) => {
                Some(O::Acks)
            }
            _ => None,
        };
        next.ok_or(ChannelError::Order {
            peer,
            got: kind.name(),
            state: self,
        })
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Order::Hello => "before its hello",
            Order::Attach => "after its hello, where its attach message belongs",
            Order::Disks => "while it sent its disks",
            Order::Log => "after its log began",
            Order::HandedOver => "after it handed the guest over",
            Order::Acks => "after its hello (a backup sends only heartbeats and acknowledgements)",
        })
    }
}

/// Puts a message back together from the plaintext of its frames, in order. Nothing is
/// allocated before a message's header (in its first, authenticated, frame) gave its length,
/// and then at most [`FIRST_RESERVE`] ahead of the bytes that arrived.
#[derive(Default)]
pub struct Reassembler {
    pending: Option<(Head, Vec<u8>)>,
}

impl Reassembler {
    /// Take the plaintext of the next frame; a whole message once its last frame came.
    pub fn push(&mut self, frame: &[u8]) -> Result<Option<(Head, Vec<u8>)>, ChannelError> {
        let (head, mut payload, rest) = match self.pending.take() {
            None => {
                let head = Head::parse(frame)?;
                let rest = frame.get(HEAD..).unwrap_or_default();
                let len = usize::try_from(head.len).map_err(|_| ChannelError::Bad("length"))?;
                (head, Vec::with_capacity(len.min(FIRST_RESERVE)), rest)
            }
            Some((head, payload)) => {
                if frame.is_empty() {
                    return Err(ChannelError::Bad("an empty frame inside a message"));
                }
                (head, payload, frame)
            }
        };
        let len = usize::try_from(head.len).map_err(|_| ChannelError::Bad("length"))?;
        if rest.len() > len - payload.len() {
            return Err(ChannelError::Bad("a frame beyond the end of its message"));
        }
        payload.extend_from_slice(rest);
        if payload.len() == len {
            Ok(Some((head, payload)))
        } else {
            self.pending = Some((head, payload));
            Ok(None)
        }
    }

    /// The bytes reserved for the message being put together (for tests: a claim of a large
    /// message costs no more than [`FIRST_RESERVE`] before its bytes come).
    pub fn reserved(&self) -> usize {
        self.pending.as_ref().map_or(0, |(_, p)| p.capacity())
    }
}

/// The plaintext of a whole message, `HEAD` then the payload: refused if the payload would
/// exceed [`MAX_MSG`] (before anything is copied).
pub fn message_plaintext(m: &Msg, generation: u64) -> Result<Vec<u8>, ChannelError> {
    body_plaintext(Kind::of(m), generation, payload_len(m), |out| {
        encode(m, out)
    })
}

/// The plaintext of a hello message.
pub fn hello_plaintext(h: &Hello, generation: u64) -> Result<Vec<u8>, ChannelError> {
    if h.encoded_len() > MAX_HELLO {
        return Err(ChannelError::Bad("a hello larger than 64 KiB"));
    }
    body_plaintext(Kind::Hello, generation, h.encoded_len(), |out| {
        h.encode(out)
    })
}

fn body_plaintext(
    kind: Kind,
    generation: u64,
    len: usize,
    fill: impl FnOnce(&mut Vec<u8>),
) -> Result<Vec<u8>, ChannelError> {
    let too_large = |len: usize| ChannelError::TooLarge {
        len: u64::try_from(len).unwrap_or(u64::MAX),
        max: MAX_MSG,
    };
    let checked = |len: usize| {
        u32::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_MSG)
            .ok_or(too_large(len))
    };
    checked(len)?;
    let mut out = Vec::with_capacity(HEAD.saturating_add(len));
    out.extend_from_slice(&[0u8; HEAD]);
    fill(&mut out);
    // The header is written from what was encoded, so it cannot disagree with it.
    let len = checked(out.len() - HEAD)?;
    let head = Head {
        kind,
        generation,
        len,
    };
    out[..HEAD].copy_from_slice(&head.to_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Msg> {
        vec![
            Msg::Log {
                clock: 5,
                bytes: b"log".to_vec(),
            },
            Msg::Ack { count: 1, clock: 2 },
            Msg::Heartbeat { count: 3, clock: 4 },
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
            Msg::Ram {
                pages: vec![3, 1],
                data: vec![9; 2 * PAGE],
            },
            Msg::HandOver {
                count: 9,
                released: 8,
                missing: vec![],
            },
            Msg::HandOver {
                count: 9,
                released: 9,
                missing: vec![0xff, 1],
            },
            Msg::PageRequest { pages: vec![7, 3] },
            Msg::Vote {
                what: 1,
                count: 99,
                hash: [5; 32],
                injected: u64::MAX,
            },
            Msg::Verdict {
                count: 7,
                how: 0,
                action: 1,
            },
            Msg::Recheck {
                from: 5,
                to: 9,
                how: 1,
            },
            Msg::Relay {
                slot: 1,
                frame: vec![0xff; 60],
            },
        ]
    }

    fn reassemble(plain: &[u8]) -> Result<Option<(Head, Vec<u8>)>, ChannelError> {
        let mut r = Reassembler::default();
        let mut got = None;
        for chunk in plain.chunks(MAX_FRAME_PLAIN) {
            assert!(got.is_none());
            got = r.push(chunk)?;
        }
        Ok(got)
    }

    #[test]
    fn every_message_round_trips() {
        for m in all() {
            let plain = message_plaintext(&m, 9).unwrap();
            let (head, payload) = reassemble(&plain).unwrap().unwrap();
            assert_eq!(head.generation, 9);
            assert_eq!(head.kind, Kind::of(&m));
            assert_eq!(decode(head.kind, payload).unwrap(), Body::Msg(m));
        }
        let h = Hello::new(
            Role::Backup,
            256 << 20,
            "virtio-blk 2; net 52:54:00:00:00:10",
        );
        let plain = hello_plaintext(&h, 0).unwrap();
        let (head, payload) = reassemble(&plain).unwrap().unwrap();
        assert_eq!(decode(head.kind, payload).unwrap(), Body::Hello(h));
    }

    #[test]
    fn a_message_of_many_frames_round_trips() {
        let m = Msg::Log {
            clock: 1,
            bytes: (0..3 * MAX_FRAME_PLAIN + 17).map(|i| i as u8).collect(),
        };
        let plain = message_plaintext(&m, 0).unwrap();
        let (head, payload) = reassemble(&plain).unwrap().unwrap();
        assert_eq!(decode(head.kind, payload).unwrap(), Body::Msg(m));
    }

    #[test]
    fn a_claimed_length_is_bounded_and_reserved_lazily() {
        let huge = Head {
            kind: Kind::Log,
            generation: 0,
            len: MAX_MSG + 1,
        };
        let mut r = Reassembler::default();
        assert!(matches!(
            r.push(&huge.to_bytes()),
            Err(ChannelError::TooLarge { .. })
        ));
        // The largest claim is accepted, but reserves no more than FIRST_RESERVE.
        let mut r = Reassembler::default();
        let most = Head {
            len: MAX_MSG,
            ..huge
        };
        assert!(r.push(&most.to_bytes()).unwrap().is_none());
        assert!(r.reserved() <= FIRST_RESERVE);
        // A frame that runs past the message's end, or an empty one, is refused.
        let mut r = Reassembler::default();
        let small = Head { len: 4, ..huge };
        assert!(r.push(&small.to_bytes()).unwrap().is_none());
        assert!(r.push(&[]).is_err());
        let mut r = Reassembler::default();
        assert!(r.push(&small.to_bytes()).unwrap().is_none());
        assert!(r.push(&[0; 5]).is_err());
    }

    #[test]
    fn malformed_payloads_are_refused() {
        assert!(decode(Kind::Ack, vec![0; 15]).is_err());
        assert!(decode(Kind::Heartbeat, vec![0; 17]).is_err());
        assert!(decode(Kind::Log, vec![0; 7]).is_err());
        assert!(decode(Kind::Attach, vec![]).is_err());
        assert!(decode(Kind::Attach, vec![0; 12]).is_err());
        assert!(decode(Kind::Disk, vec![0; 11]).is_err());
        // RAM pages: a count of 1 to 256, and exactly that many page numbers and pages.
        let ram = |n: u32, extra: usize| {
            let mut p = n.to_le_bytes().to_vec();
            p.resize(4 + n as usize * (8 + PAGE) + extra, 0);
            p
        };
        assert!(decode(Kind::Ram, ram(1, 0)).is_ok());
        assert!(decode(Kind::Ram, ram(256, 0)).is_ok());
        assert!(decode(Kind::Ram, ram(0, 0)).is_err());
        assert!(decode(Kind::Ram, ram(257, 0)).is_err());
        assert!(decode(Kind::Ram, ram(2, 1)).is_err());
        // A page of zeros is its number alone.
        let mut z = 2u32.to_le_bytes().to_vec();
        z.extend_from_slice(&(5 | ZERO_PAGE).to_le_bytes());
        z.extend_from_slice(&6u64.to_le_bytes());
        z.resize(4 + 16 + PAGE, 7);
        let Ok(Body::Msg(Msg::Ram { pages, data })) = decode(Kind::Ram, z.clone()) else {
            panic!("a zero page and a page")
        };
        let got: Vec<_> = ram_pages(&pages, &data)
            .map(|(p, b)| (p, b.map(|b| b[0])))
            .collect();
        assert_eq!(got, vec![(5, None), (6, Some(7))]);
        z.resize(4 + 16 + 2 * PAGE, 7);
        assert!(decode(Kind::Ram, z).is_err(), "bytes for the zero page too");
        let mut short = ram(2, 0);
        short.pop();
        assert!(decode(Kind::Ram, short).is_err());
        assert!(decode(Kind::Ram, vec![1, 0, 0]).is_err());
        assert!(Head::parse(&[9; HEAD]).is_err());
        assert!(Head::parse(&[1; HEAD - 1]).is_err());
    }

    #[test]
    fn an_unknown_version_is_named() {
        let mut h = Hello::new(Role::Primary, 1, "");
        h.version = 3;
        let mut p = Vec::new();
        h.encode(&mut p);
        let e = Hello::decode(&p).unwrap_err();
        assert!(matches!(e, ChannelError::Version { ours: 4, theirs: 3 }));
        let text = e.to_string();
        assert!(text.contains('3') && text.contains('4'), "{text}");
        // Only the version is read of a hello of another version.
        assert!(matches!(
            Hello::decode(&7u32.to_le_bytes()),
            Err(ChannelError::Version { theirs: 7, .. })
        ));
    }

    #[test]
    fn compatibility_names_what_differs() {
        let p = Hello::new(Role::Primary, 256 << 20, "disk 1");
        let b = Hello::new(Role::Backup, 512 << 20, "disk 2");
        let e = p.check_compatible(&b).unwrap_err().to_string();
        assert!(e.contains("268435456") && e.contains("536870912"), "{e}");
        assert!(e.contains("disk 1") && e.contains("disk 2"), "{e}");
        assert!(p
            .check_compatible(&Hello::new(Role::Backup, 256 << 20, "disk 1"))
            .is_ok());
        assert!(matches!(
            p.check_protocol(&Hello::new(Role::Primary, 256 << 20, "disk 1")),
            Err(ChannelError::SameRole(Role::Primary))
        ));
    }

    #[test]
    fn the_order_of_messages_is_enforced() {
        use Kind as K;
        let run = |peer, kinds: &[Kind]| {
            kinds
                .iter()
                .try_fold(Order::Hello, |state, &k| state.next(peer, k))
        };
        let p = Role::Primary;
        let b = Role::Backup;
        assert_eq!(
            run(
                p,
                &[
                    K::Hello,
                    K::Attach,
                    K::Disk,
                    K::Heartbeat,
                    K::Disk,
                    K::Log,
                    K::Heartbeat,
                    K::Log
                ]
            )
            .unwrap(),
            Order::Log
        );
        assert_eq!(
            run(b, &[K::Hello, K::Heartbeat, K::Ack, K::Ack]).unwrap(),
            Order::Acks
        );
        // Refused: no hello first, a second hello, disks before the attach or after the
        // log began, a second attach, a backup's log, a primary's acknowledgement.
        assert!(matches!(
            run(p, &[K::Attach]),
            Err(ChannelError::NoHello { ours: 4, .. })
        ));
        for (peer, kinds) in [
            (p, &[K::Hello, K::Hello][..]),
            (p, &[K::Hello, K::Disk]),
            (p, &[K::Hello, K::Heartbeat]),
            (p, &[K::Hello, K::Attach, K::Log, K::Disk]),
            (p, &[K::Hello, K::Attach, K::Attach]),
            (p, &[K::Hello, K::Attach, K::Ack]),
            (b, &[K::Hello, K::Log]),
            (b, &[K::Hello, K::Attach]),
            (b, &[K::Hello, K::Ack, K::Hello]),
        ] {
            let e = run(peer, kinds).unwrap_err();
            assert!(matches!(e, ChannelError::Order { .. }), "{kinds:?}: {e}");
        }
        let e = run(p, &[K::Hello, K::Attach, K::Log, K::Disk])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("disk contents") && e.contains("after its log began"),
            "{e}"
        );
    }
}
