//! Bare-metal ISA tests (tests/isa/*.S) run on the ftvm binary.
//!
//! `tests/isa/build.sh` assembles every test into `tests/isa/out/<name>.elf`; each one is run
//! as `ftvm --engine E run --elf <file>` with both engines (jit and interp) and must exit with
//! status 0 (a failing test exits with the number
//! of the failing case). A negative self-test that fails on purpose at case 3 checks that
//! failures are really reported. If the tests cannot be built (no cross toolchain) the tests
//! fail: they never skip.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

fn isa_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/isa")
}

/// Run build.sh once per test process (both tests need it; they may run concurrently).
fn build() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let script = isa_dir().join("build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({}):\n{}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("building the ISA tests failed; install gcc-riscv64-linux-gnu\n{e}");
    }
}

/// How one run ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Exit(i32),
    Signal,
    Timeout,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exit(0) => write!(f, "exit 0 (pass)"),
            Outcome::Exit(n) => write!(f, "exit {n} (failed at case {n})"),
            Outcome::Signal => write!(f, "killed by a signal"),
            Outcome::Timeout => write!(f, "timeout after {}s", TIMEOUT.as_secs()),
        }
    }
}

/// The harts a test runs on: `smpN.S` on N, the others on one.
fn harts_of(elf: &Path) -> String {
    let name = elf.file_stem().unwrap_or_default().to_string_lossy();
    name.strip_prefix("smp").unwrap_or("1").to_string()
}

/// Run `ftvm --engine <engine> run --elf <elf>`; its output goes to `<elf>.<engine>.log`.
fn run_elf(elf: &Path, engine: &str) -> Outcome {
    let log_path = elf.with_extension(format!("{engine}.log"));
    let log = File::create(&log_path).expect("create log file");
    let log2 = log.try_clone().expect("clone log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ftvm"))
        .args(["--engine", engine, "run", "--smp", &harts_of(elf)])
        .arg("--elf")
        .arg(elf)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .spawn()
        .expect("spawn ftvm");
    let start = Instant::now();
    loop {
        match child.try_wait().expect("wait for ftvm") {
            Some(status) => {
                return match status.code() {
                    Some(c) => Outcome::Exit(c),
                    None => Outcome::Signal,
                }
            }
            None if start.elapsed() > TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Outcome::Timeout;
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The last lines of a run's log, for failure messages.
fn log_tail(elf: &Path, engine: &str) -> String {
    let text =
        std::fs::read_to_string(elf.with_extension(format!("{engine}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(10)..];
    tail.iter().map(|l| format!("      | {l}\n")).collect()
}

#[test]
fn isa_suite() {
    build();
    let out = isa_dir().join("out");
    let mut elfs: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap_or_else(|e| panic!("read {}: {e}", out.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "elf"))
        .collect();
    elfs.sort();
    assert!(
        !elfs.is_empty(),
        "no ISA tests were built in {}",
        out.display()
    );

    // Both engines: the translator (the default) and the interpreter.
    let mut failures = Vec::new();
    for engine in ["jit", "interp"] {
        for elf in &elfs {
            let name = elf.file_stem().unwrap().to_string_lossy().into_owned();
            let start = Instant::now();
            let outcome = run_elf(elf, engine);
            eprintln!(
                "isa {name:<12} {engine:<6} {outcome} [{:.2}s]",
                start.elapsed().as_secs_f64()
            );
            if outcome != Outcome::Exit(0) {
                failures.push(format!(
                    "  {name} ({engine}): {outcome}\n{}",
                    log_tail(elf, engine)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} ISA tests failed (case numbers refer to CASE(n) in tests/isa/<name>.S):\n{}",
        failures.len(),
        2 * elfs.len(),
        failures.concat()
    );
}

#[test]
fn isa_negative_selftest_reports_failing_case() {
    build();
    let elf = isa_dir().join("out/negative/selftest_fail.elf");
    assert!(elf.exists(), "{} was not built", elf.display());
    for engine in ["jit", "interp"] {
        let outcome = run_elf(&elf, engine);
        assert_eq!(
            outcome,
            Outcome::Exit(3),
            "selftest_fail fails at case 3 on purpose and must exit with status 3 ({engine})\n{}",
            log_tail(&elf, engine)
        );
    }
}
