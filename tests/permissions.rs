//! Locking among users, with real processes running as other users: a lock file of
//! one user cannot be opened (and so not locked) by another, and the error says so; a
//! DOTLOCK lock file of another user holds the lock; symbolic links and FIFOs planted
//! by another user in a sticky, world-writable directory (as /tmp is) are refused
//! without blocking, whether they are there at the open or appear later; an existing
//! file of another user in a sticky directory is opened without `O_CREAT`, which the
//! kernel refuses there (`fs.protected_regular`).
//!
//! The test process runs as root and starts peers (a copy of this test binary that
//! everyone can run) as nobody (65534) and as a second unprivileged user (65533), who
//! need not exist in /etc/passwd.
//!
//! # Where these tests run
//!
//! They need root, to start processes as other users. Without root each test prints
//! `NOT RUN: <test>: <reason>` on standard error (past the output capture) and fails,
//! unless the environment variable `UNILOCK_ALLOW_NOT_RUN` names the test or
//! `permissions` (a comma-separated list, or `all`; the rule of tests/filesystems.rs).
//! The test of a file in a sticky directory needs `fs.protected_regular` on: when it is
//! 0, root turns it on for the test and restores it after; where it cannot be turned
//! on, that test is not run, by the same rule.

mod common;

use std::ffi::CString;
use std::fs::Permissions;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Peer, TRY, TempDir};
use unilock::{Backend, Flags, Lock, Mode, Options};

const NOBODY: u32 = 65534;
/// A second unprivileged user (uid and gid), who owns nothing.
const OTHER: u32 = 65533;

/// How long an open or a lock call that must fail may take before it counts as
/// blocked.
const PROMPT: Duration = Duration::from_secs(2);
/// The timeout given to lock calls that must fail at once for another reason.
const PATIENT: Duration = Duration::from_secs(5);

const KERNEL: [Backend; 3] = [Backend::Flock, Backend::Ofd, Backend::Posix];
/// The open flags tried on a file that must be refused: none, CREATE, and CREATE with
/// UNLINK (whose lock calls open the path again).
const OPEN_FLAGS: [Flags; 3] = [
    Flags::empty(),
    Flags::CREATE,
    Flags::CREATE.union(Flags::UNLINK),
];

#[test]
fn peer_main() {
    if std::env::var_os(common::PEER_ENV).is_some() {
        peer_loop();
    }
}

// ---------------------------------------------------------------------------------
// The peer.

fn io_result(r: std::io::Result<()>, what: &str) -> unilock::Result<()> {
    r.map_err(|e| common::io_error(e, what))
}

/// The peer's command loop. Commands: `open H PATH BACKEND FLAGS`, `lock H sh|ex MS`
/// (whole file; MS 0 tries once), `unlock H`, `close H`, `symlink TARGET PATH`,
/// `mkfifo PATH`, `write PATH MODE` (a new file, mode in octal), `remove PATH`.
/// Replies, after "@@ ": `ok`, or `err ERRNO DETAIL`.
fn peer_loop() -> ! {
    common::detailed_peer_loop(|w, _| {
        Some(match w {
            ["symlink", target, path] => {
                io_result(std::os::unix::fs::symlink(target, path), "symlink")
            }
            ["mkfifo", path] => {
                let c = CString::new(*path).unwrap();
                // SAFETY: mkfifo on a NUL-terminated path.
                let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o666) };
                io_result(
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    },
                    "mkfifo",
                )
            }
            ["write", path, mode] => {
                let mode = u32::from_str_radix(mode, 8).unwrap();
                let made = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .and_then(|mut f| {
                        f.write_all(b"theirs\n")?;
                        f.set_permissions(Permissions::from_mode(mode))
                    });
                io_result(made, "write")
            }
            ["remove", path] => io_result(std::fs::remove_file(path), "remove"),
            _ => return None,
        })
    })
}

// ---------------------------------------------------------------------------------
// Helpers.

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Root, or the reason the test cannot run.
fn needs_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    common::not_run(
        test,
        "permissions",
        "starting processes as other users needs root",
    );
    false
}

