//! What a running member tells its operators, and what they ask of it.
//!
//! [`Telemetry`] holds the counters and gauges the live loop and the backup's follow update
//! (atomics: nothing on the guest's path waits for a lock), and a history of the last minutes
//! that the status page draws. [`Request`]s (pause, resume, snapshot, quit, a fault) reach the
//! live loop as [`crate::Event::Control`] and are carried out between two steps of the machine,
//! so none of them changes what the guest computes: a pause stops the count, it does not move
//! an input.
//!
//! The management API (`ftvm-api`) reads this and sends the requests; nothing here knows HTTP.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ftvm_machine::board::INSTRUCTIONS_PER_MS;

use crate::events::EventTx;
use crate::vote::Injection;

/// What a member is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Starting: no guest yet (a primary waiting for its first backup, a backup attaching).
    Starting = 0,
    /// Running the guest with no backup.
    Live = 1,
    /// Running the guest, its outputs held for the backup(s).
    Primary = 2,
    /// Following a primary's log.
    Backup = 3,
    /// The guest stopped.
    Stopped = 4,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Live => "live",
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::Stopped => "stopped",
        }
    }
    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Live,
            2 => Role::Primary,
            3 => Role::Backup,
            4 => Role::Stopped,
            _ => Role::Starting,
        }
    }
}

/// How a turn of the machine ended, counted by kind.
pub const EXIT_KINDS: [&str; 6] = ["yield", "output", "idle", "stop", "power", "tohost"];

/// Upper bounds (seconds) of the output hold-time histogram's buckets.
pub const HOLD_BOUNDS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// How many samples the history keeps (one a second: ten minutes).
pub const HISTORY: usize = 600;

/// One second of a member's life, for the status page.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub role: Role,
    pub instructions: u64,
    pub protected: bool,
    pub lag_instructions: u64,
    /// The lag in guest milliseconds.
    pub lag_ms: f64,
    /// Outputs released in this second, and the longest any of them was held (ms).
    pub held: u64,
    pub hold_max_ms: f64,
}

