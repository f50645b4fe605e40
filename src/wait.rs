//! Timed and cancellable waits.
//!
//! No kernel lock call takes a timeout, and a library may not take a signal from its
//! host to interrupt one. Where io_uring serves, a wait is the waiting thread's own
//! `fcntl` or `flock` call, which an io_uring completion ends at the deadline or on
//! cancel ([`crate::own_wait`]). Otherwise (and for a flock wait on a file with `fcntl`
//! locks, or a thread's first timed flock wait), a blocking lock call is made by a
//! *waiter child*: a
//! process that shares this process's memory and descriptor table (`clone(CLONE_VM |
//! CLONE_FILES)`, no exit signal), blocks in the kernel (`flock(LOCK_EX)`,
//! `F_OFD_SETLKW`, `F_SETLKW`) and reports when it gets the lock. Because the
//! descriptor table is shared, the lock it obtains belongs to the handle (flock and OFD
//! locks to the open file description, POSIX locks to the process). At the deadline or
//! on cancel the waiting thread kills the child with `kill(SIGKILL)` (safe: the pid
//! stays the child's until it is reaped), which aborts the kernel wait. The host sees
//! no signal, no SIGCHLD and no thread.
//!
//! Normally each thread keeps its child between waits ([`crate::helper`]): the child
//! reports a grant by waking a futex word. Where that is not available (kernels before
//! 5.16, or no `PR_GET_TID_ADDRESS`), each wait makes its own child, which reports by
//! exiting: the thread sleeps in `ppoll` on the child's pidfd and the handle's cancel
//! eventfd, with the exact remaining time.
//!
//! Where such a child is refused (seccomp filters; valgrind, detected by its preloaded
//! library because it aborts on such a clone), flock and OFD waits use a child made by
//! `fork()` instead (it shares the open file descriptions; its exit is seen through a
//! pipe; it dies with the thread that made it), and POSIX waits fall back to retrying
//! with a bounded backoff (1 ms doubling to 25 ms), still cancellable and still ending
//! on time. Every wait falls back to that backoff when no child can be made at all
//! (`fork()` refused as well, `RLIMIT_NPROC` reached, no memory).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::sys::{self, ChildExit, Errno, KernelCall, WaiterJob};
use crate::{Error, Result};
use crate::{helper, own_wait};

/// When a lock call gives up.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    at: Option<Instant>,
    try_only: bool,
}

impl Deadline {
    /// `None`: never; `Some(ZERO)`: try once; otherwise now + timeout.
    pub(crate) fn after(timeout: Option<Duration>) -> Self {
        match timeout {
            None => Deadline {
                at: None,
                try_only: false,
            },
            Some(d) if d.is_zero() => Deadline {
                at: None,
                try_only: true,
            },
            Some(d) => Deadline {
                at: Instant::now().checked_add(d),
                try_only: false,
            },
        }
    }

    /// True when the call must not wait at all.
    pub(crate) fn is_try(&self) -> bool {
        self.try_only
    }

    /// Time left: `None` forever, `Some(ZERO)` when expired.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        if self.try_only {
            return Some(Duration::ZERO);
        }
        self.at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// True once the deadline has passed.
    pub(crate) fn expired(&self) -> bool {
        self.remaining() == Some(Duration::ZERO)
    }
}

const BUSY: u32 = 1;
const LOCKING: u32 = 2;
const CANCELLED: u32 = 4;
const SEALED: u32 = 8;

/// The per-handle state that makes one lock or unlock run at a time and lets
/// `cancel` reach the lock call in progress.
///
/// `bits` is the only shared state: BUSY while a lock or unlock runs, LOCKING while
/// that call is a lock, CANCELLED once `cancel` hit it. A call clears all three when it
/// returns, so a cancel that lands between calls finds nothing to cancel and is never
/// remembered (no stale cancel), while a cancel that lands at any moment of a lock call
/// — before it starts to sleep or during the sleep — is seen by it (no lost cancel):
/// the call checks CANCELLED after it has armed the eventfd and before each sleep.
///
/// `after_grant` is set by the fair queue ([`crate::fair`]) around the call's wait for
/// the lock itself: the waiter child makes that call as soon as it gets the lock. It is
/// only touched by the lock call in progress, under its mutex.
///
/// `shut` is set once, by [`CallState::shut_down`], and counts as a cancel of every
/// call from then on; SEALED, set by [`CallState::seal`] once no call runs, then
/// refuses every new call (`EBADF`): the two make a close that waits for the calls in
/// progress on the handle.
#[derive(Default)]
pub(crate) struct CallState {
    bits: AtomicU32,
    shut: AtomicBool,
    wake: OnceLock<OwnedFd>,
    /// The state word of the persistent waiter child that the call in progress waits
    /// on (null when none): a cancel pokes it.
    waiting_on: AtomicPtr<AtomicU32>,
    /// The words of the thread's own wait that the call in progress makes (null when
    /// none), and the state a cancel expects to find there ([`own_wait::abort`]).
    own_wait: AtomicPtr<own_wait::Words>,
    own_wait_state: AtomicU32,
    /// Whether the handle's file keeps its record locks in the kernel: 0 not asked
    /// yet, 1 yes, 2 no ([`CallState::on_local_locks`]).
    local_locks: AtomicU8,
    after_grant: Mutex<Option<(RawFd, KernelCall)>>,
}

