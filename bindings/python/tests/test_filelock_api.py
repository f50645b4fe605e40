"""filelock's API and behaviour: each test runs against unilock and against the
filelock package itself, so that the two are seen to agree."""

import gc
import os
import pickle
import threading
import time

import filelock
import pytest

import unilock


@pytest.fixture(params=["unilock", "filelock"])
def impl(request):
    return unilock if request.param == "unilock" else filelock


def test_acquire_release_and_state(impl, lock_path):
    lock = impl.FileLock(lock_path)
    assert not lock.is_locked and lock.lock_counter == 0
    assert lock.lock_file == lock_path
    proxy = lock.acquire()
    assert lock.is_locked and lock.lock_counter == 1
    with proxy as inner:
        assert inner is lock
    assert not lock.is_locked and lock.lock_counter == 0


def test_reentrant_counting_and_force(impl, lock_path):
    lock = impl.FileLock(lock_path)
    with lock:
        with lock:
            assert lock.lock_counter == 2
            lock.acquire()
            assert lock.lock_counter == 3
            lock.release()
        assert lock.is_locked and lock.lock_counter == 1
    assert not lock.is_locked
    lock.acquire()
    lock.acquire()
    lock.release(force=True)
    assert not lock.is_locked and lock.lock_counter == 0
    lock.release()  # releasing an unlocked lock is a no-op
    assert lock.lock_counter == 0


def _held_elsewhere(impl, lock_path):
    """A thread of this process holds the lock through its own instance until the
    returned event is set."""
    holding, done = threading.Event(), threading.Event()

    def hold():
        with impl.FileLock(lock_path):
            holding.set()
            done.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert holding.wait(5)
    return done, t


def test_timeout_raises_timeout(impl, lock_path):
    done, t = _held_elsewhere(impl, lock_path)
    try:
        lock = impl.FileLock(lock_path, timeout=0.2)
        began = time.monotonic()
        with pytest.raises(impl.Timeout) as e:
            lock.acquire()
        assert 0.19 <= time.monotonic() - began < 1.5
        assert isinstance(e.value, TimeoutError)
        assert e.value.lock_file == lock_path
        assert str(e.value) == f"The file lock '{lock_path}' could not be acquired."
        assert repr(e.value) == f"Timeout({lock_path!r})"
        assert lock.lock_counter == 0 and not lock.is_locked
        with pytest.raises(impl.Timeout):
            lock.acquire(timeout=0)
        with pytest.raises(impl.Timeout):
            lock.acquire(blocking=False)
        with pytest.raises(impl.Timeout):
            impl.FileLock(lock_path, blocking=False).acquire()
    finally:
        done.set()
        t.join()


def test_timeout_pickles(impl):
    e = impl.Timeout("/some/file")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is impl.Timeout
    assert back.lock_file == "/some/file"
    assert str(back) == str(e)


def test_timeout_property(impl, lock_path):
    lock = impl.FileLock(lock_path)
    assert lock.timeout == -1
    lock.timeout = "1.5"
    assert lock.timeout == 1.5
    assert impl.FileLock(lock_path, timeout=3).timeout == 3
    assert lock.blocking is True
    lock.blocking = False
    assert lock.blocking is False
    assert lock.mode == 0o644


def test_mode_is_set_exactly(impl, tmp_path):
    old = os.umask(0o077)
    try:
        path = str(tmp_path / "m.lock")
        with impl.FileLock(path, mode=0o640):
            pass
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_parent_directories_are_created(impl, tmp_path):
    path = str(tmp_path / "a" / "b" / "c.lock")
    with impl.FileLock(path):
        assert os.path.exists(path)


@pytest.mark.parametrize("kind", ["FileLock", "SoftFileLock"])
def test_thread_local_state(impl, lock_path, kind):
    lock = getattr(impl, kind)(lock_path)
    assert lock.is_thread_local()
    seen = []
    with lock:

        def other():
            seen.append((lock.is_locked, lock.lock_counter))
            try:
                lock.acquire(timeout=0.1)
            except impl.Timeout:
                seen.append("timeout")

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen == [(False, 0), "timeout"]


@pytest.mark.parametrize("kind", ["FileLock", "SoftFileLock"])
def test_not_thread_local_is_reentrant_across_threads(impl, lock_path, kind):
    lock = getattr(impl, kind)(lock_path, thread_local=False)
    assert not lock.is_thread_local()
    seen = []
    with lock:

        def other():
            with lock.acquire(timeout=0):
                seen.append(lock.lock_counter)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert lock.lock_counter == 1
    assert seen == [2]
    assert not lock.is_locked
    if kind == "SoftFileLock":
        assert not os.path.exists(lock_path)


def test_is_singleton(impl, lock_path):
    a = impl.FileLock(lock_path, is_singleton=True)
    b = impl.FileLock(lock_path, is_singleton=True)
    assert a is b and a.is_singleton
    assert impl.FileLock(lock_path) is not a
    with pytest.raises(ValueError, match="differing arguments"):
        impl.FileLock(lock_path, timeout=5, is_singleton=True)

    class Sub(impl.FileLock):
        pass

    assert Sub(lock_path, is_singleton=True) is not a


def test_decorator(impl, lock_path):
    lock = impl.FileLock(lock_path)

    @lock
    def work(x):
        assert lock.is_locked
        return x * 2

    assert work(21) == 42
    assert not lock.is_locked


def test_released_when_collected(impl, lock_path):
    lock = impl.FileLock(lock_path)
    lock.acquire()
    del lock
    gc.collect()
    with impl.FileLock(lock_path, timeout=0):
        pass


def test_subclass_with_its_own_init_arguments(impl, lock_path):
    class MyLock(impl.FileLock):
        def __init__(self, lock_file, timeout=-1, *, extra=None):
            super().__init__(lock_file, timeout)
            self.extra = extra

    lock = MyLock(lock_path, mode=0o600, extra=7)
    assert lock.extra == 7
    with lock:
        assert lock.is_locked


def test_poll_intervall_is_deprecated(impl, lock_path):
    lock = impl.FileLock(lock_path)
    with pytest.warns(DeprecationWarning):
        lock.acquire(poll_intervall=0.01)
    lock.release()


def test_public_names(impl):
    for name in ("FileLock", "SoftFileLock", "Timeout", "BaseFileLock", "AcquireReturnProxy", "UnixFileLock"):
        assert hasattr(impl, name), name
    assert issubclass(impl.FileLock, impl.BaseFileLock)
