#!/usr/bin/env python3
"""Live migration of the redis guest (256 MiB, no disk) on ftvm (`ftvm migrate --mode precopy` and
`--mode handover`, `--mode postcopy`) and on qemu-system-riscv64 7.2 (its own pre-copy live migration), on one machine.

usage: bench/migrate.py [--repeat R] [--cases idle,write,dirty[,zeros]] [--engines ...] [--json FILE]
                        [--no-build]
Layout, as in the end-to-end tests' lab (crates/ftvm/tests/common/lab.rs), built afresh for each
run: network namespaces as hosts; a switch (a bridge), a source and a destination host (each
with the guest's TAP and its uplink on a bridge of its own, and a migration link 10.82.0.1 -
10.82.0.2 between them) and a client host. The guest (10.81.0.10, one MAC) runs on the source's
TAP, then on the destination's; QEMU's destination waits with `-incoming tcp:10.82.0.2:PORT`,
sends no frame before the migration completes, then announces the guest. Both get the same
budget: at most 300 ms of downtime (both defaults) and no bandwidth cap (ftvm's default; QEMU's
128 MiB/s default is raised). ftvm's stream is authenticated and encrypted, QEMU's plain TCP.

Cases: idle (booted to its ready line, nothing running); write (a client on the client host
writes keys into redis over ONE TCP connection as fast as it can, each SET acknowledged before
the next, a timestamp per acknowledgement, as in bench/failover.py); dirty (the client, and the
guest's `dd` reading a 32 MiB file of random bytes over and over through a pipe into one 32 MiB
buffer: the same 32 MiB of RAM rewritten with non-zero data without end); zeros (not by
default: the client and `dd if=/dev/zero of=/dev/null bs=32M`, a buffer rewritten with zeros,
which QEMU sends as zero-page markers; QEMU 7.2 then often loses the guest's timer at the
destination, and a guest that never idles never re-arms it: redis starves, the run fails).
Engines alternate in each repetition; a failed run is reported and left out of the medians.
  total     from the request to done: ftvm, `ftvm migrate` started to exited (when the
            destination confirmed the hand-over; with post-copy, when the last page left);
            QEMU, `migrate` sent to query-migrate saying "completed" (polled every 5 ms).
  live      from the request until the guest runs at the destination: ftvm, until the
            destination prints "live at instruction"; QEMU, until the destination's
            query-status says "running" (polled every 5 ms).
  MiB sent  ftvm, RAM + disk from its "destination attached ... X MiB of RAM and Y MiB of disk"
            line (a hand-over's lockstep log afterwards is not counted); QEMU, ram.transferred.
  downtime  as each reports it, on the source's side. ftvm: the source's "attached; the guest
            paused D ms" (the stop-and-copy) plus the destination's "live at instruction N (X ms
            after the hand-over arrived)" (with --mode handover the two pauses are apart: the
            guest runs on the source in lockstep between them). QEMU: query-migrate's downtime.
  client gap  the longest gap between two acknowledgements from the request to 2 s after the
            migration ended, as the client saw it (every case but idle): the pause that counts.
  missing   acknowledged keys that do not read back on the same connection afterwards (must be 0).
Medians over the repetitions; ratio: ftvm precopy / QEMU. Needs root (namespaces, TAP).
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

sys.dont_write_bytecode = True  # no __pycache__ in bench/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis as lab  # ROOT, GUEST, FTVM, sh

NS = {k: f"fmig-{k}" for k in ("sw", "src", "dst", "cl")}
TAP, GUEST_IP, MAC = "fmtap0", "10.81.0.10", "52:54:00:81:00:10"
DEST_IP, FTVM_PORT, QEMU_PORT = "10.82.0.2", 7810, 7811
APPEND = f"console=ttyS0 ftvm.ip={GUEST_IP}/24"
# What the guest's console runs in the dirty and zeros cases; "fmig-load-2" once it runs.
LOADS = {"dirty": b"head -c 33554432 /dev/urandom > /tmp/r; echo fmig-load-$((1+1)); while :; do cat /tmp/r; "
                  b"done | dd of=/dev/null bs=33554432 iflag=fullblock 2>/dev/null &\n",
         "zeros": b"echo fmig-load-$((1+1)); dd if=/dev/zero of=/dev/null bs=33554432 &\n"}
ENGINES = ("ftvm-precopy", "ftvm-handover", "ftvm-postcopy", "qemu")

# Writes SET k<i> v<i> until a line arrives on stdin, one acknowledgement at a time, printing
# "acked i T" (T: CLOCK_MONOTONIC, the same clock as the script's); then reads every key back.
CLIENT = r"""
import socket, sys, threading, time
stop = []
threading.Thread(target=lambda: (sys.stdin.readline(), stop.append(1)), daemon=True).start()
s = socket.create_connection((sys.argv[1], 6379), timeout=10)
f = s.makefile("rb")
def cmd(*a):
    s.sendall(b"*%d\r\n" % len(a) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in a))
    line = f.readline()
    if line.startswith(b"$"):
        n = int(line[1:])
        return None if n < 0 else f.read(n + 2)[:-2]
    return line.strip()
