"""Open files and attribute changes: open (copy-up on write), read, write, setattr, fsync.

A handle keeps the real fd it was opened on.  Opening for writing, truncating, chmod, chown and
utimes copy the file up first.  A handle opened read-only on a lower file that another handle has
since copied up reopens the upper copy on its next read, as kernel overlayfs does, so readers see
writers' data.  Set-user-ID and set-group-ID bits are cleared when an unprivileged caller writes
or truncates (libfuse leaves that to the filesystem: HANDLE_KILLPRIV); chown clears them in the
upper filesystem itself.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from unionfs.nodes import Node
from unionfs.tree import Attr, Caller, Tree, oserror

_OPEN_DROP = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_DIRECT
_KILL_BITS = stat.S_ISUID | stat.S_ISGID


@dataclass(slots=True)
class Handle:
    fd: int
    node: Node
    flags: int
    data_gen: int
    kill_priv: bool
    """The opener cannot keep set-ID bits: the first write clears them."""
    written: bool = field(default=False)
    link: tuple[Node | None, bytes] = (None, b"")
    """The name the file was opened by: a change made through this handle (ftruncate,
    fchmod, ...) is the kernel's change of that name."""

    @property
    def writable(self) -> bool:
        return (self.flags & os.O_ACCMODE) != os.O_RDONLY


