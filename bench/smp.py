#!/usr/bin/env python3
"""Guests with several harts: ftvm (--smp N) beside qemu-system-riscv64 (-smp N, plain TCG and
-icount shift=0) on the same images, in one run.

For N in 1, 2, 4 (each REPEAT times, median reported):
  boot  wall time from start to the guest's `ftvm-guest: ready` line
  cpu   N copies of the guest CPU program (cpubench -i) started at once: the wall time until
        all are done, and the total throughput (N copies' instructions, counted by the guest with
        rdinstret on ftvm's 1-hart run, per second of wall time)

ftvm runs every hart on one host thread (deterministic interleaving), as QEMU -icount does;
plain TCG runs a host thread per hart (MTTCG), so it can use both of this machine's cores. A run
that gets no result within LIMIT seconds is reported as such (QEMU 7.2's -icount with -smp 2 or
more did not boot Linux 6.12 here).

usage: bench/smp.py [--repeat N] [--harts 1,2,4] [--json FILE]
"""
import argparse, json, os, re, select, statistics, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu as C  # noqa: E402

# How long a boot, or the N copies of the program, may take before the engine is given up on.
LIMIT = 120


def command(engine, harts):
    if engine == "ftvm":
        return [C.FTVM, "run", "--mem", "256M", "--net", "none", "--smp", str(harts)]
    images = ["-kernel", os.path.join(C.GUEST, "Image"), "-initrd",
              os.path.join(C.GUEST, "initramfs.cpio.gz"), "-append", C.APPEND]
    return C.qemu(["-smp", str(harts), *images], engine == "qemu-icount")


class TimedOut(Exception):
    pass


class Guest(C.Guest):
    def __init__(self, cmd):
        self.t0 = time.monotonic()
        self.p = C.subprocess.Popen(cmd, stdin=C.subprocess.PIPE, stdout=C.subprocess.PIPE,
                                    stderr=C.subprocess.DEVNULL)
        self.buf = b""

    def wait_for(self, needle, limit=LIMIT):
        """Like cpu.Guest.wait_for, but a guest that prints nothing still times out."""
        end = time.monotonic() + limit
        while needle not in self.buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.p.stdout], [], [], left)[0]:
                self.p.kill()
                raise TimedOut(self.buf[-300:].decode(errors="replace"))
            chunk = self.p.stdout.read1(65536)
            if not chunk:
                raise TimedOut("console closed: " + self.buf[-300:].decode(errors="replace"))
            self.buf += chunk
        i = self.buf.index(needle) + len(needle)
        seen, self.buf = self.buf[:i], self.buf[i:]
        return seen


def run(engine, harts):
    """The run's figures, or None if the guest did not get through in time."""
    g = Guest(command(engine, harts))
    try:
        return measure(g, engine, harts)
    except TimedOut as e:
        print(f"{engine} -smp {harts}: no result within {LIMIT} s; console: {e}", file=sys.stderr)
        return None


def measure(g, engine, harts):
    g.wait_for(b"ftvm-guest: ready")
    res = {"boot_s": time.monotonic() - g.t0}
    g.wait_for(b"# ")
    t0 = time.monotonic()
    g.send(f"for i in $(seq {harts}); do cpubench -i > /tmp/c$i & done; wait; "
           f"cat /tmp/c*; echo smp-bench-$((6*7))")
    out = g.wait_for(b"smp-bench-42").decode(errors="replace")
    res["cpu_wall_s"] = time.monotonic() - t0
    sums = re.findall(r"total checksum=([0-9a-f]+)", out)
    if len(sums) != harts or len(set(sums)) != 1:
        sys.exit(f"{engine} -smp {harts}: cpubench results {sums}")
    res["instret"] = [int(x) for x in re.findall(r"instret=(\d+)", out)]
    g.close()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--harts", default="1,2,4")
    ap.add_argument("--engines", default="ftvm,qemu,qemu-icount")
    ap.add_argument("--json", default=os.path.join(C.OUT, "smp.json"))
    a = ap.parse_args()
    C.prepare()
    harts = [int(h) for h in a.harts.split(",")]
    engines = a.engines.split(",")
    runs = {(e, n): [] for e in engines for n in harts}
    # Alternate the engines within each repetition: this machine's speed drifts.
    given_up = set()
    for _ in range(a.repeat):
        for n in harts:
            for e in engines:
                if (e, n) in given_up:
                    continue
                r = run(e, n)
                if r is None:
                    given_up.add((e, n))
                    continue
                runs[(e, n)].append(r)
                print(f"{e} -smp {n}: boot {r['boot_s']:.2f} s, programs {r['cpu_wall_s']:.2f} s",
                      file=sys.stderr)
    # One copy's instructions, as ftvm's guest counted them with one hart (exact).
    one = runs.get(("ftvm", 1)) or next(iter(runs.values()))
    per_copy = sum(one[0]["instret"])
    results = {}
    for (e, n), rs in runs.items():
        if not rs:
            results[f"{e}/{n}"] = {"engine": e, "harts": n, "timed_out": True}
            continue
        wall = statistics.median(r["cpu_wall_s"] for r in rs)
        results[f"{e}/{n}"] = {
            "engine": e, "harts": n,
            "boot_s": statistics.median(r["boot_s"] for r in rs),
            "cpu_wall_s": wall,
            "cpu_total_mips": n * per_copy / wall / 1e6,
        }
    with open(a.json, "w") as f:
        json.dump({"repeat": a.repeat, "instructions_per_copy": per_copy, "results": results}, f, indent=2)
    print(f"\n{'engine':<12} {'harts':>5} {'boot-to-ready s':>16} {'N x cpubench s':>15} {'total MIPS':>11}")
    for r in results.values():
        if r.get("timed_out"):
            print(f"{r['engine']:<12} {r['harts']:>5} {'(no result within ' + str(LIMIT) + ' s)':>44}")
            continue
        print(f"{r['engine']:<12} {r['harts']:>5} {r['boot_s']:>16.2f} {r['cpu_wall_s']:>15.2f} {r['cpu_total_mips']:>11.0f}")
    print(f"\n(median of {a.repeat}; one copy = {per_copy} instructions; JSON in {a.json})")


if __name__ == "__main__":
    main()
