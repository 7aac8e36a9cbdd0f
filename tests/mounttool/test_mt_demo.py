"""The bundled demo image: deterministic build, loads, and shows its whiteouts and opaque dir."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mt_helpers import kernel_view, merge_layers, plain_tree
from test_mt_cli import Run

from mounttool.demo import NAME, write_archive
from mounttool.images import ImageStore
from mounttool.ingest import load_path
from mounttool.store import Store


def test_demo_image(tmp_path: Path, capsys: object) -> None:
    write_archive(tmp_path / "a.tar")
    write_archive(tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    run = Run(tmp_path / "store", capsys)  # type: ignore[arg-type]
    assert run("load", "-i", str(tmp_path / "a.tar")) == f"Loaded image: {NAME}\n"
    info = json.loads(run("inspect", NAME))[0]
    layers = [Path(p) for p in info["GraphDriver"]["Data"]["LowerDir"].split(":")]
    tree = merge_layers(layers)
    assert "etc/motd" not in tree and "usr/share/doc/demo" not in tree
    assert tree["etc/app.conf"][4] == b"greeting=bonjour\n"
    assert [k for k in tree if k.startswith("var/lib/demo/")] == ["var/lib/demo/state"]
    assert tree["bin/hello"][1] == 0o755
    out = run("tree", NAME, "/etc").splitlines()
    assert out[1].split()[0] == "#3" and out[1].endswith("/etc/app.conf")
    assert len(run("history", NAME).splitlines()) == 4


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount overlayfs")
def test_kernel_viewfs_on_opaque_dirs_and_whiteouts(tmp_path: Path) -> None:
    """The demo image (opaque dir, whiteouts, replaced files) read by kernel overlayfs."""
    write_archive(tmp_path / "demo.tar")
    images = ImageStore(Store(tmp_path / "s"))
    (loaded,) = load_path(images, tmp_path / "demo.tar")
    info = images.info(images.load(), loaded.id)
    layers = [images.layers.diff_dir(c) for c in reversed(info.chain_ids)]
    with kernel_view(layers, tmp_path / "kmnt") as mnt:
        got = plain_tree(mnt)
    assert got == merge_layers(layers)
    assert sorted(k for k in got if k.startswith(("etc/", "var/lib/demo/"))) == [
        "etc/app.conf", "etc/hostname", "etc/os-release", "var/lib/demo/state"]
    assert "usr/share/doc/demo" not in got
