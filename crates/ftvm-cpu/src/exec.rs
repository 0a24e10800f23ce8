//! Decode instructions into [`Op`]s and execute them.
//!
//! Decoding happens once per instruction address: [`crate::icache`] keeps the decoded ops of
//! each page of RAM that holds code. Integer instructions get an op kind of their own; the rarer
//! classes (CSR, system, atomics, floating point) keep the raw instruction and are decoded again
//! by their own routines.

use crate::csr::{
    MSTATUS_MIE, MSTATUS_MPIE, MSTATUS_MPP, MSTATUS_MPP_SHIFT, MSTATUS_MPRV, MSTATUS_SIE,
    MSTATUS_SPIE, MSTATUS_SPP, MSTATUS_TSR, MSTATUS_TVM, MSTATUS_TW,
};
use crate::mmu::Access;
use crate::{cause, rvc, Bus, Exit, Hart, Priv, Trap};

/// What an op does. `Undecoded` (0) marks an empty slot of the decoded-instruction cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub(crate) enum Kind {
    #[default]
    Undecoded = 0,
    Illegal,
    Lui,
    Auipc,
    Jal,
    Jalr,
    Beq,
    Bne,
    Blt,
    Bge,
    Bltu,
    Bgeu,
    Lb,
    Lh,
    Lw,
    Ld,
    Lbu,
    Lhu,
    Lwu,
    Sb,
    Sh,
    Sw,
    Sd,
    Addi,
    Slti,
    Sltiu,
    Xori,
    Ori,
    Andi,
    Slli,
    Srli,
    Srai,
    Addiw,
    Slliw,
    Srliw,
    Sraiw,
    Add,
    Sub,
    Sll,
    Slt,
    Sltu,
    Xor,
    Srl,
    Sra,
    Or,
    And,
    Mul,
    Mulh,
    Mulhsu,
    Mulhu,
    Div,
    Divu,
    Rem,
    Remu,
    Addw,
    Subw,
    Sllw,
    Srlw,
    Sraw,
    Mulw,
    Divw,
    Divuw,
    Remw,
    Remuw,
    Fence,
    Csr,
    System,
    Amo,
    Fp,
    /// Zba, Zbb, Zbs or Zicond (the instruction is decoded again by [`bitmanip`]).
    Bit,
    /// Zicbom's CBO.INVAL, CBO.CLEAN, CBO.FLUSH and Zicboz's CBO.ZERO (imm: 0, 1, 2, 4).
    Cbo,
    /// Zihintpause's PAUSE (a FENCE with pred = W, succ = 0): the hart may yield on it.
    Pause,
    /// Not an instruction: fetching at PC faulted (the trap is in `Hart::fetch_fault`).
    FetchFault,
}

/// One decoded instruction (16 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Op {
    pub kind: Kind,
    pub rd: u8,
    pub rs1: u8,
    pub rs2: u8,
    /// Instruction length in bytes (2 or 4).
    pub len: u8,
    /// The immediate; for kinds without one (illegal, CSR, system, atomics, floating point),
    /// the instruction as fetched (16 or 32 bits), which is the trap value if it is illegal.
    pub imm: i32,
    /// The 32-bit form (the expansion of a compressed instruction).
    pub insn: u32,
}

