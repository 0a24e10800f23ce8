//! The live loop: run the machine, feed it the host's events through the boundary
//! (`Machine::apply`), and send its outputs out, through the output-commit gate when a backup
//! protects the guest.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::Write;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftvm_host::console::{Captured, Console};
use ftvm_host::{DetEntropy, HostEvent};
use ftvm_log::kept::KeptLog;
use ftvm_log::{LogError, LogWriter, Record};
use ftvm_machine::board::NANOS_PER_TICK;
use ftvm_machine::{
    DeviceOutput, DiskOp, DiskRequest, Input, Machine, Output, PowerEvent, RunExit,
};
use thiserror::Error;

use crate::clock::{HostClock, MAX_LAG};
use crate::devices::Backends;
use crate::events::{EventRx, EventTx, Waited};
use crate::recheck::Rechecker;
use crate::status::StatusFile;
use crate::telemetry::{Command, Refusal, Request, Role, Telemetry};
use crate::Event;

/// Errors of the replication layer, as the runner passes them on.
pub type LinkError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Error)]
pub enum RunError {
    #[error("--stop-at {stop_at} is before the snapshot's instruction count {count}")]
    StopAtPast { stop_at: u64, count: u64 },
    #[error("unsupported HTIF request {0:#x} written to tohost")]
    Htif(u64),
    #[error("the guest is idle with no timer armed and no input to come: it would wait forever")]
    IdleForever,
    #[error("a disk worker stopped")]
    DiskWorker,
    #[error("a disk request did not complete within 30 s")]
    DiskTimeout,
    #[error("cannot read host entropy: {0}")]
    Entropy(std::io::Error),
    #[error("cannot start the console: {0}")]
    Console(std::io::Error),
    #[error("writing the log: {0}")]
    Log(#[from] LogError),
    #[error(transparent)]
    Link(LinkError),
}

/// How guest time relates to the host's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClockMode {
    /// Idle waits take real time and guest time never falls behind the host's.
    #[default]
    Host,
    /// A pure function of the instruction count: idle is skipped, entropy is a fixed stream.
    Virtual,
}

/// How a live run goes.
#[derive(Clone, Debug)]
pub struct Options {
    /// Stop when the count reaches exactly this.
    pub stop_at: u64,
    pub clock: ClockMode,
    /// The guest's console: the terminal (stdin and stdout), or, with no terminal, output
    /// captured here (tests, embedding).
    pub capture: Option<Captured>,
    /// A fault to inject when the count reaches its instruction (N-modular redundancy's
    /// tests): live, or in a backup's replay.
    pub inject: Option<crate::vote::Injection>,
    /// A flight recorder: keep the last stretch of the log in this directory, for this long
    /// (a backup keeps the log it follows; see `ftvm_log::kept`).
    pub keep_log: Option<(std::path::PathBuf, Duration)>,
    /// Where this member reports what it does (the management API and metrics read it).
    pub telemetry: Option<Arc<Telemetry>>,
}

impl Options {
    fn console(&self, events: EventTx) -> std::io::Result<Console> {
        match &self.capture {
            Some(buf) => Console::capture(buf.clone()),
            None => Console::start(events),
        }
    }
}

/// How a live run ended.
pub struct Ended {
    /// The guest's exit code (0 for a stop at --stop-at or a quit).
    pub code: u8,
    pub machine: Machine,
    /// The guest was handed over to the backup (live migration): it runs there now.
    pub handed_over: bool,
}

/// An output waiting for the backup: the count that produced it, since when it waits, and
/// the output.
pub type Held = (u64, Instant, Output);

/// The state of the link to a backup, as the primary's runner sees it.
pub enum LinkState {
    /// The backup holds the log up to this count.
    Protected(u64),
    /// The backup is gone and this side won the arbiter: run on alone.
    Unprotected,
}

/// The primary's view of its backup (implemented by the replication layer).
pub trait Link {
    /// Where the backup stands; an error when this side lost the arbiter and must stop.
    fn check(&mut self) -> Result<LinkState, LinkError>;
    /// Send out, in order, the held outputs the backup holds the log of, while this side may
    /// (the backup cannot have gone live: asked right before each output leaves).
    fn release(&self, held: &mut VecDeque<Held>, emit: &mut dyn FnMut(Held));
    /// The count up to which the backup holds the log.
    fn acked(&self) -> u64;
    /// The generation (the arbiter's round) this link belongs to.
    fn generation(&self) -> u64 {
        0
    }
    /// Whether the guest at `count` is so far ahead of the backup's replay that it must wait.
    fn too_far_ahead(&self, count: u64) -> bool;
    /// Wait up to `limit` for the backup to close the link (as it does at the end of the log).
    fn hung_up(&self, limit: Duration) -> bool;
    /// An operator drops the backup: cut the link as if it had died, so that this side races
    /// the arbiter at its next check (and, winning, runs on unprotected; the dropped backup,
    /// which races only after its dead timeout, loses and never goes live). False if this link
    /// cannot drop its backup.
    fn drop_backup(&mut self) -> bool {
        false
    }
    /// Whether the guest, at `count`, is to be handed over to the backup now (live migration).
    fn hand_over_due(&self, _count: u64) -> bool {
        false
    }
    /// Hand the guest, stopped at `count` with its log pushed out to there, over to the
    /// backup: from the moment this is called this side releases nothing more.
    fn hand_over(&self, count: u64) -> Result<(), LinkError> {
        Err(format!("this link cannot hand the guest over (at instruction {count})").into())
    }
    /// After the hand-over, until the backup needs nothing more of this side: pass on the
    /// frames that this side's TAPs receive and its guest never got (`next_frame(wait)` gives
    /// the next, waiting up to `wait`), and the RAM a post-copy backup still lacks (`ram`, the
    /// guest's, stopped). Then close the link.
    fn after_hand_over(
        &self,
        _ram: &[u8],
        _next_frame: &mut dyn FnMut(Duration) -> Option<(usize, Vec<u8>)>,
    ) {
    }
    /// A descriptor that becomes readable when the backup has sent something, if the runner
    /// may wait on it itself: with outputs held and the guest idle it then waits for that and
    /// its events at once ([`EventRx::wait_with`]), and the next look reads what came; with
    /// none it waits for its events alone (the link wakes it through them).
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// When input from outside goes to the backup (see [`PushInput`]).
    fn push_input(&self) -> PushInput {
        PushInput::OnArrival
    }
    /// How many instructions an output held while the guest runs may wait for others to
    /// share its mark (group commit: see `Gate::commit_due`); 0: each turn's outputs are
    /// marked at once.
    fn commit_wait(&self) -> u64 {
        0
    }
    /// Whether the backups vote on outputs and digests (N-modular redundancy): the runner then
    /// tells the link its own (below).
    fn votes(&self) -> bool {
        false
    }
    /// The hashes ([`crate::vote::output_hash`]) of the outputs the guest produced, in order,
    /// taken at `count`.
    fn outputs(&self, _count: u64, _hashes: &[[u8; 32]]) {}
    /// The machine's state digest at `count` (written to the log as a `Digest` record).
    fn digest(&self, _count: u64, _digest: [u8; 32]) {}
    /// Whether this side keeps checkpoints and the log since, to re-execute when two
    /// replicas disagree ([`crate::recheck`]).
    fn rechecks(&self) -> bool {
        false
    }
    /// The newest count where every follower agreed with this side (older checkpoints can go).
    fn agreed(&self) -> u64 {
        0
    }
    /// A re-execution the group asks of this side (once).
    fn recheck(&self) -> Option<crate::recheck::Request> {
        None
    }
    /// The result of that re-execution.
    fn rechecked(&self, _result: Result<[u8; 32], String>) {}
}

