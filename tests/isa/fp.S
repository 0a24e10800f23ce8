/* fp: F/D state and non-arithmetic instructions: mstatus.FS gating, fcsr,
 * frm and fflags, invalid rounding modes, NaN boxing, moves, loads/stores,
 * sign injection, comparisons, fclass, fmin/fmax. (Arithmetic and rounding:
 * fp_arith.S; conversions: fp_cvt.S.) */
#include "test.h"

#define S_ONE   0x3f800000
#define S_TWO   0x40000000
#define S_MTWO  0xc0000000
#define S_INF   0x7f800000
#define S_NINF  0xff800000
#define S_QNAN  0x7fc00000
#define S_SNAN  0x7f800001
#define S_NZERO 0x80000000
#define D_ONE   0x3ff0000000000000
#define D_TWO   0x4000000000000000
#define D_MTWO  0xc000000000000000
#define D_INF   0x7ff0000000000000
#define D_NINF  0xfff0000000000000
#define D_QNAN  0x7ff8000000000000
#define D_SNAN  0x7ff0000000000001
#define D_NZERO 0x8000000000000000
#define NV 16

/* fadd.s fa0, fa1, fa2 with rounding mode field rm (raw encoding). */
#define FADD_S_RM(rm) .word 0x00c58553 | ((rm) << 12)

