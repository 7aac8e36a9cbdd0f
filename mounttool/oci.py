"""Typed OCI/docker image models: media types, descriptors, manifests, indexes, image configs.

Parsing validates what mounttool relies on and raises ``InvalidImageError`` with the field that
is wrong; everything else in the JSON is kept (``raw``) so content round-trips byte for byte:
stored manifests and configs are the original bytes, never re-serialised.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from typing import Any

from mounttool.digest import Digest
from mounttool.errors import InvalidDigestError, InvalidImageError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = DOCKER_LAYER + ".gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
LAYER_TYPES = frozenset({OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_NONDIST,
                         OCI_LAYER_NONDIST + "+gzip", OCI_LAYER_NONDIST + "+zstd",
                         DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN})
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"

JSON = dict[str, Any]


def load_json(data: bytes, what: str) -> JSON:
    """Parse a JSON object, with a clear error for anything else."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidImageError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise InvalidImageError(f"{what}: expected a JSON object")
    return obj


def dump_json(obj: Any) -> bytes:
    """Compact, deterministic JSON for content we create (manifests, indexes, configs)."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _dict(value: Any, what: str) -> dict[str, str]:
    """An optional string map (annotations, labels); anything else is malformed."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidImageError(f"{what}: must be an object of strings")
    return {str(k): str(v) for k, v in value.items()}


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidImageError(f"{what}: must be a list")
    return value


def _get(obj: JSON, key: str, kind: type, what: str, default: Any = None) -> Any:
    value = obj.get(key, default)
    if value is None and default is None:
        raise InvalidImageError(f"{what}: missing field {key!r}")
    if not isinstance(value, kind):
        raise InvalidImageError(f"{what}: field {key!r} must be {kind.__name__}")
    return value


def _digest(text: Any, what: str) -> Digest:
    if not isinstance(text, str):
        raise InvalidImageError(f"{what}: digest must be a string")
    try:
        return Digest.parse(text)
    except InvalidDigestError as exc:
        raise InvalidImageError(f"{what}: {exc}") from None


def _check_schema(obj: JSON, what: str) -> None:
    if obj.get("schemaVersion") != 2:
        raise InvalidImageError(f"{what}: unsupported schemaVersion {obj.get('schemaVersion')!r}")


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def from_json(cls, obj: JSON) -> Platform:
        return cls(str(obj.get("os", "")), str(obj.get("architecture", "")),
                   str(obj.get("variant", "")))

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
         "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x",
         "riscv64": "riscv64"}


def host_platform() -> Platform:
    machine = platform.machine()
    variant = {"aarch64": "v8", "armv7l": "v7", "armv6l": "v6"}.get(machine, "")
    return Platform("linux", _ARCH.get(machine, machine), variant)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise InvalidImageError(f"{what}: descriptor must be an object")
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidImageError(f"{what}: descriptor size must be a non-negative integer")
        annotations = _dict(obj.get("annotations"), f"{what} annotations")
        plat = obj.get("platform")
        return cls(
            media_type=str(obj.get("mediaType", "")),
            digest=_digest(obj.get("digest"), what),
            size=size,
            annotations=annotations,
            platform=Platform.from_json(plat) if isinstance(plat, dict) else None,
            urls=tuple(str(u) for u in _list(obj.get("urls"), f"{what} urls")),
        )

    def to_json(self) -> JSON:
        out: JSON = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            plat = {"os": self.platform.os, "architecture": self.platform.architecture}
            if self.platform.variant:
                plat["variant"] = self.platform.variant
            out["platform"] = plat
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str]

    @classmethod
    def parse(cls, data: bytes, what: str = "manifest") -> Manifest:
        obj = load_json(data, what)
        _check_schema(obj, what)
        media_type = str(obj.get("mediaType") or OCI_MANIFEST)
        if media_type not in MANIFEST_TYPES:
            raise InvalidImageError(f"{what}: not an image manifest ({media_type})")
        config = Descriptor.from_json(obj.get("config"), f"{what} config")
        layers_raw = _get(obj, "layers", list, what)
        layers = tuple(Descriptor.from_json(d, f"{what} layer {i}")
                       for i, d in enumerate(layers_raw))
        for i, layer in enumerate(layers):
            if layer.media_type not in LAYER_TYPES:
                raise InvalidImageError(f"{what} layer {i}: unsupported media type "
                                        f"{layer.media_type!r}")
        return cls(media_type, config, layers, _dict(obj.get("annotations"), f"{what} annotations"))

    def to_json(self) -> bytes:
        obj: JSON = {"schemaVersion": 2, "mediaType": self.media_type,
                     "config": self.config.to_json(),
                     "layers": [d.to_json() for d in self.layers]}
        if self.annotations:
            obj["annotations"] = self.annotations
        return dump_json(obj)


