//! Primary/backup replication of a deterministic machine.
//!
//! - the roles: [`primary`] (attach a backup, output commit, heartbeats, re-protection) and
//!   [`backup`] (receive the state, follow the log in lockstep, fail over, protect again);
//! - [`channel`]: the message channel over TCP, encrypted and authenticated with Noise, and
//!   [`wire`], its messages as bytes (no socket);
//! - [`arbiter`]: what decides which side may go live, per generation;
//! - [`protocol`]: each side's state and rules (failure detection, the lease, fencing) as
//!   state machines with no I/O and no clock of their own, shared by the real pair and the
//!   seeded simulation test;
//! - [`lease`]: the timing of those rules and why they keep at most one side releasing
//!   outputs.
//!
//! The run loop itself is `ftvm_runner::live`; the roles plug into it through its `Link` and
//! `Protect` traits.

pub mod arbiter;
pub mod backup;
pub mod channel;
pub mod group;
pub mod lease;
mod link;
pub mod migrate;
pub mod primary;
pub mod protocol;
pub mod transport;
pub mod wire;

use std::path::PathBuf;

pub use arbiter::{Arbiter, ArbiterError};
pub use channel::{Channel, ChannelError, Hello, Msg, Psk, Role};
pub use lease::Timing;
use thiserror::Error;

/// How a pair runs (both sides are given the same).
#[derive(Clone)]
pub struct PairConfig {
    pub psk: Psk,
    pub arbiter: Arbiter,
    pub timing: Timing,
    /// A state digest in the log every this many instructions.
    pub digest_every: u64,
    /// Epoch delivery (inputs only at multiples of this count), or precise.
    pub epoch: Option<u64>,
    /// How far (guest milliseconds) the backup's replay may trail before the guest waits.
    pub max_lag_ms: u64,
    /// Where this side reports its role, lag and protection.
    pub status_file: Option<PathBuf>,
    /// The guest's memory size: both sides must run the same machine.
    pub mem_bytes: u64,
    /// Attaching a backup to a running guest (pre-copy): the pause the guest may take for
    /// what is left once copying converged.
    pub max_downtime: std::time::Duration,
    /// N-modular redundancy: the replicas of the guest, the leader among them (2 or more;
    /// every member is given the same number), which vote on outputs and digests. `None`: a
    /// pair, whose backup does not vote.
    pub replicas: Option<usize>,
    /// When input from outside goes to a pair's backup (a group's leader pushes it at once).
    pub push_input: ftvm_runner::PushInput,
    /// Group commit: how many instructions a pair's primary lets an output wait, while its
    /// guest runs, for others to share its mark (see `ftvm_runner::Link::commit_wait`).
    pub commit_wait: u64,
    /// A backup's replay, once it has replayed everything received, keeps its core this long
    /// (yielding it to the receiving thread) before it sleeps: see `backup::next_from_primary`.
    pub replay_spin: std::time::Duration,
}

/// The default of [`PairConfig::replay_spin`].
pub const REPLAY_SPIN: std::time::Duration = std::time::Duration::from_millis(1);

impl PairConfig {
    /// The machine's description in the hello: the devices, and the group's size (members of
    /// groups of different sizes, or a group member and a pair member, refuse each other).
    pub fn layout(&self, devices: &ftvm_runner::Devices) -> String {
        match self.replicas {
            Some(n) => format!("{} replicas={n}", devices.layout()),
            None => devices.layout(),
        }
    }
}

