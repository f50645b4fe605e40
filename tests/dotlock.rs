//! The DOTLOCK backend and backend sets, with real processes: lock files made by
//! link(), their record, staleness, race-free breaking, waits woken by inotify or by
//! the owner's death, timeouts, cancel, touch, and sets taken in order and rolled back.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Peer, TRY, TempDir, err};
use unilock::{Backend, Lock, Mode, Options};

const DOT: u32 = Backend::Dotlock as u32;
const OFD: u32 = Backend::Ofd as u32;
const FLOCK: u32 = Backend::Flock as u32;

/// Options for a set of backends (`Backend` bits or-ed together).
fn opts(backends: u32) -> Options {
    let all = [
        Backend::Dotlock,
        Backend::Flock,
        Backend::Ofd,
        Backend::Posix,
    ];
    Options::new().backends(all.into_iter().filter(|&b| backends & b as u32 != 0))
}

fn stale_opts(secs: u32) -> Options {
    opts(DOT).stale_after_s(secs)
}

fn errno(r: unilock::Result<()>) -> i32 {
    r.expect_err("the call should have failed").errno()
}

/// Names in `dir` other than `keep`: temporary files left behind show up here.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

/// Sets the file's modification time `secs` seconds into the past.
fn age(path: &Path, secs: u64) {
    let t = std::time::SystemTime::now() - Duration::from_secs(secs);
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(t).unwrap();
}

/// A process that stays alive until dropped (an owner whose pid is live).
struct Sleeper(std::process::Child);

impl Sleeper {
    fn new() -> Sleeper {
        Sleeper(Command::new("sleep").arg("60").spawn().unwrap())
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

#[test]
fn peer_main() {
    if std::env::var_os(common::PEER_ENV).is_some() {
        common::peer_loop();
    }
}

#[test]
fn the_lock_file_exists_only_while_held_and_names_its_owner() {
    let dir = TempDir::new("dot-basic");
    let path = dir.0.join("app.lock");
    let l = Lock::open(&path, &opts(DOT)).unwrap();
    assert!(!path.exists(), "opening created the lock file");
    l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the lock file's mode");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(std::process::id().to_string().as_str()));
    let rest: Vec<&str> = lines.collect();
    let me = std::process::id();
    assert!(
        rest.contains(&format!("start={}", start_time(me)).as_str()),
        "{text}"
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(
        rest.contains(&format!("host={}", host.trim()).as_str()),
        "{text}"
    );
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(
        rest.contains(&format!("boot={}", boot.trim()).as_str()),
        "{text}"
    );
    // Re-locking what it holds is success, and touches nothing.
    l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    assert_eq!(leftovers(&dir.0, &["app.lock"]), Vec::<String>::new());
    l.unlock(0, 0).unwrap();
    assert!(!path.exists(), "unlock left the lock file");
    l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    l.close().unwrap();
    assert!(!path.exists(), "close left the lock file");
    assert_eq!(leftovers(&dir.0, &[]), Vec::<String>::new());
}

#[test]
fn dotlock_refuses_shared_ranges_descriptors_and_unlink() {
    let dir = TempDir::new("dot-refuse");
    let path = dir.0.join("app.lock");
    let l = Lock::open(&path, &opts(DOT)).unwrap();
    let e = l.lock(Mode::Shared, 0, 0, TRY).unwrap_err();
    assert_eq!(e.errno(), libc::EOPNOTSUPP);
    assert!(e.to_string().contains("exclusive"), "{e}");
    let e = l.lock(Mode::Exclusive, 0, 10, TRY).unwrap_err();
    assert_eq!(e.errno(), libc::EOPNOTSUPP);
    assert!(e.to_string().contains("OFD"), "{e}");
    assert_eq!(l.fd().unwrap_err().errno(), libc::EOPNOTSUPP);
    let f = std::fs::File::create(dir.0.join("f")).unwrap();
    use std::os::fd::AsFd;
    assert_eq!(
        Lock::from_fd(f.as_fd(), &opts(DOT)).unwrap_err().errno(),
        libc::EINVAL
    );
    let o = opts(DOT).flags(unilock::Flags::UNLINK);
    assert_eq!(Lock::open(&path, &o).unwrap_err().errno(), libc::EOPNOTSUPP);
    let missing = dir.0.join("no-such-dir").join("app.lock");
    assert_eq!(
        Lock::open(missing, &opts(DOT)).unwrap_err().errno(),
        libc::ENOENT
    );
    assert!(!path.exists());
}

#[test]
fn handles_in_one_process_exclude_each_other_and_a_self_wait_deadlocks() {
    let dir = TempDir::new("dot-self");
    let path = dir.0.join("app.lock");
    let a = Lock::open(&path, &opts(DOT)).unwrap();
    let b = Lock::open(&path, &opts(DOT)).unwrap();
    a.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    assert_eq!(errno(b.lock(Mode::Exclusive, 0, 0, TRY)), libc::EAGAIN);
    assert_eq!(errno(b.lock(Mode::Exclusive, 0, 0, None)), libc::EDEADLK);
    let who = b.query(Mode::Exclusive, 0, 0).unwrap().expect("held");
    assert_eq!(who.backend, Backend::Dotlock);
    assert!(who.is_self);
    // Another thread waits, and gets it when the first handle lets go.
    std::thread::scope(|s| {
        let t = s.spawn(|| b.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(10))));
        std::thread::sleep(Duration::from_millis(50));
        a.unlock(0, 0).unwrap();
        t.join().unwrap().unwrap();
    });
    assert!(path.exists());
    b.unlock(0, 0).unwrap();
    assert!(!path.exists());
}

#[test]
fn a_lock_held_by_another_process_fails_a_try_and_wakes_a_waiter_when_released() {
    let dir = TempDir::new("dot-peer");
    let path = dir.0.join("app.lock");
    let p = path.display();
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open_bits a {p} {DOT}")), "ok");
    assert_eq!(peer.cmd("lock a ex 0 0 0"), "ok");
    let l = Lock::open(&path, &opts(DOT)).unwrap();
    let e = l.lock(Mode::Exclusive, 0, 0, TRY).unwrap_err();
    assert_eq!(e.errno(), libc::EAGAIN);
    assert!(e.to_string().contains(&peer.pid().to_string()), "{e}");
    let who = l.query(Mode::Exclusive, 0, 0).unwrap().expect("held");
    assert_eq!(who.pid, peer.pid());
    assert!(!who.is_self);
    let listed = l.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].pid, peer.pid());
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(20)))
                .map(|()| Instant::now())
        });
        std::thread::sleep(Duration::from_millis(100));
        let released = Instant::now();
        assert_eq!(peer.cmd("unlock a 0 0"), "ok");
        let got = waiter.join().unwrap().unwrap();
        // Woken by inotify, not by the once-a-second safety net.
        let lag = got.duration_since(released);
        assert!(lag < Duration::from_millis(500), "hand-off took {lag:?}");
    });
    assert_eq!(peer.cmd("lock a ex 0 0 0"), err(libc::EAGAIN));
    l.unlock(0, 0).unwrap();
    assert_eq!(leftovers(&dir.0, &[]), Vec::<String>::new());
}

