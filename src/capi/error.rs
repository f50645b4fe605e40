//! `unilock_strerror` and `unilock_last_error`.

use std::ffi::{c_char, c_int};

use super::boundary::{guard_str, last_error_ptr};

/// A static description of `rc` (a negative errno, or 0). Never NULL; unknown codes
/// give "unknown error".
#[unsafe(no_mangle)]
pub extern "C" fn unilock_strerror(rc: c_int) -> *const c_char {
    guard_str(c"unknown error", || {
        crate::error::describe_c(rc.saturating_abs()).as_ptr()
    })
}

/// This thread's detail of its last failed call: the call, the path or descriptor,
/// and the reason. Never NULL ("" before any failure); valid until this thread's next
/// failing call. Successful calls do not clear it.
#[unsafe(no_mangle)]
pub extern "C" fn unilock_last_error() -> *const c_char {
    guard_str(c"", last_error_ptr)
}
