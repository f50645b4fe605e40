//! The `unilock` command against util-linux flock(1): the same scenarios run through
//! both binaries must give the same exit codes, the same locking behaviour and, where
//! flock has one, the same message with the program name replaced. Then what flock
//! lacks: --test, --list, --verbose naming the holder, --range.
//!
//! Holders run with `-F` (no fork: the tool execs `sh`, which execs `sleep`), so one
//! process holds the lock and killing it releases the lock.

mod common;

use common::cli::{
    Outcome, assert_documented, lock_schema, locks, outcome, send_signal, wait_until,
};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const UNILOCK: &str = env!("CARGO_BIN_EXE_unilock");
const FLOCK: &str = "/usr/bin/flock";

/// The tools to compare: unilock, and flock(1) where it is installed.
fn tools() -> Vec<&'static str> {
    if Path::new(FLOCK).exists() {
        vec![FLOCK, UNILOCK]
    } else {
        eprintln!("{FLOCK} is missing: comparing nothing, testing unilock alone");
        vec![UNILOCK]
    }
}

fn short(tool: &str) -> &'static str {
    if tool == UNILOCK { "unilock" } else { "flock" }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("unilock-cli-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A file in the directory, created empty.
    fn file(&self, name: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, b"").unwrap();
        p.to_str().unwrap().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(tool: &str, args: &[&str]) -> Outcome {
    let began = Instant::now();
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    outcome(out, began.elapsed())
}

/// Exit code of `sh -c script` (for scripts that run the tools themselves).
fn sh(script: &str) -> Outcome {
    run("/bin/sh", &["-c", script])
}

/// A process that holds a lock taken by `tool` with `options`, until dropped.
struct Holder {
    child: Child,
}

impl Holder {
    fn start(tool: &str, options: &[&str], file: &str) -> Holder {
        Self::start_for(tool, options, file, "10")
    }

    /// Holds for `secs` (a sleep(1) argument), then exits and so releases.
    fn start_for(tool: &str, options: &[&str], file: &str, secs: &str) -> Holder {
        let script = format!("echo ready; exec sleep {secs}");
        let mut child = Command::new(tool)
            .arg("-F")
            .args(options)
            .args([file, "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        common::expect_ready(&mut child, &format!("{tool} {options:?}"));
        // "ready" comes just before the shell execs sleep(1): wait for the exec, so
        // that the holder's command name is settled.
        let comm = format!("/proc/{}/comm", child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() != "sleep") {
            assert!(
                Instant::now() < deadline,
                "{tool}: the command did not exec sleep"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Holder { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every (holder tool, contender tool) pair: each tool against itself and the other.
fn pairs() -> Vec<(&'static str, &'static str)> {
    let t = tools();
    t.iter()
        .flat_map(|&a| t.iter().map(move |&b| (a, b)))
        .collect()
}

#[test]
fn an_exclusive_lock_excludes_in_both_directions_between_flock_and_unilock() {
    let dir = TempDir::new("conflict");
    let file = dir.file("f");
    for (holder_tool, tool) in pairs() {
        let holder = Holder::start(holder_tool, &[], &file);
        for options in [
            &["-n"][..],
            &["--nb"],
            &["-w", "0"],
            &["-x", "-n"],
            &["-s", "-n"],
        ] {
            let mut args = options.to_vec();
            args.extend([file.as_str(), "true"]);
            let out = run(tool, &args);
            assert_eq!(
                out.code,
                1,
                "{} {args:?} while {} holds it: {}",
                short(tool),
                short(holder_tool),
                out.stderr
            );
            assert_eq!(
                out.stderr,
                "",
                "{} is quiet on conflict without --verbose",
                short(tool)
            );
        }
        drop(holder);
        assert_eq!(
            run(tool, &["-n", &file, "true"]).code,
            0,
            "{} after release",
            short(tool)
        );
    }
}

#[test]
fn shared_locks_coexist_and_exclude_exclusive_ones() {
    let dir = TempDir::new("shared");
    let file = dir.file("f");
    for (holder_tool, tool) in pairs() {
        let holder = Holder::start(holder_tool, &["-s"], &file);
        let who = format!("{} against a shared {}", short(tool), short(holder_tool));
        assert_eq!(run(tool, &["-s", "-n", &file, "true"]).code, 0, "{who}");
        assert_eq!(
            run(tool, &["--shared", "--nonblock", &file, "true"]).code,
            0,
            "{who}"
        );
        assert_eq!(run(tool, &["-x", "-n", &file, "true"]).code, 1, "{who}");
        assert_eq!(run(tool, &["-e", "-n", &file, "true"]).code, 1, "{who}");
        drop(holder);
        let holder = Holder::start(holder_tool, &["-x"], &file);
        assert_eq!(run(tool, &["-s", "-n", &file, "true"]).code, 1, "{who}");
        drop(holder);
    }
}

#[test]
fn a_timed_wait_gives_up_with_exit_1_after_the_timeout() {
    let dir = TempDir::new("timeout");
    let file = dir.file("f");
    for (holder_tool, tool) in pairs() {
        let _holder = Holder::start(holder_tool, &[], &file);
        let out = run(tool, &["-w", "0.2", &file, "true"]);
        assert_eq!(out.code, 1, "{}: {}", short(tool), out.stderr);
        assert!(
            out.elapsed >= Duration::from_millis(200) && out.elapsed < Duration::from_millis(1500),
            "{} -w 0.2 took {:?}",
            short(tool),
            out.elapsed
        );
    }
}

#[test]
fn a_wait_ends_when_the_holder_releases() {
    let dir = TempDir::new("handoff");
    let file = dir.file("f");
    for (holder_tool, tool) in pairs() {
        let _holder = Holder::start_for(holder_tool, &[], &file, "0.2");
        let out = run(tool, &["-w", "5", &file, "sh", "-c", "echo got it"]);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, "got it\n"),
            "{}",
            short(tool)
        );
        assert!(
            out.elapsed < Duration::from_secs(3),
            "{}: {:?}",
            short(tool),
            out.elapsed
        );
    }
}

#[test]
fn conflict_exit_code_replaces_1_for_conflicts_and_timeouts() {
    let dir = TempDir::new("econflict");
    let file = dir.file("f");
    for (holder_tool, tool) in pairs() {
        let _holder = Holder::start(holder_tool, &[], &file);
        assert_eq!(
            run(tool, &["-E", "42", "-n", &file, "true"]).code,
            42,
            "{}",
            short(tool)
        );
        assert_eq!(
            run(tool, &["-E42", "-w", "0.1", &file, "true"]).code,
            42,
            "{}",
            short(tool)
        );
        assert_eq!(
            run(tool, &["--conflict-exit-code=0", "-n", &file, "false"]).code,
            0,
            "{}",
            short(tool)
        );
    }
}

#[test]
fn the_command_inherits_the_lock_descriptor_unless_close() {
    let dir = TempDir::new("close");
    let file = dir.file("f");
    let list_fds = "ls -l /proc/$$/fd";
    for tool in tools() {
        let inherited = run(tool, &[&file, "sh", "-c", list_fds]);
        assert!(
            inherited.stdout.contains(&file),
            "{}: {}",
            short(tool),
            inherited.stdout
        );
        let closed = run(tool, &["-o", &file, "sh", "-c", list_fds]);
        assert_eq!(closed.code, 0);
        assert!(
            !closed.stdout.contains(&file),
            "{} -o: {}",
            short(tool),
            closed.stdout
        );

        // A background grandchild keeps an inherited lock after the tool exits...
        let out = run(tool, &[&file, "sh", "-c", "sleep 0.4 >/dev/null 2>&1 &"]);
        assert_eq!(out.code, 0);
        assert_eq!(
            run(FLOCK_OR_SELF(), &["-n", &file, "true"]).code,
            1,
            "{}",
            short(tool)
        );
        // ...but not with -o: the lock ended with the tool.
        let out = run(
            tool,
            &["-o", &file, "sh", "-c", "sleep 0.4 >/dev/null 2>&1 &"],
        );
        assert_eq!(out.code, 0);
        assert_eq!(
            run(FLOCK_OR_SELF(), &["-n", &file, "true"]).code,
            0,
            "{} -o",
            short(tool)
        );
        std::thread::sleep(Duration::from_millis(450));
    }
}

/// flock(1) when installed (the independent judge), else unilock.
#[allow(non_snake_case)]
fn FLOCK_OR_SELF() -> &'static str {
    tools()[0]
}

#[test]
fn the_descriptor_form_locks_the_shells_descriptor_until_unlock() {
    let dir = TempDir::new("fd");
    let file = dir.file("f");
    let judge = FLOCK_OR_SELF();
    for tool in tools() {
        // Locked through fd 9: the lock outlives the tool (it is the open file
        // description's), excludes others, and -u on the descriptor releases it.
        let script = format!(
            "exec 9>'{file}'
             {tool} -n 9 || exit 3
             {judge} -n '{file}' true && exit 4
             {tool} -n 9 || exit 5      # relocking one's own description succeeds
             {tool} -u 9 || exit 6
             {judge} -n '{file}' true || exit 7
             {tool} -s 9 || exit 8
             {judge} -s -n '{file}' true || exit 9
             {judge} -x -n '{file}' true && exit 10
             exit 0"
        );
        let out = sh(&script);
        assert_eq!(out.code, 0, "{}: {}", short(tool), out.stderr);
        // A held lock on the descriptor: conflict exit.
        let _holder = Holder::start(judge, &[], &file);
        let out = sh(&format!("exec 9<'{file}'; {tool} -n 9"));
        assert_eq!(out.code, 1, "{}: {}", short(tool), out.stderr);
    }
}

#[test]
fn unlock_of_a_file_runs_the_command() {
    let dir = TempDir::new("unlock");
    let file = dir.file("f");
    for tool in tools() {
        let out = run(tool, &["-u", &file, "sh", "-c", "exit 5"]);
        assert_eq!(out.code, 5, "{}", short(tool));
    }
}

#[test]
fn directories_can_be_locked_and_exclude_each_other() {
    let dir = TempDir::new("dir");
    let locked = dir.path("d");
    std::fs::create_dir(&locked).unwrap();
    for (holder_tool, tool) in pairs() {
        assert_eq!(
            run(tool, &["-n", &locked, "true"]).code,
            0,
            "{}",
            short(tool)
        );
        let _holder = Holder::start(holder_tool, &[], &locked);
        assert_eq!(
            run(tool, &["-n", &locked, "true"]).code,
            1,
            "{}",
            short(tool)
        );
    }
}

#[test]
fn read_only_files_can_be_locked_both_ways() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("ro");
    let file = dir.file("ro");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
    for (holder_tool, tool) in pairs() {
        for mode in ["-s", "-x"] {
            assert_eq!(
                run(tool, &[mode, "-n", &file, "true"]).code,
                0,
                "{} {mode}",
                short(tool)
            );
        }
        let _holder = Holder::start(holder_tool, &[], &file);
        assert_eq!(
            run(tool, &["-s", "-n", &file, "true"]).code,
            1,
            "{}",
            short(tool)
        );
    }
}

#[test]
fn missing_files_are_created() {
    let dir = TempDir::new("create");
    for tool in tools() {
        let file = dir.path(short(tool));
        assert_eq!(run(tool, &[&file, "true"]).code, 0);
        assert!(Path::new(&file).exists(), "{} creates {file}", short(tool));
    }
    // unilock: 0600 unless --mode says otherwise (flock(1): 0666 minus the umask).
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path("unilock")), 0o600);
    let wide = dir.path("wide");
    assert_eq!(run(UNILOCK, &["--mode", "0640", &wide, "true"]).code, 0);
    assert_eq!(mode(&wide) & 0o640, mode(&wide));
    assert_ne!(mode(&wide) & 0o040, 0, "--mode 0640 under the usual umask");
}

#[test]
fn the_commands_status_and_death_by_signal_are_passed_on() {
    let dir = TempDir::new("status");
    let file = dir.file("f");
    for tool in tools() {
        assert_eq!(
            run(tool, &[&file, "sh", "-c", "exit 7"]).code,
            7,
            "{}",
            short(tool)
        );
        assert_eq!(
            run(tool, &[&file, "-c", "exit 9"]).code,
            9,
            "{}",
            short(tool)
        );
        assert_eq!(
            run(tool, &[&file, "--command", "exit 3"]).code,
            3,
            "{}",
            short(tool)
        );
        assert_eq!(
            run(tool, &[&file, "sh", "-c", "kill -9 $$"]).code,
            137,
            "{}",
            short(tool)
        );
        assert_eq!(
            run(tool, &[&file, "sh", "-c", "kill -TERM $$"]).code,
            143,
            "{}",
            short(tool)
        );
        // Everything after the file is the command's, options included.
        let out = run(tool, &[&file, "echo", "-n", "-x", "--", "-s"]);
        assert_eq!(out.stdout, "-x -- -s", "{}", short(tool));
    }
}

#[test]
fn no_fork_execs_the_command_in_the_tools_own_process() {
    let dir = TempDir::new("nofork");
    let file = dir.file("f");
    for tool in tools() {
        let child = Command::new(tool)
            .args(["-F", &file, "sh", "-c", "echo $$; ls -l /proc/$$/fd"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.lines().next(),
            Some(pid.to_string().as_str()),
            "{}",
            short(tool)
        );
        assert!(
            text.contains(&file),
            "{} -F keeps the descriptor: {text}",
            short(tool)
        );
    }
}

#[test]
fn failures_use_flocks_exit_codes_and_messages_with_the_name_replaced() {
    let dir = TempDir::new("usage");
    let file = dir.file("f");
    let missing = dir.path("no/such/dir/f");
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["-n"],
        vec!["-k", &file, "true"],
        vec!["--bogus", &file, "true"],
        vec!["--c", &file, "true"],
        vec!["--shared=yes", &file, "true"],
        vec!["-w"],
        vec!["--timeout"],
        vec!["-w", "abc", &file, "true"],
        vec!["-E", "300", &file, "true"],
        vec!["-E", "x", &file, "true"],
        vec!["-c", "true", &file],
        vec![&file, "-c"],
        vec![&file, "-c", "a", "b"],
        vec!["-F", "-o", &file, "true"],
        vec!["not-a-number"],
        vec![&missing, "true"],
        vec!["--", "-1"],
        vec!["1000"],
        vec![&file, "no-such-command-here"],
    ];
    for args in cases {
        let mut seen = Vec::new();
        for tool in tools() {
            let out = run(tool, &args);
            // getopt's messages start with argv[0] as given, the others with its
            // basename.
            let text = out
                .stderr
                .replace(&format!("{tool}:"), "ARGV0:")
                .replace(&format!("{}:", short(tool)), "NAME:")
                .replace(&format!("'{} --help'", short(tool)), "'NAME --help'");
            seen.push((out.code, text));
        }
        if let [flock, unilock] = &seen[..] {
            assert_eq!(flock, unilock, "flock vs unilock for {args:?}");
        }
        let code = seen.last().unwrap().0;
        assert!([64, 65, 66, 69].contains(&code), "{args:?} exit {code}");
    }
}

#[test]
fn verbose_messages_match_flocks_and_add_the_holder() {
    let dir = TempDir::new("verbose");
    let file = dir.file("f");
    for tool in tools() {
        let out = run(tool, &["--verbose", &file, "true"]);
        let first = out.stdout.lines().next().unwrap_or("").to_string();
        let prefix = format!("{}: getting lock took 0.", short(tool));
        assert!(
            first.starts_with(&prefix),
            "{}: {}",
            short(tool),
            out.stdout
        );
        assert!(
            out.stdout
                .ends_with(&format!("{}: executing true\n", short(tool)))
        );
    }
    for holder_tool in tools() {
        let holder = Holder::start(holder_tool, &[], &file);
        let pid = holder.pid().to_string();
        for tool in tools() {
            let out = run(tool, &["--verbose", "-n", &file, "true"]);
            assert_eq!(out.code, 1);
            let mut lines = out.stderr.lines();
            assert_eq!(
                lines.next(),
                Some(format!("{}: failed to get lock", short(tool)).as_str())
            );
            let out = run(tool, &["--verbose", "-w", "0.1", &file, "true"]);
            assert_eq!(out.code, 1);
            assert!(
                out.stderr.contains(&format!(
                    "{}: timeout while waiting to get lock",
                    short(tool)
                )),
                "{}",
                out.stderr
            );
        }
        // unilock names the holder: while waiting, and when it gives up.
        let held =
            format!("unilock: pid {pid} (sleep) holds an exclusive FLOCK lock on the whole file");
        let out = run(UNILOCK, &["--verbose", "-n", &file, "true"]);
        assert!(out.stderr.contains(&held), "{}", out.stderr);
        let waiting = format!("waiting for the lock: pid {pid} (sleep)");
        let out = run(UNILOCK, &["--verbose", "-w", "0.1", &file, "true"]);
        assert!(out.stderr.contains(&waiting), "{}", out.stderr);
        assert!(out.stderr.ends_with(&format!("{held}\n")), "{}", out.stderr);
    }
    // When the holder goes away, the wait ends and says how long it took.
    let _holder = Holder::start_for(tools()[0], &["-s"], &file, "0.2");
    let out = run(UNILOCK, &["--verbose", &file, "true"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("waiting for the lock: pid "),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("holds a shared FLOCK lock"),
        "{}",
        out.stderr
    );
    let took: f64 = out.stdout.lines().next().unwrap()["unilock: getting lock took ".len()..]
        .trim_end_matches(" seconds")
        .parse()
        .unwrap();
    assert!(took > 0.05 && took < 3.0, "{}", out.stdout);
}

#[test]
fn test_says_whether_the_lock_is_free_and_who_holds_it() {
    let dir = TempDir::new("test");
    let file = dir.file("f");
    let out = run(UNILOCK, &["--test", &file]);
    assert_eq!((out.code, out.stdout.as_str()), (0, ""));
    assert!(locks(&run(UNILOCK, &["--test", "--json", &file]).stdout).is_empty());
    for holder_tool in tools() {
        let holder = Holder::start(holder_tool, &["-s"], &file);
        let pid = holder.pid().to_string();
        assert_eq!(
            run(UNILOCK, &["-s", "--test", &file]).code,
            0,
            "shared is free"
        );
        let out = run(UNILOCK, &["--test", &file]);
        assert_eq!(out.code, 1);
        let row = out
            .stdout
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>();
        assert_eq!(
            row[..8],
            ["sleep", &pid, "FLOCK", "READ", "0", "0", "0", &file],
            "{}",
            out.stdout
        );
        assert!(
            row[8].starts_with(&format!("{pid},sleep,")),
            "{}",
            out.stdout
        );
        assert_eq!(run(UNILOCK, &["-E", "3", "--test", &file]).code, 3);
        let out = run(UNILOCK, &["--test", "--json", &file]);
        let found = locks(&out.stdout);
        assert_eq!(found.len(), 1, "{}", out.stdout);
        assert_eq!(found[0]["command"], "sleep");
        assert_eq!(found[0]["pid"], holder.pid());
        assert_eq!(found[0]["type"], "FLOCK");
        assert_eq!(found[0]["mode"], "READ");
        assert_eq!(found[0]["end"], 0);
        assert_eq!(found[0]["path"], file.as_str());
        // An OFD test does not see a flock lock: the families do not conflict.
        assert_eq!(run(UNILOCK, &["--fcntl", "--test", &file]).code, 0);
    }
    // Nothing is created by --test.
    let missing = dir.path("missing");
    assert_eq!(run(UNILOCK, &["--test", &missing]).code, 66);
    assert!(!Path::new(&missing).exists());
}

#[test]
fn list_shows_every_lock_as_a_table_or_json() {
    let dir = TempDir::new("list");
    let file = dir.file("f");
    let out = run(UNILOCK, &["--list", &file]);
    assert_eq!(out.code, 0);
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["COMMAND PID TYPE SIZE MODE M START END PATH HOLDERS"]
    );
    assert!(locks(&run(UNILOCK, &["--list", "--json", &file]).stdout).is_empty());
    let a = Holder::start(tools()[0], &["-s"], &file);
    let b = Holder::start(UNILOCK, &["-s"], &file);
    let c = Holder::start(UNILOCK, &["--range", "100:50"], &file);
    let out = run(UNILOCK, &["--list", &file]);
    assert_eq!(out.code, 0);
    let rows: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    for (holder, kind, mode, start, end) in [
        (&a, "FLOCK", "READ", "0", "0"),
        (&b, "FLOCK", "READ", "0", "0"),
        (&c, "OFDLCK", "WRITE", "100", "149"),
    ] {
        let pid = holder.pid().to_string();
        let row = [
            "sleep",
            pid.as_str(),
            kind,
            mode,
            "0",
            start,
            end,
            file.as_str(),
        ];
        let holders = format!("{pid},sleep,");
        assert!(
            rows.iter()
                .any(|r| r[..8] == row[..] && r[8].starts_with(&holders)),
            "{row:?} in\n{}",
            out.stdout
        );
    }
    let json = run(UNILOCK, &["--list", "--json", &file]).stdout;
    let found = locks(&json);
    assert_eq!(found.len(), 3, "{json}");
    assert!(found.iter().all(|l| l["command"] == "sleep"), "{json}");
    let ofd = found
        .iter()
        .find(|l| l["type"] == "OFDLCK")
        .unwrap_or_else(|| panic!("no OFD lock in {json}"));
    assert_eq!(
        (
            &ofd["pid"],
            &ofd["mode"],
            &ofd["start"],
            &ofd["end"],
            &ofd["path"]
        ),
        (
            &serde_json::json!(c.pid()),
            &serde_json::json!("WRITE"),
            &serde_json::json!(100),
            &serde_json::json!(149),
            &serde_json::json!(file)
        ),
        "{json}"
    );
}

#[test]
fn ranges_exclude_only_overlapping_bytes() {
    let dir = TempDir::new("range");
    let file = dir.file("f");
    let _peer = Holder::start(UNILOCK, &["--range", "0:10"], &file);
    assert_eq!(
        run(UNILOCK, &["-n", "--range", "10:10", &file, "true"]).code,
        0
    );
    assert_eq!(
        run(UNILOCK, &["-n", "--start", "20", &file, "true"]).code,
        0
    );
    assert_eq!(
        run(UNILOCK, &["-n", "--range", "5:10", &file, "true"]).code,
        1
    );
    assert_eq!(run(UNILOCK, &["-n", "--range", "0", &file, "true"]).code, 1);
    assert_eq!(
        run(UNILOCK, &["-n", "-s", "--range", "9:1", &file, "true"]).code,
        1
    );
    // POSIX and OFD locks conflict; flock locks are another family.
    assert_eq!(
        run(
            UNILOCK,
            &["-n", "-b", "posix", "--range", "3:1", &file, "true"]
        )
        .code,
        1
    );
    assert_eq!(run(UNILOCK, &["-n", &file, "true"]).code, 0);
    for tool in tools() {
        assert_eq!(run(tool, &["-n", &file, "true"]).code, 0, "{}", short(tool));
    }
    let out = run(
        UNILOCK,
        &["--verbose", "-n", "--range", "5:1", &file, "true"],
    );
    assert!(
        out.stderr
            .contains("holds an exclusive OFD lock on bytes 0-9"),
        "{}",
        out.stderr
    );
}

#[test]
fn unilock_usage_errors_exit_64() {
    let dir = TempDir::new("usage64");
    let file = dir.file("f");
    for args in [
        &["-b", "nfs", &file, "true"][..],
        &["-b", "ofd,posix", &file, "true"],
        &["-b", "flock", "--range", "0:1", &file, "true"],
        &["--range", "x", &file, "true"],
        &["--mode", "999", &file, "true"],
        &["--stale", "5", &file, "true"],
        &["--json", &file, "true"],
        &["--test"],
        &["--list", &file, "ls"],
        &["-u", "--test", &file],
        &["-w", "-1", &file, "true"],
        &["-b", "posix", "9"],
        // Impossible combinations.
        &["-s", "-b", "dotlock", &file, "true"],
        &["-b", "dotlock", "9"],
        &["-b", "dotlock", "--fd", "9", "true"],
        &["-b", "posix", "--fd", "9", "true"],
        &["--unlink", "9"],
        &["--test", "--list", &file],
        &["--list", "--test", &file],
        &["--fair", "-b", "dotlock", &file, "true"],
        &["--unlink", "-b", "flock,ofd", &file, "true"],
        &["--unlink", "-b", "dotlock", &file, "true"],
        &["--output", "PID", &file, "true"],
        &["--list", "--output", "PID,NOPE", &file],
        &["--list", "--raw", "--json", &file],
        &["--fd", "x", "true"],
        &["--fd", "9", "--list", &file],
    ] {
        let out = run(UNILOCK, args);
        assert_eq!(out.code, 64, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.starts_with("unilock: "),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn dotlock_makes_the_lock_file_for_the_command_and_a_held_one_fails_n() {
    let dir = TempDir::new("cli-dotlock");
    let lock = dir.path("app.lock");
    let check = format!("head -n1 '{lock}'");
    let out = run(UNILOCK, &["-b", "dotlock", &lock, "sh", "-c", &check]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The lock file names the unilock process, the parent of the command.
    assert!(out.stdout.trim().parse::<u32>().is_ok(), "{}", out.stdout);
    assert!(!Path::new(&lock).exists(), "the lock file was left");
    std::fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
    let out = run(UNILOCK, &["-b", "dotlock", "-n", &lock, "true"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let out = run(UNILOCK, &["-b", "dotlock", "-w", "0.1", &lock, "true"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    // A mailbox: the set makes mbox.lock beside it.
    let mbox = dir.file("mbox");
    let check = format!("test -e '{mbox}.lock'");
    let out = run(UNILOCK, &["-b", "dotlock,ofd", &mbox, "sh", "-c", &check]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!Path::new(&format!("{mbox}.lock")).exists());
}

/// Places in line in the fair queue of FLOCK handles (at offset 2^62 + 2^60 + 1 and
/// above, src/fair.rs), seen from a descriptor of this process with `F_OFD_GETLK`.
fn flock_queue_length(file: &str) -> usize {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let (first, end): (u64, u64) = ((1 << 62) + (1 << 60) + 1, (1 << 62) + (2 << 60));
    let mut from = first;
    let mut count = 0;
    while from < end {
        // SAFETY: struct flock is plain data; all-zero bytes are valid.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = from as i64;
        fl.l_len = (end - from) as i64;
        // SAFETY: F_OFD_GETLK on an open descriptor with a valid struct flock.
        assert_eq!(
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) },
            0
        );
        if fl.l_type == libc::F_UNLCK as i16 {
            break;
        }
        count += 1;
        from = fl.l_start as u64 + fl.l_len as u64;
    }
    count
}

/// `--fair` waiters run their commands in the order they came, behind a holder that
/// does not use the flag (flock(1) where installed: the default backend excludes it).
#[test]
fn fair_waiters_run_in_the_order_they_came() {
    let dir = TempDir::new("cli-fair");
    let file = dir.file("f");
    let log = dir.path("log");
    let holder = Holder::start(tools()[0], &[], &file);
    let mut waiters = Vec::new();
    for (i, name) in ["first", "second", "third"].iter().enumerate() {
        let script = format!("echo {name} >> '{log}'");
        let child = Command::new(UNILOCK)
            .args(["--fair", "-w", "10", &file, "sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        waiters.push(child);
        let start = Instant::now();
        while flock_queue_length(&file) != i + 1 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{name} is not in line"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop(holder);
    for mut w in waiters {
        assert!(w.wait().unwrap().success());
    }
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "first\nsecond\nthird\n"
    );
    assert_eq!(flock_queue_length(&file), 0);
}

#[test]
fn unlink_deletes_the_lock_file_after_the_command() {
    let dir = TempDir::new("cli-unlink");
    for backend in ["flock", "ofd", "posix"] {
        let file = dir.path(&format!("f-{backend}"));
        let check = format!("test -e '{file}'");
        let out = run(
            UNILOCK,
            &["--unlink", "-b", backend, &file, "sh", "-c", &check],
        );
        assert_eq!(out.code, 0, "{backend}: {}", out.stderr);
        assert!(
            !Path::new(&file).exists(),
            "{backend}: the lock file was left"
        );
    }
}

#[test]
fn safety_differences_from_flock_are_explained() {
    let dir = TempDir::new("safety");
    let file = dir.file("f");
    let link = dir.path("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let out = run(UNILOCK, &["-n", &link, "true"]);
    assert_eq!(out.code, 66);
    assert!(out.stderr.contains("--follow"), "{}", out.stderr);
    assert_eq!(run(UNILOCK, &["--follow", "-n", &link, "true"]).code, 0);
    let fifo = dir.path("fifo");
    assert!(sh(&format!("mkfifo '{fifo}'")).code == 0);
    let out = run(UNILOCK, &["-n", &fifo, "true"]);
    assert_eq!(out.code, 66);
    assert!(out.stderr.contains("FIFO"), "{}", out.stderr);
}

#[test]
fn help_and_version() {
    let out = run(UNILOCK, &["-h"]);
    assert_eq!(out.code, 0);
    for option in [
        "--shared",
        "--exclusive",
        "--unlock",
        "--nonblock",
        "--timeout",
        "--conflict-exit-code",
        "--close",
        "--command",
        "--no-fork",
        "--verbose",
        "--backend",
        "--fcntl",
        "--range",
        "--fair",
        "--unlink",
        "--stale",
        "--mode",
        "--follow",
        "--test",
        "--list",
        "--json",
        "--fd",
        "--output",
        "--noheadings",
        "--raw",
        "--bytes",
        "--help",
        "--version",
    ] {
        assert!(out.stdout.contains(option), "-h lacks {option}");
    }
    let out = run(UNILOCK, &["--version"]);
    assert_eq!(
        (out.code, out.stdout),
        (
            0,
            format!("unilock from unilock {}\n", env!("CARGO_PKG_VERSION"))
        )
    );
}

/// The backends a signal sent to `unilock` must not take the lock from: POSIX locks
/// and DOTLOCK lock files are `unilock`'s own, flock and OFD locks the command's too.
const SIGNAL_BACKENDS: [&str; 4] = ["posix", "dotlock", "flock", "ofd"];

/// How `child` ended, waiting up to 10 seconds for it.
fn ending(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let mut status = None;
    wait_until(&format!("{what} to exit"), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

/// True when another process holds `backend`'s lock on `file`: `unilock -n` fails
/// with the conflict code.
fn held_elsewhere(backend: &str, file: &str) -> bool {
    let out = run(UNILOCK, &["-n", "-b", backend, file, "true"]);
    assert!(
        out.code == 0 || out.code == 1,
        "{backend}: unilock -n: {}",
        out.stderr
    );
    out.code == 1
}

/// True once `pid` blocks `signal` (the SigBlk mask of /proc/PID/status): `unilock`
/// has set up its handling of the signals that would end it.
fn blocks(pid: u32, signal: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

/// A SIGTERM sent to `unilock` alone while its command runs reaches the command, and
/// `unilock` keeps the lock until the command has ended: here the command catches the
/// signal, keeps running until told to stop, and exits 5, which `unilock` passes on.
#[test]
fn a_signal_to_unilock_goes_to_the_command_and_the_lock_is_kept_until_it_ends() {
    use std::os::unix::process::ExitStatusExt;
    let dir = TempDir::new("sig-forward");
    for backend in SIGNAL_BACKENDS {
        let file = dir.path(&format!("lock-{backend}"));
        let marker = dir.path(&format!("got-{backend}"));
        let release = dir.path(&format!("release-{backend}"));
        // Every loop gives up after about ten seconds, so that a command left behind
        // by a failure does not run forever.
        let script = format!(
            "trap 'echo TERM > {marker}; n=0; until [ -e {release} ] || [ $n = 1000 ]; do \
             sleep 0.01; n=$((n+1)); done; exit 5' TERM; echo ready; n=0; \
             while [ $n != 1000 ]; do sleep 0.01; n=$((n+1)); done"
        );
        let mut child = Command::new(UNILOCK)
            .args(["-b", backend, &file, "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        common::expect_ready(&mut child, backend);
        assert!(held_elsewhere(backend, &file), "{backend}: not held at all");

        send_signal(child.id(), "TERM");
        wait_until(&format!("{backend}: the command to get SIGTERM"), || {
            Path::new(&marker).exists()
        });
        assert!(
            held_elsewhere(backend, &file),
            "{backend}: the lock was freed while the command runs"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{backend}: unilock exited before its command"
        );

        std::fs::write(&release, b"").unwrap();
        let status = ending(&mut child, backend);
        assert_eq!(
            (status.code(), status.signal()),
            (Some(5), None),
            "{backend}: the command's own status after it caught the signal"
        );
        assert!(!held_elsewhere(backend, &file), "{backend}: still held");
    }
}

/// A command that dies of the SIGTERM sent to `unilock` alone ends it: `unilock`
/// releases the lock and then dies of SIGTERM itself, as flock(1) would have (a shell
/// sees 143), instead of leaving the command running.
#[test]
fn a_command_killed_by_the_forwarded_signal_ends_unilock_by_that_signal() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let dir = TempDir::new("sig-kill");
    for backend in SIGNAL_BACKENDS {
        let file = dir.path(&format!("lock-{backend}"));
        let mut child = Command::new(UNILOCK)
            .args(["-b", backend, &file, "sh", "-c", "echo $$; exec sleep 30"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let command: u32 = line.trim().parse().unwrap();
        let comm = format!("/proc/{command}/comm");
        wait_until(&format!("{backend}: the command to exec sleep"), || {
            std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep")
        });

        let began = Instant::now();
        send_signal(child.id(), "TERM");
        let status = ending(&mut child, backend);
        assert_eq!(
            (status.code(), status.signal()),
            (None, Some(libc::SIGTERM)),
            "{backend}"
        );
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "{backend}: unilock waited for sleep 30 to end by itself"
        );
        assert!(
            !Path::new(&format!("/proc/{command}")).exists(),
            "{backend}: the command outlived unilock"
        );
        assert!(!held_elsewhere(backend, &file), "{backend}: still held");
    }
}

/// SIGTERM or SIGINT while `unilock` waits for the lock ends it at once, by that
/// signal, without running the command and without taking or leaving anything.
#[test]
fn a_signal_while_waiting_for_the_lock_ends_unilock_holding_nothing() {
    use std::os::unix::process::ExitStatusExt;
    for backend in SIGNAL_BACKENDS {
        for (signal, number) in [("TERM", libc::SIGTERM), ("INT", libc::SIGINT)] {
            let dir = TempDir::new(&format!("sig-wait-{backend}-{signal}"));
            let file = dir.path("lock");
            let marker = dir.path("ran");
            let holder = Holder::start(UNILOCK, &["-b", backend], &file);
            let mut waiter = Command::new(UNILOCK)
                .args([
                    "-b",
                    backend,
                    &file,
                    "sh",
                    "-c",
                    &format!("echo > {marker}"),
                ])
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            wait_until(&format!("{backend}: unilock to block {signal}"), || {
                blocks(waiter.id(), number)
            });
            let began = Instant::now();
            send_signal(waiter.id(), signal);
            let status = ending(&mut waiter, backend);
            assert_eq!(
                (status.code(), status.signal()),
                (None, Some(number)),
                "{backend} {signal}"
            );
            assert!(
                began.elapsed() < Duration::from_secs(2),
                "{backend} {signal}: took {:?}",
                began.elapsed()
            );
            assert!(!Path::new(&marker).exists(), "{backend}: the command ran");
            assert!(held_elsewhere(backend, &file), "{backend}: holder lost it");
            drop(holder);
            assert!(!held_elsewhere(backend, &file), "{backend}: left held");
            let mut left: Vec<String> = std::fs::read_dir(&dir.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name != "lock")
                .collect();
            left.sort();
            assert!(left.is_empty(), "{backend} {signal}: files left: {left:?}");
        }
    }
}

/// The command's exit reaches `unilock` however late it comes: the signal watcher that
/// runs while `unilock` waits for the lock blocks SIGCHLD, as the main thread does once
/// it forks the command, so that the SIGCHLD of the command's exit can only be read
/// from the signalfd. A thread
/// that did not block it could take the signal, whose default action discards it, and
/// `unilock` would wait for its command forever.
#[test]
fn the_signal_watcher_of_a_waiting_unilock_blocks_sigchld() {
    for backend in SIGNAL_BACKENDS {
        let dir = TempDir::new(&format!("sigchld-{backend}"));
        let file = dir.path("lock");
        let holder = Holder::start(UNILOCK, &["-b", backend], &file);
        let mut waiter = Command::new(UNILOCK)
            .args(["-b", backend, &file, "true"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = waiter.id();
        let threads = || -> Vec<String> {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| {
                    d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let name = |tid: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default()
        };
        wait_until(&format!("{backend}: the signal watcher runs"), || {
            threads().iter().any(|t| name(t).trim() == "signals")
        });
        // The main thread blocks SIGCHLD before it forks the command; the watcher,
        // started before that, must block it from its start.
        for tid in threads().iter().filter(|t| name(t).trim() == "signals") {
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                .unwrap_or_default();
            let blocked = status
                .lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok());
            if let Some(mask) = blocked {
                assert_ne!(
                    mask & (1 << (libc::SIGCHLD - 1)),
                    0,
                    "{backend}: the signal watcher {tid} does not block SIGCHLD"
                );
            }
        }
        drop(holder);
        let status = ending(&mut waiter, backend);
        assert_eq!(status.code(), Some(0), "{backend}");
    }
}

/// A signal ignored when `unilock` starts (SIGINT in a background job of a script)
/// stays ignored while it waits, and the command starts with no signal blocked.
#[test]
fn ignored_signals_stay_ignored_and_the_command_starts_with_none_blocked() {
    use std::os::unix::process::ExitStatusExt;
    let dir = TempDir::new("sig-ignored");
    let file = dir.file("f");
    let holder = Holder::start(UNILOCK, &[], &file);
    let mut waiter = Command::new("/bin/sh")
        .args(["-c", &format!("trap '' INT; exec {UNILOCK} {file} true")])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("unilock to block SIGTERM", || {
        blocks(waiter.id(), libc::SIGTERM)
    });
    // SIGINT is ignored, so only SIGTERM ends the wait.
    send_signal(waiter.id(), "INT");
    send_signal(waiter.id(), "TERM");
    let status = ending(&mut waiter, "the waiter");
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    drop(holder);

    // The command's own masks (grep reads its own status).
    let show_mask = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"];
    for options in [&[][..], &["-F"], &["-b", "posix"]] {
        let mut args = options.to_vec();
        args.push(file.as_str());
        args.extend(show_mask);
        let out = run(UNILOCK, &args);
        assert_eq!(out.code, 0, "{options:?}: {}", out.stderr);
        assert!(
            out.stdout.contains("SigBlk:\t0000000000000000\n"),
            "{options:?}: {}",
            out.stdout
        );
        let ignored = sh(&format!(
            "trap '' INT; exec {UNILOCK} {} {file} grep -E '^SigIgn' /proc/self/status",
            options.join(" ")
        ));
        let mask = ignored
            .stdout
            .strip_prefix("SigIgn:\t")
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap_or_else(|| panic!("{options:?}: {}", ignored.stdout));
        assert_ne!(
            mask & (1 << (libc::SIGINT - 1)),
            0,
            "{options:?}: SIGINT is ignored"
        );
    }
}

/// `( unilock 9; unilock --test f; unilock --list f ) 9>f`: the lock belongs to the
/// subshell's descriptor, which the `unilock 9` that took it (gone) and the listing
/// `unilock` (which inherited it) shared. Both reports name the subshell, the real
/// holder, with its descriptor 9, and never a `unilock` process.
#[test]
fn the_descriptor_form_names_the_shell_that_holds_the_descriptor() {
    let dir = TempDir::new("fd-holder");
    let file = dir.path("s.lock");
    let script = format!(
        "( '{UNILOCK}' 9; sh -c 'echo subshell=$PPID'; \
           '{UNILOCK}' --test '{file}'; echo test=$?; \
           '{UNILOCK}' --list --json '{file}'; \
           '{UNILOCK}' --list --noheadings --output PID,COMMAND,HOLDERS '{file}'; echo end \
         ) 9>'{file}'"
    );
    let out = sh(&script);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let shell: i64 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("subshell="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{}", out.stdout));
    let comm = "sh";
    // --test: conflict, the subshell named in the table.
    assert!(out.stdout.contains("test=1"), "{}", out.stdout);
    let test_row = out
        .stdout
        .lines()
        .find(|l| l.starts_with(comm) && l.contains("FLOCK"))
        .unwrap_or_else(|| panic!("no --test row in {}", out.stdout));
    assert_eq!(
        test_row.split_whitespace().nth(1),
        Some(shell.to_string().as_str()),
        "{}",
        out.stdout
    );
    // --list --json: the subshell as PID and as the one holder, through descriptor 9.
    let start = out.stdout.find('{').unwrap();
    let end = out.stdout.rfind('}').unwrap();
    let found = locks(&out.stdout[start..=end]);
    assert_eq!(found.len(), 1, "{}", out.stdout);
    assert_eq!(found[0]["pid"], shell, "{}", out.stdout);
    assert_eq!(found[0]["command"], comm, "{}", out.stdout);
    assert_eq!(
        found[0]["holders"],
        serde_json::json!([format!("{shell},{comm},9")]),
        "{}",
        out.stdout
    );
    // The table: the same, without a header.
    let last = out.stdout.lines().rev().nth(1).unwrap();
    assert_eq!(
        last.split_whitespace().collect::<Vec<_>>(),
        [
            shell.to_string(),
            comm.to_string(),
            format!("{shell},{comm},9")
        ],
        "{}",
        out.stdout
    );
}

/// flock(1) locks any descriptor it is given, a character device or a pipe too (the
/// descriptor is open already: only opening such a file may block); unilock does the
/// same, and still refuses to open a FIFO by path.
#[test]
fn descriptors_of_devices_and_pipes_are_locked_as_flock_locks_them() {
    for tool in tools() {
        for script in [
            format!("( '{tool}' 9 ) 9>/dev/null"),
            format!("( '{tool}' -s 9 ) 9</dev/null"),
            format!("echo x | '{tool}' 0"),
            format!("( '{tool}' --fcntl 9 ) 9>/dev/null"),
        ] {
            if tool != UNILOCK && script.contains("--fcntl") && !flock_has_fcntl() {
                continue;
            }
            let out = sh(&script);
            assert_eq!(out.code, 0, "{script}: {}", out.stderr);
        }
    }
    let dir = TempDir::new("fifo-path");
    let fifo = dir.path("fifo");
    assert_eq!(sh(&format!("mkfifo '{fifo}'")).code, 0);
    let out = run(UNILOCK, &["-n", &fifo, "true"]);
    assert_eq!(out.code, 66, "{}", out.stderr);
}

/// Whether the installed flock(1) has `--fcntl` (util-linux 2.40 and later).
fn flock_has_fcntl() -> bool {
    run(FLOCK, &["--help"]).stdout.contains("--fcntl")
}

/// `--fd N COMMAND`: the descriptor's open file description is locked for the
/// command, which gets the descriptor unless `--close`; the lock stays with the
/// caller's descriptor until `-u --fd N` (or its close).
#[test]
fn fd_option_locks_a_descriptor_for_a_command_and_close_keeps_it_from_the_command() {
    let dir = TempDir::new("fd-option");
    let file = dir.file("f");
    let script = format!(
        "( '{UNILOCK}' --fd 9 sh -c 'test -e /proc/self/fd/9 && echo command-has-9'; \
           echo run=$?; \
           '{UNILOCK}' -n '{file}' true; echo other=$?; \
           '{UNILOCK}' --close --fd 9 -c 'test -e /proc/self/fd/9 || echo closed-9'; \
           '{UNILOCK}' -u --fd 9 true; \
           '{UNILOCK}' -n '{file}' true; echo after-unlock=$? \
         ) 9>'{file}'"
    );
    let out = sh(&script);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        [
            "command-has-9",
            "run=0",
            "other=1",
            "closed-9",
            "after-unlock=0"
        ],
        "{}",
        out.stderr
    );
    // A busy descriptor: the conflict code, the command not run.
    let _holder = Holder::start(UNILOCK, &[], &file);
    let out = sh(&format!(
        "( '{UNILOCK}' -n -E 7 --fd 9 echo ran ) 9<'{file}'"
    ));
    assert_eq!((out.code, out.stdout.as_str()), (7, ""), "{}", out.stderr);
}

/// `--list FILE` shows the DOTLOCK lock file FILE.lock and its owner record (pid,
/// host, start time, and why it is stale); `--verbose` says when a lock call removes
/// a stale lock file, and why.
#[test]
fn list_shows_dotlock_lock_files_and_verbose_says_when_one_is_broken() {
    let dir = TempDir::new("list-dotlock");
    let file = dir.file("mbox");
    let lock_file = format!("{file}.lock");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();
    // A lock file of a process of this host that is gone: stale.
    let gone = 999_999_999;
    std::fs::write(&lock_file, format!("{gone}\nstart=42\nhost={host}\n")).unwrap();
    let out = run(UNILOCK, &["--list", "--json", &file]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let found = locks(&out.stdout);
    assert_eq!(found.len(), 1, "{}", out.stdout);
    let l = &found[0];
    assert_eq!(
        (
            &l["type"],
            &l["pid"],
            &l["path"],
            &l["host"],
            &l["starttime"]
        ),
        (
            &serde_json::json!("DOTLOCK"),
            &serde_json::json!(gone),
            &serde_json::json!(lock_file),
            &serde_json::json!(host),
            &serde_json::json!(42)
        ),
        "{}",
        out.stdout
    );
    assert!(
        l["stale"].as_str().is_some_and(|s| s.contains("is gone")),
        "{}",
        out.stdout
    );
    assert_eq!(l["holders"], serde_json::json!([]), "{}", out.stdout);
    let table = run(UNILOCK, &["--list", &file]).stdout;
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .ends_with("HOST STARTTIME STALE"),
        "{table}"
    );
    // Taking the set breaks it, and says so.
    let out = run(
        UNILOCK,
        &["--verbose", "-b", "dotlock,flock", &file, "true"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "unilock: removed the stale lock file {lock_file} of pid {gone} (host {host}): \
             its owner, process {gone}, is gone"
        )),
        "{}",
        out.stderr
    );
    // A live lock file: its owner (the unilock process that made it) as PID and holder.
    let script = format!("'{UNILOCK}' --list --json '{file}'; echo owner=$PPID");
    let out = run(UNILOCK, &["-b", "dotlock", &lock_file, "sh", "-c", &script]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let owner: i64 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("owner="))
        .unwrap()
        .parse()
        .unwrap();
    let json = &out.stdout[..out.stdout.rfind('}').unwrap() + 1];
    let found = locks(json);
    assert_eq!(found.len(), 1, "{json}");
    assert_eq!(found[0]["pid"], owner, "{json}");
    assert_eq!(found[0]["stale"], serde_json::Value::Null, "{json}");
    assert_eq!(
        found[0]["holders"],
        serde_json::json!([format!("{owner},unilock,-1")]),
        "{json}"
    );
    // Without --verbose nothing is said about a break.
    std::fs::write(&lock_file, format!("{gone}\nhost={host}\n")).unwrap();
    let out = run(UNILOCK, &["-b", "dotlock", &lock_file, "true"]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
}

/// The output options of `--list`, as lslocks has them.
#[test]
fn list_output_columns_noheadings_raw_and_bytes() {
    let dir = TempDir::new("list-output");
    let file = dir.file("f");
    std::fs::write(&file, vec![b'x'; 1536]).unwrap();
    let holder = Holder::start(UNILOCK, &[], &file);
    let pid = holder.pid();
    let out = run(UNILOCK, &["--list", "--output", "pid,size,type", &file]);
    let lines: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let pid_text = pid.to_string();
    assert_eq!(
        lines,
        [
            vec!["PID", "SIZE", "TYPE"],
            vec![pid_text.as_str(), "1.5K", "FLOCK"]
        ],
        "{}",
        out.stdout
    );
    let out = run(
        UNILOCK,
        &[
            "--list",
            "--raw",
            "--noheadings",
            "--bytes",
            "--output",
            "+INODE",
            &file,
        ],
    );
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&file).unwrap());
    let fields: Vec<&str> = out.stdout.trim_end().split(' ').collect();
    assert_eq!(fields.len(), 11, "{}", out.stdout);
    assert_eq!(
        (fields[0], fields[1], fields[3], fields[10]),
        (
            "sleep",
            pid.to_string().as_str(),
            "1536",
            ino.to_string().as_str()
        ),
        "{}",
        out.stdout
    );
    let found = locks(&run(UNILOCK, &["--list", "--json", "--bytes", &file]).stdout);
    assert_eq!(found[0]["size"], 1536);
    let found = locks(&run(UNILOCK, &["--list", "--json", &file]).stdout);
    assert_eq!(found[0]["size"], "1.5K");
}

/// Every JSON document of `--list --json` and `--test --json` is valid against
/// docs/locks.schema.json, with every column: types, enums, and no unknown key.
#[test]
fn json_output_follows_the_documented_schema() {
    let (props, all) = lock_schema();
    let dir = TempDir::new("schema");
    let file = dir.file("f");
    std::fs::write(format!("{file}.lock"), "999999999\nhost=elsewhere\n").unwrap();
    let _a = Holder::start(UNILOCK, &["-s"], &file);
    let _b = Holder::start(UNILOCK, &["--range", "10:5"], &file);
    let _c = Holder::start(UNILOCK, &["-b", "posix", "--range", "20:0"], &file);
    let mut documents = Vec::new();
    for extra in [
        &[][..],
        &["--bytes"],
        &["--output", &all],
        &["--output", "+BLOCKER"],
    ] {
        let mut args = vec!["--list", "--json"];
        args.extend_from_slice(extra);
        args.push(&file);
        documents.push(run(UNILOCK, &args).stdout);
    }
    documents.push(run(UNILOCK, &["--test", "--json", &file]).stdout);
    documents.push(
        run(
            UNILOCK,
            &["--test", "--json", "-s", "--range", "0:5", &file],
        )
        .stdout,
    );
    let mut kinds = std::collections::HashSet::new();
    for doc in &documents {
        let v: serde_json::Value =
            serde_json::from_str(doc).unwrap_or_else(|e| panic!("{e}: {doc}"));
        let top = v.as_object().unwrap();
        assert_eq!(top.keys().collect::<Vec<_>>(), ["locks"], "{doc}");
        for lock in v["locks"].as_array().unwrap() {
            assert_documented(lock, &props, doc);
            kinds.insert(lock["type"].as_str().unwrap_or("").to_string());
        }
    }
    // The documents cover every kind of lock, and the default keys are there.
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    let first = locks(&documents[0]);
    for key in [
        "command", "pid", "type", "size", "mode", "m", "start", "end", "path", "holders",
    ] {
        assert!(
            first.iter().all(|l| l.get(key).is_some()),
            "{key}: {}",
            documents[0]
        );
    }
}

/// `--fair` on a file it cannot open for writing (a directory here) is a usage error
/// whose message says what to do instead.
#[test]
fn fair_on_a_file_that_cannot_be_written_says_what_to_do() {
    let dir = TempDir::new("fair-dir");
    let sub = dir.path("d");
    std::fs::create_dir(&sub).unwrap();
    let out = run(UNILOCK, &["--fair", "-n", &sub, "true"]);
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(
        out.stderr.contains("run without --fair") && !out.stderr.contains("2^62"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_command_is_started_as_flocks_scripts_without_a_shebang_and_exec_failures_too() {
    let dir = TempDir::new("exec");
    let file = dir.file("f");
    // A file without a `#!` line runs through /bin/sh (execvp's fallback), with the
    // arguments and the signal mask unilock started with.
    let script = dir.file("plain-script");
    std::fs::write(&script, "echo \"ran $1\"; grep SigBlk /proc/self/status\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mask = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("SigBlk:"))
            .map(str::to_string)
    };
    let mut seen = Vec::new();
    for tool in tools() {
        let out = run(tool, &[&file, &script, "arg"]);
        assert_eq!(
            (out.code, out.stdout.lines().next()),
            (0, Some("ran arg")),
            "{}",
            short(tool)
        );
        seen.push(mask(&out.stdout));
        // A file that cannot be executed (mode 0644): flock's message and exit code 69.
        let out = run(tool, &[&file, &dir.file("not-executable")]);
        assert_eq!(out.code, 69, "{}: {}", short(tool), out.stderr);
        assert!(
            out.stderr.contains("failed to execute") && out.stderr.contains("not-executable"),
            "{}: {}",
            short(tool),
            out.stderr
        );
    }
    // The command's signal mask is the caller's (none blocked here), as under flock.
    assert!(
        seen.iter()
            .all(|m| m.as_deref() == Some("SigBlk:\t0000000000000000")),
        "{seen:?}"
    );
}
