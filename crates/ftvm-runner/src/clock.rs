//! The host-clock policy (`--clock host`): guest time keeps up with the host's whatever the
//! engine's speed, through inputs only (so a replay reproduces it exactly):
//!
//! - when guest time lags the host's by more than [`MAX_LAG`] ticks (the guest was idle, or
//!   the runner stalled), a `Time` input closes the gap at once;
//! - every [`PERIOD`] of host time, a `Rate` input sets the clock's slope from the speed the
//!   engine showed over the last period (steps per tick of host time the guest ran), corrected
//!   so that the gap between guest and host time closes over the next period. A guest that
//!   runs faster than its clock's rate is thus never slowed: its time is, and time never goes
//!   backwards (a rate changes only the slope from its count on);
//! - while idle, the runner waits until host time reaches the guest's next timer, so an idle
//!   stretch absorbs a lead of the guest's too.

use std::time::{Duration, Instant};

use ftvm_machine::board::{MAX_RATE, MIN_RATE, NANOS_PER_TICK, RATE_FRAC_BITS, TIMEBASE_HZ};
use ftvm_machine::Machine;

/// How far guest time may lag the host's before a `Time` input closes the gap: 10 ms.
pub const MAX_LAG: u64 = TIMEBASE_HZ / 100;
/// Host time between rate decisions: 100 ms.
pub const PERIOD: u64 = TIMEBASE_HZ / 10;
/// Less running time than this since the last decision (an idle guest) says nothing of the
/// engine's speed: the rate stays. 1 ms.
const MIN_BUSY: u64 = TIMEBASE_HZ / 1000;
/// The least host time between two decisions: an early one (see [`RatePolicy::decide`]) comes
/// no sooner than this after the last: 2 ms.
const MIN_DECISION_GAP: u64 = TIMEBASE_HZ / 500;
/// A new rate within this fraction (1/2^12) of the current one is not worth a log record.
const HYSTERESIS_SHIFT: u32 = 12;

/// The rate (steps per tick, fixed point) for the next period: the engine ran `steps` in
/// `busy` ticks of host time, and guest time is `ahead` ticks ahead of the host's (negative:
/// behind). None: keep the current rate (too little was run to tell, or the change is tiny).
///
/// Over the next period of running, guest time should advance `PERIOD - ahead` ticks while the
/// engine runs `speed * PERIOD` steps. The correction is bounded: guest time runs at least at
/// 1/16 of the host's pace (a lead of up to 15/16 of a period is absorbed in one) and at most
/// at twice its pace (a lag beyond [`MAX_LAG`] is closed by a `Time` input anyway).
pub fn next_rate(current: u64, steps: u64, busy: u64, ahead: i64) -> Option<u64> {
    if busy < MIN_BUSY || steps == 0 {
        return None;
    }
    // Steps per host tick, fixed point.
    let speed = ((steps as u128) << RATE_FRAC_BITS) / busy as u128;
    let p = PERIOD as i128;
    let span = (p - ahead as i128).clamp(p / 16, 2 * p) as u128;
    let rate = (speed * PERIOD as u128 / span).clamp(MIN_RATE as u128, MAX_RATE as u128) as u64;
    (rate.abs_diff(current) > current >> HYSTERESIS_SHIFT).then_some(rate)
}

/// When to decide a rate, and the measurements since the last decision, in host ticks and
/// steps (no clock of its own: the simulation test drives it).
pub struct RatePolicy {
    /// Where the current period started (host ticks, count).
    period_host: u64,
    period_count: u64,
    /// Host ticks in the period when the guest could not run (idle waits, the backup).
    waited: u64,
    /// How far guest time was ahead at the last decision.
    last_ahead: i64,
}

impl RatePolicy {
    pub fn new(host: u64, count: u64) -> RatePolicy {
        RatePolicy {
            period_host: host,
            period_count: count,
            waited: 0,
            last_ahead: 0,
        }
    }

