//! N-modular redundancy: a leader and N-1 followers that vote.
//!
//! The leader runs the guest live and ships one log to every follower (the same bytes: a
//! member that joins later gets a header at the count where it joins, then the shared
//! stream). Each follower replays it and votes: at each `Mark` of the log, the chain of the
//! hashes of every output it produced since it attached ([`ftvm_runner::vote`]); at each
//! `Digest` record, its state digest. The leader keeps, for each member, the chain of its own
//! outputs since that member attached, and its own digests, and compares.
//!
//! - An output leaves only once a quorum (a majority of the N replicas, the leader among
//!   them) produced the same outputs up to its count, and while the leader holds the output
//!   lease of every member (the pair's rule, per member: no member can have gone live).
//! - A member that disagrees is faulty when another member agrees with the leader past that
//!   point (it is outvoted, 2 against 1): it is told so, cut off, and attaches again (pre-copy,
//!   from the leader's state), while the guest runs on. When every other member disagrees with
//!   the leader too, the leader is the faulty one: it stops, releasing nothing more, and a
//!   follower takes the guest over as after any leader failure. With one member (DMR) a
//!   disagreement cannot tell who is wrong: nothing after it leaves, and the guest stops on
//!   both with a report... unless re-execution settles it: each replica keeps checkpoints
//!   where both agreed and the log since ([`ftvm_runner::recheck`]); on a disagreement both
//!   re-execute from the newest agreed checkpoint and the leader compares the results. A
//!   transient fault does not happen again: the replica whose re-execution changed its result
//!   was the faulty one (a follower attaches again; a leader hands the guest to the
//!   follower). A persistent one repeats on both: the guest stops with that report.
//! - A member that dies or is cut off is dropped the pair's way: the leader fences it, wins the
//!   group's generation on the arbiter (so that member can never go live), and moves the other
//!   members to the next generation (the stamp on its next messages), which is the one they
//!   race for if the leader dies later.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ftvm_runner::live::{Held, LinkError};
use ftvm_runner::recheck::{Request, What};
use ftvm_runner::vote::Chain;
use ftvm_runner::{Link, LinkState};

use crate::channel::{
    VERDICT_REJOIN, VERDICT_STOP, VERDICT_TAKE_OVER, VOTE_DIGEST, VOTE_OUTPUTS,
    VOTE_RECHECKED_DIGEST, VOTE_RECHECKED_OUTPUTS,
};
use crate::lease::now_ns;
use crate::link::{LinkWriter, SendHalf};
use crate::protocol::{PrimarySide, Verdict};
use crate::{Arbiter, PairError};

/// At most this many output points wait for a member's vote; a member that falls this far
/// behind with its votes is dropped (as if it had died).
const MAX_HISTORY: usize = 1 << 20;

/// The leader's digests kept to compare the members' with.
const KEEP_DIGESTS: usize = 64;

/// A follower that does not answer a request to re-execute within this long: the guest stops.
const RECHECK_LIMIT: Duration = Duration::from_secs(60);

/// The log bytes of the leader, sent to every member.
#[derive(Clone, Default)]
pub(crate) struct Fanout(Arc<Mutex<Vec<(u32, LinkWriter)>>>);

impl Fanout {
    fn lock(&self) -> MutexGuard<'_, Vec<(u32, LinkWriter)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn add(&self, id: u32, w: LinkWriter) {
        self.lock().push((id, w));
    }
    fn remove(&self, id: u32) {
        self.lock().retain(|(i, _)| *i != id);
    }
}

impl Write for Fanout {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        for (_, w) in self.lock().iter_mut() {
            w.write_all(b)?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        for (_, w) in self.lock().iter_mut() {
            w.flush()?;
        }
        Ok(())
    }
}

/// A vote's subject.
fn how(what: u8) -> &'static str {
    if what == VOTE_DIGEST {
        "state digest"
    } else {
        "output vote"
    }
}

