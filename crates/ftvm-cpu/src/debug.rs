//! What a debugger needs of a hart: runs that stop before any instruction a hook picks, the
//! memory an instruction is about to access, and reads of registers, CSRs and virtual memory
//! that change nothing.
//!
//! Nothing here is on the normal path: [`Hart::run`] does not call into this module, and a
//! hooked run takes exactly the steps an unhooked one would (it runs the interpreter, which
//! takes the same steps as the translator).

use crate::csr::Csr;
use crate::exec::Kind;
use crate::mmu::{PTE_R, PTE_V, PTE_W, PTE_X};
use crate::{cause, Bus, Exit, Hart, Trap};

/// A data access an instruction is about to make, at a virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemAccess {
    pub addr: u64,
    pub len: u64,
    pub read: bool,
    pub write: bool,
}

impl MemAccess {
    /// Whether the access touches any byte of `addr..addr + len`.
    pub fn overlaps(&self, addr: u64, len: u64) -> bool {
        let end = self.addr.saturating_add(self.len);
        self.addr < addr.saturating_add(len) && addr < end
    }
}

impl Hart {
    /// Take the interrupt that is pending, enabled and not masked, if there is one: what the
    /// hart does before its next step. True if it took one. (After one is taken, none is:
    /// the trap entry masks the level it entered, and a higher level would have won.)
    #[inline(always)]
    pub fn take_interrupt(&mut self) -> bool {
        if self.mip() & self.csr.mie == 0 {
            return false;
        }
        match self.pending_interrupt() {
            Some(c) => {
                self.take_trap(Trap::new(cause::INTERRUPT | c, 0));
                true
            }
            None => false,
        }
    }

    /// Like [`Hart::run`], with the interpreter, asking `hook` before every step whether to
    /// stop before it; `Exit::Hook` when it said so. The steps taken are the ones `run` takes.
    pub fn run_hooked<B: Bus, H: FnMut(&mut Hart, &mut B) -> bool>(
        &mut self,
        bus: &mut B,
        budget: u64,
        hook: &mut H,
    ) -> Exit {
        let end = self.count.saturating_add(budget);
        loop {
            if let Some(e) = self.exit.take() {
                return e;
            }
            if self.count >= end {
                return Exit::Budget;
            }
            self.take_interrupt();
            self.brk = false;
            while self.count < end && !self.brk {
                if hook(self, bus) {
                    return Exit::Hook;
                }
                self.step(bus);
            }
        }
    }

