"""Layer tar → directory in the overlay format: the one place that applies untrusted tars.

Safety (strict): every path is cleaned (leading '/' dropped, '..' above the root refused); every
parent is opened with O_NOFOLLOW from the layer's root fd, so nothing is written through a
symlink; hardlinks must point at an entry already in this layer; overlay-private xattrs in the
tar are dropped; device nodes only when allowed.  Form (lenient): missing parent directories are
created, missing end-of-archive blocks are fine, duplicate entries are applied in order (later
wins; two directories merge).

OCI whiteouts become overlay whiteouts through ``unionfs.whiteout`` after the whole tar is read,
so tar order does not matter: ``.wh..wh..opq`` makes its directory opaque; ``.wh.X`` becomes a
char 0/0 ``X`` unless this layer itself provides ``X`` (a directory then becomes opaque, since a
whiteout only hides what lower layers provide), and never inside an opaque directory.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mounttool.digest import CHUNK, Digest, VerifyingReader
from mounttool.errors import CorruptLayerError, UnsafeLayerError
from mounttool.fsutil import (
    DIR_FLAGS,
    lower_dir_stat,
    remove,
    remove_tree,
    set_owner_xattrs,
    set_xattrs_at,
    set_xattrs_fd,
    syncfs,
    times,
)
from mounttool.tarstream import (
    LimitedReader,
    Tracker,
    clean_path,
    iter_members,
    open_layer_stream,
    read_member,
)
from mounttool.tarstream import show as _show
from unionfs.whiteout import (
    KERNEL_FORMAT,
    OPAQUE_MARKER,
    USERXATTR_FORMAT,
    WHITEOUT_PREFIX,
    WhiteoutFormat,
    make_whiteout,
    set_opaque,
)

log = logging.getLogger(__name__)
Parts = tuple[bytes, ...]
_META_PREFIX = WHITEOUT_PREFIX + WHITEOUT_PREFIX
PATH_LIMIT = 3584
"""Longest entry path accepted: unpacked trees stay walkable by path (PATH_MAX is 4096)."""
_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE,
          tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
          tarfile.FIFOTYPE}


def show(parts: Parts) -> str:
    return _show(b"/".join(parts)) or "/"


def default_format() -> WhiteoutFormat:
    """root: the kernel format; others: char 0/0 whiteouts (unprivileged since Linux 5.8) and
    ``user.overlay.opaque`` (mount with ``-o userxattr``)."""
    return KERNEL_FORMAT if os.geteuid() == 0 else USERXATTR_FORMAT


@dataclass(frozen=True, slots=True)
class UnpackOptions:
    same_owner: bool = field(default_factory=lambda: os.geteuid() == 0)
    allow_devices: bool = field(default_factory=lambda: os.geteuid() == 0)
    whiteout_format: WhiteoutFormat = field(default_factory=lambda: default_format())
    max_entries: int | None = None
    max_bytes: int | None = None
    """Limit on the uncompressed tar size (a guard against tar bombs)."""
    lowers: tuple[Path, ...] = ()
    """Unpacked lower layers, top first: a parent directory missing from the tar takes its
    owner, mode and mtime from the topmost lower that has it (else root 0755)."""


@dataclass(frozen=True, slots=True)
class UnpackResult:
    diff_id: Digest
    size: int
    entries: int
    compression: str


@dataclass(slots=True)
class _Whiteout:
    parent: Parts
    name: bytes
    uid: int
    gid: int
    times: tuple[int, int]


class _Unpacker:
    """Applies tar entries below one root directory fd."""

    def __init__(self, root_fd: int, root_parent_fd: int, root_name: bytes,
                 opts: UnpackOptions) -> None:
        self.root_fd = root_fd
        self.root_parent_fd = root_parent_fd
        self.root_name = root_name
        self.opts = opts
        self.dirs: dict[Parts, tarfile.TarInfo] = {}
        self.whiteouts: list[_Whiteout] = []
        self.opaque: set[Parts] = set()
        self.entries = 0
        self._last: tuple[Parts, int] | None = None

    # -- walking ------------------------------------------------------------------------------
    def open_dir(self, parts: Parts, create: bool) -> int:
        """An fd for the directory ``parts``, opened component by component with O_NOFOLLOW.

        The last directory reached is kept open and the walk starts from it: down for entries
        of the same directory, up through ".." (our own private tree) for its ancestors.
        """
        fd, start = self._from_last(parts)
        try:
            for i in range(start, len(parts)):
                nfd = self._open_child(fd, parts[i], parts[:i + 1], create)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        self.forget()
        self._last = (parts, os.dup(fd))
        return fd

    def _from_last(self, parts: Parts) -> tuple[int, int]:
        """A starting fd (owned by the caller) and how many components of ``parts`` it is."""
        if self._last is None:
            return os.dup(self.root_fd), 0
        last, last_fd = self._last
        common = 0
        while common < min(len(last), len(parts)) and last[common] == parts[common]:
            common += 1
        if len(last) - common > common:
            return os.dup(self.root_fd), 0  # cheaper from the root
        fd = os.dup(last_fd)
        for _ in range(len(last) - common):
            nfd = os.open(b"..", DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd, common

    def forget(self) -> None:
        """Drop the cached directory fd (a directory was removed or replaced)."""
        if self._last is not None:
            os.close(self._last[1])
            self._last = None

    def _open_child(self, fd: int, comp: bytes, where: Parts, create: bool) -> int:
        try:
            return os.open(comp, DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(comp, 0o755, dir_fd=fd)
            nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            self._implicit_dir(nfd, where)
            return nfd
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            if stat.S_ISLNK(os.lstat(comp, dir_fd=fd).st_mode):
                raise UnsafeLayerError(f"layer entry below {show(where)!r}: it is a symlink; "
                                       "refusing to write through it") from None
            raise CorruptLayerError(f"layer entry below {show(where)!r}: it is not a "
                                    "directory") from None

    def _implicit_dir(self, fd: int, parts: Parts) -> None:
        """A directory the tar did not describe: like the lower layer's, else root 0755 at
        time 0 (deterministic: the same tar always unpacks to the same tree)."""
        st = lower_dir_stat(self.opts.lowers, parts)
        ti = tarfile.TarInfo(b"/".join(parts).decode("utf-8", "surrogateescape"))
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
        if st is not None:
            if self.opts.same_owner:
                os.fchown(fd, st.st_uid, st.st_gid)
            ti.mode, ti.mtime = stat.S_IMODE(st.st_mode), st.st_mtime_ns / 1e9
        os.fchmod(fd, ti.mode)
        self.dirs.setdefault(parts, ti)

    # -- entries -------------------------------------------------------------------------------
    def apply(self, ti: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        self.entries += 1
        if self.opts.max_entries is not None and self.entries > self.opts.max_entries:
            raise CorruptLayerError(f"layer has more than {self.opts.max_entries} entries")
        raw = os.fsencode(ti.name)
        if len(raw) > PATH_LIMIT:
            raise CorruptLayerError(f"layer entry {_show(raw[:60])!r}...: path longer than "
                                    f"{PATH_LIMIT} bytes")
        parts = clean_path(raw)
        if ti.type not in _TYPES:
            raise CorruptLayerError(f"layer entry {show(parts)!r}: unsupported tar entry type "
                                    f"{ti.type!r}")
        if not parts:
            if not ti.isdir():
                raise CorruptLayerError("layer entry for the root is not a directory")
            set_owner_xattrs(self.root_fd, None, ti, self.opts.same_owner)
            self.dirs[()] = ti
            return
        if any(c.startswith(_META_PREFIX) for c in parts) and parts[-1] != OPAQUE_MARKER:
            log.debug("skipping whiteout metadata %s (aufs-era layers)", show(parts))
            return  # .wh..wh.plnk, .wh..wh.aufs ...: skipped, as containerd does
        for comp in parts[:-1]:
            if comp.startswith(WHITEOUT_PREFIX):
                raise CorruptLayerError(f"layer entry {show(parts)!r}: a whiteout marker "
                                        "cannot be a directory")
        if parts[-1].startswith(WHITEOUT_PREFIX):
            self._record_whiteout(parts, ti)
            return
        pfd = self.open_dir(parts[:-1], create=True)
        try:
            self._apply_at(pfd, parts, ti, tar)
        finally:
            os.close(pfd)

    def _record_whiteout(self, parts: Parts, ti: tarfile.TarInfo) -> None:
        if ti.isdir():
            raise CorruptLayerError(f"layer entry {show(parts)!r}: a whiteout must not be a "
                                    "directory")
        if parts[-1] == OPAQUE_MARKER:
            self.opaque.add(parts[:-1])
            return
        hidden = parts[-1][len(WHITEOUT_PREFIX):]
        if hidden in (b"", b".", b".."):
            raise CorruptLayerError(f"layer entry {show(parts)!r}: invalid whiteout name")
        self.whiteouts.append(_Whiteout(parts[:-1], hidden, ti.uid, ti.gid, times(ti)))

    def _apply_at(self, pfd: int, parts: Parts, ti: tarfile.TarInfo,
                  tar: tarfile.TarFile) -> None:
        name = parts[-1]
        try:
            old = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            old = None
        if old is not None:
            if ti.isdir() and stat.S_ISDIR(old.st_mode):
                set_owner_xattrs(pfd, name, ti, self.opts.same_owner)
                self.dirs[parts] = ti
                return
            if stat.S_ISDIR(old.st_mode):
                self.forget()
            remove(pfd, name, old)
        if ti.isdir():
            os.mkdir(name, 0o700, dir_fd=pfd)
            set_owner_xattrs(pfd, name, ti, self.opts.same_owner)
            self.dirs[parts] = ti
        elif ti.islnk():
            self._hardlink(pfd, parts, ti)
        elif ti.isreg():
            self._regular(pfd, parts, ti, tar)
        else:
            self._special(pfd, parts, ti)

    def _regular(self, pfd: int, parts: Parts, ti: tarfile.TarInfo,
                 tar: tarfile.TarFile) -> None:
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        try:
            src = read_member(tar, ti, "layer")
            try:
                while chunk := src.read(CHUNK):
                    os.write(fd, chunk)
            except tarfile.ReadError as exc:
                raise CorruptLayerError(f"layer: truncated tar ({exc} in "
                                        f"{show(parts)!r})") from None
            if self.opts.same_owner:
                os.fchown(fd, ti.uid, ti.gid)
            os.fchmod(fd, ti.mode & 0o7777)
            set_xattrs_fd(fd, ti)
            os.utime(fd, ns=times(ti))
        finally:
            os.close(fd)

    def _special(self, pfd: int, parts: Parts, ti: tarfile.TarInfo) -> None:
        name = parts[-1]
        if ti.issym():
            os.symlink(os.fsencode(ti.linkname), name, dir_fd=pfd)
        elif ti.isfifo():
            os.mkfifo(name, 0o600, dir_fd=pfd)
        else:
            if not self.opts.allow_devices:  # as moby/containerd do without CAP_MKNOD
                log.warning("skipping device node %s: not allowed here", show(parts))
                return
            if ti.ischr() and ti.devmajor == 0 and ti.devminor == 0:
                raise CorruptLayerError(f"layer entry {show(parts)!r}: a char device 0/0 is "
                                        "an overlay whiteout; OCI layers use .wh. files")
            kind = stat.S_IFCHR if ti.ischr() else stat.S_IFBLK
            os.mknod(name, kind | 0o600, os.makedev(ti.devmajor, ti.devminor), dir_fd=pfd)
        if self.opts.same_owner:
            os.chown(name, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
        if not ti.issym():
            os.chmod(name, ti.mode & 0o7777, dir_fd=pfd)
        set_xattrs_at(pfd, name, ti)
        os.utime(name, ns=times(ti), dir_fd=pfd, follow_symlinks=False)

    def _hardlink(self, pfd: int, parts: Parts, ti: tarfile.TarInfo) -> None:
        target = clean_path(os.fsencode(ti.linkname))
        if not target or target == parts:
            raise UnsafeLayerError(f"layer hardlink {show(parts)!r} → {ti.linkname!r}: "
                                   "invalid target")
        try:
            tfd = self.open_dir(target[:-1], create=False)
        except (FileNotFoundError, CorruptLayerError):
            raise UnsafeLayerError(f"layer hardlink {show(parts)!r} → {show(target)!r}: the "
                                   "target is not in this layer") from None
        try:
            try:
                st = os.lstat(target[-1], dir_fd=tfd)
            except FileNotFoundError:
                raise UnsafeLayerError(f"layer hardlink {show(parts)!r} → {show(target)!r}: "
                                       "the target is not in this layer") from None
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeLayerError(f"layer hardlink {show(parts)!r} → {show(target)!r}: "
                                       "the target is a directory")
            os.link(target[-1], parts[-1], src_dir_fd=tfd, dst_dir_fd=pfd,
                    follow_symlinks=False)
        finally:
            os.close(tfd)

    # -- the end -------------------------------------------------------------------------------
    def finish(self) -> None:
        """Whiteouts and opaque markers (order-independent), then directory modes and times."""
        fmt = self.opts.whiteout_format
        for parts in sorted(self.opaque, key=len):
            self._make_opaque(parts)
        for wh in sorted(self.whiteouts, key=lambda w: len(w.parent)):
            self._place_whiteout(wh, fmt)
        for parts in sorted(self.dirs, reverse=True):  # children first, neighbours together
            self._finish_dir(parts, self.dirs[parts])

    def _place_whiteout(self, wh: _Whiteout, fmt: WhiteoutFormat) -> None:
        if any(wh.parent[:i] in self.opaque for i in range(len(wh.parent) + 1)):
            return  # already hidden; the kernel treats a whiteout in an opaque dir as corrupt
        try:
            pfd = self.open_dir(wh.parent, create=True)
        except (CorruptLayerError, UnsafeLayerError):
            return  # below a non-directory of this layer, which hides all of it already
        try:
            try:
                st = os.lstat(wh.name, dir_fd=pfd)
            except FileNotFoundError:
                st = None
            if st is None:
                make_whiteout(pfd, wh.name, fmt)
                if self.opts.same_owner:
                    os.chown(wh.name, wh.uid, wh.gid, dir_fd=pfd, follow_symlinks=False)
                os.utime(wh.name, ns=wh.times, dir_fd=pfd, follow_symlinks=False)
            elif stat.S_ISDIR(st.st_mode):
                set_opaque(pfd, wh.name, fmt)
                self.opaque.add((*wh.parent, wh.name))
        finally:
            os.close(pfd)

    def _make_opaque(self, parts: Parts) -> None:
        # set_opaque goes through the parent: the xattr calls cannot take a dir fd itself.
        if not parts:
            set_opaque(self.root_parent_fd, self.root_name, self.opts.whiteout_format)
            return
        os.close(self.open_dir(parts, create=True))  # exists, and is a real directory
        pfd = self.open_dir(parts[:-1], create=False)
        try:
            set_opaque(pfd, parts[-1], self.opts.whiteout_format)
        finally:
            os.close(pfd)

    def _finish_dir(self, parts: Parts, ti: tarfile.TarInfo) -> None:
        try:
            fd = self.open_dir(parts, create=False)
        except (FileNotFoundError, CorruptLayerError):
            return  # replaced by a later non-directory entry
        try:
            os.fchmod(fd, ti.mode & 0o7777)
            os.utime(fd, ns=times(ti))
        finally:
            os.close(fd)


_DATA_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EINVAL, errno.ERANGE, errno.ENOENT,
                          errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EMLINK,
                          errno.EOVERFLOW, errno.E2BIG})


@contextlib.contextmanager
def _entry_errors(name: str) -> Iterator[None]:
    """What a malformed entry makes the OS refuse becomes a CorruptLayerError naming it."""
    try:
        yield
    except (OverflowError, ValueError) as exc:
        raise CorruptLayerError(f"layer entry {name!r}: invalid value ({exc})") from None
    except OSError as exc:
        if exc.errno not in _DATA_ERRNOS:
            raise  # the machine's problem (no space, I/O error...), not the layer's
        raise CorruptLayerError(f"layer entry {name!r}: {exc.strerror}") from None


def unpack_into(src: BinaryIO, dest: Path, expected: Digest | None = None,
                opts: UnpackOptions | None = None, what: str = "layer") -> UnpackResult:
    """Apply a layer blob (plain, gzip or zstd tar) to the empty directory ``dest``.

    The uncompressed stream is hashed as it is read and checked against ``expected`` (the
    diff_id) once the tar is done; on any error ``dest`` is left partially written.
    """
    opts = opts or UnpackOptions()
    stream, compression = open_layer_stream(src, what)
    verifier = VerifyingReader(stream, expected, None, f"{what} (uncompressed)")
    limited = LimitedReader(verifier, opts.max_bytes, what)
    tracker = Tracker(limited)
    root_fd = os.open(dest, DIR_FLAGS)
    parent_fd = os.open(dest.parent, DIR_FLAGS)
    try:
        unpacker: _Unpacker | None = None
        unpacker = _Unpacker(root_fd, parent_fd, os.fsencode(dest.name), opts)
        unpacker._implicit_dir(root_fd, ())
        for ti, tar in iter_members(tracker, what):
            with _entry_errors(ti.name):
                unpacker.apply(ti, tar)
        diff_id = verifier.verify()
        with _entry_errors("(directory attributes and whiteouts)"):
            unpacker.finish()
    finally:
        if unpacker is not None:
            unpacker.forget()
        os.close(root_fd)
        os.close(parent_fd)
    return UnpackResult(diff_id, verifier.size, unpacker.entries, compression)


def unpack_layer(src: BinaryIO, dest: Path, expected: Digest | None = None,
                 opts: UnpackOptions | None = None, what: str = "layer") -> UnpackResult:
    """Unpack into a temp dir beside ``dest`` and rename it into place only on success."""
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        os.chmod(tmp, 0o755)
        result = unpack_into(src, tmp, expected, opts, what)
        syncfs(tmp)
        os.rename(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(tmp)
        raise
    return result
