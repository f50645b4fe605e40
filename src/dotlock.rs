//! The DOTLOCK backend: a lock is a file that exists, as with liblockfile,
//! lockfile(1), lockfile-progs and the `.lock` files of mail programs.
//!
//! # Taking the lock
//!
//! A lock call writes the owner's record into a temporary file with a unique name in
//! the lock file's directory and `link()`s it to the lock file's name; the link count
//! of the temporary file (2 after a successful link) decides, not link's return value,
//! which NFS may lose (the technique of liblockfile and the Linux open(2) manual; a bare
//! `O_EXCL` create is not atomic on old NFS). The temporary file is removed on every
//! path; only a process killed in the middle of an attempt leaves one, so its name
//! says whose it is: `.ulk~HOST~BOOT~PID~START~N~LOCKNAME.tmp` (the host name, or `#`
//! and a hash of it when it has other characters than letters, digits, `.`, `-` and
//! `_`; the first 8 hex digits of the boot id; the pid and start time; a counter; the
//! lock file's name, cut to 100 bytes). A lock attempt that fails to link removes the
//! temporary files of that pattern in the directory, whatever lock file they were
//! for, whose maker was of this host and is provably dead (another boot, a pid that no
//! process has, or one another process has now); it looks at most once per 10 minutes
//! per directory and process, as a mail spool may hold many thousands of names. The
//! record is text, first line the pid in ASCII as liblockfile writes it:
//!
//! ```text
//! 12345
//! start=8754321        (the process's start time, /proc/PID/stat field 22)
//! host=mailhost
//! boot=4f8e...         (/proc/sys/kernel/random/boot_id)
//! ```
//!
//! The lock file's name must name a regular file or nothing: a FIFO, a device, a
//! socket or a directory there is refused with `EINVAL` naming its type (and a symbolic
//! link with `ELOOP`), by the open when it is there already, else by the lock call that
//! finds it; it is looked at with `fstatat` and never opened (a FIFO would block a
//! reader, a device may act on an open).
//!
//! # Staleness
//!
//! A lock file is stale when its owner is provably dead on this host: its record
//! names this host (or no host) and another boot, or a pid that no process has, or a
//! pid now used by a process that started at another time. A record from another host
//! proves nothing about its owner. A lock file is also stale when its modification
//! time is `stale_after_s` seconds old (a holder refreshes it with `touch`). With
//! `stale_after_s` 0 only a dead owner makes a lock file stale, so a lock file whose
//! owner cannot be checked (another host's, or one written without a pid, as
//! lockfile-progs and procmail's lockfile do by default) is never broken: liblockfile
//! breaks such files after 5 minutes, and a user who wants the same passes 300.
//! While this host's own name cannot be had, a record naming a host proves nothing
//! either (the host name comes from `uname(2)`, which needs no descriptor; neither it
//! nor the boot id is remembered after a failure to get it). A record that its owner
//! marked `released=1` (see below) is stale whoever wrote it.
//!
//! Only a file that a lock tool could have made is ever judged stale: a regular file
//! of at most 256 bytes of text, empty or with a first line that is empty or a pid in
//! ASCII (what liblockfile, lockfile-progs and procmail's lockfile write: "PID\n",
//! "0\n", "0"; padded with spaces or NULs as UUCP-style tools do), then `key=value`
//! lines with lowercase keys (this record). Anything else at the name (a user's data
//! file passed as the lock file, say) holds the lock for as long as it is there: a try
//! fails with `EAGAIN`, a wait times out, both saying that it is not a lock file, and
//! it is never removed, whatever its first line or its age.
//!
//! # Breaking a stale lock, and releasing: one protocol
//!
//! Every unilock process removes a lock file only this way, whether it releases its
//! own lock or breaks a stale one:
//!
//! 1. hold a descriptor of the lock file (it names the inode, whatever happens to the
//!    name: the owner keeps the one it made the file with, a breaker opens the name)
//!    and take a flock on it without blocking: the owner releasing its own lock takes
//!    `LOCK_SH` on the descriptor it made the file with; a breaker, and a forked child
//!    releasing its copy of the owner's lock, take `LOCK_EX` on a descriptor of their
//!    own (the child shares the owner's descriptor, and so its flock);
//! 2. check that the name still names that inode (`fstatat` against `fstat`), and,
//!    when breaking, that the inode is still a stale lock file (a touch may have
//!    refreshed it);
//! 3. unlink the name; close the descriptor (which drops the flock).
//!
//! Why no live lock is ever removed: a lock file's name is removed only by step 3, and
//! a name that names inode I can only stop naming it by an unlink of I (link never
//! replaces a name). Every unlink of I by a unilock process happens after checking
//! that the name names I, while holding a flock of I that excludes every other remover
//! of I: an exclusive flock on a descriptor of one's own excludes everyone; the owner's
//! shared one excludes all of those, and the owner is the only remover that takes it
//! shared (one handle, in the process that made I, which releases once). Two processes that judge the same inode stale are
//! serialized by its flock: the second finds, in step 2, that the name no longer names
//! I (it is gone, or names the first one's fresh lock) and removes nothing. An owner
//! releasing while another process breaks its lock as stale (it was not refreshed in
//! time) is serialized the same way: whichever goes second removes nothing. Exactly one
//! of many processes that break a stale lock at once therefore removes it, and a fresh
//! lock created in between is never removed; they then race with `link()`, which
//! exactly one wins. Tools that do not follow the protocol (liblockfile removes a stale
//! lock with a plain unlink) keep a window as wide as their own check-then-unlink.
//!
//! The owner's flock is shared so that readers do not hold up a release: anyone who
//! can read the lock file can flock it (`flock -s FILE.lock`, or another handle of the
//! owner's own process).
//!
//! # No flock is waited for without bound
//!
//! Anyone who can read a lock file can also hold an exclusive flock on it for as long
//! as they like, so neither a release nor a break blocks on the flock: each tries
//! without blocking, and again with short naps for a little while (a breaker holds it
//! for a few system calls), then:
//!
//! - a breaker that has not got it within 20 ms counts the lock as held: a try fails
//!   with `EAGAIN`, a wait looks again after a growing nap (up to 0.5 s; no event tells
//!   when a flock goes), both saying that a flock holds up the stale lock file;
//! - an owner that has not got it within 0.5 s (someone holds it exclusively; for a
//!   forked child's release, anyone holds it) does not unlink without it: the holder may be a breaker that judged the lock stale (not
//!   refreshed in time) and stopped between its check and its unlink, which would then
//!   remove whatever lock file was made at the name after the owner's unlink. The
//!   owner appends `released=1` to its record instead, through the descriptor it made
//!   the lock file with (so it writes only its own inode, wherever the name points), and
//!   the release returns `ENOLCK` saying so. A record marked released is stale to every
//!   unilock process: the first to get the flock after the holder lets go removes it,
//!   by the protocol. Tools that check the pid (liblockfile with `--use-pid`) see the
//!   lock held until the owner exits; the others apply their age rules as always.
//!
//! A release therefore returns within about half a second whatever others hold, and
//! the guarantee above holds without exception.
//!
//! # Waiting
//!
//! A waiter sleeps in `ppoll` on an inotify descriptor watching the directory for
//! removals (and renames away), the handle's cancel eventfd and, when the owner is a
//! process of this host, a pidfd of that process (its death makes the lock stale
//! without any file event). On NFS, where inotify does not see other hosts' changes,
//! and as a safety net, it also wakes after a bounded backoff (5 ms doubling to 500
//! ms on NFS; once a second elsewhere) and when the lock file becomes stale by age.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::inode_table::{self, Family, HandleId, InodeKey, WaitRecord};
use crate::range::ByteRange;
use crate::sys;
use crate::wait::{CallState, Deadline};
use crate::{Backend, Error, Holder, Mode, Options, Result};

