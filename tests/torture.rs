//! Torture: worker processes × threads lock one file at random through one backend
//! (or a set of them, or with FAIR or UNLINK) per scenario while the test SIGKILLs
//! workers; a shared-memory log of who holds what checks, at every grant, that an
//! exclusive holder is alone and a shared holder shares with shared holders only.
//!
//! # Running
//!
//! Each `#[test]` is one scenario and runs for `UNILOCK_TORTURE_SECONDS` (2 by default,
//! fractions allowed: the whole file takes about half a minute in `cargo test
//! --release`); `make torture SECONDS=600` runs every scenario for ten minutes.
//! `UNILOCK_TORTURE_SEED` replays the random choices of a seed printed by a failure (the
//! interleaving is the scheduler's). Scenarios run one at a time: each counts the test
//! process's descriptors and children.
//!
//! # Workers
//!
//! A scenario re-runs this test binary as [`WORKERS`] worker processes (the
//! `torture_worker` test, selected by `UNILOCK_TORTURE_WORKER`). Each runs [`THREADS`]
//! threads, each with its own handle, looping at random over: lock (try, timed 1-20 ms,
//! or forever, cancelled by the worker's canceller thread 1-30 ms later), shared or
//! exclusive, on random byte ranges of a [`REGION`]-byte region (OFD, POSIX) so that
//! overlaps are frequent; conversions (re-locking a held run in the other mode); unlock
//! of part or all; query; list; close and reopen of the handle (5%); a `fork()`ed child
//! that locks through a handle of its own and exits (1%); and, whenever the handle holds
//! everything exclusively (it also asks for that now and then), an increment of a shared
//! counter (read, pause, write). The canceller also cancels waits at random. The C API
//! scenario adds closes of a handle while another thread waits on it. In the DOTLOCK
//! scenarios the test process holds a flock on the lock file for a second or two now and
//! then, as any reader of the lock file may. Meanwhile the test process kills a worker
//! every 40-240 ms (one that holds a lock, one that waits, or any) and starts another.
//!
//! # The enter/exit log
//!
//! The shared memory has one *row* per thread (and one per worker for its fork child)
//! holding, per *slot* (each byte of the region, and one slot for the bytes from the end
//! of the region to infinity), the mode that the row's handle holds there as recorded.
//! A row records a slot only while its handle holds at least that much: it *enters* a
//! mode after the lock call granted it, and lowers the record (exits) before any call
//! that may release it. During a conversion it records the weaker of the two modes: an
//! atomic upgrade (OFD, POSIX) stays shared until granted, a downgrade records shared
//! before the call; a FLOCK conversion (also in a set), which the kernel does not make
//! atomically, records nothing during the call. Entering checks every other row under a
//! per-slot spin lock in the shared memory: exclusive needs no other holder, shared no
//! exclusive one; anything else is a violation, logged with what both rows were doing.
//!
//! # Killed workers
//!
//! The kernel releases a killed worker's locks as it dies, before the test can clear its
//! rows, so a new holder may enter while the dead worker's records are still there. The
//! test therefore marks a worker *kill pending* in the shared memory before it sends
//! SIGKILL, reaps it, waits for its fork child (which dies with it: `PR_SET_PDEATHSIG`),
//! clears its rows and the spin locks it held, and only then clears the mark and starts
//! a new worker in its place. A conflict with a row whose worker is kill pending, or whose
//! process is gone or a zombie (a worker that crashed), is stale: the entering thread lets
//! go of the spin lock and looks again until the row is cleared. The price: a violation
//! against a worker in the middle of being killed goes unseen.
//!
//! The counter's lost updates are counted the same way: a worker killed between its
//! write and its count of the increment leaves the counter one ahead, so the test counts
//! the kills that landed inside the counter section (a per-row flag).
//!
//! # What a scenario asserts
//!
//! - no violation, and no lost update: increments ≤ counter ≤ increments + kills inside
//!   the counter section;
//! - every lock call ends as documented: `EAGAIN` only for a try, `ETIMEDOUT` only for a
//!   timed call, never early nor more than [`LATE`] after the deadline, `ECANCELED` only
//!   when a cancel was made during the call and within [`LATE`] of the watcher's deadline,
//!   `EDEADLK` only for a wait, `ENOLCK` only for a FLOCK upgrade; every unlock and close
//!   returns within [`RELEASE_BOUND`]; nothing else fails;
//! - no call outlives its bound, as the test process sees in the rows (so that a kill
//!   cannot hide it): an unlock or a close [`RELEASE_BOUND`], a lock its timeout (or its
//!   cancel) plus [`LATE`], a lock on a handle being closed or anything else [`OP_BOUND`];
//!   no period of [`STALL_BOUND`] passes without a grant; every worker exits within
//!   [`JOIN_BOUND`] of the stop with its descriptors and children back to where they were
//!   when it started, and every fork child exits within [`FORK_BOUND`];
//! - afterwards no lock is left on the file (a fresh handle lists none but stale DOTLOCK
//!   files, and takes the file exclusively), no stray file is left next to it (DOTLOCK
//!   temporary files, lock files), and the test process has the descriptors and children
//!   it had before.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Shm, TempDir};
use unilock::{Backend, Flags, Lock, Mode, Options, capi};

/// Worker processes per scenario.
const WORKERS: usize = 4;
/// Threads per worker.
const THREADS: usize = 3;
/// Rows of the log: one per thread, and one per worker for its fork child.
const ROWS: usize = WORKERS * (THREADS + 1);
/// Bytes of the file that ranges are drawn from.
const REGION: u64 = 12;
/// One slot per byte of the region, and one for the bytes from `REGION` on.
const SLOTS: usize = REGION as usize + 1;

/// Default length of a scenario, in seconds.
const DEFAULT_SECONDS: f64 = 2.0;
/// Unlock and close return within this (SPEC: releases never block indefinitely).
const RELEASE_BOUND: Duration = Duration::from_secs(1);
/// How late a timed or cancelled wait may end.
const LATE: Duration = Duration::from_secs(1);
/// A thread in one call for this long is stuck.
const OP_BOUND: Duration = Duration::from_secs(5);
/// No grant for this long while the workers run: the lock is wedged.
const STALL_BOUND: Duration = Duration::from_secs(5);
/// Workers exit within this after the stop.
const JOIN_BOUND: Duration = Duration::from_secs(10);
/// A fork child exits within this.
const FORK_BOUND: Duration = Duration::from_secs(5);
/// A lock call still blocked this long after the close of its handle returned is stuck.
const CLOSE_WAIT_BOUND: Duration = Duration::from_secs(2);
/// The final check takes the lock within this.
const FINAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The test kills a worker every this many milliseconds (uniformly drawn).
const KILL_EVERY_MS: (u64, u64) = (40, 240);

/// Problems listed in a failure message (the rest are counted).
const MAX_PROBLEMS: usize = 30;

/// The environment variable that turns this test binary into a worker.
const WORKER_ENV: &str = "UNILOCK_TORTURE_WORKER";

// ---------------------------------------------------------------------------------
// Scenarios

#[derive(Clone, Copy, Debug, PartialEq)]
enum Api {
    /// `unilock::Lock`.
    Rust,
    /// The C entry points (`unilock_open`, `unilock_lock`, ...).
    C,
}

/// One torture scenario: how handles are opened and which extra operations run.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    name: &'static str,
    backends: u32,
    flags: Flags,
    api: Api,
    /// Threads fork children that lock through handles of their own.
    fork: bool,
    /// Threads close a handle from another thread while waiting on it (C API).
    close_during_wait: bool,
    /// The test process holds a flock on the DOTLOCK lock file now and then.
    interloper: bool,
}

const FLOCK: u32 = Backend::Flock as u32;
const OFD: u32 = Backend::Ofd as u32;
const POSIX: u32 = Backend::Posix as u32;
const DOTLOCK: u32 = Backend::Dotlock as u32;

const fn scenario(name: &'static str, backends: u32, flags: Flags) -> Scenario {
    Scenario {
        name,
        backends,
        flags,
        api: Api::Rust,
        fork: true,
        close_during_wait: false,
        interloper: backends & DOTLOCK != 0,
    }
}

const SCENARIOS: &[Scenario] = &[
    scenario("flock", FLOCK, Flags::empty()),
    scenario("ofd", OFD, Flags::empty()),
    scenario("posix", POSIX, Flags::empty()),
    scenario("dotlock", DOTLOCK, Flags::empty()),
    scenario("fair_flock", FLOCK, Flags::FAIR),
    scenario("fair_ofd", OFD, Flags::FAIR),
    scenario("fair_posix", POSIX, Flags::FAIR),
    scenario(
        "set_dotlock_flock_ofd",
        DOTLOCK | FLOCK | OFD,
        Flags::empty(),
    ),
    scenario("set_flock_ofd", FLOCK | OFD, Flags::empty()),
    scenario("unlink_flock", FLOCK, Flags::UNLINK),
    scenario("unlink_ofd", OFD, Flags::UNLINK),
    Scenario {
        api: Api::C,
        close_during_wait: true,
        ..scenario("capi_ofd_close_during_wait", OFD, Flags::empty())
    },
];

impl Scenario {
    fn named(name: &str) -> Scenario {
        *SCENARIOS
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no torture scenario {name}"))
    }

    fn options(&self) -> Options {
        Options::new()
            .backends(common::backends_of(self.backends))
            .flags(Flags::CREATE | self.flags)
    }

    /// Byte ranges (OFD or POSIX alone).
    fn ranges(&self) -> bool {
        self.backends & (FLOCK | DOTLOCK) == 0
    }

    /// Shared locks (no DOTLOCK).
    fn shared(&self) -> bool {
        self.backends & DOTLOCK == 0
    }

    /// Conversions are not atomic (FLOCK is part of the handle).
    fn nonatomic_conversions(&self) -> bool {
        self.backends & FLOCK != 0
    }

    fn is_set(&self) -> bool {
        self.backends.count_ones() > 1
    }

    /// The DOTLOCK lock file, if any.
    fn lock_file(&self, data: &Path) -> Option<PathBuf> {
        if self.backends == DOTLOCK {
            Some(data.to_path_buf())
        } else if self.backends & DOTLOCK != 0 {
            let mut p = data.as_os_str().to_owned();
            p.push(".lock");
            Some(PathBuf::from(p))
        } else {
            None
        }
    }

