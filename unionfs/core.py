"""UnionFS: one mounted union in-process, the domain API the FUSE adapter calls.

It builds the :class:`~unionfs.tree.Tree` from a MountSpec and gathers the operation groups
(namespace, files, xattrs) plus directory snapshots for readdir.  Every method raises ``OSError``
on failure; nothing here imports pyfuse3, so tests drive a whole union without a mount.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass

from unionfs.files import Files
from unionfs.merge import Resolved
from unionfs.namespace import Namespace
from unionfs.nodes import Node
from unionfs.spec import MountSpec
from unionfs.tree import Tree, oserror
from unionfs.xattrs import Xattrs


@dataclass(slots=True)
class DirHandle:
    """An open directory: the merged listing taken at its first readdir (as the kernel does),
    so offsets stay stable."""

    node: Node
    entries: list[tuple[bytes, Resolved]] | None = None
    """Taken at the first readdir: a listing the kernel caches is never asked for."""
    changes: int = 0
    """The tree's change count when the listing was taken."""
    fresh: bool = False
    """The listing was read just then, so its stat results are current."""


DirEntry = tuple[int, bytes, Node, bool]
"""One readdir answer: offset, name, node, and whether the kernel counts it as a lookup (every
entry but ``.`` and ``..``).  A plain tuple: a listing makes one per entry."""


class UnionFS:
    """A union of layers: tree state plus the operations on it."""

    def __init__(self, spec: MountSpec) -> None:
        self.spec = spec
        self.tree = Tree(spec)
        self.names = Namespace(self.tree)
        self.files = Files(self.tree, writeback=spec.writeback)
        self.xattrs = Xattrs(self.tree)
        self.dirs: dict[int, DirHandle] = {}
        self._next_dh = 1  # never 0: a readdir without a handle has 0 (see listing_of)
        self.closed = False
        self.listings: dict[int, DirHandle] = {}
        """Directories read without an open handle (the kernel opens directories itself), by
        inode: the snapshot of their last listing from offset 0."""

    def close(self) -> None:
        """Release every handle, sync pending copy-ups, close the layers (once)."""
        if self.closed:
            return
        self.closed = True
        for fh in list(self.files.handles):
            self.files.release(fh)
        self.tree.close()

    def node(self, ino: int) -> Node:
        return self.tree.node(ino)

    def opendir(self, node: Node) -> int:
        if not node.is_dir:
            raise oserror(errno.ENOTDIR)
        dh = self._next_dh
        self._next_dh += 1
        self.dirs[dh] = DirHandle(node)
        return dh

    def readdir(self, dh: int, start: int) -> Iterator[DirEntry]:
        """Entries of the open directory ``dh`` from offset ``start``."""
        return self._entries(self.dir_handle(dh), start)

    def readdir_unopened(self, ino: int, start: int) -> Iterator[DirEntry]:
        """Entries of directory ``ino`` from offset ``start``, read without an open handle: a
        listing from offset 0 takes a snapshot that later offsets continue.  It is kept past
        its end (the kernel asks once more there, and must get nothing) until the next listing
        from offset 0 or until the kernel forgets the directory."""
        node = self.node(ino)
        if not node.is_dir:
            raise oserror(errno.ENOTDIR)
        handle = self.listings.get(ino)
        if handle is None or handle.node is not node:
            handle = self.listings[ino] = DirHandle(node)
        return self._entries(handle, start)

    def _entries(self, handle: DirHandle, start: int) -> Iterator[DirEntry]:
        """Entries from offset ``start``: ``.`` and ``..`` first, then the snapshot, each
        checked again if the tree changed since it was taken (never a deleted entry)."""
        tree = self.tree
        parent = handle.node
        if handle.entries is None or start == 0:  # first read, or rewinddir: list (again)
            handle.entries, handle.fresh = tree.list_dir(parent)
            handle.changes = tree.changes
        if start == 0:
            yield 0, b".", parent, False
        if start <= 1:
            yield 1, b"..", parent.parent or tree.root, False
        stale = handle.changes != tree.changes
        for offset in range(max(start, 2), len(handle.entries) + 2):
            name, found = handle.entries[offset - 2]
            if stale:
                again = tree.resolve(parent, name)
                if again is None:
                    continue
                found = again
            node = tree.node_for(parent, name, found)
            if node.st is None and (handle.fresh or stale) and node.layer == found.layer \
                    and node.fd is None:
                node.st = found.st  # read just now: as good as a stat
            yield offset, name, node, True

    def dir_handle(self, dh: int) -> DirHandle:
        try:
            return self.dirs[dh]
        except KeyError:
            raise oserror(errno.EBADF) from None

    def releasedir(self, dh: int) -> None:
        self.dirs.pop(dh, None)

    def forget(self, ino: int, count: int) -> None:
        node = self.tree.table.forget(ino, count)
        if node is None:
            return
        self.listings.pop(ino, None)
        if node.fd is not None and node.opens == 0:
            os.close(node.fd)
            node.fd = None