/// After a hand-over, frames still reaching this side (the network learns where the guest
/// went from the backup's announcement) are relayed to the backup for this long.
pub const RELAY_GRACE: Duration = Duration::from_millis(300);

/// Where new backups come from (implemented by the replication layer).
pub trait Protect {
    /// Look for backups that connected; whether one waits to attach.
    fn poll(&mut self) -> bool;
    /// Whether a waiting backup is being brought up to date (a pre-copy is under way).
    fn transferring(&self) -> bool;
    /// One step of bringing the waiting backup up to date while the guest runs (pre-copy):
    /// the first call starts it (no disk request may be in flight then), later ones send what
    /// changed. `Ready` when what is left fits the pause the guest may take; an error ends
    /// the attempt (the guest runs on as it was).
    fn precopy(&mut self, m: &mut Machine, disks: &mut DiskDirty) -> Result<Precopy, LinkError>;
    /// Finish bringing the backup up to date with `m` (no disk request is in flight): what
    /// changed last, the state, then the link, and the log to write the inputs to from here on
    /// (or, for a backup that joins a group, nothing new: the group's link and log carry it).
    fn attach(&mut self, m: &mut Machine, disks: &mut DiskDirty) -> Result<Attached, LinkError>;
    /// Whether a backup may attach while the guest is protected already (a group of replicas
    /// with room, N-modular redundancy). Before such an attach the runner marks its log at the
    /// machine's count and pushes it out, so the new member's log starts where it stands.
    fn joins(&self) -> bool {
        false
    }
    /// The copy under way (a backup's attach, or a migration): bytes sent so far and its round.
    fn progress(&self) -> Option<(u64, u32)> {
        None
    }
    /// Digest interval of the log to a backup.
    fn digest_every(&self) -> u64;
}

/// What an attach gave the runner.
pub enum Attached {
    /// The link to the backup, and the log to write the inputs to from here on.
    Link(Box<dyn Link>, LogWriter<Box<dyn Write>>),
    /// The backup joined the group the runner's link and log already reach.
    Joined,
}

/// Where a pre-copy stands after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precopy {
    /// More to send. `throttle`: the percentage of real time the guest should spend paused
    /// (auto-converge: a guest that dirties memory faster than the link carries it is slowed
    /// down until the copy converges).
    Running { throttle: u32 },
    /// What is left fits the pause: attach now.
    Ready,
}

/// Disk bytes are tracked as written in blocks of this size.
pub const DISK_BLOCK: u64 = 64 << 10;

/// The disk blocks the guest wrote since the set was last taken, by disk slot (for a pre-copy:
/// the blocks to send again). A write is marked when it is submitted, before any of its bytes
/// reach the file.
#[derive(Debug, Default)]
pub struct DiskDirty(BTreeSet<(usize, u64)>);

impl DiskDirty {
    /// Mark `len` bytes at byte `offset` of the disk in `slot`.
    pub fn mark(&mut self, slot: usize, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let last = offset.saturating_add(len - 1) / DISK_BLOCK;
        for block in offset / DISK_BLOCK..=last {
            self.0.insert((slot, block));
        }
    }

    /// The bytes marked.
    pub fn bytes(&self) -> u64 {
        self.0.len() as u64 * DISK_BLOCK
    }

    /// Take the marked blocks as ranges `(slot, offset, len)` (adjacent blocks merged),
    /// leaving none marked. A range may run past the end of its disk.
    pub fn take(&mut self) -> Vec<(usize, u64, u64)> {
        let mut out: Vec<(usize, u64, u64)> = Vec::new();
        for (slot, block) in std::mem::take(&mut self.0) {
            let off = block * DISK_BLOCK;
            match out.last_mut() {
                Some((s, o, l)) if *s == slot && *o + *l == off => *l += DISK_BLOCK,
                _ => out.push((slot, off, DISK_BLOCK)),
            }
        }
        out
    }
}

/// Hand a disk request to its backend, marking the blocks a write changes.
fn submit(backends: &Backends, pending: &mut Pending, req: DiskRequest) {
    if let Some(d) = backends.disks.get(&req.slot) {
        if let DiskOp::Write { sector, data } = &req.op {
            pending
                .disk_dirty
                .mark(req.slot, sector.saturating_mul(512), data.len() as u64);
        }
        pending.disk_in_flight += 1;
        d.submit(req);
    }
}

/// Steps between looks at the host (I/O, the clock): 5 ms of guest time.
const CHUNK: u64 = 500_000;
/// Steps between looks while protected by a backup: 0.1 ms of guest time.
const HELD_CHUNK: u64 = 10_000;
/// The fewest steps to a look for input waiting to go to the backup (a run that stopped just
/// short of its grace goes this much further, rather than a few steps a turn).
const MIN_LOOK: u64 = 1_000;
/// Under [`PushInput::WithOutput`], input waits in the log at most this many steps (2 ms of
/// guest time) for an output's mark to carry it to the backup.
pub const INPUT_GRACE: u64 = 200_000;

/// Mark the log at `count` (which pushes it out to the backups).
fn mark_log(
    feed: &mut Feeder,
    rechecker: &mut Option<Rechecker>,
    count: u64,
) -> Result<(), LogError> {
    if let Some(log) = &mut feed.log {
        log.mark(count)?;
        if let Some(r) = rechecker {
            // The records kept move on to the checkpoints (which bound their bytes).
            r.take_kept(&mut log.kept);
        }
    }
    Ok(())
}

/// A protected guest's outputs wait at most this many instructions (0.5 ms of guest time)
/// for others to share their mark, while it runs (the default of [`Link::commit_wait`]).
pub const COMMIT_WAIT: u64 = 50_000;

/// When input from outside (network frames, console bytes) goes to the backup. Either way no
/// output leaves before the backup holds the input it depends on (every output waits for a
/// mark, which pushes the whole log out); what differs is the fate of a request whose answer
/// has not left yet when the primary dies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PushInput {
    /// With the next mark, which the first output it leads to makes; or once the guest goes
    /// idle, is paused, waits for a trailing backup, or has run [`INPUT_GRACE`] steps past it
    /// without an output. A request and its answer then cost one message to the backup (and
    /// one acknowledgement), not two: each is a wake-up of the backup's receiver, paid on the
    /// primary's core. A request the primary dies with before it answered is lost with it, and
    /// its client's TCP sends it again after its retransmission timeout (the connection
    /// survives either way).
    #[default]
    WithOutput,
    /// As soon as it entered the guest: a request in flight survives the primary, and the
    /// backup answers it without the client's retransmission.
    OnArrival,
}

/// Input from outside that entered the guest and waits in the log for a push to the backup
/// ([`PushInput::WithOutput`]): since when.
#[derive(Debug, Default)]
struct UnsentInput(Option<u64>);

impl UnsentInput {
    /// Input entered the guest at `count`: whether the log must be pushed out now.
    fn fed(&mut self, count: u64, how: PushInput) -> bool {
        match how {
            PushInput::OnArrival => {
                self.0 = None;
                true
            }
            PushInput::WithOutput => {
                self.0.get_or_insert(count);
                false
            }
        }
    }

