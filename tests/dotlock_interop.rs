//! DOTLOCK against the programs that make the same lock files, all real processes:
//! liblockfile's lockfile-create, lockfile-check, lockfile-remove (lockfile-progs) and
//! dotlockfile, and procmail's lockfile(1); then the command's `-b dotlock`.
//!
//! What the tools write and when they call a lock stale (liblockfile 1.17,
//! lockfile-progs 0.1.19, procmail 3.22), which these tests rely on:
//!
//! - liblockfile links a temporary `.lkPID…` file to the lock file. It writes "PID\n":
//!   the caller's pid (the tool's parent) with lockfile-create `--use-pid` or
//!   dotlockfile `-p`, else "0\n". It reads a pid only when given that option: then a
//!   lock whose pid is dead (`kill(pid, 0)` fails with ESRCH) is stale at once;
//!   otherwise (no option, pid 0, an unreadable file) a lock is stale when its mtime is
//!   5 minutes old. After breaking a stale lock it retries at once, so `--retry 0`
//!   recovers one without sleeping.
//! - procmail's lockfile writes "0" (no newline) with mode 0444, never reads it, and
//!   breaks a lock only with `-l SECS`, once its mtime is that old (then sleeps `-s`
//!   seconds, 16 unless told).
//!
//! Their sleeps are avoided with `--retry 0`, `-r 0`, `-r0 -s0`: each test takes well
//! under a second or two. A missing tool fails the tests, it never skips them.

mod common;
mod lockfile_tools;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{TRY, TempDir};
use lockfile_tools::{
    EX_CANTCREAT, L_MAXTRYS, ShellHolder, UnilockHolder, age, content, dotlock, later, owner_line,
    run, text,
};
use unilock::{Backend, Lock, Mode};

const UNILOCK: &str = env!("CARGO_BIN_EXE_unilock");
const WAIT: Option<Duration> = Some(Duration::from_secs(5));

#[test]
fn holder_main() {
    lockfile_tools::holder_main();
}

fn me() -> String {
    std::process::id().to_string()
}

/// The ways the tools take a lock file.
const TOOL_LOCKS: [&str; 5] = [
    "lockfile-create",
    "lockfile-create --use-pid",
    "dotlockfile",
    "dotlockfile -p",
    "lockfile",
];

/// Makes `path` with the tool as `how` says. The owner of a lock with a pid is a shell
/// that stays alive until the returned holder is dropped or killed.
fn tool_lock(how: &str, path: &Path) -> Option<ShellHolder> {
    let p = text(path);
    match how {
        "lockfile-create" => {
            assert_eq!(
                run("lockfile-create", &["--retry", "0", "--lock-name", p]),
                0
            );
            None
        }
        "lockfile-create --use-pid" => Some(ShellHolder::start(&format!(
            "lockfile-create --use-pid --retry 0 --lock-name {p}"
        ))),
        "dotlockfile" => {
            assert_eq!(run("dotlockfile", &["-r", "0", p]), 0);
            None
        }
        "dotlockfile -p" => Some(ShellHolder::start(&format!("dotlockfile -p -r 0 {p}"))),
        "lockfile" => {
            assert_eq!(run("lockfile", &["-r0", p]), 0);
            None
        }
        "empty" => {
            std::fs::write(path, b"").unwrap();
            None
        }
        other => panic!("unknown tool lock {other}"),
    }
}

/// The command that removes a tool's lock file.
fn tool_unlock(how: &str, path: &Path) -> String {
    let p = text(path);
    match how.split(' ').next().unwrap() {
        "lockfile-create" => format!("lockfile-remove --lock-name {p}"),
        "dotlockfile" => format!("dotlockfile -u {p}"),
        _ => format!("rm -f {p}"),
    }
}

fn lock_path(dir: &TempDir, how: &str) -> PathBuf {
    dir.0.join(format!("{}.lock", how.replace([' ', '-'], "_")))
}

fn errno_of(r: unilock::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.errno(),
    }
}

