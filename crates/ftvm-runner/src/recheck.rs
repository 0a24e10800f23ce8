//! Re-execution from a checkpoint (N-modular redundancy with two replicas, DMR).
//!
//! Two replicas that disagree cannot tell by a vote which one is wrong. Each keeps
//! checkpoints of its machine at the points where both agreed (the state digests that
//! matched, and the attach), and every log record since the oldest one. On a disagreement at
//! count C both re-execute the log from the newest agreed checkpoint K to C in a scratch
//! machine and compare: a transient fault (a soft error) does not happen again, so the
//! replica whose re-execution differs from its first execution had it; a persistent one
//! (a stuck bit) happens again, and both re-executions repeat their first results.
//!
//! The re-execution goes through [`crate::follow::apply`], as a backup's replay does, and
//! hashes the outputs into the same chain the votes compare ([`crate::vote::Chain`]).

use std::collections::VecDeque;

use ftvm_log::Record;
use ftvm_machine::fault::Fault;
use ftvm_machine::{Input, Machine, MachineError, Output};
use thiserror::Error;

use crate::follow::{self, FollowError, Sink};
use crate::vote::{divergence, output_hash, Chain};

/// At most this many checkpoints are kept (each holds a copy of the guest's RAM); the newest
/// agreed one is never dropped for a newer one.
pub const KEEP_CHECKPOINTS: usize = 3;

/// At most this many bytes of log records are kept (frames, disk reads); beyond them this
/// replica gives re-execution up until its next checkpoint, and a disagreement meanwhile
/// stops the guest.
pub const MAX_KEPT_BYTES: usize = 512 << 20;

/// What a re-execution compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    /// The chain of output hashes at C (C is a `Mark` of the log).
    Outputs,
    /// The state digest at C (C is a `Digest` record of the log).
    Digest,
}

/// A re-execution the group asks of this replica: from the checkpoint at `from` to `to`, the
/// chain of outputs starting from `base` (`None`: this replica's own chain at the checkpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub from: u64,
    pub base: Option<[u8; 32]>,
    pub to: u64,
    pub what: What,
}

