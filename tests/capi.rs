//! The C boundary, called as C would call it: NULL and foreign pointers, the
//! size-prefixed options struct, unsupported combinations, error strings, the version,
//! and a full open/lock/query/list/unlock/close cycle.

mod common;

use std::ffi::{CStr, CString, c_char};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::ptr::{null, null_mut};

use ::unilock::capi::*;
use common::{Peer, TempDir};

fn text(p: *const c_char) -> String {
    assert!(!p.is_null(), "a C string entry point returned NULL");
    // SAFETY: the library returns NUL-terminated strings that live at least until the
    // thread's next failing call; this copies it at once.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()
}

fn last_error() -> String {
    text(unilock_last_error())
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn options(backends: u32, flags: u32) -> unilock_options {
    let mut o = unilock_options::default();
    // SAFETY: options structs are live locals.
    unsafe { unilock_options_init(&mut o) };
    o.backends = backends;
    o.flags = flags;
    o
}

/// Opens `path`; returns the rc and the handle (NULL on failure).
fn open(path: &Path, o: *const unilock_options) -> (i32, *mut unilock) {
    let mut l: *mut unilock = null_mut();
    // SAFETY: paths are NUL-terminated, options are whole structs, out pointers are live
    // locals.
    let rc = unsafe { unilock_open(cpath(path).as_ptr(), o, &mut l) };
    (rc, l)
}

fn blank_holder() -> unilock_holder {
    unilock_holder {
        backend: 0,
        mode: 0,
        start: 0,
        len: 0,
        pid: 0,
        is_self: 0,
        command: [0; 16],
    }
}

/// Memory that is not a handle: zeroed, larger than one, aligned like one.
fn foreign() -> Box<[u64; 512]> {
    Box::new([0u64; 512])
}

/// Expects `call` to fail with `-EINVAL` and to leave a message of its own (the last
/// error is first set to another failure's, which does not mention NULL).
fn expect_null_einval(what: &str, call: impl FnOnce() -> i32) {
    let mut mem = foreign();
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    assert_eq!(
        unsafe { unilock_cancel(mem.as_mut_ptr().cast()) },
        -libc::EBADF
    );
    assert!(!last_error().contains("NULL"), "{}", last_error());
    assert_eq!(call(), -libc::EINVAL, "{what}");
    let msg = last_error();
    assert!(msg.contains("NULL"), "{what}: last error {msg:?}");
}

#[test]
fn null_arguments_give_einval_and_a_message() {
    let dir = TempDir::new("capi-null");
    let path = cpath(&dir.file("f"));
    let mut l: *mut unilock = null_mut();
    let mut count = 0usize;
    // SAFETY: paths are NUL-terminated, options are whole structs, out pointers are live
    // locals.
    expect_null_einval("open(NULL path)", || unsafe {
        unilock_open(null(), null(), &mut l)
    });
    assert!(l.is_null(), "a failed open wrote a handle");
    expect_null_einval("open(NULL out)", || {
        // SAFETY: paths are NUL-terminated, options are whole structs, out pointers are live
        // locals.
        unsafe { unilock_open(path.as_ptr(), null(), null_mut()) }
    });
    expect_null_einval("open_fd(NULL out)", || {
        // SAFETY: paths are NUL-terminated, options are whole structs, out pointers are live
        // locals.
        unsafe { unilock_open_fd(0, null(), null_mut()) }
    });
    expect_null_einval("lock(NULL)", || {
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        unsafe { unilock_lock(null_mut(), UNILOCK_EXCLUSIVE, 0, 0, 0) }
    });
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    expect_null_einval("unlock(NULL)", || unsafe {
        unilock_unlock(null_mut(), 0, 0)
    });
    expect_null_einval("query(NULL)", || {
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading); holders are live locals.
        unsafe { unilock_query(null_mut(), UNILOCK_EXCLUSIVE, 0, 0, null_mut()) }
    });
    expect_null_einval("list(NULL)", || {
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading); buffers have room for `cap` holders and counts are
        // live locals.
        unsafe { unilock_list(null_mut(), null_mut(), 0, &mut count) }
    });
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    expect_null_einval("cancel(NULL)", || unsafe { unilock_cancel(null_mut()) });
    expect_null_einval("touch(NULL)", || unsafe { unilock_touch(null_mut()) });
    expect_null_einval("fd(NULL)", || unsafe { unilock_fd(null()) });

    // A live handle with NULL out-parameters of list.
    let o = options(UNILOCK_BACKEND_OFD, UNILOCK_CREATE);
    let (rc, h) = open(&dir.file("g"), &o);
    assert_eq!(rc, 0);
    expect_null_einval("list(NULL count)", || {
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading); buffers have room for `cap` holders and counts are
        // live locals.
        unsafe { unilock_list(h, null_mut(), 0, null_mut()) }
    });
    expect_null_einval("list(NULL buf, cap 4)", || {
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading); buffers have room for `cap` holders and counts are
        // live locals.
        unsafe { unilock_list(h, null_mut(), 4, &mut count) }
    });
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    assert_eq!(unsafe { unilock_close(h) }, 0);
}

