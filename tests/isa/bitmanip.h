/* Zba, Zbb, Zbs and Zicond as .insn macros: Debian 12's assembler is built for rv64gc, and
 * its binutils has no Zicond. x_NAME rd, rs1, rs2 (or rs1, imm; unary ops ignore the third). */
        .macro x_sh1add rd, rs1, rs2
        .insn r 0x33, 2, 0x10, \rd, \rs1, \rs2
        .endm
        .macro x_sh2add rd, rs1, rs2
        .insn r 0x33, 4, 0x10, \rd, \rs1, \rs2
        .endm
        .macro x_sh3add rd, rs1, rs2
        .insn r 0x33, 6, 0x10, \rd, \rs1, \rs2
        .endm
        .macro x_add_uw rd, rs1, rs2
        .insn r 0x3b, 0, 0x04, \rd, \rs1, \rs2
        .endm
        .macro x_sh1add_uw rd, rs1, rs2
        .insn r 0x3b, 2, 0x10, \rd, \rs1, \rs2
        .endm
        .macro x_sh2add_uw rd, rs1, rs2
        .insn r 0x3b, 4, 0x10, \rd, \rs1, \rs2
        .endm
        .macro x_sh3add_uw rd, rs1, rs2
        .insn r 0x3b, 6, 0x10, \rd, \rs1, \rs2
        .endm
        .macro x_andn rd, rs1, rs2
        .insn r 0x33, 7, 0x20, \rd, \rs1, \rs2
        .endm
        .macro x_orn rd, rs1, rs2
        .insn r 0x33, 6, 0x20, \rd, \rs1, \rs2
        .endm
        .macro x_xnor rd, rs1, rs2
        .insn r 0x33, 4, 0x20, \rd, \rs1, \rs2
        .endm
        .macro x_min rd, rs1, rs2
        .insn r 0x33, 4, 0x05, \rd, \rs1, \rs2
        .endm
        .macro x_minu rd, rs1, rs2
        .insn r 0x33, 5, 0x05, \rd, \rs1, \rs2
        .endm
        .macro x_max rd, rs1, rs2
        .insn r 0x33, 6, 0x05, \rd, \rs1, \rs2
        .endm
        .macro x_maxu rd, rs1, rs2
        .insn r 0x33, 7, 0x05, \rd, \rs1, \rs2
        .endm
        .macro x_rol rd, rs1, rs2
        .insn r 0x33, 1, 0x30, \rd, \rs1, \rs2
        .endm
        .macro x_ror rd, rs1, rs2
        .insn r 0x33, 5, 0x30, \rd, \rs1, \rs2
        .endm
        .macro x_rolw rd, rs1, rs2
        .insn r 0x3b, 1, 0x30, \rd, \rs1, \rs2
        .endm
        .macro x_rorw rd, rs1, rs2
        .insn r 0x3b, 5, 0x30, \rd, \rs1, \rs2
        .endm
        .macro x_bclr rd, rs1, rs2
        .insn r 0x33, 1, 0x24, \rd, \rs1, \rs2
        .endm
        .macro x_bext rd, rs1, rs2
        .insn r 0x33, 5, 0x24, \rd, \rs1, \rs2
        .endm
        .macro x_binv rd, rs1, rs2
        .insn r 0x33, 1, 0x34, \rd, \rs1, \rs2
        .endm
        .macro x_bset rd, rs1, rs2
        .insn r 0x33, 1, 0x14, \rd, \rs1, \rs2
        .endm
        .macro x_czero_eqz rd, rs1, rs2
        .insn r 0x33, 5, 0x07, \rd, \rs1, \rs2
        .endm
        .macro x_czero_nez rd, rs1, rs2
        .insn r 0x33, 7, 0x07, \rd, \rs1, \rs2
        .endm
        .macro x_rori rd, rs1, sh
        .insn i 0x13, 5, \rd, \rs1, (0x600 | \sh)
        .endm
        .macro x_roriw rd, rs1, sh
        .insn i 0x1b, 5, \rd, \rs1, (0x600 | \sh)
        .endm
        .macro x_slli_uw rd, rs1, sh
        .insn i 0x1b, 1, \rd, \rs1, (0x080 | \sh)
        .endm
        .macro x_bclri rd, rs1, sh
        .insn i 0x13, 1, \rd, \rs1, (0x480 | \sh)
        .endm
        .macro x_bexti rd, rs1, sh
        .insn i 0x13, 5, \rd, \rs1, (0x480 | \sh)
        .endm
        .macro x_binvi rd, rs1, sh
        .insn i 0x13, 1, \rd, \rs1, (0x680 | \sh)
        .endm
        .macro x_bseti rd, rs1, sh
        .insn i 0x13, 1, \rd, \rs1, (0x280 | \sh)
        .endm
        .macro x_clz rd, rs1, unused
        .insn i 0x13, 1, \rd, \rs1, 0x600
        .endm
        .macro x_ctz rd, rs1, unused
        .insn i 0x13, 1, \rd, \rs1, 0x601
        .endm
        .macro x_cpop rd, rs1, unused
        .insn i 0x13, 1, \rd, \rs1, 0x602
        .endm
        .macro x_clzw rd, rs1, unused
        .insn i 0x1b, 1, \rd, \rs1, 0x600
        .endm
        .macro x_ctzw rd, rs1, unused
        .insn i 0x1b, 1, \rd, \rs1, 0x601
        .endm
        .macro x_cpopw rd, rs1, unused
        .insn i 0x1b, 1, \rd, \rs1, 0x602
        .endm
        .macro x_sext_b rd, rs1, unused
        .insn i 0x13, 1, \rd, \rs1, 0x604
        .endm
        .macro x_sext_h rd, rs1, unused
        .insn i 0x13, 1, \rd, \rs1, 0x605
        .endm
        .macro x_orc_b rd, rs1, unused
        .insn i 0x13, 5, \rd, \rs1, 0x287
        .endm
        .macro x_rev8 rd, rs1, unused
        .insn i 0x13, 5, \rd, \rs1, 0x6b8
        .endm
        .macro x_zext_h rd, rs1, unused
        .insn r 0x3b, 4, 0x04, \rd, \rs1, x0
        .endm
