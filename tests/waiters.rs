//! How a thread waits (README, "How waiting works").
//!
//! The persistent waiter child (flock waits, and every wait where io_uring is refused
//! or `UNILOCK_WAITER=child`): one per thread that had to wait, reused by every later
//! wait of that thread, ended when a deadline or a cancel aborts its call, killed and
//! reaped when its thread exits, gone at once when its thread replaces its program with
//! execve (so no lock outlives the program), never named as a lock's holder, and
//! without descriptors of its own.
//!
//! The thread's own wait (OFD and POSIX waits, and untimed flock waits, where io_uring
//! serves): no child, no descriptor left, and no POSIX lock of the process dropped.
//!
//! Every wait, whatever serves it: it ends on time at a deadline and at once on a
//! cancel, and leaves nothing behind that could interrupt the thread's later system
//! calls; a grant that races a deadline or a cancel is either kept or released.
//!
//! Another process (a peer: this test binary again) holds the lock; a thread of this
//! process waits for it; the test releases it and looks at the thread's children in
//! `/proc/self/task/TID/children`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{ALL, PEER_ENV, Peer, TempDir, name, opts, own_waits_expected};
use unilock::{Backend, Lock, Mode};

const SCENARIO_ENV: &str = "UNILOCK_TEST_EXEC_SCENARIO";
const WAITER: &str = "unilock-waiter";

#[test]
fn peer_main() {
    if std::env::var_os(PEER_ENV).is_some() {
        common::peer_loop();
        std::process::exit(0);
    }
}

fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments.
    unsafe { libc::gettid() }
}

/// The waiter children of thread `tid` of this process.
fn waiter_children(tid: i32) -> Vec<i32> {
    children(tid)
        .into_iter()
        .filter(|pid| command(*pid).as_deref() == Some(WAITER))
        .collect()
}

/// Every child of thread `tid` (a first wait's child keeps its thread's name).
fn children(tid: i32) -> Vec<i32> {
    let list = std::fs::read_to_string(format!("/proc/self/task/{tid}/children")).unwrap();
    list.split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

fn command(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// The state letter of `pid` (`R`, `S`, `Z`, ...), `None` once it is reaped.
fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// The backends whose waits use waiter children in this process: every one where
/// io_uring is refused, else FLOCK's timed waits.
fn child_backends() -> Vec<Backend> {
    if own_waits_expected() {
        vec![Backend::Flock]
    } else {
        ALL.to_vec()
    }
}

/// Makes the flock waits on `path` use waiter children where they would be the
/// thread's own: an OFD lock on a far byte of the file, held while the result lives.
/// A flock wait is the thread's own only on a file without `fcntl` locks, whose
/// POSIX locks its descriptor's close would drop (README, "How waiting works").
fn force_children(path: &Path, b: Backend) -> Option<std::fs::File> {
    if b != Backend::Flock || !own_waits_expected() {
        return None;
    }
    let file = std::fs::File::open(path).unwrap();
    raw_fcntl_lock(&file, libc::F_OFD_SETLK, libc::F_RDLCK, 1 << 40, 1);
    Some(file)
}

/// Takes a record lock (`cmd`, `l_type`) on `len` bytes from `start` of `file` with
/// `fcntl` itself, as a program that mixes its own locks with the library's does.
fn raw_fcntl_lock(
    file: &std::fs::File,
    cmd: libc::c_int,
    l_type: libc::c_int,
    start: i64,
    len: i64,
) {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero struct flock is valid; fcntl reads it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: a valid descriptor and struct.
    assert_eq!(unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) }, 0);
}

/// The deadline thread's name (README, "How waiting works").
const TIMER_THREAD: &str = "unilock-timer";

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The tests of this file run one at a time: they count this process's descriptors
/// and children, which the others' peers, pipes and files would change meanwhile.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// True once some process waits for a lock on `path` (a `->` line in /proc/locks).
fn someone_waits_on(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(path).unwrap().ino();
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    locks.lines().any(|l| {
        l.contains("->")
            && l.split_whitespace()
                .nth(6)
                .is_some_and(|f| f.ends_with(&format!(":{ino}")))
    })
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A peer that holds `path` exclusively in backend `b`.
fn holder(path: &Path, b: Backend) -> Peer {
    let mut peer = Peer::spawn();
    assert_eq!(
        peer.cmd(&format!("open h {} {}", path.display(), name(b))),
        "ok"
    );
    assert_eq!(peer.cmd("lock h ex 0 0 0"), "ok");
    peer
}

/// What a waiting thread reports after each wait.
struct Waited {
    result: unilock::Result<()>,
    tid: i32,
    children: Vec<i32>,
    fds: usize,
}

/// A thread that waits for `lock` each time it is told to (with that timeout).
fn waiting_thread(
    lock: Arc<Lock>,
) -> (
    mpsc::Sender<Option<Duration>>,
    mpsc::Receiver<Waited>,
    std::thread::JoinHandle<()>,
) {
    let (go, jobs) = mpsc::channel::<Option<Duration>>();
    let (report, results) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        for timeout in jobs {
            let result = lock.lock(Mode::Exclusive, 0, 0, timeout);
            let tid = gettid();
            let waited = Waited {
                children: waiter_children(tid),
                fds: open_descriptors(),
                tid,
                result,
            };
            if waited.result.is_ok() {
                lock.unlock(0, 0).unwrap();
            }
            report.send(waited).unwrap();
        }
    });
    (go, results, thread)
}

