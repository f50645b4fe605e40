//! Open-file-description locks (`F_OFD_SETLK`, `F_OFD_SETLKW`, `F_OFD_GETLK`, Linux
//! 3.15): byte-range locks owned by the open file description, converted atomically,
//! conflicting with POSIX locks of other owners.

use crate::Mode;
use crate::backend::record;
use crate::range::ByteRange;
use crate::sys::KernelCall;

/// `fcntl(fd, F_OFD_SETLK[W], {type, range})`.
pub(crate) fn call(range: ByteRange, mode: Option<Mode>, wait: bool) -> KernelCall {
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    KernelCall::Fcntl {
        cmd,
        fl: record(range, mode),
    }
}
