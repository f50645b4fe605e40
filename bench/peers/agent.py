"""A Python peer as an agent of the peer benchmark (bench/peers/src/agent.rs has the
protocol): `python agent.py KIND PATH`, KIND one of

- ``raw``: ``fcntl.flock`` on a descriptor kept open (Python's own floor);
- ``filelock``: ``filelock.FileLock`` (polls every 50 ms while it waits);
- ``portalocker``: ``portalocker.Lock``: untimed with blocking flags (asleep in the
  kernel), timed with its default ``check_interval`` (polls every 0.25 s);
- ``unilock``: ``unilock.FileLock``, the binding's drop-in for filelock
  (needs ``UNILOCK_LIBRARY`` and the binding on ``PYTHONPATH``).

Times are ``time.monotonic_ns()``, CLOCK_MONOTONIC, the driver's clock.
"""

import fcntl
import os
import resource
import sys
import time


def cpu_ns():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return int((own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime) * 1e9)


class Raw:
    about = ""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def pair(self):
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def lock(self, ms):
        if ms > 0:
            raise RuntimeError("fcntl.flock has no timeout")
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if ms == 0 else 0))
        except BlockingIOError:
            return False
        return True

    def unlock(self):
        fcntl.flock(self.fd, fcntl.LOCK_UN)


class FileLock:
    """filelock, or unilock's drop-in for it: the same calls."""

    def __init__(self, path, module):
        self.module = module
        self.lock_object = module.FileLock(path)
        self.about = getattr(module, "__version__", "")

    def pair(self):
        self.lock_object.acquire()
        self.lock_object.release()

    def lock(self, ms):
        try:
            self.lock_object.acquire(timeout=-1 if ms < 0 else ms / 1000)
        except self.module.Timeout:
            return False
        return True

    def unlock(self):
        self.lock_object.release()


class Portalocker:
    def __init__(self, path):
        import portalocker

        self.portalocker = portalocker
        self.path = path
        self.pair_lock = portalocker.Lock(path)
        self.held = None
        self.about = portalocker.__version__

    def pair(self):
        self.pair_lock.acquire()
        self.pair_lock.release()

    def lock(self, ms):
        p = self.portalocker
        if ms < 0:
            self.held = p.Lock(self.path, flags=p.LockFlags.EXCLUSIVE)
        else:
            self.held = p.Lock(self.path, timeout=ms / 1000)
        try:
            self.held.acquire()
        except p.LockException:
            self.held = None
            return False
        return True

    def unlock(self):
        self.held.release()
        self.held = None


def make(kind, path):
    if kind == "raw":
        return Raw(path)
    if kind == "filelock":
        import filelock

        return FileLock(path, filelock)
    if kind == "portalocker":
        return Portalocker(path)
    if kind == "unilock":
        import unilock

        return FileLock(path, unilock)
    raise ValueError(f"unknown kind {kind}")


def main():
    kind, path = sys.argv[1], sys.argv[2]
    try:
        peer = make(kind, path)
    except (ImportError, OSError, ValueError) as e:
        print("unsupported", str(e).replace("\n", " "), flush=True)
        return
    print("ready", peer.about, flush=True)
    for line in sys.stdin:
        words = line.split()
        command, arg = words[0], int(words[1]) if len(words) > 1 else 0
        if command == "pair":
            began = time.monotonic_ns()
            for _ in range(arg):
                peer.pair()
            print(f"{(time.monotonic_ns() - began) / max(arg, 1):.1f}", flush=True)
        elif command == "wait":
            print("waiting", flush=True)
            began = time.monotonic_ns()
            try:
                got = peer.lock(arg)
            except Exception as e:  # noqa: BLE001 - reported to the driver
                print("error", repr(e).replace("\n", " "), flush=True)
                continue
            now = time.monotonic_ns()
            print(f"got {now}" if got else f"timeout {now - began}", flush=True)
        elif command == "release":
            peer.unlock()
            print("ok", flush=True)
        elif command == "cpu":
            print(cpu_ns(), flush=True)
        else:
            raise SystemExit(f"agent.py: unknown command {command!r}")


if __name__ == "__main__":
    main()
