"""unilock.Lock: the full C API as a Python object."""

from __future__ import annotations

import ctypes
import errno
import math
import os
import threading
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple, Union

from . import _call, _lib

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
Range = Tuple[int, int]

_BACKEND_BITS = {
    "default": _lib.BACKEND_DEFAULT,
    "flock": _lib.BACKEND_FLOCK,
    "ofd": _lib.BACKEND_OFD,
    "posix": _lib.BACKEND_POSIX,
    "dotlock": _lib.BACKEND_DOTLOCK,
}
# Spelled as the library, the command and the Go binding spell them.
_BACKEND_NAMES = {bit: name.upper() for name, bit in _BACKEND_BITS.items() if bit}
_MODES = {
    "exclusive": _lib.EXCLUSIVE,
    "x": _lib.EXCLUSIVE,
    "ex": _lib.EXCLUSIVE,
    "write": _lib.EXCLUSIVE,
    "shared": _lib.SHARED,
    "s": _lib.SHARED,
    "sh": _lib.SHARED,
    "read": _lib.SHARED,
}
_MODE_NAMES = {_lib.SHARED: "shared", _lib.EXCLUSIVE: "exclusive"}


def error(rc: int, detail: str, path: Optional[str]) -> OSError:
    """The exception for a negative return ``rc``: ``OSError(-rc, message, path)``, which
    Python turns into BlockingIOError (EAGAIN), TimeoutError (ETIMEDOUT),
    FileNotFoundError, PermissionError, ...; ECANCELED gives InterruptedError.

    The message is Python's own for the errno (``[Errno 2] No such file or directory:
    'path'``, as ``open()`` says), followed by the library's detail in parentheses when
    the detail says more than the failed call, the path and the errno (a reason such
    as "symbolic link refused" or "flags has unknown bits"). The library's detail is
    kept whole in the exception's ``detail`` attribute."""
    code = -rc
    message = os.strerror(code)
    reason = _reason(detail, rc, path)
    if reason:
        message = f"{message} ({reason})"
    exc_type = InterruptedError if code == errno.ECANCELED else OSError
    exc = exc_type(code, message, path)
    exc.detail = detail or _lib.strerror(rc)
    return exc


def _reason(detail: str, rc: int, path: Optional[str]) -> str:
    """What the library's detail says beyond the errno and the path: "" for "CALL
    PATH: DESCRIPTION", "REASON" for "REASON (DESCRIPTION)"."""
    description = _lib.strerror(rc)
    if detail in ("", description):
        return ""
    if detail.endswith(f" ({description})"):
        return detail[: -len(description) - 3]
    if detail.endswith(f": {description}"):
        head = detail[: -len(description) - 2]
        if path is not None and head.split(" ", 1)[-1] == path:
            return ""
        return head
    return detail


def parse_mode(mode: Union[str, int]) -> int:
    if isinstance(mode, int) and mode in _MODE_NAMES:
        return mode
    if isinstance(mode, str) and mode.lower() in _MODES:
        return _MODES[mode.lower()]
    raise ValueError(f"mode must be 'exclusive' or 'shared', not {mode!r}")


def parse_backend(backend: Union[str, int, Iterable[str]]) -> int:
    """``"flock"``, ``"ofd"``, ``"posix"``, ``"dotlock"``, a set of them as
    ``"dotlock+posix"`` or an iterable of names, or the C bits as an int."""
    if isinstance(backend, int):
        return backend
    names = backend.replace(",", "+").split("+") if isinstance(backend, str) else list(backend)
    bits = 0
    for name in names:
        key = name.strip().lower()
        if key not in _BACKEND_BITS:
            raise ValueError(f"unknown backend {name!r}: use flock, ofd, posix or dotlock")
        bits |= _BACKEND_BITS[key]
    return bits


def timeout_ms(timeout: Optional[float]) -> int:
    """Seconds (None or negative: forever; 0: try once) as the C ``timeout_ms``."""
    if timeout is None or timeout < 0:
        return -1
    if timeout == 0:
        return 0
    return max(1, math.ceil(timeout * 1000))


