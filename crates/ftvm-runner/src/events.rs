//! The runner's event channel: what the host's backends, the replication layer and the
//! operators send it ([`Event`]s), in order. A channel like `std::sync::mpsc`'s, whose
//! receiving side can also wait for a descriptor at the same time ([`EventRx::wait_with`]): a
//! protected primary's runner, its guest idle and outputs held, waits for the acknowledgement
//! on the link's socket itself, and an event still wakes it at once. (Without it a receiving
//! thread watched the socket and woke the runner through the channel: two more context
//! switches and a futex for each acknowledgement.)
//!
//! Senders ring an eventfd only while the receiver is parked in `poll`, and only the first of
//! them for one wait, so a send costs what an `mpsc` send costs otherwise.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SendError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use crate::Event;

/// The bell a parked receiver listens for.
struct Bell {
    /// The receiver waits in `poll` (on `fd` among others).
    parked: AtomicBool,
    /// An eventfd (non-blocking), or none where the system gave none: then the receiver never
    /// parks on a descriptor.
    fd: Option<OwnedFd>,
}

impl Bell {
    fn ring(&self) {
        // (Against the receiver's store and try_recv: see `EventRx::wait_with`.)
        fence(Ordering::SeqCst);
        // The first sender to find the receiver parked rings; the others find it unparked
        // (the eventfd stays readable until the receiver, awake, empties it).
        if self.parked.swap(false, Ordering::SeqCst) {
            if let Some(fd) = &self.fd {
                let one = 1u64.to_ne_bytes();
                // SAFETY: writes 8 bytes from a live buffer to the eventfd this bell owns. A
                // full counter (EAGAIN) means it is already readable: nothing is lost.
                unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
            }
        }
    }

    /// Empty the eventfd (it may hold a ring meant for a wait that had already ended).
    fn clear(&self) {
        if let Some(fd) = &self.fd {
            let mut b = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live buffer from the eventfd this bell owns
            // (non-blocking: EAGAIN when it is empty).
            unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
        }
    }
}

/// The sending half (cloned by each sender).
#[derive(Clone)]
pub struct EventTx {
    tx: Sender<Event>,
    bell: Arc<Bell>,
}

/// The receiving half (the runner's).
pub struct EventRx {
    rx: Receiver<Event>,
    bell: Arc<Bell>,
}

/// A channel of events.
pub fn events() -> (EventTx, EventRx) {
    let (tx, rx) = mpsc::channel();
    // SAFETY: eventfd takes no pointers; a negative result is an error, checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    // SAFETY: a descriptor eventfd just returned, owned by nobody else.
    let fd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
    let bell = Arc::new(Bell {
        parked: AtomicBool::new(false),
        fd,
    });
    (
        EventTx {
            tx,
            bell: bell.clone(),
        },
        EventRx { rx, bell },
    )
}

impl EventTx {
    /// Send `ev` (waking the receiver if it is parked); an error once the receiver is gone.
    pub fn send(&self, ev: Event) -> Result<(), SendError<Event>> {
        self.tx.send(ev)?;
        self.bell.ring();
        Ok(())
    }
}

impl ftvm_host::EventSink<Event> for EventTx {
    fn deliver(&self, e: Event) -> bool {
        self.send(e).is_ok()
    }
}

/// How [`EventRx::wait_with`] ended.
#[derive(Debug)]
pub enum Waited {
    /// An event.
    Event(Event),
    /// The descriptor is readable (or closed).
    Ready,
    /// Neither within the time (with every sender gone, only the descriptor is waited for).
    Timeout,
}

impl EventRx {
    pub fn recv_timeout(&self, limit: Duration) -> Result<Event, RecvTimeoutError> {
        self.rx.recv_timeout(limit)
    }

    pub fn try_recv(&self) -> Result<Event, TryRecvError> {
        self.rx.try_recv()
    }

