//! What replicas compare (N-modular redundancy): a hash of each output the machine produces,
//! folded into a chain, and the fault a test or an operator injects at a chosen count.
//!
//! Replicas fed the same log produce the same outputs in the same order; any difference is a
//! fault. An output's hash covers what leaves the machine: console bytes, a frame and its
//! device slot, a disk request (its device slot, sequence number, operation, sector and the
//! bytes written). Two chains agree at a point only if every output before it agreed.

use std::sync::atomic::{AtomicBool, Ordering};

use ftvm_machine::fault::Fault;
use ftvm_machine::{DeviceOutput, DiskOp, Output};

/// The hash of one output.
pub fn output_hash(out: &Output) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    match out {
        Output::Console(bytes) => {
            h.update(b"c");
            h.update(bytes);
        }
        Output::Device(DeviceOutput::Frame { slot, frame }) => {
            h.update(b"f");
            h.update(&(*slot as u64).to_le_bytes());
            h.update(frame);
        }
        Output::Device(DeviceOutput::Disk(req)) => {
            h.update(b"d");
            h.update(&(req.slot as u64).to_le_bytes());
            h.update(&req.id.to_le_bytes());
            match &req.op {
                DiskOp::Read { sector, len } => {
                    h.update(b"r");
                    h.update(&sector.to_le_bytes());
                    h.update(&(*len as u64).to_le_bytes());
                }
                DiskOp::Write { sector, data } => {
                    h.update(b"w");
                    h.update(&sector.to_le_bytes());
                    h.update(data);
                }
                DiskOp::Flush => {
                    h.update(b"s");
                }
            }
        }
    }
    *h.finalize().as_bytes()
}

/// What a replica votes when its replay stops fitting the log (`e`, the replay's error): the
/// hash of the error's report, which names the count and the exit where the machine parted
/// from the log. A re-execution that parts from it at the same place gives the same hash
/// ([`crate::recheck`]).
pub fn divergence(e: &crate::FollowError) -> [u8; 32] {
    *blake3::hash(e.to_string().as_bytes()).as_bytes()
}

/// A chain of output hashes: `chain' = BLAKE3(chain | output hash)`, from all zeros.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chain(pub [u8; 32]);

impl Chain {
    pub fn add(&mut self, output: &[u8; 32]) {
        let mut h = blake3::Hasher::new();
        h.update(&self.0);
        h.update(output);
        self.0 = *h.finalize().as_bytes();
    }
}

/// A fault to inject into this replica's machine when its count reaches `at` (a soft error,
/// for N-modular redundancy's tests and benchmarks).
#[derive(Clone, Debug)]
pub struct Injection {
    pub at: u64,
    /// `at` counts from where this replica's machine started (its boot, or its attach).
    pub relative: bool,
    pub fault: Fault,
    /// The fault persists (a stuck bit rather than a soft error): every re-execution that
    /// passes `at` suffers it again ([`crate::recheck`]).
    pub persists: bool,
}

/// Set once this process injected its fault: a replica that attaches again after it was
/// outvoted, or goes live, does not inject it a second time.
static INJECTED: AtomicBool = AtomicBool::new(false);

impl Injection {
    /// Note that the fault was injected (see [`Injection::from_start`]).
    pub fn done(&self) {
        INJECTED.store(true, Ordering::SeqCst);
    }

    /// The injection for a machine that starts at `start`: `None` if its count is passed, or
    /// if this process injected its fault already.
    pub fn from_start(&self, start: u64) -> Option<Injection> {
        if INJECTED.load(Ordering::SeqCst) {
            return None;
        }
        let at = if self.relative {
            start.saturating_add(self.at)
        } else {
            self.at
        };
        (at >= start).then_some(Injection {
            at,
            relative: false,
            fault: self.fault,
            persists: self.persists,
        })
    }
}

impl std::str::FromStr for Injection {
    type Err = String;
    /// `SPEC@COUNT` or `SPEC@+COUNT` (counted from where the machine starts: its boot, or
    /// its attach for a backup), SPEC as [`Fault`] parses it (`x10:3@250000000`).
    fn from_str(s: &str) -> Result<Injection, String> {
        let (spec, at) = s
            .rsplit_once('@')
            .ok_or_else(|| format!("'{s}': a fault is SPEC@COUNT, as x10:3@250000000"))?;
        let (relative, at) = match at.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, at),
        };
        let at = at
            .replace('_', "")
            .parse::<u64>()
            .map_err(|_| format!("'{at}' is no instruction count"))?;
        let fault = spec
            .parse::<Fault>()
            .map_err(|e| format!("'{spec}': {e}"))?;
        Ok(Injection {
            at,
            relative,
            fault,
            persists: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftvm_machine::DiskRequest;

    #[test]
    fn outputs_that_differ_in_any_part_hash_apart() {
        let frame = |slot, b: &[u8]| {
            Output::Device(DeviceOutput::Frame {
                slot,
                frame: b.to_vec(),
            })
        };
        let write = |sector, data: &[u8]| {
            Output::Device(DeviceOutput::Disk(DiskRequest {
                slot: 0,
                id: 1,
                op: DiskOp::Write {
                    sector,
                    data: data.to_vec(),
                },
            }))
        };
        let all = [
            Output::Console(b"ab".to_vec()),
            frame(1, b"ab"),
            frame(2, b"ab"),
            frame(1, b"ac"),
            write(0, b"ab"),
            write(1, b"ab"),
            write(0, b"ac"),
        ];
        let hashes: Vec<_> = all.iter().map(output_hash).collect();
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(output_hash(&all[3]), output_hash(&frame(1, b"ac")));
    }

    #[test]
    fn a_chain_depends_on_order() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let (mut x, mut y) = (Chain::default(), Chain::default());
        x.add(&a);
        x.add(&b);
        y.add(&b);
        y.add(&a);
        assert_ne!(x, y);
        let mut z = Chain::default();
        z.add(&a);
        z.add(&b);
        assert_eq!(x, z);
    }

    #[test]
    fn injections_parse() {
        let i: Injection = "x10:3@1_000".parse().unwrap();
        assert_eq!(i.at, 1000);
        assert!(!i.relative);
        assert_eq!(i.from_start(2000).map(|i| i.at), None);
        let r: Injection = "ram:0x80000000:5@+300".parse().unwrap();
        assert_eq!(r.from_start(2000).map(|i| i.at), Some(2300));
        assert!("x10:3".parse::<Injection>().is_err());
        assert!("x10:3@soon".parse::<Injection>().is_err());
        assert!("x0:3@5".parse::<Injection>().is_err());
    }
}
