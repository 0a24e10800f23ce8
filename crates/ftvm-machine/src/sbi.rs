//! The supervisor binary interface, served by ftvm itself (no firmware in the guest).
//! Base, TIME, IPI, RFENCE, HSM, SRST and the legacy (v0.1) calls, for every hart.

use ftvm_cpu::irq;

use crate::board::PowerEvent;
use crate::{HartState, Machine};

const EXT_BASE: u64 = 0x10;
const EXT_TIME: u64 = 0x5449_4d45;
const EXT_IPI: u64 = 0x0073_5049;
const EXT_RFENCE: u64 = 0x5246_4e43;
const EXT_HSM: u64 = 0x0048_534d;
const EXT_SRST: u64 = 0x5352_5354;

const SUCCESS: i64 = 0;
const ERR_NOT_SUPPORTED: i64 = -2;
const ERR_INVALID_PARAM: i64 = -3;
const ERR_INVALID_ADDRESS: i64 = -5;
const ERR_ALREADY_AVAILABLE: i64 = -6;

/// SBI specification version 1.0.
const SPEC_VERSION: u64 = 1 << 24;
/// Implementation ID reported to the guest (not a registered one).
const IMPL_ID: u64 = 0x6674;
/// hart_suspend's default retentive suspend type.
const SUSPEND_RETENTIVE: u64 = 0;

/// What a call does to the calling hart after it returns.
enum After {
    Continue,
    /// Another hart has work now (an IPI, a start): end the caller's slice.
    Yield,
    Stop,
    Suspend,
}

impl Machine {
    /// Serve the ECALL the running hart stopped on.
    pub(crate) fn handle_sbi(&mut self) {
        let cur = self.sched.cur;
        let h = &self.harts[cur];
        let (eid, fid) = (h.reg(17), h.reg(16));
        let (a0, a1, a2) = (h.reg(10), h.reg(11), h.reg(12));
        if eid < 0x10 {
            let ret = self.legacy_sbi(eid, a0);
            let a1 = self.harts[cur].reg(11);
            self.harts[cur].finish_sbi(ret, a1);
            return;
        }
        let mut after = After::Continue;
        let (err, val) = match (eid, fid) {
            (EXT_BASE, 0) => (SUCCESS, SPEC_VERSION),
            (EXT_BASE, 1) => (SUCCESS, IMPL_ID),
            (EXT_BASE, 2) => (SUCCESS, 1),
            (EXT_BASE, 3) => (
                SUCCESS,
                matches!(
                    a0,
                    EXT_BASE | EXT_TIME | EXT_IPI | EXT_RFENCE | EXT_HSM | EXT_SRST
                ) as u64,
            ),
            (EXT_BASE, 4..=6) => (SUCCESS, 0),
            (EXT_TIME, 0) => {
                self.set_timer(a0);
                (SUCCESS, 0)
            }
            (EXT_IPI, 0) => match self.targets(a0, a1) {
                Some(t) => {
                    for i in t.iter() {
                        self.harts[i].set_ssip(true);
                    }
                    if t.others(cur) {
                        after = After::Yield;
                    }
                    (SUCCESS, 0)
                }
                None => (ERR_INVALID_PARAM, 0),
            },
            (EXT_RFENCE, 0..=6) => match self.targets(a0, a1) {
                Some(t) => {
                    // Remote FENCE.I needs nothing (the harts share one code cache, kept
                    // coherent with every store), but a flush is always allowed; the harts
                    // that are not running are between instructions, so flushing them now is
                    // exact.
                    for i in t.iter() {
                        self.harts[i].flush_tlb();
                    }
                    (SUCCESS, 0)
                }
                None => (ERR_INVALID_PARAM, 0),
            },
            (EXT_HSM, 0) => {
                let (err, yields) = self.hart_start(a0, a1, a2);
                if yields {
                    after = After::Yield;
                }
                (err, 0)
            }
            // One hart cannot stop or suspend: nothing could ever wake the machine.
            (EXT_HSM, 1) if self.harts.len() > 1 => {
                after = After::Stop;
                (SUCCESS, 0)
            }
            (EXT_HSM, 2) => match self.sched.state.get(a0 as usize) {
                Some(&s) if a0 < self.harts.len() as u64 => (SUCCESS, s as u64),
                _ => (ERR_INVALID_PARAM, 0),
            },
            (EXT_HSM, 3) if self.harts.len() > 1 => match a0 as u32 as u64 {
                SUSPEND_RETENTIVE => {
                    after = After::Suspend;
                    (SUCCESS, 0)
                }
                0x8000_0000 | 0x1000_0000..=0x7fff_ffff | 0xf000_0000..=0xffff_ffff => {
                    (ERR_NOT_SUPPORTED, 0)
                }
                _ => (ERR_INVALID_PARAM, 0),
            },
            (EXT_SRST, 0) => match a0 {
                0 => {
                    self.board.power = Some(PowerEvent::Off(a1 as u32));
                    (SUCCESS, 0)
                }
                1 | 2 => {
                    self.board.power = Some(PowerEvent::Reset(a1 as u32));
                    (SUCCESS, 0)
                }
                _ => (ERR_INVALID_PARAM, 0),
            },
            _ => (ERR_NOT_SUPPORTED, 0),
        };
        // The ECALL retires (a stopped hart starts afresh at its next hart_start).
        self.harts[cur].finish_sbi(err, val);
        let now = self.count();
        let s = &mut self.sched;
        match after {
            After::Continue => {}
            After::Yield => s.slice_end = s.slice_end.min(now),
            After::Stop => {
                s.state[cur] = HartState::Stopped;
                s.waiting[cur] = false;
            }
            After::Suspend => {
                s.state[cur] = HartState::Suspended;
                s.waiting[cur] = true;
            }
        }
    }