/// One contended wait of the waiting thread, ended by the peer's release.
fn handed_off(
    peer: &mut Peer,
    path: &Path,
    go: &mpsc::Sender<Option<Duration>>,
    results: &mpsc::Receiver<Waited>,
    timeout: Option<Duration>,
) -> Waited {
    assert_eq!(peer.cmd("lock h ex 0 0 0"), "ok");
    go.send(timeout).unwrap();
    wait_until("the waiter blocks in the kernel", || someone_waits_on(path));
    assert_eq!(peer.cmd("unlock h 0 0"), "ok");
    results.recv_timeout(Duration::from_secs(10)).unwrap()
}

#[test]
fn one_waiter_child_serves_every_wait_of_a_thread_and_uses_no_descriptor() {
    let _serial = serial();
    let dir = TempDir::new("waiters-reuse");
    for b in child_backends() {
        let path = dir.0.join(name(b));
        let lock = Arc::new(Lock::open(&path, &opts(b)).unwrap());
        let mut peer = holder(&path, b);
        let _children = force_children(&path, b);
        assert_eq!(peer.cmd("unlock h 0 0"), "ok");
        let (go, results, thread) = waiting_thread(lock);
        // A thread's first wait has a child of its own, gone once it is granted.
        let once = handed_off(&mut peer, &path, &go, &results, None);
        assert!(once.result.is_ok(), "{b:?}: {:?}", once.result);
        assert!(
            once.children.is_empty(),
            "{b:?}: the first wait's child is gone: {:?}",
            once.children
        );
        let first = handed_off(&mut peer, &path, &go, &results, None);
        assert!(first.result.is_ok(), "{b:?}: {:?}", first.result);
        assert_eq!(
            first.children.len(),
            1,
            "{b:?}: one waiter child from the second wait: {:?}",
            first.children
        );
        assert_eq!(first.fds, once.fds, "{b:?}: descriptors after each wait");
        for timeout in [
            None,
            Some(Duration::from_secs(10)),
            None,
            Some(Duration::from_secs(5)),
        ] {
            let w = handed_off(&mut peer, &path, &go, &results, timeout);
            assert!(w.result.is_ok(), "{b:?}: {:?}", w.result);
            assert_eq!(
                w.children, first.children,
                "{b:?}: the same child serves every wait"
            );
            assert_eq!(w.fds, first.fds, "{b:?}: descriptors after each wait");
        }
        drop(go);
        thread.join().unwrap();
    }
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a cpu_set_t (zero bytes: the empty set), and
    // CPU_ISSET reads it below its size in bits.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(libc::sched_getaffinity(0, size, &mut set), 0);
        (0..8 * size)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Keeps the calling thread on `cpu` alone.
fn pin_thread(cpu: usize) {
    // SAFETY: as in allowed_cpus; sched_setaffinity(0) applies to this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(libc::sched_setaffinity(0, size, &set), 0, "to CPU {cpu}");
    }
}

/// The `Cpus_allowed_list` of process `pid` (`"0"`, `"0-1"`, ...).
fn cpus_allowed_list(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in /proc/PID/status")
        .trim()
        .to_string()
}

#[test]
fn every_waiter_child_runs_on_the_cpu_of_the_thread_that_waits() {
    let _serial = serial();
    let dir = TempDir::new("waiters-cpu");
    let cpus = allowed_cpus();
    // The first and the last CPU this process may use (one CPU: that one, twice).
    let (a, z) = (cpus[0], *cpus.last().unwrap());
    for b in child_backends() {
        let path = dir.0.join(name(b));
        let lock = Arc::new(Lock::open(&path, &opts(b)).unwrap());
        let mut peer = holder(&path, b);
        let _children = force_children(&path, b);
        assert_eq!(peer.cmd("unlock h 0 0"), "ok");
        let (go, jobs) = mpsc::channel::<Option<usize>>();
        let (report, results) = mpsc::channel();
        let waiter = lock.clone();
        let thread = std::thread::spawn(move || {
            report.send(gettid()).unwrap();
            for cpu in jobs {
                if let Some(cpu) = cpu {
                    pin_thread(cpu);
                }
                waiter.lock(Mode::Exclusive, 0, 0, None).unwrap();
                waiter.unlock(0, 0).unwrap();
                report.send(0).unwrap();
            }
        });
        let tid = results.recv().unwrap();
        // The CPUs allowed to the thread's children while it waits (on `cpu`, or
        // where the scheduler puts it).
        let mut wait_on = |cpu: Option<usize>| {
            assert_eq!(peer.cmd("lock h ex 0 0 0"), "ok");
            go.send(cpu).unwrap();
            wait_until("the waiter blocks in the kernel", || {
                someone_waits_on(&path)
            });
            // A first wait's child is restricted just after it is made, and may block
            // in the kernel a moment before that.
            let allowed_now = || -> Vec<String> {
                children(tid)
                    .iter()
                    .map(|&c| cpus_allowed_list(c))
                    .collect()
            };
            wait_until("the waiter child is kept on one CPU", || {
                allowed_now().iter().all(|a| !a.contains(['-', ',']))
            });
            let allowed = allowed_now();
            assert_eq!(peer.cmd("unlock h 0 0"), "ok");
            assert_eq!(results.recv_timeout(Duration::from_secs(10)).unwrap(), 0);
            allowed
        };
        // The first wait has a child of its own, made while the thread may run on
        // any CPU: it is kept on one.
        let first = wait_on(None);
        assert!(
            matches!(&first[..], [one] if cpus.iter().any(|c| c.to_string() == *one)),
            "{b:?}: the first wait's child is kept on one CPU (of {cpus:?}): {first:?}"
        );
        // The kept child, from the second wait, follows the thread.
        for cpu in [z, a, z, z, a] {
            assert_eq!(
                wait_on(Some(cpu)),
                vec![cpu.to_string()],
                "{b:?}: the one waiter child is on its thread's CPU {cpu} (of {cpus:?})"
            );
        }
        drop(go);
        thread.join().unwrap();
    }
}

