//! Behaviour of the Rust API with real processes and threads: ownership per handle,
//! waits, timeouts, cancellation, conversions, deadlocks, queries.

mod common;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{ALL, Peer, TRY, TempDir, name, opts};
use unilock::{Backend, Lock, Mode};

#[test]
fn peer_main() {
    if std::env::var_os(common::PEER_ENV).is_some() {
        common::peer_loop();
    }
}

/// The seed scenario: a second descriptor in the same thread blocks itself forever
/// with the raw syscall; unilock says EAGAIN on a try and EDEADLK on a wait.
#[test]
fn second_handle_in_the_same_thread_gets_eagain_then_edeadlk() {
    let dir = TempDir::new("seed");
    for b in ALL {
        let path = dir.file(&format!("seed-{}", name(b)));
        let first = Lock::open(&path, &opts(b)).unwrap();
        let second = Lock::open(&path, &opts(b)).unwrap();
        first.lock(Mode::Exclusive, 0, 0, None).unwrap();
        let e = second.lock(Mode::Exclusive, 0, 0, TRY).unwrap_err();
        assert_eq!(e.errno(), libc::EAGAIN, "{b:?}: {e}");
        let e = second.lock(Mode::Exclusive, 0, 0, None).unwrap_err();
        assert_eq!(e.errno(), libc::EDEADLK, "{b:?}: {e}");
        let e = second
            .lock(Mode::Shared, 0, 0, Some(Duration::from_secs(5)))
            .unwrap_err();
        assert_eq!(e.errno(), libc::EDEADLK, "{b:?}: {e}");
        first.unlock(0, 0).unwrap();
        second.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    }
}

/// A handle alone on its file keeps its locks outside the process table (the solo
/// path); a handle opened later on the file, a query, and the first handle's closing
/// all see them, and the first handle goes back to the solo path once alone again.
#[test]
fn a_lone_handles_locks_are_seen_by_handles_opened_later() {
    let dir = TempDir::new("solo");
    for b in ALL {
        let path = dir.file(&format!("solo-{}", name(b)));
        let first = Lock::open(&path, &opts(b)).unwrap();
        for round in 0..3 {
            // Alone: taken and converted on the solo path.
            first.lock(Mode::Shared, 0, 0, TRY).unwrap();
            first.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
            assert_eq!(first.query(Mode::Exclusive, 0, 0).unwrap(), None, "{b:?}");
            let second = Lock::open(&path, &opts(b)).unwrap();
            let e = second.lock(Mode::Shared, 0, 0, TRY).unwrap_err();
            assert_eq!(e.errno(), libc::EAGAIN, "{b:?} round {round}: {e}");
            assert!(
                e.to_string().contains("another handle of this process"),
                "{b:?} round {round}: {e}"
            );
            let e = second.lock(Mode::Shared, 0, 0, None).unwrap_err();
            assert_eq!(e.errno(), libc::EDEADLK, "{b:?} round {round}: {e}");
            let holder = second.query(Mode::Shared, 0, 0).unwrap().expect("a holder");
            assert!(holder.is_self, "{b:?}: {holder:?}");
            // Joined: the first handle's release goes through the table.
            first.unlock(0, 0).unwrap();
            second.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
            let e = first.lock(Mode::Shared, 0, 0, TRY).unwrap_err();
            assert_eq!(e.errno(), libc::EAGAIN, "{b:?} round {round}: {e}");
            second.close().unwrap();
            // Alone again: the lock the second handle held went with it.
            first.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
            first.unlock(0, 0).unwrap();
        }
    }
}

#[test]
fn raw_flock_on_two_descriptors_conflicts_in_one_process() {
    // What the seed scenario guards against: the kernel treats the two descriptors as
    // two owners, so a blocking flock on the second would never return.
    let dir = TempDir::new("rawflock");
    let path = dir.file("f");
    let a = std::fs::File::open(&path).unwrap();
    let b = std::fs::File::open(&path).unwrap();
    // SAFETY: flock on open descriptors.
    unsafe {
        assert_eq!(libc::flock(a.as_raw_fd(), libc::LOCK_EX), 0);
        assert_eq!(
            libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            -1
        );
    }
}

