//! Fair hand-off ([`crate::Flags::FAIR`]): a first-come, first-served queue of the fair
//! lock calls on one file, kept entirely in kernel locks on the file's reserved offsets
//! (at or above 2^62, which no user lock reaches), so that it needs no sidecar file and
//! the kernel cleans up after any participant that dies.
//!
//! # Layout
//!
//! Each lock family has its own queue (flock and fcntl locks never conflict, so their
//! waiters need not wait for each other): it starts at `base` = 2^62 for OFD and POSIX
//! handles, 2^62 + 2^60 for FLOCK handles, and spans 2^60 bytes:
//!
//! ```text
//! base          the dispenser D: held exclusively while a ticket is handed out
//! base + 1 ...  tickets: a lock on byte base + k is a place in line, in the mode asked
//!               for (a read lock for a shared call, a write lock for an exclusive one)
//! ```
//!
//! Every queue lock is an OFD lock taken through the handle's *queue description*: a
//! private open file description of the file, opened read-write through
//! `/proc/self/fd` on the first fair call. So each handle is its own owner in the
//! queue whatever its backend (two POSIX handles of one process included, although
//! the kernel sees one POSIX owner for both), and the queue's locks belong to this
//! process alone: the description is close-on-exec and is closed in a child right
//! after `fork()` (see [`after_fork_in_child`]), so no other process keeps it, or a
//! place in line, alive.
//!
//! # The protocol: a lock call on a handle that holds nothing on the file
//!
//! 1. *Fast path*: `F_OFD_GETLK` on the queue for the call's mode. If nothing there
//!    conflicts (D is free; no ticket at all for an exclusive call, no exclusive ticket
//!    for a shared one), try the user lock without waiting; done if it is granted. A
//!    try (timeout 0) that gets no further fails with `EAGAIN`.
//! 2. Take D (a short spin, then a wait in the kernel like any other wait).
//! 3. Under D, find the tail: the highest ticket byte another owner holds
//!    (`F_OFD_GETLK` upwards from base + 1, jumping past each lock found). If no ticket
//!    conflicts with the call's mode, try the user lock without waiting; done if it is
//!    granted.
//! 4. Lock ticket t = tail + 1 in the call's mode; release D.
//! 5. Wait for the predecessors: take the call's mode on [base + 1, t). The kernel
//!    grants it once no earlier ticket conflicts: an exclusive call waits for every
//!    earlier ticket, a shared call only for the earlier exclusive ones.
//! 6. The call is now at the head: it takes the user lock as a call without the flag
//!    does (waiting for holders of any kind, with in-process arbitration, deadlock
//!    detection, the deadline and cancellation).
//! 7. Release everything it holds in the queue (one `F_UNLCK` on [base, base + 2^60)),
//!    whether step 6 succeeded or failed: the next in line becomes the head. When a
//!    waiter child gets the lock in step 6, the child itself makes this call right
//!    after its lock call returns, so that the next in line moves up while this
//!    process is still waking up (the call is made again on return, harmlessly).
//!
//! A handle that already holds a lock on the file, or whose thread holds one of the
//! same family through another handle, skips the queue: it converts or extends what it
//! holds, and queueing it behind a waiter that may be waiting for that very lock would
//! deadlock. So a call in line holds nothing, through its handle or its thread, that a
//! waiter ahead of it could be waiting for.
//!
//! # Why it is fair
//!
//! - *Tickets follow arrival.* D makes steps 3 and 4 atomic among fair callers, and a
//!   ticket is taken above every live ticket, so the order of live tickets is the order
//!   in which they were taken.
//! - *The releaser never barges.* A ticket is released only once its owner holds the
//!   user lock (or gave up). A caller that arrives while W holds a ticket, such as a
//!   releaser coming straight back, sees W's ticket in step 1 (or D, while W is
//!   enqueuing), gets a higher ticket in step 4 and waits for W's in step 5: it cannot
//!   reach the user lock before W has it.
//! - *At most N-1 grants pass a waiter.* The grants that can go before W once W holds
//!   ticket t are those of callers with a ticket below t, and of fast-path callers
//!   whose step 1 came before W took D. Each other handle accounts for at most one of
//!   them (a handle runs one lock call at a time) and any later call of it queues
//!   behind t.
//! - *Shared waiters queued together are granted together.* Shared tickets do not
//!   conflict with shared waits: consecutive shared callers pass step 5 at once and
//!   wait for the user lock side by side.
//!
//! # Why it never wedges
//!
//! All the queue's state is kernel locks owned by queue descriptions that only their
//! process refers to, so everything a participant holds vanishes when it dies: the D of
//! a caller dying in steps 2-4, the ticket of a waiter (step 5) or of the head (step
//! 6). A holder holds no ticket (step 7), and its user lock vanishes as usual. Every
//! wait in steps 2, 5 and 6 is a blocking kernel call that the kernel re-evaluates when
//! a conflicting lock goes away, so the survivors move up. A call that times out or is
//! cancelled ends its waiter child (as every wait does, see [`crate::wait`]) and then
//! releases all it holds in the queue, including a lock the child got just before it
//! was killed.
//!
//! # Limits
//!
//! Fairness is per file, not per range: one queue orders the fair calls on a file
//! whatever their ranges, so a fair call may wait behind an earlier fair waiter for a
//! range it does not need (and a program whose thread holds a range while it waits for
//! another thread's fair call on the same file can deadlock where it would not without
//! the flag). A program that locks the file "to the end" with a raw
//! `fcntl` call (length 0) also covers the queue's offsets: fair callers then wait for
//! it before entering the queue, and enter in no particular order. The queue
//! description needs write permission on the file (tickets and D are write locks) and
//! a mounted /proc: a fair handle on a file it may only read, a directory, or a file on
//! a read-only file system gets the error from that `open`. With
//! [`Flags::UNLINK`](crate::Flags::UNLINK), a release does not delete the file while anyone is in
//! line for it ([`anyone_in_line`]); a waiter that enters the line at the moment the
//! file is deleted moves to the new file's queue.

