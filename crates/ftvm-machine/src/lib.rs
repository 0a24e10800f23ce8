//! The ftvm board around one to eight harts: RAM at 0x8000_0000, CLINT, PLIC, NS16550A UART,
//! SiFive test finisher, an SBI served by ftvm, a generated device tree, and loading of a Linux
//! Image or a bare-metal ELF. [`Machine::run`] executes up to an exact step count;
//! [`Machine::save`], [`Machine::restore`] and [`Machine::digest`] cover the whole machine state.
//!
//! Several harts take turns on the host thread that runs the machine, in slices of
//! [`SMP_QUANTUM`] steps (see [`Machine::run`]): the machine's step count is the sum of the
//! harts' counts, and every input, stop and digest is placed on it, so the schedule is as
//! deterministic as one hart is.
//!
//! The machine never reads a host clock: `mtime` is the step count divided by the clock's rate
//! (by default [`board::STEPS_PER_TICK`] steps per tick; an [`Input::Rate`] changes it), plus
//! the ticks that passed without instructions.

pub mod board;
pub mod dirty;
pub mod fault;
mod fdt;
mod loader;
pub mod plic;
pub mod postcopy;
mod sbi;
pub mod snapshot;
pub mod uart;
pub mod virtio;

use ftvm_cpu::{
    irq, Csr, Engine, Exit, Hart, JitStats, Priv, ENVCFG_CBCFE, ENVCFG_CBIE_SHIFT, ENVCFG_CBZE,
    MENVCFG_PBMTE,
};
use thiserror::Error;

pub use board::{Board, HartTimers, PowerEvent};
use dirty::DirtyPages;
use snapshot::{Reader, SnapshotError, Writer};
pub use virtio::{DeviceOutput, DiskOp, DiskRequest};

/// Physical address of the first byte of RAM.
pub const RAM_BASE: u64 = 0x8000_0000;
/// Most harts a machine has.
pub const MAX_HARTS: usize = 8;
/// Steps a hart runs before the next one takes its turn, when the machine has several.
pub const SMP_QUANTUM: u64 = 10_000;

/// Smallest and largest RAM sizes accepted.
pub const MIN_RAM: u64 = 16 << 20;
pub const MAX_RAM: u64 = 64 << 30;

#[derive(Debug, Error)]
pub enum MachineError {
    #[error("invalid kernel image: {0}")]
    Kernel(String),
    #[error("invalid ELF program: {0}")]
    Elf(String),
    #[error("initrd does not fit: {0}")]
    Initrd(String),
    #[error("cannot build the device tree: {0}")]
    Fdt(String),
    #[error("RAM size {0} is out of range (16 MiB to 64 GiB, a multiple of 4 KiB)")]
    RamSize(u64),
    #[error("cannot allocate {0} bytes of guest RAM on this host")]
    RamAlloc(u64),
    #[error("too many devices (at most {0})")]
    Devices(usize),
    #[error("{0} harts: a machine has 1 to {MAX_HARTS}")]
    Harts(usize),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// A device on a virtio-mmio slot, as configured at boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A disk of `bytes` bytes (a multiple of 512); `serial` is what GET_ID returns.
    Disk {
        bytes: u64,
        serial: String,
    },
    Net {
        mac: [u8; 6],
    },
    Rng,
}

/// Everything that enters the machine from outside. Each input takes effect at the step count
/// at which it is applied ([`Machine::apply`]): this is the environment boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// One byte for the console (only when [`Machine::console_ready`]).
    Console(u8),
    /// A frame received for the network device in `slot` (only when [`Machine::net_ready`]).
    Frame { slot: usize, frame: Vec<u8> },
    /// The host finished disk request `id` of `slot`; `data` is what a read returned.
    DiskDone {
        slot: usize,
        id: u64,
        ok: bool,
        data: Vec<u8>,
    },
    /// Random bytes for the entropy device in `slot` (when [`Machine::entropy_wanted`]).
    Entropy { slot: usize, bytes: Vec<u8> },
    /// Machine time passes without instructions: idle time, or catching up with a host clock.
    Time { ticks: u64 },
    /// From this count on, machine time advances one tick per `rate / 2^16` steps (fixed
    /// point, [`board::RATE_FRAC_BITS`]; clamped to [`board::MIN_RATE`, `board::MAX_RATE`]):
    /// the host clock policy keeps guest time with the host's whatever the engine's speed.
    /// Time at this count is unchanged: only the slope changes.
    Rate { rate: u64 },
}

/// Something that leaves the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Console(Vec<u8>),
    Device(DeviceOutput),
}

/// Why [`Machine::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunExit {
    /// The step count reached the requested stop.
    StopAt,
    /// The chunk of steps is done: the host may do I/O and call `run` again.
    Yield,
    /// The guest powered the machine off or asked for a reset.
    Power(PowerEvent),
    /// A bare-metal program wrote this value to `tohost`.
    ToHost(u64),
    /// The hart waits for an interrupt and none is pending. `ticks` is how long until the next
    /// timer fires (None: no timer is armed, only outside input can wake it).
    Idle { ticks: Option<u64> },
    /// A device sent something (a frame, a disk request: take it with `take_outputs`), or
    /// waits for entropy (`entropy_wanted`).
    Output,
}

/// Whether `ram_size` is a RAM size a machine may have.
pub fn ram_size_ok(ram_size: u64) -> bool {
    (MIN_RAM..=MAX_RAM).contains(&ram_size) && ram_size.is_multiple_of(4096)
}

/// A hart's state as the SBI's hart state management (HSM) extension reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HartState {
    Started = 0,
    Stopped = 1,
    Suspended = 4,
}

/// Which hart runs and until when, and which harts may run. Machine state (snapshots hold it
/// when the machine has several harts; with one it never changes).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sched {
    /// The hart that runs (and holds the shared code cache).
    cur: usize,
    /// The machine count at which `cur`'s slice ends.
    slice_end: u64,
    /// Steps per slice (`u64::MAX` with one hart: it never yields).
    quantum: u64,
    state: Vec<HartState>,
    /// At WFI (or suspended) with nothing to wake it: skipped until an interrupt line does.
    waiting: Vec<bool>,
}

pub struct Machine {
    harts: Vec<Hart>,
    pub board: Board,
    sched: Sched,
}

impl Machine {
    /// A machine with `ram_size` bytes of zeroed RAM and one hart in reset.
    pub fn new(ram_size: u64) -> Result<Machine, MachineError> {
        Machine::with_harts(ram_size, 1)
    }

    /// A machine with `ram_size` bytes of zeroed RAM and `harts` harts in reset (hart 0
    /// started, the others stopped).
    pub fn with_harts(ram_size: u64, harts: usize) -> Result<Machine, MachineError> {
        if !ram_size_ok(ram_size) {
            return Err(MachineError::RamSize(ram_size));
        }
        if !(1..=MAX_HARTS).contains(&harts) {
            return Err(MachineError::Harts(harts));
        }
        let mut board = Board::new(ram_size as usize).ok_or(MachineError::RamAlloc(ram_size))?;
        board.timers = vec![HartTimers::default(); harts];
        board.plic = plic::Plic::new(harts);
        let mut state = vec![HartState::Stopped; harts];
        state[0] = HartState::Started;
        Ok(Machine {
            harts: (0..harts as u64)
                .map(|i| {
                    let mut h = Hart::new(i);
                    h.set_yield_on_pause(harts > 1);
                    h
                })
                .collect(),
            board,
            sched: Sched {
                cur: 0,
                slice_end: if harts == 1 { u64::MAX } else { SMP_QUANTUM },
                quantum: if harts == 1 { u64::MAX } else { SMP_QUANTUM },
                state,
                waiting: vec![false; harts],
            },
        })
    }