@dataclass(frozen=True, slots=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str]

    @classmethod
    def parse(cls, data: bytes, what: str = "index") -> Index:
        obj = load_json(data, what)
        _check_schema(obj, what)
        media_type = str(obj.get("mediaType") or OCI_INDEX)
        if media_type not in INDEX_TYPES:
            raise InvalidImageError(f"{what}: not an image index ({media_type})")
        raw = _get(obj, "manifests", list, what)
        descs = tuple(Descriptor.from_json(d, f"{what} entry {i}") for i, d in enumerate(raw))
        return cls(media_type, descs, _dict(obj.get("annotations"), f"{what} annotations"))

    def to_json(self) -> bytes:
        obj: JSON = {"schemaVersion": 2, "mediaType": self.media_type,
                     "manifests": [d.to_json() for d in self.manifests]}
        if self.annotations:
            obj["annotations"] = self.annotations
        return dump_json(obj)


def select_platform(index: Index, want: Platform | None = None) -> Descriptor:
    """The manifest of an index for the host platform (exact variant preferred)."""
    want = want or host_platform()
    candidates = [d for d in index.manifests
                  if d.platform is not None and d.platform.os == want.os
                  and d.platform.architecture == want.architecture]
    exact = [d for d in candidates if d.platform and d.platform.variant == want.variant]
    if exact or candidates:
        return (exact or candidates)[0]
    if len(index.manifests) == 1 and index.manifests[0].platform is None:
        return index.manifests[0]
    have = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
    raise InvalidImageError(f"no image for platform {want} in the index (has: {have})")


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    created: str
    created_by: str
    comment: str
    empty_layer: bool


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """An image config; ``raw`` is the whole parsed JSON, kept for inspect."""

    raw: JSON
    diff_ids: tuple[Digest, ...]

    @classmethod
    def parse(cls, data: bytes, what: str = "image config") -> ImageConfig:
        obj = load_json(data, what)
        rootfs = _get(obj, "rootfs", dict, what)
        if rootfs.get("type") != "layers":
            raise InvalidImageError(f"{what}: rootfs.type must be 'layers'")
        diff_ids = tuple(_digest(d, f"{what} diff_id {i}")
                         for i, d in enumerate(_get(rootfs, "diff_ids", list, what)))
        return cls(obj, diff_ids)

    @property
    def created(self) -> str:
        return str(self.raw.get("created") or "")

    @property
    def platform(self) -> Platform:
        return Platform(str(self.raw.get("os", "")), str(self.raw.get("architecture", "")),
                        str(self.raw.get("variant", "")))

    @property
    def labels(self) -> dict[str, str]:
        cfg = self.raw.get("config")
        labels = cfg.get("Labels") if isinstance(cfg, dict) else None
        return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}

    def history(self) -> list[HistoryEntry]:
        raw = self.raw.get("history")
        out = []
        for h in raw if isinstance(raw, list) else []:
            if isinstance(h, dict):
                out.append(HistoryEntry(str(h.get("created") or ""), str(h.get("created_by") or ""),
                                        str(h.get("comment") or ""), bool(h.get("empty_layer"))))
        return out
