"""stat results → pyfuse3 EntryAttributes: the one place attributes are converted."""

from __future__ import annotations

import pyfuse3

from unionfs.tree import Attr


def entry_attributes(attr: Attr, timeout: float,
                     entry_timeout: float | None = None) -> pyfuse3.EntryAttributes:
    """The reply for ``attr``; names are cached ``entry_timeout`` seconds (default: as long
    as the attributes)."""
    st = attr.st
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = attr.ino
    entry.generation = 0
    entry.entry_timeout = timeout if entry_timeout is None else entry_timeout
    entry.attr_timeout = timeout
    entry.st_mode = st.st_mode
    entry.st_nlink = attr.nlink
    entry.st_uid = st.st_uid
    entry.st_gid = st.st_gid
    entry.st_rdev = st.st_rdev
    entry.st_size = st.st_size
    entry.st_blksize = st.st_blksize
    entry.st_blocks = st.st_blocks
    entry.st_atime_ns = st.st_atime_ns
    entry.st_mtime_ns = st.st_mtime_ns
    entry.st_ctime_ns = st.st_ctime_ns
    return entry


def negative_entry(timeout: float) -> pyfuse3.EntryAttributes:
    """A cacheable "no such entry" reply (st_ino 0), so repeated misses stay in the kernel."""
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = 0
    entry.entry_timeout = timeout
    return entry
