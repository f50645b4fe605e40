#!/usr/bin/env bash
# scripts/check-deb.sh: checks the Debian packages as a user of this machine gets
# them. As root, on a machine where unilock is not installed:
#
#   1. builds the packages (`make deb`, into target/deb; lintian must report no error)
#      and checks the built files: no debug info in the installed library or command,
#      the -dbgsym packages carry it under their build ids;
#   2. records the files under /usr, /etc and /var/lib/dpkg/info;
#   3. installs libunilock0, libunilock-dev, unilock and python3-unilock with dpkg -i;
#   4. builds examples-c/single_instance.c, copied out of the tree, with
#      `cc ... $(pkg-config --cflags --libs unilock)` and nothing else, runs it and
#      compares its output with examples-c/single_instance.expected;
#   5. runs the command: `unilock -n FILE true` exits 0, and exits 1 while another
#      unilock holds FILE;
#   6. imports the binding with the system's python3, from a directory outside the
#      tree and in isolated mode, and takes a lock that the command then sees held;
#   7. removes the packages (dpkg -r, then dpkg --purge) and checks that no file was
#      added or removed under the recorded directories and that the loader cache no
#      longer knows libunilock.
#
# The packages are purged on every exit, a failed step or an interrupt included.
# Each check prints PASS or FAIL; the last line is "N passed, N failed".
#
# Usage: scripts/check-deb.sh [--no-build]   (--no-build: use target/deb as it is)
# Environment: MAKE (default make), CC (default cc), KEEP=1 keeps the temporary
# directory.

set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
tree=$PWD

MAKE=${MAKE:-make}
CC=${CC:-cc}
KEEP=${KEEP:-0}
PYTHON=/usr/bin/python3 # the system's, which reads /usr/lib/python3/dist-packages
PACKAGES=(libunilock0 libunilock-dev unilock python3-unilock)
SNAPSHOT_DIRS=(/usr /etc /var/lib/dpkg/info)

build=1
case "${1:-}" in
    "") ;;
    --no-build) build=0 ;;
    *)
        echo "usage: scripts/check-deb.sh [--no-build]" >&2
        exit 64
        ;;
esac

if [ "$(id -u)" != 0 ]; then
    echo "check-deb.sh: must run as root: it installs the built packages with dpkg -i and removes them again (run: sudo make check-deb)" >&2
    exit 77
fi

# The pass/fail counting and the closing tally.
source scripts/checks.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/unilock-check-deb.XXXXXX") || exit 1
installing=0
holder=

package_known() { # installed, or removed with its configuration kept
    local status
    status=$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) || return 1
    [ -n "$status" ] && [ "$status" != not-installed ]
}