#[test]
fn posix_handles_of_one_process_exclude_each_other() {
    let dir = TempDir::new("posixowners");
    let path = dir.file("f");
    // The raw calls: two descriptors of one process are one owner, both "succeed".
    let fa = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let fb = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    // SAFETY: fcntl on open descriptors with a valid struct flock.
    unsafe {
        assert_eq!(libc::fcntl(fa.as_raw_fd(), libc::F_SETLK, &fl), 0);
        assert_eq!(libc::fcntl(fb.as_raw_fd(), libc::F_SETLK, &fl), 0);
    }
    drop((fa, fb));
    let a = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    let b = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    a.lock(Mode::Exclusive, 0, 10, TRY).unwrap();
    assert_eq!(
        b.lock(Mode::Shared, 5, 10, TRY).unwrap_err().errno(),
        libc::EAGAIN
    );
    b.lock(Mode::Exclusive, 10, 10, TRY).unwrap();
    a.lock(Mode::Shared, 0, 10, TRY).unwrap();
    b.lock(Mode::Shared, 0, 10, TRY).unwrap();
}

#[test]
fn closing_one_posix_handle_keeps_anothers_lock() {
    let dir = TempDir::new("posixclose");
    let path = dir.file("f");
    let holder = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    holder.lock(Mode::Exclusive, 0, 100, TRY).unwrap();
    let other = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    other.close().unwrap();
    // Any other descriptor of the file, opened and closed through the library too.
    drop(Lock::open(&path, &opts(Backend::Ofd)).unwrap());
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open p {} posix", path.display())), "ok");
    assert_eq!(
        peer.cmd("lock p ex 0 100 0"),
        format!("err {}", libc::EAGAIN)
    );
    holder.unlock(0, 0).unwrap();
    assert_eq!(peer.cmd("lock p ex 0 100 0"), "ok");
}

/// A handle closed while another handle of the process waits for a POSIX lock has its
/// descriptor's close deferred; the waiter's grant must be recorded before that close
/// can happen, or the close drops the lock the waiter was just granted.
#[test]
fn a_posix_grant_survives_a_deferred_close() {
    let dir = TempDir::new("posixgrant");
    let path = dir.file("f");
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open p {} posix", path.display())), "ok");
    assert_eq!(peer.cmd("lock p ex 0 10 0"), "ok");
    let waiter = Arc::new(Lock::open(&path, &opts(Backend::Posix)).unwrap());
    let w = waiter.clone();
    let t = thread::spawn(move || w.lock(Mode::Exclusive, 0, 10, Some(Duration::from_secs(20))));
    // Let the waiter reach its kernel wait (its pending lock defers the next close):
    // /proc/locks shows a blocked request as "->".
    let start = Instant::now();
    while !std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| l.contains("->"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no waiter blocked"
        );
        thread::sleep(Duration::from_millis(1));
    }
    let other = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    other.close().unwrap();
    assert_eq!(peer.cmd("unlock p 0 0"), "ok");
    t.join().unwrap().unwrap();
    assert_eq!(
        peer.cmd("lock p ex 0 10 0"),
        format!("err {}", libc::EAGAIN),
        "the granted lock was dropped"
    );
    waiter.unlock(0, 0).unwrap();
    assert_eq!(peer.cmd("lock p ex 0 10 0"), "ok");
}

#[test]
fn posix_unlock_changes_only_the_bytes_no_other_handle_holds() {
    let dir = TempDir::new("posixsplit");
    let path = dir.file("f");
    let a = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    let b = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    a.lock(Mode::Shared, 0, 100, TRY).unwrap();
    b.lock(Mode::Shared, 50, 100, TRY).unwrap();
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open p {} posix", path.display())), "ok");
    a.unlock(0, 0).unwrap();
    assert_eq!(peer.cmd("lock p ex 0 50 0"), "ok");
    assert_eq!(
        peer.cmd("lock p ex 50 1 0"),
        format!("err {}", libc::EAGAIN)
    );
    assert_eq!(peer.cmd("lock p sh 50 100 0"), "ok");
    b.lock(Mode::Exclusive, 200, 100, TRY).unwrap();
    b.unlock(220, 10).unwrap();
    assert_eq!(peer.cmd("lock p ex 220 10 0"), "ok");
    assert_eq!(
        peer.cmd("lock p ex 219 1 0"),
        format!("err {}", libc::EAGAIN)
    );
    assert_eq!(
        peer.cmd("lock p ex 230 1 0"),
        format!("err {}", libc::EAGAIN)
    );
}

