//! The F and D extensions, bit-exact on any host.
//!
//! Arithmetic goes through the `softfp` crate, which computes in integers: the host's
//! floating-point unit and its rounding state are never used, so results and flags are the same
//! on every host. softfp reads the rounding mode and reports exception flags through two
//! process-wide callbacks; ours use a thread-local cell, which is set before and read after each
//! operation. NaN results are the canonical NaN; single-precision values are NaN-boxed.

use std::cell::Cell;
use std::cmp::Ordering;
use std::sync::Once;

use softfp::{Class, ExceptionFlags, RoundingMode, F32, F64};

use crate::csr::MSTATUS_FS;
use crate::{cause, Bus, Hart, Trap};

thread_local! {
    static RM: Cell<RoundingMode> = const { Cell::new(RoundingMode::TiesToEven) };
    static FLAGS: Cell<u32> = const { Cell::new(0) };
}

/// fflags' inexact bit.
const FFLAG_NX: u64 = 1;

fn get_rm() -> RoundingMode {
    RM.with(|c| c.get())
}
fn set_flags(f: ExceptionFlags) {
    FLAGS.with(|c| c.set(c.get() | f.bits()));
}

/// Register the softfp callbacks (idempotent).
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        softfp::register_get_rounding_mode(get_rm);
        softfp::register_set_exception_flags(set_flags);
    });
}

const BOX: u64 = 0xffff_ffff_0000_0000;
const CANON32: u32 = 0x7fc0_0000;
const CANON64: u64 = 0x7ff8_0000_0000_0000;

/// The single-precision value in a register, or the canonical NaN if it is not NaN-boxed.
#[inline]
fn unbox(v: u64) -> u32 {
    if v & BOX == BOX {
        v as u32
    } else {
        CANON32
    }
}

fn class_mask(c: Class) -> u64 {
    1 << (c as u32)
}

/// A floating-point format: the operations ftvm needs, implemented once for both widths.
trait Format: Copy {
    type Soft: Copy;
    fn soft(bits: u64) -> Self::Soft;
    fn bits(s: Self::Soft) -> u64;
    fn to_reg(bits: u64) -> u64;
    fn from_reg(r: u64) -> u64;
    fn canonical() -> u64;
    fn add(a: Self::Soft, b: Self::Soft) -> Self::Soft;
    fn sub(a: Self::Soft, b: Self::Soft) -> Self::Soft;
    fn mul(a: Self::Soft, b: Self::Soft) -> Self::Soft;
    fn div(a: Self::Soft, b: Self::Soft) -> Self::Soft;
    fn sqrt(a: Self::Soft) -> Self::Soft;
    fn fma(a: Self::Soft, b: Self::Soft, c: Self::Soft) -> Self::Soft;
    fn neg(a: Self::Soft) -> Self::Soft;
    fn is_nan(a: Self::Soft) -> bool;
    fn is_snan(a: Self::Soft) -> bool;
    fn class(a: Self::Soft) -> Class;
    fn cmp(a: Self::Soft, b: Self::Soft) -> Option<Ordering>;
    fn sign_bit() -> u64;
    /// Width of the exponent and of the stored significand.
    const EXP_BITS: u32;
    const MANT_BITS: u32;
    fn from_i32(v: u32) -> Self::Soft;
    fn from_u32(v: u32) -> Self::Soft;
    fn from_i64(v: u64) -> Self::Soft;
    fn from_u64(v: u64) -> Self::Soft;
    /// The host FPU's result of `op` (0 add, 1 sub, 2 mul, 3 div, 0x0b sqrt of `a`) on the
    /// formats' bits, when it is certainly the same as softfloat's under round-to-nearest-even
    /// with the inexact flag already set (QEMU's hardfloat gate): inputs zero or normal, no
    /// division by zero or square root of a negative or a zero, and a result that is normal and
    /// above the smallest normal (neither tiny nor infinite nor NaN), so no flag but inexact
    /// could be raised. `None`: ask softfloat.
    fn hard(op: u32, a: u64, b: u64) -> Option<u64>;
}

