//! The command line, parsed the way util-linux flock(1) parses it: getopt_long with
//! `+` (options stop at the first operand, everything after it is passed verbatim),
//! clustered short options (`-nsw5`), `--name=value` and `--name value`, unique
//! prefixes of long names (`--nonb`, `--verb`), and flock's messages for every error.
//!
//! A prefix is resolved among flock(1)'s own long options first, so that every
//! abbreviation flock accepts means the same here (`--s` is `--shared`, `--u` is
//! `--unlock`, `--t` is `--timeout`) even where unilock's extra options share it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use unilock::{Backend, Mode};

/// Lock, or unlock (`-u`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Lock(Mode),
    Unlock,
}

/// What the operands name.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// `FILE COMMAND [ARGS...]` or `FILE -c COMMAND`: the argv to run.
    File {
        path: OsString,
        command: Vec<OsString>,
    },
    /// `FD`: a descriptor the caller opened; no command.
    Descriptor(i32),
    /// `--fd FD COMMAND...` or `--fd FD -c COMMAND`: lock a descriptor the caller
    /// opened and run the command (util-linux's newer flock(1)).
    DescriptorCommand { fd: i32, command: Vec<OsString> },
    /// `--test FILE` / `--list FILE`.
    Report { path: OsString, kind: Report },
}

/// `--test` or `--list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    Test,
    List,
}

/// A parsed command line.
#[derive(Debug)]
pub struct Invocation {
    pub operation: Operation,
    /// `None`: wait forever; `Some(ZERO)`: `-n` or `-w 0`.
    pub timeout: Option<Duration>,
    pub conflict_exit_code: i32,
    pub close: bool,
    pub no_fork: bool,
    pub verbose: bool,
    /// [`Backend`] bits; 0 = FLOCK.
    pub backends: u32,
    /// `(start, len)`, `(0, 0)` = the whole file.
    pub range: (u64, u64),
    pub fair: bool,
    pub unlink: bool,
    pub follow: bool,
    pub stale_after_s: Option<u32>,
    pub create_mode: Option<u32>,
    pub json: bool,
    /// How `--test` and `--list` print (`--output`, `--noheadings`, `--raw`,
    /// `--bytes`).
    pub table: crate::report::Style,
    /// `--etcd` or `-b etcd`: where and how to reach etcd; `None` for the file
    /// backends.
    pub etcd: Option<Etcd>,
    /// The index in `argv` (the program name at 0) of an argument that holds a
    /// password (`--etcd-user NAME:PASSWORD`), to blank out of `ps`.
    pub secret_arg: Option<usize>,
    pub target: Target,
}

/// The etcd settings of the command line; what is missing comes from the
/// environment (the library reads it).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Etcd {
    /// `--etcd=ENDPOINTS`.
    pub endpoints: Option<String>,
    pub cacert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub user: Option<String>,
    /// From `--etcd-user NAME:PASSWORD`; never printed.
    pub password: Option<String>,
    /// `--lease-ttl`, in seconds.
    pub lease_ttl: Option<u32>,
    /// `--kill-on-loss[=GRACE]`: the grace between SIGTERM and SIGKILL.
    pub kill_on_loss: Option<Duration>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is never shown.
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .field("cacert", &self.cacert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("lease_ttl", &self.lease_ttl)
            .field("kill_on_loss", &self.kill_on_loss)
            .finish()
    }
}

/// How long `--kill-on-loss` waits after SIGTERM before SIGKILL, when it says not.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<Invocation>),
    Help,
    Version,
}

/// A usage error: exit 64 after the message, and after "Try '... --help'" when
/// `try_help`.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError {
    /// `None`: only the "Try" line (flock's `-?`).
    pub message: Option<String>,
    /// getopt's own errors (unknown option, missing argument, ...): glibc prefixes
    /// them with argv[0] as given, where flock's other messages use its basename.
    pub from_getopt: bool,
    pub try_help: bool,
}

impl UsageError {
    fn plain(message: impl Into<String>) -> Self {
        UsageError {
            message: Some(message.into()),
            from_getopt: false,
            try_help: false,
        }
    }

