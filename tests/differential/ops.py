"""The operations a sequence is made of: one small frozen dataclass per kind, each able to run
itself against a mounted tree and to print itself readably (the reproducer format).

``op.run(ctx)`` returns an :data:`Outcome`: ``(errno name or None, value)``.  Values are what
the operation observed (a content hash, an fstat summary) so reads are compared too.  Paths are
relative to the tree under test; handles (``h0``..) are per-side open fds that live across
operations, so "open, unlink, write, read" and "open, copy-up elsewhere, read" both happen.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import platform
import stat
import threading
from dataclasses import dataclass, field

Outcome = tuple[str | None, object]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
RENAME_FLAGS = {"": 0, "NOREPLACE": 1, "EXCHANGE": 2}
OPEN_FLAGS = {
    "RDONLY": os.O_RDONLY, "WRONLY": os.O_WRONLY, "RDWR": os.O_RDWR, "CREAT": os.O_CREAT,
    "EXCL": os.O_EXCL, "TRUNC": os.O_TRUNC, "APPEND": os.O_APPEND, "NOFOLLOW": os.O_NOFOLLOW,
    "DIRECTORY": os.O_DIRECTORY,
}


class Mode(int):
    """An int that prints in octal."""

    def __repr__(self) -> str:
        return oct(self)


class Data(bytes):
    """Bytes that print as their length and a short hash."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes {digest(self)}>"


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=6).hexdigest()


def open_flags(text: str) -> int:
    """Symbolic flags -> int; O_NONBLOCK is always added so a fifo can never block a side."""
    value = os.O_NONBLOCK
    for part in text.split("|"):
        value |= OPEN_FLAGS[part]
    return value


@dataclass
class Context:
    """One side's view while a sequence runs: the tree root and its open handles."""

    root: str
    handles: dict[int, int] = field(default_factory=dict)

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def close_all(self) -> None:
        for fd in self.handles.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.handles.clear()


@dataclass(frozen=True)
class Op:
    """Base: ``run`` wraps ``apply`` and turns an OSError into its errno name."""

    def run(self, ctx: Context) -> Outcome:
        try:
            return None, self.apply(ctx)
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc.errno)), None

    def apply(self, ctx: Context) -> object:
        raise NotImplementedError

    def __str__(self) -> str:
        return repr(self)


def read_all(fd: int) -> bytes:
    parts = []
    offset = 0
    while chunk := os.pread(fd, 1 << 17, offset):
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


@dataclass(frozen=True)
class Create(Op):
    path: str
    mode: Mode
    flags: str
    data: Data

    def apply(self, ctx: Context) -> object:
        fd = os.open(ctx.path(self.path), open_flags(self.flags), self.mode)
        try:
            return os.write(fd, self.data) if self.data else None
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Write(Op):
    path: str
    offset: int
    data: Data
    flags: str = "WRONLY"

    def apply(self, ctx: Context) -> object:
        fd = os.open(ctx.path(self.path), open_flags(self.flags))
        try:
            if "APPEND" in self.flags:
                return os.write(fd, self.data)
            return os.pwrite(fd, self.data, self.offset)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Truncate(Op):
    path: str
    size: int

    def apply(self, ctx: Context) -> object:
        os.truncate(ctx.path(self.path), self.size)
        return None


