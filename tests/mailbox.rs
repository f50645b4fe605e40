//! A mailbox locked as mail programs lock one: a delivery agent on unilock with the set
//! DOTLOCK|OFD on `mbox` takes `mbox.lock` (the dot lock of lockfile-progs, procmail,
//! mutt) and an fcntl lock on `mbox` itself; it must exclude both a lockfile-progs
//! user and an fcntl user (Python's `fcntl.lockf`) of the same mailbox, and each of
//! theirs must exclude it. All the other parties are real processes.

mod common;
mod lockfile_tools;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{TRY, TempDir};
use lockfile_tools::{
    FcntlUser, L_MAXTRYS, UnilockHolder, content, flock_can_lock, later, owner_line, run, set, text,
};
use unilock::{Backend, Lock, Mode};

const DOTLOCK_OFD: u32 = Backend::Dotlock as u32 | Backend::Ofd as u32;

#[test]
fn holder_main() {
    lockfile_tools::holder_main();
}

/// A mailbox with a message in it, and the path of its dot lock.
fn mailbox(tag: &str) -> (TempDir, PathBuf, PathBuf) {
    let dir = TempDir::new(tag);
    let mbox = dir.0.join("mbox");
    std::fs::write(&mbox, "From a@b Thu Jan  1 00:00:00 1970\n\nhello\n").unwrap();
    let dot = dir.0.join("mbox.lock");
    (dir, mbox, dot)
}

fn errno_of(r: unilock::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.errno(),
    }
}

#[test]
fn a_dotlock_and_ofd_delivery_agent_excludes_lockfile_progs_and_fcntl_users() {
    let (_dir, mbox, dot) = mailbox("mbox-agent");
    let m = text(&mbox);
    let agent = UnilockHolder::start(DOTLOCK_OFD, &mbox);
    assert_eq!(
        owner_line(&dot),
        agent.pid().to_string(),
        "mbox.lock's owner"
    );
    assert_eq!(run("lockfile-create", &["--retry", "0", m]), L_MAXTRYS);
    assert_eq!(run("lockfile-check", &["--use-pid", m]), 0);
    assert!(
        !FcntlUser::can_lock(&mbox),
        "an fcntl user locked the mailbox"
    );

    agent.release();
    assert!(!dot.exists(), "the agent left mbox.lock");
    assert!(FcntlUser::can_lock(&mbox), "the agent left its fcntl lock");
    assert_eq!(run("lockfile-create", &["--retry", "0", m]), 0);
    assert_eq!(run("lockfile-remove", &[m]), 0);
}

#[test]
fn a_lockfile_progs_user_excludes_the_delivery_agent_until_it_removes_its_lock() {
    let (_dir, mbox, dot) = mailbox("mbox-lockfile-progs");
    let m = text(&mbox);
    assert_eq!(run("lockfile-create", &["--retry", "0", m]), 0);
    let theirs = content(&dot);
    let l = Lock::open(&mbox, &set(DOTLOCK_OFD)).unwrap();
    assert_eq!(errno_of(l.lock(Mode::Exclusive, 0, 0, TRY)), libc::EAGAIN);
    assert!(
        FcntlUser::can_lock(&mbox),
        "a failed try left the agent's fcntl lock taken"
    );
    let timeout = Duration::from_millis(150);
    assert_eq!(
        errno_of(l.lock(Mode::Exclusive, 0, 0, Some(timeout))),
        libc::ETIMEDOUT
    );
    assert!(FcntlUser::can_lock(&mbox));
    assert_eq!(content(&dot), theirs, "the agent changed their lock file");

    let mut remover = later(&format!("sleep 0.3; lockfile-remove {m}"));
    let began = Instant::now();
    l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(5)))
        .unwrap();
    let waited = began.elapsed();
    assert!(remover.wait().unwrap().success());
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(owner_line(&dot), std::process::id().to_string());
    assert!(!FcntlUser::can_lock(&mbox));
    assert_eq!(run("lockfile-check", &["--use-pid", m]), 0);

    l.unlock(0, 0).unwrap();
    assert!(!dot.exists());
    assert!(FcntlUser::can_lock(&mbox));
}

