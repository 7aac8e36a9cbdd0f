"""Writing images out: docker-archive, oci-archive and oci-dir (what ``mounttool save`` makes).

Output is deterministic (sorted, mtime 0, root-owned) and atomic: a tar is written beside its
destination and renamed into place, an OCI directory is built beside it and renamed; stdout gets
the tar stream directly.  docker-archive layers are always uncompressed ``<diff_id>/layer.tar``
as ``docker load`` expects; OCI layouts carry the blobs exactly as stored (same digests).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mounttool import oci
from mounttool.blobs import BlobStore
from mounttool.digest import Digest, VerifyingReader
from mounttool.errors import MountToolError
from mounttool.fsutil import remove_tree
from mounttool.images import ImageInfo
from mounttool.refs import parse_reference
from mounttool.tarstream import open_layer_stream

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


def write_docker(out: _TarOut, blobs: BlobStore, items: list[SaveItem], spool: Path) -> None:
    entries: list[dict[str, object]] = []
    repos: dict[str, dict[str, str]] = {}
    written: set[str] = set()
    for item in items:
        info = item.info
        cfg_path = f"{info.record.id.hex}.json"
        if cfg_path not in written:
            written.add(cfg_path)
            _add_blob(out, blobs, info.record.id, cfg_path)
        layer_paths = []
        for desc, diff_id in zip(info.manifest.layers, info.config.diff_ids, strict=True):
            path = f"{diff_id.hex}/layer.tar"
            layer_paths.append(path)
            if path not in written:
                written.add(path)
                _add_bytes(out, f"{diff_id.hex}/VERSION", b"1.0")
                _add_bytes(out, f"{diff_id.hex}/json", json.dumps({"id": diff_id.hex}).encode())
                with _uncompressed(blobs, desc.digest, diff_id, spool) as (f, size):
                    out.add(path, f, size)
        tags = []
        for name in item.names:
            ref = parse_reference(name)
            tags.append(ref.familiar)
            if layer_paths:
                repos.setdefault(ref.familiar_name, {})[ref.tag or "latest"] = \
                    layer_paths[-1].split("/")[0]
        entries.append({"Config": cfg_path, "RepoTags": tags or None, "Layers": layer_paths})
    _add_bytes(out, "manifest.json", json.dumps(entries).encode())
    if repos:
        _add_bytes(out, "repositories", json.dumps(repos, sort_keys=True).encode())


@contextlib.contextmanager
def _uncompressed(blobs: BlobStore, digest: Digest, diff_id: Digest,
                  spool: Path) -> Iterator[tuple[BinaryIO, int]]:
    if digest == diff_id:
        with blobs.open(digest) as f:
            yield f, blobs.size(digest)
        return
    with tempfile.TemporaryFile(dir=spool) as tmp, blobs.open(digest) as src:
        stream, _ = open_layer_stream(src, f"layer {digest}")
        reader = VerifyingReader(stream, diff_id, None, f"layer {digest} (uncompressed)")
        while chunk := reader.read(1 << 20):
            tmp.write(chunk)
        reader.verify()
        tmp.seek(0)
        yield tmp, reader.size


def save(blobs: BlobStore, items: list[SaveItem], fmt: str, dest: str, spool: Path,
         stdout: BinaryIO | None = None) -> None:
    """Write ``items`` in ``fmt`` to ``dest`` ('-' for stdout; a directory for oci-dir)."""
    if fmt == "oci-dir":
        _save_dir(blobs, items, Path(dest))
        return
    if dest == "-":
        if stdout is None:
            raise MountToolError("cannot write an archive to standard output here", 2)
        _write_tar(blobs, items, fmt, stdout, spool)
        return
    path = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as f:
            _write_tar(blobs, items, fmt, f, spool)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_tar(blobs: BlobStore, items: list[SaveItem], fmt: str, f: BinaryIO,
               spool: Path) -> None:
    out = _TarOut(f)
    if fmt == "docker-archive":
        write_docker(out, blobs, items, spool)
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
