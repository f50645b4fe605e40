//! BSD `flock(2)`: whole-file locks owned by the open file description.
//!
//! The kernel converts a held lock by releasing it first: a shared holder that asks
//! for an exclusive lock holds nothing while it waits, and a failed `LOCK_NB` upgrade
//! returns with nothing held. [`crate::Lock`] restores the shared lock after a failed
//! upgrade (see its docs).

use crate::Mode;
use crate::sys::KernelCall;

/// `flock(fd, LOCK_SH | LOCK_EX | LOCK_UN [| LOCK_NB])`.
pub(crate) fn call(mode: Option<Mode>, wait: bool) -> KernelCall {
    let op = match mode {
        None => libc::LOCK_UN,
        Some(Mode::Shared) => libc::LOCK_SH,
        Some(Mode::Exclusive) => libc::LOCK_EX,
    };
    KernelCall::Flock {
        op: if wait || mode.is_none() {
            op
        } else {
            op | libc::LOCK_NB
        },
    }
}
