//! The GDB remote-protocol target: a [`Timeline`] served to gdb through the gdbstub crate.
//!
//! gdb sees one thread (the hart that steps next). Breakpoints and watchpoints live in the
//! stub, never in guest memory: before every step of a run with some set, the hart's pc is
//! looked up, and the data access the instruction is about to make is compared with the
//! watched ranges. A watchpoint stops before the accessing instruction (RISC-V triggers
//! fire before the access, and gdb steps over it). Continuing runs to the next hit or the
//! log's end; going back runs from checkpoints (see [`crate::timeline`]). The machine is
//! never written: register and memory writes are refused, so a debugged replay ends in the
//! state an undisturbed one does.

use std::collections::BTreeSet;
use std::io;
use std::net::TcpStream;

use ftvm_cpu::Hart;
use ftvm_machine::{Board, RAM_BASE};
use gdbstub::common::Signal;
use gdbstub::conn::ConnectionExt;
use gdbstub::outputln;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::SingleThreadStopReason;
use gdbstub::target::ext::base::reverse_exec::{
    ReplayLogPosition, ReverseCont, ReverseContOps, ReverseStep, ReverseStepOps,
};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::{Target, TargetError, TargetResult};

use crate::arch::{Regs, Rv64};
use crate::timeline::{Stop, Timeline, TimelineError};

/// What gdb asked the target to do when it resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    Continue,
    Step,
    ReverseStep,
    ReverseContinue,
}

/// Why a hook stopped: a breakpoint, or a watchpoint (its kind and address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hit {
    Break,
    Watch(WatchKind, u64),
}

/// The breakpoints and watchpoints set.
#[derive(Default)]
struct Points {
    breaks: BTreeSet<u64>,
    watches: Vec<(u64, u64, WatchKind)>,
}

impl Points {
    fn is_empty(&self) -> bool {
        self.breaks.is_empty() && self.watches.is_empty()
    }

    /// What stops the hart before its next step, if anything (breakpoints only `breaks`).
    fn hit(&self, hart: &mut Hart, board: &mut Board, breaks: bool) -> Option<Hit> {
        if breaks && self.breaks.contains(&hart.pc()) {
            return Some(Hit::Break);
        }
        if self.watches.is_empty() {
            return None;
        }
        let a = hart.next_access(board)?;
        self.watches
            .iter()
            .find(|&&(addr, len, kind)| {
                a.overlaps(addr, len)
                    && match kind {
                        WatchKind::Write => a.write,
                        WatchKind::Read => a.read,
                        WatchKind::ReadWrite => true,
                    }
            })
            .map(|&(addr, _, kind)| Hit::Watch(kind, addr))
    }
}

/// A debugging session: the timeline and what gdb set on it.
pub struct Session {
    tl: Timeline,
    points: Points,
    resume: Resume,
    /// Memory addresses are physical (`monitor phys on`), not virtual.
    phys: bool,
}

impl Session {
    pub fn new(tl: Timeline) -> Session {
        Session {
            tl,
            points: Points::default(),
            resume: Resume::Continue,
            phys: false,
        }
    }

    pub fn into_timeline(self) -> Timeline {
        self.tl
    }

    fn stop_of(hit: Hit) -> SingleThreadStopReason<u64> {
        match hit {
            Hit::Break => SingleThreadStopReason::SwBreak(()),
            Hit::Watch(kind, addr) => SingleThreadStopReason::Watch {
                tid: (),
                kind,
                addr,
            },
        }
    }

