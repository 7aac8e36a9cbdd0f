"""The merged tree: layers and nodes tied together; lookup, attributes, listings and copy-up.

:class:`Tree` owns the mount's state (open layers, the inode table, the work dir) and the reads
every operation shares.  It raises ``OSError`` and knows nothing of FUSE, so the whole union can
be driven in-process by tests.  Entry-changing operations live in ``namespace``, open files in
``files``, xattrs in ``xattrs``; they all go through a Tree.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass

from unionfs.copyup import Copier, WorkDir
from unionfs.layers import Layer
from unionfs.merge import LayerStack, Resolved
from unionfs.nodes import InodeTable, InoPolicy, Key, Node
from unionfs.spec import MountSpec

log = logging.getLogger(__name__)


def oserror(code: int, what: bytes | str = "") -> OSError:
    return OSError(code, os.strerror(code), what)


def key_of(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: the credentials a new file is owned by."""

    uid: int
    gid: int
    umask: int = 0


@dataclass(frozen=True, slots=True)
class Attr:
    """What getattr shows for a node: its number, the real stat, the merged link count."""

    ino: int
    st: os.stat_result
    nlink: int


class Tree:
    """The state of one mount and the operations that only read it (plus copy-up)."""

    def __init__(self, spec: MountSpec) -> None:
        self.spec = spec
        self.fmt = spec.whiteout
        self.writable = spec.writable
        layers: list[Layer] = []
        if spec.upper is not None:
            layers.append(Layer(0, spec.upper, writable=spec.writable))
        for path in spec.lowers:
            layers.append(Layer(len(layers), path, writable=False))
        self.layers = layers
        self.stack = LayerStack(layers, has_upper=spec.upper is not None, fmt=self.fmt)
        self.work: WorkDir | None = None
        self.copier: Copier | None = None
        if spec.writable and spec.work is not None:
            self.work = WorkDir(spec.work)
            self.copier = Copier(layers[0], self.work, self.fmt, spec.fsync)
        devices = tuple(dict.fromkeys(layer.dev for layer in layers))
        self.table = InodeTable(InoPolicy(devices))
        root = self.stack.root()
        self.root = self.table.add_root(root.layer, root.dir_layers, key_of(root.st))

    def close(self) -> None:
        for layer in self.layers:
            layer.close()
        if self.work is not None:
            self.work.close()

    # -- shared helpers ---------------------------------------------------------------------

    @property
    def upper(self) -> Layer:
        return self.layers[0]

    def require_writable(self) -> Copier:
        if self.copier is None:
            raise oserror(errno.EROFS)
        return self.copier

    def is_upper(self, node: Node) -> bool:
        return self.stack.is_upper(node.layer)

    def node(self, ino: int) -> Node:
        return self.table.get(ino)

    # -- lookup -------------------------------------------------------------------------------

    def resolve(self, parent: Node, name: bytes) -> Resolved | None:
        if not parent.is_dir:
            raise oserror(errno.ENOTDIR)
        return self.stack.resolve(parent.dir_layers, parent.path(), name)

    def lookup(self, parent: Node, name: bytes) -> Node:
        """The node for ``name`` in ``parent`` (no lookup count taken); ENOENT if invisible."""
        if name == b".":
            return parent
        if name == b"..":
            return parent.parent or self.root
        found = self.resolve(parent, name)
        if found is None:
            raise oserror(errno.ENOENT, name)
        return self.node_for(parent, name, found)

    def node_for(self, parent: Node, name: bytes, found: Resolved) -> Node:
        """The node of a resolved entry: the known one for its identity, or a new one."""
        key = key_of(found.st)
        node = self.table.find(key)
        if node is None:
            return self.table.new_node(key, parent, name, found.layer, found.dir_layers,
                                       found.is_dir)
        if node.is_dir:
            if node.parent is not parent or node.name != name:
                # Two places show one directory (a bind mount inside a layer): two inodes.
                return self.table.new_node(key, parent, name, found.layer, found.dir_layers,
                                           True)
            node.layer, node.dir_layers = found.layer, found.dir_layers
        elif node.parent is None:
            node.parent, node.name = parent, name
        elif node.parent is not parent or node.name != name:
            node.add_alias(parent, name)
        return node

    def remember(self, node: Node) -> Node:
        """Count one kernel lookup of ``node`` (lookup, create, readdirplus, ...)."""
        node.lookups += 1
        return node

    # -- attributes ---------------------------------------------------------------------------

    def stat(self, node: Node) -> os.stat_result:
        if node.fd is not None:
            return os.fstat(node.fd)
        st = self.layers[node.layer].lstat(node.path())
        if st is None:
            raise oserror(errno.ENOENT, node.path())
        return st

    def attr(self, node: Node, st: os.stat_result | None = None) -> Attr:
        if st is None:
            st = self.stat(node)
        if node.is_dir:
            nlink = 1 if len(node.dir_layers) > 1 else st.st_nlink
        elif node.parent is None:
            nlink = 0
        elif node.nlink is not None:
            nlink = node.nlink
        else:
            nlink = st.st_nlink
        return Attr(node.ino, st, nlink)

    def readlink(self, node: Node) -> bytes:
        if node.fd is not None:
            return os.readlink(b"/proc/self/fd/%d" % node.fd)
        return self.layers[node.layer].readlink(node.path())

    def list_dir(self, node: Node) -> list[tuple[bytes, Resolved]]:
        """A snapshot of the merged listing of directory ``node``."""
        if not node.is_dir:
            raise oserror(errno.ENOTDIR)
        return list(self.stack.list_dir(node.dir_layers, node.path()).items())

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.layers[0].fd)

    # -- copy-up ------------------------------------------------------------------------------

    def copy_up(self, node: Node, with_data: bool = True) -> None:
        """Make the upper layer hold ``node`` (and its parents); no-op if it already does."""
        copier = self.require_writable()
        if self.is_upper(node):
            return
        if node.parent is None:
            raise oserror(errno.ENOENT, node.name)  # unlinked: nothing left to copy to
        self.copy_up(node.parent)
        src = self.layers[node.layer]
        rel = node.path()
        lower_st = src.lstat(rel)
        st = copier.copy(src, rel, with_data)
        log.debug("copied up %r from layer %d", rel, node.layer)
        if node.is_dir:
            node.dir_layers = (0, *node.dir_layers)
        elif lower_st is not None and lower_st.st_nlink > 1 and node.nlink is None:
            node.nlink = lower_st.st_nlink
        node.layer = 0
        node.data_gen += 1
        self.table.add_key(node, key_of(st))

    def upper_dir(self, node: Node) -> bytes:
        """Copy up directory ``node`` and return its path in the upper layer."""
        self.copy_up(node)
        return node.path()

    def sgid_parent(self, parent: Node) -> os.stat_result | None:
        """The parent's stat if it is set-group-ID (new entries take its group)."""
        st = self.stat(parent)
        return st if st.st_mode & stat.S_ISGID else None