#[derive(Clone, Copy)]
struct S;
#[derive(Clone, Copy)]
struct D;

macro_rules! format_impl {
    ($t:ty, $soft:ty, $holder:ty, $host:ty, $sign:expr, $to_reg:expr, $from_reg:expr, $canon:expr, $exp:expr, $mant:expr) => {
        impl Format for $t {
            type Soft = $soft;
            fn hard(op: u32, a: u64, b: u64) -> Option<u64> {
                let x = <$host>::from_bits(a as $holder);
                let y = <$host>::from_bits(b as $holder);
                let plain = |v: $host| v.is_normal() || v == 0.0;
                let r = match op {
                    0 if plain(x) && plain(y) => x + y,
                    1 if plain(x) && plain(y) => x - y,
                    2 if plain(x) && plain(y) => x * y,
                    3 if plain(x) && y.is_normal() => x / y,
                    0x0b if x.is_normal() && x > 0.0 => x.sqrt(),
                    _ => return None,
                };
                (r.is_finite() && r.abs() > <$host>::MIN_POSITIVE).then(|| r.to_bits() as u64)
            }
            fn soft(bits: u64) -> $soft {
                <$soft>::new(bits as $holder)
            }
            fn bits(s: $soft) -> u64 {
                s.0 as u64
            }
            fn to_reg(bits: u64) -> u64 {
                $to_reg(bits)
            }
            fn from_reg(r: u64) -> u64 {
                $from_reg(r)
            }
            fn canonical() -> u64 {
                $canon
            }
            fn add(a: $soft, b: $soft) -> $soft {
                a + b
            }
            fn sub(a: $soft, b: $soft) -> $soft {
                a - b
            }
            fn mul(a: $soft, b: $soft) -> $soft {
                a * b
            }
            fn div(a: $soft, b: $soft) -> $soft {
                a / b
            }
            fn sqrt(a: $soft) -> $soft {
                a.square_root()
            }
            fn fma(a: $soft, b: $soft, c: $soft) -> $soft {
                <$soft>::fused_multiply_add(a, b, c)
            }
            fn neg(a: $soft) -> $soft {
                a.negate()
            }
            fn is_nan(a: $soft) -> bool {
                a.is_nan()
            }
            fn is_snan(a: $soft) -> bool {
                a.is_signaling()
            }
            fn class(a: $soft) -> Class {
                a.classify()
            }
            fn cmp(a: $soft, b: $soft) -> Option<Ordering> {
                <$soft>::compare_quiet(a, b)
            }
            fn sign_bit() -> u64 {
                $sign
            }
            const EXP_BITS: u32 = $exp;
            const MANT_BITS: u32 = $mant;
            fn from_i32(v: u32) -> $soft {
                <$soft>::convert_from_sint::<u32>(v)
            }
            fn from_u32(v: u32) -> $soft {
                <$soft>::convert_from_uint::<u32>(v)
            }
            fn from_i64(v: u64) -> $soft {
                <$soft>::convert_from_sint::<u64>(v)
            }
            fn from_u64(v: u64) -> $soft {
                <$soft>::convert_from_uint::<u64>(v)
            }
        }
    };
}

format_impl!(
    S,
    F32,
    u32,
    f32,
    1 << 31,
    |b: u64| (b & 0xffff_ffff) | BOX,
    |r: u64| unbox(r) as u64,
    CANON32 as u64,
    8,
    23
);
format_impl!(
    D,
    F64,
    u64,
    f64,
    1 << 63,
    |b: u64| b,
    |r: u64| r,
    CANON64,
    11,
    52
);