    /// Carry out the resume gdb asked for. `poll` says whether gdb sent something (an
    /// interrupt); `None` is returned then.
    fn run(
        &mut self,
        poll: &mut dyn FnMut() -> bool,
    ) -> Result<Option<SingleThreadStopReason<u64>>, TimelineError> {
        let end = SingleThreadStopReason::ReplayLog {
            tid: None,
            pos: ReplayLogPosition::End,
        };
        let begin = SingleThreadStopReason::ReplayLog {
            tid: None,
            pos: ReplayLogPosition::Begin,
        };
        let now = self.tl.count();
        Ok(Some(match self.resume {
            Resume::Step => {
                if now >= self.tl.end() {
                    end
                } else {
                    self.tl.goto(now + 1)?;
                    SingleThreadStopReason::DoneStep
                }
            }
            Resume::ReverseStep => {
                if now <= self.tl.start() {
                    begin
                } else {
                    self.tl.goto(now - 1)?;
                    SingleThreadStopReason::DoneStep
                }
            }
            Resume::Continue => {
                let points = &self.points;
                let mut hit = None;
                let stop = if points.is_empty() {
                    self.tl.advance(u64::MAX, None, poll)?
                } else {
                    // A breakpoint at the instruction gdb resumes at does not stop it
                    // again; a watchpoint on its access does (gdb steps over it).
                    let mut hook = |hart: &mut Hart, board: &mut Board| {
                        let first = board.count_base + hart.count() == now;
                        hit = points.hit(hart, board, !first);
                        hit.is_some()
                    };
                    self.tl.advance(u64::MAX, Some(&mut hook), poll)?
                };
                match (stop, hit) {
                    (Stop::Hook, Some(h)) => Self::stop_of(h),
                    (Stop::Interrupted, _) => return Ok(None),
                    _ => end,
                }
            }
            Resume::ReverseContinue => {
                if self.points.is_empty() {
                    self.tl.goto(self.tl.start())?;
                    return Ok(Some(begin));
                }
                let points = &self.points;
                let mut last = None;
                let mut hook = |hart: &mut Hart, board: &mut Board| {
                    let h = points.hit(hart, board, true);
                    if h.is_some() {
                        last = h;
                    }
                    h.is_some()
                };
                let mut interrupted = false;
                let found = self
                    .tl
                    .last_before(now, &mut hook, poll, &mut interrupted)?;
                match (found, last) {
                    (Some(c), Some(h)) => {
                        // Going backwards, a watchpoint fires after the access (gdb then
                        // steps back over it, as it steps forwards over one that fires
                        // before): the stop is after the accessing instruction.
                        let at = match h {
                            Hit::Break => c,
                            Hit::Watch(..) => c + 1,
                        };
                        self.tl.goto(at)?;
                        Self::stop_of(h)
                    }
                    _ if interrupted => {
                        // Back where gdb last saw it.
                        self.tl.goto(now)?;
                        return Ok(None);
                    }
                    _ => {
                        self.tl.goto(self.tl.start())?;
                        begin
                    }
                }
            }
        }))
    }

    fn hart(&self) -> &Hart {
        let m = self.tl.machine();
        &m.harts()[m.current_hart()]
    }
}

impl Target for Session {
    type Arch = Rv64;
    type Error = TimelineError;

    fn base_ops(&mut self) -> BaseOps<'_, Rv64, TimelineError> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }

    // Breakpoints are the stub's: gdb must not write them into memory.
    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }
}

impl SingleThreadBase for Session {
    fn read_registers(&mut self, regs: &mut Regs) -> TargetResult<(), Self> {
        *regs = Regs::of(self.hart());
        Ok(())
    }

    fn write_registers(&mut self, _regs: &Regs) -> TargetResult<(), Self> {
        Err(TargetError::NonFatal)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        let m = self.tl.machine();
        let hart = &m.harts()[m.current_hart()];
        let ram = m.ram();
        let mut n = 0;
        while n < data.len() {
            let va = start.wrapping_add(n as u64);
            let pa = if self.phys {
                Some(va)
            } else {
                hart.debug_translate(ram, RAM_BASE, va)
            };
            let Some(off) = pa
                .and_then(|pa| pa.checked_sub(RAM_BASE))
                .and_then(|o| usize::try_from(o).ok())
                .filter(|&o| o < ram.len())
            else {
                break;
            };
            let len = (data.len() - n)
                .min(4096 - (va & 0xfff) as usize)
                .min(ram.len() - off);
            data[n..n + len].copy_from_slice(&ram[off..off + len]);
            n += len;
        }
        if n == 0 {
            return Err(TargetError::NonFatal);
        }
        Ok(n)
    }

    fn write_addrs(&mut self, _start: u64, _data: &[u8]) -> TargetResult<(), Self> {
        Err(TargetError::NonFatal)
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for Session {
    fn resume(&mut self, signal: Option<Signal>) -> Result<(), TimelineError> {
        let _ = signal;
        self.resume = Resume::Continue;
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_reverse_step(&mut self) -> Option<ReverseStepOps<'_, (), Self>> {
        Some(self)
    }

    fn support_reverse_cont(&mut self) -> Option<ReverseContOps<'_, (), Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for Session {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), TimelineError> {
        self.resume = Resume::Step;
        Ok(())
    }
}

impl ReverseStep<()> for Session {
    fn reverse_step(&mut self, _tid: ()) -> Result<(), TimelineError> {
        self.resume = Resume::ReverseStep;
        Ok(())
    }
}

impl ReverseCont<()> for Session {
    fn reverse_cont(&mut self) -> Result<(), TimelineError> {
        self.resume = Resume::ReverseContinue;
        Ok(())
    }
}

impl Breakpoints for Session {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for Session {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.points.breaks.insert(addr);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.points.breaks.remove(&addr))
    }
}

