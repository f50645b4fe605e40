#!/usr/bin/env bash
# scripts/bench-etcd.sh: the ETCD backend's benchmark, section 7 of BENCHMARKS.md.
# `make bench-etcd` runs it alone (after `make build`: it measures the command
# target/release/unilock and the library target/release/libunilock.so), and
# scripts/bench.sh as part of `make bench`; about 40 s.
#
# It builds benches/etcd.rs as `etcd` through bench/peers/Cargo.toml (as bench.sh
# builds `core`, without the library's dev-dependencies), and, for the size
# comparison, the C library without the `etcd` feature in target/noetcd (the `capi`
# code with `--cfg feature="capi"` given to rustc directly, since the cargo feature
# `capi` turns `etcd` on; linked as the Makefile links libunilock.so). Then the
# program starts a private etcd member (scripts/etcd-server.sh, fsync kept on) in a
# new directory under TMPDIR, measures, and stops it; the trap below stops it too if
# the program dies. It needs etcd 3.4 (apt-get install etcd-server etcd-client).
#
# Writes target/bench/etcd.md (the tables), etcd.json (the summary) and
# etcd-targets.md (its rows of the targets table); prints the tables.
#
# Environment: CARGO (default cargo), CARGOFLAGS (extra cargo arguments), CC
# (default cc), QUICK=1 (small counts: a smoke test), TMPDIR (where the member keeps
# its data: the file system there is named in the report).
set -euo pipefail
cd "$(dirname "$0")/.." || exit 1

CARGO=${CARGO:-cargo}
CC=${CC:-cc}
read -r -a cargo_flags <<< "${CARGOFLAGS:-}"
QUICK=${QUICK:-0}
work=target/bench
mkdir -p "$work"

for f in target/release/unilock target/release/libunilock.so; do
    [ -e "$f" ] || { echo "bench-etcd.sh: $f is missing: run make build first" >&2; exit 1; }
done

echo "CARGO_TARGET_DIR=target/peers $CARGO build --release --manifest-path bench/peers/Cargo.toml --bin etcd" >&2
CARGO_TARGET_DIR=$PWD/target/peers "$CARGO" build --release "${cargo_flags[@]}" \
    --manifest-path bench/peers/Cargo.toml --bin etcd

# The library without the ETCD backend, for its size only; the run goes on without
# it if it cannot be built.
noetcd=target/noetcd/release
without=()
echo "CARGO_TARGET_DIR=target/noetcd $CARGO rustc --release --lib --crate-type staticlib -- --cfg 'feature=\"capi\"'" >&2
if CARGO_TARGET_DIR=$PWD/target/noetcd "$CARGO" rustc --release --lib --crate-type staticlib \
        "${cargo_flags[@]}" -- --cfg 'feature="capi"' >&2 &&
    "$CC" -shared -o "$noetcd/libunilock.so" \
        -Wl,--whole-archive "$noetcd/libunilock.a" -Wl,--no-whole-archive \
        -Wl,--version-script=unilock.map -Wl,-soname,libunilock.so.0 \
        -Wl,--gc-sections -Wl,-z,defs -Wl,-z,relro,-z,now -Wl,-z,noexecstack \
        -Wl,--as-needed $(sed -n 's/^Libs.private: *//p' unilock.pc.in) >&2; then
    without=(--library-without-etcd "$noetcd/libunilock.so")
else
    echo "bench-etcd.sh: the library without the etcd feature did not build; its size is left out" >&2
fi

etcd_dir=$(mktemp -d "${TMPDIR:-/tmp}/unilock-bench-etcd.XXXXXX")
# The program stops its member; this stops it if the program could not.
trap 'bash scripts/etcd-server.sh stop "$etcd_dir" 2>/dev/null || rm -rf "$etcd_dir"' EXIT

args=(--etcd-dir "$etcd_dir" --markdown "$work/etcd.md" --json "$work/etcd.json"
      --targets "$work/etcd-targets.md" --unilock target/release/unilock
      --library target/release/libunilock.so "${without[@]}")
[ "$QUICK" = 1 ] && args+=(--quick)
rm -f "$work/etcd.md" "$work/etcd.json" "$work/etcd-targets.md"
echo "target/peers/release/etcd ${args[*]}" >&2
target/peers/release/etcd "${args[@]}"

# The command that produced the tables, at their head.
{
    echo "Produced by \`scripts/bench-etcd.sh\`, which ran \`target/peers/release/etcd ${args[*]}\`."
    [ "$QUICK" = 1 ] && printf '\n**QUICK=1: small counts, a smoke test; these numbers are not representative.**\n'
    echo
    cat "$work/etcd.md"
} > "$work/etcd.md.tmp"
mv -f "$work/etcd.md.tmp" "$work/etcd.md"
