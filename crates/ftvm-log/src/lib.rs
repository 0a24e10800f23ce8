//! The input log: everything that crossed the environment boundary, each input with the
//! instruction count at which it took effect, plus digests of the machine state.
//!
//! Layout (see docs/log-format.md):
//! ```text
//! file   := "FTVMLOG\0" version:u32le frame*
//! frame  := len:u32le body crc32c(body):u32le
//! body   := kind:u8 payload
//! ```
//! The first frame is the header (the initial machine state as a snapshot). Counts are varints,
//! each relative to the previous frame's count. A reader can follow a log while it is written:
//! a frame is only ever appended whole, and a trailing partial frame is "not there yet" (or, for
//! a log cut short by a crash, the end).

pub mod kept;

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use ftvm_machine::board::{MAX_RATE, MIN_RATE};
use ftvm_machine::Input;
use thiserror::Error;

pub const MAGIC: &[u8; 8] = b"FTVMLOG\0";
/// The version this ftvm writes. Version 2 added the `Rate` input; version 1 logs (which
/// cannot hold one) are read too.
pub const VERSION: u32 = 2;
/// The oldest version this ftvm reads.
pub const OLDEST_VERSION: u32 = 1;
/// Frames larger than this are taken as damage.
pub const MAX_FRAME: u32 = 1 << 30;

const K_HEADER: u8 = 1;
const K_INPUT: u8 = 2;
const K_DIGEST: u8 = 3;
const K_END: u8 = 4;
const K_MARK: u8 = 5;

const I_CONSOLE: u8 = 0;
const I_FRAME: u8 = 1;
const I_DISK: u8 = 2;
const I_ENTROPY: u8 = 3;
const I_TIME: u8 = 4;
const I_RATE: u8 = 5;

#[derive(Debug, Error)]
pub enum LogError {
    #[error("I/O error on the log: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an ftvm log (bad magic)")]
    BadMagic,
    #[error(
        "log version {0} is not supported (this ftvm reads versions {OLDEST_VERSION} to {VERSION})"
    )]
    Version(u32),
    #[error("log frame {index} at byte {offset} is damaged: {what}")]
    Damaged {
        index: u64,
        offset: u64,
        what: &'static str,
    },
    #[error("the log has no header frame")]
    NoHeader,
    #[error("a log record of {0} bytes is larger than a frame may be ({MAX_FRAME} bytes)")]
    TooLarge(usize),
}

/// One record of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The initial state: a snapshot file, and the interval of digest records.
    Header {
        count: u64,
        snapshot: Vec<u8>,
        digest_every: u64,
    },
    /// Inputs applied at `count`, in order.
    Input { count: u64, inputs: Vec<Input> },
    /// The machine's state digest at `count`.
    Digest { count: u64, digest: [u8; 32] },
    /// The run ended at `count` with this state and exit code.
    End {
        count: u64,
        digest: [u8; 32],
        code: u32,
    },
    /// The log is complete up to `count` (the replication stream marks where outputs wait).
    Mark { count: u64 },
}

impl Record {
    pub fn count(&self) -> u64 {
        match self {
            Record::Header { count, .. }
            | Record::Input { count, .. }
            | Record::Digest { count, .. }
            | Record::End { count, .. }
            | Record::Mark { count } => *count,
        }
    }
}

/// The length field of a frame whose body is `len` bytes: a writer writes nothing a reader
/// would refuse, and no length that would wrap.
fn frame_len(len: usize) -> Result<u32, LogError> {
    u32::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_FRAME)
        .ok_or(LogError::TooLarge(len))
}

fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn put_bytes(b: &mut Vec<u8>, d: &[u8]) {
    put_varint(b, d.len() as u64);
    b.extend_from_slice(d);
}

/// A cursor over a frame body; every read is checked.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&v, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(v)
    }
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.varint()?;
        self.take(usize::try_from(n).ok()?).map(<[u8]>::to_vec)
    }
    fn usize(&mut self) -> Option<usize> {
        usize::try_from(self.varint()?).ok()
    }
}

