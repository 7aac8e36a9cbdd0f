"""Registry pieces without a server: progress displays, credential files, media types."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from mounttool.errors import MountToolError
from mounttool.registry import credentials
from mounttool.registry.auth import Authenticator, Credentials
from mounttool.registry.client import _media_type
from mounttool.registry.errors import RegistryError
from mounttool.registry.progress import LineProgress, TTYProgress, make_progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_redraws_bars() -> None:
    out = FakeTTY()
    progress = make_progress(False, out)
    assert isinstance(progress, TTYProgress)
    progress.start("aaa", 1000, "Downloading")
    progress.start("bbb", 1000, "Downloading")
    progress.advance("aaa", 500)
    progress.finish("bbb", "Download complete")
    progress.close()
    text = out.getvalue()
    assert "\x1b[" in text  # cursor movement: lines are redrawn in place
    last = text.rsplit("\x1b[J", 1)[1].splitlines()
    assert last[0].startswith("aaa: Downloading") and "500B/1.0kB" in last[0]
    assert last[1] == "bbb: Download complete"
    assert last[2] == "total: 1.5kB/2.0kB"


def test_line_progress_and_quiet() -> None:
    out = io.StringIO()
    progress = make_progress(False, out)
    assert isinstance(progress, LineProgress)
    progress.start("aaa", 2_500_000, "Waiting")
    progress.start("aaa", 2_500_000, "Downloading", done=1_000_000)
    progress.advance("aaa", 10)
    progress.finish("aaa", "Download complete")
    assert out.getvalue().splitlines() == ["aaa: Downloading 2.5MB (resuming at 1.0MB)",
                                           "aaa: Download complete"]
    quiet = io.StringIO()
    q = make_progress(True, quiet)
    q.start("aaa", 1, "Downloading")
    q.finish("aaa", "Download complete")
    assert quiet.getvalue() == ""


def test_credentials_files(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path / "dc")}
    (tmp_path / "dc").mkdir()
    hub = base64.b64encode(b"hubuser:hubpw").decode()
    (tmp_path / "dc" / "config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": hub},
        "quay.io": {"identitytoken": "idtok"},
        "broken.example": {"auth": base64.b64encode(b"nocolon").decode()}}}))
    assert credentials.lookup("docker.io", environ=env) == Credentials("hubuser", "hubpw")
    assert credentials.lookup("quay.io", environ=env) == Credentials("<token>", "idtok")
    assert credentials.lookup("other.example", environ=env) is None
    with pytest.raises(MountToolError, match="not base64"):
        credentials.lookup("broken.example", environ=env)

    mine = tmp_path / "auth.json"
    mine.write_text(json.dumps({"auths": {"keep.example": {"auth": hub}}, "other": 1}))
    credentials.save("reg.example:5000", Credentials("u", "p"), mine)
    obj = json.loads(mine.read_text())
    assert obj["other"] == 1 and set(obj["auths"]) == {"keep.example", "reg.example:5000"}
    assert stat.S_IMODE(mine.stat().st_mode) == 0o600
    assert credentials.lookup("reg.example:5000", mine) == Credentials("u", "p")
    assert credentials.erase("reg.example:5000", mine)
    assert not credentials.erase("reg.example:5000", mine)
    assert credentials.mounttool_auth_file({"HOME": "/h"}) == Path("/h/.config/mounttool/auth.json")
    assert credentials.docker_config_file({"HOME": "/h"}) == Path("/h/.docker/config.json")


def test_manifest_media_type_negotiation() -> None:
    oci_index = "application/vnd.oci.image.index.v1+json"
    assert _media_type(oci_index + "; charset=utf-8", b"{}") == oci_index
    assert _media_type("application/json", b'{"schemaVersion":2,"manifests":[]}') == oci_index
    assert _media_type("application/json", b'{"schemaVersion":2,"layers":[]}') == \
        "application/vnd.oci.image.manifest.v1+json"
    assert _media_type("text/html", b"<html>") == "text/html"
    assert _media_type("application/json", b"not json") == "application/json"


def test_credentials_never_go_to_a_plain_http_token_server() -> None:
    calls: list[str] = []

    def fetch(url: str, headers: dict[str, str], form: bytes | None) -> tuple[int, bytes]:
        calls.append(url)
        return 200, b'{"token": "t"}'

    auth = Authenticator("reg.example", Credentials("u", "pw"))
    with pytest.raises(RegistryError, match="refusing to send credentials"):
        auth.respond('Bearer realm="http://auth.example/token"', "", fetch)
    assert calls == []
    anonymous = Authenticator("reg.example", None)
    assert anonymous.respond('Bearer realm="http://auth.example/token"', "s", fetch)
    assert anonymous.header("s") == "Bearer t"


def test_docker_credential_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-fake"
    helper.write_text('#!/bin/sh\n[ "$1" = get ] || exit 2\nread server\n'
                      'case "$server" in reg.example:5000) '
                      'printf \'{"Username":"hu","Secret":"hs"}\' ;;\n'
                      '*) echo "credentials not found in native keychain"; exit 1 ;; esac\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    (tmp_path / "config.json").write_text(json.dumps({
        "credsStore": "fake", "credHelpers": {"other.example": "missing-helper"},
        "auths": {"plain.example": {"auth": base64.b64encode(b"pu:pp").decode()}}}))
    env = {"HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path)}
    assert credentials.lookup("reg.example:5000", environ=env) == Credentials("hu", "hs")
    assert credentials.lookup("plain.example", environ=env) == Credentials("pu", "pp")
    assert credentials.lookup("other.example", environ=env) is None
    assert credentials.lookup("nowhere.example", environ=env) is None


def test_identity_tokens_are_traded_for_access_tokens() -> None:
    sent: list[tuple[str, dict[str, str], bytes | None]] = []

    def fetch(url: str, headers: dict[str, str], form: bytes | None) -> tuple[int, bytes]:
        sent.append((url, headers, form))
        return 200, b'{"access_token": "a", "expires_in": 600}'

    auth = Authenticator("acr.example", Credentials("<token>", "refresh-xyz"))
    challenge = 'Bearer realm="https://acr.example/oauth2/token",service="acr.example"'
    assert auth.respond(challenge, "repository:x/y:pull", fetch)
    assert auth.header("repository:x/y:pull") == "Bearer a"
    ((url, headers, form),) = sent
    assert url == "https://acr.example/oauth2/token" and "Authorization" not in headers
    assert form is not None and parse_qs(form.decode()) == {
        "grant_type": ["refresh_token"], "refresh_token": ["refresh-xyz"],
        "client_id": ["mounttool"], "service": ["acr.example"], "scope": ["repository:x/y:pull"]}