#[test]
fn a_threads_waiter_child_is_killed_and_reaped_when_the_thread_exits() {
    let _serial = serial();
    let dir = TempDir::new("waiters-exit");
    let path = dir.0.join("f");
    let b = child_backends()[0];
    let lock = Arc::new(Lock::open(&path, &opts(b)).unwrap());
    let mut peer = holder(&path, b);
    let _children = force_children(&path, b);
    assert_eq!(peer.cmd("unlock h 0 0"), "ok");
    let (go, results, thread) = waiting_thread(lock);
    // The persistent child comes at the thread's second wait.
    assert!(
        handed_off(&mut peer, &path, &go, &results, None)
            .result
            .is_ok()
    );
    let w = handed_off(&mut peer, &path, &go, &results, None);
    assert!(w.result.is_ok());
    let [child] = w.children[..] else {
        panic!("one waiter child: {:?}", w.children)
    };
    assert_eq!(state(child), Some('S'), "idle between waits");
    drop(go);
    thread.join().unwrap();
    assert_eq!(
        state(child),
        None,
        "the child of an exited thread is reaped"
    );
}

#[test]
fn a_deadline_or_a_cancel_ends_the_waiter_child_and_the_next_wait_makes_a_new_one() {
    let _serial = serial();
    let dir = TempDir::new("waiters-abort");
    for b in child_backends() {
        let path = dir.0.join(name(b));
        let lock = Arc::new(Lock::open(&path, &opts(b)).unwrap());
        let mut peer = holder(&path, b);
        let _children = force_children(&path, b);
        assert_eq!(peer.cmd("unlock h 0 0"), "ok");
        let (go, results, thread) = waiting_thread(lock.clone());
        // The persistent child comes at the thread's second wait.
        assert!(
            handed_off(&mut peer, &path, &go, &results, None)
                .result
                .is_ok()
        );
        let first = handed_off(&mut peer, &path, &go, &results, None);
        let [old] = first.children[..] else {
            panic!("{b:?}: {:?}", first.children)
        };

        // A deadline: the child blocked in the kernel is killed and reaped.
        assert_eq!(peer.cmd("lock h ex 0 0 0"), "ok");
        go.send(Some(Duration::from_millis(100))).unwrap();
        let w = results.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(w.result.unwrap_err().errno(), libc::ETIMEDOUT, "{b:?}");
        assert!(
            w.children.is_empty(),
            "{b:?}: no child after a timeout: {:?}",
            w.children
        );
        assert_eq!(state(old), None, "{b:?}: the aborted child is reaped");

        // A cancel, from this thread while the other one waits.
        go.send(None).unwrap();
        wait_until("the waiter blocks in the kernel", || {
            someone_waits_on(&path)
        });
        let [second] = waiter_children(first.tid)[..] else {
            panic!("{b:?}: a new child for the next wait")
        };
        assert_ne!(second, old);
        assert!(lock.cancel());
        let w = results.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(w.result.unwrap_err().errno(), libc::ECANCELED, "{b:?}");
        assert!(w.children.is_empty(), "{b:?}: {:?}", w.children);
        assert_eq!(state(second), None);

        // The wait after them works, with a third child.
        assert_eq!(peer.cmd("unlock h 0 0"), "ok");
        let w = handed_off(
            &mut peer,
            &path,
            &go,
            &results,
            Some(Duration::from_secs(10)),
        );
        assert!(w.result.is_ok(), "{b:?}: {:?}", w.result);
        assert_eq!(w.children.len(), 1);
        drop(go);
        thread.join().unwrap();
    }
}