/// Every kind, at the index of its discriminant (for [`Op::unpack`]).
const KINDS: [Kind; 73] = [
    Kind::Undecoded,
    Kind::Illegal,
    Kind::Lui,
    Kind::Auipc,
    Kind::Jal,
    Kind::Jalr,
    Kind::Beq,
    Kind::Bne,
    Kind::Blt,
    Kind::Bge,
    Kind::Bltu,
    Kind::Bgeu,
    Kind::Lb,
    Kind::Lh,
    Kind::Lw,
    Kind::Ld,
    Kind::Lbu,
    Kind::Lhu,
    Kind::Lwu,
    Kind::Sb,
    Kind::Sh,
    Kind::Sw,
    Kind::Sd,
    Kind::Addi,
    Kind::Slti,
    Kind::Sltiu,
    Kind::Xori,
    Kind::Ori,
    Kind::Andi,
    Kind::Slli,
    Kind::Srli,
    Kind::Srai,
    Kind::Addiw,
    Kind::Slliw,
    Kind::Srliw,
    Kind::Sraiw,
    Kind::Add,
    Kind::Sub,
    Kind::Sll,
    Kind::Slt,
    Kind::Sltu,
    Kind::Xor,
    Kind::Srl,
    Kind::Sra,
    Kind::Or,
    Kind::And,
    Kind::Mul,
    Kind::Mulh,
    Kind::Mulhsu,
    Kind::Mulhu,
    Kind::Div,
    Kind::Divu,
    Kind::Rem,
    Kind::Remu,
    Kind::Addw,
    Kind::Subw,
    Kind::Sllw,
    Kind::Srlw,
    Kind::Sraw,
    Kind::Mulw,
    Kind::Divw,
    Kind::Divuw,
    Kind::Remw,
    Kind::Remuw,
    Kind::Fence,
    Kind::Csr,
    Kind::System,
    Kind::Amo,
    Kind::Fp,
    Kind::Bit,
    Kind::Cbo,
    Kind::Pause,
    Kind::FetchFault,
];

impl Op {
    /// The op in two words (for translated code, which passes it to its helper in registers
    /// instead of a pointer to a cold copy).
    pub(crate) fn pack(&self) -> [u64; 2] {
        let lo = self.kind as u64
            | (self.rd as u64) << 8
            | (self.rs1 as u64) << 16
            | (self.rs2 as u64) << 24
            | (self.len as u64) << 32;
        [lo, self.imm as u32 as u64 | (self.insn as u64) << 32]
    }

    /// The op [`Op::pack`] made these words of (an unknown kind is `Illegal`).
    pub(crate) fn unpack([lo, hi]: [u64; 2]) -> Op {
        Op {
            kind: KINDS
                .get(lo as u8 as usize)
                .copied()
                .unwrap_or(Kind::Illegal),
            rd: (lo >> 8) as u8,
            rs1: (lo >> 16) as u8,
            rs2: (lo >> 24) as u8,
            len: (lo >> 32) as u8,
            imm: hi as u32 as i32,
            insn: (hi >> 32) as u32,
        }
    }

    /// The instruction bits as fetched, for kinds that carry them in `imm`.
    fn raw(&self) -> u64 {
        self.imm as u32 as u64
    }
}

fn imm_i(i: u32) -> i32 {
    (i as i32) >> 20
}
fn imm_s(i: u32) -> i32 {
    (((i as i32) >> 25) << 5) | ((i >> 7) & 31) as i32
}
fn imm_b(i: u32) -> i32 {
    (((i as i32) >> 31) << 12)
        | (((i >> 7) & 1) << 11) as i32
        | (((i >> 25) & 0x3f) << 5) as i32
        | (((i >> 8) & 0xf) << 1) as i32
}
fn imm_j(i: u32) -> i32 {
    (((i as i32) >> 31) << 20)
        | (i & 0xff000) as i32
        | (((i >> 20) & 1) << 11) as i32
        | (((i >> 21) & 0x3ff) << 1) as i32
}