#[test]
fn threads_wait_for_each_other_and_wake_on_release() {
    let dir = TempDir::new("threads");
    for b in ALL {
        let path = dir.file(&format!("t-{}", name(b)));
        let a = Lock::open(&path, &opts(b)).unwrap();
        a.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
        let p = path.clone();
        let (tx, rx) = mpsc::channel();
        let t = thread::spawn(move || {
            let other = Lock::open(&p, &opts(b)).unwrap();
            tx.send(()).unwrap();
            let start = Instant::now();
            other
                .lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(10)))
                .unwrap();
            start.elapsed()
        });
        rx.recv().unwrap();
        thread::sleep(Duration::from_millis(100));
        a.unlock(0, 0).unwrap();
        let waited = t.join().unwrap();
        assert!(
            waited >= Duration::from_millis(50),
            "{b:?}: did not wait ({waited:?})"
        );
        assert!(
            waited < Duration::from_secs(5),
            "{b:?}: release did not wake ({waited:?})"
        );
    }
}

#[test]
fn release_by_another_process_wakes_a_waiter() {
    let dir = TempDir::new("wake");
    for b in ALL {
        let path = dir.file(&format!("w-{}", name(b)));
        let mut peer = Peer::spawn();
        assert_eq!(
            peer.cmd(&format!("open p {} {}", path.display(), name(b))),
            "ok"
        );
        assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok");
        let me = Lock::open(&path, &opts(b)).unwrap();
        assert_eq!(
            me.lock(Mode::Exclusive, 0, 0, TRY).unwrap_err().errno(),
            libc::EAGAIN
        );
        let t = thread::spawn(move || {
            let start = Instant::now();
            me.lock(Mode::Exclusive, 0, 0, None)
                .map(|_| (start.elapsed(), me))
        });
        thread::sleep(Duration::from_millis(100));
        assert_eq!(peer.cmd("unlock p 0 0"), "ok");
        let (waited, _me) = t.join().unwrap().unwrap();
        assert!(waited < Duration::from_secs(5), "{b:?}: {waited:?}");
        assert_eq!(peer.cmd("lock p ex 0 0 0"), format!("err {}", libc::EAGAIN));
    }
}

#[test]
fn timeout_ends_close_to_its_deadline() {
    let dir = TempDir::new("timeout");
    for b in ALL {
        let path = dir.file(&format!("to-{}", name(b)));
        let mut peer = Peer::spawn();
        assert_eq!(
            peer.cmd(&format!("open p {} {}", path.display(), name(b))),
            "ok"
        );
        assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok");
        let me = Lock::open(&path, &opts(b)).unwrap();
        let start = Instant::now();
        let e = me
            .lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(200)))
            .unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.errno(), libc::ETIMEDOUT, "{b:?}: {e}");
        assert!(
            took >= Duration::from_millis(200),
            "{b:?}: ended early ({took:?})"
        );
        // Generous: the machines are shared; the benchmark measures the real overshoot.
        assert!(
            took < Duration::from_millis(400),
            "{b:?}: overshoot ({took:?})"
        );
    }
}

/// CPU time of the calling thread: other tests run in parallel in this process, so the
/// process's total says nothing about one wait.
fn cpu_time() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills a local struct.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[test]
fn a_waiter_sleeps_instead_of_polling() {
    let dir = TempDir::new("nopoll");
    let path = dir.file("f");
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open p {} ofd", path.display())), "ok");
    assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok");
    let me = Lock::open(&path, &opts(Backend::Ofd)).unwrap();
    let before = cpu_time();
    let e = me
        .lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(500)))
        .unwrap_err();
    let used = cpu_time() - before;
    assert_eq!(e.errno(), libc::ETIMEDOUT);
    // A 1 ms polling loop would burn far more than this over 500 ms.
    assert!(
        used < Duration::from_millis(40),
        "waiting used {used:?} of CPU"
    );
}

#[test]
fn cancel_from_another_thread_ends_the_wait() {
    let dir = TempDir::new("cancel");
    for b in ALL {
        let path = dir.file(&format!("c-{}", name(b)));
        let mut peer = Peer::spawn();
        assert_eq!(
            peer.cmd(&format!("open p {} {}", path.display(), name(b))),
            "ok"
        );
        assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok");
        let me = Arc::new(Lock::open(&path, &opts(b)).unwrap());
        let waiter = me.clone();
        let t = thread::spawn(move || {
            let start = Instant::now();
            (waiter.lock(Mode::Exclusive, 0, 0, None), start.elapsed())
        });
        thread::sleep(Duration::from_millis(100));
        assert!(me.cancel(), "{b:?}: no lock call in progress");
        let (result, took) = t.join().unwrap();
        assert_eq!(result.unwrap_err().errno(), libc::ECANCELED, "{b:?}");
        assert!(took < Duration::from_secs(3), "{b:?}: {took:?}");
        // The next call is not affected by the cancel.
        assert_eq!(peer.cmd("unlock p 0 0"), "ok");
        me.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(5)))
            .unwrap();
    }
}

