"""Where a test's layers live: on one filesystem, or lower and upper on different ones.

Real setups put image layers on disk and the upper on tmpfs (the kernel developers' suite does
too), or the lower on tmpfs and the upper on a disk of another type. A test that only ever uses
one filesystem misses every ``EXDEV`` and every difference between filesystems (times, inode
numbers, file handles, xattr support), so mount tests and the differential test run in each
placement here:

- ``one-fs``: lower and upper directories side by side in one temp dir;
- ``upper-tmpfs``: lowers in the temp dir (the host's disk), upper and work on a fresh tmpfs;
- ``lower-tmpfs-upper-ext4``: lowers on a fresh tmpfs, upper and work on a loop-mounted ext4
  image (needs root and a loop device).

``with placed(name, base) as roots:`` gives ``roots.lower`` and ``roots.upper``: the directories
to build lower layers in and to put upper + work dirs in. Both are traversable by other users.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PLACEMENTS = ("one-fs", "upper-tmpfs", "lower-tmpfs-upper-ext4")

EXT4_IMAGE_MIB = 256


@dataclass(frozen=True)
class Roots:
    lower: Path
    """The directory lower layers are built in."""
    upper: Path
    """The directory the upper and work directories go in (one filesystem, as overlay needs)."""


@cache
def placement_missing(name: str) -> str | None:
    """Why this machine cannot give the placement ``name``, or None."""
    if name == "one-fs":
        return None
    if os.geteuid() != 0:
        return f"placement {name} mounts filesystems: needs root"
    if name == "lower-tmpfs-upper-ext4":
        if shutil.which("mkfs.ext4") is None:
            return "placement lower-tmpfs-upper-ext4 needs mkfs.ext4 (apt-get install e2fsprogs)"
        if not os.path.exists("/dev/loop-control"):
            return "placement lower-tmpfs-upper-ext4 needs loop devices (/dev/loop-control)"
    return None


@contextmanager
def _tmpfs(where: Path) -> Iterator[Path]:
    where.mkdir(mode=0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=512m", "tmpfs", str(where)],
                   check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


@contextmanager
def _ext4(where: Path, image: Path) -> Iterator[Path]:
    with open(image, "wb") as f:
        f.truncate(EXT4_IMAGE_MIB << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(image)], check=True,
                   capture_output=True)
    where.mkdir(mode=0o755)
    subprocess.run(["mount", "-o", "loop", str(image), str(where)], check=True,
                   capture_output=True)
    try:
        where.chmod(0o755)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
        image.unlink(missing_ok=True)


@contextmanager
def placed(name: str, base: Path) -> Iterator[Roots]:
    """Give the lower and upper roots of placement ``name`` under ``base`` (a temp dir)."""
    if name not in PLACEMENTS:
        raise ValueError(f"unknown placement {name!r}")
    with ExitStack() as stack:
        if name == "one-fs":
            lower = upper = base
        elif name == "upper-tmpfs":
            lower = base
            upper = stack.enter_context(_tmpfs(base / "upper-fs"))
        else:
            lower = stack.enter_context(_tmpfs(base / "lower-fs"))
            upper = stack.enter_context(_ext4(base / "upper-fs", base / "upper-fs.img"))
        yield Roots(lower, upper)
