"""Container records: an image's layers as lowers plus the container's own upper and work dirs.

``containers/<id>/`` holds ``container.json`` (id, name, image, created, mountpoint), ``upper/``
and ``work/``.  The upper dir persists across mounts and reboots; a container is mounted when
its recorded mountpoint is a live unionfs mount (checked in /proc/self/mountinfo).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from mounttool.digest import Digest
from mounttool.errors import ConflictError, MountToolError, NotFoundError, UsageError
from mounttool.fsutil import disk_usage, remove_tree
from mounttool.images import ImageStore, now_iso
from mounttool.store import Store, atomic_write

_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_ADJ = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry")
_NOUN = ("curie", "darwin", "euler", "gauss", "hopper", "knuth", "lovelace", "noether", "turing")


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    name: str
    image: str
    image_ref: str
    created: str
    mountpoint: str = ""


class Containers:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = store.root / "containers"

    def dir(self, c: Container) -> Path:
        return self.root / c.id

    def upper(self, c: Container) -> Path:
        return self.dir(c) / "upper"

    def work(self, c: Container) -> Path:
        return self.dir(c) / "work"

    def all(self) -> list[Container]:
        out = []
        for entry in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            try:
                obj = json.loads((entry / "container.json").read_bytes())
                out.append(Container(**obj))
            except (OSError, ValueError, TypeError):
                continue
        return sorted(out, key=lambda c: c.created, reverse=True)

    def get(self, word: str) -> Container:
        """By name, full id or unique id prefix."""
        every = self.all()
        for c in every:
            if word in (c.name, c.id):
                return c
        hits = [c for c in every if c.id.startswith(word)] if word else []
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise MountToolError(f"container id prefix {word!r} is ambiguous")
        raise NotFoundError(f"no such container: {word}")

    def save(self, c: Container) -> None:
        atomic_write(self.dir(c) / "container.json",
                     json.dumps(asdict(c), indent=1, sort_keys=True).encode())

    def create(self, images: ImageStore, image_word: str, name: str | None) -> Container:
        with self.store.locked(exclusive=True):
            cat = images.load()
            image = images.resolve(cat, image_word)
            taken = {c.name for c in self.all()}
            if name is not None:
                if not _NAME.fullmatch(name):
                    raise UsageError(f"invalid container name {name!r}: use [a-zA-Z0-9][a-zA-Z0-"
                                     "9_.-]*")
                if name in taken:
                    raise ConflictError(f"the container name {name!r} is already in use")
            else:
                name = _free_name(taken)
            c = Container(secrets.token_hex(32), name, str(image), image_word, now_iso())
            tmp = self.store.mkdtemp("container-")
            try:
                for sub in ("upper", "work"):
                    (tmp / sub).mkdir(mode=0o755)
                atomic_write(tmp / "container.json",
                             json.dumps(asdict(c), indent=1, sort_keys=True).encode())
                self.root.mkdir(exist_ok=True)
                os.rename(tmp, self.dir(c))
            except BaseException:
                with contextlib.suppress(OSError):
                    remove_tree(tmp)
                raise
            return c

    def remove(self, c: Container) -> None:
        self.store.require_exclusive()
        doomed = self.store.mkdtemp("rm-") / "c"
        os.rename(self.dir(c), doomed)
        remove_tree(doomed.parent)

    def size(self, c: Container) -> int:
        return disk_usage(self.upper(c))

    def lowers(self, images: ImageStore, c: Container) -> list[Path]:
        """The image's unpacked layers, top first (``lowerdir=`` order)."""
        cat = images.load()
        image = Digest.parse(c.image)
        if image not in cat.images:
            raise NotFoundError(f"container {c.name}: its image {image.short} is gone")
        info = images.info(cat, image)
        return [images.layers.diff_dir(ch) for ch in reversed(info.chain_ids)]


def _free_name(taken: set[str]) -> str:
    while True:
        name = f"{secrets.choice(_ADJ)}_{secrets.choice(_NOUN)}"
        if name not in taken:
            return name
