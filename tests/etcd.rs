//! The ETCD backend against real etcd servers (tests/common/etcd.rs starts them):
//! exclusion between processes through two endpoints with random SIGKILLs, a killed
//! and a stopped holder, a killed leader, a cluster that goes down and comes back,
//! interop with `etcdctl lock` both ways, TLS, authentication, timeouts, cancel,
//! the queue as `list` shows it, and bad arguments.

mod common;

use std::io::{BufRead, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{PEER_ENV, Peer, TempDir};
use unilock::{Backend, Lock, Mode, Options};

fn opts(endpoints: &str, ttl: u32) -> Options {
    Options::new()
        .backend(Backend::Etcd)
        .etcd_endpoints(endpoints)
        .etcd_lease_ttl_s(ttl)
}

fn errno(r: unilock::Result<impl std::fmt::Debug>) -> i32 {
    r.expect_err("the call should have failed").errno()
}

/// A peer (this test binary in peer mode, `common::Peer`) that opens an ETCD handle
/// and takes commands on stdin: `lock MS` (-1 forever), `unlock`, `fence`, `touch`,
/// each answered by `ok [VALUE]` or `err ERRNO MESSAGE`; or runs the exclusion worker.
fn peer(endpoints: &str, ttl: u32, name: &str) -> Peer {
    Peer::spawn_with(&[endpoints, &ttl.to_string(), name].join("\t"))
}

/// A peer that runs the exclusion worker (see [`worker`]) for `seconds`.
fn worker_peer(endpoint: &str, log: &str, seconds: u64) -> Peer {
    Peer::spawn_with(&["worker", endpoint, log, &seconds.to_string()].join("\t"))
}

/// The peer side (runs only in a peer process).
#[test]
fn peer_main() {
    let Ok(setup) = std::env::var(PEER_ENV) else {
        return;
    };
    let args: Vec<&str> = setup.split('\t').collect();
    if args[0] == "worker" {
        return worker(args[1], args[2], args[3].parse().unwrap());
    }
    let lock = Lock::open(args[2], &opts(args[0], args[1].parse().unwrap())).unwrap();
    let out = std::io::stdout();
    writeln!(out.lock(), "@@ ready").unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["lock", ms] => {
                let ms: i64 = ms.parse().unwrap();
                let t = (ms >= 0).then(|| Duration::from_millis(ms as u64));
                lock.lock(Mode::Exclusive, 0, 0, t)
                    .and_then(|()| lock.fence().map(|f| f.to_string()))
            }
            ["unlock"] => lock.unlock(0, 0).map(|()| String::new()),
            ["fence"] => lock.fence().map(|f| f.to_string()),
            ["touch"] => lock.touch().map(|()| String::new()),
            ["threads"] => Ok(std::fs::read_dir("/proc/self/task")
                .unwrap()
                .count()
                .to_string()),
            _ => panic!("unknown peer command {line:?}"),
        };
        let text = match answer {
            Ok(v) => format!("ok {v}"),
            Err(e) => format!("err {} {}", e.errno(), e.message()),
        };
        writeln!(out.lock(), "@@ {text}").unwrap();
    }
}

/// The exclusion worker: takes the lock through `endpoint` again and again, logging
/// `enter PID TOKEN` and `exit PID` around a short critical section to `log` (appends
/// of one line are atomic and ordered), until `seconds` have passed.
fn worker(endpoint: &str, log: &str, seconds: u64) {
    let lock = Lock::open("excl", &opts(endpoint, 2)).unwrap();
    println!("@@ ready");
    let pid = std::process::id();
    let mut file = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    while Instant::now() < end {
        match lock.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(10))) {
            Ok(()) => {}
            Err(e) if e.errno() == libc::ETIMEDOUT => continue,
            Err(e) => panic!("worker {pid}: {}", e.message()),
        }
        let token = lock.fence().unwrap();
        file.write_all(format!("enter {pid} {token}\n").as_bytes())
            .unwrap();
        n += 1;
        std::thread::sleep(Duration::from_micros(
            200 + (n * 7919 + u64::from(pid)) % 3000,
        ));
        file.write_all(format!("exit {pid}\n").as_bytes()).unwrap();
        lock.unlock(0, 0).unwrap();
    }
}

