//! Seeded random tests at the boundaries users cross: sequences of C API calls, valid
//! and invalid, checked against a reference model and against the kernel; and the
//! `unilock` command run with random command lines.
//!
//! Each test runs a fixed number of cases from a fixed seed, so that `cargo test` is
//! repeatable and quick. `UNILOCK_FUZZ_SEED=N` draws from seed N instead, and
//! `UNILOCK_FUZZ_SECONDS=S` goes on with new seeds until S seconds have passed (`make
//! fuzz`). A failure names the seed that reproduces it.

mod common;

use std::ffi::{CStr, CString, OsStr, OsString, c_char};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::ptr::{null, null_mut};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::unilock::Mode;
use ::unilock::capi::*;
use common::{Peer, TempDir};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

#[test]
fn peer_main() {
    if std::env::var_os(common::PEER_ENV).is_some() {
        common::peer_loop();
    }
}

// Seeds.

#[path = "common/seeds.rs"]
mod seeds;

/// The seed being run, for the watchdog's message.
static SEED: AtomicU64 = AtomicU64::new(0);

/// [`seeds::fuzz`], keeping the seed being run in [`SEED`].
fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl FnMut(S::Value) -> Result<(), TestCaseError>,
) {
    seeds::fuzz(
        name,
        cases,
        strategy,
        |seed| SEED.store(seed, Ordering::Relaxed),
        test,
    );
}

/// What a call that may block is doing, and since when; a call that has not returned
/// after [`STUCK`] ends the process with the seed and the call (a hung test would
/// otherwise say nothing).
static IN_CALL: Mutex<Option<(Instant, String)>> = Mutex::new(None);
const STUCK: Duration = Duration::from_secs(30);

fn watched<T>(what: impl FnOnce() -> String, call: impl FnOnce() -> T) -> T {
    static WATCHDOG: std::sync::Once = std::sync::Once::new();
    WATCHDOG.call_once(|| {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let stuck = IN_CALL
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .filter(|(since, _)| since.elapsed() > STUCK)
                    .map(|(_, what)| what.clone());
                if let Some(what) = stuck {
                    eprintln!(
                        "{what} has not returned after {STUCK:?} (UNILOCK_FUZZ_SEED={})",
                        SEED.load(Ordering::Relaxed)
                    );
                    std::process::abort();
                }
            }
        });
    });
    *IN_CALL.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), what()));
    let result = call();
    *IN_CALL.lock().unwrap_or_else(|p| p.into_inner()) = None;
    result
}

// The model of the C API.

/// Byte ranges start in [0, SPAN); a finite range ends at SPAN at most.
const SPAN: u64 = 16;
/// Cells of the model: bytes 0..=SPAN (byte SPAN is covered only by locks "to the
/// end"), then one cell for everything beyond, up to the reserved offsets.
const CELLS: usize = SPAN as usize + 2;
const TO_END: usize = CELLS - 1;
const HANDLES: usize = 3;
const RESERVED: u64 = 1 << 62;

type Cells = [Option<Mode>; CELLS];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Flock,
    Ofd,
    Posix,
}

impl Kind {
    fn bits(self) -> u32 {
        match self {
            Kind::Flock => UNILOCK_BACKEND_FLOCK,
            Kind::Ofd => UNILOCK_BACKEND_OFD,
            Kind::Posix => UNILOCK_BACKEND_POSIX,
        }
    }

    /// OFD and POSIX locks conflict with each other; flock locks only with flock locks.
    fn fcntl(self) -> bool {
        self != Kind::Flock
    }
}

/// How a handle is opened.
#[derive(Clone, Copy, Debug)]
enum How {
    /// `unilock_open` with an options struct of this size (the bytes past the fields
    /// this version knows are zero).
    Path { size: u32 },
    /// `unilock_open` with NULL options: a FLOCK handle.
    NullOptions,
    /// `unilock_open_fd` on a new open file description, read-write or read-only.
    Fd { writable: bool },
}

/// A call on an invalid pointer.
#[derive(Clone, Copy, Debug)]
enum Call {
    Lock,
    Unlock,
    Query,
    List,
    Cancel,
    Touch,
    Fd,
    Close,
}

/// An open that must fail, and how.
#[derive(Clone, Debug)]
enum BadOpen {
    /// `size` smaller than the first version's struct (EINVAL) or above a page (E2BIG).
    Size(u32),
    /// A non-zero byte at `at` past the known fields of a larger struct (E2BIG).
    Tail {
        size: u32,
        at: u32,
    },
    /// Backend and flag bits that are unknown (EINVAL) or refused together (EINVAL,
    /// EOPNOTSUPP).
    Bits {
        backends: u32,
        flags: u32,
    },
    /// A creation mode beyond the permission bits (EINVAL).
    CreateMode(u32),
    NullPath,
    NullOut,
    /// A missing file without UNILOCK_CREATE (ENOENT).
    Missing,
    /// `unilock_open_fd` on a descriptor that is not open (EBADF).
    BadFd(i32),
    /// `unilock_open_fd` for DOTLOCK, which needs a path (EINVAL).
    FdDotlock,
}

#[derive(Clone, Debug)]
enum Op {
    /// Opens a handle in the slot (closing the one there first).
    Open {
        h: usize,
        kind: Kind,
        how: How,
    },
    Lock {
        h: usize,
        mode: u32,
        start: u64,
        len: u64,
        timeout_ms: i64,
    },
    Unlock {
        h: usize,
        start: u64,
        len: u64,
    },
    Query {
        h: usize,
        mode: u32,
        start: u64,
        len: u64,
        who: bool,
    },
    List {
        h: usize,
        cap: usize,
        null_buf: bool,
    },
    Cancel {
        h: usize,
    },
    Touch {
        h: usize,
    },
    Fd {
        h: usize,
    },
    /// `unilock_close`: on a closed slot a second close of its stale pointer.
    Close {
        h: usize,
    },
    /// A call through a pointer no open returned: a live handle's plus one byte, or
    /// memory of the caller's.
    Foreign {
        call: Call,
        misaligned: bool,
    },
    BadOpen(BadOpen),
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Flock), Just(Kind::Ofd), Just(Kind::Posix)]
}

fn how() -> impl Strategy<Value = How> {
    let known = std::mem::size_of::<unilock_options>() as u32;
    prop_oneof![
        3 => Just(How::Path { size: known }),
        1 => (known + 1..=4096u32).prop_map(|size| How::Path { size }),
        1 => Just(How::NullOptions),
        2 => any::<bool>().prop_map(|writable| How::Fd { writable }),
    ]
}

fn raw_mode() -> impl Strategy<Value = u32> {
    prop_oneof![
        8 => Just(UNILOCK_SHARED),
        8 => Just(UNILOCK_EXCLUSIVE),
        1 => prop::sample::select(vec![0u32, 3, 4, u32::MAX]),
    ]
}

/// `(start, len)`: ranges inside the model (mostly short), to the end of the file (as
/// `len` 0 or as the length that reaches 2^62), the whole file, and ranges the library
/// must refuse (into the reserved offsets, or past the largest offset).
fn range() -> impl Strategy<Value = (u64, u64)> {
    let invalid = prop_oneof![
        (RESERVED..=u64::MAX, any::<u64>()),
        (
            prop::sample::select(vec![RESERVED, RESERVED + 1, i64::MAX as u64, u64::MAX]),
            prop::sample::select(vec![0u64, 1, u64::MAX]),
        ),
        (0..=SPAN).prop_map(|s| (s, RESERVED - s + 1)),
        (0..=SPAN).prop_map(|s| (s, u64::MAX)),
        (1..=SPAN).prop_map(|s| (s, u64::MAX - s + 1)),
    ];
    prop_oneof![
        5 => (0..SPAN).prop_flat_map(|s| (Just(s), 1..=(SPAN - s).min(6))),
        2 => (0..SPAN).prop_flat_map(|s| (Just(s), 1..=SPAN - s)),
        2 => (0..=SPAN).prop_map(|s| (s, 0)),
        1 => (0..=SPAN).prop_map(|s| (s, RESERVED - s)),
        3 => Just((0u64, 0u64)),
        1 => invalid,
    ]
}