#[test]
fn cancel_of_an_in_process_wait_ends_it() {
    let dir = TempDir::new("cancelhere");
    let path = dir.file("f");
    let holder = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    holder.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    let me = Arc::new(Lock::open(&path, &opts(Backend::Posix)).unwrap());
    let waiter = me.clone();
    let t = thread::spawn(move || waiter.lock(Mode::Exclusive, 0, 0, None));
    thread::sleep(Duration::from_millis(50));
    assert!(me.cancel());
    assert_eq!(t.join().unwrap().unwrap_err().errno(), libc::ECANCELED);
}

#[test]
fn cancel_with_no_call_in_progress_is_not_remembered() {
    let dir = TempDir::new("stale");
    let path = dir.file("f");
    let me = Lock::open(&path, &opts(Backend::Ofd)).unwrap();
    assert!(!me.cancel());
    me.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(1)))
        .unwrap();
    assert!(!me.cancel());
    me.unlock(0, 0).unwrap();
    me.lock(Mode::Exclusive, 0, 0, None).unwrap();
}

/// A watcher that cancels as soon as it can (repeating while no call is in progress)
/// always ends the wait, whenever it lands: before the call sleeps or during it.
#[test]
fn cancel_racing_the_start_of_a_wait_is_never_lost() {
    let dir = TempDir::new("race");
    let path = dir.file("f");
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open p {} ofd", path.display())), "ok");
    assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok");
    let me = Arc::new(Lock::open(&path, &opts(Backend::Ofd)).unwrap());
    for round in 0..200 {
        let waiter = me.clone();
        let (tx, rx) = mpsc::channel();
        let t = thread::spawn(move || tx.send(waiter.lock(Mode::Exclusive, 0, 0, None)).unwrap());
        // Spin from the moment the thread exists: lands anywhere in the call.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !me.cancel() {
            assert!(
                Instant::now() < deadline,
                "round {round}: lock call never started"
            );
            thread::yield_now();
        }
        let r = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("cancel was lost");
        assert_eq!(r.unwrap_err().errno(), libc::ECANCELED, "round {round}");
        t.join().unwrap();
    }
}

#[test]
fn concurrent_calls_on_one_handle_get_ebusy() {
    let dir = TempDir::new("busy");
    let path = dir.file("f");
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open p {} flock", path.display())), "ok");
    assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok");
    let me = Arc::new(Lock::open(&path, &opts(Backend::Flock)).unwrap());
    let waiter = me.clone();
    let t = thread::spawn(move || waiter.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(5))));
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        me.lock(Mode::Shared, 0, 0, TRY).unwrap_err().errno(),
        libc::EBUSY
    );
    assert_eq!(me.unlock(0, 0).unwrap_err().errno(), libc::EBUSY);
    assert!(me.cancel());
    assert_eq!(t.join().unwrap().unwrap_err().errno(), libc::ECANCELED);
}