i = 0
while not stop:
    assert cmd(b"SET", b"k%d" % i, b"v%d" % i) == b"+OK"
    i += 1
    print("acked", i, time.monotonic(), flush=True)
missing = sum(cmd(b"GET", b"k%d" % j) != b"v%d" % j for j in range(i))
print("done", i, missing, flush=True)
"""


def ns(name, *cmd):
    return ["ip", "netns", "exec", NS[name], *cmd]


def net_up():
    net_down()
    for n in NS.values():
        lab.sh("ip", "netns", "add", n)
        lab.sh("ip", "netns", "exec", n, "ip", "link", "set", "lo", "up")
    lab.sh(*ns("sw", "ip", "link", "add", "br0", "type", "bridge"))
    lab.sh(*ns("sw", "ip", "link", "set", "br0", "up"))
    for i, (host, ip) in enumerate([("src", "10.81.0.1"), ("dst", "10.81.0.2"), ("cl", "10.81.0.3")]):
        up, down = f"fmig-u{i}", f"fmig-d{i}"
        lab.sh("ip", "link", "add", up, "type", "veth", "peer", "name", down)
        lab.sh("ip", "link", "set", down, "netns", NS["sw"])
        lab.sh("ip", "link", "set", up, "netns", NS[host])
        lab.sh(*ns("sw", "ip", "link", "set", down, "master", "br0"))
        lab.sh(*ns("sw", "ip", "link", "set", down, "up"))
        if host == "cl":
            lab.sh(*ns(host, "ip", "addr", "add", f"{ip}/24", "dev", up))
            lab.sh(*ns(host, "ip", "link", "set", up, "up"))
            continue
        for c in (["link", "add", "brh", "type", "bridge"], ["link", "set", up, "master", "brh"],
                  ["tuntap", "add", "dev", TAP, "mode", "tap"], ["link", "set", TAP, "master", "brh"],
                  ["addr", "add", f"{ip}/24", "dev", "brh"], ["link", "set", "brh", "up"],
                  ["link", "set", up, "up"], ["link", "set", TAP, "up"]):
            lab.sh(*ns(host, "ip", *c))
    lab.sh("ip", "link", "add", "fmig-ra", "type", "veth", "peer", "name", "fmig-rb")
    for host, dev, ip in (("src", "fmig-ra", "10.82.0.1"), ("dst", "fmig-rb", DEST_IP)):
        lab.sh("ip", "link", "set", dev, "netns", NS[host])
        lab.sh(*ns(host, "ip", "addr", "add", f"{ip}/24", "dev", dev))
        lab.sh(*ns(host, "ip", "link", "set", dev, "up"))


def net_down():
    for n in NS.values():
        lab.sh("ip", "netns", "del", n, check=False)


class Proc:
    """A process whose output threads collect: stdout whole, stderr by line with when each came."""

    def __init__(self, cmd, stdin=subprocess.PIPE):
        self.p = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out, self.lines = b"", []
        threading.Thread(target=self._drain, daemon=True).start()
        threading.Thread(target=self._lines, daemon=True).start()

    def _drain(self):
        while chunk := self.p.stdout.read1(65536):
            self.out += chunk

    def _lines(self):
        for line in self.p.stderr:
            self.lines.append((time.monotonic(), line.decode(errors="replace").strip()))

    def stderr(self):
        return "\n".join(l for _, l in self.lines if l)

    def wait_out(self, what, limit, where=None):
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            m = re.search(what, (where or (lambda: self.out.decode(errors="replace")))())
            if m:
                return m
            if self.p.poll() is not None and where is None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"no {what!r} within {limit} s:\n{self.out[-1500:].decode(errors='replace')}"
                           f"\n{self.stderr()[-2000:]}")

    def wait_err(self, what, limit):
        return self.wait_out(what, limit, self.stderr)

    def type(self, text):
        self.p.stdin.write(text)
        self.p.stdin.flush()

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


KERNEL, INITRD = os.path.join(lab.GUEST, "Image"), os.path.join(lab.GUEST, "initramfs.cpio.gz")


def ftvm_run(extra):
    return [lab.FTVM, "run", "--kernel", KERNEL, "--initrd", INITRD, "--mem", "256M", "--append", APPEND,
            "--net", f"tap={TAP},mac={MAC}", *extra]


def qemu_cmd(extra):
    return ["qemu-system-riscv64", "-M", "virt", "-m", "256M", "-display", "none", "-serial", "stdio",
            "-monitor", "none", "-kernel", KERNEL, "-initrd", INITRD, "-append", APPEND,
            "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
            "-device", f"virtio-net-device,netdev=n0,mac={MAC}", *extra]


class Qmp:
    def __init__(self, path, limit=10):
        t0 = time.monotonic()
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.settimeout(10)
                self.s.connect(path)
                break
            except OSError:
                if time.monotonic() - t0 > limit:
                    raise
                time.sleep(0.05)
        self.f = self.s.makefile("rb")
        self.f.readline()  # the greeting
        self("qmp_capabilities")

    def __call__(self, cmd, **args):
        self.s.sendall(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n")
        while True:
            r = json.loads(self.f.readline())
            if "error" in r:
                raise RuntimeError(f"QMP {cmd}: {r['error']}")
            if "return" in r:
                return r["return"]


def start_client():
    c = subprocess.Popen(ns("cl", "python3", "-c", CLIENT, GUEST_IP), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    c.acks, c.last = [], []

    def reader():
        for line in c.stdout:
            (c.acks.append(float(line.split()[2])) if line.startswith("acked") else c.last.append(line))
    threading.Thread(target=reader, daemon=True).start()
    return c


def run(engine, case, tmp, lockstep_ms=0):
    """One migration: a dict of figures."""
    procs, client = [], None
    qmp_path = os.path.join(tmp, "src.qmp")
    try:
        net_up()  # afresh for each run: no bridge or ARP entry left from the previous guest
        if engine == "qemu":
            dst = Proc(ns("dst", *qemu_cmd(["-incoming", f"tcp:{DEST_IP}:{QEMU_PORT}",
                                            "-qmp", f"unix:{qmp_path}-dst,server=on,wait=off"])))
            procs.append(dst)
            src = Proc(ns("src", *qemu_cmd(["-qmp", f"unix:{qmp_path},server=on,wait=off"])))
        else:
            sock = os.path.join(tmp, "src.sock")
            dst = Proc(ns("dst", *ftvm_run(["--incoming", f"{DEST_IP}:{FTVM_PORT}", "--psk", f"{tmp}/psk"])))
            procs.append(dst)
            src = Proc(ns("src", *ftvm_run(["--control", sock])))
        procs.append(src)
        src.wait_out(r"ftvm-guest: ready", 120)
        for _ in range(100):
            ping = lab.sh(*ns("cl", "timeout", "2", "redis-cli", "-h", GUEST_IP, "ping"), check=False)
            if ping.stdout.strip() == b"PONG":
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("redis in the guest does not answer the client")
        if case in LOADS:
            src.type(LOADS[case])
            src.wait_out(r"fmig-load-2", 120)
        if case != "idle":
            client = start_client()
            time.sleep(1.5)
            if not client.acks:
                raise RuntimeError("the client wrote nothing before the migration")
        else:
            time.sleep(1.0)
        r = {}
        t0 = time.monotonic()
        if engine == "qemu":
            q, qd = Qmp(qmp_path), Qmp(qmp_path + "-dst")
            q("migrate-set-parameters", **{"max-bandwidth": 100 << 30, "downtime-limit": 300})
            q("migrate", uri=f"tcp:{DEST_IP}:{QEMU_PORT}")
            st, t1, live = {}, None, None
            while t1 is None or live is None:  # the source's status, and the destination's
                if t1 is None:
                    st = q("query-migrate")
                    t1 = time.monotonic() if st.get("status") == "completed" else None
                if live is None and qd("query-status")["status"] == "running":
                    live = time.monotonic()
                if st.get("status") in ("failed", "cancelled") or time.monotonic() - t0 > 120:
                    raise RuntimeError(f"QEMU's migration: {st}")
                time.sleep(0.005)
            r.update(total_ms=(t1 - t0) * 1e3, live_ms=(live - t0) * 1e3, qemu_total_ms=st["total-time"],
                     mib=st["ram"]["transferred"] / 2**20, downtime_ms=st["downtime"],
                     rounds=st["ram"].get("dirty-sync-count"))
            q("quit")
        else:
            mig = Proc(ns("src", lab.FTVM, "migrate", "--control", sock, "--to", f"{DEST_IP}:{FTVM_PORT}",
                          "--psk", f"{tmp}/psk", "--mode", engine.split("-")[1],
                          *(["--lockstep-ms", str(lockstep_ms)] if engine == "ftvm-handover" else [])),
                       stdin=subprocess.DEVNULL)
            procs.append(mig)
            try:
                code = mig.p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                code = "timeout after 120 s"
            t1 = time.monotonic()
            time.sleep(0.1)  # the last stderr lines
            err = mig.stderr()
            info = None
            if engine == "ftvm-postcopy":
                # The disks go first, RAM after the hand-over ("N pages sent" on the source).
                pc = re.search(r"for post-copy: ([0-9.]+) MiB of disk in (\d+) ms", err)
                if code == 0 and pc:
                    pages = int(src.wait_err(r"post-copy: (\d+) pages sent", 30).group(1))
                    info = dict(rounds=0, ram=pages * 4096 / 2**20, disk=float(pc.group(1)), ms=int(pc.group(2)))
            else:
                m = re.search(r"attached \(generation \d+\) at instruction \d+ by pre-copy: (\d+) rounds, ([0-9.]+) MiB "
                              r"of RAM and ([0-9.]+) MiB of disk in (\d+) ms", err)
                if m:
                    info = dict(rounds=int(m.group(1)), ram=float(m.group(2)), disk=float(m.group(3)), ms=int(m.group(4)))
            if code != 0 or not info:
                raise RuntimeError(f"ftvm migrate: exit {code}:\n{err}\n-- source:\n{src.stderr()[-3000:]}\n"
                                   f"-- destination:\n{dst.stderr()[-3000:]}")
            paused = float(src.wait_err(r"attached; the guest paused ([0-9.]+) ms", 10).group(1))
            handover = float(dst.wait_err(r"live at instruction \d+ \(([0-9.]+) ms after the hand-over", 10).group(1))
            live = next(t for t, l in dst.lines if "live at instruction" in l)
            r.update(total_ms=(t1 - t0) * 1e3, live_ms=(live - t0) * 1e3, mib=info["ram"] + info["disk"],
                     rounds=info["rounds"], precopy_ms=info["ms"], paused_ms=paused, handover_ms=handover,
                     downtime_ms=paused + handover)
        if client:
            time.sleep(2.0)
            t2 = time.monotonic()
            client.stdin.write("stop\n")
            client.stdin.flush()
            client.wait(timeout=120)
            around = [t0] + [a for a in client.acks if t0 < a <= t2] + [t2]
            gap, at = max((b - a, a) for a, b in zip(around, around[1:]))
            done = (client.last or ["?"])[-1].split()
            if client.returncode != 0 or done[0] != "done":
                raise RuntimeError(f"the client failed ({client.last}); the destination's console:\n"
                                   f"{dst.out[-1500:].decode(errors='replace')}\n{dst.stderr()[-2000:]}")
            r.update(client_gap_ms=gap * 1e3, gap_at_ms=(at - t0) * 1e3, keys=int(done[1]), missing=int(done[2]))
        if engine != "qemu":
            r["log"] = {"migrate": mig.stderr(), "source": src.stderr()[-2000:], "destination": dst.stderr()[-2000:]}
        print(f"  {case:<6} {engine:<14} " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in r.items() if k != "log"), flush=True)
        return r
    finally:
        if client and client.poll() is None:
            client.kill()
            client.wait(timeout=10)
        for p in procs:
            p.kill()
        for path in (qmp_path, qmp_path + "-dst"):
            if os.path.exists(path):
                os.remove(path)
        net_down()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", default="idle,write,dirty")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--json", default=os.path.join(lab.ROOT, "bench", "out", "migrate.json"))
    ap.add_argument("--lockstep-ms", type=int, default=0, help="ftvm-handover: `ftvm migrate --lockstep-ms`")
    ap.add_argument("--no-build", action="store_true", help="use the ftvm binary as it is")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # clean up as on an error
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    if not shutil.which("qemu-system-riscv64"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "qemu-system-misc"], check=True)
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "ftvm"], cwd=lab.ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="ftvm-migrate-")
    with open(os.path.join(tmp, "psk"), "wb") as f:
        f.write(os.urandom(32))
    cases = a.cases.split(",")
    engines = a.engines.split(",")
    runs = {c: {e: [] for e in engines} for c in cases}
    try:
        for n in range(a.repeat):
            print(f"repetition {n + 1}/{a.repeat}", flush=True)
            for c in cases:
                for e in engines:
                    try:
                        runs[c][e].append(run(e, c, tmp, a.lockstep_ms))
                    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
                        print(f"  {c:<6} {e:<14} FAILED: {err}", flush=True)
                        runs[c][e].append({"error": str(err)})
    finally:
        net_down()
        shutil.rmtree(tmp, True)
    keys = ("total_ms", "live_ms", "mib", "downtime_ms", "client_gap_ms", "missing")
    med = {c: {e: {k: statistics.median(r[k] for r in rs if k in r) for k in keys if any(k in r for r in rs)}
               for e, rs in by.items()} for c, by in runs.items()}
    with open(a.json, "w") as f:
        json.dump({"repeat": a.repeat, "lockstep_ms": a.lockstep_ms, "medians": med, "runs": runs}, f, indent=2)
    print(f"\nlive migration of a 256 MiB guest on one machine (median of {a.repeat}; ratio: ftvm precopy / QEMU)")
    cols = (("total ms", "total_ms", ".0f"), ("live ms", "live_ms", ".0f"), ("MiB sent", "mib", ".1f"),
            ("downtime ms", "downtime_ms", ".1f"), ("client gap ms", "client_gap_ms", ".0f"),
            ("missing", "missing", ".0f"))
    print(f"{'case':<6} {'engine':<14}" + "".join(f" {h:>{len(h) + 1}}" for h, _, _ in cols) + " failed")
    for c in cases:
        for e in (*engines, "ratio"):
            if e == "ratio" and not {"ftvm-precopy", "qemu"} <= set(engines):
                continue
            r = med[c][e] if e != "ratio" else {k: med[c]["ftvm-precopy"][k] / med[c]["qemu"][k] for _, k, _ in cols[:5]
                                                if med[c]["qemu"].get(k) and k in med[c]["ftvm-precopy"]}
            cell = lambda k, f: (f"{r[k]:.2f}" if e == "ratio" else f"{r[k]:{f}}") if k in r else "-"
            failed = "" if e == "ratio" else sum("error" in x for x in runs[c][e])
            print(f"{c:<6} {e:<14}" + "".join(f" {cell(k, f):>{len(h) + 1}}" for h, k, f in cols) + f" {failed:>6}")
    lost = sum(r.get("missing", 0) for by in runs.values() for rs in by.values() for r in rs)
    failed = sum("error" in r for by in runs.values() for rs in by.values() for r in rs)
    if lost or failed:
        sys.exit(f"{lost} acknowledged keys did not read back; {failed} runs failed")


if __name__ == "__main__":
    main()
