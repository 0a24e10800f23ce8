//! User-mode networking without root: a virtio-net device's frames go to and come from a
//! `passt` process (Debian's `passt` package) over a socketpair, in QEMU's stream protocol
//! (each frame is a 4-byte big-endian length, then the Ethernet frame). passt terminates the
//! guest's TCP/UDP/ICMP in ordinary host sockets and listens on the host ports forwarded to
//! the guest. It runs as a separate process that drops its privileges and sandboxes itself,
//! so the untrusted traffic is parsed outside ftvm's address space.
//!
//! A reader thread feeds received frames to the event channel as [`HostEvent::Frame`]s (so
//! they are inputs like a TAP's); [`UserNet::send`] queues the guest's frames for a writer
//! thread and never blocks (a full queue drops the frame, as a TAP's kernel queue does).
//! passt exits when its end of the socketpair closes, so it goes away with ftvm even when
//! ftvm is killed; dropping a [`UserNet`] kills and reaps it at once.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::{EventSink, HostEvent};

/// The largest frame either side may send (the stream protocol's frames are Ethernet frames;
/// a length beyond this is a protocol error, never an allocation).
pub const MAX_FRAME: usize = 65536;

/// How many of the guest's frames may wait for the writer thread before new ones are dropped.
const QUEUE_FRAMES: usize = 1024;

/// How long a start waits for passt to fail (e.g. on a host port already taken).
const START_WAIT: Duration = Duration::from_millis(300);

#[derive(Debug, Error)]
pub enum UserNetError {
    #[error("passt not found: user-mode networking needs Debian's passt package (apt-get install passt)")]
    Missing,
    #[error("cannot start passt: {0}")]
    Spawn(std::io::Error),
    #[error("passt exited at start ({status}){message}")]
    Exited { status: String, message: String },
}

/// A host port forwarded to a guest TCP port: connections to `host_addr:host_port` on the host
/// reach `guest_port` on the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFwd {
    pub host_addr: Ipv4Addr,
    pub host_port: u16,
    pub guest_port: u16,
}

impl fmt::Display for HostFwd {
    /// passt's `-t` spec: `ADDR/HOSTPORT:GUESTPORT`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}:{}",
            self.host_addr, self.host_port, self.guest_port
        )
    }
}

/// A user-mode network: the guest's address, prefix and gateway (as its `ftvm.ip=` sets
/// them), and the host ports forwarded to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSpec {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub forwards: Vec<HostFwd>,
}

impl UserSpec {
    /// passt's arguments for this network, talking to the guest on descriptor 0.
    pub fn passt_args(&self) -> Vec<String> {
        let mut v: Vec<String> = ["-f", "-q", "-e", "--fd", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend([
            "-a".into(),
            self.addr.to_string(),
            "-n".into(),
            self.prefix.to_string(),
            "-g".into(),
            self.gateway.to_string(),
        ]);
        if self.forwards.is_empty() {
            v.extend(["-t".into(), "none".into()]);
        }
        for f in &self.forwards {
            v.extend(["-t".into(), f.to_string()]);
        }
        v.extend(["-u".into(), "none".into()]);
        v
    }
}

/// Whether a `passt` executable is on the PATH.
pub fn passt_available() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| is_executable(&d.join("passt"))))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Why the frame stream from passt stopped.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("frame length {0} out of range (1 to {MAX_FRAME})")]
    Length(u32),
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error("read failed: {0}")]
    Io(String),
}

/// Read length-prefixed frames from `r`, handing each to `deliver` until it returns false or
/// the stream ends at a frame boundary (Ok) or breaks the protocol (Err).
pub fn read_frames(
    mut r: impl Read,
    mut deliver: impl FnMut(Vec<u8>) -> bool,
) -> Result<(), StreamError> {
    let mut len = [0u8; 4];
    loop {
        match read_full(&mut r, &mut len)? {
            0 => return Ok(()),
            4 => {}
            _ => return Err(StreamError::Truncated),
        }
        let n = u32::from_be_bytes(len);
        if n == 0 || n as usize > MAX_FRAME {
            return Err(StreamError::Length(n));
        }
        let mut frame = vec![0u8; n as usize];
        if read_full(&mut r, &mut frame)? != frame.len() {
            return Err(StreamError::Truncated);
        }
        if !deliver(frame) {
            return Ok(());
        }
    }
}

