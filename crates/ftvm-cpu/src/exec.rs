//! Decode and execute one instruction.

use crate::csr::{
    MSTATUS_FS, MSTATUS_MIE, MSTATUS_MPIE, MSTATUS_MPP, MSTATUS_MPP_SHIFT, MSTATUS_MPRV,
    MSTATUS_SIE, MSTATUS_SPIE, MSTATUS_SPP, MSTATUS_TSR, MSTATUS_TVM, MSTATUS_TW,
};
use crate::mmu::Access;
use crate::{cause, rvc, Bus, Exit, Hart, Priv, Trap};

#[inline(always)]
fn rd(i: u32) -> usize {
    ((i >> 7) & 31) as usize
}
#[inline(always)]
fn rs1(i: u32) -> usize {
    ((i >> 15) & 31) as usize
}
#[inline(always)]
fn rs2(i: u32) -> usize {
    ((i >> 20) & 31) as usize
}
#[inline(always)]
fn imm_i(i: u32) -> u64 {
    ((i as i32) >> 20) as i64 as u64
}
#[inline(always)]
fn imm_s(i: u32) -> u64 {
    ((((i as i32) >> 25) << 5) | ((i >> 7) & 31) as i32) as i64 as u64
}
#[inline(always)]
fn imm_b(i: u32) -> u64 {
    let v = (((i as i32) >> 31) << 12)
        | (((i >> 7) & 1) << 11) as i32
        | (((i >> 25) & 0x3f) << 5) as i32
        | (((i >> 8) & 0xf) << 1) as i32;
    v as i64 as u64
}
#[inline(always)]
fn imm_u(i: u32) -> u64 {
    (i & 0xffff_f000) as i32 as i64 as u64
}
#[inline(always)]
fn imm_j(i: u32) -> u64 {
    let v = (((i as i32) >> 31) << 20)
        | (i & 0xff000) as i32
        | (((i >> 20) & 1) << 11) as i32
        | (((i >> 21) & 0x3ff) << 1) as i32;
    v as i64 as u64
}
#[inline(always)]
fn sext32(v: u64) -> u64 {
    v as i32 as i64 as u64
}

