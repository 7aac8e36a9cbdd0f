"""Layer trees from data and whole-tree snapshots for comparisons.

``make_tree(root, {"a/b": b"data", "d/": Dir(), "w": Whiteout(), "o/": Dir(opaque=True),
"l": Symlink("target")})`` builds a layer; ``read_tree(path)`` returns a dict describing every
entry (type, mode, owner, size, content hash, link target, xattrs, nlink) for ``==`` checks.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from unionfs.whiteout import KERNEL_FORMAT, WhiteoutFormat, make_whiteout, set_opaque


@dataclass(frozen=True)
class Dir:
    mode: int = 0o755
    opaque: bool = False
    xattrs: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class File:
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Symlink:
    target: str


@dataclass(frozen=True)
class Whiteout:
    pass


@dataclass(frozen=True)
class Fifo:
    mode: int = 0o644


@dataclass(frozen=True)
class HardLink:
    to: str


Spec = Dir | File | Symlink | Whiteout | Fifo | HardLink | bytes


def make_tree(root: Path, entries: dict[str, Spec], fmt: WhiteoutFormat = KERNEL_FORMAT) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, spec in entries.items():
        path = root / name.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, bytes):
            spec = File(spec)
        if isinstance(spec, Dir):
            path.mkdir(exist_ok=True)
            path.chmod(spec.mode)
            if spec.opaque:
                fd = os.open(path.parent, os.O_RDONLY)
                try:
                    set_opaque(fd, os.fsencode(path.name), fmt)
                finally:
                    os.close(fd)
            for key, value in spec.xattrs.items():
                os.setxattr(path, key, value)
        elif isinstance(spec, File):
            path.write_bytes(spec.data)
            os.chown(path, spec.uid, spec.gid)
            path.chmod(spec.mode)
            for key, value in spec.xattrs.items():
                os.setxattr(path, key, value)
        elif isinstance(spec, Symlink):
            path.symlink_to(spec.target)
        elif isinstance(spec, Fifo):
            os.mkfifo(path, spec.mode)
        elif isinstance(spec, HardLink):
            os.link(root / spec.to, path)
        else:
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                make_whiteout(fd, os.fsencode(path.name), fmt)
            finally:
                os.close(fd)
    return root


def describe(path: Path, with_nlink: bool = True) -> tuple[object, ...]:
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    if stat.S_ISREG(kind):
        content: object = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    elif stat.S_ISLNK(kind):
        content = os.readlink(path)
    elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
        content = (os.major(st.st_rdev), os.minor(st.st_rdev))
    else:
        content = None
    try:
        names = sorted(os.listxattr(path, follow_symlinks=False))
        xattrs = tuple((n, os.getxattr(path, n, follow_symlinks=False)) for n in names)
    except OSError:
        xattrs = ()
    size = st.st_size if not stat.S_ISDIR(kind) else None
    nlink = st.st_nlink if with_nlink else None
    return (stat.filemode(st.st_mode), st.st_uid, st.st_gid, size, content, xattrs, nlink)


def read_tree(root: Path, with_nlink: bool = True) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root`` (relative path -> description)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            out[str(full.relative_to(root))] = describe(full, with_nlink)
    return out


def tree_hash(root: Path) -> str:
    """One digest of a whole tree (names, metadata, contents), to prove it did not change."""
    digest = hashlib.sha256()
    for name, desc in sorted(read_tree(root).items()):
        st = os.lstat(root / name)
        digest.update(repr((name, desc, st.st_mtime_ns, st.st_ino)).encode())
    return digest.hexdigest()