#[test]
fn processes_on_two_endpoints_exclude_each_other_with_random_kills() {
    let etcd = Etcd::cluster(3);
    let dir = TempDir::new("etcd-excl");
    let log = dir.file("log");
    let logp = log.to_str().unwrap().to_owned();
    let seconds = 8u64;
    let start = Instant::now();
    let mut workers: Vec<Peer> = (0..6)
        .map(|i| worker_peer(&etcd.endpoint(i % 2), &logp, seconds))
        .collect();
    let mut kills = 0;
    let mut seed = 0x2545_f491_u64;
    while start.elapsed() < Duration::from_secs(seconds - 3) {
        std::thread::sleep(Duration::from_millis(600));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let i = (seed % workers.len() as u64) as usize;
        let victim = workers[i].pid();
        // Logged once the victim is dead: from then on another process may enter (its
        // lease expires 2 s later), and before it the victim may still log.
        workers[i].signal(libc::SIGKILL);
        workers[i].wait();
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(format!("kill {victim}\n").as_bytes()).unwrap();
        let remaining = seconds - start.elapsed().as_secs().min(seconds - 1);
        workers[i] = worker_peer(&etcd.endpoint(i % 2), &logp, remaining);
        kills += 1;
    }
    for mut w in workers {
        assert!(w.wait().success(), "a worker failed");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let (mut inside, mut last_token, mut enters) = (None::<String>, 0u64, 0);
    for line in text.lines() {
        let w: Vec<&str> = line.split(' ').collect();
        match w[0] {
            "enter" => {
                assert!(
                    inside.is_none(),
                    "{} entered while {} was inside:\n{text}",
                    w[1],
                    inside.unwrap()
                );
                let token: u64 = w[2].parse().unwrap();
                assert!(token > last_token, "fencing tokens must grow: {line}");
                last_token = token;
                inside = Some(w[1].to_owned());
                enters += 1;
            }
            "exit" | "kill" => {
                if inside.as_deref() == Some(w[1]) {
                    inside = None;
                }
            }
            _ => panic!("bad log line {line}"),
        }
    }
    assert!(kills >= 3 && enters >= 50, "{kills} kills, {enters} grants");
}

/// Takes the lock on `waiter` (whose holder's 2 s lease is about to expire) and
/// checks that it took less than the TTL and a second.
fn takes_within_ttl_and_a_second(waiter: &Lock) {
    let t = Instant::now();
    waiter
        .lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(10)))
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn a_killed_holder_is_replaced_within_its_ttl_and_a_stopped_one_learns_it_lost_the_lock() {
    let etcd = Etcd::start();
    let ep = etcd.endpoints();
    let waiter = Lock::open("job", &opts(&ep, 2)).unwrap();

    // SIGKILL: the lease expires, the waiter gets the lock within TTL + 1 s.
    let mut holder = peer(&ep, 2, "job");
    let first: u64 = holder.cmd("lock -1")[3..].parse().unwrap();
    holder.signal(libc::SIGKILL);
    takes_within_ttl_and_a_second(&waiter);
    let second = waiter.fence().unwrap();
    assert!(second > first);
    waiter.unlock(0, 0).unwrap();

    // SIGSTOP past the TTL: the waiter gets the lock, and the resumed holder's next
    // call says it lost it.
    let mut holder = peer(&ep, 2, "job");
    let held: u64 = holder.cmd("lock -1")[3..].parse().unwrap();
    assert!(held > second);
    holder.signal(libc::SIGSTOP);
    takes_within_ttl_and_a_second(&waiter);
    let taken = waiter.fence().unwrap();
    assert!(
        taken > held,
        "fencing tokens must grow: {held} then {taken}"
    );
    holder.signal(libc::SIGCONT);
    let answer = holder.cmd("fence");
    assert!(
        answer.starts_with(&format!("err {} ", libc::ENOLCK)),
        "the resumed holder must learn it lost the lock: {answer}"
    );
    // Reported once: the handle then holds nothing, and can take the lock again.
    assert!(
        holder
            .cmd("fence")
            .starts_with(&format!("err {}", libc::ENOLCK))
    );
    waiter.unlock(0, 0).unwrap();
    let again: u64 = holder.cmd("lock 5000")[3..].parse().unwrap();
    assert!(again > taken);
}

