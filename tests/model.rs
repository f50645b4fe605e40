//! Model-based tests (proptest) of POSIX in-process arbitration (the range arithmetic
//! it rests on has its own model test, in src/range.rs).
//!
//! POSIX locks belong to the process, so the library arbitrates between the handles of
//! one process and keeps the kernel lock equal to the union of what they hold (SPEC
//! section 1). The reference model keeps, per handle, each byte's mode; after every
//! operation the library's answer must equal the model's, and the kernel's lock state
//! of this process (from /proc/locks) must equal the union of the handles' modes.
//! Handles are closed and opened again along the way, so that a handle is sometimes
//! alone on the file (the solo path, whose holding lives outside the process table)
//! and sometimes joined by others (its holding checked back in).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use common::{TRY, TempDir, opts};
use unilock::{Backend, Lock, Mode};

/// Ranges start in bytes [0, SPAN); lengths stay inside it, or are 0 (to the end).
const SPAN: u64 = 64;
/// Cells of the model: bytes 0..=SPAN (byte SPAN is covered only by "to the end"
/// locks), then one cell for "to the end of the file and beyond".
const CELLS: usize = SPAN as usize + 2;
const TO_END: usize = CELLS - 1;
const HANDLES: usize = 3;

/// The kernel's last offset of a lock "to the end" as the library takes it (2^62 - 1,
/// inclusive), or anything beyond.
const KERNEL_TO_END: u64 = (1 << 62) - 1;

type Cells = [Option<Mode>; CELLS];

#[derive(Clone, Debug)]
enum Op {
    Lock {
        h: usize,
        mode: Mode,
        start: u64,
        len: u64,
    },
    /// Re-locks the range this handle locked last (a conversion when it still holds it).
    Relock {
        h: usize,
        mode: Mode,
    },
    Unlock {
        h: usize,
        start: u64,
        len: u64,
    },
    /// Closes the handle when it is open, else opens it again.
    Reopen {
        h: usize,
    },
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Shared), Just(Mode::Exclusive)]
}

/// `(start, len)` inside [0, SPAN): mostly short, sometimes long, sometimes to the end.
fn range() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        6 => (0..SPAN).prop_flat_map(|s| (Just(s), 1..=(SPAN - s).min(8))),
        3 => (0..SPAN).prop_flat_map(|s| (Just(s), 1..=SPAN - s)),
        1 => (0..SPAN).prop_map(|s| (s, 0)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..HANDLES, mode(), range())
            .prop_map(|(h, mode, (start, len))| Op::Lock { h, mode, start, len }),
        2 => (0..HANDLES, mode()).prop_map(|(h, mode)| Op::Relock { h, mode }),
        3 => (0..HANDLES, range()).prop_map(|(h, (start, len))| Op::Unlock { h, start, len }),
        2 => (0..HANDLES).prop_map(|h| Op::Reopen { h }),
    ]
}

/// The model cells a range covers.
fn cells_of(start: u64, len: u64) -> std::ops::Range<usize> {
    if len == 0 {
        start as usize..CELLS
    } else {
        start as usize..(start + len) as usize
    }
}

fn conflicts(held: Option<Mode>, wanted: Mode) -> bool {
    matches!(
        (held, wanted),
        (Some(Mode::Exclusive), _) | (Some(_), Mode::Exclusive)
    )
}

fn union(model: &[Cells; HANDLES]) -> Cells {
    let mut out = [None; CELLS];
    for (c, cell) in out.iter_mut().enumerate() {
        *cell = model.iter().map(|h| h[c]).max().flatten();
    }
    out
}

/// The file a case locks: its device and inode, as /proc shows locks.
#[derive(Clone, Copy)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(path: &Path) -> FileId {
        let meta = std::fs::metadata(path).unwrap();
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// What the kernel says this process holds on the file: per cell the strongest mode,
/// plus every lock that covers neither a cell nor "to the end" (none should exist).
#[derive(Debug, PartialEq, Eq)]
struct KernelState {
    cells: String,
    stray: Vec<String>,
}

