"""docker-archive reader (``docker save``/``podman save``), both layouts, via manifest.json.

Legacy archives hold ``<id>.json`` configs and ``<v1id>/layer.tar``; current moby writes an OCI
layout inside and points manifest.json at ``blobs/sha256/...``.  Either way the paths in
manifest.json are followed, never guessed.  When the archive also carries an OCI index whose
manifest has this config, that manifest is used as is (so digests match docker's); otherwise a
docker schema2 manifest is made from the layers as stored.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from typing import Any

from mounttool import oci
from mounttool.digest import Digest
from mounttool.errors import InvalidImageError, InvalidReferenceError, MountToolError
from mounttool.formats import LayerSource, SourceImage
from mounttool.formats.archive import ArchiveFS, norm, read_small
from mounttool.formats.oci_layout import OCILayoutSource, layer_sources
from mounttool.refs import parse_tagged

log = logging.getLogger(__name__)


class DockerArchiveSource:
    def __init__(self, fs: ArchiveFS) -> None:
        self.fs = fs
        self.description = f"docker-archive {fs.name}"

    def close(self) -> None:
        self.fs.close()

    def entries(self) -> list[dict[str, Any]]:
        data = read_small(self.fs, "manifest.json")
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise InvalidImageError(f"{self.fs.name}: manifest.json is not JSON ({exc})") from None
        if not isinstance(obj, list) or not obj or not all(isinstance(e, dict) for e in obj):
            raise InvalidImageError(f"{self.fs.name}: manifest.json must be a non-empty list "
                                    "of objects")
        return obj

    def images(self) -> list[SourceImage]:
        oci_manifests = self._oci_manifests()
        return [self.image(i, e, oci_manifests) for i, e in enumerate(self.entries())]

    def _oci_manifests(self) -> dict[Digest, tuple[oci.Descriptor, bytes]]:
        if not (self.fs.exists("index.json") and self.fs.exists("oci-layout")):
            return {}
        layout = OCILayoutSource(self.fs)
        out = {}
        try:
            for desc in layout.index().manifests:
                found = layout.resolve(desc, 0)
                if found is not None:
                    man = oci.Manifest.parse(found[1])
                    out[man.config.digest] = found
        except MountToolError as exc:
            log.info("ignoring the OCI index inside %s: %s", self.fs.name, exc)
            return {}
        return out

    def image(self, i: int, entry: dict[str, Any],
              oci_manifests: dict[Digest, tuple[oci.Descriptor, bytes]]) -> SourceImage:
        what = f"{self.fs.name}: manifest.json entry {i}"
        cfg_path, layer_paths = entry.get("Config"), entry.get("Layers")
        if not isinstance(cfg_path, str) or not isinstance(layer_paths, list) \
                or not all(isinstance(p, str) for p in layer_paths):
            raise InvalidImageError(f"{what}: needs a Config path and a Layers list")
        config = read_small(self.fs, norm(cfg_path))
        cfg_digest = Digest.of_bytes(config)
        names = []
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list):
            raise InvalidImageError(f"{what}: RepoTags must be a list")
        for tag in tags:
            try:
                names.append(str(parse_tagged(str(tag))))
            except InvalidReferenceError as exc:
                raise InvalidImageError(f"{what}: bad RepoTags entry: {exc}") from None
        if cfg_digest in oci_manifests:
            desc, data = oci_manifests[cfg_digest]
            manifest = oci.Manifest.parse(data)
            if len(manifest.layers) == len(layer_paths):
                return SourceImage(names, config, layer_sources(self.fs, manifest), data,
                                   cfg_digest, desc.digest)
        layers = []
        for path in layer_paths:
            member = norm(path)
            if not self.fs.exists(member):
                raise InvalidImageError(f"{what}: layer {path} is missing from the archive")
            layers.append(LayerSource(oci.DOCKER_LAYER, None, None,
                                      partial(self.fs.open, member), f"layer {path}"))
        return SourceImage(names, config, layers, None, cfg_digest, None)