#[test]
fn a_cycle_of_waiting_threads_is_a_deadlock() {
    let dir = TempDir::new("cycle");
    for b in [Backend::Ofd, Backend::Posix] {
        let path = dir.file(&format!("cy-{}", name(b)));
        let p = path.clone();
        let (held_tx, held_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        // Thread T1 holds byte 0 and then waits for byte 1.
        let t1 = thread::spawn(move || {
            let a = Lock::open(&p, &opts(b)).unwrap();
            let want = Lock::open(&p, &opts(b)).unwrap();
            a.lock(Mode::Exclusive, 0, 1, TRY).unwrap();
            held_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            let r = want.lock(Mode::Exclusive, 1, 1, Some(Duration::from_secs(10)));
            drop(a);
            r
        });
        held_rx.recv().unwrap();
        let mine = Lock::open(&path, &opts(b)).unwrap();
        let want = Lock::open(&path, &opts(b)).unwrap();
        mine.lock(Mode::Exclusive, 1, 1, TRY).unwrap();
        go_tx.send(()).unwrap();
        thread::sleep(Duration::from_millis(150));
        let e = want
            .lock(Mode::Exclusive, 0, 1, Some(Duration::from_secs(10)))
            .unwrap_err();
        assert_eq!(e.errno(), libc::EDEADLK, "{b:?}: {e}");
        mine.unlock(0, 0).unwrap();
        t1.join().unwrap().unwrap();
    }
}

#[test]
fn posix_passes_the_kernels_deadlock_between_processes() {
    let dir = TempDir::new("kdeadlk");
    let path = dir.file("f");
    let me = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    me.lock(Mode::Exclusive, 0, 1, TRY).unwrap();
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open p {} posix", path.display())), "ok");
    assert_eq!(peer.cmd("lock p ex 1 1 0"), "ok");
    peer.send("lock p ex 0 1 10000");
    thread::sleep(Duration::from_millis(200));
    let e = me
        .lock(Mode::Exclusive, 1, 1, Some(Duration::from_secs(10)))
        .unwrap_err();
    assert_eq!(e.errno(), libc::EDEADLK, "{e}");
    me.unlock(0, 0).unwrap();
    assert_eq!(peer.recv(), "ok");
}

#[test]
fn failed_flock_upgrade_keeps_the_shared_lock() {
    let dir = TempDir::new("upgrade");
    let path = dir.file("f");
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open p {} flock", path.display())), "ok");
    assert_eq!(peer.cmd("lock p sh 0 0 0"), "ok");
    let me = Lock::open(&path, &opts(Backend::Flock)).unwrap();
    me.lock(Mode::Shared, 0, 0, TRY).unwrap();
    assert_eq!(
        me.lock(Mode::Exclusive, 0, 0, TRY).unwrap_err().errno(),
        libc::EAGAIN
    );
    let e = me
        .lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(100)))
        .unwrap_err();
    assert_eq!(e.errno(), libc::ETIMEDOUT);
    // Still shared: the peer cannot upgrade while we hold it.
    assert_eq!(peer.cmd("lock p ex 0 0 0"), format!("err {}", libc::EAGAIN));
    assert_eq!(peer.cmd("unlock p 0 0"), "ok");
    assert_eq!(peer.cmd("lock p ex 0 0 0"), format!("err {}", libc::EAGAIN));
    me.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
}

#[test]
fn fcntl_upgrade_is_atomic_and_downgrade_keeps_the_range() {
    let dir = TempDir::new("convert");
    for b in [Backend::Ofd, Backend::Posix] {
        let path = dir.file(&format!("cv-{}", name(b)));
        let mut peer = Peer::spawn();
        assert_eq!(
            peer.cmd(&format!("open p {} {}", path.display(), name(b))),
            "ok"
        );
        assert_eq!(peer.cmd("lock p sh 0 10 0"), "ok");
        let me = Lock::open(&path, &opts(b)).unwrap();
        me.lock(Mode::Shared, 0, 100, TRY).unwrap();
        let e = me
            .lock(Mode::Exclusive, 0, 100, Some(Duration::from_millis(50)))
            .unwrap_err();
        assert_eq!(e.errno(), libc::ETIMEDOUT);
        // Nothing was lost: bytes 10..100 are still ours (shared).
        assert_eq!(
            peer.cmd("lock p ex 50 1 0"),
            format!("err {}", libc::EAGAIN)
        );
        me.lock(Mode::Exclusive, 20, 10, TRY).unwrap();
        assert_eq!(
            peer.cmd("lock p sh 20 1 0"),
            format!("err {}", libc::EAGAIN)
        );
        me.lock(Mode::Shared, 20, 10, TRY).unwrap();
        assert_eq!(peer.cmd("lock p sh 20 1 0"), "ok");
    }
}

