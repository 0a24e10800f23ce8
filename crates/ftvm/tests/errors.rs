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

/// A backup whose options give other devices or memory than the primary's guest is refused
/// when it connects (the versioned hello names what differs), before it could ever go live
/// with the wrong ones; so is a backup with the wrong key.
#[test]
fn a_backup_with_other_devices_or_key_is_refused() {
    let out = guest_out();
    let (kernel, initrd) = (out.join("Image"), out.join("initramfs.cpio.gz"));
    let disk = tmp("primary.img", &[]);
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let psk = tmp("psk", b"the errors test pre-shared key");
    let other_psk = tmp("other.psk", b"another pre-shared key entirely");
    let addr = free_local_addr();
    let arbiter = format!("file:{}", tmp("arb", b"").with_extension("none").display());
    let images = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
    ];
    let mut primary = ftvm()
        .args(["primary", "--listen", &addr, "--psk", psk.to_str().unwrap()])
        .args(["--arbiter", &arbiter])
        .args(images)
        .args(["--disk", disk.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let backup = |psk: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["backup", "--primary", &addr, "--psk", psk.to_str().unwrap()];
        args.extend(["--arbiter", &arbiter]);
        args.extend(images);
        args.extend(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>, message: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        expect_error(&args, message);
    };
    // No disk where the primary has one.
    run(
        backup(&psk, &[]),
        "devices: `disks=0 nets= rng` here, `disks=1 nets= rng` on the primary",
    );
    // Other memory.
    let bdisk = tmp("backup.img", &[]);
    run(
        backup(&psk, &["--disk", bdisk.to_str().unwrap(), "--mem", "512M"]),
        "memory: 536870912 bytes here, 268435456 bytes on the primary",
    );
    // The same disk, but a network device the primary's guest does not have.
    run(
        backup(
            &psk,
            &[
                "--disk",
                bdisk.to_str().unwrap(),
                "--net",
                "tap=nosuchtap0,mac=52:54:00:00:00:01",
            ],
        ),
        "devices: `disks=1 nets=52:54:00:00:00:01 rng` here, `disks=1 nets= rng` on the primary",
    );
    // The wrong key.
    run(
        backup(&other_psk, &["--disk", bdisk.to_str().unwrap()]),
        "failed authentication",
    );
    let _ = primary.kill();
    let _ = primary.wait();
}

/// The debugger's and the flight recorder's options: a clear error for each bad one.
#[test]
fn bad_debugging_options_are_refused() {
    // A valid log of a small machine: the header only.
    let m = ftvm_machine::Machine::new(16 << 20).unwrap();
    let header = ftvm_log::Record::Header {
        count: 0,
        snapshot: m.save(),
        digest_every: 1000,
    };
    let log = tmp("dbg.log", b"");
    let mut w = ftvm_log::LogWriter::create(&log, header).unwrap();
    w.flush().unwrap();
    drop(w);
    let log = log.to_str().unwrap();
    expect_error(
        &["replay", "--log", log, "--gdb", "not-an-address"],
        "cannot listen there",
    );
    expect_error(
        &[
            "--engine",
            "check",
            "replay",
            "--log",
            log,
            "--gdb",
            "127.0.0.1:0",
        ],
        "do not go together",
    );
    expect_error(
        &[
            "replay",
            "--log",
            log,
            "--gdb",
            "127.0.0.1:0",
            "--until",
            "5",
        ],
        "cannot be used with",
    );
    expect_error(
        &[
            "replay",
            "--log",
            log,
            "--gdb",
            "127.0.0.1:0",
            "--checkpoint-every",
            "5",
        ],
        "--checkpoint-every",
    );
    let empty = std::env::temp_dir().join(format!("ftvm-err-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    expect_error(
        &["replay", "--log", empty.to_str().unwrap()],
        "holds no kept log segment",
    );
    expect_error(
        &[
            "record",
            "--keep-log",
            empty.to_str().unwrap(),
            "--keep-for",
            "10x",
        ],
        "invalid time",
    );
    expect_error(
        &[
            "record",
            "--keep-log",
            empty.to_str().unwrap(),
            "--keep-for",
            "0s",
        ],
        "at least 1s",
    );
    expect_error(&["record"], "--log");
    expect_error(
        &["run", "--gdb", "127.0.0.1:0", "--disk", log],
        "cannot be used with",
    );
    let _ = std::fs::remove_dir_all(&empty);
}

/// A group's follower tells the others where it listens before it listens: `--listen` with
/// port 0 (which a pair's backup may use) is refused there, before anything runs.
#[test]
fn a_group_follower_needs_a_port_it_can_publish() {
    let psk = tmp("group.psk", &[5u8; 32]);
    let arbiter = format!("file:{}", tmp("group.arbiter", b"").display());
    let kernel = guest_out().join("Image");
    let initrd = guest_out().join("initramfs.cpio.gz");
    expect_error(
        &[
            "backup",
            "--primary",
            "127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--replicas",
            "3",
            "--psk",
            psk.to_str().unwrap(),
            "--arbiter",
            &arbiter,
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
        ],
        "needs a port the others can be told",
    );
}
