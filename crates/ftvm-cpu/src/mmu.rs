//! Address translation (Sv39, Sv48) and memory access, with direct-mapped TLBs for loads,
//! stores and instruction fetch that map a virtual page straight to an offset in guest RAM.
//!
//! A TLB entry is filled only for pages backed by RAM and only with the permission the access
//! that filled it proved, at the current privilege and mstatus bits. Those are part of each
//! entry's tag (see [`Hart::data_tag`] and [`fetch_tag`]), so a trap, an xRET or a toggle of
//! SUM (which Linux makes around every copy to or from user memory) keeps the translations
//! made under other settings for when they come back; everything else that changes the
//! outcome of a translation (satp, SFENCE.VMA, PBMTE, a restore) flushes all three.

use crate::csr::{
    MENVCFG_PBMTE, MSTATUS_MPP, MSTATUS_MPP_SHIFT, MSTATUS_MPRV, MSTATUS_MXR, MSTATUS_SUM,
};
use crate::exec::{decode, Kind, Op};
use crate::{cause, Bus, Hart, Priv, Trap};

const TLB_SIZE: usize = 1024;
const INVALID: u64 = u64::MAX;

#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Entry {
    vpn: u64,
    /// Offset in RAM of the page's first byte.
    off: usize,
}

#[derive(Clone)]
pub(crate) struct Tlb(Box<[Entry; TLB_SIZE]>);

impl Tlb {
    fn new() -> Tlb {
        Tlb(Box::new(
            [Entry {
                vpn: INVALID,
                off: 0,
            }; TLB_SIZE],
        ))
    }
    /// Look up `vaddr` among entries filled with the same `tag` (bits above the 52 of a
    /// virtual page number: see [`fetch_tag`]).
    #[inline(always)]
    pub(crate) fn lookup_tagged(&self, vaddr: u64, tag: u64) -> Option<usize> {
        let vpn = (vaddr >> 12) | tag;
        let e = &self.0[(vpn as usize) & (TLB_SIZE - 1)];
        if e.vpn == vpn {
            Some(e.off + (vaddr & 0xfff) as usize)
        } else {
            None
        }
    }
    fn fill_tagged(&mut self, vaddr: u64, tag: u64, page_off: usize) {
        let vpn = (vaddr >> 12) | tag;
        self.0[(vpn as usize) & (TLB_SIZE - 1)] = Entry { vpn, off: page_off };
    }
    pub(crate) fn flush(&mut self) {
        for e in self.0.iter_mut() {
            e.vpn = INVALID;
        }
    }
    /// Flip bit `bit` (below 64) of the virtual page number of entry `slot` (below
    /// [`TLB_ENTRIES`]): the number before and after, and the RAM offset of the page the entry
    /// maps; None if the entry is empty. The offset stays as it is, so the entry still maps a
    /// RAM page that it mapped before (both engines use offsets without bounds checks).
    pub(crate) fn flip_vpn(&mut self, slot: usize, bit: u32) -> Option<(u64, u64, usize)> {
        let e = self.0.get_mut(slot)?;
        if e.vpn == INVALID || bit >= 64 {
            return None;
        }
        let before = e.vpn;
        e.vpn ^= 1 << bit;
        Some((before, e.vpn, e.off))
    }
    /// The entries, for the translator's inline lookups (16 bytes each: vpn, then offset).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn as_ptr(&self) -> *const Entry {
        self.0.as_ptr()
    }
}

/// The tag of fetch translations made at privilege `p`. Fetch translations (the fetch TLB,
/// the decoded-op page map and the translator's jump cache) are kept per privilege level, so
/// that a trap or an xRET, which changes the level, need not drop them; they are dropped by
/// what changes a translation: satp writes, SFENCE.VMA, a restore.
#[inline(always)]
pub(crate) fn fetch_tag(p: Priv) -> u64 {
    (p as u64) << 52
}

/// Entries per TLB, for the translator's inline lookups.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const TLB_ENTRIES: usize = TLB_SIZE;

/// Ops per page of the decoded-instruction cache (one slot per 2 bytes).
const OPS_PER_PAGE: usize = 2048;
const VTLB_SIZE: usize = 64;