#[test]
fn a_held_lease_is_kept_alive_past_its_ttl_and_its_thread_ends_with_it() {
    let etcd = Etcd::start();
    // Threads are counted in a process of their own, which does nothing else.
    let mut a = peer(&etcd.endpoints(), 1, "keep");
    let threads = |p: &mut Peer| -> usize { p.cmd("threads")[3..].parse().unwrap() };
    let before = threads(&mut a);
    let token = a.cmd("lock -1");
    assert!(token.starts_with("ok"), "{token}");
    assert_eq!(
        threads(&mut a),
        before + 1,
        "one keep-alive thread per held lease"
    );
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(a.cmd("fence"), token, "the lock outlived three TTLs");
    assert_eq!(a.cmd("touch"), "ok");
    let b = Lock::open("keep", &opts(&etcd.endpoints(), 1)).unwrap();
    assert_eq!(
        errno(b.lock(Mode::Exclusive, 0, 0, Some(Duration::ZERO))),
        libc::EAGAIN
    );
    assert!(a.cmd("unlock").starts_with("ok"));
    let t = Instant::now();
    while threads(&mut a) != before && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        threads(&mut a),
        before,
        "the keep-alive thread ends with the lease"
    );
    assert!(etcd.keys_with_prefix("keep/").is_empty());
}

#[test]
fn a_killed_leader_loses_no_lock_and_waiters_are_still_served() {
    let mut etcd = Etcd::cluster(3);
    let ep = etcd.endpoints();
    let holder = Lock::open("lead", &opts(&ep, 3)).unwrap();
    holder.lock(Mode::Exclusive, 0, 0, None).unwrap();
    let token = holder.fence().unwrap();
    std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            let w = Lock::open("lead", &opts(&ep, 3)).unwrap();
            w.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(30)))
                .map(|()| w.fence().unwrap())
        });
        std::thread::sleep(Duration::from_millis(300));
        let leader = etcd.wait_leader();
        etcd.kill(leader);
        // Past two TTLs: the lease was renewed through the other members.
        std::thread::sleep(Duration::from_secs(7));
        assert_eq!(holder.fence().unwrap(), token, "the lock was lost");
        assert!(!waiting.is_finished(), "the waiter got a held lock");
        holder.unlock(0, 0).unwrap();
        let got = waiting.join().unwrap().expect("the waiter was not served");
        assert!(got > token);
    });
}

#[test]
fn with_every_member_down_calls_fail_in_time_and_service_resumes_after_a_restart() {
    let mut etcd = Etcd::cluster(3);
    let ep = etcd.endpoints();
    let l = Lock::open("down", &opts(&ep, 2)).unwrap();
    etcd.kill_all();
    let t = Instant::now();
    let e = l
        .lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(2)))
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        [libc::ECONNREFUSED, libc::ETIMEDOUT].contains(&e.errno()),
        "{}",
        e.message()
    );
    for one in ep.split(',') {
        assert!(
            e.message().contains(one),
            "the message names every endpoint: {}",
            e.message()
        );
    }
    etcd.restart_all();
    l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(10)))
        .unwrap();
    l.unlock(0, 0).unwrap();
}

