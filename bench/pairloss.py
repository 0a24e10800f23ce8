#!/usr/bin/env python3
"""The pair's throughput loss, measured in slices of a second: an unreplicated guest and a pair's
primary run at the same time, each on its own TAP of one bridge, and short redis-benchmark runs
go to one and then the other, in turn, for many slices.

usage: bench/pairloss.py [--slices N] [--requests N] [--clients C] [--json FILE]
                         [--unreplicated BINARY] [--pair BINARY] [--pair-args "ARGS"]

This machine's speed drifts by half within minutes (bench/redis.py, which boots each engine in
turn for a run of tens of seconds, sees the same build's loss move from -6% to 53% from round to
round). Here the two guests are booted once and the runs that are compared are a second apart,
so drift hardly enters a slice's ratio; the median over the slices is the loss, and the spread
of the slices says how far to trust it. Each slice also reads the CPU time the engine's process
(the primary's, for the pair) and CPU 0 spent a request, from /proc. As with `bench/redis.py --pin`: both engines and the
client on CPU 0, the backup alone on CPU 1 (as if it had a host of its own). The engine not
being measured idles meanwhile (an idle guest costs its host next to nothing; the pair's
heartbeats go on).
Needs root (namespaces, TAP) and Debian's redis-tools.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis as lab  # noqa: E402  (bench/redis.py: the namespaces, their network, sh)

ROOT, GUEST, FTVM, HOST_NS, CLIENT_NS, sh = lab.ROOT, lab.GUEST, lab.FTVM, lab.HOST_NS, lab.CLIENT_NS, lab.sh
# Each guest: its TAP, address and MAC, on bench/redis.py's network.
GUESTS = {"unreplicated": (lab.TAP, lab.GUEST_IP, lab.MAC),
          "pair": ("ftapb1", "10.78.0.11", "52:54:00:78:00:11")}


def guest_args(name):
    tap, ip, mac = GUESTS[name]
    return ["--kernel", os.path.join(GUEST, "Image"), "--initrd", os.path.join(GUEST, "initramfs.cpio.gz"),
            "--append", f"console=ttyS0 ftvm.ip={ip}/24", "--net", f"tap={tap},mac={mac}"]


def start(cmd, cpu, err, console=True):
    """An engine on this CPU, its messages to the file `err`; its console is read (`console`) or
    thrown away."""
    with open(err, "wb") as f:
        return subprocess.Popen(["ip", "netns", "exec", HOST_NS, "taskset", "-c", cpu, *cmd],
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
    """CPU time (clock ticks) of a process, all its threads; and CPU 0's busy ticks."""
    f = open(f"/proc/{pid}/stat").read()
    f = f[f.rindex(")") + 2:].split()
    for line in open("/proc/stat"):
        if line.startswith("cpu0 "):
            d = [int(v) for v in line.split()[1:9]]
            # user nice system idle iowait irq softirq steal: busy is neither idle, iowait nor steal.
            return int(f[11]) + int(f[12]), sum(d) - d[3] - d[4] - d[7]
    return int(f[11]) + int(f[12]), 0


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
    out["cpu0_us"] = (after[1] - before[1]) * us
    return out


