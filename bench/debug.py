#!/usr/bin/env python3
"""gdb on a replayed boot: what its moves cost, beside the plain replay of the same log.

Records a boot (the guest powers off once ready), then for each checkpoint interval, in turn
A B A B over --repeat rounds, drives gdb-multiarch against `ftvm replay --gdb`: continue to a
breakpoint late in the boot (run_init_process: every step checked), 100 stepi, 100
reverse-stepi, reverse-continue to the last store to jiffies. Also times the plain replay of
the log with the translator and with the interpreter. Prints medians.

usage: bench/debug.py [--repeat N] [--every N,N] [--log FILE]
"""
import argparse, os, re, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FTVM = os.path.join(ROOT, "target", "release", "ftvm")
GUEST = os.path.join(ROOT, "guest", "out")

SCRIPT = """set pagination off
file {vmlinux}
target remote {addr}
break *run_init_process
python import time; t=time.time()
continue
python print("T continue", time.time()-t)
python t=time.time()
stepi 100
python print("T stepi", time.time()-t)
python t=time.time()
reverse-stepi 100
python print("T reverse-stepi", time.time()-t)
delete
watch *(unsigned long *)&jiffies
python t=time.time()
reverse-continue
python print("T reverse-continue", time.time()-t)
monitor count
detach
"""


def record(log):
    p = subprocess.Popen([FTVM, "record", "--log", log], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    buf = b""
    while b"ftvm-guest: ready" not in buf:
        c = p.stdout.read1(65536)
        if not c:
            sys.exit("the guest did not boot")
        buf += c
    p.stdin.write(b"poweroff\n")
    p.stdin.flush()
    p.communicate(timeout=120)


def free_addr():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


def session(log, every, script_path):
    addr = free_addr()
    stub = subprocess.Popen([FTVM, "replay", "--log", log, "--gdb", addr,
                             "--checkpoint-every", str(every)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    line = b""
    while b"waiting on" not in line:
        line = stub.stderr.readline()
        if not line:
            sys.exit("the stub did not start")
    with open(script_path, "w") as f:
        f.write(SCRIPT.format(vmlinux=os.path.join(GUEST, "vmlinux"), addr=addr))
    out = subprocess.run(["gdb-multiarch", "-batch", "-nx", "-x", script_path],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600).stdout.decode()
    stub.wait(timeout=600)
    t = {m.group(1): float(m.group(2)) for m in re.finditer(r"^T (\S+) ([0-9.]+)", out, re.M)}
    m = re.search(r"(\d+) checkpoints, (\d+) KiB", out)
    if len(t) != 4 or not m:
        sys.exit("gdb did not finish the script:\n" + out)
    t["checkpoints"], t["KiB"] = int(m.group(1)), int(m.group(2))
    return t


def replay(log, engine):
    t0 = time.monotonic()
    subprocess.run([FTVM, "--engine", engine, "replay", "--log", log], check=True,
                   capture_output=True)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--every", default="10000000,1000000")
    ap.add_argument("--log")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ftvm-bench-debug-")
    log = a.log or os.path.join(tmp, "boot.log")
    if not a.log:
        record(log)
    everies = [int(x) for x in a.every.split(",")]
    runs = {e: [] for e in everies}
    plain = {"jit": [], "interp": []}
    for _ in range(a.repeat):
        for e in everies:
            runs[e].append(session(log, e, os.path.join(tmp, "s.gdb")))
        for engine in plain:
            plain[engine].append(replay(log, engine))
    med = statistics.median
    print(f"plain replay of the log: translator {med(plain['jit']):.2f} s, "
          f"interpreter {med(plain['interp']):.2f} s")
    print("| checkpoint every | continue to run_init_process | 100 stepi | 100 reverse-stepi "
          "| reverse-continue to a watchpoint | checkpoints kept |")
    print("| --- | --- | --- | --- | --- | --- |")
    for e in everies:
        r = runs[e]
        m = {k: med(x[k] for x in r) for k in r[0]}
        print(f"| {e:,} | {m['continue']:.2f} s | {m['stepi']:.2f} s | {m['reverse-stepi']:.2f} s "
              f"| {m['reverse-continue']:.2f} s | {m['checkpoints']:.0f}, {m['KiB'] / 1024:.0f} MiB |")


if __name__ == "__main__":
    main()
