//! Post-copy RAM: a machine that runs before all of its RAM arrived (a post-copy migration's
//! destination). The pages still missing are in a bitmap; the first access to one (a hart's
//! TLB fill, page walk or atomic, or a device's DMA) asks the source for it and waits until it
//! is in, taking in every page that arrives meanwhile. Pages the source pushes on its own are
//! taken in between runs ([`crate::Machine::poll_postcopy`]). A page is taken in only while it
//! is missing: one that arrives again (pushed and asked for) never overwrites what the guest
//! wrote since.
//!
//! Which page arrives when changes nothing the guest computes: every page holds exactly the
//! source's bytes before the guest first touches it.

use crate::dirty::DirtyPages;

/// Where missing pages come from (the migration's link).
pub trait PageSource: Send {
    /// Ask for `page` (it may come after pages already on their way).
    fn request(&mut self, page: u64);
    /// The next page that arrived, waiting for one if `wait`; an error if the source is gone.
    fn next(&mut self, wait: bool) -> Result<Option<(u64, Vec<u8>)>, String>;
    /// The source is gone while pages are missing: the guest cannot go on. Never returns.
    fn lost(&mut self, why: &str) -> !;
}

pub struct Postcopy {
    missing: DirtyPages,
    requested: DirtyPages,
    left: usize,
    source: Box<dyn PageSource>,
    /// Accesses that had to wait for a page.
    pub faults: u64,
}

impl Postcopy {
    /// RAM whose pages in `missing` are still to come from `source`.
    pub fn new(missing: DirtyPages, source: Box<dyn PageSource>) -> Postcopy {
        Postcopy {
            requested: DirtyPages::new(missing.pages()),
            left: missing.count(),
            missing,
            source,
            faults: 0,
        }
    }

    /// Pages still missing.
    pub fn left(&self) -> usize {
        self.left
    }

    /// Make `page` of `ram` present, waiting for it if it is missing.
    #[inline]
    pub fn ensure(&mut self, ram: &mut [u8], page: usize) {
        if self.missing.is_dirty(page) {
            self.fault(ram, page);
        }
    }

    /// Make every page of `ram[range]` present.
    pub fn ensure_range(&mut self, ram: &mut [u8], range: std::ops::Range<usize>) {
        if range.is_empty() {
            return;
        }
        for page in range.start / 4096..=(range.end - 1) / 4096 {
            self.ensure(ram, page);
        }
    }

    #[cold]
    fn fault(&mut self, ram: &mut [u8], page: usize) {
        self.faults += 1;
        if !self.requested.is_dirty(page) {
            self.requested.mark(page);
            self.source.request(page as u64);
        }
        while self.missing.is_dirty(page) {
            match self.source.next(true) {
                Ok(Some((p, data))) => self.take(ram, p, &data),
                Ok(None) => {}
                Err(e) => self.source.lost(&e),
            }
        }
    }

    /// Take in a page that arrived, if it is still missing (and well formed).
    fn take(&mut self, ram: &mut [u8], page: u64, data: &[u8]) {
        let Ok(p) = usize::try_from(page) else { return };
        if data.len() != 4096 || !self.missing.is_dirty(p) {
            return;
        }
        let Some(dst) = ram.get_mut(p * 4096..p * 4096 + 4096) else {
            return;
        };
        dst.copy_from_slice(data);
        self.missing.unmark(p);
        self.left -= 1;
    }

    /// Take in the pages that arrived, without waiting (`wait`: until none is missing).
    pub fn poll(&mut self, ram: &mut [u8], wait: bool) {
        while self.left > 0 {
            match self.source.next(wait) {
                Ok(Some((p, data))) => self.take(ram, p, &data),
                Ok(None) => return,
                Err(e) => self.source.lost(&e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// A source that answers each request after pushing one page of its own.
    struct Fake {
        pages: Vec<Vec<u8>>,
        push: VecDeque<u64>,
        asked: Arc<Mutex<Vec<u64>>>,
        out: VecDeque<u64>,
    }

    impl PageSource for Fake {
        fn request(&mut self, page: u64) {
            self.asked.lock().unwrap().push(page);
            if let Some(p) = self.push.pop_front() {
                self.out.push_back(p);
            }
            self.out.push_back(page);
        }
        fn next(&mut self, wait: bool) -> Result<Option<(u64, Vec<u8>)>, String> {
            match self.out.pop_front() {
                Some(p) => Ok(Some((p, self.pages[p as usize].clone()))),
                None if wait => Err("nothing more".into()),
                None => Ok(None),
            }
        }
        fn lost(&mut self, why: &str) -> ! {
            panic!("lost: {why}")
        }
    }

    #[test]
    fn a_missing_page_is_fetched_once_and_never_overwrites_a_present_one() {
        let pages: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8 + 1; 4096]).collect();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let mut missing = DirtyPages::new(4);
        for p in [1, 2, 3] {
            missing.mark(p);
        }
        let src = Fake {
            pages,
            push: VecDeque::from([3]),
            asked: asked.clone(),
            out: VecDeque::new(),
        };
        let mut pc = Postcopy::new(missing, Box::new(src));
        let mut ram = vec![0u8; 4 * 4096];
        pc.ensure(&mut ram, 0); // present: nothing asked
        assert!(asked.lock().unwrap().is_empty());
        pc.ensure_range(&mut ram, 4096 + 10..4096 + 20);
        assert_eq!(ram[4096], 2);
        // Page 3 was pushed on the way: taken in, not asked for.
        assert_eq!(ram[3 * 4096], 4);
        assert_eq!(*asked.lock().unwrap(), vec![1]);
        assert_eq!(pc.left(), 1);
        // The guest writes page 3; a late copy of it does not undo the write.
        ram[3 * 4096] = 99;
        pc.take(&mut ram, 3, &[4; 4096]);
        pc.ensure(&mut ram, 2);
        assert_eq!(ram[2 * 4096], 3);
        assert_eq!(ram[3 * 4096], 99);
        assert_eq!(pc.left(), 0);
        assert_eq!(pc.faults, 2);
    }
}
