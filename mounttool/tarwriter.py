"""Writing layer tars from directory trees: deterministic order, PAX xattrs, hardlinks.

Used by ``import DIR`` (a rootfs directory becomes a layer) and by the archive writers.  Entries
are written sorted by name bytes, directories before their contents, owners/modes/times as on
disk (or a fixed mtime when asked), xattrs as ``SCHILY.xattr.*`` (overlay-private ones never),
hardlinked files once and then as links.  Sockets cannot be in a tar and are skipped.
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

from mounttool.fsutil import PRIVATE_XATTRS, XATTR_PREFIX, walk_sorted

log = logging.getLogger(__name__)


def tarinfo_for(full: bytes, arcname: bytes, st: os.stat_result,
                links: dict[tuple[int, int], str], mtime: float | None) -> tarfile.TarInfo | None:
    """A TarInfo describing one file on disk (None for sockets)."""
    ti = tarfile.TarInfo(os.fsdecode(arcname))
    ti.mode, ti.uid, ti.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    set_mtime(ti, st.st_mtime_ns if mtime is None else round(mtime * 1e9))
    kind = stat.S_IFMT(st.st_mode)
    key = (st.st_dev, st.st_ino)
    if kind == stat.S_IFREG and st.st_nlink > 1 and key in links:
        ti.type, ti.linkname = tarfile.LNKTYPE, links[key]
        return ti
    if kind == stat.S_IFREG:
        ti.type, ti.size = tarfile.REGTYPE, st.st_size
        if st.st_nlink > 1:
            links[key] = ti.name
    elif kind == stat.S_IFDIR:
        ti.type = tarfile.DIRTYPE
    elif kind == stat.S_IFLNK:
        ti.type, ti.linkname = tarfile.SYMTYPE, os.fsdecode(os.readlink(full))
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        ti.type = tarfile.CHRTYPE if kind == stat.S_IFCHR else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif kind == stat.S_IFIFO:
        ti.type = tarfile.FIFOTYPE
    else:
        log.warning("skipping %s: sockets cannot be stored in a tar", os.fsdecode(arcname))
        return None
    ti.pax_headers = {**ti.pax_headers, **xattr_headers(full)}
    return ti


def set_mtime(ti: tarfile.TarInfo, ns: int) -> None:
    """Whole seconds in the header; sub-second times exactly, as a PAX record."""
    ti.mtime = ns // 10**9
    if ns % 10**9:
        exact = f"{ns // 10**9}.{ns % 10**9:09d}".rstrip("0")
        ti.pax_headers = {**ti.pax_headers, "mtime": exact}


def xattr_headers(full: bytes) -> dict[str, str]:
    out = {}
    try:
        names = os.listxattr(full, follow_symlinks=False)
    except OSError:
        return {}
    for name in sorted(names):
        raw = os.fsencode(name)
        if raw.startswith(PRIVATE_XATTRS):
            continue
        try:
            value = os.getxattr(full, name, follow_symlinks=False)
        except OSError:
            continue
        out[XATTR_PREFIX + name] = value.decode("utf-8", "surrogateescape")
    return out


def open_writer(out: BinaryIO) -> tarfile.TarFile:
    return tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,
                        encoding="utf-8", errors="surrogateescape")


def add_entry(tar: tarfile.TarFile, full: bytes, ti: tarfile.TarInfo) -> None:
    if ti.type == tarfile.REGTYPE:
        with open(full, "rb") as f:
            tar.addfile(ti, f)
    else:
        tar.addfile(ti)


def tar_tree(root: Path, out: BinaryIO, mtime: float | None = None) -> None:
    """Write the whole tree below ``root`` (not the root itself) as a tar to ``out``."""
    broot = os.fsencode(root)
    links: dict[tuple[int, int], str] = {}
    with open_writer(out) as tar:
        for rel in walk_sorted(broot):
            full = os.path.join(broot, rel)
            ti = tarinfo_for(full, rel, os.lstat(full), links, mtime)
            if ti is not None:
                add_entry(tar, full, ti)
