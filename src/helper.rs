//! Persistent waiter children: one per thread that has had to wait, kept between waits.
//!
//! A blocking lock call cannot be given a timeout or be interrupted without a signal,
//! so it is made by a *waiter child* that the waiting thread can kill (see
//! [`crate::wait`]). Creating that child for every wait and learning of the grant from
//! its exit costs a process creation and exit per wait; this module keeps the child
//! instead:
//!
//! - A thread's first blocking wait has a child of its own, which reports by exiting
//!   (the per-wait child of [`crate::wait`]): a process that waits once leaves no child
//!   sharing its memory, whose CPU every later change of the address space (a program
//!   started, a thread ended) would have to reach. Its second creates the thread's
//!   persistent child with `clone(CLONE_VM | CLONE_FILES | CLONE_CHILD_CLEARTID)`: it
//!   shares the memory and the descriptor table
//!   (so the locks it takes belong to the handle, POSIX ones to this process's table,
//!   exactly as before), has no exit signal, blocks every signal, and names itself
//!   `unilock-waiter`.
//! - Between waits it sleeps in `futex_waitv(2)` on two words: its job counter, and
//!   the thread's `clear_child_tid` word, which the kernel clears when that thread exits
//!   *or calls `execve`*: then it exits at once, so it never keeps a descriptor table
//!   that a new program left behind. It also dies with its thread (`PR_SET_PDEATHSIG`),
//!   and the thread's exit kills and reaps it (a thread-local destructor).
//! - A wait posts the job (descriptor, call, the fair queue's follow-up call) and bumps
//!   the counter; the child makes the blocking call, stores the result, sets the
//!   `state` word to DONE and wakes it (`FUTEX_WAKE`). The waiting thread sleeps on
//!   `state` with the exact time left: one futex wake-up separates the kernel's grant
//!   from the caller's return.
//! - `state` is also the child's `CLONE_CHILD_CLEARTID` word: if the child dies (killed
//!   by anyone), the kernel sets it to 0 and wakes the thread, which then knows.
//! - The child is kept on the CPU of the thread it serves (`sched_setaffinity`, asked
//!   again only when the thread has moved): see [`Slot::follow_caller`].
//! - A deadline or a cancel (which sets the POKE bit of `state` and wakes it) kills the
//!   child with SIGKILL, which aborts the kernel wait; the thread waits until the kernel
//!   has cleared `state`, reaps it, and creates a new child at its next wait.
//!
//! Slots (the words, the job and the child's stack) are never freed while any thread
//! could still touch them: a thread that exits puts its slot on a free list for the
//! next thread. A cancel from another thread may poke a slot that has since been reused;
//! that only wakes its waiter once, which looks at its own state again.

use std::cell::{Cell, UnsafeCell};
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicPtr, AtomicU32, Ordering};
use std::time::Duration;

use crate::sys::{self, Errno, KernelCall};
use crate::wait::{Deadline, Outcome};

/// `state`: the child has ended (the kernel's `CLONE_CHILD_CLEARTID` write).
const DEAD: u32 = 0;
/// `state`: the child sleeps, waiting for a job.
const IDLE: u32 = 1;
/// `state`: the child runs a job.
const RUNNING: u32 = 2;
/// `state`: the job's call returned; its result is in `result`.
const DONE: u32 = 3;
/// `state` bit: a cancel asks the waiting thread to look at its call again.
pub(crate) const POKE: u32 = 0x100;

/// The child's name in `/proc/PID/comm` (listings map it to its host).
pub(crate) const COMMAND: &str = "unilock-waiter";
const COMMAND_C: &[u8; 15] = b"unilock-waiter\0";

/// Stack size of a waiter child: a loop of a few system calls.
const STACK: usize = 16 * 1024;

/// What the child does for one wait.
#[derive(Clone, Copy)]
pub(crate) struct Job {
    /// The descriptor and the blocking call on it.
    pub fd: RawFd,
    pub call: KernelCall,
    /// A non-blocking call made as soon as `call` succeeded (the fair queue's).
    pub after_grant: Option<(RawFd, KernelCall)>,
}

