//! etcd's v3 API through its JSON gateway: HTTP/1.1 `POST /v3/...` on the client port,
//! JSON bodies, byte strings in base64 and 64-bit integers as decimal strings.
//!
//! The gateway is part of every etcd server since 3.3 and speaks the same API as the
//! gRPC clients (`etcdctl`, Go's clientv3), so a plain HTTP client does the work:
//! no gRPC stack, no async runtime, no thread of its own. Calls fail over between the
//! endpoints in order, starting from the last one that answered.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::net::ToSocketAddrs;

use ureq::Agent;
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::{Error, Options, Result};

/// The lease TTL when the options give none (seconds).
pub(crate) const DEFAULT_TTL: u32 = 10;
/// How long one request may take when the call's own deadline is later (as etcdctl's
/// `--command-timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may take to open (as etcdctl's `--dial-timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a call keeps trying while the cluster answers but cannot serve (no leader,
/// an election under way), when its own deadline is later.
const UNAVAILABLE_BUDGET: Duration = Duration::from_secs(5);
/// The largest response body read (a list of a very long queue stays far below).
const MAX_BODY: u64 = 64 << 20;

/// Where and how to reach etcd: from the options, else the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Config {
    /// Client URLs, `http://host:port` or `https://host:port`, without a trailing `/`.
    pub(crate) endpoints: Vec<String>,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    /// Lease TTL in seconds.
    pub(crate) ttl: u32,
}

/// The first of these environment variables that is set and not empty.
fn env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| std::env::var(n).ok())
        .find(|v| !v.is_empty())
}

impl Config {
    /// The options' settings, each missing one from the environment:
    /// `UNILOCK_ETCD_ENDPOINTS` then `ETCDCTL_ENDPOINTS` (else `http://127.0.0.1:2379`),
    /// `UNILOCK_ETCD_CACERT`/`ETCDCTL_CACERT`, `..._CERT`, `..._KEY`, `..._USER`
    /// (`name` or `name:password`) and `..._PASSWORD`.
    pub(crate) fn from_options(o: &Options) -> Result<Config> {
        let pick = |given: &Option<String>, suffix: &str| {
            given.clone().filter(|s| !s.is_empty()).or_else(|| {
                env(&[
                    &format!("UNILOCK_ETCD_{suffix}"),
                    &format!("ETCDCTL_{suffix}"),
                ])
            })
        };
        let endpoints = pick(&o.etcd.endpoints, "ENDPOINTS")
            .unwrap_or_else(|| "http://127.0.0.1:2379".to_owned());
        let endpoints = parse_endpoints(&endpoints)?;
        let path = |given: &Option<String>, suffix: &str| pick(given, suffix).map(PathBuf::from);
        let mut user = pick(&o.etcd.user, "USER");
        let mut password = pick(&o.etcd.password, "PASSWORD");
        if let Some((name, pass)) = user.clone().as_deref().and_then(|u| u.split_once(':')) {
            user = Some(name.to_owned());
            password.get_or_insert_with(|| pass.to_owned());
        }
        if user.is_none() && password.is_some() {
            return Err(Error::new(
                libc::EINVAL,
                "an etcd password was given without a user name",
            ));
        }
        let cfg = Config {
            ca: path(&o.etcd.ca, "CACERT"),
            cert: path(&o.etcd.cert, "CERT"),
            key: path(&o.etcd.key, "KEY"),
            user,
            password,
            endpoints,
            ttl: if o.etcd.ttl_s == 0 {
                DEFAULT_TTL
            } else {
                o.etcd.ttl_s
            },
        };
        if cfg.cert.is_some() != cfg.key.is_some() {
            return Err(Error::new(
                libc::EINVAL,
                "an etcd client certificate needs its key, and a key its certificate",
            ));
        }
        Ok(cfg)
    }
}

/// Splits a comma-separated endpoint list; a bare `host:port` means `http://`.
fn parse_endpoints(list: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let url = if e.contains("://") {
            e.to_owned()
        } else {
            format!("http://{e}")
        };
        let url = url.trim_end_matches('/').to_owned();
        let valid = url.split_once("://").is_some_and(|(scheme, rest)| {
            matches!(scheme, "http" | "https")
                && !rest.is_empty()
                && !rest.contains(['/', ' ', '?', '#', '@'])
        });
        if !valid {
            return Err(Error::new(
                libc::EINVAL,
                format!(
                    "etcd endpoint {e:?} is not a client URL (http://HOST:PORT or \
                     https://HOST:PORT)"
                ),
            ));
        }
        out.push(url);
    }
    if out.is_empty() {
        return Err(Error::new(libc::EINVAL, "the etcd endpoint list is empty"));
    }
    Ok(out)
}