/// The people of a test: a copy of this binary that every user can run, and a
/// sticky, world-writable directory (mode 1777, owned by root, as /tmp is).
struct World {
    exe: PathBuf,
    sticky: PathBuf,
    /// A root-owned 0755 directory for targets of planted links.
    private: PathBuf,
    _dirs: [TempDir; 2],
}

impl World {
    fn new(tag: &str) -> World {
        let bin = TempDir::new(&format!("perm-bin-{tag}"));
        std::fs::set_permissions(&bin.0, Permissions::from_mode(0o755)).unwrap();
        let exe = common::runnable_self(&bin.0, "peer");
        let sticky = bin.0.join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(&sticky, Permissions::from_mode(0o1777)).unwrap();
        let private = TempDir::new(&format!("perm-private-{tag}"));
        std::fs::set_permissions(&private.0, Permissions::from_mode(0o755)).unwrap();
        World {
            exe,
            sticky,
            private: private.0.clone(),
            _dirs: [bin, private],
        }
    }

    /// A peer running as `uid` (and the group of the same number), checked. A copied
    /// binary may be busy for a moment (a child forked by another test while it was
    /// written holds it until it execs): tried again then.
    fn peer_as(&self, uid: u32) -> Peer {
        let mut tries = 0;
        let peer = loop {
            let spawned = catch_unwind(|| Peer::spawn_as(&self.exe, uid, uid));
            match spawned {
                Ok(peer) => break peer,
                Err(_) if tries < 10 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        };
        let status = std::fs::read_to_string(format!("/proc/{}/status", peer.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(
            line.split_whitespace().nth(2),
            Some(uid.to_string().as_str()),
            "the peer runs as {line}"
        );
        peer
    }

    fn at(&self, name: &str) -> PathBuf {
        self.sticky.join(name)
    }

    /// A copy of /etc/passwd that planted links point to: it must never change.
    fn precious(&self) -> PathBuf {
        let path = self.private.join("passwd-copy");
        if !path.exists() {
            std::fs::copy("/etc/passwd", &path).unwrap();
            std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        }
        path
    }
}

fn p(path: &Path) -> String {
    let s = path.display().to_string();
    assert!(!s.contains(char::is_whitespace), "{s:?}: no spaces here");
    s
}

fn cmd_ok(peer: &mut Peer, line: &str) {
    assert_eq!(peer.cmd(line), "ok", "{line}");
}

fn errno_of(reply: &str) -> Option<i32> {
    reply.strip_prefix("err ")?.split(' ').next()?.parse().ok()
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    content: Vec<u8>,
    mode: u32,
    uid: u32,
    ino: u64,
    mtime: (i64, i64),
}

fn snapshot(path: &Path) -> Snapshot {
    let m = std::fs::metadata(path).unwrap();
    Snapshot {
        content: std::fs::read(path).unwrap(),
        mode: m.mode(),
        uid: m.uid(),
        ino: m.ino(),
        mtime: (m.mtime(), m.mtime_nsec()),
    }
}

/// Runs `f` in a thread and returns its result, failing when it takes longer than
/// [`PROMPT`]. A reader stuck in the open of `fifo` is released before failing.
fn promptly<T: Send + 'static>(
    what: &str,
    fifo: Option<&Path>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(PROMPT) {
        Ok(v) => v,
        Err(_) => {
            if let Some(fifo) = fifo {
                let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
                // SAFETY: open and close of a FIFO for writing without blocking, which
                // lets a reader blocked in its open go on.
                unsafe {
                    let fd = libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK);
                    if fd >= 0 {
                        libc::close(fd);
                    }
                }
            }
            panic!("{what}: still running after {PROMPT:?}: it blocks");
        }
    }
}

/// Opens `path` as root in a thread: the errno and message, or 0 when it opened.
fn open_promptly(path: &Path, o: &Options, fifo: bool) -> (i32, String) {
    let what = format!("open {} with {o:?}", path.display());
    let (path, o) = (path.to_path_buf(), o.clone());
    let fifo = fifo.then_some(path.clone());
    promptly(&what, fifo.as_deref(), move || {
        match Lock::open(&path, &o) {
            Ok(_) => (0, String::new()),
            Err(e) => (e.errno(), e.detail().to_string()),
        }
    })
}

// ---------------------------------------------------------------------------------
// The tests.

/// `peer` cannot open `path` with any kernel backend and open flags: EACCES, and a
/// message that names the file and says "permission denied".
fn cannot_open(peer: &mut Peer, path: &Path) {
    for b in KERNEL {
        for bits in OPEN_FLAGS {
            let line = format!("open a {} {} {}", p(path), common::name(b), bits.bits());
            let reply = peer.cmd(&line);
            assert_eq!(errno_of(&reply), Some(libc::EACCES), "{line}: {reply}");
            assert!(
                reply.contains(&p(path)) && reply.contains("permission denied"),
                "{line}: the message does not name the file and the cause: {reply}"
            );
        }
    }
}

/// A lock file created by its owner (mode 0600) cannot be opened by another user, with
/// any backend or flag: EACCES, with a message that names the file and says
/// "permission denied"; the owner's lock stays held throughout. Owners: an
/// unprivileged user, against another one, in a sticky directory; and root, against
/// nobody.
#[test]
fn a_lock_file_of_another_user_cannot_be_opened_against_its_owner() {
    let test = "a_lock_file_of_another_user_cannot_be_opened_against_its_owner";
    if !needs_root(test) {
        return;
    }
    let world = World::new("owned");

    // An unprivileged owner.
    let path = world.at("owned.lock");
    let mut owner = world.peer_as(NOBODY);
    cmd_ok(
        &mut owner,
        &format!("open o {} flock {}", p(&path), Flags::CREATE.bits()),
    );
    cmd_ok(&mut owner, "lock o ex 0");
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o7777),
        (NOBODY, 0o600),
        "the created file"
    );
    let before = snapshot(&path);
    cannot_open(&mut world.peer_as(OTHER), &path);
    // The owner's lock is still held: another process of the owner cannot take it,
    // and root sees the owner holding it.
    let mut owner2 = world.peer_as(NOBODY);
    cmd_ok(&mut owner2, &format!("open o2 {} flock 0", p(&path)));
    assert_eq!(errno_of(&owner2.cmd("lock o2 sh 0")), Some(libc::EAGAIN));
    let mine = Lock::open(&path, &Options::new()).unwrap();
    let who = mine.query(Mode::Shared, 0, 0).unwrap();
    assert_eq!(who.map(|h| h.pid), Some(owner.pid()), "the holder");
    cmd_ok(&mut owner, "unlock o");
    cmd_ok(&mut owner2, "lock o2 ex 0");
    assert_eq!(snapshot(&path), before, "the lock file changed");

    // Root as the owner, nobody as the other user.
    let path = world.at("root.lock");
    let root_lock = Lock::open(&path, &Options::new().flags(Flags::CREATE)).unwrap();
    root_lock.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o600), "the created file");
    cannot_open(&mut world.peer_as(NOBODY), &path);
    let mut root_peer = Peer::spawn();
    cmd_ok(&mut root_peer, &format!("open r {} flock 0", p(&path)));
    assert_eq!(errno_of(&root_peer.cmd("lock r sh 0")), Some(libc::EAGAIN));
    root_lock.unlock(0, 0).unwrap();
    cmd_ok(&mut root_peer, "lock r ex 0");
}

