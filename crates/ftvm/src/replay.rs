//! `ftvm replay`: re-execute a log with no live device, feeding each input at its count and
//! checking every digest.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ftvm_cpu::Engine;
use ftvm_log::{LogReader, Next, Record};
use ftvm_machine::board::NANOS_PER_TICK;
use ftvm_machine::{DeviceOutput, Machine, Output};
use ftvm_runner::follow::{self, Applied, Sink};
use std::path::PathBuf;

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

/// The log to replay: a file, or the directory of a kept window (`--keep-log`), whose
/// segments are read in order as one log. A later segment's header is not a second initial
/// state: it becomes a digest record, so the replay checks that it reached that state.
pub(crate) struct Source {
    rest: std::collections::VecDeque<PathBuf>,
    cur: LogReader<File>,
    name: PathBuf,
}

impl Source {
    pub(crate) fn open(path: &Path) -> Result<Source> {
        let mut rest: std::collections::VecDeque<PathBuf> = if path.is_dir() {
            let w = ftvm_log::kept::window(path)
                .with_context(|| format!("cannot read the kept log {}", path.display()))?;
            if w.is_empty() {
                bail!(
                    "{} holds no kept log segment (kept-NNNNNN.log)",
                    path.display()
                );
            }
            w.into()
        } else {
            [path.to_path_buf()].into()
        };
        let first = rest.pop_front().unwrap_or_default();
        let cur = LogReader::open(&first)
            .with_context(|| format!("cannot read log {}", first.display()))?;
        Ok(Source {
            rest,
            cur,
            name: first,
        })
    }

    /// The next record, or None at the end of the last segment.
    pub(crate) fn next(&mut self) -> Result<Option<Record>> {
        match self
            .cur
            .next_record()
            .with_context(|| format!("reading {}", self.name.display()))?
        {
            Next::Record(r) => return Ok(Some(r)),
            Next::Partial if !self.rest.is_empty() => bail!(
                "{} is cut short, but later segments follow it",
                self.name.display()
            ),
            Next::Eof | Next::Partial => {}
        }
        let Some(next) = self.rest.pop_front() else {
            return Ok(None);
        };
        let mut r = LogReader::open(&next)
            .with_context(|| format!("cannot read log {}", next.display()))?;
        let Next::Record(Record::Header {
            count, snapshot, ..
        }) = r.next_record()?
        else {
            bail!("{}: the segment has no header", next.display());
        };
        let digest = Machine::restore(&snapshot)
            .with_context(|| format!("{}: its initial state", next.display()))?
            .digest();
        self.cur = r;
        self.name = next;
        Ok(Some(Record::Digest {
            count,
            digest: *digest.as_bytes(),
        }))
    }
}

