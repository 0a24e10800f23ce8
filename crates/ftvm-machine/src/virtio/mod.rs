//! virtio-mmio (version 2) devices: block, network and entropy.
//!
//! Devices never touch the host. What a device needs from outside (the result of a disk
//! request, a received frame, entropy) arrives as an input through the machine's boundary
//! (`Machine::apply`); what it sends (a frame, a disk request) leaves through the board's
//! outbox. A driver that breaks the protocol (a malformed descriptor chain) puts the device in
//! DEVICE_NEEDS_RESET; it then ignores the driver until it is reset.

pub mod exercise;
pub mod queue;

use std::collections::VecDeque;

use queue::{Chain, GuestRam, Queue, QueueError};

use crate::snapshot::{Reader, SnapshotError, Writer};

pub const MMIO_BASE: u64 = 0x1000_1000;
pub const MMIO_SIZE: u64 = 0x1000;
/// PLIC source of the first slot; slot i uses FIRST_IRQ + i.
pub const FIRST_IRQ: usize = 1;
pub const MAX_SLOTS: usize = 8;

const MAGIC: u32 = 0x7472_6976;
const F_VERSION_1: u64 = 1 << 32;
const STATUS_NEEDS_RESET: u32 = 0x40;
const INT_USED: u32 = 1;
const INT_CONFIG: u32 = 2;
const QUEUE_MAX: u16 = 256;

const BLK_F_SEG_MAX: u64 = 1 << 2;
const BLK_F_FLUSH: u64 = 1 << 9;
const NET_F_MAC: u64 = 1 << 5;
/// virtio_net_hdr with num_buffers (VIRTIO_F_VERSION_1).
pub const NET_HDR_LEN: usize = 12;

pub const BLK_T_IN: u32 = 0;
pub const BLK_T_OUT: u32 = 1;
pub const BLK_T_FLUSH: u32 = 4;
pub const BLK_T_GET_ID: u32 = 8;
const BLK_S_OK: u8 = 0;
const BLK_S_IOERR: u8 = 1;
const BLK_S_UNSUPP: u8 = 2;

/// A disk request for the host, in submission order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskOp {
    Read { sector: u64, len: usize },
    Write { sector: u64, data: Vec<u8> },
    Flush,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskRequest {
    pub slot: usize,
    /// Sequence number of the request on its device.
    pub id: u64,
    pub op: DiskOp,
}

/// Something a device sends out of the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceOutput {
    Frame { slot: usize, frame: Vec<u8> },
    Disk(DiskRequest),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingBlk {
    id: u64,
    chain: Chain,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    Blk {
        sectors: u64,
        serial: [u8; 20],
        next_id: u64,
        pending: VecDeque<PendingBlk>,
    },
    Net {
        mac: [u8; 6],
    },
    Rng,
}

impl Device {
    fn id(&self) -> u32 {
        match self {
            Device::Net { .. } => 1,
            Device::Blk { .. } => 2,
            Device::Rng => 4,
        }
    }
    fn features(&self) -> u64 {
        F_VERSION_1
            | match self {
                Device::Blk { .. } => BLK_F_SEG_MAX | BLK_F_FLUSH,
                Device::Net { .. } => NET_F_MAC,
                Device::Rng => 0,
            }
    }
    fn num_queues(&self) -> usize {
        match self {
            Device::Net { .. } => 2,
            _ => 1,
        }
    }
    fn config(&self) -> Vec<u8> {
        match self {
            Device::Blk { sectors, .. } => {
                let mut c = vec![0u8; 16];
                c[..8].copy_from_slice(&sectors.to_le_bytes());
                c[12..16].copy_from_slice(&126u32.to_le_bytes());
                c
            }
            Device::Net { mac } => mac.to_vec(),
            Device::Rng => Vec::new(),
        }
    }
}

/// One virtio-mmio slot and its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioMmio {
    pub dev: Device,
    pub slot: usize,
    dev_features_sel: u32,
    drv_features: u64,
    drv_features_sel: u32,
    queue_sel: u32,
    pub queues: Vec<Queue>,
    status: u32,
    pub interrupt_status: u32,
    config_generation: u32,
}

impl VirtioMmio {
    pub fn new(slot: usize, dev: Device) -> VirtioMmio {
        let n = dev.num_queues();
        VirtioMmio {
            dev,
            slot,
            dev_features_sel: 0,
            drv_features: 0,
            drv_features_sel: 0,
            queue_sel: 0,
            queues: vec![Queue::new(QUEUE_MAX); n],
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
        }
    }

