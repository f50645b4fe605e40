//! Every backend on the filesystems a lock file lives on: ext4, tmpfs, xfs, btrfs and
//! overlayfs, each checked with real processes by the same battery: for FLOCK, OFD,
//! POSIX and DOTLOCK, an exclusive lock excludes another process, shared locks
//! coexist, a timed wait ends with `ETIMEDOUT` on time, a wait is granted on release,
//! UNLINK (DOTLOCK: the lock file) goes on release and racing processes never both
//! hold, a dead holder's lock is free (DOTLOCK: its stale lock file is broken), query
//! and list name the holder's pid; then a short torture: four processes add one to a
//! counter in a file of that filesystem 300 times each under an exclusive lock, and no
//! update may be lost. On overlayfs, files of the lower layer are locked too, across
//! their copy-up.
//!
//! # Where each filesystem comes from
//!
//! As root, each test makes its filesystem fresh, in a directory of its own under the
//! temp dir: a sparse image file formatted with `mkfs.ext4` (32 MiB), `mkfs.xfs`
//! (300 MiB, its minimum) or `mkfs.btrfs` (128 MiB; its minimum is 109 MiB) and
//! loop-mounted (`mount -o loop`); `mount -t tmpfs`; an overlay whose lower, upper and
//! work directories are on a tmpfs of its own. Mounts are undone when the test ends,
//! passed or failed (a guard's `Drop`; a lazy unmount when a plain one keeps failing),
//! and a later run removes what a killed run left behind. ext4 and tmpfs run
//! always: without root, or where they cannot be mounted, the test uses an existing
//! mount of that type it can write to (the temp dir, /dev/shm, /run/user/UID, ...).
//! xfs, btrfs and overlayfs need root, their mkfs (Debian's xfsprogs and btrfs-progs)
//! and, for the images, a free loop device.
//!
//! # A filesystem that cannot be tested is not a pass
//!
//! libtest has no "skipped" result. A test whose filesystem cannot be had prints
//! `NOT RUN: <fs>: <reason>` on standard error, past the output capture (so the line
//! shows in every run), and fails, unless the environment variable
//! `UNILOCK_ALLOW_NOT_RUN` names it: a comma-separated list of test names (`ext4`,
//! `tmpfs`, `xfs`, `btrfs`, `overlayfs`), or `all`. That variable is the runner's
//! explicit statement that the filesystem may be missing there; with it the test
//! returns after printing the line, and only then does libtest show `ok` for a test
//! that did nothing. So in CI, which runs as root, a filesystem that fails to mount
//! fails its test with the reason; a user without root runs
//! `UNILOCK_ALLOW_NOT_RUN=xfs,btrfs,overlayfs cargo test` and sees the NOT RUN lines.
//! A filesystem that is mounted runs every check of the battery, and the test fails
//! listing each check that failed.

mod common;

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Peer, Shm, TRY, TempDir};
use unilock::{Backend, Flags, Lock, Mode, Options};

const BACKENDS: [Backend; 4] = [
    Backend::Flock,
    Backend::Ofd,
    Backend::Posix,
    Backend::Dotlock,
];

/// How long a timed wait is given, and how late past it its `ETIMEDOUT` may come on a
/// busy machine.
const TIMED_WAIT: Duration = Duration::from_millis(250);
const LATE: Duration = Duration::from_secs(1);
/// How soon a waiter must have the lock once its holder released it: well under the
/// 1 s safety net of a DOTLOCK wait, so that a wait that missed its wake-up shows.
const PROMPT: Duration = Duration::from_millis(900);
/// A bound on waits that should end much sooner (a failure, not a timing check).
const LONG: Duration = Duration::from_secs(30);

/// The torture: this many processes, each adding one this many times.
const WORKERS: usize = 4;
const INCREMENTS: u64 = 300;
/// The UNLINK race: two processes, this many open/lock/unlock/close rounds each.
const RACE_ROUNDS: u64 = 150;

#[test]
fn peer_main() {
    if std::env::var_os(common::PEER_ENV).is_some() {
        peer_loop();
    }
}

#[test]
fn ext4() {
    run_battery(Fs::Ext4);
}

#[test]
fn tmpfs() {
    run_battery(Fs::Tmpfs);
}

#[test]
fn xfs() {
    run_battery(Fs::Xfs);
}

#[test]
fn btrfs() {
    run_battery(Fs::Btrfs);
}

#[test]
fn overlayfs() {
    run_battery(Fs::Overlay);
}

// ---------------------------------------------------------------------------------
// The peer: this test binary re-run, taking commands on stdin.