#[test]
fn peer_main() {
    if std::env::var_os(common::PEER_ENV).is_some() {
        common::peer_loop();
    }
}

#[test]
fn close_of_null_is_a_no_op() {
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading); options structs are live locals.
    assert_eq!(unsafe { unilock_close(null_mut()) }, 0);
    unsafe { unilock_options_init(null_mut()) };
}

#[test]
fn a_foreign_pointer_gives_ebadf() {
    let mut mem = foreign();
    let l = mem.as_mut_ptr().cast::<unilock>();
    let mut count = 0usize;
    let mut who = blank_holder();
    for (what, rc) in [
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading); holders are live locals; buffers have room for `cap`
        // holders and counts are live locals.
        ("lock", unsafe {
            unilock_lock(l, UNILOCK_EXCLUSIVE, 0, 0, 0)
        }),
        ("unlock", unsafe { unilock_unlock(l, 0, 0) }),
        ("query", unsafe {
            unilock_query(l, UNILOCK_EXCLUSIVE, 0, 0, &mut who)
        }),
        ("list", unsafe {
            unilock_list(l, null_mut(), 0, &mut count)
        }),
        ("cancel", unsafe { unilock_cancel(l) }),
        ("touch", unsafe { unilock_touch(l) }),
        ("fd", unsafe { unilock_fd(l) }),
        ("close", unsafe { unilock_close(l) }),
    ] {
        assert_eq!(rc, -libc::EBADF, "{what} on a foreign pointer");
        assert!(!last_error().is_empty(), "{what}");
    }
    assert!(
        mem.iter().all(|&w| w == 0),
        "a call wrote into foreign memory"
    );
}

#[test]
fn options_size_is_checked_like_copy_struct_from_user() {
    let dir = TempDir::new("capi-size");
    let path = dir.file("f");
    // Smaller than the first version of the struct (up to stale_after_s, 20 bytes).
    for size in [0u32, 4, 19] {
        let mut o = options(0, 0);
        o.size = size;
        let (rc, l) = open(&path, &o);
        assert_eq!(rc, -libc::EINVAL, "size {size}");
        assert!(l.is_null());
        assert!(!last_error().is_empty());
    }

    // A caller built against the first version (20 bytes): the fields it lacks are
    // zero, and the bytes past its struct are never read.
    #[repr(C, align(8))]
    struct First([u8; 24]);
    let mut first = First([0xff; 24]);
    first.0[..4].copy_from_slice(&20u32.to_ne_bytes());
    first.0[4..20].fill(0);
    first.0[4..8].copy_from_slice(&UNILOCK_BACKEND_OFD.to_ne_bytes());
    let (rc, l) = open(&path, (&first as *const First).cast());
    assert_eq!(rc, 0, "{}", last_error());
    // SAFETY: a handle from unilock_open.
    assert_eq!(unsafe { unilock_lock(l, UNILOCK_EXCLUSIVE, 5, 5, 0) }, 0);
    assert_eq!(unsafe { unilock_close(l) }, 0);

    // A caller built against a larger, later struct: the tail it sets to zero is fine.
    #[repr(C, align(8))]
    struct Later([u8; 128]);
    let later = |tail_byte: Option<usize>| {
        let mut buf = Later([0; 128]);
        buf.0[..4].copy_from_slice(&128u32.to_ne_bytes());
        buf.0[4..8].copy_from_slice(&UNILOCK_BACKEND_OFD.to_ne_bytes());
        if let Some(at) = tail_byte {
            buf.0[at] = 1;
        }
        open(&path, (&buf as *const Later).cast())
    };
    let (rc, l) = later(None);
    assert_eq!(rc, 0, "{}", last_error());
    // The fields this version knows were read: it is an OFD handle, so a range works.
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    assert_eq!(unsafe { unilock_lock(l, UNILOCK_EXCLUSIVE, 5, 5, 0) }, 0);
    assert_eq!(unsafe { unilock_close(l) }, 0);
    for at in [std::mem::size_of::<unilock_options>(), 100, 127] {
        let (rc, l) = later(Some(at));
        assert_eq!(rc, -libc::E2BIG, "non-zero byte {at} of the tail");
        assert!(l.is_null());
        assert!(!last_error().is_empty());
    }
}

