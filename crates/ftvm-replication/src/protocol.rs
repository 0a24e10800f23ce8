//! The pair's rules as two state machines with no I/O, no threads and no clock of their own:
//! what each side knows of the other, when it takes its peer for dead, when the primary may
//! release outputs (its lease), what a side may still send once it cut its ties (nothing), and
//! when a fenced backup may go live. Time is given to every call (nanoseconds of the side's own
//! clock: CLOCK_BOOTTIME in production, a virtual clock in the simulation test), so the same
//! code runs the real pair (`primary`, `backup`, which do the I/O) and the seeded simulation
//! (`tests/simulation.rs`). See [`crate::lease`] for why the timing rules are safe.
//!
//! The life of a link, on each side:
//!
//! ```text
//! primary:  Protected --(peer dead: broken link or silence > D)--> Fenced --race--> won: unprotected
//!                                                                             \--> lost: stop
//! backup:   Following --(peer dead)--> Fenced --(wait until free_at)--> race --> won: live
//!                                                                           \--> lost: stop
//! ```
//!
//! A fenced side sends nothing more on the link and takes nothing from it.

use std::collections::VecDeque;
use std::time::Duration;

use thiserror::Error;

use crate::channel::Msg;
use crate::lease::Timing;
use crate::wire::Kind;

/// Nanoseconds on a side's own clock.
pub type Nanos = u64;

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// The name of a message, for errors.
pub fn msg_name(m: &Msg) -> &'static str {
    Kind::of(m).name()
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The peer sent a message its role may not send in this state.
    #[error("the {from} sent {what} {when}")]
    Unexpected {
        from: &'static str,
        what: &'static str,
        when: &'static str,
    },
}

/// What a received message was, for the caller's I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// Nothing to do: this side cut its ties, the message does not count.
    Ignored,
    /// The backup holds the log up to this count (outputs up to it may leave under the lease).
    Acked(u64),
    /// The backup's heartbeat.
    Beat,
    /// Log bytes to decode and follow.
    Log,
    /// Disk contents to write.
    Disk,
    /// The primary's heartbeat: it released outputs up to this count.
    Released(u64),
    /// A replica's vote (N-modular redundancy), kept for the group to count.
    Vote,
    /// The group found this replica faulty (N-modular redundancy).
    Verdict { count: u64, how: u8, action: u8 },
    /// The group asks this replica to re-execute (see [`Msg::Recheck`]).
    Recheck { from: u64, to: u64, how: u8 },
    /// The primary stopped its guest and hands it over at `count`.
    HandOver {
        count: u64,
        released: u64,
        missing: Vec<u8>,
    },
}

/// What the primary's check of its link decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The backup holds the log up to `acked`.
    Protected { acked: u64 },
    /// The backup is taken for dead and this side cut its ties: race the arbiter for the
    /// generation. (From now on the answer is always this.)
    Race { generation: u64 },
}

/// The primary's side of one link (one generation).
#[derive(Clone, Debug)]
pub struct PrimarySide {
    generation: u64,
    timing: Timing,
    last_heard: Nanos,
    broken: bool,
    fenced: bool,
    /// Outputs may leave before this instant (0: never renewed).
    lease_until: Nanos,
    /// The backup holds the log up to here.
    acked: u64,
    /// The backup has replayed up to here (from its heartbeats).
    replayed: u64,
    /// Outputs produced up to here were released.
    released: u64,
    /// The guest was handed over at this count (live migration).
    handed_over: Option<u64>,
    /// The backup acknowledged the hand-over.
    hand_over_confirmed: bool,
    /// Votes received (N-modular redundancy), for the group to count: `(what, count, hash,
    /// injected)`.
    votes: VecDeque<(u8, u64, [u8; 32], u64)>,
    /// The stamp of the newest log message sent, and whether the backup has yet to echo it.
    sent: Nanos,
    unanswered: bool,
}

/// At most this many votes wait to be counted; older ones are dropped (a vote on the outputs
/// covers all those before it, so only the newest matter when the runner falls behind).
const MAX_VOTES: usize = 4096;

