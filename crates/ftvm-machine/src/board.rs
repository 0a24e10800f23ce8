//! The board: RAM and the devices on the physical bus, and the machine clock.

use ftvm_cpu::Bus;

use crate::dirty::DirtyPages;
use crate::plic::Plic;
use crate::postcopy::Postcopy;
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
/// Instructions per millisecond of guest time at the default rate (when no idle time is
/// skipped).
pub const INSTRUCTIONS_PER_MS: u64 = TIMEBASE_HZ * STEPS_PER_TICK / 1000;

/// The clock's rate is a number of steps per tick in fixed point with this many fraction bits:
/// a rate of `r` means `r / 2^16` steps per tick.
pub const RATE_FRAC_BITS: u32 = 16;
/// The default rate, [`STEPS_PER_TICK`] steps per tick: a machine at this rate from count 0
/// has exactly the clock of an ftvm without rates (`mtime = count / 10 + idle ticks`).
pub const DEFAULT_RATE: u64 = STEPS_PER_TICK << RATE_FRAC_BITS;
/// The slowest rate a machine accepts: 1/16 step per tick (guest time runs 160 times faster
/// than at the default rate for the same instructions).
pub const MIN_RATE: u64 = 1 << (RATE_FRAC_BITS - 4);
/// The fastest rate a machine accepts: 100,000 steps per tick (a trillion steps per second of
/// guest time).
pub const MAX_RATE: u64 = 100_000 << RATE_FRAC_BITS;

/// How the guest asked the machine to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerEvent {
    /// Power off with this exit code (0 for a clean shutdown).
    Off(u32),
    /// Reset requested with this exit code.
    Reset(u32),
}

/// A hart's timers and software interrupt: the CLINT's msip and mtimecmp, and the
/// supervisor timer set through SBI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HartTimers {
    pub msip: bool,
    pub mtimecmp: u64,
    pub stimecmp: u64,
}

impl Default for HartTimers {
    fn default() -> HartTimers {
        HartTimers {
            msip: false,
            mtimecmp: u64::MAX,
            stimecmp: u64::MAX,
        }
    }
}

pub struct Board {
    pub ram: Vec<u8>,
    pub plic: Plic,
    pub uart: Uart,
    /// One per hart.
    pub timers: Vec<HartTimers>,
    /// The machine's step count when the running hart's own count was zero: the hart passes
    /// its own count to the bus, the clock runs on the machine's (the sum of all harts').
    /// Set before each run of a hart; not machine state.
    pub count_base: u64,
    /// mtime at `rate_anchor`: the ticks the instructions before the anchor made, plus every
    /// tick that passed without instructions (idle time, catching up with a host clock).
    pub time_offset: u64,
    /// Steps per tick, in fixed point ([`RATE_FRAC_BITS`] fraction bits), from `rate_anchor`
    /// on; always within [`MIN_RATE`, `MAX_RATE`].
    pub rate: u64,
    /// The step count at which `rate` took effect (never after the machine's count).
    pub rate_anchor: u64,
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
    /// Pages of RAM written since the bitmap was last taken (host state, see crate::dirty).
    pub dirty: DirtyPages,
    /// RAM still arriving (a post-copy migration's destination), see crate::postcopy.
    pub postcopy: Option<Postcopy>,
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
            dirty: DirtyPages::new(ram_size.div_ceil(4096)),
            postcopy: None,
            plic: Plic::default(),
            uart: Uart::default(),
            timers: vec![HartTimers::default()],
            count_base: 0,
            time_offset: 0,
            rate: DEFAULT_RATE,
            rate_anchor: 0,
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

    /// Ticks made by the steps from the anchor to `count` at the current rate (none before the
    /// anchor): `floor((count - anchor) * 2^16 / rate)`, exact in integers.
    fn ticks_since_anchor(&self, count: u64) -> u64 {
        let steps = count.saturating_sub(self.rate_anchor);
        let rate = self.rate.max(1);
        if steps <= u64::MAX >> RATE_FRAC_BITS {
            (steps << RATE_FRAC_BITS) / rate
        } else {
            // Below 2^80 fits a u128; a quotient past u64 (rates under one step per tick
            // after more than 2^64 / 2^16 steps, centuries of running) saturates.
            let q = ((steps as u128) << RATE_FRAC_BITS) / rate as u128;
            u64::try_from(q).unwrap_or(u64::MAX)
        }
    }

    /// mtime at step count `count`: `time_offset + floor((count - rate_anchor) * 2^16 / rate)`,
    /// non-decreasing in `count`. At the default rate and anchor 0 this is `count / 10` plus
    /// the idle ticks, as it always was.
    pub fn mtime(&self, count: u64) -> u64 {
        // Wrapping, as the release build always did: a restored idle-tick count may be anything.
        self.ticks_since_anchor(count)
            .wrapping_add(self.time_offset)
    }