    /// The log was pushed out (a mark): nothing waits any more.
    fn pushed(&mut self) {
        self.0 = None;
    }

    /// The guest ran to `count` (`idle`: and waits now, or does not run): whether waiting
    /// input must go now.
    fn due(&mut self, count: u64, idle: bool) -> bool {
        let due = self
            .0
            .is_some_and(|since| idle || count.saturating_sub(since) >= INPUT_GRACE);
        if due {
            self.0 = None;
        }
        due
    }
}
/// While replicas vote, the log is marked at least this often (0.5 ms of guest time) while
/// the guest runs.
const VOTE_MARK: u64 = 50_000;
/// Longest real-time wait while the guest is idle, before looking again.
const MAX_IDLE_WAIT: Duration = Duration::from_millis(50);
/// Fixed seed of the entropy stream under the virtual clock.
const VIRTUAL_ENTROPY_SEED: u64 = 0x6674_766d_2026;

/// Host events not yet handed to the machine.
#[derive(Default)]
struct Pending {
    console: VecDeque<u8>,
    frames: HashMap<usize, VecDeque<Vec<u8>>>,
    disk_done: VecDeque<HostEvent>,
    console_open: bool,
    quit: bool,
    /// Operators' requests, carried out between two steps.
    requests: VecDeque<Request>,
    disk_in_flight: usize,
    disk_dirty: DiskDirty,
}

impl Pending {
    fn take(&mut self, ev: Event) {
        let ev = match ev {
            Event::Host(ev) => ev,
            Event::Control(r) => return self.requests.push_back(r),
            Event::Wake => return,
        };
        match ev {
            HostEvent::Console(d) => self.console.extend(d),
            HostEvent::ConsoleEof => self.console_open = false,
            HostEvent::Quit => self.quit = true,
            HostEvent::Frame { slot, frame } => {
                let q = self.frames.entry(slot).or_default();
                // A NIC's receive queue is finite: beyond it, frames are dropped.
                if q.len() < 1024 {
                    q.push_back(frame);
                }
            }
            e @ HostEvent::DiskDone { .. } => self.disk_done.push_back(e),
        }
    }

    /// Hand the machine the disk completions that arrived.
    fn deliver_disk_done(&mut self, m: &mut Machine, feed: &mut Feeder) -> Result<(), RunError> {
        while let Some(HostEvent::DiskDone { slot, id, ok, data }) = self.disk_done.pop_front() {
            self.disk_in_flight -= 1;
            feed.feed(m, Input::DiskDone { slot, id, ok, data })?;
        }
        Ok(())
    }

    /// Complete every disk request in flight, without running the guest.
    fn drain_disks(
        &mut self,
        m: &mut Machine,
        events: &EventRx,
        feed: &mut Feeder,
        backends: &Backends,
        con: &mut Console,
        gate: &mut Gate,
    ) -> Result<(), RunError> {
        loop {
            self.deliver_disk_done(m, feed)?;
            // A completion may let the device start the next queued request.
            let outputs = gate.take_outputs(m);
            for out in outputs {
                match out {
                    Output::Device(DeviceOutput::Disk(req)) => submit(backends, self, req),
                    out if gate.link.is_some() => {
                        gate.held.push_back((m.count(), Instant::now(), out))
                    }
                    out => emit(out, con, backends),
                }
            }
            if self.disk_in_flight == 0 {
                return Ok(());
            }
            match events.recv_timeout(Duration::from_secs(30)) {
                Ok(ev) => self.take(ev),
                Err(_) => return Err(RunError::DiskTimeout),
            }
        }
    }

    /// Whether anything may still arrive from outside.
    fn input_possible(&self, b: &Backends) -> bool {
        self.console_open
            || !self.console.is_empty()
            || !b.nets.is_empty()
            || self.disk_in_flight > 0
    }
}

/// Applies inputs to the machine, writing each to the log first when recording (to a file) or
/// when primary (to the backup).
pub struct Feeder {
    pub log: Option<LogWriter<Box<dyn Write>>>,
    pub digest_every: u64,
    pub next_digest: u64,
    /// Epoch delivery: inputs take effect only at multiples of this count (or while the guest
    /// is idle, when the count does not move). None: precise delivery, at once.
    pub epoch: Option<u64>,
    /// Inputs applied so far.
    fed: u64,
    /// A flight recorder fed from `log`'s kept records: a rolling window of segments, each
    /// starting with the machine's state (`ftvm record --keep-log`).
    pub flight: Option<KeptLog>,
}

impl Feeder {
    /// Inputs applied at once (or at epochs), logged nowhere.
    pub fn new(epoch: Option<u64>) -> Feeder {
        Feeder {
            log: None,
            digest_every: u64::MAX,
            next_digest: u64::MAX,
            epoch,
            fed: 0,
            flight: None,
        }
    }

    /// Inputs written to `log` first, with a digest every `every` instructions from `count`.
    pub fn logged(
        log: LogWriter<Box<dyn Write>>,
        every: u64,
        count: u64,
        epoch: Option<u64>,
    ) -> Feeder {
        Feeder {
            log: Some(log),
            digest_every: every,
            next_digest: count.saturating_add(every),
            epoch,
            fed: 0,
            flight: None,
        }
    }

    /// Push what the log buffered out (a primary's: to its backups).
    fn push(&mut self) -> Result<(), LogError> {
        self.log.as_mut().map_or(Ok(()), |l| l.flush())
    }

    /// Move the records written since the last call on to the flight recorder, and start a
    /// new segment there when one is due (the machine is between steps: every input applied
    /// so far is in the records moved).
    fn fly(&mut self, m: &Machine, roll: bool) -> Result<(), LogError> {
        let (Some(k), Some(log)) = (&mut self.flight, &mut self.log) else {
            return Ok(());
        };
        let now = Instant::now();
        let due = roll && k.due(now);
        log.flush()?;
        for r in log.kept.as_mut().map(std::mem::take).unwrap_or_default() {
            k.append(&r, now)?;
        }
        if due {
            k.start(
                Record::Header {
                    count: m.count(),
                    snapshot: m.save(),
                    digest_every: self.digest_every,
                },
                now,
            )?;
        }
        Ok(())
    }

    fn feed(&mut self, m: &mut Machine, input: Input) -> Result<(), RunError> {
        if let Some(log) = &mut self.log {
            log.input(m.count(), &input)?;
        }
        self.fed += 1;
        m.apply(input);
        Ok(())
    }
}

/// Output commit: what the guest sends out waits until the backup holds the log that produced
/// it. With no backup (or unprotected), outputs leave at once.
pub struct Gate {
    link: Option<Box<dyn Link>>,
    /// Where new backups come from (a primary, or a backup gone live that listens).
    protect: Option<Box<dyn Protect>>,
    /// Outputs waiting for the backup: the count that produced each, and since when it waits.
    held: VecDeque<Held>,
    /// How long released outputs waited for the backup's acknowledgement.
    hold_times: HoldTimes,
    /// Where this side reports its role and lag (`ftvm status`).
    status: Option<StatusFile>,
    /// And its metrics.
    telemetry: Option<Arc<Telemetry>>,
    /// Whether a backup that connects may attach (an operator may refuse them for a while).
    accepting: bool,
}

impl Gate {
    /// Outputs leave at once.
    pub fn open() -> Gate {
        Gate {
            link: None,
            protect: None,
            held: VecDeque::new(),
            hold_times: HoldTimes::default(),
            status: None,
            telemetry: None,
            accepting: true,
        }
    }

