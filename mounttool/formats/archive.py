"""Read-only file access into an image archive (tar, maybe compressed) or a layout directory.

``ArchiveFS`` gives the format readers ``exists``/``read``/``open`` on archive-relative paths.
Paths are normalised and never leave the archive: absolute paths and '..' are refused.  A
compressed archive, or one on a pipe, is first spooled to an uncompressed file in the store's
staging dir so that members can be read in any order.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from mounttool.errors import CorruptLayerError, InvalidImageError, MountToolError
from mounttool.tarstream import open_layer_stream

MAX_JSON = 64 << 20


def norm(path: str) -> str:
    parts = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            raise InvalidImageError(f"archive path {path!r} leaves the archive")
        parts.append(comp)
    if not parts or path.startswith("/"):
        raise InvalidImageError(f"archive path {path!r} is not a relative path")
    return "/".join(parts)


class ArchiveFS(Protocol):
    name: str

    def exists(self, path: str) -> bool: ...

    def open(self, path: str) -> BinaryIO: ...

    def size(self, path: str) -> int: ...

    def close(self) -> None: ...


def read_small(fs: ArchiveFS, path: str) -> bytes:
    """A JSON-sized member, with a clear error when it is missing or absurdly large."""
    if not fs.exists(path):
        raise InvalidImageError(f"{fs.name}: {path} is missing")
    if fs.size(path) > MAX_JSON:
        raise InvalidImageError(f"{fs.name}: {path} is too large for a JSON document")
    with fs.open(path) as f:
        return f.read()


class DirFS:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = str(root)

    def _path(self, path: str) -> Path:
        return self.root / norm(path)

    def exists(self, path: str) -> bool:
        return self._path(path).is_file()

    def open(self, path: str) -> BinaryIO:
        try:
            return open(self._path(path), "rb")
        except FileNotFoundError:
            raise InvalidImageError(f"{self.name}: {path} is missing") from None

    def size(self, path: str) -> int:
        return self._path(path).stat().st_size

    def close(self) -> None:
        pass


class TarFS:
    def __init__(self, path: Path, display: str) -> None:
        self.name = display
        try:
            self._tar = tarfile.open(path, "r:")  # noqa: SIM115
            members = self._tar.getmembers()
        except (tarfile.TarError, EOFError) as exc:
            raise InvalidImageError(f"{display}: not a valid tar archive ({exc})") from None
        self._members: dict[str, tarfile.TarInfo] = {}
        for m in members:
            with contextlib.suppress(InvalidImageError):
                if m.isfile() or m.issym() or m.islnk():
                    self._members[norm(m.name)] = m

    def exists(self, path: str) -> bool:
        return norm(path) in self._members

    def open(self, path: str) -> BinaryIO:
        member = self._members.get(norm(path))
        try:
            f = self._tar.extractfile(member) if member is not None else None
        except KeyError:  # a link to a member the archive does not have
            raise InvalidImageError(f"{self.name}: {path} links to a missing member") from None
        if f is None:
            raise InvalidImageError(f"{self.name}: {path} is missing")
        return _Member(f, f"{self.name}: {path}")  # type: ignore[return-value]

    def size(self, path: str) -> int:
        member = self._members[norm(path)]
        if not member.isfile():  # a link to another member (docker save links equal layers)
            total = 0
            with self.open(path) as f:
                while chunk := f.read(1 << 20):
                    total += len(chunk)
            return total
        return member.size

    def close(self) -> None:
        self._tar.close()


class _Member:
    """A member being read; a truncated archive is an InvalidImageError, not a tarfile error."""

    def __init__(self, raw: IO[bytes], what: str) -> None:
        self._raw, self._what = raw, what

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._raw.read(size)
        except (tarfile.TarError, EOFError) as exc:
            raise InvalidImageError(f"{self._what}: truncated archive ({exc})") from None

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> _Member:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spool(src: BinaryIO, spool_dir: Path, display: str) -> Path:
    """Copy a (maybe compressed) stream to an uncompressed staging file."""
    fd, tmp = tempfile.mkstemp(prefix="archive-", dir=spool_dir)
    try:
        stream, _ = open_layer_stream(src, display)
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
    except CorruptLayerError as exc:
        os.unlink(tmp)
        raise InvalidImageError(str(exc).replace("data is corrupt", "archive is corrupt")) \
            from None
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def _is_compressed(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd"))


def open_fs(path: Path, spool_dir: Path) -> ArchiveFS:
    """An ArchiveFS for a directory, a tar file, a compressed tar, or '-' (stdin)."""
    if str(path) == "-":
        if sys.stdin.isatty():
            raise MountToolError("no archive on standard input (use -i FILE or pipe one in)", 2)
        return TarFS(spool(sys.stdin.buffer, spool_dir, "stdin"), "stdin")
    if path.is_dir():
        return DirFS(path)
    if not path.exists():
        raise MountToolError(f"{path}: no such file or directory")
    if _is_compressed(path):
        with open(path, "rb") as f:
            return TarFS(spool(f, spool_dir, str(path)), str(path))
    return TarFS(path, str(path))

