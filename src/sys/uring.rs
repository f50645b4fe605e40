//! A minimal io_uring of one thread: the system calls and the shared rings behind
//! [`crate::own_wait`], and nothing else of io_uring.
//!
//! What the ring is for: a completion is *task work* for the thread that submitted the
//! request (`TWA_SIGNAL`, the default when the ring is set up without
//! `IORING_SETUP_COOP_TASKRUN` or `IORING_SETUP_DEFER_TASKRUN`). Task work wakes the
//! thread from an interruptible sleep in a system call, such as a blocking `fcntl`
//! lock call, without a signal; with no signal to deliver, the kernel runs the task
//! work (which writes the completion into the ring) and then restarts the call.
//!
//! The ring is made with 32-byte completions (`IORING_SETUP_CQE32`, the size of a
//! `struct flock`), its descriptor is registered with the thread
//! (`IORING_REGISTER_RING_FDS`) and then closed: a thread's ring takes no descriptor,
//! and only that thread can submit to it. It lives until the thread exits (the
//! registration) and [`Ring::unmap`] (the mappings).

use std::sync::atomic::{AtomicU32, Ordering};

#[cfg(feature = "fault-injection")]
use super::set_errno;
use super::{Errno, errno};

/// `io_uring_setup(2)` flag: the completion queue has `cq_entries` entries.
const SETUP_CQSIZE: u32 = 1 << 3;
/// `io_uring_setup(2)` flag: 32-byte completions.
const SETUP_CQE32: u32 = 1 << 11;
/// `io_uring_params.features`: one mapping serves both rings (Linux 5.4).
const FEAT_SINGLE_MMAP: u32 = 1 << 0;
/// `mmap(2)` offsets of the rings and of the submission entries.
const OFF_SQ_RING: libc::off_t = 0;
const OFF_SQES: libc::off_t = 0x1000_0000;
/// `io_uring_enter(2)` flags.
const ENTER_GETEVENTS: u32 = 1 << 0;
const ENTER_REGISTERED_RING: u32 = 1 << 4;
/// `io_uring_register(2)` opcode: register ring descriptors with the thread (5.18).
const REGISTER_RING_FDS: u32 = 20;

/// Operations.
const OP_TIMEOUT: u8 = 11;
const OP_TIMEOUT_REMOVE: u8 = 12;
/// `IORING_OP_FUTEX_WAIT` (Linux 6.7).
const OP_FUTEX_WAIT: u8 = 51;
/// `futex2` flags of `IORING_OP_FUTEX_WAIT`: a 32-bit word, private to this memory.
const FUTEX2_SIZE_U32: u32 = 0x02;
const FUTEX2_PRIVATE: u32 = 128;

/// Submission and completion entries of the rings this thread uses.
const SQ_ENTRIES: u32 = 4;
const CQ_ENTRIES: u32 = 8;

/// `struct io_sqring_offsets`.
#[repr(C)]
#[derive(Default)]
struct SqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

/// `struct io_cqring_offsets`.
#[repr(C)]
#[derive(Default)]
struct CqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

/// `struct io_uring_params`.
#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqOffsets,
    cq_off: CqOffsets,
}

/// `struct io_uring_sqe`, with the fields this module uses named.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct Sqe {
    pub opcode: u8,
    pub flags: u8,
    pub ioprio: u16,
    pub fd: i32,
    /// `off` / `addr2`.
    pub off: u64,
    pub addr: u64,
    pub len: u32,
    /// `timeout_flags`, `futex_flags`, ...
    pub op_flags: u32,
    pub user_data: u64,
    pub buf_index: u16,
    pub personality: u16,
    pub file_index: i32,
    pub addr3: u64,
    pub pad: u64,
}

/// A 32-byte completion (`struct io_uring_cqe` with its `big_cqe` tail).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Cqe {
    pub user_data: u64,
    pub res: i32,
    pub flags: u32,
    pub extra: [u64; 2],
}

/// `struct io_uring_rsrc_update`.
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// `struct __kernel_timespec`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct Timespec {
    pub sec: i64,
    pub nsec: i64,
}

/// One thread's ring: where its queues are mapped, and its registered index.
pub(crate) struct Ring {
    /// The index of the ring among the thread's registered rings.
    index: u32,
    rings: *mut u8,
    rings_len: usize,
    sqes: *mut Sqe,
    sqes_len: usize,
    sq_tail: *const AtomicU32,
    sq_mask: u32,
    sq_array: *mut u32,
    cq_head: *const AtomicU32,
    cq_tail: *const AtomicU32,
    cq_mask: u32,
    cqes: *mut Cqe,
    /// Entries queued with [`Ring::push`] that the kernel has not taken yet.
    queued: u32,
}