/// One thread's waiter child: the words it shares with the thread, its job, its stack.
#[repr(C)]
pub(crate) struct Slot {
    /// IDLE, RUNNING, DONE (plus POKE), or DEAD once the kernel cleared it.
    state: AtomicU32,
    /// Bumped by the thread for each job; the child sleeps on it.
    seq: AtomicU32,
    /// The value of `seq` when the child was created (it serves every later value).
    base: AtomicU32,
    /// The call's result: 1 while it runs, then 0 or a negative errno.
    result: AtomicI64,
    /// The owning thread's `clear_child_tid` word.
    owner_word: AtomicPtr<u32>,
    /// This process (the child checks it is still its parent).
    parent: AtomicI32,
    /// The child's pid, 0 when there is none (touched only by the owning thread).
    pid: AtomicI32,
    /// The CPU the child is kept on, -1 before its first job (touched only by the
    /// owning thread).
    cpu: AtomicI32,
    /// Written by the owning thread while the child is IDLE, read by the child once
    /// `seq` moved (release/acquire on `seq`).
    job: UnsafeCell<Job>,
    stack: UnsafeCell<[u128; STACK / 16]>,
}

// SAFETY: every field but `job` and `stack` is atomic; `job` is written only by the
// owning thread while no job runs and read by the child after `seq` (acquire) shows
// the write; `stack` is used only by the child, which the owner never lets outlive it.
unsafe impl Sync for Slot {}

