//! DOTLOCK across fork(), as the README documents it: a held lock file is shared like
//! a FLOCK lock, so an unlock in the forked child removes it, a close in the child does
//! not (only the process that made it removes it on close). The child's release takes
//! its own path (an exclusive flock on a descriptor of its own, as the parent's is
//! shared with it). Alone in its test binary: the child of a fork inherits every
//! descriptor of the process.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{TRY, TempDir};
use unilock::{Backend, Lock, Mode, Options};

/// The child's exit codes.
const CLOSE_FAILED: i32 = 10;
const REMOVED_BY_CLOSE: i32 = 11;
const UNLOCK_FAILED: i32 = 12;
const LEFT_BY_UNLOCK: i32 = 13;

/// Forks; the child runs `child` and exits with its code; the parent returns that code.
fn in_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child makes library calls and file checks only, then _exit; this
    // test binary runs one test, so no other thread holds a lock at the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = child();
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
    libc::WEXITSTATUS(status)
}

fn owner(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn a_forked_childs_unlock_removes_the_lock_file_and_its_close_does_not() {
    let dir = TempDir::new("dot-fork");
    let path = dir.0.join("app.lock");
    let options = Options::new().backend(Backend::Dotlock);
    let l = Lock::open(&path, &options).unwrap();
    l.lock(Mode::Exclusive, 0, 0, TRY).unwrap();
    let code = in_child(|| {
        // SAFETY: the child's memory is its own copy: taking the handle out of it (the
        // child never touches `l` again) leaves the parent's handle as it is.
        let copy = unsafe { std::ptr::read(&l) };
        if copy.close().is_err() {
            CLOSE_FAILED
        } else if !path.exists() {
            REMOVED_BY_CLOSE
        } else {
            0
        }
    });
    assert_eq!(code, 0, "see the child's exit codes");
    assert_eq!(owner(&path), std::process::id().to_string());
    let code = in_child(|| match l.unlock(0, 0) {
        Err(_) => UNLOCK_FAILED,
        Ok(()) if path.exists() => LEFT_BY_UNLOCK,
        Ok(()) => 0,
    });
    assert_eq!(code, 0, "see the child's exit codes");
    assert!(!path.exists());
    // The parent's own release then finds its lock file gone.
    assert_eq!(l.unlock(0, 0).unwrap_err().errno(), libc::ENOLCK);
}