#[test]
fn timeouts_end_on_time_and_cancel_ends_a_wait() {
    let dir = TempDir::new("dot-timeout");
    let path = dir.0.join("app.lock");
    let sleeper = Sleeper::new();
    std::fs::write(&path, format!("{}\n", sleeper.pid())).unwrap();
    let l = Lock::open(&path, &opts(DOT)).unwrap();
    let started = Instant::now();
    let e = l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(200)));
    let took = started.elapsed();
    assert_eq!(errno(e), libc::ETIMEDOUT);
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            let r = l.lock(Mode::Exclusive, 0, 0, None);
            (r, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(100));
        let mut cancelled_at = None;
        while cancelled_at.is_none() {
            if l.cancel() {
                cancelled_at = Some(Instant::now());
            }
        }
        let (r, ended) = t.join().unwrap();
        assert_eq!(errno(r), libc::ECANCELED);
        let lag = ended.duration_since(cancelled_at.unwrap());
        assert!(lag < Duration::from_millis(500), "cancel took {lag:?}");
    });
    // The tool's file is untouched and no temporary file is left.
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{}\n", sleeper.pid())
    );
    assert_eq!(leftovers(&dir.0, &["app.lock"]), Vec::<String>::new());
}

#[test]
fn a_lock_whose_owner_died_is_broken_at_once_and_a_waiter_wakes_on_the_death() {
    let dir = TempDir::new("dot-dead");
    let path = dir.0.join("app.lock");
    let p = path.display();
    // Killed while holding: the file stays, its owner is gone.
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open_bits a {p} {DOT}")), "ok");
    assert_eq!(peer.cmd("lock a ex 0 0 0"), "ok");
    peer.kill();
    assert!(path.exists());
    let l = Lock::open(&path, &opts(DOT)).unwrap();
    l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    l.unlock(0, 0).unwrap();
    // A waiter wakes when the owner dies, though no file event happens.
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open_bits a {p} {DOT}")), "ok");
    assert_eq!(peer.cmd("lock a ex 0 0 0"), "ok");
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(20)))
                .map(|()| Instant::now())
        });
        std::thread::sleep(Duration::from_millis(100));
        let killed = Instant::now();
        peer.kill();
        let got = waiter.join().unwrap().unwrap();
        let lag = got.duration_since(killed);
        assert!(
            lag < Duration::from_millis(500),
            "woke {lag:?} after the death"
        );
    });
    l.unlock(0, 0).unwrap();
    assert_eq!(leftovers(&dir.0, &[]), Vec::<String>::new());
}