#[test]
fn etcdctl_lock_and_unilock_exclude_each_other_both_ways() {
    let etcd = Etcd::start();
    let l = Lock::open("shared-name", &opts(&etcd.endpoints(), 2)).unwrap();

    // etcdctl holds: a try fails, a wait ends when etcdctl's command ends.
    let mut ctl = etcd
        .etcdctl()
        .args(["lock", "shared-name", "sleep", "1.5"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while etcd.keys_with_prefix("shared-name/").is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5), "etcdctl took no lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        errno(l.lock(Mode::Exclusive, 0, 0, Some(Duration::ZERO))),
        libc::EAGAIN
    );
    let holder = l.query(Mode::Exclusive, 0, 0).unwrap().expect("a holder");
    assert_eq!(holder.pid, -1, "etcdctl's key has no record");
    l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(10)))
        .unwrap();
    assert!(ctl.wait().unwrap().success());

    // unilock holds: etcdctl waits until the unlock.
    let mut ctl = etcd
        .etcdctl()
        .args(["lock", "shared-name", "true"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(ctl.try_wait().unwrap().is_none(), "etcdctl got a held lock");
    let released = Instant::now();
    l.unlock(0, 0).unwrap();
    assert!(ctl.wait().unwrap().success());
    assert!(released.elapsed() < Duration::from_secs(3));
}

#[test]
fn tls_with_a_client_certificate_and_clear_errors_without_one() {
    let etcd = Etcd::start_tls();
    let ep = etcd.endpoints();
    assert!(ep.starts_with("https://"));
    let good = opts(&ep, 2)
        .etcd_ca(etcd.ca().to_str().unwrap())
        .etcd_client_cert(
            etcd.client_cert().to_str().unwrap(),
            etcd.client_key().to_str().unwrap(),
        );
    let l = Lock::open("tls", &good).unwrap();
    l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(5)))
        .unwrap();
    assert!(l.fence().unwrap() > 0);
    l.unlock(0, 0).unwrap();

    // No client certificate: the server refuses the handshake.
    let l = Lock::open("tls", &opts(&ep, 2).etcd_ca(etcd.ca().to_str().unwrap())).unwrap();
    let e = l
        .lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(5)))
        .unwrap_err();
    assert!(e.message().contains(&ep), "{}", e.message());
    // No CA: the server's certificate is not trusted.
    let l = Lock::open("tls", &opts(&ep, 2)).unwrap();
    let e = l
        .lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(5)))
        .unwrap_err();
    assert_eq!(e.errno(), libc::EPROTO, "{}", e.message());
    // Files that are missing or not PEM: at open, naming the file.
    let e = Lock::open("tls", &opts(&ep, 2).etcd_ca("/nonexistent/ca.pem")).unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT);
    assert!(e.message().contains("/nonexistent/ca.pem"));
    let e = Lock::open("tls", &opts(&ep, 2).etcd_ca("/etc/hostname")).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{}", e.message());
}

#[test]
fn authentication_by_user_and_password_which_no_message_shows() {
    let mut etcd = Etcd::start();
    etcd.enable_auth("root-secret-pw");
    etcd.add_user("locker", "s3cret-pw");
    let ep = etcd.endpoints();
    let l = Lock::open(
        "auth",
        &opts(&ep, 2).etcd_credentials("locker", "s3cret-pw"),
    )
    .unwrap();
    l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(l.list().unwrap().len(), 1);
    l.unlock(0, 0).unwrap();

    let o = opts(&ep, 2).etcd_credentials("locker", "wrong-pw-123");
    assert!(
        !format!("{o:?}").contains("wrong-pw-123"),
        "Debug shows the password"
    );
    let l = Lock::open("auth", &o).unwrap();
    let e = l
        .lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(5)))
        .unwrap_err();
    assert_eq!(e.errno(), libc::EACCES, "{}", e.message());
    assert!(!e.message().contains("wrong-pw-123"), "{}", e.message());
    assert!(e.message().contains("locker"), "{}", e.message());

    // Without credentials, the cluster refuses the requests.
    let l = Lock::open("auth", &opts(&ep, 2)).unwrap();
    assert!(
        l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(5)))
            .is_err()
    );
}