#[test]
fn an_fcntl_user_excludes_the_delivery_agent_and_a_failed_try_leaves_no_lock_file() {
    let (_dir, mbox, dot) = mailbox("mbox-fcntl");
    let m = text(&mbox);
    let user = FcntlUser::try_lock(&mbox, -1.0);
    assert!(user.locked);
    let l = Lock::open(&mbox, &set(DOTLOCK_OFD)).unwrap();
    assert_eq!(errno_of(l.lock(Mode::Exclusive, 0, 0, TRY)), libc::EAGAIN);
    assert!(!dot.exists(), "a failed try left mbox.lock behind");
    assert_eq!(
        run("lockfile-create", &["--retry", "0", m]),
        0,
        "the dot lock is not free after a failed try"
    );
    assert_eq!(run("lockfile-remove", &[m]), 0);
    let timeout = Duration::from_millis(150);
    assert_eq!(
        errno_of(l.lock(Mode::Exclusive, 0, 0, Some(timeout))),
        libc::ETIMEDOUT
    );
    assert!(!dot.exists(), "a timed-out wait left mbox.lock behind");
    user.release();

    // An fcntl user that lets go after 0.3 s: the agent's wait ends then.
    let user = FcntlUser::try_lock(&mbox, 0.3);
    assert!(user.locked);
    let began = Instant::now();
    l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(5)))
        .unwrap();
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(owner_line(&dot), std::process::id().to_string());
    assert!(!FcntlUser::can_lock(&mbox));
    user.release();
    l.unlock(0, 0).unwrap();
    assert!(!dot.exists());
}

#[test]
fn a_killed_delivery_agents_mailbox_lock_is_recovered() {
    let (_dir, mbox, dot) = mailbox("mbox-killed");
    let m = text(&mbox);
    // By liblockfile with its pid check (the kernel lock died with the agent).
    let agent = UnilockHolder::start(DOTLOCK_OFD, &mbox);
    agent.kill();
    assert!(dot.exists());
    assert!(FcntlUser::can_lock(&mbox));
    assert_eq!(run("lockfile-create", &["--use-pid", "--retry", "0", m]), 0);
    assert_eq!(run("lockfile-remove", &[m]), 0);
    // By another agent.
    let agent = UnilockHolder::start(DOTLOCK_OFD, &mbox);
    agent.kill();
    let l = Lock::open(&mbox, &set(DOTLOCK_OFD)).unwrap();
    l.lock(Mode::Exclusive, 0, 0, TRY)
        .expect("a dead agent's mbox.lock is stale");
    assert_eq!(owner_line(&dot), std::process::id().to_string());
    assert!(!FcntlUser::can_lock(&mbox));
    drop(l);
    assert!(!dot.exists());
}

#[test]
fn each_backend_set_excludes_the_users_of_its_mechanisms_and_only_them() {
    let (_dir, mbox, dot) = mailbox("mbox-sets");
    let m = text(&mbox);
    let (d, f, o, p) = (
        Backend::Dotlock as u32,
        Backend::Flock as u32,
        Backend::Ofd as u32,
        Backend::Posix as u32,
    );
    // (set, excludes lockfile-progs, excludes fcntl users, excludes flock(1))
    for (bits, dotlock, fcntl, flock) in [
        (d | o, true, true, false),
        (d | p, true, true, false),
        (d | f, true, false, true),
        (f | o, false, true, true),
        (d | f | o, true, true, true),
    ] {
        let agent = UnilockHolder::start(bits, &mbox);
        assert_eq!(dot.exists(), dotlock, "set {bits:#x}: mbox.lock");
        let created = run("lockfile-create", &["--retry", "0", m]);
        assert_eq!(
            created == L_MAXTRYS,
            dotlock,
            "set {bits:#x}: lockfile-create"
        );
        if created == 0 {
            assert_eq!(run("lockfile-remove", &[m]), 0);
        }
        assert_eq!(
            !FcntlUser::can_lock(&mbox),
            fcntl,
            "set {bits:#x}: fcntl user"
        );
        assert_eq!(!flock_can_lock(&mbox), flock, "set {bits:#x}: flock(1)");
        agent.release();
        assert!(!dot.exists(), "set {bits:#x}: mbox.lock left");
        assert!(FcntlUser::can_lock(&mbox) && flock_can_lock(&mbox));
    }
}
