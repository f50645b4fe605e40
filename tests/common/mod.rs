//! Shared test helpers: a peer process (this test binary re-run in "peer" mode) that
//! takes locks on command, so that cross-process behaviour is tested with real
//! processes; and in [`etcd`], real etcd servers for the etcd tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use unilock::{Backend, Flags, Lock, Mode, Options};

pub mod cli;
pub mod etcd;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("unilock-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        if !p.exists() {
            std::fs::write(&p, b"").unwrap();
        }
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// This test binary at `dir/name`, runnable by every user: a hard link where one can
/// be made (it is never open for writing: a copy being written while another thread
/// forks may make its exec fail with ETXTBSY), else a copy.
pub fn runnable_self(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = std::env::current_exe().unwrap();
    let exe = dir.join(name);
    if std::fs::hard_link(&me, &exe).is_err() {
        std::fs::copy(&me, &exe).unwrap();
    }
    let mode = std::fs::metadata(&exe).unwrap().mode();
    if mode & 0o005 != 0o005 {
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(mode | 0o055)).unwrap();
    }
    exe
}

/// The three kernel backends.
pub const ALL: [Backend; 3] = [Backend::Flock, Backend::Ofd, Backend::Posix];
/// A timeout that tries once.
pub const TRY: Option<Duration> = Some(Duration::ZERO);

/// True when OFD and POSIX waits are expected to be the waiting thread's own: io_uring
/// can be set up here, the kernel has `IORING_OP_FUTEX_WAIT` (Linux 6.7), and
/// `UNILOCK_WAITER` does not ask for children.
pub fn own_waits_expected() -> bool {
    if std::env::var_os("UNILOCK_WAITER").is_some_and(|v| v == "child" || v == "per-wait") {
        return false;
    }
    // SAFETY: uname fills a local struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::uname(&mut u) }, 0);
    // SAFETY: uname wrote a NUL-terminated release string.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    // io_uring_setup(2) with 1 entry and default parameters (120 bytes of zeroes).
    let mut params = [0u8; 120];
    // SAFETY: the kernel reads and writes `params`, a struct io_uring_params.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: the descriptor just returned, closed once.
        unsafe { libc::close(fd as i32) };
    }
    fd >= 0 && version >= (6, 7)
}

/// The peer protocol's name of a backend (the inverse of [`backend_named`]).
pub fn name(b: Backend) -> &'static str {
    match b {
        Backend::Flock => "flock",
        Backend::Ofd => "ofd",
        Backend::Posix => "posix",
        Backend::Dotlock => "dotlock",
        Backend::Etcd => "etcd",
    }
}

/// The backends whose bits (`UNILOCK_BACKEND_*`) are set in `bits`.
pub fn backends_of(bits: u32) -> Vec<Backend> {
    [
        Backend::Flock,
        Backend::Ofd,
        Backend::Posix,
        Backend::Dotlock,
    ]
    .into_iter()
    .filter(|&b| bits & b as u32 != 0)
    .collect()
}

/// The flags for C bits (`UNILOCK_CREATE`, ...), every one of them known.
pub fn flags_of(bits: u32) -> Flags {
    Flags::from_bits(bits).unwrap_or_else(|| panic!("unknown flag bits {bits:#x}"))
}

pub fn opts(backend: Backend) -> Options {
    Options::new().backend(backend).flags(Flags::CREATE)
}

pub fn backend_named(name: &str) -> Backend {
    match name {
        "flock" => Backend::Flock,
        "ofd" => Backend::Ofd,
        "posix" => Backend::Posix,
        "dotlock" => Backend::Dotlock,
        other => panic!("unknown backend {other}"),
    }
}

pub fn mode_named(name: &str) -> Mode {
    if name == "sh" {
        Mode::Shared
    } else {
        Mode::Exclusive
    }
}

/// A peer process speaking a line protocol on stdin/stdout.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// The environment variable that turns a test binary into a peer.
pub const PEER_ENV: &str = "UNILOCK_TEST_PEER";

impl Peer {
    /// Starts this test binary as a peer: it runs only the test named `peer_main`.
    pub fn spawn() -> Peer {
        Self::start(Command::new(std::env::current_exe().unwrap()))
    }

    /// Starts this test binary as a peer whose `peer_main` reads `setup` from
    /// [`PEER_ENV`] (a peer of its own protocol, which says "@@ ready" first and
    /// prefixes its replies with "@@ ").
    pub fn spawn_with(setup: &str) -> Peer {
        Self::start_with(Command::new(std::env::current_exe().unwrap()), setup)
    }