TEST_BEGIN
        /* ---- mstatus.FS = Off: FP instructions and FP CSRs are illegal ---- */
        TEST_TRAP(1, CAUSE_ILLEGAL_INSN, fadd.s fa0, fa1, fa2)
        TEST_TRAP(2, CAUSE_ILLEGAL_INSN, fmv.w.x fa0, zero)
        TEST_TRAP(3, CAUSE_ILLEGAL_INSN, fmv.x.d a0, fa0)
        TEST_TRAP(4, CAUSE_ILLEGAL_INSN, la a1, fdata; flw fa0, 0(a1))
        TEST_TRAP(5, CAUSE_ILLEGAL_INSN, la a1, fdata; fsd fa0, 0(a1))
        TEST_TRAP(6, CAUSE_ILLEGAL_INSN, la sp, fdata; c.fldsp fa0, 0(sp))
        TEST_TRAP(7, CAUSE_ILLEGAL_INSN, frflags a0)
        TEST_TRAP(8, CAUSE_ILLEGAL_INSN, fsrmi a0, 1)
        TEST_TRAP(9, CAUSE_ILLEGAL_INSN, csrr a0, fcsr)
        TEST_TRAP(10, CAUSE_ILLEGAL_INSN, fcvt.d.l fa0, a0)
        CASE(11)                                    /* still off, nothing written */
        csrr a0, mstatus
        li a1, MSTATUS_FS
        and a0, a0, a1
        CHECK(a0, 0)

        /* ---- FS = Initial, then Dirty after FP state is written ---- */
        CASE(12)
        FP_ENABLE
        csrr a0, mstatus
        li a1, MSTATUS_FS
        and a0, a0, a1
        CHECK(a0, 1 << 13)
        fmv.w.x fa0, zero
        csrr a0, mstatus
        and a2, a0, a1
        CHECKR(a2, a1)                              /* FS = Dirty */
        bgez a0, fail                               /* SD = 1 */
        CASE(13)                                    /* Clean, then an fflags write dirties it */
        li a1, 1 << 13
        csrc mstatus, a1
        fsflagsi 1
        csrr a0, mstatus
        li a1, MSTATUS_FS
        and a0, a0, a1
        CHECKR(a0, a1)

        /* ---- fcsr, frm, fflags ---- */
        TEST_CASE(14, a0, 0xff, li a1, 0xff; fscsr a1; frcsr a0)
        TEST_CASE(15, a0, 7, frrm a0)
        TEST_CASE(16, a0, 0x1f, frflags a0)
        TEST_CASE(17, a0, 0xff, li a1, 0x125; fscsr a0, a1)     /* returns the old value */
        TEST_CASE(18, a0, 0x25, frcsr a0)                       /* bits 8+ are not kept */
        TEST_CASE(19, a0, 5, li a1, 0x3a; fsflags a0, a1)       /* only 5 bits */
        TEST_CASE(20, a0, 0x3a, frcsr a0)
        TEST_CASE(21, a0, 1, fsrmi a0, 4)
        TEST_CASE(22, a0, 0x9a, frcsr a0)
        TEST_CASE(23, a0, 0x1a, fsflagsi a0, 0)
        TEST_CASE(24, a0, 0x80, frcsr a0)
        TEST_CASE(25, a0, 4, li a1, 2; fsrm a0, a1)
        TEST_CASE(26, a0, 0x40, csrr a0, fcsr)
        TEST_CASE(27, a0, 2, csrr a0, frm)
        TEST_CASE(28, a0, 0x5f, csrsi fflags, 0x1f; csrr a0, fcsr)
        TEST_CASE(29, a0, 0x40, csrw fflags, zero; csrr a0, fcsr)
        TEST_CASE(30, a0, 0, fsrmi 0; frcsr a0)
        CASE(31)                                    /* flags accrue and are never cleared by FP ops */
        LOAD_S(fa0, S_ONE)
        LOAD_S(fa1, 0x40400000)
        fdiv.s fa2, fa0, fa1                        /* NX */
        LOAD_S(fa1, 0)
        fdiv.s fa2, fa0, fa1                        /* DZ */
        fadd.s fa2, fa0, fa0                        /* exact */
        CHECK_FLAGS(9)
        fsflags zero

        /* ---- rounding mode validity ---- */
        TEST_TRAP(32, CAUSE_ILLEGAL_INSN, FADD_S_RM(5))
        TEST_TRAP(33, CAUSE_ILLEGAL_INSN, FADD_S_RM(6))
        CASE(34)                                    /* rm = 4 (rmm) is valid */
        LOAD_S(fa1, S_ONE)
        LOAD_S(fa2, S_TWO)
        FADD_S_RM(4)
        CHECK_S(fa0, 0x40400000)
        TEST_TRAP(35, CAUSE_ILLEGAL_INSN, fsrmi 5; fadd.s fa0, fa1, fa2)    /* dyn with frm = 5 */
        TEST_TRAP(36, CAUSE_ILLEGAL_INSN, fsrmi 7; fmadd.d fa0, fa1, fa2, fa3)
        CASE(37)                                    /* instructions without rounding ignore frm */
        fsrmi 6
        LOAD_S(fa1, S_MTWO)
        fsgnj.s fa0, fa1, fa1
        feq.s a0, fa1, fa1
        fmin.d fa0, fa1, fa1
        fsrmi 0
        CHECK(a0, 1)

        /* ---- NaN boxing ---- */
        TEST_CASE(38, a0, 0xffffffff3f800000, la a1, fdata; flw fa0, 0(a1); fmv.x.d a0, fa0)
        TEST_CASE(39, a0, 0xffffffff12345678, li a1, 0xabcdef0012345678; fmv.w.x fa0, a1; fmv.x.d a0, fa0)
        TEST_FP_S(40, 0, S_QNAN, 0, 0, 0, LOAD_D(fa0, 0x000000003f800000); fsgnj.s fa3, fa0, fa0)   /* unboxed: canonical NaN */
        TEST_FP_S(41, 0, 0xffc00000, 0, 0, 0, LOAD_D(fa0, 0x000000003f800000); fsgnjn.s fa3, fa0, fa0)
        TEST_FP_S(42, 0, S_TWO, 0, S_MTWO, 0, LOAD_D(fa0, 0xfffffffe3f800000); fsgnj.s fa3, fa1, fa0)  /* sign of the canonical NaN */
        TEST_FP_S(43, 0, S_QNAN, 0, S_ONE, 0, LOAD_D(fa0, 0x000000003f800000); fadd.s fa3, fa0, fa1)
        TEST_FP_S(44, 0, S_QNAN, 0, S_ONE, 0, LOAD_D(fa0, 0x7fffffff3f800000); fmul.s fa3, fa1, fa0)
        TEST_FP_INT_S(45, 0, 0xffffffff9abcdef0, 0, 0, LOAD_D(fa0, 0x123456789abcdef0); fmv.x.w a0, fa0)  /* raw low bits */
        TEST_CASE(46, a0, 0x9abcdef0, la a1, fbuf; fsw fa0, 0(a1); lwu a0, 0(a1))                 /* raw low bits */
        TEST_CASE(47, a0, D_QNAN, fsflags zero; fcvt.d.s fa3, fa0; fmv.x.d a0, fa3; frflags a1; bnez a1, fail)
        TEST_FP_INT_S(48, 0, 0, 0, 0, LOAD_D(fa0, 0x000000003f800000); feq.s a0, fa0, fa0)
        TEST_FP_INT_S(49, NV, 0, 0, S_ONE, LOAD_D(fa0, 0x000000003f800000); flt.s a0, fa1, fa0)
        TEST_FP_INT_S(50, 0, 0x200, 0, 0, LOAD_D(fa0, 0x00000000ff800000); fclass.s a0, fa0)
        TEST_FP_S(51, 0, S_QNAN, 0, 0, 0, LOAD_D(fa0, 0x0000000040800000); fsqrt.s fa3, fa0)

        /* ---- moves, loads and stores keep the bits ---- */
        TEST_FP_INT_S(52, 0, 0xffffffff80000000, S_NZERO, 0, fmv.x.w a0, fa0)   /* sign-extended */
        TEST_FP_INT_S(53, 0, 0x000000007fffffff, 0x7fffffff, 0, fmv.x.w a0, fa0)
        TEST_FP_INT_S(54, 0, 0x000000007f800001, S_SNAN, 0, fmv.x.w a0, fa0)
        TEST_FP_INT_D(55, 0, D_SNAN, D_SNAN, 0, fmv.x.d a0, fa0)
        TEST_FP_INT_D(56, 0, 0xfff0000012345678, 0xfff0000012345678, 0, fmv.x.d a0, fa0)
        TEST_CASE(57, a0, 0x7f800001, la a1, fdata; flw fa0, 4(a1); fsw fa0, 12(a1); lwu a0, 12(a1))
        TEST_CASE(58, a0, D_SNAN, la a1, fdata + 24; fld fa0, -8(a1); fsd fa0, 8(a1); ld a0, 8(a1))
        TEST_CASE(59, a0, 0, frflags a0)                     /* no flags from any of that */

        /* ---- sign injection ---- */
        TEST_FP_S(60, 0, 0xbf800000, S_ONE, S_MTWO, 0, fsgnj.s fa3, fa0, fa1)
        TEST_FP_S(61, 0, S_ONE, S_ONE, S_MTWO, 0, fsgnjn.s fa3, fa0, fa1)
        TEST_FP_S(62, 0, S_ONE, 0xbf800000, S_MTWO, 0, fsgnjx.s fa3, fa0, fa1)
        TEST_FP_S(63, 0, 0xbf800000, 0xbf800000, S_TWO, 0, fsgnjx.s fa3, fa0, fa1)
        TEST_FP_S(64, 0, S_NZERO, 0, 0, 0, fneg.s fa3, fa0)
        TEST_FP_S(65, 0, S_INF, S_NINF, 0, 0, fabs.s fa3, fa0)
        TEST_FP_S(66, 0, 0xff800001, S_SNAN, 0, 0, fneg.s fa3, fa0)      /* no canonicalisation, no NV */
        TEST_FP_S(67, 0, 0x7fc12345, 0xffc12345, 0, 0, fabs.s fa3, fa0)
        TEST_FP_D(68, 0, 0xbff0000000000000, D_ONE, D_MTWO, 0, fsgnj.d fa3, fa0, fa1)
        TEST_FP_D(69, 0, D_ONE, D_ONE, D_MTWO, 0, fsgnjn.d fa3, fa0, fa1)
        TEST_FP_D(70, 0, D_ONE, 0xbff0000000000000, D_MTWO, 0, fsgnjx.d fa3, fa0, fa1)
        TEST_FP_D(71, 0, D_NZERO, 0, 0, 0, fneg.d fa3, fa0)
        TEST_FP_D(72, 0, D_INF, D_NINF, 0, 0, fabs.d fa3, fa0)
        TEST_FP_D(73, 0, 0xfff0000000000001, D_SNAN, 0, 0, fneg.d fa3, fa0)
        TEST_FP_D(74, 0, 0x8000000000000000, 0, 0, 0, LOAD_S(fa1, S_NZERO); fsgnj.d fa3, fa0, fa1)   /* boxed single as a double: sign 1 */

        /* ---- comparisons: feq is quiet, flt/fle signal on any NaN ---- */
        TEST_FP_INT_S(80, 0, 1, S_ONE, S_ONE, feq.s a0, fa0, fa1)
        TEST_FP_INT_S(81, 0, 0, S_ONE, S_TWO, feq.s a0, fa0, fa1)
        TEST_FP_INT_S(82, 0, 1, S_ONE, S_TWO, flt.s a0, fa0, fa1)
        TEST_FP_INT_S(83, 0, 0, S_TWO, S_TWO, flt.s a0, fa0, fa1)
        TEST_FP_INT_S(84, 0, 1, S_TWO, S_TWO, fle.s a0, fa0, fa1)
        TEST_FP_INT_S(85, 0, 0, S_TWO, S_ONE, fle.s a0, fa0, fa1)
        TEST_FP_INT_S(86, 0, 1, S_NZERO, 0, feq.s a0, fa0, fa1)
        TEST_FP_INT_S(87, 0, 0, S_NZERO, 0, flt.s a0, fa0, fa1)
        TEST_FP_INT_S(88, 0, 1, S_NZERO, 0, fle.s a0, fa0, fa1)
        TEST_FP_INT_S(89, 0, 1, S_NINF, S_INF, flt.s a0, fa0, fa1)
        TEST_FP_INT_S(90, 0, 1, S_MTWO, 0x00000001, flt.s a0, fa0, fa1)
        TEST_FP_INT_S(91, 0, 0, S_QNAN, S_ONE, feq.s a0, fa0, fa1)
        TEST_FP_INT_S(92, 0, 0, S_QNAN, S_QNAN, feq.s a0, fa0, fa1)
        TEST_FP_INT_S(93, NV, 0, S_SNAN, S_ONE, feq.s a0, fa0, fa1)
        TEST_FP_INT_S(94, NV, 0, S_QNAN, S_ONE, flt.s a0, fa0, fa1)
        TEST_FP_INT_S(95, NV, 0, S_ONE, S_QNAN, fle.s a0, fa0, fa1)
        TEST_FP_INT_S(96, NV, 0, S_ONE, S_SNAN, fle.s a0, fa0, fa1)
        TEST_FP_INT_D(97, 0, 1, D_ONE, D_ONE, feq.d a0, fa0, fa1)
        TEST_FP_INT_D(98, 0, 1, D_MTWO, D_ONE, flt.d a0, fa0, fa1)
        TEST_FP_INT_D(99, 0, 1, D_NZERO, 0, fle.d a0, fa0, fa1)
        TEST_FP_INT_D(100, 0, 0, D_NZERO, 0, flt.d a0, fa0, fa1)
        TEST_FP_INT_D(101, 0, 0, D_QNAN, D_QNAN, feq.d a0, fa0, fa1)
        TEST_FP_INT_D(102, NV, 0, D_SNAN, D_ONE, feq.d a0, fa0, fa1)
        TEST_FP_INT_D(103, NV, 0, D_QNAN, D_ONE, fle.d a0, fa0, fa1)
        TEST_FP_INT_D(104, NV, 0, D_ONE, D_QNAN, flt.d a0, fa0, fa1)

        /* ---- fclass: one bit per class, no flags ---- */
        TEST_FP_INT_S(110, 0, 1 << 0, S_NINF, 0, fclass.s a0, fa0)
        TEST_FP_INT_S(111, 0, 1 << 1, S_MTWO, 0, fclass.s a0, fa0)
        TEST_FP_INT_S(112, 0, 1 << 2, 0x807fffff, 0, fclass.s a0, fa0)
        TEST_FP_INT_S(113, 0, 1 << 3, S_NZERO, 0, fclass.s a0, fa0)
        TEST_FP_INT_S(114, 0, 1 << 4, 0, 0, fclass.s a0, fa0)
        TEST_FP_INT_S(115, 0, 1 << 5, 0x00000001, 0, fclass.s a0, fa0)
        TEST_FP_INT_S(116, 0, 1 << 6, 0x7f7fffff, 0, fclass.s a0, fa0)
        TEST_FP_INT_S(117, 0, 1 << 7, S_INF, 0, fclass.s a0, fa0)
        TEST_FP_INT_S(118, 0, 1 << 8, S_SNAN, 0, fclass.s a0, fa0)
        TEST_FP_INT_S(119, 0, 1 << 8, 0xffbfffff, 0, fclass.s a0, fa0)
        TEST_FP_INT_S(120, 0, 1 << 9, S_QNAN, 0, fclass.s a0, fa0)
        TEST_FP_INT_S(121, 0, 1 << 9, 0xffc00001, 0, fclass.s a0, fa0)
        TEST_FP_INT_D(122, 0, 1 << 0, D_NINF, 0, fclass.d a0, fa0)
        TEST_FP_INT_D(123, 0, 1 << 1, D_MTWO, 0, fclass.d a0, fa0)
        TEST_FP_INT_D(124, 0, 1 << 2, 0x800fffffffffffff, 0, fclass.d a0, fa0)
        TEST_FP_INT_D(125, 0, 1 << 3, D_NZERO, 0, fclass.d a0, fa0)
        TEST_FP_INT_D(126, 0, 1 << 4, 0, 0, fclass.d a0, fa0)
        TEST_FP_INT_D(127, 0, 1 << 5, 0x0000000000000001, 0, fclass.d a0, fa0)
        TEST_FP_INT_D(128, 0, 1 << 6, 0x0010000000000000, 0, fclass.d a0, fa0)
        TEST_FP_INT_D(129, 0, 1 << 7, D_INF, 0, fclass.d a0, fa0)
        TEST_FP_INT_D(130, 0, 1 << 8, D_SNAN, 0, fclass.d a0, fa0)
        TEST_FP_INT_D(131, 0, 1 << 9, D_QNAN, 0, fclass.d a0, fa0)
        TEST_FP_INT_D(132, 0, 1 << 9, 0xffffffffffffffff, 0, fclass.d a0, fa0)
        TEST_FP_INT_D(133, 0, 1 << 9, 0xffffffff7fc00000, 0, fclass.d a0, fa0)  /* a boxed single is a double NaN */

        /* ---- fmin / fmax: -0 < +0; a NaN operand is ignored, two give the canonical NaN ---- */
        TEST_FP_S(140, 0, S_ONE, S_ONE, S_TWO, 0, fmin.s fa3, fa0, fa1)
        TEST_FP_S(141, 0, S_TWO, S_ONE, S_TWO, 0, fmax.s fa3, fa0, fa1)
        TEST_FP_S(142, 0, S_NZERO, S_NZERO, 0, 0, fmin.s fa3, fa0, fa1)
        TEST_FP_S(143, 0, S_NZERO, 0, S_NZERO, 0, fmin.s fa3, fa0, fa1)
        TEST_FP_S(144, 0, 0, S_NZERO, 0, 0, fmax.s fa3, fa0, fa1)
        TEST_FP_S(145, 0, 0, 0, S_NZERO, 0, fmax.s fa3, fa0, fa1)
        TEST_FP_S(146, 0, S_ONE, S_QNAN, S_ONE, 0, fmin.s fa3, fa0, fa1)
        TEST_FP_S(147, 0, S_ONE, S_ONE, 0x7fc12345, 0, fmax.s fa3, fa0, fa1)
        TEST_FP_S(148, NV, S_ONE, S_SNAN, S_ONE, 0, fmax.s fa3, fa0, fa1)
        TEST_FP_S(149, NV, S_MTWO, S_MTWO, S_SNAN, 0, fmin.s fa3, fa0, fa1)
        TEST_FP_S(150, 0, S_QNAN, 0x7fc12345, 0xffc00001, 0, fmin.s fa3, fa0, fa1)
        TEST_FP_S(151, NV, S_QNAN, S_SNAN, S_SNAN, 0, fmax.s fa3, fa0, fa1)
        TEST_FP_S(152, 0, S_NINF, S_NINF, 0x7f7fffff, 0, fmin.s fa3, fa0, fa1)
        TEST_FP_S(153, 0, S_NINF, S_QNAN, S_NINF, 0, fmax.s fa3, fa0, fa1)
        TEST_FP_D(154, 0, D_ONE, D_ONE, D_TWO, 0, fmin.d fa3, fa0, fa1)
        TEST_FP_D(155, 0, D_TWO, D_ONE, D_TWO, 0, fmax.d fa3, fa0, fa1)
        TEST_FP_D(156, 0, D_NZERO, 0, D_NZERO, 0, fmin.d fa3, fa0, fa1)
        TEST_FP_D(157, 0, 0, D_NZERO, 0, 0, fmax.d fa3, fa0, fa1)
        TEST_FP_D(158, 0, D_MTWO, D_QNAN, D_MTWO, 0, fmin.d fa3, fa0, fa1)
        TEST_FP_D(159, NV, D_MTWO, D_MTWO, D_SNAN, 0, fmax.d fa3, fa0, fa1)
        TEST_FP_D(160, 0, D_QNAN, 0x7ff8000000012345, D_QNAN, 0, fmax.d fa3, fa0, fa1)
        TEST_FP_D(161, NV, D_QNAN, D_SNAN, D_QNAN, 0, fmin.d fa3, fa0, fa1)
TEST_END

        .data
        .align 4
fdata:  .word 0x3f800000, 0x7f800001
        .word 0, 0
        .dword 0x7ff0000000000001
        .dword 0, 0
fbuf:   .dword 0, 0
