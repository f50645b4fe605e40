//! The C API: the only `extern "C"` code of the crate. Each entry point checks its
//! pointers and arguments, converts them, calls the Rust API, and turns the result
//! into `0`/`-errno` with the detail in `unilock_last_error()`; a panic is caught at
//! the boundary ([`boundary`]) and returned as `-ENOTRECOVERABLE`.
//!
//! Compiled with the `capi` feature only, for the C library (`make`) and for the tests
//! and benchmarks that call it. From Rust, the functions that take pointers are
//! `unsafe`: the header's conventions are their contract, restated in each one's
//! `# Safety` section. Safe Rust cannot call them:
//!
//! ```compile_fail,E0133
//! // error[E0133]: call to unsafe function requires an unsafe block
//! unilock::capi::unilock_close(0x10 as *mut unilock::capi::unilock);
//! ```

#![allow(non_camel_case_types)]

/// A `# Safety` section for an entry point's Rust documentation. Written through a
/// macro because cbindgen copies only literal doc comments into the header: the
/// section is for Rust callers, and C callers have the same rules in the header's
/// conventions and each function's text.
macro_rules! safety {
    ($text:literal) => {
        concat!("\n# Safety\n\n", $text)
    };
}

pub mod boundary;
pub mod error;
pub mod handle;
pub mod holder;
pub(crate) mod registry;
pub mod version;

pub use error::{unilock_last_error, unilock_strerror};
pub use handle::*;
pub use holder::*;
pub use version::*;

/// The wait mechanism in use (for the benchmarks' report), "not yet chosen" before the
/// first wait. Not part of the API.
#[doc(hidden)]
pub fn wait_mechanism() -> &'static str {
    crate::wait::mechanism()
}
