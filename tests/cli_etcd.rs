//! The `unilock` command with an etcd lock (`--etcd`, `-b etcd`): real processes
//! against a real, private etcd member (tests/common/etcd.rs), and the real `etcdctl
//! lock` for interoperation both ways.
//!
//! What is checked: `-n`, `-w`, `--verbose` naming the holder's host and pid; the
//! fencing token in `UNILOCK_FENCE`, growing from one grant to the next; `--test` and
//! `--list` (table and JSON, the queue in order); exclusion with `etcdctl lock` both
//! ways; a lost lease (the process stopped past its TTL, or the lease revoked) reported,
//! with the documented exit status 75, and `--kill-on-loss` ending the command; the
//! usage errors; a closed endpoint; TLS; and that a password never shows.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use common::cli::{
    Outcome, assert_documented, lock_schema, locks, outcome, send_signal, wait_until,
};
use common::etcd::Etcd;

const UNILOCK: &str = env!("CARGO_BIN_EXE_unilock");
/// The exit status of a command whose etcd lock was lost (unilock(1), EXIT STATUS).
const LOST: i32 = 75;

/// A unilock command with no etcd setting from the test's own environment.
fn unilock() -> Command {
    let mut c = Command::new(UNILOCK);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("UNILOCK_") || name.starts_with("ETCDCTL_") {
            c.env_remove(&*name);
        }
    }
    c.stdin(Stdio::null());
    c
}

/// Runs `unilock ARGS` to its end.
fn run(args: &[&str]) -> Outcome {
    run_with(unilock(), args)
}

fn run_with(mut command: Command, args: &[&str]) -> Outcome {
    let began = Instant::now();
    let out = command.args(args).output().expect("run unilock");
    outcome(out, began.elapsed())
}

/// `--etcd=ENDPOINTS` for `etcd`.
fn at(etcd: &Etcd) -> String {
    format!("--etcd={}", etcd.endpoints())
}

/// This host's name, as the lock records name it.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// The lock's queue as `--list --json` shows it.
fn queue(etcd: &Etcd, name: &str) -> Vec<serde_json::Value> {
    let out = run(&[&at(etcd), "--list", "--json", name]);
    assert_eq!(out.code, 0, "--list: {}", out.stderr);
    locks(&out.stdout)
}

/// A process kept running by the test (killed on drop if still running).
struct Running(Child);

impl Running {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits for the end; the outcome, with `elapsed` since `began`.
    fn finish(mut self, began: Instant) -> Outcome {
        let child = std::mem::replace(
            &mut self.0,
            Command::new("true").spawn().expect("a placeholder"),
        );
        let out = child.wait_with_output().expect("wait");
        outcome(out, began.elapsed())
    }
}

