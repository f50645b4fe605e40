//! The thread's own wait: a blocking lock call (`fcntl` for OFD and POSIX locks,
//! `flock`) made by the waiting thread itself, which a deadline or a cancel can still
//! end, with no signal and no process.
//!
//! Why: when the holder and the waiter share a CPU, a raw blocking call costs one
//! switch, from the releasing process to the waiting thread. Any design in which a
//! helper makes the call adds a second switch, from the helper to the thread, and
//! measures about twice the raw call (BENCHMARKS.md, section 2). Here the thread makes
//! the call, so a hand-off costs what the raw call's does.
//!
//! How the call is ended early (Linux 6.7: `IORING_OP_FUTEX_WAIT`):
//! - Each thread that waits has a ring of its own ([`crate::sys::uring`]), which takes no
//!   descriptor, and keeps one request in it: a futex wait on its slot's `abort` word.
//! - An abort (a cancel from any thread, or the deadline thread below) moves the slot's
//!   state from WAITING to ABORTING, makes the restarted call fail (next point), and
//!   wakes the `abort` word. The futex wait completes; its completion is task work for
//!   the waiting thread, which wakes the thread's sleep in the lock call without a
//!   signal. The kernel runs the task work and restarts the call, which fails.
//! - An `fcntl` call reads its `struct flock` again when it is restarted: the struct is
//!   written where the ring's *next completion* will go (a 32-byte completion has its
//!   size), so the completion itself overwrites it with an invalid `l_whence` (every
//!   request's `user_data` here makes it -1), and the call fails with `EINVAL`.
//! - A `flock` call takes its descriptor in a register: it is made on a duplicate of
//!   the handle's descriptor ([`FlockFds`]), which the abort replaces with an `O_PATH`
//!   descriptor ([`unplug`]), on which `flock` fails with `EBADF`. That replacement
//!   closes a descriptor of the file, which drops the POSIX locks this process holds
//!   there: such a wait is made only on a file with no `fcntl` lock, and it is
//!   registered in the process's table, where a POSIX lock about to be taken moves it
//!   to a waiter child first ([`evict`]).
//! - A deadline is kept by the process's *deadline thread* ([`deadline_thread`]), which
//!   aborts the waits whose deadlines have passed; before the process has one (a
//!   thread's first timed wait), an `fcntl` wait submits an `IORING_OP_TIMEOUT`, whose
//!   completion does the same as an abort's, and a `flock` wait uses a waiter child.
//! - A call that got the lock keeps it, even if an abort raced it: the completion then
//!   lands after the call returned.
//!
//! Nothing is left for later: before the call returns to its caller, the thread takes
//! every completion its wait caused (the abort's, after the aborter's wake; a
//! timeout's, removed with `IORING_OP_TIMEOUT_REMOVE` if it has not fired). So no task
//! work of ours reaches a later system call of the host, where it could make a call
//! such as `epoll_wait` fail with `EINTR`. A deadline kept by the deadline thread
//! needs nothing after the grant: the thread's state no longer matches.
//!
//! Where io_uring is refused (`kernel.io_uring_disabled`, a seccomp filter, a kernel
//! before 6.7, valgrind), waits use the waiter children of [`crate::wait`]; so do waits
//! on filesystems that keep their record locks elsewhere (NFS, SMB, FUSE, cluster
//! filesystems: [`crate::sys::local_locks`]), some of which sleep in a way only a fatal
//! signal ends, which a waiter child can be sent.
//!
//! The call is made with `syscall(2)`, which is not a thread cancellation point (the C
//! library's `fcntl` is, for blocking lock commands). A signal handler of the host's
//! that runs on the waiting thread just as a cancel or a deadline ends the wait may
//! see its own blocking calls fail with `EINTR`, as a second signal would make them.

use std::cell::{Cell, UnsafeCell};
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, Ordering,
};
use std::time::Duration;

use crate::helper;
use crate::sys::uring::{self, Cqe, Ring, Timespec};
use crate::sys::{self, Errno, KernelCall};
use crate::wait::{CallState, Deadline, Outcome};

/// Phases of a slot's `state` (its low two bits; the rest counts the waits).
const IDLE: u32 = 0;
const WAITING: u32 = 1;
const ABORTING: u32 = 2;
const PHASE: u32 = 3;
const GENERATION: u32 = 4;

