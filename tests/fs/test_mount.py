"""End to end through a real FUSE mount: what shell tools see, and what lands on disk."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from support.filesystems import PLACEMENTS, Roots, placed, placement_missing
from support.mounted import Mounted, kernel_overlay, unionfs_mount, unmount
from support.trees import Dir, File, HardLink, Symlink, Whiteout, make_tree, read_tree, tree_hash
from unionfs.syncer import QUEUE_LIMIT

pytestmark = [pytest.mark.fuse, pytest.mark.root]


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A temp dir other users can traverse (pytest's own are 0700 for root)."""
    path = Path(tempfile.mkdtemp(prefix="unionfs-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=PLACEMENTS)
def roots(request: pytest.FixtureRequest, public_tmp: Path) -> Iterator[Roots]:
    """Every mount test runs with lower and upper on one filesystem and on different ones."""
    missing = placement_missing(request.param)
    if missing:
        pytest.skip(missing)
    with placed(request.param, public_tmp) as where:
        yield where


@pytest.fixture
def layers(public_tmp: Path, roots: Roots) -> Iterator[dict[str, Path]]:
    """Two lower layers (checked unchanged after the test), an upper, a work dir, a mountpoint.
    """
    tmp_path = roots.lower
    top = make_tree(tmp_path / "top", {
        "etc/": Dir(), "etc/hostname": b"top\n", "gone": Whiteout(),
        "opq/": Dir(opaque=True), "opq/new": b"n",
        "bin/": Dir(), "bin/sh": File(b"#!", mode=0o4755),
    })
    base = make_tree(tmp_path / "base", {
        "etc/": Dir(), "etc/hostname": b"base\n", "etc/passwd": b"root:x:0:0\n",
        "gone": b"hidden", "opq/": Dir(), "opq/old": b"o",
        "lib/": Dir(), "lib/a.so": b"\x7fELF", "lib/b.so": HardLink("lib/a.so"),
        "link": Symlink("etc/passwd"),
    })
    for sub in ("upper", "work"):
        (roots.upper / sub).mkdir()
    (public_tmp / "mnt").mkdir()
    hashes = [tree_hash(top), tree_hash(base)]
    yield {"top": top, "base": base, "upper": roots.upper / "upper",
           "work": roots.upper / "work", "mnt": public_tmp / "mnt"}
    assert [tree_hash(top), tree_hash(base)] == hashes, "a lower layer was modified"


@pytest.fixture(params=["writeback=0", "writeback=1"])
def cache_mode(request: pytest.FixtureRequest) -> str:
    """Every mount test runs without and with the kernel's writeback cache."""
    return str(request.param)


MountFn = Callable[[], AbstractContextManager[Mounted]]
Layers = dict[str, Path]


@pytest.fixture
def mount(layers: Layers, cache_mode: str) -> MountFn:
    """Mount the test layers (top, base) with the test's upper and work dirs."""
    def mounter() -> AbstractContextManager[Mounted]:
        return unionfs_mount(layers["mnt"], [layers["top"], layers["base"]], layers["upper"],
                             layers["work"], extra=[cache_mode])
    return mounter


def start_daemon(opts: str, mnt: Path, stderr: int | None = None) -> subprocess.Popen[bytes]:
    """``python -m unionfs -f`` in the foreground, returned once it reports the mount live."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "unionfs", "-f", "--ready-fd", str(write_fd),
                             "-o", opts, str(mnt)], pass_fds=(write_fd,), stderr=stderr)
    os.close(write_fd)
    try:
        assert os.read(read_fd, 16) == b"ready\n"
    finally:
        os.close(read_fd)
    return proc


def wait_idle(pid: int, timeout: float = 10.0) -> None:
    """Until every thread of ``pid`` sleeps (the request loop blocked in read(2))."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[0]
                  for t in os.listdir(f"/proc/{pid}/task")]
        if all(state == "S" for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"unionfs (pid {pid}) never went idle")


def test_merged_tree(layers: Layers, mount: MountFn) -> None:
    with mount() as m:
        mnt = m.path
        assert sorted(os.listdir(mnt)) == ["bin", "etc", "lib", "link", "opq"]
        assert (mnt / "etc/hostname").read_bytes() == b"top\n"
        assert sorted(os.listdir(mnt / "opq")) == ["new"]
        assert os.readlink(mnt / "link") == "etc/passwd"
        assert (mnt / "link").read_bytes() == b"root:x:0:0\n"
        a, b = os.stat(mnt / "lib/a.so"), os.stat(mnt / "lib/b.so")
        assert a.st_ino == b.st_ino and a.st_nlink == 2
        (mnt / "etc/passwd").write_bytes(b"changed\n")
        (mnt / "etc/hostname").unlink()
        subprocess.run(["rm", "-rf", str(mnt / "lib")], check=True)
    up = layers["upper"]
    assert (up / "etc/passwd").read_bytes() == b"changed\n"
    assert stat.S_ISCHR(os.lstat(up / "etc/hostname").st_mode)
    assert os.lstat(up / "lib").st_rdev == 0 and stat.S_ISCHR(os.lstat(up / "lib").st_mode)


def test_kernel_overlay_reads_what_unionfs_wrote(layers: Layers, mount: MountFn,
                                                 tmp_path: Path) -> None:
    with mount() as m:
        mnt = m.path
        (mnt / "etc/new").write_bytes(b"new")
        (mnt / "gone2").mkdir()
        os.rename(mnt / "etc/passwd", mnt / "passwd.moved")
        subprocess.run(["rm", "-rf", str(mnt / "opq")], check=True)
        (mnt / "opq").mkdir()
        (mnt / "opq/fresh").write_bytes(b"f")
        os.chown(mnt / "etc/hostname", 12, 34)
        seen = read_tree(mnt)
    lowers = [layers["top"], layers["base"]]
    with kernel_overlay(tmp_path / "kmnt", lowers, layers["upper"], layers["work"]) as kmnt:
        assert read_tree(kmnt) == seen


def test_kernel_overlay_finds_the_hardlink_index_unionfs_wrote(layers: Layers, mount: MountFn,
                                                                tmp_path: Path) -> None:
    """The index entry's handle names the lower file's filesystem by its UUID, as the kernel's
    do: with the lower on a filesystem that has one (tmpfs), the kernel follows it."""
    with mount() as m:
        with open(m.path / "lib/a.so", "ab") as f:
            f.write(b"+changed")
        assert (m.path / "lib/b.so").read_bytes() == b"\x7fELF+changed"
    lowers = [layers["top"], layers["base"]]
    with kernel_overlay(tmp_path / "kmnt", lowers, layers["upper"], layers["work"],
                        extra=["index=on"]) as kmnt:
        assert (kmnt / "lib/b.so").read_bytes() == b"\x7fELF+changed"
        assert os.lstat(kmnt / "lib/a.so").st_ino == os.lstat(kmnt / "lib/b.so").st_ino
        assert os.lstat(kmnt / "lib/b.so").st_nlink == 2
    with mount() as m:  # and unionfs reads the entry back, as the kernel left it
        assert (m.path / "lib/b.so").read_bytes() == b"\x7fELF+changed"
        assert os.lstat(m.path / "lib/a.so").st_ino == os.lstat(m.path / "lib/b.so").st_ino


def test_unionfs_reads_what_kernel_overlay_wrote(layers: Layers, mount: MountFn,
                                                 tmp_path: Path) -> None:
    lowers = [layers["top"], layers["base"]]
    with kernel_overlay(tmp_path / "kmnt", lowers, layers["upper"], layers["work"]) as kmnt:
        (kmnt / "etc/hostname").write_bytes(b"kernel\n")
        (kmnt / "etc/passwd").unlink()
        subprocess.run(["rm", "-rf", str(kmnt / "lib")], check=True)
        (kmnt / "lib").mkdir()
        (kmnt / "lib/c.so").write_bytes(b"c")
        expected = read_tree(kmnt)
    with mount() as m:
        assert read_tree(m.path) == expected


def test_mmap_append_and_unlinked_open_files(layers: Layers, mount: MountFn) -> None:
    with mount() as m:
        mnt = m.path
        path = mnt / "etc/passwd"
        with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            mm[0:4] = b"ROOT"
            mm.flush()
        assert path.read_bytes() == b"ROOT:x:0:0\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"more\n")
        os.close(fd)
        assert path.read_bytes().endswith(b"more\n")
        fd = os.open(mnt / "etc/hostname", os.O_RDWR)
        os.unlink(mnt / "etc/hostname")
        os.pwrite(fd, b"after unlink", 0)
        assert os.pread(fd, 12, 0) == b"after unlink"
        assert os.fstat(fd).st_nlink == 0
        os.close(fd)
        assert not (mnt / "etc/hostname").exists()


def test_errors_match_the_kernel(layers: Layers, mount: MountFn) -> None:
    with mount() as m:
        mnt = m.path
        with pytest.raises(OSError) as exc:
            os.rmdir(mnt / "etc")
        assert exc.value.errno == errno.ENOTEMPTY
        with pytest.raises(OSError) as exc:
            os.rename(mnt / "etc", mnt / "etc2")
        assert exc.value.errno == errno.EXDEV
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "gone")


