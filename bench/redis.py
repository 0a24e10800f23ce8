#!/usr/bin/env python3
"""redis-benchmark against redis in the guest, on ftvm and on qemu-system-riscv64, both with a
virtio-net device on a TAP interface in a network of namespaces built for the run.

usage: bench/redis.py [--requests N] [--clients C] [--repeat R] [--pin] [--threads] [--json FILE]
                      [--engines ftvm,ftvm-pair,ftvm-pair-epoch,qemu,qemu-icount]
Each round runs every engine once, in turn (A, B, A, B...: this machine's speed drifts), and
the medians over the rounds are reported. An ftvm engine may name the binary to run,
`ENGINE@PATH` (an A/B of two builds: `--engines ftvm-pair@/tmp/old,ftvm-pair@/tmp/new`);
otherwise it is $FTVM or target/release/ftvm. `--threads` prints, per run, each ftvm thread's
CPU time and context switches per request, each CPU's busy time per request and the share the
hypervisor took from it (stolen), all read from /proc before and after the benchmark, so boot
is not counted; and the guest's instructions per request (from the management API). Every
engine after the first is compared with it round by round: its throughput loss in each round and
the median of those (the figure for a pair against the unreplicated run).
Needs root (namespaces, TAP), Debian's redis-tools and qemu-system-misc.
"""
import argparse, atexit, json, os, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST = os.path.join(ROOT, "guest", "out")
FTVM = os.environ.get("FTVM", os.path.join(ROOT, "target", "release", "ftvm"))
HOST_NS, CLIENT_NS, TAP = "ftvmb-h", "ftvmb-c", "ftapb0"
GUEST_IP, CLIENT_IP = "10.78.0.10", "10.78.0.2"
APPEND = f"console=ttyS0 ftvm.ip={GUEST_IP}/24"
MAC = "52:54:00:78:00:10"


