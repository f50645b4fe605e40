//! SPEC "Safety": how files are created, opened and never modified; what is refused
//! (symbolic links, FIFOs, sockets, devices) and what is accepted (directories with
//! FLOCK, read-only files); descriptors close-on-exec unless INHERIT.

mod common;

use std::fs::Permissions;
use std::os::fd::{AsFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use common::{ALL, Peer, TRY, TempDir, err, name, opts};
use unilock::{Backend, Flags, Lock, Mode, Options};

#[test]
fn peer_main() {
    if std::env::var_os(common::PEER_ENV).is_some() {
        common::peer_loop();
    }
}

fn permission_bits(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

fn set_umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask only swaps the process's creation mask.
    unsafe { libc::umask(mask) }
}

/// The only test of this binary that depends on the umask (tests run in threads).
#[test]
fn created_files_are_0600_unless_create_mode_says_otherwise() {
    let dir = TempDir::new("create-mode");
    let old = set_umask(0o022);
    let mut failures = Vec::new();
    for (umask, create_mode, expected) in [
        (0o022, 0, 0o600),
        (0o022, 0o640, 0o640),
        (0o022, 0o666, 0o644),
        // With no umask at all, the default is still 0600, not 0666.
        (0, 0, 0o600),
        (0, 0o640, 0o640),
    ] {
        set_umask(umask);
        for b in ALL {
            let path = dir.0.join(format!("{}-{umask:o}-{create_mode:o}", name(b)));
            let o = opts(b).create_mode(create_mode);
            let result = Lock::open(&path, &o);
            let got = result.as_ref().ok().map(|_| permission_bits(&path));
            if got != Some(expected) {
                let got = got.map(|m| format!("{m:o}"));
                failures.push(format!(
                    "{b:?} umask {umask:o} create_mode {create_mode:o}: {result:?} mode {got:?}, \
                     expected {expected:o}"
                ));
            }
        }
    }
    set_umask(old);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_missing_file_without_create_gives_enoent_and_creates_nothing() {
    let dir = TempDir::new("enoent");
    let path = dir.0.join("missing");
    for b in ALL {
        let e = Lock::open(&path, &Options::new().backend(b)).unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT, "{b:?}: {e}");
        assert!(!path.exists(), "{b:?} created the file");
    }
}

#[test]
fn a_symlink_as_last_component_is_refused_unless_follow() {
    let dir = TempDir::new("symlink");
    let target = dir.file("target");
    let link = dir.0.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let dangling = dir.0.join("dangling");
    let nowhere = dir.0.join("nowhere");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
    for b in ALL {
        let e = Lock::open(&link, &opts(b)).unwrap_err();
        assert_eq!(e.errno(), libc::ELOOP, "{b:?}: {e}");
        // A dangling link with CREATE must not create its target either.
        let e = Lock::open(&dangling, &opts(b)).unwrap_err();
        assert_eq!(e.errno(), libc::ELOOP, "{b:?} dangling: {e}");
        assert!(
            !nowhere.exists(),
            "{b:?}: created the target of a refused link"
        );
    }
    // Links in the directory part of the path are followed as usual.
    let dir_link = dir.0.join("dirlink");
    std::os::unix::fs::symlink(&dir.0, &dir_link).unwrap();
    Lock::open(dir_link.join("target"), &opts(Backend::Flock)).unwrap();

    // With FOLLOW the target is locked: a peer locking the target conflicts.
    let mut peer = Peer::spawn();
    for b in ALL {
        let lock = Lock::open(&link, &opts(b).flags(Flags::FOLLOW)).unwrap();
        lock.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
        let h = name(b);
        assert_eq!(
            peer.cmd(&format!("open {h} {} {h}", target.display())),
            "ok"
        );
        assert_eq!(
            peer.cmd(&format!("lock {h} sh 0 0 0")),
            err(libc::EAGAIN),
            "{b:?}"
        );
        lock.unlock(0, 0).unwrap();
        assert_eq!(peer.cmd(&format!("lock {h} sh 0 0 0")), "ok", "{b:?}");
        assert_eq!(peer.cmd(&format!("close {h}")), "ok");
    }
}

/// Opens in another thread and waits at most a second: a blocking open fails the test
/// instead of hanging it.
fn open_within_a_second(path: &Path, o: &Options) -> unilock::Result<Lock> {
    let (tx, rx) = mpsc::channel();
    let (path, o) = (path.to_path_buf(), o.clone());
    std::thread::spawn(move || {
        let _ = tx.send(Lock::open(&path, &o));
    });
    rx.recv_timeout(Duration::from_secs(1))
        .unwrap_or_else(|_| panic!("opening blocked for a second"))
}

#[test]
fn fifos_sockets_and_devices_are_refused_without_blocking() {
    let dir = TempDir::new("special");
    let fifo = dir.0.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let socket = dir.0.join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let fifo_link = dir.0.join("fifo-link");
    std::os::unix::fs::symlink(&fifo, &fifo_link).unwrap();
    let cases: [(&Path, &str, Flags); 5] = [
        (&fifo, "FIFO", Flags::empty()),
        (&fifo_link, "FIFO", Flags::FOLLOW),
        (&socket, "socket", Flags::empty()),
        (Path::new("/dev/null"), "device", Flags::empty()),
        (Path::new("/dev/zero"), "device", Flags::FOLLOW),
    ];
    for (path, kind, extra) in cases {
        for b in ALL {
            let e = open_within_a_second(path, &opts(b).flags(extra)).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL, "{b:?} {}: {e}", path.display());
            assert!(
                e.detail().contains(kind),
                "{b:?} {}: message {:?} does not name the {kind}",
                path.display(),
                e.detail()
            );
        }
    }
}

