/* rv64uc: compressed instructions, each written explicitly with its c. mnemonic. */
#include "test.h"

TEST_BEGIN
        FP_ENABLE
        la sp, stack_top
        .option push
        .option rvc

        /* ---- constants ---- */
        TEST_CASE(1, a0, 0xffffffffffffffe0, c.li a0, -32)
        TEST_CASE(2, a0, 31, c.li a0, 31)
        TEST_CASE(3, a0, 0xfffffffffffe1000, c.lui a0, 0xfffe1)
        TEST_CASE(4, a0, 0x1f000, c.lui a0, 0x1f)
        TEST_CASE(5, a0, 0xfffffffffffff000, c.lui a0, 0xfffff)
        TEST_CASE(6, s1, 0x1000, c.lui s1, 1)

        /* ---- immediate arithmetic ---- */
        TEST_CASE(7, a0, 68, li a0, 100; c.addi a0, -32)
        TEST_CASE(8, a0, 0, li a0, -1; c.addi a0, 1)
        TEST_CASE(9, a0, 0x8000000000000000, li a0, 0x7fffffffffffffe1; c.addi a0, 31)
        TEST_CASE(10, a0, 0xffffffff80000000, li a0, 0x7fffffff; c.addiw a0, 1)
        TEST_CASE(11, a0, 0xffffffffffffffff, li a0, 0x12ffffffff; c.addiw a0, 0)
        TEST_CASE(12, a0, 0x7fffffe0, li a0, 0xffffffff80000000; c.addiw a0, -32)
        CASE(13)                                    /* c.addi16sp */
        mv a5, sp
        c.addi16sp sp, -512
        sub a0, a5, sp
        CHECK(a0, 512)
        c.addi16sp sp, 496
        c.addi16sp sp, 16
        CHECKR(sp, a5)
        CASE(14)                                    /* c.addi4spn */
        c.addi4spn a0, sp, 1020
        sub a0, a0, sp
        CHECK(a0, 1020)
        c.addi4spn s0, sp, 4
        sub s0, s0, sp
        CHECK(s0, 4)

        /* ---- shifts and c.andi ---- */
        TEST_CASE(15, a0, 0x8000000000000000, li a0, 1; c.slli a0, 63)
        TEST_CASE(16, a0, 0x8000000000000002, li a0, 0xc000000000000001; c.slli a0, 1)
        TEST_CASE(17, t0, 0x0001000000000000, li t0, 1; c.slli t0, 48)
        TEST_CASE(18, a0, 1, li a0, 0x8000000000000000; c.srli a0, 63)
        TEST_CASE(19, a0, 0x08123456789abcde, li a0, 0x8123456789abcdef; c.srli a0, 4)
        TEST_CASE(20, a0, 0xffffffffffffffff, li a0, 0x8000000000000000; c.srai a0, 63)
        TEST_CASE(21, a0, 0xf8123456789abcde, li a0, 0x8123456789abcdef; c.srai a0, 4)
        TEST_CASE(22, a5, 0x0000000080000000, li a5, 0x8000000000000000; c.srli a5, 32)
        TEST_CASE(23, a0, 0xffffffffffffffe0, li a0, -1; c.andi a0, -32)
        TEST_CASE(24, a0, 0xd, li a0, 0xabcd; c.andi a0, 15)
        TEST_CASE(25, a0, 0, li a0, 0xabc0; c.andi a0, 0)

        /* ---- register-register ---- */
        TEST_CASE(26, a0, 0x123456789, li a1, 0x123456789; li a0, 5; c.mv a0, a1)
        TEST_CASE(27, t1, 0x123456789, li a1, 0x123456789; c.mv t1, a1)
        TEST_CASE(28, a0, 0x8000000000000000, li a0, 0x7fffffffffffffff; li a1, 1; c.add a0, a1)
        TEST_CASE(29, t2, 30, li t2, 10; li t3, 20; c.add t2, t3)
        TEST_CASE(30, a0, 0xfffffffffffffffe, li a0, 3; li a1, 5; c.sub a0, a1)
        TEST_CASE(31, a0, 0xf0f0f0f0f0f0f0f0, li a0, 0xff00ff00ff00ff00; li a1, 0x0ff00ff00ff00ff0; c.xor a0, a1)
        TEST_CASE(32, a0, 0xfff0fff0fff0fff0, li a0, 0xff00ff00ff00ff00; li a1, 0x0ff00ff00ff00ff0; c.or a0, a1)
        TEST_CASE(33, a0, 0x0f000f000f000f00, li a0, 0xff00ff00ff00ff00; li a1, 0x0ff00ff00ff00ff0; c.and a0, a1)
        TEST_CASE(34, a0, 0xffffffffffffffff, li a0, 0x100000000; li a1, 1; c.subw a0, a1)
        TEST_CASE(35, a0, 0x7fffffff, li a0, 0x80000000; li a1, 1; c.subw a0, a1)
        TEST_CASE(36, a0, 0xffffffff80000000, li a0, 0x7fffffff; li a1, 1; c.addw a0, a1)
        TEST_CASE(37, s1, 0x0000000012345678, li s1, 0xff00000012345670; li a2, 0x0000000800000008; c.addw s1, a2)

        /* ---- loads and stores (x8..x15 forms) ---- */
        TEST_CASE(38, a0, 0xffffffff80000000, la a1, cdata; c.lw a0, 4(a1))
        TEST_CASE(39, a0, 0x7ffffff0, la a1, cdata; c.lw a0, 0(a1))
        TEST_CASE(40, a0, 0x0123456789abcdef, la a1, cdata; c.ld a0, 8(a1))
        TEST_CASE(41, a0, 0x1111111122222222, la a1, cdata; c.ld a0, 248(a1))
        TEST_CASE(42, a0, 0x33333333, la a1, cdata; c.lw a0, 124(a1))
        TEST_CASE(43, a1, 0x0123456789abcdef, la a1, cdata; c.ld a1, 8(a1))
        TEST_CASE(44, a0, 0x00000000deadbeef, la a1, cbuf; li a2, -1; sd a2, 0(a1); li a2, 0xdeadbeef; c.sw a2, 0(a1); lwu a0, 0(a1))
        TEST_CASE(45, a0, 0xffffffff, la a1, cbuf; lwu a0, 4(a1))
        TEST_CASE(46, a0, 0x0123456789abcdef, la a1, cbuf; li a2, 0x0123456789abcdef; c.sd a2, 16(a1); ld a0, 16(a1))
        TEST_CASE(47, a0, 0x5a5a5a5a, la a1, cbuf; li a2, 0x5a5a5a5a; c.sw a2, 124(a1); lw a0, 124(a1))
        TEST_CASE(48, a0, 0x5a5a5a5a5a5a5a5a, la a1, cbuf; li a2, 0x5a5a5a5a5a5a5a5a; c.sd a2, 248(a1); ld a0, 248(a1))

        /* ---- sp-relative ---- */
        TEST_CASE(49, a0, 0xffffffff87654321, li a1, 0x87654321; sw a1, 252(sp); c.lwsp a0, 252(sp))
        TEST_CASE(50, t0, 0x1234, li a1, 0x1234; sw a1, 0(sp); c.lwsp t0, 0(sp))
        TEST_CASE(51, a0, 0xfedcba9876543210, li a1, 0xfedcba9876543210; sd a1, 504(sp); c.ldsp a0, 504(sp))
        TEST_CASE(52, a0, 0x0000000055667788, li a1, 0x1122334455667788; sd zero, 8(sp); c.swsp a1, 8(sp); ld a0, 8(sp))
        TEST_CASE(53, a0, 0x1122334455667788, li a1, 0x1122334455667788; c.swsp a1, 252(sp); c.sdsp a1, 496(sp); ld a0, 496(sp))
        TEST_CASE(54, a0, 0x1122334455667788, c.sdsp a1, 504(sp); ld a0, 504(sp))

        /* ---- FP loads and stores ---- */
        TEST_CASE(55, a0, 0x400921fb54442d18, la a1, cdata; c.fld fa0, 16(a1); fmv.x.d a0, fa0)
        TEST_CASE(56, a0, 0x400921fb54442d18, la a1, cbuf; c.fsd fa0, 32(a1); ld a0, 32(a1))
        TEST_CASE(57, a0, 0xc000000000000000, la a1, cdata; c.fld fs1, 240(a1); fmv.x.d a0, fs1)
        TEST_CASE(58, a0, 0xc000000000000000, la a1, cbuf; c.fsd fs1, 240(a1); ld a0, 240(a1))
        TEST_CASE(59, a0, 0x3ff0000000000000, li a1, 0x3ff0000000000000; sd a1, 504(sp); c.fldsp ft3, 504(sp); fmv.x.d a0, ft3)
        TEST_CASE(60, a0, 0x3ff0000000000000, sd zero, 0(sp); c.fsdsp ft3, 0(sp); ld a0, 0(sp))

        /* ---- control transfer ---- */
        c.j 1f
