"""Calling unilock_lock so that the wait can be interrupted and cancelled.

A ctypes call releases the GIL, but a KeyboardInterrupt cannot reach a thread that is
inside a foreign call: Python runs signal handlers in the main thread, between
bytecodes. So in the main thread a lock call that has to wait runs in a helper thread,
and the main thread sleeps on a lock that a signal interrupts (``lock.acquire()`` is
interruptible on POSIX). When the sleep raises (KeyboardInterrupt, or whatever a
signal handler raises), the main thread cancels the call with ``unilock_cancel``,
repeating while it returns 0 and the call has not returned (a cancel is never
remembered, so one that lands before the helper enters the call would be lost), then
undoes a grant that won the race, then re-raises. Other threads cannot be interrupted
by signals and call the library directly.

Since one lock call of the binding may be two calls of the library (the short first
wait, then the helper's), :func:`cancel` marks the binding's call as cancelled as well
as cancelling the library call in progress: a cancel that lands in the first wait,
which then times out, or between the two, ends the call instead of being lost.
"""

from __future__ import annotations

import _thread
import errno
import itertools
import threading
import time

from . import _lib

#: The main thread's first wait, in ms: Ctrl-C is handled after it at the latest.
PROBE_MS = 2


class Result:
    """What one unilock_lock call returned: ``rc`` and, on failure, this thread's detail."""

    __slots__ = ("rc", "detail")

    def __init__(self, rc: int, detail: str = "") -> None:
        self.rc = rc
        self.detail = detail


class _Call:
    """One lock call of the binding on a handle, for :func:`cancel`."""

    __slots__ = ("cancelled", "finished")

    def __init__(self) -> None:
        self.cancelled = False
        self.finished = False


#: The binding's lock calls in progress, by handle; guarded by ``_calls_mutex``.
_calls: "dict[int, list[_Call]]" = {}
_calls_mutex = threading.Lock()


def _cancelled() -> Result:
    return Result(-errno.ECANCELED, "the wait for the lock was cancelled")


def cancel(handle: int) -> bool:
    """Cancels the lock calls of the binding in progress on ``handle``, from any thread:
    each returns ECANCELED (or 0 when the lock was granted first). Returns True when
    one was in progress; with none, nothing happens and nothing is remembered.

    The caller must keep ``handle`` open until this returns."""
    with _calls_mutex:
        calls = list(_calls.get(handle, ()))
    if not calls:
        return False
    for call in calls:
        call.cancelled = True
    # A library call already running needs the library's cancel, which is not
    # remembered: repeat it until it lands or the binding's call has ended.
    L = _lib.lib()
    while not all(call.finished for call in calls):
        if L.unilock_cancel(handle) == 1:
            break
        time.sleep(0.0001)
    return True


def _direct(handle: int, mode: int, start: int, length: int, timeout_ms: int) -> Result:
    L = _lib.lib()
    return _result(L.unilock_lock(handle, mode, start, length, timeout_ms))


def _result(rc: int) -> Result:
    if rc < 0:
        return Result(rc, _lib.lib().unilock_last_error().decode(errors="replace"))
    return Result(rc)


def _direct_in_main(handle: int, mode: int, start: int, length: int, timeout_ms: int, undo) -> Result:
    """:func:`_direct` in the main thread, where the interpreter raises a pending
    KeyboardInterrupt as soon as a call returns, before its value is stored: the call
    is made from C (``starmap`` drained by ``list.extend``), so that its return code is
    in ``out`` before the interpreter looks at signals, and a grant is undone before
    the exception propagates."""
    out: "list[int]" = []
    try:
        out.extend(itertools.starmap(_lib.lib().unilock_lock, ((handle, mode, start, length, timeout_ms),)))
    except BaseException:
        if out and out[0] == 0:
            undo(handle)
        raise
    return _result(out[0])