/// The next wait's turn (a multiple of GENERATION).
static TURNS: AtomicU32 = AtomicU32::new(GENERATION);

/// `user_data` of the requests: the tag in the low byte, every other bit set, so that
/// a completion written over a `struct flock` leaves `l_whence` (its bytes 2 and 3) at
/// -1 whatever the byte order.
const fn tag(n: u64) -> u64 {
    0xffff_ffff_ffff_ff00 | n
}
const ABORT: u64 = tag(1);
const TIMER: u64 = tag(2);
const REMOVE: u64 = tag(3);

const _: () = assert!(std::mem::size_of::<libc::flock>() <= std::mem::size_of::<Cqe>());

/// The words a cancel from another thread touches.
#[repr(C)]
pub(crate) struct Words {
    /// Generation and phase: WAITING while the call may be aborted.
    state: AtomicU32,
    /// The word of the ring's futex wait: bumped and woken by an abort.
    abort: AtomicU32,
    /// The descriptor a flock wait's call is made on ([`FlockFds`]); -1 for an
    /// `fcntl` wait.
    flock_fd: AtomicI32,
    /// Set when a POSIX lock of this process is about to be taken on the file of the
    /// flock wait in progress ([`evict`]): the wait goes on through a waiter child.
    evicted: AtomicBool,
}

/// One thread's own-wait state. Never freed: a cancel may still look at the words of a
/// slot whose thread has exited (it then finds no WAITING and does nothing).
struct Slot {
    words: Words,
    /// The process that made the ring (a copy inherited through fork() has none).
    pid: AtomicI32,
    /// The thread's ring and whether its futex wait is armed: only the owning thread
    /// touches them.
    ring: UnsafeCell<Option<Ring>>,
    armed: Cell<bool>,
    /// The deadline of the wait in progress, for the deadline thread: `timer_turn` is
    /// the state that wait has while it may be aborted (0 when there is no deadline),
    /// `timer_until` the deadline in `CLOCK_MONOTONIC` nanoseconds.
    timer_turn: AtomicU32,
    timer_until: AtomicU64,
    /// The slot made before this one ([`SLOTS`]).
    next: AtomicPtr<Slot>,
}

// SAFETY: `words` and `pid` are atomics; `ring` and `armed` are only used by the thread
// that owns the slot (a slot changes owner only through FREE, when no thread uses it).
unsafe impl Sync for Slot {}

impl Slot {
    fn new() -> &'static Slot {
        let slot: &'static Slot = Box::leak(Box::new(Slot {
            words: Words {
                state: AtomicU32::new(IDLE),
                abort: AtomicU32::new(0),
                flock_fd: AtomicI32::new(-1),
                evicted: AtomicBool::new(false),
            },
            pid: AtomicI32::new(0),
            ring: UnsafeCell::new(None),
            armed: Cell::new(false),
            timer_turn: AtomicU32::new(0),
            timer_until: AtomicU64::new(0),
            next: AtomicPtr::new(std::ptr::null_mut()),
        }));
        let me = slot as *const Slot as *mut Slot;
        let mut head = SLOTS.load(Ordering::Acquire);
        loop {
            slot.next.store(head, Ordering::Relaxed);
            match SLOTS.compare_exchange_weak(head, me, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return slot,
                Err(now) => head = now,
            }
        }
    }

    /// The ring of the calling (owning) thread.
    #[allow(clippy::mut_from_ref)]
    fn ring(&self) -> Option<&mut Ring> {
        // SAFETY: only the owning thread calls this, and never holds two results.
        unsafe { (*self.ring.get()).as_mut() }
    }

    /// Arms the futex wait on `abort` unless it is armed; true once the kernel has
    /// taken it. False when it is not taken yet (it stays queued, and the next call
    /// submits it) or the kernel refuses it (then own waits are turned off).
    fn arm(&self, ring: &mut Ring) -> bool {
        loop {
            if !self.armed.get() {
                let val = self.words.abort.load(Ordering::SeqCst);
                ring.push(uring::futex_wait(&self.words.abort, val, ABORT));
                self.armed.set(true);
            }
            if ring.has_queued() && (ring.enter(0).is_err() || ring.has_queued()) {
                return false;
            }
            // A kernel without IORING_OP_FUTEX_WAIT completes it at once with an error;
            // a word that moved since it was read, with EAGAIN (armed again).
            let Some(cqe) = ring.reap() else { return true };
            self.armed.set(false);
            if cqe.user_data != ABORT || cqe.res != -libc::EAGAIN {
                disable();
                return false;
            }
        }
    }
}

