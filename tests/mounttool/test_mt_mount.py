"""Real mounts through unionfs: container mount, copy-up and whiteouts, commit, image mounts."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mt_helpers import merge_layers, read_tree
from mt_images import build, write_layout
from test_mt_cli import Run
from test_mt_images import BASE, TOP

from mounttool.errors import MountToolError
from mounttool.mounting import live_mounts, umount, wait_for_daemon


def _why_not() -> str:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if not shutil.which("fusermount3"):
        return "no fusermount3"
    return ""


WHY = _why_not()
pytestmark = [pytest.mark.fuse, pytest.mark.root, pytest.mark.skipif(bool(WHY), reason=WHY)]


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    r = Run(tmp_path / "store", capsys)
    r("load", "--input", str(write_layout(tmp_path / "lay", [("app:1", build([BASE, TOP]))])))
    try:
        yield r
    finally:
        for m in sorted(live_mounts()):
            if m.startswith(str(tmp_path)):
                with contextlib.suppress(Exception):
                    umount(Path(m))


def test_container_mount_commit_and_image_mount(run: Run, tmp_path: Path) -> None:
    run("create", "--name", "c1", "app:1")
    mnt = Path(run("mount", "c1").strip())
    assert mnt.is_dir() and str(mnt) in live_mounts()
    assert run("mount", "c1").strip() == str(mnt)  # already mounted: same path
    assert "Mounted at" in run("ps")
    (mnt / "etc/os-release").write_text("ID=changed\n")   # a lower file was whited out: new
    (mnt / "bin/link").unlink()                           # delete a lower symlink
    (mnt / "var/cache/y").write_text("copied up")         # copy-up of a lower file
    (mnt / "newdir").mkdir()
    (mnt / "newdir/f").write_bytes(b"\0" * 5000)
    upper = Path(json.loads(run("inspect", "c1"))[0]["GraphDriver"]["Data"]["UpperDir"])
    st = os.lstat(upper / "bin/link")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0  # the whiteout, as ls -l shows it
    assert "D /bin/link" in run("diff", "c1").splitlines()
    want = read_tree(mnt)
    new_id = run("commit", "c1", "app:2").strip()
    img_mnt = tmp_path / "img"
    run("mount", "--image", "app:2", str(img_mnt))
    got = read_tree(img_mnt)
    for tree in (want, got):
        del tree["."]
    differ = {k: (want.get(k), got.get(k), read_tree(upper).get(k)) for k in set(want) | set(got)
              if want.get(k) != got.get(k)}
    assert not differ, differ  # (container view, committed image, upper dir now)
    with pytest.raises(OSError) as exc:
        (img_mnt / "x").write_text("no")
    assert exc.value.errno == errno.EROFS
    assert run("umount", str(img_mnt)).strip() == str(img_mnt)
    assert "is mounted" in run("rm", "c1", code=1)
    assert run("umount", "c1") == "c1\n"
    assert str(mnt) not in live_mounts()
    assert "Created" in run("ps", "-a")
    # the upper layer persists: mounting again shows the same tree
    again = Path(run("mount", "c1").strip())
    tree = read_tree(again)
    del tree["."]
    assert tree == want
    assert run("rm", "-f", "c1") == "c1\n"
    assert str(again) not in live_mounts()
    assert new_id.startswith("sha256:")


def test_image_layers_merge_like_the_mount(run: Run, tmp_path: Path) -> None:
    info = json.loads(run("inspect", "app:1"))[0]
    layers = [Path(p) for p in info["GraphDriver"]["Data"]["LowerDir"].split(":")]
    mnt = tmp_path / "m"
    run("mount", "--image", "app:1", str(mnt))
    assert f"in use by the mount at {mnt}" in run("rmi", "app:1", code=1)
    assert "Deleted Images" not in run("prune", "-a")
    got = read_tree(mnt)
    del got["."]
    assert got == merge_layers(layers)
    run("umount", str(mnt))
    assert run("rmi", "app:1").startswith("Untagged: app:1")


def test_mount_failure_is_one_line(run: Run, tmp_path: Path) -> None:
    run("create", "--name", "c1", "app:1")
    target = tmp_path / "file"
    target.write_text("not a dir")
    err = run("mount", "c1", str(target), code=1)
    assert "mount" in err
    assert "Created" in run("ps", "-a")


def test_demo_tour_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from mounttool.demo.tour import main
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "c--------- 1 root root 0, 0" in out  # the whiteout, as ls -l shows it
    assert "D /etc/hostname" in out and "greeting=hallo" in out
    assert not live_mounts() or all("mounttool-tour-" not in m for m in live_mounts())


def hold_shared_lock(path: Path, seconds: float) -> subprocess.Popen[bytes]:
    """flock(1) holding a shared lock on ``path`` for ``seconds``; returns once it is held."""
    proc = subprocess.Popen(["flock", "-s", str(path), "sh", "-c", f"echo held; sleep {seconds}"],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
    return proc


def test_umount_waits_for_the_daemon_to_release_its_workdir(tmp_path: Path) -> None:
    # A daemon holds a flock on its workdir until its last copy-up is synced.
    holder = hold_shared_lock(tmp_path, seconds=0.4)
    try:
        started = time.monotonic()
        wait_for_daemon(tmp_path, timeout=10)
        assert time.monotonic() - started >= 0.2
        assert holder.poll() is not None or holder.wait(5) == 0
    finally:
        holder.kill()
        holder.wait()


def test_a_daemon_that_never_exits_is_one_error(tmp_path: Path) -> None:
    holder = hold_shared_lock(tmp_path, seconds=30)
    try:
        with pytest.raises(MountToolError, match="still running"):
            wait_for_daemon(tmp_path, timeout=0.2)
    finally:
        holder.kill()
        holder.wait()
