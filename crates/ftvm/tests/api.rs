//! The management plane: the API on a Unix socket (every endpoint, happy and malformed
//! requests), `ftvm ctl` and `ftvm status` through it, the metrics checked by Prometheus's
//! promtool, and the status page of a pair loaded in headless Chromium.
//!
//! No namespaces: the pair runs over loopback, with no disk and no network device.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::lab::{exits_within, Proc};
use common::*;
use serde_json::{json, Value};

const STOP_AT: &str = "400000000";

/// One pair at a time (the pair tests run beside each other otherwise).
static PAIRS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn dir(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("api-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One request on the API; its status and JSON answer (non-JSON answers as a string).
fn call(sock: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    ftvm_api::client::request(sock, method, path, body.as_ref(), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A raw HTTP request on the socket (for bodies a well-behaved client would not send): the
/// status and the body.
fn raw(sock: &Path, request: &str) -> (u16, String) {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    let status = got
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {got:?}"));
    let body = got.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn post_raw(sock: &Path, path: &str, content_type: Option<&str>, body: &str) -> (u16, Value) {
    let ct = content_type.map_or(String::new(), |c| format!("Content-Type: {c}\r\n"));
    let (status, body) = raw(
        sock,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|_| panic!("POST {path}: the error is not JSON: {body:?}"));
    (status, v)
}

/// Assert an error answer: this status and a JSON message containing `says`.
fn refused(got: (u16, Value), status: u16, says: &str) {
    assert_eq!(got.0, status, "{got:?}");
    let msg = got.1["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {got:?}"));
    assert!(msg.contains(says), "{msg:?} does not say {says:?}");
}

/// Wait until the API answers (the socket is served before the guest runs).
fn api_up(sock: &Path, child: &mut Child) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if sock.exists()
            && ftvm_api::client::request(sock, "GET", "/state", None, Duration::from_secs(5))
                .is_ok()
        {
            return;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("ftvm exited ({st}) before its API answered");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the API never answered on {}", sock.display());
}

/// `promtool check metrics` on `text`.
fn promtool(text: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/setup.sh installs it)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\non:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ctl(sock: &Path, args: &[&str]) -> Output {
    ftvm()
        .arg("ctl")
        .arg(sock)
        .args(args)
        .output()
        .expect("run ftvm ctl")
}

fn guest_args() -> Vec<String> {
    let out = guest_out();
    [
        "run",
        "--kernel",
        out.join("Image").to_str().unwrap(),
        "--initrd",
        out.join("initramfs.cpio.gz").to_str().unwrap(),
        "--clock",
        "virtual",
        "--stop-at",
        STOP_AT,
        "--digest",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn every_endpoint_answers_and_a_paused_run_ends_as_an_undisturbed_one() {
    let d = dir("endpoints");
    let sock = d.join("api.sock");
    let snap = d.join("paused.snap");
    let mut child = ftvm()
        .args(guest_args())
        .arg("--api-socket")
        .arg(&sock)
        .args(["--metrics", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    api_up(&sock, &mut child);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the API socket is its user's alone");

    // Pause: the count stands still.
    let (st, v) = call(&sock, "POST", "/pause", None);
    assert_eq!(st, 200, "{v}");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .starts_with("paused at instruction"));
    let (_, s1) = call(&sock, "GET", "/state", None);
    assert_eq!(s1["state"], "paused", "{s1}");
    std::thread::sleep(Duration::from_millis(400));
    let (_, s2) = call(&sock, "GET", "/state", None);
    assert_eq!(
        s1["instructions"], s2["instructions"],
        "the count moved while paused"
    );
    refused(call(&sock, "POST", "/pause", None), 409, "paused already");

    // What the machine is.
    let (st, info) = call(&sock, "GET", "/machine", None);
    assert_eq!(st, 200);
    assert_eq!(info["command"], "run");
    assert_eq!(info["harts"], 1);
    assert_eq!(info["mem_bytes"], 256u64 << 20);
    assert_eq!(info["clock"], "virtual");
    assert_eq!(info["pid"], child.id());
    let (st, rep) = call(&sock, "GET", "/replication", None);
    assert_eq!(st, 200);
    assert_eq!(
        (rep["role"].as_str(), rep["protected"].as_bool()),
        (Some("live"), Some(false))
    );
    assert!(rep["lag_instructions"].is_null());
    let (st, index) = call(&sock, "GET", "/", None);
    assert_eq!(st, 200);
    assert!(index["endpoints"].as_array().is_some_and(|e| e.len() >= 10));

    // A snapshot of the paused machine; bad ones refused.
    let (st, v) = call(&sock, "POST", "/snapshot", Some(json!({"path": snap})));
    assert_eq!(st, 200, "{v}");
    assert!(snap.is_file());
    refused(
        call(
            &sock,
            "POST",
            "/snapshot",
            Some(json!({"path": "relative.snap"})),
        ),
        400,
        "absolute",
    );
    refused(
        call(
            &sock,
            "POST",
            "/snapshot",
            Some(json!({"path": "/no/such/dir/x.snap"})),
        ),
        400,
        "does not exist",
    );
    refused(
        call(&sock, "POST", "/snapshot", Some(json!({"path": d}))),
        400,
        "directory",
    );
    refused(
        post_raw(&sock, "/snapshot", Some("application/json"), "{\"path\": "),
        400,
        "bad request body",
    );
    refused(
        post_raw(&sock, "/snapshot", None, "{\"path\": \"/tmp/x\"}"),
        415,
        "bad request body",
    );
    refused(
        post_raw(
            &sock,
            "/snapshot",
            Some("application/json"),
            "{\"path\": \"/tmp/x\", \"extra\": 1}",
        ),
        422,
        "unknown field",
    );
    refused(
        post_raw(
            &sock,
            "/snapshot",
            Some("application/json"),
            "{\"path\": 7}",
        ),
        422,
        "bad request body",
    );
    refused(
        post_raw(&sock, "/snapshot", Some("application/json"), "{}"),
        422,
        "missing field",
    );

    // Faults: one at a count far ahead is taken (and never reached); bad ones refused.
    refused(
        call(&sock, "POST", "/fault", Some(json!({"fault": "x99:3"}))),
        400,
        "x99",
    );
    refused(
        call(&sock, "POST", "/fault", Some(json!({"fault": "x10:3@5"}))),
        400,
        "spec alone",
    );
    refused(
        call(
            &sock,
            "POST",
            "/fault",
            Some(json!({"fault": "x10:3", "at": 1, "after": 2})),
        ),
        400,
        "not both",
    );
    refused(
        call(
            &sock,
            "POST",
            "/fault",
            Some(json!({"fault": "x10:3", "at": -1})),
        ),
        422,
        "bad request body",
    );
    let (st, v) = call(
        &sock,
        "POST",
        "/fault",
        Some(json!({"fault": "x10:3", "at": 1u64 << 50})),
    );
    assert_eq!(st, 200, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("due at instruction"),
        "{v}"
    );
    refused(
        call(&sock, "POST", "/fault", Some(json!({"fault": "x11:1"}))),
        409,
        "one at a time",
    );

    // A run with no backup has none to drop or accept.
    refused(call(&sock, "POST", "/backup/drop", None), 409, "no backup");
    refused(
        call(&sock, "POST", "/backup/accept", None),
        409,
        "takes no backups",
    );

    // Migration needs a run with --control.
    refused(call(&sock, "GET", "/migrate", None), 409, "--control");
    refused(
        call(
            &sock,
            "POST",
            "/migrate",
            Some(json!({"to": "127.0.0.1:1", "psk": "/k", "mode": "sideways"})),
        ),
        400,
        "precopy, handover or postcopy",
    );
    refused(
        call(
            &sock,
            "POST",
            "/migrate",
            Some(json!({"to": "127.0.0.1:1"})),
        ),
        422,
        "missing field",
    );

    // Wrong paths and methods.
    refused(call(&sock, "GET", "/nope", None), 404, "no such endpoint");
    refused(call(&sock, "DELETE", "/pause", None), 405, "method");
    refused(call(&sock, "GET", "/pause", None), 405, "method");
    let (st, _) = raw(&sock, "BLAH\r\n\r\n");
    assert_eq!(st, 400, "a request that is not HTTP");

    // The metrics, as promtool wants them.
    let (st, m) = call(&sock, "GET", "/metrics", None);
    assert_eq!(st, 200);
    let m = m.as_str().unwrap().to_string();
    promtool(&m);
    assert!(m.contains("ftvm_paused 1\n"), "{m}");
    assert!(m.contains("ftvm_role{role=\"live\"} 1\n"), "{m}");

    // The command-line client.
    let out = ctl(&sock, &["state"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "paused");
    let out = ctl(&sock, &["pause"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("paused already (HTTP 409)"));
    let out = ftvm().arg("status").arg(&sock).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.contains(" live ") && l.contains(" no ")),
        "{text}"
    );
    let out = ctl(&d.join("missing.sock"), &["state"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the API socket"));

    // Resume; the run ends where an undisturbed one does, in the same state.
    let out = ctl(&sock, &["resume"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    refused(call(&sock, "POST", "/resume", None), 409, "not paused");
    let paused_run = wait_limited(child, Duration::from_secs(300), "the paused run");
    assert!(paused_run.status.success());
    assert!(
        !sock.exists(),
        "the API socket is removed when the run ends"
    );
    let undisturbed = run_ftvm(
        &guest_args().iter().map(String::as_str).collect::<Vec<_>>(),
        Duration::from_secs(300),
    );
    assert_eq!(digest_of(&paused_run), digest_of(&undisturbed));
    // And the snapshot taken while paused resumes to that state too.
    let mut resumed_args = vec![
        "run",
        "--restore",
        snap.to_str().unwrap(),
        "--clock",
        "virtual",
    ];
    resumed_args.extend_from_slice(&["--stop-at", STOP_AT, "--digest"]);
    let resumed = run_ftvm(&resumed_args, Duration::from_secs(300));
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(digest_of(&resumed), digest_of(&undisturbed));
}

#[test]
fn quit_ends_the_run_and_a_second_server_on_the_socket_is_refused() {
    let d = dir("quit");
    let sock = d.join("api.sock");
    let mut child = ftvm()
        .args(&guest_args()[..7])
        .arg("--api-socket")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    api_up(&sock, &mut child);
    // Another ftvm on the same socket stops at once with a clear error.
    let g = guest_args();
    let mut args: Vec<&str> = g[..7].iter().map(String::as_str).collect();
    args.extend_from_slice(&["--api-socket", sock.to_str().unwrap()]);
    let other = run_ftvm(&args, Duration::from_secs(30));
    assert_eq!(other.status.code(), Some(1));
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        err.contains("cannot serve the API on") && err.contains("another process serves it"),
        "{err}"
    );
    let (st, v) = call(&sock, "POST", "/quit", None);
    assert_eq!(st, 200, "{v}");
    let out = wait_limited(child, Duration::from_secs(30), "the run told to quit");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("quit at instruction"));
}

/// A pair over loopback, each with metrics; the primary's status page shows both.
#[test]
fn the_status_page_charts_both_members_of_a_pair() {
    let _one_pair = PAIRS.lock().unwrap_or_else(|e| e.into_inner());
    let d = dir("page");
    let psk = d.join("psk");
    std::fs::write(&psk, [7u8; 32]).unwrap();
    let arbiter = format!("file:{}", d.join("arbiter").display());
    let listen = free_local_addr();
    let (mp, mb) = (free_local_addr(), free_local_addr());
    let sock_p = d.join("primary.sock");
    let sock_b = d.join("backup.sock");
    let pair = |role: &[&str], metrics: &str, peer: &str, sock: &Path| {
        let mut c = guest_command(role);
        c.args(["--psk", psk.to_str().unwrap(), "--arbiter", &arbiter])
            // These tests are not about failure detection: a loaded host must not make a
            // member seem dead (the dead timeout is 1 s rather than 100 ms).
            .args(["--heartbeat-misses", "100"])
            .args(["--metrics", metrics, "--status-peer", peer])
            .arg("--api-socket")
            .arg(sock)
            .stderr(Stdio::null());
        c.spawn().unwrap()
    };
    let mut primary = Proc(Some(pair(
        &["primary", "--listen", &listen],
        &mp,
        &mb,
        &sock_p,
    )));
    std::thread::sleep(Duration::from_millis(300));
    let mut backup = Proc(Some(pair(
        &["backup", "--primary", &listen],
        &mb,
        &mp,
        &sock_b,
    )));
    let mut out = backup.c().stdout.take().unwrap();
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    await_ready(primary.c()).unwrap_or_else(|seen| panic!("never ready:\n{seen}"));
    // A few seconds of history, with outputs held for the backup.
    let t0 = Instant::now();
    loop {
        let (_, r) = call(&sock_p, "GET", "/replication", None);
        if r["protected"] == true && t0.elapsed() > Duration::from_secs(4) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "never protected: {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, rb) = call(&sock_b, "GET", "/replication", None);
    assert_eq!(rb["role"], "backup", "{rb}");
    refused(
        call(&sock_b, "POST", "/pause", None),
        409,
        "backup following its primary",
    );
    for addr in [&mp, &mb] {
        let text = http_get(addr, "/metrics");
        promtool(&text);
    }
    let text = http_get(&mp, "/metrics");
    assert!(text.contains("ftvm_role{role=\"primary\"} 1\n"), "{text}");
    let held = text
        .lines()
        .find_map(|l| l.strip_prefix("ftvm_output_hold_seconds_count "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(held > 0, "no output was held for the backup:\n{text}");

    // The page, rendered by Chromium.
    let url = format!("http://{mp}/");
    // The page draws once its first fetch answered: a loaded host may dump the DOM before,
    // so it is loaded again (at most three times) until both members are in it.
    let mut dom = String::new();
    for _ in 0..3 {
        dom = chromium(&["--dump-dom", &url]);
        if dom.contains(&format!("<tr data-member=\"{mb}\"")) {
            break;
        }
    }
    for (member, role) in [(&mp, "primary"), (&mb, "backup")] {
        let row = dom
            .split("<tr")
            .find(|r| r.contains(&format!("data-member=\"{member}\"")))
            .unwrap_or_else(|| panic!("no row for {member}:\n{dom}"));
        assert!(
            row.contains(&format!(">{role}<")),
            "{member} is not shown as {role}: {row}"
        );
        assert!(
            row.contains(">yes<"),
            "{member} is not shown protected: {row}"
        );
        for series in ["lag_ms", "hold_max_ms"] {
            let line = dom
                .split("<polyline")
                .find(|p| {
                    p.contains(&format!("data-member=\"{member}\""))
                        && p.contains(&format!("data-series=\"{series}\""))
                })
                .unwrap_or_else(|| panic!("no {series} line for {member}:\n{dom}"));
            let values = line
                .split("data-values=\"")
                .nth(1)
                .and_then(|v| v.split('"').next())
                .unwrap_or("");
            let n = values
                .split(',')
                .filter(|v| v.parse::<f64>().is_ok())
                .count();
            assert!(n >= 3, "{member}'s {series} line has {n} points: {line}");
        }
    }
    let hold_line = dom
        .split("<polyline")
        .find(|p| p.contains(&format!("data-member=\"{mp}\"")) && p.contains("hold_max_ms"))
        .unwrap();
    assert!(
        hold_line
            .split("data-values=\"")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .is_some_and(|v| v
                .split(',')
                .any(|x| x.parse::<f64>().is_ok_and(|x| x > 0.0))),
        "the primary's hold chart shows no hold: {hold_line}"
    );
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1000,700",
        &url,
    ]);
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5000,
        "not a screenshot"
    );
    eprintln!("status page screenshot: {}", shot.display());

    // The primary dies: the backup takes over, and says so.
    drop(primary);
    let t0 = Instant::now();
    let r = loop {
        let (_, r) = call(&sock_b, "GET", "/replication", None);
        if r["role"] == "live" {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the backup never went live: {r}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(r["failovers"], 1, "{r}");
    assert_eq!(r["protected"], false, "{r}");
    let text = http_get(&mb, "/metrics");
    promtool(&text);
    assert!(text.contains("ftvm_failovers_total 1\n"), "{text}");
    assert!(text.contains("ftvm_role{role=\"live\"} 1\n"), "{text}");
    // The member that went live takes requests now.
    let (st, v) = call(&sock_b, "POST", "/pause", None);
    assert_eq!(st, 200, "{v}");
    let (st, v) = call(&sock_b, "POST", "/quit", None);
    assert_eq!(st, 200, "{v}");
    assert!(
        exits_within(&mut backup, Duration::from_secs(20)).is_some_and(|s| s.success()),
        "the backup gone live did not quit"
    );
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    got.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

/// Headless Chromium (Debian's chromium) with these arguments; its standard output.
fn chromium(args: &[&str]) -> String {
    let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chromium-profile");
    let child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium (Debian's chromium package; scripts/setup.sh installs it)");
    let out = wait_limited(child, Duration::from_secs(120), "chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bad_management_options_are_refused() {
    let g = guest_args();
    let base: Vec<&str> = g[..7].iter().map(String::as_str).collect();
    for (extra, code, says) in [
        (
            &["--metrics", "256.0.0.1:80"][..],
            1,
            "cannot serve metrics on 256.0.0.1:80",
        ),
        (
            &["--metrics", "no-port"][..],
            1,
            "cannot serve metrics on no-port",
        ),
        (
            &["--api-socket", "/nonexistent-dir/x.sock"][..],
            1,
            "cannot serve the API on /nonexistent-dir/x.sock",
        ),
        (&["--status-peer", "127.0.0.1:1"][..], 2, "--metrics"),
    ] {
        let mut args = base.clone();
        args.extend_from_slice(extra);
        let out = run_ftvm(&args, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
    }
}

/// An operator drops a pair's backup (it stops and never goes live; the primary runs on), makes
/// a new backup wait, then lets it attach.
#[test]
fn an_operator_drops_the_backup_then_refuses_and_accepts_a_new_one() {
    let _one_pair = PAIRS.lock().unwrap_or_else(|e| e.into_inner());
    let d = dir("drop");
    let psk = d.join("psk");
    std::fs::write(&psk, [9u8; 32]).unwrap();
    let arbiter = format!("file:{}", d.join("arbiter").display());
    let sock_p = d.join("primary.sock");
    let side = |role: &[&str], sock: Option<&Path>, err: &str| {
        let mut c = guest_command(role);
        c.args(["--psk", psk.to_str().unwrap(), "--arbiter", &arbiter])
            // These tests are not about failure detection: a loaded host must not make a
            // member seem dead (the dead timeout is 1 s rather than 100 ms).
            .args(["--heartbeat-misses", "100"])
            .stderr(std::fs::File::create(d.join(err)).unwrap());
        if let Some(sock) = sock {
            c.arg("--api-socket").arg(sock);
        }
        let mut child = c.spawn().unwrap();
        if role[0] == "backup" {
            let mut out = child.stdout.take().unwrap();
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        }
        Proc(Some(child))
    };
    // The kernel picks the port; the primary names it.
    let mut primary = side(
        &["primary", "--listen", "127.0.0.1:0"],
        Some(&sock_p),
        "primary.err",
    );
    let listen = primary_address(primary.c(), &d.join("primary.err"), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    let sock_b = d.join("backup.sock");
    let mut first = side(
        &["backup", "--primary", &listen],
        Some(&sock_b),
        "first.err",
    );
    await_ready(primary.c()).unwrap_or_else(|seen| panic!("never ready:\n{seen}"));
    let protected = |want: bool| {
        let t0 = Instant::now();
        loop {
            let (_, r) = call(&sock_p, "GET", "/replication", None);
            if r["protected"] == want {
                return r;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "protected never {want}: {r}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    protected(true);
    refused(
        call(&sock_b, "POST", "/backup/drop", None),
        409,
        "backup following",
    );

    let (st, v) = call(&sock_p, "POST", "/backup/refuse", None);
    assert_eq!(st, 200, "{v}");
    let (st, v) = call(&sock_p, "POST", "/backup/drop", None);
    assert_eq!(st, 200, "{v}");
    let r = protected(false);
    assert_eq!(
        (r["role"].as_str(), r["accepting_backups"].as_bool()),
        (Some("live"), Some(false)),
        "{r}"
    );
    let st = exits_within(&mut first, Duration::from_secs(30)).expect("the dropped backup runs on");
    assert!(!st.success());
    let err = std::fs::read_to_string(d.join("first.err")).unwrap();
    assert!(err.contains("never went live"), "{err}");
    refused(
        call(&sock_p, "POST", "/backup/drop", None),
        409,
        "no backup",
    );

    // A new backup waits while backups are refused, and attaches once they are accepted.
    let _second = side(&["backup", "--primary", &listen], None, "second.err");
    std::thread::sleep(Duration::from_secs(3));
    let (_, r) = call(&sock_p, "GET", "/replication", None);
    assert_eq!(
        r["protected"], false,
        "a backup attached while refused: {r}"
    );
    let (st, v) = call(&sock_p, "POST", "/backup/accept", None);
    assert_eq!(st, 200, "{v}");
    let r = protected(true);
    assert_eq!(r["attaches"], 2, "{r}");
    assert_eq!(
        r["generation"], 1,
        "the second backup starts the next generation: {r}"
    );
    let (_, m) = call(&sock_p, "GET", "/metrics", None);
    let m = m.as_str().unwrap().to_string();
    promtool(&m);
    let copied = m
        .lines()
        .find_map(|l| l.strip_prefix("ftvm_copy_bytes_total "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        copied > 1 << 20,
        "the second backup's pre-copy is not counted:\n{m}"
    );
    assert!(m.contains("ftvm_copy_active 0\n"), "{m}");
    // The guest still answers on its console.
    let (st, _) = call(&sock_p, "GET", "/state", None);
    assert_eq!(st, 200);
}