/// Whether this process can use its own waits: decided by the first ring.
static AVAILABLE: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

/// Slots of exited threads (never freed; only `try_lock`ed, see helper.rs's FREE).
static FREE: Mutex<Vec<&'static Slot>> = Mutex::new(Vec::new());

/// The calling thread's slot; its destructor unmaps the ring and frees the slot.
struct Mine(Cell<Option<&'static Slot>>);

impl Drop for Mine {
    fn drop(&mut self) {
        let Some(slot) = self.0.take() else { return };
        if slot.pid.load(Ordering::Relaxed) != sys::getpid() {
            return; // a copy made by fork(): the ring was the parent's
        }
        // SAFETY: the owning thread, which is exiting: nothing else uses the ring.
        if let Some(mut ring) = unsafe { (*slot.ring.get()).take() } {
            // The futex wait must not outlive the slot's use by this thread: a cancel
            // of the slot's next owner would complete it, and its task work would reach
            // this thread's last system calls. So it is completed and taken here.
            if slot.armed.get() {
                slot.words.abort.fetch_add(1, Ordering::SeqCst);
                sys::futex_wake(&slot.words.abort);
                for _ in 0..1000 {
                    if ring.reap().is_some_and(|cqe| cqe.user_data == ABORT) {
                        slot.armed.set(false);
                        break;
                    }
                    let _ = ring.enter(1);
                }
            }
            ring.unmap();
            if slot.armed.get() {
                return; // not taken (should not happen): the slot is not reused
            }
        }
        if let Ok(mut free) = FREE.try_lock() {
            free.push(slot);
        }
    }
}

thread_local! {
    static MINE: Mine = const { Mine(Cell::new(None)) };
}

/// Turns own waits off for this process (the caller knows io_uring cannot serve).
pub(crate) fn disable() {
    AVAILABLE.store(NO, Ordering::Relaxed);
}

/// The calling thread's slot with its ring armed; `None` where own waits cannot serve
/// (for good, or for this wait: no memory, no descriptor for the ring's setup).
fn mine() -> Option<&'static Slot> {
    if AVAILABLE.load(Ordering::Relaxed) == NO {
        return None;
    }
    let me = sys::getpid();
    let slot = MINE
        .try_with(|mine| match mine.0.get() {
            Some(s) if s.pid.load(Ordering::Relaxed) == me => s,
            _ => {
                let s = helper::reuse_or(&FREE, Slot::new);
                // SAFETY: the slot was free (or new, or the forked copy of this
                // thread's): no thread uses its ring. A forked copy's mappings were not
                // inherited, so it is dropped without unmapping.
                unsafe { *s.ring.get() = None };
                s.armed.set(false);
                s.pid.store(me, Ordering::Relaxed);
                mine.0.set(Some(s));
                s
            }
        })
        .ok()?;
    if slot.ring().is_none() {
        match Ring::new() {
            Ok(ring) => {
                // SAFETY: the owning thread; no reference to the ring is alive.
                unsafe { *slot.ring.get() = Some(ring) };
            }
            // For now, or for this thread: no memory, no descriptor free for the
            // setup, or the thread's 16 registered rings all taken by the host's own.
            Err(libc::ENOMEM | libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::EBUSY) => {
                return None;
            }
            Err(_) => {
                disable();
                return None;
            }
        }
    }
    // A kernel that refuses the futex wait turns own waits off (in `arm`); one that
    // has not taken it yet leaves this wait to a waiter child.
    if !slot.arm(slot.ring()?) {
        return None;
    }
    AVAILABLE.store(YES, Ordering::Relaxed);
    Some(slot)
}

/// Ends the own wait that `words` serve if its state is still `expected` (a cancel:
/// see the module's documentation). A stale `expected` does nothing.
pub(crate) fn abort(words: &Words, expected: u32) {
    if expected & PHASE != WAITING {
        return;
    }
    if words
        .state
        .compare_exchange(
            expected,
            (expected & !PHASE) | ABORTING,
            Ordering::SeqCst,
            Ordering::SeqCst,
        )
        .is_ok()
    {
        unplug(words);
        words.abort.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(&words.abort);
    }
}