@dataclass(frozen=True)
class Holder:
    """One lock on a file and who holds it (``unilock_holder``)."""

    #: "FLOCK", "OFD", "POSIX" or "DOTLOCK", as the library and the command name them.
    backend: str
    mode: str
    start: int
    #: 0 means to the end of the file and beyond.
    length: int
    #: A live process that holds it; None when it cannot be known.
    pid: Optional[int]
    #: True when this process holds it.
    this_process: bool
    #: The holder's command name; "" when unknown.
    command: str
    #: Every live process that has the lock (for flock and OFD locks, each process
    #: sharing the open file description), ascending (``unilock_holder_pids``).
    pids: Tuple[int, ...] = ()

    @classmethod
    def _from_c(cls, h: _lib.CHolder, pids: Tuple[int, ...] = ()) -> "Holder":
        return cls(
            backend=_BACKEND_NAMES.get(h.backend, str(h.backend)),
            mode=_MODE_NAMES.get(h.mode, str(h.mode)),
            start=h.start,
            length=h.len,
            pid=None if h.pid < 0 else h.pid,
            this_process=bool(h.self),
            command=h.command.decode(errors="replace"),
            pids=pids,
        )


_UNSET = object()


class Lock:
    """A lock handle on one file: ``unilock_open`` + ``unilock_lock`` and the rest.

    ``with Lock(path) as lk:`` opens the file, takes ``mode`` on ``range`` waiting up to
    ``timeout`` seconds (None: forever, 0: one try), and on exit releases it and closes
    the handle. Outside ``with``: :meth:`lock`, :meth:`unlock`, :meth:`query`,
    :meth:`holders`, :meth:`cancel`, :meth:`close`. The file is opened on first use.

    Failures raise ``OSError(errno, detail, path)``: BlockingIOError when the lock is
    held and ``timeout`` is 0, TimeoutError at the timeout, InterruptedError (errno
    ECANCELED) when :meth:`cancel` ended the wait, PermissionError, FileNotFoundError...

    Each Lock is its own lock owner, in every backend: two Locks on one file exclude
    each other, in one thread too. Methods are thread-safe; one lock or unlock runs at a
    time per Lock (a second one at the same moment gets errno EBUSY).
    """

    def __init__(
        self,
        path: PathLike,
        mode: Union[str, int] = "exclusive",
        timeout: Optional[float] = None,
        backend: Union[str, int, Iterable[str]] = "flock",
        range: Range = (0, 0),  # noqa: A002 - the C API's word
        *,
        create: bool = True,
        follow: bool = False,
        inherit: bool = False,
        unlink: bool = False,
        fair: bool = False,
        permissions: int = 0o600,
        stale_after: float = 0,
    ) -> None:
        self.path = os.fsdecode(os.fspath(path))
        self.mode = parse_mode(mode)
        self.timeout = timeout
        self.range = _check_range(range)
        self._options = _lib.Options()
        self._options.size = ctypes.sizeof(_lib.Options)
        self._options.backends = parse_backend(backend)
        self._options.flags = (
            (_lib.CREATE if create else 0)
            | (_lib.FOLLOW if follow else 0)
            | (_lib.INHERIT if inherit else 0)
            | (_lib.UNLINK if unlink else 0)
            | (_lib.FAIR if fair else 0)
        )
        self._options.mode = permissions
        self._options.stale_after_s = math.ceil(stale_after)
        self._handle: Optional[int] = None
        # Guards _handle and _busy; close() waits on it until no call uses the handle.
        self._mutex = threading.Lock()
        self._idle = threading.Condition(self._mutex)
        self._busy = 0

    # -- the handle ---------------------------------------------------------------

    def open(self) -> "Lock":
        """Opens the file now (it is otherwise opened by the first call that needs it)."""
        with self._mutex:
            self._open_locked()
        return self

    def _open_locked(self) -> int:
        if self._handle is None:
            out = ctypes.c_void_p()
            L = _lib.lib()
            rc = L.unilock_open(_lib.encode_path(self.path), ctypes.byref(self._options), ctypes.byref(out))
            if rc < 0:
                raise error(rc, L.unilock_last_error().decode(errors="replace"), self.path)
            self._handle = out.value
        return self._handle

    def _acquire_handle(self) -> int:
        with self._mutex:
            handle = self._open_locked()
            self._busy += 1
            return handle

    def _release_handle(self) -> None:
        with self._mutex:
            self._busy -= 1
            if self._busy == 0:
                self._idle.notify_all()

    def _simple(self, fn_name: str, *args) -> int:
        handle = self._acquire_handle()
        try:
            L = _lib.lib()
            rc = getattr(L, fn_name)(handle, *args)
            if rc < 0:
                raise error(rc, L.unilock_last_error().decode(errors="replace"), self.path)
            return rc
        finally:
            self._release_handle()

    # -- locking ------------------------------------------------------------------

    def lock(self, mode: Union[str, int, None] = None, *, timeout=_UNSET, range: Optional[Range] = None) -> "Lock":  # noqa: A002
        """Takes (or converts to) ``mode`` on ``range``, waiting up to ``timeout`` seconds
        (defaults: the constructor's). Waiting sleeps in the kernel; :meth:`cancel` or
        Ctrl-C end it, and a KeyboardInterrupt never leaves the lock taken."""
        m = self.mode if mode is None else parse_mode(mode)
        start, length = self.range if range is None else _check_range(range)
        ms = timeout_ms(self.timeout if timeout is _UNSET else timeout)
        handle = self._acquire_handle()
        try:
            result = _call.lock(handle, m, start, length, ms, lambda h: _lib.lib().unilock_unlock(h, start, length))
        finally:
            self._release_handle()
        if result.rc < 0:
            raise error(result.rc, result.detail, self.path)
        return self

    def try_lock(self, mode: Union[str, int, None] = None, *, range: Optional[Range] = None) -> bool:  # noqa: A002
        """One attempt: True when taken, False when held elsewhere."""
        try:
            self.lock(mode, timeout=0, range=range)
        except BlockingIOError:
            return False
        return True

    def unlock(self, range: Optional[Range] = None) -> None:  # noqa: A002
        """Releases ``range`` (default: everything this handle holds)."""
        start, length = (0, 0) if range is None else _check_range(range)
        if self._handle is None:
            return
        self._simple("unilock_unlock", start, length)

    def cancel(self) -> bool:
        """Cancels the lock call in progress on this Lock, from any thread: it raises
        InterruptedError (errno ECANCELED). Returns True when a call was in progress. A
        cancel with no call in progress does nothing (it is not remembered)."""
        with self._mutex:
            if self._handle is None:
                return False
            return _call.cancel(self._handle)

    # -- questions ----------------------------------------------------------------

    def query(self, mode: Union[str, int, None] = None, *, range: Optional[Range] = None) -> Optional[Holder]:  # noqa: A002
        """None when ``mode`` on ``range`` could be taken now (nothing is taken), else
        one conflicting lock and who holds it."""
        m = self.mode if mode is None else parse_mode(mode)
        start, length = self.range if range is None else _check_range(range)
        who = _lib.CHolder()
        rc = self._simple("unilock_query", m, start, length, ctypes.byref(who))
        return Holder._from_c(who, self._pids(who)) if rc == 1 else None

    def holders(self) -> list:
        """Every lock on the file, from any process and any mechanism (like lslocks)."""
        cap = 8
        while True:
            buf = (_lib.CHolder * cap)()
            count = ctypes.c_size_t()
            self._simple("unilock_list", buf, cap, ctypes.byref(count))
            if count.value <= cap:
                return [Holder._from_c(buf[i], self._pids(buf[i])) for i in range(count.value)]
            cap = count.value + 8

    def _pids(self, holder: _lib.CHolder) -> Tuple[int, ...]:
        cap = 8
        while True:
            pids = (ctypes.c_int32 * cap)()
            count = ctypes.c_size_t()
            self._simple("unilock_holder_pids", ctypes.byref(holder), pids, cap, ctypes.byref(count))
            if count.value <= cap:
                return tuple(pids[: count.value])
            cap = count.value + 8

    def touch(self) -> None:
        """DOTLOCK: refreshes the lock file's time; the kernel backends: nothing."""
        self._simple("unilock_touch")

    def fileno(self) -> int:
        """The descriptor the handle locks through (owned by the handle: do not close it)."""
        return self._simple("unilock_fd")

    @property
    def closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        """Releases what the handle holds and closes it. A wait in progress on it is
        cancelled first. The Lock may be used again: the file is then reopened."""
        with self._mutex:
            handle = self._handle
            if handle is None:
                return
            L = _lib.lib()
            while self._busy:
                L.unilock_cancel(handle)
                self._idle.wait(0.001)
            self._handle = None
            rc = L.unilock_close(handle)
            if rc < 0:
                raise error(rc, L.unilock_last_error().decode(errors="replace"), self.path)

    def __enter__(self) -> "Lock":
        try:
            self.lock()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._handle is not None and _lib._lib is not None:
                _lib._lib.unilock_close(self._handle)
                self._handle = None
        except Exception:  # noqa: BLE001,S110 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else "open"
        return f"<unilock.Lock {self.path!r} {_MODE_NAMES[self.mode]} {state}>"


def _check_range(r: Range) -> Range:
    start, length = r
    if start < 0 or length < 0:
        raise ValueError(f"range must be (start >= 0, length >= 0), not {r!r}")
    return int(start), int(length)