fn encode_input(b: &mut Vec<u8>, i: &Input) {
    match i {
        Input::Console(c) => {
            b.push(I_CONSOLE);
            b.push(*c);
        }
        Input::Frame { slot, frame } => {
            b.push(I_FRAME);
            put_varint(b, *slot as u64);
            put_bytes(b, frame);
        }
        Input::DiskDone { slot, id, ok, data } => {
            b.push(I_DISK);
            put_varint(b, *slot as u64);
            put_varint(b, *id);
            b.push(*ok as u8);
            put_bytes(b, data);
        }
        Input::Entropy { slot, bytes } => {
            b.push(I_ENTROPY);
            put_varint(b, *slot as u64);
            put_bytes(b, bytes);
        }
        Input::Time { ticks } => {
            b.push(I_TIME);
            put_varint(b, *ticks);
        }
        Input::Rate { rate } => {
            b.push(I_RATE);
            put_varint(b, *rate);
        }
    }
}

/// An input of a log of `version`.
fn decode_input(c: &mut Cur, version: u32) -> Option<Input> {
    Some(match c.u8()? {
        I_CONSOLE => Input::Console(c.u8()?),
        I_FRAME => Input::Frame {
            slot: c.usize()?,
            frame: c.bytes()?,
        },
        I_DISK => Input::DiskDone {
            slot: c.usize()?,
            id: c.varint()?,
            ok: c.u8()? != 0,
            data: c.bytes()?,
        },
        I_ENTROPY => Input::Entropy {
            slot: c.usize()?,
            bytes: c.bytes()?,
        },
        I_TIME => Input::Time { ticks: c.varint()? },
        // A rate the machine would clamp is not one a writer logged: damage.
        I_RATE if version >= 2 => Input::Rate {
            rate: Some(c.varint()?).filter(|r| (MIN_RATE..=MAX_RATE).contains(r))?,
        },
        _ => return None,
    })
}

/// Encode a record's frame body, counts relative to `prev`.
fn encode(r: &Record, prev: u64) -> Vec<u8> {
    let mut b = Vec::new();
    let delta = r.count().wrapping_sub(prev);
    match r {
        Record::Header {
            count,
            snapshot,
            digest_every,
        } => {
            b.push(K_HEADER);
            put_varint(&mut b, *count);
            put_varint(&mut b, *digest_every);
            b.extend_from_slice(snapshot);
        }
        Record::Input { inputs, .. } => {
            b.push(K_INPUT);
            put_varint(&mut b, delta);
            put_varint(&mut b, inputs.len() as u64);
            for i in inputs {
                encode_input(&mut b, i);
            }
        }
        Record::Digest { digest, .. } => {
            b.push(K_DIGEST);
            put_varint(&mut b, delta);
            b.extend_from_slice(digest);
        }
        Record::End { digest, code, .. } => {
            b.push(K_END);
            put_varint(&mut b, delta);
            b.extend_from_slice(digest);
            b.extend_from_slice(&code.to_le_bytes());
        }
        Record::Mark { .. } => {
            b.push(K_MARK);
            put_varint(&mut b, delta);
        }
    }
    b
}

fn decode(body: &[u8], prev: u64, version: u32) -> Option<Record> {
    let mut c = Cur(body);
    let kind = c.u8()?;
    if kind == K_HEADER {
        let count = c.varint()?;
        let digest_every = c.varint()?;
        return Some(Record::Header {
            count,
            digest_every,
            snapshot: c.0.to_vec(),
        });
    }
    let count = prev.checked_add(c.varint()?)?;
    let r = match kind {
        K_INPUT => {
            let n = c.usize()?;
            let mut inputs = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                inputs.push(decode_input(&mut c, version)?);
            }
            Record::Input { count, inputs }
        }
        K_DIGEST => Record::Digest {
            count,
            digest: c.take(32)?.try_into().ok()?,
        },
        K_END => Record::End {
            count,
            digest: c.take(32)?.try_into().ok()?,
            code: u32::from_le_bytes(c.take(4)?.try_into().ok()?),
        },
        K_MARK => Record::Mark { count },
        _ => return None,
    };
    c.0.is_empty().then_some(r)
}

