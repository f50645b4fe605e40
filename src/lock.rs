//! [`Lock`]: one lock owner on one file, over one backend or a set of them.
//!
//! A handle is one [`KernelLock`] (FLOCK, OFD or POSIX), a [`DotLock`], or a set: a
//! DOTLOCK lock file and/or a FLOCK lock and/or an OFD or POSIX lock, taken in that
//! order and released in reverse. Every part shares the handle's [`CallState`], so
//! one cancel reaches whichever part is waiting.

use std::ffi::CString;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::dotlock::DotLock;
use crate::etcd::EtcdLock;
use crate::kernel_lock::KernelLock;
use crate::range::ByteRange;
use crate::wait::{CallState, Deadline};
use crate::{Backend, Error, Flags, Holder, Mode, Options, Result};

/// An open lock handle: one owner of locks on one file.
///
/// Every handle is its own owner, whatever the backend: two handles on one file
/// conflict even in one thread, closing one never releases another's locks, and a
/// blocking wait that only this process could end (the same thread, or a cycle of this
/// process's waiting threads) fails with `EDEADLK`. Methods take `&self` and are
/// thread-safe; one lock or unlock runs at a time per handle (`EBUSY` otherwise).
///
/// Dropping the handle closes it: see [`Lock::close`].
pub struct Lock {
    /// The kernel locks in taking order: FLOCK, then OFD or POSIX.
    kernel: Vec<KernelLock>,
    /// The DOTLOCK lock file, taken before the kernel locks.
    dot: Option<DotLock>,
    /// An ETCD handle (alone: nothing else is then set).
    etcd: Option<EtcdLock>,
    /// [`Backend`] bits.
    backends: u32,
    /// A set: what the whole handle holds (`NONE`, or a mode), to restore on failure.
    held: AtomicU8,
    call: CallState,
}

const NONE: u8 = 0;

/// The backends a set takes, in order.
const ORDER: [Backend; 3] = [Backend::Flock, Backend::Ofd, Backend::Posix];

/// Checks the option bits; returns the backend bits (0 means FLOCK).
fn backend_bits(options: &Options) -> Result<u32> {
    let known = Backend::Flock as u32
        | Backend::Ofd as u32
        | Backend::Posix as u32
        | Backend::Dotlock as u32
        | Backend::Etcd as u32;
    if options.backends & !known != 0 {
        return Err(Error::new(
            libc::EINVAL,
            format!("unknown backend bits {:#x}", options.backends),
        ));
    }
    if !Flags::all().contains(options.flags) {
        return Err(Error::new(
            libc::EINVAL,
            format!("unknown flag bits {:#x}", options.flags.bits()),
        ));
    }
    if options.create_mode & !0o777 != 0 {
        return Err(Error::new(
            libc::EINVAL,
            format!(
                "creation mode {:#o} has bits beyond the permission bits 0777 (setuid, \
                 setgid, sticky or unknown); a lock file needs at most 0666",
                options.create_mode
            ),
        ));
    }
    let fcntl = Backend::Ofd as u32 | Backend::Posix as u32;
    if options.backends & fcntl == fcntl {
        return Err(Error::new(
            libc::EINVAL,
            "the OFD and POSIX backends cannot be combined: choose one fcntl mechanism",
        ));
    }
    if options.backends & Backend::Etcd as u32 != 0 {
        if options.backends != Backend::Etcd as u32 {
            return Err(Error::new(
                libc::EINVAL,
                "the ETCD backend cannot be combined with the file backends: a handle \
                 locks in etcd or in the file system",
            ));
        }
        if options.flags.contains(Flags::FAIR) || options.flags.contains(Flags::UNLINK) {
            return Err(Error::new(
                libc::EOPNOTSUPP,
                "UNILOCK_FAIR and UNILOCK_UNLINK do not apply to the ETCD backend, whose \
                 queue is first come, first served already and which has no file",
            ));
        }
    }
    let bits = if options.backends == 0 {
        Backend::Flock as u32
    } else {
        options.backends
    };
    if options.flags.contains(Flags::FAIR) && bits & Backend::Dotlock as u32 != 0 {
        return Err(Error::new(
            libc::EOPNOTSUPP,
            "UNILOCK_FAIR needs the FLOCK, OFD or POSIX backend without DOTLOCK: a lock \
             file has no queue",
        ));
    }
    if options.flags.contains(Flags::UNLINK) {
        if bits & Backend::Dotlock as u32 != 0 {
            return Err(Error::new(
                libc::EOPNOTSUPP,
                "UNILOCK_UNLINK does not apply to DOTLOCK, whose lock file exists only while \
                 the lock is held",
            ));
        }
        if bits.count_ones() > 1 {
            return Err(Error::new(
                libc::EOPNOTSUPP,
                "UNILOCK_UNLINK needs a single backend (FLOCK, OFD or POSIX)",
            ));
        }
    }
    Ok(bits)
}

