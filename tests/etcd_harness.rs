//! The etcd test harness (tests/common/etcd.rs) against real etcd servers: a member
//! answers, a cluster survives its leader's death, takes a restarted member back and
//! comes back whole from its data, TLS lets in only clients with a certificate, auth
//! refuses requests without credentials, and no member outlives its `Etcd`, a
//! panicking test or a SIGKILLed test process. Without etcd installed, these tests
//! fail.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::etcd::Etcd;

/// Set in a child run of this binary: `orphan_main` starts a member, reports it and
/// sleeps until it is killed.
const ORPHAN_ENV: &str = "UNILOCK_TEST_ETCD_ORPHAN";
/// Set in a child run of this binary: `missing_main` starts a member with a `PATH`
/// that has no etcd.
const MISSING_ENV: &str = "UNILOCK_TEST_ETCD_MISSING";

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// Waits up to 5 s for process `pid` to be gone (or a zombie); whether it went.
fn gone_soon(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// POSTs `body` to `path` on the JSON gateway of a plain http `endpoint`; returns
/// the response's body.
fn gateway_post(endpoint: &str, path: &str, body: &str) -> String {
    let addr = endpoint.strip_prefix("http://").expect("an http endpoint");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{response}");
    body.to_string()
}

#[test]
fn single_member_answers() {
    let etcd = Etcd::start();
    assert_eq!(etcd.len(), 1);
    assert!(etcd.endpoint(0).starts_with("http://127.0.0.1:"));
    assert_eq!(etcd.endpoints(), etcd.endpoint(0));
    assert_eq!(etcd.leader(), Some(0));

    etcd.put("greeting", "hello");
    assert_eq!(etcd.get("greeting").as_deref(), Some("hello"));
    assert_eq!(etcd.get("nothing"), None);
    etcd.put("-dash", "-value with spaces");
    assert_eq!(etcd.get("-dash").as_deref(), Some("-value with spaces"));
    etcd.put("empty", "");
    assert_eq!(etcd.get("empty").as_deref(), Some(""));
    for key in ["dir/b", "dir/a", "dir", "dirt"] {
        etcd.put(key, "x");
    }
    assert_eq!(etcd.keys_with_prefix("dir/"), ["dir/a", "dir/b"]);
    assert_eq!(etcd.keys_with_prefix("dir").len(), 4);

    // The preset etcdctl, by itself.
    let out = etcd
        .etcdctl()
        .args(["get", "greeting", "--print-value-only"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello\n");

    // The JSON gateway on the client port: keys and values in base64.
    let body = gateway_post(
        &etcd.endpoint(0),
        "/v3/kv/range",
        r#"{"key":"Z3JlZXRpbmc="}"#,
    );
    assert!(body.contains(r#""value":"aGVsbG8=""#), "{body}");
}

#[test]
fn stopped_member_hangs_until_continued() {
    let mut etcd = Etcd::start();
    etcd.put("k", "v");
    etcd.stop(0);
    let timeouts = ["--dial-timeout=300ms", "--command-timeout=300ms"];
    let out = etcd.ctl_with(true, None, &[&timeouts[..], &["get", "k"]].concat());
    assert!(
        !out.status.success(),
        "a stopped member answered: {}",
        stdout(&out)
    );
    assert_eq!(etcd.leader(), None, "a stopped member is asked nothing");
    etcd.cont(0);
    assert_eq!(etcd.get("k").as_deref(), Some("v"));
}

#[test]
fn cluster_survives_its_leader_and_takes_it_back() {
    let mut etcd = Etcd::cluster(3);
    assert_eq!(etcd.endpoints(), etcd.all_endpoints());
    assert_eq!(etcd.endpoints().split(',').count(), 3);
    let leader = etcd.leader().expect("a leader");
    etcd.put("k", "before");

    let pid = etcd.pid(leader);
    etcd.kill(leader);
    assert!(!alive(pid), "the killed leader runs");
    assert!(!etcd.is_running(leader));
    assert_eq!(etcd.endpoints().split(',').count(), 2);
    assert!(!etcd.endpoints().contains(&etcd.endpoint(leader)));
    assert_eq!(etcd.all_endpoints().split(',').count(), 3);

    let new_leader = etcd.wait_leader();
    assert_ne!(new_leader, leader);
    assert_eq!(etcd.leader(), Some(new_leader));
    // Through the remaining endpoints.
    etcd.put("k", "after");
    assert_eq!(etcd.get("k").as_deref(), Some("after"));

    etcd.restart(leader);
    assert!(etcd.is_running(leader));
    assert_ne!(etcd.pid(leader), pid);
    // The restarted member alone answers with what was written while it was dead:
    // through the leader (linearizable), then from its own store (serializable).
    for consistency in ["l", "s"] {
        let out = etcd
            .etcdctl()
            .arg(format!("--endpoints={}", etcd.endpoint(leader)))
            .args(["get", "k", "--print-value-only"])
            .arg(format!("--consistency={consistency}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "after\n", "--consistency={consistency}");
    }
    assert!(etcd.leader().is_some());

    // The whole cluster down and up again, from its data.
    etcd.kill_all();
    assert_eq!(etcd.endpoints(), "");
    assert_eq!(etcd.leader(), None);
    etcd.restart_all();
    assert_eq!(etcd.endpoints(), etcd.all_endpoints());
    assert_eq!(etcd.get("k").as_deref(), Some("after"));
}

#[test]
fn tls_lets_in_only_clients_with_a_certificate() {
    let etcd = Etcd::start_tls();
    assert!(etcd.endpoint(0).starts_with("https://127.0.0.1:"));
    let pem = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    assert!(pem(etcd.ca()).starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(pem(etcd.client_cert()).starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(pem(etcd.client_key()).starts_with("-----BEGIN PRIVATE KEY-----"));

    etcd.put("secure", "yes");
    assert_eq!(etcd.get("secure").as_deref(), Some("yes"));
    let timeouts = ["--dial-timeout=1s", "--command-timeout=1s"];
    let out = etcd.ctl_with(false, None, &[&timeouts[..], &["get", "secure"]].concat());
    assert!(
        !out.status.success(),
        "let in without a certificate: {}",
        stdout(&out)
    );

    // The server certificate names localhost too.
    let port = etcd.endpoint(0).rsplit(':').next().unwrap().to_string();
    let out = etcd
        .etcdctl()
        .arg(format!("--endpoints=https://localhost:{port}"))
        .args(["get", "secure", "--print-value-only"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "yes\n", "{}", stderr(&out));
}

#[test]
fn tls_without_client_auth_needs_only_the_ca() {
    let etcd = Etcd::start_tls_no_client_auth();
    let out = etcd.ctl_with(false, None, &["put", "k", "v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(etcd.get("k").as_deref(), Some("v"));
}

#[test]
fn auth_refuses_requests_without_credentials() {
    let mut etcd = Etcd::start();
    etcd.add_user("alice", "alice-pw");
    etcd.enable_auth("root-pw");
    etcd.add_user("bob", "bob-pw");

    let out = etcd.ctl_with(true, None, &["put", "k", "anonymous"]);
    assert!(!out.status.success(), "put without credentials");
    assert!(
        stderr(&out).contains("user name is empty"),
        "{}",
        stderr(&out)
    );
    let out = etcd.ctl_with(true, None, &["get", "k"]);
    assert!(!out.status.success(), "get without credentials");
    let out = etcd.ctl_with(true, Some(("alice", "wrong")), &["put", "k", "guess"]);
    assert!(!out.status.success(), "put with a wrong password");
    assert!(
        stderr(&out).contains("authentication failed"),
        "{}",
        stderr(&out)
    );

    for (user, password) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
        let out = etcd.ctl_with(true, Some((user, password)), &["put", "k", user]);
        assert!(out.status.success(), "{user}: {}", stderr(&out));
        // The helpers go as root.
        assert_eq!(etcd.get("k").as_deref(), Some(user));
    }
}

#[test]
fn tls_with_auth_needs_credentials_too() {
    let mut etcd = Etcd::start_tls();
    etcd.enable_auth("root-pw");
    etcd.put("k", "v");
    // The client certificate has no common name, so it names no etcd user.
    let out = etcd.ctl_with(true, None, &["get", "k"]);
    assert!(!out.status.success(), "a certificate alone read a key");
    assert_eq!(etcd.get("k").as_deref(), Some("v"));
}

#[test]
fn drop_kills_every_member_and_removes_the_directory() {
    let mut etcd = Etcd::cluster(2);
    etcd.stop(1);
    let pids = [etcd.pid(0), etcd.pid(1)];
    let dir = etcd.dir().to_path_buf();
    assert!(pids.iter().all(|&p| alive(p)) && dir.is_dir());
    drop(etcd);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} outlived Drop"
        );
    }
    assert!(!dir.exists(), "{} outlived Drop", dir.display());

    // A test that panics drops its etcd too.
    let seen = Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let etcd = Etcd::start();
        *seen.lock().unwrap() = Some((etcd.pid(0), etcd.dir().to_path_buf()));
        panic!("a failing test");
    });
    assert!(result.is_err());
    let (pid, dir) = seen.into_inner().unwrap().expect("the etcd started");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "{pid} outlived a panic"
    );
    assert!(!dir.exists(), "{} outlived a panic", dir.display());
}

/// Not a test: a child run of this binary (see [`ORPHAN_ENV`]).
#[test]
fn orphan_main() {
    if std::env::var_os(ORPHAN_ENV).is_none() {
        return;
    }
    let etcd = Etcd::start();
    println!("@@ {} {}", etcd.pid(0), etcd.dir().display());
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// A child process that is SIGKILLed and reaped when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn members_die_with_a_killed_test_process() {
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "orphan_main", "--nocapture", "--test-threads=1"])
            .env(ORPHAN_ENV, "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut reader = BufReader::new(child.0.stdout.take().unwrap());
    let report = loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the child exited");
        if let Some(at) = line.find("@@ ") {
            break line[at + 3..].trim_end().to_string();
        }
    };
    let (pid, dir) = report.split_once(' ').unwrap();
    let pid: u32 = pid.parse().unwrap();
    assert!(alive(pid));
    drop(child);
    let died = gone_soon(pid);
    // No Drop ran in the killed process: its directory is left to clean up.
    std::fs::remove_dir_all(dir).unwrap();
    assert!(died, "etcd {pid} outlived its SIGKILLed test process");
}

/// Not a test: a child run of this binary (see [`MISSING_ENV`]).
#[test]
fn missing_main() {
    if std::env::var_os(MISSING_ENV).is_some() {
        Etcd::start();
    }
}

#[test]
fn missing_etcd_fails_the_test() {
    let empty = common::TempDir::new("etcd-path");
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "missing_main", "--test-threads=1"])
        .env(MISSING_ENV, "1")
        .env("PATH", &empty.0)
        .output()
        .unwrap();
    let text = stdout(&out) + &stderr(&out);
    assert!(!out.status.success(), "passed without etcd:\n{text}");
    assert!(
        text.contains("apt-get install etcd-server etcd-client"),
        "{text}"
    );
}
