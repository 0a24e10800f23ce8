//! Saving and restoring the architectural state of a hart (the hart part of a machine
//! snapshot). Restoring checks every field against what the hart itself could hold, so a
//! crafted snapshot cannot put it in a state that no run reaches.
//!
//! Layout (little-endian): x0..x31, f0..f31, pc (u64 each), privilege (u8: 0 U, 1 S, 3 M),
//! count, board interrupt lines, LR/SC reservation (all ones: none), host-SBI flag (u8),
//! `tohost` address (all ones: none), then the CSRs (u64 each) in [`CSR_ORDER`] order, then
//! pmpcfg0, pmpcfg2 and pmpaddr0..15.

use thiserror::Error;

use crate::csr::{self, CsrFile};
use crate::{irq, Hart, Priv};

/// Why a saved hart state was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HartStateError {
    #[error("hart state is truncated")]
    Truncated,
    #[error("hart state is invalid: {0}")]
    Invalid(&'static str),
}

/// The size of a saved hart state in bytes.
pub const HART_STATE_LEN: usize = 8 * 65 + 1 + 8 * 3 + 1 + 8 + 8 * (24 + 18);

/// The CSR fields of a hart, in the order they are saved.
macro_rules! csr_fields {
    ($m:ident) => {
        $m!(
            mstatus,
            medeleg,
            mideleg,
            mie,
            mip,
            mtvec,
            mcounteren,
            menvcfg,
            mscratch,
            mepc,
            mcause,
            mtval,
            stvec,
            scounteren,
            senvcfg,
            sscratch,
            sepc,
            scause,
            stval,
            satp,
            fflags,
            frm,
            mhartid,
            cycle_offset
        )
    };
}

/// Names of the saved CSR fields, in order.
#[cfg(test)]
pub const CSR_ORDER: [&str; 24] = {
    macro_rules! names {
        ($($f:ident),*) => { [$(stringify!($f)),*] };
    }
    csr_fields!(names)
};

/// Lines the board may drive (MEIP, SEIP, MTIP, MSIP, STIP).
const EXT_IRQ_LINES: u64 = irq::MEIP | irq::SEIP | irq::MTIP | irq::MSIP | irq::STIP;

struct Input<'a, 'b>(&'b mut &'a [u8]);

impl Input<'_, '_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], HartStateError> {
        let Some((head, rest)) = self.0.split_first_chunk::<N>() else {
            return Err(HartStateError::Truncated);
        };
        *self.0 = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, HartStateError> {
        Ok(self.take::<1>()?[0])
    }
    fn u64(&mut self) -> Result<u64, HartStateError> {
        Ok(u64::from_le_bytes(self.take::<8>()?))
    }
}

impl Hart {
    /// Append the architectural state (see the module documentation for the layout).
    /// Translation caches and decoded instructions are not state: they are rebuilt.
    pub fn save(&self, out: &mut Vec<u8>) {
        let mut put = |v: u64| out.extend_from_slice(&v.to_le_bytes());
        for v in self.x.iter().chain(self.f.iter()) {
            put(*v);
        }
        put(self.pc);
        out.push(self.prv as u8);
        let mut put = |v: u64| out.extend_from_slice(&v.to_le_bytes());
        put(self.count);
        put(self.ext_irq);
        put(self.reservation.unwrap_or(u64::MAX));
        out.push(self.host_sbi as u8);
        let mut put = |v: u64| out.extend_from_slice(&v.to_le_bytes());
        put(self.tohost.unwrap_or(u64::MAX));
        let c = &self.csr;
        macro_rules! save {
            ($($f:ident),*) => { $( put(c.$f); )* };
        }
        csr_fields!(save);
        for v in c.pmpcfg.iter().chain(c.pmpaddr.iter()) {
            put(*v);
        }
    }