use std::cell::RefCell;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::backend;
use crate::inode_table::{self, Family, HandleId, InodeKey, Table};
use crate::range::RESERVED;
use crate::sys::{self, Errno, KernelCall};
use crate::wait::{self, CallState, Deadline, Outcome};
use crate::{Error, Mode, Result, describe};

/// The bytes each family's queue spans.
const SPAN: u64 = 1 << 60;

/// How many times taking D is retried, yielding in between, before a waiter child
/// waits for it: D is held for a few system calls at a time.
const SPINS: u32 = 64;

/// Backoff bounds where no waiter child can be made (see [`wait::in_kernel`]).
const BACKOFF_FIRST: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(25);

/// Where a family's queue lies.
#[derive(Clone, Copy)]
struct Layout {
    /// The dispenser D.
    dispenser: u64,
    /// The first ticket byte.
    first: u64,
    /// One past the last ticket byte.
    end: u64,
}

impl Layout {
    fn of(family: Family) -> Layout {
        let base = match family {
            Family::Fcntl => RESERVED,
            // DOTLOCK handles never queue (refused at open); the FLOCK queue's place.
            Family::Flock | Family::Dotlock => RESERVED + SPAN,
        };
        Layout {
            dispenser: base,
            first: base + 1,
            end: base + SPAN,
        }
    }
}

/// The lock call that enters the queue: what the handle asks for, and on what.
pub(crate) struct Entry<'a> {
    /// The handle's own descriptor (the queue description is opened through it).
    pub fd: BorrowedFd<'a>,
    pub key: InodeKey,
    pub handle: HandleId,
    pub family: Family,
    pub mode: Mode,
    /// The file, for messages.
    pub name: &'a str,
}

/// A fair handle's place in the file's queue: its queue description, opened on the
/// first fair call. The mutex is taken only by the handle's lock call (one at a time
/// per handle) and never contended; the lock order is this mutex, then the process
/// table's (a lock call takes the table while it holds this), then the registry of
/// queue descriptions.
pub(crate) struct Queue {
    private: Mutex<Option<Private>>,
}

