/* rv64ui: RV64I base integer instructions. */
#include "test.h"

/* Branch `op v1, v2` must be taken, forwards and backwards. */
#define TEST_BR_TAKEN(n, op, v1, v2)                                      \
        CASE(n);                                                          \
        li a1, v1;                                                        \
        li a2, v2;                                                        \
        op a1, a2, 2f;                                                    \
        j fail;                                                           \
1:      j 3f;                                                             \
2:      op a1, a2, 1b;                                                    \
        j fail;                                                           \
3:

/* Branch `op v1, v2` must not be taken, forwards and backwards. */
#define TEST_BR_NOT(n, op, v1, v2)                                        \
        CASE(n);                                                          \
        li a1, v1;                                                        \
        li a2, v2;                                                        \
        op a1, a2, 1f;                                                    \
        j 2f;                                                             \
1:      j fail;                                                           \
2:      j 4f;                                                             \
3:      j fail;                                                           \
4:      op a1, a2, 3b

/* Load from ldata+off. */
#define TEST_LD(n, op, result, off)                                       \
        TEST_CASE(n, a0, result, la a1, ldata; op a0, off(a1))

/* Store val with op at sbuf+off (sbuf pre-filled with the pattern
 * 0xa5a5...), then the dword at sbuf+dw must be result. */
#define TEST_ST(n, op, val, off, dw, result)                              \
        CASE(n);                                                          \
        la a1, sbuf;                                                      \
        li a2, 0xa5a5a5a5a5a5a5a5;                                        \
        sd a2, 0(a1);                                                     \
        sd a2, 8(a1);                                                     \
        sd a2, 16(a1);                                                    \
        li a3, val;                                                       \
        op a3, off(a1);                                                   \
        ld a0, dw(a1);                                                    \
        CHECK(a0, result)

