//! `unilock`: a drop-in for util-linux flock(1) that also says who holds a lock.
//!
//! It is a client of the Rust API ([`unilock::Lock`]), never of the backends: it opens
//! a handle, takes or releases the lock, and runs the command with the lock's
//! descriptor inherited (unless `-o`), exactly as flock(1) does, then exits with the
//! command's status. The lock is never released explicitly: it ends, as flock(1)'s
//! does, when the last descriptor of its open file description is closed — this
//! process's at exit, and those the command and its children inherited.
//!
//! Modules: `args` (the command line, getopt-compatible), `report` (holder sentences,
//! the `--list` table, JSON, the help), `signals` (keeping the lock until the command
//! has ended, whatever signal `unilock` gets), `sys` (fork, exec, wait, signal masks:
//! the only `unsafe`).

mod args;
mod report;
mod signals;
mod sys;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use args::{Invocation, Operation, Parsed, Report, Target};
use unilock::{Backend, Error, Flags, Holder, Lock, Mode, Options};

/// sysexits.h, as flock(1) uses them.
const EX_USAGE: i32 = 64;
const EX_DATAERR: i32 = 65;
const EX_NOINPUT: i32 = 66;
const EX_UNAVAILABLE: i32 = 69;
const EX_OSERR: i32 = 71;
const EX_CANTCREAT: i32 = 73;
/// EX_TEMPFAIL: the etcd lock was lost (its lease expired or was revoked) while the
/// command ran, or before it started; retrying later may succeed.
const EX_LOCK_LOST: i32 = 75;

/// How soon a lease watch that could not reach etcd tries again (the library decides
/// the lease is lost once a whole TTL passed without a confirmed renewal).
const TOUCH_RETRY: Duration = Duration::from_millis(250);

/// How long a `--verbose` wait sleeps before it looks at the holder again.
const VERBOSE_RECHECK: Duration = Duration::from_secs(1);

fn main() {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let name = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "unilock".to_string());
    let code = match args::parse(argv.get(1..).unwrap_or_default()) {
        Ok(Parsed::Help) => {
            print_out(&report::usage(&name));
            0
        }
        Ok(Parsed::Version) => {
            print_out(&format!(
                "{name} from unilock {}\n",
                env!("CARGO_PKG_VERSION")
            ));
            0
        }
        Ok(Parsed::Run(invocation)) => {
            if let Some(i) = invocation.secret_arg {
                // `--etcd-user NAME:PASSWORD`: out of what ps(1) shows, at once.
                sys::blank_secret(i);
            }
            match (Cli {
                name,
                inv: *invocation,
            })
            .run()
            {
                End::Code(code) => code,
                End::Signal(signal) => sys::die_by(signal),
            }
        }
        Err(usage) => {
            if let Some(message) = usage.message {
                let prefix = match argv.first() {
                    Some(full) if usage.from_getopt => full.to_string_lossy().into_owned(),
                    _ => name.clone(),
                };
                warn(&prefix, &message);
            }
            if usage.try_help {
                let _ = writeln!(
                    std::io::stderr(),
                    "Try '{name} --help' for more information."
                );
            }
            EX_USAGE
        }
    };
    std::process::exit(code);
}

