//! The raw system calls the benchmarks compare unilock with, shared by the library's
//! suite (`benches/core.rs`) and the peer benchmark (`bench/peers`).

/// The kernel mechanism of a raw call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `flock(2)` (the range is ignored).
    Flock,
    /// `F_OFD_SETLK(W)`.
    Ofd,
    /// `F_SETLK(W)`.
    Posix,
}

/// The errno of the last failed call.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A `struct flock` for `len` bytes from `start` (`len` 0: to the end).
pub fn flock_record(kind: i32, start: u64, len: u64) -> libc::flock {
    // SAFETY: struct flock is plain data; all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    fl
}

/// One raw exclusive lock call on `fd`, waiting or not; 0 or the errno.
pub fn lock(call: Call, fd: i32, start: u64, len: u64, wait: bool) -> i32 {
    let rc = match call {
        Call::Flock => {
            let op = if wait {
                libc::LOCK_EX
            } else {
                libc::LOCK_EX | libc::LOCK_NB
            };
            // SAFETY: flock on an open descriptor.
            unsafe { libc::flock(fd, op) }
        }
        Call::Ofd | Call::Posix => {
            let cmd = match (call, wait) {
                (Call::Ofd, false) => libc::F_OFD_SETLK,
                (Call::Ofd, true) => libc::F_OFD_SETLKW,
                (_, false) => libc::F_SETLK,
                (_, true) => libc::F_SETLKW,
            };
            let mut fl = flock_record(libc::F_WRLCK, start, len);
            // SAFETY: fcntl with a record-lock command and a valid struct flock.
            unsafe { libc::fcntl(fd, cmd, &mut fl) }
        }
    };
    if rc == 0 { 0 } else { errno() }
}

/// The raw unlock matching [`lock`]; 0 or the errno.
pub fn unlock(call: Call, fd: i32, start: u64, len: u64) -> i32 {
    let rc = match call {
        // SAFETY: flock on an open descriptor.
        Call::Flock => unsafe { libc::flock(fd, libc::LOCK_UN) },
        Call::Ofd | Call::Posix => {
            let cmd = if call == Call::Ofd {
                libc::F_OFD_SETLK
            } else {
                libc::F_SETLK
            };
            let mut fl = flock_record(libc::F_UNLCK, start, len);
            // SAFETY: fcntl with a record-lock command and a valid struct flock.
            unsafe { libc::fcntl(fd, cmd, &mut fl) }
        }
    };
    if rc == 0 { 0 } else { errno() }
}
