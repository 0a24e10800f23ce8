//! The primary: it attaches backups (state and disks, then the log), holds outputs until the
//! backup holds the log that produced them (output commit, under a lease), heartbeats, and
//! races the arbiter when its backup dies. A backup gone live is a primary too (re-protection).

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftvm_log::{LogWriter, Record};
use ftvm_machine::board::INSTRUCTIONS_PER_MS;
use ftvm_machine::Machine;
use ftvm_runner::live::LinkError;
use ftvm_runner::status::StatusFile;
use ftvm_runner::{
    Backends, Devices, Ended, Event, Feeder, Gate, Link, LinkState, Options, Protect,
};

use crate::channel::{Channel, Msg, Psk, Role};
use crate::lease::{now_ns, Lease, Peer, Timing};
use crate::link::{CutOnDrop, LinkWriter, SendHalf};
use crate::transport::{self, Halves};
use crate::{Arbiter, PairConfig, PairError};

/// The primary's view of its backup.
pub struct PrimaryLink {
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

impl Link for PrimaryLink {
    fn check(&mut self) -> Result<LinkState, LinkError> {
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
            if self
                .arbiter
                .test_and_set(self.generation, "primary")
                .map_err(PairError::from)?
            {
                return Ok(LinkState::Unprotected);
            }
            let lapsed = now_ns().saturating_sub(self.lease.until()) / 1_000_000;
            return Err(Box::new(PairError::Lost(format!(
                "the backup won generation {} of the arbiter ({why}: this primary was stopped, stalled or cut off from it); this primary stops its guest. Its lease ran out {lapsed} ms ago and it released nothing since",
                self.generation
            ))));
        }
        Ok(LinkState::Protected(self.acked.load(Ordering::Relaxed)))
    }
    /// Whether outputs may leave now: the backup, which echoed a stamp of ours recently
    /// enough, cannot have gone live, and the link is whole.
    fn may_release(&self) -> bool {
        self.lease.holds() && !self.peer.broken() && !self.peer.fenced()
    }
    fn released(&self, count: u64) {
        self.released.store(count, Ordering::Relaxed);
    }
    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }
    fn hung_up(&self, limit: Duration) -> bool {
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
    fn too_far_ahead(&self, count: u64) -> bool {
        count.saturating_sub(self.replayed.load(Ordering::Relaxed)) > self.max_lag
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
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                let peer = s.peer_addr().map_or("?".to_string(), |a| a.to_string());
                match Channel::handshake(s, Role::Primary, &psk) {
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
                        let _ = wake.send(Event::Wake);
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
                        let _ = wake.send(Event::Wake);
                        return;
                    }
                }
            });
        }
        // Whatever fails from here on closes the link, so the backup does not wait for more.
        let mut cut = CutOnDrop(Some(out.clone()));
        let gone =
            || PairError::Protocol("the backup stopped receiving while its state was sent".into());
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
            let index =
                u32::try_from(index).map_err(|_| PairError::Protocol("too many disks".into()))?;
            let mut offset = 0u64;
            while offset < *len {
                let n = (*len - offset).min(DISK_PIECE as u64) as usize;
                f.read_exact_at(&mut piece[..n], offset)
                    .map_err(PairError::io("cannot read a disk"))?;
                if piece[..n].iter().any(|&b| b != 0) {
                    let data = piece[..n].to_vec();
                    if !out.send_with(|| Msg::Disk {
                        index,
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
