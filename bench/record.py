#!/usr/bin/env python3
"""Recording overhead: the guest CPU program and redis-benchmark, under `ftvm run` and under
`ftvm record` (digest every 1e9 instructions), same images, same run.

usage: bench/record.py [--repeat N] [--quick]   (root: it builds a network of namespaces like
redis.py; --quick leaves out the CPU program and makes the redis runs shorter)
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis as rb  # noqa: E402  (the network helpers of bench/redis.py)


def boot(mode, log):
    images = ["--kernel", os.path.join(rb.GUEST, "Image"), "--initrd", os.path.join(rb.GUEST, "initramfs.cpio.gz")]
    cmd = [rb.FTVM, mode] + (["--log", log] if mode == "record" else []) + images + [
        "--append", rb.APPEND, "--net", f"tap={rb.TAP},mac={rb.MAC}"]
    p = subprocess.Popen(["ip", "netns", "exec", rb.HOST_NS, *cmd], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    buf = b""
    while b"ftvm-guest: ready" not in buf:
        c = p.stdout.read1(65536)
        if not c:
            sys.exit("guest did not boot")
        buf += c
    return p


def cpu(p):
    p.stdin.write(b"cpubench\n")
    p.stdin.flush()
    t0, buf = time.monotonic(), b""
    while b"cpubench: total" not in buf:
        buf += p.stdout.read1(65536)
    while not buf.rstrip().endswith(b"#"):
        buf += p.stdout.read1(65536)
    return time.monotonic() - t0


def redis_rps(requests):
    c = ["ip", "netns", "exec", rb.CLIENT_NS]
    for _ in range(100):
        if rb.sh(*c, "redis-cli", "-h", rb.GUEST_IP, "ping", check=False).stdout.strip() == b"PONG":
            break
        time.sleep(0.2)
    r = rb.sh(*c, "redis-benchmark", "-h", rb.GUEST_IP, "-c", "10", "-n", str(requests), "-t", "set,get", "--csv")
    res = {}
    for line in r.stdout.decode().splitlines():
        f = [x.strip('"') for x in line.split(",")]
        if f[0] in ("SET", "GET"):
            res[f[0]] = float(f[1])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=os.path.join(rb.ROOT, "bench", "out", "record.json"))
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ftvm"], cwd=rb.ROOT, check=True)
    rb.net_up()
    out = {}
    try:
        with tempfile.TemporaryDirectory() as d:
            for mode in ("run", "record"):
                cpus, sets, gets, sizes = [], [], [], []
                for i in range(a.repeat):
                    log = os.path.join(d, f"{mode}{i}.log")
                    p = boot(mode, log)
                    r = redis_rps(5000 if a.quick else 10000)
                    if not a.quick:
                        cpus.append(cpu(p))
                    p.stdin.write(b"poweroff\n")
                    p.stdin.flush()
                    p.wait(timeout=60)
                    sets.append(r["SET"])
                    gets.append(r["GET"])
                    if mode == "record":
                        sizes.append(os.path.getsize(log))
                out[mode] = {"cpu_s": statistics.median(cpus) if cpus else None, "set": statistics.median(sets),
                             "get": statistics.median(gets), "log_bytes": statistics.median(sizes) if sizes else 0}
    finally:
        rb.net_down()
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"repeat": a.repeat, "results": out}, f, indent=2)
    r, c = out["run"], out["record"]
    print(f"\n{'':<8} {'cpubench s':>11} {'SET/s':>8} {'GET/s':>8} {'log MB':>8}")
    for m in ("run", "record"):
        x = out[m]
        cs = f"{x['cpu_s']:.2f}" if x["cpu_s"] else "-"
        print(f"{m:<8} {cs:>11} {x['set']:>8.0f} {x['get']:>8.0f} {x['log_bytes'] / 1e6:>8.1f}")
    cpu_over = f"cpubench {100 * (c['cpu_s'] / r['cpu_s'] - 1):+.1f}%, " if r["cpu_s"] else ""
    print(f"overhead: {cpu_over}SET {100 * (1 - c['set'] / r['set']):+.1f}%, "
          f"GET {100 * (1 - c['get'] / r['get']):+.1f}% (median of {a.repeat})")


if __name__ == "__main__":
    main()
