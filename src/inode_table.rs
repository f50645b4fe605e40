//! The process-wide table of locked files: who, in this process, holds what.
//!
//! The kernel sees one owner per process for POSIX locks, and cannot tell that two
//! of this process's handles, or two of its threads, are deadlocked on each other. The
//! table keeps, per inode, the ranges each handle holds, so that:
//! - handles of one process exclude each other in every backend (for POSIX the table
//!   is the only arbiter; for flock and OFD it agrees with the kernel);
//! - a wait that cannot end because this process itself holds the conflicting lock —
//!   taken by the waiting thread, or held by a thread that waits (transitively) for the
//!   waiting one — fails with `EDEADLK` instead of hanging;
//! - closing a descriptor never drops POSIX locks another handle holds: closes are
//!   deferred while POSIX locks are held on the inode (SQLite's `unixInodeInfo`).
//!
//! Structure and locking: one global mutex ([`table`]) guards everything here — the
//! map from [`InodeKey`] to [`Inode`] and the map of waiting threads. Kernel calls that
//! may block are never made while it is held (non-blocking attempts are, so that the
//! table and the kernel change together). Each inode has a condition variable, used
//! with the global mutex, on which threads wait for in-process holders.
//!
//! A handle alone on its inode in this process has no one to arbitrate with: its
//! holding is *checked out* of the table into the handle's own [`SoloCell`], and its
//! lock and unlock calls take only that cell's mutex (the handle's solo path in
//! [`crate::kernel_lock`]), not the global one, nor the map. The rules:
//! - a holding is checked out only by its handle's own call, under the table's mutex,
//!   while that handle is the only one open on the inode (nothing pending, no
//!   deferred descriptor); [`Inode::solo`] then names the cell;
//! - whoever needs the table's view of an inode checks it back in first, under the
//!   table's mutex: a second handle opening there ([`Inode::add_handle`]), the
//!   handle's own table-side calls ([`table_with`]), and `fork()` (every cell, so
//!   that a child never inherits a holding outside the table);
//! - lock order: the table's mutex, then a cell's. The solo path only ever *tries*
//!   its cell's mutex and takes the table's path when it is taken, so a cell left
//!   locked in a forked child by a thread the child does not have costs the child
//!   the solo path, never a hang.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};

use crate::Mode;
use crate::own_wait;
use crate::range::{ByteRange, RangeMap};
use crate::wait::Deadline;
use crate::{Backend, Error};

/// Identifies a thread of this process ([`crate::sys::thread_id`]).
pub(crate) type ThreadId = u64;

/// Identifies a handle in the table (never reused).
pub(crate) type HandleId = u64;

/// A new handle id.
pub(crate) fn next_handle_id() -> HandleId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The lookup key: the file's device and inode numbers (`fstat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct InodeKey {
    pub dev: u64,
    pub ino: u64,
}

/// Lock families that conflict with each other: flock locks only with flock locks;
/// OFD and POSIX locks with each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Flock,
    Fcntl,
    /// DOTLOCK lock files (their keys are lock file names, not inodes).
    Dotlock,
}

impl From<Backend> for Family {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Flock => Family::Flock,
            Backend::Dotlock => Family::Dotlock,
            _ => Family::Fcntl,
        }
    }
}

/// What one handle holds on an inode.
pub(crate) struct Holding {
    pub handle: HandleId,
    pub backend: Backend,
    /// The thread that last took a lock with this handle: its locks are attributed to it.
    pub thread: ThreadId,
    /// [`fork_generation`] when the lock was last taken: if it changed, a child may
    /// share the open file description and its lock.
    pub fork_gen: u64,
    pub ranges: RangeMap,
    /// A POSIX lock the handle is waiting for in the kernel: counted as held, so that
    /// no other handle of this process changes the process's kernel lock under it.
    pub pending: Option<(ByteRange, Mode)>,
}

impl Holding {
    /// True for a flock or OFD holding taken before a `fork()`: the child shares the
    /// open file description and may have released the lock (an unlock there is an
    /// unlock here). The kernel, which knows, arbitrates such locks: they are not
    /// in-process conflicts, and a lock the kernel grants against them removes them
    /// ([`Inode::drop_released_by_fork`]).
    pub(crate) fn shared_by_fork(&self) -> bool {
        self.backend != Backend::Posix
            && !self.ranges.is_empty()
            && self.fork_gen != fork_generation()
    }

    /// An empty holding of `handle`.
    pub(crate) fn new(handle: HandleId, backend: Backend) -> Self {
        Holding {
            handle,
            backend,
            thread: 0,
            fork_gen: 0,
            ranges: RangeMap::new(),
            pending: None,
        }
    }
}

