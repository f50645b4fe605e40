"""The version (the crate's) and the build steps that bundle libunilock: see
build_backend/unilock_build.py. Build with pip or `python -m build`, not by running this."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "build_backend"))

from setuptools import setup  # noqa: E402

import unilock_build  # noqa: E402

setup(
    version=unilock_build.crate_version(),
    cmdclass=unilock_build.cmdclass(),
    distclass=unilock_build.Distribution,
    options=unilock_build.work_directories(),
)
