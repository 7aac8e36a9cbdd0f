"""Inodes of the merged view: numbers, identity, names and kernel lookup counts; no I/O.

A :class:`Node` is one file of the merged tree as the kernel knows it.  Its FUSE node id is its
``st_ino``, which stays the same across copy-up for as long as the mount lives: the number comes
from the identity (device, inode) of the file the node was first found as, and the upper copy
made by copy-up is registered under the same node.  Lower hardlinks share one identity, so they
show as one inode.

Nodes know their name through their parent (a dentry-like chain), so renaming a directory renames
everything below it in O(1).  The table frees a node when the kernel forgets its last lookup.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unionfs.merge import Resolved

ROOT_INO = 1
_SYNTHETIC_BASE = 1 << 62

Key = tuple[int, int]
"""(st_dev, st_ino) of a real file in some layer."""


class Node:
    """One inode of the merged view."""

    __slots__ = ("aliases", "data_gen", "dir_layers", "fd", "ino", "is_dir", "keys", "layer",
                 "listing", "lookups", "misses", "name", "names", "opens", "origin", "parent",
                 "reply", "st")

    def __init__(self, ino: int, parent: Node | None, name: bytes, layer: int,
                 dir_layers: tuple[int, ...], is_dir: bool) -> None:
        self.ino = ino
        self.parent = parent
        self.name = name
        self.aliases: list[tuple[Node, bytes]] = []
        """Other (parent, name) links of a hardlinked file, most recently used last."""
        self.layer = layer
        """Index of the layer that holds this file's data and attributes."""
        self.dir_layers = dir_layers
        self.is_dir = is_dir
        self.lookups = 0
        self.keys: list[Key] = []
        self.opens = 0
        self.fd: int | None = None
        """An fd on the data when no name reaches it: unlinked but open, or a hardlink whose
        data lives in the hardlink index."""
        self.data_gen = 0
        """Bumped on copy-up, so handles opened on the lower copy can reopen the upper one."""
        self.origin: Key | None = None
        """For a lower hardlink: the lower identity its links share (the index key)."""
        self.st: os.stat_result | None = None
        """Cached lstat of the data; dropped by every change made through the mount (lower
        layers never change, the upper only changes through us)."""
        self.listing: dict[bytes, Resolved] | None = None
        """Cached merged listing of a directory; dropped when its entries change."""
        self.names: frozenset[bytes] | None = None
        """The names a directory shows (no stats), read once lookups keep missing there."""
        self.misses = 0
        """Lookups of names this directory does not show (a PATH-like search)."""
        self.reply: tuple[os.stat_result, int, object, tuple[int, ...]] | None = None
        """The FUSE adapter's last attribute reply with the stat, link count and directory
        layers it was made from: valid while they are unchanged (the adapter checks)."""

    def __repr__(self) -> str:
        return f"Node(ino={self.ino}, path={self.path()!r}, layer={self.layer})"

    def path(self) -> bytes:
        """The layer-relative path of this node's primary name (``b""`` for the root)."""
        parts: list[bytes] = []
        node: Node | None = self
        while node is not None and node.ino != ROOT_INO:
            parts.append(node.name)
            node = node.parent
        return b"/".join(reversed(parts))

    def add_alias(self, parent: Node, name: bytes) -> None:
        """Record another name of a hardlinked file (the primary name stays the data's)."""
        if (self.parent is parent and self.name == name) or any(
                p is parent and n == name for p, n in self.aliases):
            return
        self.aliases.append((parent, name))

    def has_link(self, parent: Node, name: bytes) -> bool:
        """Whether (parent, name) is still one of the names of this node."""
        return (self.parent is parent and self.name == name) or any(
            p is parent and n == name for p, n in self.aliases)

    def make_primary(self, parent: Node, name: bytes) -> None:
        """Make the known link (parent, name) the primary one (the old primary becomes an
        alias); used so a lower hardlink is copied up under the name it was reached by."""
        if self.parent is parent and self.name == name:
            return
        if not any(p is parent and n == name for p, n in self.aliases):
            return
        self._drop_alias(parent, name)
        if self.parent is not None:
            self.aliases.append((self.parent, self.name))
        self.parent, self.name = parent, name

    def move_link(self, old_parent: Node, old_name: bytes, parent: Node, name: bytes) -> None:
        """A rename: the link (old_parent, old_name) is now (parent, name)."""
        if self.parent is old_parent and self.name == old_name:
            self.parent, self.name = parent, name
        else:
            self._drop_alias(old_parent, old_name)
            self.aliases.append((parent, name))

    def drop_link(self, parent: Node, name: bytes) -> None:
        """Forget the link (parent, name); the node is unlinked once no link is left."""
        if self.parent is parent and self.name == name:
            if self.aliases:
                self.parent, self.name = self.aliases.pop()
            else:
                self.parent = None
        else:
            self._drop_alias(parent, name)

    def _drop_alias(self, parent: Node, name: bytes) -> None:
        self.aliases = [(p, n) for p, n in self.aliases if not (p is parent and n == name)]


