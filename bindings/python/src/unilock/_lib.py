"""Loading libunilock with ctypes, and the C declarations.

The loader tries, in order, and takes the first that loads, is libunilock and has the
major version this binding speaks:

1. the file named by ``$UNILOCK_LIBRARY``, when it is set (how tests and users point
   at a particular build);
2. the library bundled in this package, ``unilock/_native/libunilock.so.0`` (a
   platform wheel carries it; a pure wheel does not);
3. the system's: ``ctypes.util.find_library("unilock")``, then the SONAME
   ``libunilock.so.0`` (the dynamic loader's search path).

When all fail, :class:`LibraryNotFoundError` names every place tried and why it failed.

ctypes releases the GIL around every foreign call (``ctypes.CDLL``), so a thread
waiting in ``unilock_lock`` lets the others run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

#: The major version this binding speaks (``UNILOCK_VERSION_MAJOR``).
ABI_MAJOR = 0
SONAME = "libunilock.so.%d" % ABI_MAJOR

BACKEND_DEFAULT = 0
BACKEND_FLOCK = 1
BACKEND_OFD = 2
BACKEND_POSIX = 4
BACKEND_DOTLOCK = 8
BACKEND_ETCD = 16

SHARED = 1
EXCLUSIVE = 2

CREATE = 1
FOLLOW = 2
INHERIT = 4
UNLINK = 8
FAIR = 16


class Options(ctypes.Structure):
    """``unilock_options``: read by its ``size``, so it may grow. A library that
    predates the ETCD fields accepts this larger struct as long as they are zero (it
    refuses non-zero bytes it does not know with E2BIG). The strings are read by
    ``unilock_open`` and not kept: they need to live only for that call."""

    _fields_ = [
        ("size", ctypes.c_uint32),
        ("backends", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("mode", ctypes.c_uint32),
        ("stale_after_s", ctypes.c_uint32),
        ("lease_ttl_s", ctypes.c_uint32),
        ("endpoints", ctypes.c_char_p),
        ("ca_file", ctypes.c_char_p),
        ("cert_file", ctypes.c_char_p),
        ("key_file", ctypes.c_char_p),
        ("user", ctypes.c_char_p),
        ("password", ctypes.c_char_p),
    ]

    def __repr__(self) -> str:
        # Never the password, nor the other strings (paths and user are harmless,
        # but a repr that shows some and hides one invites copying it around).
        return f"<unilock_options backends={self.backends:#x} flags={self.flags:#x}>"


class CHolder(ctypes.Structure):
    """``unilock_holder``."""

    _fields_ = [
        ("backend", ctypes.c_uint32),
        ("mode", ctypes.c_uint32),
        ("start", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("pid", ctypes.c_int32),
        ("self", ctypes.c_int32),
        ("command", ctypes.c_char * 16),
    ]


_handle_p = ctypes.c_void_p

# name: (restype, argtypes)
_SIGNATURES = {
    "unilock_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "unilock_last_error": (ctypes.c_char_p, []),
    "unilock_options_init": (None, [ctypes.POINTER(Options)]),
    "unilock_open": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(Options), ctypes.POINTER(_handle_p)]),
    "unilock_open_fd": (ctypes.c_int, [ctypes.c_int, ctypes.POINTER(Options), ctypes.POINTER(_handle_p)]),
    "unilock_close": (ctypes.c_int, [_handle_p]),
    "unilock_lock": (ctypes.c_int, [_handle_p, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64]),
    "unilock_unlock": (ctypes.c_int, [_handle_p, ctypes.c_uint64, ctypes.c_uint64]),
    "unilock_query": (
        ctypes.c_int,
        [_handle_p, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint64, ctypes.POINTER(CHolder)],
    ),
    "unilock_list": (
        ctypes.c_int,
        [_handle_p, ctypes.POINTER(CHolder), ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)],
    ),
    "unilock_holder_pids": (
        ctypes.c_int,
        [
            _handle_p,
            ctypes.POINTER(CHolder),
            ctypes.POINTER(ctypes.c_int32),
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_size_t),
        ],
    ),
    "unilock_cancel": (ctypes.c_int, [_handle_p]),
    "unilock_touch": (ctypes.c_int, [_handle_p]),
    "unilock_fd": (ctypes.c_int, [_handle_p]),
    "unilock_version": (ctypes.c_char_p, []),
}

# Functions of later minor versions: a library without them still loads (for the file
# backends), and the binding's methods that need them raise OSError(EOPNOTSUPP).
_OPTIONAL_SIGNATURES = {
    "unilock_fence": (ctypes.c_int, [_handle_p, ctypes.POINTER(ctypes.c_uint64)]),
    "unilock_holder_host": (
        ctypes.c_int,
        [_handle_p, ctypes.POINTER(CHolder), ctypes.c_char_p, ctypes.c_size_t],
    ),
}


class LibraryNotFoundError(ImportError):
    """libunilock could not be loaded; the message says every place tried and why."""


def _declare(lib: ctypes.CDLL) -> None:
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    for name, (restype, argtypes) in _OPTIONAL_SIGNATURES.items():
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype = restype
            fn.argtypes = argtypes


def has(name: str) -> bool:
    """Whether the loaded library has the function ``name`` (see _OPTIONAL_SIGNATURES)."""
    return hasattr(lib(), name)


#: Where a platform wheel puts the library (bindings/python/build_backend/unilock_build.py).
BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native", SONAME)


def _candidates(reasons: list[str]):
    env = os.environ.get("UNILOCK_LIBRARY")
    if env:
        yield "$UNILOCK_LIBRARY", env
    else:
        reasons.append("$UNILOCK_LIBRARY is not set")
    if os.path.exists(BUNDLED):
        yield "the bundled library", BUNDLED
    else:
        reasons.append(f"no library is bundled in the package ({BUNDLED} is missing: a pure wheel or an editable install)")
    found = ctypes.util.find_library("unilock")
    if found:
        yield 'ctypes.util.find_library("unilock")', found
    else:
        reasons.append('ctypes.util.find_library("unilock") found nothing')
    yield "the SONAME", SONAME


def _open_library() -> ctypes.CDLL:
    reasons: list[str] = []
    for how, name in _candidates(reasons):
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            reasons.append(f"{how} {name!r}: {e}")
            continue
        try:
            _declare(lib)
        except AttributeError as e:
            reasons.append(f"{how} {name!r} is not libunilock: {e}")
            continue
        version = lib.unilock_version().decode()
        major = int(version.split(".", 1)[0])
        if major != ABI_MAJOR:
            reasons.append(f"{how} {name!r} is libunilock {version}, this binding needs major version {ABI_MAJOR}")
            continue
        return lib
    raise LibraryNotFoundError(
        "cannot load libunilock: "
        + "; ".join(reasons)
        + ". Install a platform wheel of unilock, or libunilock itself (make install, or a"
        " distribution package), or set UNILOCK_LIBRARY to the path of libunilock.so"
    )


_lib: ctypes.CDLL | None = None
_load_lock = threading.Lock()


def lib() -> ctypes.CDLL:
    """The loaded library (loaded on first use)."""
    global _lib
    if _lib is None:
        with _load_lock:
            if _lib is None:
                _lib = _open_library()
    return _lib


def last_error() -> str:
    """This thread's detail of its last failed call."""
    return lib().unilock_last_error().decode(errors="replace")


def strerror(rc: int) -> str:
    return lib().unilock_strerror(rc).decode(errors="replace")


def encode_path(path: "str | bytes") -> bytes:
    """``path`` as the bytes the C library gets. A NUL byte raises ValueError, as
    ``os.open`` does: C would see a shorter path and lock another file."""
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError("embedded null byte")
    return raw


def version() -> str:
    """The running library's version, "MAJOR.MINOR.PATCH"."""
    return lib().unilock_version().decode()