#[test]
fn each_tools_lock_file_makes_a_try_fail_with_eagain_and_a_timed_wait_time_out() {
    let dir = TempDir::new("dot-tool-held");
    for how in TOOL_LOCKS {
        let path = lock_path(&dir, how);
        let holder = tool_lock(how, &path);
        let before = content(&path);
        for stale in [0, 3600] {
            let l = Lock::open(&path, &dotlock(stale)).unwrap();
            assert_eq!(
                errno_of(l.lock(Mode::Exclusive, 0, 0, TRY)),
                libc::EAGAIN,
                "{how} ({before:?}), stale_after_s {stale}"
            );
        }
        let l = Lock::open(&path, &dotlock(0)).unwrap();
        let began = Instant::now();
        let timeout = Duration::from_millis(150);
        assert_eq!(
            errno_of(l.lock(Mode::Exclusive, 0, 0, Some(timeout))),
            libc::ETIMEDOUT,
            "{how}"
        );
        let waited = began.elapsed();
        assert!(
            waited >= timeout && waited < Duration::from_secs(2),
            "{how}: {waited:?}"
        );
        assert_eq!(
            content(&path),
            before,
            "{how}: unilock changed a lock file it does not hold"
        );
        drop(holder);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn a_timed_wait_ends_when_the_tool_removes_its_lock_file() {
    let dir = TempDir::new("dot-tool-wait");
    for how in ["lockfile-create", "dotlockfile -p", "lockfile"] {
        let path = lock_path(&dir, how);
        let holder = tool_lock(how, &path);
        let l = Lock::open(&path, &dotlock(0)).unwrap();
        let mut remover = later(&format!("sleep 0.3; {}", tool_unlock(how, &path)));
        let began = Instant::now();
        l.lock(Mode::Exclusive, 0, 0, WAIT)
            .unwrap_or_else(|e| panic!("{how}: {e}"));
        let waited = began.elapsed();
        assert!(
            remover.wait().unwrap().success(),
            "{how}: the remover failed"
        );
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
            "{how}: the wait took {waited:?} for a lock removed after 0.3 s"
        );
        assert_eq!(owner_line(&path), me(), "{how}: the new lock file's owner");
        l.unlock(0, 0).unwrap();
        assert!(!path.exists(), "{how}: unlock left the lock file");
        drop(holder);
    }
}

#[test]
fn a_lock_unilock_holds_makes_the_tools_fail_and_lockfile_check_report_it_held() {
    let dir = TempDir::new("dot-unilock-held");
    let path = dir.0.join("app.lock");
    let p = text(&path);
    let holder = UnilockHolder::start(Backend::Dotlock as u32, &path);
    let held = content(&path);
    // liblockfile reads the pid with atoi(): it must come first, ended by a newline.
    assert!(
        held.starts_with(&format!("{}\n", holder.pid())),
        "the lock file starts with {held:?}, not the holder's pid {} and a newline",
        holder.pid()
    );
    for line in held.lines().skip(1) {
        assert!(line.contains('='), "{line:?} in {held:?} is not key=value");
    }

    assert_eq!(
        run("lockfile-create", &["--retry", "0", "--lock-name", p]),
        L_MAXTRYS
    );
    assert_eq!(
        run(
            "lockfile-create",
            &["--use-pid", "--retry", "0", "--lock-name", p]
        ),
        L_MAXTRYS
    );
    assert_eq!(run("dotlockfile", &["-p", "-r", "0", p]), L_MAXTRYS);
    assert_eq!(run("lockfile", &["-r0", p]), EX_CANTCREAT);
    assert_eq!(
        run("lockfile", &["-r0", "-l", "3600", "-s0", p]),
        EX_CANTCREAT
    );
    assert_eq!(run("lockfile-check", &["--lock-name", p]), 0);
    assert_eq!(
        run("lockfile-check", &["--use-pid", "--lock-name", p]),
        0,
        "liblockfile does not see the holder's pid as alive"
    );
    assert_eq!(content(&path), held, "a tool changed the lock file");

    holder.release();
    assert!(!path.exists(), "the released lock file is still there");
    assert_ne!(run("lockfile-check", &["--lock-name", p]), 0);
    assert_eq!(
        run("lockfile-create", &["--retry", "0", "--lock-name", p]),
        0
    );
    assert_eq!(run("lockfile-remove", &["--lock-name", p]), 0);
}

#[test]
fn a_killed_unilock_holders_lock_file_is_broken_by_the_tools_by_their_rules() {
    let dir = TempDir::new("dot-unilock-killed");
    let path = dir.0.join("app.lock");
    let p = text(&path);
    let killed = || {
        let holder = UnilockHolder::start(Backend::Dotlock as u32, &path);
        let pid = holder.pid().to_string();
        holder.kill();
        assert_eq!(owner_line(&path), pid, "the killed holder's lock file");
    };

    // liblockfile with its pid check: a dead owner is broken at once.
    killed();
    assert_ne!(run("lockfile-check", &["--use-pid", "--lock-name", p]), 0);
    assert_eq!(
        run("lockfile-create", &["--retry", "0", "--lock-name", p]),
        L_MAXTRYS
    );
    assert_eq!(
        run(
            "lockfile-create",
            &["--use-pid", "--retry", "0", "--lock-name", p]
        ),
        0
    );
    assert_eq!(
        owner_line(&path),
        me(),
        "lockfile-create wrote its parent's pid"
    );
    std::fs::remove_file(&path).unwrap();

    killed();
    assert_eq!(run("dotlockfile", &["-p", "-r", "0", p]), 0);
    std::fs::remove_file(&path).unwrap();

    // Without it, only by age: valid while younger than 5 minutes.
    killed();
    assert_eq!(run("lockfile-check", &["--lock-name", p]), 0);
    age(&path, 310);
    assert_ne!(run("lockfile-check", &["--lock-name", p]), 0);
    assert_eq!(
        run("lockfile-create", &["--retry", "0", "--lock-name", p]),
        0
    );
    assert_eq!(content(&path), "0\n");
    std::fs::remove_file(&path).unwrap();

    // procmail's lockfile, by age with -l.
    killed();
    assert_eq!(
        run("lockfile", &["-r0", "-l", "60", "-s0", p]),
        EX_CANTCREAT
    );
    age(&path, 120);
    assert_eq!(run("lockfile", &["-r0", "-l", "60", "-s0", p]), 0);
    assert_eq!(content(&path), "0");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_killed_tool_holders_lock_file_is_broken_by_unilock() {
    let dir = TempDir::new("dot-tool-killed");
    for how in ["lockfile-create --use-pid", "dotlockfile -p"] {
        let path = lock_path(&dir, how);
        let holder = tool_lock(how, &path).unwrap();
        assert_eq!(owner_line(&path), holder.pid().to_string(), "{how}");
        let l = Lock::open(&path, &dotlock(0)).unwrap();
        assert_eq!(
            errno_of(l.lock(Mode::Exclusive, 0, 0, TRY)),
            libc::EAGAIN,
            "{how}: its owner is alive"
        );
        holder.kill();
        l.lock(Mode::Exclusive, 0, 0, TRY)
            .unwrap_or_else(|e| panic!("{how}: the owner is dead, yet: {e}"));
        assert_eq!(owner_line(&path), me(), "{how}");
        l.unlock(0, 0).unwrap();
        assert!(!path.exists(), "{how}");
    }
}

#[test]
fn a_lock_file_without_a_pid_is_stale_only_by_age() {
    let dir = TempDir::new("dot-no-pid");
    // "0\n" (liblockfile without a pid), "0" (procmail), "" (filelock's SoftFileLock).
    for how in ["lockfile-create", "dotlockfile", "lockfile", "empty"] {
        let path = lock_path(&dir, how);
        assert!(tool_lock(how, &path).is_none());
        let before = content(&path);
        let try_with = |stale: u32| {
            let l = Lock::open(&path, &dotlock(stale)).unwrap();
            (errno_of(l.lock(Mode::Exclusive, 0, 0, TRY)), l)
        };
        assert_eq!(try_with(60).0, libc::EAGAIN, "{how} ({before:?}), fresh");
        age(&path, 120);
        assert_eq!(
            try_with(0).0,
            libc::EAGAIN,
            "{how} ({before:?}): without a pid there is no dead owner; stale_after_s 0 \
             never breaks it"
        );
        assert_eq!(try_with(3600).0, libc::EAGAIN, "{how}: not that old");
        assert_eq!(content(&path), before, "{how}");
        let (rc, l) = try_with(60);
        assert_eq!(rc, 0, "{how} ({before:?}): 120 s old, stale after 60");
        assert_eq!(owner_line(&path), me(), "{how}");
        drop(l);
        assert!(!path.exists(), "{how}");
    }
}

/// SPEC: `stale_after_s` 0 means "only a dead owner", so a lock file without a pid is
/// never broken by age then, even past liblockfile's 5 minutes (procmail without `-l`
/// and filelock never break one either).
#[test]
fn with_stale_after_0_a_lock_file_without_a_pid_is_never_broken() {
    let dir = TempDir::new("dot-no-pid-0");
    for how in ["lockfile-create", "lockfile", "empty"] {
        let path = lock_path(&dir, how);
        tool_lock(how, &path);
        age(&path, 3600);
        let l = Lock::open(&path, &dotlock(0)).unwrap();
        assert_eq!(
            errno_of(l.lock(Mode::Exclusive, 0, 0, TRY)),
            libc::EAGAIN,
            "{how}: an hour-old lock file without a pid was broken with stale_after_s 0"
        );
        assert!(path.exists(), "{how}");
    }
}

/// Names in `dir` other than `keep`.
fn others(dir: &Path, keep: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != keep)
        .collect()
}

/// Mail spools see waiters killed (a delivery agent's timeout): a waiter killed while
/// the tool holds the lock must not leave its temporary file in the directory, where
/// nothing would ever remove it.
#[test]
fn a_waiter_killed_while_a_tool_holds_the_lock_leaves_no_file_behind() {
    let dir = TempDir::new("dot-killed-waiter");
    let path = dir.0.join("app.lock");
    let p = text(&path);
    assert_eq!(
        run("lockfile-create", &["--retry", "0", "--lock-name", p]),
        0
    );
    let mut waiter = Command::new(UNILOCK)
        .args(["-w", "30", "-b", "dotlock", p, "true"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let it start waiting: its first attempt (a temporary file, link(), unlink) is
    // over well within this, and it then sleeps until the directory changes. A kill
    // in the middle of an attempt could leave that attempt's temporary file (the next
    // attempt by anyone removes it); this test is about a waiter killed while asleep,
    // which must keep no file.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "the waiter did not wait"
    );
    waiter.kill().unwrap();
    waiter.wait().unwrap();
    assert_eq!(
        others(&dir.0, "app.lock"),
        Vec::<String>::new(),
        "files left by the killed waiter"
    );
    assert_eq!(run("lockfile-remove", &["--lock-name", p]), 0);
}

struct Outcome {
    code: i32,
    stderr: String,
    elapsed: Duration,
}

fn unilock(args: &[&str]) -> Outcome {
    let began = Instant::now();
    let out = Command::new(UNILOCK)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: began.elapsed(),
    }
}

#[test]
fn the_command_with_the_dotlock_backend_and_the_tools_exclude_each_other() {
    let dir = TempDir::new("dot-cli");
    let path = dir.0.join("app.lock");
    let p = text(&path);

    assert_eq!(
        run("lockfile-create", &["--retry", "0", "--lock-name", p]),
        0
    );
    let out = unilock(&["-n", "-b", "dotlock", p, "true"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let out = unilock(&["-n", "-b", "dotlock", "--stale", "3600", p, "true"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let out = unilock(&["-w", "0.2", "-b", "dotlock", p, "true"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.elapsed >= Duration::from_millis(200),
        "{:?}",
        out.elapsed
    );

    // The lock the command takes: its own pid (the command's parent), which
    // liblockfile sees as a live owner.
    age(&path, 120);
    let check = "test \"$(head -n 1 \"$0\")\" = \"$PPID\" && \
                 lockfile-check --use-pid --lock-name \"$0\" && \
                 ! lockfile-create --retry 0 --lock-name \"$0\"";
    let out = unilock(&[
        "-n", "-b", "dotlock", "--stale", "60", p, "sh", "-c", check, p,
    ]);
    assert_eq!(
        out.code, 0,
        "--stale 60 breaks a 120 s old lock without a pid, and the command sees the \
         lock held under unilock's pid: {}",
        out.stderr
    );
    assert!(!path.exists(), "the command left the lock file");

    assert_eq!(
        run("lockfile-create", &["--retry", "0", "--lock-name", p]),
        0
    );
    let mut remover = later(&format!("sleep 0.3; lockfile-remove --lock-name {p}"));
    let out = unilock(&["-w", "5", "-b", "dotlock", p, "true"]);
    assert!(remover.wait().unwrap().success());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.elapsed >= Duration::from_millis(250) && out.elapsed < Duration::from_secs(2),
        "{:?}",
        out.elapsed
    );
    assert!(!path.exists());
}