const NFS_SUPER_MAGIC: i64 = 0x6969;
const BACKOFF_FIRST: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
const SAFETY_NET: Duration = Duration::from_secs(1);
/// How long a release tries for the flock of its lock file: a breaker holds it for a
/// few system calls, so only a process outside the protocol holds it this long.
const RELEASE_PATIENCE: Duration = Duration::from_millis(500);
/// How long a breaker tries for the flock of a stale lock file before it counts the
/// lock as held for now.
const BREAK_PATIENCE: Duration = Duration::from_millis(20);
/// The line an owner appends to its record when it releases the lock but cannot
/// remove the lock file (see the module documentation).
const RELEASED: &str = "released=1\n";
/// How often, at most, a process looks for temporary files of dead processes in one
/// directory.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// A DOTLOCK handle: the lock file's directory and name, and the lock file while held.
pub(crate) struct DotLock {
    dir: OwnedFd,
    /// The directory's device and inode.
    dir_id: (u64, u64),
    file: CString,
    /// The lock file's path, for messages.
    name: String,
    /// The handle's entry in the process table (a key no inode has: see [`table_key`]).
    key: InodeKey,
    id: HandleId,
    stale_after: Option<Duration>,
    create_mode: u32,
    /// Whether inotify sees every change in the directory (not on NFS).
    local: bool,
    held: Mutex<Option<Held>>,
    /// The inotify descriptor of the first wait, kept for the next ones: closing one
    /// waits for an RCU grace period (milliseconds), which belongs at close, not
    /// between a grant and the return of the lock call.
    watch: Mutex<Option<OwnedFd>>,
    /// Temporary files of this handle whose removal failed (an I/O error, no memory):
    /// removed again by the next lock call and by close.
    strays: Mutex<Vec<CString>>,
    /// The stale lock files this handle's lock calls removed, not yet taken by
    /// [`DotLock::take_broken`].
    broken: Mutex<Vec<Holder>>,
    closed: bool,
}

/// The lock file this handle made.
struct Held {
    fd: OwnedFd,
    dev: u64,
    ino: u64,
    /// The process that made it: only it removes the file (a forked child's copy of
    /// the handle releases nothing).
    taker: i32,
}

/// What is at the lock file's name.
enum Found {
    /// Nothing (removed meanwhile).
    Absent,
    /// A stale lock, open.
    Stale(OwnedFd),
    /// A live lock: its owner as far as known, and when to look again at the latest.
    Live(Owner, Option<Duration>),
    /// A file that no lock tool could have made (why): held while it exists, never
    /// removed.
    NotLockFile(String),
}

/// Why the lock cannot be taken now.
enum Busy {
    /// A live lock file: its owner, and when it becomes stale by age at the latest.
    Live(Owner, Option<Duration>),
    /// A file that is not a lock file, and why not.
    NotLockFile(String),
    /// A stale lock file (this inode) that another process holds a flock on.
    Flocked(InodeKey),
}

/// The owner a lock file names.
#[derive(Clone, Debug, Default)]
struct Owner {
    /// The pid when it is a process of this host, else -1.
    pid: i32,
}

/// A process table key for a lock file name: the directory's device with the top bit
/// set (no real device has it) and a hash of the directory's inode and the name.
fn table_key(dir: &libc::stat, file: &CStr) -> InodeKey {
    let bytes = dir
        .st_ino
        .to_le_bytes()
        .into_iter()
        .chain(file.to_bytes().iter().copied());
    InodeKey {
        dev: dir.st_dev | 1 << 63,
        ino: fnv1a(bytes),
    }
}

/// FNV-1a: stable, and enough for a handful of lock names per process.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A value of this process read on the first call that succeeds: a failure (no
/// descriptor left, /proc unreadable) is not remembered, the next call tries again.
fn read_once(
    cell: &'static OnceLock<String>,
    read: impl FnOnce() -> Option<String>,
) -> Option<&'static str> {
    if let Some(v) = cell.get() {
        return Some(v);
    }
    let v = read()?;
    Some(cell.get_or_init(|| v))
}

/// This host's name (`uname(2)`, which needs no descriptor); `None` while unknown.
pub(crate) fn host() -> Option<&'static str> {
    static HOST: OnceLock<String> = OnceLock::new();
    read_once(&HOST, || sys::host_name().filter(|h| !h.is_empty()))
}

/// This boot's id; `None` while it cannot be read.
pub(crate) fn boot_id() -> Option<&'static str> {
    static BOOT: OnceLock<String> = OnceLock::new();
    read_once(&BOOT, || {
        sys::read_small(Path::new("/proc/sys/kernel/random/boot_id"))
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    })
}

/// The start time of process `pid` (clock ticks after boot, field 22 of its stat),
/// `None` when it cannot be read.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    process_state(pid).and_then(|(_, start)| start)
}

/// The state letter and start time of process `pid`, from /proc/PID/stat.
fn process_state(pid: i32) -> Option<(char, Option<u64>)> {
    let stat = sys::read_small(Path::new(&format!("/proc/{pid}/stat")))?;
    // The command (field 2) is in parentheses and may contain anything: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18).and_then(|t| t.parse().ok())))
}

/// This process as its lock files and temporary files describe it.
#[derive(Clone)]
struct Me {
    pid: i32,
    /// Its start time (see [`start_time`]), `None` when it cannot be read.
    start: Option<u64>,
    /// The record written into its lock files.
    record: String,
}

/// This process's [`Me`]: made once per process (a forked child makes its own), as
/// reading /proc/self/stat can take milliseconds in a large process. One that lacks a
/// field because it could not be read then is made again next time.
///
/// The cache is only ever *tried* (`try_lock`), never waited for: a `fork()` while
/// another thread holds it leaves it locked for good in the child, which then makes
/// its record each time rather than hang.
fn me() -> Me {
    static CACHE: Mutex<Option<Me>> = Mutex::new(None);
    let pid = sys::getpid();
    if let Some(m) = try_cell(&CACHE).and_then(|c| c.as_ref().filter(|m| m.pid == pid).cloned()) {
        return m;
    }
    let start = start_time(pid);
    let mut record = format!("{pid}\n");
    if let Some(t) = start {
        record.push_str(&format!("start={t}\n"));
    }
    if let Some(h) = host() {
        record.push_str(&format!("host={h}\n"));
    }
    if let Some(b) = boot_id() {
        record.push_str(&format!("boot={b}\n"));
    }
    let m = Me { pid, start, record };
    if start.is_some() && host().is_some() && boot_id().is_some() {
        if let Some(mut cache) = try_cell(&CACHE) {
            *cache = Some(m.clone());
        }
    }
    m
}

