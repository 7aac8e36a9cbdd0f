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
from unionfs.whiteout import proc_path


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

    def _path(self, node: Node) -> bytes:
        if node.fd is not None:
            return b"/proc/self/fd/%d" % node.fd
        return proc_path(self.tree.layers[node.layer].fd, node.path())

    def get(self, node: Node, name: bytes) -> bytes:
        return os.getxattr(self._path(node), self.real_name(name), follow_symlinks=False)

    def list(self, node: Node) -> list[bytes]:
        names = os.listxattr(self._path(node), follow_symlinks=False)
        shown = (self.shown_name(os.fsencode(n)) for n in names)
        return [n for n in shown if n is not None]

    def set(self, node: Node, name: bytes, value: bytes) -> None:
        self.tree.require_writable()
        if node.fd is None:
            self.tree.copy_up(node)
        os.setxattr(self._path(node), self.real_name(name), value, follow_symlinks=False)

    def remove(self, node: Node, name: bytes) -> None:
        tree = self.tree
        tree.require_writable()
        real = self.real_name(name)
        if node.fd is None and not tree.is_upper(node):
            self.get(node, name)  # ENODATA here leaves the lower file where it is
            tree.copy_up(node)
        try:
            os.removexattr(self._path(node), real, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise oserror(errno.ENODATA, name) from None
            raise
