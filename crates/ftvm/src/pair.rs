//! `ftvm primary` and `ftvm backup`: a backup replays the primary's input log in lockstep
//! behind it and goes live when the primary dies.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ftvm_host::HostEvent;
use ftvm_log::{LogReader, LogWriter, Next, Record};
use ftvm_machine::{DeviceOutput, DiskOp, DiskRequest, Machine, Output, RunExit};
use ftvm_replication::lease::{now_ns, sleep_until};
use ftvm_replication::{Arbiter, Channel, Hello, Lease, Msg, Peer, Psk, Role, Timing};

use crate::{
    build_machine, emit_frame_arp, expected_devices, live, open_backends, Feeder, Gate, PairArgs,
    RunArgs,
};

/// The sending half of a link, shared by whoever sends: the runner (log bytes), the receiving
/// thread (acknowledgements) and the heartbeat thread. Each writes from its own thread, so
/// the output-commit path (log out, acknowledgement back) crosses no extra thread. A write
/// blocks at most the write limit; a failed write marks the link broken. Once this side has
/// cut its ties ([`SendHalf::cut`]) nothing more is sent.
#[derive(Clone)]
struct SendHalf {
    tx: Arc<Mutex<Channel>>,
    peer: Arc<Peer>,
}

impl SendHalf {
    fn new(tx: Channel, write_limit: Duration, peer: Arc<Peer>) -> Result<SendHalf> {
        tx.set_write_timeout(Some(write_limit))?;
        Ok(SendHalf {
            tx: Arc::new(Mutex::new(tx)),
            peer,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Channel> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_write_limit(&self, limit: Duration) -> Result<()> {
        Ok(self.lock().set_write_timeout(Some(limit))?)
    }

    fn set_generation(&self, generation: u64) {
        self.lock().set_generation(generation);
    }

    /// Send a heartbeat every `beat` while this half (or a clone of it) is kept; `make` builds
    /// each one just before it is written (so a stamp in it is the time it leaves).
    fn heartbeats(&self, beat: Duration, make: impl Fn(&Peer) -> Msg + Send + 'static) {
        let weak = Arc::downgrade(&self.tx);
        let peer = self.peer.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(beat);
            let Some(tx) = weak.upgrade() else { return };
            let half = SendHalf {
                tx,
                peer: peer.clone(),
            };
            if !half.send_with(|| make(&peer)) {
                return;
            }
        });
    }

    /// Send the message `make` builds (under the sending lock, after the fence is checked);
    /// false if the link is broken or this side has cut it.
    fn send_with(&self, make: impl FnOnce() -> Msg) -> bool {
        let mut tx = self.lock();
        if self.peer.fenced() || self.peer.broken() {
            return false;
        }
        if tx.send(&make()).is_err() {
            self.peer.set_broken();
            tx.shutdown();
            return false;
        }
        true
    }

    /// Cut every tie to the peer: nothing more is sent (no heartbeat, no echo, no
    /// acknowledgement) and the connection is closed. Returns when the peer can hold no lease
    /// from this side any more (see `ftvm_replication::lease`).
    fn cut(&self, wait: Duration) -> u64 {
        let tx = self.lock();
        let free_at = self.peer.fence(wait);
        tx.shutdown();
        free_at
    }
}

/// Cuts the link when dropped, unless disarmed (an attach that fails half-way).
struct CutOnDrop(Option<SendHalf>);

impl Drop for CutOnDrop {
    fn drop(&mut self) {
        if let Some(out) = self.0.take() {
            out.cut(Duration::ZERO);
        }
    }
}

/// Log bytes for the backup: buffered, sent as one message (stamped with the time it leaves)
/// on flush.
struct LinkWriter {
    buf: Vec<u8>,
    out: SendHalf,
}

impl Write for LinkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let bytes = std::mem::take(&mut self.buf);
            // A dead backup is noticed by the runner through the link's state.
            self.out.send_with(|| Msg::Log {
                clock: now_ns(),
                bytes,
            });
        }
        Ok(())
    }
}

pub(crate) enum LinkState {
    /// The backup holds the log up to this count.
    Protected(u64),
    /// The backup is gone and this side won the arbiter.
    Unprotected,
}

/// The primary's view of its backup.
pub(crate) struct PrimaryLink {
    /// The pair's generation: the arbiter key this side races for if the backup dies.
    generation: u64,
    acked: Arc<AtomicU64>,
    released: Arc<AtomicU64>,
    /// Up to where the backup has replayed (from its heartbeats).
    replayed: Arc<AtomicU64>,
    /// How far (in instructions) the backup's replay may trail before the guest waits.
    max_lag: u64,
    peer: Arc<Peer>,
    /// Outputs may leave only while this holds: the backup cannot have gone live.
    lease: Arc<Lease>,
    out: SendHalf,
    timing: Timing,
    arbiter: Arbiter,
}