/// Why a request failed.
#[derive(Debug)]
enum Failure {
    /// No answer: the connection or the transfer failed.
    Transport(Error),
    /// The cluster answered but cannot serve now (no leader, an election, a stopped
    /// member): another endpoint, or the same one a little later, may.
    Unavailable(Error),
    /// A definite answer (a refused request, a bad argument, an expired lease).
    Answer(Error),
    /// The auth token expired: authenticate again.
    TokenExpired,
}

/// One etcd cluster as this handle reaches it.
pub(crate) struct Client {
    endpoints: Vec<String>,
    /// The endpoint to try first: the last one that answered.
    current: AtomicUsize,
    agent: Agent,
    tls: TlsConfig,
    credentials: Option<(String, String)>,
    token: Mutex<Option<String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials or the token.
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// How a watch ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WatchEnd {
    /// The watched key was deleted.
    Deleted,
    /// The stream ended without that (a timeout, a closed connection, a cancelled or
    /// compacted watch): look again.
    Ended,
}

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("cannot read the etcd {what} {}: {e}", path.display()),
        )
    })
}

fn pem_error(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(
        libc::EINVAL,
        format!("the etcd {what} {} is not usable PEM: {e}", path.display()),
    )
}

/// The certificates of a PEM file.
fn certificates(what: &str, path: &Path) -> Result<Vec<Certificate<'static>>> {
    let pem = read_file(what, path)?;
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(c) = item.map_err(|e| pem_error(what, path, e))? {
            out.push(c);
        }
    }
    if out.is_empty() {
        return Err(pem_error(what, path, "no certificate in it"));
    }
    Ok(out)
}

impl Client {
    /// A client for `cfg` (reads the TLS files now; connects on the first call).
    pub(crate) fn new(cfg: &Config) -> Result<Client> {
        let mut tls = TlsConfig::builder();
        if let Some(ca) = &cfg.ca {
            tls = tls.root_certs(RootCerts::new_with_certs(&certificates(
                "CA certificate",
                ca,
            )?));
        }
        if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
            let chain = certificates("client certificate", cert)?;
            let pem = read_file("client key", key)?;
            let key = PrivateKey::from_pem(&pem).map_err(|e| pem_error("client key", key, e))?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        let tls = tls.build();
        Ok(Client {
            endpoints: cfg.endpoints.clone(),
            current: AtomicUsize::new(0),
            agent: make_agent(&tls),
            tls,
            credentials: cfg
                .user
                .clone()
                .map(|u| (u, cfg.password.clone().unwrap_or_default())),
            token: Mutex::new(None),
        })
    }

    /// The endpoints, for messages.
    pub(crate) fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// An agent of its own for a lock call, so that [`Agent::shutdown`] (a cancel)
    /// ends that call's requests and nothing else.
    pub(crate) fn call_agent(&self) -> Agent {
        make_agent(&self.tls)
    }

    /// [`Client::call_via`] through the client's own agent.
    pub(crate) fn call(
        &self,
        path: &str,
        body: &Value,
        deadline: Option<Instant>,
    ) -> Result<Value> {
        self.call_via(&self.agent, path, body, deadline)
    }

