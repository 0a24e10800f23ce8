//! Record a session, replay it offline: digests and console output agree; a damaged log is
//! refused naming the frame; a changed input diverges at the first digest after it.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ftvm_log::{LogReader, LogWriter, Next, Record};
use ftvm_machine::Input;

const EVERY: u64 = 20_000_000;
const LIMIT: Duration = Duration::from_secs(180);

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ftvm-replay-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Record a console session: boot, run a command, power off. Returns the console output.
fn record(log: &Path) -> Vec<u8> {
    let every = EVERY.to_string();
    let mut child = guest_command(&[
        "record",
        "--log",
        log.to_str().unwrap(),
        "--digest-every",
        &every,
    ])
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn ftvm record");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let t0 = Instant::now();
    while !String::from_utf8_lossy(&seen.lock().unwrap()).contains("ftvm-guest: ready") {
        if t0.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("no ready line while recording");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stdin = child.stdin.as_mut().unwrap();
    stdin
        .write_all(b"echo replay-$((6*7)); redis-cli set k v; poweroff\n")
        .unwrap();
    let done = wait_limited(child, LIMIT, "recorded guest");
    assert!(done.status.success(), "record exit {:?}", done.status);
    reader.join().unwrap();
    let v = seen.lock().unwrap().clone();
    assert!(String::from_utf8_lossy(&v).contains("replay-42"));
    v
}

fn replay(log: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["replay", "--log", log.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_ftvm(&args, LIMIT)
}

fn records(log: &Path) -> Vec<Record> {
    let mut r = LogReader::open(log).unwrap();
    let mut v = Vec::new();
    while let Next::Record(x) = r.next_record().unwrap() {
        v.push(x);
    }
    v
}

fn write_log(path: &Path, recs: &[Record]) {
    let mut w = LogWriter::create(path, recs[0].clone()).unwrap();
    for r in &recs[1..] {
        w.append(r).unwrap();
    }
    w.flush().unwrap();
}

#[test]
fn record_replay_verify_and_detect() {
    let d = dir();
    let log = d.join("session.log");
    let console = record(&log);

    // Replay offline: every digest matches, and the console output is the same.
    let replay_console = d.join("console.txt");
    let out = replay(&log, &["--console-out", replay_console.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("replay verified:"), "{text}");
    let recs = records(&log);
    // Under the host clock the live run changed the clock's rate (the engine does not run at
    // exactly 100 MIPS): the replay above reproduced those changes.
    assert!(
        recs.iter().any(|r| matches!(r, Record::Input { inputs, .. }
            if inputs.iter().any(|i| matches!(i, Input::Rate { .. })))),
        "no rate change in the recording"
    );
    let digests = recs
        .iter()
        .filter(|r| matches!(r, Record::Digest { .. }))
        .count();
    assert!(
        digests >= 3,
        "a digest every {EVERY} instructions: {digests}"
    );
    assert!(text.contains(&format!("{} digests", digests + 1)), "{text}");
    assert_eq!(std::fs::read(&replay_console).unwrap(), console);

    // One flipped byte inside a frame: a clear error naming the frame.
    // (The middle of the body of the frame 200 bytes before the end: a flip in a length field
    // could instead make the log look cut short.)
    let mut bytes = std::fs::read(&log).unwrap();
    let near = bytes.len() - 200;
    let mut at = 12;
    let mid = loop {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if near < at + 8 + len {
            break at + 4 + len / 2;
        }
        at += 8 + len;
    };
    bytes[mid] ^= 0x01;
    let damaged = d.join("damaged.log");
    std::fs::write(&damaged, &bytes).unwrap();
    let out = replay(&damaged, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("log frame") && err.contains("damaged"),
        "{err}"
    );

    // One recorded input value changed (a byte of entropy: the guest's state changes, its
    // course does not at once): divergence at the first digest after it.
    let mut changed_recs = recs.clone();
    let (pos, count) = changed_recs
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, r)| match r {
            Record::Input { count, inputs }
                if inputs.iter().any(|x| matches!(x, Input::Entropy { .. })) =>
            {
                Some((i, *count))
            }
            _ => None,
        })
        .expect("an entropy input");
    if let Record::Input { inputs, .. } = &mut changed_recs[pos] {
        for x in inputs.iter_mut() {
            if let Input::Entropy { bytes, .. } = x {
                bytes[0] ^= 1;
            }
        }
    }
    let first_digest_after = changed_recs
        .iter()
        .filter_map(|r| match r {
            Record::Digest { count: c, .. } | Record::End { count: c, .. } if *c > count => {
                Some(*c)
            }
            _ => None,
        })
        .min()
        .unwrap();
    let changed = d.join("changed.log");
    write_log(&changed, &changed_recs);
    let out = replay(&changed, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "diverged at instruction {first_digest_after}: state digest"
        )),
        "{err}"
    );

    // A changed console byte changes what the guest does: replay notices and stops.
    let mut changed_recs = recs.clone();
    let pos = changed_recs
        .iter()
        .position(|r| matches!(r, Record::Input { inputs, .. } if inputs.iter().any(|x| matches!(x, Input::Console(_)))))
        .expect("a console input");
    if let Record::Input { inputs, .. } = &mut changed_recs[pos] {
        if let Some(Input::Console(b)) = inputs.iter_mut().find(|x| matches!(x, Input::Console(_)))
        {
            *b ^= 0x20;
        }
    }
    write_log(&changed, &changed_recs);
    let out = replay(&changed, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("diverged at instruction"), "{err}");

    // A log cut short (a crash while recording) replays up to its last whole frame.
    let cut = d.join("cut.log");
    let bytes = std::fs::read(&log).unwrap();
    let header_end = 12 + 8 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    std::fs::write(&cut, &bytes[..header_end + (bytes.len() - header_end) / 2]).unwrap();
    let out = replay(&cut, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cut short"));
    let _ = std::fs::remove_dir_all(&d);
}