#[derive(Debug, Error)]
pub enum RecheckError {
    #[error("no checkpoint at instruction {0} is kept")]
    NoCheckpoint(u64),
    #[error("instruction {to} comes before the checkpoint at {from}")]
    Backwards { from: u64, to: u64 },
    #[error("the log kept ends at instruction {0}, before the point to re-execute to")]
    Short(u64),
    #[error("the log since the checkpoint outgrew {} MiB: it was not kept", MAX_KEPT_BYTES >> 20)]
    TooMuchLog,
    #[error("restoring the checkpoint: {0}")]
    Restore(#[from] MachineError),
    #[error("re-executing: {0}")]
    Follow(#[from] FollowError),
}

struct Checkpoint {
    count: u64,
    /// The machine's snapshot there ([`Machine::save`]).
    state: Vec<u8>,
    /// The replica's chain of outputs there.
    chain: [u8; 32],
    /// How many kept records came before it.
    at_record: usize,
}

/// The checkpoints and the log since the oldest.
pub struct Rechecker {
    points: VecDeque<Checkpoint>,
    records: Vec<Record>,
    /// The bytes the records hold (about), and whether they outgrew [`MAX_KEPT_BYTES`].
    bytes: usize,
    overflow: bool,
    /// Every point up to here is agreed.
    agreed: u64,
    /// A persistent fault: injected again whenever a re-execution passes its count.
    fault: Option<(u64, Fault)>,
}

/// About how many bytes a record holds.
fn record_bytes(r: &Record) -> usize {
    let inputs = match r {
        Record::Input { inputs, .. } => inputs.as_slice(),
        _ => &[],
    };
    64 + inputs
        .iter()
        .map(|i| match i {
            Input::Frame { frame, .. } => frame.len(),
            Input::DiskDone { data, .. } => data.len(),
            Input::Entropy { bytes, .. } => bytes.len(),
            _ => 0,
        } + 32)
        .sum::<usize>()
}

/// Outputs hashed into a chain.
struct Hashing(Chain);

impl Sink for Hashing {
    fn output(&mut self, _: &Machine, _: u64, out: Output) -> std::io::Result<()> {
        self.0.add(&output_hash(&out));
        Ok(())
    }
}

impl Rechecker {
    /// Checkpoints start at `m` as it is, with the chain of outputs at `chain` there.
    pub fn new(m: &Machine, chain: [u8; 32]) -> Rechecker {
        let mut r = Rechecker {
            points: VecDeque::new(),
            records: Vec::new(),
            bytes: 0,
            overflow: false,
            agreed: m.count(),
            fault: None,
        };
        r.checkpoint(m, chain);
        r
    }

    /// A fault that persists: every re-execution that passes `at` suffers it again.
    pub fn persistent(&mut self, at: u64, fault: Fault) {
        self.fault = Some((at, fault));
    }

    /// A record of the log, after the ones before it.
    pub fn record(&mut self, r: Record) {
        if matches!(r, Record::Header { .. }) || self.overflow {
            return;
        }
        self.bytes += record_bytes(&r);
        if self.bytes > MAX_KEPT_BYTES {
            // Too much to keep: nothing can be re-executed until the next checkpoint.
            self.overflow = true;
            self.points.clear();
            self.records = Vec::new();
            self.bytes = 0;
            return;
        }
        self.records.push(r);
    }

    /// Records of the log, in order.
    pub fn records(&mut self, rs: impl IntoIterator<Item = Record>) {
        for r in rs {
            self.record(r);
        }
    }

    /// A checkpoint of `m` where it stands (every record so far came before it). Beyond
    /// [`KEEP_CHECKPOINTS`] the oldest goes, with the records before the next one.
    pub fn checkpoint(&mut self, m: &Machine, chain: [u8; 32]) {
        if self.overflow {
            // A fresh start: the log from here on is kept again.
            self.overflow = false;
            self.agreed = m.count();
        }
        self.points.push_back(Checkpoint {
            count: m.count(),
            state: m.save(),
            chain,
            at_record: self.records.len(),
        });
        while self.points.len() > KEEP_CHECKPOINTS {
            // The oldest goes, unless it is the newest agreed one: then the next one does.
            let i = usize::from(self.points.len() > 1 && self.points[1].count > self.agreed);
            self.points.remove(i);
        }
        self.trim();
    }

    /// Every point up to `count` is agreed: the checkpoints before the newest one at or
    /// before it are not needed any more.
    pub fn agreed(&mut self, count: u64) {
        self.agreed = self.agreed.max(count);
        while self.points.len() > 1 && self.points[1].count <= self.agreed {
            self.points.pop_front();
        }
        self.trim();
    }

    fn trim(&mut self) {
        let Some(first) = self.points.front().map(|p| p.at_record) else {
            return;
        };
        if first > 0 {
            self.bytes -= self.records[..first]
                .iter()
                .map(record_bytes)
                .sum::<usize>();
            self.records.drain(..first);
            for p in &mut self.points {
                p.at_record -= first;
            }
        }
    }

    /// The records a log writer kept since last asked ([`ftvm_log::LogWriter::kept`]).
    pub fn take_kept(&mut self, kept: &mut Option<Vec<Record>>) {
        if let Some(v) = kept {
            self.records(std::mem::take(v));
        }
    }

    /// The counts of the checkpoints kept, oldest first.
    #[cfg(test)]
    fn counts(&self) -> Vec<u64> {
        self.points.iter().map(|p| p.count).collect()
    }

    /// Re-execute from the checkpoint at `req.from` to `req.to` in a scratch machine: the
    /// chain of outputs there (from `req.base`), or the state digest there. A re-execution
    /// that parts from the log before `req.to` (a faulty leader wrote it: a correct machine
    /// does not fit it) gives the hash of that divergence, as a follower votes it
    /// ([`crate::vote::divergence`]).
    pub fn reexecute(&self, req: &Request) -> Result<[u8; 32], RecheckError> {
        match self.run(req) {
            Err(RecheckError::Follow(e @ FollowError::Stopped { .. })) => Ok(divergence(&e)),
            r => r,
        }
    }

    fn run(&self, req: &Request) -> Result<[u8; 32], RecheckError> {
        if self.overflow {
            return Err(RecheckError::TooMuchLog);
        }
        let p = self
            .points
            .iter()
            .find(|p| p.count == req.from)
            .ok_or(RecheckError::NoCheckpoint(req.from))?;
        if req.to < p.count {
            return Err(RecheckError::Backwards {
                from: p.count,
                to: req.to,
            });
        }
        let mut m = Machine::restore(&p.state)?;
        let mut sink = Hashing(Chain(req.base.unwrap_or(p.chain)));
        let mut fault = self.fault.filter(|(at, _)| *at > p.count && *at <= req.to);
        let mut reached = false;
        for r in &self.records[p.at_record..] {
            let c = r.count();
            if c > req.to {
                reached = true;
                break;
            }
            if let Some((at, f)) = fault.take_if(|(at, _)| c >= *at) {
                follow::run_to(&mut m, at, &mut sink)?;
                let _ = m.inject(&f);
            }
            let at_the_point = c == req.to
                && match req.what {
                    What::Outputs => matches!(r, Record::Mark { .. }),
                    What::Digest => matches!(r, Record::Digest { .. }),
                };
            if at_the_point {
                follow::run_to(&mut m, c, &mut sink)?;
                reached = true;
                break;
            }
            match r {
                // The first execution's digests are not this one's to obey.
                Record::Digest { count, .. } => follow::run_to(&mut m, *count, &mut sink)?,
                Record::End { count, .. } => {
                    follow::run_to(&mut m, *count, &mut sink)?;
                    reached = true;
                    break;
                }
                r => {
                    follow::apply(&mut m, r.clone(), &mut sink)?;
                }
            }
        }
        if !reached {
            let end = self.records.last().map_or(p.count, Record::count);
            return Err(RecheckError::Short(end));
        }
        if let Some((at, f)) = fault {
            if m.count() <= at {
                follow::run_to(&mut m, at, &mut sink)?;
                let _ = m.inject(&f);
            }
        }
        follow::run_to(&mut m, req.to, &mut sink)?;
        Ok(match req.what {
            What::Outputs => sink.0 .0,
            What::Digest => *m.digest().as_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftvm_machine::fault::Target;

    /// A machine that prints a counter on its console forever.
    fn printer() -> Machine {
        program(&[
            0x0000_0513, // li a0, 0
            0x1000_02b7, // lui t0, 0x10000 (the UART)
            0x0015_0513, // addi a0, a0, 1
            0x00a2_8023, // sb a0, 0(t0)
            0xff9f_f06f, // j -8
        ])
    }

    /// A machine running `code` in M-mode from the start of RAM (a bare-metal ELF).
    fn program(code: &[u32]) -> Machine {
        let base: u64 = 0x8000_0000;
        let len = 4 * code.len() as u64;
        let mut f = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f.extend_from_slice(&243u16.to_le_bytes()); // EM_RISCV
        f.extend_from_slice(&1u32.to_le_bytes());
        for v in [base, 64, 0] {
            f.extend_from_slice(&v.to_le_bytes()); // entry, phoff, shoff
        }
        f.extend_from_slice(&0u32.to_le_bytes());
        for v in [64u16, 56, 1, 64, 0, 0] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f.extend_from_slice(&7u32.to_le_bytes());
        for v in [120, base, base, len, len, 0x1000] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        for w in code {
            f.extend_from_slice(&w.to_le_bytes());
        }
        Machine::boot_elf(ftvm_machine::MIN_RAM, 1, &f).unwrap()
    }

    fn outputs_to(m: &mut Machine, to: u64) -> [u8; 32] {
        let mut s = Hashing(Chain::default());
        follow::run_to(m, to, &mut s).unwrap();
        s.0 .0
    }

    #[test]
    fn a_reexecution_repeats_the_first_and_a_persistent_fault_happens_again() {
        let mut m = printer();
        let mut r = Rechecker::new(&m, [0; 32]);
        r.record(Record::Mark { count: 400 });
        r.record(Record::Mark { count: 1000 });
        // Console bytes are taken where a run stops: the first execution stopped where the
        // log has records, as a replay does.
        let mut s = Hashing(Chain::default());
        follow::run_to(&mut m, 400, &mut s).unwrap();
        follow::run_to(&mut m, 1000, &mut s).unwrap();
        let first = s.0 .0;
        let req = Request {
            from: 0,
            base: None,
            to: 1000,
            what: What::Outputs,
        };
        assert_eq!(r.reexecute(&req).unwrap(), first);
        // A fault changes what it prints: once injected, a re-execution without it differs.
        let flip = Fault {
            target: Target::X(10),
            bit: 5,
            hart: 0,
        };
        let mut bad = printer();
        let mut s = Hashing(Chain::default());
        follow::run_to(&mut bad, 400, &mut s).unwrap();
        bad.inject(&flip).unwrap();
        follow::run_to(&mut bad, 1000, &mut s).unwrap();
        assert_ne!(s.0 .0, first);
        // A persistent one is injected again: the re-execution repeats the faulty result.
        r.persistent(400, flip);
        assert_eq!(r.reexecute(&req).unwrap(), s.0 .0);
        // Digests too (before the fault's count).
        let d = Request {
            what: What::Digest,
            to: 300,
            ..req
        };
        let mut again = printer();
        outputs_to(&mut again, 300);
        assert_eq!(r.reexecute(&d).unwrap(), *again.digest().as_bytes());
    }

    /// A sink that cuts its runs into chunks of `chunk` instructions.
    struct Chunked(Hashing, u64, usize);

    impl Sink for Chunked {
        fn output(&mut self, m: &Machine, count: u64, out: Output) -> std::io::Result<()> {
            self.0.output(m, count, out)
        }
        fn chunk(&self) -> u64 {
            self.1
        }
        fn between(&mut self) {
            self.2 += 1;
        }
    }

    #[test]
    fn a_run_cut_into_chunks_ends_alike_and_takes_its_outputs_where_an_uncut_one_does() {
        let mut whole = printer();
        let mut s = Hashing(Chain::default());
        for to in [3_000, 10_000] {
            follow::run_to(&mut whole, to, &mut s).unwrap();
        }
        for chunk in [1, 7, 4_096] {
            let mut m = printer();
            let mut c = Chunked(Hashing(Chain::default()), chunk, 0);
            for to in [3_000, 10_000] {
                follow::run_to(&mut m, to, &mut c).unwrap();
            }
            assert_eq!(m.count(), 10_000);
            // One cut less a run (its last chunk ends at its stop).
            assert!(c.2 as u64 + 2 >= 10_000 / chunk, "{} cuts of {chunk}", c.2);
            assert_eq!(
                c.0 .0, s.0,
                "outputs taken elsewhere with chunks of {chunk}"
            );
            assert_eq!(m.digest(), whole.digest());
        }
    }

    #[test]
    fn checkpoints_are_kept_within_bounds_and_agreed_ones_let_older_go() {
        let mut m = printer();
        let mut r = Rechecker::new(&m, [0; 32]);
        for i in 1..=5u64 {
            r.record(Record::Input {
                count: i * 100 - 50,
                inputs: vec![Input::Time { ticks: 1 }],
            });
            outputs_to(&mut m, i * 100);
            r.record(Record::Digest {
                count: i * 100,
                digest: *m.digest().as_bytes(),
            });
            r.checkpoint(&m, [i as u8; 32]);
        }
        // The newest agreed checkpoint (the start) stays; the newer ones make room.
        assert_eq!(r.counts(), vec![0, 400, 500]);
        assert_eq!(
            r.records.len(),
            10,
            "the records from the oldest checkpoint on"
        );
        r.agreed(450);
        assert_eq!(r.counts(), vec![400, 500]);
        assert_eq!(
            r.records.len(),
            2,
            "the records from the oldest checkpoint on"
        );
        // Agreed at 400: a new checkpoint drops 500 rather than 400.
        outputs_to(&mut m, 600);
        r.checkpoint(&m, [6; 32]);
        outputs_to(&mut m, 700);
        r.checkpoint(&m, [7; 32]);
        assert_eq!(r.counts(), vec![400, 600, 700]);
        let req = Request {
            from: 300,
            base: None,
            to: 500,
            what: What::Outputs,
        };
        assert!(matches!(
            r.reexecute(&req),
            Err(RecheckError::NoCheckpoint(300))
        ));
        let req = Request { from: 400, ..req };
        assert!(matches!(r.reexecute(&req), Err(RecheckError::Short(_))));
    }

    #[test]
    fn a_log_a_correct_machine_does_not_fit_gives_its_divergence() {
        // A faulty leader's log: a mark at 900, where a correct machine waits for an
        // interrupt from instruction 1 on; a re-execution parts from it as the replay did.
        let idler = || program(&[0x1050_0073, 0xffdf_f06f]); // wfi; j -4
        let mut r = Rechecker::new(&idler(), [0; 32]);
        r.record(Record::Mark { count: 900 });
        let req = Request {
            from: 0,
            base: None,
            to: 900,
            what: What::Outputs,
        };
        let got = r.reexecute(&req).unwrap();
        let replay = follow::apply(
            &mut idler(),
            Record::Mark { count: 900 },
            &mut follow::Discard,
        );
        let Err(e @ FollowError::Stopped { .. }) = replay else {
            panic!("the replay fits: {replay:?}");
        };
        assert_eq!(got, divergence(&e));
    }

    #[test]
    fn a_log_too_large_to_keep_gives_re_execution_up_until_the_next_checkpoint() {
        let mut m = printer();
        let mut r = Rechecker::new(&m, [0; 32]);
        let big = Record::Input {
            count: 10,
            inputs: vec![Input::Entropy {
                slot: 0,
                bytes: vec![0; MAX_KEPT_BYTES / 2],
            }],
        };
        r.record(big.clone());
        r.record(big);
        let req = Request {
            from: 0,
            base: None,
            to: 100,
            what: What::Outputs,
        };
        assert!(matches!(r.reexecute(&req), Err(RecheckError::TooMuchLog)));
        assert!(r.records.is_empty() && r.counts().is_empty());
        outputs_to(&mut m, 200);
        r.checkpoint(&m, [0; 32]);
        r.record(Record::Mark { count: 300 });
        let req = Request {
            from: 200,
            to: 300,
            ..req
        };
        assert!(r.reexecute(&req).is_ok());
    }
}
