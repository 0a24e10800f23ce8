//! Fault injection: flip one chosen bit of a hart register, a CSR, a RAM word or a TLB entry
//! now, to model a soft error (N-modular redundancy tests: replicas that flip the same bit at
//! the same step count end in the same state).
//!
//! A [`Fault`] is written as a compact spec (see [`Fault::from_str`]) and applied with
//! [`Machine::inject`]. A flip is a pure function of the machine's state. A flip of
//! architectural state (a register, the PC, a CSR, RAM) changes [`Machine::digest`]; a TLB
//! flip changes no snapshot and no digest (TLBs are not machine state: they are rebuilt), so
//! it is reproducible only between replicas whose TLBs hold the same entries, that is which
//! run with the same engine since the same restore.

use std::fmt;
use std::str::FromStr;

use ftvm_cpu::{Bus, Csr, FlipError, DATA_TLB_ENTRIES};
use thiserror::Error;

use crate::{Machine, RAM_BASE};

/// One bit to flip, on one hart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub target: Target,
    /// The bit (0..=63).
    pub bit: u32,
    /// The hart (it must exist; a RAM flip, which all harts see, does not use it).
    pub hart: usize,
}

/// What a [`Fault`] flips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Integer register x1..x31 (x0 is hardwired to zero).
    X(u8),
    /// Floating-point register f0..f31, its raw 64 bits (mstatus.FS is left as it is).
    F(u8),
    /// The program counter. Bit 0 is hardwired to zero (IALIGN=16, and a snapshot refuses an
    /// odd pc): its flip is accepted and changes nothing.
    Pc,
    /// A CSR by address, flipped through the CSR write path (see [`ftvm_cpu::Hart::flip_csr_bit`]):
    /// WARL masks apply, and a bit no write can change is refused.
    Csr(u16),
    /// The aligned 64-bit little-endian word of guest RAM holding this guest physical address:
    /// bit `bit` of the word, that is bit `bit % 8` of the byte at `(addr & !7) + bit / 8`.
    Ram(u64),
    /// An entry of the hart's data TLBs: 0..256 the load TLB's, 256..512 the store TLB's
    /// ([`DATA_TLB_ENTRIES`]). The flip changes the virtual page number the entry is tagged
    /// with, never the RAM page it maps (see [`ftvm_cpu::Hart::flip_tlb_bit`]).
    Tlb(usize),
}

/// Why a fault spec or an injection was refused (the machine is then unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FaultError {
    #[error("bad fault spec '{0}': expected [hartN/]TARGET:BIT, TARGET one of xN, fN, pc, csr:NAME, csr:ADDR, ram:ADDR, tlb:INDEX")]
    Syntax(String),
    #[error("unknown register '{0}'")]
    UnknownRegister(String),
    #[error("x0 is hardwired to zero: it cannot be flipped")]
    X0,
    #[error("bit {bit} is out of range (0..=63)")]
    Bit { bit: u64 },
    #[error("unknown CSR '{0}'")]
    UnknownCsr(String),
    #[error(
        "CSR {0} does not exist or cannot be read now (fflags, frm and fcsr need mstatus.FS on)"
    )]
    NoCsr(String),
    #[error("bit {bit} of CSR {csr} cannot change (read-only, or fixed by its WARL rules)")]
    CsrFixed { csr: String, bit: u32 },
    #[error("address {addr:#x} is outside RAM ({RAM_BASE:#x}..{end:#x})")]
    OutsideRam { addr: u64, end: u64 },
    #[error("hart {hart} does not exist (the machine has {harts})")]
    Hart { hart: usize, harts: usize },
    #[error("TLB entry {0} is out of range (0..{DATA_TLB_ENTRIES}: the load TLB's first half, the store TLB's second)")]
    TlbIndex(usize),
    #[error("TLB entry {0} is empty")]
    TlbEmpty(usize),
}