#[test]
fn a_waiter_child_killed_by_someone_else_does_not_lose_the_wait() {
    let _serial = serial();
    let dir = TempDir::new("waiters-killed");
    for b in child_backends() {
        let path = dir.0.join(name(b));
        let lock = Arc::new(Lock::open(&path, &opts(b)).unwrap());
        let mut peer = holder(&path, b);
        let _children = force_children(&path, b);
        let (tell, tid) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            // A first wait, which times out: the next one has the persistent child.
            let first = lock.lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(20)));
            assert_eq!(first.unwrap_err().errno(), libc::ETIMEDOUT);
            tell.send(gettid()).unwrap();
            lock.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(20)))
        });
        let tid = tid.recv().unwrap();
        wait_until("the second wait has its child", || {
            waiter_children(tid).len() == 1
        });
        wait_until("the waiter blocks in the kernel", || {
            someone_waits_on(&path)
        });
        let [victim] = waiter_children(tid)[..] else {
            panic!("{b:?}: one waiter child")
        };
        // SAFETY: kill takes integers.
        assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
        wait_until("the killed child is reaped", || state(victim).is_none());
        assert_eq!(peer.cmd("unlock h 0 0"), "ok");
        let result = waiter.join().unwrap();
        assert!(result.is_ok(), "{b:?}: {result:?}");
    }
}

#[test]
fn the_holder_after_a_wait_is_this_process_not_its_waiter_child() {
    let _serial = serial();
    let dir = TempDir::new("waiters-holder");
    let me = std::process::id() as i32;
    for b in child_backends() {
        let path = dir.0.join(name(b));
        let lock = Arc::new(Lock::open(&path, &opts(b)).unwrap());
        let mut peer = holder(&path, b);
        let guard = force_children(&path, b);
        let waiter = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                // A first wait, which times out: the one after it has the persistent
                // child, which then takes the lock for this process.
                let first = lock.lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(20)));
                assert_eq!(first.unwrap_err().errno(), libc::ETIMEDOUT);
                lock.lock(Mode::Exclusive, 0, 0, None).unwrap();
                waiter_children(gettid())
            })
        };
        std::thread::sleep(Duration::from_millis(40));
        wait_until("the waiter blocks in the kernel", || {
            someone_waits_on(&path)
        });
        assert_eq!(peer.cmd("unlock h 0 0"), "ok");
        let children = waiter.join().unwrap();
        assert_eq!(children.len(), 1, "{b:?}");
        drop(guard);
        let holders = lock.list().unwrap();
        assert_eq!(holders.len(), 1, "{b:?}: {holders:?}");
        assert_eq!((holders[0].pid, holders[0].is_self), (me, true), "{b:?}");
        // Another process asks (the command's listing).
        let out = Command::new(env!("CARGO_BIN_EXE_unilock"))
            .args(["--list", path.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let pids: Vec<&str> = text
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        assert_eq!(pids, [me.to_string()], "{b:?}: {text}");
        assert!(
            !text.lines().any(|l| l.starts_with(WAITER)),
            "{b:?}: {text}"
        );
        lock.unlock(0, 0).unwrap();
    }
}

/// The scenario's side: wait for the lock the test holds, report the waiter child,
/// then execve `sleep` from the main thread or from another thread.
#[test]
fn exec_scenario_main() {
    let Ok(scenario) = std::env::var(SCENARIO_ENV) else {
        return;
    };
    let mut words = scenario.split(':');
    let (how, backend, path) = (
        words.next().unwrap().to_string(),
        common::backend_named(words.next().unwrap()),
        words.next().unwrap().to_string(),
    );
    let lock = Lock::open(&path, &opts(backend)).unwrap();
    // Closed by the execve (close-on-exec), as the lock's descriptor is.
    let _children = force_children(Path::new(&path), backend);
    let run = move || {
        // A first wait, which times out (the test holds the lock until it reads the
        // line below): the next wait has the persistent child, or the thread's ring.
        let first = lock.lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(20)));
        assert_eq!(first.unwrap_err().errno(), libc::ETIMEDOUT);
        println!("@@ warmed");
        lock.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(20)))
            .unwrap();
        let children = waiter_children(gettid());
        println!(
            "@@ locked {}",
            children
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let err = std::os::unix::process::CommandExt::exec(Command::new("sleep").arg("30"));
        panic!("exec: {err}");
    };
    if how == "thread" {
        std::thread::spawn(run).join().unwrap();
    } else {
        run();
    }
}