/// Decode a raw instruction (16 or 32 bits, as fetched).
pub(crate) fn decode(raw: u32) -> Op {
    let (insn, len) = if raw & 3 == 3 {
        (raw, 4)
    } else {
        (rvc::expand(raw), 2)
    };
    let mut op = Op {
        kind: Kind::Illegal,
        rd: ((insn >> 7) & 31) as u8,
        rs1: ((insn >> 15) & 31) as u8,
        rs2: ((insn >> 20) & 31) as u8,
        len,
        imm: raw as i32,
        insn,
    };
    let f3 = (insn >> 12) & 7;
    let f7 = insn >> 25;
    use Kind::*;
    let (kind, imm) = match insn & 0x7f {
        0x37 => (Lui, (insn & 0xffff_f000) as i32),
        0x17 => (Auipc, (insn & 0xffff_f000) as i32),
        0x6f => (Jal, imm_j(insn)),
        0x67 if f3 == 0 => (Jalr, imm_i(insn)),
        0x63 => {
            let k = match f3 {
                0 => Beq,
                1 => Bne,
                4 => Blt,
                5 => Bge,
                6 => Bltu,
                7 => Bgeu,
                _ => return illegal(op),
            };
            (k, imm_b(insn))
        }
        0x03 => {
            let k = match f3 {
                0 => Lb,
                1 => Lh,
                2 => Lw,
                3 => Ld,
                4 => Lbu,
                5 => Lhu,
                6 => Lwu,
                _ => return illegal(op),
            };
            (k, imm_i(insn))
        }
        0x23 => {
            let k = match f3 {
                0 => Sb,
                1 => Sh,
                2 => Sw,
                3 => Sd,
                _ => return illegal(op),
            };
            (k, imm_s(insn))
        }
        0x13 => {
            let shamt = ((insn >> 20) & 0x3f) as i32;
            match (f3, insn >> 26) {
                (0, _) => (Addi, imm_i(insn)),
                (1, 0) => (Slli, shamt),
                (2, _) => (Slti, imm_i(insn)),
                (3, _) => (Sltiu, imm_i(insn)),
                (4, _) => (Xori, imm_i(insn)),
                (5, 0) => (Srli, shamt),
                (5, 0x10) => (Srai, shamt),
                (6, _) => (Ori, imm_i(insn)),
                (7, _) => (Andi, imm_i(insn)),
                _ => return bit_or_illegal(op),
            }
        }
        0x1b => {
            let shamt = ((insn >> 20) & 0x1f) as i32;
            match (f3, f7) {
                (0, _) => (Addiw, imm_i(insn)),
                (1, 0) => (Slliw, shamt),
                (5, 0) => (Srliw, shamt),
                (5, 0x20) => (Sraiw, shamt),
                _ => return bit_or_illegal(op),
            }
        }
        0x33 => {
            let k = match (f7, f3) {
                (0, 0) => Add,
                (0x20, 0) => Sub,
                (0, 1) => Sll,
                (0, 2) => Slt,
                (0, 3) => Sltu,
                (0, 4) => Xor,
                (0, 5) => Srl,
                (0x20, 5) => Sra,
                (0, 6) => Or,
                (0, 7) => And,
                (1, 0) => Mul,
                (1, 1) => Mulh,
                (1, 2) => Mulhsu,
                (1, 3) => Mulhu,
                (1, 4) => Div,
                (1, 5) => Divu,
                (1, 6) => Rem,
                (1, 7) => Remu,
                _ => return bit_or_illegal(op),
            };
            (k, 0)
        }
        0x3b => {
            let k = match (f7, f3) {
                (0, 0) => Addw,
                (0x20, 0) => Subw,
                (0, 1) => Sllw,
                (0, 5) => Srlw,
                (0x20, 5) => Sraw,
                (1, 0) => Mulw,
                (1, 4) => Divw,
                (1, 5) => Divuw,
                (1, 6) => Remw,
                (1, 7) => Remuw,
                _ => return bit_or_illegal(op),
            };
            (k, 0)
        }
        // FENCE and FENCE.I: one hart, and the decoded-op cache is kept coherent with every
        // store, so neither needs work.
        0x0f if insn == PAUSE => (Pause, 0),
        0x0f if f3 <= 1 => (Fence, 0),
        0x0f if f3 == 2 && (insn >> 7) & 31 == 0 && matches!(insn >> 20, 0 | 1 | 2 | 4) => {
            (Cbo, (insn >> 20) as i32)
        }
        0x73 if f3 == 0 => (System, raw as i32),
        0x73 if f3 != 4 => (Csr, raw as i32),
        0x2f => (Amo, raw as i32),
        0x07 | 0x27 | 0x43 | 0x47 | 0x4b | 0x4f | 0x53 => (Fp, raw as i32),
        _ => (Illegal, raw as i32),
    };
    op.kind = kind;
    op.imm = imm;
    op
}

fn illegal(mut op: Op) -> Op {
    op.kind = Kind::Illegal;
    op
}

/// `op` (with the raw instruction in `imm`) as a [`Kind::Bit`] op if it is one, else illegal.
fn bit_or_illegal(mut op: Op) -> Op {
    op.kind = if bitmanip(op.insn, 0, 0).is_some() {
        Kind::Bit
    } else {
        Kind::Illegal
    };
    op
}

