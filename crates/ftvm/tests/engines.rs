//! The translator against the interpreter on the real guest: the same digests at the same
//! counts, a snapshot taken under one engine continued under the other, logs recorded with
//! either replayed by the other, and `--engine check` over a recorded boot and cpubench run,
//! which must agree and must name a deliberately flipped register.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(300);

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ftvm-engines-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ok(out: std::process::Output, what: &str) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn boot_digests_agree_across_engines_and_snapshots() {
    // 300M instructions: past the guest's ready line.
    let jit = run_guest("jit", &["--stop-at", "300000000", "--digest"]);
    assert!(String::from_utf8_lossy(&jit.stdout).contains("ftvm-guest: ready"));
    let interp = digest_of(&run_guest(
        "interp",
        &["--stop-at", "300000000", "--digest"],
    ));
    assert_eq!(digest_of(&jit), interp, "the engines disagree at 300M");
    // Half under the translator, the rest under the interpreter.
    let snap = dir().join("half.snap");
    run_guest(
        "jit",
        &[
            "--stop-at",
            "150000000",
            "--snapshot-out",
            snap.to_str().unwrap(),
        ],
    );
    let resumed = ok(
        run_ftvm(
            &[
                "--engine",
                "interp",
                "run",
                "--restore",
                snap.to_str().unwrap(),
                "--clock",
                "virtual",
                "--stop-at",
                "300000000",
                "--digest",
            ],
            LIMIT,
        ),
        "resume under the interpreter",
    );
    assert_eq!(digest_of(&resumed), interp);
}

/// Record (with `engine`) a boot, the console commands `cmds`, and a power-off.
fn record(engine: &str, log: &Path, cmds: &str) {
    let log = log.to_str().unwrap();
    let mut child = guest_command(&[
        "--engine",
        engine,
        "record",
        "--log",
        log,
        "--digest-every",
        "100000000",
    ])
    .spawn()
    .expect("spawn ftvm record");
    let (_, console) = await_ready(&mut child).expect("the recorded guest boots");
    let stdin = child.stdin.as_mut().unwrap();
    stdin.write_all(cmds.as_bytes()).unwrap();
    stdin.write_all(b"\npoweroff\n").unwrap();
    let done = wait_limited(child, LIMIT, "recorded guest");
    assert!(done.status.success(), "record exit {:?}", done.status);
    let seen = console.recv_timeout(LIMIT).unwrap_or_default();
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        seen.contains("engines-ok"),
        "the commands did not run:\n{seen}"
    );
}

fn replay(engine: &str, log: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--engine", engine, "replay", "--log", log.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_ftvm(&args, LIMIT)
}

#[test]
fn logs_replay_under_the_other_engine_and_check_agrees() {
    let d = dir();
    // Recorded by the translator, with the CPU benchmark (integer and floating point).
    let log = d.join("jit.log");
    record("jit", &log, "cpubench && echo engines-ok");
    let interp = ok(replay("interp", &log, &["--digest"]), "interpreter replay");
    let jit = ok(replay("jit", &log, &["--digest"]), "translator replay");
    assert_eq!(digest_of(&interp), digest_of(&jit));
    let check = ok(
        replay("check", &log, &["--check-every", "50000000"]),
        "--engine check",
    );
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(text.contains("engines agree"), "{text}");

    // The checker finds a difference and names the instruction where it began.
    let at = 123_456_789u64;
    let flipped = ftvm()
        .args([
            "--engine",
            "check",
            "replay",
            "--log",
            log.to_str().unwrap(),
        ])
        .args(["--check-every", "50000000"])
        // The stack pointer: a register that may be dead where the flip lands (the log is
        // recorded under the host clock, so that place differs from run to run) can be
        // overwritten before the next comparison and go unseen; sp is always live.
        .env("FTVM_CHECK_FLIP", format!("{at}:2"))
        .stdin(Stdio::null())
        .output()
        .expect("run ftvm");
    assert!(
        !flipped.status.success(),
        "a flipped register went unnoticed"
    );
    let err = String::from_utf8_lossy(&flipped.stderr);
    assert!(
        err.contains(&format!("first at instruction {at}")) && err.contains("x2: translator"),
        "the checker did not name the flip: {err}"
    );

    // Recorded by the interpreter, replayed by the translator.
    let log2 = d.join("interp.log");
    record("interp", &log2, "echo engines-ok");
    ok(
        replay("jit", &log2, &[]),
        "translator replay of an interpreter log",
    );
}