    /// Wait up to `limit` for an event or for `fd` to be readable, whichever comes first. An
    /// event already queued is returned at once.
    pub fn wait_with(&self, fd: RawFd, limit: Duration) -> Waited {
        let Some(bell) = &self.bell.fd else {
            // No eventfd: wait for events only, looking at the descriptor every millisecond.
            let step = limit.min(Duration::from_millis(1));
            return match self.rx.recv_timeout(step) {
                Ok(ev) => Waited::Event(ev),
                Err(RecvTimeoutError::Timeout) => Waited::Ready,
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(step);
                    Waited::Ready
                }
            };
        };
        let deadline = std::time::Instant::now() + limit;
        loop {
            // Parked first, then the queue looked at: a sender that sent after this look sees
            // `parked` (both sides fence), so its event either is found here or rings the bell.
            self.bell.parked.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let waited = match self.rx.try_recv() {
                Ok(ev) => Some(Waited::Event(ev)),
                Err(TryRecvError::Disconnected | TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    let mut fds = [
                        libc::pollfd {
                            fd,
                            events: libc::POLLIN,
                            revents: 0,
                        },
                        libc::pollfd {
                            fd: bell.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                    ];
                    // Rounded up: a wait never ends before its time.
                    let ms = libc::c_int::try_from(left.as_micros().div_ceil(1000))
                        .unwrap_or(libc::c_int::MAX);
                    // SAFETY: `fds` is an array of two valid pollfds that lives across the
                    // call; the bell's descriptor is owned by `self`, `fd` is the caller's and
                    // open.
                    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
                    match self.rx.try_recv() {
                        Ok(ev) => Some(Waited::Event(ev)),
                        Err(_) if n > 0 && fds[0].revents != 0 => Some(Waited::Ready),
                        Err(_) if left.is_zero() || n == 0 => Some(Waited::Timeout),
                        // The bell rang for a wait that had already ended (or poll was
                        // interrupted): wait on.
                        Err(_) => None,
                    }
                }
            };
            self.bell.parked.store(false, Ordering::SeqCst);
            self.bell.clear();
            if let Some(w) = waited {
                return w;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Far longer than any wake-up takes, and short enough that a wake-up that never comes
    /// fails the test (as `Timeout`) rather than hangs it.
    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn a_parked_receiver_wakes_for_an_event_or_its_descriptor_and_else_waits_its_time() {
        let (tx, rx) = events();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        // Quiet: the whole time passes.
        let t0 = Instant::now();
        assert!(matches!(
            rx.wait_with(a.as_raw_fd(), Duration::from_millis(30)),
            Waited::Timeout
        ));
        assert!(t0.elapsed() >= Duration::from_millis(29));
        // An event queued before: at once.
        tx.send(Event::Wake).unwrap();
        assert!(matches!(
            rx.wait_with(a.as_raw_fd(), LONG),
            Waited::Event(Event::Wake)
        ));
        // An event sent while it is parked wakes it.
        let sender = {
            let tx = tx.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                tx.send(Event::Wake).unwrap();
            })
        };
        assert!(matches!(
            rx.wait_with(a.as_raw_fd(), LONG),
            Waited::Event(Event::Wake)
        ));
        sender.join().unwrap();
        // The descriptor becoming readable wakes it.
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            use std::io::Write;
            (&b).write_all(b"x").unwrap();
            b
        });
        assert!(matches!(rx.wait_with(a.as_raw_fd(), LONG), Waited::Ready));
        let b = writer.join().unwrap();
        // A ring left over from a wait that ended (a sender saw it parked a moment too late)
        // does not end the next one early.
        let mut buf = [0u8; 1];
        use std::io::Read;
        (&a).read_exact(&mut buf).unwrap();
        tx.bell.parked.store(true, Ordering::SeqCst);
        tx.bell.ring();
        tx.bell.parked.store(false, Ordering::SeqCst);
        let t0 = Instant::now();
        assert!(matches!(
            rx.wait_with(a.as_raw_fd(), Duration::from_millis(30)),
            Waited::Timeout
        ));
        assert!(t0.elapsed() >= Duration::from_millis(29));
        // Every sender gone: the descriptor is still waited for, the time still taken.
        drop(tx);
        let t0 = Instant::now();
        assert!(matches!(
            rx.wait_with(a.as_raw_fd(), Duration::from_millis(30)),
            Waited::Timeout
        ));
        assert!(t0.elapsed() >= Duration::from_millis(29));
        use std::io::Write;
        (&b).write_all(b"y").unwrap();
        assert!(matches!(rx.wait_with(a.as_raw_fd(), LONG), Waited::Ready));
    }
}
