"""The two kinds of mount the harness compares, behind one small protocol.

* :class:`KernelOverlay`: ``mount -t overlay`` with ``index=on`` (hardlinks survive copy-up)
  and the semantics pinned explicitly (``redirect_dir=off``, ``metacopy=off``) so a distro's
  module defaults cannot change the reference.  If the kernel refuses ``index=on`` the mount is
  retried without it and ``index`` records that (the runner prints it).
* :class:`Unionfs`: ``python -m unionfs -f -o lowerdir=..,upperdir=..,workdir=.. --ready-fd N``
  in a child process; waits for the ready line with a deadline (no sleeps), unmounts with
  ``fusermount3 -u`` and demands exit status 0.

``mounter.mount(...)`` returns a :class:`Mounted`; ``Mounted.unmount()`` always tears down
(escalating to a lazy unmount and a kill) and returns a problem description or None.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from unionfs.launch import wait_ready

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0


class MountError(Exception):
    """A mount could not be made (message says why, with the filesystem's log tail)."""


def escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def overlay_options(lowers: list[str], upper: str, work: str) -> str:
    return (f"lowerdir={':'.join(escape(p) for p in lowers)},upperdir={escape(upper)},"
            f"workdir={escape(work)}")


class Mounted(Protocol):
    def unmount(self) -> str | None: ...

    def alive(self) -> bool: ...

    def abort(self) -> None:
        """Make every pending and future request fail (the watchdog's way out of a hang)."""


class Mounter(Protocol):
    name: str

    def mount(self, lowers: list[str], upper: str, work: str, mnt: str) -> Mounted: ...


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def is_alive(mnt: str) -> bool:
    try:
        os.stat(mnt)
        return os.path.ismount(mnt)
    except OSError:
        return False


class KernelMount:
    def __init__(self, mnt: str) -> None:
        self.mnt = mnt

    def alive(self) -> bool:
        return is_alive(self.mnt)

    def abort(self) -> None:
        run(["umount", "-l", self.mnt])

    def unmount(self) -> str | None:
        res = run(["umount", self.mnt])
        if res.returncode == 0:
            return None
        run(["umount", "-l", self.mnt])
        return f"umount {self.mnt}: {res.stderr.strip()}"


class KernelOverlay:
    """Kernel overlayfs, the reference."""

    def __init__(self, *, index: bool = True, extra: str = "redirect_dir=off,metacopy=off",
                 name: str = "kernel") -> None:
        self.index = index
        self.extra = extra
        self.name = name

    def mount(self, lowers: list[str], upper: str, work: str, mnt: str) -> Mounted:
        opts = overlay_options(lowers, upper, work)
        if self.extra:
            opts += "," + self.extra
        if self.index:
            res = run(["mount", "-t", "overlay", "overlay", "-o", opts + ",index=on", mnt])
            if res.returncode == 0:
                return KernelMount(mnt)
            self.index = False
            print(f"difftest: kernel refused index=on ({res.stderr.strip()}); "
                  "hardlinks will break on copy-up", file=sys.stderr)
        res = run(["mount", "-t", "overlay", "overlay", "-o", opts, mnt])
        if res.returncode != 0:
            raise MountError(f"mount -t overlay {opts} {mnt}: {res.stderr.strip()}")
        return KernelMount(mnt)


class UnionfsMount:
    def __init__(self, mnt: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.mnt = mnt
        self.proc = proc
        self.log = log
        self.connection: int | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None and is_alive(self.mnt)

    def abort(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(OSError):
                Path(f"/sys/fs/fuse/connections/{self.connection}/abort").write_text("1")

    def tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-15:])

    def unmount(self) -> str | None:
        problems = []
        res = run(["fusermount3", "-u", self.mnt])
        if res.returncode != 0:
            problems.append(f"fusermount3 -u: {res.stderr.strip()}")
            run(["fusermount3", "-uz", self.mnt])
        try:
            code = self.proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
            problems.append("unionfs did not exit after unmount; killed")
        if code != 0:
            problems.append(f"unionfs exited with status {code}")
        if problems:
            return "; ".join(problems) + "\n" + self.tail()
        return None


class Unionfs:
    """The filesystem under test, through its command line."""

    name = "unionfs"

    def __init__(self, python: str = sys.executable, extra_args: tuple[str, ...] = ()) -> None:
        self.python = python
        self.extra_args = extra_args

    def mount(self, lowers: list[str], upper: str, work: str, mnt: str) -> Mounted:
        log = Path(mnt).with_name(Path(mnt).name + ".log")
        read_fd, write_fd = os.pipe()
        cmd = [self.python, "-m", "unionfs", "-f", "-o", overlay_options(lowers, upper, work),
               "--ready-fd", str(write_fd), *self.extra_args, mnt]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, pass_fds=(write_fd,), stdout=out,
                                    stderr=subprocess.STDOUT, cwd=REPO, stdin=subprocess.DEVNULL)
        os.close(write_fd)
        handle = UnionfsMount(mnt, proc, log)
        try:
            ready = wait_ready(read_fd, READY_TIMEOUT)
        finally:
            os.close(read_fd)
        if not ready or not handle.alive():
            problem = handle.unmount() or ""
            raise MountError(f"unionfs did not become ready: {' '.join(cmd)}\n{problem}"
                             f"\n{handle.tail()}")
        handle.connection = os.minor(os.stat(mnt).st_dev)
        return handle
