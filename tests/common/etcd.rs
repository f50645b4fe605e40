//! Real etcd servers for tests. [`Etcd`] starts private etcd members on free loopback
//! ports, with their data, logs and certificates in a fresh temporary directory, and
//! on drop (also when the test fails or panics) kills every member it started and
//! removes the directory. The members die with the test process too, even when it is
//! SIGKILLed (`PR_SET_PDEATHSIG`).
//!
//! The tests need etcd 3.4 as Debian 12 packages it (`etcd-server` and `etcd-client`:
//! `etcd` and `etcdctl` on `PATH`); where it is missing, starting an [`Etcd`] panics:
//! the tests fail, they are never skipped.
//!
//! The members speak plain http between themselves; their client URLs are
//! `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` for [`Etcd::start_tls`]. The
//! JSON gateway answers on the same port (`POST /v3/kv/range`, ...).
//!
//! The helpers that inspect or change etcd ([`Etcd::put`], [`Etcd::get`],
//! [`Etcd::keys_with_prefix`], [`Etcd::enable_auth`], ...) go through `etcdctl`, so
//! that tests see etcd independently of the library under test.
//!
//! A member dies when the thread that started it ends (that is what
//! `PR_SET_PDEATHSIG` watches): start, restart and drop an [`Etcd`] in the test's own
//! thread, not in a helper thread that ends before the test does.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::TempDir;

/// How long a start or restart may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a start picks new ports when etcd finds one of them taken.
const BIND_ATTEMPTS: usize = 5;
/// Raft timing (heartbeat, election timeout, in ms) of a single member: it elects
/// itself at once, and it has no peers whose heartbeats could be late.
const SINGLE_TIMING: (u32, u32) = (10, 100);
/// Raft timing of a cluster's members: a killed leader is replaced within about a
/// second, and a busy machine does not make followers start needless elections.
const CLUSTER_TIMING: (u32, u32) = (50, 500);
/// The timeouts of the `etcdctl` runs the harness makes itself.
const CTL_TIMEOUTS: [&str; 2] = ["--dial-timeout=1s", "--command-timeout=3s"];
/// The role [`Etcd::add_user`] grants: read and write on every key.
const READWRITE_ROLE: &str = "readwrite-all";

/// A set of etcd members (one, or a cluster) that the test owns.
pub struct Etcd {
    members: Vec<Member>,
    tls: Option<Tls>,
    /// Root's password once [`Etcd::enable_auth`] has turned authentication on.
    root_password: Option<String>,
    /// The cluster's `--initial-cluster-token`, unique to it, so that no member of
    /// another test's cluster can join it.
    token: String,
    /// The directory of the data, logs and certificates. It is a field, so it is
    /// removed after `Drop::drop` has killed the members.
    dir: TempDir,
}

/// One member: its ports and files, and its process while it runs.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    /// The member's stdout and stderr (etcd logs JSON lines to stderr), appended to
    /// by every run of the member.
    log: PathBuf,
    /// The log's length when the current run started: what this run logged follows it.
    log_start: u64,
    child: Option<Child>,
    /// SIGSTOPped by [`Etcd::stop`] and not yet continued.
    stopped: bool,
    /// The raft member ID (as `etcdctl endpoint status` reports it), 0 until the
    /// member has answered once. It stays the same across restarts.
    id: u64,
    /// Raft heartbeat and election timeout, ms.
    timing: (u32, u32),
}

/// The certificates of a TLS member, all PEM files in the temporary directory.
struct Tls {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// The server requires a client certificate signed by the CA.
    client_auth: bool,
}

/// Why a start attempt failed without panicking.
enum BootError {
    /// A member found its port taken (another process bound it after we freed it).
    PortTaken,
}