#[test]
fn timed_and_cancelled_waits_end_on_time_and_leave_the_queue() {
    let etcd = Etcd::start();
    let o = opts(&etcd.endpoints(), 2);
    let holder = peer(&etcd.endpoints(), 2, "tq");
    let mut holder = holder;
    assert!(holder.cmd("lock -1").starts_with("ok"));
    let l = Lock::open("tq", &o).unwrap();
    for ms in [300u64, 1200] {
        let t = Instant::now();
        assert_eq!(
            errno(l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(ms)))),
            libc::ETIMEDOUT
        );
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(ms) && took < Duration::from_millis(ms + 500),
            "a {ms} ms wait took {took:?}"
        );
    }
    // Only the holder's key is left.
    assert_eq!(etcd.keys_with_prefix("tq/").len(), 1);

    let tid = std::sync::atomic::AtomicI32::new(0);
    std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            // SAFETY: gettid has no arguments and cannot fail.
            tid.store(
                unsafe { libc::gettid() },
                std::sync::atomic::Ordering::SeqCst,
            );
            let t = Instant::now();
            (l.lock(Mode::Exclusive, 0, 0, None), t)
        });
        std::thread::sleep(Duration::from_millis(400));
        // A wait that sleeps uses (almost) no CPU: it does not poll. The waiting
        // thread's user and system time, in clock ticks (fields 14 and 15 of its stat).
        let ticks = || {
            let tid = tid.load(std::sync::atomic::Ordering::SeqCst);
            let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<u64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
            // After the state letter: ppid is field 4, so utime (14) is f[10] here.
            f[10] + f[11]
        };
        let before = ticks();
        std::thread::sleep(Duration::from_secs(1));
        let used = ticks() - before;
        assert!(
            used <= 2,
            "the waiting thread used {used} ticks of CPU in 1 s"
        );
        let cancelled = Instant::now();
        assert!(l.cancel());
        let (r, _) = waiting.join().unwrap();
        assert_eq!(errno(r), libc::ECANCELED);
        assert!(cancelled.elapsed() < Duration::from_millis(500));
    });
    assert_eq!(
        etcd.keys_with_prefix("tq/").len(),
        1,
        "the cancelled waiter's key stays"
    );
    assert!(
        !l.cancel(),
        "a cancel with no call in progress has no effect"
    );
}