    /// The harts, by hart id.
    pub fn harts(&self) -> &[Hart] {
        &self.harts
    }

    /// Hart `i` (0 is the boot hart), to change from outside (tests, `--engine check`).
    pub fn hart_mut(&mut self, i: usize) -> &mut Hart {
        &mut self.harts[i]
    }

    /// The hart that runs now (or ran last).
    pub fn current_hart(&self) -> usize {
        self.sched.cur
    }

    /// The HSM state of hart `i`.
    pub fn hart_state(&self, i: usize) -> HartState {
        self.sched.state[i]
    }

    /// Run every hart with engine `e`; false (and no change) if the host cannot run it.
    pub fn set_engine(&mut self, e: Engine) -> bool {
        e.supported() && self.harts.iter_mut().all(|h| h.set_engine(e))
    }

    /// What the translator has done so far (it serves every hart).
    pub fn jit_stats(&self) -> JitStats {
        self.harts[self.sched.cur].jit_stats()
    }

    /// Steps executed so far: the sum of every hart's.
    pub fn count(&self) -> u64 {
        self.harts
            .iter()
            .fold(0u64, |a, h| a.saturating_add(h.count()))
    }

    /// Drive every hart's interrupt lines from the device state at the current count.
    fn update_irqs(&mut self) {
        let now = self.board.mtime(self.count());
        let b = &mut self.board;
        b.plic.set_level(board::UART_IRQ, b.uart.irq());
        for d in &b.virtio {
            b.plic.set_level(virtio::FIRST_IRQ + d.slot, d.irq());
        }
        for (i, (h, t)) in self.harts.iter_mut().zip(&b.timers).enumerate() {
            h.set_ext_irq(irq::MTIP, now >= t.mtimecmp);
            h.set_ext_irq(irq::STIP, now >= t.stimecmp);
            h.set_ext_irq(irq::MSIP, t.msip);
            h.set_ext_irq(irq::MEIP, b.plic.irq(2 * i));
            h.set_ext_irq(irq::SEIP, b.plic.irq(2 * i + 1));
        }
    }