/// Convert a float (its bits) to an integer of `width` bits, as FCVT.{W,WU,L,LU} do: rounded
/// by `rm`; NaN and values out of range saturate and raise NV; inexact results raise NX.
/// (softfp's conversion wraps around for some out-of-range values, so ftvm has its own.)
fn float_to_int<F: Format>(bits: u64, rm: RoundingMode, signed: bool, width: u32) -> u64 {
    let mant_mask = (1u64 << F::MANT_BITS) - 1;
    let exp_max = (1u64 << F::EXP_BITS) - 1;
    let sign = bits >> (F::EXP_BITS + F::MANT_BITS) & 1 != 0;
    let exp = (bits >> F::MANT_BITS) & exp_max;
    let frac = bits & mant_mask;
    let umax: u128 = if width == 64 {
        u64::MAX as u128
    } else {
        (1u128 << width) - 1
    };
    let (max, min): (u128, u128) = if signed {
        ((umax >> 1), (umax >> 1) + 1) // largest magnitude positive, negative
    } else {
        (umax, 0)
    };
    let saturate = |neg: bool| -> u64 {
        set_flags(ExceptionFlags::INVALID_OPERATION);
        let v: u128 = if neg && !signed {
            0
        } else if neg {
            (1u128 << 64) - min // two's complement of -min in 64 bits
        } else {
            max
        };
        v as u64
    };
    if exp == exp_max {
        // NaN saturates to the largest positive value, infinities by their sign.
        return saturate(sign && frac == 0);
    }
    if exp == 0 && frac == 0 {
        return 0;
    }
    // value = m * 2^e exactly.
    let (m, e) = if exp == 0 {
        (
            frac as u128,
            1 - (exp_max as i64 >> 1) - F::MANT_BITS as i64,
        )
    } else {
        (
            (frac | (1 << F::MANT_BITS)) as u128,
            exp as i64 - (exp_max as i64 >> 1) - F::MANT_BITS as i64,
        )
    };
    let (int, rest, half, inexact) = if e >= 0 {
        if e > 70 {
            return saturate(sign);
        }
        (m << e, 0u128, 1u128, false)
    } else if -e >= 127 {
        (0u128, m, u128::MAX, true) // tiny: below one half in any case
    } else {
        let sh = (-e) as u32;
        let rest = m & ((1u128 << sh) - 1);
        (m >> sh, rest, 1u128 << (sh - 1), rest != 0)
    };
    let round_up = inexact
        && match rm {
            RoundingMode::TiesToEven => rest > half || (rest == half && int & 1 == 1),
            RoundingMode::TiesToAway => rest >= half,
            RoundingMode::TowardZero => false,
            RoundingMode::TowardNegative => sign,
            RoundingMode::TowardPositive => !sign,
        };
    let mag = int + round_up as u128;
    let limit = if sign { min } else { max };
    if mag > limit {
        return saturate(sign);
    }
    if inexact {
        set_flags(ExceptionFlags::INEXACT);
    }
    if sign {
        (mag as u64).wrapping_neg()
    } else {
        mag as u64
    }
}

/// Result of an FP instruction: where it goes.
enum Out {
    F(u64),
    X(u64),
}

