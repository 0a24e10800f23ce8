//! The primary: it attaches backups (state and disks, then the log), holds outputs until the
//! backup holds the log that produced them (output commit, under a lease), heartbeats, and
//! races the arbiter when its backup dies. A backup gone live is a primary too (re-protection).

use std::collections::VecDeque;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftvm_log::{LogWriter, Record};
use ftvm_machine::board::INSTRUCTIONS_PER_MS;
use ftvm_machine::dirty::DirtyPages;
use ftvm_machine::Machine;
use ftvm_runner::live::{Held, LinkError, RELAY_GRACE};
use ftvm_runner::status::StatusFile;
use ftvm_runner::{
    Attached, Backends, Devices, DiskDirty, Ended, Event, Feeder, Gate, Link, LinkState, Options,
    Precopy, Protect,
};

use crate::channel::{Channel, Hello, Msg, Psk, Role};
use crate::group::{Fanout, Group, Member};
use crate::lease::{now_ns, Timing};
use crate::link::{CloseOnDrop, LinkWriter, SendHalf};
use crate::migrate::{Control, Mode, Outcome};
use crate::protocol::{PrimarySide, Received, Verdict};
use crate::transport::{self, Halves};
use crate::wire::{RamBatch, MAX_RAM_PAGES, PAGE};
use crate::{Arbiter, PairConfig, PairError};

/// The primary's view of its backup: the protocol state (under the sending lock), the way to
/// the arbiter, and how far the backup's replay may trail.
pub struct PrimaryLink {
    out: SendHalf<PrimarySide>,
    /// How far (in instructions) the backup's replay may trail before the guest waits.
    max_lag: u64,
    /// When input from outside goes to the backup.
    push_input: ftvm_runner::PushInput,
    /// Group commit (see [`ftvm_runner::Link::commit_wait`]).
    commit_wait: u64,
    arbiter: Arbiter,
    /// A live migration: when the guest goes to the backup, and whom to tell.
    migration: Option<(Mode, Outcome)>,
    /// Hand-over mode: not before this instant.
    hand_over_after: Instant,
    /// The count at which the backup attached.
    attached_at: u64,
    /// The generation the backup attached in.
    generation: u64,
    /// Post-copy: the pages the backup lacks, and its requests for them.
    postcopy: Option<(std::sync::Mutex<DirtyPages>, Receiver<Vec<u64>>)>,
    /// The most bytes per second a migration may send.
    max_bandwidth: Option<u64>,
    /// What the backup sends (the runner takes it in when it looks at the link).
    inbox: Arc<Inbox>,
    /// Outputs were left waiting for an acknowledgement at the last release.
    holding: AtomicBool,
    /// When the runner last took in what the backup sent.
    pumped_at: u64,
}

/// The runner takes in what the backup sent whenever outputs wait for its acknowledgement,
/// and otherwise at least this often (nanoseconds): the receiving thread reads meanwhile, and
/// a look that finds nothing costs a system call.
const PUMP_AT_LEAST: u64 = 2_000_000;

/// What the backup sends, taken in where it is read. The runner reads it itself when it
/// looks at the link between two turns (while outputs wait for an acknowledgement, and
/// otherwise every [`PUMP_AT_LEAST`]), so that an acknowledgement costs no thread hand-off;
/// a receiving thread takes in what arrives while the runner is elsewhere (waiting for input,
/// paused, attaching a backup). Once the runner reads, that thread keeps off the link while
/// the runner reads it: it sleeps ([`ReaderGate`]) until the runner has not read for
/// [`RUNNER_GONE`] (the runner waits for an acknowledgement on the socket itself: see
/// [`Link::wait_fd`]). Left watching the socket, it would wake for every
/// acknowledgement (one a request) on the runner's core and take the locks the runner is
/// about to take: measured, a context switch there and back and a contended lock for each
/// message the runner sent. Whichever of the two reads a message first handles it, in order,
/// under the receiving lock.
pub(crate) struct Inbox {
    rx: std::sync::Mutex<Box<dyn crate::transport::Incoming>>,
    /// Waits for bytes to read without holding `rx`; `None` for a transport without one
    /// (then the thread alone reads, blocking).
    waiter: Option<crate::channel::Waiter>,
    /// `rx`'s descriptor, where the runner waits itself (with a waiter only).
    fd: Option<std::os::fd::RawFd>,
    out: SendHalf<PrimarySide>,
    /// When the backup was last heard from (the attach's watchdog reads it).
    heard: Arc<AtomicU64>,
    /// A post-copy destination's requests for pages.
    pages: Sender<Vec<u64>>,
    /// Wakes the runner.
    wake: ftvm_runner::EventTx,
    /// The link ended: nothing more is read.
    closed: AtomicBool,
    /// The runner reads too (a pair's link is up; a group's leader leaves it to the thread).
    pumped: AtomicBool,
    /// Where the receiving thread sleeps while the runner reads.
    gate: ReaderGate,
}

/// The receiving thread watches the link again once the runner has not read for this long
/// (nanoseconds; it reads at least every [`PUMP_AT_LEAST`] while it runs): it is paused, or
/// busy elsewhere.
const RUNNER_GONE: u64 = 20_000_000;

/// Where a receiving thread sleeps while the runner reads the link itself: until the runner
/// has not read for a while.
#[derive(Default)]
struct ReaderGate {
    /// When the runner last read ([`now_ns`]).
    read_at: AtomicU64,
}

impl ReaderGate {
    /// The runner reads now.
    fn read(&self) {
        self.read_at.store(now_ns(), Ordering::Relaxed);
    }

    /// The thread: sleep while the runner read less than `gone` nanoseconds ago (and `closed`
    /// is not set; a closing link is seen within `gone`).
    fn keep_off(&self, gone: u64, closed: &AtomicBool) {
        while !closed.load(Ordering::SeqCst) {
            let since = now_ns().saturating_sub(self.read_at.load(Ordering::Relaxed));
            if since >= gone {
                return;
            }
            std::thread::sleep(Duration::from_nanos(gone - since));
        }
    }
}

