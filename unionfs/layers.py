"""One layer directory of the union: every syscall on it is relative to its root fd.

A :class:`Layer` is opened once, before the mount exists, and from then on reached only through
its directory file descriptor (``*at`` calls, ``/proc/self/fd`` for xattrs).  Paths inside a layer
are ``bytes`` relative to its root (``b""`` is the root itself) and never start with ``/``; the
final component is never followed when it is a symlink.  Lower layers are only ever read.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from unionfs.whiteout import proc_path

_MISSING = (errno.ENOENT, errno.ENOTDIR)


def join(parent: bytes, name: bytes) -> bytes:
    """The layer-relative path of ``name`` inside ``parent`` (``b""`` is the root)."""
    return name if not parent else parent + b"/" + name


def split(rel: bytes) -> tuple[bytes, bytes]:
    """``join``'s inverse: (parent, name)."""
    parent, _, name = rel.rpartition(b"/")
    return parent, name


def at(rel: bytes) -> bytes:
    """The argument an ``*at`` syscall takes for ``rel`` (the root is ``.``)."""
    return rel or b"."


class Layer:
    """A read-only lower directory or the writable upper directory, reached through an fd."""

    __slots__ = ("dev", "fd", "index", "root", "writable")

    def __init__(self, index: int, root: bytes, writable: bool) -> None:
        self.index = index
        self.root = root
        self.writable = writable
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        """The layer's directory fd, for ``*at`` calls."""
        self.dev = os.fstat(self.fd).st_dev

    def __repr__(self) -> str:
        kind = "upper" if self.writable else "lower"
        return f"Layer({self.index}, {self.root!r}, {kind})"

    def close(self) -> None:
        os.close(self.fd)

    # -- reading -------------------------------------------------------------------------

    def lstat(self, rel: bytes) -> os.stat_result | None:
        """lstat of ``rel``, or None when it does not exist in this layer."""
        try:
            return os.stat(at(rel), dir_fd=self.fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _MISSING:
                return None
            raise

    def open(self, rel: bytes, flags: int, mode: int = 0o600) -> int:
        return os.open(at(rel), flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)

    def open_dir(self, rel: bytes) -> int:
        return os.open(at(rel), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=self.fd)

    def scandir(self, rel: bytes) -> Iterator[os.DirEntry[bytes]]:
        """The entries of directory ``rel`` (names as bytes; ``d_type`` cached by the kernel)."""
        with os.scandir(proc_path(self.fd, rel)) as it:
            yield from it

    def readlink(self, rel: bytes) -> bytes:
        return os.readlink(at(rel), dir_fd=self.fd)
