//! `ftvm primary` and `ftvm backup`: a backup replays the primary's input log in lockstep
//! behind it and goes live when the primary dies.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ftvm_host::HostEvent;
use ftvm_log::{LogReader, LogWriter, Next, Record};
use ftvm_machine::{DeviceOutput, DiskOp, DiskRequest, Machine, Output, RunExit};
use ftvm_replication::{Arbiter, Channel, Msg, Psk, Role};

use crate::{
    build_machine, emit_frame_arp, expected_devices, live, open_backends, Feeder, Gate, PairArgs,
    RunArgs,
};

/// Milliseconds since `epoch`, for lock-free liveness stamps.
fn ms_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// The liveness of the peer, shared by the threads of a link.
struct Liveness {
    epoch: Instant,
    last_heard: AtomicU64,
    dead: AtomicBool,
}

impl Liveness {
    fn new() -> Arc<Liveness> {
        Arc::new(Liveness {
            epoch: Instant::now(),
            last_heard: AtomicU64::new(0),
            dead: AtomicBool::new(false),
        })
    }
    fn heard(&self) {
        self.last_heard
            .store(ms_since(self.epoch), Ordering::Relaxed);
    }
    fn is_dead(&self, timeout_ms: u64) -> bool {
        self.dead.load(Ordering::Relaxed)
            || ms_since(self.epoch).saturating_sub(self.last_heard.load(Ordering::Relaxed))
                > timeout_ms
    }
}

/// The sending half of a link, shared by whoever sends: the runner (log bytes), the receiving
/// thread (acknowledgements) and the heartbeat thread. Each writes from its own thread, so
/// the output-commit path (log out, acknowledgement back) crosses no extra thread. A write
/// blocks at most the peer's dead timeout; a failed write marks the peer dead.
#[derive(Clone)]
struct SendHalf {
    tx: Arc<Mutex<Channel>>,
    live: Arc<Liveness>,
}

impl SendHalf {
    /// Start sending heartbeats (every `beat`, carrying `progress`) on `tx` while this half
    /// (or a clone of it) is kept.
    fn start(
        tx: Channel,
        beat: Duration,
        timeout_ms: u64,
        progress: Arc<AtomicU64>,
        live: Arc<Liveness>,
    ) -> Result<SendHalf> {
        tx.set_write_timeout(Some(Duration::from_millis(timeout_ms.max(1))))?;
        let half = SendHalf {
            tx: Arc::new(Mutex::new(tx)),
            live,
        };
        let weak = Arc::downgrade(&half.tx);
        let live = half.live.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(beat);
            let Some(tx) = weak.upgrade() else { return };
            let beat = SendHalf {
                tx,
                live: live.clone(),
            };
            if !beat.send(&Msg::Heartbeat(progress.load(Ordering::Relaxed))) {
                return;
            }
        });
        Ok(half)
    }

    /// Send `m`; false if the peer is (now) known dead.
    fn send(&self, m: &Msg) -> bool {
        if self.live.dead.load(Ordering::Relaxed) {
            return false;
        }
        let mut tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if tx.send(m).is_err() {
            self.live.dead.store(true, Ordering::Relaxed);
            tx.shutdown();
            return false;
        }
        true
    }
}

/// Log bytes for the backup: buffered, sent as one message on flush.
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
            // A dead backup is noticed by the runner through the link's liveness.
            self.out.send(&Msg::Log(std::mem::take(&mut self.buf)));
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
    live: Arc<Liveness>,
    timeout_ms: u64,
    arbiter: Arbiter,
}