/// Fill `buf` from `r`; returns how much was read before the stream ended (all of it if it
/// did not).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, StreamError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StreamError::Io(e.to_string())),
        }
    }
    Ok(got)
}

/// One frame as the stream protocol carries it, or None if it is empty or too long.
pub fn encode_frame(frame: &[u8]) -> Option<Vec<u8>> {
    if frame.is_empty() || frame.len() > MAX_FRAME {
        return None;
    }
    let mut v = Vec::with_capacity(4 + frame.len());
    v.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    v.extend_from_slice(frame);
    Some(v)
}

/// A virtio-net device's user-mode network: a passt process and the threads that talk to it.
pub struct UserNet {
    child: Child,
    frames: SyncSender<Vec<u8>>,
    slot: usize,
}

impl UserNet {
    /// Start passt for virtio slot `slot` with network `spec`. Fails if passt is not installed
    /// or exits at once (its message is in the error).
    pub fn open<E: From<HostEvent> + Send + 'static>(
        spec: &UserSpec,
        slot: usize,
        events: impl EventSink<E>,
    ) -> Result<UserNet, UserNetError> {
        let (ours, theirs) = UnixStream::pair().map_err(UserNetError::Spawn)?;
        let mut cmd = Command::new("passt");
        cmd.args(spec.passt_args())
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C on ftvm's terminal is ftvm's to handle; passt
            // ends when ftvm closes (or loses) its end of the socket.
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(UserNetError::Missing)
            }
            Err(e) => return Err(UserNetError::Spawn(e)),
        };
        // The spawned command still holds passt's end: drop it so passt's exit is our EOF.
        drop(cmd);
        let stderr = child.stderr.take().map(|s| {
            std::thread::Builder::new()
                .name(format!("passt{slot}-err"))
                .spawn(move || log_stderr(s, slot))
        });
        let stderr = match stderr.transpose() {
            Ok(h) => h,
            Err(e) => {
                kill(&mut child);
                return Err(UserNetError::Spawn(e));
            }
        };
        // passt fails fast when it cannot bind a forwarded port: wait briefly for that.
        let t0 = Instant::now();
        while t0.elapsed() < START_WAIT {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let lines = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
                    let message = if lines.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", lines.join("; "))
                    };
                    return Err(UserNetError::Exited {
                        status: status.to_string(),
                        message,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => {
                    kill(&mut child);
                    return Err(UserNetError::Spawn(e));
                }
            }
        }
        match start_threads(ours, slot, events) {
            Ok(frames) => Ok(UserNet {
                child,
                frames,
                slot,
            }),
            Err(e) => {
                kill(&mut child);
                Err(UserNetError::Spawn(e))
            }
        }
    }

    /// Queue one frame for passt; never blocks (a full queue drops the frame).
    pub fn send(&self, frame: &[u8]) {
        match self.frames.try_send(frame.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::debug!(slot = self.slot, "user network queue full; frame dropped")
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::debug!(slot = self.slot, "user network down; frame dropped")
            }
        }
    }
}

impl Drop for UserNet {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The reader and writer threads on our end of the socket; returns the writer's queue.
fn start_threads<E: From<HostEvent> + Send + 'static>(
    sock: UnixStream,
    slot: usize,
    events: impl EventSink<E>,
) -> std::io::Result<SyncSender<Vec<u8>>> {
    let reader = sock.try_clone()?;
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_FRAMES);
    std::thread::Builder::new()
        .name(format!("passt{slot}-tx"))
        .spawn(move || {
            let mut sock = sock;
            while let Ok(frame) = rx.recv() {
                let Some(bytes) = encode_frame(&frame) else {
                    tracing::debug!(slot, len = frame.len(), "frame of a bad length dropped");
                    continue;
                };
                if let Err(e) = sock.write_all(&bytes) {
                    tracing::warn!(slot, error = %e, "cannot write to passt: the user network is down");
                    return;
                }
            }
        })?;
    std::thread::Builder::new()
        .name(format!("passt{slot}-rx"))
        .spawn(move || {
            let r = read_frames(BufReader::with_capacity(1 << 16, reader), |frame| {
                events.deliver(HostEvent::Frame { slot, frame }.into())
            });
            match r {
                Ok(()) => tracing::debug!(slot, "passt closed the user network"),
                Err(e) => tracing::warn!(slot, error = %e, "user network stopped"),
            }
        })?;
    Ok(tx)
}

