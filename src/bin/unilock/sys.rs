//! The command's only raw system calls: running the command the way flock(1) does
//! (`fork` then `execvp`, or `execvp` alone for `--no-fork`), waiting for it, and the
//! signal dispositions around that. Each `unsafe` block is one libc call.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;

/// An errno.
pub type Errno = i32;

fn errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `strerror(errno)` as flock's `warn()` prints it ("No such file or directory").
pub fn strerror(errno: Errno) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

/// An argv for `execvp`, built before `fork` so that the child only execs.
pub struct Argv {
    strings: Vec<CString>,
    pointers: Vec<*const libc::c_char>,
}

impl Argv {
    /// `None` when an argument holds a NUL byte (impossible for arguments that came
    /// from the kernel, as ours do).
    pub fn new(args: &[OsString]) -> Option<Argv> {
        let strings: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_bytes()).ok())
            .collect::<Option<_>>()?;
        let mut pointers: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        pointers.push(std::ptr::null());
        Some(Argv { strings, pointers })
    }

    /// The program, for messages.
    pub fn program(&self) -> String {
        self.strings[0].to_string_lossy().into_owned()
    }

    /// `execvp(3)`: searches `PATH` and, as flock's does, runs a file without a `#!`
    /// line through `/bin/sh`. Returns only on failure, with the errno.
    pub fn exec(&self) -> Errno {
        // SAFETY: `pointers` is a NULL-terminated array of pointers into `strings`,
        // which outlive the call; execvp only returns on failure.
        unsafe { libc::execvp(self.pointers[0], self.pointers.as_ptr()) };
        errno()
    }
}

/// Sets `signal` to its default action (`SIGCHLD`: flock clears an inherited
/// "ignore", which would make the command's status unobtainable; `SIGPIPE`: the Rust
/// runtime ignores it in this process, and the command must not inherit that).
pub fn default_action(signal: libc::c_int) {
    // SAFETY: SIG_DFL installs no handler; `signal` is a valid signal number.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}

/// What `fork` returned.
pub enum Forked {
    Child,
    Parent(libc::pid_t),
}

/// `fork(2)`. The process is single-threaded here (the library waits through
/// child processes, never threads), so the child may run ordinary code until it execs.
pub fn fork() -> Result<Forked, Errno> {
    // SAFETY: fork has no preconditions; the child of this single-threaded process
    // owns a consistent copy of its memory.
    match unsafe { libc::fork() } {
        -1 => Err(errno()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// How the command ended.
pub enum Status {
    Exited(i32),
    Killed(i32),
    Other,
}

/// `waitpid(2)` for `pid`, retried on `EINTR`.
pub fn wait(pid: libc::pid_t) -> Result<Status, Errno> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer for the call.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = errno();
        if r == -1 && e != libc::EINTR {
            return Err(e);
        }
    }
    Ok(if libc::WIFEXITED(status) {
        Status::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Status::Killed(libc::WTERMSIG(status))
    } else {
        Status::Other
    })
}

/// `_exit(2)`: ends a child whose exec failed without running the parent's exit-time
/// code (flock's `run_program` does the same).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and does not return.
    unsafe { libc::_exit(code) }
}

/// A descriptor this process inherited (the `FD` form), checked open with
/// `fcntl(F_GETFD)`; `EBADF` when it is not.
pub fn inherited_fd(fd: std::os::fd::RawFd) -> Result<std::os::fd::BorrowedFd<'static>, Errno> {
    // SAFETY: F_GETFD only reads the descriptor's flags; any integer is accepted.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(if fd < 0 { libc::EBADF } else { errno() });
    }
    // SAFETY: the descriptor is open, and nothing in this process closes a descriptor
    // it inherited: it stays open until the process exits.
    Ok(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
}
