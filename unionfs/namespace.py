"""Operations that add or remove names: create, mkdir, mknod, symlink, link, unlink, rmdir
(and rename, which lives in ``renames``).

Each follows kernel overlayfs: the parent is copied up first; a new entry is built in the work
dir with the caller's ownership and renamed into place (over a whiteout if one is there, and a
directory made over a whiteout is opaque); a removal leaves a whiteout only where a lower layer
still shows the name; directories that draw from a lower layer cannot be renamed (EXDEV, the
kernel default without ``redirect_dir``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable

from unionfs import whiteout
from unionfs.layers import join
from unionfs.merge import Resolved
from unionfs.nodes import Node
from unionfs.renames import Renames
from unionfs.syscalls import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2
from unionfs.tree import Caller, Tree, key_of, oserror

Builder = Callable[[bytes], None]
"""Makes the new entry under a temporary name in the work dir."""


class Namespace:
    """Entry-changing operations on a :class:`Tree`."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self._renames = Renames(self)

    def rename(self, old_parent: Node, old_name: bytes, new_parent: Node, new_name: bytes,
               flags: int) -> None:
        """rename(2) and renameat2(2) with RENAME_NOREPLACE or RENAME_EXCHANGE."""
        self._renames.rename(old_parent, old_name, new_parent, new_name, flags)

    # -- creation -----------------------------------------------------------------------------

    def _owner(self, parent: Node, caller: Caller, mode: int, is_dir: bool) -> tuple[int, int, int]:
        """(uid, gid, mode) of a new entry, with set-group-ID directory inheritance."""
        uid, gid = caller.uid, caller.gid
        mode &= ~caller.umask & 0o7777
        sgid = self.tree.sgid_parent(parent)
        if sgid is not None:
            gid = sgid.st_gid
            if is_dir:
                mode |= stat.S_ISGID
        return uid, gid, mode

    def _create(self, parent: Node, name: bytes, caller: Caller, mode: int,
                build: Builder, is_dir: bool = False) -> tuple[Node, bytes]:
        """Build a new entry in the work dir and move it to ``name``; returns (node, tmp)."""
        tree = self.tree
        copier = tree.require_writable()
        if tree.fmt.dot_wh and name.startswith(whiteout.WHITEOUT_PREFIX):
            raise oserror(errno.EINVAL, name)
        prel = tree.upper_dir(parent)
        rel = join(prel, name)
        work, upper = copier.work, tree.upper
        uid, gid, mode = self._owner(parent, caller, mode, is_dir)
        tmp = work.temp_name()
        build(tmp)
        try:
            os.chown(tmp, uid, gid, dir_fd=work.fd, follow_symlinks=False)
            if not stat.S_ISLNK(os.stat(tmp, dir_fd=work.fd, follow_symlinks=False).st_mode):
                os.chmod(tmp, mode, dir_fd=work.fd)
            over_whiteout = self.has_whiteout(prel, name)
            # Over a whiteout a new directory must hide what is below; in a merged parent the
            # kernel marks it opaque too, sparing later lookups the lower layers.
            if is_dir and (over_whiteout or len(parent.dir_layers) > 1):
                whiteout.set_opaque(work.fd, tmp, tree.fmt)
            self._place(tmp, rel, prel, name, over_whiteout, is_dir)
        except BaseException:
            copier.discard(tmp)
            raise
        tree.dir_changed(parent)
        st = upper.lstat(rel)
        assert st is not None
        node = tree.table.new_node(key_of(st), parent, name, 0, (0,) if is_dir else (), is_dir)
        return node, tmp

    def has_whiteout(self, prel: bytes, name: bytes) -> bool:
        upper = self.tree.upper
        st = upper.lstat(join(prel, name))
        if st is not None:
            if whiteout.is_whiteout_stat(st):
                return True
            raise oserror(errno.EEXIST, name)
        return self.tree.fmt.dot_wh and whiteout.has_whiteout_marker(upper.fd, prel, name)

    def _place(self, tmp: bytes, rel: bytes, prel: bytes, name: bytes, over_whiteout: bool,
               is_dir: bool) -> None:
        """Rename the finished temporary to ``rel``, replacing a whiteout atomically."""
        tree = self.tree
        wfd, ufd = tree.require_writable().work.fd, tree.upper.fd
        if over_whiteout and tree.fmt.dot_wh:
            renameat2(wfd, tmp, ufd, rel, RENAME_NOREPLACE)
            os.unlink(join(prel, whiteout.whiteout_file_name(name)), dir_fd=ufd)
        elif over_whiteout and is_dir:
            renameat2(wfd, tmp, ufd, rel, RENAME_EXCHANGE)
            os.unlink(tmp, dir_fd=wfd)
        elif over_whiteout:
            os.rename(tmp, rel, src_dir_fd=wfd, dst_dir_fd=ufd)
        else:
            renameat2(wfd, tmp, ufd, rel, RENAME_NOREPLACE)

    def create(self, parent: Node, name: bytes, mode: int, flags: int,
               caller: Caller) -> tuple[Node, int]:
        """Create and open a regular file; returns (node, fd open read-write)."""
        tree = self.tree
        tree.require_writable()
        prel = tree.upper_dir(parent)
        if tree.fmt.dot_wh or self.has_whiteout(prel, name):
            node, fd = self._create_via_work(parent, name, mode, caller)
        else:
            node, fd = self._create_in_place(parent, join(prel, name), name, mode, caller)
        if flags & os.O_APPEND:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        return node, fd

    def _create_in_place(self, parent: Node, rel: bytes, name: bytes, mode: int,
                         caller: Caller) -> tuple[Node, int]:
        """The common case, no whiteout to replace: create the file where it belongs (as the
        kernel does), then give it to the caller; three syscalls for a root caller."""
        tree = self.tree
        uid, gid, mode = self._owner(parent, caller, mode, is_dir=False)
        ufd = tree.upper.fd
        fd = os.open(rel, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode, dir_fd=ufd)
        try:
            if uid or gid:
                os.fchown(fd, uid, gid)
                if mode & (stat.S_ISUID | stat.S_ISGID):
                    os.fchmod(fd, mode)  # chown cleared them
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            os.unlink(rel, dir_fd=ufd)
            raise
        tree.dir_changed(parent)
        node = tree.table.new_node(key_of(st), parent, name, 0, (), False)
        node.st = st
        return node, fd

    def _create_via_work(self, parent: Node, name: bytes, mode: int,
                         caller: Caller) -> tuple[Node, int]:
        """Over a whiteout: build the file in the work dir and rename it over the whiteout."""
        fds: list[int] = []
        wfd = self.tree.require_writable().work.fd

        def build(tmp: bytes) -> None:
            fds.append(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                               dir_fd=wfd))

        try:
            node, _ = self._create(parent, name, caller, mode, build)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return node, fds[0]

    def mkdir(self, parent: Node, name: bytes, mode: int, caller: Caller) -> Node:
        wfd = self.tree.require_writable().work.fd
        node, _ = self._create(parent, name, caller, mode,
                               lambda tmp: os.mkdir(tmp, 0o700, dir_fd=wfd), is_dir=True)
        return node

    def mknod(self, parent: Node, name: bytes, mode: int, rdev: int, caller: Caller) -> Node:
        if stat.S_ISCHR(mode) and rdev == 0:
            raise oserror(errno.EPERM, name)  # that would be a whiteout (the kernel refuses too)
        wfd = self.tree.require_writable().work.fd
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        node, _ = self._create(parent, name, caller, mode,
                               lambda tmp: os.mknod(tmp, kind | 0o600, rdev, dir_fd=wfd))
        return node

    def symlink(self, parent: Node, name: bytes, target: bytes, caller: Caller) -> Node:
        wfd = self.tree.require_writable().work.fd
        node, _ = self._create(parent, name, caller, 0o777,
                               lambda tmp: os.symlink(target, tmp, dir_fd=wfd))
        return node

    def link(self, node: Node, parent: Node, name: bytes) -> Node:
        tree = self.tree
        copier = tree.require_writable()
        if node.is_dir:
            raise oserror(errno.EPERM)
        if node.fd is None or tree.indexed(node):
            tree.make_data_writable(node)  # copy-up, or the link-up of an indexed hardlink
        prel = tree.upper_dir(parent)
        rel = join(prel, name)
        src = node.path() if node.fd is None else b"/proc/self/fd/%d" % node.fd
        over_whiteout = self.has_whiteout(prel, name)
        work, ufd = copier.work, tree.upper.fd
        if over_whiteout:
            tmp = work.temp_name()
            self._link_into(src, node, work.fd, tmp)
            self._place(tmp, rel, prel, name, True, False)
        else:
            self._link_into(src, node, ufd, rel)
        tree.count_link(node, +1)
        tree.dir_changed(parent)
        tree.changed(node)
        if node.parent is None:
            node.parent, node.name = parent, name
        else:
            node.add_alias(parent, name)
        return node

    def _link_into(self, src: bytes, node: Node, dst_fd: int, dst: bytes) -> None:
        if node.fd is not None:
            os.link(src, dst, dst_dir_fd=dst_fd, follow_symlinks=True)
        else:
            os.link(src, dst, src_dir_fd=self.tree.upper.fd, dst_dir_fd=dst_fd,
                    follow_symlinks=False)

    # -- removal ------------------------------------------------------------------------------

    def existing(self, parent: Node, name: bytes) -> tuple[Resolved, Node]:
        found = self.tree.resolve(parent, name)
        if found is None:
            raise oserror(errno.ENOENT, name)
        return found, self.tree.node_for(parent, name, found)

    def unlink(self, parent: Node, name: bytes) -> Node:
        tree = self.tree
        tree.require_writable()
        found, node = self.existing(parent, name)
        if found.is_dir:
            raise oserror(errno.EISDIR, name)
        found = self.index_before_unlink(parent, name, found, node)
        self._remove(parent, name, found, node)
        tree.count_link(node, -1)
        return node

    def index_before_unlink(self, parent: Node, name: bytes, found: Resolved,
                             node: Node) -> Resolved:
        """A lower hardlink losing a name is copied up under that name and indexed first, so
        its other names keep one inode and the right count (the kernel does so with index=on).
        """
        tree = self.tree
        if node.origin is None or tree.index is None or node.origin in tree.index:
            return found
        tree.index_hardlink(node, parent, name, found.layer)
        again = tree.resolve(parent, name)
        assert again is not None
        return again

    def rmdir(self, parent: Node, name: bytes) -> Node:
        tree = self.tree
        tree.require_writable()
        found, node = self.existing(parent, name)
        if not found.is_dir:
            raise oserror(errno.ENOTDIR, name)
        rel = join(parent.path(), name)
        if not tree.stack.is_empty_dir(found.dir_layers, rel):
            raise oserror(errno.ENOTEMPTY, name)
        self._remove(parent, name, found, node)
        return node

    def _remove(self, parent: Node, name: bytes, found: Resolved, node: Node) -> None:
        """Remove the visible entry ``name``: upper entry gone, whiteout where lowers show."""
        tree = self.tree
        prel = tree.upper_dir(parent)
        rel = join(prel, name)
        needs_whiteout = tree.stack.lower_positive(parent.dir_layers, prel, name)
        tree.detach(node, parent, name, found.layer)
        tree.dir_changed(parent)
        tree.changed(node)
        if tree.stack.is_upper(found.layer):
            if found.is_dir:
                self.clear_whiteouts(rel)
            self._remove_upper(prel, name, found.is_dir, needs_whiteout)
            if found.st.st_nlink <= 1 or found.is_dir:
                tree.table.drop_key(node, key_of(found.st))
        else:
            self.whiteout_at(prel, name)
        node.drop_link(parent, name)

    def whiteout_at(self, prel: bytes, name: bytes) -> None:
        fd = self.tree.upper.open_dir(prel)
        try:
            whiteout.make_whiteout(fd, name, self.tree.fmt)
        finally:
            os.close(fd)

    def unwhiteout_at(self, prel: bytes, name: bytes) -> None:
        fd = self.tree.upper.open_dir(prel)
        try:
            whiteout.remove_whiteout(fd, name, self.tree.fmt)
        finally:
            os.close(fd)

    def _remove_upper(self, prel: bytes, name: bytes, is_dir: bool, needs_whiteout: bool) -> None:
        tree = self.tree
        rel = join(prel, name)
        ufd = tree.upper.fd
        if not needs_whiteout:
            (os.rmdir if is_dir else os.unlink)(rel, dir_fd=ufd)
            return
        if tree.fmt.dot_wh:
            (os.rmdir if is_dir else os.unlink)(rel, dir_fd=ufd)
            self.whiteout_at(prel, name)
            return
        work = tree.require_writable().work
        tmp = work.temp_name()
        whiteout.make_whiteout(work.fd, tmp, tree.fmt)
        if is_dir:
            renameat2(work.fd, tmp, ufd, rel, RENAME_EXCHANGE)
            os.rmdir(tmp, dir_fd=work.fd)
        else:
            os.rename(tmp, rel, src_dir_fd=work.fd, dst_dir_fd=ufd)

    def clear_whiteouts(self, rel: bytes) -> None:
        """Empty an upper directory whose merged view is empty (only markers are left)."""
        upper = self.tree.upper
        fmt = self.tree.fmt
        for entry in list(upper.scandir(rel)):
            if whiteout.is_marker_name(entry.name, fmt) or whiteout.is_whiteout_stat(
                    entry.stat(follow_symlinks=False)):
                os.unlink(join(rel, entry.name), dir_fd=upper.fd)
            # anything else is visible: the upper filesystem will say ENOTEMPTY
