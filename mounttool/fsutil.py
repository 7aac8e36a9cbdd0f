"""Filesystem helpers for unpacking: entry times, PAX xattrs, safe lookups in lower layers.

Kept apart from unpack.py so that module holds only the tar-application rules.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import tarfile
from collections.abc import Iterator
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
        rmtree_at(pfd, name)
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


def rmtree_at(pfd: int, name: bytes) -> None:
    """Remove ``name`` below the directory ``pfd``: no recursion (any depth), no symlink
    followed, read-only directories made writable first.  Nested directories are flattened
    upwards, one level per pass, then everything at the top level is removed."""
    try:
        st = os.lstat(name, dir_fd=pfd)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=pfd)
        return
    fd = os.open(name, DIR_FLAGS, dir_fd=pfd)
    try:
        os.fchmod(fd, 0o700)
        counter = 0
        while True:
            subdirs = _clear_files(fd)
            if not subdirs:
                break
            for sub in subdirs:
                counter = _lift_children(fd, sub, counter)
                os.rmdir(sub, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=pfd)


def _clear_files(fd: int) -> list[bytes]:
    """Unlink every non-directory in ``fd``; return the subdirectory names."""
    subdirs = []
    with os.scandir(fd) as it:
        entries = list(it)  # read the whole listing before changing the directory
    for entry in entries:
        name = os.fsencode(entry.name)
        if entry.is_dir(follow_symlinks=False):
            subdirs.append(name)
        else:
            os.unlink(name, dir_fd=fd)
    return subdirs


def _lift_children(fd: int, sub: bytes, counter: int) -> int:
    """Move the entries of ``fd/sub`` up into ``fd`` under fresh names."""
    sfd = os.open(sub, DIR_FLAGS, dir_fd=fd)
    try:
        os.fchmod(sfd, 0o700)
        with os.scandir(sfd) as it:
            entries = list(it)
        for entry in entries:
            while True:
                counter += 1
                try:
                    os.rename(os.fsencode(entry.name), b".rm-%d" % counter, src_dir_fd=sfd,
                              dst_dir_fd=fd)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR,
                                         errno.ENOTDIR):
                        raise
    finally:
        os.close(sfd)
    return counter


def remove_tree(path: Path) -> None:
    """Remove a file or a whole tree (see rmtree_at); a missing path is fine."""
    try:
        pfd = os.open(path.parent, DIR_FLAGS)
    except FileNotFoundError:
        return
    try:
        rmtree_at(pfd, os.fsencode(path.name))
    finally:
        os.close(pfd)


def walk_sorted(root: bytes) -> Iterator[bytes]:
    """Relative paths below ``root``, sorted, parents first; no recursion, no symlinks."""
    stack = [iter(sorted(os.listdir(root)))]
    prefixes = [b""]
    while stack:
        name = next(stack[-1], None)
        if name is None:
            stack.pop()
            prefixes.pop()
            continue
        rel = prefixes[-1] + name
        yield rel
        full = os.path.join(root, rel)
        if stat.S_ISDIR(os.lstat(full).st_mode):
            stack.append(iter(sorted(os.listdir(full))))
            prefixes.append(rel + b"/")


def disk_usage(path: Path) -> int:
    """Bytes used by a tree, each hardlinked inode counted once."""
    root = os.fsencode(path)
    seen: set[tuple[int, int]] = set()
    total = 0
    for rel in walk_sorted(root) if os.path.isdir(root) else ():
        st = os.lstat(os.path.join(root, rel))
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total
