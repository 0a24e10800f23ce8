//! `ftvm replay`: re-execute a log with no live device, feeding each input at its count and
//! checking every digest.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ftvm_log::{LogReader, Next, Record};
use ftvm_machine::board::NANOS_PER_TICK;
use ftvm_machine::{DeviceOutput, Machine, Output};
use ftvm_runner::follow::{self, Applied, Sink};

use crate::ReplayArgs;

/// Where the guest's outputs go during a replay.
struct Sinks {
    console: Option<Box<dyn Write>>,
    pcap: Option<File>,
}

impl Sinks {
    fn open(a: &ReplayArgs) -> Result<Sinks> {
        let console: Option<Box<dyn Write>> = match &a.console_out {
            Some(p) if p == Path::new("-") => Some(Box::new(std::io::stdout())),
            Some(p) => Some(Box::new(
                File::create(p).with_context(|| format!("cannot write {}", p.display()))?,
            )),
            None => None,
        };
        let pcap = match &a.frames_out {
            Some(p) => {
                let mut f =
                    File::create(p).with_context(|| format!("cannot write {}", p.display()))?;
                // pcap global header: version 2.4, snaplen 65535, Ethernet.
                let mut h = Vec::new();
                h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
                h.extend_from_slice(&2u16.to_le_bytes());
                h.extend_from_slice(&4u16.to_le_bytes());
                h.extend_from_slice(&[0; 8]);
                h.extend_from_slice(&65535u32.to_le_bytes());
                h.extend_from_slice(&1u32.to_le_bytes());
                f.write_all(&h)?;
                Some(f)
            }
            None => None,
        };
        Ok(Sinks { console, pcap })
    }
}

impl Sink for Sinks {
    fn output(&mut self, m: &Machine, _count: u64, out: Output) -> std::io::Result<()> {
        match out {
            Output::Console(bytes) => {
                if let Some(c) = &mut self.console {
                    c.write_all(&bytes)?;
                }
            }
            Output::Device(DeviceOutput::Frame { frame, .. }) => {
                if let Some(f) = &mut self.pcap {
                    // Time stamps are the guest's.
                    let ns = m.board.mtime(m.count()).saturating_mul(NANOS_PER_TICK);
                    let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                    let mut h = Vec::with_capacity(16);
                    h.extend_from_slice(&((ns / 1_000_000_000) as u32).to_le_bytes());
                    h.extend_from_slice(&(((ns / 1000) % 1_000_000) as u32).to_le_bytes());
                    h.extend_from_slice(&len.to_le_bytes());
                    h.extend_from_slice(&len.to_le_bytes());
                    f.write_all(&h)?;
                    f.write_all(&frame)?;
                }
            }
            // Disk requests were served when the log was recorded: their results are in it.
            Output::Device(DeviceOutput::Disk(_)) => {}
        }
        Ok(())
    }
}

pub fn replay(a: ReplayArgs, _check: bool) -> Result<u8> {
    let mut log =
        LogReader::open(&a.log).with_context(|| format!("cannot read log {}", a.log.display()))?;
    let Next::Record(Record::Header {
        count,
        snapshot,
        digest_every,
    }) = log.next_record()?
    else {
        bail!("the log has no header");
    };
    let mut m = Machine::restore(&snapshot).context("the log's initial state")?;
    if m.count() != count {
        bail!("the log's header does not match its initial state");
    }
    tracing::info!(digest_every, "replaying {}", a.log.display());
    let until = a.until.unwrap_or(u64::MAX);
    let mut sinks = Sinks::open(&a)?;
    let mut events = 0u64;
    let mut digests = 0u64;
    let mut ended = false;
    let started = std::time::Instant::now();
    while let Next::Record(r) = log.next_record()? {
        if r.count() > until {
            break;
        }
        match follow::apply(&mut m, r, &mut sinks)? {
            Applied::Inputs(n) => events += n as u64,
            Applied::Digest => digests += 1,
            Applied::End { .. } => {
                digests += 1;
                ended = true;
                break;
            }
            Applied::Mark => {}
        }
    }
    if until != u64::MAX && !ended && m.count() < until {
        follow::run_to(&mut m, until, &mut sinks)?;
    }
    if let Some(c) = &mut sinks.console {
        c.flush()?;
    }
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "replay ended");
    if !ended && a.until.is_none() {
        eprintln!(
            "ftvm: the log ends without an end record (cut short?): replayed up to its last whole frame"
        );
    }
    println!(
        "replay verified: {} instructions, {events} events, {digests} digests",
        m.count()
    );
    if a.digest {
        println!("digest {}", m.digest().to_hex());
    }
    if let Some(path) = &a.snapshot_out {
        std::fs::write(path, m.save())
            .with_context(|| format!("cannot write snapshot {}", path.display()))?;
    }
    Ok(0)
}
