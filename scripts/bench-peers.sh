#!/usr/bin/env bash
# scripts/bench-peers.sh: unilock beside what its users would otherwise use, in one
# run on the same lock files: the raw system calls, Rust std File::lock, fd-lock and
# fs4 (bench/peers, a crate of its own), util-linux flock(1), Python filelock and
# portalocker (in a venv this script creates), liblockfile (a small C agent),
# lockfile-progs and procmail's lockfile. `scripts/bench.sh` (make bench) runs it;
# by hand, after `make`: scripts/bench-peers.sh.
#
# Needs, beyond the build tools: util-linux flock, Python 3 with venv, a C compiler,
# and `apt-get install -y lockfile-progs liblockfile-dev procmail`.
#
# Writes target/bench/peers.md (the tables), peers-headline.md, peers.json (every
# sample) and peers.log, then the charts docs/bench-*.svg (scripts/bench-charts.py).
#
# Environment: CARGO, QUICK=1 (small counts, a smoke test), BENCH_COMMAND and
# BENCH_DATE (what the charts say produced them; bench.sh sets both), PYTHON.

set -euo pipefail

cd "$(dirname "$0")/.." || exit 1
root=$PWD
CARGO=${CARGO:-cargo}
PYTHON=${PYTHON:-python3}
QUICK=${QUICK:-0}
work=target/bench
mkdir -p "$work"

missing=()
for tool in flock lockfile-create lockfile-remove lockfile cc "$PYTHON"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[ -f /usr/include/lockfile.h ] || missing+=("lockfile.h (liblockfile-dev)")
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench-peers.sh: missing: ${missing[*]}" >&2
    echo "bench-peers.sh: on Debian: apt-get install -y util-linux lockfile-progs liblockfile-dev procmail python3-venv gcc" >&2
    exit 2
fi

# The library and the command, as `make` builds them.
if [ ! -f target/release/libunilock.so ] || [ ! -x target/release/unilock ]; then
    "${MAKE:-make}" --no-print-directory build CARGO="$CARGO" >/dev/null
fi

echo "bench-peers.sh: building bench/peers"
CARGO_TARGET_DIR=$root/target/peers "$CARGO" build --release --quiet \
    --manifest-path bench/peers/Cargo.toml
peers=$root/target/peers/release/peers

cc -O2 -std=c99 -Wall -Wextra -Werror -pedantic -o "$work/lockfile_agent" \
    bench/peers/lockfile_agent.c -llockfile

# The Python peers, pinned: the newest releases when this benchmark was written.
venv=$root/target/peers-venv
if [ ! -x "$venv/bin/python" ]; then
    if ! "$PYTHON" -m venv "$venv"; then
        echo "bench-peers.sh: '$PYTHON -m venv' failed; on Debian: apt-get install python3-venv" >&2
        rm -rf "$venv"
        exit 2
    fi
fi
"$venv/bin/python" -m pip --disable-pip-version-check --quiet install \
    filelock==4.3.1 portalocker==4.4.2

args=(run --dir "${TMPDIR:-/tmp}/unilock-peers-$$"
      --markdown "$work/peers.md" --headline "$work/peers-headline.md" --json "$work/peers.json"
      --python "$venv/bin/python" --py-agent "$root/bench/peers/agent.py"
      --lockfile-agent "$root/$work/lockfile_agent"
      --unilock "$root/target/release/unilock" --flock "$(command -v flock)")
[ "$QUICK" = 1 ] && args+=(--quick)

rm -f "$work/peers.md" "$work/peers-headline.md" "$work/peers.json"
echo "bench-peers.sh: target/peers/release/peers ${args[*]}"
status=0
UNILOCK_LIBRARY=$root/target/release/libunilock.so PYTHONPATH=$root/bindings/python/src \
    PYTHONDONTWRITEBYTECODE=1 "$peers" "${args[@]}" > "$work/peers.log" 2>&1 || status=$?
rm -rf "${TMPDIR:-/tmp}/unilock-peers-$$"
if [ "$status" != 0 ] || [ ! -s "$work/peers.json" ]; then
    tail -n 30 "$work/peers.log" >&2
    echo "bench-peers.sh: the peer benchmark failed; see $work/peers.log" >&2
    exit 1
fi

# Versions, for the report.
{
    echo "| peer | version |"
    echo "|---|---|"
    echo "| util-linux flock(1) | $(flock -V | sed 's/.*util-linux //') |"
    echo "| Python | $("$venv/bin/python" -c 'import platform; print(platform.python_version())') |"
    echo "| filelock, portalocker | $("$venv/bin/python" -c 'import filelock, portalocker; print(filelock.__version__ + ", " + portalocker.__version__)') |"
    echo "| fd-lock, fs4 | $(sed -n '/^name = "fd-lock"/{n;s/version = "\(.*\)"/\1/p}' bench/peers/Cargo.lock), $(sed -n '/^name = "fs4"/{n;s/version = "\(.*\)"/\1/p}' bench/peers/Cargo.lock) |"
    echo "| Rust std \`File::lock\` | $(rustc --version | cut -d' ' -f2) |"
    for pkg in liblockfile1 lockfile-progs procmail; do
        echo "| $pkg (Debian) | $(dpkg-query -W -f '${Version}' "$pkg" 2>/dev/null || echo unknown) |"
    done
} > "$work/peers-versions.md"

date=${BENCH_DATE:-$(date -u '+%Y-%m-%d %H:%M UTC')}
if [ -n "${BENCH_COMMAND:-}" ]; then
    command=$BENCH_COMMAND
else
    command=scripts/bench-peers.sh
    [ "$QUICK" = 1 ] && command="QUICK=1 $command"
fi
cpu_model=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
machine="${cpu_model:-unknown CPU}, $(nproc) CPUs, $(uname -sr)"
"$PYTHON" scripts/bench-charts.py "$work/peers.json" docs \
    --machine "$machine" --date "$date" --command "$command"
echo "bench-peers.sh: wrote $work/peers.md and docs/bench-*.svg"
