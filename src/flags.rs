//! [`Flags`]: the typed set of [`crate::Options::flags`]; its bits are the C API's
//! `UNILOCK_CREATE`, `UNILOCK_FOLLOW`, ... values.

/// A set of flags for [`Options::flags`](crate::Options::flags): combine them with `|`.
///
/// ```
/// use unilock::Flags;
///
/// let f = Flags::CREATE | Flags::UNLINK;
/// assert!(f.contains(Flags::CREATE) && !f.contains(Flags::FAIR));
/// assert_eq!(Flags::from_bits(f.bits()), Some(f));
/// assert_eq!(Flags::from_bits(1 << 31), None);
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u32);

impl Flags {
    /// Create the file if missing (mode
    /// [`Options::create_mode`](crate::Options::create_mode), 0600 by default).
    pub const CREATE: Flags = Flags(1);
    /// Follow a symbolic link in the last component (refused by default).
    pub const FOLLOW: Flags = Flags(2);
    /// Keep the descriptor across exec (close-on-exec by default).
    pub const INHERIT: Flags = Flags(4);
    /// Delete the lock file once no lock is held on it, race-free (FLOCK, OFD and
    /// POSIX alone; a handle with DOTLOCK or several backends refuses it with
    /// `EOPNOTSUPP`, and
    /// [`Lock::from_fd`](crate::Lock::from_fd), which has no path, with `EINVAL`).
    ///
    /// After taking a lock while holding nothing (and after a FLOCK upgrade, which lets
    /// go of the shared lock while it waits), [`Lock::lock`](crate::Lock::lock) checks that the
    /// locked file is still the one at the path (`stat`, following a last symbolic link
    /// only with [`Flags::FOLLOW`]) and not deleted (`st_nlink > 0`); if not, it releases it,
    /// opens the path again (creating the file under [`Flags::CREATE`]) and starts again, so
    /// the handle's descriptor may change. When the handle releases its *last* lock on
    /// the file (unlock, or close), it deletes the file first, if it can hold the whole
    /// file exclusively without waiting (it does, or a non-blocking conversion to an
    /// exclusive whole-file lock succeeds) and the last component of the path is still
    /// that file; otherwise another holder (shared, or on another byte range, in this
    /// process or another) exists and the file is left to it. The file is deleted
    /// before the lock is released, and only by the process that took the lock. So two
    /// processes never both believe they hold the lock, provided everyone who deletes
    /// the file does it this way.
    pub const UNLINK: Flags = Flags(8);
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
    /// [`Lock::cancel`](crate::Lock::cancel) work while queued and take the waiter out of the line.
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
    /// [`Flags::UNLINK`], a release leaves the file in place while fair waiters are in line for
    /// it. A fair call
    /// costs a few more system calls than an unfair one, and a hand-off always goes to
    /// another process, where without the flag the releaser often takes the lock back
    /// at once: under contention, fewer grants per second.
    pub const FAIR: Flags = Flags(16);

    /// No flag.
    pub const fn empty() -> Flags {
        Flags(0)
    }

    /// Every flag this version knows.
    pub const fn all() -> Flags {
        Flags::CREATE
            .union(Flags::FOLLOW)
            .union(Flags::INHERIT)
            .union(Flags::UNLINK)
            .union(Flags::FAIR)
    }

    /// The bits, as the C API's `UNILOCK_CREATE`, `UNILOCK_FOLLOW`, ... define them.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The set for C bits; `None` when a bit is not a flag this version knows.
    pub const fn from_bits(bits: u32) -> Option<Flags> {
        if bits & !Flags::all().0 == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    #[cfg(feature = "capi")]
    /// The set for C bits, unknown ones kept: [`Lock::open`](crate::Lock::open) refuses them with
    /// `EINVAL`, as the C API does.
    pub(crate) const fn from_bits_retain(bits: u32) -> Flags {
        Flags(bits)
    }

    /// Both sets' flags (`self | other`, usable in `const` items).
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// True when every flag of `other` is in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when the set has no flag.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;

    fn bitor(self, other: Flags) -> Flags {
        self.union(other)
    }
}

impl std::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, other: Flags) {
        *self = self.union(other);
    }
}

impl std::fmt::Debug for Flags {
    /// `Flags(CREATE | UNLINK)`; unknown bits in hexadecimal.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const NAMES: [(Flags, &str); 5] = [
            (Flags::CREATE, "CREATE"),
            (Flags::FOLLOW, "FOLLOW"),
            (Flags::INHERIT, "INHERIT"),
            (Flags::UNLINK, "UNLINK"),
            (Flags::FAIR, "FAIR"),
        ];
        let mut parts: Vec<String> = NAMES
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, name)| (*name).to_string())
            .collect();
        let unknown = self.0 & !Flags::all().0;
        if unknown != 0 {
            parts.push(format!("{unknown:#x}"));
        }
        write!(f, "Flags({})", parts.join(" | "))
    }
}
