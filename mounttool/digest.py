"""Content digests: the ``algorithm:hex`` value type and readers/writers that hash as data flows.

``Digest`` is what the whole store is keyed by.  ``VerifyingReader`` wraps a stream, hashes every
byte read and, once drained, checks the digest (and size) a descriptor promised; it never lets a
caller believe unverified data is good: ``verify()`` raises ``DigestMismatchError``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from mounttool.errors import DigestMismatchError, InvalidDigestError

_HEX_LEN = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[0-9a-f]+")
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A validated content digest such as ``sha256:e3b0c442...``."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        want = _HEX_LEN.get(self.algorithm)
        if want is None:
            raise InvalidDigestError(f"unsupported digest algorithm {self.algorithm!r}")
        if len(self.hex) != want or not _HEX.fullmatch(self.hex):
            raise InvalidDigestError(
                f"invalid {self.algorithm} digest {self.hex!r}: want {want} lowercase hex digits")

    @classmethod
    def parse(cls, text: str) -> Digest:
        algorithm, sep, hexpart = text.partition(":")
        if not sep:
            raise InvalidDigestError(f"invalid digest {text!r}: want 'algorithm:hex'")
        return cls(algorithm, hexpart)

    @classmethod
    def of_bytes(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    @property
    def short(self) -> str:
        """The 12-digit form docker shows for image IDs."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class VerifyingReader:
    """A read-only stream that hashes what passes through and can check it at the end."""

    def __init__(self, raw: _Readable | BinaryIO, expected: Digest | None = None,
                 expected_size: int | None = None, what: str = "content") -> None:
        self._raw = raw
        self._hash = hashlib.new(expected.algorithm if expected else "sha256")
        self._algorithm = expected.algorithm if expected else "sha256"
        self.expected = expected
        self.expected_size = expected_size
        self.what = what
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        if data:
            self._hash.update(data)
            self.size += len(data)
            if self.expected_size is not None and self.size > self.expected_size:
                raise DigestMismatchError(
                    f"{self.what}: more than the {self.expected_size} bytes its descriptor says")
        return data

    def drain(self) -> None:
        """Read (and hash) everything that is left."""
        while self.read(CHUNK):
            pass

    def digest(self) -> Digest:
        """The digest of everything read so far."""
        return Digest(self._algorithm, self._hash.hexdigest())

    def verify(self) -> Digest:
        """Drain the stream, then check size and digest; return the digest."""
        self.drain()
        got = self.digest()
        if self.expected_size is not None and self.size != self.expected_size:
            raise DigestMismatchError(
                f"{self.what}: size {self.size} does not match the expected {self.expected_size}")
        if self.expected is not None and got != self.expected:
            raise DigestMismatchError(
                f"{self.what}: digest {got} does not match the expected {self.expected}")
        return got


def digest_file(path: str | bytes | os.PathLike[str],
                algorithm: str = "sha256") -> tuple[Digest, int]:
    """Digest and size of a file's content."""
    h = hashlib.new(algorithm)
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return Digest(algorithm, h.hexdigest()), size


def chain_ids(diff_ids: list[Digest]) -> list[Digest]:
    """OCI ChainIDs: chain(0) = diff(0); chain(n) = sha256(chain(n-1) + " " + diff(n))."""
    out: list[Digest] = []
    for diff in diff_ids:
        if not out:
            out.append(diff)
        else:
            out.append(Digest.of_bytes(f"{out[-1]} {diff}".encode()))
    return out
