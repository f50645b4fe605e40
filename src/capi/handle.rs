//! The `unilock` handle and its functions.
//!
//! These are C entry points. Each one checks what it can (NULL, a pointer that is not
//! a live handle) before use; what it cannot check (that a non-NULL pointer points to
//! enough valid memory) is its caller's promise, so every function that takes a pointer
//! is `unsafe` for Rust callers and says so in its `# Safety` section.

use std::ffi::{CStr, c_char, c_int};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use super::boundary::{guard, null_argument};
pub use super::registry::unilock;
use super::registry::{self, Entered};
use crate::{Error, Flags, Holder, Lock, Mode, Options, Result};

/// A backend bit (`UNILOCK_BACKEND_*`). A plain integer type rather than a C enum, so
/// that any value a caller passes is defined behaviour and gets `-EINVAL` when unknown.
pub type unilock_backend = u32;
/// The default backend: FLOCK.
pub const UNILOCK_BACKEND_DEFAULT: unilock_backend = 0;
/// `flock(2)`: whole files; excludes flock(1), gofrs/flock, Python filelock.
pub const UNILOCK_BACKEND_FLOCK: unilock_backend = 1;
/// OFD locks (`F_OFD_SETLK`): byte ranges owned by the handle.
pub const UNILOCK_BACKEND_OFD: unilock_backend = 2;
/// POSIX record locks (`F_SETLK`): byte ranges; the library makes each handle an owner.
pub const UNILOCK_BACKEND_POSIX: unilock_backend = 4;
/// Lock files by existence, as liblockfile, lockfile(1), lockfile-progs and mail
/// programs make them: made by link() from a unique temporary file, holding the
/// owner's pid (first line, in ASCII), start time, host and boot id. Exclusive and
/// whole-file only. Alone, the path given to `unilock_open` is the lock file; in a set
/// with other backends the lock file is the path plus `.lock` (the mailbox
/// convention). A lock file is stale, and broken by the next taker, when its owner is
/// provably dead on this host (no such process, another process under that pid,
/// another boot), or when it was not refreshed (`unilock_touch`) for `stale_after_s`
/// seconds (0: never by age; a lock file whose owner cannot be checked, another host's
/// or one without a pid, is then never broken; 300 matches liblockfile's rule).
/// Breaking is race-free among unilock processes: a live lock file is never removed.
/// Waits are woken by inotify, and by the owner's exit; on NFS they back off (5 ms
/// doubling to 500 ms). Lock files are created 0600 unless `mode` says otherwise
/// (0644 lets other users' tools read the owner's pid, and lets them hold up a
/// release by flocking the lock file).
pub const UNILOCK_BACKEND_DOTLOCK: unilock_backend = 8;
/// A lock in an etcd cluster (v3 API), for processes on several machines. The "path"
/// given to `unilock_open` is a lock name (not empty, at most 4096 bytes, UTF-8); the
/// cluster is reached at `.endpoints` (else `$UNILOCK_ETCD_ENDPOINTS`, else
/// `$ETCDCTL_ENDPOINTS`, else `http://127.0.0.1:2379`). The keys and the queue are
/// those of etcd's `concurrency.Mutex`: `etcdctl lock NAME` and Go's clientv3 exclude
/// it and are excluded by it. Exclusive locks of the whole name only (`UNILOCK_SHARED`
/// and byte ranges: `-EOPNOTSUPP`); alone only (with other backends: `-EINVAL`);
/// `UNILOCK_FAIR` and `UNILOCK_UNLINK`: `-EOPNOTSUPP` (the queue is first come, first
/// served already); `UNILOCK_CREATE`, `UNILOCK_FOLLOW` and `UNILOCK_INHERIT` have no
/// effect; `unilock_open_fd`: `-EINVAL`; `unilock_fd`: `-EOPNOTSUPP`.
///
/// The lock lives on a lease of `.lease_ttl_s` seconds (10 when 0) that a thread of
/// the library renews every third of it while the handle waits or holds. A holder
/// that cannot renew it for a whole TTL (paused, cut off from etcd) loses the lock:
/// the next call on the handle fails with `-ENOLCK`, never silently succeeds. Waits
/// watch the key ahead (no polling), time out and are cancelled like the file
/// backends'. `unilock_fence` gives the fencing token; `unilock_touch` renews the lease
/// at once; `unilock_query` and `unilock_list` read the queue (`start` is a key's
/// create revision, `pid` and `command` what its value says, on `unilock_holder_host`).
/// Errors reaching etcd are the socket's (`-ECONNREFUSED`, `-ETIMEDOUT`,
/// `-EHOSTUNREACH`, `-EPROTO` for TLS), `-EIO` when the cluster cannot serve (no
/// leader), `-EACCES` for a refused user or certificate.
pub const UNILOCK_BACKEND_ETCD: unilock_backend = 16;

