//! The timeline against a reference: a bare-metal program (no file needed) that writes all over
//! RAM, takes timer interrupts and reads the console, a log of inputs and digests built for it
//! by running it forwards, and a fresh machine run forwards along that log as the truth.
//!
//! The state "at count C" is every record at counts up to C applied, then the machine settled
//! (at the log's end, not settled); every move of the timeline must land exactly there,
//! whichever checkpoints it restored and however they were thinned.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use ftvm_cpu::Hart;
use ftvm_debug::{Limits, Stop, Timeline, TimelineError};
use ftvm_log::Record;
use ftvm_machine::{board, Board, Input, Machine, RunExit, RAM_BASE};
use ftvm_runner::follow::{self, Discard, FollowError};

// ---------------------------------------------------------------------------------------------
// A small RV64 assembler: the instructions the program needs.

const ZERO: u32 = 0;
const T0: u32 = 5;
const T1: u32 = 6;
const T2: u32 = 7;
const S0: u32 = 8;
const S1: u32 = 9;
const A1: u32 = 11;
const A2: u32 = 12;
const A3: u32 = 13;
const S2: u32 = 18;
const S3: u32 = 19;
const S4: u32 = 20;
const S5: u32 = 21;
const S6: u32 = 22;
const S7: u32 = 23;
const S8: u32 = 24;
const S9: u32 = 25;
const S10: u32 = 26;
const S11: u32 = 27;
const T3: u32 = 28;
const T4: u32 = 29;
const T5: u32 = 30;

const MSTATUS: u32 = 0x300;
const MIE: u32 = 0x304;
const MTVEC: u32 = 0x305;
const MEPC: u32 = 0x341;

fn i_type(imm: i32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
    (((imm as u32) & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}

fn r_type(f7: u32, rs2: u32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
    (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}

fn s_type(imm: i32, rs2: u32, rs1: u32, f3: u32) -> u32 {
    let imm = imm as u32;
    (((imm >> 5) & 0x7f) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (f3 << 12)
        | ((imm & 0x1f) << 7)
        | 0x23
}

fn b_type(off: i32, rs2: u32, rs1: u32, f3: u32) -> u32 {
    let o = off as u32;
    (((o >> 12) & 1) << 31)
        | (((o >> 5) & 0x3f) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (f3 << 12)
        | (((o >> 1) & 0xf) << 8)
        | (((o >> 11) & 1) << 7)
        | 0x63
}

fn jal(rd: u32, off: i32) -> u32 {
    let o = off as u32;
    (((o >> 20) & 1) << 31)
        | (((o >> 1) & 0x3ff) << 21)
        | (((o >> 11) & 1) << 20)
        | (((o >> 12) & 0xff) << 12)
        | (rd << 7)
        | 0x6f
}

fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(imm, rs1, 0, rd, 0x13)
}
fn andi(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(imm, rs1, 7, rd, 0x13)
}
fn slli(rd: u32, rs1: u32, sh: i32) -> u32 {
    i_type(sh, rs1, 1, rd, 0x13)
}
fn add(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0, rs2, rs1, 0, rd, 0x33)
}
fn and(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0, rs2, rs1, 7, rd, 0x33)
}
fn ld(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(imm, rs1, 3, rd, 0x03)
}
fn lbu(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(imm, rs1, 4, rd, 0x03)
}
fn sd(rs2: u32, rs1: u32, imm: i32) -> u32 {
    s_type(imm, rs2, rs1, 3)
}
fn sb(rs2: u32, rs1: u32, imm: i32) -> u32 {
    s_type(imm, rs2, rs1, 0)
}
/// amoadd.d rd, rs2, (rs1)
fn amoadd_d(rd: u32, rs2: u32, rs1: u32) -> u32 {
    r_type(0, rs2, rs1, 3, rd, 0x2f)
}
fn csrrw(rd: u32, csr: u32, rs1: u32) -> u32 {
    (csr << 20) | (rs1 << 15) | (1 << 12) | (rd << 7) | 0x73
}
fn csrrs(rd: u32, csr: u32, rs1: u32) -> u32 {
    (csr << 20) | (rs1 << 15) | (2 << 12) | (rd << 7) | 0x73
}
const MRET: u32 = 0x3020_0073;

#[derive(Default)]
struct Asm {
    words: Vec<u32>,
}

impl Asm {
    fn w(&mut self, word: u32) {
        self.words.push(word);
    }
    /// The byte offset of the next instruction.
    fn here(&self) -> i32 {
        4 * self.words.len() as i32
    }
    /// A branch whose target is not known yet: patch it with [`Asm::bind`].
    fn forward(&mut self, word: u32) -> usize {
        self.words.push(word);
        self.words.len() - 1
    }
    fn bind(&mut self, at: usize, make: impl Fn(i32) -> u32) {
        let off = self.here() - 4 * at as i32;
        self.words[at] = make(off);
    }
}

#[test]
fn the_assembler_encodes_known_words() {
    assert_eq!(addi(T0, T0, 1), 0x0012_8293);
    assert_eq!(jal(ZERO, -4), 0xffdf_f06f);
    assert_eq!(addi(10, ZERO, 5), 0x0050_0513);
    assert_eq!(addi(10, 10, -7), 0xff95_0513);
    assert_eq!(slli(10, 10, 63), 0x03f5_1513);
    // sd a1, 8(sp); ld a0, -8(s0); beq a0, zero, +16; bne a1, zero, -8; sb a5, 0(a4)
    assert_eq!(sd(11, 2, 8), 0x00b1_3423);
    assert_eq!(ld(10, S0, -8), 0xff84_3503);
    assert_eq!(b_type(16, ZERO, 10, 0), 0x0005_0863);
    assert_eq!(b_type(-8, ZERO, 11, 1), 0xfe05_9ce3);
    assert_eq!(sb(15, 14, 0), 0x00f7_0023);
    // amoadd.d zero, s0, (a2); csrrs t5, mepc, zero; csrrw zero, mtvec, t0
    assert_eq!(amoadd_d(ZERO, S0, A2), 0x0086_302f);
    assert_eq!(csrrs(T5, MEPC, ZERO), 0x3410_2f73);
    assert_eq!(csrrw(ZERO, MTVEC, T0), 0x3052_9073);
}

// ---------------------------------------------------------------------------------------------
// The program and its log.

const HANDLER: u64 = 0x400;
/// Each hart's own page of counters, mtime, mepc and console bytes (the next hart's is this far
/// on), and its misaligned store across a page boundary (pages 9 and 10 for hart 0).
const HOT: u64 = 0x8000;
const ACROSS: u64 = 0xa000 - 3;
const PER_HART: u64 = 0x4000;
/// Each hart's 2 MiB of pages written in turn (the next hart's is this far on).
const SPREAD: u64 = 0x10_0000;
const SPREAD_PER_HART: u64 = 0x40_0000;
const SPREAD_MASK: u64 = 0x1f_ffff;
/// Eight pages every hart adds to with AMOs.
const AMO: u64 = 0xc0_0000;
const CLINT_MTIMECMP: u64 = board::CLINT_BASE + 0x4000;
const CLINT_MTIME: u64 = board::CLINT_BASE + 0xbff8;
/// Ticks between timer interrupts (7000 steps at the default rate).
const PERIOD: i32 = 700;

const START: u64 = 3_333;
const END: u64 = 600_000;
/// The length of a log with no record between its start and its end.
const LONG: u64 = 9_000_000;
/// The step at which `Timeline::advance` looks at `poll` in a long run (its POLL_STEPS).
const POLL_STEPS: u64 = 1 << 22;

/// A bare-metal ELF that loads `image` at RAM_BASE and starts there.
fn elf(image: &[u8]) -> Vec<u8> {
    let mut f = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&243u16.to_le_bytes()); // EM_RISCV
    f.extend_from_slice(&1u32.to_le_bytes());
    for v in [RAM_BASE, 64, 0] {
        f.extend_from_slice(&v.to_le_bytes()); // entry, program headers, no sections
    }
    f.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(f.len(), 64);
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&7u32.to_le_bytes()); // RWX
    let len = image.len() as u64;
    for v in [0x1000, RAM_BASE, RAM_BASE, len, len, 0x1000] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.resize(0x1000, 0);
    f.extend_from_slice(image);
    f
}