impl Hart {
    /// Execute the instruction at PC. On success the instruction has retired.
    #[inline(always)]
    pub(crate) fn step<B: Bus>(&mut self, bus: &mut B) -> Result<(), Trap> {
        let raw = self.fetch(bus)?;
        let (insn, len) = if raw & 3 == 3 {
            (raw, 4)
        } else {
            (rvc::expand(raw), 2)
        };
        let illegal = Trap::new(cause::ILLEGAL_INSN, raw as u64);
        let pc = self.pc;
        let mut next = pc.wrapping_add(len);
        let x1 = self.x[rs1(insn)];
        let x2 = self.x[rs2(insn)];
        let mut out: Option<u64> = None;
        match insn & 0x7f {
            0x37 => out = Some(imm_u(insn)),
            0x17 => out = Some(pc.wrapping_add(imm_u(insn))),
            0x6f => {
                out = Some(next);
                next = pc.wrapping_add(imm_j(insn));
            }
            0x67 => {
                if (insn >> 12) & 7 != 0 {
                    return Err(illegal);
                }
                out = Some(next);
                next = x1.wrapping_add(imm_i(insn)) & !1;
            }
            0x63 => {
                let taken = match (insn >> 12) & 7 {
                    0 => x1 == x2,
                    1 => x1 != x2,
                    4 => (x1 as i64) < (x2 as i64),
                    5 => (x1 as i64) >= (x2 as i64),
                    6 => x1 < x2,
                    7 => x1 >= x2,
                    _ => return Err(illegal),
                };
                if taken {
                    next = pc.wrapping_add(imm_b(insn));
                }
            }
            0x03 => {
                let a = x1.wrapping_add(imm_i(insn));
                out = Some(match (insn >> 12) & 7 {
                    0 => self.load(bus, a, 1)? as i8 as i64 as u64,
                    1 => self.load(bus, a, 2)? as i16 as i64 as u64,
                    2 => self.load(bus, a, 4)? as i32 as i64 as u64,
                    3 => self.load(bus, a, 8)?,
                    4 => self.load(bus, a, 1)?,
                    5 => self.load(bus, a, 2)?,
                    6 => self.load(bus, a, 4)?,
                    _ => return Err(illegal),
                });
            }
            0x23 => {
                let a = x1.wrapping_add(imm_s(insn));
                match (insn >> 12) & 7 {
                    0 => self.store(bus, a, 1, x2)?,
                    1 => self.store(bus, a, 2, x2)?,
                    2 => self.store(bus, a, 4, x2)?,
                    3 => self.store(bus, a, 8, x2)?,
                    _ => return Err(illegal),
                }
            }
            0x13 => {
                let imm = imm_i(insn);
                let shamt = (insn >> 20) & 0x3f;
                out = Some(match (insn >> 12) & 7 {
                    0 => x1.wrapping_add(imm),
                    1 if insn >> 26 == 0 => x1 << shamt,
                    2 => ((x1 as i64) < (imm as i64)) as u64,
                    3 => (x1 < imm) as u64,
                    4 => x1 ^ imm,
                    5 if insn >> 26 == 0 => x1 >> shamt,
                    5 if insn >> 26 == 0x10 => ((x1 as i64) >> shamt) as u64,
                    6 => x1 | imm,
                    7 => x1 & imm,
                    _ => return Err(illegal),
                });
            }
            0x1b => {
                let shamt = (insn >> 20) & 0x1f;
                out = Some(match ((insn >> 12) & 7, insn >> 25) {
                    (0, _) => sext32(x1.wrapping_add(imm_i(insn))),
                    (1, 0) => sext32(((x1 as u32) << shamt) as u64),
                    (5, 0) => sext32(((x1 as u32) >> shamt) as u64),
                    (5, 0x20) => ((x1 as i32) >> shamt) as i64 as u64,
                    _ => return Err(illegal),
                });
            }
            0x33 => {
                let f3 = (insn >> 12) & 7;
                out = Some(match insn >> 25 {
                    0 => match f3 {
                        0 => x1.wrapping_add(x2),
                        1 => x1 << (x2 & 63),
                        2 => ((x1 as i64) < (x2 as i64)) as u64,
                        3 => (x1 < x2) as u64,
                        4 => x1 ^ x2,
                        5 => x1 >> (x2 & 63),
                        6 => x1 | x2,
                        _ => x1 & x2,
                    },
                    0x20 => match f3 {
                        0 => x1.wrapping_sub(x2),
                        5 => ((x1 as i64) >> (x2 & 63)) as u64,
                        _ => return Err(illegal),
                    },
                    1 => mul_div(f3, x1, x2),
                    _ => return Err(illegal),
                });
            }
            0x3b => {
                let f3 = (insn >> 12) & 7;
                let (a, b) = (x1 as u32, x2 as u32);
                out = Some(match (insn >> 25, f3) {
                    (0, 0) => sext32(a.wrapping_add(b) as u64),
                    (0x20, 0) => sext32(a.wrapping_sub(b) as u64),
                    (0, 1) => sext32((a << (b & 31)) as u64),
                    (0, 5) => sext32((a >> (b & 31)) as u64),
                    (0x20, 5) => ((a as i32) >> (b & 31)) as i64 as u64,
                    (1, 0) => sext32(a.wrapping_mul(b) as u64),
                    (1, 4) => {
                        let (a, b) = (a as i32, b as i32);
                        (if b == 0 {
                            -1
                        } else if a == i32::MIN && b == -1 {
                            a
                        } else {
                            a / b
                        }) as i64 as u64
                    }
                    (1, 5) => sext32(a.checked_div(b).unwrap_or(u32::MAX) as u64),
                    (1, 6) => {
                        let (a, b) = (a as i32, b as i32);
                        (if b == 0 {
                            a
                        } else if a == i32::MIN && b == -1 {
                            0
                        } else {
                            a % b
                        }) as i64 as u64
                    }
                    (1, 7) => sext32(if b == 0 { a } else { a % b } as u64),
                    _ => return Err(illegal),
                });
            }
            0x0f => match (insn >> 12) & 7 {
                // FENCE: a single hart with coherent devices needs no ordering work.
                0 => {}
                // FENCE.I: instructions are fetched from memory each time.
                1 => {}
                _ => return Err(illegal),
            },
            0x73 => {
                if (insn >> 12) & 7 == 0 {
                    return self.exec_system(insn, raw, len);
                }
                if (insn >> 12) & 7 == 4 {
                    return Err(illegal);
                }
                self.exec_csr(bus, insn)?;
                self.pc = next;
                self.count += 1;
                return Ok(());
            }
            0x2f => out = self.exec_amo(bus, insn, x1, x2)?,
            0x07 | 0x27 | 0x43 | 0x47 | 0x4b | 0x4f | 0x53 => {
                self.exec_fp(bus, insn, x1)?;
                self.pc = next;
                self.count += 1;
                return Ok(());
            }
            _ => return Err(illegal),
        }
        if let Some(v) = out {
            let r = rd(insn);
            if r != 0 {
                self.x[r] = v;
            }
        }
        self.pc = next;
        self.count += 1;
        Ok(())
    }