/// Marks a call in progress; clears the state when dropped.
pub(crate) struct CallGuard<'a>(&'a CallState);

impl Drop for CallGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.bits.store(0, Ordering::Release);
        if self.0.shut.load(Ordering::Relaxed) {
            sys::futex_wake(&self.0.bits);
        }
    }
}

impl CallState {
    /// Starts a lock (`locking`) or unlock call; `EBUSY` when one is in progress.
    #[inline]
    pub(crate) fn begin(&self, locking: bool) -> Result<CallGuard<'_>> {
        let bits = if locking { BUSY | LOCKING } else { BUSY };
        self.bits
            .compare_exchange(0, bits, Ordering::SeqCst, Ordering::SeqCst)
            .map_err(|now| {
                if now & SEALED != 0 {
                    Error::new(libc::EBADF, "the handle is closed")
                } else {
                    Error::new(
                        libc::EBUSY,
                        "another lock or unlock call is in progress on this handle",
                    )
                }
            })?;
        Ok(CallGuard(self))
    }

    /// Cancels the lock call in progress; returns false when there is none.
    pub(crate) fn cancel(&self) -> bool {
        let mut cur = self.bits.load(Ordering::SeqCst);
        loop {
            if cur & LOCKING == 0 {
                return false;
            }
            if cur & CANCELLED != 0 {
                return true;
            }
            match self.bits.compare_exchange(
                cur,
                cur | CANCELLED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.wake_up();
        true
    }

    /// Wakes the lock call in progress, wherever it sleeps: the eventfd of the backoff
    /// and DOTLOCK waits, the state word of a persistent waiter child.
    fn wake_up(&self) {
        if let Some(fd) = self.wake.get() {
            sys::eventfd_signal(fd.as_fd());
        }
        let word = self.waiting_on.load(Ordering::SeqCst);
        if !word.is_null() {
            // SAFETY: the word belongs to a waiter slot, and slots are never freed.
            helper::poke(unsafe { AtomicU32::from_ptr(word as *mut u32) });
        }
        let own = self.own_wait.load(Ordering::SeqCst);
        if !own.is_null() {
            let expected = self.own_wait_state.load(Ordering::SeqCst);
            // SAFETY: the words belong to an own-wait slot, and slots are never freed.
            own_wait::abort(unsafe { &*own }, expected);
        }
    }

    /// True when the file of `fd` keeps its record locks in the kernel
    /// ([`sys::local_locks`]), where a waiting thread's own call can be ended early;
    /// asked once per handle.
    fn on_local_locks(&self, fd: BorrowedFd<'_>) -> bool {
        match self.local_locks.load(Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => {
                let yes = sys::fs_type(fd).is_ok_and(sys::local_locks);
                self.local_locks
                    .store(if yes { 1 } else { 2 }, Ordering::Relaxed);
                yes
            }
        }
    }

    /// Says which own wait the call in progress makes (`words` in state `waiting`), or
    /// that it makes none (null), for `cancel`.
    pub(crate) fn publish_own_wait(&self, words: *const own_wait::Words, waiting: u32) {
        self.own_wait_state.store(waiting, Ordering::SeqCst);
        self.own_wait
            .store(words as *mut own_wait::Words, Ordering::SeqCst);
    }

    #[cfg(feature = "capi")]
    /// Cancels the call in progress and every later one, for good: the handle is
    /// being closed.
    pub(crate) fn shut_down(&self) {
        self.shut.store(true, Ordering::SeqCst);
        self.wake_up();
    }

    #[cfg(feature = "capi")]
    /// Waits until no lock or unlock call runs, then refuses every later one
    /// (`EBADF`); looks again at least every `recheck` (a call's end wakes it).
    pub(crate) fn seal(&self, recheck: Duration) {
        loop {
            match self
                .bits
                .compare_exchange(0, SEALED, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return,
                Err(now) if now & SEALED != 0 => return,
                Err(now) => sys::futex_wait(&self.bits, now, recheck),
            }
        }
    }

    /// True once the call in progress was cancelled, or the handle shut down.
    pub(crate) fn cancelled(&self) -> bool {
        self.bits.load(Ordering::SeqCst) & CANCELLED != 0 || self.shut.load(Ordering::SeqCst)
    }

    /// Fails with `ECANCELED` once the call was cancelled, `ETIMEDOUT` once `deadline`
    /// has passed (`name` names the lock in the message): checked before every sleep.
    pub(crate) fn check(&self, deadline: &Deadline, name: &str) -> Result<()> {
        if self.cancelled() {
            return Err(cancelled(name));
        }
        if deadline.expired() {
            return Err(timed_out(name));
        }
        Ok(())
    }

    /// Makes every waiter child of the lock call in progress make `call` on `fd` as soon
    /// as it gets the lock, until [`CallState::clear_after_grant`].
    pub(crate) fn set_after_grant(&self, fd: RawFd, call: KernelCall) {
        *self.after_grant.lock().unwrap_or_else(|p| p.into_inner()) = Some((fd, call));
    }

    /// Undoes [`CallState::set_after_grant`].
    pub(crate) fn clear_after_grant(&self) {
        *self.after_grant.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The eventfd that `cancel` signals, created on first use.
    pub(crate) fn wake_fd(&self) -> Result<BorrowedFd<'_>> {
        if let Some(fd) = self.wake.get() {
            return Ok(fd.as_fd());
        }
        let fd = sys::eventfd().map_err(|e| Error::sys(e, "eventfd", "for cancellation"))?;
        Ok(self.wake.get_or_init(|| fd).as_fd())
    }
}

/// The error of a lock call on `name` whose wait was cancelled.
pub(crate) fn cancelled(name: &str) -> Error {
    Error::new(
        libc::ECANCELED,
        format!("{name}: the wait for the lock was cancelled"),
    )
}

/// The error of a lock call on `name` whose deadline passed.
pub(crate) fn timed_out(name: &str) -> Error {
    Error::new(
        libc::ETIMEDOUT,
        format!("{name}: timed out waiting for the lock"),
    )
}

/// How a kernel wait ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The lock call returned success.
    Granted,
    /// The lock call failed with this errno (EDEADLK from POSIX, ENOLCK, ...).
    Failed(Errno),
    /// The deadline passed; the call was aborted (it may have succeeded just before).
    TimedOut,
    /// `cancel` was called; the call was aborted (it may have succeeded just before).
    Cancelled,
    /// The child ended without saying (killed by someone else, or reaped by the host):
    /// whether the call succeeded is unknown, and the caller tries again.
    Unknown,
}