impl Inbox {
    /// Handle what one receive gave (from the thread: `woke`, the runner is woken for what
    /// it must act on); false when the link ended.
    fn take(&self, got: Result<Msg, crate::channel::ChannelError>, woke: bool) -> bool {
        let got = match got {
            Ok(Msg::PageRequest { pages }) => {
                // A post-copy destination's guest waits for these pages.
                let _ = self.pages.send(pages);
                return true;
            }
            Ok(msg) => {
                self.heard.store(now_ns(), Ordering::SeqCst);
                self.out.with(|s| s.receive(now_ns(), &msg))
            }
            Err(e) => {
                if self.out.with(|s| s.handed_over()) {
                    tracing::debug!(error = %e, "replication channel closed after the hand-over");
                } else {
                    tracing::warn!(error = %e, "replication channel closed");
                }
                return self.ended();
            }
        };
        match got {
            // Held outputs may leave now: wake the runner if it waits.
            Ok(Received::Acked(_) | Received::Vote) => {
                if woke {
                    let _ = self.wake.send(Event::Wake);
                }
                true
            }
            // Ignored: this side cut the link (or handed the guest over); nothing of the
            // backup's counts any more, but its closing the link still does (the
            // confirmation of a hand-over).
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "the backup broke the protocol");
                self.ended()
            }
        }
    }

    /// The link ended: it is marked broken, nothing more is read, and the runner is woken.
    fn ended(&self) -> bool {
        self.out.broke();
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.wake.send(Event::Wake);
        false
    }

    /// Take in every whole message that has arrived, without waiting; false when the link
    /// ended.
    fn drain(&self, rx: &mut Box<dyn crate::transport::Incoming>, woke: bool) -> bool {
        loop {
            match rx.try_recv() {
                Ok(None) => return true,
                Ok(Some(m)) => {
                    if !self.take(Ok(m), woke) {
                        return false;
                    }
                }
                Err(e) => return self.take(Err(e), woke),
            }
        }
    }

    /// From the runner: take in what has arrived (`woke`: and wake the runner's wait for
    /// what it must act on). The thread never holds the lock while it waits, so this waits
    /// at most for a drain under way.
    fn pump(&self, woke: bool) {
        if self.waiter.is_none() || self.closed.load(Ordering::SeqCst) {
            return;
        }
        self.gate.read();
        let mut rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        self.drain(&mut rx, woke);
    }

    /// The receiving thread.
    fn serve(&self) {
        let Some(wait) = &self.waiter else {
            loop {
                let got = self.rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                if !self.take(got, true) {
                    return;
                }
            }
        };
        while !self.closed.load(Ordering::SeqCst) {
            if self.pumped.load(Ordering::SeqCst) {
                self.gate.keep_off(RUNNER_GONE, &self.closed);
            }
            wait(Duration::from_millis(100));
            let mut rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
            if !self.drain(&mut rx, true) {
                return;
            }
        }
    }
}

/// A hand-over (migration mode `handover`) happens once the backup's replay, as its last
/// heartbeat told, trails by at most this many instructions (20 ms of guest time: a heartbeat
/// interval and a little): the guest then pauses for about one round trip and that replay.
const HANDOVER_LAG: u64 = 2_000_000;

