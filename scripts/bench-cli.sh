#!/usr/bin/env bash
# The unilock command against util-linux flock(1), measured in the same run:
#   - whole-process cost of `TOOL -n FILE true` (spawn, lock, fork+exec true, wait,
#     exit), median per run over RUNS runs each, interleaved; target: at most 1.2x;
#   - `-w 0.2` timeout accuracy against a holder: how far past 0.2 s the whole
#     process ends (median and max overshoot over WAITS runs each).
# Prints a markdown table on stdout. Usage: scripts/bench-cli.sh [RUNS] [WAITS]
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-500}
WAITS=${2:-20}
FLOCK=${FLOCK:-/usr/bin/flock}
UNILOCK=${UNILOCK:-$PWD/target/release/unilock}

if [ ! -x "$UNILOCK" ]; then
    cargo build --release --quiet --features capi --bin unilock
fi
command -v "$FLOCK" >/dev/null || { echo "bench-cli: $FLOCK is missing" >&2; exit 1; }

exec python3 - "$FLOCK" "$UNILOCK" "$RUNS" "$WAITS" <<'PY'
import os, statistics, subprocess, sys, tempfile, time

flock, unilock, runs, waits = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tmp = tempfile.mkdtemp(prefix="unilock-bench-cli-")
lock_file = os.path.join(tmp, "lock")
open(lock_file, "w").close()
devnull = os.open(os.devnull, os.O_RDWR)
actions = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
           (os.POSIX_SPAWN_DUP2, devnull, 2)]

def one(argv):
    """Wall time of one whole process, spawned with posix_spawn and reaped."""
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    _, status = os.waitpid(pid, 0)
    t = time.perf_counter_ns() - t0
    return t, os.waitstatus_to_exitcode(status)

def check(argv, expected, what):
    code = one(argv)[1]
    if code != expected:
        sys.exit(f"bench-cli: {what} exited {code}, expected {expected}")

true_path = "/bin/true"
cmds = {
    "flock": [flock, "-n", lock_file, true_path],
    "unilock": [unilock, "-n", lock_file, true_path],
    "true": [true_path],
}
for name, argv in cmds.items():
    check(argv, 0, name)
    for _ in range(20):  # warm the page cache and the dynamic loader
        one(argv)
times = {name: [] for name in cmds}
for _ in range(runs):  # interleaved, so that both see the same machine
    for name, argv in cmds.items():
        times[name].append(one(argv)[0])
med = {name: statistics.median(t) / 1e6 for name, t in times.items()}

# Timeout accuracy: a holder keeps the lock; both tools wait 0.2 s and give up.
holder = subprocess.Popen([flock, "-F", lock_file, "sleep", "600"])
try:
    deadline = time.time() + 5
    while one([flock, "-n", lock_file, true_path])[1] != 1:
        if time.time() > deadline:
            sys.exit("bench-cli: the holder did not take the lock")
        time.sleep(0.01)
    over = {"flock": [], "unilock": []}
    for _ in range(waits):
        for name in over:
            argv = [cmds[name][0], "-w", "0.2", lock_file, true_path]
            t, code = one(argv)
            if code != 1:
                sys.exit(f"bench-cli: {name} -w 0.2 exited {code}, expected 1")
            over[name].append(t / 1e6 - 200.0)
finally:
    holder.kill()
    holder.wait()
    os.unlink(lock_file)
    os.rmdir(tmp)

def version(argv):
    return subprocess.run(argv, capture_output=True, text=True).stdout.strip()

print(f"`{version([flock, '-V'])}` vs `{version([unilock, '-V'])}`, "
      f"Linux {os.uname().release}, {os.cpu_count()} CPUs; "
      f"{runs} runs each (interleaved), {waits} timed waits each.")
print()
print("| measurement | flock(1) | unilock | unilock / flock |")
print("|---|---:|---:|---:|")
print(f"| `-n FILE true`, whole process, median per run | {med['flock']:.3f} ms "
      f"| {med['unilock']:.3f} ms | {med['unilock'] / med['flock']:.2f}x |")
print(f"| the same minus spawning `true` alone ({med['true']:.3f} ms) "
      f"| {med['flock'] - med['true']:.3f} ms | {med['unilock'] - med['true']:.3f} ms "
      f"| {(med['unilock'] - med['true']) / (med['flock'] - med['true']):.2f}x |")
for label, fn in (("median", statistics.median), ("max", max)):
    f, u = fn(over["flock"]), fn(over["unilock"])
    print(f"| `-w 0.2` against a holder: {label} overshoot past 0.2 s (whole process) "
          f"| {f:.2f} ms | {u:.2f} ms | |")
PY