    fn exec_system(&mut self, insn: u32, raw: u32, len: u64) -> Result<(), Trap> {
        let illegal = Trap::new(cause::ILLEGAL_INSN, raw as u64);
        if rd(insn) != 0 {
            return Err(illegal);
        }
        match insn >> 20 {
            0x000 if rs1(insn) == 0 => {
                let c = match self.prv {
                    Priv::User => cause::ECALL_U,
                    Priv::Supervisor => cause::ECALL_S,
                    Priv::Machine => cause::ECALL_M,
                };
                if c == cause::ECALL_S && self.host_sbi {
                    self.exit = Some(Exit::Sbi);
                    return Ok(());
                }
                Err(Trap::new(c, 0))
            }
            0x001 if rs1(insn) == 0 => Err(Trap::new(cause::BREAKPOINT, self.pc)),
            0x102 if rs1(insn) == 0 => {
                // SRET
                if self.prv < Priv::Supervisor
                    || (self.prv == Priv::Supervisor && self.csr.mstatus & MSTATUS_TSR != 0)
                {
                    return Err(illegal);
                }
                let s = &mut self.csr;
                let spp = if s.mstatus & MSTATUS_SPP != 0 {
                    Priv::Supervisor
                } else {
                    Priv::User
                };
                let spie = s.mstatus & MSTATUS_SPIE != 0;
                s.mstatus &= !(MSTATUS_SIE | MSTATUS_SPP | MSTATUS_MPRV);
                s.mstatus |= MSTATUS_SPIE;
                if spie {
                    s.mstatus |= MSTATUS_SIE;
                }
                self.pc = s.sepc;
                self.count += 1;
                self.set_priv(spp);
                self.mmu.flush();
                Ok(())
            }
            0x302 if rs1(insn) == 0 => {
                // MRET
                if self.prv != Priv::Machine {
                    return Err(illegal);
                }
                let s = &mut self.csr;
                let mpp = Priv::from_bits((s.mstatus & MSTATUS_MPP) >> MSTATUS_MPP_SHIFT);
                let mpie = s.mstatus & MSTATUS_MPIE != 0;
                s.mstatus &= !(MSTATUS_MIE | MSTATUS_MPP);
                s.mstatus |= MSTATUS_MPIE;
                if mpie {
                    s.mstatus |= MSTATUS_MIE;
                }
                if mpp != Priv::Machine {
                    s.mstatus &= !MSTATUS_MPRV;
                }
                self.pc = s.mepc;
                self.count += 1;
                self.set_priv(mpp);
                self.mmu.flush();
                Ok(())
            }
            0x105 if rs1(insn) == 0 => {
                // WFI
                if self.prv == Priv::User
                    || (self.prv == Priv::Supervisor && self.csr.mstatus & MSTATUS_TW != 0)
                {
                    return Err(illegal);
                }
                self.pc = self.pc.wrapping_add(len);
                self.count += 1;
                if self.mip() & self.csr.mie == 0 {
                    self.exit = Some(Exit::Wfi);
                }
                Ok(())
            }
            f7 if f7 >> 5 == 0x09 => {
                // SFENCE.VMA
                if self.prv == Priv::User
                    || (self.prv == Priv::Supervisor && self.csr.mstatus & MSTATUS_TVM != 0)
                {
                    return Err(illegal);
                }
                self.mmu.flush();
                self.pc = self.pc.wrapping_add(len);
                self.count += 1;
                Ok(())
            }
            _ => Err(illegal),
        }
    }

