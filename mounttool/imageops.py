"""Image operations behind the CLI: tag, rmi, prune, df, inspect, history, listing filters.

Each changing operation runs under the exclusive store lock in one transaction and writes the
catalogue last; each returns data (messages, rows, dicts) for cli.py to print.
"""

from __future__ import annotations

import contextlib
import fnmatch
from dataclasses import dataclass
from typing import Any

from mounttool.digest import Digest
from mounttool.display import parse_time
from mounttool.errors import ConflictError, MountToolError, UsageError
from mounttool.fsutil import disk_usage
from mounttool.images import Catalogue, ImageInfo, ImageStore, containers_using
from mounttool.refs import parse_reference, parse_tagged


def tag(images: ImageStore, src: str, dst: str) -> None:
    ref = parse_tagged(dst)
    with images.store.locked(exclusive=True), images.store.transaction():
        cat = images.load()
        cat.tags[str(ref)] = images.resolve(cat, src)
        images.save(cat)


def _is_name(cat: Catalogue, text: str) -> str | None:
    """The tag a word names, if it names one (rather than an id)."""
    try:
        ref = parse_reference(text)
    except MountToolError:
        return None
    full = str(ref.with_default_tag())
    return full if ref.digest is None and full in cat.tags else None


def remove(images: ImageStore, words: list[str], force: bool) -> list[str]:
    """``rmi``: untag names; delete images by id or by their last name.  All or nothing."""
    out: list[str] = []
    with images.store.locked(exclusive=True), images.store.transaction():
        cat = images.load()
        for word in words:
            out.extend(_remove_one(images, cat, word, force))
        images.save(cat)
        images.collect_garbage(cat)
    return out


def _remove_one(images: ImageStore, cat: Catalogue, word: str, force: bool) -> list[str]:
    image = images.resolve(cat, word)
    name = _is_name(cat, word)
    names = cat.names_of(image)
    if name is not None and len(names) > 1:
        del cat.tags[name]
        return [f"Untagged: {parse_reference(name).familiar}"]
    if name is None and len(names) > 1 and not force:
        raise ConflictError(f"conflict: unable to delete {image.short} (must be forced) - "
                            "image is referenced in multiple repositories")
    users = containers_using(images.store, image)
    if users and not force:
        raise ConflictError(f"conflict: unable to remove image {word}: in use by "
                            f"{', '.join(users)} (use -f to untag it)")
    out = []
    for n in names:
        del cat.tags[n]
        out.append(f"Untagged: {parse_reference(n).familiar}")
    if users:  # forced: untagged, but kept (dangling) while a container needs its layers
        return out
    del cat.images[image]
    out.append(f"Deleted: {image}")
    return out


def prune(images: ImageStore, all_images: bool) -> tuple[list[Digest], int]:
    """Remove dangling (or, with ``all_images``, unused) images, then unreferenced data."""
    with images.store.locked(exclusive=True), images.store.transaction():
        cat = images.load()
        doomed = [i for i in sorted(cat.images)
                  if (all_images or not cat.names_of(i))
                  and not containers_using(images.store, i)]
        for image in doomed:
            for n in cat.names_of(image):
                del cat.tags[n]
            del cat.images[image]
        images.save(cat)
        freed = images.collect_garbage(cat)
    return doomed, freed


@dataclass(frozen=True, slots=True)
class Usage:
    kind: str
    total: int
    active: int
    size: int
    reclaimable: int


def usage(images: ImageStore) -> list[Usage]:
    """``df``: what the store holds, what is in use, what prune would free."""
    with images.store.locked(exclusive=False):
        cat = images.load()
        used_blobs, used_layers = images.referenced(cat)
        layers = {c: disk_usage(images.layers.path(c)) for c in images.layers.all()}
        blobs = {d: images.blobs.size(d) for d in images.blobs.all()}
        in_use = {i for i in cat.images if containers_using(images.store, i)}
        dangling = {i for i in cat.images if not cat.names_of(i)} - in_use
        image_layers = sum(layers.get(c, 0) for c in used_layers)
        dangling_only = _exclusive_size(images, cat, dangling, layers)
    return [
        Usage("Images", len(cat.images), len(in_use), image_layers, dangling_only),
        Usage("Layers", len(layers), len(used_layers & layers.keys()), sum(layers.values()),
              sum(s for c, s in layers.items() if c not in used_layers)),
        Usage("Blobs", len(blobs), len(used_blobs & blobs.keys()), sum(blobs.values()),
              sum(s for d, s in blobs.items() if d not in used_blobs)),
    ]


@dataclass(frozen=True, slots=True)
class ImageUsage:
    info: ImageInfo
    size: int
    shared: int
    """Bytes of its unpacked layers that other images use too."""
    containers: int


