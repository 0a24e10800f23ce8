//! The one path that runs a machine along a log: run to each record's count, then apply the
//! record (its inputs, or a digest check). `ftvm replay`, the backup's follow and its failover
//! catch-up all go through [`apply`], so they cannot disagree about what a log means.

use ftvm_log::Record;
use ftvm_machine::{Input, Machine, Output, RunExit};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FollowError {
    #[error("diverged at instruction {count}: the machine stopped ({exit}) before the log's next record at {target}")]
    Stopped {
        count: u64,
        exit: String,
        target: u64,
    },
    #[error(
        "diverged at instruction {count}: state digest {ours} differs from the recorded {theirs}"
    )]
    Digest {
        count: u64,
        ours: String,
        theirs: String,
    },
    #[error(
        "a record at instruction {record} comes after instruction {at}: the log goes backwards"
    )]
    Backwards { record: u64, at: u64 },
    #[error("a second header in the log")]
    SecondHeader,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Where a followed machine's effects go.
pub trait Sink {
    /// An output the machine produced at `count` (a console byte run, a frame, a disk request).
    fn output(&mut self, m: &Machine, count: u64, out: Output) -> std::io::Result<()>;
    /// An input about to be applied.
    fn input(&mut self, _input: &Input) {}
    /// Run at most about this many instructions at a time, calling [`Sink::between`] in
    /// between. Where a run is cut changes nothing: neither the machine's state nor where its
    /// outputs are taken.
    fn chunk(&self) -> u64 {
        u64::MAX
    }
    /// Between two chunks of a run.
    fn between(&mut self) {}
}

/// Outputs dropped.
pub struct Discard;

impl Sink for Discard {
    fn output(&mut self, _: &Machine, _: u64, _: Output) -> std::io::Result<()> {
        Ok(())
    }
}

/// What applying a record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// This many inputs took effect.
    Inputs(usize),
    /// A digest matched.
    Digest,
    /// A mark (nothing to apply).
    Mark,
    /// The run ended here, with this exit code; its digest matched.
    End { code: u32 },
}

/// Run the machine to exactly `target`, as the recorded run did, handing its outputs to `sink`.
pub fn run_to(m: &mut Machine, target: u64, sink: &mut dyn Sink) -> Result<(), FollowError> {
    if target < m.count() {
        return Err(FollowError::Backwards {
            record: target,
            at: m.count(),
        });
    }
    loop {
        let exit = m.run(target, sink.chunk());
        if matches!(exit, RunExit::Yield) {
            // Only a chunk's end: what the guest wrote to its console stays to be taken
            // where a run without cuts takes it (replicas that vote hash it as taken).
            sink.between();
            continue;
        }
        let count = m.count();
        for out in m.take_outputs() {
            sink.output(m, count, out)?;
        }
        match exit {
            RunExit::StopAt => return Ok(()),
            RunExit::Yield | RunExit::Output => {}
            RunExit::Idle { .. } | RunExit::Power(_) | RunExit::ToHost(_) => {
                if m.count() == target {
                    return Ok(());
                }
                return Err(FollowError::Stopped {
                    count: m.count(),
                    exit: format!("{exit:?}"),
                    target,
                });
            }
        }
    }
}

/// Run to the record's count, then apply it: inputs take effect, digests are checked.
pub fn apply(m: &mut Machine, record: Record, sink: &mut dyn Sink) -> Result<Applied, FollowError> {
    run_to(m, record.count(), sink)?;
    match record {
        Record::Input { inputs, .. } => {
            let n = inputs.len();
            for i in inputs {
                sink.input(&i);
                m.apply(i);
            }
            Ok(Applied::Inputs(n))
        }
        Record::Digest { count, digest } | Record::End { count, digest, .. } => {
            let ours = m.digest();
            if ours.as_bytes() != &digest {
                return Err(FollowError::Digest {
                    count,
                    ours: ours.to_hex().to_string(),
                    theirs: blake3::Hash::from(digest).to_hex().to_string(),
                });
            }
            Ok(match record {
                Record::End { code, .. } => Applied::End { code },
                _ => Applied::Digest,
            })
        }
        Record::Mark { .. } => Ok(Applied::Mark),
        Record::Header { .. } => Err(FollowError::SecondHeader),
    }
}