    pub fn with_link(mut self, link: Box<dyn Link>) -> Gate {
        self.link = Some(link);
        self
    }

    pub fn with_protector(mut self, p: Box<dyn Protect>) -> Gate {
        self.protect = Some(p);
        self
    }

    pub fn with_status(mut self, status: Option<StatusFile>) -> Gate {
        self.status = status;
        self
    }
}

fn emit(out: Output, con: &mut Console, backends: &Backends) {
    match out {
        Output::Console(bytes) => con.write_output(&bytes),
        Output::Device(DeviceOutput::Frame { slot, frame }) => {
            if let Some(n) = backends.nets.get(&slot) {
                n.send(&frame);
            }
        }
        Output::Device(DeviceOutput::Disk(_)) => {}
    }
}

impl Gate {
    /// Report where this side stands (role, count, the backup's count; the log written so
    /// far) in its status file and its telemetry.
    fn report(&mut self, m: &Machine, log_bytes: Option<u64>) {
        if self.status.is_none() && self.telemetry.is_none() {
            return;
        }
        let peer = self.link.as_ref().map(|l| l.acked());
        if let Some(st) = &mut self.status {
            st.update(
                if peer.is_some() { "primary" } else { "live" },
                m.count(),
                peer,
            );
        }
        if let Some(t) = &self.telemetry {
            let role = if peer.is_some() {
                Role::Primary
            } else {
                Role::Live
            };
            t.update(role, m.count(), peer);
            if let Some(l) = &self.link {
                t.generation
                    .store(l.generation(), std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(bytes) = log_bytes {
                t.log_written(bytes);
            }
        }
    }

    /// The machine's outputs; when replicas vote, the link is told their hashes first (every
    /// output, disk requests included, at the count where it was taken).
    fn take_outputs(&self, m: &mut Machine) -> Vec<Output> {
        let outputs = m.take_outputs();
        if let Some(link) = self
            .link
            .as_ref()
            .filter(|l| l.votes() && !outputs.is_empty())
        {
            let hashes: Vec<[u8; 32]> = outputs.iter().map(crate::vote::output_hash).collect();
            link.outputs(m.count(), &hashes);
        }
        outputs
    }

    /// Whether the log must be marked at `count` (which sends it to the backup) for the
    /// outputs held since the last mark (at `last_mark`): group commit. While the guest runs,
    /// its outputs gather for up to the link's [`Link::commit_wait`] instructions, so that
    /// under load one message to the backup (and one acknowledgement) carries several answers
    /// (each costs the primary's core a system call into the network stack, and the backup's
    /// core a wake-up); once the guest idles, or idled since the last mark, or does not run
    /// (`idle`), they go at once, so a lone request waits for no one.
    fn commit_due(&self, last_mark: u64, count: u64, idle: bool) -> bool {
        let Some(link) = &self.link else {
            return false;
        };
        let unmarked = self.held.partition_point(|h| h.0 <= last_mark);
        self.held
            .get(unmarked)
            .is_some_and(|h| idle || count.saturating_sub(h.0) >= link.commit_wait())
    }

    /// How many steps the guest may run before the runner next looks at the host, while
    /// protected: every [`HELD_CHUNK`] while outputs wait for their mark or its
    /// acknowledgement (or replicas vote); with nothing waiting, as long as unprotected
    /// ([`CHUNK`]: each output ends a run anyway), or to where input that waits for an
    /// output's mark must go ([`INPUT_GRACE`]). Each look costs a turn of the runner: with
    /// them every [`HELD_CHUNK`] whatever waited, the primary took 2.7 turns a request
    /// against the unreplicated run's 1.05 (docs/benchmarks.md).
    fn look_after(&self, link: &dyn Link, count: u64, unsent: &UnsentInput) -> u64 {
        if !self.held.is_empty() || link.votes() {
            return HELD_CHUNK;
        }
        unsent.0.map_or(CHUNK, |since| {
            since
                .saturating_add(INPUT_GRACE)
                .saturating_sub(count)
                .clamp(MIN_LOOK, CHUNK)
        })
    }

    /// Look at the link to the backup, if any: send out the held outputs it acknowledged
    /// (noting how long each waited), or, when the backup is gone and this side won the
    /// arbiter, drop the link and send them all. False when the backup has just gone.
    fn look(&mut self, con: &mut Console, backends: &Backends) -> Result<bool, RunError> {
        let Some(link) = &mut self.link else {
            return Ok(true);
        };
        match link.check().map_err(RunError::Link)? {
            LinkState::Protected(_) => {
                let hold_times = &mut self.hold_times;
                let telemetry = &self.telemetry;
                link.release(&mut self.held, &mut |(_, since, out)| {
                    let waited = since.elapsed();
                    hold_times.record(waited);
                    if let Some(t) = telemetry {
                        t.held(waited);
                    }
                    emit(out, con, backends);
                });
                Ok(true)
            }
            LinkState::Unprotected => {
                eprintln!("\r\nftvm: the backup is gone; running on unprotected\r");
                for (_, _, out) in self.held.drain(..) {
                    emit(out, con, backends);
                }
                self.link = None;
                Ok(false)
            }
        }
    }
}

/// Which of [`crate::telemetry::EXIT_KINDS`] a turn of the machine ended in.
fn exit_kind(exit: &RunExit) -> usize {
    match exit {
        RunExit::Yield => 0,
        RunExit::Output => 1,
        RunExit::Idle { .. } => 2,
        RunExit::StopAt => 3,
        RunExit::Power(_) => 4,
        RunExit::ToHost(_) => 5,
    }
}

/// Carry out an operator's request (between two steps: nothing here moves an input).
fn control(
    r: Request,
    m: &Machine,
    paused: &mut bool,
    inject: &mut Option<crate::vote::Injection>,
    gate: &mut Gate,
) {
    let count = m.count();
    let answer = match &r.command {
        Command::Pause if *paused => Err(Refusal::Conflict("the guest is paused already".into())),
        Command::Pause => {
            *paused = true;
            if let Some(t) = &gate.telemetry {
                t.set_paused(true);
            }
            eprintln!("\r\nftvm: paused at instruction {count}\r");
            Ok(format!("paused at instruction {count}"))
        }
        Command::Resume if !*paused => Err(Refusal::Conflict("the guest is not paused".into())),
        Command::Resume => {
            *paused = false;
            if let Some(t) = &gate.telemetry {
                t.set_paused(false);
            }
            eprintln!("\r\nftvm: resumed at instruction {count}\r");
            Ok(format!("resumed at instruction {count}"))
        }
        Command::Quit => Ok(format!("quit at instruction {count}")),
        Command::DropBackup => match gate.link.as_mut().map(|l| l.drop_backup()) {
            None => Err(Refusal::Conflict("no backup protects this guest".into())),
            Some(true) => {
                eprintln!("\r\nftvm: the operator dropped the backup at instruction {count}\r");
                Ok(format!(
                    "the backup is dropped at instruction {count}: this side takes the arbiter and runs on unprotected"
                ))
            }
            Some(false) => Err(Refusal::Conflict(
                "this backup cannot be dropped through the API (a group's replica, or a migration's destination: cancel the migration)".into(),
            )),
        },
        Command::AcceptBackups(yes) => {
            if gate.protect.is_none() {
                Err(Refusal::Conflict(
                    "this member takes no backups (a primary does, or a backup given --listen once it is live)"
                        .into(),
                ))
            } else {
                gate.accepting = *yes;
                if let Some(t) = &gate.telemetry {
                    t.set_accepting(*yes);
                }
                Ok(if *yes {
                    "backups may attach".to_string()
                } else {
                    "backups that connect wait until backups are accepted again".to_string()
                })
            }
        }
        Command::Snapshot(path) => {
            if m.has_host_devices() {
                Err(Refusal::Conflict(
                    "snapshots of machines with disks or network devices are not supported yet"
                        .into(),
                ))
            } else {
                let tmp = path.with_extension("tmp");
                let bytes = m.save();
                match std::fs::write(&tmp, &bytes).and_then(|_| std::fs::rename(&tmp, path)) {
                    Ok(()) => Ok(format!(
                        "{} bytes at instruction {count} written to {}",
                        bytes.len(),
                        path.display()
                    )),
                    Err(e) => Err(Refusal::Failed(format!(
                        "cannot write {}: {e}",
                        path.display()
                    ))),
                }
            }
        }
        Command::Inject(_) if inject.is_some() => Err(Refusal::Conflict(
            "a fault is due already: one at a time".into(),
        )),
        Command::Inject(_) if gate.link.as_ref().is_some_and(|l| !l.votes()) => {
            Err(Refusal::Conflict(
                "a fault injected into a pair's primary would reach its backup's replay as a divergence: inject into the replicas of a group (--replicas) or an unprotected guest".into(),
            ))
        }
        Command::Inject(i) => {
            let at = if i.relative {
                count.saturating_add(i.at)
            } else {
                i.at.max(count)
            };
            *inject = Some(crate::vote::Injection {
                at,
                relative: false,
                ..i.clone()
            });
            Ok(format!("{} due at instruction {at}", i.fault))
        }
    };
    r.answer(answer);
}

/// The live loop: run the machine, feed it the host's events through the boundary, send its
/// outputs out (through the gate). `resubmit` are disk requests to serve before anything else.
#[allow(clippy::too_many_arguments)]
pub fn live(
    opts: &Options,
    mut m: Machine,
    backends: Backends,
    events_tx: EventTx,
    events: EventRx,
    mut feed: Feeder,
    mut gate: Gate,
    resubmit: Vec<DiskRequest>,
) -> Result<Ended, RunError> {
    let stop_at = opts.stop_at;
    // A fault still to come (one at a count already passed is not injected).
    let mut inject = opts.inject.as_ref().and_then(|i| i.from_start(m.count()));
    if stop_at < m.count() {
        return Err(RunError::StopAtPast {
            stop_at,
            count: m.count(),
        });
    }
    let virtual_clock = opts.clock == ClockMode::Virtual;
    gate.telemetry = opts.telemetry.clone();
    gate.report(&m, None);
    if let Some(t) = &gate.telemetry {
        if gate.link.is_some() {
            // The first backup attached before the guest started (it paused nothing).
            t.attached(Duration::ZERO);
        }
        t.set_control(Some(events_tx.clone()));
    }
    let mut paused = false;
    let mut con = opts.console(events_tx.clone()).map_err(RunError::Console)?;
    drop(events_tx);
    let mut pending = Pending {
        console_open: opts.capture.is_none(),
        ..Default::default()
    };
    for req in resubmit {
        submit(&backends, &mut pending, req);
    }
    // Auto-converge: the share of time the guest waits while a pre-copy cannot keep up.
    let mut throttle = 0u32;
    let mut handed_over = false;
    let started = Instant::now();
    // Under the host clock, machine time keeps up with the host's (see crate::clock).
    let mut clock = HostClock::new(&m);
    // Where the log was last pushed out to the backup.
    let mut last_mark = m.count();
    // Input that waits in the log for an output's mark.
    let mut unsent = UnsentInput::default();
    // The guest idled since the last mark (its next outputs go at once: group commit).
    let mut idled = false;
    // Two replicas: checkpoints and the log since, to re-execute when they disagree; and a
    // fault injected here that persists (it happens again in every re-execution).
    let mut rechecker: Option<Rechecker> = None;
    let mut persistent: Option<(u64, ftvm_machine::fault::Fault)> = None;
    if let (Some(l), Some(log)) = (&gate.link, &mut feed.log) {
        // A link from the start (the first backup attached before the run): its checkpoints
        // start here.
        if l.rechecks() {
            log.kept = Some(Vec::new());
            rechecker = Some(Rechecker::new(&m, [0; 32]));
        }
    }
    let code = loop {
        // A post-copy destination takes in the RAM pages that arrived.
        if let Some((left, faults)) = m.poll_postcopy(false) {
            if left == 0 {
                eprintln!(
                    "\r\nftvm: post-copy complete: every RAM page arrived ({faults} accesses waited for one)\r"
                );
            }
        }
        feed.fly(&m, true)?;
        let fed_before = feed.fed;
        let next_epoch = feed
            .epoch
            .map_or(u64::MAX, |e| (m.count() / e + 1).saturating_mul(e));
        // A fault to inject: the run stops at its count (and it is injected below).
        let next_inject = inject.as_ref().map_or(u64::MAX, |i| i.at.max(m.count()));
        let exit = if gate
            .link
            .as_ref()
            .is_some_and(|l| l.too_far_ahead(m.count()))
        {
            // The backup's replay trails too far: wait for it (and look at the host meanwhile),
            // once the log up to here is out so that it can catch up.
            if last_mark < m.count() {
                if let Some(log) = &mut feed.log {
                    log.mark(m.count())?;
                }
                last_mark = m.count();
                unsent.pushed();
            } else if unsent.due(m.count(), true) {
                // The guest waits, and its count with it: input that came meanwhile goes now.
                feed.push()?;
            }
            let t0 = Instant::now();
            if let Ok(ev) = events.recv_timeout(Duration::from_millis(1)) {
                pending.take(ev);
            }
            clock.waited(t0.elapsed());
            RunExit::Yield
        } else {
            // While protected, look at the host more often while outputs wait for the backup.
            let chunk = match &gate.link {
                Some(l) => gate.look_after(l.as_ref(), m.count(), &unsent),
                None => CHUNK,
            };
            let t0 = Instant::now();
            let exit = m.run(
                stop_at
                    .min(feed.next_digest)
                    .min(next_epoch)
                    .min(next_inject),
                chunk,
            );
            if throttle > 0 {
                let ran = t0.elapsed();
                let pause = ran * throttle / (100 - throttle);
                std::thread::sleep(pause);
                clock.waited(pause);
            }
            exit
        };
        let was_idle = matches!(exit, RunExit::Idle { .. });
        if let Some(t) = &gate.telemetry {
            t.exit(exit_kind(&exit));
        }
        let count = m.count();
        let mut held_new = false;
        let outputs = gate.take_outputs(&mut m);
        for out in outputs {
            match out {
                Output::Device(DeviceOutput::Disk(req)) => submit(&backends, &mut pending, req),
                out if gate.link.is_some() => {
                    gate.held.push_back((count, Instant::now(), out));
                    held_new = true;
                }
                out => emit(out, &mut con, &backends),
            }
        }
        let voting = gate.link.as_ref().is_some_and(|l| l.votes());
        let mark = if voting {
            // Replicas that vote replay only as far as the log is marked: marked often, they
            // execute beside this one rather than after it, and their votes come sooner.
            held_new || count.saturating_sub(last_mark) >= VOTE_MARK
        } else {
            // A guest that idled since the last mark answers a request that found it idle:
            // nothing is coming to share the mark, and its client waits.
            idled |= was_idle;
            gate.commit_due(last_mark, count, idled)
        };
        if mark {
            mark_log(&mut feed, &mut rechecker, count)?;
            last_mark = count;
            unsent.pushed();
            idled = false;
        }
        if unsent.due(count, was_idle) {
            // Input that no output carried: the guest idles or ran its grace past it.
            feed.push()?;
        }
        // Before anything else at this count takes effect (as a follower injects: after the
        // outputs taken here, before the inputs).
        if inject.as_ref().is_some_and(|i| i.at == m.count()) {
            if let Some(i) = inject.take() {
                i.done();
                // A soft error, modelled: one bit of this replica's state flips here.
                match m.inject(&i.fault) {
                    Ok(what) => {
                        eprintln!(
                            "\r\nftvm: fault injected at instruction {}: {what}{}\r",
                            m.count(),
                            if i.persists { " (it persists)" } else { "" }
                        );
                        if i.persists {
                            persistent = Some((i.at, i.fault));
                            if let Some(r) = &mut rechecker {
                                r.persistent(i.at, i.fault);
                            }
                        }
                    }
                    Err(e) => eprintln!("\r\nftvm: the fault {} was not injected: {e}\r", i.fault),
                }
            }
        }
        gate.report(&m, feed.log.as_ref().map(|l| l.bytes));
        let backup_waiting = gate.protect.as_mut().is_some_and(|p| p.poll());
        if let Some(t) = &gate.telemetry {
            t.copying(gate.protect.as_ref().and_then(|p| p.progress()));
        }
        throttle = 0;
        let may_attach = gate.link.is_none() || gate.protect.as_ref().is_some_and(|p| p.joins());
        if backup_waiting && may_attach && gate.accepting {
            if let Some(mut protect) = gate.protect.take() {
                // Bring the new backup up to date while the guest runs (pre-copy). A copy
                // starts with no disk request in flight: every write from then on is marked.
                if !protect.transferring() {
                    pending
                        .drain_disks(&mut m, &events, &mut feed, &backends, &mut con, &mut gate)?;
                }
                match protect.precopy(&mut m, &mut pending.disk_dirty) {
                    Ok(Precopy::Running { throttle: t }) => throttle = t.min(99),
                    Ok(Precopy::Ready) => {
                        // The last changes and the state: the guest pauses for this, with no
                        // disk request in flight.
                        let t0 = Instant::now();
                        pending.drain_disks(
                            &mut m, &events, &mut feed, &backends, &mut con, &mut gate,
                        )?;
                        if let Some(log) = &mut feed.log {
                            // A member joins the group: its log starts here.
                            log.mark(m.count())?;
                            last_mark = m.count();
                            unsent.pushed();
                        }
                        match protect.attach(&mut m, &mut pending.disk_dirty) {
                            Ok(Attached::Link(link, mut log)) => {
                                rechecker = link.rechecks().then(|| {
                                    log.kept = Some(Vec::new());
                                    let mut r = Rechecker::new(&m, [0; 32]);
                                    if let Some((at, f)) = persistent {
                                        r.persistent(at, f);
                                    }
                                    r
                                });
                                feed.log = Some(log);
                                feed.digest_every = protect.digest_every();
                                feed.next_digest = m.count().saturating_add(feed.digest_every);
                                gate.link = Some(link);
                                if let Some(t) = &gate.telemetry {
                                    t.attached(t0.elapsed());
                                }
                                eprintln!(
                                    "\r\nftvm: attached; the guest paused {:.1} ms\r",
                                    t0.elapsed().as_secs_f64() * 1e3
                                );
                            }
                            Ok(Attached::Joined) => {
                                // A digest right where it joined: the members that were
                                // there check the state it copied.
                                let (count, digest) = (m.count(), *m.digest().as_bytes());
                                if let Some(link) = &gate.link {
                                    link.digest(count, digest);
                                }
                                if let Some(log) = &mut feed.log {
                                    log.record(Record::Digest { count, digest })?;
                                }
                                if let Some(t) = &gate.telemetry {
                                    t.attached(t0.elapsed());
                                }
                                eprintln!(
                                    "\r\nftvm: a replica joined; the guest paused {:.1} ms\r",
                                    t0.elapsed().as_secs_f64() * 1e3
                                );
                            }
                            Err(e) => eprintln!("\r\nftvm: a backup could not attach: {e}\r"),
                        }
                    }
                    Err(e) => eprintln!("\r\nftvm: a backup could not attach: {e}\r"),
                }
                gate.protect = Some(protect);
            }
        }
        if !gate.look(&mut con, &backends)? {
            feed.log = None;
            rechecker = None;
        }
        if let Some(req) = gate.link.as_ref().and_then(|l| l.recheck()) {
            // Two replicas disagree: re-execute from where they last agreed (the guest
            // waits meanwhile; its outputs are held until the group decides).
            let t0 = Instant::now();
            let result = match (&mut rechecker, &mut feed.log) {
                (Some(r), Some(log)) => {
                    r.take_kept(&mut log.kept);
                    r.reexecute(&req).map_err(|e| e.to_string())
                }
                _ => Err("this side kept no checkpoints".to_string()),
            };
            eprintln!(
                "\r\nftvm: re-executed from instruction {} to {} in {:.1} ms{}\r",
                req.from,
                req.to,
                t0.elapsed().as_secs_f64() * 1e3,
                result
                    .as_ref()
                    .err()
                    .map_or(String::new(), |e| format!(": {e}"))
            );
            clock.waited(t0.elapsed());
            if let Some(l) = &gate.link {
                l.rechecked(result);
            }
        }
        if gate
            .link
            .as_ref()
            .is_some_and(|l| l.hand_over_due(m.count()))
        {
            // Live migration: the guest stops here and goes on on the backup.
            handed_over = true;
            break 0;
        }
        match exit {
            RunExit::Yield | RunExit::Output => {}
            RunExit::StopAt
                if m.count() == next_epoch && m.count() < stop_at.min(feed.next_digest) => {}
            RunExit::StopAt
                if m.count() == next_inject
                    && m.count() < stop_at.min(feed.next_digest).min(next_epoch) => {}
            RunExit::StopAt if m.count() == feed.next_digest => {
                let digest = *m.digest().as_bytes();
                let count = m.count();
                if let Some(link) = gate.link.as_ref().filter(|l| l.votes()) {
                    link.digest(count, digest);
                }
                if let Some(log) = &mut feed.log {
                    log.record(Record::Digest { count, digest })?;
                    if let (Some(r), Some(l)) = (&mut rechecker, &gate.link) {
                        // A checkpoint here (where the followers' digests will be compared).
                        r.take_kept(&mut log.kept);
                        r.agreed(l.agreed());
                        r.checkpoint(&m, [0; 32]);
                    }
                }
                feed.next_digest = count.saturating_add(feed.digest_every);
                if count >= stop_at {
                    break 0;
                }
            }
            RunExit::StopAt => break 0,
            RunExit::Power(PowerEvent::Off(c) | PowerEvent::Reset(c)) => break c.min(255) as u8,
            RunExit::ToHost(v) => {
                if v & 1 == 0 {
                    return Err(RunError::Htif(v));
                }
                break (v >> 1).min(255) as u8;
            }
            RunExit::Idle { ticks } => {
                let something_pending = !pending.disk_done.is_empty()
                    || pending
                        .frames
                        .iter()
                        .any(|(&slot, q)| !q.is_empty() && m.net_ready(slot))
                    || (!pending.console.is_empty() && m.console_ready());
                if something_pending {
                    // Inputs are waiting: deliver them below, no time passes.
                } else if virtual_clock && pending.disk_in_flight == 0 && ticks.is_some() {
                    // Idle time is skipped at once.
                    feed.feed(
                        &mut m,
                        Input::Time {
                            ticks: ticks.unwrap_or(0),
                        },
                    )?;
                } else if pending.input_possible(&backends) || ticks.is_some() {
                    // Wait in real time for input or the next timer (under the host clock,
                    // until host time reaches the guest's timer); then, under the host clock,
                    // guest time catches up with the host's (never past the timer).
                    let wait = ticks.map_or(MAX_IDLE_WAIT, |t| {
                        if virtual_clock {
                            Duration::from_nanos(t.saturating_mul(NANOS_PER_TICK))
                                .min(MAX_IDLE_WAIT)
                        } else {
                            clock.wait_for(&m, t, MAX_IDLE_WAIT)
                        }
                    });
                    let t0 = Instant::now();
                    let for_backup = gate.link.as_ref().filter(|_| !gate.held.is_empty());
                    if let Some(fd) = for_backup.and_then(|l| l.wait_fd()) {
                        // The acknowledgement wakes this thread itself (the next look reads
                        // it), and so does any event.
                        match events.wait_with(fd, wait) {
                            Waited::Event(ev) => pending.take(ev),
                            Waited::Ready | Waited::Timeout => {}
                        }
                    } else {
                        // (A link without a descriptor wakes it through its events.)
                        match events.recv_timeout(wait) {
                            Ok(ev) => pending.take(ev),
                            // No backend is left to report (stdin closed, no device): the wait
                            // still takes its time, rather than spinning and logging a Time
                            // input per turn.
                            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
                            Err(RecvTimeoutError::Timeout) => {}
                        }
                    }
                    clock.waited(t0.elapsed());
                    if !virtual_clock {
                        let lag = clock.lag(&m);
                        let ticks = ticks.map_or(lag, |t| lag.min(t));
                        feed.feed(&mut m, Input::Time { ticks })?;
                    }
                } else {
                    return Err(RunError::IdleForever);
                }
            }
        }
        // Gather what the host has, then hand the machine what it can take now.
        while let Ok(ev) = events.try_recv() {
            pending.take(ev);
        }
        if virtual_clock {
            // Reproducible runs complete each disk request before the guest goes on.
            while pending.disk_in_flight > pending.disk_done.len() {
                match events.recv_timeout(Duration::from_secs(30)) {
                    Ok(ev) => pending.take(ev),
                    Err(RecvTimeoutError::Timeout) => return Err(RunError::DiskTimeout),
                    Err(RecvTimeoutError::Disconnected) => return Err(RunError::DiskWorker),
                }
            }
        }
        // Operators' requests; while paused, the guest does not run, but the host's events
        // are still taken in (to be delivered on resume) and the backup still looked at.
        loop {
            while let Some(r) = pending.requests.pop_front() {
                let quit = matches!(r.command, Command::Quit);
                control(r, &m, &mut paused, &mut inject, &mut gate);
                pending.quit |= quit;
            }
            if !paused || pending.quit {
                break;
            }
            if gate.commit_due(last_mark, m.count(), true) {
                // The guest does not run: what it sent goes now.
                mark_log(&mut feed, &mut rechecker, m.count())?;
                last_mark = m.count();
                unsent.pushed();
            }
            if unsent.due(m.count(), true) {
                // The guest does not run: nothing will carry its input soon.
                feed.push()?;
            }
            let t0 = Instant::now();
            match events.recv_timeout(Duration::from_millis(50)) {
                Ok(ev) => pending.take(ev),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => paused = false,
            }
            clock.waited(t0.elapsed());
            if !gate.look(&mut con, &backends)? {
                feed.log = None;
                rechecker = None;
            }
        }
        if pending.quit {
            eprintln!("\r\nftvm: quit at instruction {}\r", m.count());
            break 0;
        }
        let deliver = feed
            .epoch
            .is_none_or(|e| was_idle || m.count().is_multiple_of(e));
        if !deliver {
            continue;
        }
        pending.deliver_disk_done(&mut m, &mut feed)?;
        let fed_outside = feed.fed;
        for (&slot, q) in pending.frames.iter_mut() {
            while m.net_ready(slot) {
                let Some(frame) = q.pop_front() else { break };
                feed.feed(&mut m, Input::Frame { slot, frame })?;
            }
        }
        while m.console_ready() {
            let Some(b) = pending.console.pop_front() else {
                break;
            };
            feed.feed(&mut m, Input::Console(b))?;
        }
        if let (true, Some(l)) = (feed.fed != fed_outside, &gate.link) {
            // What came from the network (or the console) goes to the backup at once, or
            // with the mark of the first output it leads to (`PushInput`).
            if unsent.fed(m.count(), l.push_input()) {
                feed.push()?;
            }
        }
        if let Some((slot, n)) = m.entropy_wanted() {
            let bytes = if virtual_clock {
                // A function of the count alone, so a run resumed from a snapshot gets the
                // same bytes as an uninterrupted one.
                DetEntropy::new(
                    VIRTUAL_ENTROPY_SEED ^ m.count().wrapping_mul(0x9e37_79b9_7f4a_7c15),
                )
                .bytes(n)
            } else {
                ftvm_host::host_entropy(n).map_err(RunError::Entropy)?
            };
            feed.feed(&mut m, Input::Entropy { slot, bytes })?;
        }
        if !virtual_clock {
            let lag = clock.lag(&m);
            if lag > MAX_LAG {
                feed.feed(&mut m, Input::Time { ticks: lag })?;
            }
            if let Some(rate) = clock.rate(&m) {
                feed.feed(&mut m, Input::Rate { rate })?;
            }
        }
        if was_idle && feed.fed == fed_before {
            // An idle guest leaves its WFI only through an input, so that a replay, which
            // runs to the next input, finds it exactly where this run did.
            feed.feed(&mut m, Input::Time { ticks: 0 })?;
        }
    };
    if let Some(t) = &gate.telemetry {
        t.set_role(Role::Stopped);
        t.set_paused(false);
        t.set_control(None);
    }
    // What the guest sent last still waits for the backup (a short while at most).
    let count = m.count();
    let outputs = gate.take_outputs(&mut m);
    for out in outputs {
        match out {
            Output::Console(_) if gate.link.is_some() => {
                gate.held.push_back((count, Instant::now(), out))
            }
            Output::Console(bytes) => con.write_output(&bytes),
            _ => {}
        }
    }
    if let (Some(_), Some(log)) = (&gate.link, &mut feed.log) {
        log.mark(m.count())?;
        let t0 = Instant::now();
        while !gate.held.is_empty() && t0.elapsed() < Duration::from_secs(5) {
            if !gate.look(&mut con, &backends)? {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    if gate.link.is_some() {
        if !gate.held.is_empty() {
            // Never acknowledged under a lease: the backup, if it goes live, sends them.
            eprintln!(
                "\r\nftvm: {} outputs were never acknowledged by the backup; dropped\r",
                gate.held.len()
            );
        }
        gate.held.clear();
    }
    for (_, _, out) in gate.held.drain(..) {
        emit(out, &mut con, &backends);
    }
    drop(con);
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        instructions = m.count(),
        seconds = secs,
        mips = m.count() as f64 / secs / 1e6,
        "run ended"
    );
    if handed_over {
        let count = m.count();
        if let Some(link) = &gate.link {
            link.hand_over(count).map_err(RunError::Link)?;
            // The frames the guest never got here go to the backup, which runs it now: the
            // ones taken in and not delivered first, then those still arriving.
            let mut waiting: VecDeque<(usize, Vec<u8>)> = pending
                .frames
                .iter_mut()
                .flat_map(|(&slot, q)| q.drain(..).map(move |f| (slot, f)))
                .collect();
            link.after_hand_over(m.ram(), &mut |wait| {
                if let Some(f) = waiting.pop_front() {
                    return Some(f);
                }
                match events.recv_timeout(wait) {
                    Ok(Event::Host(HostEvent::Frame { slot, frame })) => Some((slot, frame)),
                    _ => None,
                }
            });
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "ftvm: the guest was handed over at instruction {count} after {secs:.1} s; it runs on the backup now"
        );
        return Ok(Ended {
            code: 0,
            machine: m,
            handed_over: true,
        });
    }
    if let Some(log) = &mut feed.log {
        log.record(Record::End {
            count: m.count(),
            digest: *m.digest().as_bytes(),
            code: code as u32,
        })?;
        eprintln!(
            "ftvm: logged {} instructions, {} events, {} bytes of log in {:.1} s",
            m.count(),
            log.events,
            log.bytes,
            started.elapsed().as_secs_f64()
        );
    }
    // The flight recorder's last segment ends with the End record.
    feed.fly(&m, false)?;
    if let Some(k) = &mut feed.flight {
        k.flush()?;
    }
    if let Some(summary) = gate.hold_times.summary() {
        eprintln!("ftvm: outputs held for the backup: {summary}");
    }
    if let Some(link) = &gate.link {
        // The backup stops once it has the End record; leaving earlier could lose the record
        // (it may still be on its way) and make the backup take over a guest that stopped.
        if !link.hung_up(Duration::from_secs(5)) {
            eprintln!("ftvm: the backup did not confirm the end of the run");
        }
    }
    Ok(Ended {
        code,
        machine: m,
        handed_over: false,
    })
}

/// How long outputs waited for the backup's acknowledgement (output commit), in buckets of
/// 10 µs up to 20 ms.
pub struct HoldTimes {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A link that is always protected and only says how long outputs may gather.
    struct Waits(u64);

    impl Link for Waits {
        fn check(&mut self) -> Result<LinkState, LinkError> {
            Ok(LinkState::Protected(0))
        }
        fn release(&self, _held: &mut VecDeque<Held>, _emit: &mut dyn FnMut(Held)) {}
        fn acked(&self) -> u64 {
            0
        }
        fn too_far_ahead(&self, _count: u64) -> bool {
            false
        }
        fn hung_up(&self, _limit: Duration) -> bool {
            false
        }
        fn commit_wait(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn held_outputs_are_marked_once_the_oldest_unmarked_waited_long_enough_or_the_guest_idles() {
        let mut gate = Gate::open();
        // No link: nothing is held, nothing is marked.
        assert!(!gate.commit_due(0, 1_000_000, true));
        gate = gate.with_link(Box::new(Waits(50)));
        assert!(!gate.commit_due(0, 1_000, true), "nothing held");
        let out = |c: u64| (c, Instant::now(), Output::Console(vec![b'x']));
        gate.held.extend([out(100), out(150), out(170)]);
        // Marked up to 100 already: the oldest unmarked output is 150's.
        assert!(!gate.commit_due(100, 170, false));
        assert!(!gate.commit_due(100, 199, false));
        assert!(gate.commit_due(100, 200, false));
        // Unmarked since 100: due 50 after it.
        assert!(gate.commit_due(99, 150, false));
        // An idle guest sends what it holds at once.
        assert!(gate.commit_due(100, 170, true));
        // All marked: nothing is due, idle or not.
        assert!(!gate.commit_due(170, 10_000, true));
        // Without group commit, every turn's outputs are marked at once.
        let mut gate = Gate::open().with_link(Box::new(Waits(0)));
        gate.held.push_back(out(170));
        assert!(gate.commit_due(100, 170, false));
    }

    #[test]
    fn the_runner_looks_often_only_while_outputs_wait_for_the_backup() {
        let gate = Gate::open().with_link(Box::new(Waits(50)));
        let mut unsent = UnsentInput::default();
        // Nothing waits: as long a run as unprotected.
        assert_eq!(gate.look_after(&Waits(50), 1_000, &unsent), CHUNK);
        // Input waits for an output's mark: the run ends where its grace does (and goes on a
        // little at least once it is that close).
        unsent.fed(1_000, PushInput::WithOutput);
        assert_eq!(gate.look_after(&Waits(50), 1_000, &unsent), INPUT_GRACE);
        assert_eq!(
            gate.look_after(&Waits(50), 1_000 + INPUT_GRACE / 2, &unsent),
            INPUT_GRACE / 2
        );
        assert_eq!(
            gate.look_after(&Waits(50), 1_000 + INPUT_GRACE, &unsent),
            MIN_LOOK
        );
        // Outputs wait for their mark or its acknowledgement: every HELD_CHUNK.
        let mut gate = gate;
        gate.held
            .push_back((900, Instant::now(), Output::Console(vec![b'x'])));
        assert_eq!(gate.look_after(&Waits(50), 1_000, &unsent), HELD_CHUNK);
        unsent.pushed();
        assert_eq!(gate.look_after(&Waits(50), 1_000, &unsent), HELD_CHUNK);
        gate.held.clear();
        assert_eq!(gate.look_after(&Waits(50), 1_000, &unsent), CHUNK);
    }

    #[test]
    fn input_waits_for_an_output_idle_or_its_grace_at_most() {
        let mut u = UnsentInput::default();
        // On arrival: pushed at once, nothing waits.
        assert!(u.fed(100, PushInput::OnArrival));
        assert!(!u.due(100 + INPUT_GRACE, true));
        // With the output: it waits; a mark carries it.
        assert!(!u.fed(100, PushInput::WithOutput));
        assert!(!u.due(100 + INPUT_GRACE - 1, false));
        u.pushed();
        assert!(!u.due(100 + INPUT_GRACE, true));
        // More input while some waits: the grace runs from the first.
        assert!(!u.fed(1_000, PushInput::WithOutput));
        assert!(!u.fed(1_000 + INPUT_GRACE / 2, PushInput::WithOutput));
        assert!(!u.due(1_000 + INPUT_GRACE - 1, false));
        assert!(u.due(1_000 + INPUT_GRACE, false));
        // Once pushed, nothing is due.
        assert!(!u.due(1_000 + 2 * INPUT_GRACE, true));
        // The guest goes idle (or is paused): it goes at once.
        assert!(!u.fed(5_000, PushInput::WithOutput));
        assert!(u.due(5_001, true));
        // Input on arrival after some waited: all of it goes now.
        assert!(!u.fed(9_000, PushInput::WithOutput));
        assert!(u.fed(9_010, PushInput::OnArrival));
        assert!(!u.due(9_010 + INPUT_GRACE, true));
    }

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
