//! Split virtqueues (virtio 1.1, 2.6): walking descriptor chains with every address, length and
//! index checked, and returning used buffers.

use thiserror::Error;

use crate::RAM_BASE;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;

/// Why a chain could not be used. Any of these means the driver broke the protocol: the device
/// stops and asks for a reset (virtio 1.1, 2.1.2, DEVICE_NEEDS_RESET).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum QueueError {
    #[error("queue is not set up")]
    NotReady,
    #[error("ring or descriptor table outside guest RAM")]
    RingOutOfRange,
    #[error("descriptor index {0} out of range")]
    BadIndex(u16),
    #[error("descriptor chain loops or is longer than the queue")]
    Loop,
    #[error("buffer {addr:#x}+{len} outside guest RAM")]
    BufferOutOfRange { addr: u64, len: u32 },
    #[error("indirect descriptors were not negotiated")]
    Indirect,
    #[error("a device-readable buffer follows a device-writable one")]
    Order,
    #[error("the available index jumped by more than the queue size")]
    AvailIdx,
}

/// Guest RAM as devices see it: bounds-checked accesses by guest physical address. The RAM
/// offsets written are recorded, so that decoded instructions there can be dropped. RAM that is
/// still arriving (post-copy) is brought in before the bytes are read or written.
pub struct GuestRam<'a>(
    pub &'a mut [u8],
    pub Vec<(usize, usize)>,
    pub Option<&'a mut crate::postcopy::Postcopy>,
);

impl<'a> GuestRam<'a> {
    pub fn new(mem: &'a mut [u8]) -> GuestRam<'a> {
        GuestRam(mem, Vec::new(), None)
    }
    /// RAM whose missing pages `postcopy` brings in.
    pub fn arriving(
        mem: &'a mut [u8],
        postcopy: Option<&'a mut crate::postcopy::Postcopy>,
    ) -> GuestRam<'a> {
        GuestRam(mem, Vec::new(), postcopy)
    }
    /// The RAM offsets of `len` bytes at `addr`, if they lie in RAM (a check only).
    pub fn range(&self, addr: u64, len: u64) -> Option<std::ops::Range<usize>> {
        let off = addr.checked_sub(RAM_BASE)?;
        let end = off.checked_add(len)?;
        if end <= self.0.len() as u64 {
            Some(off as usize..end as usize)
        } else {
            None
        }
    }
    /// The offsets of `len` bytes at `addr`, present.
    fn access(&mut self, addr: u64, len: u64) -> Option<std::ops::Range<usize>> {
        let r = self.range(addr, len)?;
        if let Some(p) = &mut self.2 {
            p.ensure_range(self.0, r.clone());
        }
        Some(r)
    }
    pub fn read(&mut self, addr: u64, len: u64) -> Option<&[u8]> {
        let r = self.access(addr, len)?;
        Some(&self.0[r])
    }
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Option<()> {
        let r = self.access(addr, data.len() as u64)?;
        self.1.push((r.start, r.len()));
        self.0[r].copy_from_slice(data);
        Some(())
    }
    pub fn u16(&mut self, addr: u64) -> Option<u16> {
        Some(u16::from_le_bytes(self.read(addr, 2)?.try_into().ok()?))
    }
    pub fn u32(&mut self, addr: u64) -> Option<u32> {
        Some(u32::from_le_bytes(self.read(addr, 4)?.try_into().ok()?))
    }
    pub fn u64(&mut self, addr: u64) -> Option<u64> {
        Some(u64::from_le_bytes(self.read(addr, 8)?.try_into().ok()?))
    }
}

/// A buffer of a chain: guest physical address and length (already checked to be in RAM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
}

/// A descriptor chain taken from the available ring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub readable: Vec<Buf>,
    pub writable: Vec<Buf>,
}

impl Chain {
    /// Total length of the device-readable buffers. Nothing is read: a device checks this
    /// against its limits before it copies anything.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|b| b.len as u64).sum()
    }
    /// Total length of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|b| b.len as u64).sum()
    }
    /// Copy the device-readable bytes from offset `skip` of the chain into `out`, as many as
    /// fit; returns the bytes copied. The caller sizes `out`, so the copy is bounded by what
    /// the device accepts, never by what the driver claims.
    pub fn read_into(&self, ram: &mut GuestRam, mut skip: u64, out: &mut [u8]) -> usize {
        let mut done = 0;
        for b in &self.readable {
            if done == out.len() {
                break;
            }
            let len = b.len as u64;
            if skip >= len {
                skip -= len;
                continue;
            }
            let n = (len - skip).min((out.len() - done) as u64);
            let Some(src) = ram.read(b.addr + skip, n) else {
                break;
            };
            out[done..done + src.len()].copy_from_slice(src);
            done += src.len();
            skip = 0;
        }
        done
    }
    /// Scatter `data` over the device-writable buffers; returns the bytes written.
    pub fn write_all(&self, ram: &mut GuestRam, data: &[u8]) -> usize {
        self.write_at(ram, 0, data)
    }
    /// Scatter `data` over the device-writable bytes from offset `skip` of the chain; returns
    /// the bytes written (the rest did not fit).
    pub fn write_at(&self, ram: &mut GuestRam, mut skip: u64, data: &[u8]) -> usize {
        let mut done = 0;
        for b in &self.writable {
            if done == data.len() {
                break;
            }
            let len = b.len as u64;
            if skip >= len {
                skip -= len;
                continue;
            }
            let n = (len - skip).min((data.len() - done) as u64) as usize;
            if ram.write(b.addr + skip, &data[done..done + n]).is_none() {
                break;
            }
            done += n;
            skip = 0;
        }
        done
    }
}