/// A lock mode (`UNILOCK_SHARED`, `UNILOCK_EXCLUSIVE`); a plain integer type for the
/// same reason as `unilock_backend`.
pub type unilock_mode = u32;
/// A read lock: any number of shared holders.
pub const UNILOCK_SHARED: unilock_mode = 1;
/// A write lock: one holder.
pub const UNILOCK_EXCLUSIVE: unilock_mode = 2;

/// `unilock_options.flags`: create the file if missing (mode `.mode`, 0600 when 0).
pub const UNILOCK_CREATE: u32 = 1;
/// Follow a symbolic link in the last component (refused with `-ELOOP` by default).
pub const UNILOCK_FOLLOW: u32 = 2;
/// Keep the descriptor across exec (close-on-exec by default).
pub const UNILOCK_INHERIT: u32 = 4;
/// Delete the lock file once no lock is held on it, race-free (FLOCK, OFD, POSIX;
/// DOTLOCK: `-EOPNOTSUPP`; `unilock_open_fd`, which has no path: `-EINVAL`).
/// `unilock_lock` on a handle that holds nothing checks, before waiting and once it
/// has the lock, that the file is still the one at the path (not deleted or replaced);
/// if not, it opens the path again (creating it under `UNILOCK_CREATE`) and locks that
/// file, so `unilock_fd` may then return a new descriptor. Releasing the handle's last
/// lock on the file (`unilock_unlock` or `unilock_close`) deletes the file first when
/// the handle can hold the whole file exclusively without waiting (it does, or a
/// non-blocking conversion succeeds) and the path still names it; otherwise another
/// holder exists (shared, or another byte range) and the file is left. Only the
/// process that took the lock deletes the file. Two processes never both believe they
/// hold the lock.
pub const UNILOCK_UNLINK: u32 = 8;
/// First come, first served among the handles that use this flag on one file (FLOCK,
/// OFD, POSIX; with DOTLOCK, alone or in a set, `-EOPNOTSUPP`): a released lock goes to the longest waiter, the releaser never takes it
/// back ahead of a waiter, no waiter sees more than N-1 grants go past it, and shared
/// waiters queued together are granted together. The queue lives in kernel locks at
/// the file's reserved offsets (2^62 and above), taken through a private read-write
/// open file description (opened through `/proc/self/fd`): no sidecar file, and a
/// participant that dies at any moment leaves it working. Timeouts and `unilock_cancel`
/// work while queued. Handles without the flag conflict as usual but do not queue.
/// Fairness is per file, not per range: a fair call may wait behind an earlier fair
/// waiter for another range (FLOCK handles have their own queue). A handle that holds a
/// lock on the file, or whose thread holds one through another handle, converts or
/// extends it without queueing. The first fair `unilock_lock` opens the file
/// read-write and fails with that open's error where it cannot (a file the process may
/// only read, a directory, a read-only file system, no /proc).
pub const UNILOCK_FAIR: u32 = 16;

