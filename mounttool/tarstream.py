"""Reading layer tars as a stream: decompression by magic, safe names, and the end check.

``open_layer_stream`` turns a (possibly gzip- or zstd-compressed) blob into the uncompressed tar
stream, turning decompression failures into ``CorruptLayerError``.  ``TarReader`` walks the tar
with the stdlib ``tarfile`` in stream mode (bounded memory, no extraction) and, when ``tarfile``
stops, checks *why*: end-of-archive blocks or a clean end of data are fine (real writers omit the
end blocks), a partial or garbage header is an error, never a silent stop.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from collections import deque
from collections.abc import Iterator
from typing import IO, BinaryIO, Protocol, cast

import zstandard

from mounttool.errors import CorruptLayerError, UnsafeLayerError

BLOCK = 512
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_KEEP = 4 << 20


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def show(name: bytes) -> str:
    """A path for messages: printable even when it is not UTF-8."""
    return name.decode("utf-8", "backslashreplace")


def clean_path(name: bytes) -> tuple[bytes, ...]:
    """Split a tar path into components: leading '/' and '.' dropped, '..' resolved lexically.

    A '..' that would climb above the layer root is refused (moby's breakout rule).
    """
    parts: list[bytes] = []
    for comp in name.split(b"/"):
        if comp in (b"", b"."):
            continue
        if comp == b"..":
            if not parts:
                raise UnsafeLayerError(f"layer entry {show(name)!r}: path escapes the layer "
                                       "with '..'")
            parts.pop()
            continue
        parts.append(comp)
    return tuple(parts)


class _Prefixed:
    def __init__(self, prefix: bytes, raw: Readable) -> None:
        self._prefix, self._raw = prefix, raw

    def read(self, size: int = -1, /) -> bytes:
        if self._prefix:
            if size < 0:
                data, self._prefix = self._prefix + self._raw.read(), b""
                return data
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return self._raw.read(size)


class _Guarded:
    """Decompression errors become one clear CorruptLayerError."""

    def __init__(self, raw: Readable, kind: str, what: str) -> None:
        self._raw, self.kind, self.what = raw, kind, what

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._raw.read(size)
        except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
            raise CorruptLayerError(f"{self.what}: {self.kind} data is corrupt or truncated "
                                    f"({exc})") from None


def open_layer_stream(raw: Readable | BinaryIO, what: str = "layer") -> tuple[Readable, str]:
    """The uncompressed tar stream of a layer blob and the compression found."""
    head = b""
    while len(head) < 4:
        more = raw.read(4 - len(head))
        if not more:
            break
        head += more
    src = _Prefixed(head, raw)
    if head.startswith(GZIP_MAGIC):
        gz = gzip.GzipFile(fileobj=cast(BinaryIO, src), mode="rb")
        return _Guarded(gz, "gzip", what), "gzip"
    if head.startswith(ZSTD_MAGIC):
        return _Guarded(_Zstd(src), "zstd", what), "zstd"
    return src, ""


class _Zstd:
    """Multi-frame zstd decompression that notices a truncated last frame."""

    def __init__(self, raw: Readable) -> None:
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._fed = False
        self._out = bytearray()
        self._pos = 0
        self._eof = False

    def read(self, size: int = -1, /) -> bytes:
        while not self._eof and (size < 0 or len(self._out) - self._pos < size):
            self._fill()
        end = len(self._out) if size < 0 else self._pos + size
        data = bytes(self._out[self._pos:end])
        self._pos += len(data)
        if self._pos > (1 << 20) and self._pos * 2 > len(self._out):
            del self._out[:self._pos]
            self._pos = 0
        return data

    def _fill(self) -> None:
        # Small input chunks bound the output of one call (zstd can expand ~32000:1).
        chunk = self._raw.read(1024)
        if not chunk:
            self._eof = True
            if self._fed and not self._obj.eof:
                raise zstandard.ZstdError("stream ends inside a frame")
            return
        while chunk:
            if self._obj.eof:
                self._obj, self._fed = self._dctx.decompressobj(), False
            self._fed = True
            self._out += self._obj.decompress(chunk)
            chunk = self._obj.unused_data if self._obj.eof else b""


class Tracker:
    """Counts bytes and remembers the last few MiB, for the end-of-archive check.

    Writers differ in how they end an archive, and the readers that matter (Go's archive/tar,
    which containers/storage, umoci and docker use; Python's tarfile) accept all of these, so
    this does too: the two zero blocks of the end-of-archive marker, one of them, none (the
    stream ends at a header boundary: ``umoci insert --whiteout`` writes a single 512-byte
    header), and a last member's data not padded to a whole block (umoci writes ``hi\n`` as 3
    bytes, not 512): the stream is padded with zeros to its next block boundary, as Go reads
    it.  A stream that ends inside a header or inside a member's declared data stays an error.
    """

    def __init__(self, raw: Readable) -> None:
        self._raw = raw
        self._ended = False
        self.real_end: int | None = None
        """Where the stream really ended, once it has (before the padding added here)."""
        self.pos = 0
        self._chunks: deque[tuple[int, bytes]] = deque()
        self._kept = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size) if not self._ended else b""
        if not data and not self._ended:
            self._ended = True
            self.real_end = self.pos
            data = bytes(-self.pos % BLOCK)  # the last block's padding, if the writer left it
        if data:
            self._chunks.append((self.pos, data))
            self._kept += len(data)
            self.pos += len(data)
            while self._kept - len(self._chunks[0][1]) >= _KEEP:
                self._kept -= len(self._chunks.popleft()[1])
        return data

    def block_at(self, offset: int) -> bytes | None:
        """Up to one block from ``offset`` (reading more if needed); None if forgotten."""
        if offset > self.pos:
            return None
        if self._chunks and offset < self._chunks[0][0]:
            return None
        held = b"".join(d for start, d in self._chunks if start + len(d) > offset)
        start = next((s for s, d in self._chunks if s + len(d) > offset), offset)
        out = held[offset - start:offset - start + BLOCK]
        while len(out) < BLOCK and (more := self.read(BLOCK - len(out))):
            out += more
        return out


def iter_members(tracker: Tracker, what: str) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Members of a tar stream, then the end check; tar errors become CorruptLayerError."""
    try:
        tar = tarfile.open(fileobj=tracker, mode="r|",  # type: ignore[call-overload]  # noqa: SIM115
                           encoding="utf-8", errors="surrogateescape")
    except tarfile.ReadError as exc:
        if tracker.pos == 0:
            return  # an empty stream: an empty layer without even the end blocks
        raise CorruptLayerError(f"{what}: not a tar archive ({exc})") from None
    last: tarfile.TarInfo | None = None
    with tar:
        while True:
            try:
                ti = tar.next()
            except (tarfile.TarError, EOFError) as exc:
                raise CorruptLayerError(f"{what}: corrupt tar ({exc})") from None
            if ti is None:
                break
            tar.members.clear()  # stream mode must not keep every header in memory
            last = ti
            yield ti, tar
        if (last is not None and last.isreg() and tracker.real_end is not None
                and last.offset_data + last.size > tracker.real_end):
            # The padding added at the end stood in for data the member declared.
            raise CorruptLayerError(f"{what}: truncated tar (ends inside the data of "
                                    f"{show(os.fsencode(last.name))!r})")
        _check_end(tracker, tar.offset, what)


def _check_end(tracker: Tracker, offset: int, what: str) -> None:
    if offset > tracker.pos:
        raise CorruptLayerError(f"{what}: truncated tar (ends inside an entry's data)")
    block = tracker.block_at(offset)
    if block is None or not block.strip(b"\0"):
        return
    if len(block) < BLOCK or (tracker.real_end is not None
                              and offset + BLOCK > tracker.real_end):
        raise CorruptLayerError(f"{what}: truncated tar (ends inside a header at offset "
                                f"{offset})")
    raise CorruptLayerError(f"{what}: corrupt tar (invalid header at offset {offset})")


def read_member(tar: tarfile.TarFile, ti: tarfile.TarInfo, what: str) -> IO[bytes]:
    f = tar.extractfile(ti)
    if f is None:
        raise CorruptLayerError(f"{what}: cannot read the data of {ti.name!r}")
    return f


class LimitedReader:
    """Stops a stream that grows past ``limit`` bytes (a guard against tar bombs)."""

    def __init__(self, raw: Readable, limit: int | None, what: str) -> None:
        self._raw, self._limit, self._what = raw, limit, what
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        self.size += len(data)
        if self._limit is not None and self.size > self._limit:
            raise CorruptLayerError(f"{self._what}: larger than the limit of {self._limit} "
                                    "bytes uncompressed")
        return data
