//! The lock implementations this process can run as an agent: the raw system calls,
//! unilock through its C API, Rust std `File::lock`, and the crates fd-lock and fs4.
//! Python's and liblockfile's live in `agent.py` and `lockfile_agent.c`, which speak
//! the same protocol (see `agent.rs`).

use std::ffi::{CStr, CString};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[path = "../../../benches/raw/mod.rs"]
mod raw;

use unilock::capi::{
    UNILOCK_BACKEND_DOTLOCK, UNILOCK_BACKEND_FLOCK, UNILOCK_BACKEND_OFD, UNILOCK_BACKEND_POSIX,
    UNILOCK_CREATE, UNILOCK_EXCLUSIVE, UNILOCK_FAIR, unilock_close, unilock_last_error,
    unilock_lock, unilock_open, unilock_options, unilock_options_init, unilock_strerror,
    unilock_unlock,
};

/// What an agent does with its lock: the operations every measurement is made of.
pub trait Locker {
    /// One uncontended try + release; false when either failed.
    fn pair(&mut self) -> bool;
    /// Takes the lock: `timeout_ms < 0` waits forever, 0 tries once, `> 0` gives up
    /// after that long. `Ok(true)` taken, `Ok(false)` not taken in time.
    fn lock(&mut self, timeout_ms: i64) -> Result<bool, String>;
    fn unlock(&mut self);
}

/// The kernel mechanisms, and the lock file by existence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Flock,
    Ofd,
    Posix,
    Dotlock,
}

impl Mechanism {
    pub fn from_key(key: &str) -> Option<Mechanism> {
        match key {
            "flock" => Some(Mechanism::Flock),
            "ofd" => Some(Mechanism::Ofd),
            "posix" => Some(Mechanism::Posix),
            "dotlock" => Some(Mechanism::Dotlock),
            _ => None,
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Mechanism::Flock => "flock",
            Mechanism::Ofd => "ofd",
            Mechanism::Posix => "posix",
            Mechanism::Dotlock => "dotlock",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Flock => "FLOCK",
            Mechanism::Ofd => "OFD",
            Mechanism::Posix => "POSIX",
            Mechanism::Dotlock => "DOTLOCK",
        }
    }

    /// The raw call of a kernel mechanism (a lock file has none).
    fn raw(self) -> raw::Call {
        match self {
            Mechanism::Flock => raw::Call::Flock,
            Mechanism::Ofd => raw::Call::Ofd,
            Mechanism::Posix => raw::Call::Posix,
            Mechanism::Dotlock => unreachable!("no kernel call for a lock file"),
        }
    }

    fn unilock_backend(self) -> u32 {
        match self {
            Mechanism::Flock => UNILOCK_BACKEND_FLOCK,
            Mechanism::Ofd => UNILOCK_BACKEND_OFD,
            Mechanism::Posix => UNILOCK_BACKEND_POSIX,
            Mechanism::Dotlock => UNILOCK_BACKEND_DOTLOCK,
        }
    }
}

/// Builds the locker named `kind` on `path`: `raw-MECH`, `unilock-MECH`,
/// `unilock-MECH-fair`, `std`, `fd-lock`, `fs4`. `Err` says why it cannot be had
/// (for unilock, the library's own message, such as a backend not supported yet).
pub fn make(kind: &str, path: &Path) -> Result<Box<dyn Locker>, String> {
    if let Some(m) = kind.strip_prefix("raw-") {
        let mech = Mechanism::from_key(m).ok_or_else(|| format!("unknown locker {kind}"))?;
        return Ok(if mech == Mechanism::Dotlock {
            Box::new(RawDotlock::new(path))
        } else {
            Box::new(RawKernel::new(mech, path))
        });
    }
    if let Some(rest) = kind.strip_prefix("unilock-") {
        let (m, fair) = match rest.strip_suffix("-fair") {
            Some(m) => (m, true),
            None => (rest, false),
        };
        let mech = Mechanism::from_key(m).ok_or_else(|| format!("unknown locker {kind}"))?;
        return Ok(Box::new(Unilock::open(mech, fair, path)?));
    }
    match kind {
        "std" => Ok(Box::new(StdLock(open_rw(path)))),
        "fd-lock" => Ok(Box::new(FdLock::new(open_rw(path)))),
        "fs4" => Ok(Box::new(Fs4Lock(open_rw(path)))),
        _ => Err(format!("unknown locker {kind}")),
    }
}

/// Opens (creating) `path` read-write, as the peers do.
pub fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------
// The raw system calls