pub fn replay(a: ReplayArgs, check: bool) -> Result<u8> {
    let mut log = Source::open(&a.log)?;
    let Some(Record::Header {
        count,
        snapshot,
        digest_every,
    }) = log.next()?
    else {
        bail!("the log has no header");
    };
    let mut m = Machine::restore(&snapshot).context("the log's initial state")?;
    if m.count() != count {
        bail!("the log's header does not match its initial state");
    }
    if check {
        if a.gdb.is_some() {
            bail!("--gdb and --engine check do not go together: debug with one engine");
        }
        return check_engines(&a, &snapshot, &mut log);
    }
    if let Some(addr) = &a.gdb {
        return debug(&a, addr, &snapshot, &mut log);
    }
    tracing::info!(digest_every, "replaying {}", a.log.display());
    let until = a.until.unwrap_or(u64::MAX);
    let mut sinks = Sinks::open(&a)?;
    let mut events = 0u64;
    let mut digests = 0u64;
    let mut ended = false;
    let started = std::time::Instant::now();
    while let Some(r) = log.next()? {
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

/// A deliberate fault for the checker's own tests: `FTVM_CHECK_FLIP=COUNT:REG` flips bit 0 of
/// integer register REG of the translator's machine when it reaches COUNT, so a test can see
/// the checker find and name a difference.
fn flip_from_env() -> Result<Option<(u64, usize)>> {
    let Ok(v) = std::env::var("FTVM_CHECK_FLIP") else {
        return Ok(None);
    };
    let parsed = v
        .split_once(':')
        .and_then(|(c, r)| Some((c.parse().ok()?, r.parse().ok()?)))
        .filter(|&(_, r): &(u64, usize)| (1..32).contains(&r));
    match parsed {
        Some(f) => Ok(Some(f)),
        None => bail!("FTVM_CHECK_FLIP={v:?}: expected COUNT:REG with REG 1..31"),
    }
}

/// Run the translator's machine to `target`, flipping the register of `flip` on the way.
fn advance(
    m: &mut Machine,
    target: u64,
    flip: &mut Option<(u64, usize)>,
    sink: &mut dyn Sink,
) -> Result<()> {
    if let Some((at, r)) = *flip {
        if at <= target && at >= m.count() {
            follow::run_to(m, at, sink)?;
            let h = m.hart_mut(m.current_hart());
            h.set_reg(r, h.reg(r) ^ 1);
            *flip = None;
        }
    }
    follow::run_to(m, target, sink)?;
    Ok(())
}

/// The two engines of `--engine check`: the translator checked against the interpreter.
fn pair_of_machines(snapshot: &[u8]) -> Result<(Machine, Machine)> {
    let mut jit = Machine::restore(snapshot).context("the log's initial state")?;
    let mut interp = Machine::restore(snapshot).context("the log's initial state")?;
    if !jit.set_engine(Engine::Jit) {
        bail!("--engine check needs the translator, which this host does not have");
    }
    interp.set_engine(Engine::Interp);
    Ok((jit, interp))
}

/// `ftvm replay --engine check`: replay the log with the translator and the interpreter side
/// by side, comparing whole-machine digests every `--check-every` instructions. On the first
/// difference, replay both again to the last point they agreed and step them one instruction
/// at a time to name the first instruction after which their states differ.
fn check_engines(a: &ReplayArgs, snapshot: &[u8], log: &mut Source) -> Result<u8> {
    let every = a.check_every.max(1);
    let until = a.until.unwrap_or(u64::MAX);
    let mut records = Vec::new();
    while let Some(r) = log.next()? {
        if r.count() > until {
            break;
        }
        records.push(r);
    }
    let (mut jit, mut interp) = pair_of_machines(snapshot)?;
    let mut flip = flip_from_env()?;
    let mut sinks = Sinks::open(a)?;
    let mut agreed = jit.count();
    let mut next = (agreed / every + 1).saturating_mul(every);
    let mut checks = 0u64;
    let mut differ = None;
    let started = std::time::Instant::now();
    'records: for r in &records {
        while next <= r.count() {
            if advance(&mut jit, next, &mut flip, &mut sinks).is_err() {
                differ = Some((agreed, next));
                break 'records;
            }
            follow::run_to(&mut interp, next, &mut follow::Discard)?;
            checks += 1;
            if jit.digest() != interp.digest() {
                differ = Some((agreed, next));
                break 'records;
            }
            agreed = next;
            next = next.saturating_add(every);
        }
        // The interpreter is the reference: a log it cannot follow is an error of the log.
        let applied = follow::apply(&mut interp, r.clone(), &mut follow::Discard)
            .context("the interpreter's replay")?;
        let followed = advance(&mut jit, r.count(), &mut flip, &mut sinks)
            .and_then(|()| Ok(follow::apply(&mut jit, r.clone(), &mut sinks)?));
        if followed.is_err() {
            differ = Some((agreed, r.count().max(agreed + 1)));
            break;
        }
        if let Applied::End { .. } = applied {
            break;
        }
    }
    if differ.is_none() && until != u64::MAX && jit.count() < until {
        follow::run_to(&mut interp, until, &mut follow::Discard)?;
        if advance(&mut jit, until, &mut flip, &mut sinks).is_err() {
            differ = Some((agreed, until));
        }
    }
    if differ.is_none() {
        checks += 1;
        if jit.digest() != interp.digest() {
            differ = Some((agreed, jit.count()));
        }
    }
    if let Some((good, bad)) = differ {
        let why = locate(snapshot, &records, good, bad)?;
        bail!("the engines differ: {why}");
    }
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "check ended");
    println!(
        "engines agree: {} instructions, {checks} comparisons every {every} instructions",
        jit.count()
    );
    if a.digest {
        println!("digest {}", jit.digest().to_hex());
    }
    Ok(0)
}