    /// Runs `command` (a test binary that has the `peer_main` test) as a peer.
    fn start(command: Command) -> Peer {
        Self::start_with(command, "1")
    }

    fn start_with(mut command: Command, setup: &str) -> Peer {
        let mut child = command
            .args(["--exact", "peer_main", "--nocapture", "--test-threads=1"])
            .env(PEER_ENV, setup)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut p = Peer {
            child,
            stdin,
            stdout,
        };
        assert_eq!(p.reply(), "ready");
        p
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            assert!(self.stdout.read_line(&mut line).unwrap() > 0, "peer exited");
            // The harness may print "test peer_main ... " before the first reply.
            if let Some(at) = line.find("@@ ") {
                return line[at + 3..].trim_end().to_string();
            }
        }
    }

    /// Sends a command and returns the reply: "ok", "err ERRNO", or a value.
    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        self.reply()
    }

    /// Sends a command without waiting for the reply.
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Reads the reply of a command sent with [`Peer::send`].
    pub fn recv(&mut self) -> String {
        self.reply()
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the peer to end.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// Sends signal `sig` to the peer (not reaped yet, so the pid is still its own).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peer's command loop: `open NAME PATH BACKEND`, `open_unlink NAME PATH BACKEND`
/// (with UNLINK), `open_fair NAME PATH BACKEND` (with FAIR), `open_bits NAME PATH
/// BACKEND_BITS` (a set), `lock NAME MODE START LEN MS`,
/// `unlock NAME START LEN`, `close NAME`, `exit`. Replies go to stdout after "@@ ".
pub fn peer_loop() {
    let mut handles = std::collections::HashMap::new();
    println!("@@ ready");
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let w: Vec<&str> = line.split_whitespace().collect();
        let reply = match w.as_slice() {
            ["open", name, path, backend] => {
                match Lock::open(Path::new(path), &opts(backend_named(backend))) {
                    Ok(l) => {
                        handles.insert(name.to_string(), l);
                        "ok".to_string()
                    }
                    Err(e) => format!("err {}", e.errno()),
                }
            }
            ["open_fair", name, path, backend] => {
                let o = opts(backend_named(backend)).flags(Flags::FAIR);
                match Lock::open(Path::new(path), &o) {
                    Ok(l) => {
                        handles.insert(name.to_string(), l);
                        "ok".to_string()
                    }
                    Err(e) => format!("err {}", e.errno()),
                }
            }
            ["open_bits", name, path, bits] => {
                let o = Options::new()
                    .backends(backends_of(bits.parse().unwrap()))
                    .flags(Flags::CREATE);
                match Lock::open(Path::new(path), &o) {
                    Ok(l) => {
                        handles.insert(name.to_string(), l);
                        "ok".to_string()
                    }
                    Err(e) => format!("err {}", e.errno()),
                }
            }
            ["open_unlink", name, path, backend] => {
                let o = opts(backend_named(backend)).flags(Flags::UNLINK);
                match Lock::open(Path::new(path), &o) {
                    Ok(l) => {
                        handles.insert(name.to_string(), l);
                        "ok".to_string()
                    }
                    Err(e) => format!("err {}", e.errno()),
                }
            }
            ["lock", name, mode, start, len, ms] => {
                let ms: i64 = ms.parse().unwrap();
                let timeout = (ms >= 0).then(|| Duration::from_millis(ms as u64));
                match handles[*name].lock(
                    mode_named(mode),
                    start.parse().unwrap(),
                    len.parse().unwrap(),
                    timeout,
                ) {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("err {}", e.errno()),
                }
            }
            ["unlock", name, start, len] => {
                match handles[*name].unlock(start.parse().unwrap(), len.parse().unwrap()) {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("err {}", e.errno()),
                }
            }
            ["close", name] => {
                handles.remove(*name);
                "ok".to_string()
            }
            ["exit"] => std::process::exit(0),
            _ => format!("bad command {line}"),
        };
        println!("@@ {reply}");
    }
    std::process::exit(0);
}

impl Peer {
    /// Starts `exe` (a copy of a test binary that has the `peer_main` test) as a peer
    /// running as `uid`:`gid` (root drops its supplementary groups on the way).
    pub fn spawn_as(exe: &Path, uid: u32, gid: u32) -> Peer {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(exe);
        command.uid(uid).gid(gid);
        Self::start(command)
    }
}

/// The errno reply of a peer command, as [`Peer::cmd`] returns it.
pub fn err(errno: i32) -> String {
    format!("err {errno}")
}

