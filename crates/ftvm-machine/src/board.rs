//! The board: RAM and the devices on the physical bus, and the machine clock.

use ftvm_cpu::Bus;

use crate::plic::Plic;
use crate::uart::Uart;
use crate::virtio::queue::GuestRam;
use crate::virtio::{DeviceOutput, VirtioMmio, MAX_SLOTS, MMIO_BASE, MMIO_SIZE};

pub const TEST_BASE: u64 = 0x0010_0000;
pub const RTC_BASE: u64 = 0x0010_1000;
pub const RTC_IRQ: usize = 11;
pub const CLINT_BASE: u64 = 0x0200_0000;
pub const PLIC_BASE: u64 = 0x0c00_0000;
pub const UART_BASE: u64 = 0x1000_0000;
pub const UART_IRQ: usize = 10;

/// Frequency of the machine timer as the guest is told.
pub const TIMEBASE_HZ: u64 = 10_000_000;
/// Steps per timer tick: the machine's clock runs at 100 million steps per virtual second.
pub const STEPS_PER_TICK: u64 = 10;
/// Nanoseconds of guest time per timer tick.
pub const NANOS_PER_TICK: u64 = 1_000_000_000 / TIMEBASE_HZ;
/// Instructions per millisecond of guest time (when no idle time is skipped).
pub const INSTRUCTIONS_PER_MS: u64 = TIMEBASE_HZ * STEPS_PER_TICK / 1000;

/// How the guest asked the machine to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerEvent {
    /// Power off with this exit code (0 for a clean shutdown).
    Off(u32),
    /// Reset requested with this exit code.
    Reset(u32),
}

pub struct Board {
    pub ram: Vec<u8>,
    pub plic: Plic,
    pub uart: Uart,
    pub msip: bool,
    pub mtimecmp: u64,
    /// The supervisor timer compare value set through SBI.
    pub stimecmp: u64,
    /// Ticks added to the instruction-derived time (idle periods skipped).
    pub time_offset: u64,
    /// Bytes the guest wrote to its console, not yet taken by the host.
    pub console_out: Vec<u8>,
    pub power: Option<PowerEvent>,
    pub virtio: Vec<VirtioMmio>,
    /// Frames and disk requests the devices sent, not yet taken by the host.
    pub outbox: Vec<DeviceOutput>,
    /// RAM ranges (offset, length) that devices wrote since the hart last looked.
    pub dma: Vec<(usize, usize)>,
    /// Wall-clock time (ns since the Unix epoch) that the RTC shows at mtime 0.
    pub rtc_base_ns: u64,
    /// TIME_HIGH as latched by the last TIME_LOW read.
    pub rtc_high: u64,
}

