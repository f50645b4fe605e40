//! The ETCD backend's handle: etcd's `concurrency.Mutex` recipe, so that `etcdctl lock
//! NAME` and Go's clientv3 users exclude us and are excluded by us.
//!
//! A lock call grants a lease and puts the key `NAME/<lease id in hex>` on it (only if
//! absent, in one transaction); the keys under `NAME/` form the queue in the order of
//! their create revision, and the key with the lowest one holds the lock. A waiter
//! watches the key just ahead of its own until it is deleted (released, or its lease
//! expired), then looks again: no polling. The key's value records who made it (host,
//! pid, command, start time), for `query`, `list` and `--verbose`; etcd's own tools
//! write an empty value, which reads as "unknown". Releasing revokes the lease, which
//! deletes the key in the same step. The holder's key's create revision is the lock's
//! fencing token: it grows with every grant.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use ureq::Agent;

use super::client::{Client, Config, WatchEnd, decode, encode, int};
use super::lease::Lease;
use crate::wait::{CallState, Deadline, cancelled, timed_out};
use crate::{Backend, Error, EtcdKey, Holder, Mode, Options, Process, Result, dotlock, sys};

/// The longest lock name accepted (etcd's own limit is the request size, 1.5 MiB).
const MAX_NAME: usize = 4096;

/// One ETCD handle.
pub(crate) struct EtcdLock {
    /// The lock name, as given.
    name: String,
    /// `NAME/`: the queue's keys.
    prefix: Vec<u8>,
    client: Arc<Client>,
    ttl: u32,
    /// The process that opened the handle: the lease is its.
    opener: i32,
    held: Mutex<Held>,
    /// The agent of the lock call in progress: a cancel, a close or a lost lease shuts
    /// it down, which ends the call's request or watch at once.
    watch: Arc<Mutex<Option<Agent>>>,
    /// The agent of the last lock call that was not shut down, kept for the next one
    /// (with its open connection).
    spare: Mutex<Option<Agent>>,
}

#[derive(Default)]
struct Held {
    lease: Option<Arc<Lease>>,
    /// This handle's key while it holds the lock.
    key: Vec<u8>,
    /// Its create revision: the fencing token.
    revision: i64,
}

/// Keys held by this process's ETCD handles, with the thread that took each: a
/// thread that waits for a lock it holds itself through another handle gets
/// `EDEADLK`, and `is_self` is known for every handle of the process.
fn held_here() -> MutexGuard<'static, HashMap<Vec<u8>, u64>> {
    static HELD: OnceLock<Mutex<HashMap<Vec<u8>, u64>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Locks an agent slot (poisoning ignored: it holds no invariant).
fn slot(m: &Mutex<Option<Agent>>) -> MutexGuard<'_, Option<Agent>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The end of the key range that starts with `prefix` (etcd's "prefix end").
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A range request over the queue.
fn queue_range(prefix: &[u8], extra: Value) -> Value {
    let mut r = json!({
        "key": encode(prefix),
        "range_end": encode(&prefix_end(prefix)),
        "sort_target": "CREATE",
    });
    if let (Some(r), Some(extra)) = (r.as_object_mut(), extra.as_object()) {
        r.extend(extra.clone());
    }
    r
}

/// This process's record, the value of its keys.
fn my_record() -> String {
    let pid = sys::getpid();
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "host": dotlock::host().unwrap_or(""),
        "pid": pid,
        "start": dotlock::start_time(pid),
        "boot": dotlock::boot_id().unwrap_or(""),
        "command": crate::holders::command(pid),
        "since": since,
        "by": concat!("unilock ", env!("CARGO_PKG_VERSION")),
    })
    .to_string()
}