TEST_BEGIN
        /* ---- add / sub / addi ---- */
        TEST_RR(1, add, 3, 1, 2)
        TEST_RR(2, add, 0x8000000000000000, 0x7fffffffffffffff, 1)
        TEST_RR(3, add, 0, -1, 1)
        TEST_RR(4, add, 0, 0x8000000000000000, 0x8000000000000000)
        TEST_RR(5, sub, -2, 3, 5)
        TEST_RR(6, sub, 0x8000000000000000, 0, 0x8000000000000000)
        TEST_RR(7, sub, 0x7fffffffffffffff, 0x8000000000000000, 1)
        TEST_RI(8, addi, 0x8000000000000000, 0x7fffffffffffffff, 1)
        TEST_RI(9, addi, 0xfffffffffffff800, 0, -2048)
        TEST_RI(10, addi, 2052, 5, 2047)

        /* ---- logical ---- */
        TEST_RR(11, and, 0x0f000f000f000f00, 0xff00ff00ff00ff00, 0x0ff00ff00ff00ff0)
        TEST_RR(12, or,  0xfff0fff0fff0fff0, 0xff00ff00ff00ff00, 0x0ff00ff00ff00ff0)
        TEST_RR(13, xor, 0xf0f0f0f0f0f0f0f0, 0xff00ff00ff00ff00, 0x0ff00ff00ff00ff0)
        TEST_RI(14, andi, 0xff00ff00ff00ff00, 0xff00ff00ff00ff00, -16)
        TEST_RI(15, andi, 0x70f, 0xff00ff00ff00ff0f, 0x70f)
        TEST_RI(16, ori, 0xffffffffffffff0f, 0xff00ff00ff00ff00, -241)
        TEST_RI(17, xori, 0xff00f0ff00ff0f00, 0x00ff0f00ff00f00f, -241)
        TEST_RI(18, xori, 0x00ff0f00ff00f0f0, 0x00ff0f00ff00f00f, 0xff)

        /* ---- shifts: only the low 6 bits of the amount count ---- */
        TEST_RR(19, sll, 0x8000000000000000, 1, 63)
        TEST_RR(20, sll, 0x0000084848484000, 0x21212121, 14)
        TEST_RR(21, sll, 0x21212121, 0x21212121, 64)
        TEST_RR(22, sll, 0x8000000000000000, 1, 0xffffffffffffffff)
        TEST_RR(23, srl, 1, 0x8000000000000000, 63)
        TEST_RR(24, srl, 0x08123456789abcde, 0x8123456789abcdef, 4)
        TEST_RR(25, srl, 0x7fffffffffffffff, -1, 0x41)
        TEST_RR(26, sra, -1, 0x8000000000000000, 63)
        TEST_RR(27, sra, 0xf8123456789abcde, 0x8123456789abcdef, 4)
        TEST_RR(28, sra, 0x7fffffffffffffff, 0x7fffffffffffffff, 0x40)
        TEST_RR(29, sra, -8, -128, 4)
        TEST_RI(30, slli, 0x8000000000000000, 1, 63)
        TEST_RI(31, slli, 0x21212121, 0x21212121, 0)
        TEST_RI(32, srli, 1, 0x8000000000000000, 63)
        TEST_RI(33, srli, 0x0000000100000000, 0x8000000000000000, 31)
        TEST_RI(34, srai, -1, 0x8000000000000000, 63)
        TEST_RI(35, srai, 0xffffffff00000000, 0x8000000000000000, 31)
        TEST_RI(36, srai, 0, 0x7fffffffffffffff, 63)

        /* ---- comparisons ---- */
        TEST_RR(37, slt, 1, -1, 1)
        TEST_RR(38, slt, 0, 1, -1)
        TEST_RR(39, slt, 0, 5, 5)
        TEST_RR(40, slt, 1, 0x8000000000000000, 0x7fffffffffffffff)
        TEST_RR(41, sltu, 0, -1, 1)
        TEST_RR(42, sltu, 1, 1, -1)
        TEST_RR(43, sltu, 0, 5, 5)
        TEST_RR(44, sltu, 0, 0x8000000000000000, 0x7fffffffffffffff)
        TEST_RI(45, slti, 1, -5, -4)
        TEST_RI(46, slti, 0, 2047, 2047)
        TEST_RI(47, slti, 0, 0, -2048)
        TEST_RI(48, sltiu, 1, 0, 1)                 /* seqz */
        TEST_RI(49, sltiu, 0, 5, 1)
        TEST_RI(50, sltiu, 1, 0xfffffffffffffffe, -1) /* imm sign-extends, compares unsigned */
        TEST_RI(51, sltiu, 0, 0x8000000000000000, 2047)

        /* ---- lui / auipc ---- */
        TEST_CASE(52, a0, 0xffffffff80000000, lui a0, 0x80000)
        TEST_CASE(53, a0, 0x7ffff000, lui a0, 0x7ffff)
        TEST_CASE(54, a0, 0xfffffffffffff000, lui a0, 0xfffff)
        TEST_CASE(55, a0, 0x800, lui a0, 1; addi a0, a0, -2048)
        CASE(56)
1:      auipc a0, 0
        la a1, 1b
        CHECKR(a0, a1)
        CASE(57)
1:      auipc a0, 0x12345
        la a1, 1b
        li a2, 0x12345000
        add a1, a1, a2
        CHECKR(a0, a1)
        CASE(58)                                    /* negative offset */
