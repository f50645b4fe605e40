#!/usr/bin/env bash
# scripts/bench.sh: runs the benchmark suite (benches/core.rs) in release mode and
# writes BENCHMARKS.md at the root of the repository: the date, the machine, the
# command that produced it, the tables with their explanations, and the
# machine-readable summary. `make bench` calls it; it can also be run by hand.
#
# The suite needs about 30 s on a quiet 2-core machine. Its numbers depend on what
# else runs: the load average before and after the run is recorded with them.
#
# Environment: CARGO (default cargo), CARGOFLAGS (extra cargo arguments),
# QUICK=1 (small counts: a smoke test whose numbers are not worth keeping),
# OUT (default BENCHMARKS.md).
#
# Also kept in target/bench/: core.md (the tables), core.json (the summary),
# core.log (everything the suite printed).

set -euo pipefail

cd "$(dirname "$0")/.." || exit 1

CARGO=${CARGO:-cargo}
read -r -a cargo_flags <<< "${CARGOFLAGS:-}"
OUT=${OUT:-BENCHMARKS.md}
QUICK=${QUICK:-0}
work=target/bench
mkdir -p "$work"

# The command a reader would type to produce the same file.
if [ -n "${MAKELEVEL:-}" ]; then
    command="make bench"
else
    command="scripts/bench.sh"
fi
[ "$QUICK" = 1 ] && command="QUICK=1 $command"

args=(--markdown "$work/core.md" --json "$work/core.json")
[ "$QUICK" = 1 ] && args+=(--quick)

date_started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rm -f "$work/core.md" "$work/core.json"

# `cargo bench` builds with the bench profile, which is the release profile.
echo "$CARGO bench ${cargo_flags[*]} --bench core -- ${args[*]}"
if ! "$CARGO" bench "${cargo_flags[@]}" --bench core -- "${args[@]}" 2>&1 | tee "$work/core.log"; then
    echo "bench.sh: the benchmark suite failed; see $work/core.log" >&2
    exit 1
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
if [ ! -s "$work/core.md" ] || [ ! -s "$work/core.json" ]; then
    echo "bench.sh: the suite wrote no results" >&2
    exit 1
fi

# The Go and Python bindings against gofrs/flock's syscalls and filelock.
echo "bindings/bench.sh"
if ! bash bindings/bench.sh > "$work/bindings.md" 2> "$work/bindings.log"; then
    echo "bench.sh: bindings/bench.sh failed; see $work/bindings.log" >&2
    exit 1
fi

# The command against util-linux flock(1), whole processes (scripts/bench-cli.sh).
echo "scripts/bench-cli.sh"
if ! bash scripts/bench-cli.sh > "$work/cli.md" 2> "$work/cli.log"; then
    echo "bench.sh: scripts/bench-cli.sh failed; see $work/cli.log" >&2
    exit 1
fi

cpu_model=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
[ -n "$cpu_model" ] || cpu_model=$(grep -m1 -E '^(Hardware|cpu model|uarch)' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
[ -n "$cpu_model" ] || cpu_model=unknown
mem_total=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
if grep -q '^flags.* hypervisor' /proc/cpuinfo; then
    virt="virtual machine (the CPU flags say hypervisor)"
else
    virt="none detected"
fi
container=$(systemd-detect-virt --container 2>/dev/null || true)
if [ -n "$container" ] && [ "$container" != none ]; then
    virt="$virt; container: $container"
fi
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    commit="$commit (with uncommitted changes)"
fi
tmpfs=$(df -T "${TMPDIR:-/tmp}" 2>/dev/null | awk 'NR == 2 { print $2 }')

{
    echo "# unilock benchmarks"
    echo
    echo "Produced by \`$command\` on $date_started. Regenerate with \`make bench\`"
    echo "(which runs \`scripts/bench.sh\`: \`cargo bench --bench core\`, the program"
    echo "\`benches/core.rs\`, in release mode, then writes this file)."
    if [ "$QUICK" = 1 ]; then
        echo
        echo "**QUICK=1: a smoke test with small counts; these numbers are not representative.**"
    fi
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| CPU | $cpu_model |"
    echo "| CPUs (nproc) | $(nproc) |"
    echo "| memory | $mem_total |"
    echo "| kernel | $(uname -srm) |"
    echo "| virtualisation | $virt |"
    echo "| compiler | $(rustc --version 2>/dev/null || echo unknown) |"
    echo "| unilock | $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1), commit $commit |"
    echo "| files in | ${TMPDIR:-/tmp} (${tmpfs:-unknown}) |"
    echo "| load average (1, 5, 15 min) | before: $load_before; after: $load_after |"
    echo
    echo "The machine may be shared: other work on it shows up as noise, mostly in the"
    echo "latency percentiles (p99, max). Ratios are taken between measurements made"
    echo "back to back in the same run, which keeps most of that noise out of them."
    echo
    cat "$work/core.md"
    echo
    echo "## The unilock command against flock(1)"
    echo
    echo "Whole-process cost of \`unilock -n FILE true\` against \`flock -n FILE true\`"
    echo "(target: at most 1.2x) and the \`-w 0.2\` timeout accuracy of both, from"
    echo "\`scripts/bench-cli.sh\` in the same run."
    echo
    cat "$work/cli.md"
    echo
    echo "## The bindings"
    echo
    echo "Go: the \`TryLock\`/\`Unlock\` pair through the binding (cgo included) against"
    echo "raw \`syscall.Flock\`, and the hand-off to \`Lock(ctx)\` with a deadline. Python:"
    echo "\`unilock.FileLock\` against \`filelock.FileLock\` 3.16.1, uncontended and as a"
    echo "hand-off with a timeout set (filelock polls every 50 ms). From"
    echo "\`bindings/bench.sh\` in the same run."
    echo
    cat "$work/bindings.md"
    echo
    echo "## Machine-readable summary"
    echo
    echo "The same results as one flat JSON object (also in \`target/bench/core.json\`"
    echo "after a run; times in ns, µs (\`_us\`), ms or s as the key says)."
    echo
    echo '```json'
    cat "$work/core.json"
    echo '```'
} > "$OUT.tmp"
mv -f "$OUT.tmp" "$OUT"
echo "bench.sh: wrote $OUT"