/// Where a handle alone on its inode keeps its holding while it is checked out of the
/// table (`Some`); `None` while the holding is in the table (see the module docs).
pub(crate) type SoloCell = Arc<Mutex<Option<Holding>>>;

/// Locks a cell; a panic while it was held leaves consistent data (poisoning ignored).
fn lock_cell(cell: &SoloCell) -> MutexGuard<'_, Option<Holding>> {
    cell.lock().unwrap_or_else(|p| p.into_inner())
}

/// A lock held (or reserved) by another handle of this process that conflicts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conflict {
    pub thread: ThreadId,
    pub backend: Backend,
    pub range: ByteRange,
    pub mode: Mode,
}

/// One locked (or open) file.
#[derive(Default)]
pub(crate) struct Inode {
    /// Handles open on the inode.
    pub open_handles: usize,
    pub holdings: Vec<Holding>,
    /// Descriptors whose close is deferred while POSIX locks are held here.
    pub deferred: Vec<OwnedFd>,
    /// Threads waiting on `cond` (so that a release without waiters skips the wake).
    pub waiters: usize,
    pub cond: Arc<Condvar>,
    /// The cell of the handle whose holding is checked out (then the only handle open
    /// here).
    pub solo: Option<SoloCell>,
    /// Flock waits in progress here that are their thread's own
    /// ([`crate::own_wait::FlockFds`]): registered only while no POSIX lock of this
    /// process is held or reserved here, evicted before one is, and kept until their
    /// thread has closed their descriptors.
    pub flock_waits: Vec<&'static own_wait::Words>,
}

impl Inode {
    /// Locks of handles other than `me` (held or pending) that conflict with `mode` on
    /// `range` in `family`.
    pub(crate) fn conflicts(
        &self,
        me: HandleId,
        family: Family,
        range: ByteRange,
        mode: Mode,
    ) -> Vec<Conflict> {
        let mut out = Vec::new();
        for h in self.holdings.iter().filter(|h| h.handle != me) {
            if Family::from(h.backend) != family || h.shared_by_fork() {
                continue;
            }
            let pending = h
                .pending
                .iter()
                .filter(|(r, _)| r.overlaps(&range))
                .copied();
            for (r, m) in h.ranges.touching(range).chain(pending) {
                if m == Mode::Exclusive || mode == Mode::Exclusive {
                    out.push(Conflict {
                        thread: h.thread,
                        backend: h.backend,
                        range: r,
                        mode: m,
                    });
                }
            }
        }
        out
    }

    /// After the kernel granted `handle` a `mode` lock on `range` in `family`: what
    /// holdings shared by fork (see [`Holding::shared_by_fork`]) held there in conflict
    /// with it was released by a child meanwhile.
    pub(crate) fn drop_released_by_fork(
        &mut self,
        handle: HandleId,
        family: Family,
        range: ByteRange,
        mode: Mode,
    ) {
        for h in self.holdings.iter_mut().filter(|h| {
            h.handle != handle && Family::from(h.backend) == family && h.shared_by_fork()
        }) {
            let released: Vec<ByteRange> = h
                .ranges
                .overlapping(range)
                .filter(|&(_, m)| m == Mode::Exclusive || mode == Mode::Exclusive)
                .map(|(r, _)| r)
                .collect();
            for r in released {
                h.ranges.clear(r);
            }
        }
    }

    /// Counts a handle opened here. A handle that was alone here gets its holding
    /// back into the table first: from now on the two are arbitrated here.
    pub(crate) fn add_handle(&mut self) {
        self.check_in();
        self.open_handles += 1;
    }

    /// Puts a checked-out holding back into `holdings` (waiting for the solo call in
    /// progress, if any: one non-blocking system call).
    pub(crate) fn check_in(&mut self) {
        if let Some(cell) = self.solo.take() {
            if let Some(h) = lock_cell(&cell).take() {
                self.holdings.push(h);
            }
        }
    }

    /// Checks `handle`'s holding out into `cell` when that handle is the only one open
    /// here, nothing is pending or deferred, and the cell is free; otherwise leaves
    /// everything as it is.
    pub(crate) fn check_out(&mut self, handle: HandleId, backend: Backend, cell: &SoloCell) {
        if self.open_handles != 1
            || self.waiters > 0
            || !self.flock_waits.is_empty()
            || self.solo.is_some()
            || !self.deferred.is_empty()
            || self
                .holdings
                .iter()
                .any(|h| h.handle != handle || h.pending.is_some())
        {
            return;
        }
        let Ok(mut slot) = cell.try_lock() else {
            return;
        };
        *slot = Some(match self.holdings.pop() {
            Some(h) => h,
            None => Holding::new(handle, backend),
        });
        drop(slot);
        self.solo = Some(cell.clone());
    }