/// Folds lock lines in the /proc/locks format (`N: POSIX ADVISORY WRITE PID
/// MAJ:MIN:INO START END|EOF`, END inclusive) into a [`KernelState`], keeping the POSIX
/// locks of this process on the file.
fn fold(lines: &[String], file: FileId) -> KernelState {
    let me = std::process::id().to_string();
    let mut cells: Cells = [None; CELLS];
    let mut stray = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Waiters have "->" after the number, and are not held locks.
        if f.len() != 8 || f[1] != "POSIX" || f[4] != me {
            continue;
        }
        let id: Vec<&str> = f[5].split(':').collect();
        let major = u64::from_str_radix(id[0], 16).unwrap();
        let minor = u64::from_str_radix(id[1], 16).unwrap();
        if id[2].parse::<u64>().unwrap() != file.ino
            || major != libc::major(file.dev) as u64
            || minor != libc::minor(file.dev) as u64
        {
            continue;
        }
        let mode = match f[3] {
            "READ" => Mode::Shared,
            "WRITE" => Mode::Exclusive,
            other => panic!("unexpected lock type {other} in {line}"),
        };
        let start: u64 = f[6].parse().unwrap();
        let end: Option<u64> = match f[7] {
            "EOF" => None,
            e => Some(e.parse().unwrap()),
        };
        let to_end = end.is_none_or(|e| e >= KERNEL_TO_END);
        let mut covered = false;
        for (byte, cell) in cells.iter_mut().enumerate().take(TO_END) {
            let byte = byte as u64;
            if start <= byte && end.is_none_or(|e| byte <= e) {
                *cell = (*cell).max(Some(mode));
                covered = true;
            }
        }
        if to_end {
            cells[TO_END] = cells[TO_END].max(Some(mode));
        } else if !covered || end.is_some_and(|e| e > SPAN) {
            stray.push(line.to_string());
        }
    }
    stray.sort();
    stray.dedup();
    KernelState {
        cells: show(&cells),
        stray,
    }
}

/// /proc/locks, when one pass of the kernel over its lock lists made all of it.
///
/// Each read() of /proc/locks is one pass, holding the lists still, that stops when the
/// next line would overflow a page (the seq_file buffer); a longer file is read in
/// several passes that resume by line number, so lines are skipped or repeated when
/// other processes lock or unlock in between (seen here, with a process churning flock
/// locks). Even a second read that finds nothing proves nothing, since the lists may
/// have shrunk meanwhile. So the snapshot is taken only when the first read returns
/// well under a page: then the pass ended because the lists did.
fn proc_locks_snapshot() -> Option<Vec<String>> {
    use std::io::Read;
    /// Lines of /proc/locks are under 128 bytes; a page is at least 4 KiB.
    const SURELY_COMPLETE: usize = 4096 - 256;
    let mut f = std::fs::File::open("/proc/locks").unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let n = f.read(&mut buf).unwrap();
    if n >= SURELY_COMPLETE {
        return None;
    }
    let text = std::str::from_utf8(&buf[..n]).unwrap();
    Some(text.lines().map(str::to_string).collect())
}

/// The `lock:` lines of every descriptor of this process open on the file
/// (/proc/self/fdinfo, each file made in one pass). A process's POSIX lock is shown on
/// the descriptors of the open file it was set through; the kernel drops all of the
/// process's POSIX locks on a file when any descriptor of it closes, so every POSIX lock
/// this process holds on the file shows on one of its open descriptors.
fn fdinfo_lines(file: FileId) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // SAFETY: fstat writes into a local struct; a descriptor closed meanwhile
        // gives EBADF.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0
            || st.st_dev != file.dev
            || st.st_ino != file.ino
        {
            continue;
        }
        let info = format!("/proc/self/fdinfo/{fd}");
        let Ok(text) = std::fs::read_to_string(info) else {
            continue;
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("lock:") {
                lines.push(rest.trim_start().to_string());
            }
        }
    }
    lines
}

/// The kernel's state of this process's POSIX locks on the file, from the descriptors'
/// fdinfo, checked against /proc/locks whenever it can be read in one pass.
fn kernel_state(file: FileId) -> Result<KernelState, TestCaseError> {
    let fdinfo = fdinfo_lines(file);
    let from_fdinfo = fold(&fdinfo, file);
    if let Some(lines) = proc_locks_snapshot() {
        let from_proc_locks = fold(&lines, file);
        prop_assert_eq!(
            &from_proc_locks,
            &from_fdinfo,
            "/proc/locks (left) and /proc/self/fdinfo (right) disagree: {:#?} {:#?}",
            lines,
            fdinfo
        );
    }
    Ok(from_fdinfo)
}

fn show(cells: &Cells) -> String {
    cells
        .iter()
        .map(|c| match c {
            None => '.',
            Some(Mode::Shared) => 's',
            Some(Mode::Exclusive) => 'X',
        })
        .collect()
}

