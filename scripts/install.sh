#!/usr/bin/env bash
# scripts/install.sh: the Makefile's install, install-debug and uninstall.
#
#   scripts/install.sh install|install-debug|uninstall
#
# Run by `make install`, `make install-debug`, `make uninstall`, which pass every
# setting in the environment: DESTDIR LIBDIR INCLUDEDIR BINDIR MANDIR PKGCONFIGDIR
# BASHCOMPDIR ZSHCOMPDIR,
# VERSION, the build's SO_FILE A_FILE BIN_FILE HEADER PC_FILES (space-separated),
# MAN_PAGES (space-separated), INSTALL STRIP OBJCOPY LDCONFIG, and STATE_DIR (a
# directory of the build tree where the directories an install created are
# recorded, so that uninstall removes them again).
#
# install: the shared library libunilock.so.VERSION with its SONAME link
# libunilock.so.MAJOR and the development link libunilock.so, libunilock.a, the
# header, the .pc files, the command (when built) with its bash and zsh completion,
# and the man pages. With STRIP set
# (the default `strip`), the installed library and command are stripped
# (--strip-unneeded) and carry a .gnu_debuglink naming FILE.debug, and the archive
# loses its debug sections (--strip-debug) and the LLVM bitcode that Rust's standard
# library objects carry; STRIP= installs the build's files as
# they are. The loader cache is refreshed (`ldconfig`) only when installing into the
# live system (no DESTDIR) as root into a LIBDIR the loader already searches;
# otherwise it is left alone (the SONAME link is made here, which is all that
# `ldconfig -n LIBDIR` would do).
#
# install-debug: install, plus the debug information of the library and the command,
# split off with `objcopy --only-keep-debug`, as LIBDIR/.debug/libunilock.so.VERSION.debug
# and BINDIR/.debug/unilock.debug: the .debug directory next to a stripped file is
# where gdb looks for the file its .gnu_debuglink names, whatever the prefix.
#
# uninstall: removes every file either of them installs, then each directory that
# an install into the same places created and that is now empty.
set -euo pipefail

action=${1:?usage: install.sh install|install-debug|uninstall}
: "${LIBDIR:?}" "${INCLUDEDIR:?}" "${BINDIR:?}" "${MANDIR:?}" "${PKGCONFIGDIR:?}" "${VERSION:?}"
: "${BASHCOMPDIR:?}" "${ZSHCOMPDIR:?}"
DESTDIR=${DESTDIR:-}
INSTALL=${INSTALL:-install}
STRIP=${STRIP-strip}
OBJCOPY=${OBJCOPY:-objcopy}
LDCONFIG=${LDCONFIG-ldconfig}
STATE_DIR=${STATE_DIR:-target}

major=${VERSION%%.*}
so_real=libunilock.so.$VERSION
so_name=libunilock.so.$major
read -r -a pc_files <<<"${PC_FILES:-}"
read -r -a man_pages <<<"${MAN_PAGES:-}"

lib=$DESTDIR$LIBDIR
bin=$DESTDIR$BINDIR

# Where the directories created by installs into these places are listed, one a
# line: a file per destination, named by a checksum of the destination.
key=$(printf '%s\n' "$DESTDIR" "$LIBDIR" "$INCLUDEDIR" "$BINDIR" "$MANDIR" "$PKGCONFIGDIR" \
    "$BASHCOMPDIR" "$ZSHCOMPDIR" |
    cksum | cut -d' ' -f1)
created_list=$STATE_DIR/install-dirs.$key

run() {
    echo "$*"
    "$@"
}

# make_dir DIR: creates DIR and its missing parents, recording each one created.
make_dir() {
    local dir=$1 missing=()
    while [ ! -d "$dir" ]; do
        missing+=("$dir")
        [ "$dir" = "${dir%/*}" ] || [ -z "${dir%/*}" ] && break
        dir=${dir%/*}
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    run "$INSTALL" -d "$1"
    mkdir -p "$STATE_DIR"
    printf '%s\n' "${missing[@]}" >>"$created_list"
}

# install_elf SRC DEST: installs an executable ELF file, stripped unless STRIP is
# empty. A stripped file gets a .gnu_debuglink to DEST's name plus .debug, whose
# contents are made next to SRC (install-debug installs them).
install_elf() {
    local src=$1 dest=$2
    run "$INSTALL" -m 0755 "$src" "$dest"
    [ -n "$STRIP" ] || return 0
    local debug=${src%/*}/${dest##*/}.debug
    run "$OBJCOPY" --only-keep-debug "$src" "$debug"
    run "$STRIP" --strip-unneeded "$dest"
    run "$OBJCOPY" --add-gnu-debuglink="$debug" "$dest"
}

# install_debug SRC DEST: installs DEST's debug file (made by install_elf) into the
# .debug directory next to DEST.
install_debug() {
    local src=$1 dest=$2
    local debug=${src%/*}/${dest##*/}.debug
    if [ -z "$STRIP" ]; then
        echo "install-debug: STRIP is empty, so the installed files keep their debug information" >&2
        return 0
    fi
    make_dir "${dest%/*}/.debug"
    run "$INSTALL" -m 0644 "$debug" "${dest%/*}/.debug/${dest##*/}.debug"
}