/// Which kind of waiter child this process can create.
static MECHANISM: AtomicU8 = AtomicU8::new(0);
const UNKNOWN: u8 = 0;
const SHARED: u8 = 1;
const FORKED: u8 = 2;
const PERSISTENT: u8 = 3;
/// The waiting thread's own call, ended by io_uring ([`own_wait`]).
const OWN: u8 = 4;

/// Whether fcntl waits may be the thread's own ([`own_wait`]): not under valgrind
/// (which does not follow a ring's shared memory) nor with `UNILOCK_WAITER` set to
/// `child` or `per-wait`; decided once.
///
/// An atomic, not a `OnceLock`: a fork() in another thread while one decides would
/// leave the child's `OnceLock` initializing for ever, and its first wait blocked on
/// it. Two threads that decide at once decide alike.
fn own_waits() -> bool {
    const NO: u8 = 1;
    const YES: u8 = 2;
    static DECIDED: AtomicU8 = AtomicU8::new(0);
    match DECIDED.load(Ordering::Relaxed) {
        0 => {
            let asked = std::env::var_os("UNILOCK_WAITER");
            let yes = asked.is_none_or(|v| v != "child" && v != "per-wait") && !forked_child_only();
            if !yes {
                own_wait::disable();
            }
            DECIDED.store(if yes { YES } else { NO }, Ordering::Relaxed);
            yes
        }
        decided => decided == YES,
    }
}

