//! A TAP network device: a reader thread feeds received frames to the event channel; the
//! guest's frames are written by the caller of [`Tap::send`], at once. (No queue in between:
//! a frame leaves exactly when its sender decided it may, which the pair's output gate
//! relies on; a TAP write never blocks, the kernel drops what its queue cannot take.)

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use thiserror::Error;

use crate::{EventSink, HostEvent};

#[derive(Debug, Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun: {0}")]
    Open(std::io::Error),
    #[error("TAP interface name {0:?} is invalid (1 to 15 bytes)")]
    Name(String),
    #[error("cannot attach to TAP interface {name}: {source}")]
    Attach {
        name: String,
        source: std::io::Error,
    },
}

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

pub struct Tap {
    file: File,
    slot: usize,
}

impl Tap {
    /// Attach to (or create) TAP interface `name` for virtio slot `slot`.
    pub fn open<E: From<HostEvent> + Send + 'static>(
        name: &str,
        slot: usize,
        events: impl EventSink<E>,
    ) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() > 15 || name.contains('\0') {
            return Err(TapError::Name(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq; `req` is a properly sized, initialized
        // ifreq that lives across the call, and the descriptor is open.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if r < 0 {
            return Err(TapError::Attach {
                name: name.into(),
                source: std::io::Error::last_os_error(),
            });
        }
        let mut reader: File = file.try_clone().map_err(TapError::Open)?;
        std::thread::Builder::new()
            .name(format!("tap{slot}-rx"))
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            let ev = HostEvent::Frame {
                                slot,
                                frame: buf[..n].to_vec(),
                            };
                            if !events.deliver(ev.into()) {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::warn!(slot, error = %e, "TAP read failed");
                            return;
                        }
                    }
                }
            })
            .map_err(TapError::Open)?;
        Ok(Tap { file, slot })
    }

    /// Write one frame to the TAP device now.
    pub fn send(&self, frame: &[u8]) {
        if let Err(e) = (&self.file).write_all(frame) {
            tracing::debug!(slot = self.slot, error = %e, "TAP write failed; frame dropped");
        }
    }
}
