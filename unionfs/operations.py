"""The pyfuse3 adapter: FUSE requests in, UnionFS calls out, errors as errnos.

Thin glue by design: every handler converts arguments, calls the domain API in ``core`` and turns
``OSError`` into ``FUSEError``.  Any other exception is a bug: it is logged with its traceback
and answered with EIO, so one bad request never takes the mount down.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from contextlib import suppress
from types import TracebackType
from typing import Literal, cast

import pyfuse3

from unionfs import cachedir
from unionfs.attrs import entry_attributes, negative_entry
from unionfs.core import UnionFS
from unionfs.files import AttrChange
from unionfs.nodes import Node
from unionfs.tree import Caller, Tree

log = logging.getLogger(__name__)


class Guard:
    """Wraps one kind of request: ``OSError`` becomes its errno, any other exception is a bug
    (logged with its traceback, answered EIO), and inodes whose attributes changed behind the
    kernel's back are invalidated afterwards.  One instance per request kind, reused."""

    __slots__ = ("op", "tree")

    def __init__(self, op: str, tree: Tree) -> None:
        self.op = op
        self.tree = tree

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        if self.tree.stale:
            invalidate_attrs(self.tree.stale)
        if exc is None or isinstance(exc, pyfuse3.FUSEError):
            return False
        if isinstance(exc, OSError):
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        if isinstance(exc, Exception):
            log.error("unexpected error in %s", self.op, exc_info=exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        return False


def invalidate_attrs(inodes: set[int]) -> None:
    """Tell the kernel to drop its cached attributes of ``inodes``."""
    while inodes:
        ino = inodes.pop()
        with suppress(OSError):  # the kernel does not know the inode (any more)
            pyfuse3.invalidate_inode(pyfuse3.InodeT(ino), attr_only=True)


_GUARDED = ("create", "forget", "fsync", "fsyncdir", "getattr", "getxattr", "link", "listxattr",
            "lookup", "mkdir", "mknod", "open", "opendir", "read", "readdir", "readlink", "release",
            "removexattr", "rename", "rmdir", "setattr", "setxattr", "statfs", "symlink", "unlink",
            "write")


def caller(ctx: pyfuse3.RequestContext) -> Caller:
    return Caller(ctx.uid, ctx.gid, ctx.umask)


class Operations(pyfuse3.Operations):
    """FUSE request handlers for one union."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: UnionFS) -> None:
        super().__init__()
        self.fs = fs
        self.tree = fs.tree
        self.timeout = fs.spec.timeout
        self.enable_writeback_cache = fs.spec.writeback
        self.guard = {op: Guard(op, self.tree) for op in _GUARDED}
        self.kernel_opens_dirs = False
        """OPENDIR is answered ENOSYS; readdirs then carry the inode (decided at init)."""

    def init(self) -> None:
        # Called from the FUSE init handshake, once the kernel's capabilities are known.
        self.kernel_opens_dirs = self.timeout > 0 and cachedir.without_opendir()

    def _entry(self, node: Node, st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        # The names of a lower hardlink are not cached by the kernel: it then looks the name
        # up before each use, which tells us which name an inode-only request (open for
        # writing, chmod, ...) came through, so copy-up picks the same name as the kernel.
        cached = node.reply
        if (st is None and cached is not None and cached[0] is node.st
                and node.fd is None and node.origin is None and cached[3] is node.dir_layers):
            # Same stat object, same layers: the link count cannot differ either.
            return cast(pyfuse3.EntryAttributes, cached[2])
        attr = self.tree.attr(node, st)
        if cached is not None and cached[0] is attr.st and cached[1] == attr.nlink:
            return cast(pyfuse3.EntryAttributes, cached[2])
        entry_timeout = 0.0 if node.origin is not None else None
        entry = entry_attributes(attr, self.timeout, entry_timeout)
        node.reply = (attr.st, attr.nlink, entry, node.dir_layers)
        return entry

    def _new_entry(self, node: Node) -> pyfuse3.EntryAttributes:
        self.tree.remember(node)
        return self._entry(node)

    # -- lookups and attributes ---------------------------------------------------------------

    async def lookup(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        with self.guard["lookup"]:
            parent = self.fs.node(parent_inode)
            try:
                node = self.tree.lookup(parent, name)
            except FileNotFoundError:
                return negative_entry(self.timeout)
            return self._new_entry(node)

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        with self.guard["forget"]:
            for ino, count in inode_list:
                self.fs.forget(ino, count)

    async def getattr(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        with self.guard["getattr"]:
            return self._entry(self.fs.node(inode))

    async def setattr(self, inode: pyfuse3.InodeT, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: pyfuse3.FileHandleT | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        with self.guard["setattr"]:
            change = AttrChange(
                mode=attr.st_mode if fields.update_mode else None,
                uid=attr.st_uid if fields.update_uid else None,
                gid=attr.st_gid if fields.update_gid else None,
                size=attr.st_size if fields.update_size else None,
                atime_ns=attr.st_atime_ns if fields.update_atime else None,
                mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            )
            result = self.fs.files.setattr(self.fs.node(inode), change, fh, caller(ctx))
            return entry_attributes(result, self.timeout)

    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        with self.guard["readlink"]:
            return self.tree.readlink(self.fs.node(inode))

    async def access(self, inode: pyfuse3.InodeT, mode: pyfuse3.ModeT,
                     ctx: pyfuse3.RequestContext) -> bool:
        return True  # default_permissions: the kernel checks the attributes we report

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        with self.guard["statfs"]:
            sv = self.tree.statvfs()
            data = pyfuse3.StatvfsData()
            for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                          "f_ffree", "f_favail", "f_namemax"):
                setattr(data, field, getattr(sv, field))
            return data

    # -- names --------------------------------------------------------------------------------

    async def mknod(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    mode: pyfuse3.ModeT, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        with self.guard["mknod"]:
            node = self.fs.names.mknod(self.fs.node(parent_inode), name, mode, rdev, caller(ctx))
            return self._new_entry(node)

    async def mkdir(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    mode: pyfuse3.ModeT,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        with self.guard["mkdir"]:
            node = self.fs.names.mkdir(self.fs.node(parent_inode), name, mode, caller(ctx))
            return self._new_entry(node)

    async def symlink(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                      target: pyfuse3.FileNameT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        with self.guard["symlink"]:
            node = self.fs.names.symlink(self.fs.node(parent_inode), name, target, caller(ctx))
            return self._new_entry(node)

    async def link(self, inode: pyfuse3.InodeT, new_parent_inode: pyfuse3.InodeT,
                   new_name: pyfuse3.FileNameT,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        with self.guard["link"]:
            node = self.fs.names.link(self.fs.node(inode), self.fs.node(new_parent_inode),
                                      new_name)
            return self._new_entry(node)

    async def unlink(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> None:
        with self.guard["unlink"]:
            self.fs.names.unlink(self.fs.node(parent_inode), name)

    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    ctx: pyfuse3.RequestContext) -> None:
        with self.guard["rmdir"]:
            self.fs.names.rmdir(self.fs.node(parent_inode), name)

    async def rename(self, parent_inode_old: pyfuse3.InodeT, name_old: pyfuse3.FileNameT,
                     parent_inode_new: pyfuse3.InodeT, name_new: pyfuse3.FileNameT,
                     flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext) -> None:
        with self.guard["rename"]:
            self.fs.names.rename(self.fs.node(parent_inode_old), name_old,
                                 self.fs.node(parent_inode_new), name_new, flags)

    # -- files --------------------------------------------------------------------------------

    async def create(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     mode: pyfuse3.ModeT, flags: pyfuse3.FlagT,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        with self.guard["create"]:
            who = caller(ctx)
            node, fd = self.fs.names.create(self.fs.node(parent_inode), name, mode,
                                            self.fs.files.real_flags(flags), who)
            fh = self.fs.files.adopt(node, fd, flags, who)
            return pyfuse3.FileInfo(fh=fh), self._new_entry(node)

    async def open(self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        with self.guard["open"]:
            fh = self.fs.files.open(self.fs.node(inode), flags, caller(ctx))
            return pyfuse3.FileInfo(fh=fh)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        with self.guard["read"]:
            return self.fs.files.read(fh, off, size)

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        with self.guard["write"]:
            return self.fs.files.write(fh, off, buf)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        with self.guard["release"]:
            self.fs.files.release(fh)

    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        with self.guard["fsync"]:
            self.fs.files.fsync(fh, datasync)

    # -- directories --------------------------------------------------------------------------

    async def opendir(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        with self.guard["opendir"]:
            node = self.fs.node(inode)
            # The kernel may keep listings: every change to them goes through this mount.
            if self.kernel_opens_dirs:
                # The kernel then opens directories itself, listings cached, and never asks
                # again; its readdirs carry the directory's inode (see unionfs/cachedir.py).
                raise pyfuse3.FUSEError(errno.ENOSYS)
            dh = self.fs.opendir(node)
            return pyfuse3.FileHandleT(dh | cachedir.flag if self.timeout > 0 else dh)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int,
                      token: pyfuse3.ReaddirToken) -> None:
        with self.guard["readdir"]:
            if self.kernel_opens_dirs:
                entries = self.fs.readdir_unopened(fh, start_id)  # fh: the inode (see opendir)
            else:
                entries = self.fs.readdir(cachedir.strip(fh), start_id)
            for offset, name, node, counted in entries:
                if not pyfuse3.readdir_reply(token, name, self._entry(node), offset + 1):
                    if counted and node.lookups == 0:
                        self.fs.forget(node.ino, 0)
                    return
                if counted:
                    node.lookups += 1  # readdirplus counts as a lookup (Tree.remember)

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self.fs.releasedir(cachedir.strip(fh))

    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        with self.guard["fsyncdir"]:
            self.tree.settle()  # copy-ups whose data is still being synced are durable after it

    # -- xattrs -------------------------------------------------------------------------------

    async def getxattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT,
                       ctx: pyfuse3.RequestContext) -> bytes:
        with self.guard["getxattr"]:
            return self.fs.xattrs.get(self.fs.node(inode), name)

    async def listxattr(self, inode: pyfuse3.InodeT,
                        ctx: pyfuse3.RequestContext) -> Sequence[pyfuse3.XAttrNameT]:
        with self.guard["listxattr"]:
            return [pyfuse3.XAttrNameT(n) for n in self.fs.xattrs.list(self.fs.node(inode))]

    async def setxattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        with self.guard["setxattr"]:
            self.fs.xattrs.set(self.fs.node(inode), name, value)

    async def removexattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT,
                          ctx: pyfuse3.RequestContext) -> None:
        with self.guard["removexattr"]:
            self.fs.xattrs.remove(self.fs.node(inode), name)
