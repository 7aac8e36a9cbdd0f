"""TLS: verified by default, a self-signed registry refused until trusted or told otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mt_helpers import F, make_tar
from mt_images import build, write_layout
from mt_registry import FakeRegistry, ForwardProxy, Registry, cli, registry_server

from mounttool.images import ImageStore
from mounttool.ingest import load_path
from mounttool.store import Store

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from registry_server(tmp_path_factory, tls=True)


def test_tls_registry(registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    cert = registry.data.parent / "cert.pem"
    img = build([make_tar([F("tls", b"over https")])])
    name = f"{registry.host}/tls/app:1"
    load_path(ImageStore(Store(tmp_path / "src")), write_layout(tmp_path / "lay", [(name, img)]))

    res = cli(capsys, tmp_path / "src", "push", name)
    assert res.code == 1 and len(res.err.splitlines()) == 1
    assert "TLS certificate not trusted" in res.err and "self-signed" in res.err

    res = cli(capsys, tmp_path / "src", "push", "--tls-verify=false", name)
    assert res.code == 0, res.err  # unverified HTTPS (this registry has no plain HTTP)

    res = cli(capsys, tmp_path / "dst", "pull", "--ca-file", str(cert), name)
    assert res.code == 0, res.err
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    res = cli(capsys, tmp_path / "dst2", "pull", name)
    assert res.code == 0, res.err
    assert f"Image ID: {img.id}" in res.out


def test_through_an_http_proxy(registry: Registry, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    img = build([make_tar([F("proxied", b"via a proxy")])])
    name = f"{registry.host}/proxied/app:1"
    load_path(ImageStore(Store(tmp_path / "src")), write_layout(tmp_path / "lay", [(name, img)]))
    proxy = ForwardProxy()
    for var in ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("https_proxy", proxy.url.replace("http://", "http://user:pw@"))
    monkeypatch.setenv("SSL_CERT_FILE", str(registry.data.parent / "cert.pem"))
    try:
        res = cli(capsys, tmp_path / "src", "push", name)
        assert res.code == 0, res.err
        assert proxy.seen and all(s == ("CONNECT", registry.host) for s in proxy.seen)
        with FakeRegistry() as fake:  # plain HTTP: absolute targets through the proxy
            fake.routes["/v2/"] = lambda h: (200, {}, b"{}")
            fake.serve_image("plain/app", "1", img.blobs, img.manifest, OCI_MANIFEST,
                             lambda h: True)
            monkeypatch.setenv("http_proxy", proxy.url)
            res = cli(capsys, tmp_path / "dst", "pull", "--tls-verify=false",
                      f"{fake.host}/plain/app:1")
            assert res.code == 0, res.err
            assert ("GET", f"http://{fake.host}/v2/plain/app/manifests/1") in proxy.seen
            monkeypatch.setenv("no_proxy", "127.0.0.1")
            before = len(proxy.seen)
            assert cli(capsys, tmp_path / "dst2", "pull", name).code == 0
            assert len(proxy.seen) == before
    finally:
        proxy.close()
