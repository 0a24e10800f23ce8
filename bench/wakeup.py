#!/usr/bin/env python3
"""What a TCP send on the loopback costs its sender when it wakes the receiver on the other
core, against one that wakes no one: the price a pair on one host pays a message (see
docs/replication.md, "Output commit").

usage: bench/wakeup.py [--messages N] [--repeat R]
The sender, on CPU 0, sends a 100-byte message every 300 us and measures the CPU time of its
send calls alone. The receiver, on CPU 1, either blocks in recv (`block`), spins until the
socket is readable (`spin`), blocks while another process keeps CPU 1 busy (`busy`), or does
the same as a SCHED_BATCH thread (`batch`, which a wake-up does not make preempt what runs).
Prints the median over the rounds, in microseconds a send.
"""
import argparse, os, select, socket, statistics, time

MODES = ("block", "spin", "busy", "batch")


def one(mode, n):
    burner = None
    if mode in ("busy", "batch"):
        burner = os.fork()
        if burner == 0:
            os.sched_setaffinity(0, {1})
            while True:
                pass
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {1})
        if mode == "batch":
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        c, _ = srv.accept()
        got = 0
        while got < n * 100:
            if mode == "spin":
                while not select.select([c], [], [], 0)[0]:
                    pass
            d = c.recv(65536)
            if not d:
                break
            got += len(d)
        os._exit(0)
    os.sched_setaffinity(0, {0})
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg, spent = b"x" * 100, 0.0
    for _ in range(n):
        t = time.perf_counter() + 0.0003
        while time.perf_counter() < t:
            pass
        a = time.thread_time()
        s.send(msg)
        spent += time.thread_time() - a
    s.close()
    os.waitpid(pid, 0)
    if burner:
        os.kill(burner, 9)
        os.waitpid(burner, 0)
    return spent / n * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    if os.cpu_count() < 2:
        raise SystemExit("needs two CPUs")
    runs = {m: [] for m in MODES}
    for _ in range(a.repeat):
        for m in MODES:
            runs[m].append(one(m, a.messages))
    for m in MODES:
        print(f"{m:6} {statistics.median(runs[m]):6.1f} us a send ({', '.join(f'{x:.1f}' for x in runs[m])})")


if __name__ == "__main__":
    main()
