//! Fault injection (built with the `fault-injection` feature): every kind of system
//! call the library makes is made to fail, at each of its calls in a scenario, with
//! each errno of a list, and every failure must end cleanly: the call returns an error
//! with a message (or succeeds, where the library retries or has a fallback), no lock
//! is left held, no file is left behind, no descriptor is leaked, and the handle still
//! works once the faults stop.
//!
//! The scenario, per backend: open; try-lock; query; list; unlock; a timed wait for a
//! lock another process holds (the thread's own `fcntl` call, or a waiter child, its
//! exit descriptor, the cancel eventfd, ppoll, kill and reap); a lock once it is free; then, faults off, the same
//! handle must lock and unlock, and after its close another process must get the lock.
//!
//! `io_uring_setup`, made once per waiting thread, is refused on its own: a transient
//! refusal sends one wait to a waiter child, a lasting one all later waits.
//!
//! `UNILOCK_FAULT_ERRNOS=all` runs every errno of the list for every call (the long
//! form, `make faults`); the default runs a rotating subset so that `make check`
//! stays short, still covering every call kind and every position.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use common::{Peer, TempDir};
use unilock::fault::{self, Call};
use unilock::{Backend, Flags, Lock, Mode, Options};

#[test]
fn peer_main() {
    if std::env::var_os(common::PEER_ENV).is_some() {
        common::peer_loop();
    }
}

/// The errnos every call kind is made to fail with.
const ERRNOS: [i32; 8] = [
    libc::EINTR,
    libc::EAGAIN,
    libc::ENOMEM,
    libc::EMFILE,
    libc::ENOSPC,
    libc::EIO,
    libc::ENOLCK,
    libc::EPERM,
];

/// Faults are process-wide: one test at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

fn options(b: Backend) -> Options {
    let o = Options::new().backend(b);
    if b == Backend::Dotlock {
        o
    } else {
        o.flags(Flags::CREATE)
    }
}

/// The descriptors this process has open.
fn open_fds() -> BTreeSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The names in `dir`.
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// An error the library returned under a fault: an errno and a message.
fn check_error(what: &str, e: &unilock::Error, context: &str) {
    assert!(
        e.errno() > 0,
        "{context}: {what}: an error without an errno: {e}"
    );
    assert!(
        !e.to_string().trim().is_empty(),
        "{context}: {what}: an error without a message"
    );
}

/// Runs the scenario on `path` with `peer` (which has `p` open on it), while whatever
/// faults are armed fire; returns once the handle is closed.
fn scenario(path: &Path, b: Backend, peer: &mut Peer, context: &str) {
    let lock = match Lock::open(path, &options(b)) {
        Ok(l) => l,
        Err(e) => {
            check_error("open", &e, context);
            return;
        }
    };
    let steps: [(&str, &dyn Fn() -> unilock::Result<()>); 4] = [
        ("try-lock", &|| {
            lock.lock(Mode::Exclusive, 0, 0, Some(Duration::ZERO))
        }),
        ("query", &|| lock.query(Mode::Shared, 0, 0).map(|_| ())),
        ("list", &|| lock.list().map(|_| ())),
        ("unlock", &|| lock.unlock(0, 0)),
    ];
    for (what, step) in steps {
        if let Err(e) = step() {
            check_error(what, &e, context);
        }
    }
    // The peer gets the lock unless a failed unlock above left it with this handle.
    if peer.cmd("lock p ex 0 0 0") == "ok" {
        match lock.lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(10))) {
            Ok(()) => panic!("{context}: a wait was granted while another process holds it"),
            Err(e) => check_error("timed wait", &e, context),
        }
        assert_eq!(peer.cmd("unlock p 0 0"), "ok");
    }
    if let Err(e) = lock.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(5))) {
        check_error("lock", &e, context);
    }
    // Faults off: the handle must still work.
    fault::clear();
    // (An open whose read-write attempt failed fell back to a read-only descriptor,
    // which takes shared fcntl locks only.)
    lock.lock(Mode::Exclusive, 0, 0, Some(Duration::ZERO))
        .or_else(|e| match e.errno() {
            libc::EACCES => lock.lock(Mode::Shared, 0, 0, Some(Duration::ZERO)),
            _ => Err(e),
        })
        .unwrap_or_else(|e| panic!("{context}: the handle no longer locks: {e}"));
    lock.unlock(0, 0)
        .unwrap_or_else(|e| panic!("{context}: the handle no longer unlocks: {e}"));
    if let Err(e) = lock.close() {
        panic!("{context}: close failed once the faults stopped: {e}");
    }
}