1:      auipc a0, 0x80000
        la a1, 1b
        li a2, 0xffffffff80000000
        add a1, a1, a2
        CHECKR(a0, a1)

        /* ---- x0 is hardwired to zero ---- */
        TEST_CASE(59, a0, 0, li a0, 7; addi x0, x0, 5; mv a0, x0)
        TEST_CASE(60, a0, 0, li a0, 7; lui x0, 0x12345; add a0, x0, x0)
        TEST_CASE(61, a0, 0, la a1, ldata; li a0, 7; ld x0, 0(a1); mv a0, x0)

        /* ---- 32-bit (W) operations sign-extend their result ---- */
        TEST_RR(62, addw, 0xffffffff80000000, 0x7fffffff, 1)
        TEST_RR(63, addw, 0x23456789, 0x123456789, 0)
        TEST_RR(64, addw, 0, 0xffffffff, 1)
        TEST_RR(65, addw, -1, 0xaaaaaaaaffffffff, 0x5555555500000000)
        TEST_RR(66, subw, 0xffffffff80000000, 0, 0x80000000)
        TEST_RR(67, subw, 0x7fffffff, 0x80000000, 1)
        TEST_RR(68, subw, 0, 0x1234567800000005, 5)
        TEST_RI(69, addiw, 0xffffffff80000000, 0x7fffffff, 1)
        TEST_RI(70, addiw, -1, 0xffffffff, 0)         /* sext.w */
        TEST_RI(71, addiw, 0x7ffff800, 0x17fffffff, -2047)
        TEST_RR(72, sllw, 0xffffffff80000000, 1, 31)
        TEST_RR(73, sllw, 0x12345678, 0xff12345678, 32)   /* amount uses 5 bits */
        TEST_RR(74, sllw, 0x48d159e0, 0x12345678, 2)
        TEST_RR(75, srlw, 1, 0xffffffff80000000, 31)
        TEST_RR(76, srlw, 0xffffffff80000000, 0x80000000, 0)
        TEST_RR(77, srlw, 0x7fffffff, -1, 1)
        TEST_RR(78, srlw, 0x00000000001fffff, 0x12ffffffff, 43) /* 43 & 31 = 11 */
        TEST_RR(79, sraw, -1, 0x80000000, 31)
        TEST_RR(80, sraw, 0x7fffffff, 0x000000017fffffff, 0)
        TEST_RR(81, sraw, 0xfffffffff8000000, 0x80000000, 4)
        TEST_RR(82, sraw, 0x07ffffff, 0xfffffffe7fffffff, 36)
        TEST_RI(83, slliw, 0xffffffff80000000, 1, 31)
        TEST_RI(84, slliw, 0x48d159e0, 0xf12345678, 2)
        TEST_RI(85, srliw, 1, 0x80000000, 31)
        TEST_RI(86, srliw, 0xffffffff80000000, 0xffffffff80000000, 0)
        TEST_RI(87, srliw, 0x0fffffff, 0xffffffffffffffff, 4)
        TEST_RI(88, sraiw, -1, 0x80000000, 31)
        TEST_RI(89, sraiw, 0xfffffffff8000000, 0x80000000, 4)
        TEST_RI(90, sraiw, 0x01234567, 0xf012345678, 4)

        /* ---- loads: ldata = 87 86 85 84 83 82 81 80 | 08 07 06 05 04 03 02 01 ---- */
        TEST_LD(91, lb,  0xffffffffffffff87, 0)
        TEST_LD(92, lbu, 0x87, 0)
        TEST_LD(93, lb,  0x08, 8)
        TEST_LD(94, lb,  0xffffffffffffff80, 7)
        TEST_LD(95, lh,  0xffffffffffff8687, 0)
        TEST_LD(96, lhu, 0x8687, 0)
        TEST_LD(97, lh,  0x0708, 8)
        TEST_LD(98, lh,  0xffffffffffff8081, 6)
        TEST_LD(99, lw,  0xffffffff84858687, 0)
        TEST_LD(100, lwu, 0x84858687, 0)
        TEST_LD(101, lw,  0x05060708, 8)
        TEST_LD(102, lwu, 0x01020304, 12)
        TEST_LD(103, ld,  0x8081828384858687, 0)
        TEST_LD(104, ld,  0x0102030405060708, 8)
        TEST_CASE(105, a0, 0x8081828384858687, la a1, ldata + 16; ld a0, -16(a1))
        TEST_CASE(106, a0, 0x01, la a1, ldata + 2048 + 15; lbu a0, -2048(a1))
        TEST_CASE(107, a0, 0xffffffff80818283, la a1, ldata - 2047 + 4; lw a0, 2047(a1))
        /* load into the base register */
        TEST_CASE(108, a1, 0x0102030405060708, la a1, ldata; ld a1, 8(a1))

        /* ---- stores write exactly their bytes ---- */
        TEST_ST(109, sb, 0x1234, 1, 0, 0xa5a5a5a5a5a534a5)
        TEST_ST(110, sb, -1, 15, 8, 0xffa5a5a5a5a5a5a5)
        TEST_ST(111, sh, 0x12345678, 2, 0, 0xa5a5a5a55678a5a5)
        TEST_ST(112, sh, 0xbeef, 6, 0, 0xbeefa5a5a5a5a5a5)
        TEST_ST(113, sw, 0x123456789abcdef0, 4, 0, 0x9abcdef0a5a5a5a5)
        TEST_ST(114, sw, 0xdeadbeef, 8, 8, 0xa5a5a5a5deadbeef)
        TEST_ST(115, sd, 0x0123456789abcdef, 8, 8, 0x0123456789abcdef)
        TEST_ST(116, sd, 0x0123456789abcdef, 8, 0, 0xa5a5a5a5a5a5a5a5)
        TEST_ST(117, sd, 0x0123456789abcdef, 8, 16, 0xa5a5a5a5a5a5a5a5)
        TEST_CASE(118, a0, 0x55a5a5a5a5a5a5a5, la a1, sbuf + 2048 + 7; li a2, 0x55; sb a2, -2048(a1); la a1, sbuf; ld a0, 0(a1))
        /* store then load of every width, sign- and zero-extended */
        TEST_CASE(119, a0, 0xfffffffffffffffe, la a1, sbuf; li a2, -2; sh a2, 0(a1); lh a0, 0(a1))
        TEST_CASE(120, a0, 0xfffe, la a1, sbuf; li a2, -2; sh a2, 0(a1); lhu a0, 0(a1))
        TEST_CASE(121, a0, 0xffffffff, la a1, sbuf; li a2, -1; sw a2, 0(a1); lwu a0, 0(a1))

        /* ---- misaligned loads and stores (supported in hardware, must not trap) ---- */
        TEST_LD(122, lh,  0xffffffffffff8586, 1)
        TEST_LD(123, lhu, 0x0880, 7)
        TEST_LD(124, lw,  0xffffffff83848586, 1)
        TEST_LD(125, lw,  0xffffffff82838485, 2)
        TEST_LD(126, lwu, 0x07088081, 6)
        TEST_LD(127, ld,  0x0880818283848586, 1)
        TEST_LD(128, ld,  0x0304050607088081, 6)
        TEST_LD(129, ld,  0x0203040506070880, 7)
        TEST_ST(130, sh, 0x1234, 7, 0, 0x34a5a5a5a5a5a5a5)
        TEST_ST(131, sh, 0x1234, 7, 8, 0xa5a5a5a5a5a5a512)
        TEST_ST(132, sw, 0x12345678, 5, 0, 0x345678a5a5a5a5a5)
        TEST_ST(133, sw, 0x12345678, 5, 8, 0xa5a5a5a5a5a5a512)
        TEST_ST(134, sd, 0x0123456789abcdef, 3, 0, 0x6789abcdefa5a5a5)
        TEST_ST(135, sd, 0x0123456789abcdef, 3, 8, 0xa5a5a5a5a5012345)
        /* across a page boundary */
        TEST_CASE(136, a0, 0x1122334455667788, la a1, pagebuf + 4096 - 3; li a2, 0x1122334455667788; sd a2, 0(a1); ld a0, 0(a1))
        TEST_CASE(137, a0, 0x0000000055667788, la a1, pagebuf + 4096 - 3; lwu a0, 0(a1))
        TEST_CASE(138, a0, 0x0000000000005566, la a1, pagebuf + 4096 - 1; lhu a0, 0(a1))

        /* ---- branches ---- */
        TEST_BR_TAKEN(139, beq, 5, 5)
        TEST_BR_TAKEN(140, beq, -1, -1)
        TEST_BR_NOT(141, beq, 5, 6)
        TEST_BR_NOT(142, beq, 0x100000000, 0)
        TEST_BR_TAKEN(143, bne, 5, 6)
        TEST_BR_TAKEN(144, bne, 0x100000000, 0)
        TEST_BR_NOT(145, bne, -7, -7)
        TEST_BR_TAKEN(146, blt, -1, 1)
        TEST_BR_TAKEN(147, blt, 0x8000000000000000, 0x7fffffffffffffff)
        TEST_BR_NOT(148, blt, 1, -1)
        TEST_BR_NOT(149, blt, 3, 3)
        TEST_BR_TAKEN(150, bge, 1, -1)
        TEST_BR_TAKEN(151, bge, 3, 3)
        TEST_BR_NOT(152, bge, -1, 1)
        TEST_BR_NOT(153, bge, 0x8000000000000000, 0x7fffffffffffffff)
        TEST_BR_TAKEN(154, bltu, 1, -1)
        TEST_BR_TAKEN(155, bltu, 0x7fffffffffffffff, 0x8000000000000000)
        TEST_BR_NOT(156, bltu, -1, 1)
        TEST_BR_NOT(157, bltu, 3, 3)
        TEST_BR_TAKEN(158, bgeu, -1, 1)
        TEST_BR_TAKEN(159, bgeu, 3, 3)
        TEST_BR_NOT(160, bgeu, 1, -1)
        TEST_BR_NOT(161, bgeu, 0, 0x8000000000000000)

        /* ---- jal / jalr: link value is pc+4, jalr clears bit 0 of the target ---- */
        CASE(162)
        jal a0, 1f
