//! The ftvm board around one hart: RAM at 0x8000_0000, CLINT, PLIC, NS16550A UART, SiFive test
//! finisher, an SBI served by ftvm, a generated device tree, and loading of a Linux Image or a
//! bare-metal ELF. [`Machine::run`] executes up to an exact step count; [`Machine::save`],
//! [`Machine::restore`] and [`Machine::digest`] cover the whole machine state.
//!
//! The machine never reads a host clock: `mtime` is the step count divided by
//! [`board::STEPS_PER_TICK`], plus the ticks skipped while the hart was idle.

pub mod board;
mod fdt;
mod loader;
pub mod plic;
mod sbi;
pub mod snapshot;
pub mod uart;
pub mod virtio;

use ftvm_cpu::{irq, Exit, Hart, Priv};
use thiserror::Error;

pub use board::{Board, PowerEvent};
use snapshot::{Reader, SnapshotError, Writer};
pub use virtio::{DeviceOutput, DiskOp, DiskRequest};

/// Physical address of the first byte of RAM.
pub const RAM_BASE: u64 = 0x8000_0000;
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
    #[error("too many devices (at most {0})")]
    Devices(usize),
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

/// The CSR fields that make up a hart's CSR state, in snapshot order.
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

pub struct Machine {
    pub hart: Hart,
    pub board: Board,
}

impl Machine {
    /// A machine with `ram_size` bytes of zeroed RAM and a hart in reset.
    pub fn new(ram_size: u64) -> Result<Machine, MachineError> {
        if !(MIN_RAM..=MAX_RAM).contains(&ram_size) || !ram_size.is_multiple_of(4096) {
            return Err(MachineError::RamSize(ram_size));
        }
        Ok(Machine {
            hart: Hart::new(0),
            board: Board::new(ram_size as usize),
        })
    }

    /// Steps executed so far.
    pub fn count(&self) -> u64 {
        self.hart.count
    }

    /// Drive the interrupt lines from the device state at the current count.
    fn update_irqs(&mut self) {
        let b = &mut self.board;
        let now = b.mtime(self.hart.count);
        b.plic.set_level(board::UART_IRQ, b.uart.irq());
        let h = &mut self.hart;
        h.set_ext_irq(irq::MTIP, now >= b.mtimecmp);
        h.set_ext_irq(irq::STIP, now >= b.stimecmp);
        h.set_ext_irq(irq::MSIP, b.msip);
        for d in &b.virtio {
            b.plic.set_level(virtio::FIRST_IRQ + d.slot, d.irq());
        }
        h.set_ext_irq(irq::MEIP, b.plic.irq(0));
        h.set_ext_irq(irq::SEIP, b.plic.irq(1));
    }

    /// The step count at which the next timer interrupt becomes pending, if one is armed and
    /// not yet pending.
    fn next_deadline(&self) -> Option<u64> {
        let now = self.hart.count;
        [self.board.mtimecmp, self.board.stimecmp]
            .into_iter()
            .filter_map(|cmp| self.board.deadline(cmp))
            .filter(|&d| d > now)
            .min()
    }

    /// Run until the step count reaches `stop_at`, at most `chunk` steps, or until the guest
    /// needs the host (power, idle, tohost).
    pub fn run(&mut self, stop_at: u64, chunk: u64) -> RunExit {
        let chunk_end = stop_at.min(self.hart.count.saturating_add(chunk));
        loop {
            if let Some(p) = self.board.power.take() {
                return RunExit::Power(p);
            }
            let now = self.hart.count;
            if now >= stop_at {
                return RunExit::StopAt;
            }
            if now >= chunk_end {
                return RunExit::Yield;
            }
            self.update_irqs();
            let end = match self.next_deadline() {
                Some(d) => d.min(chunk_end),
                None => chunk_end,
            };
            let exit = self.hart.run(&mut self.board, end - now);
            self.invalidate_dma();
            match exit {
                Exit::Budget => {}
                Exit::Mmio => {
                    // Device output, or a device waiting for input the host can give at once:
                    // let the host act at this exact count.
                    if !self.board.outbox.is_empty() || self.entropy_wanted().is_some() {
                        return RunExit::Output;
                    }
                }
                Exit::Sbi => self.handle_sbi(),
                Exit::ToHost(v) => return RunExit::ToHost(v),
                Exit::Wfi => {
                    self.update_irqs();
                    if self.hart.mip() & self.hart.csr.mie == 0 {
                        let ticks = self
                            .next_deadline()
                            .map(|d| (d - self.hart.count).div_ceil(board::STEPS_PER_TICK));
                        return RunExit::Idle { ticks };
                    }
                }
            }
        }
    }

    /// Drop decoded instructions where devices wrote guest RAM.
    fn invalidate_dma(&mut self) {
        for (off, len) in self.board.dma.drain(..) {
            self.hart.invalidate_code(off, len);
        }
    }

    /// Apply an input from outside at the current step count.
    pub fn apply(&mut self, input: Input) {
        let b = &mut self.board;
        let mut ram = virtio::queue::GuestRam::new(&mut b.ram);
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
        let ram = virtio::queue::GuestRam::new(&mut b.ram);
        b.virtio.get(slot).is_some_and(|d| d.net_rx_ready(&ram))
    }