/// The descriptor with which a flock wait on `fd` can be the waiting thread's own
/// ([`own_wait::FlockFds`]): where own waits serve (with a deadline, where the
/// process's deadline thread serves), on a file that keeps its locks in the kernel
/// and has no `fcntl` lock on it (the close of the wait's descriptor would drop this
/// process's POSIX locks there, the program's own included). The caller has checked
/// the table for this process's POSIX locks, and registers the wait there.
pub(crate) fn own_flock_fds(
    fd: BorrowedFd<'_>,
    deadline: &Deadline,
    state: &CallState,
) -> Option<own_wait::FlockFds> {
    if !own_waits()
        || (deadline.remaining().is_some() && !own_wait::deadline_thread())
        || !state.on_local_locks(fd)
        || sys::fcntl_locks_on(fd) != Ok(false)
    {
        return None;
    }
    own_wait::FlockFds::new(fd)
}

/// Waits in the kernel for `call` on `fd`, until it is granted, the deadline passes
/// or `state` is cancelled. `owner_is_process` is true for POSIX locks, which only a
/// child sharing the descriptor table can take for us; `flock_fds`, from
/// [`own_flock_fds`], lets a flock wait be the thread's own. Returns `None` when no
/// waiter child can be created here for that kind of lock (the caller then retries
/// with backoff, see [`sleep`]).
pub(crate) fn in_kernel(
    fd: BorrowedFd<'_>,
    call: KernelCall,
    owner_is_process: bool,
    deadline: &Deadline,
    state: &CallState,
    flock_fds: Option<&own_wait::FlockFds>,
) -> Result<Option<Outcome>> {
    let after_grant = *state.after_grant.lock().unwrap_or_else(|p| p.into_inner());
    let own = match &call {
        KernelCall::Fcntl { cmd, fl } if own_waits() && state.on_local_locks(fd) => {
            Some(own_wait::Call::Fcntl {
                fd: fd.as_raw_fd(),
                cmd: *cmd,
                fl,
            })
        }
        KernelCall::Flock { op } => flock_fds.map(|fds| own_wait::Call::Flock { fds, op: *op }),
        KernelCall::Fcntl { .. } => None,
    };
    if let Some(own) = own {
        if let Some(outcome) = own_wait::wait(own, after_grant, deadline, state) {
            MECHANISM.store(OWN, Ordering::Relaxed);
            return Ok(Some(outcome));
        }
    }
    if !forked_child_only() {
        match helper::acquire() {
            Ok(Some(slot)) => {
                MECHANISM.store(PERSISTENT, Ordering::Relaxed);
                let job = helper::Job {
                    fd: fd.as_raw_fd(),
                    call,
                    after_grant,
                };
                let word = slot.state_word() as *const AtomicU32 as *mut AtomicU32;
                state.waiting_on.store(word, Ordering::SeqCst);
                let outcome = helper::run(slot, job, deadline, || state.cancelled());
                state
                    .waiting_on
                    .store(std::ptr::null_mut(), Ordering::SeqCst);
                return Ok(Some(outcome));
            }
            Ok(None) => {}
            Err(libc::EINVAL | libc::ENOSYS | libc::EPERM) => {
                MECHANISM.store(FORKED, Ordering::Relaxed);
            }
            Err(libc::EAGAIN | libc::ENOMEM) => return Ok(None),
            Err(e) => return Err(Error::sys(e, "clone", "(waiter child)")),
        }
    }
    let wake = state.wake_fd()?;
    let mut job = WaiterJob::new(fd.as_raw_fd(), call);
    if let Some((then_fd, then)) = after_grant {
        job = job.after_grant(then_fd, then);
    }
    let waiter = match spawn(&job, owner_is_process) {
        Ok(Some(w)) => w,
        Ok(None) => return Ok(None),
        Err(e) => return Err(Error::sys(e, "clone", "(waiter child)")),
    };
    let exit_fd = waiter.exit_fd.as_fd();
    let fds = [exit_fd.as_raw_fd(), wake.as_raw_fd()];
    let stop = |outcome: Outcome| -> Result<Option<Outcome>> {
        sys::kill_child(waiter.pid);
        match sys::reap(waiter.pid) {
            Ok(_) | Err(libc::ECHILD) => {}
            Err(e) => return Err(Error::sys(e, "waitid", "(waiter child)")),
        }
        Ok(Some(if job.succeeded() {
            Outcome::Granted
        } else {
            outcome
        }))
    };
    loop {
        if state.cancelled() {
            return stop(Outcome::Cancelled);
        }
        let remaining = deadline.remaining();
        if remaining == Some(Duration::ZERO) {
            return stop(Outcome::TimedOut);
        }
        let ready = match sys::poll_readable(fds, remaining) {
            Ok(r) => r,
            Err(e) => {
                stop(Outcome::Cancelled)?;
                return Err(Error::sys(e, "ppoll", "(waiting for the lock)"));
            }
        };
        if ready[0] {
            return Ok(Some(match sys::reap(waiter.pid) {
                Ok(ChildExit::Code(0)) => Outcome::Granted,
                Ok(ChildExit::Code(e)) => Outcome::Failed(e),
                Ok(ChildExit::Killed) | Err(libc::ECHILD) => Outcome::Unknown,
                Err(e) => return Err(Error::sys(e, "waitid", "(waiter child)")),
            }));
        }
        if ready[1] {
            sys::eventfd_drain(wake);
        }
    }
}