/// How to open a handle. Set `size` to `sizeof(unilock_options)` (or call
/// `unilock_options_init`): the struct may grow in later versions and the library reads
/// only what the caller's version has. A `size` smaller than this first version gives
/// `-EINVAL`; non-zero bytes past what this version knows give `-E2BIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct unilock_options {
    /// `sizeof(unilock_options)`.
    pub size: u32,
    /// `unilock_backend` bits; 0 means FLOCK.
    pub backends: u32,
    /// `UNILOCK_CREATE`, `UNILOCK_FOLLOW`, `UNILOCK_INHERIT`, ... bits.
    pub flags: u32,
    /// Permission bits of a created file; 0 means 0600 (the umask applies). Only the
    /// permission bits (0777; at most 0666 makes sense for a lock file): setuid,
    /// setgid, sticky or higher bits give `-EINVAL`.
    pub mode: u32,
    /// DOTLOCK: a lock file not refreshed this many seconds is stale; 0 = only a
    /// dead owner makes it stale.
    pub stale_after_s: u32,
    /// ETCD: the lease TTL in seconds; 0 means 10.
    pub lease_ttl_s: u32,
    /// ETCD: the cluster's client URLs, comma-separated (`"http://10.0.0.1:2379,..."`;
    /// `host:port` means `http://`); NULL or "": from the environment (see
    /// `UNILOCK_BACKEND_ETCD`). The strings of this struct are read by `unilock_open`
    /// and not kept.
    pub endpoints: *const c_char,
    /// ETCD over `https://`: a PEM file of the CA certificates that sign the servers'
    /// certificates (NULL: `$UNILOCK_ETCD_CACERT`, else `$ETCDCTL_CACERT`, else the
    /// usual web roots).
    pub ca_file: *const c_char,
    /// ETCD over `https://`: a PEM client certificate, for a cluster that checks them
    /// (NULL: `$UNILOCK_ETCD_CERT`, else `$ETCDCTL_CERT`). Needs `key_file`.
    pub cert_file: *const c_char,
    /// Its PEM private key (NULL: `$UNILOCK_ETCD_KEY`, else `$ETCDCTL_KEY`).
    pub key_file: *const c_char,
    /// ETCD with authentication: the user (NULL: `$UNILOCK_ETCD_USER`, else
    /// `$ETCDCTL_USER`, either of which may be `name:password`).
    pub user: *const c_char,
    /// Its password (NULL: `$UNILOCK_ETCD_PASSWORD`, else `$ETCDCTL_PASSWORD`). Never
    /// shown in a message.
    pub password: *const c_char,
}

impl Default for unilock_options {
    fn default() -> Self {
        unilock_options {
            size: 0,
            backends: 0,
            flags: 0,
            mode: 0,
            stale_after_s: 0,
            lease_ttl_s: 0,
            endpoints: std::ptr::null(),
            ca_file: std::ptr::null(),
            cert_file: std::ptr::null(),
            key_file: std::ptr::null(),
            user: std::ptr::null(),
            password: std::ptr::null(),
        }
    }
}

/// One lock on a file and who holds it.
/// cbindgen:field-names=[backend, mode, start, len, pid, self, command]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct unilock_holder {
    /// The one mechanism that holds it.
    pub backend: unilock_backend,
    /// Its mode.
    pub mode: unilock_mode,
    /// First byte.
    pub start: u64,
    /// Length; 0 means to the end of the file and beyond.
    pub len: u64,
    /// A live process that holds it (this process when one of its handles does); -1
    /// when it cannot be known. Every process that has it: `unilock_holder_pids`.
    pub pid: i32,
    /// 1 when this process holds it.
    pub is_self: i32,
    /// The holder's command name, NUL-terminated; "" when unknown.
    pub command: [c_char; 16],
}

fn timeout(ms: i64) -> Option<Duration> {
    (ms >= 0).then(|| Duration::from_millis(ms as u64))
}

fn mode(raw: unilock_mode) -> Result<Mode> {
    Mode::from_raw(raw).ok_or_else(|| {
        Error::new(
            libc::EINVAL,
            format!("mode {raw} is neither UNILOCK_SHARED nor UNILOCK_EXCLUSIVE"),
        )
    })
}