    fn getopt(message: impl Into<String>) -> Self {
        UsageError {
            message: Some(message.into()),
            from_getopt: true,
            try_help: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    Shared,
    Exclusive,
    Unlock,
    Nonblock,
    Timeout,
    ConflictExitCode,
    Close,
    NoFork,
    Verbose,
    Help,
    Version,
    Fcntl,
    Start,
    Length,
    Backend,
    Range,
    Fair,
    Unlink,
    Stale,
    Mode,
    Follow,
    Test,
    List,
    Json,
    Fd,
    Output,
    NoHeadings,
    Raw,
    Bytes,
    Etcd,
    EtcdCacert,
    EtcdCert,
    EtcdKey,
    EtcdUser,
    LeaseTtl,
    KillOnLoss,
}

/// Whether a long option takes a value: none, one (`--name=value` or `--name value`),
/// or an optional one, which getopt takes only in the `--name=value` form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Takes {
    Nothing,
    Value,
    Optional,
}

struct LongOption {
    name: &'static str,
    takes: Takes,
    opt: Opt,
}

const fn long(name: &'static str, takes_value: bool, opt: Opt) -> LongOption {
    LongOption {
        name,
        takes: if takes_value {
            Takes::Value
        } else {
            Takes::Nothing
        },
        opt,
    }
}

const fn optional(name: &'static str, opt: Opt) -> LongOption {
    LongOption {
        name,
        takes: Takes::Optional,
        opt,
    }
}

/// flock(1)'s long options (util-linux 2.38), in its order.
const FLOCK_LONG: &[LongOption] = &[
    long("shared", false, Opt::Shared),
    long("exclusive", false, Opt::Exclusive),
    long("unlock", false, Opt::Unlock),
    long("nonblocking", false, Opt::Nonblock),
    long("nb", false, Opt::Nonblock),
    long("timeout", true, Opt::Timeout),
    long("wait", true, Opt::Timeout),
    long("conflict-exit-code", true, Opt::ConflictExitCode),
    long("close", false, Opt::Close),
    long("no-fork", false, Opt::NoFork),
    long("verbose", false, Opt::Verbose),
    long("help", false, Opt::Help),
    long("version", false, Opt::Version),
];

/// unilock's own long options (`--fcntl`, `--start`, `--length` as newer util-linux).
const EXTRA_LONG: &[LongOption] = &[
    long("nonblock", false, Opt::Nonblock),
    long("fcntl", false, Opt::Fcntl),
    long("start", true, Opt::Start),
    long("length", true, Opt::Length),
    long("backend", true, Opt::Backend),
    long("range", true, Opt::Range),
    long("fair", false, Opt::Fair),
    long("unlink", false, Opt::Unlink),
    long("stale", true, Opt::Stale),
    long("mode", true, Opt::Mode),
    long("follow", false, Opt::Follow),
    long("test", false, Opt::Test),
    long("list", false, Opt::List),
    long("json", false, Opt::Json),
    long("fd", true, Opt::Fd),
    long("output", true, Opt::Output),
    long("noheadings", false, Opt::NoHeadings),
    long("raw", false, Opt::Raw),
    long("bytes", false, Opt::Bytes),
    optional("etcd", Opt::Etcd),
    long("etcd-cacert", true, Opt::EtcdCacert),
    long("etcd-cert", true, Opt::EtcdCert),
    long("etcd-key", true, Opt::EtcdKey),
    long("etcd-user", true, Opt::EtcdUser),
    long("lease-ttl", true, Opt::LeaseTtl),
    optional("kill-on-loss", Opt::KillOnLoss),
];

/// flock's short options `+sexnoFuw:E:hV?`, plus `-b`.
fn short(c: u8) -> Option<(Opt, bool)> {
    Some(match c {
        b's' => (Opt::Shared, false),
        b'e' | b'x' => (Opt::Exclusive, false),
        b'u' => (Opt::Unlock, false),
        b'n' => (Opt::Nonblock, false),
        b'o' => (Opt::Close, false),
        b'F' => (Opt::NoFork, false),
        b'w' => (Opt::Timeout, true),
        b'E' => (Opt::ConflictExitCode, true),
        b'h' => (Opt::Help, false),
        b'V' => (Opt::Version, false),
        b'b' => (Opt::Backend, true),
        _ => return None,
    })
}

/// Finds a long option by exact name, else by unique prefix (flock's own first).
fn find_long(name: &str) -> Result<&'static LongOption, UsageError> {
    let all = || FLOCK_LONG.iter().chain(EXTRA_LONG);
    if let Some(o) = all().find(|o| o.name == name) {
        return Ok(o);
    }
    for table in [FLOCK_LONG, EXTRA_LONG] {
        let matches: Vec<&LongOption> = table.iter().filter(|o| o.name.starts_with(name)).collect();
        let Some(first) = matches.first() else {
            continue;
        };
        if matches
            .iter()
            .all(|o| o.opt == first.opt && o.takes == first.takes)
        {
            return Ok(first);
        }
        let possibilities: Vec<String> =
            matches.iter().map(|o| format!("'--{}'", o.name)).collect();
        return Err(UsageError::getopt(format!(
            "option '--{name}' is ambiguous; possibilities: {}",
            possibilities.join(" ")
        )));
    }
    Err(UsageError::getopt(format!(
        "unrecognized option '--{name}'"
    )))
}

#[derive(Default)]
struct Settings {
    operation: Option<Operation>,
    nonblock: bool,
    timeout: Option<Duration>,
    wait_forever: bool,
    conflict_exit_code: Option<i32>,
    close: bool,
    no_fork: bool,
    verbose: bool,
    backends: Option<u32>,
    start: Option<u64>,
    len: Option<u64>,
    fair: bool,
    unlink: bool,
    follow: bool,
    stale_after_s: Option<u32>,
    create_mode: Option<u32>,
    report: Option<Report>,
    /// Both `--test` and `--list` were given.
    test_and_list: bool,
    json: bool,
    fd: Option<i32>,
    output: Option<String>,
    noheadings: bool,
    raw: bool,
    bytes: bool,
    /// `--etcd` was given.
    etcd: bool,
    etcd_endpoints: Option<String>,
    etcd_cacert: Option<String>,
    etcd_cert: Option<String>,
    etcd_key: Option<String>,
    etcd_user: Option<String>,
    etcd_password: Option<String>,
    lease_ttl: Option<u32>,
    kill_on_loss: Option<Duration>,
    /// The index in the arguments of the one that holds a password.
    secret_arg: Option<usize>,
}

fn text(value: &OsStr) -> String {
    value.to_string_lossy().into_owned()
}

/// flock's `strtotimeval_or_err`: a decimal number of seconds, fractions allowed.
/// Negative, infinite and NaN values are refused here (flock fails on them later
/// with "cannot set up timer", exit 71).
fn parse_timeout(value: &OsStr) -> Result<(Option<Duration>, bool), UsageError> {
    let s = text(value);
    let invalid = || UsageError::plain(format!("invalid timeout value: '{s}'"));
    let secs: f64 = s.parse().map_err(|_| invalid())?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(invalid());
    }
    // Microseconds, truncated, as flock's struct timeval.
    let micros = secs * 1e6;
    if micros >= u64::MAX as f64 {
        return Ok((None, true)); // longer than the universe: wait forever
    }
    Ok((Some(Duration::from_micros(micros as u64)), false))
}