#[test]
fn unknown_bits_and_incompatible_backends_give_einval() {
    let dir = TempDir::new("capi-bits");
    let path = dir.file("f");
    for (what, backends, flags) in [
        ("backend bit 32", 32, 0),
        ("backend bit 31", 1 << 31, 0),
        ("flag bit 32", 0, 32),
        ("flag bit 31", 0, 1 << 31),
        ("OFD|POSIX", UNILOCK_BACKEND_OFD | UNILOCK_BACKEND_POSIX, 0),
    ] {
        let o = options(backends, flags);
        let (rc, l) = open(&path, &o);
        assert_eq!(rc, -libc::EINVAL, "{what}");
        assert!(l.is_null());
        assert!(!last_error().is_empty(), "{what}");
    }
}

#[test]
fn unsupported_backends_and_flags_give_eopnotsupp_with_a_message() {
    let dir = TempDir::new("capi-unsupported");
    for (what, backends, flags) in [
        (
            "DOTLOCK|FAIR",
            UNILOCK_BACKEND_DOTLOCK,
            UNILOCK_CREATE | UNILOCK_FAIR,
        ),
        (
            "DOTLOCK|UNLINK",
            UNILOCK_BACKEND_DOTLOCK,
            UNILOCK_CREATE | UNILOCK_UNLINK,
        ),
        (
            "FLOCK|OFD|UNLINK",
            UNILOCK_BACKEND_FLOCK | UNILOCK_BACKEND_OFD,
            UNILOCK_CREATE | UNILOCK_UNLINK,
        ),
    ] {
        let path = dir.0.join(what.replace('|', "-"));
        let o = options(backends, flags);
        let (rc, l) = open(&path, &o);
        assert_eq!(rc, -libc::EOPNOTSUPP, "{what}");
        assert!(l.is_null());
        let msg = last_error();
        assert!(msg.contains("support"), "{what}: last error {msg:?}");
        assert!(!path.exists(), "{what}: a refused open created the file");
    }
}

#[test]
fn bad_mode_gives_einval() {
    let dir = TempDir::new("capi-mode");
    let o = options(UNILOCK_BACKEND_OFD, UNILOCK_CREATE);
    let (rc, l) = open(&dir.file("f"), &o);
    assert_eq!(rc, 0);
    let (rc, other) = open(&dir.file("f"), &o);
    assert_eq!(rc, 0);
    for bad in [0, 3, u32::MAX] {
        assert_eq!(
            // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which
            // the library checks before reading).
            unsafe { unilock_lock(l, bad, 0, 0, 0) },
            -libc::EINVAL,
            "lock mode {bad}"
        );
        assert!(!last_error().is_empty());
        assert_eq!(
            // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which
            // the library checks before reading); holders are live locals.
            unsafe { unilock_query(l, bad, 0, 0, null_mut()) },
            -libc::EINVAL,
            "query mode {bad}"
        );
    }
    // Nothing was taken by the refused calls.
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    assert_eq!(
        unsafe { unilock_lock(other, UNILOCK_EXCLUSIVE, 0, 0, 0) },
        0
    );
    assert_eq!(unsafe { unilock_close(other) }, 0);
    assert_eq!(unsafe { unilock_close(l) }, 0);
}

#[test]
fn strerror_names_every_documented_code_with_a_static_string() {
    let documented = [
        libc::EAGAIN,
        libc::ETIMEDOUT,
        libc::ECANCELED,
        libc::EDEADLK,
        libc::EINVAL,
        libc::E2BIG,
        libc::EOPNOTSUPP,
        libc::EBUSY,
        libc::ENOLCK,
        libc::EBADF,
        libc::ENOTRECOVERABLE,
        libc::EACCES,
        libc::ENOENT,
        libc::EROFS,
        libc::ELOOP,
    ];
    let unknown = text(unilock_strerror(-9999));
    assert_eq!(unknown, "unknown error");
    assert_eq!(text(unilock_strerror(i32::MIN)), "unknown error");
    let mut seen = std::collections::HashMap::new();
    for e in documented {
        let p = unilock_strerror(-e);
        let s = text(p);
        assert!(!s.is_empty(), "errno {e}");
        assert_ne!(s, "unknown error", "errno {e}");
        if let Some(other) = seen.insert(s.clone(), e) {
            panic!("errno {e} and {other} share the text {s:?}");
        }
        // Static: the same pointer every time, unchanged by other calls.
        let _ = unilock_strerror(-9999);
        let _ = unilock_strerror(-libc::EINVAL);
        assert_eq!(unilock_strerror(-e), p, "errno {e}");
        assert_eq!(text(p), s, "errno {e}");
    }
}

