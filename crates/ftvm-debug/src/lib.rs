//! gdb on a recorded run, forwards and backwards.
//!
//! [`timeline::Timeline`] puts a replayed machine at any instruction count: forwards along
//! the log, backwards from checkpoints it takes on the way. [`stub::Session`] serves it to gdb
//! through the gdbstub crate, with registers ([`arch`]), memory, breakpoints, watchpoints,
//! stepping, continuing, reverse-stepi and reverse-continue. docs/debugging.md tells how to
//! use it.

pub mod arch;
pub mod stub;
pub mod timeline;

pub use stub::{serve, Session};
pub use timeline::{Limits, Stop, Timeline, TimelineError};
