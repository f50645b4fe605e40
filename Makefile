# unilock: build, install and check the C system library (GNU make).
#
#   make                      the command, libunilock.a and libunilock.so (see build),
#                             then target/unilock.pc
#   make install              PREFIX, EXEC_PREFIX, LIBDIR, INCLUDEDIR, BINDIR, MANDIR,
#                             PKGCONFIGDIR and DESTDIR are honoured; the library and
#                             the command are stripped (STRIP= keeps the debug info);
#                             `ldconfig` runs only as root, without DESTDIR, for a LIBDIR
#                             the loader already searches (scripts/install.sh)
#   make install-debug        install, plus the debug info as LIBDIR/.debug/*.debug and
#                             BINDIR/.debug/unilock.debug (found by gdb)
#   make install-strip        install, stripped (GNU's name; the default anyway)
#   make uninstall            removes what install and install-debug installed, and the
#                             directories they created once empty (same variables)
#   make check                fmt, clippy, cargo test, then the C checks
#   make faults               every injected system call failure x every errno
#   make bench                the benchmarks, into BENCHMARKS.md and docs/ (scripts/bench.sh)
#   make bench-etcd           the ETCD backend's part of them alone, against a private
#                             etcd, into target/bench/etcd.md (scripts/bench-etcd.sh)
#   make python-dist          the Python sdist and manylinux wheel, into target/python-dist
#   make torture SECONDS=600  every torture scenario (tests/torture.rs) for that long each
#   make fuzz SECONDS=600     the fuzz tests with new seeds for SECONDS (default 60)
#   make deb                  the Debian packages into target/deb, checked by lintian
#   make check-deb            (root) installs them, uses them, removes them (scripts/check-deb.sh)
#
# Cargo decides what is stale: every target that needs the library goes through
# `make build`, whose cargo runs are no-ops when nothing changed. Everything built
# from the tree passes `--features capi` (the C API), so that one library build
# serves the command, the C library, the tests and the benchmarks.

PREFIX       ?= /usr/local
EXEC_PREFIX  ?= $(PREFIX)
LIBDIR       ?= $(EXEC_PREFIX)/lib
INCLUDEDIR   ?= $(PREFIX)/include
BINDIR       ?= $(EXEC_PREFIX)/bin
DATAROOTDIR  ?= $(PREFIX)/share
MANDIR       ?= $(DATAROOTDIR)/man
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
BASHCOMPDIR  ?= $(DATAROOTDIR)/bash-completion/completions
ZSHCOMPDIR   ?= $(DATAROOTDIR)/zsh/site-functions
DESTDIR      ?=

CARGO        ?= cargo
CARGOFLAGS   ?=
CC           ?= cc
LDFLAGS      ?=
INSTALL      ?= install
LN_S         ?= ln -sf
# The installed library and command are stripped (--strip-unneeded, with a
# .gnu_debuglink), the archive loses its debug sections; STRIP= installs them as built.
STRIP        ?= strip
OBJCOPY      ?= objcopy
# Refreshes the loader cache after installing into the live system as root, only
# for a LIBDIR the loader searches; LDCONFIG= skips it.
LDCONFIG     ?= ldconfig

VERSION      := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
MAJOR        := $(word 1,$(subst ., ,$(VERSION)))

TARGET_DIR   := $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)
RELEASE_DIR  := $(TARGET_DIR)/release
SO_FILE      := $(RELEASE_DIR)/libunilock.so
A_FILE       := $(RELEASE_DIR)/libunilock.a
BIN_FILE     := $(RELEASE_DIR)/unilock
PC_FILE      := $(TARGET_DIR)/unilock.pc
# libunilock.a, with the rest dynamic: `pkg-config --libs unilock-static`.
PC_STATIC    := $(TARGET_DIR)/unilock-static.pc
HEADER       := include/unilock.h

SO_REAL      := libunilock.so.$(VERSION)
SO_NAME      := libunilock.so.$(MAJOR)
VERSION_MAP  := unilock.map
# What the Rust runtime in libunilock.a needs from the system (rustc's
# native-static-libs), kept in one place: the .pc file's Libs.private.
NATIVE_LIBS  := $(shell sed -n 's/^Libs.private: *//p' unilock.pc.in)

# The .pc file says ${prefix}/... when a directory lies under PREFIX.
pc_dir = $(patsubst $(PREFIX)/%,$${prefix}/%,$(1))

.PHONY: all build install install-debug install-strip uninstall check check-python check-go python-dist faults torture fuzz bench bench-etcd bench-bindings deb check-deb clean FORCE

all: build $(PC_FILE)

