//! Guests with several harts (`--smp N`): Linux brings them all up and uses them, four CPU
//! benchmarks run at once with the results of one run alone, and the machine stays
//! deterministic: two runs to the same count, a run split by a snapshot, and the two engines
//! all end in one digest.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(300);

/// The `total checksum=` values cpubench printed, in order.
fn checksums(console: &str) -> Vec<String> {
    console
        .split("total checksum=")
        .skip(1)
        .map(|s| s.chars().take_while(char::is_ascii_hexdigit).collect())
        .collect()
}

#[test]
fn four_harts_come_up_and_four_benchmarks_run_at_once() {
    let mut child = guest_command(&["run", "--smp", "4", "--clock", "virtual"])
        .spawn()
        .expect("spawn ftvm");
    let (seen, console) = await_ready(&mut child).unwrap_or_else(|seen| {
        let _ = child.kill();
        panic!("no ready line; console was:\n{seen}")
    });
    assert!(seen.contains("Brought up 1 node, 4 CPUs"), "{seen}");
    // One benchmark alone, then four at once (one a hart); each prints its checksum, and the
    // harts' busy time shows that all four ran.
    let cmds = "echo cpus=$(grep -c ^processor /proc/cpuinfo) online=$(nproc)\n\
                grep -m1 ^isa /proc/cpuinfo\n\
                cpubench > /tmp/c0\n\
                for i in 1 2 3 4; do cpubench > /tmp/c$i & done; wait\n\
                cat /tmp/c0 /tmp/c1 /tmp/c2 /tmp/c3 /tmp/c4\n\
                grep '^cpu[0-9]' /proc/stat\n\
                echo smp-done\npoweroff\n";
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(cmds.as_bytes())
        .unwrap();
    let done = wait_limited(child, LIMIT, "the 4-hart guest");
    assert!(done.status.success(), "exit {:?}", done.status);
    let text = String::from_utf8_lossy(&console.recv_timeout(LIMIT).unwrap()).into_owned();
    assert!(text.contains("smp-done"), "{text}");
    assert!(text.contains("cpus=4 online=4"), "{text}");
    // The extensions the device tree advertises, as the guest's kernel took them.
    let isa = text
        .lines()
        .find_map(|l| l.split_once("isa\t\t: rv64").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no isa line: {text}"));
    for ext in [
        "zicbom",
        "zicboz",
        "zicond",
        "zihintpause",
        "zba",
        "zbb",
        "zbs",
        "svpbmt",
    ] {
        assert!(isa.contains(&format!("_{ext}")), "{ext} missing: {isa}");
    }
    let sums = checksums(&text);
    assert_eq!(sums.len(), 5, "{text}");
    assert!(
        sums.iter().all(|s| s.len() == 16 && *s == sums[0]),
        "the benchmarks disagree: {sums:?}"
    );
    // Every hart spent time in user mode (the second field of its /proc/stat line).
    let busy: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(busy.len(), 4, "{text}");
    assert!(
        busy.iter().all(|&t| t > 100),
        "user time per hart: {busy:?}"
    );
}

#[test]
fn a_four_hart_machine_is_deterministic_across_runs_snapshots_and_engines() {
    let stop = ["--smp", "4", "--stop-at", "400000000", "--digest"];
    let first = digest_of(&run_guest("jit", &stop));
    assert_eq!(
        digest_of(&run_guest("jit", &stop)),
        first,
        "two runs differ"
    );
    assert_eq!(
        digest_of(&run_guest("interp", &stop)),
        first,
        "the engines differ"
    );
    // Split at an odd count (inside a slice): snapshot, restore, run on.
    let dir = std::env::temp_dir().join(format!("ftvm-smp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snap = dir.join("split.snap");
    run_guest(
        "jit",
        &[
            "--smp",
            "4",
            "--stop-at",
            "234567891",
            "--snapshot-out",
            snap.to_str().unwrap(),
        ],
    );
    let resumed = run_ftvm(
        &[
            "--engine",
            "interp",
            "run",
            "--restore",
            snap.to_str().unwrap(),
            "--clock",
            "virtual",
            "--stop-at",
            "400000000",
            "--digest",
        ],
        LIMIT,
    );
    assert!(resumed.status.success());
    assert_eq!(digest_of(&resumed), first, "the split run differs");
    // A different number of harts is a different machine.
    let two = ["--smp", "2", "--stop-at", "400000000", "--digest"];
    assert_ne!(digest_of(&run_guest("jit", &two)), first);
    let _ = std::fs::remove_dir_all(&dir);
}
