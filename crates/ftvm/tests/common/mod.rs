//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod lab;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::Once;
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn ftvm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ftvm"))
}

/// Make sure guest/out holds the guest images (building them if needed), return its path.
pub fn guest_out() -> PathBuf {
    static BUILD: Once = Once::new();
    let out = repo().join("guest/out");
    BUILD.call_once(|| {
        if !out.join("Image").is_file() || !out.join("initramfs.cpio.gz").is_file() {
            let st = Command::new("bash")
                .arg(repo().join("guest/build.sh"))
                .status()
                .expect("run guest/build.sh");
            assert!(st.success(), "guest/build.sh failed");
        }
    });
    out
}

/// A loopback address with a port that was free a moment ago, and that no other test of
/// this process was given. The ports lie below Linux's ephemeral range (32768 on), where
/// asking the kernel for any free port (`:0`) used to take them: between this call and the
/// test's process binding the port, another test's connection or listener could be given the
/// same one by the kernel, and a primary that cannot listen exits before any output (one CI
/// run failed so).
pub fn free_local_addr() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Each test binary starts somewhere else in the span.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() * 613 % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return format!("127.0.0.1:{port}");
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

/// The address a primary started with `--listen 127.0.0.1:0` was given by the kernel, read
/// from its messages in `log` ("primary waiting for a backup on ADDR"). No other process can
/// take that port between its choice and the bind, as one can with [`free_local_addr`] (the
/// flight recorder's primary once found its port taken in CI). An error, with the messages,
/// if the primary exits or says nothing within `limit`.
pub fn primary_address(
    primary: &mut Child,
    log: &std::path::Path,
    limit: Duration,
) -> Result<String, String> {
    const SAID: &str = "primary waiting for a backup on ";
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        // Only a whole line (its writes may be read half done) that names an address.
        if let Some(addr) = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .filter_map(|l| l.split(SAID).nth(1))
            .find_map(|a| a.trim().parse::<std::net::SocketAddr>().ok())
        {
            return Ok(addr.to_string());
        }
        if let Ok(Some(st)) = primary.try_wait() {
            return Err(format!("the primary exited ({st}):\n{text}"));
        }
        if t0.elapsed() > limit {
            return Err(format!(
                "the primary named no address within {limit:?}:\n{text}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait for a child with a time limit; kill it and panic if it runs over.
pub fn wait_limited(mut child: Child, limit: Duration, what: &str) -> Output {
    let t0 = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "{what} did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run ftvm with these arguments and no input, within a time limit.
pub fn run_ftvm(args: &[&str], limit: Duration) -> Output {
    let child = ftvm()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ftvm");
    wait_limited(child, limit, &format!("ftvm {}", args.join(" ")))
}

/// `ftvm --engine <engine> run` of the guest images under the virtual clock, with `extra`
/// options and no input; it must succeed within five minutes.
pub fn run_guest(engine: &str, extra: &[&str]) -> Output {
    let out = guest_out();
    let (image, initrd) = (out.join("Image"), out.join("initramfs.cpio.gz"));
    let mut args = vec![
        "--engine",
        engine,
        "run",
        "--kernel",
        image.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--clock",
        "virtual",
    ];
    args.extend_from_slice(extra);
    let done = run_ftvm(&args, Duration::from_secs(300));
    assert!(
        done.status.success(),
        "ftvm {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    done
}

/// `ftvm <args> --kernel <Image> --initrd <initramfs>`, its three streams piped: a live guest
/// to talk to through its console.
pub fn guest_command(args: &[&str]) -> Command {
    let out = guest_out();
    let mut c = ftvm();
    c.args(args)
        .arg("--kernel")
        .arg(out.join("Image"))
        .arg("--initrd")
        .arg(out.join("initramfs.cpio.gz"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The digest a run printed last (`digest <hex>`; the line may follow the guest's prompt).
pub fn digest_of(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    let d = text.rsplit("digest ").next().unwrap_or("");
    let d: String = d.chars().take_while(char::is_ascii_hexdigit).collect();
    assert_eq!(
        d.len(),
        64,
        "no digest in the output:\n{text}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

/// Read from `r` until `needle` appears (returns everything read) or the limit passes.
pub fn read_until(r: &mut impl Read, needle: &str, limit: Duration) -> Result<String, String> {
    let t0 = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < limit {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&seen).contains(needle) {
                    return Ok(String::from_utf8_lossy(&seen).into_owned());
                }
            }
            Err(_) => break,
        }
    }
    Err(String::from_utf8_lossy(&seen).into_owned())
}

/// Wait (at most two minutes) for the guest on `child`'s console to print its ready line.
/// Returns the console so far and a channel that delivers the whole console output once the
/// child closes it; the console is drained meanwhile, so the guest never blocks on a full pipe.
pub fn await_ready(child: &mut Child) -> Result<(String, mpsc::Receiver<Vec<u8>>), String> {
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    let (all_tx, all_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = read_until(&mut stdout, "ftvm-guest: ready", Duration::from_secs(120));
        let ok = r.is_ok();
        let mut seen = r.clone().unwrap_or_else(|e| e).into_bytes();
        let _ = tx.send(r);
        if ok {
            let _ = stdout.read_to_end(&mut seen);
        }
        let _ = all_tx.send(seen);
    });
    match rx.recv_timeout(Duration::from_secs(130)) {
        Ok(Ok(seen)) => Ok((seen, all_rx)),
        Ok(Err(seen)) => Err(seen),
        Err(_) => Err("no console output in time".into()),
    }
}
