//! Where C handles live, so that a handle pointer used after its close, or one this
//! library never made, is an error (`-EBADF`) rather than a use of freed memory, and so
//! that a close waits for the calls in progress on the handle.
//!
//! A `unilock *` points to a [`unilock`] *slot*. Slots are allocated in chunks that are
//! never freed (chunk `i` has `64 << i` slots), so every pointer into them stays
//! readable for the life of the process, and a pointer is checked against the chunks'
//! address ranges before anything is read through it. A slot points to its [`Lock`].
//!
//! Calls and close:
//! - `unilock_lock` and `unilock_unlock` run on the [`Lock`] directly: its call state
//!   already admits one of them at a time, and a close *seals* that state (see
//!   `CallState::seal`) once no such call runs, so that every later one gets `EBADF`.
//!   This costs the fast path nothing beyond finding the slot.
//! - The other calls count themselves in the slot's `users` while they run, and check
//!   `closed` after counting themselves (and a close sets `closed` before it reads
//!   `users`: one of the two sees the other).
//! - `unilock_close` sets `closed` (a second close gets `EBADF`), ends a wait in
//!   progress as a cancel does ([`Lock::shut_down`]), waits until the lock or unlock in
//!   progress has returned and `users` is zero, then releases and closes the handle's
//!   resources. The [`Lock`] itself, sealed, stays in the slot.
//!
//! A closed slot is *quarantined*: it goes to the back of a list and is given to a new
//! handle only when more than [`QUARANTINE`] closed slots are waiting, oldest first;
//! only then is its old [`Lock`] freed. A stale pointer therefore gets `EBADF`, reading
//! only memory that is still allocated, until at least that many other handles have
//! been closed after it; past that it may name a newer handle.
//!
//! Locking: the quarantine list and the chunk table's growth are guarded by
//! [`REGISTRY`]'s mutex (taken by open and close only); a call on a handle takes no lock
//! here.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use crate::{Error, Lock, Result, sys};

/// An open lock handle: one lock owner on one file. Opaque.
pub struct unilock {
    /// Set once the handle's close has started; cleared when the slot gets a new handle.
    closed: AtomicBool,
    /// Calls other than lock and unlock in progress on the handle.
    users: AtomicU32,
    /// The handle (from `Box::into_raw`); null until the slot is first used. A closed
    /// handle stays here, sealed, until the slot is given to a new one.
    lock: AtomicPtr<Lock>,
}

/// Closed slots kept unused before one is given to a new handle.
const QUARANTINE: usize = 4096;

/// Chunks of slots: chunk `i` holds `FIRST_CHUNK << i` slots.
const CHUNKS: usize = 26;
const FIRST_CHUNK: usize = 64;

/// How long a close sleeps at most before it looks again at the calls it waits for
/// (their wake-ups make it return at once; this bounds a wake-up lost to a race).
const RECHECK: Duration = Duration::from_millis(5);

/// The chunks allocated so far (never freed, never moved), published in order.
static CHUNK_BASES: [AtomicPtr<unilock>; CHUNKS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; CHUNKS];
static CHUNK_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Open and close's bookkeeping: the closed slots in the order they were closed, and
/// the next never-used slot of the last chunk.
struct Registry {
    closed: VecDeque<&'static unilock>,
    next_fresh: usize,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    closed: VecDeque::new(),
    next_fresh: 0,
});

fn chunk_len(i: usize) -> usize {
    FIRST_CHUNK << i
}

/// The slot `l` points to, if it points exactly at a slot of a chunk of this library.
#[inline]
fn find(l: *const unilock) -> Result<&'static unilock> {
    let addr = l as usize;
    let size = std::mem::size_of::<unilock>();
    let count = CHUNK_COUNT.load(Ordering::Acquire);
    for (i, chunk) in CHUNK_BASES[..count].iter().enumerate() {
        let base = chunk.load(Ordering::Acquire) as usize;
        if addr >= base && addr < base + chunk_len(i) * size {
            if (addr - base) % size != 0 {
                break;
            }
            // SAFETY: `l` is the address of a slot of a chunk that is never freed.
            return Ok(unsafe { &*l });
        }
    }
    Err(not_a_handle(l))
}

#[cold]
fn not_a_handle(l: *const unilock) -> Error {
    if l.is_null() {
        return super::boundary::null_argument("the handle");
    }
    Error::new(
        libc::EBADF,
        "not a unilock handle: the pointer was not returned by unilock_open",
    )
}

#[cold]
fn closed_handle() -> Error {
    Error::new(libc::EBADF, "the handle is closed")
}

/// The [`Lock`] of handle `l`, for `unilock_lock` and `unilock_unlock`, whose call
/// state refuses them (`EBADF`) once the handle is closed.
#[inline]
pub(crate) fn lock_of(l: *const unilock) -> Result<&'static Lock> {
    let slot = find(l)?;
    // Checked first so that a closed handle is EBADF whatever the other arguments
    // (the seal below is what keeps a call and a close apart).
    if slot.closed.load(Ordering::Relaxed) {
        return Err(closed_handle());
    }
    let p = slot.lock.load(Ordering::Acquire);
    if p.is_null() {
        return Err(not_a_handle(l));
    }
    // SAFETY: a Lock published in a slot stays allocated until the slot is given to a
    // new handle (after the quarantine).
    Ok(unsafe { &*p })
}

