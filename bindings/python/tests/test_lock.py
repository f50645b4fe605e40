import errno
import os
import signal
import threading
import time

import pytest

import unilock


def test_with_takes_and_releases(lock_path):
    with unilock.Lock(lock_path) as lk:
        mine = lk.holders()
        assert len(mine) == 1
        assert mine[0].this_process and mine[0].pid == os.getpid()
        assert mine[0].backend == "FLOCK" and mine[0].mode == "exclusive"
        assert mine[0].pids == (os.getpid(),)
        other = unilock.Lock(lock_path)
        assert other.query().pid == os.getpid()
        other.close()
    assert lk.closed
    with unilock.Lock(lock_path) as again:
        assert again.query() is None or again.query().this_process


def test_file_is_created_0600_by_default(lock_path):
    old = os.umask(0)
    try:
        with unilock.Lock(lock_path):
            pass
    finally:
        os.umask(old)
    assert os.stat(lock_path).st_mode & 0o777 == 0o600


def test_try_raises_blocking_io_error_with_errno_and_path(lock_path):
    with unilock.Lock(lock_path):
        with pytest.raises(BlockingIOError) as e:
            unilock.Lock(lock_path, timeout=0).lock()
    assert e.value.errno == errno.EAGAIN
    assert e.value.filename == lock_path


def test_try_lock_returns_false_when_held(lock_path):
    with unilock.Lock(lock_path):
        other = unilock.Lock(lock_path)
        assert other.try_lock() is False
        other.close()


def test_timeout_raises_timeout_error_on_time(lock_path, peer):
    peer("unilock-lock", lock_path)
    lk = unilock.Lock(lock_path, timeout=0.3)
    began = time.monotonic()
    with pytest.raises(TimeoutError) as e:
        lk.lock()
    elapsed = time.monotonic() - began
    assert e.value.errno == errno.ETIMEDOUT
    assert 0.29 <= elapsed < 1.0
    lk.close()


def test_waiter_gets_the_lock_when_the_peer_releases(lock_path, peer):
    p = peer("unilock-lock", lock_path, hold=0.3)
    began = time.monotonic()
    with unilock.Lock(lock_path, timeout=5):
        assert time.monotonic() - began < 2
    p.wait()


def test_shared_locks_coexist_and_exclude_exclusive(lock_path):
    a = unilock.Lock(lock_path, mode="shared")
    b = unilock.Lock(lock_path, mode="shared")
    a.lock()
    b.lock(timeout=0)
    with pytest.raises(BlockingIOError):
        unilock.Lock(lock_path).lock(timeout=0)
    assert len(a.holders()) == 2
    a.close()
    b.close()


@pytest.mark.parametrize("backend", ["ofd", "posix"])
def test_byte_ranges(lock_path, backend):
    a = unilock.Lock(lock_path, backend=backend, range=(0, 10))
    b = unilock.Lock(lock_path, backend=backend, range=(10, 10))
    a.lock(timeout=0)
    b.lock(timeout=0)
    with pytest.raises(BlockingIOError):
        b.lock(timeout=0, range=(5, 10))
    h = b.query(range=(5, 1))
    assert h.start == 0 and h.length == 10 and h.backend == backend.upper()
    a.unlock(range=(0, 6))
    b.lock(timeout=0, range=(5, 1))
    a.close()
    b.close()


def test_a_range_on_flock_says_which_backends_can(lock_path):
    with pytest.raises(OSError) as e:
        unilock.Lock(lock_path, range=(0, 10)).lock()
    assert e.value.errno == errno.EOPNOTSUPP
    assert "OFD" in str(e.value)


def test_bad_arguments():
    with pytest.raises(ValueError):
        unilock.Lock("/tmp/x", mode="bogus")
    with pytest.raises(ValueError):
        unilock.Lock("/tmp/x", backend="nfs")
    with pytest.raises(ValueError):
        unilock.Lock("/tmp/x", range=(-1, 0))


