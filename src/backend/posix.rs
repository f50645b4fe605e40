//! POSIX record locks (`F_SETLK`, `F_SETLKW`, `F_GETLK`): byte-range locks owned by
//! the process, converted atomically; the kernel reports deadlocks between processes.
//!
//! Because the process is the owner, the kernel lock is the union of what this
//! process's handles hold, and [`crate::inode_table`] arbitrates between them. Taking
//! `mode` on `range` for one handle always leaves the process holding exactly `mode`
//! on `range` (other handles there hold only compatible shared locks), so it is one
//! `F_SETLK(W)` on `range`. Releasing is computed piece by piece by [`release_ops`].

use crate::Mode;
use crate::backend::record;
use crate::range::{ByteRange, RangeMap};
use crate::sys::KernelCall;

/// `fcntl(fd, F_SETLK[W], {type, range})`.
pub(crate) fn call(range: ByteRange, mode: Option<Mode>, wait: bool) -> KernelCall {
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    KernelCall::Fcntl {
        cmd,
        fl: record(range, mode),
    }
}

/// The kernel changes that release `range` for a handle holding `mine`, when the other
/// handles of the process hold `others` (disjoint pieces covering `range`, with the
/// strongest mode each): the process keeps the others' strongest mode on every byte, so
/// a byte changes only where this handle held more than the others. Adjacent changes of
/// the same kind are merged into one call.
pub(crate) fn release_ops(
    mine: &RangeMap,
    range: ByteRange,
    others: &[(ByteRange, Option<Mode>)],
) -> Vec<(ByteRange, Option<Mode>)> {
    let mut ops: Vec<(ByteRange, Option<Mode>)> = Vec::new();
    for (held, my_mode) in mine.overlapping(range) {
        for (piece, other) in others.iter().filter(|(p, _)| p.overlaps(&held)) {
            let part = ByteRange {
                start: piece.start.max(held.start),
                end: piece.end.min(held.end),
            };
            let before = Some(my_mode).max(*other);
            if before == *other {
                continue;
            }
            match ops.last_mut() {
                Some((last, m)) if *m == *other && last.end == part.start => last.end = part.end,
                _ => ops.push((part, *other)),
            }
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    #[test]
    fn release_keeps_what_other_handles_hold() {
        let mut mine = RangeMap::new();
        mine.set(r(0, 100), Mode::Exclusive);
        let others = vec![
            (r(0, 40), None),
            (r(40, 60), Some(Mode::Shared)),
            (r(60, 100), None),
        ];
        assert_eq!(
            release_ops(&mine, r(0, 100), &others),
            vec![
                (r(0, 40), None),
                (r(40, 60), Some(Mode::Shared)),
                (r(60, 100), None)
            ]
        );
        let mut shared = RangeMap::new();
        shared.set(r(0, 100), Mode::Shared);
        assert_eq!(
            release_ops(&shared, r(0, 100), &others),
            vec![(r(0, 40), None), (r(60, 100), None)]
        );
    }
}