    /// A hart from a state written by [`Hart::save`], consuming it from the front of `input`.
    /// Values that no CSR write could produce are refused.
    pub fn restore(input: &mut &[u8]) -> Result<Hart, HartStateError> {
        let mut r = Input(input);
        let mut h = Hart::new(0);
        for i in 0..32 {
            h.x[i] = r.u64()?;
        }
        for i in 0..32 {
            h.f[i] = r.u64()?;
        }
        if h.x[0] != 0 {
            return Err(HartStateError::Invalid("x0 is not zero"));
        }
        h.pc = r.u64()?;
        if h.pc & 1 != 0 {
            return Err(HartStateError::Invalid("misaligned pc"));
        }
        h.prv = match r.u8()? {
            0 => Priv::User,
            1 => Priv::Supervisor,
            3 => Priv::Machine,
            _ => return Err(HartStateError::Invalid("privilege level")),
        };
        h.count = r.u64()?;
        h.ext_irq = r.u64()?;
        if h.ext_irq & !EXT_IRQ_LINES != 0 {
            return Err(HartStateError::Invalid("interrupt lines"));
        }
        h.reservation = Some(r.u64()?).filter(|&v| v != u64::MAX);
        h.host_sbi = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(HartStateError::Invalid("host SBI flag")),
        };
        h.tohost = Some(r.u64()?).filter(|&v| v != u64::MAX);
        let mut c = CsrFile::new(0);
        macro_rules! load {
            ($($f:ident),*) => { $( c.$f = r.u64()?; )* };
        }
        csr_fields!(load);
        for v in c.pmpcfg.iter_mut() {
            *v = r.u64()?;
        }
        for v in c.pmpaddr.iter_mut() {
            *v = r.u64()?;
        }
        if let Some(what) = csr::invalid_field(&c) {
            return Err(HartStateError::Invalid(what));
        }
        h.csr = c;
        h.mmu.flush();
        h.retag_data();
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_length() {
        let mut h = Hart::new(0);
        h.x[7] = 7;
        h.f[3] = 3;
        h.pc = 0x8000_0010;
        h.count = 99;
        h.set_priv(Priv::Supervisor);
        h.reservation = Some(0x8000_0100);
        h.tohost = Some(0x8000_1000);
        h.csr.satp = (8 << 60) | 0x80001;
        h.csr.mepc = 0x8000_0000;
        let mut out = Vec::new();
        h.save(&mut out);
        assert_eq!(out.len(), HART_STATE_LEN);
        out.push(0xaa);
        let mut rest = &out[..];
        let back = Hart::restore(&mut rest).unwrap();
        assert_eq!(rest, &[0xaa]);
        let mut again = Vec::new();
        back.save(&mut again);
        assert_eq!(again[..], out[..HART_STATE_LEN]);
    }

    #[test]
    fn crafted_states_are_refused() {
        let mut good = Vec::new();
        Hart::new(0).save(&mut good);
        let field = |name: &str| {
            8 * 65 + 1 + 8 * 3 + 1 + 8 + 8 * CSR_ORDER.iter().position(|&n| n == name).unwrap()
        };
        let patch = |at: usize, v: u64| {
            let mut s = good.clone();
            s[at..at + 8].copy_from_slice(&v.to_le_bytes());
            Hart::restore(&mut &s[..])
        };
        assert!(patch(0, 1).is_err(), "x0");
        assert!(patch(8 * 64, 0x8000_0001).is_err(), "odd pc");
        assert!(patch(8 * 65 + 1 + 8, 1 << 40).is_err(), "interrupt lines");
        assert!(patch(field("frm"), 8).is_err());
        assert!(patch(field("fflags"), 0x20).is_err());
        assert!(patch(field("satp"), 5 << 60).is_err());
        assert!(patch(field("mstatus"), 2 << 11).is_err(), "MPP = 2");
        assert!(patch(field("mie"), 1 << 20).is_err());
        assert!(patch(field("mideleg"), irq::MEIP).is_err());
        assert!(
            patch(field("cycle_offset") + 8 * 3, u64::MAX).is_err(),
            "pmpaddr0"
        );
        let mut bad_prv = good.clone();
        bad_prv[8 * 64 + 8] = 2;
        assert_eq!(
            Hart::restore(&mut &bad_prv[..]).err(),
            Some(HartStateError::Invalid("privilege level"))
        );
        for n in [0, 1, 100, HART_STATE_LEN - 1] {
            assert_eq!(
                Hart::restore(&mut &good[..n]).err(),
                Some(HartStateError::Truncated)
            );
        }
        assert!(Hart::restore(&mut &good[..]).is_ok());
    }
}