    /// The holding of `handle`, if it has ever locked here.
    pub(crate) fn holding_mut(&mut self, handle: HandleId) -> Option<&mut Holding> {
        self.holdings.iter_mut().find(|h| h.handle == handle)
    }

    /// The holding of `handle`, created empty when missing.
    pub(crate) fn holding_or_new(&mut self, handle: HandleId, backend: Backend) -> &mut Holding {
        let pos = match self.holdings.iter().position(|h| h.handle == handle) {
            Some(p) => p,
            None => {
                self.holdings.push(Holding::new(handle, backend));
                self.holdings.len() - 1
            }
        };
        &mut self.holdings[pos]
    }

    /// Ends the own flock waits in progress here ([`own_wait::evict`]): a POSIX lock
    /// of this process is about to be held or reserved here.
    pub(crate) fn evict_flock_waits(&mut self) {
        for words in &self.flock_waits {
            own_wait::evict(words);
        }
    }

    /// Unregisters the own flock wait of `words` (evicted or not).
    pub(crate) fn forget_flock_wait(&mut self, words: &own_wait::Words) {
        self.flock_waits.retain(|w| !std::ptr::eq(*w, words));
    }

    /// Closes the deferred descriptors once no POSIX lock is held here, and wakes the
    /// threads waiting here.
    pub(crate) fn settle(&mut self) {
        if !self.deferred.is_empty() && !self.has_posix_locks() {
            self.deferred.clear();
        }
        if self.waiters > 0 {
            self.cond.notify_all();
        }
    }

    /// True when any handle holds or reserves a POSIX lock here, a checked-out
    /// holding included (a descriptor closed now would drop it).
    fn has_posix_locks(&self) -> bool {
        let posix = |h: &Holding| {
            h.backend == Backend::Posix && (!h.ranges.is_empty() || h.pending.is_some())
        };
        self.holdings.iter().any(posix)
            || self
                .solo
                .as_ref()
                .is_some_and(|cell| lock_cell(cell).as_ref().is_some_and(posix))
    }
}

/// A thread waiting for a lock: what it asked for.
#[derive(Clone, Copy)]
pub(crate) struct WaitRecord {
    pub key: InodeKey,
    pub handle: HandleId,
    pub family: Family,
    pub range: ByteRange,
    pub mode: Mode,
}