    /// The files that may be left in the lock directory once everyone is done.
    fn expected_files(&self) -> Vec<&'static str> {
        if self.backends == DOTLOCK || self.flags.contains(Flags::UNLINK) {
            vec![]
        } else {
            vec!["data"]
        }
    }
}

// ---------------------------------------------------------------------------------
// Time, randomness, /proc

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process.
fn now_ns() -> u64 {
    // SAFETY: clock_gettime fills the timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock and a pointer to a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn ms_since(t: u64) -> f64 {
    now_ns().saturating_sub(t) as f64 / 1e6
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xorshift64*.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(splitmix(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

fn base_seed() -> u64 {
    match std::env::var("UNILOCK_TORTURE_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("UNILOCK_TORTURE_SEED={s} is not a number"))
        }
        Err(_) => splitmix(now_ns() ^ (u64::from(std::process::id()) << 32)),
    }
}

fn seconds() -> f64 {
    match std::env::var("UNILOCK_TORTURE_SECONDS") {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| *v > 0.0)
            .unwrap_or_else(|| panic!("UNILOCK_TORTURE_SECONDS={s} is not a positive number")),
        _ => DEFAULT_SECONDS,
    }
}

fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// The state letter and the start time (in clock ticks since boot) of `/proc/PID/stat`;
/// None when the process is gone.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// Gone, or a zombie: its locks are released. Only for processes whose pid cannot be
/// reused meanwhile (children not yet reaped).
fn is_dead(pid: i32) -> bool {
    pid <= 0 || matches!(proc_stat(pid), None | Some(('Z' | 'X', _)))
}

/// `pid` is still the process that started at `start`, and not a zombie (pids are
/// reused quickly: every wait of the library starts a process).
fn alive_as(pid: i32, start: u64) -> bool {
    pid > 0
        && matches!(proc_stat(pid), Some((state, s)) if s == start && state != 'Z' && state != 'X')
}

/// SIGKILLs `pid` if it is still the process that started at `start` (through a pidfd,
/// so that the check and the kill name the same process).
fn kill_if_same(pid: i32, start: u64) {
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return;
    }
    // SAFETY: a descriptor we just opened.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if alive_as(pid, start) {
        // SAFETY: pidfd_send_signal on our pidfd, without a siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out.sort_unstable();
    out
}

/// [`fd_list`], looked at again for up to 100 ms while it differs from `before`: a
/// descriptor the C library opens for a moment (glibc's malloc reads
/// /proc/sys/vm/overcommit_memory when it gives memory back) is not a leak.
fn fd_list_settled(before: &[String]) -> Vec<String> {
    let mut now = fd_list();
    for _ in 0..20 {
        if now == before {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        now = fd_list();
    }
    now
}

/// This process's descriptors, each as "N -> target".
fn fd_list() -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let target = fs::read_link(e.path())
                        .map(|t| t.display().to_string())
                        .unwrap_or_else(|_| "?".into());
                    format!("{} -> {target}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    // The directory read above is one of them, under a number that may change.
    out.retain(|f| !f.ends_with(&format!("/proc/{}/fd", getpid())));
    out.sort();
    out
}

/// Where each thread of `pid` is: its name, state, wchan and the top of its kernel stack
/// (when readable).
fn task_hint(pid: i32) -> String {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("pid {pid}: no /proc entry");
    };
    for t in tasks.flatten() {
        let tid = t.file_name().to_string_lossy().into_owned();
        let base = format!("/proc/{pid}/task/{tid}");
        let read = |f: &str| fs::read_to_string(format!("{base}/{f}")).unwrap_or_default();
        let comm = read("comm").trim().to_string();
        let wchan = read("wchan").trim().to_string();
        let state = read("stat")
            .rsplit_once(')')
            .and_then(|(_, s)| s.split_whitespace().next().map(str::to_string))
            .unwrap_or_default();
        let stack: Vec<String> = read("stack")
            .lines()
            .take(4)
            .map(|l| l.split_whitespace().nth(1).unwrap_or(l).to_string())
            .collect();
        let stack = if stack.is_empty() {
            String::new()
        } else {
            format!(" stack {}", stack.join(" < "))
        };
        out.push(format!(
            "task {tid} ({comm}) state {state} wchan {wchan}{stack}"
        ));
    }
    out.join("; ")
}

/// The last `n` bytes of a file, as text.
fn tail(path: &Path, n: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let from = bytes.len().saturating_sub(n);
    String::from_utf8_lossy(&bytes[from..]).trim().to_string()
}

// ---------------------------------------------------------------------------------
// The shared memory

// Header words.
const H_STOP: usize = 0;
const H_COUNTER: usize = 1;
const H_INCREMENTS: usize = 2;
const H_VIOLATIONS: usize = 3;
const H_VIOLATIONS_LOGGED: usize = 4;
const H_FAILURES: usize = 5;
const H_MSG_NEXT: usize = 6;
const H_OPS: usize = 7;
const H_GRANTS: usize = 8;
const H_AGAIN: usize = 9;
const H_TIMEOUTS: usize = 10;
const H_CANCELLED: usize = 11;
const H_DEADLOCKS: usize = 12;
const H_ENOLCK: usize = 13;
const H_CLOSES: usize = 14;
const H_FORKS: usize = 15;
const H_QUERIES: usize = 16;
const H_LISTS: usize = 17;
const H_MAX_RELEASE_NS: usize = 18;
const H_LAST_GRANT: usize = 19;
const H_CONVERSIONS: usize = 20;
const H_UNLOCKS: usize = 21;
const H_CLOSES_DURING_WAIT: usize = 22;
const H_STALE_WAITS: usize = 23;
const H_FINAL_OK: usize = 24;
const H_VIOLATING_CALLS: usize = 25;
/// When the scenario started, and when the first violation was seen (CLOCK_MONOTONIC).
const H_STARTED: usize = 26;
const H_FIRST_VIOLATION: usize = 27;
const HEADER: usize = 32;

/// Logged messages: a length word (written last), then the text.
const MSGS: usize = 48;
const MSG_WORDS: usize = 96;
const MSG_BASE: usize = HEADER;
/// Violations logged in full (the rest are counted).
const VIOLATIONS_LOGGED: u64 = 12;

/// Per worker: kill pending, pid, time of its last close of a handle, of its last fork.
const W_KILL_PENDING: usize = 0;
const W_PID: usize = 1;
const W_LAST_CLOSE: usize = 2;
const W_LAST_FORK: usize = 3;
const WORKER_WORDS: usize = 4;
const WORKER_BASE: usize = MSG_BASE + MSGS * MSG_WORDS;

/// Per slot: the spin lock of its check-and-enter (0, or the holding row + 1).
const SLOT_LOCK_BASE: usize = WORKER_BASE + WORKERS * WORKER_WORDS;

/// Per row: the owner (fork rows: the child's pid), the operation in progress and when
/// it started, the counter-section flag, then the recorded mode per slot.
const R_OWNER: usize = 0;
const R_OP: usize = 1;
const R_OP_T: usize = 2;
const R_SECTION: usize = 3;
/// When the call whose violation was last logged started (one message per call).
const R_VIOLATION_T: usize = 4;
/// Fork rows: the start time of the child (`R_OWNER`), which tells it from a later
/// process with the same pid.
const R_OWNER_START: usize = 5;
const R_REC: usize = 8;
const ROW_WORDS: usize = R_REC + SLOTS;
const ROW_BASE: usize = SLOT_LOCK_BASE + SLOTS;
const WORDS: usize = ROW_BASE + ROWS * ROW_WORDS;

/// A fork row reserved by its worker, before the child has taken it.
const RESERVED: u64 = u64::MAX;

const NONE: u8 = 0;
const SH: u8 = Mode::Shared as u8;
const EX: u8 = Mode::Exclusive as u8;

fn mode_name(m: u64) -> &'static str {
    match m as u8 {
        NONE => "nothing",
        SH => "shared",
        _ => "exclusive",
    }
}

fn row_of(w: usize, t: usize) -> usize {
    w * (THREADS + 1) + t
}

fn row_name(row: usize) -> String {
    let (w, t) = (row / (THREADS + 1), row % (THREADS + 1));
    if t == THREADS {
        format!("worker {w}'s fork child")
    } else {
        format!("worker {w} thread {t}")
    }
}

/// Operations, as recorded in a row while in progress.
const OP_IDLE: u64 = 0;
const OP_LOCK: u64 = 1;
const OP_UNLOCK: u64 = 2;
const OP_QUERY: u64 = 3;
const OP_LIST: u64 = 4;
const OP_CLOSE: u64 = 5;
const OP_OPEN: u64 = 6;
const OP_FORK: u64 = 7;
const OP_CLOSE_DURING_WAIT: u64 = 8;

/// A lock call's timeout.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tmo {
    Try,
    Timed(u64),
    /// Forever, with a cancel this many milliseconds later.
    Forever(u64),
}

impl Tmo {
    fn encode(self) -> u64 {
        match self {
            Tmo::Try => 0,
            Tmo::Timed(ms) => 1 | ms << 2,
            Tmo::Forever(ms) => 2 | ms << 2,
        }
    }

    fn decode(v: u64) -> Tmo {
        match v & 3 {
            0 => Tmo::Try,
            1 => Tmo::Timed(v >> 2),
            _ => Tmo::Forever(v >> 2),
        }
    }

    fn timeout(self) -> Option<Duration> {
        match self {
            Tmo::Try => Some(Duration::ZERO),
            Tmo::Timed(ms) => Some(Duration::from_millis(ms)),
            Tmo::Forever(_) => None,
        }
    }

    fn describe(self) -> String {
        match self {
            Tmo::Try => "try".into(),
            Tmo::Timed(ms) => format!("timeout {ms} ms"),
            Tmo::Forever(ms) => format!("forever, cancelled after {ms} ms"),
        }
    }
}

fn op_word(code: u64, mode: u8, start: u64, len: u64, tmo: Tmo) -> u64 {
    code | u64::from(mode) << 8 | (start & 0xff) << 16 | (len & 0xff) << 24 | tmo.encode() << 32
}

fn range_text(start: u64, len: u64) -> String {
    match (start, len) {
        (0, 0) => "the whole file".into(),
        (s, 0) => format!("bytes {s}.."),
        (s, l) => format!("bytes {s}..{}", s + l),
    }
}

