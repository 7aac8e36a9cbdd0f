"""Tests for containers, diff, commit and export, on upper dirs written in the overlay format.

No mount is needed: the upper dir is changed directly the way a unionfs mount leaves it (copied
up files, char 0/0 whiteouts, opaque directories), and the results are compared, whole, with
the overlay view of the layers.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from mt_helpers import merge_layers, read_tree, snapshot
from mt_images import build, write_layout
from test_mt_cli import Run
from test_mt_images import BASE, TOP

from mounttool.commit import apply_change
from mounttool.containers import Containers
from mounttool.errors import UsageError
from mounttool.images import ImageStore
from mounttool.store import Store
from mounttool.unpack import unpack_into
from unionfs.whiteout import KERNEL_FORMAT, make_whiteout, set_opaque


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    r = Run(tmp_path / "store", capsys)
    r("load", "--input", str(write_layout(tmp_path / "lay", [("app:1", build([BASE, TOP]))])))
    return r


def _container(run: Run, name: str = "c1") -> tuple[Containers, ImageStore, Path, list[Path]]:
    run("create", "--name", name, "app:1")
    store = Store(run.root)
    cs, ims = Containers(store), ImageStore(store)
    c = cs.get(name)
    return cs, ims, cs.upper(c), cs.lowers(ims, c)


def _change_upper(upper: Path) -> None:
    """What a session in the container leaves: copy-ups, new files, deletes, a replaced dir."""
    (upper / "bin").mkdir()
    (upper / "bin/sh").write_bytes(b"patched sh")
    (upper / "etc").mkdir()
    (upper / "etc/hostname").write_text("box\n")
    fd = os.open(upper / "etc", os.O_RDONLY | os.O_DIRECTORY)
    make_whiteout(fd, b"new", KERNEL_FORMAT)           # delete a lower file
    os.close(fd)
    (upper / "var/cache").mkdir(parents=True)          # delete-and-recreate a directory
    (upper / "var/cache/z").write_text("z")
    fd = os.open(upper / "var", os.O_RDONLY | os.O_DIRECTORY)
    set_opaque(fd, b"cache", KERNEL_FORMAT)
    os.close(fd)
    os.setxattr(upper / "etc/hostname", "user.note", b"hi")
    os.mkfifo(upper / "fifo")
    fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    make_whiteout(fd, b"ghost", KERNEL_FORMAT)          # hides nothing: not a change


def test_diff_lines(run: Run) -> None:
    _, _, upper, _ = _container(run)
    _change_upper(upper)
    assert run("diff", "c1").splitlines() == [
        "C /bin", "C /bin/sh", "C /etc", "A /etc/hostname", "D /etc/new", "A /fifo", "C /var",
        "C /var/cache", "D /var/cache/y", "A /var/cache/z"]


def test_commit_reproduces_the_container_tree(run: Run, tmp_path: Path) -> None:
    _, _, upper, lowers = _container(run)
    _change_upper(upper)
    before = merge_layers([upper, *lowers])
    new_id = run("commit", "c1", "app:2", "-m", "msg", "-a", "me <me@x>",
                 "-c", "CMD [\"/bin/ash\"]", "-c", "ENV A=1 B=2", "-c", "LABEL k=v",
                 "-c", "EXPOSE 80", "-c", "WORKDIR /srv", "-c", "USER nobody").strip()
    info = json.loads(run("inspect", "app:2"))[0]
    assert info["Id"] == new_id and len(info["RootFS"]["Layers"]) == 3
    cfg = info["Config"]
    assert cfg["Cmd"] == ["/bin/ash"] and "A=1" in cfg["Env"] and cfg["Labels"] == {"k": "v"}
    assert cfg["ExposedPorts"] == {"80/tcp": {}} and cfg["WorkingDir"] == "/srv"
    assert cfg["User"] == "nobody" and info["Author"] == "me <me@x>"
    hist = run("history", "app:2").splitlines()
    assert "mounttool commit c1" in hist[1] and "msg" in hist[1]
    new_layers = [Path(p) for p in info["GraphDriver"]["Data"]["LowerDir"].split(":")]
    assert new_layers[1:] == lowers  # the image's own layers are shared, not copied
    assert merge_layers(new_layers) == before
    # and through a save/load round trip into another store
    run("save", "app:2", "-o", str(tmp_path / "a2.tar"))
    other = Run(tmp_path / "other", run.capsys)
    other("load", "-i", str(tmp_path / "a2.tar"))
    again = json.loads(other("inspect", "app:2"))[0]
    assert again["Id"] == new_id
    assert merge_layers([Path(p) for p in again["GraphDriver"]["Data"]["LowerDir"]
                         .split(":")]) == before


def test_commit_is_deterministic(run: Run) -> None:
    from mounttool.changes import write_layer
    _, _, upper, _ = _container(run)
    _change_upper(upper)
    a, b = io.BytesIO(), io.BytesIO()
    write_layer(upper, a)
    write_layer(upper, b)
    assert a.getvalue() == b.getvalue()
    with tarfile.open(fileobj=io.BytesIO(a.getvalue())) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names.index("var/cache/.wh..wh..opq") == names.index("var/cache") + 1
    assert "etc/.wh.new" in names and ".wh.ghost" in names
    assert not any("trusted.overlay" in k for m in members for k in m.pax_headers)


def test_export_is_the_merged_tree(run: Run, tmp_path: Path) -> None:
    _, _, upper, lowers = _container(run)
    _change_upper(upper)
    run("export", "c1", "-o", str(tmp_path / "root.tar"))
    dest = tmp_path / "x"
    dest.mkdir()
    with tarfile.open(tmp_path / "root.tar") as tar:
        assert not any(".wh." in n for n in tar.getnames())
    with open(tmp_path / "root.tar", "rb") as f:
        unpack_into(f, dest)  # keeps xattrs and exact times, unlike tarfile.extractall
    got = read_tree(dest)
    del got["."]
    assert got == merge_layers([upper, *lowers])


def test_container_lifecycle_and_errors(run: Run) -> None:
    cid = run("create", "--name", "web", "app:1").strip()
    assert len(cid) == 64
    run("create", "app:1")
    out = run("ps", "-a").splitlines()
    assert out[0].split()[:2] == ["CONTAINER", "ID"] and len(out) == 3
    assert run("ps") .splitlines()[1:] == []  # nothing mounted
    assert sorted(run("ps", "-a", "--format", "{{.Names}}={{.Status}}").split())[-1] == \
        "web=Created"
    before = snapshot(run.root)
    assert "already in use" in run("create", "--name", "web", "app:1", code=1)
    assert "invalid container name" in run("create", "--name", "a/b", "app:1", code=2)
    assert "no such image" in run("create", "nope", code=1)
    assert "in use by container" in run("rmi", "app:1", code=1)
    assert "no such container" in run("diff", "nope", code=1)
    assert "no such container" in run("rm", "web", "nope", code=1)
    assert "invalid --change" in run("commit", "web", "x:1", "-c", "FROB x", code=2)
    assert "no such image or container" in run("inspect", "nope", code=1)
    assert snapshot(run.root) == before
    assert json.loads(run("inspect", "web"))[0]["Id"] == cid
    assert run("rmi", "-f", "app:1") == "Untagged: app:1\n"  # kept, dangling, for the users
    assert "<none>" in run("images") and run("diff", "web") == ""
    assert run("rm", "web") == "web\n"
    assert len(run("ps", "-a", "-q").split()) == 1


def test_apply_change_forms() -> None:
    cfg: dict[str, object] = {"Env": ["PATH=/bin"]}
    apply_change(cfg, "CMD echo hi")
    apply_change(cfg, "ENV PATH=/usr/bin X=1")
    apply_change(cfg, "VOLUME /data /logs")
    apply_change(cfg, "STOPSIGNAL SIGTERM")
    assert cfg["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert cfg["Env"] == ["PATH=/usr/bin", "X=1"]
    assert cfg["Volumes"] == {"/data": {}, "/logs": {}} and cfg["StopSignal"] == "SIGTERM"
    for bad in ("CMD", "ENV X", "CMD [oops", "NOPE x"):
        with pytest.raises(UsageError):
            apply_change(cfg, bad)


def test_commit_on_a_docker_archive_image_and_an_empty_commit(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]
                                                                ) -> None:
    from mt_images import write_docker_archive
    run = Run(tmp_path / "store", capsys)
    run("load", "-i", str(write_docker_archive(tmp_path / "d.tar",
                                               [(["old:1"], build([BASE, TOP], ""))])))
    run("create", "--name", "c", "old:1")
    empty_id = run("commit", "c", "old:empty").strip()
    info = json.loads(run("inspect", "old:empty"))[0]
    assert info["Id"] == empty_id and len(info["RootFS"]["Layers"]) == 3
    assert info["Manifest"]["MediaType"] == \
        "application/vnd.docker.distribution.manifest.v2+json"
    store = Store(tmp_path / "store")
    cs = Containers(store)
    (cs.upper(cs.get("c")) / "new").write_text("n")
    run("commit", "c", "old:2")
    run("save", "old:2", "-o", str(tmp_path / "o2.tar"))
    other = Run(tmp_path / "other", capsys)
    assert other("load", "-i", str(tmp_path / "o2.tar")) == "Loaded image: old:2\n"
    layers = json.loads(other("inspect", "old:2"))[0]["GraphDriver"]["Data"]["LowerDir"]
    assert merge_layers([Path(p) for p in layers.split(":")])["new"][4] == b"n"


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount overlayfs")
def test_commit_of_a_kernel_overlayfs_upper(run: Run, tmp_path: Path) -> None:
    """diff and commit read an upper dir written by the kernel's own overlayfs."""
    import shutil
    import subprocess
    _, _, upper, lowers = _container(run)
    work = upper.parent / "work"
    mnt = tmp_path / "k"
    mnt.mkdir()
    opts = (f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work},"
            "redirect_dir=off,index=off,metacopy=off")
    res = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)],
                         capture_output=True, text=True, check=False)
    if res.returncode:
        pytest.skip(f"kernel overlayfs not available here: {res.stderr.strip()}")
    try:
        (mnt / "bin/sh").write_bytes(b"patched")               # copy-up
        (mnt / "etc/new").unlink()                             # whiteout
        shutil.rmtree(mnt / "var/cache")                       # opaque on re-create
        (mnt / "var/cache").mkdir()
        (mnt / "var/cache/z").write_text("z")
        os.rename(mnt / "tmp/f", mnt / "tmp/g")                 # rename of a lower file
        os.chmod(mnt / "tmp", 0o700)
        want = read_tree(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    del want["."]
    assert run("diff", "c1").splitlines() == [
        "C /bin", "C /bin/sh", "C /etc", "D /etc/new", "C /tmp", "D /tmp/f", "A /tmp/g",
        "C /var", "C /var/cache", "D /var/cache/y", "A /var/cache/z"]
    run("commit", "c1", "app:2")
    info = json.loads(run("inspect", "app:2"))[0]
    layers = [Path(p) for p in info["GraphDriver"]["Data"]["LowerDir"].split(":")]
    assert merge_layers(layers) == want


def test_commit_of_odd_upper_entries(run: Run) -> None:
    """Non-UTF-8 names, hardlinks inside the upper dir, sockets (not storable: skipped)."""
    import socket
    _, _, upper, lowers = _container(run)
    odd = os.fsencode(upper) + b"/caf\xe9"
    with open(odd, "wb") as f:
        f.write(b"bytes name")
    os.link(odd, os.fsencode(upper) + b"/alias")
    cwd = os.getcwd()
    os.chdir(upper)  # a socket path must be short
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind("sock")
        sock.close()
    finally:
        os.chdir(cwd)
    want = merge_layers([upper, *lowers])
    del want["sock"]
    run("commit", "c1", "app:odd")
    info = json.loads(run("inspect", "app:odd"))[0]
    layers = [Path(p) for p in info["GraphDriver"]["Data"]["LowerDir"].split(":")]
    assert merge_layers(layers) == want
    top = os.fsencode(layers[0])
    assert os.stat(top + b"/caf\xe9").st_ino == os.stat(top + b"/alias").st_ino
