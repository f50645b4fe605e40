//! The command's only raw system calls: running the command the way flock(1) does
//! (`fork` then `execvp`, or `execvp` alone for `--no-fork`), waiting for it, the
//! signal dispositions around that, and the signal masks, `signalfd`, `eventfd` and
//! `poll` with which `signals` keeps the lock while the command runs. Each `unsafe`
//! block is one libc call.

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

/// An errno.
pub type Errno = i32;

fn errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `strerror(errno)` as flock's `warn()` prints it ("No such file or directory").
pub fn strerror(errno: Errno) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

/// An argv for `execvp`, built before `fork` so that the child only execs.
pub struct Argv {
    strings: Vec<CString>,
    pointers: Vec<*const libc::c_char>,
}

impl Argv {
    /// `None` when an argument holds a NUL byte (impossible for arguments that came
    /// from the kernel, as ours do).
    pub fn new(args: &[OsString]) -> Option<Argv> {
        let strings: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_bytes()).ok())
            .collect::<Option<_>>()?;
        let mut pointers: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        pointers.push(std::ptr::null());
        Some(Argv { strings, pointers })
    }

    /// The program, for messages.
    pub fn program(&self) -> String {
        self.strings[0].to_string_lossy().into_owned()
    }
}

/// An environment for `execvpe`: this process's, with some variables replaced.
pub struct Envp {
    _strings: Vec<CString>,
    pointers: Vec<*const libc::c_char>,
}

impl Envp {
    /// This process's environment with each of `set` (name, value) put in place of a
    /// variable of that name.
    pub fn with(set: &[(&str, String)]) -> Envp {
        let replaced = |name: &[u8]| set.iter().any(|(n, _)| n.as_bytes() == name);
        let mut strings: Vec<CString> = std::env::vars_os()
            .filter(|(name, _)| !replaced(name.as_bytes()))
            .filter_map(|(name, value)| {
                let mut entry = name.as_bytes().to_vec();
                entry.push(b'=');
                entry.extend_from_slice(value.as_bytes());
                CString::new(entry).ok()
            })
            .collect();
        strings.extend(
            set.iter()
                .filter_map(|(name, value)| CString::new(format!("{name}={value}")).ok()),
        );
        let mut pointers: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        pointers.push(std::ptr::null());
        Envp {
            _strings: strings,
            pointers,
        }
    }
}

/// Sets `signal` to its default action (`SIGCHLD`: flock clears an inherited
/// "ignore", which would make the command's status unobtainable). `SIGPIPE`, which the
/// Rust runtime ignores in this process, is reset in the command only
/// ([`become_the_command`]).
pub fn default_action(signal: libc::c_int) {
    // SAFETY: SIG_DFL installs no handler; `signal` is a valid signal number.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}

/// What the command's process does between its creation and `execvp`: only
/// async-signal-safe calls on its own stack, in the memory of `unilock`, which is
/// suspended meanwhile.
#[repr(C)]
struct Launch {
    argv: *const *const libc::c_char,
    /// `--close`: a descriptor the command does not get; -1 for none.
    close_fd: libc::c_int,
    /// The signal mask the command starts with.
    mask: libc::sigset_t,
    /// The command's environment; null for this process's.
    envp: *const *const libc::c_char,
    /// The errno of a failed `execvp`; 0 while it has not failed.
    errno: libc::c_int,
}

/// `SIGPIPE` to its default action, the descriptor closed, the mask set, then
/// `execvp`: what the command's process does, in the process `spawn` makes or (`-F`)
/// in `unilock` itself. Returns only on failure, with the errno. Only
/// async-signal-safe calls (the process `spawn` makes borrows this one's memory).
///
/// # Safety
/// `launch.argv` is a NULL-terminated array of NUL-terminated strings.
unsafe fn become_the_command(launch: &Launch) -> Errno {
    // SAFETY: plain system calls on the caller's values; the caller vouches for argv.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if launch.close_fd >= 0 {
            libc::close(launch.close_fd);
        }
        libc::sigprocmask(libc::SIG_SETMASK, &launch.mask, std::ptr::null_mut());
        if launch.envp.is_null() {
            libc::execvp(*launch.argv, launch.argv);
        } else {
            libc::execvpe(*launch.argv, launch.argv, launch.envp);
        }
        *libc::__errno_location()
    }
}

/// The process `spawn` makes: [`become_the_command`]; on failure the errno is left in
/// the [`Launch`] and the process exits with 127.
extern "C" fn run_launch(arg: *mut libc::c_void) -> libc::c_int {
    let launch = arg.cast::<Launch>();
    // SAFETY: `arg` is the `Launch` that `spawn` keeps alive and does not touch until
    // this process has exec'd or exited (CLONE_VFORK); its argv comes from an Argv.
    unsafe {
        (*launch).errno = become_the_command(&*launch);
        libc::_exit(127)
    }
}