/// The path of `tool` on `PATH`, or a panic saying which packages to install.
fn tool(name: &'static str) -> &'static Path {
    fn find(name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    }
    static ETCD: OnceLock<Option<PathBuf>> = OnceLock::new();
    static ETCDCTL: OnceLock<Option<PathBuf>> = OnceLock::new();
    let cell = if name == "etcd" { &ETCD } else { &ETCDCTL };
    cell.get_or_init(|| find(name))
        .as_deref()
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed (not found on PATH); these tests need a real \
             etcd 3.4: apt-get install etcd-server etcd-client"
            )
        })
}

/// `count` distinct loopback ports that were free a moment ago: all bound at once
/// on port 0, then released for etcd to bind.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The bytes of standard base64 `text` (what etcd's JSON gives keys and values in).
fn base64_decode(text: &str) -> Vec<u8> {
    let digit = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {text:?}"),
        }
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | digit(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `command`; panics, naming `what`, with its stderr if it fails.
fn run(mut command: Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{what}: output not UTF-8: {e}"))
}

impl Tls {
    /// Makes with `openssl`, in `dir`: a CA, a server certificate for IP 127.0.0.1 and
    /// DNS localhost, and a client certificate, all ECDSA P-256, valid for two days.
    /// The keys are PKCS#8 ("BEGIN PRIVATE KEY").
    ///
    /// Neither leaf certificate has a common name: with client certificate
    /// authentication, etcd 3.4 takes a client certificate's CN as the etcd user of
    /// gRPC requests that carry no token, and its JSON gateway refuses (400, "CommonName
    /// of client sending a request against gateway will be ignored ...") every request
    /// whose certificate has a CN once auth is enabled. Without one, the certificate
    /// only proves the client may connect, and users authenticate with passwords.
    fn generate(dir: &Path, client_auth: bool) -> Tls {
        let path = |name: &str| dir.join(name);
        let openssl = |args: String| {
            let mut command = Command::new("openssl");
            command
                .args(args.split_whitespace())
                .current_dir(dir)
                .stdin(Stdio::null());
            run(command, &format!("openssl {args}"));
        };
        const KEY: &str = "-nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1";
        openssl(format!(
            "req -x509 -new {KEY} -days 2 -keyout ca.key -out ca.crt -subj /CN=unilock-test-CA"
        ));
        std::fs::write(
            path("server.ext"),
            "basicConstraints = CA:FALSE\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n\
             # etcd's gateway connects to its own gRPC port with the server certificate.\n\
             extendedKeyUsage = serverAuth, clientAuth\n\
             subjectAltName = IP:127.0.0.1, DNS:localhost\n",
        )
        .unwrap();
        std::fs::write(
            path("client.ext"),
            "basicConstraints = CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = clientAuth\n",
        )
        .unwrap();
        for (who, serial) in [("server", 2), ("client", 3)] {
            openssl(format!(
                "req -new {KEY} -keyout {who}.key -out {who}.csr -subj /O=unilock-test-{who}"
            ));
            openssl(format!(
                "x509 -req -in {who}.csr -CA ca.crt -CAkey ca.key -set_serial {serial} -days 2 \
                 -extfile {who}.ext -out {who}.crt"
            ));
        }
        Tls {
            ca: path("ca.crt"),
            server_cert: path("server.crt"),
            server_key: path("server.key"),
            client_cert: path("client.crt"),
            client_key: path("client.key"),
            client_auth,
        }
    }
}

impl Member {
    /// The member's client URL.
    fn url(&self, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// What the current run has logged so far.
    fn log_of_run(&self) -> String {
        let mut text = Vec::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.seek(SeekFrom::Start(self.log_start));
            let _ = f.read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// SIGKILLs the member's process, if it runs, and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped = false;
    }
}

impl Etcd {
    /// One member, plain http on a free loopback port, healthy when this returns.
    pub fn start() -> Etcd {
        Self::launch(1, None)
    }

    /// `n` members forming one cluster (static `--initial-cluster`), each with its
    /// own client and peer port. Returns when every member is healthy and they agree
    /// on a leader. Heartbeat 50 ms, election timeout 500 ms.
    pub fn cluster(n: usize) -> Etcd {
        assert!(n >= 1, "a cluster needs a member");
        Self::launch(n, None)
    }

    /// One member serving https with client certificate authentication
    /// (`--client-cert-auth`): a client needs [`Etcd::ca`] to trust the server and
    /// [`Etcd::client_cert`] and [`Etcd::client_key`] to be let in.
    pub fn start_tls() -> Etcd {
        Self::launch(1, Some(true))
    }

    /// One member serving https that asks for no client certificate: a client needs
    /// only [`Etcd::ca`].
    pub fn start_tls_no_client_auth() -> Etcd {
        Self::launch(1, Some(false))
    }

    /// Starts `n` members, TLS ones if `tls` is given (whether clients need a
    /// certificate), trying new ports when a member finds one of its ports taken.
    fn launch(n: usize, tls: Option<bool>) -> Etcd {
        tool("etcd");
        tool("etcdctl");
        static CLUSTERS: AtomicU32 = AtomicU32::new(0);
        let dir = TempDir::new("etcd");
        let tls = tls.map(|client_auth| Tls::generate(&dir.0, client_auth));
        let mut etcd = Etcd {
            members: Vec::new(),
            tls,
            root_password: None,
            token: String::new(),
            dir,
        };
        let timing = if n == 1 {
            SINGLE_TIMING
        } else {
            CLUSTER_TIMING
        };
        for attempt in 0..BIND_ATTEMPTS {
            let ports = free_ports(2 * n);
            let base = etcd.dir.0.join(format!("try{attempt}"));
            etcd.members = (0..n)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                    data_dir: base.join(format!("m{i}")),
                    log: base.join(format!("m{i}.log")),
                    log_start: 0,
                    child: None,
                    stopped: false,
                    id: 0,
                    timing,
                })
                .collect();
            std::fs::create_dir(&base).unwrap();
            let cluster = CLUSTERS.fetch_add(1, Ordering::Relaxed);
            etcd.token = format!("unilock-test-{}-{cluster}", std::process::id());
            match etcd.boot() {
                Ok(()) => return etcd,
                Err(BootError::PortTaken) => etcd.kill_all(),
            }
        }
        panic!("etcd found its ports taken {BIND_ATTEMPTS} times in a row");
    }

    /// Starts every member of a new cluster and waits until they are ready. Members
    /// start one after the other, each once the ones before serve their peers: a new
    /// member asks its peers whether the cluster already exists, and waits a second
    /// for peers that listen but do not answer yet.
    fn boot(&mut self) -> Result<(), BootError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let n = self.members.len();
        for i in 0..n {
            self.spawn(i);
            if n > 1 {
                self.wait_logged(i, "serving peer traffic", Duration::from_secs(2))?;
            }
        }
        self.wait_ready(&(0..n).collect::<Vec<_>>(), deadline)
    }

    /// Starts member `i`'s process, its output appended to its log. The same
    /// arguments start a new member and restart one: with data, etcd ignores
    /// `--initial-cluster` and resumes its own cluster.
    fn spawn(&mut self, i: usize) {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let tls = self.tls.as_ref();
        let m = &self.members[i];
        let (heartbeat, election) = m.timing;
        let client_url = m.url(tls.is_some());
        let mut command = Command::new(tool("etcd"));
        command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", &heartbeat.to_string()])
            .args(["--election-timeout", &election.to_string()])
            // In 3.4.23 though not in its --help: no fsync of the WAL and database.
            // A killed member loses nothing (the page cache survives it), only a
            // crash of the machine would.
            .arg("--unsafe-no-fsync")
            // Passwords hashed at the lowest cost: authenticating takes no 50 ms.
            .args(["--bcrypt-cost", "4"])
            // The default logger, capnslog, is deprecated and says so.
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if let Some(t) = tls {
            command
                .arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key);
            if t.client_auth {
                command
                    .arg("--trusted-ca-file")
                    .arg(&t.ca)
                    .arg("--client-cert-auth");
            }
        }
        // etcd reads any flag from an ETCD_* variable too; none of the caller's apply.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD") {
                command.env_remove(name);
            }
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let log_start = log.metadata().unwrap().len();
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and makes only
        // system calls that are async-signal-safe and take integers (prctl, getppid);
        // it neither allocates nor takes locks.
        unsafe {
            command.pre_exec(move || {
                // Die with the thread that started the member, even if the test
                // process is SIGKILLed.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The test process died before the prctl: do not outlive it.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", tool("etcd").display()));
        let m = &mut self.members[i];
        m.child = Some(child);
        m.stopped = false;
        m.log_start = log_start;
    }

    /// Checks that member `i` still runs: a panic with its log if it exited, unless
    /// it found its port taken.
    fn check_alive(&mut self, i: usize) -> Result<(), BootError> {
        let m = &mut self.members[i];
        let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().unwrap()) else {
            return Ok(());
        };
        m.child = None;
        let log = m.log_of_run();
        if log.contains("address already in use") {
            return Err(BootError::PortTaken);
        }
        panic!(
            "etcd member {i} ({}) exited ({status}) while starting; its log ends:\n{}",
            m.log.display(),
            tail(&log, 30)
        );
    }

    /// Waits until member `i`'s current run has logged `message`, or `limit` has
    /// passed (then the caller goes on without it: the message is only a hint).
    fn wait_logged(&mut self, i: usize, message: &str, limit: Duration) -> Result<(), BootError> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            self.check_alive(i)?;
            if self.members[i].log_of_run().contains(message) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Waits until members `which` serve clients, agree on a leader, and commit a
    /// read (`etcdctl endpoint health`); panics with their logs at `deadline`.
    fn wait_ready(&mut self, which: &[usize], deadline: Instant) -> Result<(), BootError> {
        let start = Instant::now();
        loop {
            for &i in which {
                self.check_alive(i)?;
            }
            // etcd 3.4 accepts client connections before it serves them; its log says
            // when it does. After two seconds without that line, ask anyway.
            let serving = start.elapsed() > Duration::from_secs(2)
                || which.iter().all(|&i| {
                    self.members[i]
                        .log_of_run()
                        .contains("serving client traffic")
                });
            if serving && self.agreed_leader(which).is_some() && self.healthy(which) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: String = which
                    .iter()
                    .map(|&i| {
                        let m = &self.members[i];
                        format!(
                            "\n--- member {i} ({}) ---\n{}",
                            m.log.display(),
                            tail(&m.log_of_run(), 20)
                        )
                    })
                    .collect();
                panic!(
                    "etcd members {which:?} not healthy after {:?}; their logs end:{logs}",
                    START_TIMEOUT
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `etcdctl endpoint status` of members `which` (those that answer): for each,
    /// (member index, its member ID, the leader's ID or 0, raft term). Learns the
    /// member IDs.
    fn status(&mut self, which: &[usize]) -> Vec<(usize, u64, u64, u64)> {
        let statuses = self.status_of(which);
        for &(i, id, _, _) in &statuses {
            self.members[i].id = id;
        }
        statuses
    }

    /// [`Etcd::status`] without learning the IDs.
    fn status_of(&self, which: &[usize]) -> Vec<(usize, u64, u64, u64)> {
        if which.is_empty() {
            return Vec::new();
        }
        let urls: Vec<String> = which.iter().map(|&i| self.endpoint(i)).collect();
        let mut command = self.ctl_command(&urls.join(","), true, self.root_user());
        command
            .args(CTL_TIMEOUTS)
            .args(["endpoint", "status", "-w", "json"]);
        let Ok(out) = command.output() else {
            return Vec::new();
        };
        // It prints the members that answered, and fails if one did not.
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return Vec::new();
        };
        let u = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        json.as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let url = entry["Endpoint"].as_str()?;
                let i = which[urls.iter().position(|u| u == url)?];
                let s = &entry["Status"];
                Some((
                    i,
                    u(&s["header"]["member_id"]),
                    u(&s["leader"]),
                    u(&s["raftTerm"]),
                ))
            })
            .collect()
    }

    /// The leader that all of members `which` name, if they all answer and name the
    /// same one, and it is a running member that is not stopped.
    fn agreed_leader(&mut self, which: &[usize]) -> Option<usize> {
        let statuses = self.status(which);
        let &(_, _, leader, _) = statuses.first()?;
        if statuses.len() != which.len() || leader == 0 || statuses.iter().any(|s| s.2 != leader) {
            return None;
        }
        let m = self.members.iter().position(|m| m.id == leader)?;
        (self.is_running(m) && !self.members[m].stopped).then_some(m)
    }

    /// Whether every one of members `which` commits a read (`etcdctl endpoint health`).
    fn healthy(&self, which: &[usize]) -> bool {
        let urls: Vec<String> = which.iter().map(|&i| self.endpoint(i)).collect();
        let mut command = self.ctl_command(&urls.join(","), true, self.root_user());
        command.args(CTL_TIMEOUTS).args(["endpoint", "health"]);
        command.output().is_ok_and(|o| o.status.success())
    }

    /// Root's credentials once auth is enabled.
    fn root_user(&self) -> Option<(&str, &str)> {
        self.root_password.as_deref().map(|p| ("root", p))
    }

    /// An `etcdctl` command for `endpoints`: the API version, the CA (TLS), the
    /// client certificate if `client_cert`, the credentials `user`.
    fn ctl_command(
        &self,
        endpoints: &str,
        client_cert: bool,
        user: Option<(&str, &str)>,
    ) -> Command {
        let mut command = Command::new(tool("etcdctl"));
        // etcdctl reads its flags from ETCDCTL_* variables too; none of the caller's apply.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCDCTL") {
                command.env_remove(name);
            }
        }
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .stdin(Stdio::null());
        if let Some(t) = &self.tls {
            command.arg("--cacert").arg(&t.ca);
            if client_cert {
                command
                    .arg("--cert")
                    .arg(&t.client_cert)
                    .arg("--key")
                    .arg(&t.client_key);
            }
        }
        if let Some((name, password)) = user {
            command.arg(format!("--user={name}:{password}"));
        }
        command
    }

    /// An `etcdctl` command (API 3) for [`Etcd::endpoints`], with the CA and client
    /// certificate when TLS, and root's credentials (`--user root:PASSWORD`) once
    /// [`Etcd::enable_auth`] has run. Add the subcommand and its arguments; a later
    /// `--endpoints=...` replaces the preset one.
    pub fn etcdctl(&self) -> Command {
        self.etcdctl_with(true, self.root_user())
    }

    /// An `etcdctl` command like [`Etcd::etcdctl`], but with the client certificate
    /// only if `client_cert` (TLS; the CA is always given), and with the credentials
    /// `user` (name, password) or none.
    pub fn etcdctl_with(&self, client_cert: bool, user: Option<(&str, &str)>) -> Command {
        self.ctl_command(&self.endpoints(), client_cert, user)
    }

    /// Runs [`Etcd::etcdctl`] with `args`; returns its stdout, or panics with its
    /// stderr if it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut command = self.etcdctl();
        command.args(args);
        run(command, &format!("etcdctl {}", args.join(" ")))
    }

    /// Runs [`Etcd::etcdctl_with`] with `args`, whatever the outcome.
    pub fn ctl_with(&self, client_cert: bool, user: Option<(&str, &str)>, args: &[&str]) -> Output {
        self.etcdctl_with(client_cert, user)
            .args(args)
            .output()
            .expect("run etcdctl")
    }

    /// Sets `key` to `value` (through `etcdctl put`).
    pub fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", "--", key, value]);
    }

    /// The value of `key`, or `None` if it does not exist (a linearizable
    /// `etcdctl get`). Panics if the value is not UTF-8.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl(&["get", "-w", "json", "--", key]);
        let json: serde_json::Value = serde_json::from_str(&out).expect("etcdctl get's JSON");
        let kv = json["kvs"].as_array()?.first()?;
        let value = base64_decode(kv["value"].as_str().unwrap_or(""));
        Some(String::from_utf8(value).expect("a UTF-8 value"))
    }

    /// The keys that start with `prefix`, in etcd's (byte) order; all keys for "".
    /// Panics if a key is not UTF-8.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let out = self.ctl(&["get", "--prefix", "--keys-only", "-w", "json", "--", prefix]);
        let json: serde_json::Value = serde_json::from_str(&out).expect("etcdctl get's JSON");
        json["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| {
                let key = base64_decode(kv["key"].as_str().expect("a key"));
                String::from_utf8(key).expect("a UTF-8 key")
            })
            .collect()
    }

    /// Turns on authentication with a `root` user of password `root_password` (in
    /// the `root` role). From then on [`Etcd::etcdctl`] and the helpers use root's
    /// credentials, and requests without credentials are refused.
    pub fn enable_auth(&mut self, root_password: &str) {
        assert!(self.root_password.is_none(), "auth is enabled already");
        self.ctl(&["user", "add", &format!("root:{root_password}")]);
        self.ctl(&["role", "add", "root"]);
        self.ctl(&["user", "grant-role", "root", "root"]);
        self.ctl(&["auth", "enable"]);
        self.root_password = Some(root_password.to_string());
    }

    /// Adds the user `user` with `password`, in a role that may read and write
    /// every key. Before or after [`Etcd::enable_auth`].
    pub fn add_user(&self, user: &str, password: &str) {
        let role_exists = self
            .etcdctl()
            .args(["role", "get", READWRITE_ROLE])
            .output()
            .is_ok_and(|o| o.status.success());
        if !role_exists {
            self.ctl(&["role", "add", READWRITE_ROLE]);
            // The empty key with --prefix: every key.
            let grant = ["role", "grant-permission", "--prefix=true"];
            self.ctl(&[&grant[..], &[READWRITE_ROLE, "readwrite", ""]].concat());
        }
        self.ctl(&["user", "add", &format!("{user}:{password}")]);
        self.ctl(&["user", "grant-role", user, READWRITE_ROLE]);
    }

    /// The CA certificate (PEM) that signed the server's and the client's. Panics
    /// unless TLS.
    pub fn ca(&self) -> PathBuf {
        self.tls().ca.clone()
    }

    /// The client certificate (PEM). Panics unless TLS.
    pub fn client_cert(&self) -> PathBuf {
        self.tls().client_cert.clone()
    }

    /// The client certificate's key (PEM, PKCS#8: "BEGIN PRIVATE KEY"). Panics
    /// unless TLS.
    pub fn client_key(&self) -> PathBuf {
        self.tls().client_key.clone()
    }

    fn tls(&self) -> &Tls {
        self.tls.as_ref().expect("an etcd started with TLS")
    }

    /// The number of members, running or not.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether member `i` runs (it was not killed; it may be SIGSTOPped).
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].running()
    }

    /// The client URL of member `i`, e.g. `http://127.0.0.1:40123`, running or not.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].url(self.tls.is_some())
    }

    /// The client URLs of the running members (SIGSTOPped ones included, killed
    /// ones not), in member order, comma-separated.
    pub fn endpoints(&self) -> String {
        (0..self.len())
            .filter(|&i| self.is_running(i))
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URLs of all members, killed ones included, comma-separated.
    pub fn all_endpoints(&self) -> String {
        (0..self.len())
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The process ID of member `i`. Panics if it does not run.
    pub fn pid(&self, i: usize) -> u32 {
        let child = self.members[i].child.as_ref();
        child
            .unwrap_or_else(|| panic!("etcd member {i} does not run"))
            .id()
    }

    /// The member that the running, not stopped members take for the leader (the
    /// answer of the highest raft term), or `None` if none answers or none knows a
    /// leader. Right after the leader dies, its followers still name it until they
    /// time out: see [`Etcd::wait_leader`].
    pub fn leader(&self) -> Option<usize> {
        let live: Vec<usize> = (0..self.len())
            .filter(|&i| self.is_running(i) && !self.members[i].stopped)
            .collect();
        let (_, _, leader, _) = self
            .status_of(&live)
            .into_iter()
            .filter(|s| s.2 != 0)
            .max_by_key(|s| s.3)?;
        self.members.iter().position(|m| m.id == leader)
    }

    /// Waits until the running, not stopped members agree on a leader that is one of
    /// them, and returns it; panics after 10 s.
    pub fn wait_leader(&mut self) -> usize {
        let deadline = Instant::now() + START_TIMEOUT;
        let live: Vec<usize> = (0..self.len())
            .filter(|&i| self.is_running(i) && !self.members[i].stopped)
            .collect();
        loop {
            if let Some(leader) = self.agreed_leader(&live) {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "members {live:?} elected no leader in {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs member `i` and reaps it (nothing if it does not run). Its data stays
    /// for [`Etcd::restart`].
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// SIGKILLs every member.
    pub fn kill_all(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }

    /// SIGSTOPs member `i`, and waits until it has stopped. It keeps its ports: its
    /// clients' requests hang rather than fail.
    pub fn stop(&mut self, i: usize) {
        let pid = self.pid(i);
        // SAFETY: kill takes integers; the pid is our unreaped child's.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) }, 0);
        let stat = format!("/proc/{pid}/stat");
        let deadline = Instant::now() + Duration::from_secs(5);
        // The state follows the command name, which is in parentheses.
        while !std::fs::read_to_string(&stat).is_ok_and(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        }) {
            assert!(Instant::now() < deadline, "etcd member {i} did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
        self.members[i].stopped = true;
    }

    /// SIGCONTs member `i` after [`Etcd::stop`].
    pub fn cont(&mut self, i: usize) {
        let pid = self.pid(i);
        // SAFETY: kill takes integers; the pid is our unreaped child's.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) }, 0);
        self.members[i].stopped = false;
    }

    /// Starts member `i` again (killing it first if it runs) on the same ports and
    /// data directory: it rejoins its cluster from its data. Returns when it is
    /// healthy, which needs a quorum of the cluster.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.rerun(&[i]);
    }

    /// Starts again every member that does not run (after [`Etcd::kill_all`], or
    /// the loss of a quorum, which [`Etcd::restart`] of one member cannot mend),
    /// all at once, and waits until they are healthy.
    pub fn restart_all(&mut self) {
        let dead: Vec<usize> = (0..self.len()).filter(|&i| !self.is_running(i)).collect();
        self.rerun(&dead);
    }

    /// Starts members `which` from their data and waits until they are healthy.
    fn rerun(&mut self, which: &[usize]) {
        for &i in which {
            self.spawn(i);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        if let Err(BootError::PortTaken) = self.wait_ready(which, deadline) {
            panic!("etcd members {which:?} cannot restart: another process took a port");
        }
    }

    /// The temporary directory of the members' data, logs and certificates.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

impl Drop for Etcd {
    /// SIGKILLs every member process and reaps it; then the directory goes (the
    /// `dir` field's drop). When the test is panicking, first shows the end of each
    /// member's log.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, m) in self.members.iter().enumerate() {
                eprintln!(
                    "--- etcd member {i} log ({}), last lines ---\n{}",
                    m.log.display(),
                    tail(&m.log_of_run(), 15)
                );
            }
        }
        self.kill_all();
    }
}
