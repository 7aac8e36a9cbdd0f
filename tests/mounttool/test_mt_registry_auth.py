"""Authentication: htpasswd (basic) on a real registry, bearer tokens on a scripted one, and
the credential files of ``login``/``logout`` and docker."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import stat
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from mt_helpers import F, make_tar
from mt_images import build, write_layout
from mt_registry import FakeRegistry, Registry, cli, registry_server

from mounttool.images import ImageStore
from mounttool.ingest import load_path
from mounttool.registry.auth import Credentials, parse_challenges
from mounttool.registry.credentials import lookup
from mounttool.store import Store

USER, PASSWORD = "alice", "s3cret-Pa55word"
B64 = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from registry_server(tmp_path_factory, {USER: PASSWORD})


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("MOUNTTOOL_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return home


def login(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, root: Path,
          host: str, password: str, *extra: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    res = cli(capsys, root, "login", "--insecure", "-u", USER, "--password-stdin", *extra, host)
    return res.code, res.out, res.err


def test_challenge_parsing() -> None:
    got = parse_challenges('Bearer realm="https://auth.example/token",service="reg",'
                           'scope="repository:a/b:pull,push", Basic realm="x"')
    assert [c.scheme for c in got] == ["bearer", "basic"]
    assert got[0].params == {"realm": "https://auth.example/token", "service": "reg",
                             "scope": "repository:a/b:pull,push"}
    assert got[1].params == {"realm": "x"}
    assert PASSWORD not in repr(Credentials(USER, PASSWORD))
    assert PASSWORD not in str(Credentials(USER, PASSWORD))


def test_basic_auth_login_push_pull_logout(
        registry: Registry, tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    img = build([make_tar([F("secret-data", b"auth test")])])
    name = f"{registry.host}/private/app:1"
    load_path(ImageStore(Store(tmp_path / "src")), write_layout(tmp_path / "lay", [(name, img)]))
    res = cli(capsys, tmp_path / "src", "push", "--insecure", name)
    assert res.code == 1 and len(res.err.splitlines()) == 1
    assert f"{registry.host} requires authentication (run 'mounttool login" in res.err

    code, out, err = login(capsys, monkeypatch, tmp_path, registry.host, "Wr0ng-pw-77")
    assert code == 1 and f"refused the credentials for '{USER}'" in err
    assert "Wr0ng-pw-77" not in out + err
    authfile = isolated_home / ".config" / "mounttool" / "auth.json"
    assert not authfile.exists()

    code, out, err = login(capsys, monkeypatch, tmp_path, registry.host, PASSWORD)
    assert (code, out) == (0, "Login Succeeded\n"), err
    assert stat.S_IMODE(authfile.stat().st_mode) == 0o600
    assert json.loads(authfile.read_text())["auths"][registry.host] == {"auth": B64}

    outputs = [out, err]
    for args in (("push", "--insecure", name), ("pull", "--insecure", name)):
        res = cli(capsys, tmp_path / ("src" if args[0] == "push" else "dst"), "--debug", *args)
        assert res.code == 0, res.err
        outputs += [res.out, res.err]
    outputs.append(caplog.text)
    assert not any(PASSWORD in o or B64 in o for o in outputs)

    res = cli(capsys, tmp_path, "logout", registry.host)
    assert res.code == 0 and "Removing login credentials" in res.out
    assert json.loads(authfile.read_text())["auths"] == {}
    res = cli(capsys, tmp_path / "dst2", "pull", "--insecure", name)
    assert res.code == 1 and "requires authentication" in res.err
    res = cli(capsys, tmp_path, "logout", registry.host)
    assert res.code == 1 and "not logged in" in res.err


def test_credentials_from_docker_config(registry: Registry, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    img = build([make_tar([F("docker-config", b"dc")])])
    name = f"{registry.host}/dockercfg/app:1"
    load_path(ImageStore(Store(tmp_path / "src")), write_layout(tmp_path / "lay", [(name, img)]))
    cfg = tmp_path / "dockercfg"
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps(
        {"auths": {f"http://{registry.host}": {"auth": B64}}, "credsStore": "none"}))
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
    assert lookup(registry.host) == Credentials(USER, PASSWORD)
    res = cli(capsys, tmp_path / "src", "push", "--insecure", name)
    assert res.code == 0, res.err
    res = cli(capsys, tmp_path / "dst", "pull", "--insecure", name)
    assert res.code == 0, res.err


def test_bearer_token_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    img = build([make_tar([F("bearer", b"token protected")])])
    token = "tok-" + os.urandom(8).hex()

    def authorised(h: BaseHTTPRequestHandler) -> bool:
        return h.headers.get("Authorization") == f"Bearer {token}"

    def token_endpoint(h: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if h.headers.get("Authorization") != f"Basic {B64}":
            return 401, {}, b'{"details":"no"}'
        return 200, {}, json.dumps({"token": token, "expires_in": 300}).encode()

    with FakeRegistry() as fake:
        fake.routes["/v2/"] = lambda h: ((200, {}, b"{}") if authorised(h) else (401, {
            "WWW-Authenticate": f'Bearer realm="http://{fake.host}/token",service="fake"'}, b""))
        fake.routes["/token"] = token_endpoint
        fake.serve_image("bearer/app", "1", img.blobs, img.manifest,
                         "application/vnd.oci.image.manifest.v1+json", authorised)
        ref = f"{fake.host}/bearer/app:1"
        res = cli(capsys, tmp_path / "dst", "pull", "--insecure", ref)
        assert res.code == 1 and f"{fake.host} requires authentication" in res.err
        code, _, err = login(capsys, monkeypatch, tmp_path, fake.host, PASSWORD)
        assert code == 0, err
        res = cli(capsys, tmp_path / "dst", "pull", "--insecure", ref)
        assert res.code == 0, res.err
        assert f"Image ID: {img.id}" in res.out
        fake.routes["/v2/secret/"] = lambda h: (401, {
            "WWW-Authenticate": f'Bearer realm="http://{fake.host}/token",service="fake"'}, b"")
        res = cli(capsys, tmp_path / "dst", "pull", "--insecure", f"{fake.host}/secret/x:1")
        assert res.code == 1 and len(res.err.splitlines()) == 1
        assert f"access denied for '{USER}': the repository does not exist" in res.err
        token_calls = [r for r in fake.requests if r[1].startswith("/token")]
        assert any("scope=repository%3Abearer%2Fapp%3Apull" in r[1] for r in token_calls)
        assert len(token_calls) <= 6  # tokens are cached per scope, not fetched per request