#[derive(Debug, Error)]
pub enum PairError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Arbiter(#[from] ArbiterError),
    #[error("the replication log: {0}")]
    Log(#[from] ftvm_log::LogError),
    #[error(transparent)]
    Run(#[from] ftvm_runner::RunError),
    #[error("following the primary: {0}")]
    Follow(#[from] ftvm_runner::FollowError),
    #[error(transparent)]
    Devices(#[from] ftvm_runner::devices::DeviceError),
    #[error("the primary's state: {0}")]
    State(#[from] ftvm_machine::MachineError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The peer, or the pair's configuration, broke the protocol.
    #[error("{0}")]
    Protocol(String),
    /// This side lost the arbiter and stops.
    #[error("{0}")]
    Lost(String),
    /// This replica of a group was outvoted, or lost the race for the guest (N-modular
    /// redundancy): it attaches again, to the leader at `to` when another replica took the
    /// guest over (and published where it listens), or to the leader it followed.
    #[error("{why}")]
    Outvoted { why: String, to: Option<String> },
    /// This replica, the group's leader, was found faulty and stopped; its followers race for
    /// `generation`, and the winner leads the group from then on (the leader may attach to it).
    #[error("{why}")]
    Replaced { why: String, generation: u64 },
}

/// The arbiter label of a follower that takes the guest over: where it accepts the group's
/// other replicas from then on (`listen`, when it names a reachable address; `None` for a
/// pair's backup, whose label stays `backup`).
pub fn winner_label(listen: Option<&str>) -> String {
    match listen.filter(|l| {
        l.parse::<std::net::SocketAddr>()
            .is_ok_and(|a| !a.ip().is_unspecified())
    }) {
        Some(l) => format!("backup {l}"),
        None => "backup".into(),
    }
}

/// Where the winner of an arbiter generation accepts replicas (see [`winner_label`]).
pub fn winner_address(label: &str) -> Option<String> {
    label.strip_prefix("backup ").map(|a| a.trim().to_string())
}

/// The label of the winner of `generation`, once it is won and its label written (a file
/// arbiter's key exists a moment before its label does), waiting up to `limit`.
pub fn winner_of(arbiter: &Arbiter, generation: u64, limit: std::time::Duration) -> Option<String> {
    let t0 = std::time::Instant::now();
    loop {
        if let Ok(Some(label)) = arbiter.winner(generation) {
            if !label.is_empty() {
                return Some(label);
            }
        }
        if t0.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Where the replica that won `generation` leads the group from (the address in its label),
/// waiting up to `limit` for it to be won.
pub fn group_leader(
    arbiter: &Arbiter,
    generation: u64,
    limit: std::time::Duration,
) -> Option<String> {
    winner_of(arbiter, generation, limit).and_then(|l| winner_address(&l))
}

impl PairError {
    /// The generation this leader's followers race for, when it was found faulty and stopped
    /// (through the runner's link error too).
    pub fn replaced(&self) -> Option<u64> {
        match self {
            PairError::Replaced { generation, .. } => Some(*generation),
            PairError::Run(ftvm_runner::RunError::Link(e)) => {
                e.downcast_ref::<PairError>().and_then(PairError::replaced)
            }
            _ => None,
        }
    }
}

impl PairError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PairError {
        let what = what.into();
        move |source| PairError::Io { what, source }
    }
}

/// Set a thread's scheduling policy: `SCHED_BATCH`, a thread that, when woken, does not
/// preempt the one running on its core (it runs at that one's next scheduling tick, or when
/// it waits), or `SCHED_OTHER`, the usual. A refusal leaves it as it was.
pub(crate) fn set_policy(tid: libc::pid_t, policy: libc::c_int) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that lives across the call.
    let r = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), policy, "scheduling policy refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_winner_names_where_it_listens_when_others_can_reach_it() {
        assert_eq!(winner_label(None), "backup");
        assert_eq!(winner_label(Some("0.0.0.0:7700")), "backup");
        assert_eq!(winner_label(Some("10.0.0.2:7700")), "backup 10.0.0.2:7700");
        assert_eq!(
            winner_address(&winner_label(Some("10.0.0.2:7700"))).as_deref(),
            Some("10.0.0.2:7700")
        );
        assert_eq!(winner_address("backup"), None);
        assert_eq!(winner_address("primary"), None);
    }
}