def image_usage(images: ImageStore) -> list[ImageUsage]:
    """``df -v``: per image, the disk its layers use and how much of it is shared."""
    with images.store.locked(exclusive=False):
        cat = images.load()
        infos = []
        for image in sorted(cat.images):
            with contextlib.suppress(MountToolError):
                infos.append(images.info(cat, image))
        users: dict[Digest, int] = {}
        for info in infos:
            for chain in set(info.chain_ids):
                users[chain] = users.get(chain, 0) + 1
        sizes = {c: disk_usage(images.layers.path(c)) for c in users}
        return [ImageUsage(info, sum(sizes[c] for c in set(info.chain_ids)),
                           sum(sizes[c] for c in set(info.chain_ids) if users[c] > 1),
                           len(containers_using(images.store, info.record.id)))
                for info in infos]


def _exclusive_size(images: ImageStore, cat: Catalogue, doomed: set[Digest],
                    layers: dict[Digest, int]) -> int:
    keep = Catalogue({i: r for i, r in cat.images.items() if i not in doomed}, cat.tags)
    _, kept_layers = images.referenced(keep)
    _, all_layers = images.referenced(cat)
    return sum(layers.get(c, 0) for c in all_layers - kept_layers)


def inspect(images: ImageStore, info: ImageInfo) -> dict[str, Any]:
    """docker-inspect-shaped JSON for an image."""
    cfg = info.config.raw
    names = [parse_reference(n) for n in info.names]
    lowers = [str(images.layers.diff_dir(c)) for c in reversed(info.chain_ids)]
    return {
        "Id": str(info.record.id),
        "RepoTags": [r.familiar for r in names],
        "RepoDigests": sorted({f"{r.familiar_name}@{info.record.manifest}" for r in names}),
        "Created": cfg.get("created", ""),
        "Author": cfg.get("author", ""),
        "Config": cfg.get("config") or {},
        "Architecture": cfg.get("architecture", ""),
        "Variant": cfg.get("variant", ""),
        "Os": cfg.get("os", ""),
        "Size": info.size,
        "RootFS": {"Type": "layers", "Layers": [str(d) for d in info.config.diff_ids]},
        "Manifest": {"Digest": str(info.record.manifest), "MediaType": info.manifest.media_type},
        "GraphDriver": {"Name": "unionfs", "Data": {"LowerDir": ":".join(lowers),
                                                    "ChainIDs": [str(c) for c in
                                                                 info.chain_ids]}},
        "Metadata": {"Added": info.record.added},
    }


@dataclass(frozen=True, slots=True)
class HistoryRow:
    image: Digest | None
    created: str
    created_by: str
    size: int
    comment: str


def history(images: ImageStore, info: ImageInfo) -> list[HistoryRow]:
    """One row per history entry, newest first, sized from the layers they made."""
    sizes = [images.layers.meta(c).size if images.layers.has(c) else 0 for c in info.chain_ids]
    entries = info.config.history()
    rows: list[HistoryRow] = []
    layer = 0
    for h in entries:
        size = 0
        if not h.empty_layer and layer < len(sizes):
            size, layer = sizes[layer], layer + 1
        rows.append(HistoryRow(None, h.created, h.created_by, size, h.comment))
    for extra in sizes[layer:]:  # layers with no history entry
        rows.append(HistoryRow(None, "", "", extra, ""))
    rows.reverse()
    if rows:
        top = rows[0]
        rows[0] = HistoryRow(info.record.id, top.created, top.created_by, top.size, top.comment)
    return rows


def filter_images(images: ImageStore, cat: Catalogue, infos: list[ImageInfo],
                  filters: list[str]) -> list[ImageInfo]:
    """``images --filter``: dangling=, label=K[=V], before=, since=, reference= (ANDed)."""
    out = infos
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep:
            raise UsageError(f"bad filter {f!r}: want KEY=VALUE")
        out = _apply_filter(images, cat, out, key, value)
    return out


def _apply_filter(images: ImageStore, cat: Catalogue, infos: list[ImageInfo], key: str,
                  value: str) -> list[ImageInfo]:
    if key == "dangling":
        if value not in ("true", "false"):
            raise UsageError(f"invalid filter 'dangling={value}': want true or false")
        return [i for i in infos if (not i.names) == (value == "true")]
    if key == "label":
        k, sep, v = value.partition("=")
        return [i for i in infos if k in i.config.labels and (not sep or i.config.labels[k] == v)]
    if key in ("before", "since"):
        pivot = images.info(cat, images.resolve(cat, value)).config.created
        t0 = parse_time(pivot)
        if t0 is None:
            return []
        return [i for i in infos if (t := parse_time(i.config.created)) is not None
                and (t < t0 if key == "before" else t > t0)]
    if key == "reference":
        return [i for i in infos if any(_ref_matches(n, value) for n in i.names)]
    raise UsageError(f"invalid filter {key!r}: want dangling, label, before, since or reference")


def _ref_matches(name: str, pattern: str) -> bool:
    ref = parse_reference(name)
    candidates = {ref.familiar, ref.familiar_name, str(ref), ref.name}
    return any(fnmatch.fnmatchcase(c, pattern) for c in candidates)