@dataclass(frozen=True, slots=True)
class InoPolicy:
    """How real inode numbers become st_ino: as they are on one device, device-tagged else."""

    devices: tuple[int, ...]

    def candidate(self, key: Key) -> int:
        dev, ino = key
        if len(self.devices) == 1 or ino >= 1 << 48:
            return ino
        return (self.devices.index(dev) << 48) | ino if dev in self.devices else ino


class InodeTable:
    """Live nodes by number and by real identity; lookup counting and forgetting."""

    def __init__(self, policy: InoPolicy) -> None:
        self.policy = policy
        self.nodes: dict[int, Node] = {}
        self.by_key: dict[Key, Node] = {}
        self.ino_of_key: dict[Key, int] = {}
        """st_ino of copied-up files by their upper identity, kept for the mount's lifetime."""
        self.origin_of: dict[Key, Key] = {}
        """Lower hardlink identity of copied-up hardlinks, by their upper identity."""
        self._next_synthetic = _SYNTHETIC_BASE

    def __len__(self) -> int:
        return len(self.nodes)

    def add_root(self, layer: int, dir_layers: tuple[int, ...], key: Key) -> Node:
        root = Node(ROOT_INO, None, b"", layer, dir_layers, True)
        root.lookups = 1
        self.nodes[ROOT_INO] = root
        self._register(root, key)
        return root

    def get(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise OSError(116, "stale inode") from None  # ESTALE

    def find(self, key: Key) -> Node | None:
        return self.by_key.get(key)

    def new_node(self, key: Key, parent: Node, name: bytes, layer: int,
                 dir_layers: tuple[int, ...], is_dir: bool) -> Node:
        """A node for a file seen for the first time (or again, after it was forgotten)."""
        ino = self.ino_of_key.get(key) or self.policy.candidate(self.origin_of.get(key, key))
        if ino <= ROOT_INO or ino in self.nodes:
            ino = self._next_synthetic
            self._next_synthetic += 1
        node = Node(ino, parent, name, layer, dir_layers, is_dir)
        node.origin = self.origin_of.get(key)
        self.nodes[ino] = node
        self._register(node, key)
        if node.origin is not None:
            self._register(node, node.origin)
        return node

    def add_key(self, node: Node, key: Key) -> None:
        """Register another real identity (the upper copy after copy-up) for ``node``."""
        self._register(node, key)
        self.ino_of_key[key] = node.ino

    def drop_key(self, node: Node, key: Key) -> None:
        """The real file ``key`` is gone: later files reusing its number are new inodes."""
        if self.by_key.get(key) is node:
            del self.by_key[key]
        if key in node.keys:
            node.keys.remove(key)
        self.ino_of_key.pop(key, None)

    def _register(self, node: Node, key: Key) -> None:
        if key not in node.keys:
            node.keys.append(key)
        self.by_key[key] = node

    def forget(self, ino: int, count: int) -> Node | None:
        """Drop ``count`` kernel lookups; returns the node if it is now freed."""
        node = self.nodes.get(ino)
        if node is None:
            return None
        node.lookups -= count
        if node.lookups > 0 or ino == ROOT_INO:
            return None
        del self.nodes[ino]
        for key in node.keys:
            if self.by_key.get(key) is node:
                del self.by_key[key]
        return node