/// One follower, as the leader sees it.
pub(crate) struct Member {
    /// The replica's number in reports (1, 2, ...; the leader is 0).
    pub(crate) id: u32,
    pub(crate) out: SendHalf<PrimarySide>,
    /// The leader's chain of outputs since this member attached.
    chain: Chain,
    /// The chain's value after the outputs taken at each count, not yet voted on (oldest
    /// first; the first entry is the newest one the member agreed with, or the attach).
    history: VecDeque<(u64, [u8; 32])>,
    /// The member's outputs agree with the leader's up to here.
    outputs_ok: u64,
    /// Its newest state digest that matched the leader's.
    digest_ok: u64,
    /// Where it first disagreed with the leader, how, and its hash there.
    dissent: Option<(u64, u8, [u8; 32])>,
    /// The count at which a fault was injected into it, as it told.
    injected: Option<u64>,
    /// It joined a group that had members already, at this count: its state is a copy of the
    /// leader's, unchecked. Its votes count only once another member's digest matched the
    /// leader's at or after this count (the leader's state there was right), and only for
    /// counts after it. `None`: it started the group.
    joined_at: Option<u64>,
    /// Its votes count (see `joined_at`).
    trusted: bool,
    /// Where it attached, with the chain there (empty): a copy of the leader's state, agreed.
    attach: (u64, [u8; 32]),
    /// The leader's digests since, as this member's chain stood there, and whether the
    /// member's digest there matched (two replicas: where a re-execution may start).
    points: VecDeque<(u64, [u8; 32], bool)>,
}

impl Member {
    /// A member attached at count `at`; `joined`: into a group with members already.
    pub(crate) fn new(id: u32, out: SendHalf<PrimarySide>, at: u64, joined: bool) -> Member {
        Member {
            id,
            out,
            chain: Chain::default(),
            history: VecDeque::from([(at, [0; 32])]),
            outputs_ok: at,
            digest_ok: 0,
            dissent: None,
            injected: None,
            joined_at: joined.then_some(at),
            trusted: !joined,
            attach: (at, [0; 32]),
            points: VecDeque::new(),
        }
    }

    /// The newest checkpoint where this member agreed with the leader on the state and on
    /// every output before it, no later than `count`: its count and the chain there.
    fn agreed_point(&self, count: u64) -> Option<(u64, [u8; 32])> {
        self.points
            .iter()
            .rev()
            .find(|(c, _, agreed)| *agreed && *c <= count && *c <= self.outputs_ok)
            .map(|(c, h, _)| (*c, *h))
            .or((self.attach.0 <= count).then_some(self.attach))
    }

    /// Whether this member's votes say the leader's outputs up to `count` are right.
    fn vouches(&self, count: u64) -> bool {
        self.trusted && self.outputs_ok >= count && self.joined_at.is_none_or(|j| count > j)
    }

    /// The leader's chain for this member after every output up to `count`.
    fn chain_at(&self, count: u64) -> Option<[u8; 32]> {
        self.history
            .iter()
            .rev()
            .find(|(c, _)| *c <= count)
            .map(|(_, h)| *h)
    }

    /// Whether this member confirms the leader at `count` for a dissent of kind `what`.
    fn confirms(&self, count: u64, what: u8) -> bool {
        self.trusted
            && self.dissent.is_none()
            && self.joined_at.is_none_or(|j| count > j)
            && (self.digest_ok >= count || (what == VOTE_OUTPUTS && self.outputs_ok >= count))
    }
}

/// What the group decided about a dissent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Judgement {
    /// Nothing to decide (or not yet: a vote is still to come).
    Wait,
    /// These members are outvoted.
    Faulty(Vec<usize>),
    /// The leader is outvoted: every other member disagrees with it.
    LeaderFaulty,
    /// Two replicas disagree and there is no third: member `0` (index) and the leader.
    Undecidable(usize),
}

/// Decide, from each member's standing, who is faulty (one fault at a time is assumed).
pub(crate) fn judge(members: &[Member]) -> Judgement {
    let mut faulty = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let Some((count, what, _)) = m.dissent else {
            continue;
        };
        // The other members with a say (one that joined and is not trusted yet is a copy of
        // the leader's state).
        let others: Vec<&Member> = members
            .iter()
            .enumerate()
            .filter(|(j, o)| *j != i && o.trusted)
            .map(|(_, o)| o)
            .collect();
        if others.is_empty() {
            return Judgement::Undecidable(i);
        }
        if others.iter().all(|o| o.dissent.is_some()) {
            return Judgement::LeaderFaulty;
        }
        if others.iter().any(|o| o.confirms(count, what)) {
            faulty.push(i);
        }
    }
    if faulty.is_empty() {
        Judgement::Wait
    } else {
        Judgement::Faulty(faulty)
    }
}