fn describe_op(word: u64) -> String {
    let code = word & 0xff;
    let mode = mode_name((word >> 8) & 0xff);
    let (start, len) = ((word >> 16) & 0xff, (word >> 24) & 0xff);
    let tmo = Tmo::decode(word >> 32);
    match code {
        OP_IDLE => "no call".into(),
        OP_LOCK => format!(
            "lock {mode} {} ({})",
            range_text(start, len),
            tmo.describe()
        ),
        OP_UNLOCK => format!("unlock {}", range_text(start, len)),
        OP_QUERY => "query".into(),
        OP_LIST => "list".into(),
        OP_CLOSE => "close".into(),
        OP_OPEN => "open".into(),
        OP_FORK => "waiting for its fork child".into(),
        OP_CLOSE_DURING_WAIT => "unilock_lock exclusive, forever, on a handle another \
                                 thread closes"
            .into(),
        _ => format!("op {code}"),
    }
}

/// How long a call may take before the test reports it as hanging; None: the thread
/// watches it itself (a fork child).
fn op_bound(op: u64) -> Option<Duration> {
    match op & 0xff {
        OP_IDLE | OP_FORK => None,
        OP_UNLOCK | OP_CLOSE => Some(RELEASE_BOUND),
        OP_LOCK => Some(match Tmo::decode(op >> 32) {
            Tmo::Try => LATE,
            Tmo::Timed(ms) | Tmo::Forever(ms) => Duration::from_millis(ms) + LATE,
        }),
        _ => Some(OP_BOUND),
    }
}

/// The slots a range covers.
fn slots_of(start: u64, len: u64) -> std::ops::Range<usize> {
    if len == 0 {
        start as usize..SLOTS
    } else {
        start as usize..(start + len) as usize
    }
}

/// The shared memory of one scenario.
struct Board {
    shm: Shm,
}

// SAFETY: the mapping is only accessed through atomics, and lives as long as the process.
unsafe impl Sync for Board {}
// SAFETY: as above.
unsafe impl Send for Board {}

impl Board {
    fn create(path: &Path) -> Board {
        Board {
            shm: Shm::create(path, WORDS),
        }
    }

    fn map(path: &Path) -> Board {
        Board {
            shm: Shm::map(path, WORDS),
        }
    }

    fn at(&self, i: usize) -> &AtomicU64 {
        self.shm.at(i)
    }

    fn get(&self, i: usize) -> u64 {
        self.shm.get(i)
    }

    fn set(&self, i: usize, v: u64) {
        self.shm.set(i, v)
    }

    fn bump(&self, i: usize) -> u64 {
        self.shm.bump(i)
    }

    fn stopping(&self) -> bool {
        self.get(H_STOP) != 0
    }

    fn worker(&self, w: usize, k: usize) -> &AtomicU64 {
        self.at(WORKER_BASE + w * WORKER_WORDS + k)
    }

    fn row(&self, row: usize, k: usize) -> &AtomicU64 {
        self.at(ROW_BASE + row * ROW_WORDS + k)
    }

    fn rec(&self, row: usize, slot: usize) -> &AtomicU64 {
        self.row(row, R_REC + slot)
    }

    fn slot_lock(&self, slot: usize) -> &AtomicU64 {
        self.at(SLOT_LOCK_BASE + slot)
    }

