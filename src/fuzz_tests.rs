//! Seeded random tests of the parsers of what the kernel and other tools write: the
//! lines of /proc/locks and the `lock:` lines of /proc/PID/fdinfo (holders.rs), and
//! DOTLOCK lock files and temporary-file names (dotlock.rs).
//!
//! Each test draws a fixed number of cases from a fixed seed, so that `cargo test` is
//! repeatable and quick. `UNILOCK_FUZZ_SEED=N` draws from seed N instead, and
//! `UNILOCK_FUZZ_SECONDS=S` goes on with new seeds until S seconds have passed (`make
//! fuzz`). A failure names the seed that reproduces it.

use std::fmt::Debug;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::dotlock::{self, MAX_LOCK_FILE};
use crate::holders::{self, ProcLock};
use crate::inode_table::InodeKey;
use crate::range::{ByteRange, RESERVED, RangeMap};
use crate::{Backend, Mode};

// Seeds.

#[path = "../tests/common/seeds.rs"]
mod seeds;

/// [`seeds::fuzz`] without a seed watcher.
fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    seeds::fuzz(name, cases, strategy, |_| {}, test);
}

// /proc/locks and fdinfo lines.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Posix,
    Ofd,
    /// A POSIX "access" lock of a mandatory-locking check (kernels before 5.15).
    Access,
    Flock,
    Lease,
    Deleg,
    Unknown,
}

/// One entry as fs/locks.c's `lock_get_status` shows it.
#[derive(Clone, Debug)]
struct Entry {
    id: u32,
    /// 0 for a lock; n for a request blocked n levels down the tree of waiters.
    level: usize,
    kind: Kind,
    /// "MANDATORY" (kernels before 5.15, on a file system mounted with `mand`).
    mandatory: bool,
    /// A lease's state column.
    lease: &'static str,
    /// false: a lock whose file has no inode (`*NOINODE*`, `<none>:0`).
    inode: bool,
    /// "READ", "WRITE" or "UNLCK".
    ty: &'static str,
    pid: i32,
    major: u32,
    minor: u32,
    ino: u64,
    start: u64,
    /// Inclusive; `None` is `OFFSET_MAX`, shown as EOF.
    end: Option<u64>,
}

/// The line the kernel prints for `e`, without its newline.
fn kernel_line(e: &Entry) -> String {
    let mut s = format!("{}: ", e.id);
    if e.level > 0 {
        // seq_printf(f, "%*s", repeat - 1 + strlen(pfx), pfx) with pfx "-> ".
        s += &format!("{:>width$}", "-> ", width = e.level - 1 + 3);
    }
    let fcntl = matches!(e.kind, Kind::Posix | Kind::Ofd | Kind::Access);
    match e.kind {
        Kind::Posix | Kind::Ofd | Kind::Access => {
            s += match e.kind {
                Kind::Access => "ACCESS",
                Kind::Ofd => "OFDLCK",
                _ => "POSIX ",
            };
            s += if !e.inode {
                " *NOINODE* "
            } else if e.mandatory {
                " MANDATORY "
            } else {
                " ADVISORY  "
            };
        }
        Kind::Flock => s += "FLOCK  ADVISORY  ",
        Kind::Lease | Kind::Deleg => {
            s += if e.kind == Kind::Deleg {
                "DELEG  "
            } else {
                "LEASE  "
            };
            s += e.lease;
        }
        Kind::Unknown => s += "UNKNOWN UNKNOWN  ",
    }
    s += e.ty;
    s += " ";
    if e.inode {
        s += &format!("{} {:02x}:{:02x}:{} ", e.pid, e.major, e.minor, e.ino);
    } else {
        s += &format!("{} <none>:0 ", e.pid);
    }
    match (fcntl, e.end) {
        (false, _) => s += "0 EOF",
        (true, None) => s += &format!("{} EOF", e.start),
        (true, Some(end)) => s += &format!("{} {}", e.start, end),
    }
    s
}