/// EACCES from an open says which call failed on which file and why, in the
/// detail that `unilock_last_error` returns, and `describe` names the errno.
#[test]
fn eacces_is_a_clear_error() {
    let test = "eacces_is_a_clear_error";
    if !needs_root(test) {
        return;
    }
    let world = World::new("eacces");
    let path = world.at("private.lock");
    drop(Lock::open(&path, &Options::new().flags(Flags::CREATE)).unwrap());
    let mut nobody = world.peer_as(NOBODY);
    for b in KERNEL {
        let reply = nobody.cmd(&format!(
            "open a {} {} {}",
            p(&path),
            common::name(b),
            Flags::CREATE.bits()
        ));
        let detail = reply
            .strip_prefix(&format!("err {} ", libc::EACCES))
            .unwrap_or_else(|| panic!("{b:?}: not EACCES: {reply}"));
        assert!(
            detail.starts_with("open ") && detail.contains(&p(&path)),
            "{b:?}: the call and the file: {detail}"
        );
        assert!(
            detail.ends_with("permission denied"),
            "{b:?}: the cause: {detail}"
        );
    }
    assert_eq!(unilock::describe(libc::EACCES), "permission denied");
}

/// A DOTLOCK lock file that its owner made (0600) cannot be read by another user,
/// but it exists, so the lock is held: a try fails with EAGAIN, a wait times out or
/// is granted when the owner releases, and the file is never removed by the other.
#[test]
fn a_dotlock_lock_file_of_another_user_holds_the_lock() {
    let test = "a_dotlock_lock_file_of_another_user_holds_the_lock";
    if !needs_root(test) {
        return;
    }
    let world = World::new("dotlock-owner");
    let path = world.at("mailbox.lock");
    let mut owner = world.peer_as(NOBODY);
    cmd_ok(&mut owner, &format!("open d {} dotlock 0", p(&path)));
    cmd_ok(&mut owner, "lock d ex 0");
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    let before = snapshot(&path);
    let mut other = world.peer_as(OTHER);
    cmd_ok(&mut other, &format!("open d {} dotlock 0", p(&path)));
    let tried = other.cmd("lock d ex 0");
    let started = Instant::now();
    let waited = other.cmd("lock d ex 300");
    let wait_took = started.elapsed();
    let unchanged = snapshot(&path) == before;
    other.send("lock d ex 10000");
    std::thread::sleep(Duration::from_millis(100));
    cmd_ok(&mut owner, "unlock d");
    let released = Instant::now();
    let granted = other.recv();
    let grant_took = released.elapsed();
    let outcome = format!(
        "a try: {tried:?}; a 300 ms wait: {waited:?} after {wait_took:?}; a wait across \
         the owner's release: {granted:?} {grant_took:?} after it"
    );
    assert!(unchanged, "the owner's lock file changed; {outcome}");
    assert_eq!(errno_of(&tried), Some(libc::EAGAIN), "{outcome}");
    assert_eq!(errno_of(&waited), Some(libc::ETIMEDOUT), "{outcome}");
    assert!(wait_took >= Duration::from_millis(300), "{outcome}");
    assert_eq!(granted, "ok", "{outcome}");
    assert!(grant_took < PROMPT, "{outcome}");
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), OTHER);
}

