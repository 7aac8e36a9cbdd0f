"""The union rules: which layer's entry a merged name shows, and what a merged directory lists.

These are kernel overlayfs's rules, applied layer by layer from the top:

* the topmost layer holding a name provides it; a whiteout there hides the name (and every layer
  below);
* a non-directory ends the search: nothing below it shows;
* a directory merges with the directories of the same name below it, until a layer's directory is
  opaque, or a layer holds a non-directory or a whiteout under that name.

A merged directory is described by the layers it draws from (``dir_layers``, top first); a child
can only come from those layers.  Layer 0 is the upper layer when the mount has one.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from unionfs.layers import Layer, join
from unionfs.whiteout import (
    WhiteoutFormat,
    has_whiteout_marker,
    hidden_by_marker,
    is_opaque,
    is_whiteout_stat,
)


@dataclass(slots=True)
class Resolved:
    """Where a visible merged entry comes from."""

    layer: int
    """Index of the layer holding the visible (topmost) entry."""
    st: os.stat_result
    """lstat of that entry."""
    dir_layers: tuple[int, ...] = ()
    """For a directory, the layers merged into it, top first; empty for other types."""

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


class LayerStack:
    """The ordered layers of one mount (upper first, if any) and the rules that merge them."""

    __slots__ = ("fmt", "has_upper", "layers")

    def __init__(self, layers: list[Layer], has_upper: bool, fmt: WhiteoutFormat) -> None:
        self.layers = layers
        self.has_upper = has_upper
        self.fmt = fmt

    def is_upper(self, index: int) -> bool:
        return self.has_upper and index == 0

    def _opaque(self, layer: Layer, rel: bytes) -> bool:
        return is_opaque(layer.fd, rel, self.fmt)

    def root(self) -> Resolved:
        """The merged root: every layer's root directory (an opaque root stops the merge)."""
        indexes: list[int] = []
        for layer in self.layers:
            indexes.append(layer.index)
            if layer.index != self.layers[-1].index and self._opaque(layer, b""):
                break
        return Resolved(indexes[0], os.stat(self.layers[indexes[0]].fd), tuple(indexes))

    def resolve(self, dir_layers: tuple[int, ...], parent: bytes, name: bytes) -> Resolved | None:
        """Look ``name`` up in the merged directory ``parent``; None when nothing is visible."""
        if self.fmt.dot_wh and hidden_by_marker(name) is not None:
            return None
        rel = join(parent, name)
        found: Resolved | None = None
        last = dir_layers[-1]
        for index in dir_layers:
            layer = self.layers[index]
            st = layer.lstat(rel)
            if st is None:
                if self.fmt.dot_wh and has_whiteout_marker(layer.fd, parent, name):
                    break
                continue
            if is_whiteout_stat(st):
                break
            if found is None:
                if not stat.S_ISDIR(st.st_mode):
                    return Resolved(index, st)
                found = Resolved(index, st, (index,))
            elif stat.S_ISDIR(st.st_mode):
                found.dir_layers += (index,)
            else:
                break
            if index != last and self._opaque(layer, rel):
                break
        return found

    def lower_positive(self, dir_layers: tuple[int, ...], parent: bytes, name: bytes) -> bool:
        """Whether a lower layer shows something at ``name`` that a removal must white out.

        The kernel's ``ovl_lower_positive``: the first lower layer of the parent that holds the
        name decides; a whiteout there means nothing shows.
        """
        rel = join(parent, name)
        for index in dir_layers:
            if self.is_upper(index):
                continue
            layer = self.layers[index]
            st = layer.lstat(rel)
            if st is None:
                if self.fmt.dot_wh and has_whiteout_marker(layer.fd, parent, name):
                    return False
                continue
            return not is_whiteout_stat(st)
        return False

    def list_dir(self, dir_layers: tuple[int, ...], rel: bytes) -> dict[bytes, Resolved]:
        """The merged listing of a directory: visible name -> where it comes from.

        Names keep the order in which the layers list them, top layer first, so the upper
        layer's entries come first, as with the kernel.
        """
        entries: dict[bytes, Resolved | None] = {}  # None: hidden by a whiteout
        still_merging: set[bytes] = set()
        last = dir_layers[-1]
        for index in dir_layers:
            layer = self.layers[index]
            for entry in layer.scandir(rel):
                name = entry.name
                if self.fmt.dot_wh:
                    hidden = hidden_by_marker(name)
                    if name.startswith(b".wh."):
                        if hidden is not None:
                            entries.setdefault(hidden, None)
                            still_merging.discard(hidden)
                        continue
                if name not in entries:
                    self._first_sight(entries, still_merging, layer, rel, entry, index != last)
                elif name in still_merging:
                    self._merge_below(entries, still_merging, layer, rel, entry, index != last)
        return {name: res for name, res in entries.items() if res is not None}

    def list_names(self, dir_layers: tuple[int, ...], rel: bytes) -> frozenset[bytes]:
        """The names a merged directory shows, from the entries' types alone: no stat per
        entry (only entries that may be whiteouts are looked at), so a cold directory costs
        its getdents calls and not one inode read per entry."""
        names: set[bytes] = set()
        hidden: set[bytes] = set()
        for index in dir_layers:
            for entry in self.layers[index].scandir(rel):
                name = entry.name
                if name in names or name in hidden:
                    continue
                if self.fmt.dot_wh and name.startswith(b".wh."):
                    marked = hidden_by_marker(name)
                    if marked is not None and marked not in names:
                        hidden.add(marked)
                    continue
                if (entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False)
                        or entry.is_symlink()
                        or not is_whiteout_stat(entry.stat(follow_symlinks=False))):
                    names.add(name)
                else:
                    hidden.add(name)
        return frozenset(names)

    def _first_sight(self, entries: dict[bytes, Resolved | None], merging: set[bytes],
                     layer: Layer, rel: bytes, entry: os.DirEntry[bytes], more: bool) -> None:
        st = entry.stat(follow_symlinks=False)
        if is_whiteout_stat(st):
            entries[entry.name] = None
            return
        if not stat.S_ISDIR(st.st_mode):
            entries[entry.name] = Resolved(layer.index, st)
            return
        entries[entry.name] = Resolved(layer.index, st, (layer.index,))
        if more and not self._opaque(layer, join(rel, entry.name)):
            merging.add(entry.name)

    def _merge_below(self, entries: dict[bytes, Resolved | None], merging: set[bytes],
                     layer: Layer, rel: bytes, entry: os.DirEntry[bytes], more: bool) -> None:
        resolved = entries[entry.name]
        assert resolved is not None
        if not entry.is_dir(follow_symlinks=False):
            merging.discard(entry.name)
            return
        resolved.dir_layers += (layer.index,)
        if not more or self._opaque(layer, join(rel, entry.name)):
            merging.discard(entry.name)

    def is_empty_dir(self, dir_layers: tuple[int, ...], rel: bytes) -> bool:
        """Whether the merged directory shows no entries at all."""
        return not self.list_dir(dir_layers, rel)
