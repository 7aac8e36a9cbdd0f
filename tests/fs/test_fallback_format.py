"""The unprivileged on-disk format (no mknod): `.wh.<name>` whiteout files and `.wh..wh..opq`
opaque markers, with `user.overlay.*` xattrs, driven in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.trees import Dir, make_tree, tree_hash
from unionfs.core import UnionFS
from unionfs.spec import parse
from unionfs.tree import Caller

ROOT = Caller(0, 0, 0)


@pytest.fixture
def union(tmp_path: Path):  # type: ignore[no-untyped-def]
    lower = make_tree(tmp_path / "l", {"a": b"a", "d/": Dir(), "d/x": b"x", "keep/": Dir(),
                                       "keep/.wh.ordinary": b"", "hidden": b"h"})
    upper = make_tree(tmp_path / "u", {".wh.hidden": b""})
    (tmp_path / "w").mkdir()
    (tmp_path / "m").mkdir()
    before = tree_hash(lower)
    spec = parse([f"lowerdir={lower},upperdir={upper},workdir={tmp_path / 'w'}"],
                 str(tmp_path / "m"), is_root=False)
    assert spec.whiteout.dot_wh and spec.whiteout.xattr_prefix == b"user.overlay."
    fs = UnionFS(spec)
    yield fs, upper
    fs.close()
    assert tree_hash(lower) == before


def names(fs: UnionFS, path: bytes = b"") -> list[bytes]:
    node = fs.tree.root
    for part in filter(None, path.split(b"/")):
        node = fs.tree.lookup(node, part)
    return sorted(n for n, _ in fs.tree.list_dir(node)[0])


def test_markers_hide_and_are_never_listed(union) -> None:  # type: ignore[no-untyped-def]
    fs, _ = union
    assert names(fs) == [b"a", b"d", b"keep"]
    assert names(fs, b"keep") == []  # `.wh.` names are markers in this format
    with pytest.raises(FileNotFoundError):
        fs.tree.lookup(fs.tree.root, b"hidden")


def test_unlink_rmdir_mkdir_write_markers(union) -> None:  # type: ignore[no-untyped-def]
    fs, upper = union
    root = fs.tree.root
    fs.names.unlink(root, b"a")
    assert (upper / ".wh.a").is_file()
    d = fs.tree.lookup(root, b"d")
    fs.names.unlink(d, b"x")
    fs.names.rmdir(root, b"d")
    assert (upper / ".wh.d").is_file() and not (upper / "d").exists()
    fs.names.mkdir(root, b"d", 0o755, ROOT)
    assert (upper / "d" / ".wh..wh..opq").is_file()
    assert not (upper / ".wh.d").exists()
    assert names(fs, b"d") == []
    assert names(fs) == [b"d", b"keep"]


def test_creating_a_marker_name_is_refused(union) -> None:  # type: ignore[no-untyped-def]
    fs, _ = union
    with pytest.raises(OSError):
        fs.names.mkdir(fs.tree.root, b".wh.x", 0o755, ROOT)
    assert names(fs) == [b"a", b"d", b"keep"]


def test_names_alone_match_the_listing(union) -> None:  # type: ignore[no-untyped-def]
    fs, _ = union
    root = fs.tree.root
    assert sorted(fs.tree.stack.list_names(root.dir_layers, b"")) == names(fs)
    keep = fs.tree.lookup(root, b"keep")
    assert fs.tree.stack.list_names(keep.dir_layers, b"keep") == frozenset()
