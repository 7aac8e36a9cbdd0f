"""Helpers shared by the mounttool tests (a module name that cannot clash)."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path under a store (except the lock and tmp/) with mode, size and content."""
    out: dict[str, tuple[int, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == "tmp" or rel_dir.startswith("tmp/"):
            continue
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel in ("lock", "tmp"):
                continue
            st = os.lstat(p)
            data = b""
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    data = f.read()
            out[rel] = (st.st_mode, st.st_size, data)
    return out


# -- building layer tars -------------------------------------------------------------------------


MTIME = 1_600_000_000


@dataclass
class E:
    """One tar entry to write."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = MTIME
    linkname: str = ""
    dev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)


def F(name: str, data: bytes = b"", **kw: object) -> E:
    return E(name, tarfile.REGTYPE, data, **kw)  # type: ignore[arg-type]


def D(name: str, **kw: object) -> E:
    kw.setdefault("mode", 0o755)
    return E(name, tarfile.DIRTYPE, **kw)  # type: ignore[arg-type]


def S(name: str, target: str, **kw: object) -> E:
    kw.setdefault("mode", 0o777)
    return E(name, tarfile.SYMTYPE, linkname=target, **kw)  # type: ignore[arg-type]


def H(name: str, target: str) -> E:
    return E(name, tarfile.LNKTYPE, linkname=target)


def W(path: str) -> E:
    """The OCI whiteout for ``path``."""
    head, _, base = path.rpartition("/")
    return F(f"{head}/.wh.{base}" if head else f".wh.{base}", mode=0o600)


def OPQ(dirpath: str) -> E:
    return F(f"{dirpath}/.wh..wh..opq" if dirpath else ".wh..wh..opq", mode=0o600)


def make_tar(entries: list[E], compression: str = "", end_blocks: bool = True,
             fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    tar = tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8",  # noqa: SIM115
                       errors="surrogateescape")
    for e in entries:
        ti = tarfile.TarInfo(e.name)
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = e.type, e.mode, e.uid, e.gid, e.mtime
        ti.linkname = e.linkname
        ti.devmajor, ti.devminor = e.dev
        if e.xattrs:
            ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                              for k, v in e.xattrs.items()}
        if e.type == tarfile.REGTYPE:
            ti.size = len(e.data)
            tar.addfile(ti, io.BytesIO(e.data))
        else:
            tar.addfile(ti)
    if end_blocks:
        tar.close()
        raw = buf.getvalue()
    else:
        raw = buf.getvalue()  # addfile has written every member; no end-of-archive blocks
    return compress(raw, compression)


def compress(raw: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(raw, mtime=0)
    if compression == "zstd":
        return bytes(zstandard.ZstdCompressor().compress(raw))
    return raw


Tree = dict[str, tuple[object, ...]]


def read_tree(root: Path, times: bool = True) -> Tree:
    """Everything below ``root``: type, mode, owner, content/target/rdev, xattrs, mtime."""
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.fsdecode(os.path.relpath(p, os.fsencode(root)))
            out[rel] = describe(p, times)
    out["."] = describe(os.fsencode(root), times)
    return out


def describe(p: bytes, times: bool = True) -> tuple[object, ...]:
    st = os.lstat(p)
    kind = stat.S_IFMT(st.st_mode)
    extra: object = None
    if stat.S_ISREG(kind):
        with open(p, "rb") as f:
            extra = f.read()
    elif stat.S_ISLNK(kind):
        extra = os.readlink(p)
    elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
        extra = (os.major(st.st_rdev), os.minor(st.st_rdev))
    xattrs = {k: os.getxattr(p, k, follow_symlinks=False)
              for k in sorted(os.listxattr(p, follow_symlinks=False))}
    mtime = st.st_mtime_ns if times and not stat.S_ISLNK(kind) else None
    return (kind, st.st_mode & 0o7777, st.st_uid, st.st_gid, extra, xattrs, mtime)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: bytes) -> bool:
    try:
        return os.getxattr(path, b"trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def merge_layers(layers: list[Path], times: bool = True) -> Tree:
    """The tree overlayfs would show for unpacked layers (top first): the reference view."""
    out: Tree = {}
    _merge_dir([os.fsencode(p) for p in layers], b"", out, times)
    return out


def _merge_dir(dirs: list[bytes], rel: bytes, out: Tree, times: bool) -> None:
    names: list[bytes] = []
    for d in dirs:
        for n in sorted(os.listdir(os.path.join(d, rel) if rel else d)):
            if n not in names:
                names.append(n)
    for name in sorted(names):
        sub = os.path.join(rel, name) if rel else name
        below: list[bytes] = []
        for d in dirs:
            p = os.path.join(d, sub)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if not below:
                if _is_whiteout(st):
                    break
                d_top = describe(p, times)
                out[os.fsdecode(sub)] = (*d_top[:5], _public(d_top[5]), *d_top[6:])
                if not stat.S_ISDIR(st.st_mode):
                    break
                below.append(d)
                if _opaque(p):
                    break
                continue
            if not stat.S_ISDIR(st.st_mode):
                break  # a non-directory (or whiteout) below hides everything further down
            below.append(d)
            if _opaque(p):
                break
        if below:
            _merge_dir(below, sub, out, times)


def _public(xattrs: object) -> dict[str, bytes]:
    assert isinstance(xattrs, dict)
    return {k: v for k, v in xattrs.items() if not k.startswith("trusted.overlay.")}


def plain_tree(root: Path, times: bool = True) -> Tree:
    """read_tree without the root entry, for comparing with merge_layers."""
    t = read_tree(root, times)
    del t["."]
    return t


@contextmanager
def kernel_view(lowers: list[Path], mnt: Path) -> Iterator[Path]:
    """Kernel overlayfs mounted read-only over ``lowers`` (top first) at ``mnt`` for the
    block; the test is skipped, saying why, where the kernel will not mount it."""
    mnt.mkdir(parents=True, exist_ok=True)
    opts = "lowerdir=" + ":".join(str(p) for p in lowers)
    if len(lowers) == 1:  # the kernel wants two lowers without an upper
        opts += ":" + str(mnt.parent / "empty")
        (mnt.parent / "empty").mkdir(exist_ok=True)
    res = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"kernel overlayfs not available here: {res.stderr.strip() or 'failed'}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
