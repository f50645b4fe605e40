#!/usr/bin/env bash
# scripts/check-c.sh: checks libunilock as a C user gets it, from `make install`.
#
# Installs the tree into a temporary DESTDIR (PREFIX=/usr) and checks, each one
# counted: the installed files and symlinks, the SONAME, that the shared library
# exports exactly the functions declared in unilock.h, that the header compiles as
# C99 and C++11 (and links from C++), the version macros, the pkg-config file, and
# every examples-c/*.c: built with pkg-config against the shared library, run, and
# its output compared with examples-c/NAME.expected (exact match); run again under
# valgrind when it is installed; built once more against libunilock.a with
# `pkg-config --static` and run. Ends with the line "N passed, N failed".
#
# Environment: CC (default cc), CXX (default g++), MAKE (default make),
# VALGRIND=0 to skip valgrind, KEEP=1 to keep the temporary directory,
# UPDATE_EXPECTED=1 to rewrite examples-c/*.expected from the actual output
# (review the diff before committing it).
#
# An example that needs more compiler flags says so on a line of its own
# comment: "check-c: -pthread".

set -uo pipefail

cd "$(dirname "$0")/.." || exit 1

CC=${CC:-cc}
CXX=${CXX:-g++}
MAKE=${MAKE:-make}
VALGRIND=${VALGRIND:-1}
KEEP=${KEEP:-0}
UPDATE_EXPECTED=${UPDATE_EXPECTED:-0}
RUN_TIMEOUT=${RUN_TIMEOUT:-120}
CFLAGS_STRICT=(-std=c99 -Wall -Wextra -Werror -pedantic)

passed=0
failed=0
skipped=0

pass() {
    passed=$((passed + 1))
    echo "PASS: $1"
}

# fail MESSAGE [FILE...]: counts a failure and shows the files (logs, diffs).
fail() {
    failed=$((failed + 1))
    echo "FAIL: $1"
    shift
    local file
    for file in "$@"; do
        [ -s "$file" ] || continue
        echo "---- ${file#"$work"/}"
        head -n 60 "$file" | sed 's/^/    /'
    done
}

skip() {
    skipped=$((skipped + 1))
    echo "SKIP: $1"
}

finish() {
    local line="$passed passed, $failed failed"
    [ "$skipped" -gt 0 ] && line="$line, $skipped skipped"
    echo
    echo "$line"
    [ "$failed" -eq 0 ]
    exit
}

