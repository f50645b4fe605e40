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
# `pkg-config --libs unilock-static` and run (single_instance also fully static,
# `cc -static $(pkg-config --static --cflags --libs unilock)`). Then the install
# itself: stripped files with a .gnu_debuglink (sizes shown), `STRIP=` keeping them
# as built, `make install-debug` whose debug files gdb finds, `make install-strip`,
# the loader cache left unchanged by a root install into a private PREFIX (and
# `ldconfig` run for a LIBDIR the loader searches, with a stand-in ldconfig), and
# `make uninstall` removing every installed file and the directories it created
# while another's file and its directories stay. Ends with "N passed, N failed".
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

# The pass/fail counting and the closing tally.
source scripts/checks.sh

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

# sub_make TARGET DESTDIR PREFIX [VAR=VALUE...]: a clean sub-make, every directory
# given: variables of an outer `make check` must not move the install somewhere
# this script does not look.
sub_make() {
    local target=$1 dest=$2 pfx=$3
    shift 3
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES \
        "$MAKE" --no-print-directory "$target" DESTDIR="$dest" PREFIX="$pfx" EXEC_PREFIX="$pfx" \
        LIBDIR="$pfx/lib" INCLUDEDIR="$pfx/include" BINDIR="$pfx/bin" \
        MANDIR="$pfx/share/man" PKGCONFIGDIR="$pfx/lib/pkgconfig" \
        BASHCOMPDIR="$pfx/share/bash-completion/completions" \
        ZSHCOMPDIR="$pfx/share/zsh/site-functions" "$@"
}

if sub_make install "$destdir" $prefix LDCONFIG= >"$work/install.log" 2>&1; then
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
[ -f "$pcdir/unilock-static.pc" ] || problems+=("$prefix/lib/pkgconfig/unilock-static.pc is missing")
grep -qx "prefix=$prefix" "$pcdir/unilock.pc" 2>/dev/null || problems+=("unilock.pc does not say prefix=$prefix")
if [ -f target/release/unilock ]; then
    [ -x "$destdir$prefix/bin/unilock" ] || problems+=("$prefix/bin/unilock is missing")
    cmp -s completions/unilock.bash "$destdir$prefix/share/bash-completion/completions/unilock" ||
        problems+=("the bash completion is not $prefix/share/bash-completion/completions/unilock")
    cmp -s completions/_unilock "$destdir$prefix/share/zsh/site-functions/_unilock" ||
        problems+=("the zsh completion is not $prefix/share/zsh/site-functions/_unilock")
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
# libunilock.a, the rest dynamic: unilock-static.pc (`pkg-config --static unilock`
# keeps -lunilock first, which the linker resolves to the .so).
pc_archive=$(pkg-config --cflags --libs unilock-static 2>>"$work/pc.log")
read -r -a archive_flags <<<"$pc_archive"
read -r -a static_flags <<<"$(pkg-config --static --cflags --libs unilock 2>>"$work/pc.log")"
if [[ " $pc_archive " == *" -l:libunilock.a "* ]] && [[ " $pc_static " == *" -lunilock "* ]]; then
    pass "pkg-config: unilock-static gives $pc_archive; --static unilock gives $pc_static"
else
    fail "pkg-config --libs unilock-static ('$pc_archive'), --static --libs unilock ('$pc_static')" \
        "$work/pc.log" "$pcdir/unilock-static.pc"
fi

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
    build=("$CC" "${CFLAGS_STRICT[@]}" "${extra[@]}" -o "$static_bin" "$src" "${archive_flags[@]}")
    if ! "${build[@]}" >"$work/$name.static.log" 2>&1; then
        fail "$name does not build against libunilock.a: ${build[*]}" "$work/$name.static.log"
        continue
    fi
    if readelf -d "$static_bin" | grep -q 'NEEDED.*libunilock'; then
        fail "$name.static still needs libunilock.so"
        continue
    fi
    pass "$name builds with libunilock.a: \$(pkg-config --cflags --libs unilock-static)"
    run_example "$name" "$static_bin" static env -u LD_LIBRARY_PATH
    [ "$name" = single_instance ] || continue
    # A fully static program: -static and `pkg-config --static`. glibc's warnings about
    # getaddrinfo/getpwuid_r in Rust's standard library are expected (never called).
    full_bin=$work/bin/$name.full-static
    build=("$CC" -static "${CFLAGS_STRICT[@]}" "${extra[@]}" -o "$full_bin" "$src" "${static_flags[@]}")
    if ! "${build[@]}" >"$work/$name.full-static.log" 2>&1; then
        fail "$name does not build fully static: ${build[*]}" "$work/$name.full-static.log"
        continue
    fi
    ldd "$full_bin" >"$work/$name.full-static.ldd" 2>&1
    if grep -q libunilock "$work/$name.full-static.ldd" || readelf -d "$full_bin" | grep -q NEEDED; then
        fail "$name.full-static needs shared libraries" "$work/$name.full-static.ldd"
        continue
    fi
    pass "$name builds fully static: cc -static \$(pkg-config --static --cflags --libs unilock); ldd: $(tr -d '\t' <"$work/$name.full-static.ldd")"
    run_example "$name" "$full_bin" full-static env -u LD_LIBRARY_PATH
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

