"""rename(2) through the union: files move across layers, directories only within the upper.

As kernel overlayfs without ``redirect_dir``: a directory that draws from a lower layer cannot be
renamed (EXDEV; ``mv`` then copies); a file is copied up and moved, and a whiteout is left where
a lower layer still shows the old name (atomically, with ``RENAME_WHITEOUT``); a directory moved
into a merged parent becomes opaque; ``RENAME_EXCHANGE`` swaps two names, ``RENAME_NOREPLACE``
refuses to replace one.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from unionfs import whiteout
from unionfs.layers import join
from unionfs.merge import Resolved
from unionfs.nodes import Node
from unionfs.syscalls import RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, renameat2
from unionfs.tree import key_of, oserror

if TYPE_CHECKING:
    from unionfs.namespace import Namespace


class Renames:
    """Renames on the tree of a :class:`Namespace`, using its removal and whiteout helpers."""

    def __init__(self, names: Namespace) -> None:
        self.names = names
        self.tree = names.tree

    def rename(self, old_parent: Node, old_name: bytes, new_parent: Node, new_name: bytes,
               flags: int) -> None:
        tree = self.tree
        tree.require_writable()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise oserror(errno.EINVAL)
        src, src_node = self.names.existing(old_parent, old_name)
        if flags & RENAME_EXCHANGE:
            if flags & RENAME_NOREPLACE:
                raise oserror(errno.EINVAL)
            self._exchange(old_parent, old_name, src, src_node, new_parent, new_name)
            return
        dst = tree.resolve(new_parent, new_name)
        if src.is_dir and not self._movable(src):
            raise oserror(errno.EXDEV, old_name)
        dst_node: Node | None = None
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise oserror(errno.EEXIST, new_name)
            if key_of(dst.st) == key_of(src.st):
                return
            if src.is_dir and not dst.is_dir:
                raise oserror(errno.ENOTDIR, new_name)
            if not src.is_dir and dst.is_dir:
                raise oserror(errno.EISDIR, new_name)
            if dst.is_dir and not tree.stack.is_empty_dir(
                    dst.dir_layers, join(new_parent.path(), new_name)):
                if self._pure_upper(dst):
                    # The kernel leaves this to the upper filesystem's rename, after it made
                    # the source opaque: the same side effect, then the same error.
                    self._make_opaque_for(src, old_parent, old_name, new_parent)
                raise oserror(errno.ENOTEMPTY, new_name)
            dst_node = tree.node_for(new_parent, new_name, dst)
            if not dst.is_dir:
                dst = self.names.index_before_unlink(new_parent, new_name, dst, dst_node)
        tree.copy_up_as(src_node, old_parent, old_name)
        oprel = tree.upper_dir(old_parent)
        nprel = tree.upper_dir(new_parent)
        self._move(src, dst, dst_node, oprel, old_name, nprel, new_name, old_parent, new_parent)
        src_node.move_link(old_parent, old_name, new_parent, new_name)
        tree.changed(src_node)

    def _make_opaque_for(self, src: Resolved, old_parent: Node, old_name: bytes,
                         new_parent: Node) -> None:
        """A directory moving into a merged parent becomes opaque (the kernel's rule)."""
        tree = self.tree
        if not src.is_dir or len(new_parent.dir_layers) <= 1:
            return
        old = join(tree.upper_dir(old_parent), old_name)
        if not whiteout.is_opaque(tree.upper.fd, old, tree.fmt):
            whiteout.set_opaque(tree.upper.fd, old, tree.fmt)

    def _pure_upper(self, found: Resolved) -> bool:
        return self.tree.stack.is_upper(found.layer) and len(found.dir_layers) == 1

    def _movable(self, found: Resolved) -> bool:
        """Directories that draw from a lower layer stay where they are (no redirect_dir)."""
        return not found.is_dir or (self.tree.stack.is_upper(found.layer)
                                    and len(found.dir_layers) == 1)

    def _exchange(self, old_parent: Node, old_name: bytes, src: Resolved, src_node: Node,
                  new_parent: Node, new_name: bytes) -> None:
        """renameat2(RENAME_EXCHANGE): both names stay taken, so no whiteout is needed."""
        tree = self.tree
        dst, dst_node = self.names.existing(new_parent, new_name)
        if not (self._movable(src) and self._movable(dst)):
            raise oserror(errno.EXDEV)
        if key_of(src.st) == key_of(dst.st):
            return
        tree.copy_up_as(src_node, old_parent, old_name)
        tree.copy_up_as(dst_node, new_parent, new_name)
        oprel, nprel = tree.upper_dir(old_parent), tree.upper_dir(new_parent)
        old, new = join(oprel, old_name), join(nprel, new_name)
        ufd = tree.upper.fd
        for found, path, parent in ((src, old, new_parent), (dst, new, old_parent)):
            if found.is_dir and len(parent.dir_layers) > 1 and not whiteout.is_opaque(
                    ufd, path, tree.fmt):
                whiteout.set_opaque(ufd, path, tree.fmt)
        renameat2(ufd, old, ufd, new, RENAME_EXCHANGE)
        for node in (old_parent, new_parent):
            tree.dir_changed(node)
        for node in (src_node, dst_node):
            tree.changed(node)
        src_node.move_link(old_parent, old_name, new_parent, new_name)
        dst_node.move_link(new_parent, new_name, old_parent, old_name)

    def _move(self, src: Resolved, dst: Resolved | None, dst_node: Node | None, oprel: bytes,
              old_name: bytes, nprel: bytes, new_name: bytes, old_parent: Node,
              new_parent: Node) -> None:
        tree = self.tree
        ufd = tree.upper.fd
        old, new = join(oprel, old_name), join(nprel, new_name)
        needs_whiteout = tree.stack.lower_positive(old_parent.dir_layers, oprel, old_name)
        dst_is_whiteout = dst is None and self.names.has_whiteout(nprel, new_name)
        tree.dir_changed(old_parent)
        tree.dir_changed(new_parent)
        if dst is not None and dst_node is not None:
            tree.changed(dst_node)
            tree.detach(dst_node, new_parent, new_name, dst.layer)
            if dst.is_dir and tree.stack.is_upper(dst.layer):
                self.names.clear_whiteouts(new)
        self._make_opaque_for(src, old_parent, old_name, new_parent)
        if tree.fmt.dot_wh:
            self._move_dot_wh(old, new, oprel, old_name, nprel, new_name, needs_whiteout,
                              dst_is_whiteout)
        elif needs_whiteout and dst_is_whiteout:
            renameat2(ufd, old, ufd, new, RENAME_EXCHANGE)
        elif needs_whiteout:
            self._rename_whiteout(old, new, oprel, old_name)
        elif src.is_dir and dst_is_whiteout:
            renameat2(ufd, old, ufd, new, RENAME_EXCHANGE)
            os.unlink(old, dir_fd=ufd)
        else:
            os.rename(old, new, src_dir_fd=ufd, dst_dir_fd=ufd)
        if dst is not None and dst_node is not None:
            if tree.stack.is_upper(dst.layer) and (dst.is_dir or dst.st.st_nlink <= 1):
                tree.table.drop_key(dst_node, key_of(dst.st))
            dst_node.drop_link(new_parent, new_name)
            tree.count_link(dst_node, -1)

    def _rename_whiteout(self, old: bytes, new: bytes, oprel: bytes, old_name: bytes) -> None:
        ufd = self.tree.upper.fd
        try:
            renameat2(ufd, old, ufd, new, RENAME_WHITEOUT)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EPERM):
                raise
            os.rename(old, new, src_dir_fd=ufd, dst_dir_fd=ufd)
            self.names.whiteout_at(oprel, old_name)

    def _move_dot_wh(self, old: bytes, new: bytes, oprel: bytes, old_name: bytes, nprel: bytes,
                     new_name: bytes, needs_whiteout: bool, dst_is_whiteout: bool) -> None:
        ufd = self.tree.upper.fd
        os.rename(old, new, src_dir_fd=ufd, dst_dir_fd=ufd)
        if dst_is_whiteout:
            self.names.unwhiteout_at(nprel, new_name)
        if needs_whiteout:
            self.names.whiteout_at(oprel, old_name)
