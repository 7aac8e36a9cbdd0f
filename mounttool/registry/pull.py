"""``pull``: a registry image into the store, through the shared ingest pipeline.

1. Resolve the reference to one image manifest (an index is narrowed to the wanted platform).
2. Fetch the config, then every layer blob the store lacks, several at once, each verified
   while it streams into the resumable staging area (downloads.py).
3. Under the store's exclusive lock and one transaction, move the verified blobs into the blob
   store and hand the image to ``ingest.Ingester`` (layers unpacked once by chain id, the
   registry's manifest bytes kept exactly, the catalogue written last).

A failure before step 3 leaves the store untouched (partial downloads stay for the next pull);
a failure inside step 3 rolls the transaction back.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from mounttool import oci
from mounttool.digest import CHUNK, Digest, VerifyingReader, chain_ids
from mounttool.errors import DigestMismatchError, InvalidImageError, MountToolError, StoreError
from mounttool.formats import LayerSource, SourceImage
from mounttool.images import ImageStore
from mounttool.ingest import Ingester
from mounttool.refs import Reference
from mounttool.registry.client import FetchedManifest, RegistryClient
from mounttool.registry.downloads import Aborted, Downloader, Staging
from mounttool.registry.errors import PlatformNotFoundError, UnsupportedMediaTypeError
from mounttool.registry.progress import Progress
from mounttool.registry.sources import BlobSources
from mounttool.store import Transaction

log = logging.getLogger(__name__)
MAX_CONFIG = 16 << 20
INGEST_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class PullOptions:
    platform: oci.Platform | None = None
    jobs: int = 3
    resume: bool = True


@dataclass(frozen=True, slots=True)
class PullResult:
    ref: Reference
    image_id: Digest
    manifest_digest: Digest
    downloaded: int
    up_to_date: bool


class _BlobsVanished(Exception):
    """Blobs counted as present were gone once the exclusive lock was held."""


def resolve(client: RegistryClient, ref: Reference,
            want: oci.Platform | None) -> tuple[FetchedManifest, bool]:
    """The image manifest a reference means on this platform; True if picked from an index."""
    reference = str(ref.digest) if ref.digest else (ref.tag or "latest")
    fetched = client.get_manifest(ref, reference)
    for depth in range(2):
        if not fetched.is_index:
            return fetched, depth > 0
        index = oci.Index.parse(fetched.data, f"index {ref}")
        try:
            desc = oci.select_platform(index, want)
        except InvalidImageError as exc:
            raise PlatformNotFoundError(f"{ref.familiar}: {exc}") from None
        fetched = client.get_manifest(ref, str(desc.digest))
    raise UnsupportedMediaTypeError(f"{ref.familiar}: indexes nested too deeply")


def parse_manifest(fetched: FetchedManifest, ref: Reference) -> oci.Manifest:
    try:
        return oci.Manifest.parse(fetched.data, f"manifest {ref.familiar}")
    except InvalidImageError as exc:
        if "unsupported media type" in str(exc):
            raise UnsupportedMediaTypeError(str(exc)) from None
        raise


def _check_platform(config: bytes, want: oci.Platform, ref: Reference) -> None:
    plat = oci.ImageConfig.parse(config, f"config of {ref.familiar}").platform
    if (plat.os, plat.architecture) != (want.os, want.architecture) or (
            want.variant and plat.variant and want.variant != plat.variant):
        raise PlatformNotFoundError(f"{ref.familiar} is an image for {plat}, not {want}")


class Puller:
    def __init__(self, images: ImageStore, client: RegistryClient, progress: Progress,
                 opts: PullOptions) -> None:
        self.images, self.client, self.progress, self.opts = images, client, progress, opts
        self.store = images.store
        self.staging = Staging(self.store)

    def pull(self, ref: Reference) -> PullResult:
        self.store.ensure()
        self.staging.ensure()
        self.staging.prune()
        fetched, from_index = resolve(self.client, ref, self.opts.platform)
        manifest = parse_manifest(fetched, ref)
        config = self._config(ref, manifest.config)
        if self.opts.platform is not None and not from_index:
            _check_platform(config, self.opts.platform, ref)
        names = [str(ref)] if ref.digest is None else []
        if self._up_to_date(manifest, fetched.digest, names):
            return PullResult(ref, manifest.config.digest, fetched.digest, 0, True)
        if self.store.marker.exists():  # let the store recover from an interrupted command
            with self.store.locked(exclusive=True):  # before we count blobs it may remove
                pass
        for _ in range(INGEST_ROUNDS):
            files = self._download(ref, manifest)
            try:
                image = self._ingest(ref, fetched, manifest, config, files, names)
                break
            except _BlobsVanished:  # a concurrent prune/rmi removed blobs we meant to reuse
                log.info("blobs of %s vanished from the store; fetching them", ref)
            except MountToolError:  # a broken image: its downloads are no use to a retry
                for path in files.values():
                    path.unlink(missing_ok=True)
                raise
        else:
            raise StoreError(f"{ref.familiar}: blobs keep vanishing from the store while "
                             "pulling (is a prune running?)")
        for path in files.values():
            path.unlink(missing_ok=True)
        return PullResult(ref, image, fetched.digest, len(files), False)

    def _config(self, ref: Reference, desc: oci.Descriptor) -> bytes:
        if self.images.blobs.has(desc.digest):
            return self.images.blobs.read(desc.digest)
        if desc.size > MAX_CONFIG:
            raise InvalidImageError(f"{ref.familiar}: config of {desc.size} bytes is too large")
        with self.client.get_blob(ref, desc.digest) as resp:
            reader = VerifyingReader(resp, desc.digest, desc.size, f"config {desc.digest}")
            data = b"".join(iter(partial(reader.read, CHUNK), b""))
            reader.verify()
        return data

    def _up_to_date(self, manifest: oci.Manifest, digest: Digest, names: list[str]) -> bool:
        with self.store.locked(exclusive=False):
            cat = self.images.load()
            rec = cat.images.get(manifest.config.digest)
            if rec is None or rec.manifest != digest:
                return False
            if not all(self.images.blobs.has(d.digest) for d in manifest.layers):
                return False
            return all(cat.tags.get(n) == rec.id for n in names)

    def _missing(self, manifest: oci.Manifest) -> list[oci.Descriptor]:
        seen: set[Digest] = set()
        out = []
        for desc in manifest.layers:
            if desc.digest in seen:
                continue
            seen.add(desc.digest)
            if self.images.blobs.has(desc.digest):
                self.progress.finish(desc.digest.short, "Already exists")
            else:
                out.append(desc)
        return out

    def _download(self, ref: Reference, manifest: oci.Manifest) -> dict[Digest, Path]:
        """Fetch the missing layers concurrently; first failure stops the rest."""
        missing = self._missing(manifest)
        abort = threading.Event()
        dl = Downloader(self.client, ref, self.staging, self.progress, abort, self.opts.resume)
        for desc in missing:
            self.progress.start(desc.digest.short, desc.size, "Waiting")
        futures: dict[Future[Path], oci.Descriptor] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.opts.jobs),
                                thread_name_prefix="pull") as pool:
            try:
                for desc in missing:
                    futures[pool.submit(dl.fetch, desc, desc.digest.short)] = desc
                wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:
                dl.stop()
                raise
            failed = [f for f in futures if f.done() and f.exception() is not None
                      and not isinstance(f.exception(), Aborted)]
            if failed:
                for f in futures:
                    f.cancel()
                dl.stop()
        if failed:
            exc = failed[0].exception()
            assert exc is not None
            raise exc
        return {futures[f].digest: f.result() for f in futures}

    def _adopt(self, digest: Digest, path: Path, txn: Transaction) -> None:
        """Put a staged download into the blob store.  The staged file stays (hard-linked)
        until the pull succeeds, so a pull killed while unpacking loses no download even when
        the store's recovery removes the blobs it had published."""
        blobs = self.images.blobs
        if digest.algorithm != "sha256":  # put_file names blobs by sha256
            with open(path, "rb") as f:
                blobs.put(f, txn, digest, None, f"blob {digest}")
            return
        link = self.store.tmp / f"pull-{digest.hex}"
        link.unlink(missing_ok=True)
        os.link(path, link)
        got = blobs.put_file(link, txn)
        if got != digest:
            raise DigestMismatchError(f"blob {digest}: staged content changed (now {got})")

    def _ingest(self, ref: Reference, fetched: FetchedManifest, manifest: oci.Manifest,
                config: bytes, files: dict[Digest, Path], names: list[str]) -> Digest:
        blobs = self.images.blobs
        with self.store.locked(exclusive=True), self.store.transaction() as txn:
            if any(d.digest not in files and not blobs.has(d.digest) for d in manifest.layers):
                raise _BlobsVanished()
            for digest, path in files.items():
                if not blobs.has(digest):  # else a concurrent pull stored it first
                    self._adopt(digest, path, txn)
            layers = [LayerSource(d.media_type, d.digest, d.size, partial(blobs.open, d.digest),
                                  f"layer {d.digest.short} of {ref.familiar}")
                      for d in manifest.layers]
            todo = [c for c in chain_ids(list(oci.ImageConfig.parse(config).diff_ids))
                    if not self.images.layers.has(c)]
            if todo:
                self.progress.message(f"Unpacking {len(todo)} layer{'s' * (len(todo) > 1)}")
            cat = self.images.load()
            loaded = Ingester(self.images, txn).add(cat, SourceImage(
                names, config, layers, fetched.data, manifest.config.digest, fetched.digest))
            self.images.save(cat)
            sources = [manifest.config.digest, *(d.digest for d in manifest.layers)]
            BlobSources(self.store).record(sources, ref)
        return loaded.id
