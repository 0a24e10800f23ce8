//! What the roles need of a link, apart from how it is carried: a sending and a receiving
//! half. [`Channel`] carries it over TCP (authenticated); [`memory`] carries it between threads
//! of one process, for tests of the roles and for simulation.

use std::time::Duration;

use crate::channel::{Channel, ChannelError, Closer, Msg, Waiter};

/// The sending half of a link.
pub trait Outgoing: Send {
    fn send(&mut self, m: &Msg) -> Result<(), ChannelError>;
    /// The generation stamped on every message from now on.
    fn set_generation(&mut self, generation: u64);
    /// Bound how long a send may block on a peer that stops reading.
    fn set_write_timeout(&self, limit: Option<Duration>) -> Result<(), ChannelError>;
    /// Close the link, both ways.
    fn shutdown(&self);
    /// A handle that closes the link from another thread, even while a send blocks.
    fn closer(&self) -> Result<Closer, ChannelError>;
}

/// The receiving half of a link.
pub trait Incoming: Send {
    /// The next message, dropping those of an older generation than the newest seen.
    fn recv(&mut self) -> Result<Msg, ChannelError>;
    /// The oldest generation accepted from now on.
    fn set_generation(&mut self, generation: u64);
    /// The newest generation seen (or set).
    fn generation(&self) -> u64;
    /// Bound how long a receive may wait (`None`: forever); a timeout is an `Io` error of kind
    /// `TimedOut` or `WouldBlock`.
    fn set_read_timeout(&mut self, limit: Option<Duration>) -> Result<(), ChannelError>;
    fn shutdown(&self);
    /// The next message if a whole one has arrived, without waiting. A transport that cannot
    /// tell says `None` always (its messages then come by `recv` alone).
    fn try_recv(&mut self) -> Result<Option<Msg>, ChannelError> {
        Ok(None)
    }
    /// A way to wait, from another thread and without holding this half, until something can
    /// be received; `None` if the transport has none (then only `recv` waits).
    fn waiter(&self) -> Option<Waiter> {
        None
    }
    /// The descriptor that becomes readable when something can be received (or the link
    /// closed), valid while this half lives; `None` if the transport has none.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// Both halves of one side's link.
pub type Halves = (Box<dyn Outgoing>, Box<dyn Incoming>);

impl Outgoing for Channel {
    fn send(&mut self, m: &Msg) -> Result<(), ChannelError> {
        Channel::send(self, m)
    }
    fn set_generation(&mut self, generation: u64) {
        Channel::set_generation(self, generation)
    }
    fn set_write_timeout(&self, limit: Option<Duration>) -> Result<(), ChannelError> {
        Channel::set_write_timeout(self, limit)
    }
    fn shutdown(&self) {
        Channel::shutdown(self)
    }
    fn closer(&self) -> Result<Closer, ChannelError> {
        Channel::closer(self)
    }
}

impl Incoming for Channel {
    fn recv(&mut self) -> Result<Msg, ChannelError> {
        Channel::recv(self)
    }
    fn set_generation(&mut self, generation: u64) {
        Channel::set_generation(self, generation)
    }
    fn generation(&self) -> u64 {
        Channel::generation(self)
    }
    fn set_read_timeout(&mut self, limit: Option<Duration>) -> Result<(), ChannelError> {
        Channel::set_read_timeout(self, limit)
    }
    fn shutdown(&self) {
        Channel::shutdown(self)
    }
    fn try_recv(&mut self) -> Result<Option<Msg>, ChannelError> {
        Channel::try_recv(self)
    }
    fn waiter(&self) -> Option<Waiter> {
        Channel::waiter(self).ok()
    }
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(Channel::raw_fd(self))
    }
}

/// Box the two halves of an authenticated TCP channel.
pub fn boxed((tx, rx): (Channel, Channel)) -> Halves {
    (Box::new(tx), Box::new(rx))
}

