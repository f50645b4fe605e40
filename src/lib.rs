//! # unilock: advisory file locking for Linux done right
//!
//! One small API over every kernel locking mechanism — BSD `flock(2)`, open file
//! description (OFD) locks and POSIX record locks — that removes their traps:
//!
//! - every handle is its own lock owner, in every backend: POSIX locks are arbitrated
//!   between the handles and threads of a process, and closing one handle never drops
//!   another's locks;
//! - waits have real timeouts and can be cancelled from another thread, without
//!   polling and without signals in the host;
//! - a wait that only this process could end (the same thread asking twice, or a cycle
//!   of this process's threads) fails with `EDEADLK` instead of hanging;
//! - files are created 0600, opened close-on-exec, without following a symbolic link,
//!   never written or truncated; FIFOs and devices are refused without blocking;
//! - [`Lock::query`] and [`Lock::list`] say who holds a lock, with pid and command,
//!   for OFD and flock locks too;
//! - lock files by existence (DOTLOCK) are made NFS-safe by link(), name their owner,
//!   and are broken race-free once stale; a set of backends (a mailbox's
//!   `DOTLOCK|OFD`) is taken in order and rolled back on failure.
//!
//! ```no_run
//! use std::time::Duration;
//! use unilock::{Flags, Lock, Mode, Options};
//!
//! let lock = Lock::open("/tmp/job.lock", &Options::new().flags(Flags::CREATE))?;
//! match lock.lock(Mode::Exclusive, 0, 0, Some(Duration::from_secs(2))) {
//!     Ok(()) => { /* exclusive until unlock or drop */ }
//!     Err(e) if e.is_timeout() => eprintln!("busy: {:?}", lock.query(Mode::Exclusive, 0, 0)?),
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The C library (`libunilock.so`, `include/unilock.h`) is a thin layer over this
//! crate, built from the same sources with the `capi` cargo feature (`make`); the
//! feature is not meant for Rust users, who need only the API above.

#![deny(missing_docs)]

mod backend;
#[cfg(feature = "capi")]
pub mod capi;
mod dotlock;
mod error;
mod etcd;
mod fair;
// cbindgen reads every module for the header and would take the flags' associated
// constants; the C API has its own UNILOCK_* macros, so it skips this module.
#[cfg(feature = "fault-injection")]
pub mod fault;
/// cbindgen:ignore
mod flags;
#[cfg(test)]
mod fuzz_tests;
mod helper;
mod holders;
mod inode_table;
mod kernel_lock;
mod lock;
mod own_wait;
mod range;
mod sys;
mod wait;

pub use error::{Error, Result, describe};
pub use flags::Flags;
pub use lock::Lock;

/// Lock modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum Mode {
    /// A read lock: any number of shared holders at once.
    Shared = 1,
    /// A write lock: one holder, no shared holders.
    Exclusive = 2,
}

impl Mode {
    /// The mode for a C value (`UNILOCK_SHARED`, `UNILOCK_EXCLUSIVE`).
    pub fn from_raw(raw: u32) -> Option<Mode> {
        match raw {
            1 => Some(Mode::Shared),
            2 => Some(Mode::Exclusive),
            _ => None,
        }
    }

    /// "shared" or "exclusive".
    pub fn name(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::Exclusive => "exclusive",
        }
    }
}

/// Kernel mechanisms (see [`Options::backend`] and [`Options::backends`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Backend {
    /// `flock(2)`: whole files; excludes flock(1), gofrs/flock, Python filelock.
    Flock = 1,
    /// OFD locks: byte ranges owned by the open file description.
    Ofd = 2,
    /// POSIX record locks: byte ranges; the library makes each handle an owner.
    Posix = 4,
    /// Lock files by existence (liblockfile, lockfile(1), mailbox `.lock` files):
    /// exclusive, whole file; see [`Options::stale_after_s`] and [`Lock::touch`].
    Dotlock = 8,
    /// A lock in an etcd cluster, for processes on several machines: the "path" is a
    /// lock name, the keys and queue are those of etcd's `concurrency.Mutex`
    /// (`etcdctl lock NAME`), exclusive only; see [`Options::etcd_endpoints`] and
    /// [`Lock::fence`]. Alone only. Needs the `etcd` cargo feature.
    Etcd = 16,
}

impl Backend {
    /// "FLOCK", "OFD", "POSIX" or "DOTLOCK".
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flock => "FLOCK",
            Backend::Ofd => "OFD",
            Backend::Posix => "POSIX",
            Backend::Dotlock => "DOTLOCK",
            Backend::Etcd => "ETCD",
        }
    }
}