/// What the parser must make of `e` for the file `key`: a granted FLOCK, OFD or POSIX
/// lock of READ or WRITE on that inode, below the reserved offsets; nothing else.
fn expected_lock(e: &Entry, key: InodeKey) -> Option<ProcLock> {
    let backend = match e.kind {
        Kind::Posix => Backend::Posix,
        Kind::Ofd => Backend::Ofd,
        Kind::Flock => Backend::Flock,
        _ => return None,
    };
    let mode = match e.ty {
        "READ" => Mode::Shared,
        "WRITE" => Mode::Exclusive,
        _ => return None,
    };
    let same_file = e.inode
        && e.ino == key.ino
        && e.major == libc::major(key.dev)
        && e.minor == libc::minor(key.dev);
    if e.level > 0 || !same_file {
        return None;
    }
    let (start, end) = match backend {
        Backend::Flock => (0, None),
        _ => (e.start, e.end),
    };
    if start >= RESERVED {
        return None;
    }
    let end = end.map_or(RESERVED, |end| (end + 1).min(RESERVED));
    Some(ProcLock {
        backend,
        mode,
        range: ByteRange { start, end },
        pid: e.pid,
    })
}

/// File offsets as a lock shows them: small ones, ones around 2^62 (the library's
/// reserved offsets), ones near the largest offset, any.
fn offset() -> impl Strategy<Value = u64> {
    let max = i64::MAX as u64;
    prop_oneof![
        4 => 0..4096u64,
        2 => (RESERVED - 3)..=(RESERVED + 3),
        1 => (max - 3)..=max,
        1 => 0..=max,
    ]
}

fn pid() -> impl Strategy<Value = i32> {
    prop_oneof![Just(-1), Just(0), 1..=4_194_304i32, 4_194_305..=i32::MAX,]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::Posix),
        4 => Just(Kind::Ofd),
        4 => Just(Kind::Flock),
        1 => Just(Kind::Access),
        1 => Just(Kind::Lease),
        1 => Just(Kind::Deleg),
        1 => Just(Kind::Unknown),
    ]
}

/// A file: device numbers as the kernel has them (12-bit major, 20-bit minor), any
/// inode number.
fn file_id() -> impl Strategy<Value = (u32, u32, u64)> {
    (
        prop_oneof![0..=0xffu32, 0..=0xfffu32],
        prop_oneof![0..=0xffu32, 0..=0xf_ffffu32],
        prop_oneof![1..100_000u64, any::<u64>()],
    )
}

fn entry(file: (u32, u32, u64)) -> impl Strategy<Value = Entry> {
    let header = (
        1..100_000u32,
        prop_oneof![6 => Just(0usize), 1 => 1..4usize],
        kind(),
        prop::bool::weighted(0.1),
        prop::sample::select(vec!["ACTIVE    ", "BREAKING  ", "BREAKER   "]),
        prop::bool::weighted(0.95),
        prop_oneof![4 => Just("READ"), 4 => Just("WRITE"), 1 => Just("UNLCK")],
    );
    let body = (
        pid(),
        offset(),
        prop::option::weighted(0.7, prop_oneof![0..64u64, any::<u64>()]),
    );
    (header, body).prop_map(
        move |((id, level, kind, mandatory, lease, inode, ty), (pid, start, len))| {
            let max = i64::MAX as u64;
            // The last byte, inclusive, below OFFSET_MAX (which is shown as EOF).
            let end = len
                .filter(|_| start < max)
                .map(|l| start.saturating_add(l).min(max - 1));
            Entry {
                id,
                level,
                kind,
                mandatory,
                lease,
                inode,
                ty,
                pid,
                major: file.0,
                minor: file.1,
                ino: file.2,
                start,
                end,
            }
        },
    )
}

/// The key of the file the parser looks for: the entry's own, or one that differs in
/// one of device major, minor or inode.
fn key_for(file: (u32, u32, u64), which: u8) -> InodeKey {
    let (major, minor, ino) = file;
    let (major, minor, ino) = match which {
        1 => (major ^ 1, minor, ino),
        2 => (major, minor ^ 0x100, ino),
        3 => (major, minor, ino.wrapping_add(1)),
        _ => (major, minor, ino),
    };
    InodeKey {
        dev: libc::makedev(major, minor),
        ino,
    }
}

/// Every kernel line round-trips: a lock on the file comes back with its backend,
/// mode, pid and range (clipped below 2^62); waiters, leases, delegations, access
/// locks, UNLCK entries, inode-less entries and other files' locks are skipped, not
/// misread.
#[test]
fn proc_locks_lines_round_trip() {
    let case = file_id().prop_flat_map(|file| {
        (
            entry(file),
            prop_oneof![3 => Just(0u8), 1 => 1..=3u8],
            Just(file),
        )
    });
    fuzz(
        "proc_locks_lines_round_trip",
        4000,
        case,
        |(e, which, file)| {
            let key = key_for(file, which);
            let line = kernel_line(&e);
            let want = expected_lock(&e, key);
            prop_assert_eq!(holders::parse(&line, key), want, "{:?}", line);
            Ok(())
        },
    );
}

