//! The one error type of the crate: an errno and a sentence saying what failed.

use std::fmt;

/// A failure: the errno that names it (positive, e.g. `libc::EAGAIN`) and the detail
/// (the call, the path, the reason). At the C boundary it becomes `-errno`, and its
/// text becomes `unilock_last_error()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    errno: i32,
    detail: String,
}

/// The result type of the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with `errno` and a detail sentence.
    pub fn new(errno: i32, detail: impl Into<String>) -> Self {
        Error {
            errno,
            detail: detail.into(),
        }
    }

    /// A failed system call `call` on `subject` (a path or a description).
    pub(crate) fn sys(errno: i32, call: &str, subject: &str) -> Self {
        Error::new(errno, format!("{call} {subject}: {}", describe(errno)))
    }

    /// The positive errno.
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The detail sentence, without the errno's name.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The detail followed by the errno's description in parentheses, unless the detail
    /// already says it (as a failed system call's does): the text of
    /// `unilock_last_error()`.
    pub fn message(&self) -> String {
        let description = describe(self.errno);
        if self.detail.contains(description) {
            self.detail.clone()
        } else if self.detail.is_empty() {
            description.to_string()
        } else {
            format!("{} ({description})", self.detail)
        }
    }

    /// True for `EAGAIN`: the lock is held and the call did not wait.
    pub fn is_would_block(&self) -> bool {
        self.errno == libc::EAGAIN
    }

    /// True for `ETIMEDOUT`.
    pub fn is_timeout(&self) -> bool {
        self.errno == libc::ETIMEDOUT
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::new(std::io::Error::from_raw_os_error(e.errno).kind(), e)
    }
}

/// A short static description of an errno, in the words of this library where it
/// gives the errno a meaning of its own.
pub fn describe(errno: i32) -> &'static str {
    describe_c(errno).to_str().unwrap_or("unknown error")
}

/// [`describe`] as a NUL-terminated static string, for `unilock_strerror`.
pub(crate) fn describe_c(errno: i32) -> &'static std::ffi::CStr {
    match errno {
        0 => c"success",
        libc::EAGAIN => c"the lock is held by another owner",
        libc::ETIMEDOUT => c"timed out waiting for the lock",
        libc::ECANCELED => c"the wait was cancelled",
        libc::EDEADLK => c"waiting would deadlock",
        libc::EINVAL => c"invalid argument",
        libc::E2BIG => c"options struct has unknown non-zero fields",
        libc::EOPNOTSUPP => c"operation not supported by this backend",
        libc::EBUSY => c"another lock or unlock call is in progress on this handle",
        libc::ENOLCK => c"no locks available",
        libc::EBADF => c"bad or closed handle",
        libc::ENOTRECOVERABLE => c"internal error (caught panic)",
        libc::EACCES => c"permission denied",
        libc::EPERM => c"operation not permitted",
        libc::ENOENT => c"no such file or directory",
        libc::EROFS => c"read-only file system",
        libc::ELOOP => c"symbolic link refused (or too many levels of links)",
        libc::EISDIR => c"is a directory",
        libc::ENOTDIR => c"not a directory",
        libc::ENAMETOOLONG => c"file name too long",
        libc::EMFILE => c"too many open files in the process",
        libc::ENFILE => c"too many open files in the system",
        libc::ENOMEM => c"out of memory",
        libc::ENOSPC => c"no space left on device",
        libc::EEXIST => c"file exists",
        libc::EINTR => c"interrupted system call",
        libc::EIO => c"input/output error",
        libc::ENOSYS => c"function not implemented",
        libc::ESRCH => c"no such process",
        libc::ECHILD => c"no child processes",
        libc::EFAULT => c"bad address",
        libc::ETXTBSY => c"text file busy",
        libc::EDQUOT => c"disk quota exceeded",
        libc::ENODEV => c"no such device",
        libc::ENXIO => c"no such device or address",
        _ => c"unknown error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_calls_message_names_the_errno_once() {
        let e = Error::sys(libc::ENOENT, "create", "/nonexistent/dir/x");
        assert_eq!(
            e.message(),
            "create /nonexistent/dir/x: no such file or directory"
        );
    }

    #[test]
    fn a_reason_without_the_errno_gets_its_description() {
        let e = Error::new(libc::EINVAL, "flags has unknown bits 0x80");
        assert_eq!(
            e.message(),
            "flags has unknown bits 0x80 (invalid argument)"
        );
        assert_eq!(
            Error::new(libc::EAGAIN, "").message(),
            describe(libc::EAGAIN)
        );
    }
}