impl PrimaryLink {
    pub fn check(&mut self) -> Result<LinkState> {
        if self.peer.is_dead(self.timing.dead) {
            let why = if self.peer.broken() {
                "its link broke".to_string()
            } else {
                format!(
                    "nothing heard for {} ms",
                    now_ns().saturating_sub(self.peer.last_heard()) / 1_000_000
                )
            };
            // Cut first: no heartbeat of ours may keep a backup following a primary that
            // goes on alone, and nothing of the backup's is taken from now on.
            self.out.cut(self.timing.fence_wait());
            if self.arbiter.test_and_set(self.generation, "primary")? {
                return Ok(LinkState::Unprotected);
            }
            let lapsed = now_ns().saturating_sub(self.lease.until()) / 1_000_000;
            bail!(
                "the backup won generation {} of the arbiter ({why}: this primary was stopped, stalled or cut off from it); this primary stops its guest. Its lease ran out {lapsed} ms ago and it released nothing since",
                self.generation
            );
        }
        Ok(LinkState::Protected(self.acked.load(Ordering::Relaxed)))
    }
    /// Whether outputs may leave now: the backup, which echoed a stamp of ours recently
    /// enough, cannot have gone live, and the link is whole.
    pub fn may_release(&self) -> bool {
        self.lease.holds() && !self.peer.broken() && !self.peer.fenced()
    }
    pub fn released(&self, count: u64) {
        self.released.store(count, Ordering::Relaxed);
    }
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }
    /// Wait up to `limit` for the backup to close the channel (as it does at the end of the
    /// log); whether it did.
    pub fn hung_up(&self, limit: Duration) -> bool {
        let t0 = Instant::now();
        while !self.peer.broken() {
            if t0.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
    /// Whether the guest at `count` is so far ahead of the backup's replay that a failover
    /// would pause longer than --max-lag-ms: it then waits for the backup.
    pub fn too_far_ahead(&self, count: u64) -> bool {
        count.saturating_sub(self.replayed.load(Ordering::Relaxed)) > self.max_lag
    }
}

/// How long outputs waited for the backup's acknowledgement (output commit), in buckets of
/// 10 µs up to 20 ms.
pub(crate) struct HoldTimes {
    buckets: Vec<u64>,
    count: u64,
    total: Duration,
}

impl Default for HoldTimes {
    fn default() -> HoldTimes {
        HoldTimes {
            buckets: vec![0; HOLD_BUCKETS],
            count: 0,
            total: Duration::ZERO,
        }
    }
}

const HOLD_BUCKETS: usize = 2000;
const HOLD_BUCKET_US: u64 = 10;

impl HoldTimes {
    pub fn record(&mut self, d: Duration) {
        let i = (d.as_micros() as u64 / HOLD_BUCKET_US).min(HOLD_BUCKETS as u64 - 1);
        self.buckets[i as usize] += 1;
        self.count += 1;
        self.total += d;
    }

    /// The upper bound (µs) of the bucket holding the `q`-quantile (the last bucket is open).
    fn quantile_us(&self, q: f64) -> u64 {
        let rank = ((self.count as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return (i as u64 + 1) * HOLD_BUCKET_US;
            }
        }
        HOLD_BUCKETS as u64 * HOLD_BUCKET_US
    }

    /// "N outputs, median ..., p99 ..., mean ...", or None if nothing was held.
    pub fn summary(&self) -> Option<String> {
        if self.count == 0 {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(format!(
            "{} outputs, median {:.2} ms, p99 {:.2} ms, mean {:.2} ms",
            self.count,
            ms(self.quantile_us(0.5)),
            ms(self.quantile_us(0.99)),
            self.total.as_secs_f64() * 1000.0 / self.count as f64
        ))
    }
}

/// Disk contents travel in pieces of this size; pieces that are all zero are not sent.
const DISK_PIECE: usize = 1 << 20;

/// What a side needs to protect its guest with a backup: the backups that connect, and
/// how to bring one up to date (the guest's state, the disks' contents, then the log).
pub(crate) struct Protector {
    incoming: mpsc::Receiver<(Channel, Channel)>,
    /// The generation the next backup starts.
    next_generation: u64,
    arbiter: Arbiter,
    disks: Vec<std::path::PathBuf>,
    timing: Timing,
    pub digest_every: u64,
    max_lag: u64,
    wake: Sender<HostEvent>,
}

impl Protector {
    /// Accept backups on `listen` (authenticated with `psk`) from now on.
    pub fn start(
        listen: &str,
        psk: Psk,
        arbiter: Arbiter,
        next_generation: u64,
        p: &PairArgs,
        a: &RunArgs,
        wake: Sender<HostEvent>,
    ) -> Result<Protector> {
        let listener =
            TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
        let (tx, incoming) = mpsc::channel();
        let waker = wake.clone();
        let hello = Hello::new(Role::Primary, a.mem, String::new());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                let peer = s.peer_addr().map_or("?".to_string(), |a| a.to_string());
                match Channel::handshake(s, &psk, &hello) {
                    Ok((out, inc, _)) => {
                        let halves = (out, inc);
                        eprintln!("ftvm: backup {peer} connected");
                        if tx.send(halves).is_err() {
                            return;
                        }
                        let _ = waker.send(HostEvent::Wake);
                    }
                    Err(e) => eprintln!("ftvm: refused {peer}: {e}"),
                }
            }
        });
        Ok(Protector {
            incoming,
            next_generation,
            arbiter,
            disks: a.disk.clone(),
            timing: p.timing(),
            digest_every: p.digest_every,
            max_lag: p.max_lag_ms.saturating_mul(INSTRUCTIONS_PER_MS),
            wake,
        })
    }

    /// A backup that connected and waits to attach, if any.
    pub fn waiting(&self) -> Option<(Channel, Channel)> {
        self.incoming.try_recv().ok()
    }

    /// Block until a backup connects.
    pub fn wait(&self) -> Result<(Channel, Channel)> {
        self.incoming
            .recv()
            .context("the listener for backups stopped")
    }

    /// Bring a backup up to date with the machine as it is now (no disk request may be in
    /// flight): the generation, the disks' contents, then a log whose header is the machine's
    /// state. Returns the link to the backup and the log to write the inputs to.
    pub fn attach(
        &mut self,
        m: &Machine,
        (mut tx, mut rx): (Channel, Channel),
    ) -> Result<(PrimaryLink, LogWriter<Box<dyn Write>>)> {
        use std::os::unix::fs::FileExt;
        let generation = self.next_generation;
        if self.arbiter.taken(generation)? {
            bail!("generation {generation} of the arbiter was already won: refusing the backup");
        }
        let t0 = Instant::now();
        let mut files = Vec::new();
        for path in &self.disks {
            let f = std::fs::File::open(path)
                .with_context(|| format!("cannot read disk {}", path.display()))?;
            let len = f.metadata()?.len();
            files.push((f, len));
        }
        // Every message of this link belongs to this generation; the backup's, from before it
        // learned it, are dropped.
        tx.set_generation(generation);
        rx.set_generation(generation);
        let peer = Arc::new(Peer::default());
        let lease = Arc::new(Lease::new(self.timing.lease()));
        // While the state is sent a write may block longer (large writes to a busy backup),
        // but never without bound: a backup that stops reading fails the attach.
        let out = SendHalf::new(tx, self.timing.stall(), peer.clone())?;
        let released = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(AtomicU64::new(0));
        let replayed = Arc::new(AtomicU64::new(m.count()));
        {
            let (acked, replayed, peer, lease) =
                (acked.clone(), replayed.clone(), peer.clone(), lease.clone());
            let wake = self.wake.clone();
            std::thread::spawn(move || loop {
                let msg = rx.recv();
                if peer.fenced() {
                    // This side cut the link: nothing of the backup's counts any more.
                    return;
                }
                match msg {
                    Ok(Msg::Ack { count, clock }) => {
                        peer.heard();
                        lease.renew(clock);
                        acked.fetch_max(count, Ordering::Relaxed);
                        // Held outputs may leave now: wake the runner if it waits.
                        let _ = wake.send(HostEvent::Wake);
                    }
                    Ok(Msg::Heartbeat { count, clock }) => {
                        peer.heard();
                        lease.renew(clock);
                        replayed.fetch_max(count, Ordering::Relaxed);
                    }
                    Ok(other) => {
                        tracing::warn!(?other, "unexpected message from the backup");
                        peer.heard();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "replication channel closed");
                        peer.set_broken();
                        let _ = wake.send(HostEvent::Wake);
                        return;
                    }
                }
            });
        }
        // Whatever fails from here on closes the link, so the backup does not wait for more.
        let mut cut = CutOnDrop(Some(out.clone()));
        let gone = || anyhow::anyhow!("the backup stopped receiving while its state was sent");
        let attach = Msg::Attach {
            generation,
            disks: files.iter().map(|(_, len)| *len).collect(),
        };
        if !out.send_with(|| attach) {
            return Err(gone());
        }
        // Heartbeats from now on (the backup takes them with the disks), each stamped.
        {
            let released = released.clone();
            out.heartbeats(self.timing.beat, move |_| Msg::Heartbeat {
                count: released.load(Ordering::Relaxed),
                clock: now_ns(),
            });
        }
        let mut sent = 0u64;
        let mut piece = vec![0u8; DISK_PIECE];
        for (index, (f, len)) in files.iter().enumerate() {
            let mut offset = 0u64;
            while offset < *len {
                let n = (*len - offset).min(DISK_PIECE as u64) as usize;
                f.read_exact_at(&mut piece[..n], offset)?;
                if piece[..n].iter().any(|&b| b != 0) {
                    let data = piece[..n].to_vec();
                    if !out.send_with(|| Msg::Disk {
                        index: index as u32,
                        offset,
                        data,
                    }) {
                        return Err(gone());
                    }
                    sent += n as u64;
                }
                offset += n as u64;
            }
        }
        let header = Record::Header {
            count: m.count(),
            snapshot: m.save(),
            digest_every: self.digest_every,
        };
        let writer: Box<dyn Write> = Box::new(LinkWriter {
            buf: Vec::new(),
            out: out.clone(),
        });
        let log = LogWriter::new(writer, header)?;
        if peer.broken() {
            return Err(gone());
        }
        out.set_write_limit(self.timing.dead)?;
        cut.0 = None;
        eprintln!(
            "ftvm: backup attached (generation {generation}) at instruction {}: {} KiB of disk sent, state sent in {} ms",
            m.count(),
            sent >> 10,
            t0.elapsed().as_millis()
        );
        self.next_generation = generation + 1;
        Ok((
            PrimaryLink {
                generation,
                acked,
                released,
                replayed,
                max_lag: self.max_lag,
                peer,
                lease,
                out,
                timing: self.timing,
                arbiter: self.arbiter.clone(),
            },
            log,
        ))
    }
}