fn parse_exit_code(value: &OsStr) -> Result<i32, UsageError> {
    let s = text(value);
    let code: i32 = s
        .trim_start()
        .parse()
        .map_err(|_| UsageError::plain(format!("invalid exit code: '{s}'")))?;
    if !(0..=255).contains(&code) {
        return Err(UsageError::plain(
            "exit code out of range (expected 0 to 255)",
        ));
    }
    Ok(code)
}

/// A byte count: decimal, or hexadecimal after `0x`.
fn parse_bytes(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_range(value: &OsStr) -> Result<(u64, u64), UsageError> {
    let s = text(value);
    let invalid = || {
        UsageError::plain(format!(
            "invalid range: '{s}' (expected START[:LEN], in bytes)"
        ))
    };
    let (start, len) = match s.split_once(':') {
        Some((a, b)) => (parse_bytes(a), parse_bytes(b)),
        None => (parse_bytes(&s), Some(0)),
    };
    match (start, len) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(invalid()),
    }
}

fn parse_backends(value: &OsStr) -> Result<u32, UsageError> {
    let s = text(value);
    let mut bits = 0;
    for name in s.split(',') {
        bits |= match name.trim().to_ascii_lowercase().as_str() {
            "flock" => Backend::Flock as u32,
            "ofd" | "ofdlck" | "fcntl" => Backend::Ofd as u32,
            "posix" => Backend::Posix as u32,
            "dotlock" => Backend::Dotlock as u32,
            "etcd" => Backend::Etcd as u32,
            _ => {
                return Err(UsageError::plain(format!(
                    "unknown backend: '{name}' (expected flock, ofd, posix, dotlock or etcd, \
                     comma-separated for a set)"
                )));
            }
        };
    }
    if bits & Backend::Etcd as u32 != 0 && bits != Backend::Etcd as u32 {
        return Err(UsageError::plain(
            "the ETCD backend cannot be combined with the file backends: a lock is in etcd \
             or in the file system",
        ));
    }
    let fcntl = Backend::Ofd as u32 | Backend::Posix as u32;
    if bits & fcntl == fcntl {
        return Err(UsageError::plain(
            "the OFD and POSIX backends cannot be combined: choose one fcntl mechanism",
        ));
    }
    Ok(bits)
}

fn parse_mode(value: &OsStr) -> Result<u32, UsageError> {
    let s = text(value);
    match u32::from_str_radix(s.strip_prefix("0o").unwrap_or(&s), 8) {
        Ok(m) if m <= 0o777 && !s.is_empty() => Ok(m),
        _ => Err(UsageError::plain(format!(
            "invalid mode: '{s}' (expected octal permissions, e.g. 0644)"
        ))),
    }
}

/// `--kill-on-loss=GRACE`: seconds, fractions allowed, as `-w`.
fn parse_grace(value: &OsStr) -> Result<Duration, UsageError> {
    let s = text(value);
    let invalid = || {
        UsageError::plain(format!(
            "invalid grace period: '{s}' (expected seconds between SIGTERM and SIGKILL)"
        ))
    };
    let secs: f64 = s.parse().map_err(|_| invalid())?;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(invalid());
    }
    Ok(Duration::from_micros((secs * 1e6) as u64))
}

/// `--lease-ttl SECS`: whole seconds, at least 1.
fn parse_ttl(value: &OsStr) -> Result<u32, UsageError> {
    let s = text(value);
    s.parse().ok().filter(|&t: &u32| t >= 1).ok_or_else(|| {
        UsageError::plain(format!(
            "invalid lease TTL: '{s}' (expected whole seconds, at least 1)"
        ))
    })
}

fn parse_stale(value: &OsStr) -> Result<u32, UsageError> {
    let s = text(value);
    s.parse().map_err(|_| {
        UsageError::plain(format!(
            "invalid stale time: '{s}' (expected whole seconds)"
        ))
    })
}

