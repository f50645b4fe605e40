//! The panic boundary and the per-thread last error.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::{Error, Result};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Stores `e`'s text ([`Error::message`]) as this thread's last error.
pub(crate) fn set_last_error(e: &Error) {
    let c = CString::new(e.message().replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = c);
}

/// A pointer to this thread's last error, valid until its next failing call.
pub(crate) fn last_error_ptr() -> *const std::ffi::c_char {
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}

/// Runs `body`; returns its value, or `-errno` with the last error set, or
/// `-ENOTRECOVERABLE` when it panicked.
pub(crate) fn guard(body: impl FnOnce() -> Result<c_int>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_last_error(&e);
            -e.errno()
        }
        Err(_) => {
            set_last_error(&Error::new(
                libc::ENOTRECOVERABLE,
                "internal error: a panic was caught at the C boundary",
            ));
            -libc::ENOTRECOVERABLE
        }
    }
}

/// Runs `body` for an entry point that returns a static string: a panic gives
/// `fallback`.
pub(crate) fn guard_str(
    fallback: &'static CStr,
    body: impl FnOnce() -> *const std::ffi::c_char,
) -> *const std::ffi::c_char {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback.as_ptr())
}

/// `EINVAL` naming the argument that was NULL.
pub(crate) fn null_argument(name: &str) -> Error {
    Error::new(libc::EINVAL, format!("{name} is NULL"))
}
