#!/usr/bin/env python3
"""N-modular redundancy: what voting costs, and how fast it finds faults.

1. redis-benchmark -c C -n R (SET, GET) against the guest on N = 1 (`ftvm run`), 2 and 3
   replicas (`ftvm primary/backup --replicas N`; every replica on this host), and the pair
   (no votes) for reference. The configurations alternate within each round; medians of the
   rounds are reported, with the ratio to N = 1.
2. Detection: a TMR group runs under a write load while the third replica is started again
   and again, each time with one random fault (`--inject SPEC@+COUNT`: a random bit of a
   random x register, CSR or RAM word, at a random count after it attached). For each
   injection: whether the group found it (output vote or state digest) and how long after the
   injection, in instructions and in milliseconds, as the faulty replica reports it; a fault
   that changes neither an output nor the state within the wait is masked (a register that
   was dead, a RAM word that was free and written over).

usage: bench/nmr.py [--requests N] [--clients C] [--repeat R] [--injections K] [--json FILE]
Needs root (namespaces, TAP) and Debian's redis-tools.
"""
import argparse, json, os, random, re, shutil, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import redis as rb  # noqa: E402  (bench/redis.py: the namespaces and the guest's command line)

FTVM = rb.FTVM
LISTEN = "127.0.0.1:7702"
DIGEST_EVERY = "100000000"


def member_cmds(n, arbiter, inject=None):
    """The leader's and the followers' commands for a group of n (n = 1: a plain run)."""
    run = rb.engine_cmd("ftvm")
    common = run[2:]
    if n == 1:
        return run, []
    pair = ["--psk", rb.PSK, "--arbiter", f"file:{arbiter}", "--digest-every", DIGEST_EVERY]
    size = [] if n == "pair" else ["--replicas", str(n)]
    leader = [FTVM, "primary", "--listen", LISTEN, *pair, *size, *common]
    count = 1 if n == "pair" else n - 1
    followers = [[FTVM, "backup", "--primary", LISTEN, *pair, *size, *common] for _ in range(count)]
    if inject:
        followers[-1] += ["--inject", inject]
    return leader, followers


class Proc:
    """A process in the host namespace whose stderr is collected as it comes."""

    def __init__(self, cmd, stdout=subprocess.DEVNULL):
        self.p = subprocess.Popen(["ip", "netns", "exec", rb.HOST_NS, *cmd], stdin=subprocess.PIPE,
                                  stdout=stdout, stderr=subprocess.PIPE)
        self.err = []
        self.t = threading.Thread(target=self._drain, daemon=True)
        self.t.start()

    def _drain(self):
        for line in self.p.stderr:
            self.err.append(line.decode(errors="replace"))

    def text(self):
        return "".join(self.err)

    def wait_for(self, what, limit):
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            if what in self.text():
                return True
            if self.p.poll() is not None:
                return what in self.text()
            time.sleep(0.02)
        return False

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def start_group(n, arbiter, inject=None):
    lcmd, fcmds = member_cmds(n, arbiter, inject)
    leader = Proc(lcmd, stdout=subprocess.PIPE)
    followers = []
    if fcmds:
        time.sleep(0.3)
        followers.append(Proc(fcmds[0]))
    buf, t0 = b"", time.monotonic()
    while b"ftvm-guest: ready" not in buf:
        chunk = leader.p.stdout.read1(65536)
        if not chunk or time.monotonic() - t0 > 300:
            sys.exit(f"N={n}: the guest did not get ready:\n{leader.text()[-2000:]}")
        buf += chunk
    threading.Thread(target=lambda: shutil.copyfileobj(leader.p.stdout, open(os.devnull, "wb")), daemon=True).start()
    for i, f in enumerate(fcmds[1:], start=2):
        followers.append(Proc(f))
        if not leader.wait_for(f"replica {i} joined the group", 120):
            sys.exit(f"N={n}: replica {i} never joined:\n{leader.text()[-3000:]}")
    c = ["ip", "netns", "exec", rb.CLIENT_NS]
    for _ in range(100):
        if rb.sh(*c, "redis-cli", "-h", rb.GUEST_IP, "ping", check=False).stdout.strip() == b"PONG":
            break
        time.sleep(0.2)
    return leader, followers


