//! The backup: it receives the primary's state and disks, follows its log in lockstep (every
//! record through `ftvm_runner::follow`, the same path as a replay), acknowledges what it
//! holds, and goes live when the primary dies and it wins the arbiter.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftvm_host::HostEvent;
use ftvm_log::kept::KeptLog;
use ftvm_log::{LogReader, Next, Record};
use ftvm_machine::{DeviceOutput, DiskOp, DiskRequest, Input, Machine, Output};
use ftvm_runner::follow::{self, Applied, Sink};
use ftvm_runner::recheck::{Rechecker, Request, What};
use ftvm_runner::status::StatusFile;
use ftvm_runner::telemetry::Role as Member;
use ftvm_runner::vote::{output_hash, Chain};
use ftvm_runner::FollowError;
use ftvm_runner::{Backends, Devices, Ended, Event, Feeder, Gate, Options};

use crate::channel::{
    Channel, ChannelError, Hello, Msg, Role, VERDICT_REJOIN, VERDICT_TAKE_OVER, VOTE_DIGEST,
    VOTE_OUTPUTS, VOTE_RECHECKED_DIGEST, VOTE_RECHECKED_OUTPUTS,
};
use crate::lease::{now_ns, sleep_until};
use crate::link::SendHalf;
use crate::primary::Protector;
use crate::protocol::{msg_name, BackupSide, Received};
use crate::transport::{self, Halves, Incoming as Receive};
use crate::wire::{ram_pages, PAGE};
use crate::{PairConfig, PairError};

/// Log bytes as they arrive, for a LogReader that follows the stream.
#[derive(Default)]
struct Incoming(VecDeque<u8>);

impl std::io::Read for Incoming {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::io::Read::read(&mut self.0, buf)
    }
}

enum FromPrimary {
    Record(Record),
    Released(u64),
    /// The primary stopped its guest at `count` and hands it over (live migration); with
    /// post-copy, the pages still missing, which arrive on `pages`.
    HandOver {
        count: u64,
        released: u64,
        missing: Vec<u8>,
        pages: mpsc::Receiver<(u64, Vec<u8>)>,
    },
    /// After the hand-over: a frame for the guest that reached the primary.
    Relay {
        slot: usize,
        frame: Vec<u8>,
    },
    /// The group found this replica faulty (N-modular redundancy), or the leader (two
    /// replicas, after a re-execution: [`VERDICT_TAKE_OVER`]).
    Verdict {
        count: u64,
        how: u8,
        action: u8,
    },
    /// Two replicas disagree: re-execute from `from` to `to` and vote the result.
    Recheck {
        from: u64,
        to: u64,
        how: u8,
    },
    Gone,
}

/// Wait for the `Attach` that starts this backup's generation. It may be long in coming: this
/// backup waits while another one protects the guest (and sends nothing meanwhile).
fn wait_attach(rx: &mut dyn Receive) -> Result<(u64, Vec<u64>), PairError> {
    match rx.recv() {
        Ok(Msg::Attach { generation, disks }) => Ok((generation, disks)),
        Ok(other) => Err(PairError::Protocol(format!(
            "the primary sent {} before its state",
            msg_name(&other)
        ))),
        Err(e) => Err(PairError::Protocol(format!(
            "the primary closed the link: {e}"
        ))),
    }
}

/// Receive the primary's disks (written over this side's images) and RAM, up to the first
/// bytes of the log; returns those bytes and the RAM. A primary that goes silent for the stall
/// limit fails the attach: this side never had the guest, so it stops.
fn receive_state(
    rx: &mut dyn Receive,
    out: &SendHalf<BackupSide>,
    devices: &Devices,
    cfg: &PairConfig,
    (generation, sizes): (u64, &[u64]),
) -> Result<(Vec<u8>, Vec<u8>), PairError> {
    let (arbiter, timing) = (&cfg.arbiter, cfg.timing);
    eprintln!(
        "ftvm: attaching as generation {generation}: receiving the primary's disks and state"
    );
    rx.set_read_timeout(Some(timing.stall()))?;
    let mut recv = || -> Result<Msg, PairError> {
        match rx.recv() {
            Ok(m) => {
                out.with(|s| s.receive(now_ns(), &m))
                    .map_err(|e| PairError::Protocol(e.to_string()))?;
                Ok(m)
            }
            Err(ChannelError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(PairError::Protocol(format!(
                    "the primary went silent for {} ms while it sent its state (stopped, stalled or cut off): this backup never had the guest and stops",
                    timing.stall().as_millis()
                )))
            }
            Err(e) => Err(PairError::Protocol(format!(
                "the primary's state did not arrive whole: {e}"
            ))),
        }
    };
    if sizes.len() != devices.disks.len() {
        return Err(PairError::Protocol(format!(
            "the primary has {} disks and this backup {}: give both sides the same --disk and --net options, in the same order",
            sizes.len(),
            devices.disks.len()
        )));
    }
    if arbiter.taken(generation)? {
        return Err(PairError::Protocol(format!(
            "generation {generation} of the arbiter was already won: this backup comes too late"
        )));
    }
    let mut files = Vec::new();
    for (path, &len) in devices.disks.iter().zip(sizes) {
        let what = format!("cannot write disk {}", path.display());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(PairError::io(what.clone()))?;
        f.set_len(len).map_err(PairError::io(what))?;
        files.push((f, len));
    }
    // The guest's RAM (its size agreed in the hellos), zero until pages arrive.
    let mem = usize::try_from(cfg.mem_bytes)
        .ok()
        .filter(|&n| ftvm_machine::ram_size_ok(n as u64))
        .ok_or_else(|| PairError::Protocol(format!("memory size {}", cfg.mem_bytes)))?;
    let mut ram = ftvm_machine::board::zeroed_ram(mem).ok_or_else(|| {
        PairError::Protocol(format!(
            "cannot allocate {} MiB for the guest's RAM",
            mem >> 20
        ))
    })?;
    let t0 = Instant::now();
    let mut got = 0u64;
    let mut got_ram = 0u64;
    loop {
        match recv()? {
            Msg::Disk {
                index,
                offset,
                data,
            } => {
                let Some((f, len)) = files.get(index as usize) else {
                    return Err(PairError::Protocol(format!(
                        "the primary sent contents of disk {index}, which it does not have"
                    )));
                };
                if offset.saturating_add(data.len() as u64) > *len {
                    return Err(PairError::Protocol(format!(
                        "the primary sent disk contents beyond the end of disk {index}"
                    )));
                }
                f.write_all_at(&data, offset)
                    .map_err(PairError::io("writing this backup's disk copy"))?;
                got += data.len() as u64;
            }
            Msg::Ram { pages, data } => {
                // The decoder checked that `data` holds one page per page number that is not
                // marked as zeros.
                for (p, bytes) in ram_pages(&pages, &data) {
                    let dst = usize::try_from(p)
                        .ok()
                        .and_then(|p| p.checked_mul(PAGE))
                        .and_then(|at| ram.get_mut(at..at.checked_add(PAGE)?))
                        .ok_or_else(|| {
                            PairError::Protocol(format!(
                                "the primary sent RAM page {p}, beyond its {} MiB of RAM",
                                mem >> 20
                            ))
                        })?;
                    match bytes {
                        Some(b) => dst.copy_from_slice(b),
                        None => dst.fill(0),
                    }
                }
                got_ram += data.len() as u64;
            }
            Msg::Log { bytes, .. } => {
                for (f, _) in &files {
                    f.sync_data()
                        .map_err(PairError::io("writing this backup's disk copy"))?;
                }
                eprintln!(
                    "ftvm: received generation {generation}: {} KiB of disk and {} KiB of RAM in {} ms",
                    got >> 10,
                    got_ram >> 10,
                    t0.elapsed().as_millis()
                );
                return Ok((bytes, ram));
            }
            Msg::Heartbeat { .. } => {}
            other => {
                return Err(PairError::Protocol(format!(
                    "the primary sent {} during its state",
                    msg_name(&other)
                )))
            }
        }
    }
}