#[test]
fn an_execve_after_a_wait_ends_the_waiter_child_and_releases_the_locks() {
    // Every backend: where the wait was the thread's own, the locks are released all
    // the same, and no child is left.
    let _serial = serial();
    use std::io::BufRead;
    let dir = TempDir::new("waiters-exec");
    for how in ["main", "thread"] {
        for b in ALL {
            let path = dir.0.join(format!("{how}-{}", name(b)));
            let mine = Lock::open(&path, &opts(b)).unwrap();
            mine.lock(Mode::Exclusive, 0, 0, None).unwrap();
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "exec_scenario_main",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    SCENARIO_ENV,
                    format!("{how}:{}:{}", name(b), path.display()),
                )
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            while !line.contains("@@ warmed") {
                line.clear();
                assert!(
                    out.read_line(&mut line).unwrap() > 0,
                    "{how} {b:?}: child ended"
                );
            }
            wait_until("the child waits", || someone_waits_on(&path));
            mine.unlock(0, 0).unwrap();
            let helpers: Vec<i32> = loop {
                line.clear();
                assert!(
                    out.read_line(&mut line).unwrap() > 0,
                    "{how} {b:?}: child ended"
                );
                if let Some(at) = line.find("@@ locked") {
                    break line[at + 9..]
                        .split(',')
                        .map(str::trim)
                        .filter(|w| !w.is_empty())
                        .map(|w| w.parse().unwrap())
                        .collect();
                }
            };
            // One waiter child, or none where the wait was the thread's own.
            let expected = usize::from(child_backends().contains(&b));
            assert_eq!(helpers.len(), expected, "{how} {b:?}: {helpers:?}");
            let pid = child.id() as i32;
            wait_until("the child runs sleep", || {
                command(pid).as_deref() == Some("sleep")
            });
            // The program that took the lock is gone: the lock is free, and the waiter
            // child, which shared the old descriptor table, ends (a zombie of the new
            // program at most). Its SIGKILL is delivered at the execve; on a loaded
            // machine it may still be running its exit for a moment.
            let got = mine.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(5)));
            assert!(
                got.is_ok(),
                "{how} {b:?}: the lock outlived execve: {got:?}"
            );
            for &helper in &helpers {
                wait_until(&format!("{how} {b:?}: waiter child {helper} ends"), || {
                    matches!(state(helper), None | Some('Z'))
                });
            }
            mine.unlock(0, 0).unwrap();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sleeps in `epoll_wait(2)` on an empty epoll set for `d`; `Err` with the errno when
/// the call fails (EINTR if something interrupted it with no signal handler to run).
fn epoll_sleep(d: Duration) -> Result<Duration, i32> {
    // SAFETY: epoll_create1 takes a flag; the descriptor is closed below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    let mut ev = [libc::epoll_event { events: 0, u64: 0 }];
    let start = Instant::now();
    // Whole milliseconds, rounded up: the call sleeps at least `d`.
    let ms = d.as_nanos().div_ceil(1_000_000) as i32;
    // SAFETY: one writable event for the kernel, on the descriptor just made.
    let rc = unsafe { libc::epoll_wait(ep, ev.as_mut_ptr(), 1, ms) };
    let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: the descriptor made above, closed once.
    unsafe { libc::close(ep) };
    if rc < 0 { Err(e) } else { Ok(start.elapsed()) }
}

#[test]
fn untimed_flock_waits_and_every_fcntl_wait_are_the_threads_own_with_no_child() {
    let _serial = serial();
    let dir = TempDir::new("waiters-own");
    let expected = own_waits_expected();
    for b in ALL {
        let path = dir.0.join(name(b));
        let lock = Arc::new(Lock::open(&path, &opts(b)).unwrap());
        let mut peer = holder(&path, b);
        assert_eq!(peer.cmd("unlock h 0 0"), "ok");
        let (go, results, thread) = waiting_thread(lock);
        // A thread's first timed wait ends with a timeout request in its ring (a
        // flock wait: with a waiter child of its own); from its second on, the
        // process's deadline thread serves.
        let first = handed_off(
            &mut peer,
            &path,
            &go,
            &results,
            Some(Duration::from_secs(10)),
        );
        assert!(first.result.is_ok(), "{b:?}: {:?}", first.result);
        for timeout in [
            None,
            Some(Duration::from_secs(10)),
            None,
            Some(Duration::from_millis(500)),
        ] {
            assert_eq!(peer.cmd("lock h ex 0 0 0"), "ok");
            go.send(timeout).unwrap();
            wait_until("the waiter blocks in the kernel", || {
                someone_waits_on(&path)
            });
            let during = children(first.tid);
            assert_eq!(peer.cmd("unlock h 0 0"), "ok");
            let w = results.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(w.result.is_ok(), "{b:?}: {:?}", w.result);
            assert_eq!(w.fds, first.fds, "{b:?}: descriptors after each wait");
            if expected {
                assert!(
                    during.is_empty(),
                    "{b:?}: no child while waiting: {during:?}"
                );
                assert!(w.children.is_empty(), "{b:?}: no child: {:?}", w.children);
                assert_eq!(
                    common::threads_named(TIMER_THREAD),
                    1,
                    "{b:?}: one deadline thread in the process"
                );
            } else {
                // io_uring refused here: the persistent waiter child serves.
                assert_eq!(w.children.len(), 1, "{b:?}: {:?}", w.children);
            }
        }
        drop(go);
        thread.join().unwrap();
    }
}

/// True when another process cannot take a POSIX write lock on bytes 0..10 of
/// `path` now.
fn posix_bytes_held(path: &Path) -> bool {
    let mut probe = Peer::spawn();
    assert_eq!(probe.cmd(&format!("open p {} posix", path.display())), "ok");
    let answer = probe.cmd("lock p ex 0 10 0");
    assert!(
        answer == "ok" || answer == format!("err {}", libc::EAGAIN),
        "{answer}"
    );
    answer != "ok"
}

