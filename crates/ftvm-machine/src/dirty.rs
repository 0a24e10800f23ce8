//! Dirty-page tracking: which 4 KiB pages of RAM were written since the tracker was last
//! cleared. It costs nothing on the hot path: a hart reports a page when it maps it in its
//! store TLB (stores through that TLB, inline in translated code too, then need no report),
//! and devices report what they write by DMA. Clearing the bitmap therefore also drops every
//! hart's store translations ([`crate::Machine::take_dirty`]).
//!
//! The bitmap is host state, not machine state: it is in no snapshot and no digest.

/// One bit per 4 KiB page of RAM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtyPages {
    bits: Vec<u64>,
    pages: usize,
}

impl DirtyPages {
    /// A bitmap for `pages` pages, none dirty.
    pub fn new(pages: usize) -> DirtyPages {
        DirtyPages {
            bits: vec![0; pages.div_ceil(64)],
            pages,
        }
    }

    /// Mark page `page` (pages past the end are ignored).
    #[inline(always)]
    pub fn mark(&mut self, page: usize) {
        if page < self.pages {
            self.bits[page / 64] |= 1 << (page % 64);
        }
    }

    /// Mark every page that bytes `off..off + len` of RAM touch.
    pub fn mark_range(&mut self, off: usize, len: usize) {
        if len == 0 {
            return;
        }
        for page in off / 4096..=(off + len - 1) / 4096 {
            self.mark(page);
        }
    }

    /// Clear page `page`.
    pub fn unmark(&mut self, page: usize) {
        if page < self.pages {
            self.bits[page / 64] &= !(1 << (page % 64));
        }
    }

    pub fn is_dirty(&self, page: usize) -> bool {
        page < self.pages && self.bits[page / 64] & (1 << (page % 64)) != 0
    }

    /// How many pages are dirty.
    pub fn count(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Pages the bitmap covers.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// The dirty pages, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.bits.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(i * 64 + b)
            })
        })
    }

    /// Add the pages dirty in `other` (of the same size).
    pub fn union(&mut self, other: &DirtyPages) {
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= b;
        }
    }

    /// The bitmap as bytes: bit p % 8 of byte p / 8 for page p.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.bits.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.truncate(self.pages.div_ceil(8));
        out
    }

    /// A bitmap of `pages` pages from [`DirtyPages::to_bytes`]; None if the length is not
    /// exactly that or a bit past the last page is set.
    pub fn from_bytes(bytes: &[u8], pages: usize) -> Option<DirtyPages> {
        if bytes.len() != pages.div_ceil(8) {
            return None;
        }
        let mut d = DirtyPages::new(pages);
        for (i, &b) in bytes.iter().enumerate() {
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    let p = i * 8 + bit;
                    if p >= pages {
                        return None;
                    }
                    d.mark(p);
                }
            }
        }
        Some(d)
    }

    /// Take the bitmap, leaving one with no page dirty.
    pub fn take(&mut self) -> DirtyPages {
        let fresh = DirtyPages::new(self.pages);
        std::mem::replace(self, fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_ranges_counts_and_iterates_in_order() {
        let mut d = DirtyPages::new(200);
        d.mark(3);
        d.mark(130);
        d.mark(199);
        d.mark(200); // past the end: ignored
        d.mark_range(4096 * 63 + 4095, 2); // pages 63 and 64
        assert_eq!(d.iter().collect::<Vec<_>>(), vec![3, 63, 64, 130, 199]);
        assert_eq!(d.count(), 5);
        assert!(d.is_dirty(64) && !d.is_dirty(65) && !d.is_dirty(1000));
        let taken = d.take();
        assert_eq!(taken.count(), 5);
        assert_eq!(d.count(), 0);
        let bytes = taken.to_bytes();
        assert_eq!(bytes.len(), 25);
        assert_eq!(DirtyPages::from_bytes(&bytes, 200), Some(taken.clone()));
        assert_eq!(DirtyPages::from_bytes(&bytes, 199), None, "length");
        assert_eq!(
            DirtyPages::from_bytes(&[0x80], 7),
            None,
            "a bit past the end"
        );
        let mut all = DirtyPages::new(70);
        all.mark(3);
        let mut other = DirtyPages::new(70);
        other.mark(69);
        all.union(&other);
        assert_eq!(all.iter().collect::<Vec<_>>(), vec![3, 69]);
    }
}