impl HwBreakpoint for Session {
    fn add_hw_breakpoint(&mut self, addr: u64, kind: usize) -> TargetResult<bool, Self> {
        self.add_sw_breakpoint(addr, kind)
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, kind: usize) -> TargetResult<bool, Self> {
        self.remove_sw_breakpoint(addr, kind)
    }
}

/// Watched ranges at most this long (gdb asks for a variable's size).
const MAX_WATCH: u64 = 4096;

impl HwWatchpoint for Session {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        if len == 0 || len > MAX_WATCH {
            return Ok(false);
        }
        self.points.watches.push((addr, len, kind));
        Ok(true)
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let w = &mut self.points.watches;
        match w.iter().position(|&x| x == (addr, len, kind)) {
            Some(i) => {
                w.remove(i);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl MonitorCmd for Session {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), TimelineError> {
        let cmd = String::from_utf8_lossy(cmd);
        let words: Vec<&str> = cmd.split_whitespace().collect();
        match words.as_slice() {
            ["count"] | ["when"] => {
                let (n, bytes) = self.tl.checkpoints();
                let range = match self.tl.end() {
                    u64::MAX => format!("{}.. (a run: it goes on)", self.tl.start()),
                    end => format!("{}..{end}", self.tl.start()),
                };
                outputln!(
                    out,
                    "instruction {} of {range}; {n} checkpoints, {} KiB",
                    self.tl.count(),
                    bytes / 1024
                );
            }
            ["phys", "on"] => {
                self.phys = true;
                outputln!(out, "memory addresses are physical");
            }
            ["phys", "off"] => {
                self.phys = false;
                outputln!(
                    out,
                    "memory addresses are virtual (the current hart's satp)"
                );
            }
            ["phys"] => outputln!(
                out,
                "physical addresses: {}",
                if self.phys { "on" } else { "off" }
            ),
            _ => {
                outputln!(out, "ftvm monitor commands:");
                outputln!(
                    out,
                    "  count      the instruction count, the log's range, the checkpoints"
                );
                outputln!(out, "  phys on    read memory at physical addresses");
                outputln!(
                    out,
                    "  phys off   read memory through the page tables (the default)"
                );
            }
        }
        Ok(())
    }
}

/// gdbstub's event loop: the machine runs in this thread, looking at the connection every
/// few million steps.
pub enum Loop {}

impl BlockingEventLoop for Loop {
    type Target = Session;
    type Connection = TcpStream;
    type StopReason = SingleThreadStopReason<u64>;

    #[allow(clippy::type_complexity)]
    fn wait_for_stop_reason(
        target: &mut Session,
        conn: &mut TcpStream,
    ) -> Result<Event<SingleThreadStopReason<u64>>, WaitForStopReasonError<TimelineError, io::Error>>
    {
        let mut peer = conn
            .try_clone()
            .map_err(WaitForStopReasonError::Connection)?;
        // Data waiting, or a broken connection: stop either way.
        let mut poll = || ConnectionExt::peek(&mut peer).map_or(true, |b| b.is_some());
        match target
            .run(&mut poll)
            .map_err(WaitForStopReasonError::Target)?
        {
            Some(stop) => Ok(Event::TargetStopped(stop)),
            None => {
                let byte = ConnectionExt::read(conn).map_err(WaitForStopReasonError::Connection)?;
                Ok(Event::IncomingData(byte))
            }
        }
    }

    fn on_interrupt(
        _target: &mut Session,
    ) -> Result<Option<SingleThreadStopReason<u64>>, TimelineError> {
        Ok(Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
    }
}

/// Serve gdb on `conn` until it detaches or kills the session. True if it killed it.
pub fn serve(session: &mut Session, conn: TcpStream) -> Result<bool, String> {
    let gdb = gdbstub::stub::GdbStub::new(conn);
    match gdb.run_blocking::<Loop>(session) {
        Ok(gdbstub::stub::DisconnectReason::Kill) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}