/// A flock wait of one thread, while this process holds a POSIX lock on the same file
/// (through another handle, taken during the wait, or with `fcntl` itself, taken
/// before): however the wait ends, granted or cancelled, the POSIX lock stays. (A
/// wait that is the thread's own closes a descriptor of the file when it ends, and
/// any close drops the process's POSIX locks there.)
#[test]
fn a_flock_wait_never_drops_a_posix_lock_this_process_holds_on_the_file() {
    let _serial = serial();
    let dir = TempDir::new("waiters-flock-posix");
    for (k, (raw, cancel)) in [(false, true), (false, false), (true, true), (true, false)]
        .into_iter()
        .enumerate()
    {
        let path = dir.0.join(format!("f{k}"));
        let flock = Arc::new(Lock::open(&path, &opts(Backend::Flock)).unwrap());
        let mut peer = holder(&path, Backend::Flock);
        let raw_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        if raw {
            raw_fcntl_lock(&raw_file, libc::F_SETLK, libc::F_WRLCK, 0, 10);
        }
        let waiter = {
            let flock = flock.clone();
            std::thread::spawn(move || flock.lock(Mode::Exclusive, 0, 0, None))
        };
        wait_until("the flock waiter blocks in the kernel", || {
            someone_waits_on(&path)
        });
        let posix = Lock::open(&path, &opts(Backend::Posix)).unwrap();
        if !raw {
            posix
                .lock(Mode::Exclusive, 0, 10, Some(Duration::ZERO))
                .unwrap();
        }
        assert!(
            posix_bytes_held(&path),
            "raw {raw}: held before the wait ends"
        );
        if cancel {
            // The wait may be between its own call and a waiter child's: cancel
            // until it has ended.
            let start = Instant::now();
            while !waiter.is_finished() {
                flock.cancel();
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "the cancel ends the wait"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            let r = waiter.join().unwrap();
            assert_eq!(r.unwrap_err().errno(), libc::ECANCELED, "raw {raw}");
        } else {
            assert_eq!(peer.cmd("unlock h 0 0"), "ok");
            waiter.join().unwrap().unwrap();
            flock.unlock(0, 0).unwrap();
        }
        assert!(
            posix_bytes_held(&path),
            "raw {raw}, cancel {cancel}: the POSIX lock survives the flock wait"
        );
        drop(posix);
        drop(raw_file);
    }
}

#[test]
fn a_wait_ends_on_time_or_on_cancel_and_leaves_nothing_to_interrupt_later_calls() {
    let _serial = serial();
    let dir = TempDir::new("waiters-own-abort");
    for b in ALL {
        let path = dir.0.join(name(b));
        let lock = Arc::new(Lock::open(&path, &opts(b)).unwrap());
        let mut peer = holder(&path, b);
        let waiter = lock.clone();
        let (go, jobs) = mpsc::channel::<Option<Duration>>();
        let (report, results) = mpsc::channel();
        // Each job: one wait, then an epoll_wait that spans the wait's deadline (when
        // it had one and was granted before it) plus 100 ms.
        let thread = std::thread::spawn(move || {
            for timeout in jobs {
                let start = Instant::now();
                let result = waiter.lock(Mode::Exclusive, 0, 0, timeout);
                let took = start.elapsed();
                if result.is_ok() {
                    waiter.unlock(0, 0).unwrap();
                }
                let quiet =
                    timeout.unwrap_or_default().saturating_sub(took) + Duration::from_millis(100);
                let slept = epoll_sleep(quiet);
                report.send((result, took, slept, quiet)).unwrap();
            }
        });
        // A deadline, with the lock held throughout.
        go.send(Some(Duration::from_millis(150))).unwrap();
        let (result, took, slept, quiet) = results.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(result.unwrap_err().errno(), libc::ETIMEDOUT, "{b:?}");
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_millis(1150),
            "{b:?}: a 150 ms wait took {took:?}"
        );
        assert!(
            matches!(slept, Ok(d) if d >= quiet),
            "{b:?}: after a deadline: {slept:?}"
        );
        // A cancel from this thread.
        go.send(None).unwrap();
        wait_until("the waiter blocks in the kernel", || {
            someone_waits_on(&path)
        });
        let at = Instant::now();
        assert!(lock.cancel());
        let (result, _, slept, quiet) = results.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(result.unwrap_err().errno(), libc::ECANCELED, "{b:?}");
        assert!(
            at.elapsed() < Duration::from_secs(1),
            "{b:?}: the cancel took {:?}",
            at.elapsed()
        );
        assert!(
            matches!(slept, Ok(d) if d >= quiet),
            "{b:?}: after a cancel: {slept:?}"
        );
        // A timed wait granted long before its deadline: its timeout must not fire
        // into the epoll_wait that follows, which spans the deadline.
        go.send(Some(Duration::from_millis(300))).unwrap();
        wait_until("the waiter blocks in the kernel", || {
            someone_waits_on(&path)
        });
        assert_eq!(peer.cmd("unlock h 0 0"), "ok");
        let (result, _, slept, quiet) = results.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(result.is_ok(), "{b:?}: {result:?}");
        assert!(quiet > Duration::from_millis(250), "{b:?}: {quiet:?}");
        assert!(
            matches!(slept, Ok(d) if d >= quiet),
            "{b:?}: after a grant: {slept:?}"
        );
        drop(go);
        thread.join().unwrap();
    }
}

