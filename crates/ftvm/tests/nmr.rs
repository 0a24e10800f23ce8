//! N-modular redundancy end to end, on network namespaces as hosts (the pair's lab and a third
//! host): a leader on host 1 and its followers on hosts 2 and 3 (`--replicas N`), each over a
//! replication link of its own, a guest running redis, and a client
//! writing keys over one TCP connection, each acknowledged before the next and every one read
//! back at the end. Faults are injected into one replica (`--inject SPEC@+COUNT`, counted
//! from where that replica's machine starts); the group must find them, by its vote on the
//! outputs or its exchange of state digests, and the client must see only correct replies.

mod common;

use std::time::{Duration, Instant};

use common::lab::*;

/// A state digest every 100 M instructions (a second of guest time).
const DIGEST_EVERY: &str = "100000000";

/// The client's load in the tests of a fault: it writes until the test has seen what the
/// fault led to, then is stopped (`Client::stop_writing`); this is only its upper bound. The
/// fault comes at an instruction count, and how fast the count moves depends on the host (an
/// idle guest hardly counts on): a load of a fixed length once ended before the fault came.
const UNTIL_STOPPED: u64 = 600;

/// One group at a time: each runs three guests on a small machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn says(lab: &Lab, name: &str, what: &str, limit: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let err = stderr_of(lab, name);
        if err.contains(what) {
            return err;
        }
        assert!(
            t0.elapsed() < limit,
            "{name} never said {what:?}:\n{err}\n{}",
            context(lab)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first line of `err` that holds `what`.
fn line_with(err: &str, what: &str) -> String {
    err.lines()
        .find(|l| l.contains(what))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Wait (at most `limit`) until a follower went live; which one.
fn a_follower_goes_live(g: &Group, limit: Duration) -> usize {
    let t0 = Instant::now();
    loop {
        if let Some(i) = (0..2)
            .find(|&i| stderr_of(&g.lab, ["f1", "f2"][i]).contains("backup live at instruction"))
        {
            return i;
        }
        assert!(
            t0.elapsed() < limit,
            "no follower went live\n{}",
            context(&g.lab)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The client's connection goes on with the follower that went live: it writes more keys;
/// then it stops writing.
fn writes_go_on(g: &Group, client: &mut Client) {
    assert!(
        client.acks_for(Duration::from_secs(3)) > 0,
        "no writes after a follower went live\n{}",
        context(&g.lab)
    );
    client.stop_writing();
}

/// Which follower went live (exactly one must have).
fn the_live_follower(g: &Group) -> usize {
    let live: Vec<usize> = (0..2)
        .filter(|&i| stderr_of(&g.lab, ["f1", "f2"][i]).contains("backup live at instruction"))
        .collect();
    assert_eq!(live.len(), 1, "one follower goes live\n{}", context(&g.lab));
    live[0]
}

fn context(lab: &Lab) -> String {
    ["leader", "f1", "f2"]
        .iter()
        .map(|n| format!("--- {n}:\n{}", stderr_of(lab, n)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A member: `role` (primary or backup options) with the group's size and digest interval.
fn member(lab: &Lab, ns: usize, name: &str, role: &[&str], n: &str, arbiter: &str) -> Proc {
    let disk = lab.dir.join(format!("{name}.img"));
    blank_disk(&disk);
    let mut args = role.to_vec();
    args.extend_from_slice(&["--replicas", n, "--digest-every", DIGEST_EVERY]);
    let mut p = side(lab, ns, name, &args, &disk, arbiter);
    if ns != 1 {
        // A follower's console output is never read.
        let mut out = p.c().stdout.take().unwrap();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
    }
    p
}

/// Follower f1 on host 2, f2 on host 3, each over its own replication link; each listens on
/// its host's address for the group's other replicas, should it take the guest over.
fn follower(lab: &Lab, name: &str, n: &str, arbiter: &str, extra: &[&str]) -> Proc {
    let (ns, leader, listen) = if name == "f2" {
        (4, "10.81.0.1:7700", "10.79.0.4:7700")
    } else {
        (2, "10.80.0.1:7700", "10.79.0.2:7700")
    };
    let mut role = vec!["backup", "--primary", leader, "--listen", listen];
    role.extend_from_slice(extra);
    member(lab, ns, name, &role, n, arbiter)
}

/// A group of `n` (2 or 3): the leader on host 1, followers f1 and f2 on host 2 (the second
/// joins the running guest by pre-copy); `inject` goes to the last follower.
struct Group {
    lab: Lab,
    leader: Proc,
    followers: Vec<Proc>,
}

fn group(tag: &str, n: usize, inject: Option<&str>) -> Group {
    group_with(tag, n, inject, None)
}

/// `group`, with a fault for the leader too; then the second follower is started with the
/// first, so that it joins during the boot, before the leader's fault.
fn group_with(tag: &str, n: usize, inject: Option<&str>, leader_fault: Option<&str>) -> Group {
    let mut lab = Lab::new(tag);
    if n == 3 {
        lab.third_host();
    }
    let arbiter = format!("file:{}", lab.dir.join("arbiter").display());
    let ns = n.to_string();
    // The leader takes followers over both replication links.
    let mut role = vec!["primary", "--listen", "0.0.0.0:7700"];
    if let Some(f) = leader_fault {
        role.extend_from_slice(&["--inject", f]);
    }
    let mut leader = member(&lab, 1, "leader", &role, &ns, &arbiter);
    std::thread::sleep(Duration::from_millis(300));
    let last = |i: usize| i + 1 == n - 1;
    // "SPEC@COUNT" and, after a space, more options for the faulty follower.
    let inj: Vec<&str> = inject
        .map(|s| {
            let mut v = vec!["--inject"];
            v.extend(s.split(' '));
            v
        })
        .unwrap_or_default();
    let mut followers = vec![follower(
        &lab,
        "f1",
        &ns,
        &arbiter,
        if last(0) { &inj } else { &[] },
    )];
    let early = leader_fault.is_some() && n == 3;
    if early {
        std::thread::sleep(Duration::from_millis(300));
        followers.push(follower(&lab, "f2", &ns, &arbiter, &inj));
    }
    wait_ready(&mut leader);
    if n == 3 {
        if !early {
            followers.push(follower(&lab, "f2", &ns, &arbiter, &inj));
        }
        says(
            &lab,
            "leader",
            "replica 2 joined the group",
            Duration::from_secs(60),
        );
    }
    Group {
        lab,
        leader,
        followers,
    }
}

/// The client reads every acknowledged key back while the leader runs on; then the guest is
/// powered off.
fn finish_with_the_leader(g: &mut Group, client: &mut Client, line: &str) {
    client.stop_writing();
    let keys = client.finish(Duration::from_secs(60), &|| context(&g.lab));
    assert!(
        g.leader.c().try_wait().unwrap().is_none(),
        "the leader stopped\n{}",
        context(&g.lab)
    );
    eprintln!("{keys} keys read back; {line}");
    poweroff(&mut g.leader);
}

/// TMR: a register flip in a follower changes what it sends; the leader and the other
/// follower outvote it, the client gets only correct replies, and the faulty replica attaches
/// again (as replica 3) from the leader's state.
#[test]
fn tmr_outvotes_a_follower_whose_register_flipped_and_repairs_it() {
    let _one = serial();
    // The fault comes while the client's load runs (an idle guest hardly counts on: under a
    // loaded host a later fault once came after the load and was never reached).
    let mut g = group("v", 3, Some("x2:40@+100000000"));
    let mut client = Client::start(&g.lab, UNTIL_STOPPED);
    let err = says(
        &g.lab,
        "leader",
        "fault detected: replica 2",
        Duration::from_secs(60),
    );
    says(&g.lab, "f2", "was found faulty", Duration::from_secs(10));
    says(
        &g.lab,
        "leader",
        "replica 3 joined the group",
        Duration::from_secs(60),
    );
    finish_with_the_leader(&mut g, &mut client, &line_with(&err, "fault detected"));
}

/// TMR: a RAM flip in memory the guest does not use changes no output; the exchange of
/// state digests finds it.
#[test]
fn tmr_finds_a_ram_flip_that_changes_no_output_by_its_digests() {
    let _one = serial();
    let mut g = group("w", 3, Some("ram:0x8c000000:5@+50000000"));
    let mut client = Client::start(&g.lab, UNTIL_STOPPED);
    let err = says(
        &g.lab,
        "leader",
        "fault detected: replica 2",
        Duration::from_secs(60),
    );
    let line = line_with(&err, "fault detected");
    assert!(line.contains("state digest"), "{line}");
    finish_with_the_leader(&mut g, &mut client, &line);
}

/// DMR, a transient fault in the follower (a register flip): the two replicas disagree; both
/// re-execute from where they last agreed and both repeat the leader's result, so the
/// follower was wrong: it is cut off and attaches again, and the guest runs on. The client
/// sees only correct replies and every acknowledged key.
#[test]
fn dmr_reexecutes_and_repairs_a_follower_with_a_transient_fault() {
    let _one = serial();
    // f1 attaches at the boot: the fault comes after the guest is ready.
    let mut g = group("x", 2, Some("x2:40@+700000000"));
    let mut client = Client::start(&g.lab, UNTIL_STOPPED);
    let err = says(
        &g.lab,
        "leader",
        "replica 1 had a transient fault",
        Duration::from_secs(90),
    );
    says(
        &g.lab,
        "f1",
        "re-executed from instruction",
        Duration::from_secs(5),
    );
    says(&g.lab, "f1", "was found faulty", Duration::from_secs(10));
    // Repaired: it attaches again, in the next generation.
    says(
        &g.lab,
        "leader",
        "backup attached (generation 1)",
        Duration::from_secs(60),
    );
    finish_with_the_leader(&mut g, &mut client, &line_with(&err, "transient fault"));
}

/// DMR, a transient fault in the leader: both re-executions repeat the follower's result,
/// so the leader stops without releasing its wrong outputs and hands the guest to the
/// follower, which goes live with the client's connection and every acknowledged key; the
/// leader is repaired by attaching to it.
#[test]
fn dmr_hands_the_guest_over_when_the_leader_had_a_transient_fault() {
    let _one = serial();
    let mut g = group_with("xl", 2, None, Some("x2:40@+450000000"));
    let mut client = Client::start(&g.lab, UNTIL_STOPPED);
    let err = says(
        &g.lab,
        "leader",
        "did not repeat its own result",
        Duration::from_secs(90),
    );
    assert!(err.contains("fault injected"), "{err}");
    let err = says(
        &g.lab,
        "f1",
        "backup live at instruction",
        Duration::from_secs(30),
    );
    assert!(err.contains("found faulty by re-execution"), "{err}");
    writes_go_on(&g, &mut client);
    let keys = client.finish(Duration::from_secs(60), &|| context(&g.lab));
    // The leader is repaired: it attaches to the follower, which leads the pair now.
    says(
        &g.lab,
        "f1",
        "backup attached (generation",
        Duration::from_secs(60),
    );
    eprintln!(
        "{keys} keys read back; {}",
        line_with(&stderr_of(&g.lab, "leader"), "did not repeat")
    );
    poweroff(&mut g.followers[0]);
}

/// DMR, a persistent fault (`--fault-persists`: it happens again in every re-execution):
/// each replica repeats its own result, so neither can be trusted: the leader releases
/// nothing after the mismatch and both stop, saying why; the client never gets a wrong reply.
#[test]
fn dmr_stops_both_replicas_when_the_fault_persists() {
    let _one = serial();
    let mut g = group("xp", 2, Some("x2:40@+700000000 --fault-persists"));
    let mut client = Client::start(&g.lab, UNTIL_STOPPED);
    let ctx = || context(&g.lab);
    let why = ["a persistent fault", "no output after instruction"];
    stops_saying(
        &g.lab,
        &mut g.leader,
        "leader",
        Duration::from_secs(90),
        &why,
        &ctx,
    );
    let why = ["(it persists)", "neither can be trusted"];
    stops_saying(
        &g.lab,
        &mut g.followers[0],
        "f1",
        Duration::from_secs(20),
        &why,
        &ctx,
    );
    // The client's connection stalls (no replica answers any more): every reply it got was
    // right (it checks each one), none was wrong.
    let _ = client.acks_for(Duration::from_secs(2));
    let _ = client.proc.c().kill();
    let out = client.proc.0.take().unwrap().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("AssertionError"),
        "a wrong reply: {stderr}"
    );
    assert!(client.missing.is_empty());
}

/// TMR: the leader killed; a follower wins its generation and goes live with the client's
/// connection and every acknowledged key; the other follower attaches to it.
#[test]
fn tmr_fails_over_when_the_leader_is_killed() {
    let _one = serial();
    let mut g = group("y", 3, None);
    let mut client = Client::start(&g.lab, 10);
    assert!(client.acks_for(Duration::from_secs(3)) > 0, "no writes");
    signal(g.leader.c(), libc::SIGKILL);
    let keys = client.finish(Duration::from_secs(60), &|| context(&g.lab));
    let live = the_live_follower(&g);
    // The other follower lost the race: it attaches to the winner, which leads from now on.
    let name = ["f1", "f2"][live];
    says(
        &g.lab,
        name,
        "backup attached (generation",
        Duration::from_secs(60),
    );
    eprintln!("{keys} keys read back after the leader was killed");
    poweroff(&mut g.followers[live]);
}

/// TMR: a register flip in the leader: both followers disagree with it, so the leader is
/// outvoted and stops without releasing its wrong outputs; a follower takes the guest over
/// with the client's connection and every acknowledged key, and the other follower and the
/// old leader attach to it.
#[test]
fn tmr_outvotes_a_faulty_leader_and_a_follower_takes_over() {
    let _one = serial();
    let mut g = group_with("z", 3, None, Some("x2:40@+450000000"));
    let mut client = Client::start(&g.lab, UNTIL_STOPPED);
    let err = says(
        &g.lab,
        "leader",
        "it is outvoted and stops",
        Duration::from_secs(90),
    );
    assert!(err.contains("fault injected"), "{err}");
    a_follower_goes_live(&g, Duration::from_secs(60));
    writes_go_on(&g, &mut client);
    let keys = client.finish(Duration::from_secs(60), &|| context(&g.lab));
    let live = the_live_follower(&g);
    let line = line_with(&stderr_of(&g.lab, "leader"), "outvoted");
    // Both the other follower and the outvoted leader are repaired: they attach to the
    // follower that took the guest over, which leads a whole group again.
    says(
        &g.lab,
        ["f1", "f2"][live],
        "replica 2 joined the group",
        Duration::from_secs(90),
    );
    let err = stderr_of(&g.lab, "leader");
    assert!(err.contains("this replica attaches to it"), "{err}");
    eprintln!("{keys} keys read back; {line}");
    poweroff(&mut g.followers[live]);
}
