"""Build step for the one C module, unionfs._cachedir (see its source for why it exists).

Everything else is in pyproject.toml.  The module links libfuse3 (pkg-config fuse3), which
scripts/setup.sh installs with its headers; where they are missing the build goes on without
it and unionfs runs without kernel-cached directory listings.
"""

from __future__ import annotations

import shlex
import subprocess

from setuptools import Extension, setup


def pkg_config(*args: str) -> list[str]:
    try:
        out = subprocess.run(["pkg-config", *args, "fuse3"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return shlex.split(out)


cflags = pkg_config("--cflags")
libs = pkg_config("--libs")
setup(
    ext_modules=[Extension(
        "unionfs._cachedir",
        sources=["unionfs/_cachedir.c"],
        include_dirs=[f[2:] for f in cflags if f.startswith("-I")],
        libraries=[f[2:] for f in libs if f.startswith("-l")] or ["fuse3"],
        optional=True,  # a failed build warns; unionfs then works without it
    )],
)