#[test]
fn staleness_follows_the_record() {
    let dir = TempDir::new("dot-stale");
    let path = dir.0.join("app.lock");
    let sleeper = Sleeper::new();
    let live = sleeper.pid();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let boot = boot.trim();
    let start = start_time(live);
    let l = Lock::open(&path, &opts(DOT)).unwrap();
    // (record, stale?)
    let cases = [
        (format!("{live}\n"), false),
        (
            format!("{live}\nstart={start}\nhost={host}\nboot={boot}\n"),
            false,
        ),
        (format!("{live}\nstart={}\n", start + 1), true),
        (format!("{live}\nboot=00000000-another-boot\n"), true),
        (format!("{}\n", i32::MAX), true),
        (format!("{}\nhost={host}-elsewhere\n", i32::MAX), false),
        (String::new(), false),
        ("0".to_string(), false),
    ];
    for (record, stale) in &cases {
        std::fs::write(&path, record).unwrap();
        let r = l.lock(Mode::Exclusive, 0, 0, TRY);
        if *stale {
            r.unwrap_or_else(|e| panic!("{record:?} should be stale: {e}"));
            assert!(
                std::fs::read_to_string(&path)
                    .unwrap()
                    .starts_with(&format!("{}\n", std::process::id()))
            );
            l.unlock(0, 0).unwrap();
        } else {
            assert_eq!(errno(r), libc::EAGAIN, "{record:?} should be live");
            assert_eq!(&std::fs::read_to_string(&path).unwrap(), record);
            assert!(l.query(Mode::Exclusive, 0, 0).unwrap().is_some());
        }
    }
    // By age: never with stale_after_s 0, even without a checkable owner; any file
    // after stale_after_s (300 is liblockfile's rule for files without a pid).
    std::fs::write(&path, "").unwrap();
    age(&path, 3600);
    assert!(l.query(Mode::Exclusive, 0, 0).unwrap().is_some());
    assert_eq!(errno(l.lock(Mode::Exclusive, 0, 0, TRY)), libc::EAGAIN);
    let liblockfile_rule = Lock::open(&path, &stale_opts(300)).unwrap();
    assert_eq!(liblockfile_rule.query(Mode::Exclusive, 0, 0).unwrap(), None);
    liblockfile_rule.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    liblockfile_rule.unlock(0, 0).unwrap();
    std::fs::write(&path, format!("{live}\n")).unwrap();
    age(&path, 3600);
    assert_eq!(errno(l.lock(Mode::Exclusive, 0, 0, TRY)), libc::EAGAIN);
    age(&path, 3);
    let aged = Lock::open(&path, &stale_opts(2)).unwrap();
    aged.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    aged.unlock(0, 0).unwrap();
    assert!(!path.exists());
}

#[test]
fn a_waiter_takes_a_lock_when_it_becomes_stale_by_age() {
    let dir = TempDir::new("dot-age-wait");
    let path = dir.0.join("app.lock");
    let sleeper = Sleeper::new();
    std::fs::write(&path, format!("{}\n", sleeper.pid())).unwrap();
    let l = Lock::open(&path, &stale_opts(1)).unwrap();
    let started = Instant::now();
    l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(10)))
        .unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    l.unlock(0, 0).unwrap();
}

#[test]
fn touch_refreshes_and_a_broken_lock_is_reported() {
    let dir = TempDir::new("dot-touch");
    let path = dir.0.join("app.lock");
    let holder = Lock::open(&path, &stale_opts(5)).unwrap();
    holder.touch().unwrap(); // holds nothing: nothing to do
    holder.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    age(&path, 100);
    holder.touch().unwrap();
    let mtime = std::fs::metadata(&path).unwrap().mtime();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - mtime).abs() <= 2,
        "touch did not refresh: {mtime} vs {now}"
    );
    // Another process with stale_after_s breaks a lock not refreshed in time.
    age(&path, 100);
    let mut breaker = Command::new(env!("CARGO_BIN_EXE_unilock"))
        .args(["-b", "dotlock", "--stale", "5", "-n"])
        .arg(&path)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    let pid = breaker.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&path).map_or(true, |t| t.lines().next() != Some(&pid)) {
        assert!(
            Instant::now() < deadline,
            "the breaker did not take the lock"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(errno(holder.touch()), libc::ENOLCK);
    let e = holder.unlock(0, 0).unwrap_err();
    assert_eq!(e.errno(), libc::ENOLCK);
    assert!(e.to_string().contains("stale"), "{e}");
    assert!(
        path.exists(),
        "the old holder removed the new holder's lock file"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().lines().next(),
        Some(pid.as_str())
    );
    assert_eq!(errno(holder.lock(Mode::Exclusive, 0, 0, TRY)), libc::EAGAIN);
    breaker.kill().unwrap();
    breaker.wait().unwrap();
    // Its owner is gone now: stale, and taken.
    holder.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    holder.unlock(0, 0).unwrap();
    assert!(!path.exists());
}

const STORM_ENV: &str = "UNILOCK_DOT_STORM";

/// A worker of the storm: takes the lock, checks it is alone through a shared
/// counter, and exits without releasing (every other round releases properly), so the
/// next ones find a stale lock and break it at once.
#[test]
fn storm_worker_main() {
    let Some(spec) = std::env::var_os(STORM_ENV) else {
        return;
    };
    let spec = spec.into_string().unwrap();
    let (path, counter, rounds) = {
        let w: Vec<&str> = spec.split(' ').collect();
        (
            PathBuf::from(w[0]),
            PathBuf::from(w[1]),
            w[2].parse::<u32>().unwrap(),
        )
    };
    let shm = common::Shm::map(&counter, 2);
    let (inside, overlaps) = (shm.at(0), shm.at(1));
    for i in 0..rounds {
        let l = Lock::open(&path, &opts(DOT)).unwrap();
        l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(30)))
            .unwrap();
        if inside.fetch_add(1, Ordering::SeqCst) != 0 {
            overlaps.fetch_add(1, Ordering::SeqCst);
        }
        for _ in 0..100 {
            std::hint::spin_loop();
        }
        inside.fetch_sub(1, Ordering::SeqCst);
        if i % 2 == 1 {
            l.unlock(0, 0).unwrap();
        } else {
            std::mem::forget(l);
            // Die holding it: the pid is gone once the parent reaps this process.
            std::process::exit(0);
        }
    }
    std::process::exit(0);
}

