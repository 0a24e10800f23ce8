//! The sending half of a link, shared with the side's protocol state, and the log stream
//! written over it.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::channel::{ChannelError, Msg};
use crate::lease::now_ns;
use crate::protocol::{BackupSide, PrimarySide};
use crate::transport::Outgoing;

/// A side's protocol state, as the link needs it.
pub(crate) trait Side: Send + 'static {
    fn link_broke(&mut self);
}

impl Side for PrimarySide {
    fn link_broke(&mut self) {
        PrimarySide::link_broke(self)
    }
}

impl Side for BackupSide {
    fn link_broke(&mut self) {
        BackupSide::link_broke(self)
    }
}

struct Shared<S> {
    side: S,
    tx: Box<dyn Outgoing>,
}

/// The sending half of a link and the side's protocol state ([`crate::protocol`]), under one
/// lock, shared by whoever sends or receives: the runner (log bytes), the receiving thread
/// (acknowledgements) and the heartbeat thread. Each writes from its own thread, so the
/// output-commit path (log out, acknowledgement back) crosses no extra thread. Every message is
/// built by the protocol state under the lock it is sent under, so once the side has cut its
/// ties (fenced) nothing more leaves. A write blocks at most the write limit; a failed write
/// breaks the link.
pub(crate) struct SendHalf<S> {
    inner: Arc<Mutex<Shared<S>>>,
}

impl<S> Clone for SendHalf<S> {
    fn clone(&self) -> Self {
        SendHalf {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Side> SendHalf<S> {
    pub(crate) fn new(
        tx: Box<dyn Outgoing>,
        write_limit: Duration,
        side: S,
    ) -> Result<SendHalf<S>, ChannelError> {
        tx.set_write_timeout(Some(write_limit))?;
        Ok(SendHalf {
            inner: Arc::new(Mutex::new(Shared { side, tx })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared<S>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Look at or change the protocol state (under the sending lock).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut self.lock().side)
    }

    /// Change the protocol state and, if `f` says so, close the connection, both under the
    /// sending lock (so no send is under way): cutting the ties.
    pub(crate) fn cut_if<R>(&self, f: impl FnOnce(&mut S) -> (R, bool)) -> R {
        let mut g = self.lock();
        let (r, close) = f(&mut g.side);
        if close {
            g.tx.shutdown();
        }
        r
    }

    /// A handle that closes the connection from another thread, even while a send blocks
    /// under the lock.
    pub(crate) fn closer(&self) -> Result<crate::channel::Closer, ChannelError> {
        self.lock().tx.closer()
    }

    /// Stamp every message from now on with `generation`.
    pub(crate) fn set_generation(&self, generation: u64) {
        self.lock().tx.set_generation(generation)
    }

    pub(crate) fn set_write_limit(&self, limit: Duration) -> Result<(), ChannelError> {
        self.lock().tx.set_write_timeout(Some(limit))
    }

    /// Send a heartbeat every `beat` while this half (or a clone of it) is kept; `make` builds
    /// each one from the protocol state just before it is written (so a stamp in it is the
    /// time it leaves), or none once the side stopped talking.
    pub(crate) fn heartbeats(
        &self,
        beat: Duration,
        make: impl Fn(&S, u64) -> Option<Msg> + Send + 'static,
    ) {
        let weak = Arc::downgrade(&self.inner);
        spawn("link-beat", move || loop {
            std::thread::sleep(beat);
            let Some(inner) = weak.upgrade() else { return };
            let half = SendHalf { inner };
            if !half.send_with(|s| make(s, now_ns())) {
                return;
            }
        });
    }

    /// Send the message `make` builds from the protocol state (under the sending lock); false
    /// if it built none (the side cut its ties, or the link broke) or the write failed.
    pub(crate) fn send_with(&self, make: impl FnOnce(&mut S) -> Option<Msg>) -> bool {
        let mut g = self.lock();
        let Shared { side, tx } = &mut *g;
        let Some(msg) = make(side) else {
            return false;
        };
        if tx.send(&msg).is_err() {
            side.link_broke();
            tx.shutdown();
            return false;
        }
        true
    }

    /// The link broke (seen by the receiving side): close it.
    pub(crate) fn broke(&self) {
        let mut g = self.lock();
        g.side.link_broke();
        g.tx.shutdown();
    }
}

/// A thread with a name (as `ps -T` and `perf` show it), started as [`std::thread::spawn`]
/// starts one (and, like it, panics only when the system cannot start a thread).
pub(crate) fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot start the thread {name}: {e}"))
}

/// Closes the link when dropped, unless disarmed (an attach that fails half-way).
pub(crate) struct CloseOnDrop<S: Side>(pub(crate) Option<SendHalf<S>>);

impl<S: Side> Drop for CloseOnDrop<S> {
    fn drop(&mut self) {
        if let Some(out) = self.0.take() {
            out.broke();
        }
    }
}

/// Log bytes travel in messages of at most this many bytes, however large a record (a disk
/// read's data) is: the receiver never needs more than this for one message.
pub(crate) const LOG_PIECE: usize = 1 << 20;

/// Log bytes for the backup: buffered, sent on flush in messages of at most [`LOG_PIECE`]
/// bytes (each stamped with the time it leaves).
pub(crate) struct LinkWriter {
    pub(crate) buf: Vec<u8>,
    pub(crate) out: SendHalf<PrimarySide>,
}

impl Write for LinkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.buf.len() <= LOG_PIECE {
            // One message (the usual case): the buffer itself goes, not a copy, and the next
            // one starts with room for as much (within 64 KiB) instead of growing from empty.
            let room = self.buf.len().min(64 << 10);
            let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(room));
            self.out.send_with(|s| s.log(now_ns(), piece));
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        for piece in buf.chunks(LOG_PIECE) {
            // A dead backup is noticed by the runner through the link's state.
            if !self.out.send_with(|s| s.log(now_ns(), piece.to_vec())) {
                break;
            }
        }
        Ok(())
    }
}