/// The largest options struct accepted (as the kernel caps such structs at a page).
const MAX_OPTIONS_SIZE: u32 = 4096;

/// The size of the first version of `unilock_options` (up to `stale_after_s`): callers
/// built against it pass this `size`, and the fields after it read as zero.
const FIRST_OPTIONS_SIZE: u32 = 20;

/// An optional string of the options: NULL or "" is `None`.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
unsafe fn option_string(p: *const c_char, field: &str) -> Result<Option<String>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller promises a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) };
    let s = s
        .to_str()
        .map_err(|_| Error::new(libc::EINVAL, format!("options .{field} is not valid UTF-8")))?;
    Ok((!s.is_empty()).then(|| s.to_owned()))
}

/// Reads a caller's options struct by its `size`.
///
/// # Safety
/// `o` is NULL or points to `o->size` readable bytes.
unsafe fn read_options(o: *const unilock_options) -> Result<Options> {
    if o.is_null() {
        return Ok(Options::default());
    }
    // SAFETY: `size` is the first field; every version of the struct has it.
    let size = unsafe { std::ptr::read_unaligned(o.cast::<u32>()) };
    let known = std::mem::size_of::<unilock_options>() as u32;
    if size < FIRST_OPTIONS_SIZE {
        return Err(Error::new(
            libc::EINVAL,
            format!(
                "options size {size} is smaller than the first version's \
                 {FIRST_OPTIONS_SIZE}; set .size to sizeof(unilock_options)"
            ),
        ));
    }
    if size > MAX_OPTIONS_SIZE {
        return Err(Error::new(
            libc::E2BIG,
            format!("options size {size} is too large"),
        ));
    }
    // SAFETY: the caller promises `size` readable bytes at `o`.
    let bytes = unsafe { std::slice::from_raw_parts(o.cast::<u8>(), size as usize) };
    if bytes.len() > known as usize && bytes[known as usize..].iter().any(|&b| b != 0) {
        return Err(Error::new(
            libc::E2BIG,
            "options set fields this version of the library does not know",
        ));
    }
    // What the caller's version has; the fields it lacks stay zero (NULL).
    let mut ours = unilock_options::default();
    let given = bytes.len().min(known as usize);
    // SAFETY: `given` bytes are readable at `o` and fit in `ours`; the struct is plain
    // data for which any bytes read from a caller's (zeroed or set) fields are valid.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (&mut ours as *mut unilock_options).cast::<u8>(),
            given,
        )
    };
    // SAFETY: the caller promises each non-NULL string field is NUL-terminated.
    let etcd = unsafe {
        crate::EtcdOptions {
            endpoints: option_string(ours.endpoints, "endpoints")?,
            ttl_s: ours.lease_ttl_s,
            ca: option_string(ours.ca_file, "ca_file")?,
            cert: option_string(ours.cert_file, "cert_file")?,
            key: option_string(ours.key_file, "key_file")?,
            user: option_string(ours.user, "user")?,
            password: option_string(ours.password, "password")?,
        }
    };
    Ok(Options {
        backends: ours.backends,
        flags: Flags::from_bits_retain(ours.flags),
        create_mode: ours.mode,
        stale_after_s: ours.stale_after_s,
        etcd,
    })
}

/// Writes a new handle to `*out`.
///
/// # Safety
/// `out` is a valid pointer to a `unilock *`.
unsafe fn publish(out: *mut *mut unilock, lock: Lock) -> Result<c_int> {
    let raw = registry::publish(lock)?;
    // SAFETY: checked non-null by the caller; writing a pointer.
    unsafe { out.write(raw) };
    Ok(0)
}

/// Fills `*o` with the defaults (FLOCK, no flags, mode 0600) and the right `size`.
/// NULL is ignored.
#[doc = safety!(
    "`o` is NULL or points to memory valid for writing a `unilock_options`."
)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unilock_options_init(o: *mut unilock_options) {
    if o.is_null() {
        return;
    }
    let defaults = unilock_options {
        size: std::mem::size_of::<unilock_options>() as u32,
        ..Default::default()
    };
    // SAFETY: non-null pointer to a caller's unilock_options.
    unsafe { o.write(defaults) };
}

