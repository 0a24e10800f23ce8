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
/// ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, DEVICE_NEEDS_RESET, FAILED.
const STATUS_KNOWN: u32 = 0xcf;
const INT_USED: u32 = 1;
const INT_CONFIG: u32 = 2;
const QUEUE_MAX: u16 = 256;

const BLK_F_SIZE_MAX: u64 = 1 << 1;
const BLK_F_SEG_MAX: u64 = 1 << 2;
const BLK_F_FLUSH: u64 = 1 << 9;
const NET_F_MAC: u64 = 1 << 5;
/// virtio_net_hdr with num_buffers (VIRTIO_F_VERSION_1).
pub const NET_HDR_LEN: usize = 12;
/// The largest frame a transmit chain may carry (after the header): an Ethernet frame with a
/// VLAN tag and the largest MTU Linux allows without VIRTIO_NET_F_MTU (65535 + 14 + 4). No
/// offloads are offered, so nothing larger is legitimate; larger chains are returned unsent.
pub const NET_MAX_FRAME: usize = 65535 + 18;

/// Largest data segment of a block request (size_max in the configuration space).
pub const BLK_SIZE_MAX: u32 = 64 << 10;
/// Most data segments per block request (seg_max in the configuration space).
pub const BLK_SEG_MAX: u32 = 126;
/// Most data bytes of one block request. Linux never builds a larger one (its segments are
/// bounded by size_max and seg_max); a larger one fails with VIRTIO_BLK_S_IOERR before
/// anything is copied, so a request never costs the host more than this.
pub const BLK_MAX_REQUEST: u64 = BLK_SEG_MAX as u64 * BLK_SIZE_MAX as u64;

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
    pub(crate) id: u64,
    pub(crate) chain: Chain,
}

#[cfg(test)]
impl PendingBlk {
    pub(crate) fn new(id: u64, chain: Chain) -> PendingBlk {
        PendingBlk { id, chain }
    }
}

