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
    "etcd": _lib.BACKEND_ETCD,
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


class LockLost(OSError):
    """errno ENOLCK: the handle does not hold the lock it took, and holds nothing now.

    ETCD: the lock's lease expired or was revoked (the process was paused, or cut off
    from etcd, for a whole lease TTL; or someone ran ``etcdctl lease revoke``), so
    another process may hold the lock already. Also a POSIX handle used in a forked
    child, and a flock upgrade that another process overtook. An OSError, so
    ``except OSError`` and ``e.errno == errno.ENOLCK`` work as before."""


def error(rc: int, detail: str, path: Optional[str]) -> OSError:
    """The exception for a negative return ``rc``: ``OSError(-rc, message, path)``, which
    Python turns into BlockingIOError (EAGAIN), TimeoutError (ETIMEDOUT),
    FileNotFoundError, PermissionError, ...; ECANCELED gives InterruptedError, ENOLCK
    :class:`LockLost`.

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
    exc_type = {errno.ECANCELED: InterruptedError, errno.ENOLCK: LockLost}.get(code, OSError)
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
    """``"flock"``, ``"ofd"``, ``"posix"``, ``"dotlock"``, ``"etcd"``, a set of them as
    ``"dotlock+posix"`` or an iterable of names, or the C bits as an int."""
    if isinstance(backend, int):
        return backend
    names = backend.replace(",", "+").split("+") if isinstance(backend, str) else list(backend)
    bits = 0
    for name in names:
        key = name.strip().lower()
        if key not in _BACKEND_BITS:
            raise ValueError(f"unknown backend {name!r}: use flock, ofd, posix, dotlock or etcd")
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
    """One lock on a file and who holds it (``unilock_holder``). ETCD: one key of the
    lock's queue (:meth:`Lock.holders` lists the holder first, then the waiters in the
    order they will be served), ``start`` its create revision (the holder's is the
    fencing token), ``pid``, ``command`` and ``host`` what the key's value says."""

    #: "FLOCK", "OFD", "POSIX", "DOTLOCK" or "ETCD", as the library and the command
    #: name them.
    backend: str
    mode: str
    #: First byte; ETCD: the key's create revision.
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
    #: The host the lock is held on (``unilock_holder_host``): ETCD, the host its key's
    #: value names ("" for a key of ``etcdctl lock``); DOTLOCK, the lock file's
    #: ``host=``; the kernel's locks, this host. "" when unknown.
    host: str = ""

    @classmethod
    def _from_c(cls, h: _lib.CHolder, pids: Tuple[int, ...] = (), host: str = "") -> "Holder":
        return cls(
            backend=_BACKEND_NAMES.get(h.backend, str(h.backend)),
            mode=_MODE_NAMES.get(h.mode, str(h.mode)),
            start=h.start,
            length=h.len,
            pid=None if h.pid < 0 else h.pid,
            this_process=bool(h.self),
            command=h.command.decode(errors="replace"),
            pids=pids,
            host=host,
        )


_UNSET = object()


