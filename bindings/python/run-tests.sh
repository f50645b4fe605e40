#!/usr/bin/env bash
# The Python binding's tests, against the library built in this tree.
#
#   bindings/python/run-tests.sh [PYTEST ARGS...]
#
# Needs `make` (target/release/libunilock.so; UNILOCK_LIBRARY
# overrides it) and a Python 3 with venv. Creates target/python-venv, installs pytest,
# filelock 3.16.1 (the package we must interoperate with) and this package into it
# (a real `pip install`, so the packaging is tested too), then runs pytest. Exits
# non-zero when any test fails.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
lib=${UNILOCK_LIBRARY:-$root/target/release/libunilock.so}
if [ ! -f "$lib" ]; then
    echo "run-tests.sh: $lib is missing: run 'make' first" >&2
    exit 2
fi
lib=$(cd "$(dirname "$lib")" && pwd)/$(basename "$lib")

venv=$root/target/python-venv
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    if ! "$python" -m venv "$venv"; then
        echo "run-tests.sh: '$python -m venv' failed; on Debian: apt-get install python3-venv" >&2
        rm -rf "$venv"
        exit 2
    fi
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
"${pip[@]}" install pytest filelock==3.16.1
# Build from a copy so that setuptools' build/ and egg-info stay out of the tree.
build=$root/target/python-build
rm -rf "$build"
mkdir -p "$build"
cp -r "$here/pyproject.toml" "$here/README.md" "$here/src" "$build/"
"${pip[@]}" install --force-reinstall --no-deps "$build"

export UNILOCK_LIBRARY=$lib
export PYTHONDONTWRITEBYTECODE=1
cd "$here"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