/// Name the first instruction in `good..bad` after which the engines' states differ.
fn locate(snapshot: &[u8], records: &[Record], good: u64, bad: u64) -> Result<String> {
    let (mut jit, mut interp) = pair_of_machines(snapshot)?;
    let mut flip = flip_from_env()?;
    let mut discard = follow::Discard;
    let mut i = 0;
    while i < records.len() && records[i].count() <= good {
        advance(&mut jit, records[i].count(), &mut flip, &mut discard)?;
        follow::apply(&mut jit, records[i].clone(), &mut discard)?;
        follow::apply(&mut interp, records[i].clone(), &mut discard)?;
        i += 1;
    }
    advance(&mut jit, good, &mut flip, &mut discard)?;
    follow::run_to(&mut interp, good, &mut discard)?;
    let (mut sj, mut si) = (Vec::new(), Vec::new());
    let mut c = good;
    while c < bad {
        // (The flip is due at c or later: it is applied before the instruction at its count.)
        advance(&mut jit, c, &mut flip, &mut discard)?;
        while i < records.len() && records[i].count() == c {
            follow::apply(&mut interp, records[i].clone(), &mut discard)?;
            if let Err(e) = follow::apply(&mut jit, records[i].clone(), &mut discard) {
                return Ok(format!(
                    "at instruction {c}: the translator's machine did not follow the log: {e}"
                ));
            }
            i += 1;
        }
        let hart = interp.current_hart();
        let (pc, prv) = (interp.harts()[hart].pc(), interp.harts()[hart].privilege());
        follow::run_to(&mut interp, c + 1, &mut discard)?;
        if let Err(e) = follow::run_to(&mut jit, c + 1, &mut discard) {
            return Ok(format!(
                "first at instruction {c} (hart {hart}, pc {pc:#x}, {prv:?} mode): the \
                 translator's machine did not follow the log: {e}"
            ));
        }
        for (k, (j, t)) in jit.harts().iter().zip(interp.harts()).enumerate() {
            sj.clear();
            si.clear();
            j.save(&mut sj);
            t.save(&mut si);
            if sj == si {
                continue;
            }
            let mut what = Vec::new();
            if j.pc() != t.pc() {
                what.push(format!(
                    "pc: translator {:#x}, interpreter {:#x}",
                    j.pc(),
                    t.pc()
                ));
            }
            for r in 1..32 {
                if j.reg(r) != t.reg(r) {
                    what.push(format!(
                        "x{r}: translator {:#x}, interpreter {:#x}",
                        j.reg(r),
                        t.reg(r)
                    ));
                }
            }
            if what.is_empty() {
                what.push("other hart state (CSRs, FP registers, privilege)".into());
            }
            return Ok(format!(
                "first at instruction {c} (hart {hart}, pc {pc:#x}, {prv:?} mode): hart {k}: {}",
                what.join("; ")
            ));
        }
        // A whole-machine digest costs a pass over RAM: one per million steps.
        const DIGEST_STEPS: u64 = 1 << 20;
        if (c + 1 - good).is_multiple_of(DIGEST_STEPS) && jit.digest() != interp.digest() {
            return Ok(format!(
                "memory or device state differs first between instructions {} and {} \
                 (the harts agree)",
                c + 1 - DIGEST_STEPS,
                c + 1
            ));
        }
        c += 1;
    }
    Ok(format!(
        "memory or device state differs between instructions {good} and {bad} (the harts agree)"
    ))
}

/// `ftvm replay --gdb ADDR`: serve gdb on the log's timeline, then replay to the log's end
/// and report as an undisturbed replay does.
fn debug(a: &ReplayArgs, addr: &str, snapshot: &[u8], log: &mut Source) -> Result<u8> {
    let mut records = Vec::new();
    while let Some(r) = log.next()? {
        records.push(r);
    }
    let limits = ftvm_debug::Limits {
        every: a.checkpoint_every,
        max_bytes: usize::try_from(a.checkpoint_memory).unwrap_or(usize::MAX),
    };
    let tl =
        ftvm_debug::Timeline::new(snapshot, records, limits).context("the log's initial state")?;
    let (mut tl, killed) = serve_gdb(addr, tl)?;
    if killed {
        return Ok(0);
    }
    eprintln!(
        "ftvm: gdb detached at instruction {}: replaying to the log's end",
        tl.count()
    );
    tl.goto(u64::MAX).context("replaying to the log's end")?;
    println!("replay verified: {} instructions", tl.count());
    if a.digest {
        println!("digest {}", tl.machine().digest().to_hex());
    }
    Ok(0)
}

/// Wait for gdb on `addr`, serve it the timeline until it detaches (false) or kills the
/// session (true), and give the timeline back.
pub(crate) fn serve_gdb(
    addr: &str,
    tl: ftvm_debug::Timeline,
) -> Result<(ftvm_debug::Timeline, bool)> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("--gdb {addr}: cannot listen there"))?;
    let local = listener.local_addr()?;
    let range = if tl.end() == u64::MAX {
        format!("from instruction {}", tl.start())
    } else {
        format!("instructions {}..{}", tl.start(), tl.end())
    };
    eprintln!("ftvm: gdb: waiting on {local} ({range}; in gdb: target remote {local})");
    let (conn, peer) = listener
        .accept()
        .context("--gdb: accepting gdb's connection")?;
    drop(listener);
    conn.set_nodelay(true).ok();
    eprintln!("ftvm: gdb: {peer} connected");
    let mut session = ftvm_debug::Session::new(tl);
    let killed =
        ftvm_debug::serve(&mut session, conn).map_err(|e| anyhow::anyhow!("gdb session: {e}"))?;
    let tl = session.into_timeline();
    if killed {
        eprintln!("ftvm: gdb killed the session at instruction {}", tl.count());
    }
    Ok((tl, killed))
}
