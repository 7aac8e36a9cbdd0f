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
from typing import Protocol

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


class Barrier(Protocol):
    """Waits for work in flight on a layer (the upper layer's copy-ups being published)."""

    def settle(self) -> None:
        """Wait until nothing is in flight."""

    def settle_name(self, rel: bytes) -> None:
        """Wait until nothing in flight changes what an lstat of ``rel`` shows."""


class Layer:
    """A read-only lower directory or the writable upper directory, reached through an fd."""

    __slots__ = ("barrier", "dev", "dirfd", "index", "root", "writable")

    def __init__(self, index: int, root: bytes, writable: bool) -> None:
        self.index = index
        self.root = root
        self.writable = writable
        self.dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        """The layer's directory fd, reached without the barrier: only for the copy-up
        publisher's thread (see ``unionfs.publish``); everything else uses :attr:`fd`."""
        self.dev = os.fstat(self.dirfd).st_dev
        self.barrier: Barrier | None = None
        """Settled before the fd is handed out: the upper layer's waits for copy-ups still
        being published, so nothing sees the layer between a copy and its publication."""

    @property
    def fd(self) -> int:
        """The layer's directory fd, for ``*at`` calls (after the barrier, if any)."""
        if self.barrier is not None:
            self.barrier.settle()
        return self.dirfd

    def __repr__(self) -> str:
        kind = "upper" if self.writable else "lower"
        return f"Layer({self.index}, {self.root!r}, {kind})"

    def close(self) -> None:
        os.close(self.dirfd)

    # -- reading -------------------------------------------------------------------------

    def fd_for(self, rel: bytes) -> int:
        """The layer's directory fd, for a call that reads or changes only ``rel`` itself
        (its stat, xattrs, mode, times): waits only for publications of ``rel`` or into it."""
        if self.barrier is not None:
            self.barrier.settle_name(rel)
        return self.dirfd

    def lstat(self, rel: bytes) -> os.stat_result | None:
        """lstat of ``rel``, or None when it does not exist in this layer."""
        if self.barrier is not None:  # only a publication of rel or in it makes a difference
            self.barrier.settle_name(rel)
        try:
            return os.stat(at(rel), dir_fd=self.dirfd, follow_symlinks=False)
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