impl Drop for Running {
    /// SIGTERM first: a unilock holder passes it on to its command and releases the
    /// lock (SIGKILL would leave the key until its lease expires), as etcdctl does.
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            send_signal(self.0.id(), "TERM");
            let began = Instant::now();
            while let Ok(None) = self.0.try_wait() {
                if began.elapsed() > Duration::from_secs(5) {
                    let _ = self.0.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.0.wait();
    }
}

/// `unilock ARGS` started in the background, its output piped.
fn spawn(args: &[&str]) -> Running {
    Running(
        unilock()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn unilock"),
    )
}

/// A unilock process that holds etcd lock `name` (running `sleep SECS`) once this
/// returns.
fn hold(etcd: &Etcd, name: &str, secs: &str) -> Running {
    let before = queue(etcd, name).len();
    let holder = spawn(&[&at(etcd), name, "sleep", secs]);
    let pid = i64::from(holder.pid());
    wait_until("the holder's key", || {
        queue(etcd, name).len() > before
            && queue(etcd, name)
                .iter()
                .any(|l| l["pid"].as_i64() == Some(pid))
    });
    holder
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn nonblocking_on_a_held_lock_exits_1_and_verbose_names_the_holders_host_and_pid() {
    let etcd = Etcd::start();
    let holder = hold(&etcd, "nb", "30");
    let out = run(&[
        &at(&etcd),
        "-n",
        "--verbose",
        "nb",
        "touch",
        "/nonexistent/ran",
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("failed to get lock"), "{}", out.stderr);
    let who = format!("pid {} (unilock) on host {}", holder.pid(), host());
    assert!(out.stderr.contains(&who), "{who}: {}", out.stderr);
    assert!(
        out.stderr.contains("the etcd lock nb (key nb/"),
        "{}",
        out.stderr
    );
    eprintln!("unilock --etcd -n on a held lock: {:?}", out.elapsed);
    assert!(out.elapsed < Duration::from_secs(2), "{:?}", out.elapsed);
    // -E, and -b etcd with the endpoints from the environment, the same way.
    let mut c = unilock();
    c.env("UNILOCK_ETCD_ENDPOINTS", etcd.endpoints());
    let out = run_with(c, &["-b", "etcd", "-n", "-E", "7", "nb", "true"]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    let mut c = unilock();
    c.env("ETCDCTL_ENDPOINTS", etcd.endpoints());
    assert_eq!(run_with(c, &["--etcd", "-n", "nb", "true"]).code, 1);
    // The attempts left nothing in the queue.
    assert_eq!(queue(&etcd, "nb").len(), 1);
    drop(holder);
    wait_until("the release", || queue(&etcd, "nb").is_empty());
    assert_eq!(run(&[&at(&etcd), "-n", "nb", "true"]).code, 0);
}

#[test]
fn a_timed_wait_gives_up_after_its_timeout_and_a_released_lock_ends_the_wait() {
    let etcd = Etcd::start();
    let holder = hold(&etcd, "w", "30");
    let out = run(&[&at(&etcd), "-w", "0.5", "w", "true"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    eprintln!("unilock --etcd -w 0.5: {:?}", out.elapsed);
    assert!(
        out.elapsed >= Duration::from_millis(490) && out.elapsed < Duration::from_millis(2000),
        "{:?}",
        out.elapsed
    );
    assert_eq!(queue(&etcd, "w").len(), 1, "the waiter left the queue");
    // --verbose waits in one piece (its place in the queue kept) and names the holder.
    let began = Instant::now();
    let waiter = spawn(&[&at(&etcd), "--verbose", "-w", "20", "w", "echo", "got it"]);
    wait_until("the waiter's key", || queue(&etcd, "w").len() == 2);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(queue(&etcd, "w").len(), 2);
    let second = queue(&etcd, "w")[1]["revision"].as_i64();
    drop(holder);
    let out = waiter.finish(began);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("got it"), "{}", out.stdout);
    assert!(
        out.stderr.contains("waiting for the lock: pid"),
        "{}",
        out.stderr
    );
    assert!(second.is_some());
}

#[test]
fn the_command_gets_its_fencing_token_which_grows_with_every_grant() {
    let etcd = Etcd::start();
    let script = format!(
        "echo token=$UNILOCK_FENCE; {UNILOCK} {} --list --json fence",
        at(&etcd)
    );
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let mut c = unilock();
        // A token in unilock's own environment is replaced, never passed on.
        c.env("UNILOCK_FENCE", "999999999");
        let out = run_with(c, &[&at(&etcd), "fence", "sh", "-c", &script]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let token: u64 = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("token="))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no token: {}", out.stdout));
        // The token is the holder's key's create revision.
        let json = &out.stdout[out.stdout.find('{').unwrap()..];
        let listed = locks(json);
        assert_eq!(listed.len(), 1, "{json}");
        assert_eq!(listed[0]["revision"].as_u64(), Some(token), "{json}");
        tokens.push(token);
    }
    assert!(tokens[1] > tokens[0], "{tokens:?}");
    // A file lock's command gets none.
    let dir = TempDir::new("cli-etcd-fence");
    let file = dir.file("f");
    let out = run(&[
        file.to_str().unwrap(),
        "sh",
        "-c",
        "echo ${UNILOCK_FENCE-unset}",
    ]);
    assert_eq!(out.stdout.trim(), "unset");
}

#[test]
fn test_and_list_show_the_holder_then_the_waiters_in_order() {
    let etcd = Etcd::start();
    // Free: --test exits 0, --list has no row.
    let out = run(&[&at(&etcd), "--test", "q"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{}", out.stderr);
    assert_eq!(queue(&etcd, "q").len(), 0);
    let holder = hold(&etcd, "q", "30");
    let waiter = spawn(&[&at(&etcd), "q", "true"]);
    wait_until("the unilock waiter", || queue(&etcd, "q").len() == 2);
    let mut ctl = etcd.etcdctl();
    let _etcdctl_waiter = Running(
        ctl.args(["lock", "q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the etcdctl waiter", || queue(&etcd, "q").len() == 3);

    let out = run(&[&at(&etcd), "--test", "q"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    for column in [
        "COMMAND", "PID", "TYPE", "HOST", "REVISION", "LEASE", "WAITING",
    ] {
        assert!(lines[0].contains(column), "{}", out.stdout);
    }
    assert!(lines[1].contains(&holder.pid().to_string()) && lines[1].contains(&host()));
    assert!(lines[1].contains("ETCD") && lines[1].contains("WRITE"));
    let tested = locks(&run(&[&at(&etcd), "--test", "--json", "q"]).stdout);
    assert_eq!(tested.len(), 1);
    assert_eq!(tested[0]["pid"].as_u64(), Some(u64::from(holder.pid())));

    let listed = queue(&etcd, "q");
    let pids: Vec<i64> = listed.iter().map(|l| l["pid"].as_i64().unwrap()).collect();
    assert_eq!(pids, [i64::from(holder.pid()), i64::from(waiter.pid()), -1]);
    let waiting: Vec<bool> = listed
        .iter()
        .map(|l| l["waiting"].as_bool().unwrap())
        .collect();
    assert_eq!(waiting, [false, true, true]);
    let revisions: Vec<u64> = listed
        .iter()
        .map(|l| l["revision"].as_u64().unwrap())
        .collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    // The lease is the key's hexadecimal suffix, as etcdctl names keys and leases.
    let keys = etcd.keys_with_prefix("q/");
    for l in &listed {
        let key = format!("q/{}", l["lease"].as_str().unwrap());
        assert!(keys.contains(&key), "{key} in {keys:?}");
        assert_eq!(l["path"], "q");
        assert_eq!(l["type"], "ETCD");
    }
    assert_eq!(listed[0]["host"].as_str(), Some(host().as_str()));
    assert_eq!(
        listed[2]["host"],
        serde_json::Value::Null,
        "etcdctl's key has no record"
    );
    assert_eq!(listed[2]["command"], "(undefined)");

    // The table: one row each, in the same order.
    let out = run(&[&at(&etcd), "--list", "q"]);
    let rows: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    assert!(rows[0].contains(&holder.pid().to_string()));
    assert!(rows[1].contains(&waiter.pid().to_string()));
    assert!(rows[2].contains("(undefined)"));

    // Every document, with every column, follows docs/locks.schema.json.
    let (props, all) = lock_schema();
    for args in [
        &["--list", "--json", "q"][..],
        &["--list", "--json", "--output", &all, "q"],
        &["--test", "--json", "q"],
    ] {
        let out = run(&[&[at(&etcd).as_str()][..], args].concat());
        for lock in locks(&out.stdout) {
            assert_documented(&lock, &props, &out.stdout);
        }
    }
}

#[test]
fn etcdctl_lock_and_unilock_exclude_each_other_both_ways() {
    let etcd = Etcd::start();
    // etcdctl holds: unilock -n fails, and says the holder left no record.
    let mut ctl = etcd.etcdctl();
    let mut etcdctl = Running(
        ctl.args(["lock", "shared-name"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(etcdctl.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("shared-name/"),
        "etcdctl lock said {line:?}"
    );
    let out = run(&[&at(&etcd), "-n", "--verbose", "shared-name", "true"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("left no record"), "{}", out.stderr);
    send_signal(etcdctl.pid(), "INT");
    let _ = etcdctl.0.wait();
    wait_until("etcdctl's release", || {
        queue(&etcd, "shared-name").is_empty()
    });
    assert_eq!(run(&[&at(&etcd), "-n", "shared-name", "true"]).code, 0);

    // unilock holds: etcdctl lock waits until the command has ended.
    let dir = TempDir::new("cli-etcd-interop");
    let log = dir.0.join("log");
    let log = log.to_str().unwrap();
    let began = Instant::now();
    let holder = spawn(&[
        &at(&etcd),
        "shared-name",
        "sh",
        "-c",
        &format!("echo unilock-start >> {log}; sleep 2; echo unilock-end >> {log}"),
    ]);
    wait_until("unilock's command", || {
        std::fs::read_to_string(log).is_ok_and(|l| l.contains("unilock-start"))
    });
    let mut ctl = etcd.etcdctl();
    let waiter = ctl
        .args([
            "lock",
            "shared-name",
            "--",
            "sh",
            "-c",
            &format!("echo etcdctl >> {log}"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let out = holder.finish(began);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let unilock_done = began.elapsed();
    let status = Running(waiter).0.wait().unwrap();
    let etcdctl_done = began.elapsed();
    assert!(status.success());
    let events = std::fs::read_to_string(log).unwrap();
    assert_eq!(
        events.lines().collect::<Vec<_>>(),
        ["unilock-start", "unilock-end", "etcdctl"],
        "{events}"
    );
    eprintln!("unilock's command ended at {unilock_done:?}, etcdctl's at {etcdctl_done:?}");
    assert!(unilock_done >= Duration::from_secs(2));
}

/// The lease id (hex) of the holder of `name`.
fn holder_lease(etcd: &Etcd, name: &str) -> String {
    queue(etcd, name)[0]["lease"].as_str().unwrap().to_string()
}

#[test]
fn a_holder_stopped_past_its_ttl_loses_the_lock_and_kill_on_loss_ends_the_command() {
    let etcd = Etcd::start();
    let dir = TempDir::new("cli-etcd-lost");
    let log = dir.0.join("log");
    let log = log.to_str().unwrap();
    let script =
        format!("trap 'echo TERM >> {log}; exit 3' TERM; echo started >> {log}; sleep 60 & wait");
    let began = Instant::now();
    let holder = spawn(&[
        &at(&etcd),
        "--lease-ttl",
        "2",
        "--kill-on-loss=2",
        "lost",
        "sh",
        "-c",
        &script,
    ]);
    wait_until("the command", || {
        std::fs::read_to_string(log).is_ok_and(|l| l.contains("started"))
    });
    let first = queue(&etcd, "lost")[0]["revision"].as_u64().unwrap();
    send_signal(holder.pid(), "STOP");
    // Past the TTL, etcd deletes the key: another process gets the lock.
    let other = run(&[
        &at(&etcd),
        "-w",
        "10",
        "lost",
        "sh",
        "-c",
        "echo $UNILOCK_FENCE",
    ]);
    assert_eq!(other.code, 0, "{}", other.stderr);
    let second: u64 = other.stdout.trim().parse().unwrap();
    assert!(second > first, "tokens {first} then {second}");
    send_signal(holder.pid(), "CONT");
    let out = holder.finish(began);
    assert_eq!(out.code, LOST, "{}", out.stderr);
    let events = std::fs::read_to_string(log).unwrap();
    assert!(
        events.contains("TERM"),
        "the command got no SIGTERM: {events}"
    );
    assert!(
        out.stderr.contains("the etcd lock was lost"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("SIGTERM"), "{}", out.stderr);
    assert!(out.stderr.contains("status 75"), "{}", out.stderr);
}

#[test]
fn a_revoked_lease_is_reported_and_the_status_is_75_after_the_command() {
    let etcd = Etcd::start();
    let began = Instant::now();
    let holder = spawn(&[
        &at(&etcd),
        "--lease-ttl",
        "3",
        "revoked",
        "sh",
        "-c",
        "sleep 2; echo finished",
    ]);
    wait_until("the holder", || queue(&etcd, "revoked").len() == 1);
    etcd.ctl(&["lease", "revoke", &holder_lease(&etcd, "revoked")]);
    let out = holder.finish(began);
    // Without --kill-on-loss the command runs to its end, and the loss is told.
    assert!(out.stdout.contains("finished"), "{}", out.stdout);
    assert_eq!(out.code, LOST, "{}", out.stderr);
    assert!(
        out.stderr.contains("the etcd lock was lost"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("goes on running"), "{}", out.stderr);
}

#[test]
fn a_lease_revoked_after_the_last_renewal_is_found_when_the_command_ends() {
    let etcd = Etcd::start();
    let began = Instant::now();
    // The default TTL (10 s): the command ends before the first renewal (3 s).
    let holder = spawn(&[&at(&etcd), "late", "sh", "-c", "sleep 1.5; echo finished"]);
    wait_until("the holder", || queue(&etcd, "late").len() == 1);
    etcd.ctl(&["lease", "revoke", &holder_lease(&etcd, "late")]);
    let out = holder.finish(began);
    assert!(out.elapsed < Duration::from_secs(3), "{:?}", out.elapsed);
    assert!(out.stdout.contains("finished"), "{}", out.stdout);
    assert_eq!(out.code, LOST, "{}", out.stderr);
    assert!(out.stderr.contains("its key is gone"), "{}", out.stderr);
    // A lock held to the end is not reported lost.
    let out = run(&[&at(&etcd), "late", "sleep", "0.5"]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
}

#[test]
fn kill_on_loss_kills_a_command_that_ignores_sigterm_and_what_it_started() {
    let etcd = Etcd::start();
    let dir = TempDir::new("cli-etcd-kill");
    let pidfile = dir.0.join("pid");
    let pidfile = pidfile.to_str().unwrap();
    // SIGTERM ignored by the shell and (inherited) by its sleep.
    let script = format!("trap '' TERM; sleep 60 & echo $! > {pidfile}; wait; wait");
    let began = Instant::now();
    let holder = spawn(&[
        &at(&etcd),
        "--kill-on-loss=0.5",
        "kill",
        "sh",
        "-c",
        &script,
    ]);
    wait_until("the command's sleep", || {
        std::fs::read_to_string(pidfile).is_ok_and(|p| p.ends_with('\n'))
    });
    let sleep: i64 = std::fs::read_to_string(pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let revoked = Instant::now();
    etcd.ctl(&["lease", "revoke", &holder_lease(&etcd, "kill")]);
    let out = holder.finish(began);
    let took = revoked.elapsed();
    assert_eq!(out.code, LOST, "{}", out.stderr);
    assert!(out.stderr.contains("SIGKILL"), "{}", out.stderr);
    assert!(!alive(sleep), "the command's sleep {sleep} survived");
    // Found within 0.3 TTL (10 s by default), killed 0.5 s after SIGTERM.
    eprintln!("--kill-on-loss=0.5: unilock ended {took:?} after the revoke");
    assert!(took < Duration::from_secs(6), "{took:?}");
}

#[test]
fn impossible_combinations_are_usage_errors() {
    for (args, says) in [
        (&["--etcd", "-s", "n", "true"][..], "exclusive only"),
        (&["-b", "etcd", "-s", "n", "true"], "exclusive only"),
        (&["--etcd", "--range", "0:1", "n", "true"], "byte ranges"),
        (&["--etcd", "--start", "5", "n", "true"], "byte ranges"),
        (
            &["--etcd", "--fair", "n", "true"],
            "first come, first served",
        ),
        (&["--etcd", "--unlink", "n", "true"], "--unlink"),
        (&["--etcd", "--fcntl", "n", "true"], "--fcntl"),
        (&["--fcntl", "--etcd", "n", "true"], "--fcntl"),
        (&["-b", "flock", "--etcd", "n", "true"], "--backend"),
        (&["-b", "etcd,flock", "n", "true"], "cannot be combined"),
        (&["--etcd", "9"], "descriptor"),
        (&["--etcd", "--fd", "3", "true"], "descriptor"),
        (&["--etcd", "-F", "n", "true"], "drop -F"),
        (&["--etcd", "-u", "n", "true"], "drop -u"),
        (&["--etcd", "--mode", "0644", "n", "true"], "--mode"),
        (&["--etcd", "--follow", "n", "true"], "--follow"),
        (
            &["--etcd", "--kill-on-loss", "--test", "n"],
            "--kill-on-loss",
        ),
        (&["--etcd-cacert", "ca.pem", "n", "true"], "add --etcd"),
        (&["--lease-ttl", "5", "n", "true"], "add --etcd"),
        (&["--kill-on-loss", "n", "true"], "add --etcd"),
        (
            &["--etcd", "--lease-ttl", "0", "n", "true"],
            "invalid lease TTL",
        ),
        (
            &["--etcd", "--kill-on-loss=x", "n", "true"],
            "invalid grace",
        ),
        (&["--etcd", "--etcd-user", ":pw", "n", "true"], "user name"),
        (&["--etcd=ftp://h:1", "n", "true"], "not a client URL"),
        (&["--etcd", "", "true"], "empty"),
    ] {
        let out = run(args);
        assert_eq!(out.code, 64, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    // A shared lock may be asked about (it is the same question).
    let out = run(&["--etcd=http://127.0.0.1:9", "-s", "--test", "n"]);
    assert_ne!(out.code, 64, "{}", out.stderr);
}

#[test]
fn an_endpoint_that_does_not_answer_fails_quickly_and_is_named() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let endpoint = format!("127.0.0.1:{port}");
    let dir = TempDir::new("cli-etcd-closed");
    let marker = dir.0.join("ran");
    let marker = marker.to_str().unwrap();
    let option = format!("--etcd=http://{endpoint}");
    for args in [
        &[option.as_str(), "n", "touch", marker][..],
        &[option.as_str(), "-n", "n", "touch", marker],
        &[
            option.as_str(),
            "-w",
            "3",
            "--verbose",
            "n",
            "touch",
            marker,
        ],
        &[option.as_str(), "--test", "n"],
        &[option.as_str(), "--list", "n"],
    ] {
        let out = run(args);
        assert_eq!(out.code, 65, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(&endpoint), "{args:?}: {}", out.stderr);
        assert!(
            out.elapsed < Duration::from_secs(3),
            "{args:?}: {:?}",
            out.elapsed
        );
        assert!(!Path::new(marker).exists(), "{args:?} ran the command");
    }
}

#[test]
fn tls_endpoints_with_a_ca_and_a_client_certificate() {
    let etcd = Etcd::start_tls();
    let (ca, cert, key) = (etcd.ca(), etcd.client_cert(), etcd.client_key());
    let tls = [
        "--etcd-cacert",
        ca.to_str().unwrap(),
        "--etcd-cert",
        cert.to_str().unwrap(),
        "--etcd-key",
        key.to_str().unwrap(),
    ];
    let endpoints = at(&etcd);
    assert!(endpoints.contains("https://"), "{endpoints}");
    let out = run(&[
        &[endpoints.as_str()][..],
        &tls,
        &["t", "sh", "-c", "echo $UNILOCK_FENCE"],
    ]
    .concat());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.trim().parse::<u64>().is_ok(), "{}", out.stdout);
    // The same files from etcdctl's variables.
    let mut c = unilock();
    c.env("ETCDCTL_CACERT", &ca)
        .env("ETCDCTL_CERT", &cert)
        .env("ETCDCTL_KEY", &key);
    assert_eq!(run_with(c, &[&endpoints, "t", "true"]).code, 0);
    // Without the CA, the server's certificate is not trusted: a clear failure.
    let out = run(&[&endpoints, "-n", "t", "true"]);
    assert_eq!(out.code, 65, "{}", out.stderr);
    assert!(
        out.stderr.contains("TLS") || out.stderr.contains("certificate"),
        "{}",
        out.stderr
    );
    // A CA file that does not exist: cannot open (66).
    let out = run(&[
        &endpoints,
        "--etcd-cacert",
        "/nonexistent/ca.pem",
        "t",
        "true",
    ]);
    assert_eq!(out.code, 66, "{}", out.stderr);
    assert!(out.stderr.contains("/nonexistent/ca.pem"), "{}", out.stderr);
}

#[test]
fn a_password_never_shows_in_messages_lists_or_the_command_line() {
    const SECRET: &str = "s3cret-Pw";
    let mut etcd = Etcd::start();
    etcd.add_user("alice", SECRET);
    etcd.enable_auth("root-pw");
    let user = format!("alice:{SECRET}");
    let mut outputs = Vec::new();
    // The command line as ps shows it while the lock is held.
    let out = run(&[
        &at(&etcd),
        "--verbose",
        "--etcd-user",
        &user,
        "auth",
        "sh",
        "-c",
        "tr '\\0' ' ' < /proc/$PPID/cmdline; echo",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("--etcd-user alice:xxx"),
        "{}",
        out.stdout
    );
    outputs.push(out);
    // A holder, and what others see of it.
    let holder = spawn(&[
        &at(&etcd),
        &format!("--etcd-user={user}"),
        "auth",
        "sleep",
        "30",
    ]);
    let mut c = unilock();
    c.env("UNILOCK_ETCD_PASSWORD", SECRET);
    wait_until("the holder", || {
        let mut c = unilock();
        c.env("UNILOCK_ETCD_PASSWORD", SECRET);
        run_with(c, &[&at(&etcd), "--etcd-user", "alice", "--test", "auth"]).code == 1
    });
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", holder.pid())).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(SECRET),
        "ps shows the password"
    );
    outputs.push(run_with(
        c,
        &[
            &at(&etcd),
            "--etcd-user",
            "alice",
            "-n",
            "--verbose",
            "auth",
            "true",
        ],
    ));
    for args in [
        &["--list"][..],
        &["--list", "--json"],
        &["--test", "--json"],
    ] {
        let mut c = unilock();
        c.env("UNILOCK_ETCD_PASSWORD", SECRET);
        let mut all = vec![at(&etcd), "--etcd-user".into(), "alice".into()];
        all.extend(args.iter().map(|a| a.to_string()));
        all.push("auth".into());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        outputs.push(run_with(c, &all));
    }
    // A wrong password: refused, and neither password is shown.
    let out = run(&[
        &at(&etcd),
        "--etcd-user",
        "alice:Wrong-Pw9",
        "-n",
        "auth",
        "true",
    ]);
    assert_eq!(out.code, 65, "{}", out.stderr);
    assert!(out.stderr.contains("alice"), "{}", out.stderr);
    assert!(!out.stderr.contains("Wrong-Pw9"), "{}", out.stderr);
    outputs.push(out);
    // No credentials at all: refused too.
    let out = run(&[&at(&etcd), "-n", "auth", "true"]);
    assert_eq!(out.code, 65, "{}", out.stderr);
    for o in &outputs {
        assert!(
            !o.stdout.contains(SECRET) && !o.stderr.contains(SECRET),
            "the password shows: {}{}",
            o.stdout,
            o.stderr
        );
    }
    assert!(
        outputs[1].stderr.contains("on host"),
        "{}",
        outputs[1].stderr
    );
    drop(holder);
}

#[test]
fn a_signal_while_waiting_ends_unilock_and_leaves_no_key_behind() {
    let etcd = Etcd::start();
    let _holder = hold(&etcd, "sig", "30");
    let waiter = spawn(&[&at(&etcd), "sig", "true"]);
    wait_until("the waiter's key", || queue(&etcd, "sig").len() == 2);
    send_signal(waiter.pid(), "TERM");
    let out = waiter.finish(Instant::now());
    assert_eq!(out.code, 128 + 15, "{}", out.stderr);
    assert_eq!(queue(&etcd, "sig").len(), 1, "the waiter's key is gone");
}
