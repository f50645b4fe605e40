//! `UNLINK`: the lock file is deleted on release, race-free. Several processes loop on
//! open/lock/unlock of one path and count overlaps in shared memory; shared holders
//! leave the file to each other; a handle whose file was deleted locks the new one.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{ALL, Peer, Shm, TRY, TempDir, name, opts};
use unilock::{Backend, Flags, Lock, Mode, Options};

/// Turns the test binary into a looping worker: "BACKEND PATH COUNTER ROUNDS".
const LOOP_ENV: &str = "UNILOCK_TEST_UNLINK_LOOP";

fn unlink_opts(b: Backend) -> Options {
    opts(b).flags(Flags::UNLINK)
}

fn ino_of_fd(l: &Lock) -> u64 {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat on the handle's open descriptor into writable memory.
    assert_eq!(unsafe { libc::fstat(l.fd().unwrap(), st.as_mut_ptr()) }, 0);
    // SAFETY: fstat succeeded.
    unsafe { st.assume_init() }.st_ino
}

#[test]
fn peer_main() {
    if std::env::var_os(common::PEER_ENV).is_some() {
        common::peer_loop();
    }
}

/// Exclusive holders in their critical section.
const EXCLUSIVE: usize = 0;
/// Shared holders in their critical section.
const SHARED: usize = 1;
/// Times a holder found another holder it excludes in the critical section.
const OVERLAPS: usize = 2;
/// Times a holder's file was not the one at the path.
const NOT_AT_PATH: usize = 3;
const WORDS: usize = 4;

/// The worker: `ROUNDS` times, open with UNLINK, take the lock (exclusive, or in
/// "mix" mode shared every third round), count itself into the critical section (an
/// overlap is recorded when a holder it excludes is there, or its file is not the one
/// at the path), and release by unlock or by close in turn.
#[test]
fn unlink_loop_main() {
    let Some(spec) = std::env::var_os(LOOP_ENV) else {
        return;
    };
    let spec = spec.into_string().unwrap();
    let w: Vec<&str> = spec.split(' ').collect();
    let backend = common::backend_named(w[0]);
    let path = Path::new(w[1]);
    let counters = Shm::map(Path::new(w[2]), WORDS);
    let rounds: u32 = w[3].parse().unwrap();
    let mix = w[4] == "mix";
    let me = std::process::id();
    for i in 0..rounds {
        let l = Lock::open(path, &unlink_opts(backend)).unwrap();
        let shared = mix && (i + me) % 3 == 0;
        if shared {
            l.lock(Mode::Shared, 0, 0, None).unwrap();
            counters.bump(SHARED);
            if counters.get(EXCLUSIVE) != 0 {
                counters.bump(OVERLAPS);
            }
        } else {
            l.lock(Mode::Exclusive, 0, 0, None).unwrap();
            if counters.bump(EXCLUSIVE) != 0 || counters.get(SHARED) != 0 {
                counters.bump(OVERLAPS);
            }
        }
        let at_path = std::fs::metadata(path).map(|m| m.ino()).ok();
        if at_path != Some(ino_of_fd(&l)) {
            counters.bump(NOT_AT_PATH);
        }
        std::hint::spin_loop();
        let held = if shared { SHARED } else { EXCLUSIVE };
        counters.at(held).fetch_sub(1, Ordering::SeqCst);
        if i % 2 == 0 {
            l.unlock(0, 0).unwrap();
        }
        drop(l);
    }
    std::process::exit(0);
}

