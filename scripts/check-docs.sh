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

# The pass/fail counting and the closing tally.
source scripts/checks.sh

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
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
for page in man/unilock.1 man/unilock.3; do
    if grep -q "^\.TH .*\"unilock $version\"" "$page"; then
        pass "$page is the page of version $version (Cargo.toml)"
    else
        grep '^\.TH' "$page" >"$work/th"
        fail "$page's .TH line does not say unilock $version" "$work/th"
    fi
    if groff -man -ww -z "$page" >"$work/groff.log" 2>&1 && [ ! -s "$work/groff.log" ]; then
        pass "$page renders without groff warnings"
    else
        fail "$page: groff -man -ww warns" "$work/groff.log"
    fi
done

# -- shell completions -------------------------------------------------------------
bin=$PWD/target/release
if [ ! -x "$bin/unilock" ]; then
    fail "target/release/unilock is missing: run make first"
else
    # The long options the command documents in --help.
    "$bin/unilock" --help | grep -o -- '--[a-z][a-z-]*' | sort -u >"$work/help-options"
    # complete WORDS...: what the bash completion offers for the last word.
    complete() {
        PATH=$bin:$PATH bash -c '
            source completions/unilock.bash
            COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
            _unilock; printf "%s\n" "${COMPREPLY[@]}"' complete "$@"
    }
    complete unilock -- | grep '^--' | sort -u >"$work/bash-options"
    if cmp -s "$work/help-options" "$work/bash-options"; then
        pass "bash: 'unilock --<TAB>' offers the $(wc -l <"$work/help-options") long options of --help"
    else
        diff -u --label "--help" --label "bash completion" "$work/help-options" "$work/bash-options" >"$work/bash.diff"
        fail "bash: the options offered differ from --help" "$work/bash.diff"
    fi
    : >"$work/lockme"
    check_offer() { # WANTED WORDS...: the completion of WORDS offers WANTED
        local wanted=$1
        shift
        if complete "$@" | grep -qxF -- "$wanted"; then
            pass "bash: '$*<TAB>' offers $wanted"
        else
            complete "$@" >"$work/offered"
            fail "bash: '$*<TAB>' does not offer $wanted" "$work/offered"
        fi
    }
    check_offer --backend unilock --ba
    check_offer ofd unilock -b o
    check_offer flock,dotlock unilock -b flock,d
    check_offer HOLDERS unilock --list --output HOL
    check_offer "$work/lockme" unilock -w 5 "$work/lock"
    check_offer sleep unilock -w 5 "$work/lockme" slee
    check_offer "$work/lockme" unilock -n "$work/lockme" cat "$work/lock"
    # The columns both completions offer are the ones the command knows.
    known=$("$bin/unilock" --list --output NO-SUCH-COLUMN "$work/lockme" 2>&1 |
        sed -n 's/.*(known: \(.*\)).*/\1/p' | tr -d ',')
    offered=$(sed -n 's/^_unilock_columns="\(.*\)"/\1/p' completions/unilock.bash)
    zsh_offered=$(sed -n 's/.*_sequence compadd - \(COMMAND[^'"'"']*\).*/\1/p' completions/_unilock | sed 's/\\\\//g')
    if [ -n "$known" ] && [ "$known" = "$offered" ] && [ "$known" = "$zsh_offered" ]; then
        pass "bash and zsh offer the columns the command knows"
    else
        printf 'command: %s\nbash:    %s\nzsh:     %s\n' "$known" "$offered" "$zsh_offered" >"$work/columns"
        fail "the completions' columns differ from the command's" "$work/columns"
    fi
    # zsh: the file parses, and names exactly the long options of --help.
    if ! command -v zsh >/dev/null; then
        fail "zsh is not installed: cannot check completions/_unilock"
    elif ! zsh -n completions/_unilock 2>"$work/zsh.log"; then
        fail "zsh cannot parse completions/_unilock" "$work/zsh.log"
    else
        grep -o -- "--[a-z][a-z-]*" completions/_unilock | sort -u >"$work/zsh-options"
        if cmp -s "$work/help-options" "$work/zsh-options"; then
            pass "zsh: completions/_unilock parses and names the long options of --help"
        else
            diff -u --label "--help" --label "zsh completion" "$work/help-options" "$work/zsh-options" >"$work/zsh.diff"
            fail "zsh: the options named differ from --help" "$work/zsh.diff"
        fi
    fi
fi

finish
