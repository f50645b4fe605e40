"""A peer process for the cross-process tests.

    python peer.py KIND PATH [HOLD_SECONDS]

Takes an exclusive lock on PATH with KIND (unilock-filelock, filelock, unilock-lock,
unilock-ofd, unilock-softfilelock, filelock-softfilelock, unilock-etcd: PATH is then
a lock name in the etcd at $UNILOCK_TEST_ETCD_ENDPOINTS), prints "locked" and
flushes, then holds it until stdin closes (or for HOLD_SECONDS), releases it, prints
"released" and exits.
"""

import sys
import time


def main() -> None:
    kind, path = sys.argv[1], sys.argv[2]
    hold = float(sys.argv[3]) if len(sys.argv) > 3 else None
    if kind == "unilock-filelock":
        import unilock

        lock = unilock.FileLock(path)
    elif kind == "filelock":
        import filelock

        lock = filelock.FileLock(path)
    elif kind == "unilock-lock":
        import unilock

        lock = unilock.Lock(path)
    elif kind == "unilock-ofd":
        import unilock

        lock = unilock.Lock(path, backend="ofd")
    elif kind == "unilock-etcd":  # PATH is a lock name, the cluster in the environment
        import os

        import unilock

        lock = unilock.Lock(path, backend="etcd", endpoints=os.environ["UNILOCK_TEST_ETCD_ENDPOINTS"])
    elif kind == "unilock-softfilelock":
        import unilock

        lock = unilock.SoftFileLock(path)
    elif kind == "filelock-softfilelock":
        import filelock

        lock = filelock.SoftFileLock(path)
    else:
        raise SystemExit(f"unknown kind {kind}")
    with lock:
        print("locked", flush=True)
        if hold is None:
            sys.stdin.read()
        else:
            time.sleep(hold)
    print("released", flush=True)


if __name__ == "__main__":
    main()