/// Runs `workers` looping workers on one path per backend, checks the counters, then
/// runs `check` on the path.
fn run_loop(tag: &str, mode: &str, workers: usize, rounds: u32, check: impl Fn(Backend, &Path)) {
    let dir = TempDir::new(tag);
    for b in ALL {
        let started = Instant::now();
        let path = dir.0.join(format!("lock-{}", name(b)));
        let counter = dir.0.join(format!("counter-{}", name(b)));
        let counters = Shm::create(&counter, WORDS);
        let spec = format!(
            "{} {} {} {rounds} {mode}",
            name(b),
            path.display(),
            counter.display()
        );
        let children: Vec<_> = (0..workers)
            .map(|_| {
                Command::new(std::env::current_exe().unwrap())
                    .args(["--exact", "unlink_loop_main", "--nocapture"])
                    .env(LOOP_ENV, &spec)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success(), "{b:?}: a worker failed");
        }
        assert_eq!(counters.get(EXCLUSIVE), 0, "{b:?}");
        assert_eq!(counters.get(SHARED), 0, "{b:?}");
        assert_eq!(
            counters.get(OVERLAPS),
            0,
            "{b:?}: two processes held the lock at once"
        );
        assert_eq!(
            counters.get(NOT_AT_PATH),
            0,
            "{b:?}: a holder's file was not the one at the path"
        );
        check(b, &path);
        eprintln!(
            "{b:?} {mode}: {} rounds in {:?}",
            workers as u32 * rounds,
            started.elapsed()
        );
    }
}

#[test]
fn processes_in_a_tight_unlink_loop_never_overlap_and_leave_no_file() {
    run_loop("unlink-loop", "ex", 4, 4000, |b, path| {
        assert!(!path.exists(), "{b:?}: the lock file was left");
    });
}

/// With shared holders too: two that release at once may both fail to upgrade and
/// leave the file, which is allowed; the next exclusive round deletes it.
#[test]
fn shared_and_exclusive_holders_in_an_unlink_loop_never_overlap() {
    run_loop("unlink-mix", "mix", 4, 2000, |b, path| {
        if path.exists() {
            let l = Lock::open(path, &unlink_opts(b)).unwrap();
            l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
            drop(l);
            assert!(!path.exists(), "{b:?}");
        }
    });
}