/// A whole /proc/locks text (locks of several files, waiters among them) gives the
/// locks on the file, in order, an exclusive lock shown twice once.
#[test]
fn proc_locks_texts_keep_the_locks_of_one_file() {
    let case = (file_id(), file_id()).prop_flat_map(|(ours, other)| {
        let line = prop_oneof![3 => entry(ours), 1 => entry(other)];
        (prop::collection::vec(line, 0..24), Just(ours))
    });
    fuzz(
        "proc_locks_texts_keep_the_locks_of_one_file",
        1000,
        case,
        |(entries, file)| {
            let key = key_for(file, 0);
            let text: String = entries.iter().map(|e| kernel_line(e) + "\n").collect();
            let mut want: Vec<ProcLock> = Vec::new();
            for lock in entries.iter().filter_map(|e| expected_lock(e, key)) {
                if lock.mode == Mode::Exclusive && want.contains(&lock) {
                    continue;
                }
                want.push(lock);
            }
            prop_assert_eq!(holders::parse_all(&text, key), want, "{}", text);
            Ok(())
        },
    );
}

/// Words of /proc/locks lines, and near misses, in any order.
fn token() -> impl Strategy<Value = String> {
    let words = prop::sample::select(vec![
        "1:",
        "42:",
        "->",
        "POSIX",
        "OFDLCK",
        "FLOCK",
        "ACCESS",
        "LEASE",
        "DELEG",
        "UNKNOWN",
        "ADVISORY",
        "MANDATORY",
        "*NOINODE*",
        "ACTIVE",
        "READ",
        "WRITE",
        "UNLCK",
        "RW",
        "EOF",
        "<none>:0",
        "-1",
        "0",
        "+7",
        "-0",
        "fd:01:1234",
        "FD:1:1234",
        "fd:01",
        "fd::1234",
        ":::",
        "fd:01:1234:9",
        "fd:01:-1234",
        "+fd:+01:+1234",
        "fd:01:0x4d2",
        "lock:",
        "9223372036854775807",
        "9223372036854775808",
        "4611686018427387904",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999",
    ]);
    prop_oneof![
        6 => words.prop_map(str::to_string),
        2 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => "[ -~]{0,12}",
        1 => any::<String>(),
    ]
}

fn separator() -> impl Strategy<Value = String> {
    prop::sample::select(vec![" ", "  ", "\t", " \t ", "", "\u{a0}", "\r"]).prop_map(str::to_string)
}

/// Checks a lock the parser returned for `line`: its range is a non-empty one below
/// the reserved offsets, and it is what the line's columns say.
fn check_parsed(line: &str, lock: &ProcLock) -> Result<(), TestCaseError> {
    let r = lock.range;
    prop_assert!(
        r.start < r.end && r.end <= RESERVED,
        "{line:?} gave {lock:?}"
    );
    let words: Vec<&str> = line.split_whitespace().collect();
    let kind = match lock.backend {
        Backend::Flock => "FLOCK",
        Backend::Ofd => "OFDLCK",
        Backend::Posix => "POSIX",
        Backend::Dotlock | Backend::Etcd => "none",
    };
    let ty = match lock.mode {
        Mode::Shared => "READ",
        Mode::Exclusive => "WRITE",
    };
    prop_assert!(
        words.len() >= 8
            && words[1] == kind
            && words[3] == ty
            && words[4].parse() == Ok(lock.pid)
            && words[6].parse() == Ok(r.start),
        "{line:?} misread as {lock:?}"
    );
    Ok(())
}

/// Arbitrary text, and lines of shuffled /proc/locks words, never make the parsers
/// panic; whatever they accept is a well-formed lock that the line's columns state.
#[test]
fn proc_locks_parser_takes_any_text() {
    let soup = prop::collection::vec((token(), separator()), 0..12).prop_map(|words| {
        words
            .into_iter()
            .map(|(w, sep)| format!("{w}{sep} "))
            .collect::<String>()
    });
    let text = prop_oneof![
        3 => soup,
        1 => prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => any::<String>(),
    ];
    let key = InodeKey {
        dev: libc::makedev(0xfd, 1),
        ino: 1234,
    };
    fuzz("proc_locks_parser_takes_any_text", 4000, text, |line| {
        if let Some(lock) = holders::parse(&line, key) {
            check_parsed(&line, &lock)?;
        }
        let all = holders::parse_all(&format!("{line}\n{line}"), key);
        prop_assert!(all.len() <= 2);
        Ok(())
    });
}