/// The peer's command loop: [`common::detailed_peer_loop`]'s commands, and
/// `count LOCK BACKEND COUNTER N AT`, `race PATH BACKEND FLAGS SHM N AT` (both start at
/// AT, milliseconds since the epoch, so that the workers overlap), `fork_close H` (a
/// forked child keeps the handle's descriptors, then the handle is closed).
fn peer_loop() -> ! {
    common::detailed_peer_loop(|w, handles| {
        Some(match w {
            ["count", lock, b, counter, n, at] => count(
                Path::new(lock),
                common::backend_named(b),
                Path::new(counter),
                n,
                at,
            ),
            ["race", path, b, bits, shm, n, at] => race(
                Path::new(path),
                common::backend_named(b),
                common::flags_of(bits.parse().unwrap()),
                Path::new(shm),
                n.parse().unwrap(),
                at,
            ),
            ["fork_close", h] => {
                let l = handles.remove(*h).unwrap();
                fork_holder();
                l.close()
            }
            _ => return None,
        })
    })
}

/// Forks a child that keeps this process's descriptors (and so the open file
/// descriptions of its flock and OFD locks) until this process exits.
fn fork_holder() {
    let mut ends = [0; 2];
    // SAFETY: pipe2 fills `ends` with two new descriptors.
    assert_eq!(
        unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) },
        0
    );
    // SAFETY: the child only makes async-signal-safe calls (close, read, _exit).
    match unsafe { libc::fork() } {
        0 => unsafe {
            libc::close(ends[1]);
            let mut byte = 0u8;
            // Returns at end of file: when this process (the pipe's writer) is gone.
            libc::read(ends[0], (&mut byte as *mut u8).cast(), 1);
            libc::_exit(0);
        },
        pid => {
            assert!(pid > 0, "fork");
            // SAFETY: the read end is the child's; the write end stays open until exit.
            unsafe { libc::close(ends[0]) };
        }
    }
}

/// The torture's worker: `n` times, take the lock, read the counter, give up the CPU,
/// write the counter plus one, release. A lost update shows in the final count.
fn count(lock: &Path, b: Backend, counter: &Path, n: &str, at: &str) -> unilock::Result<()> {
    let n: u64 = n.parse().unwrap();
    let l = Lock::open(lock, &Options::new().backend(b).flags(Flags::CREATE))?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(counter)
        .map_err(|e| common::io_error(e, "open the counter"))?;
    sleep_until(at);
    for _ in 0..n {
        l.lock(Mode::Exclusive, 0, 0, Some(LONG))?;
        let mut word = [0u8; 8];
        f.read_exact_at(&mut word, 0)
            .map_err(|e| common::io_error(e, "read the counter"))?;
        std::thread::yield_now();
        f.write_all_at(&(u64::from_le_bytes(word) + 1).to_le_bytes(), 0)
            .map_err(|e| common::io_error(e, "write the counter"))?;
        l.unlock(0, 0)?;
    }
    l.close()
}

fn epoch_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// A start time for workers, a little ahead.
fn start_at() -> u128 {
    epoch_ms() + 50
}

fn sleep_until(at: &str) {
    let at: u128 = at.parse().unwrap();
    let now = epoch_ms();
    if at > now {
        std::thread::sleep(Duration::from_millis((at - now) as u64));
    }
}

/// Words of the race's shared memory.
const INSIDE: usize = 0;
const OVERLAPS: usize = 1;
const NOT_AT_PATH: usize = 2;
const GRANTS: usize = 3;
const RACE_WORDS: usize = 4;

fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