#[test]
fn a_directory_can_be_locked_with_flock() {
    let dir = TempDir::new("directory");
    let locked = dir.0.join("d");
    std::fs::create_dir(&locked).unwrap();
    let lock = Lock::open(&locked, &Options::new()).unwrap();
    lock.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    let mut peer = Peer::spawn();
    assert_eq!(
        peer.cmd(&format!("open p {} flock", locked.display())),
        "ok"
    );
    assert_eq!(peer.cmd("lock p sh 0 0 0"), err(libc::EAGAIN));
    lock.lock(Mode::Shared, 0, 0, TRY).unwrap();
    assert_eq!(peer.cmd("lock p sh 0 0 0"), "ok");
    assert_eq!(
        lock.lock(Mode::Exclusive, 0, 0, TRY).unwrap_err().errno(),
        libc::EAGAIN
    );
    assert_eq!(peer.cmd("unlock p 0 0"), "ok");
    lock.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    // Nothing appeared in the directory.
    assert_eq!(std::fs::read_dir(&locked).unwrap().count(), 0);
}

fn cloexec(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on a descriptor the caller owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert!(flags >= 0, "F_GETFD on {fd}");
    flags & libc::FD_CLOEXEC != 0
}

/// What descriptor `fd` of an exec'd shell names ("" when it has none).
fn seen_after_exec(fd: RawFd) -> String {
    let out = Command::new("/bin/sh")
        .args(["-c", &format!("readlink /proc/$$/fd/{fd} || true")])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn descriptors_are_close_on_exec_unless_inherit() {
    let dir = TempDir::new("cloexec");
    let path = dir.file("f");
    let file = std::fs::File::open(&path).unwrap();
    for b in ALL {
        let plain = Lock::open(&path, &opts(b)).unwrap();
        assert!(cloexec(plain.fd().unwrap()), "{b:?}: open without INHERIT");
        let kept = Lock::open(&path, &opts(b).flags(Flags::INHERIT)).unwrap();
        assert!(!cloexec(kept.fd().unwrap()), "{b:?}: open with INHERIT");
        let dup = Lock::from_fd(file.as_fd(), &opts(b)).unwrap();
        assert!(cloexec(dup.fd().unwrap()), "{b:?}: from_fd without INHERIT");
        let dup_kept = Lock::from_fd(file.as_fd(), &opts(b).flags(Flags::INHERIT)).unwrap();
        assert!(
            !cloexec(dup_kept.fd().unwrap()),
            "{b:?}: from_fd with INHERIT"
        );
    }
    // And exec really keeps or drops it.
    let plain = Lock::open(&path, &opts(Backend::Flock)).unwrap();
    let kept = Lock::open(&path, &opts(Backend::Flock).flags(Flags::INHERIT)).unwrap();
    let real = std::fs::canonicalize(&path).unwrap();
    assert_eq!(seen_after_exec(kept.fd().unwrap()), real.to_str().unwrap());
    assert_ne!(seen_after_exec(plain.fd().unwrap()), real.to_str().unwrap());
    drop(file);
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    content: Vec<u8>,
    len: u64,
    mode: u32,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn snapshot(path: &Path) -> Snapshot {
    let m = std::fs::metadata(path).unwrap();
    Snapshot {
        content: std::fs::read(path).unwrap(),
        len: m.len(),
        mode: m.mode(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    }
}

#[test]
fn locking_never_changes_content_size_or_times() {
    let dir = TempDir::new("untouched");
    for b in ALL {
        let path = dir.0.join(name(b));
        let content: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000))
            .unwrap();
        drop(f);
        let before = snapshot(&path);
        assert_eq!(before.content, content);

        let a = Lock::open(&path, &opts(b)).unwrap();
        let other = Lock::open(&path, &opts(b)).unwrap();
        a.lock(Mode::Shared, 0, 0, TRY).unwrap();
        a.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
        assert!(other.lock(Mode::Shared, 0, 0, TRY).is_err());
        a.lock(Mode::Shared, 0, 0, TRY).unwrap();
        if b != Backend::Flock {
            a.lock(Mode::Exclusive, 100, 10_000, TRY).unwrap();
            a.unlock(200, 50).unwrap();
            other.lock(Mode::Exclusive, 200, 50, TRY).unwrap();
        }
        a.unlock(0, 0).unwrap();
        other.close().unwrap();
        a.close().unwrap();
        let after = snapshot(&path);
        assert_eq!(after, before, "{b:?}: the file changed");
    }
}

/// True when a user other than the owner can execute `exe` (every directory on the way
/// searchable, the file readable and executable by others).
fn runnable_by_others(exe: &Path) -> bool {
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.mode()).unwrap_or(0);
    mode(exe) & 0o005 == 0o005 && exe.ancestors().skip(1).all(|d| mode(d) & 0o001 != 0)
}

