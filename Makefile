# unilock: build, install and check the C system library (GNU make).
#
#   make                      the command, libunilock.a and libunilock.so (see build),
#                             then target/unilock.pc
#   make install              PREFIX, LIBDIR, INCLUDEDIR, BINDIR, MANDIR,
#                             PKGCONFIGDIR and DESTDIR are honoured
#   make check                fmt, clippy, cargo test, then the C checks
#   make faults               every injected system call failure x every errno
#   make bench                the benchmarks, into BENCHMARKS.md and docs/ (scripts/bench.sh)
#   make torture SECONDS=600  every torture scenario (tests/torture.rs) for that long each
#   make fuzz SECONDS=600     the fuzz tests with new seeds for SECONDS (default 60)
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
DESTDIR      ?=

CARGO        ?= cargo
CARGOFLAGS   ?=
CC           ?= cc
LDFLAGS      ?=
INSTALL      ?= install
LN_S         ?= ln -sf
# Run after installing into the live system (not with DESTDIR); LDCONFIG= skips it.
LDCONFIG     ?= ldconfig

VERSION      := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
MAJOR        := $(word 1,$(subst ., ,$(VERSION)))

TARGET_DIR   := $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)
RELEASE_DIR  := $(TARGET_DIR)/release
SO_FILE      := $(RELEASE_DIR)/libunilock.so
A_FILE       := $(RELEASE_DIR)/libunilock.a
BIN_FILE     := $(RELEASE_DIR)/unilock
PC_FILE      := $(TARGET_DIR)/unilock.pc
HEADER       := include/unilock.h

SO_REAL      := libunilock.so.$(VERSION)
SO_NAME      := libunilock.so.$(MAJOR)
VERSION_MAP  := unilock.map
# What the Rust runtime in libunilock.a needs from the system (rustc's
# native-static-libs), kept in one place: the .pc file's Libs.private.
NATIVE_LIBS  := $(shell sed -n 's/^Libs.private: *//p' unilock.pc.in)

# The .pc file says ${prefix}/... when a directory lies under PREFIX.
pc_dir = $(patsubst $(PREFIX)/%,$${prefix}/%,$(1))

.PHONY: all build install install-strip uninstall check check-python check-go faults torture fuzz bench bench-bindings clean FORCE

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
$(PC_FILE): unilock.pc.in Cargo.toml FORCE
	@mkdir -p $(TARGET_DIR)
	@sed -e 's|@PREFIX@|$(PREFIX)|g' \
	     -e 's|@LIBDIR@|$(call pc_dir,$(LIBDIR))|g' \
	     -e 's|@INCLUDEDIR@|$(call pc_dir,$(INCLUDEDIR))|g' \
	     -e 's|@VERSION@|$(VERSION)|g' \
	     unilock.pc.in > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv -f $@.tmp $@; echo "generated $@"; fi

FORCE:

install: all
	$(INSTALL) -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
	$(INSTALL) -m 0755 $(INSTALL_STRIP) $(SO_FILE) $(DESTDIR)$(LIBDIR)/$(SO_REAL)
	$(LN_S) $(SO_REAL) $(DESTDIR)$(LIBDIR)/$(SO_NAME)
	$(LN_S) $(SO_NAME) $(DESTDIR)$(LIBDIR)/libunilock.so
	$(INSTALL) -m 0644 $(A_FILE) $(DESTDIR)$(LIBDIR)/libunilock.a
	$(INSTALL) -m 0644 $(HEADER) $(DESTDIR)$(INCLUDEDIR)/unilock.h
	$(INSTALL) -m 0644 $(PC_FILE) $(DESTDIR)$(PKGCONFIGDIR)/unilock.pc
	@if [ -f $(BIN_FILE) ]; then \
	    echo "$(INSTALL) -m 0755 $(INSTALL_STRIP) $(BIN_FILE) $(DESTDIR)$(BINDIR)/unilock"; \
	    $(INSTALL) -d $(DESTDIR)$(BINDIR) && \
	    $(INSTALL) -m 0755 $(INSTALL_STRIP) $(BIN_FILE) $(DESTDIR)$(BINDIR)/unilock; \
	fi
	@for page in man/*.[1-9]; do \
	    [ -f "$$page" ] || continue; \
	    section=$${page##*.}; \
	    echo "$(INSTALL) -m 0644 $$page $(DESTDIR)$(MANDIR)/man$$section/"; \
	    $(INSTALL) -d $(DESTDIR)$(MANDIR)/man$$section && \
	    $(INSTALL) -m 0644 "$$page" $(DESTDIR)$(MANDIR)/man$$section/ || exit 1; \
	done
	@if [ -z "$(DESTDIR)" ] && [ -n "$(LDCONFIG)" ] && [ "$$(id -u)" = 0 ] && command -v $(LDCONFIG) >/dev/null; then \
	    echo "$(LDCONFIG) $(LIBDIR)"; $(LDCONFIG) $(LIBDIR) || true; \
	fi

# GNU's install-strip: strips the shared library and the command (never the .a).
install-strip:
	$(MAKE) INSTALL_STRIP=-s install

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libunilock.so $(DESTDIR)$(LIBDIR)/$(SO_NAME) \
	      $(DESTDIR)$(LIBDIR)/$(SO_REAL) $(DESTDIR)$(LIBDIR)/libunilock.a \
	      $(DESTDIR)$(INCLUDEDIR)/unilock.h $(DESTDIR)$(PKGCONFIGDIR)/unilock.pc \
	      $(DESTDIR)$(BINDIR)/unilock
	@for page in man/*.[1-9]; do \
	    [ -f "$$page" ] || continue; \
	    section=$${page##*.}; \
	    echo "rm -f $(DESTDIR)$(MANDIR)/man$$section/$${page##*/}"; \
	    rm -f $(DESTDIR)$(MANDIR)/man$$section/$${page##*/}; \
	done

# One release build; clippy and rustdoc (broken links in the docs fail) check, and
# `cargo test --release` reuses the release artifacts. scripts/check-c.sh installs into a temporary DESTDIR.
check: all
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets --all-features $(CARGOFLAGS) -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --document-private-items --features capi $(CARGOFLAGS)
	$(CARGO) test --release --features capi $(CARGOFLAGS)
	$(CARGO) test --features fault-injection --test faults $(CARGOFLAGS)
	MAKE="$(MAKE)" CARGO="$(CARGO)" scripts/check-c.sh
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

# The bindings against what their users use today (gofrs/flock's syscalls, filelock).
bench-bindings: build
	bash bindings/bench.sh

# Runs the benchmarks once and writes BENCHMARKS.md and docs/bench-*.svg
# (scripts/bench.sh); the wall time it reports starts here, building included.
bench:
	@BENCH_STARTED_NS=$$(date +%s%N); export BENCH_STARTED_NS; \
	$(MAKE) --no-print-directory build && bash scripts/bench.sh

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

clean:
	$(CARGO) clean
