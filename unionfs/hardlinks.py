"""The hardlink index: lower hardlinks stay one file after copy-up, as with the kernel's
``index=on``.

When a lower file with several links is first copied up (or loses a name), its upper copy gets
an extra link in ``<workdir>/work/index/`` named after the lower identity, and the index keeps
the merged link count.  Any other name of the same lower file then reaches the upper copy
through that link, so a write through one name shows through all of them and ``st_nlink`` counts
the names the merged view shows.  The index lives in the work dir, which every mount empties:
it holds for the life of a mount (see the README's deliberate differences).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from unionfs.nodes import Key


@dataclass(slots=True)
class IndexEntry:
    name: bytes
    nlink: int


class HardlinkIndex:
    """Lower hardlink identity -> an extra link to its upper copy, and the merged link count."""

    def __init__(self, work_fd: int) -> None:
        self._work_fd = work_fd
        self._fd: int | None = None
        self.entries: dict[Key, IndexEntry] = {}

    def _dir(self) -> int:
        if self._fd is None:
            with contextlib.suppress(FileExistsError):
                os.mkdir(b"index", 0o700, dir_fd=self._work_fd)
            self._fd = os.open(b"index", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                               dir_fd=self._work_fd)
        return self._fd

    def __contains__(self, key: Key) -> bool:
        return key in self.entries

    def add(self, key: Key, upper_fd: int, rel: bytes, nlink: int) -> None:
        """Index the upper copy ``rel`` of the lower hardlink ``key`` (``nlink`` merged links)."""
        name = b"%x-%x" % key
        os.link(rel, name, src_dir_fd=upper_fd, dst_dir_fd=self._dir(), follow_symlinks=False)
        self.entries[key] = IndexEntry(name, nlink)

    def open(self, key: Key) -> int:
        """An O_PATH fd on the indexed upper copy."""
        return os.open(self.entries[key].name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=self._dir())

    def link_to(self, key: Key, dst_fd: int, rel: bytes) -> None:
        """Give the indexed file the name ``rel`` below ``dst_fd`` too (a link-up)."""
        os.link(self.entries[key].name, rel, src_dir_fd=self._dir(), dst_dir_fd=dst_fd,
                follow_symlinks=False)

    def nlink(self, key: Key) -> int | None:
        entry = self.entries.get(key)
        return None if entry is None else entry.nlink

    def adjust(self, key: Key, delta: int) -> None:
        entry = self.entries.get(key)
        if entry is not None:
            entry.nlink += delta

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
