"""UnionFS: one mounted union in-process, the domain API the FUSE adapter calls.

It builds the :class:`~unionfs.tree.Tree` from a MountSpec and gathers the operation groups
(namespace, files, xattrs) plus directory snapshots for readdir.  Every method raises ``OSError``
on failure; nothing here imports pyfuse3, so tests drive a whole union without a mount.
"""

from __future__ import annotations

import errno
import os
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
    """An open directory: the merged listing taken at opendir, so offsets stay stable."""

    node: Node
    entries: list[tuple[bytes, Resolved]]


class UnionFS:
    """A union of layers: tree state plus the operations on it."""

    def __init__(self, spec: MountSpec) -> None:
        self.spec = spec
        self.tree = Tree(spec)
        self.names = Namespace(self.tree)
        self.files = Files(self.tree)
        self.xattrs = Xattrs(self.tree)
        self.dirs: dict[int, DirHandle] = {}
        self._next_dh = 1

    def close(self) -> None:
        for fh in list(self.files.handles):
            self.files.release(fh)
        self.tree.close()

    def node(self, ino: int) -> Node:
        return self.tree.node(ino)

    def opendir(self, node: Node) -> int:
        dh = self._next_dh
        self._next_dh += 1
        self.dirs[dh] = DirHandle(node, self.tree.list_dir(node))
        return dh

    def dir_handle(self, dh: int) -> DirHandle:
        try:
            return self.dirs[dh]
        except KeyError:
            raise oserror(errno.EBADF) from None

    def releasedir(self, dh: int) -> None:
        self.dirs.pop(dh, None)

    def forget(self, ino: int, count: int) -> None:
        node = self.tree.table.forget(ino, count)
        if node is not None and node.fd is not None and node.opens == 0:
            os.close(node.fd)
            node.fd = None