#[cfg(test)]
impl VirtioMmio {
    pub(crate) fn set_driver_features(&mut self, f: u64) {
        self.drv_features = f;
    }
    pub(crate) fn set_status(&mut self, s: u32) {
        self.status = s;
    }
    pub(crate) fn pending_mut(&mut self) -> &mut VecDeque<PendingBlk> {
        match &mut self.dev {
            Device::Blk { pending, .. } => pending,
            _ => panic!("not a disk"),
        }
    }
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
                Device::Blk { .. } => BLK_F_SIZE_MAX | BLK_F_SEG_MAX | BLK_F_FLUSH,
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
                c[8..12].copy_from_slice(&BLK_SIZE_MAX.to_le_bytes());
                c[12..16].copy_from_slice(&BLK_SEG_MAX.to_le_bytes());
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
            // Only offered features are kept: the driver cannot read them back, and a snapshot
            // must hold a subset of the device's features.
            0x020 => {
                let f = match self.drv_features_sel {
                    0 => (self.drv_features & !0xffff_ffff) | v as u64,
                    1 => (self.drv_features & 0xffff_ffff) | ((v as u64) << 32),
                    _ => self.drv_features,
                };
                self.drv_features = f & self.dev.features();
            }
            0x024 => self.drv_features_sel = v,
            0x030 => self.queue_sel = v,
            // A queue's configuration is fixed while it is ready (virtio 1.1, 4.2.2.2).
            0x038 => {
                if let Some(q) = self.queues.get_mut(sel).filter(|q| !q.ready) {
                    q.size = v.min(q.max as u32) as u16;
                }
            }
            0x044 => {
                if let Some(q) = self.queues.get_mut(sel) {
                    if v & 1 == 0 {
                        q.ready = false;
                    } else if !q.ready {
                        // A queue becomes ready only with a valid size and rings in RAM, so
                        // that a ready queue (in a snapshot too) is always a usable one.
                        q.ready = true;
                        if let Err(e) = q.check_rings(ram) {
                            q.ready = false;
                            self.fail(e);
                        }
                    }
                }
            }
            0x050 => self.notify(v as usize, ram, out),
            0x064 => self.interrupt_status &= !v,
            0x070 => {
                if v == 0 {
                    self.reset();
                } else {
                    self.status = (v & STATUS_KNOWN) | (self.status & STATUS_NEEDS_RESET);
                }
            }
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                if let Some(q) = self.queues.get_mut(sel).filter(|q| !q.ready) {
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
            // Only the header is read before the request is checked: the data is copied (for
            // a write) once its length is known to be within the device's limits.
            let readable = chain.readable_len();
            let status_ok = chain.writable.last().is_some_and(|b| b.len >= 1);
            if readable < 16 || !status_ok {
                // No room for a status byte: nothing can be reported; return the chain.
                let head = chain.head;
                self.used(0, ram, head, 0)?;
                continue;
            }
            let mut hdr = [0u8; 16];
            chain.read_into(ram, 0, &mut hdr);
            let [k0, k1, k2, k3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = hdr;
            let kind = u32::from_le_bytes([k0, k1, k2, k3]);
            let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
            let data_len = chain.writable_len() - 1;
            let write_len = readable - 16;
            let in_range = |len: u64| {
                len <= BLK_MAX_REQUEST
                    && len.is_multiple_of(512)
                    && sector
                        .checked_add(len / 512)
                        .is_some_and(|end| end <= *sectors)
            };
            let op = match kind {
                BLK_T_IN if in_range(data_len) => Some(DiskOp::Read {
                    sector,
                    len: data_len as usize,
                }),
                BLK_T_OUT if in_range(write_len) => {
                    let mut data = vec![0u8; write_len as usize];
                    chain.read_into(ram, 16, &mut data);
                    Some(DiskOp::Write { sector, data })
                }
                BLK_T_FLUSH => Some(DiskOp::Flush),
                BLK_T_GET_ID => {
                    let n = chain.write_all(ram, &serial[..(data_len as usize).min(20)]);
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
            // The length is checked before anything is copied: an oversized chain (nothing
            // larger than NET_MAX_FRAME is legitimate) is returned unsent, as a dropped frame.
            let len = chain.readable_len();
            if len > (NET_HDR_LEN + NET_MAX_FRAME) as u64 {
                tracing::debug!(slot = self.slot, len, "oversized transmit chain dropped");
            } else if len > NET_HDR_LEN as u64 {
                let mut frame = vec![0u8; len as usize - NET_HDR_LEN];
                chain.read_into(ram, NET_HDR_LEN as u64, &mut frame);
                out.push(DeviceOutput::Frame {
                    slot: self.slot,
                    frame,
                });
            }
            self.used(1, ram, chain.head, 0)?;
        }
        Ok(())
    }

    /// Whether a received frame can be delivered now (the driver posted a receive buffer).
    pub fn net_rx_ready(&self, ram: &mut GuestRam) -> bool {
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
        // The header, then the frame straight from the host's buffer (no intermediate copy).
        let mut hdr = [0u8; NET_HDR_LEN];
        hdr[10] = 1; // num_buffers
        let mut n = chain.write_at(ram, 0, &hdr);
        if n == NET_HDR_LEN {
            n += chain.write_at(ram, NET_HDR_LEN as u64, frame);
        }
        if let Err(e) = self.used(0, ram, chain.head, n as u32) {
            self.fail(e);
        }
        n == NET_HDR_LEN + frame.len()
    }

    /// Bytes of entropy the driver is waiting for (0 if none).
    pub fn rng_wanted(&self, ram: &mut GuestRam) -> usize {
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

    /// A device from a snapshot, checked against what the device offers and against a RAM of
    /// `ram_size` bytes (as Firecracker's virtio persistence does): queue sizes and addresses,
    /// negotiated features, the status, and every buffer of the requests in flight.
    pub fn load(slot: usize, ram_size: u64, r: &mut Reader) -> Result<VirtioMmio, SnapshotError> {
        let bad = SnapshotError::Invalid;
        let mut pending = VecDeque::new();
        let dev = match r.u8()? {
            2 => {
                let sectors = r.u64()?;
                if sectors > u64::MAX / 512 {
                    return Err(bad("virtio-blk capacity"));
                }
                let serial: [u8; 20] = r
                    .bytes_max(20, "virtio-blk serial")?
                    .try_into()
                    .map_err(|_| bad("virtio-blk serial"))?;
                let next_id = r.u64()?;
                let n = r.u64()?;
                if n > QUEUE_MAX as u64 {
                    return Err(bad(
                        "virtio-blk: more requests in flight than a queue holds",
                    ));
                }
                for _ in 0..n {
                    let id = r.u64()?;
                    if id >= next_id || pending.back().is_some_and(|p: &PendingBlk| p.id >= id) {
                        return Err(bad("virtio-blk request ids"));
                    }
                    pending.push_back(PendingBlk {
                        id,
                        chain: load_chain(r)?,
                    });
                }
                Device::Blk {
                    sectors,
                    serial,
                    next_id,
                    pending: VecDeque::new(),
                }
            }
            1 => Device::Net {
                mac: r
                    .bytes_max(6, "virtio-net MAC address")?
                    .try_into()
                    .map_err(|_| bad("virtio-net MAC address"))?,
            },
            4 => Device::Rng,
            _ => return Err(bad("unknown virtio device type")),
        };
        let mut m = VirtioMmio::new(slot, dev);
        m.dev_features_sel = r.u32()?;
        m.drv_features_sel = r.u32()?;
        m.queue_sel = r.u32()?;
        m.status = r.u32()?;
        m.interrupt_status = r.u32()?;
        m.config_generation = r.u32()?;
        m.drv_features = r.u64()?;
        if m.drv_features & !m.dev.features() != 0 {
            return Err(bad("virtio driver features that the device does not offer"));
        }
        if m.status & !STATUS_KNOWN != 0 {
            return Err(bad("virtio device status"));
        }
        if m.interrupt_status & !(INT_USED | INT_CONFIG) != 0 {
            return Err(bad("virtio interrupt status"));
        }
        let ram = RamBounds(ram_size);
        for q in m.queues.iter_mut() {
            if r.u32()? != QUEUE_MAX as u32 {
                return Err(bad("virtio queue maximum differs from the device's"));
            }
            let size = r.u32()?;
            if size > QUEUE_MAX as u32 {
                return Err(bad("virtio queue size larger than the device's maximum"));
            }
            q.size = size as u16;
            q.ready = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(bad("virtio queue ready flag")),
            };
            q.desc = r.u64()?;
            q.avail = r.u64()?;
            q.used = r.u64()?;
            let (last_avail, next_used) = (r.u32()?, r.u32()?);
            q.last_avail = u16::try_from(last_avail).map_err(|_| bad("virtio queue index"))?;
            q.next_used = u16::try_from(next_used).map_err(|_| bad("virtio queue index"))?;
            if q.ready {
                let n = q.size as u64;
                if n == 0 || !q.size.is_power_of_two() {
                    return Err(bad("virtio queue size is not a power of two"));
                }
                if !(ram.holds(q.desc, 16 * n)
                    && ram.holds(q.avail, 6 + 2 * n)
                    && ram.holds(q.used, 6 + 8 * n))
                {
                    return Err(bad("virtio queue rings outside RAM"));
                }
            }
        }
        if !pending.is_empty() {
            let q = &m.queues[0];
            for p in &pending {
                let c = &p.chain;
                let descriptors = c.readable.len() + c.writable.len();
                let status_ok = c.writable.last().is_some_and(|b| b.len >= 1);
                if !q.ready
                    || c.head >= q.size
                    || descriptors > q.size as usize
                    || !status_ok
                    || !c
                        .readable
                        .iter()
                        .chain(c.writable.iter())
                        .all(|b| ram.holds(b.addr, b.len as u64))
                {
                    return Err(bad(
                        "virtio-blk request in flight does not fit its queue or RAM",
                    ));
                }
            }
            if let Device::Blk { pending: p, .. } = &mut m.dev {
                *p = pending;
            }
        }
        Ok(m)
    }
}

/// Guest RAM's extent, for checks made before RAM exists (restoring a snapshot).
struct RamBounds(u64);

impl RamBounds {
    fn holds(&self, addr: u64, len: u64) -> bool {
        addr.checked_sub(crate::RAM_BASE)
            .and_then(|off| off.checked_add(len))
            .is_some_and(|end| end <= self.0)
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
    let head = u16::try_from(r.u32()?).map_err(|_| SnapshotError::Invalid("virtio chain head"))?;
    let mut lists = [Vec::new(), Vec::new()];
    for list in lists.iter_mut() {
        let n = r.u64()?;
        if n > QUEUE_MAX as u64 {
            return Err(SnapshotError::Invalid("virtio chain longer than a queue"));
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

#[cfg(test)]
mod tests {
    use super::queue::{DESC_F_NEXT, DESC_F_WRITE};
    use super::*;
    use crate::alloc_probe::largest_allocation;
    use crate::RAM_BASE;

    const RAM: usize = 1 << 20;
    const DESC: u64 = RAM_BASE + 0x1000;
    const AVAIL: u64 = RAM_BASE + 0x2000;
    const USED: u64 = RAM_BASE + 0x3000;
    const HDR: u64 = RAM_BASE + 0x4000;
    const STATUS: u64 = RAM_BASE + 0x5000;

    /// A device whose queue `qi` (of 256 entries) is set up at DESC/AVAIL/USED, driver OK.
    fn ready(mut dev: VirtioMmio, qi: u32, mem: &mut [u8]) -> VirtioMmio {
        let mut ram = GuestRam::new(mem);
        let mut out = Vec::new();
        for (off, v) in [
            (0x30, qi),
            (0x38, 256),
            (0x80, DESC as u32),
            (0x84, 0),
            (0x90, AVAIL as u32),
            (0x94, 0),
            (0xa0, USED as u32),
            (0xa4, 0),
            (0x44, 1),
            (0x70, 0xf),
        ] {
            dev.write(off, v, &mut ram, &mut out);
        }
        assert!(dev.driver_ok() && dev.queues[qi as usize].ready);
        dev
    }

    /// Write the chain `bufs` (address, length, device-writable) as descriptors 0.., offer it
    /// and notify queue `qi`; returns what the device sent.
    fn submit(
        dev: &mut VirtioMmio,
        qi: u32,
        mem: &mut [u8],
        bufs: &[(u64, u32, bool)],
    ) -> Vec<DeviceOutput> {
        let mut ram = GuestRam::new(mem);
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let d = DESC + 16 * i as u64;
            let mut flags = if w { DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            ram.write(d, &addr.to_le_bytes()).unwrap();
            ram.write(d + 8, &len.to_le_bytes()).unwrap();
            ram.write(d + 12, &flags.to_le_bytes()).unwrap();
            ram.write(d + 14, &(i as u16 + 1).to_le_bytes()).unwrap();
        }
        let idx = ram.u16(AVAIL + 2).unwrap();
        ram.write(AVAIL + 4 + 2 * (idx % 256) as u64, &0u16.to_le_bytes())
            .unwrap();
        ram.write(AVAIL + 2, &idx.wrapping_add(1).to_le_bytes())
            .unwrap();
        let mut out = Vec::new();
        dev.write(0x50, qi, &mut ram, &mut out);
        out
    }

    fn blk_header(mem: &mut [u8], kind: u32, sector: u64) {
        let mut ram = GuestRam::new(mem);
        ram.write(HDR, &kind.to_le_bytes()).unwrap();
        ram.write(HDR + 8, &sector.to_le_bytes()).unwrap();
    }

    fn used_idx(mem: &mut [u8]) -> u16 {
        GuestRam::new(mem).u16(USED + 2).unwrap()
    }

    /// The chain of a block request: header, `data` (each buffer `chunk` bytes, device-readable
    /// for a write), status byte.
    fn blk_chain(data: u64, write: bool) -> Vec<(u64, u32, bool)> {
        let mut bufs = vec![(HDR, 16, false)];
        let mut left = data;
        while left > 0 {
            let n = left.min(RAM as u64);
            bufs.push((RAM_BASE, n as u32, !write));
            left -= n;
        }
        bufs.push((STATUS, 1, true));
        bufs
    }

    #[test]
    fn blk_advertises_its_request_limits() {
        let dev = VirtioMmio::blk(0, 1 << 30, "d");
        assert_ne!(dev.dev.features() & BLK_F_SIZE_MAX, 0);
        assert_ne!(dev.dev.features() & BLK_F_SEG_MAX, 0);
        assert_eq!(dev.read(0x108), BLK_SIZE_MAX);
        assert_eq!(dev.read(0x10c), BLK_SEG_MAX);
    }

    #[test]
    fn huge_blk_requests_are_refused_without_allocating_them() {
        // 254 descriptors each covering all of guest RAM: a 254 MiB request from 1 MiB of RAM.
        let mut mem = vec![0u8; RAM];
        let mut dev = ready(VirtioMmio::blk(0, 1 << 30, "d"), 0, &mut mem);
        for (n, kind) in [BLK_T_OUT, BLK_T_IN].into_iter().enumerate() {
            blk_header(&mut mem, kind, 0);
            let chain = blk_chain(254 * RAM as u64, kind == BLK_T_OUT);
            assert_eq!(chain.len(), 256);
            let (out, largest) = largest_allocation(|| submit(&mut dev, 0, &mut mem, &chain));
            assert!(out.is_empty(), "no disk request: {:?}", out.len());
            assert!(largest < 64 << 10, "allocated {largest} bytes");
            assert_eq!(mem[(STATUS - RAM_BASE) as usize], BLK_S_IOERR);
            assert_eq!(used_idx(&mut mem), n as u16 + 1);
            assert!(!dev.broken());
        }
    }

    #[test]
    fn blk_requests_up_to_the_limit_are_served() {
        let mut mem = vec![0u8; RAM];
        let mut dev = ready(VirtioMmio::blk(0, 1 << 30, "d"), 0, &mut mem);
        blk_header(&mut mem, BLK_T_OUT, 8);
        let out = submit(&mut dev, 0, &mut mem, &blk_chain(BLK_MAX_REQUEST, true));
        match &out[..] {
            [DeviceOutput::Disk(DiskRequest {
                op: DiskOp::Write { sector: 8, data },
                ..
            })] => assert_eq!(data.len() as u64, BLK_MAX_REQUEST),
            other => panic!("expected one write, got {} outputs", other.len()),
        }
        blk_header(&mut mem, BLK_T_IN, 8);
        let out = submit(&mut dev, 0, &mut mem, &blk_chain(BLK_MAX_REQUEST, false));
        assert!(matches!(
            &out[..],
            [DeviceOutput::Disk(DiskRequest {
                op: DiskOp::Read { sector: 8, len },
                ..
            })] if *len as u64 == BLK_MAX_REQUEST
        ));
        // One sector more fails at once.
        for kind in [BLK_T_OUT, BLK_T_IN] {
            blk_header(&mut mem, kind, 8);
            let chain = blk_chain(BLK_MAX_REQUEST + 512, kind == BLK_T_OUT);
            assert!(submit(&mut dev, 0, &mut mem, &chain).is_empty());
            assert_eq!(mem[(STATUS - RAM_BASE) as usize], BLK_S_IOERR);
        }
    }

    #[test]
    fn oversized_transmit_chains_are_dropped_without_allocating_them() {
        let mut mem = vec![0u8; RAM];
        let net = VirtioMmio::new(
            0,
            Device::Net {
                mac: [2, 0, 0, 0, 0, 1],
            },
        );
        let mut dev = ready(net, 1, &mut mem);
        let chain: Vec<_> = (0..256).map(|_| (RAM_BASE, RAM as u32, false)).collect();
        let (out, largest) = largest_allocation(|| submit(&mut dev, 1, &mut mem, &chain));
        assert!(out.is_empty());
        assert!(largest < 64 << 10, "allocated {largest} bytes");
        assert_eq!(used_idx(&mut mem), 1, "the chain is returned");
        assert!(!dev.broken());
        // The largest legitimate frame still goes out, header stripped.
        let max = (NET_HDR_LEN + NET_MAX_FRAME) as u32;
        let out = submit(&mut dev, 1, &mut mem, &[(RAM_BASE, max, false)]);
        assert!(
            matches!(&out[..], [DeviceOutput::Frame { frame, .. }] if frame.len() == NET_MAX_FRAME)
        );
        assert!(submit(&mut dev, 1, &mut mem, &[(RAM_BASE, max + 1, false)]).is_empty());
    }

    #[test]
    fn received_frames_are_scattered_behind_the_header() {
        let mut mem = vec![0u8; RAM];
        let net = VirtioMmio::new(
            0,
            Device::Net {
                mac: [2, 0, 0, 0, 0, 1],
            },
        );
        let mut dev = ready(net, 0, &mut mem);
        let bufs = [(RAM_BASE + 0x6000, 5, true), (RAM_BASE + 0x7000, 100, true)];
        assert!(submit(&mut dev, 0, &mut mem, &bufs).is_empty());
        let frame: Vec<u8> = (1..=20).collect();
        assert!(dev.net_receive(&mut GuestRam::new(&mut mem), &frame));
        assert_eq!(mem[0x6000..0x6005], [0; 5]);
        assert_eq!(mem[0x7000..0x7007], [0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(mem[0x7007..0x701b], frame[..]);
        let used_len = GuestRam::new(&mut mem).u32(USED + 8).unwrap();
        assert_eq!(used_len, 32);
        // A frame larger than the buffers is cut and reported as dropped.
        assert!(submit(&mut dev, 0, &mut mem, &bufs).is_empty());
        assert!(!dev.net_receive(&mut GuestRam::new(&mut mem), &[7; 200]));
    }

    #[test]
    fn a_queue_becomes_ready_only_when_usable() {
        for (size, desc) in [(3, DESC), (0, DESC), (256, RAM_BASE + RAM as u64 - 16)] {
            let mut mem = vec![0u8; RAM];
            let mut dev = VirtioMmio::blk(0, 1 << 20, "d");
            let mut ram = GuestRam::new(&mut mem);
            let mut out = Vec::new();
            for (off, v) in [
                (0x38, size),
                (0x80, desc as u32),
                (0x90, AVAIL as u32),
                (0xa0, USED as u32),
                (0x44, 1),
            ] {
                dev.write(off, v, &mut ram, &mut out);
            }
            assert!(!dev.queues[0].ready, "size {size} desc {desc:#x}");
            assert!(dev.broken());
        }
        // Once ready, the configuration is fixed; unoffered features and unknown status bits
        // are not kept.
        let mut mem = vec![0u8; RAM];
        let mut dev = ready(VirtioMmio::blk(0, 1 << 20, "d"), 0, &mut mem);
        let mut ram = GuestRam::new(&mut mem);
        let mut out = Vec::new();
        for (off, v) in [
            (0x38, 3),
            (0x80, 0),
            (0x24, 1),
            (0x20, 0xffff_ffff),
            (0x70, 0x3f),
        ] {
            dev.write(off, v, &mut ram, &mut out);
        }
        assert_eq!((dev.queues[0].size, dev.queues[0].desc), (256, DESC));
        assert_eq!(dev.drv_features, F_VERSION_1);
        assert_eq!(dev.status, 0xf);
    }
}