/// Decoded ops of the RAM pages that hold code, indexed by RAM page number.
///
/// It stays coherent with memory: a page with decoded ops is never mapped in the store TLB, so
/// every store to it takes the slow path, which drops the page's ops first.
pub(crate) struct CodeCache {
    pages: Vec<Option<Box<[Op; OPS_PER_PAGE]>>>,
    /// Recently executed virtual pages and their RAM pages, to switch pages without a walk.
    vtlb: [(u64, usize); VTLB_SIZE],
    /// The virtual page the hart executes from (`INVALID` if none), its RAM page, and that
    /// page's ops. Invariant: when `cur_vpn != INVALID`, `cur_ops` points into the live box
    /// `pages[cur_page]`; every path that drops a box or changes translation resets `cur_vpn`.
    cur_vpn: u64,
    cur_page: usize,
    cur_ops: *const Op,
    /// Counts the pages made code pages: a hart that receives the cache (see
    /// [`crate::hand_over_code`]) and saw an older count may map one of them in its store TLB.
    pub(crate) epoch: u64,
    /// The translator's blocks, if the hart runs them. Blocks exist only in pages that have
    /// a decoded-op box, so the store path that drops a page's ops drops its blocks too.
    #[cfg(target_arch = "x86_64")]
    pub(crate) jit: Option<Box<crate::jit::Jit>>,
}

impl Default for CodeCache {
    fn default() -> Self {
        CodeCache {
            pages: Vec::new(),
            vtlb: [(INVALID, 0); VTLB_SIZE],
            cur_vpn: INVALID,
            cur_page: 0,
            cur_ops: std::ptr::null(),
            epoch: 0,
            #[cfg(target_arch = "x86_64")]
            jit: None,
        }
    }
}

impl CodeCache {
    /// Forget which virtual pages map where (the cache passes to a hart with other mappings).
    pub(crate) fn forget_mappings(&mut self) {
        self.cur_vpn = INVALID;
        self.vtlb = [(INVALID, 0); VTLB_SIZE];
    }
}

// SAFETY: `cur_ops` only ever points into boxes that this same CodeCache owns, so moving the
// cache to another thread moves what it points to along with it.
unsafe impl Send for CodeCache {}

impl Clone for CodeCache {
    fn clone(&self) -> Self {
        // The copy's boxes are new allocations: it must not use this cache's pointer. The
        // copy starts without translated blocks (an engine cache, rebuilt on demand).
        CodeCache {
            pages: self.pages.clone(),
            epoch: self.epoch,
            ..Default::default()
        }
    }
}

#[derive(Clone)]
pub(crate) struct Mmu {
    pub(crate) load: Tlb,
    pub(crate) store: Tlb,
    pub(crate) fetch: Tlb,
    pub(crate) code: CodeCache,
    /// Every fetch translation made since the last flush, by tagged virtual page number
    /// (see [`fetch_tag`]): the fetch TLB and the page caches in front of it may evict, this
    /// does not, so a page walk for a fetch happens exactly at the first fetch from a page after
    /// a flush, in either engine, however each caches (walks set accessed bits: their moments
    /// are guest-visible).
    pub(crate) fetch_pages: std::collections::HashMap<u64, usize>,
    /// Counts translation flushes: a translator's jump-cache entry made under another
    /// generation may map its virtual address differently.
    pub(crate) gen: u64,
    /// Set when translations were flushed or code was dropped: a translated block that is
    /// running must return to its dispatcher after the current instruction.
    pub(crate) jit_exit: bool,
    /// The code cache's `epoch` when this hart last held it: its store TLB maps no page
    /// that was a code page then.
    pub(crate) code_seen: u64,
    /// The tag of the load and store TLBs' entries made now ([`Hart::data_tag`], kept up to
    /// date by [`Hart::retag_data`]).
    pub(crate) dtag: u64,
}

impl Mmu {
    pub fn new() -> Mmu {
        Mmu {
            load: Tlb::new(),
            store: Tlb::new(),
            fetch: Tlb::new(),
            code: CodeCache::default(),
            fetch_pages: std::collections::HashMap::new(),
            gen: 0,
            jit_exit: false,
            code_seen: 0,
            dtag: data_tag(Priv::Machine, 0),
        }
    }
    /// After a change of privilege level or of the mstatus bits that govern loads and
    /// stores: load and store translations are made under `tag` from now on (those of other
    /// tags stay, unused until their tag is back), and the current code page is forgotten.
    /// Fetch translations are tagged with their level and stay.
    fn retag(&mut self, tag: u64) {
        self.dtag = tag;
        self.code.cur_vpn = INVALID;
        self.jit_exit = true;
    }