/// Makes the flock call of the wait that `words` serve fail when the kernel restarts
/// it (or makes it for the first time): its descriptor is replaced by an `O_PATH` one,
/// on which `flock` fails with `EBADF`. The replaced descriptor's close drops the
/// POSIX locks this process holds on the file; there are none while the wait is
/// registered in the process's table ([`evict`]). Nothing for an `fcntl` wait.
///
/// [`SPARE`] is checked first: a program that closes descriptors it did not open may
/// have closed it, and its number may now be another file, which must never take the
/// wait's place. Then (or when the replacement fails) a new `O_PATH` descriptor is
/// opened for it.
fn unplug(words: &Words) {
    let fd = words.flock_fd.load(Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    let spare = SPARE.load(Ordering::SeqCst);
    if is_path(spare) && sys::replace_fd(spare, fd) >= 0 {
        return;
    }
    if let Some(fresh) = open_root_path() {
        sys::replace_fd(fresh.as_raw_fd(), fd);
    }
}

/// True when `fd` is an open `O_PATH` descriptor.
fn is_path(fd: RawFd) -> bool {
    fd >= 0 && sys::fd_flags(fd).is_ok_and(|flags| flags & libc::O_PATH != 0)
}

/// A new `O_PATH` descriptor of `/` (close-on-exec), on which `flock` fails.
fn open_root_path() -> Option<OwnedFd> {
    sys::open(c"/", libc::O_PATH | libc::O_CLOEXEC | libc::O_DIRECTORY, 0).ok()
}

/// Ends the flock wait that `words` serve for good, whatever its phase: called under
/// the table's mutex just before this process takes or waits for a POSIX lock on the
/// file, whose close of the wait's descriptor would then drop it. The waiting thread
/// goes on through a waiter child ([`Outcome::Unknown`]).
pub(crate) fn evict(words: &Words) {
    if words.evicted.swap(true, Ordering::SeqCst) {
        return;
    }
    unplug(words);
    abort(words, words.state.load(Ordering::SeqCst));
}

/// In a child just after `fork()`: closes the copies of the descriptors of a flock
/// wait that a thread of the parent was making.
pub(crate) fn forget_in_fork_child(words: &Words) {
    let fd = words.flock_fd.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        sys::close_raw(fd);
    }
}

/// The process's `O_PATH` descriptor of `/`, which an abort puts in place of a flock
/// wait's descriptor ([`unplug`]): opened (close-on-exec) under the table's mutex by
/// a flock wait that is a thread's own, and closed under it once no file is open in
/// the table ([`close_spare`]); -1 when closed.
static SPARE: AtomicI32 = AtomicI32::new(-1);

/// Closes [`SPARE`]: called under the table's mutex when the table has become empty,
/// so no flock wait is in progress (its handle would be in the table).
pub(crate) fn close_spare() {
    let fd = SPARE.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        sys::close_raw(fd);
    }
}

/// [`SPARE`], opened (again) when it is not an `O_PATH` descriptor (a program that
/// closes descriptors it did not open may have closed it); `None` when it cannot be.
fn spare() -> Option<RawFd> {
    let fd = SPARE.load(Ordering::SeqCst);
    if is_path(fd) {
        return Some(fd);
    }
    let new = open_root_path()?.into_raw_fd();
    match SPARE.compare_exchange(fd, new, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => Some(new),
        Err(other) => {
            sys::close_raw(new);
            Some(other)
        }
    }
}

/// The descriptor of a flock wait that is the thread's own: a duplicate of the
/// handle's descriptor, on which the call is made (flock locks belong to the open file
/// description, which the duplicate shares), and which an abort replaces with
/// [`SPARE`] ([`unplug`]), since `flock` takes its descriptor in a register, where no
/// completion can make the restarted call fail. Making it also makes sure [`SPARE`]
/// is open.
///
/// The caller registers the wait in the process's table before the call and drops
/// this under the table's mutex after it: so no POSIX lock of this process is held
/// on the file while the duplicate may be replaced or closed.
pub(crate) struct FlockFds {
    slot: &'static Slot,
    dup: OwnedFd,
}

