//! # unilock: advisory file locking for Linux done right
//!
//! One small API over every kernel locking mechanism — BSD `flock(2)`, open file
//! description (OFD) locks and POSIX record locks — that removes their traps:
//!
//! - every handle is its own lock owner, in every backend: POSIX locks are arbitrated
//!   between the handles and threads of a process, and closing one handle never drops
//!   another's locks;
//! - waits have real timeouts and can be cancelled from another thread, without
//!   polling and without signals in the host;
//! - a wait that only this process could end (the same thread asking twice, or a cycle
//!   of this process's threads) fails with `EDEADLK` instead of hanging;
//! - files are created 0600, opened close-on-exec, without following a symbolic link,
//!   never written or truncated; FIFOs and devices are refused without blocking;
//! - [`Lock::query`] and [`Lock::list`] say who holds a lock, with pid and command,
//!   for OFD and flock locks too;
//! - lock files by existence (DOTLOCK) are made NFS-safe by link(), name their owner,
//!   and are broken race-free once stale; a set of backends (a mailbox's
//!   `DOTLOCK|OFD`) is taken in order and rolled back on failure.
//!
//! ```no_run
//! use std::time::Duration;
//! use unilock::{Lock, Mode, Options, flags};
//!
//! let lock = Lock::open("/tmp/job.lock", &Options::new().flags(flags::CREATE))?;
//! match lock.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(2))) {
//!     Ok(()) => { /* exclusive until unlock or drop */ }
//!     Err(e) if e.is_timeout() => eprintln!("busy: {:?}", lock.query(Mode::Exclusive, 0, 0)?),
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The C API (`include/unilock.h`) is a thin layer over this crate, in [`capi`].

#![deny(missing_docs)]

mod backend;
pub mod capi;
mod dotlock;
mod error;
mod fair;
#[cfg(feature = "fault-injection")]
pub mod fault;
#[cfg(test)]
mod fuzz_tests;
mod helper;
mod holders;
mod inode_table;
mod kernel_lock;
mod lock;
pub mod range;
mod sys;
mod wait;

pub use error::{Error, Result, describe};
pub use lock::Lock;
pub use wait::mechanism as wait_mechanism;

/// Lock modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum Mode {
    /// A read lock: any number of shared holders at once.
    Shared = 1,
    /// A write lock: one holder, no shared holders.
    Exclusive = 2,
}

impl Mode {
    /// The mode for a C value (`UNILOCK_SHARED`, `UNILOCK_EXCLUSIVE`).
    pub fn from_raw(raw: u32) -> Option<Mode> {
        match raw {
            1 => Some(Mode::Shared),
            2 => Some(Mode::Exclusive),
            _ => None,
        }
    }

    /// "shared" or "exclusive".
    pub fn name(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::Exclusive => "exclusive",
        }
    }
}

/// Kernel mechanisms (bits of [`Options::backends`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Backend {
    /// `flock(2)`: whole files; excludes flock(1), gofrs/flock, Python filelock.
    Flock = 1,
    /// OFD locks: byte ranges owned by the open file description.
    Ofd = 2,
    /// POSIX record locks: byte ranges; the library makes each handle an owner.
    Posix = 4,
    /// Lock files by existence (liblockfile, lockfile(1), mailbox `.lock` files):
    /// exclusive, whole file; see [`Options::stale_after_s`] and [`Lock::touch`].
    Dotlock = 8,
}

impl Backend {
    /// "FLOCK", "OFD", "POSIX" or "DOTLOCK".
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flock => "FLOCK",
            Backend::Ofd => "OFD",
            Backend::Posix => "POSIX",
            Backend::Dotlock => "DOTLOCK",
        }
    }
}

