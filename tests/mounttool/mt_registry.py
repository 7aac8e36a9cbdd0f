"""Registry test support: Debian's ``docker-registry`` (CNCF distribution) on 127.0.0.1.

``run_registry`` starts the real server with its own config.yml and storage under a temp dir
(optionally with htpasswd auth), waits until ``/v2/`` answers, and always stops it.
``FakeRegistry`` is a scripted in-process server for what a real registry will not do on
demand (bearer tokens, odd media types, never answering).  ``Throttle`` is a TCP proxy that can
hold a response mid-stream, so a test can kill a pull half-way.  ``cli`` runs the registry
subcommands in-process and captures their output.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mounttool import cli_registry

REGISTRY_BIN = "/usr/bin/docker-registry"


def registry_missing() -> str | None:
    if not os.access(REGISTRY_BIN, os.X_OK):
        return "docker-registry is not installed (apt-get install docker-registry)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    host: str
    data: Path

    def blob_file(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.data / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def get(self, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, timeout=10)
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()


def _config(root: Path, port: int, htpasswd: Path | None, tls: tuple[Path, Path] | None) -> str:
    auth = (f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {htpasswd}\n"
            if htpasswd else "")
    tls_conf = (f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else "")
    return (f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
            f"  delete:\n    enabled: true\n"
            f"  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f"http:\n  addr: 127.0.0.1:{port}\n  secret: test-secret\n{tls_conf}{auth}")


def _wait_ready(host: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited with status {proc.returncode}")
        try:
            with socket.create_connection(tuple(host.split(":")), timeout=1):  # type: ignore
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("docker-registry did not start within 15s") from None
            time.sleep(0.02)


@contextlib.contextmanager
def run_registry(root: Path, users: dict[str, str] | None = None,
                 tls: tuple[Path, Path] | None = None) -> Iterator[Registry]:
    """A registry on a free loopback port; stopped (and waited for) on exit."""
    root.mkdir(parents=True, exist_ok=True)
    htpasswd = None
    if users:
        htpasswd = root / "htpasswd"
        lines = [subprocess.run(["htpasswd", "-Bbn", u, p], check=True, capture_output=True,
                                text=True).stdout.strip() for u, p in users.items()]
        htpasswd.write_text("\n".join(lines) + "\n")
    port = free_port()
    (root / "config.yml").write_text(_config(root, port, htpasswd, tls))
    log = open(root / "registry.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(root / "config.yml")],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        host = f"127.0.0.1:{port}"
        _wait_ready(host, proc, time.monotonic() + 15)
        yield Registry(host, root / "data")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate (and key) for 127.0.0.1, made with openssl."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def registry_server(tmp_path_factory: pytest.TempPathFactory,
                    users: dict[str, str] | None = None, tls: bool = False
                    ) -> Iterator[Registry]:
    """The body of a module-scoped fixture: skip (with the reason) when not installed."""
    if registry_missing():
        pytest.skip(registry_missing() or "")
    if users and shutil.which("htpasswd") is None:
        pytest.skip("htpasswd is not installed (apt-get install apache2-utils)")
    if tls and shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    root = tmp_path_factory.mktemp("registry")
    with run_registry(root, users, self_signed(root) if tls else None) as reg:
        yield reg


# -- running the CLI in-process ------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> Result:
    """``mounttool --root ROOT ARGS`` in-process, with its output."""
    capsys.readouterr()
    code = cli_registry.main(["--root", str(root), *args])
    out, err = capsys.readouterr()
    return Result(code, out, err)


# -- a scripted registry -------------------------------------------------------------------------


Route = Callable[[BaseHTTPRequestHandler], tuple[int, dict[str, str], bytes] | None]


class FakeRegistry:
    """An HTTP server answering from ``routes`` (path prefix → handler); 404 otherwise."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.client_ports: set[int] = set()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                fake.requests.append((self.command, self.path, dict(self.headers.items())))
                fake.client_ports.add(self.client_address[1])
                for prefix, route in sorted(fake.routes.items(), key=lambda r: -len(r[0])):
                    if self.path.startswith(prefix):
                        answer = route(self)
                        break
                else:
                    answer = (404, {}, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}')
                if answer is None:
                    return
                status, headers, body = answer
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def serve_image(self, repo: str, tag: str, blobs: dict[str, bytes], manifest: bytes,
                    media_type: str, auth: Callable[[BaseHTTPRequestHandler], bool]) -> None:
        """Serve one image (manifest by tag and digest, blobs) behind an auth check."""
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        challenge = {"WWW-Authenticate": f'Bearer realm="http://{self.host}/token",'
                                         f'service="fake",scope="repository:{repo}:pull"'}

        def man(h: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
            if not auth(h):
                return 401, challenge, b'{"errors":[{"code":"UNAUTHORIZED"}]}'
            return 200, {"Content-Type": media_type, "Docker-Content-Digest": digest}, manifest

        def blob(h: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
            if not auth(h):
                return 401, challenge, b""
            data = blobs.get(h.path.rsplit("/", 1)[1])
            return (200, {}, data) if data is not None else (404, {}, b"")

        self.routes[f"/v2/{repo}/manifests/"] = man
        self.routes[f"/v2/{repo}/blobs/"] = blob

    def __enter__(self) -> FakeRegistry:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- a proxy that can stall a response -----------------------------------------------------------


class Throttle:
    """TCP proxy to ``target``; with ``hold_after`` set, stalls a response after that many bytes
    of it, sets ``held`` and waits for ``release``; ``cut_after``/``cut_upload_after`` drop one
    connection once that many bytes went down/up it."""

    def __init__(self, target: str, hold_after: int | None = None,
                 cut_after: int | None = None, cut_upload_after: int | None = None) -> None:
        self.target = target
        self.hold_after = hold_after
        self.cut_after = cut_after
        """Drop the first response that grows past this many bytes (then forward normally)."""
        self.cut_upload_after = cut_upload_after
        """The same for the first request (an upload) that grows past this many bytes."""
        self.held = threading.Event()
        self.release = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            host, port = self.target.split(":")
            upstream = socket.create_connection((host, int(port)))
            threading.Thread(target=self._pipe, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, response: bool) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if response and self.cut_after is not None and sent + len(data) > self.cut_after:
                    self.cut_after = None
                    dst.sendall(data[:1000])
                    break
                if not response and self.cut_upload_after is not None \
                        and sent + len(data) > self.cut_upload_after:
                    self.cut_upload_after = None
                    break
                hold = self.hold_after if response else None
                if hold is not None and sent <= hold < sent + len(data):
                    dst.sendall(data[:hold - sent])
                    self.held.set()
                    self.release.wait()
                    dst.sendall(data[hold - sent:])
                else:
                    dst.sendall(data)
                sent += len(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stop.set()
        self.release.set()
        self.sock.close()


# -- an HTTP proxy ------------------------------------------------------------------------------


class ForwardProxy:
    """An HTTP proxy: absolute-form requests are forwarded, ``CONNECT`` is tunnelled.
    ``seen`` records (method, target) of what it was asked."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_CONNECT(self) -> None:
                proxy.seen.append(("CONNECT", self.path))
                host, port = self.path.rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)))
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                a = threading.Thread(target=_copy, args=(self.connection, upstream), daemon=True)
                a.start()
                _copy(upstream, self.connection)
                a.join(10)
                self.close_connection = True

            def _forward(self) -> None:
                proxy.seen.append((self.command, self.path))
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("proxy-authorization", "connection")}
                conn = http.client.HTTPConnection(url.netloc, timeout=30)
                conn.request(self.command, url.path + (f"?{url.query}" if url.query else ""),
                             body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _copy(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