/// Opens `path` for locking and stores the new handle in `*out` (no lock is taken).
/// `o` may be NULL for the defaults. An existing file is opened without `O_CREAT`; a
/// missing one is created (0600 unless `o->mode`) with `UNILOCK_CREATE`, else
/// `-ENOENT`. The descriptor is close-on-exec unless `UNILOCK_INHERIT`. A symbolic link
/// as the last component gives `-ELOOP` unless `UNILOCK_FOLLOW`; a FIFO, socket or
/// device gives `-EINVAL` without being opened. FLOCK handles use a read-only
/// descriptor; OFD and POSIX handles a read-write one where permitted, else read-only
/// (then only shared locks). The file is never written or truncated.
///
/// Several backend bits make a set, taken in the order DOTLOCK, FLOCK, then OFD or
/// POSIX, and released in reverse (OFD together with POSIX: `-EINVAL`). A DOTLOCK-only
/// handle creates nothing: `path` is the lock file, made while the lock is held (its
/// directory must exist). In a set, `UNILOCK_CREATE` applies to `path`, never to
/// `path.lock`. `UNILOCK_UNLINK` with DOTLOCK or with a set, and `UNILOCK_FAIR` with
/// DOTLOCK: `-EOPNOTSUPP`.
#[doc = safety!(
    "`path` is NULL or points to a NUL-terminated string; `o` is NULL or points to \
     `o->size` readable bytes that start with a `unilock_options`; `out` is NULL or \
     valid for writing a `unilock *`."
)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unilock_open(
    path: *const c_char,
    o: *const unilock_options,
    out: *mut *mut unilock,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(null_argument("out"));
        }
        // SAFETY: non-null pointer to the caller's `unilock *`: NULL until a handle
        // is made, so that every failure leaves it NULL.
        unsafe { out.write(std::ptr::null_mut()) };
        if path.is_null() {
            return Err(null_argument("path"));
        }
        // SAFETY: non-null; the caller passes a NUL-terminated string.
        let path = unsafe { CStr::from_ptr(path) };
        // SAFETY: the caller passes NULL or a struct of `size` bytes.
        let options = unsafe { read_options(o) }?;
        let lock = Lock::open(std::ffi::OsStr::from_bytes(path.to_bytes()), &options)?;
        // SAFETY: `out` checked non-null above.
        unsafe { publish(out, lock) }
    })
}

/// Makes a handle on the open descriptor `fd`, which is duplicated (the caller keeps
/// and closes `fd`). The duplicate shares the open file description, so FLOCK and OFD
/// locks taken through the handle belong to that description, as with flock(1) on a
/// descriptor: handles made from descriptors of one open file description are one
/// owner to the kernel (two of them waiting at once for FLOCK or OFD locks held
/// elsewhere may both be granted), so make one handle per description. DOTLOCK and
/// `UNILOCK_UNLINK` need a path: `-EINVAL`.
#[doc = safety!(
    "`o` is NULL or points to `o->size` readable bytes that start with a \
     `unilock_options`; `out` is NULL or valid for writing a `unilock *`. `fd` may be \
     any integer (an invalid one gives `-EBADF`)."
)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unilock_open_fd(
    fd: c_int,
    o: *const unilock_options,
    out: *mut *mut unilock,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(null_argument("out"));
        }
        // SAFETY: non-null pointer to the caller's `unilock *`: NULL until a handle
        // is made, so that every failure leaves it NULL.
        unsafe { out.write(std::ptr::null_mut()) };
        if fd < 0 {
            return Err(Error::new(
                libc::EBADF,
                format!("descriptor {fd} is not valid"),
            ));
        }
        // SAFETY: the caller passes NULL or a struct of `size` bytes.
        let options = unsafe { read_options(o) }?;
        // SAFETY: the descriptor is only borrowed for this call (fstat and dup);
        // an invalid one makes fstat fail with EBADF.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let lock = Lock::from_fd(borrowed, &options)?;
        // SAFETY: `out` checked non-null above.
        unsafe { publish(out, lock) }
    })
}