impl PrimarySide {
    /// A link to a backup attached at `now` with the guest at `count`.
    pub fn new(generation: u64, timing: Timing, now: Nanos, count: u64) -> PrimarySide {
        PrimarySide {
            generation,
            timing,
            last_heard: now,
            broken: false,
            fenced: false,
            lease_until: 0,
            acked: 0,
            replayed: count,
            released: 0,
            handed_over: None,
            hand_over_confirmed: false,
            votes: VecDeque::new(),
            sent: 0,
            unanswered: false,
        }
    }

    /// A message from the backup, received at `now`.
    pub fn receive(&mut self, now: Nanos, msg: &Msg) -> Result<Received, ProtocolError> {
        if let (Some(c), Msg::Ack { count, .. }) = (self.handed_over, msg) {
            // The backup's word that it holds the hand-over (this side is fenced by then).
            self.hand_over_confirmed |= *count >= c;
        }
        if self.fenced {
            return Ok(Received::Ignored);
        }
        match *msg {
            Msg::Ack { count, clock } => {
                self.heard(now, clock);
                self.acked = self.acked.max(count);
                // (The echo is the newest stamp the backup received: one at least as new as
                // the last log message's answers it too, the stream being in order.)
                self.unanswered &= clock < self.sent;
                Ok(Received::Acked(self.acked))
            }
            Msg::Heartbeat { count, clock } => {
                self.heard(now, clock);
                self.replayed = self.replayed.max(count);
                Ok(Received::Beat)
            }
            Msg::Vote {
                what,
                count,
                hash,
                injected,
            } => {
                // A vote is no echo: it renews nothing, but it is word from the backup.
                self.last_heard = self.last_heard.max(now);
                self.replayed = self.replayed.max(count);
                if self.votes.len() >= MAX_VOTES {
                    self.votes.pop_front();
                }
                self.votes.push_back((what, count, hash, injected));
                Ok(Received::Vote)
            }
            ref other => Err(ProtocolError::Unexpected {
                from: "backup",
                what: msg_name(other),
                when: "on its link to the primary",
            }),
        }
    }

    /// Heard at `now`, echoing our stamp `echo`: the lease runs to `echo + L` (an older echo,
    /// a late heartbeat, never shortens or extends it).
    fn heard(&mut self, now: Nanos, echo: Nanos) {
        self.last_heard = self.last_heard.max(now);
        self.lease_until = self
            .lease_until
            .max(echo.saturating_add(nanos(self.timing.lease())));
    }

    /// A read or a write on the link failed, or the peer closed it.
    pub fn link_broke(&mut self) {
        self.broken = true;
    }

    /// The heartbeat to send at `now`, if this side still talks to its backup.
    pub fn heartbeat(&self, now: Nanos) -> Option<Msg> {
        self.talking().then_some(Msg::Heartbeat {
            count: self.released,
            clock: now,
        })
    }

    /// Log bytes to send at `now` (stamped with it), if this side still talks to its backup.
    pub fn log(&mut self, now: Nanos, bytes: Vec<u8>) -> Option<Msg> {
        if !self.talking() {
            return None;
        }
        self.sent = self.sent.max(now);
        self.unanswered = true;
        Some(Msg::Log { clock: now, bytes })
    }

    /// Whether a log message sent has not been answered yet (an acknowledgement echoing its
    /// stamp, or a newer one): until one is, reading the link for acknowledgements finds
    /// none. (The log pushed out for inputs alone is answered only with the next mark's.)
    pub fn awaits_answer(&self) -> bool {
        self.unanswered
    }

    fn talking(&self) -> bool {
        !self.fenced && !self.broken
    }

    /// Whether an output may leave at `now`: the backup, which echoed a stamp of ours recently
    /// enough, cannot have gone live, and the link is whole.
    pub fn may_release(&self, now: Nanos) -> bool {
        now < self.lease_until && self.talking()
    }