/// The program on `harts` harts, and the pc of its loop head and of its interrupt handler.
///
/// Setup: mtvec, mie.MTIE, the first mtimecmp, mstatus.MIE. Then forever: count in s0, store
/// the count to the hart's hot page, to a page that moves by 37 pages (and 8 bytes) each turn
/// through the hart's 2 MiB (512 pages), across a page boundary (misaligned), and with an AMO
/// to one of 8 shared pages; store mtime; take a console byte if there is one (store it, echo
/// it); then spin 100 to 131 turns. The timer handler re-arms the hart's timer 700 ticks on,
/// counts, and stores mepc. Every hart runs the same code on its own registers.
fn program(harts: usize) -> (Machine, u64, u64) {
    let mut a = Asm::default();
    a.w(csrrw(ZERO, MTVEC, T0));
    a.w(csrrs(ZERO, MIE, T1));
    a.w(ld(T0, S10, 0));
    a.w(addi(T0, T0, 500));
    a.w(sd(T0, S6, 0));
    a.w(csrrs(ZERO, MSTATUS, T2));
    let top = a.here();
    a.w(addi(S0, S0, 1));
    a.w(sd(S0, S3, 0));
    a.w(add(T0, S1, S2));
    a.w(sd(S0, T0, 0));
    a.w(add(S2, S2, S8));
    a.w(and(S2, S2, S7));
    a.w(ld(T1, S10, 0));
    a.w(sd(T1, S3, 8));
    a.w(sd(S0, S11, 0));
    a.w(andi(A2, S0, 7));
    a.w(slli(A2, A2, 12));
    a.w(add(A2, A2, S9));
    a.w(amoadd_d(ZERO, S0, A2));
    a.w(lbu(T2, S5, 5));
    a.w(andi(T2, T2, 1));
    let skip = a.forward(0);
    a.w(lbu(T2, S5, 0));
    a.w(andi(A3, S4, 1023));
    a.w(add(A3, A3, S3));
    a.w(sb(T2, A3, 256));
    a.w(sb(T2, S5, 0));
    a.w(addi(S4, S4, 1));
    a.bind(skip, |off| b_type(off, ZERO, T2, 0));
    a.w(andi(A1, S0, 31));
    a.w(addi(A1, A1, 100));
    let spin = a.here();
    a.w(addi(A1, A1, -1));
    a.w(b_type(spin - a.here(), ZERO, A1, 1));
    a.w(jal(ZERO, top - a.here()));
    assert!(a.here() as u64 <= HANDLER);

    let mut h = Asm::default();
    h.w(ld(T3, S10, 0));
    h.w(addi(T3, T3, PERIOD));
    h.w(sd(T3, S6, 0));
    h.w(ld(T4, S3, 16));
    h.w(addi(T4, T4, 1));
    h.w(sd(T4, S3, 16));
    h.w(csrrs(T5, MEPC, ZERO));
    h.w(sd(T5, S3, 24));
    h.w(MRET);

    let mut image = vec![0u8; HANDLER as usize + 4 * h.words.len()];
    for (at, words) in [(0, &a.words), (HANDLER as usize, &h.words)] {
        for (i, w) in words.iter().enumerate() {
            image[at + 4 * i..at + 4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
    let mut m = Machine::boot_elf(16 << 20, harts, &elf(&image)).unwrap();
    for i in 0..harts {
        let n = i as u64;
        let regs = [
            (T0, RAM_BASE + HANDLER),
            (T1, 1 << 7),
            (T2, 1 << 3),
            (S1, RAM_BASE + SPREAD + n * SPREAD_PER_HART),
            (S3, RAM_BASE + HOT + n * PER_HART),
            (S5, board::UART_BASE),
            (S6, CLINT_MTIMECMP + 8 * n),
            (S7, SPREAD_MASK),
            (S8, 37 * 4096 + 8),
            (S9, RAM_BASE + AMO),
            (S10, CLINT_MTIME),
            (S11, RAM_BASE + ACROSS + n * PER_HART),
        ];
        let hart = m.hart_mut(i);
        assert_eq!(hart.pc(), RAM_BASE);
        for (r, v) in regs {
            hart.set_reg(r as usize, v);
        }
    }
    (m, RAM_BASE + top as u64, RAM_BASE + HANDLER)
}

fn digest(m: &Machine) -> [u8; 32] {
    *m.digest().as_bytes()
}

/// The pc of the hart about to step.
fn pc(m: &Machine) -> u64 {
    m.harts()[m.current_hart()].pc()
}

enum Plan {
    Inputs(u64, Vec<Input>),
    Digest(u64),
    Mark(u64),
    End(u64),
}

struct Log {
    harts: usize,
    start: u64,
    end: u64,
    initial: Vec<u8>,
    records: Vec<Record>,
    loop_pc: u64,
    handler_pc: u64,
    hits: OnceLock<Hits>,
}

/// The main log's records: inputs (time jumps small and past the timer, console bytes, a clock
/// rate), digests, a mark and the end; some at the start, some at checkpoint counts, some
/// several at one count.
fn main_plan() -> Vec<Plan> {
    let time = |ticks| vec![Input::Time { ticks }];
    let mut plan = vec![
        Plan::Inputs(START, vec![Input::Console(b'a')]),
        Plan::Digest(START),
        Plan::Inputs(12_345, vec![Input::Console(b'x'), Input::Console(b'y')]),
        Plan::Inputs(25_000, time(5)),
        Plan::Inputs(45_678, time(2_000)),
        Plan::Digest(45_678),
        Plan::Inputs(70_001, time(5)),
        Plan::Inputs(99_999, vec![Input::Console(b'z')]),
        Plan::Inputs(130_000, time(5)),
        Plan::Mark(177_777),
        Plan::Inputs(250_000, vec![Input::Console(b'q')]),
        Plan::Inputs(250_000, time(5)),
        Plan::Inputs(300_000, time(2_000)),
        Plan::Inputs(
            400_000,
            vec![Input::Rate {
                rate: board::DEFAULT_RATE * 3 / 2,
            }],
        ),
        Plan::Inputs(450_003, time(5)),
        Plan::Inputs(480_000, time(5)),
        Plan::Inputs(480_000, vec![Input::Console(b'!')]),
    ];
    plan.extend((50_000..END).step_by(50_000).map(Plan::Digest));
    plan.push(Plan::End(END));
    plan
}

/// The log of `plan` for the program on `harts` harts from `start` on: its digests are those
/// of a machine run along it as `follow` does.
fn build(harts: usize, start: u64, mut plan: Vec<Plan>) -> Log {
    let (mut m, loop_pc, handler_pc) = program(harts);
    assert_eq!(m.run(start, u64::MAX), RunExit::StopAt);
    let initial = m.save();
    let count = |p: &Plan| match p {
        Plan::Inputs(c, _) | Plan::Digest(c) | Plan::Mark(c) | Plan::End(c) => *c,
    };
    // Stable: records at one count keep their order.
    plan.sort_by_key(count);
    let mut records = Vec::new();
    for p in plan {
        follow::run_to(&mut m, count(&p), &mut Discard).unwrap();
        records.push(match p {
            Plan::Inputs(count, inputs) => {
                for i in &inputs {
                    m.apply(i.clone());
                }
                Record::Input { count, inputs }
            }
            Plan::Digest(count) => Record::Digest {
                count,
                digest: digest(&m),
            },
            Plan::Mark(count) => Record::Mark { count },
            Plan::End(count) => Record::End {
                count,
                digest: digest(&m),
                code: 0,
            },
        });
    }
    Log {
        harts,
        start,
        end: records.last().unwrap().count(),
        initial,
        records,
        loop_pc,
        handler_pc,
        hits: OnceLock::new(),
    }
}

/// The main log, on one hart or two.
fn log(harts: usize) -> &'static Log {
    static LOGS: [OnceLock<Log>; 2] = [OnceLock::new(), OnceLock::new()];
    LOGS[harts - 1].get_or_init(|| build(harts, START, main_plan()))
}

/// A log of 9 million steps on one hart with nothing between its start and its end. It starts
/// POLL_STEPS before a timer interrupt becomes pending: a run from its start that stops there
/// to look at `poll` stops where settling the machine takes an interrupt.
fn long_log() -> &'static Log {
    static LOG: OnceLock<Log> = OnceLock::new();
    LOG.get_or_init(|| {
        let (mut m, ..) = program(1);
        let at = POLL_STEPS + 100_000;
        assert_eq!(m.run(at, u64::MAX), RunExit::StopAt);
        let deadline = m.board.deadline(m.board.timers[0].mtimecmp).unwrap();
        assert!(deadline > at);
        let start = deadline - POLL_STEPS;
        build(1, start, vec![Plan::Digest(start), Plan::End(start + LONG)])
    })
}

/// The truth at each target: a fresh machine from the log's initial state run forwards along
/// the log to it, every record up to it applied, then a copy of it settled (at the end: not
/// settled).
fn reference(log: &Log, targets: impl IntoIterator<Item = u64>) -> BTreeMap<u64, [u8; 32]> {
    let mut targets: Vec<u64> = targets
        .into_iter()
        .map(|t| t.clamp(log.start, log.end))
        .collect();
    targets.sort_unstable();
    targets.dedup();
    let mut m = Machine::restore(&log.initial).unwrap();
    let mut next = 0;
    let mut out = BTreeMap::new();
    for x in targets {
        while let Some(r) = log.records.get(next).filter(|r| r.count() <= x) {
            follow::apply(&mut m, r.clone(), &mut Discard).unwrap();
            next += 1;
        }
        follow::run_to(&mut m, x, &mut Discard).unwrap();
        let d = if x < log.end {
            let mut c = Machine::restore(&m.save()).unwrap();
            c.settle();
            digest(&c)
        } else {
            digest(&m)
        };
        out.insert(x, d);
    }
    out
}

/// Where the hart about to step is before each step of the whole log (one step at a time,
/// records applied and the machine settled before each): the counts at the loop head and at
/// the interrupt handler.
struct Hits {
    at_loop: Vec<u64>,
    at_handler: Vec<u64>,
}

fn hits(log: &'static Log) -> &'static Hits {
    log.hits.get_or_init(|| {
        let mut m = Machine::restore(&log.initial).unwrap();
        let (mut at_loop, mut at_handler) = (Vec::new(), Vec::new());
        let mut next = 0;
        for c in log.start..log.end {
            while let Some(r) = log.records.get(next).filter(|r| r.count() <= c) {
                follow::apply(&mut m, r.clone(), &mut Discard).unwrap();
                next += 1;
            }
            assert!(m.settle());
            if pc(&m) == log.loop_pc {
                at_loop.push(c);
            }
            if pc(&m) == log.handler_pc {
                at_handler.push(c);
            }
            follow::run_to(&mut m, c + 1, &mut Discard).unwrap();
        }
        // Stepping one at a time and settling each time is the run the log recorded (its
        // digests match).
        for r in &log.records[next..] {
            follow::apply(&mut m, r.clone(), &mut Discard).unwrap();
        }
        assert_eq!(m.count(), log.end);
        Hits {
            at_loop,
            at_handler,
        }
    })
}

/// A deterministic pseudo-random sequence (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn timeline(log: &Log, limits: Limits) -> Timeline {
    let tl = Timeline::new(&log.initial, log.records.clone(), limits).unwrap();
    let start = log.start;
    assert_eq!((tl.start(), tl.end(), tl.count()), (start, log.end, start));
    tl
}

const UNLIMITED: usize = usize::MAX;

/// The periodic checkpoints of a log to `END` (and the one at its start).
fn periodic_checkpoints(every: u64) -> usize {
    1 + (END / every - START / every) as usize
}

/// Whether the checkpoints keep within the budget (or are down to the three that stay: the
/// first, the newest, and the one the machine's dirty pages are tracked from).
fn assert_within_budget(tl: &Timeline, limits: Limits) {
    let (n, bytes) = tl.checkpoints();
    assert!(
        bytes <= limits.max_bytes || n <= 3,
        "{n} checkpoints take {bytes} bytes, over {}",
        limits.max_bytes
    );
}

/// Move the timeline to `x` and compare with the reference.
fn check_goto(tl: &mut Timeline, x: u64, truth: &BTreeMap<u64, [u8; 32]>, what: &str) {
    let from = tl.count();
    let stop = tl
        .goto(x)
        .unwrap_or_else(|e| panic!("{what}: goto({x}) from {from}: {e}"));
    let at = x.clamp(tl.start(), tl.end());
    let want = if at == tl.end() {
        Stop::End
    } else {
        Stop::Target
    };
    assert_eq!(stop, want, "{what}: goto({x}) from {from}");
    assert_eq!(tl.count(), at, "{what}: goto({x}) from {from}");
    assert!(
        digest(tl.machine()) == truth[&at],
        "{what}: goto({x}) from {from}: the state differs from the reference's at {at}"
    );
}

/// About `n` counts of periodic checkpoints, evenly spread over the log.
fn some_checkpoint_counts(every: u64, n: u64) -> Vec<u64> {
    let (first, last) = (START / every + 1, END / every);
    let step = ((last + 1 - first) / n).max(1) as usize;
    (first..=last).step_by(step).map(|k| k * every).collect()
}

/// Targets worth visiting with checkpoints every `every`: checkpoint counts and the counts
/// next to them, record counts (every `nth` record) and the counts next to them, the ends, and
/// `random` random counts, in a shuffled order.
fn targets(log: &Log, every: u64, seed: u64, random: usize, nth: usize) -> Vec<u64> {
    let mut t = vec![START, START + 1, END - 1, END];
    for c in some_checkpoint_counts(every, 12) {
        t.extend([c - 1, c, c + 1]);
    }
    let records = log.records.iter().map(Record::count);
    for c in records.skip(seed as usize % nth).step_by(nth) {
        t.extend([c.saturating_sub(1).max(START), c, (c + 1).min(END)]);
    }
    let mut rng = Rng(seed);
    t.extend((0..random).map(|_| START + rng.below(END - START + 1)));
    for i in (1..t.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        t.swap(i, j);
    }
    t
}

fn describe(log: &Log, limits: Limits) -> String {
    format!(
        "{} hart(s), every {}, max_bytes {}",
        log.harts, limits.every, limits.max_bytes
    )
}

#[test]
fn the_oracle_sees_the_program_run() {
    for harts in [1, 2] {
        let h = hits(log(harts));
        // A turn of the loop is 2 * (100..131) + 26 steps or so; each hart's timer fires
        // every 7000 steps (10500 after the rate changes), and at once after a time jump.
        let turns = h.at_loop.len() as u64;
        assert!(
            turns > (END - START) / 300 && turns < (END - START) / 200,
            "{harts} hart(s): {turns} turns"
        );
        let irqs = h.at_handler.len() as u64;
        assert!(
            irqs > 50 && irqs < 100 * harts as u64,
            "{harts} hart(s): {irqs} interrupts"
        );
        // The time jumps past the timer: the interrupt is taken at their count.
        assert!(h.at_handler.contains(&45_678), "{:?}", h.at_handler);
        assert!(h.at_handler.contains(&300_000), "{:?}", h.at_handler);
    }
    // Two harts take turns.
    let mut m = Machine::restore(&log(2).initial).unwrap();
    follow::run_to(&mut m, 30_000, &mut Discard).unwrap();
    assert!(m.harts().iter().all(|h| h.count() >= 10_000));
}

// ---------------------------------------------------------------------------------------------
// 1. Going backwards lands where going forwards does.

fn going_back_equals_going_forward(
    log: &Log,
    limits: Limits,
    seed: u64,
    random: usize,
    nth: usize,
) -> Timeline {
    let mut tl = timeline(log, limits);
    let targets = targets(log, limits.every, seed, random, nth);
    let truth = reference(log, targets.iter().copied());
    let what = describe(log, limits);
    // All the way first: every later move has been past its target.
    check_goto(&mut tl, END, &truth, "first to the end");
    assert_within_budget(&tl, limits);
    if limits.max_bytes == UNLIMITED {
        assert_eq!(
            tl.checkpoints().0,
            periodic_checkpoints(limits.every),
            "{what}"
        );
    }
    for &x in &targets {
        check_goto(&mut tl, x, &truth, &what);
        assert_within_budget(&tl, limits);
    }
    tl
}

#[test]
fn going_back_equals_going_forward_with_every_checkpoint_kept() {
    for (harts, every, random, seed) in [
        (1, 10_000, 40, 0x9e37_79b9_7f4a_7c15),
        (2, 10_000, 30, 0x5555_aaaa_1234_5678),
        (1, 2_500, 20, 0x0f0f_f0f0_1357_9bdf),
    ] {
        let limits = Limits {
            every,
            max_bytes: UNLIMITED,
        };
        let tl = going_back_equals_going_forward(log(harts), limits, seed, random, 1);
        let (n, bytes) = tl.checkpoints();
        // Going back may leave checkpoints between the periodic ones (fine ones).
        assert!(n >= periodic_checkpoints(every), "{n} checkpoints");
        // Each holds the pages written in its interval, not RAM: per 10_000 steps per hart,
        // about 40 of the spread, 8 AMO pages and the hot ones.
        let per = 4096 * every as usize / 10_000;
        assert!(
            bytes < n * 100 * per * harts,
            "{n} checkpoints take {bytes} bytes"
        );
        assert!(bytes > n * 20 * per, "{n} checkpoints take {bytes} bytes");
    }
}

/// What a failure here would mean: thinning merged the checkpoint the dirty pages are tracked
/// from (a fine one, made on the way back) and a later restore missed pages.
const THIN_BUG: &str = "thin() must keep the checkpoint the dirty pages are tracked from \
                        (see a_fine_checkpoint_thinned_at_once_breaks_the_next_restore)";

/// The guest writes about 530 pages (2.1 MB) per hart in all: once thinned the checkpoints
/// cannot take less (a merged checkpoint keeps every page its interval wrote), so budgets
/// above that keep several, and a budget below it leaves the first, the newest and the one
/// the dirty pages are tracked from (at most three).
#[test]
fn going_back_equals_going_forward_after_checkpoints_were_thinned() {
    for (harts, every, max_bytes, random, several, seed) in [
        (1, 10_000, 4 << 20, 30, true, 0x1234_5678_9abc_def1),
        (1, 3_001, 3 << 20, 15, true, 0xdead_beef_cafe_f00d),
        (1, 997, 3 << 20, 15, true, 0x0bad_cafe_1234_4321),
        (1, 10_000, 1 << 20, 3, false, 0x7777_1111_2222_3333),
        (2, 5_000, 6 << 20, 10, true, 0x3141_5926_5358_9793),
    ] {
        let limits = Limits { every, max_bytes };
        let tl = going_back_equals_going_forward(log(harts), limits, seed, random, 2);
        let (n, _) = tl.checkpoints();
        let all = periodic_checkpoints(every);
        let what = describe(log(harts), limits);
        assert!(n * 4 < all, "{what}: {n} checkpoints of {all} were kept");
        if several {
            assert!(n > 2, "{what}: {n} kept");
        } else {
            assert!(n <= 3, "{what}: {n} kept");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Back and forth, over ground already covered, a step at a time.

const JUMPS: [u64; 47] = [
    50_000,
    10_000,
    90_000,
    20_000,
    20_001,
    19_999,
    19_998,
    90_000,
    89_999,
    130_000,
    129_999,
    130_001,
    3_333,
    3_334,
    600_000,
    599_999,
    45_678,
    45_677,
    45_679,
    300_000,
    299_999,
    500_000,
    10_000,
    10_000,
    250_000,
    250_001,
    249_999,
    400_000,
    399_999,
    0,
    5,
    550_000,
    12_345,
    12_344,
    12_346,
    177_777,
    1 << 40,
    480_000,
    479_999,
    480_001,
    60_000,
    70_000,
    70_001,
    70_002,
    70_000,
    450_003,
    3_333,
];

/// Ranges stepped through one count at a time, on and back (as gdb's stepi and reverse-stepi
/// do): over a checkpoint, over time jumps that fire the timer, up to the end.
const STEPS: [std::ops::Range<u64>; 4] = [
    9_990..10_012,
    45_670..45_690,
    299_995..300_006,
    599_990..600_000,
];

fn jumps_and_steps(log: &Log, limits: Limits) {
    let steps = STEPS.iter().flat_map(|r| r.clone());
    let truth = reference(log, JUMPS.iter().copied().chain(steps));
    let what = describe(log, limits);
    let mut tl = timeline(log, limits);
    for &x in &JUMPS {
        check_goto(&mut tl, x, &truth, &what);
        assert_within_budget(&tl, limits);
    }
    for range in STEPS {
        for x in range.clone() {
            check_goto(&mut tl, x, &truth, &format!("{what}, stepping on"));
        }
        for x in range.rev() {
            check_goto(&mut tl, x, &truth, &format!("{what}, stepping back"));
        }
    }
}

#[test]
fn jumps_back_and_forth_and_single_steps_match_the_reference() {
    for (harts, every) in [(1, 10_000), (2, 7_000)] {
        let limits = Limits {
            every,
            max_bytes: UNLIMITED,
        };
        jumps_and_steps(log(harts), limits);
    }
}

#[test]
fn jumps_back_and_forth_and_single_steps_match_the_reference_with_thinned_checkpoints() {
    for (harts, every, max_bytes) in [
        (1, 7_000, 1 << 20),
        (1, 10_000, 4 << 20),
        (2, 7_000, 6 << 20),
    ] {
        jumps_and_steps(log(harts), Limits { every, max_bytes });
    }
}

/// The smallest case of what THIN_BUG names. Checkpoints every 7000 within 1 MiB: the way to 50_000
/// makes 3333, 7000, ..., 49000 and merges 7000 into 14000. Back to 10_000: 3333 is restored
/// and a fine checkpoint made at 5904 on the way, where the dirty pages are tracked from
/// (`since` = 5904); over budget, thin() merges 5904 (its neighbours are the closest) into
/// 14000 and sets `since` = 14000, ahead of the machine. On to 90_000: 49000 is restored from
/// count 10_000 with `since` = 14000, so the pages written between 10_000 and 14000 (held by
/// checkpoint 14000, which the restore leaves out as if the machine were there) keep their
/// content at 10_000: the run from 49000 diverges at the digest of 50_000.
#[test]
fn a_fine_checkpoint_thinned_at_once_breaks_the_next_restore() {
    let log = log(1);
    let truth = reference(log, [50_000, 10_000, 90_000]);
    let mut tl = timeline(
        log,
        Limits {
            every: 7_000,
            max_bytes: 1 << 20,
        },
    );
    for x in [50_000, 10_000, 90_000] {
        check_goto(&mut tl, x, &truth, THIN_BUG);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Hooks: stopping at an address, and finding the last time it was reached.

/// The first hit at or after `c`.
fn first_at_or_after(hits: &[u64], c: u64) -> Option<u64> {
    hits.get(hits.partition_point(|&h| h < c)).copied()
}

/// The last hit before `c`.
fn last_before(hits: &[u64], c: u64) -> Option<u64> {
    hits[..hits.partition_point(|&h| h < c)].last().copied()
}

#[test]
fn a_hook_stops_where_the_reference_is_at_that_address() {
    for harts in [1, 2] {
        let log = log(harts);
        let h = hits(log);
        let (loop_pc, handler_pc) = (log.loop_pc, log.handler_pc);
        // (from, pc, expected stop)
        let mut stops = Vec::new();
        for from in [START, 9_990, 44_000, 45_678, 130_000, 299_000, 599_000] {
            stops.push((from, loop_pc, first_at_or_after(&h.at_loop, from).unwrap()));
        }
        for from in [START, 40_000, 45_679, 250_001, 398_000] {
            stops.push((
                from,
                handler_pc,
                first_at_or_after(&h.at_handler, from).unwrap(),
            ));
        }
        // The hits met when continuing again and again, as gdb does (a hit where it resumes
        // does not count).
        let after = |hits: &[u64], from: u64, n: usize| -> Vec<u64> {
            hits[hits.partition_point(|&x| x <= from)..][..n].to_vec()
        };
        let runs = [
            (loop_pc, 95_000, after(&h.at_loop, 95_000, 30)),
            (handler_pc, 20_000, after(&h.at_handler, 20_000, 12)),
        ];
        let mut want: Vec<u64> = stops.iter().flat_map(|&(f, _, s)| [f, s]).collect();
        for (_, from, run) in &runs {
            want.push(*from);
            want.extend(run);
        }
        want.extend([595_000, END]);
        let truth = reference(log, want);

        for every in [10_000, 3_001] {
            let limits = Limits {
                every,
                max_bytes: UNLIMITED,
            };
            let what = describe(log, limits);
            let mut tl = timeline(log, limits);
            for &(from, pc, stop_at) in &stops {
                check_goto(&mut tl, from, &truth, "before a hooked run");
                let mut hook = |hart: &mut Hart, _: &mut Board| hart.pc() == pc;
                let stop = tl
                    .advance(u64::MAX, Some(&mut hook), &mut || false)
                    .unwrap();
                assert_eq!(
                    (stop, tl.count()),
                    (Stop::Hook, stop_at),
                    "{what}: from {from} to pc {pc:#x}"
                );
                assert!(
                    digest(tl.machine()) == truth[&stop_at],
                    "{what}: stopped by the hook at {stop_at} (from {from}), the state \
                     differs from the reference's"
                );
            }
            // Continuing from each stop (the stop's own count does not stop it again).
            for (pc, from, run) in &runs {
                check_goto(&mut tl, *from, &truth, "before continuing");
                for &expected in run {
                    let now = tl.count();
                    let mut hook = |hart: &mut Hart, board: &mut Board| {
                        board.count_base + hart.count() != now && hart.pc() == *pc
                    };
                    let stop = tl
                        .advance(u64::MAX, Some(&mut hook), &mut || false)
                        .unwrap();
                    assert_eq!(
                        (stop, tl.count()),
                        (Stop::Hook, expected),
                        "{what}: from {now}"
                    );
                    assert!(
                        digest(tl.machine()) == truth[&expected],
                        "{what}: continued from {now} to {expected}: the state differs"
                    );
                }
            }
            // A hook that never says yes runs to the end.
            check_goto(&mut tl, 595_000, &truth, "near the end");
            let mut never = |_: &mut Hart, _: &mut Board| false;
            assert_eq!(
                tl.advance(u64::MAX, Some(&mut never), &mut || false)
                    .unwrap(),
                Stop::End
            );
            assert_eq!(tl.count(), END);
            assert!(digest(tl.machine()) == truth[&END]);
        }
    }
}

#[test]
fn last_before_finds_the_previous_hit() {
    let mut rng = Rng(0x5151_7777_3333_9999);
    for (harts, every, max_bytes) in [
        (1, 10_000, UNLIMITED),
        (1, 1_000, 3 << 20),
        (2, 10_000, UNLIMITED),
    ] {
        let log = log(harts);
        let h = hits(log);
        let limits = Limits { every, max_bytes };
        let what = describe(log, limits);
        let mut tl = timeline(log, limits);
        // Checkpoints are made on the way the first time.
        assert_eq!(tl.goto(END).unwrap(), Stop::End);
        for (pc, hits) in [(log.loop_pc, &h.at_loop), (log.handler_pc, &h.at_handler)] {
            let mut befores = vec![START, START + 1, END, END + 5, u64::MAX];
            for &x in hits.iter().step_by(hits.len() / 15 + 1) {
                befores.extend([x, x + 1, x - 1]);
            }
            for c in some_checkpoint_counts(every, 12) {
                befores.extend([c, c + 1]);
            }
            befores.extend((0..20).map(|_| START + rng.below(END - START)));
            for &before in &befores {
                let want = last_before(hits, before.min(END));
                let mut hook = |hart: &mut Hart, _: &mut Board| hart.pc() == pc;
                let mut interrupted = false;
                let got = tl
                    .last_before(before, &mut hook, &mut || false, &mut interrupted)
                    .unwrap();
                assert!(!interrupted);
                assert_eq!(got, want, "{what}: last hit of {pc:#x} before {before}");
                // (At or before the start nothing is searched and the machine stays.)
                assert!(
                    before <= START || tl.count() <= before.min(END),
                    "{what}: last_before({before}) left the machine at {}",
                    tl.count()
                );
            }
        }
        // The count found is a state to go to: the handler, about to run.
        let found = {
            let mut hook = |hart: &mut Hart, _: &mut Board| hart.pc() == log.handler_pc;
            let mut interrupted = false;
            tl.last_before(300_500, &mut hook, &mut || false, &mut interrupted)
                .unwrap()
        };
        assert_eq!(found, last_before(&h.at_handler, 300_500));
        let found = found.unwrap();
        assert!((300_000..300_500).contains(&found), "{found}");
        check_goto(&mut tl, found, &reference(log, [found]), "to the hit found");
        assert_eq!(pc(tl.machine()), log.handler_pc);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. A digest that does not match stops the timeline.

fn corrupt(log: &Log, at: usize) -> Vec<Record> {
    let mut records = log.records.clone();
    match &mut records[at] {
        Record::Digest { digest, .. } | Record::End { digest, .. } => digest[7] ^= 1,
        r => panic!("record {at} is not a digest: {r:?}"),
    }
    records
}

fn is_digest_error(r: &Result<Stop, TimelineError>, at: u64) -> bool {
    matches!(r, Err(TimelineError::Follow(FollowError::Digest { count, .. })) if *count == at)
}

#[test]
fn a_wrong_digest_in_the_log_is_an_error() {
    let log = log(1);
    let limits = Limits {
        every: 10_000,
        max_bytes: UNLIMITED,
    };
    let digests: Vec<(usize, u64)> = log
        .records
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Record::Digest { .. } | Record::End { .. }))
        .map(|(i, r)| (i, r.count()))
        .collect();
    // One at the start: the timeline cannot even be made.
    let (first, c) = digests[0];
    assert_eq!(c, START);
    assert!(Timeline::new(&log.initial, corrupt(log, first), limits).is_err());
    // After an input at its count (45_678), at a checkpoint's count (250_000), the end.
    for &(i, at) in &digests[1..] {
        if ![45_678, 250_000, 350_000, END].contains(&at) {
            continue;
        }
        let records = corrupt(log, i);
        let mut tl = Timeline::new(&log.initial, records.clone(), limits).unwrap();
        assert_eq!(tl.goto(at - 1).unwrap(), Stop::Target, "before {at}");
        let r = tl.goto(at);
        assert!(is_digest_error(&r, at), "to {at}: {r:?}");
        // From scratch, in one go past it.
        let mut tl = Timeline::new(&log.initial, records.clone(), limits).unwrap();
        let r = tl.goto(END);
        assert!(is_digest_error(&r, at), "to the end past {at}: {r:?}");
        // Nor can a hooked run pass it.
        let mut tl = Timeline::new(&log.initial, records, limits).unwrap();
        let mut never = |_: &mut Hart, _: &mut Board| false;
        let r = tl.advance(u64::MAX, Some(&mut never), &mut || false);
        assert!(is_digest_error(&r, at), "hooked past {at}: {r:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. The log's end.

#[test]
fn nothing_runs_past_the_end() {
    let log = log(1);
    let truth = reference(log, [START, END - 1, END]);
    for limits in [
        Limits {
            every: 10_000,
            max_bytes: UNLIMITED,
        },
        Limits {
            every: 1 << 40,
            max_bytes: 0,
        },
    ] {
        let mut tl = timeline(log, limits);
        check_goto(&mut tl, END + 1, &truth, "past the end");
        check_goto(&mut tl, u64::MAX, &truth, "far past the end");
        assert_eq!(
            tl.advance(u64::MAX, None, &mut || false).unwrap(),
            Stop::End
        );
        assert_eq!(tl.count(), END);
        assert!(digest(tl.machine()) == truth[&END]);
        check_goto(&mut tl, END - 1, &truth, "just before the end");
        assert_eq!(tl.advance(END + 5, None, &mut || false).unwrap(), Stop::End);
        assert_eq!(tl.count(), END);
        assert!(digest(tl.machine()) == truth[&END]);
        // Before the start is the start.
        check_goto(&mut tl, 0, &truth, "before the start");
        check_goto(&mut tl, END, &truth, "to the end again");
    }
    // A log with no records ends where it starts.
    let mut tl = Timeline::new(
        &log.initial,
        Vec::new(),
        Limits {
            every: 10_000,
            max_bytes: UNLIMITED,
        },
    )
    .unwrap();
    assert_eq!((tl.start(), tl.end()), (START, START));
    assert_eq!(tl.goto(START + 100).unwrap(), Stop::End);
    assert_eq!(tl.count(), START);
    assert!(digest(tl.machine()) == digest(&Machine::restore(&log.initial).unwrap()));
}

// ---------------------------------------------------------------------------------------------
// 6. A debugger's Ctrl-C: `poll`.

/// Run forwards from the start of the long log with `poll` saying stop at once: interrupted
/// somewhere before the end, in the state the reference has there.
fn interrupted_run(every: u64, hooked: bool) -> (Stop, u64, usize) {
    let log = long_log();
    let limits = Limits {
        every,
        max_bytes: UNLIMITED,
    };
    let mut tl = timeline(log, limits);
    let mut polls = 0;
    let mut poll = || {
        polls += 1;
        true
    };
    let mut never = |_: &mut Hart, _: &mut Board| false;
    let hook: Option<ftvm_debug::timeline::Hook> = if hooked { Some(&mut never) } else { None };
    let stop = tl.advance(u64::MAX, hook, &mut poll).unwrap();
    let count = tl.count();
    if stop == Stop::Interrupted {
        assert!(
            count > log.start && count < log.end,
            "interrupted at {count}"
        );
        let truth = reference(log, [count]);
        assert!(
            digest(tl.machine()) == truth[&count],
            "interrupted at {count}: the state differs from the reference's"
        );
        if count == log.start + POLL_STEPS {
            // Settled: the timer interrupt pending there is taken.
            assert_eq!(pc(tl.machine()), log.handler_pc);
        }
        // And on to the end from there.
        assert_eq!(
            tl.advance(u64::MAX, None, &mut || false).unwrap(),
            Stop::End
        );
        assert_eq!(tl.count(), log.end);
    }
    (stop, count, polls)
}

#[test]
fn poll_interrupts_a_long_run_between_two_checkpoints() {
    // Checkpoints rarer than POLL_STEPS (1 << 22): a run of 9 million steps looks at `poll`.
    for hooked in [false, true] {
        let (stop, count, polls) = interrupted_run(1 << 24, hooked);
        assert_eq!(
            (stop, polls),
            (Stop::Interrupted, 1),
            "hooked: {hooked}, at {count}"
        );
    }
    // last_before asks `poll` between checkpoint intervals.
    let log = long_log();
    let mut tl = timeline(
        log,
        Limits {
            every: 1 << 20,
            max_bytes: UNLIMITED,
        },
    );
    assert_eq!(tl.goto(log.end).unwrap(), Stop::End);
    let mut never = |_: &mut Hart, _: &mut Board| false;
    let mut interrupted = false;
    let found = tl
        .last_before(log.end, &mut never, &mut || true, &mut interrupted)
        .unwrap();
    assert_eq!((found, interrupted), (None, true));
}

/// `advance` looks at `poll` only when one `Machine::run` call lasts POLL_STEPS (it returns
/// `Yield`), but every run is cut at the next checkpoint count, the next record and the
/// target: with checkpoints every 1 << 20 (< POLL_STEPS) or records closer than POLL_STEPS,
/// a run never yields, `poll` is never called and a debugger's Ctrl-C goes unheard until the
/// log's end (9 million steps here; a whole recorded run in practice).
#[test]
fn poll_interrupts_a_long_run_with_frequent_checkpoints() {
    for hooked in [false, true] {
        let (stop, count, polls) = interrupted_run(1 << 20, hooked);
        assert_eq!(
            stop,
            Stop::Interrupted,
            "hooked: {hooked}: ran to {count} without stopping, poll was called {polls} times"
        );
    }
}
