//! Who holds a lock: `/proc/locks` for the locks on a file, `/proc/PID/fdinfo` to find
//! the processes that have each lock (the lslocks method).
//!
//! The pid in `/proc/locks` is the process that *took* the lock: -1 for OFD locks,
//! possibly long gone after a fork hand-off or a waiter child. A process that has the
//! lock shows it on a `lock:` line of the fdinfo of a descriptor of that file, so the
//! holder's pid is resolved there: the taker first (cheap), else a scan of every
//! process this user may inspect.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use crate::inode_table::InodeKey;
use crate::range::{ByteRange, RESERVED};
use crate::{Backend, Error, Holder, Mode, Result};

/// One lock line about our inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ProcLock {
    pub backend: Backend,
    pub mode: Mode,
    pub range: ByteRange,
    /// The pid the kernel shows (the taker), -1 for OFD.
    pub pid: i32,
}

/// Parses `ID: [-> ]TYPE ADVISORY READ|WRITE PID MAJ:MIN:INO START END|EOF` and keeps
/// it when it is a granted lock on `key`.
pub(crate) fn parse(line: &str, key: InodeKey) -> Option<ProcLock> {
    let mut f = line.split_whitespace();
    f.next()?; // "N:"
    let mut kind = f.next()?;
    if kind == "->" {
        return None; // a waiter, not a holder
    }
    if kind == "DELEG" || kind == "LEASE" {
        kind = "";
    }
    let backend = match kind {
        "FLOCK" => Backend::Flock,
        "OFDLCK" => Backend::Ofd,
        "POSIX" => Backend::Posix,
        _ => return None,
    };
    f.next()?; // ADVISORY / MANDATORY
    let mode = match f.next()? {
        "READ" => Mode::Shared,
        "WRITE" => Mode::Exclusive,
        _ => return None,
    };
    let pid: i32 = f.next()?.parse().ok()?;
    let mut dev = f.next()?.split(':');
    let major = u64::from_str_radix(dev.next()?, 16).ok()?;
    let minor = u64::from_str_radix(dev.next()?, 16).ok()?;
    let ino: u64 = dev.next()?.parse().ok()?;
    if ino != key.ino
        || major != libc::major(key.dev) as u64
        || minor != libc::minor(key.dev) as u64
    {
        return None;
    }
    let start: u64 = f.next()?.parse().ok()?;
    if start >= RESERVED {
        return None; // the library's own (the fair queue), not a user's lock
    }
    let end = match f.next()? {
        "EOF" => RESERVED,
        e => e.parse::<u64>().ok()?.saturating_add(1).min(RESERVED),
    };
    let start = start.min(RESERVED - 1);
    Some(ProcLock {
        backend,
        mode,
        range: ByteRange {
            start,
            end: end.max(start + 1),
        },
        pid,
    })
}

/// How many times /proc/locks is read, at most, for a consistent view.
const PROC_LOCKS_READS: usize = 32;

/// Every lock granted on `key`, as `/proc/locks` shows it.
///
/// The kernel produces /proc/locks a page per `read()` and resumes each read by line
/// number, so lines are skipped or repeated when locks come and go between two reads.
/// A file under a page comes whole in one read ([`read_whole`]); a longer one is read
/// until two consecutive reads agree on the lines about `key` (at most a few dozen
/// times; under constant churn the last read is used).
pub(crate) fn proc_locks(key: InodeKey) -> Result<Vec<ProcLock>> {
    let read = || {
        read_whole("/proc/locks")
            .map(|(text, whole)| (parse_all(&text, key), whole))
            .map_err(|e| {
                Error::new(
                    e.raw_os_error().unwrap_or(libc::EIO),
                    format!(
                        "cannot read /proc/locks ({e}): the holders of a lock cannot be listed"
                    ),
                )
            })
    };
    let (mut locks, whole) = read()?;
    if whole {
        return Ok(locks);
    }
    for _ in 1..PROC_LOCKS_READS {
        let (again, whole) = read()?;
        if whole || again == locks {
            return Ok(again);
        }
        locks = again;
    }
    Ok(locks)
}

