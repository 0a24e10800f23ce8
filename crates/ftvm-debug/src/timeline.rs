//! A recorded run that can be put at any instruction count, forwards or backwards.
//!
//! The log is held in memory. Going forwards runs the machine along it through
//! [`follow::apply`], as `ftvm replay` does (every digest in the log is checked on the way).
//! Going backwards restores the newest checkpoint at or before the target and runs forwards
//! from there, so the state reached is the one the recorded run had.
//!
//! Checkpoints are taken every `every` instructions, the first time the run passes there. A
//! checkpoint holds the machine without its RAM and the RAM pages written since the previous
//! checkpoint (dirty-page tracking, as pre-copy uses it), so it costs what the guest wrote,
//! not its RAM size. Restoring one patches, in the machine's own RAM, only the pages written
//! since it; each page's content there is the one in the newest checkpoint at or before it
//! that holds the page, or the initial state's. When the checkpoints outgrow their byte
//! budget, the one whose neighbours are closest is merged into the next (its pages move
//! there unless the next holds them already): checkpoints thin out evenly; the first, the
//! newest and the one the machine's dirty pages are tracked from stay.
//!
//! The state "at count C" is always the same: every record at C applied, then the machine
//! settled ([`Machine::settle`]: a pending interrupt taken), ready for the step at C. A stop by
//! a hook and a restore-and-run land in the same state.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Included};

use ftvm_cpu::Hart;
use ftvm_log::Record;
use ftvm_machine::{Board, Machine, MachineError, RunExit};
use ftvm_runner::follow::{self, FollowError};
use thiserror::Error;

const PAGE: usize = 4096;

/// Steps between two looks at `poll` (a debugger's Ctrl-C).
const POLL_STEPS: u64 = 1 << 22;

/// Going backwards to a count farther than this from the checkpoint before it leaves a fine
/// checkpoint this far before the count on the way: the next steps back (reverse-stepi, one
/// at a time) restore that one and re-execute at most this many instructions.
const FINE: u64 = 4096;

/// A run this short after a restore goes through the interpreter: the translator would
/// compile every block of it first (a restored machine's code cache is empty).
const SHORT: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum TimelineError {
    #[error("the replay left the log: {0}")]
    Follow(#[from] FollowError),
    #[error("a checkpoint could not be restored: {0}")]
    Restore(#[from] MachineError),
    #[error("the machine stopped at instruction {count} ({exit}) before the log's end at {end}")]
    Stopped { count: u64, exit: String, end: u64 },
}

/// Why a move along the timeline ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The count asked for was reached.
    Target,
    /// The hook asked to stop before the step at this count.
    Hook,
    /// The log ends here: the recorded run goes no further.
    End,
    /// `poll` asked to stop.
    Interrupted,
}

/// Where an open timeline's console output goes.
pub type Console = Box<dyn FnMut(&[u8])>;

/// The machine as the hook sees it before a step: the hart about to step and the board.
pub type Hook<'a> = &'a mut dyn FnMut(&mut Hart, &mut Board) -> bool;

struct Checkpoint {
    /// The index of the first record not applied yet.
    next: usize,
    /// The machine without its RAM ([`Machine::save_without_ram`]).
    state: Vec<u8>,
    /// Pages written since the previous checkpoint, as they are here.
    pages: BTreeMap<usize, Box<[u8]>>,
}

impl Checkpoint {
    fn bytes(&self) -> usize {
        self.state.len() + self.pages.len() * (PAGE + 32)
    }
}

/// How often to checkpoint, and how much memory the checkpoints may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub every: u64,
    pub max_bytes: usize,
}

pub struct Timeline {
    m: Machine,
    records: Vec<Record>,
    next: usize,
    /// The count of the log's initial state, and the last count the log covers.
    start: u64,
    end: u64,
    /// RAM at the initial state.
    base_ram: Vec<u8>,
    checkpoints: BTreeMap<u64, Checkpoint>,
    /// The count of the checkpoint since which the machine's dirty pages are tracked.
    since: u64,
    /// The newest checkpoint ever made (periodic checkpoints are made only past it).
    made_up_to: u64,
    /// A fine checkpoint to make at this count (see [`FINE`]).
    fine: Option<u64>,
    bytes: usize,
    limits: Limits,
    /// An open timeline (`ftvm run --gdb`): see [`Timeline::open`].
    open: Option<Open>,
}

