"""Blob downloads that survive interruption: ``<store>/downloads/``, verified as they stream.

A blob is fetched into ``<alg>-<hex>.partial`` (flock'd, so two pulls never write one file),
hashed on the way, and renamed to ``<alg>-<hex>`` only once its digest and size match; the pull
then moves it into the blob store.  When a pull dies (killed, connection lost, timeout) the
partial file stays; the next pull re-hashes the bytes it has and asks the registry for the rest
with a ``Range`` request (starting over if the registry ignores ranges).  Content that fails
verification is deleted at once.  These files are never visible as blobs: the store only sees
verified content.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO

from mounttool.digest import CHUNK, Digest, VerifyingReader
from mounttool.errors import DigestMismatchError
from mounttool.oci import Descriptor
from mounttool.refs import Reference
from mounttool.registry.client import RegistryClient
from mounttool.registry.errors import RegistryError, RegistryUnavailableError
from mounttool.registry.progress import Progress
from mounttool.registry.transport import Response
from mounttool.store import Store

log = logging.getLogger(__name__)
STALE_AFTER = 7 * 24 * 3600


class Aborted(Exception):
    """Another download of the same pull failed: stop, keep what we have."""


class _ResumedMismatch(DigestMismatchError):
    """A resumed download failed verification: the bytes kept from before may be the bad ones."""


class Staging:
    """The downloads directory of a store."""

    def __init__(self, store: Store) -> None:
        self.dir = store.root / "downloads"

    def ensure(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def done(self, digest: Digest) -> Path:
        return self.dir / f"{digest.algorithm}-{digest.hex}"

    def partial(self, digest: Digest) -> Path:
        return self.dir / f"{digest.algorithm}-{digest.hex}.partial"

    def prune(self, max_age: float = STALE_AFTER) -> None:
        """Forget downloads nobody finished for a week."""
        if not self.dir.is_dir():
            return
        cutoff = time.time() - max_age
        for entry in self.dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()


class _Resume:
    """The bytes already on disk, then the network: one stream for the verifier."""

    def __init__(self, local: BinaryIO | None, remote: Response, remote_size: int) -> None:
        self.local, self.remote = local, remote
        self.from_network = local is None
        self.left = remote_size

    def read(self, size: int = -1, /) -> bytes:
        if self.local is not None:
            data = self.local.read(size)
            if data:
                return data
            self.local.close()
            self.local = None
            self.from_network = True
        data = self.remote.read1(size)
        self.left -= len(data)
        if not data and self.left > 0 and size != 0:
            raise RegistryUnavailableError(f"{self.remote.where}: the registry closed the "
                                           "connection early")
        return data

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
        self.remote.close()


def _open_range(client: RegistryClient, ref: Reference, desc: Descriptor,
                offset: int) -> tuple[Response, int]:
    """GET the blob from ``offset``; the offset actually served (0 if ranges are ignored)."""
    resp = client.get_blob(ref, desc.digest, offset)
    if offset and resp.status == 206:
        crange = resp.header("Content-Range") or ""
        if crange.replace("bytes ", "").startswith(f"{offset}-"):
            return resp, offset
    if resp.status == 206:
        resp.close()
        raise RegistryError(f"blob {desc.digest}: the registry sent a range we did not ask for")
    return resp, 0


def _lock(path: Path) -> int:
    """Open and flock ``path``, making sure the locked file is still the one at ``path``."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)


class Downloader:
    """Fetches blobs of one pull into the staging directory."""

    def __init__(self, client: RegistryClient, ref: Reference, staging: Staging,
                 progress: Progress, abort: threading.Event, resume: bool = True,
                 retries: int = 2) -> None:
        self.client, self.ref, self.staging = client, ref, staging
        self.progress, self.abort, self.resume = progress, abort, resume
        self.retries = retries
        self._active: set[Response] = set()
        self._lock = threading.Lock()

    def stop(self) -> None:
        """Stop every download now (keeping what each has): set the flag, cut the sockets."""
        self.abort.set()
        with self._lock:
            for resp in self._active:
                resp.abort()

    def fetch(self, desc: Descriptor, key: str) -> Path:
        """A verified file holding the blob (downloaded now, or by an earlier pull)."""
        done, partial = self.staging.done(desc.digest), self.staging.partial(desc.digest)
        fd = _lock(partial)
        try:
            if done.exists():
                partial.unlink()
            else:
                if not self.resume:
                    os.ftruncate(fd, 0)
                self._fetch_retrying(fd, desc, key)
                os.fsync(fd)
                os.rename(partial, done)
        except BaseException as exc:
            if isinstance(exc, DigestMismatchError) or os.fstat(fd).st_size == 0:
                partial.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        self.progress.finish(key, "Download complete")
        return done

    def _fetch_retrying(self, fd: int, desc: Descriptor, key: str) -> None:
        """Connection lost or timed out mid-blob: resume from what we have, a few times."""
        for attempt in range(self.retries + 1):
            try:
                self._fetch_into(fd, desc, key)
                return
            except _ResumedMismatch as exc:
                if attempt == self.retries:
                    raise
                log.info("%s; downloading it again from the start", exc)
                os.ftruncate(fd, 0)
            except RegistryUnavailableError as exc:
                if attempt == self.retries or self.abort.is_set():
                    raise
                log.info("%s; retrying (%d of %d)", exc, attempt + 1, self.retries)

    def _fetch_into(self, fd: int, desc: Descriptor, key: str) -> None:
        have = os.fstat(fd).st_size
        if have > desc.size or (have == desc.size and not self._complete(desc)):
            os.ftruncate(fd, 0)
            have = 0
        if have and have == desc.size:
            return
        resp, offset = _open_range(self.client, self.ref, desc, have)
        if offset != have:
            os.ftruncate(fd, 0)
        self.progress.start(key, desc.size, "Downloading", offset)
        local = open(self.staging.partial(desc.digest), "rb") if offset else None  # noqa: SIM115
        source = _Resume(local, resp, desc.size - offset)
        with self._lock:
            self._active.add(resp)
        try:
            if self.abort.is_set():
                raise Aborted()
            self._stream(fd, source, desc, key, offset)
        finally:
            with self._lock:
                self._active.discard(resp)
            source.close()

    def _complete(self, desc: Descriptor) -> bool:
        """Whether a partial file of full size is the blob (a pull died before the rename)."""
        with open(self.staging.partial(desc.digest), "rb") as f:
            try:
                VerifyingReader(f, desc.digest, desc.size).verify()
            except DigestMismatchError:
                return False
        return True

    def _stream(self, fd: int, source: _Resume, desc: Descriptor, key: str,
                pos: int) -> None:
        resumed = pos > 0
        reader = VerifyingReader(source, desc.digest, desc.size,
                                 f"blob {desc.digest} from {self.ref.name}")
        try:
            while chunk := reader.read(CHUNK):
                if self.abort.is_set():
                    raise Aborted()
                if source.from_network:
                    os.pwrite(fd, chunk, pos)
                    pos += len(chunk)
                    self.progress.advance(key, len(chunk))
            reader.verify()
        except DigestMismatchError as exc:
            if resumed:
                raise _ResumedMismatch(str(exc)) from None
            raise DigestMismatchError(f"{exc}: the registry sent corrupt data (the download "
                                      "was discarded)") from None
        except RegistryUnavailableError as exc:
            if self.abort.is_set():
                raise Aborted() from None
            raise RegistryUnavailableError(
                f"{exc} while downloading {desc.digest.short} ({pos} of {desc.size} bytes "
                "kept: pull again to resume)") from None
