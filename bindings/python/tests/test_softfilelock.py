"""SoftFileLock: filelock's lock by existence, on unilock's DOTLOCK backend.

The API tests run against both unilock and filelock, so that the two are seen to
agree; then where their semantics meet across processes and libraries (a file at the
path is a held lock, whoever made it), and where unilock goes further: waits that wake
when the file goes, cancellation, and a dead holder's lock file broken."""

import errno
import gc
import os
import signal
import threading
import time

import filelock
import pytest

import unilock
from counting import count_in_processes


@pytest.fixture(params=["unilock", "filelock"])
def impl(request):
    return unilock if request.param == "unilock" else filelock


def first_line(path):
    with open(path) as f:
        return f.readline()


# -- the API, against both -------------------------------------------------------


def test_the_lock_file_exists_only_while_held(impl, lock_path):
    lock = impl.SoftFileLock(lock_path)
    assert not os.path.exists(lock_path)
    assert not lock.is_locked and lock.lock_counter == 0
    with lock as same:
        assert same is lock
        assert lock.is_locked and lock.lock_counter == 1
        assert os.path.isfile(lock_path)
        with lock.acquire():
            assert lock.lock_counter == 2
        assert lock.is_locked and os.path.exists(lock_path)
    assert not lock.is_locked and lock.lock_counter == 0
    assert not os.path.exists(lock_path)
    lock.acquire()
    lock.acquire()
    lock.release(force=True)
    assert not lock.is_locked and not os.path.exists(lock_path)


def test_an_existing_file_is_a_held_lock(impl, lock_path):
    open(lock_path, "w").close()
    lock = impl.SoftFileLock(lock_path, timeout=0.2)
    began = time.monotonic()
    with pytest.raises(impl.Timeout) as e:
        lock.acquire()
    assert 0.19 <= time.monotonic() - began < 1.5
    assert isinstance(e.value, TimeoutError)
    assert e.value.lock_file == lock_path
    assert str(e.value) == f"The file lock '{lock_path}' could not be acquired."
    assert not lock.is_locked and lock.lock_counter == 0
    with pytest.raises(impl.Timeout):
        lock.acquire(blocking=False)
    with pytest.raises(impl.Timeout):
        lock.acquire(timeout=0)
    assert os.path.exists(lock_path), "a failed acquire removed the holder's file"
    os.unlink(lock_path)
    with lock.acquire(timeout=0):
        assert lock.is_locked


def test_another_thread_times_out(impl, lock_path):
    holding, done = threading.Event(), threading.Event()

    def hold():
        with impl.SoftFileLock(lock_path):
            holding.set()
            done.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert holding.wait(5)
        with pytest.raises(impl.Timeout):
            impl.SoftFileLock(lock_path, timeout=0.1).acquire()
    finally:
        done.set()
        t.join()
    with impl.SoftFileLock(lock_path, timeout=0):
        pass


def test_mode_is_applied_with_the_umask(impl, tmp_path):
    path = str(tmp_path / "m.lock")
    old = os.umask(0o022)
    try:
        with impl.SoftFileLock(path, mode=0o640):
            assert os.stat(path).st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    assert impl.SoftFileLock(path).mode == 0o644


def test_parent_directories_are_created(impl, tmp_path):
    path = str(tmp_path / "a" / "b" / "c.lock")
    with impl.SoftFileLock(path):
        assert os.path.isfile(path)
    assert not os.path.exists(path)


def test_a_directory_at_the_path_is_an_error(impl, tmp_path):
    with pytest.raises(IsADirectoryError):
        impl.SoftFileLock(str(tmp_path), timeout=0).acquire()


def test_released_when_collected(impl, lock_path):
    lock = impl.SoftFileLock(lock_path)
    lock.acquire()
    del lock
    gc.collect()
    assert not os.path.exists(lock_path)
    with impl.SoftFileLock(lock_path, timeout=0):
        pass


def test_decorator_singleton_and_subclass(impl, lock_path):
    lock = impl.SoftFileLock(lock_path, is_singleton=True)
    assert impl.SoftFileLock(lock_path, is_singleton=True) is lock
    assert impl.FileLock(lock_path, is_singleton=True) is not lock

    @lock
    def work(x):
        assert lock.is_locked and os.path.exists(lock_path)
        return x * 2

    assert work(21) == 42
    assert not os.path.exists(lock_path)

    class MyLock(impl.SoftFileLock):
        def __init__(self, lock_file, *, extra=None):
            super().__init__(lock_file, timeout=0)
            self.extra = extra

    mine = MyLock(lock_path, mode=0o600, extra=7)
    assert mine.extra == 7 and mine.timeout == 0
    with mine:
        assert os.path.exists(lock_path)


