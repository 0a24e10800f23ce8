#!/usr/bin/env python3
"""The pauses a client of a replicated guest sees: at failover, and when a new backup attaches.

usage: bench/failover.py [--repeat R] [--push-input with-output|on-arrival] [--json FILE]
Each repetition: a pair boots (primary and backup on one host namespace, replication over
loopback), a client in another namespace writes keys over one TCP connection as fast as it can,
each SET acknowledged before the next, with a timestamp per acknowledgement;
  1. the backup is SIGKILLed; a new backup attaches (re-protection): the guest's pause is what
     the primary reports ("the guest paused X ms"), the client's gap the longest wait between two
     acknowledgements meanwhile;
  2. the primary is SIGKILLed at a random moment, with a request in flight: the failover pause is
     the longest gap between two acknowledgements after the kill, as the client saw it; the
     takeover is what the backup reports (from detecting the loss to running live).
Every acknowledged key must read back on the same connection. Needs root (namespaces, TAP).

With `--push-input on-arrival` the primary sends the log to the backup as soon as a request
enters the guest, so the request in flight survives the primary and the backup answers it: the
client needs no retransmission. By default (`with-output`, the pair's default) a request goes
to the backup with its answer, so one the primary dies with before answering is lost with it.
Such a request, and in either mode one that reaches neither side (sent to the dead primary's
host before the backup announced itself), is sent again only after the client's TCP
retransmission timeout, at least 200 ms on Linux by default. The same trials are then run with the client's route set to `rto_min 20ms`
(a common data-center setting).
"""
import argparse, json, os, random, re, statistics, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis as lab  # the namespaces, TAP and engine command lines of the redis benchmark

ROOT = lab.ROOT
ADDR = "127.0.0.1:7702"

CLIENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 6379), timeout=30)
f = s.makefile("rb")
def cmd(*a):
    s.sendall(b"*%d\r\n" % len(a) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in a))
    line = f.readline()
    if line.startswith(b"$"):
        n = int(line[1:])
        return None if n < 0 else f.read(n + 2)[:-2]
    return line.strip()
i = 0
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    assert cmd(b"SET", b"k%d" % i, b"v%d" % i) == b"+OK"
    i += 1
    print("acked", i, time.monotonic(), flush=True)