    /// `ticks` of host time passed without the guest running.
    pub fn waited(&mut self, ticks: u64) {
        self.waited = self.waited.saturating_add(ticks);
    }

    /// At host time `host`, with the machine at `count`, its time `guest` and its `rate`: the
    /// new rate, if one is due. A decision is due every [`PERIOD`], or sooner (after
    /// [`MIN_DECISION_GAP`]) when the guest's lead grew by more than [`MAX_LAG`] since the last
    /// one: the engine sped up, and waiting out the period would let the lead grow with it.
    pub fn decide(&mut self, host: u64, count: u64, guest: u64, rate: u64) -> Option<u64> {
        let elapsed = host.saturating_sub(self.period_host);
        let ahead = (guest as i128 - host as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        let grew = ahead > self.last_ahead.max(0).saturating_add(MAX_LAG as i64);
        if elapsed < PERIOD && !(grew && elapsed >= MIN_DECISION_GAP) {
            return None;
        }
        let busy = elapsed.saturating_sub(self.waited);
        let steps = count.saturating_sub(self.period_count);
        *self = RatePolicy {
            period_host: host,
            period_count: count,
            waited: 0,
            last_ahead: ahead,
        };
        next_rate(rate, steps, busy, ahead)
    }
}

/// The host clock as the live loop sees it, with the rate policy.
pub struct HostClock {
    started: Instant,
    /// Guest time when the run started: host time is this plus the ticks elapsed since.
    start_ticks: u64,
    policy: RatePolicy,
}

fn ticks(d: Duration) -> u64 {
    u64::try_from(d.as_nanos() / NANOS_PER_TICK as u128).unwrap_or(u64::MAX)
}

impl HostClock {
    pub fn new(m: &Machine) -> HostClock {
        let start_ticks = m.board.mtime(m.count());
        HostClock {
            started: Instant::now(),
            start_ticks,
            policy: RatePolicy::new(start_ticks, m.count()),
        }
    }

    /// Host time in machine ticks.
    pub fn now(&self) -> u64 {
        self.start_ticks
            .saturating_add(ticks(self.started.elapsed()))
    }

    /// Host time `d` passed without the guest running.
    pub fn waited(&mut self, d: Duration) {
        self.policy.waited(ticks(d));
    }

    /// How long to wait, at most `limit`, for host time to reach the guest's `ticks` from now.
    pub fn wait_for(&self, m: &Machine, ticks: u64, limit: Duration) -> Duration {
        let target = m.board.mtime(m.count()).saturating_add(ticks);
        let ahead = target.saturating_sub(self.now());
        Duration::from_nanos(ahead.saturating_mul(NANOS_PER_TICK)).min(limit)
    }

    /// The ticks by which guest time lags the host's (0 if it does not).
    pub fn lag(&self, m: &Machine) -> u64 {
        self.now().saturating_sub(m.board.mtime(m.count()))
    }

