"""unionfs: a union-mount filesystem with kernel overlayfs semantics and on-disk format."""

__version__ = "0.1.0"
