//! The run loop of a live machine, between the host and the machine's input boundary:
//!
//! - [`live`]: run the machine, feed it what the host's backends produce (console, frames,
//!   disk completions, entropy, time) through `Machine::apply`, and send its outputs out;
//!   recording the inputs to a log when asked, and holding outputs back until a backup holds
//!   the log that produced them (output commit, through the [`Link`] and [`Protect`] traits
//!   that the replication layer implements);
//! - [`follow`]: the one path that runs a machine along a log: to each record's count, then
//!   applying it (inputs, digest checks). Replay, the backup's follow and the failover
//!   catch-up all use it;
//! - [`clock`]: the host-clock policy (time pushes and rates that keep guest time with the
//!   host's);
//! - [`devices`]: the live backends of a machine's devices;
//! - [`status`]: a member's status file (`ftvm status`);
//! - [`telemetry`]: what a member tells its operators (metrics, history) and what they ask of
//!   it (pause, resume, snapshot, quit, a fault).
//!
//! Nothing here knows about primaries and backups beyond the two traits.

pub mod clock;
pub mod devices;
pub mod events;
pub mod follow;
pub mod live;
pub mod recheck;
pub mod status;
pub mod telemetry;
pub mod vote;

pub use devices::{Backends, Devices, HostFwd, NetBackend, NetPort, NetSpec, UserSpec};
pub use events::{events, EventRx, EventTx, Waited};
pub use follow::{FollowError, Sink};
pub use live::{
    live, Attached, ClockMode, DiskDirty, Ended, Feeder, Gate, HoldTimes, Link, LinkState, Options,
    Precopy, Protect, PushInput, RunError, COMMIT_WAIT, DISK_BLOCK, INPUT_GRACE,
};

use ftvm_host::HostEvent;

/// What the runner waits for: the host's events, or a nudge from the replication layer
/// (something to look at now, such as an acknowledgement that lets held outputs leave).
#[derive(Debug)]
pub enum Event {
    Host(HostEvent),
    Wake,
    /// An operator's request (the management API), carried out between two steps.
    Control(telemetry::Request),
}

impl From<HostEvent> for Event {
    fn from(e: HostEvent) -> Event {
        Event::Host(e)
    }
}
