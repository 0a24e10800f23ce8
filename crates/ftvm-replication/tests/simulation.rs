//! Deterministic simulation of the pair protocol, in the manner of FoundationDB's simulator and
//! TigerBeetle's VOPR: a seeded scheduler drives three hosts (a primary, a backup, a spare) and
//! the arbiter through message delay, broken links, partitions, process pauses (SIGSTOP and
//! SIGCONT), stalls, crashes and restarts, an arbiter out of reach, for a few seconds of virtual
//! time, then lets the faults stop. Each side's decisions are made by the very state machines
//! the real pair runs (`ftvm_replication::protocol`): when a peer is dead, the lease, what a
//! fenced side may send, when a fenced backup may go live, which held outputs may leave.
//! What the simulation supplies is everything around them: a virtual clock, the network, the
//! arbiter, and a model of the deterministic machine (its state and outputs are a function of
//! the inputs logged at their counts).
//!
//! Invariants, checked on every step:
//! - at most one side releases outputs: once a backup has won its primary's generation and
//!   gone live, that primary never releases another output;
//! - no released output is lost by a failover: the side that goes live has produced every
//!   output anyone released, with the same value, at the same place in its history;
//! - a backup never applies a record its primary did not send (in the order it sent them);
//! - once faults stop, protection comes back: a live primary with an attached backup that
//!   acknowledges its log, and every output the guest produced has left at least once.
//!
//! `FTVM_SIM_SEEDS=N` runs N seeds (default 5000, about 10 s); `FTVM_SIM_SEED=S` runs seed S alone and
//! prints what happens. A failing seed is reported with the command that reproduces it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

use ftvm_replication::protocol::{BackupSide, PrimarySide, Received, Verdict};
use ftvm_replication::{Msg, Timing};

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
/// Each host looks at its state this often (its run loop).
const TICK: u64 = MS;
/// Faults happen during this much virtual time; then none.
const FAULTY: u64 = 2_000 * MS;
/// After the faults, the simulation runs this long and protection must be back.
const QUIET: u64 = 2_000 * MS;
/// The backup's replay may trail by this many instructions before the primary waits.
const MAX_LAG: u64 = 5_000_000;
const HOSTS: usize = 3;

fn timing() -> Timing {
    Timing::new(Duration::from_millis(10), Duration::from_millis(100))
}

/// splitmix64: the only source of randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }
    fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    z = (z ^ (z >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

/// One output of the guest: its place in the guest's history, the count that produced it, and
/// its value (a function of everything before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Out {
    seq: u64,
    count: u64,
    value: u64,
}

/// The deterministic machine: inputs take effect at their counts; each input makes one to
/// three outputs, produced at counts that follow from the state.
#[derive(Clone, Debug)]
struct Model {
    count: u64,
    state: u64,
    /// Outputs to come, at their counts.
    due: VecDeque<(u64, u64)>,
    /// Every output so far.
    history: Vec<Out>,
}

impl Model {
    fn new() -> Model {
        Model {
            count: 0,
            state: 1,
            due: VecDeque::new(),
            history: Vec::new(),
        }
    }

    fn apply(&mut self, input: u64) {
        self.state = mix(self.state ^ mix(input) ^ self.count);
        let n = 1 + self.state % 3;
        for i in 0..n {
            let at = self.count + 1 + mix(self.state + i) % 20_000;
            self.due.push_back((at, mix(self.state ^ i)));
        }
        self.due.make_contiguous().sort();
    }

    /// Run to `target`; the outputs produced on the way.
    fn run_to(&mut self, target: u64) -> Vec<Out> {
        let mut outs = Vec::new();
        while self.due.front().is_some_and(|&(at, _)| at <= target) {
            let Some((at, v)) = self.due.pop_front() else {
                break;
            };
            let o = Out {
                seq: self.history.len() as u64,
                count: at,
                value: v,
            };
            self.history.push(o);
            outs.push(o);
        }
        self.count = self.count.max(target);
        outs
    }
}

/// What the log carries: the initial state, then inputs at their counts, then marks.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rec {
    State(u64, u64, Vec<(u64, u64)>, u64),
    Input(u64, u64),
    Mark(u64),
}