/// A fast hasher for the table's small integer keys (inode keys and thread ids, which
/// no one can choose to collide): a multiply-rotate mix, as in rustc's FxHash.
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_i32(&mut self, n: i32) {
        self.write_u64(n as u32 as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

/// The table: see the module docs for the key and the lock.
#[derive(Default)]
pub(crate) struct Table {
    inodes: FastMap<InodeKey, Inode>,
    /// thread id -> what it waits for
    waits: FastMap<ThreadId, WaitRecord>,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Default::default);
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Locks the table. A panic while it was held leaves consistent data (every update is
/// a single step), so poisoning is ignored.
pub(crate) fn table() -> MutexGuard<'static, Table> {
    TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Locks the table with `key`'s holdings all in it (a checked-out one checked in):
/// what a handle's own table-side calls start with.
pub(crate) fn table_with(key: InodeKey) -> MutexGuard<'static, Table> {
    let mut t = table();
    if let Some(inode) = t.inodes.get_mut(&key) {
        inode.check_in();
    }
    t
}

/// Sleeps on the condition of `record.key` until a handle of this process changes what
/// it holds there (or a cancel wakes the condition), at most until `deadline`. The wait
/// is recorded for [`Table::would_deadlock`] meanwhile. Gives the table back locked.
pub(crate) fn wait_for_handles(
    mut table: MutexGuard<'static, Table>,
    me: ThreadId,
    record: WaitRecord,
    deadline: &Deadline,
) -> MutexGuard<'static, Table> {
    let inode = table.inode(record.key);
    inode.waiters += 1;
    let cond = inode.cond.clone();
    table.start_waiting(me, record);
    table = match deadline.remaining() {
        None => cond.wait(table).unwrap_or_else(|p| p.into_inner()),
        Some(d) => {
            cond.wait_timeout(table, d)
                .unwrap_or_else(|p| p.into_inner())
                .0
        }
    };
    table.inode(record.key).waiters -= 1;
    table.done_waiting(me);
    table
}

/// The `EDEADLK` error of thread `me` about to wait on `name` for a lock that thread
/// `holder` holds through another handle of this process.
pub(crate) fn deadlock_error(name: &str, holder: ThreadId, me: ThreadId) -> Error {
    let who = if holder == me {
        "this thread holds it through another handle"
    } else {
        "another thread holds it and waits, directly or not, for this thread"
    };
    Error::new(
        libc::EDEADLK,
        format!("{name}: waiting would deadlock: {who}"),
    )
}

/// Counts forks of this process (and of its ancestors since the table was copied).
pub(crate) fn fork_generation() -> u64 {
    FORK_GENERATION.load(Ordering::SeqCst)
}

thread_local! {
    static FORK_GUARD: std::cell::RefCell<Option<MutexGuard<'static, Table>>> =
        const { std::cell::RefCell::new(None) };
}

unsafe extern "C" fn before_fork() {
    let mut guard = table();
    for inode in guard.inodes.values_mut() {
        inode.check_in();
    }
    // Counted once no lock can be recorded until the fork is done (the table is held
    // and every holding is in it): a lock recorded with the old count was taken
    // before the fork, so the child may share it. A forked waiter child only ever
    // takes a lock and exits: it shares nothing that way.
    if !crate::sys::forking_waiter() {
        FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
    }
    FORK_GUARD.with(|g| *g.borrow_mut() = Some(guard));
    crate::fair::before_fork();
    #[cfg(feature = "capi")]
    crate::capi::registry::before_fork();
}

unsafe extern "C" fn after_fork_in_parent() {
    #[cfg(feature = "capi")]
    crate::capi::registry::after_fork();
    crate::fair::after_fork_in_parent();
    FORK_GUARD.with(|g| g.borrow_mut().take());
}

unsafe extern "C" fn after_fork_in_child() {
    crate::sys::forget_ids();
    #[cfg(feature = "capi")]
    crate::capi::registry::after_fork();
    crate::fair::after_fork_in_child();
    FORK_GUARD.with(|g| {
        if let Some(table) = g.borrow_mut().as_mut() {
            table.forget_what_fork_does_not_inherit();
        }
        g.borrow_mut().take()
    });
    crate::own_wait::after_fork_in_child();
}

/// Installs fork handlers once: the table (and then the registry of fair queue
/// descriptions, [`crate::fair`], and the C handles' registry) is locked across
/// `fork()`, with every checked-out holding back in it, so that a child never inherits
/// it half-updated, locked by a thread it does not have, or missing a holding.
pub(crate) fn install_fork_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| crate::sys::at_fork(before_fork, after_fork_in_parent, after_fork_in_child));
}

impl Table {
    /// In a child right after `fork()`: POSIX locks are not inherited, so the parent's
    /// POSIX holdings and reservations are forgotten (and the descriptors kept open
    /// for them closed), and no thread of the child is waiting. flock and OFD
    /// holdings stay: the child shares those locks.
    fn forget_what_fork_does_not_inherit(&mut self) {
        self.waits.clear();
        for inode in self.inodes.values_mut() {
            inode.holdings.retain(|h| h.backend != Backend::Posix);
            for h in &mut inode.holdings {
                h.pending = None;
            }
            inode.deferred.clear();
            inode.waiters = 0;
            for words in inode.flock_waits.drain(..) {
                own_wait::forget_in_fork_child(words);
            }
        }
    }

    /// The entry for `key`, created empty when missing.
    pub(crate) fn inode(&mut self, key: InodeKey) -> &mut Inode {
        self.inodes.entry(key).or_default()
    }

    /// The entry for `key`, if any.
    pub(crate) fn get(&self, key: InodeKey) -> Option<&Inode> {
        self.inodes.get(&key)
    }

    /// Drops the entry when nothing refers to it any more.
    pub(crate) fn forget_if_unused(&mut self, key: InodeKey) {
        if let Some(inode) = self.inodes.get(&key) {
            if inode.open_handles == 0 && inode.holdings.is_empty() && inode.deferred.is_empty() {
                self.inodes.remove(&key);
                if self.inodes.is_empty() {
                    own_wait::close_spare();
                }
            }
        }
    }

    /// Locks of other handles of this process (held or pending) on `key` that conflict
    /// with `mode` on `range` in `family`.
    pub(crate) fn conflicts(
        &self,
        key: InodeKey,
        me: HandleId,
        family: Family,
        range: ByteRange,
        mode: Mode,
    ) -> Vec<Conflict> {
        self.inodes
            .get(&key)
            .map(|i| i.conflicts(me, family, range, mode))
            .unwrap_or_default()
    }

