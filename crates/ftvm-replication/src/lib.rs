//! Primary/backup plumbing: an authenticated, encrypted message channel over TCP (Noise), the
//! arbiter that decides which side may go live, and the failure-detection and lease rules that
//! keep at most one side releasing outputs.

pub mod arbiter;
pub mod channel;
pub mod lease;
pub mod wire;

pub use arbiter::{Arbiter, ArbiterError};
pub use channel::{Channel, ChannelError, Hello, Msg, Psk, Role};
pub use lease::{Lease, Peer, Timing};