pub(crate) struct GroupState {
    /// N: the replicas the group has when whole (the leader among them).
    replicas: usize,
    pub(crate) members: Vec<Member>,
    /// The arbiter generation the members race for if the leader dies (not won yet).
    pub(crate) generation: u64,
    arbiter: Arbiter,
    pub(crate) fanout: Fanout,
    /// The leader's recent digests.
    digests: VecDeque<(u64, [u8; 32])>,
    /// How far (instructions) the quorum's replay may trail before the guest waits.
    max_lag: u64,
    next_id: u32,
    /// Set when this leader must release nothing more (it was outvoted, or a disagreement
    /// stops the guest, or a re-execution has to settle one).
    stopped: bool,
    /// Two replicas disagree and re-execute to settle it.
    recheck: Option<Recheck>,
}

/// A re-execution under way (two replicas that disagree).
struct Recheck {
    /// The member (its id).
    id: u32,
    /// Where they disagree, and how.
    count: u64,
    what: u8,
    /// The leader's value there (output chain or digest), and the member's.
    leader: [u8; 32],
    member: [u8; 32],
    /// The request for the leader's own re-execution (taken by the runner once).
    request: Option<Request>,
    from: u64,
    /// The leader's re-execution, then the member's.
    ours: Option<Result<[u8; 32], String>>,
    theirs: Option<[u8; 32]>,
    since: Instant,
    /// When this side's re-execution ended.
    ours_at: Option<Instant>,
    /// Why it settled nothing.
    why: Option<String>,
}

/// What two re-executions say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The member's changed to the leader's first result: it had a transient fault.
    Member,
    /// The leader's changed to the member's first result: the leader had it.
    Leader,
    /// Both repeated their first results: a persistent fault (or one the re-executions do
    /// not explain).
    Neither,
}

/// Compare two re-executions with the first results.
pub(crate) fn settle(
    leader: [u8; 32],
    member: [u8; 32],
    ours: Result<[u8; 32], String>,
    theirs: [u8; 32],
) -> Settled {
    match ours {
        Ok(o) if o == leader && theirs == leader => Settled::Member,
        Ok(o) if o == member && theirs == member => Settled::Leader,
        _ => Settled::Neither,
    }
}

impl GroupState {
    /// The votes an output needs: a majority of N, or every replica there is when fewer are.
    fn quorum(&self) -> usize {
        (self.replicas / 2 + 1).min(1 + self.members.len())
    }

    pub(crate) fn next_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    fn count_votes(&mut self) {
        let digests = &self.digests;
        for m in &mut self.members {
            for (what, count, hash, injected) in m.out.with(|s| s.take_votes()) {
                if injected != u64::MAX {
                    m.injected = Some(injected);
                }
                if what == VOTE_RECHECKED_OUTPUTS || what == VOTE_RECHECKED_DIGEST {
                    if let Some(r) = self
                        .recheck
                        .as_mut()
                        .filter(|r| r.id == m.id && r.count == count)
                    {
                        r.theirs = Some(hash);
                    }
                    continue;
                }
                let ours = if what == VOTE_OUTPUTS {
                    m.chain_at(count)
                } else {
                    digests.iter().find(|(c, _)| *c == count).map(|(_, d)| *d)
                };
                let Some(ours) = ours else { continue };
                if ours != hash {
                    m.dissent.get_or_insert((count, what, hash));
                } else if what == VOTE_OUTPUTS {
                    m.outputs_ok = m.outputs_ok.max(count);
                    while m.history.len() >= 2 && m.history[1].0 <= count {
                        m.history.pop_front();
                    }
                } else {
                    m.digest_ok = m.digest_ok.max(count);
                    if let Some(p) = m.points.iter_mut().find(|p| p.0 == count) {
                        p.2 = true;
                    }
                }
            }
        }
        // A member that joined is trusted once another (trusted, agreeing) member's digest
        // matched the leader's at or after its join.
        for i in 0..self.members.len() {
            if let Some(j) = self.members[i]
                .joined_at
                .filter(|_| !self.members[i].trusted)
            {
                let confirmed =
                    self.members.iter().enumerate().any(|(k, o)| {
                        k != i && o.trusted && o.dissent.is_none() && o.digest_ok >= j
                    });
                if confirmed {
                    self.members[i].trusted = true;
                }
            }
        }
    }

