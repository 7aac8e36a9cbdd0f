"""Copy-ups published in the background (unionfs.publish), driven in-process: the change is
answered from the copy at once, the upper name appears only after the copy is synced, every
other use of the upper layer waits for it, and a publication that fails is undone."""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyfuse3
import pytest
import trio

from support.trees import Dir, make_tree
from unionfs import publish
from unionfs.copyup import WorkDir
from unionfs.core import UnionFS
from unionfs.files import AttrChange
from unionfs.nodes import Node
from unionfs.operations import Operations
from unionfs.spec import SpecError, parse
from unionfs.tree import Caller
from unionfs.whiteout import is_whiteout_stat

pytestmark = pytest.mark.root
ROOT = Caller(0, 0, 0o022)


class HeldSync:
    """Replaces the publisher's fsync: each call records whether the upper name already
    existed, then waits until released."""

    def __init__(self, upper: Path) -> None:
        self.upper = upper
        self.release = threading.Event()
        self.called = threading.Event()
        self.name_existed: list[bool] = []
        self.real = os.fsync

    def __call__(self, fd: int) -> None:
        self.name_existed.append(any(self.upper.iterdir()))
        self.called.set()
        assert self.release.wait(10), "the test never released the sync"
        self.real(fd)


@pytest.fixture
def hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], HeldSync]:
    """From the call on, the publisher's fsync waits until the test releases it."""
    def install() -> HeldSync:
        held = HeldSync(tmp_path / "u")
        monkeypatch.setattr(publish.os, "fsync", held)
        return held
    return install


@pytest.fixture
def union(tmp_path: Path) -> Iterator[Callable[..., UnionFS]]:
    made: list[UnionFS] = []

    def factory(*options: str) -> UnionFS:
        lower = make_tree(tmp_path / "l", {"f": b"lower data", "d/": Dir(), "d/g": b"g"})
        for name in ("u", "w", "m"):
            (tmp_path / name).mkdir()
        spec = parse([f"lowerdir={lower},upperdir={tmp_path / 'u'},workdir={tmp_path / 'w'}",
                      *options], str(tmp_path / "m"))
        fs = UnionFS(spec)
        made.append(fs)
        return fs

    yield factory
    for fs in made:
        fs.close()


def chmod(fs: UnionFS, node: Node, mode: int) -> None:
    fs.files.setattr(node, AttrChange(mode=mode), None, ROOT)


def test_the_change_is_answered_before_the_copy_is_named(
        union: Callable[..., UnionFS], tmp_path: Path, hold: Callable[[], HeldSync]) -> None:
    held = hold()
    fs = union()
    node = fs.tree.lookup(fs.tree.root, b"f")
    chmod(fs, node, 0o600)
    assert held.called.wait(10)
    # The request is answered: the node shows the copy, not yet named in the upper layer.
    assert stat.S_IMODE(fs.tree.attr(node).st.st_mode) == 0o600
    assert not (tmp_path / "u" / "f").exists()
    fh = fs.files.open(node, os.O_RDONLY, ROOT)
    assert fs.files.read(fh, 0, 100) == b"lower data"
    fs.files.release(fh)
    held.release.set()
    fs.tree.settle()
    fs.tree.tidy()
    assert held.name_existed == [False]  # synced before it got its name
    upper = os.lstat(tmp_path / "u" / "f")
    assert stat.S_IMODE(upper.st_mode) == 0o600
    assert (tmp_path / "u" / "f").read_bytes() == b"lower data"
    assert node.fd is None and fs.tree.is_upper(node)
    assert os.listdir(tmp_path / "w" / "work") == []


def test_any_other_use_of_the_upper_layer_waits_for_the_publication(
        union: Callable[..., UnionFS], tmp_path: Path, hold: Callable[[], HeldSync]) -> None:
    held = hold()
    fs = union()
    root = fs.tree.root
    chmod(fs, fs.tree.lookup(root, b"f"), 0o640)
    assert held.called.wait(10)
    releaser = threading.Timer(0.3, held.release.set)
    releaser.start()
    started = time.monotonic()
    names = sorted(name for name, _ in fs.tree.list_dir(root)[0])  # reads the upper layer
    assert time.monotonic() - started >= 0.25, "the listing did not wait for the publication"
    assert names == [b"d", b"f"]
    assert (tmp_path / "u" / "f").exists()
    releaser.join()


def test_lookups_wait_only_for_their_own_path_or_directory(
        union: Callable[..., UnionFS], tmp_path: Path, hold: Callable[[], HeldSync]) -> None:
    held = hold()
    fs = union()
    upper = fs.tree.upper
    chmod(fs, fs.tree.lookup(fs.tree.root, b"f"), 0o600)  # published as "f", in ""
    assert held.called.wait(10)

    def lstat_in_thread(rel: bytes) -> threading.Thread:
        thread = threading.Thread(target=upper.lstat, args=(rel,))
        thread.start()
        return thread

    other = lstat_in_thread(b"d")  # another name: answered while the sync is held
    other.join(5)
    assert not other.is_alive()
    waiting = [lstat_in_thread(b"f"), lstat_in_thread(b"")]  # the name, its directory
    for t in waiting:
        t.join(0.2)
        assert t.is_alive()
    held.release.set()
    for t in waiting:
        t.join(5)
        assert not t.is_alive()