def test_ofd_and_posix_together_are_invalid(lock_path):
    with pytest.raises(OSError) as e:
        unilock.Lock(lock_path, backend="ofd+posix").open()
    assert e.value.errno == errno.EINVAL


def test_cancel_from_another_thread(lock_path, peer):
    peer("unilock-lock", lock_path)
    lk = unilock.Lock(lock_path)
    timer = threading.Timer(0.2, lk.cancel)
    timer.start()
    began = time.monotonic()
    with pytest.raises(InterruptedError) as e:
        lk.lock()
    assert e.value.errno == errno.ECANCELED
    assert time.monotonic() - began < 2
    timer.join()
    assert not [h for h in lk.holders() if h.this_process]
    lk.close()


def test_cancel_in_a_non_main_thread_wait(lock_path, peer):
    peer("unilock-lock", lock_path)
    lk = unilock.Lock(lock_path)
    outcome = []

    def wait():
        try:
            lk.lock()
        except InterruptedError as e:
            outcome.append(e.errno)

    t = threading.Thread(target=wait)
    t.start()
    deadline = time.monotonic() + 5
    while not lk.cancel():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    t.join(5)
    assert outcome == [errno.ECANCELED]
    lk.close()


def test_a_cancel_with_no_call_in_progress_is_not_remembered(lock_path):
    lk = unilock.Lock(lock_path)
    assert lk.cancel() is False
    lk.open()
    assert lk.cancel() is False
    lk.lock(timeout=1)
    lk.close()


def test_close_cancels_a_wait_in_another_thread(lock_path, peer):
    peer("unilock-lock", lock_path)
    lk = unilock.Lock(lock_path)
    errors = []

    def wait():
        try:
            lk.lock()
        except OSError as e:
            errors.append(e.errno)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.2)
    lk.close()
    t.join(5)
    assert errors == [errno.ECANCELED]


