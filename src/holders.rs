//! Who holds a lock: `/proc/locks` for the locks on a file, `/proc/PID/fdinfo` to find
//! the processes that have each lock (the lslocks method).
//!
//! The pid in `/proc/locks` is the process that *took* the lock: -1 for OFD locks,
//! possibly long gone after a fork hand-off or a waiter child. A process that has the
//! lock shows it on a `lock:` line of the fdinfo of a descriptor of that file, so the
//! holder's pid is resolved there: the taker first (cheap), else a scan of every
//! process this user may inspect.
//!
//! A listing resolves every lock on the file, possibly tens of thousands: each
//! process's fdinfo is read at most once per [`Resolver`] and kept as a set, the scan
//! is made once into a map from lock to holder, and each command name is read once,
//! so a listing costs time in proportion to the locks and descriptors it reads.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use crate::inode_table::InodeKey;
use crate::range::{ByteRange, RESERVED};
use crate::{Backend, Error, Holder, Mode, Process, Result};

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
/// `key` (from `fstat` of `fd`) with the device that /proc/locks and fdinfo name the
/// file by: the superblock's, which is the mount's MAJ:MIN in /proc/self/mountinfo.
/// `fstat`'s `st_dev` is not that on every filesystem (btrfs gives each subvolume a
/// device of its own). `key` as it is when /proc cannot tell.
pub(crate) fn proc_key(fd: BorrowedFd<'_>, key: InodeKey) -> InodeKey {
    let fdinfo = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let mount = crate::sys::read_small(Path::new(&fdinfo)).and_then(|info| {
        info.lines()
            .find_map(|l| l.strip_prefix("mnt_id:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    let Some(mount) = mount else {
        return key;
    };
    let Some(mounts) = crate::sys::read_small(Path::new("/proc/self/mountinfo")) else {
        return key;
    };
    mount_device(&mounts, mount).map_or(key, |dev| InodeKey { dev, ino: key.ino })
}

/// The device (MAJ:MIN, field 3) of mount `id` in a /proc/self/mountinfo text.
fn mount_device(mounts: &str, id: u64) -> Option<u64> {
    let line = mounts.lines().find(|l| {
        l.split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            == Some(id)
    })?;
    let (major, minor) = line.split_whitespace().nth(2)?.split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

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
    crate::sys::proc_read_fault()?;
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
    let mut exclusive: HashSet<ProcLock> = HashSet::new();
    for lock in text.lines().filter_map(|l| parse(l, key)) {
        if lock.mode == Mode::Exclusive && !exclusive.insert(lock) {
            continue;
        }
        locks.push(lock);
    }
    locks
}

#[cfg(test)]
thread_local! {
    /// Reads of files and directories under /proc made by this thread, by path: lets
    /// the unit tests check that a listing reads each of them at most once.
    static PROC_READS: std::cell::RefCell<HashMap<std::path::PathBuf, usize>> =
        std::cell::RefCell::new(HashMap::new());
}

/// Counts a read of `path` (a no-op outside the unit tests).
#[inline]
fn count_read(path: &Path) {
    #[cfg(test)]
    PROC_READS.with(|r| *r.borrow_mut().entry(path.to_path_buf()).or_default() += 1);
    #[cfg(not(test))]
    let _ = path;
}

/// The pids of the processes in /proc.
fn processes() -> impl Iterator<Item = i32> {
    count_read(Path::new("/proc"));
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
}

/// The descriptors of `pid` whose fdinfo shows locks on `key`, with those locks, or
/// `None` when its fdinfo cannot be read.
fn fd_locks(pid: i32, key: InodeKey) -> Option<Vec<(i32, Vec<ProcLock>)>> {
    let path = format!("/proc/{pid}/fdinfo");
    count_read(Path::new(&path));
    crate::sys::proc_read_fault().ok()?;
    let dir = std::fs::read_dir(path).ok()?;
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        count_read(&path);
        let Ok(text) = crate::sys::proc_read_fault().and_then(|()| std::fs::read_to_string(path))
        else {
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

/// What identifies a lock for its holder's search: a lock in /proc/locks and the same
/// lock on a `lock:` line of a holder's fdinfo agree on it, the pid too (the taker's,
/// -1 for OFD locks: the kernel prints the same field in both), which tells apart the
/// shared FLOCK locks of two open file descriptions.
type LockId = (Backend, Mode, ByteRange, i32);

/// The [`LockId`] of a lock line.
fn lock_id(lock: &ProcLock) -> LockId {
    (lock.backend, lock.mode, lock.range, lock.pid)
}

/// The locks on `key` that `pid` has, each with the descriptors that show it, or
/// `None` when its fdinfo cannot be read.
fn locks_of_process(pid: i32, key: InodeKey) -> Option<HashMap<LockId, Vec<i32>>> {
    fd_locks(pid, key).map(|fds| {
        let mut out: HashMap<LockId, Vec<i32>> = HashMap::new();
        for (fd, locks) in fds {
            for lock in &locks {
                let fds = out.entry(lock_id(lock)).or_default();
                if !fds.contains(&fd) {
                    fds.push(fd);
                }
            }
        }
        out
    })
}

/// Finds the processes that have locks. Every /proc file it reads is read once: each
/// process's locks (its fdinfo), the scan of every process (made the first time a
/// lock's holders are asked for), command names and liveness are kept for the
/// resolver's life, one listing or query.
///
/// The inquiring process may have a lock only through a descriptor it inherited (the
/// `unilock --list` of `( unilock 9; unilock --list f ) 9>f` shares the shell's
/// descriptor): it counts as a holder when one of its handles holds the lock
/// ([`Resolver::with_own`]) or when no other process has it.
pub(crate) struct Resolver {
    key: InodeKey,
    me: i32,
    /// What this process's handles hold on the file (from the process table).
    own: Vec<(Backend, Mode, ByteRange)>,
    /// For each lock some process has, every such pid, lowest first (the whole scan
    /// of /proc).
    scanned: Option<HashMap<LockId, Vec<i32>>>,
    /// Each process's locks on the file with their descriptors, `None` when its
    /// fdinfo cannot be read.
    by_pid: HashMap<i32, Option<HashMap<LockId, Vec<i32>>>>,
    /// Command names (`/proc/PID/comm`) read so far.
    commands: HashMap<i32, String>,
    /// Whether a taker that has none of the file's locks is still alive.
    alive: HashMap<i32, bool>,
}

impl Resolver {
    pub(crate) fn new(key: InodeKey) -> Self {
        Resolver {
            key,
            me: crate::sys::getpid(),
            own: Vec::new(),
            scanned: None,
            by_pid: HashMap::new(),
            commands: HashMap::new(),
            alive: HashMap::new(),
        }
    }

    /// Tells the resolver what this process's handles hold on the file (backend, mode,
    /// range), so that it names this process as the holder of those locks.
    pub(crate) fn with_own(mut self, own: Vec<(Backend, Mode, ByteRange)>) -> Self {
        self.own = own;
        self
    }

    /// `pid`'s locks on the file, its fdinfo read the first time.
    fn locks_of(&mut self, pid: i32) -> Option<&HashMap<LockId, Vec<i32>>> {
        let key = self.key;
        self.by_pid
            .entry(pid)
            .or_insert_with(|| locks_of_process(pid, key))
            .as_ref()
    }

    /// True when `pid` has `lock` (a map lookup once its fdinfo was read).
    fn has(&mut self, pid: i32, lock: &ProcLock) -> bool {
        self.locks_of(pid)
            .is_some_and(|locks| locks.contains_key(&lock_id(lock)))
    }

    /// True when one of this process's handles holds `lock` and its fdinfo shows it.
    fn mine(&mut self, lock: &ProcLock) -> bool {
        let held = self.own.iter().any(|&(backend, mode, range)| {
            backend == lock.backend && mode == lock.mode && range.overlaps(&lock.range)
        });
        held && self.has(self.me, lock)
    }

    /// The scan of every process: each lock any of them has, with every pid that has
    /// it. Processes already read are not read again.
    fn scan(&mut self) -> &HashMap<LockId, Vec<i32>> {
        if self.scanned.is_none() {
            let mut holders: HashMap<LockId, Vec<i32>> = HashMap::new();
            for pid in processes() {
                for id in self.locks_of(pid).into_iter().flat_map(|l| l.keys()) {
                    holders.entry(*id).or_default().push(pid);
                }
            }
            for pids in holders.values_mut() {
                pids.sort_unstable();
            }
            self.scanned = Some(holders);
        }
        self.scanned.as_ref().expect("filled above")
    }

    /// True when `pid` is a live process (`/proc/PID` looked up once).
    fn alive(&mut self, pid: i32) -> bool {
        *self.alive.entry(pid).or_insert_with(|| {
            let path = format!("/proc/{pid}");
            count_read(Path::new(&path));
            Path::new(&path).exists()
        })
    }

    /// A live pid that has `lock`, or -1 when none can be found; a waiter child is
    /// named by the process it works for ([`Resolver::host_of`]). The taker is asked
    /// first (its fdinfo alone); the scan of every process only when it does not have
    /// the lock.
    pub(crate) fn pid_of(&mut self, lock: &ProcLock) -> i32 {
        if lock.pid > 0 && (lock.pid != self.me || self.mine(lock)) && self.has(lock.pid, lock) {
            return self.host_of(lock.pid);
        }
        let processes = self.processes(lock);
        self.choose(lock, &processes)
    }

    /// The holder to name among `processes` (those that have `lock`): this process
    /// when its handles hold it, else the taker when it is among them, else the lowest
    /// pid; when none is known, a live taker (whose fdinfo this process may not read),
    /// else -1.
    fn choose(&mut self, lock: &ProcLock, processes: &[Process]) -> i32 {
        if self.mine(lock) {
            return self.me;
        }
        let taker = self.host_of(lock.pid);
        if taker > 0 && processes.iter().any(|p| p.pid == taker) {
            return taker;
        }
        if let Some(first) = processes.first() {
            return first.pid;
        }
        if lock.pid > 0 && self.alive(lock.pid) {
            lock.pid
        } else {
            -1
        }
    }

    /// Every live process that has `lock`, lowest pid first, waiter children counted
    /// as the process they work for; this process left out unless its handles hold the
    /// lock or no other process has it.
    pub(crate) fn processes(&mut self, lock: &ProcLock) -> Vec<Process> {
        let id = lock_id(lock);
        let pids = self.scan().get(&id).cloned().unwrap_or_default();
        let mut out: Vec<Process> = Vec::new();
        for pid in pids {
            let fds = self
                .locks_of(pid)
                .and_then(|l| l.get(&id))
                .cloned()
                .unwrap_or_default();
            let host = self.host_of(pid);
            match out.iter_mut().find(|p| p.pid == host) {
                Some(p) => {
                    for fd in fds {
                        if !p.fds.contains(&fd) {
                            p.fds.push(fd);
                        }
                    }
                }
                None => out.push(Process {
                    pid: host,
                    command: String::new(),
                    fds,
                }),
            }
        }
        if out.iter().any(|p| p.pid != self.me) && !self.mine(lock) {
            out.retain(|p| p.pid != self.me);
        }
        out.sort_by_key(|p| p.pid);
        for p in &mut out {
            p.fds.sort_unstable();
            p.command = self.command_of(p.pid);
        }
        out
    }

    /// The command name of `pid`, read once.
    fn command_of(&mut self, pid: i32) -> String {
        self.commands
            .entry(pid)
            .or_insert_with(|| command(pid))
            .clone()
    }

    /// The process that a waiter child (`crate::helper`) works for, else `pid`
    /// itself. A waiter child shares its parent's descriptor table, so the kernel
    /// records it as the taker of the locks it waited for and its fdinfo shows them;
    /// it is known by its command name and a parent whose table `kcmp` finds to be
    /// the same (or cannot compare).
    fn host_of(&mut self, pid: i32) -> i32 {
        if pid <= 0 || pid == self.me {
            return pid;
        }
        let name = self.commands.entry(pid).or_insert_with(|| command(pid));
        if name != crate::helper::COMMAND {
            return pid;
        }
        match parent_of(pid) {
            Some(parent)
                if crate::sys::kcmp_same(parent, pid, crate::sys::KCMP_FILES, 0, 0)
                    .unwrap_or(true) =>
            {
                parent
            }
            _ => pid,
        }
    }

    /// A [`Holder`] for `lock`: the holder named ([`Resolver::choose`]), its command,
    /// whether it is this process, and every process that has the lock.
    pub(crate) fn holder(&mut self, lock: &ProcLock) -> Holder {
        let processes = self.processes(lock);
        let pid = self.choose(lock, &processes);
        self.holder_with(lock, pid, processes)
    }

    /// A [`Holder`] for `lock` held by `pid`.
    pub(crate) fn holder_with_pid(&mut self, lock: &ProcLock, pid: i32) -> Holder {
        let processes = self.processes(lock);
        self.holder_with(lock, pid, processes)
    }

    fn holder_with(&mut self, lock: &ProcLock, pid: i32, processes: Vec<Process>) -> Holder {
        Holder {
            backend: lock.backend,
            mode: lock.mode,
            start: lock.range.start,
            len: lock.range.api_len(),
            pid,
            is_self: pid == self.me,
            command: self.command_of(pid),
            processes,
            lock_file: None,
            etcd: None,
        }
    }
}

/// True when another process has the open file description behind `fd` with a lock
/// on `key` (from `fstat`; [`proc_key`] finds how /proc names it) (a child that
/// inherited it by `fork()`): a descriptor of that process
/// whose fdinfo shows a lock on the inode and which `kcmp(KCMP_FILE)` finds to be the
/// same description. Processes sharing this process's descriptor table (its waiter
/// children) are skipped. Where `kcmp` is refused, a lock line is taken as sharing.
pub(crate) fn description_shared_elsewhere(fd: BorrowedFd<'_>, key: InodeKey) -> bool {
    use crate::sys::{KCMP_FILE, KCMP_FILES, getpid, kcmp_same};
    let key = proc_key(fd, key);
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

/// The parent of `pid` (`PPid:` in `/proc/PID/status`), `None` when unknown.
fn parent_of(pid: i32) -> Option<i32> {
    let path = format!("/proc/{pid}/status");
    count_read(Path::new(&path));
    let status = crate::sys::read_small(Path::new(&path))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|&p: &i32| p > 0)
}

/// The command name of `pid` (`/proc/PID/comm`), "" when unknown.
pub(crate) fn command(pid: i32) -> String {
    if pid <= 0 {
        return String::new();
    }
    let path = format!("/proc/{pid}/comm");
    count_read(Path::new(&path));
    crate::sys::read_small(Path::new(&path))
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

    /// Takes the reads of /proc files this thread made since the last call.
    fn take_reads() -> HashMap<std::path::PathBuf, usize> {
        PROC_READS.with(|r| std::mem::take(&mut *r.borrow_mut()))
    }

    /// Fails unless every /proc file or directory but /proc/locks was read at most
    /// once.
    fn assert_read_once(reads: &HashMap<std::path::PathBuf, usize>, what: &str) {
        let mut again: Vec<_> = reads
            .iter()
            .filter(|(path, n)| **n > 1 && path.as_path() != Path::new("/proc/locks"))
            .collect();
        again.sort();
        assert!(
            again.is_empty(),
            "{what} read these more than once: {again:?}"
        );
    }

    #[test]
    fn a_listing_reads_each_proc_file_once_however_many_locks_it_resolves() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("unilock-holders-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let me = crate::sys::getpid();
        // A lister that is not the holder: the parent of this test process.
        let other = std::os::unix::process::parent_id() as i32;
        let n = 100u64;
        for backend in [Backend::Ofd, Backend::Posix] {
            let path = dir.join(format!("{backend:?}"));
            let options = crate::Options::new()
                .backend(backend)
                .flags(crate::Flags::CREATE);
            let lock = crate::Lock::open(&path, &options).unwrap();
            for i in 0..n {
                lock.lock(Mode::Exclusive, 2 * i, 1, Some(std::time::Duration::ZERO))
                    .unwrap();
            }
            let meta = std::fs::metadata(&path).unwrap();
            let key = InodeKey {
                dev: meta.dev(),
                ino: meta.ino(),
            };

            // The whole listing. A /proc/locks longer than a page comes in several
            // reads, and a line can be missed while other processes of the machine
            // lock and unlock meanwhile: how many locks it shows is not checked here.
            take_reads();
            let listed = lock.list().unwrap();
            let reads = take_reads();
            assert!(
                listed.iter().all(|h| h.pid == me && h.is_self),
                "{backend:?}"
            );
            assert_read_once(&reads, &format!("{backend:?}: Lock::list"));

            // The resolution of the locks held, as /proc/locks shows them (an OFD lock
            // without its taker's pid), in this process and as another process lists
            // them: there an OFD lock's holder is found by the scan of every process.
            let held: Vec<ProcLock> = (0..n)
                .map(|i| ProcLock {
                    backend,
                    mode: Mode::Exclusive,
                    range: ByteRange {
                        start: 2 * i,
                        end: 2 * i + 1,
                    },
                    pid: if backend == Backend::Ofd { -1 } else { me },
                })
                .collect();
            for lister in [me, other] {
                let what = format!("{backend:?} listed by pid {lister} (the holder is {me})");
                take_reads();
                let mut resolver = Resolver::new(key);
                resolver.me = lister;
                let holders: Vec<Holder> = held.iter().map(|l| resolver.holder(l)).collect();
                let reads = take_reads();
                assert!(
                    holders
                        .iter()
                        .all(|h| h.pid == me && h.is_self == (lister == me)),
                    "{what}: {:?}",
                    holders.iter().find(|h| h.pid != me)
                );
                assert!(held.iter().all(|l| resolver.has(me, l)), "{what}");
                assert_read_once(&reads, &what);
                assert_eq!(
                    reads.get(Path::new(&format!("/proc/{me}/comm"))),
                    Some(&1),
                    "{what}: the holder's command name is read once"
                );
                assert_eq!(
                    reads.get(Path::new(&format!("/proc/{me}/fdinfo"))),
                    Some(&1),
                    "{what}: the holder's descriptors are listed once"
                );
                if backend == Backend::Ofd && lister != me {
                    assert_eq!(reads.get(Path::new("/proc")), Some(&1), "{what}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