fn timeout_ms() -> impl Strategy<Value = i64> {
    prop_oneof![
        12 => Just(0i64),
        2 => 1..=3i64,
        1 => Just(-1i64),
        1 => Just(i64::MIN),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    prop::sample::select(vec![
        Call::Lock,
        Call::Unlock,
        Call::Query,
        Call::List,
        Call::Cancel,
        Call::Touch,
        Call::Fd,
        Call::Close,
    ])
}

fn bad_open() -> impl Strategy<Value = BadOpen> {
    let known = std::mem::size_of::<unilock_options>() as u32;
    prop_oneof![
        // Smaller than the first version of the struct (20 bytes).
        (0..20u32).prop_map(BadOpen::Size),
        prop::sample::select(vec![4097u32, 8192]).prop_map(BadOpen::Size),
        (known + 1..=4096u32)
            .prop_flat_map(move |size| (Just(size), known..size))
            .prop_map(|(size, at)| BadOpen::Tail { size, at }),
        prop::sample::select(vec![
            (6u32, 0u32),
            (7, 0),
            (32, 0),
            (1 << 31, 0),
            (u32::MAX, 0),
            (1, 32),
            (2, 1 << 31),
            (8, UNILOCK_FAIR),
            (8, UNILOCK_UNLINK),
            (1 | 2, UNILOCK_UNLINK),
            (1 | 8, UNILOCK_FAIR),
        ])
        .prop_map(|(backends, flags)| BadOpen::Bits { backends, flags }),
        prop::sample::select(vec![0o1000u32, 0o2600, 0o4600, 0o7777, 0o10000, u32::MAX])
            .prop_map(BadOpen::CreateMode),
        Just(BadOpen::NullPath),
        Just(BadOpen::NullOut),
        Just(BadOpen::Missing),
        prop::sample::select(vec![-1i32, i32::MIN, 1_000_000]).prop_map(BadOpen::BadFd),
        Just(BadOpen::FdDotlock),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let h = 0..HANDLES;
    prop_oneof![
        3 => (h.clone(), kind(), how()).prop_map(|(h, kind, how)| Op::Open { h, kind, how }),
        10 => (h.clone(), raw_mode(), range(), timeout_ms()).prop_map(
            |(h, mode, (start, len), timeout_ms)| Op::Lock { h, mode, start, len, timeout_ms }
        ),
        3 => (h.clone(), range()).prop_map(|(h, (start, len))| Op::Unlock { h, start, len }),
        3 => (h.clone(), raw_mode(), range(), any::<bool>()).prop_map(
            |(h, mode, (start, len), who)| Op::Query { h, mode, start, len, who }
        ),
        1 => (h.clone(), prop::sample::select(vec![0usize, 1, 2, 3, 64]), any::<bool>())
            .prop_map(|(h, cap, null_buf)| Op::List { h, cap, null_buf }),
        1 => h.clone().prop_map(|h| Op::Cancel { h }),
        1 => h.clone().prop_map(|h| Op::Touch { h }),
        1 => h.clone().prop_map(|h| Op::Fd { h }),
        1 => h.prop_map(|h| Op::Close { h }),
        1 => (call(), any::<bool>()).prop_map(|(call, misaligned)| Op::Foreign { call, misaligned }),
        1 => bad_open().prop_map(Op::BadOpen),
    ]
}

/// Runs `check` of a call whose answer comes from /proc/locks (a list; a FLOCK query),
/// again a few times when `retry` and it fails: the kernel renders /proc/locks a page
/// per read, so lines can be missed or repeated when other processes' locks change
/// meanwhile. A wrong answer that comes every time fails.
fn proc_read(
    retry: bool,
    mut check: impl FnMut() -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let mut tries = 1;
    loop {
        match check() {
            Err(_) if retry && tries < 5 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

fn conflicts(held: Option<Mode>, wanted: Mode) -> bool {
    matches!(
        (held, wanted),
        (Some(Mode::Exclusive), _) | (Some(_), Mode::Exclusive)
    )
}

/// The model's cells of an API range, or `None` when the library must refuse it.
fn cells_of(start: u64, len: u64) -> Option<std::ops::Range<usize>> {
    if start >= RESERVED {
        return None;
    }
    let end = if len == 0 {
        RESERVED
    } else {
        start.checked_add(len)?
    };
    match end {
        RESERVED => Some(start as usize..CELLS),
        e if e > RESERVED => None,
        e => {
            assert!(e <= SPAN, "a range outside the model: {start} {len}");
            Some(start as usize..e as usize)
        }
    }
}

/// `(0, 0)`, or the same bytes said another way: what FLOCK accepts.
fn whole(start: u64, len: u64) -> bool {
    start == 0 && (len == 0 || len == RESERVED)
}

/// Maximal runs of one mode: `(mode, first cell, end cell)`.
fn runs(cells: &Cells) -> Vec<(Mode, usize, usize)> {
    let mut out: Vec<(Mode, usize, usize)> = Vec::new();
    for (c, cell) in cells.iter().enumerate() {
        let Some(m) = *cell else { continue };
        match out.last_mut() {
            Some(last) if last.0 == m && last.2 == c => last.2 = c + 1,
            _ => out.push((m, c, c + 1)),
        }
    }
    out
}

/// The API `(start, len)` of the cells `[a, b)`.
fn api_range(a: usize, b: usize) -> (u64, u64) {
    if b == CELLS {
        (a as u64, 0)
    } else {
        (a as u64, (b - a) as u64)
    }
}

fn strongest(cells: impl Iterator<Item = Option<Mode>>) -> Option<Mode> {
    cells.max().flatten()
}

fn mode_bits(m: Mode) -> u32 {
    match m {
        Mode::Shared => UNILOCK_SHARED,
        Mode::Exclusive => UNILOCK_EXCLUSIVE,
    }
}

fn text(p: *const c_char) -> String {
    if p.is_null() {
        return "<NULL>".into();
    }
    // SAFETY: the library returns NUL-terminated strings; copied at once.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn command_of(h: &unilock_holder) -> String {
    let bytes: Vec<u8> = h
        .command
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A holder struct no call wrote: every field out of range.
fn sentinel() -> unilock_holder {
    unilock_holder {
        backend: 0xdead,
        mode: 0xdead,
        start: u64::MAX,
        len: u64::MAX,
        pid: i32::MIN,
        is_self: -7,
        command: [0x55; 16],
    }
}

fn same_holder(a: &unilock_holder, b: &unilock_holder) -> bool {
    (
        a.backend, a.mode, a.start, a.len, a.pid, a.is_self, a.command,
    ) == (
        b.backend, b.mode, b.start, b.len, b.pid, b.is_self, b.command,
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Live,
    /// A handle pointer after its close.
    Stale,
    Null,
}

struct Slot {
    kind: Kind,
    /// The open handle, or NULL.
    ptr: *mut unilock,
    /// The pointer of the handle's last close, or NULL.
    stale: *mut unilock,
    /// Whether the handle's descriptor is writable (`unilock_open_fd` of a read-only
    /// one is not).
    writable: bool,
    cells: Cells,
}

/// One case: the file, the handles and the model, the descriptors the kernel is asked
/// through, and the peer.
struct Case<'a> {
    path: PathBuf,
    cpath: CString,
    dev: u64,
    ino: u64,
    slots: Vec<Slot>,
    /// Descriptors handles were made from (`unilock_open_fd`), kept open until the end:
    /// closing one would drop this process's POSIX locks on the file.
    raw: Vec<OwnedFd>,
    /// A read-write descriptor of the file for `F_OFD_GETLK`, and one for flock probes.
    probe: std::fs::File,
    flock_probe: std::fs::File,
    peer: &'a mut Peer,
    me: i32,
    comm: String,
    step: usize,
}

fn options(kind: u32, flags: u32) -> unilock_options {
    let mut o = unilock_options::default();
    // SAFETY: options structs are live locals.
    unsafe { unilock_options_init(&mut o) };
    o.backends = kind;
    o.flags = flags;
    o
}

/// An options struct of `size` bytes (a later version's, or a short one) in a buffer
/// of 8 KiB, with the fields of `o` and `poke` written past them.
fn sized_options(o: unilock_options, size: u32, poke: Option<u32>) -> Vec<u64> {
    let mut buf = vec![0u64; 1024];
    // SAFETY: the buffer has room for the struct and is aligned for it.
    unsafe { std::ptr::write(buf.as_mut_ptr().cast::<unilock_options>(), o) };
    let bytes = buf.as_mut_ptr().cast::<u8>();
    // SAFETY: `size` is the struct's first field; `at` is inside the buffer.
    unsafe {
        std::ptr::write(bytes.cast::<u32>(), size);
        if let Some(at) = poke {
            *bytes.add(at as usize) = 0x5a;
        }
    }
    buf
}

impl Case<'_> {
    fn target(&self, h: usize) -> (*mut unilock, Target) {
        let s = &self.slots[h];
        if !s.ptr.is_null() {
            (s.ptr, Target::Live)
        } else if !s.stale.is_null() {
            (s.stale, Target::Stale)
        } else {
            (null_mut(), Target::Null)
        }
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.ptr.is_null())
    }

    /// Whether a handle other than `h`, of the family of `kind`, holds a mode on `cells`
    /// that conflicts with `wanted`.
    fn conflict(&self, h: usize, kind: Kind, cells: std::ops::Range<usize>, wanted: Mode) -> bool {
        self.live().any(|(g, s)| {
            g != h
                && s.kind.fcntl() == kind.fcntl()
                && cells.clone().any(|c| conflicts(s.cells[c], wanted))
        })
    }

    /// The model's cells of a range on handle `h`: FLOCK holds whole files.
    fn cells_for(&self, h: usize, start: u64, len: u64) -> std::ops::Range<usize> {
        if self.slots[h].kind == Kind::Flock {
            0..CELLS
        } else {
            cells_of(start, len).expect("validated")
        }
    }

    /// Checks a return code against the model's, with the library's message.
    fn expect(&self, what: &str, rc: i32, want: i32) -> Result<(), TestCaseError> {
        let detail = if rc < 0 {
            text(unilock_last_error())
        } else {
            String::new()
        };
        prop_assert_eq!(
            rc,
            want,
            "step {}: {}: last error {:?}",
            self.step,
            what,
            detail
        );
        if rc < 0 {
            let name = text(unilock_strerror(rc));
            prop_assert!(!name.is_empty() && name != "<NULL>", "strerror({rc})");
            prop_assert!(
                !detail.is_empty(),
                "step {}: {what}: no last error",
                self.step
            );
        }
        Ok(())
    }

    /// The error of a lock (`mode` given), unlock or query call's arguments on the
    /// slot's handle, if they are invalid: an unknown mode or a range reaching the
    /// reserved offsets (EINVAL), a byte range on a FLOCK handle (EOPNOTSUPP).
    fn argument_error(&self, h: usize, mode: Option<u32>, start: u64, len: u64) -> Option<i32> {
        if mode.is_some_and(|m| Mode::from_raw(m).is_none()) || cells_of(start, len).is_none() {
            Some(-libc::EINVAL)
        } else if self.slots[h].kind == Kind::Flock && !whole(start, len) {
            Some(-libc::EOPNOTSUPP)
        } else {
            None
        }
    }

    /// The error a call on the slot's pointer gives before looking at its arguments.
    fn refused(t: Target) -> Option<i32> {
        match t {
            Target::Live => None,
            Target::Stale => Some(-libc::EBADF),
            Target::Null => Some(-libc::EINVAL),
        }
    }

    fn open(&mut self, h: usize, kind: Kind, how: How) -> Result<(), TestCaseError> {
        let how = match how {
            How::NullOptions if kind != Kind::Flock => How::Path {
                size: std::mem::size_of::<unilock_options>() as u32,
            },
            how => how,
        };
        let o = options(kind.bits(), UNILOCK_CREATE);
        let mut out: *mut unilock = std::ptr::NonNull::dangling().as_ptr();
        let mut writable = true;
        let rc = match how {
            How::Path { size } => {
                let buf = sized_options(o, size, None);
                // SAFETY: paths are NUL-terminated, options are whole structs, out pointers
                // are live locals.
                unsafe { unilock_open(self.cpath.as_ptr(), buf.as_ptr().cast(), &mut out) }
            }
            // SAFETY: paths are NUL-terminated, options are whole structs, out pointers are
            // live locals.
            How::NullOptions => unsafe { unilock_open(self.cpath.as_ptr(), null(), &mut out) },
            How::Fd { writable: w } => {
                writable = w;
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(w)
                    .open(&self.path)
                    .unwrap();
                let fd = OwnedFd::from(file);
                // SAFETY: paths are NUL-terminated, options are whole structs, out pointers
                // are live locals.
                let rc = unsafe { unilock_open_fd(fd.as_raw_fd(), &o, &mut out) };
                self.raw.push(fd);
                rc
            }
        };
        self.expect(&format!("open {h} {kind:?} {how:?}"), rc, 0)?;
        prop_assert!(!out.is_null(), "open returned 0 and no handle");
        let s = &mut self.slots[h];
        s.kind = kind;
        s.ptr = out;
        s.writable = writable;
        s.cells = [None; CELLS];
        Ok(())
    }

    fn close(&mut self, h: usize) -> Result<(), TestCaseError> {
        let (ptr, t) = self.target(h);
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        let rc = unsafe { unilock_close(ptr) };
        let want = match t {
            Target::Live => 0,
            Target::Stale => -libc::EBADF,
            Target::Null => 0,
        };
        self.expect(&format!("close {h} ({t:?})"), rc, want)?;
        if t == Target::Live {
            let s = &mut self.slots[h];
            s.stale = s.ptr;
            s.ptr = null_mut();
            s.cells = [None; CELLS];
        }
        Ok(())
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let what = format!("{op:?}");
        match *op {
            Op::Open { h, kind, how } => {
                if !self.slots[h].ptr.is_null() {
                    self.close(h)?;
                }
                self.open(h, kind, how)?;
            }
            Op::Close { h } => self.close(h)?,
            Op::Lock {
                h,
                mode,
                start,
                len,
                timeout_ms,
            } => {
                let (ptr, t) = self.target(h);
                let rc = watched(
                    || format!("step {}: {what}", self.step),
                    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign,
                    // which the library checks before reading).
                    || unsafe { unilock_lock(ptr, mode, start, len, timeout_ms) },
                );
                let arguments = self.argument_error(h, Some(mode), start, len);
                let want = match (Self::refused(t), arguments) {
                    (Some(e), _) => e,
                    (None, Some(e)) => e,
                    (None, None) => {
                        let s = &self.slots[h];
                        let m = Mode::from_raw(mode).unwrap();
                        let cells = self.cells_for(h, start, len);
                        if m == Mode::Exclusive && s.kind.fcntl() && !s.writable {
                            -libc::EACCES
                        } else if self.conflict(h, s.kind, cells.clone(), m) {
                            // Every other handle is this thread's: a wait could never
                            // end.
                            if timeout_ms == 0 {
                                -libc::EAGAIN
                            } else {
                                -libc::EDEADLK
                            }
                        } else {
                            for c in cells {
                                self.slots[h].cells[c] = Some(m);
                            }
                            0
                        }
                    }
                };
                self.expect(&what, rc, want)?;
            }
            Op::Unlock { h, start, len } => {
                let (ptr, t) = self.target(h);
                // SAFETY: handles come from unilock_open (or are NULL, closed or foreign,
                // which the library checks before reading).
                let rc = unsafe { unilock_unlock(ptr, start, len) };
                let arguments = self.argument_error(h, None, start, len);
                let want = match (Self::refused(t), arguments) {
                    (Some(e), _) => e,
                    (None, Some(e)) => e,
                    (None, None) => {
                        for c in self.cells_for(h, start, len) {
                            self.slots[h].cells[c] = None;
                        }
                        0
                    }
                };
                self.expect(&what, rc, want)?;
            }
            Op::Query {
                h,
                mode,
                start,
                len,
                who,
            } => {
                let (ptr, t) = self.target(h);
                let want = match (
                    Self::refused(t),
                    self.argument_error(h, Some(mode), start, len),
                ) {
                    (Some(e), _) | (None, Some(e)) => e,
                    (None, None) => {
                        let m = Mode::from_raw(mode).unwrap();
                        let cells = self.cells_for(h, start, len);
                        i32::from(self.conflict(h, self.slots[h].kind, cells, m))
                    }
                };
                proc_read(want >= 0, || {
                    let mut holder = sentinel();
                    let out = if who {
                        &mut holder as *mut _
                    } else {
                        null_mut()
                    };
                    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign,
                    // which the library checks before reading); holders are live locals.
                    let rc = unsafe { unilock_query(ptr, mode, start, len, out) };
                    self.expect(&what, rc, want)?;
                    if rc == 1 && who {
                        let m = Mode::from_raw(mode).unwrap();
                        let cells = self.cells_for(h, start, len);
                        self.check_who(h, m, cells, &holder)?;
                    }
                    Ok(())
                })?;
            }
            Op::List { h, cap, null_buf } => {
                let (ptr, t) = self.target(h);
                let want = Self::refused(t).unwrap_or(0);
                proc_read(want == 0, || {
                    let mut buf = vec![sentinel(); cap + 2];
                    let bufp = if null_buf && cap == 0 {
                        null_mut()
                    } else {
                        buf.as_mut_ptr()
                    };
                    let mut count = usize::MAX;
                    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign,
                    // which the library checks before reading); buffers have room for `cap`
                    // holders and counts are live locals.
                    let rc = unsafe { unilock_list(ptr, bufp, cap, &mut count) };
                    self.expect(&what, rc, want)?;
                    if rc == 0 {
                        self.check_list(&buf, cap, count)?;
                    }
                    Ok(())
                })?;
            }
            Op::Cancel { h } => {
                let (ptr, t) = self.target(h);
                // SAFETY: handles come from unilock_open (or are NULL, closed or foreign,
                // which the library checks before reading).
                let rc = unsafe { unilock_cancel(ptr) };
                self.expect(&what, rc, Self::refused(t).unwrap_or(0))?;
            }
            Op::Touch { h } => {
                let (ptr, t) = self.target(h);
                // SAFETY: handles come from unilock_open (or are NULL, closed or foreign,
                // which the library checks before reading).
                let rc = unsafe { unilock_touch(ptr) };
                self.expect(&what, rc, Self::refused(t).unwrap_or(0))?;
            }
            Op::Fd { h } => {
                let (ptr, t) = self.target(h);
                // SAFETY: handles come from unilock_open (or are NULL, closed or foreign,
                // which the library checks before reading).
                let rc = unsafe { unilock_fd(ptr) };
                match Self::refused(t) {
                    Some(e) => self.expect(&what, rc, e)?,
                    None => {
                        prop_assert!(rc >= 0, "step {}: {what}: {rc}", self.step);
                        // SAFETY: fstat into a local struct.
                        let mut st: libc::stat = unsafe { std::mem::zeroed() };
                        prop_assert_eq!(unsafe { libc::fstat(rc, &mut st) }, 0);
                        prop_assert_eq!((st.st_dev, st.st_ino), (self.dev, self.ino));
                    }
                }
            }
            Op::Foreign { call, misaligned } => {
                let mut memory = Box::new([0u64; 64]);
                let live = self.live().next().map(|(_, s)| s.ptr);
                let ptr: *mut unilock = match live {
                    Some(p) if misaligned => p.cast::<u8>().wrapping_add(1).cast(),
                    _ => memory.as_mut_ptr().cast(),
                };
                let mut count = 0usize;
                let mut holder = sentinel();
                let rc = match call {
                    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign,
                    // which the library checks before reading); holders are live locals;
                    // buffers have room for `cap` holders and counts are live locals.
                    Call::Lock => unsafe { unilock_lock(ptr, UNILOCK_EXCLUSIVE, 0, 0, 0) },
                    Call::Unlock => unsafe { unilock_unlock(ptr, 0, 0) },
                    Call::Query => unsafe {
                        unilock_query(ptr, UNILOCK_EXCLUSIVE, 0, 0, &mut holder)
                    },
                    Call::List => unsafe { unilock_list(ptr, null_mut(), 0, &mut count) },
                    Call::Cancel => unsafe { unilock_cancel(ptr) },
                    Call::Touch => unsafe { unilock_touch(ptr) },
                    Call::Fd => unsafe { unilock_fd(ptr) },
                    Call::Close => unsafe { unilock_close(ptr) },
                };
                self.expect(&what, rc, -libc::EBADF)?;
                prop_assert!(
                    memory.iter().all(|&w| w == 0),
                    "a call wrote into foreign memory"
                );
            }
            Op::BadOpen(ref bad) => self.bad_open(bad)?,
        }
        Ok(())
    }

    fn check_who(
        &self,
        h: usize,
        wanted: Mode,
        query: std::ops::Range<usize>,
        who: &unilock_holder,
    ) -> Result<(), TestCaseError> {
        let step = self.step;
        prop_assert_eq!((who.pid, who.is_self), (self.me, 1), "step {}", step);
        prop_assert_eq!(command_of(who), self.comm.clone(), "step {}", step);
        let m = Mode::from_raw(who.mode);
        prop_assert!(
            m.is_some_and(|m| conflicts(Some(m), wanted)),
            "step {step}: the holder's mode {} does not conflict with {wanted:?}",
            who.mode
        );
        let m = m.unwrap();
        let kind = match who.backend {
            UNILOCK_BACKEND_FLOCK => Kind::Flock,
            UNILOCK_BACKEND_OFD => Kind::Ofd,
            UNILOCK_BACKEND_POSIX => Kind::Posix,
            other => return Err(TestCaseError::fail(format!("step {step}: backend {other}"))),
        };
        prop_assert_eq!(kind.fcntl(), self.slots[h].kind.fcntl(), "step {}", step);
        let cells = if kind == Kind::Flock {
            prop_assert_eq!((who.start, who.len), (0, 0), "step {}", step);
            0..CELLS
        } else {
            let Some(cells) = cells_of(who.start, who.len).filter(|c| c.end <= CELLS) else {
                return Err(TestCaseError::fail(format!(
                    "step {step}: holder range {} {}",
                    who.start, who.len
                )));
            };
            cells
        };
        prop_assert!(
            cells.start < query.end && query.start < cells.end,
            "step {step}: the holder's range {} {} misses the query",
            who.start,
            who.len
        );
        for c in cells {
            prop_assert!(
                self.live()
                    .any(|(g, s)| g != h && s.kind == kind && s.cells[c] == Some(m)),
                "step {step}: no other {kind:?} handle holds {m:?} on cell {c} of {} {}",
                who.start,
                who.len
            );
        }
        Ok(())
    }

    /// Every lock on the file, as `unilock_list` must report it: each FLOCK handle's,
    /// each OFD handle's segments, and the process's POSIX lock (the union of the
    /// POSIX handles'), as `(backend, mode, start, len)`.
    fn expected_list(&self) -> Vec<(u32, u32, u64, u64)> {
        let mut out = Vec::new();
        let mut posix: Cells = [None; CELLS];
        for (_, s) in self.live() {
            match s.kind {
                Kind::Flock => {
                    if let Some(m) = s.cells[0] {
                        out.push((UNILOCK_BACKEND_FLOCK, mode_bits(m), 0, 0));
                    }
                }
                Kind::Ofd => {
                    for (m, a, b) in runs(&s.cells) {
                        let (start, len) = api_range(a, b);
                        out.push((UNILOCK_BACKEND_OFD, mode_bits(m), start, len));
                    }
                }
                Kind::Posix => {
                    for (c, cell) in posix.iter_mut().enumerate() {
                        *cell = (*cell).max(s.cells[c]);
                    }
                }
            }
        }
        for (m, a, b) in runs(&posix) {
            let (start, len) = api_range(a, b);
            out.push((UNILOCK_BACKEND_POSIX, mode_bits(m), start, len));
        }
        out.sort_unstable();
        out
    }

    fn check_list(
        &self,
        buf: &[unilock_holder],
        cap: usize,
        count: usize,
    ) -> Result<(), TestCaseError> {
        let step = self.step;
        let mut want = self.expected_list();
        prop_assert_eq!(
            count,
            want.len(),
            "step {}: count; the model has {:?}",
            step,
            want
        );
        let filled = cap.min(count);
        for h in &buf[..filled] {
            let key = (h.backend, h.mode, h.start, h.len);
            let Some(at) = want.iter().position(|w| *w == key) else {
                return Err(TestCaseError::fail(format!(
                    "step {step}: listed {key:?}, the model has {want:?}"
                )));
            };
            want.remove(at);
            prop_assert_eq!((h.pid, h.is_self), (self.me, 1), "step {}", step);
            prop_assert_eq!(command_of(h), self.comm.clone(), "step {}", step);
        }
        for h in &buf[filled..] {
            prop_assert!(
                same_holder(h, &sentinel()),
                "step {step}: list wrote past the {filled} entries it had"
            );
        }
        Ok(())
    }

    fn bad_open(&mut self, bad: &BadOpen) -> Result<(), TestCaseError> {
        let known = std::mem::size_of::<unilock_options>() as u32;
        let mut out: *mut unilock = std::ptr::NonNull::dangling().as_ptr();
        let o = options(UNILOCK_BACKEND_OFD, UNILOCK_CREATE);
        let missing =
            CString::new(self.path.with_extension("missing").as_os_str().as_bytes()).unwrap();
        let (rc, want) = match *bad {
            BadOpen::Size(size) => {
                let buf = sized_options(o, size, None);
                let want = if size < known {
                    libc::EINVAL
                } else {
                    libc::E2BIG
                };
                (
                    // SAFETY: paths are NUL-terminated, options are whole structs, out
                    // pointers are live locals.
                    unsafe { unilock_open(self.cpath.as_ptr(), buf.as_ptr().cast(), &mut out) },
                    want,
                )
            }
            BadOpen::Tail { size, at } => {
                let buf = sized_options(o, size, Some(at));
                (
                    // SAFETY: paths are NUL-terminated, options are whole structs, out
                    // pointers are live locals.
                    unsafe { unilock_open(self.cpath.as_ptr(), buf.as_ptr().cast(), &mut out) },
                    libc::E2BIG,
                )
            }
            BadOpen::Bits { backends, flags } => {
                let o = options(backends, flags | UNILOCK_CREATE);
                let known_bits = backends & !15 == 0 && flags & !31 == 0;
                let fcntl_pair = backends & 6 == 6;
                let want = if !known_bits || fcntl_pair {
                    libc::EINVAL
                } else {
                    libc::EOPNOTSUPP
                };
                // SAFETY: paths are NUL-terminated, options are whole structs, out pointers
                // are live locals.
                (
                    unsafe { unilock_open(self.cpath.as_ptr(), &o, &mut out) },
                    want,
                )
            }
            BadOpen::CreateMode(mode) => {
                let mut o = o;
                o.mode = mode;
                (
                    // SAFETY: paths are NUL-terminated, options are whole structs, out
                    // pointers are live locals.
                    unsafe { unilock_open(self.cpath.as_ptr(), &o, &mut out) },
                    libc::EINVAL,
                )
            }
            // SAFETY: paths are NUL-terminated, options are whole structs, out pointers are
            // live locals.
            BadOpen::NullPath => (unsafe { unilock_open(null(), &o, &mut out) }, libc::EINVAL),
            BadOpen::NullOut => {
                out = null_mut();
                (
                    // SAFETY: paths are NUL-terminated, options are whole structs, out
                    // pointers are live locals.
                    unsafe { unilock_open(self.cpath.as_ptr(), &o, null_mut()) },
                    libc::EINVAL,
                )
            }
            BadOpen::Missing => {
                let o = options(UNILOCK_BACKEND_OFD, 0);
                // SAFETY: paths are NUL-terminated, options are whole structs, out pointers
                // are live locals.
                (
                    unsafe { unilock_open(missing.as_ptr(), &o, &mut out) },
                    libc::ENOENT,
                )
            }
            // SAFETY: paths are NUL-terminated, options are whole structs, out pointers are
            // live locals.
            BadOpen::BadFd(fd) => (unsafe { unilock_open_fd(fd, &o, &mut out) }, libc::EBADF),
            BadOpen::FdDotlock => {
                let o = options(UNILOCK_BACKEND_DOTLOCK, 0);
                (
                    // SAFETY: paths are NUL-terminated, options are whole structs, out
                    // pointers are live locals.
                    unsafe { unilock_open_fd(self.probe.as_raw_fd(), &o, &mut out) },
                    libc::EINVAL,
                )
            }
        };
        if rc == 0 && !out.is_null() {
            // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which
            // the library checks before reading).
            unsafe { unilock_close(out) };
        }
        self.expect(&format!("{bad:?}"), rc, -want)?;
        prop_assert!(out.is_null(), "a failed open left *out set");
        prop_assert!(
            !Path::new(OsStr::from_bytes(missing.as_bytes())).exists(),
            "a failed open created a file"
        );
        Ok(())
    }

    /// The strongest OFD or POSIX lock on `offset` as `F_OFD_GETLK` from another open
    /// file description sees it (this process's POSIX locks included).
    fn kernel_fcntl(&self, offset: u64) -> Option<Mode> {
        // SAFETY: a plain C struct; all zeroes is a valid value.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = offset as libc::off_t;
        fl.l_len = 1;
        // SAFETY: fcntl with a valid struct flock on a descriptor this test owns.
        let rc = unsafe { libc::fcntl(self.probe.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
        assert_eq!(rc, 0, "F_OFD_GETLK: {}", std::io::Error::last_os_error());
        match i32::from(fl.l_type) {
            libc::F_UNLCK => None,
            libc::F_RDLCK => Some(Mode::Shared),
            _ => Some(Mode::Exclusive),
        }
    }

    /// The strongest flock lock on the file, as a flock of another open file
    /// description finds it.
    fn kernel_flock(&self) -> Option<Mode> {
        let fd = self.flock_probe.as_raw_fd();
        let try_lock = |how: i32| {
            // SAFETY: flock on a descriptor this test owns.
            let ok = unsafe { libc::flock(fd, how | libc::LOCK_NB) } == 0;
            if ok {
                // SAFETY: as above.
                unsafe { libc::flock(fd, libc::LOCK_UN) };
            }
            ok
        };
        if try_lock(libc::LOCK_EX) {
            None
        } else if try_lock(libc::LOCK_SH) {
            Some(Mode::Shared)
        } else {
            Some(Mode::Exclusive)
        }
    }

    /// The kernel agrees with the model on every cell (the cell beyond SPAN at its
    /// first byte and at the last byte before 2^62) and on the flock lock.
    fn check_kernel(&self) -> Result<(), TestCaseError> {
        for c in 0..CELLS {
            let want = strongest(
                self.live()
                    .filter(|(_, s)| s.kind.fcntl())
                    .map(|(_, s)| s.cells[c]),
            );
            let offsets: &[u64] = if c == TO_END {
                &[SPAN + 1, RESERVED - 1]
            } else {
                &[c as u64]
            };
            for &offset in offsets {
                prop_assert_eq!(
                    self.kernel_fcntl(offset),
                    want,
                    "step {}: the kernel's fcntl lock on byte {}",
                    self.step,
                    offset
                );
            }
        }
        let want = strongest(
            self.live()
                .filter(|(_, s)| s.kind == Kind::Flock)
                .map(|(_, s)| s.cells[0]),
        );
        prop_assert_eq!(
            self.kernel_flock(),
            want,
            "step {}: the kernel's flock",
            self.step
        );
        Ok(())
    }

    /// Another process agrees: its try-locks on one byte (OFD) and on the file (FLOCK)
    /// succeed exactly when the model has no conflicting lock there.
    fn check_peer(&mut self) -> Result<(), TestCaseError> {
        let c = (self.step * 7) % CELLS;
        let offset = if c == TO_END { SPAN + 1 } else { c as u64 };
        let fcntl = strongest(
            self.live()
                .filter(|(_, s)| s.kind.fcntl())
                .map(|(_, s)| s.cells[c]),
        );
        let flock = strongest(
            self.live()
                .filter(|(_, s)| s.kind == Kind::Flock)
                .map(|(_, s)| s.cells[0]),
        );
        for (name, held, range) in [
            ("p", fcntl, format!("{offset} 1")),
            ("q", flock, "0 0".to_string()),
        ] {
            for (word, mode) in [("sh", Mode::Shared), ("ex", Mode::Exclusive)] {
                let reply = self.peer.cmd(&format!("lock {name} {word} {range} 0"));
                let free = !conflicts(held, mode);
                let want = if free {
                    "ok".to_string()
                } else {
                    common::err(libc::EAGAIN)
                };
                prop_assert_eq!(
                    &reply,
                    &want,
                    "step {}: a peer's {} {} lock on {}",
                    self.step,
                    name,
                    word,
                    range
                );
                if reply == "ok" {
                    prop_assert_eq!(self.peer.cmd(&format!("unlock {name} {range}")), "ok");
                }
            }
        }
        Ok(())
    }
}

static CASES: AtomicU32 = AtomicU32::new(0);

fn run_case(
    dir: &Path,
    peer: &mut Peer,
    first: &[(Kind, How)],
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let path = dir.join(format!("case-{}", CASES.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, b"").unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    let rw = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap()
    };
    let shown = path.to_str().unwrap().to_string();
    prop_assert_eq!(peer.cmd(&format!("open p {shown} ofd")), "ok");
    prop_assert_eq!(peer.cmd(&format!("open q {shown} flock")), "ok");
    let me = std::process::id() as i32;
    let comm = std::fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
    let mut case = Case {
        cpath: CString::new(shown.as_bytes()).unwrap(),
        path: path.clone(),
        dev: meta.dev(),
        ino: meta.ino(),
        slots: (0..HANDLES)
            .map(|_| Slot {
                kind: Kind::Flock,
                ptr: null_mut(),
                stale: null_mut(),
                writable: true,
                cells: [None; CELLS],
            })
            .collect(),
        raw: Vec::new(),
        probe: rw(),
        flock_probe: rw(),
        peer,
        me,
        comm: comm.trim_end_matches('\n').to_string(),
        step: 0,
    };
    let result = (|| {
        for (h, &(kind, how)) in first.iter().enumerate() {
            case.open(h, kind, how)?;
        }
        for (step, op) in ops.iter().enumerate() {
            case.step = step;
            case.run(op)?;
            case.check_kernel()?;
            if step % 3 == 0 {
                case.check_peer()?;
            }
        }
        // Closing every handle leaves nothing held.
        for h in 0..HANDLES {
            if !case.slots[h].ptr.is_null() {
                case.close(h)?;
            }
        }
        case.step = ops.len();
        case.check_kernel()?;
        case.check_peer()
    })();
    // Whatever happened, no handle stays open and no lock stays held by this case.
    for s in &case.slots {
        if !s.ptr.is_null() {
            // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which
            // the library checks before reading).
            unsafe { unilock_close(s.ptr) };
        }
    }
    drop(case.raw);
    let _ = case.peer.cmd("close p");
    let _ = case.peer.cmd("close q");
    let _ = std::fs::remove_file(&path);
    result
}

/// Random sequences of C API calls over three handles of one file (FLOCK, OFD and
/// POSIX, opened by path or from a descriptor): locks and try-locks on random ranges
/// and modes, unlocks, queries, lists, cancels and closes, mixed with invalid calls
/// (bad modes, ranges into the reserved offsets or past the largest offset, byte ranges
/// on FLOCK, NULL, stale and foreign handle pointers, double closes, bad options
/// structs and descriptors). Every return is the model's; after every call the kernel
/// (F_OFD_GETLK and flock from other open file descriptions) holds what the model
/// says, and every third call a peer process's try-locks agree.
#[test]
fn c_api_call_sequences_follow_the_model() {
    let dir = TempDir::new("fuzz-api");
    let mut peer = Peer::spawn();
    let first = prop_oneof![
        4 => prop::collection::vec((kind(), how()), HANDLES),
        1 => prop::collection::vec((kind(), how()), 0..HANDLES),
    ];
    let ops = prop::collection::vec(op(), 1..50);
    fuzz(
        "c_api_call_sequences_follow_the_model",
        400,
        (first, ops),
        |(first, ops)| run_case(&dir.0, &mut peer, &first, &ops),
    );
}

// The command.

const UNILOCK: &str = env!("CARGO_BIN_EXE_unilock");

/// The exit codes `unilock` documents, for the commands these tests run: the
/// conflict codes (1, and the `-E` values used here), sysexits, and the statuses of
/// `true`, `false`, `exit 3` and the shell's "not found" / "cannot execute" / usage.
const EXIT_CODES: &[i32] = &[0, 1, 2, 3, 42, 255, 64, 65, 66, 69, 71, 73, 126, 127];

/// How long one run may take: every run here is free of contention and
/// non-blocking (or has nothing to wait for).
const CLI_BOUND: Duration = Duration::from_secs(10);

struct Run {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

fn run_unilock(dir: &Path, bin: &Path, arg0: Option<&OsStr>, args: &[OsString]) -> Run {
    let mut command = Command::new(UNILOCK);
    if let Some(arg0) = arg0 {
        command.arg0(arg0);
    }
    let mut child = command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", bin)
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > CLI_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unilock {args:?} did not end within {CLI_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let out = child.wait_with_output().unwrap();
    Run {
        status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A directory for one run: `dir/`, a FIFO, a symbolic link to `file`, and `file`
/// itself when `with_file` (a run that may wait is given no existing file: an empty
/// one is a DOTLOCK lock file whose owner is unknown, held for ever).
fn sandbox(root: &Path, with_file: bool) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = root.join(format!("run-{}", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(dir.join("dir")).unwrap();
    if with_file {
        std::fs::write(dir.join("file"), b"").unwrap();
    }
    std::os::unix::fs::symlink("file", dir.join("link")).unwrap();
    let fifo = CString::new(dir.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    dir
}

/// A directory for `PATH` with `true` and `false` only: no other program can run.
fn bin_dir(root: &Path) -> PathBuf {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["true", "false"] {
        let target = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
            .unwrap();
        std::os::unix::fs::symlink(target, bin.join(name)).unwrap();
    }
    bin
}

/// unilock's options: exact, abbreviated, clustered, with attached values, ambiguous,
/// unknown, misused.
const OPTION_WORDS: &str = "-s -x -e -u -n -o -F -h -V -? -c -k -w -E -b --shared --exclusive \
    --unlock --nonblock --nb --nonb --timeout --wait --conflict-exit-code --close --no-fork \
    --verbose --verb --help --version --fcntl --start --length --backend --range --fair \
    --unlink --stale --mode --follow --test --list --json --c --s --t=1 --range=0:4 \
    --backend=ofd --shared=1 -- --= --foo -nsw0 -sw0.25 -E42 -w0 -bofd -xn -nE --command";

/// Option values, usable and not.
const VALUE_WORDS: &str = "0 1 0.001 -1 1e-9 1e300 1e400 inf nan 0x10 10:5 0:0 \
    4611686018427387904 4611686018427387903:1 18446744073709551615:1 9223372036854775807 \
    3:18446744073709551615 abc 256 42 255 0644 0o600 4755 7777 99 flock ofd posix dotlock \
    fcntl flock,dotlock ofd,posix posix,dotlock nfs";

/// Operands: files of the sandbox (and a device), and descriptors.
const PATH_WORDS: &str = "file missing dir fifo link file.lock dir/sub nodir/x /dev/null \
    ./file - 0 1 2 3 99 -1 2147483648";

fn words(list: &'static str) -> impl Strategy<Value = OsString> {
    prop::sample::select(list.split_whitespace().collect::<Vec<_>>()).prop_map(OsString::from)
}

/// A word that cannot name a program: it starts with `-` or `=`, and may not be UTF-8.
fn odd_word() -> impl Strategy<Value = OsString> {
    let safe = "[A-Za-z0-9_.:,+%=-]{0,10}";
    prop_oneof![
        safe.prop_map(|s| OsString::from(format!("-{s}"))),
        safe.prop_map(|s| OsString::from(format!("={s}"))),
        prop::collection::vec(1..=255u8, 0..6).prop_map(|mut b| {
            b.insert(0, b'=');
            OsString::from_vec(b)
        }),
        Just(OsString::new()),
        Just(OsString::from(" flock , OFD")),
    ]
}

/// Any word of a unilock command line.
fn cli_word() -> impl Strategy<Value = OsString> {
    prop_oneof![
        6 => words(OPTION_WORDS),
        4 => words(VALUE_WORDS),
        4 => words(PATH_WORDS),
        2 => prop::sample::select(vec!["true", "false", "exit 3", "-c"]).prop_map(OsString::from),
        2 => odd_word(),
    ]
}

/// What follows the options: `FILE COMMAND [ARGS]`, `FILE -c COMMAND`, `FD`, or any
/// words.
fn operands() -> impl Strategy<Value = Vec<OsString>> {
    let command = prop::sample::select(vec!["true", "false"]).prop_map(OsString::from);
    prop_oneof![
        3 => (words(PATH_WORDS), command, prop::collection::vec(cli_word(), 0..2))
            .prop_map(|(path, command, args)| [vec![path, command], args].concat()),
        1 => (words(PATH_WORDS), prop::sample::select(vec!["true", "exit 3", "false"]))
            .prop_map(|(path, command)| vec![path, "-c".into(), command.into()]),
        1 => words(PATH_WORDS).prop_map(|fd| vec![fd]),
        2 => prop::collection::vec(cli_word(), 0..5),
    ]
}

/// The name messages start with: the last component of argv[0], else "unilock".
fn invoked_as(arg0: Option<&OsStr>) -> String {
    let full = arg0.unwrap_or(OsStr::new(UNILOCK));
    Path::new(full)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "unilock".into())
}

/// `unilock` with random command lines never panics or dies of a signal, exits with a
/// documented code within a bound, and a usage error starts with the name it was
/// invoked by (getopt's own with argv[0] as given) or with the "Try" line.
#[test]
fn the_command_survives_any_command_line() {
    let root = TempDir::new("fuzz-cli");
    let bin = bin_dir(&root.0);
    let arg0 = prop::option::weighted(
        0.15,
        prop::sample::select(vec!["flock", "/x/y/uni lock", "", "/", "./unilock"]),
    );
    let with_value = "-w -E -b --timeout --wait --conflict-exit-code --start --length \
        --backend --range --stale --mode";
    let option = prop_oneof![
        3 => words(OPTION_WORDS).prop_map(|o| vec![o]),
        3 => (words(with_value), words(VALUE_WORDS)).prop_map(|(o, v)| vec![o, v]),
        1 => odd_word().prop_map(|o| vec![o]),
    ];
    let options = prop::collection::vec(option, 0..4).prop_map(|o| o.concat());
    let case = (prop::bool::weighted(0.75), options, operands(), arg0);
    fuzz(
        "the_command_survives_any_command_line",
        300,
        case,
        |(nonblocking, options, operands, arg0)| {
            let dir = sandbox(&root.0, nonblocking);
            let mut args: Vec<OsString> = Vec::new();
            if nonblocking {
                args.push("-n".into());
            }
            args.extend(options);
            args.extend(operands);
            let arg0 = arg0.map(OsStr::new);
            let run = run_unilock(&dir, &bin, arg0, &args);
            let _ = std::fs::remove_dir_all(&dir);
            prop_assert!(
                run.status.signal().is_none(),
                "{args:?}: killed by signal {:?}: {}",
                run.status.signal(),
                run.stderr
            );
            prop_assert!(
                !run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"),
                "{args:?}: {}",
                run.stderr
            );
            let code = run.status.code().unwrap();
            prop_assert!(
                EXIT_CODES.contains(&code),
                "{args:?}: exit {code}: {}{}",
                run.stdout,
                run.stderr
            );
            if code == 64 {
                let name = invoked_as(arg0);
                let full = arg0.unwrap_or(OsStr::new(UNILOCK)).to_string_lossy();
                let first = run.stderr.lines().next().unwrap_or_default();
                prop_assert!(
                    first.starts_with(&format!("{name}: "))
                        || first.starts_with(&format!("{full}: "))
                        || first.starts_with(&format!("Try '{name} --help'")),
                    "{args:?} (argv[0] {arg0:?}): usage message {:?}",
                    run.stderr
                );
            }
            Ok(())
        },
    );
}

/// An option value and whether unilock can use it.
#[derive(Clone, Debug)]
struct Valued {
    option: &'static str,
    value: String,
    valid: bool,
}

fn labelled(
    option: &'static str,
    valid: impl Strategy<Value = String> + 'static,
    invalid: impl Strategy<Value = String> + 'static,
) -> BoxedStrategy<Valued> {
    prop_oneof![
        valid.prop_map(move |value| Valued {
            option,
            value,
            valid: true
        }),
        invalid.prop_map(move |value| Valued {
            option,
            value,
            valid: false
        }),
    ]
    .boxed()
}

/// A byte count as `--range` takes it: decimal, or hexadecimal after 0x.
fn bytes_text(n: u64, hex: bool) -> String {
    if hex {
        format!("0x{n:x}")
    } else {
        n.to_string()
    }
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..64u64,
        (RESERVED - 2)..=(RESERVED + 2),
        any::<u64>(),
        Just(u64::MAX),
    ]
}

fn valued() -> impl Strategy<Value = Valued> {
    let timeout = labelled(
        "-w",
        prop_oneof![
            "[0-9]{1,6}",
            "[0-9]{0,3}\\.[0-9]{1,6}",
            "[0-9]\\.?[0-9]?e-?[0-9]",
            Just("1e30".to_string()),
        ],
        prop_oneof![
            "-[1-9][0-9]{0,3}(\\.[0-9]{1,3})?",
            prop::sample::select(vec![
                "inf", "nan", "infinity", "-inf", "1e400", "1.2.3", "abc", "", "1s"
            ])
            .prop_map(String::from),
        ],
    );
    let exit_code = labelled(
        "-E",
        (0..=255u32).prop_map(|c| c.to_string()),
        prop_oneof![
            (256..100_000u32).prop_map(|c| c.to_string()),
            (1..1000u32).prop_map(|c| format!("-{c}")),
            prop::sample::select(vec!["abc", "", "1.5", "99999999999", "5x"])
                .prop_map(String::from),
        ],
    );
    let mode = labelled(
        "--mode",
        (0..=0o777u32, 0..3u8).prop_map(|(m, form)| match form {
            0 => format!("{m:o}"),
            1 => format!("0{m:o}"),
            _ => format!("0o{m:o}"),
        }),
        prop_oneof![
            (0o1000..=0o7777u32).prop_map(|m| format!("0{m:o}")),
            (0o10000..=0o777_777u32).prop_map(|m| format!("{m:o}")),
            prop::sample::select(vec!["", "0o", "8", "0649", "rw-r--r--", "-644", "0x1a4"])
                .prop_map(String::from),
        ],
    );
    let stale = labelled(
        "--stale",
        any::<u32>().prop_map(|s| s.to_string()),
        prop_oneof![
            (u64::from(u32::MAX) + 1..=u64::MAX).prop_map(|s| s.to_string()),
            prop::sample::select(vec!["-5", "5s", "", "1.5", "abc"]).prop_map(String::from),
        ],
    );
    // A range is valid when it parses and stays below 2^62.
    let range = (offset(), offset(), any::<bool>(), any::<bool>(), 0..4u8)
        .prop_map(|(start, len, hex_start, hex_len, form)| {
            let fits = start < RESERVED
                && (len == 0 || start.checked_add(len).is_some_and(|e| e <= RESERVED));
            match form {
                0 => Valued {
                    option: "--range",
                    value: bytes_text(start, hex_start),
                    valid: start < RESERVED,
                },
                1 => Valued {
                    option: "--range",
                    value: format!(
                        "{}:{}",
                        bytes_text(start, hex_start),
                        bytes_text(len, hex_len)
                    ),
                    valid: fits,
                },
                2 => Valued {
                    option: "--start",
                    value: bytes_text(start, hex_start),
                    valid: start < RESERVED,
                },
                _ => Valued {
                    option: "--length",
                    value: bytes_text(len, hex_len),
                    valid: len <= RESERVED,
                },
            }
        })
        .boxed();
    let bad_range = labelled(
        "--range",
        Just("0:0".to_string()),
        prop::sample::select(vec![
            "a:b",
            "1:",
            ":5",
            "",
            "1:2:3",
            "0x",
            "-1",
            "0x:1",
            "1 :2",
            "18446744073709551616",
        ])
        .prop_map(String::from),
    );
    let name = prop::sample::select(vec![
        "flock", "ofd", "fcntl", "posix", "dotlock", "FLOCK", " Ofd ",
    ]);
    let backend = prop::collection::vec(name, 1..4)
        .prop_map(|names| {
            let lower: Vec<String> = names.iter().map(|n| n.trim().to_lowercase()).collect();
            let ofd = lower.iter().any(|n| n == "ofd" || n == "fcntl");
            let posix = lower.iter().any(|n| n == "posix");
            Valued {
                option: "-b",
                value: names.join(","),
                valid: !(ofd && posix),
            }
        })
        .boxed();
    let bad_backend = labelled(
        "-b",
        Just("flock".to_string()),
        prop::sample::select(vec![
            "",
            "nfs",
            "flock,",
            ",ofd",
            "etcd,flock",
            "ofd,etcd",
            "flock;ofd",
            "o fd",
        ])
        .prop_map(String::from),
    );
    prop_oneof![
        timeout,
        exit_code,
        mode,
        stale,
        range,
        bad_range,
        backend,
        bad_backend
    ]
}

/// An option value is refused as a usage error (exit 64) exactly when unilock cannot
/// use it; a usable one, on a free lock, runs the command (exit 0). Values are given
/// as a separate word, attached (`-w5`), or after `=` (`--mode=0644`).
#[test]
fn the_command_refuses_exactly_the_option_values_it_cannot_use() {
    let root = TempDir::new("fuzz-cli-values");
    let bin = bin_dir(&root.0);
    fuzz(
        "the_command_refuses_exactly_the_option_values_it_cannot_use",
        300,
        (valued(), 0..3u8),
        |(v, form)| {
            let dir = sandbox(&root.0, false);
            let mut args: Vec<OsString> = vec!["-n".into()];
            if v.option == "--stale" {
                args.extend(["-b".into(), "dotlock".into()]);
            }
            let short = !v.option.starts_with("--");
            match form {
                0 => args.extend([v.option.into(), v.value.clone().into()]),
                _ if short && !v.value.is_empty() => {
                    args.push(format!("{}{}", v.option, v.value).into())
                }
                _ if !short => args.push(format!("{}={}", v.option, v.value).into()),
                _ => args.extend([v.option.into(), v.value.clone().into()]),
            }
            args.extend(["missing".into(), "true".into()]);
            let run = run_unilock(&dir, &bin, None, &args);
            let _ = std::fs::remove_dir_all(&dir);
            let want = if v.valid { 0 } else { 64 };
            prop_assert_eq!(
                run.status.code(),
                Some(want),
                "{:?}: {}{}",
                args,
                run.stdout,
                run.stderr
            );
            if !v.valid {
                prop_assert!(
                    run.stderr.starts_with("unilock: "),
                    "{:?}: {}",
                    args,
                    run.stderr
                );
            }
            Ok(())
        },
    );
}
