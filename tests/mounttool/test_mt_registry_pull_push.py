"""Push and pull against a real registry (Debian's docker-registry on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mt_helpers import D, F, make_tar, merge_layers, snapshot
from mt_images import Img, build, write_layout
from mt_registry import Registry, cli, registry_server

from mounttool.digest import Digest
from mounttool.images import ImageStore
from mounttool.ingest import load_path
from mounttool.oci import host_platform
from mounttool.registry.client import RegistryClient
from mounttool.registry.transport import RegistryOptions, Transport
from mounttool.store import Store


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from registry_server(tmp_path_factory)


def unique_layers(tag: str, big: int = 0) -> list[bytes]:
    """Two layers whose content no other test shares (blobs are global in a registry)."""
    base = make_tar([D("etc"), F("etc/os-release", f"ID={tag}\n".encode()),
                     D("bin"), F("bin/sh", b"sh", mode=0o755)])
    top = make_tar([F("etc/app", os.urandom(big) if big else f"app {tag}".encode())])
    return [base, top]


def load_image(root: Path, tmp: Path, name: str, img: Img) -> ImageStore:
    images = ImageStore(Store(root))
    layout = write_layout(tmp / f"layout-{hashlib.sha1(name.encode()).hexdigest()[:8]}",
                          [(name, img)])
    load_path(images, layout)
    return images


def stored_manifest(root: Path, name: str) -> Digest:
    images = ImageStore(Store(root))
    with images.store.locked(exclusive=False):
        cat = images.load()
        return cat.images[images.resolve(cat, name)].manifest


def test_push_then_pull_round_trips_digests(registry: Registry, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    img = build(unique_layers("rt"))
    name = f"{registry.host}/rt/app:v1"
    load_image(tmp_path / "a", tmp_path, name, img)
    res = cli(capsys, tmp_path / "a", "push", "--tls-verify=false", name)
    assert res.code == 0, res.err
    assert f"v1: digest: {img.digest} size: {len(img.manifest)}" in res.out
    status, headers, body = registry.get("/v2/rt/app/manifests/v1", {
        "Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 200 and body == img.manifest
    assert headers["Docker-Content-Digest"] == img.digest

    res = cli(capsys, tmp_path / "a", "push", "--tls-verify=false", img.id[7:19])
    assert res.code == 2 and "name the destination (push IMAGE REF)" in res.err

    res = cli(capsys, tmp_path / "b", "pull", "--tls-verify=false", name)
    assert res.code == 0, res.err
    assert f"Digest: {img.digest}" in res.out and f"Image ID: {img.id}" in res.out
    assert str(stored_manifest(tmp_path / "b", name)) == img.digest
    blobs_b = tmp_path / "b" / "blobs" / "sha256"
    for digest, data in img.blobs.items():
        assert (blobs_b / digest.split(":")[1]).read_bytes() == data
    a_layers = sorted((tmp_path / "a" / "layers" / "sha256").iterdir())
    b_layers = sorted((tmp_path / "b" / "layers" / "sha256").iterdir())
    assert [p.name for p in a_layers] == [p.name for p in b_layers]
    for la, lb in zip(a_layers, b_layers, strict=True):
        assert merge_layers([la / "diff"]) == merge_layers([lb / "diff"])

    res = cli(capsys, tmp_path / "b", "pull", "--tls-verify=false", name)
    assert res.code == 0 and "Image is up to date" in res.out
    res = cli(capsys, tmp_path / "b", "pull", "-q", "--tls-verify=false", name)
    assert res.out == f"{name}\n"


def test_chunked_upload_and_cross_repository_mount(registry: Registry, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    img = build(unique_layers("chunk", big=300_000))
    name = f"{registry.host}/chunk/one:1"
    load_image(tmp_path / "a", tmp_path, name, img)
    chunks: list[int] = []
    real = RegistryClient.upload_chunk

    def counting(self: RegistryClient, *args: Any) -> str:
        chunks.append(args[-1])
        return real(self, *args)
    monkeypatch.setattr(RegistryClient, "upload_chunk", counting)
    res = cli(capsys, tmp_path / "a", "push", "--insecure", "--chunk-size", "65536", name)
    assert res.code == 0, res.err
    assert res.out.count(": Pushed") == 3
    big = max(len(b) for b in img.blobs.values())
    assert sum(chunks) == big and max(chunks) == 65536  # only the big layer went in chunks

    other = f"{registry.host}/chunk/two:1"
    res = cli(capsys, tmp_path / "a", "push", "--insecure", name, other)
    assert res.code == 0, res.err
    assert res.out.count("Mounted from chunk/one") == 3, res.out
    res = cli(capsys, tmp_path / "a", "push", "--insecure", name, other)
    assert res.out.count("Layer already exists") == 3, res.out

    res = cli(capsys, tmp_path / "b", "pull", "--insecure", other)
    assert res.code == 0, res.err
    assert str(stored_manifest(tmp_path / "b", other)) == img.digest


def test_layers_in_the_store_are_not_downloaded(registry: Registry, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    base, top = unique_layers("skip")
    first, second = build([base, top]), build([base, make_tar([F("second", b"2")])])
    for n, img in (("first", first), ("second", second)):
        load_image(tmp_path / "src", tmp_path, f"{registry.host}/skip/{n}:1", img)
        assert cli(capsys, tmp_path / "src", "push", "--insecure",
                   f"{registry.host}/skip/{n}:1").code == 0
    assert cli(capsys, tmp_path / "dst", "pull", "--insecure",
               f"{registry.host}/skip/first:1").code == 0
    res = cli(capsys, tmp_path / "dst", "pull", "--insecure", f"{registry.host}/skip/second:1")
    assert res.code == 0, res.err
    base_blob = json.loads(second.manifest)["layers"][0]["digest"]
    assert f"{Digest.parse(base_blob).short}: Already exists" in res.out
    assert res.out.count("Download complete") == 1


def _put(registry: Registry, path: str, body: bytes, media: str) -> None:
    import http.client

    conn = http.client.HTTPConnection(registry.host, timeout=10)
    conn.request("PUT", path, body=body, headers={"Content-Type": media})
    resp = conn.getresponse()
    assert resp.status == 201, resp.read()
    conn.close()


def test_index_platform_selection(registry: Registry, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    amd = build(unique_layers("amd"), arch="amd64")
    arm = build(unique_layers("arm"), arch="arm64")
    for arch, img in (("amd", amd), ("arm", arm)):
        load_image(tmp_path / "src", tmp_path, f"{registry.host}/multi/app:{arch}", img)
        assert cli(capsys, tmp_path / "src", "push", "--insecure",
                   f"{registry.host}/multi/app:{arch}").code == 0
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": img.digest,
         "size": len(img.manifest), "platform": {"os": "linux", "architecture": arch}}
        for arch, img in (("amd64", amd), ("arm64", arm))]}).encode()
    _put(registry, "/v2/multi/app/manifests/all", index, "application/vnd.oci.image.index.v1+json")
    docker_list = index.replace(b"application/vnd.oci.image.index.v1+json",
                                b"application/vnd.docker.distribution.manifest.list.v2+json")
    _put(registry, "/v2/multi/app/manifests/docker", docker_list,
         "application/vnd.docker.distribution.manifest.list.v2+json")
    res = cli(capsys, tmp_path / "dst", "pull", "--insecure", f"{registry.host}/multi/app:docker")
    host = {"amd64": amd, "arm64": arm}.get(host_platform().architecture)
    if host is None:
        assert res.code == 1 and "no image for platform" in res.err
    else:  # no --platform: the host's
        assert res.code == 0 and f"Image ID: {host.id}" in res.out, res.err
    ref = f"{registry.host}/multi/app:all"
    res = cli(capsys, tmp_path / "dst", "pull", "--insecure", "--platform", "linux/arm64", ref)
    assert res.code == 0, res.err
    assert f"Image ID: {arm.id}" in res.out
    res = cli(capsys, tmp_path / "dst", "pull", "--insecure", "--platform", "linux/amd64", ref)
    assert f"Image ID: {amd.id}" in res.out
    before = snapshot(tmp_path / "dst")
    res = cli(capsys, tmp_path / "dst", "pull", "--insecure", "--platform", "linux/s390x", ref)
    assert res.code == 1
    assert res.err.strip().endswith("no image for platform linux/s390x in the index "
                                    "(has: linux/amd64, linux/arm64)"), res.err
    assert len(res.err.splitlines()) == 1
    assert snapshot(tmp_path / "dst") == before
    res = cli(capsys, tmp_path / "dst", "pull", "--insecure", "--platform", "linux/amd64",
              f"{registry.host}/multi/app:arm")
    assert res.code == 1 and "is an image for linux/arm64, not linux/amd64" in res.err
    res = cli(capsys, tmp_path / "dst", "pull", "--insecure", "--platform", "linux", ref)
    assert res.code == 2 and "os/arch[/variant]" in res.err


def test_search_lists_the_catalog(registry: Registry, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    img = build(unique_layers("search"))
    for n in ("findme/one", "findme/two", "other/three"):
        load_image(tmp_path / "src", tmp_path, f"{registry.host}/{n}:1", img)
        assert cli(capsys, tmp_path / "src", "push", "--insecure",
                   f"{registry.host}/{n}:1").code == 0
    res = cli(capsys, tmp_path, "search", "--insecure", f"{registry.host}/findme")
    assert res.code == 0, res.err
    assert res.out.splitlines() == [f"{registry.host}/findme/one", f"{registry.host}/findme/two"]
    client = RegistryClient(Transport(registry.host, RegistryOptions(insecure=True), None))
    assert [n for n in client.catalog(page=1) if "findme/" in n] == ["findme/one", "findme/two"]
    res = cli(capsys, tmp_path, "search", "findme")
    assert res.code == 2 and "search needs a registry" in res.err


def test_concurrent_pulls_into_one_store(registry: Registry, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    img = build(unique_layers("concurrent", big=2_000_000))
    name = f"{registry.host}/concurrent/app:1"
    load_image(tmp_path / "src", tmp_path, name, img)
    assert cli(capsys, tmp_path / "src", "push", "--insecure", name).code == 0
    cmd = [sys.executable, "-m", "mounttool.cli_registry", "--root", str(tmp_path / "dst"),
           "pull", "-q", "--insecure", name]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out.decode() == f"{name}\n"
    assert str(stored_manifest(tmp_path / "dst", name)) == img.digest
    assert list((tmp_path / "dst" / "downloads").iterdir()) == []