impl Slot {
    fn new() -> &'static Slot {
        Box::leak(Box::new(Slot {
            state: AtomicU32::new(DEAD),
            seq: AtomicU32::new(0),
            base: AtomicU32::new(0),
            result: AtomicI64::new(1),
            owner_word: AtomicPtr::new(std::ptr::null_mut()),
            parent: AtomicI32::new(0),
            pid: AtomicI32::new(0),
            cpu: AtomicI32::new(-1),
            job: UnsafeCell::new(Job {
                fd: -1,
                call: KernelCall::Flock { op: 0 },
                after_grant: None,
            }),
            stack: UnsafeCell::new([0; STACK / 16]),
        }))
    }

    /// The word a cancel pokes (see [`poke`]).
    pub(crate) fn state_word(&'static self) -> &'static AtomicU32 {
        &self.state
    }

    /// True when the child lives (or at least has not been seen to end).
    fn alive(&self) -> bool {
        self.pid.load(Ordering::Relaxed) != 0 && self.state.load(Ordering::Acquire) & !POKE != DEAD
    }

    /// Creates the child. `Err` as `clone(2)` fails.
    fn spawn(&'static self, owner_word: *mut u32) -> Result<(), Errno> {
        self.owner_word.store(owner_word, Ordering::Relaxed);
        self.parent.store(sys::getpid(), Ordering::Relaxed);
        self.base
            .store(self.seq.load(Ordering::Relaxed), Ordering::Relaxed);
        self.state.store(IDLE, Ordering::SeqCst);
        let top = self.stack.get().wrapping_add(1) as *mut libc::c_void;
        match sys::spawn_helper(
            child_main,
            top,
            self as *const Slot as *const _,
            &self.state,
        ) {
            Ok(pid) => {
                self.pid.store(pid, Ordering::Relaxed);
                self.cpu.store(-1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.state.store(DEAD, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Ends the child: kills it, waits until the kernel has cleared `state` (it then no
    /// longer touches the slot), and reaps it.
    fn end_child(&self) {
        let pid = self.pid.swap(0, Ordering::Relaxed);
        if pid == 0 {
            return;
        }
        sys::kill_child(pid);
        loop {
            let s = self.state.load(Ordering::Acquire);
            if s & !POKE == DEAD {
                break;
            }
            sys::futex_wait_shared(&self.state, s, Some(Duration::from_millis(100)));
        }
        let _ = sys::reap(pid);
    }

    /// Keeps the child on the CPU the calling thread runs on (it moves only when the
    /// thread did). The kernel wakes a sleeping task on the CPU it last ran on when it
    /// can: the child, blocked in the lock call on the thread's CPU, is woken where a
    /// thread blocked in that call itself would have been, and its wake-up of the
    /// thread, which sleeps on that CPU too, is then a switch on one CPU rather than
    /// a wake-up of another, idle one. A refusal (a seccomp filter, a cpuset without
    /// that CPU) leaves the child where it is, and is not asked again before the
    /// thread moves.
    fn follow_caller(&self) {
        let Some(cpu) = sys::current_cpu() else {
            return;
        };
        let Ok(cpu32) = i32::try_from(cpu) else {
            return;
        };
        if self.cpu.load(Ordering::Relaxed) != cpu32 {
            let _ = sys::pin_to_cpu(self.pid.load(Ordering::Relaxed), cpu);
            self.cpu.store(cpu32, Ordering::Relaxed);
        }
    }

    /// Reaps a child that ended by itself.
    fn bury(&self) {
        let pid = self.pid.swap(0, Ordering::Relaxed);
        if pid != 0 {
            let _ = sys::reap(pid);
        }
    }
}

/// The body of a waiter child: serve jobs until the owning thread exits or execs.
/// Runs on the slot's stack in the parent's memory with every signal blocked, and
/// makes only raw system calls (it must not touch the parent's `errno` or TLS).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is a leaked (never freed) Slot.
    let slot = unsafe { &*(arg as *const Slot) };
    sys::raw_syscall3(
        libc::SYS_prctl,
        libc::PR_SET_PDEATHSIG as usize,
        libc::SIGKILL as usize,
        0,
    );
    if sys::raw_syscall3(libc::SYS_getppid, 0, 0, 0) != slot.parent.load(Ordering::Relaxed) as isize
    {
        return libc::ESRCH;
    }
    sys::raw_syscall3(
        libc::SYS_prctl,
        libc::PR_SET_NAME as usize,
        COMMAND_C.as_ptr() as usize,
        0,
    );
    // SAFETY: the owning thread's clear_child_tid word, which lives as long as the
    // thread; the thread kills this child before it exits, and after an execve the
    // word's memory stays mapped in this (old) address space, which this child holds.
    let owner = unsafe { AtomicU32::from_ptr(slot.owner_word.load(Ordering::Relaxed)) };
    let tid = owner.load(Ordering::Acquire);
    let mut served = slot.base.load(Ordering::Relaxed);
    loop {
        let seq = slot.seq.load(Ordering::Acquire);
        if seq != served {
            served = seq;
            // SAFETY: the owner wrote the job before bumping `seq` (release) and does
            // not touch it again until this job is DONE.
            let job = unsafe { *slot.job.get() };
            let r = sys::raw_lock_call(job.fd, &job.call);
            if r == 0 {
                if let Some((fd, call)) = &job.after_grant {
                    sys::raw_lock_call(*fd, call);
                }
            }
            slot.result.store(r as i64, Ordering::SeqCst);
            slot.state.store(DONE, Ordering::SeqCst);
            sys::futex_wake_shared(&slot.state);
            continue;
        }
        if tid == 0 || owner.load(Ordering::Acquire) != tid {
            return 0; // the thread exited or replaced its program
        }
        sys::futex_wait_either(&slot.seq, seq, owner, tid);
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
extern "C" fn child_main(_arg: *mut libc::c_void) -> libc::c_int {
    libc::ENOSYS
}

/// Slots of exited threads, for the next thread (never freed). Only `try_lock`ed:
/// a fork in another thread cannot leave a child blocked on it.
static FREE: Mutex<Vec<&'static Slot>> = Mutex::new(Vec::new());

/// A slot from `free` (slots of exited threads, never freed), or a new one. The list is
/// only `try_lock`ed: one left locked in a forked child by a thread the child does not
/// have costs a new slot, never a hang.
pub(crate) fn reuse_or<T>(free: &Mutex<Vec<&'static T>>, new: fn() -> &'static T) -> &'static T {
    free.try_lock()
        .ok()
        .and_then(|mut f| f.pop())
        .unwrap_or_else(new)
}

/// The calling thread's slot; its destructor ends the child and frees the slot.
struct Mine(Cell<Option<&'static Slot>>);

impl Drop for Mine {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            if slot.parent.load(Ordering::Relaxed) != sys::getpid() {
                return; // a copy made by fork(): the child is the parent's
            }
            slot.end_child();
            if let Ok(mut free) = FREE.try_lock() {
                free.push(slot);
            }
        }
    }
}

thread_local! {
    static MINE: Mine = const { Mine(Cell::new(None)) };
    /// Whether this thread has had a contended wait before: its first is made by a
    /// child of its own, the persistent child comes at its second.
    static WAITED: Cell<bool> = const { Cell::new(false) };
}

/// Whether this kernel and C library allow persistent children: `futex_waitv(2)` and
/// a `clear_child_tid` word that `prctl` reports. Decided once.
fn supported() -> bool {
    static SUPPORTED: AtomicI32 = AtomicI32::new(-1);
    match SUPPORTED.load(Ordering::Relaxed) {
        -1 => {
            let yes = std::env::var_os("UNILOCK_WAITER").is_none_or(|v| v != "per-wait")
                && sys::have_futex_waitv()
                && sys::tid_address().is_some();
            SUPPORTED.store(yes as i32, Ordering::Relaxed);
            yes
        }
        v => v == 1,
    }
}

/// The calling thread's slot with a live child: `Ok(None)` for the thread's first wait
/// and when persistent children are not available here (the caller makes a child for
/// this wait instead), `Err` as `clone(2)` failed.
pub(crate) fn acquire() -> Result<Option<&'static Slot>, Errno> {
    if !supported() {
        return Ok(None);
    }
    if !WAITED.try_with(|w| w.replace(true)).unwrap_or(true) {
        return Ok(None);
    }
    let me = sys::getpid();
    let slot = MINE.try_with(|mine| {
        match mine.0.get() {
            Some(s) if s.parent.load(Ordering::Relaxed) == me => s,
            // None yet, or a copy inherited through fork() whose child is the parent's.
            _ => {
                let s = reuse_or(&FREE, Slot::new);
                s.pid.store(0, Ordering::Relaxed);
                s.parent.store(me, Ordering::Relaxed);
                mine.0.set(Some(s));
                s
            }
        }
    });
    // The thread is exiting (its thread-locals are being destroyed): no slot.
    let Ok(slot) = slot else { return Ok(None) };
    if !slot.alive() {
        // The thread's clear_child_tid word, asked only when a child is made.
        let Some(owner_word) = sys::tid_address() else {
            return Ok(None);
        };
        slot.bury();
        slot.spawn(owner_word)?;
    }
    Ok(Some(slot))
}

/// Pokes the waiting thread that sleeps on `word` (a slot's state): a cancel.
pub(crate) fn poke(word: &AtomicU32) {
    word.fetch_or(POKE, Ordering::SeqCst);
    sys::futex_wake_shared(word);
}

/// Runs `job` on `slot`'s child until it returns, the deadline passes or `cancelled()`
/// says the call was cancelled (a cancel pokes the slot's state word, published by the
/// caller before this runs).
pub(crate) fn run(
    slot: &'static Slot,
    job: Job,
    deadline: &Deadline,
    cancelled: impl Fn() -> bool,
) -> Outcome {
    slot.follow_caller();
    // SAFETY: the child is IDLE: it reads the job only after `seq` moves below.
    unsafe { *slot.job.get() = job };
    slot.result.store(1, Ordering::SeqCst);
    slot.state.store(RUNNING, Ordering::SeqCst);
    slot.seq.fetch_add(1, Ordering::Release);
    sys::futex_wake(&slot.seq);
    let abort = |why: Outcome| {
        slot.end_child();
        if slot.result.load(Ordering::SeqCst) == 0 {
            Outcome::Granted
        } else {
            why
        }
    };
    loop {
        if cancelled() {
            return abort(Outcome::Cancelled);
        }
        let remaining = deadline.remaining();
        if remaining == Some(Duration::ZERO) {
            return abort(Outcome::TimedOut);
        }
        let s = slot.state.load(Ordering::Acquire);
        match s & !POKE {
            DONE => {
                slot.state.store(IDLE, Ordering::SeqCst);
                return match slot.result.load(Ordering::SeqCst) {
                    0 => Outcome::Granted,
                    r => Outcome::Failed((-r) as Errno),
                };
            }
            DEAD => {
                // Killed by someone else: whether the call succeeded is in `result`.
                slot.bury();
                return if slot.result.load(Ordering::SeqCst) == 0 {
                    Outcome::Granted
                } else {
                    Outcome::Unknown
                };
            }
            _ => sys::futex_wait_shared(&slot.state, s, remaining),
        }
    }
}