/// `-F`: this process becomes the command (see [`spawn`] for the arguments). Returns
/// only on failure, with the errno.
pub fn exec(argv: &Argv, close_fd: libc::c_int, mask: &SigSet) -> Errno {
    let launch = Launch {
        argv: argv.pointers.as_ptr(),
        close_fd,
        mask: mask.0,
        envp: std::ptr::null(),
        errno: 0,
    };
    // SAFETY: `pointers` is a NULL-terminated array of pointers into `strings`.
    unsafe { become_the_command(&launch) }
}

/// Why the command did not start.
pub enum SpawnError {
    /// No process could be made (the errno of `clone`).
    Clone(Errno),
    /// `execvp` failed with this errno in the process `pid`, which has exited.
    Exec(libc::pid_t, Errno),
}

/// Starts the command as `clone(CLONE_VM | CLONE_VFORK)` with `SIGCHLD` on its exit,
/// the way `posix_spawn` starts a program: the new process borrows this one's memory
/// until it execs, so nothing is copied, and no page of this process needs a
/// copy-on-write fault afterwards (what `fork` costs a process as large as this one,
/// more so while its waiter children share its memory). Unlike `posix_spawnp`, the
/// program is run by `execvp`, which runs a file without a `#!` line through
/// `/bin/sh`, as flock(1) does. `close_fd` (or -1) is closed in the command; `mask`
/// is its signal mask; `envp` its environment (`None`: this process's). Returns once
/// the command has exec'd (or failed to).
pub fn spawn(
    argv: &Argv,
    close_fd: libc::c_int,
    mask: &SigSet,
    envp: Option<&Envp>,
) -> Result<libc::pid_t, SpawnError> {
    const STACK: usize = 64 * 1024;
    let mut stack = vec![0u128; STACK / 16];
    let mut launch = Launch {
        argv: argv.pointers.as_ptr(),
        close_fd,
        mask: mask.0,
        envp: envp.map_or(std::ptr::null(), |e| e.pointers.as_ptr()),
        errno: 0,
    };
    // SAFETY: the child runs `run_launch` on `stack` (16-byte aligned, its top passed as
    // the kernel wants it on x86_64 and aarch64) with a pointer to `launch`; both, and
    // the argv and envp arrays it points to, outlive it, since with CLONE_VFORK this call returns only once the child has
    // exec'd or exited.
    let pid = unsafe {
        libc::clone(
            run_launch,
            stack.as_mut_ptr().add(stack.len()).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut launch).cast(),
        )
    };
    if pid < 0 {
        return Err(SpawnError::Clone(errno()));
    }
    // The child wrote it, if at all, before this thread resumed.
    // SAFETY: a plain read of a field of a live local.
    let failed = unsafe { std::ptr::read_volatile(&raw const launch.errno) };
    if failed != 0 {
        return Err(SpawnError::Exec(pid, failed));
    }
    Ok(pid)
}

/// How the command ended.
pub enum Status {
    Exited(i32),
    Killed(i32),
    Other,
}

/// `waitpid(2)` for `pid`, retried on `EINTR`.
pub fn wait(pid: libc::pid_t) -> Result<Status, Errno> {
    loop {
        match wait_with(pid, 0) {
            Err(libc::EINTR) | Ok(None) => {}
            Err(e) => return Err(e),
            Ok(Some(status)) => return Ok(status),
        }
    }
}

/// `waitpid(2)` for `pid` without waiting: `None` while it runs.
pub fn wait_nohang(pid: libc::pid_t) -> Result<Option<Status>, Errno> {
    match wait_with(pid, libc::WNOHANG) {
        Err(libc::EINTR) => Ok(None),
        other => other,
    }
}

/// `waitpid(pid, options)` once: `None` when it returned without a status (`WNOHANG`).
fn wait_with(pid: libc::pid_t, options: libc::c_int) -> Result<Option<Status>, Errno> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer for the call.
    let r = unsafe { libc::waitpid(pid, &mut status, options) };
    if r == -1 {
        return Err(errno());
    }
    if r != pid {
        return Ok(None);
    }
    Ok(Some(if libc::WIFEXITED(status) {
        Status::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Status::Killed(libc::WTERMSIG(status))
    } else {
        Status::Other
    }))
}