#[test]
fn last_error_names_the_missing_path() {
    let dir = TempDir::new("capi-enoent");
    let path = dir.0.join("no-such-file");
    let o = options(UNILOCK_BACKEND_OFD, 0);
    let (rc, l) = open(&path, &o);
    assert_eq!(rc, -libc::ENOENT);
    assert!(l.is_null());
    let msg = last_error();
    assert!(
        msg.contains(path.to_str().unwrap()),
        "last error {msg:?} does not name {}",
        path.display()
    );
    // The message lives until the next failure, not the next call.
    let (rc, l) = open(&dir.file("exists"), &o);
    assert_eq!(rc, 0);
    assert_eq!(last_error(), msg);
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    assert_eq!(unsafe { unilock_close(l) }, 0);
}

#[test]
fn version_string_matches_the_version_macros() {
    let expected =
        format!("{UNILOCK_VERSION_MAJOR}.{UNILOCK_VERSION_MINOR}.{UNILOCK_VERSION_PATCH}");
    assert_eq!(text(unilock_version()), expected);
    assert_eq!(expected, env!("CARGO_PKG_VERSION"));
}

#[test]
fn full_cycle_through_the_c_functions() {
    let dir = TempDir::new("capi-cycle");
    let path = dir.0.join("f");
    let o = options(UNILOCK_BACKEND_OFD, UNILOCK_CREATE);
    let (rc, a) = open(&path, &o);
    assert_eq!(rc, 0, "{}", last_error());
    assert!(!a.is_null());
    let (rc, b) = open(&path, &o);
    assert_eq!(rc, 0);
    let me = std::process::id() as i32;
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();

    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    assert_eq!(unsafe { unilock_lock(a, UNILOCK_EXCLUSIVE, 10, 20, 0) }, 0);
    assert_eq!(
        unsafe { unilock_lock(b, UNILOCK_SHARED, 15, 1, 0) },
        -libc::EAGAIN
    );
    // Query, without and with a holder to fill.
    assert_eq!(
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading); holders are live locals.
        unsafe { unilock_query(b, UNILOCK_SHARED, 0, 0, null_mut()) },
        1,
        "{}",
        last_error()
    );
    let mut who = blank_holder();
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading); holders are live locals.
    assert_eq!(
        unsafe { unilock_query(b, UNILOCK_EXCLUSIVE, 12, 1, &mut who) },
        1
    );
    assert_eq!(who.backend, UNILOCK_BACKEND_OFD);
    assert_eq!(who.mode, UNILOCK_EXCLUSIVE);
    assert_eq!((who.start, who.len), (10, 20));
    assert_eq!(who.pid, me);
    assert_eq!(who.is_self, 1);
    assert_eq!(text(who.command.as_ptr()), comm.trim_end());
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading); holders are live locals.
    assert_eq!(
        unsafe { unilock_query(b, UNILOCK_EXCLUSIVE, 0, 10, null_mut()) },
        0
    );
    assert_eq!(
        unsafe { unilock_query(b, UNILOCK_EXCLUSIVE, 30, 0, null_mut()) },
        0
    );
    assert_eq!(
        unsafe { unilock_query(a, UNILOCK_EXCLUSIVE, 10, 20, null_mut()) },
        0
    );

    // List: the count alone, then into a buffer.
    let mut count = usize::MAX;
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading); buffers have room for `cap` holders and counts are live
    // locals.
    assert_eq!(unsafe { unilock_list(a, null_mut(), 0, &mut count) }, 0);
    assert_eq!(count, 1);
    let mut buf = [blank_holder(); 4];
    count = 0;
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading); buffers have room for `cap` holders and counts are live
    // locals.
    assert_eq!(
        unsafe { unilock_list(b, buf.as_mut_ptr(), buf.len(), &mut count) },
        0
    );
    assert_eq!(count, 1);
    let h = &buf[0];
    assert_eq!(
        (h.backend, h.mode, h.start, h.len, h.pid, h.is_self),
        (UNILOCK_BACKEND_OFD, UNILOCK_EXCLUSIVE, 10, 20, me, 1)
    );
    assert_eq!(buf[1].mode, 0, "list wrote past the count");

    // A second lock: count grows past a one-entry buffer, and says so.
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading); buffers have room for `cap` holders and counts are live
    // locals.
    assert_eq!(unsafe { unilock_lock(b, UNILOCK_SHARED, 40, 0, 0) }, 0);
    let mut one = [blank_holder(); 1];
    assert_eq!(
        unsafe { unilock_list(a, one.as_mut_ptr(), 1, &mut count) },
        0
    );
    assert_eq!(count, 2);

    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading); holders are live locals; buffers have room for `cap`
    // holders and counts are live locals.
    assert_eq!(unsafe { unilock_unlock(a, 0, 0) }, 0);
    assert_eq!(
        unsafe { unilock_query(b, UNILOCK_EXCLUSIVE, 0, 40, &mut who) },
        0
    );
    assert_eq!(unsafe { unilock_unlock(b, 40, 0) }, 0);
    assert_eq!(unsafe { unilock_list(a, null_mut(), 0, &mut count) }, 0);
    assert_eq!(count, 0);
    assert_eq!(unsafe { unilock_lock(b, UNILOCK_EXCLUSIVE, 0, 0, 0) }, 0);
    assert_eq!(unsafe { unilock_close(b) }, 0);
    assert_eq!(
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        unsafe { unilock_lock(a, UNILOCK_EXCLUSIVE, 0, 0, 0) },
        0,
        "close released b"
    );
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    assert_eq!(unsafe { unilock_close(a) }, 0);
}

