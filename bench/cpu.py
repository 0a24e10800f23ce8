#!/usr/bin/env python3
"""ftvm speed beside qemu-system-riscv64 (plain TCG and -icount shift=0), in one run.

Measures, each REPEAT times (median reported):
  loop   a bare-metal 600M-instruction integer loop (bench/loop.S): instructions per second
  boot   wall time from start to the guest's `ftvm-guest: ready` line
  cpu    the guest CPU program (guest/cpubench -i): its integer and floating-point parts,
         instructions counted by the guest itself with rdinstret (ftvm and qemu -icount count
         exactly; plain TCG's count is taken from the icount run of the same work)

usage: bench/cpu.py [--repeat N] [--quick] [--json FILE]
"""
import argparse, json, os, re, shutil, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
FTVM = os.path.join(ROOT, "target", "release", "ftvm")
GUEST = os.path.join(ROOT, "guest", "out")
APPEND = "console=ttyS0 earlycon"
LOOP_INSNS = 600_000_006


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def prepare():
    os.makedirs(OUT, exist_ok=True)
    if not shutil.which("qemu-system-riscv64"):
        sh(["apt-get", "install", "-y", "-qq", "qemu-system-misc"])
    if not os.path.exists(os.path.join(GUEST, "Image")):
        sh(["bash", os.path.join(ROOT, "guest", "build.sh")])
    sh(["cargo", "build", "--release", "-q", "-p", "ftvm"], cwd=ROOT)
    cc = ["riscv64-linux-gnu-gcc", "-march=rv64gc", "-mabi=lp64d", "-nostdlib", "-nostartfiles",
          "-static", "-T", os.path.join(ROOT, "tests", "isa", "link.ld")]
    src = os.path.join(ROOT, "bench", "loop.S")
    sh(cc + [src, "-o", os.path.join(OUT, "loop.elf")], stderr=subprocess.DEVNULL)
    sh(cc + ["-DQEMU", src, "-o", os.path.join(OUT, "loop-qemu.elf")], stderr=subprocess.DEVNULL)


def qemu(extra, icount):
    cmd = ["qemu-system-riscv64", "-M", "virt", "-m", "256M", "-display", "none",
           "-serial", "stdio", "-monitor", "none"]
    if icount:
        cmd += ["-icount", "shift=0"]
    return cmd + extra


ENGINES = {
    "ftvm": lambda kind: ([FTVM, "run", "--elf", os.path.join(OUT, "loop.elf")] if kind == "loop"
                          else [FTVM, "run", "--mem", "256M", "--net", "none"]),
    "qemu": lambda kind: qemu(["-bios", "none", "-kernel", os.path.join(OUT, "loop-qemu.elf")]
                              if kind == "loop" else
                              ["-kernel", os.path.join(GUEST, "Image"), "-initrd",
                               os.path.join(GUEST, "initramfs.cpio.gz"), "-append", APPEND], False),
    "qemu-icount": lambda kind: qemu(["-bios", "none", "-kernel", os.path.join(OUT, "loop-qemu.elf")]
                                     if kind == "loop" else
                                     ["-kernel", os.path.join(GUEST, "Image"), "-initrd",
                                      os.path.join(GUEST, "initramfs.cpio.gz"), "-append", APPEND], True),
}


def time_loop(engine):
    t0 = time.monotonic()
    r = subprocess.run(ENGINES[engine]("loop"), stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"{engine} loop failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return dt


class Guest:
    """A booted guest with its console on pipes."""

    def __init__(self, engine):
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(ENGINES[engine]("guest"), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.buf = b""

    def wait_for(self, needle, limit=600):
        end = time.monotonic() + limit
        while needle not in self.buf:
            if time.monotonic() > end:
                self.p.kill()
                sys.exit(f"timed out waiting for {needle!r}; console tail:\n"
                         + self.buf[-2000:].decode(errors="replace"))
            chunk = self.p.stdout.read1(65536)
            if not chunk:
                sys.exit("guest console closed:\n" + self.buf[-2000:].decode(errors="replace"))
            self.buf += chunk
        i = self.buf.index(needle) + len(needle)
        seen, self.buf = self.buf[:i], self.buf[i:]
        return seen

    def send(self, line):
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def close(self):
        try:
            self.send("poweroff")
            self.p.wait(timeout=60)
        except Exception:
            self.p.kill()


def boot_and_cpu(engine, with_cpu):
    g = Guest(engine)
    g.wait_for(b"ftvm-guest: ready")
    boot = time.monotonic() - g.t0
    res = {"boot_s": boot}
    if with_cpu:
        # Wait for the shell prompt's line, then time the program in host seconds.
        g.wait_for(b"# ")
        t0 = time.monotonic()
        g.send("cpubench -i")
        out = g.wait_for(b"total checksum=").decode(errors="replace")
        g.wait_for(b"\n")
        wall = time.monotonic() - t0
        parts = {}
        for part, insns in re.findall(r"cpubench: (int|fp) .*?instret=(\d+)", out):
            parts[part] = int(insns)
        res.update({"cpu_wall_s": wall, "cpu_insns": parts, "cpu_out": out.strip()})
    g.close()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one repetition, no guest CPU program")
    ap.add_argument("--json", default=os.path.join(OUT, "cpu.json"))
    a = ap.parse_args()
    rep = 1 if a.quick else a.repeat
    prepare()
    results = {}
    for engine in ENGINES:
        loops = [time_loop(engine) for _ in range(rep)]
        runs = [boot_and_cpu(engine, not a.quick) for _ in range(rep)]
        r = {"loop_s": statistics.median(loops), "boot_s": statistics.median(x["boot_s"] for x in runs)}
        r["loop_mips"] = LOOP_INSNS / r["loop_s"] / 1e6
        if not a.quick:
            r["cpu_wall_s"] = statistics.median(x["cpu_wall_s"] for x in runs)
            r["cpu_insns"] = runs[0]["cpu_insns"]
        results[engine] = r
        print(f"{engine}: done", file=sys.stderr)
    if not a.quick:
        # Plain TCG counts no instructions: the work is the same as under -icount.
        exact = results["qemu-icount"]["cpu_insns"] or results["ftvm"]["cpu_insns"]
        for e, r in results.items():
            # Plain TCG's instret is not exact: count the same work as the exact engines do.
            n = sum((exact if e == "qemu" else r["cpu_insns"] or exact).values())
            r["cpu_mips"] = n / r["cpu_wall_s"] / 1e6 if n else None
    with open(a.json, "w") as f:
        json.dump({"repeat": rep, "results": results}, f, indent=2)
    print(f"\n{'engine':<12} {'loop MIPS':>10} {'boot-to-ready s':>16} {'cpubench s':>11} {'cpubench MIPS':>14}")
    for e, r in results.items():
        cpu_s = f"{r['cpu_wall_s']:.2f}" if "cpu_wall_s" in r else "-"
        cpu_m = f"{r['cpu_mips']:.0f}" if r.get("cpu_mips") else "-"
        print(f"{e:<12} {r['loop_mips']:>10.0f} {r['boot_s']:>16.2f} {cpu_s:>11} {cpu_m:>14}")
    print(f"\n(median of {rep}; JSON in {a.json})")


if __name__ == "__main__":
    main()