2:      j fail
1:      la a1, 2b
        CHECKR(a0, a1)
        CASE(163)                                   /* backwards jal */
        j 3f
1:      la a1, 2f
        CHECKR(a0, a1)
        j 4f
3:      jal a0, 1b
2:      j fail
4:
        CASE(164)
        la a2, 1f
        jalr a0, 0(a2)
2:      j fail
1:      la a1, 2b
        CHECKR(a0, a1)
        CASE(165)                                   /* positive offset */
        la a2, 1f
        addi a2, a2, -12
        jalr a0, 12(a2)
2:      j fail
1:      la a1, 2b
        CHECKR(a0, a1)
        CASE(166)                                   /* negative offset */
        la a2, 1f
        addi a2, a2, 100
        jalr a0, -100(a2)
2:      j fail
1:      la a1, 2b
        CHECKR(a0, a1)
        CASE(167)                                   /* bit 0 of the target is cleared */
        la a2, 1f
        addi a2, a2, 1
        jalr a0, 0(a2)
2:      j fail
1:      la a1, 2b
        CHECKR(a0, a1)
        CASE(168)                                   /* odd immediate */
        la a2, 1f
        addi a2, a2, -1
        jalr a0, 2(a2)
2:      j fail
1:      la a1, 2b
        CHECKR(a0, a1)
        CASE(169)                                   /* rd == rs1: target uses the old value */
        la a0, 1f
        jalr a0, 0(a0)
2:      j fail
1:      la a1, 2b
        CHECKR(a0, a1)
        CASE(170)                                   /* rd = x0 */
        la a2, 1f
        jalr x0, 0(a2)
        j fail
1:
        CASE(171)                                   /* call/ret */
        li a0, 0
        call subr
        CHECK(a0, 77)

        /* ---- fence / fence.i, self-modifying code ---- */
        CASE(172)
        fence
        fence rw, rw
        fence.i
        call patch
        CHECK(a0, 1)
        la a1, patch
        li a2, 0x02a00513                           /* addi a0, zero, 42 */
        sw a2, 0(a1)
        fence.i
        call patch
        CHECK(a0, 42)
TEST_END

        .text
subr:   li a0, 77
        ret
        .option push
        .option norvc
patch:  addi a0, zero, 1
        ret
        .option pop

        .data
        .align 4
ldata:  .dword 0x8081828384858687
        .dword 0x0102030405060708
        .dword 0
sbuf:   .dword 0, 0, 0
        .align 12
pagebuf: .zero 8192