/// A queue description, registered for closing in forked children while it is open.
struct Private {
    /// `None` only while being dropped.
    fd: Option<OwnedFd>,
    key: InodeKey,
    /// The process that opened it: in a forked child the descriptor was closed right
    /// after the fork (its number may name another file since) and is never used.
    pid: i32,
}

impl Private {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_ref().expect("open until dropped").as_fd()
    }

    fn inherited(&self) -> bool {
        self.pid != sys::getpid()
    }

    /// The descriptor, unregistered, for closing; `None` in a forked child.
    fn into_fd(mut self) -> Option<OwnedFd> {
        let fd = self.fd.take()?;
        if self.inherited() {
            std::mem::forget(fd);
            return None;
        }
        unregister(fd.as_raw_fd());
        Some(fd)
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            if self.inherited() {
                std::mem::forget(fd);
            } else {
                unregister(fd.as_raw_fd());
            }
        }
    }
}

impl Queue {
    /// A queue handle that has not entered any queue yet.
    pub(crate) fn new() -> Queue {
        Queue {
            private: Mutex::new(None),
        }
    }

    /// Takes the lock fairly: `take` is the handle's own lock call (with the deadline
    /// it should use), made when the protocol in the module docs lets this call have
    /// the lock. Fails as `take` does, or with `EAGAIN` (a try behind earlier fair
    /// waiters), `ETIMEDOUT` and `ECANCELED` while queued, or the error of the queue's
    /// own system calls.
    pub(crate) fn lock(
        &self,
        e: &Entry<'_>,
        deadline: &Deadline,
        call: &CallState,
        mut take: impl FnMut(&Deadline) -> Result<()>,
    ) -> Result<()> {
        if skips_queue(e) {
            return take(deadline);
        }
        let mut private = self.private.lock().unwrap_or_else(|p| p.into_inner());
        let q = open_private(&mut private, e)?;
        let at = Layout::of(e.family);
        let try_now = Deadline::after(Some(Duration::ZERO));
        // 1. The fast path; a try goes no further.
        if conflict(q, at.dispenser, at.end, e.mode, e.name)?.is_none() {
            match take(&try_now) {
                Err(err) if err.errno() == libc::EAGAIN => {}
                done => return done,
            }
        }
        if deadline.is_try() {
            return Err(Error::new(
                libc::EAGAIN,
                format!(
                    "{}: the lock is held, or earlier fair waiters queue for it",
                    e.name
                ),
            ));
        }
        // From here on, everything taken in the queue is released on return (7).
        let _held = Held { q, at };
        // 2. The dispenser.
        acquire(
            q,
            at.dispenser,
            at.first,
            Mode::Exclusive,
            SPINS,
            deadline,
            call,
            e,
        )?;
        // 3. The tail, and the last chance to go without queueing.
        let tail = tail(q, at, e.name)?;
        if tail.is_none_or(|t| e.mode == Mode::Shared && !t.exclusive) {
            match take(&try_now) {
                Err(err) if err.errno() == libc::EAGAIN => {}
                done => return done,
            }
        }
        // 4. The ticket.
        let ticket = tail.map_or(at.first, |t| t.last + 1);
        if ticket >= at.end {
            return Err(Error::new(
                libc::ENOLCK,
                format!("{}: the fair queue is out of tickets", e.name),
            ));
        }
        match set(q, ticket, ticket + 1, Some(e.mode)) {
            Ok(()) => {}
            Err(libc::EAGAIN | libc::EACCES) => return Err(intruder(e.name)),
            Err(err) => return Err(Error::sys(err, "fcntl(F_OFD_SETLK)", e.name)),
        }
        set(q, at.dispenser, at.first, None)
            .map_err(|err| Error::sys(err, "fcntl(F_OFD_SETLK)", e.name))?;
        // 5. The predecessors.
        if ticket > at.first {
            acquire(q, at.first, ticket, e.mode, 0, deadline, call, e)?;
        }
        // 6. The head. A waiter child that gets the lock releases the queue's locks
        // at once (step 7, done again below), so that the next in line moves up
        // while this process wakes.
        let _release_early = ReleaseOnGrant::new(call, q, at);
        take(deadline)
    }