/// Applies one option. `Ok(Some(_))` ends parsing (`-h`, `-V`), as in flock.
fn apply(
    settings: &mut Settings,
    opt: Opt,
    value: Option<&OsStr>,
) -> Result<Option<Parsed>, UsageError> {
    let given = value;
    let value = || given.expect("the parser supplies a value to options that take one");
    match opt {
        Opt::Shared => settings.operation = Some(Operation::Lock(Mode::Shared)),
        Opt::Exclusive => settings.operation = Some(Operation::Lock(Mode::Exclusive)),
        Opt::Unlock => settings.operation = Some(Operation::Unlock),
        Opt::Nonblock => settings.nonblock = true,
        Opt::Timeout => {
            let (timeout, forever) = parse_timeout(value())?;
            settings.timeout = timeout;
            settings.wait_forever = forever;
        }
        Opt::ConflictExitCode => settings.conflict_exit_code = Some(parse_exit_code(value())?),
        Opt::Close => settings.close = true,
        Opt::NoFork => settings.no_fork = true,
        Opt::Verbose => settings.verbose = true,
        Opt::Help => return Ok(Some(Parsed::Help)),
        Opt::Version => return Ok(Some(Parsed::Version)),
        Opt::Fcntl => settings.backends = Some(Backend::Ofd as u32),
        Opt::Start => {
            let s = text(value());
            settings.start = Some(
                parse_bytes(&s)
                    .ok_or_else(|| UsageError::plain(format!("invalid start offset: '{s}'")))?,
            );
        }
        Opt::Length => {
            let s = text(value());
            settings.len = Some(
                parse_bytes(&s)
                    .ok_or_else(|| UsageError::plain(format!("invalid length: '{s}'")))?,
            );
        }
        Opt::Backend => settings.backends = Some(parse_backends(value())?),
        Opt::Range => {
            let (start, len) = parse_range(value())?;
            settings.start = Some(start);
            settings.len = Some(len);
        }
        Opt::Fair => settings.fair = true,
        Opt::Unlink => settings.unlink = true,
        Opt::Stale => settings.stale_after_s = Some(parse_stale(value())?),
        Opt::Mode => settings.create_mode = Some(parse_mode(value())?),
        Opt::Follow => settings.follow = true,
        Opt::Test | Opt::List => {
            let kind = if opt == Opt::Test {
                Report::Test
            } else {
                Report::List
            };
            if settings.report.is_some_and(|k| k != kind) {
                settings.test_and_list = true;
            }
            settings.report = Some(kind);
        }
        Opt::Json => settings.json = true,
        Opt::Fd => {
            let s = text(value());
            let fd = s
                .trim_start()
                .parse::<i32>()
                .ok()
                .filter(|&fd| fd >= 0)
                .ok_or_else(|| UsageError::plain(format!("bad file descriptor: '{s}'")))?;
            settings.fd = Some(fd);
        }
        Opt::Output => settings.output = Some(text(value())),
        Opt::NoHeadings => settings.noheadings = true,
        Opt::Raw => settings.raw = true,
        Opt::Bytes => settings.bytes = true,
        Opt::Etcd => {
            settings.etcd = true;
            settings.etcd_endpoints = given.map(text).filter(|e| !e.is_empty());
        }
        Opt::EtcdCacert => settings.etcd_cacert = Some(text(value())),
        Opt::EtcdCert => settings.etcd_cert = Some(text(value())),
        Opt::EtcdKey => settings.etcd_key = Some(text(value())),
        Opt::EtcdUser => {
            let s = text(value());
            let (user, password) = match s.split_once(':') {
                Some((user, password)) => (user.to_string(), Some(password.to_string())),
                None => (s, None),
            };
            if user.is_empty() {
                return Err(UsageError::plain(
                    "--etcd-user needs a user name (NAME or NAME:PASSWORD)",
                ));
            }
            settings.etcd_user = Some(user);
            settings.etcd_password = password;
        }
        Opt::LeaseTtl => settings.lease_ttl = Some(parse_ttl(value())?),
        Opt::KillOnLoss => {
            settings.kill_on_loss = Some(match given {
                Some(v) => parse_grace(v)?,
                None => DEFAULT_GRACE,
            });
        }
    }
    Ok(None)
}

/// Parses the arguments after the program name.
pub fn parse(args: &[OsString]) -> Result<Parsed, UsageError> {
    if args.is_empty() {
        return Err(UsageError {
            from_getopt: false,
            ..UsageError::getopt("not enough arguments")
        });
    }
    let mut settings = Settings::default();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_bytes();
        if arg == b"--" {
            i += 1;
            break;
        }
        if arg.len() < 2 || arg[0] != b'-' {
            break; // the first operand: options end here
        }
        if settings.fd.is_some() && (arg == b"-c" || arg == b"--command") {
            break; // `--fd N -c COMMAND`: the command string follows
        }
        i += 1;
        if let Some(body) = arg.strip_prefix(b"--") {
            let body = String::from_utf8_lossy(body);
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(OsString::from(v))),
                None => (body.to_string(), None),
            };
            let option = find_long(&name)?;
            let value = match (option.takes, inline) {
                (Takes::Nothing, Some(_)) => {
                    return Err(UsageError::getopt(format!(
                        "option '--{}' doesn't allow an argument",
                        option.name
                    )));
                }
                (Takes::Nothing | Takes::Optional, None) => None,
                (Takes::Value | Takes::Optional, Some(v)) => Some(v),
                (Takes::Value, None) => match args.get(i) {
                    Some(v) => {
                        i += 1;
                        Some(v.clone())
                    }
                    None => {
                        return Err(UsageError::getopt(format!(
                            "option '--{}' requires an argument",
                            option.name
                        )));
                    }
                },
            };
            if let Some(done) = apply(&mut settings, option.opt, value.as_deref())? {
                return Ok(done);
            }
            if option.opt == Opt::EtcdUser && settings.etcd_password.is_some() {
                // The argument just read holds a password: blanked once parsed.
                settings.secret_arg = Some(i - 1);
            }
            continue;
        }
        let mut k = 1;
        while k < arg.len() {
            let c = arg[k];
            k += 1;
            if c == b'?' {
                return Err(UsageError {
                    message: None,
                    from_getopt: true,
                    try_help: true,
                });
            }
            let Some((opt, takes_value)) = short(c) else {
                return Err(UsageError::getopt(format!(
                    "invalid option -- '{}'",
                    char::from(c)
                )));
            };
            let value = if !takes_value {
                None
            } else if k < arg.len() {
                let v = OsStr::from_bytes(&arg[k..]).to_os_string();
                k = arg.len();
                Some(v)
            } else if let Some(v) = args.get(i) {
                i += 1;
                Some(v.clone())
            } else {
                return Err(UsageError::getopt(format!(
                    "option requires an argument -- '{}'",
                    char::from(c)
                )));
            };
            if let Some(done) = apply(&mut settings, opt, value.as_deref())? {
                return Ok(done);
            }
        }
    }
    finish(settings, &args[i..]).map(|inv| Parsed::Run(Box::new(inv)))
}