impl Hart {
    /// Execute an F/D instruction (loads, stores, arithmetic, conversions, moves).
    #[inline(never)]
    pub(crate) fn exec_fp<B: Bus>(
        &mut self,
        bus: &mut B,
        insn: u32,
        raw: u64,
        x1: u64,
    ) -> Result<(), Trap> {
        let illegal = Trap::new(cause::ILLEGAL_INSN, raw);
        if self.csr.mstatus & MSTATUS_FS == 0 {
            return Err(illegal);
        }
        let rd = ((insn >> 7) & 31) as usize;
        let f3 = (insn >> 12) & 7;
        match insn & 0x7f {
            0x07 => {
                let a = x1.wrapping_add(((insn as i32) >> 20) as i64 as u64);
                let v = match f3 {
                    2 => self.load(bus, a, 4)? | BOX,
                    3 => self.load(bus, a, 8)?,
                    _ => return Err(illegal),
                };
                self.f[rd] = v;
                self.fs_dirty();
                return Ok(());
            }
            0x27 => {
                let imm = ((((insn as i32) >> 25) << 5) | ((insn >> 7) & 31) as i32) as i64 as u64;
                let a = x1.wrapping_add(imm);
                let v = self.f[((insn >> 20) & 31) as usize];
                match f3 {
                    2 => self.store(bus, a, 4, v)?,
                    3 => self.store(bus, a, 8, v)?,
                    _ => return Err(illegal),
                }
                return Ok(());
            }
            _ => {}
        }
        // Arithmetic: the format is in bits 25-26 (0: S, 1: D).
        let fmt = (insn >> 25) & 3;
        let rm = if f3 == 7 { self.csr.frm as u32 } else { f3 };
        let rm = RoundingMode::try_from(rm).map_err(|_| illegal)?;
        RM.with(|c| c.set(rm));
        FLAGS.with(|c| c.set(0));
        let out = match fmt {
            0 => self.fp_op::<S>(insn, x1),
            1 => self.fp_op::<D>(insn, x1),
            _ => None,
        };
        let Some(out) = out else {
            return Err(illegal);
        };
        self.csr.fflags |= FLAGS.with(|c| c.get()) as u64;
        match out {
            Out::F(v) => self.f[rd] = v,
            Out::X(v) => {
                if rd != 0 {
                    self.x[rd] = v
                }
            }
        }
        self.fs_dirty();
        Ok(())
    }