fail_c: j fail                                  /* within reach of c.j / c.beqz */
1:
        CASE(61)                                    /* c.j forwards and backwards */
        c.j 2f
        c.j fail_c
1:      c.j 3f
2:      c.j 1b
        c.j fail_c
3:
        CASE(62)                                    /* c.jr */
        la a2, 1f
        c.jr a2
        c.j fail_c
1:
        CASE(63)                                    /* c.jalr links pc+2 */
        la a2, 1f
        c.jalr a2
2:      c.j fail_c
1:      la a1, 2b
        CHECKR(ra, a1)
        CASE(64)                                    /* c.jalr with rs1 = ra: target is the old ra */
        la ra, 1f
        c.jalr ra
2:      c.j fail_c
1:      la a1, 2b
        CHECKR(ra, a1)
        CASE(65)                                    /* c.beqz taken forwards/backwards */
        li a0, 0
        c.beqz a0, 2f
        c.j fail_c
1:      c.j 3f
2:      c.beqz a0, 1b
        c.j fail_c
3:
        CASE(66)                                    /* c.beqz not taken */
        li a0, 0x100000000
        c.beqz a0, 1f
        c.j 2f
1:      c.j fail_c
2:
        CASE(67)                                    /* c.bnez taken forwards/backwards */
        li s0, -1
        c.bnez s0, 2f
        c.j fail_c
