//! The ftvm command line.

mod console;
mod pair;
mod replay;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ftvm_host::disk::Disk;
use ftvm_host::tap::Tap;
use ftvm_host::{DetEntropy, HostEvent};
use ftvm_log::{LogWriter, Record};
use ftvm_machine::board::TIMEBASE_HZ;
use ftvm_machine::{DeviceOutput, DeviceSpec, Input, Machine, Output, PowerEvent, RunExit};

use console::Console;

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
    /// Run live, writing every input and periodic state digests to a log.
    Record(RecordArgs),
    /// Re-execute a recorded log offline and check every digest.
    Replay(ReplayArgs),
    /// Run the guest as the primary of a fault-tolerant pair (waits for a backup first).
    Primary {
        /// Address to accept the backup on, e.g. 10.0.0.1:7700.
        #[arg(long, value_name = "ADDR")]
        listen: String,
        #[command(flatten)]
        pair: PairArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Show the role, lag and protection of pair members from their --status-file.
    Status {
        /// Status files written by `ftvm primary/backup --status-file`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Follow a primary in lockstep; go live when it dies.
    Backup {
        /// The primary's address.
        #[arg(long, value_name = "ADDR")]
        primary: String,
        /// Once live, accept a new backup on this address (re-protection).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        #[command(flatten)]
        pair: PairArgs,
        #[command(flatten)]
        run: RunArgs,
    },
}

#[derive(clap::Args)]
struct PairArgs {
    /// File holding the pre-shared key (at least 16 bytes) that both sides use.
    #[arg(long, value_name = "FILE")]
    psk: PathBuf,
    /// The arbiter both sides race for before going live: file:PATH on storage both see (with
    /// exclusive create), or etcd:http://HOST:PORT[/PREFIX] for a key in an etcd cluster. A won
    /// key never expires.
    #[arg(long, value_name = "SPEC")]
    arbiter: String,
    /// Heartbeat interval in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10)]
    heartbeat_ms: u64,
    /// The peer is dead after this many heartbeat intervals without a word from it (the dead
    /// timeout D). The primary releases outputs only under a lease of D/5 from the backup's
    /// latest echo; a side that goes live waits 1.5 leases after the last word it heard.
    #[arg(long, value_name = "N", default_value_t = 10)]
    heartbeat_misses: u64,
    /// A state digest in the log every N instructions (the backup checks it).
    #[arg(long, value_name = "N", default_value_t = 1_000_000_000)]
    digest_every: u64,
    /// When inputs take effect: `precise` (at the instruction the primary chooses) or `epoch`
    /// (only at multiples of --epoch instructions, as in Bressoud and Schneider).
    #[arg(long, value_enum, default_value_t = Delivery::Precise)]
    delivery: Delivery,
    /// The epoch length in instructions, for --delivery epoch.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    epoch: u64,
    /// The backup's replay may trail the guest by at most this much guest time; beyond it the
    /// guest waits. It bounds the replay a failover needs first.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    max_lag_ms: u64,
    /// Report this side's role, lag and protection in FILE (read it with `ftvm status`).
    #[arg(long, value_name = "FILE")]
    status_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Delivery {
    Precise,
    Epoch,
}

impl PairArgs {
    fn timing(&self) -> ftvm_replication::Timing {
        let beat = self.heartbeat_ms.max(1);
        ftvm_replication::Timing::new(
            Duration::from_millis(beat),
            Duration::from_millis(beat.saturating_mul(self.heartbeat_misses.max(2))),
        )
    }
    fn epoch(&self) -> Option<u64> {
        (self.delivery == Delivery::Epoch).then_some(self.epoch.max(1))
    }
}

/// A gratuitous ARP for the guest's address (`ftvm.ip=` on its command line) from the MAC of
/// the network device in `slot`.
fn emit_frame_arp(a: &RunArgs, slot: usize) -> Option<Vec<u8>> {
    let net = a.net.get(slot.checked_sub(a.disk.len())?)?;
    let ip = a
        .append
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ftvm.ip="))?
        .split(['/', ','])
        .next()?
        .parse::<std::net::Ipv4Addr>()
        .ok()?
        .octets();
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&net.mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&net.mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip);
    f.resize(60, 0);
    Some(f)
}

#[derive(clap::Args)]
struct RecordArgs {
    /// The log file to write.
    #[arg(long, value_name = "FILE")]
    log: PathBuf,
    /// Write a state digest every N instructions.
    #[arg(long, value_name = "N", default_value_t = 1_000_000_000)]
    digest_every: u64,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The log to replay.
    #[arg(long, value_name = "FILE")]
    log: PathBuf,
    /// Stop at this instruction count.
    #[arg(long, value_name = "N")]
    until: Option<u64>,
    /// Print `digest <hex>` of the machine state where the replay ends.
    #[arg(long)]
    digest: bool,
    /// Write the machine state where the replay ends.
    #[arg(long, value_name = "FILE")]
    snapshot_out: Option<PathBuf>,
    /// Write what the guest printed on its console during the replay (`-`: standard output).
    #[arg(long, value_name = "FILE")]
    console_out: Option<PathBuf>,
    /// Write the frames the guest sent, as a pcap file.
    #[arg(long, value_name = "FILE")]
    frames_out: Option<PathBuf>,
}

#[derive(clap::Args, Default)]
pub(crate) struct RunArgs {
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
    /// A raw disk image for a virtio-blk device (repeatable; the first is /dev/vda).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["elf", "restore"])]
    disk: Vec<PathBuf>,
    /// A virtio-net device on a TAP interface: tap=IFNAME[,mac=MAC] (repeatable).
    #[arg(long, value_name = "SPEC", value_parser = parse_net, conflicts_with_all = ["elf", "restore"])]
    net: Vec<NetArg>,
    /// Guest time: `host` follows the host clock (idle waits in real time, the RTC starts at the
    /// host's date); `virtual` is a pure function of the instruction count (idle is skipped,
    /// the RTC starts at 2026-01-01, entropy is a fixed stream), so runs are reproducible.
    #[arg(long, value_enum, default_value_t = ClockMode::Host)]
    clock: ClockMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
enum ClockMode {
    #[default]
    Host,
    Virtual,
}

#[derive(Clone, Debug)]
struct NetArg {
    tap: String,
    mac: [u8; 6],
}

fn parse_net(s: &str) -> Result<NetArg, String> {
    let mut tap = None;
    let mut mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("tap", v)) if !v.is_empty() => tap = Some(v.to_string()),
            Some(("mac", v)) => {
                let bytes: Vec<u8> = v
                    .split(':')
                    .map(|h| u8::from_str_radix(h, 16))
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("invalid MAC address {v:?}"))?;
                mac = bytes.try_into().map_err(|_| {
                    format!("invalid MAC address {v:?} (six bytes: 52:54:00:12:34:56)")
                })?;
            }
            _ => {
                return Err(format!(
                    "invalid --net part {part:?} (expected tap=IFNAME[,mac=MAC])"
                ))
            }
        }
    }
    Ok(NetArg {
        tap: tap.ok_or("--net needs tap=IFNAME")?,
        mac,
    })
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
        Some(Cmd::Run(args)) => run(args, None),
        Some(Cmd::Record(r)) => run(r.run, Some((r.log, r.digest_every.max(1)))),
        Some(Cmd::Replay(r)) => replay::replay(r),
        Some(Cmd::Primary { listen, pair, run }) => pair::primary(&listen, pair, run),
        Some(Cmd::Backup {
            primary,
            listen,
            pair,
            run,
        }) => pair::backup(&primary, listen.as_deref(), pair, run),
        Some(Cmd::Status { files }) => pair::status(&files),
        None => run(
            RunArgs {
                append: "console=ttyS0 earlycon".into(),
                mem: 256 << 20,
                ..Default::default()
            },
            None,
        ),
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