cleanup() {
    local rc=$?
    if [ -n "$holder" ]; then
        kill "$holder" 2>/dev/null
        wait "$holder" 2>/dev/null
    fi
    if [ "$installing" = 1 ]; then
        local pkg left=()
        for pkg in "${PACKAGES[@]}"; do
            package_known "$pkg" && left+=("$pkg")
        done
        if [ ${#left[@]} -gt 0 ]; then
            echo "cleanup: dpkg --purge ${left[*]}"
            dpkg --purge "${left[@]}" >"$work/cleanup-purge.log" 2>&1 || cat "$work/cleanup-purge.log"
        fi
    fi
    if [ "$KEEP" = 1 ]; then
        echo "keeping $work"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
libdir=/usr/lib/$multiarch
debdir=$tree/target/deb

# -- the machine has no unilock -------------------------------------------------
problems=()
for pkg in "${PACKAGES[@]}"; do
    package_known "$pkg" && problems+=("package $pkg is installed (or its configuration is kept)")
done
ldconfig -p | grep -q 'libunilock\.so' && problems+=("the loader cache knows libunilock: $(ldconfig -p | grep 'libunilock\.so' | head -1)")
pkg-config --exists unilock 2>/dev/null && problems+=("pkg-config finds unilock.pc: $(pkg-config --variable=pcfiledir unilock)")
command -v unilock >/dev/null && problems+=("a unilock command is on PATH: $(command -v unilock)")
(cd / && env -u PYTHONPATH "$PYTHON" -I -c 'import unilock' 2>/dev/null) && problems+=("$PYTHON can import unilock already")
if [ ${#problems[@]} -gt 0 ]; then
    echo "check-deb.sh: unilock is already installed on this machine, so the packages could not be told apart from it:" >&2
    printf '  %s\n' "${problems[@]}" >&2
    echo "remove it first (dpkg --purge ${PACKAGES[*]}, or make uninstall from the tree that installed it)" >&2
    exit 1
fi

# -- build ----------------------------------------------------------------------
if [ "$build" = 1 ]; then
    started=$(date +%s)
    if env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES "$MAKE" --no-print-directory deb >"$work/deb.log" 2>&1; then
        pass "make deb ($(($(date +%s) - started)) s; lintian reports no error)"
    else
        fail "make deb" "$work/deb.log"
        tail -n 40 "$work/deb.log"
        finish
    fi
fi

debs=()
for pkg in "${PACKAGES[@]}"; do
    a=$arch
    [ "$pkg" = python3-unilock ] && a=all
    deb=$debdir/${pkg}_${version}_$a.deb
    if [ -f "$deb" ]; then
        debs+=("$deb")
    else
        fail "$deb is missing"
    fi
done
[ ${#debs[@]} -eq ${#PACKAGES[@]} ] || finish

# Installed ELF files without debug info, each one's build id naming a file of its
# -dbgsym package.
mkdir -p "$work/unpacked"
for spec in libunilock0:$libdir/libunilock.so.$version unilock:/usr/bin/unilock; do
    pkg=${spec%%:*}
    file=${spec#*:}
    dpkg-deb -x "$debdir/${pkg}_${version}_$arch.deb" "$work/unpacked/$pkg"
    elf=$work/unpacked/$pkg$file
    build_id=$(readelf -n "$elf" 2>/dev/null | sed -n 's/^ *Build ID: *//p')
    # (.debug_gdb_scripts, which Rust adds to load its pretty-printers, is loaded
    # with the program and stays: it is a file name, not debug info.)
    sections=$(readelf -S -W "$elf" | grep -o '\.debug_[a-z_]*' | grep -v '^\.debug_gdb_scripts$' | tr '\n' ' ')
    dbgsym_files=$(dpkg-deb -c "$debdir/${pkg}-dbgsym_${version}_$arch.deb" 2>&1)
    if [ -n "$sections" ]; then
        fail "$pkg: $file carries debug sections: $sections"
    elif [ -z "$build_id" ]; then
        fail "$pkg: $file has no build id"
    elif grep -q "/usr/lib/debug/\.build-id/${build_id:0:2}/${build_id:2}\.debug\$" <<<"$dbgsym_files"; then
        pass "$pkg: $file has no debug info; ${pkg}-dbgsym has it under build id $build_id"
    else
        fail "$pkg: ${pkg}-dbgsym has no /usr/lib/debug/.build-id/${build_id:0:2}/${build_id:2}.debug"
    fi
done

# -- install --------------------------------------------------------------------
snapshot() {
    find "${SNAPSHOT_DIRS[@]}" -printf '%y %p\n' 2>/dev/null | LC_ALL=C sort
}
snapshot >"$work/before.txt"

installing=1
if dpkg -i "${debs[@]}" >"$work/install.log" 2>&1; then
    pass "dpkg -i ${PACKAGES[*]}"
else
    fail "dpkg -i ${PACKAGES[*]}" "$work/install.log"
    finish
fi

# (Merged /usr: the cache may name /lib/MULTIARCH, the same directory.)
cached=$(ldconfig -p | sed -n "s/^[[:space:]]*libunilock\.so\.${version%%.*} .*=> //p" | head -1)
if [ -n "$cached" ] && [ "$(readlink -f "$cached")" = "$libdir/libunilock.so.$version" ]; then
    pass "the loader cache has libunilock.so.${version%%.*} => $cached"
else
    fail "the loader cache has no libunilock.so.${version%%.*} in $libdir: $(ldconfig -p | grep libunilock)"
fi

# -- C, through pkg-config alone --------------------------------------------------
cdir=$work/c
mkdir -p "$cdir"
cp examples-c/single_instance.c examples-c/single_instance.expected "$cdir/"
(
    cd "$cdir" || exit 1
    unset PKG_CONFIG_PATH PKG_CONFIG_LIBDIR LD_LIBRARY_PATH LIBRARY_PATH CPATH C_INCLUDE_PATH
    # shellcheck disable=SC2046 # pkg-config's output is word-split on purpose
    "$CC" -std=c99 -Wall -Wextra -Werror -pedantic -o single_instance single_instance.c \
        $(pkg-config --cflags --libs unilock) >build.log 2>&1
) && built=1 || built=0
if [ "$built" = 1 ]; then
    pass "cc single_instance.c \$(pkg-config --cflags --libs unilock) -> $(pkg-config --cflags --libs unilock)"
    resolved=$(cd "$cdir" && env -u LD_LIBRARY_PATH ldd ./single_instance | awk '/libunilock/ {print $3}')
    if [ "$(readlink -f "$resolved")" = "$libdir/libunilock.so.$version" ]; then
        pass "single_instance loads $resolved"
    else
        fail "single_instance loads libunilock from '${resolved:-nowhere}', not $libdir"
    fi
    if (cd "$cdir" && env -u LD_LIBRARY_PATH TMPDIR="$cdir" timeout 60 ./single_instance >out.txt 2>err.txt) &&
        cmp -s "$cdir/out.txt" "$cdir/single_instance.expected"; then
        pass "single_instance runs and prints single_instance.expected"
    else
        diff -u "$cdir/single_instance.expected" "$cdir/out.txt" >"$cdir/out.diff"
        fail "single_instance" "$cdir/out.diff" "$cdir/err.txt"
    fi
else
    fail "cc single_instance.c \$(pkg-config --cflags --libs unilock)" "$cdir/build.log"
fi
if [ "$(pkg-config --modversion unilock)" = "$version" ]; then
    pass "pkg-config --modversion unilock says $version"
else
    fail "pkg-config --modversion unilock says '$(pkg-config --modversion unilock)', not $version"
fi

# -- the command ------------------------------------------------------------------
lock=$work/cmd.lock
if [ "$(command -v unilock)" = /usr/bin/unilock ]; then
    pass "unilock is /usr/bin/unilock"
else
    fail "unilock on PATH is '$(command -v unilock)', not /usr/bin/unilock"
fi
out=$(unilock -n "$lock" echo ran 2>&1)
rc=$?
if [ "$rc" = 0 ] && [ "$out" = ran ]; then
    pass "unilock -n FILE echo ran: exit 0, ran the command"
else
    fail "unilock -n FILE echo ran: exit $rc, printed '$out'"
fi
unilock "$lock" sh -c ": >'$work/held'; exec sleep 60" &
holder=$!
for _ in $(seq 100); do
    [ -e "$work/held" ] && break
    sleep 0.1
done
unilock -n "$lock" true 2>"$work/conflict.err"
rc=$?
if [ -e "$work/held" ] && [ "$rc" = 1 ]; then
    pass "unilock -n FILE true while another unilock holds FILE: exit 1"
else
    fail "unilock -n FILE true while another unilock holds FILE: exit $rc (held: $([ -e "$work/held" ] && echo yes || echo no))" "$work/conflict.err"
fi
kill "$holder" 2>/dev/null
wait "$holder" 2>/dev/null
holder=
if [ -f /usr/share/man/man1/unilock.1.gz ] && [ -f /usr/share/man/man3/unilock.3.gz ]; then
    pass "unilock(1) and unilock(3) are installed"
else
    fail "unilock(1) or unilock(3) is missing from /usr/share/man"
fi

# -- Python -----------------------------------------------------------------------
cat >"$work/lock.py" <<'EOF'
import subprocess
import sys

import unilock

path, version = sys.argv[1], sys.argv[2]
where = unilock.__file__
assert where.startswith("/usr/lib/python3/dist-packages/unilock/"), where
assert unilock.version() == version, (unilock.version(), version)
with unilock.Lock(path, timeout=0):
    held = subprocess.run(["unilock", "-n", path, "true"]).returncode
free = subprocess.run(["unilock", "-n", path, "true"]).returncode
assert (held, free) == (1, 0), ("unilock -n while held, after", held, free)
print("imported", where, "library", unilock.version())
EOF
if (cd "$work" && env -u PYTHONPATH -u UNILOCK_LIBRARY "$PYTHON" -I lock.py "$work/py.lock" "$version" >py.out 2>py.err); then
    pass "$PYTHON -I: $(cat "$work/py.out"); its lock is held for the command"
else
    fail "$PYTHON -I: import unilock and take a lock" "$work/py.out" "$work/py.err"
fi

# -- remove -----------------------------------------------------------------------
if dpkg -r "${PACKAGES[@]}" >"$work/remove.log" 2>&1; then
    pass "dpkg -r ${PACKAGES[*]}"
else
    fail "dpkg -r ${PACKAGES[*]}" "$work/remove.log"
fi
if dpkg --purge "${PACKAGES[@]}" >"$work/purge.log" 2>&1; then
    pass "dpkg --purge ${PACKAGES[*]}"
else
    fail "dpkg --purge ${PACKAGES[*]}" "$work/purge.log"
fi
left=()
for pkg in "${PACKAGES[@]}"; do
    package_known "$pkg" && left+=("$pkg")
done
if [ ${#left[@]} -eq 0 ]; then
    pass "dpkg knows none of the packages any more"
    installing=0
else
    fail "dpkg still knows ${left[*]}"
fi

snapshot >"$work/after.txt"
if diff "$work/before.txt" "$work/after.txt" >"$work/files.diff"; then
    pass "no file added or removed under ${SNAPSHOT_DIRS[*]}"
else
    fail "files added (>) or removed (<) under ${SNAPSHOT_DIRS[*]}" "$work/files.diff"
fi
if ldconfig -p | grep -q libunilock; then
    fail "the loader cache still has libunilock: $(ldconfig -p | grep libunilock)"
else
    pass "the loader cache has no libunilock"
fi

finish