# Is DIR one of the directories the dynamic loader searches through its cache
# (ld.so.conf and the trusted directories)? `ldconfig -v -N -X` lists them without
# changing anything; compared by device and inode, as /lib may be /usr/lib.
searched_by_loader() {
    local dir=$1 listed
    while IFS= read -r listed; do
        [ "$listed" -ef "$dir" ] && return 0
    done < <("$LDCONFIG" -v -N -X 2>/dev/null | sed -n 's|^\(/[^:]*\):.*|\1|p')
    return 1
}

do_install() {
    local page section dest
    make_dir "$lib"
    make_dir "$DESTDIR$INCLUDEDIR"
    make_dir "$DESTDIR$PKGCONFIGDIR"
    install_elf "$SO_FILE" "$lib/$so_real"
    run ln -sf "$so_real" "$lib/$so_name"
    run ln -sf "$so_name" "$lib/libunilock.so"
    run "$INSTALL" -m 0644 "$A_FILE" "$lib/libunilock.a"
    if [ -n "$STRIP" ]; then
        # .llvmbc/.llvmcmd: the LLVM bitcode of Rust's standard library objects, for
        # rustc's cross-crate LTO only; no C linker reads it.
        run "$STRIP" --strip-debug --remove-section=.llvmbc --remove-section=.llvmcmd \
            "$lib/libunilock.a"
    fi
    run "$INSTALL" -m 0644 "$HEADER" "$DESTDIR$INCLUDEDIR/unilock.h"
    for pc in "${pc_files[@]}"; do
        run "$INSTALL" -m 0644 "$pc" "$DESTDIR$PKGCONFIGDIR/${pc##*/}"
    done
    if [ -f "$BIN_FILE" ]; then
        make_dir "$bin"
        install_elf "$BIN_FILE" "$bin/unilock"
        make_dir "$DESTDIR$BASHCOMPDIR"
        run "$INSTALL" -m 0644 completions/unilock.bash "$DESTDIR$BASHCOMPDIR/unilock"
        make_dir "$DESTDIR$ZSHCOMPDIR"
        run "$INSTALL" -m 0644 completions/_unilock "$DESTDIR$ZSHCOMPDIR/_unilock"
    fi
    for page in "${man_pages[@]}"; do
        section=${page##*.}
        dest=$DESTDIR$MANDIR/man$section
        make_dir "$dest"
        run "$INSTALL" -m 0644 "$page" "$dest/${page##*/}"
    done
    if [ -z "$DESTDIR" ] && [ -n "$LDCONFIG" ] && [ "$(id -u)" = 0 ] &&
        command -v "$LDCONFIG" >/dev/null; then
        if searched_by_loader "$LIBDIR"; then
            run "$LDCONFIG"
        else
            echo "$LIBDIR is not searched by the loader: the loader cache is left alone" \
                "(run programs with LD_LIBRARY_PATH=$LIBDIR or link them with -Wl,-rpath,$LIBDIR)"
        fi
    fi
}

do_install_debug() {
    install_debug "$SO_FILE" "$lib/$so_real"
    if [ -f "$BIN_FILE" ]; then
        install_debug "$BIN_FILE" "$bin/unilock"
    fi
}

do_uninstall() {
    local files=(
        "$lib/libunilock.so" "$lib/$so_name" "$lib/$so_real" "$lib/libunilock.a"
        "$lib/.debug/$so_real.debug"
        "$DESTDIR$INCLUDEDIR/unilock.h"
        "$bin/unilock" "$bin/.debug/unilock.debug"
        "$DESTDIR$BASHCOMPDIR/unilock" "$DESTDIR$ZSHCOMPDIR/_unilock"
    )
    local pc page
    for pc in "${pc_files[@]}"; do
        files+=("$DESTDIR$PKGCONFIGDIR/${pc##*/}")
    done
    for page in "${man_pages[@]}"; do
        files+=("$DESTDIR$MANDIR/man${page##*.}/${page##*/}")
    done
    local file
    for file in "${files[@]}"; do
        if [ -e "$file" ] || [ -L "$file" ]; then
            run rm -f "$file"
        fi
    done
    # The directories installs created, deepest first, each only if now empty.
    if [ -f "$created_list" ]; then
        local dir
        while IFS= read -r dir; do
            if [ -d "$dir" ] && [ -z "$(ls -A "$dir")" ]; then
                run rmdir "$dir"
            fi
        done < <(sort -u "$created_list" | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-)
        rm -f "$created_list"
    fi
}

case $action in
install) do_install ;;
install-debug) do_install && do_install_debug ;;
uninstall) do_uninstall ;;
*)
    echo "install.sh: unknown action '$action' (install, install-debug or uninstall)" >&2
    exit 64
    ;;
esac