    /// An entropy device waiting for bytes: its slot and how many it wants.
    pub fn entropy_wanted(&mut self) -> Option<(usize, usize)> {
        let b = &mut self.board;
        let ram = virtio::queue::GuestRam::new(&mut b.ram);
        b.virtio
            .iter()
            .map(|d| (d.slot, d.rng_wanted(&ram)))
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

    /// Boot a Linux kernel Image in S-mode, with ftvm serving the SBI.
    /// `devices` go on the virtio-mmio slots in order; the RTC starts at `rtc_base_ns`.
    pub fn boot_linux(
        ram_size: u64,
        kernel: &[u8],
        initrd: Option<&[u8]>,
        cmdline: &str,
        devices: &[DeviceSpec],
        rtc_base_ns: u64,
    ) -> Result<Machine, MachineError> {
        let mut m = Machine::new(ram_size)?;
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
        let boot = loader::load_linux(&mut m.board.ram, kernel, initrd, cmdline, devices.len())?;
        let h = &mut m.hart;
        h.host_sbi = true;
        // Everything the guest kernel handles itself is delegated to S-mode.
        h.csr.medeleg = 0xb1ff;
        h.csr.mideleg = irq::SSIP | irq::STIP | irq::SEIP;
        h.csr.mcounteren = 7;
        // Linux 6.1 never writes scounteren but its vDSO reads `time` from U-mode, as QEMU
        // and OpenSBI machines allow: start with cycle, time and instret open to U-mode.
        h.csr.scounteren = 7;
        h.x[10] = 0;
        h.x[11] = boot.dtb;
        h.pc = boot.entry;
        h.set_priv(Priv::Supervisor);
        Ok(m)
    }

    /// Load a bare-metal ELF and start it in M-mode at its entry point.
    pub fn boot_elf(ram_size: u64, elf: &[u8]) -> Result<Machine, MachineError> {
        let mut m = Machine::new(ram_size)?;
        let prog = loader::load_elf(&mut m.board.ram, elf)?;
        m.hart.pc = prog.entry;
        m.hart.tohost = prog.tohost;
        Ok(m)
    }

    /// Everything but RAM, then (when `with_ram`) RAM.
    fn save_state(&self, w: &mut Writer, with_ram: bool) {
        let h = &self.hart;
        for v in h.x.iter().chain(h.f.iter()) {
            w.u64(*v);
        }
        w.u64(h.pc);
        w.u8(h.prv as u8);
        w.u64(h.count);
        w.u64(h.ext_irq);
        w.u64(h.reservation.map_or(u64::MAX, |r| r));
        w.u8(h.host_sbi as u8);
        w.u64(h.tohost.map_or(u64::MAX, |r| r));
        let c = &h.csr;
        macro_rules! put {
            ($($f:ident),*) => { $( w.u64(c.$f); )* };
        }
        csr_fields!(put);
        for v in c.pmpcfg.iter().chain(c.pmpaddr.iter()) {
            w.u64(*v);
        }
        let b = &self.board;
        w.u64(b.mtimecmp);
        w.u64(b.stimecmp);
        w.u8(b.msip as u8);
        w.u64(b.time_offset);
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
        let mut w = Writer::default();
        w.u64(self.board.ram.len() as u64);
        self.save_state(&mut w, true);
        snapshot::frame(&w.buf)
    }

    /// A machine from a snapshot file.
    pub fn restore(file: &[u8]) -> Result<Machine, MachineError> {
        let mut r = Reader::new(snapshot::unframe(file)?);
        let ram_size = r.u64()?;
        let mut m = Machine::new(ram_size).map_err(|_| SnapshotError::Invalid("RAM size"))?;
        let h = &mut m.hart;
        for i in 0..32 {
            h.x[i] = r.u64()?;
        }
        for i in 0..32 {
            h.f[i] = r.u64()?;
        }
        h.x[0] = 0;
        h.pc = r.u64()?;
        h.prv = match r.u8()? {
            0 => Priv::User,
            1 => Priv::Supervisor,
            3 => Priv::Machine,
            _ => return Err(SnapshotError::Invalid("privilege level").into()),
        };
        h.count = r.u64()?;
        h.ext_irq = r.u64()?;
        h.reservation = Some(r.u64()?).filter(|&v| v != u64::MAX);
        h.host_sbi = r.u8()? != 0;
        h.tohost = Some(r.u64()?).filter(|&v| v != u64::MAX);
        let c = &mut h.csr;
        macro_rules! get {
            ($($f:ident),*) => { $( c.$f = r.u64()?; )* };
        }
        csr_fields!(get);
        for i in 0..c.pmpcfg.len() {
            c.pmpcfg[i] = r.u64()?;
        }
        for i in 0..c.pmpaddr.len() {
            c.pmpaddr[i] = r.u64()?;
        }
        h.flush_tlb();
        let b = &mut m.board;
        b.mtimecmp = r.u64()?;
        b.stimecmp = r.u64()?;
        b.msip = r.u8()? != 0;
        b.time_offset = r.u64()?;
        b.uart = uart::Uart::load(&mut r)?;
        b.plic = plic::Plic::load(&mut r)?;
        b.rtc_base_ns = r.u64()?;
        b.rtc_high = r.u64()?;
        let n = r.u64()?;
        if n > virtio::MAX_SLOTS as u64 {
            return Err(SnapshotError::Invalid("too many devices").into());
        }
        for slot in 0..n as usize {
            b.virtio.push(virtio::VirtioMmio::load(slot, &mut r)?);
        }
        b.console_out = r.bytes()?;
        snapshot::load_ram(&mut r, &mut b.ram)?;
        if !r.is_empty() {
            return Err(SnapshotError::Invalid("trailing bytes after the state").into());
        }
        Ok(m)
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

    #[test]
    fn digest_hashes_exactly_what_a_snapshot_holds() {
        let mut m = Machine::new(MIN_RAM).unwrap();
        m.board.ram[5 * 4096 + 3] = 7;
        m.hart.x[5] = 42;
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
}