/// Checks the options against each other and reads the operands.
fn finish(s: Settings, operands: &[OsString]) -> Result<Invocation, UsageError> {
    if s.no_fork && s.close {
        return Err(UsageError::plain(
            "the --no-fork and --close options are incompatible",
        ));
    }
    let etcd = etcd_settings(&s, operands)?;
    let range = (s.start.unwrap_or(0), s.len.unwrap_or(0));
    let ranged = s.start.is_some() || s.len.is_some();
    let backends = match s.backends {
        _ if etcd.is_some() => Backend::Etcd as u32,
        Some(b) => b,
        None if ranged => Backend::Ofd as u32,
        None => 0,
    };
    let whole_file_only = Backend::Flock as u32 | Backend::Dotlock as u32;
    if ranged && (backends == 0 || backends & whole_file_only != 0) {
        return Err(UsageError::plain(
            "a byte range needs the OFD or POSIX backend: FLOCK and DOTLOCK lock whole files",
        ));
    }
    let dotlock = backends & Backend::Dotlock as u32 != 0;
    if s.stale_after_s.is_some() && !dotlock {
        return Err(UsageError::plain(
            "--stale applies to DOTLOCK lock files only: add -b dotlock, or drop --stale",
        ));
    }
    if s.fair && dotlock {
        return Err(UsageError::plain(
            "--fair cannot queue for a DOTLOCK lock file: drop --fair, or use -b flock, \
             ofd or posix",
        ));
    }
    let kernel_backends = (backends & !(Backend::Dotlock as u32)).count_ones();
    if s.unlink && (dotlock || kernel_backends > 1) {
        return Err(UsageError::plain(
            "--unlink works with one backend among flock, ofd and posix (a DOTLOCK lock \
             file is removed at every release anyway): drop --unlink, or choose one backend",
        ));
    }
    if s.test_and_list {
        return Err(UsageError::plain(
            "--test and --list cannot be combined: --list prints every lock on the file, \
             --test whether this lock could be taken; run them one after the other",
        ));
    }
    if s.json && s.report.is_none() {
        return Err(UsageError::plain("--json needs --test or --list"));
    }
    for (given, option) in [
        (s.output.is_some(), "--output"),
        (s.noheadings, "--noheadings"),
        (s.raw, "--raw"),
        (s.bytes, "--bytes"),
    ] {
        if given && s.report.is_none() {
            return Err(UsageError::plain(format!(
                "{option} needs --test or --list"
            )));
        }
    }
    if s.raw && s.json {
        return Err(UsageError::plain(
            "--raw and --json cannot be combined: choose one output format",
        ));
    }
    let table = crate::report::Style::new(s.output.as_deref(), s.noheadings, s.raw, s.bytes)
        .map_err(UsageError::plain)?;
    let table = if etcd.is_some() {
        table.for_etcd()
    } else {
        table
    };
    let operation = s.operation.unwrap_or(Operation::Lock(Mode::Exclusive));
    if operation == Operation::Lock(Mode::Shared) && dotlock && s.report.is_none() {
        return Err(UsageError::plain(
            "a DOTLOCK lock file is exclusive only: drop -s, or use -b flock, ofd or posix \
             for a shared lock",
        ));
    }
    if s.fd.is_some() && s.report.is_some() {
        return Err(UsageError::plain(
            "--fd cannot be combined with --test or --list, which take a file",
        ));
    }
    let descriptor_checks = |what: &str| -> Result<(), UsageError> {
        if dotlock {
            return Err(UsageError::plain(format!(
                "the DOTLOCK backend needs a path (its lock file is made by name), not {what}: \
                 give the file, as in 'unilock -b dotlock FILE COMMAND'"
            )));
        }
        if backends & Backend::Posix as u32 != 0 {
            return Err(UsageError::plain(format!(
                "a POSIX lock belongs to the process that takes it and would end when \
                 this command exits, so it cannot be taken on {what}: use -b flock or \
                 ofd, or give the file"
            )));
        }
        if s.unlink {
            return Err(UsageError::plain(format!(
                "--unlink needs a path to delete, not {what}: give the file, or drop --unlink"
            )));
        }
        Ok(())
    };
    let target = if let Some(fd) = s.fd {
        descriptor_checks("a descriptor")?;
        match operands {
            [] => Target::Descriptor(fd),
            [flag, rest @ ..] if flag == "-c" || flag == "--command" => {
                let [command] = rest else {
                    return Err(UsageError::plain(format!(
                        "{} requires exactly one command argument",
                        text(flag)
                    )));
                };
                Target::DescriptorCommand {
                    fd,
                    command: shell_command(command),
                }
            }
            command => Target::DescriptorCommand {
                fd,
                command: command.to_vec(),
            },
        }
    } else if let Some(kind) = s.report {
        let option = match kind {
            Report::Test => "--test",
            Report::List => "--list",
        };
        if operation == Operation::Unlock {
            return Err(UsageError::plain(format!(
                "{option} cannot be combined with --unlock"
            )));
        }
        match operands {
            [path] => Target::Report {
                path: path.clone(),
                kind,
            },
            [] => return Err(UsageError::plain(format!("{option} requires a file"))),
            _ => {
                return Err(UsageError::plain(format!(
                    "{option} takes one file and no command"
                )));
            }
        }
    } else {
        match operands {
            [] => {
                return Err(UsageError::plain(
                    "requires file descriptor, file or directory",
                ));
            }
            [fd] => {
                let text = text(fd);
                let n: i32 = text
                    .trim_start()
                    .parse()
                    .map_err(|_| UsageError::plain(format!("bad file descriptor: '{text}'")))?;
                descriptor_checks("a descriptor")?;
                Target::Descriptor(n)
            }
            [path, flag, rest @ ..] if flag == "-c" || flag == "--command" => {
                let [command] = rest else {
                    return Err(UsageError::plain(format!(
                        "{} requires exactly one command argument",
                        text(flag)
                    )));
                };
                Target::File {
                    path: path.clone(),
                    command: shell_command(command),
                }
            }
            [path, command @ ..] => Target::File {
                path: path.clone(),
                command: command.to_vec(),
            },
        }
    };
    let timeout = if s.nonblock {
        Some(Duration::ZERO)
    } else if s.wait_forever {
        None
    } else {
        s.timeout
    };
    Ok(Invocation {
        operation,
        timeout,
        conflict_exit_code: s.conflict_exit_code.unwrap_or(1),
        close: s.close,
        no_fork: s.no_fork,
        verbose: s.verbose,
        backends,
        range,
        fair: s.fair,
        unlink: s.unlink,
        follow: s.follow,
        stale_after_s: s.stale_after_s,
        create_mode: s.create_mode,
        json: s.json,
        table,
        etcd,
        secret_arg: s.secret_arg.map(|i| i + 1),
        target,
    })
}