// The kernel's own lines: locks taken on a file, read back through /proc.

#[derive(Clone, Debug)]
struct KernelOp {
    /// 0 and 1: OFD locks through two open file descriptions; 2: POSIX locks of this
    /// process; 3: a flock on a third description.
    owner: usize,
    /// `None` unlocks.
    mode: Option<Mode>,
    start: u64,
    /// 0: to the end (`OFFSET_MAX`).
    len: u64,
}

fn kernel_op() -> impl Strategy<Value = KernelOp> {
    let max = i64::MAX as u64;
    let range = offset().prop_flat_map(move |start| {
        // Bytes from start to OFFSET_MAX, inclusive, as far as l_len (an off_t) goes.
        let room = (max - start + 1).min(max);
        (
            Just(start),
            prop_oneof![
                2 => Just(0u64),
                3 => 1..=room.min(64),
                1 => 1..=room,
                1 => Just(room),
            ],
        )
    });
    (
        0..4usize,
        prop::option::weighted(
            0.8,
            prop_oneof![2 => Just(Mode::Shared), 1 => Just(Mode::Exclusive)],
        ),
        range,
    )
        .prop_map(|(owner, mode, (start, len))| KernelOp {
            owner,
            mode,
            start,
            len,
        })
}

fn flock_struct(ty: i32, start: u64, len: u64) -> libc::flock {
    // SAFETY: a plain C struct; all zeroes is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    fl
}

fn conflicts(held: Mode, wanted: Mode) -> bool {
    held == Mode::Exclusive || wanted == Mode::Exclusive
}