/// In a sticky, world-writable directory, nobody plants a symbolic link to a file of
/// root's, a dangling one, and a FIFO, under the names root locks: every open by root
/// is refused at once (ELOOP for the links, EINVAL naming the FIFO), with every kernel
/// backend with and without CREATE (and UNLINK), with DOTLOCK, and with a DOTLOCK and
/// FLOCK set (whose lock file is the path plus ".lock"); nothing is created, followed,
/// written or removed.
#[test]
fn planted_symlinks_and_fifos_in_a_sticky_directory_are_refused_without_blocking() {
    let test = "planted_symlinks_and_fifos_in_a_sticky_directory_are_refused_without_blocking";
    if !needs_root(test) {
        return;
    }
    let world = World::new("planted");
    let precious = world.precious();
    let missing = world.private.join("missing");
    let before = snapshot(&precious);
    let mut nobody = world.peer_as(NOBODY);
    let link = world.at("x.lock");
    let dangling = world.at("dangling.lock");
    let fifo = world.at("fifo.lock");
    cmd_ok(
        &mut nobody,
        &format!("symlink {} {}", p(&precious), p(&link)),
    );
    cmd_ok(
        &mut nobody,
        &format!("symlink {} {}", p(&missing), p(&dangling)),
    );
    cmd_ok(&mut nobody, &format!("mkfifo {}", p(&fifo)));

    let mut cases: Vec<Options> = Vec::new();
    for b in KERNEL {
        for bits in OPEN_FLAGS {
            cases.push(Options::new().backend(b).flags(bits));
        }
    }
    cases.push(Options::new().backend(Backend::Dotlock));
    for o in &cases {
        for path in [&link, &dangling] {
            let (errno, detail) = open_promptly(path, o, false);
            assert_eq!(
                errno,
                libc::ELOOP,
                "{} with {o:?}: {detail}",
                path.display()
            );
            assert!(detail.contains("symbolic link"), "{detail}");
        }
        let (errno, detail) = open_promptly(&fifo, o, true);
        assert_eq!(errno, libc::EINVAL, "the FIFO with {o:?}: {detail}");
        assert!(detail.contains("FIFO"), "{detail}");
    }
    // A set's lock file is the path plus ".lock": planted there, it is refused too.
    let set = Options::new()
        .backends([Backend::Dotlock, Backend::Flock])
        .flags(Flags::CREATE);
    for (base, planted) in [("mbox-link", &link), ("mbox-fifo", &fifo)] {
        let lock_file = world.at(&format!("{base}.lock"));
        std::fs::rename(planted, &lock_file).unwrap();
        let is_fifo = planted == &fifo;
        let (errno, detail) = open_promptly(&world.at(base), &set, is_fifo);
        let expected = if is_fifo { libc::EINVAL } else { libc::ELOOP };
        assert_eq!(errno, expected, "a set with {base}.lock planted: {detail}");
        std::fs::rename(&lock_file, planted).unwrap();
    }
    assert_eq!(snapshot(&precious), before, "the link's target changed");
    assert!(!missing.exists(), "the dangling link's target was created");
    for planted in [&link, &dangling, &fifo] {
        let m = std::fs::symlink_metadata(planted).unwrap();
        assert_eq!(m.uid(), NOBODY, "{} was replaced", planted.display());
    }
}

