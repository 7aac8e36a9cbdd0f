"""OCI image layout reader (a directory, or the same inside an oci-archive tar).

``index.json`` is walked: manifests are taken as they are, nested indexes (and docker manifest
lists) resolve to the host platform's manifest.  Names come from the descriptor annotations
``io.containerd.image.name`` (a full reference) or ``org.opencontainers.image.ref.name`` (used
when it is a full reference; a bare tag names nothing).  Every JSON blob is checked against its
descriptor's digest and size before it is parsed.
"""

from __future__ import annotations

import logging
from functools import partial

from mounttool import oci
from mounttool.digest import Digest
from mounttool.errors import InvalidImageError, InvalidReferenceError
from mounttool.formats import LayerSource, SourceImage
from mounttool.formats.archive import ArchiveFS, read_small
from mounttool.refs import parse_tagged

log = logging.getLogger(__name__)
MAX_DEPTH = 4


def blob_path(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex}"


def read_blob(fs: ArchiveFS, desc: oci.Descriptor, what: str) -> bytes:
    path = blob_path(desc.digest)
    if not fs.exists(path):
        raise InvalidImageError(f"{fs.name}: {what} {desc.digest} is missing ({path})")
    data = read_small(fs, path)
    if len(data) != desc.size or Digest.of_bytes(data, desc.digest.algorithm) != desc.digest:
        raise InvalidImageError(f"{fs.name}: {what} {desc.digest} does not match its digest "
                                "or size")
    return data


def names_of(desc: oci.Descriptor) -> list[str]:
    for key in (oci.ANNOTATION_CONTAINERD_NAME, oci.ANNOTATION_REF_NAME):
        value = desc.annotations.get(key)
        if not value:
            continue
        if key == oci.ANNOTATION_REF_NAME and "/" not in value and ":" not in value:
            log.info("OCI ref.name %r is only a tag; the image stays unnamed", value)
            continue
        try:
            return [str(parse_tagged(value))]
        except InvalidReferenceError:
            log.warning("ignoring invalid image name %r in the index", value)
    return []


def layer_sources(fs: ArchiveFS, manifest: oci.Manifest) -> list[LayerSource]:
    out = []
    for i, desc in enumerate(manifest.layers):
        path = blob_path(desc.digest)
        if not fs.exists(path):
            kind = "a foreign layer that" if desc.urls else "a layer that"
            raise InvalidImageError(f"{fs.name}: layer {i} ({desc.digest}) is {kind} is not "
                                    "in the archive")
        out.append(LayerSource(desc.media_type, desc.digest, desc.size,
                               partial(fs.open, path), f"layer {desc.digest}"))
    return out


class OCILayoutSource:
    def __init__(self, fs: ArchiveFS) -> None:
        self.fs = fs
        self.description = f"OCI layout {fs.name}"

    def close(self) -> None:
        self.fs.close()

    def index(self) -> oci.Index:
        layout = oci.load_json(read_small(self.fs, "oci-layout"), f"{self.fs.name}: oci-layout")
        version = str(layout.get("imageLayoutVersion", ""))
        if not version.startswith("1."):
            raise InvalidImageError(f"{self.fs.name}: unsupported imageLayoutVersion "
                                    f"{version!r}")
        return oci.Index.parse(read_small(self.fs, "index.json"), f"{self.fs.name}: index.json")

    def images(self) -> list[SourceImage]:
        by_manifest: dict[Digest, SourceImage] = {}
        for desc in self.index().manifests:
            found = self.resolve(desc, 0)
            if found is None:
                continue
            mdesc, manifest_bytes = found
            names = names_of(desc)
            if mdesc.digest in by_manifest:
                by_manifest[mdesc.digest].names.extend(n for n in names
                                                       if n not in by_manifest[mdesc.digest].names)
                continue
            by_manifest[mdesc.digest] = self.image(mdesc, manifest_bytes, names)
        if not by_manifest:
            raise InvalidImageError(f"{self.fs.name}: the index lists no image manifest")
        return list(by_manifest.values())

    def resolve(self, desc: oci.Descriptor, depth: int) -> tuple[oci.Descriptor, bytes] | None:
        if not desc.media_type:  # older writers leave it out: look at the content
            data = read_blob(self.fs, desc, "manifest or index")
            obj = oci.load_json(data, f"blob {desc.digest}")
            kind = str(obj.get("mediaType") or (oci.OCI_INDEX if "manifests" in obj
                                                 else oci.OCI_MANIFEST))
            desc = oci.Descriptor(kind, desc.digest, desc.size, desc.annotations,
                                  desc.platform, desc.urls)
        if desc.media_type in oci.INDEX_TYPES:
            if depth >= MAX_DEPTH:
                raise InvalidImageError(f"{self.fs.name}: indexes nested too deeply")
            nested = oci.Index.parse(read_blob(self.fs, desc, "index"), f"index {desc.digest}")
            return self.resolve(oci.select_platform(nested), depth + 1)
        if desc.media_type not in oci.MANIFEST_TYPES:
            log.info("skipping %s of media type %s", desc.digest, desc.media_type)
            return None
        data = read_blob(self.fs, desc, "manifest")
        config = oci.load_json(data, f"manifest {desc.digest}").get("config")
        cfg_type = config.get("mediaType") if isinstance(config, dict) else None
        if cfg_type not in (oci.OCI_CONFIG, oci.DOCKER_CONFIG, None, ""):
            log.info("skipping %s: an artifact (%s), not an image", desc.digest, cfg_type)
            return None  # attestations, signatures, SBOMs stored beside images
        return desc, data

    def image(self, desc: oci.Descriptor, data: bytes, names: list[str]) -> SourceImage:
        manifest = oci.Manifest.parse(data, f"manifest {desc.digest}")
        config = read_blob(self.fs, manifest.config, "config")
        return SourceImage(names=names, config=config, layers=layer_sources(self.fs, manifest),
                           manifest=data, config_digest=manifest.config.digest,
                           manifest_digest=desc.digest)
