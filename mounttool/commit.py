"""``commit`` (a container's upper dir becomes a new image layer) and ``export`` (its rootfs).

Commit writes the upper dir as a layer tar (changes.write_layer), then goes through the same
ingest path as ``load``: the new layer is stored, unpacked by chain id and verified, so the new
image mounts to exactly the tree the container showed.  ``--change`` takes Dockerfile-style
instructions (CMD, ENTRYPOINT, ENV, LABEL, USER, WORKDIR, EXPOSE, VOLUME, STOPSIGNAL).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shlex
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from mounttool import oci
from mounttool.changes import write_layer
from mounttool.containers import Container, Containers
from mounttool.digest import Digest, digest_file
from mounttool.errors import UsageError
from mounttool.formats import LayerSource, SourceImage
from mounttool.images import ImageStore, now_iso
from mounttool.ingest import Ingester, Loaded
from mounttool.overlayview import OverlayView
from mounttool.tarwriter import add_entry, open_writer, tarinfo_for

_CHANGES = ("CMD", "ENTRYPOINT", "ENV", "LABEL", "USER", "WORKDIR", "EXPOSE", "VOLUME",
            "STOPSIGNAL")


def apply_change(cfg: dict[str, Any], change: str) -> None:
    """Apply one ``--change 'INSTR args'`` to an image's ``config`` section."""
    instr, _, rest = change.strip().partition(" ")
    instr, rest = instr.upper(), rest.strip()
    if instr not in _CHANGES or not rest:
        raise UsageError(f"invalid --change {change!r}: want one of {', '.join(_CHANGES)} "
                         "with an argument")
    if instr in ("CMD", "ENTRYPOINT"):
        key = "Cmd" if instr == "CMD" else "Entrypoint"
        try:
            value = json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
        except ValueError:
            raise UsageError(f"invalid --change {change!r}: bad JSON array") from None
        cfg[key] = value
    elif instr in ("ENV", "LABEL"):
        key = "Env" if instr == "ENV" else "Labels"
        pairs = [p.split("=", 1) for p in shlex.split(rest)]
        if any(len(p) != 2 for p in pairs):
            raise UsageError(f"invalid --change {change!r}: want KEY=VALUE")
        if instr == "ENV":
            env = {e.split("=", 1)[0]: e for e in cfg.get("Env") or []}
            env.update({k: f"{k}={v}" for k, v in pairs})
            cfg["Env"] = list(env.values())
        else:
            cfg["Labels"] = {**(cfg.get("Labels") or {}), **dict(pairs)}
    elif instr in ("EXPOSE", "VOLUME"):
        key = "ExposedPorts" if instr == "EXPOSE" else "Volumes"
        items = json.loads(rest) if rest.startswith("[") else rest.split()
        cfg[key] = {**(cfg.get(key) or {}),
                    **{(i if "/" in i or instr == "VOLUME" else f"{i}/tcp"): {} for i in items}}
    else:
        cfg[{"USER": "User", "WORKDIR": "WorkingDir", "STOPSIGNAL": "StopSignal"}[instr]] = rest


def commit(images: ImageStore, containers: Containers, c: Container, names: list[str],
           message: str, author: str, changes: list[str]) -> Loaded:
    store = images.store
    with store.locked(exclusive=True), store.transaction() as txn:
        cat = images.load()
        info = images.info(cat, Digest.parse(c.image))
        fd, tmp = tempfile.mkstemp(dir=store.tmp, prefix="commit-")
        try:
            with os.fdopen(fd, "wb") as f:
                write_layer(containers.upper(c), f)
            diff_id, _ = digest_file(tmp)
            blob = images.blobs.put_file(Path(tmp), txn)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        config = _new_config(info.config.raw, diff_id, message, author, changes, c)
        docker = info.manifest.media_type == oci.DOCKER_MANIFEST
        layer = oci.Descriptor(oci.DOCKER_LAYER if docker else oci.OCI_LAYER, blob,
                               images.blobs.size(blob))
        layers = [*info.manifest.layers, layer]
        cfg_desc = oci.Descriptor(info.manifest.config.media_type, Digest.of_bytes(config),
                                  len(config))
        manifest = oci.Manifest(info.manifest.media_type, cfg_desc, tuple(layers), {}).to_json()
        sources = [LayerSource(d.media_type, d.digest, d.size,
                               partial(images.blobs.open, d.digest), f"layer {d.digest}")
                   for d in layers]
        loaded = Ingester(images, txn).add(cat, SourceImage(names, config, sources, manifest))
        images.save(cat)
    return loaded


def _new_config(parent: dict[str, Any], diff_id: Digest, message: str, author: str,
                changes: list[str], c: Container) -> bytes:
    cfg = copy.deepcopy(parent)
    created = now_iso()
    cfg["created"] = created
    if author:
        cfg["author"] = author
    cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"].append(str(diff_id))
    entry = {"created": created, "created_by": f"mounttool commit {c.name}"}
    if message:
        entry["comment"] = message
    if author:
        entry["author"] = author
    cfg.setdefault("history", []).append(entry)
    section = cfg.setdefault("config", {})
    for change in changes:
        apply_change(section, change)
    return oci.dump_json(cfg)


def export(layers: list[Path], out: BinaryIO) -> None:
    """The merged tree of ``layers`` (top first) as a plain tar, as ``docker export`` gives."""
    view = OverlayView(layers)
    links: dict[tuple[int, int], str] = {}
    with open_writer(out) as tar:
        for entry in view.walk():
            arc = b"/".join(entry.parts)
            ti = tarinfo_for(entry.path, arc, entry.st, links, None)
            if ti is not None:
                add_entry(tar, entry.path, ti)