/// Locks taken on a file with the kernel's own calls (OFD, POSIX, flock; ranges up
/// to the largest offset and beyond 2^62) are read back from the kernel's own
/// /proc/locks lines as the library reports them, and each is found in this process's
/// fdinfo `lock:` lines.
#[test]
fn the_kernels_lines_parse_back() {
    /// A directory removed when dropped, a failing test's too.
    struct TempDir(std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir =
        TempDir(std::env::temp_dir().join(format!("unilock-fuzz-proc-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let counter = std::sync::atomic::AtomicU32::new(0);
    let ops = prop::collection::vec(kernel_op(), 1..16);
    fuzz("the_kernels_lines_parse_back", 150, ops, |ops| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.0.join(format!("f{n}"));
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap()
        };
        let files = [open(), open(), open(), open()];
        let meta = files[0].metadata().unwrap();
        let key = InodeKey {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        // The kernel's locks: fcntl owners 0, 1 (OFD) and 2 (POSIX), and the flock.
        let mut owners = [RangeMap::new(), RangeMap::new(), RangeMap::new()];
        let mut flock: Option<Mode> = None;
        for op in &ops {
            let fd = files[op.owner].as_raw_fd();
            if op.owner == 3 {
                let how = match op.mode {
                    None => libc::LOCK_UN,
                    Some(Mode::Shared) => libc::LOCK_SH,
                    Some(Mode::Exclusive) => libc::LOCK_EX,
                };
                // SAFETY: flock on a descriptor this test owns.
                let rc = unsafe { libc::flock(fd, how | libc::LOCK_NB) };
                prop_assert_eq!(rc, 0, "{:?}", op);
                flock = op.mode;
                continue;
            }
            let end = if op.len == 0 {
                i64::MAX as u64 + 1
            } else {
                op.start + op.len
            };
            let r = ByteRange {
                start: op.start,
                end,
            };
            let (ty, cmd) = match op.mode {
                None => (libc::F_UNLCK, libc::F_OFD_SETLK),
                Some(Mode::Shared) => (libc::F_RDLCK, libc::F_OFD_SETLK),
                Some(Mode::Exclusive) => (libc::F_WRLCK, libc::F_OFD_SETLK),
            };
            let cmd = if op.owner == 2 { libc::F_SETLK } else { cmd };
            let granted = match op.mode {
                None => true,
                Some(m) => (0..3)
                    .filter(|&o| o != op.owner)
                    .all(|o| owners[o].touching(r).all(|(_, held)| !conflicts(held, m))),
            };
            let fl = flock_struct(ty, op.start, op.len);
            // SAFETY: fcntl with a valid struct flock on a descriptor this test owns.
            let rc = unsafe { libc::fcntl(fd, cmd, &fl) };
            prop_assert_eq!(
                rc == 0,
                granted,
                "{:?}: {}",
                op,
                std::io::Error::last_os_error()
            );
            if rc == 0 {
                match op.mode {
                    None => owners[op.owner].clear(r),
                    Some(m) => owners[op.owner].set(r, m),
                }
            }
        }
        let me = crate::sys::getpid();
        let mut want: Vec<ProcLock> = Vec::new();
        for (o, map) in owners.iter().enumerate() {
            for (seg, mode) in map.iter().filter(|(seg, _)| seg.start < RESERVED) {
                want.push(ProcLock {
                    backend: if o == 2 { Backend::Posix } else { Backend::Ofd },
                    mode,
                    range: ByteRange {
                        start: seg.start,
                        end: seg.end.min(RESERVED),
                    },
                    pid: if o == 2 { me } else { -1 },
                });
            }
        }
        if let Some(mode) = flock {
            want.push(ProcLock {
                backend: Backend::Flock,
                mode,
                range: ByteRange::WHOLE,
                pid: me,
            });
        }
        let order = |l: &ProcLock| (l.backend as u32, l.range.start, l.range.end, l.mode, l.pid);
        want.sort_by_key(order);
        // /proc/locks comes a page per read: lines can be missed or repeated while
        // other processes' locks change, so a wrong answer counts when it persists.
        let mut got = Vec::new();
        for _ in 0..5 {
            got = holders::proc_locks(key).map_err(|e| TestCaseError::fail(e.to_string()))?;
            got.sort_by_key(order);
            if got == want {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        prop_assert_eq!(&got, &want, "after {:?}", ops);
        let mut resolver = holders::Resolver::new(key);
        for lock in &got {
            prop_assert_eq!(resolver.pid_of(lock), me, "{:?} not in our fdinfo", lock);
        }
        drop(files);
        let _ = std::fs::remove_file(&path);
        Ok(())
    });
}

// DOTLOCK lock files.

/// A lock file record as the DOTLOCK backend, liblockfile, lockfile-progs, procmail's
/// lockfile and UUCP-style tools write it.
#[derive(Clone, Debug)]
struct RecordText {
    pid: u32,
    /// Blanks (spaces, tabs, NULs) around the pid.
    before: String,
    after: String,
    start: Option<u64>,
    host: Option<String>,
    boot: Option<String>,
    released: bool,
    /// The order of the key lines (a permutation of 0..4).
    order: Vec<usize>,
    /// Spaces around the values.
    padded_values: bool,
    crlf: bool,
    /// A newline after the last line.
    final_newline: bool,
    blank_lines: bool,
}

impl RecordText {
    fn text(&self) -> String {
        let eol = if self.crlf { "\r\n" } else { "\n" };
        let pad = |v: &str| {
            if self.padded_values {
                format!(" {v}\t")
            } else {
                v.to_string()
            }
        };
        let mut lines = vec![format!("{}{}{}", self.before, self.pid, self.after)];
        let fields = [
            self.start.map(|s| format!("start={}", pad(&s.to_string()))),
            self.host.as_ref().map(|h| format!("host={}", pad(h))),
            self.boot.as_ref().map(|b| format!("boot={}", pad(b))),
            self.released.then(|| "released=1".to_string()),
        ];
        for &i in &self.order {
            if let Some(line) = &fields[i] {
                lines.push(line.clone());
                if self.blank_lines {
                    lines.push(String::new());
                }
            }
        }
        let mut text = lines.join(eol);
        if self.final_newline {
            text += eol;
        }
        text
    }
}

fn blanks() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec![' ', ' ', '\t', '\0']), 0..4)
        .prop_map(|c| c.into_iter().collect())
}

fn record_text() -> impl Strategy<Value = RecordText> {
    let value = "[a-zA-Z0-9._:-]{1,20}|[a-z\u{e9}\u{df}]{1,8}";
    (
        (
            prop_oneof![Just(0u32), 1..=4_194_304u32, 1..=i32::MAX as u32],
            blanks(),
            blanks(),
        ),
        (
            prop::option::of(any::<u64>()),
            prop::option::of(value),
            prop::option::of("[0-9a-f-]{8,36}"),
            any::<bool>(),
            Just(vec![0usize, 1, 2, 3]).prop_shuffle(),
        ),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (pid, before, after),
                (start, host, boot, released, order),
                (padded_values, crlf, final_newline, blank_lines),
            )| RecordText {
                pid,
                before,
                after,
                start,
                host,
                boot,
                released,
                order,
                padded_values,
                crlf,
                final_newline,
                blank_lines,
            },
        )
}

/// The fields of `dotlock::Record`, which are private to dotlock.rs: its `Debug` form
/// (field by field, in order) is compared with this one's.
#[derive(Debug)]
#[allow(dead_code)]
struct Record {
    pid: Option<i32>,
    start: Option<u64>,
    host: Option<String>,
    boot: Option<String>,
    released: bool,
}

/// Every record a lock tool writes is a lock file (never "not a lock file", so it can
/// be judged stale) and parses back to its fields: the pid whatever blanks or NULs pad
/// it, the other fields in any order, with CRLF line ends or blank lines.
#[test]
fn lock_records_round_trip() {
    fuzz(
        "lock_records_round_trip",
        3000,
        record_text(),
        |r: RecordText| {
            let text = r.text();
            if text.len() > MAX_LOCK_FILE {
                prop_assert!(dotlock::not_a_lock_record(text.as_bytes()).is_some());
                return Ok(());
            }
            prop_assert_eq!(
                dotlock::not_a_lock_record(text.as_bytes()),
                None,
                "{:?}",
                text
            );
            let want = Record {
                pid: i32::try_from(r.pid).ok().filter(|&p| p > 0),
                start: r.start,
                host: r.host.clone(),
                boot: r.boot.clone(),
                released: r.released,
            };
            prop_assert_eq!(
                format!("{:?}", dotlock::parse_record(&text)),
                format!("{want:?}"),
                "{:?}",
                text
            );
            Ok(())
        },
    );
}

/// The first line of what is at a lock file's name: pids, padded or not, and near
/// misses (signs, letters, long numbers, blanks of every kind).
fn first_line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (blanks(), any::<u32>(), blanks()).prop_map(|(a, p, b)| format!("{a}{p}{b}")),
        2 => "[0-9 \t\r\0+x-]{0,14}",
        1 => "[0-9]{9,12}",
        1 => any::<String>(),
    ]
}