/// The live backends of a machine's devices, by virtio slot.
#[derive(Default)]
pub(crate) struct Backends {
    pub disks: HashMap<usize, Disk>,
    pub taps: HashMap<usize, Tap>,
}

/// 2026-01-01T00:00:00Z: where the RTC starts under the virtual clock.
const VIRTUAL_EPOCH_NS: u64 = 1_767_225_600 * 1_000_000_000;

/// Open the live backends of the run options' devices: disks then networks, in slot order.
pub(crate) fn open_backends(a: &RunArgs, events: &Sender<HostEvent>) -> Result<Backends> {
    let mut b = Backends {
        taps: open_taps(a, events)?,
        ..Default::default()
    };
    open_disks(a, events, &mut b)?;
    Ok(b)
}

/// Open the disks of the run options into `b`.
pub(crate) fn open_disks(a: &RunArgs, events: &Sender<HostEvent>, b: &mut Backends) -> Result<()> {
    for (slot, path) in a.disk.iter().enumerate() {
        b.disks
            .insert(slot, Disk::open(path, slot, events.clone())?);
    }
    Ok(())
}

/// Open the TAP devices of the run options, by slot.
pub(crate) fn open_taps(a: &RunArgs, events: &Sender<HostEvent>) -> Result<HashMap<usize, Tap>> {
    let mut taps = HashMap::new();
    for (i, net) in a.net.iter().enumerate() {
        let slot = a.disk.len() + i;
        taps.insert(slot, Tap::open(&net.tap, slot, events.clone())?);
    }
    Ok(taps)
}