/// Appends records to a log (a file, or a replication stream). Inputs at the same count are
/// gathered into one frame.
pub struct LogWriter<W: Write = BufWriter<File>> {
    out: W,
    prev: u64,
    batch: Option<(u64, Vec<Input>)>,
    pub bytes: u64,
    pub events: u64,
    /// When set, every record written after the header is kept here too (as it was framed:
    /// inputs gathered by count), for a replica that may have to re-execute what it logged.
    pub kept: Option<Vec<Record>>,
}

impl LogWriter {
    pub fn create(path: &Path, header: Record) -> Result<LogWriter, LogError> {
        LogWriter::new(BufWriter::new(File::create(path)?), header)
    }
}

impl<W: Write> LogWriter<W> {
    /// Start a log on `out` with its header.
    pub fn new(mut out: W, header: Record) -> Result<LogWriter<W>, LogError> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        let mut w = LogWriter {
            out,
            prev: header.count(),
            batch: None,
            bytes: 12,
            events: 0,
            kept: None,
        };
        w.frame(&encode(&header, 0))?;
        w.out.flush()?;
        Ok(w)
    }

    fn frame(&mut self, body: &[u8]) -> Result<(), LogError> {
        self.out.write_all(&frame_len(body.len())?.to_le_bytes())?;
        self.out.write_all(body)?;
        self.out.write_all(&crc32c::crc32c(body).to_le_bytes())?;
        self.bytes += body.len() as u64 + 8;
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), LogError> {
        if let Some((count, inputs)) = self.batch.take() {
            let r = Record::Input { count, inputs };
            let body = encode(&r, self.prev);
            self.prev = count;
            self.frame(&body)?;
            if let Some(kept) = &mut self.kept {
                kept.push(r);
            }
        }
        Ok(())
    }

    /// An input applied at `count`.
    pub fn input(&mut self, count: u64, input: &Input) -> Result<(), LogError> {
        self.events += 1;
        match &mut self.batch {
            Some((c, v)) if *c == count => v.push(input.clone()),
            _ => {
                self.flush_batch()?;
                self.batch = Some((count, vec![input.clone()]));
            }
        }
        Ok(())
    }

    /// A digest (or the end) record; written through to the file.
    pub fn record(&mut self, r: Record) -> Result<(), LogError> {
        self.flush_batch()?;
        let body = encode(&r, self.prev);
        self.prev = r.count();
        self.frame(&body)?;
        self.out.flush()?;
        if let Some(kept) = &mut self.kept {
            kept.push(r);
        }
        Ok(())
    }

    /// Append any record after the header: inputs one by one, the others whole.
    pub fn append(&mut self, r: &Record) -> Result<(), LogError> {
        match r {
            Record::Input { count, inputs } => {
                for i in inputs {
                    self.input(*count, i)?;
                }
                Ok(())
            }
            r => self.record(r.clone()),
        }
    }

    /// Mark the log complete up to `count` and push it out.
    pub fn mark(&mut self, count: u64) -> Result<(), LogError> {
        self.record(Record::Mark { count })
    }

    /// Push everything buffered to the file.
    pub fn flush(&mut self) -> Result<(), LogError> {
        self.flush_batch()?;
        self.out.flush()?;
        Ok(())
    }
}

/// How a read ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Record(Record),
    /// The end of the data: nothing more (yet).
    Eof,
    /// The data ends inside a frame: not written yet, or cut short by a crash.
    Partial,
}

