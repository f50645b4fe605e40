//! The C API: the only `extern "C"` code of the crate. Each entry point checks its
//! pointers and arguments, converts them, calls the Rust API, and turns the result
//! into `0`/`-errno` with the detail in `unilock_last_error()`; a panic is caught at
//! the boundary ([`boundary`]) and returned as `-ENOTRECOVERABLE`.

#![allow(non_camel_case_types)]

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