impl FlockFds {
    /// Makes the descriptors for a flock wait on `fd` by the calling thread; `None`
    /// where own waits cannot serve (the caller uses a waiter child).
    pub(crate) fn new(fd: BorrowedFd<'_>) -> Option<FlockFds> {
        let slot = mine()?;
        let dup = sys::dup(fd, true).ok()?;
        spare()?;
        slot.words.flock_fd.store(dup.as_raw_fd(), Ordering::SeqCst);
        slot.words.evicted.store(false, Ordering::SeqCst);
        Some(FlockFds { slot, dup })
    }

    /// The words that [`evict`] takes.
    pub(crate) fn words(&self) -> &'static Words {
        &self.slot.words
    }
}

impl Drop for FlockFds {
    fn drop(&mut self) {
        self.slot.words.flock_fd.store(-1, Ordering::SeqCst);
    }
}

/// The blocking call of an own wait.
pub(crate) enum Call<'a> {
    /// `fcntl(fd, cmd, fl)`: OFD and POSIX locks.
    Fcntl {
        fd: RawFd,
        cmd: libc::c_int,
        fl: &'a libc::flock,
    },
    /// `flock(fds.dup, op)`; with a deadline only where the deadline thread serves
    /// (no completion can replace the descriptor).
    Flock { fds: &'a FlockFds, op: libc::c_int },
}

/// Waits for the lock call `call` in the calling thread, until it is granted, the
/// deadline passes or `state` is cancelled; `after_grant` is made as soon as the call
/// succeeded. `None` when own waits cannot serve here (the caller uses a waiter
/// child); [`Outcome::Unknown`] when a flock wait was evicted ([`evict`]).
pub(crate) fn wait(
    call: Call<'_>,
    after_grant: Option<(RawFd, KernelCall)>,
    deadline: &Deadline,
    state: &CallState,
) -> Option<Outcome> {
    let slot = mine()?;
    // The deadline thread ends a timed wait with an abort, as a cancel does; without
    // it, a timeout request in the ring, which cannot end a flock wait.
    let timer = deadline.remaining().is_some() && deadline_thread();
    if let Call::Flock { fds, .. } = &call {
        if !std::ptr::eq(fds.slot, slot) || (deadline.remaining().is_some() && !timer) {
            return None;
        }
    }
    loop {
        if state.cancelled() {
            return Some(Outcome::Cancelled);
        }
        let remaining = deadline.remaining();
        if remaining == Some(Duration::ZERO) {
            return Some(Outcome::TimedOut);
        }
        let ring = slot.ring()?;
        if !slot.arm(ring) {
            return None;
        }
        let at = ring.next_completion() as *mut libc::flock;
        if let Call::Fcntl { fl, .. } = &call {
            // SAFETY: `at` is a completion-sized entry of the ring's mapping, which
            // the kernel writes only when a request completes; none can before
            // WAITING below (the futex wait needs an abort, the timeout is not
            // submitted yet).
            unsafe { at.write(**fl) };
        }
        // Turns are unique in the process: a cancel that read the words of one slot
        // and the state of another wait never matches.
        let turn = TURNS.fetch_add(GENERATION, Ordering::Relaxed);
        slot.words.state.store(turn | WAITING, Ordering::SeqCst);
        state.publish_own_wait(&slot.words, turn | WAITING);
        let ts = remaining.filter(|_| !timer).map(|left| Timespec {
            sec: left.as_secs().min(i64::MAX as u64) as i64,
            nsec: left.subsec_nanos() as i64,
        });
        if let Some(ts) = &ts {
            ring.push(uring::timeout(ts, TIMER));
            let _ = ring.enter(0);
        }
        if let (true, Some(left)) = (timer, remaining) {
            arm_timer(slot, turn | WAITING, left);
        }
        // The timeout not taken (no memory): this attempt ends before its call.
        let timer_queued = ring.has_queued();
        let rc = if timer_queued || state.cancelled() {
            Err(libc::ECANCELED)
        } else {
            blocking_call(&call, at)
        };
        if rc.is_ok() {
            if let Some((then_fd, then)) = &after_grant {
                sys::lock_call_once(*then_fd, then);
            }
        }
        state.publish_own_wait(std::ptr::null(), 0);
        slot.timer_turn.store(0, Ordering::SeqCst);
        let aborted = slot
            .words
            .state
            .compare_exchange(turn | WAITING, turn, Ordering::SeqCst, Ordering::SeqCst)
            .is_err();
        let fired = settle(slot, ring, aborted, ts.is_some());
        slot.words.state.store(turn, Ordering::SeqCst);
        if let (Call::Flock { .. }, Err(_)) = (&call, rc) {
            // The descriptor may have been replaced: the call cannot be made again.
            if aborted || slot.words.evicted.load(Ordering::SeqCst) {
                return Some(if state.cancelled() {
                    Outcome::Cancelled
                } else if deadline.expired() {
                    Outcome::TimedOut
                } else {
                    Outcome::Unknown
                });
            }
        }
        match rc {
            Ok(()) => return Some(Outcome::Granted),
            Err(_) if timer_queued => return None,
            // A signal of the host's, a cancel or a deadline (the checks above say
            // which), or an abort meant for an earlier wait: look again.
            Err(libc::EINTR | libc::ECANCELED) => {}
            Err(_) if aborted || fired => {}
            Err(e) => return Some(Outcome::Failed(e)),
        }
    }
}

