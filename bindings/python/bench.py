"""Measures the Python binding for bindings/bench.sh; prints markdown table rows.

- the acquire/release pair of unilock.FileLock against filelock.FileLock (3.16.1),
  uncontended, in the same run;
- the hand-off latency of each with a timeout set: another process releases the lock
  (a raw flock(2)) and the waiter, blocked in ``acquire(timeout=10)`` in its main
  thread, returns. filelock polls every 50 ms (its default poll_interval); unilock
  waits in the kernel.
"""

import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import filelock

import unilock

PEER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
for line in sys.stdin:
    if line == "lock\n":
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
    elif line == "release\n":
        t = time.time_ns()
        fcntl.flock(fd, fcntl.LOCK_UN)
        print(t, flush=True)
"""


def per_pair(lock, n):
    lock.acquire()
    lock.release()
    began = time.perf_counter()
    for _ in range(n):
        lock.acquire()
        lock.release()
    return (time.perf_counter() - began) / n


def hand_off(path, make_lock, rounds):
    peer = subprocess.Popen(
        [sys.executable, "-c", PEER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )

    def say(s):
        peer.stdin.write(s + "\n")
        peer.stdin.flush()
        return peer.stdout.readline().strip()

    lock = make_lock(path)
    latencies = []
    for _ in range(rounds):
        assert say("lock") == "locked"
        box = {}

        def release_soon():
            # The waiter is asleep by now; a random moment within filelock's poll
            # interval, so that its polling shows its average cost.
            time.sleep(random.uniform(0.005, 0.055))
            box["released"] = int(say("release"))

        t = threading.Thread(target=release_soon)
        t.start()
        lock.acquire(timeout=10)
        got = time.time_ns()
        t.join()
        lock.release()
        latencies.append((got - box["released"]) / 1e9)
    peer.stdin.close()
    peer.wait()
    latencies.sort()
    return latencies[len(latencies) // 2], latencies[len(latencies) * 9 // 10]


def us(s):
    return f"{s * 1e6:.1f} µs" if s < 1e-3 else f"{s * 1e3:.1f} ms"


def main():
    rounds = int(os.environ.get("BENCH_ROUNDS", "40"))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.lock")
        open(path, "w").close()
        n = 20000
        ours_runs, theirs_runs = [], []
        for _ in range(3):  # interleaved, best of three
            ours_runs.append(per_pair(unilock.FileLock(path), n))
            theirs_runs.append(per_pair(filelock.FileLock(path), n))
        ours, theirs = min(ours_runs), min(theirs_runs)
        print(f"| Python | `FileLock` acquire + release pair, uncontended | {us(ours)} | filelock.FileLock: {us(theirs)} |")
        ours_med, ours_p90 = hand_off(path, lambda p: unilock.FileLock(p), rounds)
        theirs_med, theirs_p90 = hand_off(path, lambda p: filelock.FileLock(p), rounds)
        print(
            f"| Python | hand-off: another process releases, `acquire(timeout=10)` returns "
            f"(median / p90, {rounds} rounds) | {us(ours_med)} / {us(ours_p90)} | "
            f"filelock.FileLock (polls every 50 ms): {us(theirs_med)} / {us(theirs_p90)} |"
        )


if __name__ == "__main__":
    main()
