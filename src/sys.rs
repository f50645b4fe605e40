//! The only raw system calls of the crate, each in a small function with its safety
//! argument. Every call retries `EINTR` where that is the right thing to do and reports
//! failure as the positive errno.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A failed system call: the positive errno.
pub(crate) type Errno = i32;

/// `clone(2)` flag: put a pidfd for the child in `parent_tid` (Linux 5.2).
const CLONE_PIDFD: libc::c_int = 0x1000;
/// `waitpid(2)` option: wait for children whatever their exit signal.
const WALL: libc::c_int = 0x4000_0000;

fn errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Runs `f` until it does not fail with `EINTR`.
#[inline(always)]
fn retry<T: PartialEq + From<i8>>(mut f: impl FnMut() -> T) -> Result<T, Errno> {
    loop {
        let r = f();
        if r != T::from(-1) {
            return Ok(r);
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Sets this thread's `errno` (an injected failure looks like the kernel's).
#[cfg(feature = "fault-injection")]
fn set_errno(e: Errno) {
    // SAFETY: __errno_location returns this thread's errno, valid for writes.
    unsafe { *libc::__errno_location() = e };
}

/// The system call `$body` of kind `$call` ([`crate::fault::Call`]), or, in a build with
/// the `fault-injection` feature, the failure a test injected for it: `-1` with `errno`
/// set, as the failing call would return. Without the feature it is `$body` alone.
#[cfg(feature = "fault-injection")]
macro_rules! gate {
    ($call:ident, $body:expr) => {
        match crate::fault::check(crate::fault::Call::$call) {
            Some(e) => {
                set_errno(e);
                -1
            }
            None => $body,
        }
    };
}

/// See the `fault-injection` version: without the feature, the call alone.
#[cfg(not(feature = "fault-injection"))]
macro_rules! gate {
    ($call:ident, $body:expr) => {
        $body
    };
}

/// The errno a test injected for a call of kind `$call` (`fault-injection` builds),
/// for calls that do not go through `gate!`; `None` without the feature.
#[cfg(feature = "fault-injection")]
macro_rules! injected {
    ($call:ident) => {
        crate::fault::check(crate::fault::Call::$call)
    };
}

/// See the `fault-injection` version: without the feature, never.
#[cfg(not(feature = "fault-injection"))]
macro_rules! injected {
    ($call:ident) => {
        None::<Errno>
    };
}

/// `open(2)` with `flags` and creation `mode`; never returns descriptor 0, 1 or 2
/// (a descriptor there would be mistaken for a standard stream by the host).
pub(crate) fn open(path: &CStr, flags: libc::c_int, mode: libc::mode_t) -> Result<OwnedFd, Errno> {
    // SAFETY: `path` is a valid NUL-terminated string; open does not keep the pointer.
    let fd = retry(|| {
        gate!(Open, unsafe {
            libc::open(path.as_ptr(), flags, mode as libc::c_uint)
        })
    })?;
    // SAFETY: open returned a fresh descriptor that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if fd > 2 {
        return Ok(owned);
    }
    let cmd = if flags & libc::O_CLOEXEC != 0 {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    // SAFETY: F_DUPFD(_CLOEXEC) on a descriptor we own returns a new one or -1.
    let high = retry(|| gate!(Fcntl, unsafe { libc::fcntl(owned.as_raw_fd(), cmd, 3) }))?;
    // SAFETY: the duplicate is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

/// `unlink(2)`.
pub(crate) fn unlink(path: &CStr) -> Result<(), Errno> {
    // SAFETY: `path` is a valid NUL-terminated string; unlink does not keep the pointer.
    retry(|| gate!(Unlink, unsafe { libc::unlink(path.as_ptr()) }))?;
    Ok(())
}

/// `stat(2)` or `lstat(2)` of a path.
pub(crate) fn stat(path: &CStr, follow: bool) -> Result<libc::stat, Errno> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `path` is NUL-terminated and `st` is writable memory of the right size.
    let rc = gate!(Stat, unsafe {
        if follow {
            libc::stat(path.as_ptr(), st.as_mut_ptr())
        } else {
            libc::lstat(path.as_ptr(), st.as_mut_ptr())
        }
    });
    if rc != 0 {
        return Err(errno());
    }
    // SAFETY: stat succeeded, so it filled the struct.
    Ok(unsafe { st.assume_init() })
}

/// `fstat(2)`.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> Result<libc::stat, Errno> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is open for the duration of the call and `st` is writable.
    let rc = gate!(Stat, unsafe {
        libc::fstat(fd.as_raw_fd(), st.as_mut_ptr())
    });
    if rc != 0 {
        return Err(errno());
    }
    // SAFETY: fstat succeeded, so it filled the struct.
    Ok(unsafe { st.assume_init() })
}

/// `fcntl(F_DUPFD_CLOEXEC)` (or `F_DUPFD` when `cloexec` is false), above the
/// standard streams.
pub(crate) fn dup(fd: BorrowedFd<'_>, cloexec: bool) -> Result<OwnedFd, Errno> {
    let cmd = if cloexec {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    // SAFETY: duplicating a borrowed, open descriptor.
    let new = retry(|| gate!(Fcntl, unsafe { libc::fcntl(fd.as_raw_fd(), cmd, 3) }))?;
    // SAFETY: the duplicate is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `fcntl(F_GETFL)`: the access mode and status flags of an open file description.
pub(crate) fn status_flags(fd: BorrowedFd<'_>) -> Result<libc::c_int, Errno> {
    // SAFETY: F_GETFL reads flags of an open descriptor.
    retry(|| gate!(Fcntl, unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) }))
}

/// `fcntl(F_GETFL)` of a descriptor held by number, which may have been closed.
pub(crate) fn fd_flags(fd: RawFd) -> Result<libc::c_int, Errno> {
    // SAFETY: F_GETFL only reads flags; a closed descriptor gives EBADF.
    retry(|| gate!(Fcntl, unsafe { libc::fcntl(fd, libc::F_GETFL) }))
}

/// `fcntl(F_SETFL)` without `O_NONBLOCK`.
pub(crate) fn clear_nonblock(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let flags = status_flags(fd)?;
    // SAFETY: F_SETFL on an open descriptor with flags it reported itself.
    retry(|| {
        gate!(Fcntl, unsafe {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK)
        })
    })?;
    Ok(())
}