1:      c.j 3f
2:      c.bnez s0, 1b
        c.j fail_c
3:
        CASE(68)                                    /* c.bnez not taken */
        li s0, 0
        c.bnez s0, 1f
        c.j 2f
1:      c.j fail_c
2:
        CASE(69)                                    /* 32-bit instructions at 2 mod 4 addresses */
        .balign 4
        c.nop
1:      auipc a0, 0
        la a1, 1b
        CHECKR(a0, a1)
        andi a1, a1, 3
        CHECK(a1, 2)
        CASE(70)                                    /* jal to and from a 2 mod 4 address, link = pc+4 */
        .balign 4
        c.nop
        jal a0, 1f
2:      c.j fail_c
        c.nop
1:      la a1, 2b
        CHECKR(a0, a1)
        CASE(71)                                    /* c.nop changes nothing */
        li a0, 9
        c.nop
        CHECK(a0, 9)

        /* ---- traps ---- */
        TEST_TRAP(72, CAUSE_BREAKPOINT, 1: c.ebreak)
        CASE(73)
        csrr t5, mepc
        la a1, 1b
        CHECKR(t5, a1)
        TEST_TRAP(74, CAUSE_ILLEGAL_INSN, .half 0x0000)   /* the all-zero halfword is illegal */
        TEST_TRAP(75, CAUSE_ILLEGAL_INSN, .half 0x0008)   /* c.addi4spn a0, sp, 0: reserved (nzuimm = 0) */
        .option pop
TEST_END

        .data
        .align 4
cdata:  .word 0x7ffffff0, 0x80000000
        .dword 0x0123456789abcdef
        .dword 0x400921fb54442d18
        .zero 124 - 24
        .word 0x33333333
        .zero 240 - 128
        .dword 0xc000000000000000
        .dword 0x1111111122222222
        .align 4
cbuf:   .zero 256
        .align 4
stack:  .zero 1024
stack_top:
        .zero 1024
