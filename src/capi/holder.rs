//! Every process that has a lock: the pids behind a `unilock_holder` record. A
//! separate call rather than fields of the record, whose size callers compile in.

use std::ffi::c_int;

use super::boundary::{guard, null_argument};
use super::handle::unilock_holder;
use super::registry::{Entered, unilock};

/// Fills `pids` with up to `cap` pids of the live processes that have the lock `*h`
/// describes (its backend, mode, start and len, as `unilock_query` or `unilock_list`
/// filled it), lowest first, and sets `*count` to how many there are (which may exceed
/// `cap`). For FLOCK and OFD locks these are every process with a descriptor of the
/// open file description that holds the lock (a shell that opened it and the children
/// that inherited it), for POSIX the owning process, for DOTLOCK the lock file's owner
/// when alive on this host; they are found in the `lock:` lines of `/proc/PID/fdinfo`,
/// as lslocks(8) finds its HOLDERS. The calling process is left out when it only has a
/// copy of another process's descriptor and is not the only one; it is counted when
/// one of its handles holds the lock. `*count` is 0 when the lock is gone or no
/// holder can be seen (another user's processes). `pids` may be NULL when `cap` is 0.
/// Reads /proc: `-ENOENT` or `-EACCES` where it cannot.
///
/// # Safety
/// `h` points to a `unilock_holder`, `pids` to `cap` writable `int32_t` (or is NULL
/// with `cap` 0), `count` to a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unilock_holder_pids(
    l: *mut unilock,
    h: *const unilock_holder,
    pids: *mut i32,
    cap: usize,
    count: *mut usize,
) -> c_int {
    guard(|| {
        let entered = Entered::new(l)?;
        if h.is_null() {
            return Err(null_argument("h"));
        }
        if count.is_null() {
            return Err(null_argument("count"));
        }
        if pids.is_null() && cap > 0 {
            return Err(null_argument("pids (with cap > 0)"));
        }
        // SAFETY: non-null pointer to the caller's holder record (plain data).
        let h = unsafe { std::ptr::read_unaligned(h) };
        let mut found: Vec<i32> = entered
            .lock()
            .list()?
            .into_iter()
            .filter(|x| {
                (x.backend as u32, x.mode as u32, x.start, x.len)
                    == (h.backend, h.mode, h.start, h.len)
            })
            .flat_map(|x| x.processes.into_iter().map(|p| p.pid))
            .collect();
        found.sort_unstable();
        found.dedup();
        for (i, pid) in found.iter().take(cap).enumerate() {
            // SAFETY: `pids` has room for `cap` entries and i < cap.
            unsafe { pids.add(i).write(*pid) };
        }
        // SAFETY: non-null pointer to the caller's size_t.
        unsafe { count.write(found.len()) };
        Ok(0)
    })
}