/// Closes the handle. It releases what the handle holds, except FLOCK and OFD locks
/// whose open file description a child shares since a `fork()` after they were taken
/// (they stay with the child). With `UNILOCK_UNLINK` the release may delete the file
/// first (see there). NULL is a no-op returning 0. Returns the error of the release,
/// if any (the handle is closed all the same).
///
/// Another thread may be inside a call on the handle: a lock call waiting there
/// returns `-ECANCELED`, and `unilock_close` returns only after every call in progress
/// on the handle has returned, so no call is left waiting on a closed handle and no
/// lock is left held by it. A call that starts after the close began returns `-EBADF`.
///
/// Using a handle after its close is the caller's bug, detected as far as this
/// design allows: a closed handle's memory is never freed, and it is given to a new
/// handle only after more than 4096 other handles have been closed since. Until then
/// every call on the stale pointer, a second close included, returns `-EBADF` and
/// touches nothing; after that it may act on the newer handle. A pointer that no
/// `unilock_open` returned gives `-EBADF` without being read.
#[doc = safety!(
    "`l` is NULL or a handle that `unilock_open` or `unilock_open_fd` returned and \
     that is not yet closed. A pointer to a closed handle, or one the library never \
     made, is detected as `unilock_close` describes, but only as far as that goes: \
     past the quarantine it may name another handle."
)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unilock_close(l: *mut unilock) -> c_int {
    guard(|| {
        if l.is_null() {
            return Ok(0);
        }
        registry::close(l)?;
        Ok(0)
    })
}

/// Takes `mode` on `len` bytes from `start` (`len` 0: to the end; `(0, 0)`: the whole
/// file). `timeout_ms` 0: try once (`-EAGAIN` when held); < 0: wait forever; > 0: give up
/// with `-ETIMEDOUT`. The wait sleeps in the kernel (no polling) and ends promptly at
/// the deadline or on `unilock_cancel` (`-ECANCELED`). The calling thread makes the
/// blocking call itself where io_uring serves (Linux 6.7); deadlines are then kept by
/// one thread per process, `unilock-timer` (every signal blocked), started at a
/// thread's second timed wait. Elsewhere a waiter child process, `unilock-waiter`,
/// makes the call (README, "How waiting works"). No signal of the host's is used.
///
/// Re-locking a held range converts it (never counted). OFD and POSIX conversions are
/// atomic. A FLOCK upgrade (shared to exclusive) is not atomic in the kernel: if it
/// fails, times out or is cancelled, the shared lock is taken back; if another process
/// took an exclusive lock in between, the call returns `-ENOLCK` and the handle holds
/// nothing.
///
/// A set takes its backends in order within the one timeout; when one of them fails
/// (held, timed out, cancelled), what this call took is released or converted back, so
/// the handle holds what it held before. DOTLOCK is exclusive only: `UNILOCK_SHARED`
/// gives `-EOPNOTSUPP`; re-locking a held lock file is a no-op success.
///
/// Other errors: `-EDEADLK` (only this process could end the wait: this thread holds
/// the conflicting lock through another handle, or a cycle of this process's waits;
/// POSIX also from the kernel), `-EBUSY` (a lock or unlock is in progress on this
/// handle), `-EOPNOTSUPP` (a byte range on a FLOCK handle), `-EINVAL` (bad mode, a
/// range reaching the reserved offsets at or above 2^62), `-EACCES` (an exclusive
/// OFD/POSIX lock on a file only readable), `-ENOLCK` (a POSIX handle in a forked
/// child). With `UNILOCK_FAIR`: `-EAGAIN` also when a try finds earlier fair waiters in
/// line, and the error of opening the file read-write for the queue (`-EACCES`,
/// `-EISDIR`, `-EROFS`, `-ENOENT` without /proc).
#[doc = safety!(
    "`l` is NULL or a handle that `unilock_open` or `unilock_open_fd` returned and \
     that is not yet closed. A pointer to a closed handle, or one the library never \
     made, is detected as `unilock_close` describes, but only as far as that goes: \
     past the quarantine it may name another handle."
)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unilock_lock(
    l: *mut unilock,
    mode: unilock_mode,
    start: u64,
    len: u64,
    timeout_ms: i64,
) -> c_int {
    guard(|| {
        let lock = registry::lock_of(l)?;
        lock.lock(self::mode(mode)?, start, len, timeout(timeout_ms))?;
        Ok(0)
    })
}