fn encode(recs: &[Rec]) -> Vec<u8> {
    let mut b = Vec::new();
    for r in recs {
        match r {
            Rec::State(count, state, due, outs) => {
                b.push(0);
                for v in [*count, *state, *outs, due.len() as u64] {
                    b.extend_from_slice(&v.to_le_bytes());
                }
                for (a, v) in due {
                    b.extend_from_slice(&a.to_le_bytes());
                    b.extend_from_slice(&v.to_le_bytes());
                }
            }
            Rec::Input(c, v) => {
                b.push(1);
                b.extend_from_slice(&c.to_le_bytes());
                b.extend_from_slice(&v.to_le_bytes());
            }
            Rec::Mark(c) => {
                b.push(2);
                b.extend_from_slice(&c.to_le_bytes());
            }
        }
    }
    b
}

fn decode(mut b: &[u8]) -> Vec<Rec> {
    let word = |b: &mut &[u8]| {
        let (w, rest) = b.split_at(8);
        *b = rest;
        u64::from_le_bytes(w.try_into().unwrap())
    };
    let mut recs = Vec::new();
    while let Some((&tag, rest)) = b.split_first() {
        b = rest;
        recs.push(match tag {
            0 => {
                let (count, state, outs, n) =
                    (word(&mut b), word(&mut b), word(&mut b), word(&mut b));
                let due = (0..n).map(|_| (word(&mut b), word(&mut b))).collect();
                Rec::State(count, state, due, outs)
            }
            1 => Rec::Input(word(&mut b), word(&mut b)),
            _ => Rec::Mark(word(&mut b)),
        });
    }
    recs
}

/// A link between a primary and a backup (one TCP connection).
struct Link {
    ends: [usize; 2],
    broken: bool,
    /// Per direction (0: from ends[0]), when the last message is delivered (TCP keeps order).
    last: [u64; 2],
    /// Every log record the primary sent on it, in order.
    sent: Vec<Rec>,
}

struct Primary {
    machine: Model,
    /// Link to the attached backup and this side's protocol state.
    link: Option<(usize, PrimarySide)>,
    /// Outputs waiting for the backup: (count that produced them, output).
    held: VecDeque<(u64, Out)>,
    /// Log records not yet sent.
    unsent: Vec<Rec>,
    /// Backups that connected and wait to attach (links).
    standby: VecDeque<usize>,
    next_gen: u64,
    next_beat: u64,
}

enum BackupState {
    /// Connected, waiting for `Attach` (sends nothing).
    Waiting,
    Following(BackupSide),
    /// Cut its ties; may race from `free_at`.
    Fenced(u64),
}

struct Backup {
    link: usize,
    generation: u64,
    state: BackupState,
    machine: Option<Model>,
    /// How many of the link's records were applied.
    applied: usize,
    /// Outputs of the replay the primary may not have released yet (by production count).
    unreleased: VecDeque<Out>,
    next_beat: u64,
}

enum Role {
    Primary(Primary),
    Backup(Backup),
    Down,
}

struct Host {
    role: Role,
    /// Frozen (SIGSTOP) until then: it handles nothing before.
    paused_until: u64,
    /// The arbiter cannot be reached from this host until then.
    arbiter_cut_until: u64,
    /// What arrived while it was frozen, in order.
    deferred: VecDeque<Ev>,
}

#[derive(Debug)]
enum Ev {
    Tick(usize),
    Deliver {
        link: usize,
        to: usize,
        msg: Msg,
    },
    Broken {
        link: usize,
        to: usize,
    },
    Restart(usize),
    /// A frozen host thaws: it handles what waited for it, in order.
    Thaw(usize),
}

