//! The library's version, as macros in the header and as a string at run time.

use std::ffi::c_char;

/// Major version: changes when the ABI breaks (the SONAME is `libunilock.so.MAJOR`).
pub const UNILOCK_VERSION_MAJOR: u32 = 0;
/// Minor version: new functionality, ABI kept.
pub const UNILOCK_VERSION_MINOR: u32 = 1;
/// Patch version.
pub const UNILOCK_VERSION_PATCH: u32 = 0;

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// The version of the library that is running, "MAJOR.MINOR.PATCH". Compare it with
/// the `UNILOCK_VERSION_*` macros the program was compiled with.
#[unsafe(no_mangle)]
pub extern "C" fn unilock_version() -> *const c_char {
    VERSION.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_macros_match_the_crate_version() {
        let expected =
            format!("{UNILOCK_VERSION_MAJOR}.{UNILOCK_VERSION_MINOR}.{UNILOCK_VERSION_PATCH}");
        assert_eq!(env!("CARGO_PKG_VERSION"), expected);
        // SAFETY: unilock_version returns a static NUL-terminated string.
        let runtime = unsafe { std::ffi::CStr::from_ptr(unilock_version()) };
        assert_eq!(runtime.to_str().unwrap(), expected);
    }
}