    /// The timer compare values of the harts that are not stopped.
    fn armed_timers(&self) -> impl Iterator<Item = u64> + '_ {
        self.board
            .timers
            .iter()
            .zip(&self.sched.state)
            .filter(|(_, &s)| s != HartState::Stopped)
            .flat_map(|(t, _)| [t.mtimecmp, t.stimecmp])
    }

    /// The step count at which the next timer interrupt becomes pending, if one is armed and
    /// not yet pending.
    fn next_deadline(&self) -> Option<u64> {
        let now = self.count();
        self.armed_timers()
            .filter_map(|cmp| self.board.deadline(cmp))
            .filter(|&d| d > now)
            .min()
    }

    /// The ticks until the next timer interrupt becomes pending, if one is armed and not yet
    /// pending: the `Time` that would make it pending at once.
    fn next_timer_ticks(&self) -> Option<u64> {
        let now = self.count();
        let t = self.board.mtime(now);
        self.armed_timers()
            .filter(|&cmp| self.board.deadline(cmp).is_some_and(|d| d > now))
            .map(|cmp| cmp.saturating_sub(t))
            .min()
    }

    /// Whether hart `i` may run now: not stopped, and not waiting unless something wakes it.
    fn runnable(&self, i: usize) -> bool {
        self.sched.state[i] != HartState::Stopped
            && (!self.sched.waiting[i] || self.harts[i].wakes())
    }

    /// Choose the hart that runs next, round-robin from the one after `cur` (`cur` last), and
    /// give it a fresh slice. When none may run but some started harts wait, they all wake (a
    /// WFI may end without a reason). False when no hart can run (all stopped or suspended).
    fn pick(&mut self, now: u64) -> bool {
        let (n, cur) = (self.harts.len(), self.sched.cur);
        let order = (1..=n).map(move |k| (cur + k) % n);
        let next = match order.clone().find(|&i| self.runnable(i)) {
            Some(i) => i,
            None => {
                let s = &mut self.sched;
                for i in 0..n {
                    if s.state[i] == HartState::Started {
                        s.waiting[i] = false;
                    }
                }
                match order
                    .clone()
                    .find(|&i| self.sched.state[i] == HartState::Started)
                {
                    Some(i) => i,
                    None => return false,
                }
            }
        };
        let s = &mut self.sched;
        s.waiting[next] = false;
        if s.state[next] == HartState::Suspended {
            s.state[next] = HartState::Started;
        }
        s.slice_end = now.saturating_add(s.quantum);
        if next != s.cur {
            let (a, b) = (s.cur, next);
            // Another hart may store anywhere: the one that stops loses its reservation.
            self.harts[a].clear_reservation();
            let (from, to) = if a < b {
                let (lo, hi) = self.harts.split_at_mut(b);
                (&mut lo[a], &mut hi[0])
            } else {
                let (lo, hi) = self.harts.split_at_mut(a);
                (&mut hi[0], &mut lo[b])
            };
            ftvm_cpu::hand_over_code(from, to);
            self.sched.cur = next;
        }
        true
    }

    /// Whether any hart may run now.
    fn any_runnable(&self) -> bool {
        (0..self.harts.len()).any(|i| self.runnable(i))
    }

    /// Run until the step count reaches `stop_at`, at most `chunk` steps, or until the guest
    /// needs the host (power, idle, tohost).
    ///
    /// With several harts, the running hart keeps the host thread until its slice ends, it
    /// waits (WFI with nothing pending) or it stops; then the next hart that may run, in
    /// round-robin order, gets a slice of [`SMP_QUANTUM`] steps. Every decision is made at the
    /// top of the loop, after the stop checks, from machine state alone, and every count where
    /// an interrupt line may change (any hart's timer, an MMIO access) starts a turn of the
    /// loop: so a run cut into pieces at any counts ends in the state of one run through them.
    pub fn run(&mut self, stop_at: u64, chunk: u64) -> RunExit {
        self.run_inner::<fn(&mut Hart, &mut Board) -> bool>(stop_at, chunk, None)
    }

    /// [`Machine::run`] with the interpreter, asking `hook` before every step (with the hart
    /// about to take it) whether to stop there; if it says so, the run returns
    /// [`RunExit::Yield`] before that step. The steps taken are the ones `run` takes: a hook
    /// that never stops changes nothing.
    pub fn run_hooked<H: FnMut(&mut Hart, &mut Board) -> bool>(
        &mut self,
        stop_at: u64,
        chunk: u64,
        hook: &mut H,
    ) -> RunExit {
        self.run_inner(stop_at, chunk, Some(hook))
    }

    /// Make the machine ready for its next step, as a run does before it: interrupt lines
    /// driven, the hart that runs next chosen, a pending interrupt taken. A run from here
    /// takes the same steps as from before. False if no hart can run (the machine is idle or
    /// powered off): nothing is taken then.
    pub fn settle(&mut self) -> bool {
        if self.board.power.is_some() {
            return false;
        }
        if !self.turn(self.count()) {
            return false;
        }
        let cur = self.sched.cur;
        self.harts[cur].take_interrupt();
        true
    }

    /// The start of a turn of the run loop at count `now`: interrupt lines driven from the
    /// devices, a new hart picked if the current one cannot go on. False if none can run.
    fn turn(&mut self, now: u64) -> bool {
        self.update_irqs();
        let cur = self.sched.cur;
        !((self.sched.waiting[cur]
            || self.sched.state[cur] != HartState::Started
            || now >= self.sched.slice_end)
            && !self.pick(now))
    }

    fn run_inner<H: FnMut(&mut Hart, &mut Board) -> bool>(
        &mut self,
        stop_at: u64,
        chunk: u64,
        mut hook: Option<&mut H>,
    ) -> RunExit {
        let chunk_end = stop_at.min(self.count().saturating_add(chunk));
        loop {
            if let Some(p) = self.board.power.take() {
                return RunExit::Power(p);
            }
            let now = self.count();
            if now >= stop_at {
                return RunExit::StopAt;
            }
            if now >= chunk_end {
                return RunExit::Yield;
            }
            if !self.turn(now) {
                return RunExit::Idle {
                    ticks: self.next_timer_ticks(),
                };
            }
            let cur = self.sched.cur;
            let mut hard = stop_at.min(self.sched.slice_end);
            if let Some(d) = self.next_deadline() {
                hard = hard.min(d);
            }
            // The chunk's end is only when the host looks again: the run may stop a little
            // before it, where a translated block starts (see Hart::run_to). Every other end
            // (a stop, a hart's slice, a timer) is exact.
            let soft = chunk_end < hard;
            let end = chunk_end.min(hard);
            let hart = &mut self.harts[cur];
            self.board.count_base = now - hart.count();
            let exit = match hook.as_deref_mut() {
                None => hart.run_to(&mut self.board, end - now, soft),
                Some(h) => hart.run_hooked(&mut self.board, end - now, h),
            };
            self.invalidate_dma();
            match exit {
                // Stopped before a block, short of the chunk's end.
                Exit::Budget if soft && self.count() < end => return RunExit::Yield,
                Exit::Budget => {}
                Exit::Mmio => {
                    // Device output, or a device waiting for input the host can give at once:
                    // let the host act at this exact count.
                    if !self.board.outbox.is_empty() || self.entropy_wanted().is_some() {
                        return RunExit::Output;
                    }
                }
                Exit::Sbi => {
                    self.handle_sbi();
                    if !self.any_runnable() {
                        return RunExit::Idle {
                            ticks: self.next_timer_ticks(),
                        };
                    }
                }
                Exit::ToHost(v) => return RunExit::ToHost(v),
                Exit::Hook => return RunExit::Yield,
                // A spinning hart waits for another: its slice ends here.
                Exit::Pause => self.sched.slice_end = self.sched.slice_end.min(self.count()),
                Exit::Wfi => {
                    self.update_irqs();
                    if !self.harts[cur].wakes() {
                        self.sched.waiting[cur] = true;
                        if !self.any_runnable() {
                            return RunExit::Idle {
                                ticks: self.next_timer_ticks(),
                            };
                        }
                    }
                }
            }
        }
    }

    /// Drop decoded instructions where devices wrote guest RAM.
    fn invalidate_dma(&mut self) {
        // The running hart holds the code cache all harts share.
        let hart = &mut self.harts[self.sched.cur];
        for (off, len) in self.board.dma.drain(..) {
            hart.invalidate_code(off, len);
            self.board.dirty.mark_range(off, len);
        }
    }

    /// Apply an input from outside at the current step count.
    pub fn apply(&mut self, input: Input) {
        if let Input::Rate { rate } = input {
            let count = self.count();
            self.board.set_rate(count, rate);
            return;
        }
        let b = &mut self.board;
        let mut ram = virtio::queue::GuestRam::arriving(&mut b.ram, b.postcopy.as_mut());
        match input {
            Input::Console(byte) => b.uart.push_rx(byte),
            Input::Frame { slot, frame } => {
                if let Some(d) = b.virtio.get_mut(slot) {
                    d.net_receive(&mut ram, &frame);
                }
            }
            Input::DiskDone { slot, id, ok, data } => {
                if let Some(d) = b.virtio.get_mut(slot) {
                    d.disk_done(&mut ram, id, ok, &data);
                }
            }
            Input::Entropy { slot, bytes } => {
                if let Some(d) = b.virtio.get_mut(slot) {
                    d.rng_fill(&mut ram, &bytes);
                }
            }
            Input::Time { ticks } => b.time_offset = b.time_offset.saturating_add(ticks),
            Input::Rate { .. } => {} // applied above
        }
        b.dma.extend(ram.1);
        self.invalidate_dma();
    }

    /// The devices on the virtio-mmio slots, in slot order, as they were configured at boot.
    pub fn devices(&self) -> Vec<DeviceSpec> {
        self.board
            .virtio
            .iter()
            .map(|d| match &d.dev {
                virtio::Device::Blk {
                    sectors, serial, ..
                } => DeviceSpec::Disk {
                    bytes: sectors * 512,
                    serial: String::from_utf8_lossy(serial)
                        .trim_end_matches('\0')
                        .to_string(),
                },
                virtio::Device::Net { mac } => DeviceSpec::Net { mac: *mac },
                virtio::Device::Rng => DeviceSpec::Rng,
            })
            .collect()
    }

    /// Whether the machine has disks or network devices, whose host side a snapshot cannot hold.
    pub fn has_host_devices(&self) -> bool {
        self.board
            .virtio
            .iter()
            .any(|d| !matches!(d.dev, virtio::Device::Rng))
    }

    /// Whether the console can take a byte now (the driver listens and has room).
    pub fn console_ready(&self) -> bool {
        self.board.uart.rx_ready()
    }

    /// Whether the network device in `slot` has a receive buffer for a frame now.
    pub fn net_ready(&mut self, slot: usize) -> bool {
        let b = &mut self.board;
        let mut ram = virtio::queue::GuestRam::arriving(&mut b.ram, b.postcopy.as_mut());
        b.virtio.get(slot).is_some_and(|d| d.net_rx_ready(&mut ram))
    }

    /// An entropy device waiting for bytes: its slot and how many it wants.
    pub fn entropy_wanted(&mut self) -> Option<(usize, usize)> {
        let b = &mut self.board;
        let mut ram = virtio::queue::GuestRam::arriving(&mut b.ram, b.postcopy.as_mut());
        b.virtio
            .iter()
            .map(|d| (d.slot, d.rng_wanted(&mut ram)))
            .find(|&(_, n)| n > 0)
    }

    /// Take everything the machine sent out since the last call, console first.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        let b = &mut self.board;
        let mut out = Vec::with_capacity(1 + b.outbox.len());
        if !b.console_out.is_empty() {
            out.push(Output::Console(std::mem::take(&mut b.console_out)));
        }
        out.extend(b.outbox.drain(..).map(Output::Device));
        out
    }

    /// Boot a Linux kernel Image in S-mode on hart 0 of `harts`, with ftvm serving the SBI
    /// (the other harts wait for the kernel to start them through SBI HSM).
    /// `devices` go on the virtio-mmio slots in order; the RTC starts at `rtc_base_ns`.
    pub fn boot_linux(
        ram_size: u64,
        harts: usize,
        kernel: &[u8],
        initrd: Option<&[u8]>,
        cmdline: &str,
        devices: &[DeviceSpec],
        rtc_base_ns: u64,
    ) -> Result<Machine, MachineError> {
        let mut m = Machine::with_harts(ram_size, harts)?;
        if devices.len() > virtio::MAX_SLOTS {
            return Err(MachineError::Devices(virtio::MAX_SLOTS));
        }
        for (slot, d) in devices.iter().enumerate() {
            m.board.virtio.push(match d {
                DeviceSpec::Disk { bytes, serial } => virtio::VirtioMmio::blk(slot, *bytes, serial),
                DeviceSpec::Net { mac } => {
                    virtio::VirtioMmio::new(slot, virtio::Device::Net { mac: *mac })
                }
                DeviceSpec::Rng => virtio::VirtioMmio::new(slot, virtio::Device::Rng),
            });
        }
        m.board.rtc_base_ns = rtc_base_ns;
        let boot = loader::load_linux(
            &mut m.board.ram,
            kernel,
            initrd,
            cmdline,
            devices.len(),
            harts,
        )?;
        for h in &mut m.harts {
            h.set_host_sbi(true);
            // Everything the guest kernel handles itself is delegated to S-mode.
            // Linux never writes scounteren but its vDSO reads `time` from U-mode, as QEMU
            // and OpenSBI machines allow: start with cycle, time and instret open to U-mode.
            for (csr, v) in [
                (Csr::medeleg, 0xb1ff),
                (Csr::mideleg, irq::SSIP | irq::STIP | irq::SEIP),
                (Csr::mcounteren, 7),
                (Csr::scounteren, 7),
                // Cache-block operations open to S-mode (and, through senvcfg, to U-mode),
                // and Svpbmt's memory types in page tables, as OpenSBI sets them up.
                (
                    Csr::menvcfg,
                    (3 << ENVCFG_CBIE_SHIFT) | ENVCFG_CBCFE | ENVCFG_CBZE | MENVCFG_PBMTE,
                ),
            ] {
                let known = h.set_csr(csr, v);
                debug_assert!(known);
            }
        }
        let h = &mut m.harts[0];
        h.set_reg(10, 0);
        h.set_reg(11, boot.dtb);
        h.set_pc(boot.entry);
        h.set_priv(Priv::Supervisor);
        Ok(m)
    }

    /// Load a bare-metal ELF and start `harts` harts in M-mode at its entry point (each
    /// tells which it is by mhartid, as on QEMU).
    pub fn boot_elf(ram_size: u64, harts: usize, elf: &[u8]) -> Result<Machine, MachineError> {
        let mut m = Machine::with_harts(ram_size, harts)?;
        let prog = loader::load_elf(&mut m.board.ram, elf)?;
        for h in &mut m.harts {
            h.set_pc(prog.entry);
            h.set_tohost(prog.tohost);
        }
        m.sched.state.fill(HartState::Started);
        Ok(m)
    }

    /// Everything but RAM, then (when `with_ram`) RAM. One hart: the layout of versions 1
    /// and 2 (the clock's rate only when it changed); several: version 3's, with the schedule
    /// and every hart's state (see docs/snapshot-format.md).
    fn save_state(&self, w: &mut Writer, with_ram: bool) {
        let b = &self.board;
        let s = &self.sched;
        if self.harts.len() == 1 {
            self.harts[0].save(&mut w.buf);
            let t = &b.timers[0];
            w.u64(t.mtimecmp);
            w.u64(t.stimecmp);
            w.u8(t.msip as u8);
            w.u64(b.time_offset);
            if !b.default_clock() {
                // Version 2 only: a clock that never changed its rate is stored as it always was.
                w.u64(b.rate);
                w.u64(b.rate_anchor);
            }
        } else {
            w.u64(self.harts.len() as u64);
            w.u64(s.quantum);
            w.u64(s.cur as u64);
            w.u64(s.slice_end);
            for (i, h) in self.harts.iter().enumerate() {
                h.save(&mut w.buf);
                w.u8(s.state[i] as u8);
                w.u8(s.waiting[i] as u8);
                let t = &b.timers[i];
                w.u64(t.mtimecmp);
                w.u64(t.stimecmp);
                w.u8(t.msip as u8);
            }
            w.u64(b.time_offset);
            w.u64(b.rate);
            w.u64(b.rate_anchor);
        }
        b.uart.save(w);
        b.plic.save(w);
        w.u64(b.rtc_base_ns);
        w.u64(b.rtc_high);
        w.u64(b.virtio.len() as u64);
        for d in &b.virtio {
            d.save(w);
        }
        w.bytes(&b.console_out);
        if with_ram {
            snapshot::save_ram(w, &b.ram);
        }
    }

    /// The whole machine state as a snapshot file.
    pub fn save(&self) -> Vec<u8> {
        self.save_framed(true)
    }

    /// The machine state with RAM left out, for a destination that received RAM otherwise
    /// (live migration, a backup attached by pre-copy): a snapshot whose RAM (item 10) is
    /// stored as if it were all zeros. [`Machine::restore_with_ram`] reads it.
    pub fn save_without_ram(&self) -> Vec<u8> {
        self.save_framed(false)
    }

    fn save_framed(&self, with_ram: bool) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.board.ram.len() as u64);
        self.save_state(&mut w, with_ram);
        if !with_ram {
            snapshot::save_empty_ram(&mut w, self.board.ram.len());
        }
        let version = if self.harts.len() > 1 {
            3
        } else if self.board.default_clock() {
            1
        } else {
            2
        };
        snapshot::frame_version(version, &w.buf)
    }

    /// A machine from a snapshot file. Everything is checked against what the machine could
    /// hold (see docs/snapshot-format.md); RAM is allocated only once the rest of the state is
    /// known to be valid and the file holds the whole page bitmap, and only the pages the
    /// snapshot stores are written.
    pub fn restore(file: &[u8]) -> Result<Machine, MachineError> {
        Machine::restore_inner(file, None)
    }

    /// A machine from a snapshot written by [`Machine::save_without_ram`] (its RAM stores no
    /// page) and the RAM that was sent apart from it, which must have the snapshot's size.
    pub fn restore_with_ram(file: &[u8], ram: Vec<u8>) -> Result<Machine, MachineError> {
        Machine::restore_inner(file, Some(ram))
    }

    fn restore_inner(file: &[u8], given_ram: Option<Vec<u8>>) -> Result<Machine, MachineError> {
        let invalid = |what| MachineError::Snapshot(SnapshotError::Invalid(what));
        let (version, payload) = snapshot::unframe_version(file)?;
        let mut r = Reader::new(payload);
        let ram_size = r.u64()?;
        if !ram_size_ok(ram_size) {
            return Err(invalid(
                "RAM size out of range (16 MiB to 64 GiB, a multiple of 4 KiB)",
            ));
        }
        let timers = |r: &mut Reader| -> Result<HartTimers, MachineError> {
            let (mtimecmp, stimecmp) = (r.u64()?, r.u64()?);
            let msip = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(invalid("msip")),
            };
            Ok(HartTimers {
                msip,
                mtimecmp,
                stimecmp,
            })
        };
        let mut harts = Vec::new();
        let mut all_timers = Vec::new();
        let sched;
        let time_offset;
        let (rate, rate_anchor);
        if version <= 2 {
            harts.push(r.with(Hart::restore)?);
            all_timers.push(timers(&mut r)?);
            time_offset = r.u64()?;
            (rate, rate_anchor) = if version == 2 {
                let (rate, anchor) = (r.u64()?, r.u64()?);
                if rate == board::DEFAULT_RATE && anchor == 0 {
                    // One encoding per state: such a clock is written as version 1.
                    return Err(invalid("version 2 with the default clock rate"));
                }
                (rate, anchor)
            } else {
                (board::DEFAULT_RATE, 0)
            };
            sched = Sched {
                cur: 0,
                slice_end: u64::MAX,
                quantum: u64::MAX,
                state: vec![HartState::Started],
                waiting: vec![false],
            };
        } else {
            let n = r.u64()?;
            if !(2..=MAX_HARTS as u64).contains(&n) {
                return Err(invalid("number of harts (2 to 8 in version 3)"));
            }
            let n = n as usize;
            let (quantum, cur, slice_end) = (r.u64()?, r.u64()?, r.u64()?);
            if quantum == 0 {
                return Err(invalid("quantum"));
            }
            if cur >= n as u64 {
                return Err(invalid("current hart"));
            }
            let (mut state, mut waiting) = (Vec::new(), Vec::new());
            for i in 0..n {
                let h = r.with(Hart::restore)?;
                if h.hartid() != i as u64 {
                    return Err(invalid("mhartid"));
                }
                harts.push(h);
                let st = match r.u8()? {
                    0 => HartState::Started,
                    1 => HartState::Stopped,
                    4 => HartState::Suspended,
                    _ => return Err(invalid("hart state")),
                };
                let w = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(invalid("hart waiting")),
                };
                if (st == HartState::Stopped && w) || (st == HartState::Suspended && !w) {
                    return Err(invalid("hart waiting"));
                }
                state.push(st);
                waiting.push(w);
                all_timers.push(timers(&mut r)?);
            }
            time_offset = r.u64()?;
            (rate, rate_anchor) = (r.u64()?, r.u64()?);
            sched = Sched {
                cur: cur as usize,
                slice_end,
                quantum,
                state,
                waiting,
            };
        }
        let count = harts
            .iter()
            .try_fold(0u64, |a, h| a.checked_add(h.count()))
            .ok_or(invalid("step counts"))?;
        if harts.len() > 1
            && !(count..=count.saturating_add(sched.quantum)).contains(&sched.slice_end)
        {
            return Err(invalid("slice end"));
        }
        if version >= 2 {
            if !(board::MIN_RATE..=board::MAX_RATE).contains(&rate) {
                return Err(invalid("clock rate out of range"));
            }
            if rate_anchor > count {
                return Err(invalid("clock rate anchor after the count"));
            }
        }
        let uart = uart::Uart::load(&mut r)?;
        let plic = plic::Plic::load(&mut r, harts.len())?;
        let rtc_base_ns = r.u64()?;
        let rtc_high = r.u64()?;
        let n = r.u64()?;
        if n > virtio::MAX_SLOTS as u64 {
            return Err(invalid("too many devices"));
        }
        let mut devices = Vec::with_capacity(n as usize);
        for slot in 0..n as usize {
            devices.push(virtio::VirtioMmio::load(slot, ram_size, &mut r)?);
        }
        let console_out = r.bytes()?;
        snapshot::check_ram_header(&r, ram_size)?;
        let mut m = Machine::with_harts(ram_size, harts.len())?;
        let several = harts.len() > 1;
        m.harts = harts;
        for h in &mut m.harts {
            h.set_yield_on_pause(several);
        }
        m.sched = sched;
        let b = &mut m.board;
        b.timers = all_timers;
        b.time_offset = time_offset;
        b.rate = rate;
        b.rate_anchor = rate_anchor;
        b.uart = uart;
        b.plic = plic;
        b.rtc_base_ns = rtc_base_ns;
        b.rtc_high = rtc_high;
        b.virtio = devices;
        b.console_out = console_out;
        match given_ram {
            // The RAM was just allocated zeroed: only the stored pages are written.
            None => snapshot::load_ram(&mut r, &mut b.ram, true)?,
            Some(ram) => {
                snapshot::skip_empty_ram(&mut r, ram_size)?;
                if ram.len() as u64 != ram_size {
                    return Err(invalid(
                        "the RAM sent apart from the state has another size",
                    ));
                }
                b.ram = ram;
            }
        }
        if !r.is_empty() {
            return Err(invalid("trailing bytes after the state"));
        }
        Ok(m)
    }

    /// Guest RAM.
    pub fn ram(&self) -> &[u8] {
        &self.board.ram
    }

    /// The machine's RAM, the rest of it dropped: to be patched and handed to
    /// [`Machine::restore_with_ram`] without copying it.
    pub fn into_ram(self) -> Vec<u8> {
        self.board.ram
    }

    /// The pages written since the last call (or since the machine was made), and a fresh
    /// start: every hart drops its store translations, so that its next store to any page
    /// reports the page again (see [`dirty`]).
    pub fn take_dirty(&mut self) -> DirtyPages {
        for h in &mut self.harts {
            h.forget_store_translations();
        }
        self.board.dirty.take()
    }

    /// Run on before all of RAM arrived (a post-copy migration's destination): the pages in
    /// `missing` come from `source` when first touched, or when it pushes them.
    pub fn start_postcopy(&mut self, missing: DirtyPages, source: Box<dyn postcopy::PageSource>) {
        let pc = postcopy::Postcopy::new(missing, source);
        self.board.postcopy = (pc.left() > 0).then_some(pc);
    }

    /// Take in the pages that arrived (all of them with `wait`); the pages still missing, and
    /// the accesses that waited for one so far. Post-copy ends when none is missing.
    pub fn poll_postcopy(&mut self, wait: bool) -> Option<(usize, u64)> {
        let b = &mut self.board;
        let pc = b.postcopy.as_mut()?;
        pc.poll(&mut b.ram, wait);
        let (left, faults) = (pc.left(), pc.faults);
        if left == 0 {
            b.postcopy = None;
        }
        Some((left, faults))
    }

    /// How many pages were written since [`Machine::take_dirty`] was last called.
    pub fn dirty_count(&self) -> usize {
        self.board.dirty.count()
    }

    /// A digest of the whole machine state (RAM, CPU, devices).
    pub fn digest(&self) -> blake3::Hash {
        // The same bytes a snapshot holds, hashed as they are produced (RAM is not copied).
        let mut w = Writer::default();
        self.save_state(&mut w, false);
        let mut h = blake3::Hasher::new();
        h.update(&w.buf);
        snapshot::ram_pieces(&self.board.ram, |b| {
            h.update(b);
        });
        h.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc_probe;

    #[test]
    fn a_state_without_ram_restores_onto_the_ram_sent_apart() {
        for harts in [1, 3] {
            let mut m = Machine::with_harts(MIN_RAM, harts).unwrap();
            m.board.ram[7 * 4096 + 1] = 9;
            m.hart_mut(0).set_reg(6, 77);
            let state = m.save_without_ram();
            assert!(state.len() < 8192, "no RAM page in {} bytes", state.len());
            let back = Machine::restore_with_ram(&state, m.board.ram.clone()).unwrap();
            assert_eq!(back.digest(), m.digest());
            assert_eq!(back.save(), m.save());
            // Without its RAM the state is a machine with zeroed RAM, never this one.
            assert_ne!(Machine::restore(&state).unwrap().digest(), m.digest());
            // RAM of another size, and a state that stores pages, are refused.
            let short = vec![0u8; MIN_RAM as usize - 4096];
            assert!(Machine::restore_with_ram(&state, short).is_err());
            let full = m.save();
            assert!(Machine::restore_with_ram(&full, m.board.ram.clone()).is_err());
        }
    }

    #[test]
    fn dirty_pages_come_from_stores_and_dma_and_clear_when_taken() {
        let mut m = Machine::new(MIN_RAM).unwrap();
        m.take_dirty();
        assert_eq!(m.dirty_count(), 0);
        m.board.dma.push((5 * 4096 + 4000, 200));
        m.invalidate_dma();
        assert_eq!(m.take_dirty().iter().collect::<Vec<_>>(), vec![5, 6]);
        assert_eq!(m.dirty_count(), 0);
    }

    #[test]
    fn digest_hashes_exactly_what_a_snapshot_holds() {
        let mut m = Machine::new(MIN_RAM).unwrap();
        m.board.ram[5 * 4096 + 3] = 7;
        m.hart_mut(0).set_reg(5, 42);
        m.board
            .virtio
            .push(virtio::VirtioMmio::blk(0, 1 << 20, "ftvm-disk0"));
        let mac = [2, 0, 0, 0, 0, 9];
        m.board
            .virtio
            .push(virtio::VirtioMmio::new(1, virtio::Device::Net { mac }));
        let expected = vec![
            DeviceSpec::Disk {
                bytes: 1 << 20,
                serial: "ftvm-disk0".into(),
            },
            DeviceSpec::Net { mac },
        ];
        assert_eq!(m.devices(), expected);
        let mut w = Writer::default();
        m.save_state(&mut w, true);
        assert_eq!(m.digest(), blake3::hash(&w.buf));
        let back = Machine::restore(&m.save()).unwrap();
        assert_eq!(back.digest(), m.digest());
        assert_eq!(back.devices(), m.devices());
        m.board.ram[9 * 4096] = 1;
        assert_ne!(back.digest(), m.digest());
    }

    #[test]
    fn a_clock_that_changed_rate_is_saved_as_version_2_and_restores() {
        let mut m = Machine::new(MIN_RAM).unwrap();
        m.apply(Input::Time { ticks: 77 });
        m.run(1_001, 1_001);
        // Never changed: version 1, the same bytes as before rates existed.
        let v1 = m.save();
        assert_eq!(snapshot::unframe_version(&v1).unwrap().0, 1);
        let before = m.board.mtime(m.count());
        m.apply(Input::Rate { rate: 3 << 15 });
        assert_eq!(m.board.mtime(m.count()), before);
        assert_eq!(m.board.rate_anchor, 1_001);
        let v2 = m.save();
        assert_eq!(snapshot::unframe_version(&v2).unwrap().0, 2);
        assert_eq!(v2.len(), v1.len() + 16);
        assert_ne!(m.digest(), Machine::restore(&v1).unwrap().digest());
        let mut back = Machine::restore(&v2).unwrap();
        assert_eq!(back.digest(), m.digest());
        assert_eq!((back.board.rate, back.board.rate_anchor), (3 << 15, 1_001));
        // Both run on to the same state, time at 1.5 steps per tick.
        m.run(4_001, 10_000);
        back.run(4_001, 10_000);
        assert_eq!(back.digest(), m.digest());
        assert_eq!(m.board.mtime(4_001), before + 2_000);
        // Back at the default rate, but anchored later: still version 2.
        m.apply(Input::Rate {
            rate: board::DEFAULT_RATE,
        });
        assert_eq!(snapshot::unframe_version(&m.save()).unwrap().0, 2);
        // Rates out of range are clamped.
        m.apply(Input::Rate { rate: 0 });
        assert_eq!(m.board.rate, board::MIN_RATE);
        m.apply(Input::Rate { rate: u64::MAX });
        assert_eq!(m.board.rate, board::MAX_RATE);
    }

    /// A machine of `n` harts whose schedule fields are worth saving: hart 1 waits, hart 2
    /// is stopped, hart 3 suspended, and hart 1 runs in the middle of its slice.
    fn smp_machine(n: usize) -> Machine {
        let mut m = Machine::with_harts(MIN_RAM, n).unwrap();
        for (i, h) in m.harts.iter_mut().enumerate() {
            h.set_reg(5, 100 + i as u64);
        }
        m.sched.state = vec![HartState::Started; n];
        m.sched.state[2] = HartState::Stopped;
        m.sched.state[3] = HartState::Suspended;
        m.sched.waiting[3] = true;
        m.sched.waiting[1] = true;
        m.board.timers[2].mtimecmp = 77;
        m.board.timers[3].msip = true;
        m
    }

    #[test]
    fn several_harts_save_and_restore_exactly() {
        let fresh = Machine::with_harts(MIN_RAM, 4).unwrap();
        let back = Machine::restore(&fresh.save()).unwrap();
        assert_eq!(back.save(), fresh.save());
        assert_eq!(snapshot::unframe_version(&fresh.save()).unwrap().0, 3);
        let m = smp_machine(4);
        let back = Machine::restore(&m.save()).unwrap();
        assert_eq!(back.sched, m.sched);
        assert_eq!(back.board.timers, m.board.timers);
        assert_eq!(back.digest(), m.digest());
        assert_eq!(back.harts[3].reg(5), 103);
        // One hart still writes versions 1 and 2, byte for byte as before.
        let one = Machine::new(MIN_RAM).unwrap();
        assert_eq!(snapshot::unframe_version(&one.save()).unwrap().0, 1);
    }

    /// A run that ends at a look at the host (a soft end) stops before the block that would
    /// cross it, so that the next one starts where a block starts.
    #[test]
    fn a_look_at_the_host_ends_where_a_block_starts() {
        let mut m = Machine::new(MIN_RAM).unwrap();
        if !m.set_engine(Engine::Jit) {
            return;
        }
        // A loop of one block: seven `addi t0, t0, 1`, then `j` back.
        for i in 0..7 {
            m.board.ram[4 * i..4 * i + 4].copy_from_slice(&0x0012_8293u32.to_le_bytes());
        }
        m.board.ram[28..32].copy_from_slice(&0xfe5f_f06fu32.to_le_bytes());
        m.harts[0].set_pc(RAM_BASE);
        let start = m.save();
        let mut early = 0;
        for _ in 0..50 {
            // A chunk of 13 steps holds one pass of 8, not two.
            let before = m.count();
            assert_eq!(m.run(u64::MAX, 13), RunExit::Yield);
            assert!(m.count() > before && m.count() <= before + 13);
            early += u64::from(m.count() < before + 13);
        }
        assert_eq!(
            early, 50,
            "every turn ended before the block that crossed it"
        );
        assert_eq!(
            m.jit_stats().blocks,
            1,
            "nothing translated from inside the block"
        );
        // The state is the interpreter's at that count.
        let mut interp = Machine::restore(&start).unwrap();
        assert!(interp.set_engine(Engine::Interp));
        assert_eq!(interp.run(m.count(), u64::MAX), RunExit::StopAt);
        assert_eq!(interp.digest(), m.digest());
    }

    /// A hart spinning with PAUSE (as Linux's `cpu_relax` does) gives its slice away at
    /// once: a busy hart beside it gets nearly all the steps.
    #[test]
    fn a_spinning_hart_yields_at_pause() {
        let mut m = Machine::with_harts(MIN_RAM, 2).unwrap();
        let put = |m: &mut Machine, at: usize, w: u32| {
            m.board.ram[at..at + 4].copy_from_slice(&w.to_le_bytes())
        };
        put(&mut m, 0, 0x0012_8293); // 1: addi t0, t0, 1
        put(&mut m, 4, 0xffdf_f06f); //    j 1b
        put(&mut m, 0x100, 0x0100_000f); // 1: pause
        put(&mut m, 0x104, 0xffdf_f06f); //    j 1b
        m.harts[0].set_pc(RAM_BASE);
        m.harts[1].set_pc(RAM_BASE + 0x100);
        m.sched.state[1] = HartState::Started;
        assert_eq!(m.run(100_000, u64::MAX), RunExit::StopAt);
        // Hart 1 runs one PAUSE per turn, hart 0 a whole slice.
        let spins = m.harts[1].count();
        assert!(
            spins < 100_000 / SMP_QUANTUM * 3,
            "hart 1 ran {spins} steps"
        );
        // Without the yield both would have had half.
        for h in &mut m.harts {
            h.set_yield_on_pause(false);
        }
        let before = m.harts[1].count();
        m.run(300_000, u64::MAX);
        assert!(m.harts[1].count() - before > 90_000);
    }

    #[test]
    fn crafted_schedules_are_refused() {
        let m = smp_machine(4);
        let hart = ftvm_cpu::HART_STATE_LEN;
        // Offsets in the payload: RAM size, harts, quantum, cur, slice end, then per hart
        // its state, HSM state, waiting flag and timers.
        let per_hart = hart + 1 + 1 + 8 + 8 + 1;
        let hsm = |i: usize| 40 + i * per_hart + hart;
        let crafts: Vec<(usize, Vec<u8>, &str)> = vec![
            (
                8,
                1u64.to_le_bytes().to_vec(),
                "number of harts (2 to 8 in version 3)",
            ),
            (
                8,
                9u64.to_le_bytes().to_vec(),
                "number of harts (2 to 8 in version 3)",
            ),
            (16, 0u64.to_le_bytes().to_vec(), "quantum"),
            (24, 4u64.to_le_bytes().to_vec(), "current hart"),
            (32, u64::MAX.to_le_bytes().to_vec(), "slice end"),
            (hsm(1), vec![2], "hart state"),
            (hsm(2) + 1, vec![1], "hart waiting"),
            (hsm(3) + 1, vec![0], "hart waiting"),
        ];
        for (at, bytes, what) in crafts {
            let mut p = payload(&m);
            p[at..at + bytes.len()].copy_from_slice(&bytes);
            match Machine::restore(&snapshot::frame_version(3, &p)) {
                Err(MachineError::Snapshot(SnapshotError::Invalid(w))) => assert_eq!(w, what),
                Err(e) => panic!("{what}: unexpected {e}"),
                Ok(_) => panic!("{what}: accepted"),
            }
        }
        // Harts saved out of order (hart 1's state where hart 0's belongs).
        let mut p = payload(&m);
        let h1 = p[40 + per_hart..40 + per_hart + hart].to_vec();
        p[40..40 + hart].copy_from_slice(&h1);
        assert!(Machine::restore(&snapshot::frame_version(3, &p)).is_err());
    }

    #[test]
    fn crafted_clock_fields_are_refused() {
        let mut m = Machine::new(MIN_RAM).unwrap();
        m.run(500, 500);
        m.apply(Input::Rate { rate: 5 << 16 });
        type Craft = fn(&mut Machine);
        let crafts: [(&str, Craft); 4] = [
            ("clock rate out of range", |m| m.board.rate = 0),
            ("clock rate out of range", |m| {
                m.board.rate = board::MAX_RATE + 1
            }),
            ("clock rate anchor after the count", |m| {
                m.board.rate_anchor = 501
            }),
            ("version 2 with the default clock rate", |m| {
                m.board.rate = board::DEFAULT_RATE;
                m.board.rate_anchor = 0;
            }),
        ];
        for (what, craft) in crafts {
            let mut c = Machine::restore(&m.save()).unwrap();
            craft(&mut c);
            let mut w = Writer::default();
            w.u64(MIN_RAM);
            c.save_state(&mut w, true);
            let mut payload = w.buf;
            if c.board.default_clock() {
                // save_state left the clock fields out (version 1): put them where version 2
                // has them.
                let at = 8 + ftvm_cpu::HART_STATE_LEN + 8 + 8 + 1 + 8;
                let mut f = board::DEFAULT_RATE.to_le_bytes().to_vec();
                f.extend_from_slice(&0u64.to_le_bytes());
                payload.splice(at..at, f);
            }
            match Machine::restore(&snapshot::frame_version(2, &payload)) {
                Err(MachineError::Snapshot(SnapshotError::Invalid(w))) => assert_eq!(w, what),
                Err(e) => panic!("{what}: unexpected {e}"),
                Ok(_) => panic!("{what}: accepted"),
            }
        }
        // Other versions are refused, naming the version.
        let p = payload(&m);
        for v in [0, 4] {
            let e = Machine::restore(&snapshot::frame_version(v, &p))
                .err()
                .unwrap();
            assert_eq!(
                e.to_string(),
                format!("snapshot version {v} is not supported (this ftvm reads versions 1 to 3)")
            );
        }
        // Version 3 is for several harts: a one-hart payload does not parse as one.
        assert!(Machine::restore(&snapshot::frame_version(3, &p)).is_err());
    }

    /// Register writes that make queue 0 of a virtio-mmio device ready (size 64, rings in the
    /// first pages of RAM) and the driver OK.
    const QUEUE_0_READY: [(u64, u32); 6] = [
        (0x38, 64),
        (0x80, 0x8000_1000),
        (0x90, 0x8000_2000),
        (0xa0, 0x8000_3000),
        (0x44, 1),
        (0x70, 0xf),
    ];

    /// A machine with a disk (one request in flight), a network device and an entropy
    /// device, their queues ready.
    fn with_devices() -> Machine {
        let mut m = Machine::new(MIN_RAM).unwrap();
        m.board.ram[4096] = 1;
        let mut ram = virtio::queue::GuestRam::new(&mut m.board.ram);
        let mut out = Vec::new();
        for (slot, dev) in [
            virtio::Device::Net {
                mac: [2, 0, 0, 0, 0, 1],
            },
            virtio::Device::Rng,
        ]
        .into_iter()
        .enumerate()
        {
            let mut d = virtio::VirtioMmio::new(slot + 1, dev);
            for (off, v) in QUEUE_0_READY {
                d.write(off, v, &mut ram, &mut out);
            }
            m.board.virtio.push(d);
        }
        let mut blk = virtio::VirtioMmio::blk(0, 1 << 20, "d");
        for (off, v) in QUEUE_0_READY {
            blk.write(off, v, &mut ram, &mut out);
        }
        if let virtio::Device::Blk {
            pending, next_id, ..
        } = &mut blk.dev
        {
            pending.push_back(virtio::PendingBlk::new(
                0,
                virtio::queue::Chain {
                    head: 3,
                    readable: vec![virtio::queue::Buf {
                        addr: RAM_BASE + 0x4000,
                        len: 16,
                    }],
                    writable: vec![virtio::queue::Buf {
                        addr: RAM_BASE + 0x5000,
                        len: 513,
                    }],
                },
            ));
            *next_id = 1;
        }
        m.board.virtio.insert(0, blk);
        m
    }

    fn refused(m: &Machine) -> SnapshotError {
        match Machine::restore(&m.save()) {
            Err(MachineError::Snapshot(e)) => e,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("crafted snapshot accepted"),
        }
    }

    #[test]
    fn snapshots_with_devices_round_trip() {
        let m = with_devices();
        let back = Machine::restore(&m.save()).unwrap();
        assert_eq!(back.board.virtio, m.board.virtio);
        assert_eq!(back.digest(), m.digest());
    }

    #[test]
    fn crafted_device_state_is_refused() {
        type Craft = fn(&mut Machine);
        let crafts: [(&str, Craft); 11] = [
            ("queue size not a power of two", |m| {
                m.board.virtio[1].queues[0].size = 48
            }),
            ("queue size above the maximum", |m| {
                m.board.virtio[1].queues[0].size = 512
            }),
            ("queue maximum", |m| m.board.virtio[1].queues[1].max = 1024),
            ("rings outside RAM", |m| {
                m.board.virtio[2].queues[0].used = RAM_BASE + MIN_RAM - 8
            }),
            ("rings below RAM", |m| {
                m.board.virtio[2].queues[0].desc = 0x1000
            }),
            ("features not offered", |m| {
                m.board.virtio[0].set_driver_features(1 << 40)
            }),
            ("status", |m| m.board.virtio[0].set_status(0x10)),
            ("chain head", |m| {
                m.board.virtio[0].pending_mut()[0].chain.head = 64
            }),
            ("buffer outside RAM", |m| {
                m.board.virtio[0].pending_mut()[0].chain.writable[0].addr = RAM_BASE + MIN_RAM - 8
            }),
            ("no status byte", |m| {
                m.board.virtio[0].pending_mut()[0].chain.writable.clear()
            }),
            ("request id", |m| m.board.virtio[0].pending_mut()[0].id = 7),
        ];
        for (what, craft) in crafts {
            let mut m = with_devices();
            craft(&mut m);
            let e = refused(&m);
            assert!(matches!(e, SnapshotError::Invalid(_)), "{what}: {e}");
        }
        // Too many devices.
        let mut m = with_devices();
        for slot in 3..=virtio::MAX_SLOTS {
            m.board
                .virtio
                .push(virtio::VirtioMmio::new(slot, virtio::Device::Rng));
        }
        assert!(matches!(
            refused(&m),
            SnapshotError::Invalid("too many devices")
        ));
    }

    /// The payload of `m`'s snapshot.
    fn payload(m: &Machine) -> Vec<u8> {
        snapshot::unframe(&m.save()).unwrap().to_vec()
    }

    #[test]
    fn truncated_and_absurd_snapshots_are_refused_without_large_allocations() {
        let m = with_devices();
        let p = payload(&m);
        // Every truncation of the payload (the RAM pages are at the end: stop in the bitmap).
        let mut w = Writer::default();
        w.u64(MIN_RAM);
        m.save_state(&mut w, false);
        let ram_at = w.buf.len();
        for n in (0..ram_at + 64).chain([p.len() - 1]) {
            let f = snapshot::frame(&p[..n]);
            let (r, largest) = alloc_probe::largest_allocation(|| Machine::restore(&f));
            assert!(r.is_err(), "truncated at {n}");
            if n < ram_at {
                assert!(largest < 1 << 20, "truncated at {n}: allocated {largest}");
            }
        }
        // Absurd RAM sizes, with nothing behind them.
        for size in [0, 17, MIN_RAM - 4096, MIN_RAM + 1, MAX_RAM + 4096, u64::MAX] {
            let mut q = p.clone();
            q[..8].copy_from_slice(&size.to_le_bytes());
            let f = snapshot::frame(&q);
            let (r, largest) = alloc_probe::largest_allocation(|| Machine::restore(&f));
            assert!(
                matches!(r, Err(MachineError::Snapshot(SnapshotError::Invalid(_)))),
                "RAM size {size}"
            );
            assert!(largest < 1 << 20);
        }
        // The largest RAM, declared by a snapshot that does not hold its page bitmap: refused
        // before RAM is allocated.
        let mut q = p[..ram_at].to_vec();
        q[..8].copy_from_slice(&MAX_RAM.to_le_bytes());
        q.extend_from_slice(&MAX_RAM.to_le_bytes());
        q.extend_from_slice(&[0; 4096]);
        let f = snapshot::frame(&q);
        let (r, largest) = alloc_probe::largest_allocation(|| Machine::restore(&f));
        assert!(matches!(
            r,
            Err(MachineError::Snapshot(SnapshotError::Truncated))
        ));
        assert!(largest < 1 << 20, "allocated {largest}");
        // Huge lengths in front of the UART's FIFO (beyond the file, and within a file that
        // holds many pages of RAM): refused before anything is copied.
        let fifo = 8 + ftvm_cpu::HART_STATE_LEN + 8 + 8 + 1 + 8;
        let mut big = with_devices();
        big.board.ram[..8 << 20].fill(1);
        let p = payload(&big);
        for len in [u64::MAX, 4 << 20] {
            let mut q = p.clone();
            q[fifo..fifo + 8].copy_from_slice(&len.to_le_bytes());
            let f = snapshot::frame(&q);
            let (r, largest) = alloc_probe::largest_allocation(|| Machine::restore(&f));
            assert!(
                matches!(
                    r,
                    Err(MachineError::Snapshot(SnapshotError::Invalid(
                        "UART receive FIFO too long"
                    )))
                ),
                "{len}"
            );
            assert!(largest < 1 << 20, "{len}: allocated {largest}");
        }
    }

    /// Resident memory of this process in bytes.
    fn rss() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 4096
    }

    #[test]
    fn restore_costs_what_the_snapshot_holds_not_the_ram_size() {
        // 4 GiB of RAM with one page in use: the snapshot holds a 128 KiB bitmap and one page,
        // and restoring it must not touch the other pages.
        const BIG: u64 = 4 << 30;
        let small = Machine::new(MIN_RAM).unwrap();
        let mut w = Writer::default();
        w.u64(BIG);
        small.save_state(&mut w, false);
        w.u64(BIG);
        let mut bitmap = vec![0u8; (BIG / 4096 / 8) as usize];
        bitmap[1000] = 1;
        w.buf.extend_from_slice(&bitmap);
        w.buf.extend_from_slice(&[7; 4096]);
        let f = snapshot::frame(&w.buf);
        let before = rss();
        let m = Machine::restore(&f).unwrap();
        let grown = rss().saturating_sub(before);
        assert_eq!(m.board.ram.len() as u64, BIG);
        assert_eq!(m.board.ram[8000 * 4096 + 5], 7);
        assert!(grown < 256 << 20, "restore touched {grown} bytes");
    }
}

/// A global allocator for the unit tests that records, per thread, the largest single
/// allocation since the last reset: the tests of the bounds on untrusted sizes use it to show
/// that a huge request is refused without a huge allocation.
#[cfg(test)]
pub(crate) mod alloc_probe {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Probe;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn note(size: usize) {
        // try_with: the thread-local may be gone while a thread exits.
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }

    // SAFETY: every method forwards to the system allocator with the caller's arguments; the
    // bookkeeping touches only a const-initialized thread-local Cell (it never allocates).
    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: forwarded as is; the caller upholds alloc's contract.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: forwarded as is; the caller upholds alloc_zeroed's contract.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded as is; the caller upholds dealloc's contract.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            // SAFETY: forwarded as is; the caller upholds realloc's contract.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static PROBE: Probe = Probe;

    /// Run `f` and return its result with the largest allocation it made on this thread.
    pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|l| l.set(0));
        let v = f();
        (v, LARGEST.with(|l| l.get()))
    }
}