def stop_group(leader, followers):
    try:
        leader.p.stdin.write(b"poweroff\n")
        leader.p.stdin.flush()
        leader.p.wait(timeout=60)
    except (BrokenPipeError, subprocess.TimeoutExpired):
        pass
    for p in [leader, *followers]:
        try:
            p.p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        p.stop()


def redis_run(n, requests, clients, arbiters):
    leader, followers = start_group(n, os.path.join(arbiters, f"a-{time.time_ns()}"))
    c = ["ip", "netns", "exec", rb.CLIENT_NS]
    r = rb.sh(*c, "redis-benchmark", "-h", rb.GUEST_IP, "-c", str(clients), "-n", str(requests),
              "-t", "set,get", "--csv", check=False)
    stop_group(leader, followers)
    lines = [[x.strip('"') for x in l.split(",")] for l in r.stdout.decode().splitlines()]
    head = next((l for l in lines if l and l[0] == "test"), None)
    res = {}
    for f in lines:
        if head and f[0] in ("SET", "GET"):
            row = dict(zip(head, f))
            res[f[0]] = {"rps": float(row["rps"]), "p50_ms": float(row["p50_latency_ms"]),
                         "p99_ms": float(row["p99_latency_ms"])}
    if "SET" not in res or "GET" not in res:
        sys.exit(f"N={n}: redis-benchmark failed: {r.stderr.decode()[-500:]}\n{leader.text()[-2000:]}")
    m = re.search(r"outputs held for the backup: \d+ outputs, median ([0-9.]+) ms, p99 ([0-9.]+) ms", leader.text())
    if m:
        res["hold_p50_ms"], res["hold_p99_ms"] = float(m.group(1)), float(m.group(2))
    return res


CSRS = ["mstatus", "mepc", "mtvec", "mscratch", "mcause", "mtval", "mie", "sstatus", "sepc", "stvec",
        "sscratch", "scause", "stval", "satp"]


def random_fault(rng):
    kind = rng.choice(["x", "x", "csr", "ram"])
    bit = rng.randrange(64)
    if kind == "x":
        return f"x{rng.randrange(1, 32)}:{bit}"
    if kind == "csr":
        return f"csr:{rng.choice(CSRS)}:{bit}"
    # Anywhere in the guest's 256 MiB.
    return f"ram:{0x80000000 + rng.randrange(256 << 20):#x}:{bit}"


WRITER = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 6379), timeout=60)
f = s.makefile("rb")
i = 0
while True:
    v = b"v%d" % i
    s.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\nk%d\r\n$%d\r\n%s\r\n" % (len(b"k%d" % (i % 1000)), i % 1000, len(v), v))
    if f.readline().strip() != b"+OK":
        print("wrong reply", flush=True)
        sys.exit(1)
    i += 1
