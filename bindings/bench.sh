#!/usr/bin/env bash
# Measures the Go and Python bindings and prints a markdown table.
#
#   bindings/bench.sh
#
# Needs `make` (the C library), Go (golang-go) and Python 3 with venv. Reuses
# target/python-venv from bindings/python/run-tests.sh (creating it if needed).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
lib=$root/target/release/libunilock.so
[ -f "$lib" ] || { echo "bench.sh: $lib missing: run 'make' first" >&2; exit 2; }

venv=$root/target/python-venv
if [ ! -x "$venv/bin/python" ]; then
    ${PYTHON:-python3} -m venv "$venv"
fi
"$venv/bin/python" -m pip --disable-pip-version-check --quiet install filelock==3.16.1
rows_python=$(cd "$here/python" && PYTHONDONTWRITEBYTECODE=1 UNILOCK_LIBRARY=$lib PYTHONPATH=$here/python/src "$venv/bin/python" bench.py)
rows_go=$(cd "$here/go" && GOFLAGS= GOPROXY=off go run -tags unilock_intree ./internal/bench)

echo "Bindings, $(uname -srm), $(nproc) CPUs, libunilock $(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1), $(go version | cut -d' ' -f3), $("$venv/bin/python" -V):"
echo
echo "| binding | what | unilock | the same run, without unilock |"
echo "|---|---|---|---|"
echo "$rows_go"
echo "$rows_python"