    pub fn blk(slot: usize, bytes: u64, serial: &str) -> VirtioMmio {
        let mut s = [0u8; 20];
        let b = serial.as_bytes();
        s[..b.len().min(20)].copy_from_slice(&b[..b.len().min(20)]);
        Self::new(
            slot,
            Device::Blk {
                sectors: bytes / 512,
                serial: s,
                next_id: 0,
                pending: VecDeque::new(),
            },
        )
    }

    pub fn irq(&self) -> bool {
        self.interrupt_status != 0
    }

    fn broken(&self) -> bool {
        self.status & STATUS_NEEDS_RESET != 0
    }

    fn driver_ok(&self) -> bool {
        self.status & 4 != 0 && !self.broken()
    }

    fn reset(&mut self) {
        let dev = match &self.dev {
            Device::Blk {
                sectors, serial, ..
            } => Device::Blk {
                sectors: *sectors,
                serial: *serial,
                next_id: 0,
                pending: VecDeque::new(),
            },
            d => d.clone(),
        };
        *self = VirtioMmio::new(self.slot, dev);
    }

    fn fail(&mut self, e: QueueError) {
        tracing::warn!(slot = self.slot, error = %e, "virtio device needs reset");
        self.status |= STATUS_NEEDS_RESET;
        self.interrupt_status |= INT_CONFIG;
    }