# -- across processes and libraries ----------------------------------------------


@pytest.mark.parametrize(
    ("holder_kind", "waiter"),
    [
        ("unilock-softfilelock", filelock.SoftFileLock),
        ("filelock-softfilelock", unilock.SoftFileLock),
        ("unilock-softfilelock", unilock.SoftFileLock),
    ],
)
def test_exclusion_across_processes_and_libraries(peer, lock_path, holder_kind, waiter):
    p = peer(holder_kind, lock_path)
    mod = filelock if waiter is filelock.SoftFileLock else unilock
    with pytest.raises(mod.Timeout):
        waiter(lock_path, timeout=0.2).acquire()
    p.release()
    assert not os.path.exists(lock_path), "the holder left its lock file"
    with waiter(lock_path, timeout=0):
        pass


def test_unilock_and_filelock_soft_locks_exclude_each_other_in_one_process(lock_path):
    with unilock.SoftFileLock(lock_path):
        with pytest.raises(filelock.Timeout):
            filelock.SoftFileLock(lock_path, timeout=0.05).acquire()
    with filelock.SoftFileLock(lock_path):
        with pytest.raises(unilock.Timeout):
            unilock.SoftFileLock(lock_path, timeout=0.05).acquire()
    assert not os.path.exists(lock_path)


def test_the_lock_file_names_its_owner_first_as_liblockfile_does(peer, lock_path):
    p = peer("unilock-softfilelock", lock_path)
    assert first_line(lock_path) == f"{p.proc.pid}\n"
    p.release()


def test_a_wait_ends_when_the_holder_removes_its_file(peer, lock_path):
    peer("filelock-softfilelock", lock_path, hold=0.3)
    began = time.monotonic()
    with unilock.SoftFileLock(lock_path, timeout=5):
        waited = time.monotonic() - began
        assert first_line(lock_path) == f"{os.getpid()}\n"
    assert 0.2 <= waited < 2


def test_a_dead_holders_lock_file_is_broken(peer, lock_path):
    p = peer("unilock-softfilelock", lock_path)
    p.kill()
    assert os.path.exists(lock_path), "a killed holder cannot remove its file"
    # filelock's SoftFileLock cannot tell a dead holder from a live one.
    with pytest.raises(filelock.Timeout):
        filelock.SoftFileLock(lock_path, timeout=0.1).acquire()
    with unilock.SoftFileLock(lock_path, timeout=0):
        assert first_line(lock_path) == f"{os.getpid()}\n"
    assert not os.path.exists(lock_path)


def test_a_long_held_lock_file_without_a_pid_is_not_broken(peer, lock_path):
    # filelock's holder writes no pid and never refreshes its file: however long it
    # holds the lock, the file means held, for filelock and for this drop-in.
    p = peer("filelock-softfilelock", lock_path)
    an_hour_ago = time.time() - 3600
    os.utime(lock_path, (an_hour_ago, an_hour_ago))
    with pytest.raises(unilock.Timeout):
        unilock.SoftFileLock(lock_path, timeout=0).acquire()
    assert os.path.exists(lock_path)
    p.release()
    with unilock.SoftFileLock(lock_path, timeout=0):
        pass


def test_mutual_exclusion_with_multiprocessing(tmp_path):
    total, path = count_in_processes("SoftFileLock", tmp_path, rounds=50)
    assert total == 200
    assert not os.path.exists(path)


def test_keyboard_interrupt_during_acquire_leaves_no_lock_file(peer, lock_path):
    p = peer("filelock-softfilelock", lock_path)
    lock = unilock.SoftFileLock(lock_path)
    main = threading.main_thread().ident
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        lock.acquire()
    timer.join()
    assert not lock.is_locked and lock.lock_counter == 0
    p.release()
    time.sleep(0.05)
    assert not os.path.exists(lock_path), "the interrupted wait took the lock later"
    with filelock.SoftFileLock(lock_path, timeout=0):
        pass


def test_same_thread_two_instances_time_out_at_once(lock_path):
    with unilock.SoftFileLock(lock_path):
        began = time.monotonic()
        with pytest.raises(unilock.Timeout):
            unilock.SoftFileLock(lock_path, timeout=5).acquire()
        assert time.monotonic() - began < 1
        with pytest.raises(OSError) as e:
            unilock.SoftFileLock(lock_path).acquire()
        assert e.value.errno == errno.EDEADLK