    /// Closes the queue description as the handle closes (the caller holds the
    /// process table): deferred, like the handle's own descriptor, while this process
    /// holds POSIX locks on the file, since closing any descriptor of a file drops them.
    pub(crate) fn close(&mut self, table: &mut Table) {
        let private = self.private.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = private.take() {
            defer_close(p, table);
        }
    }
}

/// True when a fair caller is in line for the file, or entering the line, in either
/// family's queue (`fd`: any descriptor of the file without queue locks of its own).
/// An UNLINK release does not delete a file that fair waiters are in line for.
pub(crate) fn anyone_in_line(fd: BorrowedFd<'_>) -> bool {
    let start = Layout::of(Family::Fcntl).dispenser;
    let end = Layout::of(Family::Flock).end;
    conflict(fd, start, end, Mode::Exclusive, "").map_or(true, |found| found.is_some())
}

/// True when the call skips the queue: the handle holds a lock on the file, or its
/// thread holds one of the same family through another handle (a lock of the other
/// family can neither block this call nor be waited for in this queue).
fn skips_queue(e: &Entry<'_>) -> bool {
    let me = sys::thread_id();
    inode_table::table().get(e.key).is_some_and(|inode| {
        inode.holdings.iter().any(|h| {
            !h.ranges.is_empty()
                && (h.handle == e.handle || (h.thread == me && Family::from(h.backend) == e.family))
        })
    })
}

/// Closes a queue description, or defers its close (see [`Queue::close`]).
fn defer_close(p: Private, table: &mut Table) {
    let key = p.key;
    if let Some(fd) = p.into_fd() {
        if table.has_posix_locks(key) {
            table.inode(key).deferred.push(fd);
        }
    }
}

/// The handle's queue description for `e`'s file, opened if needed (again in a forked
/// child, or after an UNLINK handle moved to a new file).
fn open_private<'a>(slot: &'a mut Option<Private>, e: &Entry<'_>) -> Result<BorrowedFd<'a>> {
    if slot
        .as_ref()
        .is_some_and(|p| p.inherited() || p.key != e.key)
    {
        let old = slot.take().expect("checked above");
        defer_close(old, &mut inode_table::table());
    }
    if slot.is_none() {
        let path = CString::new(format!("/proc/self/fd/{}", e.fd.as_raw_fd()))
            .expect("no NUL in a number");
        let flags = libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
        let fd = sys::open(&path, flags, 0).map_err(|err| open_error(err, e.name))?;
        let st = sys::fstat(fd.as_fd()).map_err(|err| Error::sys(err, "fstat", e.name))?;
        if (st.st_dev, st.st_ino) != (e.key.dev, e.key.ino) {
            return Err(Error::new(
                libc::ENOLCK,
                format!("{}: /proc/self/fd did not reopen the same file", e.name),
            ));
        }
        register(fd.as_raw_fd());
        *slot = Some(Private {
            fd: Some(fd),
            key: e.key,
            pid: sys::getpid(),
        });
    }
    Ok(slot.as_ref().expect("opened above").fd())
}

fn open_error(err: Errno, name: &str) -> Error {
    let why = match err {
        libc::ENOENT => "/proc is not mounted".to_string(),
        libc::EACCES | libc::EPERM => "no write permission".to_string(),
        libc::EROFS => "a read-only file system".to_string(),
        libc::EISDIR => "a directory".to_string(),
        _ => describe(err).to_string(),
    };
    Error::new(
        err,
        format!(
            "{name}: UNILOCK_FAIR opens the file read-write through /proc/self/fd for its \
             queue (write locks at offsets above 2^62), which failed: {why}"
        ),
    )
}

fn intruder(name: &str) -> Error {
    Error::new(
        libc::ENOLCK,
        format!(
            "{name}: the fair queue's reserved offsets (2^62 and above) are locked by a \
             program that does not follow its protocol"
        ),
    )
}

