"""Tests for the store root, its lock, transactions and the blob store."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from mt_helpers import snapshot

from mounttool.blobs import BlobStore
from mounttool.digest import Digest
from mounttool.errors import DigestMismatchError, NotFoundError, StoreError
from mounttool.store import Store, atomic_write, default_root


def test_default_root(tmp_path: Path) -> None:
    assert default_root({"MOUNTTOOL_ROOT": "/x"}) == Path("/x")
    assert default_root({}) == Path("/var/lib/mounttool")  # tests run as root


def test_put_and_read(store: Store) -> None:
    blobs = BlobStore(store)
    with store.locked(True), store.transaction() as txn:
        d = blobs.put(io.BytesIO(b"data"), txn, Digest.of_bytes(b"data"), 4)
        assert blobs.put_bytes(b"data", txn) == d
    assert blobs.read(d) == b"data" and blobs.has(d)
    assert list(blobs.all()) == [d]
    assert blobs.path(d).stat().st_mode & 0o777 == 0o444
    blobs.verify(d)
    assert list(store.tmp.iterdir()) == []


@pytest.mark.parametrize(("data", "size", "why"), [
    (b"datx", 4, "digest"), (b"dat", 4, "size"), (b"data!", 4, "more than")])
def test_put_mismatch_leaves_nothing(store: Store, data: bytes, size: int, why: str) -> None:
    blobs = BlobStore(store)
    before = snapshot(store.root)
    with (store.locked(True), pytest.raises(DigestMismatchError, match=why),
          store.transaction() as txn):
        blobs.put(io.BytesIO(data), txn, Digest.of_bytes(b"data"), size)
    assert snapshot(store.root) == before
    assert list(store.tmp.iterdir()) == []


def test_transaction_rolls_back(store: Store) -> None:
    blobs = BlobStore(store)
    before = snapshot(store.root)
    with store.locked(True), pytest.raises(RuntimeError), store.transaction() as txn:
        blobs.put_bytes(b"one", txn)
        blobs.put_bytes(b"two", txn)
        raise RuntimeError("boom")
    assert snapshot(store.root) == before


def test_writes_need_exclusive_lock(store: Store) -> None:
    blobs = BlobStore(store)
    with (store.locked(False), pytest.raises(StoreError, match="exclusive"),
          store.transaction() as txn):
        blobs.put_bytes(b"x", txn)


def test_missing_blob(store: Store) -> None:
    with pytest.raises(NotFoundError, match="not in the store"):
        BlobStore(store).open(Digest.of_bytes(b"nope"))


def test_corrupt_blob_detected(store: Store) -> None:
    blobs = BlobStore(store)
    with store.locked(True), store.transaction() as txn:
        d = blobs.put_bytes(b"abc", txn)
    p = blobs.path(d)
    p.chmod(0o644)
    p.write_bytes(b"abd")
    with pytest.raises(DigestMismatchError, match="corrupt"):
        blobs.verify(d)


def test_lock_excludes_other_process(store: Store) -> None:
    code = ("import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR)\n"
            "try:\n fcntl.flock(fd, fcntl.LOCK_SH|fcntl.LOCK_NB); print('got')\n"
            "except BlockingIOError: print('busy')")
    with store.locked(True):
        out = subprocess.run([sys.executable, "-c", code, str(store.root / "lock")],
                             capture_output=True, text=True, check=True).stdout
    assert out.strip() == "busy"
    with store.locked(False):
        out = subprocess.run([sys.executable, "-c", code, str(store.root / "lock")],
                             capture_output=True, text=True, check=True).stdout
    assert out.strip() == "got"


def test_exclusive_lock_clears_stale_tmp(store: Store) -> None:
    (store.tmp / "blob-stale").write_bytes(b"half")
    (store.tmp / "unpack-stale").mkdir()
    with store.locked(True):
        assert list(store.tmp.iterdir()) == []


def test_atomic_write(tmp_path: Path) -> None:
    p = tmp_path / "f.json"
    atomic_write(p, b"1")
    atomic_write(p, b"2")
    assert p.read_bytes() == b"2" and [x.name for x in tmp_path.iterdir()] == ["f.json"]
