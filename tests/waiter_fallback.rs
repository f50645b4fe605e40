//! Waits where no waiter of the usual kind can be made (SPEC: "blocking calls never
//! answer -EAGAIN"): with RLIMIT_NPROC reached, under a seccomp filter that refuses
//! io_uring and every way to make a process, under one that refuses io_uring and
//! `CLONE_VM` (where the forked fallback waiter must die with its host), and under one
//! that refuses io_uring alone (OFD and POSIX waits then use waiter children). Each scenario runs in a
//! child process (this test binary again) that restricts itself and then waits for
//! locks this process holds, in every kernel backend: a timed wait ends with
//! ETIMEDOUT on time, a cancelled one with ECANCELED, and a wait ends with the lock
//! once this process lets go.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{ALL, TempDir, name, opts};
use unilock::{Backend, Lock, Mode};

const SCENARIO_ENV: &str = "UNILOCK_TEST_SCENARIO";
const DIR_ENV: &str = "UNILOCK_TEST_DIR";

/// The child's side: runs the scenario named in the environment, then exits.
#[test]
fn scenario_main() {
    let Ok(scenario) = std::env::var(SCENARIO_ENV) else {
        return;
    };
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
    let code = match run_scenario(&scenario, &dir) {
        Ok(()) => 0,
        Err(why) => {
            println!("@@ failed: {why}");
            1
        }
    };
    std::process::exit(code);
}

fn run_scenario(scenario: &str, dir: &Path) -> Result<(), String> {
    let locks: Vec<Arc<Lock>> = ALL
        .iter()
        .map(|&b| Arc::new(Lock::open(dir.join(name(b)), &opts(b)).unwrap()))
        .collect();
    // The thread that cancels, made before the restriction forbids threads too.
    let (to_canceller, jobs) = mpsc::channel::<Arc<Lock>>();
    std::thread::spawn(move || {
        for lock in jobs {
            std::thread::sleep(Duration::from_millis(150));
            while !lock.cancel() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    restrict(scenario)?;
    for (&b, lock) in ALL.iter().zip(&locks) {
        let start = Instant::now();
        let timed = lock.lock(Mode::Exclusive, 0, 0, Some(Duration::from_millis(300)));
        let took = start.elapsed();
        match timed {
            Err(e) if e.errno() == libc::ETIMEDOUT => {}
            other => return Err(format!("{b:?}: a timed wait gave {other:?}")),
        }
        if took < Duration::from_millis(290) || took > Duration::from_secs(3) {
            return Err(format!("{b:?}: a 300 ms wait took {took:?}"));
        }
        to_canceller.send(lock.clone()).unwrap();
        match lock.lock(Mode::Exclusive, 0, 0, None) {
            Err(e) if e.errno() == libc::ECANCELED => {}
            other => return Err(format!("{b:?}: a cancelled wait gave {other:?}")),
        }
        println!("@@ waiting {}", name(b));
        if let Err(e) = lock.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(20))) {
            return Err(format!("{b:?}: the wait for a released lock failed: {e}"));
        }
        println!("@@ granted {}", name(b));
    }
    let mechanism = unilock::capi::wait_mechanism();
    if scenario.starts_with("seccomp") && mechanism.contains("io_uring") {
        return Err(format!(
            "io_uring was refused, yet the waits used: {mechanism}"
        ));
    }
    Ok(())
}

/// Applies the scenario's restriction to this process.
fn restrict(scenario: &str) -> Result<(), String> {
    match scenario {
        "nproc" => {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: setrlimit reads a local struct.
            if unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &none) } != 0 {
                return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
            }
            Ok(())
        }
        "seccomp-all" => install_filter(Refuse::Everything),
        "seccomp-vm" => install_filter(Refuse::CloneVm),
        "seccomp-uring" => install_filter(Refuse::IoUring),
        _ => Err(format!("unknown scenario {scenario}")),
    }
}

/// What a seccomp filter of [`install_filter`] refuses besides `io_uring_setup`.
#[derive(Clone, Copy, PartialEq)]
enum Refuse {
    /// Nothing else.
    IoUring,
    /// `clone` with `CLONE_VM` in its flags.
    CloneVm,
    /// `clone`, `fork` and `vfork`.
    Everything,
}