/// Counts the calls of each kind the scenario makes without faults.
fn calls_made(path: &Path, b: Backend, peer: &mut Peer) -> Vec<(Call, u64)> {
    let before: Vec<u64> = fault::ALL.iter().map(|&c| fault::count(c)).collect();
    scenario(path, b, peer, "without faults");
    fault::ALL
        .iter()
        .zip(before)
        .map(|(&c, n)| (c, fault::count(c) - n))
        .filter(|&(_, n)| n > 0)
        .collect()
}

fn matrix(b: Backend) {
    let _one = serial();
    let dir = TempDir::new(&format!("faults-{}", b.name()));
    let path = dir.0.join("f");
    if b != Backend::Dotlock {
        std::fs::write(&path, b"").unwrap();
    }
    let mut peer = Peer::spawn();
    assert_eq!(
        peer.cmd(&format!("open_bits p {} {}", path.display(), b as u32)),
        "ok"
    );
    // The first run warms up what the library sets up once (the fork handlers, the
    // waiter mechanism): the second one counts a steady-state scenario.
    calls_made(&path, b, &mut peer);
    let calls = calls_made(&path, b, &mut peer);
    let all = std::env::var("UNILOCK_FAULT_ERRNOS").is_ok_and(|v| v == "all");
    let files = names(&dir.0);
    let fds = open_fds();
    let mut runs = 0;
    for (call, n) in &calls {
        for nth in 1..=*n {
            let errnos: Vec<i32> = if all {
                ERRNOS.to_vec()
            } else {
                // Two errnos per position, rotating through the list.
                let i = (nth as usize * 2) % ERRNOS.len();
                vec![ERRNOS[i], ERRNOS[(i + 1) % ERRNOS.len()]]
            };
            for errno in errnos {
                let context = format!("{b:?}: {call:?} call {nth} of {n} fails with errno {errno}");
                fault::fail_nth(*call, nth, errno);
                scenario(&path, b, &mut peer, &context);
                fault::clear();
                runs += 1;
                assert_eq!(
                    peer.cmd("lock p ex 0 0 0"),
                    "ok",
                    "{context}: a lock is left held after the handle's close"
                );
                assert_eq!(peer.cmd("unlock p 0 0"), "ok");
                assert_eq!(names(&dir.0), files, "{context}: files left behind");
                assert_eq!(open_fds(), fds, "{context}: descriptors leaked");
            }
        }
    }
    assert!(runs > 0, "{b:?}: the scenario made no system call");
    eprintln!(
        "{b:?}: {runs} faulted runs over {} call kinds: {calls:?}",
        calls.len()
    );
}

/// One test, in a fixed order: the POSIX and OFD scenarios make their waits in the
/// waiting thread itself (io_uring); once an injected `EPERM` on `io_uring_setup` has
/// turned that off ([`io_uring_refused`]), the POSIX scenario makes its waits through
/// a `CLONE_VM` waiter child; once an injected `EPERM` on that clone has made the
/// process fall back to forked waiters (as under a seccomp filter), the FLOCK scenario
/// exercises those.
#[test]
fn every_failing_call_of_each_backend_ends_cleanly() {
    deadline_thread_refused();
    matrix(Backend::Posix);
    matrix(Backend::Ofd);
    io_uring_refused();
    for b in [Backend::Posix, Backend::Flock, Backend::Dotlock] {
        matrix(b);
    }
}

/// A timed wait for an OFD lock that another process holds, made by a new thread (a
/// thread sets up its ring at its first wait): it must end with ETIMEDOUT on time.
fn wait_in_new_thread(lock: &std::sync::Arc<Lock>, context: &str) {
    let lock = lock.clone();
    let (took, result) = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let r = lock.lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(50)));
        (start.elapsed(), r)
    })
    .join()
    .unwrap();
    assert_eq!(result.unwrap_err().errno(), libc::ETIMEDOUT, "{context}");
    assert!(
        took >= Duration::from_millis(50) && took < Duration::from_secs(2),
        "{context}: a 50 ms wait took {took:?}"
    );
}