fn later_line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "(start|host|boot|released|pid)=[0-9a-z .]{0,10}",
        1 => "[ \t\0]*[a-z_0-9]{0,33}[ \t]*=[^\n]{0,10}",
        1 => "[^\n]{0,20}",
    ]
}

/// What the first line of an accepted lock file says the pid is: the digits between
/// the blanks, if they make a positive pid.
fn pid_of_first_line(text: &str) -> Option<i32> {
    let first = text.split('\n').next().unwrap_or_default();
    first
        .trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0')
        .parse::<i32>()
        .ok()
        .filter(|&p| p > 0)
}

/// Whatever is at a lock file's name, judging it and parsing it never panics; a file
/// judged a lock file is at most MAX_LOCK_FILE bytes of text, and the record's pid is
/// the one its first line shows (the owner whose death makes it stale).
#[test]
fn lock_file_contents_are_judged_consistently() {
    let text = prop_oneof![
        3 => (first_line(), prop::collection::vec(later_line(), 0..5), prop::bool::ANY)
            .prop_map(|(first, rest, crlf)| {
                let eol = if crlf { "\r\n" } else { "\n" };
                std::iter::once(first).chain(rest).collect::<Vec<_>>().join(eol).into_bytes()
            }),
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => prop::collection::vec(prop::sample::select(vec![b'1', b'\n', b'\0', b' ', b'=', b'a']), 250..262),
    ];
    fuzz(
        "lock_file_contents_are_judged_consistently",
        4000,
        text,
        |bytes: Vec<u8>| {
            let verdict = dotlock::not_a_lock_record(&bytes);
            let lossy = String::from_utf8_lossy(&bytes);
            let record = format!("{:?}", dotlock::parse_record(&lossy));
            if verdict.is_none() {
                prop_assert!(bytes.len() <= MAX_LOCK_FILE);
                let text = std::str::from_utf8(&bytes);
                prop_assert!(text.is_ok(), "{:?} accepted as a lock file", bytes);
                let pid = pid_of_first_line(text.unwrap());
                prop_assert!(
                    record.starts_with(&format!("Record {{ pid: {pid:?},")),
                    "{:?}: the first line shows pid {:?}, the record says {}",
                    lossy,
                    pid,
                    record
                );
            }
            Ok(())
        },
    );
}

