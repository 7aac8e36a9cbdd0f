"""Copy-up data between two filesystems: ``copy_file_range`` refuses (EXDEV), reads and
writes take over, holes and every byte kept (in process, no mount)."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from unionfs import copyup


@pytest.fixture
def other_fs_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on another filesystem than ``tmp_path`` (/dev/shm is tmpfs)."""
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == tmp_path.stat().st_dev:
        pytest.skip("no /dev/shm on a filesystem other than the test's temp dir")
    path = Path(tempfile.mkdtemp(dir="/dev/shm"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as s, open(dst, "wb") as d:
        copyup.copy_data(s.fileno(), d.fileno(), os.fstat(s.fileno()))


@pytest.mark.parametrize("direction", ["disk-to-tmpfs", "tmpfs-to-disk"])
def test_copy_across_filesystems(tmp_path: Path, other_fs_dir: Path, direction: str) -> None:
    a, b = (tmp_path, other_fs_dir) if direction == "disk-to-tmpfs" else (other_fs_dir, tmp_path)
    data = os.urandom(3 << 20) + b"tail"
    (a / "full").write_bytes(data)
    _copy(a / "full", b / "full")
    assert (b / "full").read_bytes() == data
    with open(a / "sparse", "wb") as f:  # data, a 64 MiB hole, data, a trailing hole
        f.write(b"head")
        f.seek(64 << 20)
        f.write(b"middle")
        f.truncate(128 << 20)
    _copy(a / "sparse", b / "sparse")
    st = os.stat(b / "sparse")
    assert st.st_size == 128 << 20
    assert st.st_blocks * 512 < 4 << 20, "the holes were written as zeros"
    with open(b / "sparse", "rb") as f:
        assert f.read(4) == b"head"
        f.seek(64 << 20)
        assert f.read(6) == b"middle"


def test_refusal_is_remembered_and_other_errors_are_raised(tmp_path: Path,
                                                          other_fs_dir: Path) -> None:
    (tmp_path / "src").write_bytes(b"x" * 10_000)
    with open(tmp_path / "src", "rb") as s, open(other_fs_dir / "dst", "wb") as d:
        assert copyup._copy_range(s.fileno(), d.fileno(), 0, 10_000) == 10_000
        pair = (os.fstat(s.fileno()).st_dev, os.fstat(d.fileno()).st_dev)
    assert pair in copyup._NO_COPY_RANGE
    assert (other_fs_dir / "dst").read_bytes() == b"x" * 10_000
    before = set(copyup._NO_COPY_RANGE)
    with open(tmp_path / "src", "rb") as s, open(tmp_path / "ro", "wb") as w:
        os.chmod(tmp_path / "ro", 0o444)
        with open(tmp_path / "ro", "rb") as read_only, pytest.raises(OSError) as exc:
            copyup._copy_range(s.fileno(), read_only.fileno(), 0, 10)  # not a refusal
        del w
    assert exc.value.errno == errno.EBADF
    assert before == copyup._NO_COPY_RANGE
