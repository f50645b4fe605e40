//! The driver: spawns every peer as an agent (or runs it as a command), holds the
//! lock itself with the raw calls when another process must be blocked, and
//! measures, all in one run and on the same lock files:
//!
//! 1. the uncontended acquire + release pair, in rounds, against the raw call pair
//!    measured in the same round;
//! 2. a lock around a command from a shell script (whole processes);
//! 3. hand-off latency to an untimed and a timed waiter;
//! 4. timeout overshoot;
//! 5. the CPU a waiter burns;
//! 6. fairness among 2, 4 and 8 contending processes, raw, unilock and unilock with
//!    `UNILOCK_FAIR`.
//!
//! Writes a Markdown report, a headline and a JSON file (all samples, for the charts).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use crate::json::Json;
use crate::lockers::{self, Mechanism, create_lock_file, raw_lock, raw_unlock};
use crate::stats::{Rng, fmt_ns, jain, median, mono_ns, percentile, rusage_ns};

/// Where everything is; from the command line of `peers run`.
pub struct Setup {
    pub quick: bool,
    pub dir: PathBuf,
    pub exe: PathBuf,
    pub python: Option<PathBuf>,
    pub py_agent: PathBuf,
    pub lockfile_agent: Option<PathBuf>,
    pub unilock_cmd: PathBuf,
    pub flock_cmd: PathBuf,
    pub markdown: PathBuf,
    pub headline: PathBuf,
    pub json: PathBuf,
}

/// Counts and durations; `--quick` shrinks them for a smoke test.
struct Counts {
    pair_rounds: usize,
    pair_run_ns: f64,
    cmd_runs: usize,
    kernel_rounds: usize,
    notify_rounds: usize,
    overshoot_rounds: usize,
    overshoot_slow_rounds: usize,
    overshoot_ms: i64,
    cpu_hold: Duration,
    fair_duration: Duration,
    fair_hold_ns: u64,
    fair_procs: [usize; 3],
}

impl Counts {
    fn new(quick: bool) -> Counts {
        if quick {
            Counts {
                pair_rounds: 2,
                pair_run_ns: 5e6,
                cmd_runs: 10,
                kernel_rounds: 8,
                notify_rounds: 5,
                overshoot_rounds: 5,
                overshoot_slow_rounds: 2,
                overshoot_ms: 20,
                cpu_hold: Duration::from_millis(200),
                fair_duration: Duration::from_millis(300),
                fair_hold_ns: 50_000,
                fair_procs: [2, 4, 8],
            }
        } else {
            Counts {
                pair_rounds: 9,
                pair_run_ns: 20e6,
                cmd_runs: 150,
                kernel_rounds: 100,
                notify_rounds: 50,
                overshoot_rounds: 30,
                overshoot_slow_rounds: 8,
                overshoot_ms: 20,
                cpu_hold: Duration::from_secs(1),
                fair_duration: Duration::from_millis(1500),
                fair_hold_ns: 50_000,
                fair_procs: [2, 4, 8],
            }
        }
    }

    /// Hand-off rounds for a waiter that polls every `period` seconds: each round
    /// costs about a period, so fewer rounds for slower pollers.
    fn poll_rounds(&self, quick: bool, period: f64) -> usize {
        let (full, small) = match period {
            p if p <= 0.1 => (30, 4),
            p if p <= 0.5 => (12, 2),
            p if p <= 1.5 => (6, 2),
            _ => (3, 1),
        };
        if quick { small } else { full }
    }
}

// ---------------------------------------------------------------------------------
// The peers

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Raw,
    Unilock,
    Rust,
    Python,
    C,
    Command,
}

impl Family {
    fn key(self) -> &'static str {
        match self {
            Family::Raw => "raw",
            Family::Unilock => "unilock",
            Family::Rust => "rust",
            Family::Python => "python",
            Family::C => "c",
            Family::Command => "command",
        }
    }
}

/// How a waiter learns that the lock is free.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Wake {
    /// Asleep in a kernel lock call: woken by the release.
    Kernel,
    /// Retries every so many seconds.
    Poll(f64),
    /// Woken by inotify (unilock's DOTLOCK).
    Notify,
}

