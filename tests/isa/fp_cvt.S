/* fp_cvt: conversions between floating point and integers and between
 * single and double: rounding in every mode, saturation of out-of-range
 * values, NaN and infinities (NV), sign extension of 32-bit results on RV64,
 * use of the low 32 bits of integer sources for .w/.wu, canonical NaNs,
 * overflow and underflow (tininess after rounding) in fcvt.s.d. */
#include "test.h"

/* fa0 = double a; fcvt to single in fa3. */
#define TEST_D_TO_S(n, flags, res, a, insn...)                            \
        CASE(n); LOAD_D(fa0, a);                                          \
        fsflags zero; insn; CHECK_FLAGS(flags); CHECK_S(fa3, res)
/* fa0 = single a; fcvt to double in fa3. */
#define TEST_S_TO_D(n, flags, res, a, insn...)                            \
        CASE(n); LOAD_S(fa0, a);                                          \
        fsflags zero; insn; CHECK_FLAGS(flags); CHECK_D(fa3, res)

TEST_BEGIN
        FP_ENABLE
        /* ==== single to integer ==== */
        TEST_FP_INT_S(1, 1, 0x0000000000000002, 0x40200000, 0, fcvt.w.s a0, fa0, rne)  /* 2.5 rne -> NX */
        TEST_FP_INT_S(2, 1, 0x0000000000000002, 0x40200000, 0, fcvt.w.s a0, fa0, rtz)  /* 2.5 rtz -> NX */
        TEST_FP_INT_S(3, 1, 0x0000000000000002, 0x40200000, 0, fcvt.w.s a0, fa0, rdn)  /* 2.5 rdn -> NX */
        TEST_FP_INT_S(4, 1, 0x0000000000000003, 0x40200000, 0, fcvt.w.s a0, fa0, rup)  /* 2.5 rup -> NX */
        TEST_FP_INT_S(5, 1, 0x0000000000000003, 0x40200000, 0, fcvt.w.s a0, fa0, rmm)  /* 2.5 rmm -> NX */
        TEST_FP_INT_S(6, 1, 0xfffffffffffffffe, 0xc0200000, 0, fcvt.w.s a0, fa0, rne)  /* -2.5 rne -> NX */
        TEST_FP_INT_S(7, 1, 0xfffffffffffffffe, 0xc0200000, 0, fcvt.w.s a0, fa0, rtz)  /* -2.5 rtz -> NX */
        TEST_FP_INT_S(8, 1, 0xfffffffffffffffd, 0xc0200000, 0, fcvt.w.s a0, fa0, rdn)  /* -2.5 rdn -> NX */
        TEST_FP_INT_S(9, 1, 0xfffffffffffffffe, 0xc0200000, 0, fcvt.w.s a0, fa0, rup)  /* -2.5 rup -> NX */
        TEST_FP_INT_S(10, 1, 0xfffffffffffffffd, 0xc0200000, 0, fcvt.w.s a0, fa0, rmm)  /* -2.5 rmm -> NX */
        TEST_FP_INT_S(11, 1, 0xfffffffffffffffe, 0xbfc00000, 0, fcvt.w.s a0, fa0, rne)  /* -1.5 rne: -2 -> NX */
        TEST_FP_INT_S(12, 1, 0x0000000000000000, 0x3f000000, 0, fcvt.w.s a0, fa0, rne)  /* 0.5 rne: 0 -> NX */
        TEST_FP_INT_S(13, 1, 0x0000000000000000, 0xbf000000, 0, fcvt.w.s a0, fa0, rne)  /* -0.5 rne: 0 -> NX */
        TEST_FP_INT_S(14, 0, 0xffffffffffffffff, 0xbf800000, 0, fcvt.w.s a0, fa0)  /* -1: sign-extended */
        TEST_FP_INT_S(15, 0, 0x000000007fffff80, 0x4effffff, 0, fcvt.w.s a0, fa0)  /* largest in range */
        TEST_FP_INT_S(16, 0, 0xffffffff80000000, 0xcf000000, 0, fcvt.w.s a0, fa0)  /* INT32_MIN exact */
        TEST_FP_INT_S(17, 16, 0x000000007fffffff, 0x4f32d05e, 0, fcvt.w.s a0, fa0)  /* too large: saturates -> NV */
        TEST_FP_INT_S(18, 16, 0xffffffff80000000, 0xcf32d05e, 0, fcvt.w.s a0, fa0)  /* too small: saturates -> NV */
        TEST_FP_INT_S(19, 16, 0x000000007fffffff, 0x7fc00000, 0, fcvt.w.s a0, fa0)  /* NaN: max -> NV */
        TEST_FP_INT_S(20, 16, 0x000000007fffffff, 0xff800001, 0, fcvt.w.s a0, fa0)  /* negative sNaN: max -> NV */
        TEST_FP_INT_S(21, 16, 0x000000007fffffff, 0x7f800000, 0, fcvt.w.s a0, fa0)  /* +inf: max -> NV */
        TEST_FP_INT_S(22, 16, 0xffffffff80000000, 0xff800000, 0, fcvt.w.s a0, fa0)  /* -inf: min -> NV */
        TEST_FP_INT_S(23, 0, 0xffffffffb2d05e00, 0x4f32d05e, 0, fcvt.wu.s a0, fa0)  /* 3e9 fits: sign-extended 32-bit result */
        TEST_FP_INT_S(24, 1, 0x0000000000000002, 0x3fc00000, 0, fcvt.wu.s a0, fa0, rup)  /* 1.5 rup -> NX */
        TEST_FP_INT_S(25, 1, 0x0000000000000000, 0xbecccccd, 0, fcvt.wu.s a0, fa0, rne)  /* -0.4 rounds to 0: only NX -> NX */
        TEST_FP_INT_S(26, 1, 0x0000000000000000, 0xbf19999a, 0, fcvt.wu.s a0, fa0, rtz)  /* -0.6 rtz: 0, only NX -> NX */
        TEST_FP_INT_S(27, 16, 0x0000000000000000, 0xbf19999a, 0, fcvt.wu.s a0, fa0, rne)  /* -0.6 rne: -1, invalid -> NV */
        TEST_FP_INT_S(28, 16, 0x0000000000000000, 0xbf800000, 0, fcvt.wu.s a0, fa0)  /* negative: 0 -> NV */
        TEST_FP_INT_S(29, 16, 0xffffffffffffffff, 0x4f802666, 0, fcvt.wu.s a0, fa0)  /* too large -> NV */
        TEST_FP_INT_S(30, 16, 0xffffffffffffffff, 0x7fc00000, 0, fcvt.wu.s a0, fa0)  /* NaN -> NV */
        TEST_FP_INT_S(31, 16, 0xffffffffffffffff, 0x7f800000, 0, fcvt.wu.s a0, fa0)  /* +inf -> NV */
        TEST_FP_INT_S(32, 16, 0x0000000000000000, 0xff800000, 0, fcvt.wu.s a0, fa0)  /* -inf: 0 -> NV */
        TEST_FP_INT_S(33, 0, 0x4000000000000000, 0x5e800000, 0, fcvt.l.s a0, fa0)  /* 2^62 */
        TEST_FP_INT_S(34, 0, 0x8000000000000000, 0xdf000000, 0, fcvt.l.s a0, fa0)  /* INT64_MIN exact */
        TEST_FP_INT_S(35, 16, 0x7fffffffffffffff, 0x5f000000, 0, fcvt.l.s a0, fa0)  /* 2^63: too large -> NV */
        TEST_FP_INT_S(36, 1, 0xfffffffffffffffe, 0xbfc00000, 0, fcvt.l.s a0, fa0, rdn)  /* -1.5 rdn -> NX */
        TEST_FP_INT_S(37, 1, 0xfffffffffffffffe, 0xbfc00000, 0, fcvt.l.s a0, fa0, rmm)  /* -1.5 rmm -> NX */
        TEST_FP_INT_S(38, 16, 0x7fffffffffffffff, 0x7fc00000, 0, fcvt.l.s a0, fa0)  /* NaN: max -> NV */
        TEST_FP_INT_S(39, 16, 0x7fffffffffffffff, 0x7f800000, 0, fcvt.l.s a0, fa0)  /* +inf: max -> NV */
        TEST_FP_INT_S(40, 16, 0x8000000000000000, 0xff800000, 0, fcvt.l.s a0, fa0)  /* -inf: min -> NV */
        TEST_FP_INT_S(41, 0, 0xf9ccd90000000000, 0x5f79ccd9, 0, fcvt.lu.s a0, fa0)  /* above 2^63 */
        TEST_FP_INT_S(42, 16, 0xffffffffffffffff, 0x5f800000, 0, fcvt.lu.s a0, fa0)  /* 2^64: too large -> NV */
        TEST_FP_INT_S(43, 1, 0x0000000000000000, 0xbf000000, 0, fcvt.lu.s a0, fa0, rtz)  /* -0.5 rtz: 0, only NX -> NX */
        TEST_FP_INT_S(44, 16, 0x0000000000000000, 0xc0000000, 0, fcvt.lu.s a0, fa0)  /* negative -> NV */
        TEST_FP_INT_S(45, 16, 0xffffffffffffffff, 0x7fc00000, 0, fcvt.lu.s a0, fa0)  /* NaN -> NV */
        TEST_FP_INT_S(46, 16, 0x0000000000000000, 0xff800000, 0, fcvt.lu.s a0, fa0)  /* -inf: 0 -> NV */
        TEST_FP_INT_S(47, 1, 0x000000000000007c, 0x42f78000, 0, fcvt.lu.s a0, fa0, rup)  /* 123.75 rup -> NX */
        /* ==== double to integer ==== */
        TEST_FP_INT_D(48, 1, 0x0000000000000002, 0x4004000000000000, 0, fcvt.w.d a0, fa0, rne)  /* 2.5 rne -> NX */
        TEST_FP_INT_D(49, 1, 0x0000000000000002, 0x4004000000000000, 0, fcvt.w.d a0, fa0, rtz)  /* 2.5 rtz -> NX */
        TEST_FP_INT_D(50, 1, 0x0000000000000002, 0x4004000000000000, 0, fcvt.w.d a0, fa0, rdn)  /* 2.5 rdn -> NX */
        TEST_FP_INT_D(51, 1, 0x0000000000000003, 0x4004000000000000, 0, fcvt.w.d a0, fa0, rup)  /* 2.5 rup -> NX */
        TEST_FP_INT_D(52, 1, 0x0000000000000003, 0x4004000000000000, 0, fcvt.w.d a0, fa0, rmm)  /* 2.5 rmm -> NX */
        TEST_FP_INT_D(53, 1, 0xfffffffffffffffe, 0xc004000000000000, 0, fcvt.w.d a0, fa0, rne)  /* -2.5 rne -> NX */
        TEST_FP_INT_D(54, 1, 0xfffffffffffffffe, 0xc004000000000000, 0, fcvt.w.d a0, fa0, rtz)  /* -2.5 rtz -> NX */
        TEST_FP_INT_D(55, 1, 0xfffffffffffffffd, 0xc004000000000000, 0, fcvt.w.d a0, fa0, rdn)  /* -2.5 rdn -> NX */
        TEST_FP_INT_D(56, 1, 0xfffffffffffffffe, 0xc004000000000000, 0, fcvt.w.d a0, fa0, rup)  /* -2.5 rup -> NX */
        TEST_FP_INT_D(57, 1, 0xfffffffffffffffd, 0xc004000000000000, 0, fcvt.w.d a0, fa0, rmm)  /* -2.5 rmm -> NX */
        TEST_FP_INT_D(58, 1, 0xfffffffffffffffe, 0xbff8000000000000, 0, fcvt.w.d a0, fa0, rne)  /* -1.5 rne: -2 -> NX */
        TEST_FP_INT_D(59, 1, 0x0000000000000000, 0x3fe0000000000000, 0, fcvt.w.d a0, fa0, rne)  /* 0.5 rne: 0 -> NX */
        TEST_FP_INT_D(60, 1, 0x0000000000000000, 0xbfe0000000000000, 0, fcvt.w.d a0, fa0, rne)  /* -0.5 rne: 0 -> NX */
        TEST_FP_INT_D(61, 0, 0xffffffffffffffff, 0xbff0000000000000, 0, fcvt.w.d a0, fa0)  /* -1: sign-extended */
        TEST_FP_INT_D(62, 0, 0x000000007fffffff, 0x41dfffffffc00000, 0, fcvt.w.d a0, fa0)  /* largest in range */
        TEST_FP_INT_D(63, 0, 0xffffffff80000000, 0xc1e0000000000000, 0, fcvt.w.d a0, fa0)  /* INT32_MIN exact */
        TEST_FP_INT_D(64, 1, 0x000000007fffffff, 0x41dfffffffe00000, 0, fcvt.w.d a0, fa0, rtz)  /* 2^31-0.5 rtz: in range -> NX */
        TEST_FP_INT_D(65, 16, 0x000000007fffffff, 0x41dfffffffe00000, 0, fcvt.w.d a0, fa0, rne)  /* 2^31-0.5 rne: rounds out of range -> NV */
        TEST_FP_INT_D(66, 1, 0xffffffff80000000, 0xc1e0000000100000, 0, fcvt.w.d a0, fa0, rtz)  /* -2^31-0.5 rtz: in range -> NX */
        TEST_FP_INT_D(67, 16, 0xffffffff80000000, 0xc1e0000000100000, 0, fcvt.w.d a0, fa0, rdn)  /* -2^31-0.5 rdn: out of range -> NV */
        TEST_FP_INT_D(68, 16, 0x000000007fffffff, 0x41e65a0bc0000000, 0, fcvt.w.d a0, fa0)  /* too large: saturates -> NV */
        TEST_FP_INT_D(69, 16, 0xffffffff80000000, 0xc1e65a0bc0000000, 0, fcvt.w.d a0, fa0)  /* too small: saturates -> NV */
        TEST_FP_INT_D(70, 16, 0x000000007fffffff, 0x7ff8000000000000, 0, fcvt.w.d a0, fa0)  /* NaN: max -> NV */
        TEST_FP_INT_D(71, 16, 0x000000007fffffff, 0xfff0000000000001, 0, fcvt.w.d a0, fa0)  /* negative sNaN: max -> NV */
        TEST_FP_INT_D(72, 16, 0x000000007fffffff, 0x7ff0000000000000, 0, fcvt.w.d a0, fa0)  /* +inf: max -> NV */
        TEST_FP_INT_D(73, 16, 0xffffffff80000000, 0xfff0000000000000, 0, fcvt.w.d a0, fa0)  /* -inf: min -> NV */
        TEST_FP_INT_D(74, 0, 0xffffffffb2d05e00, 0x41e65a0bc0000000, 0, fcvt.wu.d a0, fa0)  /* 3e9 fits: sign-extended 32-bit result */
        TEST_FP_INT_D(75, 1, 0x0000000000000002, 0x3ff8000000000000, 0, fcvt.wu.d a0, fa0, rup)  /* 1.5 rup -> NX */
        TEST_FP_INT_D(76, 1, 0x0000000000000000, 0xbfd999999999999a, 0, fcvt.wu.d a0, fa0, rne)  /* -0.4 rounds to 0: only NX -> NX */
        TEST_FP_INT_D(77, 1, 0x0000000000000000, 0xbfe3333333333333, 0, fcvt.wu.d a0, fa0, rtz)  /* -0.6 rtz: 0, only NX -> NX */
        TEST_FP_INT_D(78, 16, 0x0000000000000000, 0xbfe3333333333333, 0, fcvt.wu.d a0, fa0, rne)  /* -0.6 rne: -1, invalid -> NV */
        TEST_FP_INT_D(79, 16, 0x0000000000000000, 0xbff0000000000000, 0, fcvt.wu.d a0, fa0)  /* negative: 0 -> NV */
        TEST_FP_INT_D(80, 16, 0xffffffffffffffff, 0x41f004ccb0000000, 0, fcvt.wu.d a0, fa0)  /* too large -> NV */
        TEST_FP_INT_D(81, 16, 0xffffffffffffffff, 0x7ff8000000000000, 0, fcvt.wu.d a0, fa0)  /* NaN -> NV */
        TEST_FP_INT_D(82, 16, 0xffffffffffffffff, 0x7ff0000000000000, 0, fcvt.wu.d a0, fa0)  /* +inf -> NV */
        TEST_FP_INT_D(83, 16, 0x0000000000000000, 0xfff0000000000000, 0, fcvt.wu.d a0, fa0)  /* -inf: 0 -> NV */
        TEST_FP_INT_D(84, 0, 0x4000000000000000, 0x43d0000000000000, 0, fcvt.l.d a0, fa0)  /* 2^62 */
        TEST_FP_INT_D(85, 0, 0x8000000000000000, 0xc3e0000000000000, 0, fcvt.l.d a0, fa0)  /* INT64_MIN exact */
        TEST_FP_INT_D(86, 16, 0x7fffffffffffffff, 0x43e0000000000000, 0, fcvt.l.d a0, fa0)  /* 2^63: too large -> NV */
        TEST_FP_INT_D(87, 1, 0xfffffffffffffffe, 0xbff8000000000000, 0, fcvt.l.d a0, fa0, rdn)  /* -1.5 rdn -> NX */
        TEST_FP_INT_D(88, 1, 0xfffffffffffffffe, 0xbff8000000000000, 0, fcvt.l.d a0, fa0, rmm)  /* -1.5 rmm -> NX */
        TEST_FP_INT_D(89, 16, 0x7fffffffffffffff, 0x7ff8000000000000, 0, fcvt.l.d a0, fa0)  /* NaN: max -> NV */
        TEST_FP_INT_D(90, 16, 0x7fffffffffffffff, 0x7ff0000000000000, 0, fcvt.l.d a0, fa0)  /* +inf: max -> NV */
        TEST_FP_INT_D(91, 16, 0x8000000000000000, 0xfff0000000000000, 0, fcvt.l.d a0, fa0)  /* -inf: min -> NV */
        TEST_FP_INT_D(92, 0, 0xf9ccd8a1c5080000, 0x43ef399b1438a100, 0, fcvt.lu.d a0, fa0)  /* above 2^63 */
        TEST_FP_INT_D(93, 16, 0xffffffffffffffff, 0x43f0000000000000, 0, fcvt.lu.d a0, fa0)  /* 2^64: too large -> NV */
        TEST_FP_INT_D(94, 1, 0x0000000000000000, 0xbfe0000000000000, 0, fcvt.lu.d a0, fa0, rtz)  /* -0.5 rtz: 0, only NX -> NX */
        TEST_FP_INT_D(95, 16, 0x0000000000000000, 0xc000000000000000, 0, fcvt.lu.d a0, fa0)  /* negative -> NV */
        TEST_FP_INT_D(96, 16, 0xffffffffffffffff, 0x7ff8000000000000, 0, fcvt.lu.d a0, fa0)  /* NaN -> NV */
        TEST_FP_INT_D(97, 16, 0x0000000000000000, 0xfff0000000000000, 0, fcvt.lu.d a0, fa0)  /* -inf: 0 -> NV */
        TEST_FP_INT_D(98, 1, 0x000000000000007c, 0x405ef00000000000, 0, fcvt.lu.d a0, fa0, rup)  /* 123.75 rup -> NX */
        /* ==== integer to single ==== */
        TEST_INT_FP_S(99, 0, 0x00000000, 0x0000000000000000, fcvt.s.w fa3, a0)  /* 0 = +0 */
        TEST_INT_FP_S(100, 0, 0xbf800000, 0xffffffffffffffff, fcvt.s.w fa3, a0)  /* -1 */
        TEST_INT_FP_S(101, 0, 0xbf800000, 0x00000001ffffffff, fcvt.s.w fa3, a0)  /* upper bits ignored: -1 */
        TEST_INT_FP_S(102, 0, 0xcf000000, 0xffffffff80000000, fcvt.s.w fa3, a0)  /* INT32_MIN */
        TEST_INT_FP_S(103, 1, 0x4f800000, 0x00000000ffffffff, fcvt.s.wu fa3, a0)  /* UINT32_MAX -> NX */
        TEST_INT_FP_S(104, 0, 0x3f800000, 0xffffffff00000001, fcvt.s.wu fa3, a0)  /* upper bits ignored: 1 */
        TEST_INT_FP_S(105, 1, 0x5f000000, 0x7fffffffffffffff, fcvt.s.l fa3, a0)  /* INT64_MAX -> NX */
        TEST_INT_FP_S(106, 0, 0xdf000000, 0x8000000000000000, fcvt.s.l fa3, a0)  /* INT64_MIN exact */
        TEST_INT_FP_S(107, 1, 0x5f800000, 0xffffffffffffffff, fcvt.s.lu fa3, a0)  /* UINT64_MAX -> NX */
        TEST_INT_FP_S(108, 1, 0x5f7fffff, 0xffffffffffffffff, fcvt.s.lu fa3, a0, rtz)  /* UINT64_MAX rtz -> NX */
        TEST_INT_FP_S(109, 1, 0x4b800000, 0x0000000001000001, fcvt.s.w fa3, a0, rne)  /* 2^24+1 rne -> NX */
        TEST_INT_FP_S(110, 1, 0x4b800000, 0x0000000001000001, fcvt.s.w fa3, a0, rtz)  /* 2^24+1 rtz -> NX */
        TEST_INT_FP_S(111, 1, 0x4b800000, 0x0000000001000001, fcvt.s.w fa3, a0, rdn)  /* 2^24+1 rdn -> NX */
        TEST_INT_FP_S(112, 1, 0x4b800001, 0x0000000001000001, fcvt.s.w fa3, a0, rup)  /* 2^24+1 rup -> NX */
        TEST_INT_FP_S(113, 1, 0x4b800001, 0x0000000001000001, fcvt.s.w fa3, a0, rmm)  /* 2^24+1 rmm -> NX */
        TEST_INT_FP_S(114, 1, 0xcb800001, 0xfffffffffeffffff, fcvt.s.w fa3, a0, rdn)  /* -(2^24+1) rdn -> NX */
        TEST_INT_FP_S(115, 1, 0xcb800000, 0xfffffffffeffffff, fcvt.s.w fa3, a0, rup)  /* -(2^24+1) rup -> NX */
        TEST_INT_FP_S(116, 1, 0x4b800002, 0x0000000001000003, fcvt.s.w fa3, a0, rne)  /* 2^24+3 rne: tie to even, up -> NX */
        TEST_INT_FP_S(117, 1, 0x4f000000, 0x000000007fffffff, fcvt.s.w fa3, a0)  /* INT32_MAX -> NX */
        TEST_INT_FP_S(118, 1, 0x4ceb79a2, 0x00000000075bcd15, fcvt.s.l fa3, a0, rtz)  /* 123456789 rtz -> NX */
        /* ==== integer to double ==== */
        TEST_INT_FP_D(119, 0, 0x0000000000000000, 0x0000000000000000, fcvt.d.w fa3, a0)  /* 0 = +0 */
        TEST_INT_FP_D(120, 0, 0xbff0000000000000, 0xffffffffffffffff, fcvt.d.w fa3, a0)  /* -1 */
        TEST_INT_FP_D(121, 0, 0xbff0000000000000, 0x00000001ffffffff, fcvt.d.w fa3, a0)  /* upper bits ignored: -1 */
        TEST_INT_FP_D(122, 0, 0xc1e0000000000000, 0xffffffff80000000, fcvt.d.w fa3, a0)  /* INT32_MIN */
        TEST_INT_FP_D(123, 0, 0x41efffffffe00000, 0x00000000ffffffff, fcvt.d.wu fa3, a0)  /* UINT32_MAX */
        TEST_INT_FP_D(124, 0, 0x3ff0000000000000, 0xffffffff00000001, fcvt.d.wu fa3, a0)  /* upper bits ignored: 1 */
        TEST_INT_FP_D(125, 1, 0x43e0000000000000, 0x7fffffffffffffff, fcvt.d.l fa3, a0)  /* INT64_MAX -> NX */
        TEST_INT_FP_D(126, 0, 0xc3e0000000000000, 0x8000000000000000, fcvt.d.l fa3, a0)  /* INT64_MIN exact */
        TEST_INT_FP_D(127, 1, 0x43f0000000000000, 0xffffffffffffffff, fcvt.d.lu fa3, a0)  /* UINT64_MAX -> NX */
        TEST_INT_FP_D(128, 1, 0x43efffffffffffff, 0xffffffffffffffff, fcvt.d.lu fa3, a0, rtz)  /* UINT64_MAX rtz -> NX */
        TEST_INT_FP_D(129, 0, 0x41dfffffffc00000, 0x000000007fffffff, fcvt.d.w fa3, a0)  /* INT32_MAX exact */
        TEST_INT_FP_D(130, 1, 0x4340000000000000, 0x0020000000000001, fcvt.d.l fa3, a0, rne)  /* 2^53+1 rne -> NX */
        TEST_INT_FP_D(131, 1, 0x4340000000000000, 0x0020000000000001, fcvt.d.l fa3, a0, rtz)  /* 2^53+1 rtz -> NX */
        TEST_INT_FP_D(132, 1, 0x4340000000000000, 0x0020000000000001, fcvt.d.l fa3, a0, rdn)  /* 2^53+1 rdn -> NX */
        TEST_INT_FP_D(133, 1, 0x4340000000000001, 0x0020000000000001, fcvt.d.l fa3, a0, rup)  /* 2^53+1 rup -> NX */
        TEST_INT_FP_D(134, 1, 0x4340000000000001, 0x0020000000000001, fcvt.d.l fa3, a0, rmm)  /* 2^53+1 rmm -> NX */
        TEST_INT_FP_D(135, 1, 0xc340000000000001, 0xffdfffffffffffff, fcvt.d.l fa3, a0, rdn)  /* -(2^53+1) rdn -> NX */
        TEST_INT_FP_D(136, 1, 0x4340000000000002, 0x0020000000000003, fcvt.d.lu fa3, a0, rne)  /* 2^53+3 rne: tie to even, up -> NX */
        TEST_INT_FP_D(137, 0, 0x43e0000000000000, 0x8000000000000000, fcvt.d.lu fa3, a0)  /* 2^63 */
        /* ==== double to single ==== */
        TEST_D_TO_S(138, 1, 0x3eaaaaab, 0x3fd5555555555555, fcvt.s.d fa3, fa0, rne)  /* 1/3 rne -> NX */
        TEST_D_TO_S(139, 1, 0x3eaaaaaa, 0x3fd5555555555555, fcvt.s.d fa3, fa0, rtz)  /* 1/3 rtz -> NX */
        TEST_D_TO_S(140, 1, 0xbeaaaaab, 0xbfd5555555555555, fcvt.s.d fa3, fa0, rdn)  /* -1/3 rdn -> NX */
        TEST_D_TO_S(141, 1, 0xbeaaaaaa, 0xbfd5555555555555, fcvt.s.d fa3, fa0, rup)  /* -1/3 rup -> NX */
        TEST_D_TO_S(142, 1, 0x3dcccccd, 0x3fb999999999999a, fcvt.s.d fa3, fa0, rmm)  /* 0.1 rmm -> NX */
        TEST_D_TO_S(143, 5, 0x7f800000, 0x7e37e43c8800759c, fcvt.s.d fa3, fa0, rne)  /* overflow -> OF|NX */
        TEST_D_TO_S(144, 5, 0x7f7fffff, 0x7e37e43c8800759c, fcvt.s.d fa3, fa0, rtz)  /* overflow rtz: max finite -> OF|NX */
        TEST_D_TO_S(145, 5, 0xff7fffff, 0xfe37e43c8800759c, fcvt.s.d fa3, fa0, rup)  /* negative overflow rup: -max finite -> OF|NX */
        TEST_D_TO_S(146, 5, 0x7f800000, 0x47effffff0000000, fcvt.s.d fa3, fa0, rne)  /* just above max: rounds to max finite -> OF|NX */
        TEST_D_TO_S(147, 3, 0x00000000, 0x01a56e1fc2f8f359, fcvt.s.d fa3, fa0, rne)  /* underflow to 0 -> UF|NX */
        TEST_D_TO_S(148, 3, 0x00000001, 0x01a56e1fc2f8f359, fcvt.s.d fa3, fa0, rup)  /* underflow rup: min subnormal -> UF|NX */
        TEST_D_TO_S(149, 3, 0x80000000, 0x81a56e1fc2f8f359, fcvt.s.d fa3, fa0, rne)  /* underflow to -0 -> UF|NX */
        TEST_D_TO_S(150, 0, 0x00000001, 0x36a0000000000000, fcvt.s.d fa3, fa0, rne)  /* min subnormal exact */
        TEST_D_TO_S(151, 3, 0x00000000, 0x3690000000000000, fcvt.s.d fa3, fa0, rne)  /* half min subnormal: tie to 0 -> UF|NX */
        TEST_D_TO_S(152, 3, 0x00000001, 0x3698000000000000, fcvt.s.d fa3, fa0, rne)  /* 0.75 min subnormal: up -> UF|NX */
        TEST_D_TO_S(153, 1, 0x00800000, 0x380ffffff0000000, fcvt.s.d fa3, fa0, rne)  /* rounds up to min normal: tininess after rounding, no UF -> NX */
        TEST_D_TO_S(154, 3, 0x007fffff, 0x380ffffff0000000, fcvt.s.d fa3, fa0, rtz)  /* same, rtz: subnormal, UF -> UF|NX */
        TEST_D_TO_S(155, 3, 0x00800000, 0x380fffffe0000000, fcvt.s.d fa3, fa0, rne)  /* rounds to min normal but tiny after rounding: UF -> UF|NX */
        TEST_D_TO_S(156, 0, 0x80000000, 0x8000000000000000, fcvt.s.d fa3, fa0)  /* -0 */
        TEST_D_TO_S(157, 0, 0xff800000, 0xfff0000000000000, fcvt.s.d fa3, fa0)  /* -inf */
        TEST_D_TO_S(158, 0, 0x7fc00000, 0x7ff8000000012345, fcvt.s.d fa3, fa0)  /* qNaN with payload: canonical, no flags */
        TEST_D_TO_S(159, 16, 0x7fc00000, 0x7ff0000000000001, fcvt.s.d fa3, fa0)  /* sNaN -> NV */
        /* ==== single to double ==== */
        TEST_S_TO_D(160, 0, 0x3fb99999a0000000, 0x3dcccccd, fcvt.d.s fa3, fa0)  /* 0.1f exact */
        TEST_S_TO_D(161, 0, 0x36a0000000000000, 0x00000001, fcvt.d.s fa3, fa0)  /* min subnormal: normal double */
        TEST_S_TO_D(162, 0, 0xb80fffffc0000000, 0x807fffff, fcvt.d.s fa3, fa0)  /* negative subnormal */
        TEST_S_TO_D(163, 0, 0xfff0000000000000, 0xff800000, fcvt.d.s fa3, fa0)  /* -inf */
        TEST_S_TO_D(164, 0, 0x8000000000000000, 0x80000000, fcvt.d.s fa3, fa0)  /* -0 */
        TEST_S_TO_D(165, 0, 0x7ff8000000000000, 0x7fc00123, fcvt.d.s fa3, fa0)  /* qNaN with payload: canonical */
        TEST_S_TO_D(166, 16, 0x7ff8000000000000, 0x7f800001, fcvt.d.s fa3, fa0)  /* sNaN -> NV */
        TEST_S_TO_D(167, 0, 0x47efffffe0000000, 0x7f7fffff, fcvt.d.s fa3, fa0)  /* max single */
TEST_END
