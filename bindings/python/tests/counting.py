"""Processes counting under a lock: a lost update means two of them held it at once."""

import multiprocessing


def _count(kind, path, counter, rounds):
    import unilock

    lock = getattr(unilock, kind)(path)
    for _ in range(rounds):
        with lock:
            with open(counter) as f:
                n = int(f.read() or 0)
            with open(counter, "w") as f:
                f.write(str(n + 1))


def count_in_processes(kind, tmp_path, workers=4, rounds=50):
    """Runs `workers` spawned processes that each add `rounds` to a counter file under
    a `unilock.<kind>` lock, and returns the count and the lock file's path."""
    path = str(tmp_path / "m.lock")
    counter = str(tmp_path / "counter")
    open(counter, "w").close()
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_count, args=(kind, path, counter, rounds)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with open(counter) as f:
        return int(f.read()), path
