//! Failure detection and the primary's output lease: the timing rules that keep at most one
//! side of a pair releasing outputs, whatever the hosts do (die, freeze, stall, lose the link).
//!
//! - The primary stamps each message that carries its log, and each heartbeat, with its clock
//!   `T` when it sends it; the backup echoes the newest stamp it has received in every
//!   acknowledgement and heartbeat. An echo of `T` gives the primary a lease until `T + L`
//!   (`L` = [`Timing::lease`]) on its own clock, and it releases outputs only while it holds one.
//! - The backup received the message stamped `T` at a real time `r >= T`. When it decides the
//!   primary is gone (nothing heard for the dead timeout `D`, or the link closed), it first cuts
//!   every tie: it sends nothing more, no echo, no acknowledgement ([`Peer::fence`]). Then it
//!   waits until `W` = [`Timing::fence_wait`] after the last message it heard, `W > L`, before
//!   it goes live. Every lease the primary can hold ends at `T + L <= r + L`, before
//!   `r + W`: the primary's last release happened before the backup's first one. `W - L` is
//!   the margin for the clocks' rates and the moment between an output's check and its write.
//! - A primary whose lease ran out holds its outputs; once it has not heard the backup for `D`
//!   (or its link broke) it cuts its ties too and asks the arbiter. Only a win lets it release
//!   them, and a win means the backup can never go live in that generation.
//!
//! Clocks are CLOCK_BOOTTIME: it keeps counting while a host is suspended (CLOCK_MONOTONIC
//! does not), so a primary that resumes from a suspend sees its lease as expired. A process that
//! was stopped (SIGSTOP) sees the time that passed, too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The timing of a pair: the heartbeat interval and the dead timeout, and the spans that
/// follow from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Each side sends a heartbeat this often.
    pub beat: Duration,
    /// A peer that sent nothing for this long is taken for dead.
    pub dead: Duration,
}

impl Timing {
    pub fn new(beat: Duration, dead: Duration) -> Timing {
        let beat = beat.max(Duration::from_millis(1));
        Timing {
            beat,
            dead: dead.max(beat),
        }
    }

    /// How long after the stamp of an echo the primary may release outputs: a fifth of the
    /// dead timeout (20 ms by default).
    pub fn lease(&self) -> Duration {
        self.dead / 5
    }

    /// How long after the last message it heard a backup that cut its ties waits before it goes
    /// live: 1.5 leases. When silence was the reason this is long past (`dead` > it).
    pub fn fence_wait(&self) -> Duration {
        self.lease() * 3 / 2
    }

    /// How long a write may block, or a read wait, while a backup's state is transferred:
    /// the dead timeout, but at least a second (disks and snapshots are large writes).
    pub fn stall(&self) -> Duration {
        self.dead.max(Duration::from_secs(1))
    }
}

/// Nanoseconds of CLOCK_BOOTTIME: monotonic, and counting while the host is suspended.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer, which is valid and exclusive
    // for the call; CLOCK_BOOTTIME exists on every Linux since 2.6.39.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if r != 0 {
        // Not reachable on Linux; a clock that does not move would only make leases expire.
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The primary's lease: the time (on `now_ns`) until which the backup cannot have gone live.
#[derive(Debug)]
pub struct Lease {
    until: AtomicU64,
    span: u64,
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

impl Lease {
    /// A lease that lasts `span` after each echoed stamp; held by no echo yet.
    pub fn new(span: Duration) -> Lease {
        Lease {
            until: AtomicU64::new(0),
            span: nanos(span),
        }
    }

    /// The backup echoed the stamp `stamp` (a `now_ns` of this side's, sent in a heartbeat).
    pub fn renew(&self, stamp: u64) {
        self.until
            .fetch_max(stamp.saturating_add(self.span), Ordering::SeqCst);
    }

    /// Whether outputs may be released now.
    pub fn holds(&self) -> bool {
        self.holds_at(now_ns())
    }

    pub fn holds_at(&self, now: u64) -> bool {
        now < self.until.load(Ordering::SeqCst)
    }

    /// Until when the lease holds (0: never renewed).
    pub fn until(&self) -> u64 {
        self.until.load(Ordering::SeqCst)
    }
}

/// What a side knows of its peer: when it last heard from it, whether the link broke, whether
/// this side cut its ties (fenced), and (on a backup) the newest primary stamp to echo.
#[derive(Debug)]
pub struct Peer {
    last_heard: AtomicU64,
    broken: AtomicBool,
    fenced: AtomicBool,
    echo: AtomicU64,
}

impl Default for Peer {
    fn default() -> Peer {
        Peer {
            last_heard: AtomicU64::new(now_ns()),
            broken: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            echo: AtomicU64::new(0),
        }
    }
}

impl Peer {
    /// A message arrived from the peer (call on receipt, before acting on it).
    pub fn heard(&self) {
        self.last_heard.fetch_max(now_ns(), Ordering::SeqCst);
    }