#[test]
fn exclusive_release_deletes_the_file_and_close_does_too() {
    let dir = TempDir::new("unlink-ex");
    for b in ALL {
        let path = dir.0.join(format!("f-{}", name(b)));
        let l = Lock::open(&path, &unlink_opts(b)).unwrap();
        assert!(path.exists());
        l.lock(Mode::Exclusive, 0, 0, None).unwrap();
        l.unlock(0, 0).unwrap();
        assert!(!path.exists(), "{b:?}: unlock left the file");
        l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
        assert!(path.exists(), "{b:?}: locking again recreates the file");
        l.close().unwrap();
        assert!(!path.exists(), "{b:?}: close left the file");
        // Without a lock, close leaves the file.
        let l = Lock::open(&path, &unlink_opts(b)).unwrap();
        drop(l);
        assert!(
            path.exists(),
            "{b:?}: a handle that held nothing deleted the file"
        );
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn shared_holder_leaves_the_file_to_another_shared_holder_and_deletes_it_last() {
    let dir = TempDir::new("unlink-sh");
    let mut peer = Peer::spawn();
    for b in ALL {
        let path = dir.0.join(format!("f-{}", name(b)));
        let p = path.display();
        // Another process holds it shared: our release leaves the file.
        let l = Lock::open(&path, &unlink_opts(b)).unwrap();
        l.lock(Mode::Shared, 0, 0, None).unwrap();
        assert_eq!(peer.cmd(&format!("open_unlink a {p} {}", name(b))), "ok");
        assert_eq!(peer.cmd("lock a sh 0 0 0"), "ok");
        l.unlock(0, 0).unwrap();
        assert!(path.exists(), "{b:?}: deleted under another shared holder");
        // The last shared holder can convert without waiting: it deletes the file.
        assert_eq!(peer.cmd("unlock a 0 0"), "ok");
        assert!(
            !path.exists(),
            "{b:?}: the last shared holder left the file"
        );
        assert_eq!(peer.cmd("close a"), "ok");

        // The same with two handles of this process.
        let a = Lock::open(&path, &unlink_opts(b)).unwrap();
        let c = Lock::open(&path, &unlink_opts(b)).unwrap();
        a.lock(Mode::Shared, 0, 0, None).unwrap();
        c.lock(Mode::Shared, 0, 0, None).unwrap();
        drop(a);
        assert!(
            path.exists(),
            "{b:?}: deleted under another handle's shared lock"
        );
        c.unlock(0, 0).unwrap();
        assert!(!path.exists(), "{b:?}");
        drop(c);
    }
}

#[test]
fn byte_ranges_delete_only_when_the_last_lock_goes() {
    let dir = TempDir::new("unlink-ranges");
    for b in [Backend::Ofd, Backend::Posix] {
        let path = dir.0.join(format!("f-{}", name(b)));
        let l = Lock::open(&path, &unlink_opts(b)).unwrap();
        l.lock(Mode::Exclusive, 0, 10, None).unwrap();
        l.lock(Mode::Shared, 20, 10, None).unwrap();
        l.unlock(0, 10).unwrap();
        assert!(path.exists(), "{b:?}: deleted while a range was still held");
        l.unlock(20, 10).unwrap();
        assert!(
            !path.exists(),
            "{b:?}: the last range's release left the file"
        );
    }
}

#[test]
fn a_handle_whose_file_was_deleted_locks_the_file_now_at_the_path() {
    let dir = TempDir::new("unlink-stale");
    let mut peer = Peer::spawn();
    for b in ALL {
        let path = dir.0.join(format!("f-{}", name(b)));
        let p = path.display();
        let l = Lock::open(&path, &unlink_opts(b)).unwrap();
        let old = ino_of_fd(&l);
        std::fs::remove_file(&path).unwrap();
        // Deleted: the lock call creates the file again and holds the new one.
        l.lock(Mode::Exclusive, 0, 0, None).unwrap();
        let now = std::fs::metadata(&path).unwrap().ino();
        assert_ne!(now, old, "{b:?}: the old file is still open");
        assert_eq!(ino_of_fd(&l), now, "{b:?}");
        l.unlock(0, 0).unwrap();
        assert!(!path.exists());

        // Replaced by a file another process holds: the lock call is on that file.
        let l = Lock::open(&path, &unlink_opts(b)).unwrap();
        // (`l` keeps the old file open: its inode number is not reused.)
        let old = ino_of_fd(&l);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(peer.cmd(&format!("open a {p} {}", name(b))), "ok");
        assert_eq!(peer.cmd("lock a ex 0 0 0"), "ok");
        let e = l.lock(Mode::Exclusive, 0, 0, TRY).unwrap_err();
        assert_eq!(e.errno(), libc::EAGAIN, "{b:?}: {e}");
        let e = l
            .lock(Mode::Shared, 0, 0, Some(Duration::from_millis(50)))
            .unwrap_err();
        assert_eq!(e.errno(), libc::ETIMEDOUT, "{b:?}: {e}");
        assert_eq!(peer.cmd("close a"), "ok");
        l.lock(Mode::Shared, 0, 0, TRY).unwrap();
        assert_ne!(ino_of_fd(&l), old, "{b:?}");
        assert_eq!(
            ino_of_fd(&l),
            std::fs::metadata(&path).unwrap().ino(),
            "{b:?}"
        );
        drop(l);
        assert!(!path.exists(), "{b:?}");
    }
}

#[test]
fn posix_locks_of_other_handles_on_the_old_file_survive_the_reopen() {
    let dir = TempDir::new("unlink-posix-deferred");
    let path = dir.0.join("f");
    let other = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    other.lock(Mode::Exclusive, 0, 5, None).unwrap();
    let l = Lock::open(&path, &unlink_opts(Backend::Posix)).unwrap();
    std::fs::remove_file(&path).unwrap();
    l.lock(Mode::Exclusive, 0, 0, None).unwrap();
    // The old descriptor of `l` is not closed: the process's POSIX lock on the old
    // file, which `other` holds, is still in the kernel.
    let held = other.list().unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(held[0].is_self);
    drop(l);
    other.unlock(0, 0).unwrap();
}

#[test]
fn from_fd_refuses_unlink() {
    let dir = TempDir::new("unlink-fd");
    let f = std::fs::File::open(dir.file("f")).unwrap();
    use std::os::fd::AsFd;
    let e = Lock::from_fd(f.as_fd(), &unlink_opts(Backend::Ofd)).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
}

#[cfg(feature = "capi")]
#[test]
fn the_c_api_accepts_unilock_unlink() {
    use ::unilock::capi::*;
    use std::os::unix::ffi::OsStrExt;
    let dir = TempDir::new("unlink-capi");
    for backend in [
        UNILOCK_BACKEND_FLOCK,
        UNILOCK_BACKEND_OFD,
        UNILOCK_BACKEND_POSIX,
    ] {
        let path = dir.0.join(format!("f-{backend}"));
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let mut o = unilock_options::default();
        // SAFETY: options structs are live locals.
        unsafe { unilock_options_init(&mut o) };
        o.backends = backend;
        o.flags = UNILOCK_CREATE | UNILOCK_UNLINK;
        let mut l: *mut unilock = std::ptr::null_mut();
        // SAFETY: paths are NUL-terminated, options are whole structs, out pointers are live
        // locals; handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        assert_eq!(
            unsafe { unilock_open(c.as_ptr(), &o, &mut l) },
            0,
            "{backend}"
        );
        assert!(path.exists());
        assert_eq!(unsafe { unilock_lock(l, UNILOCK_EXCLUSIVE, 0, 0, -1) }, 0);
        assert_eq!(unsafe { unilock_close(l) }, 0);
        assert!(!path.exists(), "{backend}: close left the file");
    }
    // DOTLOCK stays unsupported.
    let path = dir.0.join("dot");
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut o = unilock_options::default();
    // SAFETY: options structs are live locals.
    unsafe { unilock_options_init(&mut o) };
    o.backends = UNILOCK_BACKEND_DOTLOCK;
    o.flags = UNILOCK_CREATE | UNILOCK_UNLINK;
    let mut l: *mut unilock = std::ptr::null_mut();
    // SAFETY: paths are NUL-terminated, options are whole structs, out pointers are live
    // locals.
    assert_eq!(
        unsafe { unilock_open(c.as_ptr(), &o, &mut l) },
        -libc::EOPNOTSUPP
    );
}

/// Threads of one process, each with its own handles, in the same loop: the table's
/// waits and the re-registration of reopened handles.
#[test]
fn threads_in_an_unlink_loop_never_overlap_and_leave_no_file() {
    let dir = TempDir::new("unlink-threads");
    let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = open_fds();
    for b in ALL {
        let path = std::sync::Arc::new(dir.0.join(format!("f-{}", name(b))));
        let inside = std::sync::Arc::new(AtomicU32::new(0));
        let overlaps = std::sync::Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (path, inside, overlaps) = (path.clone(), inside.clone(), overlaps.clone());
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let l = Lock::open(&*path, &unlink_opts(b)).unwrap();
                        l.lock(Mode::Exclusive, 0, 0, None).unwrap();
                        if inside.fetch_add(1, Ordering::SeqCst) != 0
                            || std::fs::metadata(&*path).map(|m| m.ino()).ok()
                                != Some(ino_of_fd(&l))
                        {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        inside.fetch_sub(1, Ordering::SeqCst);
                        if i % 2 == 0 {
                            l.unlock(0, 0).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(overlaps.load(Ordering::SeqCst), 0, "{b:?}");
        assert!(!path.exists(), "{b:?}: the lock file was left");
    }
    // No descriptor is left behind (tests running beside this one may open some: the
    // count is compared with a margin).
    assert!(open_fds() < before + 8, "{before} -> {}", open_fds());
}

/// A FLOCK upgrade (which lets go of the shared lock while it waits) that finds its
/// file deleted and replaced, and then cannot get the new file in time: the handle
/// no longer holds anything, and says so with `ENOLCK` rather than `ETIMEDOUT` (which
/// would mean it still holds what it held).
#[test]
fn a_failed_flock_upgrade_after_the_file_was_replaced_reports_the_lost_lock() {
    let dir = TempDir::new("unlink-upgrade-lost");
    let path = dir.0.join("f");
    let o = opts(Backend::Flock).flags(Flags::UNLINK);
    let lock = Lock::open(&path, &o).unwrap();
    lock.lock(Mode::Shared, 0, 0, TRY).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"").unwrap();
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open p {} flock", path.display())), "ok");
    assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok");
    let e = lock
        .lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(100)))
        .unwrap_err();
    assert_eq!(e.errno(), libc::ENOLCK, "{e}");
    assert!(e.to_string().contains("holds nothing"), "{e}");
    // It holds nothing indeed: once the peer lets go, another process gets the file.
    assert_eq!(peer.cmd("unlock p 0 0"), "ok");
    assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok");
}
