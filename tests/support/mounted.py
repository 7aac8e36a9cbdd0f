"""Real unionfs mounts for tests: a child process, a ready pipe with a deadline, a clean exit.

``with unionfs_mount(mnt, lowers, upper, work) as m:`` runs ``python -m unionfs -f --ready-fd N``
and waits (select, no sleeps) until it reports the mount live; leaving the block unmounts with
``fusermount3 -u`` and asserts the daemon exited 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from unionfs.launch import wait_ready

READY_TIMEOUT = 20.0
EXIT_TIMEOUT = 20.0


@dataclass
class Mounted:
    path: Path
    process: subprocess.Popen[bytes]


def overlay_options(lowers: Sequence[Path], upper: Path | None, work: Path | None,
                    extra: Sequence[str] = ()) -> str:
    opts = ["lowerdir=" + ":".join(str(p).replace(":", "\\:") for p in lowers)]
    if upper is not None and work is not None:
        opts += [f"upperdir={upper}", f"workdir={work}"]
    return ",".join([*opts, *extra])


def unmount(path: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(path)], check=False, capture_output=True)


@contextmanager
def unionfs_mount(mnt: Path, lowers: Sequence[Path], upper: Path | None = None,
                  work: Path | None = None, extra: Sequence[str] = (),
                  args: Sequence[str] = ()) -> Iterator[Mounted]:
    mnt.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "unionfs", "-f", "--ready-fd", str(write_fd),
           "-o", overlay_options(lowers, upper, work, extra), *args, str(mnt)]
    proc = subprocess.Popen(cmd, pass_fds=(write_fd,), stderr=subprocess.PIPE)
    os.close(write_fd)
    try:
        ready = wait_ready(read_fd, READY_TIMEOUT)
    finally:
        os.close(read_fd)
    if not ready:
        proc.kill()
        _, err = proc.communicate(timeout=EXIT_TIMEOUT)
        raise RuntimeError(f"unionfs did not come up: {err.decode(errors='replace')}")
    try:
        yield Mounted(mnt, proc)
    finally:
        unmount(mnt)
        try:
            _, err = proc.communicate(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, f"unionfs exited {proc.returncode}: {err.decode()}"
    assert b"Traceback" not in err and b"unexpected error" not in err, err.decode()


@contextmanager
def kernel_overlay(mnt: Path, lowers: Sequence[Path], upper: Path | None = None,
                   work: Path | None = None, extra: Sequence[str] = ()) -> Iterator[Path]:
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    overlay_options(lowers, upper, work, extra), str(mnt)],
                   check=True, capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