/// CSRs known by name (any other is given by its address).
const CSR_NAMES: [(&str, u16); 30] = [
    ("fflags", Csr::fflags),
    ("frm", Csr::frm),
    ("fcsr", Csr::fcsr),
    ("sstatus", Csr::sstatus),
    ("sie", Csr::sie),
    ("stvec", Csr::stvec),
    ("scounteren", Csr::scounteren),
    ("senvcfg", Csr::senvcfg),
    ("sscratch", Csr::sscratch),
    ("sepc", Csr::sepc),
    ("scause", Csr::scause),
    ("stval", Csr::stval),
    ("sip", Csr::sip),
    ("satp", Csr::satp),
    ("mhartid", Csr::mhartid),
    ("mstatus", Csr::mstatus),
    ("misa", Csr::misa),
    ("medeleg", Csr::medeleg),
    ("mideleg", Csr::mideleg),
    ("mie", Csr::mie),
    ("mtvec", Csr::mtvec),
    ("mcounteren", Csr::mcounteren),
    ("menvcfg", Csr::menvcfg),
    ("mscratch", Csr::mscratch),
    ("mepc", Csr::mepc),
    ("mcause", Csr::mcause),
    ("mtval", Csr::mtval),
    ("mip", Csr::mip),
    ("mcycle", Csr::mcycle),
    ("minstret", Csr::minstret),
];

/// ABI names of x0..x31 (x8 is also `fp`).
const X_NAMES: [&str; 32] = [
    "zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1", "a0", "a1", "a2", "a3", "a4",
    "a5", "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "t3", "t4",
    "t5", "t6",
];

/// ABI names of f0..f31.
const F_NAMES: [&str; 32] = [
    "ft0", "ft1", "ft2", "ft3", "ft4", "ft5", "ft6", "ft7", "fs0", "fs1", "fa0", "fa1", "fa2",
    "fa3", "fa4", "fa5", "fa6", "fa7", "fs2", "fs3", "fs4", "fs5", "fs6", "fs7", "fs8", "fs9",
    "fs10", "fs11", "ft8", "ft9", "ft10", "ft11",
];

fn csr_name(n: u16) -> Option<&'static str> {
    CSR_NAMES.iter().find(|c| c.1 == n).map(|c| c.0)
}

/// How a CSR is named in messages: `mepc (0x341)` or `0x7c0`.
fn csr_label(n: u16) -> String {
    match csr_name(n) {
        Some(name) => format!("{name} ({n:#05x})"),
        None => format!("{n:#05x}"),
    }
}

/// A number in decimal or, with `0x`, in hex; `_` may separate digits.
fn number(s: &str) -> Option<u64> {
    let s = s.replace('_', "");
    let (digits, radix) = match s.strip_prefix("0x") {
        Some(hex) => (hex, 16),
        None => (s.as_str(), 10),
    };
    if digits.chars().all(|c| c.is_digit(radix)) {
        u64::from_str_radix(digits, radix).ok()
    } else {
        None
    }
}

/// `x7`/`a0`-style and `f3`/`fa0`-style register names.
fn register(s: &str) -> Result<Target, FaultError> {
    let numbered = |prefix: char| {
        s.strip_prefix(prefix)
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u8>().ok())
            .filter(|&i| i < 32)
    };
    let named = |names: &[&str]| names.iter().position(|&n| n == s).map(|i| i as u8);
    let t = if let Some(i) = numbered('x').or_else(|| named(&X_NAMES)) {
        Target::X(i)
    } else if s == "fp" {
        Target::X(8)
    } else if let Some(i) = numbered('f').or_else(|| named(&F_NAMES)) {
        Target::F(i)
    } else {
        return Err(FaultError::UnknownRegister(s.to_string()));
    };
    Ok(t)
}

impl Fault {
    /// Refuse what no machine could flip: x0, registers past 31, bits past 63.
    fn check(&self) -> Result<(), FaultError> {
        if self.bit > 63 {
            return Err(FaultError::Bit {
                bit: self.bit.into(),
            });
        }
        match self.target {
            Target::X(0) => Err(FaultError::X0),
            Target::X(i) if i > 31 => Err(FaultError::UnknownRegister(format!("x{i}"))),
            Target::F(i) if i > 31 => Err(FaultError::UnknownRegister(format!("f{i}"))),
            Target::Csr(n) if n > 0xfff => Err(FaultError::UnknownCsr(format!("{n:#x}"))),
            _ => Ok(()),
        }
    }
}

impl FromStr for Fault {
    type Err = FaultError;