def lock(handle: int, mode: int, start: int, length: int, timeout_ms: int, undo, probe_ms: int = PROBE_MS) -> Result:
    """``unilock_lock`` on ``handle``; ``undo(handle)`` releases a grant that arrived
    after an interrupt (it is called before the exception propagates). :func:`cancel`
    ends it with ECANCELED. ``probe_ms`` is the main thread's first wait; 0 makes it a
    try (for the ETCD backend, where every wait puts a key in the lock's queue: a
    short first wait would queue, give up its place and queue again)."""
    call = _Call()
    with _calls_mutex:
        _calls.setdefault(handle, []).append(call)
    try:
        result = _lock(handle, mode, start, length, timeout_ms, undo, call, probe_ms)
    finally:
        call.finished = True
        with _calls_mutex:
            calls = _calls[handle]
            calls.remove(call)
            if not calls:
                del _calls[handle]
    if call.cancelled and result.rc == -errno.ETIMEDOUT:
        # The cancel landed as the wait timed out, or in the first wait.
        return _cancelled()
    return result


def _lock(handle: int, mode: int, start: int, length: int, timeout_ms: int, undo, call: _Call, probe_ms: int) -> Result:
    if threading.current_thread() is not threading.main_thread():
        return _direct(handle, mode, start, length, timeout_ms)
    if timeout_ms == 0:
        return _direct_in_main(handle, mode, start, length, 0, undo)
    # Main thread. A first, short wait here: the uncontended case needs no helper
    # thread, and a wait that only this thread could end gets EDEADLK (the library
    # attributes locks to threads; the helper thread holds nothing). With probe_ms 0
    # it is a try, which answers EAGAIN when the lock is held.
    began = time.monotonic()
    probe = timeout_ms if 0 < timeout_ms <= probe_ms else probe_ms
    first = _direct_in_main(handle, mode, start, length, probe, undo)
    still_held = -errno.ETIMEDOUT if probe > 0 else -errno.EAGAIN
    if first.rc != still_held or probe == timeout_ms:
        return first
    if call.cancelled:
        return _cancelled()
    remaining = -1
    if timeout_ms > 0:
        remaining = timeout_ms - int((time.monotonic() - began) * 1000)
        if remaining <= 0:
            if probe == 0:
                # A blocking call never answers EAGAIN: the library times it out.
                remaining = 1
            else:
                return first
    result = _in_helper(handle, mode, start, length, remaining, undo, call)
    if result.rc == 0:
        # Taken by the helper thread: take it again (a no-op conversion) so that the
        # library attributes it to this thread, as if this thread had waited.
        try:
            _direct_in_main(handle, mode, start, length, 0, undo)
        except BaseException:
            undo(handle)
            raise
    return result


def _in_helper(handle: int, mode: int, start: int, length: int, timeout_ms: int, undo, call: _Call) -> Result:
    box: list[Result] = []
    done = _thread.allocate_lock()
    done.acquire()

    def run() -> None:
        try:
            if call.cancelled:
                box.append(_cancelled())
            else:
                box.append(_direct(handle, mode, start, length, timeout_ms))
        except BaseException:  # noqa: BLE001 - reported as a failure below
            box.append(Result(-errno.ENOTRECOVERABLE, "the waiting thread failed"))
        finally:
            done.release()

    _thread.start_new_thread(run, ())
    try:
        done.acquire()
    except BaseException:
        # The interrupt may also arrive just after the acquire succeeded: ``box`` (filled
        # once the call has returned), not ``done``, says whether the call is over.
        _cancel_until_returned(handle, done, box)
        if box[0].rc == 0:
            undo(handle)
        raise
    return box[0]


def _cancel_until_returned(handle: int, done, box: list) -> None:
    """Cancels the helper's call until it has returned. Further interrupts during this
    are swallowed: the first one is being raised already."""
    L = _lib.lib()
    while not box:
        try:
            L.unilock_cancel(handle)
            done.acquire(timeout=0.001)
        except BaseException:  # noqa: BLE001,S112 - a second Ctrl-C must not leak the lock
            continue
