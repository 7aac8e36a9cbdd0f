"""Bringing images into the store: ``load`` (any ImageSource) and ``import`` (a rootfs).

For each image: the config is stored and parsed; each layer blob is stored (verified against its
descriptor) and unpacked once by chain id (verified against its diff_id); the manifest is stored
(the source's own, or one made from the stored layers); the catalogue is updated last.  All of
it happens in one transaction: any failure leaves the store as it was.
"""

from __future__ import annotations

import logging
import platform as _platform
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

from mounttool import oci
from mounttool.digest import Digest, VerifyingReader, chain_ids
from mounttool.errors import DigestMismatchError, InvalidImageError
from mounttool.formats import LayerSource, SourceImage
from mounttool.images import Catalogue, ImageRecord, ImageStore, now_iso
from mounttool.store import Transaction
from mounttool.tarstream import GZIP_MAGIC, ZSTD_MAGIC, open_layer_stream

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Loaded:
    id: Digest
    names: list[str]
    replaced: list[tuple[str, Digest]]
    """(name, old image id) for names that moved from another image."""


def _magic_media_type(head: bytes, oci_types: bool) -> str:
    if head.startswith(GZIP_MAGIC):
        return oci.OCI_LAYER_GZIP if oci_types else oci.DOCKER_LAYER_GZIP
    if head.startswith(ZSTD_MAGIC):
        return oci.OCI_LAYER_ZSTD
    return oci.OCI_LAYER if oci_types else oci.DOCKER_LAYER


class Ingester:
    def __init__(self, images: ImageStore, txn: Transaction) -> None:
        self.images = images
        self.blobs = images.blobs
        self.txn = txn

    def add(self, cat: Catalogue, src: SourceImage) -> Loaded:
        cfg_digest = self.blobs.put_bytes(src.config, self.txn, src.config_digest, "config")
        config = oci.ImageConfig.parse(src.config, f"config {cfg_digest}")
        diff_ids = list(config.diff_ids)
        if len(src.layers) != len(diff_ids):
            raise InvalidImageError(f"image {cfg_digest.short}: {len(src.layers)} layers but "
                                    f"the config lists {len(diff_ids)} diff_ids")
        _warn_platform(config)
        chains = chain_ids(diff_ids)
        stored: list[oci.Descriptor] = []
        for i, layer in enumerate(src.layers):
            stored.append(self._layer(layer, chains, diff_ids, i))
        manifest_bytes = src.manifest or _make_manifest(cfg_digest, len(src.config), stored)
        man_digest = self.blobs.put_bytes(manifest_bytes, self.txn, src.manifest_digest,
                                          "manifest")
        manifest = oci.Manifest.parse(manifest_bytes, f"manifest {man_digest}")
        if manifest.config.digest != cfg_digest:
            raise InvalidImageError(f"manifest {man_digest}: its config is "
                                    f"{manifest.config.digest}, not {cfg_digest}")
        return self._record(cat, ImageRecord(cfg_digest, man_digest, now_iso()), src.names)

    def _layer(self, layer: LayerSource, chains: list[Digest], diff_ids: list[Digest],
               i: int) -> oci.Descriptor:
        expected, media = layer.digest, layer.media_type
        if expected is None:  # docker-archive: an uncompressed layer's blob digest is its diff_id
            with layer.open() as f:
                media = _magic_media_type(f.read(4), oci_types=False)
            if media == oci.DOCKER_LAYER:
                expected = diff_ids[i]  # ...so a layer already stored is not read again
        log.info("storing %s", layer.what)
        with layer.open() as f:
            digest = self.blobs.put(f, self.txn, expected, layer.size, layer.what)
        self.images.layers.ensure(chains, diff_ids, i, partial(self.blobs.open, digest),
                                  self.txn)
        return oci.Descriptor(media, digest, self.blobs.size(digest))

    def _record(self, cat: Catalogue, rec: ImageRecord, names: list[str]) -> Loaded:
        old = cat.images.get(rec.id)
        cat.images[rec.id] = rec if old is None or old.manifest != rec.manifest else old
        replaced = []
        for name in names:
            prev = cat.tags.get(name)
            if prev is not None and prev != rec.id:
                replaced.append((name, prev))
            cat.tags[name] = rec.id
        return Loaded(rec.id, names, replaced)