/// Releases everything the queue description holds in a queue when dropped.
struct Held<'a> {
    q: BorrowedFd<'a>,
    at: Layout,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let _ = set(self.q, self.at.dispenser, self.at.end, None);
    }
}

/// Makes the waiter children of the lock call release the queue's locks as soon as
/// they get the lock, while it lives.
struct ReleaseOnGrant<'a>(&'a CallState);

impl<'a> ReleaseOnGrant<'a> {
    fn new(call: &'a CallState, q: BorrowedFd<'_>, at: Layout) -> Self {
        let release = KernelCall::Fcntl {
            cmd: libc::F_OFD_SETLK,
            fl: backend::raw_record(at.dispenser, at.end - at.dispenser, None),
        };
        call.set_after_grant(q.as_raw_fd(), release);
        ReleaseOnGrant(call)
    }
}

impl Drop for ReleaseOnGrant<'_> {
    fn drop(&mut self) {
        self.0.clear_after_grant();
    }
}

/// `F_OFD_SETLK` of `mode` (or `F_UNLCK`) on `[start, end)` of the queue description.
fn set(
    q: BorrowedFd<'_>,
    start: u64,
    end: u64,
    mode: Option<Mode>,
) -> std::result::Result<(), Errno> {
    KernelCall::Fcntl {
        cmd: libc::F_OFD_SETLK,
        fl: backend::raw_record(start, end - start, mode),
    }
    .run(q)
}

/// A lock of another owner on `[start, end)` that conflicts with `mode`, as
/// `F_OFD_GETLK` reports it: its first and last byte and whether it is exclusive.
fn conflict(
    q: BorrowedFd<'_>,
    start: u64,
    end: u64,
    mode: Mode,
    name: &str,
) -> Result<Option<Found>> {
    let mut fl = backend::raw_record(start, end - start, Some(mode));
    sys::fcntl_lock(q, libc::F_OFD_GETLK, &mut fl)
        .map_err(|err| Error::sys(err, "fcntl(F_OFD_GETLK)", name))?;
    let exclusive = match fl.l_type as libc::c_int {
        libc::F_WRLCK => true,
        libc::F_RDLCK => false,
        _ => return Ok(None),
    };
    let first = fl.l_start.max(0) as u64;
    let last = if fl.l_len <= 0 {
        i64::MAX as u64
    } else {
        first.saturating_add(fl.l_len as u64 - 1)
    };
    Ok(Some(Found { last, exclusive }))
}

/// What a scan of the tickets found.
#[derive(Clone, Copy)]
struct Found {
    /// The last byte of the highest lock.
    last: u64,
    /// True when any lock found is exclusive.
    exclusive: bool,
}

/// Under D: the highest ticket byte held by another owner, and whether any ticket is
/// exclusive; `None` when the queue is empty. Each `F_OFD_GETLK` reports one lock, and
/// the next one looks above it, so this takes one call per place in line, plus one.
fn tail(q: BorrowedFd<'_>, at: Layout, name: &str) -> Result<Option<Found>> {
    let mut found: Option<Found> = None;
    let mut from = at.first;
    while from < at.end {
        let Some(lock) = conflict(q, from, at.end, Mode::Exclusive, name)? else {
            break;
        };
        if lock.last >= at.end {
            return Err(intruder(name));
        }
        found = Some(Found {
            last: lock.last.max(found.map_or(0, |f| f.last)),
            exclusive: lock.exclusive || found.is_some_and(|f| f.exclusive),
        });
        from = lock.last + 1;
    }
    Ok(found)
}