    /// True when a wait of thread `me` on locks held by `holders` (threads) could never
    /// end: one of them is `me`, or one of them waits, directly or through others, for
    /// a lock `me` holds.
    pub(crate) fn would_deadlock(
        &self,
        me: ThreadId,
        holders: impl IntoIterator<Item = ThreadId>,
    ) -> bool {
        let mut stack: Vec<ThreadId> = holders.into_iter().collect();
        let mut seen = HashSet::new();
        while let Some(t) = stack.pop() {
            if t == me {
                return true;
            }
            if !seen.insert(t) {
                continue;
            }
            if let Some(w) = self.waits.get(&t) {
                let next = self.conflicts(w.key, w.handle, w.family, w.range, w.mode);
                stack.extend(next.iter().map(|c| c.thread));
            }
        }
        false
    }

    /// Records that thread `me` waits for `record` (until [`Table::done_waiting`]).
    pub(crate) fn start_waiting(&mut self, me: ThreadId, record: WaitRecord) {
        self.waits.insert(me, record);
    }

    /// Removes thread `me`'s wait record.
    pub(crate) fn done_waiting(&mut self, me: ThreadId) {
        self.waits.remove(&me);
    }

    /// The holding of `handle` on `key`, created empty when missing.
    pub(crate) fn holding_mut(
        &mut self,
        key: InodeKey,
        handle: HandleId,
        backend: Backend,
    ) -> &mut Holding {
        self.inode(key).holding_or_new(handle, backend)
    }

    /// The holding of `handle` on `key`, if it holds or reserves anything.
    pub(crate) fn holding(&self, key: InodeKey, handle: HandleId) -> Option<&Holding> {
        self.inodes
            .get(&key)?
            .holdings
            .iter()
            .find(|h| h.handle == handle)
    }

    /// Closes the deferred descriptors of `key` once no POSIX lock is held there, and
    /// wakes the threads waiting there. (A handle's holding stays, empty, until it is
    /// closed, so that locking again allocates nothing.)
    pub(crate) fn settle(&mut self, key: InodeKey) {
        if let Some(inode) = self.inodes.get_mut(&key) {
            inode.settle();
        }
    }

    /// True when any handle holds or reserves a POSIX lock on `key`.
    pub(crate) fn has_posix_locks(&self, key: InodeKey) -> bool {
        self.inodes.get(&key).is_some_and(Inode::has_posix_locks)
    }

    /// True when a handle other than `me` holds or reserves a POSIX lock on `key`.
    pub(crate) fn others_hold_posix(&self, key: InodeKey, me: HandleId) -> bool {
        self.inodes.get(&key).is_some_and(|i| {
            i.holdings.iter().any(|h| {
                h.handle != me
                    && h.backend == Backend::Posix
                    && (!h.ranges.is_empty() || h.pending.is_some())
            })
        })
    }

    /// The strongest mode other handles of the process hold or reserve in POSIX-family
    /// terms on each part of `range`: the process's kernel lock must stay at least this.
    /// Returns disjoint pieces covering `range`, in order.
    pub(crate) fn others_strongest(
        &self,
        key: InodeKey,
        me: HandleId,
        range: ByteRange,
    ) -> Vec<(ByteRange, Option<Mode>)> {
        let mut cuts = vec![range.start, range.end];
        let mut segs: Vec<(ByteRange, Mode)> = Vec::new();
        if let Some(inode) = self.inodes.get(&key) {
            for h in inode
                .holdings
                .iter()
                .filter(|h| h.handle != me && h.backend == Backend::Posix)
            {
                segs.extend(h.ranges.overlapping(range));
                if let Some((r, m)) = h.pending.filter(|(r, _)| r.overlaps(&range)) {
                    segs.push((
                        ByteRange {
                            start: r.start.max(range.start),
                            end: r.end.min(range.end),
                        },
                        m,
                    ));
                }
            }
        }
        for (r, _) in &segs {
            cuts.push(r.start);
            cuts.push(r.end);
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut out: Vec<(ByteRange, Option<Mode>)> = Vec::new();
        for w in cuts.windows(2) {
            let piece = ByteRange {
                start: w[0],
                end: w[1],
            };
            let strongest = segs
                .iter()
                .filter(|(r, _)| r.overlaps(&piece))
                .map(|(_, m)| *m)
                .max();
            match out.last_mut() {
                Some((last, m)) if *m == strongest && last.end == piece.start => {
                    last.end = piece.end
                }
                _ => out.push((piece, strongest)),
            }
        }
        out
    }
}
