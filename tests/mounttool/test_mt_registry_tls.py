"""TLS: verified by default, a self-signed registry refused until trusted or told otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mt_helpers import F, make_tar
from mt_images import build, write_layout
from mt_registry import Registry, cli, registry_server

from mounttool.images import ImageStore
from mounttool.ingest import load_path
from mounttool.store import Store


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
