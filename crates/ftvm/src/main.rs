//! The ftvm command line: parses arguments and wires the libraries together.

mod replay;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ftvm_cpu::Engine;
use ftvm_log::{LogWriter, Record};
use ftvm_machine::Machine;
use ftvm_replication::{backup, migrate, primary, Arbiter, Hello, PairConfig, Psk, Role};
use ftvm_runner::status::field;
use ftvm_runner::telemetry::Telemetry;
use ftvm_runner::{
    Backends, Devices, Ended, Feeder, Gate, HostFwd, NetBackend, NetSpec, Options, UserSpec,
};
use serde_json::Value;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "ftvm",
    version,
    about = "A deterministic, fault-tolerant RISC-V virtual machine monitor"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// How the CPU executes: `jit` (blocks translated to host code, on x86-64 hosts),
    /// `interp` (the reference interpreter), or `check` (replay only: both in lockstep,
    /// comparing state every --check-every instructions and naming the first difference).
    /// Every engine takes the same steps: a log recorded with one replays with the other.
    #[arg(long, global = true, value_enum, default_value_t = EngineArg::Jit)]
    engine: EngineArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum EngineArg {
    Jit,
    Interp,
    Check,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a guest (by default the images in guest/out/) or run a bare-metal ELF.
    Run {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        migration: MigrationArgs,
        /// Run under gdb, served on ADDR (host:port): the guest gets no input but time (the
        /// virtual clock), so every instruction it ran can be gone back to
        /// (docs/debugging.md). No disks or network; the run ends when gdb detaches.
        #[arg(long, value_name = "ADDR", conflicts_with_all = ["disk", "net", "incoming", "control"])]
        gdb: Option<String>,
    },
    /// Run live, writing every input and periodic state digests to a log.
    Record(RecordArgs),
    /// Re-execute a recorded log offline and check every digest.
    Replay(ReplayArgs),
    /// Run the guest as the primary of a fault-tolerant pair (waits for a backup first).
    Primary {
        /// Address to accept the backup on, e.g. 10.0.0.1:7700 (port 0: a free port, named
        /// in the line "primary waiting for a backup on ADDR").
        #[arg(long, value_name = "ADDR")]
        listen: String,
        #[command(flatten)]
        pair: PairArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Move a running guest to another host: ask the ftvm that runs it (started with
    /// `ftvm run --control SOCK`) to migrate it to an ftvm waiting with `ftvm run --incoming`.
    Migrate(MigrateArgs),
    /// Show the role, lag and protection of pair members, from their --status-file or
    /// their --api-socket.
    Status {
        /// Status files written by `ftvm primary/backup --status-file`, or API sockets.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Ask a running ftvm, through its --api-socket, what it does, or to do something.
    Ctl {
        /// The API socket (the run's --api-socket).
        socket: PathBuf,
        #[command(subcommand)]
        what: CtlCmd,
    },
    /// Follow a primary in lockstep; go live when it dies.
    Backup {
        /// The primary's address.
        #[arg(long, value_name = "ADDR")]
        primary: String,
        /// Once live, accept a new backup on this address (re-protection; port 0: a free
        /// port, named in the line "waiting for a new backup on ADDR"; not with --replicas,
        /// whose followers publish the address before they listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        #[command(flatten)]
        pair: PairArgs,
        #[command(flatten)]
        keep: KeepArgs,
        #[command(flatten)]
        run: RunArgs,
    },
}

/// A flight recorder: the last stretch of the log, kept to replay and debug after an incident.
#[derive(clap::Args, Default)]
struct KeepArgs {
    /// Keep a rolling window of the log in DIR: segments, each starting with a snapshot, that
    /// `ftvm replay --log DIR` (with --gdb too) replays as one log (docs/debugging.md).
    #[arg(long, value_name = "DIR")]
    keep_log: Option<PathBuf>,
    /// How much of the run --keep-log keeps (at least this, at most a quarter more): e.g.
    /// 90s, 10m, 2h.
    #[arg(long, value_name = "TIME", default_value = "10m", value_parser = parse_duration, requires = "keep_log")]
    keep_for: Duration,
}

impl KeepArgs {
    fn get(&self) -> Option<(PathBuf, Duration)> {
        self.keep_log.clone().map(|d| (d, self.keep_for))
    }
}

/// A duration such as 500ms, 90s, 10m or 2h.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("invalid time {s:?} (examples: 90s, 10m, 2h)");
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: u64 = t[..split].parse().map_err(|_| bad())?;
    let d = match &t[split..] {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?}: keep at least 1s"));
    }
    Ok(d)
}

#[derive(clap::Args, Default)]
struct MigrationArgs {
    /// Serve a control socket at SOCK (a Unix socket): `ftvm migrate --control SOCK` moves
    /// the guest to another host through it.
    #[arg(long, value_name = "SOCK")]
    control: Option<PathBuf>,
    /// Boot no guest: wait on ADDR for one that migrates in (from an `ftvm migrate` to this
    /// address), then run it. Give the same run options as the source's.
    #[arg(
        long,
        value_name = "ADDR",
        requires = "psk",
        conflicts_with = "control"
    )]
    incoming: Option<String>,
    /// With --incoming: the file holding the key the source's `ftvm migrate --psk` gives.
    #[arg(long, value_name = "FILE", requires = "incoming")]
    psk: Option<PathBuf>,
    /// With --incoming: an arbiter (as for a pair) to race for the guest if the source dies
    /// during a hand-over; the source's `ftvm migrate --arbiter` names the same one. Without
    /// it a destination goes live only when handed the guest.
    #[arg(long, value_name = "SPEC", requires = "incoming")]
    arbiter: Option<String>,
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// The control socket of the ftvm that runs the guest (its `run --control`).
    #[arg(long, value_name = "SOCK")]
    control: PathBuf,
    /// The destination: the address an `ftvm run --incoming ADDR` waits on.
    #[arg(long, value_name = "ADDR", required_unless_present_any = ["cancel", "status"])]
    to: Option<String>,
    /// The key file both sides use (at least 16 bytes; the destination's --psk).
    #[arg(long, value_name = "FILE", required_unless_present_any = ["cancel", "status"])]
    psk: Option<PathBuf>,
    /// `precopy`: copy RAM and disks in rounds while the guest runs, then pause it for what
    /// is left and the state. `handover`: the same, then the destination follows the guest in
    /// lockstep and takes over at an instruction boundary, the guest pausing about one
    /// round trip. `postcopy`: the disks first, then the destination runs at once and
    /// fetches each RAM page its guest touches while the source pushes the rest (the guest is
    /// lost if the source dies before the last page arrived).
    #[arg(long, value_enum, default_value_t = MigrationMode::Precopy)]
    mode: MigrationMode,
    /// Stop copying once what is left would pause the guest at most this long.
    #[arg(long, value_name = "MS", default_value_t = 300)]
    max_downtime_ms: u64,
    /// The most the copy may send, in MiB per second (0: as fast as the link goes).
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    max_bandwidth_mib: u64,
    /// Hand-over mode: the destination follows the guest in lockstep at least this long
    /// before it takes over (0: as soon as its replay caught up).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    lockstep_ms: u64,
    /// An arbiter both sides race for if one of them dies during a hand-over (the
    /// destination's --arbiter).
    #[arg(long, value_name = "SPEC")]
    arbiter: Option<String>,
    /// Cancel the migration under way: the guest runs on at the source.
    #[arg(long, conflicts_with_all = ["to", "status"])]
    cancel: bool,
    /// Tell whether a migration is under way.
    #[arg(long, conflicts_with_all = ["to", "cancel"])]
    status: bool,
}