/// `_exit(2)`: ends a child whose exec failed without running the parent's exit-time
/// code (flock's `run_program` does the same).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and does not return.
    unsafe { libc::_exit(code) }
}

/// A descriptor this process inherited (the `FD` form), checked open with
/// `fcntl(F_GETFD)`; `EBADF` when it is not.
pub fn inherited_fd(fd: std::os::fd::RawFd) -> Result<std::os::fd::BorrowedFd<'static>, Errno> {
    // SAFETY: F_GETFD only reads the descriptor's flags; any integer is accepted.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(if fd < 0 { libc::EBADF } else { errno() });
    }
    // SAFETY: the descriptor is open, and nothing in this process closes a descriptor
    // it inherited: it stays open until the process exits.
    Ok(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
}

/// A set of signals (`sigset_t`).
#[derive(Clone, Copy)]
pub struct SigSet(libc::sigset_t);

impl SigSet {
    /// The set of `signals`.
    pub fn of(signals: &[libc::c_int]) -> SigSet {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set it is given.
        unsafe { libc::sigemptyset(set.as_mut_ptr()) };
        // SAFETY: initialised just above.
        let mut set = SigSet(unsafe { set.assume_init() });
        for &signal in signals {
            // SAFETY: `signal` is a valid signal number and the set is initialised.
            unsafe { libc::sigaddset(&mut set.0, signal) };
        }
        set
    }

    /// True when `signal` is in the set.
    pub fn contains(&self, signal: libc::c_int) -> bool {
        // SAFETY: the set is initialised; sigismember only reads it.
        unsafe { libc::sigismember(&self.0, signal) == 1 }
    }
}

/// Blocks `set` in the calling thread (`sigprocmask(SIG_BLOCK)`) and returns the mask
/// it had.
pub fn block(set: &SigSet) -> SigSet {
    let mut old = SigSet::of(&[]);
    // SAFETY: both pointers are to initialised sigset_t values.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set.0, &mut old.0) };
    old
}

/// Sets the calling thread's signal mask to `set` (async-signal-safe: used in the
/// child between `fork` and `exec`).
pub fn set_mask(set: &SigSet) {
    // SAFETY: `set` is an initialised sigset_t; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set.0, std::ptr::null_mut()) };
}

/// True when `signal`'s disposition is "ignore" (as a shell leaves SIGINT and SIGQUIT
/// for a background job, or nohup SIGHUP).
pub fn ignored(signal: libc::c_int) -> bool {
    let mut action = std::mem::MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: a null new action only reads the current one into `action`.
    let rc = unsafe { libc::sigaction(signal, std::ptr::null(), action.as_mut_ptr()) };
    // SAFETY: sigaction filled `action` when it returned 0.
    rc == 0 && unsafe { action.assume_init() }.sa_sigaction == libc::SIG_IGN
}

/// A signal taken from a [`SignalFd`].
#[derive(Clone, Copy, Debug)]
pub struct Caught {
    /// The signal number.
    pub signal: libc::c_int,
    /// `si_code` `SI_KERNEL`: sent by the kernel (a terminal's SIGINT or SIGQUIT goes to
    /// its whole foreground process group), not by a process with kill(2).
    pub by_kernel: bool,
}

/// A `signalfd(2)` (non-blocking, close-on-exec): the blocked signals of its set are
/// read from it instead of being delivered.
pub struct SignalFd(OwnedFd);