/// `flock(2)` with `op` (`LOCK_SH`, `LOCK_EX`, `LOCK_UN`, with `LOCK_NB`).
#[inline(always)]
pub(crate) fn flock(fd: BorrowedFd<'_>, op: libc::c_int) -> Result<(), Errno> {
    // SAFETY: flock takes an open descriptor and an integer.
    retry(|| gate!(Flock, unsafe { libc::flock(fd.as_raw_fd(), op) }))?;
    Ok(())
}

/// `fcntl(2)` with a record-lock command (`F_SETLK`, `F_GETLK`, `F_OFD_*`).
#[inline(always)]
pub(crate) fn fcntl_lock(
    fd: BorrowedFd<'_>,
    cmd: libc::c_int,
    fl: &mut libc::flock,
) -> Result<(), Errno> {
    // SAFETY: `fl` is a valid, writable struct flock for the duration of the call.
    retry(|| {
        gate!(FcntlLock, unsafe {
            libc::fcntl(fd.as_raw_fd(), cmd, fl as *mut libc::flock)
        })
    })?;
    Ok(())
}

/// `fcntl(2)` with a blocking record-lock command (`F_SETLKW`, `F_OFD_SETLKW`) on the
/// struct at `fl`, made once: `EINTR` is returned, not retried (the caller decides).
/// `fl` may be memory the kernel writes to while the call sleeps (a ring's completion
/// queue, see [`crate::own_wait`]): the call reads it again when it is restarted.
/// Made with `syscall(2)`, not the C library's `fcntl`, which makes a blocking lock
/// call a thread cancellation point: a host's `pthread_cancel` must not unwind
/// through the library.
pub(crate) fn fcntl_lock_at(
    fd: RawFd,
    cmd: libc::c_int,
    fl: *mut libc::flock,
) -> Result<(), Errno> {
    // SAFETY: `fl` points to a struct flock that stays mapped and writable for the
    // duration of the call (the caller's); the descriptor is the caller's.
    let rc = gate!(FcntlLock, unsafe {
        libc::syscall(libc::SYS_fcntl, fd, cmd, fl) as libc::c_int
    });
    if rc == -1 { Err(errno()) } else { Ok(()) }
}

/// `flock(2)` with a blocking `op` on `fd`, made once, with `syscall(2)` (see
/// [`fcntl_lock_at`]): `EINTR` is returned, not retried.
pub(crate) fn flock_at(fd: RawFd, op: libc::c_int) -> Result<(), Errno> {
    // SAFETY: flock takes a descriptor and an integer.
    let rc = gate!(Flock, unsafe {
        libc::syscall(libc::SYS_flock, fd, op) as libc::c_int
    });
    if rc == -1 { Err(errno()) } else { Ok(()) }
}

/// True when any `fcntl` lock (POSIX or OFD, of any process) is set on the file of
/// `fd`: `F_OFD_GETLK` finds one that conflicts with a write lock on the whole file.
pub(crate) fn fcntl_locks_on(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    // SAFETY: an all-zero struct flock is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fcntl_lock(fd, libc::F_OFD_GETLK, &mut fl)?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Puts the file of descriptor `src` in place of descriptor `dst` (`dup3(2)`,
/// close-on-exec), with a raw system call that leaves `errno` alone. Returns the
/// kernel's result.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn replace_fd(src: RawFd, dst: RawFd) -> isize {
    raw_syscall3(
        libc::SYS_dup3,
        src as usize,
        dst as usize,
        libc::O_CLOEXEC as usize,
    )
}

/// See the x86_64 version (here through the C library).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) fn replace_fd(src: RawFd, dst: RawFd) -> isize {
    // SAFETY: dup3 takes two descriptors and flags.
    unsafe { libc::dup3(src, dst, libc::O_CLOEXEC) as isize }
}

/// `CLOCK_MONOTONIC` in nanoseconds (the clock of `std::time::Instant`).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Starts a thread named `name` that runs `main`, with every signal blocked in it (so
/// that the host's signals go to the host's threads); `Err` as the thread could not
/// be made.
pub(crate) fn spawn_quiet_thread(name: &str, main: fn()) -> Result<(), Errno> {
    if let Some(e) = injected!(Thread) {
        return Err(e);
    }
    // SAFETY: sigset_t is plain data that sigfillset initializes; pthread_sigmask
    // reads and writes live sets. The creating thread's mask is restored below.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let made = std::thread::Builder::new()
            .name(name.to_string())
            .stack_size(64 * 1024)
            .spawn(main);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        made.map(|_| ())
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EAGAIN))
    }
}

/// `close(2)` of a descriptor this library owns but holds by number.
pub(crate) fn close_raw(fd: RawFd) {
    // SAFETY: closing a descriptor the caller owns; nothing uses it afterwards.
    unsafe { libc::close(fd) };
}

/// A non-blocking lock call made once as `call` says, on `fd`, with `syscall(2)`; its
/// result is not looked at (the fair queue's move after a grant, see
/// [`crate::wait::CallState::set_after_grant`]).
pub(crate) fn lock_call_once(fd: RawFd, call: &KernelCall) {
    match call {
        // SAFETY: flock takes a descriptor and an integer.
        KernelCall::Flock { op } => unsafe {
            libc::syscall(libc::SYS_flock, fd, *op);
        },
        // SAFETY: `fl` is a live struct flock, read by the kernel.
        KernelCall::Fcntl { cmd, fl } => unsafe {
            libc::syscall(libc::SYS_fcntl, fd, *cmd, fl as *const libc::flock);
        },
    }
}

static PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

thread_local! {
    static THREAD: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
static NEXT_THREAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The calling thread's identity within the process: a number given to each thread on
/// its first call and never reused (thread ids and `pthread_self` values are reused
/// once a thread exits, and a lock left by an exited thread must not be mistaken for
/// one held by the new thread).
pub(crate) fn thread_id() -> u64 {
    THREAD.with(|t| match t.get() {
        0 => {
            let id = NEXT_THREAD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            t.set(id);
            id
        }
        id => id,
    })
}

/// `getpid(2)`, cached.
pub(crate) fn getpid() -> i32 {
    match PID.load(std::sync::atomic::Ordering::Relaxed) {
        0 => {
            let pid = rustix::process::getpid().as_raw_nonzero().get();
            PID.store(pid, std::sync::atomic::Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

/// Forgets the cached pid: called in a child right after `fork()`.
pub(crate) fn forget_ids() {
    PID.store(0, std::sync::atomic::Ordering::Relaxed);
}

/// `eventfd(2)`: non-blocking, close-on-exec, counter 0.
pub(crate) fn eventfd() -> Result<OwnedFd, Errno> {
    use rustix::event::EventfdFlags;
    if let Some(e) = injected!(Eventfd) {
        return Err(e);
    }
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map_err(|e| e.raw_os_error())
}

/// Adds one to an eventfd counter, waking whoever polls it.
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a local to an eventfd; failure (a full counter) is
    // harmless because the descriptor is then readable already.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Resets an eventfd counter to zero.
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut value: u64 = 0;
    // SAFETY: reads 8 bytes into a local; EAGAIN (already zero) is expected and fine.
    unsafe { libc::read(fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
}

/// `ppoll(2)` for readability of `N` descriptors (-1 entries are ignored); `None`
/// waits forever. Returns which of them are readable; all false on timeout. EINTR
/// counts as "nothing ready" so that the caller re-checks its deadline.
pub(crate) fn poll_readable<const N: usize>(
    fds: [RawFd; N],
    timeout: Option<Duration>,
) -> Result<[bool; N], Errno> {
    let mut pfd = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `pfd` holds N valid pollfd entries (fd -1 is ignored by the kernel),
    // `tsp` is null or points to a live timespec, and the sigmask is null.
    let rc = gate!(Poll, unsafe {
        libc::ppoll(pfd.as_mut_ptr(), N as libc::nfds_t, tsp, std::ptr::null())
    });
    if rc < 0 {
        let e = errno();
        return if e == libc::EINTR {
            Ok([false; N])
        } else {
            Err(e)
        };
    }
    let ready = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    Ok(pfd.each_ref().map(ready))
}

/// Kills a waiter child with SIGKILL. Its pid cannot have been reused: the child is
/// not reaped yet, so the pid still names it (`kill(2)` rather than
/// `pidfd_send_signal(2)`, which some tools, valgrind among them, do not know).
pub(crate) fn kill_child(pid: libc::pid_t) {
    // SAFETY: kill takes integers; an error (the child already exited) needs no
    // handling, the reap that follows collects it either way.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Kills and reaps a waiter child that has no exit descriptor (so it never outlives
/// the memory it uses).
fn kill_and_reap(pid: libc::pid_t) {
    kill_child(pid);
    let _ = reap(pid);
}

/// How a waiter child ended.
pub(crate) enum ChildExit {
    /// It returned from its work with this code.
    Code(i32),
    /// It was killed by a signal.
    Killed,
}

/// `waitpid(pid, __WALL)`: reaps a waiter child, blocking.
pub(crate) fn reap(pid: libc::pid_t) -> Result<ChildExit, Errno> {
    let mut status = 0;
    // SAFETY: waits for our own child by pid into a local; __WALL because a waiter
    // child may have no exit signal.
    retry(|| gate!(Wait, unsafe { libc::waitpid(pid, &mut status, WALL) }))?;
    Ok(if libc::WIFEXITED(status) {
        ChildExit::Code(libc::WEXITSTATUS(status))
    } else {
        ChildExit::Killed
    })
}

/// `pidfd_open(2)`: a descriptor that becomes readable when process `pid` exits.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = gate!(Pidfd, unsafe {
        libc::syscall(libc::SYS_pidfd_open, pid, 0)
    });
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: the descriptor is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The blocking lock call a waiter child makes on the shared descriptor table.
#[derive(Clone, Copy)]
pub(crate) enum KernelCall {
    /// `flock(fd, op)`.
    Flock { op: libc::c_int },
    /// `fcntl(fd, cmd, &fl)`.
    Fcntl { cmd: libc::c_int, fl: libc::flock },
}

/// What a waiter child reads: the call, and where it reports the result.
#[repr(C)]
pub(crate) struct WaiterJob {
    fd: RawFd,
    call: KernelCall,
    /// A non-blocking call the child makes on another descriptor as soon as `call`
    /// succeeded (the fair queue lets the next in line move up without waiting for
    /// this process to wake).
    after_grant: Option<(RawFd, KernelCall)>,
    parent: libc::pid_t,
    /// 0 when the call returned success; written by the child before it exits.
    result: std::sync::atomic::AtomicI64,
}

impl WaiterJob {
    pub(crate) fn new(fd: RawFd, call: KernelCall) -> Self {
        WaiterJob {
            fd,
            call,
            after_grant: None,
            parent: getpid(),
            result: std::sync::atomic::AtomicI64::new(1),
        }
    }

    /// Makes `call` on `fd` once the job's call succeeded.
    pub(crate) fn after_grant(mut self, fd: RawFd, call: KernelCall) -> Self {
        self.after_grant = Some((fd, call));
        self
    }

    /// True when the child's call returned success (even if it was then killed
    /// before it could exit).
    pub(crate) fn succeeded(&self) -> bool {
        self.result.load(std::sync::atomic::Ordering::SeqCst) == 0
    }
}

/// A system call with up to five arguments that does not touch `errno`: a waiter
/// child shares the parent's memory and thread-local storage, so it must not write
/// `errno`. Returns the kernel's result (a negative errno on failure).
#[cfg(target_arch = "x86_64")]
pub(crate) fn raw_syscall5(
    nr: libc::c_long,
    a: usize,
    b: usize,
    c: usize,
    d: usize,
    e: usize,
) -> isize {
    let ret: isize;
    // SAFETY: the `syscall` instruction with the x86_64 Linux convention (arguments in
    // rdi, rsi, rdx, r10, r8); rcx and r11 are clobbered by the instruction, memory may
    // be written by the kernel as the call's arguments allow.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            in("r10") d,
            in("r8") e,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret
}

/// A system call with up to five arguments that does not touch `errno` (see x86_64).
#[cfg(target_arch = "aarch64")]
pub(crate) fn raw_syscall5(
    nr: libc::c_long,
    a: usize,
    b: usize,
    c: usize,
    d: usize,
    e: usize,
) -> isize {
    let ret: isize;
    // SAFETY: `svc 0` with the aarch64 Linux convention (number in x8, arguments in
    // x0-x4, result in x0).
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") nr,
            inlateout("x0") a as isize => ret,
            in("x1") b,
            in("x2") c,
            in("x3") d,
            in("x4") e,
            options(nostack)
        );
    }
    ret
}

/// [`raw_syscall5`] with three arguments.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn raw_syscall3(nr: libc::c_long, a: usize, b: usize, c: usize) -> isize {
    raw_syscall5(nr, a, b, c, 0, 0)
}

/// Makes `call` on `fd` with a raw system call (no `errno`): for waiter children.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn raw_lock_call(fd: RawFd, call: &KernelCall) -> isize {
    match call {
        KernelCall::Flock { op } => raw_syscall3(libc::SYS_flock, fd as usize, *op as usize, 0),
        KernelCall::Fcntl { cmd, fl } => raw_syscall3(
            libc::SYS_fcntl,
            fd as usize,
            *cmd as usize,
            fl as *const libc::flock as usize,
        ),
    }
}

/// The body of a waiter child created with `CLONE_VM | CLONE_FILES`: it runs on its
/// own small stack, in the parent's memory, with every signal blocked, and makes only
/// raw system calls. It dies with the thread that created it (`PR_SET_PDEATHSIG`).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
extern "C" fn waiter_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the WaiterJob the parent keeps alive until it has reaped us.
    let job = unsafe { &*(arg as *const WaiterJob) };
    raw_syscall3(
        libc::SYS_prctl,
        libc::PR_SET_PDEATHSIG as usize,
        libc::SIGKILL as usize,
        0,
    );
    if raw_syscall3(libc::SYS_getppid, 0, 0, 0) != job.parent as isize {
        return libc::ESRCH;
    }
    let r = raw_lock_call(job.fd, &job.call);
    if r == 0 {
        if let Some((fd, call)) = &job.after_grant {
            raw_lock_call(*fd, call);
        }
    }
    job.result
        .store(r as i64, std::sync::atomic::Ordering::SeqCst);
    if r < 0 { (-r) as libc::c_int } else { 0 }
}

