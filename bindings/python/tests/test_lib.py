import ctypes
import errno
import re
import shutil
from pathlib import Path

import pytest

import unilock
from unilock import _lib

HEADER = Path(__file__).resolve().parents[3] / "include" / "unilock.h"


def test_version_is_the_major_this_binding_speaks():
    assert unilock.version().split(".")[0] == str(_lib.ABI_MAJOR)


@pytest.mark.skipif(not HEADER.exists(), reason="not in the source tree")
def test_every_header_function_is_declared_with_argtypes_and_restype():
    names = set(re.findall(r"^[a-z].*?\b(unilock_\w+)\(", HEADER.read_text(), re.M))
    assert names == set(_lib._SIGNATURES) | set(_lib._OPTIONAL_SIGNATURES)
    assert not set(_lib._SIGNATURES) & set(_lib._OPTIONAL_SIGNATURES)
    lib = _lib.lib()
    for name, (restype, argtypes) in {**_lib._SIGNATURES, **_lib._OPTIONAL_SIGNATURES}.items():
        assert _lib.has(name)
        fn = getattr(lib, name)
        assert fn.restype is restype
        assert fn.argtypes == argtypes


@pytest.mark.skipif(not HEADER.exists(), reason="not in the source tree")
def test_struct_layouts_match_the_header():
    # unilock_options: six uint32_t, then six pointers; unilock_holder: 2*4 + 2*8 +
    # 2*4 + 16.
    assert ctypes.sizeof(_lib.Options) == 6 * 4 + 6 * ctypes.sizeof(ctypes.c_void_p)
    assert ctypes.sizeof(_lib.CHolder) == 48
    text = HEADER.read_text()
    body = re.search(r"typedef struct unilock_options \{(.*?)\} unilock_options;", text, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields = re.findall(r"^\s*(uint32_t|const char \*)\s*(\w+);", body, re.M)
    expected = [(name, ctypes.c_uint32 if ctype == "uint32_t" else ctypes.c_char_p) for ctype, name in fields]
    assert _lib.Options._fields_ == expected
    for name in ("CREATE", "FOLLOW", "INHERIT", "UNLINK", "FAIR", "SHARED", "EXCLUSIVE"):
        assert re.search(rf"#define UNILOCK_{name} (\d+)", text).group(1) == str(getattr(_lib, name))
    for name in ("FLOCK", "OFD", "POSIX", "DOTLOCK", "ETCD"):
        value = re.search(rf"#define UNILOCK_BACKEND_{name} (\d+)", text).group(1)
        assert value == str(getattr(_lib, "BACKEND_" + name))


def test_loader_names_every_reason_when_all_fail(monkeypatch, tmp_path):
    monkeypatch.setenv("UNILOCK_LIBRARY", "/nonexistent/libunilock.so")
    monkeypatch.setattr(_lib, "BUNDLED", str(tmp_path / "_native" / "libunilock.so.0"))
    monkeypatch.setattr(_lib.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(_lib, "SONAME", "libunilock-does-not-exist.so.0")
    with pytest.raises(_lib.LibraryNotFoundError) as e:
        _lib._open_library()
    text = str(e.value)
    assert "$UNILOCK_LIBRARY '/nonexistent/libunilock.so'" in text
    assert f"no library is bundled in the package ({tmp_path}/_native/libunilock.so.0 is missing" in text
    assert 'find_library("unilock") found nothing' in text
    assert "libunilock-does-not-exist.so.0" in text


def test_loader_refuses_a_library_that_is_not_libunilock(monkeypatch, tmp_path):
    monkeypatch.setenv("UNILOCK_LIBRARY", ctypes.util.find_library("c") or "libc.so.6")
    monkeypatch.setattr(_lib, "BUNDLED", str(tmp_path / "missing.so.0"))
    monkeypatch.setattr(_lib.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(_lib, "SONAME", "libunilock-does-not-exist.so.0")
    with pytest.raises(_lib.LibraryNotFoundError, match="is not libunilock"):
        _lib._open_library()


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    """A copy of the loaded library standing for the one a platform wheel bundles."""
    copy = tmp_path / "_native" / _lib.SONAME
    copy.parent.mkdir()
    shutil.copyfile(_lib.lib()._name, copy)
    monkeypatch.setattr(_lib, "BUNDLED", str(copy))
    return str(copy)


def _no_system_lookup(name):
    raise AssertionError("the system library was looked for")


def test_loader_takes_unilock_library_before_the_bundled_library(monkeypatch, bundled, tmp_path):
    explicit = tmp_path / "explicit.so"
    shutil.copyfile(_lib.lib()._name, explicit)
    monkeypatch.setenv("UNILOCK_LIBRARY", str(explicit))
    monkeypatch.setattr(_lib.ctypes.util, "find_library", _no_system_lookup)
    assert _lib._open_library()._name == str(explicit)


def test_loader_takes_the_bundled_library_before_the_system_one(monkeypatch, bundled):
    monkeypatch.delenv("UNILOCK_LIBRARY", raising=False)
    monkeypatch.setattr(_lib.ctypes.util, "find_library", _no_system_lookup)
    lib = _lib._open_library()
    assert lib._name == bundled
    assert lib.unilock_version().decode() == unilock.version()


def test_loader_falls_back_to_the_system_library_without_a_bundled_one(monkeypatch, tmp_path):
    system = _lib.lib()._name
    monkeypatch.delenv("UNILOCK_LIBRARY", raising=False)
    monkeypatch.setattr(_lib, "BUNDLED", str(tmp_path / "_native" / _lib.SONAME))
    monkeypatch.setattr(_lib.ctypes.util, "find_library", lambda name: system if name == "unilock" else None)
    assert _lib._open_library()._name == system


def test_strerror_and_errors_are_oserror_subclasses(lock_path):
    assert _lib.strerror(-errno.EAGAIN)
    with pytest.raises(FileNotFoundError) as e:
        unilock.Lock(lock_path, create=False).open()
    assert e.value.errno == errno.ENOENT
    assert e.value.filename == lock_path