/// The race's worker: `n` times, open `path` with `bits`, take an exclusive lock,
/// record an overlap if another holder is inside, and a miss if the path does not name
/// the locked file (for DOTLOCK: if the lock file is not there), then unlock and
/// close.
fn race(path: &Path, b: Backend, bits: Flags, shm: &Path, n: u64, at: &str) -> unilock::Result<()> {
    let words = Shm::map(shm, RACE_WORDS);
    sleep_until(at);
    for _ in 0..n {
        let l = Lock::open(path, &Options::new().backend(b).flags(bits))?;
        l.lock(Mode::Exclusive, 0, 0, Some(LONG))?;
        if words.bump(INSIDE) != 0 {
            words.bump(OVERLAPS);
        }
        let at_path = std::fs::symlink_metadata(path).ok();
        let held = match b {
            Backend::Dotlock => at_path.is_some(),
            _ => {
                let fd = l.fd()?;
                let mine = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok();
                let mine = mine.filter(|m| m.nlink() > 0).map(|m| file_id(&m));
                mine.is_some() && mine == at_path.map(|m| file_id(&m))
            }
        };
        if !held {
            words.bump(NOT_AT_PATH);
        }
        std::thread::yield_now();
        words
            .at(INSIDE)
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        words.bump(GRANTS);
        l.unlock(0, 0)?;
        l.close()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Talking to peers.

fn expect_ok(reply: String, what: &str) {
    assert_eq!(reply, "ok", "{what}");
}

fn errno_of(reply: &str) -> Option<i32> {
    reply.strip_prefix("err ")?.split(' ').next()?.parse().ok()
}

fn expect_err(reply: String, errno: i32, what: &str) {
    assert_eq!(
        errno_of(&reply),
        Some(errno),
        "{what}: expected errno {errno} ({}), got {reply:?}",
        unilock::describe(errno)
    );
}

fn opts(b: Backend) -> Options {
    Options::new().backend(b).flags(Flags::CREATE)
}

fn p(path: &Path) -> String {
    let s = path.display().to_string();
    assert!(!s.contains(char::is_whitespace), "{s:?}: no spaces here");
    s
}

fn open_in(peer: &mut Peer, h: &str, path: &Path, b: Backend, flags: Flags) {
    let line = format!("open {h} {} {} {}", p(path), common::name(b), flags.bits());
    expect_ok(peer.cmd(&line), &line);
}

fn errno(r: unilock::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.errno(),
    }
}

// ---------------------------------------------------------------------------------
// The battery.

/// Peers: [0] holds and waits, the others run the torture and the race.
struct Peers(Vec<Peer>);

impl Peers {
    fn new() -> Peers {
        Peers((0..=WORKERS).map(|_| Peer::spawn()).collect())
    }

    fn holder(&mut self) -> &mut Peer {
        &mut self.0[0]
    }
}

/// The checks of one filesystem: each runs, and a failure is recorded with its
/// message; the peers are replaced after a failure (they may hold locks or be in the
/// middle of a command).
struct Battery {
    fs: &'static str,
    dir: PathBuf,
    peers: Peers,
    failures: Vec<String>,
    ran: usize,
}

impl Battery {
    fn check(&mut self, what: String, f: impl FnOnce(&Path, &mut Peers)) {
        self.ran += 1;
        let started = Instant::now();
        let dir = self.dir.clone();
        let peers = &mut self.peers;
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| f(&dir, peers))) {
            let text = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".into());
            self.failures.push(format!("{}: {what}: {text}", self.fs));
            self.peers = Peers::new();
        }
        println!("{}: {what}: {:?}", self.fs, started.elapsed());
    }
}

fn run_battery(fs: Fs) {
    sweep_leftovers();
    let mounted = match provide(fs) {
        Ok(m) => m,
        Err(reason) => return common::not_run(fs.name(), "filesystems", &reason),
    };
    println!("{}: {}", fs.name(), mounted.how);
    let dir = mounted.dir.clone();
    let mut battery = Battery {
        fs: fs.name(),
        dir,
        peers: Peers::new(),
        failures: Vec::new(),
        ran: 0,
    };
    let shm_dir = TempDir::new(&format!("fs-shm-{}", fs.name()));
    for b in BACKENDS {
        let n = common::name(b);
        battery.check(
            format!("{n}: an exclusive lock excludes another process"),
            |d, ps| exclusive_excludes(d, b, ps.holder()),
        );
        battery.check(format!("{n}: shared locks coexist"), |d, ps| {
            shared_coexist(d, b, ps.holder())
        });
        battery.check(format!("{n}: a timed wait ends with ETIMEDOUT"), |d, ps| {
            timed_wait_times_out(d, b, ps.holder())
        });
        battery.check(format!("{n}: a wait is granted on release"), |d, ps| {
            wait_granted_on_release(d, b, ps.holder())
        });
        battery.check(
            format!("{n}: the file goes on release, racers never both hold"),
            |d, ps| removed_on_release(d, b, ps, &shm_dir.0),
        );
        battery.check(format!("{n}: a dead holder's lock is free"), |d, _| {
            dead_holder(d, b)
        });
        if matches!(b, Backend::Flock | Backend::Ofd) {
            battery.check(
                format!("{n}: a lock shared with a forked child outlives the close"),
                |d, _| kept_by_child(d, b),
            );
        }
        battery.check(format!("{n}: query and list name the holder"), |d, ps| {
            query_and_list(d, b, ps.holder())
        });
        battery.check(format!("{n}: torture, no lost update"), |d, ps| {
            torture(d, b, ps)
        });
    }
    if let Some(lower) = &mounted.lower {
        battery.check(
            "flock: a lower-layer file, before and after its copy-up".into(),
            |d, ps| across_copy_up(d, lower, ps.holder()),
        );
        for b in [Backend::Ofd, Backend::Posix] {
            battery.check(
                format!("{}: a lower-layer file", common::name(b)),
                |d, ps| lower_file(d, b, ps.holder()),
            );
        }
        battery.check(
            "dotlock: a stale lock file of the lower layer is broken".into(),
            |d, _| lower_stale_dotlock(d),
        );
    }
    let Battery { failures, ran, .. } = battery;
    drop(mounted);
    assert!(
        failures.is_empty(),
        "{} of {ran} checks failed on {}:\n{}",
        failures.len(),
        fs.name(),
        failures.join("\n")
    );
}