#[test]
fn fd_cancel_and_touch_on_an_idle_handle() {
    let dir = TempDir::new("capi-fd");
    let path = dir.file("f");
    for backend in [
        UNILOCK_BACKEND_DEFAULT,
        UNILOCK_BACKEND_OFD,
        UNILOCK_BACKEND_POSIX,
    ] {
        let o = options(backend, 0);
        let (rc, l) = open(&path, &o);
        assert_eq!(rc, 0, "{}", last_error());
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        let fd = unsafe { unilock_fd(l) };
        assert!(fd > 2, "backend {backend}: fd {fd}");
        // SAFETY: fstat and fcntl(F_GETFD) on a descriptor the handle owns.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
        assert_eq!(st.st_ino, std::fs::metadata(&path).unwrap().ino());
        assert_ne!(unsafe { libc::fcntl(fd, libc::F_GETFD) }, -1);
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        assert_eq!(
            unsafe { unilock_cancel(l) },
            0,
            "backend {backend}: nothing to cancel"
        );
        assert_eq!(unsafe { unilock_touch(l) }, 0);
        // A cancel while idle is not remembered: the next try succeeds.
        assert_eq!(unsafe { unilock_lock(l, UNILOCK_EXCLUSIVE, 0, 0, 0) }, 0);
        assert_eq!(unsafe { unilock_close(l) }, 0);
    }
}

#[test]
fn open_fd_duplicates_the_callers_descriptor() {
    let dir = TempDir::new("capi-openfd");
    let path = dir.file("f");
    let mut l: *mut unilock = null_mut();
    // SAFETY: paths are NUL-terminated, options are whole structs, out pointers are live
    // locals.
    assert_eq!(unsafe { unilock_open_fd(-1, null(), &mut l) }, -libc::EBADF);
    assert!(l.is_null());
    let file = std::fs::File::open(&path).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: paths are NUL-terminated, options are whole structs, out pointers are live
    // locals; handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    assert_eq!(
        unsafe { unilock_open_fd(raw, null(), &mut l) },
        0,
        "{}",
        last_error()
    );
    assert_ne!(unsafe { unilock_fd(l) }, raw);
    drop(file);
    // The handle keeps its own descriptor: it still locks the file.
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    assert_eq!(unsafe { unilock_lock(l, UNILOCK_EXCLUSIVE, 0, 0, 0) }, 0);
    let o = options(0, 0);
    let (rc, other) = open(&path, &o);
    assert_eq!(rc, 0);
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    assert_eq!(
        unsafe { unilock_lock(other, UNILOCK_SHARED, 0, 0, 0) },
        -libc::EAGAIN
    );
    assert_eq!(unsafe { unilock_close(other) }, 0);
    assert_eq!(unsafe { unilock_close(l) }, 0);
}