    fn exec_amo<B: Bus>(
        &mut self,
        bus: &mut B,
        insn: u32,
        addr: u64,
        src: u64,
    ) -> Result<Option<u64>, Trap> {
        let size: u8 = match (insn >> 12) & 7 {
            2 => 4,
            3 => 8,
            _ => return Err(Trap::new(cause::ILLEGAL_INSN, insn as u64)),
        };
        let widen = |v: u64| if size == 4 { sext32(v) } else { v };
        let op = insn >> 27;
        match op {
            0x02 => {
                // LR
                if rs2(insn) != 0 {
                    return Err(Trap::new(cause::ILLEGAL_INSN, insn as u64));
                }
                let pa = self.amo_paddr(bus, addr, size, Access::Load)?;
                self.reservation = Some(pa);
                Ok(Some(widen(Self::phys_read(bus, pa, size))))
            }
            0x03 => {
                // SC
                let pa = self.amo_paddr(bus, addr, size, Access::Store)?;
                let ok = self.reservation == Some(pa);
                self.reservation = None;
                if ok {
                    self.phys_write(bus, pa, size, src);
                }
                Ok(Some(!ok as u64))
            }
            _ => {
                let pa = self.amo_paddr(bus, addr, size, Access::Store)?;
                let old = widen(Self::phys_read(bus, pa, size));
                let s = widen(src);
                let new = match op {
                    0x01 => s,
                    0x00 => old.wrapping_add(s),
                    0x04 => old ^ s,
                    0x0c => old & s,
                    0x08 => old | s,
                    0x10 => (old as i64).min(s as i64) as u64,
                    0x14 => (old as i64).max(s as i64) as u64,
                    0x18 => old.min(s),
                    0x1c => old.max(s),
                    _ => return Err(Trap::new(cause::ILLEGAL_INSN, insn as u64)),
                };
                self.phys_write(bus, pa, size, new);
                Ok(Some(old))
            }
        }
    }

    /// Mark the FP state dirty (after an FP register or fflags write).
    #[inline(always)]
    pub(crate) fn fs_dirty(&mut self) {
        self.csr.mstatus |= MSTATUS_FS;
    }
}

fn mul_div(f3: u32, a: u64, b: u64) -> u64 {
    match f3 {
        0 => a.wrapping_mul(b),
        1 => ((a as i64 as i128 * b as i64 as i128) >> 64) as u64,
        2 => ((a as i64 as i128 * b as u128 as i128) >> 64) as u64,
        3 => ((a as u128 * b as u128) >> 64) as u64,
        4 => {
            let (a, b) = (a as i64, b as i64);
            (if b == 0 {
                -1
            } else {
                a.wrapping_div(b)
            }) as u64
        }
        5 => a.checked_div(b).unwrap_or(u64::MAX),
        6 => {
            let (a, b) = (a as i64, b as i64);
            (if b == 0 { a } else { a.wrapping_rem(b) }) as u64
        }
        _ => {
            if b == 0 {
                a
            } else {
                a % b
            }
        }
    }
}