/// The RAM pages a post-copy destination lacks come over the link: asked for when its guest
/// touches one, pushed by the source otherwise.
struct LinkPages {
    out: SendHalf<BackupSide>,
    pages: mpsc::Receiver<(u64, Vec<u8>)>,
    /// A source silent this long with pages missing is lost.
    limit: Duration,
}

impl ftvm_machine::postcopy::PageSource for LinkPages {
    fn request(&mut self, page: u64) {
        self.out.send_with(|s| s.page_request(vec![page]));
    }
    fn next(&mut self, wait: bool) -> Result<Option<(u64, Vec<u8>)>, String> {
        let got = if wait {
            self.pages.recv_timeout(self.limit)
        } else {
            self.pages.try_recv().map_err(|e| match e {
                mpsc::TryRecvError::Empty => mpsc::RecvTimeoutError::Timeout,
                mpsc::TryRecvError::Disconnected => mpsc::RecvTimeoutError::Disconnected,
            })
        };
        match got {
            Ok(p) => Ok(Some(p)),
            Err(mpsc::RecvTimeoutError::Timeout) if !wait => Ok(None),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "the source sent no RAM page for {} s",
                self.limit.as_secs()
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err("the source closed the link".to_string())
            }
        }
    }
    fn lost(&mut self, why: &str) -> ! {
        // Part of the guest's RAM is only at the source: it cannot run on anywhere.
        eprintln!(
            "ftvm: error: post-copy failed ({why}) with RAM pages still missing: the guest is lost; stopping"
        );
        std::process::exit(1)
    }
}

/// What the backup's replay does with the machine's effects: disk writes go to this side's
/// copies (the primary made the same writes on its own), outputs wait until the primary has
/// released them (or until this side goes live and produces them again).
struct Follower {
    disks: HashMap<usize, std::fs::File>,
    /// Disk requests the guest made whose completion is not in the log yet.
    outstanding: HashMap<(usize, u64), DiskRequest>,
    /// Outputs of the replay the primary may not have released yet.
    unreleased: VecDeque<(u64, Output)>,
    /// N-modular redundancy: the chain of every output's hash since this side attached.
    chain: Option<Chain>,
    /// N-modular redundancy: a disk read whose data in the leader's log differs from this
    /// replica's copy (a faulty leader would pass its error on through its reads).
    disk_differs: Option<String>,
    /// Reads in flight that a later write overlaps (the leader's may have read either data).
    overlapped: std::collections::HashSet<(usize, u64)>,
}

impl Sink for Follower {
    fn output(&mut self, _: &Machine, count: u64, out: Output) -> std::io::Result<()> {
        if let Some(chain) = &mut self.chain {
            chain.add(&output_hash(&out));
        }
        match out {
            Output::Device(DeviceOutput::Disk(req)) => {
                if let (DiskOp::Write { sector, data }, Some(f)) =
                    (&req.op, self.disks.get(&req.slot))
                {
                    f.write_all_at(data, sector.saturating_mul(512))?;
                    if self.chain.is_some() {
                        let end = sector.saturating_add(data.len() as u64 / 512);
                        for ((slot, id), r) in &self.outstanding {
                            if let DiskOp::Read { sector: s, len } = &r.op {
                                let (s, e) = (*s, s.saturating_add(*len as u64 / 512));
                                if *slot == req.slot && s < end && *sector < e {
                                    self.overlapped.insert((*slot, *id));
                                }
                            }
                        }
                    }
                }
                self.outstanding.insert((req.slot, req.id), req);
            }
            out => self.unreleased.push_back((count, out)),
        }
        Ok(())
    }

    fn chunk(&self) -> u64 {
        REPLAY_CHUNK
    }