/// Guest time: the timebase runs at 10 MHz and ticks once per 10 instructions.
const INSTRUCTIONS_PER_MS: u64 = 100_000;

/// A side's status, rewritten (atomically) at most every 100 ms.
pub(crate) struct StatusFile {
    path: std::path::PathBuf,
    last: Option<Instant>,
}

impl StatusFile {
    pub fn new(path: &std::path::Path) -> StatusFile {
        StatusFile {
            path: path.to_path_buf(),
            last: None,
        }
    }

    /// `peer`: the count the other side is at (the backup's acknowledged log for a primary,
    /// the primary's latest record for a backup); None when unprotected.
    pub fn update(&mut self, role: &str, count: u64, peer: Option<u64>) {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        let lag = peer.map(|p| count.abs_diff(p));
        let text = format!(
            "role={role}\ninstructions={count}\nprotected={}\nlag_instructions={}\nlag_ms={}\n",
            if peer.is_some() { "yes" } else { "no" },
            lag.map_or("-".into(), |l| l.to_string()),
            lag.map_or("-".into(), |l| {
                format!("{:.1}", l as f64 / INSTRUCTIONS_PER_MS as f64)
            }),
        );
        let tmp = self.path.with_extension("tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &self.path);
        }
    }
}

/// `ftvm status FILE...`
pub fn status(files: &[std::path::PathBuf]) -> Result<u8> {
    println!(
        "{:<28} {:<10} {:>14} {:>10} {:>16} {:>10}",
        "status file", "role", "instructions", "protected", "lag instructions", "lag ms"
    );
    for f in files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read status file {}", f.display()))?;
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .unwrap_or("?")
                .to_string()
        };
        println!(
            "{:<28} {:<10} {:>14} {:>10} {:>16} {:>10}",
            f.display().to_string(),
            get("role"),
            get("instructions"),
            get("protected"),
            get("lag_instructions"),
            get("lag_ms")
        );
    }
    Ok(0)
}