/// True when the process runs under valgrind, which aborts the whole program (rather
/// than failing the call) on a `CLONE_VM` child that is not a thread. Its preloaded
/// core library is mapped into every process it runs.
fn under_valgrind() -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|maps| maps.contains("/vgpreload_core"))
}

/// True when waits use the forked child: set by an earlier refusal, or decided here
/// before the first wait by [`under_valgrind`] (read once).
fn forked_child_only() -> bool {
    if MECHANISM.load(Ordering::Relaxed) == UNKNOWN && under_valgrind() {
        MECHANISM.store(FORKED, Ordering::Relaxed);
    }
    MECHANISM.load(Ordering::Relaxed) == FORKED
}

fn spawn(
    job: &WaiterJob,
    owner_is_process: bool,
) -> std::result::Result<Option<sys::Waiter>, Errno> {
    let waiter = spawn_anywhere(job, owner_is_process)?;
    if let (Some(w), Some(cpu)) = (&waiter, sys::current_cpu()) {
        // On the waiting thread's CPU, for the reason given in helper.rs
        // (`follow_caller`); a refusal leaves it where it is.
        let _ = sys::pin_to_cpu(w.pid, cpu);
    }
    Ok(waiter)
}

fn spawn_anywhere(
    job: &WaiterJob,
    owner_is_process: bool,
) -> std::result::Result<Option<sys::Waiter>, Errno> {
    if !forked_child_only() {
        match sys::spawn_shared_waiter(job) {
            Ok(w) => {
                MECHANISM.store(SHARED, Ordering::Relaxed);
                return Ok(Some(w));
            }
            Err(libc::EINVAL | libc::ENOSYS | libc::EPERM) => {
                MECHANISM.store(FORKED, Ordering::Relaxed);
            }
            // No process can be made now (RLIMIT_NPROC, memory): this wait retries
            // with backoff; the next one tries again.
            Err(libc::EAGAIN | libc::ENOMEM) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    if owner_is_process {
        return Ok(None);
    }
    // fork() refused too (seccomp, RLIMIT_NPROC, memory): retry with backoff.
    Ok(sys::spawn_forked_waiter(job).ok())
}

/// Sleeps up to `d` or until `state` is cancelled (for the backoff fallback).
pub(crate) fn sleep(state: &CallState, d: Duration) -> Result<()> {
    let wake = state.wake_fd()?;
    if state.cancelled() {
        return Ok(());
    }
    let ready = sys::poll_readable([wake.as_raw_fd()], Some(d))
        .map_err(|e| Error::sys(e, "ppoll", "(backoff)"))?;
    if ready[0] {
        sys::eventfd_drain(wake);
    }
    Ok(())
}

/// The mechanism in use, for diagnostics and benchmarks: "shared waiter child",
/// "forked waiter child", or "not yet chosen".
#[cfg(feature = "capi")]
pub(crate) fn mechanism() -> &'static str {
    match MECHANISM.load(Ordering::Relaxed) {
        UNKNOWN => "not yet chosen",
        OWN => "the waiting thread's own call, ended by io_uring",
        PERSISTENT => "persistent waiter child per thread (clone CLONE_VM|CLONE_FILES, futex)",
        SHARED => "shared waiter child (clone CLONE_VM|CLONE_FILES)",
        _ => "forked waiter child",
    }
}
