//! [`KernelLock`]: one lock owner on one file over one kernel mechanism (FLOCK, OFD
//! or POSIX); [`crate::Lock`] is one of these, or a set of them with a DOTLOCK.
//!
//! A call travels: argument checks in [`crate::Lock`] → the process table ([`crate::inode_table`]:
//! does another handle of this process conflict? would waiting deadlock?) → the kernel
//! ([`crate::backend`]) with a non-blocking attempt → if the lock is held by another
//! process, a wait in the kernel ([`crate::wait`]) → the table records the result.
//!
//! The solo path: a handle alone on its inode in this process (the common case) has
//! its holding checked out of the table ([`inode_table::SoloCell`]). Its call makes the
//! non-blocking attempt under that cell's mutex alone, and records the result there;
//! only a call that must wait (or a flock upgrade, which is not atomic) goes through
//! the table. Handles with [`Flags::UNLINK`] or [`Flags::FAIR`] always go through it.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Duration;

use crate::backend;
use crate::fair;
use crate::holders::{self, ProcLock, Resolver};
use crate::inode_table::{
    self, Conflict, Family, HandleId, Holding, Inode, InodeKey, SoloCell, Table, ThreadId,
    WaitRecord, fork_generation,
};
use crate::range::{ByteRange, RangeMap};
use crate::sys::{self, KernelCall};
use crate::wait::{self, CallState, Deadline, Outcome};
use crate::{Backend, Error, Flags, Holder, Mode, Options, Result};

/// An open lock handle: one owner of locks on one file.
///
/// Every handle is its own owner, whatever the backend: two handles on one file
/// conflict even in one thread, closing one never releases another's locks, and a
/// blocking wait that only this process could end (the same thread, or a cycle of this
/// process's waiting threads) fails with `EDEADLK`. Methods take `&self` and are
/// thread-safe; one lock or unlock runs at a time per handle (`EBUSY` otherwise).
///
/// Dropping the handle closes it: see [`crate::Lock::close`].
pub(crate) struct KernelLock {
    /// The descriptor and the inode it names. Only an UNLINK handle changes them (in
    /// [`crate::Lock::lock`], when the file it opened was deleted or replaced): lock calls
    /// read them under the read lock, the change takes the write lock. Lock order:
    /// this lock before the table's.
    file: RwLock<OpenFile>,
    backend: Backend,
    id: HandleId,
    /// The path or descriptor, for messages.
    name: String,
    /// The process that opened the handle (POSIX locks are not inherited by children).
    opener: i32,
    /// [`Flags::UNLINK`]: how to check and reopen the path.
    unlink: Option<Reopen>,
    /// The process that last took a lock through the handle: only it deletes an
    /// UNLINK file.
    locker: AtomicI32,
    /// [`Flags::FAIR`]: the handle's place in the file's queue.
    fair: Option<fair::Queue>,
    /// The solo path (neither UNLINK nor FAIR): see the module docs.
    solo: Option<Solo>,
}

/// A call on the solo path, between its start (the cell locked, the system call
/// prepared) and its end (the result recorded in the cell). The caller makes the system
/// call itself, inlined into the API function: after a system call the CPU's return
/// predictions are lost (the kernel's deep call chain, and its mitigations, overwrite
/// them), so every stack frame a system call is made under costs a mispredicted return
/// afterwards: about 7 ns per frame and call on the machine of BENCHMARKS.md.
pub(crate) struct SoloCall<'a> {
    cell: MutexGuard<'a, Option<Holding>>,
    fd: BorrowedFd<'a>,
    call: KernelCall,
    /// The range of the call (for an unlock, as asked: the call may be on a part).
    range: ByteRange,
}

/// What the solo path needs: the cell the handle's holding is checked out into, and
/// the handle's descriptor, which such a handle keeps until it is closed.
struct Solo {
    cell: SoloCell,
    fd: RawFd,
    /// False when the file could only be opened read-only.
    writable: bool,
}

/// The file a handle has open.
struct OpenFile {
    fd: Option<OwnedFd>,
    key: InodeKey,
    /// False when the file could only be opened read-only.
    writable: bool,
}

impl OpenFile {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd
            .as_ref()
            .expect("the descriptor lives until close")
            .as_fd()
    }
}

/// What an UNLINK handle needs to check that its file is still the one at the path,
/// and to open the path again.
struct Reopen {
    path: CString,
    options: Options,
}

/// Backoff bounds of the fallback used where no waiter child can take a POSIX lock.
const BACKOFF_FIRST: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(25);

/// Refuses what cannot be locked safely: FIFOs, sockets and devices (opening them may
/// block or have effects), and a symbolic link unless following was asked for.
fn check_file_type(st: &libc::stat, name: &str) -> Result<()> {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFDIR => return Ok(()),
        libc::S_IFLNK => {
            return Err(Error::new(
                libc::ELOOP,
                format!("{name} is a symbolic link; pass UNILOCK_FOLLOW to lock its target"),
            ));
        }
        other => file_type_name(other),
    };
    Err(Error::new(
        libc::EINVAL,
        format!("{name} is {kind}: only regular files and directories can be locked"),
    ))
}

/// What a file of type `kind` (`st_mode & S_IFMT`) is, for messages: "a FIFO", ...
pub(crate) fn file_type_name(kind: libc::mode_t) -> &'static str {
    match kind {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symbolic link",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        _ => "not a regular file",
    }
}

fn key_of(st: &libc::stat) -> InodeKey {
    InodeKey {
        dev: st.st_dev,
        ino: st.st_ino,
    }
}