pub fn primary(listen: &str, p: PairArgs, a: RunArgs) -> Result<u8> {
    let psk = Psk::from_file(&p.psk)?;
    let arbiter = Arbiter::parse(&p.arbiter)?;
    if arbiter.taken(0)? {
        bail!(
            "the arbiter {} was already won: a new pair needs a fresh arbiter",
            p.arbiter
        );
    }
    let (events_tx, events) = mpsc::channel::<HostEvent>();
    let mut protect = Protector::start(listen, psk, arbiter, 0, &p, &a, events_tx.clone())?;
    let (m, backends) = build_machine(&a, &events_tx)?;
    eprintln!("ftvm: primary waiting for a backup on {listen}");
    let (link, log) = loop {
        let halves = protect.wait()?;
        match protect.attach(&m, halves) {
            Ok(attached) => break attached,
            Err(e) => eprintln!("ftvm: the backup could not attach: {e:#}"),
        }
    };
    // Tell the network where the guest is now (a previous incarnation may have been elsewhere).
    for (slot, tap) in &backends.taps {
        if let Some(frame) = emit_frame_arp(&a, *slot) {
            tap.send(&frame);
        }
    }
    let feed = Feeder {
        log: Some(log),
        digest_every: p.digest_every,
        next_digest: m.count().saturating_add(p.digest_every),
        epoch: p.epoch(),
        fed: 0,
    };
    let mut gate = Gate::open();
    gate.status = p.status_file.as_deref().map(StatusFile::new);
    gate.link = Some(link);
    gate.protect = Some(protect);
    live(&a, m, backends, events_tx, events, feed, gate, Vec::new())
}

