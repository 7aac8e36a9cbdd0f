"""Overlay rules, read-only, over plain directories: what a mount of layers would show.

Used without any mount: ``diff`` asks whether a path exists below the upper layer, ``export``
walks the merged tree of a container.  The rules are the kernel's: the first layer holding a
name wins; a char 0/0 whiteout hides the name; a non-directory hides everything below it; an
opaque directory hides the same directory in lower layers.  Symlinks are never followed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from unionfs.whiteout import KERNEL_FORMAT, USERXATTR_FORMAT, is_opaque, is_whiteout_stat

Parts = tuple[bytes, ...]


def opaque_at(root: bytes, rel: bytes) -> bool:
    """Whether ``root/rel`` is an opaque directory (either xattr namespace)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return any(is_opaque(fd, rel, fmt) for fmt in (KERNEL_FORMAT, USERXATTR_FORMAT))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Entry:
    parts: Parts
    layer: bytes
    """The layer root that provides this entry."""
    st: os.stat_result

    @property
    def path(self) -> bytes:
        return os.path.join(self.layer, *self.parts) if self.parts else self.layer


class OverlayView:
    def __init__(self, layers: list[Path]) -> None:
        self.layers = [os.fsencode(p) for p in layers]

    def _resolve(self, dirs: list[bytes], rel: bytes) -> tuple[Entry | None, list[bytes]]:
        """The winning entry for ``rel`` among ``dirs`` and the dirs that merge below it."""
        top: Entry | None = None
        below: list[bytes] = []
        for d in dirs:
            try:
                st = os.lstat(os.path.join(d, rel))
            except (FileNotFoundError, NotADirectoryError):
                continue
            if top is None:
                if is_whiteout_stat(st):
                    return None, []
                top = Entry(tuple(rel.split(b"/")), d, st)
            elif not stat.S_ISDIR(st.st_mode):
                break
            if not stat.S_ISDIR(st.st_mode):
                break
            below.append(d)
            if opaque_at(d, rel):
                break
        return top, below

    def lookup(self, parts: Parts) -> Entry | None:
        dirs = self.layers
        entry: Entry | None = None
        for i in range(len(parts)):
            if not dirs:
                return None
            entry, dirs = self._resolve(dirs, b"/".join(parts[:i + 1]))
            if entry is None:
                return None
        return entry

    def listdir(self, parts: Parts) -> list[bytes]:
        """Names in the merged directory ``parts`` (whiteouts removed)."""
        dirs = self.layers if not parts else self._dirs_of(parts)
        return [entry.parts[-1] for entry, _ in self._children(parts, dirs)]

    def _dirs_of(self, parts: Parts) -> list[bytes]:
        dirs = self.layers
        for i in range(len(parts)):
            entry, dirs = self._resolve(dirs, b"/".join(parts[:i + 1]))
            if entry is None:
                return []
        return dirs

    def walk(self, parts: Parts = ()) -> Iterator[Entry]:
        """Every merged entry below ``parts``, sorted, parents before children (no recursion)."""
        stack = [iter(self._children(parts, self.layers if not parts else self._dirs_of(parts)))]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            entry, below = item
            yield entry
            if below:
                stack.append(iter(self._children(entry.parts, below)))

    def _children(self, parts: Parts, dirs: list[bytes]) -> list[tuple[Entry, list[bytes]]]:
        rel = b"/".join(parts)
        names: set[bytes] = set()
        for d in dirs:
            names.update(os.listdir(os.path.join(d, rel) if rel else d))
        out = []
        for name in sorted(names):
            entry, below = self._resolve(dirs, os.path.join(rel, name) if rel else name)
            if entry is not None:
                out.append((entry, below))
        return out