/// Opens the path as [`crate::Lock::open`] describes: the descriptor, whether it is writable,
/// and its inode.
fn open_path(
    cpath: &CString,
    name: &str,
    backend: Backend,
    options: &Options,
) -> Result<(OwnedFd, bool, InodeKey)> {
    let follow = options.flags.contains(Flags::FOLLOW);
    match sys::stat(cpath, follow) {
        Ok(st) => check_file_type(&st, name)?,
        Err(libc::ENOENT) => {}
        Err(e) => return Err(Error::sys(e, "stat", name)),
    }
    let mut base = libc::O_NOCTTY | libc::O_NONBLOCK;
    if !follow {
        base |= libc::O_NOFOLLOW;
    }
    if !options.flags.contains(Flags::INHERIT) {
        base |= libc::O_CLOEXEC;
    }
    let accesses: &[libc::c_int] = if backend == Backend::Flock {
        &[libc::O_RDONLY]
    } else {
        &[libc::O_RDWR, libc::O_RDONLY]
    };
    let create_mode = if options.create_mode == 0 {
        0o600
    } else {
        options.create_mode
    };
    let mut last = libc::ENOENT;
    let mut opened = None;
    for (i, &access) in accesses.iter().enumerate() {
        let more = i + 1 < accesses.len();
        match sys::open(cpath, base | access, 0) {
            Ok(fd) => {
                opened = Some((fd, access == libc::O_RDWR));
                break;
            }
            Err(libc::ENOENT) if options.flags.contains(Flags::CREATE) => {
                match sys::open(cpath, base | access | libc::O_CREAT, create_mode) {
                    Ok(fd) => {
                        opened = Some((fd, access == libc::O_RDWR));
                        break;
                    }
                    Err(e) if more && matches!(e, libc::EACCES | libc::EROFS | libc::EPERM) => {
                        last = e
                    }
                    Err(e) => return Err(Error::sys(e, "create", name)),
                }
            }
            Err(e)
                if more
                    && matches!(
                        e,
                        libc::EACCES | libc::EROFS | libc::EISDIR | libc::ETXTBSY | libc::EPERM
                    ) =>
            {
                last = e
            }
            Err(libc::ELOOP) if !follow => {
                return Err(Error::new(
                    libc::ELOOP,
                    format!("{name} is a symbolic link; pass UNILOCK_FOLLOW to lock its target"),
                ));
            }
            Err(e) => return Err(Error::sys(e, "open", name)),
        }
    }
    let Some((fd, writable)) = opened else {
        return Err(Error::sys(last, "open", name));
    };
    let st = sys::fstat(fd.as_fd()).map_err(|e| Error::sys(e, "fstat", name))?;
    check_file_type(&st, name)?;
    sys::clear_nonblock(fd.as_fd()).map_err(|e| Error::sys(e, "fcntl(F_SETFL)", name))?;
    Ok((fd, writable, key_of(&st)))
}

impl KernelLock {
    /// Opens `cpath` for `backend` as [`crate::Lock::open`] describes.
    pub(crate) fn open(
        cpath: CString,
        name: String,
        backend: Backend,
        options: &Options,
    ) -> Result<KernelLock> {
        let (fd, writable, key) = open_path(&cpath, &name, backend, options)?;
        let unlink = options.flags.contains(Flags::UNLINK).then(|| Reopen {
            path: cpath,
            options: options.clone(),
        });
        let fair = options.flags.contains(Flags::FAIR);
        Ok(Self::register(
            fd, backend, key, name, writable, unlink, fair,
        ))
    }

    /// Makes a handle on an open descriptor, which is duplicated (the caller keeps
    /// `fd`). The duplicate shares the open file description: flock and OFD locks taken
    /// through the handle are the description's, as with flock(1) on a descriptor.
    pub(crate) fn from_fd(
        fd: BorrowedFd<'_>,
        backend: Backend,
        options: &Options,
    ) -> Result<KernelLock> {
        let name = format!("descriptor {}", fd.as_raw_fd());
        if options.flags.contains(Flags::UNLINK) {
            return Err(Error::new(
                libc::EINVAL,
                "UNILOCK_UNLINK needs a path: a handle made from a descriptor cannot check \
                 or delete the file at its path",
            ));
        }
        let st = sys::fstat(fd).map_err(|e| Error::sys(e, "fstat", &name))?;
        // A descriptor is open already: a FIFO, socket or device is locked as flock(1)
        // locks it (only opening one may block or act). The fair queue opens the file
        // again, read-write, through /proc: that is for regular files and directories.
        if options.flags.contains(Flags::FAIR) {
            check_file_type(&st, &name)?;
        }
        let status = sys::status_flags(fd).map_err(|e| Error::sys(e, "fcntl(F_GETFL)", &name))?;
        if status & libc::O_PATH != 0 {
            return Err(Error::new(
                libc::EBADF,
                format!("{name} is an O_PATH descriptor"),
            ));
        }
        let writable = status & libc::O_ACCMODE != libc::O_RDONLY;
        let dup = sys::dup(fd, !options.flags.contains(Flags::INHERIT))
            .map_err(|e| Error::sys(e, "dup", &name))?;
        Ok(Self::register(
            dup,
            backend,
            key_of(&st),
            name,
            writable,
            None,
            options.flags.contains(Flags::FAIR),
        ))
    }

