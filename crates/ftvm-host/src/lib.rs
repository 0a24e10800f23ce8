//! Live host backends for ftvm's devices (disks, TAP devices, user-mode networks through
//! passt, the console). Each runs on threads of its own and reports to the
//! thread that runs the guest through one channel of [`HostEvent`]s (or of any event type made
//! from them, so the runner can mix in events of its own), so that thread never blocks on host
//! I/O. Nothing here touches the machine: the runner turns events into
//! `ftvm_machine::Input`s at the instruction counts it chooses.

pub mod console;
pub mod disk;
pub mod tap;
pub mod user;

use std::io::Read;

/// What the host has for the machine.
#[derive(Debug)]
pub enum HostEvent {
    /// Bytes typed on (or piped to) the console.
    Console(Vec<u8>),
    /// The console input ended.
    ConsoleEof,
    /// The user asked to quit (Ctrl-A x).
    Quit,
    /// A frame arrived on the network (TAP or user-mode) of virtio slot `slot`.
    Frame { slot: usize, frame: Vec<u8> },
    /// A disk request finished.
    DiskDone {
        slot: usize,
        id: u64,
        ok: bool,
        data: Vec<u8>,
    },
}

/// Where a backend's threads hand what they got: a channel's sending half, or anything that
/// sends like one (the runner's own, which also wakes it where it waits in `poll`).
pub trait EventSink<E>: Clone + Send + 'static {
    /// Hand `e` over; false once nobody receives any more.
    fn deliver(&self, e: E) -> bool;
}

impl<E: Send + 'static> EventSink<E> for std::sync::mpsc::Sender<E> {
    fn deliver(&self, e: E) -> bool {
        self.send(e).is_ok()
    }
}

/// Random bytes from the host (the kernel's CSPRNG).
pub fn host_entropy(n: usize) -> std::io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut v)?;
    Ok(v)
}

/// Nanoseconds since the Unix epoch, from the host's wall clock.
pub fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A deterministic stream of bytes (xorshift64*), for entropy under the virtual clock.
pub struct DetEntropy(u64);

impl DetEntropy {
    pub fn new(seed: u64) -> DetEntropy {
        DetEntropy(seed | 1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            v.extend_from_slice(&self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        v.truncate(n);
        v
    }
}