/// Makes the blocking call; `at` is where an `fcntl` call's struct was written.
fn blocking_call(call: &Call<'_>, at: *mut libc::flock) -> Result<(), Errno> {
    match call {
        Call::Fcntl { fd, cmd, .. } => sys::fcntl_lock_at(*fd, *cmd, at),
        Call::Flock { fds, op } => sys::flock_at(fds.dup.as_raw_fd(), *op),
    }
}

/// Takes every completion of the wait that just ended: the abort's (`aborted`: an
/// aborter moved the state, and wakes the futex right after), and the timeout's
/// (`timed`), which is removed if it has not fired. Re-arms the futex wait if it
/// completed. Returns true when the timeout fired.
fn settle(slot: &Slot, ring: &mut Ring, aborted: bool, timed: bool) -> bool {
    let mut need_abort = aborted;
    let mut need_timer = timed;
    let mut need_remove = false;
    let mut fired = false;
    loop {
        while let Some(cqe) = ring.reap() {
            match cqe.user_data {
                ABORT => {
                    need_abort = false;
                    slot.armed.set(false);
                }
                TIMER => {
                    need_timer = false;
                    fired = cqe.res == -libc::ETIME;
                }
                REMOVE => need_remove = false,
                _ => {}
            }
        }
        if need_timer && !need_remove {
            // The removal completes during the call, and the removed timeout's
            // completion is task work that runs as the call returns: both are then
            // in the queue, without waiting.
            ring.push(uring::timeout_remove(TIMER, REMOVE));
            need_remove = true;
            let _ = ring.enter(0);
            continue;
        }
        if !(need_abort || need_timer || need_remove) {
            break;
        }
        // Submits what is queued and waits for a completion. EINTR (a signal of the
        // host's) only means: look at the queue again; no memory for the submission
        // (EAGAIN, ENOMEM, EBUSY): again a little later.
        if let Err(libc::EAGAIN | libc::ENOMEM | libc::EBUSY) = ring.enter(1) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    slot.arm(ring);
    fired
}

/// Every own-wait slot ever made, newest first, linked through `next`: slots are never
/// freed, so the list only grows (by the number of threads waiting at once).
static SLOTS: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());

/// The deadline thread: the process it serves (0: none), the word it sleeps on, and
/// until when it sleeps (`AWAKE` while it looks at the slots, `FOREVER` with no
/// deadline to wait for).
static TIMER_PID: AtomicI32 = AtomicI32::new(0);
static TIMER_WORD: AtomicU32 = AtomicU32::new(0);
static TIMER_SLEEPS_UNTIL: AtomicU64 = AtomicU64::new(AWAKE);
const AWAKE: u64 = 0;
const FOREVER: u64 = u64::MAX;
/// Held while the thread is started (only `try_lock`ed: one left locked in a forked
/// child costs that child the thread, never a hang).
static TIMER_START: Mutex<()> = Mutex::new(());

thread_local! {
    /// Whether this thread has had a timed own wait before.
    static TIMED_BEFORE: Cell<bool> = const { Cell::new(false) };
}