    /// Appends a message to the log (the first [`MSGS`] are kept).
    fn append(&self, text: &str) {
        let i = self.bump(H_MSG_NEXT) as usize;
        if i >= MSGS {
            return;
        }
        let base = MSG_BASE + i * MSG_WORDS;
        let mut n = text.len().min((MSG_WORDS - 1) * 8);
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        for (k, chunk) in text.as_bytes()[..n].chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.set(base + 1 + k, u64::from_le_bytes(b));
        }
        self.set(base, n as u64 | 1 << 63);
    }

    /// Counts a failed check and logs it.
    fn fail(&self, text: &str) {
        self.bump(H_FAILURES);
        self.append(text);
    }

    fn messages(&self) -> Vec<String> {
        let n = (self.get(H_MSG_NEXT) as usize).min(MSGS);
        (0..n)
            .filter_map(|i| {
                let base = MSG_BASE + i * MSG_WORDS;
                let head = self.get(base);
                if head & 1 << 63 == 0 {
                    return None;
                }
                let len = (head & !(1 << 63)) as usize;
                let mut bytes: Vec<u8> = (0..len.div_ceil(8))
                    .flat_map(|k| self.get(base + 1 + k).to_le_bytes())
                    .collect();
                bytes.truncate(len);
                Some(String::from_utf8_lossy(&bytes).into_owned())
            })
            .collect()
    }

    /// Takes the spin lock of `slot` for `row`.
    fn lock_slot(&self, row: usize, slot: usize) {
        let word = self.slot_lock(slot);
        let mut spins = 0u32;
        while word
            .compare_exchange(0, row as u64 + 1, SeqCst, SeqCst)
            .is_err()
        {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else if spins < 256 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    fn unlock_slot(&self, row: usize, slot: usize) {
        let _ = self
            .slot_lock(slot)
            .compare_exchange(row as u64 + 1, 0, SeqCst, SeqCst);
    }

    /// The process that owns `row`'s records.
    fn row_pid(&self, row: usize) -> i32 {
        if row % (THREADS + 1) == THREADS {
            match self.row(row, R_OWNER).load(SeqCst) {
                RESERVED => 0,
                pid => pid as i32,
            }
        } else {
            self.worker(row / (THREADS + 1), W_PID).load(SeqCst) as i32
        }
    }

    /// True when `row`'s records may outlive its locks: its worker is being killed, or
    /// its process is gone (a crash).
    fn stale(&self, row: usize) -> bool {
        if self
            .worker(row / (THREADS + 1), W_KILL_PENDING)
            .load(SeqCst)
            != 0
        {
            return true;
        }
        if row % (THREADS + 1) == THREADS {
            // A fork child is not the test process's child: its pid may be reused.
            let start = self.row(row, R_OWNER_START).load(SeqCst);
            !alive_as(self.row_pid(row), start)
        } else {
            // A worker's pid is not reused before the test process reaps it.
            is_dead(self.row_pid(row))
        }
    }

    /// Records that `row` now holds `new` on `slot`, after a grant: checks, with the
    /// record, that no other row conflicts.
    fn enter(&self, row: usize, slot: usize, new: u8, after: u64, granted: bool) {
        let started = Instant::now();
        let mut counted_stale = false;
        loop {
            self.lock_slot(row, slot);
            let mut live = None;
            let mut stale = false;
            for other in (0..ROWS).filter(|&r| r != row) {
                let m = self.rec(other, slot).load(SeqCst) as u8;
                if m == NONE || (m == SH && new == SH) {
                    continue;
                }
                if self.stale(other) {
                    stale = true;
                } else if live.is_none() {
                    live = Some((other, m));
                }
            }
            if let Some((other, m)) = live {
                self.rec(row, slot).store(u64::from(new), SeqCst);
                self.unlock_slot(row, slot);
                self.violation(row, slot, (new, after, granted), other, m);
                return;
            }
            if !stale || started.elapsed() > JOIN_BOUND {
                if stale {
                    self.fail(&format!(
                        "{}: a killed worker's record on slot {slot} was not cleared in {:?}",
                        row_name(row),
                        JOIN_BOUND
                    ));
                }
                self.rec(row, slot).store(u64::from(new), SeqCst);
                self.unlock_slot(row, slot);
                return;
            }
            self.unlock_slot(row, slot);
            if !counted_stale {
                counted_stale = true;
                self.bump(H_STALE_WAITS);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Lowers `row`'s record of `slot` to `new` before a call that may release it.
    fn exit(&self, row: usize, slot: usize, new: u8) {
        self.rec(row, slot).store(u64::from(new), SeqCst);
    }

    /// Logs a conflict of `row`, entering `new` after the call `after` (which granted it,
    /// or failed and left what the handle held), with `other`, which records `m`.
    fn violation(&self, row: usize, slot: usize, entry: (u8, u64, bool), other: usize, m: u8) {
        let (new, after, granted) = entry;
        self.bump(H_VIOLATIONS);
        let _ = self
            .at(H_FIRST_VIOLATION)
            .compare_exchange(0, now_ns(), SeqCst, SeqCst);
        let call = self.row(row, R_OP_T).load(SeqCst);
        if self.row(row, R_VIOLATION_T).swap(call, SeqCst) == call {
            return;
        }
        self.bump(H_VIOLATING_CALLS);
        if self.bump(H_VIOLATIONS_LOGGED) >= VIOLATIONS_LOGGED {
            return;
        }
        let since = |w: usize, k: usize| match self.worker(w, k).load(SeqCst) {
            0 => "never".to_string(),
            t => format!("{:.1} ms ago", ms_since(t)),
        };
        let (w, ow) = (row / (THREADS + 1), other / (THREADS + 1));
        let slot_text = if slot == SLOTS - 1 {
            format!("bytes {REGION}..")
        } else {
            format!("byte {slot}")
        };
        let how = if granted {
            format!(
                "was granted {} by `{}`",
                mode_name(u64::from(new)),
                describe_op(after)
            )
        } else {
            format!(
                "holds {} again after `{}` failed (leaving what the handle held)",
                mode_name(u64::from(new)),
                describe_op(after)
            )
        };
        let text = format!(
            "VIOLATION on {slot_text} (and maybe more bytes of the call): {} (pid {}) {how} while {} (pid {}) holds it {} (now \
             in `{}`); the entering process last closed a handle {}, forked {}; the holder's \
             process last closed a handle {}, forked {}",
            row_name(row),
            self.row_pid(row),
            row_name(other),
            self.row_pid(other),
            mode_name(u64::from(m)),
            describe_op(self.row(other, R_OP).load(SeqCst)),
            since(w, W_LAST_CLOSE),
            since(w, W_LAST_FORK),
            since(ow, W_LAST_CLOSE),
            since(ow, W_LAST_FORK),
        );
        self.append(&text);
    }

    /// Keeps the longest release seen; reports one over the bound.
    fn release_took(&self, what: &str, ns: u64) {
        self.at(H_MAX_RELEASE_NS).fetch_max(ns, SeqCst);
        if ns > RELEASE_BOUND.as_nanos() as u64 {
            self.fail(&format!(
                "{what} took {:.0} ms (a release must return within {:?})",
                ns as f64 / 1e6,
                RELEASE_BOUND
            ));
        }
    }
}

// ---------------------------------------------------------------------------------
// Handles: the Rust API or the C API

/// A failed call: its errno and message.
#[derive(Debug)]
struct Failure {
    errno: i32,
    text: String,
}

impl From<unilock::Error> for Failure {
    fn from(e: unilock::Error) -> Failure {
        Failure {
            errno: e.errno(),
            text: e.to_string(),
        }
    }
}

fn c_failure(rc: i32) -> Failure {
    // SAFETY: unilock_last_error returns a NUL-terminated string of this thread.
    let text = unsafe { std::ffi::CStr::from_ptr(capi::unilock_last_error()) };
    Failure {
        errno: -rc,
        text: text.to_string_lossy().into_owned(),
    }
}

fn c_result(rc: i32) -> Result<(), Failure> {
    if rc < 0 { Err(c_failure(rc)) } else { Ok(()) }
}

/// A pointer to a C handle, passed between threads.
#[derive(Clone, Copy)]
struct CPtr(*mut capi::unilock);

// SAFETY: C handles are thread-safe (SPEC: every call is thread-safe).
unsafe impl Send for CPtr {}
// SAFETY: as above.
unsafe impl Sync for CPtr {}

/// What query and list report of a holder.
struct Seen {
    mode: u32,
    pid: i32,
}

enum Handle {
    Rust(Box<Lock>),
    C(CPtr),
}

impl Handle {
    fn open(sc: &Scenario, path: &Path) -> Result<Handle, Failure> {
        let o = sc.options();
        match sc.api {
            Api::Rust => Ok(Handle::Rust(Box::new(Lock::open(path, &o)?))),
            Api::C => {
                let cpath = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
                let mut co = capi::unilock_options::default();
                // SAFETY: options structs are live locals.
                unsafe { capi::unilock_options_init(&mut co) };
                co.backends = sc.backends;
                co.flags = (Flags::CREATE | sc.flags).bits();
                let mut out = std::ptr::null_mut();
                // SAFETY: paths are NUL-terminated, options are whole structs, out pointers
                // are live locals.
                c_result(unsafe { capi::unilock_open(cpath.as_ptr(), &co, &mut out) })?;
                Ok(Handle::C(CPtr(out)))
            }
        }
    }

    fn lock(&self, mode: Mode, start: u64, len: u64, t: Option<Duration>) -> Result<(), Failure> {
        match self {
            Handle::Rust(l) => Ok(l.lock(mode, start, len, t)?),
            Handle::C(p) => {
                let ms = t.map_or(-1, |d| d.as_millis() as i64);
                // SAFETY: handles come from unilock_open (or are NULL, closed or foreign,
                // which the library checks before reading).
                c_result(unsafe { capi::unilock_lock(p.0, mode as u32, start, len, ms) })
            }
        }
    }

    fn unlock(&self, start: u64, len: u64) -> Result<(), Failure> {
        match self {
            Handle::Rust(l) => Ok(l.unlock(start, len)?),
            // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which
            // the library checks before reading).
            Handle::C(p) => c_result(unsafe { capi::unilock_unlock(p.0, start, len) }),
        }
    }

    fn query(&self, mode: Mode, start: u64, len: u64) -> Result<Option<Seen>, Failure> {
        match self {
            Handle::Rust(l) => Ok(l.query(mode, start, len)?.map(|h| Seen {
                mode: h.mode as u32,
                pid: h.pid,
            })),
            Handle::C(p) => {
                // SAFETY: plain data; all-zero bytes are valid.
                let mut who: capi::unilock_holder = unsafe { std::mem::zeroed() };
                // SAFETY: handles come from unilock_open (or are NULL, closed or foreign,
                // which the library checks before reading); holders are live locals.
                let rc = unsafe { capi::unilock_query(p.0, mode as u32, start, len, &mut who) };
                c_result(rc)?;
                Ok((rc == 1).then_some(Seen {
                    mode: who.mode,
                    pid: who.pid,
                }))
            }
        }
    }

    fn list(&self) -> Result<Vec<Seen>, Failure> {
        match self {
            Handle::Rust(l) => Ok(l
                .list()?
                .into_iter()
                .map(|h| Seen {
                    mode: h.mode as u32,
                    pid: h.pid,
                })
                .collect()),
            Handle::C(p) => {
                // SAFETY: plain data; all-zero bytes are valid.
                let mut buf: Vec<capi::unilock_holder> = vec![unsafe { std::mem::zeroed() }; 64];
                let mut count = 0usize;
                // SAFETY: handles come from unilock_open (or are NULL, closed or foreign,
                // which the library checks before reading); buffers have room for `cap`
                // holders and counts are live locals.
                c_result(unsafe {
                    capi::unilock_list(p.0, buf.as_mut_ptr(), buf.len(), &mut count)
                })?;
                buf.truncate(count);
                Ok(buf
                    .iter()
                    .map(|h| Seen {
                        mode: h.mode,
                        pid: h.pid,
                    })
                    .collect())
            }
        }
    }

    fn cancel(&self) {
        match self {
            Handle::Rust(l) => {
                l.cancel();
            }
            Handle::C(p) => {
                // SAFETY: handles come from unilock_open (or are NULL, closed or foreign,
                // which the library checks before reading).
                unsafe { capi::unilock_cancel(p.0) };
            }
        }
    }

    fn close(self) -> Result<(), Failure> {
        match self {
            Handle::Rust(l) => Ok(l.close()?),
            // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which
            // the library checks before reading).
            Handle::C(p) => c_result(unsafe { capi::unilock_close(p.0) }),
        }
    }
}

// ---------------------------------------------------------------------------------
// Workers

/// A thread's handle as its worker's canceller sees it.
#[derive(Default)]
struct Slot {
    handle: Mutex<Option<Arc<Handle>>>,
    /// When to cancel the thread's wait (CLOCK_MONOTONIC ns), 0 for never.
    cancel_at: AtomicU64,
    /// Cancels started and finished on this handle.
    cancels_started: AtomicU64,
    cancels_done: AtomicU64,
}

/// What every thread of a worker shares.
struct Ctx {
    board: Board,
    sc: Scenario,
    w: usize,
    data: PathBuf,
    pid: i32,
    slots: Vec<Slot>,
    /// A fork child is running (one at a time per worker).
    forking: AtomicBool,
    done: AtomicUsize,
}

/// One thread's (or fork child's) state.
struct Runner<'a> {
    ctx: &'a Ctx,
    row: usize,
    rng: Rng,
    handle: Option<Arc<Handle>>,
    /// The canceller's view of the handle; None in a fork child.
    slot: Option<&'a Slot>,
    /// What the handle holds, per slot.
    held: [u8; SLOTS],
    /// What the row records, per slot (never more than `held`).
    rec: [u8; SLOTS],
}

impl<'a> Runner<'a> {
    fn board(&self) -> &'a Board {
        &self.ctx.board
    }

    fn who(&self) -> String {
        format!("{} (pid {})", row_name(self.row), getpid())
    }

    fn fail(&self, text: &str) {
        self.board().fail(&format!("{}: {text}", self.who()));
    }

    fn release_took(&self, what: &str, ns: u64) {
        self.board()
            .release_took(&format!("{}: {what}", self.who()), ns);
    }

    fn set_op(&self, word: u64) {
        self.board().row(self.row, R_OP_T).store(now_ns(), SeqCst);
        self.board().row(self.row, R_OP).store(word, SeqCst);
    }

    fn clear_op(&self) {
        self.board().row(self.row, R_OP).store(OP_IDLE, SeqCst);
    }

    fn h(&self) -> &Handle {
        self.handle.as_deref().expect("a handle is open")
    }

    fn lower(&mut self, slot: usize, to: u8) {
        if to < self.rec[slot] {
            self.rec[slot] = to;
            self.board().exit(self.row, slot, to);
        }
    }

    /// Raises the records to what the handle holds (each entry checked) after the call
    /// `after`, which `granted` the lock or failed.
    fn sync(&mut self, after: u64, granted: bool) {
        for s in 0..SLOTS {
            let h = self.held[s];
            if h > self.rec[s] {
                self.rec[s] = h;
                self.board().enter(self.row, s, h, after, granted);
            } else if h < self.rec[s] {
                self.lower(s, h);
            }
        }
    }

    fn lower_all(&mut self) {
        for s in 0..SLOTS {
            self.lower(s, NONE);
        }
    }

    fn random_range(&mut self) -> (u64, u64) {
        if !self.ctx.sc.ranges() {
            return (0, 0);
        }
        match self.rng.below(100) {
            0..20 => (0, 0),
            20..35 => (self.rng.below(REGION), 0),
            _ => {
                let start = self.rng.below(REGION);
                let len = 1 + self.rng.below((REGION - start).min(6));
                (start, len)
            }
        }
    }

    fn random_mode(&mut self) -> Mode {
        if self.ctx.sc.shared() && self.rng.chance(500) {
            Mode::Shared
        } else {
            Mode::Exclusive
        }
    }

    fn random_tmo(&mut self, forever: bool) -> Tmo {
        match self.rng.below(100) {
            0..35 => Tmo::Try,
            35..80 => Tmo::Timed(self.rng.between(1, 20)),
            _ if forever => Tmo::Forever(self.rng.between(1, 30)),
            _ => Tmo::Timed(self.rng.between(1, 10)),
        }
    }

    /// One lock call, with its records and the checks of how it ended.
    fn op_lock(&mut self, mode: Mode, start: u64, len: u64, tmo: Tmo) {
        let m = mode as u8;
        let slots = slots_of(start, len);
        let nonatomic = self.ctx.sc.nonatomic_conversions();
        let upgrade = slots.clone().any(|s| self.held[s] == SH) && m == EX;
        let converts = slots
            .clone()
            .any(|s| self.held[s] != NONE && self.held[s] != m);
        for s in slots.clone() {
            let a = self.held[s];
            let during = if nonatomic && a != NONE && a != m {
                NONE
            } else {
                a.min(m)
            };
            self.lower(s, during);
        }
        let word = op_word(OP_LOCK, m, start, len, tmo);
        let cancels_before = self.slot.map_or(0, |s| s.cancels_done.load(SeqCst));
        if let (Tmo::Forever(ms), Some(slot)) = (tmo, self.slot) {
            slot.cancel_at.store(now_ns() + ms * 1_000_000, SeqCst);
        }
        self.set_op(word);
        let t0 = now_ns();
        let result = self.h().lock(mode, start, len, tmo.timeout());
        let t1 = now_ns();
        self.clear_op();
        let cancel_at = self.slot.map_or(0, |s| s.cancel_at.swap(0, SeqCst));
        let cancels_after = self.slot.map_or(0, |s| s.cancels_started.load(SeqCst));
        let board = self.board();
        board.bump(H_OPS);
        let granted = result.is_ok();
        match result {
            Ok(()) => {
                for s in slots {
                    self.held[s] = m;
                }
                board.bump(H_GRANTS);
                board.set(H_LAST_GRANT, t1);
                if converts {
                    board.bump(H_CONVERSIONS);
                }
            }
            Err(e) => {
                let what = format!("{} returned {}", describe_op(word), e.text);
                let took = Duration::from_nanos(t1 - t0);
                let late = |deadline: u64| t1.saturating_sub(deadline) > LATE.as_nanos() as u64;
                match e.errno {
                    libc::EAGAIN if tmo == Tmo::Try => {
                        board.bump(H_AGAIN);
                    }
                    libc::EAGAIN => self.fail(&format!("a blocking call answered EAGAIN: {what}")),
                    libc::ETIMEDOUT => {
                        board.bump(H_TIMEOUTS);
                        match tmo {
                            Tmo::Timed(ms)
                                if took + Duration::from_micros(200)
                                    < Duration::from_millis(ms) =>
                            {
                                self.fail(&format!("timed out early, after {took:?}: {what}"))
                            }
                            Tmo::Timed(ms) if late(t0 + ms * 1_000_000) => self.fail(&format!(
                                "timed out {:.0} ms after its deadline: {what}",
                                (t1 - t0 - ms * 1_000_000) as f64 / 1e6
                            )),
                            Tmo::Timed(_) => {}
                            _ => self.fail(&format!("ETIMEDOUT without a timeout: {what}")),
                        }
                    }
                    libc::ECANCELED => {
                        board.bump(H_CANCELLED);
                        if self.slot.is_some() && cancels_after == cancels_before {
                            self.fail(&format!(
                                "ECANCELED though no cancel was made during the call (a stale \
                                 cancel): {what}"
                            ));
                        }
                        if let Tmo::Forever(_) = tmo {
                            if cancel_at != 0 && late(cancel_at) {
                                self.fail(&format!(
                                    "the cancel took {:.0} ms to end the wait: {what}",
                                    (t1 - cancel_at) as f64 / 1e6
                                ));
                            }
                        }
                    }
                    libc::EDEADLK if tmo != Tmo::Try => {
                        board.bump(H_DEADLOCKS);
                    }
                    libc::ENOLCK if upgrade && nonatomic => {
                        board.bump(H_ENOLCK);
                        // The handle lost what it held (a set: find out by releasing it).
                        if self.ctx.sc.is_set() {
                            self.release_everything();
                        }
                        self.held = [NONE; SLOTS];
                    }
                    _ => {
                        self.fail(&format!("unexpected error: {what}"));
                        self.release_everything();
                        self.held = [NONE; SLOTS];
                    }
                }
            }
        }
        self.sync(word, granted);
    }

    /// Unlocks everything the handle may hold, checking the call.
    fn release_everything(&mut self) {
        self.lower_all();
        let t0 = now_ns();
        let r = self.h().unlock(0, 0);
        self.release_took("unlock of the whole file", now_ns() - t0);
        if let Err(e) = r {
            self.fail(&format!("unlock of the whole file returned {}", e.text));
        }
        self.held = [NONE; SLOTS];
    }

    fn op_unlock(&mut self, start: u64, len: u64) {
        for s in slots_of(start, len) {
            self.lower(s, NONE);
        }
        let word = op_word(OP_UNLOCK, NONE, start, len, Tmo::Try);
        self.set_op(word);
        let t0 = now_ns();
        let r = self.h().unlock(start, len);
        let took = now_ns() - t0;
        self.clear_op();
        self.board().bump(H_UNLOCKS);
        self.release_took(&describe_op(word), took);
        match r {
            Ok(()) => {
                for s in slots_of(start, len) {
                    self.held[s] = NONE;
                }
            }
            Err(e) => {
                self.fail(&format!("{} returned {}", describe_op(word), e.text));
                self.release_everything();
            }
        }
    }

    /// Re-locks a run of held slots in the other mode (or the same, without shared locks).
    fn op_convert(&mut self) {
        let held: Vec<usize> = (0..SLOTS).filter(|&s| self.held[s] != NONE).collect();
        let s = held[self.rng.below(held.len() as u64) as usize];
        let m = self.held[s];
        let (mut a, mut b) = (s, s + 1);
        while a > 0 && self.held[a - 1] == m {
            a -= 1;
        }
        while b < SLOTS && self.held[b] == m {
            b += 1;
        }
        let (start, len) = if !self.ctx.sc.ranges() {
            (0, 0)
        } else if b == SLOTS {
            (a as u64, 0)
        } else {
            (a as u64, (b - a) as u64)
        };
        let mode = if self.ctx.sc.shared() && m == EX {
            Mode::Shared
        } else {
            Mode::Exclusive
        };
        let tmo = self.random_tmo(self.slot.is_some());
        self.op_lock(mode, start, len, tmo);
    }

    /// Read, pause, write: loses an update when two threads are inside at once.
    fn counter_section(&self) {
        let board = self.board();
        board.row(self.row, R_SECTION).store(1, SeqCst);
        let v = board.get(H_COUNTER);
        if self.rng.0 & 1 == 0 {
            std::thread::yield_now();
        } else {
            for _ in 0..200 {
                std::hint::spin_loop();
            }
        }
        board.set(H_COUNTER, v + 1);
        board.bump(H_INCREMENTS);
        board.row(self.row, R_SECTION).store(0, SeqCst);
    }

    fn holds_everything(&self) -> bool {
        self.held.iter().all(|&m| m == EX) && self.rec.iter().all(|&m| m == EX)
    }

    /// After a grant: hold a little, and increment the counter when holding everything.
    fn hold(&mut self) {
        if self.holds_everything() && self.rng.chance(600) {
            self.counter_section();
        }
        let us = self.rng.below(800);
        if us > 50 {
            std::thread::sleep(Duration::from_micros(us));
        }
    }

    /// Takes everything exclusively (timed), increments the counter, and releases.
    fn op_counter(&mut self) {
        let tmo = Tmo::Timed(self.rng.between(5, 50));
        self.op_lock(Mode::Exclusive, 0, 0, tmo);
        if self.holds_everything() {
            self.counter_section();
            self.op_unlock(0, 0);
        }
    }

    fn op_query(&mut self) {
        let mode = self.random_mode();
        let (start, len) = self.random_range();
        self.set_op(op_word(OP_QUERY, mode as u8, start, len, Tmo::Try));
        let r = self.h().query(mode, start, len);
        self.clear_op();
        self.board().bump(H_QUERIES);
        match r {
            Ok(None) => {}
            Ok(Some(seen)) => self.check_seen("query", &seen),
            Err(e) => self.fail(&format!(
                "query {} returned {}",
                range_text(start, len),
                e.text
            )),
        }
    }

    fn op_list(&mut self) {
        self.set_op(op_word(OP_LIST, NONE, 0, 0, Tmo::Try));
        let r = self.h().list();
        self.clear_op();
        self.board().bump(H_LISTS);
        match r {
            Ok(all) => all.iter().for_each(|s| self.check_seen("list", s)),
            Err(e) => self.fail(&format!("list returned {}", e.text)),
        }
    }

    fn check_seen(&self, what: &str, seen: &Seen) {
        if !(seen.mode == Mode::Shared as u32 || seen.mode == Mode::Exclusive as u32)
            || seen.pid == 0
            || seen.pid < -1
        {
            self.fail(&format!(
                "{what} reported a holder with mode {} and pid {}",
                seen.mode, seen.pid
            ));
        }
    }

    fn open_handle(&mut self) {
        self.set_op(op_word(OP_OPEN, NONE, 0, 0, Tmo::Try));
        let r = Handle::open(&self.ctx.sc, &self.ctx.data);
        self.clear_op();
        match r {
            Ok(h) => {
                let h = Arc::new(h);
                if let Some(slot) = self.slot {
                    *slot.handle.lock().unwrap() = Some(h.clone());
                }
                self.handle = Some(h);
            }
            Err(e) => self.fail(&format!("open returned {}", e.text)),
        }
    }

    /// Closes the handle (sometimes while holding locks, which the close releases).
    fn close_handle(&mut self) {
        if self.rng.chance(500) && self.held.iter().any(|&m| m != NONE) {
            self.release_everything();
        }
        self.lower_all();
        let Some(h) = self.handle.take() else {
            return;
        };
        if let Some(slot) = self.slot {
            slot.handle.lock().unwrap().take();
        }
        let h = Arc::into_inner(h).expect("the canceller keeps no reference");
        self.set_op(op_word(OP_CLOSE, NONE, 0, 0, Tmo::Try));
        let t0 = now_ns();
        let r = h.close();
        let took = now_ns() - t0;
        self.clear_op();
        if self.slot.is_some() {
            // A fork child's close affects its own process only.
            self.board()
                .worker(self.ctx.w, W_LAST_CLOSE)
                .store(now_ns(), SeqCst);
        }
        self.board().bump(H_CLOSES);
        self.release_took("close", took);
        if let Err(e) = r {
            self.fail(&format!("close returned {}", e.text));
        }
        self.held = [NONE; SLOTS];
    }

    fn step(&mut self) {
        if self.handle.is_none() {
            self.open_handle();
            if self.handle.is_none() {
                std::thread::sleep(Duration::from_millis(1));
                return;
            }
        }
        let any_held = self.held.iter().any(|&m| m != NONE);
        let sc = self.ctx.sc;
        match self.rng.below(1000) {
            0..400 => {
                if any_held && self.rng.chance(300) {
                    self.op_convert();
                } else {
                    let mode = self.random_mode();
                    let (start, len) = self.random_range();
                    let tmo = self.random_tmo(true);
                    self.op_lock(mode, start, len, tmo);
                }
                self.hold();
                if self.rng.chance(400) && self.held.iter().any(|&m| m != NONE) {
                    self.op_unlock(0, 0);
                }
            }
            400..600 => {
                if !any_held {
                    return;
                }
                let (start, len) = if self.rng.chance(400) {
                    (0, 0)
                } else {
                    self.random_range()
                };
                self.op_unlock(start, len);
            }
            600..680 => self.op_query(),
            680..720 => self.op_list(),
            720..770 => {
                self.close_handle();
                self.open_handle();
            }
            770..780 if sc.fork => self.op_fork(),
            780..810 if sc.close_during_wait && !any_held => self.op_close_during_wait(),
            810..850 => self.op_counter(),
            _ => std::thread::sleep(Duration::from_micros(self.rng.below(300))),
        }
    }

    fn run(&mut self) {
        while !self.board().stopping() {
            self.step();
        }
        if self.handle.is_some() {
            if self.held.iter().any(|&m| m != NONE) && self.rng.chance(500) {
                self.release_everything();
            }
            self.close_handle();
        }
    }

    /// Forks a child that locks through a handle of its own, and waits for it.
    fn op_fork(&mut self) {
        let ctx = self.ctx;
        if ctx.forking.swap(true, SeqCst) {
            return;
        }
        let row = row_of(ctx.w, THREADS);
        let owner = self.board().row(row, R_OWNER);
        if owner.compare_exchange(0, RESERVED, SeqCst, SeqCst).is_err() {
            self.fail("the fork row is still owned");
            ctx.forking.store(false, SeqCst);
            return;
        }
        let child_seed = self.rng.next();
        self.board()
            .worker(ctx.w, W_LAST_FORK)
            .store(now_ns(), SeqCst);
        // SAFETY: the child only calls the library (which has fork handlers), the
        // shared memory, the allocator and system calls, then _exit()s.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            fork_child(ctx, row, child_seed);
        }
        if pid < 0 {
            self.fail(&format!("fork: {}", std::io::Error::last_os_error()));
            owner.store(0, SeqCst);
            ctx.forking.store(false, SeqCst);
            return;
        }
        self.board().bump(H_FORKS);
        self.set_op(op_word(OP_FORK, NONE, 0, 0, Tmo::Try));
        let started = Instant::now();
        let mut status = 0;
        loop {
            // SAFETY: waitpid on our own child with a pointer to a local.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break;
            }
            if r < 0 {
                self.fail(&format!(
                    "waitpid of fork child {pid}: {}",
                    std::io::Error::last_os_error()
                ));
                break;
            }
            if started.elapsed() > FORK_BOUND {
                let hint = task_hint(pid);
                let op = describe_op(self.board().row(row, R_OP).load(SeqCst));
                self.fail(&format!(
                    "fork child {pid} still running after {FORK_BOUND:?}, in `{op}`: {hint}"
                ));
                // SAFETY: kill and reap our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.clear_op();
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            self.fail(&format!(
                "fork child {pid} ended with wait status {status:#x}"
            ));
        }
        let mut left = false;
        for s in 0..SLOTS {
            left |= self.board().rec(row, s).swap(0, SeqCst) != 0;
        }
        if left {
            self.fail(&format!("fork child {pid} left records in the log"));
        }
        self.board().row(row, R_SECTION).store(0, SeqCst);
        self.board().row(row, R_OP).store(0, SeqCst);
        owner.store(0, SeqCst);
        ctx.forking.store(false, SeqCst);
    }

    /// C API: a thread waits forever on a handle that another thread closes; the wait
    /// must end (ECANCELED, or granted just before), the close must wait for it.
    fn op_close_during_wait(&mut self) {
        let h = match Handle::open(&self.ctx.sc, &self.ctx.data) {
            Ok(Handle::C(p)) => p,
            Ok(Handle::Rust(_)) => unreachable!("a C API scenario"),
            Err(e) => {
                self.fail(&format!("open returned {}", e.text));
                return;
            }
        };
        let board = self.board();
        board.bump(H_CLOSES_DURING_WAIT);
        let returned = AtomicBool::new(false);
        let delay = Duration::from_micros(self.rng.below(3000));
        let who = self.who();
        self.set_op(op_word(OP_CLOSE_DURING_WAIT, EX, 0, 0, Tmo::Forever(0)));
        let rc = std::thread::scope(|scope| {
            scope.spawn(|| close_while_waiting(board, h, &returned, delay, &who));
            // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which
            // the library checks before reading).
            let rc = unsafe { capi::unilock_lock(h.0, capi::UNILOCK_EXCLUSIVE, 0, 0, -1) };
            let text = if rc < 0 {
                c_failure(rc).text
            } else {
                String::new()
            };
            returned.store(true, SeqCst);
            (rc, text)
        });
        self.clear_op();
        board.bump(H_OPS);
        let ok = [0, -libc::ECANCELED, -libc::EBUSY, -libc::EDEADLK];
        if !ok.contains(&rc.0) {
            self.fail(&format!(
                "unilock_lock on a handle closed during the wait returned {}: {}",
                rc.0, rc.1
            ));
        }
    }
}

/// The other half of [`Runner::op_close_during_wait`]: waits until the lock call is
/// in progress (an unlock of a byte the handle never holds answers EBUSY), then closes.
fn close_while_waiting(board: &Board, h: CPtr, returned: &AtomicBool, delay: Duration, who: &str) {
    const PROBE: u64 = 1 << 40;
    loop {
        if returned.load(SeqCst) {
            break;
        }
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        let rc = unsafe { capi::unilock_unlock(h.0, PROBE, 1) };
        if rc == -libc::EBUSY {
            std::thread::sleep(delay);
            break;
        }
        if rc != 0 {
            board.fail(&format!(
                "{who}: unilock_unlock of an unheld byte returned {}: {}",
                rc,
                c_failure(rc).text
            ));
            break;
        }
        std::thread::yield_now();
    }
    let t0 = now_ns();
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    let rc = unsafe { capi::unilock_close(h.0) };
    let took = now_ns() - t0;
    board.release_took(
        &format!("{who}: unilock_close of a handle another thread waits on"),
        took,
    );
    if rc != 0 {
        board.fail(&format!(
            "{who}: unilock_close of a handle another thread waits on returned {rc}: {}",
            c_failure(rc).text
        ));
    }
    let closed = Instant::now();
    while !returned.load(SeqCst) {
        if closed.elapsed() > CLOSE_WAIT_BOUND {
            board.fail(&format!(
                "{who}: unilock_lock still blocked {CLOSE_WAIT_BOUND:?} after unilock_close of \
                 its handle returned (in {took_ms:.1} ms)",
                took_ms = took as f64 / 1e6
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The fork child: takes the fork row, locks a few times through a handle of its own,
/// closes it and `_exit`s (the inherited handles are left to the parent).
fn fork_child(ctx: &Ctx, row: usize, seed: u64) -> ! {
    // SAFETY: prctl and getppid have no memory effects.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != ctx.pid {
            libc::_exit(0);
        }
    }
    let me = getpid();
    let start = proc_stat(me).map_or(0, |(_, start)| start);
    ctx.board.row(row, R_OWNER_START).store(start, SeqCst);
    let owner = ctx.board.row(row, R_OWNER);
    if owner
        .compare_exchange(RESERVED, me as u64, SeqCst, SeqCst)
        .is_err()
    {
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let mut r = Runner {
        ctx,
        row,
        rng: Rng::new(seed ^ me as u64),
        handle: None,
        slot: None,
        held: [NONE; SLOTS],
        rec: [NONE; SLOTS],
    };
    r.open_handle();
    if r.handle.is_some() {
        for _ in 0..r.rng.between(1, 4) {
            if ctx.board.stopping() {
                break;
            }
            let mode = r.random_mode();
            let (start, len) = r.random_range();
            let tmo = r.random_tmo(false);
            r.op_lock(mode, start, len, tmo);
            r.hold();
            if r.held.iter().any(|&m| m != NONE) {
                r.op_unlock(0, 0);
            }
        }
        r.close_handle();
    }
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}

/// Cancels the waits whose watcher deadline passed, some waits at random, and every
/// wait once the scenario stops.
fn canceller(ctx: &Ctx, seed: u64) {
    let mut rng = Rng::new(seed);
    while ctx.done.load(SeqCst) < THREADS {
        let stop = ctx.board.stopping();
        let now = now_ns();
        for slot in &ctx.slots {
            let at = slot.cancel_at.load(SeqCst);
            if stop || (at != 0 && now >= at) || rng.chance(3) {
                slot.cancels_started.fetch_add(1, SeqCst);
                if let Some(h) = slot.handle.lock().unwrap().as_ref() {
                    h.cancel();
                }
                slot.cancels_done.fetch_add(1, SeqCst);
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// What the parent passes to a worker.
struct WorkerArgs {
    kind: String,
    sc: Scenario,
    dir: PathBuf,
    w: usize,
    seed: u64,
}

impl WorkerArgs {
    fn encode(&self) -> String {
        format!(
            "{};{};{};{};{}",
            self.kind,
            self.sc.name,
            self.w,
            self.seed,
            self.dir.display()
        )
    }

    fn decode(s: &str) -> WorkerArgs {
        let mut it = s.splitn(5, ';');
        let mut next = || it.next().expect("five fields");
        WorkerArgs {
            kind: next().to_string(),
            sc: Scenario::named(next()),
            w: next().parse().unwrap(),
            seed: next().parse().unwrap(),
            dir: PathBuf::from(next()),
        }
    }
}

fn worker_main(args: WorkerArgs) -> ! {
    let board = Board::map(&args.dir.join("shm"));
    let data = args.dir.join("locks").join("data");
    if args.kind == "final" {
        final_check(&board, &args.sc, &data);
        std::process::exit(0);
    }
    let pid = getpid();
    board.worker(args.w, W_PID).store(pid as u64, SeqCst);
    let fds_before = fd_list();
    let ctx = Ctx {
        board,
        sc: args.sc,
        w: args.w,
        data,
        pid,
        slots: (0..THREADS).map(|_| Slot::default()).collect(),
        forking: AtomicBool::new(false),
        done: AtomicUsize::new(0),
    };
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let ctx = &ctx;
            let seed = splitmix(args.seed ^ (t as u64 + 1));
            scope.spawn(move || {
                let mut r = Runner {
                    ctx,
                    row: row_of(ctx.w, t),
                    rng: Rng::new(seed),
                    handle: None,
                    slot: Some(&ctx.slots[t]),
                    held: [NONE; SLOTS],
                    rec: [NONE; SLOTS],
                };
                r.run();
                ctx.done.fetch_add(1, SeqCst);
            });
        }
        let ctx = &ctx;
        scope.spawn(move || canceller(ctx, splitmix(args.seed)));
    });
    let fds_after = fd_list_settled(&fds_before);
    if fds_after != fds_before {
        ctx.board.fail(&format!(
            "worker {} (pid {pid}) has other descriptors after closing every handle: before \
             {fds_before:?}, after {fds_after:?}",
            args.w
        ));
    }
    // A thread's waiter child is killed and reaped by the thread's thread-local
    // destructors, which may still run when the scope above has ended: look again
    // for up to a second before calling a child left behind.
    let mut kids = children_of(pid);
    for _ in 0..200 {
        if kids.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        kids = children_of(pid);
    }
    if !kids.is_empty() {
        ctx.board.fail(&format!(
            "worker {} (pid {pid}) still has children after its threads ended: {kids:?}",
            args.w
        ));
    }
    std::process::exit(0);
}

/// After every worker is gone: no lock is left, and the file can be taken.
fn final_check(board: &Board, sc: &Scenario, data: &Path) {
    let h = match Lock::open(data, &sc.options()) {
        Ok(h) => h,
        Err(e) => {
            board.fail(&format!("final check: open returned {e}"));
            return;
        }
    };
    match h.list() {
        Ok(all) => {
            // A DOTLOCK lock file of a killed holder stays until the next lock breaks it
            // (below); its pid may name another process by now.
            for x in all.into_iter().filter(|x| x.backend != Backend::Dotlock) {
                board.fail(&format!("final check: a lock outlived every worker: {x:?}"));
            }
        }
        Err(e) => board.fail(&format!("final check: list returned {e}")),
    }
    let t0 = Instant::now();
    match h.lock(Mode::Exclusive, 0, 0, Some(FINAL_TIMEOUT)) {
        Ok(()) => {
            // A worker killed in the middle of an attempt leaves its temporary file; an
            // attempt that finds the lock file held removes those of dead processes
            // (once per directory and process per 10 minutes: this process has not yet).
            // One such attempt here, so that the count of stray files afterwards checks
            // that removal.
            if sc.backends & DOTLOCK != 0 {
                match Lock::open(data, &sc.options())
                    .map(|h2| h2.lock(Mode::Exclusive, 0, 0, Some(Duration::ZERO)))
                {
                    Ok(Err(e)) if e.is_would_block() => {}
                    other => board.fail(&format!(
                        "final check: a second handle's try while the lock is held: {other:?}"
                    )),
                }
            }
            if let Err(e) = h.unlock(0, 0) {
                board.fail(&format!("final check: unlock returned {e}"));
            }
        }
        Err(e) => board.fail(&format!(
            "final check: no exclusive lock in {:?} after every worker is gone: {e}; list: {:?}",
            t0.elapsed(),
            h.list()
        )),
    }
    match h.close() {
        Ok(()) => board.set(H_FINAL_OK, 1),
        Err(e) => board.fail(&format!("final check: close returned {e}")),
    }
}

/// The worker entry point: runs only when the test binary was started as a worker.
#[test]
fn torture_worker() {
    if let Ok(args) = std::env::var(WORKER_ENV) {
        worker_main(WorkerArgs::decode(&args));
    }
}

// ---------------------------------------------------------------------------------
// The test process

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// The flock a reader of the DOTLOCK lock file may hold.
struct Interloper {
    path: PathBuf,
    fd: Option<OwnedFd>,
    until: Instant,
    next: Instant,
    holds: u64,
}

impl Interloper {
    fn tick(&mut self, rng: &mut Rng) {
        let now = Instant::now();
        if self.fd.is_some() {
            if now >= self.until {
                self.fd = None;
                self.next = now + Duration::from_millis(rng.between(200, 800));
            }
            return;
        }
        if now < self.next {
            return;
        }
        let cpath = CString::new(self.path.as_os_str().as_bytes()).expect("no NUL");
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        // SAFETY: open of a NUL-terminated path.
        let fd = unsafe { libc::open(cpath.as_ptr(), flags) };
        if fd < 0 {
            return;
        }
        // SAFETY: a descriptor we just opened.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: flock on our descriptor.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            self.fd = Some(fd);
            self.until = now + Duration::from_millis(rng.between(1500, 2500));
            self.holds += 1;
        }
    }
}

struct Parent {
    sc: Scenario,
    dir: PathBuf,
    board: Board,
    seed: u64,
    rng: Rng,
    workers: Vec<Option<Child>>,
    spawned: u64,
    kills: u64,
    holder_kills: u64,
    waiter_kills: u64,
    section_kills: u64,
    problems: Vec<String>,
    reported_ops: std::collections::HashSet<(usize, u64)>,
    interloper: Option<Interloper>,
}

impl Parent {
    fn log_path(&self, w: usize) -> PathBuf {
        self.dir.join("logs").join(format!("worker-{w}.err"))
    }

    fn spawn_process(&mut self, kind: &str, w: usize) -> Child {
        self.spawned += 1;
        let args = WorkerArgs {
            kind: kind.to_string(),
            sc: self.sc,
            dir: self.dir.clone(),
            w,
            seed: splitmix(self.seed ^ self.spawned.wrapping_mul(0x1000_0001) ^ w as u64),
        };
        let err = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(w))
            .unwrap();
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "torture_worker",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WORKER_ENV, args.encode())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap()
    }

    fn spawn(&mut self, w: usize) {
        let child = self.spawn_process("worker", w);
        self.board
            .worker(w, W_PID)
            .store(u64::from(child.id()), SeqCst);
        self.workers[w] = Some(child);
    }

    fn rows(w: usize) -> std::ops::Range<usize> {
        row_of(w, 0)..row_of(w, THREADS + 1)
    }

    /// After worker `w` died: waits for its fork child, then clears its rows and the
    /// spin locks they held, and its kill-pending mark.
    fn clear_dead(&mut self, w: usize) {
        let fork_row = row_of(w, THREADS);
        let owner = self.board.row(fork_row, R_OWNER);
        if owner.compare_exchange(RESERVED, 0, SeqCst, SeqCst).is_err() {
            let pid = owner.load(SeqCst) as i32;
            let start = self.board.row(fork_row, R_OWNER_START).load(SeqCst);
            let started = Instant::now();
            while alive_as(pid, start) {
                if started.elapsed() > FORK_BOUND {
                    self.problems.push(format!(
                        "the fork child {pid} of killed worker {w} did not die with it in \
                         {FORK_BOUND:?}: {}",
                        task_hint(pid)
                    ));
                    kill_if_same(pid, start);
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for row in Self::rows(w) {
            for k in 0..ROW_WORDS {
                self.board.row(row, k).store(0, SeqCst);
            }
            for s in 0..SLOTS {
                self.board.unlock_slot(row, s);
            }
        }
        self.board.worker(w, W_KILL_PENDING).store(0, SeqCst);
    }

    fn kill(&mut self, w: usize) {
        let rows = Self::rows(w);
        let holding = rows
            .clone()
            .any(|r| (0..SLOTS).any(|s| self.board.rec(r, s).load(SeqCst) != 0));
        let waiting = rows.clone().any(|r| {
            let op = self.board.row(r, R_OP).load(SeqCst);
            op & 0xff == OP_LOCK && Tmo::decode(op >> 32) != Tmo::Try
        });
        self.board.worker(w, W_KILL_PENDING).store(1, SeqCst);
        let mut child = self.workers[w].take().expect("a live worker");
        let _ = child.kill();
        let _ = child.wait();
        self.kills += 1;
        self.holder_kills += u64::from(holding);
        self.waiter_kills += u64::from(waiting);
        if rows
            .clone()
            .any(|r| self.board.row(r, R_SECTION).load(SeqCst) != 0)
        {
            self.section_kills += 1;
        }
        self.clear_dead(w);
    }

    /// Picks a holder, a waiter or anyone, and kills it.
    fn kill_someone(&mut self) {
        let live: Vec<usize> = (0..WORKERS)
            .filter(|&w| self.workers[w].is_some())
            .collect();
        if live.is_empty() {
            return;
        }
        let holders: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&w| {
                Self::rows(w).any(|r| (0..SLOTS).any(|s| self.board.rec(r, s).load(SeqCst) != 0))
            })
            .collect();
        let waiters: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&w| {
                Self::rows(w).any(|r| {
                    let op = self.board.row(r, R_OP).load(SeqCst);
                    op & 0xff == OP_LOCK && Tmo::decode(op >> 32) != Tmo::Try
                })
            })
            .collect();
        let pool = match self.rng.below(3) {
            0 if !holders.is_empty() => holders,
            1 if !waiters.is_empty() => waiters,
            _ => live,
        };
        let w = pool[self.rng.below(pool.len() as u64) as usize];
        self.kill(w);
        self.spawn(w);
    }

    /// Reaps workers that exited by themselves (a crash or a panic) during the run.
    fn check_exits(&mut self) {
        for w in 0..WORKERS {
            let Some(child) = self.workers[w].as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                let pid = child.id();
                self.workers[w] = None;
                self.board.worker(w, W_KILL_PENDING).store(1, SeqCst);
                self.problems.push(format!(
                    "worker {w} (pid {pid}) exited by itself during the run ({status}); its \
                     stderr ends with: {}",
                    tail(&self.log_path(w), 1500)
                ));
                self.clear_dead(w);
                self.spawn(w);
            }
        }
    }

    /// Reports threads that have been in one call for longer than [`OP_BOUND`].
    /// Reports calls that have run past their bound (before a kill could hide them).
    fn check_ops(&mut self) {
        for row in 0..ROWS {
            let op = self.board.row(row, R_OP).load(SeqCst);
            let Some(bound) = op_bound(op) else {
                continue;
            };
            let t = self.board.row(row, R_OP_T).load(SeqCst);
            let age = Duration::from_nanos(now_ns().saturating_sub(t));
            if age > bound && self.reported_ops.insert((row, t)) {
                let pid = self.board.row_pid(row);
                self.problems.push(format!(
                    "{} (pid {pid}) has been in `{}` for {:.2} s (bound {bound:?}): {}",
                    row_name(row),
                    describe_op(op),
                    age.as_secs_f64(),
                    task_hint(pid)
                ));
            }
        }
    }

    fn ops_of(&self, w: usize) -> String {
        Self::rows(w)
            .map(|r| {
                let op = self.board.row(r, R_OP).load(SeqCst);
                let t = self.board.row(r, R_OP_T).load(SeqCst);
                if op == OP_IDLE {
                    format!("{}: no call", row_name(r))
                } else {
                    format!(
                        "{}: in `{}` for {:.0} ms",
                        row_name(r),
                        describe_op(op),
                        ms_since(t)
                    )
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Stops the workers; reports and kills those that do not exit in time.
    fn stop(&mut self) {
        if let Some(i) = self.interloper.as_mut() {
            i.fd = None;
        }
        self.board.set(H_STOP, 1);
        let deadline = Instant::now() + JOIN_BOUND;
        loop {
            for w in 0..WORKERS {
                let Some(child) = self.workers[w].as_mut() else {
                    continue;
                };
                if let Ok(Some(status)) = child.try_wait() {
                    if !status.success() {
                        self.problems.push(format!(
                            "worker {w} (pid {}) ended with {status} after the stop; its stderr \
                             ends with: {}",
                            child.id(),
                            tail(&self.log_path(w), 1500)
                        ));
                    }
                    self.workers[w] = None;
                }
            }
            if self.workers.iter().all(Option::is_none) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for w in 0..WORKERS {
            if let Some(child) = self.workers[w].as_ref() {
                let pid = child.id() as i32;
                self.problems.push(format!(
                    "worker {w} (pid {pid}) is stuck: not exited {JOIN_BOUND:?} after the stop; \
                     {}; {}",
                    self.ops_of(w),
                    task_hint(pid)
                ));
                self.kill(w);
            }
        }
    }

    /// Runs the final check in a process of its own.
    fn final_check(&mut self) {
        let mut child = self.spawn_process("final", WORKERS);
        let deadline = Instant::now() + FINAL_TIMEOUT + JOIN_BOUND;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                if !status.success() {
                    self.problems.push(format!(
                        "the final check ended with {status}: {}",
                        tail(&self.log_path(WORKERS), 1500)
                    ));
                }
                break;
            }
            if Instant::now() > deadline {
                let pid = child.id() as i32;
                self.problems
                    .push(format!("the final check is stuck: {}", task_hint(pid)));
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.board.get(H_FINAL_OK) == 0 {
            self.problems
                .push("the final check did not take and release the lock".into());
        }
    }
}

/// Runs one scenario for [`seconds`] and asserts everything the module docs list.
fn torture(name: &str) {
    let _one = serial();
    let sc = Scenario::named(name);
    let secs = seconds();
    let seed = base_seed();
    let fds_before = fd_list();
    let kids_before = children_of(getpid());
    let tmp = TempDir::new(&format!("torture-{name}"));
    let dir = tmp.0.clone();
    fs::create_dir(dir.join("locks")).unwrap();
    fs::create_dir(dir.join("logs")).unwrap();
    let data = dir.join("locks").join("data");
    let board = Board::create(&dir.join("shm"));
    let interloper = if sc.interloper {
        sc.lock_file(&data).map(|path| Interloper {
            path,
            fd: None,
            until: Instant::now(),
            next: Instant::now() + Duration::from_millis(100),
            holds: 0,
        })
    } else {
        None
    };
    let mut p = Parent {
        sc,
        dir: dir.clone(),
        board,
        seed,
        rng: Rng::new(seed),
        workers: (0..WORKERS).map(|_| None).collect(),
        spawned: 0,
        kills: 0,
        holder_kills: 0,
        waiter_kills: 0,
        section_kills: 0,
        problems: Vec::new(),
        reported_ops: Default::default(),
        interloper,
    };
    let started = Instant::now();
    p.board.set(H_LAST_GRANT, now_ns());
    p.board.set(H_STARTED, now_ns());
    for w in 0..WORKERS {
        p.spawn(w);
    }
    let end = started + Duration::from_secs_f64(secs);
    let mut next_kill =
        started + Duration::from_millis(p.rng.between(KILL_EVERY_MS.0, KILL_EVERY_MS.1));
    let mut stalled = false;
    while Instant::now() < end {
        p.check_exits();
        p.check_ops();
        if Instant::now() >= next_kill {
            p.kill_someone();
            next_kill = Instant::now()
                + Duration::from_millis(p.rng.between(KILL_EVERY_MS.0, KILL_EVERY_MS.1));
        }
        if let Some(mut i) = p.interloper.take() {
            i.tick(&mut p.rng);
            p.interloper = Some(i);
        }
        let since_grant = Duration::from_nanos(now_ns().saturating_sub(p.board.get(H_LAST_GRANT)));
        if since_grant > STALL_BOUND && !stalled {
            stalled = true;
            let ops: Vec<String> = (0..WORKERS).map(|w| p.ops_of(w)).collect();
            p.problems.push(format!(
                "no lock was granted for {:.1} s while the workers ran: {}",
                since_grant.as_secs_f64(),
                ops.join("; ")
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    p.stop();
    let ran = started.elapsed();
    p.final_check();

    let b = &p.board;
    let mut problems = std::mem::take(&mut p.problems);
    let violations = b.get(H_VIOLATIONS);
    if violations > 0 {
        problems.insert(
            0,
            format!(
                "{violations} mutual-exclusion violations (bytes recorded as held by two \
                 conflicting handles) in {} lock calls",
                b.get(H_VIOLATING_CALLS)
            ),
        );
    }
    let (counter, increments) = (b.get(H_COUNTER), b.get(H_INCREMENTS));
    if counter < increments {
        problems.push(format!(
            "lost updates: the counter is {counter} after {increments} increments under an \
             exclusive lock ({} lost)",
            increments - counter
        ));
    } else if counter - increments > p.section_kills {
        problems.push(format!(
            "the counter is {counter}, {} more than the {increments} increments counted, but \
             only {} kills landed in the counter section",
            counter - increments,
            p.section_kills
        ));
    }
    let failures = b.get(H_FAILURES);
    if failures > 0 {
        problems.push(format!(
            "{failures} failed checks in the workers (listed below)"
        ));
    }
    for row in 0..ROWS {
        let left: Vec<usize> = (0..SLOTS)
            .filter(|&s| b.rec(row, s).load(SeqCst) != 0)
            .collect();
        if !left.is_empty() {
            problems.push(format!(
                "{} left records on slots {left:?} after the workers ended",
                row_name(row)
            ));
        }
    }
    let mut files: Vec<String> = fs::read_dir(dir.join("locks"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let stray: Vec<&String> = files
        .iter()
        .filter(|f| !sc.expected_files().contains(&f.as_str()))
        .collect();
    if !stray.is_empty() {
        problems.push(format!(
            "stray files next to the lock after everyone is done: {stray:?}"
        ));
    }
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        problems.truncate(MAX_PROBLEMS);
        problems.push(format!("... and {more} more"));
    }
    let messages = b.messages();
    let summary = format!(
        "torture {name}: {:.1} s, seed {seed:#x}, {WORKERS} workers x {THREADS} threads: {} ops, \
         {} grants ({} conversions), {} EAGAIN, {} timeouts, {} cancelled, {} EDEADLK, {} \
         ENOLCK, {} unlocks, {} closes, {} closes during a wait, {} forks, {} queries, {} lists; \
         {} kills ({} holding, {} waiting, {} in the counter section), {} stale-record waits; \
         {} increments; longest release {:.1} ms{}; {violations} violations{}",
        ran.as_secs_f64(),
        b.get(H_OPS),
        b.get(H_GRANTS),
        b.get(H_CONVERSIONS),
        b.get(H_AGAIN),
        b.get(H_TIMEOUTS),
        b.get(H_CANCELLED),
        b.get(H_DEADLOCKS),
        b.get(H_ENOLCK),
        b.get(H_UNLOCKS),
        b.get(H_CLOSES),
        b.get(H_CLOSES_DURING_WAIT),
        b.get(H_FORKS),
        b.get(H_QUERIES),
        b.get(H_LISTS),
        p.kills,
        p.holder_kills,
        p.waiter_kills,
        p.section_kills,
        b.get(H_STALE_WAITS),
        increments,
        b.get(H_MAX_RELEASE_NS) as f64 / 1e6,
        p.interloper.as_ref().map_or(String::new(), |i| format!(
            ", {} flocks on the lock file",
            i.holds
        )),
        match b.get(H_FIRST_VIOLATION) {
            0 => String::new(),
            t => format!(
                " (the first {:.2} s into the run)",
                t.saturating_sub(b.get(H_STARTED)) as f64 / 1e9
            ),
        },
    );
    println!("{summary}");
    if b.get(H_OPS) < 100 {
        problems.push(format!("only {} lock calls were made", b.get(H_OPS)));
    }
    drop(p);
    drop(tmp);
    let fds_after = fd_list_settled(&fds_before);
    if fds_after != fds_before {
        problems.push(format!(
            "the test process's descriptors changed: before {fds_before:?}, after {fds_after:?}"
        ));
    }
    let kids_after = children_of(getpid());
    if kids_after != kids_before {
        problems.push(format!(
            "the test process's children changed: before {kids_before:?}, after {kids_after:?}"
        ));
    }
    assert!(
        problems.is_empty(),
        "torture scenario `{name}` failed:\n- {}\nmessages from the workers:\n  * {}\n{summary}\n\
         replay the choices: UNILOCK_TORTURE_SEED={seed:#x} UNILOCK_TORTURE_SECONDS={secs} \
         cargo test --release --test torture -- --exact {name} --nocapture",
        problems.join("\n- "),
        if messages.is_empty() {
            "(none)".to_string()
        } else {
            messages.join("\n  * ")
        },
    );
}

#[test]
fn flock() {
    torture("flock");
}

#[test]
fn ofd() {
    torture("ofd");
}

#[test]
fn posix() {
    torture("posix");
}

#[test]
fn dotlock() {
    torture("dotlock");
}

#[test]
fn fair_flock() {
    torture("fair_flock");
}

#[test]
fn fair_ofd() {
    torture("fair_ofd");
}

#[test]
fn fair_posix() {
    torture("fair_posix");
}

#[test]
fn set_dotlock_flock_ofd() {
    torture("set_dotlock_flock_ofd");
}

#[test]
fn set_flock_ofd() {
    torture("set_flock_ofd");
}

#[test]
fn unlink_flock() {
    torture("unlink_flock");
}

#[test]
fn unlink_ofd() {
    torture("unlink_ofd");
}

#[test]
fn capi_ofd_close_during_wait() {
    torture("capi_ofd_close_during_wait");
}

/// Every scenario has its test.
#[test]
fn scenarios_have_tests() {
    let source = include_str!("torture.rs");
    for sc in SCENARIOS {
        assert!(
            source.contains(&format!(
                "fn {}() {{\n    torture(\"{}\");",
                sc.name, sc.name
            )),
            "scenario {} has no #[test]",
            sc.name
        );
    }
}