/// One split virtqueue, as the driver configured it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Queue {
    pub max: u16,
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Next available-ring slot the device will look at.
    pub last_avail: u16,
    /// Next used-ring slot the device will fill.
    pub next_used: u16,
}

impl Queue {
    pub fn new(max: u16) -> Queue {
        Queue {
            max,
            ..Default::default()
        }
    }

    pub fn check_rings(&self, ram: &GuestRam) -> Result<(), QueueError> {
        if !self.ready || self.size == 0 || !self.size.is_power_of_two() || self.size > self.max {
            return Err(QueueError::NotReady);
        }
        let n = self.size as u64;
        let ok = ram.range(self.desc, 16 * n).is_some()
            && ram.range(self.avail, 6 + 2 * n).is_some()
            && ram.range(self.used, 6 + 8 * n).is_some();
        if ok {
            Ok(())
        } else {
            Err(QueueError::RingOutOfRange)
        }
    }

    /// Whether the driver has made buffers available that the device has not taken.
    pub fn has_available(&self, ram: &mut GuestRam) -> bool {
        self.check_rings(ram).is_ok()
            && ram
                .u16(self.avail + 2)
                .is_some_and(|idx| idx != self.last_avail)
    }

    /// Take the next available chain, if any.
    pub fn pop(&mut self, ram: &mut GuestRam) -> Result<Option<Chain>, QueueError> {
        self.check_rings(ram)?;
        let idx = ram.u16(self.avail + 2).ok_or(QueueError::RingOutOfRange)?;
        if idx == self.last_avail {
            return Ok(None);
        }
        if idx.wrapping_sub(self.last_avail) > self.size {
            return Err(QueueError::AvailIdx);
        }
        let slot = (self.last_avail % self.size) as u64;
        let head = ram
            .u16(self.avail + 4 + 2 * slot)
            .ok_or(QueueError::RingOutOfRange)?;
        self.last_avail = self.last_avail.wrapping_add(1);
        let mut chain = Chain {
            head,
            ..Default::default()
        };
        let mut i = head;
        for _ in 0..self.size {
            if i >= self.size {
                return Err(QueueError::BadIndex(i));
            }
            let d = self.desc + 16 * i as u64;
            let addr = ram.u64(d).ok_or(QueueError::RingOutOfRange)?;
            let len = ram.u32(d + 8).ok_or(QueueError::RingOutOfRange)?;
            let flags = ram.u16(d + 12).ok_or(QueueError::RingOutOfRange)?;
            let next = ram.u16(d + 14).ok_or(QueueError::RingOutOfRange)?;
            if flags & DESC_F_INDIRECT != 0 {
                return Err(QueueError::Indirect);
            }
            if ram.range(addr, len as u64).is_none() {
                return Err(QueueError::BufferOutOfRange { addr, len });
            }
            let b = Buf { addr, len };
            if flags & DESC_F_WRITE != 0 {
                chain.writable.push(b);
            } else if chain.writable.is_empty() {
                chain.readable.push(b);
            } else {
                return Err(QueueError::Order);
            }
            if flags & DESC_F_NEXT == 0 {
                return Ok(Some(chain));
            }
            i = next;
        }
        Err(QueueError::Loop)
    }

