//! Boot the real guest to `ftvm-guest: ready`, power it off from the shell.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

#[test]
fn boots_to_ready_and_powers_off() {
    let mut child = guest_command(&["run"]).spawn().expect("spawn ftvm");
    let (seen, _console) = await_ready(&mut child).unwrap_or_else(|seen| {
        let _ = child.kill();
        panic!("no ready line; console was:\n{seen}")
    });
    assert!(seen.contains("Linux version 6.12"), "{seen}");
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"poweroff\n")
        .unwrap();
    let done = wait_limited(child, Duration::from_secs(60), "guest poweroff");
    assert!(
        done.status.success(),
        "ftvm exit {:?}, stderr: {}",
        done.status,
        String::from_utf8_lossy(&done.stderr)
    );
}