/// Reads records from a log (a file, or bytes that grow as a writer appends).
pub struct LogReader<R> {
    /// The log's format version.
    pub version: u32,
    src: R,
    buf: Vec<u8>,
    /// Where reads land before they join `buf` (allocated at the first read, then reused).
    chunk: Vec<u8>,
    pos: usize,
    offset: u64,
    index: u64,
    prev: u64,
}

impl LogReader<File> {
    pub fn open(path: &Path) -> Result<LogReader<File>, LogError> {
        LogReader::new(File::open(path)?)
    }
}

impl<R: Read> LogReader<R> {
    pub fn new(mut src: R) -> Result<LogReader<R>, LogError> {
        let mut head = [0u8; 12];
        let mut got = 0;
        while got < 12 {
            match src.read(&mut head[got..])? {
                0 => return Err(LogError::BadMagic),
                n => got += n,
            }
        }
        if &head[..8] != MAGIC {
            return Err(LogError::BadMagic);
        }
        let v = u32::from_le_bytes(head[8..12].try_into().unwrap());
        if !(OLDEST_VERSION..=VERSION).contains(&v) {
            return Err(LogError::Version(v));
        }
        Ok(LogReader {
            version: v,
            src,
            buf: Vec::new(),
            chunk: Vec::new(),
            pos: 0,
            offset: 12,
            index: 0,
            prev: 0,
        })
    }