# The C library is the crate built with its `capi` feature; a Rust dependent of the
# crate builds neither it nor the .so. The command is built with the feature too, so
# that `cargo test --release --features capi` (make check) reuses the same library
# build. Then the static library, and the shared library linked from it here rather
# than by rustc: rustc gives a cdylib its own version script, which leaves the
# exports unversioned; this link gives them the versions of unilock.map and the
# SONAME. In-tree users (the Go binding's tests, the examples run from the tree) load
# libunilock.so.MAJOR through the link made last.
build:
	$(CARGO) build --release --features capi $(CARGOFLAGS)
	$(CARGO) rustc --release --lib --features capi --crate-type staticlib $(CARGOFLAGS)
	@if [ ! -e $(SO_FILE) ] || [ $(A_FILE) -nt $(SO_FILE) ] || \
	    [ $(VERSION_MAP) -nt $(SO_FILE) ] || [ Makefile -nt $(SO_FILE) ]; then \
	    echo "$(CC) -shared -o $(SO_FILE) ... $(A_FILE) -Wl,--version-script=$(VERSION_MAP)"; \
	    $(CC) -shared -o $(SO_FILE).tmp \
	        -Wl,--whole-archive $(A_FILE) -Wl,--no-whole-archive \
	        -Wl,--version-script=$(VERSION_MAP) -Wl,-soname,$(SO_NAME) \
	        -Wl,--gc-sections -Wl,-z,defs -Wl,-z,relro,-z,now -Wl,-z,noexecstack \
	        -Wl,--as-needed $(LDFLAGS) $(NATIVE_LIBS) && \
	    mv -f $(SO_FILE).tmp $(SO_FILE); \
	fi
	@$(LN_S) libunilock.so $(RELEASE_DIR)/$(SO_NAME)

# Regenerated on every run (the prefix may differ between `make` and
# `make install PREFIX=...`), but rewritten only when its text changes.
$(TARGET_DIR)/%.pc: %.pc.in Cargo.toml FORCE
	@mkdir -p $(TARGET_DIR)
	@sed -e 's|@PREFIX@|$(PREFIX)|g' \
	     -e 's|@LIBDIR@|$(call pc_dir,$(LIBDIR))|g' \
	     -e 's|@INCLUDEDIR@|$(call pc_dir,$(INCLUDEDIR))|g' \
	     -e 's|@VERSION@|$(VERSION)|g' \
	     $< > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv -f $@.tmp $@; echo "generated $@"; fi

FORCE:

# The files and what is done with them: scripts/install.sh (its header says it all).
INSTALL_ENV = DESTDIR='$(DESTDIR)' LIBDIR='$(LIBDIR)' INCLUDEDIR='$(INCLUDEDIR)' \
	BINDIR='$(BINDIR)' MANDIR='$(MANDIR)' PKGCONFIGDIR='$(PKGCONFIGDIR)' VERSION='$(VERSION)' \
	BASHCOMPDIR='$(BASHCOMPDIR)' ZSHCOMPDIR='$(ZSHCOMPDIR)' \
	SO_FILE='$(SO_FILE)' A_FILE='$(A_FILE)' BIN_FILE='$(BIN_FILE)' HEADER='$(HEADER)' \
	PC_FILES='$(PC_FILE) $(PC_STATIC)' MAN_PAGES='$(wildcard man/*.[1-9])' \
	INSTALL='$(INSTALL)' STRIP='$(STRIP)' OBJCOPY='$(OBJCOPY)' LDCONFIG='$(LDCONFIG)' \
	STATE_DIR='$(TARGET_DIR)'

install: all $(PC_STATIC)
	@$(INSTALL_ENV) bash scripts/install.sh install

install-debug: all $(PC_STATIC)
	@$(INSTALL_ENV) bash scripts/install.sh install-debug

# GNU's install-strip: install, stripped even when STRIP is empty.
install-strip:
	$(MAKE) install STRIP='$(or $(STRIP),strip)'

uninstall:
	@$(INSTALL_ENV) bash scripts/install.sh uninstall

# One release build; clippy and rustdoc (broken links in the docs fail) check, and
# `cargo test --release` reuses the release artifacts. The waiting tests run again with
# OFD and POSIX waits on waiter children (UNILOCK_WAITER=child), as where io_uring is
# refused. scripts/check-c.sh installs into a temporary DESTDIR.
check: all
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets --all-features $(CARGOFLAGS) -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --document-private-items --features capi $(CARGOFLAGS)
	$(CARGO) test --release --features capi $(CARGOFLAGS)
	UNILOCK_WAITER=child $(CARGO) test --release --features capi $(CARGOFLAGS) --test waiters --test signals --test fork --test model
	$(CARGO) test --features fault-injection --test faults $(CARGOFLAGS)
	MAKE="$(MAKE)" CARGO="$(CARGO)" scripts/check-c.sh
	scripts/check-readme-c.sh
	scripts/check-docs.sh
	bindings/python/run-tests.sh
	bindings/go/run-tests.sh

# Fault injection, every errno at every system call of the scenarios (the short form,
# a rotating subset of errnos, runs in `make check`).
faults:
	UNILOCK_FAULT_ERRNOS=all $(CARGO) test --features fault-injection --test faults $(CARGOFLAGS) -- --nocapture

