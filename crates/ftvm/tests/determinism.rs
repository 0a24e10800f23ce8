//! The same input gives the same machine: digests agree across runs and across a run split by
//! snapshot and restore.

mod common;

use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(300);

fn boot_args(out: &std::path::Path) -> Vec<String> {
    vec![
        "run".into(),
        "--kernel".into(),
        out.join("Image").display().to_string(),
        "--initrd".into(),
        out.join("initramfs.cpio.gz").display().to_string(),
        "--clock".into(),
        "virtual".into(),
    ]
}

fn run_to(args: &[String], extra: &[&str]) -> std::process::Output {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    let out = run_ftvm(&all, LIMIT);
    assert!(
        out.status.success(),
        "ftvm {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn two_runs_to_the_same_count_agree() {
    let args = boot_args(&guest_out());
    let a = digest_of(&run_to(&args, &["--stop-at", "60000000", "--digest"]));
    let b = digest_of(&run_to(&args, &["--stop-at", "60000000", "--digest"]));
    assert_eq!(a, b);
    let c = digest_of(&run_to(&args, &["--stop-at", "60000001", "--digest"]));
    assert_ne!(a, c, "one more instruction changes the state");
}

#[test]
fn snapshot_and_restore_continue_exactly() {
    let args = boot_args(&guest_out());
    let dir = std::env::temp_dir().join(format!("ftvm-det-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snap = dir.join("half.snap");
    let whole = digest_of(&run_to(&args, &["--stop-at", "80000000", "--digest"]));
    let half = run_to(
        &args,
        &[
            "--stop-at",
            "35000000",
            "--snapshot-out",
            snap.to_str().unwrap(),
        ],
    );
    drop(half);
    let resumed = run_ftvm(
        &[
            "run",
            "--restore",
            snap.to_str().unwrap(),
            "--stop-at",
            "80000000",
            "--digest",
            "--clock",
            "virtual",
        ],
        LIMIT,
    );
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(digest_of(&resumed), whole);
    let _ = std::fs::remove_dir_all(&dir);
}
