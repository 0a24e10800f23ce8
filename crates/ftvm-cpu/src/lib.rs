//! One deterministic RV64GC hart (RV64IMAFDC, Zicsr, Zifencei, Zicntr), with machine,
//! supervisor and user modes, Sv39/Sv48 translation and bit-exact F/D arithmetic.
//!
//! The hart knows nothing about the board around it: physical memory and devices are reached
//! through the [`Bus`] trait, and the machine time through [`Bus::time`]. It has no clocks, no
//! threads and no I/O of its own, so its behaviour is a pure function of its state, the bus and
//! the instructions it runs.
//!
//! Every step that changes architectural state (a retired instruction, or an instruction that
//! raised an exception) adds one to [`Hart::count`]. The rest of the system keys on that count:
//! [`Hart::run`] never executes more steps than the budget it is given, so a caller can stop the
//! machine on an exact count.

mod csr;
mod debug;
mod exec;
mod fault;
mod fpu;
#[cfg(target_arch = "x86_64")]
mod jit;
mod mmu;
mod rvc;
mod state;

pub use csr::{Csr, ENVCFG_CBCFE, ENVCFG_CBIE_SHIFT, ENVCFG_CBZE, MENVCFG_PBMTE};
pub use debug::MemAccess;
pub use exec::CBO_BLOCK;
pub use fault::{FlipError, TlbFlip, DATA_TLB_ENTRIES};
/// Counters of the translator's work (not machine state; zeros on hosts without one).
#[derive(Clone, Copy, Debug, Default)]
pub struct JitStats {
    /// Blocks compiled.
    pub blocks: u64,
    /// Guest instructions in them.
    pub insns: u64,
    /// Host time spent compiling, in nanoseconds.
    pub compile_ns: u64,
    /// Bytes of host code emitted.
    pub code_bytes: u64,
    /// Times all code was dropped because the code memory was full.
    pub full_flushes: u64,
    /// Block entries from the dispatcher (the rest were chained in translated code).
    pub dispatches: u64,
    /// Direct jumps linked block to block.
    pub links: u64,
    /// Guest registers kept in host registers, summed over the blocks compiled.
    pub kept_regs: u64,
}

/// How a hart executes instructions. Not machine state: every engine takes the same steps
/// with the same results, so a log recorded with one replays with the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The interpreter: decoded ops, one at a time. The reference.
    Interp,
    /// The translator: blocks compiled to host code (x86-64 hosts).
    Jit,
}

static DEFAULT_ENGINE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

impl Engine {
    /// Whether this host can run the engine.
    pub fn supported(self) -> bool {
        match self {
            Engine::Interp => true,
            Engine::Jit => cfg!(target_arch = "x86_64"),
        }
    }
    /// The engine of harts made from now on: the translator where the host supports it,
    /// unless [`Engine::set_default`] chose otherwise.
    pub fn default_engine() -> Engine {
        match DEFAULT_ENGINE.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Engine::Interp,
            2 => Engine::Jit,
            _ if Engine::Jit.supported() => Engine::Jit,
            _ => Engine::Interp,
        }
    }
    /// Choose the engine of harts made from now on in this process (new machines and
    /// restored snapshots). False if the host cannot run it.
    pub fn set_default(e: Engine) -> bool {
        if !e.supported() {
            return false;
        }
        let v = match e {
            Engine::Interp => 1,
            Engine::Jit => 2,
        };
        DEFAULT_ENGINE.store(v, std::sync::atomic::Ordering::Relaxed);
        true
    }
}
pub use state::{HartStateError, HART_STATE_LEN};

/// Exception causes (mcause values without the interrupt bit).
pub mod cause {
    pub const INSN_MISALIGNED: u64 = 0;
    pub const INSN_ACCESS: u64 = 1;
    pub const ILLEGAL_INSN: u64 = 2;
    pub const BREAKPOINT: u64 = 3;
    pub const LOAD_MISALIGNED: u64 = 4;
    pub const LOAD_ACCESS: u64 = 5;
    pub const STORE_MISALIGNED: u64 = 6;
    pub const STORE_ACCESS: u64 = 7;
    pub const ECALL_U: u64 = 8;
    pub const ECALL_S: u64 = 9;
    pub const ECALL_M: u64 = 11;
    pub const INSN_PAGE: u64 = 12;
    pub const LOAD_PAGE: u64 = 13;
    pub const STORE_PAGE: u64 = 15;
    /// The interrupt bit of mcause/scause.
    pub const INTERRUPT: u64 = 1 << 63;
}