#[test]
fn many_processes_breaking_stale_locks_never_hold_it_twice() {
    let dir = TempDir::new("dot-storm");
    let path = dir.0.join("app.lock");
    let counter = dir.0.join("counter");
    let shm = common::Shm::create(&counter, 2);
    let spec = format!("{} {} 2", path.display(), counter.display());
    let spawn = || {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "storm_worker_main", "--nocapture"])
            .env(STORM_ENV, &spec)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Four at a time, 200 workers: most find a lock whose owner just died.
    let mut running: Vec<_> = (0..4).map(|_| spawn()).collect();
    let mut done = 0;
    while done < 200 {
        let mut c = running.remove(0);
        assert!(c.wait().unwrap().success(), "a worker failed");
        done += 1;
        running.push(spawn());
    }
    for mut c in running {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(shm.get(1), 0, "two processes held the lock at once");
    // Only the last worker's stale lock file may be left, and no temporary file.
    assert_eq!(
        leftovers(&dir.0, &["app.lock", "counter"]),
        Vec::<String>::new()
    );
}

#[test]
fn a_mailbox_set_takes_the_dot_lock_then_the_kernel_lock_and_releases_both() {
    let dir = TempDir::new("dot-set");
    let mbox = dir.file("mbox");
    let dotfile = dir.0.join("mbox.lock");
    let m = mbox.display();
    let set = Lock::open(&mbox, &opts(DOT | OFD)).unwrap();
    assert_eq!(set.backends(), [Backend::Dotlock, Backend::Ofd]);
    assert!(set.fd().is_ok());
    set.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    assert!(dotfile.exists());
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open a {m} ofd")), "ok");
    assert_eq!(peer.cmd("lock a ex 0 0 0"), err(libc::EAGAIN));
    assert_eq!(
        peer.cmd(&format!("open_bits d {} {DOT}", dotfile.display())),
        "ok"
    );
    assert_eq!(peer.cmd("lock d ex 0 0 0"), err(libc::EAGAIN));
    let listed = set.list().unwrap();
    assert!(listed.iter().any(|h| h.backend == Backend::Dotlock));
    assert!(listed.iter().any(|h| h.backend == Backend::Ofd));
    set.unlock(0, 0).unwrap();
    assert!(!dotfile.exists());
    assert_eq!(peer.cmd("lock a ex 0 0 0"), "ok");
    // The fcntl lock is taken: the set fails and leaves no lock file behind.
    let e = set.lock(Mode::Exclusive, 0, 0, TRY).unwrap_err();
    assert_eq!(e.errno(), libc::EAGAIN);
    assert!(!dotfile.exists(), "a failed set kept its lock file");
    let started = Instant::now();
    let e = set.lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(150)));
    assert_eq!(errno(e), libc::ETIMEDOUT);
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(!dotfile.exists(), "a timed-out set kept its lock file");
    assert_eq!(peer.cmd("unlock a 0 0"), "ok");
    // The dot lock is taken: the set fails before it takes the kernel lock.
    assert_eq!(peer.cmd("lock d ex 0 0 0"), "ok");
    assert_eq!(errno(set.lock(Mode::Exclusive, 0, 0, TRY)), libc::EAGAIN);
    assert_eq!(peer.cmd("lock a ex 0 0 0"), "ok");
    assert_eq!(peer.cmd("unlock a 0 0"), "ok");
    assert_eq!(peer.cmd("unlock d 0 0"), "ok");
    // Shared is refused with DOTLOCK in the set; ranges too.
    assert_eq!(errno(set.lock(Mode::Shared, 0, 0, TRY)), libc::EOPNOTSUPP);
    assert_eq!(
        errno(set.lock(Mode::Exclusive, 0, 10, TRY)),
        libc::EOPNOTSUPP
    );
    set.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    set.close().unwrap();
    assert!(!dotfile.exists());
    assert_eq!(leftovers(&dir.0, &["mbox"]), Vec::<String>::new());
}

