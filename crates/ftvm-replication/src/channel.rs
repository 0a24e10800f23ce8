//! The replication channel: messages over TCP, encrypted and authenticated with Noise
//! (`Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`, through the `snow` crate) keyed by a pre-shared key.
//!
//! 1. Each side sends a clear preamble, `"FTVMREPL" | role`, and reads the peer's: a peer that
//!    is not an ftvm of protocol 2 or later, or that has the same role, is refused at once.
//! 2. The Noise handshake, the backup initiating (`-> psk, e` then `<- e, ee`), with the prologue
//!    `"ftvm replication v2" | primary's preamble | backup's preamble`: a side without the key
//!    fails it ([`ChannelError::Auth`]), and so does a preamble altered on the way.
//! 3. Each side sends its [`Hello`] (protocol version, features, role, machine) as its first
//!    message and checks the peer's ([`Hello::check_protocol`]).
//! 4. Messages: the plaintext `kind u8 | generation u64 | len u32 | payload` cut into frames of
//!    at most 65519 bytes, each sealed as one Noise transport message (ChaCha20-Poly1305 with a
//!    64-bit counter nonce per direction) and sent as `len u16 (big-endian) | ciphertext`. Any
//!    frame that fails to decrypt (forged, replayed, reordered, truncated) ends the connection.
//!    The receiver learns a message's length from its decrypted first frame, refuses one above
//!    [`MAX_MSG`] and reserves memory only as the bytes come; a sender refuses what the
//!    receiver would.
//! 5. Every message carries the pair generation its sender belongs to (see the arbiter); a
//!    receiver drops a message of an older generation than the newest it has seen, and refuses
//!    one out of the protocol's order ([`Order`]).
//!
//! [`handshake`](Channel::handshake) returns a sending and a receiving half, for two threads:
//! both share the session's two cipher keys (read-only), each keeps its own nonce counter.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use snow::StatelessTransportState;
use thiserror::Error;

use crate::wire::{self, Body, Head, Reassembler, MAX_FRAME, MAX_FRAME_PLAIN, TAG};
pub use crate::wire::{Hello, Order, MAX_MSG, PROTOCOL_VERSION};

const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The Noise protocol of the channel: no static keys, the pre-shared key mixed in first.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// The clear preamble each side sends first, followed by its role.
const MAGIC: &[u8; 8] = b"FTVMREPL";
const PROLOGUE: &[u8] = b"ftvm replication v2";
/// The handshake messages are 48 bytes (an ephemeral key and a tag); anything much larger is
/// not one.
const MAX_HANDSHAKE_MSG: usize = 1024;

#[derive(Debug, Error)]
pub enum ChannelError {
    #[error("replication channel I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer failed authentication (wrong pre-shared key, or not an ftvm peer)")]
    Auth,
    #[error("the peer is not an ftvm replication peer of protocol version {PROTOCOL_VERSION} (an ftvm older than that opens with no preamble)")]
    NotFtvm,
    #[error("the peer is a {0} too: a primary pairs only with a backup")]
    SameRole(Role),
    #[error("the peer speaks replication protocol version {theirs}, this side version {ours}")]
    Version { ours: u32, theirs: u32 },
    #[error("the peer sent {got} where its hello belongs: this side speaks replication protocol version {ours}, the peer another one")]
    NoHello { ours: u32, got: &'static str },
    #[error("the {peer} sent {got} {state}: out of the protocol's order")]
    Order {
        peer: Role,
        got: &'static str,
        state: Order,
    },
    #[error("the two sides run different machines ({0}): give both sides the same --mem, --disk and --net options (MACs included), in the same order")]
    Incompatible(String),
    #[error("a message of {len} bytes is refused: the limit is {max} bytes")]
    TooLarge { len: u64, max: u32 },
    #[error("a frame failed authentication (forged, replayed, reordered or corrupted): the channel is closed")]
    Decrypt,
    #[error("malformed message: {0}")]
    Bad(&'static str),
    #[error("noise: {0}")]
    Noise(String),
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
        Ok(Psk::from_bytes(&bytes))
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
    pub(crate) fn tag(self) -> u8 {
        match self {
            Role::Primary => b'P',
            Role::Backup => b'B',
        }
    }

    pub(crate) fn from_tag(t: u8) -> Option<Role> {
        match t {
            b'P' => Some(Role::Primary),
            b'B' => Some(Role::Backup),
            _ => None,
        }
    }

    fn other(self) -> Role {
        match self {
            Role::Primary => Role::Backup,
            Role::Backup => Role::Primary,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        })
    }
}

/// What travels on the channel after the hellos.
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
    /// Guest RAM pages (primary to backup, between `Attach` and the log): page numbers (RAM
    /// offset / 4096), then each page's 4096 bytes in the same order. A page sent again
    /// replaces what was sent before; pages never sent are zero.
    Ram { pages: Vec<u64>, data: Vec<u8> },
    /// The primary hands the guest over (live migration) and has stopped it: it stopped at
    /// `count`, where its log ends, and released every output up to `released`. The backup
    /// goes live at `count` without racing the arbiter; nothing follows.
    HandOver {
        count: u64,
        released: u64,
        /// Post-copy: a bitmap (bit p of byte p / 8) of the RAM pages the backup still lacks;
        /// they follow as `Ram`, first those it asks for. Empty: it lacks none.
        missing: Vec<u8>,
    },
    /// After a post-copy hand-over (backup to primary): the backup's guest waits for these
    /// RAM pages.
    PageRequest { pages: Vec<u64> },
    /// After a hand-over: a frame the primary's TAP in `slot` received that its guest never
    /// got (it came too late, or on its way while the network learned where the guest went).
    /// The backup, live now, gives it to its guest as if its own TAP had received it.
    Relay { slot: u32, frame: Vec<u8> },
    /// N-modular redundancy (backup to primary): this replica's vote at `count`, where its
    /// replay stands. `what` is [`VOTE_OUTPUTS`] (`hash` chains every output it produced since
    /// it attached) or [`VOTE_DIGEST`] (`hash` is its state digest at a `Digest` record of the
    /// log); `injected` is the count at which a fault was injected into this replica (for the
    /// detection report), `u64::MAX` for none.
    Vote {
        what: u8,
        count: u64,
        hash: [u8; 32],
        injected: u64,
    },
    /// N-modular redundancy (primary to backup): the replicas' votes found this one faulty at
    /// `count` (`how`: [`VOTE_OUTPUTS`] or [`VOTE_DIGEST`]). `action` [`VERDICT_REJOIN`]: it is
    /// cut off and attaches again from the majority's state; [`VERDICT_STOP`]: two replicas
    /// disagree and neither can be trusted, the guest stops on both; [`VERDICT_TAKE_OVER`]:
    /// the leader was found faulty (two replicas, by re-execution) and stops, this one goes
    /// live.
    Verdict { count: u64, how: u8, action: u8 },
    /// N-modular redundancy with two replicas (primary to backup): the replicas disagree at
    /// `to` (`how`: [`VOTE_OUTPUTS`] or [`VOTE_DIGEST`]); re-execute the log from the
    /// checkpoint at `from`, where both agreed, to `to`, and vote the result
    /// ([`VOTE_RECHECKED_OUTPUTS`] or [`VOTE_RECHECKED_DIGEST`]).
    Recheck { from: u64, to: u64, how: u8 },
}