/// Stack size of a waiter child: it makes five system calls and nothing else.
const WAITER_STACK: usize = 16 * 1024;

/// A live waiter child: its pid, a descriptor that becomes readable when it exits (a
/// pidfd, or the read end of a pipe whose only writer is the child), and the memory
/// it runs on.
pub(crate) struct Waiter {
    pub(crate) pid: libc::pid_t,
    pub(crate) exit_fd: OwnedFd,
    _stack: Vec<u128>,
}

/// Blocks every signal in the calling thread, returning the previous mask.
fn block_all_signals() -> libc::sigset_t {
    let mut all = MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises `all`; pthread_sigmask reads it and fills `old`.
    unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
        old.assume_init()
    }
}

/// Restores a mask returned by [`block_all_signals`].
fn restore_signals(old: &libc::sigset_t) {
    // SAFETY: `old` is a mask previously filled by pthread_sigmask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
}

/// Starts a waiter child that shares this process's memory and descriptor table
/// (`clone(CLONE_VM | CLONE_FILES | CLONE_PIDFD)`, no exit signal) and makes `job`'s
/// blocking call. Because the descriptor table is shared, a lock the child obtains
/// belongs to the parent (OFD and flock locks to the open file description, POSIX
/// locks to the table). Returns `EINVAL`/`ENOSYS`/`EPERM` where such a child is not
/// allowed (old kernels, seccomp, valgrind): the caller then uses [`spawn_forked_waiter`].
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn spawn_shared_waiter(job: &WaiterJob) -> Result<Waiter, Errno> {
    let mut stack = vec![0u128; WAITER_STACK / 16];
    // SAFETY: one past the end of the allocation, 16-byte aligned: the stack grows down.
    let top = unsafe { stack.as_mut_ptr().add(stack.len()) } as *mut libc::c_void;
    let mut pidfd: libc::c_int = -1;
    let old = block_all_signals();
    // SAFETY: `waiter_main` only makes raw system calls on `job`, which outlives the
    // child (the caller reaps it before dropping the job and the stack); CLONE_PIDFD
    // writes the pidfd to `pidfd`; no exit signal is requested, so the host's SIGCHLD
    // handling never sees this child.
    let pid = gate!(Clone, unsafe {
        libc::clone(
            waiter_main,
            top,
            libc::CLONE_VM | libc::CLONE_FILES | CLONE_PIDFD,
            job as *const WaiterJob as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        )
    });
    let err = errno();
    restore_signals(&old);
    if pid < 0 {
        return Err(err);
    }
    let pidfd = if pidfd >= 0 {
        // SAFETY: the kernel gave us this fresh pidfd.
        unsafe { OwnedFd::from_raw_fd(pidfd) }
    } else {
        pidfd_open(pid).inspect_err(|_| kill_and_reap(pid))?
    };
    Ok(Waiter {
        pid,
        exit_fd: pidfd,
        _stack: stack,
    })
}