/// A link between two threads of one process: messages keep their order, carry their
/// generation, and the link closes both ways when either side shuts it down or drops a half.
pub mod memory {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{self, RecvTimeoutError};
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Halves, Incoming, Outgoing};
    use crate::channel::{ChannelError, Closer, Msg};

    struct Tx {
        q: mpsc::Sender<(u64, Msg)>,
        generation: u64,
        closed: Arc<AtomicBool>,
    }

    struct Rx {
        q: mpsc::Receiver<(u64, Msg)>,
        generation: u64,
        timeout: Option<Duration>,
        closed: Arc<AtomicBool>,
    }

    fn closed() -> ChannelError {
        ChannelError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "the in-memory link was closed",
        ))
    }

    impl Outgoing for Tx {
        fn send(&mut self, m: &Msg) -> Result<(), ChannelError> {
            if self.closed.load(Ordering::SeqCst) {
                return Err(closed());
            }
            self.q
                .send((self.generation, m.clone()))
                .map_err(|_| closed())
        }
        fn set_generation(&mut self, generation: u64) {
            self.generation = generation;
        }
        fn set_write_timeout(&self, _: Option<Duration>) -> Result<(), ChannelError> {
            Ok(())
        }
        fn shutdown(&self) {
            self.closed.store(true, Ordering::SeqCst);
        }
        fn closer(&self) -> Result<Closer, ChannelError> {
            let closed = self.closed.clone();
            Ok(Box::new(move || closed.store(true, Ordering::SeqCst)))
        }
    }

    impl Incoming for Rx {
        fn recv(&mut self) -> Result<Msg, ChannelError> {
            let step = Duration::from_millis(1);
            let mut waited = Duration::ZERO;
            loop {
                if self.closed.load(Ordering::SeqCst) {
                    return Err(closed());
                }
                match self.q.recv_timeout(step) {
                    Ok((generation, _)) if generation < self.generation => continue,
                    Ok((generation, m)) => {
                        self.generation = generation;
                        return Ok(m);
                    }
                    Err(RecvTimeoutError::Disconnected) => return Err(closed()),
                    Err(RecvTimeoutError::Timeout) => {
                        waited += step;
                        if self.timeout.is_some_and(|t| waited >= t) {
                            return Err(ChannelError::Io(std::io::ErrorKind::TimedOut.into()));
                        }
                    }
                }
            }
        }
        fn set_generation(&mut self, generation: u64) {
            self.generation = generation;
        }
        fn generation(&self) -> u64 {
            self.generation
        }
        fn set_read_timeout(&mut self, limit: Option<Duration>) -> Result<(), ChannelError> {
            self.timeout = limit;
            Ok(())
        }
        fn shutdown(&self) {
            self.closed.store(true, Ordering::SeqCst);
        }
    }

    /// Breaks a link from outside, as a partition or a dead peer's closed socket would.
    #[derive(Clone)]
    pub struct Cut(Arc<AtomicBool>);

    impl Cut {
        pub fn cut(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// Two connected ends: what one sends, the other receives.
    pub fn pair() -> (Halves, Halves) {
        let (a, b, _) = pair_with_cut();
        (a, b)
    }

    /// Two connected ends, and a handle that breaks the link.
    pub fn pair_with_cut() -> (Halves, Halves, Cut) {
        let closed = Arc::new(AtomicBool::new(false));
        let (atx, brx) = mpsc::channel();
        let (btx, arx) = mpsc::channel();
        let end = |q, r| -> Halves {
            (
                Box::new(Tx {
                    q,
                    generation: 0,
                    closed: closed.clone(),
                }),
                Box::new(Rx {
                    q: r,
                    generation: 0,
                    timeout: None,
                    closed: closed.clone(),
                }),
            )
        };
        (end(atx, arx), end(btx, brx), Cut(closed.clone()))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ordered_generational_and_closable() {
            let ((mut atx, mut arx), (mut btx, mut brx)) = pair();
            let beat = |count| Msg::Heartbeat { count, clock: 0 };
            atx.set_generation(2);
            atx.send(&beat(1)).unwrap();
            atx.set_generation(1);
            atx.send(&beat(2)).unwrap();
            atx.set_generation(2);
            atx.send(&beat(3)).unwrap();
            assert_eq!(brx.recv().unwrap(), beat(1));
            assert_eq!(
                brx.recv().unwrap(),
                beat(3),
                "the old generation's message is dropped"
            );
            btx.send(&beat(4)).unwrap();
            assert_eq!(arx.recv().unwrap(), beat(4));
            arx.set_read_timeout(Some(Duration::from_millis(5)))
                .unwrap();
            assert!(
                matches!(arx.recv(), Err(ChannelError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut)
            );
            btx.shutdown();
            assert!(atx.send(&beat(5)).is_err());
            assert!(brx.recv().is_err());
        }
    }
}
