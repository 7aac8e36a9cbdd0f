"""Extended attributes through the union: pass-through, with the overlay's own kept private.

As in kernel overlayfs, the xattrs of the format's namespace (``trusted.overlay.*``, or
``user.overlay.*`` with ``userxattr``) never show through the mount.  A name in that namespace set
through the mount is stored *escaped* (``trusted.overlay.overlay.X`` for ``trusted.overlay.X``),
exactly like the kernel's nesting support, so an overlay can itself serve as a layer.  Setting or
removing an xattr copies the file up first; removing one the file does not have fails without a
copy-up.
"""

from __future__ import annotations

import errno
import os

from unionfs.nodes import Node
from unionfs.tree import Tree, oserror


class Xattrs:
    """getxattr / setxattr / listxattr / removexattr on nodes of a :class:`Tree`."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.prefix = tree.fmt.xattr_prefix
        self.escaped = self.prefix + b"overlay."

    def real_name(self, name: bytes) -> bytes:
        """The name stored on the layer file for ``name`` seen through the mount."""
        if name.startswith(self.prefix):
            return self.escaped + name[len(self.prefix):]
        return name

    def shown_name(self, real: bytes) -> bytes | None:
        """The name shown through the mount for a stored name; None for private ones."""
        if real.startswith(self.escaped):
            return self.prefix + real[len(self.escaped):]
        if real.startswith(self.prefix):
            return None
        return real

    def get(self, node: Node, name: bytes) -> bytes:
        path, follow = self.tree.locate(node)
        return os.getxattr(path, self.real_name(name), follow_symlinks=follow)

    def list(self, node: Node) -> list[bytes]:
        path, follow = self.tree.locate(node)
        names = os.listxattr(path, follow_symlinks=follow)
        shown = (self.shown_name(os.fsencode(n)) for n in names)
        return [n for n in shown if n is not None]

    def set(self, node: Node, name: bytes, value: bytes) -> None:
        # Like the kernel's ovl_xattr_set: an indexed hardlink already has upper data, and
        # its other names are not linked up for an xattr change.
        self.tree.make_data_writable(node, link_up=False)
        path, follow = self.tree.locate(node)
        os.setxattr(path, self.real_name(name), value, follow_symlinks=follow)
        self.tree.changed(node)

    def remove(self, node: Node, name: bytes) -> None:
        tree = self.tree
        tree.require_writable()
        real = self.real_name(name)
        if not tree.is_upper(node):
            self.get(node, name)  # ENODATA here leaves the lower file where it is
        tree.make_data_writable(node, link_up=False)
        path, follow = tree.locate(node)
        self.tree.changed(node)
        try:
            os.removexattr(path, real, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise oserror(errno.ENODATA, name) from None
            raise