# -- stripping and debug information ----------------------------------------------
# has_section FILE NAME: the ELF file (every member, for an archive) has section NAME.
has_section() {
    readelf -W -S "$1" 2>/dev/null | grep -q " $2 "
}
size_of() { stat -c %s "$1"; }
installed_elves=("$libdir/$so_real" "$destdir$prefix/bin/unilock")
problems=()
for file in "${installed_elves[@]}"; do
    [ -f "$file" ] || continue
    has_section "$file" .debug_info && problems+=("${file#"$destdir"} keeps .debug_info")
    has_section "$file" .symtab && problems+=("${file#"$destdir"} keeps .symtab")
    has_section "$file" .gnu_debuglink || problems+=("${file#"$destdir"} has no .gnu_debuglink")
done
has_section "$libdir/libunilock.a" .debug_info && problems+=("$prefix/lib/libunilock.a keeps .debug_info")
has_section "$libdir/libunilock.a" .llvmbc && problems+=("$prefix/lib/libunilock.a keeps .llvmbc")
sizes="libunilock.so.$version $(size_of "$libdir/$so_real") (built: $(size_of target/release/libunilock.so)),"
sizes="$sizes libunilock.a $(size_of "$libdir/libunilock.a") (built: $(size_of target/release/libunilock.a))"
if [ -f "$destdir$prefix/bin/unilock" ]; then
    sizes="$sizes, unilock $(size_of "$destdir$prefix/bin/unilock") (built: $(size_of target/release/unilock))"