def quartiles(xs):
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=30)
    ap.add_argument("--requests", type=int, default=4000, help="requests of each kind (SET, GET) a slice")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--unreplicated", default=FTVM, help="the ftvm binary for the unreplicated guest")
    ap.add_argument("--pair", default=FTVM, help="the ftvm binary for the pair")
    ap.add_argument("--pair-args", default="", help="more options for both sides of the pair")
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
    pair = ["--psk", psk, "--arbiter", "file:" + os.path.join(work, "arbiter"), *a.pair_args.split()]
    procs = []
    lab.net_up(taps=[tap for tap, _, _ in GUESTS.values()])
    try:
        err = {k: os.path.join(work, k + ".err") for k in ("unreplicated", "backup", "primary")}
        procs.append(start([a.unreplicated, "run", *guest_args("unreplicated")], "0", err["unreplicated"]))
        await_ready("unreplicated", procs[-1], err["unreplicated"])
        procs.append(start([a.pair, "backup", "--primary", "127.0.0.1:7702", *pair, *guest_args("pair")], "1",
                           err["backup"], console=False))
        procs.append(start([a.pair, "primary", "--listen", "127.0.0.1:7702", *pair, *guest_args("pair")], "0",
                           err["primary"]))
        await_ready("pair", procs[-1], err["primary"])
        # A slice of each to warm up (the guests' first requests fault their pages in), not counted.
        pids = {"unreplicated": procs[0].pid, "pair": procs[2].pid}
        run("unreplicated", a.requests, a.clients, pids["unreplicated"])
        run("pair", a.requests, a.clients, pids["pair"])
        slices = []
        for i in range(a.slices):
            # Which one goes first alternates too.
            order = ("unreplicated", "pair") if i % 2 == 0 else ("pair", "unreplicated")
            got = {name: run(name, a.requests, a.clients, pids[name]) for name in order}
            slices.append(got)
            loss = {op: 100 * (1 - got["pair"][op] / got["unreplicated"][op]) for op in ("SET", "GET")}
            u, p = got["unreplicated"], got["pair"]
            print(f"slice {i + 1:3}: unreplicated SET {u['SET']:6.0f} GET {u['GET']:6.0f}, {u['engine_us']:5.1f} us "
                  f"a request ({u['cpu0_us']:5.1f} on CPU 0); pair SET {p['SET']:6.0f} GET {p['GET']:6.0f}, "
                  f"{p['engine_us']:5.1f} us ({p['cpu0_us']:5.1f}); loss SET {loss['SET']:5.1f}% "
                  f"GET {loss['GET']:5.1f}%", flush=True)
    finally:
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
        lab.net_down()
        shutil.rmtree(work, True)
    summary = {}
    print(f"\n{a.slices} slices of {a.requests} SET and {a.requests} GET, -c {a.clients}, the two guests in turn")
    for op in ("SET", "GET"):
        loss = [100 * (1 - s["pair"][op] / s["unreplicated"][op]) for s in slices]
        lo, hi = quartiles(loss)
        u = statistics.median(s["unreplicated"][op] for s in slices)
        p = statistics.median(s["pair"][op] for s in slices)
        summary[op] = {"loss_median_pct": statistics.median(loss), "loss_q1_pct": lo, "loss_q3_pct": hi,
                       "unreplicated_rps": u, "pair_rps": p}
        print(f"{op}: unreplicated {u:.0f}/s, pair {p:.0f}/s (medians); the pair's loss: median "
              f"{statistics.median(loss):.1f}%, quartiles {lo:.1f}% and {hi:.1f}%")
    for what, key in (("the engine's CPU (the primary's, for the pair)", "engine_us"), ("CPU 0 busy", "cpu0_us")):
        extra = [100 * (s["pair"][key] / s["unreplicated"][key] - 1) for s in slices if s["unreplicated"][key] > 0]
        if not extra:
            print(f"{what}: no CPU time was counted (slices too short for the clock ticks)")
            continue
        u = statistics.median(s["unreplicated"][key] for s in slices)
        p = statistics.median(s["pair"][key] for s in slices)
        summary[key] = {"unreplicated_us": u, "pair_us": p, "pair_more_median_pct": statistics.median(extra)}
        print(f"{what} a request: unreplicated {u:.1f} us, pair {p:.1f} us (medians); the pair's more, "
              f"slice by slice: median {statistics.median(extra):.1f}%")
    with open(a.json, "w") as f:
        json.dump({"slices": slices, "requests": a.requests, "clients": a.clients, "summary": summary,
                   "pair_args": a.pair_args}, f, indent=2)


if __name__ == "__main__":
    main()
