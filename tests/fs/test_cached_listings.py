"""Directory listings the kernel caches (FOPEN_CACHE_DIR through unionfs._cachedir).

A listing served from the kernel's cache costs the daemon no READDIRPLUS request; the probe
counts the requests the daemon read.  Every change made *through* the mount must show at once
in the next listing of every directory it touched.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.mounted import unionfs_mount
from support.trees import Dir, Whiteout, make_tree
from unionfs import cachedir

pytestmark = [pytest.mark.fuse, pytest.mark.root]


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    lower = make_tree(tmp_path / "lower", {
        "a/": Dir(), "a/one": b"1", "a/two": b"2", "a/sub/": Dir(), "a/sub/deep": b"d",
        "b/": Dir(), "b/three": b"3", "gone": b"g",
    })
    top = make_tree(tmp_path / "top", {"a/": Dir(), "a/top": b"t", "gone": Whiteout()})
    for sub in ("upper", "work", "mnt"):
        (tmp_path / sub).mkdir()
    return {"lower": lower, "top": top, "upper": tmp_path / "upper",
            "work": tmp_path / "work", "mnt": tmp_path / "mnt"}


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def test_the_cache_module_is_built() -> None:
    assert cachedir.flag, "unionfs._cachedir was not built or not loaded before pyfuse3"


def requests_served(pid: int) -> int:
    """The daemon's read(2) calls so far: one per FUSE request it took."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("syscr:"))


@pytest.mark.parametrize("timeout, cached", [("timeout=1000", True), ("timeout=0", False)])
def test_listings_are_cached_unless_timeouts_are_off(layout: dict[str, Path], timeout: str,
                                                     cached: bool) -> None:
    for i in range(600):  # several pages of readdirplus replies
        (layout["lower"] / "b" / f"file-{i:04}").write_bytes(b"")
    with unionfs_mount(layout["mnt"], [layout["top"], layout["lower"]], layout["upper"],
                       layout["work"], extra=[timeout]) as m:
        first = listing(m.path / "b")
        before = requests_served(m.process.pid)
        assert listing(m.path / "b") == first
        served = requests_served(m.process.pid) - before
        if cached:
            assert served <= 1, served  # a getattr at most: not even opendir + releasedir
        else:
            assert served > 5, served  # several pages of entries


def test_changes_through_the_mount_show_in_cached_listings(layout: dict[str, Path]) -> None:
    with unionfs_mount(layout["mnt"], [layout["top"], layout["lower"]], layout["upper"],
                       layout["work"]) as m:
        mnt = m.path
        a, b, sub = mnt / "a", mnt / "b", mnt / "a/sub"
        for d in (mnt, a, b, sub):
            listing(d)  # fill the kernel's cache
        assert listing(a) == ["one", "sub", "top", "two"]

        (a / "new").write_bytes(b"n")
        assert listing(a) == ["new", "one", "sub", "top", "two"]
        (a / "one").unlink()  # a lower file: leaves a whiteout
        assert listing(a) == ["new", "sub", "top", "two"]
        os.rename(a / "two", b / "two")  # lower file to another directory
        assert listing(a) == ["new", "sub", "top"]
        assert listing(b) == ["three", "two"]
        (b / "dir").mkdir()
        os.symlink("three", b / "sym")
        os.link(b / "three", b / "hard")
        assert listing(b) == ["dir", "hard", "sym", "three", "two"]
        (b / "dir").rmdir()
        assert listing(b) == ["hard", "sym", "three", "two"]
        os.chmod(sub / "deep", 0o600)  # copy-up of the file and its directories
        assert listing(sub) == ["deep"]
        (sub / "deep").unlink()
        assert listing(sub) == []
        sub.rmdir()
        assert listing(a) == ["new", "top"]
        sub.mkdir()  # a new, opaque directory where a lower one was
        assert listing(sub) == []
        os.mknod(mnt / "fifo", 0o600 | 0o010000)
        assert listing(mnt) == ["a", "b", "fifo"]
        os.replace(mnt / "fifo", a / "top")  # over an existing name
        assert listing(mnt) == ["a", "b"]
        assert listing(a) == ["new", "sub", "top"]


def test_a_listing_read_in_pieces_survives_changes_between_them(layout: dict[str, Path]) -> None:
    """Without open handles (the kernel opens directories itself) a listing's snapshot is
    kept from offset 0 past its end: a reader that stops half way, one that starts over, and
    one whose directory changes between two pieces all see every entry that stayed, once."""
    for i in range(300):
        (layout["lower"] / "b" / f"file-{i:03}").write_bytes(b"")
    with unionfs_mount(layout["mnt"], [layout["top"], layout["lower"]], layout["upper"],
                       layout["work"]) as m:
        b = m.path / "b"
        expected = sorted(["three", *(f"file-{i:03}" for i in range(300))])
        with os.scandir(b) as it:  # stop after a few entries: the listing is left half read
            [next(it) for _ in range(5)]
        (b / "new").write_bytes(b"")
        assert listing(b) == sorted([*expected, "new"])
        (b / "file-000").unlink()
        with os.scandir(b) as it:
            seen = [next(it).name for _ in range(150)]
            (b / "later").write_bytes(b"")  # between two pieces of one listing
            seen += [e.name for e in it]
        assert len(seen) == len(set(seen))  # never an entry twice
        stayed = {*expected, "new"} - {"file-000"}
        assert stayed <= set(seen) <= stayed | {"later"}  # all that stayed, once
        assert listing(b) == sorted(stayed | {"later"})
