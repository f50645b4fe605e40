//! Every process that has a lock: the pids behind a `unilock_holder` record. A
//! separate call rather than fields of the record, whose size callers compile in.

use std::ffi::{c_char, c_int};

use crate::{Error, Holder, Lock};

/// The locks of the handle's file (its list) that a caller's record describes: the
/// same backend, mode, start and len.
fn described(
    lock: &Lock,
    h: &unilock_holder,
) -> crate::Result<impl Iterator<Item = Holder> + use<>> {
    let key = (h.backend, h.mode, h.start, h.len);
    Ok(lock
        .list()?
        .into_iter()
        .filter(move |x| (x.backend as u32, x.mode as u32, x.start, x.len) == key))
}

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
        let mut found: Vec<i32> = described(entered.lock(), &h)?
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

/// Writes the name of the host that the lock `*h` describes is held on (as
/// `unilock_query` or `unilock_list` filled it) into `buf`, NUL-terminated and cut to
/// `cap` bytes, and returns the name's length (which may be `cap` or more: call again
/// with a larger buffer). ETCD: the host the key's value names, "" for a key without
/// one (`etcdctl lock`'s); DOTLOCK: the lock record's `host=`; the kernel's locks:
/// this host. `-ENOENT` when the lock is gone; `buf` may be NULL when `cap` is 0.
///
/// # Safety
/// `h` points to a `unilock_holder`, `buf` to `cap` writable bytes (or is NULL with
/// `cap` 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unilock_holder_host(
    l: *mut unilock,
    h: *const unilock_holder,
    buf: *mut c_char,
    cap: usize,
) -> c_int {
    guard(|| {
        let entered = Entered::new(l)?;
        if h.is_null() {
            return Err(null_argument("h"));
        }
        if buf.is_null() && cap > 0 {
            return Err(null_argument("buf (with cap > 0)"));
        }
        // SAFETY: non-null pointer to the caller's holder record (plain data).
        let h = unsafe { std::ptr::read_unaligned(h) };
        let found = described(entered.lock(), &h)?
            .next()
            .ok_or_else(|| Error::new(libc::ENOENT, "that lock is no longer held"))?;
        let host = if let Some(k) = &found.etcd {
            k.host.clone().unwrap_or_default()
        } else if let Some(f) = &found.lock_file {
            f.host.clone().unwrap_or_default()
        } else {
            crate::sys::host_name().unwrap_or_default()
        };
        let bytes = host.as_bytes();
        if cap > 0 {
            let n = bytes.len().min(cap - 1);
            // SAFETY: `buf` has room for `cap` bytes and n + 1 <= cap.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), n);
                buf.add(n).write(0);
            }
        }
        Ok(c_int::try_from(bytes.len()).unwrap_or(c_int::MAX))
    })
}