    /// A message stamped `stamp` arrived from the primary: heard, and echoed from now on (in
    /// that order, so that `last_heard` is never older than an echoed stamp's receipt).
    pub fn heard_stamp(&self, stamp: u64) {
        self.heard();
        self.echo.fetch_max(stamp, Ordering::SeqCst);
    }

    /// The stamp to echo to the primary.
    pub fn echo(&self) -> u64 {
        self.echo.load(Ordering::SeqCst)
    }

    pub fn last_heard(&self) -> u64 {
        self.last_heard.load(Ordering::SeqCst)
    }

    /// The link broke (a read or a write failed, or the peer closed it).
    pub fn set_broken(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }

    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// Whether the peer is to be taken for dead: the link broke, or nothing came for `dead`.
    pub fn is_dead(&self, dead: Duration) -> bool {
        self.broken() || now_ns().saturating_sub(self.last_heard()) > nanos(dead)
    }

    /// This side cuts every tie: from now on it sends nothing (no echo, no acknowledgement)
    /// to the peer. Returns the instant (on `now_ns`) from which the peer can hold no lease
    /// from this side any more: `wait` ([`Timing::fence_wait`]) after the last message heard.
    /// A backup waits for it before it goes live (it is in the past when silence was the
    /// reason). The caller must hold the lock its sends take, so no send is under way.
    pub fn fence(&self, wait: Duration) -> u64 {
        self.fenced.store(true, Ordering::SeqCst);
        // Read after the fence is up: every echo sent before it carried a stamp received no
        // later than this.
        self.last_heard().saturating_add(nanos(wait))
    }

    pub fn fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }
}

/// Sleep until `now_ns() >= at`.
pub fn sleep_until(at: u64) {
    loop {
        let now = now_ns();
        if now >= at {
            return;
        }
        std::thread::sleep(Duration::from_nanos((at - now).min(50_000_000)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_millis(100);
    const L: Duration = Duration::from_millis(20);

    #[test]
    fn the_spans_nest_lease_then_fence_wait_then_dead_timeout() {
        for (beat, dead) in [(10, 100), (1, 1), (5, 30), (50, 5000)] {
            let t = Timing::new(Duration::from_millis(beat), Duration::from_millis(dead));
            assert!(t.lease() < t.fence_wait(), "{t:?}");
            assert!(t.fence_wait() < t.dead, "{t:?}");
            assert!(t.stall() >= t.dead);
        }
        let t = Timing::new(Duration::from_millis(10), D);
        assert_eq!((t.lease(), t.fence_wait()), (L, Duration::from_millis(30)));
    }

    #[test]
    fn boottime_moves_forward() {
        let a = now_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now_ns() >= a + 2_000_000);
    }

    #[test]
    fn a_lease_lasts_its_span_after_the_stamp_echoed() {
        let l = Lease::new(L);
        assert!(!l.holds_at(1), "no echo, no lease");
        l.renew(1_000_000_000);
        assert!(l.holds_at(1_000_000_000));
        assert!(l.holds_at(1_019_999_999));
        assert!(!l.holds_at(1_020_000_000));
        // An older echo (a late, buffered heartbeat) never shortens or extends it.
        l.renew(900_000_000);
        assert_eq!(l.until(), 1_020_000_000);
        l.renew(1_010_000_000);
        assert_eq!(l.until(), 1_030_000_000);
    }

    #[test]
    fn a_lease_always_ends_before_a_fenced_backup_may_go_live() {
        // The backup receives the stamp at r >= stamp, fences, and goes live at
        // r + fence_wait at the earliest; the lease from that stamp has ended by then.
        let t = Timing::new(Duration::from_millis(10), D);
        let l = Lease::new(t.lease());
        let p = Peer::default();
        for stamp in [now_ns(), now_ns() - 5_000_000] {
            p.heard_stamp(stamp);
            l.renew(p.echo());
            let earliest_live = p.fence(t.fence_wait());
            assert!(!l.holds_at(earliest_live));
            assert!(l.until() < earliest_live);
        }
    }

    #[test]
    fn fencing_waits_out_the_last_message_heard() {
        let p = Peer::default();
        p.heard_stamp(42);
        assert_eq!(p.echo(), 42);
        assert!(!p.is_dead(D));
        let free_at = p.fence(L);
        assert!(p.fenced());
        assert!(free_at >= p.last_heard() + L.as_nanos() as u64);
        assert!(free_at > now_ns(), "heard just now: the backup must wait");
        sleep_until(free_at);
        assert!(now_ns() >= free_at);
        p.set_broken();
        assert!(p.is_dead(D));
    }
}
