"""The image catalogue (``images.json``): image records by id, and names/tags → image id.

An image id is its config digest (as docker's).  A record points at its manifest blob; layers,
config and sizes are derived from the verified blobs.  Every change is written atomically, last,
inside the command's transaction.  ``resolve`` accepts what docker accepts: a name (with
``:latest`` implied), ``name@digest``, or a unique prefix of the id.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mounttool import oci
from mounttool.blobs import BlobStore
from mounttool.digest import Digest, chain_ids
from mounttool.errors import (
    InvalidDigestError,
    InvalidReferenceError,
    MountToolError,
    NotFoundError,
    StoreError,
)
from mounttool.layerstore import LayerStore
from mounttool.mounting import live_mounts
from mounttool.refs import Reference, parse_reference
from mounttool.store import Store, atomic_write

_HEX = re.compile(r"(?:sha256:)?([0-9a-f]{1,64})")


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: Digest
    manifest: Digest
    added: str


@dataclass(slots=True)
class Catalogue:
    images: dict[Digest, ImageRecord] = field(default_factory=dict)
    tags: dict[str, Digest] = field(default_factory=dict)

    def names_of(self, image: Digest) -> list[str]:
        return sorted(n for n, i in self.tags.items() if i == image)

    def to_json(self) -> bytes:
        obj = {"version": 1,
               "images": {str(r.id): {"manifest": str(r.manifest), "added": r.added}
                          for r in sorted(self.images.values(), key=lambda r: r.id)},
               "tags": {n: str(i) for n, i in sorted(self.tags.items())}}
        return json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Catalogue:
        obj = json.loads(data)
        if not isinstance(obj, dict) or obj.get("version") != 1:
            raise ValueError("unknown catalogue version")
        images = {}
        for key, rec in obj["images"].items():
            image = Digest.parse(key)
            images[image] = ImageRecord(image, Digest.parse(rec["manifest"]), str(rec["added"]))
        tags = {str(n): Digest.parse(i) for n, i in obj["tags"].items()}
        return cls(images, tags)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    record: ImageRecord
    manifest: oci.Manifest
    config: oci.ImageConfig
    chain_ids: list[Digest]
    names: list[str]
    size: int


def containers_using(store: Store, image: Digest) -> list[str]:
    """What uses ``image`` ("container NAME", "the mount at PATH"), for messages and checks.

    The contract with containers.py: each container keeps ``containers/<id>/container.json``
    holding at least ``{"image": "sha256:...", "name": ...}``; ``mount --image`` records
    ``imagemounts/<key>.json`` holding ``{"image": ..., "mountpoint": ...}``.
    """
    out = []
    cdir = store.root / "containers"
    for entry in sorted(cdir.iterdir()) if cdir.is_dir() else []:
        obj = _read_json(entry / "container.json")
        if obj.get("image") == str(image):
            out.append(f"container {obj.get('name') or entry.name}")
    mdir = store.root / "imagemounts"
    records = sorted(mdir.glob("*.json")) if mdir.is_dir() else []
    live = live_mounts() if records else set()
    for record in records:
        obj = _read_json(record)
        if obj.get("image") == str(image) and obj.get("mountpoint") in live:
            out.append(f"the mount at {obj['mountpoint']}")
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


class ImageStore:
    """Catalogue access plus the derived views the CLI needs."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.blobs = BlobStore(store)
        self.layers = LayerStore(store)
        store.recovery = self._recover

    def _recover(self) -> None:
        self.collect_garbage(self.load())

    def load(self) -> Catalogue:
        try:
            return Catalogue.from_json(self.store.catalogue.read_bytes())
        except FileNotFoundError:
            return Catalogue()
        except (ValueError, KeyError, TypeError, AttributeError, InvalidDigestError) as exc:
            raise StoreError(f"the image catalogue {self.store.catalogue} is damaged: "
                             f"{exc}") from None

    def save(self, cat: Catalogue) -> None:
        self.store.require_exclusive()
        atomic_write(self.store.catalogue, cat.to_json())

    def info(self, cat: Catalogue, image: Digest) -> ImageInfo:
        rec = cat.images[image]
        manifest = oci.Manifest.parse(self.blobs.read(rec.manifest), f"manifest {rec.manifest}")
        config = oci.ImageConfig.parse(self.blobs.read(image), f"config {image}")
        chains = chain_ids(list(config.diff_ids))
        size = sum(self.layers.meta(c).size for c in chains if self.layers.has(c))
        return ImageInfo(rec, manifest, config, chains, cat.names_of(image), size)

    def resolve(self, cat: Catalogue, text: str) -> Digest:
        """The image a user's word means: name[:tag], name@digest, or an id prefix."""
        ref: Reference | None
        try:
            ref = parse_reference(text)
        except InvalidReferenceError:
            ref = None
        if ref is not None and ref.digest is None:
            found = cat.tags.get(str(ref.with_default_tag()))
            if found is not None:
                return found
        if ref is not None and ref.digest is not None:
            for rec in cat.images.values():
                if ref.digest in (rec.manifest, rec.id):
                    return rec.id
        match = _HEX.fullmatch(text)
        if match:
            hits = [i for i in cat.images if i.hex.startswith(match.group(1))]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise MountToolError(f"image id prefix {text!r} is ambiguous")
        if ref is None and not match:
            parse_reference(text)  # raises the reference error with docker's wording
        raise NotFoundError(f"no such image: {text}")

    def referenced(self, cat: Catalogue) -> tuple[set[Digest], set[Digest]]:
        """Blobs and layer chain ids that some image in the catalogue uses."""
        blobs: set[Digest] = set()
        layers: set[Digest] = set()
        for rec in cat.images.values():
            blobs.update((rec.id, rec.manifest))
            try:
                info = self.info(cat, rec.id)
            except MountToolError:
                continue
            blobs.update(d.digest for d in info.manifest.layers)
            layers.update(info.chain_ids)
        return blobs, layers

    def collect_garbage(self, cat: Catalogue) -> int:
        """Remove blobs and layers no image uses; returns the bytes freed."""
        self.store.require_exclusive()
        keep_blobs, keep_layers = self.referenced(cat)
        freed = 0
        for chain in self.layers.all():
            if chain not in keep_layers:
                freed += self.layers.remove(chain)
        for digest in list(self.blobs.all()):
            if digest not in keep_blobs:
                freed += self.blobs.delete(digest)
        return freed
