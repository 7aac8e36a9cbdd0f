"""Filesystem helpers for unpacking: entry times, PAX xattrs, safe lookups in lower layers.

Kept apart from unpack.py so that module holds only the tar-application rules.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import stat
import tarfile
from pathlib import Path

log = logging.getLogger(__name__)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PRIVATE_XATTRS = (b"trusted.overlay.", b"user.overlay.")
XATTR_PREFIX = "SCHILY.xattr."


def lower_dir_stat(lowers: tuple[Path, ...], parts: tuple[bytes, ...]) -> os.stat_result | None:
    """The directory ``parts`` in the topmost lower layer holding that path, walked safely."""
    for lower in lowers:
        try:
            fd = os.open(lower, DIR_FLAGS)
        except OSError:
            continue
        try:
            for comp in parts:
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
            return os.fstat(fd)
        except FileNotFoundError:
            continue
        except OSError:
            return None  # a non-directory (or whiteout) here hides the layers below
        finally:
            os.close(fd)
    return None


def pax_time_ns(text: str | None) -> int | None:
    """A PAX time ("1600000000.123456789") in exact nanoseconds; None if absent or bad."""
    if not text:
        return None
    sec, _, frac = text.strip().partition(".")
    try:
        sign = -1 if sec.startswith("-") else 1
        return int(sec) * 10**9 + sign * int((frac + "000000000")[:9] or 0)
    except ValueError:
        return None


def times(ti: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in ns, exact when the PAX header has them (float loses nanoseconds)."""
    mtime = pax_time_ns(ti.pax_headers.get("mtime"))
    if mtime is None:
        mtime = round(float(ti.mtime) * 1e9)
    atime = pax_time_ns(ti.pax_headers.get("atime"))
    return (mtime if atime is None else atime), mtime


def xattrs_of(ti: tarfile.TarInfo) -> list[tuple[bytes, bytes]]:
    out = []
    for key, value in ti.pax_headers.items():
        if not key.startswith(XATTR_PREFIX):
            continue
        name = key[len(XATTR_PREFIX):].encode("utf-8", "surrogateescape")
        if name.startswith(PRIVATE_XATTRS):
            log.warning("dropping overlay-private xattr %s on %s", name.decode(), ti.name)
            continue
        out.append((name, value.encode("utf-8", "surrogateescape")))
    return out


def setxattr(target: int | bytes, key: bytes, value: bytes, ti: tarfile.TarInfo) -> None:
    try:
        if isinstance(target, int):
            os.setxattr(target, key, value)
        else:
            os.setxattr(target, key, value, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
            raise
        log.warning("cannot set xattr %s on %s: %s", key.decode(errors="replace"), ti.name,
                    exc.strerror)


def remove(pfd: int, name: bytes, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=pfd)
    else:
        os.unlink(name, dir_fd=pfd)


def syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path`` (one call instead of an fsync per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


def set_xattrs_fd(fd: int, ti: tarfile.TarInfo) -> None:
    for key, value in xattrs_of(ti):
        setxattr(fd, key, value, ti)


def set_xattrs_at(pfd: int, name: bytes, ti: tarfile.TarInfo) -> None:
    """xattrs on ``name`` in the directory ``pfd``, never following a symlink."""
    if not any(k.startswith(XATTR_PREFIX) for k in ti.pax_headers):
        return
    path = b"/proc/self/fd/%d/%s" % (pfd, name)
    for key, value in xattrs_of(ti):
        setxattr(path, key, value, ti)


def set_owner_xattrs(pfd: int, name: bytes | None, ti: tarfile.TarInfo,
                     same_owner: bool) -> None:
    """Owner and xattrs of ``name`` in ``pfd`` (of ``pfd`` itself when name is None)."""
    if name is None:
        if same_owner:
            os.fchown(pfd, ti.uid, ti.gid)
        set_xattrs_fd(pfd, ti)
        return
    if same_owner:
        os.chown(name, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
    set_xattrs_at(pfd, name, ti)
