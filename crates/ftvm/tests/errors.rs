//! Bad input gives a clear error and a non-zero exit, never a panic or a hang.

mod common;

use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(30);

fn tmp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ftvm-err-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn expect_error(args: &[&str], message: &str) {
    let out = run_ftvm(args, LIMIT);
    let err = String::from_utf8_lossy(&out.stderr);
    // 1 for errors found while running, 2 for command-line usage errors (clap).
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "args {args:?}: exit {:?}, stderr {err}",
        out.status
    );
    assert!(
        err.contains(message),
        "args {args:?}: expected {message:?} in {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn malformed_kernel_is_refused() {
    let k = tmp("kernel", &[0x13u8; 4096]);
    expect_error(
        &["run", "--kernel", k.to_str().unwrap()],
        "not a RISC-V Linux Image",
    );
    let empty = tmp("empty", b"");
    expect_error(
        &["run", "--kernel", empty.to_str().unwrap()],
        "not a RISC-V Linux Image",
    );
    expect_error(
        &["run", "--kernel", "/nonexistent/Image"],
        "cannot read kernel",
    );
}

#[test]
fn malformed_elf_is_refused() {
    let junk = tmp("junk.elf", b"\x7fELF\x02\x01\x01garbage");
    expect_error(
        &["run", "--elf", junk.to_str().unwrap()],
        "invalid ELF program",
    );
    // A valid x86-64 ELF (this very test binary's interpreter-free cousin: the ftvm binary).
    expect_error(
        &["run", "--elf", env!("CARGO_BIN_EXE_ftvm")],
        "not a 64-bit RISC-V ELF",
    );
}

#[test]
fn malformed_snapshot_is_refused() {
    let bad = tmp("bad.snap", b"definitely not a snapshot");
    expect_error(&["run", "--restore", bad.to_str().unwrap()], "bad magic");
    // A real snapshot, then damaged.
    let elf = repo().join("tests/isa/out/rv64ui.elf");
    if !elf.is_file() {
        let st = std::process::Command::new("bash")
            .arg(repo().join("tests/isa/build.sh"))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let snap = std::env::temp_dir().join(format!("ftvm-err-{}/ok.snap", std::process::id()));
    let out = run_ftvm(
        &[
            "run",
            "--elf",
            elf.to_str().unwrap(),
            "--mem",
            "16M",
            "--stop-at",
            "100",
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
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let damaged = tmp("damaged.snap", &bytes);
    expect_error(
        &["run", "--restore", damaged.to_str().unwrap()],
        "checksum mismatch",
    );
    let truncated = tmp("short.snap", &bytes[..mid]);
    expect_error(
        &["run", "--restore", truncated.to_str().unwrap()],
        "truncated",
    );
}

#[test]
fn bad_sizes_are_refused() {
    expect_error(&["run", "--mem", "lots"], "invalid size");
    let k = tmp("k2", b"");
    expect_error(
        &["run", "--kernel", k.to_str().unwrap(), "--mem", "1M"],
        "out of range",
    );
}
