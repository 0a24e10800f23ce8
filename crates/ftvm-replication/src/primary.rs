//! The primary: it attaches backups (state and disks, then the log), holds outputs until the
//! backup holds the log that produced them (output commit, under a lease), heartbeats, and
//! races the arbiter when its backup dies. A backup gone live is a primary too (re-protection).

use std::collections::VecDeque;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftvm_log::{LogWriter, Record};
use ftvm_machine::board::INSTRUCTIONS_PER_MS;
use ftvm_machine::Machine;
use ftvm_runner::live::{Held, LinkError};
use ftvm_runner::status::StatusFile;
use ftvm_runner::{
    Backends, Devices, Ended, Event, Feeder, Gate, Link, LinkState, Options, Protect,
};

use crate::channel::{Channel, Hello, Msg, Psk, Role};
use crate::lease::{now_ns, Timing};
use crate::link::{CloseOnDrop, LinkWriter, SendHalf};
use crate::protocol::{PrimarySide, Received, Verdict};
use crate::transport::{self, Halves};
use crate::{Arbiter, PairConfig, PairError};

/// The primary's view of its backup: the protocol state (under the sending lock), the way to
/// the arbiter, and how far the backup's replay may trail.
pub struct PrimaryLink {
    out: SendHalf<PrimarySide>,
    /// How far (in instructions) the backup's replay may trail before the guest waits.
    max_lag: u64,
    arbiter: Arbiter,
}

impl Link for PrimaryLink {
    fn check(&mut self) -> Result<LinkState, LinkError> {
        let now = now_ns();
        // A dead backup makes the side cut every tie first (the connection closes under the
        // sending lock); then it races the arbiter.
        let (verdict, why, lease_until) = self.out.cut_if(|s| {
            let why = if s.broken() {
                "its link broke".to_string()
            } else {
                format!(
                    "nothing heard for {} ms",
                    now.saturating_sub(s.last_heard()) / 1_000_000
                )
            };
            let v = s.check(now);
            ((v, why, s.lease_until()), matches!(v, Verdict::Race { .. }))
        });
        match verdict {
            Verdict::Protected { acked } => Ok(LinkState::Protected(acked)),
            Verdict::Race { generation } => {
                if self
                    .arbiter
                    .test_and_set(generation, "primary")
                    .map_err(PairError::from)?
                {
                    return Ok(LinkState::Unprotected);
                }
                let lapsed = now_ns().saturating_sub(lease_until) / 1_000_000;
                Err(Box::new(PairError::Lost(format!(
                    "the backup won generation {generation} of the arbiter ({why}: this primary was stopped, stalled or cut off from it); this primary stops its guest. Its lease ran out {lapsed} ms ago and it released nothing since"
                ))))
            }
        }
    }
    fn release(&self, held: &mut VecDeque<Held>, emit: &mut dyn FnMut(Held)) {
        // Under the sending lock: the lease is checked right before each output is written.
        self.out.with(|s| s.release(now_ns, held, |h| h.0, emit));
    }
    fn acked(&self) -> u64 {
        self.out.with(|s| s.acked())
    }
    fn hung_up(&self, limit: Duration) -> bool {
        let t0 = Instant::now();
        while !self.out.with(|s| s.broken()) {
            if t0.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
    /// Whether the guest at `count` is so far ahead of the backup's replay that a failover
    /// would pause longer than --max-lag-ms: it then waits for the backup.
    fn too_far_ahead(&self, count: u64) -> bool {
        count.saturating_sub(self.out.with(|s| s.replayed())) > self.max_lag
    }
}

/// Marks an attach finished when dropped, however it ends.
struct Finished(Arc<AtomicBool>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Disk contents travel in pieces of this size; pieces that are all zero are not sent.
const DISK_PIECE: usize = 1 << 20;

/// What a side needs to protect its guest with a backup: the backups that connect, and
/// how to bring one up to date (the guest's state, the disks' contents, then the log).
pub struct Protector {
    incoming: Receiver<Halves>,
    /// A backup that connected while another protected the guest: it attaches next.
    standby: Option<Halves>,
    /// The generation the next backup starts.
    next_generation: u64,
    arbiter: Arbiter,
    disks: Vec<PathBuf>,
    timing: Timing,
    digest_every: u64,
    max_lag: u64,
    wake: Sender<Event>,
}

impl Protector {
    /// Accept backups on `listen` (authenticated with the pair's key) from now on; the first
    /// one starts generation `next_generation`.
    pub fn start(
        listen: &str,
        cfg: &PairConfig,
        next_generation: u64,
        devices: &Devices,
        wake: Sender<Event>,
    ) -> Result<Protector, PairError> {
        let listener = TcpListener::bind(listen)
            .map_err(PairError::io(format!("cannot listen on {listen}")))?;
        let (tx, incoming) = mpsc::channel();
        let waker = wake.clone();
        let psk: Psk = cfg.psk.clone();
        let hello = Hello::new(Role::Primary, cfg.mem_bytes, devices.layout());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                let peer = s.peer_addr().map_or("?".to_string(), |a| a.to_string());
                // Authenticated, the same protocol, and the same machine (memory, devices).
                let halves = Channel::handshake(s, &psk, &hello).and_then(|(out, inc, theirs)| {
                    hello
                        .check_compatible(&theirs)
                        .inspect_err(|_| out.shutdown())?;
                    Ok((out, inc))
                });
                match halves {
                    Ok(halves) => {
                        eprintln!("ftvm: backup {peer} connected");
                        if tx.send(transport::boxed(halves)).is_err() {
                            return;
                        }
                        let _ = waker.send(Event::Wake);
                    }
                    Err(e) => eprintln!("ftvm: refused {peer}: {e}"),
                }
            }
        });
        Ok(Protector::new(
            incoming,
            cfg,
            next_generation,
            devices,
            wake,
        ))
    }