/// Reads the first line `child` prints and checks that it is "ready" (the child has
/// taken its lock); `what` names the child in the failure.
pub fn expect_ready(child: &mut Child, what: &str) {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "{what} did not take the lock");
}

/// Shared memory for counting across processes: `words` u64s in a file that every
/// process maps.
pub struct Shm {
    ptr: *mut std::sync::atomic::AtomicU64,
    words: usize,
}

impl Shm {
    /// Creates the file, zeroed, and maps it.
    pub fn create(path: &Path, words: usize) -> Shm {
        std::fs::write(path, vec![0u8; words * 8]).unwrap();
        Self::map(path, words)
    }

    /// Maps an existing file of `words` u64s.
    pub fn map(path: &Path, words: usize) -> Shm {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        // SAFETY: maps the file's `words` u64s, shared and writable.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                words * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Shm {
            ptr: ptr.cast(),
            words,
        }
    }

    pub fn at(&self, i: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(i < self.words);
        // SAFETY: the mapping holds `words` aligned u64s and lives until the process
        // exits (it is never unmapped).
        unsafe { &*self.ptr.add(i) }
    }

    pub fn get(&self, i: usize) -> u64 {
        self.at(i).load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set(&self, i: usize, v: u64) {
        self.at(i).store(v, std::sync::atomic::Ordering::SeqCst)
    }

    /// Adds one; returns the value before.
    pub fn bump(&self, i: usize) -> u64 {
        self.at(i).fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }
}

/// An `Error` from an I/O error of a test's own file operation `what`.
pub fn io_error(e: std::io::Error, what: &str) -> unilock::Error {
    unilock::Error::new(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("{what}: {e}"),
    )
}

/// The handles of a [`detailed_peer_loop`], by name.
pub type Handles = std::collections::HashMap<String, Lock>;

/// A peer's command loop over whole-file locks whose replies carry the error's
/// detail: `open H PATH BACKEND FLAGS`, `lock H sh|ex MS` (MS 0 tries once, -1 waits
/// without limit), `unlock H`, `close H`, `exit`; any other command goes to `extra`,
/// which returns `None` for one it does not know either. Replies, after "@@ ": `ok`,
/// or `err ERRNO DETAIL`.
pub fn detailed_peer_loop(
    mut extra: impl FnMut(&[&str], &mut Handles) -> Option<unilock::Result<()>>,
) -> ! {
    let mut handles = Handles::new();
    println!("@@ ready");
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let w: Vec<&str> = line.split_whitespace().collect();
        let reply = match w.as_slice() {
            ["open", h, path, b, bits] => {
                let o = Options::new()
                    .backend(backend_named(b))
                    .flags(flags_of(bits.parse().unwrap()));
                Lock::open(path, &o).map(|l| {
                    handles.insert(h.to_string(), l);
                })
            }
            ["lock", h, mode, ms] => {
                let ms: i64 = ms.parse().unwrap();
                let timeout = (ms >= 0).then(|| Duration::from_millis(ms as u64));
                handles[*h].lock(mode_named(mode), 0, 0, timeout)
            }
            ["unlock", h] => handles[*h].unlock(0, 0),
            ["close", h] => handles.remove(*h).map_or(Ok(()), Lock::close),
            ["exit"] => std::process::exit(0),
            other => extra(other, &mut handles).unwrap_or_else(|| {
                Err(unilock::Error::new(
                    libc::EINVAL,
                    format!("bad command {line}"),
                ))
            }),
        };
        match reply {
            Ok(()) => println!("@@ ok"),
            Err(e) => println!("@@ err {} {}", e.errno(), e.detail()),
        }
    }
    std::process::exit(0);
}

/// A test that cannot run here: says so past the output capture, and fails unless
/// `UNILOCK_ALLOW_NOT_RUN` (a comma-separated list) names it, its `group` or `all`.
pub fn not_run(test: &str, group: &str, reason: &str) {
    use std::io::Write as _;
    let line = format!("NOT RUN: {test}: {reason}");
    let _ = writeln!(std::io::stderr(), "{line}");
    let allowed = std::env::var("UNILOCK_ALLOW_NOT_RUN").unwrap_or_default();
    if allowed
        .split(',')
        .any(|w| [test, group, "all"].contains(&w.trim()))
    {
        return;
    }
    panic!("{line}\n(UNILOCK_ALLOW_NOT_RUN={test} accepts that it does not run here)");
}

/// How many threads of this process are named `name` (`/proc/self/task/*/comm`).
pub fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|t| {
            let comm = t.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|c| c.trim_end() == name)
        })
        .count()
}
