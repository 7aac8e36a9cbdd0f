"""unionfs: a union-mount filesystem with kernel overlayfs semantics and on-disk format."""

from unionfs import cachedir

cachedir.load()  # before anything imports pyfuse3: see unionfs/cachedir.py

__version__ = "0.1.0"