#[test]
fn a_failed_open_leaves_out_null() {
    let dir = TempDir::new("capi-outnull");
    let missing = dir.0.join("no/such/dir");
    let o = options(0, UNILOCK_CREATE);
    let mut l = std::ptr::dangling_mut::<unilock>();
    assert_eq!(
        // SAFETY: paths are NUL-terminated, options are whole structs, out pointers are live
        // locals.
        unsafe { unilock_open(cpath(&missing).as_ptr(), &o, &mut l) },
        -libc::ENOENT
    );
    assert!(l.is_null(), "unilock_open left {l:?} in *out");
    let mut l = std::ptr::dangling_mut::<unilock>();
    // SAFETY: paths are NUL-terminated, options are whole structs, out pointers are live
    // locals.
    assert_eq!(unsafe { unilock_open_fd(-1, null(), &mut l) }, -libc::EBADF);
    assert!(l.is_null(), "unilock_open_fd left {l:?} in *out");
    // A closed (NULL) handle is then safe to close.
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    assert_eq!(unsafe { unilock_close(l) }, 0);
}

/// A pointer used after its close is refused, even once the library has made many
/// handles since, and never acts on a newer handle.
#[test]
fn a_closed_handle_gives_ebadf_and_never_acts_on_a_newer_one() {
    let dir = TempDir::new("capi-stale");
    let path = dir.file("f");
    let o = options(UNILOCK_BACKEND_OFD, UNILOCK_CREATE);
    let (rc, stale) = open(&path, &o);
    assert_eq!(rc, 0, "{}", last_error());
    // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
    // library checks before reading).
    assert_eq!(unsafe { unilock_close(stale) }, 0);
    assert_eq!(
        unsafe { unilock_close(stale) },
        -libc::EBADF,
        "a second close"
    );
    assert!(last_error().contains("closed"), "{}", last_error());
    for _ in 0..2000 {
        let (rc, l) = open(&path, &o);
        assert_eq!(rc, 0, "{}", last_error());
        assert_ne!(l, stale, "a new handle got a closed handle's address");
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        assert_eq!(unsafe { unilock_lock(l, UNILOCK_EXCLUSIVE, 0, 0, 0) }, 0);
        let mut count = 0usize;
        let mut who = blank_holder();
        for (what, rc) in [
            // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which
            // the library checks before reading).
            ("lock", unsafe {
                unilock_lock(stale, UNILOCK_EXCLUSIVE, 0, 0, 0)
            }),
            ("unlock", unsafe { unilock_unlock(stale, 0, 0) }),
            (
                "query",
                // SAFETY: handles come from unilock_open (or are NULL, closed or foreign,
                // which the library checks before reading); holders are live locals.
                unsafe { unilock_query(stale, UNILOCK_EXCLUSIVE, 0, 0, &mut who) },
            ),
            // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which
            // the library checks before reading); buffers have room for `cap` holders and
            // counts are live locals.
            ("list", unsafe {
                unilock_list(stale, null_mut(), 0, &mut count)
            }),
            ("cancel", unsafe { unilock_cancel(stale) }),
            ("fd", unsafe { unilock_fd(stale) }),
        ] {
            assert_eq!(rc, -libc::EBADF, "{what} on a closed handle");
        }
        // The new handle still holds its lock.
        let (rc, probe) = open(&path, &o);
        assert_eq!(rc, 0);
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        assert_eq!(
            unsafe { unilock_lock(probe, UNILOCK_SHARED, 0, 0, 0) },
            -libc::EAGAIN
        );
        assert_eq!(unsafe { unilock_close(probe) }, 0);
        assert_eq!(unsafe { unilock_close(l) }, 0);
    }
}

/// A handle pointer that can cross threads in a test.
#[derive(Clone, Copy)]
struct Shared(*mut unilock);
// SAFETY: the C API is thread-safe; the tests only pass the pointer along.
unsafe impl Send for Shared {}

/// A peer process holding an exclusive lock on `path` through backends `bits`
/// (handle `p`).
fn peer_holding(path: &Path, bits: u32) -> Peer {
    let mut peer = Peer::spawn();
    assert_eq!(
        peer.cmd(&format!("open_bits p {} {bits}", path.display())),
        "ok"
    );
    assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok");
    peer
}