/// Releases `len` bytes from `start` (`(0, 0)`: everything). Bytes not held are
/// ignored. A release that reaches the reserved offsets (2^62 and up) is made to the
/// end of the file: locks the lock's owner (the open file description; for POSIX,
/// the process) took there outside the library go too.
#[doc = safety!(
    "`l` is NULL or a handle that `unilock_open` or `unilock_open_fd` returned and \
     that is not yet closed. A pointer to a closed handle, or one the library never \
     made, is detected as `unilock_close` describes, but only as far as that goes: \
     past the quarantine it may name another handle."
)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unilock_unlock(l: *mut unilock, start: u64, len: u64) -> c_int {
    guard(|| {
        registry::lock_of(l)?.unlock(start, len)?;
        Ok(0)
    })
}

fn fill_holder(h: &Holder) -> unilock_holder {
    let mut command = [0 as c_char; 16];
    for (dst, src) in command.iter_mut().zip(h.command.as_bytes().iter().take(15)) {
        *dst = *src as c_char;
    }
    unilock_holder {
        backend: h.backend as u32,
        mode: h.mode as u32,
        start: h.start,
        len: h.len,
        pid: h.pid,
        is_self: h.is_self as i32,
        command,
    }
}

/// Tells whether `mode` on the range could be taken now, taking nothing. Returns 0
/// when it could, 1 when not, with one conflicting lock in `*who` (`who` may be NULL):
/// its backend, mode, range, the pid of a live holder (resolved from /proc for OFD and
/// FLOCK holders too; -1 when it cannot be known) and `self` when this process holds
/// it. FLOCK has no query system call: a FLOCK query reads /proc/locks and fails where
/// /proc cannot be read.
#[doc = safety!(
    "`l` as for `unilock_close`; `who` is NULL or valid for writing a \
     `unilock_holder`."
)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unilock_query(
    l: *mut unilock,
    mode: unilock_mode,
    start: u64,
    len: u64,
    who: *mut unilock_holder,
) -> c_int {
    guard(|| {
        let entered = Entered::new(l)?;
        let lock = entered.lock();
        match lock.query(self::mode(mode)?, start, len)? {
            None => Ok(0),
            Some(h) => {
                if !who.is_null() {
                    // SAFETY: non-null pointer to the caller's holder struct.
                    unsafe { who.write(fill_holder(&h)) };
                }
                Ok(1)
            }
        }
    })
}

/// Lists every lock on the file, from any process and any mechanism (like lslocks for
/// one file): fills up to `cap` entries of `buf` and sets `*count` to how many locks
/// there are (which may exceed `cap`). `buf` may be NULL when `cap` is 0. Returns 0.
#[doc = safety!(
    "`l` as for `unilock_close`; `buf` is valid for writing `cap` `unilock_holder` \
     entries (it may be NULL when `cap` is 0); `count` is NULL or valid for writing a \
     `size_t`."
)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unilock_list(
    l: *mut unilock,
    buf: *mut unilock_holder,
    cap: usize,
    count: *mut usize,
) -> c_int {
    guard(|| {
        let entered = Entered::new(l)?;
        let lock = entered.lock();
        if count.is_null() {
            return Err(null_argument("count"));
        }
        if buf.is_null() && cap > 0 {
            return Err(null_argument("buf (with cap > 0)"));
        }
        let holders = lock.list()?;
        for (i, h) in holders.iter().take(cap).enumerate() {
            // SAFETY: `buf` has room for `cap` entries and i < cap.
            unsafe { buf.add(i).write(fill_holder(h)) };
        }
        // SAFETY: non-null pointer to the caller's size_t.
        unsafe { count.write(holders.len()) };
        Ok(0)
    })
}

