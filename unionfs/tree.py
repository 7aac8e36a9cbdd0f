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

from unionfs.copyup import Copier, WorkDir, copy_data
from unionfs.hardlinks import HardlinkIndex
from unionfs.layers import Layer, at, join
from unionfs.merge import LayerStack, Resolved
from unionfs.nodes import InodeTable, InoPolicy, Key, Node
from unionfs.spec import MountSpec
from unionfs.syncer import Syncer
from unionfs.whiteout import proc_path

log = logging.getLogger(__name__)

LISTING_AFTER_MISSES = 4
"""After this many lookups of missing names in a directory, the names it shows are read once
and answer every later miss there (a PATH search looks for many names in few directories)."""


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
        self.index: HardlinkIndex | None = None
        self.syncer: Syncer | None = None
        if spec.writable and spec.work is not None:
            self.work = WorkDir(spec.work)
            private = b"trusted." if self.fmt.xattr_prefix.startswith(b"trusted.") else b"user."
            self.syncer = Syncer(self.work.base_fd, layers[0].fd, private + b"unionfs.pending")
            self.syncer.recover(copy_data)  # what an earlier daemon had not synced yet
            self.copier = Copier(layers[0], self.work, self.fmt, spec.fsync,
                                 self.syncer if spec.fsync and spec.background_sync else None)
            self.index = HardlinkIndex(self.work.base_fd, self.fmt, layers[1:])
        self.name_max = min(os.fstatvfs(layer.fd).f_namemax for layer in layers)
        """The longest name every layer can hold (longer ones are ENAMETOOLONG, as below)."""
        self.changes = 0
        """Counts namespace changes, so stale directory snapshots can be noticed."""
        self.stale: set[int] = set()
        """Inodes whose attributes changed behind the kernel's back (a directory copied up
        becomes a merge: its link count changes); the FUSE adapter invalidates them."""
        devices = tuple(dict.fromkeys(layer.dev for layer in layers))
        self.table = InodeTable(InoPolicy(devices))
        if self.index is not None:
            self.table.origin_of.update(self.index.origins)
        root = self.stack.root()
        self.root = self.table.add_root(root.layer, root.dir_layers, key_of(root.st))

    def close(self) -> None:
        if self.syncer is not None:
            self.syncer.close()
        for layer in self.layers:
            layer.close()
        if self.index is not None:
            self.index.close()
        if self.work is not None:
            self.work.close()

    # -- shared helpers ---------------------------------------------------------------------

    def settle(self) -> None:
        """Wait until the data of every copy-up is synced (for fsync and fsyncdir)."""
        if self.syncer is not None:
            self.syncer.settle()

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
        if len(name) > self.name_max:
            raise oserror(errno.ENAMETOOLONG, name)
        listing = parent.listing
        fresh = listing is None
        if listing is not None:
            found = listing.get(name)
        else:
            if parent.names is None and parent.misses >= LISTING_AFTER_MISSES:
                parent.names = self.stack.list_names(parent.dir_layers, parent.path())
            if parent.names is not None and name not in parent.names:
                found = None
            else:
                found = self.resolve(parent, name)
        if found is None:
            parent.misses += 1
            raise oserror(errno.ENOENT, name)
        node = self.node_for(parent, name, found)
        if fresh and node.st is None and node.layer == found.layer and node.fd is None:
            node.st = found.st  # resolved just now: as good as a stat
        return node

    def node_for(self, parent: Node, name: bytes, found: Resolved) -> Node:
        """The node of a resolved entry: the known one for its identity, or a new one."""
        st = found.st
        key = (st.st_dev, st.st_ino)
        node = self.table.by_key.get(key)
        if node is not None and node.parent is parent and node.name == name:
            return node  # the common case: known under this very name
        if node is None:
            origin = self.table.origin_of.get(key)
            if origin is not None:
                # The upper copy of a lower hardlink: one inode with the lower names.
                node = self.table.find(origin)
                if node is not None:
                    self.table.add_key(node, key)
        if node is None:
            node = self.table.new_node(key, parent, name, found.layer, found.dir_layers,
                                       found.is_dir)
            if (node.origin is None and not found.is_dir and found.st.st_nlink > 1
                    and not self.stack.is_upper(found.layer)):
                node.origin = key
            if node.origin is not None:
                self._attach_hardlink(node)
            return node
        if node.is_dir:
            if node.parent is not parent or node.name != name:
                # Two places show one directory (a bind mount inside a layer): two inodes.
                return self.table.new_node(key, parent, name, found.layer, found.dir_layers,
                                           True)
        elif node.parent is None:
            node.parent, node.name = parent, name
            if node.fd is None and node.origin is not None and self.index is not None \
                    and node.origin in self.index:
                node.fd = self.index.open(node.origin)
        elif node.parent is not parent or node.name != name:
            node.add_alias(parent, name)
            if (node.fd is None and not self.is_upper(node)) or self.indexed(node):
                # Not copied up yet: a later copy-up goes under the name used last, which
                # is the name the kernel acts on whenever it looked the name up first.
                node.make_primary(parent, name)
        return node

    def _attach_hardlink(self, node: Node) -> None:
        """A lower hardlink (or an upper copy of one): if the index holds its upper copy,
        that copy is its data, whichever of its names reaches it."""
        if self.index is not None and node.origin is not None and node.origin in self.index:
            node.fd = self.index.open(node.origin)
            node.layer = 0

    def remember(self, node: Node) -> Node:
        """Count one kernel lookup of ``node`` (lookup, create, readdirplus, ...)."""
        node.lookups += 1
        return node

    # -- attributes ---------------------------------------------------------------------------

    def stat(self, node: Node) -> os.stat_result:
        if node.fd is not None:
            return os.fstat(node.fd)
        st = node.st
        if st is None:
            st = self.layers[node.layer].lstat(node.path())
            if st is None:
                raise oserror(errno.ENOENT, node.path())
            node.st = st
        return st

    @staticmethod
    def changed(node: Node) -> None:
        """``node``'s attributes changed: forget the cached stat."""
        node.st = None

    def dir_changed(self, node: Node) -> None:
        """Entries of directory ``node`` changed (and so did its times)."""
        node.st = None
        node.listing = None
        node.names = None
        node.misses = 0  # a directory being filled up is not searched: no listing yet
        self.changes += 1

    def attr(self, node: Node, st: os.stat_result | None = None) -> Attr:
        if st is None:
            st = self.stat(node)
        nlink = st.st_nlink
        if node.is_dir:
            if len(node.dir_layers) > 1:
                nlink = 1  # as the kernel: counting subdirectories of a merge is not worth it
        elif node.origin is not None and self.index is not None and node.origin in self.index:
            nlink = self.index.nlink(node.origin) or 0  # names the merged view still shows
        # An unlinked file shows its real inode's count, as the kernel does: 0 for an upper
        # file, still 1 for a lower file that a whiteout now hides.
        return Attr(node.ino, st, nlink)

    def locate(self, node: Node) -> tuple[bytes, bool]:
        """A path reaching ``node``'s data, and whether its last component must be followed."""
        if node.fd is not None:
            return b"/proc/self/fd/%d" % node.fd, True
        rel = node.path()
        return proc_path(self.layers[node.layer].fd, rel), False

    def readlink(self, node: Node) -> bytes:
        if node.fd is not None:
            return os.readlink(b"", dir_fd=node.fd)
        return self.layers[node.layer].readlink(node.path())

    def list_dir(self, node: Node) -> tuple[list[tuple[bytes, Resolved]], bool]:
        """The merged listing of directory ``node`` (shared: never modify it) and whether it
        was read just now (its stat results are fresh) rather than taken from the cache."""
        if not node.is_dir:
            raise oserror(errno.ENOTDIR)
        if node.listing is not None:
            return list(node.listing.items()), False
        node.listing = self.stack.list_dir(node.dir_layers, node.path())
        return list(node.listing.items()), True

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.layers[0].fd)

    # -- copy-up ------------------------------------------------------------------------------

    def indexed(self, node: Node) -> bool:
        """A lower hardlink whose data lives in the hardlink index (reached through node.fd)."""
        return node.origin is not None and self.index is not None and node.origin in self.index

    def copy_up_as(self, node: Node, parent: Node, name: bytes) -> None:
        """Copy ``node`` up under the name (parent, name) an operation reached it by; for an
        indexed hardlink, give the upper layer that name too (the kernel's link-up)."""
        if node.fd is None and not self.is_upper(node):
            node.make_primary(parent, name)
        elif self.indexed(node):
            node.make_primary(parent, name)
            self.link_up(node)
            return
        self.copy_up(node)

    def link_up(self, node: Node) -> None:
        """Make the upper layer hold the primary name of an indexed hardlink."""
        assert self.index is not None and node.origin is not None and node.parent is not None
        prel = self.upper_dir(node.parent)
        rel = join(prel, node.name)
        if self.upper.lstat(rel) is not None:
            return
        times = self.stat(node.parent) if prel else os.stat(self.upper.fd)
        self.index.link_to(node.origin, self.upper.fd, rel)
        os.utime(at(prel), ns=(times.st_atime_ns, times.st_mtime_ns), dir_fd=self.upper.fd)
        node.parent.listing = None

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
        if lower_st is None:
            raise oserror(errno.ENOENT, rel)
        key = copier.copy(src, rel, lower_st, with_data)
        log.debug("copied up %r from layer %d", rel, node.layer)
        node.st = None
        node.parent.listing = None
        if node.is_dir:
            node.dir_layers = (0, *node.dir_layers)
            self.stale.add(node.ino)
        elif node.origin is not None and self.index is not None:
            self._index(node.origin, src, rel, lower_st.st_nlink)
            self.table.origin_of[key] = node.origin
            node.fd = self.index.open(node.origin)  # its names may change; its data stays
        node.layer = 0
        node.data_gen += 1
        self.table.add_key(node, key)

    def index_hardlink(self, node: Node, parent: Node, name: bytes, layer: int) -> None:
        """Copy the lower hardlink ``node`` up under its name ``name`` and index it; from then
        on its data is reached through the index."""
        copier = self.require_writable()
        assert node.origin is not None and self.index is not None
        rel = join(self.upper_dir(parent), name)
        lower_st = self.layers[layer].lstat(rel)
        assert lower_st is not None
        key = copier.copy(self.layers[layer], rel, lower_st)
        self._index(node.origin, self.layers[layer], rel, lower_st.st_nlink)
        self.table.origin_of[key] = node.origin
        self.table.add_key(node, key)
        if node.fd is None:
            node.fd = self.index.open(node.origin)
        node.layer = 0
        node.data_gen += 1
        self.dir_changed(parent)

    def _index(self, key: Key, lower: Layer, rel: bytes, nlink: int) -> None:
        assert self.index is not None
        lower_fd = lower.open(rel, os.O_PATH)
        try:
            self.index.add(key, lower_fd, self.upper.fd, rel, nlink)
        finally:
            os.close(lower_fd)

    def make_data_writable(self, node: Node, with_data: bool = True,
                           link_up: bool = True) -> None:
        """Before a change to ``node``'s data or metadata: its data must be upper data.

        A named node is copied up.  A node no name reaches any more (unlinked but open) whose
        data is still the lower file gets an anonymous copy in the work dir, so the change
        never touches the lower layer.
        """
        copier = self.require_writable()
        if node.fd is None:
            self.copy_up(node, with_data)
        elif self.indexed(node):
            if link_up and node.parent is not None:
                self.link_up(node)
        elif not self.is_upper(node):
            node.fd = copier.copy_anonymous(node.fd)
            node.layer = 0
            node.data_gen += 1

    def detach(self, node: Node, parent: Node, name: bytes, layer: int) -> None:
        """The name ``name`` of ``node``, found in ``layer``, is about to go: keep the data
        reachable through an fd when open handles or other names of a hardlink need it."""
        if node.fd is not None or node.parent is not parent or node.name != name:
            return
        if node.is_dir:
            # It may be open (opendir is not counted): fstat of it must keep working.
            node.fd = self.layers[layer].open(node.path(), os.O_PATH | os.O_DIRECTORY)
            return
        index = self.index
        if node.origin is not None and index is not None and node.origin in index:
            if node.aliases or node.opens:
                node.fd = index.open(node.origin)
            return
        st = self.layers[layer].lstat(node.path())
        # Devices, fifos and sockets are opened by the kernel without asking us, so any of
        # them may still be open: keep them all (until the kernel forgets the inode).
        if st is not None and (node.opens or not stat.S_ISREG(st.st_mode)):
            node.fd = self.layers[layer].open(node.path(), os.O_PATH)

    def count_link(self, node: Node, delta: int) -> None:
        if node.origin is not None and self.index is not None:
            self.index.adjust(node.origin, delta)

    def upper_dir(self, node: Node) -> bytes:
        """Copy up directory ``node`` and return its path in the upper layer."""
        self.copy_up(node)
        return node.path()

    def sgid_parent(self, parent: Node) -> os.stat_result | None:
        """The parent's stat if it is set-group-ID (new entries take its group)."""
        st = self.stat(parent)
        return st if st.st_mode & stat.S_ISGID else None
