"""Seeded generator of operation sequences aimed at paths that exist or almost exist.

The path pool starts as every path of every layer (visible or hidden by a whiteout, an opaque
directory or a non-directory above) and grows with every name an operation creates; new names
are made under directories of the pool.  So most operations hit something real (copy-up,
whiteouts, renames over existing targets) and the rest probe ENOENT/EEXIST/ENOTDIR paths.  The
sequence is fixed data: it never depends on what a mount answered, so it can be shrunk.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .model import BASE_TIME_NS, DIR_MODES, FILE_MODES, OWNERS, Stack, join, merged_view
from .ops import (
    AsUser,
    Chmod,
    Chown,
    Close,
    Create,
    Data,
    HRead,
    HStat,
    HTruncate,
    HWrite,
    Link,
    MakeSymlink,
    Mkdir,
    Mknod,
    Mode,
    Op,
    Open,
    Read,
    RemoveXattr,
    Rename,
    Rmdir,
    SetXattr,
    Truncate,
    Unlink,
    UnlinkedRW,
    Utimes,
    Write,
)

OFFSETS = (0, 0, 1, 100, 4095, 4096, 5000, 65536, 131072, 200000)
SIZES = (0, 0, 1, 10, 4096, 5000, 100000)
XATTRS = ("user.k1", "user.k1", "user.k2", "user.new", "trusted.t1", "user.overlay.x",
          "trusted.overlay.opaque", "trusted.overlay.foo")
HANDLES = 3
USERS = ((1000, 1000), (1234, 5678), (1000, 100))
PATH_OPS = (Create, Write, Truncate, Read, Mkdir, Rmdir, Unlink, Rename, Link, MakeSymlink, Chmod,
            Chown, Utimes, SetXattr, RemoveXattr, Mknod, UnlinkedRW)


class OpGenerator:
    """``OpGenerator(rng, stack).sequence(n)`` -> a list of n operations."""

    def __init__(self, rng: random.Random, stack: Stack) -> None:
        self.rng = rng
        layers = [stack.upper, *stack.lowers] if stack.upper else list(stack.lowers)
        view = merged_view(layers)
        hidden = {p for layer in (*stack.lowers, stack.upper) for p in layer}
        self.visible = sorted(view)
        self.hidden = sorted(hidden - set(view))
        self.dirs = [""] + [p for p in self.visible if view[p] == "d"]
        self.files = [p for p in self.visible if view[p] == "f"]
        self.counter = 0
        self.open_handles: set[int] = set()
        kinds: list[tuple[int, Callable[[], Op]]] = [
            (8, self.create), (8, self.write), (4, self.append), (4, self.truncate),
            (3, self.read), (5, self.mkdir), (5, self.rmdir), (7, self.unlink),
            (10, self.rename), (4, self.link), (3, self.symlink), (4, self.chmod),
            (4, self.chown), (4, self.utimes), (5, self.setxattr), (3, self.removexattr),
            (2, self.mkfifo), (1, self.mknod), (5, self.open), (3, self.hwrite), (3, self.hread),
            (2, self.hstat), (1, self.htruncate), (1, self.close), (2, self.unlinked_rw),
        ]
        self.makers = [maker for weight, maker in kinds for _ in range(weight)]

    def sequence(self, count: int) -> list[Op]:
        """``count`` ops; a fifth of the path operations run as an unprivileged user."""
        ops = []
        for _ in range(count):
            op = self.rng.choice(self.makers)()
            if isinstance(op, PATH_OPS) and self.rng.random() < 0.2:
                op = AsUser(*self.rng.choice(USERS), op)
            ops.append(op)
        return ops

    # -- paths -------------------------------------------------------------------------------
    def existing(self) -> str:
        rng = self.rng
        if self.hidden and rng.random() < 0.15:
            return rng.choice(self.hidden)
        if not self.visible or rng.random() < 0.05:
            return self.fresh(remember=False)
        if rng.random() < 0.03:
            return ""  # the tree's root: a merged directory
        return rng.choice(self.visible)

    def fresh(self, *, remember: bool = True, is_dir: bool = False) -> str:
        rng = self.rng
        if rng.random() < 0.03:
            name = rng.choice(("L" * 255, "T" * 256))  # the longest name, and one too long
        elif rng.random() < 0.5:
            name = rng.choice(("a", "b", "c", "d", "x", ".wh.b"))
        else:
            self.counter += 1
            name = f"n{self.counter}"
        path = join(rng.choice(self.dirs), name)
        if remember and path not in self.visible:
            self.visible.append(path)
            if is_dir:
                self.dirs.append(path)
        return path

    def target(self, *, is_dir: bool = False) -> str:
        if self.rng.random() < 0.35:
            return self.existing()
        return self.fresh(is_dir=is_dir)

    def data(self, sizes: tuple[int, ...] = (0, 1, 10, 4096, 5000)) -> Data:
        return Data(self.rng.randbytes(self.rng.choice(sizes)))

    def handle(self) -> int:
        """Mostly a handle an earlier Open was meant to open (it may have failed)."""
        if self.open_handles and self.rng.random() < 0.9:
            return self.rng.choice(sorted(self.open_handles))
        return self.rng.randrange(HANDLES)

    def mtime(self) -> int:
        if self.rng.random() < 0.2:
            return -1
        return BASE_TIME_NS + self.rng.randrange(10**17)

    # -- makers ------------------------------------------------------------------------------
    def create(self) -> Op:
        flags = self.rng.choice(("WRONLY|CREAT", "WRONLY|CREAT|EXCL", "RDWR|CREAT|TRUNC",
                                 "WRONLY|CREAT|NOFOLLOW"))
        return Create(self.target(), Mode(self.rng.choice(FILE_MODES)), flags, self.data())

    def write(self) -> Op:
        flags = self.rng.choice(("WRONLY", "WRONLY", "RDWR", "WRONLY|TRUNC"))
        return Write(self.existing(), self.rng.choice(OFFSETS), self.data(), flags)

    def append(self) -> Op:
        return Write(self.existing(), 0, self.data(), "WRONLY|APPEND")

    def truncate(self) -> Op:
        return Truncate(self.existing(), self.rng.choice(SIZES))

    def read(self) -> Op:
        return Read(self.existing())

    def mkdir(self) -> Op:
        return Mkdir(self.target(is_dir=True), Mode(self.rng.choice(DIR_MODES)))

    def rmdir(self) -> Op:
        return Rmdir(self.rng.choice(self.dirs[1:] or [self.existing()]))

    def unlink(self) -> Op:
        return Unlink(self.existing())

    def rename(self) -> Op:
        rng = self.rng
        src = rng.choice(self.dirs[1:]) if len(self.dirs) > 1 and rng.random() < 0.3 \
            else self.existing()
        flags = rng.choice(("", "", "", "", "NOREPLACE", "EXCHANGE"))
        return Rename(src, self.target(is_dir=src in self.dirs), flags)

    def link(self) -> Op:
        return Link(self.existing(), self.target())

    def symlink(self) -> Op:
        dest = self.rng.choice(self.visible) if self.visible else "a"
        if self.rng.random() < 0.3:
            dest += "/a"
        return MakeSymlink(dest, self.target())

    def chmod(self) -> Op:
        modes = FILE_MODES + DIR_MODES
        return Chmod(self.existing(), Mode(self.rng.choice(modes)))

    def chown(self) -> Op:
        uid, gid = self.rng.choice((*OWNERS, (-1, 1000), (2000, -1)))
        return Chown(self.existing(), uid, gid, self.rng.random() < 0.7)

    def utimes(self) -> Op:
        return Utimes(self.existing(), self.mtime(), self.rng.random() < 0.7)

    def setxattr(self) -> Op:
        flags = self.rng.choice(("", "", "CREATE", "REPLACE"))
        value = self.data((0, 1, 10, 300))
        return SetXattr(self.existing(), self.rng.choice(XATTRS), value, flags)

    def removexattr(self) -> Op:
        return RemoveXattr(self.existing(), self.rng.choice(XATTRS))

    def mkfifo(self) -> Op:
        return Mknod(self.target(), Mode(self.rng.choice((0o644, 0o600, 0o4644))))

    def mknod(self) -> Op:
        kind = self.rng.choice(("chr 0:0", "chr 1:3", "sock"))
        return Mknod(self.target(), Mode(0o644), kind)

    def open(self) -> Op:
        flags = self.rng.choice(("RDONLY", "RDWR", "WRONLY", "RDWR|CREAT", "RDWR|TRUNC",
                                 "WRONLY|APPEND", "RDONLY|DIRECTORY"))
        if "CREAT" in flags:
            path = self.target()
        elif self.files and self.rng.random() < 0.7:
            path = self.rng.choice(self.files)
        else:
            path = self.existing()
        h = self.rng.randrange(HANDLES)
        self.open_handles.add(h)
        return Open(h, path, flags)

    def hwrite(self) -> Op:
        if not self.open_handles:
            return self.open()
        return HWrite(self.handle(), self.rng.choice(OFFSETS), self.data())

    def hread(self) -> Op:
        if not self.open_handles:
            return self.open()
        return HRead(self.handle())

    def hstat(self) -> Op:
        if not self.open_handles:
            return self.open()
        return HStat(self.handle())

    def htruncate(self) -> Op:
        if not self.open_handles:
            return self.open()
        return HTruncate(self.handle(), self.rng.choice(SIZES))

    def close(self) -> Op:
        if not self.open_handles:
            return self.open()
        h = self.handle()
        self.open_handles.discard(h)
        return Close(h)

    def unlinked_rw(self) -> Op:
        return UnlinkedRW(self.existing(), self.rng.choice(OFFSETS), self.data())