#[test]
fn a_failed_set_conversion_leaves_what_the_handle_held() {
    let dir = TempDir::new("dot-set-convert");
    let file = dir.file("f");
    let f = file.display();
    let set = Lock::open(&file, &opts(FLOCK | OFD)).unwrap();
    set.lock(Mode::Shared, 0, 0, TRY).unwrap();
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open o {f} ofd")), "ok");
    assert_eq!(peer.cmd("lock o sh 0 0 0"), "ok");
    assert_eq!(peer.cmd(&format!("open l {f} flock")), "ok");
    // The flock upgrade succeeds, the OFD one does not: the flock lock goes back to
    // shared, so a shared flock peer still gets in.
    assert_eq!(errno(set.lock(Mode::Exclusive, 0, 0, TRY)), libc::EAGAIN);
    assert_eq!(peer.cmd("lock l sh 0 0 0"), "ok");
    assert_eq!(peer.cmd("unlock l 0 0"), "ok");
    assert_eq!(peer.cmd("lock l ex 0 0 0"), err(libc::EAGAIN));
    // From nothing: a failure releases the flock lock taken on the way.
    set.unlock(0, 0).unwrap();
    assert_eq!(peer.cmd("unlock o 0 0"), "ok");
    assert_eq!(peer.cmd("lock o ex 0 0 0"), "ok");
    assert_eq!(errno(set.lock(Mode::Exclusive, 0, 0, TRY)), libc::EAGAIN);
    assert_eq!(peer.cmd("lock l ex 0 0 0"), "ok");
}

#[cfg(feature = "capi")]
#[test]
fn the_c_api_takes_dotlock_handles() {
    use ::unilock::capi::*;
    use std::ffi::CString;
    let dir = TempDir::new("dot-capi");
    let path = CString::new(dir.0.join("app.lock").to_str().unwrap()).unwrap();
    let mut o = std::mem::MaybeUninit::<unilock_options>::uninit();
    // SAFETY: options structs are live locals.
    unsafe { unilock_options_init(o.as_mut_ptr()) };
    // SAFETY: initialized by unilock_options_init.
    let mut o = unsafe { o.assume_init() };
    o.backends = UNILOCK_BACKEND_DOTLOCK;
    let mut l = std::ptr::null_mut();
    // SAFETY: paths are NUL-terminated, options are whole structs, out pointers are live
    // locals; handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    assert_eq!(unsafe { unilock_open(path.as_ptr(), &o, &mut l) }, 0);
    assert_eq!(unsafe { unilock_fd(l) }, -libc::EOPNOTSUPP);
    assert_eq!(
        unsafe { unilock_lock(l, UNILOCK_SHARED, 0, 0, 0) },
        -libc::EOPNOTSUPP
    );
    assert_eq!(unsafe { unilock_lock(l, UNILOCK_EXCLUSIVE, 0, 0, 0) }, 0);
    assert_eq!(unsafe { unilock_touch(l) }, 0);
    let mut who = std::mem::MaybeUninit::<unilock_holder>::zeroed();
    let mut count = 0usize;
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading); buffers have room for `cap` holders and counts are live
    // locals.
    assert_eq!(
        unsafe { unilock_list(l, who.as_mut_ptr(), 1, &mut count) },
        0
    );
    assert_eq!(count, 1);
    // SAFETY: filled by unilock_list.
    let who = unsafe { who.assume_init() };
    assert_eq!(who.backend, UNILOCK_BACKEND_DOTLOCK);
    assert_eq!(who.pid, std::process::id() as i32);
    assert_eq!(who.is_self, 1);
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    assert_eq!(unsafe { unilock_unlock(l, 0, 0) }, 0);
    assert_eq!(unsafe { unilock_close(l) }, 0);
    assert!(!dir.0.join("app.lock").exists());
}

const EMFILE_ENV: &str = "UNILOCK_DOT_EMFILE";

/// The RLIMIT_NOFILE soft limit, set to `limit` (returns the old one).
fn set_nofile(limit: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old), 0);
        let new = libc::rlimit {
            rlim_cur: limit,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &new), 0);
    }
    old.rlim_cur
}