/// `n` zero bytes, or None if the host cannot give them. The memory comes zeroed from the
/// allocator (calloc: fresh pages from the OS are zero and cost nothing until touched), so a
/// large RAM costs what the guest uses.
pub fn zeroed_ram(n: usize) -> Option<Vec<u8>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(n).ok()?;
    // SAFETY: the layout has a non-zero size (checked above).
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` was allocated by the global allocator with the layout of `n` u8s (so
    // capacity n, alignment 1), and all n bytes are initialized (zeroed).
    Some(unsafe { Vec::from_raw_parts(p, n, n) })
}

impl Board {
    /// A board with `ram_size` bytes of zeroed RAM; None if the host cannot allocate it.
    pub fn new(ram_size: usize) -> Option<Board> {
        Some(Board {
            ram: zeroed_ram(ram_size)?,
            plic: Plic::default(),
            uart: Uart::default(),
            msip: false,
            mtimecmp: u64::MAX,
            stimecmp: u64::MAX,
            time_offset: 0,
            console_out: Vec::new(),
            power: None,
            virtio: Vec::new(),
            outbox: Vec::new(),
            dma: Vec::new(),
            rtc_base_ns: 0,
            rtc_high: 0,
        })
    }

    /// The RTC's time in ns at step count `count` (mtime ticks are 100 ns).
    pub fn rtc_ns(&self, count: u64) -> u64 {
        self.rtc_base_ns
            .wrapping_add(self.mtime(count).wrapping_mul(NANOS_PER_TICK))
    }

    fn virtio_slot(paddr: u64) -> Option<(usize, u64)> {
        let off = paddr.checked_sub(MMIO_BASE)?;
        let slot = (off / MMIO_SIZE) as usize;
        (slot < MAX_SLOTS).then_some((slot, off % MMIO_SIZE))
    }

    /// mtime at step count `count`.
    pub fn mtime(&self, count: u64) -> u64 {
        // Wrapping, as the release build always did: a restored idle-tick count may be anything.
        (count / STEPS_PER_TICK).wrapping_add(self.time_offset)
    }

    /// The first step count at which mtime reaches `cmp` (None if never).
    pub fn deadline(&self, cmp: u64) -> Option<u64> {
        if cmp == u64::MAX {
            return None;
        }
        Some(
            cmp.saturating_sub(self.time_offset)
                .saturating_mul(STEPS_PER_TICK),
        )
    }

    fn clint_read(&mut self, off: u64, count: u64) -> u64 {
        match off {
            0 => self.msip as u64,
            0x4000 => self.mtimecmp,
            0x4004 => self.mtimecmp >> 32,
            0xbff8 => self.mtime(count),
            0xbffc => self.mtime(count) >> 32,
            _ => 0,
        }
    }

    fn clint_write(&mut self, off: u64, size: u8, v: u64) {
        match (off, size) {
            (0, _) => self.msip = v & 1 != 0,
            (0x4000, 8) => self.mtimecmp = v,
            (0x4000, _) => self.mtimecmp = (self.mtimecmp & !0xffff_ffff) | (v & 0xffff_ffff),
            (0x4004, _) => self.mtimecmp = (self.mtimecmp & 0xffff_ffff) | (v << 32),
            // mtime is derived from the instruction count and is read-only here.
            _ => {}
        }
    }
}

impl Bus for Board {
    #[inline(always)]
    fn ram(&mut self) -> &mut [u8] {
        &mut self.ram
    }

    #[inline(always)]
    fn ram_base(&self) -> u64 {
        crate::RAM_BASE
    }

    fn mmio_read(&mut self, paddr: u64, size: u8, count: u64) -> Option<u64> {
        if paddr == RTC_BASE {
            let t = self.rtc_ns(count);
            self.rtc_high = t >> 32;
            return Some(t & 0xffff_ffff);
        }
        let b = self;
        match paddr {
            UART_BASE..=0x1000_00ff => Some(b.uart.read(paddr - UART_BASE) as u64),
            CLINT_BASE..=0x0200_ffff => Some(b.clint_read(paddr - CLINT_BASE, count)),
            PLIC_BASE..=0x0c5f_ffff if size == 4 => Some(b.plic.read(paddr - PLIC_BASE) as u64),
            TEST_BASE..=0x0010_0fff => Some(0),
            // Goldfish RTC: TIME_LOW then TIME_HIGH; no alarms.
            RTC_BASE..=0x0010_1fff => Some(if paddr - RTC_BASE == 4 { b.rtc_high } else { 0 }),
            _ => match Self::virtio_slot(paddr) {
                Some((slot, off)) if size == 4 || off >= 0x100 => b
                    .virtio
                    .get(slot)
                    .map(|d| d.read(off) as u64 & (u64::MAX >> (64 - 8 * size as u32))),
                Some((slot, _)) if slot < b.virtio.len() => Some(0),
                _ => None,
            },
        }
    }

    fn mmio_write(&mut self, paddr: u64, size: u8, v: u64, _count: u64) -> bool {
        let b = self;
        match paddr {
            UART_BASE..=0x1000_00ff => {
                if let Some(byte) = b.uart.write(paddr - UART_BASE, v as u8) {
                    b.console_out.push(byte);
                }
            }
            CLINT_BASE..=0x0200_ffff => b.clint_write(paddr - CLINT_BASE, size, v),
            PLIC_BASE..=0x0c5f_ffff if size == 4 => b.plic.write(paddr - PLIC_BASE, v as u32),
            TEST_BASE..=0x0010_0fff => match v & 0xffff {
                0x5555 => b.power = Some(PowerEvent::Off(0)),
                0x3333 => b.power = Some(PowerEvent::Off(((v >> 16) & 0xffff) as u32)),
                0x7777 => b.power = Some(PowerEvent::Reset(0)),
                _ => {}
            },
            RTC_BASE..=0x0010_1fff => {}
            _ => match Self::virtio_slot(paddr) {
                Some((slot, off)) if slot < b.virtio.len() => {
                    if size == 4 {
                        let mut ram = GuestRam::new(&mut b.ram);
                        b.virtio[slot].write(off, v as u32, &mut ram, &mut b.outbox);
                        b.dma.extend(ram.1);
                    }
                }
                _ => return false,
            },
        }
        true
    }

    fn time(&mut self, count: u64) -> u64 {
        self.mtime(count)
    }
}
