"""Interoperability: images pushed by skopeo (OCI and Docker schema 2) pull to the right tree,
and the tree mounts through unionfs as the layers say."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mt_helpers import OPQ, D, F, S, W, make_tar, merge_layers, plain_tree
from mt_images import build, write_docker_archive, write_layout
from mt_registry import Registry, cli, registry_server

from mounttool.images import ImageStore
from mounttool.ingest import load_path
from mounttool.store import Store
from support.mounted import unionfs_mount

BASE = make_tar([D("etc"), F("etc/os-release", b"ID=skopeo\n"), D("bin"),
                 F("bin/sh", b"#!sh", mode=0o755), D("var"), D("var/cache"),
                 F("var/cache/old", b"old")])
TOP = make_tar([W("etc/os-release"), F("etc/new", b"new"), OPQ("var/cache"),
                F("var/cache/fresh", b"fresh"), S("bin/ash", "sh")])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (apt-get install skopeo)")
    yield from registry_server(tmp_path_factory)


def skopeo_copy(src: str, dest: str, *extra: str) -> None:
    res = subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", *extra, src,
                          dest], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def layer_dirs(root: Path, name: str) -> list[Path]:
    """The unpacked layers of an image, top first (as lowerdir= lists them)."""
    images = ImageStore(Store(root))
    with images.store.locked(exclusive=False):
        cat = images.load()
        info = images.info(cat, images.resolve(cat, name))
    return [images.layers.diff_dir(c) for c in reversed(info.chain_ids)]


def pulled_matches_local(registry: Registry, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str], ref: str,
                         local: list[Path]) -> list[Path]:
    res = cli(capsys, tmp_path / "dst", "pull", "--tls-verify=false", ref)
    assert res.code == 0, res.err
    pulled = layer_dirs(tmp_path / "dst", ref)
    assert len(pulled) == len(local)
    for a, b in zip(pulled, local, strict=True):
        assert merge_layers([a]) == merge_layers([b])
    return pulled


def test_skopeo_pushed_oci_image(registry: Registry, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    img = build([BASE, TOP], "gzip")
    layout = write_layout(tmp_path / "layout", [("example.com/sk/app:v1", img)])
    load_path(ImageStore(Store(tmp_path / "local")), layout)
    local = layer_dirs(tmp_path / "local", "example.com/sk/app:v1")
    ref = f"{registry.host}/skopeo/oci:v1"
    skopeo_copy(f"oci:{layout}:v1", f"docker://{ref}")
    pulled = pulled_matches_local(registry, tmp_path, capsys, ref, local)
    res = cli(capsys, tmp_path / "dst", "pull", "--tls-verify=false", ref)
    assert f"Image ID: {img.id}" in res.out  # skopeo kept the config: same image id
    tree = merge_layers(pulled)
    assert "etc/os-release" not in tree and "var/cache/old" not in tree
    assert tree["etc/new"][4] == b"new" and "var/cache/fresh" in tree


def test_skopeo_pushed_docker_schema2_image(registry: Registry, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    img = build([BASE, TOP], "")
    archive = write_docker_archive(tmp_path / "img.tar", [(["sk/docker:v2"], img)])
    load_path(ImageStore(Store(tmp_path / "local")), archive)
    local = layer_dirs(tmp_path / "local", "sk/docker:v2")
    ref = f"{registry.host}/skopeo/docker:v2"
    skopeo_copy(f"docker-archive:{archive}", f"docker://{ref}", "--format", "v2s2")
    _, headers, _ = registry.get("/v2/skopeo/docker/manifests/v2", {
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
    pulled_matches_local(registry, tmp_path, capsys, ref, local)


@pytest.mark.fuse
def test_skopeo_pushed_image_mounts_to_the_right_tree(registry: Registry, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    img = build([BASE, TOP], "zstd")
    layout = write_layout(tmp_path / "layout", [("example.com/sk/mnt:v1", img)])
    ref = f"{registry.host}/skopeo/mnt:v1"
    skopeo_copy(f"oci:{layout}:v1", f"docker://{ref}")
    res = cli(capsys, tmp_path / "dst", "pull", "--tls-verify=false", ref)
    assert res.code == 0, res.err
    lowers = layer_dirs(tmp_path / "dst", ref)
    with unionfs_mount(tmp_path / "mnt", lowers) as m:
        seen = plain_tree(m.path)
        assert (m.path / "etc" / "new").read_bytes() == b"new"
        assert not (m.path / "etc" / "os-release").exists()
        assert sorted(p.name for p in (m.path / "var" / "cache").iterdir()) == ["fresh"]
    assert seen == merge_layers(lowers)