/// The etcd settings when `--etcd` or `-b etcd` asks for an etcd lock (`None`
/// otherwise), after refusing what cannot go with one: each message says what to do.
fn etcd_settings(s: &Settings, operands: &[OsString]) -> Result<Option<Etcd>, UsageError> {
    let by_backend = s.backends == Some(Backend::Etcd as u32);
    if s.etcd && s.backends.is_some() && !by_backend {
        return Err(UsageError::plain(
            "--etcd cannot be combined with --backend or --fcntl naming a file backend: a \
             lock is in etcd or in the file system",
        ));
    }
    let etcd_only = [
        (s.etcd_cacert.is_some(), "--etcd-cacert"),
        (s.etcd_cert.is_some(), "--etcd-cert"),
        (s.etcd_key.is_some(), "--etcd-key"),
        (s.etcd_user.is_some(), "--etcd-user"),
        (s.lease_ttl.is_some(), "--lease-ttl"),
        (s.kill_on_loss.is_some(), "--kill-on-loss"),
    ];
    if !s.etcd && !by_backend {
        if let Some((_, option)) = etcd_only.iter().find(|(given, _)| *given) {
            return Err(UsageError::plain(format!(
                "{option} applies to etcd locks only: add --etcd (or -b etcd)"
            )));
        }
        return Ok(None);
    }
    let why = "an etcd lock is a key in etcd, not a file";
    let refused = [
        (
            s.operation == Some(Operation::Lock(Mode::Shared)) && s.report.is_none(),
            "etcd locks are exclusive only (etcd's lock recipe, which etcdctl lock and \
             unilock share, has no shared mode): drop -s"
                .to_string(),
        ),
        (
            s.operation == Some(Operation::Unlock),
            "-u has nothing to release with --etcd: an etcd lock is released when its \
             command ends (or its lease expires); drop -u"
                .to_string(),
        ),
        (
            s.no_fork,
            "--no-fork cannot keep an etcd lock: unilock must stay while the command runs, \
             to keep the lock's lease alive and release it after; drop -F"
                .to_string(),
        ),
        (
            s.start.is_some() || s.len.is_some(),
            format!("{why}: it has no byte ranges; drop --range, --start and --length"),
        ),
        (
            s.fair,
            "--fair is what an etcd lock does already: its waiters are served first come, \
             first served; drop --fair"
                .to_string(),
        ),
        (
            s.unlink,
            format!("{why}: --unlink has no file to delete; drop --unlink"),
        ),
        (
            s.create_mode.is_some(),
            format!("{why}: --mode has no file to create; drop --mode"),
        ),
        (
            s.follow,
            format!("{why}: --follow has no symbolic link to follow; drop --follow"),
        ),
        (
            s.fd.is_some(),
            format!(
                "{why}: it cannot be taken on a descriptor; give a lock name, as in \
                 'unilock --etcd NAME COMMAND'"
            ),
        ),
        (
            s.kill_on_loss.is_some() && s.report.is_some(),
            "--kill-on-loss applies to a command that runs under the lock, not to --test \
             or --list"
                .to_string(),
        ),
    ];
    if let Some((_, message)) = refused.into_iter().find(|(bad, _)| *bad) {
        return Err(UsageError::plain(message));
    }
    if s.report.is_none() && s.fd.is_none() && operands.len() == 1 {
        return Err(UsageError::plain(format!(
            "{why}: it cannot be taken on a descriptor, and a lock name needs a command to \
             run, as in 'unilock --etcd NAME COMMAND'"
        )));
    }
    Ok(Some(Etcd {
        endpoints: s.etcd_endpoints.clone(),
        cacert: s.etcd_cacert.clone(),
        cert: s.etcd_cert.clone(),
        key: s.etcd_key.clone(),
        user: s.etcd_user.clone(),
        password: s.etcd_password.clone(),
        lease_ttl: s.lease_ttl,
        kill_on_loss: s.kill_on_loss,
    }))
}