fi
if [ ${#problems[@]} -eq 0 ]; then
    pass "make install strips, bytes: $sizes"
else
    printf '%s\n' "${problems[@]}" >"$work/strip.txt"
    fail "make install does not strip as it should" "$work/strip.txt"
fi

# STRIP= installs the files as built.
unstripped=$work/root-unstripped
if sub_make install "$unstripped" $prefix LDCONFIG= STRIP= >"$work/install-nostrip.log" 2>&1 &&
    cmp -s target/release/libunilock.so "$unstripped$prefix/lib/$so_real" &&
    cmp -s target/release/libunilock.a "$unstripped$prefix/lib/libunilock.a" &&
    { [ ! -f target/release/unilock ] || cmp -s target/release/unilock "$unstripped$prefix/bin/unilock"; }; then
    pass "make install STRIP= installs the library, archive and command as built"
else
    fail "make install STRIP= does not install the files as built" "$work/install-nostrip.log"
fi

# GNU's install-strip strips even when STRIP is empty.
stripped=$work/root-install-strip
if sub_make install-strip "$stripped" $prefix LDCONFIG= STRIP= >"$work/install-strip.log" 2>&1 &&
    ! has_section "$stripped$prefix/lib/$so_real" .debug_info; then
    pass "make install-strip STRIP= strips"
else
    fail "make install-strip STRIP= does not strip" "$work/install-strip.log"
fi

# install-debug: the split debug information where gdb finds it through the
# .gnu_debuglink, for the stripped library and command alike.
debugroot=$work/root-debug
if sub_make install-debug "$debugroot" $prefix LDCONFIG= >"$work/install-debug.log" 2>&1 &&
    [ -f "$debugroot$prefix/lib/.debug/$so_real.debug" ] &&
    has_section "$debugroot$prefix/lib/.debug/$so_real.debug" .debug_info &&
    ! has_section "$debugroot$prefix/lib/$so_real" .debug_info &&
    { [ ! -f target/release/unilock ] || [ -f "$debugroot$prefix/bin/.debug/unilock.debug" ]; }; then
    pass "make install-debug installs $prefix/lib/.debug/$so_real.debug and $prefix/bin/.debug/unilock.debug"
else
    find "$debugroot" >>"$work/install-debug.log" 2>&1
    fail "make install-debug" "$work/install-debug.log"
fi
if have gdb; then
    # Line information for unilock_version: only from the separate debug file.
    gdb_line() { gdb -nx -batch -ex 'info line unilock_version' "$1" 2>&1; }
    with=$(gdb_line "$debugroot$prefix/lib/$so_real")
    without=$(gdb_line "$libdir/$so_real")
    if [[ $with == *'Line '*' of "'*version.rs'"'* ]] && [[ $without != *'Line '*' of "'* ]]; then
        pass "gdb finds unilock_version's source line through the .gnu_debuglink (and not without the debug file)"
    else
        printf 'with the debug file:\n%s\nwithout:\n%s\n' "$with" "$without" >"$work/gdb.txt"
        fail "gdb and the installed debug file" "$work/gdb.txt"
    fi
else
    skip "gdb is not installed: the debug file is not looked up"
fi

# -- the loader cache ----------------------------------------------------------------
# As root and without DESTDIR, into a private PREFIX: the real ldconfig must leave
# /etc/ld.so.cache as it was. Then a stand-in ldconfig, which says which directories
# the loader searches and logs how it is called: the cache is refreshed (plain
# `ldconfig`) only when LIBDIR is one of them.
if [ "$(id -u)" != 0 ]; then
    skip "not root: make install without DESTDIR and the loader cache not checked"
elif ! have ldconfig && [ ! -x /sbin/ldconfig ]; then
    skip "no ldconfig: the loader cache not checked"
else
    live=$work/live-prefix
    cache=/etc/ld.so.cache
    before=$(sha256sum "$cache" 2>/dev/null)
    if sub_make install "" "$live" >"$work/install-live.log" 2>&1 &&
        [ -f "$live/lib/$so_real" ] && [ "$(sha256sum "$cache" 2>/dev/null)" = "$before" ] &&
        ! grep -qE '^(/sbin/)?ldconfig( |$)' "$work/install-live.log"; then
        pass "make install PREFIX=<private> as root leaves $cache unchanged (${before%% *})"
    else
        echo "$cache before: $before, after: $(sha256sum "$cache" 2>/dev/null)" >>"$work/install-live.log"
        fail "make install PREFIX=<private> as root changed the loader cache" "$work/install-live.log"
    fi
    fake=$work/fake-ldconfig
    cat >"$fake" <<EOF
#!/bin/sh
echo "\$*" >>"$work/ldconfig-calls"
case "\$*" in
*-v*) [ -n "\$FAKE_SEARCHED" ] && echo "\$FAKE_SEARCHED: (from fake.conf:1)"; echo "/lib: (from <builtin>:0)" ;;
esac
exit 0
EOF
    chmod +x "$fake"
    rm -f "$work/ldconfig-calls"
    FAKE_SEARCHED='' sub_make install "" "$live" LDCONFIG="$fake" >"$work/install-fake1.log" 2>&1
    calls_private=$(grep -v -- '-v -N -X' "$work/ldconfig-calls" 2>/dev/null | tr '\n' ';')
    rm -f "$work/ldconfig-calls"
    FAKE_SEARCHED=$live/lib sub_make install "" "$live" LDCONFIG="$fake" >"$work/install-fake2.log" 2>&1
    calls_searched=$(grep -v -- '-v -N -X' "$work/ldconfig-calls" 2>/dev/null | tr '\n' ';')
    if [ -z "$calls_private" ] && [ "$calls_searched" = ";" ]; then
        pass "ldconfig runs (without arguments) only for a LIBDIR the loader searches"
    else
        echo "calls for a private LIBDIR: '$calls_private'; for a searched one: '$calls_searched'" \
            >"$work/ldconfig.txt"
        fail "ldconfig calls" "$work/ldconfig.txt" "$work/install-fake1.log" "$work/install-fake2.log"
    fi
    if sub_make uninstall "" "$live" >"$work/uninstall-live.log" 2>&1 && [ ! -e "$live" ]; then
        pass "make uninstall PREFIX=<private> removes the prefix it created"
    else
        find "$live" >>"$work/uninstall-live.log" 2>&1
        fail "make uninstall PREFIX=<private> left files or directories" "$work/uninstall-live.log"
    fi
fi

# -- uninstall -------------------------------------------------------------------
# Another's files in directories the install created and in one it did not: they
# stay, with their directories; everything installed goes, and so does every
# directory the install made that is left empty.
mkdir -p "$destdir/var/keep"
echo other >"$destdir/var/keep/file"
echo other >"$libdir/someone-elses.so"
mkdir -p "$destdir$prefix/share/man/man1" && echo other >"$destdir$prefix/share/man/man1/other.1"
foreign=("$destdir/var/keep/file" "$libdir/someone-elses.so" "$destdir$prefix/share/man/man1/other.1")
# The other installs (STRIP=, install-strip, install-debug) had nothing added: their
# DESTDIRs, which they created, must go entirely.
for root in "$unstripped" "$stripped" "$debugroot"; do
    if sub_make uninstall "$root" $prefix >"$work/uninstall.log" 2>&1 && [ ! -e "$root" ]; then
        pass "make uninstall removes all that install made in DESTDIR=${root#"$work"/}"
    else
        find "$root" >>"$work/uninstall.log" 2>&1
        fail "make uninstall left files or directories in DESTDIR=${root#"$work"/}" "$work/uninstall.log"
    fi
done
if sub_make uninstall "$destdir" $prefix >"$work/uninstall.log" 2>&1; then
    find "$destdir" \( -type f -o -type l \) | sort >"$work/left.txt"
    printf '%s\n' "${foreign[@]}" | sort >"$work/foreign.txt"
    empty_made=$(find "$destdir" -mindepth 1 -type d -empty | head -5)
    if cmp -s "$work/left.txt" "$work/foreign.txt" && [ -z "$empty_made" ] &&
        [ -d "$destdir/var/keep" ] && [ ! -e "$incdir" ] && [ ! -e "$destdir$prefix/bin" ]; then
        pass "make uninstall removes every installed file and the directories it made, and keeps another's files"
    else
        {
            echo "left (expected only the foreign files):"
            cat "$work/left.txt"
            echo "empty directories left: $empty_made"
        } >>"$work/uninstall.log"
        fail "make uninstall" "$work/uninstall.log"
    fi
else
    fail "make uninstall DESTDIR=..." "$work/uninstall.log"
fi

finish