    pub fn read(&self, off: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match off {
            0x000 => MAGIC,
            0x004 => 2,
            0x008 => self.dev.id(),
            0x00c => 0x6674_766d, // "ftvm"
            0x010 => {
                let f = self.dev.features();
                match self.dev_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x034 => q.map_or(0, |q| q.max as u32),
            0x044 => q.map_or(0, |q| q.ready as u32),
            0x060 => self.interrupt_status,
            0x070 => self.status,
            0x0fc => self.config_generation,
            0x100.. => {
                let c = self.dev.config();
                let o = (off - 0x100) as usize;
                let mut b = [0u8; 4];
                for (i, x) in b.iter_mut().enumerate() {
                    *x = c.get(o + i).copied().unwrap_or(0);
                }
                u32::from_le_bytes(b)
            }
            _ => 0,
        }
    }

    /// A register write. Queue notifications are served at once.
    pub fn write(&mut self, off: u64, v: u32, ram: &mut GuestRam, out: &mut Vec<DeviceOutput>) {
        let sel = self.queue_sel as usize;
        let set_lo = |x: &mut u64| *x = (*x & !0xffff_ffff) | v as u64;
        let set_hi = |x: &mut u64| *x = (*x & 0xffff_ffff) | ((v as u64) << 32);
        match off {
            0x014 => self.dev_features_sel = v,
            0x020 => match self.drv_features_sel {
                0 => self.drv_features = (self.drv_features & !0xffff_ffff) | v as u64,
                1 => self.drv_features = (self.drv_features & 0xffff_ffff) | ((v as u64) << 32),
                _ => {}
            },
            0x024 => self.drv_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 => {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.size = v.min(q.max as u32) as u16;
                }
            }
            0x044 => {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.ready = v & 1 != 0;
                }
            }
            0x050 => self.notify(v as usize, ram, out),
            0x064 => self.interrupt_status &= !v,
            0x070 => {
                if v == 0 {
                    self.reset();
                } else {
                    self.status = v | (self.status & STATUS_NEEDS_RESET);
                }
            }
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                if let Some(q) = self.queues.get_mut(sel) {
                    let f = match off & !4 {
                        0x080 => &mut q.desc,
                        0x090 => &mut q.avail,
                        _ => &mut q.used,
                    };
                    if off & 4 == 0 {
                        set_lo(f)
                    } else {
                        set_hi(f)
                    }
                }
            }
            _ => {}
        }
    }

    fn notify(&mut self, qi: usize, ram: &mut GuestRam, out: &mut Vec<DeviceOutput>) {
        if !self.driver_ok() || qi >= self.queues.len() {
            return;
        }
        let r = match &self.dev {
            Device::Blk { .. } => self.blk_requests(ram, out),
            Device::Net { .. } if qi == 1 => self.net_transmit(ram, out),
            // Receive buffers and entropy requests wait for input.
            _ => Ok(()),
        };
        if let Err(e) = r {
            self.fail(e);
        }
    }

    fn used(
        &mut self,
        qi: usize,
        ram: &mut GuestRam,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        self.queues[qi].push_used(ram, head, len)?;
        self.interrupt_status |= INT_USED;
        Ok(())
    }

    fn blk_requests(
        &mut self,
        ram: &mut GuestRam,
        out: &mut Vec<DeviceOutput>,
    ) -> Result<(), QueueError> {
        while let Some(chain) = self.queues[0].pop(ram)? {
            let Device::Blk {
                sectors,
                serial,
                next_id,
                pending,
            } = &mut self.dev
            else {
                unreachable!()
            };
            let hdr = chain.read_all(ram);
            let status_ok = chain.writable.last().is_some_and(|b| b.len >= 1);
            if hdr.len() < 16 || !status_ok {
                // No room for a status byte: nothing can be reported; return the chain.
                let head = chain.head;
                self.used(0, ram, head, 0)?;
                continue;
            }
            let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
            let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
            let data_len = chain.writable_len() - 1;
            let in_range = |len: usize| {
                len.is_multiple_of(512)
                    && sector
                        .checked_add(len as u64 / 512)
                        .is_some_and(|end| end <= *sectors)
            };
            let op = match kind {
                BLK_T_IN if in_range(data_len) => Some(DiskOp::Read {
                    sector,
                    len: data_len,
                }),
                BLK_T_OUT if in_range(hdr.len() - 16) => Some(DiskOp::Write {
                    sector,
                    data: hdr[16..].to_vec(),
                }),
                BLK_T_FLUSH => Some(DiskOp::Flush),
                BLK_T_GET_ID => {
                    let n = chain.write_all(ram, &serial[..data_len.min(20)]);
                    let serial_len = n as u32;
                    self.finish_blk(ram, &chain, BLK_S_OK, serial_len)?;
                    continue;
                }
                BLK_T_IN | BLK_T_OUT => {
                    self.finish_blk(ram, &chain, BLK_S_IOERR, 0)?;
                    continue;
                }
                _ => {
                    self.finish_blk(ram, &chain, BLK_S_UNSUPP, 0)?;
                    continue;
                }
            };
            if let Some(op) = op {
                let id = *next_id;
                *next_id += 1;
                pending.push_back(PendingBlk { id, chain });
                out.push(DeviceOutput::Disk(DiskRequest {
                    slot: self.slot,
                    id,
                    op,
                }));
            }
        }
        Ok(())
    }

    /// Write the status byte (the last writable byte) and return the chain.
    fn finish_blk(
        &mut self,
        ram: &mut GuestRam,
        chain: &Chain,
        status: u8,
        data: u32,
    ) -> Result<(), QueueError> {
        let last = chain.writable.last().expect("checked at submission");
        ram.write(last.addr + last.len as u64 - 1, &[status])
            .ok_or(QueueError::RingOutOfRange)?;
        self.used(0, ram, chain.head, data + 1)
    }

    /// The host finished disk request `id`: `data` holds what a read returned, or `ok` is false.
    pub fn disk_done(&mut self, ram: &mut GuestRam, id: u64, ok: bool, data: &[u8]) {
        let Device::Blk { pending, .. } = &mut self.dev else {
            return;
        };
        let Some(pos) = pending.iter().position(|p| p.id == id) else {
            return;
        };
        let p = pending.remove(pos).expect("position is valid");
        if self.broken() {
            return;
        }
        let mut written = 0;
        if ok && !data.is_empty() {
            written = p.chain.write_all(ram, data) as u32;
        }
        let status = if ok { BLK_S_OK } else { BLK_S_IOERR };
        if let Err(e) = self.finish_blk(ram, &p.chain, status, written) {
            self.fail(e);
        }
    }

    fn net_transmit(
        &mut self,
        ram: &mut GuestRam,
        out: &mut Vec<DeviceOutput>,
    ) -> Result<(), QueueError> {
        while let Some(chain) = self.queues[1].pop(ram)? {
            let bytes = chain.read_all(ram);
            if bytes.len() > NET_HDR_LEN {
                out.push(DeviceOutput::Frame {
                    slot: self.slot,
                    frame: bytes[NET_HDR_LEN..].to_vec(),
                });
            }
            self.used(1, ram, chain.head, 0)?;
        }
        Ok(())
    }

    /// Whether a received frame can be delivered now (the driver posted a receive buffer).
    pub fn net_rx_ready(&self, ram: &GuestRam) -> bool {
        matches!(self.dev, Device::Net { .. })
            && self.driver_ok()
            && self.queues[0].has_available(ram)
    }

    /// Deliver a received frame; false if it had to be dropped.
    pub fn net_receive(&mut self, ram: &mut GuestRam, frame: &[u8]) -> bool {
        if !matches!(self.dev, Device::Net { .. }) || !self.driver_ok() {
            return false;
        }
        let chain = match self.queues[0].pop(ram) {
            Ok(Some(c)) => c,
            Ok(None) => return false,
            Err(e) => {
                self.fail(e);
                return false;
            }
        };
        let mut pkt = vec![0u8; NET_HDR_LEN];
        pkt[10] = 1; // num_buffers
        pkt.extend_from_slice(frame);
        let n = chain.write_all(ram, &pkt);
        if let Err(e) = self.used(0, ram, chain.head, n as u32) {
            self.fail(e);
        }
        n == pkt.len()
    }

    /// Bytes of entropy the driver is waiting for (0 if none).
    pub fn rng_wanted(&self, ram: &GuestRam) -> usize {
        if matches!(self.dev, Device::Rng) && self.driver_ok() && self.queues[0].has_available(ram)
        {
            64
        } else {
            0
        }
    }

    /// Fill the driver's entropy buffers from `bytes`.
    pub fn rng_fill(&mut self, ram: &mut GuestRam, bytes: &[u8]) {
        if !matches!(self.dev, Device::Rng) || !self.driver_ok() {
            return;
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let chain = match self.queues[0].pop(ram) {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => return self.fail(e),
            };
            let n = chain.write_all(ram, rest);
            rest = &rest[n..];
            if let Err(e) = self.used(0, ram, chain.head, n as u32) {
                return self.fail(e);
            }
        }
    }

    pub fn save(&self, w: &mut Writer) {
        w.u8(self.dev.id() as u8);
        match &self.dev {
            Device::Blk {
                sectors,
                serial,
                next_id,
                pending,
            } => {
                w.u64(*sectors);
                w.bytes(serial);
                w.u64(*next_id);
                w.u64(pending.len() as u64);
                for p in pending {
                    w.u64(p.id);
                    save_chain(w, &p.chain);
                }
            }
            Device::Net { mac } => w.bytes(mac),
            Device::Rng => {}
        }
        for v in [
            self.dev_features_sel,
            self.drv_features_sel,
            self.queue_sel,
            self.status,
            self.interrupt_status,
            self.config_generation,
        ] {
            w.u32(v);
        }
        w.u64(self.drv_features);
        for q in &self.queues {
            w.u32(q.max as u32);
            w.u32(q.size as u32);
            w.u8(q.ready as u8);
            w.u64(q.desc);
            w.u64(q.avail);
            w.u64(q.used);
            w.u32(q.last_avail as u32);
            w.u32(q.next_used as u32);
        }
    }

    pub fn load(slot: usize, r: &mut Reader) -> Result<VirtioMmio, SnapshotError> {
        let bad = SnapshotError::Invalid("virtio device");
        let dev = match r.u8()? {
            2 => {
                let sectors = r.u64()?;
                let serial: [u8; 20] = r.bytes()?.try_into().map_err(|_| bad.clone())?;
                let next_id = r.u64()?;
                let n = r.u64()?;
                if n > QUEUE_MAX as u64 {
                    return Err(bad);
                }
                let mut pending = VecDeque::new();
                for _ in 0..n {
                    let id = r.u64()?;
                    pending.push_back(PendingBlk {
                        id,
                        chain: load_chain(r)?,
                    });
                }
                Device::Blk {
                    sectors,
                    serial,
                    next_id,
                    pending,
                }
            }
            1 => Device::Net {
                mac: r.bytes()?.try_into().map_err(|_| bad.clone())?,
            },
            4 => Device::Rng,
            _ => return Err(bad),
        };
        let mut m = VirtioMmio::new(slot, dev);
        m.dev_features_sel = r.u32()?;
        m.drv_features_sel = r.u32()?;
        m.queue_sel = r.u32()?;
        m.status = r.u32()?;
        m.interrupt_status = r.u32()?;
        m.config_generation = r.u32()?;
        m.drv_features = r.u64()?;
        for q in m.queues.iter_mut() {
            q.max = r.u32()? as u16;
            q.size = r.u32()? as u16;
            q.ready = r.u8()? != 0;
            q.desc = r.u64()?;
            q.avail = r.u64()?;
            q.used = r.u64()?;
            q.last_avail = r.u32()? as u16;
            q.next_used = r.u32()? as u16;
        }
        Ok(m)
    }
}

fn save_chain(w: &mut Writer, c: &Chain) {
    w.u32(c.head as u32);
    for list in [&c.readable, &c.writable] {
        w.u64(list.len() as u64);
        for b in list.iter() {
            w.u64(b.addr);
            w.u32(b.len);
        }
    }
}

fn load_chain(r: &mut Reader) -> Result<Chain, SnapshotError> {
    let head = r.u32()? as u16;
    let mut lists = [Vec::new(), Vec::new()];
    for list in lists.iter_mut() {
        let n = r.u64()?;
        if n > QUEUE_MAX as u64 {
            return Err(SnapshotError::Invalid("virtio chain"));
        }
        for _ in 0..n {
            list.push(queue::Buf {
                addr: r.u64()?,
                len: r.u32()?,
            });
        }
    }
    let [readable, writable] = lists;
    Ok(Chain {
        head,
        readable,
        writable,
    })
}
