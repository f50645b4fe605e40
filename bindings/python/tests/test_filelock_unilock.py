"""unilock's FileLock beyond filelock: cross-process and cross-library exclusion,
hand-off without polling, cancellation, interrupts."""

import errno
import os
import random
import shutil
import signal
import subprocess
import threading
import time

import filelock
import pytest

import unilock
from counting import count_in_processes


@pytest.mark.parametrize(
    ("holder_kind", "waiter"),
    [
        ("unilock-filelock", filelock.FileLock),
        ("filelock", unilock.FileLock),
        ("unilock-filelock", unilock.FileLock),
        ("unilock-lock", filelock.FileLock),
    ],
)
def test_exclusion_across_processes_and_libraries(peer, lock_path, holder_kind, waiter):
    p = peer(holder_kind, lock_path)
    mod = filelock if waiter is filelock.FileLock else unilock
    with pytest.raises(mod.Timeout):
        waiter(lock_path, timeout=0.2).acquire()
    p.release()
    with waiter(lock_path, timeout=0):
        pass


def test_unilock_and_filelock_exclude_each_other_in_one_process(lock_path):
    with unilock.FileLock(lock_path):
        with pytest.raises(filelock.Timeout):
            filelock.FileLock(lock_path, timeout=0.05).acquire()
    with filelock.FileLock(lock_path):
        with pytest.raises(unilock.Timeout):
            unilock.FileLock(lock_path, timeout=0.05).acquire()


def test_flock_command_excludes(lock_path):
    flock = shutil.which("flock")
    if flock is None:
        pytest.fail("flock(1) (util-linux) is not installed")
    proc = subprocess.Popen([flock, lock_path, "-c", "echo locked; read x"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "locked\n"
        with pytest.raises(unilock.Timeout):
            unilock.FileLock(lock_path, timeout=0.1).acquire()
    finally:
        proc.stdin.close()
        proc.wait(5)
    with unilock.FileLock(lock_path, timeout=0):
        assert subprocess.run([flock, "-n", lock_path, "true"]).returncode == 1


def test_hand_off_is_prompt_without_polling(peer, lock_path):
    p = peer("unilock-filelock", lock_path)
    lock = unilock.FileLock(lock_path, timeout=10)
    got = []

    def wait():
        with lock:
            got.append(time.monotonic())

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.2)
    released = time.monotonic()
    p.proc.stdin.close()
    t.join(5)
    # filelock would take up to its 50 ms poll interval.
    assert got and got[0] - released < 0.2


def test_mutual_exclusion_with_multiprocessing(tmp_path):
    total, path = count_in_processes("FileLock", tmp_path, rounds=100)
    assert total == 400


@pytest.mark.parametrize(
    ("cls", "holder_kind"),
    [(unilock.FileLock, "filelock"), (unilock.SoftFileLock, "filelock-softfilelock")],
)
def test_cancel_from_another_thread(peer, lock_path, cls, holder_kind):
    peer(holder_kind, lock_path)
    lock = cls(lock_path)
    assert lock.cancel() is False

    def cancel_soon():
        deadline = time.monotonic() + 5
        while not lock.cancel() and time.monotonic() < deadline:
            time.sleep(0.01)

    t = threading.Thread(target=cancel_soon)
    t.start()
    with pytest.raises(InterruptedError) as e:
        lock.acquire()
    t.join()
    assert e.value.errno == errno.ECANCELED
    assert lock.lock_counter == 0 and not lock.is_locked


@pytest.mark.parametrize(("cls", "holder_kind"), [(unilock.FileLock, "filelock"), (unilock.SoftFileLock, "filelock-softfilelock")])
def test_a_cancel_that_lands_at_any_moment_of_a_wait_ends_it(peer, lock_path, cls, holder_kind):
    # In the main thread an acquire is a short first wait, then a helper's wait: a
    # cancel that lands in the first one, as it times out, must still end the acquire.
    peer(holder_kind, lock_path)
    lock = cls(lock_path)
    rng = random.Random(7)
    for _ in range(100):
        delay = rng.uniform(0, 0.004)

        def cancel_after(delay=delay):
            time.sleep(delay)
            while not lock.cancel():
                time.sleep(0.0001)

        t = threading.Thread(target=cancel_after)
        t.start()
        began = time.monotonic()
        with pytest.raises(InterruptedError):
            lock.acquire(timeout=2)
        t.join()
        assert time.monotonic() - began < 1, f"a cancel after {delay * 1000:.2f} ms was lost"
        assert not lock.is_locked and lock.lock_counter == 0


def test_keyboard_interrupt_during_acquire_leaves_no_lock(peer, lock_path):
    p = peer("filelock", lock_path)
    lock = unilock.FileLock(lock_path)
    main = threading.main_thread().ident
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        lock.acquire()
    timer.join()
    assert not lock.is_locked and lock.lock_counter == 0
    p.release()
    # Nothing of ours is left on the file: filelock takes it at once.
    with filelock.FileLock(lock_path, timeout=0):
        pass
    assert not [h for h in unilock.Lock(lock_path).holders() if h.this_process]


def test_same_thread_two_instances_time_out_at_once(lock_path):
    with unilock.FileLock(lock_path):
        began = time.monotonic()
        with pytest.raises(unilock.Timeout) as e:
            unilock.FileLock(lock_path, timeout=5).acquire()
        assert time.monotonic() - began < 1
        assert e.value.__cause__.errno == errno.EDEADLK
        # Waiting forever would never end: an error instead of a hang.
        with pytest.raises(OSError) as e:
            unilock.FileLock(lock_path).acquire()
        assert e.value.errno == errno.EDEADLK


def test_a_read_only_lock_file_can_be_locked(tmp_path):
    path = tmp_path / "ro.lock"
    path.write_text("")
    path.chmod(0o444)
    lock = unilock.FileLock(str(path), mode=0o444)
    with lock:
        assert lock.is_locked


@pytest.mark.parametrize("name", ["FileLock", "SoftFileLock"])
@pytest.mark.parametrize(
    "bad, error",
    [
        ("", FileNotFoundError),
        ("a\0b.lock", ValueError),
        ("DIR", IsADirectoryError),
    ],
    ids=["empty", "nul", "directory"],
)
def test_a_bad_lock_path_raises_what_filelock_raises(tmp_path, monkeypatch, name, bad, error):
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path) if bad == "DIR" else bad
    raised = []
    for package in (filelock, unilock):
        with pytest.raises(error) as e:
            getattr(package, name)(path, timeout=0.1).acquire()
        raised.append(e.value)
    theirs, ours = raised
    assert type(ours) is type(theirs)
    if isinstance(theirs, OSError):
        # The same errno, words and file name; unilock may add its reason after the words.
        assert (ours.errno, ours.filename) == (theirs.errno, theirs.filename)
        assert ours.strerror.startswith(theirs.strerror), (ours, theirs)
    else:
        assert str(ours) == str(theirs)
    # Nothing was made under another name (a NUL must not cut the path short).
    assert sorted(os.listdir(tmp_path)) == []


def test_the_lock_class_still_locks_a_directory(tmp_path):
    with unilock.Lock(str(tmp_path)) as lk:
        assert lk.holders()[0].this_process

