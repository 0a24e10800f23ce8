#!/usr/bin/env python3
"""Every ftvm benchmark in one run, beside qemu-system-riscv64, with a table, JSON and a chart.

usage: bench/all.py [--quick]
  full:    3 repetitions of everything (about 13 minutes on a 2-core machine)
  --quick: one repetition, no guest CPU program, shorter redis runs (about 1.5 minutes)

Measures: instructions per second (bare-metal loop, the guest CPU program), boot-to-ready
time, redis-benchmark plain, replicated (precise and epoch delivery) and on QEMU (bench/cpu.py,
bench/redis.py), the recording overhead (bench/record.py), the failover and re-protection pauses
(bench/failover.py), and the replication log bandwidth. Prints a summary table with the ratio to
QEMU, writes bench/out/results.json and docs/benchmarks.svg. Needs root (network namespaces, TAP).
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
                                            "--requests", "5000" if a.quick else "12000"])
    took["record"] = step("recording overhead", [py, "bench/record.py", "--repeat", rep]
                          + (["--quick"] if a.quick else []))
    took["failover"] = step("failover and re-protection", [py, "bench/failover.py", "--repeat", rep])
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                        if l.startswith("model name")), "?"),
                           "qemu": subprocess.run(["qemu-system-riscv64", "--version"], capture_output=True,
                                                  text=True).stdout.splitlines()[0]},
               "quick": a.quick, "seconds": took}
    for name in ("cpu", "redis", "record", "failover"):
        results[name] = json.load(open(os.path.join(OUT, f"{name}.json")))
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    svg = os.path.join(ROOT, "docs", "benchmarks.svg")
    subprocess.run(["cargo", "run", "--release", "-q", "-p", "ftvm-bench", "--",
                    os.path.join(OUT, "results.json"), svg], check=True, cwd=ROOT)
    summary(results)
    print(f"\nresults: {os.path.join(OUT, 'results.json')}, chart: {svg}, total {sum(took.values()):.0f} s")


def summary(r):
    """One table of everything, with ftvm's ratio to QEMU (TCG) where QEMU has the figure."""
    cpu, redis = r["cpu"]["results"], r["redis"]["results"]
    rows = []
    for key, label in (("loop_mips", "bare-metal loop, MIPS"), ("cpu_mips", "guest CPU program, MIPS"),
                       ("boot_s", "boot to ready, s")):
        rows.append((label, {e: cpu.get(e, {}).get(key) for e in ("ftvm", "qemu", "qemu-icount")}))
    for op in ("SET", "GET"):
        rows.append((f"redis {op}, req/s", {e: redis.get(e, {}).get(op, {}).get("rps")
                                            for e in ("ftvm", "ftvm-pair", "ftvm-pair-epoch", "qemu", "qemu-icount")}))
        rows.append((f"redis {op} p50, ms", {e: redis.get(e, {}).get(op, {}).get("p50_ms")
                                             for e in ("ftvm", "ftvm-pair", "ftvm-pair-epoch", "qemu", "qemu-icount")}))
    rows.append(("replication log, Mbit/s", {e: redis.get(e, {}).get("log_mbit_s")
                                              for e in ("ftvm-pair", "ftvm-pair-epoch")}))
    for key, label in (("hold_p50_ms", "output held for backup p50, ms"), ("hold_p99_ms", "  p99, ms")):
        rows.append((label, {e: redis.get(e, {}).get(key) for e in ("ftvm-pair", "ftvm-pair-epoch")}))
    rec = r["record"]["results"]
    rows.append(("recorded redis SET, req/s", {"ftvm": rec["record"]["set"]}))
    rows.append(("recorded redis GET, req/s", {"ftvm": rec["record"]["get"]}))
    if rec["run"].get("cpu_s"):
        rows.append(("recorded CPU program, s", {"ftvm": rec["record"]["cpu_s"]}))
    fo = r["failover"]["results"]
    rows.append(("failover pause (client), ms", {"ftvm-pair": fo["failover_pause_ms"]}))
    rows.append(("  with client rto_min 20ms, ms", {"ftvm-pair": fo.get("failover_pause_rto20_ms")}))
    rows.append(("failover takeover, ms", {"ftvm-pair": fo["takeover_ms"]}))
    rows.append(("re-protection pause, ms", {"ftvm-pair": fo["reprotect_pause_ms"]}))
    cols = ("ftvm", "ftvm-pair", "ftvm-pair-epoch", "qemu", "qemu-icount")
    print(f"\n{'':<30}" + "".join(f"{c:>16}" for c in cols) + f"{'ftvm/qemu':>11}")
    for label, v in rows:
        cells = "".join(f"{v[c]:>16.2f}" if v.get(c) is not None else f"{'-':>16}" for c in cols)
        ratio = f"{v['ftvm'] / v['qemu']:.2f}" if v.get("ftvm") and v.get("qemu") else "-"
        print(f"{label:<30}{cells}{ratio:>11}")


if __name__ == "__main__":
    main()