/// Log bytes as they arrive, for a LogReader that follows the stream.
#[derive(Default)]
struct Incoming(VecDeque<u8>);

impl std::io::Read for Incoming {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.0.len());
        for (d, s) in buf.iter_mut().zip(self.0.drain(..n)) {
            *d = s;
        }
        Ok(n)
    }
}

enum FromPrimary {
    Record(Record),
    Released(u64),
    Gone,
}

/// Receive the pair's generation and the primary's disks (written over this side's images),
/// up to the first bytes of the log, which are returned. The `Attach` that starts it may be
/// long in coming (this backup waits while another one protects the guest); from then on, a
/// primary that goes silent for the stall limit fails the attach: this side never had the
/// guest, so it stops. `beat` starts this side's heartbeats, once the generation is known.
fn receive_state(
    rx: &mut Channel,
    out: &SendHalf,
    a: &RunArgs,
    arbiter: &Arbiter,
    timing: Timing,
    beat: impl FnOnce(),
) -> Result<(u64, Vec<u64>, Vec<u8>)> {
    use std::os::unix::fs::FileExt;
    let (generation, sizes) = match rx.recv().context("the primary closed the link")? {
        Msg::Attach { generation, disks } => (generation, disks),
        other => bail!("the primary sent {} before its state", msg_name(&other)),
    };
    out.peer.heard();
    out.set_generation(generation);
    beat();
    eprintln!(
        "ftvm: attaching as generation {generation}: receiving the primary's disks and state"
    );
    rx.set_read_timeout(Some(timing.stall()))?;
    let peer = out.peer.clone();
    let mut recv = || -> Result<Msg> {
        match rx.recv() {
            Ok(m) => {
                peer.heard();
                Ok(m)
            }
            Err(ftvm_replication::ChannelError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!(
                    "the primary went silent for {} ms while it sent its state (stopped, stalled or cut off): this backup never had the guest and stops",
                    timing.stall().as_millis()
                )
            }
            Err(e) => Err(e).context("the primary's state did not arrive whole"),
        }
    };
    if sizes.len() != a.disk.len() {
        bail!(
            "the primary has {} disks and this backup {}: give both sides the same --disk and --net options, in the same order",
            sizes.len(),
            a.disk.len()
        );
    }
    if arbiter.taken(generation)? {
        bail!("generation {generation} of the arbiter was already won: this backup comes too late");
    }
    let mut files = Vec::new();
    for (path, &len) in a.disk.iter().zip(&sizes) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("cannot write disk {}", path.display()))?;
        f.set_len(len)
            .with_context(|| format!("cannot size disk {}", path.display()))?;
        files.push((f, len));
    }
    let t0 = Instant::now();
    let mut got = 0u64;
    loop {
        match recv()? {
            Msg::Disk {
                index,
                offset,
                data,
            } => {
                let Some((f, len)) = files.get(index as usize) else {
                    bail!("the primary sent contents of disk {index}, which it does not have");
                };
                if offset.saturating_add(data.len() as u64) > *len {
                    bail!("the primary sent disk contents beyond the end of disk {index}");
                }
                f.write_all_at(&data, offset)
                    .context("writing this backup's disk copy")?;
                got += data.len() as u64;
            }
            Msg::Log { clock, bytes } => {
                peer.heard_stamp(clock);
                for (f, _) in &files {
                    f.sync_data().context("writing this backup's disk copy")?;
                }
                eprintln!(
                    "ftvm: received generation {generation}: {} KiB of disk in {} ms",
                    got >> 10,
                    t0.elapsed().as_millis()
                );
                return Ok((generation, sizes, bytes));
            }
            Msg::Heartbeat { clock, .. } => peer.heard_stamp(clock),
            other => bail!("the primary sent {} during its state", msg_name(&other)),
        }
    }
}

fn msg_name(m: &Msg) -> &'static str {
    match m {
        Msg::Log { .. } => "log bytes",
        Msg::Ack { .. } => "an acknowledgement",
        Msg::Heartbeat { .. } => "a heartbeat",
        Msg::Attach { .. } => "an attach message",
        Msg::Disk { .. } => "disk contents",
    }
}