    /// One arithmetic instruction in format `F`; `None` is illegal.
    fn fp_op<F: Format>(&mut self, insn: u32, x1: u64) -> Option<Out> {
        let r1 = ((insn >> 15) & 31) as usize;
        let r2 = ((insn >> 20) & 31) as usize;
        let a = F::soft(F::from_reg(self.f[r1]));
        let b = F::soft(F::from_reg(self.f[r2]));
        let f3 = (insn >> 12) & 7;
        let ret = |s: F::Soft| Some(Out::F(F::to_reg(F::bits(s))));
        let op = insn & 0x7f;
        if op != 0x53 {
            let c = F::soft(F::from_reg(self.f[(insn >> 27) as usize]));
            let (a, c) = match op {
                0x43 => (a, c),
                0x47 => (a, F::neg(c)),
                0x4b => (F::neg(a), c),
                _ => (F::neg(a), F::neg(c)),
            };
            let r = F::fma(a, b, c);
            // An exact zero sum of a zero product and a zero addend: softfp gets the sign
            // wrong; IEEE 754 keeps a common sign, else +0 (-0 when rounding down).
            let s = F::sign_bit();
            let is_zero = |v: F::Soft| F::bits(v) & !s == 0;
            if (is_zero(a) || is_zero(b))
                && is_zero(c)
                && !(F::is_nan(a) || F::is_nan(b))
                && matches!(F::class(a), c if c != Class::NegativeInfinity && c != Class::PositiveInfinity)
                && matches!(F::class(b), c if c != Class::NegativeInfinity && c != Class::PositiveInfinity)
            {
                let psign = (F::bits(a) ^ F::bits(b)) & s != 0;
                let csign = F::bits(c) & s != 0;
                let neg = if psign == csign {
                    psign
                } else {
                    get_rm() == RoundingMode::TowardNegative
                };
                return Some(Out::F(F::to_reg(if neg { s } else { 0 })));
            }
            return ret(r);
        }
        let f7 = insn >> 27;
        // The host FPU where its result and flags are certainly softfloat's (see
        // `Format::hard`): round-to-nearest-even, inexact already set.
        if (f7 <= 3 || (f7 == 0x0b && r2 == 0))
            && self.csr.fflags & FFLAG_NX != 0
            && get_rm() == RoundingMode::TiesToEven
        {
            if let Some(r) = F::hard(f7, F::from_reg(self.f[r1]), F::from_reg(self.f[r2])) {
                return Some(Out::F(F::to_reg(r)));
            }
        }
        match f7 {
            0x00 => ret(F::add(a, b)),
            0x01 => ret(F::sub(a, b)),
            0x02 => ret(F::mul(a, b)),
            0x03 => ret(F::div(a, b)),
            0x0b if r2 == 0 => {
                // softfp raises DZ for a signalling NaN here: handle NaNs first.
                if F::is_nan(a) {
                    if F::is_snan(a) {
                        set_flags(ExceptionFlags::INVALID_OPERATION);
                    }
                    return Some(Out::F(F::to_reg(F::canonical())));
                }
                ret(F::sqrt(a))
            }
            0x04 => {
                let (ab, bb) = (F::bits(a), F::bits(b));
                let s = F::sign_bit();
                let sign = match f3 {
                    0 => bb & s,
                    1 => !bb & s,
                    2 => (ab ^ bb) & s,
                    _ => return None,
                };
                Some(Out::F(F::to_reg((ab & !s) | sign)))
            }
            0x05 => {
                if f3 > 1 {
                    return None;
                }
                if F::is_snan(a) || F::is_snan(b) {
                    set_flags(ExceptionFlags::INVALID_OPERATION);
                }
                let r = match (F::is_nan(a), F::is_nan(b)) {
                    (true, true) => return Some(Out::F(F::to_reg(F::canonical()))),
                    (true, false) => b,
                    (false, true) => a,
                    _ => {
                        let s = F::sign_bit();
                        let a_less = match F::cmp(a, b) {
                            Some(Ordering::Less) => true,
                            // -0 is less than +0.
                            Some(Ordering::Equal) => F::bits(a) & s != 0,
                            _ => false,
                        };
                        if (f3 == 0) == a_less {
                            a
                        } else {
                            b
                        }
                    }
                };
                ret(r)
            }
            0x14 => {
                let nan = F::is_nan(a) || F::is_nan(b);
                let signaling = F::is_snan(a) || F::is_snan(b);
                // FEQ is quiet; FLT and FLE signal on any NaN.
                if (f3 == 2 && signaling) || (f3 < 2 && nan) {
                    set_flags(ExceptionFlags::INVALID_OPERATION);
                }
                let c = F::cmp(a, b);
                let r = match f3 {
                    0 => matches!(c, Some(Ordering::Less | Ordering::Equal)),
                    1 => c == Some(Ordering::Less),
                    2 => c == Some(Ordering::Equal),
                    _ => return None,
                };
                Some(Out::X(r as u64))
            }
            0x1c if r2 == 0 && f3 == 1 => Some(Out::X(class_mask(F::class(a)))),
            0x1c if r2 == 0 && f3 == 0 => {
                // FMV.X.W moves the raw low bits, sign-extended, boxed or not.
                let v = self.f[r1];
                Some(Out::X(if F::sign_bit() == 1 << 31 {
                    v as u32 as i32 as i64 as u64
                } else {
                    v
                }))
            }
            0x1e if r2 == 0 && f3 == 0 => Some(Out::F(F::to_reg(x1))),
            0x18 => {
                let rm = get_rm();
                let bits = F::bits(a);
                let v = match r2 {
                    0 => float_to_int::<F>(bits, rm, true, 32) as i32 as i64 as u64,
                    1 => float_to_int::<F>(bits, rm, false, 32) as i32 as i64 as u64,
                    2 => float_to_int::<F>(bits, rm, true, 64),
                    3 => float_to_int::<F>(bits, rm, false, 64),
                    _ => return None,
                };
                Some(Out::X(v))
            }
            0x1a => ret(match r2 {
                0 => F::from_i32(x1 as u32),
                1 => F::from_u32(x1 as u32),
                2 => F::from_i64(x1),
                3 => F::from_u64(x1),
                _ => return None,
            }),
            0x08 => {
                // FCVT.S.D (fmt S, rs2 = 1) and FCVT.D.S (fmt D, rs2 = 0).
                if F::sign_bit() == 1 << 31 && r2 == 1 {
                    let d = F64::new(self.f[r1]);
                    let s: F32 = d.convert_format();
                    Some(Out::F(S::to_reg(s.0 as u64)))
                } else if F::sign_bit() == 1 << 63 && r2 == 0 {
                    let s = F32::new(unbox(self.f[r1]));
                    let d: F64 = s.convert_format();
                    Some(Out::F(d.0))
                } else {
                    None
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod hardfloat {
    use super::*;

    /// softfloat's result and flags for `op` under round-to-nearest-even.
    fn soft<F: Format>(op: u32, a: u64, b: u64) -> (u64, u32) {
        init();
        RM.with(|c| c.set(RoundingMode::TiesToEven));
        FLAGS.with(|c| c.set(0));
        let (x, y) = (F::soft(a), F::soft(b));
        let r = match op {
            0 => F::add(x, y),
            1 => F::sub(x, y),
            2 => F::mul(x, y),
            3 => F::div(x, y),
            _ => F::sqrt(x),
        };
        (F::bits(r), FLAGS.with(|c| c.get()))
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    /// Operands: random bits, and values built to sit at the edges (exponents near the
    /// smallest and largest normal, zeros, the smallest normal and its neighbours, the
    /// largest finite, subnormals, infinities, NaNs, results that cancel).
    fn operand(r: &mut Rng, exp_bits: u32, mant_bits: u32, other: u64) -> u64 {
        let bias = (1u64 << (exp_bits - 1)) - 1;
        let max_exp = (1u64 << exp_bits) - 1;
        let sign = (r.next() & 1) << (exp_bits + mant_bits);
        let mant = r.next() & ((1u64 << mant_bits) - 1);
        let exp = match r.next() % 10 {
            0 => return r.next() & ((1u64 << (exp_bits + mant_bits + 1)) - 1),
            1 => r.next() % 4, // zero, subnormal, the smallest normals
            2 => max_exp - 1 - r.next() % 3, // near overflow
            3 => bias / 2 + r.next() % 8, // products that underflow
            4 => bias + bias / 2 - r.next() % 8, // products that overflow
            5 => return sign | (max_exp << mant_bits) | ((r.next() % 2) * mant), // inf or NaN
            6 => return other ^ (r.next() % 4) ^ (r.next() & 1) << (exp_bits + mant_bits), // near the other
            7 => return sign,                                                              // zero
            _ => bias - 20 + r.next() % 40, // ordinary
        };
        sign | (exp << mant_bits) | mant
    }

    fn check<F: Format>(exp_bits: u32, mant_bits: u32, n: u32) {
        let mut r = Rng(0x0f7f_2026 ^ u64::from(mant_bits));
        for op in [0, 1, 2, 3, 0x0b] {
            let mut hard = 0u32;
            for _ in 0..n {
                let a = operand(&mut r, exp_bits, mant_bits, 0);
                let b = operand(&mut r, exp_bits, mant_bits, a);
                let Some(h) = F::hard(op, a, b) else { continue };
                hard += 1;
                let (s, flags) = soft::<F>(op, a, b);
                assert_eq!(
                    h, s,
                    "op {op:#x}: {a:#x}, {b:#x}: host {h:#x}, softfloat {s:#x}"
                );
                // Nothing but inexact, which the gate requires to be set already.
                assert_eq!(
                    flags & !ExceptionFlags::INEXACT.bits(),
                    0,
                    "op {op:#x}: {a:#x}, {b:#x}: flags {flags:#x}"
                );
            }
            // The gate lets most ordinary operations through: it is exercised.
            assert!(
                hard > n / 5,
                "op {op:#x}: only {hard} of {n} on the host FPU"
            );
        }
    }

    #[test]
    fn host_results_and_flags_equal_softfloat_single() {
        check::<S>(8, 23, 2_000_000);
    }

    #[test]
    fn host_results_and_flags_equal_softfloat_double() {
        check::<D>(11, 52, 2_000_000);
    }
}
