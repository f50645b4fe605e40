//! The ETCD backend's benchmark, one program without a harness (`harness = false`),
//! against a private single-member etcd that it starts itself (scripts/etcd-server.sh,
//! fsync on) and stops at the end, also when it fails.
//!
//! `make bench-etcd` and `make bench` run it through `scripts/bench-etcd.sh`, which
//! writes target/bench/etcd.md (section 7 of BENCHMARKS.md); built there as `etcd` by
//! bench/peers/Cargo.toml, without the library's dev-dependencies. By hand:
//! `cargo bench --features capi --bench etcd [-- OPTIONS]`.
//!
//! What it measures, every figure in the same run against the same member:
//! 1. etcd's own round trips through its JSON gateway (a read, the waiter's re-check
//!    transaction, a put, a lease grant and revoke), and one watch event: a watcher
//!    in another process reads a streaming `POST /v3/watch` line by line while this
//!    process deletes the key; latency from just before the delete is sent to the
//!    watcher reading the DELETE event (the baseline of the hand-off);
//! 2. the uncontended `lock` + `unlock` pair of an ETCD handle (`unilock::Lock`);
//! 3. the hand-off: a holder in another process unlocks, a waiter blocked in `lock` in
//!    this process returns; interleaved with the watch-event rounds of 1, and with
//!    observed hand-offs on another lock, whose keys a watcher watches too, which
//!    tell the release's event from what the waiter does after it;
//! 4. the command, `unilock --etcd=URL NAME true`, against `etcdctl lock NAME true`;
//! 5. the threads and memory an ETCD handle adds to a host process (in a fresh
//!    process), and the size of the stripped C library.
//!
//! Options: `--quick` (small counts, a smoke test), `--only SECTION,...` (some of
//! `pairs`, `handoff`, `command`, `memory`; etcd's own round trips are always
//! measured), `--markdown PATH` (the tables),
//! `--json PATH` (the flat summary, also printed last after `SUMMARY `), `--targets
//! PATH` (the rows of the targets table), `--etcd-dir DIR` (where the member keeps
//! its data and log: made, then removed; default a new directory in `$TMPDIR`),
//! `--unilock PATH` (the command), `--library PATH` (libunilock.so),
//! `--library-without-etcd PATH` (the same library built without the `etcd` feature,
//! for comparison). It re-runs itself for its helper processes: `--watcher URL KEY
//! [prefix]`, `--holder URL NAME...` and `--memory URL NAME CYCLES`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use unilock::{Backend, Lock, Mode, Options};

mod report;

use report::{Report, mono_ns, percentile, yes_no};

// ---------------------------------------------------------------------------------
// Configuration

/// Counts; `--quick` shrinks them for a smoke test.
struct Config {
    quick: bool,
    /// Rounds of each of etcd's own requests.
    requests: usize,
    /// Watch-event rounds, and as many hand-off rounds, interleaved.
    handoffs: usize,
    /// Uncontended lock + unlock pairs.
    pairs: usize,
    /// Runs of each command.
    commands: usize,
    /// Open, lock, unlock, close cycles after the first, for the memory measurement:
    /// the figures are read after this many, and again after five times as many.
    cycles: usize,
}

impl Config {
    fn new(quick: bool) -> Config {
        if quick {
            Config {
                quick,
                requests: 20,
                handoffs: 20,
                pairs: 20,
                commands: 5,
                cycles: 10,
            }
        } else {
            Config {
                quick,
                requests: 200,
                handoffs: 200,
                pairs: 200,
                commands: 60,
                cycles: 100,
            }
        }
    }
}

/// The lock names and the watched key (the member is the benchmark's own).
const WATCH_KEY: &str = "unilock-bench/watched";
const HANDOFF_NAME: &str = "unilock-bench-handoff";
/// The lock of the observed hand-offs, whose keys a watcher of the benchmark watches.
const OBSERVED_NAME: &str = "unilock-bench-handoff-observed";
const PAIR_NAME: &str = "unilock-bench-pair";
const COMMAND_NAME: &str = "unilock-bench-command";
const MEMORY_NAME: &str = "unilock-bench-memory";

/// The target of issue 13 for the hand-off: at most this many times one watch event.
const HANDOFF_TARGET: f64 = 2.0;
/// The target for the command: no slower than `etcdctl lock`.
const COMMAND_TARGET: f64 = 1.0;

// ---------------------------------------------------------------------------------
// Small helpers: clocks, statistics

/// p50, p99 and max of samples in ns, as ms.
fn stats_ms(samples: &[f64]) -> (f64, f64, f64) {
    (
        percentile(samples, 0.5) / 1e6,
        percentile(samples, 0.99) / 1e6,
        percentile(samples, 1.0) / 1e6,
    )
}

/// Dies with the parent (a helper process must not outlive the benchmark).
fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
}

// ---------------------------------------------------------------------------------
// etcd: the member, and its JSON gateway spoken directly (for the baselines)

/// The private member, stopped (and its directory removed) on drop.
struct Member {
    script: PathBuf,
    dir: PathBuf,
    url: String,
}

