"""FileLock, SoftFileLock and Timeout with the API and behaviour of the ``filelock``
package (3.16), over libunilock.

Where filelock retries every ``poll_interval`` (50 ms) until its timeout, these wait in
the kernel: a released lock is taken at once, and a timeout ends on time.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import inspect
import os
import threading
import warnings
from abc import ABCMeta
from pathlib import Path
from typing import Any, Optional
from weakref import WeakValueDictionary

from . import _call, _lib
from ._lock import error, timeout_ms


class Timeout(TimeoutError):  # noqa: N818 - filelock's name
    """The lock could not be acquired within the timeout (or at once, when not blocking)."""

    def __init__(self, lock_file: str) -> None:
        super().__init__()
        self._lock_file = lock_file

    def __reduce__(self):
        return type(self), (self._lock_file,)

    def __str__(self) -> str:
        return f"The file lock '{self._lock_file}' could not be acquired."

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._lock_file!r})"

    @property
    def lock_file(self) -> str:
        """The path of the lock file."""
        return self._lock_file


class _Handle:
    """Owns one unilock handle; closing it (explicitly or when collected) releases the
    lock, so a lock whose FileLock (or thread, with thread_local) is gone is released."""

    __slots__ = ("ptr", "__weakref__")

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def close(self) -> int:
        ptr, self.ptr = self.ptr, None
        if ptr is None:
            return 0
        return _lib.lib().unilock_close(ptr)

    def __del__(self) -> None:
        try:
            if self.ptr is not None and _lib._lib is not None:
                _lib._lib.unilock_close(self.ptr)
                self.ptr = None
        except Exception:  # noqa: BLE001,S110 - interpreter shutdown
            pass


class _Context:
    """The state of one lock: shared by all threads, or per thread (``thread_local``)."""

    def __init__(self, lock_file: str, timeout: float, mode: int, blocking: bool) -> None:
        self.lock_file = lock_file
        self.timeout = timeout
        self.mode = mode
        self.blocking = blocking
        self.handle: Optional[_Handle] = None
        #: The descriptor the lock is held through, None when not held (as filelock's)
        #: and for SoftFileLock, which holds none.
        self.lock_file_fd: Optional[int] = None
        self.lock_counter = 0


class _ThreadLocalContext(_Context, threading.local):
    pass


class AcquireReturnProxy:
    """Returned by :meth:`BaseFileLock.acquire`: ``with lock.acquire():`` releases on exit
    without acquiring a second time."""

    def __init__(self, lock: "BaseFileLock") -> None:
        self.lock = lock

    def __enter__(self) -> "BaseFileLock":
        return self.lock

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.lock.release()


class _FileLockMeta(ABCMeta):
    """Implements ``is_singleton`` (one instance per path and class) and passes a
    subclass only the constructor arguments its ``__init__`` accepts."""

    def __call__(
        cls,
        lock_file,
        timeout: float = -1,
        mode: int = 0o644,
        thread_local: bool = True,  # noqa: FBT001,FBT002
        *,
        blocking: bool = True,
        is_singleton: bool = False,
        **kwargs: Any,
    ):
        key = str(lock_file)
        if is_singleton:
            existing = cls._instances.get(key)
            if existing is not None:
                wanted = {
                    "thread_local": (thread_local, existing.is_thread_local()),
                    "timeout": (timeout, existing.timeout),
                    "mode": (mode, existing.mode),
                    "blocking": (blocking, existing.blocking),
                }
                differing = {k: v for k, v in wanted.items() if v[0] != v[1]}
                if not differing:
                    return existing
                lines = "".join(
                    f"\n\t{name} (existing lock has {have} but {passed} was passed)"
                    for name, (passed, have) in differing.items()
                )
                raise ValueError(
                    "Singleton lock instances cannot be initialized with differing arguments"
                    "\nNon-matching arguments: " + lines
                )
        given = {
            "timeout": timeout,
            "mode": mode,
            "thread_local": thread_local,
            "blocking": blocking,
            "is_singleton": is_singleton,
            **kwargs,
        }
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            accepted = given
        else:
            accepted = {k: v for k, v in given.items() if k in params}
        instance = super().__call__(lock_file, **accepted)
        if is_singleton:
            cls._instances[key] = instance
        return instance


class BaseFileLock(contextlib.ContextDecorator, metaclass=_FileLockMeta):
    """A file lock with filelock's API: re-entrant per instance (``lock_counter``),
    usable with ``with``, as a decorator, and released when collected."""

    #: The unilock backend bits this class locks with.
    _backend = _lib.BACKEND_FLOCK
    #: ``unilock_options.stale_after_s`` (DOTLOCK only).
    _stale_after_s = 0
    _instances: "WeakValueDictionary[str, BaseFileLock]" = WeakValueDictionary()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._instances = WeakValueDictionary()

    def __init__(
        self,
        lock_file,
        timeout: float = -1,
        mode: int = 0o644,
        thread_local: bool = True,  # noqa: FBT001,FBT002
        *,
        blocking: bool = True,
        is_singleton: bool = False,
    ) -> None:
        """
        :param lock_file: the path of the lock file (created when missing).
        :param timeout: default timeout of :meth:`acquire`, in seconds; negative: wait
            forever; 0: one attempt.
        :param mode: the permissions of the lock file.
        :param thread_local: when True (the default), each thread has its own lock
            state; when False, the lock is re-entrant across threads.
        :param blocking: when False, :meth:`acquire` makes one attempt.
        :param is_singleton: one instance per lock file path (and class).
        """
        self._is_thread_local = thread_local
        self._is_singleton = is_singleton
        context_type = _ThreadLocalContext if thread_local else _Context
        self._context: _Context = context_type(os.fspath(lock_file), timeout, mode, blocking)
        # Handles in a lock call now, from any thread; cancel() reaches them.
        self._waiting: set = set()
        self._waiting_mutex = threading.Lock()

    def is_thread_local(self) -> bool:
        """Whether the lock state is per thread."""
        return self._is_thread_local

    @property
    def is_singleton(self) -> bool:
        return self._is_singleton

    @property
    def lock_file(self) -> str:
        return self._context.lock_file

    @property
    def timeout(self) -> float:
        """The default timeout in seconds (negative: none)."""
        return self._context.timeout

    @timeout.setter
    def timeout(self, value) -> None:
        self._context.timeout = float(value)

    @property
    def blocking(self) -> bool:
        return self._context.blocking

    @blocking.setter
    def blocking(self, value: bool) -> None:
        self._context.blocking = value

    @property
    def mode(self) -> int:
        """The permissions of the lock file."""
        return self._context.mode

    @property
    def is_locked(self) -> bool:
        return self._context.handle is not None

    @property
    def lock_counter(self) -> int:
        """How many times the lock was acquired and not yet released."""
        return self._context.lock_counter

    def acquire(
        self,
        timeout: Optional[float] = None,
        poll_interval: float = 0.05,
        *,
        poll_intervall: Optional[float] = None,
        blocking: Optional[bool] = None,
    ) -> AcquireReturnProxy:
        """Acquires the lock (or counts one more acquisition when this instance holds it).

        :param timeout: seconds to wait; None: the default :attr:`timeout`; negative:
            forever; 0: one attempt.
        :param poll_interval: accepted for compatibility and unused: the wait sleeps in
            the kernel and wakes when the lock is released.
        :param blocking: False: one attempt (default: :attr:`blocking`).
        :raises Timeout: when the lock is not acquired in time.
        :return: a proxy for ``with lock.acquire(): ...``.
        """
        if poll_intervall is not None:
            warnings.warn("use poll_interval instead of poll_intervall", DeprecationWarning, stacklevel=2)
        context = self._context
        if timeout is None:
            timeout = context.timeout
        if blocking is None:
            blocking = context.blocking
        context.lock_counter += 1
        try:
            if not self.is_locked:
                self._acquire(0 if blocking is False else timeout)
        except BaseException:
            context.lock_counter = max(0, context.lock_counter - 1)
            raise
        return AcquireReturnProxy(lock=self)

    def release(self, force: bool = False) -> None:  # noqa: FBT001,FBT002
        """Counts one release; the lock is released when the count reaches 0, or at once
        with ``force``. The lock file is not deleted."""
        context = self._context
        if self.is_locked:
            context.lock_counter -= 1
            if context.lock_counter == 0 or force:
                self._release()
                context.lock_counter = 0

    def cancel(self) -> bool:
        """Cancels the acquire calls waiting on this instance now, from any thread: they
        raise InterruptedError (errno ECANCELED). Returns True when one was waiting."""
        cancelled = False
        # Under the mutex: an acquire closes its handle only after leaving the set.
        with self._waiting_mutex:
            for handle in self._waiting:
                cancelled |= _call.cancel(handle.ptr)
        return cancelled

    # -- the mechanism ------------------------------------------------------------

    def _open(self) -> _Handle:
        context = self._context
        options = _lib.Options()
        options.size = ctypes.sizeof(_lib.Options)
        options.backends = self._backend
        options.flags = _lib.CREATE | _lib.FOLLOW
        options.mode = context.mode
        options.stale_after_s = self._stale_after_s
        out = ctypes.c_void_p()
        L = _lib.lib()
        path = _lib.encode_path(context.lock_file)
        rc = L.unilock_open(path, ctypes.byref(options), ctypes.byref(out))
        if rc == -errno.ENOENT:
            # As filelock does: create the missing parent directories.
            Path(context.lock_file).parent.mkdir(parents=True, exist_ok=True)
            rc = L.unilock_open(path, ctypes.byref(options), ctypes.byref(out))
        if rc < 0:
            raise self._open_error(rc, L.unilock_last_error().decode(errors="replace"))
        return _Handle(out.value)

    def _open_error(self, rc: int, detail: str) -> OSError:
        return error(rc, detail, self.lock_file)

    def _acquire(self, timeout: float) -> None:
        """Opens the lock file and takes an exclusive lock on it, waiting up to
        ``timeout`` seconds."""
        context = self._context
        # As filelock does: a directory is never the lock file (the FLOCK backend
        # could lock one; filelock's users expect IsADirectoryError).
        if os.path.isdir(context.lock_file):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), context.lock_file)
        handle = self._open()
        ms = timeout_ms(timeout)
        L = _lib.lib()
        with self._waiting_mutex:
            self._waiting.add(handle)
        try:
            result = _call.lock(handle.ptr, _lib.EXCLUSIVE, 0, 0, ms, lambda h: L.unilock_unlock(h, 0, 0))
        except BaseException:
            self._forget(handle)
            handle.close()
            raise
        self._forget(handle)
        if result.rc < 0:
            handle.close()
            code = -result.rc
            if code in (errno.EAGAIN, errno.ETIMEDOUT) or (code == errno.EDEADLK and ms >= 0):
                # EDEADLK: only this thread could release it, so no wait would succeed;
                # filelock would time out, so does this, without sleeping first.
                raise Timeout(context.lock_file) from error(result.rc, result.detail, context.lock_file)
            raise error(result.rc, result.detail, context.lock_file)
        # A DOTLOCK handle has no descriptor (its lock file exists only while held).
        fd = L.unilock_fd(handle.ptr)
        if fd >= 0:
            self._fix_mode(fd)
        context.handle = handle
        context.lock_file_fd = fd if fd >= 0 else None

    def _forget(self, handle: _Handle) -> None:
        with self._waiting_mutex:
            self._waiting.discard(handle)

    def _fix_mode(self, fd: int) -> None:
        # As filelock does: the lock file gets exactly ``mode`` (no umask) when we own it.
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_mode & 0o7777 != self._context.mode:
                os.fchmod(fd, self._context.mode)

    def _release(self) -> None:
        context = self._context
        handle = context.handle
        context.handle = None
        context.lock_file_fd = None
        if handle is None:
            return
        L = _lib.lib()
        # Unlock first, as filelock does: a child that shares the descriptor since a
        # fork() does not keep the lock.
        L.unilock_unlock(handle.ptr, 0, 0)
        handle.close()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release(force=True)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.lock_file!r} locked={self.is_locked}>"


class FileLock(BaseFileLock):
    """An exclusive ``flock(2)`` lock on ``lock_file``: it excludes filelock.FileLock,
    flock(1), gofrs/flock and every FLOCK user of the same file."""

    _backend = _lib.BACKEND_FLOCK


#: filelock's name for the flock-based lock on Unix.
UnixFileLock = FileLock


class SoftFileLock(BaseFileLock):
    """A lock by the existence of ``lock_file``, as filelock.SoftFileLock, on unilock's
    DOTLOCK backend: the lock file is made (by ``link()``, with ``mode``) when the lock
    is taken and removed when it is released; any file at that path, filelock's empty
    one included, means the lock is held. The file holds the owner's pid, start time,
    host and boot id, so a lock file left by a process that died on this host is
    broken (filelock's SoftFileLock waits for it forever). A wait is woken when the
    file is removed; no descriptor is held (``lock_file_fd`` stays None)."""

    _backend = _lib.BACKEND_DOTLOCK
    # Never stale by age (stale_after_s 0), as with filelock: its holders write no pid
    # and never refresh the file, so only a dead owner that the file names makes it
    # stale.