#[test]
fn a_grant_that_races_a_deadline_or_a_cancel_is_kept_or_released() {
    let _serial = serial();
    let dir = TempDir::new("waiters-own-race");
    for b in ALL {
        let path = dir.0.join(name(b));
        let lock = Arc::new(Lock::open(&path, &opts(b)).unwrap());
        let mut peer = holder(&path, b);
        let (mut kept, mut ended) = (0, 0);
        for round in 0..120u64 {
            let by_cancel = round % 2 == 1;
            let waiter = lock.clone();
            let timeout = (!by_cancel).then(|| Duration::from_millis(4));
            let thread = std::thread::spawn(move || waiter.lock(Mode::Exclusive, 0, 0, timeout));
            // The release lands around the deadline or the cancel: before, at or after.
            std::thread::sleep(Duration::from_micros(3000 + (round * 37) % 2000));
            let canceller = by_cancel.then(|| {
                let canceller = lock.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_micros(200));
                    canceller.cancel()
                })
            });
            assert_eq!(peer.cmd("unlock h 0 0"), "ok");
            let result = thread.join().unwrap();
            if let Some(c) = canceller {
                c.join().unwrap();
            }
            // Whoever holds the lock now: the peer's try says.
            let peer_got = peer.cmd("lock h ex 0 0 0");
            match result {
                Ok(()) => {
                    kept += 1;
                    assert_ne!(peer_got, "ok", "{b:?} round {round}: granted, yet not held");
                    lock.unlock(0, 0).unwrap();
                    assert_eq!(peer.cmd("lock h ex 0 0 0"), "ok");
                }
                Err(e) => {
                    ended += 1;
                    let want = if by_cancel {
                        libc::ECANCELED
                    } else {
                        libc::ETIMEDOUT
                    };
                    assert_eq!(e.errno(), want, "{b:?} round {round}");
                    assert_eq!(peer_got, "ok", "{b:?} round {round}: failed, yet held");
                }
            }
        }
        // Both outcomes happened, or the race was never run.
        assert!(kept > 0 && ended > 0, "{b:?}: kept {kept}, ended {ended}");
    }
}

/// Two threads wait with deadlines set out of order, the later one first: each wait
/// ends at its own deadline (the deadline thread, asleep until the later one, is woken
/// for the earlier).
#[test]
fn deadlines_set_out_of_order_each_end_on_time() {
    let _serial = serial();
    let dir = TempDir::new("waiters-deadlines");
    for b in ALL {
        let path = dir.0.join(name(b));
        let lock_a = Arc::new(Lock::open(&path, &opts(b)).unwrap());
        let lock_b = Arc::new(Lock::open(&path, &opts(b)).unwrap());
        let _peer = holder(&path, b);
        let (ready, warmed) = mpsc::channel();
        let timed = |lock: Arc<Lock>, timeout: Duration, go: mpsc::Receiver<()>| {
            let ready = ready.clone();
            std::thread::spawn(move || {
                // A first timed wait: the thread's next ones have the deadline thread.
                let first = lock.lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(10)));
                assert_eq!(first.unwrap_err().errno(), libc::ETIMEDOUT);
                ready.send(()).unwrap();
                go.recv().unwrap();
                let start = Instant::now();
                let r = lock.lock(Mode::Exclusive, 0, 0, Some(timeout));
                (r.map_err(|e| e.errno()), start.elapsed())
            })
        };
        let (go_a, wait_a) = mpsc::channel();
        let (go_b, wait_b) = mpsc::channel();
        let late = Duration::from_millis(1500);
        let early = Duration::from_millis(150);
        let a = timed(lock_a, late, wait_a);
        let b_thread = timed(lock_b, early, wait_b);
        warmed.recv().unwrap();
        warmed.recv().unwrap();
        go_a.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        go_b.send(()).unwrap();
        let (rb, tb) = b_thread.join().unwrap();
        let (ra, ta) = a.join().unwrap();
        assert_eq!(rb, Err(libc::ETIMEDOUT), "{b:?}");
        assert_eq!(ra, Err(libc::ETIMEDOUT), "{b:?}");
        let tolerance = Duration::from_millis(400);
        assert!(
            tb >= early && tb < early + tolerance,
            "{b:?}: the earlier deadline ends its wait on time: {tb:?}"
        );
        assert!(
            ta >= late && ta < late + tolerance,
            "{b:?}: the later deadline ends its wait on time: {ta:?}"
        );
    }
}

