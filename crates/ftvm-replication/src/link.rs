//! The sending half of a link, shared by whoever sends, and the log stream written over it.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::channel::{ChannelError, Msg};
use crate::lease::{now_ns, Peer};
use crate::transport::Outgoing;

/// The sending half of a link, shared by whoever sends: the runner (log bytes), the receiving
/// thread (acknowledgements) and the heartbeat thread. Each writes from its own thread, so
/// the output-commit path (log out, acknowledgement back) crosses no extra thread. A write
/// blocks at most the write limit; a failed write marks the link broken. Once this side has
/// cut its ties ([`SendHalf::cut`]) nothing more is sent.
#[derive(Clone)]
pub(crate) struct SendHalf {
    tx: Arc<Mutex<Box<dyn Outgoing>>>,
    pub(crate) peer: Arc<Peer>,
}

impl SendHalf {
    pub(crate) fn new(
        tx: Box<dyn Outgoing>,
        write_limit: Duration,
        peer: Arc<Peer>,
    ) -> Result<SendHalf, ChannelError> {
        tx.set_write_timeout(Some(write_limit))?;
        Ok(SendHalf {
            tx: Arc::new(Mutex::new(tx)),
            peer,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Box<dyn Outgoing>> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_write_limit(&self, limit: Duration) -> Result<(), ChannelError> {
        self.lock().set_write_timeout(Some(limit))
    }

    pub(crate) fn set_generation(&self, generation: u64) {
        self.lock().set_generation(generation);
    }

    /// Send a heartbeat every `beat` while this half (or a clone of it) is kept; `make` builds
    /// each one just before it is written (so a stamp in it is the time it leaves).
    pub(crate) fn heartbeats(&self, beat: Duration, make: impl Fn(&Peer) -> Msg + Send + 'static) {
        let weak = Arc::downgrade(&self.tx);
        let peer = self.peer.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(beat);
            let Some(tx) = weak.upgrade() else { return };
            let half = SendHalf {
                tx,
                peer: peer.clone(),
            };
            if !half.send_with(|| make(&peer)) {
                return;
            }
        });
    }

    /// Send the message `make` builds (under the sending lock, after the fence is checked);
    /// false if the link is broken or this side has cut it.
    pub(crate) fn send_with(&self, make: impl FnOnce() -> Msg) -> bool {
        let mut tx = self.lock();
        if self.peer.fenced() || self.peer.broken() {
            return false;
        }
        if tx.send(&make()).is_err() {
            self.peer.set_broken();
            tx.shutdown();
            return false;
        }
        true
    }

    /// Cut every tie to the peer: nothing more is sent (no heartbeat, no echo, no
    /// acknowledgement) and the connection is closed. Returns when the peer can hold no lease
    /// from this side any more (see [`crate::lease`]).
    pub(crate) fn cut(&self, wait: Duration) -> u64 {
        let tx = self.lock();
        let free_at = self.peer.fence(wait);
        tx.shutdown();
        free_at
    }
}

/// Cuts the link when dropped, unless disarmed (an attach that fails half-way).
pub(crate) struct CutOnDrop(pub(crate) Option<SendHalf>);

impl Drop for CutOnDrop {
    fn drop(&mut self) {
        if let Some(out) = self.0.take() {
            out.cut(Duration::ZERO);
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
    pub(crate) out: SendHalf,
}

impl Write for LinkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        for piece in buf.chunks(LOG_PIECE) {
            // A dead backup is noticed by the runner through the link's state.
            if !self.out.send_with(|| Msg::Log {
                clock: now_ns(),
                bytes: piece.to_vec(),
            }) {
                break;
            }
        }
        Ok(())
    }
}