    /// The first step count at which mtime reaches `cmp` (None if never): the exact inverse of
    /// [`Board::mtime`] (a count past `u64::MAX` is given as `u64::MAX`, as it always was).
    pub fn deadline(&self, cmp: u64) -> Option<u64> {
        if cmp == u64::MAX {
            return None;
        }
        // The ticks the steps after the anchor must make; none: the anchor (or any count
        // before it, where mtime is the same) already reaches cmp.
        let need = cmp.saturating_sub(self.time_offset);
        if need == 0 {
            return Some(0);
        }
        // The least k with floor(k * 2^16 / rate) >= need, i.e. k * 2^16 >= need * rate.
        let steps = (need as u128 * self.rate.max(1) as u128).div_ceil(1 << RATE_FRAC_BITS);
        Some(
            u64::try_from(steps)
                .unwrap_or(u64::MAX)
                .saturating_add(self.rate_anchor),
        )
    }

    /// From `count` on, the clock runs at `rate` steps per tick (fixed point, clamped to
    /// [`MIN_RATE`, `MAX_RATE`]). mtime at `count` is unchanged (the fraction of a tick the
    /// steps since the last anchor made is dropped), so time never goes backwards.
    pub fn set_rate(&mut self, count: u64, rate: u64) {
        self.time_offset = self.mtime(count);
        self.rate_anchor = count;
        self.rate = rate.clamp(MIN_RATE, MAX_RATE);
    }

    /// Whether the clock is the one of a machine that never changed its rate (a snapshot of it
    /// needs no clock fields: version 1).
    pub fn default_clock(&self) -> bool {
        self.rate == DEFAULT_RATE && self.rate_anchor == 0
    }

    /// CLINT layout: msip of hart h at 4h, mtimecmp of hart h at 0x4000 + 8h, mtime at
    /// 0xbff8. Registers of harts the machine does not have read as zero.
    fn clint_read(&mut self, off: u64, count: u64) -> u64 {
        let t = |i: u64| self.timers.get(i as usize);
        match off {
            0..=0x3fff => t(off / 4).map_or(0, |t| (off.is_multiple_of(4) && t.msip) as u64),
            0xbff8 => self.mtime(count),
            0xbffc => self.mtime(count) >> 32,
            0x4000..=0xbff7 => t((off - 0x4000) / 8).map_or(0, |t| match off % 8 {
                0 => t.mtimecmp,
                4 => t.mtimecmp >> 32,
                _ => 0,
            }),
            _ => 0,
        }
    }