    /// A fault spec, `[hartN/]TARGET:BIT` (case does not matter; numbers are decimal or
    /// `0x` hex, `_` may separate digits):
    ///
    /// - `x10:3`, `a0:3`: bit 3 of x10 (x1..x31, or an ABI name);
    /// - `f2:63`, `fa0:63`: bit 63 of f2's raw 64 bits;
    /// - `pc:2`: bit 2 of the PC (bit 0 is hardwired to zero: accepted, changes nothing);
    /// - `csr:mepc:5`, `csr:0x341:5`: bit 5 of a CSR, by name (fflags, frm, fcsr, sstatus,
    ///   sie, stvec, scounteren, senvcfg, sscratch, sepc, scause, stval, sip, satp, mhartid,
    ///   mstatus, misa, medeleg, mideleg, mie, mtvec, mcounteren, menvcfg, mscratch, mepc,
    ///   mcause, mtval, mip, mcycle, minstret) or by its 12-bit address;
    /// - `ram:0x80200000:7`: bit 7 of the aligned 64-bit RAM word holding that physical
    ///   address;
    /// - `tlb:12:40`: bit 40 of the virtual page number in data TLB entry 12 (the first half
    ///   of `0..DATA_TLB_ENTRIES` the load TLB, the second half the store TLB);
    /// - `hart1/x10:3`: the same on hart 1 (hart 0 by default).
    ///
    /// Bits are 0..=63 for every target. Whether the hart, the RAM address, the CSR's
    /// existence and the TLB entry make sense on a machine is checked by [`Machine::inject`].
    fn from_str(spec: &str) -> Result<Fault, FaultError> {
        let lower = spec.trim().to_ascii_lowercase();
        let syntax = || FaultError::Syntax(spec.to_string());
        let (hart, rest) = match lower.strip_prefix("hart") {
            Some(r) => {
                let (n, rest) = r.split_once('/').ok_or_else(syntax)?;
                let n = number(n).and_then(|n| usize::try_from(n).ok());
                (n.ok_or_else(syntax)?, rest)
            }
            None => (0, lower.as_str()),
        };
        let (what, bit) = rest.rsplit_once(':').ok_or_else(syntax)?;
        let bit = number(bit).ok_or_else(syntax)?;
        if bit > 63 {
            return Err(FaultError::Bit { bit });
        }
        let target = match what.split_once(':') {
            Some(("csr", c)) => match number(c) {
                Some(n) if n <= 0xfff => Target::Csr(n as u16),
                Some(_) => return Err(FaultError::UnknownCsr(c.to_string())),
                None => CSR_NAMES
                    .iter()
                    .find(|n| n.0 == c)
                    .map(|n| Target::Csr(n.1))
                    .ok_or_else(|| FaultError::UnknownCsr(c.to_string()))?,
            },
            Some(("ram", a)) => Target::Ram(number(a).ok_or_else(syntax)?),
            Some(("tlb", i)) => {
                let i = number(i).and_then(|i| usize::try_from(i).ok());
                Target::Tlb(i.ok_or_else(syntax)?)
            }
            Some(_) => return Err(syntax()),
            None if what == "pc" => Target::Pc,
            None => register(what)?,
        };
        let f = Fault {
            target,
            bit: bit as u32,
            hart,
        };
        f.check()?;
        Ok(f)
    }
}

impl fmt::Display for Fault {
    /// The spec [`Fault::from_str`] reads back: `hart1/csr:mepc:5`, `x10:3`, `ram:0x80200000:7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hart != 0 {
            write!(f, "hart{}/", self.hart)?;
        }
        match self.target {
            Target::X(i) => write!(f, "x{i}")?,
            Target::F(i) => write!(f, "f{i}")?,
            Target::Pc => f.write_str("pc")?,
            Target::Csr(n) => match csr_name(n) {
                Some(name) => write!(f, "csr:{name}")?,
                None => write!(f, "csr:{n:#05x}")?,
            },
            Target::Ram(a) => write!(f, "ram:{a:#x}")?,
            Target::Tlb(i) => write!(f, "tlb:{i}")?,
        }
        write!(f, ":{}", self.bit)
    }
}