/// True when the process's deadline thread serves its timed own waits. It is
/// started at a thread's second timed wait, so that a process that waits once (as
/// the command does) has no other thread; false where it cannot be started (the
/// waits then use a timeout request in the ring, or a waiter child for flock).
///
/// Why a thread: a timed flock wait can only be ended by code that replaces its
/// descriptor ([`unplug`]), and a thread, unlike a waiter child, cannot be killed
/// alone. It also spares every timed wait the removal of its timeout request (one
/// system call after the grant).
pub(crate) fn deadline_thread() -> bool {
    let me = sys::getpid();
    if TIMER_PID.load(Ordering::SeqCst) == me {
        return true;
    }
    if !TIMED_BEFORE.try_with(|t| t.replace(true)).unwrap_or(false) {
        return false;
    }
    let Ok(_starting) = TIMER_START.try_lock() else {
        return false;
    };
    if TIMER_PID.load(Ordering::SeqCst) == me {
        return true;
    }
    TIMER_SLEEPS_UNTIL.store(AWAKE, Ordering::SeqCst);
    if sys::spawn_quiet_thread(TIMER_THREAD, deadline_main).is_err() {
        return false;
    }
    TIMER_PID.store(me, Ordering::SeqCst);
    true
}

/// The deadline thread's name (`/proc/PID/task/TID/comm`).
pub(crate) const TIMER_THREAD: &str = "unilock-timer";

/// Gives the wait in progress on `slot`, in state `expected`, a deadline `left` from
/// now: the deadline thread aborts it then ([`abort`]) if it is still in that state.
/// Wakes the thread only when it sleeps past that deadline (or is looking at the
/// slots now): repeated waits with the same timeout make no system call here.
fn arm_timer(slot: &Slot, expected: u32, left: Duration) {
    let left = u64::try_from(left.as_nanos()).unwrap_or(u64::MAX);
    let until = sys::monotonic_ns().saturating_add(left);
    slot.timer_until.store(until, Ordering::SeqCst);
    slot.timer_turn.store(expected, Ordering::SeqCst);
    let sleeps = TIMER_SLEEPS_UNTIL.load(Ordering::SeqCst);
    if sleeps == AWAKE || until < sleeps {
        TIMER_WORD.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake_shared(&TIMER_WORD);
    }
}

/// The deadline thread: aborts every wait whose deadline has passed, then sleeps until
/// the next deadline or until a wait with an earlier one wakes it.
fn deadline_main() {
    loop {
        let seq = TIMER_WORD.load(Ordering::SeqCst);
        TIMER_SLEEPS_UNTIL.store(AWAKE, Ordering::SeqCst);
        let now = sys::monotonic_ns();
        let mut earliest = FOREVER;
        each_slot(|slot| {
            let turn = slot.timer_turn.load(Ordering::SeqCst);
            if turn == 0 {
                return;
            }
            let until = slot.timer_until.load(Ordering::SeqCst);
            // `timer_until` is written before `timer_turn`, and every turn is new: the
            // same turn twice means `until` is that turn's deadline.
            if slot.timer_turn.load(Ordering::SeqCst) != turn {
                return;
            }
            if until <= now {
                abort(&slot.words, turn);
                let _ =
                    slot.timer_turn
                        .compare_exchange(turn, 0, Ordering::SeqCst, Ordering::SeqCst);
            } else {
                earliest = earliest.min(until);
            }
        });
        TIMER_SLEEPS_UNTIL.store(earliest, Ordering::SeqCst);
        if TIMER_WORD.load(Ordering::SeqCst) != seq {
            continue;
        }
        let timeout = (earliest != FOREVER)
            .then(|| Duration::from_nanos(earliest.saturating_sub(sys::monotonic_ns())));
        sys::futex_wait_shared(&TIMER_WORD, seq, timeout);
    }
}

/// In a child just after `fork()`: no wait of the parent's threads goes on here, and
/// the deadline thread is the parent's.
///
/// The child forgets the parent's pid everywhere it marks what belongs to this
/// process (the deadline thread, the slots' rings): a grandchild may be given that pid
/// again once the parent has exited.
pub(crate) fn after_fork_in_child() {
    TIMER_PID.store(0, Ordering::SeqCst);
    each_slot(|slot| {
        slot.timer_turn.store(0, Ordering::SeqCst);
        slot.pid.store(0, Ordering::SeqCst);
    });
}

/// Calls `f` on every slot of [`SLOTS`].
fn each_slot(mut f: impl FnMut(&'static Slot)) {
    let mut p = SLOTS.load(Ordering::Acquire);
    // SAFETY: every pointer in the list is a leaked, never freed Slot.
    while let Some(slot) = unsafe { p.as_ref() } {
        f(slot);
        p = slot.next.load(Ordering::Relaxed);
    }
}