    /// Make `n` bytes available from `pos`; false if the source has no more now.
    fn fill(&mut self, n: usize) -> Result<bool, LogError> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        // Read in pieces of 64 KiB (reading ahead): the buffer grows with the bytes that
        // arrive, never by a frame length the log merely claims. (The piece's buffer is kept:
        // a record is read with two calls, and a stream's reader makes a few a message.)
        while self.buf.len() - self.pos < n {
            if self.chunk.is_empty() {
                self.chunk = vec![0u8; 1 << 16];
            }
            let got = self.src.read(&mut self.chunk)?;
            if got == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&self.chunk[..got]);
        }
        Ok(true)
    }

    /// The next record. A damaged frame is an error that names it.
    pub fn next_record(&mut self) -> Result<Next, LogError> {
        if !self.fill(4)? {
            return Ok(if self.buf.len() == self.pos {
                Next::Eof
            } else {
                Next::Partial
            });
        }
        let len = u32::from_le_bytes(self.buf[self.pos..self.pos + 4].try_into().unwrap());
        let (index, offset) = (self.index, self.offset);
        let damaged = |what| LogError::Damaged {
            index,
            offset,
            what,
        };
        if len == 0 || len > MAX_FRAME {
            return Err(damaged("impossible frame length"));
        }
        let total = len as usize + 8;
        if !self.fill(total)? {
            return Ok(Next::Partial);
        }
        let body = &self.buf[self.pos + 4..self.pos + 4 + len as usize];
        let crc = u32::from_le_bytes(
            self.buf[self.pos + 4 + len as usize..self.pos + total]
                .try_into()
                .unwrap(),
        );
        if crc32c::crc32c(body) != crc {
            return Err(damaged("checksum mismatch"));
        }
        let r =
            decode(body, self.prev, self.version).ok_or_else(|| damaged("undecodable record"))?;
        if (self.index == 0) != matches!(r, Record::Header { .. }) {
            return Err(if self.index == 0 {
                LogError::NoHeader
            } else {
                damaged("a second header")
            });
        }
        self.prev = r.count();
        self.pos += total;
        self.offset += total as u64;
        self.index += 1;
        Ok(Next::Record(r))
    }

    /// The source, to append to it when following a stream.
    pub fn source_mut(&mut self) -> &mut R {
        &mut self.src
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftvm_machine::board::DEFAULT_RATE;

    fn sample(path: &Path) -> Vec<Record> {
        let recs = vec![
            Record::Header {
                count: 5,
                snapshot: b"snapshot bytes".to_vec(),
                digest_every: 1000,
            },
            Record::Input {
                count: 7,
                inputs: vec![
                    Input::Console(b'a'),
                    Input::Frame {
                        slot: 1,
                        frame: vec![1, 2, 3],
                    },
                ],
            },
            Record::Input {
                count: 900,
                inputs: vec![
                    Input::DiskDone {
                        slot: 0,
                        id: 42,
                        ok: true,
                        data: vec![9; 512],
                    },
                    Input::Entropy {
                        slot: 2,
                        bytes: vec![7; 64],
                    },
                    Input::Time { ticks: 123456 },
                    Input::Rate { rate: 1_234_567 },
                ],
            },
            Record::Digest {
                count: 1000,
                digest: [3; 32],
            },
            Record::End {
                count: 1500,
                digest: [4; 32],
                code: 0,
            },
        ];
        let mut w = LogWriter::create(path, recs[0].clone()).unwrap();
        for r in &recs[1..] {
            w.append(r).unwrap();
        }
        w.flush().unwrap();
        recs
    }

    fn read_all(bytes: &[u8]) -> Result<(Vec<Record>, Next), LogError> {
        let mut r = LogReader::new(bytes)?;
        let mut v = Vec::new();
        loop {
            match r.next_record()? {
                Next::Record(x) => v.push(x),
                end => return Ok((v, end)),
            }
        }
    }

    #[test]
    fn round_trip_cut_short_and_damage() {
        let dir = std::env::temp_dir().join(format!("ftvm-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.log");
        let recs = sample(&path);
        let bytes = std::fs::read(&path).unwrap();
        let (got, end) = read_all(&bytes).unwrap();
        assert_eq!(got, recs);
        assert_eq!(end, Next::Eof);

        // Cut short anywhere: the whole frames before the cut are read, then Partial.
        for cut in 13..bytes.len() {
            let (got, end) = read_all(&bytes[..cut]).unwrap();
            assert!(got.len() < recs.len());
            assert_eq!(got[..], recs[..got.len()]);
            assert!(end == Next::Partial || end == Next::Eof);
        }

        // Flip any byte after the magic: an error naming a frame (or a bad header), never a
        // silently different record.
        for i in 12..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            match read_all(&b) {
                Err(LogError::Damaged { .. }) | Err(LogError::NoHeader) => {}
                Ok((got, _)) => assert!(got.len() < recs.len(), "flip at {i} went unnoticed"),
                Err(e) => panic!("flip at {i}: unexpected {e}"),
            }
        }
        assert!(matches!(read_all(b"FTVMSNAP...."), Err(LogError::BadMagic)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The bytes of a log of `version` holding a header and one input record with `input`.
    fn one_input_log(version: u32, input: Input) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        let header = Record::Header {
            count: 0,
            snapshot: vec![1, 2, 3],
            digest_every: 10,
        };
        let rec = Record::Input {
            count: 5,
            inputs: vec![input],
        };
        for body in [encode(&header, 0), encode(&rec, 0)] {
            bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&body);
            bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        }
        bytes
    }

    #[test]
    fn version_1_logs_are_read_without_rates_and_other_versions_refused() {
        // A version-1 log (an older ftvm's) reads as it always did.
        let v1 = one_input_log(1, Input::Time { ticks: 9 });
        let (got, end) = read_all(&v1).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(end, Next::Eof);
        // A rate input cannot be in a version-1 log: damage, named.
        let v1_rate = one_input_log(1, Input::Rate { rate: DEFAULT_RATE });
        assert!(matches!(
            read_all(&v1_rate),
            Err(LogError::Damaged { index: 1, .. })
        ));
        let v2_rate = one_input_log(2, Input::Rate { rate: DEFAULT_RATE });
        let (got, _) = read_all(&v2_rate).unwrap();
        assert_eq!(
            got[1],
            Record::Input {
                count: 5,
                inputs: vec![Input::Rate { rate: DEFAULT_RATE }]
            }
        );
        // A rate out of the machine's range is damage too.
        for rate in [0, MIN_RATE - 1, MAX_RATE + 1, u64::MAX] {
            let bad = one_input_log(2, Input::Rate { rate });
            assert!(
                matches!(read_all(&bad), Err(LogError::Damaged { index: 1, .. })),
                "{rate}"
            );
        }
        for v in [0, 3, u32::MAX] {
            let e = read_all(&one_input_log(v, Input::Time { ticks: 1 })).unwrap_err();
            assert!(matches!(e, LogError::Version(x) if x == v), "{e}");
            assert_eq!(
                e.to_string(),
                format!("log version {v} is not supported (this ftvm reads versions 1 to 2)")
            );
        }
    }

    #[test]
    fn a_writer_keeps_what_it_framed_when_asked() {
        let header = Record::Mark { count: 5 };
        let mut w = LogWriter::new(Vec::new(), header).unwrap();
        w.input(6, &Input::Time { ticks: 1 }).unwrap();
        w.kept = Some(Vec::new());
        w.input(7, &Input::Time { ticks: 2 }).unwrap();
        w.input(7, &Input::Time { ticks: 3 }).unwrap();
        w.mark(8).unwrap();
        let kept = w.kept.take().unwrap();
        // The batch at 6 was framed after keeping began: kept, as framed.
        assert_eq!(
            kept,
            vec![
                Record::Input {
                    count: 6,
                    inputs: vec![Input::Time { ticks: 1 }]
                },
                Record::Input {
                    count: 7,
                    inputs: vec![Input::Time { ticks: 2 }, Input::Time { ticks: 3 }]
                },
                Record::Mark { count: 8 },
            ]
        );
    }

    #[test]
    fn a_writer_refuses_a_frame_a_reader_would_refuse() {
        assert_eq!(frame_len(5).unwrap(), 5);
        assert_eq!(frame_len(MAX_FRAME as usize).unwrap(), MAX_FRAME);
        assert!(matches!(
            frame_len(MAX_FRAME as usize + 1),
            Err(LogError::TooLarge(_))
        ));
        assert!(matches!(
            frame_len((1usize << 32) + 7),
            Err(LogError::TooLarge(_))
        ));
    }

    #[test]
    fn a_claimed_frame_length_does_not_size_an_allocation() {
        // A frame that claims the largest length, followed by 100 bytes only.
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&MAX_FRAME.to_le_bytes());
        bytes.extend_from_slice(&[0; 100]);
        let mut r = LogReader::new(&bytes[..]).unwrap();
        let (next, largest) = probe::largest_allocation(|| r.next_record());
        assert_eq!(next.unwrap(), Next::Partial);
        assert!(largest < 1 << 20, "allocated {largest} bytes");
    }

    /// The largest allocation a closure makes on this thread (a counting global allocator).
    mod probe {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        struct Probe;

        thread_local! {
            static LARGEST: Cell<usize> = const { Cell::new(0) };
        }

        fn note(size: usize) {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }

        // SAFETY: every method forwards to the system allocator with the caller's arguments;
        // the bookkeeping touches only a const-initialized thread-local Cell (no allocation).
        unsafe impl GlobalAlloc for Probe {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                // SAFETY: forwarded as is; the caller upholds alloc's contract.
                unsafe { System.alloc(layout) }
            }
            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                // SAFETY: forwarded as is; the caller upholds alloc_zeroed's contract.
                unsafe { System.alloc_zeroed(layout) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: forwarded as is; the caller upholds dealloc's contract.
                unsafe { System.dealloc(ptr, layout) }
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                note(new_size);
                // SAFETY: forwarded as is; the caller upholds realloc's contract.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        #[global_allocator]
        static PROBE: Probe = Probe;

        pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
            LARGEST.with(|l| l.set(0));
            let v = f();
            (v, LARGEST.with(|l| l.get()))
        }
    }
}