# The bindings' tests alone (after a build).
check-python: build
	bindings/python/run-tests.sh

check-go: build
	bindings/go/run-tests.sh

# The Python package's release files: the sdist and the wheel (which carries the library),
# repaired by auditwheel to a manylinux tag (bindings/python/build-dist.sh).
python-dist:
	bindings/python/build-dist.sh

# The bindings against what their users use today (gofrs/flock's syscalls, filelock).
bench-bindings: build
	bash bindings/bench.sh

# Runs the benchmarks once and writes BENCHMARKS.md and docs/bench-*.svg
# (scripts/bench.sh, which runs scripts/bench-etcd.sh for section 7); the wall time
# it reports starts here, building included.
bench:
	@BENCH_STARTED_NS=$$(date +%s%N); export BENCH_STARTED_NS; \
	$(MAKE) --no-print-directory build && bash scripts/bench.sh

# Section 7 of `make bench` alone, for iterating on the ETCD backend (about 40 s):
# prints the tables and writes target/bench/etcd.md and etcd.json; BENCHMARKS.md is
# left as it is.
bench-etcd: build
	CARGO="$(CARGO)" CARGOFLAGS="$(CARGOFLAGS)" CC="$(CC)" bash scripts/bench-etcd.sh

# Seconds per scenario: SECONDS on the command line only (bash exports its own SECONDS
# when asked to), else UNILOCK_TORTURE_SECONDS, else 60. `make check` runs the short form.
TORTURE_SECONDS = $(if $(filter command line,$(origin SECONDS)),$(SECONDS),$(or $(UNILOCK_TORTURE_SECONDS),60))

torture:
	UNILOCK_TORTURE_SECONDS=$(TORTURE_SECONDS) $(CARGO) test --release --features capi $(CARGOFLAGS) --test torture -- --test-threads=1 --nocapture

# The seeded fuzz tests (src/fuzz_tests.rs, tests/fuzz_api.rs; `make check` runs them
# briefly), each drawing new seeds until SECONDS have passed, the two test programs at
# once. Only a SECONDS given on make's command line counts, not one in the environment
# (bash's own counter, when exported).
FUZZ_SECONDS := $(if $(filter command line,$(origin SECONDS)),$(SECONDS),60)

fuzz:
	$(CARGO) test --release --features capi $(CARGOFLAGS) --no-run --lib --test fuzz_api
	@UNILOCK_FUZZ_SECONDS='$(FUZZ_SECONDS)'; export UNILOCK_FUZZ_SECONDS; \
	$(CARGO) test --release --features capi $(CARGOFLAGS) --lib fuzz_tests -- --test-threads=16 --nocapture & lib=$$!; \
	$(CARGO) test --release --features capi $(CARGOFLAGS) --test fuzz_api -- --test-threads=16 --nocapture & api=$$!; \
	wait $$lib; lib=$$?; wait $$api; api=$$?; test $$lib = 0 && test $$api = 0

# Debian packages (debian/), built in this tree and written to $(DEB_DIR): nothing is
# left in the parent directory, where dpkg-buildpackage writes by default. The Rust
# toolchain is the cargo on PATH (debian/README.source). debian/rules sets every
# directory itself; MAKEFLAGS is not passed down.
DEB_DIR      := $(TARGET_DIR)/deb
DEB_OUT       = $(abspath $(DEB_DIR))
DEB_CHANGES   = $(DEB_OUT)/unilock_$(VERSION)_$(shell dpkg-architecture -qDEB_HOST_ARCH).changes

deb: debian/changelog
	rm -rf $(DEB_DIR)
	mkdir -p $(DEB_DIR)
	env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES UNILOCK_DEB_DIR=$(DEB_OUT) \
	    dpkg-buildpackage -us -uc -b --post-clean \
	    --buildinfo-option=-u$(DEB_OUT) --buildinfo-file=$(basename $(DEB_CHANGES)).buildinfo \
	    --changes-option=-u$(DEB_OUT) --changes-file=$(DEB_CHANGES)
	lintian --fail-on error --info --display-info $(DEB_CHANGES)

# debian/changelog carries Cargo.toml's version (bumped there only) and the date of
# the last commit; rewritten only when its text changes.
debian/changelog: Cargo.toml FORCE
	@{ printf 'unilock (%s) unstable; urgency=medium\n\n' '$(VERSION)'; \
	   printf '  * Release %s; CHANGELOG.md lists the changes.\n\n' '$(VERSION)'; \
	   printf ' -- %s  %s\n' "$$(sed -n 's/^Maintainer: //p' debian/control)" \
	       "$$(git log -1 --format=%cD 2>/dev/null || date -R -r Cargo.toml)"; } > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv -f $@.tmp $@; echo "generated $@"; fi

# As root, on a machine without unilock installed: not part of `make check` (.ci/run
# runs it after).
check-deb:
	MAKE="$(MAKE)" scripts/check-deb.sh

clean:
	$(CARGO) clean
