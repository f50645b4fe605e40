//! Fault injection: every system call the library makes goes through one gate
//! ([`crate::sys`]), which a test can make fail on purpose, at a chosen call and with a
//! chosen errno (SQLite's `aSyscall` table serves the same end). Built only with the
//! `fault-injection` feature; without it the gate is compiled away.
//!
//! A failure is injected where the call would be made: the wrapper sees `-1` and
//! `errno`, exactly as if the kernel had failed, so its own handling (an `EINTR`
//! retried, an error reported with its context) is what the test exercises.
//!
//! The rules are process-wide: tests that inject faults must not run in parallel with
//! other calls of the library in the same process.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A kind of system call, as the gate counts and fails them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Call {
    /// `open`, `openat`.
    Open,
    /// `stat`, `lstat`, `fstat`, `fstatat`, `fstatfs`.
    Stat,
    /// `fcntl` other than record locks: `F_DUPFD`, `F_GETFL`, `F_SETFL`.
    Fcntl,
    /// `fcntl` record locks: `F_SETLK(W)`, `F_GETLK`, `F_OFD_*`.
    FcntlLock,
    /// `flock`.
    Flock,
    /// `link`, `linkat`.
    Link,
    /// `unlink`, `unlinkat`.
    Unlink,
    /// `read`, `pread`, `getdents64`.
    Read,
    /// `write`.
    Write,
    /// `futimens`.
    Utime,
    /// `eventfd`.
    Eventfd,
    /// `ppoll`.
    Poll,
    /// `clone` of a waiter child sharing the memory.
    Clone,
    /// `fork` and `pipe2` of a forked waiter child.
    Fork,
    /// `pidfd_open`.
    Pidfd,
    /// `waitpid`.
    Wait,
    /// `inotify_init1`, `inotify_add_watch`.
    Inotify,
    /// Reads of /proc files (`/proc/locks`, `/proc/PID/fdinfo`, `/proc/PID/stat`, ...).
    ProcRead,
    /// `uname`.
    Uname,
    /// `kcmp`.
    Kcmp,
    /// `io_uring_setup`.
    Uring,
    /// The creation of the deadline thread ([`crate::own_wait`]).
    Thread,
}

/// Every kind, for tests that go through them all.
pub const ALL: [Call; 22] = [
    Call::Open,
    Call::Stat,
    Call::Fcntl,
    Call::FcntlLock,
    Call::Flock,
    Call::Link,
    Call::Unlink,
    Call::Read,
    Call::Write,
    Call::Utime,
    Call::Eventfd,
    Call::Poll,
    Call::Clone,
    Call::Fork,
    Call::Pidfd,
    Call::Wait,
    Call::Inotify,
    Call::ProcRead,
    Call::Uname,
    Call::Kcmp,
    Call::Uring,
    Call::Thread,
];

/// One rule: the `nth` next call of `call` fails with `errno` (and, when `every`, all
/// calls of that kind after it too).
#[derive(Clone, Copy, Debug)]
struct Rule {
    call: Call,
    remaining: u64,
    errno: i32,
    every: bool,
}

static ARMED: AtomicBool = AtomicBool::new(false);
static RULES: Mutex<Vec<Rule>> = Mutex::new(Vec::new());
static COUNTS: [AtomicU64; ALL.len()] = [const { AtomicU64::new(0) }; ALL.len()];
static INJECTED: AtomicU64 = AtomicU64::new(0);

fn index(call: Call) -> usize {
    ALL.iter()
        .position(|&c| c == call)
        .expect("every kind is in ALL")
}

/// Makes the `nth` next call of `call` (1: the next one) fail with `errno`.
pub fn fail_nth(call: Call, nth: u64, errno: i32) {
    add(Rule {
        call,
        remaining: nth.max(1),
        errno,
        every: false,
    });
}

/// Makes every call of `call` fail with `errno`, from the `nth` next one on.
pub fn fail_from(call: Call, nth: u64, errno: i32) {
    add(Rule {
        call,
        remaining: nth.max(1),
        errno,
        every: true,
    });
}

fn add(rule: Rule) {
    let mut rules = RULES.lock().unwrap_or_else(|p| p.into_inner());
    rules.push(rule);
    ARMED.store(true, Ordering::SeqCst);
}

/// Removes every rule.
pub fn clear() {
    let mut rules = RULES.lock().unwrap_or_else(|p| p.into_inner());
    rules.clear();
    ARMED.store(false, Ordering::SeqCst);
}

/// How many calls of `call` the library made so far (failed ones included).
pub fn count(call: Call) -> u64 {
    COUNTS[index(call)].load(Ordering::SeqCst)
}

/// How many failures were injected so far.
pub fn injected() -> u64 {
    INJECTED.load(Ordering::SeqCst)
}

/// The gate: counts a call of `call` and returns the errno it must fail with, if a
/// rule says so.
pub(crate) fn check(call: Call) -> Option<i32> {
    COUNTS[index(call)].fetch_add(1, Ordering::SeqCst);
    if !ARMED.load(Ordering::SeqCst) {
        return None;
    }
    let mut rules = RULES.lock().unwrap_or_else(|p| p.into_inner());
    let pos = rules.iter().position(|r| r.call == call)?;
    let rule = &mut rules[pos];
    if rule.remaining > 1 {
        rule.remaining -= 1;
        return None;
    }
    let errno = rule.errno;
    if !rule.every {
        rules.remove(pos);
    }
    INJECTED.fetch_add(1, Ordering::SeqCst);
    Some(errno)
}
