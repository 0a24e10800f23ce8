//! A flight recorder: the last stretch of a log, kept as a directory of segments.
//!
//! Each segment is a whole log file (`kept-NNNNNN.log`): a header with the machine's state
//! where it starts, then the records after it, so any segment replays on its own, and the
//! segments in order replay as one log (each segment's initial state is checked against the
//! machine the previous ones lead to; see [`window`]). A new segment starts every quarter of
//! the time kept; a segment is deleted once the later ones cover the whole time kept. So the
//! directory always holds at least the last `keep` of the run, and at most a quarter more.
//!
//! The writer flushes to the file at least every [`FLUSH_EVERY`], so a host that dies loses
//! at most that much of the end (a reader stops at the last whole frame).

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{LogError, LogWriter, Record};

/// The longest the writer holds records before they reach the file.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

const PREFIX: &str = "kept-";
const SUFFIX: &str = ".log";

pub struct KeptLog {
    dir: PathBuf,
    keep: Duration,
    /// The segments, oldest first, with when each started; the last one is being written.
    segments: VecDeque<(PathBuf, Instant)>,
    out: Option<LogWriter<BufWriter<File>>>,
    seq: u64,
    flushed: Instant,
}

impl KeptLog {
    /// Keep the last `keep` of a log in `dir` (made if missing). Segments left there by an
    /// earlier run are deleted: the window starts anew. Nothing else in the directory is
    /// touched.
    pub fn create(dir: &Path, keep: Duration) -> Result<KeptLog, LogError> {
        std::fs::create_dir_all(dir)?;
        for old in segment_files(dir)? {
            std::fs::remove_file(old)?;
        }
        Ok(KeptLog {
            dir: dir.to_path_buf(),
            keep: keep.max(Duration::from_millis(100)),
            segments: VecDeque::new(),
            out: None,
            seq: 0,
            flushed: Instant::now(),
        })
    }

    /// Whether the segment being written is old enough for a new one to start (or none is).
    pub fn due(&self, now: Instant) -> bool {
        self.segments
            .back()
            .is_none_or(|&(_, started)| now.duration_since(started) >= self.keep / 4)
    }

    /// Start a new segment with this header (the machine's state where it starts), closing
    /// the one before, and delete the segments the window no longer needs.
    pub fn start(&mut self, header: Record, now: Instant) -> Result<(), LogError> {
        if let Some(mut w) = self.out.take() {
            w.flush()?;
        }
        let path = self.dir.join(format!("{PREFIX}{:06}{SUFFIX}", self.seq));
        self.seq += 1;
        self.out = Some(LogWriter::create(&path, header)?);
        self.segments.push_back((path, now));
        self.flushed = now;
        // The oldest goes once the next one started before the window does.
        while self.segments.len() > 1 && now.duration_since(self.segments[1].1) >= self.keep {
            if let Some((old, _)) = self.segments.pop_front() {
                std::fs::remove_file(old)?;
            }
        }
        Ok(())
    }

    /// Append a record after the header to the segment being written.
    pub fn append(&mut self, r: &Record, now: Instant) -> Result<(), LogError> {
        let Some(w) = &mut self.out else {
            return Ok(());
        };
        w.append(r)?;
        if now.duration_since(self.flushed) >= FLUSH_EVERY {
            w.flush()?;
            self.flushed = now;
        }
        Ok(())
    }

    /// Push everything written to the file.
    pub fn flush(&mut self) -> Result<(), LogError> {
        match &mut self.out {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }

    /// The segment files kept now, oldest first.
    pub fn files(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|(p, _)| p.clone()).collect()
    }
}

impl Drop for KeptLog {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// The segment files in `dir`, oldest first.
fn segment_files(dir: &Path) -> Result<Vec<PathBuf>, LogError> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name
                .strip_prefix(PREFIX)?
                .strip_suffix(SUFFIX)?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    v.sort();
    Ok(v.into_iter().map(|(_, p)| p).collect())
}

/// The segments of a kept window in `dir`, oldest first, to replay in that order: the first
/// one's header is the initial state, the others' headers check the state reached there.
pub fn window(dir: &Path) -> Result<Vec<PathBuf>, LogError> {
    segment_files(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LogReader, Next};
    use ftvm_machine::Input;

    fn header(count: u64) -> Record {
        Record::Header {
            count,
            snapshot: vec![count as u8; 16],
            digest_every: 1000,
        }
    }

    fn records(p: &Path) -> Vec<Record> {
        let mut r = LogReader::open(p).unwrap();
        let mut v = Vec::new();
        while let Next::Record(x) = r.next_record().unwrap() {
            v.push(x);
        }
        v
    }

    #[test]
    fn segments_roll_and_the_window_covers_what_is_kept() {
        let dir = std::env::temp_dir().join(format!("ftvm-kept-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kept-000042.log"), b"stale").unwrap();
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
        let keep = Duration::from_secs(40);
        let mut k = KeptLog::create(&dir, keep).unwrap();
        assert!(
            !dir.join("kept-000042.log").exists(),
            "a stale segment stays"
        );
        assert!(dir.join("notes.txt").exists(), "another file was deleted");
        let t0 = Instant::now();
        let sec = |s: u64| t0 + Duration::from_secs(s);
        let mut count = 0;
        for s in 0..=100u64 {
            if k.due(sec(s)) {
                k.start(header(count), sec(s)).unwrap();
            }
            count += 10;
            let r = Record::Input {
                count,
                inputs: vec![Input::Console(s as u8)],
            };
            k.append(&r, sec(s)).unwrap();
        }
        k.flush().unwrap();
        // A segment every 10 s; the ones that still matter to the last 40 s.
        let files = window(&dir).unwrap();
        assert_eq!(files, k.files());
        assert!(
            (4..=5).contains(&files.len()),
            "{} segments kept",
            files.len()
        );
        // The oldest starts at least 40 s before the end, and no more than 50 s.
        let first = records(&files[0]);
        let Record::Header { count: c0, .. } = first[0] else {
            panic!("no header")
        };
        let start_s = c0 / 10;
        assert!((50..=60).contains(&start_s), "window starts at {start_s} s");
        // The segments continue one another, record for record.
        let mut next = c0 + 10;
        for f in &files {
            let rs = records(f);
            let Record::Header { count, .. } = rs[0] else {
                panic!("no header")
            };
            assert_eq!(count + 10, next);
            for r in &rs[1..] {
                assert_eq!(r.count(), next);
                next += 10;
            }
        }
        assert_eq!(next, 1010 + 10);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