impl Link for PrimaryLink {
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        // Only while the runner reads the link itself, and it is open (a closed socket is
        // readable for ever: the runner would not wait at all).
        let i = &self.inbox;
        let reads = i.waiter.is_some()
            && i.pumped.load(Ordering::SeqCst)
            && !i.closed.load(Ordering::SeqCst);
        i.fd.filter(|_| reads)
    }
    fn push_input(&self) -> ftvm_runner::PushInput {
        self.push_input
    }
    fn commit_wait(&self) -> u64 {
        self.commit_wait
    }
    fn check(&mut self) -> Result<LinkState, LinkError> {
        let now = now_ns();
        // While outputs wait and a log message awaits its answer (only marked outputs wait
        // for one; a look that finds nothing costs a system call).
        let answer = self.holding.load(Ordering::Relaxed) && self.out.with(|s| s.awaits_answer());
        if answer || now.saturating_sub(self.pumped_at) >= PUMP_AT_LEAST {
            self.inbox.pump(false);
            self.pumped_at = now;
        }
        if let Some((_, outcome)) = &self.migration {
            if outcome.0.cancelled() {
                self.out.cut_if(|s| {
                    s.give_up();
                    ((), true)
                });
            }
        }
        // A dead backup makes the side cut every tie first (the connection closes under the
        // sending lock); then it races the arbiter.
        let (verdict, why, lease_until) = self.out.cut_if(|s| {
            // As the state was before the check (the words only for a race: formatting them
            // at every look cost the runner measurably).
            let (broken, heard) = (s.broken(), s.last_heard());
            let v = s.check(now);
            let race = matches!(v, Verdict::Race { .. });
            let why = match (race, broken) {
                (false, _) => String::new(),
                (true, true) => "its link broke".to_string(),
                (true, false) => format!(
                    "nothing heard for {} ms",
                    now.saturating_sub(heard) / 1_000_000
                ),
            };
            ((v, why, s.lease_until()), race)
        });
        match verdict {
            Verdict::Protected { acked } => Ok(LinkState::Protected(acked)),
            Verdict::Race { generation } => {
                if let Some((_, outcome)) = self.migration.take() {
                    // A migration's destination goes live only when handed the guest, or by
                    // winning the arbiter: without one, this side runs on.
                    let why = if outcome.0.cancelled() {
                        "cancelled by the operator".to_string()
                    } else {
                        format!("the destination was lost ({why})")
                    };
                    let won = match self.arbiter {
                        Arbiter::None => true,
                        _ => self
                            .arbiter
                            .test_and_set(generation, "primary")
                            .map_err(PairError::from)?,
                    };
                    if won {
                        outcome.0.finished(Err(why));
                        return Ok(LinkState::Unprotected);
                    }
                    outcome.0.finished(Ok(
                        "the destination won the arbiter: the guest runs there".into()
                    ));
                } else if self
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
        self.holding.store(!held.is_empty(), Ordering::Relaxed);
    }
    fn acked(&self) -> u64 {
        self.out.with(|s| s.acked())
    }
    fn generation(&self) -> u64 {
        self.generation
    }
    fn drop_backup(&mut self) -> bool {
        if self.migration.is_some() {
            // A migration's destination is cancelled, not dropped.
            return false;
        }
        // Fenced as if the backup had died: the next check cuts the link and races.
        self.out.with(|s| s.give_up());
        true
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
    fn hand_over_due(&self, count: u64) -> bool {
        match &self.migration {
            Some((Mode::Precopy | Mode::Postcopy, _)) => true,
            Some((Mode::HandOver, o)) => {
                // The destination follows: it reported a replay past the attach, close behind.
                let replayed = self.out.with(|s| s.replayed());
                !o.0.cancelled()
                    && Instant::now() >= self.hand_over_after
                    && replayed > self.attached_at
                    && count.saturating_sub(replayed) <= HANDOVER_LAG
            }
            None => false,
        }
    }
    fn hand_over(&self, count: u64) -> Result<(), LinkError> {
        let Some((_, outcome)) = &self.migration else {
            return Err("no migration is under way".into());
        };
        let missing = self.postcopy.as_ref().map_or(Vec::new(), |(m, _)| {
            m.lock().unwrap_or_else(|e| e.into_inner()).to_bytes()
        });
        if !self.out.send_with(|s| s.hand_over(count, missing)) {
            let why = "the link to the destination broke during the hand-over: the guest may run there; this side stops".to_string();
            outcome.0.finished(Ok(why.clone()));
            return Err(why.into());
        }
        outcome
            .0
            .progress(&format!("the guest was handed over at instruction {count}"));
        Ok(())
    }
    fn after_hand_over(
        &self,
        ram: &[u8],
        next_frame: &mut dyn FnMut(Duration) -> Option<(usize, Vec<u8>)>,
    ) {
        let t0 = Instant::now();
        let grace_until = t0 + RELAY_GRACE;
        let (mut relayed, mut pushed, mut asked) = (0usize, 0usize, 0usize);
        let mut cursor = 0usize;
        let mut sent_bytes = 0u64;
        let mut reported = false;
        loop {
            let now = Instant::now();
            if self.out.with(|s| s.broken()) {
                break;
            }
            if !reported && self.postcopy.is_none() && self.out.with(|s| s.hand_over_confirmed()) {
                // The destination runs the guest: that is the migration's end for its
                // operator; relaying the frames still on their way is this side's epilogue.
                if let Some((_, outcome)) = &self.migration {
                    outcome.0.finished(Ok(format!(
                        "the destination runs the guest (it confirmed the hand-over {:.1} ms after it was sent)",
                        t0.elapsed().as_secs_f64() * 1e3
                    )));
                }
                reported = true;
            }
            // Frames that reach this side go to the backup while the network learns where the
            // guest went.
            if now < grace_until {
                let wait = if self.postcopy.is_some() {
                    Duration::ZERO
                } else if !reported {
                    (grace_until - now).min(Duration::from_millis(1))
                } else {
                    grace_until - now
                };
                if let Some((slot, frame)) = next_frame(wait) {
                    if let Ok(slot) = u32::try_from(slot) {
                        self.out.send_with(|s| s.relay(slot, frame));
                        relayed += 1;
                    }
                    continue;
                }
            }
            let Some((missing, requests)) = &self.postcopy else {
                if Instant::now() >= grace_until {
                    break;
                }
                continue;
            };
            let mut missing = missing.lock().unwrap_or_else(|e| e.into_inner());
            // The pages the backup's guest waits for first, then the rest in order.
            let mut batch: Vec<usize> = Vec::new();
            while let Ok(pages) = requests.try_recv() {
                for p in pages {
                    if let Ok(p) = usize::try_from(p) {
                        if missing.is_dirty(p) && batch.len() < MAX_RAM_PAGES {
                            missing.unmark(p);
                            batch.push(p);
                            asked += 1;
                        }
                    }
                }
            }
            while batch.len() < PUSH_PAGES && cursor < missing.pages() {
                if missing.is_dirty(cursor) {
                    missing.unmark(cursor);
                    batch.push(cursor);
                    pushed += 1;
                }
                cursor += 1;
            }
            let done = missing.count() == 0;
            drop(missing);
            if batch.is_empty() {
                if done && now >= grace_until {
                    break;
                }
                // Only frames may still come: wait for them a little.
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            let mut msg = RamBatch::default();
            for &p in &batch {
                msg.push(p as u64, &ram[p * PAGE..(p + 1) * PAGE]);
            }
            let RamBatch { pages, data } = msg;
            sent_bytes += (pages.len() * 8 + data.len()) as u64;
            self.out.send_with(|s| s.pages_after_hand_over(pages, data));
            if let Some(cap) = self.max_bandwidth {
                let due = Duration::from_secs_f64(sent_bytes as f64 / cap as f64);
                if let Some(ahead) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
        }
        // The destination acknowledges the hand-over as soon as it has it; closing the link
        // before could lose it (a reset discards what the peer has not read yet).
        let t1 = Instant::now();
        while !self.out.with(|s| s.hand_over_confirmed()) && t1.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let confirmed = self.out.with(|s| s.hand_over_confirmed());
        let broken = self.out.with(|s| s.broken());
        let left = self.postcopy.as_ref().map_or(0, |(m, _)| {
            m.lock().unwrap_or_else(|e| e.into_inner()).count()
        });
        self.out.broke();
        eprintln!("\r\nftvm: {relayed} frames that arrived here after the hand-over were relayed to the destination\r");
        if let Some((_, outcome)) = &self.migration {
            let pages = if self.postcopy.is_some() {
                format!(
                    "; post-copy: {} pages sent ({asked} asked for, {pushed} pushed) in {} ms",
                    asked + pushed,
                    t0.elapsed().as_millis()
                )
            } else {
                String::new()
            };
            let m = format!(
                "the destination runs the guest{}; {relayed} frames that arrived here on their way relayed to it{pages}",
                if confirmed {
                    ""
                } else {
                    " (it did not confirm within 5 s)"
                }
            );
            if broken && left > 0 {
                outcome.0.finished(Err(format!(
                    "the link to the destination broke with {left} pages not sent: the destination cannot run the guest on; {m}"
                )));
            } else {
                outcome.0.finished(Ok(m));
            }
        }
    }
}

/// Pages pushed per message after a post-copy hand-over (64 KiB: a page asked for waits at
/// most about one such message).
const PUSH_PAGES: usize = 16;

/// Marks an attach finished when dropped, however it ends.
struct Finished(Arc<AtomicBool>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Disk contents travel in pieces of this size; in the first pass, pieces that are all zero
/// are not sent.
const DISK_PIECE: usize = 1 << 20;
/// RAM pages the runner copies into messages per step of a pre-copy, at most (1 MiB: the
/// guest waits while the runner copies, a fraction of a millisecond).
const PAGES_PER_STEP: usize = MAX_RAM_PAGES;
/// RAM pages the runner looks at per step, at most (in round 1, zero pages are skipped; a
/// page the guest never touched costs a page fault to look at).
const SCAN_PER_STEP: usize = 8 * PAGES_PER_STEP;
/// Messages queued for the sending thread, at most (4 MiB of RAM pages).
const QUEUE: usize = 4;
/// Rounds of a pre-copy, at most, before the guest pauses for what is left however large.
const MAX_ROUNDS: u32 = 30;
/// A round whose expected pause is below this ends the pre-copy at once.
const GOOD_ENOUGH: Duration = Duration::from_millis(1);

/// Work for the thread that sends a backup its state.
enum Job {
    /// A message (RAM pages), and the bytes it counts for in `queued`.
    Send(Msg, u64),
    /// The disks' whole contents (pieces that are all zero are skipped: the backup's copy
    /// starts zeroed).
    WholeDisks,
    /// Disk ranges `(index, offset, len)` the guest wrote since they were sent, zeros and all.
    DiskRanges(Vec<(usize, u64, u64)>),
    /// Answer once everything queued before has been written.
    Flush(mpsc::Sender<()>),
}

/// What the sending thread has done, for the runner's decisions and the progress lines.
#[derive(Default)]
struct Sent {
    ram: AtomicU64,
    disk: AtomicU64,
    /// Bytes of RAM pages queued and not written yet.
    queued: AtomicU64,
    /// Nanoseconds the thread spent writing (for the bandwidth).
    busy_ns: AtomicU64,
    failed: std::sync::Mutex<Option<String>>,
}

impl Sent {
    fn fail(&self, why: String) {
        let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        f.get_or_insert(why);
    }
    fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// Bytes per second while writing, once something was written.
    fn bandwidth(&self) -> Option<f64> {
        let busy = self.busy_ns.load(Ordering::Relaxed);
        let bytes = self.ram.load(Ordering::Relaxed) + self.disk.load(Ordering::Relaxed);
        (busy > 1_000_000 && bytes > 0).then(|| bytes as f64 * 1e9 / busy as f64)
    }
}

/// The sending thread: writes RAM pages and reads and writes disk contents, in the order
/// queued, while the runner goes on running the guest.
fn send_state(
    out: SendHalf<PrimarySide>,
    files: Vec<(std::fs::File, u64)>,
    jobs: Receiver<Job>,
    sent: Arc<Sent>,
    wake: ftvm_runner::EventTx,
    max_bandwidth: Option<u64>,
) {
    let started = Instant::now();
    let mut written = 0u64;
    let mut write = |msg: Msg| -> bool {
        let bytes = crate::wire::payload_len(&msg) as u64;
        let t0 = Instant::now();
        let ok = out.send_with(|_| Some(msg));
        sent.busy_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        written += bytes;
        if let Some(cap) = max_bandwidth {
            // Keep to the cap on average since the start; the pause counts as time the link
            // was busy, so the expected pause of a round reflects the cap too.
            let due = Duration::from_secs_f64(written as f64 / cap as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
                sent.busy_ns
                    .fetch_add(ahead.as_nanos() as u64, Ordering::Relaxed);
            }
        }
        ok
    };
    let gone = "the backup stopped receiving while its state was sent".to_string();
    let mut piece = vec![0u8; DISK_PIECE];
    for job in jobs {
        match job {
            Job::Send(msg, bytes) => {
                if !write(msg) {
                    sent.fail(gone);
                    return;
                }
                sent.queued.fetch_sub(bytes, Ordering::Relaxed);
                sent.ram.fetch_add(bytes, Ordering::Relaxed);
                // A runner that waits for an idle guest's next timer copies more now.
                let _ = wake.send(Event::Wake);
            }
            Job::WholeDisks | Job::DiskRanges(_) => {
                let skip_zero = matches!(job, Job::WholeDisks);
                let ranges = match job {
                    Job::DiskRanges(r) => r,
                    _ => files
                        .iter()
                        .enumerate()
                        .map(|(i, (_, len))| (i, 0, *len))
                        .collect(),
                };
                for (index, start, len) in ranges {
                    let Some((f, size)) = files.get(index) else {
                        continue;
                    };
                    let end = start.saturating_add(len).min(*size);
                    let mut offset = start;
                    while offset < end {
                        let n = (end - offset).min(DISK_PIECE as u64) as usize;
                        if let Err(e) = f.read_exact_at(&mut piece[..n], offset) {
                            sent.fail(format!("cannot read a disk: {e}"));
                            return;
                        }
                        if !skip_zero || piece[..n].iter().any(|&b| b != 0) {
                            let data = piece[..n].to_vec();
                            if !write(Msg::Disk {
                                index: index as u32,
                                offset,
                                data,
                            }) {
                                sent.fail(gone);
                                return;
                            }
                            sent.disk.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        offset += n as u64;
                    }
                }
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// A backup being brought up to date while the guest runs: iterative pre-copy, as in Clark et
/// al. (NSDI 2005). Round 1 sends every page that is not zero and the disks; each later round
/// sends the pages (and disk blocks) the guest wrote during the one before; when what is left
/// would take less than the pause budget, the guest pauses for the rest and the state.
struct Transfer {
    generation: u64,
    out: SendHalf<PrimarySide>,
    /// Closes the link if the transfer ends before the backup is attached.
    cut: CloseOnDrop<PrimarySide>,
    /// Stops the watchdog when the transfer ends.
    _watchdog: Finished,
    jobs: mpsc::SyncSender<Job>,
    sender: Option<std::thread::JoinHandle<()>>,
    sent: Arc<Sent>,
    round: u32,
    /// Pages of this round not copied yet (in descending order: the next is last).
    todo: Vec<usize>,
    /// A message the queue had no room for.
    stash: Option<(Msg, u64)>,
    /// Round 1 skips zero pages (the backup's RAM starts zeroed); later rounds send them.
    skip_zero: bool,
    /// Pages dirtied during the previous round (to see whether rounds still converge).
    last_dirty: usize,
    round_started: Instant,
    started: Instant,
    /// Pages written during each round, per second (the guest's dirty rate).
    dirty_rate: f64,
    throttle: u32,
    /// A live migration (else a backup of a pair).
    migration: Option<(Mode, Outcome)>,
    /// Wakes the runner.
    wake: ftvm_runner::EventTx,
    /// Hand-over mode: how long the destination follows in lockstep, at least.
    lockstep: Duration,
    /// Post-copy: the pages found not zero so far (the scan that replaces the rounds).
    scan: Option<DirtyPages>,
    /// The most bytes per second a migration may send.
    max_bandwidth: Option<u64>,
    /// Post-copy: answers once the disks' contents are written.
    disks_done: Option<Receiver<()>>,
    /// The backup's requests for pages (post-copy, after the hand-over).
    page_requests: Option<Receiver<Vec<u64>>>,
    /// What the backup sends, taken in.
    inbox: Arc<Inbox>,
}

impl Transfer {
    /// Copy pages of this round into messages while the queue has room; false once the round
    /// is all queued.
    fn fill(&mut self, m: &Machine) -> bool {
        let ram = m.ram();
        if let Some(scan) = &mut self.scan {
            // Post-copy sends no RAM before the hand-over: only find the pages not zero (the
            // others the destination has already), a bounded number per step.
            for _ in 0..SCAN_PER_STEP {
                let Some(p) = self.todo.pop() else { break };
                if !ftvm_machine::snapshot::page_is_zero(&ram[p * PAGE..(p + 1) * PAGE]) {
                    scan.mark(p);
                }
            }
            if !self.todo.is_empty() {
                let _ = self.wake.send(Event::Wake);
            }
            return !self.todo.is_empty();
        }
        let (mut copies, mut scans) = (PAGES_PER_STEP, SCAN_PER_STEP);
        loop {
            let (msg, bytes) = match self.stash.take() {
                Some(x) => x,
                None => {
                    if self.todo.is_empty() || copies == 0 || scans == 0 {
                        if !self.todo.is_empty() {
                            // The queue has room: the runner comes back at once, even for an
                            // idle guest (it would wait for the guest's next timer).
                            let _ = self.wake.send(Event::Wake);
                        }
                        return !self.todo.is_empty();
                    }
                    let mut batch = RamBatch::default();
                    while batch.len() < MAX_RAM_PAGES && copies > 0 && scans > 0 {
                        let Some(p) = self.todo.pop() else { break };
                        scans -= 1;
                        let bytes = &ram[p * PAGE..(p + 1) * PAGE];
                        if self.skip_zero && ftvm_machine::snapshot::page_is_zero(bytes) {
                            continue;
                        }
                        copies -= 1;
                        batch.push(p as u64, bytes);
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    batch.take()
                }
            };
            match self.jobs.try_send(Job::Send(msg, bytes)) {
                Ok(()) => {
                    self.sent.queued.fetch_add(bytes, Ordering::Relaxed);
                }
                Err(mpsc::TrySendError::Full(Job::Send(msg, bytes))) => {
                    self.stash = Some((msg, bytes));
                    return true;
                }
                Err(_) => return true,
            }
        }
    }

    /// Queue (blocking) every page left of this round, the pages `left` (sent even if zero),
    /// and the disk `ranges`; then wait until all is written.
    fn flush_all(
        &mut self,
        m: &Machine,
        left: &[usize],
        ranges: Vec<(usize, u64, u64)>,
    ) -> Result<(), PairError> {
        let gone = || {
            PairError::Protocol(
                self.sent
                    .failure()
                    .unwrap_or_else(|| "the backup stopped receiving".into()),
            )
        };
        if let Some((msg, bytes)) = self.stash.take() {
            self.sent.queued.fetch_add(bytes, Ordering::Relaxed);
            self.jobs.send(Job::Send(msg, bytes)).map_err(|_| gone())?;
        }
        let ram = m.ram();
        let mut todo = std::mem::take(&mut self.todo);
        todo.reverse();
        let rest = todo.iter().map(|&p| (p, self.skip_zero));
        let all: Vec<(usize, bool)> = rest.chain(left.iter().map(|&p| (p, false))).collect();
        for chunk in all.chunks(MAX_RAM_PAGES) {
            let mut batch = RamBatch::default();
            for &(p, skip_zero) in chunk {
                let bytes = &ram[p * PAGE..(p + 1) * PAGE];
                if skip_zero && ftvm_machine::snapshot::page_is_zero(bytes) {
                    continue;
                }
                batch.push(p as u64, bytes);
            }
            if batch.is_empty() {
                continue;
            }
            let (msg, bytes) = batch.take();
            self.sent.queued.fetch_add(bytes, Ordering::Relaxed);
            self.jobs.send(Job::Send(msg, bytes)).map_err(|_| gone())?;
        }
        if !ranges.is_empty() {
            self.jobs
                .send(Job::DiskRanges(ranges))
                .map_err(|_| gone())?;
        }
        let (tx, rx) = mpsc::channel();
        self.jobs.send(Job::Flush(tx)).map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?;
        match self.sent.failure() {
            Some(why) => Err(PairError::Protocol(why)),
            None => Ok(()),
        }
    }

    fn mib(b: u64) -> f64 {
        b as f64 / (1 << 20) as f64
    }

    /// The pause that sending `pages` and `disk` bytes would take at the bandwidth seen.
    fn expected_pause(&self, pages: usize, disk: u64) -> Duration {
        let bytes = (pages * PAGE) as f64 + disk as f64;
        let bw = self.sent.bandwidth().unwrap_or(100e6);
        Duration::from_secs_f64(bytes / bw)
    }
}

/// Where a pre-copy stands at the end of a round.
#[derive(Clone, Copy, Debug)]
struct RoundEnd {
    round: u32,
    /// Pages the guest dirtied during the round, and during the one before.
    dirty: usize,
    last_dirty: usize,
    /// The pause sending those pages would take.
    pause: Duration,
    max_downtime: Duration,
    /// Bytes per second the guest dirtied, and the link carried.
    dirty_rate: f64,
    bandwidth: f64,
    /// The guest's throttle so far (percent of the time it waits).
    throttle: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Pause the guest for the rest.
    Stop,
    /// Another round, with the guest throttled this much.
    Round { throttle: u32 },
}

/// The pre-copy's policy: stop when the rest is small (under [`GOOD_ENOUGH`]), or fits the
/// budget and rounds no longer halve it, or after [`MAX_ROUNDS`]. Auto-converge: from round 4
/// on, a guest still over the budget that dirties faster than half the link's bandwidth is
/// slowed, more each round (as QEMU does: 20%, then 10% more per round, up to 99%).
fn round_end(r: RoundEnd) -> Next {
    let converged = r.dirty * 2 > r.last_dirty;
    if r.pause <= GOOD_ENOUGH || (r.pause <= r.max_downtime && converged) || r.round >= MAX_ROUNDS {
        return Next::Stop;
    }
    let throttle = if r.round >= 4 && r.pause > r.max_downtime && r.dirty_rate * 2.0 > r.bandwidth {
        if r.throttle == 0 {
            20
        } else {
            (r.throttle + 10).min(99)
        }
    } else {
        r.throttle
    };
    Next::Round { throttle }
}

/// Say how a pre-copy goes: on the terminal, and to the operator of a migration.
fn report(control: &Option<Arc<Control>>, m: &str) {
    match control {
        Some(c) if c.request().is_some() => c.progress(m),
        _ => eprintln!("\r\nftvm: {m}\r"),
    }
}

/// What a side needs to protect its guest with a backup: the backups that connect, and
/// how to bring one up to date (the guest's state, the disks' contents, then the log).
pub struct Protector {
    incoming: Receiver<Halves>,
    /// A backup that connected while another protected the guest: it attaches next.
    standby: Option<Halves>,
    /// The backup being brought up to date.
    transfer: Option<Transfer>,
    /// The generation the next backup starts.
    next_generation: u64,
    arbiter: Arbiter,
    disks: Vec<PathBuf>,
    timing: Timing,
    digest_every: u64,
    max_lag: u64,
    push_input: ftvm_runner::PushInput,
    commit_wait: u64,
    /// The pause a pre-copy aims to stay under when it stops the guest for the rest.
    max_downtime: Duration,
    wake: ftvm_runner::EventTx,
    /// Live migrations asked for on the control socket (a source that is no pair member).
    control: Option<Arc<Control>>,
    /// N-modular redundancy: the number of replicas (the leader among them), and the group
    /// of followers once the first one attached.
    replicas: Option<usize>,
    group: Option<Group>,
    /// The address backups connect to, when this side listens on TCP (`:0` asks the kernel
    /// for a free port: this is the one it gave).
    listening: Option<SocketAddr>,
}

impl Protector {
    /// Accept backups on `listen` (authenticated with the pair's key) from now on; the first
    /// one starts generation `next_generation`.
    pub fn start(
        listen: &str,
        cfg: &PairConfig,
        next_generation: u64,
        devices: &Devices,
        wake: ftvm_runner::EventTx,
    ) -> Result<Protector, PairError> {
        let listener = TcpListener::bind(listen)
            .map_err(PairError::io(format!("cannot listen on {listen}")))?;
        let listening = listener.local_addr().ok();
        let (tx, incoming) = mpsc::channel();
        let waker = wake.clone();
        let psk: Psk = cfg.psk.clone();
        let hello = Hello::new(Role::Primary, cfg.mem_bytes, cfg.layout(devices));
        crate::link::spawn("pair-accept", move || {
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
        let mut p = Protector::new(incoming, cfg, next_generation, devices, wake);
        p.listening = listening;
        Ok(p)
    }

    /// The address backups connect to (see [`Protector::start`]); `None` when they arrive
    /// over another transport.
    pub fn listening(&self) -> Option<SocketAddr> {
        self.listening
    }

    /// Protect with the backups that arrive on `incoming` (over any transport).
    pub fn new(
        incoming: Receiver<Halves>,
        cfg: &PairConfig,
        next_generation: u64,
        devices: &Devices,
        wake: ftvm_runner::EventTx,
    ) -> Protector {
        Protector {
            incoming,
            standby: None,
            transfer: None,
            next_generation,
            arbiter: cfg.arbiter.clone(),
            disks: devices.disks.clone(),
            timing: cfg.timing,
            digest_every: cfg.digest_every,
            max_lag: cfg.max_lag_ms.saturating_mul(INSTRUCTIONS_PER_MS),
            push_input: cfg.push_input,
            commit_wait: cfg.commit_wait,
            max_downtime: cfg.max_downtime,
            wake,
            control: None,
            replicas: cfg.replicas,
            group: None,
            listening: None,
        }
    }

    /// Move the guest to the destinations that arrive on `incoming` (connected by the control
    /// socket's thread, see [`crate::migrate`]), as `control` asks.
    pub fn for_migration(
        incoming: Receiver<Halves>,
        cfg: &PairConfig,
        devices: &Devices,
        wake: ftvm_runner::EventTx,
        control: Arc<Control>,
    ) -> Protector {
        let mut p = Protector::new(incoming, cfg, 0, devices, wake);
        p.arbiter = Arbiter::None;
        p.control = Some(control);
        p
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

    /// Start bringing the waiting backup up to date (no disk request may be in flight): the
    /// generation, then, from a sending thread, the disks and RAM while the guest runs on.
    fn begin(&mut self, m: &mut Machine) -> Result<Transfer, PairError> {
        let Some((mut tx, mut rx)) = self.standby.take() else {
            return Err(PairError::Protocol("no backup waits to attach".into()));
        };
        let mut migration = None;
        let (mut lockstep, mut max_bandwidth) = (Duration::ZERO, None);
        if let Some(control) = &self.control {
            let Some(req) = control.request() else {
                return Err(PairError::Protocol(
                    "a destination connected with no migration asked for".into(),
                ));
            };
            self.arbiter = match &req.arbiter {
                Some(a) => Arbiter::parse(a)?,
                None => Arbiter::None,
            };
            self.max_downtime = req.max_downtime;
            lockstep = req.lockstep;
            max_bandwidth = req.max_bandwidth;
            migration = Some((req.mode, Outcome(control.clone())));
        }
        // A follower joins its group's generation; a backup starts the next one.
        let generation = match &self.group {
            // The group's current generation (it moves on each time the leader wins one).
            Some(g) => g.lock().generation,
            None => self.next_generation,
        };
        if self.arbiter.taken(generation)? {
            return Err(PairError::Protocol(format!(
                "generation {generation} of the arbiter was already won: refusing the backup"
            )));
        }
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
        let watchdog = Finished(attaching.clone());
        {
            let (heard, attaching) = (heard.clone(), attaching.clone());
            let close = out.closer()?;
            let stall = u64::try_from(self.timing.stall().as_nanos()).unwrap_or(u64::MAX);
            let beat = self.timing.beat;
            crate::link::spawn("attach-watch", move || {
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
        let (page_tx, page_rx) = mpsc::channel::<Vec<u64>>();
        let inbox = Arc::new(Inbox {
            waiter: rx.waiter(),
            fd: rx.raw_fd(),
            rx: std::sync::Mutex::new(rx),
            out: out.clone(),
            heard,
            pages: page_tx,
            wake: self.wake.clone(),
            closed: AtomicBool::new(false),
            pumped: AtomicBool::new(false),
            gate: ReaderGate::default(),
        });
        {
            let inbox = inbox.clone();
            crate::link::spawn("link-rx", move || inbox.serve());
        }
        // Whatever fails from here on closes the link, so the backup does not wait for more.
        let cut = CloseOnDrop(Some(out.clone()));
        let attach = Msg::Attach {
            generation,
            disks: files.iter().map(|(_, len)| *len).collect(),
        };
        if !out.send_with(|_| Some(attach)) {
            return Err(PairError::Protocol(
                "the backup stopped receiving while its state was sent".into(),
            ));
        }
        // Heartbeats from now on (the backup takes them with the disks), each stamped.
        out.heartbeats(self.timing.beat, |s, now| s.heartbeat(now));
        let sent = Arc::new(Sent::default());
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let sender = {
            let (out, sent, wake) = (out.clone(), sent.clone(), self.wake.clone());
            crate::link::spawn("state-tx", move || {
                send_state(out, files, queue, sent, wake, max_bandwidth)
            })
        };
        jobs.send(Job::WholeDisks)
            .map_err(|_| PairError::Protocol("the sending thread stopped".into()))?;
        let postcopy = matches!(migration, Some((Mode::Postcopy, _)));
        let disks_done = if postcopy {
            let (tx, rx) = mpsc::channel();
            jobs.send(Job::Flush(tx))
                .map_err(|_| PairError::Protocol("the sending thread stopped".into()))?;
            Some(rx)
        } else {
            None
        };
        // Round 1: every page, from here on every write marked.
        m.take_dirty();
        let pages = m.ram().len() / PAGE;
        Ok(Transfer {
            generation,
            out,
            cut,
            _watchdog: watchdog,
            jobs,
            sender: Some(sender),
            sent,
            round: 1,
            todo: (0..pages).rev().collect(),
            stash: None,
            skip_zero: true,
            last_dirty: pages,
            round_started: Instant::now(),
            started: Instant::now(),
            dirty_rate: 0.0,
            throttle: 0,
            migration,
            wake: self.wake.clone(),
            lockstep,
            scan: postcopy.then(|| DirtyPages::new(pages)),
            max_bandwidth,
            disks_done,
            page_requests: Some(page_rx),
            inbox,
        })
    }

    /// One step of the pre-copy (see [`Protect::precopy`]).
    fn step(&mut self, m: &mut Machine, disks: &mut DiskDirty) -> Result<Precopy, PairError> {
        if self.transfer.is_none() {
            let t = self.begin(m)?;
            // Disk writes from here on are sent again.
            disks.take();
            report(
                &self.control,
                &format!(
                    "{} to the {} (generation {}) started: {} MiB of RAM",
                    if t.scan.is_some() {
                        "post-copy (the disks first)"
                    } else {
                        "pre-copy"
                    },
                    if t.migration.is_some() {
                        "destination"
                    } else {
                        "backup"
                    },
                    t.generation,
                    m.ram().len() >> 20
                ),
            );
            self.transfer = Some(t);
        }
        let max_downtime = self.max_downtime;
        if self.control.as_ref().is_some_and(|c| c.cancelled()) {
            return Err(PairError::Protocol("cancelled by the operator".into()));
        }
        let Some(t) = self.transfer.as_mut() else {
            return Err(PairError::Protocol("no transfer".into()));
        };
        if let Some(why) = t.sent.failure() {
            return Err(PairError::Protocol(why));
        }
        if t.out.with(|s| s.broken()) {
            return Err(PairError::Protocol(
                "the backup's link broke while its state was sent".into(),
            ));
        }
        if t.fill(m) || t.sent.queued.load(Ordering::Relaxed) > 0 {
            return Ok(Precopy::Running {
                throttle: t.throttle,
            });
        }
        if t.scan.is_some() {
            // Post-copy: ready once the disks are there (RAM comes after the hand-over).
            return Ok(match t.disks_done.as_ref().map(|d| d.try_recv()) {
                Some(Err(mpsc::TryRecvError::Empty)) => Precopy::Running { throttle: 0 },
                _ => Precopy::Ready,
            });
        }
        // The round is written: what did the guest dirty meanwhile?
        let dirty = m.dirty_count();
        let secs = t.round_started.elapsed().as_secs_f64().max(1e-6);
        t.dirty_rate = (dirty * PAGE) as f64 / secs;
        let pause = t.expected_pause(dirty, disks.bytes());
        let bw = t.sent.bandwidth().unwrap_or(0.0);
        let line = format!(
            "pre-copy round {}: {:.1} MiB of RAM and {:.1} MiB of disk sent in {} ms ({:.0} MiB/s); {} pages dirtied meanwhile ({:.1} MiB/s), expected pause {:.1} ms",
            t.round,
            Transfer::mib(t.sent.ram.load(Ordering::Relaxed)),
            Transfer::mib(t.sent.disk.load(Ordering::Relaxed)),
            t.started.elapsed().as_millis(),
            bw / (1 << 20) as f64,
            dirty,
            t.dirty_rate / (1 << 20) as f64,
            pause.as_secs_f64() * 1e3,
        );
        report(&self.control, &line);
        match round_end(RoundEnd {
            round: t.round,
            dirty,
            last_dirty: t.last_dirty,
            pause,
            max_downtime,
            dirty_rate: t.dirty_rate,
            bandwidth: bw,
            throttle: t.throttle,
        }) {
            Next::Stop => return Ok(Precopy::Ready),
            Next::Round { throttle } => {
                if throttle != t.throttle {
                    t.throttle = throttle;
                    let line = format!(
                        "pre-copy: the guest dirties memory faster than the link carries it; throttled to {}%",
                        100 - throttle
                    );
                    report(&self.control, &line);
                }
            }
        }
        t.round += 1;
        t.last_dirty = dirty;
        t.skip_zero = false;
        t.round_started = Instant::now();
        let mut todo: Vec<usize> = m.take_dirty().iter().collect();
        todo.reverse();
        t.todo = todo;
        let ranges = disks.take();
        if !ranges.is_empty() {
            let _ = t
                .jobs
                .try_send(Job::DiskRanges(ranges.clone()))
                .map_err(|e| {
                    // No room: put them back to go with a later round.
                    if let mpsc::TrySendError::Full(Job::DiskRanges(r)) = e {
                        for (slot, off, len) in r {
                            disks.mark(slot, off, len);
                        }
                    }
                });
        }
        Ok(Precopy::Running {
            throttle: t.throttle,
        })
    }

    /// Finish the transfer with the guest paused (no disk request in flight): the pages and
    /// disk blocks left, then the log, whose header is the state without RAM.
    /// The group a new follower joins (N-modular redundancy, while it has members).
    fn joining(&self) -> Option<&Group> {
        self.group.as_ref().filter(|g| !g.lock().members.is_empty())
    }

    fn finish(&mut self, m: &mut Machine, disks: &mut DiskDirty) -> Result<Attached, PairError> {
        let mut t = self
            .transfer
            .take()
            .ok_or_else(|| PairError::Protocol("no backup is being brought up to date".into()))?;
        let t0 = Instant::now();
        // The rest of this round (whose pages are skipped when zero in round 1), then every
        // page written since it began, zero or not.
        let dirty = m.take_dirty();
        // Post-copy: nothing of RAM is sent now; the pages not zero when scanned, and those
        // written since the scan began, are what the destination lacks.
        let missing = t.scan.take().map(|mut found| {
            found.union(&dirty);
            found
        });
        let left: Vec<usize> = if missing.is_some() {
            Vec::new()
        } else {
            dirty.iter().collect()
        };
        let pages_left = missing
            .as_ref()
            .map_or(t.todo.len() + left.len(), |m| m.count());
        t.flush_all(m, &left, disks.take())?;
        let out = t.out.clone();
        let header = Record::Header {
            count: m.count(),
            snapshot: m.save_without_ram(),
            digest_every: self.digest_every,
        };
        let mut writer = LinkWriter {
            buf: Vec::new(),
            out: out.clone(),
        };
        // N-modular redundancy: a follower joins the group's log where it stands (the runner
        // marked it at this count), or starts a new group; a backup gets a log of its own.
        if out.with(|s| s.is_dead(now_ns())) {
            return Err(PairError::Protocol(
                "the backup stopped receiving while its state was sent".into(),
            ));
        }
        out.set_write_limit(self.timing.dead)?;
        let mut group_log = None;
        let mut joined = None;
        let log = match (self.replicas, self.joining().cloned()) {
            (Some(_), Some(group)) => {
                LogWriter::new(&mut writer, header)?;
                let mut g = group.lock();
                if g.generation != t.generation {
                    // The group moved on while this member was brought up to date: it belongs
                    // to the current generation (it adopts the stamp of what it receives).
                    out.with(|s| s.set_generation(g.generation));
                    out.set_generation(g.generation);
                }
                let id = g.next_id();
                g.fanout.add(id, writer);
                g.members
                    .push(Member::new(id, out.clone(), m.count(), true));
                joined = Some(id);
                None
            }
            (Some(replicas), None) => {
                // The group is the runner's and the protector's only once its log started.
                let fanout = Fanout::default();
                let group = Group::new(
                    replicas,
                    t.generation,
                    self.arbiter.clone(),
                    fanout.clone(),
                    self.max_lag,
                );
                let id = group.lock().next_id();
                fanout.add(id, writer);
                let log = LogWriter::new(Box::new(fanout) as Box<dyn Write>, header)?;
                group
                    .lock()
                    .members
                    .push(Member::new(id, out.clone(), m.count(), false));
                self.group = Some(group.clone());
                group_log = Some(group);
                Some(log)
            }
            (None, _) => Some(LogWriter::new(Box::new(writer) as Box<dyn Write>, header)?),
        };
        t.cut.0 = None;
        // The sending thread ends with its queue.
        drop(t.jobs);
        if let Some(h) = t.sender.take() {
            let _ = h.join();
        }
        let line = if missing.is_some() {
            format!(
                "destination attached (generation {}) at instruction {} for post-copy: {:.1} MiB of disk in {} ms; {} RAM pages to follow; the state took {:.1} ms",
                t.generation,
                m.count(),
                Transfer::mib(t.sent.disk.load(Ordering::Relaxed)),
                t.started.elapsed().as_millis(),
                pages_left,
                t0.elapsed().as_secs_f64() * 1e3,
            )
        } else {
            format!(
            "{} attached (generation {}) at instruction {} by pre-copy: {} rounds, {:.1} MiB of RAM and {:.1} MiB of disk in {} ms; the last {} pages and the state took {:.1} ms",
            if t.migration.is_some() {
                "destination"
            } else {
                "backup"
            },
            t.generation,
            m.count(),
            t.round,
            Transfer::mib(t.sent.ram.load(Ordering::Relaxed)),
            Transfer::mib(t.sent.disk.load(Ordering::Relaxed)),
            t.started.elapsed().as_millis(),
            pages_left,
            t0.elapsed().as_secs_f64() * 1e3,
        )
        };
        report(&self.control, &line);
        if let Some(id) = joined {
            eprintln!("\r\nftvm: replica {id} joined the group\r");
            return Ok(Attached::Joined);
        }
        let Some(log) = log else {
            return Err(PairError::Protocol("no log for the backup".into()));
        };
        if let Some(group) = group_log {
            return Ok(Attached::Link(Box::new(group), log));
        }
        self.next_generation = t.generation + 1;
        Ok(Attached::Link(
            Box::new(PrimaryLink {
                out,
                max_lag: self.max_lag,
                push_input: self.push_input,
                commit_wait: self.commit_wait,
                arbiter: self.arbiter.clone(),
                migration: t.migration.take(),
                hand_over_after: Instant::now() + t.lockstep,
                attached_at: m.count(),
                generation: t.generation,
                postcopy: missing
                    .zip(t.page_requests.take())
                    .map(|(m, r)| (std::sync::Mutex::new(m), r)),
                max_bandwidth: t.max_bandwidth,
                inbox: {
                    // From here on the runner takes the backup's messages in itself.
                    t.inbox.pumped.store(true, Ordering::SeqCst);
                    t.inbox.clone()
                },
                holding: AtomicBool::new(false),
                pumped_at: 0,
            }),
            log,
        ))
    }

    /// Bring the waiting backup up to date with the machine as it is now, the guest paused
    /// throughout (no disk request may be in flight): the generation, the disks' contents and
    /// RAM, then a log whose header is the machine's state.
    pub fn attach_backup(&mut self, m: &mut Machine) -> Result<Attached, PairError> {
        let mut disks = DiskDirty::default();
        if self.transfer.is_none() {
            self.transfer = Some(self.begin(m)?);
        }
        self.finish(m, &mut disks)
    }
}

impl Protect for Protector {
    /// One backup may wait while another protects the guest (or is being brought up to date);
    /// it attaches when that one is gone. More are refused.
    fn poll(&mut self) -> bool {
        while let Ok(backup) = self.incoming.try_recv() {
            if self.standby.is_none() {
                self.standby = Some(backup);
            } else {
                eprintln!("\r\nftvm: refused a backup: another one already waits\r");
                backup.0.shutdown();
            }
        }
        self.standby.is_some() || self.transfer.is_some()
    }

    fn transferring(&self) -> bool {
        self.transfer.is_some()
    }

    fn progress(&self) -> Option<(u64, u32)> {
        self.transfer.as_ref().map(|t| {
            let sent = t.sent.ram.load(Ordering::Relaxed) + t.sent.disk.load(Ordering::Relaxed);
            (sent, t.round)
        })
    }

    fn precopy(&mut self, m: &mut Machine, disks: &mut DiskDirty) -> Result<Precopy, LinkError> {
        match self.step(m, disks) {
            Ok(p) => Ok(p),
            Err(e) => {
                // The transfer's link closes as it is dropped (and a migration's operator is
                // told why).
                if let Some(c) = &self.control {
                    c.finished(Err(e.to_string()));
                }
                self.transfer = None;
                Err(Box::new(e))
            }
        }
    }

    fn joins(&self) -> bool {
        self.group.as_ref().is_some_and(|g| g.has_room())
    }

    fn attach(&mut self, m: &mut Machine, disks: &mut DiskDirty) -> Result<Attached, LinkError> {
        match self.finish(m, disks) {
            Ok(a) => Ok(a),
            Err(e) => {
                if let Some(c) = &self.control {
                    c.finished(Err(e.to_string()));
                }
                Err(Box::new(e))
            }
        }
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
    mut m: Machine,
    backends: Backends,
    devices: &Devices,
    cfg: &PairConfig,
    opts: &Options,
    events_tx: ftvm_runner::EventTx,
    events: ftvm_runner::EventRx,
) -> Result<Ended, PairError> {
    let (link, log) = loop {
        protect.wait()?;
        match protect.attach_backup(&mut m) {
            Ok(Attached::Link(link, log)) => break (link, log),
            Ok(Attached::Joined) => {}
            Err(e) => eprintln!("ftvm: the backup could not attach: {e}"),
        }
    };
    // Tell the network where the guest is now (a previous incarnation may have been elsewhere).
    backends.announce(devices);
    let feed = Feeder::logged(log, cfg.digest_every, m.count(), cfg.epoch);
    let gate = Gate::open()
        .with_status(cfg.status_file.as_deref().map(StatusFile::new))
        .with_link(link)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_keeps_off_while_the_runner_reads_and_returns_when_it_stops_or_the_link_closes() {
        let closed = AtomicBool::new(false);
        let gate = Arc::new(ReaderGate::default());
        // Never read: the thread watches the link at once.
        let t0 = Instant::now();
        gate.keep_off(RUNNER_GONE, &closed);
        assert!(t0.elapsed() < Duration::from_secs(10));
        // Read recently, and on: it sleeps while the runner reads, and returns `gone` after
        // the last read.
        gate.read();
        let (done_tx, done) = mpsc::channel();
        let sleeper = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                gate.keep_off(500_000_000, &AtomicBool::new(false));
                done_tx.send(Instant::now()).unwrap();
            })
        };
        for _ in 0..100 {
            gate.read();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(done.try_recv().is_err(), "woke while the runner reads");
        let last = Instant::now();
        gate.read();
        let woke = done
            .recv_timeout(Duration::from_secs(10))
            .expect("never came back to the link");
        assert!(woke.duration_since(last) >= Duration::from_millis(499));
        sleeper.join().unwrap();
        // A link closed: nothing to sleep for.
        closed.store(true, Ordering::SeqCst);
        gate.read();
        let t0 = Instant::now();
        gate.keep_off(600_000_000_000, &closed);
        assert!(t0.elapsed() < Duration::from_secs(10));
    }

    fn end(round: u32, dirty: usize, last: usize, pause_ms: u64, rate: f64) -> Next {
        round_end(RoundEnd {
            round,
            dirty,
            last_dirty: last,
            pause: Duration::from_millis(pause_ms),
            max_downtime: Duration::from_millis(300),
            dirty_rate: rate,
            bandwidth: 100e6,
            throttle: 0,
        })
    }

    #[test]
    fn rounds_stop_when_the_rest_is_small_or_stops_shrinking_within_the_budget() {
        // Under a millisecond: stop at once, however it shrinks.
        assert_eq!(end(1, 10, 60_000, 0, 1e3), Next::Stop);
        // Within the budget but still halving: one more round.
        assert_eq!(end(1, 1000, 60_000, 40, 1e6), Next::Round { throttle: 0 });
        // Within the budget and no longer halving: stop.
        assert_eq!(end(2, 900, 1000, 40, 1e6), Next::Stop);
        // Over the budget: go on, and stop after the last round allowed however large.
        assert_eq!(end(2, 9000, 9000, 900, 1e6), Next::Round { throttle: 0 });
        assert_eq!(end(MAX_ROUNDS, 9000, 9000, 900, 1e6), Next::Stop);
    }

    #[test]
    fn a_guest_that_outruns_the_link_is_throttled_more_each_round_from_round_4() {
        let fast = 80e6; // over half the 100 MB/s link
        assert_eq!(end(3, 9000, 9000, 900, fast), Next::Round { throttle: 0 });
        assert_eq!(end(4, 9000, 9000, 900, fast), Next::Round { throttle: 20 });
        let mut r = RoundEnd {
            round: 5,
            dirty: 9000,
            last_dirty: 9000,
            pause: Duration::from_millis(900),
            max_downtime: Duration::from_millis(300),
            dirty_rate: fast,
            bandwidth: 100e6,
            throttle: 20,
        };
        assert_eq!(round_end(r), Next::Round { throttle: 30 });
        r.throttle = 95;
        assert_eq!(round_end(r), Next::Round { throttle: 99 }, "at most 99%");
        // A slow writer is never throttled, nor one that fits the budget.
        r.throttle = 0;
        r.dirty_rate = 10e6;
        assert_eq!(round_end(r), Next::Round { throttle: 0 });
    }
}