#[test]
fn query_names_the_holder_in_another_process() {
    let dir = TempDir::new("query");
    for b in ALL {
        let path = dir.file(&format!("q-{}", name(b)));
        let mut peer = Peer::spawn();
        assert_eq!(
            peer.cmd(&format!("open p {} {}", path.display(), name(b))),
            "ok"
        );
        let (start, len) = if b == Backend::Flock { (0, 0) } else { (10, 5) };
        assert_eq!(peer.cmd(&format!("lock p ex {start} {len} 0")), "ok");
        let me = Lock::open(&path, &opts(b)).unwrap();
        let who = me.query(Mode::Shared, 0, 0).unwrap().expect("held");
        assert_eq!(who.pid, peer.pid(), "{b:?}: {who:?}");
        assert_eq!(who.backend, b);
        assert_eq!(who.mode, Mode::Exclusive);
        assert_eq!((who.start, who.len), (start, len));
        assert!(!who.is_self);
        assert!(!who.command.is_empty());
        if b != Backend::Flock {
            assert_eq!(me.query(Mode::Exclusive, 0, 10).unwrap(), None);
        }
        let list = me.list().unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].pid, peer.pid());
        assert_eq!(peer.cmd("unlock p 0 0"), "ok");
        assert_eq!(me.query(Mode::Exclusive, 0, 0).unwrap(), None);
        me.lock(Mode::Shared, 0, 0, TRY).unwrap();
        let list = me.list().unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        assert!(list[0].is_self);
        assert_eq!(list[0].pid, std::process::id() as i32);
    }
}

#[test]
fn query_reports_another_handle_of_this_process_as_self() {
    let dir = TempDir::new("queryself");
    let path = dir.file("f");
    let a = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    let b = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    a.lock(Mode::Exclusive, 0, 10, TRY).unwrap();
    let who = b.query(Mode::Shared, 5, 1).unwrap().unwrap();
    assert!(who.is_self);
    assert_eq!((who.start, who.len), (0, 10));
    assert_eq!(a.query(Mode::Exclusive, 0, 10).unwrap(), None);
}

#[test]
fn ranges_are_checked() {
    let dir = TempDir::new("ranges");
    let path = dir.file("f");
    let f = Lock::open(&path, &opts(Backend::Flock)).unwrap();
    assert_eq!(
        f.lock(Mode::Exclusive, 0, 10, TRY).unwrap_err().errno(),
        libc::EOPNOTSUPP
    );
    let o = Lock::open(&path, &opts(Backend::Ofd)).unwrap();
    assert_eq!(
        o.lock(Mode::Exclusive, 1 << 62, 0, TRY)
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    assert_eq!(
        o.lock(Mode::Exclusive, (1 << 62) - 1, 2, TRY)
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    assert_eq!(
        o.lock(Mode::Exclusive, u64::MAX, 1, TRY)
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    o.lock(Mode::Exclusive, (1 << 62) - 1, 1, TRY).unwrap();
}

#[test]
fn whole_file_lock_stops_below_the_reserved_offsets() {
    let dir = TempDir::new("reserved");
    let path = dir.file("f");
    let o = Lock::open(&path, &opts(Backend::Ofd)).unwrap();
    o.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    let raw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_start = 1 << 62;
    fl.l_len = 1;
    // SAFETY: fcntl on an open descriptor with a valid struct flock.
    assert_eq!(
        unsafe { libc::fcntl(raw.as_raw_fd(), libc::F_OFD_SETLK, &fl) },
        0
    );
    let list = o.list().unwrap();
    let mine = list.iter().find(|h| h.start == 0).unwrap();
    assert_eq!(mine.len, 0, "whole-file lock shows as len 0: {list:?}");
}

/// A lock taken by a thread that has exited is not mistaken for one held by a new
/// thread (thread ids and pthread_self values are reused): the new thread waits.
#[test]
fn a_lock_left_by_an_exited_thread_is_not_the_new_threads_own() {
    let dir = TempDir::new("exitedthread");
    for b in ALL {
        let path = dir.file(&format!("x-{}", name(b)));
        let holder = Arc::new(Lock::open(&path, &opts(b)).unwrap());
        let h = holder.clone();
        thread::spawn(move || h.lock(Mode::Exclusive, 0, 0, TRY).unwrap())
            .join()
            .unwrap();
        for _ in 0..20 {
            let p = path.clone();
            let e = thread::spawn(move || {
                let other = Lock::open(&p, &opts(b)).unwrap();
                other
                    .lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(1)))
                    .unwrap_err()
            })
            .join()
            .unwrap();
            assert_eq!(e.errno(), libc::ETIMEDOUT, "{b:?}: {e}");
        }
    }
}

#[test]
fn an_empty_path_is_enoent_in_every_backend() {
    for b in ALL.into_iter().chain([Backend::Dotlock]) {
        let e = Lock::open("", &opts(b)).unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT, "{}: {e}", name(b));
        assert_eq!(e.message(), "the path is empty (no such file or directory)");
    }
}
