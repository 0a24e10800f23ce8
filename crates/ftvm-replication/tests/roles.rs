//! The pair's roles over the in-memory transport, in one process: a primary and a backup run a
//! small bare-metal guest that prints 20,000 bytes on its console and powers off. No sockets,
//! no processes: the roles' whole protocol (attach, log, acknowledgements, output commit under
//! the lease, the end of the run, failure detection, fencing, the arbiter race, the takeover).

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ftvm_machine::Machine;
use ftvm_replication::primary::Protector;
use ftvm_replication::transport::{memory, Halves};
use ftvm_replication::{backup, primary, Arbiter, PairConfig, PairError, Psk, Timing};
use ftvm_runner::{Backends, ClockMode, Devices, Ended, Feeder, Gate, Options};

/// Bytes the guest prints before it powers off.
const BYTES: usize = 20_000;

/// The guest: print 'a' BYTES times (about 4,000 instructions apart: a run long enough, even
/// under the translator, for heartbeats to tell the backup what the primary released before
/// the tests cut the link), then power off through the test finisher.
/// (riscv64-linux-gnu-as of `li t0, UART; li t1, 20000; li t2, 'a'; loop: sb t2, 0(t0);
/// li t3, 2000; delay: addi t3, t3, -1; bnez t3, delay; addi t1, -1; bnez t1, loop;
/// sw 0x5555 to 0x100000; j .`)
const CODE: [u32; 15] = [
    0x100002b7, 0x00005337, 0xe203031b, 0x06100393, 0x00728023, 0x7d000e13, 0xfffe0e13, 0xfe0e1ee3,
    0xfff30313, 0xfe0316e3, 0x001002b7, 0x00005337, 0x5553031b, 0x0062a023, 0x0000006f,
];

/// A minimal ELF64 RISC-V executable with CODE at 0x8000_0000.
fn elf() -> Vec<u8> {
    let code: Vec<u8> = CODE.iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut e = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    e.resize(16, 0);
    e.extend_from_slice(&2u16.to_le_bytes()); // executable
    e.extend_from_slice(&243u16.to_le_bytes()); // RISC-V
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&0x8000_0000u64.to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // program headers
    e.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    e.extend_from_slice(&0u32.to_le_bytes());
    for h in [64u16, 56, 1, 64, 0, 0] {
        e.extend_from_slice(&h.to_le_bytes());
    }
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [
        120u64,
        0x8000_0000,
        0x8000_0000,
        code.len() as u64,
        code.len() as u64,
        4,
    ] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&code);
    e
}

fn machine() -> Machine {
    Machine::boot_elf(16 << 20, 1, &elf()).expect("the test program loads")
}

/// The devices of a bare-metal program: none.
fn bare() -> Devices {
    Devices {
        bare_metal: true,
        ..Devices::default()
    }
}

fn temp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ftvm-roles-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn config(arbiter: &str) -> PairConfig {
    PairConfig {
        psk: Psk::from_bytes(b"0123456789abcdef"),
        arbiter: Arbiter::parse(arbiter).expect("arbiter"),
        timing: Timing::new(Duration::from_millis(5), Duration::from_millis(60)),
        digest_every: 1_000_000,
        epoch: None,
        max_lag_ms: 50,
        max_downtime: Duration::from_millis(300),
        status_file: None,
        mem_bytes: 16 << 20,
        replicas: None,
        push_input: Default::default(),
        commit_wait: ftvm_runner::COMMIT_WAIT,
        replay_spin: ftvm_replication::REPLAY_SPIN,
    }
}

fn options(out: &Arc<Mutex<Vec<u8>>>) -> Options {
    Options {
        keep_log: None,
        telemetry: None,
        stop_at: u64::MAX,
        clock: ClockMode::Virtual,
        capture: Some(out.clone()),
        inject: None,
    }
}

type Side = JoinHandle<Result<Ended, PairError>>;

/// Start a primary (with `cfg`) protected by a backup (with `bcfg`) over `link`.
fn start(
    cfg: PairConfig,
    bcfg: PairConfig,
    (p, b): (Halves, Halves),
) -> (Side, Side, [Arc<Mutex<Vec<u8>>>; 2]) {
    let outs = [
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    ];
    let (popts, bopts) = (options(&outs[0]), options(&outs[1]));
    let primary = std::thread::spawn(move || {
        let (in_tx, in_rx) = mpsc::channel();
        in_tx.send(p).expect("queue the backup");
        let (ev_tx, ev_rx) = ftvm_runner::events();
        let devices = bare();
        let protect = Protector::new(in_rx, &cfg, 0, &devices, ev_tx.clone());
        primary::run(
            protect,
            machine(),
            Backends::default(),
            &devices,
            &cfg,
            &popts,
            ev_tx,
            ev_rx,
        )
    });
    let backup =
        std::thread::spawn(move || backup::follow_primary(b, None, &bare(), &bcfg, &bopts));
    (primary, backup, outs)
}