/// Room the kernel needs for one more /proc/locks line: a read that leaves more than
/// this free in a page ended because the listing ended.
const LONGEST_LINE: usize = 512;

/// Reads a /proc file with large `read()` calls: the kernel renders up to a page per
/// call. Returns the text and whether it came in one pass: a first read that ends well
/// short of a page is the whole file (reading on could only return lines again, if
/// locks were added meanwhile).
fn read_whole(path: &str) -> std::io::Result<(String, bool)> {
    use std::io::Read;
    let page = 4096;
    let mut file = std::fs::File::open(path)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut reads = 0;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                reads += 1;
                out.extend_from_slice(&buf[..n]);
                if n + LONGEST_LINE < page {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((String::from_utf8_lossy(&out).into_owned(), reads <= 1))
}

/// The locks on `key` in a /proc/locks text, without repeated exclusive lines.
pub(crate) fn parse_all(text: &str, key: InodeKey) -> Vec<ProcLock> {
    let mut locks: Vec<ProcLock> = Vec::new();
    for lock in text.lines().filter_map(|l| parse(l, key)) {
        if lock.mode == Mode::Exclusive && locks.contains(&lock) {
            continue;
        }
        locks.push(lock);
    }
    locks
}

/// The pids of the processes in /proc.
fn processes() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
}

/// The descriptors of `pid` whose fdinfo shows locks on `key`, with those locks, or
/// `None` when its fdinfo cannot be read.
fn fd_locks(pid: i32, key: InodeKey) -> Option<Vec<(i32, Vec<ProcLock>)>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let locks: Vec<ProcLock> = text
            .lines()
            .filter_map(|l| l.strip_prefix("lock:"))
            .filter_map(|l| parse(l.trim_start(), key))
            .collect();
        if !locks.is_empty() {
            out.push((fd, locks));
        }
    }
    Some(out)
}

/// The locks on `key` that `pid` has through one of its descriptors, or `None` when
/// its fdinfo cannot be read.
fn locks_of_process(pid: i32, key: InodeKey) -> Option<Vec<ProcLock>> {
    fd_locks(pid, key).map(|fds| fds.into_iter().flat_map(|(_, locks)| locks).collect())
}

fn same_lock(a: &ProcLock, b: &ProcLock) -> bool {
    a.backend == b.backend && a.mode == b.mode && a.range == b.range
}

/// Finds the processes that have locks, caching one scan of /proc per resolver.
pub(crate) struct Resolver {
    key: InodeKey,
    me: i32,
    scanned: Option<HashMap<i32, Vec<ProcLock>>>,
    by_pid: HashMap<i32, Option<Vec<ProcLock>>>,
}

impl Resolver {
    pub(crate) fn new(key: InodeKey) -> Self {
        Resolver {
            key,
            me: crate::sys::getpid(),
            scanned: None,
            by_pid: HashMap::new(),
        }
    }

    fn has(&mut self, pid: i32, lock: &ProcLock) -> bool {
        let key = self.key;
        let locks = self
            .by_pid
            .entry(pid)
            .or_insert_with(|| locks_of_process(pid, key));
        locks
            .as_ref()
            .is_some_and(|l| l.iter().any(|x| same_lock(x, lock)))
    }

    /// A live pid that has `lock`, or -1 when none can be found.
    pub(crate) fn pid_of(&mut self, lock: &ProcLock) -> i32 {
        if lock.pid > 0 && self.has(lock.pid, lock) {
            return lock.pid;
        }
        if self.has(self.me, lock) {
            return self.me;
        }
        let key = self.key;
        let scanned = self.scanned.get_or_insert_with(|| scan_all(key));
        let mut found: Vec<i32> = scanned
            .iter()
            .filter(|(_, locks)| locks.iter().any(|x| same_lock(x, lock)))
            .map(|(pid, _)| *pid)
            .collect();
        found.sort_unstable();
        found
            .first()
            .copied()
            .unwrap_or(if lock.pid > 0 && alive(lock.pid) {
                lock.pid
            } else {
                -1
            })
    }

