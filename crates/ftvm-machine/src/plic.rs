//! The SiFive PLIC with level-triggered sources and two contexts per hart (M and S).

use crate::snapshot::{Reader, SnapshotError, Writer};

/// Number of interrupt sources (1..NSRC-1 are usable; 0 means "none").
pub const NSRC: usize = 32;
/// Most contexts: context 2h is hart h's M-mode, 2h + 1 its S-mode (as on QEMU's virt).
pub const MAX_CTX: usize = 2 * crate::MAX_HARTS;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plic {
    priority: [u32; NSRC],
    /// Source levels as driven by the devices.
    level: u32,
    /// Sources claimed and not yet completed.
    claimed: u32,
    /// Contexts that exist (two per hart); the registers of the others read as zero.
    nctx: usize,
    enable: [u32; MAX_CTX],
    threshold: [u32; MAX_CTX],
}

impl Default for Plic {
    /// The PLIC of a one-hart machine.
    fn default() -> Plic {
        Plic::new(1)
    }
}

impl Plic {
    /// A PLIC with the contexts of `harts` harts (1 to [`crate::MAX_HARTS`]).
    pub fn new(harts: usize) -> Plic {
        Plic {
            priority: [0; NSRC],
            level: 0,
            claimed: 0,
            nctx: 2 * harts.clamp(1, crate::MAX_HARTS),
            enable: [0; MAX_CTX],
            threshold: [0; MAX_CTX],
        }
    }

    pub fn set_level(&mut self, src: usize, high: bool) {
        if high {
            self.level |= 1 << src;
        } else {
            self.level &= !(1 << src);
        }
    }

    fn pending(&self) -> u32 {
        self.level & !self.claimed & !1
    }

    /// The best source that context `ctx` would claim now.
    fn best(&self, ctx: usize) -> u32 {
        let cand = self.pending() & self.enable[ctx];
        if cand == 0 {
            return 0;
        }
        let mut best = 0;
        let mut best_prio = self.threshold[ctx];
        for src in 1..NSRC {
            if cand & (1 << src) != 0 && self.priority[src] > best_prio {
                best = src as u32;
                best_prio = self.priority[src];
            }
        }
        best
    }

    /// Whether context `ctx` has an interrupt to take.
    pub fn irq(&self, ctx: usize) -> bool {
        self.best(ctx) != 0
    }

    pub fn read(&mut self, off: u64) -> u32 {
        match off {
            0..=0xfff => self.priority.get(off as usize / 4).copied().unwrap_or(0),
            0x1000 => self.pending(),
            0x1001..=0x1fff => 0,
            0x2000..=0x1f_ffff => {
                let ctx = (off as usize - 0x2000) / 0x80;
                if (off - 0x2000).is_multiple_of(0x80) && ctx < self.nctx {
                    self.enable[ctx]
                } else {
                    0
                }
            }
            0x20_0000.. => {
                let ctx = (off as usize - 0x20_0000) / 0x1000;
                if ctx >= self.nctx {
                    return 0;
                }
                match off & 0xfff {
                    0 => self.threshold[ctx],
                    4 => {
                        let src = self.best(ctx);
                        if src != 0 {
                            self.claimed |= 1 << src;
                        }
                        src
                    }
                    _ => 0,
                }
            }
        }
    }

    pub fn write(&mut self, off: u64, v: u32) {
        match off {
            0..=0xfff => {
                if let Some(p) = self.priority.get_mut(off as usize / 4) {
                    *p = v & 7;
                }
            }
            0x2000..=0x1f_ffff => {
                let ctx = (off as usize - 0x2000) / 0x80;
                if (off - 0x2000).is_multiple_of(0x80) && ctx < self.nctx {
                    self.enable[ctx] = v & !1;
                }
            }
            0x20_0000.. => {
                let ctx = (off as usize - 0x20_0000) / 0x1000;
                if ctx >= self.nctx {
                    return;
                }
                match off & 0xfff {
                    0 => self.threshold[ctx] = v & 7,
                    4 if (v as usize) < NSRC => self.claimed &= !(1 << v),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    pub fn save(&self, w: &mut Writer) {
        for p in self.priority {
            w.u32(p);
        }
        w.u32(self.level);
        w.u32(self.claimed);
        for c in 0..self.nctx {
            w.u32(self.enable[c]);
            w.u32(self.threshold[c]);
        }
    }

    /// The PLIC of a machine with `harts` harts, as [`Plic::save`] wrote it.
    pub fn load(r: &mut Reader, harts: usize) -> Result<Plic, SnapshotError> {
        let mut p = Plic::new(harts);
        for i in 0..NSRC {
            p.priority[i] = r.u32()?;
        }
        p.level = r.u32()?;
        p.claimed = r.u32()?;
        for c in 0..p.nctx {
            p.enable[c] = r.u32()?;
            p.threshold[c] = r.u32()?;
        }
        // Only values a register write can produce (priorities and thresholds 0..7, source 0
        // never enabled or claimed).
        if p.priority.iter().chain(p.threshold.iter()).any(|&v| v > 7)
            || p.enable.iter().any(|&e| e & 1 != 0)
            || p.claimed & 1 != 0
        {
            return Err(SnapshotError::Invalid("PLIC register values"));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_state_is_refused() {
        let mut w = Writer::default();
        Plic::default().save(&mut w);
        assert!(Plic::load(&mut Reader::new(&w.buf), 1).is_ok());
        for (at, v) in [(4, 8u32), (4 * 34, 1), (4 * 35, 9), (4 * 33, 1)] {
            let mut b = w.buf.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            assert!(
                matches!(
                    Plic::load(&mut Reader::new(&b), 1),
                    Err(SnapshotError::Invalid(_))
                ),
                "{at}"
            );
        }
    }

    #[test]
    fn each_hart_has_its_contexts() {
        let mut p = Plic::new(4);
        p.write(10 * 4, 1);
        p.write(0x2000 + 7 * 0x80, 1 << 10); // hart 3, S-mode
        p.set_level(10, true);
        assert_eq!((0..8).filter(|&c| p.irq(c)).collect::<Vec<_>>(), [7]);
        assert_eq!(p.read(0x20_0004 + 7 * 0x1000), 10);
        assert!(!p.irq(7), "claimed");
        // Contexts past the harts' do not exist.
        p.write(0x2000 + 8 * 0x80, 1 << 10);
        assert_eq!(p.read(0x2000 + 8 * 0x80), 0);
        // A one-hart PLIC saves exactly what it always did: two contexts.
        let (mut one, mut four) = (Writer::default(), Writer::default());
        Plic::new(1).save(&mut one);
        p.save(&mut four);
        assert_eq!(one.buf.len() + 6 * 8, four.buf.len());
        assert_eq!(Plic::load(&mut Reader::new(&four.buf), 4).unwrap(), p);
    }

    #[test]
    fn claim_complete_cycle() {
        let mut p = Plic::default();
        p.write(10 * 4, 1); // priority of source 10
        p.write(0x2080, 1 << 10); // enable for context 1
        p.set_level(10, true);
        assert!(p.irq(1));
        assert!(!p.irq(0), "not enabled for context 0");
        assert_eq!(p.read(0x20_1004), 10);
        assert!(!p.irq(1), "claimed");
        p.write(0x20_1004, 10);
        assert!(p.irq(1), "still high after completion");
        p.set_level(10, false);
        assert!(!p.irq(1));
        p.set_level(10, true);
        p.write(0x20_1000, 1); // threshold 1 masks priority 1
        assert!(!p.irq(1));
    }
}
