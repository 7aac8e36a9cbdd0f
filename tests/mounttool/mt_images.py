"""Test helpers: build OCI layouts, OCI archives and docker-archives in-process."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from mt_helpers import compress

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA = {"": "application/vnd.oci.image.layer.v1.tar",
         "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
         "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Img:
    config: bytes
    manifest: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)
    layer_tars: list[bytes] = field(default_factory=list)

    @property
    def id(self) -> str:
        return sha(self.config)

    @property
    def digest(self) -> str:
        return sha(self.manifest)


def build(layers: list[bytes], compression: str = "gzip", arch: str = "amd64",
          created: str = "2024-01-02T03:04:05Z", labels: dict[str, str] | None = None,
          diff_ids: list[str] | None = None) -> Img:
    blobs: dict[str, bytes] = {}
    descs = []
    for raw in layers:
        blob = compress(raw, compression)
        blobs[sha(blob)] = blob
        descs.append({"mediaType": MEDIA[compression], "digest": sha(blob), "size": len(blob)})
    config = json.dumps({
        "architecture": arch, "os": "linux", "created": created,
        "config": {"Labels": labels or {}, "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers",
                   "diff_ids": [sha(r) for r in layers] if diff_ids is None else diff_ids},
        "history": [{"created": created, "created_by": f"/bin/sh -c step {i}",
                     "comment": "c"} for i in range(len(layers))]}).encode()
    blobs[sha(config)] = config
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": sha(config), "size": len(config)},
                           "layers": descs}).encode()
    blobs[sha(manifest)] = manifest
    return Img(config, manifest, blobs, list(layers))


def write_layout(root: Path, images: list[tuple[str, Img]], index: dict[str, object] | None
                 = None) -> Path:
    """An OCI layout dir; names are io.containerd.image.name annotations ('' = unnamed)."""
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    manifests = []
    for name, img in images:
        for d, data in img.blobs.items():
            (root / "blobs" / "sha256" / d.split(":")[1]).write_bytes(data)
        desc: dict[str, object] = {"mediaType": OCI_MANIFEST, "digest": img.digest,
                                   "size": len(img.manifest)}
        if name:
            desc["annotations"] = {"io.containerd.image.name": name,
                                   "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}
        manifests.append(desc)
    idx = index or {"schemaVersion": 2, "manifests": manifests}
    (root / "index.json").write_text(json.dumps(idx))
    return root


def tar_dir(src: Path, dest: Path, gz: bool = False) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(src.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(src)), recursive=False)
    dest.write_bytes(compress(buf.getvalue(), "gzip" if gz else ""))
    return dest


def write_docker_archive(dest: Path, images: list[tuple[list[str], Img]],
                         manifest_json: object = None, skip: set[str] | None = None,
                         links: dict[str, str] | None = None) -> Path:
    """A legacy docker-archive: <id>.json, <n>/layer.tar (uncompressed), manifest.json."""
    files: dict[str, bytes] = {}
    entries = []
    for tags, img in images:
        cfg = img.id.split(":")[1] + ".json"
        files[cfg] = img.config
        paths = []
        for i, raw in enumerate(img.layer_tars):
            p = f"{sha(raw).split(':')[1][:16]}{i}/layer.tar"
            files[p] = raw
            files[p.replace("layer.tar", "VERSION")] = b"1.0"
            paths.append(p)
        entries.append({"Config": cfg, "RepoTags": tags, "Layers": paths})
    files["manifest.json"] = json.dumps(manifest_json if manifest_json is not None
                                        else entries).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            if skip and name in skip:
                continue
            ti = tarfile.TarInfo(name)
            if links and name in links:  # as old docker save did for equal layers
                ti.type, ti.linkname = tarfile.SYMTYPE, links[name]
                tar.addfile(ti)
                continue
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    dest.write_bytes(buf.getvalue())
    return dest