#[derive(Default)]
pub struct Telemetry {
    started: Option<Instant>,
    role: AtomicU8,
    paused: AtomicBool,
    /// Backups are refused by an operator (the default accepts them).
    refusing: AtomicBool,
    instructions: AtomicU64,
    /// The count the other side is at, plus one (0: no other side).
    peer: AtomicU64,
    pub generation: AtomicU64,
    pub failovers: AtomicU64,
    exits: [AtomicU64; EXIT_KINDS.len()],
    holds: [AtomicU64; HOLD_BOUNDS.len() + 1],
    hold_count: AtomicU64,
    hold_sum_ns: AtomicU64,
    /// Since the last sample: outputs released and the longest hold (ns).
    window_holds: AtomicU64,
    window_max_ns: AtomicU64,
    log_bytes: AtomicU64,
    /// The log writer's own count when last looked at (it starts again with each writer).
    log_seen: AtomicU64,
    pub attaches: AtomicU64,
    attach_pause_ns: AtomicU64,
    pub vote_mismatches: AtomicU64,
    /// State copied to attaching backups and migration destinations (pre-copy), in all.
    copy_bytes: AtomicU64,
    /// The copy under way: its bytes so far, and its round plus one (0: none).
    copy_seen: AtomicU64,
    copy_round: AtomicU64,
    history: Mutex<VecDeque<Sample>>,
    /// Where requests reach the live loop running the guest (None while none does).
    control: Mutex<Option<EventTx>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("role", &self.role())
            .field("instructions", &self.instructions())
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        Telemetry {
            started: Some(Instant::now()),
            ..Default::default()
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Where the member stands: its role, its count, and the count of the other side
    /// (`peer`: the backup's acknowledged log for a primary, the primary's latest record for
    /// a backup; None when unprotected).
    pub fn update(&self, role: Role, count: u64, peer: Option<u64>) {
        self.role.store(role as u8, Ordering::Relaxed);
        self.instructions.store(count, Ordering::Relaxed);
        self.peer
            .store(peer.map_or(0, |p| p.saturating_add(1)), Ordering::Relaxed);
    }

    /// The live loop running the guest takes requests on `tx` (None: it stopped).
    pub fn set_control(&self, tx: Option<EventTx>) {
        *self.control.lock().unwrap_or_else(|p| p.into_inner()) = tx;
    }

    /// Where to send a request for the live loop, if one runs the guest.
    pub fn control(&self) -> Option<EventTx> {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Relaxed);
    }

    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Relaxed))
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    pub fn set_accepting(&self, yes: bool) {
        self.refusing.store(!yes, Ordering::Relaxed);
    }

    /// Whether backups that connect may attach.
    pub fn accepting(&self) -> bool {
        !self.refusing.load(Ordering::Relaxed)
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    pub fn instructions(&self) -> u64 {
        self.instructions.load(Ordering::Relaxed)
    }

    /// The other side's count, when there is one.
    pub fn peer(&self) -> Option<u64> {
        self.peer.load(Ordering::Relaxed).checked_sub(1)
    }

    /// The lag behind (or ahead of) the other side, in instructions.
    pub fn lag(&self) -> Option<u64> {
        self.peer().map(|p| p.abs_diff(self.instructions()))
    }

    pub fn exit(&self, kind: usize) {
        if let Some(c) = self.exits.get(kind) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Turns of the machine, by the kinds in [`EXIT_KINDS`].
    pub fn exits(&self) -> Vec<(&'static str, u64)> {
        EXIT_KINDS
            .iter()
            .zip(&self.exits)
            .map(|(k, c)| (*k, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// An output left after waiting `d` for the backup.
    pub fn held(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = HOLD_BOUNDS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(HOLD_BOUNDS.len());
        self.holds[i].fetch_add(1, Ordering::Relaxed);
        self.hold_count.fetch_add(1, Ordering::Relaxed);
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        self.hold_sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.window_holds.fetch_add(1, Ordering::Relaxed);
        self.window_max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// The hold-time histogram: cumulative counts by [`HOLD_BOUNDS`] then +Inf, the count and
    /// the sum in seconds.
    pub fn hold_histogram(&self) -> (Vec<u64>, u64, f64) {
        let mut acc = 0;
        let cumulative = self
            .holds
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        (
            cumulative,
            self.hold_count.load(Ordering::Relaxed),
            self.hold_sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }

    /// The log writer in use has written `bytes` in all (a new writer starts again from its
    /// header).
    pub fn log_written(&self, bytes: u64) {
        let seen = self.log_seen.swap(bytes, Ordering::Relaxed);
        let new = if bytes >= seen { bytes - seen } else { bytes };
        self.log_bytes.fetch_add(new, Ordering::Relaxed);
    }

    pub fn log_bytes(&self) -> u64 {
        self.log_bytes.load(Ordering::Relaxed)
    }

    /// The copy under way, if any: bytes sent so far and its round (see `Protect::progress`).
    pub fn copying(&self, progress: Option<(u64, u32)>) {
        let Some((bytes, round)) = progress else {
            self.copy_round.store(0, Ordering::Relaxed);
            self.copy_seen.store(0, Ordering::Relaxed);
            return;
        };
        let seen = self.copy_seen.swap(bytes, Ordering::Relaxed);
        self.copy_bytes
            .fetch_add(bytes.saturating_sub(seen), Ordering::Relaxed);
        self.copy_round
            .store(u64::from(round) + 1, Ordering::Relaxed);
    }

    /// State copied in all, and the round of the copy under way (None: no copy).
    pub fn copy(&self) -> (u64, Option<u64>) {
        (
            self.copy_bytes.load(Ordering::Relaxed),
            self.copy_round.load(Ordering::Relaxed).checked_sub(1),
        )
    }

    /// A backup attached (or a replica joined); the guest paused `d` for it.
    pub fn attached(&self, d: Duration) {
        self.attaches.fetch_add(1, Ordering::Relaxed);
        self.attach_pause_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Attach pauses: how many, and their sum in seconds.
    pub fn attach_pauses(&self) -> (u64, f64) {
        (
            self.attaches.load(Ordering::Relaxed),
            self.attach_pause_ns.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }

    /// Take this second's sample into the history (the API's server does, once a second).
    pub fn sample(&self) -> Sample {
        let lag = self.lag().unwrap_or(0);
        let s = Sample {
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            role: self.role(),
            instructions: self.instructions(),
            protected: self.peer().is_some(),
            lag_instructions: lag,
            lag_ms: lag as f64 / INSTRUCTIONS_PER_MS as f64,
            held: self.window_holds.swap(0, Ordering::Relaxed),
            hold_max_ms: self.window_max_ns.swap(0, Ordering::Relaxed) as f64 / 1e6,
        };
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(s.clone());
        s
    }

    /// The samples of the last minutes, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.iter().cloned().collect()
    }
}

/// What an operator asks of the live loop.
#[derive(Debug)]
pub enum Command {
    /// Stop running the guest (its count stands still; the host's events wait).
    Pause,
    Resume,
    /// Write the machine's state to this file.
    Snapshot(PathBuf),
    /// Stop the run, as a quit from the console does.
    Quit,
    /// Stop protecting the guest with its backup (the primary keeps the guest).
    DropBackup,
    /// Let backups that connect attach (true), or make them wait (false).
    AcceptBackups(bool),
    /// Inject this fault (at its count, or at once if that has passed).
    Inject(Injection),
}

/// A command and where its answer goes: a message, or why it was refused.
#[derive(Debug)]
pub struct Request {
    pub command: Command,
    pub reply: std::sync::mpsc::Sender<Result<String, Refusal>>,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not now, in this state (HTTP 409).
    Conflict(String),
    /// It failed (HTTP 500).
    Failed(String),
}

impl Request {
    pub fn answer(self, r: Result<String, Refusal>) {
        let _ = self.reply.send(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_fall_into_cumulative_buckets() {
        let t = Telemetry::new();
        t.held(Duration::from_micros(50));
        t.held(Duration::from_micros(100));
        t.held(Duration::from_millis(3));
        t.held(Duration::from_secs(5));
        let (cum, n, sum) = t.hold_histogram();
        assert_eq!(n, 4);
        assert_eq!(cum.len(), HOLD_BOUNDS.len() + 1);
        assert_eq!(cum[0], 2, "50 µs and 100 µs are <= 0.1 ms");
        assert_eq!(cum[4], 2, "3 ms is above 2.5 ms");
        assert_eq!(cum[5], 3);
        assert_eq!(cum[HOLD_BOUNDS.len() - 1], 3, "5 s is above the last bound");
        assert_eq!(cum[HOLD_BOUNDS.len()], 4);
        assert!((sum - 5.00315).abs() < 1e-9);
        let s = t.sample();
        assert_eq!(s.held, 4);
        assert!((s.hold_max_ms - 5000.0).abs() < 1e-6);
        assert_eq!(t.sample().held, 0, "a sample takes the second's holds");
    }

    #[test]
    fn copies_add_up_across_transfers() {
        let t = Telemetry::new();
        assert_eq!(t.copy(), (0, None));
        t.copying(Some((1000, 1)));
        t.copying(Some((5000, 2)));
        assert_eq!(t.copy(), (5000, Some(2)));
        t.copying(None);
        assert_eq!(t.copy(), (5000, None));
        t.copying(Some((300, 1))); // the next transfer starts from 0
        assert_eq!(t.copy(), (5300, Some(1)));
    }

    #[test]
    fn log_bytes_survive_a_new_writer_and_lag_is_either_way() {
        let t = Telemetry::new();
        t.log_written(100);
        t.log_written(150);
        t.log_written(20); // a new writer
        assert_eq!(t.log_bytes(), 170);
        t.update(Role::Primary, 1_000, Some(750));
        assert_eq!(t.lag(), Some(250));
        t.update(Role::Backup, 750, Some(1_000));
        assert_eq!(t.lag(), Some(250));
        t.update(Role::Live, 5, None);
        assert_eq!((t.peer(), t.lag()), (None, None));
        assert_eq!(t.sample().role, Role::Live);
        for _ in 0..HISTORY + 5 {
            t.sample();
        }
        assert_eq!(t.history().len(), HISTORY);
    }
}
