//! The ftvm command line.

mod console;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ftvm_machine::board::TIMEBASE_HZ;
use ftvm_machine::{Machine, PowerEvent, RunExit};

use console::{Console, Input};

#[derive(Parser)]
#[command(
    name = "ftvm",
    version,
    about = "A deterministic, fault-tolerant RISC-V virtual machine monitor"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a guest (by default the images in guest/out/) or run a bare-metal ELF.
    Run(RunArgs),
}

#[derive(clap::Args, Default)]
struct RunArgs {
    /// Linux kernel Image (default: guest/out/Image).
    #[arg(long, conflicts_with_all = ["elf", "restore"])]
    kernel: Option<PathBuf>,
    /// Initial RAM disk (default: guest/out/initramfs.cpio.gz when booting the default kernel).
    #[arg(long, conflicts_with_all = ["elf", "restore"])]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 earlycon", conflicts_with_all = ["elf", "restore"])]
    append: String,
    /// RAM size, e.g. 256M or 1G.
    #[arg(long, default_value = "256M", value_parser = parse_size, conflicts_with = "restore")]
    mem: u64,
    /// Run a bare-metal ELF in M-mode; a write to its `tohost` symbol ends the run.
    #[arg(long, conflicts_with = "restore")]
    elf: Option<PathBuf>,
    /// Stop when the retired-instruction count reaches exactly N.
    #[arg(long, value_name = "N")]
    stop_at: Option<u64>,
    /// Print `digest <hex>` of the whole machine state when the run ends.
    #[arg(long)]
    digest: bool,
    /// Write the machine state to this file when the run ends.
    #[arg(long, value_name = "FILE")]
    snapshot_out: Option<PathBuf>,
    /// Resume from a snapshot written by --snapshot-out.
    #[arg(long, value_name = "FILE")]
    restore: Option<PathBuf>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches("iB").trim_end_matches('B');
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size {s:?} (examples: 256M, 1G)"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FTVM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::Run(args)) => run(args),
        None => run(RunArgs {
            append: "console=ttyS0 earlycon".into(),
            mem: 256 << 20,
            ..Default::default()
        }),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            console::restore_terminal();
            eprintln!("ftvm: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The directory holding guest/build.sh and guest/out/.
fn guest_dir() -> PathBuf {
    if let Ok(d) = std::env::var("FTVM_GUEST_DIR") {
        return PathBuf::from(d);
    }
    let mut dir = std::env::current_dir().ok();
    while let Some(d) = dir {
        if d.join("guest/build.sh").is_file() {
            return d.join("guest");
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest")
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

fn build_machine(a: &RunArgs) -> Result<Machine> {
    if let Some(snap) = &a.restore {
        let bytes = read(snap, "snapshot")?;
        return Machine::restore(&bytes)
            .with_context(|| format!("cannot restore {}", snap.display()));
    }
    if let Some(elf) = &a.elf {
        let bytes = read(elf, "ELF program")?;
        return Machine::boot_elf(a.mem, &bytes).with_context(|| format!("{}", elf.display()));
    }
    let (kernel, initrd) = match &a.kernel {
        Some(k) => (k.clone(), a.initrd.clone()),
        None => {
            let g = guest_dir();
            let kernel = g.join("out/Image");
            let initrd = g.join("out/initramfs.cpio.gz");
            if !kernel.is_file() || !initrd.is_file() {
                eprintln!("ftvm: guest images missing; building them with guest/build.sh");
                let st = std::process::Command::new("bash")
                    .arg(g.join("build.sh"))
                    .status()
                    .context("cannot run guest/build.sh")?;
                if !st.success() {
                    bail!("guest/build.sh failed ({st})");
                }
            }
            (kernel, Some(a.initrd.clone().unwrap_or(initrd)))
        }
    };
    let k = read(&kernel, "kernel")?;
    let i = initrd.as_deref().map(|p| read(p, "initrd")).transpose()?;
    Machine::boot_linux(a.mem, &k, i.as_deref(), &a.append)
        .with_context(|| format!("cannot boot {}", kernel.display()))
}

/// Steps between looks at the host (console I/O).
const CHUNK: u64 = 2_000_000;
/// Longest real-time wait while the guest is idle, before looking again.
const MAX_IDLE_WAIT: Duration = Duration::from_millis(50);
const NANOS_PER_TICK: u64 = 1_000_000_000 / TIMEBASE_HZ;

fn run(a: RunArgs) -> Result<u8> {
    let mut m = build_machine(&a)?;
    let stop_at = a.stop_at.unwrap_or(u64::MAX);
    if stop_at < m.count() {
        bail!(
            "--stop-at {stop_at} is before the snapshot's instruction count {}",
            m.count()
        );
    }
    let mut con = Console::start()?;
    let started = Instant::now();
    let code = loop {
        let exit = m.run(stop_at, CHUNK);
        con.write_output(&m.take_console_output())?;
        match exit {
            RunExit::Yield => {}
            RunExit::StopAt => break 0,
            RunExit::Power(PowerEvent::Off(c) | PowerEvent::Reset(c)) => break c.min(255) as u8,
            RunExit::ToHost(v) => {
                if v & 1 == 0 {
                    bail!("unsupported HTIF request {v:#x} written to tohost");
                }
                break (v >> 1).min(255) as u8;
            }
            RunExit::Idle { ticks } => {
                if con.input_open() {
                    // Input may come: wait for it in real time, up to the next timer, and let
                    // the time waited pass in the machine.
                    let wait = ticks.map_or(MAX_IDLE_WAIT, |t| {
                        Duration::from_nanos(t.saturating_mul(NANOS_PER_TICK)).min(MAX_IDLE_WAIT)
                    });
                    let waited = con.wait_input(wait);
                    let passed = (waited.as_nanos() / NANOS_PER_TICK as u128) as u64;
                    m.advance_idle(ticks.map_or(passed, |t| passed.min(t)));
                } else if let Some(t) = ticks {
                    // No input can come: skip the idle time at once.
                    m.advance_idle(t);
                } else {
                    bail!("the guest is idle with no timer armed and no input to come: it would wait forever");
                }
            }
        }
        match con.feed(&mut m) {
            Input::Continue => {}
            Input::Quit => {
                eprintln!("\r\nftvm: quit at instruction {}\r", m.count());
                break 0;
            }
        }
    };
    con.write_output(&m.take_console_output())?;
    drop(con);
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        instructions = m.count(),
        seconds = secs,
        mips = m.count() as f64 / secs / 1e6,
        "run ended"
    );
    if a.digest {
        println!("digest {}", m.digest().to_hex());
    }
    if let Some(path) = &a.snapshot_out {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, m.save())
            .and_then(|_| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write snapshot {}", path.display()))?;
    }
    Ok(code)
}