/// A flock upgrade (shared to exclusive) whose wait is moved to a waiter child (a
/// POSIX lock taken on the file meanwhile) and then times out while another handle of
/// this process holds the file shared: the handle still holds its shared lock, as the
/// failed upgrade reports. (flock lets the shared lock go when the upgrade starts to
/// wait; the wait's restart must take it back before it waits again for the process's
/// other handles.)
#[test]
fn a_flock_upgrade_moved_to_a_waiter_child_keeps_the_shared_lock() {
    let _serial = serial();
    let dir = TempDir::new("waiters-upgrade");
    let path = dir.0.join("f");
    let a = Arc::new(Lock::open(&path, &opts(Backend::Flock)).unwrap());
    let b = Lock::open(&path, &opts(Backend::Flock)).unwrap();
    let posix = Lock::open(&path, &opts(Backend::Posix)).unwrap();
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open h {} flock", path.display())), "ok");
    assert_eq!(peer.cmd("lock h sh 0 0 0"), "ok");
    let (warmed, ready) = mpsc::channel();
    let upgrade = {
        let a = a.clone();
        std::thread::spawn(move || {
            // A first timed wait: the thread's next one is its own, where io_uring
            // serves, and the POSIX lock below moves it to a waiter child.
            let first = a.lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(10)));
            assert_eq!(first.unwrap_err().errno(), libc::ETIMEDOUT);
            a.lock(Mode::Shared, 0, 0, Some(Duration::ZERO)).unwrap();
            warmed.send(()).unwrap();
            a.lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(600)))
        })
    };
    ready.recv().unwrap();
    wait_until("the upgrade waits in the kernel", || {
        someone_waits_on(&path)
    });
    b.lock(Mode::Shared, 0, 0, Some(Duration::ZERO)).unwrap();
    posix
        .lock(Mode::Exclusive, 0, 10, Some(Duration::ZERO))
        .unwrap();
    let r = upgrade.join().unwrap();
    assert_eq!(r.unwrap_err().errno(), libc::ETIMEDOUT);
    b.unlock(0, 0).unwrap();
    assert_eq!(peer.cmd("unlock h 0 0"), "ok");
    let mut other = Peer::spawn();
    assert_eq!(other.cmd(&format!("open x {} flock", path.display())), "ok");
    assert_eq!(
        other.cmd("lock x ex 0 0 0"),
        format!("err {}", libc::EAGAIN),
        "the handle still holds the file shared"
    );
    a.unlock(0, 0).unwrap();
    assert_eq!(other.cmd("lock x ex 0 0 0"), "ok");
}

/// The descriptors of this process that are `O_PATH` descriptors of `/`.
fn path_descriptors_of_root() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            // SAFETY: F_GETFL only reads the flags of a descriptor number.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            (target == Path::new("/") && flags >= 0 && flags & libc::O_PATH != 0).then_some(fd)
        })
        .collect()
}

/// A program that closes descriptors it did not open (here: the library's `O_PATH`
/// descriptor, which ends a FLOCK wait that is the thread's own) while a FLOCK wait is
/// in progress: a cancel still ends the wait, and a file opened meanwhile at that
/// descriptor's number is left alone.
#[test]
fn a_flock_wait_still_ends_when_the_program_closed_the_librarys_descriptor() {
    let _serial = serial();
    let dir = TempDir::new("waiters-closed-spare");
    let path = dir.0.join("f");
    let lock = Arc::new(Lock::open(&path, &opts(Backend::Flock)).unwrap());
    let mut peer = holder(&path, Backend::Flock);
    let (tell, ended) = mpsc::channel();
    let waiter = {
        let lock = lock.clone();
        std::thread::spawn(move || tell.send(lock.lock(Mode::Exclusive, 0, 0, None)).unwrap())
    };
    wait_until("the waiter blocks in the kernel", || {
        someone_waits_on(&path)
    });
    let closed = path_descriptors_of_root();
    if own_waits_expected() {
        assert_eq!(
            closed.len(),
            1,
            "the library's O_PATH descriptor: {closed:?}"
        );
    }
    for fd in &closed {
        // SAFETY: closing a descriptor number, as a careless program would.
        unsafe { libc::close(*fd) };
    }
    // Another file takes the lowest free number, likely the one just closed.
    let other = std::fs::File::create(dir.0.join("other")).unwrap();
    assert!(lock.cancel());
    let result = ended.recv_timeout(Duration::from_secs(5));
    if result.is_err() {
        // Not ended by the cancel: let it end before failing.
        assert_eq!(peer.cmd("unlock h 0 0"), "ok");
    }
    waiter.join().unwrap();
    let result = result.expect("the cancel ends the wait");
    assert_eq!(result.unwrap_err().errno(), libc::ECANCELED);
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL only reads the flags of a descriptor this test owns.
    let flags = unsafe { libc::fcntl(other.as_raw_fd(), libc::F_GETFL) };
    assert!(
        flags >= 0 && flags & libc::O_PATH == 0,
        "the other file is still the program's"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/self/fd/{}", other.as_raw_fd())).unwrap(),
        dir.0.join("other")
    );
}