def test_a_failed_publication_is_undone(union: Callable[..., UnionFS], tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    fs = union()
    node = fs.tree.lookup(fs.tree.root, b"f")
    # Behind the mount's back, a directory takes the name the copy is to be published as.
    (tmp_path / "u" / "f").mkdir()
    with caplog.at_level(logging.ERROR):
        chmod(fs, node, 0o600)
        fs.tree.settle()
        fs.tree.tidy()
    assert "could not be published" in caplog.text and "'f'" in caplog.text
    assert node.fd is None and not fs.tree.is_upper(node)
    assert stat.S_IMODE(fs.tree.attr(node).st.st_mode) == 0o644  # the lower file again
    assert os.listdir(tmp_path / "w" / "work") == []


def test_closing_publishes_what_is_pending(union: Callable[..., UnionFS],
                                           tmp_path: Path) -> None:
    fs = union()
    for name in (b"f", b"g"):
        parent = fs.tree.root if name == b"f" else fs.tree.lookup(fs.tree.root, b"d")
        chmod(fs, fs.tree.lookup(parent, name), 0o604)
    fs.close()
    for path in ("f", "d/g"):
        assert stat.S_IMODE(os.lstat(tmp_path / "u" / path).st_mode) == 0o604


def test_copy_ups_publish_inline_on_request(union: Callable[..., UnionFS],
                                            tmp_path: Path) -> None:
    fs = union("copyup_sync=inline")
    assert fs.tree.publisher is None
    node = fs.tree.lookup(fs.tree.root, b"f")
    chmod(fs, node, 0o600)
    assert node.fd is None and (tmp_path / "u" / "f").exists()


def test_without_fsync_nothing_is_left_to_the_background(union: Callable[..., UnionFS]) -> None:
    assert union("fsync=0").tree.publisher is None


def test_copyup_sync_takes_background_or_inline(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="copyup_sync=later"):
        parse([f"lowerdir={tmp_path},copyup_sync=later"], str(tmp_path))


def test_fsyncdir_answers_once_copy_ups_are_published(
        union: Callable[..., UnionFS], tmp_path: Path, hold: Callable[[], HeldSync]) -> None:
    # mounttool commit fsyncs the mount's root before it reads the upper dir.
    held = hold()
    fs = union()
    ops = Operations(fs)
    chmod(fs, fs.tree.lookup(fs.tree.root, b"f"), 0o600)
    assert held.called.wait(10)
    call = threading.Thread(target=trio.run, args=(ops.fsyncdir, pyfuse3.FileHandleT(0), False))
    call.start()
    call.join(0.2)
    assert call.is_alive()
    held.release.set()
    call.join(10)
    assert not call.is_alive()
    assert (tmp_path / "u" / "f").exists()


def test_a_workdir_in_use_is_waited_for_then_refused(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    holder = subprocess.Popen(["flock", "-s", str(tmp_path), "sh", "-c", "echo held; sleep 0.4"],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(OSError, match="workdir is in use by another mount") as exc:
            WorkDir(os.fsencode(tmp_path), wait=0.05)
        assert exc.value.errno == errno.EBUSY
        work = WorkDir(os.fsencode(tmp_path), wait=10)  # the old daemon finishes: it goes on
        work.close()
    finally:
        holder.kill()
        holder.wait()


def test_a_rename_right_after_the_copy_up_is_left_to_the_publisher(
        union: Callable[..., UnionFS], tmp_path: Path, hold: Callable[[], HeldSync]) -> None:
    fs = union()
    root = fs.tree.root
    d = fs.tree.lookup(root, b"d")
    fs.names.rename(d, b"g", d, b"g2", 0)  # the first RENAME_WHITEOUT is made inline
    fs.tree.settled()
    held = hold()
    node = fs.tree.lookup(root, b"f")
    fs.names.rename(root, b"f", root, b"f2", 0)
    assert held.called.wait(10)  # answered while the copy waits for its sync
    assert not (tmp_path / "u" / "f").exists() and not (tmp_path / "u" / "f2").exists()
    assert node.name == b"f2" and fs.tree.attr(node).st.st_size == len(b"lower data")
    held.release.set()
    names = sorted(name for name, _ in fs.tree.list_dir(root)[0])  # waits, then lists
    assert names == [b"d", b"f2"]
    fs.tree.tidy()
    assert (tmp_path / "u" / "f2").read_bytes() == b"lower data"
    assert is_whiteout_stat(os.lstat(tmp_path / "u" / "f"))
    with pytest.raises(FileNotFoundError):
        fs.tree.lookup(root, b"f")
    assert fs.tree.lookup(root, b"f2") is node and node.fd is None


def test_a_rename_whose_copy_cannot_be_named_is_lost_with_it(
        union: Callable[..., UnionFS], tmp_path: Path, hold: Callable[[], HeldSync],
        caplog: pytest.LogCaptureFixture) -> None:
    fs = union()
    root = fs.tree.root
    d = fs.tree.lookup(root, b"d")
    fs.names.rename(d, b"g", d, b"g2", 0)
    fs.tree.settled()
    held = hold()
    fs.tree.lookup(root, b"f")
    fs.names.rename(root, b"f", root, b"f2", 0)
    assert held.called.wait(10)
    for tmp in (tmp_path / "w" / "work").iterdir():
        tmp.unlink()  # behind the mount's back: the copy cannot be named
    held.release.set()
    with caplog.at_level(logging.ERROR):
        fs.tree.settled()
    assert "could not be published" in caplog.text
    assert not (tmp_path / "u" / "f2").exists()
    with pytest.raises(FileNotFoundError):
        fs.tree.lookup(root, b"f2")
    assert fs.tree.lookup(root, b"f").layer == 1  # the lower file shows again