/// Locks a process-wide cache if it is free now (poisoning ignored): `None` when another
/// thread has it, or when a `fork()` copied it locked into this process.
fn try_cell<T>(cell: &'static Mutex<T>) -> Option<std::sync::MutexGuard<'static, T>> {
    match cell.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// A parsed lock file record. Fields a tool did not write are `None`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Record {
    pid: Option<i32>,
    start: Option<u64>,
    host: Option<String>,
    boot: Option<String>,
    /// Its owner released the lock but could not remove the file.
    released: bool,
}

/// Parses a lock file's record. The first line's pid may be padded on either side with
/// any mix of blanks and NULs, as [`not_a_lock_record`] accepts it.
pub(crate) fn parse_record(text: &str) -> Record {
    let mut lines = text.lines();
    let blank = |c: char| c.is_ascii_whitespace() || c == '\0';
    let pid = lines
        .next()
        .and_then(|l| l.trim_matches(blank).parse::<i32>().ok())
        .filter(|&p| p > 0);
    let mut r = Record {
        pid,
        ..Record::default()
    };
    for line in lines {
        match line.split_once('=') {
            Some(("start", v)) => r.start = v.trim().parse().ok(),
            Some(("host", v)) => r.host = Some(v.trim().to_owned()),
            Some(("boot", v)) => r.boot = Some(v.trim().to_owned()),
            Some(("released", _)) => r.released = true,
            _ => {}
        }
    }
    r
}

/// The size of the largest lock file: a unilock record is under 200 bytes (a host name
/// has at most 64), liblockfile's and procmail's under 12.
pub(crate) const MAX_LOCK_FILE: usize = 256;

/// Why `text`, a whole file, is not one a lock tool could have made; `None` when it
/// is. A lock file is at most [`MAX_LOCK_FILE`] bytes of text (UTF-8 without control
/// characters other than tab, CR, LF and NUL): empty, or a first line
/// that is empty or a pid in ASCII (liblockfile and lockfile-progs write "PID\n" or
/// "0\n", procmail's lockfile "0", UUCP-style tools pad it with spaces or NULs), then
/// `key=value` lines with lowercase keys (unilock's record).
pub(crate) fn not_a_lock_record(text: &[u8]) -> Option<String> {
    if text.len() > MAX_LOCK_FILE {
        return Some(format!(
            "it is larger than the {MAX_LOCK_FILE} bytes of a lock file"
        ));
    }
    let control = |c: char| c.is_control() && !matches!(c, '\t' | '\r' | '\n' | '\0');
    let Some(text) = std::str::from_utf8(text)
        .ok()
        .filter(|t| !t.contains(control))
    else {
        return Some("it holds bytes that are not text".into());
    };
    let blank = |c: char| c.is_ascii_whitespace() || c == '\0';
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or_default().trim_matches(blank);
    if first.len() > 10 || !first.bytes().all(|b| b.is_ascii_digit()) {
        return Some("its first line is not a process id".into());
    }
    let key_value = |line: &str| {
        line.split_once('=').is_some_and(|(key, _)| {
            (1..=32).contains(&key.len())
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
    };
    let other = lines
        .map(|l| l.trim_matches(blank))
        .filter(|l| !l.is_empty());
    if !other.into_iter().all(key_value) {
        return Some("a line after the first is not a key=value line of a lock record".into());
    }
    None
}

/// Why the owner of `r` is provably dead on this host, if it is; `None` when it may
/// be alive or cannot be checked. Also returns the pid to watch when it is alive here.
fn dead_owner(r: &Record) -> (Option<String>, Option<i32>) {
    dead_owner_on(r, host(), boot_id())
}

/// [`dead_owner`] on the host named `here`, booted as `boot` (`None`: unknown).
fn dead_owner_on(
    r: &Record,
    here: Option<&str>,
    boot: Option<&str>,
) -> (Option<String>, Option<i32>) {
    if r.released {
        return (Some("its owner released it".into()), None);
    }
    // A record naming a host proves nothing unless it is this host, which is not known
    // while this host's name is unknown.
    if r.host.as_deref().is_some_and(|h| Some(h) != here) {
        return (None, None);
    }
    if let (Some(b), Some(now)) = (r.boot.as_deref(), boot) {
        if b != now {
            return (
                Some("it was made before this host last booted".into()),
                None,
            );
        }
    }
    let Some(pid) = r.pid else {
        return (None, None);
    };
    let state = process_state(pid);
    // A zombie has exited: it holds nothing any more, though its pid still exists.
    // Where /proc cannot be read, kill(pid, 0) still tells whether the pid exists.
    let gone = match state {
        Some((s, _)) => matches!(s, 'Z' | 'X'),
        None => !sys::process_exists(pid),
    };
    if gone {
        return (Some(format!("its owner, process {pid}, is gone")), None);
    }
    if let (Some(recorded), Some(now)) = (r.start, state.and_then(|(_, t)| t)) {
        if recorded != now {
            return (
                Some(format!(
                    "its owner, process {pid}, is gone (the pid belongs to another process now)"
                )),
                None,
            );
        }
    }
    (None, Some(pid))
}

fn age_of(st: &libc::stat) -> Duration {
    let mtime = Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec.max(0) as u32);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(mtime)
}

fn same_file(a: &libc::stat, b: &libc::stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// Refuses a lock file path that names something other than a regular file (`st` as
/// `fstatat` without following a symbolic link gives it): a FIFO, a device, a socket or
/// a directory is `EINVAL` naming its type, a symbolic link `ELOOP`, as the kernel
/// backends word it. Such a file is never opened (a FIFO could block, a device act).
fn check_type(st: &libc::stat, name: &str) -> Result<()> {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => return Ok(()),
        libc::S_IFLNK => return Err(symbolic_link(name)),
        other => crate::kernel_lock::file_type_name(other),
    };
    Err(Error::new(
        libc::EINVAL,
        format!("{name} is {kind}: a DOTLOCK lock file can only be a regular file"),
    ))
}

fn symbolic_link(name: &str) -> Error {
    Error::new(
        libc::ELOOP,
        format!(
            "{name} is a symbolic link: a DOTLOCK lock file can only be a regular file \
             (a link is never followed)"
        ),
    )
}

/// A temporary file with the owner's record, removed when dropped; a name whose
/// removal failed goes to `strays`, to be removed again later.
struct TempFile<'a> {
    dir: BorrowedFd<'a>,
    name: CString,
    fd: Option<OwnedFd>,
    strays: &'a Mutex<Vec<CString>>,
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if let Err(e) = sys::unlinkat(self.dir, &self.name) {
            if e != libc::ENOENT {
                let mut strays = self.strays.lock().unwrap_or_else(|p| p.into_inner());
                strays.push(std::mem::take(&mut self.name));
            }
        }
    }
}

/// The start of every temporary file name (see [`temp_name`]).
const TEMP_PREFIX: &str = ".ulk~";

/// This host's name as temporary file names carry it: as it is when it is made of
/// letters, digits, `.`, `-` and `_` (as host names are), else `#` and a hash of it;
/// `None` while unknown.
fn host_tag() -> Option<String> {
    host().map(tag_of_host)
}

/// [`host_tag`] of the host name `h`.
fn tag_of_host(h: &str) -> String {
    let plain = h.len() <= 64
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if plain {
        h.to_owned()
    } else {
        format!("#{:016x}", fnv1a(h.bytes()))
    }
}

/// This boot's id as temporary file names carry it: its first 8 hex digits.
fn boot_tag() -> Option<String> {
    let tag: String = boot_id()?
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    (tag.len() == 8).then_some(tag)
}

/// The name of a temporary file, which says whose it is:
/// `.ulk~HOST~BOOT~PID~START~N~LOCKNAME.tmp`, with the host ([`host_tag`]), boot
/// ([`boot_tag`]), pid and start time (see [`start_time`]) of the process that made it
/// (empty for what it could not read), a counter of that process in hex, and the lock
/// file's name (its first 100 bytes), for people. At most 232 bytes.
fn temp_name(me: &Me, n: u64, lock_name: &[u8]) -> String {
    let mut len = 0;
    let base: String = String::from_utf8_lossy(lock_name)
        .chars()
        .take_while(|c| {
            len += c.len_utf8();
            len <= 100
        })
        .collect();
    format!(
        "{TEMP_PREFIX}{}~{}~{}~{}~{n:x}~{base}.tmp",
        host_tag().unwrap_or_default(),
        boot_tag().unwrap_or_default(),
        me.pid,
        me.start.map(|t| t.to_string()).unwrap_or_default()
    )
}

/// Whose a temporary file is, from its name (see [`temp_name`]).
#[derive(Debug, PartialEq)]
pub(crate) struct TempOwner<'a> {
    /// As [`host_tag`] gives it; empty when its maker did not know it.
    host: &'a str,
    /// As [`boot_tag`] gives it, or empty.
    boot: &'a str,
    pid: i32,
    start: Option<u64>,
}

/// The owner a name of the [`temp_name`] pattern says; `None` for any other name.
pub(crate) fn parse_temp_name(name: &[u8]) -> Option<TempOwner<'_>> {
    let name = std::str::from_utf8(name).ok()?;
    let rest = name.strip_prefix(TEMP_PREFIX)?.strip_suffix(".tmp")?;
    let mut f = rest.splitn(6, '~');
    let (host, boot, pid, start, n, _lock_name) = (
        f.next()?,
        f.next()?,
        f.next()?,
        f.next()?,
        f.next()?,
        f.next()?,
    );
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let well_formed = (boot.is_empty() || boot.len() == 8 && hex(boot))
        && digits(pid)
        && (start.is_empty() || digits(start))
        && hex(n);
    if !well_formed {
        return None;
    }
    Some(TempOwner {
        host,
        boot,
        pid: pid.parse().ok().filter(|&p| p > 0)?,
        start: if start.is_empty() {
            None
        } else {
            Some(start.parse().ok()?)
        },
    })
}