/// Zba, Zbb, Zbs and Zicond (RV64): the result for operands `a` (rs1) and `b` (rs2), or None
/// if `insn` is none of theirs.
pub(crate) fn bitmanip(insn: u32, a: u64, b: u64) -> Option<u64> {
    let f3 = (insn >> 12) & 7;
    let f7 = insn >> 25;
    let f6 = insn >> 26;
    let imm12 = insn >> 20;
    let rs2 = (insn >> 20) & 31;
    let shamt = (insn >> 20) & 63;
    let (sh, shw) = ((b & 63) as u32, (b & 31) as u32);
    let uw = a as u32 as u64;
    Some(match insn & 0x7f {
        0x33 => match (f7, f3) {
            (0x10, 2) => (a << 1).wrapping_add(b),
            (0x10, 4) => (a << 2).wrapping_add(b),
            (0x10, 6) => (a << 3).wrapping_add(b),
            (0x20, 7) => a & !b,
            (0x20, 6) => a | !b,
            (0x20, 4) => !(a ^ b),
            (0x05, 4) => (a as i64).min(b as i64) as u64,
            (0x05, 5) => a.min(b),
            (0x05, 6) => (a as i64).max(b as i64) as u64,
            (0x05, 7) => a.max(b),
            (0x30, 1) => a.rotate_left(sh),
            (0x30, 5) => a.rotate_right(sh),
            (0x24, 1) => a & !(1 << sh),
            (0x24, 5) => (a >> sh) & 1,
            (0x34, 1) => a ^ (1 << sh),
            (0x14, 1) => a | (1 << sh),
            (0x07, 5) => {
                if b == 0 {
                    0
                } else {
                    a
                }
            }
            (0x07, 7) => {
                if b != 0 {
                    0
                } else {
                    a
                }
            }
            _ => return None,
        },
        0x3b => match (f7, f3) {
            (0x04, 0) => uw.wrapping_add(b),
            (0x10, 2) => (uw << 1).wrapping_add(b),
            (0x10, 4) => (uw << 2).wrapping_add(b),
            (0x10, 6) => (uw << 3).wrapping_add(b),
            (0x04, 4) if rs2 == 0 => a & 0xffff,
            (0x30, 1) => sext32((a as u32).rotate_left(shw) as u64),
            (0x30, 5) => sext32((a as u32).rotate_right(shw) as u64),
            _ => return None,
        },
        0x13 => match (f3, imm12, f6) {
            (1, 0x600, _) => a.leading_zeros() as u64,
            (1, 0x601, _) => a.trailing_zeros() as u64,
            (1, 0x602, _) => a.count_ones() as u64,
            (1, 0x604, _) => a as i8 as i64 as u64,
            (1, 0x605, _) => a as i16 as i64 as u64,
            (1, _, 0x12) => a & !(1 << shamt),
            (1, _, 0x1a) => a ^ (1 << shamt),
            (1, _, 0x0a) => a | (1 << shamt),
            (5, 0x287, _) => {
                let mut v = 0;
                for i in 0..8 {
                    if (a >> (8 * i)) & 0xff != 0 {
                        v |= 0xff << (8 * i);
                    }
                }
                v
            }
            (5, 0x6b8, _) => a.swap_bytes(),
            (5, _, 0x18) => a.rotate_right(shamt),
            (5, _, 0x12) => (a >> shamt) & 1,
            _ => return None,
        },
        0x1b => match (f3, imm12, f7) {
            (1, 0x600, _) => (a as u32).leading_zeros() as u64,
            (1, 0x601, _) => (a as u32).trailing_zeros() as u64,
            (1, 0x602, _) => (a as u32).count_ones() as u64,
            (1, _, _) if f6 == 0x02 => uw << shamt,
            (5, _, 0x30) => sext32((a as u32).rotate_right(rs2) as u64),
            _ => return None,
        },
        _ => return None,
    })
}

/// Zihintpause's PAUSE.
const PAUSE: u32 = 0x0100_000f;