/// `unilock_close` while another thread waits on the handle ends that wait with
/// `-ECANCELED`, returns once it has returned, and leaves nothing held or waiting.
#[test]
fn close_ends_a_wait_on_the_handle_in_every_backend() {
    let dir = TempDir::new("capi-closewait");
    for (name, bits) in [
        ("flock", UNILOCK_BACKEND_FLOCK),
        ("ofd", UNILOCK_BACKEND_OFD),
        ("posix", UNILOCK_BACKEND_POSIX),
        ("dotlock", UNILOCK_BACKEND_DOTLOCK),
    ] {
        // Not created here: a DOTLOCK path is the lock file itself.
        let path = dir.0.join(name);
        let mut peer = peer_holding(&path, bits);
        let o = options(bits, UNILOCK_CREATE);
        let (rc, l) = open(&path, &o);
        assert_eq!(rc, 0, "{name}: {}", last_error());
        let h = Shared(l);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let h = h;
            // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which
            // the library checks before reading).
            tx.send(unsafe { unilock_lock(h.0, UNILOCK_EXCLUSIVE, 0, 0, -1) })
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        let start = std::time::Instant::now();
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        assert_eq!(unsafe { unilock_close(l) }, 0, "{name}: {}", last_error());
        let took = start.elapsed();
        let rc = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(rc, Ok(-libc::ECANCELED), "{name}: the wait did not end");
        assert!(
            took < std::time::Duration::from_secs(5),
            "{name}: close took {took:?}"
        );
        // Nothing of the closed handle is left: once the peer lets go, the lock is free.
        assert_eq!(peer.cmd("unlock p 0 0"), "ok");
        assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok", "{name}");
    }
}

/// A close that races the start of a lock call on another thread: the call either
/// never starts (`-EBADF`) or is ended (`-ECANCELED`); nothing hangs.
#[test]
fn close_racing_the_start_of_a_wait_never_hangs() {
    let dir = TempDir::new("capi-closerace");
    let path = dir.file("f");
    let mut peer = Peer::spawn();
    assert_eq!(peer.cmd(&format!("open p {} ofd", path.display())), "ok");
    assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok");
    let o = options(UNILOCK_BACKEND_OFD, UNILOCK_CREATE);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let (rc, l) = open(&path, &o);
        assert_eq!(rc, 0);
        let h = Shared(l);
        let waiter = std::thread::spawn(move || {
            let h = h;
            // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which
            // the library checks before reading).
            unsafe { unilock_lock(h.0, UNILOCK_EXCLUSIVE, 0, 0, -1) }
        });
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        assert_eq!(unsafe { unilock_close(l) }, 0);
        let rc = waiter.join().unwrap();
        assert!(
            rc == -libc::ECANCELED || rc == -libc::EBADF,
            "the lock call returned {rc}"
        );
        seen.insert(rc);
    }
    assert_eq!(peer.cmd("unlock p 0 0"), "ok");
    assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok");
    eprintln!("outcomes seen: {seen:?}");
}

/// A creation mode holds permission bits only: setuid, setgid, sticky and unknown
/// bits are refused before anything is created.
#[test]
fn a_mode_beyond_the_permission_bits_gives_einval() {
    let dir = TempDir::new("capi-mode");
    for (i, bits) in [
        UNILOCK_BACKEND_FLOCK,
        UNILOCK_BACKEND_OFD,
        UNILOCK_BACKEND_POSIX,
        UNILOCK_BACKEND_DOTLOCK,
    ]
    .into_iter()
    .enumerate()
    {
        for mode in [0o4600u32, 0o2600, 0o1600, 0o7777, 0o10600, 0xFFFF_FFFF] {
            let path = dir.0.join(format!("f{i}-{mode:o}"));
            let mut o = options(bits, UNILOCK_CREATE);
            o.mode = mode;
            let (rc, l) = open(&path, &o);
            assert_eq!(rc, -libc::EINVAL, "backends {bits}, mode {mode:#o}");
            assert!(l.is_null());
            assert!(last_error().contains("mode"), "{}", last_error());
            assert!(!path.exists(), "mode {mode:#o} created {}", path.display());
        }
        let path = dir.0.join(format!("ok{i}"));
        let mut o = options(bits, UNILOCK_CREATE);
        o.mode = 0o640;
        let (rc, l) = open(&path, &o);
        assert_eq!(rc, 0, "{}", last_error());
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        assert_eq!(unsafe { unilock_lock(l, UNILOCK_EXCLUSIVE, 0, 0, 0) }, 0);
        let st = std::fs::metadata(&path).unwrap();
        assert_eq!(st.mode() & 0o7777 & !0o640, 0, "{:o}", st.mode());
        // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which the
        // library checks before reading).
        assert_eq!(unsafe { unilock_close(l) }, 0);
    }
}