/// True when the process that made a temporary file is provably dead: it was of this
/// host (`here`, as [`host_tag`] gives it), and of an earlier boot (`boot`, as
/// [`boot_tag`] gives it, when known), or its pid is gone or another process's now.
fn temp_owner_dead(t: &TempOwner<'_>, here: &str, boot: Option<&str>) -> bool {
    if t.host.is_empty() || t.host != here {
        return false;
    }
    if boot.is_some_and(|b| !t.boot.is_empty() && t.boot != b) {
        return true;
    }
    let r = Record {
        pid: Some(t.pid),
        start: t.start,
        ..Record::default()
    };
    dead_owner_on(&r, None, None).0.is_some()
}

/// True when this process has not looked for temporary files of dead processes in the
/// directory `dir` (device, inode) for [`SWEEP_INTERVAL`]; it counts as looking now.
fn due_for_sweep(dir: (u64, u64)) -> bool {
    static SWEPT: Mutex<Vec<((u64, u64), Instant)>> = Mutex::new(Vec::new());
    // Tried, never waited for (see `me`): busy means another thread sweeps now.
    let Some(mut swept) = try_cell(&SWEPT) else {
        return false;
    };
    let now = Instant::now();
    swept.retain(|(_, at)| now.duration_since(*at) < SWEEP_INTERVAL);
    if swept.iter().any(|(d, _)| *d == dir) {
        return false;
    }
    if swept.len() >= 64 {
        swept.remove(0);
    }
    swept.push((dir, now));
    true
}