/// One raw exclusive whole-file lock call; 0 or the errno.
pub fn raw_lock(mech: Mechanism, fd: i32, wait: bool) -> i32 {
    raw::lock(mech.raw(), fd, 0, 0, wait)
}

/// The raw unlock matching [`raw_lock`]; 0 or the errno.
pub fn raw_unlock(mech: Mechanism, fd: i32) -> i32 {
    raw::unlock(mech.raw(), fd, 0, 0)
}

extern "C" fn on_alarm(_: libc::c_int) {}

/// Arms `ITIMER_REAL` for `ms` with a SIGALRM handler installed without
/// `SA_RESTART`, so that a blocking lock call returns `EINTR` when it fires: how
/// flock(1) times out, the only timeout the raw calls have. `ms == 0` disarms it.
fn alarm_in(ms: i64) {
    // SAFETY: sigaction with a handler that does nothing; setitimer with a local struct.
    unsafe {
        if ms > 0 {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_alarm as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
        }
        let it = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            it_value: libc::timeval {
                tv_sec: (ms / 1000) as libc::time_t,
                tv_usec: ((ms % 1000) * 1000) as libc::suseconds_t,
            },
        };
        libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut());
    }
}

/// flock, OFD or POSIX on one descriptor kept open; timed waits by SIGALRM.
struct RawKernel {
    mech: Mechanism,
    file: File,
}

impl RawKernel {
    fn new(mech: Mechanism, path: &Path) -> RawKernel {
        RawKernel {
            mech,
            file: open_rw(path),
        }
    }
}

impl Locker for RawKernel {
    fn pair(&mut self) -> bool {
        let fd = self.file.as_raw_fd();
        raw_lock(self.mech, fd, false) == 0 && raw_unlock(self.mech, fd) == 0
    }

    fn lock(&mut self, timeout_ms: i64) -> Result<bool, String> {
        let fd = self.file.as_raw_fd();
        let rc = if timeout_ms == 0 {
            raw_lock(self.mech, fd, false)
        } else {
            if timeout_ms > 0 {
                alarm_in(timeout_ms);
            }
            let rc = raw_lock(self.mech, fd, true);
            if timeout_ms > 0 {
                alarm_in(0);
            }
            rc
        };
        match rc {
            0 => Ok(true),
            libc::EWOULDBLOCK | libc::EINTR => Ok(false),
            // fcntl's try reports a conflict as EACCES or EAGAIN.
            libc::EACCES => Ok(false),
            e => Err(format!("lock: errno {e}")),
        }
    }

    fn unlock(&mut self) {
        assert_eq!(
            raw_unlock(self.mech, self.file.as_raw_fd()),
            0,
            "raw unlock"
        );
    }
}

/// The cheapest lock file by existence: `open(O_CREAT|O_EXCL)`, the pid written,
/// `close`; released by `unlink`. No waiting: a waiter would have to poll.
/// A waiter watches the directory with inotify (`IN_DELETE`, `IN_MOVED_FROM`) and tries
/// again at each event: the least a waiter that does not poll can do.
struct RawDotlock {
    path: CString,
    /// The directory, and the lock file's name in it, for the inotify watch.
    dir: CString,
    name: Vec<u8>,
}

impl RawDotlock {
    fn new(path: &Path) -> RawDotlock {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        RawDotlock {
            path: CString::new(path.as_os_str().as_bytes()).expect("no NUL in the path"),
            dir: CString::new(dir.as_os_str().as_bytes()).expect("no NUL in the path"),
            name: path.file_name().expect("a file name").as_bytes().to_vec(),
        }
    }

