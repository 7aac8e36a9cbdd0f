"""Whole-tree snapshots of a merged view or an upper directory, and their field-level diff.

What is compared, and why:

* names (and no duplicate names in readdir), type, permission bits incl. setuid/setgid/sticky,
  uid, gid, xattrs (all of them: the kernel shows no ``trusted.overlay.*`` in a merged view, so
  one showing through is a difference too), content digest of regular files, symlink targets,
  device numbers, ``st_nlink``, and which paths share an inode (hardlinks, compared as groups of
  paths, never as inode numbers);
* size for everything but directories (a directory's ``st_size`` is the upper filesystem's
  private business);
* ``mtime`` *classified*: every time the generator writes lies before 2005, so an mtime before
  2010 must match to the nanosecond (it came from a layer, a copy-up or an explicit utimes) and
  any later one is just "now" (set by the filesystem while the test ran; the two mounts cannot
  agree on the instant).  This still catches a copy-up that loses mtime, a parent directory
  whose mtime a copy-up changed, or a metadata operation that touched mtime;
* never atime or ctime.

Upper snapshots record whiteouts as their own kind and the opaque marker, drop the other
``trusted.overlay.*`` xattrs (origin, impure, nlink: bookkeeping of the kernel's index), and
ignore ``st_nlink`` and inode sharing (the kernel's index holds extra links).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from typing import NamedTuple

from .ops import digest, read_all

RECENT_NS = 1_262_304_000 * 10**9  # 2010-01-01
PRIVATE_PREFIX = "trusted.overlay."
OPAQUE = "trusted.overlay.opaque"


class Entry(NamedTuple):
    kind: str
    mode: str
    uid: int
    gid: int
    size: int | None
    nlink: int | None
    mtime: int | str
    data: str | None
    xattrs: tuple[tuple[str, str], ...]
    links: tuple[str, ...]
    opaque: str
    extra: str


Tree = dict[str, Entry | str]
"""Path ("" is the root of the tree) -> Entry, or an error/probe string like ``"lstat ENOENT"``."""


class Difference(NamedTuple):
    path: str
    field: str
    a: object
    b: object

    def __str__(self) -> str:
        return f"{self.path or '.'!r} {self.field}: {self.a!r} != {self.b!r}"


def err(what: str, exc: OSError) -> str:
    return f"{what} {errno.errorcode.get(exc.errno or 0, exc.errno)}"


def kind_of(st: os.stat_result) -> str:
    mode = st.st_mode
    for test, name in ((stat.S_ISREG, "f"), (stat.S_ISDIR, "d"), (stat.S_ISLNK, "l"),
                       (stat.S_ISFIFO, "p"), (stat.S_ISCHR, "c"), (stat.S_ISBLK, "b"),
                       (stat.S_ISSOCK, "s")):
        if test(mode):
            return name
    return "?"


def classify_mtime(ns: int) -> int | str:
    return "now" if ns >= RECENT_NS else ns


def xattrs_of(path: str, *, upper: bool) -> tuple[tuple[tuple[str, str], ...], str]:
    """(sorted xattrs, opaque marker); in upper mode private xattrs are dropped."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        return (("listxattr", err("", exc)),), ""
    out, opaque = [], ""
    for name in sorted(names):
        try:
            value = digest(os.getxattr(path, name, follow_symlinks=False))
        except OSError as exc:
            value = err("getxattr", exc)
        if upper and name == OPAQUE:
            opaque = f"opaque={os.getxattr(path, name, follow_symlinks=False)!r}"
        elif not (upper and name.startswith(PRIVATE_PREFIX)):
            out.append((name, value))
    return tuple(out), opaque


def content_of(path: str, st: os.stat_result) -> str | None:
    kind = kind_of(st)
    try:
        if kind == "l":
            return os.readlink(path)
        if kind == "f":
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                return digest(read_all(fd))
            finally:
                os.close(fd)
    except OSError as exc:
        return err("read", exc)
    if kind in ("c", "b"):
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return None


def snapshot(root: str, *, upper: bool = False, probes: Iterable[str] = ()) -> Tree:
    """Walk ``root``; ``probes`` are extra relative paths to lstat if the walk did not list them
    (a name hidden from readdir must not be reachable by lookup either)."""
    tree: Tree = {}
    inodes: dict[tuple[int, int], list[str]] = {}

    def visit(rel: str) -> None:
        full = os.path.join(root, rel) if rel else root
        try:
            st = os.lstat(full)
        except OSError as exc:
            tree[rel] = err("lstat", exc)
            return
        kind = kind_of(st)
        extra = ""
        xattrs, opaque = xattrs_of(full, upper=upper)
        if upper and kind == "c" and st.st_rdev == 0:
            tree[rel] = Entry("whiteout", "", 0, 0, None, None, "", None, (), (), "", "")
            return
        if kind == "d":
            try:
                names = os.listdir(full)
            except OSError as exc:
                names, extra = [], err("listdir", exc)
            if len(names) != len(set(names)):
                extra += f" duplicate names {sorted(names)}"
        elif not upper:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        tree[rel] = Entry(
            kind, oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid,
            None if kind == "d" else st.st_size, None if upper else st.st_nlink,
            classify_mtime(st.st_mtime_ns), content_of(full, st), xattrs, (), opaque, extra,
        )
        if kind == "d":
            for name in sorted(set(names)):
                visit(os.path.join(rel, name) if rel else name)

    visit("")
    for group in inodes.values():
        for rel in group:
            entry = tree[rel]
            assert isinstance(entry, Entry)
            tree[rel] = entry._replace(links=tuple(p for p in group if p != rel))
    for rel in probes:
        if rel not in tree:
            try:
                os.lstat(os.path.join(root, rel))
                tree[rel] = "lstat ok, but not listed by readdir"
            except OSError as exc:
                tree[rel] = err("lstat", exc)
    return tree


def diff(a: Tree, b: Tree, ignore: frozenset[str] = frozenset()) -> Difference | None:
    """The first difference between two trees (in path order), or None.

    ``ignore`` names Entry fields to skip, or ``"dir-<field>"`` to skip a field of directories
    only (to look past a known difference while hunting for others)."""
    for path in sorted(set(a) | set(b)):
        ea, eb = a.get(path, "absent"), b.get(path, "absent")
        if ea == eb:
            continue
        if isinstance(ea, Entry) and isinstance(eb, Entry):
            for name in Entry._fields:
                if name in ignore or (ea.kind == "d" == eb.kind and f"dir-{name}" in ignore):
                    continue
                if getattr(ea, name) != getattr(eb, name):
                    return Difference(path, name, getattr(ea, name), getattr(eb, name))
            continue
        return Difference(path, "entry", ea, eb)
    return None
