"""The bundled demo image: built from the layer trees in ``layers/`` (files in the repo).

Each ``layers/<n>-<name>/`` directory is one layer, base first, in the OCI layer format as it
would be in a tar: ``.wh.<name>`` files delete, ``.wh..wh..opq`` makes a directory opaque.  The
build is deterministic (sorted entries, fixed times, root-owned, gzip without a timestamp), so
the same repo always gives the same image id and digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

from mounttool import oci

LAYERS = Path(__file__).parent / "layers"
NAME = "localhost/mounttool-demo:1.0"
EPOCH = 1704067200  # 2024-01-01T00:00:00Z
CREATED = "2024-01-01T00:00:00Z"
STEPS = {"1-base": "COPY base/ /   # a tiny root filesystem",
         "2-app": "COPY app/ /    # the app; deletes /etc/motd, replaces /var/lib/demo",
         "3-config": "COPY config/ / # a new greeting; deletes /usr/share/doc/demo"}


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(root: Path) -> bytes:
    """One layer directory as a deterministic, uncompressed tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).parts):
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            ti = tarfile.TarInfo(rel)
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = EPOCH, 0, 0, "root", "root"
            if stat.S_ISDIR(st.st_mode):
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(ti)
                continue
            data = path.read_bytes()
            ti.size = len(data)
            ti.mode = 0o755 if st.st_mode & 0o100 else 0o644
            if path.name.startswith(".wh."):
                ti.mode = 0o600
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def build_layout() -> dict[str, bytes]:
    """The demo image as OCI layout files: path → content."""
    blobs: dict[str, bytes] = {}
    descs, diff_ids, history = [], [], []
    for layer_dir in sorted(p for p in LAYERS.iterdir() if p.is_dir()):
        raw = layer_tar(layer_dir)
        blob = gzip.compress(raw, mtime=0)
        blobs[_digest(blob)] = blob
        descs.append({"mediaType": oci.OCI_LAYER_GZIP, "digest": _digest(blob),
                      "size": len(blob)})
        diff_ids.append(_digest(raw))
        history.append({"created": CREATED, "created_by": STEPS.get(layer_dir.name,
                                                                     layer_dir.name)})
    host = oci.host_platform()
    config = oci.dump_json({
        "architecture": host.architecture, "os": "linux", "created": CREATED,
        "author": "mounttool", "history": history,
        "config": {"Cmd": ["/app/run.sh"], "Env": ["PATH=/bin:/usr/bin"],
                   "Labels": {"org.opencontainers.image.title": "mounttool demo"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    blobs[_digest(config)] = config
    manifest = oci.dump_json({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                              "config": {"mediaType": oci.OCI_CONFIG,
                                         "digest": _digest(config), "size": len(config)},
                              "layers": descs})
    blobs[_digest(manifest)] = manifest
    index = oci.dump_json({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [{
        "mediaType": oci.OCI_MANIFEST, "digest": _digest(manifest), "size": len(manifest),
        "annotations": {oci.ANNOTATION_CONTAINERD_NAME: NAME,
                        oci.ANNOTATION_REF_NAME: NAME.rsplit(":", 1)[1]}}]})
    files = {f"blobs/sha256/{d.split(':')[1]}": b for d, b in blobs.items()}
    files["oci-layout"] = b'{"imageLayoutVersion":"1.0.0"}'
    files["index.json"] = index
    return files


def write_archive(out: Path) -> None:
    """The demo image as an oci-archive that ``mounttool load -i`` (or skopeo) reads."""
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(build_layout().items()):
            ti = tarfile.TarInfo(path)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, EPOCH
            tar.addfile(ti, io.BytesIO(data))
    os.replace(tmp, out)