/// The lock calls meet what is planted after the open: a DOTLOCK handle whose lock
/// file name becomes a symbolic link or a FIFO, and an UNLINK handle that opens its
/// path again after its file was removed on release. Each lock call, given 5 s, fails
/// at once (ELOOP, EINVAL) and leaves the planted file and the link's target alone.
#[test]
fn links_and_fifos_planted_after_the_open_are_refused_by_the_lock_call() {
    let test = "links_and_fifos_planted_after_the_open_are_refused_by_the_lock_call";
    if !needs_root(test) {
        return;
    }
    let world = World::new("planted-late");
    let precious = world.precious();
    let before = snapshot(&precious);
    let mut nobody = world.peer_as(NOBODY);
    let mut handles: Vec<(String, Lock, PathBuf)> = Vec::new();
    let path = world.at("late.lock");
    let dot = Lock::open(&path, &Options::new().backend(Backend::Dotlock)).unwrap();
    handles.push(("dotlock".into(), dot, path));
    for b in KERNEL {
        let path = world.at(&format!("unlink-{}.lock", common::name(b)));
        let o = Options::new()
            .backend(b)
            .flags(Flags::CREATE | Flags::UNLINK);
        let l = Lock::open(&path, &o).unwrap();
        l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
        l.unlock(0, 0).unwrap();
        assert!(!path.exists(), "{b:?}: the file was not removed on release");
        handles.push((common::name(b).into(), l, path));
    }
    let handles = std::sync::Arc::new(handles);
    for (i, (what, _, path)) in handles.iter().enumerate() {
        for (plant, errno, word) in [
            (
                format!("symlink {} {}", p(&precious), p(path)),
                libc::ELOOP,
                "symbolic link",
            ),
            (format!("mkfifo {}", p(path)), libc::EINVAL, "FIFO"),
        ] {
            cmd_ok(&mut nobody, &plant);
            let all = handles.clone();
            let (got, detail) = promptly(
                &format!("{what}: lock after `{plant}`"),
                Some(path),
                move || match all[i].1.lock(Mode::Exclusive, 0, 0, Some(PATIENT)) {
                    Ok(()) => (0, String::new()),
                    Err(e) => (e.errno(), e.detail().to_string()),
                },
            );
            assert_eq!(got, errno, "{what} after `{plant}`: {detail}");
            assert!(detail.contains(word), "{what}: {detail}");
            let m = std::fs::symlink_metadata(path).unwrap();
            assert_eq!(m.uid(), NOBODY, "{what}: the planted file was replaced");
            cmd_ok(&mut nobody, &format!("remove {}", p(path)));
        }
    }
    assert_eq!(snapshot(&precious), before, "the link's target changed");
}