fn text(buf: &Arc<Mutex<Vec<u8>>>) -> Vec<u8> {
    buf.lock().unwrap().clone()
}

/// The machine's state where the program ends, run alone.
fn solo_end_digest() -> blake3::Hash {
    let out = Arc::new(Mutex::new(Vec::new()));
    let (ev_tx, ev_rx) = ftvm_runner::events();
    let ended = ftvm_runner::live(
        &options(&out),
        machine(),
        Backends::default(),
        ev_tx,
        ev_rx,
        Feeder::new(None),
        Gate::open(),
        Vec::new(),
    )
    .expect("a solo run");
    assert_eq!(ended.code, 0);
    assert_eq!(text(&out), vec![b'a'; BYTES]);
    ended.machine.digest()
}

/// Wait until the primary has released `n` bytes.
fn wait_for_output(buf: &Arc<Mutex<Vec<u8>>>, n: usize) {
    let t0 = Instant::now();
    while buf.lock().unwrap().len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the primary released nothing"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_pair_runs_in_lockstep_to_the_end() {
    let arb = temp("end");
    let spec = format!("file:{}", arb.display());
    let (primary, backup, outs) = start(config(&spec), config(&spec), memory::pair());
    let p = primary.join().unwrap().expect("the primary ends well");
    let b = backup.join().unwrap().expect("the backup ends well");
    assert_eq!((p.code, b.code), (0, 0));
    // Every output left (after the backup held its log), exactly once, and only from the
    // primary; the backup followed to the same state (it checked every digest on the way).
    assert_eq!(text(&outs[0]), vec![b'a'; BYTES]);
    assert!(text(&outs[1]).is_empty());
    assert_eq!(p.machine.digest(), b.machine.digest());
    assert_eq!(p.machine.digest(), solo_end_digest());
    // Nobody raced for the arbiter.
    assert!(!arb.exists());
}

#[test]
fn the_backup_takes_over_a_primary_cut_off_from_it_and_its_arbiter() {
    let arb = temp("takeover");
    // The primary's arbiter is out of its reach when it races (a file in a directory that does
    // not exist: nothing can be written there): it cannot win, so it must stop without
    // releasing anything more. The backup reaches the real one.
    let (a, b, cut) = memory::pair_with_cut();
    let (primary, backup, outs) = start(
        config("file:/nonexistent-ftvm-dir/arbiter"),
        config(&format!("file:{}", arb.display())),
        (a, b),
    );
    wait_for_output(&outs[0], BYTES / 4);
    cut.cut();
    let p = primary.join().unwrap();
    let b = backup
        .join()
        .unwrap()
        .expect("the backup goes live and ends well");
    assert!(p.is_err(), "the primary cannot win and must stop");
    assert_eq!(b.code, 0);
    assert_eq!(b.machine.digest(), solo_end_digest());
    let (pt, bt) = (text(&outs[0]), text(&outs[1]));
    // No output is lost: what the primary released and what the backup produced cover it
    // all (an output both sides sent is a duplicate, as a retransmission is; never a loss).
    assert!(pt.iter().chain(&bt).all(|&c| c == b'a'));
    assert!(
        pt.len() + bt.len() >= BYTES,
        "{} + {} < {BYTES}",
        pt.len(),
        bt.len()
    );
    assert!(bt.len() < BYTES);
    assert_eq!(
        Arbiter::parse(&format!("file:{}", arb.display()))
            .unwrap()
            .winner(0)
            .unwrap()
            .as_deref(),
        Some("backup")
    );
}

#[test]
fn a_partition_leaves_exactly_one_side_live() {
    let arb = temp("partition");
    let spec = format!("file:{}", arb.display());
    let (a, b, cut) = memory::pair_with_cut();
    let (primary, backup, outs) = start(config(&spec), config(&spec), (a, b));
    wait_for_output(&outs[0], BYTES / 4);
    cut.cut();
    let p = primary.join().unwrap();
    let b = backup.join().unwrap();
    let winner = Arbiter::parse(&spec).unwrap().winner(0).unwrap();
    match (&p, &b, winner.as_deref()) {
        (Ok(p), Err(PairError::Lost(_)), Some("primary")) => {
            assert_eq!(p.code, 0);
            assert_eq!(text(&outs[0]), vec![b'a'; BYTES]);
            assert!(text(&outs[1]).is_empty(), "the losing backup sent nothing");
        }
        (Err(_), Ok(b), Some("backup")) => {
            assert_eq!(b.code, 0);
            assert!(text(&outs[0]).len() + text(&outs[1]).len() >= BYTES);
        }
        _ => panic!(
            "exactly one side goes on, the arbiter's winner: primary {:?}, backup {:?}, winner {winner:?}",
            p.as_ref().map(|e| e.code),
            b.as_ref().map(|e| e.code)
        ),
    }
    let _ = std::fs::remove_file(&arb);
}