impl Lock {
    /// Opens `path` for locking (no lock is taken yet).
    ///
    /// An existing file is opened without `O_CREAT` (a sticky directory refuses
    /// `O_CREAT` on another user's file even when it exists); a missing one is created
    /// with `options.create_mode` (0600 when 0) if [`Flags::CREATE`] is set. flock
    /// handles use a read-only descriptor; OFD and POSIX handles a read-write one where
    /// the file allows it, else a read-only one (shared locks only). The descriptor is
    /// close-on-exec unless [`Flags::INHERIT`]; a symbolic link as the last component is
    /// refused (`ELOOP`) unless [`Flags::FOLLOW`]; FIFOs, sockets and devices are refused
    /// with `EINVAL` without being opened. The file is never written or truncated.
    ///
    /// With [`Flags::UNLINK`] the handle keeps the path: a lock call that finds the
    /// file deleted or replaced opens the path again, and the release of the handle's
    /// last lock deletes the file when it can hold it whole and exclusively (see
    /// [`Flags::UNLINK`]).
    ///
    /// DOTLOCK alone: `path` is the lock file, which exists only while the lock is
    /// held; opening creates nothing (its directory must exist). In a set with other
    /// backends the lock file is `path` plus `.lock` (the mailbox convention) and the
    /// kernel locks are taken on `path` ([`Flags::CREATE`] applies to `path` only).
    pub fn open(path: impl AsRef<Path>, options: &Options) -> Result<Lock> {
        let bits = backend_bits(options)?;
        let path = path.as_ref();
        if bits == Backend::Etcd as u32 {
            let name = path
                .to_str()
                .ok_or_else(|| Error::new(libc::EINVAL, "the etcd lock name is not valid UTF-8"))?;
            let mut lock = Lock::assemble(Vec::new(), None, bits);
            lock.etcd = Some(EtcdLock::open(name, options)?);
            return Ok(lock);
        }
        let name = path.display().to_string();
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| Error::new(libc::EINVAL, "the path contains a NUL byte"))?;
        if cpath.is_empty() {
            // What open("") says, for every backend alike.
            return Err(Error::new(libc::ENOENT, "the path is empty"));
        }
        let dot = if bits & Backend::Dotlock as u32 == 0 {
            None
        } else if bits == Backend::Dotlock as u32 {
            Some(DotLock::open(path, options)?)
        } else {
            let mut lock_file = PathBuf::from(path.as_os_str());
            lock_file.as_mut_os_string().push(".lock");
            Some(DotLock::open(&lock_file, options)?)
        };
        let mut kernel = Vec::new();
        for b in ORDER.into_iter().filter(|&b| bits & b as u32 != 0) {
            kernel.push(KernelLock::open(cpath.clone(), name.clone(), b, options)?);
        }
        Ok(Lock::assemble(kernel, dot, bits))
    }

    /// Makes a handle on an open descriptor, which is duplicated (the caller keeps
    /// `fd`). The duplicate shares the open file description: flock and OFD locks taken
    /// through the handle are the description's, as with flock(1) on a descriptor.
    /// The kernel therefore sees one owner in all handles made from descriptors of one
    /// open file description: the library keeps them apart while they lock without
    /// waiting, but two of them waiting at once for FLOCK or OFD locks held elsewhere
    /// may both be granted. Make one handle per open file description (or open the
    /// path). DOTLOCK and [`Flags::UNLINK`] need a path: `EINVAL`.
    pub fn from_fd(fd: BorrowedFd<'_>, options: &Options) -> Result<Lock> {
        let bits = backend_bits(options)?;
        if bits & Backend::Dotlock as u32 != 0 {
            return Err(Error::new(
                libc::EINVAL,
                "the DOTLOCK backend needs a path: its lock file is made next to the file",
            ));
        }
        if bits & Backend::Etcd as u32 != 0 {
            return Err(Error::new(
                libc::EINVAL,
                "the ETCD backend needs a lock name, not a descriptor",
            ));
        }
        let mut kernel = Vec::new();
        for b in ORDER.into_iter().filter(|&b| bits & b as u32 != 0) {
            kernel.push(KernelLock::from_fd(fd, b, options)?);
        }
        Ok(Lock::assemble(kernel, None, bits))
    }

    fn assemble(kernel: Vec<KernelLock>, dot: Option<DotLock>, backends: u32) -> Lock {
        Lock {
            kernel,
            dot,
            etcd: None,
            backends,
            held: AtomicU8::new(NONE),
            call: CallState::default(),
        }
    }

    /// The one kernel lock of a handle that is nothing else.
    fn single(&self) -> Option<&KernelLock> {
        match (&self.dot, self.kernel.as_slice()) {
            (None, [k]) => Some(k),
            _ => None,
        }
    }

    /// The descriptor the handle locks through (for `fstat`, `poll`, passing to a
    /// child); in a set, the FLOCK one if any, else the OFD or POSIX one. Closing it, or
    /// any other descriptor of the file, drops the process's POSIX locks on the file:
    /// that is the kernel's rule, and why OFD is preferred. An [`Flags::UNLINK`] handle
    /// gets a new descriptor when a lock call finds that its file was deleted or
    /// replaced: ask again after locking. A DOTLOCK-only handle has no descriptor:
    /// `EOPNOTSUPP`.
    pub fn fd(&self) -> Result<RawFd> {
        match self.kernel.first() {
            Some(k) => Ok(k.fd()),
            None if self.etcd.is_some() => Err(Error::new(
                libc::EOPNOTSUPP,
                "an ETCD handle has no descriptor: its lock is a key in etcd",
            )),
            None => Err(Error::new(
                libc::EOPNOTSUPP,
                "a DOTLOCK handle has no descriptor: its lock file exists only while held",
            )),
        }
    }

    /// The mechanism of this handle; for a set, the first one it takes.
    pub fn backend(&self) -> Backend {
        if self.etcd.is_some() {
            Backend::Etcd
        } else if self.dot.is_some() {
            Backend::Dotlock
        } else {
            self.kernel[0].backend()
        }
    }

    /// The backends of this handle, in taking order (DOTLOCK, FLOCK, then OFD or
    /// POSIX): one for a handle that is not a set.
    pub fn backends(&self) -> Vec<Backend> {
        [Backend::Etcd, Backend::Dotlock]
            .into_iter()
            .chain(ORDER)
            .filter(|&b| self.backends & b as u32 != 0)
            .collect()
    }

    fn range(&self, start: u64, len: u64) -> Result<ByteRange> {
        let range = ByteRange::from_api(start, len)?;
        let whole_only = Backend::Flock as u32 | Backend::Dotlock as u32 | Backend::Etcd as u32;
        if self.backends & whole_only != 0 && !range.is_whole() {
            let which = if self.backends & Backend::Etcd as u32 != 0 {
                "ETCD"
            } else if self.backends & Backend::Dotlock as u32 != 0 {
                "DOTLOCK"
            } else {
                "FLOCK"
            };
            return Err(Error::new(
                libc::EOPNOTSUPP,
                format!(
                    "the {which} backend locks whole files only (start 0, length 0); byte \
                     ranges need the OFD or POSIX backend alone"
                ),
            ));
        }
        Ok(range)
    }

    /// Takes `mode` on `len` bytes from `start` (`len` 0: to the end; `(0, 0)`: the
    /// whole file), waiting up to `timeout`: `Some(ZERO)` tries once, `None` waits
    /// forever.
    ///
    /// Re-locking a range the handle holds converts it (upgrade, downgrade, grow,
    /// split); locks are not counted. OFD and POSIX conversions are atomic. A flock
    /// upgrade is not atomic in the kernel (it releases the shared lock before it
    /// waits): when the upgrade fails, times out or is cancelled, the shared lock is
    /// taken back without waiting, and if another process got an exclusive lock in
    /// between, the call fails with `ENOLCK` and the handle holds nothing.
    ///
    /// [`Flags::UNLINK`]: a handle that holds nothing (or upgrades a FLOCK lock) checks,
    /// before it waits and once it has the lock, that its file is still the one at the
    /// path and not deleted; if not, it releases it, opens the path again (creating the
    /// file under [`Flags::CREATE`]) and locks that file, within the same timeout. The
    /// handle's descriptor ([`Lock::fd`]) is then a new one.
    ///
    /// A set takes its backends in order (DOTLOCK, FLOCK, then OFD or POSIX) within the
    /// one timeout; when one fails (held, timed out, cancelled), those taken by this
    /// call are released, or converted back, so that the handle holds what it held
    /// before.
    ///
    /// Errors: `EAGAIN` (held, not waiting), `ETIMEDOUT`, `ECANCELED` ([`Lock::cancel`]),
    /// `EDEADLK` (only this process could end the wait; POSIX also from the kernel),
    /// `EBUSY` (another lock or unlock on this handle is in progress), `EOPNOTSUPP`
    /// (a byte range on a FLOCK or DOTLOCK handle, a shared DOTLOCK lock), `EINVAL` (a
    /// range into the reserved offsets at or above 2^62), `EACCES` (an exclusive fcntl
    /// lock on a file opened read-only). [`Flags::FAIR`]: the call queues behind earlier
    /// fair callers (see there).
    #[inline(always)]
    pub fn lock(&self, mode: Mode, start: u64, len: u64, timeout: Option<Duration>) -> Result<()> {
        let range = self.range(start, len)?;
        if mode == Mode::Shared && self.dot.is_some() {
            return Err(Error::new(
                libc::EOPNOTSUPP,
                "a DOTLOCK lock is exclusive only: a lock file cannot be shared",
            ));
        }
        let _call = self.call.begin(true)?;
        let deadline = Deadline::after(timeout);
        if let Some(e) = &self.etcd {
            return e.lock(&self.call, mode, &deadline);
        }
        match self.single() {
            Some(k) => k.lock(&self.call, mode, range, &deadline),
            None => self.lock_set(mode, range, &deadline),
        }
    }

    /// [`Lock::lock`] of a set, or of a DOTLOCK alone.
    #[inline(never)]
    fn lock_set(&self, mode: Mode, range: ByteRange, deadline: &Deadline) -> Result<()> {
        let before = self.held.load(Ordering::Relaxed);
        if let Some(d) = &self.dot {
            d.lock(&self.call, deadline)?;
        }
        for (i, k) in self.kernel.iter().enumerate() {
            if let Err(e) = k.lock(&self.call, mode, range, deadline) {
                self.restore(i, before);
                return Err(e);
            }
        }
        self.held.store(mode as u8, Ordering::Relaxed);
        Ok(())
    }

    /// After part `failed` of a set failed: puts the parts before it, and the lock
    /// file, back to what the handle held `before` (nothing, or a mode).
    fn restore(&self, failed: usize, before: u8) {
        let now = Deadline::after(Some(Duration::ZERO));
        for k in self.kernel[..failed].iter().rev() {
            let _ = match Mode::from_raw(u32::from(before)) {
                None => k.unlock(ByteRange::WHOLE),
                Some(m) => k.lock(&self.call, m, ByteRange::WHOLE, &now),
            };
        }
        if before == NONE {
            if let Some(d) = &self.dot {
                let _ = d.unlock();
            }
        }
    }

    /// Releases `len` bytes from `start` (`(0, 0)`: everything this handle holds).
    /// Bytes the handle does not hold are ignored. A release that reaches the reserved
    /// offsets (2^62 and up) is made to the end of the file: locks the owner (the open
    /// file description; for POSIX, the process) took there outside the library go
    /// too. For POSIX, bytes another handle of
    /// this process holds keep that handle's lock in the kernel. A set releases its
    /// backends in reverse order.
    ///
    /// [`Flags::UNLINK`]: when this releases the handle's last lock on the file, the
    /// file is deleted first if the handle can hold the whole file exclusively without
    /// waiting (it does, or a non-blocking conversion to an exclusive lock on the whole
    /// file succeeds) and the path still names it; otherwise (another holder, of this
    /// process or another) the file is left. Only the process that took the lock
    /// deletes it.
    ///
    /// DOTLOCK: removes the lock file if it is still this handle's; `ENOLCK` when
    /// another process removed it meanwhile, judging it stale (see
    /// [`Options::stale_after_s`] and [`Lock::touch`]), or when it could not be removed
    /// because another process holds an exclusive flock on it for more than about
    /// 0.5 s (it is left marked released, and unilock lockers remove it later).
    #[inline(always)]
    pub fn unlock(&self, start: u64, len: u64) -> Result<()> {
        let range = self.range(start, len)?;
        let _call = self.call.begin(false)?;
        if let Some(e) = &self.etcd {
            return e.unlock();
        }
        match self.single() {
            Some(k) => k.unlock(range),
            None => self.unlock_set(range),
        }
    }

    /// [`Lock::unlock`] of a set, or of a DOTLOCK alone.
    #[inline(never)]
    fn unlock_set(&self, range: ByteRange) -> Result<()> {
        let mut result = Ok(());
        for k in self.kernel.iter().rev() {
            let r = k.unlock(range);
            result = result.and(r);
        }
        if let Some(d) = &self.dot {
            result = result.and(d.unlock());
        }
        self.held.store(NONE, Ordering::Relaxed);
        result
    }

    /// Tells whether `mode` on the range could be taken now, taking nothing: `None`
    /// when it could, else one conflicting lock with its holder (pid and command
    /// resolved from /proc for OFD and flock holders too; `is_self` for this process).
    /// flock has no query call: its holders come from /proc/locks, so a flock query
    /// fails where /proc cannot be read. A DOTLOCK lock file that is stale is reported
    /// free (a lock call would break it). A set reports the first conflict in taking
    /// order.
    pub fn query(&self, mode: Mode, start: u64, len: u64) -> Result<Option<Holder>> {
        let range = self.range(start, len)?;
        if let Some(e) = &self.etcd {
            return e.query();
        }
        if let Some(d) = &self.dot {
            if let Some(h) = d.query()? {
                return Ok(Some(h));
            }
        }
        for k in &self.kernel {
            if let Some(h) = k.query(mode, range)? {
                return Ok(Some(h));
            }
        }
        Ok(None)
    }

    /// Every lock on the file, from any process and any mechanism, as /proc/locks
    /// shows it (POSIX locks of this process appear once, as the kernel holds them),
    /// and the DOTLOCK lock file's owner first when the handle has DOTLOCK and the lock
    /// file exists (stale or not).
    pub fn list(&self) -> Result<Vec<Holder>> {
        if let Some(e) = &self.etcd {
            return e.list();
        }
        let mut out = match &self.dot {
            Some(d) => d.list()?,
            None => Vec::new(),
        };
        if let Some(k) = self.kernel.first() {
            out.extend(k.list()?);
        }
        Ok(out)
    }

    /// DOTLOCK: the stale lock files that this handle's lock calls removed since the
    /// last call, each as the holder its owner record named, with
    /// [`crate::LockFile::stale`] saying why it was stale. Empty without DOTLOCK. The
    /// library prints nothing: this is how a caller learns of a break, to report it.
    pub fn take_broken(&self) -> Vec<Holder> {
        self.dot.as_ref().map_or_else(Vec::new, |d| d.take_broken())
    }

    /// Cancels the lock call in progress on this handle, from any thread: it returns
    /// `ECANCELED` (unless the lock was granted first). Returns false, and has no
    /// effect, when no lock call is in progress: a cancel is never remembered for a
    /// later call.
    pub fn cancel(&self) -> bool {
        if !self.call.cancel() {
            return false;
        }
        self.wake_waiters();
        true
    }

    #[cfg(feature = "capi")]
    /// Ends the lock call in progress with `ECANCELED`, and any wait that a call
    /// already under way would start from now on: for a close that must wait until
    /// every call on the handle has returned (the C API's `unilock_close`).
    pub(crate) fn shut_down(&self) {
        self.call.shut_down();
        self.wake_waiters();
    }

    #[cfg(feature = "capi")]
    /// Waits until no lock or unlock call runs on the handle, then refuses every later
    /// one with `EBADF` (after [`Lock::shut_down`], for a close).
    pub(crate) fn seal(&self, recheck: Duration) {
        self.call.seal(recheck);
    }

    #[cfg(feature = "capi")]
    /// Closes the handle as [`Lock::close`] does (after [`Lock::seal`]), leaving in its
    /// place an empty handle that refuses every call: for a C handle, whose memory
    /// outlives its close. Every descriptor and allocation of the old one goes.
    pub(crate) fn close_in_place(&mut self) -> Result<()> {
        let closed = Lock::assemble(Vec::new(), None, 0);
        closed.call.seal(Duration::ZERO);
        std::mem::replace(self, closed).close()
    }

    /// Wakes a thread of this handle waiting for another handle of this process.
    fn wake_waiters(&self) {
        for k in &self.kernel {
            k.wake_waiters();
        }
        if let Some(d) = &self.dot {
            d.wake_waiters();
        }
        if let Some(e) = &self.etcd {
            e.wake();
        }
    }

    /// DOTLOCK: refreshes the lock file's modification time, so that processes using
    /// [`Options::stale_after_s`] (or liblockfile, after 5 minutes, for lock files
    /// whose owner it cannot check) do not judge it stale; call it at least three
    /// times per `stale_after_s`. `ENOLCK` when the lock file was removed by another
    /// process meanwhile. ETCD: renews the lease now (instead of at the next third of
    /// its TTL); `ENOLCK` when it was lost. No lock held, or a kernel backend: nothing
    /// to do.
    pub fn touch(&self) -> Result<()> {
        if let Some(e) = &self.etcd {
            return e.touch();
        }
        match &self.dot {
            Some(d) => d.touch(),
            None => Ok(()),
        }
    }

    /// ETCD: the fencing token of the lock this handle holds: the create revision of
    /// its key, which grows with every grant of the lock. Pass it with each write to a
    /// storage system that remembers the highest token it has seen and refuses lower
    /// ones: a holder that lost the lock without knowing it (paused past its lease)
    /// then cannot overwrite its successor's work. `ENOLCK` when the handle holds no
    /// lock, or lost it (its lease expired); `EOPNOTSUPP` for the file backends, whose
    /// locks have no tokens.
    pub fn fence(&self) -> Result<u64> {
        match &self.etcd {
            Some(e) => e.fence(),
            None => Err(Error::new(
                libc::EOPNOTSUPP,
                "fencing tokens belong to the ETCD backend; file locks have none",
            )),
        }
    }

    /// Closes the handle, releasing what it holds, with two exceptions that follow
    /// the kernel: flock and OFD locks whose open file description a child still has,
    /// through a `fork()` after they were taken, stay with the child (closing merely
    /// drops this process's reference; the child is found through /proc and `kcmp(2)`),
    /// and a POSIX handle in a forked child has nothing to release. While this process
    /// holds POSIX locks on the file through other handles, the descriptor's close is
    /// deferred, since closing it would drop them.
    ///
    /// [`Flags::UNLINK`]: closing a handle that holds a lock releases it as
    /// [`Lock::unlock`] of everything does: the file is deleted first when the handle
    /// can hold it whole and exclusively without waiting. A lock that stays with a
    /// forked child is not released, and the file not deleted; nor does a process
    /// delete it that did not take the lock. Likewise a DOTLOCK lock file is removed
    /// only by the process that made it.
    pub fn close(mut self) -> Result<()> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<()> {
        let mut result = Ok(());
        for k in self.kernel.iter_mut().rev() {
            let r = k.close_inner();
            result = result.and(r);
        }
        if let Some(d) = &mut self.dot {
            result = result.and(d.close());
        }
        if let Some(e) = &self.etcd {
            result = result.and(e.close());
        }
        result
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("backends", &self.backends)
            .field("kernel", &self.kernel)
            .finish()
    }
}
