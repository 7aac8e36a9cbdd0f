"""Writing images out: docker-archive, oci-archive and oci-dir (what ``mounttool save`` makes).

Output is deterministic (sorted, mtime 0, root-owned) and atomic: a tar is written beside its
destination and renamed into place, an OCI directory is built beside it and renamed; stdout gets
the tar stream directly.  Every format carries the blobs exactly as stored (same digests);
docker-archive is an OCI layout plus the ``manifest.json`` that ``docker load`` reads.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mounttool import oci
from mounttool.blobs import BlobStore
from mounttool.digest import Digest
from mounttool.errors import MountToolError
from mounttool.fsutil import remove_tree
from mounttool.images import ImageInfo
from mounttool.refs import parse_reference
from mounttool.store import atomic_output

FORMATS = ("docker-archive", "oci-archive", "oci-dir")


@dataclass(frozen=True, slots=True)
class SaveItem:
    info: ImageInfo
    names: list[str]
    """Full references to record for this image (may be empty)."""


class _TarOut:
    def __init__(self, out: BinaryIO) -> None:
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.dirs: set[str] = set()

    def _dirs(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                self.tar.addfile(ti)

    def add(self, path: str, src: BinaryIO, size: int) -> None:
        self._dirs(path)
        ti = tarfile.TarInfo(path)
        ti.size, ti.mode = size, 0o644
        self.tar.addfile(ti, src)

    def close(self) -> None:
        self.tar.close()


class _DirOut:
    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, path: str, src: BinaryIO, size: int) -> None:
        dest = self.root / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            return
        with open(dest, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20)

    def close(self) -> None:
        pass


def _add_bytes(out: _TarOut | _DirOut, path: str, data: bytes) -> None:
    out.add(path, io.BytesIO(data), len(data))


def _add_blob(out: _TarOut | _DirOut, blobs: BlobStore, digest: Digest, path: str) -> None:
    with blobs.open(digest) as f:
        out.add(path, f, blobs.size(digest))


def write_oci(out: _TarOut | _DirOut, blobs: BlobStore, items: list[SaveItem]) -> None:
    written: set[Digest] = set()
    descs: list[oci.Descriptor] = []
    for item in items:
        rec = item.info.record
        for digest in (rec.manifest, rec.id, *(d.digest for d in item.info.manifest.layers)):
            if digest not in written:
                written.add(digest)
                _add_blob(out, blobs, digest, f"blobs/{digest.algorithm}/{digest.hex}")
        base = oci.Descriptor(item.info.manifest.media_type, rec.manifest,
                              blobs.size(rec.manifest))
        for name in item.names or [""]:
            ann = {}
            if name:
                ref = parse_reference(name)
                ann = {oci.ANNOTATION_CONTAINERD_NAME: name,
                       oci.ANNOTATION_REF_NAME: ref.tag or "latest"}
            descs.append(oci.Descriptor(base.media_type, base.digest, base.size, ann))
    _add_bytes(out, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    index = oci.Index(oci.OCI_INDEX, tuple(descs), {})
    _add_bytes(out, "index.json", index.to_json())


def write_docker(out: _TarOut, blobs: BlobStore, items: list[SaveItem]) -> None:
    """docker-archive as current docker writes it: an OCI layout plus ``manifest.json`` (and
    ``repositories``) pointing at its blobs, so every loader finds what it looks for.  Layers
    stay as stored (``docker load`` and containers/image decompress them)."""
    write_oci(out, blobs, items)
    entries: list[dict[str, object]] = []
    repos: dict[str, dict[str, str]] = {}
    for item in items:
        info = item.info
        layers = [f"blobs/{d.digest.algorithm}/{d.digest.hex}" for d in info.manifest.layers]
        tags = []
        for name in item.names:
            ref = parse_reference(name)
            tags.append(ref.familiar)
            if info.config.diff_ids:
                repos.setdefault(ref.familiar_name, {})[ref.tag or "latest"] = \
                    info.config.diff_ids[-1].hex
        entries.append({"Config": f"blobs/{info.record.id.algorithm}/{info.record.id.hex}",
                        "RepoTags": tags or None, "Layers": layers})
    _add_bytes(out, "manifest.json", json.dumps(entries).encode())
    if repos:
        _add_bytes(out, "repositories", json.dumps(repos, sort_keys=True).encode())


def save(blobs: BlobStore, items: list[SaveItem], fmt: str, dest: str,
         stdout: BinaryIO | None = None) -> None:
    """Write ``items`` in ``fmt`` to ``dest`` ('-' for stdout; a directory for oci-dir)."""
    if fmt == "oci-dir":
        _save_dir(blobs, items, Path(dest))
        return
    if dest == "-":
        if stdout is None:
            raise MountToolError("cannot write an archive to standard output here", 2)
        _write_tar(blobs, items, fmt, stdout)
        return
    with atomic_output(Path(dest)) as f:
        _write_tar(blobs, items, fmt, f)


def _write_tar(blobs: BlobStore, items: list[SaveItem], fmt: str, f: BinaryIO) -> None:
    out = _TarOut(f)
    if fmt == "docker-archive":
        write_docker(out, blobs, items)
    else:
        write_oci(out, blobs, items)
    out.close()


def _save_dir(blobs: BlobStore, items: list[SaveItem], dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise MountToolError(f"{dest}: exists and is not an empty directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        write_oci(_DirOut(tmp), blobs, items)
        os.chmod(tmp, 0o755)
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(tmp)
        raise