/// A vote on the outputs (a chain of their hashes).
pub const VOTE_OUTPUTS: u8 = 0;
/// A vote on the state digest.
pub const VOTE_DIGEST: u8 = 1;
/// The outputs' chain again, from a re-execution (see [`Msg::Recheck`]).
pub const VOTE_RECHECKED_OUTPUTS: u8 = 2;
/// The state digest again, from a re-execution.
pub const VOTE_RECHECKED_DIGEST: u8 = 3;
/// The replica is repaired: it attaches again.
pub const VERDICT_REJOIN: u8 = 0;
/// The guest stops (a mismatch between two replicas).
pub const VERDICT_STOP: u8 = 1;
/// The leader was the faulty one: this replica goes live (two replicas, after a re-execution).
pub const VERDICT_TAKE_OVER: u8 = 2;

/// Write one handshake message: `len u16 (big-endian) | bytes`.
fn write_handshake(stream: &mut TcpStream, msg: &[u8]) -> Result<(), ChannelError> {
    let len = u16::try_from(msg.len()).map_err(|_| ChannelError::Bad("handshake message"))?;
    let mut buf = Vec::with_capacity(2 + msg.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(msg);
    stream.write_all(&buf)?;
    Ok(())
}

/// Fill `buf` from `stream`, by `deadline` if there is one (the handshake's: a peer that
/// trickles bytes cannot stretch it, as a timeout on each read would let it).
fn read_full(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> std::io::Result<()> {
    let Some(deadline) = deadline else {
        return stream.read_exact(buf);
    };
    let mut at = 0;
    while let Some(rest) = buf.get_mut(at..).filter(|r| !r.is_empty()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the peer did not complete the handshake within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(rest) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_handshake(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, ChannelError> {
    let mut len = [0u8; 2];
    read_full(stream, &mut len, Some(deadline))?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_HANDSHAKE_MSG {
        return Err(ChannelError::Auth);
    }
    let mut msg = vec![0u8; len];
    read_full(stream, &mut msg, Some(deadline))?;
    Ok(msg)
}

fn noise_err(e: snow::Error) -> ChannelError {
    ChannelError::Noise(e.to_string())
}

/// Run the Noise handshake on `stream` (after the preambles): the session's transport keys.
fn noise_handshake(
    stream: &mut TcpStream,
    role: Role,
    psk: &Psk,
    prologue: &[u8],
    deadline: Instant,
) -> Result<StatelessTransportState, ChannelError> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().map_err(noise_err)?;
    let builder = snow::Builder::new(params)
        .psk(0, &psk.0)
        .map_err(noise_err)?
        .prologue(prologue)
        .map_err(noise_err)?;
    let mut buf = [0u8; MAX_HANDSHAKE_MSG];
    let mut scratch = [0u8; MAX_HANDSHAKE_MSG];
    let mut hs = match role {
        Role::Backup => builder.build_initiator(),
        Role::Primary => builder.build_responder(),
    }
    .map_err(noise_err)?;
    // `-> psk, e` from the backup, `<- e, ee` from the primary; empty payloads (each carries
    // a tag, so each proves its sender holds the key).
    let mut send = |hs: &mut snow::HandshakeState, stream: &mut TcpStream| {
        let n = hs.write_message(&[], &mut buf).map_err(noise_err)?;
        write_handshake(stream, buf.get(..n).unwrap_or_default())
    };
    let mut receive = |hs: &mut snow::HandshakeState, stream: &mut TcpStream| {
        // A peer that hangs up here refused our first message: it holds another key.
        let msg = read_handshake(stream, deadline).map_err(|e| match e {
            ChannelError::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                ChannelError::Auth
            }
            e => e,
        })?;
        // Whatever fails here (a tag, a key) is a peer without the key, or not a peer.
        hs.read_message(&msg, &mut scratch)
            .map(|_| ())
            .map_err(|_| ChannelError::Auth)
    };
    match role {
        Role::Backup => {
            send(&mut hs, stream)?;
            receive(&mut hs, stream)?;
        }
        Role::Primary => {
            receive(&mut hs, stream)?;
            send(&mut hs, stream)?;
        }
    }
    if !hs.is_handshake_finished() {
        return Err(ChannelError::Auth);
    }
    hs.into_stateless_transport_mode().map_err(noise_err)
}

/// Shuts a connection down, both ways.
pub type Closer = Box<dyn Fn() + Send + Sync>;

/// One authenticated connection; split into a sending and a receiving half.
pub struct Channel {
    stream: TcpStream,
    /// The session's keys, shared by both halves (each uses one direction's).
    noise: Arc<StatelessTransportState>,
    /// The nonce of the next frame: to send (sending half), or expected (receiving half).
    nonce: u64,
    /// The role of the side whose messages this half carries: this side's for the sending
    /// half, the peer's for the receiving half.
    role: Role,
    /// Sending: the generation stamped on every message. Receiving: the newest generation
    /// seen; messages of older ones are dropped.
    generation: u64,
    /// Messages dropped for their old generation.
    pub dropped: u64,
    /// Receiving, during the handshake: when it must be over.
    deadline: Option<Instant>,
    /// Receiving: a message was refused and the connection shut down.
    refused: bool,
    /// Receiving: where the peer's messages stand in the protocol's order.
    order: Order,
    reassembler: Reassembler,
    /// Receiving: one frame's ciphertext and plaintext (allocated on the first receive).
    cipher: Vec<u8>,
    plain: Vec<u8>,
    /// Receiving, after the handshake: bytes read but not yet used, `rbuf[rpos..rlen]` (one
    /// read takes in whatever frames have arrived, instead of two reads a frame).
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    /// Receiving: reads take only what has arrived (a `try_recv` is under way).
    nonblocking: bool,
    /// Sending: the frames of the message being sent, kept for the next (unless large).
    sealed: Vec<u8>,
}

/// Waits until a receiving half has something to read (or its connection closed), at most
/// the time given, without taking anything: see [`Channel::waiter`].
pub type Waiter = Box<dyn Fn(std::time::Duration) + Send + Sync>;

/// The receive buffer's size: room for a few whole frames.
const RBUF: usize = 4 * (2 + MAX_FRAME);

impl Channel {
    fn half(stream: TcpStream, noise: Arc<StatelessTransportState>, role: Role) -> Channel {
        Channel {
            stream,
            noise,
            nonce: 0,
            role,
            generation: 0,
            dropped: 0,
            deadline: None,
            refused: false,
            order: Order::Hello,
            reassembler: Reassembler::default(),
            cipher: Vec::new(),
            plain: Vec::new(),
            rbuf: Vec::new(),
            rpos: 0,
            rlen: 0,
            nonblocking: false,
            sealed: Vec::new(),
        }
    }

    /// Authenticate `stream` with `psk` as `hello.role`, exchange hellos, and return the sending
    /// half, the receiving half and the peer's hello. Refused: a peer without the key
    /// ([`ChannelError::Auth`]), of the same role, of another protocol version, or that does
    /// not complete the handshake within HANDSHAKE_TIMEOUT. The caller decides whether the
    /// peer's machine suits it ([`Hello::check_compatible`]).
    pub fn handshake(
        mut stream: TcpStream,
        psk: &Psk,
        hello: &Hello,
    ) -> Result<(Channel, Channel, Hello), ChannelError> {
        let role = hello.role;
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let mut mine = [0u8; 9];
        mine[..8].copy_from_slice(MAGIC);
        mine[8] = role.tag();
        stream.write_all(&mine)?;
        let mut theirs = [0u8; 9];
        read_full(&mut stream, &mut theirs, Some(deadline))?;
        if theirs[..8] != MAGIC[..] {
            return Err(ChannelError::NotFtvm);
        }
        match Role::from_tag(theirs[8]) {
            Some(r) if r == role => return Err(ChannelError::SameRole(role)),
            Some(_) => {}
            None => return Err(ChannelError::NotFtvm),
        }
        let (p, b) = match role {
            Role::Primary => (mine, theirs),
            Role::Backup => (theirs, mine),
        };
        let prologue = [PROLOGUE, &p[..], &b[..]].concat();
        let noise = Arc::new(noise_handshake(
            &mut stream,
            role,
            psk,
            &prologue,
            deadline,
        )?);
        let rx_stream = stream.try_clone()?;
        let mut tx = Channel::half(stream, noise.clone(), role);
        let mut rx = Channel::half(rx_stream, noise, role.other());
        rx.deadline = Some(deadline);
        tx.seal_and_write(&wire::hello_plaintext(hello, 0)?)?;
        let (head, payload) = rx.recv_message()?;
        rx.order = rx.order.next(rx.role, head.kind)?;
        let Body::Hello(peer) = wire::decode(head.kind, payload)? else {
            return Err(ChannelError::Bad("no hello"));
        };
        hello.check_protocol(&peer)?;
        rx.deadline = None;
        // From here on the peer's liveness is judged by heartbeats, not by socket timeouts.
        tx.stream.set_read_timeout(None)?;
        tx.stream.set_write_timeout(None)?;
        Ok((tx, rx, peer))
    }

    /// The generation this half sends as (sending half), or the oldest it accepts (receiving
    /// half).
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Where the peer's messages stand in the protocol's order (receiving half).
    pub fn order(&self) -> Order {
        self.order
    }

    /// Send a message (on the sending half). One larger than [`MAX_MSG`] is refused before
    /// anything is sent, and the channel stays usable.
    pub fn send(&mut self, m: &Msg) -> Result<(), ChannelError> {
        let plain = wire::message_plaintext(m, self.generation)?;
        self.seal_and_write(&plain)
    }

    /// Seal `plain` (a whole message) as frames and write them in one go.
    fn seal_and_write(&mut self, plain: &[u8]) -> Result<(), ChannelError> {
        let mut out = std::mem::take(&mut self.sealed);
        let sent = self.seal_into(plain, &mut out).and_then(|()| {
            self.stream.write_all(&out)?;
            Ok(())
        });
        // The buffer serves the next message, unless a large one (more than a few frames:
        // an attach's pieces, a large disk read's log) grew it.
        if out.capacity() <= RBUF {
            self.sealed = out;
        }
        sent
    }

    /// `plain` (a whole message) sealed as frames, as they go on the wire.
    #[cfg(test)]
    fn seal(&mut self, plain: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let mut out = Vec::new();
        self.seal_into(plain, &mut out)?;
        Ok(out)
    }

    /// `plain` (a whole message) sealed as frames into `out` (emptied first).
    fn seal_into(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), ChannelError> {
        let frames = plain.len().div_ceil(MAX_FRAME_PLAIN);
        let exhausted = ChannelError::Bad("the session's nonces are used up");
        // Nonce u64::MAX is reserved by Noise; check the whole message's before sealing any.
        u64::try_from(frames)
            .ok()
            .and_then(|f| self.nonce.checked_add(f))
            .filter(|&n| n < u64::MAX)
            .ok_or(exhausted)?;
        out.clear();
        out.resize(plain.len() + frames * (2 + TAG), 0);
        let mut at = 0;
        for chunk in plain.chunks(MAX_FRAME_PLAIN) {
            let n = chunk.len() + TAG;
            let len = u16::try_from(n).map_err(|_| ChannelError::Bad("frame length"))?;
            let (head, body) = out[at..].split_at_mut(2);
            head.copy_from_slice(&len.to_be_bytes());
            let sealed = self
                .noise
                .write_message(self.nonce, chunk, &mut body[..n])
                .map_err(noise_err)?;
            if sealed != n {
                return Err(ChannelError::Noise("unexpected frame length".into()));
            }
            self.nonce += 1;
            at += 2 + n;
        }
        Ok(())
    }

    /// Receive the next message (on the receiving half), dropping those of an older
    /// generation than the newest seen, and refusing one out of order. A refused frame or
    /// message (anything but an I/O error) shuts the connection down, both ways; every
    /// receive after it fails.
    pub fn recv(&mut self) -> Result<Msg, ChannelError> {
        if self.refused {
            return Err(ChannelError::Bad(
                "the channel was closed after a refused message",
            ));
        }
        let got = self.recv_checked();
        if let Err(e) = &got {
            if !matches!(e, ChannelError::Io(_)) {
                self.refused = true;
                self.shutdown();
            }
        }
        got
    }

    /// The next message if a whole one has arrived, without waiting (on the receiving half,
    /// after the handshake): `None` when what has arrived is not a whole message yet. The
    /// bytes of a message read in part stay buffered for the next receive, so that
    /// `try_recv` and [`Channel::recv`] may be mixed. Refusals are as `recv`'s.
    pub fn try_recv(&mut self) -> Result<Option<Msg>, ChannelError> {
        if self.deadline.is_some() {
            return Ok(None);
        }
        self.nonblocking = true;
        let got = self.recv();
        self.nonblocking = false;
        match got {
            Ok(m) => Ok(Some(m)),
            Err(ChannelError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The connection's descriptor (readable when bytes arrive or it closes).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.stream.as_raw_fd()
    }

    /// A way for another thread to wait until this receiving half has bytes to read (or its
    /// connection closed), without reading them: a thread that waits so need not hold the
    /// half, which [`Channel::try_recv`] can then be called on from elsewhere meanwhile. It
    /// looks at the connection, not at what the half has buffered: call `try_recv` until it
    /// gives `None` before waiting.
    pub fn waiter(&self) -> Result<Waiter, ChannelError> {
        use std::os::fd::AsRawFd;
        let s = self.stream.try_clone()?;
        Ok(Box::new(move |limit: std::time::Duration| {
            let mut fd = libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(limit.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: `fd` is one valid pollfd that lives across the call, and its descriptor
            // belongs to `s`, which the closure owns.
            unsafe { libc::poll(&mut fd, 1, ms) };
        }))
    }

    /// Read what the stream has into `room`: waiting for it, or, for a `try_recv`, not.
    fn read_some(&mut self, at: usize) -> std::io::Result<usize> {
        let room = &mut self.rbuf[at..];
        if !self.nonblocking {
            return self.stream.read(room);
        }
        use std::os::fd::AsRawFd;
        // SAFETY: `room` is a live, writable buffer of `room.len()` bytes for the whole call,
        // and the descriptor is this half's open socket.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                room.as_mut_ptr().cast(),
                room.len(),
                libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }

    fn recv_checked(&mut self) -> Result<Msg, ChannelError> {
        loop {
            let (head, payload) = self.recv_message()?;
            if head.generation < self.generation {
                self.dropped += 1;
                tracing::debug!(
                    generation = head.generation,
                    current = self.generation,
                    "dropped a message of an old generation"
                );
                continue;
            }
            self.generation = head.generation;
            self.order = self.order.next(self.role, head.kind)?;
            return match wire::decode(head.kind, payload)? {
                Body::Msg(m) => Ok(m),
                // The order refuses a second hello before it gets here.
                Body::Hello(_) => Err(ChannelError::Bad("a second hello")),
            };
        }
    }

    /// The next whole message, of any generation and kind.
    fn recv_message(&mut self) -> Result<(Head, Vec<u8>), ChannelError> {
        loop {
            let n = self.recv_frame()?;
            let plain = self.plain.get(..n).unwrap_or_default();
            if let Some(whole) = self.reassembler.push(plain)? {
                return Ok(whole);
            }
        }
    }

    /// Make sure `n` (at most `RBUF`) unused bytes are in the receive buffer, reading as much
    /// as the stream has.
    fn buffered(&mut self, n: usize) -> Result<(), ChannelError> {
        if self.rbuf.len() < RBUF {
            self.rbuf = vec![0u8; RBUF];
        }
        while self.rlen - self.rpos < n {
            if self.rpos > 0 {
                self.rbuf.copy_within(self.rpos..self.rlen, 0);
                self.rlen -= self.rpos;
                self.rpos = 0;
            }
            if self.rlen >= self.rbuf.len() {
                return Err(ChannelError::Bad("receive buffer"));
            }
            match self.read_some(self.rlen) {
                Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                Ok(got) => self.rlen += got,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Read and open the next frame into `self.plain`; its length.
    fn recv_frame(&mut self) -> Result<usize, ChannelError> {
        if self.cipher.len() < MAX_FRAME {
            self.cipher = vec![0u8; MAX_FRAME];
            self.plain = vec![0u8; MAX_FRAME];
        }
        if self.deadline.is_none() {
            // After the handshake: from the receive buffer.
            self.buffered(2)?;
            let n = usize::from(u16::from_be_bytes([
                self.rbuf[self.rpos],
                self.rbuf[self.rpos + 1],
            ]));
            if n < TAG {
                return Err(ChannelError::Bad("a frame shorter than its tag"));
            }
            if n > MAX_FRAME {
                return Err(ChannelError::Bad("frame length"));
            }
            if self.nonce == u64::MAX {
                return Err(ChannelError::Bad("the session's nonces are used up"));
            }
            self.buffered(2 + n)?;
            let cipher = &self.rbuf[self.rpos + 2..self.rpos + 2 + n];
            let opened = self
                .noise
                .read_message(self.nonce, cipher, &mut self.plain)
                .map_err(|_| ChannelError::Decrypt)?;
            self.rpos += 2 + n;
            self.nonce += 1;
            return Ok(opened);
        }
        let mut len = [0u8; 2];
        read_full(&mut self.stream, &mut len, self.deadline)?;
        let n = usize::from(u16::from_be_bytes(len));
        if n < TAG {
            return Err(ChannelError::Bad("a frame shorter than its tag"));
        }
        if self.nonce == u64::MAX {
            return Err(ChannelError::Bad("the session's nonces are used up"));
        }
        let cipher = self
            .cipher
            .get_mut(..n)
            .ok_or(ChannelError::Bad("frame length"))?;
        read_full(&mut self.stream, cipher, self.deadline)?;
        let opened = self
            .noise
            .read_message(self.nonce, cipher, &mut self.plain)
            .map_err(|_| ChannelError::Decrypt)?;
        self.nonce += 1;
        Ok(opened)
    }

    /// Bound how long a receive may wait for the next bytes (`None`: forever).
    pub fn set_read_timeout(&self, limit: Option<std::time::Duration>) -> Result<(), ChannelError> {
        Ok(self.stream.set_read_timeout(limit)?)
    }

    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// A handle that shuts the connection down from another thread, without this half.
    pub fn closer(&self) -> Result<Closer, ChannelError> {
        let s = self.stream.try_clone()?;
        Ok(Box::new(move || {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }))
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
    use crate::wire::{Head, Kind, HEAD};
    use std::net::TcpListener;

    type Halves = Result<(Channel, Channel, Hello), ChannelError>;
    const KEY: &[u8] = b"0123456789abcdef";

    fn hello(role: Role) -> Hello {
        Hello::new(role, 256 << 20, "disks 1; net 52:54:00:00:00:10")
    }

    /// Connect a side as `b` (to a side as `a`, which listens) with the given keys and hellos.
    fn connect(pk: &[u8], ph: Hello, bk: &[u8], bh: Hello) -> (Halves, Halves) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let bk = bk.to_vec();
        let t = std::thread::spawn(move || {
            let s = TcpStream::connect(addr).unwrap();
            Channel::handshake(s, &Psk::from_bytes(&bk), &bh)
        });
        let (s, _) = l.accept().unwrap();
        let p = Channel::handshake(s, &Psk::from_bytes(pk), &ph);
        (p, t.join().unwrap())
    }

    fn pair(pk: &[u8], bk: &[u8]) -> (Halves, Halves) {
        connect(pk, hello(Role::Primary), bk, hello(Role::Backup))
    }

    #[test]
    fn try_recv_takes_whole_messages_only_and_mixes_with_recv() {
        let (mut ptx, _prx, _btx, mut brx) = attached();
        assert!(
            brx.try_recv().unwrap().is_none(),
            "nothing arrived: no message"
        );
        // A message larger than a frame, arriving a few bytes at a time.
        let big = Msg::Log {
            clock: 3,
            bytes: vec![7; 100_000],
        };
        let wire = ptx
            .seal(&wire::message_plaintext(&big, 0).unwrap())
            .unwrap();
        assert!(wire.len() > MAX_FRAME + 2, "more than one frame");
        let waiter = brx.waiter().unwrap();
        for part in [&wire[..1], &wire[1..7], &wire[7..MAX_FRAME + 3]] {
            ptx.stream.write_all(part).unwrap();
            waiter(std::time::Duration::from_secs(5));
            assert!(brx.try_recv().unwrap().is_none(), "only part of it");
        }
        ptx.stream.write_all(&wire[MAX_FRAME + 3..]).unwrap();
        let beat = |count| Msg::Heartbeat { count, clock: 1 };
        ptx.send(&beat(1)).unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            waiter(std::time::Duration::from_secs(5));
            while let Some(m) = brx.try_recv().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![big, beat(1)]);
        assert!(brx.try_recv().unwrap().is_none());
        // A blocking receive after non-blocking ones.
        ptx.send(&beat(2)).unwrap();
        assert_eq!(brx.recv().unwrap(), beat(2));
        ptx.shutdown();
        waiter(std::time::Duration::from_secs(5));
        assert!(brx.try_recv().is_err(), "a closed connection is an error");
    }

    /// Halves past the primary's attach: (primary tx, primary rx, backup tx, backup rx).
    fn attached() -> (Channel, Channel, Channel, Channel) {
        let (p, b) = pair(KEY, KEY);
        let (mut ptx, prx, _) = p.unwrap();
        let (btx, mut brx, _) = b.unwrap();
        let attach = Msg::Attach {
            generation: 0,
            disks: vec![],
        };
        ptx.send(&attach).unwrap();
        assert_eq!(brx.recv().unwrap(), attach);
        (ptx, prx, btx, brx)
    }

    impl Channel {
        /// Seal `plain` as one frame with the next nonce, whatever it holds: a peer that
        /// holds the key but breaks the protocol.
        fn send_raw_frame(&mut self, plain: &[u8]) {
            let mut out = vec![0u8; 2 + plain.len() + TAG];
            let n = u16::try_from(plain.len() + TAG).unwrap();
            out[..2].copy_from_slice(&n.to_be_bytes());
            self.noise
                .write_message(self.nonce, plain, &mut out[2..])
                .unwrap();
            self.nonce += 1;
            self.stream.write_all(&out).unwrap();
        }
    }

    #[test]
    fn authenticated_round_trip() {
        let (p, b) = pair(KEY, KEY);
        let (mut ptx, mut prx, bh) = p.unwrap();
        let (mut btx, mut brx, ph) = b.unwrap();
        assert_eq!(bh, hello(Role::Backup));
        assert_eq!(ph, hello(Role::Primary));
        assert!(ph.check_compatible(&bh).is_ok());
        let mut sent = vec![Msg::Attach {
            generation: 3,
            disks: vec![1 << 20, 512],
        }];
        sent.push(Msg::Disk {
            index: 1,
            offset: 4096,
            data: vec![7; 300],
        });
        sent.push(Msg::Heartbeat { count: 7, clock: 9 });
        // A message of several frames.
        sent.push(Msg::Disk {
            index: 0,
            offset: 0,
            data: (0..1 << 20).map(|i| (i % 251) as u8).collect(),
        });
        sent.push(Msg::Log {
            clock: 5,
            bytes: b"log bytes".to_vec(),
        });
        sent.push(Msg::Log {
            clock: 6,
            bytes: vec![],
        });
        sent.push(Msg::Heartbeat { count: 8, clock: 9 });
        for m in &sent {
            ptx.send(m).unwrap();
        }
        for m in &sent {
            assert_eq!(&brx.recv().unwrap(), m);
        }
        assert_eq!(brx.order(), Order::Log);
        let ack = Msg::Ack {
            count: 42,
            clock: 5,
        };
        btx.send(&ack).unwrap();
        btx.send(&Msg::Heartbeat { count: 1, clock: 5 }).unwrap();
        assert_eq!(prx.recv().unwrap(), ack);
        assert_eq!(prx.recv().unwrap(), Msg::Heartbeat { count: 1, clock: 5 });
    }

    #[test]
    fn the_halves_work_from_two_threads() {
        let (mut ptx, mut prx, mut btx, mut brx) = attached();
        let n = 2000u64;
        let sender = std::thread::spawn(move || {
            for i in 0..n {
                ptx.send(&Msg::Log {
                    clock: i,
                    bytes: vec![i as u8; (i as usize * 37) % 70_000],
                })
                .unwrap();
            }
        });
        let echo = std::thread::spawn(move || {
            for i in 0..n {
                match brx.recv().unwrap() {
                    Msg::Log { clock, bytes } => {
                        assert_eq!(clock, i);
                        assert_eq!(bytes.len(), (i as usize * 37) % 70_000);
                        btx.send(&Msg::Ack { count: i, clock }).unwrap();
                    }
                    other => panic!("{other:?}"),
                }
            }
        });
        for i in 0..n {
            assert_eq!(prx.recv().unwrap(), Msg::Ack { count: i, clock: i });
        }
        sender.join().unwrap();
        echo.join().unwrap();
    }

    #[test]
    fn a_wrong_key_is_refused() {
        let (p, b) = pair(KEY, b"another key.....");
        assert!(matches!(p, Err(ChannelError::Auth)), "{:?}", p.err());
        assert!(b.is_err());
    }

    #[test]
    fn a_primary_cannot_talk_to_a_primary() {
        let (p, b) = connect(KEY, hello(Role::Primary), KEY, hello(Role::Primary));
        assert!(matches!(p, Err(ChannelError::SameRole(Role::Primary))));
        assert!(matches!(b, Err(ChannelError::SameRole(Role::Primary))));
        let (p, b) = connect(KEY, hello(Role::Backup), KEY, hello(Role::Backup));
        assert!(matches!(p, Err(ChannelError::SameRole(Role::Backup))));
        assert!(matches!(b, Err(ChannelError::SameRole(Role::Backup))));
    }

    #[test]
    fn an_unknown_version_is_refused_by_both() {
        let mut older = hello(Role::Backup);
        older.version = 3;
        let (p, b) = connect(KEY, hello(Role::Primary), KEY, older);
        let e = p.err().unwrap();
        assert!(
            matches!(e, ChannelError::Version { ours: 4, theirs: 3 }),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "the peer speaks replication protocol version 3, this side version 4"
        );
        // The side whose hello claims version 3 runs this build's code here: it accepts the
        // version-4 hello it receives, and fails when the primary hangs up on it.
        assert!(b.is_err());
    }

    #[test]
    fn a_peer_that_is_not_ftvm_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            // An ftvm of protocol 1 opens with a 32-byte nonce.
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&[0x5a; 32]).unwrap();
            let mut b = [0u8; 9];
            s.read_exact(&mut b).unwrap();
        });
        let (s, _) = l.accept().unwrap();
        let r = Channel::handshake(s, &Psk::from_bytes(KEY), &hello(Role::Primary));
        assert!(matches!(r, Err(ChannelError::NotFtvm)));
        t.join().unwrap();
    }

    #[test]
    fn a_peer_that_says_nothing_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let _silent = TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        let t0 = std::time::Instant::now();
        let r = Channel::handshake(s, &Psk::from_bytes(KEY), &hello(Role::Primary));
        assert!(matches!(r, Err(ChannelError::Io(_))));
        assert!(t0.elapsed() >= HANDSHAKE_TIMEOUT);
        assert!(t0.elapsed() < HANDSHAKE_TIMEOUT * 2);
    }

    #[test]
    fn a_peer_that_trickles_its_handshake_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            // A byte of preamble every second: each read would be within a timeout per read.
            let mut s = TcpStream::connect(addr).unwrap();
            for b in MAGIC {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        });
        let (s, _) = l.accept().unwrap();
        let t0 = std::time::Instant::now();
        let r = Channel::handshake(s, &Psk::from_bytes(KEY), &hello(Role::Primary));
        assert!(matches!(r, Err(ChannelError::Io(_))));
        assert!(t0.elapsed() < HANDSHAKE_TIMEOUT + std::time::Duration::from_secs(1));
        t.join().unwrap();
    }

    #[test]
    fn injected_bytes_are_refused() {
        let (mut ptx, mut prx, _btx, mut brx) = attached();
        // A frame with a forged tag.
        let mut forged = Vec::new();
        forged.extend_from_slice(&(20u16 + TAG as u16).to_be_bytes());
        forged.extend_from_slice(&[0u8; 20 + TAG]);
        ptx.stream.write_all(&forged).unwrap();
        assert!(matches!(brx.recv(), Err(ChannelError::Decrypt)));
        // The backup shut the connection down: the primary's next receive ends, and so does
        // the backup's.
        assert!(prx.recv().is_err());
        assert!(matches!(brx.recv(), Err(ChannelError::Bad(_))));
    }

    #[test]
    fn an_impostor_primary_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let s = TcpStream::connect(addr).unwrap();
            Channel::handshake(s, &Psk::from_bytes(KEY), &hello(Role::Backup))
        });
        // Without the key it cannot read the backup's first message; it answers with bytes of
        // the right shape anyway.
        let (mut s, _) = l.accept().unwrap();
        let mut pre = MAGIC.to_vec();
        pre.push(b'P');
        s.write_all(&pre).unwrap();
        let mut buf = [0u8; 9 + 2 + 48];
        s.read_exact(&mut buf).unwrap();
        let mut answer = 48u16.to_be_bytes().to_vec();
        answer.extend_from_slice(&[0x42; 48]);
        s.write_all(&answer).unwrap();
        assert!(matches!(t.join().unwrap(), Err(ChannelError::Auth)));
    }

    #[test]
    fn a_replayed_or_reordered_frame_is_refused() {
        let (mut ptx, _prx, _btx, mut brx) = attached();
        let beat = |count| Msg::Heartbeat { count, clock: 0 };
        ptx.send(&beat(1)).unwrap();
        assert_eq!(brx.recv().unwrap(), beat(1));
        // The same frame again (the nonce of the previous one).
        ptx.nonce -= 1;
        ptx.send(&beat(1)).unwrap();
        assert!(matches!(brx.recv(), Err(ChannelError::Decrypt)));

        let (mut ptx, _prx, _btx, mut brx) = attached();
        // A frame from further on (a frame dropped or reordered).
        ptx.nonce += 1;
        ptx.send(&beat(2)).unwrap();
        assert!(matches!(brx.recv(), Err(ChannelError::Decrypt)));
    }

    #[test]
    fn messages_of_an_old_generation_are_dropped() {
        let (mut ptx, _prx, _btx, mut brx) = attached();
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
    fn messages_out_of_order_are_refused() {
        // The primary's disks after its log began.
        let (mut ptx, _prx, _btx, mut brx) = attached();
        ptx.send(&Msg::Log {
            clock: 0,
            bytes: vec![1],
        })
        .unwrap();
        brx.recv().unwrap();
        ptx.send(&Msg::Disk {
            index: 0,
            offset: 0,
            data: vec![1],
        })
        .unwrap();
        let e = brx.recv().unwrap_err();
        assert!(
            matches!(
                e,
                ChannelError::Order {
                    peer: Role::Primary,
                    got: "disk contents",
                    state: Order::Log
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "the primary sent disk contents after its log began: out of the protocol's order"
        );
        // Log bytes before the attach.
        let (p, b) = pair(KEY, KEY);
        let (mut ptx, _prx, _) = p.unwrap();
        let (_btx, mut brx, _) = b.unwrap();
        ptx.send(&Msg::Log {
            clock: 0,
            bytes: vec![],
        })
        .unwrap();
        assert!(matches!(
            brx.recv(),
            Err(ChannelError::Order {
                state: Order::Attach,
                ..
            })
        ));
        // Log bytes from a backup; a second hello.
        let (_ptx, mut prx, mut btx, _brx) = attached();
        btx.send(&Msg::Log {
            clock: 0,
            bytes: vec![],
        })
        .unwrap();
        assert!(matches!(
            prx.recv(),
            Err(ChannelError::Order {
                peer: Role::Backup,
                ..
            })
        ));
        let (_ptx, mut prx, mut btx, _brx) = attached();
        btx.send_raw_frame(&wire::hello_plaintext(&hello(Role::Backup), 0).unwrap());
        assert!(matches!(
            prx.recv(),
            Err(ChannelError::Order { got: "a hello", .. })
        ));
    }

    #[test]
    fn a_missing_hello_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // A backup that skips its hello: the preamble and Noise by hand, then a heartbeat.
        let t = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let mut pre = MAGIC.to_vec();
            pre.push(b'B');
            s.write_all(&pre).unwrap();
            let mut theirs = [0u8; 9];
            s.read_exact(&mut theirs).unwrap();
            let prologue = [PROLOGUE, &theirs[..], &pre[..]].concat();
            let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
            let noise = noise_handshake(
                &mut s,
                Role::Backup,
                &Psk::from_bytes(KEY),
                &prologue,
                deadline,
            );
            let mut tx = Channel::half(s, Arc::new(noise.unwrap()), Role::Backup);
            tx.send(&Msg::Heartbeat { count: 0, clock: 0 }).unwrap();
            tx
        });
        let (s, _) = l.accept().unwrap();
        let r = Channel::handshake(s, &Psk::from_bytes(KEY), &hello(Role::Primary));
        let e = r.err().unwrap();
        assert!(
            matches!(
                e,
                ChannelError::NoHello {
                    ours: 4,
                    got: "a heartbeat"
                }
            ),
            "{e}"
        );
        drop(t.join().unwrap());
    }

    #[test]
    fn an_oversized_message_is_refused_before_it_is_sent() {
        let (mut ptx, _prx, _btx, mut brx) = attached();
        let big = Msg::Log {
            clock: 0,
            bytes: vec![0; MAX_MSG as usize - 7],
        };
        assert!(matches!(
            ptx.send(&big),
            Err(ChannelError::TooLarge {
                len,
                max: MAX_MSG
            }) if len == u64::from(MAX_MSG) + 1
        ));
        // Nothing was sent, so the channel still works.
        let beat = Msg::Heartbeat { count: 1, clock: 0 };
        ptx.send(&beat).unwrap();
        assert_eq!(brx.recv().unwrap(), beat);
        // The largest message passes (received meanwhile: it does not fit a socket buffer).
        let most = Msg::Log {
            clock: 0,
            bytes: vec![3; MAX_MSG as usize - 8],
        };
        let receiver = std::thread::spawn(move || brx.recv().unwrap());
        ptx.send(&most).unwrap();
        assert_eq!(receiver.join().unwrap(), most);
    }

    #[test]
    fn an_oversized_claim_is_refused_by_the_receiver() {
        let (mut ptx, _prx, _btx, mut brx) = attached();
        // An authenticated frame whose header claims more than MAX_MSG.
        let head = Head {
            kind: Kind::Log,
            generation: 0,
            len: MAX_MSG + 1,
        };
        ptx.send_raw_frame(&head.to_bytes());
        assert!(matches!(brx.recv(), Err(ChannelError::TooLarge { .. })));
        // u32::MAX too.
        let (mut ptx, _prx, _btx, mut brx) = attached();
        let head = Head {
            len: u32::MAX,
            ..head
        };
        ptx.send_raw_frame(&head.to_bytes());
        assert!(matches!(brx.recv(), Err(ChannelError::TooLarge { .. })));
        // A claim within the limit, but a frame with more than it claimed.
        let (mut ptx, _prx, _btx, mut brx) = attached();
        let mut plain = Head { len: 3, ..head }.to_bytes().to_vec();
        plain.extend_from_slice(&[0; 8 + 4]);
        assert_eq!(plain.len(), HEAD + 12);
        ptx.send_raw_frame(&plain);
        assert!(matches!(brx.recv(), Err(ChannelError::Bad(_))));
    }

    /// The channel's cipher is ring's (see Cargo.toml): a side with it and a side with snow's
    /// own ciphers (as ftvm built before it) agree on the handshake and on every frame, both
    /// ways, so the wire format did not change.
    #[test]
    fn rings_cipher_and_snows_own_agree_on_the_wire() {
        let params = || NOISE_PARAMS.parse::<snow::params::NoiseParams>().unwrap();
        let psk = [3u8; 32];
        // ring's resolver named, so that this does not build without it (Builder::new takes
        // the same one).
        use snow::resolvers::{DefaultResolver, FallbackResolver, RingResolver};
        let ring = Box::new(FallbackResolver::new(
            Box::new(RingResolver),
            Box::new(DefaultResolver),
        ));
        let mut i = snow::Builder::with_resolver(params(), ring)
            .psk(0, &psk)
            .unwrap()
            .build_initiator()
            .unwrap();
        let own = Box::new(DefaultResolver);
        let mut r = snow::Builder::with_resolver(params(), own)
            .psk(0, &psk)
            .unwrap()
            .build_responder()
            .unwrap();
        let (mut m, mut p) = ([0u8; 256], [0u8; 256]);
        let n = i.write_message(&[], &mut m).unwrap();
        r.read_message(&m[..n], &mut p).unwrap();
        let n = r.write_message(&[], &mut m).unwrap();
        i.read_message(&m[..n], &mut p).unwrap();
        let (ring, own) = (
            i.into_stateless_transport_mode().unwrap(),
            r.into_stateless_transport_mode().unwrap(),
        );
        for (nonce, len) in [(0u64, 0usize), (1, 16), (2, 1514), (3, 65519)] {
            let plain: Vec<u8> = (0..len).map(|k| (k * 7 + 1) as u8).collect();
            let mut sealed = vec![0u8; len + 16];
            // Also with room for the tag, as the channel's buffer has: ring opens in place then.
            for room in [len, len + 16] {
                let mut opened = vec![0u8; room];
                let n = ring.write_message(nonce, &plain, &mut sealed).unwrap();
                let got = own.read_message(nonce, &sealed[..n], &mut opened);
                assert_eq!(got.unwrap(), len);
                assert_eq!(opened[..len], plain[..]);
                let n = own.write_message(nonce, &plain, &mut sealed).unwrap();
                let got = ring.read_message(nonce, &sealed[..n], &mut opened);
                assert_eq!(got.unwrap(), len);
                assert_eq!(opened[..len], plain[..]);
                // A flipped bit is refused by either.
                sealed[n - 1] ^= 1;
                assert!(ring.read_message(nonce, &sealed[..n], &mut opened).is_err());
                assert!(own.read_message(nonce, &sealed[..n], &mut opened).is_err());
            }
        }
    }
}