    /// A [`Holder`] for `lock`, with its pid, command and whether it is this process.
    pub(crate) fn holder(&mut self, lock: &ProcLock) -> Holder {
        let pid = self.pid_of(lock);
        self.holder_with_pid(lock, pid)
    }

    /// A [`Holder`] for `lock` held by `pid`.
    pub(crate) fn holder_with_pid(&self, lock: &ProcLock, pid: i32) -> Holder {
        Holder {
            backend: lock.backend,
            mode: lock.mode,
            start: lock.range.start,
            len: lock.range.api_len(),
            pid,
            is_self: pid == self.me,
            command: command(pid),
        }
    }
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn scan_all(key: InodeKey) -> HashMap<i32, Vec<ProcLock>> {
    processes()
        .filter_map(|pid| Some((pid, locks_of_process(pid, key)?)))
        .filter(|(_, locks)| !locks.is_empty())
        .collect()
}

/// True when another process has the open file description behind `fd` with a lock
/// on `key` (a child that inherited it by `fork()`): a descriptor of that process
/// whose fdinfo shows a lock on the inode and which `kcmp(KCMP_FILE)` finds to be the
/// same description. Processes sharing this process's descriptor table (its waiter
/// children) are skipped. Where `kcmp` is refused, a lock line is taken as sharing.
pub(crate) fn description_shared_elsewhere(fd: BorrowedFd<'_>, key: InodeKey) -> bool {
    use crate::sys::{KCMP_FILE, KCMP_FILES, getpid, kcmp_same};
    let me = getpid();
    processes()
        .filter(|&pid| pid != me && !kcmp_same(me, pid, KCMP_FILES, 0, 0).unwrap_or(false))
        .any(|pid| {
            fd_locks(pid, key)
                .into_iter()
                .flatten()
                .any(|(their_fd, _)| {
                    kcmp_same(me, pid, KCMP_FILE, fd.as_raw_fd(), their_fd).unwrap_or(true)
                })
        })
}

/// The command name of `pid` (`/proc/PID/comm`), "" when unknown.
pub(crate) fn command(pid: i32) -> String {
    if pid <= 0 {
        return String::new();
    }
    crate::sys::read_small(Path::new(&format!("/proc/{pid}/comm")))
        .map(|s| s.trim_end_matches('\n').chars().take(15).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_locks_lines_for_one_inode() {
        let key = InodeKey {
            dev: libc::makedev(0xfd, 1),
            ino: 1234,
        };
        let l = parse("1: OFDLCK ADVISORY  READ  -1 fd:01:1234 10 19", key).unwrap();
        assert_eq!(l.backend, Backend::Ofd);
        assert_eq!(l.range, ByteRange { start: 10, end: 20 });
        assert_eq!(l.pid, -1);
        let l = parse("2: FLOCK  ADVISORY  WRITE 77 fd:01:1234 0 EOF", key).unwrap();
        assert_eq!(
            (l.backend, l.mode, l.range.api_len()),
            (Backend::Flock, Mode::Exclusive, 0)
        );
        assert!(parse("3: -> FLOCK  ADVISORY  WRITE 78 fd:01:1234 0 EOF", key).is_none());
        assert!(parse("4: POSIX  ADVISORY  WRITE 79 fd:01:999 0 EOF", key).is_none());
        assert!(parse("5: LEASE  ACTIVE    READ 80 fd:01:1234 0 EOF", key).is_none());
    }

    #[test]
    fn a_repeated_exclusive_line_is_dropped_but_shared_ones_are_kept() {
        let key = InodeKey {
            dev: libc::makedev(0xfd, 1),
            ino: 7,
        };
        let text = "1: OFDLCK ADVISORY  WRITE -1 fd:01:7 0 9\n\
                    2: OFDLCK ADVISORY  WRITE -1 fd:01:7 0 9\n\
                    3: FLOCK  ADVISORY  READ  5 fd:01:7 0 EOF\n\
                    4: FLOCK  ADVISORY  READ  5 fd:01:7 0 EOF\n";
        let locks = parse_all(text, key);
        assert_eq!(locks.len(), 3, "{locks:?}");
    }
}
