//! SPEC "fork and exec": after fork(), OFD and FLOCK locks are shared with the child —
//! closing the handle in either process keeps the other's lock, an unlock in either
//! releases it for both — and POSIX locks are not inherited: a POSIX handle used in the
//! child fails with ENOLCK.
//!
//! The tests fork this multi-threaded test binary, so they run one at a time (a child
//! inherits every descriptor of the process, and a fork changes how every handle held
//! at that moment closes), and the child does minimal work: library calls, raw pipe
//! I/O, then `_exit` with a code the parent checks. Every wait has a deadline.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Peer, TRY, TempDir, err, name, opts};
use unilock::{Backend, Lock, Mode};

/// How long the parent waits for a child before failing the test.
const PATIENCE: Duration = Duration::from_secs(10);

/// The child's exit code for a call that succeeded where it must fail.
const UNEXPECTED_SUCCESS: i32 = 250;
/// The child's exit code for a pipe that closed or said something unexpected.
const PROTOCOL: i32 = 251;

#[test]
fn peer_main() {
    if std::env::var_os(common::PEER_ENV).is_some() {
        common::peer_loop();
    }
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pipe: (read end, write end), close-on-exec.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors that we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors from pipe2.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn send(fd: &OwnedFd, byte: u8) {
    // SAFETY: write of one byte from a local to an open descriptor.
    let n = unsafe { libc::write(fd.as_raw_fd(), (&byte as *const u8).cast(), 1) };
    assert_eq!(n, 1);
}

/// The child's blocking read of one byte; None when the pipe closed.
fn child_recv(fd: &OwnedFd) -> Option<u8> {
    let mut byte = 0u8;
    loop {
        // SAFETY: read of one byte into a local from an open descriptor.
        let n = unsafe { libc::read(fd.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            return Some(byte);
        }
        if n == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
}

/// The parent's read of one byte, failing the test after [`PATIENCE`].
fn recv(fd: &OwnedFd) -> u8 {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own.
    let n = unsafe { libc::poll(&mut p, 1, PATIENCE.as_millis() as libc::c_int) };
    assert_eq!(n, 1, "the child did not answer in time");
    let mut byte = 0u8;
    // SAFETY: read of one byte into a local from an open descriptor.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
    assert_eq!(n, 1, "the child closed the pipe without answering");
    byte
}

fn fork() -> libc::pid_t {
    // SAFETY: the child only runs `in_child`: library calls, raw I/O and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    pid
}

/// Runs the child's work and leaves with its code, running no destructor, no atexit
/// handler and no test harness code of the parent.
fn in_child(work: impl FnOnce() -> i32) -> ! {
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or(252);
    // SAFETY: _exit ends the child at once.
    unsafe { libc::_exit(code) }
}

/// 0 for Ok, the errno otherwise: the exit code of a child step that must succeed.
fn code(r: unilock::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.errno(),
    }
}

/// 0 when `r` failed with `errno`, else a code that says what happened instead.
fn expect_err(r: unilock::Result<()>, errno: i32) -> i32 {
    match r {
        Ok(()) => UNEXPECTED_SUCCESS,
        Err(e) if e.errno() == errno => 0,
        Err(e) => e.errno(),
    }
}

/// The child's exit code, failing the test if it does not exit within [`PATIENCE`].
fn wait_exit(pid: libc::pid_t) -> i32 {
    let until = Instant::now() + PATIENCE;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid: {}", std::io::Error::last_os_error());
        if r == pid {
            assert!(
                libc::WIFEXITED(status),
                "child ended by signal: {status:#x}"
            );
            return libc::WEXITSTATUS(status);
        }
        if Instant::now() > until {
            // SAFETY: kill and reap our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("the child did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn peer_on(path: &Path, b: Backend) -> Peer {
    let mut peer = Peer::spawn();
    assert_eq!(
        peer.cmd(&format!("open p {} {}", path.display(), name(b))),
        "ok"
    );
    peer
}

/// A fork while another thread locks and unlocks a handle alone on its file (the solo
/// path, whose holding lives outside the process table): the child never hangs on the
/// library's state, and a handle it opens on the file is arbitrated against the
/// inherited one, whose locks the child's table knows.
#[test]
fn a_fork_during_lock_calls_of_another_thread_leaves_the_child_working() {
    let _one = serial();
    let dir = TempDir::new("fork-solo");
    for b in [Backend::Flock, Backend::Ofd] {
        let path = dir.file(&format!("solo-{}", name(b)));
        let lock = std::sync::Arc::new(Lock::open(&path, &opts(b)).unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worker = {
            let (lock, stop) = (lock.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut pairs = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // A child holds the lock for a moment now and then.
                    match lock.lock(Mode::Exclusive, 0, 0, TRY) {
                        Ok(()) => pairs += 1,
                        Err(e) => assert_eq!(e.errno(), libc::EAGAIN, "{e}"),
                    }
                    lock.unlock(0, 0).unwrap();
                }
                pairs
            })
        };
        for _ in 0..40 {
            let pid = fork();
            if pid == 0 {
                in_child(|| {
                    // The inherited handle's lock state at the fork is unknown; a new
                    // handle either gets the lock or is told who holds it.
                    let other = match Lock::open(&path, &opts(b)) {
                        Ok(l) => l,
                        Err(e) => return e.errno(),
                    };
                    match other.lock(Mode::Exclusive, 0, 0, TRY) {
                        Ok(()) => code(other.unlock(0, 0)),
                        Err(e) if e.errno() == libc::EAGAIN => 0,
                        Err(e) => e.errno(),
                    }
                });
            }
            assert_eq!(wait_exit(pid), 0, "{b:?}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(worker.join().unwrap() > 0, "{b:?}: the worker made no pair");
    }
}

/// (a) The child closes its copy of the handle and exits: the lock stays with the
/// parent.
#[test]
fn flock_and_ofd_locks_stay_with_the_parent_when_the_child_closes() {
    let _one = serial();
    let dir = TempDir::new("fork-child-closes");
    for b in [Backend::Flock, Backend::Ofd] {
        let path = dir.file(name(b));
        let mut peer = peer_on(&path, b);
        let lock = Lock::open(&path, &opts(b)).unwrap();
        lock.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
        let pid = fork();
        if pid == 0 {
            in_child(move || code(lock.close()));
        }
        assert_eq!(wait_exit(pid), 0, "{b:?}: the child's close failed");
        assert_eq!(peer.cmd("lock p sh 0 0 0"), err(libc::EAGAIN), "{b:?}");
        lock.unlock(0, 0).unwrap();
        assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok", "{b:?}");
    }
}

/// (b) The parent closes its handle: the child still holds the lock, until the child
/// unlocks it through its copy — which releases it for both.
#[test]
fn flock_and_ofd_locks_stay_with_the_child_when_the_parent_closes_until_it_unlocks() {
    let _one = serial();
    let dir = TempDir::new("fork-parent-closes");
    for b in [Backend::Flock, Backend::Ofd] {
        let path = dir.file(name(b));
        let mut peer = peer_on(&path, b);
        let lock = Lock::open(&path, &opts(b)).unwrap();
        lock.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
        let (to_child_r, to_child_w) = pipe();
        let (to_parent_r, to_parent_w) = pipe();
        let pid = fork();
        if pid == 0 {
            in_child(move || {
                if child_recv(&to_child_r) != Some(b'u') {
                    return PROTOCOL;
                }
                let rc = code(lock.unlock(0, 0));
                send(&to_parent_w, b'd');
                if child_recv(&to_child_r) != Some(b'x') {
                    return PROTOCOL;
                }
                rc
            });
        }
        drop((to_child_r, to_parent_w));
        lock.close().unwrap();
        assert_eq!(
            peer.cmd("lock p sh 0 0 0"),
            err(libc::EAGAIN),
            "{b:?}: the parent's close released the child's lock"
        );
        send(&to_child_w, b'u');
        assert_eq!(recv(&to_parent_r), b'd');
        assert_eq!(
            peer.cmd("lock p ex 0 0 0"),
            "ok",
            "{b:?}: the child's unlock did not release the lock"
        );
        send(&to_child_w, b'x');
        assert_eq!(wait_exit(pid), 0, "{b:?}: the child's unlock failed");
    }
}

/// An unlock in the parent releases the lock for the child too, while the child lives
/// and keeps its handle open.
#[test]
fn an_unlock_in_the_parent_releases_the_lock_shared_with_the_child() {
    let _one = serial();
    let dir = TempDir::new("fork-parent-unlocks");
    for b in [Backend::Flock, Backend::Ofd] {
        let path = dir.file(name(b));
        let mut peer = peer_on(&path, b);
        let lock = Lock::open(&path, &opts(b)).unwrap();
        lock.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
        let (to_child_r, to_child_w) = pipe();
        let pid = fork();
        if pid == 0 {
            in_child(move || {
                let _keep = &lock;
                match child_recv(&to_child_r) {
                    Some(b'x') => 0,
                    _ => PROTOCOL,
                }
            });
        }
        drop(to_child_r);
        lock.unlock(0, 0).unwrap();
        assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok", "{b:?}");
        send(&to_child_w, b'x');
        assert_eq!(wait_exit(pid), 0);
    }
}

/// (c) POSIX locks are the process's: a forked child's use of the parent's handle is
/// refused with ENOLCK, and its close does not touch the parent's lock.
#[test]
fn a_posix_handle_used_in_a_forked_child_gets_enolck() {
    let _one = serial();
    let dir = TempDir::new("fork-posix");
    let path = dir.file("f");
    let mut peer = peer_on(&path, Backend::Posix);
    let lock = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    lock.lock(Mode::Exclusive, 0, 10, TRY).unwrap();
    let pid = fork();
    if pid == 0 {
        in_child(move || {
            let steps = [
                expect_err(lock.lock(Mode::Shared, 20, 10, TRY), libc::ENOLCK),
                expect_err(lock.lock(Mode::Exclusive, 0, 10, TRY), libc::ENOLCK),
                expect_err(lock.unlock(0, 0), libc::ENOLCK),
                code(lock.close()),
            ];
            steps.into_iter().find(|&c| c != 0).unwrap_or(0)
        });
    }
    let rc = wait_exit(pid);
    assert_eq!(
        rc, 0,
        "the child expected ENOLCK and got {rc} ({UNEXPECTED_SUCCESS}: success)"
    );
    assert_eq!(peer.cmd("lock p sh 5 1 0"), err(libc::EAGAIN));
    assert_eq!(peer.cmd("lock p ex 10 100 0"), "ok");
    lock.unlock(0, 0).unwrap();
    assert_eq!(peer.cmd("lock p ex 0 10 0"), "ok");
}

/// A forked child that opens its own POSIX handle is a new owner: the parent's POSIX
/// locks, which the child does not have, must not stand in its way once the parent
/// released them — even while the child still has its copy of the parent's handle.
#[test]
fn a_forked_childs_own_posix_handle_is_not_blocked_by_the_parents_released_lock() {
    let _one = serial();
    let dir = TempDir::new("fork-posix-new");
    let path = dir.file("f");
    let lock = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    lock.lock(Mode::Exclusive, 0, 10, TRY).unwrap();
    let (to_child_r, to_child_w) = pipe();
    let (to_parent_r, to_parent_w) = pipe();
    let pid = fork();
    if pid == 0 {
        let child_path = path.clone();
        in_child(move || {
            let _inherited = &lock;
            let own = match Lock::open(&child_path, &opts(Backend::Posix)) {
                Ok(l) => l,
                Err(e) => return e.errno(),
            };
            // While the parent holds it, the child cannot have it.
            let held = expect_err(own.lock(Mode::Exclusive, 0, 10, TRY), libc::EAGAIN);
            send(&to_parent_w, b'h');
            if child_recv(&to_child_r) != Some(b'r') {
                return PROTOCOL;
            }
            // The parent released it: it is free for the child's own handle.
            let free = match own.lock(Mode::Exclusive, 0, 10, TRY) {
                Ok(()) => 0,
                // Refused: does the kernel agree that the bytes are held?
                Err(e) if raw_posix_try(&own, 0, 10) => KERNEL_GRANTS + e.errno(),
                Err(e) => e.errno(),
            };
            send(&to_parent_w, b'd');
            if held != 0 { held } else { free }
        });
    }
    drop((to_child_r, to_parent_w));
    assert_eq!(recv(&to_parent_r), b'h');
    lock.unlock(0, 0).unwrap();
    send(&to_child_w, b'r');
    assert_eq!(recv(&to_parent_r), b'd');
    let rc = wait_exit(pid);
    assert_eq!(
        rc,
        0,
        "the child's own POSIX handle could not lock bytes nobody holds: {}",
        if rc > KERNEL_GRANTS {
            format!(
                "errno {} from the library, while the kernel grants the lock",
                rc - KERNEL_GRANTS
            )
        } else {
            format!("code {rc}")
        }
    );
}

/// Added to a child's errno when the library refused a lock the kernel grants.
const KERNEL_GRANTS: i32 = 200;

/// A raw `F_SETLK` write lock on `len` bytes from `start` through the handle's
/// descriptor: true when the kernel grants it.
fn raw_posix_try(lock: &Lock, start: i64, len: i64) -> bool {
    // SAFETY: struct flock is plain data; all-zero is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: fcntl on a descriptor the handle owns, with a valid struct flock.
    unsafe { libc::fcntl(lock.fd().unwrap(), libc::F_SETLK, &fl) == 0 }
}

/// A forked child's own POSIX handle waiting for bytes the parent holds gets them when
/// the parent releases them, as it would from any other process.
#[test]
fn a_forked_childs_own_posix_wait_ends_when_the_parent_releases() {
    let _one = serial();
    let dir = TempDir::new("fork-posix-wait");
    let path = dir.file("f");
    let lock = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    lock.lock(Mode::Exclusive, 0, 10, TRY).unwrap();
    let (to_parent_r, to_parent_w) = pipe();
    let pid = fork();
    if pid == 0 {
        let child_path = path.clone();
        in_child(move || {
            let _inherited = &lock;
            let own = match Lock::open(&child_path, &opts(Backend::Posix)) {
                Ok(l) => l,
                Err(e) => return e.errno(),
            };
            send(&to_parent_w, b'w');
            code(own.lock(Mode::Exclusive, 0, 10, Some(Duration::from_millis(1500))))
        });
    }
    drop(to_parent_w);
    assert_eq!(recv(&to_parent_r), b'w');
    std::thread::sleep(Duration::from_millis(100));
    lock.unlock(0, 0).unwrap();
    let rc = wait_exit(pid);
    assert_eq!(
        rc, 0,
        "the child's wait did not end with the lock when the parent released it: errno {rc}"
    );
}

/// The fork exception of close is for a child that still shares the open file
/// description: once the child is gone, closing a handle releases its lock as if no
/// fork had happened — here a handle made by `from_fd`, whose description the caller's
/// own descriptor keeps open (so dropping the handle's descriptor alone does not free
/// the lock).
#[test]
fn closing_after_the_forked_child_is_gone_releases_the_lock() {
    let _one = serial();
    let dir = TempDir::new("fork-gone");
    for b in [Backend::Flock, Backend::Ofd] {
        let path = dir.file(name(b));
        let mut peer = peer_on(&path, b);
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let lock = Lock::from_fd(std::os::fd::AsFd::as_fd(&file), &opts(b)).unwrap();
        lock.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
        let pid = fork();
        if pid == 0 {
            in_child(|| 0);
        }
        assert_eq!(wait_exit(pid), 0);
        lock.close().unwrap();
        assert_eq!(
            peer.cmd("lock p ex 0 0 0"),
            "ok",
            "{b:?}: the closed handle's lock is still held, though the child is gone"
        );
        drop(file);
    }
}

/// A child's unlock of a FLOCK or OFD lock shared through fork releases it for the
/// parent too: a new handle of the parent then gets it (the parent's bookkeeping of
/// the old handle does not stand in the way), and the old handle, locking again, is
/// refused while the new one holds it.
#[test]
fn a_lock_the_child_released_can_be_taken_by_a_new_handle_of_the_parent() {
    let _one = serial();
    let dir = TempDir::new("fork-child-unlocks");
    for b in [Backend::Flock, Backend::Ofd] {
        let path = dir.file(name(b));
        let old = Lock::open(&path, &opts(b)).unwrap();
        old.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
        let pid = fork();
        if pid == 0 {
            in_child(|| code(old.unlock(0, 0)));
        }
        assert_eq!(wait_exit(pid), 0, "{b:?}: the child's unlock failed");
        let new = Lock::open(&path, &opts(b)).unwrap();
        new.lock(Mode::Exclusive, 0, 0, TRY)
            .unwrap_or_else(|e| panic!("{b:?}: {e}"));
        let mut peer = peer_on(&path, b);
        assert_eq!(peer.cmd("lock p sh 0 0 0"), err(libc::EAGAIN), "{b:?}");
        let e = old.lock(Mode::Exclusive, 0, 0, TRY).unwrap_err();
        assert_eq!(e.errno(), libc::EAGAIN, "{b:?}: {e}");
        new.unlock(0, 0).unwrap();
        old.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    }
}

/// A fork while other threads make DOTLOCK lock calls (whose per-process record is
/// cached behind a mutex) and open and close C handles (whose registry is
/// process-wide): the child's own DOTLOCK lock and C handles never hang on state that
/// the fork copied locked.
#[cfg(feature = "capi")]
#[test]
fn a_fork_during_dotlock_and_c_handle_calls_of_other_threads_leaves_the_child_working() {
    use ::unilock::capi::{unilock, unilock_close, unilock_open};
    let _one = serial();
    let dir = TempDir::new("fork-caches");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dot = ::unilock::Options::new().backend(Backend::Dotlock);
    let c_path = std::ffi::CString::new(dir.file("c").as_os_str().as_encoded_bytes()).unwrap();
    let workers: Vec<_> = (0..2)
        .map(|i| {
            let (stop, dir, dot, c_path) =
                (stop.clone(), dir.0.clone(), dot.clone(), c_path.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if i == 0 {
                        let l = Lock::open(dir.join("w.lock"), &dot).unwrap();
                        l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
                        l.unlock(0, 0).unwrap();
                    } else {
                        let mut h: *mut unilock = std::ptr::null_mut();
                        // SAFETY: paths are NUL-terminated, options are whole structs, out
                        // pointers are live locals; handles come from unilock_open (or are
                        // NULL, closed or foreign, which the library checks before reading).
                        assert_eq!(
                            unsafe { unilock_open(c_path.as_ptr(), std::ptr::null(), &mut h) },
                            0
                        );
                        assert_eq!(unsafe { unilock_close(h) }, 0);
                    }
                }
            })
        })
        .collect();
    for n in 0..100 {
        let pid = fork();
        if pid == 0 {
            let (dir, dot, c_path) = (dir.0.clone(), dot.clone(), c_path.clone());
            in_child(move || {
                let l = match Lock::open(dir.join(format!("child-{n}.lock")), &dot) {
                    Ok(l) => l,
                    Err(e) => return e.errno(),
                };
                if let Err(e) = l.lock(Mode::Exclusive, 0, 0, TRY) {
                    return e.errno();
                }
                if let Err(e) = l.unlock(0, 0) {
                    return e.errno();
                }
                let mut h: *mut unilock = std::ptr::null_mut();
                // SAFETY: paths are NUL-terminated, options are whole structs, out pointers
                // are live locals.
                let rc = unsafe { unilock_open(c_path.as_ptr(), std::ptr::null(), &mut h) };
                if rc != 0 {
                    return -rc;
                }
                // SAFETY: handles come from unilock_open (or are NULL, closed or foreign,
                // which the library checks before reading).
                -unsafe { unilock_close(h) }
            });
        }
        assert_eq!(wait_exit(pid), 0, "fork {n}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
}