    /// The machine's new rate, if one is due.
    pub fn rate(&mut self, m: &Machine) -> Option<u64> {
        let host = self.now();
        self.policy
            .decide(host, m.count(), m.board.mtime(m.count()), m.board.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftvm_machine::board::DEFAULT_RATE;
    use ftvm_machine::MIN_RAM;

    /// Run a machine's clock against a simulated host for `periods` periods, the engine
    /// running `speed(i)` steps per host tick in period i, with the policy applied as the live
    /// loop does (every 1/100 of a period, a push when lagging and the policy's decision).
    /// Returns the largest |guest - host| over the last half, in ticks, and the decisions.
    fn simulate(start_ahead: u64, periods: u64, speed: impl Fn(u64) -> f64) -> (u64, u64) {
        let mut m = Machine::new(MIN_RAM).unwrap();
        m.board.time_offset = start_ahead;
        let (mut host, mut count) = (0u64, 0u64);
        let mut policy = RatePolicy::new(0, 0);
        let (mut worst, mut decisions) = (0, 0);
        let step = PERIOD / 100;
        for i in 0..periods * 100 {
            host += step;
            count += (speed(i / 100) * step as f64) as u64;
            // The machine ran to `count` (its clock is a function of the count alone).
            let guest = m.board.mtime(count);
            if host > guest + MAX_LAG {
                m.board.time_offset += host - guest;
            }
            if let Some(rate) = policy.decide(host, count, m.board.mtime(count), m.board.rate) {
                m.board.set_rate(count, rate);
                decisions += 1;
            }
            if i >= periods * 50 {
                worst = worst.max(m.board.mtime(count).abs_diff(host));
            }
        }
        (worst, decisions)
    }

    #[test]
    fn guest_time_follows_the_host_at_any_engine_speed() {
        // 1, 10, 15, 100 and 1000 steps per tick: 10 M to 10 G steps per second.
        for speed in [1.0, 10.0, 15.0, 100.0, 1000.0] {
            let (worst, decisions) = simulate(0, 100, |_| speed);
            assert!(worst <= 20, "{speed} steps/tick: {worst} ticks off");
            assert!(decisions <= 110, "{speed} steps/tick: {decisions} rates");
            // A lead of 2 s is absorbed (15/16 of a period per period at most).
            let (worst, _) = simulate(20_000_000, 100, |_| speed);
            assert!(
                worst <= 20,
                "{speed} steps/tick from 2 s ahead: {worst} ticks off"
            );
        }
        // An engine whose speed changes by 10% from period to period: the rate follows one
        // period late, so guest time is off by up to 10% of a period, then corrected.
        let (worst, _) = simulate(0, 200, |i| if i % 2 == 0 { 14.0 } else { 15.4 });
        assert!(worst <= PERIOD / 10 + 20, "{worst} ticks off");
        // An engine that becomes ten times faster at once: the lead grows past MAX_LAG, a
        // decision comes early (from a speed measured mostly before the change), the lead
        // grows on, a second decision 2 ms later gets it right: under 3 MAX_LAG (30 ms) at
        // worst, then back in step.
        let (worst, _) = simulate(0, 200, |i| if i < 100 { 15.0 } else { 150.0 });
        assert!(worst <= 3 * MAX_LAG, "{worst} ticks off");
        let (worst, _) = simulate(0, 300, |i| if i < 100 { 15.0 } else { 150.0 });
        assert!(worst <= 20, "{worst} ticks off");
    }

    #[test]
    fn the_rate_is_bounded_and_kept_when_nothing_tells() {
        // Too little running, or none: keep.
        assert_eq!(next_rate(DEFAULT_RATE, 1_000_000, MIN_BUSY - 1, 0), None);
        assert_eq!(next_rate(DEFAULT_RATE, 0, PERIOD, 0), None);
        // The current rate, near enough: keep.
        assert_eq!(next_rate(DEFAULT_RATE, 10 * PERIOD, PERIOD, 0), None);
        // Twice as fast, in step with the host: twice the steps per tick.
        assert_eq!(
            next_rate(DEFAULT_RATE, 20 * PERIOD, PERIOD, 0),
            Some(2 * DEFAULT_RATE)
        );
        // Far ahead: guest time at 1/16 of the host's pace; far behind: twice.
        assert_eq!(
            next_rate(DEFAULT_RATE, 20 * PERIOD, PERIOD, i64::MAX),
            Some(32 * DEFAULT_RATE)
        );
        assert_eq!(
            next_rate(3 * DEFAULT_RATE, 20 * PERIOD, PERIOD, i64::MIN),
            Some(DEFAULT_RATE)
        );
        // Absurd speeds stay within what the machine accepts.
        assert_eq!(
            next_rate(DEFAULT_RATE, u64::MAX, MIN_BUSY, 0),
            Some(MAX_RATE)
        );
        assert_eq!(next_rate(DEFAULT_RATE, 1, u64::MAX, 0), Some(MIN_RATE));
    }
}