/// Without inline system calls for this architecture, only the forked waiter exists.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) fn spawn_shared_waiter(_job: &WaiterJob) -> Result<Waiter, Errno> {
    Err(libc::ENOSYS)
}

thread_local! {
    /// True in the thread that forks a waiter child, during the fork: fork handlers see
    /// it in the child, which must keep the descriptors it waits on.
    static FORKING_WAITER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True, in a fork handler, when the `fork()` is the one that makes a waiter child.
pub(crate) fn forking_waiter() -> bool {
    FORKING_WAITER.with(|f| f.get())
}

/// Closes a descriptor in a child right after `fork()`, ignoring errors: one the parent
/// owns for itself, which no value in the child will use or close again.
pub(crate) fn close_inherited(fd: RawFd) {
    // SAFETY: `fd` is the child's copy of a descriptor its owner in the parent keeps;
    // the child's copies of that owner never close or use it (they check the pid).
    unsafe { libc::close(fd) };
}

/// Starts a waiter child with `fork(2)`: the fallback where a `CLONE_VM` child is
/// refused. It shares the open file descriptions, so flock and OFD locks it obtains
/// belong to the parent too; POSIX locks would be its own, so callers use this only
/// for flock and OFD. Its exit is seen through a pipe (tools that refuse the clone
/// often do not know pidfds either). Being an ordinary child, it sends SIGCHLD when it
/// exits, and a host that reaps every child may collect it (the caller copes).
pub(crate) fn spawn_forked_waiter(job: &WaiterJob) -> Result<Waiter, Errno> {
    let mut ends = [-1 as libc::c_int; 2];
    // SAFETY: pipe2 fills two descriptors into a local array.
    if gate!(Fork, unsafe {
        libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC)
    }) != 0
    {
        return Err(errno());
    }
    // SAFETY: pipe2 succeeded: both descriptors are fresh and ours.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let old = block_all_signals();
    FORKING_WAITER.with(|f| f.set(true));
    // SAFETY: the child makes only async-signal-safe calls (the lock call, _exit).
    let pid = gate!(Fork, unsafe { libc::fork() });
    if pid == 0 {
        // The child ends by SIGKILL whatever the call's result: tools such as valgrind
        // run the C library's cleanup (flushing the parent's copied stdio buffers) even
        // on _exit. The parent learns the result by trying again without blocking.
        // SAFETY: prctl and getppid take integers; then the lock call on the inherited
        // descriptor, then a signal to itself.
        unsafe {
            // Die with the thread that made it (it waits for this child until it
            // exits): a killed host leaves no waiter behind holding its descriptors.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::getppid() != job.parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            let call = |fd: RawFd, call: KernelCall| match call {
                KernelCall::Flock { op } => libc::flock(fd, op),
                KernelCall::Fcntl { cmd, mut fl } => {
                    libc::fcntl(fd, cmd, &mut fl as *mut libc::flock)
                }
            };
            if call(job.fd, job.call) == 0 {
                if let Some((fd, then)) = job.after_grant {
                    call(fd, then);
                }
            }
            libc::kill(libc::getpid(), libc::SIGKILL);
            libc::_exit(1);
        }
    }
    let err = errno();
    FORKING_WAITER.with(|f| f.set(false));
    restore_signals(&old);
    drop(write_end);
    if pid < 0 {
        return Err(err);
    }
    Ok(Waiter {
        pid,
        exit_fd: read_end,
        _stack: Vec::new(),
    })
}

/// `kcmp(2)` type: the same open file description.
pub(crate) const KCMP_FILE: libc::c_int = 0;
/// `kcmp(2)` type: the same descriptor table.
pub(crate) const KCMP_FILES: libc::c_int = 2;

/// `kcmp(2)`: true when `pid1`'s resource `idx1` and `pid2`'s `idx2` of `kind` are the
/// same kernel object.
pub(crate) fn kcmp_same(
    pid1: libc::pid_t,
    pid2: libc::pid_t,
    kind: libc::c_int,
    idx1: RawFd,
    idx2: RawFd,
) -> Result<bool, Errno> {
    // SAFETY: kcmp takes integers only.
    let rc = gate!(Kcmp, unsafe {
        libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, idx1, idx2)
    });
    if rc < 0 { Err(errno()) } else { Ok(rc == 0) }
}

/// Reads a small text file whole (for /proc); `None` when it cannot be read.
pub(crate) fn read_small(path: &std::path::Path) -> Option<String> {
    proc_read_fault().ok()?;
    std::fs::read_to_string(path).ok()
}

/// The gate of the reads of /proc files that go through `std::fs`: the failure a test
/// injected for the next one (`fault-injection` builds), else `Ok`.
pub(crate) fn proc_read_fault() -> std::io::Result<()> {
    match injected!(ProcRead) {
        Some(e) => Err(std::io::Error::from_raw_os_error(e)),
        None => Ok(()),
    }
}

