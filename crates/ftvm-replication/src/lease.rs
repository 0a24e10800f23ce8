//! Failure detection and the primary's output lease: the timing rules that keep at most one
//! side of a pair releasing outputs, whatever the hosts do (die, freeze, stall, lose the link).
//! The rules are applied by each side's state machine in [`crate::protocol`].
//!
//! - The primary stamps each message that carries its log, and each heartbeat, with its clock
//!   `T` when it sends it; the backup echoes the newest stamp it has received in every
//!   acknowledgement and heartbeat. An echo of `T` gives the primary a lease until `T + L`
//!   (`L` = [`Timing::lease`]) on its own clock, and it releases outputs only while it holds one.
//! - The backup received the message stamped `T` at a real time `r >= T`. When it decides the
//!   primary is gone (nothing heard for the dead timeout `D`, or the link closed), it first cuts
//!   every tie: it sends nothing more, no echo, no acknowledgement ([`crate::protocol::BackupSide::fence`]). Then it
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
    fn sleep_until_waits_for_the_instant() {
        let at = now_ns() + 3_000_000;
        sleep_until(at);
        assert!(now_ns() >= at);
    }
}
