"""unilock: advisory file locking for Linux over libunilock (flock, OFD and POSIX locks,
lock files).

- :class:`Lock`: the full C API — backends, shared and exclusive modes, byte ranges,
  timeouts that sleep in the kernel, cancellation, and who holds a lock.
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
from ._lock import Holder, Lock

__version__ = "0.1.0"

__all__ = [
    "AcquireReturnProxy",
    "BaseFileLock",
    "FileLock",
    "Holder",
    "LibraryNotFoundError",
    "Lock",
    "SoftFileLock",
    "Timeout",
    "UnixFileLock",
    "__version__",
    "version",
]