def test_non_root_caller_owns_new_files_and_loses_setuid(layers: Layers, mount: MountFn) -> None:
    with mount() as m:
        mnt = m.path
        os.chmod(mnt, 0o777)
        os.chown(mnt / "bin/sh", 1000, 1000)
        os.chmod(mnt / "bin/sh", 0o4755)
        script = (f"echo hi > {mnt}/mine && printf x >> {mnt}/bin/sh && "
                  f"stat -c '%u %g %a' {mnt}/mine {mnt}/bin/sh")
        out = subprocess.run(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
                              "sh", "-c", script], check=True, capture_output=True, text=True)
        assert out.stdout.split("\n")[:2] == ["1000 1000 644", "1000 1000 755"]


def test_read_only_mount(layers: Layers, mount: MountFn) -> None:
    with unionfs_mount(layers["mnt"], [layers["top"], layers["base"]]) as m:
        with pytest.raises(OSError) as exc:
            (m.path / "newfile").write_bytes(b"")
        assert exc.value.errno == errno.EROFS
        assert (m.path / "etc/hostname").read_bytes() == b"top\n"


def test_statfs_is_the_upper(layers: Layers, mount: MountFn) -> None:
    with mount() as m:
        ours, upper = os.statvfs(m.path), os.statvfs(layers["upper"])
        assert ours.f_blocks == upper.f_blocks and ours.f_bsize == upper.f_bsize