    /// Forget every translation (the decoded ops are physical and stay).
    pub fn flush(&mut self) {
        self.load.flush();
        self.store.flush();
        self.fetch.flush();
        self.code.forget_mappings();
        self.fetch_pages.clear();
        self.gen = self.gen.wrapping_add(1);
        self.jit_exit = true;
    }
    /// Drop the decoded ops whose instruction bytes may overlap RAM bytes `off..off + len`
    /// (within one page), keeping the rest of the page's ops. A slot at byte `b` holds an
    /// instruction of 2 or 4 bytes, so it may overlap if `b + 4 > off` and `b < off + len`.
    /// (An instruction that crosses a page boundary is never cached.)
    fn invalidate_code_bytes(&mut self, off: usize, len: usize) {
        let page = off >> 12;
        let Some(Some(ops)) = self.code.pages.get_mut(page) else {
            return;
        };
        #[cfg(target_arch = "x86_64")]
        if let Some(jit) = &mut self.code.jit {
            if jit.invalidate_page(page) {
                self.jit_exit = true;
            }
        }
        let start = off & 0xfff;
        let first = start.saturating_sub(3).div_ceil(2);
        let end = (start + len).div_ceil(2).min(OPS_PER_PAGE);
        for op in &mut ops[first..end] {
            *op = Op::default();
        }
    }
    /// Make RAM page `page` a code page (with a box for its decoded ops), if it is not one.
    pub(crate) fn ensure_code_page(&mut self, page: usize, ram_len: usize) {
        let code = &mut self.code;
        if code.pages.len() <= page {
            code.pages
                .resize_with(ram_len.div_ceil(4096).max(page + 1), || None);
        }
        if code.pages[page].is_none() {
            code.pages[page] = Some(Box::new([Op::default(); OPS_PER_PAGE]));
            code.epoch += 1;
            // Stores to this page must now take the slow path, which keeps it coherent.
            self.store.flush();
            self.code_seen = code.epoch;
        }
    }