impl SignalFd {
    /// A signalfd for the signals of `set` (which the caller blocks).
    pub fn new(set: &SigSet) -> Result<SignalFd, Errno> {
        // SAFETY: -1 asks for a new descriptor; `set` is an initialised sigset_t.
        let fd = unsafe { libc::signalfd(-1, &set.0, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(errno());
        }
        // SAFETY: signalfd returned a fresh descriptor that nothing else owns.
        Ok(SignalFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// A pending signal of the set, without waiting; `None` when there is none.
    pub fn take(&self) -> Option<Caught> {
        let mut info = std::mem::MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, which has room for them.
        let n = unsafe { libc::read(self.0.as_raw_fd(), info.as_mut_ptr().cast(), size) };
        if n != size as isize {
            return None;
        }
        // SAFETY: the kernel wrote a whole signalfd_siginfo.
        let info = unsafe { info.assume_init() };
        Some(Caught {
            signal: info.ssi_signo as libc::c_int,
            by_kernel: info.ssi_code == libc::SI_KERNEL,
        })
    }

    /// The descriptor, for [`poll`].
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// An `eventfd(2)` that one thread sets to wake another out of [`poll`].
pub struct Event(OwnedFd);

impl Event {
    /// A new event, not set.
    pub fn new() -> Result<Event, Errno> {
        // SAFETY: eventfd takes integers only.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(errno());
        }
        // SAFETY: eventfd returned a fresh descriptor that nothing else owns.
        Ok(Event(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the event readable (for good: it is never reset).
    pub fn set(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one` to the eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// The descriptor, for [`poll`].
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// `poll(2)` for readability of `fds`, up to `timeout` (`None`: no limit); which of
/// them are readable (none after the timeout, or when interrupted).
pub fn poll<const N: usize>(fds: [BorrowedFd<'_>; N], timeout: Option<Duration>) -> [bool; N] {
    let mut polled = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    // SAFETY: `polled` is an array of N initialised pollfd structures.
    let rc = unsafe { libc::poll(polled.as_mut_ptr(), N as libc::nfds_t, ms) };
    polled.map(|p| rc > 0 && p.revents != 0)
}

/// `kill(2)`: sends `signal` to `pid` (a child not yet reaped, so the pid is its).
pub fn kill(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill takes integers only.
    unsafe { libc::kill(pid, signal) };
}

/// Ends this process by `signal`, as if it had not been caught: its default action
/// (without a core dump, for SIGQUIT: the process is marked not dumpable), then
/// delivered. Falls back to exiting with 128 + `signal`.
pub fn die_by(signal: libc::c_int) -> ! {
    default_action(signal);
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integers only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // SAFETY: raise sends the signal to this thread; it is delivered when unblocked.
    unsafe { libc::raise(signal) };
    let set = SigSet::of(&[signal]);
    // SAFETY: unblocks `signal`, whose pending instance then ends the process.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set.0, std::ptr::null_mut()) };
    exit_now(128 + signal)
}

/// `waitpid(-1, WNOHANG)` until nothing is left to reap: collects the children that
/// ended (the processes the command left behind reparent to a child subreaper).
pub fn reap_any() {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer for the call.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r <= 0 {
            return;
        }
    }
}

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`): the processes the
/// command leaves behind, orphaned, become its children instead of init's, so that
/// they can all be found (and signalled) as its descendants. False where the kernel
/// refuses.
pub fn become_subreaper() -> bool {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes integers only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 }
}

/// Every live process descended from this one (children, their children, ...), from
/// the parent pids of /proc/PID/stat; zombies are left out (nothing to signal).
pub fn descendants() -> Vec<libc::pid_t> {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let mut parents: Vec<(libc::pid_t, libc::pid_t)> = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "PID (COMM) STATE PPID ...": the command name may hold spaces and ')'.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if state != "Z" && state != "X" {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![me];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|&&(pid, ppid)| ppid == parent && pid != me)
                .map(|&(pid, _)| pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// The argument vector the C runtime gave `main`, as [`capture_argv`] saw it.
static ARGV: std::sync::atomic::AtomicPtr<*mut libc::c_char> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
static ARGC: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs before `main` (glibc calls `.init_array` functions with argc, argv and envp):
/// keeps where the arguments are, so that [`blank_secret`] can overwrite one in place.
extern "C" fn capture_argv(
    argc: libc::c_int,
    argv: *mut *mut libc::c_char,
    _envp: *mut *mut libc::c_char,
) {
    use std::sync::atomic::Ordering;
    if argc > 0 && !argv.is_null() {
        ARGC.store(argc as usize, Ordering::Relaxed);
        ARGV.store(argv, Ordering::Relaxed);
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static CAPTURE_ARGV: extern "C" fn(libc::c_int, *mut *mut libc::c_char, *mut *mut libc::c_char) =
    capture_argv;

/// Overwrites with `x` what follows the first `:` of argument `index` (0: the program),
/// in the memory that /proc/PID/cmdline, and so ps(1), shows: a password given as
/// `--etcd-user NAME:PASSWORD` is visible to other users only until this runs. Does
/// nothing where the arguments were not captured.
pub fn blank_secret(index: usize) {
    use std::sync::atomic::Ordering;
    let argv = ARGV.load(Ordering::Relaxed);
    if argv.is_null() || index >= ARGC.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: argv[index] (index < argc) is a NUL-terminated string of this process's
    // argument area, which stays mapped and writable for its whole life; the bytes
    // written are within its length and the terminating NUL is kept.
    unsafe {
        let arg = *argv.add(index);
        if arg.is_null() {
            return;
        }
        let len = libc::strlen(arg);
        let bytes = std::slice::from_raw_parts_mut(arg.cast::<u8>(), len);
        if let Some(colon) = bytes.iter().position(|&b| b == b':') {
            bytes[colon + 1..].fill(b'x');
        }
    }
}
