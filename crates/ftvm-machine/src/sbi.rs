//! The supervisor binary interface, served by ftvm itself (no firmware in the guest).
//! Base, TIME, IPI, RFENCE, HSM, SRST and the legacy (v0.1) calls.

use ftvm_cpu::irq;

use crate::board::PowerEvent;
use crate::Machine;

const EXT_BASE: u64 = 0x10;
const EXT_TIME: u64 = 0x5449_4d45;
const EXT_IPI: u64 = 0x0073_5049;
const EXT_RFENCE: u64 = 0x5246_4e43;
const EXT_HSM: u64 = 0x0048_534d;
const EXT_SRST: u64 = 0x5352_5354;

const SUCCESS: i64 = 0;
const ERR_NOT_SUPPORTED: i64 = -2;
const ERR_INVALID_PARAM: i64 = -3;
const ERR_ALREADY_AVAILABLE: i64 = -6;

/// SBI specification version 1.0.
const SPEC_VERSION: u64 = 1 << 24;
/// Implementation ID reported to the guest (not a registered one).
const IMPL_ID: u64 = 0x6674;

impl Machine {
    /// Serve the ECALL the hart stopped on.
    pub(crate) fn handle_sbi(&mut self) {
        let h = &self.hart;
        let (eid, fid, a0, a1) = (h.reg(17), h.reg(16), h.reg(10), h.reg(11));
        if eid < 0x10 {
            let ret = self.legacy_sbi(eid, a0);
            let a1 = self.hart.reg(11);
            self.hart.finish_sbi(ret, a1);
            return;
        }
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
            (EXT_IPI, 0) => {
                // hart_mask a0 relative to hart_mask_base a1 (-1: all harts).
                if a1 == u64::MAX || (a1 == 0 && a0 & 1 != 0) {
                    self.hart.set_ssip(true);
                }
                (SUCCESS, 0)
            }
            (EXT_RFENCE, 0..=6) => {
                self.hart.flush_tlb();
                (SUCCESS, 0)
            }
            (EXT_HSM, 0) => {
                if a0 == 0 {
                    (ERR_ALREADY_AVAILABLE, 0)
                } else {
                    (ERR_INVALID_PARAM, 0)
                }
            }
            (EXT_HSM, 2) => {
                if a0 == 0 {
                    (SUCCESS, 0) // STARTED
                } else {
                    (ERR_INVALID_PARAM, 0)
                }
            }
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
        self.hart.finish_sbi(err, val);
    }

    fn set_timer(&mut self, when: u64) {
        self.board.stimecmp = when;
        self.hart.set_ext_irq(irq::STIP, false);
    }

    fn legacy_sbi(&mut self, eid: u64, a0: u64) -> i64 {
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
                self.hart.set_ssip(false);
                0
            }
            4 => {
                self.hart.set_ssip(true);
                0
            }
            5..=7 => {
                self.hart.flush_tlb();
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
