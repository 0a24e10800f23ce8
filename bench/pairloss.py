#!/usr/bin/env python3
"""The pair's throughput loss, measured in slices of a second: an unreplicated guest and a pair's
primary run at the same time, each on its own TAP of one bridge, and short redis-benchmark runs
go to one and then the other, in turn, for many slices.

usage: bench/pairloss.py [--slices N] [--boots N] [--requests N] [--clients C] [--json FILE]
                         [--unreplicated BINARY] [--pair BINARY] [--pair-args "ARGS"]
                         [--pair2 BINARY [--pair2-args "ARGS"]] [--link loopback|veth]
                         [--link2 loopback|veth]

With --pair2, a second pair (another build, or other options) runs beside the first and takes
its turn in each slice too: the two are compared in the same run, slice by slice.

With --boots N, every engine is booted afresh N times, the slices shared among the boots: the
speed of one boot of the same build differs from the next one's (the unreplicated engine's CPU
a request moved from 81 to 88 us between two runs on 2026-12-05, the loss from 10% to 1%), so
a loss measured in one boot says as much about that boot as about the build.

This machine's speed drifts by half within minutes (bench/redis.py, which boots each engine in
turn for a run of tens of seconds, sees the same build's loss move from -6% to 53% from round to
round). Here the two guests are booted once and the runs that are compared are a second apart,
so drift hardly enters a slice's ratio; the median over the slices is the loss, and the spread
of the slices says how far to trust it. Each slice also reads the CPU time the engine's process
(the primary's, for the pair), its runner (the main thread) and CPU 0 spent a request, from
/proc; and, for the median loss, a 95% confidence interval (from the order statistics of the
slices: it needs no assumption about how the slices spread; it says how well the run knows its
own median, and another run of the same comparison can land outside it: compare builds in more
than one run). The engines take their turns in every order in turn. As with `bench/redis.py
--pin`: both engines and the client on CPU 0, the backup alone on CPU 1 (as if it had a host of
its own), talking to its primary over the loopback (`--link veth`: through a veth pair between
two namespaces). The engine not being measured idles meanwhile (an idle guest costs its host
next to nothing; the pair's heartbeats go on).
Needs root (namespaces, TAP) and Debian's redis-tools.
"""
import argparse, itertools, json, os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis as lab  # noqa: E402  (bench/redis.py: the namespaces, their network, sh)

ROOT, GUEST, FTVM, HOST_NS, CLIENT_NS, sh = lab.ROOT, lab.GUEST, lab.FTVM, lab.HOST_NS, lab.CLIENT_NS, lab.sh
# Each guest: its TAP, address and MAC, on bench/redis.py's network.
# The backups' own namespace (their "host"), linked to the primaries' by a veth pair: see
# backup_net_up.
BACKUP_NS, PRIMARY_END, BACKUP_END = "ftvmb-b", "fvb-p", "fvb-q"
PRIMARY_LINK_IP, BACKUP_LINK_IP = "10.79.0.1", "10.79.0.2"
GUESTS = {"unreplicated": (lab.TAP, lab.GUEST_IP, lab.MAC),
          "pair": ("ftapb1", "10.78.0.11", "52:54:00:78:00:11"),
          "pair2": ("ftapb2", "10.78.0.12", "52:54:00:78:00:12")}


def guest_args(name):
    tap, ip, mac = GUESTS[name]
    return ["--kernel", os.path.join(GUEST, "Image"), "--initrd", os.path.join(GUEST, "initramfs.cpio.gz"),
            "--append", f"console=ttyS0 ftvm.ip={ip}/24", "--net", f"tap={tap},mac={mac}"]


def backup_net_up():
    """The backups' namespace, linked to the primaries' (the host's) by a veth pair whose every
    received packet is processed by the receiving side's CPU (receive packet steering: CPU 1
    for the backups, CPU 0 for the primaries), as on two hosts. Over the loopback instead, the
    kernel runs the receiving half of TCP on the sender's CPU: the backup's half of every
    message the primary sends would be charged to the primary's CPU."""
    sh("ip", "netns", "del", BACKUP_NS, check=False)
    sh("ip", "netns", "add", BACKUP_NS)
    sh("ip", "link", "add", PRIMARY_END, "type", "veth", "peer", "name", BACKUP_END)
    for ns, dev, ip, cpus in ((HOST_NS, PRIMARY_END, PRIMARY_LINK_IP, "1"),
                              (BACKUP_NS, BACKUP_END, BACKUP_LINK_IP, "2")):
        sh("ip", "link", "set", dev, "netns", ns)
        x = ["ip", "netns", "exec", ns]
        sh(*x, "ip", "addr", "add", f"{ip}/24", "dev", dev)
        sh(*x, "ip", "link", "set", dev, "up")
        sh(*x, "ip", "link", "set", "lo", "up")
        # (`ip netns exec` mounts the namespace's own /sys.)
        sh(*x, "sh", "-c", f"echo {cpus} > /sys/class/net/{dev}/queues/rx-0/rps_cpus")