/// Interrupt bits of mip/mie.
pub mod irq {
    pub const SSIP: u64 = 1 << 1;
    pub const MSIP: u64 = 1 << 3;
    pub const STIP: u64 = 1 << 5;
    pub const MTIP: u64 = 1 << 7;
    pub const SEIP: u64 = 1 << 9;
    pub const MEIP: u64 = 1 << 11;
}

/// Privilege levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Priv {
    User = 0,
    Supervisor = 1,
    Machine = 3,
}

impl Priv {
    fn from_bits(b: u64) -> Priv {
        match b & 3 {
            0 => Priv::User,
            1 => Priv::Supervisor,
            _ => Priv::Machine,
        }
    }
}

/// The physical world as the hart sees it.
pub trait Bus {
    /// Guest RAM, which starts at physical address [`Bus::ram_base`].
    fn ram(&mut self) -> &mut [u8];
    /// Physical address of the first byte of RAM.
    fn ram_base(&self) -> u64;
    /// A read from a physical address outside RAM at step `count`; `None` is an access fault.
    fn mmio_read(&mut self, paddr: u64, size: u8, count: u64) -> Option<u64>;
    /// A write to a physical address outside RAM; `false` is an access fault.
    fn mmio_write(&mut self, paddr: u64, size: u8, val: u64, count: u64) -> bool;
    /// The value of the `time` CSR when the hart's step counter is `count`.
    fn time(&mut self, count: u64) -> u64;
    /// RAM page `page` (RAM offset / 4096) is written, or may be written from now on without
    /// another call: the hart calls this when it maps the page in its store TLB and for every
    /// write that bypasses that TLB. Dirty-page tracking (live migration, pre-copy) keeps a
    /// bitmap here and calls [`Hart::forget_store_translations`] when it clears it.
    #[inline(always)]
    fn mark_dirty(&mut self, _page: usize) {}
    /// RAM page `page` is about to be read or written, or mapped in a TLB: a bus whose RAM
    /// is still arriving (a post-copy migration's destination) brings it in first. Pages in
    /// a TLB are present (a page never goes missing again), so the hot path never asks.
    #[inline(always)]
    fn ensure_present(&mut self, _page: usize) {}
}

/// Why [`Hart::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The step budget is used up.
    Budget,
    /// A device register was read or written: interrupt lines may have changed.
    Mmio,
    /// WFI retired with no interrupt pending: the hart is idle.
    Wfi,
    /// ECALL from S-mode while the supervisor binary interface is served by the host.
    /// The PC still points at the ECALL; finish it with [`Hart::finish_sbi`].
    Sbi,
    /// A store to the HTIF `tohost` word (bare-metal test programs).
    ToHost(u64),
    /// PAUSE retired on a hart that yields on it ([`Hart::set_yield_on_pause`]): it spins,
    /// waiting for something another hart is to do.
    Pause,
    /// The hook of [`Hart::run_hooked`] stopped the hart before an instruction.
    Hook,
}

/// A pending trap: cause (with [`cause::INTERRUPT`] for interrupts) and trap value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trap {
    pub cause: u64,
    pub tval: u64,
}

impl Trap {
    fn new(cause: u64, tval: u64) -> Trap {
        Trap { cause, tval }
    }
}