/// Takes `mode` on `[start, end)` of the queue description, retrying `spins` times
/// with a yield in between, then waiting in the kernel through a waiter child until
/// the deadline or a cancel (the call is never a try: those end in step 1).
#[allow(clippy::too_many_arguments)]
fn acquire(
    q: BorrowedFd<'_>,
    start: u64,
    end: u64,
    mode: Mode,
    mut spins: u32,
    deadline: &Deadline,
    call: &CallState,
    e: &Entry<'_>,
) -> Result<()> {
    let fl = backend::raw_record(start, end - start, Some(mode));
    let mut backoff = BACKOFF_FIRST;
    loop {
        match (KernelCall::Fcntl {
            cmd: libc::F_OFD_SETLK,
            fl,
        })
        .run(q)
        {
            Ok(()) => return Ok(()),
            Err(libc::EAGAIN | libc::EACCES) => {}
            Err(err) => return Err(Error::sys(err, "fcntl(F_OFD_SETLK)", e.name)),
        }
        if spins > 0 {
            spins -= 1;
            std::thread::yield_now();
            continue;
        }
        if call.cancelled() {
            return Err(cancelled(e.name));
        }
        if deadline.expired() {
            return Err(timed_out(e.name));
        }
        let wait = KernelCall::Fcntl {
            cmd: libc::F_OFD_SETLKW,
            fl,
        };
        match wait::in_kernel(q, wait, false, deadline, call, None)? {
            Some(Outcome::Granted) => return Ok(()),
            Some(Outcome::Unknown) => {}
            Some(Outcome::Failed(err)) => {
                return Err(Error::sys(err, "fcntl(F_OFD_SETLKW)", e.name));
            }
            Some(Outcome::TimedOut) => return Err(timed_out(e.name)),
            Some(Outcome::Cancelled) => return Err(cancelled(e.name)),
            None => {
                let nap = deadline.remaining().map_or(backoff, |r| r.min(backoff));
                wait::sleep(call, nap)?;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn cancelled(name: &str) -> Error {
    Error::new(
        libc::ECANCELED,
        format!("{name}: the wait for the lock was cancelled (in the fair queue)"),
    )
}

fn timed_out(name: &str) -> Error {
    Error::new(
        libc::ETIMEDOUT,
        format!("{name}: timed out waiting for the lock (in the fair queue)"),
    )
}

/// The queue descriptions this process has open: closed in a child right after
/// `fork()`, so that no child keeps a description, and with it a place in line, alive.
/// Lock order: the process table, then this ([`crate::inode_table`]'s fork handlers
/// take both in that order).
static OPEN: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

fn registry() -> MutexGuard<'static, Vec<RawFd>> {
    OPEN.lock().unwrap_or_else(|p| p.into_inner())
}

fn register(fd: RawFd) {
    registry().push(fd);
}

fn unregister(fd: RawFd) {
    let mut open = registry();
    if let Some(i) = open.iter().position(|&f| f == fd) {
        open.swap_remove(i);
    }
}

thread_local! {
    static FORK_GUARD: RefCell<Option<MutexGuard<'static, Vec<RawFd>>>> =
        const { RefCell::new(None) };
}

/// Before `fork()`: holds the registry so that the child gets it whole.
pub(crate) fn before_fork() {
    let guard = registry();
    FORK_GUARD.with(|g| *g.borrow_mut() = Some(guard));
}

/// After `fork()`, in the parent.
pub(crate) fn after_fork_in_parent() {
    FORK_GUARD.with(|g| g.borrow_mut().take());
}

/// After `fork()`, in the child: closes the inherited queue descriptions (the child's
/// handles open their own when they need one), except in a waiter child made by
/// `fork()`, which waits on one of them for its parent.
pub(crate) fn after_fork_in_child() {
    FORK_GUARD.with(|g| {
        if let Some(open) = g.borrow_mut().as_mut() {
            if !sys::forking_waiter() {
                for fd in open.drain(..) {
                    sys::close_inherited(fd);
                }
            }
        }
        g.borrow_mut().take()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::ByteRange;

    #[test]
    fn the_queues_lie_in_the_reserved_offsets_and_apart() {
        let fcntl = Layout::of(Family::Fcntl);
        let flock = Layout::of(Family::Flock);
        assert_eq!(fcntl.dispenser, RESERVED);
        assert!(fcntl.end <= flock.dispenser);
        assert!(flock.end - 1 <= i64::MAX as u64);
        assert!(ByteRange::WHOLE.end <= fcntl.dispenser);
    }
}