def start(cmd, cpu, err, console=True, ns=HOST_NS):
    """An engine on this CPU, its messages to the file `err`; its console is read (`console`) or
    thrown away."""
    with open(err, "wb") as f:
        return subprocess.Popen(["ip", "netns", "exec", ns, "taskset", "-c", cpu, *cmd],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE if console else subprocess.DEVNULL,
                                stderr=f)


def await_ready(name, p, err):
    buf, t0 = b"", time.monotonic()
    while b"ftvm-guest: ready" not in buf:
        chunk = p.stdout.read1(65536)
        if not chunk or time.monotonic() - t0 > 300:
            p.kill()
            sys.exit(f"{name}: the guest did not get ready:\n{buf[-2000:].decode(errors='replace')}\n"
                     f"{open(err, errors='replace').read()[-2000:]}")
        buf += chunk
    # The console is not read from here on: it must not fill its pipe.
    subprocess.Popen(["cat"], stdin=p.stdout, stdout=subprocess.DEVNULL)
    ip = GUESTS[name][1]
    for _ in range(100):
        if sh("ip", "netns", "exec", CLIENT_NS, "redis-cli", "-h", ip, "ping", check=False).stdout.strip() == b"PONG":
            return
        time.sleep(0.2)
    sys.exit(f"{name}: redis does not answer at {ip}")


def cpu_ticks(pid):
    """CPU time (clock ticks) of a process (all its threads), of its main thread (the runner),
    CPU 0's busy ticks, the runner's time in the kernel and CPU 0's in interrupts (hard and
    soft: where the host's network stack does most of its work)."""
    engine = runner = runner_sys = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            f = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue  # a thread that ended meanwhile
        f = f[f.rindex(")") + 2:].split()
        ticks = int(f[11]) + int(f[12])
        engine += ticks
        if tid == str(pid):
            runner = ticks
            runner_sys = int(f[12])
    tcp = tcp_segments(pid)
    for line in open("/proc/stat"):
        if line.startswith("cpu0 "):
            d = [int(v) for v in line.split()[1:9]]
            # user nice system idle iowait irq softirq steal: busy is neither idle, iowait nor steal.
            return engine, runner, sum(d) - d[3] - d[4] - d[7], runner_sys, d[5] + d[6], *tcp
    return engine, runner, 0, runner_sys, 0, *tcp


def tcp_segments(pid):
    """TCP segments sent and received in the namespace of the process `pid` (for a primary
    linked to its backup by veth: the link's alone, since the guests' TCP is their own)."""
    lines = [line.split() for line in open(f"/proc/{pid}/net/snmp") if line.startswith("Tcp:")]
    tcp = dict(zip(lines[0][1:], lines[1][1:]))
    return int(tcp["OutSegs"]), int(tcp["InSegs"])


def run(name, requests, clients, pid):
    """One slice: SET and GET requests/s of redis-benchmark against this guest, and the CPU
    its engine (the primary, for the pair) and CPU 0 spent a request."""
    before = cpu_ticks(pid)
    r = sh("ip", "netns", "exec", CLIENT_NS, "taskset", "-c", "0", "redis-benchmark", "-h", GUESTS[name][1],
           "-c", str(clients), "-n", str(requests), "-t", "set,get", "--csv", check=False)
    lines = [[x.strip('"') for x in line.split(",")] for line in r.stdout.decode().splitlines()]
    head = next((f for f in lines if f and f[0] == "test"), [])
    out = {}
    for f in lines:
        if f and f[0] in ("SET", "GET") and "rps" in head:
            out[f[0]] = float(dict(zip(head, f))["rps"])
    if r.returncode != 0 or len(out) != 2:
        sys.exit(f"{name}: redis-benchmark failed: {r.stderr.decode()[-500:]}")
    after = cpu_ticks(pid)
    us = 1e6 / os.sysconf("SC_CLK_TCK") / (2 * requests)
    out["engine_us"] = (after[0] - before[0]) * us
    out["runner_us"] = (after[1] - before[1]) * us
    out["cpu0_us"] = (after[2] - before[2]) * us
    out["runner_sys_us"] = (after[3] - before[3]) * us
    out["cpu0_irq_us"] = (after[4] - before[4]) * us
    # (Over the loopback both sides' segments are counted, each once out and once in.)
    out["segs_out"] = (after[5] - before[5]) / (2 * requests)
    out["segs_in"] = (after[6] - before[6]) / (2 * requests)
    return out