    /// Release, in order, the held outputs whose log the backup holds, while the lease holds
    /// (asked again, at `now()`, right before each one leaves): each is handed to `emit`.
    /// `count_of` tells the count that produced an output; `held` is in count order.
    pub fn release<T>(
        &mut self,
        now: impl Fn() -> Nanos,
        held: &mut VecDeque<T>,
        count_of: impl Fn(&T) -> u64,
        mut emit: impl FnMut(T),
    ) {
        while let Some(c) = held.front().map(&count_of) {
            if c > self.acked || !self.may_release(now()) {
                return;
            }
            let Some(out) = held.pop_front() else { return };
            emit(out);
            // The backup drops the outputs of its replay up to `released` (they left from
            // here). Outputs share the count where their run chunk ended, and the backup knows
            // them by the count that produced each, which may be any in the chunk: so the
            // count moves only once every output of the chunk has left. (Moving it on the
            // first one lost the rest at a failover: found by the simulation test, whose seeds
            // 41, 1517, 3213, 6963 and 9291 show it.)
            if held.front().is_none_or(|next| count_of(next) != c) {
                self.released = self.released.max(c);
            }
        }
    }

    /// The hand-over of the guest, stopped at `count` (live migration), if this side still
    /// talks: from it on, this side releases nothing and sends nothing more (it is fenced),
    /// and the backup produces again every output after the `released` count it carries.
    pub fn hand_over(&mut self, count: u64, missing: Vec<u8>) -> Option<Msg> {
        if !self.talking() {
            return None;
        }
        self.fenced = true;
        self.handed_over = Some(count);
        Some(Msg::HandOver {
            count,
            released: self.released.min(count),
            missing,
        })
    }

    /// RAM pages to send after a post-copy hand-over (while the link is whole).
    pub fn pages_after_hand_over(&self, pages: Vec<u64>, data: Vec<u8>) -> Option<Msg> {
        (self.handed_over.is_some() && !self.broken).then_some(Msg::Ram { pages, data })
    }

    /// Whether this side handed the guest over.
    pub fn handed_over(&self) -> bool {
        self.handed_over.is_some()
    }

    /// Whether the backup acknowledged the hand-over.
    pub fn hand_over_confirmed(&self) -> bool {
        self.hand_over_confirmed
    }

    /// A frame to relay to the backup after the hand-over (while the link is whole).
    pub fn relay(&self, slot: u32, frame: Vec<u8>) -> Option<Msg> {
        (self.handed_over.is_some() && !self.broken).then_some(Msg::Relay { slot, frame })
    }

    /// The votes received since last asked.
    pub fn take_votes(&mut self) -> VecDeque<(u8, u64, [u8; 32], u64)> {
        std::mem::take(&mut self.votes)
    }

    /// The count up to which outputs were released.
    pub fn released(&self) -> u64 {
        self.released
    }

    /// Outputs up to `count` were released (by the group's vote, N-modular redundancy).
    pub fn released_to(&mut self, count: u64) {
        self.released = self.released.max(count);
    }

    /// The link belongs to `generation` from now on (the group moved on after winning the
    /// one before).
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Ask the backup to re-execute from `from` to `to` (two replicas that disagree), if this
    /// side still talks.
    pub fn recheck(&self, from: u64, to: u64, how: u8) -> Option<Msg> {
        self.talking().then_some(Msg::Recheck { from, to, how })
    }

    /// Tell the backup it was found faulty, if this side still talks; this side is fenced
    /// from then on (the caller closes the link).
    pub fn verdict(&mut self, count: u64, how: u8, action: u8) -> Option<Msg> {
        let m = self
            .talking()
            .then_some(Msg::Verdict { count, how, action });
        self.fenced = true;
        m
    }