struct Sim {
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Ev>>,
    hosts: Vec<Host>,
    links: Vec<Link>,
    /// Generation -> the host that won it.
    arbiter: BTreeMap<u64, usize>,
    /// Generation -> its primary.
    gen_primary: BTreeMap<u64, usize>,
    /// Hosts that must never release again (a backup won their generation).
    superseded: Vec<bool>,
    /// Every output released, by its place in the guest's history.
    released: BTreeMap<u64, Out>,
    /// Partition of the replication network until then.
    partition_until: u64,
    trace: bool,
    lost_to_arbiter: bool,
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Sim {
        let mut s = Sim {
            rng: Rng(seed),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            hosts: (0..HOSTS)
                .map(|_| Host {
                    role: Role::Down,
                    paused_until: 0,
                    arbiter_cut_until: 0,
                    deferred: VecDeque::new(),
                })
                .collect(),
            links: Vec::new(),
            arbiter: BTreeMap::new(),
            gen_primary: BTreeMap::new(),
            superseded: vec![false; HOSTS],
            released: BTreeMap::new(),
            partition_until: 0,
            trace,
            lost_to_arbiter: false,
        };
        s.hosts[0].role = Role::Primary(Primary {
            machine: Model::new(),
            link: None,
            held: VecDeque::new(),
            unsent: Vec::new(),
            standby: VecDeque::new(),
            next_gen: 0,
            next_beat: 0,
        });
        s.connect(1, 0);
        s.connect(2, 0);
        for h in 0..HOSTS {
            s.at(0, Ev::Tick(h));
        }
        s
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("{:>10.3} ms  {}", self.now as f64 / MS as f64, what());
        }
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue
            .push(Reverse((t, self.seq, self.events.len() - 1)));
    }

    fn faulty(&self) -> bool {
        self.now < FAULTY
    }

    /// Host `h` connects to `primary` as a backup (it waits to attach).
    fn connect(&mut self, h: usize, primary: usize) {
        // A new process: whatever its host did before does not bind it.
        self.superseded[h] = false;
        let link = self.links.len();
        self.links.push(Link {
            ends: [primary, h],
            broken: false,
            last: [0, 0],
            sent: Vec::new(),
        });
        self.hosts[h].role = Role::Backup(Backup {
            link,
            generation: 0,
            state: BackupState::Waiting,
            machine: None,
            applied: 0,
            unreleased: VecDeque::new(),
            next_beat: 0,
        });
        if let Role::Primary(p) = &mut self.hosts[primary].role {
            p.standby.push_back(link);
        }
        self.log(|| format!("host {h} connects to host {primary} (link {link})"));
    }

    fn send(&mut self, link: usize, from: usize, msg: Msg) {
        let l = &mut self.links[link];
        if l.broken {
            return;
        }
        let dir = usize::from(l.ends[0] != from);
        let to = l.ends[1 - dir];
        if let Msg::Log { bytes, .. } = &msg {
            if dir == 0 {
                l.sent.extend(decode(bytes));
            }
        }
        let mut delay = 20 * US + self.rng.below(200 * US);
        if self.faulty() && self.rng.chance(20_000) {
            delay += self.rng.below(30 * MS); // a slow network moment
        }
        let mut t = self.now + delay;
        if self.partition_until > self.now {
            // TCP retransmits once the partition heals.
            t = t.max(self.partition_until + self.rng.below(5 * MS));
        }
        let l = &mut self.links[link];
        t = t.max(l.last[dir]);
        l.last[dir] = t;
        self.at(t, Ev::Deliver { link, to, msg });
    }

    /// The connection breaks: both ends learn it a moment later.
    fn break_link(&mut self, link: usize) {
        if self.links[link].broken {
            return;
        }
        self.links[link].broken = true;
        let ends = self.links[link].ends;
        for to in ends {
            let mut t = self.now + 50 * US + self.rng.below(MS);
            if self.rng.chance(200_000) {
                // The reset is lost: this end learns it late (a half-open connection).
                t += self.rng.below(40 * MS);
            }
            if self.partition_until > self.now {
                // The other end learns it when the partition heals.
                t = t.max(self.partition_until + self.rng.below(5 * MS));
            }
            self.at(t, Ev::Broken { link, to });
        }
        self.log(|| format!("link {link} breaks"));
    }

    /// Try to win `generation` from host `h`: None if the arbiter is out of reach.
    fn race(&mut self, h: usize, generation: u64) -> Option<bool> {
        if self.hosts[h].arbiter_cut_until > self.now {
            return None;
        }
        let winner = *self.arbiter.entry(generation).or_insert(h);
        if winner == h {
            if let Some(&p) = self.gen_primary.get(&generation) {
                if p != h {
                    self.superseded[p] = true;
                }
            }
        }
        Some(winner == h)
    }

    fn release(&mut self, h: usize, o: Out) -> Result<(), String> {
        if std::env::var("FTVM_SIM_WATCH")
            .ok()
            .and_then(|w| w.parse::<u64>().ok())
            == Some(o.seq)
        {
            self.log(|| format!("host {h} releases output {o:?}"));
        }
        if self.superseded[h] {
            return Err(format!(
                "host {h} released output {} after a backup won its generation and went live",
                o.seq
            ));
        }
        if let Some(prev) = self.released.get(&o.seq) {
            if *prev != o {
                return Err(format!(
                    "output {} released as {o:?} by host {h}, as {prev:?} before",
                    o.seq
                ));
            }
        }
        self.released.insert(o.seq, o);
        Ok(())
    }

    fn stop(&mut self, h: usize, why: &str) {
        self.log(|| format!("host {h} stops: {why}"));
        let links: Vec<usize> = match &self.hosts[h].role {
            Role::Primary(p) => p
                .link
                .iter()
                .map(|(l, _)| *l)
                .chain(p.standby.iter().copied())
                .collect(),
            Role::Backup(b) => vec![b.link],
            Role::Down => vec![],
        };
        for l in links {
            self.break_link(l);
        }
        self.hosts[h].role = Role::Down;
        if self.faulty() || self.rng.chance(1_000_000) {
            let t = self.now + self.rng.range(50 * MS, 400 * MS);
            self.at(t, Ev::Restart(h));
        }
    }

    fn live_primary(&self) -> Option<usize> {
        (0..HOSTS).find(|&h| matches!(self.hosts[h].role, Role::Primary(_)) && !self.superseded[h])
    }

    fn pause(&mut self, h: usize, d: u64) {
        let until = &mut self.hosts[h].paused_until;
        *until = (*until).max(self.now + d);
    }

    /// Whether host `h` holds the only copy of the guest (no other host is a primary that has
    /// not been superseded, or a backup that received the state).
    fn only_copy(&self, h: usize) -> bool {
        let holds = |g: usize| match &self.hosts[g].role {
            Role::Primary(_) => !self.superseded[g],
            // A backup that can still go live: it has the state and its generation is not
            // won by another.
            Role::Backup(b) => {
                b.machine.is_some() && self.arbiter.get(&b.generation).is_none_or(|&w| w == g)
            }
            Role::Down => false,
        };
        holds(h) && !(0..HOSTS).any(|g| g != h && holds(g))
    }

    fn inject_faults(&mut self) {
        if !self.faulty() || !self.rng.chance(3_000) {
            return;
        }
        let h = self.rng.below(HOSTS as u64) as usize;
        match self.rng.below(7) {
            0 => {
                // One failure at a time: the only copy of the guest (a live primary with no
                // backup that holds its state) is not killed.
                if self.only_copy(h) {
                    return;
                }
                self.log(|| format!("host {h} is killed"));
                self.stop(h, "killed");
            }
            1 => {
                let d = self.rng.range(50 * MS, 600 * MS);
                self.pause(h, d);
                self.log(|| format!("host {h} is frozen for {} ms", d / MS));
            }
            2 => {
                let d = self.rng.range(5 * MS, 60 * MS);
                self.pause(h, d);
                self.log(|| format!("host {h} stalls for {} ms", d / MS));
            }
            3 => {
                let d = self.rng.range(20 * MS, 500 * MS);
                self.partition_until = self.now + d;
                self.log(|| format!("the network partitions for {} ms", d / MS));
            }
            4 => {
                let d = self.rng.range(50 * MS, 800 * MS);
                self.hosts[h].arbiter_cut_until = self.now + d;
                self.log(|| format!("host {h} loses the arbiter for {} ms", d / MS));
            }
            _ => {
                if let Some(l) = (0..self.links.len()).rev().find(|&l| !self.links[l].broken) {
                    self.log(|| format!("link {l} is reset"));
                    self.break_link(l);
                }
            }
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let end = FAULTY + QUIET;
        while let Some(Reverse((t, _, i))) = self.queue.pop() {
            if t > end {
                break;
            }
            self.now = t;
            let Some(ev) = self.events[i].take() else {
                continue;
            };
            let h = match &ev {
                Ev::Tick(h) | Ev::Restart(h) | Ev::Thaw(h) => *h,
                Ev::Deliver { to, .. } | Ev::Broken { to, .. } => *to,
            };
            if let Ev::Thaw(h) = ev {
                if self.hosts[h].paused_until > t {
                    let at = self.hosts[h].paused_until;
                    self.at(at, Ev::Thaw(h));
                } else {
                    while let Some(ev) = self.hosts[h].deferred.pop_front() {
                        self.handle(ev)?;
                    }
                }
                continue;
            }
            if self.hosts[h].paused_until > t || !self.hosts[h].deferred.is_empty() {
                // A frozen process handles nothing; what arrives waits, in order, for the thaw.
                if self.hosts[h].deferred.is_empty() {
                    let at = self.hosts[h].paused_until.max(t);
                    self.at(at, Ev::Thaw(h));
                }
                self.hosts[h].deferred.push_back(ev);
                continue;
            }
            self.handle(ev)?;
        }
        self.converged()
    }

    fn handle(&mut self, ev: Ev) -> Result<(), String> {
        match ev {
            Ev::Tick(h) => {
                self.inject_faults();
                self.tick(h)?;
                let next = self.now + TICK;
                self.at(next, Ev::Tick(h));
            }
            Ev::Deliver { link, to, msg } => {
                if !self.links[link].broken {
                    self.deliver(link, to, msg)?;
                }
            }
            Ev::Broken { link, to } => self.broken(link, to),
            Ev::Restart(h) => {
                if matches!(self.hosts[h].role, Role::Down) {
                    match self.live_primary() {
                        Some(p) => self.connect(h, p),
                        None => {
                            let t = self.now + 100 * MS;
                            self.at(t, Ev::Restart(h));
                        }
                    }
                }
            }
            Ev::Thaw(_) => {}
        }
        Ok(())
    }

    fn broken(&mut self, link: usize, to: usize) {
        match &mut self.hosts[to].role {
            Role::Primary(p) => {
                if let Some((l, side)) = &mut p.link {
                    if *l == link {
                        side.link_broke();
                    }
                }
                p.standby.retain(|&l| l != link);
            }
            Role::Backup(b) if b.link == link => match &mut b.state {
                BackupState::Following(side) => side.link_broke(),
                BackupState::Waiting => {
                    // The primary went away before attaching this backup: start over.
                    self.hosts[to].role = Role::Down;
                    let t = self.now + 50 * MS;
                    self.at(t, Ev::Restart(to));
                }
                BackupState::Fenced(_) => {}
            },
            _ => {}
        }
    }

    fn deliver(&mut self, link: usize, to: usize, msg: Msg) -> Result<(), String> {
        let now = self.now;
        match &mut self.hosts[to].role {
            Role::Primary(p) => {
                let Some((l, side)) = &mut p.link else {
                    return Ok(());
                };
                if *l != link {
                    return Ok(());
                }
                side.receive(now, &msg).map_err(|e| e.to_string())?;
            }
            Role::Backup(b) if b.link == link => {
                if let Msg::Attach { generation, .. } = msg {
                    if matches!(b.state, BackupState::Waiting) {
                        b.generation = generation;
                        b.state = BackupState::Following(BackupSide::new(timing(), now));
                    }
                    return Ok(());
                }
                let BackupState::Following(side) = &mut b.state else {
                    return Ok(());
                };
                match side.receive(now, &msg).map_err(|e| e.to_string())? {
                    Received::Released(c) => {
                        while b.unreleased.front().is_some_and(|o| o.count <= c) {
                            if let Some(o) = b.unreleased.pop_front() {
                                if self.trace
                                    && std::env::var("FTVM_SIM_WATCH")
                                        .ok()
                                        .and_then(|w| w.parse::<u64>().ok())
                                        == Some(o.seq)
                                {
                                    eprintln!("            host {to} drops {o:?}: the primary released up to {c}");
                                }
                            }
                        }
                    }
                    Received::Log => {
                        let Msg::Log { bytes, .. } = msg else {
                            unreachable!()
                        };
                        if self.trace {
                            eprintln!(
                                "            deliver to {to} link {link}: {} records from {}",
                                decode(&bytes).len(),
                                b.applied
                            );
                        }
                        let mut marked = None;
                        for r in decode(&bytes) {
                            // A backup never applies a record its primary did not send.
                            let sent = self.links[link].sent.get(b.applied);
                            if sent != Some(&r) {
                                return Err(format!(
                                    "host {to} applies {r:?} as record {} of link {link}; the primary sent {sent:?}",
                                    b.applied
                                ));
                            }
                            b.applied += 1;
                            match r {
                                Rec::State(count, state, due, outs) => {
                                    let mut m = Model::new();
                                    m.count = count;
                                    m.state = state;
                                    m.due = due.into();
                                    // The history before the attach is the primary's: only its
                                    // length matters here.
                                    m.history = vec![
                                        Out {
                                            seq: 0,
                                            count: 0,
                                            value: 0
                                        };
                                        outs as usize
                                    ];
                                    b.machine = Some(m);
                                }
                                Rec::Input(c, v) => {
                                    let m = b.machine.as_mut().ok_or("input before state")?;
                                    b.unreleased.extend(m.run_to(c));
                                    m.apply(v);
                                }
                                Rec::Mark(c) => {
                                    let m = b.machine.as_mut().ok_or("mark before state")?;
                                    b.unreleased.extend(m.run_to(c));
                                    marked = Some(c);
                                }
                            }
                        }
                        if let Some(m) = &b.machine {
                            side.replayed(m.count);
                        }
                        if let Some(c) = marked {
                            if let Some(ack) = side.ack(c) {
                                self.send(link, to, ack);
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn tick(&mut self, h: usize) -> Result<(), String> {
        let now = self.now;
        let role = std::mem::replace(&mut self.hosts[h].role, Role::Down);
        let role = match role {
            Role::Primary(p) => self.tick_primary(h, p)?,
            Role::Backup(b) => self.tick_backup(h, b)?,
            Role::Down => Role::Down,
        };
        if matches!(self.hosts[h].role, Role::Down) {
            self.hosts[h].role = role;
        }
        let _ = now;
        Ok(())
    }

    fn tick_primary(&mut self, h: usize, mut p: Primary) -> Result<Role, String> {
        let now = self.now;
        // The link first: a dead backup makes this side cut its ties and race.
        if let Some((l, side)) = &mut p.link {
            if let Verdict::Race { generation } = side.check(now) {
                let l = *l;
                self.break_link(l);
                p.link = None;
                p.unsent.clear();
                match self.race(h, generation) {
                    Some(true) => {
                        self.log(|| format!("host {h} wins generation {generation}: unprotected"));
                        for (_, o) in std::mem::take(&mut p.held) {
                            self.release(h, o)?;
                        }
                    }
                    Some(false) => {
                        self.hosts[h].role = Role::Primary(p);
                        self.stop(h, "lost the arbiter");
                        return Ok(Role::Down);
                    }
                    None => {
                        self.lost_to_arbiter = true;
                        self.hosts[h].role = Role::Primary(p);
                        self.stop(h, "arbiter out of reach");
                        return Ok(Role::Down);
                    }
                }
            }
        }
        if let Some((_, side)) = &mut p.link {
            let mut out = Vec::new();
            // Each output takes a moment to write (and the process may be descheduled between
            // two), so the lease is asked at a later instant before each one.
            let step = self.rng.range(US, 3 * MS);
            let clock = std::cell::Cell::new(now);
            let later = || {
                clock.set(clock.get() + step);
                clock.get()
            };
            side.release(later, &mut p.held, |(c, _)| *c, |(_, o)| out.push(o));
            for o in out {
                self.release(h, o)?;
            }
        }
        // Attach a waiting backup when unprotected.
        if p.link.is_none() {
            while let Some(l) = p.standby.pop_front() {
                if self.links[l].broken {
                    continue;
                }
                let generation = p.next_gen;
                if self.arbiter.contains_key(&generation) {
                    self.break_link(l);
                    continue;
                }
                p.next_gen += 1;
                self.gen_primary.insert(generation, h);
                self.send(
                    l,
                    h,
                    Msg::Attach {
                        generation,
                        disks: vec![],
                    },
                );
                let m = &p.machine;
                let state = Rec::State(
                    m.count,
                    m.state,
                    m.due.iter().copied().collect(),
                    m.history.len() as u64,
                );
                let mut side = PrimarySide::new(generation, timing(), now, m.count);
                if let Some(msg) = side.log(now, encode(&[state])) {
                    self.send(l, h, msg);
                }
                self.log(|| format!("host {h} attaches link {l} as generation {generation}"));
                p.link = Some((l, side));
                break;
            }
        }
        // Run the guest, unless the backup's replay trails too far.
        let waits = p
            .link
            .as_ref()
            .is_some_and(|(_, s)| p.machine.count.saturating_sub(s.replayed()) > MAX_LAG);
        if !waits {
            if self.rng.chance(300_000) {
                let v = self.rng.next();
                p.unsent.push(Rec::Input(p.machine.count, v));
                p.machine.apply(v);
            }
            let chunk = self.rng.range(1_000, 12_000);
            let target = p.machine.count + chunk;
            let outs = p.machine.run_to(target);
            if p.link.is_some() {
                let produced = !outs.is_empty();
                // Every output of a chunk carries the count where the chunk ended.
                p.held.extend(outs.into_iter().map(|o| (target, o)));
                if produced {
                    p.unsent.push(Rec::Mark(target));
                }
            } else {
                for o in outs {
                    self.release(h, o)?;
                }
            }
        }
        if let Some((l, side)) = &mut p.link {
            let l = *l;
            if !p.unsent.is_empty() {
                if let Some(msg) = side.log(now, encode(&p.unsent)) {
                    self.send(l, h, msg);
                }
                p.unsent.clear();
            }
            if now >= p.next_beat {
                p.next_beat = now + timing().beat.as_nanos() as u64;
                if let Some((_, side)) = &p.link {
                    if let Some(msg) = side.heartbeat(now) {
                        self.send(l, h, msg);
                    }
                }
            }
        } else {
            p.unsent.clear();
        }
        Ok(Role::Primary(p))
    }

    fn tick_backup(&mut self, h: usize, mut b: Backup) -> Result<Role, String> {
        let now = self.now;
        match &mut b.state {
            BackupState::Waiting => {}
            BackupState::Following(side) => {
                if side.is_dead(now) {
                    let free_at = side.fence();
                    self.break_link(b.link);
                    self.log(|| {
                        format!(
                            "host {h} fences; may go live at {:.3} ms",
                            free_at as f64 / MS as f64
                        )
                    });
                    b.state = BackupState::Fenced(free_at);
                } else if now >= b.next_beat {
                    b.next_beat = now + timing().beat.as_nanos() as u64;
                    if let Some(msg) = side.heartbeat() {
                        self.send(b.link, h, msg);
                    }
                }
            }
            BackupState::Fenced(free_at) if now >= *free_at => {
                let Some(machine) = b.machine.take() else {
                    // It never had the guest: it stops and never races.
                    self.hosts[h].role = Role::Backup(b);
                    self.stop(h, "never had the guest");
                    return Ok(Role::Down);
                };
                let generation = b.generation;
                match self.race(h, generation) {
                    Some(true) => {
                        self.log(|| {
                            format!(
                                "host {h} wins generation {generation}: live at count {}",
                                machine.count
                            )
                        });
                        // No released output is lost: this side has produced every one.
                        for (&seq, o) in &self.released {
                            if let Some(mine) = machine.history.get(seq as usize) {
                                if mine.value != 0 && mine != o {
                                    return Err(format!("host {h} goes live with output {seq} = {mine:?}, released as {o:?}"));
                                }
                            } else {
                                return Err(format!(
                                    "host {h} goes live without output {seq} ({o:?}), which was released: its history ends at {}",
                                    machine.history.len()
                                ));
                            }
                        }
                        for o in std::mem::take(&mut b.unreleased) {
                            self.release(h, o)?;
                        }
                        return Ok(Role::Primary(Primary {
                            machine,
                            link: None,
                            held: VecDeque::new(),
                            unsent: Vec::new(),
                            standby: VecDeque::new(),
                            next_gen: generation + 1,
                            next_beat: now,
                        }));
                    }
                    Some(false) => {
                        self.hosts[h].role = Role::Backup(b);
                        self.stop(h, "lost the arbiter");
                        return Ok(Role::Down);
                    }
                    None => {
                        self.lost_to_arbiter = true;
                        self.hosts[h].role = Role::Backup(b);
                        self.stop(h, "arbiter out of reach");
                        return Ok(Role::Down);
                    }
                }
            }
            BackupState::Fenced(_) => {}
        }
        Ok(Role::Backup(b))
    }

    /// After the quiet time: one live primary, protected, and every output out.
    fn converged(&self) -> Result<(), String> {
        let live: Vec<usize> = (0..HOSTS)
            .filter(|&h| matches!(self.hosts[h].role, Role::Primary(_)) && !self.superseded[h])
            .collect();
        if live.is_empty() && self.lost_to_arbiter {
            // Every side that could have gone on asked an arbiter it could not reach: by
            // design that is never a win, so the guest stopped (availability, not safety).
            return Ok(());
        }
        let [p] = live[..] else {
            return Err(format!("after the faults, live primaries: {live:?}"));
        };
        let Role::Primary(pr) = &self.hosts[p].role else {
            unreachable!()
        };
        let Some((_, side)) = &pr.link else {
            return Err(format!(
                "after the faults, host {p} is live but unprotected"
            ));
        };
        if side.acked() + 2 * MAX_LAG < pr.machine.count {
            return Err(format!(
                "after the faults, host {p}'s backup holds the log to {} of {}",
                side.acked(),
                pr.machine.count
            ));
        }
        // Every output the guest produced has left, but those still waiting for the backup.
        let waiting = pr.held.len() as u64;
        for o in &pr.machine.history {
            if o.value == 0 && o.count == 0 {
                continue; // before the attach of a restored history: not tracked
            }
            if !self.released.contains_key(&o.seq)
                && o.seq + waiting < pr.machine.history.len() as u64
            {
                return Err(format!("output {} ({o:?}) never left", o.seq));
            }
        }
        Ok(())
    }
}

fn run_seed(seed: u64, trace: bool) -> Result<(), String> {
    Sim::new(seed, trace).run()
}

#[test]
fn the_pair_protocol_holds_under_every_fault() {
    if let Ok(s) = std::env::var("FTVM_SIM_SEED") {
        let seed: u64 = s.parse().expect("FTVM_SIM_SEED is a number");
        if let Err(e) = run_seed(seed, true) {
            panic!("seed {seed}: {e}");
        }
        return;
    }
    let seeds: u64 = std::env::var("FTVM_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let mut failed = Vec::new();
    for seed in 0..seeds {
        if let Err(e) = run_seed(seed, false) {
            eprintln!("seed {seed}: {e}");
            failed.push(seed);
            if failed.len() >= 5 {
                break;
            }
        }
    }
    assert!(
        failed.is_empty(),
        "failing seeds {failed:?}; reproduce one with FTVM_SIM_SEED=<seed> cargo test --release -p ftvm-replication --test simulation -- --nocapture"
    );
}

/// Seeds that found a lost output: the primary told its backup it had released a whole run
/// chunk's outputs after the first of them left, the lease ran out before the rest did, and
/// the backup dropped them all; then the primary died. (Fixed in `PrimarySide::release`; before the fix each of these seeds failed with
/// `output N ... never left`.)
#[test]
fn seeds_that_lost_an_output_hold() {
    for seed in [41, 1517, 3213, 6963, 9291] {
        if let Err(e) = run_seed(seed, false) {
            panic!("seed {seed}: {e}");
        }
    }
}

#[test]
fn a_seed_reproduces_exactly() {
    let run = |seed| {
        let mut s = Sim::new(seed, false);
        let r = s.run();
        (r, s.released.len(), s.arbiter.clone(), s.seq)
    };
    assert_eq!(run(7), run(7));
}