/// A call other than lock and unlock in progress on a handle.
pub(crate) struct Entered {
    _counted: Counted,
    lock: &'static Lock,
}

/// One call counted in a slot's `users`, until dropped.
struct Counted(&'static unilock);

impl Drop for Counted {
    fn drop(&mut self) {
        let before = self.0.users.fetch_sub(1, Ordering::SeqCst);
        if before == 1 && self.0.closed.load(Ordering::SeqCst) {
            sys::futex_wake(&self.0.users);
        }
    }
}

impl Entered {
    /// Enters a call on the handle `l`: `EINVAL` for NULL, `EBADF` for a pointer that
    /// is not a handle, or a handle that is closed or closing.
    pub(crate) fn new(l: *const unilock) -> Result<Entered> {
        let slot = find(l)?;
        slot.users.fetch_add(1, Ordering::SeqCst);
        let counted = Counted(slot);
        if slot.closed.load(Ordering::SeqCst) {
            return Err(closed_handle());
        }
        let p = slot.lock.load(Ordering::Acquire);
        if p.is_null() {
            return Err(not_a_handle(l));
        }
        // SAFETY: as in `lock_of`; and the close waits for this call before it closes.
        let lock = unsafe { &*p };
        Ok(Entered {
            _counted: counted,
            lock,
        })
    }

    /// The handle.
    pub(crate) fn lock(&self) -> &Lock {
        self.lock
    }
}

thread_local! {
    static FORK_GUARD: std::cell::RefCell<Option<std::sync::MutexGuard<'static, Registry>>> =
        const { std::cell::RefCell::new(None) };
}

/// Fork handlers (called from [`crate::inode_table`]'s): the registry is held across
/// `fork()`, so that a child never inherits it locked by a thread it does not have.
pub(crate) fn before_fork() {
    let guard = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    FORK_GUARD.with(|g| *g.borrow_mut() = Some(guard));
}

/// Releases what [`before_fork`] took, in the parent or the child.
pub(crate) fn after_fork() {
    FORK_GUARD.with(|g| g.borrow_mut().take());
}

/// Puts `lock` into a slot and returns the slot's address: a closed slot out of
/// quarantine (freeing the handle it held), else a fresh one. `ENOMEM` when every
/// chunk is in use.
pub(crate) fn publish(lock: Lock) -> Result<*mut unilock> {
    let new = Box::into_raw(Box::new(lock));
    let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    let slot = match reg.closed.len() > QUARANTINE {
        true => reg.closed.pop_front(),
        false => None,
    };
    let slot = match slot {
        Some(s) => s,
        None => match fresh_slot(&mut reg) {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: `new` came from Box::into_raw above and was published nowhere.
                drop(unsafe { Box::from_raw(new) });
                return Err(e);
            }
        },
    };
    let old = slot.lock.swap(new, Ordering::AcqRel);
    slot.closed.store(false, Ordering::Release);
    drop(reg);
    if !old.is_null() {
        // SAFETY: the old handle was closed more than QUARANTINE closes ago and its
        // slot no longer names it; it came from Box::into_raw.
        drop(unsafe { Box::from_raw(old) });
    }
    Ok(slot as *const unilock as *mut unilock)
}

/// The next never-used slot, allocating a chunk when the last one is full.
fn fresh_slot(reg: &mut Registry) -> Result<&'static unilock> {
    let mut count = CHUNK_COUNT.load(Ordering::Acquire);
    if count == 0 || reg.next_fresh == chunk_len(count - 1) {
        if count == CHUNKS {
            return Err(Error::new(libc::ENOMEM, "too many open unilock handles"));
        }
        let chunk: Box<[unilock]> = (0..chunk_len(count))
            .map(|_| unilock {
                closed: AtomicBool::new(true),
                users: AtomicU32::new(0),
                lock: AtomicPtr::new(std::ptr::null_mut()),
            })
            .collect();
        CHUNK_BASES[count].store(Box::leak(chunk).as_mut_ptr(), Ordering::Release);
        count += 1;
        CHUNK_COUNT.store(count, Ordering::Release);
        reg.next_fresh = 0;
    }
    let base = CHUNK_BASES[count - 1].load(Ordering::Acquire);
    // SAFETY: `next_fresh` is below the chunk's length; the chunk lives forever.
    let slot = unsafe { &*base.add(reg.next_fresh) };
    reg.next_fresh += 1;
    Ok(slot)
}

/// Closes the handle `l`, as the module docs describe; returns the error of the
/// release, if any.
pub(crate) fn close(l: *mut unilock) -> Result<()> {
    let slot = find(l)?;
    let p = slot.lock.load(Ordering::Acquire);
    if p.is_null() {
        return Err(not_a_handle(l));
    }
    if slot
        .closed
        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return Err(closed_handle());
    }
    // SAFETY: published in the slot, and freed only when the slot is reused, which
    // cannot happen before this close puts it into quarantine.
    let lock = unsafe { &*p };
    lock.shut_down();
    lock.seal(RECHECK);
    loop {
        let users = slot.users.load(Ordering::SeqCst);
        if users == 0 {
            break;
        }
        sys::futex_wait(&slot.users, users, RECHECK);
    }
    // SAFETY: no call runs on the handle any more and none can start (sealed, and
    // `closed` set): this close is the only user of the Lock until it is freed.
    let result = unsafe { &mut *p }.close_in_place();
    REGISTRY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .closed
        .push_back(slot);
    result
}