impl DotLock {
    /// A handle for the lock file at `path` (nothing is created: the file exists only
    /// while the lock is held). The directory must exist.
    pub(crate) fn open(path: &Path, options: &Options) -> Result<DotLock> {
        let name = path.display().to_string();
        let file_name = path.file_name().filter(|_| {
            !path.as_os_str().as_bytes().ends_with(b"/")
                && !matches!(path.as_os_str().as_bytes(), b"." | b"..")
        });
        let Some(file_name) = file_name else {
            return Err(Error::new(
                libc::EINVAL,
                format!("{name}: a DOTLOCK lock file needs a file name"),
            ));
        };
        let file = CString::new(file_name.as_bytes())
            .map_err(|_| Error::new(libc::EINVAL, "the path contains a NUL byte"))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let cdir = CString::new(parent.as_os_str().as_bytes())
            .map_err(|_| Error::new(libc::EINVAL, "the path contains a NUL byte"))?;
        let dir = sys::open(&cdir, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)
            .map_err(|e| Error::sys(e, "open the directory of", &name))?;
        let st = sys::fstat(dir.as_fd()).map_err(|e| Error::sys(e, "fstat", &name))?;
        // Something there already that can never be a lock file is refused now (any
        // other failure to look is left to the lock call, which will meet it).
        if let Ok(there) = sys::statat(dir.as_fd(), &file) {
            check_type(&there, &name)?;
        }
        let local = sys::fs_type(dir.as_fd()) != Ok(NFS_SUPER_MAGIC);
        let key = table_key(&st, &file);
        inode_table::install_fork_handlers();
        inode_table::table().inode(key).add_handle();
        Ok(DotLock {
            dir,
            dir_id: (st.st_dev, st.st_ino),
            file,
            name,
            key,
            id: inode_table::next_handle_id(),
            stale_after: (options.stale_after_s > 0)
                .then(|| Duration::from_secs(u64::from(options.stale_after_s))),
            // 0600 by default, as for every file the library creates: a lock file
            // readable by others lets them flock it and so hold up its removal.
            create_mode: if options.create_mode == 0 {
                0o600
            } else {
                options.create_mode
            },
            local,
            held: Mutex::new(None),
            watch: Mutex::new(None),
            strays: Mutex::new(Vec::new()),
            broken: Mutex::new(Vec::new()),
            closed: false,
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the lock before `deadline`. Holding it already is success.
    pub(crate) fn lock(&self, call: &CallState, deadline: &Deadline) -> Result<()> {
        if self.held().is_some() {
            return Ok(());
        }
        self.wait_for_handles(call, deadline)?;
        let result = self.acquire(call, deadline);
        let mut table = inode_table::table();
        let inode = table.inode(self.key);
        if result.is_ok() {
            let h = inode.holding_or_new(self.id, Backend::Dotlock);
            h.ranges.set(ByteRange::WHOLE, Mode::Exclusive);
            h.thread = sys::thread_id();
        }
        if let Some(h) = inode.holding_mut(self.id) {
            h.pending = None;
        }
        inode.settle();
        result
    }

    /// Waits while another handle of this process holds the lock (the file would only
    /// say "held by this process"), and reserves it for this handle meanwhile.
    fn wait_for_handles(&self, call: &CallState, deadline: &Deadline) -> Result<()> {
        let me = sys::thread_id();
        let mut table = inode_table::table();
        loop {
            let conflicts = table.conflicts(
                self.key,
                self.id,
                Family::Dotlock,
                ByteRange::WHOLE,
                Mode::Exclusive,
            );
            let Some(c) = conflicts.first() else {
                let h = table
                    .inode(self.key)
                    .holding_or_new(self.id, Backend::Dotlock);
                h.pending = Some((ByteRange::WHOLE, Mode::Exclusive));
                h.thread = me;
                return Ok(());
            };
            if deadline.is_try() {
                return Err(Error::new(
                    libc::EAGAIN,
                    format!(
                        "{}: the lock is held by another handle of this process",
                        self.name
                    ),
                ));
            }
            if table.would_deadlock(me, conflicts.iter().map(|c| c.thread)) {
                return Err(inode_table::deadlock_error(&self.name, c.thread, me));
            }
            call.check(deadline, &self.name)?;
            let record = WaitRecord {
                key: self.key,
                handle: self.id,
                family: Family::Dotlock,
                range: ByteRange::WHOLE,
                mode: Mode::Exclusive,
            };
            table = inode_table::wait_for_handles(table, me, record, deadline);
        }
    }

    /// The link protocol, with waits: see the module documentation.
    fn acquire(&self, call: &CallState, deadline: &Deadline) -> Result<()> {
        self.remove_strays();
        let mut cached = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        let watch = &mut *cached;
        if let Some(w) = watch.as_ref() {
            // What happened before this call is old news.
            sys::inotify_names(w.as_fd(), b"");
        }
        // On NFS, or with no inotify watch left, the waits back off instead.
        let mut can_watch = self.local;
        let mut backoff = BACKOFF_FIRST;
        let mut swept = false;
        loop {
            // A fresh temporary file for each attempt, removed right after it: a
            // waiter killed while it waits leaves nothing behind.
            let mut temp = self.temp_file()?;
            if self.link(&mut temp)? {
                return Ok(());
            }
            drop(temp);
            if !std::mem::replace(&mut swept, true) {
                self.sweep();
            }
            let busy = match self.inspect()? {
                Found::Absent => continue,
                Found::Stale(fd) => match self.break_stale(fd)? {
                    Break::Done => continue,
                    Break::Flocked(key) => Busy::Flocked(key),
                },
                Found::Live(owner, recheck) => Busy::Live(owner, recheck),
                Found::NotLockFile(why) => Busy::NotLockFile(why),
            };
            if deadline.is_try() {
                return Err(self.held_error(&busy));
            }
            call.check(deadline, &self.name)
                .map_err(|e| self.explain(e, &busy))?;
            let (owner, recheck) = match busy {
                Busy::Live(owner, recheck) => (owner, recheck),
                Busy::NotLockFile(_) => (Owner { pid: -1 }, None),
                // No event tells when a flock goes: look again after a growing nap.
                Busy::Flocked(_) => {
                    let n = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    (Owner { pid: -1 }, Some(n))
                }
            };
            // Watch before looking again, so that no removal falls between the two.
            if watch.is_none() && can_watch {
                match sys::inotify_dir(
                    self.dir.as_fd(),
                    libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_ONLYDIR,
                ) {
                    Ok(fd) => {
                        *watch = Some(fd);
                        continue;
                    }
                    Err(_) => can_watch = false,
                }
            }
            let pidfd = (owner.pid > 0)
                .then(|| sys::pidfd_open(owner.pid).ok())
                .flatten();
            let mut nap = if watch.is_some() {
                SAFETY_NET
            } else {
                let n = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                n
            };
            if let Some(r) = recheck {
                nap = nap.min(r);
            }
            if let Some(r) = deadline.remaining() {
                nap = nap.min(r);
            }
            let wake = call.wake_fd()?;
            if call.cancelled() {
                continue;
            }
            let fds = [
                watch.as_ref().map_or(-1, |w| w.as_raw_fd()),
                wake.as_raw_fd(),
                pidfd.as_ref().map_or(-1, |p| p.as_raw_fd()),
            ];
            let until = Instant::now() + nap;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                let ready = sys::poll_readable(fds, Some(left))
                    .map_err(|e| Error::sys(e, "ppoll", "(waiting for the lock file)"))?;
                if ready[1] {
                    sys::eventfd_drain(wake);
                }
                // Only a removal of the lock file itself is news: the directory sees
                // other files come and go, this process's temporary files among them.
                let removed = ready[0]
                    && watch
                        .as_ref()
                        .is_some_and(|w| sys::inotify_names(w.as_fd(), self.file.to_bytes()));
                if removed || ready[1] || ready[2] || left.is_zero() || ready == [false; 3] {
                    break;
                }
            }
        }
    }

    /// Removes the temporary files that dead processes of this host left in the
    /// directory (killed between making one and removing it): only names of the
    /// [`temp_name`] pattern, only regular files, only when their maker is provably
    /// dead ([`temp_owner_dead`]). Called when a lock attempt fails to link, at most
    /// once per [`SWEEP_INTERVAL`] per directory and process: reading a mail spool of
    /// many thousands of names costs milliseconds. Failures are ignored: it is tidying.
    fn sweep(&self) {
        if !due_for_sweep(self.dir_id) {
            return;
        }
        let Some(here) = host_tag() else {
            return;
        };
        let boot = boot_tag();
        let mut dead = Vec::new();
        let _ = sys::for_each_name(self.dir.as_fd(), |name| {
            let owner = parse_temp_name(name.to_bytes());
            if owner.is_some_and(|t| temp_owner_dead(&t, &here, boot.as_deref())) {
                dead.push(name.to_owned());
            }
        });
        for name in dead {
            let regular = sys::statat(self.dir.as_fd(), &name)
                .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
            if regular {
                let _ = sys::unlinkat(self.dir.as_fd(), &name);
            }
        }
    }

    /// Creates the temporary file with this process's record.
    fn temp_file(&self) -> Result<TempFile<'_>> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let me = me();
        let name = CString::new(temp_name(&me, n, self.file.to_bytes()))
            .expect("no NUL in a file name, a host tag or numbers");
        let fd = sys::openat(
            self.dir.as_fd(),
            &name,
            // Read-write: flock on NFS is a POSIX lock, and a shared one needs a readable
            // descriptor; appending: a later mark (see `abandon`) goes at the end.
            libc::O_CREAT
                | libc::O_EXCL
                | libc::O_RDWR
                | libc::O_APPEND
                | libc::O_CLOEXEC
                | libc::O_NOFOLLOW,
            self.create_mode,
        )
        .map_err(|e| Error::sys(e, "create a temporary file for", &self.name))?;
        let temp = TempFile {
            dir: self.dir.as_fd(),
            name,
            fd: Some(fd),
            strays: &self.strays,
        };
        let fd = temp.fd.as_ref().expect("just set").as_fd();
        sys::write_all(fd, me.record.as_bytes()).map_err(|e| Error::sys(e, "write", &self.name))?;
        Ok(temp)
    }

    /// Links the temporary file to the lock file's name; true when that made the lock
    /// (decided by the link count, which NFS reports truly even when it loses link's
    /// reply).
    fn link(&self, temp: &mut TempFile<'_>) -> Result<bool> {
        let linked = sys::linkat(self.dir.as_fd(), &temp.name, &self.file);
        let fd = temp.fd.as_ref().expect("kept until the lock is made");
        let st = match sys::fstat(fd.as_fd()) {
            Ok(st) => st,
            Err(e) => {
                // A link that succeeded made a lock file this call cannot keep (its
                // inode is unknown): remove the name at once, as it is this call's own
                // (link never replaces a name, and a live owner's file is not broken).
                if linked.is_ok() {
                    let _ = sys::unlinkat(self.dir.as_fd(), &self.file);
                }
                return Err(Error::sys(e, "fstat", &self.name));
            }
        };
        if st.st_nlink < 2 {
            return match linked {
                Ok(()) | Err(libc::EEXIST) => Ok(false),
                Err(libc::EPERM | libc::EOPNOTSUPP) => Err(Error::new(
                    libc::EOPNOTSUPP,
                    format!(
                        "{}: the filesystem does not support hard links, which DOTLOCK needs",
                        self.name
                    ),
                )),
                Err(e) => Err(Error::sys(e, "link", &self.name)),
            };
        }
        let fd = temp.fd.take().expect("checked above");
        *self.held() = Some(Held {
            fd,
            dev: st.st_dev,
            ino: st.st_ino,
            taker: sys::getpid(),
        });
        Ok(true)
    }

    /// Opens the lock file at the name for reading, with its status; `None` when there
    /// is none. Anything but a regular file is refused (see [`check_type`]) before it
    /// is opened, and again after, should it have been replaced in between.
    fn open_lock_file(&self) -> Result<Option<(OwnedFd, libc::stat)>> {
        match sys::statat(self.dir.as_fd(), &self.file) {
            Ok(st) => check_type(&st, &self.name)?,
            Err(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(Error::sys(e, "stat", &self.name)),
        }
        let fd = match sys::openat(
            self.dir.as_fd(),
            &self.file,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
            0,
        ) {
            Ok(fd) => fd,
            Err(libc::ENOENT) => return Ok(None),
            Err(libc::ELOOP) => return Err(symbolic_link(&self.name)),
            Err(e) => return Err(Error::sys(e, "open", &self.name)),
        };
        let st = sys::fstat(fd.as_fd()).map_err(|e| Error::sys(e, "fstat", &self.name))?;
        check_type(&st, &self.name)?;
        Ok(Some((fd, st)))
    }

    /// Looks at the lock file at the name.
    fn inspect(&self) -> Result<Found> {
        let (fd, st) = match self.open_lock_file() {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(Found::Absent),
            // Another user's lock file (0600): it holds the lock, its owner unknown;
            // a file this process cannot open it never breaks.
            Err(e) if e.errno() == libc::EACCES => return Ok(Found::Live(Owner { pid: -1 }, None)),
            Err(e) => return Err(e),
        };
        if st.st_nlink == 0 {
            return Ok(Found::Absent);
        }
        let record = match self.read_lock_file(fd.as_fd(), &st) {
            Ok(r) => r,
            Err(why) => return Ok(Found::NotLockFile(why)),
        };
        Ok(match self.judge(&record, &st) {
            Ok(_why) => Found::Stale(fd),
            Err((owner, recheck)) => Found::Live(owner, recheck),
        })
    }

    /// The record of the lock file open on `fd` (`st` its status), or why it is not a
    /// lock file (see [`not_a_lock_record`]).
    fn read_lock_file(
        &self,
        fd: BorrowedFd<'_>,
        st: &libc::stat,
    ) -> std::result::Result<Record, String> {
        if st.st_size > MAX_LOCK_FILE as i64 {
            return Err(format!(
                "it is larger than the {MAX_LOCK_FILE} bytes of a lock file"
            ));
        }
        let mut buf = [0u8; MAX_LOCK_FILE + 1];
        let n = sys::read_start(fd, &mut buf)
            .map_err(|e| format!("it cannot be read: {}", crate::error::describe(e)))?;
        if let Some(why) = not_a_lock_record(&buf[..n]) {
            return Err(why);
        }
        Ok(parse_record(&String::from_utf8_lossy(&buf[..n])))
    }

    /// `Ok(reason)` when the lock file is stale; else its owner and the time after
    /// which it becomes stale by age, if it can.
    fn judge(
        &self,
        record: &Record,
        st: &libc::stat,
    ) -> std::result::Result<String, (Owner, Option<Duration>)> {
        let (dead, alive_pid) = dead_owner(record);
        if let Some(why) = dead {
            return Ok(why);
        }
        let limit = self.stale_after;
        let age = age_of(st);
        if let Some(limit) = limit {
            if age >= limit {
                return Ok(format!("it was not refreshed for {} s", age.as_secs()));
            }
        }
        Err((
            Owner {
                pid: alive_pid.unwrap_or(-1),
            },
            limit.map(|l| l - age),
        ))
    }

    /// Tries `op` (`LOCK_SH` or `LOCK_EX`) on `fd` without blocking, again for up to
    /// `patience` with short naps; false when it is still refused then.
    fn flock_within(
        &self,
        fd: BorrowedFd<'_>,
        op: libc::c_int,
        patience: Duration,
    ) -> Result<bool> {
        let began = Instant::now();
        let mut nap = Duration::from_micros(100);
        loop {
            match sys::flock(fd, op | libc::LOCK_NB) {
                Ok(()) => return Ok(true),
                Err(libc::EWOULDBLOCK) => {}
                Err(e) => return Err(Error::sys(e, "flock", &self.name)),
            }
            let left = patience.saturating_sub(began.elapsed());
            if left.is_zero() {
                return Ok(false);
            }
            std::thread::sleep(nap.min(left));
            nap = (nap * 2).min(Duration::from_millis(20));
        }
    }

    /// The process that has an exclusive flock on the inode `key`, as far as /proc
    /// tells (for messages: it may scan every process).
    fn flock_holder(key: InodeKey) -> Option<i32> {
        let lock = crate::holders::proc_locks(key)
            .ok()?
            .into_iter()
            .find(|l| l.backend == Backend::Flock && l.mode == Mode::Exclusive)?;
        Some(crate::holders::Resolver::new(key).pid_of(&lock)).filter(|&p| p > 0)
    }

    /// Removes the lock file open on `fd` if it is still at the name and still
    /// stale (the protocol in the module documentation).
    fn break_stale(&self, fd: OwnedFd) -> Result<Break> {
        let st = sys::fstat(fd.as_fd()).map_err(|e| Error::sys(e, "fstat", &self.name))?;
        if !self.flock_within(fd.as_fd(), libc::LOCK_EX, BREAK_PATIENCE)? {
            return Ok(Break::Flocked(InodeKey {
                dev: st.st_dev,
                ino: st.st_ino,
            }));
        }
        let at_name = match sys::statat(self.dir.as_fd(), &self.file) {
            Ok(s) => s,
            Err(libc::ENOENT) => return Ok(Break::Done),
            Err(e) => return Err(Error::sys(e, "stat", &self.name)),
        };
        if st.st_nlink == 0 || !same_file(&st, &at_name) {
            return Ok(Break::Done);
        }
        let Ok(record) = self.read_lock_file(fd.as_fd(), &st) else {
            // Rewritten meanwhile into something that is not a lock file.
            return Ok(Break::Done);
        };
        if let Ok(why) = self.judge(&record, &st) {
            match sys::unlinkat(self.dir.as_fd(), &self.file) {
                Ok(()) => {
                    let mut broken = self.record_holder(&record);
                    if let Some(f) = broken.lock_file.as_mut() {
                        f.stale = Some(why);
                    }
                    self.broken
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(broken);
                }
                Err(libc::ENOENT) => {}
                Err(e) => return Err(Error::sys(e, "remove the stale lock file", &self.name)),
            }
        }
        Ok(Break::Done)
    }

    /// The `EAGAIN` of a try that found the lock held.
    fn held_error(&self, busy: &Busy) -> Error {
        let detail = match busy {
            Busy::Live(owner, _) => {
                let by = if owner.pid > 0 {
                    format!("process {}", owner.pid)
                } else {
                    "another process".to_owned()
                };
                format!(
                    "{}: the lock file exists: the lock is held by {by}",
                    self.name
                )
            }
            Busy::NotLockFile(why) => self.not_lock_file(why),
            Busy::Flocked(key) => self.flocked(*key),
        };
        Error::new(libc::EAGAIN, detail)
    }

    fn flocked(&self, key: InodeKey) -> String {
        format!(
            "{}: the lock file is stale, but {} holds a flock(2) lock on it, without which \
             it cannot be removed safely: the lock is held until that flock is released",
            self.name,
            who(Self::flock_holder(key))
        )
    }

    fn not_lock_file(&self, why: &str) -> String {
        format!(
            "{} exists and is not a lock file ({why}): DOTLOCK never removes it, so the \
             lock is held for as long as it is there",
            self.name
        )
    }

    /// Adds to a timeout what held the lock when that was not an ordinary lock file.
    fn explain(&self, e: Error, busy: &Busy) -> Error {
        match busy {
            Busy::NotLockFile(why) if e.errno() == libc::ETIMEDOUT => Error::new(
                libc::ETIMEDOUT,
                format!("{}: {}", e.detail(), self.not_lock_file(why)),
            ),
            Busy::Flocked(key) if e.errno() == libc::ETIMEDOUT => Error::new(
                libc::ETIMEDOUT,
                format!("{}: {}", e.detail(), self.flocked(*key)),
            ),
            _ => e,
        }
    }

    /// Releases the lock: removes the lock file if it is still this handle's (see the
    /// protocol in the module documentation), in bounded time, in the process that made
    /// it or a forked child (as a FLOCK lock's unlock in either process releases it).
    /// `ENOLCK` when it was broken as stale by another process meanwhile (nothing is
    /// removed then), or when another process holds a flock on it (it is left, marked
    /// released).
    pub(crate) fn unlock(&self) -> Result<()> {
        let held = self.held().take();
        let result = match held {
            Some(h) => self.remove(h),
            None => Ok(()),
        };
        self.forget_holding();
        result
    }

    fn forget_holding(&self) {
        let mut table = inode_table::table();
        let inode = table.inode(self.key);
        if let Some(h) = inode.holding_mut(self.id) {
            h.ranges.clear(ByteRange::WHOLE);
        }
        inode.settle();
    }

    /// Removes the lock file `h`, by the protocol: in the process that made it, under a
    /// shared flock on the descriptor it made it with, which excludes every breaker but
    /// no reader; in a forked child, which shares that descriptor and so its flock,
    /// under an exclusive flock on a descriptor of its own. When that cannot be had in
    /// [`RELEASE_PATIENCE`], the file is left marked released (see
    /// [`DotLock::abandon`]).
    fn remove(&self, h: Held) -> Result<()> {
        let own;
        let (fd, op) = if h.taker == sys::getpid() {
            (h.fd.as_fd(), libc::LOCK_SH)
        } else {
            match self.open_lock_file() {
                Ok(Some((fd, st))) if st.st_dev == h.dev && st.st_ino == h.ino => {
                    own = fd;
                    (own.as_fd(), libc::LOCK_EX)
                }
                Ok(_) => return Err(self.broken()),
                Err(e) => return Err(e),
            }
        };
        match self.flock_within(fd, op, RELEASE_PATIENCE) {
            Ok(true) => {}
            Ok(false) => return Err(self.abandon(&h)),
            // The flock call itself failed (NFS without a lock manager, say).
            Err(e) => return Err(self.leave_released(&h, e)),
        }
        match sys::statat(self.dir.as_fd(), &self.file) {
            Ok(st) if st.st_dev == h.dev && st.st_ino == h.ino => {
                sys::unlinkat(self.dir.as_fd(), &self.file).map_err(|e| {
                    self.leave_released(&h, Error::sys(e, "remove the lock file", &self.name))
                })
            }
            Ok(_) | Err(libc::ENOENT) => Err(self.broken()),
            Err(e) => Err(self.leave_released(&h, Error::sys(e, "stat", &self.name))),
        }
    }

    /// After a release of the lock file `h` failed with `e` before it could remove
    /// the file: marks it released (see [`DotLock::abandon`]), so that no one, this
    /// handle included, takes it for a live lock, and returns `e` saying so.
    fn leave_released(&self, h: &Held, e: Error) -> Error {
        let marked = sys::write_all(h.fd.as_fd(), RELEASED.as_bytes());
        let fate = if marked.is_ok() {
            "the lock file is left, marked released: the next lock call removes it"
        } else {
            "the lock file is left; it turns stale when this process exits"
        };
        Error::new(e.errno(), format!("{}: {fate}", e.detail()))
    }

    /// Gives up the lock file `h` without removing it, when another process holds a
    /// flock on it that excludes the release's: appends [`RELEASED`] to the record through the
    /// descriptor that made it (so only this inode is written, wherever the name
    /// points), which makes it stale to every unilock process; the next one to get the
    /// flock removes it. Returns the error that says so (or that it was broken).
    fn abandon(&self, h: &Held) -> Error {
        let marked = sys::write_all(h.fd.as_fd(), RELEASED.as_bytes());
        match sys::statat(self.dir.as_fd(), &self.file) {
            Ok(st) if st.st_dev == h.dev && st.st_ino == h.ino => {}
            _ => return self.broken(),
        }
        let by = Self::flock_holder(InodeKey {
            dev: h.dev,
            ino: h.ino,
        });
        let by = match by {
            Some(pid) if pid == sys::getpid() => "another handle of this process".to_owned(),
            other => who(other),
        };
        let fate = match marked {
            Ok(()) => "it is marked released, so unilock lock calls remove it once that \
                       flock is gone; tools that check the pid in it see it held until \
                       this process exits"
                .to_owned(),
            Err(e) => format!(
                "it could not be marked released either ({}): it stays until this \
                 process exits, then it is stale",
                crate::error::describe(e)
            ),
        };
        Error::new(
            libc::ENOLCK,
            format!(
                "{}: the lock file was left in place: {by} holds a flock(2) lock on it, \
                 without which unilock never removes a lock file; {fate}",
                self.name
            ),
        )
    }

    fn broken(&self) -> Error {
        Error::new(
            libc::ENOLCK,
            format!(
                "{}: the lock file was removed by another process, which judged it stale \
                 (refresh it with touch more often than stale_after_s)",
                self.name
            ),
        )
    }

    /// Refreshes the lock file's time; `ENOLCK` when it was broken meanwhile. Nothing
    /// to do when no lock is held.
    pub(crate) fn touch(&self) -> Result<()> {
        let held = self.held();
        let Some(h) = held.as_ref() else {
            return Ok(());
        };
        match sys::statat(self.dir.as_fd(), &self.file) {
            Ok(st) if st.st_dev == h.dev && st.st_ino == h.ino => {}
            Ok(_) | Err(libc::ENOENT) => return Err(self.broken()),
            Err(e) => return Err(Error::sys(e, "stat", &self.name)),
        }
        sys::touch_now(h.fd.as_fd()).map_err(|e| Error::sys(e, "futimens", &self.name))
    }

    /// The lock file's holder when taking the lock would not be granted now: `None`
    /// when it is free or stale.
    pub(crate) fn query(&self) -> Result<Option<Holder>> {
        if self.held().is_some() {
            return Ok(None);
        }
        {
            let table = inode_table::table();
            if !table
                .conflicts(
                    self.key,
                    self.id,
                    Family::Dotlock,
                    ByteRange::WHOLE,
                    Mode::Exclusive,
                )
                .is_empty()
            {
                let me = sys::getpid();
                return Ok(Some(holder(me, true)));
            }
        }
        Ok(match self.inspect()? {
            Found::Absent | Found::Stale(..) => None,
            Found::Live(owner, _) => Some(holder(owner.pid, owner.pid == sys::getpid())),
            Found::NotLockFile(_) => Some(holder(-1, false)),
        })
    }

    /// The lock file's holder, stale or not, as a list of zero or one, with its owner
    /// record and, when it is stale, why.
    pub(crate) fn list(&self) -> Result<Vec<Holder>> {
        let (fd, st) = match self.open_lock_file() {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(Vec::new()),
            // Another user's lock file: held, by an owner this process cannot read.
            Err(e) if e.errno() == libc::EACCES => {
                let mut h = holder(-1, false);
                h.lock_file = Some(self.lock_file_record(&Record::default()));
                return Ok(vec![h]);
            }
            Err(e) => return Err(e),
        };
        let h = match self.read_lock_file(fd.as_fd(), &st) {
            Ok(r) => {
                let mut h = self.record_holder(&r);
                if let (Some(f), Ok(why)) = (h.lock_file.as_mut(), self.judge(&r, &st)) {
                    f.stale = Some(why);
                }
                h
            }
            Err(why) => {
                let mut h = holder(-1, false);
                let mut f = self.lock_file_record(&Record::default());
                f.not_a_lock_file = Some(why);
                h.lock_file = Some(f);
                h
            }
        };
        Ok(vec![h])
    }

    /// The holder a lock file's record names: its pid when it is of this host (or
    /// names none), else -1; with the record.
    fn record_holder(&self, r: &Record) -> Holder {
        let here = r.host.as_deref().is_none_or(|h| Some(h) == host());
        let pid = match r.pid {
            Some(p) if here => p,
            _ => -1,
        };
        let mut h = holder(pid, pid == sys::getpid());
        h.lock_file = Some(self.lock_file_record(r));
        h
    }

    /// The lock file's absolute path (its directory as /proc names it, when it can)
    /// and what the record `r` says.
    fn lock_file_record(&self, r: &Record) -> crate::LockFile {
        let file = std::ffi::OsStr::from_bytes(self.file.to_bytes());
        let path = std::fs::read_link(format!("/proc/self/fd/{}", self.dir.as_raw_fd()))
            .map(|dir| dir.join(file))
            .unwrap_or_else(|_| std::path::PathBuf::from(&self.name));
        crate::LockFile {
            path,
            pid: r.pid,
            host: r.host.clone(),
            start: r.start,
            stale: None,
            not_a_lock_file: None,
        }
    }

    /// The stale lock files this handle's lock calls removed since the last call, each
    /// as the holder its record named, with why it was stale.
    pub(crate) fn take_broken(&self) -> Vec<Holder> {
        std::mem::take(&mut *self.broken.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Wakes a thread of this process waiting for another handle (after a cancel).
    pub(crate) fn wake_waiters(&self) {
        let table = inode_table::table();
        if let Some(inode) = table.get(self.key).filter(|i| i.waiters > 0) {
            inode.cond.notify_all();
        }
    }

    /// Removes the temporary files whose removal failed before (those that fail
    /// again stay listed).
    fn remove_strays(&self) {
        let mut strays = self.strays.lock().unwrap_or_else(|p| p.into_inner());
        strays.retain(
            |name| matches!(sys::unlinkat(self.dir.as_fd(), name), Err(e) if e != libc::ENOENT),
        );
    }

    /// Releases the lock if this process made it (a forked child's copy of the handle
    /// leaves the parent's lock file alone), and leaves the process table.
    pub(crate) fn close(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        // The inotify descriptor kept between waits goes with the handle.
        *self.watch.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
        self.remove_strays();
        let held = self.held().take();
        let result = match held {
            Some(h) if h.taker == sys::getpid() => self.remove(h),
            _ => Ok(()),
        };
        let mut table = inode_table::table();
        let inode = table.inode(self.key);
        inode.holdings.retain(|h| h.handle != self.id);
        inode.open_handles = inode.open_handles.saturating_sub(1);
        inode.settle();
        table.forget_if_unused(self.key);
        result
    }
}

/// What became of a stale lock file that a lock call tried to break.
enum Break {
    /// Removed, or found gone, replaced or no longer stale: look again now.
    Done,
    /// Another process holds a flock on it (this inode): held for now.
    Flocked(InodeKey),
}

/// "process N", or "another process" when the pid is unknown.
fn who(pid: Option<i32>) -> String {
    match pid {
        Some(p) => format!("process {p}"),
        None => "another process".to_owned(),
    }
}

fn holder(pid: i32, is_self: bool) -> Holder {
    let command = if pid > 0 {
        crate::holders::command(pid)
    } else {
        String::new()
    };
    // A pid of this host that is gone holds nothing.
    let processes = if pid > 0 && sys::process_exists(pid) {
        vec![crate::Process {
            pid,
            command: command.clone(),
            fds: Vec::new(),
        }]
    } else {
        Vec::new()
    };
    Holder {
        backend: Backend::Dotlock,
        mode: Mode::Exclusive,
        start: 0,
        len: 0,
        pid,
        is_self,
        command,
        processes,
        lock_file: None,
        etcd: None,
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = parse_record(&me().record);
        assert_eq!(r.pid, Some(sys::getpid()));
        assert_eq!(r.start, start_time(sys::getpid()));
        assert_eq!(r.host.as_deref(), host());
        assert_eq!(r.boot.as_deref(), boot_id());
    }

    #[test]
    fn foreign_records_parse() {
        assert_eq!(parse_record("4242\n").pid, Some(4242));
        assert_eq!(parse_record("4242").pid, Some(4242));
        assert_eq!(parse_record("  17\0").pid, Some(17));
        assert_eq!(parse_record("17 \0").pid, Some(17));
        assert_eq!(parse_record("\x00\x0017\n").pid, Some(17));
        assert_eq!(parse_record("").pid, None);
        assert_eq!(parse_record("0").pid, None);
        assert_eq!(parse_record("x").pid, None);
    }

    #[test]
    fn judged_by_owner() {
        let me = sys::getpid();
        let alive = Record {
            pid: Some(me),
            start: start_time(me),
            host: host().map(str::to_owned),
            boot: boot_id().map(str::to_owned),
            released: false,
        };
        assert!(dead_owner(&alive).0.is_none());
        let reused = Record {
            start: alive.start.map(|s| s + 1),
            ..alive_clone(&alive)
        };
        assert!(dead_owner(&reused).0.is_some());
        let rebooted = Record {
            boot: Some("another-boot".into()),
            ..alive_clone(&alive)
        };
        assert!(dead_owner(&rebooted).0.is_some());
        let elsewhere = Record {
            pid: Some(i32::MAX),
            host: Some(format!("{}-elsewhere", host().unwrap())),
            ..Record::default()
        };
        assert_eq!(dead_owner(&elsewhere), (None, None));
        let gone = Record {
            pid: Some(i32::MAX),
            ..Record::default()
        };
        assert!(dead_owner(&gone).0.is_some());
        let released = parse_record(&format!("{}{RELEASED}", super::me().record));
        assert!(released.released);
        assert!(dead_owner(&released).0.is_some());
    }

    #[test]
    fn lock_records_are_told_from_other_files() {
        for lock in [
            "",
            "\n",
            "0",
            "0\n",
            "12345\n",
            "  17\0",
            "     4242\n",
            "12345\r\n",
            "12345\nstart=99\nhost=mail.example.org\nboot=4f8e-11\n",
            "12345\nstart=99\n\nreleased=1\n",
            "12345\nhost=caf\u{e9}.example\n",
        ] {
            assert_eq!(not_a_lock_record(lock.as_bytes()), None, "{lock:?}");
        }
        for other in [
            "123999999\nimportant data...\n",
            "2147483647 is not a pid\n",
            "-5\n",
            "12345678901\n",
            "pid=12\n",
            "12\nStart=5\n",
            "12\n=5\n",
            "12\ncaf\u{e9}=5\n",
            "12\nstart=5\u{7}\n",
        ] {
            assert!(not_a_lock_record(other.as_bytes()).is_some(), "{other:?}");
        }
        assert!(not_a_lock_record(&[b'1', b'\n', 0xff]).is_some());
        let mut big = b"12\n".to_vec();
        big.resize(MAX_LOCK_FILE + 1, b' ');
        assert!(not_a_lock_record(&big).is_some());
        big.truncate(MAX_LOCK_FILE);
        assert_eq!(not_a_lock_record(&big), None);
    }

    #[test]
    fn temporary_file_names_say_whose_they_are() {
        let me = me();
        let name = temp_name(&me, 0x2a, b"app.lock");
        let owner = parse_temp_name(name.as_bytes()).expect("our own pattern");
        assert_eq!(
            owner,
            TempOwner {
                host: &host_tag().unwrap(),
                boot: &boot_tag().unwrap(),
                pid: me.pid,
                start: me.start,
            }
        );
        assert!(!temp_owner_dead(
            &owner,
            &host_tag().unwrap(),
            boot_tag().as_deref()
        ));
        // The lock file's name may hold anything a name can, '~' too, and is cut.
        let long = [b'~'; 300];
        let name = temp_name(&me, u64::MAX, &long);
        assert!(name.len() <= 232, "{}", name.len());
        assert_eq!(parse_temp_name(name.as_bytes()).unwrap().pid, me.pid);
        let name = temp_name(&me, 1, &[0xff, b'.', b'l']);
        assert!(parse_temp_name(name.as_bytes()).is_some(), "{name}");
        for other in [
            ".ulk~h~~12~~1~a.lock",
            ".ulk~h~~12~~1.tmp",
            ".ulk~h~~0~~1~a.tmp",
            ".ulk~h~~-3~~1~a.tmp",
            ".ulk~h~abc~12~~1~a.tmp",
            ".ulk~h~~12~x~1~a.tmp",
            ".ulk~h~~12~~~a.tmp",
            "ulk~h~~12~~1~a.tmp",
            ".app.lock.12.0.h.tmp",
        ] {
            assert_eq!(parse_temp_name(other.as_bytes()), None, "{other}");
        }
        let dead = TempOwner {
            host: "h",
            boot: "",
            pid: i32::MAX,
            start: None,
        };
        assert!(temp_owner_dead(&dead, "h", None));
        assert!(!temp_owner_dead(&dead, "g", None));
        assert!(!temp_owner_dead(&TempOwner { host: "", ..dead }, "", None));
    }

    #[test]
    fn an_unusual_host_name_is_hashed_in_temporary_file_names() {
        assert_eq!(tag_of_host("mail-1.example_org"), "mail-1.example_org");
        for odd in ["a~b", "a b", "a/b", "caf\u{e9}", &"h".repeat(65)] {
            let tag = tag_of_host(odd);
            assert!(tag.starts_with('#') && tag.len() == 17, "{odd}: {tag}");
        }
        assert_ne!(tag_of_host("a b"), tag_of_host("a_b"));
    }

    #[test]
    fn a_failed_read_is_tried_again() {
        static CELL: OnceLock<String> = OnceLock::new();
        assert_eq!(read_once(&CELL, || None), None);
        assert_eq!(
            read_once(&CELL, || Some("mailhost".into())),
            Some("mailhost")
        );
        assert_eq!(read_once(&CELL, || None), Some("mailhost"));
    }

    #[test]
    fn a_record_naming_a_host_proves_nothing_while_this_hosts_name_is_unknown() {
        let dead_here = Record {
            pid: Some(i32::MAX),
            host: Some("mailhost".into()),
            ..Record::default()
        };
        assert!(
            dead_owner_on(&dead_here, Some("mailhost"), None)
                .0
                .is_some()
        );
        assert_eq!(dead_owner_on(&dead_here, None, None), (None, None));
        assert_eq!(dead_owner_on(&dead_here, Some(""), None), (None, None));
        let rebooted = Record {
            boot: Some("another-boot".into()),
            ..alive_clone(&dead_here)
        };
        assert_eq!(
            dead_owner_on(&rebooted, None, Some("this-boot")),
            (None, None)
        );
        // Without a host in the record (liblockfile's), the pid alone decides.
        let pid_only = Record {
            pid: Some(i32::MAX),
            ..Record::default()
        };
        assert!(dead_owner_on(&pid_only, None, None).0.is_some());
        // An unknown boot id skips the boot test, it does not fail it.
        let me = Record {
            pid: Some(sys::getpid()),
            boot: Some("another-boot".into()),
            ..Record::default()
        };
        assert_eq!(dead_owner_on(&me, None, None), (None, Some(sys::getpid())));
    }

    fn alive_clone(r: &Record) -> Record {
        Record {
            pid: r.pid,
            start: r.start,
            host: r.host.clone(),
            boot: r.boot.clone(),
            released: r.released,
        }
    }
}