/// An open timeline's frontier: the furthest count run so far, and where what the guest
/// prints there goes.
struct Open {
    frontier: u64,
    console: Console,
}

impl Timeline {
    /// A timeline with no log that grows as the machine runs past the furthest count it
    /// reached: the guest gets no input but time, given as the virtual clock does (when it
    /// waits for a timer, time moves on to it), and what it prints there the first time goes
    /// to `console`. It ends when the guest powers off or waits for nothing.
    pub fn open(
        initial: &[u8],
        limits: Limits,
        console: Console,
    ) -> Result<Timeline, TimelineError> {
        let mut t = Timeline::new(initial, Vec::new(), limits)?;
        t.end = u64::MAX;
        t.open = Some(Open {
            frontier: t.start,
            console,
        });
        Ok(t)
    }

    /// A timeline over a log: `initial`, the state of its header, and its records after the
    /// header, in order. The machine is put at the initial count.
    pub fn new(
        initial: &[u8],
        records: Vec<Record>,
        limits: Limits,
    ) -> Result<Timeline, TimelineError> {
        let mut m = Machine::restore(initial)?;
        m.take_dirty();
        let start = m.count();
        let end = records.last().map_or(start, |r| r.count().max(start));
        let base_ram = m.ram().to_vec();
        let mut t = Timeline {
            m,
            records,
            next: 0,
            start,
            end,
            base_ram,
            checkpoints: BTreeMap::new(),
            since: start,
            made_up_to: start,
            fine: None,
            bytes: 0,
            open: None,
            limits: Limits {
                every: limits.every.max(1),
                ..limits
            },
        };
        t.advance(start, None, &mut || false)?;
        Ok(t)
    }

    pub fn machine(&self) -> &Machine {
        &self.m
    }