/// A worker for the EMFILE test, run in a fresh process (the host name and boot id are
/// read once per process): a lock attempt made while no descriptor can be opened fails,
/// and afterwards a lock file left by a dead process of this host is still broken.
#[test]
fn emfile_worker_main() {
    let Some(dir) = std::env::var_os(EMFILE_ENV) else {
        return;
    };
    use std::os::fd::AsRawFd;
    let path = PathBuf::from(dir).join("app.lock");
    let l = Lock::open(&path, &opts(DOT)).unwrap();
    // The lowest free descriptor becomes the limit: every open now fails with EMFILE.
    let lowest = std::fs::File::open("/dev/null").unwrap().as_raw_fd();
    let old = set_nofile(lowest as u64);
    let e = l.lock(Mode::Exclusive, 0, 0, TRY).unwrap_err();
    set_nofile(old);
    assert_eq!(e.errno(), libc::EMFILE, "{e}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    std::fs::write(&path, format!("{}\nhost={}\n", i32::MAX, host.trim())).unwrap();
    l.lock(Mode::Exclusive, 0, 0, TRY)
        .unwrap_or_else(|e| panic!("the dead owner's lock file was not broken: {e}"));
    l.unlock(0, 0).unwrap();
    assert!(!path.exists());
    std::process::exit(0);
}

#[test]
fn a_lock_attempt_without_descriptors_does_not_stop_stale_breaking_later() {
    let dir = TempDir::new("dot-emfile");
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "emfile_worker_main", "--nocapture"])
        .env(EMFILE_ENV, &dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits up to `limit` for `child` to exit: its exit status, or `None` (then it is
/// killed) when it was still running.
fn wait_at_most(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let began = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if began.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn a_lock_file_path_that_is_not_a_regular_file_is_refused_at_once() {
    let dir = TempDir::new("dot-types");
    let fifo = dir.0.join("fifo");
    mkfifo(&fifo);
    let sub = dir.0.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let link = dir.0.join("link");
    std::os::unix::fs::symlink("elsewhere", &link).unwrap();
    let cases = [
        (fifo.as_path(), libc::EINVAL, "a FIFO"),
        (Path::new("/dev/null"), libc::EINVAL, "a character device"),
        (sub.as_path(), libc::EINVAL, "a directory"),
        (link.as_path(), libc::ELOOP, "a symbolic link"),
    ];
    // At open, when it is there already.
    for (path, errno, kind) in cases {
        let e = Lock::open(path, &opts(DOT)).unwrap_err();
        assert_eq!(e.errno(), errno, "{}: {e}", path.display());
        assert!(e.to_string().contains(kind), "{}: {e}", path.display());
        assert!(e.to_string().contains("regular file"), "{e}");
    }
    // At lock time, when it appears later: a prompt error, not a wait.
    let later = dir.0.join("later");
    let l = Lock::open(&later, &opts(DOT)).unwrap();
    let appear: [(&dyn Fn(), i32, &str); 3] = [
        (&|| mkfifo(&later), libc::EINVAL, "a FIFO"),
        (
            &|| std::fs::create_dir(&later).unwrap(),
            libc::EINVAL,
            "a directory",
        ),
        (
            &|| std::os::unix::fs::symlink("elsewhere", &later).unwrap(),
            libc::ELOOP,
            "a symbolic link",
        ),
    ];
    for (make, errno, kind) in appear {
        make();
        let began = Instant::now();
        let e = l
            .lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(10)))
            .unwrap_err();
        assert!(began.elapsed() < Duration::from_secs(2), "{e}");
        assert_eq!(e.errno(), errno, "{e}");
        assert!(e.to_string().contains(kind), "{e}");
        assert_eq!(l.query(Mode::Exclusive, 0, 0).unwrap_err().errno(), errno);
        let _ = std::fs::remove_file(&later);
        let _ = std::fs::remove_dir(&later);
    }
    assert_eq!(
        leftovers(&dir.0, &["fifo", "sub", "link"]),
        Vec::<String>::new()
    );
    // The command refuses /dev/null as a lock file instead of waiting forever.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_unilock"))
        .args(["-b", "dotlock", "/dev/null", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_at_most(&mut cmd, Duration::from_secs(5))
        .expect("unilock -b dotlock /dev/null true did not return");
    assert!(!status.success());
    let mut stderr = String::new();
    use std::io::Read;
    cmd.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("character device"), "{stderr}");
}

#[test]
fn a_file_that_is_not_a_lock_file_is_held_and_never_removed() {
    let dir = TempDir::new("dot-data");
    let dead = i32::MAX; // above pid_max: no process has it
    let mut big = format!("{dead}\nstart=1\n");
    while big.len() < 4096 {
        big.push_str("note=a line of a file that only looks like a lock record\n");
    }
    let cases: [(&str, Vec<u8>); 5] = [
        ("data.txt", b"123999999\nimportant data...\n".to_vec()),
        ("big.lock", big.into_bytes()),
        (
            "binary.lock",
            [b"7\n".as_slice(), &[0xde, 0xad, 0xbe, 0xef]].concat(),
        ),
        ("words.lock", b"2147483647 is not a pid\n".to_vec()),
        ("negative.lock", b"-5\n".to_vec()),
    ];
    for (name, content) in &cases {
        let path = dir.0.join(name);
        std::fs::write(&path, content).unwrap();
        age(&path, 3600);
        // Neither a dead pid nor the age makes it stale: it is not a lock file.
        for stale in [0, 1] {
            let l = Lock::open(&path, &stale_opts(stale)).unwrap();
            let e = l.lock(Mode::Exclusive, 0, 0, TRY).unwrap_err();
            assert_eq!(e.errno(), libc::EAGAIN, "{name}: {e}");
            assert!(e.to_string().contains("not a lock file"), "{name}: {e}");
            let e = l
                .lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(50)))
                .unwrap_err();
            assert_eq!(e.errno(), libc::ETIMEDOUT, "{name}: {e}");
            assert!(e.to_string().contains("not a lock file"), "{name}: {e}");
            let who = l.query(Mode::Exclusive, 0, 0).unwrap().expect("held");
            assert_eq!(who.pid, -1, "{name}");
            assert_eq!(l.list().unwrap()[0].pid, -1, "{name}");
        }
        assert_eq!(&std::fs::read(&path).unwrap(), content, "{name} changed");
    }
    // The formats of the lock tools with a dead owner are still lock files, and broken.
    for record in [
        format!("{dead}\n"),
        format!("{dead}"),
        format!("  {dead}\0\n"),
        format!("{dead}\nstart=12\n"),
    ] {
        let path = dir.0.join("tool.lock");
        std::fs::write(&path, &record).unwrap();
        let l = Lock::open(&path, &opts(DOT)).unwrap();
        l.lock(Mode::Exclusive, 0, 0, TRY)
            .unwrap_or_else(|e| panic!("{record:?}: {e}"));
        l.unlock(0, 0).unwrap();
    }
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    assert_eq!(leftovers(&dir.0, &names), Vec::<String>::new());
}

