"""Copy-up: making the upper layer hold a lower file before it changes, atomically.

A copy is built under a temporary name in the work directory (same filesystem as the upper
layer): data (holes kept), owner, mode, xattrs (not the overlay-private ones) and times, then
renamed into place, so the upper layer never shows a copy half built.  Its data is made durable
before the rename (``copyup_sync=inline``, the kernel's way) or, by default, after it by the
syncer's worker, with a pending record written first (``unionfs.syncer``): either way a crash
leaves no upper name whose data is partial.  The work directory also hosts the temporaries of
other atomic operations (whiteouts, directories made over whiteouts).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import stat

from unionfs.launch import lock_within
from unionfs.layers import Layer, at, split
from unionfs.nodes import Key
from unionfs.syncer import Syncer
from unionfs.whiteout import WhiteoutFormat, proc_path

LOCK_WAIT = 10.0
"""Seconds a mount waits for the daemon of an earlier mount to let go of the workdir."""


class WorkDir:
    """``<workdir>/work``: the scratch directory for atomic builds, emptied at every mount.

    The workdir itself is flock'ed for as long as the daemon uses it, released only once its
    last copy-up is synced: ``flock WORKDIR true`` after an unmount waits until the upper
    directory is durable (the kernel does not wait for a FUSE daemon to finish), and a mount
    made right after an unmount waits for the old daemon before it empties ``work/``.  A
    workdir another live mount holds is refused, as kernel overlayfs refuses one in use.
    """

    def __init__(self, workdir: bytes, wait: float = LOCK_WAIT) -> None:
        self.base_fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        """The workdir itself (the hardlink index lives in ``index/`` there)."""
        if not lock_within(self.base_fd, wait):
            os.close(self.base_fd)
            raise OSError(errno.EBUSY, "workdir is in use by another mount",
                          os.fsdecode(workdir))
        with contextlib.suppress(FileExistsError):
            os.mkdir(b"work", 0o700, dir_fd=self.base_fd)
        self.fd = os.open(b"work", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                          dir_fd=self.base_fd)
        self.path = os.path.join(workdir, b"work")
        self._names = itertools.count(1)
        self._tag = os.getpid()  # the mounting process: names stay unique across mounts
        work = os.fstat(self.fd)
        self.creates_as = (os.geteuid(),
                           work.st_gid if work.st_mode & stat.S_ISGID else os.getegid())
        """The owner and group a file created in the work dir gets."""
        self.recover()

    def recover(self) -> int:
        """Remove what an interrupted mount left behind; returns how many entries went."""
        removed = 0
        for name in os.listdir(self.fd):
            entry = os.fsencode(name)
            st = os.stat(entry, dir_fd=self.fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(os.path.join(self.path, entry))
            else:
                os.unlink(entry, dir_fd=self.fd)
            removed += 1
        return removed

    def temp_name(self) -> bytes:
        return b"#%x.%d" % (next(self._names), self._tag)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.base_fd)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def copy_xattrs(src: bytes | int, dst: bytes | int, fmt: WhiteoutFormat,
                follow: bool = False) -> None:
    """Copy every xattr but the overlay-private ones from ``src`` to ``dst`` (paths or fds)."""
    src_follow = follow or isinstance(src, int)  # Python refuses an fd with follow=False
    dst_follow = follow or isinstance(dst, int)
    try:
        names = os.listxattr(src, follow_symlinks=src_follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        raw = os.fsencode(name)
        if fmt.is_private_xattr(raw):
            continue
        try:
            value = os.getxattr(src, raw, follow_symlinks=src_follow)
            os.setxattr(dst, raw, value, follow_symlinks=dst_follow)
        except OSError as exc:
            # Like the kernel and fuse-overlayfs: an xattr the upper cannot hold is skipped.
            if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EOVERFLOW, errno.ENODATA):
                raise


def copy_data(src_fd: int, dst_fd: int, st: os.stat_result) -> None:
    """Copy the ``st.st_size`` bytes of ``src_fd``, leaving holes where the source has them."""
    size = st.st_size
    # Every byte has a block: no hole to look for (the common case, three syscalls fewer).
    if st.st_blocks * 512 >= size and _copy_range(src_fd, dst_fd, 0, size) == size:
        return
    offset = 0
    while offset < size:
        try:
            data_start = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                break
            raise
        end = min(os.lseek(src_fd, data_start, os.SEEK_HOLE), size)
        offset = max(end, _copy_range(src_fd, dst_fd, data_start, end))
    os.ftruncate(dst_fd, size)


_NO_COPY_RANGE: set[tuple[int, int]] = set()
"""(source st_dev, destination st_dev) pairs where ``copy_file_range`` was refused."""

_COPY_RANGE_REFUSALS = frozenset({errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS})
"""What ``copy_file_range(2)`` says where it cannot copy between these two files: across
filesystems (EXDEV; the kernel allows it only within one filesystem type), or where a
filesystem does not implement it (EINVAL, EOPNOTSUPP, ENOSYS).  The copy then goes through
``pread``/``pwrite``."""

_CHUNK = 1 << 20


def _copy_range(src_fd: int, dst_fd: int, pos: int, end: int) -> int:
    """Copy bytes ``pos`` to ``end`` in place; returns where it stopped (short at EOF).

    ``copy_file_range`` where the two files allow it (reflinks and server-side copies come
    free), else plain reads and writes: lower layers on one filesystem and the upper on another
    (image layers on disk, the upper on tmpfs) is the common case.
    """
    pair = (os.fstat(src_fd).st_dev, os.fstat(dst_fd).st_dev) if _NO_COPY_RANGE else None
    if pair is None or pair not in _NO_COPY_RANGE:
        try:
            while pos < end:
                n = os.copy_file_range(src_fd, dst_fd, min(end - pos, 1 << 30), pos, pos)
                if n == 0:
                    return pos
                pos += n
            return pos
        except OSError as exc:
            if exc.errno not in _COPY_RANGE_REFUSALS:
                raise
            _NO_COPY_RANGE.add((os.fstat(src_fd).st_dev, os.fstat(dst_fd).st_dev))
    while pos < end:
        data = os.pread(src_fd, min(end - pos, _CHUNK), pos)
        if not data:
            break
        written = 0
        while written < len(data):
            written += os.pwrite(dst_fd, data[written:] if written else data, pos + written)
        pos += len(data)
    return pos


def set_metadata(fd: int, st: os.stat_result, xattr_source: int | bytes, fmt: WhiteoutFormat,
                 follow: bool = False, owner_and_mode: bool = True) -> None:
    """Owner, mode (unless the file was created with them), xattrs (from ``xattr_source``)
    and times of the file open as ``fd``."""
    if owner_and_mode:
        os.fchown(fd, st.st_uid, st.st_gid)  # before the mode: it clears set-ID bits
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
    copy_xattrs(xattr_source, fd, fmt, follow)
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


class Copier:
    """Builds copies of lower entries in the work dir and renames them into the upper layer."""

    def __init__(self, upper: Layer, work: WorkDir, fmt: WhiteoutFormat, fsync: bool,
                 syncer: Syncer | None = None) -> None:
        self.upper = upper
        self.work = work
        self.fmt = fmt
        self.fsync = fsync
        """Copy-ups are made durable (else ``fsync=0``: never synced)."""
        self.syncer = syncer
        """Syncs the data of copied regular files after their rename (None: before it)."""
        self.umask = current_umask()
        """Read once: the daemon sets it (to 0) before it builds the union."""

    def copy(self, src: Layer, rel: bytes, st: os.stat_result,
             with_data: bool = True) -> Key:
        """Copy ``rel`` (whose lstat is ``st``) from layer ``src`` into the upper layer;
        returns the (device, inode) of the upper copy.

        The parent directory must already exist in the upper layer.
        """
        parent = at(split(rel)[0])
        times = os.stat(parent, dir_fd=self.upper.fd)
        tmp = self.work.temp_name()
        fd = -1
        slot: int | None = None
        try:
            if stat.S_ISREG(st.st_mode):
                key, fd = self._build_file(src, rel, st, tmp, with_data)
                slot = self._make_durable(fd, src, rel, st, with_data)
            else:
                key = self.build(src, rel, st, tmp, with_data)
            os.rename(tmp, rel, src_dir_fd=self.work.fd, dst_dir_fd=self.upper.fd)
        except BaseException:
            if slot is not None and self.syncer is not None:
                self.syncer.cancel(slot)
            if fd >= 0:
                os.close(fd)
            self.discard(tmp)
            raise
        try:
            # A copy-up is no change to the directory: keep its times, as the kernel does.
            os.utime(parent, ns=(times.st_atime_ns, times.st_mtime_ns), dir_fd=self.upper.fd)
        finally:
            if slot is not None and self.syncer is not None:
                self.syncer.submit(slot, fd, rel)
            if fd >= 0:
                os.close(fd)
        return key

    def _make_durable(self, fd: int, src: Layer, rel: bytes, st: os.stat_result,
                      with_data: bool) -> int | None:
        """Before the rename: sync the copy open as ``fd``, or (with a syncer) write its
        pending record and return the record's slot, for the worker to sync after the rename.
        """
        if not self.fsync:
            return None
        if self.syncer is not None:
            if not (with_data and st.st_size):
                return None  # no data that could be partial; its metadata is journaled
            slot = self.syncer.record(fd, rel, os.path.join(src.root, rel), st.st_size,
                                      st.st_mtime_ns)
            if slot is not None:
                return slot
        os.fsync(fd)
        return None

    def build(self, src: Layer, rel: bytes, st: os.stat_result, tmp: bytes,
              with_data: bool) -> Key:
        """Create ``tmp`` in the work dir as a copy of ``rel`` (metadata, and data if asked)."""
        mode = stat.S_IFMT(st.st_mode)
        wfd = self.work.fd
        if mode == stat.S_IFREG:
            key, fd = self._build_file(src, rel, st, tmp, with_data)
            try:
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            return key
        if mode == stat.S_IFDIR:
            os.mkdir(tmp, 0o700, dir_fd=wfd)
        elif mode == stat.S_IFLNK:
            os.symlink(src.readlink(rel), tmp, dir_fd=wfd)
        else:
            os.mknod(tmp, st.st_mode, st.st_rdev, dir_fd=wfd)
        self.finish(tmp, st, source=proc_path(src.fd, rel))
        done = os.stat(tmp, dir_fd=wfd, follow_symlinks=False)
        return done.st_dev, done.st_ino

    def _build_file(self, src: Layer, rel: bytes, st: os.stat_result, tmp: bytes,
                    with_data: bool) -> tuple[Key, int]:
        """A regular file, everything through its descriptor (returned open, not synced)."""
        mode = stat.S_IMODE(st.st_mode)
        # Owned as the daemon would create it and no mode bit the umask takes away: create
        # it with its final mode (the work dir is 0700: no one else sees it meanwhile).
        exact = (st.st_uid, st.st_gid) == self.work.creates_as and not mode & self.umask
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                      mode if exact else 0o600, dir_fd=self.work.fd)
        try:
            inp = src.open(rel, os.O_RDONLY) if with_data and st.st_size else None
            try:
                if inp is not None:
                    copy_data(inp, out, st)
                set_metadata(out, st, inp if inp is not None else proc_path(src.fd, rel),
                             self.fmt, owner_and_mode=not exact)
            finally:
                if inp is not None:
                    os.close(inp)
            done = os.fstat(out)
        except BaseException:
            os.close(out)
            raise
        return (done.st_dev, done.st_ino), out

    def finish(self, tmp: bytes, st: os.stat_result, source: bytes | None) -> None:
        """Owner, mode, xattrs and times of ``tmp`` from ``st`` (and ``source``'s xattrs)."""
        wfd = self.work.fd
        os.chown(tmp, st.st_uid, st.st_gid, dir_fd=wfd, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(tmp, stat.S_IMODE(st.st_mode), dir_fd=wfd)
        if source is not None:
            copy_xattrs(source, proc_path(wfd, tmp), self.fmt)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=wfd, follow_symlinks=False)

    def copy_anonymous(self, fd: int) -> int:
        """A nameless upper copy (O_TMPFILE in the work dir) of the file open as ``fd``, for an
        unlinked lower file that is changed through a handle still open on it."""
        source = b"/proc/self/fd/%d" % fd
        st = os.stat(source)
        out = os.open(self.work.path, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            inp = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            try:
                copy_data(inp, out, st)
            finally:
                os.close(inp)
            set_metadata(out, st, source, self.fmt, follow=True)
        except BaseException:
            os.close(out)
            raise
        return out

    def discard(self, tmp: bytes) -> None:
        """Remove a temporary that did not make it into the upper layer."""
        try:
            st = os.stat(tmp, dir_fd=self.work.fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(os.path.join(self.work.path, tmp), ignore_errors=True)
        else:
            os.unlink(tmp, dir_fd=self.work.fd)
