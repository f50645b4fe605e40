//! Waits in a host that has signal handlers of its own: a SIGCHLD handler that reaps
//! any child, and a 1 ms interval timer (SIGALRM) interrupting every system call. The
//! library takes no signal, its waiter children never reach the host's SIGCHLD
//! handler, and waits, timeouts and cancels behave as without the handlers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Peer, TempDir, opts};
use unilock::{Backend, Lock, Mode};

static ALARMS: AtomicUsize = AtomicUsize::new(0);
static CHILD_SIGNALS: AtomicUsize = AtomicUsize::new(0);
static REAPED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_alarm(_: libc::c_int) {
    ALARMS.fetch_add(1, Ordering::Relaxed);
}

extern "C" fn on_child(_: libc::c_int) {
    CHILD_SIGNALS.fetch_add(1, Ordering::Relaxed);
    // A typical host reaper: whatever child has exited.
    loop {
        let mut status = 0;
        // SAFETY: waitpid is async-signal-safe.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
        REAPED.fetch_add(1, Ordering::Relaxed);
    }
}

fn install(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: installs a plain handler without SA_RESTART, so system calls see EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
}

fn interval_timer(every: Duration) {
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: every.as_micros() as libc::suseconds_t,
    };
    let it = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: setitimer with a valid struct.
    assert_eq!(
        unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) },
        0
    );
}

#[test]
fn peer_main() {
    if std::env::var_os(common::PEER_ENV).is_some() {
        common::peer_loop();
    }
}

#[test]
fn waits_work_in_a_host_with_its_own_signal_handlers() {
    if std::env::var_os(common::PEER_ENV).is_some() {
        return;
    }
    let dir = TempDir::new("signals");
    // The peers are started before the handlers, so the host's reaper cannot take them.
    let mut peers: Vec<(Backend, Peer)> = Vec::new();
    for b in [Backend::Flock, Backend::Ofd, Backend::Posix] {
        let path = dir.file(&format!("{b:?}"));
        let mut peer = Peer::spawn();
        let name = format!("{b:?}").to_lowercase();
        assert_eq!(peer.cmd(&format!("open p {} {name}", path.display())), "ok");
        assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok");
        peers.push((b, peer));
    }
    install(libc::SIGALRM, on_alarm);
    install(libc::SIGCHLD, on_child);
    interval_timer(Duration::from_millis(1));
    for (b, peer) in peers.iter_mut() {
        let path = dir.0.join(format!("{b:?}"));
        let me = Arc::new(Lock::open(&path, &opts(*b)).unwrap());
        // A timeout still ends on time despite a signal every millisecond.
        let start = Instant::now();
        let e = me
            .lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(100)))
            .unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.errno(), libc::ETIMEDOUT, "{b:?}: {e}");
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_millis(400),
            "{b:?}: {took:?}"
        );
        // A cancel still ends an untimed wait.
        let waiter = me.clone();
        let t = thread::spawn(move || waiter.lock(Mode::Exclusive, 0, 0, None));
        thread::sleep(Duration::from_millis(50));
        assert!(me.cancel());
        assert_eq!(
            t.join().unwrap().unwrap_err().errno(),
            libc::ECANCELED,
            "{b:?}"
        );
        // A release still wakes an untimed waiter.
        let waiter = me.clone();
        let t = thread::spawn(move || waiter.lock(Mode::Exclusive, 0, 0, None));
        thread::sleep(Duration::from_millis(50));
        assert_eq!(peer.cmd("unlock p 0 0"), "ok");
        t.join().unwrap().unwrap();
        assert_eq!(peer.cmd("lock p ex 0 0 0"), format!("err {}", libc::EAGAIN));
    }
    interval_timer(Duration::ZERO);
    assert!(
        ALARMS.load(Ordering::Relaxed) > 100,
        "the host's timer kept firing"
    );
    assert_eq!(
        CHILD_SIGNALS.load(Ordering::Relaxed),
        0,
        "a waiter child signalled the host"
    );
    assert_eq!(
        REAPED.load(Ordering::Relaxed),
        0,
        "the host reaped a waiter child"
    );
}