#[derive(Subcommand)]
enum CtlCmd {
    /// What the machine is: version, harts, RAM, engine, clock, devices.
    Info,
    /// running, paused, starting, following or stopped; the count and the rate.
    State,
    /// Role, protection, lag, generation, failovers.
    Replication,
    /// The metrics, in the Prometheus text format.
    Metrics,
    /// Stop running the guest (its count stands still) until `resume`.
    Pause,
    Resume,
    /// Write the machine's state to FILE (a machine without disks or network).
    Snapshot {
        file: PathBuf,
    },
    /// Inject a fault (as --inject's SPEC: x10:3, csr:mepc:5, ram:0x80200000:7, tlb:12:40).
    Fault {
        spec: String,
        /// At this instruction count (default: at once).
        #[arg(long, value_name = "N", conflicts_with = "after")]
        at: Option<u64>,
        /// This many instructions from now.
        #[arg(long, value_name = "N")]
        after: Option<u64>,
    },
    /// Whether a live migration is under way (a run with --control).
    MigrateStatus,
    /// Stop protecting the guest with its backup: the primary takes the arbiter and runs on
    /// unprotected; the backup stops and never goes live.
    DropBackup,
    /// Let backups that connect attach (the default).
    AcceptBackups,
    /// Make backups that connect wait (until accept-backups).
    RefuseBackups,
    /// Stop the guest and end the run.
    Quit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum MigrationMode {
    Precopy,
    Handover,
    Postcopy,
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
    /// When a pair's primary sends the backup the input that entered its guest (network
    /// frames, console bytes): `with-output` (with the first output it leads to, or once the
    /// guest idles: one message a request; a request the primary dies with before answering is
    /// sent again by its client's TCP) or `on-arrival` (at once: the backup answers a request
    /// the primary died with, at the cost of a second message a request).
    #[arg(long, value_enum, default_value_t = PushInput::WithOutput)]
    push_input: PushInput,
    /// Group commit on a pair's primary: while its guest runs, an output waits up to this
    /// many instructions for others to go to the backup with it (one message and one
    /// acknowledgement for several answers under load); once the guest idles, held outputs go
    /// at once. 0: every turn's outputs are sent at once (docs/replication.md, "Output commit")
    #[arg(long, value_name = "N", default_value_t = ftvm_runner::COMMIT_WAIT)]
    commit_wait: u64,
    /// A backup's replay, once it has replayed all it received, keeps its core this many
    /// microseconds before it sleeps, so that a message from the primary finds it awake and
    /// costs the primary no wake-up (docs/replication.md, "Output commit"); 0: it sleeps at
    /// once, its core idle between messages.
    #[arg(long, value_name = "US", default_value_t = ftvm_replication::REPLAY_SPIN.as_micros() as u64)]
    replay_spin_us: u64,
    /// Attaching a backup to a running guest: the guest runs on while its RAM and disks are
    /// copied in rounds (pre-copy), then pauses for what is left once that fits in MS.
    #[arg(long, value_name = "MS", default_value_t = 300)]
    max_downtime_ms: u64,
    /// Report this side's role, lag and protection in FILE (read it with `ftvm status`).
    #[arg(long, value_name = "FILE")]
    status_file: Option<PathBuf>,
    /// N-modular redundancy: the guest has N replicas (2 or more, the primary among them; give
    /// every member the same N). The primary ships its log to N-1 backups that vote on every
    /// output and state digest: an output leaves once a majority produced it; a replica that
    /// disagrees is outvoted and attaches again (N >= 3), or the guest stops (N = 2).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..=16))]
    replicas: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PushInput {
    WithOutput,
    OnArrival,
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

#[derive(clap::Args)]
struct RecordArgs {
    /// The log file to write.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "keep_log",
        conflicts_with = "keep_log"
    )]
    log: Option<PathBuf>,
    #[command(flatten)]
    keep: KeepArgs,
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
    /// Under --engine check: compare the engines' whole-machine state every N instructions.
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    check_every: u64,
    /// Serve gdb's remote protocol on ADDR (host:port) and replay under its control, forwards
    /// and backwards (docs/debugging.md). When gdb detaches, the replay runs to the log's end.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["until", "snapshot_out", "console_out", "frames_out"])]
    gdb: Option<String>,
    /// Under --gdb: take a checkpoint every N instructions (a step back re-executes at most N).
    #[arg(long, value_name = "N", default_value_t = 10_000_000,
          value_parser = clap::value_parser!(u64).range(1000..))]
    checkpoint_every: u64,
    /// Under --gdb: the memory checkpoints may take (they thin out beyond it), e.g. 512M, 2G.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    checkpoint_memory: u64,
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
    /// Harts (CPUs), 1 to 8: they take turns on one host thread, in slices of 10,000
    /// instructions, so the machine stays deterministic.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=8), conflicts_with = "restore")]
    smp: u8,
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
    /// A virtio-net device (repeatable): on a TAP interface, tap=IFNAME[,mac=MAC]; or a
    /// user-mode network needing no root (through Debian's passt), user[,hostfwd=tcp:
    /// [HOSTADDR]:HOSTPORT-:GUESTPORT]...[,mac=MAC], the host address defaulting to 127.0.0.1
    /// and the guest's address to ftvm.ip=10.0.2.15/24,10.0.2.2; or `none`. A plain
    /// `ftvm run` of the default guest under the host clock gets a user-mode network with its
    /// redis forwarded from a free loopback port (docs/networking.md).
    #[arg(long, value_name = "SPEC", value_parser = parse_net, conflicts_with_all = ["elf", "restore"])]
    net: Vec<NetArg>,
    /// The loopback port the default network forwards to the guest's redis, if it has one.
    #[arg(skip)]
    redis_port: Option<u16>,
    /// Guest time: `host` follows the host clock (idle waits in real time, the RTC starts at the
    /// host's date); `virtual` is a pure function of the instruction count (idle is skipped,
    /// the RTC starts at 2026-01-01, entropy is a fixed stream), so runs are reproducible.
    #[arg(long, value_enum, default_value_t = ClockMode::Host)]
    clock: ClockMode,
    /// Inject a fault (a soft error, for tests of N-modular redundancy): flip one bit of a
    /// register, CSR, RAM word or TLB entry when the count reaches COUNT, as SPEC@COUNT
    /// (x10:3@250000000, csr:mepc:5@..., ram:0x80200000:7@..., tlb:12:40@...; hart1/x10:3@...).
    #[arg(long, value_name = "SPEC@COUNT")]
    inject: Option<ftvm_runner::vote::Injection>,
    /// The injected fault persists (a stuck bit rather than a soft error): it happens again
    /// whenever two replicas re-execute past its count to settle a disagreement.
    #[arg(long, requires = "inject")]
    fault_persists: bool,
    /// Serve the management API (HTTP with JSON) on this Unix socket: state, pause, resume,
    /// snapshot, replication, migration, faults, quit (docs/api.md; `ftvm ctl PATH ...`).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Serve Prometheus metrics at /metrics and a live status page at / on ADDR (host:port).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Another member's --metrics address, shown beside this one on the status page
    /// (repeatable).
    #[arg(long, value_name = "ADDR", requires = "metrics")]
    status_peer: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
