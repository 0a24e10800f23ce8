//! The live backends of a machine's devices: disk images and networks (TAP interfaces or
//! user-mode networks through passt), by virtio slot (disks first, then networks, then the
//! entropy source, which needs no backend).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ftvm_host::disk::{Disk, DiskError};
use ftvm_host::tap::{Tap, TapError};
pub use ftvm_host::user::{HostFwd, UserSpec};
use ftvm_host::user::{UserNet, UserNetError};
use ftvm_machine::DeviceSpec;
use thiserror::Error;

use crate::events::EventTx;

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    User(#[from] UserNetError),
}

/// Where a virtio-net device's frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackend {
    /// A TAP interface, by name.
    Tap(String),
    /// A user-mode network: a passt process, with host ports forwarded to the guest.
    User(UserSpec),
}

/// A virtio-net device: its backend and its MAC address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub backend: NetBackend,
    pub mac: [u8; 6],
}

/// The open backend of a network device.
pub enum NetPort {
    Tap(Tap),
    User(UserNet),
}

impl NetPort {
    /// Open the backend of `spec` for virtio slot `slot`.
    pub fn open(spec: &NetSpec, slot: usize, events: &EventTx) -> Result<Self, DeviceError> {
        Ok(match &spec.backend {
            NetBackend::Tap(name) => NetPort::Tap(Tap::open(name, slot, events.clone())?),
            NetBackend::User(u) => NetPort::User(UserNet::open(u, slot, events.clone())?),
        })
    }

    /// Send one of the guest's frames; never blocks for long.
    pub fn send(&self, frame: &[u8]) {
        match self {
            NetPort::Tap(t) => t.send(frame),
            NetPort::User(u) => u.send(frame),
        }
    }
}

/// The devices a machine is given: disk images, networks, and the guest's own address (for the
/// gratuitous ARP that announces where the guest is after a takeover).
#[derive(Clone, Debug, Default)]
pub struct Devices {
    pub disks: Vec<PathBuf>,
    pub nets: Vec<NetSpec>,
    pub guest_ip: Option<Ipv4Addr>,
    /// A bare-metal program's machine, which has no virtio devices at all.
    pub bare_metal: bool,
}

/// The live backends of a machine's devices, by virtio slot.
#[derive(Default)]
pub struct Backends {
    pub disks: HashMap<usize, Disk>,
    pub nets: HashMap<usize, NetPort>,
}

impl Devices {
    /// Open every backend: the networks, then the disks.
    pub fn open_backends(&self, events: &EventTx) -> Result<Backends, DeviceError> {
        let mut b = Backends::default();
        self.open_other_nets(events, &mut b)?;
        self.open_disks(events, &mut b)?;
        Ok(b)
    }

    /// Open the disks into `b`.
    pub fn open_disks(&self, events: &EventTx, b: &mut Backends) -> Result<(), DeviceError> {
        for (slot, path) in self.disks.iter().enumerate() {
            b.disks
                .insert(slot, Disk::open(path, slot, events.clone())?);
        }
        Ok(())
    }

    /// Open the networks on TAP devices (not the user-mode ones), by slot.
    pub fn open_taps(&self, events: &EventTx) -> Result<HashMap<usize, NetPort>, DeviceError> {
        let mut taps = HashMap::new();
        for (slot, net) in self.net_slots() {
            if matches!(net.backend, NetBackend::Tap(_)) {
                taps.insert(slot, NetPort::open(net, slot, events)?);
            }
        }
        Ok(taps)
    }

    /// Open the networks `b` does not have yet.
    pub fn open_other_nets(&self, events: &EventTx, b: &mut Backends) -> Result<(), DeviceError> {
        for (slot, net) in self.net_slots() {
            if let Entry::Vacant(e) = b.nets.entry(slot) {
                let port = NetPort::open(net, slot, events)?;
                // passt learns the guest's MAC from the first frame it gets; until then it
                // sends to the broadcast address, which the guest's TCP ignores. A guest with
                // a static address may say nothing before a client connects: announce it.
                if let (NetPort::User(_), Some(garp)) = (&port, self.garp(slot)) {
                    port.send(&garp);
                }
                e.insert(port);
            }
        }
        Ok(())
    }

    /// The network devices with their virtio slots.
    fn net_slots(&self) -> impl Iterator<Item = (usize, &NetSpec)> {
        let first = self.disks.len();
        self.nets
            .iter()
            .enumerate()
            .map(move |(i, n)| (first + i, n))
    }

    /// The virtio devices these give, in slot order: the disks (of `disk_sizes` bytes), the
    /// networks, then the entropy source.
    pub fn expected(&self, disk_sizes: &[u64]) -> Vec<DeviceSpec> {
        if self.bare_metal {
            return Vec::new();
        }
        let mut devices: Vec<DeviceSpec> = disk_sizes
            .iter()
            .enumerate()
            .map(|(n, &bytes)| DeviceSpec::Disk {
                bytes,
                serial: format!("ftvm-disk{n}"),
            })
            .collect();
        devices.extend(self.nets.iter().map(|n| DeviceSpec::Net { mac: n.mac }));
        devices.push(DeviceSpec::Rng);
        devices
    }

    /// The device layout as both sides of a pair must have it (disk contents and sizes are
    /// the primary's to send): `disks=N nets=MAC,MAC rng`, or `bare-metal`.
    pub fn layout(&self) -> String {
        if self.bare_metal {
            return "bare-metal".into();
        }
        let macs: Vec<String> = self
            .nets
            .iter()
            .map(|n| {
                n.mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            })
            .collect();
        format!("disks={} nets={} rng", self.disks.len(), macs.join(","))
    }

    /// A gratuitous ARP for the guest's address from the MAC of the network device in `slot`.
    pub fn garp(&self, slot: usize) -> Option<Vec<u8>> {
        let net = self.nets.get(slot.checked_sub(self.disks.len())?)?;
        let ip = self.guest_ip?.octets();
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&net.mac);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&net.mac);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&ip);
        f.resize(60, 0);
        Some(f)
    }
}

impl Backends {
    /// Tell the network where the guest is now: a gratuitous ARP on every network.
    pub fn announce(&self, devices: &Devices) {
        for (slot, net) in &self.nets {
            if let Some(frame) = devices.garp(*slot) {
                net.send(&frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_announces_the_guest_address_from_its_mac() {
        let d = Devices {
            disks: vec![PathBuf::from("d.img")],
            nets: vec![NetSpec {
                backend: NetBackend::Tap("t0".into()),
                mac: [2, 0, 0, 0, 0, 9],
            }],
            guest_ip: Some(Ipv4Addr::new(10, 0, 0, 2)),
            bare_metal: false,
        };
        assert_eq!(d.garp(0), None, "slot 0 is the disk");
        let f = d.garp(1).unwrap();
        assert_eq!(f.len(), 60);
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 0, 9]);
        assert_eq!(&f[28..32], &[10, 0, 0, 2]);
        assert_eq!(&f[38..42], &[10, 0, 0, 2]);
        assert_eq!(d.layout(), "disks=1 nets=02:00:00:00:00:09 rng");
        let expected = d.expected(&[512]);
        assert_eq!(expected.len(), 3);
        assert_eq!(expected[2], DeviceSpec::Rng);
    }
}
