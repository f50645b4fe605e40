#!/usr/bin/env bash
# Runs gofrs/flock's own test suite against this module's flock package (the drop-in).
#
#   bindings/go/gofrs-compat.sh GOFRS_FLOCK_CHECKOUT [GO TEST ARGS...]
#
# GOFRS_FLOCK_CHECKOUT is a checkout (or `git archive`) of github.com/gofrs/flock,
# v0.13.0. Its flock_test.go and flock_example_test.go are copied into a temporary
# GOPATH (nothing of theirs enters this tree), their import of github.com/gofrs/flock
# is rewritten to ours, and they run against the library built in this tree
# (`cargo build --release`). Their testify dependency comes from Debian
# (apt-get install golang-github-stretchr-testify-dev), so no module download is
# needed. flock_internal_test.go reads gofrs's private fields and is not run.
set -euo pipefail

gofrs=${1:?usage: gofrs-compat.sh GOFRS_FLOCK_CHECKOUT [GO TEST ARGS...]}
shift
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
testify=/usr/share/gocode
if [ ! -d "$testify/src/github.com/stretchr/testify" ]; then
    echo "gofrs-compat.sh: testify missing: apt-get install golang-github-stretchr-testify-dev" >&2
    exit 2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src/github.com/unilock" "$tmp/src/gofrscompat"
ln -s "$root" "$tmp/src/github.com/unilock/unilock"
for f in flock_test.go flock_example_test.go; do
    sed 's#"github.com/gofrs/flock"#"github.com/unilock/unilock/bindings/go/flock"#' "$gofrs/$f" > "$tmp/src/gofrscompat/$f"
done
printf 'package flock\n' > "$tmp/src/gofrscompat/doc.go"

cd "$tmp/src/gofrscompat"
GO111MODULE=off GOPATH="$tmp:$testify" GOFLAGS= go test -tags unilock_intree "$@" .