    /// Waits for the lock file: a try, then a try after each inotify event naming it,
    /// until `timeout_ms` (< 0: forever) has passed.
    fn wait(&self, timeout_ms: i64) -> Result<bool, String> {
        // SAFETY: inotify_init1 takes flags; inotify_add_watch a descriptor, a
        // NUL-terminated path and a mask.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(format!("inotify_init1: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and is owned here.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: see above.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                self.dir.as_ptr(),
                libc::IN_DELETE | libc::IN_MOVED_FROM,
            )
        };
        if wd < 0 {
            return Err(format!("inotify_add_watch: {}", std::io::Error::last_os_error()));
        }
        let deadline = (timeout_ms >= 0)
            .then(|| std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms as u64));
        let mut buf = [0u8; 4096];
        loop {
            if self.try_create() {
                return Ok(true);
            }
            let wait_ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    left.as_millis().max(1) as i32
                }
            };
            let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one live pollfd.
            if unsafe { libc::poll(&mut pfd, 1, wait_ms) } <= 0 {
                continue;
            }
            // SAFETY: read into a live buffer of its length.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            // Events for other names in the directory: wait again without a try.
            let mut named = false;
            let mut at = 0usize;
            while n > 0 && at + 16 <= n as usize {
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                let name = &buf[at + 16..(at + 16 + len).min(n as usize)];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                named |= name == self.name.as_slice();
                at += 16 + len;
            }
            if !named && n > 0 {
                continue;
            }
        }
    }

    fn try_create(&self) -> bool {
        // SAFETY: open with a NUL-terminated path and a mode.
        let fd = unsafe {
            libc::open(
                self.path.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd < 0 {
            return false;
        }
        let pid = format!("{}\n", std::process::id());
        // SAFETY: write from a live buffer to the descriptor just opened; close it.
        unsafe {
            libc::write(fd, pid.as_ptr().cast(), pid.len());
            libc::close(fd);
        }
        true
    }

    fn remove(&self) -> bool {
        // SAFETY: unlink with a NUL-terminated path.
        unsafe { libc::unlink(self.path.as_ptr()) == 0 }
    }
}

impl Locker for RawDotlock {
    fn pair(&mut self) -> bool {
        self.try_create() && self.remove()
    }

    fn lock(&mut self, timeout_ms: i64) -> Result<bool, String> {
        if timeout_ms == 0 {
            Ok(self.try_create())
        } else {
            self.wait(timeout_ms)
        }
    }

    fn unlock(&mut self) {
        assert!(self.remove(), "unlink the lock file");
    }
}

// ---------------------------------------------------------------------------------
// unilock, through its C API

/// A C API return code and the thread's last error, short: `-EOPNOTSUPP: the DOTLOCK
/// backend is not supported yet`.
pub fn describe(rc: i32) -> String {
    // SAFETY: both return pointers to NUL-terminated static or thread-local strings.
    let (reason, detail) = unsafe {
        (
            CStr::from_ptr(unilock_strerror(rc)).to_string_lossy(),
            CStr::from_ptr(unilock_last_error()).to_string_lossy(),
        )
    };
    let name = match -rc {
        libc::EOPNOTSUPP => "-EOPNOTSUPP".to_string(),
        libc::EINVAL => "-EINVAL".to_string(),
        libc::EBUSY => "-EBUSY".to_string(),
        libc::EDEADLK => "-EDEADLK".to_string(),
        _ => rc.to_string(),
    };
    let suffix = format!(" ({reason})");
    let detail = detail.strip_suffix(&suffix).unwrap_or(&detail);
    format!("{name}: {detail}")
}

/// One unilock handle on the whole file, exclusive.
pub struct Unilock {
    handle: *mut unilock::capi::unilock,
}

impl Unilock {
    /// Opens a handle; `fair` adds `UNILOCK_FAIR`. A lock file (DOTLOCK) is not
    /// created by the open. `Err` carries the return code's text and the detail.
    pub fn open(mech: Mechanism, fair: bool, path: &Path) -> Result<Unilock, String> {
        let mut o = unilock_options::default();
        // SAFETY: options structs are live locals.
        unsafe { unilock_options_init(&mut o) };
        o.backends = mech.unilock_backend();
        o.flags = if mech == Mechanism::Dotlock {
            0
        } else {
            UNILOCK_CREATE
        };
        if fair {
            o.flags |= UNILOCK_FAIR;
        }
        let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in the path");
        let mut out = std::ptr::null_mut();
        // SAFETY: paths are NUL-terminated, options are whole structs, out pointers are live
        // locals.
        let rc = unsafe { unilock_open(c.as_ptr(), &o, &mut out) };
        if rc != 0 {
            return Err(format!("`unilock_open` {}", describe(rc)));
        }
        let mut l = Unilock { handle: out };
        // A backend may open and refuse only the lock: try once to find out.
        match l.lock(0) {
            Ok(true) => l.unlock(),
            Ok(false) => {}
            Err(e) => return Err(e),
        }
        Ok(l)
    }
}

impl Locker for Unilock {
    fn pair(&mut self) -> bool {
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        (unsafe { unilock_lock(self.handle, UNILOCK_EXCLUSIVE, 0, 0, 0) }) == 0
            && unsafe { unilock_unlock(self.handle, 0, 0) } == 0
    }

    fn lock(&mut self, timeout_ms: i64) -> Result<bool, String> {
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        let rc = unsafe { unilock_lock(self.handle, UNILOCK_EXCLUSIVE, 0, 0, timeout_ms) };
        match rc {
            0 => Ok(true),
            rc if rc == -libc::EAGAIN || rc == -libc::ETIMEDOUT => Ok(false),
            rc => Err(format!("`unilock_lock` {}", describe(rc))),
        }
    }

    fn unlock(&mut self) {
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        let rc = unsafe { unilock_unlock(self.handle, 0, 0) };
        assert!(rc == 0, "unilock_unlock: {}", describe(rc));
    }
}

impl Drop for Unilock {
    fn drop(&mut self) {
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        unsafe { unilock_close(self.handle) };
    }
}

// ---------------------------------------------------------------------------------
// Rust std and the crates: flock(2) underneath, no timeouts

/// `std::fs::File::lock` / `try_lock` / `unlock` (stable since Rust 1.89).
struct StdLock(File);

impl Locker for StdLock {
    fn pair(&mut self) -> bool {
        self.0.try_lock().is_ok() && self.0.unlock().is_ok()
    }

    fn lock(&mut self, timeout_ms: i64) -> Result<bool, String> {
        match timeout_ms {
            0 => Ok(self.0.try_lock().is_ok()),
            t if t < 0 => self.0.lock().map(|()| true).map_err(|e| e.to_string()),
            _ => Err("File::lock has no timeout".into()),
        }
    }

    fn unlock(&mut self) {
        self.0.unlock().expect("File::unlock");
    }
}

/// fd-lock's `RwLock<File>`: `try_write` / `write`, released when the guard drops.
struct FdLock {
    /// Leaked: one per agent process, alive as long as the process, so that a guard
    /// can be kept between the protocol's `wait` and `release`.
    lock: *mut fd_lock::RwLock<File>,
    guard: Option<fd_lock::RwLockWriteGuard<'static, File>>,
}

impl FdLock {
    fn new(file: File) -> FdLock {
        FdLock {
            lock: Box::into_raw(Box::new(fd_lock::RwLock::new(file))),
            guard: None,
        }
    }

    fn lock_ref(&mut self) -> &'static mut fd_lock::RwLock<File> {
        assert!(self.guard.is_none(), "fd-lock guard still held");
        // SAFETY: the RwLock is never freed, and the only borrow ever handed out (the
        // one a guard keeps) is gone: `guard` is None.
        unsafe { &mut *self.lock }
    }
}