def _interrupt_main_after(seconds):
    main = threading.main_thread().ident
    timer = threading.Timer(seconds, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    return timer


def test_keyboard_interrupt_during_a_wait_leaves_no_lock(lock_path, peer):
    p = peer("unilock-lock", lock_path)
    lk = unilock.Lock(lock_path)
    timer = _interrupt_main_after(0.3)
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        lk.lock()
    assert time.monotonic() - began < 2
    timer.join()
    assert not [h for h in lk.holders() if h.this_process]
    p.release()
    # The handle is usable again and the file free.
    lk.lock(timeout=0)
    lk.close()


def test_keyboard_interrupt_racing_the_grant_never_leaks(lock_path, peer):
    """The peer releases just as Ctrl-C arrives: either lock() returned (we hold it) or
    it raised KeyboardInterrupt and nothing is held."""
    for i in range(40):
        p = peer("unilock-lock", lock_path, hold=0.1)
        lk = unilock.Lock(lock_path)
        got = False
        timer = _interrupt_main_after(0.1 + (i % 4 - 1.5) * 0.002)
        try:
            try:
                lk.lock(timeout=5)
                got = True
            finally:
                timer.join()
                time.sleep(0.01)  # a pending signal is raised here at the latest
        except KeyboardInterrupt:
            pass
        mine = [h for h in lk.holders() if h.this_process]
        assert len(mine) == (1 if got else 0), (i, got, mine)
        lk.close()
        p.wait()


def test_interrupt_main_during_a_wait(lock_path, peer):
    import _thread

    peer("unilock-lock", lock_path)
    lk = unilock.Lock(lock_path)
    # interrupt_main only sets a flag: a signal to the process wakes the main thread.
    def poke():
        _thread.interrupt_main()
        os.kill(os.getpid(), signal.SIGWINCH)  # any handled signal wakes the sleep

    old = signal.signal(signal.SIGWINCH, lambda *a: None)
    timer = threading.Timer(0.2, poke)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            lk.lock(timeout=10)
    finally:
        timer.join()
        signal.signal(signal.SIGWINCH, old)
    assert not [h for h in lk.holders() if h.this_process]
    lk.close()


def test_same_thread_two_handles_deadlock_is_reported(lock_path):
    with unilock.Lock(lock_path):
        with pytest.raises(OSError) as e:
            unilock.Lock(lock_path).lock()
    assert e.value.errno == errno.EDEADLK


def test_two_threads_exclude_each_other(lock_path):
    order = []
    a = unilock.Lock(lock_path)
    a.lock()

    def other():
        with unilock.Lock(lock_path, timeout=5):
            order.append("other")

    t = threading.Thread(target=other)
    t.start()
    time.sleep(0.1)
    order.append("first")
    a.close()
    t.join(5)
    assert order == ["first", "other"]


def test_fileno_and_touch(lock_path):
    with unilock.Lock(lock_path) as lk:
        assert os.fstat(lk.fileno()).st_ino == os.stat(lock_path).st_ino
        lk.touch()


def test_a_directory_can_be_locked(tmp_path):
    with unilock.Lock(tmp_path) as lk:
        assert lk.holders()[0].this_process


def _library_reuses_thread_identities(lock_path):
    a, b = unilock.Lock(lock_path), unilock.Lock(lock_path)
    t = threading.Thread(target=a.lock)
    t.start()
    t.join()
    outcome = []

    def wait():
        try:
            b.lock(timeout=0.05)
        except OSError as e:
            outcome.append(e.errno)

    t = threading.Thread(target=wait)
    t.start()
    t.join()
    a.close()
    b.close()
    return outcome == [errno.EDEADLK]


def test_a_lock_left_by_an_exited_thread_is_an_ordinary_wait(lock_path):
    assert not any(_library_reuses_thread_identities(lock_path) for _ in range(10))


def test_an_open_failure_reads_as_pythons_own(tmp_path):
    missing = str(tmp_path / "no" / "such" / "x.lock")
    with pytest.raises(FileNotFoundError) as e:
        unilock.Lock(missing).lock()
    # The same words as open() would use, once, and the library's detail kept aside.
    assert str(e.value) == f"[Errno 2] No such file or directory: '{missing}'"
    assert e.value.filename == missing
    assert missing in e.value.detail and e.value.detail.count("no such file") == 1


def test_a_reason_of_the_library_follows_pythons_words(tmp_path):
    with pytest.raises(OSError) as e:
        unilock.Lock(str(tmp_path / "x.lock"), backend="flock").lock(range=(0, 5))
    assert e.value.errno == errno.EOPNOTSUPP
    text = str(e.value)
    assert text.startswith(f"[Errno {errno.EOPNOTSUPP}] {os.strerror(errno.EOPNOTSUPP)} (")
    assert text.count(os.strerror(errno.EOPNOTSUPP)) == 1


def test_a_nul_in_the_path_is_refused_before_c_sees_it(tmp_path):
    with pytest.raises(ValueError, match="embedded null byte"):
        unilock.Lock(str(tmp_path / "a\0b")).lock()
    assert os.listdir(tmp_path) == []


def test_holder_pids_name_every_process_sharing_the_descriptor(lock_path):
    import subprocess

    with unilock.Lock(lock_path, inherit=True) as lk:
        fd = lk.fileno()
        child = subprocess.Popen(["sleep", "30"], pass_fds=(fd,))
        try:
            deadline = time.monotonic() + 10
            while "lock:" not in open(f"/proc/{child.pid}/fdinfo/{fd}").read() or \
                    open(f"/proc/{child.pid}/comm").read().strip() != "sleep":
                assert time.monotonic() < deadline, "the child never had the descriptor"
                time.sleep(0.001)
            (holder,) = lk.holders()
            assert holder.pids == tuple(sorted((os.getpid(), child.pid)))
        finally:
            child.kill()
            child.wait()