/// Writes to stdout, ignoring a closed pipe (flock's output is best effort too).
fn print_out(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// "NAME: message" on stderr; a failing stderr is ignored (never a panic).
fn warn(name: &str, message: &str) {
    let _ = writeln!(std::io::stderr(), "{name}: {message}");
}

struct Cli {
    /// The name it was invoked by: every message starts with it.
    name: String,
    inv: Invocation,
}

/// An early end: the exit code, the message already printed.
struct Exit(i32);

/// How `unilock` ends, once everything it holds is released.
enum End {
    /// Exits with this status.
    Code(i32),
    /// Dies of this signal, which it received itself (as flock(1) would have died).
    Signal(i32),
}

impl Cli {
    fn warn(&self, message: &str) {
        warn(&self.name, message);
    }

    fn fail(&self, code: i32, message: &str) -> Exit {
        self.warn(message);
        Exit(code)
    }

    fn run(&self) -> End {
        let result = match &self.inv.target {
            Target::File { path, command } => self.lock_file(path, command),
            Target::Descriptor(fd) => self.lock_descriptor(*fd).map(End::Code),
            Target::DescriptorCommand { fd, command } => self.lock_descriptor_for(*fd, command),
            Target::Report { path, kind } => self.report(path, *kind).map(End::Code),
        };
        result.unwrap_or_else(|Exit(code)| End::Code(code))
    }

    fn options(&self, extra_flags: Flags) -> Options {
        let inv = &self.inv;
        let mut flags = extra_flags;
        for (on, flag) in [
            (inv.follow, Flags::FOLLOW),
            (inv.fair, Flags::FAIR),
            (inv.unlink, Flags::UNLINK),
        ] {
            if on {
                flags |= flag;
            }
        }
        let backends = [
            Backend::Flock,
            Backend::Ofd,
            Backend::Posix,
            Backend::Dotlock,
            Backend::Etcd,
        ]
        .into_iter()
        .filter(|&b| inv.backends & b as u32 != 0);
        let mut o = Options::new()
            .backends(backends)
            .flags(flags)
            .create_mode(inv.create_mode.unwrap_or(0))
            .stale_after_s(inv.stale_after_s.unwrap_or(0));
        if let Some(e) = &inv.etcd {
            // What is not given here, the library takes from the environment (an
            // empty value counts as not given).
            if let Some(endpoints) = &e.endpoints {
                o = o.etcd_endpoints(endpoints);
            }
            if let Some(ttl) = e.lease_ttl {
                o = o.etcd_lease_ttl_s(ttl);
            }
            if let Some(ca) = &e.cacert {
                o = o.etcd_ca(ca);
            }
            if e.cert.is_some() || e.key.is_some() {
                o = o.etcd_client_cert(
                    e.cert.clone().unwrap_or_default(),
                    e.key.clone().unwrap_or_default(),
                );
            }
            if let Some(user) = &e.user {
                o = o.etcd_credentials(user, e.password.clone().unwrap_or_default());
            }
        }
        o
    }

    /// The name of the lock, for messages: `NAME: ...`, unless the library's detail
    /// starts with it already.
    fn etcd_message(&self, name: &str, e: &Error) -> String {
        let detail = e.detail();
        if detail.starts_with(&format!("{name}: ")) {
            detail.to_string()
        } else {
            format!("{name}: {detail}")
        }
    }

    /// An etcd handle could not be made: a bad endpoint, name or option (64), a TLS
    /// file that cannot be read (66), a build without etcd (69).
    fn etcd_open_failed(&self, name: &str, e: &Error) -> Exit {
        match e.errno() {
            libc::EOPNOTSUPP => self.fail(EX_UNAVAILABLE, &unsupported(e)),
            libc::EINVAL => self.fail(EX_USAGE, &self.etcd_message(name, e)),
            _ => self.fail(EX_NOINPUT, &self.etcd_message(name, e)),
        }
    }

    /// An etcd call failed (unreachable, refused, TLS, authentication): 65 with the
    /// library's sentence, which names the endpoints and never a password; a lock
    /// found lost: 75.
    fn etcd_failed(&self, name: &str, e: &Error) -> Exit {
        let code = match e.errno() {
            libc::ENOLCK => EX_LOCK_LOST,
            libc::ENOMEM => EX_OSERR,
            _ => EX_DATAERR,
        };
        self.fail(code, &self.etcd_message(name, e))
    }

    /// flock's `open_file` codes: 71 for a lack of memory or descriptors, 73 for a
    /// read-only or full file system, 66 otherwise; 69 for what this version of the
    /// library does not support.
    fn open_failed(&self, path: &str, e: &Error) -> Exit {
        let errno = e.errno();
        let code = match errno {
            libc::EOPNOTSUPP => return self.fail(EX_UNAVAILABLE, &unsupported(e)),
            libc::ENOMEM | libc::EMFILE | libc::ENFILE => EX_OSERR,
            libc::EROFS | libc::ENOSPC => EX_CANTCREAT,
            _ => EX_NOINPUT,
        };
        let reason = match errno {
            libc::ELOOP if !self.inv.follow => {
                "it is a symbolic link (--follow locks its target)".to_string()
            }
            // A FIFO, socket or device: the library's sentence names the file type.
            libc::EINVAL => return self.fail(code, e.detail()),
            _ => sys::strerror(errno),
        };
        self.fail(code, &format!("cannot open lock file {path}: {reason}"))
    }

    /// flock's codes for a failed lock call (`subject` is the file or the descriptor
    /// number): 71 for ENOLCK and ENOMEM, 65 otherwise; when `--fair` cannot open the
    /// file read-write for its queue, 64 where the file cannot be written (a usage
    /// error: the option does not fit the file), 66 otherwise.
    fn lock_failed(&self, subject: &str, e: &Error, read_only_code: i32) -> Exit {
        match e.errno() {
            libc::EOPNOTSUPP => self.fail(EX_UNAVAILABLE, &unsupported(e)),
            // The fair queue could not open the file read-write.
            errno if e.detail().contains("UNILOCK_FAIR") => {
                let why = match errno {
                    libc::EACCES | libc::EPERM => "this process may not write it",
                    libc::EROFS => "it is on a read-only file system",
                    libc::EISDIR => "it is a directory",
                    libc::ENOENT => {
                        return self.fail(
                            EX_NOINPUT,
                            "--fair needs /proc, which is not mounted: run without --fair",
                        );
                    }
                    _ => {
                        return self.fail(
                            EX_NOINPUT,
                            &format!(
                                "--fair cannot open {subject} read-write for its queue: {}",
                                sys::strerror(errno)
                            ),
                        );
                    }
                };
                self.fail(
                    EX_USAGE,
                    &format!(
                        "--fair keeps its queue in locks that need {subject} open for \
                         writing, and {why}: run without --fair, or lock a file this \
                         process can write"
                    ),
                )
            }
            // A byte range into the offsets the library reserves.
            libc::EINVAL => self.fail(EX_USAGE, e.detail()),
            // An exclusive fcntl lock through a read-only descriptor.
            libc::EACCES => self.fail(read_only_code, e.detail()),
            errno @ (libc::ENOLCK | libc::ENOMEM) => {
                self.fail(EX_OSERR, &format!("{subject}: {}", sys::strerror(errno)))
            }
            errno => self.fail(EX_DATAERR, &format!("{subject}: {}", sys::strerror(errno))),
        }
    }

    /// The lock is held by someone else (no wait, or the wait timed out): flock's
    /// conflict exit, and with `--verbose` its message and who holds the lock.
    fn conflict(&self, lock: &Lock, mode: Mode, timed_out: bool) -> Exit {
        if self.inv.verbose {
            self.warn(if timed_out {
                "timeout while waiting to get lock"
            } else {
                "failed to get lock"
            });
            self.say_holder(lock, mode, "");
        }
        Exit(self.inv.conflict_exit_code)
    }

    fn holder_now(&self, lock: &Lock, mode: Mode) -> Result<Option<Holder>, Error> {
        let (start, len) = self.inv.range;
        lock.query(mode, start, len)
    }

    /// Prints who holds the lock now (`--verbose`); returns it.
    fn say_holder(&self, lock: &Lock, mode: Mode, prefix: &str) -> Option<Holder> {
        match self.holder_now(lock, mode) {
            Ok(Some(h)) => {
                self.warn(&format!("{prefix}{}", report::holder_sentence(&h)));
                Some(h)
            }
            Ok(None) => {
                self.warn(&format!("{prefix}its holder has just released it"));
                None
            }
            Err(e) => {
                self.warn(&format!("{prefix}who holds it cannot be known: {e}"));
                None
            }
        }
    }

    /// Takes the lock as the options say. `--verbose` waits in slices, saying who
    /// holds the lock when the wait starts and whenever the holder changes (with
    /// `--fair`, only when it starts: the wait keeps its place in line).
    ///
    /// A first try comes before anything is set up for a wait (most runs find the lock
    /// free); `watch` is called before the first call that may wait, so that from then
    /// on a signal cancels it.
    fn acquire(&self, lock: &Lock, mode: Mode, watch: &mut dyn FnMut()) -> Result<(), Error> {
        let (start, len) = self.inv.range;
        let timeout = self.inv.timeout;
        let began = Instant::now();
        match lock.lock(mode, start, len, Some(Duration::ZERO)) {
            Err(e) if e.is_would_block() && timeout != Some(Duration::ZERO) => {}
            // A try never waits: ETIMEDOUT is a request that got no answer in time (an
            // etcd endpoint that does not answer), not a conflict.
            other => return other.map_err(not_a_wait),
        }
        watch();
        let deadline = timeout.and_then(|t| began.checked_add(t));
        // Likewise an ETIMEDOUT before the deadline (or without one).
        let checked = |r: Result<(), Error>| {
            r.map_err(|e| match deadline {
                Some(at) if Instant::now() >= at => e,
                _ => not_a_wait(e),
            })
        };
        if !self.inv.verbose {
            // What is left of the timeout (never 0, which would be one more try).
            let left = deadline.map(|at| {
                at.saturating_duration_since(Instant::now())
                    .max(Duration::from_nanos(1))
            });
            return checked(lock.lock(mode, start, len, left));
        }
        let holder = self.say_holder(lock, mode, "waiting for the lock: ");
        if lock.backend() == Backend::Etcd {
            // A wait cut into slices would leave the queue and join it again at its
            // end each time: one wait, and a thread that says when the holder changes.
            let left = deadline.map(|at| {
                at.saturating_duration_since(Instant::now())
                    .max(Duration::from_nanos(1))
            });
            return checked(self.wait_telling_holders(lock, mode, left, holder));
        }
        let mut holder = holder;
        if self.inv.fair {
            // A fair wait cut into slices would go to the back of the line each time.
            let left = deadline.map(|at| at.saturating_duration_since(Instant::now()));
            return lock.lock(
                mode,
                start,
                len,
                left.map(|l| l.max(Duration::from_nanos(1))),
            );
        }
        loop {
            let slice = match deadline {
                None => VERBOSE_RECHECK,
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::new(libc::ETIMEDOUT, "timed out"));
                    }
                    left.min(VERBOSE_RECHECK)
                }
            };
            match lock.lock(mode, start, len, Some(slice)) {
                Err(e) if e.is_timeout() => {
                    if deadline.is_some_and(|at| Instant::now() >= at) {
                        return Err(e);
                    }
                    let now = self.holder_now(lock, mode).ok().flatten();
                    if now.is_some() && !same_holder(&now, &holder) {
                        holder = self.say_holder(lock, mode, "still waiting: ");
                    }
                }
                other => return other,
            }
        }
    }

    /// `--verbose` with an etcd lock: one lock call for the whole wait, and meanwhile a
    /// thread that looks at the holder every [`VERBOSE_RECHECK`] and says when it
    /// changed (a slice of the wait per look would lose the place in the queue).
    fn wait_telling_holders(
        &self,
        lock: &Lock,
        mode: Mode,
        left: Option<Duration>,
        holder: Option<Holder>,
    ) -> Result<(), Error> {
        let (start, len) = self.inv.range;
        let Ok(stop) = sys::Event::new() else {
            return lock.lock(mode, start, len, left);
        };
        std::thread::scope(|scope| {
            let stop = &stop;
            scope.spawn(move || {
                let mut holder = holder;
                while let [false] = sys::poll([stop.as_fd()], Some(VERBOSE_RECHECK)) {
                    let now = self.holder_now(lock, mode).ok().flatten();
                    // Not this process's own key, which leads the queue for a moment
                    // before the lock call returns.
                    if now.as_ref().is_some_and(|h| !h.is_self) && !same_holder(&now, &holder) {
                        holder = self.say_holder(lock, mode, "still waiting: ");
                    }
                }
            });
            let taken = lock.lock(mode, start, len, left);
            stop.set();
            taken
        })
    }

    /// `FILE COMMAND...` and `FILE -c COMMAND`. The signals that would end `unilock`
    /// are taken over first (see `signals`): one that comes before the command starts
    /// ends `unilock` holding nothing; one that comes while it runs goes to the command.
    fn lock_file(&self, path: &OsString, command: &[OsString]) -> Result<End, Exit> {
        let shown = path.to_string_lossy();
        let signals = signals::Signals::take_over();
        if self.inv.etcd.is_some() {
            // Before the library starts the thread that keeps the lease alive: a thread
            // that does not block SIGCHLD would take the command's, which the signalfd
            // would then never see.
            signals.before_fork();
        }
        // The descriptor goes to the command unless -o: with Flags::INHERIT it is
        // opened without close-on-exec, as flock(1)'s.
        let inherit = if self.inv.close {
            Flags::empty()
        } else {
            Flags::INHERIT
        };
        let etcd = self.inv.etcd.is_some();
        let lock = Lock::open(path, &self.options(Flags::CREATE | inherit)).map_err(|e| {
            if etcd {
                self.etcd_open_failed(&shown, &e)
            } else {
                self.open_failed(&shown, &e)
            }
        })?;
        // Released when the handle is dropped: after a signal or a failure, and after
        // the command for --unlink and DOTLOCK. Otherwise held until every copy of the
        // descriptor is closed (see the module comment); a POSIX lock until this
        // process exits.
        // A DOTLOCK lock file is removed after the command too (with -F it names the
        // command, which keeps this pid, and is stale once the command has exited);
        // with --unlink the file is deleted while still held, unless a process the
        // command left behind shares the lock (then it stays).
        // An etcd lock is released after the command (its lease is this process's).
        let release = self.inv.unlink
            || lock.backends().contains(&Backend::Dotlock)
            || lock.backends().contains(&Backend::Etcd);
        let (end, ran) = self.lock_and_execute(&lock, &shown, EX_NOINPUT, &signals, command);
        if ran && !release {
            std::mem::forget(lock);
        }
        end
    }

    /// Takes (or releases) the lock with the signals watched while it waits, then runs
    /// the command, unless a signal came first (then `unilock` ends by it). Returns how
    /// to end, and whether the command ran.
    fn lock_and_execute(
        &self,
        lock: &Lock,
        subject: &str,
        read_only_code: i32,
        signals: &signals::Signals,
        command: &[OsString],
    ) -> (Result<End, Exit>, bool) {
        let mut ran = false;
        let end = signals.during(lock, |watch, stop_watching| {
            let taken = self.operate(lock, subject, read_only_code, Some(signals), watch);
            stop_watching();
            if let Some(signal) = signals.caught() {
                return Ok(End::Signal(signal));
            }
            taken?;
            ran = true;
            let etcd = (lock.backend() == Backend::Etcd).then_some((lock, subject));
            self.execute(command, signals, etcd)
        });
        (end, ran)
    }

    /// `FD`: the lock is the open file description's, so it outlives this process
    /// (flock(1) on a descriptor); `-u FD` releases it.
    fn lock_descriptor(&self, fd: i32) -> Result<i32, Exit> {
        let subject = fd.to_string();
        let lock = self.descriptor_handle(fd)?;
        self.operate(&lock, &subject, EX_DATAERR, None, &mut || {})?;
        std::mem::forget(lock);
        Ok(0)
    }

    /// `--fd FD COMMAND`: takes or releases the lock on the descriptor's open file
    /// description, as the `FD` form does, then runs the command with the descriptor
    /// (closed in the command with `--close`). The lock stays with the description,
    /// held as long as the caller keeps the descriptor open.
    fn lock_descriptor_for(&self, fd: i32, command: &[OsString]) -> Result<End, Exit> {
        let signals = signals::Signals::take_over();
        let lock = self.descriptor_handle(fd)?;
        let subject = fd.to_string();
        let (end, ran) = self.lock_and_execute(&lock, &subject, EX_DATAERR, &signals, command);
        if ran {
            // The lock is the open file description's: it stays with the caller's
            // descriptor (dropping the handle after a signal releases what it took).
            std::mem::forget(lock);
        }
        end
    }

    /// A handle on the inherited descriptor `fd`, with flock's codes for a failure.
    fn descriptor_handle(&self, fd: i32) -> Result<Lock, Exit> {
        let subject = fd.to_string();
        let lock = sys::inherited_fd(fd)
            .map_err(|errno| Error::new(errno, format!("descriptor {fd}")))
            .and_then(|borrowed| Lock::from_fd(borrowed, &self.options(Flags::empty())));
        lock.map_err(|e| match e.errno() {
            libc::EOPNOTSUPP => self.fail(EX_UNAVAILABLE, &unsupported(&e)),
            libc::EINVAL => self.fail(EX_DATAERR, e.detail()),
            errno @ (libc::ENOMEM | libc::EMFILE | libc::ENFILE) => {
                self.fail(EX_OSERR, &format!("{subject}: {}", sys::strerror(errno)))
            }
            errno => self.fail(EX_DATAERR, &format!("{subject}: {}", sys::strerror(errno))),
        })
    }

    /// Takes or releases the lock; `--verbose` says how long it took (on stdout, as
    /// flock's "getting lock took" line). A wait that `signals` cancelled ends quietly:
    /// the caller ends by the signal.
    fn operate(
        &self,
        lock: &Lock,
        subject: &str,
        read_only_code: i32,
        signals: Option<&signals::Signals>,
        watch: &mut dyn FnMut(),
    ) -> Result<(), Exit> {
        let began = Instant::now();
        let result = match self.inv.operation {
            Operation::Lock(mode) => self
                .acquire(lock, mode, watch)
                .inspect_err(|_| self.say_broken(lock))
                .map_err(|e| {
                    if let Some(signal) = signals.and_then(signals::Signals::caught) {
                        Exit(128 + signal)
                    } else if e.is_would_block() || e.is_timeout() {
                        self.conflict(lock, mode, e.is_timeout())
                    } else if lock.backend() == Backend::Etcd {
                        self.etcd_failed(subject, &e)
                    } else {
                        self.lock_failed(subject, &e, read_only_code)
                    }
                }),
            Operation::Unlock => {
                let (start, len) = self.inv.range;
                lock.unlock(start, len)
                    .map_err(|e| self.lock_failed(subject, &e, read_only_code))
            }
        };
        result?;
        self.say_broken(lock);
        if self.inv.verbose {
            let took = began.elapsed();
            print_out(&format!(
                "{}: getting lock took {}.{:06} seconds\n",
                self.name,
                took.as_secs(),
                took.subsec_micros()
            ));
        }
        Ok(())
    }

    /// `--verbose`: says which stale DOTLOCK lock files the lock calls removed, and why.
    fn say_broken(&self, lock: &Lock) {
        for h in lock.take_broken() {
            if self.inv.verbose {
                self.warn(&report::broken_sentence(&h));
            }
        }
    }

    /// Runs the command as flock(1) does: SIGCHLD reset to its default, then fork and
    /// execvp in the child (or execvp alone with `-F`); the status is the command's,
    /// 128+N when signal N killed it. `unilock` waits for the command through the
    /// signals it receives meanwhile (passed on to the command), and when the command
    /// died of a signal after `unilock` received one, it ends by the one it received.
    ///
    /// An etcd lock (`etcd`: the handle and the lock name) gives the command its fencing
    /// token in `UNILOCK_FENCE`, and is watched while the command runs (see
    /// [`Cli::wait_under_lease`]): a lost lock makes the status [`EX_LOCK_LOST`].
    fn execute(
        &self,
        command: &[OsString],
        signals: &signals::Signals,
        etcd: Option<(&Lock, &str)>,
    ) -> Result<End, Exit> {
        let argv = sys::Argv::new(command)
            .ok_or_else(|| self.fail(EX_USAGE, "an argument contains a NUL byte"))?;
        sys::default_action(libc::SIGCHLD);
        let envp = match etcd {
            None => None,
            Some((lock, name)) => {
                let token = lock.fence().map_err(|e| self.etcd_failed(name, &e))?;
                if self.inv.verbose {
                    self.warn(&format!("{name}: the etcd lock's fencing token is {token}"));
                }
                Some(sys::Envp::with(&[("UNILOCK_FENCE", token.to_string())]))
            }
        };
        if self.inv.verbose {
            print_out(&format!("{}: executing {}\n", self.name, argv.program()));
        }
        if self.inv.no_fork {
            self.exec(&argv, signals);
        }
        let kill = self.inv.etcd.as_ref().and_then(|e| e.kill_on_loss);
        if etcd.is_some() && kill.is_some() {
            // Whatever the command leaves behind stays this process's descendant, to
            // be found and ended with it if the lock is lost.
            sys::become_subreaper();
        }
        signals.before_fork();
        let pid = match sys::spawn(
            &argv,
            self.close_fd(),
            signals.command_mask(),
            envp.as_ref(),
        ) {
            Ok(pid) => pid,
            Err(sys::SpawnError::Clone(e)) => {
                return Err(self.fail(EX_OSERR, &format!("fork failed: {}", sys::strerror(e))));
            }
            Err(sys::SpawnError::Exec(pid, e)) => {
                self.warn(&format!(
                    "failed to execute {}: {}",
                    argv.program(),
                    sys::strerror(e)
                ));
                let _ = sys::wait(pid);
                return Ok(End::Code(if e == libc::ENOMEM {
                    EX_OSERR
                } else {
                    EX_UNAVAILABLE
                }));
            }
        };
        let (status, lost) = match etcd {
            None => (signals.wait_for(pid), false),
            Some((lock, name)) => self.wait_under_lease(lock, name, pid, signals, kill),
        };
        let end = match status {
            Ok((sys::Status::Exited(code), _)) => End::Code(code),
            Ok((sys::Status::Killed(_), Some(received))) => End::Signal(received),
            Ok((sys::Status::Killed(signal), None)) => End::Code(128 + signal),
            Ok((sys::Status::Other, _)) => End::Code(EX_OSERR),
            Err(e) => {
                self.warn(&format!("waitpid failed: {}", sys::strerror(e)));
                End::Code(1)
            }
        };
        Ok(match end {
            End::Code(code) if lost => {
                self.warn(&format!(
                    "exiting with status {EX_LOCK_LOST} instead of the command's {code}: the \
                     etcd lock was lost while it ran"
                ));
                End::Code(EX_LOCK_LOST)
            }
            other => other,
        })
    }

    /// Waits for the command `pid` under the etcd lock `lock`, as
    /// [`signals::Signals::wait_for`] does, while a thread renews the lock's lease
    /// every 0.3 TTL with [`Lock::touch`] (the renewals the library would make anyway,
    /// so no request is added) and so learns at once when etcd says the lease is gone,
    /// or when no renewal was confirmed for a whole TTL (etcd unreachable, or this
    /// process stopped). A lost lock is said on stderr when it is found; with
    /// `--kill-on-loss` the command and the processes it started get SIGTERM, then
    /// SIGKILL after the grace period. The command's end is followed by one more
    /// check ([`Cli::lost_by_now`]), so that a loss since the last renewal is not
    /// missed either. Returns the command's status and whether the lock was lost.
    fn wait_under_lease(
        &self,
        lock: &Lock,
        name: &str,
        pid: libc::pid_t,
        signals: &signals::Signals,
        kill: Option<Duration>,
    ) -> (Result<(sys::Status, Option<i32>), sys::Errno>, bool) {
        let ttl = self
            .inv
            .etcd
            .as_ref()
            .and_then(|e| e.lease_ttl)
            .unwrap_or(10);
        let period = Duration::from_secs(u64::from(ttl)).mul_f64(0.3);
        let stop = sys::Event::new().ok();
        std::thread::scope(|scope| {
            let watcher = stop.as_ref().map(|stop| {
                scope.spawn(move || self.watch_lease(lock, name, pid, stop, period, kill))
            });
            let status = signals.wait_for(pid);
            if let Some(stop) = &stop {
                stop.set();
            }
            let found = watcher.and_then(|w| w.join().ok()).flatten();
            let lost = found.is_some() || self.lost_by_now(lock, name);
            if let (Some(Some(terminated)), Some(grace)) = (found, kill) {
                self.end_leftovers(terminated + grace);
            }
            (status, lost)
        })
    }

    /// Whether the etcd lock was lost since the lease watch last renewed it, once the
    /// command has ended (said on stderr): by the clock (no renewal confirmed for a
    /// whole TTL, which the library tells without a request), or because its key is
    /// gone from the queue (its lease revoked: it cannot come back, so a key still
    /// there proves the lock was held up to now). One read of the queue, lighter than
    /// a renewal; when etcd cannot be reached for it, the release that follows says so.
    fn lost_by_now(&self, lock: &Lock, name: &str) -> bool {
        if let Err(e) = lock.fence() {
            self.warn(&self.etcd_message(name, &e));
            return e.errno() == libc::ENOLCK;
        }
        match lock.list() {
            Ok(queue) if !queue.iter().any(|h| h.is_self) => {
                self.warn(&format!(
                    "{name}: the etcd lock was lost: its key is gone from etcd (its lease was \
                     revoked, or expired); another process may hold it now"
                ));
                true
            }
            _ => false,
        }
    }

    /// The lease watch of [`Cli::wait_under_lease`], until `stop`: `None` while the lock
    /// is held; once it is lost, `Some(when SIGTERM was sent)` (`Some(None)` without
    /// `--kill-on-loss`).
    fn watch_lease(
        &self,
        lock: &Lock,
        name: &str,
        pid: libc::pid_t,
        stop: &sys::Event,
        period: Duration,
        kill: Option<Duration>,
    ) -> Option<Option<Instant>> {
        let mut wait = period;
        let lost = loop {
            if let [true] = sys::poll([stop.as_fd()], Some(wait)) {
                return None;
            }
            match lock.touch() {
                Ok(()) => wait = period,
                Err(e) if e.errno() == libc::ENOLCK => break e,
                // Not confirmed now (etcd unreachable): again soon. The library counts
                // the lease lost once a whole TTL passed without a confirmed renewal.
                Err(_) => wait = TOUCH_RETRY.min(period),
            }
        };
        self.warn(&self.etcd_message(name, &lost));
        let Some(grace) = kill else {
            self.warn(&format!(
                "the command (pid {pid}) goes on running without the lock; {} exits with \
                 status {EX_LOCK_LOST} when it ends",
                self.name
            ));
            return Some(None);
        };
        self.warn(&format!(
            "--kill-on-loss: sending SIGTERM to the command (pid {pid}) and the processes \
             it started; SIGKILL in {} s if they have not ended",
            seconds(grace)
        ));
        let terminated = Instant::now();
        signal_all(pid, libc::SIGTERM);
        if let [false] = sys::poll([stop.as_fd()], Some(grace)) {
            self.warn(&format!(
                "--kill-on-loss: the command (pid {pid}) did not end within {} s: SIGKILL",
                seconds(grace)
            ));
            signal_all(pid, libc::SIGKILL);
        }
        Some(Some(terminated))
    }

    /// `--kill-on-loss`, after the command has ended: the processes it left behind
    /// (this process's descendants, as a child subreaper) get until `deadline` to end
    /// after their SIGTERM, then SIGKILL.
    fn end_leftovers(&self, deadline: Instant) {
        let mut killed_at: Option<Instant> = None;
        loop {
            sys::reap_any();
            let left = sys::descendants();
            if left.is_empty() {
                return;
            }
            let now = Instant::now();
            match killed_at {
                None if now >= deadline => {
                    self.warn(&format!(
                        "--kill-on-loss: SIGKILL to the processes the command left behind: {left:?}"
                    ));
                    for &p in &left {
                        sys::kill(p, libc::SIGKILL);
                    }
                    killed_at = Some(now);
                }
                Some(at) if now >= at + Duration::from_secs(2) => {
                    self.warn(&format!(
                        "--kill-on-loss: processes {left:?} have not ended after SIGKILL"
                    ));
                    return;
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `--close` with `--fd N`: N, which the command does not get; else -1.
    fn close_fd(&self) -> i32 {
        match (self.inv.close, &self.inv.target) {
            (true, Target::DescriptorCommand { fd, .. }) => *fd,
            _ => -1,
        }
    }

    /// Replaces this process with the command, which gets the signal mask `unilock`
    /// started with; on failure, flock's message and code.
    fn exec(&self, argv: &sys::Argv, signals: &signals::Signals) -> ! {
        let e = sys::exec(argv, self.close_fd(), signals.command_mask());
        self.warn(&format!(
            "failed to execute {}: {}",
            argv.program(),
            sys::strerror(e)
        ));
        sys::exit_now(if e == libc::ENOMEM {
            EX_OSERR
        } else {
            EX_UNAVAILABLE
        })
    }

    /// `--test FILE` and `--list FILE`: nothing is created and nothing is locked.
    /// `--list` shows the DOTLOCK lock file too: FILE itself with `-b dotlock`,
    /// FILE.lock in a set, and FILE.lock when it exists with the kernel backends (the
    /// lock file a `-b dotlock,...` set on FILE takes).
    fn report(&self, path: &OsString, kind: Report) -> Result<i32, Exit> {
        let shown = path.to_string_lossy();
        if self.inv.etcd.is_some() {
            return self.report_etcd(&shown, kind);
        }
        let lock = Lock::open(path, &self.options(Flags::empty()))
            .map_err(|e| self.open_failed(&shown, &e))?;
        let file = absolute(Path::new(path));
        let dotlock_only = self.inv.backends == Backend::Dotlock as u32;
        let lock_file = if dotlock_only {
            file.clone()
        } else {
            let mut name = file.clone().into_os_string();
            name.push(".lock");
            PathBuf::from(name)
        };
        let row = |h: Holder| {
            let path = match (&h.lock_file, h.backend) {
                (Some(f), _) => f.path.clone(),
                (None, Backend::Dotlock) => lock_file.clone(),
                (None, _) => file.clone(),
            };
            report::Row { holder: h, path }
        };
        let style = &self.inv.table;
        match kind {
            Report::Test => {
                let Operation::Lock(mode) = self.inv.operation else {
                    unreachable!("the parser refuses --test with --unlock")
                };
                let holder = self
                    .holder_now(&lock, mode)
                    .map_err(|e| self.fail(EX_OSERR, &format!("cannot test {shown}: {e}")))?;
                let rows: Vec<report::Row> = holder.into_iter().map(row).collect();
                if self.inv.json {
                    print_out(&report::render(&rows, style, true));
                } else if rows.is_empty() {
                    if self.inv.verbose {
                        self.warn(&format!("{shown}: the {} lock is free", mode.name()));
                    }
                } else {
                    print_out(&report::render(&rows, style, false));
                }
                Ok(if rows.is_empty() {
                    0
                } else {
                    self.inv.conflict_exit_code
                })
            }
            Report::List => {
                let mut holders = lock
                    .list()
                    .map_err(|e| self.fail(EX_OSERR, &format!("cannot list {shown}: {e}")))?;
                if self.inv.backends & Backend::Dotlock as u32 == 0 {
                    // Best effort: a lock file that cannot be read is not listed.
                    let options = Options::new().backend(Backend::Dotlock);
                    if let Ok(dot) = Lock::open(&lock_file, &options) {
                        holders.splice(0..0, dot.list().unwrap_or_default());
                    }
                }
                let rows: Vec<report::Row> = holders.into_iter().map(row).collect();
                print_out(&report::render(&rows, style, self.inv.json));
                Ok(0)
            }
        }
    }
}

impl Cli {
    /// `--test` and `--list` of an etcd lock: the holder, or the whole queue (the
    /// holder, then the waiters in the order they will be served); PATH is the name.
    fn report_etcd(&self, name: &str, kind: Report) -> Result<i32, Exit> {
        let lock = Lock::open(name, &self.options(Flags::empty()))
            .map_err(|e| self.etcd_open_failed(name, &e))?;
        let holders = match kind {
            Report::Test => lock.query(Mode::Exclusive, 0, 0).map(Vec::from_iter),
            Report::List => lock.list(),
        }
        .map_err(|e| self.etcd_failed(name, &e))?;
        let rows: Vec<report::Row> = holders
            .into_iter()
            .map(|holder| report::Row {
                holder,
                path: PathBuf::from(name),
            })
            .collect();
        let style = &self.inv.table;
        if kind == Report::List || self.inv.json || !rows.is_empty() {
            print_out(&report::render(&rows, style, self.inv.json));
        } else if self.inv.verbose {
            self.warn(&format!("{name}: the etcd lock is free"));
        }
        Ok(match kind {
            Report::Test if !rows.is_empty() => self.inv.conflict_exit_code,
            _ => 0,
        })
    }
}

/// `path` made absolute, its symbolic links and `..` resolved where it exists (as
/// lslocks shows the path the kernel has), else joined to the current directory.
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// Sends `signal` to the command `pid` and every other descendant of this process
/// (the processes the command started, and those it left behind).
fn signal_all(pid: libc::pid_t, signal: i32) {
    sys::kill(pid, signal);
    for p in sys::descendants() {
        if p != pid {
            sys::kill(p, signal);
        }
    }
}

/// A duration as seconds for a message: "5", "0.5".
fn seconds(d: Duration) -> String {
    let text = format!("{:.3}", d.as_secs_f64());
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Whether two looks at the holder found the same lock.
fn same_holder(a: &Option<Holder>, b: &Option<Holder>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            (a.pid, a.mode, a.backend, a.start, a.len) == (b.pid, b.mode, b.backend, b.start, b.len)
        }
        _ => false,
    }
}

/// An ETIMEDOUT that is not the end of a wait for the lock (a request that got no
/// answer in time) as an error of its own, so that it is not taken for a conflict.
fn not_a_wait(e: Error) -> Error {
    if e.is_timeout() {
        Error::new(libc::EHOSTUNREACH, e.detail())
    } else {
        e
    }
}

/// The library's "not supported yet", said with the option that asked for it.
fn unsupported(e: &Error) -> String {
    let detail = e.detail();
    let option = if detail.contains("UNILOCK_FAIR") {
        "--fair"
    } else if detail.contains("UNLINK") {
        "--unlink"
    } else if detail.contains("DOTLOCK") {
        "--backend dotlock"
    } else {
        "--backend"
    };
    format!("{option}: not supported with these options: {detail}")
}