/// Log what passt prints; returns its first lines (for an error at start).
fn log_stderr(s: impl Read, slot: usize) -> Vec<String> {
    let mut first = Vec::new();
    for line in BufReader::new(s).lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        // With no system logger passt says so for every message; that is noise.
        if line.is_empty() || (line.starts_with("Failed to send") && line.ends_with("to syslog")) {
            continue;
        }
        tracing::info!(slot, "passt: {line}");
        if first.len() < 20 && !line.starts_with("Don't run as root") {
            first.push(line.to_string());
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn frames_of(bytes: &[u8]) -> (Vec<Vec<u8>>, Result<(), StreamError>) {
        let mut got = Vec::new();
        let r = read_frames(bytes, |f| {
            got.push(f);
            true
        });
        (got, r)
    }

    #[test]
    fn reads_frames_until_a_clean_end() {
        let a = encode_frame(&[1, 2, 3]).unwrap();
        let b = encode_frame(&[9; 60]).unwrap();
        let (got, r) = frames_of(&stream(&[&a, &b]));
        assert_eq!(r, Ok(()));
        assert_eq!(got, vec![vec![1, 2, 3], vec![9; 60]]);
        let (got, r) = frames_of(&[]);
        assert_eq!((got.len(), r), (0, Ok(())));
    }

    #[test]
    fn rejects_bad_lengths_before_allocating() {
        let (got, r) = frames_of(&[0, 0, 0, 0, 1, 2]);
        assert_eq!((got.len(), r), (0, Err(StreamError::Length(0))));
        let (got, r) = frames_of(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!((got.len(), r), (0, Err(StreamError::Length(u32::MAX))));
        let too_long = (MAX_FRAME as u32 + 1).to_be_bytes();
        let (_, r) = frames_of(&too_long);
        assert_eq!(r, Err(StreamError::Length(MAX_FRAME as u32 + 1)));
        // The largest frame is accepted.
        let big = encode_frame(&vec![7; MAX_FRAME]).unwrap();
        let (got, r) = frames_of(&big);
        assert_eq!((got[0].len(), r), (MAX_FRAME, Ok(())));
    }

    #[test]
    fn a_frame_cut_short_is_an_error() {
        let a = encode_frame(&[1, 2, 3, 4]).unwrap();
        let (got, r) = frames_of(&a[..6]);
        assert_eq!((got.len(), r), (0, Err(StreamError::Truncated)));
        let (got, r) = frames_of(&stream(&[&a, &[0, 0]]));
        assert_eq!((got.len(), r), (1, Err(StreamError::Truncated)));
    }

    #[test]
    fn delivery_can_stop_the_reader() {
        let a = encode_frame(&[1]).unwrap();
        let mut n = 0;
        let r = read_frames(&stream(&[&a, &a, &a])[..], |_| {
            n += 1;
            n < 2
        });
        assert_eq!((n, r), (2, Ok(())));
    }

    #[test]
    fn encodes_only_frames_that_fit() {
        assert_eq!(encode_frame(&[]), None);
        assert_eq!(encode_frame(&vec![0; MAX_FRAME + 1]), None);
        assert_eq!(encode_frame(&[5, 6]).unwrap(), vec![0, 0, 0, 2, 5, 6]);
    }

    #[test]
    fn passt_arguments_forward_only_what_is_asked() {
        let mut s = UserSpec {
            addr: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            forwards: Vec::new(),
        };
        let a = s.passt_args().join(" ");
        assert_eq!(
            a,
            "-f -q -e --fd 0 -a 10.0.2.15 -n 24 -g 10.0.2.2 -t none -u none"
        );
        s.forwards = vec![
            HostFwd {
                host_addr: Ipv4Addr::LOCALHOST,
                host_port: 5555,
                guest_port: 6379,
            },
            HostFwd {
                host_addr: Ipv4Addr::UNSPECIFIED,
                host_port: 8022,
                guest_port: 22,
            },
        ];
        let a = s.passt_args().join(" ");
        assert!(
            a.ends_with("-t 127.0.0.1/5555:6379 -t 0.0.0.0/8022:22 -u none"),
            "{a}"
        );
        assert!(!a.contains("none -t"), "{a}");
    }
}