/// The virtio devices that the run options give, in slot order: the disks (of `disk_sizes`
/// bytes), the networks, then the entropy source.
pub(crate) fn expected_devices(a: &RunArgs, disk_sizes: &[u64]) -> Vec<DeviceSpec> {
    let mut devices: Vec<DeviceSpec> = disk_sizes
        .iter()
        .enumerate()
        .map(|(n, &bytes)| DeviceSpec::Disk {
            bytes,
            serial: format!("ftvm-disk{n}"),
        })
        .collect();
    devices.extend(a.net.iter().map(|n| DeviceSpec::Net { mac: n.mac }));
    devices.push(DeviceSpec::Rng);
    devices
}

fn build_machine(a: &RunArgs, events: &Sender<HostEvent>) -> Result<(Machine, Backends)> {
    let mut backends = Backends::default();
    if let Some(snap) = &a.restore {
        let bytes = read(snap, "snapshot")?;
        let m = Machine::restore(&bytes)
            .with_context(|| format!("cannot restore {}", snap.display()))?;
        if m.has_host_devices() {
            bail!("snapshots of machines with disks or network devices cannot be resumed yet");
        }
        return Ok((m, backends));
    }
    if let Some(elf) = &a.elf {
        let bytes = read(elf, "ELF program")?;
        let m = Machine::boot_elf(a.mem, &bytes).with_context(|| format!("{}", elf.display()))?;
        return Ok((m, backends));
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
    backends = open_backends(a, events)?;
    let sizes: Vec<u64> = (0..a.disk.len())
        .map(|s| backends.disks[&s].bytes)
        .collect();
    let devices = expected_devices(a, &sizes);
    let rtc = match a.clock {
        ClockMode::Host => ftvm_host::wall_clock_ns(),
        ClockMode::Virtual => VIRTUAL_EPOCH_NS,
    };
    let m = Machine::boot_linux(a.mem, &k, i.as_deref(), &a.append, &devices, rtc)
        .with_context(|| format!("cannot boot {}", kernel.display()))?;
    Ok((m, backends))
}

/// Steps between looks at the host (I/O, the clock): 5 ms of guest time.
const CHUNK: u64 = 500_000;
/// Steps between looks while protected by a backup: 0.1 ms of guest time.
const HELD_CHUNK: u64 = 10_000;
/// Longest real-time wait while the guest is idle, before looking again.
const MAX_IDLE_WAIT: Duration = Duration::from_millis(50);
const NANOS_PER_TICK: u64 = 1_000_000_000 / TIMEBASE_HZ;
/// Fixed seed of the entropy stream under the virtual clock.
const VIRTUAL_ENTROPY_SEED: u64 = 0x6674_766d_2026;

/// Host events not yet handed to the machine.
#[derive(Default)]
struct Pending {
    console: VecDeque<u8>,
    frames: HashMap<usize, VecDeque<Vec<u8>>>,
    disk_done: VecDeque<HostEvent>,
    console_open: bool,
    quit: bool,
    disk_in_flight: usize,
}

impl Pending {
    fn take(&mut self, ev: HostEvent) {
        match ev {
            HostEvent::Console(d) => self.console.extend(d),
            HostEvent::ConsoleEof => self.console_open = false,
            HostEvent::Quit => self.quit = true,
            HostEvent::Wake => {}
            HostEvent::Frame { slot, frame } => {
                let q = self.frames.entry(slot).or_default();
                // A NIC's receive queue is finite: beyond it, frames are dropped.
                if q.len() < 1024 {
                    q.push_back(frame);
                }
            }
            e @ HostEvent::DiskDone { .. } => self.disk_done.push_back(e),
        }
    }

    /// Hand the machine the disk completions that arrived.
    fn deliver_disk_done(&mut self, m: &mut Machine, feed: &mut Feeder) -> Result<()> {
        while let Some(HostEvent::DiskDone { slot, id, ok, data }) = self.disk_done.pop_front() {
            self.disk_in_flight -= 1;
            feed.feed(m, Input::DiskDone { slot, id, ok, data })?;
        }
        Ok(())
    }

    /// Complete every disk request in flight, without running the guest.
    fn drain_disks(
        &mut self,
        m: &mut Machine,
        events: &mpsc::Receiver<HostEvent>,
        feed: &mut Feeder,
        backends: &Backends,
        con: &mut Console,
    ) -> Result<()> {
        loop {
            self.deliver_disk_done(m, feed)?;
            // A completion may let the device start the next queued request.
            for out in m.take_outputs() {
                match out {
                    Output::Device(DeviceOutput::Disk(req)) => {
                        if let Some(d) = backends.disks.get(&req.slot) {
                            self.disk_in_flight += 1;
                            d.submit(req);
                        }
                    }
                    out => emit(out, con, backends),
                }
            }
            if self.disk_in_flight == 0 {
                return Ok(());
            }
            match events.recv_timeout(Duration::from_secs(30)) {
                Ok(ev) => self.take(ev),
                Err(_) => bail!("a disk request did not complete within 30 s"),
            }
        }
    }

    /// Whether anything may still arrive from outside.
    fn input_possible(&self, b: &Backends) -> bool {
        self.console_open
            || !self.console.is_empty()
            || !b.taps.is_empty()
            || self.disk_in_flight > 0
    }
}

/// Applies inputs to the machine, writing each to the log first when recording (to a file) or
/// when primary (to the backup).
pub(crate) struct Feeder {
    pub log: Option<LogWriter<Box<dyn std::io::Write>>>,
    pub digest_every: u64,
    pub next_digest: u64,
    /// Epoch delivery: inputs take effect only at multiples of this count (or while the guest
    /// is idle, when the count does not move). None: precise delivery, at once.
    pub epoch: Option<u64>,
    /// Inputs applied so far.
    pub fed: u64,
}

/// Output commit: what the guest sends out waits until the backup holds the log that produced
/// it. With no backup (or unprotected), outputs leave at once.
pub(crate) struct Gate {
    pub link: Option<pair::PrimaryLink>,
    /// Where new backups come from (a primary, or a backup gone live with --listen).
    pub protect: Option<pair::Protector>,
    /// A backup that connected while another protected the guest: it attaches next.
    standby: Option<(ftvm_replication::Channel, ftvm_replication::Channel)>,
    /// Outputs waiting for the backup: the count that produced each, and since when it waits.
    held: VecDeque<(u64, Instant, Output)>,
    /// How long released outputs waited for the backup's acknowledgement.
    pub hold_times: pair::HoldTimes,
    /// Where this side reports its role and lag (`ftvm status`).
    pub status: Option<pair::StatusFile>,
}

impl Gate {
    pub fn open() -> Gate {
        Gate {
            link: None,
            protect: None,
            standby: None,
            held: VecDeque::new(),
            hold_times: pair::HoldTimes::default(),
            status: None,
        }
    }
}

fn emit(out: Output, con: &mut Console, backends: &Backends) {
    match out {
        Output::Console(bytes) => con.write_output(&bytes),
        Output::Device(DeviceOutput::Frame { slot, frame }) => {
            if let Some(t) = backends.taps.get(&slot) {
                t.send(&frame);
            }
        }
        Output::Device(DeviceOutput::Disk(_)) => {}
    }
}

/// Send out the held outputs the backup has acknowledged (up to count `acked`), noting how
/// long each waited, while the link's lease holds (checked before each output is written: the
/// backup cannot have gone live).
fn release_acked(
    held: &mut VecDeque<(u64, Instant, Output)>,
    hold_times: &mut pair::HoldTimes,
    link: &pair::PrimaryLink,
    acked: u64,
    con: &mut Console,
    backends: &Backends,
) {
    while held.front().is_some_and(|(c, _, _)| *c <= acked) && link.may_release() {
        let (c, since, out) = held.pop_front().expect("not empty");
        link.released(c);
        hold_times.record(since.elapsed());
        emit(out, con, backends);
    }
}

impl Feeder {
    fn feed(&mut self, m: &mut Machine, input: Input) -> Result<()> {
        if let Some(log) = &mut self.log {
            log.input(m.count(), &input)?;
        }
        self.fed += 1;
        m.apply(input);
        Ok(())
    }
}

fn run(a: RunArgs, record: Option<(PathBuf, u64)>) -> Result<u8> {
    let (events_tx, events) = mpsc::channel::<HostEvent>();
    let (m, backends) = build_machine(&a, &events_tx)?;
    let mut feed = Feeder {
        log: None,
        digest_every: u64::MAX,
        next_digest: u64::MAX,
        epoch: None,
        fed: 0,
    };
    if let Some((path, every)) = &record {
        let header = Record::Header {
            count: m.count(),
            snapshot: m.save(),
            digest_every: *every,
        };
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot write log {}", path.display()))?;
        let out: Box<dyn std::io::Write> = Box::new(std::io::BufWriter::new(file));
        feed.log = Some(LogWriter::new(out, header)?);
        feed.digest_every = *every;
        feed.next_digest = m.count().saturating_add(*every);
    }
    live(
        &a,
        m,
        backends,
        events_tx,
        events,
        feed,
        Gate::open(),
        Vec::new(),
    )
}

/// The live loop: run the machine, feed it the host's events through the boundary, send its
/// outputs out (through the gate). `resubmit` are disk requests to serve before anything else.
#[allow(clippy::too_many_arguments)]
pub(crate) fn live(
    a: &RunArgs,
    mut m: Machine,
    backends: Backends,
    events_tx: Sender<HostEvent>,
    events: mpsc::Receiver<HostEvent>,
    mut feed: Feeder,
    mut gate: Gate,
    resubmit: Vec<ftvm_machine::DiskRequest>,
) -> Result<u8> {
    let stop_at = a.stop_at.unwrap_or(u64::MAX);
    if stop_at < m.count() {
        bail!(
            "--stop-at {stop_at} is before the snapshot's instruction count {}",
            m.count()
        );
    }
    let virtual_clock = a.clock == ClockMode::Virtual;
    let mut con = Console::start(events_tx.clone())?;
    drop(events_tx);
    let mut pending = Pending {
        console_open: true,
        ..Default::default()
    };
    for req in resubmit {
        if let Some(d) = backends.disks.get(&req.slot) {
            pending.disk_in_flight += 1;
            d.submit(req);
        }
    }
    let started = Instant::now();
    // Under the host clock, machine time may not fall behind the host's.
    let start_ticks = m.board.mtime(m.count());
    // Where the log was last pushed out to the backup.
    let mut last_mark = m.count();
    let code = loop {
        let fed_before = feed.fed;
        let next_epoch = feed
            .epoch
            .map_or(u64::MAX, |e| (m.count() / e + 1).saturating_mul(e));
        let exit = if gate
            .link
            .as_ref()
            .is_some_and(|l| l.too_far_ahead(m.count()))
        {
            // The backup's replay trails too far: wait for it (and look at the host meanwhile),
            // once the log up to here is out so that it can catch up.
            if last_mark < m.count() {
                if let Some(log) = &mut feed.log {
                    log.mark(m.count())?;
                }
                last_mark = m.count();
            }
            if let Ok(ev) = events.recv_timeout(Duration::from_millis(1)) {
                pending.take(ev);
            }
            RunExit::Yield
        } else {
            // While protected, look at the host more often: outputs wait for the backup's
            // acknowledgement, and input must reach the backup's log soon after it arrives (a
            // frame that waited out a whole chunk here would die with the primary).
            let chunk = if gate.held.is_empty() && gate.link.is_none() {
                CHUNK
            } else {
                HELD_CHUNK
            };
            m.run(stop_at.min(feed.next_digest).min(next_epoch), chunk)
        };
        let was_idle = matches!(exit, RunExit::Idle { .. });
        let count = m.count();
        let mut held_new = false;
        for out in m.take_outputs() {
            match out {
                Output::Device(DeviceOutput::Disk(req)) => {
                    if let Some(d) = backends.disks.get(&req.slot) {
                        pending.disk_in_flight += 1;
                        d.submit(req);
                    }
                }
                out if gate.link.is_some() => {
                    gate.held.push_back((count, Instant::now(), out));
                    held_new = true;
                }
                out => emit(out, &mut con, &backends),
            }
        }
        if held_new {
            if let Some(log) = &mut feed.log {
                log.mark(count)?;
            }
            last_mark = count;
        }
        if let Some(st) = &mut gate.status {
            let (role, peer) = match &gate.link {
                Some(l) => ("primary", Some(l.acked())),
                None => ("live", None),
            };
            st.update(role, m.count(), peer);
        }
        if let Some(p) = &gate.protect {
            // One backup may wait while another protects the guest; it attaches when that one
            // is gone. More are refused.
            while let Some(backup) = p.waiting() {
                if gate.standby.is_none() {
                    gate.standby = Some(backup);
                } else {
                    eprintln!("\r\nftvm: refused a backup: another one already waits\r");
                    backup.0.shutdown();
                }
            }
        }
        if let Some(backup) = gate.standby.take_if(|_| gate.link.is_none()) {
            // Bring the new backup up to date: no disk request may be in flight while the
            // guest's state and the disks are copied.
            let t0 = Instant::now();
            pending.drain_disks(&mut m, &events, &mut feed, &backends, &mut con)?;
            let protect = gate
                .protect
                .as_mut()
                .expect("a waiting backup has a protector");
            match protect.attach(&m, backup) {
                Ok((link, log)) => {
                    feed.log = Some(log);
                    feed.digest_every = protect.digest_every;
                    feed.next_digest = m.count().saturating_add(feed.digest_every);
                    gate.link = Some(link);
                    eprintln!(
                        "\r\nftvm: protected again; the guest paused {} ms\r",
                        t0.elapsed().as_millis()
                    );
                }
                Err(e) => eprintln!("\r\nftvm: a backup could not attach: {e:#}\r"),
            }
        }
        if let Some(link) = &mut gate.link {
            match link.check()? {
                pair::LinkState::Protected(acked) => release_acked(
                    &mut gate.held,
                    &mut gate.hold_times,
                    link,
                    acked,
                    &mut con,
                    &backends,
                ),
                pair::LinkState::Unprotected => {
                    eprintln!("\r\nftvm: the backup is gone; running on unprotected\r");
                    for (_, _, out) in gate.held.drain(..) {
                        emit(out, &mut con, &backends);
                    }
                    gate.link = None;
                    feed.log = None;
                }
            }
        }
        match exit {
            RunExit::Yield | RunExit::Output => {}
            RunExit::StopAt
                if m.count() == next_epoch && m.count() < stop_at.min(feed.next_digest) => {}
            RunExit::StopAt if m.count() == feed.next_digest => {
                let digest = *m.digest().as_bytes();
                let count = m.count();
                if let Some(log) = &mut feed.log {
                    log.record(Record::Digest { count, digest })?;
                }
                feed.next_digest = count.saturating_add(feed.digest_every);
                if count >= stop_at {
                    break 0;
                }
            }
            RunExit::StopAt => break 0,
            RunExit::Power(PowerEvent::Off(c) | PowerEvent::Reset(c)) => break c.min(255) as u8,
            RunExit::ToHost(v) => {
                if v & 1 == 0 {
                    bail!("unsupported HTIF request {v:#x} written to tohost");
                }
                break (v >> 1).min(255) as u8;
            }
            RunExit::Idle { ticks } => {
                let something_pending = !pending.disk_done.is_empty()
                    || pending
                        .frames
                        .iter()
                        .any(|(&slot, q)| !q.is_empty() && m.net_ready(slot))
                    || (!pending.console.is_empty() && m.console_ready());
                if something_pending {
                    // Inputs are waiting: deliver them below, no time passes.
                } else if virtual_clock && pending.disk_in_flight == 0 && ticks.is_some() {
                    // Idle time is skipped at once.
                    feed.feed(
                        &mut m,
                        Input::Time {
                            ticks: ticks.unwrap_or(0),
                        },
                    )?;
                } else if pending.input_possible(&backends) || ticks.is_some() {
                    // Wait in real time for input or the next timer; the time waited passes
                    // in the machine (under the virtual clock only while disk I/O is pending).
                    let wait = ticks.map_or(MAX_IDLE_WAIT, |t| {
                        Duration::from_nanos(t.saturating_mul(NANOS_PER_TICK)).min(MAX_IDLE_WAIT)
                    });
                    let t0 = Instant::now();
                    if let Ok(ev) = events.recv_timeout(wait) {
                        pending.take(ev);
                    }
                    if !virtual_clock {
                        let passed = (t0.elapsed().as_nanos() / NANOS_PER_TICK as u128) as u64;
                        let ticks = ticks.map_or(passed, |t| passed.min(t));
                        feed.feed(&mut m, Input::Time { ticks })?;
                    }
                } else {
                    bail!("the guest is idle with no timer armed and no input to come: it would wait forever");
                }
            }
        }
        // Gather what the host has, then hand the machine what it can take now.
        while let Ok(ev) = events.try_recv() {
            pending.take(ev);
        }
        if virtual_clock {
            // Reproducible runs complete each disk request before the guest goes on.
            while pending.disk_in_flight > pending.disk_done.len() {
                match events.recv() {
                    Ok(ev) => pending.take(ev),
                    Err(_) => bail!("a disk worker stopped"),
                }
            }
        }
        if pending.quit {
            eprintln!("\r\nftvm: quit at instruction {}\r", m.count());
            break 0;
        }
        let deliver = feed
            .epoch
            .is_none_or(|e| was_idle || m.count().is_multiple_of(e));
        if !deliver {
            continue;
        }
        pending.deliver_disk_done(&mut m, &mut feed)?;
        let fed_outside = feed.fed;
        for (&slot, q) in pending.frames.iter_mut() {
            while !q.is_empty() && m.net_ready(slot) {
                let frame = q.pop_front().expect("not empty");
                feed.feed(&mut m, Input::Frame { slot, frame })?;
            }
        }
        while !pending.console.is_empty() && m.console_ready() {
            let b = pending.console.pop_front().expect("not empty");
            feed.feed(&mut m, Input::Console(b))?;
        }
        if feed.fed != fed_outside && gate.link.is_some() {
            // What came from the network (or the console) goes to the backup at once: a
            // request the guest took in survives a failover from now on, and its client need
            // not wait for its TCP retransmission timeout.
            if let Some(log) = &mut feed.log {
                log.flush()?;
            }
        }
        if let Some((slot, n)) = m.entropy_wanted() {
            let bytes = if virtual_clock {
                // A function of the count alone, so a run resumed from a snapshot gets the
                // same bytes as an uninterrupted one.
                DetEntropy::new(
                    VIRTUAL_ENTROPY_SEED ^ m.count().wrapping_mul(0x9e37_79b9_7f4a_7c15),
                )
                .bytes(n)
            } else {
                ftvm_host::host_entropy(n).context("cannot read host entropy")?
            };
            feed.feed(&mut m, Input::Entropy { slot, bytes })?;
        }
        if !virtual_clock {
            let host = start_ticks + (started.elapsed().as_nanos() / NANOS_PER_TICK as u128) as u64;
            let guest = m.board.mtime(m.count());
            if host > guest + TIMEBASE_HZ / 100 {
                feed.feed(
                    &mut m,
                    Input::Time {
                        ticks: host - guest,
                    },
                )?;
            }
        }
        if was_idle && feed.fed == fed_before {
            // An idle guest leaves its WFI only through an input, so that a replay, which
            // runs to the next input, finds it exactly where this run did.
            feed.feed(&mut m, Input::Time { ticks: 0 })?;
        }
    };
    // What the guest sent last still waits for the backup (a short while at most).
    let count = m.count();
    for out in m.take_outputs() {
        match out {
            Output::Console(_) if gate.link.is_some() => {
                gate.held.push_back((count, Instant::now(), out))
            }
            Output::Console(bytes) => con.write_output(&bytes),
            _ => {}
        }
    }
    if let (Some(link), Some(log)) = (&mut gate.link, &mut feed.log) {
        log.mark(m.count())?;
        let t0 = Instant::now();
        while !gate.held.is_empty() && t0.elapsed() < Duration::from_secs(5) {
            match link.check()? {
                pair::LinkState::Protected(acked) => release_acked(
                    &mut gate.held,
                    &mut gate.hold_times,
                    link,
                    acked,
                    &mut con,
                    &backends,
                ),
                pair::LinkState::Unprotected => {
                    eprintln!("\r\nftvm: the backup is gone; running on unprotected\r");
                    gate.link = None;
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    if gate.link.is_some() {
        if !gate.held.is_empty() {
            // Never acknowledged under a lease: the backup, if it goes live, sends them.
            eprintln!(
                "\r\nftvm: {} outputs were never acknowledged by the backup; dropped\r",
                gate.held.len()
            );
        }
        gate.held.clear();
    }
    for (_, _, out) in gate.held.drain(..) {
        emit(out, &mut con, &backends);
    }
    drop(con);
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        instructions = m.count(),
        seconds = secs,
        mips = m.count() as f64 / secs / 1e6,
        "run ended"
    );
    let digest = m.digest();
    if let Some(log) = &mut feed.log {
        log.record(Record::End {
            count: m.count(),
            digest: *digest.as_bytes(),
            code: code as u32,
        })?;
        eprintln!(
            "ftvm: logged {} instructions, {} events, {} bytes of log in {:.1} s",
            m.count(),
            log.events,
            log.bytes,
            started.elapsed().as_secs_f64()
        );
    }
    if let Some(summary) = gate.hold_times.summary() {
        eprintln!("ftvm: outputs held for the backup: {summary}");
    }
    if let Some(link) = &gate.link {
        // The backup stops once it has the End record; leaving earlier could lose the record
        // (it may still be on its way) and make the backup take over a guest that stopped.
        if !link.hung_up(Duration::from_secs(5)) {
            eprintln!("ftvm: the backup did not confirm the end of the run");
        }
    }
    if a.digest {
        println!("digest {}", digest.to_hex());
    }
    if let Some(path) = &a.snapshot_out {
        if m.has_host_devices() {
            bail!("snapshots of machines with disks or network devices are not supported yet");
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, m.save())
            .and_then(|_| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write snapshot {}", path.display()))?;
    }
    Ok(code)
}