enum ClockMode {
    #[default]
    Host,
    Virtual,
}

/// A `--net` option.
#[derive(Clone, Debug, PartialEq, Eq)]
enum NetArg {
    /// `tap=IFNAME[,mac=MAC]`
    Tap { name: String, mac: [u8; 6] },
    /// `user[,hostfwd=...]...[,mac=MAC]`
    User {
        forwards: Vec<HostFwd>,
        mac: [u8; 6],
    },
    /// `none`: no network (not even the default one).
    None,
}

const NET_FORMS: &str =
    "tap=IFNAME[,mac=MAC], user[,hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT]...[,mac=MAC] or none";

fn parse_net(s: &str) -> Result<NetArg, String> {
    let mut parts = s.split(',');
    let first = parts.next().unwrap_or_default();
    if first == "none" {
        return match parts.next() {
            None => Ok(NetArg::None),
            Some(p) => Err(format!("--net none takes no options (got {p:?})")),
        };
    }
    let mut mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    let user = first == "user";
    let mut tap = None;
    let mut forwards = Vec::new();
    let rest = if user { parts } else { s.split(',') };
    for part in rest {
        match part.split_once('=') {
            Some(("tap", v)) if !user && !v.is_empty() => tap = Some(v.to_string()),
            Some(("hostfwd", v)) if user => {
                let f = parse_hostfwd(v)?;
                if forwards
                    .iter()
                    .any(|o: &HostFwd| o.host_port == f.host_port)
                {
                    return Err(format!(
                        "hostfwd={v}: host port {} is forwarded twice",
                        f.host_port
                    ));
                }
                forwards.push(f);
            }
            Some(("mac", v)) => mac = parse_mac(v)?,
            Some(("hostfwd", _)) => {
                return Err(
                    "hostfwd= works with user networking only (--net user,hostfwd=...)".into(),
                )
            }
            _ => {
                return Err(format!(
                    "invalid --net part {part:?} (expected {NET_FORMS})"
                ))
            }
        }
    }
    if user {
        return Ok(NetArg::User { forwards, mac });
    }
    Ok(NetArg::Tap {
        name: tap.ok_or_else(|| format!("--net needs one of {NET_FORMS}"))?,
        mac,
    })
}

fn parse_mac(v: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = v
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("invalid MAC address {v:?}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("invalid MAC address {v:?} (six bytes: 52:54:00:12:34:56)"))
}

/// QEMU's `hostfwd=` value: `[tcp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`, TCP only, no
/// guest address (the guest has one); the host address defaults to 127.0.0.1.
fn parse_hostfwd(v: &str) -> Result<HostFwd, String> {
    let form = "tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT, e.g. tcp:127.0.0.1:6380-:6379";
    let bad = |why: &str| format!("invalid hostfwd={v}: {why} (expected {form})");
    let (proto, rest) = v.split_once(':').ok_or_else(|| bad("no protocol"))?;
    match proto {
        "tcp" | "" => {}
        "udp" => return Err(bad("only TCP ports can be forwarded")),
        _ => return Err(bad(&format!("unknown protocol {proto:?}"))),
    }
    let (host, guest) = rest
        .split_once('-')
        .ok_or_else(|| bad("no '-' between the host and the guest side"))?;
    let (host_addr, host_port) = host
        .rsplit_once(':')
        .ok_or_else(|| bad("no ':' before the host port"))?;
    let host_addr = match host_addr {
        "" => Ipv4Addr::LOCALHOST,
        a => a
            .parse::<Ipv4Addr>()
            .map_err(|_| bad(&format!("{a:?} is not an IPv4 address")))?,
    };
    let (guest_addr, guest_port) = guest
        .rsplit_once(':')
        .ok_or_else(|| bad("no ':' before the guest port"))?;
    if !guest_addr.is_empty() {
        return Err(bad(
            "give no guest address (the guest has one, from ftvm.ip=)",
        ));
    }
    let port = |p: &str, which: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| bad(&format!("{which} port {p:?} is not 1 to 65535")))
    };
    Ok(HostFwd {
        host_addr,
        host_port: port(host_port, "host")?,
        guest_port: port(guest_port, "guest")?,
    })
}

/// The guest's address from `ftvm.ip=ADDR/PREFIX[,GATEWAY]` on its command line: None if there
/// is none, an error if it is malformed.
fn guest_ip_of(append: &str) -> Result<Option<(Ipv4Addr, u8, Option<Ipv4Addr>)>, String> {
    let Some(v) = append
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ftvm.ip="))
    else {
        return Ok(None);
    };
    let bad = || {
        format!("invalid ftvm.ip={v} (expected ADDR/PREFIX[,GATEWAY], e.g. 10.0.2.15/24,10.0.2.2)")
    };
    let (cidr, gw) = match v.split_once(',') {
        Some((c, g)) => (c, Some(g.parse::<Ipv4Addr>().map_err(|_| bad())?)),
        None => (v, None),
    };
    let (addr, prefix) = cidr.split_once('/').ok_or_else(bad)?;
    let addr = addr.parse::<Ipv4Addr>().map_err(|_| bad())?;
    let prefix = prefix
        .parse::<u8>()
        .ok()
        .filter(|p| (1..=30).contains(p))
        .ok_or_else(bad)?;
    Ok(Some((addr, prefix, gw)))
}

/// A gateway in the guest's subnet when `ftvm.ip=` names none: the subnet's first host, or its
/// second if that is the guest.
fn default_gateway(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = u32::MAX << (32 - u32::from(prefix));
    let first = (u32::from(addr) & mask) + 1;
    if first == u32::from(addr) {
        Ipv4Addr::from(first + 1)
    } else {
        Ipv4Addr::from(first)
    }
}

