"""unilock: advisory file locking for Linux over libunilock (flock, OFD and POSIX locks,
lock files), and locks in an etcd cluster across machines.

- :class:`Lock`: the full C API — backends, shared and exclusive modes, byte ranges,
  timeouts that sleep in the kernel, cancellation, and who holds a lock; with
  ``backend="etcd"``, a lock name in an etcd cluster (:meth:`Lock.fence`,
  :class:`LockLost`).
- :class:`FileLock`, :class:`SoftFileLock`, :class:`Timeout`: a drop-in for the
  ``filelock`` package (3.16): change ``import filelock`` to ``import unilock as
  filelock``. FileLock uses flock(2), so it excludes filelock.FileLock on the same file;
  SoftFileLock is a lock file (DOTLOCK), so it excludes filelock.SoftFileLock.

The library is loaded on first use from ``$UNILOCK_LIBRARY`` when set, else the copy
bundled in the package (``unilock/_native/libunilock.so.0``, in a platform wheel), else
the system's (``ctypes.util.find_library``, then the SONAME ``libunilock.so.0``).
"""

from ._filelock import AcquireReturnProxy, BaseFileLock, FileLock, SoftFileLock, Timeout, UnixFileLock
from ._lib import LibraryNotFoundError, version
from ._lock import Holder, Lock, LockLost

try:
    from ._version import version as __version__  # written by the build, from Cargo.toml
except ImportError:  # an editable install or a checkout on sys.path
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _distribution_version

    try:
        __version__ = _distribution_version("unilock")
    except PackageNotFoundError:
        __version__ = "0+unknown"

__all__ = [
    "AcquireReturnProxy",
    "BaseFileLock",
    "FileLock",
    "Holder",
    "LibraryNotFoundError",
    "Lock",
    "LockLost",
    "SoftFileLock",
    "Timeout",
    "UnixFileLock",
    "__version__",
    "version",
]
