//! Single-bit flips of a hart's state, to model soft errors (see `ftvm_machine::fault`).
//!
//! Every flip is a pure function of the hart's state, made between runs: registers, CSRs and
//! TLBs live in the hart itself, where both engines read them, so the next [`Hart::run`] sees
//! the flip whichever engine it uses.

use thiserror::Error;

use crate::mmu::TLB_ENTRIES;
use crate::{Bus, Csr, Hart, Priv};

/// Entries of a hart's data TLBs together, as [`Hart::flip_tlb_bit`] numbers them: the load
/// TLB's entries are `0..DATA_TLB_ENTRIES / 2`, the store TLB's the rest.
pub const DATA_TLB_ENTRIES: usize = 2 * TLB_ENTRIES;

/// Why a flip was refused (the hart is then unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FlipError {
    #[error("bit {0} is out of range (0..=63)")]
    Bit(u32),
    #[error(
        "CSR {0:#05x} does not exist or cannot be read (fflags, frm and fcsr need mstatus.FS on)"
    )]
    NoCsr(u16),
    #[error(
        "bit {bit} of CSR {csr:#05x} cannot change (read-only, or fixed by the CSR's WARL rules)"
    )]
    CsrFixed { csr: u16, bit: u32 },
    #[error("TLB entry {0} is out of range (0..{DATA_TLB_ENTRIES}: the load TLB's 0..{TLB_ENTRIES}, the store TLB's {TLB_ENTRIES}..{DATA_TLB_ENTRIES})")]
    TlbIndex(usize),
    #[error("TLB entry {0} is empty")]
    TlbEmpty(usize),
}

/// What [`Hart::flip_tlb_bit`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbFlip {
    /// The store TLB's entry (else the load TLB's).
    pub store: bool,
    /// The entry's slot in its TLB.
    pub slot: usize,
    /// The virtual page number the entry maps, before and after the flip.
    pub before: u64,
    pub after: u64,
    /// The RAM offset of the page it maps (unchanged by the flip).
    pub ram_offset: usize,
}

impl Hart {
    /// Floating-point register `i` (0..32), its raw 64 bits.
    pub fn freg(&self, i: usize) -> u64 {
        self.f[i & 31]
    }

    /// Set floating-point register `i` to raw bits (mstatus.FS is left as it is).
    pub fn set_freg(&mut self, i: usize, v: u64) {
        self.f[i & 31] = v;
    }

    /// Flip bit `bit` of CSR `n` as an M-mode write of the value read with that bit flipped
    /// would: the write's WARL masks apply and so do its side effects (a satp or mstatus
    /// change flushes translations; a flip of fflags, frm or fcsr sets mstatus.FS to Dirty).
    /// Two exceptions keep the flip to the one bit: mip is written from its software-writable
    /// bits (the lines the board drives are not latched), and mcycle/minstret take the new
    /// value at once (they share one offset: a flip of one moves both).
    ///
    /// Returns the CSR's value as software reads it, before and after; refused (state
    /// unchanged) if the CSR does not exist or the write leaves every CSR as it was.
    pub fn flip_csr_bit<B: Bus>(
        &mut self,
        bus: &mut B,
        n: u16,
        bit: u32,
    ) -> Result<(u64, u64), FlipError> {
        if bit >= 64 {
            return Err(FlipError::Bit(bit));
        }
        let prv = self.prv;
        self.prv = Priv::Machine;
        let r = self.flip_csr_as_machine(bus, n, bit);
        self.prv = prv;
        self.retag_data();
        r
    }

    fn flip_csr_as_machine<B: Bus>(
        &mut self,
        bus: &mut B,
        n: u16,
        bit: u32,
    ) -> Result<(u64, u64), FlipError> {
        let mask = 1u64 << bit;
        let before = self.csr_read(bus, n).map_err(|_| FlipError::NoCsr(n))?;
        let old = self.csr.clone();
        let written = match n {
            Csr::mcycle | Csr::minstret => {
                self.csr.cycle_offset = (before ^ mask).wrapping_sub(self.count);
                Ok(())
            }
            Csr::mip => self.csr_write(n, self.csr.mip ^ mask),
            _ => self.csr_write(n, before ^ mask),
        };
        if written.is_err() || self.csr == old {
            return Err(FlipError::CsrFixed { csr: n, bit });
        }
        let after = self.csr_read(bus, n).unwrap_or(before);
        Ok((before, after))
    }

    /// Flip bit `bit` of the virtual page number that data TLB entry `index` holds (see
    /// [`DATA_TLB_ENTRIES`] for the numbering). Only the tag changes, never the RAM offset the
    /// entry maps to, so the entry still points inside guest RAM: a flip of bits 0..8 moves the
    /// tag out of its slot (the entry never hits again), a higher bit makes the entry map
    /// another virtual page onto the same RAM page, with the same permission (unless the new
    /// number is one no address has). Every page a store TLB maps stays one that was reported
    /// dirty and holds no decoded code, so the caches stay coherent.
    ///
    /// TLBs are not architectural state: the flip leaves a snapshot and a digest as they were.
    pub fn flip_tlb_bit(&mut self, index: usize, bit: u32) -> Result<TlbFlip, FlipError> {
        if bit >= 64 {
            return Err(FlipError::Bit(bit));
        }
        let (tlb, store, slot) = if index < TLB_ENTRIES {
            (&mut self.mmu.load, false, index)
        } else if index < DATA_TLB_ENTRIES {
            (&mut self.mmu.store, true, index - TLB_ENTRIES)
        } else {
            return Err(FlipError::TlbIndex(index));
        };
        let (before, after, ram_offset) =
            tlb.flip_vpn(slot, bit).ok_or(FlipError::TlbEmpty(index))?;
        Ok(TlbFlip {
            store,
            slot,
            before,
            after,
            ram_offset,
        })
    }
}