    /// Drop the decoded ops of RAM page `page`, if it has any.
    fn invalidate_code_page(&mut self, page: usize) {
        if let Some(slot) = self.code.pages.get_mut(page) {
            if slot.take().is_some() {
                if self.code.cur_page == page {
                    self.code.cur_vpn = INVALID;
                }
                for e in self.code.vtlb.iter_mut().filter(|e| e.1 == page) {
                    e.0 = INVALID;
                }
                #[cfg(target_arch = "x86_64")]
                if let Some(jit) = &mut self.code.jit {
                    jit.invalidate_page(page);
                }
                self.jit_exit = true;
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Access {
    Load,
    Store,
    Fetch,
}

impl Access {
    fn page_fault(self, vaddr: u64) -> Trap {
        let c = match self {
            Access::Load => cause::LOAD_PAGE,
            Access::Store => cause::STORE_PAGE,
            Access::Fetch => cause::INSN_PAGE,
        };
        Trap::new(c, vaddr)
    }
    fn access_fault(self, vaddr: u64) -> Trap {
        let c = match self {
            Access::Load => cause::LOAD_ACCESS,
            Access::Store => cause::STORE_ACCESS,
            Access::Fetch => cause::INSN_ACCESS,
        };
        Trap::new(c, vaddr)
    }
}

pub(crate) const PTE_V: u64 = 1;
pub(crate) const PTE_R: u64 = 2;
pub(crate) const PTE_W: u64 = 4;
pub(crate) const PTE_X: u64 = 8;
pub(crate) const PTE_U: u64 = 16;
pub(crate) const PTE_A: u64 = 64;
pub(crate) const PTE_D: u64 = 128;
/// Svpbmt's memory type, bits 62..61.
pub(crate) const PTE_PBMT_SHIFT: u32 = 61;
/// Bit 63 (Svnapot, not implemented) and bits 60..54.
pub(crate) const PTE_RESERVED: u64 = (1 << 63) | (0x7f << 54);

#[inline(always)]
fn ram_read(ram: &[u8], off: usize, size: u8) -> Option<u64> {
    Some(match size {
        1 => *ram.get(off)? as u64,
        2 => u16::from_le_bytes(ram.get(off..off + 2)?.try_into().ok()?) as u64,
        4 => u32::from_le_bytes(ram.get(off..off + 4)?.try_into().ok()?) as u64,
        _ => u64::from_le_bytes(ram.get(off..off + 8)?.try_into().ok()?),
    })
}

#[inline(always)]
fn ram_write(ram: &mut [u8], off: usize, size: u8, v: u64) -> Option<()> {
    match size {
        1 => *ram.get_mut(off)? = v as u8,
        2 => ram
            .get_mut(off..off + 2)?
            .copy_from_slice(&(v as u16).to_le_bytes()),
        4 => ram
            .get_mut(off..off + 4)?
            .copy_from_slice(&(v as u32).to_le_bytes()),
        _ => ram.get_mut(off..off + 8)?.copy_from_slice(&v.to_le_bytes()),
    }
    Some(())
}

/// The tag of load and store translations made at data privilege `p` under mstatus `s`:
/// the bits above the 52 of a virtual page number hold `p`, SUM and MXR (what decides a data
/// access's permission besides the page tables).
fn data_tag(p: Priv, s: u64) -> u64 {
    (p as u64 | ((s & MSTATUS_SUM != 0) as u64) << 2 | ((s & MSTATUS_MXR != 0) as u64) << 3) << 52
}

impl Hart {
    /// The tag of the load and store translations that apply now.
    pub(crate) fn data_tag(&self) -> u64 {
        data_tag(self.data_priv(), self.csr.mstatus)
    }

    /// Make the load and store TLBs use the translations of the current privilege and
    /// mstatus bits: after anything that may have changed them.
    pub(crate) fn retag_data(&mut self) {
        let t = self.data_tag();
        self.mmu.retag(t);
    }

    /// The privilege that loads and stores use (MPRV makes M-mode use MPP's).
    fn data_priv(&self) -> Priv {
        if self.prv == Priv::Machine && self.csr.mstatus & MSTATUS_MPRV != 0 {
            Priv::from_bits((self.csr.mstatus & MSTATUS_MPP) >> MSTATUS_MPP_SHIFT)
        } else {
            self.prv
        }
    }

    /// Physical address of RAM offset, if `paddr` is in RAM.
    #[inline(always)]
    fn ram_offset<B: Bus>(bus: &mut B, paddr: u64, size: u64) -> Option<usize> {
        let off = paddr.wrapping_sub(bus.ram_base());
        let len = bus.ram().len() as u64;
        if off < len && off + size <= len {
            Some(off as usize)
        } else {
            None
        }
    }

    /// Translate a virtual address. On success returns the physical address.
    pub(crate) fn translate<B: Bus>(
        &mut self,
        bus: &mut B,
        vaddr: u64,
        acc: Access,
    ) -> Result<u64, Trap> {
        let prv = if acc == Access::Fetch {
            self.prv
        } else {
            self.data_priv()
        };
        let satp = self.csr.satp;
        let mode = satp >> 60;
        if prv == Priv::Machine || mode == 0 {
            return Ok(vaddr);
        }
        let levels: u32 = if mode == 9 { 4 } else { 3 };
        let va_bits = 12 + 9 * levels;
        // The address must be sign-extended from its top implemented bit.
        let top = (vaddr as i64) >> (va_bits - 1);
        if top != 0 && top != -1 {
            return Err(acc.page_fault(vaddr));
        }
        let mut table = (satp & ((1 << 44) - 1)) << 12;
        let mut level = levels;
        loop {
            level -= 1;
            let idx = (vaddr >> (12 + 9 * level)) & 0x1ff;
            let pte_addr = table + idx * 8;
            let Some(off) = Self::ram_offset(bus, pte_addr, 8) else {
                return Err(acc.access_fault(vaddr));
            };
            bus.ensure_present(off >> 12);
            let mut pte = ram_read(bus.ram(), off, 8).unwrap_or(0);
            // Bits 63 (Svnapot's N) and 60..54 are reserved; bits 62..61 are Svpbmt's memory
            // type when menvcfg.PBMTE allows it (type 3 is reserved). The type changes nothing
            // here: this machine's memory has no caches to bypass.
            let pbmt = (pte >> PTE_PBMT_SHIFT) & 3;
            let pbmte = self.csr.menvcfg & MENVCFG_PBMTE != 0;
            if pte & PTE_V == 0
                || (pte & PTE_R == 0 && pte & PTE_W != 0)
                || pte & PTE_RESERVED != 0
                || (pbmt != 0 && !pbmte)
                || pbmt == 3
            {
                return Err(acc.page_fault(vaddr));
            }
            let ppn = (pte >> 10) & ((1 << 44) - 1);
            if pte & (PTE_R | PTE_X) == 0 {
                // Pointer to the next level (it has no memory type).
                if level == 0 || pte & (PTE_A | PTE_D | PTE_U) != 0 || pbmt != 0 {
                    return Err(acc.page_fault(vaddr));
                }
                table = ppn << 12;
                continue;
            }
            // A leaf: check permissions.
            let u = pte & PTE_U != 0;
            match prv {
                Priv::User if !u => return Err(acc.page_fault(vaddr)),
                Priv::Supervisor
                    if u && (acc == Access::Fetch || self.csr.mstatus & MSTATUS_SUM == 0) =>
                {
                    return Err(acc.page_fault(vaddr))
                }
                _ => {}
            }
            let ok = match acc {
                Access::Load => {
                    pte & PTE_R != 0 || (self.csr.mstatus & MSTATUS_MXR != 0 && pte & PTE_X != 0)
                }
                Access::Store => pte & PTE_W != 0,
                Access::Fetch => pte & PTE_X != 0,
            };
            if !ok {
                return Err(acc.page_fault(vaddr));
            }
            // A superpage must be aligned.
            let lo_mask = (1u64 << (9 * level)) - 1;
            if ppn & lo_mask != 0 {
                return Err(acc.page_fault(vaddr));
            }
            // Hardware update of the accessed and dirty bits.
            let need = PTE_A | if acc == Access::Store { PTE_D } else { 0 };
            if pte & need != need {
                pte |= need;
                ram_write(bus.ram(), off, 8, pte);
                bus.mark_dirty(off >> 12);
                // The page table may share a page with code: only ops decoded from these 8
                // bytes are stale, the rest of the page's ops stay.
                self.mmu.invalidate_code_bytes(off, 8);
            }
            let page = (ppn & !lo_mask) | ((vaddr >> 12) & lo_mask);
            return Ok((page << 12) | (vaddr & 0xfff));
        }
    }

    /// Translate and, when the page is RAM, return its RAM offset after filling the TLB.
    #[inline(never)]
    pub(crate) fn slow_ram<B: Bus>(
        &mut self,
        bus: &mut B,
        vaddr: u64,
        acc: Access,
    ) -> Result<Pa, Trap> {
        let key = (vaddr >> 12) | fetch_tag(self.prv);
        if acc == Access::Fetch {
            if let Some(&page_off) = self.mmu.fetch_pages.get(&key) {
                self.mmu
                    .fetch
                    .fill_tagged(vaddr, fetch_tag(self.prv), page_off);
                return Ok(Pa::Ram(page_off + (vaddr & 0xfff) as usize));
            }
        }
        let paddr = self.translate(bus, vaddr, acc)?;
        let page = paddr & !0xfff;
        if let Some(page_off) = Self::ram_offset(bus, page, 4096) {
            bus.ensure_present(page_off >> 12);
            let tohost_page = self.tohost.map(|t| t & !0xfff);
            match acc {
                Access::Load => self.mmu.load.fill_tagged(vaddr, self.mmu.dtag, page_off),
                Access::Store if tohost_page != Some(page) => {
                    self.mmu.invalidate_code_page(page_off >> 12);
                    bus.mark_dirty(page_off >> 12);
                    self.mmu.store.fill_tagged(vaddr, self.mmu.dtag, page_off)
                }
                Access::Store => return Ok(Pa::Io(paddr)),
                Access::Fetch => {
                    self.mmu.fetch_pages.insert(key, page_off);
                    self.mmu
                        .fetch
                        .fill_tagged(vaddr, fetch_tag(self.prv), page_off)
                }
            }
            Ok(Pa::Ram(page_off + (paddr & 0xfff) as usize))
        } else if let Some(off) = Self::ram_offset(bus, paddr, 1) {
            // RAM that ends inside this page.
            bus.ensure_present(off >> 12);
            Ok(Pa::Ram(off))
        } else {
            Ok(Pa::Io(paddr))
        }
    }

    /// Load `size` bytes (1, 2, 4 or 8) at a virtual address, zero-extended.
    #[inline(always)]
    pub(crate) fn load<B: Bus>(&mut self, bus: &mut B, vaddr: u64, size: u8) -> Result<u64, Trap> {
        debug_assert_eq!(self.mmu.dtag, self.data_tag());
        if let Some(off) = self.mmu.load.lookup_tagged(vaddr, self.mmu.dtag) {
            if (vaddr & 0xfff) + size as u64 <= 4096 {
                if let Some(v) = ram_read(bus.ram(), off, size) {
                    return Ok(v);
                }
            }
        }
        self.load_slow(bus, vaddr, size)
    }

    #[inline(never)]
    fn load_slow<B: Bus>(&mut self, bus: &mut B, vaddr: u64, size: u8) -> Result<u64, Trap> {
        if (vaddr & 0xfff) + size as u64 > 4096 {
            // Misaligned across a page: byte by byte, both pages must translate.
            let mut v = 0u64;
            for i in 0..size as u64 {
                v |= self.load(bus, vaddr.wrapping_add(i), 1)? << (8 * i);
            }
            return Ok(v);
        }
        match self.slow_ram(bus, vaddr, Access::Load)? {
            Pa::Ram(off) => {
                ram_read(bus.ram(), off, size).ok_or(Trap::new(cause::LOAD_ACCESS, vaddr))
            }
            Pa::Io(paddr) => {
                self.stop(crate::Exit::Mmio);
                bus.mmio_read(paddr, size, self.count)
                    .ok_or(Trap::new(cause::LOAD_ACCESS, vaddr))
            }
        }
    }

    /// Store the low `size` bytes of `v` at a virtual address.
    #[inline(always)]
    pub(crate) fn store<B: Bus>(
        &mut self,
        bus: &mut B,
        vaddr: u64,
        size: u8,
        v: u64,
    ) -> Result<(), Trap> {
        debug_assert_eq!(self.mmu.dtag, self.data_tag());
        if let Some(off) = self.mmu.store.lookup_tagged(vaddr, self.mmu.dtag) {
            if (vaddr & 0xfff) + size as u64 <= 4096 && ram_write(bus.ram(), off, size, v).is_some()
            {
                return Ok(());
            }
        }
        self.store_slow(bus, vaddr, size, v)
    }

    #[inline(never)]
    fn store_slow<B: Bus>(
        &mut self,
        bus: &mut B,
        vaddr: u64,
        size: u8,
        v: u64,
    ) -> Result<(), Trap> {
        if (vaddr & 0xfff) + size as u64 > 4096 {
            // Check both pages before writing anything.
            self.translate(bus, vaddr, Access::Store)?;
            self.translate(bus, (vaddr | 0xfff).wrapping_add(1), Access::Store)?;
            for i in 0..size as u64 {
                self.store(bus, vaddr.wrapping_add(i), 1, v >> (8 * i))?;
            }
            return Ok(());
        }
        match self.slow_ram(bus, vaddr, Access::Store)? {
            Pa::Ram(off) => {
                bus.mark_dirty(off >> 12);
                ram_write(bus.ram(), off, size, v).ok_or(Trap::new(cause::STORE_ACCESS, vaddr))
            }
            Pa::Io(paddr) => {
                if Some(paddr) == self.tohost {
                    let off = Self::ram_offset(bus, paddr, size as u64)
                        .ok_or(Trap::new(cause::STORE_ACCESS, vaddr))?;
                    bus.ensure_present(off >> 12);
                    self.mmu.invalidate_code_page(off >> 12);
                    bus.mark_dirty(off >> 12);
                    ram_write(bus.ram(), off, size, v);
                    if v != 0 {
                        self.stop(crate::Exit::ToHost(v));
                    }
                    return Ok(());
                }
                if let Some(off) = Self::ram_offset(bus, paddr, size as u64) {
                    bus.ensure_present(off >> 12);
                    self.mmu.invalidate_code_page(off >> 12);
                    bus.mark_dirty(off >> 12);
                    return ram_write(bus.ram(), off, size, v)
                        .ok_or(Trap::new(cause::STORE_ACCESS, vaddr));
                }
                self.stop(crate::Exit::Mmio);
                if bus.mmio_write(paddr, size, v, self.count) {
                    Ok(())
                } else {
                    Err(Trap::new(cause::STORE_ACCESS, vaddr))
                }
            }
        }
    }

    /// The decoded op at PC; a fetch fault gives a `FetchFault` op and sets `fetch_fault`.
    #[inline(always)]
    pub(crate) fn fetch_op<B: Bus>(&mut self, bus: &mut B) -> Op {
        let pc = self.pc;
        let code = &self.mmu.code;
        if pc >> 12 == code.cur_vpn {
            // SAFETY: cur_vpn is valid, so cur_ops points to the OPS_PER_PAGE ops of a live
            // box (see CodeCache), and the index is masked into range.
            let op = unsafe { *code.cur_ops.add(((pc >> 1) as usize) & (OPS_PER_PAGE - 1)) };
            if op.kind != Kind::Undecoded {
                return op;
            }
        }
        match self.fetch_op_slow(bus) {
            Ok(op) => op,
            Err(t) => {
                self.fetch_fault = t;
                Op {
                    kind: Kind::FetchFault,
                    ..Op::default()
                }
            }
        }
    }

    #[inline(never)]
    fn fetch_op_slow<B: Bus>(&mut self, bus: &mut B) -> Result<Op, Trap> {
        let pc = self.pc;
        let ftag = fetch_tag(self.prv);
        let vpn = (pc >> 12) | ftag;
        let code = &mut self.mmu.code;
        let (tag, page) = code.vtlb[(vpn as usize) & (VTLB_SIZE - 1)];
        if tag == vpn {
            if let Some(Some(ops)) = code.pages.get(page) {
                let op = ops[((pc >> 1) as usize) & (OPS_PER_PAGE - 1)];
                if op.kind != Kind::Undecoded {
                    code.cur_ops = ops.as_ptr();
                    code.cur_vpn = pc >> 12;
                    code.cur_page = page;
                    return Ok(op);
                }
            }
        }
        if pc & 0xfff == 0xffe {
            // A 32-bit instruction here crosses into the next page: it is not cached.
            let raw = self.fetch(bus)?;
            if raw & 3 == 3 {
                return Ok(decode(raw));
            }
        }
        let off = match self.mmu.fetch.lookup_tagged(pc, ftag) {
            Some(off) => off,
            None => match self.slow_ram(bus, pc, Access::Fetch)? {
                Pa::Ram(off) => off,
                Pa::Io(_) => return Err(Trap::new(cause::INSN_ACCESS, pc)),
            },
        };
        let page = off >> 12;
        self.mmu.ensure_code_page(page, bus.ram().len());
        let code = &mut self.mmu.code;
        let slot = ((pc >> 1) as usize) & (OPS_PER_PAGE - 1);
        let ops = code.pages[page].as_mut().expect("page was just filled");
        if ops[slot].kind == Kind::Undecoded {
            let lo = ram_read(bus.ram(), off, 2).ok_or(Trap::new(cause::INSN_ACCESS, pc))? as u32;
            let raw = if lo & 3 == 3 {
                lo | (ram_read(bus.ram(), off + 2, 2).ok_or(Trap::new(cause::INSN_ACCESS, pc))?
                    as u32)
                    << 16
            } else {
                lo
            };
            ops[slot] = decode(raw);
        }
        let op = ops[slot];
        code.cur_ops = ops.as_ptr();
        code.vtlb[(vpn as usize) & (VTLB_SIZE - 1)] = (vpn, page);
        code.cur_vpn = pc >> 12;
        code.cur_page = page;
        Ok(op)
    }

    /// Whether the op at RAM offset `off` is decoded (for tests of the cache's coherence).
    #[cfg(test)]
    pub(crate) fn is_decoded(&self, off: usize) -> bool {
        self.mmu
            .code
            .pages
            .get(off >> 12)
            .and_then(|p| p.as_ref())
            .is_some_and(|ops| ops[(off & 0xfff) >> 1].kind != Kind::Undecoded)
    }

    /// Forget decoded instructions for RAM bytes written from outside the hart (DMA, loaders).
    pub fn invalidate_code(&mut self, ram_off: usize, len: usize) {
        if len == 0 {
            return;
        }
        for page in ram_off >> 12..=(ram_off + len - 1) >> 12 {
            self.mmu.invalidate_code_page(page);
        }
    }

    /// Fetch 16 bits of instruction at a virtual address.
    #[inline(always)]
    pub(crate) fn fetch16<B: Bus>(&mut self, bus: &mut B, vaddr: u64) -> Result<u32, Trap> {
        if let Some(off) = self.mmu.fetch.lookup_tagged(vaddr, fetch_tag(self.prv)) {
            if let Some(v) = ram_read(bus.ram(), off, 2) {
                return Ok(v as u32);
            }
        }
        self.fetch_slow(bus, vaddr)
    }

    #[inline(never)]
    fn fetch_slow<B: Bus>(&mut self, bus: &mut B, vaddr: u64) -> Result<u32, Trap> {
        match self.slow_ram(bus, vaddr, Access::Fetch)? {
            Pa::Ram(off) => ram_read(bus.ram(), off, 2)
                .map(|v| v as u32)
                .ok_or(Trap::new(cause::INSN_ACCESS, vaddr)),
            // Executing from device memory is not supported.
            Pa::Io(_) => Err(Trap::new(cause::INSN_ACCESS, vaddr)),
        }
    }

    /// Fetch the instruction at PC: returns the raw bits (16 or 32 of them).
    #[inline(always)]
    pub(crate) fn fetch<B: Bus>(&mut self, bus: &mut B) -> Result<u32, Trap> {
        let pc = self.pc;
        if pc & 0xfff <= 0xffc {
            if let Some(off) = self.mmu.fetch.lookup_tagged(pc, fetch_tag(self.prv)) {
                if let Some(v) = ram_read(bus.ram(), off, 4) {
                    let v = v as u32;
                    return Ok(if v & 3 == 3 { v } else { v & 0xffff });
                }
            }
        }
        let lo = self.fetch16(bus, pc)?;
        if lo & 3 != 3 {
            return Ok(lo);
        }
        let hi = self.fetch16(bus, pc.wrapping_add(2)).map_err(|mut t| {
            // The fault is reported at the instruction's address... with tval the faulting part.
            t.tval = pc.wrapping_add(2);
            t
        })?;
        Ok(lo | (hi << 16))
    }

    /// Translate a data address for an AMO/LR/SC and return its physical address.
    pub(crate) fn amo_paddr<B: Bus>(
        &mut self,
        bus: &mut B,
        vaddr: u64,
        size: u8,
        acc: Access,
    ) -> Result<u64, Trap> {
        if vaddr & (size as u64 - 1) != 0 {
            let c = if acc == Access::Load {
                cause::LOAD_MISALIGNED
            } else {
                cause::STORE_MISALIGNED
            };
            return Err(Trap::new(c, vaddr));
        }
        let paddr = self.translate(bus, vaddr, acc)?;
        if Self::ram_offset(bus, paddr, size as u64).is_none() {
            // Atomics are supported on RAM only.
            return Err(acc.access_fault(vaddr));
        }
        Ok(paddr)
    }

    pub(crate) fn phys_read<B: Bus>(bus: &mut B, paddr: u64, size: u8) -> u64 {
        let off = Self::ram_offset(bus, paddr, size as u64).unwrap_or(0);
        bus.ensure_present(off >> 12);
        ram_read(bus.ram(), off, size).unwrap_or(0)
    }

    pub(crate) fn phys_write<B: Bus>(&mut self, bus: &mut B, paddr: u64, size: u8, v: u64) {
        if let Some(off) = Self::ram_offset(bus, paddr, size as u64) {
            bus.ensure_present(off >> 12);
            self.mmu.invalidate_code_page(off >> 12);
            bus.mark_dirty(off >> 12);
            ram_write(bus.ram(), off, size, v);
            if Some(paddr) == self.tohost && v != 0 {
                self.stop(crate::Exit::ToHost(v));
            }
        }
    }
}

pub(crate) enum Pa {
    Ram(usize),
    Io(u64),
}
