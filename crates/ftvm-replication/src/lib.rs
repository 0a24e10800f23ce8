//! Primary/backup plumbing: an authenticated message channel over TCP, and the arbiter that
//! decides which side may go live.

pub mod arbiter;
pub mod channel;

pub use arbiter::{Arbiter, ArbiterError};
pub use channel::{Channel, ChannelError, Msg, Psk, Role};