/// The cache-block size of Zicbom and Zicboz (riscv,cbom-block-size and riscv,cboz-block-size).
pub const CBO_BLOCK: u64 = 64;

#[inline(always)]
fn sext32(v: u64) -> u64 {
    v as i32 as i64 as u64
}

impl Hart {
    /// Execute one decoded op at PC. On success the instruction has retired.
    #[inline(always)]
    pub(crate) fn exec<B: Bus>(&mut self, bus: &mut B, op: Op) -> Result<(), Trap> {
        use Kind::*;
        let pc = self.pc;
        let next = pc.wrapping_add(op.len as u64);
        // Register numbers are 5 bits: the masks let the compiler drop bounds checks.
        let a = self.x[(op.rs1 & 31) as usize];
        let b = self.x[(op.rs2 & 31) as usize];
        let imm = op.imm as i64 as u64;
        let rd = (op.rd & 31) as usize;
        let addr = a.wrapping_add(imm);
        let v = match op.kind {
            Lui => imm,
            Auipc => pc.wrapping_add(imm),
            Jal => {
                self.x[rd] = next;
                self.x[0] = 0;
                self.pc = pc.wrapping_add(imm);
                self.count += 1;
                return Ok(());
            }
            Jalr => {
                self.x[rd] = next;
                self.x[0] = 0;
                self.pc = addr & !1;
                self.count += 1;
                return Ok(());
            }
            Beq => return self.branch(a == b, pc, imm, next),
            Bne => return self.branch(a != b, pc, imm, next),
            Blt => return self.branch((a as i64) < (b as i64), pc, imm, next),
            Bge => return self.branch((a as i64) >= (b as i64), pc, imm, next),
            Bltu => return self.branch(a < b, pc, imm, next),
            Bgeu => return self.branch(a >= b, pc, imm, next),
            Lb => self.load(bus, addr, 1)? as i8 as i64 as u64,
            Lh => self.load(bus, addr, 2)? as i16 as i64 as u64,
            Lw => self.load(bus, addr, 4)? as i32 as i64 as u64,
            Ld => self.load(bus, addr, 8)?,
            Lbu => self.load(bus, addr, 1)?,
            Lhu => self.load(bus, addr, 2)?,
            Lwu => self.load(bus, addr, 4)?,
            Sb | Sh | Sw | Sd => {
                let size = match op.kind {
                    Sb => 1,
                    Sh => 2,
                    Sw => 4,
                    _ => 8,
                };
                self.store(bus, addr, size, b)?;
                self.pc = next;
                self.count += 1;
                return Ok(());
            }
            Addi => addr,
            Slti => ((a as i64) < (imm as i64)) as u64,
            Sltiu => (a < imm) as u64,
            Xori => a ^ imm,
            Ori => a | imm,
            Andi => a & imm,
            Slli => a << (imm & 63),
            Srli => a >> (imm & 63),
            Srai => ((a as i64) >> (imm & 63)) as u64,
            Addiw => sext32(addr),
            Slliw => sext32(((a as u32) << (imm & 31)) as u64),
            Srliw => sext32(((a as u32) >> (imm & 31)) as u64),
            Sraiw => ((a as i32) >> (imm & 31)) as i64 as u64,
            Add => a.wrapping_add(b),
            Sub => a.wrapping_sub(b),
            Sll => a << (b & 63),
            Slt => ((a as i64) < (b as i64)) as u64,
            Sltu => (a < b) as u64,
            Xor => a ^ b,
            Srl => a >> (b & 63),
            Sra => ((a as i64) >> (b & 63)) as u64,
            Or => a | b,
            And => a & b,
            Mul => a.wrapping_mul(b),
            Mulh => ((a as i64 as i128 * b as i64 as i128) >> 64) as u64,
            Mulhsu => ((a as i64 as i128 * b as u128 as i128) >> 64) as u64,
            Mulhu => ((a as u128 * b as u128) >> 64) as u64,
            Div => {
                let (a, b) = (a as i64, b as i64);
                (if b == 0 { -1 } else { a.wrapping_div(b) }) as u64
            }
            Divu => a.checked_div(b).unwrap_or(u64::MAX),
            Rem => {
                let (a, b) = (a as i64, b as i64);
                (if b == 0 { a } else { a.wrapping_rem(b) }) as u64
            }
            Remu => {
                if b == 0 {
                    a
                } else {
                    a % b
                }
            }
            Addw => sext32(a.wrapping_add(b)),
            Subw => sext32(a.wrapping_sub(b)),
            Sllw => sext32(((a as u32) << (b & 31)) as u64),
            Srlw => sext32(((a as u32) >> (b & 31)) as u64),
            Sraw => ((a as i32) >> (b & 31)) as i64 as u64,
            Mulw => sext32((a as u32).wrapping_mul(b as u32) as u64),
            Divw => {
                let (a, b) = (a as i32, b as i32);
                (if b == 0 { -1 } else { a.wrapping_div(b) }) as i64 as u64
            }
            Divuw => sext32((a as u32).checked_div(b as u32).unwrap_or(u32::MAX) as u64),
            Remw => {
                let (a, b) = (a as i32, b as i32);
                (if b == 0 { a } else { a.wrapping_rem(b) }) as i64 as u64
            }
            Remuw => {
                let (a, b) = (a as u32, b as u32);
                sext32(if b == 0 { a } else { a % b } as u64)
            }
            Cbo => {
                self.exec_cbo(bus, op.insn, op.imm as u32, a)?;
                self.pc = next;
                self.count += 1;
                return Ok(());
            }
            Pause => {
                self.pc = next;
                self.count += 1;
                if self.yield_on_pause {
                    self.stop(Exit::Pause);
                }
                return Ok(());
            }
            Fence => {
                self.pc = next;
                self.count += 1;
                return Ok(());
            }
            Csr => {
                self.exec_csr(bus, op.insn, op.raw())?;
                self.pc = next;
                self.count += 1;
                return Ok(());
            }
            System => return self.exec_system(op),
            Amo => self.exec_amo(bus, op.insn, a, b)?,
            Bit => bitmanip(op.insn, a, b).unwrap_or(0),
            Fp => {
                self.exec_fp(bus, op.insn, op.raw(), a)?;
                self.pc = next;
                self.count += 1;
                return Ok(());
            }
            Illegal | Undecoded => return Err(Trap::new(cause::ILLEGAL_INSN, op.raw())),
            FetchFault => return Err(self.fetch_fault),
        };
        self.x[rd] = v;
        self.x[0] = 0;
        self.pc = next;
        self.count += 1;
        Ok(())
    }