    fn between(&mut self) {
        // The receiving thread, woken by a message meanwhile, runs now (it does not preempt
        // the replay: see `receive_log`), and acknowledges it.
        std::thread::yield_now();
    }

    fn input(&mut self, input: &Input) {
        if let Input::DiskDone { slot, id, ok, data } = input {
            let req = self.outstanding.remove(&(*slot, *id));
            let overlapped = self.overlapped.remove(&(*slot, *id));
            if let (Some(_), true, false, Some(req)) = (&self.chain, *ok, overlapped, req) {
                if let (DiskOp::Read { sector, len }, Some(f)) = (req.op, self.disks.get(slot)) {
                    // This copy holds every write replayed so far, as the leader's held its
                    // own when it read.
                    let mut mine = vec![0u8; len.min(data.len())];
                    let same = mine.len() == data.len()
                        && f.read_exact_at(&mut mine, sector.saturating_mul(512))
                            .is_ok()
                        && mine == *data;
                    if !same && self.disk_differs.is_none() {
                        self.disk_differs = Some(format!(
                            "the leader read other data from disk {slot} at sector {sector} than this replica's copy holds"
                        ));
                    }
                }
            }
        }
    }
}

/// The replay runs at most about this many instructions at a time (a fraction of a
/// millisecond), yielding its core in between to the receiving thread.
const REPLAY_CHUNK: u64 = 20_000;

/// The next thing from the primary, within `limit`. While nothing is there, the replay keeps
/// its core for up to `spin` (`--replay-spin-us`), yielding it to the receiving thread, then
/// sleeps: a message that finds the core busy wakes that thread without an interrupt to this
/// core, which its sender would pay for (some 15 us of the primary's CPU a message on the
/// benchmark machine, a virtual one).
fn next_from_primary(
    records: &Receiver<FromPrimary>,
    spin: Duration,
    limit: Duration,
) -> Result<FromPrimary, mpsc::RecvTimeoutError> {
    let t0 = Instant::now();
    loop {
        match records.try_recv() {
            Ok(m) => return Ok(m),
            Err(mpsc::TryRecvError::Disconnected) => {
                return Err(mpsc::RecvTimeoutError::Disconnected)
            }
            Err(mpsc::TryRecvError::Empty) => {}
        }
        let spun = t0.elapsed();
        if spun >= spin.min(limit) {
            return records.recv_timeout(limit.saturating_sub(spun));
        }
        std::thread::yield_now();
    }
}

/// The error that ends this replica's follow when its group found it faulty at `count`.
fn verdict(count: u64, how: u8, action: u8, injected: Option<(u64, Instant)>) -> PairError {
    let what = if how == VOTE_DIGEST {
        "its state digest"
    } else {
        "its outputs"
    };
    let latency = injected.map_or(String::new(), |(at, t)| {
        format!(
            "; its fault was injected at instruction {at}: detected {} instructions and {:.1} ms later",
            count.saturating_sub(at),
            t.elapsed().as_secs_f64() * 1e3
        )
    });
    let why = format!(
        "this replica was found faulty by the group at instruction {count} ({what} differ from the leader's){latency}"
    );
    if action == VERDICT_REJOIN {
        return PairError::Outvoted { why, to: None };
    }
    PairError::Lost(format!(
        "{why}; with two replicas neither can be trusted: the guest stops"
    ))
}

/// Follow the primary at `primary_addr` in lockstep; go live when it dies (and, with `listen`,
/// accept a new backup there). Returns when the guest stops, on either side. A replica of a
/// group (N-modular redundancy) that the others outvote attaches again, from the leader's
/// state.
pub fn run(
    primary_addr: &str,
    listen: Option<&str>,
    devices: &Devices,
    cfg: &PairConfig,
    opts: &Options,
) -> Result<Ended, PairError> {
    let mut leader = primary_addr.to_string();
    loop {
        match connect_and_follow(&leader, listen, devices, cfg, opts) {
            Err(PairError::Outvoted { why, to }) => {
                if let Some(to) = to {
                    leader = to;
                }
                eprintln!("ftvm: {why}; attaching again to {leader}");
            }
            // This replica went live and led the group, which then found it faulty: it
            // attaches to the follower that took the guest over from it.
            Err(e) if e.replaced().is_some() => {
                let generation = e.replaced().unwrap_or_default();
                eprintln!("ftvm: {e}");
                let limit = Duration::from_secs(30);
                let Some(to) = crate::group_leader(&cfg.arbiter, generation, limit) else {
                    return Err(e);
                };
                eprintln!("ftvm: the replica that took the guest over leads from {to}: this replica attaches to it");
                leader = to;
            }
            other => return other,
        }
    }
}

fn connect_and_follow(
    primary_addr: &str,
    listen: Option<&str>,
    devices: &Devices,
    cfg: &PairConfig,
    opts: &Options,
) -> Result<Ended, PairError> {
    let t0 = Instant::now();
    let stream = loop {
        match TcpStream::connect(primary_addr) {
            Ok(s) => break s,
            Err(e) if t0.elapsed() < Duration::from_secs(30) => {
                tracing::debug!(error = %e, "primary not there yet");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(PairError::Io {
                    what: format!("cannot reach the primary at {primary_addr}"),
                    source: e,
                })
            }
        }
    };
    // The machine description (memory, devices) is not wired yet: 0 and empty.
    let hello = Hello::new(Role::Backup, cfg.mem_bytes, cfg.layout(devices));
    let (out, inc, theirs) = Channel::handshake(stream, &cfg.psk, &hello)?;
    // Refused on both sides, each with the differences named.
    hello.check_compatible(&theirs)?;
    let halves = transport::boxed((out, inc));
    eprintln!("ftvm: backup connected to {primary_addr}");
    follow_primary(halves, listen, devices, cfg, opts)
}

