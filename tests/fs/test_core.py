"""The union rules driven in-process through UnionFS (no mount): lookups, listings, copy-up,
whiteouts, opaque directories, renames, hardlinks, xattrs."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from support.trees import Dir, Fifo, File, HardLink, Symlink, Whiteout, make_tree, tree_hash
from unionfs.core import UnionFS
from unionfs.files import AttrChange
from unionfs.nodes import Node
from unionfs.spec import parse
from unionfs.syscalls import RENAME_EXCHANGE
from unionfs.tree import Caller
from unionfs.whiteout import is_opaque, is_whiteout_stat

pytestmark = pytest.mark.root
ROOT = Caller(0, 0, 0o022)


class Union:
    """A UnionFS over layers built from data, with path-based helpers for tests."""

    def __init__(self, tmp: Path, lowers: list[dict[str, object]], upper: dict[str, object]):
        self.lower_paths = [make_tree(tmp / f"l{i}", spec) for i, spec in  # type: ignore[arg-type]
                            enumerate(lowers)]
        self.upper_path = make_tree(tmp / "u", upper)  # type: ignore[arg-type]
        (tmp / "w").mkdir()
        (tmp / "m").mkdir()
        self.hashes = [tree_hash(p) for p in self.lower_paths]
        spec = parse([f"lowerdir={':'.join(map(str, self.lower_paths))},upperdir={self.upper_path},"
                      f"workdir={tmp / 'w'}"], str(tmp / "m"))
        self.fs = UnionFS(spec)
        self.tree = self.fs.tree

    @property
    def upper(self) -> Path:
        """The upper directory (current as soon as each request returns)."""
        return self.upper_path

    def node(self, path: str) -> Node:
        node = self.tree.root
        for part in filter(None, path.split("/")):
            node = self.tree.lookup(node, part.encode())
        return node

    def parent(self, path: str) -> tuple[Node, bytes]:
        head, _, name = path.rpartition("/")
        return self.node(head), name.encode()

    def listing(self, path: str = "") -> list[str]:
        return sorted(n.decode() for n, _ in self.tree.list_dir(self.node(path))[0])

    def read(self, path: str) -> bytes:
        fh = self.fs.files.open(self.node(path), os.O_RDONLY, ROOT)
        try:
            return self.fs.files.read(fh, 0, 1 << 20)
        finally:
            self.fs.files.release(fh)

    def write(self, path: str, data: bytes, offset: int = 0, flags: int = os.O_WRONLY) -> None:
        fh = self.fs.files.open(self.node(path), flags, ROOT)
        try:
            self.fs.files.write(fh, offset, data)
        finally:
            self.fs.files.release(fh)

    def upper_stat(self, path: str) -> os.stat_result:
        return os.lstat(self.upper / path)

    def lowers_unchanged(self) -> bool:
        return [tree_hash(p) for p in self.lower_paths] == self.hashes


@pytest.fixture
def make_union(tmp_path: Path):  # type: ignore[no-untyped-def]
    unions: list[Union] = []

    def factory(*lowers: dict[str, object], upper: dict[str, object] | None = None) -> Union:
        u = Union(tmp_path / f"u{len(unions)}", list(lowers), upper or {})
        unions.append(u)
        return u

    yield factory
    for u in unions:
        assert u.lowers_unchanged(), "a lower layer was modified"
        u.fs.close()


def test_lookup_takes_the_topmost_layer(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"a": b"top"}, {"a": b"bottom", "b": b"only-bottom"})
    assert u.read("a") == b"top"
    assert u.read("b") == b"only-bottom"
    with pytest.raises(FileNotFoundError):
        u.node("missing")


def test_directories_merge_until_opaque(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"d/x": b"1", "o/": Dir(opaque=True), "o/top": b""},
                   {"d/y": b"2", "o/hidden": b""})
    assert u.listing("d") == ["x", "y"]
    assert u.listing("o") == ["top"]
    assert u.listing() == ["d", "o"]


def test_whiteouts_and_non_directories_stop_the_descent(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"gone": Whiteout(), "f": b"file"}, {"gone": b"x", "f/": Dir(), "f/in": b""})
    assert u.listing() == ["f"]
    assert stat.S_ISREG(u.tree.attr(u.node("f")).st.st_mode)
    with pytest.raises(FileNotFoundError):
        u.node("gone")


def test_write_copies_up_preserving_metadata(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"dir/": Dir(mode=0o750), "dir/f": File(b"0123456789", mode=0o640, uid=7,
                                                            gid=8, xattrs={"user.k": b"v"})})
    before = u.tree.attr(u.node("dir/f"))
    u.write("dir/f", b"AB", offset=2)
    assert u.read("dir/f") == b"01AB456789"
    up = u.upper_stat("dir/f")
    assert (stat.S_IMODE(up.st_mode), up.st_uid, up.st_gid) == (0o640, 7, 8)
    assert os.getxattr(u.upper / "dir/f", "user.k") == b"v"
    assert stat.S_IMODE(u.upper_stat("dir").st_mode) == 0o750
    assert u.tree.attr(u.node("dir/f")).ino == before.ino  # st_ino stable across copy-up


def test_copy_up_keeps_holes(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({})
    sparse = u.lower_paths[0] / "sparse"
    with open(sparse, "wb") as f:
        f.seek(64 << 20)
        f.write(b"end")
    u.hashes[0] = tree_hash(u.lower_paths[0])
    u.fs.files.setattr(u.node("sparse"), AttrChange(mode=0o600), None, ROOT)
    up = u.upper_stat("sparse")
    assert up.st_size == (64 << 20) + 3
    assert up.st_blocks * 512 < 1 << 20


def test_unlink_whiteouts_only_what_lowers_show(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"low": b"x"}, upper={"mine": b"y"})
    parent, _ = u.parent("low")
    u.fs.names.unlink(parent, b"low")
    u.fs.names.unlink(parent, b"mine")
    assert is_whiteout_stat(u.upper_stat("low"))
    assert not (u.upper / "mine").exists()
    assert u.listing() == []


def test_rmdir_needs_an_empty_merged_view(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"d/a": b""}, {"d/b": b""})
    root = u.tree.root
    with pytest.raises(OSError) as exc:
        u.fs.names.rmdir(root, b"d")
    assert exc.value.errno == errno.ENOTEMPTY
    d = u.node("d")
    u.fs.names.unlink(d, b"a")
    u.fs.names.unlink(d, b"b")
    u.fs.names.rmdir(root, b"d")
    assert is_whiteout_stat(u.upper_stat("d"))
    assert u.listing() == []


def test_mkdir_over_a_whiteout_is_opaque(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"d/old": b""})
    root = u.tree.root
    u.fs.names.unlink(u.node("d"), b"old")
    u.fs.names.rmdir(root, b"d")
    u.fs.names.mkdir(root, b"d", 0o755, ROOT)
    fd = os.open(u.upper, os.O_RDONLY)
    try:
        assert is_opaque(fd, b"d", u.tree.fmt)
    finally:
        os.close(fd)
    assert u.listing("d") == []


def test_create_owned_by_caller_with_umask(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"pub/": Dir(mode=0o777)})
    _, fd = u.fs.names.create(u.node("pub"), b"new", 0o666, os.O_WRONLY,
                                 Caller(1234, 5678, 0o022))
    os.close(fd)
    st = u.upper_stat("pub/new")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o644)


def test_rename_file_across_layers_leaves_whiteout(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"a": b"data", "d/": Dir()})
    u.fs.names.rename(u.tree.root, b"a", u.node("d"), b"b", 0)
    assert u.read("d/b") == b"data"
    assert is_whiteout_stat(u.upper_stat("a"))
    assert u.listing() == ["d"]


def test_rename_of_lower_directory_is_exdev(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"d/x": b""})
    with pytest.raises(OSError) as exc:
        u.fs.names.rename(u.tree.root, b"d", u.tree.root, b"e", 0)
    assert exc.value.errno == errno.EXDEV


def test_rename_upper_dir_into_merged_parent_becomes_opaque(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"p/": Dir(), "p/n/": Dir(), "p/n/lower": b""}, upper={"src/": Dir()})
    u.fs.names.unlink(u.node("p/n"), b"lower")
    u.fs.names.rmdir(u.node("p"), b"n")
    u.fs.names.rename(u.tree.root, b"src", u.node("p"), b"n", 0)
    assert u.listing("p/n") == []


def test_lower_hardlinks_are_one_inode(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"a": b"same", "b": HardLink("a")})
    a, b = u.tree.attr(u.node("a")), u.tree.attr(u.node("b"))
    assert a.ino == b.ino and a.nlink == 2
    u.write("a", b"SAME")
    assert u.read("b") == b"SAME"
    assert u.tree.attr(u.node("b")).nlink == 2


def test_private_xattrs_stay_hidden(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"o/": Dir(opaque=True, xattrs={"user.visible": b"1"})})
    names = u.fs.xattrs.list(u.node("o"))
    assert b"user.visible" in names
    assert not any(n.startswith(b"trusted.overlay.") for n in names)
    u.fs.xattrs.set(u.node("o"), b"trusted.overlay.mine", b"v")
    assert u.fs.xattrs.get(u.node("o"), b"trusted.overlay.mine") == b"v"
    assert os.getxattr(u.upper / "o", "trusted.overlay.overlay.mine") == b"v"


def test_removexattr_missing_does_not_copy_up(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"f": b""})
    with pytest.raises(OSError) as exc:
        u.fs.xattrs.remove(u.node("f"), b"user.none")
    assert exc.value.errno == errno.ENODATA
    assert not (u.upper / "f").exists()


def test_symlink_and_readlink(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"l": Symlink("somewhere")})
    assert u.tree.readlink(u.node("l")) == b"somewhere"
    u.fs.names.symlink(u.tree.root, b"l2", b"else", ROOT)
    assert os.readlink(u.upper / "l2") == "else"


def test_read_only_union_refuses_writes(tmp_path: Path) -> None:
    make_tree(tmp_path / "l", {"f": b"x"})
    (tmp_path / "m").mkdir()
    fs = UnionFS(parse([f"lowerdir={tmp_path / 'l'}"], str(tmp_path / "m")))
    try:
        node = fs.tree.lookup(fs.tree.root, b"f")
        with pytest.raises(OSError) as exc:
            fs.files.open(node, os.O_WRONLY, ROOT)
        assert exc.value.errno == errno.EROFS
    finally:
        fs.close()


def test_work_dir_leftovers_are_recovered(make_union, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    work = tmp_path / "w2"
    (work / "work" / "#crash").mkdir(parents=True)
    (work / "work" / "#file").write_bytes(b"partial")
    make_tree(tmp_path / "l2", {"f": b""})
    (tmp_path / "u2").mkdir()
    (tmp_path / "m2").mkdir()
    fs = UnionFS(parse([f"lowerdir={tmp_path / 'l2'},upperdir={tmp_path / 'u2'},"
                        f"workdir={work}"], str(tmp_path / "m2")))
    fs.close()
    assert list((work / "work").iterdir()) == []


def test_hardlink_index_keeps_links_together(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"a": b"one", "d/": Dir(), "d/b": HardLink("a"), "c": HardLink("a")})
    root = u.tree.root
    u.fs.names.unlink(u.node("d"), b"b")  # a lower name goes: index the upper copy first
    assert is_whiteout_stat(u.upper_stat("d/b"))
    assert u.tree.attr(u.node("a")).nlink == 2
    u.write("c", b"ONE")
    assert u.read("a") == b"ONE"
    u.fs.names.link(u.node("a"), root, b"e")
    assert u.tree.attr(u.node("c")).nlink == 3
    u.fs.names.unlink(root, b"a")
    u.fs.names.unlink(root, b"c")
    assert u.read("e") == b"ONE"
    assert u.tree.attr(u.node("e")).nlink == 1


def test_a_change_through_a_handle_whose_name_is_gone_links_up_no_other_name(make_union) -> None:  # type: ignore[no-untyped-def]
    # The kernel changes the (indexed) data of the unlinked name: the other name of the lower
    # hardlink stays a lower name, its data reached through the index.
    u = make_union({"a/": Dir(), "a/b": b"", "d": HardLink("a/b")})
    assert u.node("d") is u.node("a/b")  # looked up last: the name it is opened by
    node = u.node("a/b")
    fh = u.fs.files.open(node, os.O_RDWR, ROOT)
    u.fs.names.unlink(u.node("a"), b"b")
    u.fs.files.setattr(node, AttrChange(size=4), fh, ROOT)  # ftruncate
    u.fs.files.release(fh)
    assert not (u.upper / "d").exists()
    assert u.read("d") == b"\0" * 4


def test_set_id_bits_cleared_for_a_write_through_a_handle_whose_name_is_gone(make_union) -> None:  # type: ignore[no-untyped-def]
    # Before an unprivileged write the kernel clears set-ID bits with a SETATTR that names no
    # handle; it acts on the written file, so the other name stays a lower name.
    u = make_union({"a/": Dir(), "a/b": File(b"", mode=0o4755), "d": HardLink("a/b")})
    assert u.node("d") is u.node("a/b")
    node = u.node("a/b")
    user = Caller(1000, 1000, 0o022)
    fh = u.fs.files.open(node, os.O_RDWR, user)
    u.fs.names.unlink(u.node("a"), b"b")
    u.fs.files.setattr(node, AttrChange(mode=0o755), None, user)
    u.fs.files.write(fh, 0, b"data")
    u.fs.files.release(fh)
    assert not (u.upper / "d").exists()
    assert u.read("d") == b"data"
    assert stat.S_IMODE(u.tree.attr(u.node("d")).st.st_mode) == 0o755


def test_changing_an_unlinked_open_lower_file_never_touches_the_lower(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"f": b"lower data"})
    node = u.node("f")
    fh = u.fs.files.open(node, os.O_RDONLY, ROOT)
    u.fs.names.unlink(u.tree.root, b"f")
    u.fs.files.setattr(node, AttrChange(mode=0o600), fh, ROOT)
    assert stat.S_IMODE(u.tree.attr(node).st.st_mode) == 0o600
    wh = u.fs.files.open(node, os.O_RDWR, ROOT)
    u.fs.files.write(wh, 0, b"LOWER")
    assert u.fs.files.read(fh, 0, 100) == b"LOWER data"
    u.fs.files.release(wh)
    u.fs.files.release(fh)


def test_rename_exchange_swaps_across_layers(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"a": b"lower-a"}, upper={"b": b"upper-b"})
    root = u.tree.root
    u.fs.names.rename(root, b"a", root, b"b", RENAME_EXCHANGE)
    assert (u.read("a"), u.read("b")) == (b"upper-b", b"lower-a")
    assert u.listing() == ["a", "b"]
    with pytest.raises(OSError) as exc:
        u.fs.names.rename(root, b"a", root, b"missing", RENAME_EXCHANGE)
    assert exc.value.errno == errno.ENOENT


def test_xattrs_of_the_root_directory(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"f": b""})
    root = u.tree.root
    u.fs.xattrs.set(root, b"user.rootattr", b"1")
    assert u.fs.xattrs.get(root, b"user.rootattr") == b"1"
    assert b"user.rootattr" in u.fs.xattrs.list(root)
    assert os.getxattr(u.upper, "user.rootattr") == b"1"


def test_many_misses_use_the_listing_and_it_stays_current(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union({"bin/": Dir(), "bin/ls": b""}, {"bin/cat": b""})
    bin_ = u.node("bin")
    for name in (b"a", b"b", b"c", b"d", b"e", b"f"):
        with pytest.raises(FileNotFoundError):
            u.tree.lookup(bin_, name)
    assert bin_.names is not None  # later misses here cost no syscalls
    assert u.tree.lookup(bin_, b"cat").is_dir is False
    _, fd = u.fs.names.create(bin_, b"new", 0o755, os.O_WRONLY, ROOT)
    os.close(fd)
    assert u.tree.lookup(bin_, b"new") is not None
    u.fs.names.unlink(bin_, b"ls")
    with pytest.raises(FileNotFoundError):
        u.tree.lookup(bin_, b"ls")
    with pytest.raises(OSError) as exc:
        u.tree.lookup(bin_, b"x" * 300)
    assert exc.value.errno == errno.ENAMETOOLONG


def test_names_alone_match_the_merged_listing(make_union) -> None:  # type: ignore[no-untyped-def]
    u = make_union(
        {"d/": Dir(), "d/gone": Whiteout(), "d/top": b"t", "d/fifo": Fifo(), "d/sub/": Dir(),
         "d/opq/": Dir(opaque=True), "d/link": Symlink("top"), "d/both": b"upper wins"},
        {"d/": Dir(), "d/gone": b"g", "d/low": b"l", "d/sub/": Dir(), "d/opq/": Dir(),
         "d/opq/hidden": b"h", "d/both/": Dir(), "d/gone2": b"g2"},
        upper={"d/": Dir(), "d/gone2": Whiteout(), "d/new": b"n"})
    os.mknod(u.upper / "d/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # not a whiteout
    d = u.node("d")
    names = u.tree.stack.list_names(d.dir_layers, d.path())
    assert sorted(n.decode() for n in names) == u.listing("d")
    assert sorted(names) == [b"both", b"fifo", b"link", b"low", b"new", b"null", b"opq",
                             b"sub", b"top"]