fn exclusive_excludes(dir: &Path, b: Backend, peer: &mut Peer) {
    let path = dir.join(format!("exclusive-{}", common::name(b)));
    open_in(peer, "x", &path, b, Flags::CREATE);
    expect_ok(peer.cmd("lock x ex 0"), "the peer's exclusive lock");
    let l = Lock::open(&path, &opts(b)).unwrap();
    let r = l.lock(Mode::Exclusive, 0, 0, TRY);
    assert_eq!(errno(r), libc::EAGAIN, "exclusive while the peer holds it");
    if b != Backend::Dotlock {
        let r = l.lock(Mode::Shared, 0, 0, TRY);
        assert_eq!(errno(r), libc::EAGAIN, "shared while the peer holds it");
    }
    expect_ok(peer.cmd("unlock x"), "the peer's unlock");
    l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    expect_err(
        peer.cmd("lock x ex 0"),
        libc::EAGAIN,
        "the peer's exclusive",
    );
    if b != Backend::Dotlock {
        expect_err(peer.cmd("lock x sh 0"), libc::EAGAIN, "the peer's shared");
    }
    l.unlock(0, 0).unwrap();
    expect_ok(
        peer.cmd("lock x ex 0"),
        "the peer's exclusive after the unlock",
    );
    expect_ok(peer.cmd("close x"), "close");
}

fn shared_coexist(dir: &Path, b: Backend, peer: &mut Peer) {
    let path = dir.join(format!("shared-{}", common::name(b)));
    let l = Lock::open(&path, &opts(b)).unwrap();
    if b == Backend::Dotlock {
        let r = l.lock(Mode::Shared, 0, 0, TRY);
        assert_eq!(errno(r), libc::EOPNOTSUPP, "a shared DOTLOCK lock");
        return;
    }
    open_in(peer, "s1", &path, b, Flags::CREATE);
    open_in(peer, "s2", &path, b, Flags::CREATE);
    expect_ok(peer.cmd("lock s1 sh 0"), "the peer's first shared lock");
    l.lock(Mode::Shared, 0, 0, TRY).unwrap();
    let other = Lock::open(&path, &opts(b)).unwrap();
    other.lock(Mode::Shared, 0, 0, TRY).unwrap();
    expect_ok(peer.cmd("lock s2 sh 0"), "the peer's second shared lock");
    let third = Lock::open(&path, &opts(b)).unwrap();
    let r = third.lock(Mode::Exclusive, 0, 0, TRY);
    assert_eq!(
        errno(r),
        libc::EAGAIN,
        "exclusive among four shared holders"
    );
    expect_ok(peer.cmd("close s1"), "close");
    expect_ok(peer.cmd("close s2"), "close");
    l.unlock(0, 0).unwrap();
    other.unlock(0, 0).unwrap();
    third.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
}

fn timed_wait_times_out(dir: &Path, b: Backend, peer: &mut Peer) {
    let path = dir.join(format!("timed-{}", common::name(b)));
    open_in(peer, "t", &path, b, Flags::CREATE);
    expect_ok(peer.cmd("lock t ex 0"), "the peer's lock");
    let l = Lock::open(&path, &opts(b)).unwrap();
    let started = Instant::now();
    let r = l.lock(Mode::Exclusive, 0, 0, Some(TIMED_WAIT));
    let took = started.elapsed();
    assert_eq!(errno(r), libc::ETIMEDOUT, "a timed wait on a held lock");
    assert!(
        took >= TIMED_WAIT && took <= TIMED_WAIT + LATE,
        "a {TIMED_WAIT:?} wait ended after {took:?}"
    );
    expect_ok(peer.cmd("close t"), "close");
}

fn wait_granted_on_release(dir: &Path, b: Backend, peer: &mut Peer) {
    let path = dir.join(format!("granted-{}", common::name(b)));
    open_in(peer, "g", &path, b, Flags::CREATE);
    expect_ok(peer.cmd("lock g ex 0"), "the peer's lock");
    let l = Lock::open(&path, &opts(b)).unwrap();
    let (r, granted, released) = std::thread::scope(|s| {
        let releaser = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(150));
            let at = Instant::now();
            expect_ok(peer.cmd("unlock g"), "the peer's unlock");
            at
        });
        let r = l.lock(Mode::Exclusive, 0, 0, Some(LONG));
        let granted = Instant::now();
        (r, granted, releaser.join().unwrap())
    });
    r.unwrap();
    assert!(granted >= released, "granted before the holder released it");
    let late = granted - released;
    assert!(late < PROMPT, "granted {late:?} after the release");
    expect_err(
        peer.cmd("lock g ex 0"),
        libc::EAGAIN,
        "the peer, after the grant",
    );
    l.unlock(0, 0).unwrap();
    expect_ok(peer.cmd("close g"), "close");
}

