"""A container's changes, from walking only its upper dir: ``diff`` lines and the commit tar.

``changes`` gives docker-diff style A/C/D: a char 0/0 whiteout is a Delete (when the lowers
have the name), an entry the lowers have is a Change, else an Add; an opaque directory also
deletes the lower children it does not re-create.  ``write_layer`` turns the upper dir into an
OCI layer tar the way moby does: whiteouts become empty ``.wh.<name>`` files, an opaque
directory gets a ``.wh..wh..opq`` entry right after its own, overlay-private xattrs never go in.
Order is sorted by name bytes and timestamps are the files' own, so one upper dir always gives
the same bytes.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mounttool.fsutil import walk_sorted
from mounttool.overlayview import OverlayView, opaque_at
from mounttool.tarwriter import add_entry, open_writer, set_mtime, tarinfo_for
from unionfs.whiteout import OPAQUE_MARKER, WHITEOUT_PREFIX, is_whiteout_stat


@dataclass(frozen=True, slots=True)
class Change:
    kind: str
    path: bytes

    def __str__(self) -> str:
        return f"{self.kind} /{os.fsdecode(self.path)}"


def changes(upper: Path, lowers: OverlayView) -> Iterator[Change]:
    root = os.fsencode(upper)
    for rel in walk_sorted(root):
        st = os.lstat(os.path.join(root, rel))
        parts = tuple(rel.split(b"/"))
        below = lowers.lookup(parts)
        if is_whiteout_stat(st):
            if below is not None:
                yield Change("D", rel)
            continue
        yield Change("C" if below is not None else "A", rel)
        if stat.S_ISDIR(st.st_mode) and below is not None and opaque_at(root, rel):
            mine = set(os.listdir(os.path.join(root, rel)))
            for name in lowers.listdir(parts):
                if name not in mine:
                    yield Change("D", os.path.join(rel, name))


def write_layer(upper: Path, out: BinaryIO) -> None:
    """The OCI layer tar of an overlay upper dir."""
    root = os.fsencode(upper)
    links: dict[tuple[int, int], str] = {}
    with open_writer(out) as tar:
        for rel in walk_sorted(root):
            full = os.path.join(root, rel)
            st = os.lstat(full)
            if is_whiteout_stat(st):
                tar.addfile(_marker(rel, WHITEOUT_PREFIX + os.path.basename(rel), st))
                continue
            ti = tarinfo_for(full, rel, st, links, None)
            if ti is None:
                continue
            add_entry(tar, full, ti)
            if stat.S_ISDIR(st.st_mode) and opaque_at(root, rel):
                tar.addfile(_marker(os.path.join(rel, b"x"), OPAQUE_MARKER, st))


def _marker(rel: bytes, name: bytes, st: os.stat_result) -> tarfile.TarInfo:
    """An empty regular ``.wh.`` file beside ``rel`` (moby's ConvertWrite)."""
    parent = os.path.dirname(rel)
    ti = tarfile.TarInfo(os.fsdecode(os.path.join(parent, name) if parent else name))
    ti.type, ti.size, ti.mode = tarfile.REGTYPE, 0, 0o600
    ti.uid, ti.gid = st.st_uid, st.st_gid
    set_mtime(ti, st.st_mtime_ns)
    return ti