def test_special_files(layers: Layers, mount: MountFn) -> None:
    with mount() as m:
        mnt = m.path
        os.mkfifo(mnt / "fifo")
        os.mknod(mnt / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(mnt / "sock"))
        with pytest.raises(PermissionError):
            os.mknod(mnt / "fake-whiteout", 0o600 | stat.S_IFCHR, 0)
        kinds = {name: stat.S_IFMT(os.lstat(mnt / name).st_mode)
                 for name in ("fifo", "null", "sock")}
        assert kinds == {"fifo": stat.S_IFIFO, "null": stat.S_IFCHR, "sock": stat.S_IFSOCK}
        assert os.lstat(mnt / "null").st_rdev == os.makedev(1, 3)
        assert (mnt / "null").read_bytes() == b""


def test_daemon_mode_returns_once_mounted(layers: Layers, mount: MountFn) -> None:
    opts = (f"lowerdir={layers['top']}:{layers['base']},upperdir={layers['upper']},"
            f"workdir={layers['work']}")
    res = subprocess.run([sys.executable, "-m", "unionfs", "-o", opts, str(layers["mnt"])],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    try:
        assert (layers["mnt"] / "etc/hostname").read_bytes() == b"top\n"
    finally:
        subprocess.run(["fusermount3", "-u", str(layers["mnt"])], check=True)
    assert not os.path.ismount(layers["mnt"])


def test_sigterm_right_after_mounting_unmounts_cleanly(layers: Layers) -> None:
    opts = f"lowerdir={layers['top']},upperdir={layers['upper']},workdir={layers['work']}"
    proc = start_daemon(opts, layers["mnt"])
    proc.terminate()  # at once: before the daemon's loop may even have started
    assert proc.wait(timeout=20) == 0
    assert not os.path.ismount(layers["mnt"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_stop_signal_while_idle_unmounts_cleanly(layers: Layers, signum: int) -> None:
    """The request loop blocks in read(2) on /dev/fuse: a stop signal must still end it."""
    opts = f"lowerdir={layers['top']},upperdir={layers['upper']},workdir={layers['work']}"
    proc = start_daemon(opts, layers["mnt"], stderr=subprocess.PIPE)
    assert (layers["mnt"] / "etc/hostname").read_bytes() == b"top\n"
    wait_idle(proc.pid)  # the loop is now blocked waiting for the next request
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    assert not os.path.ismount(layers["mnt"])


def test_copy_ups_are_named_at_once_and_synced_in_the_background(public_tmp: Path) -> None:
    """Many copy-ups in a row: the upper dir seen from outside has each copy as soon as its
    request is answered (as the kernel's would), the daemon's fds stay bounded (the worker
    keeps up), and after the unmount the workdir lock is released only once every copy is
    synced, with no pending record left."""
    names = [f"f{i:03d}" for i in range(300)]
    lower = make_tree(public_tmp / "l", {f"d/{n}": n.encode() * 100 for n in names})
    upper, work = public_tmp / "u", public_tmp / "w"
    upper.mkdir()
    work.mkdir()
    with unionfs_mount(public_tmp / "m", [lower], upper, work) as m:
        fds_before = len(os.listdir(f"/proc/{m.process.pid}/fd"))
        most = 0
        for n in names:
            os.chmod(m.path / "d" / n, 0o600)
            up = os.lstat(upper / "d" / n)  # from outside, right after the request
            assert stat.S_IMODE(up.st_mode) == 0o600 and up.st_size == 400
            most = max(most, len(os.listdir(f"/proc/{m.process.pid}/fd")))
        # A slot fd each (open for the whole mount), one fd per copy being synced, and a few.
        assert most - fds_before < 2 * QUEUE_LIMIT + 8
        assert all(stat.S_IMODE(os.stat(m.path / "d" / n).st_mode) == 0o600 for n in names)
        unmount(m.path)
        lock = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # waits for the daemon to finish
            modes = {n: stat.S_IMODE(os.lstat(upper / "d" / n).st_mode) for n in names}
        finally:
            os.close(lock)
    assert set(modes.values()) == {0o600}
    assert (upper / "d" / names[-1]).read_bytes() == names[-1].encode() * 100
    assert os.listdir(work / "work") == []
    slots = list((work / "unionfs-pending").iterdir())
    assert slots and not any(os.listxattr(p) for p in slots)


def test_stop_signal_after_copy_ups_unmounts_cleanly(layers: Layers) -> None:
    """The syncer's thread blocks every signal: a stop signal reaches the request loop."""
    opts = f"lowerdir={layers['base']},upperdir={layers['upper']},workdir={layers['work']}"
    proc = start_daemon(opts, layers["mnt"], stderr=subprocess.PIPE)
    os.chmod(layers["mnt"] / "etc/passwd", 0o600)  # starts the syncer's thread
    wait_idle(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    assert not os.path.ismount(layers["mnt"])
    assert stat.S_IMODE(os.lstat(layers["upper"] / "etc/passwd").st_mode) == 0o600


def test_a_daemon_killed_in_a_burst_of_copy_ups_leaves_only_complete_copies(
        public_tmp: Path) -> None:
    """SIGKILL in the middle of a burst of copy-ups: every copy acknowledged is in the upper
    dir with its whole data (copies are named once built), the leftovers in work/ go and the
    pending records are cleared at the next mount, and the remount shows every file."""
    names = [f"f{i:03d}" for i in range(400)]
    data = {n: n.encode() * 2000 for n in names}
    lower = make_tree(public_tmp / "l", {f"d/{n}": data[n] for n in names})
    upper, work, mnt = public_tmp / "u", public_tmp / "w", public_tmp / "m"
    upper.mkdir()
    work.mkdir()
    mnt.mkdir()
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    proc = start_daemon(opts, mnt, stderr=subprocess.DEVNULL)
    try:
        for n in names[:300]:
            os.chmod(mnt / "d" / n, 0o600)
        proc.kill()
        proc.wait(timeout=20)
    finally:
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, check=False)
    copied = {p.name for p in (upper / "d").iterdir()}
    assert copied == set(names[:300])  # every chmod acknowledged is in the upper dir
    for path in (upper / "d").iterdir():
        assert path.read_bytes() == data[path.name], f"{path.name}: named before complete"
    with unionfs_mount(mnt, [lower], upper, work) as m:
        assert list((work / "work").iterdir()) == []
        assert not any(os.listxattr(p) for p in (work / "unionfs-pending").iterdir())
        for n in names:
            assert (m.path / "d" / n).read_bytes() == data[n]
        copied = {p.name for p in (upper / "d").iterdir()}
        modes = {n: stat.S_IMODE(os.stat(m.path / "d" / n).st_mode) for n in names}
    assert all(modes[n] == (0o600 if n in copied else 0o644) for n in names)
    assert copied <= set(names[:300])