/// QEMU's user-mode addresses: the guest's, when a user network has no `ftvm.ip=`.
const USER_NET_IP: &str = "ftvm.ip=10.0.2.15/24,10.0.2.2";
/// The guest port the default network forwards (redis).
const REDIS_PORT: u16 = 6379;

impl RunArgs {
    /// Check the network options and complete them: with a user-mode network the guest needs
    /// an address (QEMU's, if `--append` gives none). With `default_net` (a plain `ftvm run` of
    /// the default guest under the host clock) and no `--net`, the guest gets a user-mode
    /// network with redis forwarded from a free loopback port, if passt is installed.
    fn prepare_net(&mut self, default_net: bool) -> Result<()> {
        if self.net.contains(&NetArg::None) {
            if self.net.len() > 1 {
                bail!("--net none cannot be combined with other --net options");
            }
            self.net.clear();
        } else if default_net
            && self.net.is_empty()
            && self.kernel.is_none()
            && self.elf.is_none()
            && self.restore.is_none()
            && self.clock == ClockMode::Host
        {
            if !ftvm_host::user::passt_available() {
                eprintln!("ftvm: warning: passt is not installed (Debian's passt package), so the guest has no network; --net none hides this warning");
            } else {
                let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .and_then(|l| l.local_addr())
                    .context("cannot find a free loopback port for the guest's redis")?
                    .port();
                self.net.push(NetArg::User {
                    forwards: vec![HostFwd {
                        host_addr: Ipv4Addr::LOCALHOST,
                        host_port: port,
                        guest_port: REDIS_PORT,
                    }],
                    mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
                });
                self.redis_port = Some(port);
            }
        }
        if self.net.iter().any(|n| matches!(n, NetArg::User { .. })) {
            match guest_ip_of(&self.append).map_err(anyhow::Error::msg)? {
                Some(_) => {}
                None => {
                    self.append = format!("{} {USER_NET_IP}", self.append.trim_end());
                }
            }
        }
        Ok(())
    }
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
    let engine = match cli.engine {
        EngineArg::Interp => Engine::Interp,
        EngineArg::Jit | EngineArg::Check => Engine::Jit,
    };
    if !Engine::set_default(engine) {
        tracing::warn!("this host has no translator: the interpreter runs the guest");
        Engine::set_default(Engine::Interp);
    }
    if cli.engine == EngineArg::Check && !matches!(cli.cmd, Some(Cmd::Replay(_))) {
        eprintln!("ftvm: error: --engine check runs with `ftvm replay` only (record with either engine, then replay with --engine check)");
        return ExitCode::from(2);
    }
    let result = match cli.cmd {
        Some(Cmd::Run {
            run: args,
            gdb: Some(addr),
            ..
        }) => run_gdb(&addr, args),
        Some(Cmd::Run {
            run: args,
            migration,
            gdb: None,
        }) => match migration.incoming.clone() {
            Some(addr) => prepared(args, false).and_then(|a| run_incoming(&addr, &migration, a)),
            None => {
                let control = migration.control.as_deref();
                prepared(args, control.is_none()).and_then(|a| run_with(a, None, control))
            }
        },
        Some(Cmd::Migrate(m)) => migrate(m),
        Some(Cmd::Record(r)) => {
            let every = r.digest_every.max(1);
            match (r.log, r.keep.get(), prepared(r.run, false)) {
                (_, _, Err(e)) => Err(e),
                (Some(f), _, Ok(a)) => run(a, Some((Recording::File(f), every))),
                (None, Some((dir, keep)), Ok(a)) => {
                    run(a, Some((Recording::Kept(dir, keep), every)))
                }
                (None, None, _) => Err(anyhow::anyhow!(
                    "ftvm record needs --log FILE or --keep-log DIR"
                )),
            }
        }
        Some(Cmd::Replay(r)) => replay::replay(r, cli.engine == EngineArg::Check),
        Some(Cmd::Primary { listen, pair, run }) => {
            prepared(run, false).and_then(|a| run_primary(&listen, pair, a))
        }
        Some(Cmd::Backup {
            primary,
            listen,
            pair,
            keep,
            run,
        }) => prepared(run, false)
            .and_then(|a| run_backup(&primary, listen.as_deref(), pair, keep, a)),
        Some(Cmd::Status { files }) => status(&files),
        Some(Cmd::Ctl { socket, what }) => ctl(&socket, what),
        None => prepared(
            RunArgs {
                append: "console=ttyS0 earlycon".into(),
                mem: 256 << 20,
                ..Default::default()
            },
            true,
        )
        .and_then(|a| run(a, None)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            ftvm_host::console::restore_terminal();
            eprintln!("ftvm: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The run options with their networks checked and completed (see [`RunArgs::prepare_net`]).
fn prepared(mut a: RunArgs, default_net: bool) -> Result<RunArgs> {
    a.prepare_net(default_net)?;
    Ok(a)
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

/// 2026-01-01T00:00:00Z: where the RTC starts under the virtual clock.
const VIRTUAL_EPOCH_NS: u64 = 1_767_225_600 * 1_000_000_000;
fn build_machine(a: &RunArgs, events: &ftvm_runner::EventTx) -> Result<(Machine, Backends)> {
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
        let m = Machine::boot_elf(a.mem, a.smp.into(), &bytes)
            .with_context(|| format!("{}", elf.display()))?;
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
    backends = devices_of(a).open_backends(events)?;
    let sizes: Vec<u64> = (0..a.disk.len())
        .map(|s| backends.disks[&s].bytes)
        .collect();
    let devices = devices_of(a).expected(&sizes);
    let rtc = match a.clock {
        ClockMode::Host => ftvm_host::wall_clock_ns(),
        ClockMode::Virtual => VIRTUAL_EPOCH_NS,
    };
    let m = Machine::boot_linux(
        a.mem,
        a.smp.into(),
        &k,
        i.as_deref(),
        &a.append,
        &devices,
        rtc,
    )
    .with_context(|| format!("cannot boot {}", kernel.display()))?;
    Ok((m, backends))
}

impl RunArgs {
    fn options(&self) -> Options {
        Options {
            keep_log: None,
            telemetry: None,
            stop_at: self.stop_at.unwrap_or(u64::MAX),
            clock: match self.clock {
                ClockMode::Host => ftvm_runner::ClockMode::Host,
                ClockMode::Virtual => ftvm_runner::ClockMode::Virtual,
            },
            capture: None,
            inject: self.inject.clone().map(|i| ftvm_runner::vote::Injection {
                persists: self.fault_persists,
                ..i
            }),
        }
    }
}

/// The devices the run options give, with the guest's address from `ftvm.ip=` on its command
/// line (for the gratuitous ARP after a takeover).
fn devices_of(a: &RunArgs) -> Devices {
    let ip = guest_ip_of(&a.append).ok().flatten();
    // Any address that parses serves the gratuitous ARP, with a prefix or without.
    let guest_ip = a
        .append
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ftvm.ip="))
        .and_then(|v| v.split(['/', ',']).next())
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    let nets = a
        .net
        .iter()
        .filter_map(|n| match n {
            NetArg::Tap { name, mac } => Some(NetSpec {
                backend: NetBackend::Tap(name.clone()),
                mac: *mac,
            }),
            NetArg::User { forwards, mac } => {
                // prepare_net gave the guest an address; QEMU's, should it be missing.
                let (addr, prefix, gw) = ip.unwrap_or((
                    Ipv4Addr::new(10, 0, 2, 15),
                    24,
                    Some(Ipv4Addr::new(10, 0, 2, 2)),
                ));
                Some(NetSpec {
                    backend: NetBackend::User(UserSpec {
                        addr,
                        prefix,
                        gateway: gw.unwrap_or_else(|| default_gateway(addr, prefix)),
                        forwards: forwards.clone(),
                    }),
                    mac: *mac,
                })
            }
            NetArg::None => None,
        })
        .collect();
    Devices {
        disks: a.disk.clone(),
        nets,
        guest_ip,
        bare_metal: a.elf.is_some(),
    }
}

fn pair_config(p: &PairArgs, a: &RunArgs) -> Result<PairConfig> {
    Ok(PairConfig {
        psk: Psk::from_file(&p.psk)?,
        arbiter: Arbiter::parse(&p.arbiter)?,
        timing: p.timing(),
        digest_every: p.digest_every.max(1),
        epoch: p.epoch(),
        max_lag_ms: p.max_lag_ms,
        max_downtime: Duration::from_millis(p.max_downtime_ms),
        status_file: p.status_file.clone(),
        mem_bytes: a.mem,
        replicas: p.replicas.map(|n| n as usize),
        push_input: match p.push_input {
            PushInput::WithOutput => ftvm_runner::PushInput::WithOutput,
            PushInput::OnArrival => ftvm_runner::PushInput::OnArrival,
        },
        commit_wait: p.commit_wait,
        replay_spin: Duration::from_micros(p.replay_spin_us),
    })
}

/// The management plane a run asked for (--api-socket, --metrics): the servers (kept until
/// the run ends) and the telemetry the run reports to.
struct Management {
    _server: ftvm_api::Server,
    telemetry: Arc<Telemetry>,
}

impl Management {
    fn start(
        a: &RunArgs,
        command: &str,
        migration: Option<(PathBuf, Arc<migrate::Control>)>,
    ) -> Result<Option<Management>> {
        if a.api_socket.is_none() && a.metrics.is_none() {
            return Ok(None);
        }
        let telemetry = Arc::new(Telemetry::new());
        let info = ftvm_api::Info {
            version: env!("CARGO_PKG_VERSION"),
            command: command.into(),
            harts: a.smp.into(),
            mem_bytes: a.mem,
            engine: format!("{:?}", Engine::default_engine()).to_lowercase(),
            clock: format!("{:?}", a.clock).to_lowercase(),
            devices: devices_of(a).layout(),
            forwards: a
                .net
                .iter()
                .flat_map(|n| match n {
                    NetArg::User { forwards, .. } => forwards.clone(),
                    _ => Vec::new(),
                })
                .map(|f| format!("tcp:{}:{}-:{}", f.host_addr, f.host_port, f.guest_port))
                .collect(),
            pid: std::process::id(),
        };
        let member = ftvm_api::Member {
            info,
            telemetry: telemetry.clone(),
            migration,
            peers: a.status_peer.clone(),
        };
        let server =
            ftvm_api::Server::start(a.api_socket.as_deref(), a.metrics.as_deref(), member)?;
        if let Some(addr) = server.metrics_addr() {
            eprintln!("ftvm: metrics at http://{addr}/metrics, status page at http://{addr}/");
        }
        Ok(Some(Management {
            _server: server,
            telemetry,
        }))
    }

    fn telemetry(m: &Option<Management>) -> Option<Arc<Telemetry>> {
        m.as_ref().map(|m| m.telemetry.clone())
    }
}

/// `ftvm run --gdb ADDR`: the guest under gdb from its first instruction, on an open timeline.
fn run_gdb(addr: &str, a: RunArgs) -> Result<u8> {
    let (events_tx, _events) = ftvm_runner::events();
    let (m, _backends) = build_machine(&a, &events_tx)?;
    let console = Box::new(|b: &[u8]| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(b);
        let _ = out.flush();
    });
    let limits = ftvm_debug::Limits {
        every: 10_000_000,
        max_bytes: 1 << 30,
    };
    let tl = ftvm_debug::Timeline::open(&m.save(), limits, console)
        .context("the machine's initial state")?;
    drop(m);
    let (tl, _) = replay::serve_gdb(addr, tl)?;
    eprintln!("ftvm: the run under gdb ends at instruction {}", tl.count());
    if a.digest {
        println!("digest {}", tl.machine().digest().to_hex());
    }
    Ok(0)
}

/// Where `ftvm record` writes its log.
enum Recording {
    File(PathBuf),
    /// A kept window (a flight recorder) in this directory, this long.
    Kept(PathBuf, Duration),
}

fn run(a: RunArgs, record: Option<(Recording, u64)>) -> Result<u8> {
    run_with(a, record, None)
}

/// The pair's configuration for a live migration, either side: the key and the arbiter come
/// with each migration (see `ftvm_replication::migrate`).
fn migration_config(a: &RunArgs, psk: Psk, arbiter: Arbiter) -> PairConfig {
    PairConfig {
        psk,
        arbiter,
        timing: ftvm_replication::Timing::new(
            Duration::from_millis(10),
            Duration::from_millis(100),
        ),
        digest_every: 1_000_000_000,
        epoch: None,
        max_lag_ms: 50,
        max_downtime: Duration::from_millis(300),
        status_file: None,
        mem_bytes: a.mem,
        replicas: None,
        push_input: Default::default(),
        commit_wait: ftvm_runner::COMMIT_WAIT,
        replay_spin: ftvm_replication::REPLAY_SPIN,
    }
}

/// `ftvm run --incoming ADDR`: receive a migrating guest and run it.
fn run_incoming(addr: &str, mig: &MigrationArgs, a: RunArgs) -> Result<u8> {
    let psk = match &mig.psk {
        Some(p) => Psk::from_file(p)?,
        None => bail!("--incoming needs --psk FILE"),
    };
    let arbiter = match &mig.arbiter {
        Some(spec) => Arbiter::parse(spec)?,
        None => Arbiter::None,
    };
    let devices = devices_of(&a);
    let cfg = migration_config(&a, psk, arbiter);
    let hello = Hello::new(Role::Backup, cfg.mem_bytes, devices.layout());
    let mgmt = Management::start(&a, "run --incoming", None)?;
    let halves = migrate::incoming(addr, &cfg.psk, &hello)?;
    let opts = Options {
        telemetry: Management::telemetry(&mgmt),
        ..a.options()
    };
    let ended = backup::follow_primary(halves, None, &devices, &cfg, &opts)?;
    finish(&a, ended)
}

/// `ftvm migrate`: ask a running ftvm to move its guest, and show how it goes.
fn migrate(m: MigrateArgs) -> Result<u8> {
    let request = if m.cancel {
        serde_json::json!({"cmd": "cancel"})
    } else if m.status {
        serde_json::json!({"cmd": "status"})
    } else {
        let (Some(to), Some(psk)) = (&m.to, &m.psk) else {
            bail!("ftvm migrate needs --to ADDR and --psk FILE");
        };
        // The source reads the key file itself: it must exist where the source runs.
        let psk = std::fs::canonicalize(psk)
            .with_context(|| format!("cannot find the key file {}", psk.display()))?;
        let mut r = serde_json::json!({
            "cmd": "migrate",
            "to": to,
            "psk": psk,
            "mode": match m.mode {
                MigrationMode::Precopy => "precopy",
                MigrationMode::Handover => "handover",
                MigrationMode::Postcopy => "postcopy",
            },
            "max_downtime_ms": m.max_downtime_ms,
            "max_bandwidth_mib": m.max_bandwidth_mib,
            "lockstep_ms": m.lockstep_ms,
        });
        if let Some(a) = &m.arbiter {
            Arbiter::parse(a)?;
            r["arbiter"] = a.clone().into();
        }
        r
    };
    let moved = migrate::request(&m.control, request, |v| {
        let msg = v["message"].as_str().unwrap_or_default();
        match v["event"].as_str() {
            Some("status") => println!("{v}"),
            Some("error") => {}
            _ => eprintln!("ftvm: {msg}"),
        }
    })
    .map_err(|e| anyhow::anyhow!(e))?;
    Ok(if moved || m.cancel || m.status { 0 } else { 1 })
}

fn run_with(a: RunArgs, record: Option<(Recording, u64)>, control: Option<&Path>) -> Result<u8> {
    let (events_tx, events) = ftvm_runner::events();
    let (m, backends) = build_machine(&a, &events_tx)?;
    if let Some(port) = a.redis_port {
        eprintln!("ftvm: the guest's redis (port {REDIS_PORT}) is at 127.0.0.1:{port} (redis-cli -p {port}); --net none for no network");
    }
    let mut gate = Gate::open();
    let mut migration = None;
    if let Some(sock) = control {
        if record.is_some() {
            bail!("--control works with `ftvm run` only");
        }
        let devices = devices_of(&a);
        // Only migrations arrive here; each brings its key, and its arbiter if any.
        let cfg = migration_config(&a, Psk::from_bytes(&[0; 32]), Arbiter::None);
        let control = std::sync::Arc::new(migrate::Control::default());
        migration = Some((sock.to_path_buf(), control.clone()));
        let (tx, rx) = mpsc::channel();
        let hello = Hello::new(Role::Primary, cfg.mem_bytes, devices.layout());
        migrate::serve(sock, control.clone(), hello, tx, events_tx.clone())?;
        gate = gate.with_protector(Box::new(primary::Protector::for_migration(
            rx,
            &cfg,
            &devices,
            events_tx.clone(),
            control,
        )));
    }
    let feed = match &record {
        Some((to, every)) => {
            let header = Record::Header {
                count: m.count(),
                snapshot: m.save(),
                digest_every: *every,
            };
            match to {
                Recording::File(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("cannot write log {}", path.display()))?;
                    let out: Box<dyn std::io::Write> = Box::new(std::io::BufWriter::new(file));
                    Feeder::logged(LogWriter::new(out, header)?, *every, m.count(), None)
                }
                Recording::Kept(dir, keep) => {
                    // The records go to the window's segments (through the writer's kept
                    // copy); the writer itself writes nowhere.
                    let mut k = ftvm_log::kept::KeptLog::create(dir, *keep)
                        .with_context(|| format!("cannot keep the log in {}", dir.display()))?;
                    k.start(header.clone(), std::time::Instant::now())?;
                    let out: Box<dyn std::io::Write> = Box::new(std::io::sink());
                    let mut log = LogWriter::new(out, header)?;
                    log.kept = Some(Vec::new());
                    let mut f = Feeder::logged(log, *every, m.count(), None);
                    f.flight = Some(k);
                    f
                }
            }
        }
        None => Feeder::new(None),
    };
    let command = if record.is_some() { "record" } else { "run" };
    let mgmt = Management::start(&a, command, migration)?;
    let ended = ftvm_runner::live(
        &Options {
            telemetry: Management::telemetry(&mgmt),
            ..a.options()
        },
        m,
        backends,
        events_tx,
        events,
        feed,
        gate,
        Vec::new(),
    )?;
    finish(&a, ended)
}

/// What every run does when its guest stops: print the digest, write the snapshot.
fn finish(a: &RunArgs, ended: Ended) -> Result<u8> {
    let m = ended.machine;
    let st = m.jit_stats();
    tracing::info!(
        instructions = m.count(),
        blocks = st.blocks,
        block_insns = st.insns,
        compile_ms = st.compile_ns as f64 / 1e6,
        us_per_block = st.compile_ns as f64 / 1e3 / st.blocks.max(1) as f64,
        code_kib = st.code_bytes / 1024,
        dispatches = st.dispatches,
        links = st.links,
        kept_regs = st.kept_regs,
        full_flushes = st.full_flushes,
        "translator"
    );
    if a.digest {
        println!("digest {}", m.digest().to_hex());
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
    Ok(ended.code)
}

fn run_primary(listen: &str, p: PairArgs, a: RunArgs) -> Result<u8> {
    let cfg = pair_config(&p, &a)?;
    if cfg.arbiter.taken(0)? {
        bail!(
            "the arbiter {} was already won: a new pair needs a fresh arbiter",
            p.arbiter
        );
    }
    let devices = devices_of(&a);
    let (events_tx, events) = ftvm_runner::events();
    let protect = primary::Protector::start(listen, &cfg, 0, &devices, events_tx.clone())?;
    // With port 0 the kernel chose the port: this side is reached there (and says so).
    let listen = &protect
        .listening()
        .map_or_else(|| listen.to_string(), |a| a.to_string());
    let (m, backends) = build_machine(&a, &events_tx)?;
    let mgmt = Management::start(&a, "primary", None)?;
    let opts = Options {
        telemetry: Management::telemetry(&mgmt),
        ..a.options()
    };
    eprintln!("ftvm: primary waiting for a backup on {listen}");
    let ended = match primary::run(
        protect, m, backends, &devices, &cfg, &opts, events_tx, events,
    ) {
        Err(e) if e.replaced().is_some() => {
            // This leader was found faulty and stopped: it is repaired as any replica is, by
            // attaching to the group's new leader once one took the guest over.
            let generation = e.replaced().unwrap_or_default();
            eprintln!("ftvm: {e}");
            let limit = Duration::from_secs(30);
            let Some(to) = ftvm_replication::group_leader(&cfg.arbiter, generation, limit) else {
                bail!("{e}; no follower that took the guest over published where it listens (give the followers --listen with a reachable address), so this replica cannot rejoin");
            };
            eprintln!("ftvm: the replica that took the guest over leads from {to}: this replica attaches to it");
            backup::run(&to, Some(listen), &devices, &cfg, &opts)?
        }
        other => other?,
    };
    finish(&a, ended)
}

fn run_backup(
    primary_addr: &str,
    listen: Option<&str>,
    p: PairArgs,
    keep: KeepArgs,
    a: RunArgs,
) -> Result<u8> {
    let cfg = pair_config(&p, &a)?;
    let port_zero =
        |l: &str| l.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()) == Some(0);
    if cfg.replicas.is_some() && listen.is_some_and(port_zero) {
        // A group's follower publishes where it listens before it listens.
        bail!("--listen {}: a replica of a group needs a port the others can be told (port 0 is for a pair's backup)", listen.unwrap_or_default());
    }
    let mgmt = Management::start(&a, "backup", None)?;
    let opts = Options {
        keep_log: keep.get(),
        telemetry: Management::telemetry(&mgmt),
        ..a.options()
    };
    let ended = backup::run(primary_addr, listen, &devices_of(&a), &cfg, &opts)?;
    finish(&a, ended)
}

/// `ftvm status FILE...`
fn status(files: &[PathBuf]) -> Result<u8> {
    println!(
        "{:<28} {:<10} {:>14} {:>10} {:>16} {:>10}",
        "status file", "role", "instructions", "protected", "lag instructions", "lag ms"
    );
    for f in files {
        use std::os::unix::fs::FileTypeExt;
        // A field as the status file writes it, from the file or from the API.
        let shown: Box<dyn Fn(&str) -> String> =
            if std::fs::metadata(f).is_ok_and(|m| m.file_type().is_socket()) {
                let v = api_get(f, "/replication")?;
                Box::new(move |k| match &v[k] {
                    Value::Null => "-".to_string(),
                    Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
                    Value::Number(n) => match n.as_f64() {
                        Some(x) if k == "lag_ms" => format!("{x:.1}"),
                        _ => n.to_string(),
                    },
                    other => other.as_str().unwrap_or("?").to_string(),
                })
            } else {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read status file {}", f.display()))?;
                Box::new(move |k| field(&text, k))
            };
        println!(
            "{:<28} {:<10} {:>14} {:>10} {:>16} {:>10}",
            f.display().to_string(),
            shown("role"),
            shown("instructions"),
            shown("protected"),
            shown("lag_instructions"),
            shown("lag_ms")
        );
    }
    Ok(0)
}

/// `GET path` on an API socket: its JSON answer, or the API's error.
fn api_get(socket: &Path, path: &str) -> Result<Value> {
    let (status, v) = ftvm_api::client::request(socket, "GET", path, None, Duration::from_secs(5))?;
    if !(200..300).contains(&status) {
        bail!("{}", v["error"].as_str().unwrap_or("the API refused"));
    }
    Ok(v)
}

/// `ftvm ctl SOCKET ...`: one request; its answer on standard output (the metrics as text,
/// anything else as JSON), an error's message on standard error with exit status 1.
fn ctl(socket: &Path, what: CtlCmd) -> Result<u8> {
    let (method, path, body) = match what {
        CtlCmd::Info => ("GET", "/machine", None),
        CtlCmd::State => ("GET", "/state", None),
        CtlCmd::Replication => ("GET", "/replication", None),
        CtlCmd::Metrics => ("GET", "/metrics", None),
        CtlCmd::Pause => ("POST", "/pause", None),
        CtlCmd::Resume => ("POST", "/resume", None),
        CtlCmd::Quit => ("POST", "/quit", None),
        CtlCmd::MigrateStatus => ("GET", "/migrate", None),
        CtlCmd::DropBackup => ("POST", "/backup/drop", None),
        CtlCmd::AcceptBackups => ("POST", "/backup/accept", None),
        CtlCmd::RefuseBackups => ("POST", "/backup/refuse", None),
        CtlCmd::Snapshot { file } => {
            // The server's directory is not this one: the path goes absolute.
            let abs = std::path::absolute(&file)
                .with_context(|| format!("invalid path {}", file.display()))?;
            (
                "POST",
                "/snapshot",
                Some(serde_json::json!({ "path": abs })),
            )
        }
        CtlCmd::Fault { spec, at, after } => {
            let mut b = serde_json::json!({ "fault": spec });
            if let Some(at) = at {
                b["at"] = at.into();
            }
            if let Some(after) = after {
                b["after"] = after.into();
            }
            ("POST", "/fault", Some(b))
        }
    };
    let (status, v) =
        ftvm_api::client::request(socket, method, path, body.as_ref(), Duration::from_secs(30))?;
    if !(200..300).contains(&status) {
        bail!(
            "{} (HTTP {status})",
            v["error"].as_str().unwrap_or("the API refused the request")
        );
    }
    match v {
        Value::String(text) => print!("{text}"),
        v => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(a: [u8; 4], host_port: u16, guest_port: u16) -> HostFwd {
        HostFwd {
            host_addr: Ipv4Addr::from(a),
            host_port,
            guest_port,
        }
    }

    #[test]
    fn hostfwd_as_qemu_writes_it() {
        assert_eq!(
            parse_hostfwd("tcp:127.0.0.1:6380-:6379"),
            Ok(fwd([127, 0, 0, 1], 6380, 6379))
        );
        assert_eq!(
            parse_hostfwd("tcp::8022-:22"),
            Ok(fwd([127, 0, 0, 1], 8022, 22))
        );
        assert_eq!(
            parse_hostfwd("::8022-:22"),
            Ok(fwd([127, 0, 0, 1], 8022, 22))
        );
        assert_eq!(
            parse_hostfwd("tcp:0.0.0.0:80-:8080"),
            Ok(fwd([0, 0, 0, 0], 80, 8080))
        );
    }

    #[test]
    fn bad_hostfwd_is_refused_saying_why() {
        let cases = [
            ("udp::53-:53", "only TCP"),
            ("sctp::1-:1", "unknown protocol"),
            ("tcp", "no protocol"),
            ("tcp::8022:22", "no '-'"),
            ("tcp:8022-:22", "no ':' before the host port"),
            ("tcp::8022-22", "no ':' before the guest port"),
            ("tcp::8022-10.0.2.15:22", "no guest address"),
            ("tcp:localhost:8022-:22", "not an IPv4 address"),
            ("tcp:::1:8022-:22", "not an IPv4 address"),
            ("tcp::0-:22", "host port \"0\""),
            ("tcp::70000-:22", "host port \"70000\""),
            ("tcp::8022-:", "guest port \"\""),
            ("tcp::8022-:x", "guest port \"x\""),
        ];
        for (spec, why) in cases {
            let e = parse_hostfwd(spec).unwrap_err();
            assert!(e.contains(why), "{spec}: {e}");
            assert!(e.contains("expected tcp:[HOSTADDR]"), "{spec}: {e}");
        }
    }

    #[test]
    fn net_options() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        assert_eq!(
            parse_net("tap=t0"),
            Ok(NetArg::Tap {
                name: "t0".into(),
                mac
            })
        );
        assert_eq!(
            parse_net("user"),
            Ok(NetArg::User {
                forwards: vec![],
                mac
            })
        );
        assert_eq!(
            parse_net("user,hostfwd=tcp::1-:2,hostfwd=tcp:10.1.2.3:3-:4,mac=02:00:00:00:00:01"),
            Ok(NetArg::User {
                forwards: vec![fwd([127, 0, 0, 1], 1, 2), fwd([10, 1, 2, 3], 3, 4)],
                mac: [2, 0, 0, 0, 0, 1]
            })
        );
        assert_eq!(parse_net("none"), Ok(NetArg::None));
        for (spec, why) in [
            ("none,mac=02:00:00:00:00:01", "takes no options"),
            (
                "user,hostfwd=tcp::1-:2,hostfwd=tcp::1-:3",
                "forwarded twice",
            ),
            ("tap=t0,hostfwd=tcp::1-:2", "user networking only"),
            ("user,tap=t0", "invalid --net part"),
            ("user,mac=1:2", "invalid MAC"),
            ("bogus", "expected tap=IFNAME"),
            ("", "expected tap=IFNAME"),
            ("mac=02:00:00:00:00:01", "--net needs one of"),
        ] {
            let e = parse_net(spec).unwrap_err();
            assert!(e.contains(why), "{spec}: {e}");
        }
    }

    #[test]
    fn guest_address_from_the_command_line() {
        assert_eq!(guest_ip_of("console=ttyS0"), Ok(None));
        assert_eq!(
            guest_ip_of("console=ttyS0 ftvm.ip=10.0.2.15/24,10.0.2.2"),
            Ok(Some((
                Ipv4Addr::new(10, 0, 2, 15),
                24,
                Some(Ipv4Addr::new(10, 0, 2, 2))
            )))
        );
        assert_eq!(
            guest_ip_of("ftvm.ip=10.9.0.1/16"),
            Ok(Some((Ipv4Addr::new(10, 9, 0, 1), 16, None)))
        );
        for bad in [
            "ftvm.ip=10.0.2.15",
            "ftvm.ip=10.0.2.15/33",
            "ftvm.ip=x/24",
            "ftvm.ip=10.0.2.15/24,gw",
        ] {
            assert!(guest_ip_of(bad).is_err(), "{bad}");
        }
        assert_eq!(
            default_gateway(Ipv4Addr::new(10, 9, 3, 7), 16),
            Ipv4Addr::new(10, 9, 0, 1)
        );
        assert_eq!(
            default_gateway(Ipv4Addr::new(10, 9, 0, 1), 16),
            Ipv4Addr::new(10, 9, 0, 2)
        );
    }

    #[test]
    fn user_networking_gives_the_guest_an_address() {
        let mut a = RunArgs {
            append: "console=ttyS0".into(),
            net: vec![parse_net("user,hostfwd=tcp::5000-:6379").unwrap()],
            ..Default::default()
        };
        a.prepare_net(false).unwrap();
        assert_eq!(a.append, format!("console=ttyS0 {USER_NET_IP}"));
        let d = devices_of(&a);
        assert_eq!(d.guest_ip, Some(Ipv4Addr::new(10, 0, 2, 15)));
        let NetBackend::User(u) = &d.nets[0].backend else {
            panic!("not a user network: {:?}", d.nets[0]);
        };
        assert_eq!((u.prefix, u.gateway), (24, Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(u.forwards, vec![fwd([127, 0, 0, 1], 5000, 6379)]);
        // An address of the user's own is kept, a malformed one refused.
        let mut a = RunArgs {
            append: "ftvm.ip=192.168.5.9/24".into(),
            net: vec![NetArg::User {
                forwards: vec![],
                mac: [2; 6],
            }],
            ..Default::default()
        };
        a.prepare_net(false).unwrap();
        assert_eq!(a.append, "ftvm.ip=192.168.5.9/24");
        let NetBackend::User(u) = &devices_of(&a).nets[0].backend else {
            panic!("not a user network");
        };
        assert_eq!(u.gateway, Ipv4Addr::new(192, 168, 5, 1));
        a.append = "ftvm.ip=192.168.5.9".into();
        assert!(a.prepare_net(false).is_err());
        // `none` stands alone, and leaves no device.
        let mut a = RunArgs {
            net: vec![NetArg::None],
            ..Default::default()
        };
        a.prepare_net(true).unwrap();
        assert!(a.net.is_empty() && a.redis_port.is_none());
        a.net = vec![NetArg::None, parse_net("user").unwrap()];
        assert!(a.prepare_net(false).is_err());
    }

    #[test]
    fn the_default_network_only_where_it_belongs() {
        // Under the virtual clock, with a kernel of the user's own or a network given: none.
        for a in [
            RunArgs {
                clock: ClockMode::Virtual,
                ..Default::default()
            },
            RunArgs {
                kernel: Some("Image".into()),
                ..Default::default()
            },
            RunArgs {
                net: vec![parse_net("tap=t0").unwrap()],
                ..Default::default()
            },
        ] {
            let before = a.net.clone();
            let a = prepared(a, true).unwrap();
            assert_eq!(a.net, before);
            assert_eq!(a.redis_port, None);
        }
        // A plain run gets redis forwarded (where passt is installed).
        let a = prepared(RunArgs::default(), true).unwrap();
        if ftvm_host::user::passt_available() {
            let port = a.redis_port.expect("a redis port");
            assert!(matches!(&a.net[..], [NetArg::User { forwards, .. }]
                if forwards == &[fwd([127, 0, 0, 1], port, REDIS_PORT)]));
            assert!(a.append.contains(USER_NET_IP));
        }
    }
}