/// Follow the primary at the other end of `halves` (see [`run`]).
pub fn follow_primary(
    (tx_half, mut rx_half): Halves,
    listen: Option<&str>,
    devices: &Devices,
    cfg: &PairConfig,
    opts: &Options,
) -> Result<Ended, PairError> {
    let timing = cfg.timing;
    let arbiter = &cfg.arbiter;
    let (generation, disk_sizes) = wait_attach(rx_half.as_mut())?;
    // Every message of this side belongs to the generation; the primary's of older ones are
    // dropped.
    let mut tx_half = tx_half;
    tx_half.set_generation(generation);
    // The newest generation the primary stamped (a group's leader moves its members on to
    // the next one when it drops a member): the one this side races for.
    let newest = Arc::new(AtomicU64::new(generation));
    let out = SendHalf::new(tx_half, timing.dead, BackupSide::new(timing, now_ns()))?;
    // Heartbeats (from the attach on, so the primary knows this side is there while it sends
    // its state; not while this side waits its turn, unread) tell the primary how far this side
    // has replayed, and echo its newest stamp.
    out.heartbeats(timing.beat, |s, _| s.heartbeat());
    // Hold the guest's TAP devices open from the attach on, while the state arrives and while
    // following (this side writes nothing to them and drops what they receive), so that their
    // bridge ports are up and forwarding when it goes live: a TAP first opened at the takeover
    // can take a few hundred ms to pass frames, and a client's retransmission lost meanwhile
    // costs it another timeout (a pre-copy migration goes live right after the state). On a
    // host where the primary holds the same TAP they open only at the takeover. User-mode
    // networks (passt) always open at the takeover: their forwarded host ports may be the
    // primary's own on this host.
    let (events_tx, events) = ftvm_runner::events();
    let mut early_taps = devices.open_taps(&events_tx).ok();
    let (first_log, ram) = receive_state(
        rx_half.as_mut(),
        &out,
        devices,
        cfg,
        (generation, &disk_sizes),
    )?;
    // From here on the primary's liveness is judged by its heartbeats.
    rx_half.set_read_timeout(None)?;
    let (rec_tx, rec_rx) = mpsc::channel::<FromPrimary>();
    // The count of the newest record received (the primary's progress as this side knows it).
    let latest = Arc::new(AtomicU64::new(0));
    {
        let (latest, out, newest) = (latest.clone(), out.clone(), newest.clone());
        crate::link::spawn("link-rx", move || {
            // Woken by a message, this thread does not preempt the replay on its core (whose
            // waker, the primary's runner, would then pay for an interrupt to this core): it
            // runs when the replay yields, between two chunks of its run or while it waits.
            // SAFETY: gettid has no preconditions.
            crate::set_policy(unsafe { libc::gettid() }, libc::SCHED_BATCH);
            let seen = (&*latest, &*newest);
            if let Err(why) = receive_log(rx_half.as_mut(), first_log, &out, seen, &rec_tx) {
                tracing::warn!("{why}");
                out.broke();
            }
            let _ = rec_tx.send(FromPrimary::Gone);
        });
    }

    // The primary's initial state, whose RAM came apart from it.
    let mut ram = Some(ram);
    let mut m = loop {
        match rec_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(FromPrimary::Record(Record::Header { snapshot, .. })) => {
                break Machine::restore_with_ram(&snapshot, ram.take().unwrap_or_default())?
            }
            Ok(FromPrimary::Released(_)) => {}
            _ => {
                return Err(PairError::Protocol(
                    "the primary sent no initial state".into(),
                ))
            }
        }
    };
    // This side must be able to take over the guest's devices as they are.
    let expected = devices.expected(&disk_sizes);
    if m.devices() != expected {
        return Err(PairError::Protocol(format!(
            "the primary's guest has the devices {:?}, this backup's options give {:?}: give both sides the same --disk and --net options (MACs included), in the same order",
            m.devices(),
            expected
        )));
    }
    out.with(|s| s.replayed(m.count()));
    // The backup's own disk copies receive the same writes, by replay.
    // N-modular redundancy: this replica votes (every member was given the group's size).
    let votes = cfg.replicas.is_some();
    let mut follower = Follower {
        disks: HashMap::new(),
        outstanding: HashMap::new(),
        unreleased: VecDeque::new(),
        chain: votes.then(Chain::default),
        disk_differs: None,
        overlapped: Default::default(),
    };
    // Two replicas: checkpoints where this replica's state matched the leader's, and the log
    // since, to re-execute when they disagree.
    let mut rechecker = (cfg.replicas == Some(2)).then(|| Rechecker::new(&m, [0; 32]));
    // A fault still to inject, and where and when one was.
    let mut inject = opts.inject.as_ref().and_then(|i| i.from_start(m.count()));
    let mut injected: Option<(u64, Instant)> = None;
    // The replay went astray (N-modular redundancy: reported, then the verdict awaited).
    let mut diverged = false;
    // This replica's state digest differed from the leader's.
    let mut differs = false;
    // Its own disk copy differs from the data of a disk read the leader logged (a
    // re-execution, which takes the read data from the log, cannot tell who is right).
    let mut disk_diverged = false;
    for (slot, path) in devices.disks.iter().enumerate() {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(PairError::io(format!(
                "cannot open disk {}",
                path.display()
            )))?;
        follower.disks.insert(slot, f);
    }
    let mut gone = false;
    // Set when the primary handed the guest over (live migration) at this count.
    let mut handed_over = None;
    // A post-copy hand-over: the pages still missing and where they arrive.
    let mut postcopy = None;
    let mut status = cfg.status_file.as_deref().map(StatusFile::new);
    // A flight recorder: the last stretch of the log followed, from this state on.
    let mut kept = Flight::start(opts, &m);
    loop {
        // Nothing received on the TAPs before the takeover is the guest's: drop it.
        while events.try_recv().is_ok() {}
        let msg = match next_from_primary(&rec_rx, cfg.replay_spin, timing.beat) {
            Ok(m) => Some(m),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(FromPrimary::Gone),
        };
        match msg {
            Some(FromPrimary::Record(r)) => {
                if let Some(rc) = &mut rechecker {
                    rc.record(r.clone());
                }
                if let Some(i) = inject.take_if(|i| r.count() >= i.at) {
                    i.done();
                    // A soft error, modelled: one bit of this replica's state flips here.
                    follow::run_to(&mut m, i.at, &mut follower)?;
                    match m.inject(&i.fault) {
                        Ok(what) => {
                            eprintln!(
                                "ftvm: fault injected at instruction {}: {what}{}",
                                i.at,
                                if i.persists { " (it persists)" } else { "" }
                            );
                            injected = Some((i.at, Instant::now()));
                            if let (true, Some(rc)) = (i.persists, &mut rechecker) {
                                rc.persistent(i.at, i.fault);
                            }
                        }
                        Err(e) => eprintln!("ftvm: the fault {} was not injected: {e}", i.fault),
                    }
                }
                let inj = injected.map_or(u64::MAX, |(c, _)| c);
                if diverged {
                    // This replica's machine no longer follows the log: it waits for the
                    // group's verdict.
                    continue;
                }
                let target = r.count();
                let copy = kept.is_some().then(|| r.clone());
                let applied = match r {
                    Record::Digest { count, digest } if votes => {
                        // The leader compares: a replica whose state differs reports it.
                        follow::run_to(&mut m, count, &mut follower).map(|()| {
                            let ours = *m.digest().as_bytes();
                            if ours != digest {
                                eprintln!("ftvm: this replica's state digest at instruction {count} differs from the leader's");
                                if let Some(t) = &opts.telemetry {
                                    t.vote_mismatches.fetch_add(1, Ordering::Relaxed);
                                }
                                differs = true;
                            } else if let (Some(rc), false) = (&mut rechecker, differs) {
                                // Both agree here: a checkpoint to re-execute from.
                                rc.checkpoint(&m, follower.chain.unwrap_or_default().0);
                            }
                            out.send_with(|s| s.vote(VOTE_DIGEST, count, ours, inj));
                            Applied::Digest
                        })
                    }
                    r => follow::apply(&mut m, r, &mut follower),
                };
                let applied = match (applied, follower.disk_differs.take()) {
                    (Ok(_), Some(why)) => {
                        // The leader's disk read gave other data than this replica's copy.
                        eprintln!("ftvm: this replica's replay diverged: {why}");
                        disk_diverged = true;
                        let hash = *blake3::hash(why.as_bytes()).as_bytes();
                        out.send_with(|s| s.vote(VOTE_OUTPUTS, target, hash, inj));
                        diverged = true;
                        continue;
                    }
                    (a, _) => a,
                };
                let applied = match applied {
                    Ok(a) => a,
                    Err(e @ (FollowError::Stopped { .. } | FollowError::Digest { .. }))
                        if votes =>
                    {
                        // Its own fault, most likely (the group decides): a vote that cannot
                        // match the leader's, then nothing more until the verdict.
                        eprintln!("ftvm: this replica's replay diverged: {e}");
                        if let Some(t) = &opts.telemetry {
                            t.vote_mismatches.fetch_add(1, Ordering::Relaxed);
                        }
                        let hash = ftvm_runner::vote::divergence(&e);
                        out.send_with(|s| s.vote(VOTE_OUTPUTS, target, hash, inj));
                        diverged = true;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                if let Some(r) = copy {
                    Flight::keep(&mut kept, &m, &r);
                }
                if let (Applied::Mark, Some(chain)) = (applied, &follower.chain) {
                    out.send_with(|s| s.vote(VOTE_OUTPUTS, m.count(), chain.0, inj));
                }
                out.with(|s| s.replayed(m.count()));
                if let Applied::End { code } = applied {
                    // Closing the link tells the primary the end arrived.
                    out.broke();
                    eprintln!("ftvm: the primary's guest stopped (exit {code}); backup done");
                    return Ok(Ended {
                        code: code.min(255) as u8,
                        machine: m,
                        handed_over: false,
                    });
                }
            }
            Some(FromPrimary::Released(released)) => {
                // Outputs up to here were released on this replica's votes: its checkpoints
                // up to here are agreed in full (its digest matched there already).
                if let Some(rc) = &mut rechecker {
                    rc.agreed(released);
                }
                while follower
                    .unreleased
                    .front()
                    .is_some_and(|(c, _)| *c <= released)
                {
                    follower.unreleased.pop_front();
                }
            }
            Some(FromPrimary::HandOver {
                count,
                released,
                missing,
                pages,
            }) => {
                // Every record up to `count` came before the hand-over and was applied.
                if m.count() != count {
                    return Err(PairError::Protocol(format!(
                        "the primary handed the guest over at instruction {count}, but its log ends at {}",
                        m.count()
                    )));
                }
                while follower
                    .unreleased
                    .front()
                    .is_some_and(|(c, _)| *c <= released)
                {
                    follower.unreleased.pop_front();
                }
                handed_over = Some(count);
                if !missing.is_empty() {
                    let n = m.ram().len() / PAGE;
                    let Some(missing) = ftvm_machine::dirty::DirtyPages::from_bytes(&missing, n)
                    else {
                        return Err(PairError::Protocol(
                            "the primary's map of missing pages does not fit the RAM".into(),
                        ));
                    };
                    postcopy = Some((missing, pages));
                }
            }
            Some(FromPrimary::Verdict {
                action: VERDICT_TAKE_OVER,
                ..
            }) => {
                // The leader was the faulty one: this replica's state is right after all (where
                // its replay parted from the faulty leader's log, it stays).
                eprintln!("ftvm: the leader was found faulty by re-execution: this replica takes the guest over");
                (diverged, differs, gone) = (false, false, true);
            }
            Some(FromPrimary::Verdict { count, how, action }) => {
                out.broke();
                return Err(verdict(count, how, action, injected));
            }
            Some(FromPrimary::Recheck { from, to, how }) => {
                let what = if how == VOTE_DIGEST {
                    What::Digest
                } else {
                    What::Outputs
                };
                let req = Request {
                    from,
                    base: None,
                    to,
                    what,
                };
                // Disputed from here on: unless the group names the leader faulty, this replica
                // must not take the guest over (with two, neither can be trusted).
                differs = true;
                let t0 = Instant::now();
                let result = match &rechecker {
                    _ if disk_diverged => Err("its disk copy differs from the data the leader read, which a re-execution takes from the log: it cannot tell which replica is right".to_string()),
                    Some(rc) => rc.reexecute(&req).map_err(|e| e.to_string()),
                    None => Err("this replica keeps no checkpoints".to_string()),
                };
                let hash = match &result {
                    Ok(h) => *h,
                    // A result that matches nobody's: the group cannot settle it.
                    Err(e) => *blake3::hash(e.as_bytes()).as_bytes(),
                };
                eprintln!(
                    "ftvm: the replicas disagree at instruction {to}: re-executed from instruction {from} in {:.1} ms{}",
                    t0.elapsed().as_secs_f64() * 1e3,
                    result.err().map_or(String::new(), |e| format!(": {e}"))
                );
                let kind = if how == VOTE_DIGEST {
                    VOTE_RECHECKED_DIGEST
                } else {
                    VOTE_RECHECKED_OUTPUTS
                };
                let inj = injected.map_or(u64::MAX, |(c, _)| c);
                out.send_with(|s| s.vote(kind, to, hash, inj));
            }
            Some(FromPrimary::Gone) => gone = true,
            // Relayed frames follow the hand-over, after which this loop ends.
            Some(FromPrimary::Relay { .. }) | None => {}
        }
        if let Some(st) = &mut status {
            let primary_at = latest.load(Ordering::Relaxed).max(m.count());
            st.update("backup", m.count(), Some(primary_at));
        }
        if let Some(t) = &opts.telemetry {
            let primary_at = latest.load(Ordering::Relaxed).max(m.count());
            t.update(Member::Backup, m.count(), Some(primary_at));
            t.generation
                .store(newest.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        if handed_over.is_some() || gone || out.with(|s| s.is_dead(now_ns())) {
            break;
        }
    }
    // The primary is gone (or cut off, or stopped: it may come back). Cut every tie first:
    // no acknowledgement, echo or heartbeat leaves from now on, so no lease of the primary's
    // can outlast `free_at`; then nothing is released before it.
    let detected = Instant::now();
    // After a hand-over the link stays open for the frames the primary relays.
    let close = handed_over.is_none();
    let (free_at, why) = out.cut_if(|s| {
        let why = if handed_over.is_some() {
            "the primary handed the guest over".to_string()
        } else if s.broken() || gone {
            "the link closed".to_string()
        } else {
            format!(
                "nothing heard for {} ms",
                now_ns().saturating_sub(s.last_heard()) / 1_000_000
            )
        };
        ((s.fence(), why), close)
    });
    // Everything received is in the queue: replay it all (the catch-up, on the same path).
    // After a hand-over nothing is left: the primary sent nothing more.
    let mut ended = None;
    if diverged {
        // Only the group's verdict may still be in the queue for this replica.
        while let Ok(msg) = rec_rx.try_recv() {
            if let FromPrimary::Verdict { count, how, action } = msg {
                return Err(verdict(count, how, action, injected));
            }
        }
    }
    while handed_over.is_none() && !diverged {
        let Ok(msg) = rec_rx.try_recv() else { break };
        if let FromPrimary::Verdict { count, how, action } = msg {
            if action == VERDICT_TAKE_OVER {
                // The leader found itself faulty: this replica's state is the right one.
                differs = false;
                continue;
            }
            // The group's word came before the leader went: it stands.
            return Err(verdict(count, how, action, injected));
        }
        if let FromPrimary::Record(r) = msg {
            let copy = kept.is_some().then(|| r.clone());
            let applied = match r {
                // A group's leader may be the faulty one: its digests are the group's to
                // compare, not this replica's to obey.
                Record::Digest { count, .. } if votes => {
                    follow::run_to(&mut m, count, &mut follower).map(|()| Applied::Digest)
                }
                r => follow::apply(&mut m, r, &mut follower),
            };
            if let (Ok(_), Some(r)) = (&applied, copy) {
                Flight::keep(&mut kept, &m, &r);
            }
            match applied {
                Ok(Applied::End { code }) => {
                    ended = Some(code);
                    break;
                }
                Ok(_) => {}
                Err(e) if votes => {
                    // The leader's log stops fitting this replica (a faulty leader's would
                    // not): it goes on from where it was.
                    eprintln!("ftvm: the catch-up stops where this replica's replay diverged: {e}");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if let Some(code) = ended {
        // The primary's guest stopped before it died: there is nothing to take over.
        eprintln!("ftvm: the primary's guest stopped (exit {code}); backup done");
        return Ok(Ended {
            code: code.min(255) as u8,
            machine: m,
            handed_over: false,
        });
    }
    // After a hand-over the primary has stopped its guest and releases nothing more: no lease
    // to wait out, no race.
    let generation = newest.load(Ordering::SeqCst);
    if votes && handed_over.is_none() && (diverged || differs) {
        // This replica disagreed with the leader before it went: with two, neither can be
        // trusted; with more, another one that agreed should take the guest over first.
        if cfg.replicas == Some(2) {
            return Err(PairError::Lost(
                "this replica disagreed with the leader before the leader went: with two replicas neither can be trusted; it stops".into(),
            ));
        }
        std::thread::sleep(timing.dead * 3);
    }
    if handed_over.is_none() {
        sleep_until(free_at);
        // A group's member names where it will accept the others (a pair's backup: "backup").
        let label = crate::winner_label(listen.filter(|_| votes));
        if !arbiter.test_and_set(generation, &label)? {
            let winner =
                crate::winner_of(arbiter, generation, Duration::from_secs(2)).unwrap_or_default();
            if votes {
                // A replica of a group attaches again, from the leader's state: another
                // follower's, if it took the guest over.
                let to = crate::winner_address(&winner);
                let why = match &to {
                    Some(to) => format!("another replica won generation {generation} of the arbiter and leads the group from {to}"),
                    None => format!("the primary won generation {generation} of the arbiter ({why})"),
                };
                return Err(PairError::Outvoted { why, to });
            }
            let why = format!(
                "the primary won generation {generation} of the arbiter ({why}: this backup was stopped, stalled or cut off from it, and the primary runs on)"
            );
            return Err(PairError::Lost(format!(
                "{why}; this backup stops and never went live"
            )));
        }
    }
    let Follower {
        disks,
        outstanding,
        unreleased,
        ..
    } = follower;
    for f in disks.values() {
        let _ = f.sync_data();
    }
    drop(disks);
    if handed_over.is_some() {
        eprintln!(
            "ftvm: the guest was handed over; live at instruction {} ({:.1} ms after the hand-over arrived)",
            m.count(),
            detected.elapsed().as_secs_f64() * 1e3
        );
    } else {
        if let Some(t) = &opts.telemetry {
            t.failovers.fetch_add(1, Ordering::Relaxed);
            t.generation.store(generation, Ordering::Relaxed);
        }
        eprintln!(
            "ftvm: primary lost ({why}); backup live at instruction {} ({} ms after detection)",
            m.count(),
            detected.elapsed().as_millis()
        );
    }
    while events.try_recv().is_ok() {}
    // The dead primary's TAP may take a moment to be released on a shared host: retry briefly.
    // So may its passt's forwarded ports (it exits once the dead primary's socket closes).
    let t_open = Instant::now();
    let backends = loop {
        let opened = match early_taps.take() {
            Some(taps) => {
                let mut b = Backends {
                    nets: taps,
                    ..Default::default()
                };
                devices.open_disks(&events_tx, &mut b)?;
                devices.open_other_nets(&events_tx, &mut b).map(|()| b)
            }
            None => devices.open_backends(&events_tx),
        };
        match opened {
            Ok(b) => break b,
            Err(e) if t_open.elapsed() < Duration::from_secs(3) => {
                tracing::debug!(error = %e, "devices not free yet");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    };
    // Announce the guest's address from here on, then produce the unreleased outputs again.
    backends.announce(devices);
    for (_, out) in unreleased {
        match out {
            Output::Device(DeviceOutput::Frame { slot, frame }) => {
                if let Some(n) = backends.nets.get(&slot) {
                    n.send(&frame);
                }
            }
            Output::Console(b) => match &opts.capture {
                Some(buf) => buf
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&b),
                None => {
                    let _ = std::io::stdout().write_all(&b);
                }
            },
            Output::Device(DeviceOutput::Disk(_)) => {}
        }
    }
    if let Some((missing, pages)) = postcopy {
        eprintln!(
            "ftvm: post-copy: {} pages ({} MiB) of RAM still to come; the guest runs meanwhile",
            missing.count(),
            missing.count() >> 8
        );
        m.start_postcopy(
            missing,
            Box::new(LinkPages {
                out: out.clone(),
                pages,
                limit: timing.stall().max(Duration::from_secs(5)),
            }),
        );
    }
    // Frames that reached the primary after the hand-over come relayed: the guest gets them
    // as if this side's TAP had received them (only for this side's network devices).
    if handed_over.is_some() {
        let nets = devices.disks.len()..devices.disks.len() + devices.nets.len();
        let events_tx = events_tx.clone();
        crate::link::spawn("relay", move || {
            for msg in rec_rx {
                if let FromPrimary::Relay { slot, frame } = msg {
                    if nets.contains(&slot) {
                        let _ = events_tx.send(Event::Host(HostEvent::Frame { slot, frame }));
                    }
                }
            }
        });
    }
    let mut resubmit: Vec<DiskRequest> = outstanding.into_values().collect();
    resubmit.sort_by_key(|r| (r.slot, r.id));
    let mut gate = Gate::open().with_status(status);
    if let Some(listen) = listen {
        // This side is the primary now: a new backup may attach and start the next generation.
        // The guest is this side's now (the generation is won): a listener that cannot start
        // leaves it unprotected, never stopped.
        match Protector::start(listen, cfg, generation + 1, devices, events_tx.clone()) {
            Ok(p) => {
                let on = p.listening().map_or_else(|| listen.to_string(), |a| a.to_string());
                gate = gate.with_protector(Box::new(p));
                eprintln!("ftvm: waiting for a new backup on {on}");
            }
            Err(e) => eprintln!("ftvm: cannot wait for a new backup on {listen} ({e}): the guest runs on unprotected"),
        }
    }
    Ok(ftvm_runner::live(
        opts,
        m,
        backends,
        events_tx,
        events,
        Feeder::new(cfg.epoch),
        gate,
        resubmit,
    )?)
}

/// The backup's receiving side: decode the primary's log as it arrives (starting with
/// `first`), hand each record to the replay through `records` and acknowledge it on receipt.
/// Returns when this side cut its ties or the replay stopped listening; an error when the link
/// or the stream broke.
fn receive_log(
    rx: &mut dyn Receive,
    first: Vec<u8>,
    out: &SendHalf<BackupSide>,
    (latest, newest): (&AtomicU64, &AtomicU64),
    records: &Sender<FromPrimary>,
) -> Result<(), String> {
    let mut reader: Option<LogReader<Incoming>> = None;
    let mut pending = Incoming::default();
    let mut first = Some(first);
    loop {
        let bytes = match first.take() {
            Some(b) => b,
            None => {
                let msg = rx
                    .recv()
                    .map_err(|e| format!("replication channel closed: {e}"))?;
                let g = rx.generation();
                if g > newest.load(Ordering::SeqCst) {
                    // The leader moved its group on to a newer generation: so does this side.
                    newest.store(g, Ordering::SeqCst);
                    out.set_generation(g);
                }
                let got = out
                    .with(|s| s.receive(now_ns(), &msg))
                    .map_err(|e| e.to_string())?;
                match (got, msg) {
                    // This side cut its ties: nothing of the primary's is taken now.
                    (Received::Ignored, _) => return Ok(()),
                    (Received::Released(count), _) => {
                        let _ = records.send(FromPrimary::Released(count));
                        continue;
                    }
                    (Received::Verdict { count, how, action }, _) => {
                        let _ = records.send(FromPrimary::Verdict { count, how, action });
                        return Ok(());
                    }
                    (Received::Recheck { from, to, how }, _) => {
                        let _ = records.send(FromPrimary::Recheck { from, to, how });
                        continue;
                    }
                    (
                        Received::HandOver {
                            count,
                            released,
                            missing,
                        },
                        _,
                    ) => {
                        // Say it arrived (the primary closes the link only then), then take
                        // the frames it relays and the RAM pages it sends (post-copy) until it
                        // closes the link; nothing else follows a hand-over (the channel
                        // refuses it).
                        out.send_with(|s| s.ack(count));
                        let (page_tx, pages) = mpsc::channel();
                        let _ = records.send(FromPrimary::HandOver {
                            count,
                            released,
                            missing,
                            pages,
                        });
                        loop {
                            match rx.recv() {
                                Ok(Msg::Relay { slot, frame }) => {
                                    let slot = slot as usize;
                                    if records.send(FromPrimary::Relay { slot, frame }).is_err() {
                                        break;
                                    }
                                }
                                Ok(Msg::Ram { pages, data }) => {
                                    for (p, d) in ram_pages(&pages, &data) {
                                        let d = d.map_or_else(|| vec![0; PAGE], <[u8]>::to_vec);
                                        let _ = page_tx.send((p, d));
                                    }
                                }
                                _ => break,
                            }
                        }
                        return Ok(());
                    }
                    (_, Msg::Log { bytes, .. }) => bytes,
                    (_, other) => {
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
        // (nothing once this side has cut its ties).
        if let (Some(count), true) = (last, marked) {
            out.send_with(|s| s.ack(count));
        }
    }
}

/// A backup's flight recorder (`--keep-log`): the log it follows, kept as a rolling window.
/// It must never cost the guest its protection: a recorder that cannot write says so and
/// stops.
struct Flight;

impl Flight {
    fn start(opts: &Options, m: &Machine) -> Option<KeptLog> {
        let (dir, keep) = opts.keep_log.as_ref()?;
        let mut k = match KeptLog::create(dir, *keep) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("ftvm: the kept log in {} cannot start: {e}", dir.display());
                return None;
            }
        };
        Self::roll(&mut k, m).map(|()| k).ok()
    }

    fn roll(k: &mut KeptLog, m: &Machine) -> Result<(), ()> {
        let header = Record::Header {
            count: m.count(),
            snapshot: m.save(),
            digest_every: 0,
        };
        k.start(header, Instant::now()).map_err(|e| {
            eprintln!("ftvm: the kept log stops: {e}");
        })
    }

    /// Keep `r`, just applied; start a new segment at this state when one is due.
    fn keep(kept: &mut Option<KeptLog>, m: &Machine, r: &Record) {
        let Some(k) = kept else { return };
        let now = Instant::now();
        let ok = match k.append(r, now) {
            Ok(()) if k.due(now) => Self::roll(k, m),
            Ok(()) => Ok(()),
            Err(e) => {
                eprintln!("ftvm: the kept log stops: {e}");
                Err(())
            }
        };
        if ok.is_err() {
            *kept = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(count: u64) -> FromPrimary {
        FromPrimary::Record(Record::Mark { count })
    }

    fn count_of(got: Result<FromPrimary, mpsc::RecvTimeoutError>) -> u64 {
        match got {
            Ok(FromPrimary::Record(r)) => r.count(),
            _ => panic!("not a record"),
        }
    }

    #[test]
    fn the_replay_takes_what_is_there_what_comes_while_it_spins_or_sleeps_and_then_the_end() {
        // As by default, and with --replay-spin-us 0.
        for spin in [crate::REPLAY_SPIN, Duration::ZERO] {
            takes_all_in_order(spin);
        }
    }

    fn takes_all_in_order(spin: Duration) {
        let (tx, rx) = mpsc::channel();
        let long = Duration::from_secs(30);
        tx.send(mark(1)).unwrap();
        tx.send(mark(2)).unwrap();
        assert_eq!(count_of(next_from_primary(&rx, spin, long)), 1);
        assert_eq!(count_of(next_from_primary(&rx, spin, long)), 2);
        // From another thread: at once, and long after the spin (the replay sleeps by then).
        let late = std::thread::spawn(move || {
            for (c, after) in [(3, Duration::ZERO), (4, Duration::from_millis(20))] {
                std::thread::sleep(after);
                tx.send(mark(c)).unwrap();
            }
            tx
        });
        assert_eq!(count_of(next_from_primary(&rx, spin, long)), 3);
        assert_eq!(count_of(next_from_primary(&rx, spin, long)), 4);
        let tx = late.join().unwrap();
        // Nothing within the limit (shorter than the spin, too).
        for limit in [spin * 3, spin / 2, Duration::ZERO] {
            assert!(matches!(
                next_from_primary(&rx, spin, limit),
                Err(mpsc::RecvTimeoutError::Timeout)
            ));
        }
        tx.send(mark(5)).unwrap();
        drop(tx);
        assert_eq!(count_of(next_from_primary(&rx, spin, long)), 5);
        assert!(matches!(
            next_from_primary(&rx, spin, long),
            Err(mpsc::RecvTimeoutError::Disconnected)
        ));
    }
}