    /// Return a chain to the driver with `written` bytes written into it.
    pub fn push_used(
        &mut self,
        ram: &mut GuestRam,
        head: u16,
        written: u32,
    ) -> Result<(), QueueError> {
        self.check_rings(ram)?;
        let slot = (self.next_used % self.size) as u64;
        let e = self.used + 4 + 8 * slot;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&(head as u32).to_le_bytes());
        elem[4..].copy_from_slice(&written.to_le_bytes());
        ram.write(e, &elem).ok_or(QueueError::RingOutOfRange)?;
        self.next_used = self.next_used.wrapping_add(1);
        ram.write(self.used + 2, &self.next_used.to_le_bytes())
            .ok_or(QueueError::RingOutOfRange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: u64 = RAM_BASE + 0x1000;
    const DESC: u64 = Q;
    const AVAIL: u64 = Q + 0x100;
    const USED: u64 = Q + 0x200;

    fn setup(ram: &mut Vec<u8>) -> Queue {
        ram.resize(0x10000, 0);
        Queue {
            max: 8,
            size: 8,
            ready: true,
            desc: DESC,
            avail: AVAIL,
            used: USED,
            ..Default::default()
        }
    }
    fn desc(ram: &mut [u8], i: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut g = GuestRam::new(ram);
        let d = DESC + 16 * i;
        g.write(d, &addr.to_le_bytes()).unwrap();
        g.write(d + 8, &len.to_le_bytes()).unwrap();
        g.write(d + 12, &flags.to_le_bytes()).unwrap();
        g.write(d + 14, &next.to_le_bytes()).unwrap();
    }
    fn offer(ram: &mut [u8], slot: u16, head: u16, idx: u16) {
        let mut g = GuestRam::new(ram);
        g.write(AVAIL + 4 + 2 * slot as u64, &head.to_le_bytes())
            .unwrap();
        g.write(AVAIL + 2, &idx.to_le_bytes()).unwrap();
    }

    #[test]
    fn walks_a_chain_and_returns_it() {
        let mut ram = Vec::new();
        let mut q = setup(&mut ram);
        desc(&mut ram, 0, RAM_BASE + 0x4000, 16, DESC_F_NEXT, 1);
        desc(&mut ram, 1, RAM_BASE + 0x5000, 512, DESC_F_WRITE, 0);
        offer(&mut ram, 0, 0, 1);
        let c = q.pop(&mut GuestRam::new(&mut ram)).unwrap().unwrap();
        assert_eq!(c.readable.len(), 1);
        assert_eq!(c.writable_len(), 512);
        assert_eq!(c.readable_len(), 16);
        assert_eq!(q.pop(&mut GuestRam::new(&mut ram)).unwrap(), None);
        q.push_used(&mut GuestRam::new(&mut ram), c.head, 512)
            .unwrap();
        assert_eq!(GuestRam::new(&mut ram).u16(USED + 2), Some(1));
    }

    #[test]
    fn read_into_copies_a_window_of_the_readable_bytes() {
        let mut ram = vec![0u8; 0x10000];
        for (i, b) in ram.iter_mut().enumerate() {
            *b = i as u8;
        }
        let c = Chain {
            head: 0,
            readable: vec![
                Buf {
                    addr: RAM_BASE + 0x100,
                    len: 4,
                },
                Buf {
                    addr: RAM_BASE + 0x200,
                    len: 4,
                },
            ],
            writable: vec![],
        };
        let mut g = GuestRam::new(&mut ram);
        let mut out = [0u8; 5];
        assert_eq!(c.read_into(&mut g, 2, &mut out), 5);
        assert_eq!(out, [0x02, 0x03, 0x00, 0x01, 0x02]);
        let mut big = [0u8; 16];
        assert_eq!(c.read_into(&mut g, 7, &mut big), 1);
        assert_eq!(c.read_into(&mut g, 9, &mut big), 0);
    }

    #[test]
    fn malformed_chains_are_refused() {
        let mut ram = Vec::new();
        let mut q = setup(&mut ram);
        // A loop: 0 -> 1 -> 0.
        desc(&mut ram, 0, RAM_BASE + 0x4000, 16, DESC_F_NEXT, 1);
        desc(&mut ram, 1, RAM_BASE + 0x4000, 16, DESC_F_NEXT, 0);
        offer(&mut ram, 0, 0, 1);
        assert_eq!(q.pop(&mut GuestRam::new(&mut ram)), Err(QueueError::Loop));
        // Out of range buffer.
        desc(&mut ram, 2, 0x1234, 16, 0, 0);
        offer(&mut ram, 1, 2, 2);
        assert!(matches!(
            q.pop(&mut GuestRam::new(&mut ram)),
            Err(QueueError::BufferOutOfRange { .. })
        ));
        // Wrapping length.
        desc(&mut ram, 3, RAM_BASE + 0xfff0, u32::MAX, 0, 0);
        offer(&mut ram, 2, 3, 3);
        assert!(q.pop(&mut GuestRam::new(&mut ram)).is_err());
        // Index past the table.
        offer(&mut ram, 3, 200, 4);
        assert_eq!(
            q.pop(&mut GuestRam::new(&mut ram)),
            Err(QueueError::BadIndex(200))
        );
        // Ring outside RAM.
        q.used = u64::MAX - 4;
        assert_eq!(
            q.pop(&mut GuestRam::new(&mut ram)),
            Err(QueueError::RingOutOfRange)
        );
    }
}