/// A seccomp filter that makes `io_uring_setup` fail with EPERM (as Docker's default
/// profile does), `clone3` with ENOSYS (so that the C library falls back to `clone`),
/// and, as `refuse` says, `clone` (with `CLONE_VM` in its flags, or any) and `fork` and
/// `vfork` with EPERM.
fn install_filter(refuse: Refuse) -> Result<(), String> {
    let only_vm = refuse == Refuse::CloneVm;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    let errno = |e: i32| libc::SECCOMP_RET_ERRNO | e as u32;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let clone_rule = if refuse == Refuse::IoUring {
        vec![op(RET_K, 0, 0, ALLOW)]
    } else if only_vm {
        // args[0] (the flags, low word) has CLONE_VM: refuse.
        vec![
            op(LD_W_ABS, 0, 0, 16),
            op(JSET_K, 0, 1, libc::CLONE_VM as u32),
            op(RET_K, 0, 0, errno(libc::EPERM)),
            op(RET_K, 0, 0, ALLOW),
        ]
    } else {
        vec![op(RET_K, 0, 0, errno(libc::EPERM))]
    };
    let fork_rule = if refuse == Refuse::Everything {
        errno(libc::EPERM)
    } else {
        ALLOW
    };
    let mut prog = vec![
        op(LD_W_ABS, 0, 0, 4),
        op(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        op(RET_K, 0, 0, ALLOW),
        op(LD_W_ABS, 0, 0, 0),
        op(JEQ_K, 0, 1, libc::SYS_io_uring_setup as u32),
        op(RET_K, 0, 0, errno(libc::EPERM)),
        op(JEQ_K, 0, 1, libc::SYS_clone3 as u32),
        op(RET_K, 0, 0, errno(libc::ENOSYS)),
        op(JEQ_K, 0, 1, libc::SYS_fork as u32),
        op(RET_K, 0, 0, fork_rule),
        op(JEQ_K, 0, 1, libc::SYS_vfork as u32),
        op(RET_K, 0, 0, fork_rule),
        op(JEQ_K, 1, 0, libc::SYS_clone as u32),
        op(RET_K, 0, 0, ALLOW),
    ];
    prog.extend(clone_rule);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: prctl with integer arguments, then with a pointer to a live filter program.
    let rc = unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            -1
        } else {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
            )
        }
    };
    if rc != 0 {
        return Err(format!("seccomp: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `scenario` in a child while this process holds an exclusive lock on each
/// file, releasing each one when the child says it waits for it; `as_nobody` runs the
/// child as user 65534 (RLIMIT_NPROC does not bind root).
fn run(scenario: &str, as_nobody: bool) {
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new(&format!("fallback-{scenario}"));
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut held = Vec::new();
    for b in ALL {
        let path = dir.file(name(b));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let l = Lock::open(&path, &opts(b)).unwrap();
        l.lock(Mode::Exclusive, 0, 0, Some(Duration::ZERO)).unwrap();
        held.push((b, Some(l)));
    }
    let mut command = Command::new(common::runnable_self(&dir.0, "exe"));
    command
        .args([
            "--exact",
            "scenario_main",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SCENARIO_ENV, scenario)
        .env(DIR_ENV, &dir.0)
        .stdout(Stdio::piped());
    if as_nobody {
        command.uid(65534).gid(65534);
    }
    let mut child = command.spawn().unwrap();
    let pid = child.id() as i32;
    // A child that hangs is killed, and the test fails on its missing lines.
    let watchdog = std::thread::spawn(move || {
        for _ in 0..600 {
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: kill with signal 0 only checks that the process exists.
            if unsafe { libc::kill(pid, 0) } != 0 {
                return;
            }
        }
        // SAFETY: kill takes integers.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let mut granted = Vec::new();
    let mut failure = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let Some(at) = line.find("@@ ") else { continue };
        let words: Vec<&str> = line[at + 3..].split_whitespace().collect();
        match words.as_slice() {
            ["waiting", b] => {
                for (hb, l) in held.iter_mut() {
                    if name(*hb) == *b {
                        std::thread::sleep(Duration::from_millis(100));
                        l.take();
                    }
                }
            }
            ["granted", b] => granted.push(b.to_string()),
            _ => failure = Some(line[at + 3..].to_string()),
        }
    }
    let status = child.wait().unwrap();
    watchdog.join().unwrap();
    assert_eq!(failure, None, "{scenario}");
    assert!(
        status.success(),
        "{scenario}: the child ended with {status}"
    );
    let all: Vec<String> = ALL.iter().map(|&b| name(b).to_string()).collect();
    assert_eq!(granted, all, "{scenario}");
}

#[test]
fn waits_work_when_rlimit_nproc_forbids_new_processes() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    run("nproc", root);
}

#[test]
fn waits_work_when_seccomp_forbids_every_new_process() {
    run("seccomp-all", false);
}

#[test]
fn waits_work_when_seccomp_forbids_clone_vm() {
    run("seccomp-vm", false);
}

/// OFD and POSIX waits, which are the waiting thread's own where io_uring serves, use
/// the persistent waiter child where it is refused.
#[test]
fn waits_work_when_seccomp_forbids_io_uring() {
    run("seccomp-uring", false);
}

/// Where only `CLONE_VM` is refused, flock and OFD waits use a forked waiter: when its
/// host is killed, the waiter dies too instead of waiting on with the host's
/// descriptors.
#[test]
fn a_forked_waiter_dies_with_its_killed_host() {
    let dir = TempDir::new("fallback-orphan");
    for b in [Backend::Flock, Backend::Ofd] {
        let path = dir.file(name(b));
        let l = Lock::open(&path, &opts(b)).unwrap();
        l.lock(Mode::Exclusive, 0, 0, Some(Duration::ZERO)).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "orphan_host_main",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SCENARIO_ENV, name(b))
            .env(DIR_ENV, &dir.0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let host = child.id() as i32;
        // The host's waiter is its child: find it in /proc.
        let start = Instant::now();
        let waiter = loop {
            let found = std::fs::read_dir(format!("/proc/{host}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
                .flat_map(|c| {
                    c.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok())
                        .collect::<Vec<_>>()
                })
                .next();
            if let Some(w) = found {
                break w;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{b:?}: the host never started a waiter"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        let start = Instant::now();
        while alive(waiter) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{b:?}: the waiter {waiter} outlived its killed host"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(l);
    }
}

/// True while `pid` is a process that has not exited (a zombie has).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .next();
            !matches!(state, Some("Z" | "X"))
        }
        Err(_) => false,
    }
}

/// The host of `a_forked_waiter_dies_with_its_killed_host`: refuses `CLONE_VM`, then
/// waits for the lock forever.
#[test]
fn orphan_host_main() {
    let Ok(backend) = std::env::var(SCENARIO_ENV) else {
        return;
    };
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
    let b = common::backend_named(&backend);
    let lock = Lock::open(dir.join(&backend), &opts(b)).unwrap();
    install_filter(Refuse::CloneVm).unwrap();
    let _ = lock.lock(Mode::Exclusive, 0, 0, None);
    std::process::exit(3);
}
