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
            (EXT_HSM, 2) => match self.hart_index(a0) {
                Some(i) => (SUCCESS, self.sched.state[i] as u64),
                None => (ERR_INVALID_PARAM, 0),
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
        if base == u64::MAX {
            return Some(Harts((1 << self.harts.len()) - 1));
        }
        let mut set = 0u64;
        for bit in 0..64 {
            if mask & (1 << bit) != 0 {
                set |= 1 << self.hart_index(base.checked_add(bit)?)?;
            }
        }
        Some(Harts(set))
    }

    /// The hart with id `id`, if the machine has it.
    fn hart_index(&self, id: u64) -> Option<usize> {
        usize::try_from(id).ok().filter(|&i| i < self.harts.len())
    }

    /// HSM hart_start: hart `id` begins in S-mode at `pc` with a1 = `opaque`. The error, and
    /// whether the caller should let it run.
    fn hart_start(&mut self, id: u64, pc: u64, opaque: u64) -> (i64, bool) {
        let Some(i) = self.hart_index(id) else {
            return (ERR_INVALID_PARAM, false);
        };
        if self.sched.state[i] != HartState::Stopped {
            return (ERR_ALREADY_AVAILABLE, false);
        }
        let ram = crate::RAM_BASE..crate::RAM_BASE + self.board.ram.len() as u64;
        if !ram.contains(&pc) {
            return (ERR_INVALID_ADDRESS, false);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MIN_RAM, RAM_BASE};
    use ftvm_cpu::Priv;

    /// Make the running hart call SBI `eid`/`fid` with arguments `args`; a0 and a1 after it.
    fn call(m: &mut Machine, eid: u64, fid: u64, args: &[u64]) -> (i64, u64) {
        let cur = m.sched.cur;
        let h = &mut m.harts[cur];
        h.set_reg(17, eid);
        h.set_reg(16, fid);
        for (i, &a) in args.iter().enumerate() {
            h.set_reg(10 + i, a);
        }
        m.handle_sbi();
        let h = &m.harts[cur];
        (h.reg(10) as i64, h.reg(11))
    }

    #[test]
    fn hart_state_management_ipis_and_fences_reach_the_harts_named() {
        let mut m = Machine::with_harts(MIN_RAM, 3).unwrap();
        assert_eq!(call(&mut m, EXT_HSM, 2, &[1]), (SUCCESS, 1), "stopped");
        assert_eq!(call(&mut m, EXT_HSM, 2, &[3]).0, ERR_INVALID_PARAM);
        let entry = RAM_BASE + 0x2000;
        let before = m.sched.slice_end;
        assert_eq!(call(&mut m, EXT_HSM, 0, &[1, entry, 0x1234]).0, SUCCESS);
        let h1 = &m.harts[1];
        assert_eq!((h1.pc(), h1.reg(10), h1.reg(11)), (entry, 1, 0x1234));
        assert_eq!(h1.privilege(), Priv::Supervisor);
        assert_eq!(m.sched.state[1], HartState::Started);
        assert!(
            m.sched.slice_end < before,
            "the caller yields to the started hart"
        );
        assert_eq!(call(&mut m, EXT_HSM, 2, &[1]), (SUCCESS, 0), "started");
        assert_eq!(
            call(&mut m, EXT_HSM, 0, &[1, entry, 0]).0,
            ERR_ALREADY_AVAILABLE
        );
        assert_eq!(
            call(&mut m, EXT_HSM, 0, &[7, entry, 0]).0,
            ERR_INVALID_PARAM
        );
        assert_eq!(
            call(&mut m, EXT_HSM, 0, &[2, 0x1000, 0]).0,
            ERR_INVALID_ADDRESS
        );
        // IPIs: hart 1 only (mask relative to base 1), then a hart the machine lacks.
        assert_eq!(call(&mut m, EXT_IPI, 0, &[0b1, 1]).0, SUCCESS);
        assert!(m.harts[1].mip() & irq::SSIP != 0);
        assert!(m.harts[0].mip() & irq::SSIP == 0);
        assert_eq!(call(&mut m, EXT_IPI, 0, &[0b100, 1]).0, ERR_INVALID_PARAM);
        assert_eq!(
            call(&mut m, EXT_RFENCE, 1, &[0b11, 0, 0, u64::MAX]).0,
            SUCCESS
        );
        assert_eq!(
            call(&mut m, EXT_RFENCE, 1, &[1, 3, 0, u64::MAX]).0,
            ERR_INVALID_PARAM
        );
        // The caller suspends (and waits), then stops.
        assert_eq!(call(&mut m, EXT_HSM, 3, &[0, 0, 0]).0, SUCCESS);
        assert_eq!(
            (m.sched.state[0], m.sched.waiting[0]),
            (HartState::Suspended, true)
        );
        assert_eq!(
            call(&mut m, EXT_HSM, 3, &[0x8000_0000, 0, 0]).0,
            ERR_NOT_SUPPORTED
        );
        assert_eq!(call(&mut m, EXT_HSM, 1, &[]).0, SUCCESS);
        assert_eq!(m.sched.state[0], HartState::Stopped);
        // One hart cannot stop: nothing could start it again.
        let mut one = Machine::new(MIN_RAM).unwrap();
        assert_eq!(call(&mut one, EXT_HSM, 1, &[]).0, ERR_NOT_SUPPORTED);
        assert_eq!(one.sched.state[0], HartState::Started);
    }
}
