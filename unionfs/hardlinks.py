"""The hardlink index: lower hardlinks stay one file after copy-up, as with the kernel's
``index=on``, in the kernel's own on-disk format.

When a lower file with several links is first copied up (or loses a name), its upper copy also
gets a link in ``<workdir>/index/``, named after the lower file's handle exactly as kernel
overlayfs names it, with ``trusted.overlay.origin`` (that handle) and ``trusted.overlay.nlink``
(the merged link count, relative to the upper inode's: ``U+0``).  Any other name of the same
lower file then reaches the upper copy through the index, so a write through one name shows
through all of them and ``st_nlink`` counts the names the merged view shows.  The index
persists: a remount, or kernel overlayfs mounting the same directories with ``index=on``, finds
the same links, and unionfs reads an index the kernel wrote.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from dataclasses import dataclass

from unionfs.filehandles import (
    NULL_UUID,
    OverlayHandle,
    decode_index_name,
    fs_uuid,
    handle_of,
    open_handle,
)
from unionfs.layers import Layer
from unionfs.nodes import Key
from unionfs.whiteout import WhiteoutFormat

log = logging.getLogger(__name__)


@dataclass(slots=True)
class IndexEntry:
    name: bytes
    nlink: int


class HardlinkIndex:
    """Lower hardlink identity -> its upper copy's link in ``workdir/index``, and the merged
    link count."""

    def __init__(self, workdir_fd: int, fmt: WhiteoutFormat, lowers: list[Layer]) -> None:
        self._workdir_fd = workdir_fd
        self._fd: int | None = None
        self.origin_xattr = fmt.xattr_prefix + b"origin"
        self.nlink_xattr = fmt.xattr_prefix + b"nlink"
        self.entries: dict[Key, IndexEntry] = {}
        self.origins: dict[Key, Key] = {}
        """Upper copy identity -> the lower identity it was copied from (what the kernel
        reads from ``trusted.overlay.origin``)."""
        self._uuids = {layer.dev: fs_uuid(layer.fd) for layer in lowers}
        """Each lower filesystem's UUID, as its handles carry it."""
        self._load(lowers)

    def _dir(self) -> int:
        if self._fd is None:
            with contextlib.suppress(FileExistsError):
                os.mkdir(b"index", 0o000, dir_fd=self._workdir_fd)  # as the kernel makes it
            self._fd = os.open(b"index", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                               dir_fd=self._workdir_fd)
        return self._fd

    def _load(self, lowers: list[Layer]) -> None:
        """Adopt the entries an earlier mount (ours or the kernel's) left in the index."""
        try:
            os.stat(b"index", dir_fd=self._workdir_fd)
        except FileNotFoundError:
            return
        names = os.listdir(self._dir())
        mounts = list({layer.dev: (layer.fd, self._uuids[layer.dev]) for layer in lowers}
                      .values())
        for name in names:
            raw = os.fsencode(name)
            handle = decode_index_name(raw)
            if handle is not None:
                self._adopt(raw, handle, mounts)

    def _adopt(self, name: bytes, handle: OverlayHandle, mounts: list[tuple[int, bytes]]) -> None:
        for mount_fd, uuid in mounts:
            # As the kernel: a handle belongs to the layer whose filesystem has its UUID (a
            # null one is what overlay's uuid=off writes, and matches any).
            if handle.uuid not in (uuid, NULL_UUID):
                continue
            try:
                fd = open_handle(mount_fd, handle)
            except OSError:
                continue
            try:
                lower = os.fstat(fd)
            finally:
                os.close(fd)
            st = os.stat(name, dir_fd=self._dir(), follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                return  # the kernel turns the entry of a file with no name left into a whiteout
            nlink = self._read_nlink(name, st.st_nlink, lower.st_nlink)
            key = (lower.st_dev, lower.st_ino)
            self.entries[key] = IndexEntry(name, nlink)
            self.origins[(st.st_dev, st.st_ino)] = key
            return

    def _read_nlink(self, name: bytes, upper_nlink: int, lower_nlink: int) -> int:
        try:
            value = os.getxattr(self._path(name), self.nlink_xattr, follow_symlinks=False)
            base = upper_nlink if value[:1] == b"U" else lower_nlink
            return base + int(value[1:])
        except (OSError, ValueError):
            return upper_nlink - 1

    def _path(self, name: bytes) -> bytes:
        return b"/proc/self/fd/%d/%s" % (self._dir(), name)

    def __contains__(self, key: Key) -> bool:
        return key in self.entries

    def add(self, key: Key, lower_fd: int, upper_fd: int, rel: bytes, nlink: int) -> None:
        """Index the upper copy ``rel`` of the lower hardlink ``key`` (open as ``lower_fd``),
        which the merged view shows under ``nlink`` names."""
        handle = handle_of(lower_fd, self._uuids.get(os.fstat(lower_fd).st_dev, NULL_UUID))
        name = handle.index_name()
        os.link(rel, name, src_dir_fd=upper_fd, dst_dir_fd=self._dir(), follow_symlinks=False)
        os.setxattr(self._path(name), self.origin_xattr, handle.encode(), follow_symlinks=False)
        self.entries[key] = IndexEntry(name, nlink)
        st = os.stat(name, dir_fd=self._dir(), follow_symlinks=False)
        self.origins[(st.st_dev, st.st_ino)] = key
        self._write_nlink(key)

    def _write_nlink(self, key: Key) -> None:
        entry = self.entries[key]
        try:
            upper_nlink = os.stat(entry.name, dir_fd=self._dir(), follow_symlinks=False).st_nlink
            value = b"U%+d" % (entry.nlink - upper_nlink)
            os.setxattr(self._path(entry.name), self.nlink_xattr, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                raise
            log.debug("cannot record the link count of %r: %s", entry.name, exc)

    def open(self, key: Key) -> int:
        """An O_PATH fd on the indexed upper copy."""
        return os.open(self.entries[key].name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=self._dir())

    def link_to(self, key: Key, dst_fd: int, rel: bytes) -> None:
        """Give the indexed file the name ``rel`` below ``dst_fd`` too (a link-up)."""
        os.link(self.entries[key].name, rel, src_dir_fd=self._dir(), dst_dir_fd=dst_fd,
                follow_symlinks=False)
        self._write_nlink(key)

    def nlink(self, key: Key) -> int | None:
        entry = self.entries.get(key)
        return None if entry is None else entry.nlink

    def adjust(self, key: Key, delta: int) -> None:
        entry = self.entries.get(key)
        if entry is not None:
            entry.nlink += delta
            self._write_nlink(key)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