class _Secret:
    """A password: kept for the handle's (re)open, shown by nothing."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "<password hidden>"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a unilock password is not pickled")


def _c_string(what: str, value) -> Optional[bytes]:
    """An option's string as the bytes C gets (None stays None: the library then reads
    the environment); a NUL byte raises ValueError, as it would cut the string."""
    if value is None:
        return None
    raw = value.encode() if isinstance(value, str) else os.fsencode(value)
    if b"\0" in raw:
        raise ValueError(f"{what} contains a null byte")
    return raw


def _endpoints(value) -> Optional[bytes]:
    """``"http://a:2379,http://b:2379"``, or an iterable of URLs."""
    if value is None or isinstance(value, (str, bytes)):
        return _c_string("endpoints", value)
    return _c_string("endpoints", ",".join(os.fsdecode(v) for v in value))


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

    ``backend="etcd"`` takes the lock in an etcd cluster, across machines: ``path`` is
    then a lock name (etcd's ``concurrency.Mutex`` keys ``NAME/<lease>``, which
    ``etcdctl lock NAME`` also uses), exclusive only (shared: OSError EOPNOTSUPP).
    Its keyword options, all optional (the library then reads ``UNILOCK_ETCD_*``, then
    ``ETCDCTL_*``, from the environment): ``endpoints`` (``"http://10.0.0.1:2379,..."``
    or a list of URLs; default ``http://127.0.0.1:2379``), ``lease_ttl`` (seconds,
    default 10: a holder cut off from etcd that long loses the lock), ``ca_file``,
    ``cert_file``, ``key_file`` (TLS), ``user`` and ``password`` (never shown by a
    repr or a message). A lost lease raises :class:`LockLost` on the next call;
    :meth:`fence` gives the lock's fencing token. Giving these options without
    ``backend="etcd"`` raises ValueError.
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
        endpoints: Union[str, Iterable[str], None] = None,
        lease_ttl: Optional[float] = None,
        ca_file: Optional[PathLike] = None,
        cert_file: Optional[PathLike] = None,
        key_file: Optional[PathLike] = None,
        user: Optional[str] = None,
        password: Optional[str] = None,
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
        etcd = {
            "endpoints": _endpoints(endpoints),
            "ca_file": _c_string("ca_file", ca_file),
            "cert_file": _c_string("cert_file", cert_file),
            "key_file": _c_string("key_file", key_file),
            "user": _c_string("user", user),
        }
        given = [name for name, value in etcd.items() if value is not None]
        given += ["lease_ttl"] if lease_ttl is not None else []
        given += ["password"] if password is not None else []
        self._etcd = bool(self._options.backends & _lib.BACKEND_ETCD)
        if given and not self._etcd:
            # Without the backend the name would silently be a file in the current
            # directory, locked on this machine only.
            raise ValueError(f"{', '.join(given)} need backend='etcd'")
        if lease_ttl is not None:
            if not 0 < lease_ttl <= 0xFFFFFFFF:
                raise ValueError(f"lease_ttl must be a positive number of seconds, not {lease_ttl!r}")
            self._options.lease_ttl_s = math.ceil(lease_ttl)
        self._strings = {name: value for name, value in etcd.items() if value is not None}
        self._password = None if password is None else _Secret(_c_string("password", password))
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
            # The strings live in this copy (ctypes keeps them) for the call: the
            # library reads them there and keeps none.
            options = _lib.Options.from_buffer_copy(self._options)
            for name, value in self._strings.items():
                setattr(options, name, value)
            if self._password is not None:
                options.password = self._password.reveal()
            rc = L.unilock_open(_lib.encode_path(self.path), ctypes.byref(options), ctypes.byref(out))
            del options
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
            result = _call.lock(
                handle,
                m,
                start,
                length,
                ms,
                lambda h: _lib.lib().unilock_unlock(h, start, length),
                probe_ms=0 if self._etcd else _call.PROBE_MS,
            )
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
        return Holder._from_c(who, self._pids(who), self._host(who)) if rc == 1 else None

    def holders(self) -> list:
        """Every lock on the file, from any process and any mechanism (like lslocks)."""
        cap = 8
        while True:
            buf = (_lib.CHolder * cap)()
            count = ctypes.c_size_t()
            self._simple("unilock_list", buf, cap, ctypes.byref(count))
            if count.value <= cap:
                return [Holder._from_c(buf[i], self._pids(buf[i]), self._host(buf[i])) for i in range(count.value)]
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

    def _host(self, holder: _lib.CHolder) -> str:
        if not _lib.has("unilock_holder_host"):
            return ""
        cap = 256
        while True:
            buf = ctypes.create_string_buffer(cap)
            try:
                n = self._simple("unilock_holder_host", ctypes.byref(holder), buf, cap)
            except FileNotFoundError:  # released since it was listed
                return ""
            if n < cap:
                return buf.value.decode(errors="replace")
            cap = n + 1

    def touch(self) -> None:
        """DOTLOCK: refreshes the lock file's time; the kernel backends: nothing.
        ETCD: renews the lease now (the library renews it every third of its TTL
        anyway); raises :class:`LockLost` when it was lost."""
        self._simple("unilock_touch")

    def fence(self) -> int:
        """ETCD: the fencing token of the lock this handle holds, the create revision
        of its key, which grows with every grant of the lock. Send it with each write
        to a store that remembers the highest token it accepted and refuses lower
        ones: a holder that lost its lease without knowing it can do no damage.
        Raises :class:`LockLost` when the handle holds no lock or lost it, OSError
        EOPNOTSUPP for the file backends."""
        if not _lib.has("unilock_fence"):
            message = f"{os.strerror(errno.EOPNOTSUPP)} (this libunilock has no unilock_fence)"
            raise OSError(errno.EOPNOTSUPP, message, self.path)
        token = ctypes.c_uint64()
        self._simple("unilock_fence", ctypes.byref(token))
        return token.value

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
        backend = " ETCD" if self._etcd else ""
        return f"<unilock.Lock {self.path!r} {_MODE_NAMES[self.mode]}{backend} {state}>"


def _check_range(r: Range) -> Range:
    start, length = r
    if start < 0 or length < 0:
        raise ValueError(f"range must be (start >= 0, length >= 0), not {r!r}")
    return int(start), int(length)