/// The kernel's lock state of this process on `file` is the union of the handles'
/// modes in `model`, with no lock outside the model's cells.
fn check_kernel(file: FileId, model: &[Cells; HANDLES], when: &str) -> Result<(), TestCaseError> {
    let kernel = kernel_state(file)?;
    prop_assert!(
        kernel.stray.is_empty(),
        "{when}: stray locks {:?}",
        kernel.stray
    );
    prop_assert_eq!(
        kernel.cells,
        show(&union(model)),
        "{}: kernel (left) differs from the union of the handles (right)",
        when
    );
    Ok(())
}

fn run_case(dir: &TempDir, ops: &[Op], close_order: &[usize]) -> Result<(), TestCaseError> {
    static CASE: AtomicU32 = AtomicU32::new(0);
    let path = dir
        .0
        .join(format!("case-{}", CASE.fetch_add(1, Ordering::Relaxed)));
    let mut handles: Vec<Option<Lock>> = (0..HANDLES)
        .map(|_| Some(Lock::open(&path, &opts(Backend::Posix)).unwrap()))
        .collect();
    let file = FileId::of(&path);
    let mut model: [Cells; HANDLES] = [[None; CELLS]; HANDLES];
    let mut last: [(u64, u64); HANDLES] = [(0, 0); HANDLES];
    for (step, op) in ops.iter().enumerate() {
        let (h, wanted, start, len) = match *op {
            Op::Lock {
                h,
                mode,
                start,
                len,
            } => (h, Some(mode), start, len),
            Op::Relock { h, mode } => (h, Some(mode), last[h].0, last[h].1),
            Op::Unlock { h, start, len } => (h, None, start, len),
            Op::Reopen { h } => {
                match handles[h].take() {
                    Some(lock) => {
                        let result = lock.close();
                        prop_assert!(result.is_ok(), "step {step} close {h}: {result:?}");
                        model[h] = [None; CELLS];
                    }
                    None => handles[h] = Some(Lock::open(&path, &opts(Backend::Posix)).unwrap()),
                }
                check_kernel(file, &model, &format!("step {step} {op:?}"))?;
                continue;
            }
        };
        let Some(lock) = handles[h].as_ref() else {
            continue;
        };
        match wanted {
            Some(mode) => {
                last[h] = (start, len);
                let granted = (0..HANDLES)
                    .filter(|&g| g != h)
                    .all(|g| cells_of(start, len).all(|c| !conflicts(model[g][c], mode)));
                let result = lock.lock(mode, start, len, TRY);
                match &result {
                    Ok(()) => prop_assert!(granted, "step {step} {op:?}: granted, model refuses"),
                    Err(e) => {
                        prop_assert!(!granted, "step {step} {op:?}: refused ({e}), model grants");
                        prop_assert_eq!(e.errno(), libc::EAGAIN, "step {} {:?}: {}", step, op, e);
                    }
                }
                if granted {
                    for c in cells_of(start, len) {
                        model[h][c] = Some(mode);
                    }
                }
            }
            None => {
                let result = lock.unlock(start, len);
                prop_assert!(result.is_ok(), "step {step} {op:?}: {result:?}");
                for c in cells_of(start, len) {
                    model[h][c] = None;
                }
            }
        }
        check_kernel(file, &model, &format!("step {step} {op:?}"))?;
    }
    // Closing one handle keeps the others' locks; closing the last leaves nothing.
    for &h in close_order {
        let Some(lock) = handles[h].take() else {
            continue;
        };
        let result = lock.close();
        prop_assert!(result.is_ok(), "close {h}: {result:?}");
        model[h] = [None; CELLS];
        check_kernel(file, &model, &format!("after closing handle {h}"))?;
    }
    prop_assert_eq!(kernel_state(file)?.cells, show(&[None; CELLS]));
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Three POSIX handles of one thread, try-only, closed and opened again along the way:
/// each answer is the model's, and the process's kernel lock is always the union of
/// what the handles hold.
#[test]
fn posix_handles_of_one_process_arbitrate_like_the_model() {
    let dir = TempDir::new("model-posix");
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let cases = (
        prop::collection::vec(op(), 1..30),
        Just((0..HANDLES).collect::<Vec<_>>()).prop_shuffle(),
    );
    if let Err(e) = runner.run(&cases, |(ops, close_order)| {
        run_case(&dir, &ops, &close_order)
    }) {
        panic!("{e}");
    }
}
