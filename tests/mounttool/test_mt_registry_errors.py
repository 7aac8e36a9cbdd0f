"""Failures of pull and push: each one clear line, a non-zero status, nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from mt_helpers import F, make_tar, snapshot
from mt_images import Img, build, sha, write_layout
from mt_registry import FakeRegistry, Registry, Throttle, cli, free_port, registry_server

from mounttool.images import ImageStore
from mounttool.ingest import load_path
from mounttool.store import Store

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from registry_server(tmp_path_factory)


def stored_files(root: Path) -> list[str]:
    """Regular files in the store proper (not its lock, staging or downloads)."""
    return sorted(p for p, (mode, _, _) in snapshot(root).items()
                  if not p.startswith("downloads") and mode & 0o170000 == 0o100000)


def pushed(registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str], repo: str,
           big: int = 0) -> Img:
    img = build([make_tar([F("data", os.urandom(big) if big else repo.encode())])])
    name = f"{registry.host}/{repo}:1"
    layout = write_layout(tmp_path / f"layout-{repo.replace('/', '-')}", [(name, img)])
    load_path(ImageStore(Store(tmp_path / "src")), layout)
    assert cli(capsys, tmp_path / "src", "push", "--insecure", name).code == 0
    return img


def one_line_error(code: int, err: str, *parts: str) -> None:
    assert code == 1, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, err


def test_unknown_repository_and_tag(registry: Registry, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    pushed(registry, tmp_path, capsys, "known/repo")
    res = cli(capsys, tmp_path / "dst", "pull", "--insecure", f"{registry.host}/no/such")
    one_line_error(res.code, res.err, f"repository {registry.host}/no/such not found")
    res = cli(capsys, tmp_path / "dst", "pull", "--insecure", f"{registry.host}/known/repo:nope")
    one_line_error(res.code, res.err, "manifest unknown", "known/repo:nope")
    assert stored_files(tmp_path / "dst") == []


def test_corrupt_blob_on_the_server_is_detected(registry: Registry, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    img = pushed(registry, tmp_path, capsys, "corrupt/app", big=200_000)
    layer = json.loads(img.manifest)["layers"][0]["digest"]
    blob = registry.blob_file(layer)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    res = cli(capsys, tmp_path / "dst", "pull", "--insecure", f"{registry.host}/corrupt/app:1")
    one_line_error(res.code, res.err, f"blob {layer}", "does not match", "corrupt data")
    assert stored_files(tmp_path / "dst") == []
    assert list((tmp_path / "dst" / "downloads").iterdir()) == []


def test_server_down_and_timeouts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    res = cli(capsys, tmp_path / "dst", "pull", "--insecure", f"127.0.0.1:{port}/a/b")
    one_line_error(res.code, res.err, f"registry 127.0.0.1:{port}", "connection refused")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        res = cli(capsys, tmp_path / "dst", "pull", "--insecure", "--timeout", "0.5",
                  f"{host}/a/b")
        assert time.monotonic() - start < 5
    one_line_error(res.code, res.err, f"registry {host}", "timed out")
    assert stored_files(tmp_path / "dst") == []


def test_tls_is_verified_unless_told_otherwise(registry: Registry, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    res = cli(capsys, tmp_path / "dst", "pull", f"{registry.host}/a/b")
    one_line_error(res.code, res.err, "TLS handshake failed", "--tls-verify=false")


def _serve(fake: FakeRegistry, repo: str, manifest: bytes, media: str,
           blobs: dict[str, bytes] | None = None, digest: str | None = None) -> None:
    fake.routes["/v2/"] = lambda h: (200, {}, b"{}")
    fake.serve_image(repo, "1", blobs or {}, manifest, media, lambda h: True)
    if digest:
        route = fake.routes[f"/v2/{repo}/manifests/"]

        def lying(h: object) -> tuple[int, dict[str, str], bytes]:
            status, headers, body = route(h)  # type: ignore[arg-type,misc]
            return status, {**headers, "Docker-Content-Digest": digest}, body
        fake.routes[f"/v2/{repo}/manifests/"] = lying  # type: ignore[assignment]


def test_unsupported_media_types_and_manifest_digest_mismatch(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = build([make_tar([F("x", b"x")])])
    weird = json.loads(img.manifest)
    weird["layers"][0]["mediaType"] = "application/vnd.example.weird"
    with FakeRegistry() as fake:
        _serve(fake, "old/schema1", b'{"schemaVersion": 1}',
               "application/vnd.docker.distribution.manifest.v1+prettyjws")
        _serve(fake, "weird/layer", json.dumps(weird).encode(), OCI_MANIFEST, img.blobs)
        _serve(fake, "lying/app", img.manifest, OCI_MANIFEST, img.blobs, digest=sha(b"other"))
        dst = tmp_path / "dst"
        res = cli(capsys, dst, "pull", "--insecure", f"{fake.host}/old/schema1:1")
        one_line_error(res.code, res.err, "unsupported media type", "schema 1")
        res = cli(capsys, dst, "pull", "--insecure", f"{fake.host}/weird/layer:1")
        one_line_error(res.code, res.err, "unsupported media type",
                       "application/vnd.example.weird")
        res = cli(capsys, dst, "pull", "--insecure", f"{fake.host}/lying/app:1")
        one_line_error(res.code, res.err, "digest mismatch", sha(b"other"))
        res = cli(capsys, dst, "pull", "--insecure", f"{fake.host}/lying/app@{sha(b'x')}")
        one_line_error(res.code, res.err, "digest mismatch")
    assert stored_files(dst) == []


def test_a_killed_pull_is_completed_by_the_next(registry: Registry, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    img = pushed(registry, tmp_path, capsys, "killed/app", big=3_000_000)
    layer = json.loads(img.manifest)["layers"][0]["digest"]
    proxy = Throttle(registry.host, hold_after=1_000_000)
    dst = tmp_path / "dst"
    ref = f"{proxy.host}/killed/app:1"
    try:
        proc = subprocess.Popen([sys.executable, "-m", "mounttool.cli_registry", "--root",
                                 str(dst), "pull", "--insecure", ref],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proxy.held.wait(30), "the pull never reached the layer"
        partial = dst / "downloads" / f"sha256-{layer.split(':')[1]}.partial"
        deadline = time.monotonic() + 20
        while not (partial.exists() and partial.stat().st_size > 0):
            assert time.monotonic() < deadline, "no partial download appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=20)
        assert stored_files(dst) == []  # killed before anything reached the store
        kept = partial.stat().st_size
        assert 0 < kept < 3_000_000
        proxy.hold_after = None
        proxy.release.set()
        res = cli(capsys, dst, "pull", "--insecure", ref)
    finally:
        proxy.close()
    assert res.code == 0, res.err
    assert "resuming at" in res.out, res.out
    assert f"Image ID: {img.id}" in res.out
    assert (dst / "blobs" / "sha256" / layer.split(":")[1]).read_bytes() == img.blobs[layer]
    assert list((dst / "downloads").iterdir()) == []


def test_a_dropped_connection_is_resumed_within_the_pull(
        registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = pushed(registry, tmp_path, capsys, "dropped/app", big=2_000_000)
    proxy = Throttle(registry.host, cut_after=500_000)
    try:
        res = cli(capsys, tmp_path / "dst", "pull", "--insecure", f"{proxy.host}/dropped/app:1")
    finally:
        proxy.close()
    assert res.code == 0, res.err
    assert proxy.cut_after is None  # the cut happened
    assert "resuming at" in res.out and f"Image ID: {img.id}" in res.out


def test_a_layer_that_fails_to_unpack_leaves_nothing(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    img = build([make_tar([F("a", b"a")]), make_tar([F("b", b"b")])],
                diff_ids=[sha(b"not the layer"), sha(b"nor this")])
    with FakeRegistry() as fake:
        _serve(fake, "bad/diffid", img.manifest, OCI_MANIFEST, img.blobs)
        res = cli(capsys, tmp_path / "dst", "pull", "--insecure", f"{fake.host}/bad/diffid:1")
    one_line_error(res.code, res.err, "does not match")
    assert stored_files(tmp_path / "dst") == []
    assert list((tmp_path / "dst" / "downloads").iterdir()) == []
    assert list((tmp_path / "dst" / "layers" / "sha256").iterdir()) == []


def test_layers_download_concurrently(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = build([make_tar([F(f"f{i}", os.urandom(1000))]) for i in range(3)])
    layers = {d["digest"] for d in json.loads(img.manifest)["layers"]}
    barrier = threading.Barrier(3, timeout=10)
    with FakeRegistry() as fake:
        _serve(fake, "par/app", img.manifest, OCI_MANIFEST, img.blobs)
        plain = fake.routes["/v2/par/app/blobs/"]

        def together(h: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes] | None:
            if h.path.rsplit("/", 1)[1] in layers:
                barrier.wait()  # only passes when all three layer requests are in flight
            return plain(h)
        fake.routes["/v2/par/app/blobs/"] = together
        res = cli(capsys, tmp_path / "dst", "pull", "--insecure", "-j", "3",
                  f"{fake.host}/par/app:1")
    assert res.code == 0, res.err
    assert not barrier.broken


def test_a_bad_partial_download_is_replaced_or_discarded(
        registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = pushed(registry, tmp_path, capsys, "badpartial/app", big=100_000)
    layer = json.loads(img.manifest)["layers"][0]["digest"]
    downloads = tmp_path / "dst" / "downloads"
    downloads.mkdir(parents=True)
    partial = downloads / f"sha256-{layer.split(':')[1]}.partial"
    ref = f"{registry.host}/badpartial/app:1"
    partial.write_bytes(b"garbage that is not the start of the blob")
    res = cli(capsys, tmp_path / "dst", "pull", "--insecure", ref)
    assert res.code == 0, res.err  # resumed, failed verification, fetched again whole
    assert "resuming at" in res.out and f"Image ID: {img.id}" in res.out
    assert list(downloads.iterdir()) == []

    (tmp_path / "dst2" / "downloads").mkdir(parents=True)
    (tmp_path / "dst2" / "downloads" / partial.name).write_bytes(b"more garbage")
    res = cli(capsys, tmp_path / "dst2", "pull", "--insecure", "--no-resume", ref)
    assert res.code == 0 and "resuming" not in res.out, res.err


def test_connections_are_kept_alive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = build([make_tar([F(f"f{i}", os.urandom(1000))]) for i in range(4)])
    with FakeRegistry() as fake:
        _serve(fake, "alive/app", img.manifest, OCI_MANIFEST, img.blobs)
        res = cli(capsys, tmp_path / "dst", "pull", "-j", "1", f"{fake.host}/alive/app:1",
                  "--insecure")
    assert res.code == 0, res.err
    blob_requests = [r for r in fake.requests if "/blobs/" in r[1]]
    assert len(blob_requests) == 5 and len(fake.requests) == 6
    assert len(fake.client_ports) <= 2  # the main thread's connection and one worker's


def test_an_upload_cut_off_is_retried(registry: Registry, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    img = build([make_tar([F("up", os.urandom(1_000_000))])])
    proxy = Throttle(registry.host, cut_upload_after=300_000)
    name = f"{proxy.host}/cutoff/app:1"
    load_path(ImageStore(Store(tmp_path / "src")), write_layout(tmp_path / "lay", [(name, img)]))
    try:
        res = cli(capsys, tmp_path / "src", "push", "--insecure", name)
    finally:
        proxy.close()
    assert res.code == 0, res.err
    assert proxy.cut_upload_after is None  # the cut happened
    status, headers, _ = registry.get("/v2/cutoff/app/manifests/1", {"Accept": OCI_MANIFEST})
    assert status == 200 and headers["Docker-Content-Digest"] == img.digest


def test_ctrl_c_stops_a_pull_at_once_and_keeps_the_partial(
        registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = pushed(registry, tmp_path, capsys, "interrupted/app", big=2_000_000)
    layer = json.loads(img.manifest)["layers"][0]["digest"]
    proxy = Throttle(registry.host, hold_after=500_000)
    dst = tmp_path / "dst"
    partial = dst / "downloads" / f"sha256-{layer.split(':')[1]}.partial"
    try:
        proc = subprocess.Popen([sys.executable, "-m", "mounttool.cli_registry", "--root",
                                 str(dst), "pull", "--insecure", "--timeout", "60",
                                 f"{proxy.host}/interrupted/app:1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proxy.held.wait(30), "the pull never reached the layer"
        deadline = time.monotonic() + 20
        while not (partial.exists() and partial.stat().st_size > 0):
            assert time.monotonic() < deadline, "no partial download appeared"
            time.sleep(0.02)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - start < 10  # not the 60 s network timeout
    finally:
        proxy.close()
    assert proc.returncode == 130 and err.decode() == "mounttool pull: interrupted\n"
    assert partial.stat().st_size > 0 and stored_files(dst) == []


def test_a_pull_killed_while_unpacking_is_completed_by_the_next(
        registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    many = make_tar([F(f"d{i // 100}/f{i}", b"x" * 64) for i in range(4000)])
    img = build([many])
    name = f"{registry.host}/unpacking/app:1"
    write_layout(tmp_path / "lay", [(name, img)])
    load_path(ImageStore(Store(tmp_path / "src")), tmp_path / "lay")
    assert cli(capsys, tmp_path / "src", "push", "--insecure", name).code == 0
    dst = tmp_path / "dst"
    proc = subprocess.Popen([sys.executable, "-m", "mounttool.cli_registry", "--root", str(dst),
                             "pull", "--insecure", name], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not list((dst / "tmp").glob("layer-*/diff/d1")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the pull never started unpacking"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=20)
    if proc.returncode == -signal.SIGKILL:  # killed mid-unpack (else it won the race)
        assert not (dst / "images.json").exists()
        assert list((dst / "layers" / "sha256").iterdir()) == []
    res = cli(capsys, dst, "pull", "--insecure", name)
    assert res.code == 0, res.err
    if proc.returncode == -signal.SIGKILL:
        assert "Downloading" not in res.out, res.out  # the staged download was kept
    assert f"Image ID: {img.id}" in res.out
    assert list((dst / "tmp").iterdir()) == []
    (layer,) = (dst / "layers" / "sha256").iterdir()
    assert len(list((layer / "diff").rglob("f*"))) == 4000
