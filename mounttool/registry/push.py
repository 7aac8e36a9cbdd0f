"""``push``: an image of the store to a registry, blobs first, manifest last.

Each blob (config and layers) is skipped when the repository already has it, mounted from
another repository of the same registry when we know one that holds it (``sources.py``), or
uploaded: in one ``PUT`` (monolithic), or as ``PATCH`` chunks then a closing ``PUT`` when a
chunk size is set and the blob is larger.  The manifest is pushed as the exact bytes in the
store, so the registry's digest equals the local one.  The store is only read (shared lock).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from mounttool import oci
from mounttool.blobs import BlobStore
from mounttool.digest import Digest
from mounttool.errors import NotFoundError, UsageError
from mounttool.images import ImageStore
from mounttool.refs import Reference
from mounttool.registry.client import RegistryClient
from mounttool.registry.errors import (
    RegistryError,
    RegistryNotFoundError,
    RegistryUnavailableError,
    UnauthorizedError,
)
from mounttool.registry.progress import Progress
from mounttool.registry.sources import BlobSources
from mounttool.registry.transport import Stream, error_codes

log = logging.getLogger(__name__)
UPLOAD_RETRIES = 2


@dataclass(frozen=True, slots=True)
class PushOptions:
    jobs: int = 3
    chunk_size: int = 0
    """0: every blob in one PUT; else PATCH chunks of this size for larger blobs."""
    mount: bool = True


@dataclass(frozen=True, slots=True)
class PushResult:
    ref: Reference
    digest: Digest
    size: int
    uploaded: int
    mounted: int
    existing: int


class _Counting:
    """A file slice that reports what http.client reads from it."""

    def __init__(self, f: BinaryIO, limit: int, report: Callable[[int], None]) -> None:
        self.f, self.left, self.report = f, limit, report

    def read(self, size: int = -1, /) -> bytes:
        if self.left <= 0:
            return b""
        data = self.f.read(self.left if size < 0 else min(size, self.left))
        self.left -= len(data)
        self.report(len(data))
        return data

    def close(self) -> None:
        self.f.close()


class Pusher:
    def __init__(self, images: ImageStore, client: RegistryClient, progress: Progress,
                 opts: PushOptions) -> None:
        self.images, self.client, self.progress, self.opts = images, client, progress, opts
        self.blobs: BlobStore = images.blobs
        self.sources = BlobSources(images.store)

    def push(self, image: str, target: Reference, named: bool = True) -> PushResult:
        """Push ``image`` to ``target``; ``named=False``: the target is the image's own name,
        which must then be one of its tags (as docker requires)."""
        tag = target.tag or "latest"
        with self.images.store.locked(exclusive=False):
            cat = self.images.load()
            image_id = self.images.resolve(cat, image)
            if not named and cat.tags.get(str(target)) != image_id:
                raise UsageError(f"no image is tagged {target.familiar}: name the destination "
                                 "(push IMAGE REF) or tag it first")
            info = self.images.info(cat, image_id)
            manifest_bytes = self.blobs.read(info.record.manifest)
            descs = _unique([info.manifest.config, *info.manifest.layers])
            for d in descs:
                if not self.blobs.has(d.digest):
                    raise NotFoundError(f"{image}: blob {d.digest} is missing from the store")
            outcomes = self._blobs(target, descs)
            digest = self.client.put_manifest(target, tag, manifest_bytes,
                                              info.manifest.media_type)
        self.sources.record([d.digest for d in descs], target)
        return PushResult(target, digest, len(manifest_bytes), outcomes.count("uploaded"),
                          outcomes.count("mounted"), outcomes.count("exists"))

    def _blobs(self, target: Reference, descs: list[oci.Descriptor]) -> list[str]:
        with ThreadPoolExecutor(max_workers=max(1, self.opts.jobs),
                                thread_name_prefix="push") as pool:
            return list(pool.map(lambda d: self._blob(target, d), descs))

    def _blob(self, target: Reference, desc: oci.Descriptor) -> str:
        key = desc.digest.short
        if self.client.blob_exists(target, desc.digest, push=True):
            self.progress.finish(key, "Layer already exists")
            return "exists"
        location = None
        if self.opts.mount:
            for source in self.sources.repos_for(desc.digest, target):
                try:
                    location = self.client.mount_blob(target, desc.digest, source)
                except (RegistryError, UnauthorizedError) as exc:
                    log.debug("mount of %s from %s failed: %s", desc.digest, source, exc)
                    continue
                if location is None:
                    self.progress.finish(key, f"Mounted from {source}")
                    return "mounted"
                break
        for attempt in range(UPLOAD_RETRIES + 1):
            try:
                self._upload(target, desc, key, location or self.client.start_upload(target))
                break
            except (RegistryUnavailableError, RegistryNotFoundError) as exc:
                lost = isinstance(exc, RegistryUnavailableError) or bool(
                    {"BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"} & set(error_codes(exc)))
                if attempt == UPLOAD_RETRIES or not lost:
                    raise
                log.info("%s; uploading %s again", exc, desc.digest.short)
                location = None
        self.progress.finish(key, "Pushed")
        return "uploaded"

    def _upload(self, target: Reference, desc: oci.Descriptor, key: str, location: str) -> None:
        self.progress.start(key, desc.size, "Uploading")
        chunk = self.opts.chunk_size
        if chunk <= 0 or desc.size <= chunk:
            self.client.finish_upload(target, location, desc.digest,
                                      self._opener(desc, key, 0, desc.size), desc.size)
            return
        for start in range(0, desc.size, chunk):
            length = min(chunk, desc.size - start)
            location = self.client.upload_chunk(target, location,
                                                self._opener(desc, key, start, length),
                                                start, length)
        self.client.finish_upload(target, location, desc.digest, None, 0)

    def _opener(self, desc: oci.Descriptor, key: str, start: int,
                length: int) -> Callable[[], Stream]:
        def open_slice() -> Stream:
            f = self.blobs.open(desc.digest)
            f.seek(start)
            return _Counting(f, length, lambda n: self.progress.advance(key, n))
        return open_slice


def _unique(descs: list[oci.Descriptor]) -> list[oci.Descriptor]:
    seen: set[Digest] = set()
    out = []
    for d in descs:
        if d.digest not in seen:
            seen.add(d.digest)
            out.append(d)
    return out