@dataclass(frozen=True)
class Read(Op):
    path: str

    def apply(self, ctx: Context) -> object:
        fd = os.open(ctx.path(self.path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return "not-regular"
            return digest(read_all(fd))
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Mkdir(Op):
    path: str
    mode: Mode

    def apply(self, ctx: Context) -> object:
        os.mkdir(ctx.path(self.path), self.mode)
        return None


@dataclass(frozen=True)
class Rmdir(Op):
    path: str

    def apply(self, ctx: Context) -> object:
        os.rmdir(ctx.path(self.path))
        return None


@dataclass(frozen=True)
class Unlink(Op):
    path: str

    def apply(self, ctx: Context) -> object:
        os.unlink(ctx.path(self.path))
        return None


@dataclass(frozen=True)
class Rename(Op):
    src: str
    dst: str
    flags: str = ""

    def apply(self, ctx: Context) -> object:
        if not self.flags:
            os.rename(ctx.path(self.src), ctx.path(self.dst))
            return None
        at_fdcwd = -100
        src, dst = os.fsencode(ctx.path(self.src)), os.fsencode(ctx.path(self.dst))
        if _libc.renameat2(at_fdcwd, src, at_fdcwd, dst, RENAME_FLAGS[self.flags]) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return None


@dataclass(frozen=True)
class Link(Op):
    src: str
    dst: str

    def apply(self, ctx: Context) -> object:
        os.link(ctx.path(self.src), ctx.path(self.dst), follow_symlinks=False)
        return None


@dataclass(frozen=True)
class MakeSymlink(Op):
    target: str
    path: str

    def apply(self, ctx: Context) -> object:
        os.symlink(self.target, ctx.path(self.path))
        return None


@dataclass(frozen=True)
class Chmod(Op):
    path: str
    mode: Mode

    def apply(self, ctx: Context) -> object:
        os.chmod(ctx.path(self.path), self.mode)
        return None


@dataclass(frozen=True)
class Chown(Op):
    path: str
    uid: int
    gid: int
    follow: bool

    def apply(self, ctx: Context) -> object:
        os.chown(ctx.path(self.path), self.uid, self.gid, follow_symlinks=self.follow)
        return None


@dataclass(frozen=True)
class Utimes(Op):
    """``mtime_ns`` -1 means "now" (``utimensat(..., NULL)``)."""

    path: str
    mtime_ns: int
    follow: bool

    def apply(self, ctx: Context) -> object:
        times = None if self.mtime_ns < 0 else (self.mtime_ns, self.mtime_ns)
        if times is None:
            os.utime(ctx.path(self.path), follow_symlinks=self.follow)
        else:
            os.utime(ctx.path(self.path), ns=times, follow_symlinks=self.follow)
        return None


@dataclass(frozen=True)
class SetXattr(Op):
    """setxattr; ``CREATE``/``REPLACE`` are checked here, in user space, as pyfuse3 does.

    A flagged setxattr that fails makes kernel overlayfs copy the file up first, while pyfuse3
    answers the flags before unionfs sees the call (a known difference, in the README). Checking
    the flags here keeps that documented difference out of the comparison; every other effect
    of the call is still compared.
    """

    path: str
    name: str
    value: Data
    flags: str = ""

    def apply(self, ctx: Context) -> object:
        path = ctx.path(self.path)
        if self.flags:
            try:
                os.getxattr(path, self.name, follow_symlinks=False)
                exists = True
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
                exists = False
            if self.flags == "CREATE" and exists:
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), self.path)
            if self.flags == "REPLACE" and not exists:
                raise OSError(errno.ENODATA, os.strerror(errno.ENODATA), self.path)
        os.setxattr(path, self.name, self.value, follow_symlinks=False)
        return None


@dataclass(frozen=True)
class RemoveXattr(Op):
    path: str
    name: str

    def apply(self, ctx: Context) -> object:
        os.removexattr(ctx.path(self.path), self.name, follow_symlinks=False)
        return None


@dataclass(frozen=True)
class Mknod(Op):
    """A fifo (``kind="fifo"``), a socket inode (``"sock"``) or a character device
    ``major:minor`` (``"chr 0:0"``...)."""

    path: str
    mode: Mode
    kind: str = "fifo"

    def apply(self, ctx: Context) -> object:
        if self.kind == "fifo":
            os.mkfifo(ctx.path(self.path), self.mode)
        elif self.kind == "sock":
            os.mknod(ctx.path(self.path), stat.S_IFSOCK | self.mode)
        else:
            major, minor = (int(x) for x in self.kind.split()[1].split(":"))
            os.mknod(ctx.path(self.path), stat.S_IFCHR | self.mode, os.makedev(major, minor))
        return None