    /// The data access the instruction at pc will make if it does not trap first (its
    /// virtual address, before translation). Fetching the instruction has the effects the
    /// step's own fetch would have (a TLB fill, a page table's accessed bit), so it must only
    /// be called right before the hart steps, as a hook of [`Hart::run_hooked`] is.
    pub fn next_access<B: Bus>(&mut self, bus: &mut B) -> Option<MemAccess> {
        let op = self.fetch_op(bus);
        let x = |r: u32| self.x[(r & 31) as usize];
        let at = |addr: u64, len: u64, read: bool, write: bool| {
            Some(MemAccess {
                addr,
                len,
                read,
                write,
            })
        };
        let base = self.x[(op.rs1 & 31) as usize];
        let addr = base.wrapping_add(op.imm as i64 as u64);
        use Kind::*;
        match op.kind {
            Lb | Lbu => at(addr, 1, true, false),
            Lh | Lhu => at(addr, 2, true, false),
            Lw | Lwu => at(addr, 4, true, false),
            Ld => at(addr, 8, true, false),
            Sb => at(addr, 1, false, true),
            Sh => at(addr, 2, false, true),
            Sw => at(addr, 4, false, true),
            Sd => at(addr, 8, false, true),
            Cbo if op.imm == 4 => at(
                base & !(crate::CBO_BLOCK - 1),
                crate::CBO_BLOCK,
                false,
                true,
            ),
            Amo => {
                let insn = op.insn;
                let len = if (insn >> 12) & 7 == 3 { 8 } else { 4 };
                let a = x(insn >> 15);
                match insn >> 27 {
                    0x02 => at(a, len, true, false),
                    0x03 => at(a, len, false, true),
                    _ => at(a, len, true, true),
                }
            }
            Fp => {
                let insn = op.insn;
                let len = match (insn >> 12) & 7 {
                    2 => 4,
                    3 => 8,
                    _ => return None,
                };
                let a = x(insn >> 15);
                match insn & 0x7f {
                    0x07 => at(
                        a.wrapping_add((insn as i32 >> 20) as i64 as u64),
                        len,
                        true,
                        false,
                    ),
                    0x27 => {
                        let imm = ((insn as i32 >> 25) << 5) | ((insn >> 7) & 31) as i32;
                        at(a.wrapping_add(imm as i64 as u64), len, false, true)
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Floating-point register `i` (its 64 bits, NaN-boxed singles as they are).
    pub fn f_reg(&self, i: usize) -> u64 {
        self.f[i & 31]
    }

    /// A CSR's value as a debugger shows it: no privilege check, no effect. `None` for
    /// registers this hart does not have. (`Csr::time` needs the bus: not offered here.)
    pub fn debug_csr(&self, n: u16) -> Option<u64> {
        let c = &self.csr;
        Some(match n {
            Csr::fflags => c.fflags,
            Csr::frm => c.frm,
            Csr::fcsr => (c.frm << 5) | c.fflags,
            Csr::cycle | Csr::instret | Csr::mcycle | Csr::minstret => {
                self.count.wrapping_add(c.cycle_offset)
            }
            Csr::sstatus => c.mstatus_read() & crate::csr::SSTATUS_MASK,
            Csr::sie => c.mie & c.mideleg,
            Csr::stvec => c.stvec,
            Csr::scounteren => c.scounteren,
            Csr::senvcfg => c.senvcfg,
            Csr::sscratch => c.sscratch,
            Csr::sepc => c.sepc,
            Csr::scause => c.scause,
            Csr::stval => c.stval,
            Csr::sip => self.mip() & c.mideleg,
            Csr::satp => c.satp,
            Csr::mhartid => c.mhartid,
            Csr::mstatus => c.mstatus_read(),
            Csr::misa => crate::csr::MISA,
            Csr::medeleg => c.medeleg,
            Csr::mideleg => c.mideleg,
            Csr::mie => c.mie,
            Csr::mtvec => c.mtvec,
            Csr::mcounteren => c.mcounteren,
            Csr::menvcfg => c.menvcfg,
            Csr::mscratch => c.mscratch,
            Csr::mepc => c.mepc,
            Csr::mcause => c.mcause,
            Csr::mtval => c.mtval,
            Csr::mip => self.mip(),
            _ => return None,
        })
    }

    /// The physical address `vaddr` maps to for this hart's loads, as a debugger reads
    /// memory: through `satp` when it translates (Sv39/Sv48), with no permission check and no
    /// accessed or dirty bit set. `ram` is RAM at physical address `ram_base`. `None` when
    /// nothing is mapped there.
    pub fn debug_translate(&self, ram: &[u8], ram_base: u64, vaddr: u64) -> Option<u64> {
        let satp = self.csr.satp;
        let mode = satp >> 60;
        if self.prv == crate::Priv::Machine || mode == 0 {
            return Some(vaddr);
        }
        let levels: u32 = match mode {
            8 => 3,
            9 => 4,
            _ => return None,
        };
        let va_bits = 12 + 9 * levels;
        let top = (vaddr as i64) >> (va_bits - 1);
        if top != 0 && top != -1 {
            return None;
        }
        let mut table = (satp & ((1 << 44) - 1)) << 12;
        for level in (0..levels).rev() {
            let idx = (vaddr >> (12 + 9 * level)) & 0x1ff;
            let off = (table + idx * 8).checked_sub(ram_base)? as usize;
            let pte = u64::from_le_bytes(ram.get(off..off.checked_add(8)?)?.try_into().ok()?);
            if pte & PTE_V == 0 || (pte & PTE_R == 0 && pte & PTE_W != 0) {
                return None;
            }
            let ppn = (pte >> 10) & ((1 << 44) - 1);
            if pte & (PTE_R | PTE_X) == 0 {
                table = ppn << 12;
                continue;
            }
            let lo_mask = (1u64 << (9 * level)) - 1;
            let page = (ppn & !lo_mask) | ((vaddr >> 12) & lo_mask);
            return Some((page << 12) | (vaddr & 0xfff));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps() {
        let a = MemAccess {
            addr: 100,
            len: 8,
            read: false,
            write: true,
        };
        assert!(a.overlaps(100, 1));
        assert!(a.overlaps(107, 4));
        assert!(a.overlaps(96, 8));
        assert!(!a.overlaps(108, 8));
        assert!(!a.overlaps(92, 8));
    }
}