    /// Stop protecting the guest with this backup (a migration cancelled): fenced, as if the
    /// backup had died; the caller races the arbiter next.
    pub fn give_up(&mut self) {
        self.fenced = true;
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    pub fn lease_until(&self) -> Nanos {
        self.lease_until
    }

    pub fn last_heard(&self) -> Nanos {
        self.last_heard
    }

    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Whether the backup is to be taken for dead at `now`.
    pub fn is_dead(&self, now: Nanos) -> bool {
        self.broken || now.saturating_sub(self.last_heard) > nanos(self.timing.dead)
    }

    /// Where the link stands at `now`. A dead backup makes this side cut every tie first (no
    /// heartbeat of ours may keep a backup following a primary that goes on alone, and
    /// nothing of the backup's is taken any more); the caller then races the arbiter and
    /// releases its held outputs only if it wins.
    pub fn check(&mut self, now: Nanos) -> Verdict {
        if self.fenced || self.is_dead(now) {
            self.fenced = true;
            return Verdict::Race {
                generation: self.generation,
            };
        }
        Verdict::Protected { acked: self.acked }
    }
}

/// The backup's side of its link to the primary (from the attach on).
#[derive(Clone, Debug)]
pub struct BackupSide {
    timing: Timing,
    last_heard: Nanos,
    broken: bool,
    fenced: bool,
    /// The newest primary stamp received: echoed in every acknowledgement and heartbeat.
    echo: Nanos,
    /// This side has replayed up to here.
    replayed: u64,
    /// The primary released outputs up to here (from its heartbeats).
    released: u64,
}

impl BackupSide {
    /// Attached at `now`.
    pub fn new(timing: Timing, now: Nanos) -> BackupSide {
        BackupSide {
            timing,
            last_heard: now,
            broken: false,
            fenced: false,
            echo: 0,
            replayed: 0,
            released: 0,
        }
    }

    /// A message from the primary, received at `now`. (The order of the state transfer,
    /// attach then disks then log, is the caller's to check; here every message counts as
    /// word from the primary, and its stamp is echoed from now on.)
    pub fn receive(&mut self, now: Nanos, msg: &Msg) -> Result<Received, ProtocolError> {
        if self.fenced {
            return Ok(Received::Ignored);
        }
        self.last_heard = self.last_heard.max(now);
        match *msg {
            Msg::Log { clock, .. } => {
                // Heard first, then echoed: `last_heard` is never older than the receipt of
                // an echoed stamp.
                self.echo = self.echo.max(clock);
                Ok(Received::Log)
            }
            Msg::Heartbeat { count, clock } => {
                self.echo = self.echo.max(clock);
                self.released = self.released.max(count);
                Ok(Received::Released(self.released))
            }
            Msg::Disk { .. } | Msg::Ram { .. } => Ok(Received::Disk),
            Msg::Verdict { count, how, action } => Ok(Received::Verdict { count, how, action }),
            Msg::Recheck { from, to, how } => Ok(Received::Recheck { from, to, how }),
            Msg::HandOver {
                count,
                released,
                ref missing,
            } => {
                self.released = self.released.max(released);
                Ok(Received::HandOver {
                    count,
                    released,
                    missing: missing.clone(),
                })
            }
            ref other => Err(ProtocolError::Unexpected {
                from: "primary",
                what: msg_name(other),
                when: "after the attach",
            }),
        }
    }

    pub fn link_broke(&mut self) {
        self.broken = true;
    }

    fn talking(&self) -> bool {
        !self.fenced && !self.broken
    }

    /// A request for RAM pages after a post-copy hand-over (this side is fenced by then; the
    /// link must be whole).
    pub fn page_request(&self, pages: Vec<u64>) -> Option<Msg> {
        (!self.broken).then_some(Msg::PageRequest { pages })
    }

    /// The acknowledgement that this side holds the log up to `count`, if it still talks.
    pub fn ack(&self, count: u64) -> Option<Msg> {
        self.talking().then_some(Msg::Ack {
            count,
            clock: self.echo,
        })
    }

    /// This replica's vote (N-modular redundancy), if it still talks.
    pub fn vote(&self, what: u8, count: u64, hash: [u8; 32], injected: u64) -> Option<Msg> {
        self.talking().then_some(Msg::Vote {
            what,
            count,
            hash,
            injected,
        })
    }

    /// The heartbeat to send, if this side still talks: how far it replayed, and the echo.
    pub fn heartbeat(&self) -> Option<Msg> {
        self.talking().then_some(Msg::Heartbeat {
            count: self.replayed,
            clock: self.echo,
        })
    }

    /// This side replayed up to `count`.
    pub fn replayed(&mut self, count: u64) {
        self.replayed = self.replayed.max(count);
    }

    pub fn last_heard(&self) -> Nanos {
        self.last_heard
    }