impl EtcdLock {
    /// A handle for lock `name` (no request is made yet).
    pub(crate) fn open(name: &str, options: &Options) -> Result<EtcdLock> {
        if name.is_empty() {
            return Err(Error::new(libc::EINVAL, "the etcd lock name is empty"));
        }
        if name.contains('\0') {
            return Err(Error::new(
                libc::EINVAL,
                "the etcd lock name contains a NUL byte",
            ));
        }
        if name.len() > MAX_NAME {
            return Err(Error::new(
                libc::EINVAL,
                format!(
                    "the etcd lock name is {} bytes long; at most {MAX_NAME} are accepted",
                    name.len()
                ),
            ));
        }
        let cfg = Config::from_options(options)?;
        Ok(EtcdLock {
            name: name.to_owned(),
            prefix: format!("{name}/").into_bytes(),
            client: Arc::new(Client::new(&cfg)?),
            ttl: cfg.ttl,
            opener: sys::getpid(),
            held: Mutex::new(Held::default()),
            watch: Arc::new(Mutex::new(None)),
            spare: Mutex::new(None),
        })
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease belongs to the process that took it: a forked child has none.
    fn check_owner(&self) -> Result<()> {
        if sys::getpid() != self.opener {
            return Err(Error::new(
                libc::ENOLCK,
                format!(
                    "{}: this etcd handle was opened by process {}, whose lease it uses; \
                     open a new handle in this process",
                    self.name, self.opener
                ),
            ));
        }
        Ok(())
    }

    /// Forgets what the handle held, once the lease is found lost; the error to return.
    fn lost(&self, held: &mut Held, e: Error) -> Error {
        held_here().remove(&held.key);
        if let Some(lease) = held.lease.take() {
            // Best effort, in case the key is still there: it must not block others.
            let _ = lease.revoke(&self.client);
        }
        *held = Held::default();
        self.named(e)
    }

    /// Takes the lock (exclusive only, the whole "file"), as `Lock::lock`.
    pub(crate) fn lock(&self, call: &CallState, mode: Mode, deadline: &Deadline) -> Result<()> {
        if mode == Mode::Shared {
            return Err(Error::new(
                libc::EOPNOTSUPP,
                "the ETCD backend has exclusive locks only (etcd's mutex recipe has no \
                 shared mode)",
            ));
        }
        self.check_owner()?;
        {
            // Only this call changes what the handle holds (one lock or unlock call
            // runs at a time): the guard is not kept across the wait, so that query
            // and list answer meanwhile.
            let mut held = self.held();
            if let Some(lease) = held.lease.clone() {
                // Holding already: an exclusive lock converts to itself.
                return lease.check().map_err(|e| self.lost(&mut held, e));
            }
        }
        if deadline.is_try() {
            // A quick look first: a held lock answers EAGAIN without a lease.
            if let Some(first) = self.first(None)? {
                return Err(self.busy(&first));
            }
        }
        // Every request of this call goes through an agent that a cancel, a close or a
        // lost lease can shut down from another thread.
        let agent = slot(&self.spare)
            .take()
            .unwrap_or_else(|| self.client.call_agent());
        *slot(&self.watch) = Some(agent.clone());
        let taken = if call.cancelled() {
            Err(cancelled(&self.name))
        } else {
            self.take(call, &agent, deadline)
        };
        if slot(&self.watch).take().is_some() {
            // Not shut down: keep it, and its connections, for the next call.
            *slot(&self.spare) = Some(agent);
        }
        taken
    }

    /// The body of [`EtcdLock::lock`] for a handle that holds nothing, through `agent`.
    fn take(&self, call: &CallState, agent: &Agent, deadline: &Deadline) -> Result<()> {
        let at = deadline.remaining().map(|r| Instant::now() + r);
        let unary_deadline = if deadline.is_try() { None } else { at };
        let watch = self.watch.clone();
        let lease = Lease::grant(&self.client, agent, self.ttl, unary_deadline, move || {
            if let Some(agent) = slot(&watch).take() {
                agent.shutdown();
            }
        })
        .map_err(|e| self.why(call, None, e))?;
        let key = [self.prefix.as_slice(), format!("{:x}", lease.id).as_bytes()].concat();
        match self.enqueue_and_wait(call, agent, &lease, &key, deadline, unary_deadline) {
            Ok(revision) => {
                held_here().insert(key.clone(), sys::thread_id());
                *self.held() = Held {
                    lease: Some(lease),
                    key,
                    revision,
                };
                Ok(())
            }
            Err(e) => {
                // Leave the queue (or release a grant that raced the deadline or the
                // cancel): revoking the lease deletes the key.
                let _ = lease.revoke(&self.client);
                Err(self.why(call, Some(&lease), e))
            }
        }
    }

    /// `e` with this lock's name in front of its detail.
    fn named(&self, e: Error) -> Error {
        Error::new(e.errno(), format!("{}: {}", self.name, e.detail()))
    }

    /// The error a lock call returns for `e`: a request cut short by a cancel, a close
    /// or a lost lease says so rather than how its connection ended.
    fn why(&self, call: &CallState, lease: Option<&Lease>, e: Error) -> Error {
        if e.errno() == libc::ECANCELED || call.cancelled() {
            return cancelled(&self.name);
        }
        match lease.map(Lease::check) {
            Some(Err(lost)) => self.named(lost),
            _ => e,
        }
    }

    /// The error of a try that finds the lock held by `first`.
    fn busy(&self, first: &Value) -> Error {
        let h = self.holder_of(first, false);
        let who = match (&h.etcd.as_ref().and_then(|k| k.host.clone()), h.pid) {
            (Some(host), pid) if pid > 0 => format!(" by process {pid} on {host}"),
            _ => String::new(),
        };
        Error::new(
            libc::EAGAIN,
            format!("{}: the lock is held{who}", self.name),
        )
    }

    /// Puts this handle's key and waits until it is the first; its create revision.
    fn enqueue_and_wait(
        &self,
        call: &CallState,
        agent: &Agent,
        lease: &Lease,
        key: &[u8],
        deadline: &Deadline,
        unary: Option<Instant>,
    ) -> Result<i64> {
        let txn = json!({
            "compare": [{"key": encode(key), "target": "CREATE", "result": "EQUAL",
                         "create_revision": "0"}],
            // The put, then the queue's first key as it is after the put: when that is
            // ours, the lock is free and taken in this one round trip.
            "success": [{"request_put": {"key": encode(key), "value": encode(my_record().as_bytes()),
                                         "lease": lease.id.to_string()}},
                        {"request_range": queue_range(&self.prefix, json!({"sort_order": "ASCEND", "limit": "1"}))}],
            "failure": [{"request_range": {"key": encode(key)}}],
        });
        let answer = self.client.call_via(agent, "/v3/kv/txn", &txn, unary)?;
        let revision = if answer["succeeded"].as_bool() == Some(true) {
            let first = &answer["responses"][1]["response_range"]["kvs"][0];
            if decode(&first["key"]) == key {
                return Ok(int(&answer["header"]["revision"]));
            }
            if deadline.is_try() {
                return Err(self.busy(first));
            }
            int(&answer["header"]["revision"])
        } else {
            int(&answer["responses"][0]["response_range"]["kvs"][0]["create_revision"])
        };
        let me = sys::thread_id();
        loop {
            if call.cancelled() {
                return Err(cancelled(&self.name));
            }
            lease.check().map_err(|e| self.named(e))?;
            // One read: the key just ahead of ours, ours, and the holder.
            let look = json!({"success": [
                {"request_range": queue_range(&self.prefix, json!({
                    "sort_order": "DESCEND", "limit": "1",
                    "max_create_revision": (revision - 1).to_string()}))},
                {"request_range": {"key": encode(key)}},
                {"request_range": queue_range(&self.prefix, json!({"sort_order": "ASCEND", "limit": "1"}))},
            ]});
            let answer = self.client.call_via(agent, "/v3/kv/txn", &look, unary)?;
            let part = |i: usize| answer["responses"][i]["response_range"]["kvs"][0].clone();
            if part(1).is_null() {
                return Err(Error::new(
                    libc::ENOLCK,
                    format!(
                        "{}: this handle's key {} is gone from etcd while waiting (its lease \
                         expired or it was deleted)",
                        self.name,
                        String::from_utf8_lossy(key)
                    ),
                ));
            }
            let ahead = part(0);
            if ahead.is_null() {
                return Ok(revision);
            }
            if deadline.is_try() {
                return Err(self.busy(&part(2)));
            }
            let first = part(2);
            if held_here().get(&decode(&first["key"])) == Some(&me) {
                return Err(Error::new(
                    libc::EDEADLK,
                    format!(
                        "{}: this thread holds the lock through another handle; waiting \
                         for it would never end",
                        self.name
                    ),
                ));
            }
            let remaining = deadline.remaining();
            if remaining == Some(Duration::ZERO) {
                return Err(timed_out(&self.name));
            }
            // Watch the key ahead from just after this read; look again however the
            // watch ends. At least once per TTL, so a connection that died silently
            // is replaced.
            let limit =
                Duration::from_secs(u64::from(self.ttl)).min(remaining.unwrap_or(Duration::MAX));
            let from = int(&answer["header"]["revision"]) + 1;
            let ended = self
                .client
                .watch_delete(agent, &decode(&ahead["key"]), from, limit);
            match ended {
                // The key ahead was the holder's: no key can come before ours now (a
                // new key gets a higher create revision), so the lock is ours without
                // another look, as long as the lease lives.
                Ok(WatchEnd::Deleted) if ahead["key"] == first["key"] => {
                    lease.check().map_err(|e| self.named(e))?;
                    return Ok(revision);
                }
                Ok(WatchEnd::Deleted) | Ok(WatchEnd::Ended) => {}
                // Shut down: the cancel, close or lost lease is seen at the loop's top.
                Err(_) if call.cancelled() || lease.check().is_err() => {}
                // The watch could not start here: the next look fails over, after a
                // pause that a cancel ends.
                Err(_) => crate::wait::sleep(call, Duration::from_millis(100))?,
            }
            if deadline.expired() {
                return Err(timed_out(&self.name));
            }
        }
    }

    /// Ends the wait in progress at once (a cancel or a close).
    pub(crate) fn wake(&self) {
        if let Some(agent) = slot(&self.watch).take() {
            agent.shutdown();
        }
    }

    /// Releases the lock: revokes the lease, which deletes the key.
    pub(crate) fn unlock(&self) -> Result<()> {
        self.check_owner()?;
        let mut held = self.held();
        let Some(lease) = held.lease.clone() else {
            return Ok(());
        };
        if let Err(e) = lease.check() {
            return Err(self.lost(&mut held, e));
        }
        held_here().remove(&held.key);
        *held = Held::default();
        drop(held);
        match lease.revoke(&self.client) {
            Ok(true) => Ok(()),
            // The lock was lost before this release, which must not pass for the end
            // of a section that was exclusive throughout.
            Ok(false) => Err(Error::new(
                libc::ENOLCK,
                format!(
                    "{}: the lock was lost before this release: etcd no longer had its lease \
                     (it expired or was revoked); another process may have held it meanwhile",
                    self.name
                ),
            )),
            Err(e) => Err(Error::new(
                e.errno(),
                format!(
                    "{}: the release could not reach etcd ({}); the lock is released when its \
                     lease expires, within {} s",
                    self.name,
                    e.detail(),
                    lease.ttl
                ),
            )),
        }
    }

    /// The lock's fencing token: the create revision of this handle's key.
    pub(crate) fn fence(&self) -> Result<u64> {
        self.check_owner()?;
        let mut held = self.held();
        match held.lease.clone() {
            None => Err(Error::new(
                libc::ENOLCK,
                format!(
                    "{}: this handle holds no lock, so it has no fencing token",
                    self.name
                ),
            )),
            Some(lease) => match lease.check() {
                Ok(()) => Ok(held.revision as u64),
                Err(e) => Err(self.lost(&mut held, e)),
            },
        }
    }

    /// Renews the lease now; `ENOLCK` once it is lost. Nothing held: nothing to do.
    pub(crate) fn touch(&self) -> Result<()> {
        self.check_owner()?;
        let Some(lease) = self.held().lease.clone() else {
            return Ok(());
        };
        match lease.renew_now() {
            Err(e) if e.errno() == libc::ENOLCK => Err(self.lost(&mut self.held(), e)),
            other => other.map_err(|e| self.named(e)),
        }
    }

    /// The holder's key, if any.
    fn first(&self, deadline: Option<Instant>) -> Result<Option<Value>> {
        let answer = self.client.call(
            "/v3/kv/range",
            &queue_range(&self.prefix, json!({"sort_order": "ASCEND", "limit": "1"})),
            deadline,
        )?;
        let kv = &answer["kvs"][0];
        Ok((!kv.is_null()).then(|| kv.clone()))
    }

    /// `None` when the lock is free or this handle holds it, else the holder.
    pub(crate) fn query(&self) -> Result<Option<Holder>> {
        let Some(first) = self.first(Some(Instant::now() + Duration::from_secs(5)))? else {
            return Ok(None);
        };
        let mine = decode(&first["key"]) == self.held().key;
        if mine {
            return Ok(None);
        }
        Ok(Some(self.holder_of(&first, false)))
    }

    /// The queue: the holder, then the waiters in the order they will be served.
    pub(crate) fn list(&self) -> Result<Vec<Holder>> {
        let answer = self.client.call(
            "/v3/kv/range",
            &queue_range(&self.prefix, json!({"sort_order": "ASCEND"})),
            Some(Instant::now() + Duration::from_secs(5)),
        )?;
        Ok(answer["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .enumerate()
                    .map(|(i, kv)| self.holder_of(kv, i > 0))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A queue key as a holder record.
    fn holder_of(&self, kv: &Value, waiting: bool) -> Holder {
        let key = decode(&kv["key"]);
        let record: Value = serde_json::from_slice(&decode(&kv["value"])).unwrap_or(Value::Null);
        let host = record["host"]
            .as_str()
            .filter(|h| !h.is_empty())
            .map(str::to_owned);
        let pid = record["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .filter(|&p| p > 0);
        let start = record["start"].as_u64();
        let command = record["command"].as_str().unwrap_or_default().to_owned();
        let this_host = host.is_some() && host.as_deref() == dotlock::host();
        // A process of this host that is still the one that made the key.
        let alive =
            pid.filter(|&p| this_host && start.is_some() && dotlock::start_time(p) == start);
        // A key of this process: held by one of its handles, or made by it.
        let is_self = held_here().contains_key(&key) || alive == Some(sys::getpid());
        let lease = i64::from_str_radix(
            std::str::from_utf8(&key[self.prefix.len().min(key.len())..]).unwrap_or(""),
            16,
        )
        .unwrap_or_else(|_| int(&kv["lease"]));
        Holder {
            backend: Backend::Etcd,
            mode: Mode::Exclusive,
            start: int(&kv["create_revision"]) as u64,
            len: 0,
            pid: pid.unwrap_or(-1),
            is_self,
            command: command.chars().take(15).collect(),
            processes: alive
                .map(|p| Process {
                    pid: p,
                    command: crate::holders::command(p),
                    fds: Vec::new(),
                })
                .into_iter()
                .collect(),
            lock_file: None,
            etcd: Some(EtcdKey {
                key: String::from_utf8_lossy(&key).into_owned(),
                lease,
                revision: int(&kv["create_revision"]) as u64,
                host,
                pid,
                command: (!command.is_empty()).then_some(command),
                since: record["since"].as_u64(),
                waiting,
                endpoints: self.client.endpoints().to_vec(),
            }),
        }
    }

    /// Releases what the handle holds (a close).
    pub(crate) fn close(&self) -> Result<()> {
        self.wake();
        if sys::getpid() != self.opener {
            return Ok(());
        }
        self.unlock()
    }
}

impl std::fmt::Debug for EtcdLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLock")
            .field("name", &self.name)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}
