#!/usr/bin/env python3
"""Every ftvm benchmark in one run, beside qemu-system-riscv64, with a table, JSON and a chart.

usage: bench/all.py [--quick]
  full:    3 repetitions of everything (about 15 minutes on a 2-core machine)
  --quick: one repetition, no guest CPU program, shorter redis runs (about 3 minutes)

Writes bench/out/results.json and docs/benchmarks.svg. Needs root (network namespaces, TAP).
Not measured yet (no implementation): replicated redis, the failover pause, replication log
bandwidth.
"""
import argparse, json, os, platform, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")


def step(name, cmd):
    print(f"\n==> {name}: {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    rep = "1" if a.quick else "3"
    py = sys.executable
    took = {}
    took["cpu"] = step("CPU and boot", [py, "bench/cpu.py", "--repeat", rep] + (["--quick"] if a.quick else []))
    took["redis"] = step("redis over TAP", [py, "bench/redis.py", "--repeat", rep,
                                            "--requests", "5000" if a.quick else "20000"])
    if not a.quick:
        took["record"] = step("recording overhead", [py, "bench/record.py", "--repeat", rep])
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                        if l.startswith("model name")), "?"),
                           "qemu": subprocess.run(["qemu-system-riscv64", "--version"], capture_output=True,
                                                  text=True).stdout.splitlines()[0]},
               "quick": a.quick, "seconds": took}
    for name in ("cpu", "redis", "record"):
        p = os.path.join(OUT, f"{name}.json")
        if os.path.exists(p) and (name != "record" or not a.quick):
            results[name] = json.load(open(p))
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    svg = os.path.join(ROOT, "docs", "benchmarks.svg")
    subprocess.run(["cargo", "run", "--release", "-q", "-p", "ftvm-bench", "--",
                    os.path.join(OUT, "results.json"), svg], check=True, cwd=ROOT)
    print(f"\nresults: {os.path.join(OUT, 'results.json')}, chart: {svg}, total {sum(took.values()):.0f} s")


if __name__ == "__main__":
    main()