pub fn backup(primary_addr: &str, listen: Option<&str>, p: PairArgs, a: RunArgs) -> Result<u8> {
    let psk = Psk::from_file(&p.psk)?;
    let arbiter = Arbiter::parse(&p.arbiter)?;
    let t0 = Instant::now();
    let stream = loop {
        match TcpStream::connect(primary_addr) {
            Ok(s) => break s,
            Err(e) if t0.elapsed() < Duration::from_secs(30) => {
                tracing::debug!(error = %e, "primary not there yet");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => bail!("cannot reach the primary at {primary_addr}: {e}"),
        }
    };
    let hello = Hello::new(Role::Backup, a.mem, String::new());
    let (tx_half, mut rx_half, _) = Channel::handshake(stream, &psk, &hello)?;
    eprintln!("ftvm: backup connected to {primary_addr}");
    let timing = p.timing();
    let peer = Arc::new(Peer::default());
    let out = SendHalf::new(tx_half, timing.dead, peer.clone())?;
    // Heartbeats (from the attach on, so the primary knows this side is there while it sends
    // its state; not while this side waits its turn, unread) tell the primary how far this side
    // has replayed, and echo its newest stamp.
    let replayed = Arc::new(AtomicU64::new(0));
    let beat = {
        let (replayed, out) = (replayed.clone(), out.clone());
        move || {
            out.heartbeats(timing.beat, move |peer| Msg::Heartbeat {
                count: replayed.load(Ordering::Relaxed),
                clock: peer.echo(),
            })
        }
    };
    let (generation, disk_sizes, first_log) =
        receive_state(&mut rx_half, &out, &a, &arbiter, timing, beat)?;
    // From here on the primary's liveness is judged by its heartbeats.
    rx_half.set_read_timeout(None)?;
    peer.heard();
    let (rec_tx, rec_rx) = mpsc::channel::<FromPrimary>();
    // The count of the newest record received (the primary's progress as this side knows it).
    let latest = Arc::new(AtomicU64::new(0));
    {
        let (latest, out) = (latest.clone(), out.clone());
        std::thread::spawn(move || {
            if let Err(why) = receive_log(&mut rx_half, first_log, &out, &latest, &rec_tx) {
                tracing::warn!("{why}");
                out.peer.set_broken();
            }
            let _ = rec_tx.send(FromPrimary::Gone);
        });
    }

    // The primary's initial state.
    let mut m = loop {
        match rec_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(FromPrimary::Record(Record::Header { snapshot, .. })) => {
                break Machine::restore(&snapshot).context("the primary's state")?
            }
            Ok(FromPrimary::Released(_)) => {}
            _ => bail!("the primary sent no initial state"),
        }
    };
    // This side must be able to take over the guest's devices as they are.
    let expected = expected_devices(&a, &disk_sizes);
    if m.devices() != expected {
        bail!(
            "the primary's guest has the devices {:?}, this backup's options give {:?}: give both sides the same --disk and --net options (MACs included), in the same order",
            m.devices(),
            expected
        );
    }
    replayed.store(m.count(), Ordering::Relaxed);
    // The backup's own disk copies receive the same writes, by replay.
    let mut disks: HashMap<usize, std::fs::File> = HashMap::new();
    for (slot, path) in a.disk.iter().enumerate() {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open disk {}", path.display()))?;
        disks.insert(slot, f);
    }
    let mut outstanding: HashMap<(usize, u64), DiskRequest> = HashMap::new();
    // Outputs of the replay the primary may not have released yet.
    let mut unreleased: VecDeque<(u64, Output)> = VecDeque::new();
    let mut released = 0u64;
    let mut gone = false;
    let mut status = p.status_file.as_deref().map(StatusFile::new);
    // Hold the guest's TAP devices open while following (this side writes nothing to them and
    // drops what they receive), so that their bridge ports are up and forwarding when it goes
    // live: a TAP first opened at the takeover can take a few hundred ms to pass frames, and a
    // client's retransmission lost meanwhile costs it another timeout. On a host where the
    // primary holds the same TAP they open only at the takeover.
    let (events_tx, events) = mpsc::channel::<HostEvent>();
    let mut early_taps = crate::open_taps(&a, &events_tx).ok();
    loop {
        // Nothing received on the TAPs before the takeover is the guest's: drop it.
        while events.try_recv().is_ok() {}
        let msg = match rec_rx.recv_timeout(timing.beat) {
            Ok(m) => Some(m),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(FromPrimary::Gone),
        };
        match msg {
            Some(FromPrimary::Record(r)) => {
                let target = r.count();
                replay_to(
                    &mut m,
                    target,
                    &mut disks,
                    &mut outstanding,
                    &mut unreleased,
                )?;
                replayed.store(m.count(), Ordering::Relaxed);
                match r {
                    Record::Input { inputs, .. } => {
                        for i in inputs {
                            if let ftvm_machine::Input::DiskDone { slot, id, .. } = &i {
                                outstanding.remove(&(*slot, *id));
                            }
                            m.apply(i);
                        }
                    }
                    Record::Digest { count, digest } if m.digest().as_bytes() != &digest => {
                        bail!("diverged from the primary at instruction {count}");
                    }
                    Record::End { code, .. } => {
                        eprintln!("ftvm: the primary's guest stopped (exit {code}); backup done");
                        return Ok(code.min(255) as u8);
                    }
                    _ => {}
                }
            }
            Some(FromPrimary::Released(c)) => {
                released = released.max(c);
                while unreleased.front().is_some_and(|(c, _)| *c <= released) {
                    unreleased.pop_front();
                }
            }
            Some(FromPrimary::Gone) => gone = true,
            None => {}
        }
        if let Some(st) = &mut status {
            let primary_at = latest.load(Ordering::Relaxed).max(m.count());
            st.update("backup", m.count(), Some(primary_at));
        }
        if gone || peer.is_dead(timing.dead) {
            break;
        }
    }
    // The primary is gone (or cut off, or stopped: it may come back). Cut every tie first:
    // no acknowledgement, echo or heartbeat leaves from now on, so no lease of the primary's
    // can outlast `free_at`; then nothing is released before it.
    let detected = Instant::now();
    let why = if peer.broken() || gone {
        "the link closed".to_string()
    } else {
        format!(
            "nothing heard for {} ms",
            now_ns().saturating_sub(peer.last_heard()) / 1_000_000
        )
    };
    let free_at = out.cut(timing.fence_wait());
    // Everything received is in the queue: replay it all.
    while let Ok(msg) = rec_rx.try_recv() {
        if let FromPrimary::Record(r) = msg {
            replay_to(
                &mut m,
                r.count(),
                &mut disks,
                &mut outstanding,
                &mut unreleased,
            )?;
            if let Record::Input { inputs, .. } = r {
                for i in inputs {
                    if let ftvm_machine::Input::DiskDone { slot, id, .. } = &i {
                        outstanding.remove(&(*slot, *id));
                    }
                    m.apply(i);
                }
            }
        }
    }
    sleep_until(free_at);
    if !arbiter.test_and_set(generation, "backup")? {
        bail!(
            "the primary won generation {generation} of the arbiter ({why}: this backup was stopped, stalled or cut off from it, and the primary runs on); this backup stops and never went live"
        );
    }
    for f in disks.values() {
        let _ = f.sync_data();
    }
    drop(disks);
    eprintln!(
        "ftvm: primary lost ({why}); backup live at instruction {} ({} ms after detection)",
        m.count(),
        detected.elapsed().as_millis()
    );
    while events.try_recv().is_ok() {}
    // The dead primary's TAP may take a moment to be released on a shared host: retry briefly.
    let t_open = Instant::now();
    let backends = loop {
        if let Some(taps) = early_taps.take() {
            let mut b = crate::Backends {
                taps,
                ..Default::default()
            };
            crate::open_disks(&a, &events_tx, &mut b)
                .context("cannot take over the guest's disks")?;
            break b;
        }
        match open_backends(&a, &events_tx) {
            Ok(b) => break b,
            Err(e) if t_open.elapsed() < Duration::from_secs(3) => {
                tracing::debug!(error = %e, "devices not free yet");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.context("cannot take over the guest's devices")),
        }
    };
    // Announce the guest's address from here on, then produce the unreleased outputs again.
    for (slot, tap) in &backends.taps {
        if let Some(frame) = emit_frame_arp(&a, *slot) {
            tap.send(&frame);
        }
    }
    for (_, out) in unreleased.drain(..) {
        if let Output::Device(DeviceOutput::Frame { slot, frame }) = out {
            if let Some(t) = backends.taps.get(&slot) {
                t.send(&frame);
            }
        } else if let Output::Console(b) = out {
            let _ = std::io::stdout().write_all(&b);
        }
    }
    let feed = Feeder {
        log: None,
        digest_every: u64::MAX,
        next_digest: u64::MAX,
        epoch: p.epoch(),
        fed: 0,
    };
    let mut resubmit: Vec<DiskRequest> = outstanding.into_values().collect();
    resubmit.sort_by_key(|r| (r.slot, r.id));
    let mut gate = Gate::open();
    gate.status = status;
    if let Some(listen) = listen {
        // This side is the primary now: a new backup may attach and start the next generation.
        gate.protect = Some(Protector::start(
            listen,
            psk,
            arbiter,
            generation + 1,
            &p,
            &a,
            events_tx.clone(),
        )?);
        eprintln!("ftvm: waiting for a new backup on {listen}");
    }
    live(&a, m, backends, events_tx, events, feed, gate, resubmit)
}