    #[inline(always)]
    fn branch(&mut self, taken: bool, pc: u64, imm: u64, next: u64) -> Result<(), Trap> {
        self.pc = if taken { pc.wrapping_add(imm) } else { next };
        self.count += 1;
        Ok(())
    }

    #[inline(never)]
    fn exec_system(&mut self, op: Op) -> Result<(), Trap> {
        let insn = op.insn;
        let illegal = Trap::new(cause::ILLEGAL_INSN, op.raw());
        let rs1 = (insn >> 15) & 31;
        if op.rd != 0 {
            return Err(illegal);
        }
        let len = op.len as u64;
        match insn >> 20 {
            0x000 if rs1 == 0 => {
                let c = match self.prv {
                    Priv::User => cause::ECALL_U,
                    Priv::Supervisor => cause::ECALL_S,
                    Priv::Machine => cause::ECALL_M,
                };
                if c == cause::ECALL_S && self.host_sbi {
                    self.stop(Exit::Sbi);
                    return Ok(());
                }
                Err(Trap::new(c, 0))
            }
            0x001 if rs1 == 0 => Err(Trap::new(cause::BREAKPOINT, self.pc)),
            0x102 if rs1 == 0 => {
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
                self.brk = true;
                self.set_priv(spp);
                // MPRV may have changed.
                self.retag_data();
                Ok(())
            }
            0x302 if rs1 == 0 => {
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
                self.brk = true;
                self.set_priv(mpp);
                // MPRV may have changed.
                self.retag_data();
                Ok(())
            }
            0x105 if rs1 == 0 => {
                // WFI
                if self.prv == Priv::User
                    || (self.prv == Priv::Supervisor && self.csr.mstatus & MSTATUS_TW != 0)
                {
                    return Err(illegal);
                }
                self.pc = self.pc.wrapping_add(len);
                self.count += 1;
                if self.mip() & self.csr.mie == 0 {
                    self.stop(Exit::Wfi);
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

    #[inline(never)]
    fn exec_amo<B: Bus>(
        &mut self,
        bus: &mut B,
        insn: u32,
        addr: u64,
        src: u64,
    ) -> Result<u64, Trap> {
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
                if (insn >> 20) & 31 != 0 {
                    return Err(Trap::new(cause::ILLEGAL_INSN, insn as u64));
                }
                let pa = self.amo_paddr(bus, addr, size, Access::Load)?;
                self.reservation = Some(pa);
                Ok(widen(Self::phys_read(bus, pa, size)))
            }
            0x03 => {
                // SC
                let pa = self.amo_paddr(bus, addr, size, Access::Store)?;
                let ok = self.reservation == Some(pa);
                self.reservation = None;
                if ok {
                    self.phys_write(bus, pa, size, src);
                }
                Ok(!ok as u64)
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
                Ok(old)
            }
        }
    }

    /// A cache-block operation on the block holding `addr`. This machine has no caches: CLEAN,
    /// FLUSH and INVAL only check that they may run here and that the block may be accessed;
    /// ZERO stores zeros over the block.
    #[inline(never)]
    fn exec_cbo<B: Bus>(&mut self, bus: &mut B, insn: u32, op: u32, addr: u64) -> Result<(), Trap> {
        use crate::csr::{ENVCFG_CBCFE, ENVCFG_CBIE_SHIFT, ENVCFG_CBZE};
        let illegal = Trap::new(cause::ILLEGAL_INSN, insn as u64);
        // menvcfg opens the operation to S and U, senvcfg to U as well.
        let allowed = |cfg: u64| match op {
            0 => (cfg >> ENVCFG_CBIE_SHIFT) & 3 != 0,
            1 | 2 => cfg & ENVCFG_CBCFE != 0,
            _ => cfg & ENVCFG_CBZE != 0,
        };
        let ok = match self.prv {
            Priv::Machine => true,
            Priv::Supervisor => allowed(self.csr.menvcfg),
            Priv::User => allowed(self.csr.menvcfg) && allowed(self.csr.senvcfg),
        };
        if !ok {
            return Err(illegal);
        }
        let block = addr & !(CBO_BLOCK - 1);
        if op == 4 {
            for i in 0..CBO_BLOCK / 8 {
                self.store(bus, block + i * 8, 8, 0)?;
            }
            return Ok(());
        }
        // A block any load or store may reach is fine; otherwise it is a store fault. Faults
        // name the block's address, as QEMU's do.
        match self.translate(bus, block, Access::Load) {
            Ok(_) => Ok(()),
            Err(t) => Err(Trap::new(
                if t.cause == cause::LOAD_ACCESS {
                    cause::STORE_ACCESS
                } else {
                    cause::STORE_PAGE
                },
                block,
            )),
        }
    }

    /// Mark the FP state dirty (after an FP register or fflags write).
    #[inline(always)]
    pub(crate) fn fs_dirty(&mut self) {
        self.csr.mstatus |= crate::csr::MSTATUS_FS;
    }
}

#[cfg(test)]
mod pack_tests {
    use super::*;

    #[test]
    fn every_kind_sits_at_its_discriminant() {
        for (i, k) in KINDS.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?}");
        }
        assert_eq!(KINDS.len(), Kind::FetchFault as usize + 1);
    }

    #[test]
    fn ops_unpack_to_what_was_packed() {
        // Every 16-bit pattern, and 32-bit ones from a simple generator.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let words = (0..0x1_0000u32).chain((0..200_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u32 | 3
        }));
        let mut kinds = std::collections::HashSet::new();
        for w in words {
            let op = decode(w);
            kinds.insert(op.kind as u8);
            assert_eq!(Op::unpack(op.pack()), op, "{w:#x}");
        }
        assert!(kinds.len() > 40, "only {} kinds decoded", kinds.len());
    }
}
