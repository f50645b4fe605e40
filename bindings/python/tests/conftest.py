import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


class Peer:
    """Another process holding a lock (tests/peer.py)."""

    def __init__(self, kind: str, path, hold=None, env=None) -> None:
        args = [sys.executable, str(HERE / "peer.py"), kind, str(path)]
        if hold is not None:
            args.append(str(hold))
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        line = self.proc.stdout.readline()
        assert line == "locked\n", f"peer said {line!r}"

    def release(self) -> None:
        if self.proc.poll() is None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        assert self.proc.stdout.readline() == "released\n"
        self.proc.wait(10)

    def wait(self) -> None:
        self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def peer():
    peers = []

    def start(kind, path, hold=None, env=None):
        p = Peer(kind, path, hold, env)
        peers.append(p)
        return p

    yield start
    for p in peers:
        p.kill()


@pytest.fixture
def lock_path(tmp_path):
    return str(tmp_path / "test.lock")


def pytest_report_header(config):
    import unilock

    return f"libunilock {unilock.version()} from {unilock._lib.lib()._name}"