/// The backup's receiving side: decode the primary's log as it arrives (starting with
/// `first`), hand each record to the replay through `records` and acknowledge it on receipt.
/// Returns when this side cut its ties or the replay stopped listening; an error when the link
/// or the stream broke.
fn receive_log(
    rx: &mut Channel,
    first: Vec<u8>,
    out: &SendHalf,
    latest: &AtomicU64,
    records: &Sender<FromPrimary>,
) -> std::result::Result<(), String> {
    let peer = &out.peer;
    let mut reader: Option<LogReader<Incoming>> = None;
    let mut pending = Incoming::default();
    let mut first = Some(first);
    loop {
        let bytes = match first.take() {
            Some(b) => b,
            None => {
                let msg = rx.recv();
                if peer.fenced() {
                    // This side cut its ties: nothing of the primary's is taken now.
                    return Ok(());
                }
                match msg.map_err(|e| format!("replication channel closed: {e}"))? {
                    Msg::Log { clock, bytes } => {
                        peer.heard_stamp(clock);
                        bytes
                    }
                    Msg::Heartbeat { count, clock } => {
                        peer.heard_stamp(clock);
                        let _ = records.send(FromPrimary::Released(count));
                        continue;
                    }
                    other => {
                        return Err(format!(
                            "the primary sent {} in its log stream",
                            msg_name(&other)
                        ))
                    }
                }
            }
        };
        let bad = |e: ftvm_log::LogError| format!("bad log stream: {e}");
        let r = match &mut reader {
            Some(r) => {
                r.source_mut().0.extend(bytes);
                r
            }
            None => {
                pending.0.extend(bytes);
                if pending.0.len() < 12 {
                    continue;
                }
                reader.insert(LogReader::new(std::mem::take(&mut pending)).map_err(bad)?)
            }
        };
        let mut last = None;
        // Only a mark asks for an acknowledgement (outputs wait on it); log pushed out for the
        // inputs alone needs none: the next acknowledgement covers it.
        let mut marked = false;
        while let Next::Record(rec) = r.next_record().map_err(bad)? {
            last = Some(rec.count());
            marked |= !matches!(rec, Record::Input { .. });
            latest.fetch_max(rec.count(), Ordering::Relaxed);
            if records.send(FromPrimary::Record(rec)).is_err() {
                return Ok(());
            }
        }
        // The log is held here up to `last`: acknowledge on receipt, echoing the newest stamp
        // (refused once this side has cut its ties).
        if let (Some(count), true) = (last, marked) {
            out.send_with(|| Msg::Ack {
                count,
                clock: peer.echo(),
            });
        }
    }
}