impl Machine {
    /// Flip the bit `f` names now, and describe what changed in one line, such as
    /// `hart 0 x10: 0x0000000080001234 -> 0x000000008000123c`.
    ///
    /// Registers, the PC and CSRs are flipped in the hart, where both engines keep them
    /// between runs. A RAM flip is written as a device's DMA is: the page is brought in first
    /// if a post-copy migration has not sent it yet, its decoded instructions and translated
    /// blocks are dropped (a flip in code runs as flipped), and the dirty-page tracker sees
    /// the page. A CSR flip goes through the CSR write path, WARL masks and side effects
    /// included (see [`ftvm_cpu::Hart::flip_csr_bit`]). A TLB flip changes only the entry's
    /// virtual tag (see [`ftvm_cpu::Hart::flip_tlb_bit`]): no digest sees it.
    pub fn inject(&mut self, f: &Fault) -> Result<String, FaultError> {
        f.check()?;
        let harts = self.harts.len();
        if f.hart >= harts {
            return Err(FaultError::Hart {
                hart: f.hart,
                harts,
            });
        }
        let mask = 1u64 << f.bit;
        let who = format!("hart {}", f.hart);
        let h = &mut self.harts[f.hart];
        let line = |what: &str, before: u64, after: u64| {
            format!("{who} {what}: {before:#018x} -> {after:#018x}")
        };
        Ok(match f.target {
            Target::X(i) => {
                let before = h.reg(i.into());
                h.set_reg(i.into(), before ^ mask);
                line(&format!("x{i}"), before, before ^ mask)
            }
            Target::F(i) => {
                let before = h.freg(i.into());
                h.set_freg(i.into(), before ^ mask);
                line(&format!("f{i}"), before, before ^ mask)
            }
            Target::Pc if f.bit == 0 => {
                format!(
                    "{who} pc: {:#018x} unchanged (bit 0 is hardwired to zero)",
                    h.pc()
                )
            }
            Target::Pc => {
                let before = h.pc();
                h.set_pc(before ^ mask);
                line("pc", before, before ^ mask)
            }
            Target::Csr(n) => match h.flip_csr_bit(&mut self.board, n, f.bit) {
                Ok((before, after)) => line(&format!("csr {}", csr_label(n)), before, after),
                Err(FlipError::CsrFixed { .. }) => {
                    return Err(FaultError::CsrFixed {
                        csr: csr_label(n),
                        bit: f.bit,
                    })
                }
                Err(_) => return Err(FaultError::NoCsr(csr_label(n))),
            },
            Target::Tlb(i) => match h.flip_tlb_bit(i, f.bit) {
                Ok(t) => line(
                    &format!(
                        "tlb {i} ({} TLB slot {}, RAM page {:#x}) vpn",
                        if t.store { "store" } else { "load" },
                        t.slot,
                        RAM_BASE + t.ram_offset as u64,
                    ),
                    t.before,
                    t.after,
                ),
                Err(FlipError::TlbEmpty(_)) => return Err(FaultError::TlbEmpty(i)),
                Err(_) => return Err(FaultError::TlbIndex(i)),
            },
            Target::Ram(addr) => return self.flip_ram(addr, f.bit),
        })
    }