impl Locker for FdLock {
    fn pair(&mut self) -> bool {
        let lock = self.lock_ref();
        match lock.try_write() {
            Ok(guard) => {
                drop(guard);
                true
            }
            Err(_) => false,
        }
    }

    fn lock(&mut self, timeout_ms: i64) -> Result<bool, String> {
        let lock = self.lock_ref();
        match timeout_ms {
            0 => match lock.try_write() {
                Ok(g) => {
                    self.guard = Some(g);
                    Ok(true)
                }
                Err(_) => Ok(false),
            },
            t if t < 0 => {
                let g = lock.write().map_err(|e| e.to_string())?;
                self.guard = Some(g);
                Ok(true)
            }
            _ => Err("fd-lock has no timeout".into()),
        }
    }

    fn unlock(&mut self) {
        assert!(self.guard.take().is_some(), "fd-lock: not held");
    }
}

/// fs4's `FileExt` (`try_lock` / `lock` / `unlock`).
struct Fs4Lock(File);

impl Locker for Fs4Lock {
    fn pair(&mut self) -> bool {
        fs4::FileExt::try_lock(&self.0).is_ok() && fs4::FileExt::unlock(&self.0).is_ok()
    }

    fn lock(&mut self, timeout_ms: i64) -> Result<bool, String> {
        match timeout_ms {
            0 => Ok(fs4::FileExt::try_lock(&self.0).is_ok()),
            t if t < 0 => fs4::FileExt::lock(&self.0)
                .map(|()| true)
                .map_err(|e| e.to_string()),
            _ => Err("fs4 has no timeout".into()),
        }
    }

    fn unlock(&mut self) {
        fs4::FileExt::unlock(&self.0).expect("fs4 unlock");
    }
}

/// A lock file created with the holder's pid (liblockfile's format, "PID\n"), for
/// the driver's DOTLOCK holder.
pub fn create_lock_file(path: &PathBuf) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    writeln!(f, "{}", std::process::id())
}