// SAFETY: a Ring is only ever used by the thread that made it (its registered index is
// that thread's); it is moved between threads only as part of a slot that no thread
// uses at that moment.
unsafe impl Send for Ring {}

/// `io_uring_setup(2)` with `params`: the ring's descriptor.
fn setup(params: &mut Params) -> Result<std::os::fd::OwnedFd, Errno> {
    use std::os::fd::FromRawFd;
    // SAFETY: the kernel reads and writes `params`, a live struct of the size it
    // expects for its entry count (`struct io_uring_params`).
    let fd = gate!(Uring, unsafe {
        libc::syscall(libc::SYS_io_uring_setup, SQ_ENTRIES, params as *mut Params)
    }) as i32;
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: io_uring_setup returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Maps `len` bytes of the ring `fd` at `offset`, shared, populated; not inherited by
/// children made with fork().
fn map(fd: i32, len: usize, offset: libc::off_t) -> Result<*mut u8, Errno> {
    // SAFETY: a new mapping at an address the kernel chooses; nothing is overwritten.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(errno());
    }
    // SAFETY: the range is the mapping just made. A refusal only leaves the mapping
    // to a child made by fork(), which never uses it.
    unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) };
    Ok(p as *mut u8)
}

/// Unmaps a mapping made by [`map`].
fn unmap(p: *mut u8, len: usize) {
    if !p.is_null() {
        // SAFETY: `p` and `len` are a mapping of [`map`] that nothing uses any more.
        unsafe { libc::munmap(p as *mut libc::c_void, len) };
    }
}