impl Wake {
    fn describe(self) -> String {
        match self {
            Wake::Kernel => "asleep in the kernel".into(),
            Wake::Poll(p) if p < 1.0 => format!("polls every {:.0} ms", p * 1e3),
            Wake::Poll(p) => format!("polls every {p:.0} s"),
            Wake::Notify => "inotify".into(),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Runner {
    Rust,
    Python,
    Lockfile,
}

/// A peer that runs as an agent process (see `agent.rs`).
struct AgentPeer {
    key: &'static str,
    label: &'static str,
    kind: &'static str,
    runner: Runner,
    mech: Mechanism,
    family: Family,
    /// What one uncontended pair is.
    pair_what: &'static str,
    untimed: Option<Wake>,
    timed: Option<Wake>,
    /// How the timed wait is done, for the tables.
    timed_how: &'static str,
}

fn agent_peers() -> Vec<AgentPeer> {
    use Mechanism::*;
    use Wake::*;
    let p =
        |key, label, kind, runner, mech, family, pair_what, untimed, timed, timed_how| AgentPeer {
            key,
            label,
            kind,
            runner,
            mech,
            family,
            pair_what,
            untimed,
            timed,
            timed_how,
        };
    vec![
        p(
            "raw_flock",
            "raw `flock(2)`",
            "raw-flock",
            Runner::Rust,
            Flock,
            Family::Raw,
            "`flock(LOCK_EX\\|LOCK_NB)` + `flock(LOCK_UN)`",
            Some(Kernel),
            Some(Kernel),
            "`setitimer` + SIGALRM interrupts `flock(LOCK_EX)` (flock(1)'s way)",
        ),
        p(
            "unilock_flock",
            "unilock FLOCK (C API)",
            "unilock-flock",
            Runner::Rust,
            Flock,
            Family::Unilock,
            "`unilock_lock(h, EXCLUSIVE, 0, 0, 0)` + `unilock_unlock`",
            Some(Kernel),
            Some(Kernel),
            "`unilock_lock(..., timeout_ms)`",
        ),
        p(
            "std",
            "Rust std `File::lock`",
            "std",
            Runner::Rust,
            Flock,
            Family::Rust,
            "`try_lock()` + `unlock()`",
            Some(Kernel),
            None,
            "",
        ),
        p(
            "fd_lock",
            "Rust fd-lock 4.0.4",
            "fd-lock",
            Runner::Rust,
            Flock,
            Family::Rust,
            "`try_write()` + drop the guard",
            Some(Kernel),
            None,
            "",
        ),
        p(
            "fs4",
            "Rust fs4 1.1.0",
            "fs4",
            Runner::Rust,
            Flock,
            Family::Rust,
            "`FileExt::try_lock` + `FileExt::unlock`",
            Some(Kernel),
            None,
            "",
        ),
        p(
            "py_raw",
            "Python `fcntl.flock`",
            "raw",
            Runner::Python,
            Flock,
            Family::Python,
            "`fcntl.flock(fd, LOCK_EX\\|LOCK_NB)` + `LOCK_UN`, descriptor kept open",
            Some(Kernel),
            None,
            "",
        ),
        p(
            "unilock_py",
            "Python `unilock.FileLock`",
            "unilock",
            Runner::Python,
            Flock,
            Family::Unilock,
            "`acquire()` + `release()`",
            Some(Kernel),
            Some(Kernel),
            "`acquire(timeout=...)`",
        ),
        p(
            "filelock",
            "Python filelock",
            "filelock",
            Runner::Python,
            Flock,
            Family::Python,
            "`acquire()` + `release()` (opens and closes the file)",
            Some(Poll(0.05)),
            Some(Poll(0.05)),
            "`acquire(timeout=...)`",
        ),
        p(
            "portalocker",
            "Python portalocker",
            "portalocker",
            Runner::Python,
            Flock,
            Family::Python,
            "`Lock.acquire()` + `release()` (opens and closes the file)",
            Some(Kernel),
            Some(Poll(0.25)),
            "`Lock(timeout=...)`, default `check_interval` (0.25 s)",
        ),
        p(
            "raw_ofd",
            "raw `F_OFD_SETLK(W)`",
            "raw-ofd",
            Runner::Rust,
            Ofd,
            Family::Raw,
            "`F_OFD_SETLK` `F_WRLCK` + `F_UNLCK`",
            Some(Kernel),
            Some(Kernel),
            "SIGALRM interrupts `F_OFD_SETLKW`",
        ),
        p(
            "unilock_ofd",
            "unilock OFD (C API)",
            "unilock-ofd",
            Runner::Rust,
            Ofd,
            Family::Unilock,
            "`unilock_lock` + `unilock_unlock`",
            Some(Kernel),
            Some(Kernel),
            "`unilock_lock(..., timeout_ms)`",
        ),
        p(
            "raw_posix",
            "raw `F_SETLK(W)`",
            "raw-posix",
            Runner::Rust,
            Posix,
            Family::Raw,
            "`F_SETLK` `F_WRLCK` + `F_UNLCK`",
            Some(Kernel),
            Some(Kernel),
            "SIGALRM interrupts `F_SETLKW`",
        ),
        p(
            "unilock_posix",
            "unilock POSIX (C API)",
            "unilock-posix",
            Runner::Rust,
            Posix,
            Family::Unilock,
            "`unilock_lock` + `unilock_unlock`",
            Some(Kernel),
            Some(Kernel),
            "`unilock_lock(..., timeout_ms)`",
        ),
        p(
            "raw_dotlock",
            "raw lock file",
            "raw-dotlock",
            Runner::Rust,
            Dotlock,
            Family::Raw,
            "`open(O_CREAT\\|O_EXCL)` + write the pid + `close` + `unlink`",
            Some(Notify),
            Some(Notify),
            "inotify on the directory, then `O_EXCL` again",
        ),
        p(
            "unilock_dotlock",
            "unilock DOTLOCK (C API)",
            "unilock-dotlock",
            Runner::Rust,
            Dotlock,
            Family::Unilock,
            "`unilock_lock` + `unilock_unlock`",
            Some(Notify),
            Some(Notify),
            "`unilock_lock(..., timeout_ms)`",
        ),
        p(
            "liblockfile",
            "liblockfile (C)",
            "liblockfile",
            Runner::Lockfile,
            Dotlock,
            Family::C,
            "`lockfile_create(path, 0, L_PID)` + `lockfile_remove(path)`",
            Some(Poll(5.0)),
            None,
            "",
        ),
    ]
}

/// A peer that is a command run from a shell script.
struct CommandPeer {
    key: &'static str,
    label: String,
    mech: Mechanism,
    /// An uncontended "lock, run `true`, unlock" from a script: the commands in turn.
    sequence: Vec<Vec<String>>,
    untimed: Option<(Vec<String>, Wake)>,
    timed: Option<(Vec<String>, Wake)>,
    /// A waiter with a timeout of `overshoot_ms` (for the overshoot).
    with_timeout: Option<Vec<String>>,
    /// The waiter leaves the lock file behind: the driver removes it.
    leaves_lock_file: bool,
    unsupported: Option<String>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn command_peers(setup: &Setup, files: &Files, counts: &Counts) -> Vec<CommandPeer> {
    let flock = setup.flock_cmd.to_str().expect("UTF-8 path");
    let unilock = setup.unilock_cmd.to_str().expect("UTF-8 path");
    let f = files.flock.to_str().expect("UTF-8 path");
    let d = files.dotlock.to_str().expect("UTF-8 path");
    let t = format!("{}", counts.overshoot_ms as f64 / 1000.0);
    let tool = |name: &'static str, label: &str, cmd: &str| {
        CommandPeer {
            key: "",
            label: label.to_string(),
            mech: Mechanism::Flock,
            sequence: vec![strings(&[cmd, "-n", f, "/bin/true"])],
            untimed: Some((strings(&[cmd, f, "/bin/true"]), Wake::Kernel)),
            timed: Some((strings(&[cmd, "-w", "10", f, "/bin/true"]), Wake::Kernel)),
            with_timeout: Some(strings(&[cmd, "-w", &t, f, "/bin/true"])),
            leaves_lock_file: false,
            unsupported: None,
        }
        .named(name)
    };
    vec![
        tool("flock_cmd", "util-linux `flock(1)`", flock),
        tool("unilock_cmd", "`unilock(1)`", unilock),
        CommandPeer {
            key: "unilock_cmd_dotlock",
            label: "`unilock(1) --backend dotlock`".into(),
            mech: Mechanism::Dotlock,
            sequence: vec![strings(&[
                unilock,
                "--backend",
                "dotlock",
                "-n",
                d,
                "/bin/true",
            ])],
            untimed: Some((
                strings(&[unilock, "--backend", "dotlock", d, "/bin/true"]),
                Wake::Notify,
            )),
            timed: Some((
                strings(&[unilock, "--backend", "dotlock", "-w", "10", d, "/bin/true"]),
                Wake::Notify,
            )),
            with_timeout: Some(strings(&[
                unilock,
                "--backend",
                "dotlock",
                "-w",
                &t,
                d,
                "/bin/true",
            ])),
            leaves_lock_file: false,
            unsupported: None,
        },
        CommandPeer {
            key: "lockfile_progs",
            label: "lockfile-progs `lockfile-create` / `lockfile-remove`".into(),
            mech: Mechanism::Dotlock,
            sequence: vec![
                strings(&["lockfile-create", "-q", "-l", "-r", "0", d]),
                strings(&["/bin/true"]),
                strings(&["lockfile-remove", "-q", "-l", d]),
            ],
            untimed: Some((
                strings(&["lockfile-create", "-q", "-l", "-r", "3", d]),
                Wake::Poll(5.0),
            )),
            timed: None,
            with_timeout: None,
            leaves_lock_file: true,
            unsupported: None,
        },
        CommandPeer {
            key: "procmail_lockfile",
            label: "procmail `lockfile -1` / `rm -f`".into(),
            mech: Mechanism::Dotlock,
            sequence: vec![
                strings(&["lockfile", "-r", "0", d]),
                strings(&["/bin/true"]),
                strings(&["rm", "-f", d]),
            ],
            untimed: Some((strings(&["lockfile", "-1", d]), Wake::Poll(1.0))),
            timed: None,
            with_timeout: None,
            leaves_lock_file: true,
            unsupported: None,
        },
    ]
}

impl CommandPeer {
    fn named(mut self, key: &'static str) -> CommandPeer {
        self.key = key;
        self
    }
}

/// The lock files every peer shares, one per mechanism.
struct Files {
    flock: PathBuf,
    ofd: PathBuf,
    posix: PathBuf,
    /// The lock file itself: absent while the lock is free.
    dotlock: PathBuf,
}

impl Files {
    fn of(&self, mech: Mechanism) -> &Path {
        match mech {
            Mechanism::Flock => &self.flock,
            Mechanism::Ofd => &self.ofd,
            Mechanism::Posix => &self.posix,
            Mechanism::Dotlock => &self.dotlock,
        }
    }
}

// ---------------------------------------------------------------------------------
// Agents and the holder

/// How a `wait` ended.
enum Outcome {
    Got(u64),
    Timeout(u64),
    Error(String),
}

/// The driver's side of an agent process.
struct Agent {
    child: Child,
    to: Option<ChildStdin>,
    from: BufReader<ChildStdout>,
    /// What the agent said after `ready` (a version), may be empty.
    about: String,
}

impl Agent {
    /// Starts the agent; `Err` is its `unsupported` message or why it did not start.
    fn spawn(mut cmd: Command) -> Result<Agent, String> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        let to = child.stdin.take();
        let from = BufReader::new(child.stdout.take().expect("agent stdout"));
        let mut agent = Agent {
            child,
            to,
            from,
            about: String::new(),
        };
        let first = agent.line();
        if let Some(about) = first.strip_prefix("ready") {
            agent.about = about.trim().to_string();
            Ok(agent)
        } else if let Some(why) = first.strip_prefix("unsupported") {
            Err(why.trim().to_string())
        } else {
            Err(format!("unexpected first line {first:?}"))
        }
    }

    fn send(&mut self, line: &str) {
        let to = self.to.as_mut().expect("agent stdin");
        writeln!(to, "{line}").expect("write to an agent");
        to.flush().expect("flush to an agent");
    }

    /// The next line, within 2 minutes (a wedged agent must not hang the run).
    fn line(&mut self) -> String {
        if self.from.buffer().is_empty() {
            let mut pfd = libc::pollfd {
                fd: self.from.get_ref().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, 120_000) };
            assert!(n == 1, "an agent said nothing for 2 minutes");
        }
        let mut s = String::new();
        self.from.read_line(&mut s).expect("read from an agent");
        assert!(!s.is_empty(), "an agent exited");
        s.trim_end().to_string()
    }

    fn pair(&mut self, n: usize) -> f64 {
        self.send(&format!("pair {n}"));
        let reply = self.line();
        reply
            .parse()
            .unwrap_or_else(|_| panic!("pair: the agent replied {reply:?}"))
    }

    fn wait_begin(&mut self, timeout_ms: i64) {
        self.send(&format!("wait {timeout_ms}"));
        let reply = self.line();
        assert_eq!(reply, "waiting", "wait: unexpected reply");
    }

    fn wait_end(&mut self) -> Outcome {
        let reply = self.line();
        let mut words = reply.splitn(2, ' ');
        let (what, rest) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        match what {
            "got" => Outcome::Got(rest.parse().expect("a time")),
            "timeout" => Outcome::Timeout(rest.parse().expect("a time")),
            _ => Outcome::Error(reply),
        }
    }

    fn release(&mut self) {
        self.send("release");
        let reply = self.line();
        assert_eq!(reply, "ok", "release: unexpected reply");
    }

    fn cpu(&mut self) -> u64 {
        self.send("cpu");
        self.line().parse().expect("cpu ns")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.to.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The driver holding a lock, with the raw calls (or a lock file with its pid).
struct Holder {
    mech: Mechanism,
    path: PathBuf,
    file: Option<File>,
    ino: u64,
}

impl Holder {
    fn new(mech: Mechanism, path: &Path) -> Holder {
        let file = (mech != Mechanism::Dotlock).then(|| lockers::open_rw(path));
        let ino = file
            .as_ref()
            .map_or(0, |f| f.metadata().expect("fstat").ino());
        Holder {
            mech,
            path: path.to_path_buf(),
            file,
            ino,
        }
    }

    fn take(&mut self) {
        match &self.file {
            Some(f) => assert_eq!(raw_lock(self.mech, f.as_raw_fd(), true), 0, "holder"),
            None => {
                let give_up = mono_ns() + 10_000_000_000;
                while let Err(e) = create_lock_file(&self.path) {
                    assert!(mono_ns() < give_up, "holder: {}: {e}", self.path.display());
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    fn release(&mut self) {
        match &self.file {
            Some(f) => assert_eq!(raw_unlock(self.mech, f.as_raw_fd()), 0, "holder"),
            None => std::fs::remove_file(&self.path).expect("remove the lock file"),
        }
    }

    /// Waits until /proc/locks shows a blocked request on the file; false when none
    /// showed up within 10 s.
    fn wait_blocked(&self) -> bool {
        let needle = format!(":{} ", self.ino);
        let give_up = mono_ns() + 10_000_000_000;
        while mono_ns() < give_up {
            let blocked = std::fs::read_to_string("/proc/locks")
                .map(|s| s.lines().any(|l| l.contains("->") && l.contains(&needle)))
                .unwrap_or(false);
            if blocked {
                return true;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        false
    }
}

/// A finished command: its wall time from spawn, its CPU time and exit code.
struct Ran {
    end: u64,
    cpu_ns: u64,
    code: i32,
}

fn spawn(argv: &[String]) -> Child {
    Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", argv[0]))
}

/// Reaps `child` with wait4, for its rusage.
fn reap(child: Child) -> Ran {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; zero bytes are valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let end = mono_ns();
    assert_eq!(rc, pid, "wait4");
    drop(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ran {
        end,
        cpu_ns: rusage_ns(&ru),
        code,
    }
}

fn run_cmd(argv: &[String]) -> Ran {
    reap(spawn(argv))
}

fn sleep_ns(ns: f64) {
    std::thread::sleep(Duration::from_nanos(ns.max(0.0) as u64));
}

// ---------------------------------------------------------------------------------
// The driver

/// One waiter of the hand-off: an agent or a command, untimed or timed.
struct Variant {
    agent: Option<usize>,
    command: Option<usize>,
    timed: bool,
    wake: Wake,
    samples: Vec<f64>,
    lost: usize,
}

impl Variant {
    fn parts(&self) -> (Option<usize>, Option<usize>, bool, Wake) {
        (self.agent, self.command, self.timed, self.wake)
    }
}

struct Slot {
    peer: AgentPeer,
    agent: Result<Agent, String>,
    label: String,
}

struct Driver {
    setup: Setup,
    counts: Counts,
    files: Files,
    slots: Vec<Slot>,
    commands: Vec<CommandPeer>,
    holders: Vec<Holder>,
    rng: Rng,
    md: String,
    json: Json,
    /// The flat summary: key, value, in the order measured.
    facts: Vec<(String, f64)>,
    /// Why the `UNILOCK_FAIR` runs could not be made, if they could not.
    fair_why: Option<String>,
    headline: Vec<String>,
}

/// True when `why` says the library (or its command) refuses the feature: a
/// backend or flag it does not have yet.
fn refused(why: &str) -> bool {
    why.contains("-EOPNOTSUPP") || why.starts_with("exit 69")
}

/// Markdown table cell for a result that could not be had.
fn not_supported(why: &str) -> String {
    let short: String = why.chars().take(120).collect();
    let short = short.replace('|', "\\|");
    if refused(why) {
        format!("not supported by this build: {short}")
    } else {
        format!("failed: {short}")
    }
}

impl Driver {
    fn holder(&mut self, mech: Mechanism) -> &mut Holder {
        self.holders
            .iter_mut()
            .find(|h| h.mech == mech)
            .expect("a holder per mechanism")
    }

    fn slot(&self, key: &str) -> usize {
        self.slots
            .iter()
            .position(|s| s.peer.key == key)
            .unwrap_or_else(|| panic!("no peer {key}"))
    }

    fn spawn_agents(&mut self) {
        for peer in agent_peers() {
            let path = self.files.of(peer.mech).to_path_buf();
            let agent = match peer.runner {
                Runner::Rust => {
                    let mut c = Command::new(&self.setup.exe);
                    c.arg("agent").arg(peer.kind).arg(&path);
                    Agent::spawn(c)
                }
                Runner::Python => match &self.setup.python {
                    Some(py) => {
                        let mut c = Command::new(py);
                        c.arg(&self.setup.py_agent).arg(peer.kind).arg(&path);
                        Agent::spawn(c)
                    }
                    None => Err("no Python given (--python)".into()),
                },
                Runner::Lockfile => match &self.setup.lockfile_agent {
                    Some(exe) => {
                        let mut c = Command::new(exe);
                        c.arg(&path);
                        Agent::spawn(c)
                    }
                    None => Err("no liblockfile agent given (--lockfile-agent)".into()),
                },
            };
            let label = match &agent {
                Ok(a) if !a.about.is_empty() => format!("{} {}", peer.label, a.about),
                _ => peer.label.to_string(),
            };
            if let Err(e) = &agent {
                eprintln!("peers: {}: {e}", peer.label);
            }
            self.slots.push(Slot { peer, agent, label });
        }
        // unilock(1) --backend dotlock: exits 69 while the library lacks DOTLOCK.
        for cmd in &mut self.commands {
            let argv = &cmd.sequence[0];
            if !argv[0].ends_with("unilock") {
                continue;
            }
            let out = Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .output()
                .expect("run unilock");
            if out.status.code() == Some(69) {
                let text = String::from_utf8_lossy(&out.stderr);
                cmd.unsupported = Some(format!(
                    "exit 69: {}",
                    text.lines().next().unwrap_or("").trim()
                ));
            }
        }
    }

    // -----------------------------------------------------------------------------
    // 1. Uncontended pairs

    fn pairs(&mut self) {
        eprintln!("peers: uncontended pairs");
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].agent.is_ok())
            .collect();
        // Calibrate: pairs per run so that a run lasts about pair_run_ns.
        let mut n = vec![0usize; self.slots.len()];
        for &i in &live {
            let agent = self.slots[i].agent.as_mut().unwrap();
            agent.pair(20);
            let est = agent.pair(50).max(100.0);
            n[i] = ((self.counts.pair_run_ns / est) as usize).clamp(10, 200_000);
        }
        let mut ns: Vec<Vec<f64>> = vec![Vec::new(); self.slots.len()];
        for round in 0..self.counts.pair_rounds {
            for k in 0..live.len() {
                let i = live[(k + round) % live.len()];
                let agent = self.slots[i].agent.as_mut().unwrap();
                ns[i].push(agent.pair(n[i]));
            }
        }
        let baseline = |mech: Mechanism| match mech {
            Mechanism::Flock => "raw_flock",
            Mechanism::Ofd => "raw_ofd",
            Mechanism::Posix => "raw_posix",
            Mechanism::Dotlock => "raw_dotlock",
        };
        let per_round_ratio = |a: &[f64], b: &[f64]| -> Option<f64> {
            if a.is_empty() || b.is_empty() {
                return None;
            }
            let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
            Some(median(&r))
        };
        let py_raw = self.slot("py_raw");
        let mut rows = String::new();
        let mut items = Vec::new();
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            let mut item = Json::obj();
            item.set("key", s.peer.key)
                .set("label", s.label.as_str())
                .set("mech", s.peer.mech.key())
                .set("family", s.peer.family.key());
            let base = self.slot(baseline(s.peer.mech));
            match &s.agent {
                Err(why) => {
                    let _ = writeln!(
                        rows,
                        "| {} | {} | {} | {} | | |",
                        s.peer.mech.name(),
                        s.label,
                        s.peer.pair_what,
                        not_supported(why)
                    );
                    item.set("unsupported", why.as_str());
                }
                Ok(_) => {
                    let med = median(&ns[i]);
                    let ratio = per_round_ratio(&ns[i], &ns[base]);
                    let py_ratio = (s.peer.runner == Runner::Python)
                        .then(|| per_round_ratio(&ns[i], &ns[py_raw]))
                        .flatten();
                    let ratio_text = match (ratio, i == base) {
                        (_, true) => "1 (the baseline)".to_string(),
                        (Some(r), false) => format!("{r:.2}x"),
                        (None, false) => String::new(),
                    };
                    let py_text = match (py_ratio, i == py_raw) {
                        (_, true) => "1 (the Python baseline)".to_string(),
                        (Some(r), false) => format!("{r:.2}x"),
                        (None, false) => String::new(),
                    };
                    let _ = writeln!(
                        rows,
                        "| {} | {} | {} | {} | {ratio_text} | {py_text} |",
                        s.peer.mech.name(),
                        s.label,
                        s.peer.pair_what,
                        fmt_ns(med)
                    );
                    item.set("ns", med).set("ratio", ratio);
                    if let Some(r) = py_ratio {
                        item.set("ratio_python", r);
                    }
                    let key = format!("pair.{}", s.peer.key);
                    self.fact(&format!("{key}.ns"), med);
                    if let Some(r) = ratio {
                        self.fact(&format!("{key}.ratio"), r);
                    }
                }
            }
            items.push(item);
        }
        self.json.set("pairs", Json::Arr(items));
        let _ = write!(
            self.md,
            "### 6.1 Uncontended acquire + release\n\n\
             Each peer runs in its own process (an agent the driver starts), all on the same \
             lock file per mechanism, and times batches of uncontended pairs of about {:.0} ms; \
             {} rounds, every peer once per round in a rotating order. The time is the median \
             over the rounds; the ratio is the median over the rounds of the peer's time over \
             the raw system call pair's time in the same round (for DOTLOCK, the cheapest \
             lock file: `O_CREAT|O_EXCL` then `unlink`). Python rows also give the ratio to \
             the same two `fcntl.flock` calls made from Python, which is the interpreter's \
             own floor.\n\n\
             | mechanism | peer | one pair | time per pair | vs the raw calls | vs Python's raw calls |\n\
             |---|---|---|---:|---:|---:|\n{rows}\n",
            self.counts.pair_run_ns / 1e6,
            self.counts.pair_rounds,
        );
    }

    // -----------------------------------------------------------------------------
    // 2. A lock around a command, from a script

    fn sequences(&mut self) {
        eprintln!("peers: commands from a script");
        let runs = self.counts.cmd_runs;
        let dot = self.files.dotlock.clone();
        let live: Vec<usize> = (0..self.commands.len())
            .filter(|&i| self.commands[i].unsupported.is_none())
            .collect();
        let true_only = vec![strings(&["/bin/true"])];
        let run_sequence = |seq: &[Vec<String>]| -> f64 {
            let t0 = mono_ns();
            let mut end = t0;
            for argv in seq {
                let r = run_cmd(argv);
                assert_eq!(r.code, 0, "{argv:?} exited {}", r.code);
                end = r.end;
            }
            (end - t0) as f64
        };
        for &i in &live {
            for _ in 0..5 {
                run_sequence(&self.commands[i].sequence);
            }
        }
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); self.commands.len()];
        let mut true_times = Vec::new();
        for _ in 0..runs {
            for &i in &live {
                times[i].push(run_sequence(&self.commands[i].sequence));
            }
            true_times.push(run_sequence(&true_only));
        }
        let _ = std::fs::remove_file(&dot);
        let flock_ms = median(&times[0]);
        let true_ms = median(&true_times);
        let mut rows = String::new();
        let mut items = Vec::new();
        let mut facts = Vec::new();
        for (i, c) in self.commands.iter().enumerate() {
            let shown: Vec<String> = c
                .sequence
                .iter()
                .map(|argv| {
                    let mut a = argv.clone();
                    a[0] = Path::new(&a[0])
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    a.iter()
                        .map(|w| {
                            if w.starts_with('/') && w.contains("unilock-peers") {
                                "FILE".to_string()
                            } else {
                                w.clone()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            let what = format!("`{}`", shown.join("; "));
            let mut item = Json::obj();
            item.set("key", c.key).set("label", c.label.as_str());
            match &c.unsupported {
                Some(why) => {
                    let _ = writeln!(
                        rows,
                        "| {} | {} | {} | |",
                        c.label,
                        what,
                        not_supported(why)
                    );
                    item.set("unsupported", why.as_str());
                }
                None => {
                    let m = median(&times[i]);
                    let _ = writeln!(
                        rows,
                        "| {} | {} | {} | {:.2}x |",
                        c.label,
                        what,
                        fmt_ns(m),
                        m / flock_ms
                    );
                    item.set("ns", m).set("ratio_flock", m / flock_ms);
                    facts.push((format!("script.{}.ns", c.key), m));
                    facts.push((format!("script.{}.ratio_flock", c.key), m / flock_ms));
                }
            }
            items.push(item);
        }
        self.facts.extend(facts);
        self.json.set("script", Json::Arr(items));
        let _ = write!(
            self.md,
            "### 6.2 A lock around a command, from a shell script\n\n\
             Whole processes, as a script runs them: take the lock, run `/bin/true`, drop \
             the lock, each command spawned and reaped in turn; the median of {runs} runs, \
             interleaved. FILE is the same lock file for every row of a mechanism. Running \
             `/bin/true` alone takes {} here.\n\n\
             | peer | commands | median per run | vs flock(1) |\n|---|---|---:|---:|\n{rows}\n",
            fmt_ns(true_ms)
        );
    }

    // -----------------------------------------------------------------------------
    // 3. Hand-off latency

    /// Waits until the waiter has started its wait, then for a random moment when
    /// it polls, so that every phase of its polling period is sampled.
    fn settle(&mut self, mech: Mechanism, wake: Wake, startup_ns: f64) -> bool {
        match wake {
            Wake::Kernel => self.holder(mech).wait_blocked(),
            Wake::Poll(p) => {
                let r = self.rng.unit();
                sleep_ns(startup_ns + 2e6 + r * p * 1e9);
                true
            }
            Wake::Notify => {
                let r = self.rng.unit();
                sleep_ns(startup_ns + 5e6 + r * 5e6);
                true
            }
        }
    }

    /// One hand-off to agent `i`; the latency in ns, None when no waiter was seen.
    fn handoff_agent(&mut self, i: usize, timeout_ms: i64, wake: Wake) -> Option<f64> {
        let mech = self.slots[i].peer.mech;
        self.holder(mech).take();
        self.slots[i].agent.as_mut().unwrap().wait_begin(timeout_ms);
        let seen = self.settle(mech, wake, 0.0);
        let t0 = mono_ns();
        self.holder(mech).release();
        let agent = self.slots[i].agent.as_mut().unwrap();
        match agent.wait_end() {
            Outcome::Got(t1) => {
                agent.release();
                seen.then(|| t1.saturating_sub(t0) as f64)
            }
            Outcome::Timeout(_) => panic!("{}: timed out in a hand-off", self.slots[i].label),
            Outcome::Error(e) => panic!("{}: {e}", self.slots[i].label),
        }
    }

    /// One hand-off to a command; the latency until it exits, in ns.
    fn handoff_command(&mut self, c: usize, argv: &[String], wake: Wake) -> Option<f64> {
        let mech = self.commands[c].mech;
        self.holder(mech).take();
        let child = spawn(argv);
        let seen = self.settle(mech, wake, 20e6);
        let t0 = mono_ns();
        self.holder(mech).release();
        let ran = reap(child);
        assert_eq!(ran.code, 0, "{argv:?} exited {}", ran.code);
        if self.commands[c].leaves_lock_file {
            std::fs::remove_file(self.files.of(mech)).expect("remove the lock file");
        }
        seen.then(|| ran.end.saturating_sub(t0) as f64)
    }

    fn handoff(&mut self) {
        eprintln!("peers: hand-off latency");
        let mut variants = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            for (timed, wake) in [(false, s.peer.untimed), (true, s.peer.timed)] {
                if let Some(wake) = wake {
                    variants.push(Variant {
                        agent: Some(i),
                        command: None,
                        timed,
                        wake,
                        samples: Vec::new(),
                        lost: 0,
                    });
                }
            }
        }
        for (c, cmd) in self.commands.iter().enumerate() {
            for (timed, w) in [(false, &cmd.untimed), (true, &cmd.timed)] {
                if let Some((_, wake)) = w {
                    variants.push(Variant {
                        agent: None,
                        command: Some(c),
                        timed,
                        wake: *wake,
                        samples: Vec::new(),
                        lost: 0,
                    });
                }
            }
        }
        let supported = |d: &Driver, v: &Variant| match (v.agent, v.command) {
            (Some(i), _) => d.slots[i].agent.is_ok(),
            (_, Some(c)) => d.commands[c].unsupported.is_none(),
            _ => false,
        };
        let timeout_ms = |timed: bool| if timed { 10_000 } else { -1 };
        let quick = self.setup.quick;
        // The fast waiters, interleaved round by round; then the pollers, one by one.
        let fast: Vec<usize> = (0..variants.len())
            .filter(|&v| supported(self, &variants[v]))
            .filter(|&v| !matches!(variants[v].wake, Wake::Poll(_)))
            .collect();
        let rounds = self.counts.kernel_rounds.max(self.counts.notify_rounds);
        for round in 0..rounds + 2 {
            for &v in &fast {
                let limit = match variants[v].wake {
                    Wake::Notify => self.counts.notify_rounds,
                    _ => self.counts.kernel_rounds,
                };
                if round >= limit + 2 {
                    continue;
                }
                let r = self.one_handoff(variants[v].parts(), timeout_ms(variants[v].timed));
                if round < 2 {
                    continue; // warm-up
                }
                match r {
                    Some(ns) => variants[v].samples.push(ns),
                    None => variants[v].lost += 1,
                }
            }
        }
        for variant in &mut variants {
            let Wake::Poll(p) = variant.wake else {
                continue;
            };
            if !supported(self, variant) {
                continue;
            }
            let n = self.counts.poll_rounds(quick, p);
            eprintln!("peers: hand-off to a poller, {n} rounds");
            for _ in 0..n {
                match self.one_handoff(variant.parts(), timeout_ms(variant.timed)) {
                    Some(ns) => variant.samples.push(ns),
                    None => variant.lost += 1,
                }
            }
        }

        let mut rows = String::new();
        let mut items = Vec::new();
        let mut facts = Vec::new();
        for v in &variants {
            let (label, mech, family, key, how) = match (v.agent, v.command) {
                (Some(i), _) => {
                    let s = &self.slots[i];
                    let how = if v.timed {
                        s.peer.timed_how.to_string()
                    } else {
                        "no timeout".to_string()
                    };
                    (s.label.clone(), s.peer.mech, s.peer.family, s.peer.key, how)
                }
                (_, Some(c)) => {
                    let cmd = &self.commands[c];
                    let argv = if v.timed {
                        &cmd.timed.as_ref().unwrap().0
                    } else {
                        &cmd.untimed.as_ref().unwrap().0
                    };
                    let shown: Vec<&str> = argv[1..]
                        .iter()
                        .map(|w| {
                            if w.contains("unilock-peers") {
                                "FILE"
                            } else {
                                w.as_str()
                            }
                        })
                        .collect();
                    let name = Path::new(&argv[0])
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    (
                        cmd.label.clone(),
                        cmd.mech,
                        Family::Command,
                        cmd.key,
                        format!("`{name} {}`, until it exits", shown.join(" ")),
                    )
                }
                _ => unreachable!(),
            };
            let mode = if v.timed { "timed" } else { "untimed" };
            let mut item = Json::obj();
            item.set("key", key)
                .set("label", label.as_str())
                .set("mech", mech.key())
                .set("family", family.key())
                .set("mode", mode)
                .set("wake", v.wake.describe());
            let unsupported = match (v.agent, v.command) {
                (Some(i), _) => self.slots[i].agent.as_ref().err().cloned(),
                (_, Some(c)) => self.commands[c].unsupported.clone(),
                _ => None,
            };
            if let Some(why) = unsupported {
                let _ = writeln!(
                    rows,
                    "| {} | {label} | {mode}: {how} | | {} | | | |",
                    mech.name(),
                    not_supported(&why)
                );
                item.set("unsupported", why);
            } else if v.samples.is_empty() {
                let _ = writeln!(
                    rows,
                    "| {} | {label} | {mode}: {how} | | no sample ({} rounds without a blocked waiter) | | | |",
                    mech.name(),
                    v.lost
                );
                item.set("unsupported", "no sample");
            } else {
                let (p50, p99, max) = (
                    percentile(&v.samples, 0.5),
                    percentile(&v.samples, 0.99),
                    percentile(&v.samples, 1.0),
                );
                let lost = if v.lost > 0 {
                    format!(" ({} lost)", v.lost)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    rows,
                    "| {} | {label} | {mode}: {how} | {} | {}{lost} | {} | {} | {} |",
                    mech.name(),
                    v.wake.describe(),
                    v.samples.len(),
                    fmt_ns(p50),
                    fmt_ns(p99),
                    fmt_ns(max)
                );
                let k = format!("handoff.{key}.{mode}");
                facts.push((format!("{k}.p50_us"), p50 / 1e3));
                facts.push((format!("{k}.p99_us"), p99 / 1e3));
                facts.push((format!("{k}.n"), v.samples.len() as f64));
                item.set("n", v.samples.len())
                    .set("p50_ns", p50)
                    .set("p99_ns", p99)
                    .set("max_ns", max)
                    .set("samples_ns", v.samples.clone());
            }
            items.push(item);
        }
        self.facts.extend(facts);
        self.json.set("handoff", Json::Arr(items));
        let _ = write!(
            self.md,
            "### 6.3 Hand-off latency\n\n\
             The driver holds the lock with the raw calls (for DOTLOCK: a lock file with its \
             pid, liblockfile's format); the peer, in another process, starts waiting \
             (untimed: no timeout; timed: a 10 s timeout where the peer has one). When the \
             waiter sleeps in the kernel, the driver releases as soon as `/proc/locks` shows \
             it blocked; when it polls, at a random moment within its polling period (after \
             20 ms more for a command to start), so that every phase is sampled. Latency: \
             from just before the release call to the moment the waiter's call returned \
             (`CLOCK_MONOTONIC`, read in the waiter); for commands, to the moment the \
             command exited, which includes running `/bin/true` under the lock for flock(1) \
             and unilock(1). Waiters that sleep in the kernel or wait on inotify: {} rounds, \
             interleaved; pollers: fewer, as each round costs a polling period. \
             lockfile-progs retries after 5 s, then 10 s, ... (`--retry 3`); procmail's \
             `lockfile` sleeps 8 s between attempts by default, and its `-1` (the \
             `-sleeptime` option; `-s` is the pause after breaking a stale lock) makes it \
             1 s, for a bounded run.\n\n\
             | mechanism | peer | waiter | wakes by | rounds | p50 | p99 | max |\n\
             |---|---|---|---|---:|---:|---:|---:|\n{rows}\n\
             ![Hand-off latency distributions](docs/bench-handoff.svg)\n\n",
            self.counts.kernel_rounds
        );
    }

    fn one_handoff(
        &mut self,
        (agent, command, timed, wake): (Option<usize>, Option<usize>, bool, Wake),
        timeout: i64,
    ) -> Option<f64> {
        match (agent, command) {
            (Some(i), _) => self.handoff_agent(i, timeout, wake),
            (_, Some(c)) => {
                let argv = if timed {
                    self.commands[c].timed.as_ref().unwrap().0.clone()
                } else {
                    self.commands[c].untimed.as_ref().unwrap().0.clone()
                };
                self.handoff_command(c, &argv, wake)
            }
            _ => None,
        }
    }

    // -----------------------------------------------------------------------------
    // 4. Timeout overshoot

    fn overshoot(&mut self) {
        eprintln!("peers: timeout overshoot");
        let ms = self.counts.overshoot_ms;
        let mut rows = String::new();
        let mut items = Vec::new();
        for i in 0..self.slots.len() {
            let (mech, label, key) = {
                let s = &self.slots[i];
                (s.peer.mech, s.label.clone(), s.peer.key)
            };
            let mut item = Json::obj();
            item.set("key", key).set("label", label.as_str());
            let Some(wake) = self.slots[i].peer.timed else {
                if self.slots[i].peer.untimed.is_some() {
                    let _ = writeln!(
                        rows,
                        "| {} | {label} | no timeout in the API | | | |",
                        mech.name()
                    );
                }
                continue;
            };
            if let Err(why) = &self.slots[i].agent {
                let _ = writeln!(
                    rows,
                    "| {} | {label} | {} | | | |",
                    mech.name(),
                    not_supported(why)
                );
                item.set("unsupported", why.as_str());
                items.push(item);
                continue;
            }
            let rounds = match wake {
                Wake::Poll(p) if p > 0.1 => self.counts.overshoot_slow_rounds,
                _ => self.counts.overshoot_rounds,
            };
            self.holder(mech).take();
            let mut over = Vec::new();
            for round in 0..rounds + 1 {
                let agent = self.slots[i].agent.as_mut().unwrap();
                agent.wait_begin(ms);
                match agent.wait_end() {
                    Outcome::Timeout(e) if round > 0 => over.push(e as f64 - ms as f64 * 1e6),
                    Outcome::Timeout(_) => {}
                    Outcome::Got(_) => panic!("{label}: got a lock that is held"),
                    Outcome::Error(e) => panic!("{label}: {e}"),
                }
            }
            self.holder(mech).release();
            let how = self.slots[i].peer.timed_how;
            self.overshoot_row(&mut rows, &mut item, mech, &label, how, key, &over);
            items.push(item);
        }
        for c in 0..self.commands.len() {
            let (mech, label, key) = {
                let cmd = &self.commands[c];
                (cmd.mech, cmd.label.clone(), cmd.key)
            };
            let mut item = Json::obj();
            item.set("key", key).set("label", label.as_str());
            let Some(argv) = self.commands[c].with_timeout.clone() else {
                let _ = writeln!(
                    rows,
                    "| {} | {label} | no timeout: a number of retries | | | |",
                    mech.name()
                );
                continue;
            };
            if let Some(why) = &self.commands[c].unsupported {
                let _ = writeln!(
                    rows,
                    "| {} | {label} | {} | | | |",
                    mech.name(),
                    not_supported(why)
                );
                item.set("unsupported", why.as_str());
                items.push(item);
                continue;
            }
            self.holder(mech).take();
            let mut over = Vec::new();
            for round in 0..self.counts.overshoot_rounds + 1 {
                let t0 = mono_ns();
                let ran = run_cmd(&argv);
                assert_eq!(ran.code, 1, "{argv:?} against a held lock");
                if round > 0 {
                    over.push((ran.end - t0) as f64 - ms as f64 * 1e6);
                }
            }
            self.holder(mech).release();
            let how = format!("`-w {}`, whole process", ms as f64 / 1e3);
            self.overshoot_row(&mut rows, &mut item, mech, &label, &how, key, &over);
            items.push(item);
        }
        self.json.set("overshoot", Json::Arr(items));
        let _ = write!(
            self.md,
            "### 6.4 Timeout overshoot\n\n\
             The driver holds the lock; the peer asks for it with a {ms} ms timeout and \
             gives up; overshoot = how long the call took - {ms} ms (for commands: the whole \
             process, from spawn to exit, so its start-up cost is in it; see 6.2). Rounds: \
             {} ({} for pollers that sleep 0.25 s or more).\n\n\
             | mechanism | peer | how it times out | p50 | p99 | max |\n\
             |---|---|---|---:|---:|---:|\n{rows}\n",
            self.counts.overshoot_rounds, self.counts.overshoot_slow_rounds
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn overshoot_row(
        &mut self,
        rows: &mut String,
        item: &mut Json,
        mech: Mechanism,
        label: &str,
        how: &str,
        key: &str,
        over: &[f64],
    ) {
        let (p50, p99, max) = (
            percentile(over, 0.5),
            percentile(over, 0.99),
            percentile(over, 1.0),
        );
        let _ = writeln!(
            rows,
            "| {} | {label} | {how} | {} | {} | {} |",
            mech.name(),
            fmt_ns(p50),
            fmt_ns(p99),
            fmt_ns(max)
        );
        item.set("p50_ns", p50)
            .set("p99_ns", p99)
            .set("max_ns", max)
            .set("samples_ns", over.to_vec());
        self.fact(&format!("overshoot.{key}.p50_us"), p50 / 1e3);
        self.fact(&format!("overshoot.{key}.p99_us"), p99 / 1e3);
    }

    // -----------------------------------------------------------------------------
    // 5. CPU while waiting

    fn cpu(&mut self) {
        eprintln!("peers: CPU while waiting");
        let hold = self.counts.cpu_hold;
        let mut rows = String::new();
        let mut items = Vec::new();
        for i in 0..self.slots.len() {
            let peer = &self.slots[i].peer;
            let (mech, key, label) = (peer.mech, peer.key, self.slots[i].label.clone());
            let mut modes = Vec::new();
            match (peer.untimed, peer.timed) {
                (Some(u), Some(t)) if u != t => {
                    modes.push((false, u));
                    modes.push((true, t));
                }
                (_, Some(t)) => modes.push((true, t)),
                (Some(u), None) => modes.push((false, u)),
                (None, None) => continue,
            }
            for (timed, wake) in modes {
                let mode = if timed { "timed" } else { "untimed" };
                let mut item = Json::obj();
                item.set("key", key)
                    .set("label", label.as_str())
                    .set("mode", mode);
                if let Err(why) = &self.slots[i].agent {
                    let _ = writeln!(
                        rows,
                        "| {} | {label} | {mode} | | {} |",
                        mech.name(),
                        not_supported(why)
                    );
                    item.set("unsupported", why.as_str());
                    items.push(item);
                    continue;
                }
                self.holder(mech).take();
                let agent = self.slots[i].agent.as_mut().unwrap();
                let c0 = agent.cpu();
                agent.wait_begin(if timed { 10_000 } else { -1 });
                let tw = mono_ns();
                std::thread::sleep(hold);
                self.holder(mech).release();
                let agent = self.slots[i].agent.as_mut().unwrap();
                let t1 = match agent.wait_end() {
                    Outcome::Got(t1) => t1,
                    Outcome::Timeout(_) => panic!("{label}: timed out"),
                    Outcome::Error(e) => panic!("{label}: {e}"),
                };
                let c1 = agent.cpu();
                agent.release();
                let per_s = (c1 - c0) as f64 / (t1 - tw) as f64 * 1e3;
                let _ = writeln!(
                    rows,
                    "| {} | {label} | {mode} | {} | {per_s:.3} |",
                    mech.name(),
                    wake.describe()
                );
                item.set("ms_per_s", per_s)
                    .set("waited_s", (t1 - tw) as f64 / 1e9);
                self.fact(&format!("cpu.{key}.{mode}.ms_per_s"), per_s);
                items.push(item);
            }
        }
        for c in 0..self.commands.len() {
            let cmd = &self.commands[c];
            let (mech, key, label) = (cmd.mech, cmd.key, cmd.label.clone());
            let (argv, wake, mode) = match (&cmd.timed, &cmd.untimed) {
                (Some((a, w)), _) => (a.clone(), *w, "timed"),
                (None, Some((a, w))) => (a.clone(), *w, "untimed"),
                _ => continue,
            };
            let mut item = Json::obj();
            item.set("key", key)
                .set("label", label.as_str())
                .set("mode", mode);
            if let Some(why) = &cmd.unsupported {
                let _ = writeln!(
                    rows,
                    "| {} | {label} | {mode} | | {} |",
                    mech.name(),
                    not_supported(why)
                );
                item.set("unsupported", why.as_str());
                items.push(item);
                continue;
            }
            let leaves = cmd.leaves_lock_file;
            // The same command on a free lock: its start-up and exit, subtracted.
            let mut base = Vec::new();
            for _ in 0..3 {
                let ran = run_cmd(&argv);
                assert_eq!(ran.code, 0, "{argv:?} on a free lock");
                base.push(ran.cpu_ns as f64);
                if leaves {
                    std::fs::remove_file(self.files.of(mech)).expect("remove the lock file");
                }
            }
            self.holder(mech).take();
            let t0 = mono_ns();
            let child = spawn(&argv);
            std::thread::sleep(hold);
            self.holder(mech).release();
            let ran = reap(child);
            assert_eq!(ran.code, 0, "{argv:?} exited {}", ran.code);
            if leaves {
                std::fs::remove_file(self.files.of(mech)).expect("remove the lock file");
            }
            let per_s = (ran.cpu_ns as f64 - median(&base)).max(0.0) / (ran.end - t0) as f64 * 1e3;
            let _ = writeln!(
                rows,
                "| {} | {label} | {mode} | {} | {per_s:.3} |",
                mech.name(),
                wake.describe()
            );
            item.set("ms_per_s", per_s)
                .set("waited_s", (ran.end - t0) as f64 / 1e9);
            self.fact(&format!("cpu.{key}.{mode}.ms_per_s"), per_s);
            items.push(item);
        }
        self.json.set("cpu", Json::Arr(items));
        let _ = write!(
            self.md,
            "### 6.5 CPU burnt while waiting\n\n\
             The driver holds the lock for {:.1} s while the peer waits (with a 10 s timeout \
             where it has one), then releases. CPU = user + system time of the waiter \
             process and its reaped children (unilock's waiter child) over the wait, per \
             second waited; for commands, from `wait4`, less the median CPU of the same \
             command on a free lock (its start-up and exit). A poller that sleeps longer \
             than the hold (liblockfile, lockfile-progs: 5 s) waits longer. getrusage counts \
             in µs or clock ticks: small values are coarse.\n\n\
             | mechanism | peer | waiter | how it waits | CPU ms per s waited |\n\
             |---|---|---|---|---:|\n{rows}\n",
            hold.as_secs_f64()
        );
    }

    // -----------------------------------------------------------------------------
    // 6. Fairness

    /// Runs `n` contenders of `kind` on `path`; the per-process results.
    fn contend(&mut self, kind: &str, path: &Path, n: usize) -> Result<Vec<[u64; 4]>, String> {
        let duration = self.counts.fair_duration.as_nanos() as u64;
        let start = mono_ns() + 200_000_000 + 25_000_000 * n as u64;
        let children: Vec<Child> = (0..n)
            .map(|_| {
                Command::new(&self.setup.exe)
                    .arg("contend")
                    .arg(kind)
                    .arg(path)
                    .arg(start.to_string())
                    .arg(duration.to_string())
                    .arg(self.counts.fair_hold_ns.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("spawn a contender")
            })
            .collect();
        let mut results = Vec::new();
        let mut problem = None;
        for mut child in children {
            let mut out = String::new();
            child
                .stdout
                .take()
                .expect("contender stdout")
                .read_to_string(&mut out)
                .expect("read a contender");
            let status = child.wait().expect("wait for a contender");
            let line = out.trim();
            if let Some(why) = line.strip_prefix("unsupported") {
                problem = Some(why.trim().to_string());
                continue;
            }
            let v: Vec<u64> = line
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            if !status.success() || v.len() != 4 {
                problem = Some(format!("a contender failed: {line:?}"));
                continue;
            }
            results.push([v[0], v[1], v[2], v[3]]);
        }
        match problem {
            Some(p) => Err(p),
            None => Ok(results),
        }
    }

    fn fairness(&mut self) {
        let mut rows = String::new();
        let mut throughput_rows = String::new();
        let mut items = Vec::new();
        let duration_s = self.counts.fair_duration.as_secs_f64();
        let procs = self.counts.fair_procs;
        for mech in [Mechanism::Flock, Mechanism::Ofd, Mechanism::Posix] {
            let path = self.setup.dir.join(format!("contend-{}.lock", mech.key()));
            let probe_path = self.setup.dir.join(format!("probe-{}.lock", mech.key()));
            let mut per_n: Vec<[Option<f64>; 3]> = vec![[None; 3]; 3];
            let mut unsupported_fair = None;
            for (v, (variant, vlabel)) in [
                ("raw", "raw"),
                ("unilock", "unilock"),
                ("unilock-fair", "unilock `UNILOCK_FAIR`"),
            ]
            .into_iter()
            .enumerate()
            {
                let kind = match variant {
                    "unilock-fair" => format!("unilock-{}-fair", mech.key()),
                    _ => format!("{variant}-{}", mech.key()),
                };
                let probe = lockers::make(&kind, &probe_path).map(drop);
                for (ni, n) in procs.into_iter().enumerate() {
                    eprintln!("peers: fairness, {} {kind}, {n} processes", mech.name());
                    let mut item = Json::obj();
                    item.set("mech", mech.key())
                        .set("locker", variant)
                        .set("label", format!("{} {vlabel}", mech.name()))
                        .set("procs", n);
                    let result = match &probe {
                        Err(e) => Err(e.clone()),
                        Ok(()) => self.contend(&kind, &path, n),
                    };
                    match result {
                        Err(why) => {
                            let _ = writeln!(
                                rows,
                                "| {} | {vlabel} | {n} | {} | | | | | | |",
                                mech.name(),
                                not_supported(&why)
                            );
                            if variant == "unilock-fair" {
                                unsupported_fair = Some(why.clone());
                                self.fair_why = Some(why.clone());
                            }
                            item.set("unsupported", why);
                        }
                        Ok(r) => {
                            let counts: Vec<f64> = r.iter().map(|x| x[0] as f64).collect();
                            let total: f64 = counts.iter().sum();
                            let shares: Vec<f64> =
                                counts.iter().map(|c| c / total.max(1.0)).collect();
                            let j = jain(&counts);
                            let min = shares.iter().cloned().fold(f64::INFINITY, f64::min);
                            let max = shares.iter().cloned().fold(0.0, f64::max);
                            let worst = r.iter().map(|x| x[1]).max().unwrap_or(0) as f64;
                            let p99 = r.iter().map(|x| x[3]).max().unwrap_or(0) as f64;
                            let mean_wait =
                                r.iter().map(|x| x[2]).sum::<u64>() as f64 / total.max(1.0);
                            let rate = total / duration_s;
                            per_n[ni][v] = Some(rate);
                            let _ = writeln!(
                                rows,
                                "| {} | {vlabel} | {n} | {rate:.0} | {j:.3} | {:.1}% | {:.1}% | {} | {} | {} |",
                                mech.name(),
                                min * 100.0,
                                max * 100.0,
                                fmt_ns(mean_wait),
                                fmt_ns(p99),
                                fmt_ns(worst)
                            );
                            let k =
                                format!("fair.{}.{}.{n}", mech.key(), variant.replace('-', "_"));
                            self.fact(&format!("{k}.jain"), j);
                            self.fact(&format!("{k}.per_s"), rate);
                            self.fact(&format!("{k}.worst_wait_ms"), worst / 1e6);
                            self.fact(&format!("{k}.p99_wait_ms"), p99 / 1e6);
                            self.fact(&format!("{k}.min_share"), min);
                            item.set("counts", counts)
                                .set("jain", j)
                                .set("min_share", min)
                                .set("max_share", max)
                                .set("worst_wait_ns", worst)
                                .set("p99_wait_ns", p99)
                                .set("mean_wait_ns", mean_wait)
                                .set("per_s", rate);
                        }
                    }
                    items.push(item);
                }
            }
            for (ni, n) in procs.into_iter().enumerate() {
                let [raw, plain, fair] = per_n[ni];
                let cell = |x: Option<f64>| x.map_or(String::new(), |x| format!("{x:.0}"));
                let ratio = match (fair, plain, &unsupported_fair) {
                    (Some(f), Some(p), _) => format!("{:.2}x", f / p),
                    (_, _, Some(why)) => not_supported(why),
                    _ => String::new(),
                };
                if let (Some(f), Some(p)) = (fair, plain) {
                    self.fact(&format!("fair.{}.{n}.fair_over_unfair", mech.key()), f / p);
                }
                let _ = writeln!(
                    throughput_rows,
                    "| {} | {n} | {} | {} | {} | {ratio} |",
                    mech.name(),
                    cell(raw),
                    cell(plain),
                    cell(fair)
                );
            }
        }
        self.json.set("fairness", Json::Arr(items));
        let _ = write!(
            self.md,
            "### 6.6 Fairness under contention\n\n\
             N processes (2, 4, 8 on {} CPUs) start together and for {duration_s:.1} s each \
             loops: take the lock on the same file (no timeout), hold it {} µs (busy), \
             release, and take it again at once. Share = a process's acquisitions / all \
             acquisitions (fair: 1/N each); Jain's index = (Σx)² / (N·Σx²), 1 when all \
             shares are equal, 1/N when one process gets everything; mean wait = the lock \
             calls' total time / acquisitions; p99 wait = the 99th percentile of one \
             process's lock calls, the worst process; worst wait = the longest single lock \
             call of any process. With more processes than CPUs, the scheduler's time \
             slices are in the waits too. The kernel does not hand a released lock to the longest waiter: the \
             releaser, still on its CPU, takes it straight back. `UNILOCK_FAIR` is the \
             library's FIFO hand-off (SPEC section 5).\n\n\
             | mechanism | locker | processes | acquisitions/s | Jain's index | min share | max share | mean wait | p99 wait | worst wait |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n{rows}\n\
             ![Per-process shares](docs/bench-fairness.svg)\n\n\
             Throughput, acquisitions per second (fair mode against unfair):\n\n\
             | mechanism | processes | raw | unilock | unilock `UNILOCK_FAIR` | FAIR / unilock |\n\
             |---|---:|---:|---:|---:|---:|\n{throughput_rows}\n",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            self.counts.fair_hold_ns as f64 / 1e3
        );
    }

    // -----------------------------------------------------------------------------
    // The headline and the files

    fn fact(&mut self, key: &str, value: f64) {
        self.facts.push((key.to_string(), value));
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.facts.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// A number from the facts, or why it is missing.
    fn show(&self, key: &str, peer: &str, f: impl Fn(f64) -> String) -> String {
        if let Some(v) = self.get(key) {
            return f(v);
        }
        let why = self
            .slots
            .iter()
            .find(|s| s.peer.key == peer)
            .and_then(|s| s.agent.as_ref().err().cloned())
            .or_else(|| {
                self.commands
                    .iter()
                    .find(|c| c.key == peer)
                    .and_then(|c| c.unsupported.clone())
            });
        match why {
            Some(why) if refused(&why) => "not supported yet".into(),
            Some(_) => "failed".into(),
            None => "n/a".into(),
        }
    }

    fn headline(&mut self) {
        let x = |v: f64| format!("{v:.2}x");
        let t = |v: f64| fmt_ns(v * 1e3);
        let ms = |v: f64| format!("{v:.2} ms");
        let j = |v: f64| format!("{v:.2}");
        let mut h = Vec::new();
        h.push(format!(
            "| uncontended pair, ratio to raw `flock(2)` (C, Rust) | {} | {} | std `File::lock` {}, fd-lock {}, fs4 {} |",
            self.show("pair.unilock_flock.ratio", "unilock_flock", x),
            self.show("pair.raw_flock.ns", "raw_flock", fmt_ns),
            self.show("pair.std.ratio", "std", x),
            self.show("pair.fd_lock.ratio", "fd_lock", x),
            self.show("pair.fs4.ratio", "fs4", x),
        ));
        h.push(format!(
            "| uncontended pair, Python | `unilock.FileLock` {} | `fcntl.flock` {} | filelock {}, portalocker {} |",
            self.show("pair.unilock_py.ns", "unilock_py", fmt_ns),
            self.show("pair.py_raw.ns", "py_raw", fmt_ns),
            self.show("pair.filelock.ns", "filelock", fmt_ns),
            self.show("pair.portalocker.ns", "portalocker", fmt_ns),
        ));
        h.push(format!(
            "| hand-off p50, waiter with a timeout (C / Rust) | {} | {} (SIGALRM) | Rust std, fd-lock, fs4: no timeout |",
            self.show("handoff.unilock_flock.timed.p50_us", "unilock_flock", t),
            self.show("handoff.raw_flock.timed.p50_us", "raw_flock", t),
        ));
        h.push(format!(
            "| hand-off p50, waiter with a timeout (Python) | `unilock.FileLock` {} | | filelock {}, portalocker {} |",
            self.show("handoff.unilock_py.timed.p50_us", "unilock_py", t),
            self.show("handoff.filelock.timed.p50_us", "filelock", t),
            self.show("handoff.portalocker.timed.p50_us", "portalocker", t),
        ));
        h.push(format!(
            "| hand-off p50, `-w 10` command (until it exits) | `unilock` {} | | `flock` {} |",
            self.show("handoff.unilock_cmd.timed.p50_us", "unilock_cmd", t),
            self.show("handoff.flock_cmd.timed.p50_us", "flock_cmd", t),
        ));
        h.push(format!(
            "| timeout overshoot p50, 20 ms timeout | {} | {} (SIGALRM) | filelock {}, portalocker {} |",
            self.show("overshoot.unilock_flock.p50_us", "unilock_flock", t),
            self.show("overshoot.raw_flock.p50_us", "raw_flock", t),
            self.show("overshoot.filelock.p50_us", "filelock", t),
            self.show("overshoot.portalocker.p50_us", "portalocker", t),
        ));
        h.push(format!(
            "| CPU per second of waiting, timed waiter | {} | {} | filelock {}, portalocker {} |",
            self.show("cpu.unilock_flock.timed.ms_per_s", "unilock_flock", ms),
            self.show("cpu.raw_flock.timed.ms_per_s", "raw_flock", ms),
            self.show("cpu.filelock.timed.ms_per_s", "filelock", ms),
            self.show("cpu.portalocker.timed.ms_per_s", "portalocker", ms),
        ));
        let missing = match &self.fair_why {
            Some(why) if refused(why) => "not supported yet",
            Some(_) => "failed",
            None => "n/a",
        };
        let fair = |d: &Driver, key: &str| match d.get(key) {
            Some(v) => j(v),
            None => missing.into(),
        };
        h.push(format!(
            "| Jain's index, 8 processes, FLOCK (1 = equal shares) | {} unfair, {} `UNILOCK_FAIR` | {} | |",
            fair(self, "fair.flock.unilock.8.jain"),
            fair(self, "fair.flock.unilock_fair.8.jain"),
            fair(self, "fair.flock.raw.8.jain"),
        ));
        let waits = |d: &Driver, k: &str| match (
            d.get(&format!("{k}.p99_wait_ms")),
            d.get(&format!("{k}.worst_wait_ms")),
        ) {
            (Some(p), Some(w)) => format!("{} / {}", ms(p), ms(w)),
            _ => missing.to_string(),
        };
        h.push(format!(
            "| lock-call wait p99 / worst, 8 processes, FLOCK | {} unfair, {} `UNILOCK_FAIR` | {} | |",
            waits(self, "fair.flock.unilock.8"),
            waits(self, "fair.flock.unilock_fair.8"),
            waits(self, "fair.flock.raw.8"),
        ));
        h.push(format!(
            "| DOTLOCK pair | {} | {} (`O_EXCL` + `unlink`) | liblockfile {} |",
            self.show("pair.unilock_dotlock.ns", "unilock_dotlock", fmt_ns),
            self.show("pair.raw_dotlock.ns", "raw_dotlock", fmt_ns),
            self.show("pair.liblockfile.ns", "liblockfile", fmt_ns),
        ));
        h.push(format!(
            "| DOTLOCK hand-off p50 | {} | {} (inotify, then `O_EXCL`) | liblockfile {}, lockfile-progs {}, procmail `lockfile -1` {} |",
            self.show("handoff.unilock_dotlock.untimed.p50_us", "unilock_dotlock", t),
            self.show("handoff.raw_dotlock.untimed.p50_us", "raw_dotlock", t),
            self.show("handoff.liblockfile.untimed.p50_us", "liblockfile", t),
            self.show("handoff.lockfile_progs.untimed.p50_us", "lockfile_progs", t),
            self.show("handoff.procmail_lockfile.untimed.p50_us", "procmail_lockfile", t),
        ));
        self.headline = h;
    }
}

/// `peers run ...`: the whole measurement.
pub fn run(setup: Setup) {
    let started = mono_ns();
    let counts = Counts::new(setup.quick);
    let dir = setup.dir.clone();
    std::fs::create_dir_all(&dir).expect("create the bench directory");
    let files = Files {
        flock: dir.join("flock.lock"),
        ofd: dir.join("ofd.lock"),
        posix: dir.join("posix.lock"),
        dotlock: dir.join("dot.lock"),
    };
    let _ = std::fs::remove_file(&files.dotlock);
    let holders = [
        Mechanism::Flock,
        Mechanism::Ofd,
        Mechanism::Posix,
        Mechanism::Dotlock,
    ]
    .into_iter()
    .map(|m| Holder::new(m, files.of(m)))
    .collect();
    let commands = command_peers(&setup, &files, &counts);
    let mut d = Driver {
        setup,
        counts,
        files,
        slots: Vec::new(),
        commands,
        holders,
        rng: Rng::new(),
        md: String::new(),
        json: Json::obj(),
        facts: Vec::new(),
        fair_why: None,
        headline: Vec::new(),
    };
    d.spawn_agents();
    d.pairs();
    d.sequences();
    d.handoff();
    d.overshoot();
    d.cpu();
    d.fairness();
    d.headline();
    d.slots.clear();

    let elapsed = (mono_ns() - started) as f64 / 1e9;
    let _ = writeln!(d.md, "The peer measurements took {elapsed:.0} s.");
    let mut summary = Json::obj();
    summary.set("quick", d.setup.quick);
    for (k, v) in &d.facts {
        summary.set(k, *v);
    }
    summary.set("elapsed_s", elapsed);
    let mut json = std::mem::replace(&mut d.json, Json::obj());
    json.set("summary", summary);
    let mut text = String::new();
    json.write(&mut text);
    std::fs::write(&d.setup.json, text + "\n").expect("write the JSON");
    std::fs::write(&d.setup.markdown, &d.md).expect("write the Markdown");
    let headline = format!(
        "| measure | unilock | raw system call | the peers |\n|---|---|---|---|\n{}\n",
        d.headline.join("\n")
    );
    std::fs::write(&d.setup.headline, headline).expect("write the headline");
    print!("{}", d.md);
}