def _make_manifest(cfg: Digest, cfg_size: int, layers: list[oci.Descriptor]) -> bytes:
    docker = all(d.media_type.startswith("application/vnd.docker") for d in layers)
    media, cfg_media = ((oci.DOCKER_MANIFEST, oci.DOCKER_CONFIG) if docker
                        else (oci.OCI_MANIFEST, oci.OCI_CONFIG))
    if not docker:
        layers = [oci.Descriptor(_to_oci(d.media_type), d.digest, d.size) for d in layers]
    return oci.Manifest(media, oci.Descriptor(cfg_media, cfg, cfg_size), tuple(layers),
                        {}).to_json()


def _to_oci(media: str) -> str:
    return {oci.DOCKER_LAYER: oci.OCI_LAYER, oci.DOCKER_LAYER_GZIP: oci.OCI_LAYER_GZIP}.get(
        media, media)


def _warn_platform(config: oci.ImageConfig) -> None:
    host = oci.host_platform()
    plat = config.platform
    if plat.architecture and plat.architecture != host.architecture:
        log.warning("image is for %s, this host is %s", plat, host)


def rootfs_config(diff_id: Digest, source: str, message: str) -> bytes:
    created = now_iso()
    host = oci.host_platform()
    cfg = {"architecture": host.architecture, "os": "linux", "created": created,
           "config": {}, "rootfs": {"type": "layers", "diff_ids": [str(diff_id)]},
           "history": [{"created": created, "created_by": f"mounttool import {source}",
                        "comment": message or f"Imported from {source} on "
                                              f"{_platform.node() or 'localhost'}"}]}
    if host.variant:
        cfg["variant"] = host.variant
    return oci.dump_json(cfg)


def diff_id_of(open_blob: BinaryIO) -> Digest:
    """The sha256 of a layer blob's uncompressed stream."""
    stream, _ = open_layer_stream(open_blob, "rootfs")
    return VerifyingReader(stream).verify()


def import_rootfs(ing: Ingester, cat: Catalogue, tar_path: Path, source: str,
                  names: list[str], message: str = "") -> Loaded:
    """A rootfs tarball (plain, gzip or zstd) becomes a one-layer image."""
    with open(tar_path, "rb") as f:
        digest = ing.blobs.put(f, ing.txn, None, None, source)
    with ing.blobs.open(digest) as f:
        head = f.read(4)
    with ing.blobs.open(digest) as f:
        diff_id = diff_id_of(f)
    config = rootfs_config(diff_id, source, message)
    media = _magic_media_type(head, oci_types=True)
    layer = LayerSource(media, digest, ing.blobs.size(digest), partial(ing.blobs.open, digest),
                        source)
    manifest = _make_manifest(Digest.of_bytes(config), len(config),
                              [oci.Descriptor(media, digest, ing.blobs.size(digest))])
    try:
        return ing.add(cat, SourceImage(names, config, [layer], manifest))
    except DigestMismatchError as exc:
        raise InvalidImageError(f"{source}: {exc}") from None


def load_path(images: ImageStore, path: Path) -> list[Loaded]:
    """Load every image of an archive or layout (``-`` = stdin) in one transaction."""
    from mounttool.formats import open_source

    store = images.store
    with store.locked(exclusive=True), store.transaction() as txn:
        source = open_source(path, store.tmp)
        try:
            cat = images.load()
            ing = Ingester(images, txn)
            loaded = [ing.add(cat, img) for img in source.images()]
            images.save(cat)
        finally:
            source.close()
    return loaded


def import_path(images: ImageStore, path: Path, names: list[str], message: str = "") -> Loaded:
    """``import FILE|DIR``: a rootfs tarball or directory becomes a one-layer image."""
    import shutil
    import sys
    import tempfile

    from mounttool.tarwriter import tar_tree

    store = images.store
    with store.locked(exclusive=True), store.transaction() as txn:
        cat = images.load()
        ing = Ingester(images, txn)
        if path.is_dir():
            with tempfile.NamedTemporaryFile(dir=store.tmp, prefix="import-") as tmp:
                tar_tree(path, tmp)  # type: ignore[arg-type]
                tmp.flush()
                loaded = import_rootfs(ing, cat, Path(tmp.name), str(path), names, message)
        elif str(path) == "-":
            with tempfile.NamedTemporaryFile(dir=store.tmp, prefix="import-") as tmp:
                shutil.copyfileobj(sys.stdin.buffer, tmp, 1 << 20)
                tmp.flush()
                loaded = import_rootfs(ing, cat, Path(tmp.name), "stdin", names, message)
        elif path.is_file():
            loaded = import_rootfs(ing, cat, path, str(path), names, message)
        else:
            raise InvalidImageError(f"{path}: no such file or directory")
        images.save(cat)
    return loaded