/// UNLINK (DOTLOCK: its lock file) removes the file on release, and two processes
/// looping on open/lock/unlock/close never both hold it.
fn removed_on_release(dir: &Path, b: Backend, peers: &mut Peers, shm_dir: &Path) {
    let n = common::name(b);
    let path = dir.join(format!("unlink-{n}"));
    let bits = match b {
        Backend::Dotlock => Flags::CREATE,
        _ => Flags::CREATE | Flags::UNLINK,
    };
    let l = Lock::open(&path, &Options::new().backend(b).flags(bits)).unwrap();
    l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    assert!(path.exists(), "no file while the lock is held");
    let peer = peers.holder();
    open_in(peer, "u", &path, b, bits);
    expect_err(peer.cmd("lock u ex 0"), libc::EAGAIN, "the peer while held");
    l.unlock(0, 0).unwrap();
    assert!(!path.exists(), "the file is still there after the release");
    l.close().unwrap();
    expect_ok(peer.cmd("close u"), "close");

    let shm = shm_dir.join(format!("race-{n}"));
    let words = Shm::create(&shm, RACE_WORDS);
    let line = format!(
        "race {} {n} {} {} {RACE_ROUNDS} {}",
        p(&path),
        bits.bits(),
        p(&shm),
        start_at()
    );
    let racers = &mut peers.0[1..3];
    for r in racers.iter_mut() {
        r.send(&line);
    }
    for r in racers.iter_mut() {
        expect_ok(r.recv(), &line);
    }
    assert_eq!(
        words.get(OVERLAPS),
        0,
        "two processes held the lock at once"
    );
    assert_eq!(
        words.get(NOT_AT_PATH),
        0,
        "a holder's file was not the one at the path"
    );
    assert_eq!(words.get(GRANTS), 2 * RACE_ROUNDS);
    assert!(!path.exists(), "the file is left after the race");
}

fn dead_holder(dir: &Path, b: Backend) {
    let path = dir.join(format!("dead-{}", common::name(b)));
    let mut doomed = Peer::spawn();
    let pid = doomed.pid();
    open_in(&mut doomed, "d", &path, b, Flags::CREATE);
    expect_ok(doomed.cmd("lock d ex 0"), "the doomed peer's lock");
    doomed.kill();
    let l = Lock::open(&path, &opts(b)).unwrap();
    if b == Backend::Dotlock {
        let text = std::fs::read_to_string(&path).expect("the dead holder's lock file");
        assert_eq!(
            text.lines().next(),
            Some(pid.to_string().as_str()),
            "{text:?}"
        );
        assert_eq!(
            l.query(Mode::Exclusive, 0, 0).unwrap(),
            None,
            "stale is free"
        );
    }
    l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    if b == Backend::Dotlock {
        let text = std::fs::read_to_string(&path).unwrap();
        let me = std::process::id().to_string();
        assert_eq!(text.lines().next(), Some(me.as_str()), "{text:?}");
    }
    let me = std::process::id() as i32;
    let listed = l.list().unwrap();
    assert!(
        listed.iter().all(|h| h.pid == me && h.is_self) && !listed.is_empty(),
        "list after taking over from a dead holder: {listed:?}"
    );
}

/// SPEC "fork and exec": a flock or OFD lock taken before a fork is the child's too,
/// and the parent's close leaves it to the child. (The library finds the child by the
/// lock lines of its descriptors in /proc.)
fn kept_by_child(dir: &Path, b: Backend) {
    let path = dir.join(format!("forked-{}", common::name(b)));
    let mut parent = Peer::spawn();
    open_in(&mut parent, "f", &path, b, Flags::CREATE);
    expect_ok(parent.cmd("lock f ex 0"), "the parent's lock");
    expect_ok(parent.cmd("fork_close f"), "fork, then close in the parent");
    let l = Lock::open(&path, &opts(b)).unwrap();
    let r = l.lock(Mode::Exclusive, 0, 0, TRY);
    assert_eq!(errno(r), libc::EAGAIN, "the lock after the parent's close");
    // The child exits with its parent, and the lock goes with it.
    parent.kill();
    l.lock(Mode::Exclusive, 0, 0, Some(LONG)).unwrap();
}

