//! Helpers for the DOTLOCK interop tests: the other programs that lock with lock files
//! or fcntl (liblockfile's lockfile-progs and dotlockfile, procmail's lockfile(1),
//! Python's `fcntl.lockf`), and a unilock holder in another process.
//!
//! A missing tool fails the test that needs it, with the package to install: an
//! interop test that did not run must never count as passed (`.ci/run` installs them).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, SystemTime};

use unilock::{Backend, Lock, Mode, Options};

/// liblockfile's `L_MAXTRYS`: lockfile-create and dotlockfile gave up, the lock is held.
pub const L_MAXTRYS: i32 = 4;
/// procmail lockfile(1)'s exit code when it gave up (sysexits' `EX_CANTCREAT`).
pub const EX_CANTCREAT: i32 = 73;

/// The Debian package that ships `tool`.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "lockfile-create" | "lockfile-remove" | "lockfile-check" | "lockfile-touch" => {
            "lockfile-progs"
        }
        "lockfile" => "procmail",
        "dotlockfile" => "liblockfile-bin",
        "python3" => "python3",
        "flock" => "util-linux",
        "sh" => "dash",
        other => panic!("unknown tool {other}"),
    }
}

/// A command for `tool`, found in `PATH`; fails the test when it is missing.
pub fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: these interop tests need it and fail without it; \
         install it (apt-get install -y {}; .ci/run does)",
        package_of(name)
    );
    let mut command = Command::new(name);
    command.stdin(Stdio::null());
    command
}

/// Runs `name args...` to completion: its exit code (128+N when signal N killed it).
pub fn run(name: &str, args: &[&str]) -> i32 {
    let out = tool(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    use std::os::unix::process::ExitStatusExt;
    out.status
        .code()
        .unwrap_or_else(|| 128 + out.status.signal().unwrap())
}

/// Runs `sh -c script` in the background: for a tool that acts after a delay.
pub fn later(script: &str) -> Child {
    tool("sh")
        .args(["-c", script])
        .spawn()
        .expect("cannot run sh")
}

/// The text of a path, for messages and assertions.
pub fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The lock file's content, "" when it does not exist.
pub fn content(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

/// The owner pid in the first line of a lock file (liblockfile's format), as text.
pub fn owner_line(path: &Path) -> String {
    content(path).split('\n').next().unwrap_or("").to_string()
}

/// Sets the lock file's mtime `secs` seconds into the past, as if it had not been
/// touched for that long (instead of waiting).
pub fn age(path: &Path, secs: u64) {
    let f = std::fs::File::open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

/// DOTLOCK options with `stale_after_s`.
pub fn dotlock(stale_after_s: u32) -> Options {
    Options::new()
        .backend(Backend::Dotlock)
        .stale_after_s(stale_after_s)
}

/// Options for a set of backends (`Backend` bits or-ed together).
pub fn set(backends: u32) -> Options {
    let all = [
        Backend::Flock,
        Backend::Ofd,
        Backend::Posix,
        Backend::Dotlock,
    ];
    Options::new().backends(all.into_iter().filter(|&b| backends & b as u32 != 0))
}

/// Reads the next line that carries a reply ("@@ ..."): the test harness may print
/// its own text before it.
fn reply(stdout: &mut impl BufRead) -> String {
    loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the holder exited before replying"
        );
        if let Some(at) = line.find("@@ ") {
            return line[at + 3..].trim_end().to_string();
        }
    }
}

/// Turns a test binary into a unilock holder: "BACKEND-BITS STALE PATH".
pub const HOLDER_ENV: &str = "UNILOCK_TEST_DOTLOCK_HOLDER";

/// The holder's body, run by a `holder_main` test in each test binary: takes an
/// exclusive lock (waiting up to 5 s), replies "@@ locked" or "@@ err ERRNO", holds it
/// until its stdin is closed, then releases it and exits.
pub fn holder_main() {
    let Some(spec) = std::env::var_os(HOLDER_ENV) else {
        return;
    };
    let spec = spec.into_string().unwrap();
    let mut w = spec.splitn(3, ' ');
    let backends: u32 = w.next().unwrap().parse().unwrap();
    let stale_after_s: u32 = w.next().unwrap().parse().unwrap();
    let path = w.next().unwrap();
    let options = set(backends).stale_after_s(stale_after_s);
    let result = Lock::open(path, &options).and_then(|l| {
        l.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(5)))
            .map(|()| l)
    });
    match &result {
        Ok(_) => println!("@@ locked"),
        Err(e) => println!("@@ err {} {}", e.errno(), e.detail()),
    }
    std::io::stdout().flush().unwrap();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(result);
    std::process::exit(0);
}