"""


def detection(k, seed, arbiters):
    rng = random.Random(seed)
    arbiter = os.path.join(arbiters, f"a-{time.time_ns()}")
    leader, followers = start_group(3, arbiter)
    writer = subprocess.Popen(["ip", "netns", "exec", rb.CLIENT_NS, "python3", "-c", WRITER, rb.GUEST_IP],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = []
    _, fcmds = member_cmds(3, arbiter)
    try:
        for i in range(k):
            # The last follower again, with one fault.
            followers[-1].stop()
            spec = f"{random_fault(rng)}@+{rng.randrange(20_000_000, 120_000_000)}"
            joined = leader.text().count("joined the group")
            f = Proc([*fcmds[-1], "--inject", spec])
            followers[-1] = f
            t0 = time.monotonic()
            while leader.text().count("joined the group") == joined and time.monotonic() - t0 < 120:
                time.sleep(0.05)
            t0 = time.monotonic()
            while not re.search("fault injected at instruction|was not injected", f.text()):
                if time.monotonic() - t0 > 60 or f.p.poll() is not None:
                    break
                time.sleep(0.02)
            if "fault injected at instruction" not in f.text():
                results.append({"spec": spec, "outcome": "not injected", "why": f.text()[-300:]})
                print(f"  {i + 1:3d}/{k} {spec:<40} not injected", flush=True)
                continue
            # A few digest intervals of guest time (100 M instructions each) to be found.
            found = f.wait_for("found faulty", 6)
            text = f.text()
            m = re.search(r"found faulty by the group at instruction (\d+) \((its \w+(?: \w+)?) differ.*?"
                          r"detected (\d+) instructions and ([0-9.]+) ms later", text)
            if found and m:
                how = "digest" if "digest" in m.group(2) else "output"
                results.append({"spec": spec, "outcome": how, "instructions": int(m.group(3)),
                                "ms": float(m.group(4))})
            else:
                results.append({"spec": spec, "outcome": "masked"})
            print(f"  {i + 1:3d}/{k} {spec:<40} {results[-1]['outcome']:<8} "
                  f"{results[-1].get('instructions', '')} {results[-1].get('ms', '')}", flush=True)
            if leader.p.poll() is not None:
                sys.exit(f"the leader stopped:\n{leader.text()[-3000:]}")
    finally:
        writer.kill()
        out, _ = writer.communicate()
        stop_group(leader, followers)
    if b"wrong reply" in out:
        sys.exit("the client got a wrong reply")
    return results


def quantiles(xs):
    xs = sorted(xs)
    if not xs:
        return {}
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]
    return {"n": len(xs), "min": xs[0], "p50": q(0.5), "p90": q(0.9), "max": xs[-1]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--injections", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--configs", default="1,2,3,pair")
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "out", "nmr.json"))
    a = ap.parse_args()
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    os.makedirs(os.path.dirname(rb.PSK), exist_ok=True)
    with open(rb.PSK, "wb") as f:
        f.write(os.urandom(32))
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ftvm"], cwd=ROOT, check=True)
    arbiters = tempfile.mkdtemp(prefix="ftvm-nmr-arbiters-")
    configs = [c if c == "pair" else int(c) for c in a.configs.split(",") if c]
    rb.net_up()
    try:
        runs = {c: [] for c in configs}
        for r in range(a.repeat):
            order = configs if r % 2 == 0 else list(reversed(configs))
            for c in order:
                runs[c].append(redis_run(c, a.requests, a.clients, arbiters))
                print(f"  round {r + 1} N={c}: {runs[c][-1]}", flush=True)
        tput = {str(c): {op: {k: statistics.median(x[op][k] for x in rs) for k in ("rps", "p50_ms", "p99_ms")}
                         for op in ("SET", "GET")} for c, rs in runs.items()}
        det = detection(a.injections, a.seed, arbiters) if a.injections else []
    finally:
        rb.net_down()
        shutil.rmtree(arbiters, True)
    found = [d for d in det if d["outcome"] in ("output", "digest")]
    summary = {
        "injections": len(det),
        "by_outcome": {o: sum(d["outcome"] == o for d in det) for o in ("output", "digest", "masked", "not injected")},
        "instructions": quantiles([d["instructions"] for d in found]),
        "ms": quantiles([d["ms"] for d in found]),
    }
    with open(a.json, "w") as f:
        json.dump({"requests": a.requests, "clients": a.clients, "repeat": a.repeat, "throughput": tput,
                   "detection": summary, "injections": det}, f, indent=2)
    base = tput.get("1")
    print(f"\nredis-benchmark -c {a.clients} -n {a.requests} (median of {a.repeat}; ratio to N=1)")
    print(f"{'N':<6} {'SET/s':>8} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'GET/s':>8} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7}")
    for c, r in tput.items():
        ratio = lambda op: f"{r[op]['rps'] / base[op]['rps']:.2f}" if base else "-"
        print(f"{c:<6} {r['SET']['rps']:>8.0f} {ratio('SET'):>6} {r['SET']['p50_ms']:>7.2f} {r['SET']['p99_ms']:>7.2f}"
              f" {r['GET']['rps']:>8.0f} {ratio('GET'):>6} {r['GET']['p50_ms']:>7.2f} {r['GET']['p99_ms']:>7.2f}")
    if det:
        print(f"\ndetection over {len(det)} injections: {summary['by_outcome']}")
        print(f"  instructions from injection to detection: {summary['instructions']}")
        print(f"  milliseconds from injection to detection: {summary['ms']}")


if __name__ == "__main__":
    main()