/// The deadline thread refused (no thread can be made): a thread's second timed wait,
/// which it would serve, still ends on time, through a timeout request in the ring
/// (OFD) or a waiter child (FLOCK); once threads can be made, the next one starts it.
/// Runs before anything else in this process has started it.
fn deadline_thread_refused() {
    let _one = serial();
    let dir = TempDir::new("faults-timer");
    let timer = "unilock-timer";
    assert_eq!(common::threads_named(timer), 0, "no deadline thread yet");
    for b in [Backend::Ofd, Backend::Flock] {
        let path = dir.file(b.name());
        let lock = std::sync::Arc::new(Lock::open(&path, &options(b)).unwrap());
        let mut peer = Peer::spawn();
        assert_eq!(
            peer.cmd(&format!("open_bits p {} {}", path.display(), b as u32)),
            "ok"
        );
        assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok");
        let waits = lock.clone();
        let (injected, tried) = std::thread::spawn(move || {
            let timed = |context: &str| {
                let start = std::time::Instant::now();
                let r = waits.lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(50)));
                let took = start.elapsed();
                assert_eq!(r.unwrap_err().errno(), libc::ETIMEDOUT, "{b:?} {context}");
                assert!(
                    took >= Duration::from_millis(50) && took < Duration::from_secs(2),
                    "{b:?} {context}: a 50 ms wait took {took:?}"
                );
            };
            timed("first wait");
            let injected = fault::injected();
            let tried = fault::count(Call::Thread);
            fault::fail_nth(Call::Thread, 1, libc::EAGAIN);
            timed("second wait, no thread can be made");
            fault::clear();
            (
                fault::injected() - injected,
                fault::count(Call::Thread) - tried,
            )
        })
        .join()
        .unwrap();
        if common::own_waits_expected() {
            assert_eq!((injected, tried), (1, 1), "{b:?}: the thread was asked for");
        } else {
            assert_eq!(tried, 0, "{b:?}: no deadline thread without own waits");
        }
        assert_eq!(common::threads_named(timer), 0, "{b:?}: none was made");
        assert_eq!(peer.cmd("unlock p 0 0"), "ok");
    }
}

/// `io_uring_setup` refused at a thread's first wait: with ENOMEM (for now), that wait
/// is served by a waiter child and the next thread tries io_uring again; with EPERM
/// (for good, as under a seccomp filter), no later wait of the process tries it.
fn io_uring_refused() {
    let _one = serial();
    let dir = TempDir::new("faults-uring");
    let path = dir.file("f");
    let lock = std::sync::Arc::new(Lock::open(&path, &options(Backend::Ofd)).unwrap());
    let mut peer = Peer::spawn();
    assert_eq!(
        peer.cmd(&format!(
            "open_bits p {} {}",
            path.display(),
            Backend::Ofd as u32
        )),
        "ok"
    );
    assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok");
    if !common::own_waits_expected() {
        // io_uring is refused here: the process tried it once, at its first wait, and
        // never again; a new thread's wait is served by a waiter child.
        let before = fault::count(Call::Uring);
        wait_in_new_thread(&lock, "io_uring refused by this machine");
        assert_eq!(fault::count(Call::Uring), before, "io_uring tried again");
        assert_eq!(peer.cmd("unlock p 0 0"), "ok");
        return;
    }
    for (errno, tries_again) in [(libc::ENOMEM, true), (libc::EPERM, false)] {
        let context = format!("io_uring_setup fails with errno {errno}");
        let injected = fault::injected();
        fault::fail_nth(Call::Uring, 1, errno);
        wait_in_new_thread(&lock, &context);
        fault::clear();
        assert_eq!(
            fault::injected(),
            injected + 1,
            "{context}: the thread set up no ring"
        );
        let before = fault::count(Call::Uring);
        wait_in_new_thread(&lock, &context);
        assert_eq!(
            fault::count(Call::Uring) > before,
            tries_again,
            "{context}: whether the next thread tries io_uring again"
        );
    }
    assert_eq!(peer.cmd("unlock p 0 0"), "ok");
}

/// An injected EINTR is retried where the library retries it: the scenario's calls
/// succeed as without faults.
#[test]
fn an_interrupted_lock_call_is_retried() {
    let _one = serial();
    let dir = TempDir::new("faults-eintr");
    let path = dir.file("f");
    for b in [Backend::Flock, Backend::Ofd, Backend::Posix] {
        let lock = Lock::open(&path, &options(b)).unwrap();
        for call in [Call::Flock, Call::FcntlLock] {
            fault::fail_nth(call, 1, libc::EINTR);
        }
        lock.lock(Mode::Exclusive, 0, 0, Some(Duration::ZERO))
            .unwrap_or_else(|e| panic!("{b:?}: {e}"));
        lock.unlock(0, 0).unwrap();
        fault::clear();
    }
    assert!(fault::injected() > 0);
}