have() { command -v "$1" >/dev/null 2>&1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/unilock-check-c.XXXXXX") || exit 1
if [ "$KEEP" = 1 ]; then
    echo "keeping $work"
else
    trap 'rm -rf "$work"' EXIT
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
major=${version%%.*}
if [ -z "$version" ]; then
    fail "no version in Cargo.toml"
    finish
fi

# -- install -------------------------------------------------------------------
destdir=$work/root
prefix=/usr
libdir=$destdir$prefix/lib
incdir=$destdir$prefix/include
pcdir=$libdir/pkgconfig

# A clean sub-make: variables given to an outer `make check` must not move the
# install somewhere this script does not look.
if env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES \
    "$MAKE" --no-print-directory install DESTDIR="$destdir" PREFIX=$prefix EXEC_PREFIX=$prefix \
    LIBDIR=$prefix/lib INCLUDEDIR=$prefix/include BINDIR=$prefix/bin \
    MANDIR=$prefix/share/man PKGCONFIGDIR=$prefix/lib/pkgconfig LDCONFIG= \
    >"$work/install.log" 2>&1; then
    pass "make install DESTDIR=... PREFIX=$prefix"
else
    fail "make install DESTDIR=... PREFIX=$prefix" "$work/install.log"
    finish
fi

so_real=libunilock.so.$version
so_name=libunilock.so.$major
problems=()
[ -f "$libdir/$so_real" ] && [ ! -L "$libdir/$so_real" ] || problems+=("$prefix/lib/$so_real is not a regular file")
[ "$(readlink "$libdir/$so_name" 2>/dev/null)" = "$so_real" ] || problems+=("$prefix/lib/$so_name is not a symlink to $so_real")
[ "$(readlink "$libdir/libunilock.so" 2>/dev/null)" = "$so_name" ] || problems+=("$prefix/lib/libunilock.so is not a symlink to $so_name")
[ -f "$libdir/libunilock.a" ] || problems+=("$prefix/lib/libunilock.a is missing")
cmp -s include/unilock.h "$incdir/unilock.h" || problems+=("$prefix/include/unilock.h differs from include/unilock.h")
[ -f "$pcdir/unilock.pc" ] || problems+=("$prefix/lib/pkgconfig/unilock.pc is missing")
grep -qx "prefix=$prefix" "$pcdir/unilock.pc" 2>/dev/null || problems+=("unilock.pc does not say prefix=$prefix")
if [ -f target/release/unilock ] && [ ! -x "$destdir$prefix/bin/unilock" ]; then
    problems+=("$prefix/bin/unilock is missing")
fi
for page in man/*.[1-9]; do
    [ -f "$page" ] || continue
    [ -f "$destdir$prefix/share/man/man${page##*.}/${page##*/}" ] || problems+=("man page ${page##*/} is missing")
done
if [ ${#problems[@]} -eq 0 ]; then
    pass "installed files and symlinks"
else
    printf '%s\n' "${problems[@]}" >"$work/layout.txt"
    find "$destdir" \( -type f -o -type l \) -printf '%P %l\n' | sort >>"$work/layout.txt"
    fail "installed files and symlinks" "$work/layout.txt"
fi
so=$libdir/$so_real
if [ ! -f "$so" ]; then
    fail "no shared library to check"
    finish
fi

# -- SONAME ----------------------------------------------------------------------
if have readelf; then
    soname=$(readelf -d "$so" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
    if [ "$soname" = "$so_name" ]; then
        pass "SONAME is $so_name"
    else
        fail "SONAME is '${soname:-none}', expected $so_name"
    fi
else
    fail "readelf is not installed (binutils)"
fi

# -- exported symbols == functions declared in the header -----------------------
# The header's functions come from the compiler itself (gcc -aux-info writes one
# prototype per declared function), not from parsing C with regular expressions.
if have gcc && have nm; then
    printf '#include <unilock.h>\n' >"$work/aux.c"
    if gcc -std=c99 -I"$incdir" -fsyntax-only -aux-info "$work/aux.txt" "$work/aux.c" \
        >"$work/aux.log" 2>&1; then
        grep -F "/unilock.h:" "$work/aux.txt" | sed 's|^/\*[^*]*\*/ *||' | grep -v '^static ' |
            sed -n 's/^[^(]*[^A-Za-z0-9_]\([A-Za-z_][A-Za-z0-9_]*\) *(.*/\1/p' |
            sort -u >"$work/header-functions.txt"
        # Defined dynamic symbols: functions (T, W, i) must be ours; absolute
        # symbols (A) are version nodes; anything else (data) is not part of the API.
        nm -D --defined-only "$so" | awk '
            { type = $(NF - 1); name = $NF; sub(/@.*/, "", name) }
            type == "A" { next }
            type == "T" || type == "W" || type == "i" { print name > "/dev/stdout"; next }
            { print type " " name > "/dev/stderr" }
        ' 2>"$work/exported-other.txt" | sort -u >"$work/exported-functions.txt"
        n_header=$(wc -l <"$work/header-functions.txt")
        if [ "$n_header" -eq 0 ]; then
            fail "found no function declared in unilock.h" "$work/aux.txt"
        elif diff -u --label "declared in unilock.h" --label "exported by $so_real" \
            "$work/header-functions.txt" "$work/exported-functions.txt" >"$work/exports.diff" &&
            [ ! -s "$work/exported-other.txt" ]; then
            pass "$so_real exports exactly the $n_header functions of unilock.h"
        else
            fail "$so_real does not export exactly the functions of unilock.h (- missing, + extra; then exported non-functions)" \
                "$work/exports.diff" "$work/exported-other.txt"
        fi
        if grep -v '^unilock_' "$work/header-functions.txt" >"$work/unprefixed.txt"; then
            fail "unilock.h declares functions without the unilock_ prefix" "$work/unprefixed.txt"
        fi
    else
        fail "gcc -aux-info could not read unilock.h" "$work/aux.log"
    fi
else
    fail "gcc and nm are needed to compare the header with the exports"
fi

# -- pkg-config ------------------------------------------------------------------
if ! have pkg-config; then
    fail "pkg-config is not installed"
    finish
fi
# Only the staged unilock.pc, with its paths under DESTDIR.
export PKG_CONFIG_LIBDIR=$pcdir PKG_CONFIG_PATH='' PKG_CONFIG_SYSROOT_DIR=$destdir
pc_version=$(pkg-config --modversion unilock 2>"$work/pc.log")
pc_cflags=$(pkg-config --cflags unilock 2>>"$work/pc.log")
pc_libs=$(pkg-config --libs unilock 2>>"$work/pc.log")
pc_static=$(pkg-config --static --libs unilock 2>>"$work/pc.log")
read -r -a cflags <<<"$pc_cflags"
read -r -a libs <<<"$pc_libs"
if [ "$pc_version" = "$version" ] && [[ " $pc_cflags " == *" -I$incdir "* ]] &&
    [[ " $pc_libs " == *" -L$libdir "* ]] && [[ " $pc_libs " == *" -lunilock "* ]]; then
    pass "pkg-config: version $pc_version, ${cflags[*]} ${libs[*]}"
else
    {
        echo "modversion: '$pc_version' (Cargo.toml: $version)"
        echo "cflags: '$pc_cflags' (expected -I$incdir)"
        echo "libs: '$pc_libs' (expected -L$libdir -lunilock)"
    } >>"$work/pc.log"
    fail "pkg-config --cflags --libs unilock" "$work/pc.log" "$pcdir/unilock.pc"
fi
# --static, with the archive forced: -lunilock would pick the .so next to it.
static_libs=()
for word in $pc_static; do
    [ "$word" = -lunilock ] && word=-l:libunilock.a
    static_libs+=("$word")
done

# -- the header as C99 and C++11 -------------------------------------------------
printf '#include <unilock.h>\n#include <unilock.h> /* include guard */\n' >"$work/header.c"
if "$CC" "${CFLAGS_STRICT[@]}" -fsyntax-only "${cflags[@]}" "$work/header.c" >"$work/header-c.log" 2>&1; then
    pass "unilock.h compiles alone as C99 ($CC ${CFLAGS_STRICT[*]})"
else
    fail "unilock.h does not compile alone as C99 ($CC ${CFLAGS_STRICT[*]})" "$work/header-c.log"
fi
if "$CC" "${CFLAGS_STRICT[@]}" -Wstrict-prototypes -fsyntax-only "${cflags[@]}" "$work/header.c" \
    >"$work/header-proto.log" 2>&1; then
    pass "unilock.h declares full prototypes (-Wstrict-prototypes)"
else
    fail "unilock.h has declarations without prototypes, e.g. f() for f(void)" "$work/header-proto.log"
fi
if have "$CXX"; then
    # Linked and run, not only parsed: a header without extern "C" parses fine
    # and fails at link time.
    cat >"$work/header.cpp" <<'EOF'
#include <unilock.h>
#include <cerrno>
#include <cstdio>
int main()
{
    unilock_options opts;
    unilock_options_init(&opts);
    std::printf("%s|%s\n", unilock_version(), unilock_strerror(-EAGAIN) != nullptr ? "ok" : "null");
    return unilock_close(nullptr);
}
EOF
    if "$CXX" -std=c++11 -Wall -Wextra -Werror -pedantic "${cflags[@]}" -o "$work/header-cpp" \
        "$work/header.cpp" "${libs[@]}" >"$work/header-cpp.log" 2>&1 &&
        LD_LIBRARY_PATH=$libdir "$work/header-cpp" >"$work/header-cpp.out" 2>>"$work/header-cpp.log" &&
        grep -qx "$version|ok" "$work/header-cpp.out"; then
        pass "unilock.h compiles, links and runs as C++11 ($CXX -std=c++11 -Wall -Wextra -Werror -pedantic)"
    else
        fail "unilock.h as C++11 ($CXX -std=c++11 -Wall -Wextra -Werror -pedantic, linked and run)" \
            "$work/header-cpp.log" "$work/header-cpp.out"
    fi
else
    fail "$CXX is not installed: cannot check the header as C++"
fi

# -- version macros --------------------------------------------------------------
cat >"$work/version.c" <<'EOF'
#include <unilock.h>
#include <stdio.h>
int main(void)
{
    printf("%d.%d.%d %s\n", (int)UNILOCK_VERSION_MAJOR, (int)UNILOCK_VERSION_MINOR,
           (int)UNILOCK_VERSION_PATCH, unilock_version());
    return 0;
}
EOF
if "$CC" "${CFLAGS_STRICT[@]}" "${cflags[@]}" -o "$work/version" "$work/version.c" "${libs[@]}" \
    >"$work/version.log" 2>&1 &&
    LD_LIBRARY_PATH=$libdir "$work/version" >"$work/version.out" 2>>"$work/version.log" &&
    [ "$(cat "$work/version.out")" = "$version $version" ]; then
    pass "UNILOCK_VERSION_MAJOR/MINOR/PATCH and unilock_version() say $version"
else
    echo "expected: $version $version" >>"$work/version.out"
    fail "version macros and unilock_version() against Cargo.toml" "$work/version.log" "$work/version.out"
fi

# -- examples --------------------------------------------------------------------
use_valgrind=0
if [ "$VALGRIND" != 0 ]; then
    if have valgrind; then
        use_valgrind=1
    else
        skip "valgrind is not installed: examples not run under valgrind"
    fi
fi

# run_example NAME BINARY TAG [launcher...]: runs BINARY in an empty directory
# that is also its TMPDIR, compares stdout with examples-c/NAME.expected, and
# checks that the example left no file behind.
run_example() {
    local name=$1 bin=$2 tag=$3
    shift 3
    local run=$work/run.$name.$tag
    local out=$work/$name.$tag.out err=$work/$name.$tag.err
    local expected=examples-c/$name.expected
    local rc=0
    mkdir -p "$run"
    (cd "$run" && TMPDIR=$run timeout "$RUN_TIMEOUT" "$@" "$bin" </dev/null >"$out" 2>"$err") || rc=$?
    if [ "$UPDATE_EXPECTED" = 1 ] && [ "$tag" = run ] && [ "$rc" -eq 0 ]; then
        cp "$out" "$expected"
        echo "updated $expected"
    fi
    local why=()
    [ "$rc" -eq 0 ] || why+=("exit status $rc$([ "$rc" -eq 124 ] && echo ": timed out after ${RUN_TIMEOUT}s")")
    if [ ! -f "$expected" ]; then
        why+=("no $expected")
    elif ! diff -u --label "$expected" --label "output" "$expected" "$out" >"$work/$name.$tag.diff"; then
        why+=("output differs from $expected")
    fi
    if [ -n "$(ls -A "$run")" ]; then
        ls -lAR "$run" >"$work/$name.$tag.left"
        why+=("left files behind")
    fi
    if [ ${#why[@]} -eq 0 ]; then
        pass "$name ($tag)"
    else
        local logs=()
        [ "$tag" = valgrind ] && logs=("$work"/vg."$name".*.log)
        local IFS=';'
        fail "$name ($tag): ${why[*]}" "$work/$name.$tag.diff" "$err" "$work/$name.$tag.left" \
            "${logs[@]}"
    fi
}

examples=(examples-c/*.c)
if [ ! -f "${examples[0]}" ]; then
    fail "no examples in examples-c/"
    finish
fi
mkdir -p "$work/bin"
first_bin=
for src in "${examples[@]}"; do
    name=$(basename "$src" .c)
    read -r -a extra <<<"$(sed -n 's/^.*check-c: *\(.*\)$/\1/p' "$src" | head -1)"
    bin=$work/bin/$name
    build=("$CC" "${CFLAGS_STRICT[@]}" "${extra[@]}" -o "$bin" "$src" "${cflags[@]}" "${libs[@]}")
    if "${build[@]}" >"$work/$name.build.log" 2>&1; then
        pass "$name builds: $CC ${CFLAGS_STRICT[*]} ${extra[*]:+${extra[*]} }\$(pkg-config --cflags --libs unilock)"
        [ -n "$first_bin" ] || first_bin=$bin
    else
        fail "$name does not build: ${build[*]}" "$work/$name.build.log"
        continue
    fi
    run_example "$name" "$bin" run env LD_LIBRARY_PATH="$libdir"
    if [ "$use_valgrind" = 1 ]; then
        run_example "$name" "$bin" valgrind env LD_LIBRARY_PATH="$libdir" \
            valgrind -q --error-exitcode=99 --leak-check=full \
            --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect \
            --log-file="$work/vg.$name.%p.log"
    fi
    static_bin=$work/bin/$name.static
    build=("$CC" "${CFLAGS_STRICT[@]}" "${extra[@]}" -o "$static_bin" "$src" "${cflags[@]}" "${static_libs[@]}")
    if ! "${build[@]}" >"$work/$name.static.log" 2>&1; then
        fail "$name does not build statically: ${build[*]}" "$work/$name.static.log"
        continue
    fi
    if readelf -d "$static_bin" | grep -q 'NEEDED.*libunilock'; then
        fail "$name.static still needs libunilock.so"
        continue
    fi
    pass "$name builds statically: pkg-config --static, -l:libunilock.a"
    run_example "$name" "$static_bin" static env -u LD_LIBRARY_PATH
done

# The dynamic examples above really ran against the installed library.
if [ -n "$first_bin" ]; then
    # Read whole first: under pipefail, `ldd | grep -q` fails when grep's early exit
    # kills ldd with SIGPIPE.
    LD_LIBRARY_PATH=$libdir ldd "$first_bin" >"$work/ldd.txt" 2>&1
    if grep -q "$so_name => $libdir/$so_name " "$work/ldd.txt"; then
        pass "examples load $so_name from the installed $prefix/lib"
    else
        fail "examples do not load $so_name from the installed $prefix/lib" "$work/ldd.txt"
    fi
fi

# -- uninstall -------------------------------------------------------------------
if env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES \
    "$MAKE" --no-print-directory uninstall DESTDIR="$destdir" PREFIX=$prefix EXEC_PREFIX=$prefix \
    LIBDIR=$prefix/lib INCLUDEDIR=$prefix/include BINDIR=$prefix/bin \
    MANDIR=$prefix/share/man PKGCONFIGDIR=$prefix/lib/pkgconfig \
    >"$work/uninstall.log" 2>&1 &&
    [ -z "$(find "$destdir" \( -type f -o -type l \) -print -quit)" ]; then
    pass "make uninstall removes every installed file"
else
    find "$destdir" \( -type f -o -type l \) >>"$work/uninstall.log"
    fail "make uninstall left files" "$work/uninstall.log"
fi

finish