    pub fn echo(&self) -> Nanos {
        self.echo
    }

    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Whether the primary is to be taken for dead at `now`.
    pub fn is_dead(&self, now: Nanos) -> bool {
        self.broken || now.saturating_sub(self.last_heard) > nanos(self.timing.dead)
    }

    /// Cut every tie: from now on nothing is sent (no echo, no acknowledgement) and nothing is
    /// taken. Returns the instant from which the primary can hold no lease from this side any
    /// more: the fence wait after the last message heard. This side may go live (race the
    /// arbiter) only from then on. The caller must hold the lock its sends take, so no send is
    /// under way.
    pub fn fence(&mut self) -> Nanos {
        self.fenced = true;
        self.last_heard
            .saturating_add(nanos(self.timing.fence_wait()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn timing() -> Timing {
        Timing::new(Duration::from_millis(10), Duration::from_millis(100))
    }

    #[test]
    fn a_log_message_awaits_its_answer_until_an_echo_as_new_as_its_stamp() {
        let mut p = PrimarySide::new(1, timing(), 0, 0);
        assert!(!p.awaits_answer(), "nothing sent");
        assert!(p.log(10, vec![1]).is_some());
        assert!(p.log(20, vec![2]).is_some());
        assert!(p.awaits_answer());
        // An answer to the first message only.
        let ack = |clock| Msg::Ack { count: 5, clock };
        p.receive(25, &ack(10)).unwrap();
        assert!(p.awaits_answer(), "the second is not answered yet");
        p.receive(30, &ack(20)).unwrap();
        assert!(!p.awaits_answer());
        // A heartbeat's newer stamp echoed answers what went before it.
        assert!(p.log(40, vec![3]).is_some());
        p.receive(60, &ack(50)).unwrap();
        assert!(!p.awaits_answer());
        // A side that cut its ties sends no more log.
        p.give_up();
        assert!(p.log(80, vec![5]).is_none());
    }

    #[test]
    fn a_lease_lasts_its_span_after_the_stamp_echoed() {
        let mut p = PrimarySide::new(0, timing(), 1000 * MS, 0);
        assert!(!p.may_release(1000 * MS), "no echo, no lease");
        p.receive(
            1001 * MS,
            &Msg::Ack {
                count: 5,
                clock: 1000 * MS,
            },
        )
        .unwrap();
        assert!(p.may_release(1000 * MS));
        assert!(p.may_release(1019 * MS));
        assert!(!p.may_release(1020 * MS));
        // An older echo (a late, buffered heartbeat) never shortens or extends it.
        p.receive(
            1002 * MS,
            &Msg::Heartbeat {
                count: 0,
                clock: 900 * MS,
            },
        )
        .unwrap();
        assert_eq!(p.lease_until(), 1020 * MS);
        p.receive(
            1003 * MS,
            &Msg::Heartbeat {
                count: 0,
                clock: 1010 * MS,
            },
        )
        .unwrap();
        assert_eq!(p.lease_until(), 1030 * MS);
        assert_eq!(p.acked(), 5);
    }

    #[test]
    fn a_lease_always_ends_before_a_fenced_backup_may_go_live() {
        // The backup receives the stamp at r >= stamp, fences, and goes live at
        // r + fence_wait at the earliest; the lease from that stamp has ended by then.
        for (stamp, delay) in [(1000 * MS, 0), (1000 * MS, 7 * MS), (5 * MS, 90 * MS)] {
            let mut b = BackupSide::new(timing(), 0);
            let mut p = PrimarySide::new(0, timing(), 0, 0);
            b.receive(
                stamp + delay,
                &Msg::Heartbeat {
                    count: 0,
                    clock: stamp,
                },
            )
            .unwrap();
            let ack = b.ack(1).unwrap();
            p.receive(stamp + delay, &ack).unwrap();
            let earliest_live = b.fence();
            assert!(!p.may_release(earliest_live));
            assert!(p.lease_until() < earliest_live);
            assert_eq!(b.ack(2), None, "a fenced backup echoes nothing more");
            assert_eq!(b.heartbeat(), None);
        }
    }

    #[test]
    fn released_moves_only_past_whole_chunks() {
        let mut p = PrimarySide::new(0, timing(), 0, 0);
        p.receive(
            MS,
            &Msg::Ack {
                count: 100,
                clock: MS,
            },
        )
        .unwrap();
        // Three outputs of a chunk that ended at 50, one of a chunk that ended at 90; the lease
        // runs out after the second one has left.
        let mut held: VecDeque<(u64, char)> = [(50, 'a'), (50, 'b'), (50, 'c'), (90, 'd')].into();
        let asked = std::cell::Cell::new(0u64);
        let clock = || {
            asked.set(asked.get() + 1);
            if asked.get() <= 2 {
                2 * MS
            } else {
                100 * MS
            }
        };
        let mut out = Vec::new();
        p.release(clock, &mut held, |h| h.0, |h| out.push(h.1));
        assert_eq!(out, ['a', 'b']);
        assert_eq!(
            p.heartbeat(3 * MS),
            Some(Msg::Heartbeat {
                count: 0,
                clock: 3 * MS
            }),
            "chunk 50 is not whole out"
        );
        p.receive(
            4 * MS,
            &Msg::Ack {
                count: 100,
                clock: 4 * MS,
            },
        )
        .unwrap();
        p.release(|| 5 * MS, &mut held, |h| h.0, |h| out.push(h.1));
        assert_eq!(out, ['a', 'b', 'c', 'd']);
        assert_eq!(
            p.heartbeat(5 * MS),
            Some(Msg::Heartbeat {
                count: 90,
                clock: 5 * MS
            })
        );
    }

    #[test]
    fn a_dead_backup_makes_the_primary_cut_its_ties_and_race() {
        let mut p = PrimarySide::new(3, timing(), 0, 0);
        p.receive(
            5 * MS,
            &Msg::Heartbeat {
                count: 7,
                clock: 4 * MS,
            },
        )
        .unwrap();
        assert_eq!(p.check(100 * MS), Verdict::Protected { acked: 0 });
        assert_eq!(p.replayed(), 7);
        assert_eq!(p.check(106 * MS), Verdict::Race { generation: 3 });
        assert_eq!(p.heartbeat(107 * MS), None, "fenced: nothing more is sent");
        assert!(!p.may_release(0));
        assert_eq!(
            p.receive(
                108 * MS,
                &Msg::Ack {
                    count: 9,
                    clock: 107 * MS
                }
            ),
            Ok(Received::Ignored)
        );
        assert_eq!(p.check(108 * MS), Verdict::Race { generation: 3 });
        let mut q = PrimarySide::new(0, timing(), 0, 0);
        q.link_broke();
        assert!(matches!(q.check(0), Verdict::Race { .. }));
    }

    #[test]
    fn a_side_refuses_what_its_peer_may_not_send() {
        let mut p = PrimarySide::new(0, timing(), 0, 0);
        assert!(p
            .receive(
                0,
                &Msg::Log {
                    clock: 0,
                    bytes: vec![]
                }
            )
            .is_err());
        let mut b = BackupSide::new(timing(), 0);
        assert!(b.receive(0, &Msg::Ack { count: 0, clock: 0 }).is_err());
        assert!(b
            .receive(
                0,
                &Msg::Attach {
                    generation: 1,
                    disks: vec![]
                }
            )
            .is_err());
    }

    #[test]
    fn the_backup_echoes_the_newest_stamp_and_waits_out_the_last_word() {
        let mut b = BackupSide::new(timing(), 0);
        b.receive(
            50 * MS,
            &Msg::Log {
                clock: 42,
                bytes: vec![],
            },
        )
        .unwrap();
        assert_eq!(
            b.receive(
                51 * MS,
                &Msg::Heartbeat {
                    count: 9,
                    clock: 40
                }
            ),
            Ok(Received::Released(9))
        );
        assert_eq!(b.echo(), 42);
        assert_eq!(
            b.ack(3),
            Some(Msg::Ack {
                count: 3,
                clock: 42
            })
        );
        assert!(!b.is_dead(150 * MS));
        assert!(b.is_dead(152 * MS));
        assert_eq!(b.fence(), 51 * MS + 30 * MS);
    }
}
