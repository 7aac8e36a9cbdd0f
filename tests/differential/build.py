"""Materialise a generated layer (model.py) as a real directory, exactly and repeatably.

Called once per mount with the same data, so the two copies agree in everything observable:
content and holes, modes (setuid/sticky included), owners, mtimes to the nanosecond, xattrs,
hardlinks, fifos, char 0/0 whiteouts and ``trusted.overlay.opaque=y``.  Metadata is applied
children first, so creating a child never disturbs a parent's mtime afterwards.
"""

from __future__ import annotations

import os
import stat

from .model import Dir, Fifo, File, Hardlink, Layer, Meta, Symlink, Whiteout

OPAQUE_XATTR = "trusted.overlay.opaque"


def build_layer(root: str, layer: Layer, *, prefix: str = "") -> None:
    """Create ``layer`` under ``root/prefix`` (``prefix`` is made a plain 0755 dir if given)."""
    base = os.path.join(root, prefix) if prefix else root
    os.makedirs(base, exist_ok=True)
    ordered = sorted(layer, key=lambda p: (p.count("/"), p))
    links = [p for p in ordered if isinstance(layer[p], Hardlink)]
    for path in ordered:
        node = layer[path]
        if not isinstance(node, Hardlink):
            create(os.path.join(base, path), node)
    for path in links:
        node = layer[path]
        assert isinstance(node, Hardlink)
        os.link(os.path.join(base, node.target), os.path.join(base, path))
    for path in reversed(ordered):
        node = layer[path]
        if not isinstance(node, Hardlink | Whiteout):
            apply_meta(os.path.join(base, path), node.meta, symlink=isinstance(node, Symlink))
    if prefix:
        os.chown(base, 0, 0)
        os.chmod(base, 0o755)
        os.utime(base, ns=(0, 0))


def create(full: str, node: File | Dir | Symlink | Fifo | Whiteout) -> None:
    if isinstance(node, File):
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for offset, data in node.chunks:
                os.pwrite(fd, data, offset)
            os.ftruncate(fd, node.size)
        finally:
            os.close(fd)
    elif isinstance(node, Dir):
        os.mkdir(full, 0o700)
        if node.opaque:
            os.setxattr(full, OPAQUE_XATTR, b"y")
    elif isinstance(node, Symlink):
        os.symlink(node.target, full)
    elif isinstance(node, Fifo):
        os.mkfifo(full, 0o600)
    else:
        os.mknod(full, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def apply_meta(full: str, meta: Meta, *, symlink: bool) -> None:
    for name, value in meta.xattrs:
        os.setxattr(full, name, value, follow_symlinks=False)
    os.chown(full, meta.uid, meta.gid, follow_symlinks=False)
    if not symlink:
        os.chmod(full, meta.mode)
    os.utime(full, ns=(meta.mtime_ns, meta.mtime_ns), follow_symlinks=False)