/// The descriptors this process has open.
fn open_fds() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A closed handle keeps no descriptor, though its memory stays for a while (its
/// cancel eventfd and a DOTLOCK's inotify descriptor, made by a wait, go with it).
#[test]
fn closed_handles_keep_no_descriptor() {
    let dir = TempDir::new("capi-fds");
    for (name, bits) in [
        ("ofd", UNILOCK_BACKEND_OFD),
        ("dotlock", UNILOCK_BACKEND_DOTLOCK),
    ] {
        let path = dir.0.join(name);
        let _peer = peer_holding(&path, bits);
        let o = options(bits, UNILOCK_CREATE);
        // One round first: the library's own lasting descriptors, if any, are made.
        let round = || {
            let (rc, l) = open(&path, &o);
            assert_eq!(rc, 0, "{name}: {}", last_error());
            assert_eq!(
                // SAFETY: handles come from unilock_open (or are NULL, closed or foreign,
                // which the library checks before reading).
                unsafe { unilock_lock(l, UNILOCK_EXCLUSIVE, 0, 0, 5) },
                -libc::ETIMEDOUT
            );
            // SAFETY: handles come from unilock_open (or are NULL, closed or foreign, which
            // the library checks before reading).
            assert_eq!(unsafe { unilock_close(l) }, 0);
        };
        round();
        // Other tests of this process open descriptors meanwhile: a leak shows as one
        // more per round, far beyond their few.
        let before = open_fds().len();
        for _ in 0..50 {
            round();
        }
        let after = open_fds().len();
        assert!(
            after < before + 10,
            "{name}: {before} descriptors before 50 rounds, {after} after"
        );
    }
}

/// `unilock_holder_pids` names every process that has a lock's open file description:
/// this process (its handle holds it) and a child that inherited the descriptor, for
/// the record `unilock_list` filled; none once the lock is gone; NULL arguments are
/// refused.
#[test]
fn holder_pids_name_every_process_sharing_the_locks_descriptor() {
    let dir = TempDir::new("holder-pids");
    let path = dir.0.join("f");
    let o = options(UNILOCK_BACKEND_FLOCK, UNILOCK_CREATE | UNILOCK_INHERIT);
    let (rc, l) = open(&path, &o);
    assert_eq!(rc, 0, "{}", last_error());
    // SAFETY: `l` is a live handle from unilock_open.
    let fd = unsafe {
        assert_eq!(unilock_lock(l, UNILOCK_EXCLUSIVE, 0, 0, 0), 0);
        unilock_fd(l)
    };
    // A child that keeps the inherited descriptor open.
    let mut child = std::process::Command::new("sleep")
        .arg("10")
        .spawn()
        .unwrap();
    let child_pid = child.id() as i32;
    let fdinfo = format!("/proc/{child_pid}/fdinfo/{fd}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&fdinfo).is_ok_and(|t| t.contains("lock:"))
        || std::fs::read_to_string(format!("/proc/{child_pid}/comm"))
            .is_ok_and(|c| c.trim() != "sleep")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the child has no fd {fd}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut record = [blank_holder()];
    let mut count = 0usize;
    // SAFETY: a live handle, room for one record, a valid count.
    assert_eq!(
        unsafe { unilock_list(l, record.as_mut_ptr(), 1, &mut count) },
        0
    );
    assert_eq!(count, 1);
    let me = std::process::id() as i32;
    assert_eq!((record[0].pid, record[0].is_self), (me, 1));
    let mut pids = [0i32; 4];
    // SAFETY: valid pointers, `pids` has room for 4.
    let rc = unsafe { unilock_holder_pids(l, &record[0], pids.as_mut_ptr(), 4, &mut count) };
    assert_eq!(rc, 0, "{}", last_error());
    let mut want = [me, child_pid];
    want.sort_unstable();
    assert_eq!(&pids[..count], &want[..]);
    // Counting only.
    // SAFETY: NULL with cap 0 is allowed; `count` is valid.
    assert_eq!(
        unsafe { unilock_holder_pids(l, &record[0], null_mut(), 0, &mut count) },
        0
    );
    assert_eq!(count, 2);
    // SAFETY: NULL arguments are refused before any use.
    unsafe {
        assert_eq!(
            unilock_holder_pids(l, null(), pids.as_mut_ptr(), 4, &mut count),
            -libc::EINVAL
        );
        assert_eq!(
            unilock_holder_pids(l, &record[0], null_mut(), 4, &mut count),
            -libc::EINVAL
        );
        assert_eq!(
            unilock_holder_pids(l, &record[0], pids.as_mut_ptr(), 4, null_mut()),
            -libc::EINVAL
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    // SAFETY: a live handle.
    assert_eq!(unsafe { unilock_unlock(l, 0, 0) }, 0);
    // SAFETY: valid pointers.
    let rc = unsafe { unilock_holder_pids(l, &record[0], pids.as_mut_ptr(), 4, &mut count) };
    assert_eq!((rc, count), (0, 0));
    // SAFETY: a live handle, closed once.
    assert_eq!(unsafe { unilock_close(l) }, 0);
}