/// Replay to `target`, making the disk writes on this side's copies and keeping the outputs.
fn replay_to(
    m: &mut Machine,
    target: u64,
    disks: &mut HashMap<usize, std::fs::File>,
    outstanding: &mut HashMap<(usize, u64), DiskRequest>,
    unreleased: &mut VecDeque<(u64, Output)>,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    loop {
        let exit = m.run(target, u64::MAX);
        let count = m.count();
        for out in m.take_outputs() {
            match out {
                Output::Device(DeviceOutput::Disk(req)) => {
                    if let (DiskOp::Write { sector, data }, Some(f)) =
                        (&req.op, disks.get(&req.slot))
                    {
                        f.write_all_at(data, sector * 512)
                            .context("writing the backup's disk copy")?;
                    }
                    outstanding.insert((req.slot, req.id), req);
                }
                out => unreleased.push_back((count, out)),
            }
        }
        match exit {
            RunExit::StopAt => return Ok(()),
            RunExit::Yield | RunExit::Output => {}
            other => {
                if m.count() == target {
                    return Ok(());
                }
                bail!(
                    "diverged from the primary at instruction {}: stopped ({other:?}) before {target}",
                    m.count()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_times_report_quantiles_to_the_bucket() {
        let mut h = HoldTimes::default();
        assert_eq!(h.summary(), None);
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us * 100));
        }
        // 100 holds of 0.1 ms .. 10 ms: the median is 5.0 ms (its bucket ends at 5.01 ms),
        // the 99th percentile 9.9 ms.
        assert_eq!(h.quantile_us(0.5), 5010);
        assert_eq!(h.quantile_us(0.99), 9910);
        assert_eq!(
            h.summary().as_deref(),
            Some("100 outputs, median 5.01 ms, p99 9.91 ms, mean 5.05 ms")
        );
        // Longer holds land in the last, open bucket.
        h.record(Duration::from_secs(3));
        assert_eq!(h.quantile_us(1.0), 20_000);
    }
}
