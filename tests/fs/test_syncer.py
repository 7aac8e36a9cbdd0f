"""Copy-ups named at once and synced in the background (unionfs.syncer), in process: the
upper layer is current when the request returns, a pending record covers the copy until its
fsync, and the next mount repairs what a crash or a power loss left pending."""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.trees import Dir, make_tree
from unionfs import copyup, syncer
from unionfs.core import UnionFS
from unionfs.filehandles import OverlayHandle, handle_of
from unionfs.files import AttrChange
from unionfs.nodes import Node
from unionfs.spec import parse
from unionfs.tree import Caller

pytestmark = pytest.mark.root
ROOT = Caller(0, 0, 0o022)
XATTR = b"trusted.unionfs.pending"
LOWER_DATA = b"lower data " * 100


class HeldSync:
    """Replaces the worker's fsync: waits until the test releases it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.called = threading.Event()
        self.real = os.fsync

    def __call__(self, fd: int) -> None:
        self.called.set()
        assert self.release.wait(10), "the test never released the sync"
        self.real(fd)


@pytest.fixture
def hold(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldSync]:
    held = HeldSync()
    monkeypatch.setattr(syncer, "sync_copy", held)
    yield held
    held.release.set()


@pytest.fixture
def union(tmp_path: Path) -> Iterator[Callable[..., UnionFS]]:
    made: list[UnionFS] = []
    lower = make_tree(tmp_path / "l", {"f": LOWER_DATA, "empty": b"", "d/": Dir(), "d/g": b"g"})
    for name in ("u", "w", "m"):
        (tmp_path / name).mkdir()

    def factory(*options: str) -> UnionFS:
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


def records(work: Path) -> list[syncer.Record]:
    found = []
    for slot in sorted((work / "unionfs-pending").iterdir()):
        if XATTR.decode() in os.listxattr(slot):
            rec = syncer.Record.decode(os.getxattr(slot, XATTR))
            assert rec is not None
            found.append(rec)
    return found


def test_the_copy_is_named_at_once_and_covered_by_a_record_until_synced(
        union: Callable[..., UnionFS], tmp_path: Path, hold: HeldSync) -> None:
    fs = union()
    chmod(fs, fs.tree.lookup(fs.tree.root, b"f"), 0o600)
    assert hold.called.wait(10)
    # The request is answered and its fsync not done: the upper already has the whole copy.
    upper = tmp_path / "u" / "f"
    assert stat.S_IMODE(os.lstat(upper).st_mode) == 0o600
    assert upper.read_bytes() == LOWER_DATA
    [rec] = records(tmp_path / "w")
    assert rec.rel == b"f" and rec.ino == os.lstat(upper).st_ino
    assert rec.lower == os.fsencode(tmp_path / "l" / "f") and rec.size == len(LOWER_DATA)
    assert rec.boot == syncer.boot_id()
    hold.release.set()
    fs.tree.settle()
    assert records(tmp_path / "w") == []
    assert os.listdir(tmp_path / "w" / "work") == []


def test_a_copy_without_data_needs_no_record_and_no_sync(
        union: Callable[..., UnionFS], tmp_path: Path, hold: HeldSync) -> None:
    fs = union()
    chmod(fs, fs.tree.lookup(fs.tree.root, b"empty"), 0o600)
    fs.files.setattr(fs.tree.lookup(fs.tree.root, b"f"), AttrChange(size=0), None, ROOT)
    assert not hold.called.is_set()
    assert records(tmp_path / "w") == []
    assert (tmp_path / "u" / "f").read_bytes() == b""


def test_a_full_pool_waits_for_the_worker(union: Callable[..., UnionFS], tmp_path: Path,
                                          hold: HeldSync, monkeypatch: pytest.MonkeyPatch,
                                          ) -> None:
    monkeypatch.setattr(syncer, "QUEUE_LIMIT", 2)
    fs = union()
    chmod(fs, fs.tree.lookup(fs.tree.root, b"f"), 0o600)
    chmod(fs, fs.tree.lookup(fs.tree.lookup(fs.tree.root, b"d"), b"g"), 0o600)
    assert len(records(tmp_path / "w")) == 2
    with (tmp_path / "l" / "third").open("wb") as f:
        f.write(b"3")
    third = fs.tree.lookup(fs.tree.root, b"third")
    done = threading.Event()
    worker = threading.Thread(target=lambda: (chmod(fs, third, 0o600), done.set()))
    worker.start()
    assert not done.wait(0.3), "a copy-up went ahead with no free slot"
    hold.release.set()
    worker.join(10)
    assert done.is_set()
    fs.tree.settle()
    assert records(tmp_path / "w") == []


def test_fsync_through_the_mount_waits_for_the_worker(
        union: Callable[..., UnionFS], tmp_path: Path, hold: HeldSync) -> None:
    fs = union()
    node = fs.tree.lookup(fs.tree.root, b"f")
    fh = fs.files.open(node, os.O_WRONLY, ROOT)
    assert hold.called.wait(10)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (fs.files.fsync(fh, False), done.set()))
    worker.start()
    assert not done.wait(0.3), "fsync answered while the copy-up was not synced"
    hold.release.set()
    worker.join(10)
    assert done.is_set() and records(tmp_path / "w") == []
    fs.files.release(fh)


def test_inline_mode_and_fsync_off_write_no_records(union: Callable[..., UnionFS],
                                                    tmp_path: Path, hold: HeldSync) -> None:
    for options in (("copyup_sync=inline",), ("fsync=0",)):
        fs = union(*options)
        assert fs.tree.copier is not None and fs.tree.copier.syncer is None
        chmod(fs, fs.tree.lookup(fs.tree.root, b"f"), 0o600)
        assert records(tmp_path / "w") == []
        fs.close()
        (tmp_path / "u" / "f").unlink()
    assert not hold.called.is_set()  # inline syncs in the copier, not in the worker


def test_a_work_dir_that_refuses_records_syncs_inline(
        union: Callable[..., UnionFS], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(syncer.os, "setxattr", refuse)  # (the module is os itself: restored)
    monkeypatch.setattr(copyup.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    fs = union()
    with caplog.at_level(logging.WARNING):
        chmod(fs, fs.tree.lookup(fs.tree.root, b"f"), 0o600)
    assert synced, "the copy was neither recorded nor synced"
    assert "cannot hold pending records" in caplog.text
    assert (tmp_path / "u" / "f").read_bytes() == LOWER_DATA


def _leave_pending(fs: UnionFS, node: Node, hold: HeldSync) -> None:
    """A copy-up whose fsync never runs (the daemon dies first)."""
    chmod(fs, node, 0o600)
    assert hold.called.wait(10)


def test_a_daemon_crash_is_recovered_by_a_syncfs(union: Callable[..., UnionFS], tmp_path: Path,
                                                hold: HeldSync,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fs = union()
    _leave_pending(fs, fs.tree.lookup(fs.tree.root, b"f"), hold)
    assert len(records(tmp_path / "w")) == 1
    # The next mount (same boot) finds the record: the data is in the page cache.
    calls: list[int] = []
    monkeypatch.setattr(syncer, "syncfs", lambda fd: calls.append(fd))
    second = syncer.Syncer(os.open(tmp_path / "w", os.O_RDONLY),
                           os.open(tmp_path / "u", os.O_RDONLY), XATTR)
    assert second.recover(copyup.copy_data) == 1
    assert calls and records(tmp_path / "w") == []
    assert (tmp_path / "u" / "f").read_bytes() == LOWER_DATA
    hold.release.set()


def _plant(work: Path, rec: syncer.Record) -> None:
    """Leave ``rec`` in a slot, as a daemon that lost power would have."""
    slot = work / "unionfs-pending" / "slot-0"
    slot.touch()
    os.setxattr(slot, XATTR, rec.encode())


@pytest.mark.parametrize("moved", [False, True])
def test_a_power_loss_is_repaired_from_the_lower_file(union: Callable[..., UnionFS],
                                                     tmp_path: Path, moved: bool) -> None:
    fs = union()
    chmod(fs, fs.tree.lookup(fs.tree.root, b"f"), 0o600)
    fs.close()
    upper = tmp_path / "u" / "f"
    before = os.lstat(upper)
    with upper.open("r+b") as f:  # what a power loss can leave: the name, not the data
        f.write(b"\0" * 100)
        f.truncate(50)
    if moved:  # renamed after its copy-up: the record's file handle still finds it
        os.rename(upper, tmp_path / "u" / "moved")
        upper = tmp_path / "u" / "moved"
    damaged = os.lstat(upper)  # its times as the journal left them are kept
    lower = tmp_path / "l" / "f"
    _plant(tmp_path / "w", syncer.Record(b"another-boot", b"f", before.st_ino,
                                         _handle(upper), os.fsencode(lower), len(LOWER_DATA),
                                         os.lstat(lower).st_mtime_ns))
    union().close()  # the mount recovers
    assert upper.read_bytes() == LOWER_DATA
    after = os.lstat(upper)
    assert stat.S_IMODE(after.st_mode) == 0o600 and after.st_mtime_ns == damaged.st_mtime_ns
    assert records(tmp_path / "w") == []


def _handle(path: Path) -> OverlayHandle:
    fd = os.open(path, os.O_PATH)
    try:
        return handle_of(fd)
    finally:
        os.close(fd)


def test_a_changed_lower_file_is_reported_not_copied(union: Callable[..., UnionFS],
                                                     tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    union().close()
    upper = tmp_path / "u" / "f"
    upper.write_bytes(b"\0" * 10)
    lower = tmp_path / "l" / "f"
    _plant(tmp_path / "w", syncer.Record(b"another-boot", b"f", os.lstat(upper).st_ino,
                                         _handle(upper), os.fsencode(lower),
                                         len(LOWER_DATA) + 1, 0))
    with caplog.at_level(logging.ERROR):
        union().close()
    assert "has changed since" in caplog.text and "'f'" in caplog.text
    assert upper.read_bytes() == b"\0" * 10
    assert records(tmp_path / "w") == []


def test_a_record_of_a_removed_copy_is_dropped(union: Callable[..., UnionFS],
                                               tmp_path: Path) -> None:
    union().close()
    (tmp_path / "u" / "f").write_bytes(b"x")
    handle = _handle(tmp_path / "u" / "f")
    ino = os.lstat(tmp_path / "u" / "f").st_ino
    (tmp_path / "u" / "f").unlink()
    _plant(tmp_path / "w", syncer.Record(b"another-boot", b"f", ino, handle,
                                         os.fsencode(tmp_path / "l" / "f"), len(LOWER_DATA),
                                         os.lstat(tmp_path / "l" / "f").st_mtime_ns))
    union().close()
    assert not (tmp_path / "u" / "f").exists()
    assert records(tmp_path / "w") == []


def test_records_round_trip_and_garbage_is_refused() -> None:
    rec = syncer.Record(b"boot", b"a/b c", 12, None, b"/l/a/b c", 3, 4)
    assert syncer.Record.decode(rec.encode()) == rec
    for raw in (b"", b"junk", rec.encode().replace(b"unionfs-pending-1", b"v0"),
                rec.encode().replace(b"\x0012\x00", b"\x00x\x00")):
        assert syncer.Record.decode(raw) is None