/// Cancels the lock call in progress on this handle, from any thread: that call
/// returns `-ECANCELED` (or 0 if the lock was granted first). Returns 1 when a lock call
/// was in progress, 0 when none was. A cancel that lands while a lock call runs —
/// before it starts to sleep or during the sleep — is never lost; a cancel that lands
/// when no lock call runs (before one starts, or after it returned) does nothing and
/// is never remembered, so it cannot fail a later call. A watcher that may fire before
/// the call starts (a Go context, a signal) should therefore repeat the cancel while
/// it returns 0 and the call has not returned.
#[doc = safety!(
    "`l` is NULL or a handle that `unilock_open` or `unilock_open_fd` returned and \
     that is not yet closed. A pointer to a closed handle, or one the library never \
     made, is detected as `unilock_close` describes, but only as far as that goes: \
     past the quarantine it may name another handle."
)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unilock_cancel(l: *mut unilock) -> c_int {
    guard(|| Ok(Entered::new(l)?.lock().cancel() as c_int))
}

/// DOTLOCK: refreshes the lock file's modification time so that it is not judged
/// stale by age; call it at least three times per `stale_after_s` (and every minute or
/// so when liblockfile users without pid checks share the lock file). `-ENOLCK` when
/// another process removed the lock file meanwhile, judging it stale. Holding nothing,
/// or the kernel backends: nothing to do, returns 0. ETCD: renews the lease at once
/// (the library also does so every third of its TTL); `-ENOLCK` when it was lost.
#[doc = safety!(
    "`l` is NULL or a handle that `unilock_open` or `unilock_open_fd` returned and \
     that is not yet closed. A pointer to a closed handle, or one the library never \
     made, is detected as `unilock_close` describes, but only as far as that goes: \
     past the quarantine it may name another handle."
)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unilock_touch(l: *mut unilock) -> c_int {
    guard(|| {
        Entered::new(l)?.lock().touch()?;
        Ok(0)
    })
}

/// ETCD: stores in `*token` the fencing token of the lock the handle holds: the
/// create revision of its key, which grows with every grant of the lock (by unilock,
/// `etcdctl lock` or any clientv3 user). Pass it with every write to a storage system
/// that remembers the highest token it has accepted and refuses lower ones: a holder
/// that lost the lock without knowing it (paused past its lease) can then do no
/// damage. `-ENOLCK` when the handle holds no lock or has lost it (then it holds
/// nothing); `-EOPNOTSUPP` for the file backends; `-EINVAL` when `token` is NULL.
#[doc = safety!(
    "`l` is NULL or a handle that `unilock_open` returned and that is not yet closed \
     (see `unilock_touch`); `token` is NULL or points to a writable `uint64_t`."
)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unilock_fence(l: *mut unilock, token: *mut u64) -> c_int {
    guard(|| {
        let entered = Entered::new(l)?;
        if token.is_null() {
            return Err(null_argument("token"));
        }
        let t = entered.lock().fence()?;
        // SAFETY: non-null pointer to the caller's uint64_t.
        unsafe { token.write(t) };
        Ok(0)
    })
}

/// The descriptor the handle locks through (owned by the handle: do not close it;
/// closing any descriptor of the file drops the process's POSIX locks on it). In a set,
/// the FLOCK descriptor if any, else the OFD or POSIX one. A DOTLOCK-only handle has
/// none: `-EOPNOTSUPP`.
#[doc = safety!(
    "`l` is NULL or a handle that `unilock_open` or `unilock_open_fd` returned and \
     that is not yet closed. A pointer to a closed handle, or one the library never \
     made, is detected as `unilock_close` describes, but only as far as that goes: \
     past the quarantine it may name another handle."
)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unilock_fd(l: *const unilock) -> c_int {
    guard(|| Entered::new(l)?.lock().fd())
}
