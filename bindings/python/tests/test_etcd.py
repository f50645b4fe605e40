"""The ETCD backend through the binding, against a real etcd that this module starts
on free loopback ports in a temporary directory and stops at the end (also when a
test fails). Debian: apt-get install etcd-server etcd-client. A missing etcd fails
these tests: it is not a reason to skip them."""

import ctypes
import errno
import json
import os
import pickle
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

import unilock

HERE = os.path.dirname(os.path.abspath(__file__))


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.fail(f"{name} is not installed: the ETCD tests need a real etcd (Debian: apt-get install etcd-server etcd-client)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    """One etcd member on loopback ports, its data in ``directory``."""

    def __init__(self, directory) -> None:
        self.directory = str(directory)
        self.proc = None
        self.url = ""
        self.log_path = os.path.join(self.directory, "etcd.log")

    def start(self) -> None:
        etcd = _tool("etcd")
        for _attempt in range(3):  # a port taken between the probe and etcd's bind
            client, peer = _free_port(), _free_port()
            self.url = f"http://127.0.0.1:{client}"
            peer_url = f"http://127.0.0.1:{peer}"
            data = os.path.join(self.directory, f"data-{client}")
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        etcd,
                        "--name", "a",
                        "--data-dir", data,
                        "--listen-client-urls", self.url,
                        "--advertise-client-urls", self.url,
                        "--listen-peer-urls", peer_url,
                        "--initial-advertise-peer-urls", peer_url,
                        "--initial-cluster", f"a={peer_url}",
                        "--unsafe-no-fsync",  # a test cluster: no fsync wait per write
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C of pytest reaches it through stop()
                )
            if self._wait_ready(30):
                return
            self.stop()
        pytest.fail(f"etcd did not start; its log: {self.log_tail()}")

    def _wait_ready(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            request = urllib.request.Request(
                self.url + "/v3/kv/range", data=json.dumps({"key": "AA=="}).encode(), method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=1) as answer:
                    if answer.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def log_tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-20:])
        except OSError as e:
            return str(e)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def etcdctl(self, *args: str) -> str:
        out = subprocess.run(
            [_tool("etcdctl"), "--endpoints", self.url, *args],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, f"etcdctl {' '.join(args)}: {out.stderr}"
        return out.stdout


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture
def name(request):
    """A lock name of this test's own."""
    return "unilock-python-test/" + request.node.name


@pytest.fixture
def handles(etcd, name):
    """Makes ETCD Locks on ``name`` and closes them at the end."""
    made = []

    def make(**kw):
        kw.setdefault("endpoints", etcd.url)
        lk = unilock.Lock(name, backend="etcd", **kw)
        made.append(lk)
        return lk

    yield make
    for lk in made:
        lk.close()


def _lease_of_holder(etcd, name) -> str:
    """The lease id (hex) of the holder's key, as etcdctl lists the queue's keys."""
    keys = [k for k in etcd.etcdctl("get", "--prefix", name + "/", "--keys-only").split() if k]
    assert keys, "no key in the lock's queue"
    # --keys-only lists in key order; the holder is the one with the lowest create
    # revision: the only key here.
    assert len(keys) == 1, keys
    return keys[0].rsplit("/", 1)[1]


def _wait_until(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_two_processes_exclude_each_other(etcd, name, handles, peer):
    env = {"UNILOCK_TEST_ETCD_ENDPOINTS": etcd.url}
    # A peer process holds: this one cannot take it, and sees who holds it.
    p = peer("unilock-etcd", name, env=env)
    mine = handles()
    assert mine.try_lock() is False
    with pytest.raises(BlockingIOError) as e:
        mine.lock(timeout=0)
    assert e.value.errno == errno.EAGAIN
    who = mine.query()
    assert who is not None and who.backend == "ETCD" and who.mode == "exclusive"
    assert who.pid == p.proc.pid and not who.this_process
    assert who.host == socket.gethostname()
    assert who.command.startswith("python")  # the peer's command name
    # The peer releases while this process waits: the wait ends.
    threading.Timer(0.3, p.release).start()
    began = time.monotonic()
    mine.lock(timeout=10)
    assert 0.25 <= time.monotonic() - began < 5
    # Now this process holds: a new peer waits until it releases.
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "peer.py"), "unilock-etcd", name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        assert not ready, "the peer took the lock while this process held it"
        assert _wait_until(lambda: len(mine.holders()) == 2)
        mine.unlock()
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready and proc.stdout.readline() == "locked\n"
        assert mine.try_lock() is False
        proc.stdin.close()
        assert proc.stdout.readline() == "released\n"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert mine.try_lock() is True


def test_two_handles_of_one_process_exclude_each_other(handles):
    a, b = handles(), handles()
    a.lock()
    assert b.try_lock() is False
    a.unlock()
    assert b.try_lock() is True
    assert a.try_lock() is False


def test_timed_lock_times_out_on_time_and_leaves_the_queue(handles):
    holder = handles()
    holder.lock()
    waiter = handles(timeout=0.5)
    began = time.monotonic()
    with pytest.raises(TimeoutError) as e:
        waiter.lock()
    elapsed = time.monotonic() - began
    assert e.value.errno == errno.ETIMEDOUT
    assert 0.49 <= elapsed < 2.0, elapsed
    assert [h.this_process for h in holder.holders()] == [True]


def test_cancel_ends_a_wait_in_the_main_thread(handles):
    holder = handles()
    holder.lock()
    waiter = handles()
    canceller = threading.Timer(0.3, waiter.cancel)
    canceller.start()
    began = time.monotonic()
    with pytest.raises(InterruptedError) as e:
        waiter.lock(timeout=20)
    elapsed = time.monotonic() - began
    canceller.join()
    assert e.value.errno == errno.ECANCELED
    assert 0.25 <= elapsed < 2.0, elapsed
    assert len(holder.holders()) == 1


def test_cancel_ends_a_wait_in_another_thread(handles):
    holder = handles()
    holder.lock()
    waiter = handles()
    failure = []

    def wait():
        try:
            waiter.lock(timeout=20)
        except BaseException as exc:  # noqa: BLE001 - checked below
            failure.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    assert _wait_until(lambda: len(holder.holders()) == 2)
    began = time.monotonic()
    assert waiter.cancel() is True
    t.join(5)
    assert not t.is_alive()
    assert time.monotonic() - began < 2.0
    assert len(failure) == 1 and isinstance(failure[0], InterruptedError)
    assert failure[0].errno == errno.ECANCELED
    assert len(holder.holders()) == 1


def test_ctrl_c_ends_a_wait_and_takes_nothing(handles):
    holder = handles()
    holder.lock()
    waiter = handles()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        waiter.lock(timeout=20)
    timer.join()
    assert time.monotonic() - began < 2.0
    assert len(holder.holders()) == 1


def test_fence_tokens_strictly_increase_across_grants(handles, etcd, name):
    a, b = handles(), handles()
    tokens = []
    for lk in (a, b, a, b, a):
        lk.lock(timeout=5)
        token = lk.fence()
        assert lk.holders()[0].start == token
        tokens.append(token)
        lk.unlock()
    assert all(x < y for x, y in zip(tokens, tokens[1:])), tokens
    # etcd's own lock is a grant too, between ours.
    etcd.etcdctl("lock", name, "true")
    a.lock()
    assert a.fence() > tokens[-1]
    # No lock held: no token.
    with pytest.raises(unilock.LockLost) as e:
        b.fence()
    assert e.value.errno == errno.ENOLCK


def test_fence_of_a_file_lock_is_eopnotsupp(lock_path):
    with unilock.Lock(lock_path) as lk:
        with pytest.raises(OSError) as e:
            lk.fence()
    assert e.value.errno == errno.EOPNOTSUPP


def test_list_shows_the_holder_then_a_waiter_with_host(handles):
    holder, waiter = handles(), handles()
    holder.lock()
    done = threading.Event()

    def wait():
        try:
            waiter.lock(timeout=20)
            done.set()
        except InterruptedError:  # the cleanup's cancel, after a failure
            pass

    t = threading.Thread(target=wait)
    t.start()
    try:
        assert _wait_until(lambda: len(holder.holders()) == 2)
        first, second = holder.holders()
        host = socket.gethostname()
        assert first.start == holder.fence() and first.this_process and first.pid == os.getpid()
        assert second.start > first.start and second.this_process and second.pid == os.getpid()
        assert first.host == host and second.host == host
        assert first.backend == second.backend == "ETCD"
        assert holder.query() is None  # its own lock does not conflict
        assert handles().query().start == first.start  # another handle's view
        holder.unlock()
        assert done.wait(10)
        (now,) = holder.holders()
        assert now.start == second.start == waiter.fence()
    finally:
        waiter.cancel()
        t.join(10)


def test_etcdctl_lock_key_has_no_host(etcd, name, handles):
    """A key of `etcdctl lock` has an empty value: host "" and pid None."""
    proc = subprocess.Popen(
        [_tool("etcdctl"), "--endpoints", etcd.url, "lock", name],
        env={**os.environ, "ETCDCTL_API": "3"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().startswith(name + "/")  # etcdctl prints its key
        who = handles().query()
        assert who is not None and who.host == "" and who.pid is None
    finally:
        proc.terminate()
        proc.wait(10)


def test_shared_lock_is_eopnotsupp(handles):
    lk = handles(mode="shared")
    with pytest.raises(OSError) as e:
        lk.lock()
    assert e.value.errno == errno.EOPNOTSUPP


def test_revoked_lease_raises_lock_lost(etcd, name, handles):
    lk = handles(lease_ttl=2)
    lk.lock()
    token = lk.fence()
    etcd.etcdctl("lease", "revoke", _lease_of_holder(etcd, name))
    # The library's keep-alive finds the lease gone within a third of its TTL; then
    # the next call fails.
    deadline = time.monotonic() + 2 + 2
    lost = None
    while time.monotonic() < deadline:
        try:
            assert lk.fence() == token
        except unilock.LockLost as e:
            lost = e
            break
        time.sleep(0.05)
    assert lost is not None, "the revoked lease was not reported"
    assert lost.errno == errno.ENOLCK and isinstance(lost, OSError)
    # The handle holds nothing now; another takes the lock with a higher token.
    other = handles()
    other.lock(timeout=5)
    assert other.fence() > token


def test_touch_after_a_revoke_raises_lock_lost_at_once(etcd, name, handles):
    lk = handles(lease_ttl=30)
    lk.lock()
    lk.touch()
    etcd.etcdctl("lease", "revoke", _lease_of_holder(etcd, name))
    with pytest.raises(unilock.LockLost) as e:
        lk.touch()
    assert e.value.errno == errno.ENOLCK
    with pytest.raises(unilock.LockLost):
        lk.fence()
    lk.lock(timeout=5)  # the handle can take it again


def test_password_is_never_shown(etcd, name):
    secret = "pa55-w0rd-never-shown"
    lk = unilock.Lock(name, backend="etcd", endpoints=etcd.url, user="someone", password=secret)
    try:
        shown = [repr(lk), str(lk), repr(vars(lk)), repr(lk._options), repr(lk._password)]
        with pytest.raises(PermissionError) as e:
            lk.lock(timeout=5)  # authentication is not enabled on this cluster: refused
        shown += [str(e.value), repr(e.value), e.value.detail]
        for text in shown:
            assert secret not in text
        with pytest.raises(TypeError):
            pickle.dumps(lk._password)
    finally:
        lk.close()


def test_etcd_options_need_the_etcd_backend(tmp_path):
    with pytest.raises(ValueError, match="endpoints, lease_ttl need backend='etcd'"):
        unilock.Lock(tmp_path / "x", endpoints="http://127.0.0.1:1", lease_ttl=3)
    with pytest.raises(ValueError):
        unilock.Lock("name", backend="etcd", password="a\0b")


def test_unreachable_endpoint_is_a_clear_error(name):
    port = _free_port()  # nobody listens there
    lk = unilock.Lock(name, backend="etcd", endpoints=f"127.0.0.1:{port}", timeout=5)
    try:
        with pytest.raises(ConnectionRefusedError):
            lk.lock()
    finally:
        lk.close()


def test_file_locks_leave_the_etcd_fields_zero(lock_path):
    """A library older than the ETCD fields reads only the first 20 bytes and refuses
    non-zero bytes past them (E2BIG): a file lock must leave them zero."""
    lk = unilock.Lock(lock_path, backend="ofd", stale_after=3)
    assert bytes(lk._options)[20:] == bytes(ctypes.sizeof(lk._options) - 20)
    with lk:
        assert lk.holders()[0].host == socket.gethostname()