    /// Calls `path` (`/v3/kv/range`, ...) with `body`, failing over between the
    /// endpoints, before `deadline` (and within [`REQUEST_TIMEOUT`] per request). While
    /// the cluster answers but cannot serve (an election), tries again for up to
    /// [`UNAVAILABLE_BUDGET`].
    pub(crate) fn call_via(
        &self,
        agent: &Agent,
        path: &str,
        body: &Value,
        deadline: Option<Instant>,
    ) -> Result<Value> {
        let body = body.to_string();
        let started = Instant::now();
        let budget = started + UNAVAILABLE_BUDGET;
        let give_up = deadline.map_or(budget, |d| d.min(budget));
        let mut pause = Duration::from_millis(20);
        let mut reauthenticated = false;
        let mut retried = false;
        loop {
            let mut errors = Vec::new();
            let mut unavailable = false;
            let n = self.endpoints.len();
            let first = self.current.load(Ordering::Relaxed);
            let mut i = 0;
            while i < n {
                let ep = (first + i) % n;
                let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if remaining == Some(Duration::ZERO) {
                    return Err(Self::unreachable(errors, libc::ETIMEDOUT));
                }
                let limit = remaining.map_or(REQUEST_TIMEOUT, |r| r.min(REQUEST_TIMEOUT));
                match self.post(agent, ep, path, &body, limit) {
                    Ok(v) => {
                        self.current.store(ep, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Err(Failure::Answer(e)) => {
                        self.current.store(ep, Ordering::Relaxed);
                        return Err(e);
                    }
                    Err(Failure::TokenExpired) if !reauthenticated => {
                        reauthenticated = true;
                        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        continue;
                    }
                    Err(Failure::TokenExpired) => {
                        return Err(Error::new(
                            libc::EACCES,
                            "etcd refused a fresh authentication token",
                        ));
                    }
                    Err(Failure::Unavailable(e)) => {
                        unavailable = true;
                        errors.push(e);
                    }
                    Err(Failure::Transport(e)) => errors.push(e),
                }
                i += 1;
            }
            // Every endpoint failed. A connection that broke after it was made (a kept
            // connection to a member that restarted) is made again once, at once.
            let broken = errors.iter().any(|e| {
                ![
                    libc::ECONNREFUSED,
                    libc::ETIMEDOUT,
                    libc::EHOSTUNREACH,
                    libc::EPROTO,
                ]
                .contains(&e.errno())
            });
            if broken && !retried && !unavailable {
                retried = true;
                continue;
            }
            // Connection failures everywhere end the call; a cluster that answers but
            // cannot serve yet gets some more time.
            if !unavailable || Instant::now() + pause >= give_up {
                let errno = if unavailable { libc::EIO } else { 0 };
                return Err(Self::unreachable(errors, errno));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// One error for the failures of every endpoint: the errno of the last one (or
    /// `errno` when not 0) and each endpoint's reason.
    fn unreachable(errors: Vec<Error>, errno: i32) -> Error {
        let errno = if errno != 0 {
            errno
        } else {
            errors.last().map_or(libc::ETIMEDOUT, Error::errno)
        };
        let reasons: Vec<String> = errors.iter().map(|e| e.detail().to_owned()).collect();
        let detail = if reasons.is_empty() {
            "no time left to reach etcd".to_owned()
        } else {
            format!("cannot reach etcd: {}", reasons.join("; "))
        };
        Error::new(errno, detail)
    }

    /// The auth token, authenticating first when there is none.
    fn token(&self, ep: usize, limit: Duration) -> std::result::Result<Option<String>, Failure> {
        let Some((user, password)) = &self.credentials else {
            return Ok(None);
        };
        if let Some(t) = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(Some(t));
        }
        let body = json!({"name": user, "password": password}).to_string();
        let answer = self
            .request(&self.agent, ep, "/v3/auth/authenticate", &body, limit, None)
            .map_err(|f| match f {
                Failure::Answer(e) => Failure::Answer(Error::new(
                    libc::EACCES,
                    format!(
                        "etcd authentication as user {user:?} failed: {}",
                        e.detail()
                    ),
                )),
                other => other,
            })?;
        let token = answer["token"].as_str().unwrap_or_default().to_owned();
        if token.is_empty() {
            return Err(Failure::Answer(Error::new(
                libc::EACCES,
                format!(
                    "etcd gave no token for user {user:?} (is authentication enabled on \
                     the cluster?)"
                ),
            )));
        }
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
        Ok(Some(token))
    }

    /// One request to endpoint `ep`, authenticated when credentials are set.
    fn post(
        &self,
        agent: &Agent,
        ep: usize,
        path: &str,
        body: &str,
        limit: Duration,
    ) -> std::result::Result<Value, Failure> {
        let token = self.token(ep, limit)?;
        self.request(agent, ep, path, body, limit, token.as_deref())
    }

    fn request(
        &self,
        agent: &Agent,
        ep: usize,
        path: &str,
        body: &str,
        limit: Duration,
        token: Option<&str>,
    ) -> std::result::Result<Value, Failure> {
        let url = format!("{}{path}", self.endpoints[ep]);
        let mut req = agent
            .post(&url)
            .header("content-type", "application/json")
            .config()
            .timeout_global(Some(limit))
            .build();
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        let response = req
            .send(body)
            .map_err(|e| Failure::Transport(transport_error(&self.endpoints[ep], &e)))?;
        let status = response.status().as_u16();
        let text = response
            .into_body()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| Failure::Transport(transport_error(&self.endpoints[ep], &e)))?;
        let value: Value = serde_json::from_str(&text).map_err(|_| {
            Failure::Transport(Error::new(
                libc::EPROTO,
                format!(
                    "{}: the answer is not etcd's JSON (HTTP {status}; is this an etcd \
                     client URL?)",
                    self.endpoints[ep]
                ),
            ))
        })?;
        if status == 200 {
            return Ok(value);
        }
        Err(server_error(&self.endpoints[ep], status, &value))
    }

    /// Watches `key` from `revision` on the endpoint that answered last, through
    /// `agent`, until the key is deleted or `limit` passes (or the stream ends, or
    /// [`Agent::shutdown`] on `agent`). A watch that cannot start moves on to the next
    /// endpoint for the next try and returns the error.
    pub(crate) fn watch_delete(
        &self,
        agent: &Agent,
        key: &[u8],
        revision: i64,
        limit: Duration,
    ) -> Result<WatchEnd> {
        let ep = self.current.load(Ordering::Relaxed) % self.endpoints.len();
        let body = json!({"create_request": {
            "key": B64.encode(key),
            "start_revision": revision.to_string(),
        }})
        .to_string();
        let token = self
            .token(ep, REQUEST_TIMEOUT.min(limit))
            .map_err(|f| match f {
                Failure::Transport(e) | Failure::Unavailable(e) | Failure::Answer(e) => e,
                Failure::TokenExpired => Error::new(libc::EACCES, "etcd refused the auth token"),
            })?;
        let url = format!("{}/v3/watch", self.endpoints[ep]);
        let mut req = agent
            .post(&url)
            .header("content-type", "application/json")
            // Ends the watch when this member loses the cluster's leader (it would
            // otherwise wait on a partitioned member and never see the delete).
            .header("grpc-metadata-hasleader", "true")
            .config()
            .timeout_global(Some(limit))
            .build();
        if let Some(t) = &token {
            req = req.header("authorization", t.as_str());
        }
        let failed = |e: &ureq::Error| {
            self.current
                .store((ep + 1) % self.endpoints.len(), Ordering::Relaxed);
            transport_error(&self.endpoints[ep], e)
        };
        let response = req.send(body).map_err(|e| failed(&e))?;
        if response.status().as_u16() != 200 {
            if response.status().as_u16() == 401 {
                *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            return Ok(WatchEnd::Ended);
        }
        let reader = response.into_body().into_reader();
        for message in
            serde_json::Deserializer::from_reader(reader.take(MAX_BODY)).into_iter::<Value>()
        {
            let Ok(message) = message else {
                return Ok(WatchEnd::Ended);
            };
            let result = &message["result"];
            if result.is_null() || result["canceled"].as_bool() == Some(true) {
                return Ok(WatchEnd::Ended);
            }
            let deleted = result["events"].as_array().is_some_and(|events| {
                events.iter().any(|ev| {
                    ev["type"].as_str() == Some("DELETE") && decode(&ev["kv"]["key"]) == key
                })
            });
            if deleted {
                return Ok(WatchEnd::Deleted);
            }
        }
        Ok(WatchEnd::Ended)
    }
}

fn make_agent(tls: &TlsConfig) -> Agent {
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .tls_config(tls.clone())
        .proxy(None)
        .user_agent(concat!("unilock/", env!("CARGO_PKG_VERSION")))
        .build();
    Agent::with_parts(config, DefaultConnector::new(), InPlaceResolver)
}

/// Resolves an endpoint's host in the calling thread. ureq's own resolver starts a
/// thread for each lookup when a request has a timeout (all of ours do), which costs
/// a thread and a millisecond or more per request; an endpoint is usually an address,
/// which needs no lookup at all, and a name is looked up by the C library within the
/// time limits of resolv.conf.
#[derive(Debug)]
struct InPlaceResolver;

impl Resolver for InPlaceResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _: &ureq::config::Config,
        _: NextTimeout,
    ) -> std::result::Result<ResolvedSocketAddrs, ureq::Error> {
        let scheme = uri.scheme_str().unwrap_or("http");
        let authority = uri.authority().ok_or(ureq::Error::HostNotFound)?;
        let port = authority
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let mut out = self.empty();
        // ureq keeps at most 16 addresses.
        for a in (host, port).to_socket_addrs()?.take(16) {
            out.push(a);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

/// A transport failure as an errno and a message naming the endpoint.
fn transport_error(endpoint: &str, e: &ureq::Error) -> Error {
    let errno = match e {
        ureq::Error::Io(io) => io.raw_os_error().unwrap_or(match io.kind() {
            // rustls reports a failed handshake (an untrusted or refused certificate)
            // as invalid data.
            std::io::ErrorKind::InvalidData => libc::EPROTO,
            std::io::ErrorKind::ConnectionRefused => libc::ECONNREFUSED,
            std::io::ErrorKind::ConnectionReset => libc::ECONNRESET,
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => libc::ETIMEDOUT,
            std::io::ErrorKind::NotConnected => libc::ECANCELED,
            _ => libc::EIO,
        }),
        ureq::Error::Timeout(_) => libc::ETIMEDOUT,
        ureq::Error::HostNotFound => libc::EHOSTUNREACH,
        ureq::Error::ConnectionFailed => libc::ECONNREFUSED,
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => libc::EPROTO,
        _ => libc::EIO,
    };
    let what = match e {
        ureq::Error::HostNotFound => "host not found".to_owned(),
        ureq::Error::Timeout(_) => "no answer in time".to_owned(),
        ureq::Error::Rustls(r) => format!("TLS: {r}"),
        other => other.to_string(),
    };
    Error::new(errno, format!("{endpoint}: {what}"))
}

/// A gRPC status code in an error answer as a [`Failure`].
fn server_error(endpoint: &str, status: u16, value: &Value) -> Failure {
    let code = value["code"].as_i64().unwrap_or(-1);
    let message = value["message"]
        .as_str()
        .or(value["error"].as_str())
        .unwrap_or("no message")
        .to_owned();
    let err = |errno| Error::new(errno, format!("{endpoint}: etcd says: {message}"));
    match code {
        // UNAUTHENTICATED: an expired or unknown token.
        16 if message.contains("token") => Failure::TokenExpired,
        16 => Failure::Answer(err(libc::EACCES)),
        // PERMISSION_DENIED
        7 => Failure::Answer(err(libc::EACCES)),
        // INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE
        3 | 9 | 11 => Failure::Answer(err(libc::EINVAL)),
        // NOT_FOUND: a lease that expired.
        5 => Failure::Answer(err(libc::ENOLCK)),
        // RESOURCE_EXHAUSTED: a full database, too many requests.
        8 => Failure::Answer(err(libc::ENOSPC)),
        // UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, UNKNOWN and plain HTTP failures:
        // another endpoint, or a later try, may serve it.
        _ if status >= 500 || matches!(code, 14 | 4 | 10 | 2 | -1) => {
            Failure::Unavailable(err(libc::EIO))
        }
        _ => Failure::Answer(err(libc::EIO)),
    }
}

/// A base64 byte string of an answer (empty when absent).
pub(crate) fn decode(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .unwrap_or_default()
}

/// Base64 of `bytes`, for a request.
pub(crate) fn encode(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// A 64-bit integer of an answer: a decimal string, a number, or absent (0).
pub(crate) fn int(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_urls_and_a_bare_host_port_means_http() {
        assert_eq!(
            parse_endpoints("10.0.0.1:2379, https://b:2379/").unwrap(),
            ["http://10.0.0.1:2379", "https://b:2379"]
        );
        for bad in [
            "",
            " , ",
            "ftp://a:1",
            "http://",
            "http://a:1/path",
            "http://u@a:1",
        ] {
            assert_eq!(
                parse_endpoints(bad).unwrap_err().errno(),
                libc::EINVAL,
                "{bad}"
            );
        }
    }

    #[test]
    fn integers_come_as_strings_or_numbers_and_absent_is_zero() {
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(42)), 42);
        assert_eq!(int(&Value::Null), 0);
        assert_eq!(decode(&json!(encode(b"a/b"))), b"a/b");
    }

    #[test]
    fn server_errors_map_to_errnos_and_an_expired_token_to_a_new_one() {
        let f =
            |code: i64, msg: &str| server_error("e", 400, &json!({"code": code, "message": msg}));
        assert!(matches!(
            f(16, "etcdserver: invalid auth token"),
            Failure::TokenExpired
        ));
        assert!(
            matches!(f(7, "permission denied"), Failure::Answer(e) if e.errno() == libc::EACCES)
        );
        assert!(
            matches!(f(5, "requested lease not found"), Failure::Answer(e) if e.errno() == libc::ENOLCK)
        );
        assert!(matches!(
            f(14, "etcdserver: no leader"),
            Failure::Unavailable(_)
        ));
        assert!(matches!(f(3, "bad"), Failure::Answer(e) if e.errno() == libc::EINVAL));
    }
}
