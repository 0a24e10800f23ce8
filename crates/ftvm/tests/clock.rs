//! Guest time keeps up with the host's under `--clock host` whatever the engine's speed: over a
//! CPU-bound stretch, the guest's clock moves with the host's (within 50 ms), through logged
//! rate changes that a replay reproduces exactly; a snapshot taken right after a rate change
//! resumes to the replay's digest.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ftvm_log::{LogReader, Next, Record};
use ftvm_machine::Input;

const LIMIT: Duration = Duration::from_secs(300);
/// Rounds of CPU-bound work (each 3.5-4.5 s here under the translator), each followed by a
/// mark of guest time: most of a CPU-bound minute. The test needs 20 s at least (a 1% rate
/// error would show as 200 ms), so a faster host still passes.
const ROUNDS: usize = 12;
/// The most the guest's clock may drift from the host's over the stretch.
const MAX_DRIFT_MS: f64 = 50.0;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ftvm-clock-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The console, each piece with the host time it arrived.
type Timed = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

fn text(seen: &Timed) -> String {
    let v = seen.lock().unwrap();
    String::from_utf8_lossy(&v.iter().flat_map(|(_, b)| b.clone()).collect::<Vec<u8>>())
        .into_owned()
}

/// The kernel's time stamp of the line `[ secs.micros] tag` on the console, with the host time
/// its end arrived.
fn mark(seen: &Timed, tag: &str) -> Option<(f64, Instant)> {
    let v = seen.lock().unwrap();
    let mut all = Vec::new();
    for (t, b) in v.iter() {
        all.extend_from_slice(b);
        let s = String::from_utf8_lossy(&all);
        let Some(at) = s
            .find(&format!("] {tag}\r"))
            .or(s.find(&format!("] {tag}\n")))
        else {
            continue;
        };
        let open = s[..at].rfind('[')?;
        let secs: f64 = s[open + 1..at].trim().parse().ok()?;
        return Some((secs, *t));
    }
    None
}

/// The digest a run printed last (the guest's console may precede it on the same line).
fn last_digest(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text
        .rfind("digest ")
        .unwrap_or_else(|| panic!("no digest in:\n{text}"));
    text[at + 7..].chars().take(64).collect()
}

fn records(log: &Path) -> Vec<Record> {
    let mut r = LogReader::open(log).unwrap();
    let mut v = Vec::new();
    while let Next::Record(x) = r.next_record().unwrap() {
        v.push(x);
    }
    v
}

#[test]
fn guest_time_keeps_up_with_the_host_over_a_cpu_bound_stretch() {
    let d = dir();
    let log = d.join("clock.log");
    let mut child = guest_command(&["record", "--log", log.to_str().unwrap(), "--clock", "host"])
        .spawn()
        .expect("spawn ftvm record");
    let seen: Timed = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push((Instant::now(), buf[..n].to_vec()));
        }
    });
    let t0 = Instant::now();
    while !text(&seen).contains("ftvm-guest: ready") {
        if t0.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("no ready line");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Marks of guest time (printk's time stamps: the timer's clock, in microseconds) around
    // rounds of hashing 256 MiB of zeros (CPU-bound: no idle, no input).
    let cmd = format!(
        "echo CLK-0 > /dev/kmsg; for i in $(seq 1 {ROUNDS}); do \
         dd if=/dev/zero bs=1M count=256 2>/dev/null | md5sum >/dev/null; \
         echo CLK-$i > /dev/kmsg; done; poweroff\n"
    );
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(cmd.as_bytes())
        .unwrap();
    let done = wait_limited(child, LIMIT, "recorded guest");
    reader.join().unwrap();
    assert!(
        done.status.success(),
        "record exit {:?}: {}",
        done.status,
        String::from_utf8_lossy(&done.stderr)
    );
    let marks: Vec<(f64, Instant)> = (0..=ROUNDS)
        .map(|i| {
            mark(&seen, &format!("CLK-{i}"))
                .unwrap_or_else(|| panic!("no mark CLK-{i} in:\n{}", text(&seen)))
        })
        .collect();
    let (g0, h0) = marks[0];
    let mut worst: f64 = 0.0;
    for (i, &(g, h)) in marks.iter().enumerate() {
        let host = h.duration_since(h0).as_secs_f64();
        let drift_ms = (g - g0 - host) * 1000.0;
        eprintln!(
            "mark {i}: host {host:.3} s, guest {:.3} s, drift {drift_ms:+.1} ms",
            g - g0
        );
        worst = worst.max(drift_ms.abs());
    }
    let stretch = marks[ROUNDS].1.duration_since(h0).as_secs_f64();
    eprintln!("over {stretch:.1} s of host time: worst drift {worst:.1} ms");
    assert!(
        stretch > 20.0,
        "the stretch is too short to tell: {stretch:.1} s"
    );
    assert!(
        worst < MAX_DRIFT_MS,
        "guest time drifted {worst:.1} ms from the host's"
    );

    // The recording holds rate changes (the engine does not run at exactly 100 MIPS), and
    // replays verified.
    let recs = records(&log);
    let rates: Vec<u64> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Input { count, inputs } => inputs
                .iter()
                .any(|i| matches!(i, Input::Rate { .. }))
                .then_some(*count),
            _ => None,
        })
        .collect();
    assert!(
        rates.len() as f64 >= stretch * 5.0,
        "{} rate changes in {stretch:.1} s",
        rates.len()
    );
    let out = run_ftvm(&["replay", "--log", log.to_str().unwrap()], LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("replay verified:"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A snapshot right after a rate change (the first one followed by a million steps without
    // input: the guest runs on its own, as a restored machine does) resumes to the same state
    // as the replay.
    let inputs: Vec<(u64, &Vec<Input>)> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Input { count, inputs } => Some((*count, inputs)),
            _ => None,
        })
        .collect();
    let (at, next) = inputs
        .windows(2)
        .filter(|w| {
            w[0].1.iter().any(|i| matches!(i, Input::Rate { .. })) && w[1].0 - w[0].0 > 1_000_000
        })
        .map(|w| (w[0].0, w[1].0))
        .next()
        .expect("a stretch without input after a rate change");
    let until = (at + next) / 2;
    let snap = d.join("rate.snap");
    let out = run_ftvm(
        &[
            "replay",
            "--log",
            log.to_str().unwrap(),
            "--until",
            &at.to_string(),
            "--snapshot-out",
            snap.to_str().unwrap(),
        ],
        LIMIT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::fs::read(&snap).unwrap();
    assert_eq!(
        u32::from_le_bytes(file[8..12].try_into().unwrap()),
        2,
        "a snapshot of a clock that changed rate is version 2"
    );
    let replayed = last_digest(&run_ftvm(
        &[
            "replay",
            "--log",
            log.to_str().unwrap(),
            "--until",
            &until.to_string(),
            "--digest",
        ],
        LIMIT,
    ));
    let resumed = run_ftvm(
        &[
            "run",
            "--restore",
            snap.to_str().unwrap(),
            "--stop-at",
            &until.to_string(),
            "--clock",
            "virtual",
            "--digest",
        ],
        LIMIT,
    );
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(last_digest(&resumed), replayed);
    let _ = std::fs::remove_dir_all(&d);
}