/// Registers `prepare`, `parent` and `child` fork handlers (`pthread_atfork(3)`).
pub(crate) fn at_fork(
    prepare: unsafe extern "C" fn(),
    parent: unsafe extern "C" fn(),
    child: unsafe extern "C" fn(),
) {
    // SAFETY: the handlers are plain functions that live for the whole program.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

/// Turns a descriptor just returned by a system call (or -1) into an owned one.
fn owned(fd: libc::c_int) -> Result<OwnedFd, Errno> {
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: the call returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat(2)` relative to the directory `dir`.
pub(crate) fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> Result<OwnedFd, Errno> {
    // SAFETY: `name` is NUL-terminated; openat does not keep the pointer.
    let fd = retry(|| {
        gate!(Open, unsafe {
            libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode as libc::c_uint)
        })
    })?;
    owned(fd)
}

/// `linkat(2)` of `from` to `to`, both in the directory `dir`, not following links.
pub(crate) fn linkat(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> Result<(), Errno> {
    // SAFETY: both names are NUL-terminated; linkat does not keep the pointers.
    retry(|| {
        gate!(Link, unsafe {
            libc::linkat(
                dir.as_raw_fd(),
                from.as_ptr(),
                dir.as_raw_fd(),
                to.as_ptr(),
                0,
            )
        })
    })?;
    Ok(())
}

/// `unlinkat(2)` of a file in the directory `dir`.
pub(crate) fn unlinkat(dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    // SAFETY: `name` is NUL-terminated; unlinkat does not keep the pointer.
    retry(|| {
        gate!(Unlink, unsafe {
            libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0)
        })
    })?;
    Ok(())
}

/// `fstatat(2)` of a name in the directory `dir`, not following a symbolic link.
pub(crate) fn statat(dir: BorrowedFd<'_>, name: &CStr) -> Result<libc::stat, Errno> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is NUL-terminated and `st` is writable memory of the right size.
    let rc = gate!(Stat, unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    });
    if rc != 0 {
        return Err(errno());
    }
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// `futimens(2)` setting both times to now.
pub(crate) fn touch_now(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: a null `times` means "now" for both; the descriptor is valid.
    let rc = gate!(Utime, unsafe {
        libc::futimens(fd.as_raw_fd(), std::ptr::null())
    });
    if rc != 0 {
        return Err(errno());
    }
    Ok(())
}

/// `write(2)` of the whole buffer.
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of its length.
        let n = retry(|| {
            gate!(Write, unsafe {
                libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len())
            })
        })?;
        if n == 0 {
            return Err(libc::EIO);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// `read(2)` of up to `buf.len()` bytes; returns how many.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = retry(|| {
        gate!(Read, unsafe {
            libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
        })
    })?;
    Ok(n as usize)
}

/// `pread(2)` of up to `buf.len()` bytes from the start of the file.
pub(crate) fn read_start(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = retry(|| {
        gate!(Read, unsafe {
            libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
        })
    })?;
    Ok(n as usize)
}

/// A non-blocking, close-on-exec inotify descriptor watching the directory `dir` for
/// `mask` events.
pub(crate) fn inotify_dir(dir: BorrowedFd<'_>, mask: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: inotify_init1 takes flags only.
    let ino = owned(gate!(Inotify, unsafe {
        libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC)
    }))?;
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .expect("no NUL in a number");
    // SAFETY: `path` is NUL-terminated; the kernel copies it.
    let rc = gate!(Inotify, unsafe {
        libc::inotify_add_watch(ino.as_raw_fd(), path.as_ptr(), mask)
    });
    if rc < 0 {
        return Err(errno());
    }
    Ok(ino)
}

/// Reads the pending events of a non-blocking inotify descriptor; true when one of
/// them names `name`.
pub(crate) fn inotify_names(fd: BorrowedFd<'_>, name: &[u8]) -> bool {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut buf = [0u8; 4096];
    let mut seen = false;
    while let Ok(n) = read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        let mut at = 0;
        while at + HEADER <= n {
            // The kernel writes whole events: a header, then `len` bytes of name padded
            // with NULs.
            let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().expect("4 bytes"));
            let end = (at + HEADER + len as usize).min(n);
            let raw = &buf[at + HEADER..end];
            let event_name = raw.split(|&b| b == 0).next().unwrap_or_default();
            seen |= event_name == name;
            at = end;
        }
    }
    seen
}

/// `kill(pid, 0)`: false only when no process has that pid (ESRCH).
pub(crate) fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 sends nothing; it only checks that the pid exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || errno() != libc::ESRCH
}

/// True for filesystems whose record locks are the kernel's own (no `->lock` method
/// of their own), whose blocking lock calls sleep interruptibly: a waiting thread's
/// own call there can be ended by task work ([`crate::own_wait`]). NFS, CIFS, FUSE,
/// GFS2, OCFS2, Ceph and the like forward locks to a server or a cluster, and some of
/// them sleep killable only.
pub(crate) fn local_locks(fs_type: i64) -> bool {
    const LOCAL: [i64; 20] = [
        0xEF53,      // ext2, ext3, ext4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x8584_58F6, // ramfs
        0xF2F5_2010, // f2fs
        0xCA45_1A4E, // bcachefs
        0x794C_7630, // overlayfs
        0x4D44,      // vfat, msdos
        0x2011_BAB0, // exfat
        0x7366_746E, // ntfs3
        0x3153_464A, // jfs
        0x5265_4973, // reiserfs
        0x2FC1_2FC1, // zfs
        0x7371_7368, // squashfs
        0xE0F5_E1E2, // erofs
        0x9660,      // iso9660
        0x1501_3346, // udf
        0x3434,      // nilfs2
        0x482B,      // hfsplus
    ];
    LOCAL.contains(&fs_type)
}

/// The filesystem type (`f_type` of `fstatfs(2)`).
pub(crate) fn fs_type(fd: BorrowedFd<'_>) -> Result<i64, Errno> {
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `st` is writable memory of the right size.
    let rc = gate!(Stat, unsafe {
        libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr())
    });
    if rc != 0 {
        return Err(errno());
    }
    // SAFETY: fstatfs succeeded, so it filled `st`.
    let kind = unsafe { st.assume_init() }.f_type;
    #[allow(clippy::unnecessary_cast)] // its type differs between architectures
    Ok(kind as i64)
}

#[cfg(feature = "capi")]
/// `futex(FUTEX_WAIT_PRIVATE)`: sleeps while `word` holds `expected`, until a
/// [`futex_wake`] on it or `timeout` (or a spurious wake-up: callers re-check their
/// condition).
pub(crate) fn futex_wait(word: &std::sync::atomic::AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, aligned 32-bit atomic and `ts` a live timespec for the
    // duration of the call; EAGAIN, EINTR and ETIMEDOUT are returns the caller re-checks.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &ts as *const libc::timespec,
        )
    };
}

/// `futex(FUTEX_WAKE_PRIVATE)`: wakes every thread in [`futex_wait`] on `word`.
pub(crate) fn futex_wake(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: `word` is a live, aligned 32-bit atomic; waking has no other effect.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
}

/// `futex(FUTEX_WAIT)` on a word that the kernel may wake as a *shared* futex (the
/// `CLONE_CHILD_CLEARTID` word of a waiter child, which the kernel clears and wakes
/// when the child ends): sleeps while `word` holds `expected`, until a wake-up, a
/// signal or `timeout` (`None`: none). Callers re-check their condition.
pub(crate) fn futex_wait_shared(
    word: &std::sync::atomic::AtomicU32,
    expected: u32,
    timeout: Option<Duration>,
) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned 32-bit atomic and `tsp` null or a live
    // timespec for the duration of the call; every return is re-checked by the caller.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            tsp,
        )
    };
}

/// `futex(FUTEX_WAKE)`, shared: wakes whoever sleeps in [`futex_wait_shared`] on
/// `word`. Makes no other system call and writes no `errno` (a waiter child uses it).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn futex_wake_shared(word: &std::sync::atomic::AtomicU32) {
    raw_syscall3(
        libc::SYS_futex,
        word.as_ptr() as usize,
        libc::FUTEX_WAKE as usize,
        i32::MAX as usize,
    );
}

/// `futex_waitv(2)` flag: the word is 32 bits.
const FUTEX2_SIZE_U32: u32 = 0x02;
/// `futex_waitv(2)` flag: the word is private to this memory (not shared).
const FUTEX2_PRIVATE: u32 = 128;

/// One word of a `futex_waitv(2)` call (the kernel's `struct futex_waitv`).
#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

/// Sleeps until `private` no longer holds `private_val` or `shared` no longer holds
/// `shared_val` (or a wake-up on either, or a signal): `futex_waitv(2)`, Linux 5.16,
/// as a raw call for a waiter child. `shared` is woken by the kernel as a shared futex.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn futex_wait_either(
    private: &std::sync::atomic::AtomicU32,
    private_val: u32,
    shared: &std::sync::atomic::AtomicU32,
    shared_val: u32,
) {
    let words = [
        FutexWaitv {
            val: private_val as u64,
            uaddr: private.as_ptr() as u64,
            flags: FUTEX2_SIZE_U32 | FUTEX2_PRIVATE,
            reserved: 0,
        },
        FutexWaitv {
            val: shared_val as u64,
            uaddr: shared.as_ptr() as u64,
            flags: FUTEX2_SIZE_U32,
            reserved: 0,
        },
    ];
    raw_syscall5(
        libc::SYS_futex_waitv,
        words.as_ptr() as usize,
        words.len(),
        0,
        0,
        0,
    );
}

/// True when the kernel has `futex_waitv(2)` (Linux 5.16): a call with no words fails
/// with `EINVAL` there, `ENOSYS` on older kernels.
pub(crate) fn have_futex_waitv() -> bool {
    // SAFETY: no words and no timeout: the kernel reads nothing.
    let rc = unsafe { libc::syscall(libc::SYS_futex_waitv, std::ptr::null::<u8>(), 0, 0, 0, 0) };
    rc < 0 && errno() == libc::EINVAL
}

/// `prctl(PR_GET_TID_ADDRESS)`: the calling thread's `clear_child_tid` word, which the
/// kernel sets to 0 and wakes (as a shared futex) when the thread exits *or calls
/// execve*; the C library sets it for every thread. `None` where the kernel does not
/// say (built without `CONFIG_CHECKPOINT_RESTORE`) or no word is set.
pub(crate) fn tid_address() -> Option<*mut u32> {
    const PR_GET_TID_ADDRESS: libc::c_int = 40;
    let mut addr: *mut libc::c_int = std::ptr::null_mut();
    // SAFETY: the kernel writes one pointer into `addr`.
    let rc = unsafe {
        libc::prctl(
            PR_GET_TID_ADDRESS,
            &mut addr as *mut *mut libc::c_int,
            0,
            0,
            0,
        )
    };
    if rc != 0 || addr.is_null() || (addr as usize) % 4 != 0 {
        return None;
    }
    Some(addr as *mut u32)
}

/// Starts a persistent waiter child: `clone(CLONE_VM | CLONE_FILES |
/// CLONE_CHILD_CLEARTID)` with no exit signal and every signal blocked, running `main(arg)`
/// on the stack that ends at `stack_top`; the kernel sets `*exit_word` to 0 and wakes it
/// when the child ends. Returns its pid.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn spawn_helper(
    main: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack_top: *mut libc::c_void,
    arg: *const libc::c_void,
    exit_word: &std::sync::atomic::AtomicU32,
) -> Result<libc::pid_t, Errno> {
    let old = block_all_signals();
    // SAFETY: `main` only makes raw system calls on `arg`, which the caller keeps alive
    // (and the stack unused by anyone else) until the child has ended; the kernel clears
    // `exit_word` at the child's exit; no exit signal is requested, so the host's
    // SIGCHLD handling never sees this child.
    let pid = gate!(Clone, unsafe {
        libc::clone(
            main,
            stack_top,
            libc::CLONE_VM | libc::CLONE_FILES | libc::CLONE_CHILD_CLEARTID,
            arg as *mut libc::c_void,
            std::ptr::null_mut::<libc::pid_t>(),
            std::ptr::null_mut::<libc::c_void>(),
            exit_word.as_ptr(),
        )
    });
    let err = errno();
    restore_signals(&old);
    if pid < 0 { Err(err) } else { Ok(pid) }
}

/// Without inline system calls for this architecture there is no persistent waiter.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) fn spawn_helper(
    _main: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    _stack_top: *mut libc::c_void,
    _arg: *const libc::c_void,
    _exit_word: &std::sync::atomic::AtomicU32,
) -> Result<libc::pid_t, Errno> {
    Err(libc::ENOSYS)
}

/// The CPU the calling thread runs on (`sched_getcpu(3)`, answered by the vDSO or
/// rseq without a system call on Linux); `None` when the C library cannot tell.
pub(crate) fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no argument and returns a CPU number or -1.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// Restricts process `pid` (a waiter child of this process) to `cpu` alone
/// (`sched_setaffinity(2)`). A pid of 0 or below is refused: `sched_setaffinity(0)`
/// would restrict the calling thread, which belongs to the host.
pub(crate) fn pin_to_cpu(pid: libc::pid_t, cpu: usize) -> Result<(), Errno> {
    if pid <= 0 || cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(libc::EINVAL);
    }
    // SAFETY: cpu_set_t is plain data, all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below the set's size in bits, checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: passes a pid and a pointer to a local set of the size given.
    let rc = unsafe { libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 { Ok(()) } else { Err(errno()) }
}

/// This host's name: the node name of `uname(2)` (no descriptor needed); `None` when
/// the call fails or the name is not UTF-8.
pub(crate) fn host_name() -> Option<String> {
    let mut u = MaybeUninit::<libc::utsname>::zeroed();
    // SAFETY: `u` is writable memory of the right size; uname only fills it.
    if gate!(Uname, unsafe { libc::uname(u.as_mut_ptr()) }) != 0 {
        return None;
    }
    // SAFETY: uname succeeded, so it filled the struct (zeroed before: NUL-terminated).
    let u = unsafe { u.assume_init() };
    let name: Vec<u8> = u
        .nodename
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(name).ok()
}

/// Calls `each` with the name of every entry of the directory `dir` (an `O_PATH`
/// descriptor will do: the directory is opened again for reading), with `getdents64(2)`.
pub(crate) fn for_each_name(dir: BorrowedFd<'_>, mut each: impl FnMut(&CStr)) -> Result<(), Errno> {
    let fd = openat(
        dir,
        c".",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )?;
    // u64s: the kernel lays out 8-byte-aligned records from the start of the buffer.
    let mut words = vec![0u64; 4096];
    let len = words.len() * 8;
    loop {
        // SAFETY: getdents64 writes at most `len` bytes into the buffer, which is that
        // large, and does not keep the pointer.
        let n = retry(|| {
            gate!(Read, unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    fd.as_raw_fd(),
                    words.as_mut_ptr(),
                    len,
                )
            })
        })?;
        if n <= 0 {
            return Ok(());
        }
        // SAFETY: the u64 buffer is `len` bytes long, of which the kernel filled `n`;
        // viewing initialized u64s as bytes is always valid.
        let bytes = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), n as usize) };
        // Each record: d_ino (8 bytes), d_off (8), d_reclen (2), d_type (1), the name
        // ending with a NUL, padding.
        let mut at = 0;
        while at + 19 <= bytes.len() {
            let reclen = u16::from_ne_bytes([bytes[at + 16], bytes[at + 17]]) as usize;
            if reclen == 0 || at + reclen > bytes.len() {
                break;
            }
            if let Ok(name) = CStr::from_bytes_until_nul(&bytes[at + 19..at + reclen]) {
                each(name);
            }
            at += reclen;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's `Cpus_allowed_list` (`/proc/thread-self/status`).
    fn my_cpus() -> String {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:"));
        line.expect("Cpus_allowed_list").to_string()
    }

    #[test]
    fn own_waits_are_for_filesystems_whose_record_locks_the_kernel_keeps() {
        // ext4, xfs, btrfs, tmpfs, overlayfs: the kernel's own lock lists.
        for local in [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0x794C_7630] {
            assert!(local_locks(local), "{local:#x}");
        }
        // NFS, SMB (cifs, smb2), FUSE, GFS2, OCFS2, Ceph, 9p: locks go to a server,
        // a cluster or a daemon.
        for remote in [
            0x6969,
            0xFF53_4D42,
            0xFE53_4D42,
            0x6573_5546,
            0x0116_1970,
            0x7461_636F,
            0x00C3_6400,
            0x0102_1997,
        ] {
            assert!(!local_locks(remote), "{remote:#x}");
        }
        // The file system this test runs on, as the library asks it.
        let dir = std::env::temp_dir();
        let f = std::fs::File::open(&dir).unwrap();
        let kind = fs_type(std::os::fd::AsFd::as_fd(&f)).unwrap();
        assert!(kind != 0, "{}: f_type {kind:#x}", dir.display());
    }

    #[test]
    fn pinning_refuses_pid_zero_and_leaves_the_calling_thread_where_it_may_run() {
        std::thread::spawn(|| {
            let before = my_cpus();
            let cpu = current_cpu().expect("sched_getcpu");
            assert_eq!(pin_to_cpu(0, cpu), Err(libc::EINVAL));
            assert_eq!(pin_to_cpu(-1, cpu), Err(libc::EINVAL));
            assert_eq!(pin_to_cpu(getpid(), usize::MAX), Err(libc::EINVAL));
            assert_eq!(my_cpus(), before);
        })
        .join()
        .unwrap();
    }
}

// After the macros above, which it uses.
pub(crate) mod uring;