impl PrimaryLink {
    pub fn check(&mut self) -> Result<LinkState> {
        if self.live.is_dead(self.timeout_ms) {
            if self.arbiter.test_and_set(self.generation, "primary")? {
                return Ok(LinkState::Unprotected);
            }
            bail!("the backup won the arbiter: this primary stops its guest");
        }
        Ok(LinkState::Protected(self.acked.load(Ordering::Relaxed)))
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
        while !self.live.dead.load(Ordering::Relaxed) {
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
    beat: Duration,
    timeout_ms: u64,
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
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                let peer = s.peer_addr().map_or("?".to_string(), |a| a.to_string());
                match Channel::handshake(s, Role::Primary, &psk) {
                    Ok(halves) => {
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
            beat: p.beat(),
            timeout_ms: p.timeout_ms(),
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
        (mut tx, rx): (Channel, Channel),
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
        tx.send(&Msg::Attach {
            generation,
            disks: files.iter().map(|(_, len)| *len).collect(),
        })?;
        // The backup heartbeats from its handshake on: listen to it while its state is sent.
        let live_state = Liveness::new();
        live_state.heard();
        let released = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(AtomicU64::new(0));
        let replayed = Arc::new(AtomicU64::new(m.count()));
        {
            let (acked, replayed, live_state) =
                (acked.clone(), replayed.clone(), live_state.clone());
            let wake = self.wake.clone();
            let mut rx = rx;
            std::thread::spawn(move || loop {
                match rx.recv() {
                    Ok(Msg::Ack(c)) => {
                        acked.fetch_max(c, Ordering::Relaxed);
                        live_state.heard();
                        // Held outputs may leave now: wake the runner if it waits.
                        let _ = wake.send(HostEvent::Wake);
                    }
                    Ok(Msg::Heartbeat(c)) => {
                        replayed.fetch_max(c, Ordering::Relaxed);
                        live_state.heard();
                    }
                    Ok(other) => {
                        tracing::warn!(?other, "unexpected message from the backup");
                        live_state.heard();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "replication channel closed");
                        live_state.dead.store(true, Ordering::Relaxed);
                        return;
                    }
                }
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
                    tx.send(&Msg::Disk {
                        index: index as u32,
                        offset,
                        data: piece[..n].to_vec(),
                    })?;
                    sent += n as u64;
                }
                offset += n as u64;
            }
        }
        let out = SendHalf::start(
            tx,
            self.beat,
            self.timeout_ms,
            released.clone(),
            live_state.clone(),
        )?;
        let header = Record::Header {
            count: m.count(),
            snapshot: m.save(),
            digest_every: self.digest_every,
        };
        let writer: Box<dyn Write> = Box::new(LinkWriter {
            buf: Vec::new(),
            out,
        });
        let log = LogWriter::new(writer, header)?;
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
                live: live_state,
                timeout_ms: self.timeout_ms,
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
            tap.send(frame);
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
/// up to the first bytes of the log, which are returned.
fn receive_state(
    rx: &mut Channel,
    a: &RunArgs,
    arbiter: &Arbiter,
) -> Result<(u64, Vec<u64>, Vec<u8>)> {
    use std::os::unix::fs::FileExt;
    let (generation, sizes) = match rx.recv()? {
        Msg::Attach { generation, disks } => (generation, disks),
        other => bail!("the primary sent {} before its state", msg_name(&other)),
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
        match rx.recv()? {
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
            Msg::Log(first) => {
                for (f, _) in &files {
                    f.sync_data().context("writing this backup's disk copy")?;
                }
                eprintln!(
                    "ftvm: received generation {generation}: {} KiB of disk in {} ms",
                    got >> 10,
                    t0.elapsed().as_millis()
                );
                return Ok((generation, sizes, first));
            }
            Msg::Heartbeat(_) => {}
            other => bail!("the primary sent {} during its state", msg_name(&other)),
        }
    }
}

fn msg_name(m: &Msg) -> &'static str {
    match m {
        Msg::Log(_) => "log bytes",
        Msg::Ack(_) => "an acknowledgement",
        Msg::Heartbeat(_) => "a heartbeat",
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
    let (tx_half, mut rx_half) = Channel::handshake(stream, Role::Backup, &psk)?;
    eprintln!("ftvm: backup connected to {primary_addr}");
    let live_state = Liveness::new();
    // Heartbeats (from now on, so the primary knows this side is there while it sends its
    // state) tell the primary how far this side has replayed.
    let replayed = Arc::new(AtomicU64::new(0));
    let out = SendHalf::start(
        tx_half,
        p.beat(),
        p.timeout_ms(),
        replayed.clone(),
        live_state.clone(),
    )?;
    let (generation, disk_sizes, first_log) = receive_state(&mut rx_half, &a, &arbiter)?;
    live_state.heard();
    let (rec_tx, rec_rx) = mpsc::channel::<FromPrimary>();
    // The count of the newest record received (the primary's progress as this side knows it).
    let latest = Arc::new(AtomicU64::new(0));
    {
        let live_state = live_state.clone();
        let latest = latest.clone();
        std::thread::spawn(move || {
            let mut reader: Option<LogReader<Incoming>> = None;
            let mut pending = Incoming::default();
            let mut first = Some(Msg::Log(first_log));
            loop {
                let msg = match first.take().map_or_else(|| rx_half.recv(), Ok) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "replication channel closed");
                        let _ = rec_tx.send(FromPrimary::Gone);
                        return;
                    }
                };
                live_state.heard();
                match msg {
                    Msg::Log(bytes) => {
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
                                match LogReader::new(std::mem::take(&mut pending)) {
                                    Ok(r) => reader.insert(r),
                                    Err(e) => {
                                        tracing::error!(error = %e, "bad log stream");
                                        let _ = rec_tx.send(FromPrimary::Gone);
                                        return;
                                    }
                                }
                            }
                        };
                        let mut last = None;
                        loop {
                            match r.next_record() {
                                Ok(Next::Record(rec)) => {
                                    last = Some(rec.count());
                                    latest.fetch_max(rec.count(), Ordering::Relaxed);
                                    if rec_tx.send(FromPrimary::Record(rec)).is_err() {
                                        return;
                                    }
                                }
                                Ok(_) => break,
                                Err(e) => {
                                    tracing::error!(error = %e, "bad log stream");
                                    let _ = rec_tx.send(FromPrimary::Gone);
                                    return;
                                }
                            }
                        }
                        // The log is held here up to `last`: acknowledge on receipt.
                        if let Some(c) = last {
                            out.send(&Msg::Ack(c));
                        }
                    }
                    Msg::Heartbeat(released) => {
                        let _ = rec_tx.send(FromPrimary::Released(released));
                    }
                    other => {
                        tracing::error!("the primary sent {} in its log stream", msg_name(&other));
                        let _ = rec_tx.send(FromPrimary::Gone);
                        return;
                    }
                }
            }
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
    let timeout = p.timeout_ms();
    let mut gone = false;
    let mut status = p.status_file.as_deref().map(StatusFile::new);
    loop {
        let msg = match rec_rx.recv_timeout(p.beat()) {
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
        if gone || live_state.is_dead(timeout) {
            break;
        }
    }
    // The primary is gone. Everything received is in the queue: replay it all.
    let detected = Instant::now();
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
    if !arbiter.test_and_set(generation, "backup")? {
        bail!("the primary won the arbiter: this backup stops");
    }
    for f in disks.values() {
        let _ = f.sync_data();
    }
    drop(disks);
    eprintln!(
        "ftvm: primary lost; backup live at instruction {} ({} ms after detection)",
        m.count(),
        detected.elapsed().as_millis()
    );
    let (events_tx, events) = mpsc::channel::<HostEvent>();
    // The dead primary's TAP may take a moment to be released on a shared host: retry briefly.
    let t_open = Instant::now();
    let backends = loop {
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
            tap.send(frame);
        }
    }
    for (_, out) in unreleased.drain(..) {
        if let Output::Device(DeviceOutput::Frame { slot, frame }) = out {
            if let Some(t) = backends.taps.get(&slot) {
                t.send(frame);
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