    /// Protect with the backups that arrive on `incoming` (over any transport).
    pub fn new(
        incoming: Receiver<Halves>,
        cfg: &PairConfig,
        next_generation: u64,
        devices: &Devices,
        wake: Sender<Event>,
    ) -> Protector {
        Protector {
            incoming,
            standby: None,
            next_generation,
            arbiter: cfg.arbiter.clone(),
            disks: devices.disks.clone(),
            timing: cfg.timing,
            digest_every: cfg.digest_every,
            max_lag: cfg.max_lag_ms.saturating_mul(INSTRUCTIONS_PER_MS),
            wake,
        }
    }

    /// Block until a backup connects.
    fn wait(&mut self) -> Result<(), PairError> {
        if self.standby.is_none() {
            let halves = self
                .incoming
                .recv()
                .map_err(|_| PairError::Protocol("the listener for backups stopped".into()))?;
            self.standby = Some(halves);
        }
        Ok(())
    }

    /// Bring the waiting backup up to date with the machine as it is now (no disk request may
    /// be in flight): the generation, the disks' contents, then a log whose header is the
    /// machine's state. Returns the link to the backup and the log to write the inputs to.
    pub fn attach_backup(
        &mut self,
        m: &Machine,
    ) -> Result<(PrimaryLink, LogWriter<Box<dyn Write>>), PairError> {
        let Some((mut tx, mut rx)) = self.standby.take() else {
            return Err(PairError::Protocol("no backup waits to attach".into()));
        };
        let generation = self.next_generation;
        if self.arbiter.taken(generation)? {
            return Err(PairError::Protocol(format!(
                "generation {generation} of the arbiter was already won: refusing the backup"
            )));
        }
        let t0 = Instant::now();
        let mut files = Vec::new();
        for path in &self.disks {
            let what = format!("cannot read disk {}", path.display());
            let f = std::fs::File::open(path).map_err(PairError::io(what.clone()))?;
            let len = f.metadata().map_err(PairError::io(what))?.len();
            files.push((f, len));
        }
        // Every message of this link belongs to this generation; the backup's, from before it
        // learned it, are dropped.
        tx.set_generation(generation);
        rx.set_generation(generation);
        // While the state is sent a write may block longer (large writes to a busy backup),
        // but never without bound: a backup that stops reading fails the attach.
        let side = PrimarySide::new(generation, self.timing, now_ns(), m.count());
        let out = SendHalf::new(tx, self.timing.stall(), side)?;
        // While the state is sent, a backup that goes silent (frozen, cut off) for the stall
        // limit fails the attach, even if its kernel goes on taking bytes in (a write that
        // progresses now and then never times out): a watchdog closes the connection, which
        // ends a send that blocks.
        let heard = Arc::new(AtomicU64::new(now_ns()));
        let attaching = Arc::new(AtomicBool::new(true));
        let _done = Finished(attaching.clone());
        {
            let (heard, attaching) = (heard.clone(), attaching.clone());
            let close = out.closer()?;
            let stall = u64::try_from(self.timing.stall().as_nanos()).unwrap_or(u64::MAX);
            let beat = self.timing.beat;
            std::thread::spawn(move || {
                while attaching.load(Ordering::SeqCst) {
                    std::thread::sleep(beat);
                    let silent = now_ns().saturating_sub(heard.load(Ordering::SeqCst));
                    if silent > stall && attaching.load(Ordering::SeqCst) {
                        close();
                        return;
                    }
                }
            });
        }
        {
            let out = out.clone();
            let wake = self.wake.clone();
            std::thread::spawn(move || loop {
                let msg = rx.recv();
                let got = match msg {
                    Ok(msg) => {
                        heard.store(now_ns(), Ordering::SeqCst);
                        out.with(|s| s.receive(now_ns(), &msg))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "replication channel closed");
                        out.broke();
                        let _ = wake.send(Event::Wake);
                        return;
                    }
                };
                match got {
                    // Held outputs may leave now: wake the runner if it waits.
                    Ok(Received::Acked(_)) => {
                        let _ = wake.send(Event::Wake);
                    }
                    Ok(Received::Ignored) => {
                        // This side cut the link: nothing of the backup's counts any more.
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "the backup broke the protocol");
                        out.broke();
                        let _ = wake.send(Event::Wake);
                        return;
                    }
                }
            });
        }
        // Whatever fails from here on closes the link, so the backup does not wait for more.
        let mut cut = CloseOnDrop(Some(out.clone()));
        let gone =
            || PairError::Protocol("the backup stopped receiving while its state was sent".into());
        let attach = Msg::Attach {
            generation,
            disks: files.iter().map(|(_, len)| *len).collect(),
        };
        if !out.send_with(|_| Some(attach)) {
            return Err(gone());
        }
        // Heartbeats from now on (the backup takes them with the disks), each stamped.
        out.heartbeats(self.timing.beat, |s, now| s.heartbeat(now));
        let mut sent = 0u64;
        let mut piece = vec![0u8; DISK_PIECE];
        for (index, (f, len)) in files.iter().enumerate() {
            let index =
                u32::try_from(index).map_err(|_| PairError::Protocol("too many disks".into()))?;
            let mut offset = 0u64;
            while offset < *len {
                let n = (*len - offset).min(DISK_PIECE as u64) as usize;
                f.read_exact_at(&mut piece[..n], offset)
                    .map_err(PairError::io("cannot read a disk"))?;
                if piece[..n].iter().any(|&b| b != 0) {
                    let data = piece[..n].to_vec();
                    if !out.send_with(|_| {
                        Some(Msg::Disk {
                            index,
                            offset,
                            data,
                        })
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
        if out.with(|s| s.is_dead(now_ns())) {
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
                out,
                max_lag: self.max_lag,
                arbiter: self.arbiter.clone(),
            },
            log,
        ))
    }
}

impl Protect for Protector {
    /// One backup may wait while another protects the guest; it attaches when that one is
    /// gone. More are refused.
    fn poll(&mut self) -> bool {
        while let Ok(backup) = self.incoming.try_recv() {
            if self.standby.is_none() {
                self.standby = Some(backup);
            } else {
                eprintln!("\r\nftvm: refused a backup: another one already waits\r");
                backup.0.shutdown();
            }
        }
        self.standby.is_some()
    }

    fn attach(
        &mut self,
        m: &Machine,
    ) -> Result<(Box<dyn Link>, LogWriter<Box<dyn Write>>), LinkError> {
        let (link, log) = self.attach_backup(m)?;
        Ok((Box::new(link), log))
    }

    fn digest_every(&self) -> u64 {
        self.digest_every
    }
}

/// Run `m` as the primary of a pair: wait for a backup to attach, then run live with output
/// commit; later backups re-protect the guest when this one dies.
#[allow(clippy::too_many_arguments)]
pub fn run(
    mut protect: Protector,
    m: Machine,
    backends: Backends,
    devices: &Devices,
    cfg: &PairConfig,
    opts: &Options,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
) -> Result<Ended, PairError> {
    let (link, log) = loop {
        protect.wait()?;
        match protect.attach_backup(&m) {
            Ok(attached) => break attached,
            Err(e) => eprintln!("ftvm: the backup could not attach: {e}"),
        }
    };
    // Tell the network where the guest is now (a previous incarnation may have been elsewhere).
    backends.announce(devices);
    let feed = Feeder::logged(log, cfg.digest_every, m.count(), cfg.epoch);
    let gate = Gate::open()
        .with_status(cfg.status_file.as_deref().map(StatusFile::new))
        .with_link(Box::new(link))
        .with_protector(Box::new(protect));
    Ok(ftvm_runner::live(
        opts,
        m,
        backends,
        events_tx,
        events,
        feed,
        gate,
        Vec::new(),
    )?)
}
