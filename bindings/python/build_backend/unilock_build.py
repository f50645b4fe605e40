"""The build backend of the unilock Python package: setuptools, plus libunilock.

A wheel carries ``unilock/_native/libunilock.so.0``, built from the Rust crate by the
crate's Makefile (``make build``, that is ``cargo build --release``) and stripped of
debug information, and is tagged for the platform (``py3-none-linux_x86_64``: the
binding is ctypes, so any Python 3 on that platform can load it).

Where the crate is: two directories up (``bindings/python`` in the source tree), or
``rust/`` beside this package's ``pyproject.toml`` in an sdist, which carries the
crate's sources there so that ``pip install unilock-X.tar.gz`` builds the library.

The package's version is the crate's (``version`` in its ``Cargo.toml``).

A pure wheel (``py3-none-any``, no library: the binding then loads the system's
libunilock) is built when

- ``UNILOCK_PURE_WHEEL=1`` is in the environment, or the config setting ``pure=true``
  is given (``pip wheel -C pure=true``, ``python -m build -C pure=true``): for
  distributions that ship libunilock on its own;
- cargo is not found (on ``PATH``, or as ``$CARGO``), or the crate's sources are not
  there, or the platform is not Linux: the build log says so.

When cargo is there and the library's build fails, the wheel's build fails.

``STRIP`` names the strip program (default ``strip``); ``STRIP=`` (empty) keeps the
debug information. ``CARGO_TARGET_DIR`` and ``CARGO``/``CARGOFLAGS`` are honoured as
the Makefile honours them.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import build_meta as _setuptools
from setuptools.build_meta import build_sdist, get_requires_for_build_sdist  # noqa: F401  (hooks)
from setuptools.command.bdist_wheel import bdist_wheel as _bdist_wheel
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist
from setuptools.dist import Distribution as _Distribution

PURE_ENV = "UNILOCK_PURE_WHEEL"
SONAME = "libunilock.so.0"
#: Where the library goes in the package (the loader looks there: src/unilock/_lib.py).
NATIVE_DIR = "_native"

#: The crate's files and directories an sdist carries (those present are copied):
#: what `make build` reads, tests/ and benches/ because Cargo.toml names targets
#: there (cargo refuses a manifest whose named targets are missing), and the licences.
CRATE_PATHS = [
    "Cargo.toml",
    "Cargo.lock",
    "cbindgen.toml",
    "unilock.map",
    "Makefile",
    "unilock.pc.in",
    "README.md",
    ".cargo",
    "src",
    "include",
    "tests",
    "benches",
]
CRATE_GLOBS = re.compile(r"^(LICENSE|LICENCE|COPYING|NOTICE)([-.].*)?$")

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(message: str) -> None:
    print(f"unilock build: {message}", file=sys.stderr, flush=True)


def crate_root() -> str | None:
    """The Rust crate's directory: rust/ in an sdist, else the source tree's root."""
    in_sdist = os.path.join(HERE, "rust")
    if os.path.isfile(os.path.join(in_sdist, "Cargo.toml")):
        return in_sdist
    tree = os.path.dirname(os.path.dirname(HERE))
    ours = os.path.join(tree, "bindings", "python")
    if os.path.isfile(os.path.join(tree, "Cargo.toml")) and os.path.isdir(ours) and os.path.samefile(ours, HERE):
        return tree
    return None


def crate_version(root: str | None = None) -> str:
    """``version`` of the crate's Cargo.toml (``[package]``, or ``[workspace.package]``
    when the package inherits it)."""
    root = root or crate_root()
    if root is None:
        raise RuntimeError(
            f"unilock: no Cargo.toml found (looked in {os.path.join(HERE, 'rust')} and "
            f"{os.path.dirname(os.path.dirname(HERE))}): the version comes from the Rust crate, "
            "so build from the source tree or from an sdist made by this backend"
        )
    section = None
    versions: dict[str, str] = {}
    with open(os.path.join(root, "Cargo.toml"), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            header = re.match(r"^\[([^\[\]]+)\]$", line)
            if header:
                section = header.group(1).strip()
                continue
            value = re.match(r'^version\s*=\s*"([^"]+)"$', line)
            if value and section in ("package", "workspace.package"):
                versions.setdefault(section, value.group(1))
    version = versions.get("package") or versions.get("workspace.package")
    if version is None:
        raise RuntimeError(f"unilock: no version in {os.path.join(root, 'Cargo.toml')}")
    return version


def work_directories() -> dict:
    """setuptools' build and egg-info directories: under the crate's target/ when
    building in the source tree, so that the tree stays clean."""
    root = crate_root()
    if root is None or root == os.path.join(HERE, "rust"):
        return {}
    work = os.path.join(root, "target", "python-setuptools")
    os.makedirs(work, exist_ok=True)
    return {"build": {"build_base": os.path.join(work, "build")}, "egg_info": {"egg_base": work}}


def _truthy(name: str, value: str) -> bool:
    value = value.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"unilock: {name}={value!r}: expected 1/true/yes/on or 0/false/no/off")


_decision: tuple[str | None, str] | None = None


def bundle_decision() -> tuple[str | None, str]:
    """(the crate's directory, why) when the wheel bundles the library, else
    (None, why not). Decided once per build."""
    global _decision
    if _decision is None:
        _decision = _decide()
    return _decision


def _decide() -> tuple[str | None, str]:
    pure = "a pure wheel without libunilock (the binding will load the system's library)"
    if _truthy(PURE_ENV, os.environ.get(PURE_ENV, "")):
        return None, f"{PURE_ENV} is set (or pure=true): building {pure}"
    if not sys.platform.startswith("linux"):
        return None, f"libunilock is built on Linux only, this is {sys.platform}: building {pure}"
    root = crate_root()
    if root is None:
        return None, f"the Rust sources of libunilock are not here: building {pure}"
    cargo = os.environ.get("CARGO", "cargo")
    if shutil.which(cargo) is None:
        return None, (
            f"cargo ({cargo!r}) was not found on PATH, so libunilock cannot be built from source: "
            f"building {pure}. Install Rust's cargo and reinstall to bundle the library, or install "
            "libunilock (or set UNILOCK_LIBRARY to its path) for this package to use"
        )
    return root, f"building libunilock from {root} with cargo, to bundle it in the wheel"


def build_library(root: str) -> str:
    """Builds libunilock with the crate's Makefile; returns the path of libunilock.so."""
    env = dict(os.environ)
    make = env.get("MAKE", "make")
    cargo = env.get("CARGO", "cargo")
    if shutil.which(make):
        command = [make, "-C", root, "build"]
    else:
        log(f"{make!r} not found: running cargo directly (what `make build` runs)")
        command = [cargo, "build", "--release", "--manifest-path", os.path.join(root, "Cargo.toml")]
        command += env.get("CARGOFLAGS", "").split()
    log("running " + " ".join(command))
    subprocess.run(command, check=True, env=env, stdout=sys.stderr)
    metadata = subprocess.run(
        [cargo, "metadata", "--format-version", "1", "--no-deps", "--offline", "--manifest-path",
         os.path.join(root, "Cargo.toml")],
        check=True, env=env, stdout=subprocess.PIPE,
    )
    target = json.loads(metadata.stdout)["target_directory"]
    library = os.path.join(target, "release", "libunilock.so")
    if not os.path.isfile(library):
        raise RuntimeError(f"unilock: the build succeeded but {library} is missing")
    return library


def copy_library(library: str, destination: str) -> None:
    """Copies the library, stripped unless STRIP is set empty."""
    strip = os.environ.get("STRIP", "strip")
    if strip and shutil.which(strip):
        subprocess.run([strip, "--strip-unneeded", "-o", destination, library], check=True)
    else:
        if strip:
            log(f"{strip!r} not found: the bundled library keeps its debug information")
        shutil.copyfile(library, destination)
    os.chmod(destination, 0o755)


class build_py(_build_py):
    """Also writes unilock/_version.py and puts the library in unilock/_native/."""

    def run(self) -> None:
        package = os.path.join(self.build_lib, "unilock")
        # A build directory may be reused (pip builds in the tree): start afresh, so
        # that no stale module or library of an earlier build gets into this wheel.
        shutil.rmtree(package, ignore_errors=True)
        super().run()
        with open(os.path.join(package, "_version.py"), "w", encoding="utf-8") as f:
            f.write(f'"""Written by the build from the crate\'s Cargo.toml."""\n\nversion = "{crate_version()}"\n')
        native = os.path.join(package, NATIVE_DIR)
        if self.editable_mode:
            return
        root, why = bundle_decision()
        log(why)
        if root is None:
            return
        library = build_library(root)
        os.makedirs(native)
        destination = os.path.join(native, SONAME)
        copy_library(library, destination)
        log(f"bundled {library} as unilock/{NATIVE_DIR}/{SONAME} ({os.path.getsize(destination)} bytes)")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        native = os.path.join(self.build_lib, "unilock", NATIVE_DIR, SONAME)
        version = os.path.join(self.build_lib, "unilock", "_version.py")
        return outputs + [p for p in (version, native) if os.path.exists(p)]


class Distribution(_Distribution):
    """Binary when it carries the library: then setuptools installs the package into
    platlib and makes a platform wheel (Root-Is-Purelib: false)."""

    def has_ext_modules(self) -> bool:
        return bundle_decision()[0] is not None


class bdist_wheel(_bdist_wheel):
    """Tagged py3-none-PLATFORM when it carries the library: ctypes loads it from any
    Python 3, so the interpreter and ABI tags would only narrow it."""

    def get_tag(self) -> tuple[str, str, str]:
        impl, abi, platform = super().get_tag()
        if self.root_is_pure:
            return impl, abi, platform
        return "py3", "none", platform


def workspace_members(root: str) -> list[str]:
    """The directories named by ``[workspace] members`` in the crate's Cargo.toml."""
    with open(os.path.join(root, "Cargo.toml"), encoding="utf-8") as f:
        text = f.read()
    found = re.search(r"^\[workspace\][^\[]*?^members\s*=\s*\[([^\]]*)\]", text, re.M | re.S)
    if not found:
        return []
    members = []
    for pattern in re.findall(r'"([^"]+)"', found.group(1)):
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            relative = os.path.relpath(path, root)
            if relative != "." and os.path.isdir(path):
                members.append(relative)
    return members


class sdist(_sdist):
    """Also carries the Rust crate, in rust/."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        root = crate_root()
        if root is None:
            raise RuntimeError("unilock: an sdist needs the Rust crate (Cargo.toml), which is not here")
        destination = os.path.join(base_dir, "rust")
        names = [n for n in CRATE_PATHS if os.path.exists(os.path.join(root, n))]
        names += sorted(n for n in os.listdir(root) if CRATE_GLOBS.match(n))
        names += [m for m in workspace_members(root) if m not in names]
        ignore = shutil.ignore_patterns("target", "__pycache__", "*.pyc")
        for name in names:
            source = os.path.join(root, name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(destination, name), ignore=ignore)
            else:
                os.makedirs(destination, exist_ok=True)
                shutil.copy2(source, os.path.join(destination, name))
        log(f"the sdist carries the crate from {root} in rust/: {', '.join(names)}")


def cmdclass() -> dict:
    return {"build_py": build_py, "bdist_wheel": bdist_wheel, "sdist": sdist}


# The PEP 517 hooks: setuptools', with the config setting "pure" turned into
# UNILOCK_PURE_WHEEL (each hook runs in a process of its own).


def _settings(config_settings: dict | None) -> dict | None:
    if not config_settings or "pure" not in config_settings:
        return config_settings
    settings = dict(config_settings)
    value = settings.pop("pure")
    os.environ[PURE_ENV] = "1" if _truthy("pure", str(value)) else "0"
    return settings or None


def get_requires_for_build_wheel(config_settings=None):
    return _setuptools.get_requires_for_build_wheel(_settings(config_settings))


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, _settings(config_settings))


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _setuptools.build_wheel(wheel_directory, _settings(config_settings), metadata_directory)


def get_requires_for_build_editable(config_settings=None):
    return _setuptools.get_requires_for_build_editable(_settings(config_settings))


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    return _setuptools.prepare_metadata_for_build_editable(metadata_directory, _settings(config_settings))


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _setuptools.build_editable(wheel_directory, _settings(config_settings), metadata_directory)
