"""Content-addressed blobs: ``blobs/<alg>/<hex>``, verified before they become visible.

A blob is streamed into ``tmp/``, hashed on the way, fsynced, checked against the digest and size
it was promised, and only then renamed into place.  A blob file that exists is therefore always
correct; ``verify`` re-checks one on demand.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mounttool.digest import CHUNK, Digest, VerifyingReader, digest_file
from mounttool.errors import DigestMismatchError, InvalidDigestError, NotFoundError
from mounttool.store import Store, Transaction, fsync_dir


class BlobStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = store.blobs_dir

    def path(self, digest: Digest) -> Path:
        return self.root / digest.algorithm / digest.hex

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int:
        return self.path(digest).stat().st_size

    def open(self, digest: Digest) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is not in the store") from None

    def read(self, digest: Digest) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def put(self, src: BinaryIO, txn: Transaction, expected: Digest | None = None,
            expected_size: int | None = None, what: str = "blob") -> Digest:
        """Store a stream; verify it against ``expected``/``expected_size`` before it is visible."""
        self.store.require_exclusive()
        if expected is not None and self.has(expected):
            return expected  # a stored blob was verified when it was stored
        reader = VerifyingReader(src, expected, expected_size, what)
        fd, tmp = tempfile.mkstemp(prefix="blob-", dir=self.store.tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := reader.read(CHUNK):
                    out.write(chunk)
                digest = reader.verify()
                out.flush()
                os.fsync(out.fileno())
            return self._publish(Path(tmp), digest, txn)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def put_bytes(self, data: bytes, txn: Transaction, expected: Digest | None = None,
                  what: str = "blob") -> Digest:
        return self.put(io.BytesIO(data), txn, expected, None, what)

    def put_file(self, tmp: Path, txn: Transaction) -> Digest:
        """Adopt a finished staging file (it is hashed again, then renamed in)."""
        digest, _ = digest_file(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        return self._publish(tmp, digest, txn)

    def _publish(self, tmp: Path, digest: Digest, txn: Transaction) -> Digest:
        final = self.path(digest)
        if final.exists():
            return digest
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.rename(tmp, final)
        txn.created(final)
        fsync_dir(final.parent)
        return digest

    def verify(self, digest: Digest) -> None:
        got, _ = digest_file(self.path(digest), digest.algorithm)
        if got != digest:
            raise DigestMismatchError(f"blob {digest} is corrupt on disk (content is {got})")

    def delete(self, digest: Digest) -> int:
        """Remove a blob; returns the bytes freed."""
        self.store.require_exclusive()
        path = self.path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def all(self) -> Iterator[Digest]:
        for alg_dir in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            for entry in sorted(alg_dir.iterdir()):
                with contextlib.suppress(InvalidDigestError):
                    yield Digest(alg_dir.name, entry.name)
