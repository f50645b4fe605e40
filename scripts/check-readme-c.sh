#!/usr/bin/env bash
# scripts/check-readme-c.sh: the C snippets of README.md, compiled and run as a reader
# would use them, against the library built in this tree (`make build`).
#
# Every ```c block of README.md is compiled with -std=c99 -Wall -Wextra -Werror
# -pedantic (a block without main() is wrapped in one that returns `rc != 0`), with the
# path given to unilock_open replaced by getenv("README_LOCK_PATH"), and run under
# valgrind (when installed) three times:
#   free     the lock is free:           exit 0, the work done (something on stdout)
#   no-open  the path's directory is missing: exit 1, a message on stderr, no work
#   held     another process holds it:   exit 1 after the snippet's timeout, no work
# and every run must leave no file behind but the lock file. A snippet does its work
# by printing to stdout and reports failures on stderr. Ends with "N passed, N failed".
#
# Environment: CC (default cc), VALGRIND=0 to run without valgrind.

set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

CC=${CC:-cc}
VALGRIND=${VALGRIND:-1}
lib=$PWD/target/release
command=$lib/unilock
# The pass/fail counting and the closing tally.
source scripts/checks.sh

for needed in "$lib/libunilock.so" "$command"; do
    if [ ! -e "$needed" ]; then
        echo "check-readme-c.sh: $needed is missing: run make first" >&2
        exit 2
    fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/unilock-readme-c.XXXXXX") || exit 1
holders=()
cleanup() {
    local pid
    for pid in "${holders[@]}"; do kill "$pid" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# One file per ```c block, numbered in the order of README.md.
awk -v dir="$work" '
    /^```c[[:space:]]*$/ { n++; file = sprintf("%s/snippet%d.c", dir, n); inside = 1; next }
    /^```/ && inside { inside = 0; close(file); next }
    inside { print > file }
' README.md
snippets=("$work"/snippet*.c)
if [ ! -f "${snippets[0]}" ]; then
    fail "README.md has no C snippet"
fi

launcher=()
if [ "$VALGRIND" != 0 ] && command -v valgrind >/dev/null; then
    launcher=(valgrind -q --error-exitcode=99 --leak-check=full
        --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect)
fi

# run SNIPPET CASE PATH: runs the snippet's program in its own directory; sets rc.
run() {
    local bin=$1 case=$2 path=$3
    (cd "$work/$case.${bin##*/}" &&
        README_LOCK_PATH=$path LD_LIBRARY_PATH=$lib timeout 120 "${launcher[@]}" "$bin" \
            >"$work/${bin##*/}.$case.out" 2>"$work/${bin##*/}.$case.err" </dev/null)
}

# check NAME CASE RC WANT_RC WANT_WORK DIR LOCKFILE: judges one run.
check() {
    local name=$1 case=$2 rc=$3 want_rc=$4 want_work=$5 dir=$6 lockfile=$7
    local out=$work/$name.$case.out err=$work/$name.$case.err why=()
    [ "$rc" = "$want_rc" ] || why+=("exit status $rc, expected $want_rc")
    if [ "$want_work" = yes ] && [ ! -s "$out" ]; then why+=("the work was not done"); fi
    if [ "$want_work" = no ] && [ -s "$out" ]; then why+=("the work was done without the lock"); fi
    if [ "$want_rc" != 0 ] && [ "$case" = no-open ] && [ ! -s "$err" ]; then
        why+=("no message on stderr")
    fi
    local left
    left=$(find "$dir" -mindepth 1 ! -path "$lockfile" -print)
    [ -z "$left" ] || why+=("left files behind: $left")
    if [ ${#why[@]} -eq 0 ]; then
        pass "$name ($case)"
    else
        local IFS=';'
        fail "$name ($case): ${why[*]}" "$out" "$err"
    fi
}

for src in "${snippets[@]}"; do
    name=$(basename "$src" .c)
    prog=$work/$name.prog.c
    {
        echo '#include <stdlib.h>'
        if grep -q 'main(' "$src"; then
            cat "$src"
        else
            printf '#include <errno.h>\n#include <stdio.h>\n#include <unilock.h>\n\n'
            echo 'int main(void) {'
            sed 's/^/    /' "$src"
            echo '    return rc != 0;'
            echo '}'
        fi
    } | sed -E 's/unilock_open\("[^"]*"/unilock_open(getenv("README_LOCK_PATH")/' >"$prog"
    if ! grep -q 'getenv("README_LOCK_PATH")' "$prog"; then
        # A block that opens nothing (a declaration, an excerpt) is only compiled.
        if "$CC" -std=c99 -Wall -Wextra -Werror -pedantic -Iinclude -fsyntax-only "$prog" \
            >"$work/$name.build.log" 2>&1; then
            pass "$name compiles"
        else
            fail "$name does not compile" "$work/$name.build.log" "$prog"
        fi
        continue
    fi
    bin=$work/$name
    if ! "$CC" -std=c99 -Wall -Wextra -Werror -pedantic -Iinclude -o "$bin" "$prog" \
        -L"$lib" -lunilock >"$work/$name.build.log" 2>&1; then
        fail "$name does not build" "$work/$name.build.log" "$prog"
        continue
    fi
    pass "$name builds with -std=c99 -Wall -Wextra -Werror -pedantic"
    for case in free no-open held; do mkdir -p "$work/$case.$name"; done

    # The lock file exists beforehand (a mailbox does; CREATE does not mind).
    free_dir=$work/free.$name/data
    mkdir -p "$free_dir" && : >"$free_dir/lock"
    run "$bin" free "$free_dir/lock"
    check "$name" free $? 0 yes "$free_dir" "$free_dir/lock"

    run "$bin" no-open "$work/no-open.$name/missing/lock"
    check "$name" no-open $? 1 no "$work/no-open.$name" "-"

    # Held by the command, with a backend the snippet's lock conflicts with.
    held_dir=$work/held.$name/data
    mkdir -p "$held_dir" && : >"$held_dir/lock"
    backend=()
    grep -Eq 'BACKEND_(OFD|POSIX)' "$src" && backend=(--fcntl)
    "$command" "${backend[@]}" "$held_dir/lock" sleep 600 &
    holders+=($!)
    for _ in $(seq 200); do
        "$command" --test "${backend[@]}" "$held_dir/lock" >/dev/null 2>&1 || break
        sleep 0.05
    done
    run "$bin" held "$held_dir/lock"
    rc=$?
    kill "${holders[-1]}" 2>/dev/null
    check "$name" held $rc 1 no "$held_dir" "$held_dir/lock"
done

finish