fn query_and_list(dir: &Path, b: Backend, peer: &mut Peer) {
    let path = dir.join(format!("query-{}", common::name(b)));
    open_in(peer, "q", &path, b, Flags::CREATE);
    expect_ok(peer.cmd("lock q ex 0"), "the peer's lock");
    let l = Lock::open(&path, &opts(b)).unwrap();
    let who = l.query(Mode::Shared, 0, 0).unwrap();
    let who = who.expect("query says free while another process holds the lock");
    assert_eq!(
        (who.pid, who.backend, who.mode, who.is_self),
        (peer.pid(), b, Mode::Exclusive, false),
        "{who:?}"
    );
    let listed = l.list().unwrap();
    assert!(
        listed
            .iter()
            .any(|h| h.pid == peer.pid() && h.backend == b && h.mode == Mode::Exclusive),
        "list does not name the peer {}: {listed:?}",
        peer.pid()
    );
    if b != Backend::Dotlock {
        expect_ok(peer.cmd("lock q sh 0"), "the peer's downgrade");
        assert_eq!(l.query(Mode::Shared, 0, 0).unwrap(), None);
        let who = l.query(Mode::Exclusive, 0, 0).unwrap();
        let who = who.expect("query says free while another process holds a shared lock");
        assert_eq!((who.pid, who.mode), (peer.pid(), Mode::Shared), "{who:?}");
    }
    expect_ok(peer.cmd("close q"), "close");
    assert_eq!(l.query(Mode::Exclusive, 0, 0).unwrap(), None, "after close");
}

fn torture(dir: &Path, b: Backend, peers: &mut Peers) {
    let n = common::name(b);
    let lock = dir.join(format!("torture-{n}"));
    let counter = dir.join(format!("counter-{n}"));
    std::fs::write(&counter, 0u64.to_le_bytes()).unwrap();
    let line = format!(
        "count {} {n} {} {INCREMENTS} {}",
        p(&lock),
        p(&counter),
        start_at()
    );
    let workers = &mut peers.0[1..=WORKERS];
    for w in workers.iter_mut() {
        w.send(&line);
    }
    for w in workers.iter_mut() {
        expect_ok(w.recv(), &line);
    }
    let bytes = std::fs::read(&counter).unwrap();
    let total = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(total, WORKERS as u64 * INCREMENTS, "lost updates");
}

/// overlayfs: a peer flocks a file of the lower layer through a read-only descriptor
/// (no copy-up); the file is then copied up (opened for writing); a handle opened
/// after the copy-up must still conflict with the peer's lock, and query name it.
fn across_copy_up(dir: &Path, lower: &Path, peer: &mut Peer) {
    let name = "lower-flock";
    let path = dir.join(name);
    let upper = lower.parent().unwrap().join("upper").join(name);
    assert!(!upper.exists(), "copied up before the test");
    open_in(peer, "c", &path, Backend::Flock, Flags::empty());
    expect_ok(peer.cmd("lock c ex 0"), "the peer's lock on the lower file");
    let early = Lock::open(&path, &Options::new()).unwrap();
    drop(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap(),
    );
    assert!(
        upper.exists(),
        "opening for writing did not copy the file up"
    );
    let late = Lock::open(&path, &Options::new()).unwrap();
    for (which, l) in [("opened before the copy-up", &early), ("after", &late)] {
        let r = l.lock(Mode::Shared, 0, 0, TRY);
        assert_eq!(errno(r), libc::EAGAIN, "a handle {which}");
        let who = l.query(Mode::Shared, 0, 0).unwrap();
        assert_eq!(
            who.map(|h| h.pid),
            Some(peer.pid()),
            "query from a handle {which}"
        );
    }
    expect_ok(peer.cmd("unlock c"), "the peer's unlock");
    late.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    expect_err(
        peer.cmd("lock c sh 0"),
        libc::EAGAIN,
        "the peer after the copy-up",
    );
    let r = early.lock(Mode::Shared, 0, 0, TRY);
    assert_eq!(errno(r), libc::EAGAIN, "the early handle");
    expect_ok(peer.cmd("close c"), "close");
}

/// overlayfs: OFD and POSIX on a file of the lower layer (their read-write open
/// copies it up) exclude each other's processes and query names the holder.
fn lower_file(dir: &Path, b: Backend, peer: &mut Peer) {
    let path = dir.join(format!("lower-{}", common::name(b)));
    open_in(peer, "l", &path, b, Flags::empty());
    expect_ok(peer.cmd("lock l ex 0"), "the peer's lock on the lower file");
    let l = Lock::open(&path, &Options::new().backend(b)).unwrap();
    assert_eq!(errno(l.lock(Mode::Shared, 0, 0, TRY)), libc::EAGAIN);
    let who = l.query(Mode::Shared, 0, 0).unwrap();
    assert_eq!(who.map(|h| h.pid), Some(peer.pid()), "query");
    expect_ok(peer.cmd("unlock l"), "the peer's unlock");
    l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    expect_err(peer.cmd("lock l sh 0"), libc::EAGAIN, "the peer");
    expect_ok(peer.cmd("close l"), "close");
}

/// overlayfs: a lock file of a dead process in the lower layer is broken (removing it
/// leaves a whiteout in the upper layer) and the lock is taken.
fn lower_stale_dotlock(dir: &Path) {
    let path = dir.join(LOWER_STALE);
    assert!(path.exists(), "the lower layer's lock file is not visible");
    let l = Lock::open(&path, &Options::new().backend(Backend::Dotlock)).unwrap();
    assert_eq!(
        l.query(Mode::Exclusive, 0, 0).unwrap(),
        None,
        "stale is free"
    );
    l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let me = std::process::id().to_string();
    assert_eq!(text.lines().next(), Some(me.as_str()), "{text:?}");
    l.unlock(0, 0).unwrap();
    assert!(!path.exists(), "the lock file is back after the release");
}