/// Bits of [`Options::flags`].
pub mod flags {
    /// Create the file if missing (mode [`crate::Options::create_mode`], 0600 by default).
    pub const CREATE: u32 = 1;
    /// Follow a symbolic link in the last component (refused by default).
    pub const FOLLOW: u32 = 2;
    /// Keep the descriptor across exec (close-on-exec by default).
    pub const INHERIT: u32 = 4;
    /// Delete the lock file once no lock is held on it, race-free (FLOCK, OFD and
    /// POSIX alone; a handle with DOTLOCK or several backends refuses it with
    /// `EOPNOTSUPP`, and
    /// [`crate::Lock::from_fd`], which has no path, with `EINVAL`).
    ///
    /// After taking a lock while holding nothing (and after a FLOCK upgrade, which lets
    /// go of the shared lock while it waits), [`crate::Lock::lock`] checks that the
    /// locked file is still the one at the path (`stat`, following a last symbolic link
    /// only with [`FOLLOW`]) and not deleted (`st_nlink > 0`); if not, it releases it,
    /// opens the path again (creating the file under [`CREATE`]) and starts again, so
    /// the handle's descriptor may change. When the handle releases its *last* lock on
    /// the file (unlock, or close), it deletes the file first, if it can hold the whole
    /// file exclusively without waiting (it does, or a non-blocking conversion to an
    /// exclusive whole-file lock succeeds) and the last component of the path is still
    /// that file; otherwise another holder (shared, or on another byte range, in this
    /// process or another) exists and the file is left to it. The file is deleted
    /// before the lock is released, and only by the process that took the lock. So two
    /// processes never both believe they hold the lock, provided everyone who deletes
    /// the file does it this way.
    pub const UNLINK: u32 = 8;
    /// First come, first served among the handles that use this flag on one file
    /// (FLOCK, OFD and POSIX; with DOTLOCK, `EOPNOTSUPP`): a released lock goes to the
    /// longest waiter, the releaser
    /// never takes it back ahead of a waiter, no waiter sees more than N-1 grants go
    /// past it (N handles), and shared waiters queued together are granted together.
    ///
    /// The queue is kept in kernel locks at the file's reserved offsets (2^62 and
    /// above), taken through a private read-write open file description of the file
    /// (opened through `/proc/self/fd`): there is no sidecar file, and a participant
    /// that dies at any moment leaves the queue working. Timeouts and
    /// [`crate::Lock::cancel`] work while queued and take the waiter out of the line.
    /// Handles without the flag still conflict as usual but do not queue: they may take
    /// a free lock ahead of fair waiters.
    ///
    /// Fairness is per file, not per range: one queue orders all fair calls on a file
    /// (one queue for FLOCK handles, one for OFD and POSIX handles), so a fair call may
    /// wait behind an earlier fair waiter for another range. A handle that already holds
    /// a lock on the file, or whose thread holds one through another handle, converts
    /// or extends it without queueing. The first fair lock call opens the file
    /// read-write: it fails (with that `open`'s error) on a file the process may only
    /// read, on a directory, on a read-only file system, or without /proc. With
    /// [`UNLINK`], a release leaves the file in place while fair waiters are in line for
    /// it. A fair call
    /// costs a few more system calls than an unfair one, and a hand-off always goes to
    /// another process, where without the flag the releaser often takes the lock back
    /// at once: under contention, fewer grants per second.
    pub const FAIR: u32 = 16;
    /// Every flag this version knows.
    pub const ALL: u32 = CREATE | FOLLOW | INHERIT | UNLINK | FAIR;
}

/// How to open a [`Lock`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// [`Backend`] bits; 0 means [`Backend::Flock`].
    pub backends: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// Permission bits for a created file; 0 means 0600 (the umask applies). Only
    /// the permission bits (0777) are accepted: setuid, setgid, sticky or higher bits
    /// are `EINVAL`.
    pub create_mode: u32,
    /// DOTLOCK: a lock file not refreshed for this many seconds is stale. 0: only a
    /// dead owner makes it stale, so a lock file whose owner cannot be checked
    /// (another host's, or one without a pid) is never broken; 300 matches
    /// liblockfile's rule for such files.
    pub stale_after_s: u32,
}

impl Options {
    /// The defaults: flock, no flags.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `backend`.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backends = backend as u32;
        self
    }

    /// Adds [`flags`] bits.
    pub fn flags(mut self, bits: u32) -> Self {
        self.flags |= bits;
        self
    }

    /// Sets the creation mode.
    pub fn create_mode(mut self, mode: u32) -> Self {
        self.create_mode = mode;
        self
    }
}

/// One lock on a file and who holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The mechanism that holds it.
    pub backend: Backend,
    /// Its mode.
    pub mode: Mode,
    /// First byte.
    pub start: u64,
    /// Length in bytes; 0 means to the end of the file and beyond.
    pub len: u64,
    /// A live process that holds it; -1 when it cannot be known.
    pub pid: i32,
    /// True when this process holds it.
    pub is_self: bool,
    /// The holder's command name (`/proc/PID/comm`), "" when unknown.
    pub command: String,
    /// Every live process that has this lock, lowest pid first: for FLOCK and OFD
    /// locks each process with a descriptor of the open file description that holds
    /// it, for POSIX the process that owns it (from the `lock:` lines of
    /// `/proc/PID/fdinfo`, as lslocks(8) finds its HOLDERS), for DOTLOCK the owner the
    /// lock file names when it is alive on this host. The inquiring process is left
    /// out when it only has a copy of another process's descriptor (one it inherited)
    /// and is not the only one: it is named when one of its handles holds the lock.
    /// Empty when no live holder can be found (another user's processes, or no /proc).
    pub processes: Vec<Process>,
    /// DOTLOCK: the lock file and its owner record; `None` for the kernel's locks.
    pub lock_file: Option<LockFile>,
}

/// A process that has a lock ([`Holder::processes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Its pid.
    pub pid: i32,
    /// Its command name (`/proc/PID/comm`), "" when unknown.
    pub command: String,
    /// Its descriptors that have the lock (none for a DOTLOCK owner).
    pub fds: Vec<i32>,
}

/// A DOTLOCK lock file and what its owner record says ([`Holder::lock_file`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockFile {
    /// The lock file.
    pub path: std::path::PathBuf,
    /// The pid on the record's first line, if any (whatever host wrote it).
    pub pid: Option<i32>,
    /// The host that made it (`host=`), if the record says.
    pub host: Option<String>,
    /// The owner's start time (`start=`, in clock ticks after boot, as field 22 of
    /// `/proc/PID/stat`), if the record says.
    pub start: Option<u64>,
    /// Why the lock file is stale (the next lock call breaks it), `None` while it is
    /// live or when it is not a lock file a tool could have made.
    pub stale: Option<String>,
    /// Why it is not a lock file (it holds the lock while it exists, never broken),
    /// `None` for a lock record.
    pub not_a_lock_file: Option<String>,
}
