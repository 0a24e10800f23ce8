/* fp_arith: F and D arithmetic with exact results and flags: fadd, fsub,
 * fmul, fdiv, fsqrt, fmadd, fmsub, fnmadd, fnmsub; all five rounding modes
 * (static rm field and dynamic frm), overflow, underflow (tininess after
 * rounding), divide by zero, invalid, canonical NaN results.
 * Each case: fa0, fa1, fa2 = operands (bit patterns), fa3 = result, then the
 * result bits (single results must be NaN-boxed) and the exact fflags. */
#include "test.h"

TEST_BEGIN
        FP_ENABLE
        /* ==== single precision ==== */
        /* fadd / fsub */
        TEST_FP_S(1, 0, 0x40400000, 0x3f800000, 0x40000000, 0x00000000, fadd.s fa3, fa0, fa1)  /* 1 + 2 */
        TEST_FP_S(2, 1, 0x3e99999a, 0x3dcccccd, 0x3e4ccccd, 0x00000000, fadd.s fa3, fa0, fa1)  /* 0.1 + 0.2 -> NX */
        TEST_FP_S(3, 1, 0x3f800000, 0x3f800000, 0x33800000, 0x00000000, fadd.s fa3, fa0, fa1, rne)  /* 1 + half an ulp, rne -> NX */
        TEST_FP_S(4, 1, 0x3f800000, 0x3f800000, 0x33800000, 0x00000000, fadd.s fa3, fa0, fa1, rtz)  /* 1 + half an ulp, rtz -> NX */
        TEST_FP_S(5, 1, 0x3f800000, 0x3f800000, 0x33800000, 0x00000000, fadd.s fa3, fa0, fa1, rdn)  /* 1 + half an ulp, rdn -> NX */
        TEST_FP_S(6, 1, 0x3f800001, 0x3f800000, 0x33800000, 0x00000000, fadd.s fa3, fa0, fa1, rup)  /* 1 + half an ulp, rup -> NX */
        TEST_FP_S(7, 1, 0x3f800001, 0x3f800000, 0x33800000, 0x00000000, fadd.s fa3, fa0, fa1, rmm)  /* 1 + half an ulp, rmm -> NX */
        TEST_FP_S(8, 1, 0xbf800001, 0xbf800000, 0xb3800000, 0x00000000, fadd.s fa3, fa0, fa1, rmm)  /* -1 - half an ulp, rmm -> NX */
        TEST_FP_S(9, 1, 0xbf800001, 0xbf800000, 0xb3800000, 0x00000000, fadd.s fa3, fa0, fa1, rdn)  /* -1 - half an ulp, rdn -> NX */
        TEST_FP_S(10, 0, 0x00000000, 0x00000000, 0x80000000, 0x00000000, fadd.s fa3, fa0, fa1)  /* +0 + -0 = +0 */
        TEST_FP_S(11, 0, 0x80000000, 0x00000000, 0x80000000, 0x00000000, fadd.s fa3, fa0, fa1, rdn)  /* +0 + -0 = -0 in rdn */
        TEST_FP_S(12, 0, 0x80000000, 0x80000000, 0x80000000, 0x00000000, fadd.s fa3, fa0, fa1)  /* -0 + -0 = -0 */
        TEST_FP_S(13, 0, 0x00000000, 0x3fc00000, 0x3fc00000, 0x00000000, fsub.s fa3, fa0, fa1)  /* x - x = +0 */
        TEST_FP_S(14, 0, 0x80000000, 0x3fc00000, 0x3fc00000, 0x00000000, fsub.s fa3, fa0, fa1, rdn)  /* x - x = -0 in rdn */
        TEST_FP_S(15, 0, 0xc0000000, 0x3f800000, 0x40400000, 0x00000000, fsub.s fa3, fa0, fa1)  /* 1 - 3 */
        TEST_FP_S(16, 5, 0x7f800000, 0x7f7fffff, 0x7f7fffff, 0x00000000, fadd.s fa3, fa0, fa1)  /* overflow -> OF|NX */
        TEST_FP_S(17, 5, 0x7f7fffff, 0x7f7fffff, 0x7f7fffff, 0x00000000, fadd.s fa3, fa0, fa1, rtz)  /* overflow, rtz: max finite -> OF|NX */
        TEST_FP_S(18, 5, 0xff7fffff, 0xff7fffff, 0xff7fffff, 0x00000000, fadd.s fa3, fa0, fa1, rup)  /* negative overflow, rup: -max finite -> OF|NX */
        TEST_FP_S(19, 5, 0xff800000, 0xff7fffff, 0xff7fffff, 0x00000000, fadd.s fa3, fa0, fa1, rdn)  /* negative overflow, rdn: -inf -> OF|NX */
        TEST_FP_S(20, 16, 0x7fc00000, 0x7f800000, 0xff800000, 0x00000000, fadd.s fa3, fa0, fa1)  /* inf - inf -> NV */
        TEST_FP_S(21, 16, 0x7fc00000, 0x7f800000, 0x7f800000, 0x00000000, fsub.s fa3, fa0, fa1)  /* inf - inf -> NV */
        TEST_FP_S(22, 0, 0x7f800000, 0x7f800000, 0x3f800000, 0x00000000, fadd.s fa3, fa0, fa1)  /* inf + 1 */
        TEST_FP_S(23, 16, 0x7fc00000, 0x7f800001, 0x3f800000, 0x00000000, fadd.s fa3, fa0, fa1)  /* sNaN + 1 -> NV */
        TEST_FP_S(24, 0, 0x7fc00000, 0x3f800000, 0x7fc00123, 0x00000000, fadd.s fa3, fa0, fa1)  /* 1 + qNaN(payload): canonical NaN, no flags */
        TEST_FP_S(25, 0, 0x00000002, 0x00000001, 0x00000001, 0x00000000, fadd.s fa3, fa0, fa1)  /* subnormal + subnormal, exact */
        TEST_FP_S(26, 0, 0x007fffff, 0x00800000, 0x00000001, 0x00000000, fsub.s fa3, fa0, fa1)  /* min normal - min subnormal: exact subnormal */
        /* fmul */
        TEST_FP_S(27, 0, 0xc1200000, 0x40200000, 0xc0800000, 0x00000000, fmul.s fa3, fa0, fa1)  /* 2.5 * -4 */
        TEST_FP_S(28, 16, 0x7fc00000, 0x00000000, 0x7f800000, 0x00000000, fmul.s fa3, fa0, fa1)  /* 0 * inf -> NV */
        TEST_FP_S(29, 0, 0x80000000, 0x80000000, 0x40400000, 0x00000000, fmul.s fa3, fa0, fa1)  /* -0 * 3 = -0 */
        TEST_FP_S(30, 0, 0x7f800000, 0xff800000, 0xc0000000, 0x00000000, fmul.s fa3, fa0, fa1)  /* -inf * -2 */
        TEST_FP_S(31, 0, 0x00400000, 0x00800000, 0x3f000000, 0x00000000, fmul.s fa3, fa0, fa1)  /* exact subnormal result: no UF */
        TEST_FP_S(32, 3, 0x00000000, 0x00000001, 0x3f000000, 0x00000000, fmul.s fa3, fa0, fa1)  /* min subnormal / 2, tie to even 0 -> UF|NX */
        TEST_FP_S(33, 3, 0x00000001, 0x00000001, 0x3f000000, 0x00000000, fmul.s fa3, fa0, fa1, rup)  /* min subnormal / 2, rup -> UF|NX */
        TEST_FP_S(34, 3, 0x00000001, 0x00000003, 0x3e800000, 0x00000000, fmul.s fa3, fa0, fa1)  /* 3 * min subnormal / 4 -> UF|NX */
        TEST_FP_S(35, 5, 0x7f800000, 0x7149f2ca, 0x501502f9, 0x00000000, fmul.s fa3, fa0, fa1)  /* overflow -> OF|NX */
        TEST_FP_S(36, 16, 0x7fc00000, 0x7f800001, 0x00000000, 0x00000000, fmul.s fa3, fa0, fa1)  /* sNaN * 0 -> NV */
        /* fdiv: 1/3 and -1/3 in every static rounding mode */
        TEST_FP_S(37, 1, 0x3eaaaaab, 0x3f800000, 0x40400000, 0x00000000, fdiv.s fa3, fa0, fa1, rne)  /* 1/3 rne -> NX */
        TEST_FP_S(38, 1, 0x3eaaaaaa, 0x3f800000, 0x40400000, 0x00000000, fdiv.s fa3, fa0, fa1, rtz)  /* 1/3 rtz -> NX */
        TEST_FP_S(39, 1, 0x3eaaaaaa, 0x3f800000, 0x40400000, 0x00000000, fdiv.s fa3, fa0, fa1, rdn)  /* 1/3 rdn -> NX */
        TEST_FP_S(40, 1, 0x3eaaaaab, 0x3f800000, 0x40400000, 0x00000000, fdiv.s fa3, fa0, fa1, rup)  /* 1/3 rup -> NX */
        TEST_FP_S(41, 1, 0x3eaaaaab, 0x3f800000, 0x40400000, 0x00000000, fdiv.s fa3, fa0, fa1, rmm)  /* 1/3 rmm -> NX */
        TEST_FP_S(42, 1, 0xbeaaaaab, 0xbf800000, 0x40400000, 0x00000000, fdiv.s fa3, fa0, fa1, rne)  /* -1/3 rne -> NX */
        TEST_FP_S(43, 1, 0xbeaaaaaa, 0xbf800000, 0x40400000, 0x00000000, fdiv.s fa3, fa0, fa1, rtz)  /* -1/3 rtz -> NX */
        TEST_FP_S(44, 1, 0xbeaaaaab, 0xbf800000, 0x40400000, 0x00000000, fdiv.s fa3, fa0, fa1, rdn)  /* -1/3 rdn -> NX */
        TEST_FP_S(45, 1, 0xbeaaaaaa, 0xbf800000, 0x40400000, 0x00000000, fdiv.s fa3, fa0, fa1, rup)  /* -1/3 rup -> NX */
        TEST_FP_S(46, 1, 0xbeaaaaab, 0xbf800000, 0x40400000, 0x00000000, fdiv.s fa3, fa0, fa1, rmm)  /* -1/3 rmm -> NX */
        /* fdiv: dynamic rounding mode from frm */
        TEST_FP_S(47, 1, 0x3f2aaaab, 0x40000000, 0x40400000, 0x00000000, fsrmi 0; fdiv.s fa3, fa0, fa1; fsrmi 0)  /* 2/3, frm=rne -> NX */
        TEST_FP_S(48, 1, 0x3f2aaaaa, 0x40000000, 0x40400000, 0x00000000, fsrmi 1; fdiv.s fa3, fa0, fa1; fsrmi 0)  /* 2/3, frm=rtz -> NX */
        TEST_FP_S(49, 1, 0x3f2aaaaa, 0x40000000, 0x40400000, 0x00000000, fsrmi 2; fdiv.s fa3, fa0, fa1; fsrmi 0)  /* 2/3, frm=rdn -> NX */
        TEST_FP_S(50, 1, 0x3f2aaaab, 0x40000000, 0x40400000, 0x00000000, fsrmi 3; fdiv.s fa3, fa0, fa1; fsrmi 0)  /* 2/3, frm=rup -> NX */
        TEST_FP_S(51, 1, 0x3f2aaaab, 0x40000000, 0x40400000, 0x00000000, fsrmi 4; fdiv.s fa3, fa0, fa1; fsrmi 0)  /* 2/3, frm=rmm -> NX */
        TEST_FP_S(52, 1, 0xbf2aaaaa, 0xc0000000, 0x40400000, 0x00000000, fsrmi 3; fdiv.s fa3, fa0, fa1; fsrmi 0)  /* -2/3, frm=rup -> NX */
        TEST_FP_S(53, 8, 0x7f800000, 0x3f800000, 0x00000000, 0x00000000, fdiv.s fa3, fa0, fa1)  /* 1/0 -> DZ */
        TEST_FP_S(54, 8, 0xff800000, 0xbf800000, 0x00000000, 0x00000000, fdiv.s fa3, fa0, fa1)  /* -1/0 -> DZ */
        TEST_FP_S(55, 8, 0xff800000, 0x3f800000, 0x80000000, 0x00000000, fdiv.s fa3, fa0, fa1)  /* 1/-0 -> DZ */
        TEST_FP_S(56, 16, 0x7fc00000, 0x00000000, 0x00000000, 0x00000000, fdiv.s fa3, fa0, fa1)  /* 0/0 -> NV */
        TEST_FP_S(57, 16, 0x7fc00000, 0x7f800000, 0xff800000, 0x00000000, fdiv.s fa3, fa0, fa1)  /* inf/-inf -> NV */
        TEST_FP_S(58, 0, 0x7f800000, 0x7f800000, 0x00000000, 0x00000000, fdiv.s fa3, fa0, fa1)  /* inf/0: inf, no DZ */
        TEST_FP_S(59, 0, 0x00000000, 0x40400000, 0x7f800000, 0x00000000, fdiv.s fa3, fa0, fa1)  /* 3/inf = 0 */
        TEST_FP_S(60, 0, 0x40200000, 0x41200000, 0x40800000, 0x00000000, fdiv.s fa3, fa0, fa1)  /* 10/4 exact */
        TEST_FP_S(61, 3, 0x002aaaab, 0x00800000, 0x40400000, 0x00000000, fdiv.s fa3, fa0, fa1)  /* subnormal inexact: UF -> UF|NX */
        TEST_FP_S(62, 5, 0x7f800000, 0x7f7fffff, 0x3f000000, 0x00000000, fdiv.s fa3, fa0, fa1)  /* overflow -> OF|NX */
        /* fsqrt */
        TEST_FP_S(63, 0, 0x40000000, 0x40800000, 0x00000000, 0x00000000, fsqrt.s fa3, fa0)  /* sqrt 4 */
        TEST_FP_S(64, 1, 0x3fb504f3, 0x40000000, 0x00000000, 0x00000000, fsqrt.s fa3, fa0, rne)  /* sqrt 2 rne -> NX */
        TEST_FP_S(65, 1, 0x3fb504f3, 0x40000000, 0x00000000, 0x00000000, fsqrt.s fa3, fa0, rtz)  /* sqrt 2 rtz -> NX */
        TEST_FP_S(66, 1, 0x3fb504f4, 0x40000000, 0x00000000, 0x00000000, fsqrt.s fa3, fa0, rup)  /* sqrt 2 rup -> NX */
        TEST_FP_S(67, 16, 0x7fc00000, 0xbf800000, 0x00000000, 0x00000000, fsqrt.s fa3, fa0)  /* sqrt -1 -> NV */
        TEST_FP_S(68, 0, 0x80000000, 0x80000000, 0x00000000, 0x00000000, fsqrt.s fa3, fa0)  /* sqrt -0 = -0 */
        TEST_FP_S(69, 0, 0x7f800000, 0x7f800000, 0x00000000, 0x00000000, fsqrt.s fa3, fa0)  /* sqrt inf */
        TEST_FP_S(70, 16, 0x7fc00000, 0xff800000, 0x00000000, 0x00000000, fsqrt.s fa3, fa0)  /* sqrt -inf -> NV */
        TEST_FP_S(71, 16, 0x7fc00000, 0x7f800001, 0x00000000, 0x00000000, fsqrt.s fa3, fa0)  /* sqrt sNaN -> NV */
        TEST_FP_S(72, 1, 0x1a3504f3, 0x00000001, 0x00000000, 0x00000000, fsqrt.s fa3, fa0)  /* sqrt of min subnormal -> NX */
        /* fused multiply-add: one rounding */
        TEST_FP_S(73, 0, 0x40a00000, 0x3f800000, 0x40000000, 0x40400000, fmadd.s fa3, fa0, fa1, fa2)  /* 1*2+3 */
        TEST_FP_S(74, 0, 0xbf800000, 0x3f800000, 0x40000000, 0x40400000, fmsub.s fa3, fa0, fa1, fa2)  /* 1*2-3 */
        TEST_FP_S(75, 0, 0xc0a00000, 0x3f800000, 0x40000000, 0x40400000, fnmadd.s fa3, fa0, fa1, fa2)  /* -(1*2)-3 */
        TEST_FP_S(76, 0, 0x3f800000, 0x3f800000, 0x40000000, 0x40400000, fnmsub.s fa3, fa0, fa1, fa2)  /* -(1*2)+3 */
        TEST_FP_S(77, 0, 0x28800000, 0x3f800001, 0x3f800001, 0xbf800002, fmadd.s fa3, fa0, fa1, fa2)  /* (1+u)^2 - round((1+u)^2): exact residual */
        TEST_FP_S(78, 0, 0xa8800000, 0x3f800001, 0x3f800001, 0x3f800002, fnmsub.s fa3, fa0, fa1, fa2)  /* same, negated product */
        TEST_FP_S(79, 0, 0x28800000, 0x3f800001, 0x3f800001, 0x3f800002, fmsub.s fa3, fa0, fa1, fa2, rtz)  /* same via fmsub */
        TEST_FP_S(80, 0, 0xa8800000, 0x3f800001, 0x3f800001, 0xbf800002, fnmadd.s fa3, fa0, fa1, fa2, rdn)  /* fnmadd: -residual */
        TEST_FP_S(81, 0, 0x00000000, 0x3f800000, 0x3f800000, 0xbf800000, fmadd.s fa3, fa0, fa1, fa2)  /* 1*1-1 = +0 */
        TEST_FP_S(82, 0, 0x80000000, 0x3f800000, 0x3f800000, 0xbf800000, fmadd.s fa3, fa0, fa1, fa2, rdn)  /* 1*1-1 = -0 in rdn */
        TEST_FP_S(83, 0, 0x80000000, 0x00000000, 0x3f800000, 0x00000000, fnmadd.s fa3, fa0, fa1, fa2)  /* -(0*1)-0 = -0 */
        TEST_FP_S(84, 16, 0x7fc00000, 0x7f800000, 0x00000000, 0x3f800000, fmadd.s fa3, fa0, fa1, fa2)  /* inf*0+1 -> NV */
        TEST_FP_S(85, 16, 0x7fc00000, 0x7f800000, 0x00000000, 0x7fc00000, fmadd.s fa3, fa0, fa1, fa2)  /* inf*0+qNaN: still NV -> NV */
        TEST_FP_S(86, 16, 0x7fc00000, 0x7f800000, 0x3f800000, 0xff800000, fmadd.s fa3, fa0, fa1, fa2)  /* inf*1-inf -> NV */
        TEST_FP_S(87, 16, 0x7fc00000, 0x3f800000, 0x3f800000, 0x7f800001, fmadd.s fa3, fa0, fa1, fa2)  /* sNaN addend -> NV */
        TEST_FP_S(88, 0, 0x7fc00000, 0x7fc00000, 0x3f800000, 0x3f800000, fmadd.s fa3, fa0, fa1, fa2)  /* qNaN multiplicand */
        TEST_FP_S(89, 0, 0x7f7fffff, 0x7f7fffff, 0x40000000, 0xff7fffff, fmadd.s fa3, fa0, fa1, fa2)  /* no intermediate overflow */
        TEST_FP_S(90, 0, 0x33000000, 0x40400000, 0x3eaaaaab, 0xbf800000, fmadd.s fa3, fa0, fa1, fa2)  /* 3*round(1/3)-1 */
        TEST_FP_S(91, 1, 0x3f800000, 0x3f800000, 0x33800000, 0x3f800000, fmadd.s fa3, fa0, fa1, fa2, rne)  /* 1 + half ulp via fma, rne -> NX */
        TEST_FP_S(92, 1, 0x3f800000, 0x3f800000, 0x33800000, 0x3f800000, fmadd.s fa3, fa0, fa1, fa2, rtz)  /* 1 + half ulp via fma, rtz -> NX */
        TEST_FP_S(93, 1, 0x3f800000, 0x3f800000, 0x33800000, 0x3f800000, fmadd.s fa3, fa0, fa1, fa2, rdn)  /* 1 + half ulp via fma, rdn -> NX */
        TEST_FP_S(94, 1, 0x3f800001, 0x3f800000, 0x33800000, 0x3f800000, fmadd.s fa3, fa0, fa1, fa2, rup)  /* 1 + half ulp via fma, rup -> NX */
        TEST_FP_S(95, 1, 0x3f800001, 0x3f800000, 0x33800000, 0x3f800000, fmadd.s fa3, fa0, fa1, fa2, rmm)  /* 1 + half ulp via fma, rmm -> NX */
        /* ==== double precision ==== */
        /* fadd / fsub */
        TEST_FP_D(96, 0, 0x4008000000000000, 0x3ff0000000000000, 0x4000000000000000, 0x0000000000000000, fadd.d fa3, fa0, fa1)  /* 1 + 2 */
        TEST_FP_D(97, 1, 0x3fd3333333333334, 0x3fb999999999999a, 0x3fc999999999999a, 0x0000000000000000, fadd.d fa3, fa0, fa1)  /* 0.1 + 0.2 -> NX */
        TEST_FP_D(98, 1, 0x3ff0000000000000, 0x3ff0000000000000, 0x3ca0000000000000, 0x0000000000000000, fadd.d fa3, fa0, fa1, rne)  /* 1 + half an ulp, rne -> NX */
        TEST_FP_D(99, 1, 0x3ff0000000000000, 0x3ff0000000000000, 0x3ca0000000000000, 0x0000000000000000, fadd.d fa3, fa0, fa1, rtz)  /* 1 + half an ulp, rtz -> NX */
        TEST_FP_D(100, 1, 0x3ff0000000000000, 0x3ff0000000000000, 0x3ca0000000000000, 0x0000000000000000, fadd.d fa3, fa0, fa1, rdn)  /* 1 + half an ulp, rdn -> NX */
        TEST_FP_D(101, 1, 0x3ff0000000000001, 0x3ff0000000000000, 0x3ca0000000000000, 0x0000000000000000, fadd.d fa3, fa0, fa1, rup)  /* 1 + half an ulp, rup -> NX */
        TEST_FP_D(102, 1, 0x3ff0000000000001, 0x3ff0000000000000, 0x3ca0000000000000, 0x0000000000000000, fadd.d fa3, fa0, fa1, rmm)  /* 1 + half an ulp, rmm -> NX */
        TEST_FP_D(103, 1, 0xbff0000000000001, 0xbff0000000000000, 0xbca0000000000000, 0x0000000000000000, fadd.d fa3, fa0, fa1, rmm)  /* -1 - half an ulp, rmm -> NX */
        TEST_FP_D(104, 1, 0xbff0000000000001, 0xbff0000000000000, 0xbca0000000000000, 0x0000000000000000, fadd.d fa3, fa0, fa1, rdn)  /* -1 - half an ulp, rdn -> NX */
        TEST_FP_D(105, 0, 0x0000000000000000, 0x0000000000000000, 0x8000000000000000, 0x0000000000000000, fadd.d fa3, fa0, fa1)  /* +0 + -0 = +0 */
        TEST_FP_D(106, 0, 0x8000000000000000, 0x0000000000000000, 0x8000000000000000, 0x0000000000000000, fadd.d fa3, fa0, fa1, rdn)  /* +0 + -0 = -0 in rdn */
        TEST_FP_D(107, 0, 0x8000000000000000, 0x8000000000000000, 0x8000000000000000, 0x0000000000000000, fadd.d fa3, fa0, fa1)  /* -0 + -0 = -0 */
        TEST_FP_D(108, 0, 0x0000000000000000, 0x3ff8000000000000, 0x3ff8000000000000, 0x0000000000000000, fsub.d fa3, fa0, fa1)  /* x - x = +0 */
        TEST_FP_D(109, 0, 0x8000000000000000, 0x3ff8000000000000, 0x3ff8000000000000, 0x0000000000000000, fsub.d fa3, fa0, fa1, rdn)  /* x - x = -0 in rdn */
        TEST_FP_D(110, 0, 0xc000000000000000, 0x3ff0000000000000, 0x4008000000000000, 0x0000000000000000, fsub.d fa3, fa0, fa1)  /* 1 - 3 */
        TEST_FP_D(111, 5, 0x7ff0000000000000, 0x7fefffffffffffff, 0x7fefffffffffffff, 0x0000000000000000, fadd.d fa3, fa0, fa1)  /* overflow -> OF|NX */
        TEST_FP_D(112, 5, 0x7fefffffffffffff, 0x7fefffffffffffff, 0x7fefffffffffffff, 0x0000000000000000, fadd.d fa3, fa0, fa1, rtz)  /* overflow, rtz: max finite -> OF|NX */
        TEST_FP_D(113, 5, 0xffefffffffffffff, 0xffefffffffffffff, 0xffefffffffffffff, 0x0000000000000000, fadd.d fa3, fa0, fa1, rup)  /* negative overflow, rup: -max finite -> OF|NX */
        TEST_FP_D(114, 5, 0xfff0000000000000, 0xffefffffffffffff, 0xffefffffffffffff, 0x0000000000000000, fadd.d fa3, fa0, fa1, rdn)  /* negative overflow, rdn: -inf -> OF|NX */
        TEST_FP_D(115, 16, 0x7ff8000000000000, 0x7ff0000000000000, 0xfff0000000000000, 0x0000000000000000, fadd.d fa3, fa0, fa1)  /* inf - inf -> NV */
        TEST_FP_D(116, 16, 0x7ff8000000000000, 0x7ff0000000000000, 0x7ff0000000000000, 0x0000000000000000, fsub.d fa3, fa0, fa1)  /* inf - inf -> NV */
        TEST_FP_D(117, 0, 0x7ff0000000000000, 0x7ff0000000000000, 0x3ff0000000000000, 0x0000000000000000, fadd.d fa3, fa0, fa1)  /* inf + 1 */
        TEST_FP_D(118, 16, 0x7ff8000000000000, 0x7ff0000000000001, 0x3ff0000000000000, 0x0000000000000000, fadd.d fa3, fa0, fa1)  /* sNaN + 1 -> NV */
        TEST_FP_D(119, 0, 0x7ff8000000000000, 0x3ff0000000000000, 0x7ff8000000000123, 0x0000000000000000, fadd.d fa3, fa0, fa1)  /* 1 + qNaN(payload): canonical NaN, no flags */
        TEST_FP_D(120, 0, 0x0000000000000002, 0x0000000000000001, 0x0000000000000001, 0x0000000000000000, fadd.d fa3, fa0, fa1)  /* subnormal + subnormal, exact */
        TEST_FP_D(121, 0, 0x000fffffffffffff, 0x0010000000000000, 0x0000000000000001, 0x0000000000000000, fsub.d fa3, fa0, fa1)  /* min normal - min subnormal: exact subnormal */
        /* fmul */
        TEST_FP_D(122, 0, 0xc024000000000000, 0x4004000000000000, 0xc010000000000000, 0x0000000000000000, fmul.d fa3, fa0, fa1)  /* 2.5 * -4 */
        TEST_FP_D(123, 16, 0x7ff8000000000000, 0x0000000000000000, 0x7ff0000000000000, 0x0000000000000000, fmul.d fa3, fa0, fa1)  /* 0 * inf -> NV */
        TEST_FP_D(124, 0, 0x8000000000000000, 0x8000000000000000, 0x4008000000000000, 0x0000000000000000, fmul.d fa3, fa0, fa1)  /* -0 * 3 = -0 */
        TEST_FP_D(125, 0, 0x7ff0000000000000, 0xfff0000000000000, 0xc000000000000000, 0x0000000000000000, fmul.d fa3, fa0, fa1)  /* -inf * -2 */
        TEST_FP_D(126, 0, 0x0008000000000000, 0x0010000000000000, 0x3fe0000000000000, 0x0000000000000000, fmul.d fa3, fa0, fa1)  /* exact subnormal result: no UF */
        TEST_FP_D(127, 3, 0x0000000000000000, 0x0000000000000001, 0x3fe0000000000000, 0x0000000000000000, fmul.d fa3, fa0, fa1)  /* min subnormal / 2, tie to even 0 -> UF|NX */
        TEST_FP_D(128, 3, 0x0000000000000001, 0x0000000000000001, 0x3fe0000000000000, 0x0000000000000000, fmul.d fa3, fa0, fa1, rup)  /* min subnormal / 2, rup -> UF|NX */
        TEST_FP_D(129, 3, 0x0000000000000001, 0x0000000000000003, 0x3fd0000000000000, 0x0000000000000000, fmul.d fa3, fa0, fa1)  /* 3 * min subnormal / 4 -> UF|NX */
        TEST_FP_D(130, 5, 0x7ff0000000000000, 0x7e37e43c8800759c, 0x4202a05f20000000, 0x0000000000000000, fmul.d fa3, fa0, fa1)  /* overflow -> OF|NX */
        TEST_FP_D(131, 16, 0x7ff8000000000000, 0x7ff0000000000001, 0x0000000000000000, 0x0000000000000000, fmul.d fa3, fa0, fa1)  /* sNaN * 0 -> NV */
        /* fdiv: 1/3 and -1/3 in every static rounding mode */
        TEST_FP_D(132, 1, 0x3fd5555555555555, 0x3ff0000000000000, 0x4008000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1, rne)  /* 1/3 rne -> NX */
        TEST_FP_D(133, 1, 0x3fd5555555555555, 0x3ff0000000000000, 0x4008000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1, rtz)  /* 1/3 rtz -> NX */
        TEST_FP_D(134, 1, 0x3fd5555555555555, 0x3ff0000000000000, 0x4008000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1, rdn)  /* 1/3 rdn -> NX */
        TEST_FP_D(135, 1, 0x3fd5555555555556, 0x3ff0000000000000, 0x4008000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1, rup)  /* 1/3 rup -> NX */
        TEST_FP_D(136, 1, 0x3fd5555555555555, 0x3ff0000000000000, 0x4008000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1, rmm)  /* 1/3 rmm -> NX */
        TEST_FP_D(137, 1, 0xbfd5555555555555, 0xbff0000000000000, 0x4008000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1, rne)  /* -1/3 rne -> NX */
        TEST_FP_D(138, 1, 0xbfd5555555555555, 0xbff0000000000000, 0x4008000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1, rtz)  /* -1/3 rtz -> NX */
        TEST_FP_D(139, 1, 0xbfd5555555555556, 0xbff0000000000000, 0x4008000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1, rdn)  /* -1/3 rdn -> NX */
        TEST_FP_D(140, 1, 0xbfd5555555555555, 0xbff0000000000000, 0x4008000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1, rup)  /* -1/3 rup -> NX */
        TEST_FP_D(141, 1, 0xbfd5555555555555, 0xbff0000000000000, 0x4008000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1, rmm)  /* -1/3 rmm -> NX */
        /* fdiv: dynamic rounding mode from frm */
        TEST_FP_D(142, 1, 0x3fe5555555555555, 0x4000000000000000, 0x4008000000000000, 0x0000000000000000, fsrmi 0; fdiv.d fa3, fa0, fa1; fsrmi 0)  /* 2/3, frm=rne -> NX */
        TEST_FP_D(143, 1, 0x3fe5555555555555, 0x4000000000000000, 0x4008000000000000, 0x0000000000000000, fsrmi 1; fdiv.d fa3, fa0, fa1; fsrmi 0)  /* 2/3, frm=rtz -> NX */
        TEST_FP_D(144, 1, 0x3fe5555555555555, 0x4000000000000000, 0x4008000000000000, 0x0000000000000000, fsrmi 2; fdiv.d fa3, fa0, fa1; fsrmi 0)  /* 2/3, frm=rdn -> NX */
        TEST_FP_D(145, 1, 0x3fe5555555555556, 0x4000000000000000, 0x4008000000000000, 0x0000000000000000, fsrmi 3; fdiv.d fa3, fa0, fa1; fsrmi 0)  /* 2/3, frm=rup -> NX */
        TEST_FP_D(146, 1, 0x3fe5555555555555, 0x4000000000000000, 0x4008000000000000, 0x0000000000000000, fsrmi 4; fdiv.d fa3, fa0, fa1; fsrmi 0)  /* 2/3, frm=rmm -> NX */
        TEST_FP_D(147, 1, 0xbfe5555555555555, 0xc000000000000000, 0x4008000000000000, 0x0000000000000000, fsrmi 3; fdiv.d fa3, fa0, fa1; fsrmi 0)  /* -2/3, frm=rup -> NX */
        TEST_FP_D(148, 8, 0x7ff0000000000000, 0x3ff0000000000000, 0x0000000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1)  /* 1/0 -> DZ */
        TEST_FP_D(149, 8, 0xfff0000000000000, 0xbff0000000000000, 0x0000000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1)  /* -1/0 -> DZ */
        TEST_FP_D(150, 8, 0xfff0000000000000, 0x3ff0000000000000, 0x8000000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1)  /* 1/-0 -> DZ */
        TEST_FP_D(151, 16, 0x7ff8000000000000, 0x0000000000000000, 0x0000000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1)  /* 0/0 -> NV */
        TEST_FP_D(152, 16, 0x7ff8000000000000, 0x7ff0000000000000, 0xfff0000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1)  /* inf/-inf -> NV */
        TEST_FP_D(153, 0, 0x7ff0000000000000, 0x7ff0000000000000, 0x0000000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1)  /* inf/0: inf, no DZ */
        TEST_FP_D(154, 0, 0x0000000000000000, 0x4008000000000000, 0x7ff0000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1)  /* 3/inf = 0 */
        TEST_FP_D(155, 0, 0x4004000000000000, 0x4024000000000000, 0x4010000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1)  /* 10/4 exact */
        TEST_FP_D(156, 3, 0x0005555555555555, 0x0010000000000000, 0x4008000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1)  /* subnormal inexact: UF -> UF|NX */
        TEST_FP_D(157, 5, 0x7ff0000000000000, 0x7fefffffffffffff, 0x3fe0000000000000, 0x0000000000000000, fdiv.d fa3, fa0, fa1)  /* overflow -> OF|NX */
        /* fsqrt */
        TEST_FP_D(158, 0, 0x4000000000000000, 0x4010000000000000, 0x0000000000000000, 0x0000000000000000, fsqrt.d fa3, fa0)  /* sqrt 4 */
        TEST_FP_D(159, 1, 0x3ff6a09e667f3bcd, 0x4000000000000000, 0x0000000000000000, 0x0000000000000000, fsqrt.d fa3, fa0, rne)  /* sqrt 2 rne -> NX */
        TEST_FP_D(160, 1, 0x3ff6a09e667f3bcc, 0x4000000000000000, 0x0000000000000000, 0x0000000000000000, fsqrt.d fa3, fa0, rtz)  /* sqrt 2 rtz -> NX */
        TEST_FP_D(161, 1, 0x3ff6a09e667f3bcd, 0x4000000000000000, 0x0000000000000000, 0x0000000000000000, fsqrt.d fa3, fa0, rup)  /* sqrt 2 rup -> NX */
        TEST_FP_D(162, 16, 0x7ff8000000000000, 0xbff0000000000000, 0x0000000000000000, 0x0000000000000000, fsqrt.d fa3, fa0)  /* sqrt -1 -> NV */
        TEST_FP_D(163, 0, 0x8000000000000000, 0x8000000000000000, 0x0000000000000000, 0x0000000000000000, fsqrt.d fa3, fa0)  /* sqrt -0 = -0 */
        TEST_FP_D(164, 0, 0x7ff0000000000000, 0x7ff0000000000000, 0x0000000000000000, 0x0000000000000000, fsqrt.d fa3, fa0)  /* sqrt inf */
        TEST_FP_D(165, 16, 0x7ff8000000000000, 0xfff0000000000000, 0x0000000000000000, 0x0000000000000000, fsqrt.d fa3, fa0)  /* sqrt -inf -> NV */
        TEST_FP_D(166, 16, 0x7ff8000000000000, 0x7ff0000000000001, 0x0000000000000000, 0x0000000000000000, fsqrt.d fa3, fa0)  /* sqrt sNaN -> NV */
        TEST_FP_D(167, 0, 0x1e60000000000000, 0x0000000000000001, 0x0000000000000000, 0x0000000000000000, fsqrt.d fa3, fa0)  /* sqrt of min subnormal */
        /* fused multiply-add: one rounding */
        TEST_FP_D(168, 0, 0x4014000000000000, 0x3ff0000000000000, 0x4000000000000000, 0x4008000000000000, fmadd.d fa3, fa0, fa1, fa2)  /* 1*2+3 */
        TEST_FP_D(169, 0, 0xbff0000000000000, 0x3ff0000000000000, 0x4000000000000000, 0x4008000000000000, fmsub.d fa3, fa0, fa1, fa2)  /* 1*2-3 */
        TEST_FP_D(170, 0, 0xc014000000000000, 0x3ff0000000000000, 0x4000000000000000, 0x4008000000000000, fnmadd.d fa3, fa0, fa1, fa2)  /* -(1*2)-3 */
        TEST_FP_D(171, 0, 0x3ff0000000000000, 0x3ff0000000000000, 0x4000000000000000, 0x4008000000000000, fnmsub.d fa3, fa0, fa1, fa2)  /* -(1*2)+3 */
        TEST_FP_D(172, 0, 0x3970000000000000, 0x3ff0000000000001, 0x3ff0000000000001, 0xbff0000000000002, fmadd.d fa3, fa0, fa1, fa2)  /* (1+u)^2 - round((1+u)^2): exact residual */
        TEST_FP_D(173, 0, 0xb970000000000000, 0x3ff0000000000001, 0x3ff0000000000001, 0x3ff0000000000002, fnmsub.d fa3, fa0, fa1, fa2)  /* same, negated product */
        TEST_FP_D(174, 0, 0x3970000000000000, 0x3ff0000000000001, 0x3ff0000000000001, 0x3ff0000000000002, fmsub.d fa3, fa0, fa1, fa2, rtz)  /* same via fmsub */
        TEST_FP_D(175, 0, 0xb970000000000000, 0x3ff0000000000001, 0x3ff0000000000001, 0xbff0000000000002, fnmadd.d fa3, fa0, fa1, fa2, rdn)  /* fnmadd: -residual */
        TEST_FP_D(176, 0, 0x0000000000000000, 0x3ff0000000000000, 0x3ff0000000000000, 0xbff0000000000000, fmadd.d fa3, fa0, fa1, fa2)  /* 1*1-1 = +0 */
        TEST_FP_D(177, 0, 0x8000000000000000, 0x3ff0000000000000, 0x3ff0000000000000, 0xbff0000000000000, fmadd.d fa3, fa0, fa1, fa2, rdn)  /* 1*1-1 = -0 in rdn */
        TEST_FP_D(178, 0, 0x8000000000000000, 0x0000000000000000, 0x3ff0000000000000, 0x0000000000000000, fnmadd.d fa3, fa0, fa1, fa2)  /* -(0*1)-0 = -0 */
        TEST_FP_D(179, 16, 0x7ff8000000000000, 0x7ff0000000000000, 0x0000000000000000, 0x3ff0000000000000, fmadd.d fa3, fa0, fa1, fa2)  /* inf*0+1 -> NV */
        TEST_FP_D(180, 16, 0x7ff8000000000000, 0x7ff0000000000000, 0x0000000000000000, 0x7ff8000000000000, fmadd.d fa3, fa0, fa1, fa2)  /* inf*0+qNaN: still NV -> NV */
        TEST_FP_D(181, 16, 0x7ff8000000000000, 0x7ff0000000000000, 0x3ff0000000000000, 0xfff0000000000000, fmadd.d fa3, fa0, fa1, fa2)  /* inf*1-inf -> NV */
        TEST_FP_D(182, 16, 0x7ff8000000000000, 0x3ff0000000000000, 0x3ff0000000000000, 0x7ff0000000000001, fmadd.d fa3, fa0, fa1, fa2)  /* sNaN addend -> NV */
        TEST_FP_D(183, 0, 0x7ff8000000000000, 0x7ff8000000000000, 0x3ff0000000000000, 0x3ff0000000000000, fmadd.d fa3, fa0, fa1, fa2)  /* qNaN multiplicand */
        TEST_FP_D(184, 0, 0x7fefffffffffffff, 0x7fefffffffffffff, 0x4000000000000000, 0xffefffffffffffff, fmadd.d fa3, fa0, fa1, fa2)  /* no intermediate overflow */
        TEST_FP_D(185, 0, 0xbc90000000000000, 0x4008000000000000, 0x3fd5555555555555, 0xbff0000000000000, fmadd.d fa3, fa0, fa1, fa2)  /* 3*round(1/3)-1 */
        TEST_FP_D(186, 1, 0x3ff0000000000000, 0x3ff0000000000000, 0x3ca0000000000000, 0x3ff0000000000000, fmadd.d fa3, fa0, fa1, fa2, rne)  /* 1 + half ulp via fma, rne -> NX */
        TEST_FP_D(187, 1, 0x3ff0000000000000, 0x3ff0000000000000, 0x3ca0000000000000, 0x3ff0000000000000, fmadd.d fa3, fa0, fa1, fa2, rtz)  /* 1 + half ulp via fma, rtz -> NX */
        TEST_FP_D(188, 1, 0x3ff0000000000000, 0x3ff0000000000000, 0x3ca0000000000000, 0x3ff0000000000000, fmadd.d fa3, fa0, fa1, fa2, rdn)  /* 1 + half ulp via fma, rdn -> NX */
        TEST_FP_D(189, 1, 0x3ff0000000000001, 0x3ff0000000000000, 0x3ca0000000000000, 0x3ff0000000000000, fmadd.d fa3, fa0, fa1, fa2, rup)  /* 1 + half ulp via fma, rup -> NX */
        TEST_FP_D(190, 1, 0x3ff0000000000001, 0x3ff0000000000000, 0x3ca0000000000000, 0x3ff0000000000000, fmadd.d fa3, fa0, fa1, fa2, rmm)  /* 1 + half ulp via fma, rmm -> NX */
TEST_END