// ---------------------------------------------------------------------------------
// Providing the filesystems.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fs {
    Ext4,
    Tmpfs,
    Xfs,
    Btrfs,
    Overlay,
}

impl Fs {
    fn name(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Tmpfs => "tmpfs",
            Fs::Xfs => "xfs",
            Fs::Btrfs => "btrfs",
            Fs::Overlay => "overlayfs",
        }
    }
}

/// The name of the dead process's lock file prepared in overlayfs's lower layer.
const LOWER_STALE: &str = "lower-stale.lock";

/// Prefix of the directories made for mounts (followed by the filesystem and the pid).
const PREFIX: &str = "unilock-fs-";

/// A directory on the filesystem under test, and what to undo: mounts (unmounted in
/// reverse order) and the directory holding them, removed last.
struct Mounted {
    /// Where the tests run.
    dir: PathBuf,
    /// overlayfs: the lower layer's directory.
    lower: Option<PathBuf>,
    /// What was done, for the test's output.
    how: String,
    base: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let mut all_gone = true;
        while let Some(m) = self.mounts.pop() {
            all_gone &= unmount(&m);
        }
        // Never remove files through a mount that is still there.
        if all_gone {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

fn c_path(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// Unmounts `m`, retrying while it is busy (a peer that just exited), then lazily.
fn unmount(m: &Path) -> bool {
    let c = c_path(m);
    for _ in 0..40 {
        // SAFETY: umount2 on a NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            return true;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EBUSY) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    let lazy = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0;
    if !lazy {
        let e = std::io::Error::last_os_error();
        let _ = writeln!(std::io::stderr(), "cannot unmount {}: {e}", m.display());
    }
    lazy
}

/// The mount points in this mount namespace, deepest last, with their types.
fn mounts() -> Vec<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = unescape(left.split(' ').nth(4)?);
            let fstype = right.split(' ').next()?.to_string();
            Some((point, fstype))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match octal {
            Some(c) if b[i] == b'\\' => {
                out.push(c);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// The type of the filesystem that `dir` is on.
fn fs_type_of(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    mounts()
        .into_iter()
        .filter(|(point, _)| dir.starts_with(point))
        .max_by_key(|(point, _)| point.as_os_str().len())
        .map(|(_, t)| t)
}

/// Removes what runs of this test killed before their cleanup left in the temp dir:
/// mounts first (lazily), then the directory, never through a remaining mount.
fn sweep_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.rsplit('-').next().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let base = entry.path();
        let mut under: Vec<PathBuf> = mounts()
            .into_iter()
            .map(|(point, _)| point)
            .filter(|point| point.starts_with(&base))
            .collect();
        under.sort_by_key(|point| std::cmp::Reverse(point.as_os_str().len()));
        under.dedup();
        if under.iter().all(|m| unmount(m)) {
            let _ = std::fs::remove_dir_all(&base);
        }
    }
}

/// Debian's package of a tool, for the reason a filesystem cannot be made.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "mkfs.ext4" => "e2fsprogs",
        "mkfs.xfs" => "xfsprogs",
        "mkfs.btrfs" => "btrfs-progs",
        _ => "mount",
    }
}

/// Finds `name` on PATH or in the system directories (mkfs lives in sbin).
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `name` with `args`; the reason when it cannot or fails.
fn run_tool(name: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let Some(exe) = tool(name) else {
        return Err(format!(
            "{name} is not installed (Debian: {})",
            package_of(name)
        ));
    };
    let out = Command::new(&exe)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let words: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
    Err(format!(
        "`{name} {}` failed ({}): {}",
        words.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The filesystem `fs` for the battery, or why it cannot be had.
fn provide(fs: Fs) -> Result<Mounted, String> {
    let fresh = if is_root() {
        mount_fresh(fs)
    } else {
        Err("mounting a filesystem needs root".to_string())
    };
    let reason = match fresh {
        Ok(m) => return Ok(m),
        Err(reason) => reason,
    };
    if !matches!(fs, Fs::Ext4 | Fs::Tmpfs) {
        return Err(reason);
    }
    match existing(fs) {
        Ok(mut m) => {
            m.how = format!("{reason}; {}", m.how);
            Ok(m)
        }
        Err(none) => Err(format!("{reason}; {none}")),
    }
}

/// A new directory for this test's mounts.
fn new_base(fs: Fs, parent: &Path) -> std::io::Result<PathBuf> {
    let base = parent.join(format!("{PREFIX}{}-{}", fs.name(), std::process::id()));
    std::fs::create_dir(&base)?;
    Ok(base)
}

fn mount_fresh(fs: Fs) -> Result<Mounted, String> {
    let base = new_base(fs, &std::env::temp_dir()).map_err(|e| format!("mkdir: {e}"))?;
    let mnt = base.join("mnt");
    let mut m = Mounted {
        dir: mnt.clone(),
        lower: None,
        how: String::new(),
        base: base.clone(),
        mounts: Vec::new(),
    };
    std::fs::create_dir(&mnt).map_err(|e| format!("mkdir: {e}"))?;
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    match fs {
        Fs::Tmpfs => {
            let args = [
                os("-t"),
                os("tmpfs"),
                os("-o"),
                os("size=64m"),
                os("unilock-tmpfs"),
            ];
            run_tool("mount", &[&args[..], &[mnt.as_os_str()]].concat())?;
            m.mounts.push(mnt.clone());
            m.how = format!("a tmpfs mounted on {}", mnt.display());
        }
        Fs::Overlay => {
            let layers = base.join("layers");
            std::fs::create_dir(&layers).map_err(|e| format!("mkdir: {e}"))?;
            let args = [
                os("-t"),
                os("tmpfs"),
                os("-o"),
                os("size=64m"),
                os("unilock-layers"),
            ];
            run_tool("mount", &[&args[..], &[layers.as_os_str()]].concat())?;
            m.mounts.push(layers.clone());
            let lower = layers.join("lower");
            for d in ["lower", "upper", "work"] {
                std::fs::create_dir(layers.join(d)).map_err(|e| format!("mkdir: {e}"))?;
            }
            for b in [Backend::Flock, Backend::Ofd, Backend::Posix] {
                std::fs::write(lower.join(format!("lower-{}", common::name(b))), b"lower")
                    .map_err(|e| format!("write: {e}"))?;
            }
            std::fs::write(lower.join(LOWER_STALE), format!("{}\n", dead_pid()))
                .map_err(|e| format!("write: {e}"))?;
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                layers.join("upper").display(),
                layers.join("work").display()
            );
            let args = [
                os("-t"),
                os("overlay"),
                os("-o"),
                options.as_ref(),
                os("overlay"),
            ];
            run_tool("mount", &[&args[..], &[mnt.as_os_str()]].concat())?;
            m.mounts.push(mnt.clone());
            m.lower = Some(lower);
            m.how = format!("an overlay on {} of layers on a tmpfs", mnt.display());
        }
        Fs::Ext4 | Fs::Xfs | Fs::Btrfs => {
            let (mkfs, size_mib, force) = match fs {
                Fs::Ext4 => ("mkfs.ext4", 32, "-F"),
                Fs::Xfs => ("mkfs.xfs", 300, "-f"),
                _ => ("mkfs.btrfs", 128, "-f"),
            };
            let image = base.join("image");
            let f = std::fs::File::create(&image).map_err(|e| format!("image: {e}"))?;
            f.set_len(size_mib << 20)
                .map_err(|e| format!("image: {e}"))?;
            drop(f);
            run_tool(mkfs, &[os("-q"), os(force), image.as_os_str()])?;
            run_tool(
                "mount",
                &[os("-o"), os("loop"), image.as_os_str(), mnt.as_os_str()],
            )?;
            m.mounts.push(mnt.clone());
            m.how = format!(
                "a {size_mib} MiB {} image loop-mounted on {}",
                fs.name(),
                mnt.display()
            );
        }
    }
    let got = fs_type_of(&mnt);
    let want = match fs {
        Fs::Overlay => "overlay",
        other => other.name(),
    };
    if got.as_deref() != Some(want) {
        return Err(format!("{} is {got:?} after mounting", mnt.display()));
    }
    Ok(m)
}

/// A pid that no process has now.
fn dead_pid() -> i32 {
    (2_000_000..4_000_000)
        .step_by(7919)
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .expect("a free pid")
}

/// An existing mount of type `fs` where this process can make a directory.
fn existing(fs: Fs) -> Result<Mounted, String> {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let candidates: Vec<PathBuf> = [
        Some(std::env::temp_dir()),
        Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))),
        Some(PathBuf::from("/dev/shm")),
        Some(PathBuf::from(format!("/run/user/{uid}"))),
        Some(PathBuf::from("/var/tmp")),
        std::env::current_dir().ok(),
    ]
    .into_iter()
    .flatten()
    .collect();
    for c in &candidates {
        if fs_type_of(c).as_deref() != Some(fs.name()) {
            continue;
        }
        if let Ok(base) = new_base(fs, c) {
            return Ok(Mounted {
                dir: base.clone(),
                lower: None,
                how: format!("running on the existing {} at {}", fs.name(), c.display()),
                base,
                mounts: Vec::new(),
            });
        }
    }
    let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(format!(
        "no writable existing {} mount among {}",
        fs.name(),
        tried.join(", ")
    ))
}
