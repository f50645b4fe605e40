//! DOTLOCK across fork(): the lock file belongs to the process that made it, so a
//! forked child's copy of the handle neither removes it by unlock nor by close. (Alone
//! in its test binary: the child of a fork inherits every descriptor of the process.)

mod common;

use std::time::{Duration, Instant};

use common::{TRY, TempDir};
use unilock::{Backend, Lock, Mode, Options};

/// The child's exit code for each way it can fail.
const UNLOCK_FAILED: i32 = 10;
const REMOVED_BY_UNLOCK: i32 = 11;
const CLOSE_FAILED: i32 = 12;
const REMOVED_BY_CLOSE: i32 = 13;

#[test]
fn a_forked_child_neither_unlocks_nor_closes_away_the_parents_lock_file() {
    let dir = TempDir::new("dot-fork");
    let path = dir.0.join("app.lock");
    let l = Lock::open(&path, &Options::new().backend(Backend::Dotlock)).unwrap();
    l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    // SAFETY: the child makes library calls and file checks only, then _exit; this
    // test binary runs this one test, so no other thread holds a lock at the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = if l.unlock(0, 0).is_err() {
            UNLOCK_FAILED
        } else if !path.exists() {
            REMOVED_BY_UNLOCK
        } else if l.close().is_err() {
            CLOSE_FAILED
        } else if !path.exists() {
            REMOVED_BY_CLOSE
        } else {
            0
        };
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let began = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child without blocking, into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid failed");
        if r == pid {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(10), "the child hangs");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(libc::WIFEXITED(status), "the child died: {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "see the child's exit codes");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.lines().next(),
        Some(std::process::id().to_string().as_str())
    );
    l.unlock(0, 0).unwrap();
    assert!(!path.exists());
}
