//! The hart as gdb sees it: the integer registers and pc, the floating-point registers and
//! their CSRs, the supervisor and machine CSRs, and the privilege level, described to gdb by
//! `target.xml` (gdb's RISC-V feature names, so `info registers`, `p $satp` and `p $priv`
//! work as with QEMU).

use ftvm_cpu::{Csr, Hart};
use gdbstub::arch::{Arch, Registers};

/// The CSRs served, in `target.xml`'s order (registers 68 on).
pub const CSRS: [u16; 25] = [
    Csr::sstatus,
    Csr::sie,
    Csr::stvec,
    Csr::scounteren,
    Csr::sscratch,
    Csr::sepc,
    Csr::scause,
    Csr::stval,
    Csr::sip,
    Csr::satp,
    Csr::mstatus,
    Csr::misa,
    Csr::medeleg,
    Csr::mideleg,
    Csr::mie,
    Csr::mtvec,
    Csr::mcounteren,
    Csr::mscratch,
    Csr::mepc,
    Csr::mcause,
    Csr::mtval,
    Csr::mip,
    Csr::mhartid,
    Csr::cycle,
    Csr::instret,
];

/// One hart's registers, as the `g` packet carries them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub x: [u64; 32],
    pub pc: u64,
    pub f: [u64; 32],
    /// fflags, frm, fcsr (32 bits each on the wire).
    pub fcsrs: [u32; 3],
    pub csrs: [u64; CSRS.len()],
    /// 0 user, 1 supervisor, 3 machine.
    pub prv: u64,
}

impl Regs {
    pub fn of(h: &Hart) -> Regs {
        let mut r = Regs {
            pc: h.pc(),
            prv: h.privilege() as u64,
            ..Regs::default()
        };
        for i in 0..32 {
            r.x[i] = h.reg(i);
            r.f[i] = h.f_reg(i);
        }
        for (v, n) in r.fcsrs.iter_mut().zip([Csr::fflags, Csr::frm, Csr::fcsr]) {
            *v = h.debug_csr(n).unwrap_or(0) as u32;
        }
        for (v, &n) in r.csrs.iter_mut().zip(&CSRS) {
            *v = h.debug_csr(n).unwrap_or(0);
        }
        r
    }
}

impl Registers for Regs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.pc
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        let mut put = |b: &[u8]| b.iter().for_each(|&b| write_byte(Some(b)));
        for v in self.x.iter().chain([&self.pc]).chain(self.f.iter()) {
            put(&v.to_le_bytes());
        }
        for v in &self.fcsrs {
            put(&v.to_le_bytes());
        }
        for v in self.csrs.iter().chain([&self.prv]) {
            put(&v.to_le_bytes());
        }
    }

    /// Registers are read only (a debugged replay must not change the machine): the stub
    /// refuses every write before this is of any use; it parses for completeness.
    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        if bytes.len() != REGS_BYTES {
            return Err(());
        }
        let mut words = bytes[..65 * 8]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
        for v in self
            .x
            .iter_mut()
            .chain([&mut self.pc])
            .chain(self.f.iter_mut())
        {
            *v = words.next().ok_or(())?;
        }
        let rest = &bytes[65 * 8..];
        for (v, c) in self.fcsrs.iter_mut().zip(rest.chunks_exact(4)) {
            *v = u32::from_le_bytes(c.try_into().map_err(|_| ())?);
        }
        let mut words = rest[12..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
        for v in self.csrs.iter_mut().chain([&mut self.prv]) {
            *v = words.next().ok_or(())?;
        }
        Ok(())
    }
}

/// The size of a `g` packet's registers, in bytes.
pub const REGS_BYTES: usize = 65 * 8 + 3 * 4 + (CSRS.len() + 1) * 8;

/// RV64GC as ftvm serves it to gdb.
pub enum Rv64 {}

impl Arch for Rv64 {
    type Usize = u64;
    type Registers = Regs;
    type BreakpointKind = usize;
    type RegId = ();

    fn target_description_xml() -> Option<&'static str> {
        Some(include_str!("target.xml"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_round_trip_and_match_the_description() {
        let mut r = Regs::default();
        for i in 0..32 {
            r.x[i] = i as u64 * 3 + 1;
            r.f[i] = !(i as u64);
        }
        r.pc = 0xffff_ffff_8000_0000;
        r.fcsrs = [1, 2, 3];
        r.csrs[9] = 0x8000_0000_0008_1234;
        r.prv = 1;
        let mut bytes = Vec::new();
        r.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        assert_eq!(bytes.len(), REGS_BYTES);
        let mut back = Regs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, r);
        assert!(back.gdb_deserialize(&bytes[1..]).is_err());
        // The description names as many bits as the packet carries, register by register.
        let xml = include_str!("target.xml");
        let bits: usize = xml
            .split("bitsize=\"")
            .skip(1)
            .map(|s| s[..s.find('"').unwrap()].parse::<usize>().unwrap())
            .sum();
        assert_eq!(bits / 8, REGS_BYTES);
        assert_eq!(xml.matches("<reg ").count(), 65 + 3 + CSRS.len() + 1);
    }
}
