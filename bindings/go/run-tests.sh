#!/usr/bin/env bash
# The Go binding's checks, against the library built in this tree.
#
#   bindings/go/run-tests.sh [GO TEST ARGS...]
#
# Needs `make` (target/release/libunilock.so and its SONAME link libunilock.so.0,
# which the in-tree test binaries load through their rpath) and Go >= 1.19
# (Debian: apt-get install golang-go) with a C compiler. Steps:
#   1. gofmt and go vet; a build without cgo (CGO_ENABLED=0) and one for another OS
#      must fail with unilock/unsupported.go's message;
#   2. go test -race over every package, built against the tree (-tags unilock_intree:
#      include/ and target/release, with an rpath);
#   3. the installed use: `make install PREFIX=target/go-prefix` and a build and a short test run
#      through `#cgo pkg-config: unilock` (the default, without the tag);
#   4. with GOFRS_FLOCK_DIR set to a checkout of github.com/gofrs/flock v0.13.0, its own
#      tests against our flock package (gofrs-compat.sh).
# Exits non-zero when any check or test fails; ends with go test's summary lines and
# a "go: N passed, N failed" line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ ! -e "$root/target/release/libunilock.so.0" ]; then
    echo "run-tests.sh: target/release/libunilock.so.0 is missing: run 'make' first" >&2
    exit 2
fi
if ! command -v go >/dev/null; then
    echo "run-tests.sh: no go: apt-get install golang-go" >&2
    exit 2
fi
export CGO_ENABLED=1 GOFLAGS= GOPROXY=off GO111MODULE=on
cd "$here"

echo "== gofmt, go vet ($(go version))"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
    echo "gofmt would change: $unformatted" >&2
    exit 1
fi
go vet -tags unilock_intree ./...

# Without cgo, or off Linux, the build stops at unilock/unsupported.go's named error,
# and at nothing else.
for env in "CGO_ENABLED=0" "GOOS=darwin CGO_ENABLED=1"; do
    echo "== $env go build ./... must fail with unsupported.go's message"
    out=$(env $env go build ./... 2>&1) && { echo "$env go build ./... succeeded" >&2; exit 1; }
    errors=$(grep -c '^unilock/' <<<"$out" || true)
    if [ "$errors" != 1 ] || ! grep -q '^unilock/unsupported\.go:.*undefined: unilock_needs_Linux_and_cgo__set_CGO_ENABLED_1_install_a_C_compiler_and_libunilock_found_by_pkg_config$' <<<"$out"; then
        echo "$env go build ./... did not fail with exactly unsupported.go's message:" >&2
        echo "$out" >&2
        exit 1
    fi
done

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# A fixed prefix: go's build cache keeps the -L path that pkg-config gave.
prefix=$root/target/go-prefix
echo "== installed use: make install PREFIX=$prefix, then #cgo pkg-config: unilock"
rm -rf "$prefix"
make -s -C "$root" install PREFIX="$prefix" LDCONFIG= >/dev/null
PKG_CONFIG_PATH="$prefix/lib/pkgconfig" LD_LIBRARY_PATH="$prefix/lib" \
    go test -count=1 -run 'TestVersion|TestTryLockWouldBlock|TestFlockAndACProgram' ./... 

gofrs_status=0
if [ -n "${GOFRS_FLOCK_DIR:-}" ]; then
    echo "== gofrs/flock's own tests against our flock package"
    "$here/gofrs-compat.sh" "$GOFRS_FLOCK_DIR" -race -count=1 -v >"$log" 2>&1 || gofrs_status=$?
    grep -E '^(ok|FAIL)|^\s*--- FAIL' "$log" || tail -20 "$log"
    echo "gofrs/flock's tests: $(grep -cE '^\s*--- PASS' "$log" || true) passed, $(grep -cE '^\s*--- FAIL' "$log" || true) failed"
fi

echo "== go test -race -tags unilock_intree ./..."
status=0
go test -race -count=1 -tags unilock_intree -v "$@" ./... >"$log" 2>&1 || status=$?
if [ "$status" -ne 0 ]; then
    # Everything but the passing tests' lines: failure messages, panics, FAIL lines.
    grep -vE '^\s*(=== (RUN|PAUSE|CONT)|--- (PASS|SKIP)|PASS$)' "$log" | head -200 || true
else
    grep -E '^(ok|FAIL|\?) ' "$log" || tail -20 "$log"
fi
passed=$(grep -cE '^\s*--- PASS' "$log" || true)
failed=$(grep -cE '^\s*--- FAIL' "$log" || true)
skipped=$(grep -cE '^\s*--- SKIP' "$log" || true)
echo "go: $passed passed, $failed failed, $skipped skipped"
if [ "$status" -ne 0 ] || [ "$gofrs_status" -ne 0 ]; then
    exit 1
fi