    /// Cut member `i` off and drop it: fenced, its link closed, no log for it any more.
    fn remove(&mut self, i: usize) -> Member {
        let m = self.members.remove(i);
        m.out.cut_if(|s| {
            s.give_up();
            ((), true)
        });
        self.fanout.remove(m.id);
        m
    }

    /// Tell member `i` the group's verdict (it is fenced from then on; the caller removes it).
    fn tell(&self, i: usize, count: u64, what: u8, action: u8) {
        self.members[i]
            .out
            .send_with(|s| s.verdict(count, what, action));
    }

    /// Wait (2 s at most) for member `i` to close its link, as it does once it has taken a
    /// verdict (closing first could lose the verdict: a reset discards what the peer has not
    /// read yet).
    fn await_close(&self, i: usize) {
        let t0 = Instant::now();
        while !self.members[i].out.with(|s| s.broken()) && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Fence every member's link: nothing of this side's leaves or counts any more.
    fn fence_all(&self) {
        for m in &self.members {
            m.out.cut_if(|s| {
                s.give_up();
                ((), true)
            });
        }
    }

    fn report(&self, m: &Member, count: u64, what: u8, rest: &str) {
        let injected = m.injected.map_or(String::new(), |i| {
            format!(
                "; its fault was injected at instruction {i}: found {} instructions later",
                count.saturating_sub(i)
            )
        });
        eprintln!(
            "\r\nftvm: fault detected: replica {} disagrees with the leader at instruction {count} ({}){injected}; {rest}\r",
            m.id,
            how(what)
        );
    }

    fn check(&mut self) -> Result<LinkState, LinkError> {
        let now = now_ns();
        self.count_votes();
        let mut lost: Vec<Member> = Vec::new();
        let mut outvoted: Vec<Member> = Vec::new();
        // Members that died or stopped answering (or fell too far behind with their votes).
        let mut i = 0;
        while i < self.members.len() {
            let m = &self.members[i];
            let behind = m.history.len() > MAX_HISTORY;
            let verdict = m.out.cut_if(|s| {
                if behind {
                    s.give_up();
                }
                let v = s.check(now);
                (v, matches!(v, Verdict::Race { .. }))
            });
            if matches!(verdict, Verdict::Race { .. }) {
                let m = self.remove(i);
                eprintln!(
                    "\r\nftvm: replica {} is gone{}\r",
                    m.id,
                    if behind { " (it stopped voting)" } else { "" }
                );
                lost.push(m);
            } else {
                i += 1;
            }
        }
        let judgement = if self.recheck.is_some() {
            self.settle_recheck(&mut outvoted)?
        } else {
            judge(&self.members)
        };
        match judgement {
            Judgement::Wait => {}
            Judgement::Faulty(mut idx) => {
                idx.sort_unstable_by(|a, b| b.cmp(a));
                for i in idx {
                    let (count, what, _) = self.members[i].dissent.unwrap_or_default();
                    self.report(
                        &self.members[i],
                        count,
                        what,
                        "it is outvoted, cut off, and repaired by attaching again from this replica's state",
                    );
                    // Told first; its link closes once the leader won its generation (below),
                    // so that it can never go live, even if the verdict is lost on its way.
                    self.tell(i, count, what, VERDICT_REJOIN);
                    outvoted.push(self.members.remove(i));
                }
            }
            Judgement::LeaderFaulty => {
                self.stopped = true;
                let (count, what, _) = self.members[0].dissent.unwrap_or_default();
                let ids: Vec<String> = self.members.iter().map(|m| m.id.to_string()).collect();
                // Every member fenced: nothing of this side's leaves or counts any more; the
                // members find the leader gone and one of them takes the guest over.
                self.fence_all();
                return Err(Box::new(PairError::Replaced {
                    why: format!(
                        "fault detected: this replica (the leader) disagrees with replicas {} at instruction {count} ({}): it is outvoted and stops, its held outputs never leave; a follower takes the guest over",
                        ids.join(" and "),
                        how(what)
                    ),
                    generation: self.generation,
                }));
            }
            Judgement::Undecidable(i) if self.start_recheck(i) => {}
            Judgement::Undecidable(i) => {
                self.stopped = true;
                let (count, what, _) = self.members[i].dissent.unwrap_or_default();
                let released = self.members[i].out.with(|s| s.released());
                self.report(
                    &self.members[i],
                    count,
                    what,
                    "with two replicas neither can be trusted: the guest stops on both",
                );
                // The generation first, so that the member can never go live, whether the verdict
                // reaches it or not.
                let generation = self.generation;
                let won = self.arbiter.test_and_set(generation, "primary");
                self.tell(i, count, what, VERDICT_STOP);
                self.await_close(i);
                let m = self.remove(i);
                if !matches!(won, Ok(true)) {
                    tracing::warn!(
                        generation,
                        "the arbiter did not give this leader the generation of the member it stops"
                    );
                }
                let settled = self.recheck.take().map_or(String::new(), |r| {
                    format!(
                        "; re-executed from instruction {}, where they last agreed: {}",
                        r.from,
                        r.why.unwrap_or_default()
                    )
                });
                return Err(Box::new(PairError::Lost(format!(
                    "fault detected: replica {} and this replica disagree at instruction {count} ({}){settled}: no output after instruction {} left; the guest stops",
                    m.id,
                    how(what),
                    released
                ))));
            }
        }
        if !lost.is_empty() || !outvoted.is_empty() {
            // No member that left may ever go live: win the generation they would race for,
            // then move the others on to the next one.
            let generation = self.generation;
            let won = self.arbiter.test_and_set(generation, "primary");
            for m in outvoted {
                m.out.cut_if(|_| ((), true));
                self.fanout.remove(m.id);
                lost.push(m);
            }
            if !won.map_err(PairError::from)? {
                self.stopped = true;
                return Err(Box::new(PairError::Lost(format!(
                    "replica {} won generation {generation} of the arbiter: this leader was stopped, stalled or cut off from it, and stops its guest",
                    lost[0].id
                ))));
            }
            self.generation = generation + 1;
            for m in &self.members {
                m.out.with(|s| s.set_generation(generation + 1));
                m.out.set_generation(generation + 1);
                m.out.send_with(|s| s.heartbeat(now_ns()));
            }
        }
        if self.members.is_empty() {
            return Ok(LinkState::Unprotected);
        }
        Ok(LinkState::Protected(self.acked()))
    }

    /// Two replicas disagree (member `i` and the leader): ask both to re-execute from where
    /// they last agreed, holding every output meanwhile. False when that cannot be done (no
    /// agreed checkpoint, or more replicas than two): the guest stops.
    fn start_recheck(&mut self, i: usize) -> bool {
        if self.replicas != 2 || self.recheck.is_some() {
            return false;
        }
        let m = &self.members[i];
        let Some((count, what, member)) = m.dissent else {
            return false;
        };
        let leader = if what == VOTE_OUTPUTS {
            m.chain_at(count)
        } else {
            self.digests
                .iter()
                .find(|(c, _)| *c == count)
                .map(|(_, d)| *d)
        };
        let (Some(leader), Some((from, base))) = (leader, m.agreed_point(count)) else {
            return false;
        };
        self.stopped = true;
        eprintln!(
            "\r\nftvm: replica {} disagrees with the leader at instruction {count} ({}); both re-execute from instruction {from}, where they last agreed, to tell which one is wrong\r",
            m.id,
            how(what)
        );
        m.out.send_with(|s| s.recheck(from, count, what));
        self.recheck = Some(Recheck {
            id: m.id,
            count,
            what,
            leader,
            member,
            request: Some(Request {
                from,
                base: Some(base),
                to: count,
                what: if what == VOTE_DIGEST {
                    What::Digest
                } else {
                    What::Outputs
                },
            }),
            from,
            ours: None,
            theirs: None,
            since: Instant::now(),
            ours_at: None,
            why: None,
        });
        true
    }

    /// Where a re-execution stands: wait for both results, then act on them (a member that
    /// was wrong joins `outvoted`; a leader that was wrong stops, an error).
    fn settle_recheck(&mut self, outvoted: &mut Vec<Member>) -> Result<Judgement, LinkError> {
        let Some(r) = &self.recheck else {
            return Ok(Judgement::Wait);
        };
        let i = self.members.iter().position(|m| m.id == r.id);
        let (Some(ours), Some(i)) = (r.ours.clone(), i) else {
            if i.is_none() {
                // The member went (dropped above, the pair's way) before it answered: one
                // re-execution cannot tell a transient fault of the member's from a persistent
                // one of this side's (both repeat this side's result). Nothing after the
                // disagreement leaves; the member, disputed, does not go live either.
                self.stopped = true;
                return Err(Box::new(PairError::Lost(format!(
                    "fault detected: replica {} and this replica disagree at instruction {} ({}), and replica {} went before the re-execution settled it: no output after the disagreement left; the guest stops",
                    r.id, r.count, how(r.what), r.id
                ))));
            }
            return Ok(Judgement::Wait);
        };
        let Some(theirs) = r.theirs else {
            // The member re-executes as much as this side did: it gets the limit beyond three
            // times this side's own time.
            let own = r.ours_at.map_or(Duration::ZERO, |t| t - r.since);
            let limit = RECHECK_LIMIT + own * 3;
            if r.ours_at.is_some_and(|t| t.elapsed() > limit) {
                if let Some(r) = &mut self.recheck {
                    r.why = Some(format!(
                        "replica {} did not re-execute within {} s",
                        r.id,
                        limit.as_secs()
                    ));
                }
                return Ok(Judgement::Undecidable(i));
            }
            return Ok(Judgement::Wait);
        };
        let (count, what, from, id) = (r.count, r.what, r.from, r.id);
        match settle(r.leader, r.member, ours.clone(), theirs) {
            Settled::Member => {
                self.recheck = None;
                self.stopped = false;
                self.report(
                    &self.members[i],
                    count,
                    what,
                    &format!("re-executed from instruction {from}, both replicas repeat the leader's result: replica {id} had a transient fault; it is cut off and repaired by attaching again"),
                );
                self.tell(i, count, what, VERDICT_REJOIN);
                outvoted.push(self.members.remove(i));
                Ok(Judgement::Wait)
            }
            Settled::Leader => {
                eprintln!(
                    "\r\nftvm: re-executed from instruction {from}, both replicas repeat replica {id}'s result at instruction {count} ({}): this replica (the leader) had a transient fault\r",
                    how(what)
                );
                // The follower goes live once it has the word; this side never releases
                // anything again and leaves the generation to it.
                self.tell(i, count, what, VERDICT_TAKE_OVER);
                self.await_close(i);
                self.fence_all();
                Err(Box::new(PairError::Replaced {
                    why: format!(
                        "fault detected: this replica (the leader) disagreed with replica {id} at instruction {count} ({}) and did not repeat its own result when it re-executed (a transient fault): it stops, its held outputs never leave; replica {id} takes the guest over",
                        how(what)
                    ),
                    generation: self.generation,
                }))
            }
            Settled::Neither => {
                let why = match ours {
                    Err(e) => format!("this replica could not re-execute: {e}"),
                    Ok(o) if o == r.leader && theirs == r.member => {
                        "each repeated its own first result: a persistent fault".to_string()
                    }
                    Ok(_) if theirs != r.leader && theirs != r.member => {
                        format!("replica {id} gave neither result (it could not re-execute)")
                    }
                    Ok(_) => "the re-executions settle nothing".to_string(),
                };
                if let Some(r) = &mut self.recheck {
                    r.why = Some(why);
                }
                Ok(Judgement::Undecidable(i))
            }
        }
    }

    fn acked(&self) -> u64 {
        let mut ok: Vec<u64> = self.members.iter().map(|m| m.outputs_ok).collect();
        ok.sort_unstable_by(|a, b| b.cmp(a));
        let need = self.quorum().saturating_sub(1);
        if need == 0 {
            return u64::MAX;
        }
        ok.get(need - 1).copied().unwrap_or(0)
    }

    fn release(&self, held: &mut VecDeque<Held>, emit: &mut dyn FnMut(Held)) {
        if self.stopped {
            return;
        }
        let q = self.quorum();
        while let Some(c) = held.front().map(|h| h.0) {
            let votes = 1 + self.members.iter().filter(|m| m.vouches(c)).count();
            if votes < q {
                return;
            }
            // The lease of every member, asked right before the output leaves.
            let now = now_ns();
            if !self
                .members
                .iter()
                .all(|m| m.out.with(|s| s.may_release(now)))
            {
                return;
            }
            let Some(out) = held.pop_front() else { return };
            emit(out);
            if held.front().is_none_or(|next| next.0 != c) {
                for m in &self.members {
                    m.out.with(|s| s.released_to(c));
                }
            }
        }
    }
}

/// The leader's link to its followers (shared with the [`crate::primary::Protector`] that
/// attaches them).
#[derive(Clone)]
pub struct Group(pub(crate) Arc<Mutex<GroupState>>);

impl Group {
    pub(crate) fn new(
        replicas: usize,
        generation: u64,
        arbiter: Arbiter,
        fanout: Fanout,
        max_lag: u64,
    ) -> Group {
        Group(Arc::new(Mutex::new(GroupState {
            replicas,
            members: Vec::new(),
            generation,
            arbiter,
            fanout,
            digests: VecDeque::new(),
            max_lag,
            next_id: 0,
            stopped: false,
            recheck: None,
        })))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether another follower may join now.
    pub(crate) fn has_room(&self) -> bool {
        let g = self.lock();
        !g.members.is_empty() && !g.stopped && g.members.len() + 1 < g.replicas
    }
}

impl Link for Group {
    fn check(&mut self) -> Result<LinkState, LinkError> {
        self.lock().check()
    }
    fn release(&self, held: &mut VecDeque<Held>, emit: &mut dyn FnMut(Held)) {
        self.lock().release(held, emit)
    }
    fn acked(&self) -> u64 {
        self.lock().acked()
    }
    fn generation(&self) -> u64 {
        self.lock().generation
    }
    fn too_far_ahead(&self, count: u64) -> bool {
        let g = self.lock();
        let mut replayed: Vec<u64> = g
            .members
            .iter()
            .map(|m| m.out.with(|s| s.replayed()))
            .collect();
        replayed.sort_unstable_by(|a, b| b.cmp(a));
        let need = g.quorum().saturating_sub(1);
        need > 0
            && replayed
                .get(need - 1)
                .is_some_and(|r| count.saturating_sub(*r) > g.max_lag)
    }
    fn hung_up(&self, limit: Duration) -> bool {
        let t0 = Instant::now();
        loop {
            if self
                .lock()
                .members
                .iter()
                .all(|m| m.out.with(|s| s.broken()))
            {
                return true;
            }
            if t0.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    fn votes(&self) -> bool {
        true
    }
    fn outputs(&self, count: u64, hashes: &[[u8; 32]]) {
        let mut g = self.lock();
        for m in &mut g.members {
            for h in hashes {
                m.chain.add(h);
            }
            m.history.push_back((count, m.chain.0));
        }
    }
    fn digest(&self, count: u64, digest: [u8; 32]) {
        let mut g = self.lock();
        if g.digests.len() >= KEEP_DIGESTS {
            g.digests.pop_front();
        }
        g.digests.push_back((count, digest));
        for m in &mut g.members {
            if m.points.len() >= KEEP_DIGESTS {
                m.points.pop_front();
            }
            m.points.push_back((count, m.chain.0, false));
        }
    }
    fn rechecks(&self) -> bool {
        self.lock().replicas == 2
    }
    fn agreed(&self) -> u64 {
        let g = self.lock();
        g.members
            .iter()
            .map(|m| m.agreed_point(u64::MAX).map_or(0, |p| p.0))
            .min()
            .unwrap_or(0)
    }
    fn recheck(&self) -> Option<Request> {
        self.lock().recheck.as_mut().and_then(|r| r.request.take())
    }
    fn rechecked(&self, result: Result<[u8; 32], String>) {
        if let Some(r) = self.lock().recheck.as_mut() {
            r.ours = Some(result);
            r.ours_at = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_half() -> SendHalf<PrimarySide> {
        let ((tx, _), _) = crate::transport::memory::pair();
        let timing =
            crate::lease::Timing::new(Duration::from_millis(10), Duration::from_millis(100));
        let side = PrimarySide::new(0, timing, 0, 0);
        SendHalf::new(tx, Duration::from_secs(1), side).unwrap()
    }

    fn member(dissent: Option<(u64, u8)>, outputs_ok: u64, digest_ok: u64) -> Member {
        Member {
            id: 1,
            out: dead_half(),
            chain: Chain::default(),
            history: VecDeque::new(),
            outputs_ok,
            digest_ok,
            dissent: dissent.map(|(c, w)| (c, w, [0; 32])),
            injected: None,
            joined_at: None,
            trusted: true,
            attach: (0, [0; 32]),
            points: VecDeque::new(),
        }
    }

    #[test]
    fn one_member_against_the_leader_and_another_is_outvoted() {
        let ms = [
            member(Some((100, VOTE_OUTPUTS)), 50, 0),
            member(None, 120, 0),
        ];
        assert_eq!(judge(&ms), Judgement::Faulty(vec![0]));
    }

    #[test]
    fn a_dissent_waits_for_the_other_members_vote() {
        let ms = [
            member(Some((100, VOTE_OUTPUTS)), 50, 0),
            member(None, 90, 0),
        ];
        assert_eq!(judge(&ms), Judgement::Wait);
    }

    #[test]
    fn a_digest_dissent_needs_a_digest_to_confirm_the_leader() {
        let ms = [
            member(Some((100, VOTE_DIGEST)), 150, 0),
            member(None, 150, 0),
        ];
        assert_eq!(judge(&ms), Judgement::Wait);
        let ms = [
            member(Some((100, VOTE_DIGEST)), 150, 0),
            member(None, 0, 100),
        ];
        assert_eq!(judge(&ms), Judgement::Faulty(vec![0]));
    }

    #[test]
    fn a_leader_that_every_member_disagrees_with_is_outvoted() {
        let ms = [
            member(Some((100, VOTE_OUTPUTS)), 50, 0),
            member(Some((100, VOTE_OUTPUTS)), 50, 0),
        ];
        assert_eq!(judge(&ms), Judgement::LeaderFaulty);
    }

    #[test]
    fn a_member_that_joined_has_no_say_before_it_is_trusted() {
        let mut joiner = member(None, 200, 0);
        joiner.joined_at = Some(150);
        joiner.trusted = false;
        // Its state is the leader's copy: a dissenter is not outvoted by it...
        let ms = [member(Some((100, VOTE_OUTPUTS)), 50, 0), joiner];
        assert_eq!(judge(&ms), Judgement::Undecidable(0));
        // ...nor vouches for outputs before it joined, even once trusted.
        let mut j = member(None, 200, 0);
        j.joined_at = Some(150);
        assert!(!j.vouches(120) && j.vouches(180));
        assert!(!j.confirms(120, VOTE_OUTPUTS) && j.confirms(180, VOTE_OUTPUTS));
    }

    #[test]
    fn two_replicas_cannot_tell_who_is_wrong() {
        let ms = [member(Some((100, VOTE_DIGEST)), 50, 0)];
        assert_eq!(judge(&ms), Judgement::Undecidable(0));
        assert_eq!(judge(&[member(None, 50, 0)]), Judgement::Wait);
    }

    #[test]
    fn a_reexecution_starts_where_state_and_outputs_last_agreed() {
        let mut m = member(Some((300, VOTE_OUTPUTS)), 250, 200);
        m.points.extend([
            (100, [1; 32], true),
            (150, [5; 32], false),
            (200, [2; 32], true),
            (300, [3; 32], false),
        ]);
        // 200: its digest matched and its outputs agreed past it; 150's digest did not match.
        assert_eq!(m.agreed_point(300), Some((200, [2; 32])));
        // Outputs agreed only up to 180: the chain at 200 may hold a wrong output.
        m.outputs_ok = 180;
        assert_eq!(m.agreed_point(300), Some((100, [1; 32])));
        // No digest matched: only the attach (a copy of the leader's state) is agreed, even
        // when the list of points no longer begins with it.
        for p in &mut m.points {
            p.2 = false;
        }
        m.points.pop_front();
        assert_eq!(m.agreed_point(300), Some((0, [0; 32])));
        assert_eq!(m.agreed_point(u64::MAX), Some((0, [0; 32])));
    }

    #[test]
    fn two_reexecutions_tell_a_transient_fault_from_a_persistent_one() {
        let (l, f) = ([1; 32], [2; 32]);
        // Both re-executions give the leader's result: the member's first one was wrong.
        assert_eq!(settle(l, f, Ok(l), l), Settled::Member);
        // Both give the member's: the leader's was.
        assert_eq!(settle(l, f, Ok(f), f), Settled::Leader);
        // Each repeats its own (a persistent fault), or they match nothing, or one failed.
        assert_eq!(settle(l, f, Ok(l), f), Settled::Neither);
        assert_eq!(settle(l, f, Ok([3; 32]), [3; 32]), Settled::Neither);
        assert_eq!(
            settle(l, f, Err("no checkpoint".into()), l),
            Settled::Neither
        );
    }
}