/// A peer running as nobody (65534) on a file owned by root with mode 0644: shared OFD
/// and POSIX locks through a read-only descriptor, an exclusive FLOCK lock (flock needs
/// no write access), and EACCES for an exclusive fcntl lock. As a non-root user the same
/// checks run in this process on a file it cannot write.
#[test]
fn a_read_only_file_takes_the_locks_its_access_allows() {
    let dir = TempDir::new("readonly");
    std::fs::set_permissions(&dir.0, Permissions::from_mode(0o755)).unwrap();
    let path = dir.0.join("f");
    std::fs::write(&path, b"read only").unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        std::fs::set_permissions(&path, Permissions::from_mode(0o444)).unwrap();
        let o = |b| Options::new().backend(b);
        for b in [Backend::Ofd, Backend::Posix] {
            let l = Lock::open(&path, &o(b)).unwrap();
            l.lock(Mode::Shared, 0, 0, TRY).unwrap();
            assert_eq!(
                l.lock(Mode::Exclusive, 0, 0, TRY).unwrap_err().errno(),
                libc::EACCES,
                "{b:?}"
            );
        }
        let f = Lock::open(&path, &o(Backend::Flock)).unwrap();
        f.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
        return;
    }
    std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
    let mut exe = std::env::current_exe().unwrap();
    if !runnable_by_others(&exe) {
        let copy: PathBuf = dir.0.join("peer");
        std::fs::copy(&exe, &copy).unwrap();
        std::fs::set_permissions(&copy, Permissions::from_mode(0o755)).unwrap();
        exe = copy;
    }
    assert!(
        runnable_by_others(&exe),
        "{} not runnable by nobody",
        exe.display()
    );
    let before = snapshot(&path);
    let mut peer = Peer::spawn_as(&exe, 65534, 65534);
    let status = std::fs::read_to_string(format!("/proc/{}/status", peer.pid())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().nth(2),
        Some("65534"),
        "the peer runs as {uid}"
    );
    let p = path.display();
    for h in ["ofd", "posix", "flock"] {
        assert_eq!(peer.cmd(&format!("open {h} {p} {h}")), "ok", "{h}");
    }
    assert_eq!(peer.cmd("lock ofd sh 0 0 0"), "ok");
    assert_eq!(peer.cmd("lock ofd ex 0 0 0"), err(libc::EACCES));
    assert_eq!(peer.cmd("lock posix sh 0 0 0"), "ok");
    assert_eq!(peer.cmd("lock posix ex 10 10 0"), err(libc::EACCES));
    assert_eq!(peer.cmd("lock flock ex 0 0 0"), "ok");
    // The peer's locks are real: root cannot take them here.
    let mine = Lock::open(&path, &Options::new().backend(Backend::Ofd)).unwrap();
    assert_eq!(
        mine.lock(Mode::Exclusive, 0, 0, TRY).unwrap_err().errno(),
        libc::EAGAIN
    );
    mine.lock(Mode::Shared, 0, 0, TRY).unwrap();
    let flock = Lock::open(&path, &Options::new()).unwrap();
    assert_eq!(
        flock.lock(Mode::Shared, 0, 0, TRY).unwrap_err().errno(),
        libc::EAGAIN
    );
    peer.kill();
    let after = snapshot(&path);
    assert_eq!(after, before, "the read-only file changed");
    assert_eq!(
        std::fs::metadata(&path).unwrap().uid(),
        0,
        "the file changed owner"
    );
}