#[test]
fn list_and_query_name_the_holder_then_the_waiters_in_order() {
    let etcd = Etcd::start();
    let ep = etcd.endpoints();
    let mut holder = peer(&ep, 5, "q");
    let token: u64 = holder.cmd("lock -1")[3..].parse().unwrap();
    let mut w1 = peer(&ep, 5, "q");
    w1.send("lock -1");
    let t = Instant::now();
    while etcd.keys_with_prefix("q/").len() < 2 {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut w2 = peer(&ep, 5, "q");
    w2.send("lock -1");
    while etcd.keys_with_prefix("q/").len() < 3 {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    let l = Lock::open("q", &opts(&ep, 5)).unwrap();
    let q = l.list().unwrap();
    let pids: Vec<i32> = q.iter().map(|h| h.pid).collect();
    assert_eq!(pids, [holder.pid(), w1.pid(), w2.pid()]);
    let keys: Vec<_> = q.iter().map(|h| h.etcd.clone().unwrap()).collect();
    assert_eq!(
        keys.iter().map(|k| k.waiting).collect::<Vec<_>>(),
        [false, true, true]
    );
    assert_eq!(keys[0].revision, token);
    assert_eq!(q[0].start, token);
    assert!(keys.windows(2).all(|w| w[0].revision < w[1].revision));
    let host = common_host();
    assert!(
        keys.iter()
            .all(|k| k.host.as_deref() == Some(host.as_str()))
    );
    assert!(keys.iter().all(|k| k.key.starts_with("q/")));
    assert!(q.iter().all(|h| !h.is_self && h.processes.len() == 1));
    let who = l.query(Mode::Exclusive, 0, 0).unwrap().unwrap();
    assert_eq!((who.pid, who.backend), (holder.pid(), Backend::Etcd));
    // The queue is served in order.
    assert!(holder.cmd("unlock").starts_with("ok"));
    assert!(w1.recv().starts_with("ok"));
    assert_eq!(
        l.query(Mode::Exclusive, 0, 0).unwrap().unwrap().pid,
        w1.pid()
    );
}

fn common_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    assert_eq!(
        unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) },
        0
    );
    let n = buf.iter().position(|&b| b == 0).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn bad_names_endpoints_and_requests_get_clear_errors() {
    let etcd = Etcd::start();
    let ep = etcd.endpoints();
    let o = opts(&ep, 2);
    for (name, why) in [
        (String::new(), "empty"),
        ("a\0b".to_owned(), "NUL"),
        ("x".repeat(5000), "long"),
    ] {
        let e = Lock::open(&name, &o).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{why}: {}", e.message());
    }
    for bad in ["ftp://127.0.0.1:1", "http://", " , "] {
        let e = Lock::open("n", &opts(bad, 2)).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{bad}: {}", e.message());
    }
    let combined = Options::new().backends([Backend::Etcd, Backend::Flock]);
    assert_eq!(errno(Lock::open("n", &combined)), libc::EINVAL);

    // A closed port: refused at once, naming the endpoint.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let l = Lock::open("n", &opts(&closed, 2)).unwrap();
    let t = Instant::now();
    let e = l.lock(Mode::Exclusive, 0, 0, None).unwrap_err();
    assert_eq!(e.errno(), libc::ECONNREFUSED, "{}", e.message());
    assert!(e.message().contains(&closed), "{}", e.message());
    assert!(t.elapsed() < Duration::from_secs(2));

    let l = Lock::open("n", &o).unwrap();
    assert_eq!(errno(l.lock(Mode::Shared, 0, 0, None)), libc::EOPNOTSUPP);
    assert_eq!(
        errno(l.lock(Mode::Exclusive, 0, 10, None)),
        libc::EOPNOTSUPP
    );
    assert_eq!(errno(l.fd()), libc::EOPNOTSUPP);
    assert_eq!(errno(l.fence()), libc::ENOLCK, "no lock held, no token");
    l.lock(Mode::Exclusive, 0, 0, None).unwrap();
    // Re-locking converts to itself; the token stays.
    let f = l.fence().unwrap();
    l.lock(Mode::Exclusive, 0, 0, Some(Duration::ZERO)).unwrap();
    assert_eq!(l.fence().unwrap(), f);
    // Waiting for a lock this thread holds through another handle would never end.
    let other = Lock::open("n", &o).unwrap();
    assert_eq!(
        errno(other.lock(Mode::Exclusive, 0, 0, None)),
        libc::EDEADLK
    );
    assert_eq!(
        errno(other.lock(Mode::Exclusive, 0, 0, Some(Duration::ZERO))),
        libc::EAGAIN
    );
    l.close().unwrap();
    assert!(etcd.keys_with_prefix("n/").is_empty(), "close releases");

    let file = TempDir::new("etcd-fence");
    let f = Lock::open(file.file("f"), &Options::new()).unwrap();
    assert_eq!(errno(f.fence()), libc::EOPNOTSUPP);
}

#[test]
fn a_release_after_the_lease_was_revoked_elsewhere_says_the_lock_was_lost() {
    let etcd = Etcd::start();
    let l = Lock::open("revoked", &opts(&etcd.endpoints(), 30)).unwrap();
    l.lock(Mode::Exclusive, 0, 0, None).unwrap();
    let key = l.list().unwrap()[0].etcd.clone().unwrap();
    etcd.ctl(&["lease", "revoke", &format!("{:x}", key.lease)]);
    let e = l.unlock(0, 0).unwrap_err();
    assert_eq!(e.errno(), libc::ENOLCK, "{}", e.message());
    // Said once: the handle holds nothing now and locks again.
    l.unlock(0, 0).unwrap();
    l.lock(Mode::Exclusive, 0, 0, None).unwrap();
    assert!(l.fence().unwrap() > key.revision);
}
