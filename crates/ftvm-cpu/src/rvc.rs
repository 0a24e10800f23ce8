//! The C extension: each 16-bit instruction is expanded to the 32-bit instruction it stands for.
//! Reserved encodings expand to 0, which is an illegal instruction.

#[inline(always)]
fn bit(x: u32, i: u32) -> u32 {
    (x >> i) & 1
}
#[inline(always)]
fn bits(x: u32, hi: u32, lo: u32) -> u32 {
    (x >> lo) & ((1 << (hi - lo + 1)) - 1)
}
fn i_type(imm: i32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
    ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}
fn s_type(imm: u32, rs2: u32, rs1: u32, f3: u32, op: u32) -> u32 {
    (bits(imm, 11, 5) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (bits(imm, 4, 0) << 7) | op
}
fn r_type(f7: u32, rs2: u32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
    (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}
fn b_type(imm: i32, rs2: u32, rs1: u32, f3: u32) -> u32 {
    let imm = imm as u32;
    (bit(imm, 12) << 31)
        | (bits(imm, 10, 5) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (f3 << 12)
        | (bits(imm, 4, 1) << 8)
        | (bit(imm, 11) << 7)
        | 0x63
}
fn j_type(imm: i32, rd: u32) -> u32 {
    let imm = imm as u32;
    (bit(imm, 20) << 31)
        | (bits(imm, 10, 1) << 21)
        | (bit(imm, 11) << 20)
        | (bits(imm, 19, 12) << 12)
        | (rd << 7)
        | 0x6f
}
/// Sign-extend the low `n` bits.
fn sext(v: u32, n: u32) -> i32 {
    ((v << (32 - n)) as i32) >> (32 - n)
}

/// Expand a 16-bit instruction; 0 means illegal.
pub fn expand(c: u32) -> u32 {
    let f3 = bits(c, 15, 13);
    let rd = bits(c, 11, 7);
    let rs2 = bits(c, 6, 2);
    let rdp = bits(c, 4, 2) + 8;
    let rs1p = bits(c, 9, 7) + 8;
    // The 6-bit immediate of CI instructions.
    let ci_imm = sext((bit(c, 12) << 5) | bits(c, 6, 2), 6);
    // Offsets of CL/CS word and doubleword accesses.
    let lw_off = (bits(c, 12, 10) << 3) | (bit(c, 6) << 2) | (bit(c, 5) << 6);
    let ld_off = (bits(c, 12, 10) << 3) | (bits(c, 6, 5) << 6);
    match (c & 3, f3) {
        (0, 0) => {
            let imm = (bits(c, 12, 11) << 4)
                | (bits(c, 10, 7) << 6)
                | (bit(c, 6) << 2)
                | (bit(c, 5) << 3);
            if imm == 0 {
                return 0;
            }
            i_type(imm as i32, 2, 0, rdp, 0x13)
        }
        (0, 1) => i_type(ld_off as i32, rs1p, 3, rdp, 0x07),
        (0, 2) => i_type(lw_off as i32, rs1p, 2, rdp, 0x03),
        (0, 3) => i_type(ld_off as i32, rs1p, 3, rdp, 0x03),
        (0, 5) => s_type(ld_off, rdp, rs1p, 3, 0x27),
        (0, 6) => s_type(lw_off, rdp, rs1p, 2, 0x23),
        (0, 7) => s_type(ld_off, rdp, rs1p, 3, 0x23),
        (1, 0) => i_type(ci_imm, rd, 0, rd, 0x13),
        (1, 1) => {
            if rd == 0 {
                return 0;
            }
            i_type(ci_imm, rd, 0, rd, 0x1b)
        }
        (1, 2) => i_type(ci_imm, 0, 0, rd, 0x13),
        (1, 3) if rd == 2 => {
            let imm = (bit(c, 12) << 9)
                | (bit(c, 6) << 4)
                | (bit(c, 5) << 6)
                | (bits(c, 4, 3) << 7)
                | (bit(c, 2) << 5);
            if imm == 0 {
                return 0;
            }
            i_type(sext(imm, 10), 2, 0, 2, 0x13)
        }
        (1, 3) => {
            if ci_imm == 0 {
                return 0;
            }
            ((ci_imm as u32) << 12) | (rd << 7) | 0x37
        }
        (1, 4) => {
            let shamt = (bit(c, 12) << 5) | bits(c, 6, 2);
            match bits(c, 11, 10) {
                0 => i_type(shamt as i32, rs1p, 5, rs1p, 0x13),
                1 => i_type((0x400 | shamt) as i32, rs1p, 5, rs1p, 0x13),
                2 => i_type(ci_imm, rs1p, 7, rs1p, 0x13),
                _ => {
                    let (f7, f3, op) = match (bit(c, 12), bits(c, 6, 5)) {
                        (0, 0) => (0x20, 0, 0x33),
                        (0, 1) => (0, 4, 0x33),
                        (0, 2) => (0, 6, 0x33),
                        (0, 3) => (0, 7, 0x33),
                        (1, 0) => (0x20, 0, 0x3b),
                        (1, 1) => (0, 0, 0x3b),
                        _ => return 0,
                    };
                    r_type(f7, rdp, rs1p, f3, rs1p, op)
                }
            }
        }
        (1, 5) => {
            let imm = (bit(c, 12) << 11)
                | (bit(c, 11) << 4)
                | (bits(c, 10, 9) << 8)
                | (bit(c, 8) << 10)
                | (bit(c, 7) << 6)
                | (bit(c, 6) << 7)
                | (bits(c, 5, 3) << 1)
                | (bit(c, 2) << 5);
            j_type(sext(imm, 12), 0)
        }
        (1, 6) | (1, 7) => {
            let imm = (bit(c, 12) << 8)
                | (bits(c, 11, 10) << 3)
                | (bits(c, 6, 5) << 6)
                | (bits(c, 4, 3) << 1)
                | (bit(c, 2) << 5);
            b_type(sext(imm, 9), 0, rs1p, f3 - 6)
        }
        (2, 0) => {
            let shamt = (bit(c, 12) << 5) | bits(c, 6, 2);
            i_type(shamt as i32, rd, 1, rd, 0x13)
        }
        (2, 1) | (2, 3) => {
            let off = (bit(c, 12) << 5) | (bits(c, 6, 5) << 3) | (bits(c, 4, 2) << 6);
            if f3 == 3 && rd == 0 {
                return 0;
            }
            let op = if f3 == 1 { 0x07 } else { 0x03 };
            i_type(off as i32, 2, 3, rd, op)
        }
        (2, 2) => {
            if rd == 0 {
                return 0;
            }
            let off = (bit(c, 12) << 5) | (bits(c, 6, 4) << 2) | (bits(c, 3, 2) << 6);
            i_type(off as i32, 2, 2, rd, 0x03)
        }
        (2, 4) => match (bit(c, 12), rd, rs2) {
            (0, 0, 0) => 0,
            (0, _, 0) => i_type(0, rd, 0, 0, 0x67),
            (0, _, _) => r_type(0, rs2, 0, 0, rd, 0x33),
            (_, 0, 0) => 0x0010_0073,
            (_, _, 0) => i_type(0, rd, 0, 1, 0x67),
            _ => r_type(0, rs2, rd, 0, rd, 0x33),
        },
        (2, 5) | (2, 7) => {
            let off = (bits(c, 12, 10) << 3) | (bits(c, 9, 7) << 6);
            let op = if f3 == 5 { 0x27 } else { 0x23 };
            s_type(off, rs2, 2, 3, op)
        }
        (2, 6) => {
            let off = (bits(c, 12, 9) << 2) | (bits(c, 8, 7) << 6);
            s_type(off, rs2, 2, 2, 0x23)
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn known_encodings() {
        // Pairs checked against the GNU assembler (riscv64-linux-gnu-as -march=rv64gc).
        let cases: &[(u32, u32)] = &[
            (0x1141, 0xff010113), // addi sp,sp,-16
            (0xe406, 0x00113423), // sd ra,8(sp)
            (0x60a2, 0x00813083), // ld ra,8(sp)
            (0x8082, 0x00008067), // ret
            (0x4501, 0x00000513), // li a0,0
            (0x852e, 0x00b00533), // mv a0,a1 (C.MV is add rd,x0,rs2)
            (0x9532, 0x00c50533), // add a0,a0,a2
            (0x0505, 0x00150513), // addi a0,a0,1
            (0x2505, 0x0015051b), // addiw a0,a0,1
            (0x6505, 0x00001537), // lui a0,0x1
            (0x8d0d, 0x40b50533), // sub a0,a0,a1
            (0x9d2d, 0x00b5053b), // addw a0,a0,a1
            (0x0506, 0x00151513), // slli a0,a0,0x1
            (0x8105, 0x00155513), // srli a0,a0,0x1
            (0x8505, 0x40155513), // srai a0,a0,0x1
            (0x8905, 0x00157513), // andi a0,a0,1
            (0x0028, 0x00810513), // addi a0,sp,8
            (0x9002, 0x00100073), // ebreak
        ];
        for &(c, want) in cases {
            assert_eq!(expand(c), want, "expanding {c:#06x}");
        }
        assert_eq!(expand(0), 0);
    }
}
