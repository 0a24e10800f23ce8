//! A pair on one host, over loopback, without network devices: the backup replays the whole
//! run in lockstep (checking digests often) and ends with the primary's guest. The two sides
//! run different engines (the primary the translator, the backup the interpreter): the engine
//! is not part of the machine.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn a_pair_runs_in_lockstep_to_the_guests_poweroff() {
    let out = guest_out();
    let dir = std::env::temp_dir().join(format!("ftvm-pair-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let psk = dir.join("psk");
    std::fs::write(&psk, b"the pair test's pre-shared key").unwrap();
    let arbiter = format!("file:{}", dir.join("arbiter").display());
    let common: Vec<String> = [
        "--psk",
        psk.to_str().unwrap(),
        "--arbiter",
        &arbiter,
        "--digest-every",
        "20000000",
        "--kernel",
        out.join("Image").to_str().unwrap(),
        "--initrd",
        out.join("initramfs.cpio.gz").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let side = |engine: &str, role: &[&str], stdin: Stdio, err: &str| {
        ftvm()
            .args(["--engine", engine])
            .args(role)
            .args(&common)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join(err)).unwrap())
            .spawn()
            .unwrap()
    };
    // The console's input goes to the backup as it arrives (the default waits for the
    // output it leads to: the failover tests run that one). The kernel picks the port.
    let mut primary = side(
        "jit",
        &[
            "primary",
            "--listen",
            "127.0.0.1:0",
            "--push-input",
            "on-arrival",
        ],
        Stdio::piped(),
        "primary.err",
    );
    let addr = primary_address(
        &mut primary,
        &dir.join("primary.err"),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| {
        let _ = primary.kill();
        panic!("{e}")
    });
    // Its backup's replay sleeps as soon as it has caught up (the failover tests run the
    // default, which keeps the core a while).
    let backup = side(
        "interp",
        &["backup", "--primary", &addr, "--replay-spin-us", "0"],
        Stdio::null(),
        "backup.err",
    );
    let (seen, _console) = await_ready(&mut primary).unwrap_or_else(|seen| {
        let _ = primary.kill();
        panic!("no ready line; console was:\n{seen}")
    });
    assert!(seen.contains("Linux version 6.12"), "{seen}");
    primary
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"poweroff\n")
        .unwrap();
    let p = wait_limited(primary, Duration::from_secs(60), "primary poweroff");
    let b = wait_limited(backup, Duration::from_secs(60), "backup end");
    let (p_err, b_err) = (
        std::fs::read_to_string(dir.join("primary.err")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("backup.err")).unwrap_or_default(),
    );
    assert!(p.status.success(), "primary: {:?}\n{p_err}", p.status);
    // The backup checked every digest on the way and stopped with the primary's guest.
    assert!(b.status.success(), "backup: {:?}\n{b_err}", b.status);
    assert!(b_err.contains("backup done"), "{b_err}");
    assert!(!p_err.contains("did not confirm"), "{p_err}");
    // Every console byte waited for the backup: the primary reports how long.
    let held = p_err
        .lines()
        .find_map(|l| l.split("outputs held for the backup: ").nth(1))
        .unwrap_or_else(|| panic!("no output-commit summary:\n{p_err}"));
    let n: u64 = held.split(' ').next().unwrap().parse().unwrap();
    assert!(n > 0 && held.contains("median"), "{held}");
    let _ = std::fs::remove_dir_all(&dir);
}