@dataclass(frozen=True, slots=True)
class AttrChange:
    """The fields of one setattr call; None means unchanged."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


def _kill_setid(fd: int) -> None:
    st = os.fstat(fd)
    bits = st.st_mode & stat.S_ISUID
    if st.st_mode & stat.S_ISGID and st.st_mode & stat.S_IXGRP:
        bits |= stat.S_ISGID
    if bits:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~bits)


class Files:
    """The open-file table of a mount."""

    def __init__(self, tree: Tree, writeback: bool = False) -> None:
        self.tree = tree
        self.writeback = writeback
        """With the kernel's writeback cache, the kernel reads pages back through write-only
        handles and places appends itself: real fds are opened read-write, without O_APPEND."""
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1

    def _add(self, handle: Handle) -> int:
        handle.link = (handle.node.parent, handle.node.name)
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        handle.node.opens += 1
        return fh

    def get(self, fh: int) -> Handle:
        try:
            return self.handles[fh]
        except KeyError:
            raise oserror(errno.EBADF) from None

    def real_flags(self, flags: int) -> int:
        """The flags a real fd is opened with for a handle opened with ``flags``."""
        flags &= ~_OPEN_DROP
        if self.writeback:
            flags &= ~os.O_APPEND
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        return flags

    def _open_real(self, node: Node, flags: int) -> int:
        flags = self.real_flags(flags)
        if node.fd is not None:  # a magic link: O_NOFOLLOW would refuse to follow it
            return os.open(b"/proc/self/fd/%d" % node.fd,
                           (flags & ~os.O_NOFOLLOW) | os.O_CLOEXEC)
        return self.tree.layers[node.layer].open(node.path(), flags)

    def open(self, node: Node, flags: int, caller: Caller) -> int:
        """Open ``node``; writing or truncating opens copy it up first.  Returns the fh."""
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            self.tree.make_data_writable(node, with_data=not flags & os.O_TRUNC)
        fd = self._open_real(node, flags)
        handle = Handle(fd, node, flags, node.data_gen, kill_priv=caller.uid != 0)
        if flags & os.O_TRUNC:
            self.tree.changed(node)
            if handle.kill_priv:
                _kill_setid(fd)
        return self._add(handle)

    def adopt(self, node: Node, fd: int, flags: int, caller: Caller) -> int:
        """Register an fd opened by create() as a handle."""
        return self._add(Handle(fd, node, flags, node.data_gen, kill_priv=caller.uid != 0))

    def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self.get(fh)
        if handle.data_gen != handle.node.data_gen and not handle.writable:
            self._reopen(handle)
        return os.pread(handle.fd, size, offset)

    def _reopen(self, handle: Handle) -> None:
        fd = self._open_real(handle.node, handle.flags & ~os.O_TRUNC)
        os.close(handle.fd)
        handle.fd, handle.data_gen = fd, handle.node.data_gen

    def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.get(fh)
        if handle.kill_priv and not handle.written:
            _kill_setid(handle.fd)
        handle.written = True
        handle.node.st = None
        return os.pwrite(handle.fd, data, offset)

    def fsync(self, fh: int, datasync: bool) -> None:
        handle = self.get(fh)
        self.tree.settle()  # a copy-up whose data the worker has not synced yet
        if self.tree.is_upper(handle.node):
            (os.fdatasync if datasync else os.fsync)(handle.fd)

    def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        os.close(handle.fd)
        node = handle.node
        node.opens -= 1
        if node.opens == 0 and node.fd is not None and node.parent is None:
            os.close(node.fd)
            node.fd = None

    # -- setattr ------------------------------------------------------------------------------

    def setattr(self, node: Node, change: AttrChange, fh: int | None, caller: Caller) -> Attr:
        tree = self.tree
        handle = self.handles.get(fh) if fh is not None else None
        link_up = True
        if handle is not None and handle.link[0] is not None:
            if node.has_link(handle.link[0], handle.link[1]):
                node.make_primary(handle.link[0], handle.link[1])
            else:
                # The name it was opened by is gone: as with the kernel, the change is to the
                # data (already upper) and gives no other name of a hardlink an upper link.
                link_up = False
        elif handle is None and self._kills_privileges(node, change, caller):
            # The kernel clears set-ID bits before a write by an unprivileged writer with a
            # SETATTR that names no handle; it acts on the file that is written, so when that
            # was opened by a name now gone, no other name of a hardlink gets an upper link.
            link_up = not any(h.node is node and h.writable and h.link[0] is not None
                              and not node.has_link(h.link[0], h.link[1])
                              for h in self.handles.values())
        before = tree.stat(node)
        is_link = stat.S_ISLNK(before.st_mode)  # a copy-up keeps the file type
        tree.make_data_writable(node, with_data=change.size != 0, link_up=link_up)
        target, follow = tree.locate(node)
        if change.uid is not None or change.gid is not None:
            os.chown(target, -1 if change.uid is None else change.uid,
                     -1 if change.gid is None else change.gid, follow_symlinks=follow)
        if change.mode is not None and not is_link:
            os.chmod(target, stat.S_IMODE(change.mode))
        if change.size is not None:
            self._truncate(target, change.size, before.st_size, handle, caller)
        if change.atime_ns is not None or change.mtime_ns is not None:
            self._utime(node, target, change, follow)
        tree.changed(node)
        return tree.attr(node)

    def _kills_privileges(self, node: Node, change: AttrChange, caller: Caller) -> bool:
        """Whether ``change`` is the kernel's clearing of set-ID bits before a write: a mode
        change only, from a caller without privileges, that drops set-ID bits and nothing else.
        """
        if caller.uid == 0 or change.mode is None or node.origin is None or any(
                v is not None for v in (change.uid, change.gid, change.size, change.atime_ns,
                                        change.mtime_ns)):
            return False
        old, new = stat.S_IMODE(self.tree.stat(node).st_mode), stat.S_IMODE(change.mode)
        setid = stat.S_ISUID | stat.S_ISGID
        return new != old and new & ~old == 0 and (old & ~new) & ~setid == 0

    def _truncate(self, target: bytes, size: int, old_size: int, handle: Handle | None,
                  caller: Caller) -> None:
        if handle is not None and handle.writable:
            os.ftruncate(handle.fd, size)
            if caller.uid != 0:
                _kill_setid(handle.fd)
            return
        fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
        try:
            # The kernel passes truncate(2) on as it is: times change only when the size the
            # caller saw does (ftruncate(2) sets them even when the size stays, and tmpfs
            # honours that).  A copy-up made for it may hold no data, so the upper file's
            # size is not the one to go by.
            if size != old_size:
                os.ftruncate(fd, size)
            else:
                os.truncate(b"/proc/self/fd/%d" % fd, size)
            if caller.uid != 0:
                _kill_setid(fd)
        finally:
            os.close(fd)

    def _utime(self, node: Node, target: bytes, change: AttrChange, follow: bool) -> None:
        self.tree.changed(node)
        st = self.tree.stat(node)  # fresh: the time not being set is kept as it is now
        atime = st.st_atime_ns if change.atime_ns is None else change.atime_ns
        mtime = st.st_mtime_ns if change.mtime_ns is None else change.mtime_ns
        os.utime(target, ns=(atime, mtime), follow_symlinks=follow)
