//! The kernel mechanisms, one module each. Each turns "take `mode` on `range`" and
//! "release `range`" into its system call; the table and the waits live elsewhere.

pub(crate) mod flock;
pub(crate) mod ofd;
pub(crate) mod posix;

use std::os::fd::BorrowedFd;

use crate::range::{ByteRange, RESERVED};
use crate::sys::{Errno, KernelCall};
use crate::{Backend, Mode};

/// The call that takes `mode` on `range`: blocking (`wait`) for a waiter child, or
/// non-blocking.
pub(crate) fn lock_call(backend: Backend, range: ByteRange, mode: Mode, wait: bool) -> KernelCall {
    match backend {
        Backend::Flock => flock::call(Some(mode), wait),
        Backend::Ofd => ofd::call(range, Some(mode), wait),
        _ => posix::call(range, Some(mode), wait),
    }
}

/// The non-blocking call that releases `range`.
pub(crate) fn unlock_call(backend: Backend, range: ByteRange) -> KernelCall {
    match backend {
        Backend::Flock => flock::call(None, false),
        Backend::Ofd => ofd::call(range, None, false),
        _ => posix::call(range, None, false),
    }
}

/// Makes a non-blocking call: sets `mode` on `range`, or releases it when `None`.
pub(crate) fn apply(
    fd: BorrowedFd<'_>,
    backend: Backend,
    range: ByteRange,
    mode: Option<Mode>,
) -> Result<(), Errno> {
    match backend {
        Backend::Flock => flock::call(mode, false),
        Backend::Ofd => ofd::call(range, mode, false),
        _ => posix::call(range, mode, false),
    }
    .run(fd)
}

impl KernelCall {
    /// Makes the call in this thread (inlined: see [`crate::kernel_lock::SoloCall`]).
    #[inline(always)]
    pub(crate) fn run(self, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        match self {
            KernelCall::Flock { op } => crate::sys::flock(fd, op),
            KernelCall::Fcntl { cmd, mut fl } => crate::sys::fcntl_lock(fd, cmd, &mut fl),
        }
    }
}

/// A `struct flock` for `range` (clamped below the reserved offsets) and `mode`.
///
/// A release that reaches the reserved offsets is made to the end of the file
/// (`l_len` 0): the same for the handle's owner, which never holds locks there (the
/// library's own locks at those offsets, [`crate::fair`], are held through private
/// descriptions), and cheaper for the kernel, which allocates nothing for a release
/// of everything from 0 on.
pub(crate) fn record(range: ByteRange, mode: Option<Mode>) -> libc::flock {
    let len = if mode.is_none() && range.end >= RESERVED {
        0
    } else {
        range.end.min(RESERVED) - range.start
    };
    raw_record(range.start, len, mode)
}

/// A `struct flock` for `len` bytes from `start`, taken as they are: the library's own
/// locks at the reserved offsets ([`crate::fair`]) use it.
pub(crate) fn raw_record(start: u64, len: u64, mode: Option<Mode>) -> libc::flock {
    // SAFETY: struct flock is plain data for which all-zero bytes are valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = match mode {
        None => libc::F_UNLCK,
        Some(Mode::Shared) => libc::F_RDLCK,
        Some(Mode::Exclusive) => libc::F_WRLCK,
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    fl
}

/// A lock `F_GETLK`/`F_OFD_GETLK` reported: its range (to the end when the kernel's
/// length is 0 or reaches the reserved offsets), its mode and its pid (-1 for OFD).
pub(crate) fn reported(fl: &libc::flock) -> Option<(ByteRange, Mode, i32)> {
    let mode = match fl.l_type as libc::c_int {
        libc::F_RDLCK => Mode::Shared,
        libc::F_WRLCK => Mode::Exclusive,
        _ => return None,
    };
    let start = (fl.l_start.max(0) as u64).min(RESERVED - 1);
    let end = if fl.l_len <= 0 {
        RESERVED
    } else {
        start.saturating_add(fl.l_len as u64).min(RESERVED)
    };
    Some((ByteRange { start, end }, mode, fl.l_pid))
}

/// Asks the kernel for a lock of another owner that conflicts with `mode` on `range`
/// (`F_OFD_GETLK` or `F_GETLK`; flock has no such call).
pub(crate) fn conflicting(
    fd: BorrowedFd<'_>,
    backend: Backend,
    range: ByteRange,
    mode: Mode,
) -> Result<Option<(ByteRange, Mode, i32)>, Errno> {
    let cmd = if backend == Backend::Ofd {
        libc::F_OFD_GETLK
    } else {
        libc::F_GETLK
    };
    let mut fl = record(range, Some(mode));
    crate::sys::fcntl_lock(fd, cmd, &mut fl)?;
    Ok(reported(&fl))
}