def boot(a, names, pairs, work, psk, err, b):
    """Start every engine (boot `b`), each guest ready: the processes, and the pid of each
    engine that serves requests (the unreplicated run's, each primary's)."""
    procs = []
    try:
        procs.append(start([a.unreplicated, "run", *guest_args("unreplicated")], "0", err["unreplicated"]))
        await_ready("unreplicated", procs[-1], err["unreplicated"])
        pids = {"unreplicated": procs[0].pid}
        for name, (binary, args, port, link) in pairs.items():
            opts = ["--psk", psk, "--arbiter", "file:" + os.path.join(work, f"{name}.{b}.arbiter"), *args.split()]
            addr, ns = (f"127.0.0.1:{port}", HOST_NS) if link == "loopback" else (f"{PRIMARY_LINK_IP}:{port}", BACKUP_NS)
            procs.append(start([binary, "backup", "--primary", addr, *opts, *guest_args(name)], "1",
                               err[name] + ".backup", console=False, ns=ns))
            procs.append(start([binary, "primary", "--listen", addr, *opts, *guest_args(name)], "0", err[name]))
            await_ready(name, procs[-1], err[name])
            pids[name] = procs[-1].pid
        return procs, pids
    except BaseException:
        stop(procs)
        raise


def stop(procs):
    """Power every guest off (each engine then stops; a backup once its primary has)."""
    for p in procs:
        try:
            p.stdin.write(b"poweroff\n")
            p.stdin.flush()
        except OSError:
            pass
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def quartiles(xs):
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def median_ci(xs):
    """A 95% confidence interval for the median of the distribution `xs` were drawn from:
    the order statistics n/2 -+ 0.98 sqrt(n) (the binomial's normal approximation)."""
    xs = sorted(xs)
    n = len(xs)
    half = 0.98 * n ** 0.5
    lo, hi = int(n / 2 - half), int(n / 2 + half + 1)
    return xs[max(lo, 0)], xs[min(hi, n - 1)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=30)
    ap.add_argument("--requests", type=int, default=4000, help="requests of each kind (SET, GET) a slice")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--boots", type=int, default=1,
                    help="boot every engine afresh this many times, the slices shared among the boots "
                         "(one boot's speed can differ from the next's by more than the loss: see "
                         "docs/benchmarks.md)")
    ap.add_argument("--unreplicated", default=FTVM, help="the ftvm binary for the unreplicated guest")
    ap.add_argument("--pair", default=FTVM, help="the ftvm binary for the pair")
    ap.add_argument("--pair-args", default="", help="more options for both sides of the pair")
    ap.add_argument("--pair2", help="a second pair's ftvm binary, compared with the first in the same run")
    ap.add_argument("--pair2-args", default="", help="more options for both sides of the second pair")
    ap.add_argument("--link", choices=("loopback", "veth"), default="loopback",
                    help="how the pair's sides talk: the loopback (each message's receiving half of "
                         "TCP runs on the sender's CPU), or a veth pair between two namespaces, each "
                         "end's packets received on its own side's CPU by receive packet steering "
                         "(one inter-processor interrupt a packet, which this virtual machine makes "
                         "costly: see docs/benchmarks.md)")
    ap.add_argument("--link2", choices=("veth", "loopback"), help="the second pair's (default: --link)")
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "out", "pairloss.json"))
    a = ap.parse_args()
    if a.slices < 4:
        sys.exit("--slices must be at least 4")
    for tool in ("redis-benchmark", "redis-cli", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (Debian's redis-tools, util-linux)")
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    work = tempfile.mkdtemp(prefix="ftvm-pairloss-")
    psk = os.path.join(work, "psk")
    with open(psk, "wb") as f:
        f.write(os.urandom(32))
    pairs = {"pair": (a.pair, a.pair_args, 7702, a.link)}
    if a.pair2:
        pairs["pair2"] = (a.pair2, a.pair2_args, 7703, a.link2 or a.link)
    names = ["unreplicated", *pairs]
    if not 1 <= a.boots <= a.slices:
        sys.exit("--boots must be from 1 to --slices")
    procs, slices, held = [], [], {}
    orders = list(itertools.permutations(names))
    lab.net_up(taps=[GUESTS[n][0] for n in names])
    backup_net_up()
    try:
        for b in range(a.boots):
            err = {k: os.path.join(work, f"{k}.{b}.err") for k in names}
            procs, pids = boot(a, names, pairs, work, psk, err, b)
            # A slice of each to warm up (the guests' first requests fault their pages in), not
            # counted.
            for name in names:
                run(name, a.requests, a.clients, pids[name])
            for i in range(len(slices), a.slices * (b + 1) // a.boots):
                # The order goes through every permutation in turn: each engine goes first, and
                # follows each other one, as often as the others (a turning rotation alone keeps
                # the same engine before each: with two pairs the first always ran right after
                # the unreplicated guest).
                order = list(orders[i % len(orders)])
                got = {name: run(name, a.requests, a.clients, pids[name]) for name in order}
                slices.append(got)
                u = got["unreplicated"]
                line = (f"slice {i + 1:3}: unreplicated SET {u['SET']:6.0f} GET {u['GET']:6.0f}, "
                        f"{u['engine_us']:5.1f} us a request ({u['cpu0_us']:5.1f} on CPU 0)")
                for name in pairs:
                    p = got[name]
                    loss = {op: 100 * (1 - p[op] / u[op]) for op in ("SET", "GET")}
                    line += (f"; {name} SET {p['SET']:6.0f} GET {p['GET']:6.0f}, {p['engine_us']:5.1f} us "
                             f"({p['cpu0_us']:5.1f}), loss SET {loss['SET']:5.1f}% GET {loss['GET']:5.1f}%")
                print(line, flush=True)
            stop(procs)
            procs = []
            # How long each primary held its outputs for the backup (it says so when it stops).
            for name in pairs:
                for line in open(err[name], errors="replace"):
                    if "outputs held for the backup" in line:
                        held.setdefault(name, []).append(line.split("ftvm: ", 1)[-1].strip())
    finally:
        stop(procs)
        lab.net_down()
        sh("ip", "netns", "del", BACKUP_NS, check=False)
        shutil.rmtree(work, True)
    summary = {"held": held}
    for name, lines in held.items():
        for b, line in enumerate(lines):
            print(f"{name}" + (f" (boot {b + 1})" if len(lines) > 1 else "") + f": {line}")
    print(f"\n{a.slices} slices of {a.requests} SET and {a.requests} GET, -c {a.clients}, the guests in turn"
          + (f", over {a.boots} boots of every engine" if a.boots > 1 else ""))
    # Each pair against the unreplicated guest, and the second pair against the first.
    against = [(name, "unreplicated") for name in pairs] + ([("pair2", "pair")] if "pair2" in pairs else [])
    for name, base in against:
        key = name if base == "unreplicated" else f"{name}_vs_{base}"
        summary[key] = {}
        for op in ("SET", "GET"):
            loss = [100 * (1 - s[name][op] / s[base][op]) for s in slices]
            lo, hi = quartiles(loss)
            b = statistics.median(s[base][op] for s in slices)
            p = statistics.median(s[name][op] for s in slices)
            c_lo, c_hi = median_ci(loss)
            summary[key][op] = {"loss_median_pct": statistics.median(loss), "loss_q1_pct": lo, "loss_q3_pct": hi,
                                "loss_median_ci95_pct": [c_lo, c_hi], f"{base}_rps": b, f"{name}_rps": p}
            print(f"{op}: {base} {b:.0f}/s, {name} {p:.0f}/s (medians); {name}'s loss against {base}: median "
                  f"{statistics.median(loss):.1f}% (95% confidence {c_lo:.1f}% to {c_hi:.1f}%), quartiles {lo:.1f}% "
                  f"and {hi:.1f}%")
        for what, k in (("the engine's CPU (the primary's, for a pair)", "engine_us"),
                        ("its runner's (the main thread)", "runner_us"), ("CPU 0 busy", "cpu0_us"),
                        ("the runner's in the kernel", "runner_sys_us"),
                        ("CPU 0's in interrupts", "cpu0_irq_us")):
            extra = [100 * (s[name][k] / s[base][k] - 1) for s in slices if s[base][k] > 0]
            if not extra:
                print(f"{what}: no CPU time was counted (slices too short for the clock ticks)")
                continue
            b = statistics.median(s[base][k] for s in slices)
            p = statistics.median(s[name][k] for s in slices)
            summary[key][k] = {f"{base}_us": b, f"{name}_us": p, "more_median_pct": statistics.median(extra)}
            print(f"{what} a request: {base} {b:.1f} us, {name} {p:.1f} us (medians); {name}'s more, "
                  f"slice by slice: median {statistics.median(extra):.1f}%")
    for name, (_, _, _, link) in pairs.items():
        out, into = (statistics.median(s[name][k] for s in slices) for k in ("segs_out", "segs_in"))
        summary[name]["segs_out"], summary[name]["segs_in"] = out, into
        print(f"{name}: TCP segments a request in the primary's namespace (medians): {out:.2f} sent, "
              f"{into:.2f} received" + (" (over the loopback, both sides')" if link == "loopback" else ""))
    with open(a.json, "w") as f:
        json.dump({"slices": slices, "requests": a.requests, "clients": a.clients, "boots": a.boots, "summary": summary,
                   "pair_args": a.pair_args, "pair2": a.pair2, "pair2_args": a.pair2_args,
                   "link": a.link, "link2": (a.link2 or a.link) if a.pair2 else None}, f, indent=2)


if __name__ == "__main__":
    main()