impl Member {
    /// Starts a member with its data in `dir` through scripts/etcd-server.sh, with
    /// etcd's fsync kept on.
    fn start(script: &Path, dir: &Path) -> Member {
        let out = Command::new("bash")
            .arg(script)
            .arg("start")
            .arg(dir)
            .env("ETCD_SERVER_FSYNC", "1")
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/etcd-server.sh");
        // Stopped on drop from here on, even when the start failed half-way.
        let mut member = Member {
            script: script.to_owned(),
            dir: dir.to_owned(),
            url: String::new(),
        };
        assert!(out.status.success(), "etcd-server.sh start failed");
        member.url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        member
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// etcd's gateway through ureq (the HTTP client the library uses), one kept
/// connection.
struct Gateway {
    agent: ureq::Agent,
    url: String,
}

/// An agent for the baselines. No overall or per-call timeout: with one, ureq
/// resolves the host on a thread of its own for every request (even an IP address,
/// even on a kept connection), which is the client's cost, not etcd's; the
/// connection and the answer still have theirs.
fn baseline_agent() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_recv_response(Some(Duration::from_secs(10)))
        .proxy(None)
        .build();
    ureq::Agent::new_with_config(config)
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

impl Gateway {
    fn new(url: &str) -> Gateway {
        Gateway {
            agent: baseline_agent(),
            url: url.to_owned(),
        }
    }

    /// `POST path` with `body`; the answer.
    fn post(&self, path: &str, body: &Value) -> Value {
        self.post_via(&self.agent, path, body)
    }

    /// [`Gateway::post`] through another agent.
    fn post_via(&self, agent: &ureq::Agent, path: &str, body: &Value) -> Value {
        let text = agent
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .send(body.to_string())
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
            .into_body()
            .read_to_string()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: {e}: {text}"))
    }

    /// Watchers registered in the member (`etcd_debugging_mvcc_watcher_total`).
    fn watchers(&self) -> u64 {
        let text = self
            .agent
            .get(format!("{}/metrics", self.url))
            .call()
            .expect("GET /metrics")
            .into_body()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .expect("read /metrics");
        text.lines()
            .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("etcd_debugging_mvcc_watcher_total in /metrics") as u64
    }

    /// Waits until the member's number of watchers is `ok` (or 10 s pass); whether
    /// it was.
    fn await_watchers(&self, ok: impl Fn(u64) -> bool) -> bool {
        let give_up = Instant::now() + Duration::from_secs(10);
        while Instant::now() < give_up {
            if ok(self.watchers()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }
}

/// The range of the keys that start with `prefix`, as etcd's "prefix end".
fn prefix_range(prefix: &str) -> Value {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a prefix") += 1;
    json!({"key": b64(prefix), "range_end": B64.encode(end)})
}

// ---------------------------------------------------------------------------------
// Results: a flat summary (machine-readable), the targets' rows and the Markdown

/// Three statistics of `samples` (ns) under `key` in `report`, in µs; returned in ms.
fn latency(report: &mut Report, key: &str, samples: &[f64]) -> (f64, f64, f64) {
    let (p50, p99, max) = stats_ms(samples);
    report.num(format!("{key}.p50_us"), p50 * 1e3);
    report.num(format!("{key}.p99_us"), p99 * 1e3);
    report.num(format!("{key}.max_us"), max * 1e3);
    (p50, p99, max)
}

// ---------------------------------------------------------------------------------
// 1. etcd's own round trips

/// The transaction a waiter makes each time it looks at the queue (src/etcd/lock.rs):
/// the key ahead of its own, its own, and the first.
fn recheck_txn(prefix: &str, own: &str) -> Value {
    let range = |extra: Value| {
        let mut r = prefix_range(prefix);
        r["sort_target"] = json!("CREATE");
        if let (Some(r), Some(extra)) = (r.as_object_mut(), extra.as_object()) {
            r.extend(extra.clone());
        }
        r
    };
    json!({"success": [
        {"request_range": range(json!({"sort_order": "DESCEND", "limit": "1",
                                       "max_create_revision": "1000000000"}))},
        {"request_range": {"key": b64(own)}},
        {"request_range": range(json!({"sort_order": "ASCEND", "limit": "1"}))},
    ]})
}

fn bench_requests(cfg: &Config, gw: &Gateway, report: &mut Report) -> Vec<(String, f64)> {
    let key = "unilock-bench-requests/k";
    gw.post("/v3/kv/put", &json!({"key": b64(key), "value": b64("v")}));
    let txn = recheck_txn("unilock-bench-requests/", key);
    let names = [
        "range",
        "range_timeout",
        "recheck",
        "recheck_new_connection",
        "put",
        "grant",
        "revoke",
        "revoke_timeout",
    ];
    // The library's way: a timeout on every request.
    let timed = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .proxy(None)
            .build(),
    );
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    // A warm-up, then the rounds: each request once per round, in turn.
    for round in 0..cfg.requests + 5 {
        let mut times = [0f64; 8];
        let t = mono_ns();
        gw.post("/v3/kv/range", &json!({"key": b64(key)}));
        times[0] = (mono_ns() - t) as f64;
        let t = mono_ns();
        gw.post_via(&timed, "/v3/kv/range", &json!({"key": b64(key)}));
        times[1] = (mono_ns() - t) as f64;
        let t = mono_ns();
        gw.post("/v3/kv/txn", &txn);
        times[2] = (mono_ns() - t) as f64;
        let fresh = baseline_agent();
        let t = mono_ns();
        gw.post_via(&fresh, "/v3/kv/txn", &txn);
        times[3] = (mono_ns() - t) as f64;
        drop(fresh);
        let t = mono_ns();
        gw.post("/v3/kv/put", &json!({"key": b64(key), "value": b64("v")}));
        times[4] = (mono_ns() - t) as f64;
        let t = mono_ns();
        let lease = gw.post("/v3/lease/grant", &json!({"TTL": "10"}));
        times[5] = (mono_ns() - t) as f64;
        let id = lease["ID"].as_str().expect("a lease ID").to_owned();
        let t = mono_ns();
        gw.post("/v3/lease/revoke", &json!({"ID": id}));
        times[6] = (mono_ns() - t) as f64;
        let lease = gw.post("/v3/lease/grant", &json!({"TTL": "10"}));
        let id = lease["ID"].as_str().expect("a lease ID").to_owned();
        let t = mono_ns();
        gw.post_via(&timed, "/v3/lease/revoke", &json!({"ID": id}));
        times[7] = (mono_ns() - t) as f64;
        if round >= 5 {
            for (s, t) in samples.iter_mut().zip(times) {
                s.push(t);
            }
        }
    }
    let what = [
        "`kv/range`: one key (a linearizable read)",
        "the same with a timeout on the request (ureq's own resolver then looks the \
         address up on a new thread each time; the library resolves in the calling \
         thread)",
        "`kv/txn` of three ranges: a waiter's look at the queue, made again after a \
         watch event unless the deleted key was the holder's",
        "the same on a new connection (connect included)",
        "`kv/put`: one key (a write: etcd's log is fsynced)",
        "`lease/grant` (a write)",
        "`lease/revoke` (a write; it deletes the lease's keys: an ETCD unlock)",
        "the same with a timeout on the request, as the library sets one",
    ];
    let mut rows = Vec::new();
    for ((name, what), s) in names.iter().zip(what).zip(&samples) {
        let (p50, p99, max) = latency(report, &format!("etcd.request.{name}"), s);
        rows.push((
            format!(
                "| {what} | {} | {p50:.2} | {p99:.2} | {max:.2} |\n",
                s.len()
            ),
            p50,
        ));
    }
    report.md(&format!(
        "### 7.1 etcd's own round trips\n\n\
         One request at a time through etcd's JSON gateway with ureq (the HTTP client the \
         library uses), on a kept connection unless the row says otherwise, from this \
         process: each request once per round, {} rounds after 5 of warm-up.\n\n\
         | request | rounds | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n",
        cfg.requests
    ));
    for (row, _) in &rows {
        report.md(row);
    }
    report.md("\n");
    names
        .iter()
        .zip(rows)
        .map(|(n, (_, p50))| (n.to_string(), p50))
        .collect()
}

// ---------------------------------------------------------------------------------
// 1 and 3. One watch event, and the hand-off, interleaved

/// The watcher process: a streaming `POST /v3/watch` on `key` (or on the keys that
/// start with it, with `prefix`), read line by line; prints `C` once the watch is
/// created, `P` for a put and `D <ns>` (when the line was read) for a delete.
fn watcher_main(url: &str, key: &str, prefix: bool) {
    die_with_parent();
    let agent: ureq::Agent = ureq::Agent::config_builder().proxy(None).build().into();
    let request = if prefix {
        prefix_range(key)
    } else {
        json!({"key": b64(key)})
    };
    let response = agent
        .post(format!("{url}/v3/watch"))
        .header("content-type", "application/json")
        .send(json!({ "create_request": request }).to_string())
        .expect("POST /v3/watch");
    let mut lines = BufReader::new(response.into_body().into_reader());
    let mut out = std::io::stdout().lock();
    let mut line = String::new();
    loop {
        line.clear();
        let n = lines.read_line(&mut line).expect("read the watch stream");
        let t = mono_ns();
        if n == 0 {
            return;
        }
        let message: Value = serde_json::from_str(&line).expect("a JSON line");
        let result = &message["result"];
        if result["created"].as_bool() == Some(true) {
            writeln!(out, "C").unwrap();
        }
        for event in result["events"].as_array().into_iter().flatten() {
            if event["type"].as_str() == Some("DELETE") {
                writeln!(out, "D {t}").unwrap();
            } else {
                writeln!(out, "P").unwrap();
            }
        }
        out.flush().unwrap();
    }
}

/// The holder process, with a handle on each lock of `names`, driven through stdin
/// (each command followed by the index of a lock, one byte): `L` locks (answers
/// `H`); `R` followed by a count of watchers (u64 LE) waits until the member has
/// more than that many (the waiter is in its watch), reads the clock, unlocks, and
/// answers with that time and how long `unlock` took (two u64 LE; the time is 0 if
/// the watch was not seen within 10 s).
fn holder_main(url: &str, names: &[String]) {
    die_with_parent();
    let gw = Gateway::new(url);
    let locks: Vec<Lock> = names
        .iter()
        .map(|name| {
            Lock::open(
                name,
                &Options::new().backend(Backend::Etcd).etcd_endpoints(url),
            )
            .expect("holder: open")
        })
        .collect();
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut command = [0u8; 2];
    while input.read_exact(&mut command).is_ok() {
        let lock = &locks[usize::from(command[1])];
        match command[0] {
            b'L' => {
                lock.lock(Mode::Exclusive, 0, 0, None)
                    .expect("holder: lock");
                output.write_all(b"H").unwrap();
            }
            b'R' => {
                let mut idle = [0u8; 8];
                input.read_exact(&mut idle).unwrap();
                let idle = u64::from_le_bytes(idle);
                let seen = gw.await_watchers(|n| n > idle);
                // Let the member settle after the last `GET /metrics`.
                std::thread::sleep(Duration::from_millis(2));
                let t0 = mono_ns();
                lock.unlock(0, 0).expect("holder: unlock");
                let took = mono_ns() - t0;
                output
                    .write_all(&(if seen { t0 } else { 0 }).to_le_bytes())
                    .unwrap();
                output.write_all(&took.to_le_bytes()).unwrap();
            }
            other => panic!("holder: unknown command {other}"),
        }
        output.flush().unwrap();
    }
}

/// A helper process of this program, with pipes to and from it.
struct Helper {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Helper {
    fn start(args: &[&str]) -> Helper {
        let mut child = Command::new(std::env::current_exe().expect("current_exe"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a helper process");
        let to = child.stdin.take().expect("stdin");
        let from = BufReader::new(child.stdout.take().expect("stdout"));
        Helper { child, to, from }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.from.read_line(&mut line).expect("read a helper");
        assert!(!line.is_empty(), "a helper process ended");
        line.trim_end().to_owned()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The watch-event latency (ns) and the delete's round trip, one round.
fn watch_round(gw: &Gateway, watcher: &mut Helper) -> (f64, f64) {
    gw.post(
        "/v3/kv/put",
        &json!({"key": b64(WATCH_KEY), "value": b64("v")}),
    );
    assert_eq!(watcher.line(), "P", "the watcher sees the put");
    let t0 = mono_ns();
    gw.post("/v3/kv/deleterange", &json!({"key": b64(WATCH_KEY)}));
    let rtt = mono_ns() - t0;
    let line = watcher.line();
    let t1: u64 = line
        .strip_prefix("D ")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("the watcher sees the delete, not {line:?}"));
    (t1.saturating_sub(t0) as f64, rtt as f64)
}

/// One hand-off's times, in ns.
struct Handoff {
    /// The holder's `unlock` called → the waiter's `lock` returned.
    latency: f64,
    /// The holder's `unlock` call.
    unlock: f64,
    /// The holder's `unlock` called → a watcher of the queue read the DELETE event
    /// of the holder's key.
    event: f64,
}

/// One hand-off on lock `which` of the holder's, or `None` when the holder did not
/// see the waiter's watch. `queue`, when given, watches the lock's keys (and fills
/// in [`Handoff::event`]).
fn handoff_round(
    gw: &Gateway,
    holder: &mut Helper,
    which: u8,
    queue: Option<&mut Helper>,
    waiter: &Lock,
    idle: u64,
) -> Option<Handoff> {
    holder.to.write_all(&[b'L', which]).unwrap();
    let mut reply = [0u8; 1];
    holder.from.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"H", "the holder took the lock");
    // The last round's watch is gone from the member before this one starts.
    assert!(
        gw.await_watchers(|n| n == idle),
        "the member keeps a waiter's watch after its lock call returned"
    );
    holder.to.write_all(&[b'R', which]).unwrap();
    holder.to.write_all(&idle.to_le_bytes()).unwrap();
    holder.to.flush().unwrap();
    waiter
        .lock(Mode::Exclusive, 0, 0, None)
        .expect("waiter: lock");
    let t1 = mono_ns();
    let mut answer = [0u8; 16];
    holder.from.read_exact(&mut answer).unwrap();
    waiter.unlock(0, 0).expect("waiter: unlock");
    let t0 = u64::from_le_bytes(answer[..8].try_into().unwrap());
    let took = u64::from_le_bytes(answer[8..].try_into().unwrap());
    // The queue's events of the round: the two keys put, the holder's deleted (the
    // first delete), then the waiter's.
    let mut deletes = Vec::new();
    if let Some(queue) = queue {
        while deletes.len() < 2 {
            let line = queue.line();
            if let Some(t) = line.strip_prefix("D ") {
                deletes.push(t.parse::<u64>().expect("a time"));
            }
        }
    }
    (t0 != 0).then(|| Handoff {
        latency: t1.saturating_sub(t0) as f64,
        unlock: took as f64,
        event: deletes
            .first()
            .map_or(0.0, |&t| t.saturating_sub(t0) as f64),
    })
}

fn bench_handoff(
    cfg: &Config,
    url: &str,
    gw: &Gateway,
    requests: &[(String, f64)],
    report: &mut Report,
) {
    let mut watcher = Helper::start(&["--watcher", url, WATCH_KEY]);
    assert_eq!(watcher.line(), "C", "the watch is created");
    let queue_prefix = format!("{OBSERVED_NAME}/");
    let mut queue = Helper::start(&["--watcher", url, &queue_prefix, "prefix"]);
    assert_eq!(queue.line(), "C", "the queue's watch is created");
    // The watchers' two watches are the member's only ones between rounds.
    let idle = gw.watchers();
    let mut holder = Helper::start(&["--holder", url, HANDOFF_NAME, OBSERVED_NAME]);
    let open = |name: &str| {
        Lock::open(
            name,
            &Options::new().backend(Backend::Etcd).etcd_endpoints(url),
        )
        .expect("waiter: open")
    };
    let (waiter, observed) = (open(HANDOFF_NAME), open(OBSERVED_NAME));
    let (mut watch, mut delete, mut handoff, mut revoke) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut watched, mut watched_unlock, mut event, mut rest) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut unseen = 0;
    let warmup = 3;
    for round in 0..cfg.handoffs + warmup {
        // Interleaved, each kind first in turn.
        for kind in (0..3).map(|k| (k + round) % 3) {
            let keep = round >= warmup;
            match kind {
                0 => {
                    let (w, d) = watch_round(gw, &mut watcher);
                    if keep {
                        watch.push(w);
                        delete.push(d);
                    }
                }
                1 => match handoff_round(gw, &mut holder, 0, None, &waiter, idle) {
                    Some(h) if keep => {
                        handoff.push(h.latency);
                        revoke.push(h.unlock);
                    }
                    Some(_) => {}
                    None => unseen += 1,
                },
                _ => match handoff_round(gw, &mut holder, 1, Some(&mut queue), &observed, idle) {
                    Some(h) if keep => {
                        watched.push(h.latency);
                        watched_unlock.push(h.unlock);
                        event.push(h.event);
                        rest.push(h.latency - h.event);
                    }
                    Some(_) => {}
                    None => unseen += 1,
                },
            }
        }
    }
    drop(holder);
    drop(queue);
    drop(watcher);
    waiter.close().expect("waiter: close");
    observed.close().expect("waiter: close");

    let (w50, w99, wmax) = latency(report, "etcd.watch_event", &watch);
    let (d50, d99, dmax) = latency(report, "etcd.request.deleterange", &delete);
    let (h50, h99, hmax) = latency(report, "etcd.handoff", &handoff);
    let (r50, r99, rmax) = latency(report, "etcd.handoff.holder_unlock", &revoke);
    let (o50, o99, omax) = latency(report, "etcd.handoff_observed", &watched);
    let (u50, u99, umax) = latency(
        report,
        "etcd.handoff_observed.holder_unlock",
        &watched_unlock,
    );
    let (e50, e99, emax) = latency(report, "etcd.handoff_observed.release_event", &event);
    let (x50, x99, xmax) = latency(report, "etcd.handoff_observed.after_event", &rest);
    report.num("etcd.handoff.rounds", handoff.len() as f64);
    report.num("etcd.handoff_observed.rounds", watched.len() as f64);
    report.num("etcd.handoff.watch_unseen", f64::from(unseen));
    let ratio50 = h50 / w50;
    let ratio99 = h99 / w99;
    report.num("etcd.handoff.vs_watch_event.p50", ratio50);
    report.num("etcd.handoff.vs_watch_event.p99", ratio99);
    let met = ratio50 <= HANDOFF_TARGET;
    report.target(
        "ETCD hand-off p50 / one etcd watch event p50 (p99 ratio in section 7.3)",
        format!("{ratio50:.2}x ({h50:.2} ms / {w50:.2} ms)"),
        format!("{HANDOFF_TARGET:.2}x"),
        yes_no(met),
    );
    let unseen_note = if unseen == 0 {
        String::new()
    } else {
        format!(
            " In {unseen} rounds the holder did not see the waiter's watch within 10 s \
             and released anyway; those rounds are left out."
        )
    };
    let p50 = |name: &str| {
        requests
            .iter()
            .find(|(n, _)| n == name)
            .map_or(f64::NAN, |r| r.1)
    };
    report.md(&format!(
        "### 7.3 Hand-off latency against one watch event\n\n\
         The baseline, one watch event: a watcher process holds a streaming \
         `POST /v3/watch` on a key open and reads it line by line; this process puts the \
         key (the watcher reports the PUT event, so the watch is live), reads \
         `CLOCK_MONOTONIC`, and deletes the key (`POST /v3/kv/deleterange`); the latency \
         runs to the moment the watcher has read the DELETE event's line (read on the same \
         clock).\n\n\
         The hand-off: a holder process (this program re-run with `--holder`) holds the \
         lock through its own ETCD handle; this process calls `lock` (no timeout) on \
         another handle and blocks. The holder polls the member's \
         `etcd_debugging_mvcc_watcher_total` (`GET /metrics`) until the waiter's watch on \
         the holder's key is registered, pauses 2 ms, reads the clock just before its \
         `unlock` call (which revokes its lease: etcd deletes the key) and sends that time \
         over a pipe; the latency runs from there to the return of the waiter's `lock`. \
         Before each round this process waits until the last round's watch is gone from \
         the member. Two processes, two handles, each with its own lease.\n\n\
         The observed hand-off: the same on another lock whose keys (`NAME/`) a second \
         watcher process watches like the baseline's, which splits it in two: until that \
         watcher reads the DELETE event of the holder's key, and from there until the \
         waiter's `lock` returns. The observer is one more process for etcd to send the \
         event to and for the machine to wake, so the target is taken on the plain \
         hand-off.\n\n\
         {} rounds of each of the three, after {warmup} of warm-up, interleaved (each \
         kind first in turn).{unseen_note}\n\n\
         | what | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|\n\
         | one watch event: delete sent → the watcher reads the DELETE event | {w50:.2} | {w99:.2} | {wmax:.2} |\n\
         | the delete's own round trip (same rounds) | {d50:.2} | {d99:.2} | {dmax:.2} |\n\
         | **hand-off**: the holder's `unlock` called → the waiter's `lock` returns | {h50:.2} | {h99:.2} | {hmax:.2} |\n\
         | the holder's `unlock` call alone (the lease revoke's round trip, same rounds) | {r50:.2} | {r99:.2} | {rmax:.2} |\n\
         | observed hand-off: the holder's `unlock` called → the waiter's `lock` returns | {o50:.2} | {o99:.2} | {omax:.2} |\n\
         | of which: `unlock` called → the observer reads the holder's key's DELETE event | {e50:.2} | {e99:.2} | {emax:.2} |\n\
         | of which: that event read → the waiter's `lock` returns | {x50:.2} | {x99:.2} | {xmax:.2} |\n\
         | the holder's `unlock` call alone (same rounds) | {u50:.2} | {u99:.2} | {umax:.2} |\n\n\
         - Hand-off / watch event: p50 {ratio50:.2}x, p99 {ratio99:.2}x (target: p50 at \
         most {HANDOFF_TARGET:.2}x: {}).\n\
         - Where a hand-off's time goes, p50: first the holder's `unlock` (its lease \
         revoke), {r50:.2} ms, against {:.2} ms for a bare `lease/revoke` in 7.1; in the \
         observed rounds the key's DELETE event reached a watcher {e50:.2} ms after the \
         call, against {w50:.2} ms after a bare delete. Then the waiter, which reads the \
         same event on its own watch and whose key ahead was the holder's, returns without \
         another look at the queue (no key can come before its own any more): \
         {x50:.2} ms.\n\n",
        handoff.len(),
        yes_no(met),
        p50("revoke"),
    ));
}

// ---------------------------------------------------------------------------------
// 2. The uncontended pair

fn bench_pairs(cfg: &Config, url: &str, report: &mut Report) {
    let lock = Lock::open(
        PAIR_NAME,
        &Options::new().backend(Backend::Etcd).etcd_endpoints(url),
    )
    .expect("open");
    let (mut locks, mut unlocks, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..cfg.pairs + 5 {
        let t0 = mono_ns();
        lock.lock(Mode::Exclusive, 0, 0, None).expect("lock");
        let t1 = mono_ns();
        lock.unlock(0, 0).expect("unlock");
        let t2 = mono_ns();
        if round >= 5 {
            locks.push((t1 - t0) as f64);
            unlocks.push((t2 - t1) as f64);
            pairs.push((t2 - t0) as f64);
        }
    }
    lock.close().expect("close");
    let rows = [
        ("`lock(Exclusive, 0, 0, None)`", "lock", &locks),
        ("`unlock(0, 0)`", "unlock", &unlocks),
        ("the pair", "pair", &pairs),
    ];
    report.md(&format!(
        "### 7.2 Uncontended lock + unlock\n\n\
         One ETCD handle (`unilock::Lock`, the Rust API; the C API calls the same code) \
         takes and releases a free lock, {} times after 5 of warm-up; each call timed on \
         its own. A `lock` of a free lock is two round trips (a lease grant, and a `kv/txn` \
         that puts the key only if absent and reads the queue's first key after the put, \
         both writes) and starts the lease's keep-alive thread; an `unlock` is one (the \
         lease revoke, a write).\n\n\
         | call | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|\n",
        cfg.pairs
    ));
    for (what, key, samples) in rows {
        let (p50, p99, max) = latency(report, &format!("etcd.uncontended.{key}"), samples);
        report.md(&format!("| {what} | {p50:.2} | {p99:.2} | {max:.2} |\n"));
    }
    report.md("\n");
}

// ---------------------------------------------------------------------------------
// 4. The command against etcdctl lock

/// Whether `unilock --help` mentions `--etcd`.
fn has_etcd_option(unilock: &Path) -> bool {
    Command::new(unilock)
        .arg("--help")
        .output()
        .map(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text).contains("--etcd")
        })
        .unwrap_or(false)
}

/// Wall time of one whole process (spawn to reaped), in ns; panics unless it exits 0.
fn run_once(argv: &[String]) -> f64 {
    let t = Instant::now();
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", argv[0]));
    let ns = t.elapsed().as_nanos() as f64;
    assert!(status.success(), "{argv:?} failed: {status}");
    ns
}

fn bench_commands(cfg: &Config, url: &str, unilock: &Path, report: &mut Report) {
    report.md("### 7.4 The command against `etcdctl lock`\n\n");
    if !has_etcd_option(unilock) {
        let note = format!(
            "skipped: `{} --help` has no `--etcd` option (this build of the command \
             predates it)",
            unilock.display()
        );
        eprintln!("etcd bench: the command row is {note}");
        report.flag("etcd.command.measured", false);
        report.target(
            "`unilock --etcd=URL NAME true` p50 / `etcdctl lock NAME true` p50",
            note.clone(),
            format!("{COMMAND_TARGET:.2}x"),
            "skipped",
        );
        report.md(&format!("{}.\n\n", capitalise(&note)));
        return;
    }
    let etcdctl = which("etcdctl").expect("etcdctl on PATH");
    let true_path = which("true").expect("true on PATH");
    let cmds: [(&str, &str, Vec<String>); 3] = [
        (
            "unilock",
            "`unilock --etcd=URL NAME true`",
            vec![
                unilock.display().to_string(),
                format!("--etcd={url}"),
                COMMAND_NAME.into(),
                "true".into(),
            ],
        ),
        (
            "etcdctl",
            "`etcdctl --endpoints=URL lock NAME true`",
            vec![
                etcdctl.display().to_string(),
                format!("--endpoints={url}"),
                "lock".into(),
                COMMAND_NAME.into(),
                "true".into(),
            ],
        ),
        (
            "true",
            "`true` alone",
            vec![true_path.display().to_string()],
        ),
    ];
    for (_, _, argv) in &cmds {
        for _ in 0..3 {
            run_once(argv);
        }
    }
    let mut times = vec![Vec::new(); cmds.len()];
    for _ in 0..cfg.commands {
        for (i, (_, _, argv)) in cmds.iter().enumerate() {
            times[i].push(run_once(argv));
        }
    }
    report.flag("etcd.command.measured", true);
    report.md(&format!(
        "Whole processes, spawned and reaped in turn from this program, interleaved, {} \
         runs of each after 3 of warm-up: each takes the free lock NAME in the member, \
         runs `true` under it, releases it and exits (wall time per run). `etcdctl` is \
         etcd's own client (Go, over gRPC rather than the JSON gateway; the same key \
         layout and waiting order).\n\n\
         | command | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|\n",
        cfg.commands
    ));
    let mut p = Vec::new();
    for ((key, what, _), t) in cmds.iter().zip(&times) {
        let (p50, p99, max) = latency(report, &format!("etcd.command.{key}"), t);
        p.push((p50, p99));
        report.md(&format!("| {what} | {p50:.2} | {p99:.2} | {max:.2} |\n"));
    }
    let ratio50 = p[0].0 / p[1].0;
    let ratio99 = p[0].1 / p[1].1;
    report.num("etcd.command.vs_etcdctl.p50", ratio50);
    report.num("etcd.command.vs_etcdctl.p99", ratio99);
    let met = ratio50 <= COMMAND_TARGET;
    report.target(
        "`unilock --etcd=URL NAME true` p50 / `etcdctl lock NAME true` p50",
        format!("{ratio50:.2}x ({:.2} ms / {:.2} ms)", p[0].0, p[1].0),
        format!("{COMMAND_TARGET:.2}x"),
        yes_no(met),
    );
    report.md(&format!(
        "\n- unilock / etcdctl: p50 {ratio50:.2}x, p99 {ratio99:.2}x (target: p50 at most \
         {COMMAND_TARGET:.2}x, no slower: {}).\n\n",
        yes_no(met)
    ));
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// The path of `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------
// 5. Threads and memory in a host process, and the library's size

/// Threads and VmRSS (KiB) of this process (`/proc/self/status`), and the bytes
/// malloc has handed out (glibc `mallinfo2`: `uordblks + hblkhd`, every arena).
fn status() -> (u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/self/status"))
    };
    // SAFETY: mallinfo2 takes no argument and returns a plain struct.
    let mi = unsafe { libc::mallinfo2() };
    (
        field("Threads:"),
        field("VmRSS:"),
        (mi.uordblks + mi.hblkhd) as u64,
    )
}

/// The memory measurement, in a fresh process: one line of JSON on stdout.
fn memory_main(url: &str, name: &str, cycles: usize) {
    die_with_parent();
    let options = Options::new().backend(Backend::Etcd).etcd_endpoints(url);
    let before = status();
    let lock = Lock::open(name, &options).expect("open");
    let opened = status();
    lock.lock(Mode::Exclusive, 0, 0, None).expect("lock");
    let holding = status();
    lock.unlock(0, 0).expect("unlock");
    lock.close().expect("close");
    let closed = status();
    // The keep-alive thread ends on its own once told to: how long it takes.
    let t = Instant::now();
    while status().0 > before.0 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_micros(100));
    }
    let settled = status();
    let settle_ms = t.elapsed().as_secs_f64() * 1e3;
    let cycle = || {
        let lock = Lock::open(name, &options).expect("open");
        lock.lock(Mode::Exclusive, 0, 0, None).expect("lock");
        lock.unlock(0, 0).expect("unlock");
        lock.close().expect("close");
    };
    (0..cycles).for_each(|_| cycle());
    std::thread::sleep(Duration::from_millis(50));
    let cycled = status();
    (cycles..5 * cycles).for_each(|_| cycle());
    std::thread::sleep(Duration::from_millis(50));
    let cycled5 = status();
    let stage = |s: (u64, u64, u64)| json!({"threads": s.0, "rss_kib": s.1, "heap_bytes": s.2});
    println!(
        "{}",
        json!({
            "before": stage(before), "opened": stage(opened), "holding": stage(holding),
            "closed": stage(closed), "settled": stage(settled), "settle_ms": settle_ms,
            "cycled": stage(cycled), "cycled5": stage(cycled5),
        })
    );
}

/// The size of a stripped copy of `library`, in bytes.
fn stripped_size(library: &Path, dir: &Path) -> Option<u64> {
    let copy = dir.join("stripped.so");
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&copy)
        .arg(library)
        .status()
        .is_ok_and(|s| s.success());
    let size = std::fs::metadata(&copy).ok().map(|m| m.len());
    let _ = std::fs::remove_file(&copy);
    if ok { size } else { None }
}

fn bench_memory(
    cfg: &Config,
    url: &str,
    libs: (&Path, Option<&Path>),
    dir: &Path,
    report: &mut Report,
) {
    let out = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--memory", url, MEMORY_NAME, &cfg.cycles.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("run the memory measurement");
    assert!(out.status.success(), "the memory measurement failed");
    let m: Value = serde_json::from_slice(&out.stdout).expect("the memory measurement's JSON");
    let stages = [
        ("before", "before opening an ETCD handle"),
        ("opened", "after `Lock::open` (no request made yet)"),
        ("holding", "holding the lock (after `lock`)"),
        ("closed", "just after `unlock` and `close`"),
        ("settled", "once the keep-alive thread has ended"),
        ("cycled", "after more open, lock, unlock, close cycles"),
        ("cycled5", "after more such cycles"),
    ];
    let get = |stage: &str, field: &str| m[stage][field].as_i64().unwrap_or(0);
    let settle_ms = m["settle_ms"].as_f64().unwrap_or(0.0);
    let ended = if get("closed", "threads") <= get("before", "threads") {
        "had ended by the time `close` returned".to_owned()
    } else {
        format!("ended {settle_ms:.1} ms after `close` returned")
    };
    report.md(&format!(
        "### 7.5 Threads and memory in a host process, and the library's size\n\n\
         A fresh process (this program re-run with `--memory`, which links the library \
         like any host program) reads `Threads` and `VmRSS` in `/proc/self/status` and \
         the bytes malloc has handed out (glibc `mallinfo2`: `uordblks + hblkhd`, every \
         arena) at each step; the changes are from the first line. The handle makes no \
         request and no thread until its first `lock`; the lease's keep-alive thread \
         (`unilock-lease`) lives while the lock is held (and while a call waits) and here \
         {ended}. The last two lines show whether repeated use grows the process.\n\n\
         | step | threads | change | VmRSS KiB | change | heap KiB | change |\n\
         |---|---:|---:|---:|---:|---:|---:|\n"
    ));
    for (key, what) in stages {
        let threads = get(key, "threads");
        let rss = get(key, "rss_kib");
        let heap = get(key, "heap_bytes");
        report.num(format!("etcd.memory.{key}.threads"), threads as f64);
        report.num(format!("etcd.memory.{key}.rss_kib"), rss as f64);
        report.num(format!("etcd.memory.{key}.heap_bytes"), heap as f64);
        let what = match key {
            "cycled" => format!("after {} more open, lock, unlock, close cycles", cfg.cycles),
            "cycled5" => format!("after {} such cycles in all", 5 * cfg.cycles),
            _ => what.to_owned(),
        };
        report.md(&format!(
            "| {what} | {threads} | {:+} | {rss} | {:+} | {:.1} | {:+.1} |\n",
            threads - get("before", "threads"),
            rss - get("before", "rss_kib"),
            heap as f64 / 1024.0,
            (heap - get("before", "heap_bytes")) as f64 / 1024.0,
        ));
    }
    report.num(
        "etcd.memory.settle_ms",
        m["settle_ms"].as_f64().unwrap_or(0.0),
    );
    report.md("\n");

    let with = stripped_size(libs.0, dir);
    let without = libs.1.and_then(|l| stripped_size(l, dir));
    report.md("| C library | stripped size |\n|---|---:|\n");
    match with {
        Some(b) => {
            report.num("etcd.library.stripped_bytes", b as f64);
            report.md(&format!(
                "| `libunilock.so` as `make` builds it (with the `etcd` feature) | {} KiB |\n",
                b / 1024
            ));
        }
        None => report.md(&format!(
            "| `libunilock.so` | not measured ({} could not be stripped) |\n",
            libs.0.display()
        )),
    }
    if let Some(b) = without {
        report.num("etcd.library.without_etcd.stripped_bytes", b as f64);
        report.md(&format!(
            "| the same, built without the `etcd` feature | {} KiB |\n",
            b / 1024
        ));
        if let Some(w) = with {
            report.md(&format!(
                "| what the ETCD backend adds (its code, ureq, rustls, ring, serde_json, \
                 base64) | {} KiB ({:.1}x) |\n",
                (w as i64 - b as i64) / 1024,
                w as f64 / b as f64
            ));
        }
    }
    report.md("\n");
}

// ---------------------------------------------------------------------------------

/// The first of `candidates` that exists, relative to the manifest directory (the
/// library's, or bench/peers's when built there).
fn in_tree(relative: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let here = manifest.join(relative);
    if here.exists() {
        return here;
    }
    manifest.join("../..").join(relative)
}

/// `df`'s file system type and device of `dir`.
fn file_system(dir: &Path) -> String {
    Command::new("df")
        .args(["--output=fstype,source"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text.lines().nth(1)?.split_whitespace().collect::<Vec<_>>();
            Some(format!("{} on {}", line.first()?, line.get(1)?))
        })
        .unwrap_or_else(|| "unknown".into())
}

fn etcd_version() -> String {
    Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .next()
                .and_then(|l| l.strip_prefix("etcd Version: "))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--watcher") => {
            return watcher_main(
                &args[1],
                &args[2],
                args.get(3).is_some_and(|a| a == "prefix"),
            );
        }
        Some("--holder") => return holder_main(&args[1], &args[2..]),
        Some("--memory") => {
            return memory_main(&args[1], &args[2], args[3].parse().expect("cycles"));
        }
        _ => {}
    }
    let mut quick = false;
    let (mut markdown, mut json_out, mut targets) = (None, None, None);
    let mut etcd_dir: Option<PathBuf> = None;
    let mut unilock = in_tree("target/release/unilock");
    let mut library = in_tree("target/release/libunilock.so");
    let mut without: Option<PathBuf> = None;
    let mut only: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| panic!("{a} needs a value"))
        };
        match a.as_str() {
            "--quick" => quick = true,
            "--markdown" => markdown = Some(value()),
            "--json" => json_out = Some(value()),
            "--targets" => targets = Some(value()),
            "--etcd-dir" => etcd_dir = Some(value().into()),
            "--unilock" => unilock = value().into(),
            "--library" => library = value().into(),
            "--library-without-etcd" => without = Some(value().into()),
            "--only" => only = Some(value()),
            // `cargo bench` passes --bench; other harness options mean nothing here.
            _ => {}
        }
    }
    let cfg = Config::new(quick);
    let started = Instant::now();
    let dir = etcd_dir.unwrap_or_else(|| {
        let base = std::env::var_os("TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
        base.join(format!("unilock-bench-etcd-{}", std::process::id()))
    });
    let member = Member::start(&in_tree("scripts/etcd-server.sh"), &dir);
    let url = member.url.clone();
    eprintln!("etcd bench: member at {url}, data in {}", dir.display());
    let gw = Gateway::new(&url);

    let mut report = Report::default();
    report.flag("quick", cfg.quick);
    report.text("etcd.version", &etcd_version());
    let fs = file_system(&dir);
    report.text("etcd.data_dir_fs", &fs);
    report.md(&format!(
        "A single etcd {} member started by the benchmark on loopback ports (through \
         `scripts/etcd-server.sh` with `ETCD_SERVER_FSYNC=1`: etcd's own fsync of its log \
         kept on, as in production, so every write waits for the disk; heartbeat 10 ms, \
         election timeout 100 ms), with its data in `{}` ({fs}), and stopped at the end. \
         The library reaches it over plain HTTP through the JSON gateway; times are \
         wall-clock (`CLOCK_MONOTONIC`), and the percentiles are nearest-rank.\n\n",
        etcd_version(),
        dir.display(),
    ));

    let wanted = |section: &str| {
        let yes = only
            .as_deref()
            .is_none_or(|o| o.split(',').any(|s| s == section));
        if yes {
            eprintln!("etcd bench: {section}");
        }
        yes
    };
    // The requests' figures explain the hand-off's: measured first, always.
    let requests = bench_requests(&cfg, &gw, &mut report);
    if wanted("pairs") {
        bench_pairs(&cfg, &url, &mut report);
    }
    if wanted("handoff") {
        bench_handoff(&cfg, &url, &gw, &requests, &mut report);
    }
    if wanted("command") {
        bench_commands(&cfg, &url, &unilock, &mut report);
    }
    if wanted("memory") {
        bench_memory(
            &cfg,
            &url,
            (&library, without.as_deref()),
            &dir,
            &mut report,
        );
    }

    report.num("etcd.elapsed_s", started.elapsed().as_secs_f64());
    report.md(&format!(
        "The ETCD run took {:.0} s.\n",
        started.elapsed().as_secs_f64()
    ));
    drop(member);

    let document = report.markdown().to_owned();
    print!("{document}");
    if let Some(path) = markdown {
        std::fs::write(&path, &document).expect("write the Markdown report");
    }
    if let Some(path) = targets {
        std::fs::write(&path, report.targets_md()).expect("write the targets");
    }
    let summary = report.json();
    if let Some(path) = json_out {
        std::fs::write(&path, format!("{summary}\n")).expect("write the JSON summary");
    }
    println!("SUMMARY {}", summary.replace('\n', ""));
}