@dataclass(frozen=True)
class Open(Op):
    """Open ``path`` as handle ``h`` (kept open across later operations)."""

    h: int
    path: str
    flags: str

    def apply(self, ctx: Context) -> object:
        if self.h in ctx.handles:
            os.close(ctx.handles.pop(self.h))
        ctx.handles[self.h] = os.open(ctx.path(self.path), open_flags(self.flags), 0o644)
        return None


def handle(ctx: Context, h: int) -> int:
    if h not in ctx.handles:
        raise OSError(errno.EBADF, "handle not open")
    return ctx.handles[h]


@dataclass(frozen=True)
class HWrite(Op):
    h: int
    offset: int
    data: Data

    def apply(self, ctx: Context) -> object:
        return os.pwrite(handle(ctx, self.h), self.data, self.offset)


@dataclass(frozen=True)
class HRead(Op):
    h: int

    def apply(self, ctx: Context) -> object:
        return digest(read_all(handle(ctx, self.h)))


@dataclass(frozen=True)
class HStat(Op):
    h: int

    def apply(self, ctx: Context) -> object:
        st = os.fstat(handle(ctx, self.h))
        return (oct(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_nlink)


@dataclass(frozen=True)
class HTruncate(Op):
    h: int
    size: int

    def apply(self, ctx: Context) -> object:
        os.ftruncate(handle(ctx, self.h), self.size)
        return None


@dataclass(frozen=True)
class Close(Op):
    h: int

    def apply(self, ctx: Context) -> object:
        os.close(handle(ctx, self.h))
        del ctx.handles[self.h]
        return None


@dataclass(frozen=True)
class UnlinkedRW(Op):
    """open O_RDWR, unlink, write, read back, fstat, close: an unlinked open file still works."""

    path: str
    offset: int
    data: Data

    def apply(self, ctx: Context) -> object:
        fd = os.open(ctx.path(self.path), os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            os.unlink(ctx.path(self.path))
            os.pwrite(fd, self.data, self.offset)
            st = os.fstat(fd)
            return digest(read_all(fd)), st.st_size, st.st_nlink
        finally:
            os.close(fd)


# raw syscall numbers (setgroups, setresgid, setresuid): unlike glibc's wrappers they change
# the calling thread's credentials only, so an op can run as a user in a short-lived thread.
_CRED_SYSCALLS = {"x86_64": (116, 119, 117), "aarch64": (159, 149, 147)}
CLONE_FS = 0x200


def _become(uid: int, gid: int) -> None:
    nr_groups, nr_gid, nr_uid = _CRED_SYSCALLS[platform.machine()]
    for nr, args in ((nr_groups, (0, None)), (nr_gid, (gid,) * 3), (nr_uid, (uid,) * 3)):
        if _libc.syscall(nr, *args) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))


@dataclass(frozen=True)
class AsUser(Op):
    """Run a path operation as ``uid:gid`` (no supplementary groups), so the filesystem's
    permission checks, new-file ownership and setuid clearing get exercised.

    It runs in a thread of its own that first unshares its cwd (CLONE_FS), enters the tree as
    root (the mount's parents may be 0700) and then drops its own credentials only."""

    uid: int
    gid: int
    op: Op

    def run(self, ctx: Context) -> Outcome:
        result: list[Outcome] = []

        def work() -> None:
            if _libc.unshare(CLONE_FS) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_FS)")
            os.chdir(ctx.root)
            _become(self.uid, self.gid)
            result.append(self.op.run(Context(".")))

        thread = threading.Thread(target=work, name=f"as-{self.uid}")
        thread.start()
        thread.join()
        return result[0] if result else ("as-user-failed", None)