/// How to open a [`Lock`]: built from [`Options::new`] (or `Default`), so that
/// later versions can add options without breaking callers.
///
/// ```
/// use unilock::{Backend, Flags, Options};
///
/// let o = Options::new()
///     .backend(Backend::Ofd)
///     .flags(Flags::CREATE | Flags::FAIR)
///     .create_mode(0o644);
/// let mailbox = Options::new().backends([Backend::Dotlock, Backend::Ofd]);
/// # let _ = (o, mailbox);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// [`Backend`] bits; 0 means [`Backend::Flock`].
    pub(crate) backends: u32,
    pub(crate) flags: Flags,
    /// Permission bits for a created file; 0 means 0600.
    pub(crate) create_mode: u32,
    /// DOTLOCK: seconds without a refresh after which a lock file is stale; 0: never.
    pub(crate) stale_after_s: u32,
    /// ETCD: where and how to reach the cluster.
    pub(crate) etcd: EtcdOptions,
}

/// The ETCD settings of [`Options`]; each one missing is taken from the environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct EtcdOptions {
    pub(crate) endpoints: Option<String>,
    pub(crate) ttl_s: u32,
    pub(crate) ca: Option<String>,
    pub(crate) cert: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is never shown.
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("ttl_s", &self.ttl_s)
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl Options {
    /// The defaults: [`Backend::Flock`], no flags, files created 0600, DOTLOCK lock
    /// files stale only when their owner is dead.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `backend` alone.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backends = backend as u32;
        self
    }

    /// Uses a set of backends, taken in the order DOTLOCK, FLOCK, then OFD or POSIX and
    /// released in reverse (a mailbox's `[Backend::Dotlock, Backend::Ofd]`). OFD
    /// together with POSIX is refused by [`Lock::open`] with `EINVAL`; an empty set
    /// means [`Backend::Flock`].
    pub fn backends(mut self, set: impl IntoIterator<Item = Backend>) -> Self {
        self.backends = set.into_iter().fold(0, |bits, b| bits | b as u32);
        self
    }

    /// Adds `flags` to the ones already set.
    pub fn flags(mut self, flags: Flags) -> Self {
        self.flags |= flags;
        self
    }

    /// Permission bits for a file [`Flags::CREATE`] creates (and for DOTLOCK lock
    /// files); 0 means 0600, and the umask applies. Only the permission bits (0777)
    /// are accepted: setuid, setgid, sticky or higher bits make [`Lock::open`] fail
    /// with `EINVAL`.
    pub fn create_mode(mut self, mode: u32) -> Self {
        self.create_mode = mode;
        self
    }

    /// DOTLOCK: a lock file not refreshed ([`Lock::touch`]) for this many seconds is
    /// stale. 0 (the default): only a dead owner makes it stale, so a lock file whose
    /// owner cannot be checked (another host's, or one without a pid) is never broken;
    /// 300 matches liblockfile's rule for such files.
    pub fn stale_after_s(mut self, seconds: u32) -> Self {
        self.stale_after_s = seconds;
        self
    }

    /// ETCD: the cluster's client URLs, comma-separated (`http://10.0.0.1:2379,...`;
    /// a bare `host:port` means `http://`). Unset or empty: `UNILOCK_ETCD_ENDPOINTS`,
    /// else `ETCDCTL_ENDPOINTS`, else `http://127.0.0.1:2379`. Requests fail over
    /// between them in order.
    pub fn etcd_endpoints(mut self, endpoints: impl Into<String>) -> Self {
        self.etcd.endpoints = Some(endpoints.into());
        self
    }

    /// ETCD: the lease TTL in seconds (0: 10). The library renews the lease every third
    /// of it while the handle waits or holds; a holder that cannot renew it for a whole
    /// TTL (paused, cut off from etcd) loses the lock, and its next call says so
    /// (`ENOLCK`). etcd may raise a very short TTL to its minimum.
    pub fn etcd_lease_ttl_s(mut self, seconds: u32) -> Self {
        self.etcd.ttl_s = seconds;
        self
    }

    /// ETCD over `https://`: the CA certificates (PEM) that sign the servers'
    /// certificates, instead of the system's web roots. Unset: `UNILOCK_ETCD_CACERT`,
    /// else `ETCDCTL_CACERT`.
    pub fn etcd_ca(mut self, pem_file: impl Into<String>) -> Self {
        self.etcd.ca = Some(pem_file.into());
        self
    }

    /// ETCD over `https://`: a client certificate (PEM, with its chain) and its private
    /// key (PEM), for a cluster that authenticates clients by certificate. Unset:
    /// `UNILOCK_ETCD_CERT`/`UNILOCK_ETCD_KEY`, else `ETCDCTL_CERT`/`ETCDCTL_KEY`.
    pub fn etcd_client_cert(mut self, cert: impl Into<String>, key: impl Into<String>) -> Self {
        self.etcd.cert = Some(cert.into());
        self.etcd.key = Some(key.into());
        self
    }

    /// ETCD: a user and password, for a cluster with authentication enabled. Unset:
    /// `UNILOCK_ETCD_USER` (`name` or `name:password`) and `UNILOCK_ETCD_PASSWORD`,
    /// else the `ETCDCTL_` ones. The password is never shown in a message or by
    /// `Debug`.
    pub fn etcd_credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.etcd.user = Some(user.into());
        self.etcd.password = Some(password.into());
        self
    }
}