/// A unilock lock held by another process (this test binary as a holder).
pub struct UnilockHolder {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl UnilockHolder {
    /// Starts a holder of `path` with `backends` and waits until it holds the lock.
    pub fn start(backends: u32, path: &Path) -> UnilockHolder {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "holder_main", "--nocapture", "--test-threads=1"])
            .env(HOLDER_ENV, format!("{backends} 0 {}", text(path)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let got = reply(&mut stdout);
        assert_eq!(got, "locked", "the unilock holder of {}", path.display());
        UnilockHolder { child, stdin }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the holder release the lock and exit; waits for it.
    pub fn release(mut self) {
        self.stdin.take();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the unilock holder failed: {status}");
    }

    /// SIGKILLs the holder: it leaves its lock behind as a crash would.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for UnilockHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shell that ran a locking tool and then stays alive (it `exec`s sleep(1)) until
/// killed, so that the pid the tool wrote as the lock's owner (the tool's parent, the
/// shell) is alive while it lives and dead once killed.
pub struct ShellHolder {
    child: Child,
}

impl ShellHolder {
    /// Runs `sh -c 'TOOL_COMMAND && echo ready && exec sleep 30'`; fails unless the
    /// tool took the lock.
    pub fn start(tool_command: &str) -> ShellHolder {
        let first = tool_command.split_whitespace().next().unwrap();
        drop(tool(first));
        let script = format!("{tool_command} && echo ready && exec sleep 30");
        let mut child = tool("sh")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        crate::common::expect_ready(&mut child, &format!("`{tool_command}`"));
        ShellHolder { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs the shell: the pid in the lock file is now dead.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ShellHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python program that takes `fcntl.lockf(LOCK_EX)` on the whole file (a POSIX
/// record lock, what fcntl users of a mailbox take) without waiting, prints "locked"
/// or "busy", then holds it for `hold` seconds, or until its stdin is closed when
/// `hold` is negative.
const LOCKF: &str = r#"
import fcntl, sys, time
f = open(sys.argv[1], "r+")
try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    print("busy", flush=True)
    sys.exit(1)
print("locked", flush=True)
hold = float(sys.argv[2])
if hold < 0:
    sys.stdin.read()
else:
    time.sleep(hold)
"#;

/// An fcntl user of a file: Python's `fcntl.lockf` in another process.
pub struct FcntlUser {
    child: Child,
    stdin: Option<ChildStdin>,
    pub locked: bool,
}

impl FcntlUser {
    /// Tries the lock; holds it for `hold` seconds (negative: until dropped or
    /// released) when it got it.
    pub fn try_lock(path: &Path, hold: f64) -> FcntlUser {
        let mut child = tool("python3")
            .args(["-c", LOCKF, text(path), &hold.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let locked = match line.trim() {
            "locked" => true,
            "busy" => false,
            other => panic!("python3 fcntl.lockf said {other:?}"),
        };
        FcntlUser {
            child,
            stdin,
            locked,
        }
    }

    /// Whether an fcntl user could take the lock now (it releases it at once).
    pub fn can_lock(path: &Path) -> bool {
        let mut user = Self::try_lock(path, 0.0);
        let locked = user.locked;
        user.stdin.take();
        user.child.wait().unwrap();
        locked
    }

    /// Releases the lock (closes stdin) and waits for the process.
    pub fn release(mut self) {
        self.stdin.take();
        self.child.wait().unwrap();
    }
}

impl Drop for FcntlUser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether flock(1) could take an exclusive lock on `path` now.
pub fn flock_can_lock(path: &Path) -> bool {
    match run("flock", &["-n", text(path), "true"]) {
        0 => true,
        1 => false,
        other => panic!("flock -n {} true exited {other}", path.display()),
    }
}