def sh(*args, check=True):
    return subprocess.run(list(args), check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def net_up(taps=(TAP,)):
    """The host's namespace with a bridge and these TAPs on it, and the client's namespace."""
    net_down()
    sh("ip", "netns", "add", HOST_NS)
    sh("ip", "netns", "add", CLIENT_NS)
    sh("ip", "link", "add", "fvb-a", "type", "veth", "peer", "name", "fvb-b")
    sh("ip", "link", "set", "fvb-a", "netns", HOST_NS)
    sh("ip", "link", "set", "fvb-b", "netns", CLIENT_NS)
    h = ["ip", "netns", "exec", HOST_NS]
    sh(*h, "ip", "link", "add", "fbr0", "type", "bridge")
    for tap in taps:
        sh(*h, "ip", "tuntap", "add", "dev", tap, "mode", "tap")
        sh(*h, "ip", "link", "set", tap, "master", "fbr0")
    sh(*h, "ip", "link", "set", "fvb-a", "master", "fbr0")
    for d in ["fbr0", *taps, "fvb-a", "lo"]:
        sh(*h, "ip", "link", "set", d, "up")
    c = ["ip", "netns", "exec", CLIENT_NS]
    sh(*c, "ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "fvb-b")
    sh(*c, "ip", "link", "set", "fvb-b", "up")
    sh(*c, "ip", "link", "set", "lo", "up")


def net_down():
    for ns in (HOST_NS, CLIENT_NS):
        sh("ip", "netns", "del", ns, check=False)


PSK = os.path.join(ROOT, "bench", "out", "bench.psk")
# Each pair's arbiter (a fresh path per pair), removed when the process ends.
ARBITERS = tempfile.mkdtemp(prefix="ftvm-bench-arbiters-")
# The engine's (or the primary's) management API: its instruction count, before and after.
API = os.path.join(ARBITERS, "api.sock")
atexit.register(shutil.rmtree, ARBITERS, True)


def engine_cmd(spec):
    engine, _, binary = spec.partition("@")
    ftvm = binary or FTVM
    images = ["--kernel", os.path.join(GUEST, "Image"), "--initrd", os.path.join(GUEST, "initramfs.cpio.gz")]
    common = [*images, "--append", APPEND, "--net", f"tap={TAP},mac={MAC}"]
    api = ["--api-socket", API]
    if engine == "ftvm":
        return [ftvm, "run", *api, *common]
    if engine.startswith("ftvm-pair"):
        pair = ["--psk", PSK, "--arbiter", "file:" + os.path.join(ARBITERS, f"arbiter-{time.time_ns()}")]
        if engine.endswith("epoch"):
            pair += ["--delivery", "epoch", "--epoch", "1000000"]
        return [ftvm, "primary", "--listen", "127.0.0.1:7701", *api, *pair, *common], \
            [ftvm, "backup", "--primary", "127.0.0.1:7701", *pair, *common]
    icount = ["-icount", "shift=0"] if engine == "qemu-icount" else []
    return ["qemu-system-riscv64", *icount, "-M", "virt", "-m", "256M", "-display", "none", "-serial", "stdio",
            "-monitor", "none", "-kernel", images[1], "-initrd", images[3], "-append", APPEND,
            "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
            "-device", f"virtio-net-device,netdev=n0,mac={MAC}"]


def instructions(ftvm):
    """The guest's instruction count, from the engine's management API (None for QEMU)."""
    r = sh(ftvm, "ctl", API, "state", check=False)
    try:
        return int(json.loads(r.stdout)["instructions"])
    except (ValueError, KeyError, TypeError):
        return None


def threads(pids):
    """CPU time (clock ticks) and voluntary and involuntary context switches of every thread of
    these processes, by (role, thread id, name); and each CPU's times from /proc/stat."""
    out = {}
    for role, pid in pids.items():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for t in tids:
            try:
                st = open(f"/proc/{pid}/task/{t}/stat").read()
                status = open(f"/proc/{pid}/task/{t}/status").read()
            except OSError:
                continue
            name = st[st.index("(") + 1:st.rindex(")")]
            f = st[st.rindex(")") + 2:].split()
            sw = {k: int(status.split(k + ":")[1].split()[0])
                  for k in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")}
            out[(role, t, name)] = (int(f[11]) + int(f[12]), sw["voluntary_ctxt_switches"],
                                    sw["nonvoluntary_ctxt_switches"])
    cpus = {}
    for line in open("/proc/stat"):
        if line.startswith("cpu") and line[3] != " ":
            x = line.split()
            cpus[x[0]] = [int(v) for v in x[1:]]
    return out, cpus


def print_threads(before, after, n):
    hz = os.sysconf("SC_CLK_TCK")
    (a, ca), (b, cb) = before, after
    for k in sorted(b):
        if k in a:
            cpu = (b[k][0] - a[k][0]) * 1e6 / hz / n
            if cpu >= 0.5:
                print(f"    {k[0]:8} {k[2]:16} {cpu:7.1f} us/request, switches a request:"
                      f" voluntary {(b[k][1] - a[k][1]) / n:5.2f}, preempted {(b[k][2] - a[k][2]) / n:5.2f}")
    for c in sorted(cb):
        d = [y - x for x, y in zip(ca[c], cb[c])]
        # user nice system idle iowait irq softirq steal: the time the hypervisor gave to
        # others (steal) is neither busy nor idle here.
        busy = sum(d[:8]) - d[3] - d[4] - d[7]
        print(f"    {c}: busy {busy * 1e6 / hz / n:6.1f} us/request ({busy * 100 / max(1, sum(d[:8])):.0f}%),"
              f" softirq {d[6] * 100 / max(1, sum(d[:8])):.0f}%, stolen {d[7] * 100 / max(1, sum(d[:8])):.0f}%")


def bench(engine, requests, clients, pin=False, show_threads=False):
    cmd = engine_cmd(engine)
    # --pin: the guest's engine and the client on CPU 0, a backup on CPU 1, as if the backup
    # had a host of its own; the unreplicated engines get the same CPU 0 and leave CPU 1 idle.
    main_cpu, backup_cpu = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if pin else ([], [])
    backup = None
    if isinstance(cmd, tuple):
        cmd, bcmd = cmd
        # The backup shares the host here: only the replication stream matters for throughput.
        backup = subprocess.Popen(["ip", "netns", "exec", HOST_NS, *backup_cpu, *bcmd], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = subprocess.Popen(["ip", "netns", "exec", HOST_NS, *main_cpu, *cmd], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    buf, t0 = b"", time.monotonic()
    while b"ftvm-guest: ready" not in buf:
        chunk = p.stdout.read1(65536)
        if not chunk or time.monotonic() - t0 > 300:
            p.kill()
            err = p.stderr.read().decode(errors="replace")
            sys.exit(f"{engine}: guest did not get ready:\n{buf[-2000:].decode(errors='replace')}\n{err[-2000:]}")
        buf += chunk
    c = ["ip", "netns", "exec", CLIENT_NS]
    for _ in range(100):
        if sh(*c, "redis-cli", "-h", GUEST_IP, "ping", check=False).stdout.strip() == b"PONG":
            break
        time.sleep(0.2)
    # `ip netns exec` and `taskset` exec the engine: these are its processes.
    pids = {"primary": p.pid, "backup": backup.pid} if backup else {"engine": p.pid}
    before = threads(pids) if show_threads else None
    ftvm = engine.partition("@")[2] or FTVM
    count0 = instructions(ftvm) if show_threads and engine.startswith("ftvm") else None
    r = sh(*c, *main_cpu, "redis-benchmark", "-h", GUEST_IP, "-c", str(clients), "-n", str(requests),
           "-t", "set,get", "--csv", check=False)
    if show_threads:
        print(f"  {engine}:")
        print_threads(before, threads(pids), 2 * requests)
        count1 = instructions(ftvm) if count0 is not None else None
        if count1 is not None:
            print(f"    guest: {(count1 - count0) / (2 * requests):,.0f} instructions/request")
    p.stdin.write(b"poweroff\n")
    p.stdin.flush()
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
    err = p.stderr.read().decode(errors="replace")
    if backup:
        try:
            backup.wait(timeout=30)
        except subprocess.TimeoutExpired:
            backup.kill()
    res = {}
    import re
    m = re.search(r"logged \d+ instructions, \d+ events, (\d+) bytes of log in ([0-9.]+) s", err)
    if m:
        res["log_mbit_s"] = int(m.group(1)) * 8 / float(m.group(2)) / 1e6
    m = re.search(r"outputs held for the backup: \d+ outputs, median ([0-9.]+) ms, p99 ([0-9.]+) ms", err)
    if m:
        res["hold_p50_ms"], res["hold_p99_ms"] = float(m.group(1)), float(m.group(2))
    # Columns by name (redis 7.0: test, rps, avg, min, p50, p95, p99, max; until 2026-12-02
    # this read the sixth, p95, as the median).
    lines = [[x.strip('"') for x in line.split(",")] for line in r.stdout.decode().splitlines()]
    head = next((f for f in lines if f and f[0] == "test"), [])
    for f in lines:
        if f[0] in ("SET", "GET") and "p50_latency_ms" in head:
            row = dict(zip(head, f))
            res[f[0]] = {"rps": float(row["rps"]), "p50_ms": float(row["p50_latency_ms"])}
    if r.returncode != 0 or "SET" not in res or "GET" not in res or b"rror" in r.stderr:
        sys.exit(f"{engine}: redis-benchmark failed: {r.stderr.decode()[-500:]}")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "out", "redis.json"))
    ap.add_argument("--engines", default="ftvm,ftvm-pair,ftvm-pair-epoch,qemu,qemu-icount")
    ap.add_argument("--pin", action="store_true",
                    help="engine and client on CPU 0, the backup alone on CPU 1")
    ap.add_argument("--threads", action="store_true",
                    help="print each run's CPU time and context switches per request, by thread")
    a = ap.parse_args()
    engines = a.engines.split(",")
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    os.makedirs(os.path.dirname(PSK), exist_ok=True)
    with open(PSK, "wb") as f:
        f.write(os.urandom(32))
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ftvm"], cwd=ROOT, check=True)
    net_up()
    try:
        results = {}
        all_runs = {e: [] for e in engines}
        for _ in range(a.repeat):
            for engine in engines:
                all_runs[engine].append(bench(engine, a.requests, a.clients, a.pin, a.threads))
        for engine in engines:
            runs = all_runs[engine]
            results[engine] = {op: {k: statistics.median(r[op][k] for r in runs) for k in ("rps", "p50_ms")}
                               for op in ("SET", "GET")}
            for k in ("log_mbit_s", "hold_p50_ms", "hold_p99_ms"):
                if any(k in r for r in runs):
                    results[engine][k] = statistics.median(r[k] for r in runs if k in r)
    finally:
        net_down()
    with open(a.json, "w") as f:
        json.dump({"requests": a.requests, "clients": a.clients, "repeat": a.repeat, "results": results,
                   "rounds": all_runs}, f, indent=2)
    print(f"\nredis-benchmark -c {a.clients} -n {a.requests} over TAP (median of {a.repeat})")
    width = max(16, *(len(e) + 1 for e in results))
    print(f"{'engine':<{width}} {'SET/s':>9} {'SET p50 ms':>11} {'GET/s':>9} {'GET p50 ms':>11} {'log Mbit/s':>11}"
          f" {'held p50 ms':>12} {'held p99 ms':>12}")
    for e, r in results.items():
        opt = [f"{r[k]:.2f}" if k in r else "-" for k in ("log_mbit_s", "hold_p50_ms", "hold_p99_ms")]
        print(f"{e:<{width}} {r['SET']['rps']:>9.0f} {r['SET']['p50_ms']:>11.2f} {r['GET']['rps']:>9.0f} {r['GET']['p50_ms']:>11.2f}"
              f" {opt[0]:>11} {opt[1]:>12} {opt[2]:>12}")
    # Each engine's throughput loss against the first one, round by round (the two ran minutes
    # apart at most, so this machine's drift hardly enters), and its median over the rounds.
    base = engines[0]
    for e in engines[1:]:
        for op in ("SET", "GET"):
            loss = [100 * (1 - r[op]["rps"] / b[op]["rps"]) for r, b in zip(all_runs[e], all_runs[base])]
            print(f"{e} against {base}, {op}: loss by round {', '.join(f'{x:.0f}%' for x in loss)};"
                  f" median {statistics.median(loss):.1f}%")


if __name__ == "__main__":
    main()