    fn register(
        fd: OwnedFd,
        backend: Backend,
        key: InodeKey,
        name: String,
        writable: bool,
        unlink: Option<Reopen>,
        fair: bool,
    ) -> KernelLock {
        inode_table::install_fork_handlers();
        let id = inode_table::next_handle_id();
        let solo = (unlink.is_none() && !fair).then(|| Solo {
            cell: Arc::new(Mutex::new(None)),
            fd: fd.as_raw_fd(),
            writable,
        });
        {
            let mut table = inode_table::table();
            let inode = table.inode(key);
            inode.add_handle();
            if let Some(s) = &solo {
                inode.check_out(id, backend, &s.cell);
            }
        }
        KernelLock {
            file: RwLock::new(OpenFile {
                fd: Some(fd),
                key,
                writable,
            }),
            backend,
            id,
            name,
            opener: sys::getpid(),
            unlink,
            locker: AtomicI32::new(0),
            fair: fair.then(fair::Queue::new),
            solo,
        }
    }

    /// Starts a call on the solo path: the cell, with the handle's holding in it, and
    /// `call` on the handle's descriptor. `None` when the call goes through the table:
    /// the holding is there (the handle is not alone), or the cell is busy (a query,
    /// or the opening of another handle, is checking it in).
    #[inline]
    fn solo_call(&self, call: KernelCall, range: ByteRange) -> Option<SoloCall<'_>> {
        let solo = self.solo.as_ref()?;
        let cell = solo.cell.try_lock().ok()?;
        cell.is_some().then(|| SoloCall {
            cell,
            // SAFETY: a solo handle's descriptor is `file.fd`, which is neither replaced
            // (no UNLINK) nor closed before `close_inner`, which takes `&mut self`.
            fd: unsafe { BorrowedFd::borrow_raw(solo.fd) },
            call,
            range,
        })
    }

    /// The solo path of a lock call, up to its system call; `None` when the call goes
    /// through the table: the handle is not alone, it upgrades a flock lock (not
    /// atomic), the file is read-only for an exclusive fcntl lock (the table path
    /// explains), or it is a POSIX handle in a forked child.
    fn solo_lock(&self, mode: Mode, range: ByteRange) -> Option<SoloCall<'_>> {
        if self.posix_in_child() {
            return None;
        }
        let call = backend::lock_call(self.backend, range, mode, false);
        let solo = self.solo_call(call, range)?;
        let held = solo.cell.as_ref()?;
        let refused = match self.backend {
            Backend::Flock => held.ranges.iter().any(|(_, m)| m == Mode::Shared),
            _ => !self.solo.as_ref().is_some_and(|s| s.writable),
        };
        if mode == Mode::Exclusive && refused {
            return None;
        }
        Some(solo)
    }

    /// Ends a solo lock call whose system call returned `result`; `None` when the lock
    /// is held elsewhere and the call may wait: it goes on through the table.
    fn solo_locked(
        &self,
        mut solo: SoloCall<'_>,
        mode: Mode,
        result: std::result::Result<(), sys::Errno>,
        deadline: &Deadline,
    ) -> Option<Result<()>> {
        match result {
            Ok(()) => {
                if let Some(held) = solo.cell.as_mut() {
                    record_in(held, solo.range, mode, sys::thread_id());
                }
                Some(Ok(()))
            }
            Err(e) if e == libc::EAGAIN || e == libc::EACCES => {
                deadline.is_try().then(|| Err(self.held_elsewhere()))
            }
            Err(e) => Some(Err(self.kernel_error(e))),
        }
    }

    /// The solo path of an unlock call, up to its system call; `None` when the call
    /// goes through the table (also a POSIX release of other than one held piece:
    /// the process's POSIX lock elsewhere may be the host's own).
    fn solo_unlock(&self, range: ByteRange) -> Option<SoloCall<'_>> {
        if self.posix_in_child() {
            return None;
        }
        let mut solo = self.solo_call(backend::unlock_call(self.backend, range), range)?;
        if self.backend == Backend::Posix {
            let held = solo.cell.as_ref()?;
            let mut pieces = held.ranges.overlapping(range);
            let (Some((piece, _)), None) = (pieces.next(), pieces.next()) else {
                return None;
            };
            solo.call = backend::unlock_call(self.backend, piece);
        }
        Some(solo)
    }

    /// Ends a solo unlock call whose system call returned `result`.
    fn solo_unlocked(
        &self,
        mut solo: SoloCall<'_>,
        result: std::result::Result<(), sys::Errno>,
    ) -> Result<()> {
        result.map_err(|e| self.kernel_error(e))?;
        if let Some(held) = solo.cell.as_mut() {
            held.ranges.clear(solo.range);
        }
        Ok(())
    }

    /// Locks the table with this handle's holding in it.
    fn table(&self, key: InodeKey) -> MutexGuard<'static, Table> {
        inode_table::table_with(key)
    }

    /// After a call through the table: checks the holding out again if the handle is
    /// alone on its inode.
    fn check_out(&self, inode: &mut Inode) {
        if let Some(s) = &self.solo {
            inode.check_out(self.id, self.backend, &s.cell);
        }
    }

    fn file(&self) -> RwLockReadGuard<'_, OpenFile> {
        self.file.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The descriptor the handle locks through (for `fstat`, `poll`, passing to a
    /// child). Closing it, or any other descriptor of the file, drops the process's
    /// POSIX locks on the file: that is the kernel's rule, and why OFD is preferred.
    /// An [`Flags::UNLINK`] handle gets a new descriptor when a lock call finds that
    /// its file was deleted or replaced: ask again after locking.
    pub(crate) fn fd(&self) -> RawFd {
        self.file().fd().as_raw_fd()
    }

    /// The kernel mechanism of this handle.
    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    /// True for a POSIX handle used in a process forked after it was opened.
    fn posix_in_child(&self) -> bool {
        self.backend == Backend::Posix && sys::getpid() != self.opener
    }

    /// POSIX locks belong to the process that took them: a forked child gets none.
    fn check_owner(&self) -> Result<()> {
        if self.posix_in_child() {
            return Err(Error::new(
                libc::ENOLCK,
                format!(
                    "{}: this POSIX handle was opened by process {}; POSIX locks are not \
                     inherited across fork, open a new handle in this process",
                    self.name, self.opener
                ),
            ));
        }
        Ok(())
    }

    /// Takes `mode` on `range` before `deadline`, as [`crate::Lock::lock`] describes;
    /// `call` is the handle's call state (cancel, the wake-up descriptor).
    #[inline(always)]
    pub(crate) fn lock(
        &self,
        call: &CallState,
        mode: Mode,
        range: ByteRange,
        deadline: &Deadline,
    ) -> Result<()> {
        // The solo path, with its system call made here: see `SoloCall`.
        if let Some(solo) = self.solo_lock(mode, range) {
            let result = solo.call.run(solo.fd);
            if let Some(done) = self.solo_locked(solo, mode, result, deadline) {
                return done;
            }
        }
        self.lock_table(call, mode, range, deadline)
    }

    /// [`KernelLock::lock`] through the table.
    #[inline(never)]
    fn lock_table(
        &self,
        call: &CallState,
        mode: Mode,
        range: ByteRange,
        deadline: &Deadline,
    ) -> Result<()> {
        self.check_owner()?;
        // UNLINK: set once what the handle held was let go of with a file that was
        // deleted or replaced; a failure after that leaves the handle holding nothing.
        let mut let_go = false;
        let held_at_start = self.unlink.is_some() && self.holds_anything(self.file().key);
        loop {
            let file = self.file();
            self.check_writable(&file, mode)?;
            // UNLINK: a handle that held nothing may have opened a file that was deleted
            // or replaced since. One that holds an OFD or POSIX lock keeps its file,
            // which no UNLINK handle deletes while another holds a lock on it; a flock
            // upgrade releases the shared lock while it waits, so it checks again.
            let fresh = self.unlink.is_some()
                && (self.backend == Backend::Flock
                    || inode_table::table()
                        .holding(file.key, self.id)
                        .is_none_or(|h| h.ranges.is_empty()));
            if fresh && self.is_stale(&file)? {
                // Not worth waiting for: start on the file now at the path at once
                // (a flock handle lets go of what it held on the old file).
                let_go |= self.holds_anything(file.key);
                self.release_range(&file, &mut inode_table::table(), ByteRange::WHOLE)?;
                drop(file);
                self.reopen()?;
                continue;
            }
            if let Err(e) = self.lock_queued(call, &file, range, mode, deadline) {
                return Err(if let_go { self.lost_with_file(e) } else { e });
            }
            if self.unlink.is_none() {
                return Ok(());
            }
            self.locker.store(sys::getpid(), Ordering::Relaxed);
            if !fresh {
                return Ok(());
            }
            let stale = self.is_stale(&file);
            if matches!(stale, Ok(false)) {
                return Ok(());
            }
            // Start again on the file now at the path: release, reopen, lock.
            let_go |= held_at_start;
            let released = {
                let mut table = inode_table::table();
                self.release_range(&file, &mut table, ByteRange::WHOLE)
            };
            drop(file);
            stale?;
            released?;
            self.reopen()?;
        }
    }

    /// True when the handle holds any lock on the inode `key`.
    fn holds_anything(&self, key: InodeKey) -> bool {
        inode_table::table_with(key)
            .holding(key, self.id)
            .is_some_and(|h| !h.ranges.is_empty())
    }

    /// UNLINK: the error of a lock call that failed with `e` after the handle let go
    /// of what it held, because its file was deleted or replaced meanwhile.
    fn lost_with_file(&self, e: Error) -> Error {
        Error::new(
            libc::ENOLCK,
            format!(
                "{}: the file was deleted or replaced while this handle held a lock on it, \
                 which went with it, and the lock on the new file failed ({}): this handle \
                 holds nothing",
                self.name,
                e.detail()
            ),
        )
    }

    fn check_writable(&self, file: &OpenFile, mode: Mode) -> Result<()> {
        if mode == Mode::Exclusive && !file.writable && self.backend != Backend::Flock {
            return Err(Error::new(
                libc::EACCES,
                format!(
                    "{}: the file could only be opened read-only, and an exclusive {} lock \
                     needs write access",
                    self.name,
                    self.backend.name()
                ),
            ));
        }
        Ok(())
    }

    /// UNLINK: true when the locked file is no longer the one at the path (deleted,
    /// or replaced by another file).
    fn is_stale(&self, file: &OpenFile) -> Result<bool> {
        let Some(u) = &self.unlink else {
            return Ok(false);
        };
        let st = sys::fstat(file.fd()).map_err(|e| Error::sys(e, "fstat", &self.name))?;
        if st.st_nlink == 0 {
            return Ok(true);
        }
        let follow = u.options.flags.contains(Flags::FOLLOW);
        match sys::stat(&u.path, follow) {
            Ok(at_path) => Ok(key_of(&at_path) != file.key),
            Err(libc::ENOENT) => Ok(true),
            Err(e) => Err(Error::sys(e, "stat", &self.name)),
        }
    }

    /// UNLINK: replaces the handle's file (which it holds no lock on) by the one now at
    /// the path, created if missing under [`Flags::CREATE`]. The old descriptor's close
    /// is deferred while this process holds POSIX locks on the old file.
    fn reopen(&self) -> Result<()> {
        let u = self.unlink.as_ref().expect("only UNLINK handles reopen");
        let (fd, writable, key) = open_path(&u.path, &self.name, self.backend, &u.options)?;
        let mut file = self.file.write().unwrap_or_else(|p| p.into_inner());
        let mut table = inode_table::table();
        let old_key = file.key;
        let old_fd = file.fd.replace(fd);
        file.key = key;
        file.writable = writable;
        table
            .inode(old_key)
            .holdings
            .retain(|h| h.handle != self.id);
        let keep_open = table.has_posix_locks(old_key);
        let old = table.inode(old_key);
        old.open_handles = old.open_handles.saturating_sub(1);
        if let Some(old_fd) = old_fd {
            if keep_open {
                old.deferred.push(old_fd);
            }
        }
        table.settle(old_key);
        table.forget_if_unused(old_key);
        table.inode(key).add_handle();
        Ok(())
    }

    /// [`Flags::FAIR`]: takes the lock through the file's queue ([`crate::fair`]);
    /// otherwise [`KernelLock::lock_on`].
    fn lock_queued(
        &self,
        call: &CallState,
        file: &OpenFile,
        range: ByteRange,
        mode: Mode,
        deadline: &Deadline,
    ) -> Result<()> {
        let Some(queue) = &self.fair else {
            return self.lock_on(call, file, range, mode, deadline);
        };
        let entry = fair::Entry {
            fd: file.fd(),
            key: file.key,
            handle: self.id,
            family: Family::from(self.backend),
            mode,
            name: &self.name,
        };
        queue.lock(&entry, deadline, call, |d| {
            self.lock_on(call, file, range, mode, d)
        })
    }

    /// Takes `mode` on `range` of `file`: the lock call without the UNLINK checks.
    fn lock_on(
        &self,
        call: &CallState,
        file: &OpenFile,
        range: ByteRange,
        mode: Mode,
        deadline: &Deadline,
    ) -> Result<()> {
        let key = file.key;
        let me = sys::thread_id();
        let family = Family::from(self.backend);
        let record = WaitRecord {
            key,
            handle: self.id,
            family,
            range,
            mode,
        };
        let fd = file.fd();
        let mut backoff = BACKOFF_FIRST;
        let mut table = self.table(key);
        loop {
            let inode = table.inode(key);
            if self.backend == Backend::Posix {
                // A flock wait that is the thread's own closes a descriptor of the
                // file, which would drop the POSIX lock taken here: it moves to a
                // waiter child first.
                inode.evict_flock_waits();
            }
            let conflicts = inode.conflicts(self.id, family, range, mode);
            if let Some(c) = conflicts.first() {
                if deadline.is_try() {
                    return Err(self.held_here(c));
                }
                if table.would_deadlock(me, conflicts.iter().map(|c| c.thread)) {
                    return Err(inode_table::deadlock_error(&self.name, c.thread, me));
                }
                call.check(deadline, &self.name)?;
                table = inode_table::wait_for_handles(table, me, record, deadline);
                continue;
            }
            // A flock holding is one whole-file segment at most.
            let held_before = match inode.holding_mut(self.id) {
                Some(h) if self.backend == Backend::Flock => h.ranges.iter().next().map(|(_, m)| m),
                _ => None,
            };
            match backend::apply(fd, self.backend, range, Some(mode)) {
                Ok(()) => {
                    self.record(inode, range, mode, me);
                    return Ok(());
                }
                Err(e) if e == libc::EAGAIN || e == libc::EACCES => {}
                Err(e) => {
                    self.restore_flock(file, &mut table, held_before)?;
                    return Err(self.kernel_error(e));
                }
            }
            self.restore_flock(file, &mut table, held_before)?;
            if deadline.is_try() {
                return Err(self.held_elsewhere());
            }
            call.check(deadline, &self.name)?;
            let posix = self.backend == Backend::Posix;
            if posix {
                table.holding_mut(key, self.id, self.backend).pending = Some((range, mode));
            }
            let flock_fds = if self.backend == Backend::Flock && !table.has_posix_locks(key) {
                wait::own_flock_fds(fd, deadline, call)
            } else {
                None
            };
            if let Some(f) = &flock_fds {
                table.inode(key).flock_waits.push(f.words());
            }
            table.start_waiting(me, record);
            drop(table);
            let kernel_call = backend::lock_call(self.backend, range, mode, true);
            let outcome =
                wait::in_kernel(fd, kernel_call, posix, deadline, call, flock_fds.as_ref());
            table = inode_table::table();
            table.done_waiting(me);
            if let Some(f) = flock_fds {
                // Closed under the table's mutex: no POSIX lock of this process is
                // held on the file (one about to be taken evicts the wait first).
                table.inode(key).forget_flock_wait(f.words());
                drop(f);
            }
            // A granted POSIX lock is recorded before the reservation ends: in between,
            // the table would see no POSIX lock here and close a deferred descriptor,
            // which drops every POSIX lock of the process on the file.
            if let Ok(Some(Outcome::Granted)) = outcome {
                self.record(table.inode(key), range, mode, me);
                table.settle(key);
                return Ok(());
            }
            if posix {
                table.holding_mut(key, self.id, self.backend).pending = None;
                table.settle(key);
            }
            let failure = match outcome? {
                Some(Outcome::Granted) => return Ok(()), // recorded above
                Some(Outcome::Failed(e)) => {
                    self.restore_flock(file, &mut table, held_before)?;
                    return Err(self.kernel_error(e));
                }
                // Whether the call got the lock is not known: a flock upgrade may
                // have let the shared lock go, which the table still records.
                Some(Outcome::Unknown) => {
                    self.restore_flock(file, &mut table, held_before)?;
                    continue;
                }
                Some(Outcome::TimedOut) => libc::ETIMEDOUT,
                Some(Outcome::Cancelled) => libc::ECANCELED,
                None => {
                    // No waiter child can hold a POSIX lock here: retry with backoff.
                    drop(table);
                    let nap = deadline.remaining().map_or(backoff, |r| r.min(backoff));
                    wait::sleep(call, nap)?;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    table = inode_table::table();
                    continue;
                }
            };
            // The wait was aborted; the lock may have been granted just before. One
            // non-blocking attempt settles it: a grant that won the race is kept.
            match backend::apply(fd, self.backend, range, Some(mode)) {
                Ok(()) => {
                    self.record(table.inode(key), range, mode, me);
                    return Ok(());
                }
                Err(e) if e == libc::EAGAIN || e == libc::EACCES => {
                    self.restore_flock(file, &mut table, held_before)?;
                    return Err(if failure == libc::ETIMEDOUT {
                        wait::timed_out(&self.name)
                    } else {
                        wait::cancelled(&self.name)
                    });
                }
                Err(e) => {
                    self.restore_flock(file, &mut table, held_before)?;
                    return Err(self.kernel_error(e));
                }
            }
        }
    }

    fn held_here(&self, c: &Conflict) -> Error {
        let by = if c.thread == sys::thread_id() {
            "this thread"
        } else {
            "another thread"
        };
        Error::new(
            libc::EAGAIN,
            format!(
                "{}: the lock is held by another handle of this process ({} {} lock on bytes \
                 {}..{}, taken by {by})",
                self.name,
                c.backend.name(),
                c.mode.name(),
                c.range.start,
                c.range.end,
            ),
        )
    }

    fn held_elsewhere(&self) -> Error {
        Error::new(
            libc::EAGAIN,
            format!("{}: the lock is held by another process", self.name),
        )
    }

    fn kernel_error(&self, e: i32) -> Error {
        let call = match self.backend {
            Backend::Flock => "flock",
            Backend::Ofd => "fcntl(F_OFD_SETLK)",
            _ => "fcntl(F_SETLK)",
        };
        Error::sys(e, call, &self.name)
    }

    /// After a failed flock upgrade (the kernel dropped the shared lock), takes the
    /// shared lock back without waiting; if that fails, records that nothing is held.
    fn restore_flock(
        &self,
        file: &OpenFile,
        table: &mut Table,
        held_before: Option<Mode>,
    ) -> Result<()> {
        if self.backend != Backend::Flock || held_before != Some(Mode::Shared) {
            return Ok(());
        }
        if backend::apply(
            file.fd(),
            Backend::Flock,
            ByteRange::WHOLE,
            Some(Mode::Shared),
        )
        .is_ok()
        {
            // UNLINK: the file may have been deleted while the lock was let go.
            if !matches!(self.is_stale(file), Ok(true)) {
                // The table says so again: while the lock was let go, another handle
                // of this process may have been granted a conflicting lock, which
                // removed this handle's record if a fork had made it the kernel's to
                // arbitrate (`Inode::drop_released_by_fork`).
                table
                    .holding_mut(file.key, self.id, self.backend)
                    .ranges
                    .set(ByteRange::WHOLE, Mode::Shared);
                return Ok(());
            }
            let _ = backend::apply(file.fd(), Backend::Flock, ByteRange::WHOLE, None);
        }
        table
            .holding_mut(file.key, self.id, self.backend)
            .ranges
            .clear(ByteRange::WHOLE);
        table.settle(file.key);
        Err(Error::new(
            libc::ENOLCK,
            format!(
                "{}: the upgrade failed and the shared lock, which flock releases before an \
                 upgrade, was taken by another process meanwhile: this handle holds nothing",
                self.name
            ),
        ))
    }

    fn record(&self, inode: &mut Inode, range: ByteRange, mode: Mode, me: ThreadId) {
        if self.backend != Backend::Posix {
            inode.drop_released_by_fork(self.id, Family::from(self.backend), range, mode);
        }
        record_in(inode.holding_or_new(self.id, self.backend), range, mode, me);
        self.check_out(inode);
    }

    /// Releases `range`, as [`crate::Lock::unlock`] describes.
    #[inline(always)]
    pub(crate) fn unlock(&self, range: ByteRange) -> Result<()> {
        if let Some(solo) = self.solo_unlock(range) {
            let result = solo.call.run(solo.fd);
            return self.solo_unlocked(solo, result);
        }
        self.unlock_table(range)
    }

    /// [`KernelLock::unlock`] through the table.
    #[inline(never)]
    fn unlock_table(&self, range: ByteRange) -> Result<()> {
        self.check_owner()?;
        let file = self.file();
        let mut table = self.table(file.key);
        let result = self.release(&file, &mut table, range);
        self.check_out(table.inode(file.key));
        result
    }

    /// Releases `range`; under UNLINK, deletes the file first when this is the
    /// handle's last lock on it and it can hold the whole file exclusively now (and no
    /// fair waiter is in line for it: they would lose their places).
    fn release(&self, file: &OpenFile, table: &mut Table, range: ByteRange) -> Result<()> {
        if self.unlink.is_some()
            && sys::getpid() == self.locker.load(Ordering::Relaxed)
            && table.holding(file.key, self.id).is_some_and(|h| {
                !h.ranges.is_empty()
                    && h.ranges
                        .iter()
                        .all(|(r, _)| range.start <= r.start && r.end <= range.end)
            })
            && !fair::anyone_in_line(file.fd())
            && self.hold_whole_exclusive(file, table)
        {
            self.unlink_if_ours(file);
            return self.release_range(file, table, ByteRange::WHOLE);
        }
        self.release_range(file, table, range)
    }

    /// True when the handle holds the whole file exclusively: it did, or a
    /// non-blocking conversion got it (no other handle of this process and no other
    /// process holds any lock on the file).
    fn hold_whole_exclusive(&self, file: &OpenFile, table: &mut Table) -> bool {
        let held = table
            .holding(file.key, self.id)
            .map(|h| h.ranges.iter().collect::<Vec<_>>())
            .unwrap_or_default();
        if held == [(ByteRange::WHOLE, Mode::Exclusive)] {
            return true;
        }
        let family = Family::from(self.backend);
        if !table
            .conflicts(file.key, self.id, family, ByteRange::WHOLE, Mode::Exclusive)
            .is_empty()
        {
            return false;
        }
        // A failed flock conversion drops the shared lock: harmless, it is being
        // released anyway.
        if backend::apply(
            file.fd(),
            self.backend,
            ByteRange::WHOLE,
            Some(Mode::Exclusive),
        )
        .is_err()
        {
            return false;
        }
        table
            .holding_mut(file.key, self.id, self.backend)
            .ranges
            .set(ByteRange::WHOLE, Mode::Exclusive);
        true
    }

    /// Deletes the path if its last component is still the handle's file (never a
    /// symbolic link to it). Called only while holding the whole file exclusively, so
    /// no UNLINK handle can have replaced it in between. A file that cannot be deleted
    /// (permissions) is left, as if another holder had it.
    fn unlink_if_ours(&self, file: &OpenFile) {
        let Some(u) = &self.unlink else {
            return;
        };
        if sys::stat(&u.path, false).is_ok_and(|st| key_of(&st) == file.key) {
            let _ = sys::unlink(&u.path);
        }
    }

    /// Releases `range` in the kernel and the table.
    fn release_range(&self, file: &OpenFile, table: &mut Table, range: ByteRange) -> Result<()> {
        let key = file.key;
        let fd = file.fd();
        if self.backend == Backend::Posix && table.others_hold_posix(key, self.id) {
            let Some(h) = table.holding(key, self.id) else {
                return Ok(());
            };
            let others = table.others_strongest(key, self.id, range);
            for (piece, mode) in backend::posix::release_ops(&h.ranges, range, &others) {
                backend::apply(fd, self.backend, piece, mode).map_err(|e| self.kernel_error(e))?;
            }
            if let Some(h) = table.inode(key).holding_mut(self.id) {
                h.ranges.clear(range);
            }
        } else {
            let mut none = RangeMap::new();
            let inode = table.inode(key);
            let held = match inode.holding_mut(self.id) {
                Some(h) => &mut h.ranges,
                None => &mut none,
            };
            self.release_alone(fd, held, range)?;
        }
        table.inode(key).settle();
        Ok(())
    }

    /// Releases `range` of what the handle holds (`held`), in the kernel and then in
    /// `held`, when no other handle of this process holds a POSIX lock on the file
    /// (the process's POSIX lock is then the handle's alone).
    fn release_alone(
        &self,
        fd: BorrowedFd<'_>,
        held: &mut RangeMap,
        range: ByteRange,
    ) -> Result<()> {
        if self.backend == Backend::Posix {
            for (piece, _) in held.overlapping(range) {
                backend::apply(fd, self.backend, piece, None).map_err(|e| self.kernel_error(e))?;
            }
        } else {
            backend::apply(fd, self.backend, range, None).map_err(|e| self.kernel_error(e))?;
        }
        held.clear(range);
        Ok(())
    }

    /// What the handles of this process hold on the file (backend, mode, range): the
    /// locks a [`Resolver`] names this process as the holder of.
    fn own_locks(&self, key: InodeKey) -> Vec<(Backend, Mode, ByteRange)> {
        let table = self.table(key);
        table
            .get(key)
            .map(|inode| {
                inode
                    .holdings
                    .iter()
                    .flat_map(|h| h.ranges.iter().map(move |(r, m)| (h.backend, m, r)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One lock that conflicts with `mode` on `range`, as [`crate::Lock::query`]
    /// describes.
    pub(crate) fn query(&self, mode: Mode, range: ByteRange) -> Result<Option<Holder>> {
        let file = self.file();
        let key = file.key;
        let family = Family::from(self.backend);
        let me = sys::getpid();
        let (here, own_flocks) = {
            let table = self.table(key);
            let here = table
                .conflicts(key, self.id, family, range, mode)
                .first()
                .copied();
            let own: Vec<Mode> = table
                .get(key)
                .map(|i| {
                    i.holdings
                        .iter()
                        .filter(|h| h.backend == Backend::Flock)
                        .filter_map(|h| h.ranges.iter().map(|(_, m)| m).max())
                        .collect()
                })
                .unwrap_or_default();
            (here, own)
        };
        if let Some(c) = here {
            return Ok(Some(Holder {
                backend: c.backend,
                mode: c.mode,
                start: c.range.start,
                len: c.range.api_len(),
                pid: me,
                is_self: true,
                command: holders::command(me),
                processes: vec![crate::Process {
                    pid: me,
                    command: holders::command(me),
                    fds: Vec::new(),
                }],
                lock_file: None,
                etcd: None,
            }));
        }
        // The device /proc names the file by: read only when /proc is (a flock query,
        // or a conflict found by the kernel to resolve).
        let proc_key = || holders::proc_key(file.fd(), key);
        if self.backend == Backend::Flock {
            let proc_key = proc_key();
            let mut resolver = Resolver::new(proc_key).with_own(self.own_locks(key));
            let mut locks: Vec<ProcLock> = holders::proc_locks(proc_key)?
                .into_iter()
                .filter(|l| l.backend == Backend::Flock)
                .collect();
            // This process's own flock locks (this handle's and compatible ones of its
            // other handles) are not conflicts: take one line out for each.
            for m in own_flocks {
                let pos = locks
                    .iter()
                    .position(|l| l.mode == m && l.pid == me)
                    .or_else(|| {
                        locks
                            .iter()
                            .position(|l| l.mode == m && resolver.pid_of(l) == me)
                    });
                if let Some(p) = pos {
                    locks.remove(p);
                }
            }
            let hit = locks
                .iter()
                .find(|l| mode == Mode::Exclusive || l.mode == Mode::Exclusive);
            return Ok(hit.map(|l| resolver.holder(l)));
        }
        let found = backend::conflicting(file.fd(), self.backend, range, mode)
            .map_err(|e| Error::sys(e, "fcntl(F_GETLK)", &self.name))?;
        Ok(found.map(|(range, mode, pid)| {
            let backend = if pid == -1 {
                Backend::Ofd
            } else {
                Backend::Posix
            };
            let lock = ProcLock {
                backend,
                mode,
                range,
                pid,
            };
            let mut resolver = Resolver::new(proc_key()).with_own(self.own_locks(key));
            let pid = resolver.pid_of(&lock);
            resolver.holder_with_pid(&lock, pid)
        }))
    }

    /// Every lock on the file, from any process and any mechanism, as /proc/locks
    /// shows it (POSIX locks of this process appear once, as the kernel holds them).
    pub(crate) fn list(&self) -> Result<Vec<Holder>> {
        let (key, own) = {
            let file = self.file();
            (holders::proc_key(file.fd(), file.key), file.key)
        };
        let locks = holders::proc_locks(key)?;
        let mut resolver = Resolver::new(key).with_own(self.own_locks(own));
        Ok(locks.iter().map(|l| resolver.holder(l)).collect())
    }

    /// Wakes this handle's thread if it waits for another handle of this process
    /// (after a cancel).
    pub(crate) fn wake_waiters(&self) {
        let key = self.file().key;
        let table = inode_table::table();
        if let Some(inode) = table.get(key).filter(|i| i.waiters > 0) {
            inode.cond.notify_all();
        }
    }

    /// Releases what the handle holds and closes it, as [`crate::Lock::close`]
    /// describes; does nothing the second time.
    pub(crate) fn close_inner(&mut self) -> Result<()> {
        let file = self.file.get_mut().unwrap_or_else(|p| p.into_inner());
        let key = file.key;
        let Some(fd) = file.fd.take() else {
            return Ok(());
        };
        // The descriptor, back in place for the release (taken out again below).
        let file = OpenFile {
            fd: Some(fd),
            key,
            writable: file.writable,
        };
        // A flock or OFD lock taken before a fork may be shared with a child through the
        // open file description: then it stays with the child. Only when a fork happened
        // since the lock was taken is /proc searched for such a process (outside the
        // table's lock: it reads other processes' descriptor lists).
        let forked_since = self
            .table(key)
            .holding(key, self.id)
            .is_some_and(|h| !h.ranges.is_empty() && h.fork_gen != fork_generation());
        let shared_by_fork = forked_since
            && self.backend != Backend::Posix
            && holders::description_shared_elsewhere(file.fd(), key);
        let mut table = self.table(key);
        let mut result = Ok(());
        if table
            .holding(key, self.id)
            .is_some_and(|h| !h.ranges.is_empty())
        {
            let release = match self.backend {
                Backend::Posix => sys::getpid() == self.opener,
                _ => !shared_by_fork,
            };
            if release {
                result = self.release(&file, &mut table, ByteRange::WHOLE);
            }
        }
        table.inode(key).holdings.retain(|h| h.handle != self.id);
        if let Some(queue) = &mut self.fair {
            queue.close(&mut table);
        }
        let fd = file.fd.expect("put back above");
        let keep_open = table.has_posix_locks(key);
        let inode = table.inode(key);
        inode.open_handles = inode.open_handles.saturating_sub(1);
        if keep_open {
            inode.deferred.push(fd);
        } else {
            drop(fd);
        }
        table.settle(key);
        table.forget_if_unused(key);
        result
    }
}

impl Drop for KernelLock {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}

impl std::fmt::Debug for KernelLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelLock")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .field("fd", &self.file().fd.as_ref().map(|f| f.as_raw_fd()))
            .finish()
    }
}

/// Records in `h` that thread `me` took `mode` on `range`.
fn record_in(h: &mut Holding, range: ByteRange, mode: Mode, me: ThreadId) {
    h.ranges.set(range, mode);
    h.thread = me;
    h.fork_gen = fork_generation();
    h.pending = None;
}
