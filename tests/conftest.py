"""Capability checks computed once: tests that need FUSE or root skip only where they truly
cannot run, and say why."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from functools import cache

import pytest


@cache
def fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist on this machine"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not accessible to this user"
    return None


@cache
def root_missing() -> str | None:
    return None if os.geteuid() == 0 else "needs root (trusted xattrs, mknod, kernel mounts)"


@cache
def overlay_missing() -> str | None:
    if root_missing():
        return root_missing()
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("l", "u", "w", "m"):
            os.mkdir(os.path.join(tmp, sub))
        opts = f"lowerdir={tmp}/l,upperdir={tmp}/u,workdir={tmp}/w"
        res = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, f"{tmp}/m"],
                             capture_output=True)
        if res.returncode != 0:
            return f"kernel overlayfs cannot mount here: {res.stderr.decode().strip()}"
        subprocess.run(["umount", f"{tmp}/m"], check=True)
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("fuse") and fuse_missing():
        pytest.skip(fuse_missing() or "")
    if item.get_closest_marker("root") and root_missing():
        pytest.skip(root_missing() or "")
    if item.get_closest_marker("overlay") and overlay_missing():
        pytest.skip(overlay_missing() or "")