/// One lock on a file and who holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The mechanism that holds it.
    pub backend: Backend,
    /// Its mode.
    pub mode: Mode,
    /// First byte.
    pub start: u64,
    /// Length in bytes; 0 means to the end of the file and beyond.
    pub len: u64,
    /// A live process that holds it; -1 when it cannot be known.
    pub pid: i32,
    /// True when this process holds it.
    pub is_self: bool,
    /// The holder's command name (`/proc/PID/comm`), "" when unknown.
    pub command: String,
    /// Every live process that has this lock, lowest pid first: for FLOCK and OFD
    /// locks each process with a descriptor of the open file description that holds
    /// it, for POSIX the process that owns it (from the `lock:` lines of
    /// `/proc/PID/fdinfo`, as lslocks(8) finds its HOLDERS), for DOTLOCK the owner the
    /// lock file names when it is alive on this host. The inquiring process is left
    /// out when it only has a copy of another process's descriptor (one it inherited)
    /// and is not the only one: it is named when one of its handles holds the lock.
    /// Empty when no live holder can be found (another user's processes, or no /proc).
    pub processes: Vec<Process>,
    /// DOTLOCK: the lock file and its owner record; `None` for the kernel's locks.
    pub lock_file: Option<LockFile>,
    /// ETCD: the key in the lock's queue and what its value says; `None` otherwise.
    pub etcd: Option<EtcdKey>,
}

/// An ETCD lock key ([`Holder::etcd`]): one place in the lock's queue.
///
/// For ETCD holders, [`Holder::start`] is the key's create revision too, [`Holder::pid`]
/// and [`Holder::command`] are what the key's value says (on its host, which may be
/// another machine), and [`Holder::processes`] names the process only when it runs on
/// this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdKey {
    /// The key, `NAME/<lease id in hex>`.
    pub key: String,
    /// Its lease.
    pub lease: i64,
    /// Its create revision: its place in the queue, and the holder's fencing token
    /// ([`Lock::fence`]).
    pub revision: u64,
    /// The host that made it, when its value says (unilock's keys do; etcdctl's are
    /// empty).
    pub host: Option<String>,
    /// The pid of the process that made it, on that host.
    pub pid: Option<i32>,
    /// That process's command name.
    pub command: Option<String>,
    /// When it was made, in seconds since the Unix epoch.
    pub since: Option<u64>,
    /// False for the holder (the lowest create revision), true for a waiter.
    pub waiting: bool,
    /// The endpoints it was read from.
    pub endpoints: Vec<String>,
}

/// A process that has a lock ([`Holder::processes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Its pid.
    pub pid: i32,
    /// Its command name (`/proc/PID/comm`), "" when unknown.
    pub command: String,
    /// Its descriptors that have the lock (none for a DOTLOCK owner).
    pub fds: Vec<i32>,
}

/// A DOTLOCK lock file and what its owner record says ([`Holder::lock_file`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockFile {
    /// The lock file.
    pub path: std::path::PathBuf,
    /// The pid on the record's first line, if any (whatever host wrote it).
    pub pid: Option<i32>,
    /// The host that made it (`host=`), if the record says.
    pub host: Option<String>,
    /// The owner's start time (`start=`, in clock ticks after boot, as field 22 of
    /// `/proc/PID/stat`), if the record says.
    pub start: Option<u64>,
    /// Why the lock file is stale (the next lock call breaks it), `None` while it is
    /// live or when it is not a lock file a tool could have made.
    pub stale: Option<String>,
    /// Why it is not a lock file (it holds the lock while it exists, never broken),
    /// `None` for a lock record.
    pub not_a_lock_file: Option<String>,
}