missing = sum(cmd(b"GET", b"k%d" % j) != b"v%d" % j for j in range(i))
print("done", i, missing, flush=True)
"""


PUSH_INPUT = "with-output"


def side(role, arbiter, stderr):
    cmd = lab.engine_cmd("ftvm-pair")
    primary, backup = (c + ["--push-input", PUSH_INPUT] for c in cmd)
    # engine_cmd gives both sides their own arbiter path; this run shares one and its address.
    def fix(c):
        c = [ADDR if x == "127.0.0.1:7701" else x for x in c]
        i = c.index("--arbiter")
        c[i + 1] = arbiter
        return c
    c = fix(primary if role == "primary" else backup)
    return subprocess.Popen(["ip", "netns", "exec", lab.HOST_NS, *c], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE if role == "primary" else subprocess.DEVNULL,
                            stderr=stderr)


def wait_line(path, pattern, limit):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        m = re.search(pattern, open(path, errors="replace").read())
        if m:
            return m
        time.sleep(0.02)
    sys.exit(f"timed out waiting for {pattern!r} in {path}:\n{open(path).read()[-2000:]}")


def trial(n, out):
    arbiter = "file:" + os.path.join(lab.ARBITERS, f"arbiter-{time.time_ns()}")
    logs = {k: os.path.join(out, f"failover-{k}.stderr") for k in ("primary", "backup1", "backup2")}
    files = {k: open(v, "w") for k, v in logs.items()}
    procs = []
    try:
        p = side("primary", arbiter, files["primary"])
        procs.append(p)
        time.sleep(0.3)
        b1 = side("backup", arbiter, files["backup1"])
        procs.append(b1)
        buf = b""
        while b"ftvm-guest: ready" not in buf:
            chunk = p.stdout.read1(65536)
            if not chunk:
                sys.exit(f"the primary stopped:\n{open(logs['primary']).read()}")
            buf += chunk
        subprocess.Popen(["sh", "-c", "cat > /dev/null"], stdin=p.stdout)  # keep draining
        c = subprocess.Popen(["ip", "netns", "exec", lab.CLIENT_NS, "python3", "-c", CLIENT, lab.GUEST_IP, "12"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        procs.append(c)
        acks, last = [], []

        def reader():
            for line in c.stdout:
                if line.startswith("acked"):
                    acks.append(float(line.split()[2]))
                else:
                    last.append(line)
        threading.Thread(target=reader, daemon=True).start()

        def gap_after(t0, t1=None):
            around = [t0] + [a for a in acks if a > t0 and (t1 is None or a <= t1)]
            return max((b - a for a, b in zip(around, around[1:])), default=0)
        time.sleep(1.5)
        # 1. The backup dies; a new one attaches.
        b1.kill()
        b1.wait()
        wait_line(logs["primary"], r"running on unprotected", 10)
        time.sleep(0.5)
        b2 = side("backup", arbiter, files["backup2"])
        procs.append(b2)
        attach_start = time.monotonic()
        reprotect = float(wait_line(logs["primary"], r"paused ([0-9.]+) ms", 30).group(1))
        time.sleep(0.5)
        attach_gap = gap_after(attach_start, time.monotonic())
        time.sleep(1.0 + random.random() * 2)
        # 2. The primary dies at a random moment.
        killed = time.monotonic()
        p.kill()
        p.wait()
        m = wait_line(logs["backup2"], r"backup live at instruction \d+ \((\d+) ms after detection\)", 10)
        takeover = int(m.group(1))
        c.wait(timeout=90)
        pause = gap_after(killed)
        done = (last or ["?"])[-1].split()
        if done[0] != "done" or done[2] != "0":
            sys.exit(f"acknowledged keys lost: {done}")
        b2.stdin.write(b"poweroff\n")
        b2.stdin.flush()
        b2.wait(timeout=60)
        r = {"failover_pause_ms": pause * 1000, "takeover_ms": takeover,
             "reprotect_pause_ms": reprotect, "reprotect_client_gap_ms": attach_gap * 1000,
             "keys": int(done[1])}
        print(f"trial {n}: failover pause {r['failover_pause_ms']:.0f} ms (takeover {takeover} ms), "
              f"re-protection pause {reprotect} ms (client gap {r['reprotect_client_gap_ms']:.0f} ms), "
              f"{r['keys']} keys read back", flush=True)
        return r
    finally:
        for q in procs:
            if q.poll() is None:
                q.kill()
                q.wait()
        for f in files.values():
            f.close()


def main():
    global PUSH_INPUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--push-input", default="with-output", choices=["with-output", "on-arrival"])
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "out", "failover.json"))
    a = ap.parse_args()
    PUSH_INPUT = a.push_input
    out = os.path.dirname(a.json)
    os.makedirs(out, exist_ok=True)
    os.makedirs(os.path.dirname(lab.PSK), exist_ok=True)
    with open(lab.PSK, "wb") as f:
        f.write(os.urandom(32))
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ftvm"], cwd=ROOT, check=True)
    lab.net_up()
    try:
        runs = [trial(n, out) for n in range(a.repeat)]
        subprocess.run(["ip", "netns", "exec", lab.CLIENT_NS, "ip", "route", "replace",
                        f"{lab.GUEST_IP.rsplit('.', 1)[0]}.0/24", "dev", "fvb-b", "rto_min", "20ms"], check=True)
        fast = [trial(n, out) for n in range(a.repeat)]
    finally:
        lab.net_down()
    keys = ("failover_pause_ms", "takeover_ms", "reprotect_pause_ms", "reprotect_client_gap_ms")
    res = {k: statistics.median(r[k] for r in runs) for k in keys}
    res["failover_pause_rto20_ms"] = statistics.median(r["failover_pause_ms"] for r in fast)
    res["failover_pause_max_ms"] = max(r["failover_pause_ms"] for r in runs)
    with open(a.json, "w") as f:
        json.dump({"repeat": a.repeat, "results": res, "runs": runs, "runs_rto_min_20ms": fast}, f, indent=2)
    print(f"\nfailover (median of {a.repeat}): client pause {res['failover_pause_ms']:.0f} ms "
          f"(longest {res['failover_pause_max_ms']:.0f} ms; {res['failover_pause_rto20_ms']:.0f} ms with the "
          f"client's rto_min at 20 ms), takeover {res['takeover_ms']:.0f} ms; re-protection: guest paused "
          f"{res['reprotect_pause_ms']:.0f} ms, client gap {res['reprotect_client_gap_ms']:.0f} ms")


if __name__ == "__main__":
    main()