/// A process that holds a flock(2) lock on a file (flock(1) on a descriptor of a shell
/// that then becomes `sleep`, the only process with the lock) until dropped.
struct FlockHolder(std::process::Child);

impl FlockHolder {
    fn start(path: &Path, shared: bool) -> FlockHolder {
        let mode = if shared { "-s" } else { "-x" };
        let script = format!("exec 9<\"$0\" && flock {mode} 9 && echo ready && exec sleep 60");
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .arg(path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        common::expect_ready(&mut child, "flock(1)");
        FlockHolder(child)
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for FlockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `call` in a thread and fails unless it returns within `limit`; past the limit
/// `unblock` is run first, so that a call blocked forever still ends the test. Returns
/// the call's result and how long it took.
fn returns_within<T: Send>(
    limit: Duration,
    call: impl FnOnce() -> T + Send,
    unblock: impl FnOnce(),
) -> (T, Duration) {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let began = Instant::now();
        let t = s.spawn(move || {
            let r = call();
            let _ = tx.send(began.elapsed());
            r
        });
        let took = rx.recv_timeout(limit);
        if took.is_err() {
            unblock();
        }
        let r = t.join().unwrap();
        let took = took.unwrap_or_else(|_| panic!("the call did not return within {limit:?}"));
        (r, took)
    })
}

#[test]
fn a_release_does_not_wait_for_shared_flocks_on_the_lock_file() {
    let dir = TempDir::new("dot-release-sh");
    let path = dir.0.join("app.lock");
    // Another process (flock -s app.lock), for unlock and for close.
    for close in [false, true] {
        let l = Lock::open(&path, &opts(DOT)).unwrap();
        l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
        let mut holder = Some(FlockHolder::start(&path, true));
        let (r, took) = returns_within(
            Duration::from_secs(5),
            || if close { l.close() } else { l.unlock(0, 0) },
            || drop(holder.take()),
        );
        r.unwrap();
        assert!(took < Duration::from_millis(400), "{took:?}");
        assert!(!path.exists(), "the released lock file is still there");
    }
    // Another handle of this process.
    let l = Lock::open(&path, &opts(DOT)).unwrap();
    l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    let reader = Lock::open(&path, &opts(FLOCK)).unwrap();
    reader.lock(Mode::Shared, 0, 0, TRY).unwrap();
    let (r, took) = returns_within(
        Duration::from_secs(5),
        || l.unlock(0, 0),
        || reader.unlock(0, 0).unwrap(),
    );
    r.unwrap();
    assert!(took < Duration::from_millis(400), "{took:?}");
    assert!(!path.exists(), "the released lock file is still there");
    assert_eq!(leftovers(&dir.0, &[]), Vec::<String>::new());
}

#[test]
fn a_release_against_an_exclusive_flock_returns_and_leaves_the_file_marked_released() {
    let dir = TempDir::new("dot-release-ex");
    let path = dir.0.join("app.lock");
    let other = Lock::open(&path, &opts(DOT)).unwrap();
    for close in [false, true] {
        let l = Lock::open(&path, &opts(DOT)).unwrap();
        l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
        let mut holder = Some(FlockHolder::start(&path, false));
        let pid = holder.as_ref().unwrap().pid();
        let (r, took) = returns_within(
            Duration::from_secs(5),
            || if close { l.close() } else { l.unlock(0, 0) },
            || drop(holder.take()),
        );
        let e = r.unwrap_err();
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!(e.errno(), libc::ENOLCK, "{e}");
        assert!(e.to_string().contains("flock"), "{e}");
        assert!(e.to_string().contains(&pid.to_string()), "{e}");
        // Left in place, marked released: stale to unilock, but not removed while the
        // flock is held.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(&format!("{}\n", std::process::id())),
            "{text}"
        );
        assert!(text.lines().any(|l| l == "released=1"), "{text}");
        let (r, _) = returns_within(
            Duration::from_secs(5),
            || other.lock(Mode::Exclusive, 0, 0, TRY),
            || drop(holder.take()),
        );
        let e = r.unwrap_err();
        assert_eq!(e.errno(), libc::EAGAIN, "{e}");
        assert!(e.to_string().contains("flock"), "{e}");
        // Once the flock is gone, the next lock call removes it.
        drop(holder);
        other.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
        other.unlock(0, 0).unwrap();
        assert!(!path.exists());
    }
    assert_eq!(leftovers(&dir.0, &[]), Vec::<String>::new());
}

