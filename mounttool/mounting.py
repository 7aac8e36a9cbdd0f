"""Mounting through unionfs: ``python -m unionfs -o lowerdir=TOP:...:BOTTOM,upperdir=U,workdir=W``.

The unionfs CLI daemonizes once the mount is live and reports it on ``--ready-fd``; this module
waits for that line with a deadline and turns any failure into one MountToolError carrying the
last line unionfs printed.  Unmounting is ``fusermount3 -u``, then a wait for the daemon to
release its workdir lock (its last copy-ups are then in the upper dir).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mounttool.errors import MountToolError
from unionfs.launch import lock_within, wait_ready

READY_TIMEOUT = 60.0
DAEMON_EXIT_TIMEOUT = 60.0


def _check_path(p: Path) -> str:
    text = str(p)
    if any(c in text for c in ":,\\"):
        raise MountToolError(f"{text}: paths with ':', ',' or '\\' cannot be given to unionfs")
    return text


def options(lowers: list[Path], upper: Path | None, work: Path | None) -> str:
    """The overlay option string; lowers top first."""
    opts = "lowerdir=" + ":".join(_check_path(p) for p in lowers)
    if upper is not None and work is not None:
        opts += f",upperdir={_check_path(upper)},workdir={_check_path(work)}"
    else:
        opts += ",ro"
    if os.geteuid() != 0:
        opts += ",userxattr"  # layers unpacked without root mark opaque dirs in user.overlay.*
    return opts


def mount(lowers: list[Path], upper: Path | None, work: Path | None, mnt: Path,
          timeout: float = READY_TIMEOUT) -> None:
    """Mount the union at ``mnt``; return once it is live."""
    if not lowers:
        raise MountToolError("an image with no layers cannot be mounted")
    mnt.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "unionfs", "-o", options(lowers, upper, work)]
    r, w = os.pipe()
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen([*cmd, "--ready-fd", str(w), str(mnt)], pass_fds=(w,),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err)
        finally:
            os.close(w)
        try:
            ready = wait_ready(r, timeout)
        finally:
            os.close(r)
        if ready:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.seek(0)
        lines = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise MountToolError(f"mounting {mnt} failed: {why}")


def umount(mnt: Path, workdir: Path | None = None, timeout: float = DAEMON_EXIT_TIMEOUT) -> None:
    """Unmount ``mnt``; with the mount's ``workdir``, also wait until its daemon has finished
    (its last copy-ups synced), which the kernel's unmount does not."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", str(mnt)] if tool else ["umount", str(mnt)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[-1]
        raise MountToolError(f"unmounting {mnt} failed: {why}")
    if workdir is not None:
        wait_for_daemon(workdir, timeout)


def wait_for_daemon(workdir: Path, timeout: float) -> None:
    """Wait until no unionfs daemon holds ``workdir`` (each holds a flock on it)."""
    try:
        fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not lock_within(fd, timeout):
            raise MountToolError(f"the unionfs daemon of {workdir} is still running "
                                 f"{timeout:.0f} s after the unmount")
    finally:
        os.close(fd)  # drops the lock too


def live_mounts() -> set[str]:
    """Mount points of live FUSE mounts, from /proc/self/mountinfo."""
    out = set()
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                left, _, right = line.partition(b" - ")
                fields = left.split()
                if right.startswith(b"fuse") and len(fields) > 4:
                    out.add(_unescape(fields[4]))
    except OSError:
        pass
    return out


def _unescape(raw: bytes) -> str:
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), raw))