/// Pass the code cache (decoded instructions and translated blocks, which all harts of a
/// machine share: they are keyed by physical page) from the hart that ran to the hart that runs
/// next. The receiving hart forgets the giver's virtual-page shortcuts, and if pages became
/// code pages since it last held the cache, flushes its store TLB: a page with code is never
/// mapped there, so every store to one takes the slow path that drops the page's code.
pub fn hand_over_code(from: &mut Hart, to: &mut Hart) {
    // The holder saw every page made code: it made them (`Mmu::ensure_code_page`).
    debug_assert_eq!(from.mmu.code_seen, from.mmu.code.epoch);
    std::mem::swap(&mut from.mmu.code, &mut to.mmu.code);
    to.mmu.code.forget_mappings();
    if to.mmu.code_seen != to.mmu.code.epoch {
        to.mmu.store.flush();
        to.mmu.code_seen = to.mmu.code.epoch;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(j) = &mut to.mmu.code.jit {
        j.select(to.csr.mhartid as usize);
    }
}

/// The complete architectural state of one hart.
#[derive(Clone)]
pub struct Hart {
    pub(crate) x: [u64; 32],
    pub(crate) f: [u64; 32],
    pub(crate) pc: u64,
    pub(crate) prv: Priv,
    /// Steps taken: retired instructions plus instructions that raised an exception.
    pub(crate) count: u64,
    pub(crate) csr: csr::CsrFile,
    /// Interrupt lines driven by the board (MEIP, SEIP, MTIP, MSIP, STIP); ORed into mip.
    pub(crate) ext_irq: u64,
    /// LR/SC reservation: the physical address reserved, if any.
    pub(crate) reservation: Option<u64>,
    /// Serve ECALL from S-mode in the host instead of trapping to M-mode.
    pub(crate) host_sbi: bool,
    /// End the run at PAUSE (the machine has other harts to run instead of a spinning one).
    /// Set by the machine from its number of harts; not saved.
    pub(crate) yield_on_pause: bool,
    /// Physical address of the HTIF `tohost` word, if the program has one.
    pub(crate) tohost: Option<u64>,
    mmu: mmu::Mmu,
    exit: Option<Exit>,
    /// Leave the inner loop after this instruction: an exit is pending, or an interrupt may
    /// have become takeable (CSR write, xRET).
    brk: bool,
    /// The trap of the last instruction fetch that faulted.
    fetch_fault: Trap,
    /// How instructions are executed (not machine state).
    engine: Engine,
}

impl Default for Hart {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Hart {
    /// A hart in its reset state: M-mode, PC 0.
    pub fn new(hartid: u64) -> Hart {
        fpu::init();
        Hart {
            x: [0; 32],
            f: [0; 32],
            pc: 0,
            prv: Priv::Machine,
            count: 0,
            csr: csr::CsrFile::new(hartid),
            ext_irq: 0,
            reservation: None,
            host_sbi: false,
            yield_on_pause: false,
            tohost: None,
            mmu: mmu::Mmu::new(),
            exit: None,
            brk: false,
            fetch_fault: Trap::new(0, 0),
            engine: Engine::default_engine(),
        }
    }

    /// The engine this hart runs with.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Choose the engine; false (and no change) if the host cannot run it.
    pub fn set_engine(&mut self, e: Engine) -> bool {
        if !e.supported() {
            return false;
        }
        self.engine = e;
        true
    }

    /// What the translator has done so far in this hart (zeros under the interpreter).
    pub fn jit_stats(&self) -> JitStats {
        #[cfg(target_arch = "x86_64")]
        if let Some(j) = &self.mmu.code.jit {
            return j.stats;
        }
        JitStats::default()
    }

    /// Steps taken: retired instructions plus instructions that raised an exception.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The program counter.
    pub fn pc(&self) -> u64 {
        self.pc
    }

    /// Set the program counter (boot).
    pub fn set_pc(&mut self, pc: u64) {
        self.pc = pc;
    }

    /// Integer register `i` (0..32).
    pub fn reg(&self, i: usize) -> u64 {
        self.x[i & 31]
    }

    /// Set integer register `i` (writes to x0 are ignored).
    pub fn set_reg(&mut self, i: usize, v: u64) {
        if i & 31 != 0 {
            self.x[i & 31] = v;
        }
    }

    /// The current privilege level.
    pub fn privilege(&self) -> Priv {
        self.prv
    }

    /// Serve ECALL from S-mode in the host (returning [`Exit::Sbi`]) instead of trapping to M.
    pub fn set_host_sbi(&mut self, on: bool) {
        self.host_sbi = on;
    }

    /// Return [`Exit::Pause`] after a PAUSE (machines with several harts).
    pub fn set_yield_on_pause(&mut self, on: bool) {
        self.yield_on_pause = on;
    }

    /// The physical address of the HTIF `tohost` word (bare-metal programs), if any.
    pub fn set_tohost(&mut self, addr: Option<u64>) {
        self.tohost = addr;
    }

    /// Write a CSR as an M-mode CSR instruction would (WARL masks apply); false if the CSR
    /// does not exist or is read-only.
    pub fn set_csr(&mut self, n: u16, v: u64) -> bool {
        let prv = self.prv;
        self.prv = Priv::Machine;
        let ok = self.csr_write(n, v).is_ok();
        self.prv = prv;
        self.retag_data();
        ok
    }

    /// Set or clear the software-writable supervisor software interrupt (SBI IPIs).
    pub fn set_ssip(&mut self, level: bool) {
        if level {
            self.csr.mip |= irq::SSIP;
        } else {
            self.csr.mip &= !irq::SSIP;
        }
    }

    /// Whether an interrupt is both pending and enabled in mie (it may still be masked by
    /// the privilege level and mstatus): a hart at WFI wakes on it.
    pub fn wakes(&self) -> bool {
        self.mip() & self.csr.mie != 0
    }

    /// Set or clear interrupt lines driven by the board.
    pub fn set_ext_irq(&mut self, mask: u64, level: bool) {
        if level {
            self.ext_irq |= mask;
        } else {
            self.ext_irq &= !mask;
        }
    }

    /// The effective mip: software-writable bits ORed with the board's lines.
    pub fn mip(&self) -> u64 {
        self.csr.mip | self.ext_irq
    }

    /// The hart's id (mhartid).
    pub fn hartid(&self) -> u64 {
        self.csr.mhartid
    }

    /// Drop the LR/SC reservation: another hart runs next and may store anywhere, so an SC
    /// after it must fail.
    pub fn clear_reservation(&mut self) {
        self.reservation = None;
    }

    /// Start this hart as SBI's HSM `hart_start` does: in S-mode at `pc` with a0 = its hart
    /// id, a1 = `opaque`, address translation off and supervisor interrupts disabled.
    pub fn sbi_start(&mut self, pc: u64, opaque: u64) {
        let known = self.set_csr(Csr::satp, 0)
            && self.set_csr(Csr::mstatus, self.csr.mstatus & !csr::MSTATUS_SIE);
        debug_assert!(known);
        self.set_priv(Priv::Supervisor);
        self.pc = pc;
        self.x[10] = self.hartid();
        self.x[11] = opaque;
        self.reservation = None;
    }

    /// Forget every cached translation (after the state was changed from outside).
    pub fn flush_tlb(&mut self) {
        self.mmu.flush();
        self.retag_data();
    }

    /// Forget the store translations only: the next store to each page takes the slow path,
    /// which reports the page through [`Bus::mark_dirty`] again.
    pub fn forget_store_translations(&mut self) {
        self.mmu.store.flush();
        self.mmu.jit_exit = true;
    }

    /// Complete an ECALL that returned [`Exit::Sbi`]: store the SBI result in a0/a1 and retire.
    pub fn finish_sbi(&mut self, error: i64, value: u64) {
        self.x[10] = error as u64;
        self.x[11] = value;
        self.pc = self.pc.wrapping_add(4);
        self.count += 1;
    }

    /// Run at most `budget` steps. Returns early when the board must look at the hart.
    pub fn run<B: Bus>(&mut self, bus: &mut B, budget: u64) -> Exit {
        self.run_to(bus, budget, false)
    }

    /// [`Hart::run`]; with `soft`, the end of the budget is only a time to look up (the
    /// caller's next look at the host): once some steps were run, the translator may stop
    /// before a block that would cross it (`Exit::Budget` with steps left) instead of
    /// interpreting up to it, so that the next run starts where a block starts, not inside
    /// one (which would translate a new block from there). The steps taken are those of a run
    /// to the count where it stopped.
    pub fn run_to<B: Bus>(&mut self, bus: &mut B, budget: u64, soft: bool) -> Exit {
        let end = self.count.saturating_add(budget);
        let start = self.count;
        loop {
            if let Some(e) = self.exit.take() {
                return e;
            }
            if self.count >= end {
                return Exit::Budget;
            }
            // Interrupts are looked at here only: nothing inside the loop below can make one
            // takeable without setting `brk` (CSR writes and xRET do; trap entry only masks).
            self.take_interrupt();
            self.brk = false;
            #[cfg(target_arch = "x86_64")]
            if self.engine == Engine::Jit {
                if self.jit_stretch(bus, end, soft.then_some(start)) {
                    if self.count < end && !self.brk {
                        // Stopped early before a block (a soft end).
                        return Exit::Budget;
                    }
                    continue;
                }
                // No executable memory: the interpreter from now on.
                self.engine = Engine::Interp;
            }
            while self.count < end && !self.brk {
                self.step(bus);
            }
        }
    }

    /// One step of the interpreter: the instruction at pc retires or traps.
    #[inline(always)]
    pub(crate) fn step<B: Bus>(&mut self, bus: &mut B) {
        let op = self.fetch_op(bus);
        if let Err(t) = self.exec(bus, op) {
            self.take_trap(t);
            self.count += 1;
        }
    }

    /// End the current run with `e` after this instruction.
    pub(crate) fn stop(&mut self, e: Exit) {
        self.exit = Some(e);
        self.brk = true;
    }

    /// The highest-priority interrupt that is pending, enabled and not masked, if any.
    pub fn pending_interrupt(&self) -> Option<u64> {
        let pending = self.mip() & self.csr.mie;
        if pending == 0 {
            return None;
        }
        let mie = self.csr.mstatus & csr::MSTATUS_MIE != 0;
        let sie = self.csr.mstatus & csr::MSTATUS_SIE != 0;
        let m_enabled = self.prv < Priv::Machine || mie;
        let s_enabled = self.prv < Priv::Supervisor || (self.prv == Priv::Supervisor && sie);
        let m_pending = if m_enabled {
            pending & !self.csr.mideleg
        } else {
            0
        };
        let s_pending = if s_enabled {
            pending & self.csr.mideleg
        } else {
            0
        };
        // Machine-level interrupts win over supervisor-level ones.
        for set in [m_pending, s_pending] {
            for bit in [11u64, 3, 7, 9, 1, 5] {
                if set & (1 << bit) != 0 {
                    return Some(bit);
                }
            }
        }
        None
    }

    /// Enter the trap handler for `t`, at the privilege level that delegation chooses.
    pub fn take_trap(&mut self, t: Trap) {
        let interrupt = t.cause & cause::INTERRUPT != 0;
        let code = t.cause & !cause::INTERRUPT;
        let deleg = if interrupt {
            self.csr.mideleg
        } else {
            self.csr.medeleg
        };
        let old = self.prv;
        self.reservation = None;
        let s = &mut self.csr;
        if old <= Priv::Supervisor && code < 64 && (deleg >> code) & 1 != 0 {
            s.scause = t.cause;
            s.sepc = self.pc;
            s.stval = t.tval;
            let sie = s.mstatus & csr::MSTATUS_SIE != 0;
            s.mstatus &= !(csr::MSTATUS_SPIE | csr::MSTATUS_SIE | csr::MSTATUS_SPP);
            if sie {
                s.mstatus |= csr::MSTATUS_SPIE;
            }
            if old == Priv::Supervisor {
                s.mstatus |= csr::MSTATUS_SPP;
            }
            self.prv = Priv::Supervisor;
            self.pc = vector(s.stvec, interrupt, code);
        } else {
            s.mcause = t.cause;
            s.mepc = self.pc;
            s.mtval = t.tval;
            let mie = s.mstatus & csr::MSTATUS_MIE != 0;
            s.mstatus &= !(csr::MSTATUS_MPIE | csr::MSTATUS_MIE | csr::MSTATUS_MPP);
            if mie {
                s.mstatus |= csr::MSTATUS_MPIE;
            }
            s.mstatus |= (old as u64) << csr::MSTATUS_MPP_SHIFT;
            self.prv = Priv::Machine;
            self.pc = vector(s.mtvec, interrupt, code);
        }
        if old != self.prv {
            self.retag_data();
        } else {
            // MPP changed (it governs loads and stores under MPRV).
            self.mmu.dtag = self.data_tag();
        }
    }

    /// Change privilege level (xRET, reset), keeping the translation caches coherent.
    pub fn set_priv(&mut self, p: Priv) {
        if p != self.prv {
            self.prv = p;
            self.retag_data();
        }
    }
}

fn vector(tvec: u64, interrupt: bool, code: u64) -> u64 {
    let base = tvec & !3;
    if interrupt && tvec & 3 == 1 {
        base.wrapping_add(4 * code)
    } else {
        base
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod jit_tests;
#[cfg(test)]
mod tests;

/// Decode one instruction and return its op kind (for the decode micro-benchmark).
#[doc(hidden)]
pub fn bench_decode(raw: u32) -> u8 {
    exec::decode(raw).kind as u8
}