    fn clint_write(&mut self, off: u64, size: u8, v: u64) {
        match off {
            0..=0x3fff if off.is_multiple_of(4) => {
                if let Some(t) = self.timers.get_mut(off as usize / 4) {
                    t.msip = v & 1 != 0;
                }
            }
            // mtime is derived from the instruction count and is read-only here.
            0x4000..=0xbff7 => {
                let Some(t) = self.timers.get_mut((off as usize - 0x4000) / 8) else {
                    return;
                };
                let c = &mut t.mtimecmp;
                match (off % 8, size) {
                    (0, 8) => *c = v,
                    (0, _) => *c = (*c & !0xffff_ffff) | (v & 0xffff_ffff),
                    (4, _) => *c = (*c & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
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

    #[inline(always)]
    fn mark_dirty(&mut self, page: usize) {
        self.dirty.mark(page);
    }

    #[inline(always)]
    fn ensure_present(&mut self, page: usize) {
        if let Some(p) = &mut self.postcopy {
            p.ensure(&mut self.ram, page);
        }
    }

    fn mmio_read(&mut self, paddr: u64, size: u8, count: u64) -> Option<u64> {
        let count = count.wrapping_add(self.count_base);
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
                        let mut ram = GuestRam::arriving(&mut b.ram, b.postcopy.as_mut());
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
        self.mtime(count.wrapping_add(self.count_base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a fixed stream of test values.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        /// Mostly small values, sometimes any: both the common and the extreme cases.
        fn value(&mut self) -> u64 {
            let v = self.next();
            match self.next() % 4 {
                0 => v,
                1 => v >> 20,
                2 => v >> 40,
                _ => v % 1000,
            }
        }
        fn rate(&mut self) -> u64 {
            match self.next() % 6 {
                0 => MIN_RATE,
                1 => MAX_RATE,
                2 => DEFAULT_RATE,
                _ => MIN_RATE + self.next() % (MAX_RATE - MIN_RATE + 1),
            }
        }
    }

    fn board() -> Board {
        Board::new(0).unwrap()
    }

    /// `deadline(cmp)` is the first count at which mtime reaches `cmp`.
    fn check_inverse(b: &Board, cmp: u64) {
        let Some(d) = b.deadline(cmp) else {
            assert_eq!(cmp, u64::MAX);
            return;
        };
        if d < u64::MAX {
            assert!(b.mtime(d) >= cmp, "mtime({d}) = {} < {cmp}", b.mtime(d));
        } else {
            // Saturated: no count below reaches it.
            assert!(b.mtime(d - 1) < cmp);
        }
        if d > 0 {
            assert!(
                b.mtime(d - 1) < cmp,
                "mtime({}) = {} already reaches {cmp}",
                d - 1,
                b.mtime(d - 1)
            );
        }
    }

    #[test]
    fn the_default_clock_is_count_over_ten_plus_idle_ticks() {
        let mut r = Rng(0x1234_5678_9abc_def1);
        for _ in 0..100_000 {
            let mut b = board();
            b.time_offset = r.value() >> 8;
            let count = r.value();
            assert_eq!(b.mtime(count), count / 10 + b.time_offset);
            let cmp = r.value();
            let old = cmp.saturating_sub(b.time_offset).saturating_mul(10);
            assert_eq!(b.deadline(cmp), (cmp != u64::MAX).then_some(old));
        }
    }

    #[test]
    fn deadline_is_the_inverse_of_mtime_across_rate_changes() {
        let mut r = Rng(0xfeed_beef_0bad_cafe);
        for _ in 0..2_000 {
            let mut b = board();
            // Offsets and counts that leave room (below 2^62 ticks and 2^51 steps: at the
            // slowest rate, under 2^55 ticks): mtime neither wraps nor saturates.
            b.time_offset = r.value() >> 2;
            let mut count = r.value() >> 14;
            for _ in 0..20 {
                let before = b.mtime(count);
                b.set_rate(count, r.rate());
                assert_eq!(b.mtime(count), before, "a rate change keeps the time");
                if r.next().is_multiple_of(4) {
                    b.time_offset += r.value() >> 4;
                }
                let now = b.mtime(count);
                for _ in 0..20 {
                    let cmp = match r.next() % 4 {
                        0 => now.saturating_add(r.value() % 5_000),
                        1 => now.saturating_sub(r.value() % 5_000),
                        2 => now.saturating_add(r.value()),
                        _ => r.value(),
                    };
                    check_inverse(&b, cmp);
                }
                check_inverse(&b, u64::MAX);
                check_inverse(&b, now);
                check_inverse(&b, now + 1);
                count = count.saturating_add(r.value() % (1 << 30));
            }
        }
    }

    #[test]
    fn time_never_goes_backwards_through_rate_changes() {
        let mut r = Rng(42);
        let mut b = board();
        let (mut count, mut last) = (0u64, 0u64);
        for _ in 0..100_000 {
            if r.next().is_multiple_of(3) {
                b.set_rate(count, r.rate());
            }
            let t = b.mtime(count);
            assert!(t >= last, "at {count}: {t} after {last}");
            last = t;
            // Sometimes one step, sometimes many.
            count += if r.next().is_multiple_of(2) {
                1
            } else {
                r.next() % 100_000_000
            };
        }
        // The slope: a thousand ticks at 2.5 steps per tick take 2,500 steps.
        let mut b = board();
        b.set_rate(7, 5 << (RATE_FRAC_BITS - 1));
        assert_eq!(b.mtime(7 + 2_500) - b.mtime(7), 1_000);
        assert_eq!(b.deadline(b.mtime(7) + 1_000), Some(7 + 2_500));
    }

    #[test]
    fn extreme_counts_and_rates_do_not_overflow() {
        for rate in [MIN_RATE, 1, u64::MAX, DEFAULT_RATE, MAX_RATE, 0] {
            for anchor in [0, 1, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
                for offset in [0, 1, u64::MAX / 3, u64::MAX] {
                    let mut b = board();
                    b.time_offset = offset;
                    b.rate_anchor = anchor;
                    b.rate = rate;
                    for count in [0, 1, anchor, anchor.saturating_add(1), u64::MAX] {
                        let _ = b.mtime(count);
                        let mut c = b.clone_clock();
                        c.set_rate(count, rate);
                        assert!((MIN_RATE..=MAX_RATE).contains(&c.rate));
                    }
                    for cmp in [0, 1, offset, u64::MAX - 1, u64::MAX] {
                        let _ = b.deadline(cmp);
                    }
                }
            }
        }
        // In range: a count of 2^64 - 1 at the slowest and fastest rates.
        let mut b = board();
        b.set_rate(0, MIN_RATE);
        assert_eq!(b.mtime(u64::MAX), u64::MAX, "saturates (2^68 ticks)");
        b.set_rate(0, MAX_RATE);
        assert_eq!(b.mtime(u64::MAX), u64::MAX / 100_000);
        check_inverse(&b, u64::MAX / 100_000);
        check_inverse(&b, u64::MAX / 100_000 + 1);
    }

    impl Board {
        fn clone_clock(&self) -> Board {
            let mut b = board();
            b.time_offset = self.time_offset;
            b.rate = self.rate;
            b.rate_anchor = self.rate_anchor;
            b
        }
    }
}