impl Ring {
    /// Sets up a ring for the calling thread. `Err` as io_uring refuses (not built,
    /// `kernel.io_uring_disabled`, a seccomp filter, a kernel before 5.19).
    pub(crate) fn new() -> Result<Ring, Errno> {
        let mut params = Params {
            flags: SETUP_CQSIZE | SETUP_CQE32,
            cq_entries: CQ_ENTRIES,
            ..Params::default()
        };
        let fd = setup(&mut params)?;
        use std::os::fd::AsRawFd;
        let raw = fd.as_raw_fd();
        if params.features & FEAT_SINGLE_MMAP == 0 {
            return Err(libc::ENOSYS);
        }
        let sq_len = params.sq_off.array as usize + params.sq_entries as usize * 4;
        let cq_len =
            params.cq_off.cqes as usize + params.cq_entries as usize * std::mem::size_of::<Cqe>();
        let rings_len = sq_len.max(cq_len);
        let sqes_len = params.sq_entries as usize * std::mem::size_of::<Sqe>();
        let rings = map(raw, rings_len, OFF_SQ_RING)?;
        let sqes = match map(raw, sqes_len, OFF_SQES) {
            Ok(p) => p,
            Err(e) => {
                unmap(rings, rings_len);
                return Err(e);
            }
        };
        let mut update = RsrcUpdate {
            offset: u32::MAX,
            resv: 0,
            data: raw as u64,
        };
        // SAFETY: registers one ring descriptor, described by `update`, which the
        // kernel reads and then writes (the index it chose) before returning.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                raw,
                REGISTER_RING_FDS,
                &mut update as *mut RsrcUpdate,
                1,
            )
        };
        if rc != 1 {
            let e = if rc < 0 { errno() } else { libc::ENOSYS };
            unmap(rings, rings_len);
            unmap(sqes, sqes_len);
            return Err(e);
        }
        // The registration and the mappings keep the ring: its descriptor goes.
        drop(fd);
        let at = |off: u32| rings.wrapping_add(off as usize);
        // SAFETY: the offsets are the kernel's, inside the mapping just made.
        let (sq_mask, cq_mask) = unsafe {
            (
                *(at(params.sq_off.ring_mask) as *const u32),
                *(at(params.cq_off.ring_mask) as *const u32),
            )
        };
        Ok(Ring {
            index: update.offset,
            rings,
            rings_len,
            sqes: sqes as *mut Sqe,
            sqes_len,
            sq_tail: at(params.sq_off.tail) as *const AtomicU32,
            sq_mask,
            sq_array: at(params.sq_off.array) as *mut u32,
            cq_head: at(params.cq_off.head) as *const AtomicU32,
            cq_tail: at(params.cq_off.tail) as *const AtomicU32,
            cq_mask,
            cqes: at(params.cq_off.cqes) as *mut Cqe,
            queued: 0,
        })
    }

    /// Unmaps the queues (the registration ends with the thread). After a fork(), the
    /// child's copy must not be unmapped: it never had the mappings.
    pub(crate) fn unmap(&mut self) {
        unmap(self.rings, self.rings_len);
        unmap(self.sqes as *mut u8, self.sqes_len);
        self.rings = std::ptr::null_mut();
        self.sqes = std::ptr::null_mut();
    }

    fn sq_tail(&self) -> &AtomicU32 {
        // SAFETY: a u32 of the ring mapping, which lives as long as `self`.
        unsafe { &*self.sq_tail }
    }

    fn cq_head(&self) -> &AtomicU32 {
        // SAFETY: as sq_tail.
        unsafe { &*self.cq_head }
    }

    fn cq_tail(&self) -> &AtomicU32 {
        // SAFETY: as sq_tail.
        unsafe { &*self.cq_tail }
    }

    /// Queues `sqe`; the kernel takes it at the next [`Ring::enter`]. At most
    /// [`SQ_ENTRIES`] are in flight at once (the caller's requests are fewer).
    pub(crate) fn push(&mut self, sqe: Sqe) {
        let tail = self.sq_tail().load(Ordering::Relaxed);
        let i = tail & self.sq_mask;
        // SAFETY: `i` is below the entry count (masked), in the mappings of `self`;
        // the kernel does not read an entry before the tail moves past it.
        unsafe {
            *self.sqes.add(i as usize) = sqe;
            *self.sq_array.add(i as usize) = i;
        }
        self.sq_tail()
            .store(tail.wrapping_add(1), Ordering::Release);
        self.queued += 1;
    }

    /// True while an entry is queued that the kernel has not taken.
    pub(crate) fn has_queued(&self) -> bool {
        self.queued > 0
    }

    /// `io_uring_enter(2)`: submits every queued entry and, when `wait_for` is not 0,
    /// waits until that many completions are in the queue. `Err` as the call fails
    /// (`EINTR`: a signal ended the wait early; `EAGAIN`, `ENOMEM`: nothing taken).
    /// Entries the kernel did not take stay queued for the next call
    /// ([`Ring::has_queued`]); the caller looks at the completion queue again.
    pub(crate) fn enter(&mut self, wait_for: u32) -> Result<(), Errno> {
        let submit = self.queued;
        let flags = ENTER_REGISTERED_RING | if wait_for > 0 { ENTER_GETEVENTS } else { 0 };
        // SAFETY: the registered ring index of this thread, and no argument pointer.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.index,
                submit,
                wait_for,
                flags,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if rc < 0 {
            return Err(errno());
        }
        self.queued -= (rc as u32).min(self.queued);
        Ok(())
    }

    /// Takes the oldest completion, if any.
    pub(crate) fn reap(&mut self) -> Option<Cqe> {
        let head = self.cq_head().load(Ordering::Relaxed);
        if head == self.cq_tail().load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: an entry between head and tail, written by the kernel (acquire on
        // the tail above), inside the mapping of `self`.
        let cqe = unsafe { *self.cqes.add((head & self.cq_mask) as usize) };
        self.cq_head()
            .store(head.wrapping_add(1), Ordering::Release);
        Some(cqe)
    }

    /// Where the next completion will be written, as raw memory of a completion's size
    /// (the queue must have room: the caller reaps every completion).
    pub(crate) fn next_completion(&self) -> *mut Cqe {
        let tail = self.cq_tail().load(Ordering::Acquire);
        self.cqes.wrapping_add((tail & self.cq_mask) as usize)
    }
}

/// An `IORING_OP_FUTEX_WAIT` entry: completes when `word` is woken (`FUTEX_WAKE_PRIVATE`)
/// while it still holds `val` (at once, with `-EAGAIN`, when it no longer does).
pub(crate) fn futex_wait(word: &AtomicU32, val: u32, user_data: u64) -> Sqe {
    Sqe {
        opcode: OP_FUTEX_WAIT,
        fd: (FUTEX2_SIZE_U32 | FUTEX2_PRIVATE) as i32,
        addr: word.as_ptr() as u64,
        off: val as u64,
        addr3: u32::MAX as u64,
        user_data,
        ..Sqe::default()
    }
}

/// An `IORING_OP_TIMEOUT` entry: completes (`-ETIME`) once the time in `*ts` (relative,
/// `CLOCK_MONOTONIC`) has passed. `ts` must live until the entry is submitted.
pub(crate) fn timeout(ts: &Timespec, user_data: u64) -> Sqe {
    Sqe {
        opcode: OP_TIMEOUT,
        addr: ts as *const Timespec as u64,
        len: 1,
        user_data,
        ..Sqe::default()
    }
}

/// An `IORING_OP_TIMEOUT_REMOVE` entry for the timeout submitted as `target`.
pub(crate) fn timeout_remove(target: u64, user_data: u64) -> Sqe {
    Sqe {
        opcode: OP_TIMEOUT_REMOVE,
        addr: target,
        user_data,
        ..Sqe::default()
    }
}