    /// Flip bit `bit` of the RAM word holding `addr`, as DMA writes it.
    fn flip_ram(&mut self, addr: u64, bit: u32) -> Result<String, FaultError> {
        let end = RAM_BASE + self.board.ram.len() as u64;
        let outside = FaultError::OutsideRam { addr, end };
        if !(RAM_BASE..end).contains(&addr) {
            return Err(outside);
        }
        let off = ((addr - RAM_BASE) & !7) as usize;
        self.board.ensure_present(off >> 12);
        let word = self.board.ram.get_mut(off..off + 8).ok_or(outside)?;
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let before = u64::from_le_bytes(bytes);
        let after = before ^ (1 << bit);
        word.copy_from_slice(&after.to_le_bytes());
        self.board.dma.push((off, 8));
        self.invalidate_dma();
        let at = RAM_BASE + off as u64;
        Ok(format!("ram {at:#x}: {before:#018x} -> {after:#018x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::UART_BASE;
    use crate::{RunExit, MIN_RAM};
    use ftvm_cpu::Engine;

    fn parse(s: &str) -> Result<Fault, FaultError> {
        s.parse()
    }

    #[test]
    fn specs_print_back_as_they_parse() {
        for (spec, printed) in [
            ("x10:3", "x10:3"),
            ("a0:3", "x10:3"),
            ("fp:0", "x8:0"),
            ("f2:63", "f2:63"),
            ("fa0:1", "f10:1"),
            ("pc:2", "pc:2"),
            ("csr:mepc:5", "csr:mepc:5"),
            ("csr:0x341:5", "csr:mepc:5"),
            ("csr:0x7c0:1", "csr:0x7c0:1"),
            ("csr:5:1", "csr:0x005:1"),
            ("ram:0x80200000:7", "ram:0x80200000:7"),
            ("RAM:0x8020_0000:0x7", "ram:0x80200000:7"),
            ("tlb:12:40", "tlb:12:40"),
            ("hart1/x31:0", "hart1/x31:0"),
            ("hart0/sp:1", "x2:1"),
            ("HART3/csr:SATP:63", "hart3/csr:satp:63"),
        ] {
            let f = parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(f.to_string(), printed, "{spec}");
            assert_eq!(parse(&f.to_string()), Ok(f), "{spec}");
        }
        assert_eq!(
            parse("hart2/csr:mepc:5"),
            Ok(Fault {
                target: Target::Csr(0x341),
                bit: 5,
                hart: 2
            })
        );
    }

    #[test]
    fn bad_specs_are_refused_with_their_reason() {
        let syntax = |s: &str| FaultError::Syntax(s.to_string());
        for (spec, err) in [
            ("x0:1", FaultError::X0),
            ("zero:1", FaultError::X0),
            ("x32:1", FaultError::UnknownRegister("x32".into())),
            ("q5:1", FaultError::UnknownRegister("q5".into())),
            ("x5:64", FaultError::Bit { bit: 64 }),
            ("ram:0x80000000:99", FaultError::Bit { bit: 99 }),
            ("csr:foo:1", FaultError::UnknownCsr("foo".into())),
            ("csr:0x1000:1", FaultError::UnknownCsr("0x1000".into())),
            ("x5", syntax("x5")),
            ("x5:-1", syntax("x5:-1")),
            ("ram:zz:1", syntax("ram:zz:1")),
            ("tlb:-1:1", syntax("tlb:-1:1")),
            ("hartx/x5:1", syntax("hartx/x5:1")),
            ("hart1x5:1", syntax("hart1x5:1")),
            ("disk:3:1", syntax("disk:3:1")),
        ] {
            assert_eq!(parse(spec), Err(err), "{spec}");
        }
        let f = Fault {
            target: Target::X(3),
            bit: 64,
            hart: 0,
        };
        let mut m = Machine::new(MIN_RAM).unwrap();
        assert_eq!(m.inject(&f), Err(FaultError::Bit { bit: 64 }));
        let f = Fault {
            target: Target::F(40),
            bit: 1,
            hart: 0,
        };
        assert_eq!(m.inject(&f), Err(FaultError::UnknownRegister("f40".into())));
    }

    fn inject(m: &mut Machine, spec: &str) -> Result<String, FaultError> {
        m.inject(&parse(spec).unwrap())
    }

    #[test]
    fn flipping_a_register_twice_restores_the_digest() {
        let mut m = Machine::new(MIN_RAM).unwrap();
        m.hart_mut(0).set_reg(10, 0x8000_1234);
        let d0 = m.digest();
        assert_eq!(
            inject(&mut m, "x10:3").unwrap(),
            "hart 0 x10: 0x0000000080001234 -> 0x000000008000123c"
        );
        assert_eq!(m.harts()[0].reg(10), 0x8000_123c);
        assert_ne!(m.digest(), d0);
        inject(&mut m, "a0:3").unwrap();
        assert_eq!(m.digest(), d0);
        for spec in ["f2:63", "pc:2", "csr:mscratch:5", "csr:sstatus:1"] {
            inject(&mut m, spec).unwrap();
            assert_ne!(m.digest(), d0, "{spec}");
            inject(&mut m, spec).unwrap();
            assert_eq!(m.digest(), d0, "{spec}");
        }
        assert_eq!(m.harts()[0].freg(2), 0);
        assert_eq!(
            m.harts[0].flip_csr_bit(&mut m.board, Csr::mscratch, 5),
            Ok((0, 32))
        );
    }

    #[test]
    fn what_cannot_be_flipped_is_refused_and_changes_nothing() {
        let mut m = Machine::new(MIN_RAM).unwrap();
        m.hart_mut(0).set_ext_irq(ftvm_cpu::irq::STIP, true);
        let d0 = m.digest();
        let fixed = |csr: &str, bit| FaultError::CsrFixed {
            csr: csr.into(),
            bit,
        };
        for (spec, err) in [
            ("csr:mepc:0", fixed("mepc (0x341)", 0)),
            ("csr:mhartid:0", fixed("mhartid (0xf14)", 0)),
            ("csr:misa:0", fixed("misa (0x301)", 0)),
            ("csr:mip:7", fixed("mip (0x344)", 7)),
            ("csr:satp:59", fixed("satp (0x180)", 59)),
            ("csr:0x7c0:1", FaultError::NoCsr("0x7c0".into())),
            ("csr:fflags:1", FaultError::NoCsr("fflags (0x001)".into())),
            ("hart1/x1:0", FaultError::Hart { hart: 1, harts: 1 }),
            (
                "ram:0x7fffffff:0",
                FaultError::OutsideRam {
                    addr: 0x7fff_ffff,
                    end: RAM_BASE + MIN_RAM,
                },
            ),
            (
                "ram:0x81000000:0",
                FaultError::OutsideRam {
                    addr: 0x8100_0000,
                    end: RAM_BASE + MIN_RAM,
                },
            ),
            ("tlb:3:0", FaultError::TlbEmpty(3)),
        ] {
            assert_eq!(inject(&mut m, spec), Err(err), "{spec}");
            assert_eq!(m.digest(), d0, "{spec}");
        }
        // One past the store TLB's last entry, and an empty store-TLB entry.
        let store44 = DATA_TLB_ENTRIES / 2 + 44;
        for (spec, err) in [
            (
                format!("tlb:{DATA_TLB_ENTRIES}:0"),
                FaultError::TlbIndex(DATA_TLB_ENTRIES),
            ),
            (format!("tlb:{store44}:0"), FaultError::TlbEmpty(store44)),
        ] {
            assert_eq!(inject(&mut m, &spec), Err(err), "{spec}");
            assert_eq!(m.digest(), d0, "{spec}");
        }
        // pc bit 0 does not exist (IALIGN=16): accepted, nothing changes.
        assert_eq!(
            inject(&mut m, "pc:0").unwrap(),
            "hart 0 pc: 0x0000000000000000 unchanged (bit 0 is hardwired to zero)"
        );
        assert_eq!(m.digest(), d0);
        // mip flips its software-writable bit; the board's STIP line is not latched.
        assert_eq!(
            inject(&mut m, "csr:mip:1").unwrap(),
            "hart 0 csr mip (0x344): 0x0000000000000020 -> 0x0000000000000022"
        );
        m.hart_mut(0).set_ext_irq(ftvm_cpu::irq::STIP, false);
        assert_eq!(m.harts()[0].mip(), 2);
        // mcycle takes the flipped value at once.
        inject(&mut m, "csr:mcycle:40").unwrap();
        let (c, _) = m.harts[0]
            .flip_csr_bit(&mut m.board, Csr::minstret, 0)
            .unwrap();
        assert_eq!(c, 1 << 40);
    }

    #[test]
    fn a_ram_flip_changes_its_byte_the_digest_and_the_dirty_pages() {
        let mut m = Machine::new(MIN_RAM).unwrap();
        m.take_dirty();
        let d0 = m.digest();
        assert_eq!(
            inject(&mut m, "ram:0x80200003:13").unwrap(),
            "ram 0x80200000: 0x0000000000000000 -> 0x0000000000002000"
        );
        assert_eq!(m.ram()[0x20_0001], 0x20);
        assert_eq!(m.ram().iter().filter(|&&b| b != 0).count(), 1);
        assert_ne!(m.digest(), d0);
        assert_eq!(m.take_dirty().iter().collect::<Vec<_>>(), vec![0x200]);
        inject(&mut m, "ram:0x80200007:13").unwrap();
        assert_eq!(m.digest(), d0);
        // The last word of RAM.
        let last = RAM_BASE + MIN_RAM - 1;
        inject(&mut m, &format!("ram:{last:#x}:63")).unwrap();
        assert_eq!(m.ram()[MIN_RAM as usize - 1], 0x80);
    }

    /// A loop that prints the byte at x5 (t0) to x7 (t2), the UART: `1: ld t1, 0(t0);
    /// sb t1, 0(t2); j 1b` at RAM_BASE, three steps a byte; 'A' at RAM_BASE + 0x1000 and
    /// 'B' eight bytes after.
    fn printer(engine: Engine) -> Machine {
        let mut m = Machine::new(MIN_RAM).unwrap();
        assert!(m.set_engine(engine));
        for (i, w) in [0x0002_b303u32, 0x0063_8023, 0xff9f_f06f]
            .iter()
            .enumerate()
        {
            m.board.ram[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        m.board.ram[0x1000] = b'A';
        m.board.ram[0x1008] = b'B';
        let h = m.hart_mut(0);
        h.set_pc(RAM_BASE);
        h.set_reg(5, RAM_BASE + 0x1000);
        h.set_reg(7, UART_BASE);
        m
    }

    fn engines() -> impl Iterator<Item = Engine> {
        [Engine::Interp, Engine::Jit]
            .into_iter()
            .filter(|e| e.supported())
    }

    /// Run 10 turns of the loop and take what it printed.
    fn print10(m: &mut Machine) -> Vec<u8> {
        let stop = m.count() + 30;
        assert_eq!(m.run(stop, u64::MAX), RunExit::StopAt);
        std::mem::take(&mut m.board.console_out)
    }

    #[test]
    fn flips_of_data_and_code_change_what_the_program_prints() {
        for e in engines() {
            let mut m = printer(e);
            assert_eq!(print10(&mut m), b"AAAAAAAAAA", "{e:?}");
            assert_eq!(m.jit_stats().blocks > 0, e == Engine::Jit);
            // The data word: 'A' (0x41) becomes 'C' (0x43).
            inject(&mut m, "ram:0x80001000:1").unwrap();
            assert_eq!(print10(&mut m), b"CCCCCCCCCC", "{e:?}");
            // The code: ld's offset 0 becomes 8 (bit 23 of the instruction), though the
            // loop was decoded (and translated) already.
            inject(&mut m, "ram:0x80000000:23").unwrap();
            assert_eq!(print10(&mut m), b"BBBBBBBBBB", "{e:?}");
            // A register: t0 moves 16 bytes on (zeros there).
            inject(&mut m, "x5:4").unwrap();
            assert_eq!(print10(&mut m), [0; 10], "{e:?}");
        }
    }

    #[test]
    fn replicas_that_flip_the_same_bit_at_the_same_count_agree() {
        let mut replicas: Vec<Machine> = engines().chain(engines()).map(printer).collect();
        for m in &mut replicas {
            m.run(17, u64::MAX);
            inject(m, "x6:2").unwrap();
            inject(m, "csr:mtvec:4").unwrap();
            m.run(100, u64::MAX);
        }
        let d = replicas[0].digest();
        assert!(replicas.iter().all(|m| m.digest() == d));
        let mut clean = printer(Engine::Interp);
        clean.run(100, u64::MAX);
        assert_ne!(clean.digest(), d);
    }

    #[test]
    fn a_tlb_flip_retags_an_entry_without_changing_the_digest() {
        for e in engines() {
            let mut m = printer(e);
            assert_eq!(print10(&mut m), b"AAAAAAAAAA", "{e:?}");
            // The load TLB maps page 0x80001 in slot 1 (tagged as made in M-mode: 3 in bits
            // 52 and up); the first bit above the slot number retags it as another page that
            // lands in the same slot.
            let bit = (DATA_TLB_ENTRIES / 2).trailing_zeros();
            let other = 0x80001u64 | 1 << bit;
            let d = m.digest();
            assert_eq!(
                inject(&mut m, &format!("tlb:1:{bit}")).unwrap(),
                format!(
                    "hart 0 tlb 1 (load TLB slot 1, RAM page 0x80001000) vpn: \
                     0x0030000000080001 -> {:#018x}",
                    3 << 52 | other
                )
            );
            assert_eq!(m.digest(), d);
            // Loads from that page (zeros) now read the page the entry maps.
            m.hart_mut(0).set_reg(5, other << 12);
            assert_eq!(print10(&mut m), b"AAAAAAAAAA", "{e:?}");
            // A flip of its low bits moves the tag out of its slot: it never hits again.
            inject(&mut m, "tlb:1:0").unwrap();
            assert_eq!(print10(&mut m), [0; 10], "{e:?}");
            let store0 = DATA_TLB_ENTRIES / 2;
            assert_eq!(
                inject(&mut m, &format!("tlb:{store0}:0")),
                Err(FaultError::TlbEmpty(store0))
            );
        }
    }
}