/// `$SHELL -c COMMAND` (`/bin/sh` when `SHELL` is unset or empty), as flock's `-c`.
fn shell_command(command: &OsString) -> Vec<OsString> {
    let shell = std::env::var_os("SHELL")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| OsString::from("/bin/sh"));
    vec![shell, OsString::from("-c"), command.clone()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Parsed, UsageError> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse(&args)
    }

    fn invocation(args: &[&str]) -> Invocation {
        match run(args) {
            Ok(Parsed::Run(inv)) => *inv,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    fn message(args: &[&str]) -> String {
        run(args).unwrap_err().message.unwrap_or_default()
    }

    #[test]
    fn options_stop_at_the_first_operand() {
        let inv = invocation(&["-n", "f", "ls", "-s", "--", "-x"]);
        assert_eq!(inv.timeout, Some(Duration::ZERO));
        assert_eq!(inv.operation, Operation::Lock(Mode::Exclusive));
        assert_eq!(
            inv.target,
            Target::File {
                path: "f".into(),
                command: ["ls", "-s", "--", "-x"]
                    .iter()
                    .map(OsString::from)
                    .collect()
            }
        );
    }

    #[test]
    fn clustered_and_attached_short_options() {
        let inv = invocation(&["-sw0.25", "-E42", "f", "true"]);
        assert_eq!(inv.operation, Operation::Lock(Mode::Shared));
        assert_eq!(inv.timeout, Some(Duration::from_millis(250)));
        assert_eq!(inv.conflict_exit_code, 42);
    }

    #[test]
    fn wait_zero_is_nonblocking_and_nonblock_wins_over_wait() {
        assert_eq!(
            invocation(&["-w", "0", "f", "true"]).timeout,
            Some(Duration::ZERO)
        );
        assert_eq!(
            invocation(&["-n", "-w", "5", "f", "true"]).timeout,
            Some(Duration::ZERO)
        );
        assert_eq!(invocation(&["f", "true"]).timeout, None);
    }

    #[test]
    fn long_prefixes_resolve_as_flock_resolves_them() {
        assert_eq!(
            invocation(&["--nonb", "f", "x"]).timeout,
            Some(Duration::ZERO)
        );
        assert_eq!(
            invocation(&["--nonblock", "f", "x"]).timeout,
            Some(Duration::ZERO)
        );
        assert_eq!(
            invocation(&["--s", "f", "x"]).operation,
            Operation::Lock(Mode::Shared)
        );
        assert_eq!(invocation(&["--u", "f", "x"]).operation, Operation::Unlock);
        assert_eq!(
            invocation(&["--t=1", "f", "x"]).timeout,
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            message(&["--c", "f", "x"]),
            "option '--c' is ambiguous; possibilities: '--conflict-exit-code' '--close'"
        );
        assert_eq!(message(&["--foo", "f", "x"]), "unrecognized option '--foo'");
        assert_eq!(
            message(&["--shared=1", "f", "x"]),
            "option '--shared' doesn't allow an argument"
        );
        assert_eq!(
            message(&["--timeout"]),
            "option '--timeout' requires an argument"
        );
    }

    #[test]
    fn getopt_errors_use_flocks_words() {
        assert_eq!(message(&["-k", "f", "x"]), "invalid option -- 'k'");
        assert_eq!(message(&["-w"]), "option requires an argument -- 'w'");
        assert_eq!(message(&["-c", "x", "f"]), "invalid option -- 'c'");
        assert_eq!(
            message(&["-w", "abc", "f", "x"]),
            "invalid timeout value: 'abc'"
        );
        assert_eq!(
            message(&["-w", "-1", "f", "x"]),
            "invalid timeout value: '-1'"
        );
        assert_eq!(
            message(&["-E", "256", "f", "x"]),
            "exit code out of range (expected 0 to 255)"
        );
        assert_eq!(message(&["-E", "x", "f", "x"]), "invalid exit code: 'x'");
        assert_eq!(
            message(&["-n"]),
            "requires file descriptor, file or directory"
        );
        assert_eq!(message(&["f"]), "bad file descriptor: 'f'");
        assert_eq!(
            message(&["f", "-c"]),
            "-c requires exactly one command argument"
        );
        assert_eq!(
            message(&["f", "--command", "a", "b"]),
            "--command requires exactly one command argument"
        );
        assert_eq!(
            message(&["-F", "-o", "f", "x"]),
            "the --no-fork and --close options are incompatible"
        );
        assert_eq!(message(&[]), "not enough arguments");
        assert!(run(&["-?"]).unwrap_err().message.is_none());
    }

    #[test]
    fn help_and_version_end_parsing_where_they_appear() {
        assert!(matches!(run(&["-x", "-h", "-k"]), Ok(Parsed::Help)));
        assert!(matches!(run(&["--vers"]), Ok(Parsed::Version)));
        assert!(run(&["-w", "x", "-h"]).is_err());
    }

    #[test]
    fn command_string_runs_through_the_shell() {
        let inv = invocation(&["f", "-c", "echo hi"]);
        let Target::File { command, .. } = inv.target else {
            panic!()
        };
        assert_eq!(
            command[1..],
            [OsString::from("-c"), OsString::from("echo hi")]
        );
    }

    #[test]
    fn a_single_operand_is_a_descriptor() {
        assert_eq!(invocation(&["-u", "9"]).target, Target::Descriptor(9));
        assert_eq!(invocation(&["--", "-1"]).target, Target::Descriptor(-1));
        assert_eq!(invocation(&["-u", "9"]).operation, Operation::Unlock);
    }

    #[test]
    fn range_implies_ofd_unless_a_backend_is_given() {
        let inv = invocation(&["--range", "10:5", "f", "x"]);
        assert_eq!((inv.backends, inv.range), (Backend::Ofd as u32, (10, 5)));
        let inv = invocation(&["-b", "posix", "--range", "10", "f", "x"]);
        assert_eq!((inv.backends, inv.range), (Backend::Posix as u32, (10, 0)));
        let inv = invocation(&["--start", "0x10", "--length", "4", "f", "x"]);
        assert_eq!((inv.backends, inv.range), (Backend::Ofd as u32, (16, 4)));
        assert!(message(&["-b", "flock", "--range", "1:2", "f", "x"]).contains("OFD or POSIX"));
        assert!(message(&["--range", "a:b", "f", "x"]).starts_with("invalid range"));
    }

    #[test]
    fn backend_sets_and_their_errors() {
        assert_eq!(invocation(&["-b", "flock,dotlock", "f", "x"]).backends, 9);
        assert_eq!(
            invocation(&["--fcntl", "f", "x"]).backends,
            Backend::Ofd as u32
        );
        assert!(message(&["-b", "ofd,posix", "f", "x"]).contains("cannot be combined"));
        assert!(message(&["-b", "nfs", "f", "x"]).starts_with("unknown backend: 'nfs'"));
        assert!(message(&["-b", "posix", "9"]).contains("POSIX lock belongs to the process"));
    }

    #[test]
    fn test_and_list_take_one_file() {
        let inv = invocation(&["-s", "--test", "f"]);
        assert_eq!(
            inv.target,
            Target::Report {
                path: "f".into(),
                kind: Report::Test
            }
        );
        assert!(invocation(&["--list", "--json", "f"]).json);
        assert!(message(&["--list", "f", "ls"]).contains("no command"));
        assert!(message(&["--json", "f", "ls"]).contains("--test or --list"));
        assert!(message(&["-u", "--test", "f"]).contains("--unlock"));
    }

    #[test]
    fn fd_option_takes_a_command_or_a_command_string() {
        let inv = invocation(&["--fd", "9", "ls", "-l"]);
        assert_eq!(
            inv.target,
            Target::DescriptorCommand {
                fd: 9,
                command: vec!["ls".into(), "-l".into()]
            }
        );
        let Target::DescriptorCommand { command, .. } =
            invocation(&["-n", "--fd=3", "-c", "echo hi"]).target
        else {
            panic!()
        };
        assert_eq!(command[1..], ["-c", "echo hi"]);
        assert_eq!(invocation(&["--fd", "4"]).target, Target::Descriptor(4));
        assert!(message(&["--fd", "-1", "true"]).starts_with("bad file descriptor"));
        assert!(message(&["--fd", "3", "-c"]).contains("exactly one command"));
    }

    #[test]
    fn impossible_combinations_say_what_to_do_instead() {
        for (args, advice) in [
            (&["-s", "-b", "dotlock", "f", "x"][..], "drop -s"),
            (&["-b", "dotlock", "9"], "give the file"),
            (&["--unlink", "--fd", "9", "x"], "drop --unlink"),
            (&["--test", "--list", "f"], "one after the other"),
            (&["--fair", "-b", "dotlock", "f", "x"], "drop --fair"),
            (&["--stale", "1", "f", "x"], "add -b dotlock"),
            (&["--raw", "f", "x"], "--test or --list"),
        ] {
            assert!(
                message(args).contains(advice),
                "{args:?}: {}",
                message(args)
            );
        }
        // A shared lock with DOTLOCK is fine to ask about.
        assert!(matches!(
            invocation(&["-s", "-b", "dotlock", "--test", "f"]).target,
            Target::Report { .. }
        ));
    }

    #[test]
    fn etcd_takes_its_endpoints_attached_only_and_its_options_need_it() {
        let inv = invocation(&["--etcd", "job", "true"]);
        let etcd = inv.etcd.unwrap();
        assert_eq!(etcd.endpoints, None);
        assert_eq!(inv.backends, Backend::Etcd as u32);
        assert!(matches!(inv.target, Target::File { ref path, .. } if path == "job"));
        let inv = invocation(&["--etcd=a:1,b:2", "--lease-ttl", "3", "job", "true"]);
        let etcd = inv.etcd.unwrap();
        assert_eq!(etcd.endpoints.as_deref(), Some("a:1,b:2"));
        assert_eq!(etcd.lease_ttl, Some(3));
        assert_eq!(etcd.kill_on_loss, None);
        let inv = invocation(&["-b", "ETCD", "--kill-on-loss", "job", "true"]);
        assert_eq!(inv.etcd.unwrap().kill_on_loss, Some(DEFAULT_GRACE));
        let inv = invocation(&["--etcd", "--kill=0.5", "job", "true"]);
        assert_eq!(
            inv.etcd.unwrap().kill_on_loss,
            Some(Duration::from_millis(500))
        );
        // A password: kept, never shown by Debug, and its argument marked to blank.
        let inv = invocation(&["-n", "--etcd", "--etcd-user", "bob:pw", "job", "true"]);
        assert_eq!(inv.secret_arg, Some(4));
        let etcd = inv.etcd.unwrap();
        assert_eq!(
            (etcd.user.as_deref(), etcd.password.as_deref()),
            (Some("bob"), Some("pw"))
        );
        assert!(!format!("{etcd:?}").contains("pw\""));
        let inv = invocation(&["--etcd", "--etcd-user=bob", "job", "true"]);
        assert_eq!((inv.secret_arg, inv.etcd.unwrap().password), (None, None));
        assert!(message(&["--etcd", "--et", "job", "true"]).contains("ambiguous"));
        assert!(message(&["--lease-ttl", "3", "job", "true"]).contains("add --etcd"));
        assert!(message(&["--etcd", "-s", "job", "true"]).contains("exclusive only"));
        assert!(message(&["--etcd", "job"]).contains("needs a command"));
        // Asking about a shared lock is the same question.
        assert!(
            invocation(&["--etcd", "-s", "--list", "job"])
                .etcd
                .is_some()
        );
    }

    #[test]
    fn mode_and_stale() {
        assert_eq!(
            invocation(&["--mode", "0644", "f", "x"]).create_mode,
            Some(0o644)
        );
        assert!(message(&["--mode", "9", "f", "x"]).starts_with("invalid mode"));
        assert!(message(&["--mode", "4644", "f", "x"]).starts_with("invalid mode"));
        assert!(message(&["--stale", "5", "f", "x"]).contains("dotlock"));
        assert_eq!(
            invocation(&["-b", "dotlock", "--stale", "5", "f", "x"]).stale_after_s,
            Some(5)
        );
    }
}