/// Sets `fs.protected_regular` for the life of the guard.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, &self.old);
    }
}

/// `fs.protected_regular` on (at least 1) for the test: the guard that restores it
/// when this turned it on, or why it is not on.
fn protected_regular() -> Result<Option<Sysctl>, String> {
    let path = "/proc/sys/fs/protected_regular";
    let old = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    if old.trim() != "0" {
        return Ok(None);
    }
    std::fs::write(path, "1").map_err(|e| format!("{path} is 0 and cannot be set: {e}"))?;
    Ok(Some(Sysctl { path, old }))
}

/// With `fs.protected_regular` on, the kernel refuses `O_CREAT` on an existing file of
/// another user in a sticky world-writable directory, even to root (flock(1) fails
/// there). The library opens an existing file without `O_CREAT`, so root, and a third
/// user who may read the file, lock it with CREATE, read-only where that is all they
/// may.
#[test]
fn an_existing_file_of_another_user_in_a_sticky_directory_is_opened_without_o_creat() {
    let test = "an_existing_file_of_another_user_in_a_sticky_directory_is_opened_without_o_creat";
    if !needs_root(test) {
        return;
    }
    let _guard = match protected_regular() {
        Ok(guard) => guard,
        Err(reason) => return common::not_run(test, "permissions", &reason),
    };
    let world = World::new("sticky-existing");
    let path = world.at("theirs.lock");
    let mut nobody = world.peer_as(NOBODY);
    cmd_ok(&mut nobody, &format!("write {} 644", p(&path)));
    let before = snapshot(&path);

    // The kernel's rule holds here: O_CREAT on that file is refused, even to root.
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: open of a NUL-terminated path; the descriptor is closed if made.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CREAT, 0o600) };
    let e = std::io::Error::last_os_error();
    if fd >= 0 {
        // SAFETY: closes the descriptor just made.
        unsafe { libc::close(fd) };
    }
    assert_eq!(
        (fd, e.raw_os_error()),
        (-1, Some(libc::EACCES)),
        "O_CREAT on another user's file in a sticky directory"
    );

    for b in KERNEL {
        let l = Lock::open(&path, &Options::new().backend(b).flags(Flags::CREATE))
            .unwrap_or_else(|e| panic!("{b:?}: {e}"));
        l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
        let h = common::name(b);
        cmd_ok(&mut nobody, &format!("open {h} {} {h} 0", p(&path)));
        assert_eq!(
            errno_of(&nobody.cmd(&format!("lock {h} sh 0"))),
            Some(libc::EAGAIN),
            "{b:?}: the owner while root holds it"
        );
        l.unlock(0, 0).unwrap();
        cmd_ok(&mut nobody, &format!("lock {h} sh 0"));
        cmd_ok(&mut nobody, &format!("close {h}"));
    }

    // A third user, who may only read the file.
    let mut other = world.peer_as(OTHER);
    cmd_ok(&mut nobody, &format!("open n {} flock 0", p(&path)));
    cmd_ok(&mut nobody, "lock n sh 0");
    for b in KERNEL {
        let h = common::name(b);
        let line = format!("open {h} {} {h} {}", p(&path), Flags::CREATE.bits());
        cmd_ok(&mut other, &line);
        cmd_ok(&mut other, &format!("lock {h} sh 0"));
        let reply = other.cmd(&format!("lock {h} ex 0"));
        let expected = match b {
            // flock needs no write access: held shared by the owner.
            Backend::Flock => libc::EAGAIN,
            // An exclusive fcntl lock needs a writable descriptor.
            _ => libc::EACCES,
        };
        assert_eq!(errno_of(&reply), Some(expected), "{b:?}: {reply}");
    }
    drop(other);
    drop(nobody);
    assert_eq!(snapshot(&path), before, "the file changed");
}