#[test]
fn a_stale_lock_file_that_another_process_flocks_is_held_not_spun_on() {
    let dir = TempDir::new("dot-break-flocked");
    let path = dir.0.join("app.lock");
    std::fs::write(&path, format!("{}\n", i32::MAX)).unwrap();
    let mut holder = Some(FlockHolder::start(&path, false));
    let l = Lock::open(&path, &opts(DOT)).unwrap();
    let (r, took) = returns_within(
        Duration::from_secs(5),
        || l.lock(Mode::Exclusive, 0, 0, TRY),
        || drop(holder.take()),
    );
    let e = r.unwrap_err();
    assert_eq!(e.errno(), libc::EAGAIN, "{e}");
    assert!(e.to_string().contains("flock"), "{e}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (r, took) = returns_within(
        Duration::from_secs(5),
        || l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(200))),
        || drop(holder.take()),
    );
    let e = r.unwrap_err();
    assert_eq!(e.errno(), libc::ETIMEDOUT, "{e}");
    assert!(e.to_string().contains("flock"), "{e}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    // A waiter gets it soon after the flock goes.
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(10)))
                .map(|()| Instant::now())
        });
        std::thread::sleep(Duration::from_millis(100));
        let released = Instant::now();
        drop(holder.take());
        let got = waiter.join().unwrap().unwrap();
        let lag = got.duration_since(released);
        assert!(
            lag < Duration::from_secs(1),
            "took {lag:?} after the flock went"
        );
    });
    l.unlock(0, 0).unwrap();
    assert!(!path.exists());
}

/// The first 8 hex digits of this boot's id, as temporary file names carry it.
fn boot_tag() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    boot.trim().replace('-', "")[..8].to_owned()
}

#[test]
fn a_failed_attempt_removes_the_temporary_files_of_dead_processes_of_this_host() {
    let dir = TempDir::new("dot-temps");
    let path = dir.0.join("app.lock");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();
    let boot = boot_tag();
    let other_boot = if boot == "00000000" {
        "11111111"
    } else {
        "00000000"
    };
    let sleeper = Sleeper::new();
    let (live, start) = (sleeper.pid(), start_time(sleeper.pid()));
    let dead = i32::MAX; // above pid_max: no process has it
    let me = std::process::id();
    // .ulk~HOST~BOOT~PID~START~N~LOCKNAME.tmp
    let temp = |host: &str, boot: &str, pid: String, start: String, name: &str| {
        format!(".ulk~{host}~{boot}~{pid}~{start}~1f~{name}.tmp")
    };
    let removed = [
        temp(host, &boot, dead.to_string(), "7".into(), "app.lock"),
        temp(host, &boot, dead.to_string(), String::new(), "app.lock"),
        temp(host, "", dead.to_string(), String::new(), "app.lock"),
        // pid reused by another process
        temp(
            host,
            &boot,
            live.to_string(),
            (start + 1).to_string(),
            "app.lock",
        ),
        // made before this host last booted
        temp(
            host,
            other_boot,
            live.to_string(),
            start.to_string(),
            "app.lock",
        ),
        // another lock file's, in the same directory
        temp(host, &boot, dead.to_string(), "7".into(), "mbox.lock"),
    ];
    let kept = [
        temp(host, &boot, live.to_string(), start.to_string(), "app.lock"),
        temp(host, &boot, live.to_string(), String::new(), "app.lock"),
        temp(
            host,
            &boot,
            me.to_string(),
            start_time(me).to_string(),
            "app.lock",
        ),
        temp(
            &format!("{host}-elsewhere"),
            &boot,
            dead.to_string(),
            "7".into(),
            "app.lock",
        ),
        temp("", &boot, dead.to_string(), "7".into(), "app.lock"),
        format!(".app.lock.{dead}.0.{host}.tmp"),
        format!(".ulk~{host}~{boot}~{dead}~7.tmp"),
        format!(".ulk~{host}~{boot}~x{dead}~7~1f~app.lock.tmp"),
        "notes.txt".to_owned(),
    ];
    for name in removed.iter().chain(&kept) {
        std::fs::write(dir.0.join(name), format!("{dead}\n")).unwrap();
    }
    // A directory with a dead process's name is not a temporary file either.
    let dir_named = temp(host, &boot, dead.to_string(), "8".into(), "app.lock");
    std::fs::create_dir(dir.0.join(&dir_named)).unwrap();
    std::fs::write(&path, format!("{live}\n")).unwrap();
    let mut all_kept: Vec<&str> = kept.iter().map(String::as_str).collect();
    all_kept.extend([dir_named.as_str(), "app.lock"]);
    let l = Lock::open(&path, &opts(DOT)).unwrap();
    assert_eq!(errno(l.lock(Mode::Exclusive, 0, 0, TRY)), libc::EAGAIN);
    let mut left = leftovers(&dir.0, &[]);
    left.sort();
    let mut want: Vec<String> = all_kept.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(left, want);
    // Once per directory and process for a while: a large spool is not read each time.
    let later = temp(host, &boot, dead.to_string(), "9".into(), "app.lock");
    std::fs::write(dir.0.join(&later), "").unwrap();
    assert_eq!(errno(l.lock(Mode::Exclusive, 0, 0, TRY)), libc::EAGAIN);
    assert!(dir.0.join(&later).exists());
}
