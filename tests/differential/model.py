"""Layer trees as data: node types, the seeded random generator and the overlay merge model.

A *layer* is a ``dict`` from a relative path (``"d1/a"``, ``/``-separated, never empty) to a
node.  A *stack* is the list of lower layers, top first (the ``lowerdir=`` order), plus an
optional pre-populated upper layer.  The same data is materialised once per mount (build.py),
so both mounts start from byte-identical trees.

The generator keeps to what the kernel defines: whiteouts only in directories that are merged
with a directory below (elsewhere the kernel shows them raw, an undefined state), never inside
an opaque directory, symlink targets that only descend (no ``..``, never absolute) so following
a link can never leave the tree under test.  ``merged_view`` is the union rule (first layer
wins, whiteouts mask, an opaque directory or a non-directory stops the descent); the op
generator uses it to aim at paths that exist.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

Xattrs = tuple[tuple[str, bytes], ...]

BASE_TIME_NS = 1_000_000_000 * 10**9
"""Generated times lie in 2001..2004; anything after 2010 counts as "now" (see snapshot.py)."""


@dataclass(frozen=True)
class Meta:
    """Ownership, permission bits, mtime and xattrs of one node."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: Xattrs = ()


@dataclass(frozen=True)
class File:
    """A regular file: ``chunks`` of data at offsets, then truncated/extended to ``size``."""

    meta: Meta
    chunks: tuple[tuple[int, bytes], ...]
    size: int


@dataclass(frozen=True)
class Dir:
    meta: Meta
    opaque: bool = False


@dataclass(frozen=True)
class Symlink:
    meta: Meta
    target: str


@dataclass(frozen=True)
class Hardlink:
    """A second name for the regular file at ``target`` in the same layer."""

    target: str


@dataclass(frozen=True)
class Fifo:
    meta: Meta


@dataclass(frozen=True)
class Whiteout:
    """A char 0/0 device: hides the same name in the layers below."""


Node = File | Dir | Symlink | Hardlink | Fifo | Whiteout
Layer = dict[str, Node]


@dataclass(frozen=True)
class Stack:
    """What one mount is made of: lowers top first, and the upper's initial content."""

    lowers: tuple[Layer, ...]
    upper: Layer = field(default_factory=dict)


NAMES = ("a", "b", "c", "d", "e", "f", "g")
RARE_NAMES = (".wh.a", "x y", "long-name-" + "n" * 40)
OWNERS = ((0, 0), (0, 0), (1000, 1000), (1234, 5678), (0, 100))
FILE_MODES = (0o644, 0o644, 0o600, 0o755, 0o4755, 0o2755, 0o6711, 0o444, 0o000, 0o666, 0o1644)
DIR_MODES = (0o755, 0o755, 0o700, 0o1777, 0o2775, 0o555, 0o000, 0o711)
XATTR_NAMES = ("user.k1", "user.k2", "user.overlay.x", "trusted.t1")


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def children_index(layer: Layer) -> dict[str, list[str]]:
    """Parent path ("" for the root) -> child names, for one layer."""
    index: dict[str, list[str]] = {}
    for path in layer:
        parent, _, name = path.rpartition("/")
        index.setdefault(parent, []).append(name)
    return index


def merged_view(layers: list[Layer]) -> dict[str, str]:
    """Path -> kind ("f", "d", "l", "p") of the union of ``layers`` (top first)."""
    indexes = [children_index(layer) for layer in layers]
    view: dict[str, str] = {}

    def walk(path: str, active: list[int]) -> None:
        names: list[str] = []
        for i in active:
            names.extend(n for n in indexes[i].get(path, ()) if n not in names)
        for name in names:
            child = join(path, name)
            present = [i for i in active if child in layers[i]]
            node = layers[present[0]][child]
            if isinstance(node, Whiteout):
                continue
            if not isinstance(node, Dir):
                view[child] = kind_of(node)
                continue
            sub: list[int] = []
            for i in present:
                below = layers[i][child]
                if not isinstance(below, Dir):
                    break
                sub.append(i)
                if below.opaque:
                    break
            view[child] = "d"
            walk(child, sub)

    walk("", list(range(len(layers))))
    return view


def kind_of(node: Node) -> str:
    if isinstance(node, File | Hardlink):
        return "f"
    if isinstance(node, Dir):
        return "d"
    if isinstance(node, Symlink):
        return "l"
    if isinstance(node, Fifo):
        return "p"
    return "w"