    /// The harts a (hart_mask, hart_mask_base) pair names, or None if it names one the
    /// machine does not have. A base of all ones means every hart.
    fn targets(&self, mask: u64, base: u64) -> Option<Harts> {
        let n = self.harts.len() as u64;
        if base == u64::MAX {
            return Some(Harts((1 << n) - 1));
        }
        let mut set = 0u64;
        for bit in 0..64 {
            if mask & (1 << bit) != 0 {
                let hart = base.checked_add(bit).filter(|&h| h < n)?;
                set |= 1 << hart;
            }
        }
        Some(Harts(set))
    }

    /// HSM hart_start: hart `id` begins in S-mode at `pc` with a1 = `opaque`. The error, and
    /// whether the caller should let it run.
    fn hart_start(&mut self, id: u64, pc: u64, opaque: u64) -> (i64, bool) {
        let Some(&state) = self.sched.state.get(id as usize) else {
            return (ERR_INVALID_PARAM, false);
        };
        if id >= self.harts.len() as u64 {
            return (ERR_INVALID_PARAM, false);
        }
        if state != HartState::Stopped {
            return (ERR_ALREADY_AVAILABLE, false);
        }
        let ram = crate::RAM_BASE..crate::RAM_BASE + self.board.ram.len() as u64;
        if !ram.contains(&pc) {
            return (ERR_INVALID_ADDRESS, false);
        }
        let i = id as usize;
        self.harts[i].sbi_start(pc, opaque);
        self.harts[i].set_ssip(false);
        self.sched.state[i] = HartState::Started;
        self.sched.waiting[i] = false;
        (SUCCESS, true)
    }

    fn set_timer(&mut self, when: u64) {
        let cur = self.sched.cur;
        self.board.timers[cur].stimecmp = when;
        self.harts[cur].set_ext_irq(irq::STIP, false);
    }

    fn legacy_sbi(&mut self, eid: u64, a0: u64) -> i64 {
        let cur = self.sched.cur;
        match eid {
            0 => {
                self.set_timer(a0);
                0
            }
            1 => {
                self.board.console_out.push(a0 as u8);
                0
            }
            // Console input arrives through the UART only.
            2 => -1,
            3 => {
                self.harts[cur].set_ssip(false);
                0
            }
            4 => {
                // The hart mask is in guest memory: every started hart gets the IPI (one it
                // did not expect is harmless).
                for (h, s) in self.harts.iter_mut().zip(&self.sched.state) {
                    if *s == HartState::Started {
                        h.set_ssip(true);
                    }
                }
                0
            }
            5..=7 => {
                for h in &mut self.harts {
                    h.flush_tlb();
                }
                0
            }
            8 => {
                self.board.power = Some(PowerEvent::Off(0));
                0
            }
            _ => ERR_NOT_SUPPORTED,
        }
    }
}

/// A set of harts, one bit each.
#[derive(Clone, Copy)]
struct Harts(u64);

impl Harts {
    fn iter(self) -> impl Iterator<Item = usize> {
        (0..64).filter(move |i| self.0 & (1 << i) != 0)
    }

    /// Whether it holds a hart other than `cur`.
    fn others(self, cur: usize) -> bool {
        self.0 & !(1 << cur) != 0
    }
}