// Temporary file names.

/// The owner a temporary file name states (dotlock's `TempOwner`, whose fields are
/// private: compared through `Debug`).
#[derive(Debug)]
#[allow(dead_code)]
struct TempOwner<'a> {
    host: &'a str,
    boot: &'a str,
    pid: i32,
    start: Option<u64>,
}

#[derive(Clone, Debug)]
struct TempName {
    host: String,
    boot: String,
    pid: String,
    start: String,
    n: String,
    lock_name: String,
}

impl TempName {
    fn text(&self) -> String {
        format!(
            ".ulk~{}~{}~{}~{}~{}~{}.tmp",
            self.host, self.boot, self.pid, self.start, self.n, self.lock_name
        )
    }
}

fn temp_name() -> impl Strategy<Value = TempName> {
    (
        prop_oneof![Just(String::new()), "[A-Za-z0-9._-]{1,64}", "#[0-9a-f]{16}",],
        prop_oneof![Just(String::new()), "[0-9a-f]{8}"],
        (1..=i32::MAX).prop_map(|p| p.to_string()),
        prop_oneof![
            Just(String::new()),
            any::<u64>().prop_map(|s| s.to_string())
        ],
        any::<u64>().prop_map(|n| format!("{n:x}")),
        "[^/\0]{0,40}",
    )
        .prop_map(|(host, boot, pid, start, n, lock_name)| TempName {
            host,
            boot,
            pid,
            start,
            n,
            lock_name,
        })
}

/// Every temporary file name of the pattern (any lock name, `~` in it too) says whose
/// it is; a name whose fields are malformed, or that lacks the suffix, says nothing.
#[test]
fn temporary_file_names_round_trip() {
    let broken = prop_oneof![
        Just(("pid", "0")),
        Just(("pid", "-5")),
        Just(("pid", "2147483648")),
        Just(("pid", "")),
        Just(("pid", "1a")),
        Just(("boot", "0123456")),
        Just(("boot", "0123456g")),
        Just(("start", "18446744073709551616")),
        Just(("start", "1 ")),
        Just(("n", "")),
        Just(("n", "xyz")),
    ];
    let case = (temp_name(), prop::option::weighted(0.3, broken));
    fuzz(
        "temporary_file_names_round_trip",
        3000,
        case,
        |(mut name, broken): (TempName, Option<(&str, &str)>)| {
            let Some((field, value)) = broken else {
                let text = name.text();
                let want = TempOwner {
                    host: &name.host,
                    boot: &name.boot,
                    pid: name.pid.parse().unwrap(),
                    start: name.start.parse().ok(),
                };
                prop_assert_eq!(
                    format!("{:?}", dotlock::parse_temp_name(text.as_bytes())),
                    format!("Some({want:?})"),
                    "{:?}",
                    text
                );
                prop_assert_eq!(
                    dotlock::parse_temp_name(text.trim_end_matches(".tmp").as_bytes()),
                    None
                );
                return Ok(());
            };
            match field {
                "pid" => name.pid = value.into(),
                "boot" => name.boot = value.into(),
                "start" => name.start = value.into(),
                _ => name.n = value.into(),
            }
            let text = name.text();
            prop_assert_eq!(
                dotlock::parse_temp_name(text.as_bytes()),
                None,
                "{:?}",
                text
            );
            Ok(())
        },
    );
}

/// No name, of the pattern's shape or not, makes the temporary file name parser panic.
#[test]
fn temporary_file_names_any_bytes() {
    fuzz(
        "temporary_file_names_any_bytes",
        3000,
        prop::collection::vec(any::<u8>(), 0..80),
        |mut bytes: Vec<u8>| {
            let _ = dotlock::parse_temp_name(&bytes);
            let mut name = b".ulk~".to_vec();
            name.append(&mut bytes);
            name.extend_from_slice(b".tmp");
            let _ = dotlock::parse_temp_name(&name);
            Ok(())
        },
    );
}