    pub fn count(&self) -> u64 {
        self.m.count()
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// How many checkpoints are kept, and the bytes they take.
    pub fn checkpoints(&self) -> (usize, usize) {
        (self.checkpoints.len(), self.bytes)
    }

    /// Run forwards to `target` (or the log's end), stopping early where `hook` says.
    pub fn advance(
        &mut self,
        target: u64,
        mut hook: Option<Hook>,
        poll: &mut dyn FnMut() -> bool,
    ) -> Result<Stop, TimelineError> {
        let target = target.min(self.end);
        // A checkpoint between here and the target saves running to it.
        let now = self.m.count();
        if target > now && hook.is_none() {
            let k = self.checkpoint_at_or_before(target);
            if k > now {
                self.restore(k)?;
            }
        }
        let mut hit = false;
        // Where `poll` was last asked (every POLL_STEPS steps, however the run is cut).
        let mut polled = self.m.count();
        loop {
            let now = self.m.count();
            while let Some(r) = self.records.get(self.next).filter(|r| r.count() <= now) {
                follow::apply(&mut self.m, r.clone(), &mut follow::Discard)?;
                self.next += 1;
            }
            self.at_checkpoint(now);
            if now >= self.end {
                // Nothing runs past the log: the state is left as the recorded run ended.
                return Ok(Stop::End);
            }
            if now >= target {
                self.m.settle();
                return Ok(Stop::Target);
            }
            let every = self.limits.every;
            let mut seg = target.min((now / every + 1).saturating_mul(every));
            if let Some(f) = self.fine.filter(|&f| f > now) {
                seg = seg.min(f);
            }
            if let Some(r) = self.records.get(self.next) {
                seg = seg.min(r.count());
            }
            if let Some(o) = self.open.as_ref().filter(|o| o.frontier > now) {
                // Never across the frontier: what is printed before it was printed already.
                seg = seg.min(o.frontier);
            }
            let exit = match hook.as_deref_mut() {
                None => self.m.run(seg, POLL_STEPS),
                Some(h) => {
                    let mut stop = |hart: &mut Hart, board: &mut Board| {
                        hit = h(hart, board);
                        hit
                    };
                    self.m.run_hooked(seg, POLL_STEPS, &mut stop)
                }
            };
            let outputs = self.m.take_outputs();
            if let Some(o) = &mut self.open {
                if self.m.count() > o.frontier {
                    o.frontier = self.m.count();
                    for out in outputs {
                        if let ftvm_machine::Output::Console(b) = out {
                            (o.console)(&b);
                        }
                    }
                }
            }
            if !hit && self.m.count().saturating_sub(polled) >= POLL_STEPS {
                polled = self.m.count();
                if poll() {
                    self.m.settle();
                    return Ok(Stop::Interrupted);
                }
            }
            match exit {
                RunExit::StopAt | RunExit::Output => {}
                RunExit::Idle { ticks: Some(t) }
                    if self.open.is_some() && self.next == self.records.len() =>
                {
                    // Waiting for a timer, past the log: its time comes, as the virtual
                    // clock gives it, and stays in the log for the way back.
                    let count = self.m.count();
                    self.records.push(Record::Input {
                        count,
                        inputs: vec![ftvm_machine::Input::Time { ticks: t.max(1) }],
                    });
                }
                RunExit::Idle { .. } | RunExit::Power(_) | RunExit::ToHost(_)
                    if self.open.is_some() && self.next == self.records.len() =>
                {
                    // The guest stopped, or waits for input it will never get: the end.
                    self.end = self.m.count();
                    return Ok(Stop::End);
                }
                RunExit::Yield if hit => return Ok(Stop::Hook),
                RunExit::Yield => {}
                RunExit::Idle { .. } | RunExit::Power(_) | RunExit::ToHost(_) => {
                    if self.m.count() < seg {
                        return Err(TimelineError::Stopped {
                            count: self.m.count(),
                            exit: format!("{exit:?}"),
                            end: self.end,
                        });
                    }
                }
            }
        }
    }

    /// Put the machine at `target` (within the log), backwards or forwards.
    pub fn goto(&mut self, target: u64) -> Result<Stop, TimelineError> {
        let target = target.clamp(self.start, self.end);
        if target < self.m.count() {
            let k = self.checkpoint_at_or_before(target);
            self.restore(k)?;
            if target - k > FINE {
                self.fine = Some(target - FINE);
            }
        }
        let short = target.saturating_sub(self.m.count()) <= SHORT;
        let engine = self.m.harts()[0].engine();
        if short {
            self.m.set_engine(ftvm_cpu::Engine::Interp);
        }
        let stop = self.advance(target, None, &mut || false);
        self.m.set_engine(engine);
        self.fine = None;
        stop
    }

    /// The last count before `before` where `hook` says yes (the hook sees every step from
    /// the newest checkpoint before it backwards, one checkpoint interval at a time, and
    /// never stops the run). The machine is left somewhere before `before` (or where it was,
    /// when `before` is the log's start): move it with [`Timeline::goto`]. `None` when there is none since the log's start, or when `poll`
    /// asked to stop (then `interrupted` is set).
    pub fn last_before(
        &mut self,
        before: u64,
        hook: Hook,
        poll: &mut dyn FnMut() -> bool,
        interrupted: &mut bool,
    ) -> Result<Option<u64>, TimelineError> {
        let mut hi = before.min(self.end);
        while hi > self.start {
            let k = self.checkpoint_at_or_before(hi - 1);
            self.restore(k)?;
            let mut last = None;
            let mut seen = |hart: &mut Hart, board: &mut Board| {
                if hook(hart, board) {
                    last = Some(board.count_base + hart.count());
                }
                false
            };
            match self.advance(hi, Some(&mut seen), poll)? {
                Stop::Interrupted => {
                    *interrupted = true;
                    return Ok(None);
                }
                _ if last.is_some() => return Ok(last),
                _ => {}
            }
            if poll() {
                *interrupted = true;
                return Ok(None);
            }
            hi = k;
        }
        Ok(None)
    }

    fn checkpoint_at_or_before(&self, count: u64) -> u64 {
        self.checkpoints
            .range(..=count)
            .next_back()
            .map_or(self.start, |(&k, _)| k)
    }

    /// At a checkpoint's count: start tracking dirty pages from here, making the checkpoint
    /// if this is new ground.
    fn at_checkpoint(&mut self, now: u64) {
        let new = (self.checkpoints.is_empty()
            || (now.is_multiple_of(self.limits.every) && now > self.made_up_to)
            || self.fine == Some(now))
            && !self.checkpoints.contains_key(&now);
        if !new && (!self.checkpoints.contains_key(&now) || self.since == now) {
            return;
        }
        let dirty = self.m.take_dirty();
        self.since = now;
        if !new {
            return;
        }
        let ram = self.m.ram();
        let pages = dirty
            .iter()
            .filter_map(|p| Some((p, ram.get(p * PAGE..(p + 1) * PAGE)?.into())))
            .collect();
        let c = Checkpoint {
            next: self.next,
            state: self.m.save_without_ram(),
            pages,
        };
        self.bytes += c.bytes();
        self.checkpoints.insert(now, c);
        self.made_up_to = self.made_up_to.max(now);
        while self.bytes > self.limits.max_bytes && self.thin() {}
    }

    /// Merge the checkpoint whose neighbours are closest into the next one: never the first,
    /// the newest, or the one dirty pages are tracked from (restores need its pages). False
    /// when none may go.
    fn thin(&mut self) -> bool {
        let counts: Vec<u64> = self.checkpoints.keys().copied().collect();
        let Some(i) = (1..counts.len().saturating_sub(1))
            .filter(|&i| counts[i] != self.since)
            .min_by_key(|&i| counts[i + 1] - counts[i - 1])
        else {
            return false;
        };
        let (gone, into) = (counts[i], counts[i + 1]);
        let Some(c) = self.checkpoints.remove(&gone) else {
            return false;
        };
        self.bytes -= c.bytes();
        if let Some(n) = self.checkpoints.get_mut(&into) {
            self.bytes -= n.bytes();
            for (p, b) in c.pages {
                n.pages.entry(p).or_insert(b);
            }
            self.bytes += n.bytes();
        }
        true
    }

    /// A page's content at checkpoint `k`.
    fn page_at(&self, k: u64, p: usize) -> Option<&[u8]> {
        for (_, c) in self.checkpoints.range(..=k).rev() {
            if let Some(b) = c.pages.get(&p) {
                return Some(b);
            }
        }
        self.base_ram.get(p * PAGE..(p + 1) * PAGE)
    }

    /// Put the machine back at checkpoint `k`.
    fn restore(&mut self, k: u64) -> Result<(), TimelineError> {
        let Some(c) = self.checkpoints.get(&k) else {
            return Ok(());
        };
        let mut fix: BTreeSet<usize> = self.m.take_dirty().iter().collect();
        // Pages that differ between the machine and checkpoint k: written since the last
        // checkpoint passed, or in a checkpoint between that one and k (either way round).
        let (lo, hi) = (k.min(self.since), k.max(self.since));
        if lo < hi {
            for (_, c) in self.checkpoints.range((Excluded(lo), Included(hi))) {
                fix.extend(c.pages.keys());
            }
        }
        let (state, next) = (c.state.clone(), c.next);
        let placeholder = Machine::new(16 << 20)?;
        let mut ram = std::mem::replace(&mut self.m, placeholder).into_ram();
        for p in fix {
            if let (Some(src), Some(dst)) =
                (self.page_at(k, p), ram.get_mut(p * PAGE..(p + 1) * PAGE))
            {
                dst.copy_from_slice(src);
            }
        }
        self.m = Machine::restore_with_ram(&state, ram)?;
        self.next = next;
        self.since = k;
        Ok(())
    }
}