class TreeGenerator:
    """Seeded generator of one stack of 2..4 lowers (and maybe an upper)."""

    def __init__(self, rng: random.Random, *, wh_names: bool = True,
                 hardlinks: bool = True) -> None:
        self.rng = rng
        self.hardlinks = hardlinks
        self.names = NAMES + (RARE_NAMES if wh_names else RARE_NAMES[1:])

    def stack(self, nlowers: int) -> Stack:
        layers: list[Layer] = []
        for _ in range(nlowers):
            layers.insert(0, self.layer(layers, bottom=not layers))
        upper = self.layer(layers, bottom=False) if self.rng.random() < 0.3 else {}
        return Stack(tuple(layers), upper)

    def meta(self, modes: tuple[int, ...], *, xattrs: bool = True) -> Meta:
        rng = self.rng
        uid, gid = rng.choice(OWNERS)
        attrs: list[tuple[str, bytes]] = []
        if xattrs:
            for name in XATTR_NAMES:
                if rng.random() < 0.15:
                    attrs.append((name, rng.randbytes(rng.choice((0, 1, 7, 40)))))
        mtime = BASE_TIME_NS + rng.randrange(10**8) * 10**9 + rng.randrange(10**9)
        return Meta(rng.choice(modes), uid, gid, mtime, tuple(attrs))

    def content(self) -> tuple[tuple[tuple[int, bytes], ...], int]:
        rng = self.rng
        shape = rng.random()
        if shape < 0.2:
            return (), 0
        if shape < 0.35:  # sparse-ish: a few islands of data in a mostly empty file
            size = rng.randrange(70_000, 300_000)
            offs = sorted(rng.randrange(size) for _ in range(rng.randint(0, 3)))
            return tuple((o, rng.randbytes(rng.randint(1, 5000))) for o in offs), size
        data = rng.randbytes(rng.choice((1, 3, 100, 4095, 4096, 4097, 9000)))
        return ((0, data),), len(data)

    def layer(self, below: list[Layer], *, bottom: bool) -> Layer:
        """One layer generated on top of ``below`` (top first), so names collide on purpose."""
        view = merged_view(below)
        layer: Layer = {}
        self.fill(layer, view, "", merged=not bottom, depth=0, opaque_above=False)
        return layer

    def fill(
        self, layer: Layer, view: dict[str, str], path: str, *, merged: bool, depth: int,
        opaque_above: bool,
    ) -> None:
        rng = self.rng
        prefix = path + "/" if path else ""
        existing = [p[len(prefix):] for p in view if p.startswith(prefix) and p != path]
        existing = [n for n in existing if "/" not in n]
        count = rng.randint(0, 5 if depth else 7)
        for _ in range(count):
            pool = existing if existing and rng.random() < 0.6 else list(self.names)
            child = join(path, rng.choice(pool))
            if child in layer:
                continue
            layer[child] = self.node(layer, view, child, merged, depth, opaque_above)
            node = layer[child]
            if isinstance(node, Dir):
                sub_merged = merged and view.get(child) == "d" and not node.opaque
                self.fill(
                    layer, view, child, merged=sub_merged, depth=depth + 1,
                    opaque_above=opaque_above or node.opaque,
                )

    def node(
        self, layer: Layer, view: dict[str, str], path: str, merged: bool, depth: int,
        opaque_above: bool,
    ) -> Node:
        rng = self.rng
        kinds = ["file"] * 8 + ["symlink"] * 2 + ["fifo"]
        if depth < 3:
            kinds += ["dir"] * 5
        if merged and not opaque_above and path in view:
            kinds += ["whiteout"] * 5
        if self.hardlinks and any(isinstance(n, File) for n in layer.values()):
            kinds += ["hardlink"] * 2
        kind = rng.choice(kinds)
        if kind == "file":
            chunks, size = self.content()
            return File(self.meta(FILE_MODES), chunks, size)
        if kind == "dir":
            return Dir(self.meta(DIR_MODES), opaque=rng.random() < 0.2)
        if kind == "symlink":
            return Symlink(self.meta((0o777,), xattrs=False), self.link_target(view))
        if kind == "fifo":
            return Fifo(self.meta(FILE_MODES, xattrs=False))
        if kind == "whiteout":
            return Whiteout()
        files = sorted(p for p, n in layer.items() if isinstance(n, File))
        return Hardlink(rng.choice(files))

    def link_target(self, view: dict[str, str]) -> str:
        """A relative target that only descends: it can never point out of the tree."""
        rng = self.rng
        if view and rng.random() < 0.6:
            return rng.choice(sorted(view))
        return rng.choice(("a", "b", "nowhere", "d1/a", "a/b"))
