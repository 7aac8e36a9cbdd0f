"""HTTP for one registry: connections, TLS policy, auth retries, redirects, error mapping.

Standard library only (``http.client``).  Every request gets its own connection, so threads can
share a ``Transport``.  TLS is verified unless the registry was named insecure; an insecure
registry is tried over HTTPS without verification first and over plain HTTP if it does not
speak TLS.  Socket failures and HTTP error statuses become one-line ``RegistryError``s; the log
shows methods, URLs and statuses, never headers or credentials.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol
from urllib.parse import urljoin, urlsplit

from mounttool.registry.auth import Authenticator, Credentials, unauthorized
from mounttool.registry.errors import (
    RegistryError,
    RegistryNotFoundError,
    RegistryUnavailableError,
    UnsupportedMediaTypeError,
)
from mounttool.registry.proxy import proxy_for

log = logging.getLogger(__name__)
MAX_ERROR_BODY = 64 << 10
MAX_REDIRECTS = 5


class Stream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


Body = bytes | Callable[[], Stream] | None
"""Request body: bytes, or a factory that opens a fresh stream (a retry re-opens it)."""


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    insecure: bool = False
    """Plain HTTP or unverified TLS allowed for this registry."""
    timeout: float = 30.0
    ca_file: str | None = None


def endpoint_host(registry: str) -> str:
    """Where a registry name is served (Docker Hub's API is not on docker.io)."""
    return "registry-1.docker.io" if registry == "docker.io" else registry


class _Pool:
    """Idle keep-alive connections, per thread and per ``scheme://host``."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _idle(self) -> dict[str, http.client.HTTPConnection]:
        idle: dict[str, http.client.HTTPConnection] | None = getattr(self._local, "idle", None)
        if idle is None:
            idle = self._local.idle = {}
        return idle

    def take(self, key: str) -> http.client.HTTPConnection | None:
        return self._idle().pop(key, None)

    def give(self, key: str, conn: http.client.HTTPConnection) -> None:
        old = self._idle().pop(key, None)
        if old is not None:
            old.close()
        self._idle()[key] = conn


class Response:
    """A response whose body errors become RegistryUnavailableError.

    Closing it hands the connection back for reuse when the body was read to its end and the
    server keeps the connection open; otherwise the connection is closed.
    """

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                 where: str, release: Callable[[http.client.HTTPConnection], None]) -> None:
        self._conn, self._resp, self.where = conn, resp, where
        self._release = release
        self.status = resp.status

    def header(self, name: str) -> str | None:
        return self._resp.getheader(name)

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._resp.read(size if size >= 0 else None)
        except (OSError, http.client.HTTPException) as exc:
            raise _socket_error(exc, self.where) from None

    def read1(self, size: int = -1, /) -> bytes:
        """What has arrived, at most ``size`` bytes (at least one unless at the end)."""
        try:
            return self._resp.read1(size)
        except (OSError, http.client.HTTPException) as exc:
            raise _socket_error(exc, self.where) from None

    def abort(self) -> None:
        """From another thread: cut the connection so a blocked read returns at once."""
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        reuse = False
        if not self._resp.will_close:
            if self._resp.length == 0 and not self._resp.isclosed():  # HEAD, 204, 304
                with contextlib.suppress(OSError, http.client.HTTPException):
                    self._resp.read()
            reuse = self._resp.isclosed()
        if reuse:
            self._release(self._conn)
        else:
            self._resp.close()
            self._conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
          http.client.BadStatusLine)


class TLSHandshakeError(RegistryUnavailableError):
    """The server did not complete a TLS handshake (often: it speaks plain HTTP)."""


def _socket_error(exc: BaseException, where: str) -> RegistryUnavailableError:
    if isinstance(exc, TimeoutError | socket.timeout):
        return RegistryUnavailableError(f"{where}: timed out waiting for the registry")
    if isinstance(exc, ConnectionRefusedError):
        return RegistryUnavailableError(f"{where}: connection refused (is the registry "
                                        "running?)")
    if isinstance(exc, socket.gaierror):
        return RegistryUnavailableError(f"{where}: cannot resolve the host name")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return RegistryUnavailableError(f"{where}: TLS certificate not trusted "
                                        f"({exc.verify_message})")
    if isinstance(exc, ssl.SSLError):
        return TLSHandshakeError(f"{where}: TLS handshake failed ({exc.reason}); if "
                                        "the registry serves plain HTTP, use --tls-verify=false")
    if isinstance(exc, http.client.IncompleteRead | http.client.RemoteDisconnected):
        return RegistryUnavailableError(f"{where}: the registry closed the connection early")
    reason = getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
    return RegistryUnavailableError(f"{where}: connection failed ({reason})")


class Transport:
    """Requests to one registry, with its auth state and TLS policy."""

    def __init__(self, registry: str, opts: RegistryOptions,
                 creds: Credentials | None) -> None:
        self.registry = registry
        self.opts = opts
        self.auth = Authenticator(registry, creds, plain_http_ok=opts.insecure)
        self._probed = not opts.insecure
        self._lock = threading.Lock()
        self._pool = _Pool()
        self.base = f"https://{endpoint_host(registry)}"

    def _context(self) -> ssl.SSLContext:
        if self.opts.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        try:
            return ssl.create_default_context(cafile=self.opts.ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise RegistryError(f"cannot load CA certificates from {self.opts.ca_file}: "
                                f"{reason}") from None

    def _connect(self, url: str) -> http.client.HTTPConnection:
        """A connection for ``url``: direct, to a proxy (HTTP), or tunnelled (HTTPS)."""
        parts = urlsplit(url)
        proxy = proxy_for(parts.scheme, parts.hostname or "", parts.port)
        where = proxy.netloc if proxy else parts.netloc
        timeout, block = self.opts.timeout, 1 << 20
        if parts.scheme == "http":
            return http.client.HTTPConnection(where, timeout=timeout, blocksize=block)
        conn = http.client.HTTPSConnection(where, timeout=timeout, blocksize=block,
                                           context=self._context())
        if proxy is not None:
            conn.set_tunnel(parts.hostname or "", parts.port or 443, proxy.headers)
        return conn

    def raw(self, method: str, url: str, headers: dict[str, str], body: Body = None,
            ) -> Response:
        """One HTTP exchange, no auth or redirect handling."""
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        where = f"registry {parts.netloc} ({method} {parts.path})"
        key = f"{parts.scheme}://{parts.netloc}"
        conn = self._pool.take(key)
        reused = conn is not None
        if conn is None:
            conn = self._connect(url)
        proxy = proxy_for("http", parts.hostname or "", parts.port) \
            if parts.scheme == "http" else None
        if proxy is not None:  # plain HTTP through a proxy: absolute target, its credentials
            path, headers = url, {**headers, **proxy.headers}
        stream = body() if callable(body) else None
        data: Stream | bytes | None = stream if stream is not None else (
            body if isinstance(body, bytes) else None)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if reused and isinstance(exc, _STALE) and not callable(body) and method != "PATCH":
                # the server dropped an idle connection: resend (never a streamed body)
                return self.raw(method, url, headers, body)
            raise _socket_error(exc, where) from None
        finally:
            if stream is not None:
                stream.close()
        log.debug("%s %s -> %d", method, url, resp.status)
        return Response(conn, resp, where, partial(self._pool.give, key))

    def _probe(self) -> None:
        """For an insecure registry: HTTPS if it speaks TLS, else plain HTTP."""
        with self._lock:
            if self._probed:
                return
            host = endpoint_host(self.registry)
            try:
                self.raw("GET", f"https://{host}/v2/", {}).close()
            except TLSHandshakeError:
                self.base = f"http://{host}"
                log.debug("registry %s does not speak TLS: using plain HTTP", self.registry)
            self._probed = True

    def token_fetch(self, url: str, headers: dict[str, str],
                    form: bytes | None) -> tuple[int, bytes]:
        if form is not None:
            headers = {**headers, "Content-Type": "application/x-www-form-urlencoded",
                       "Content-Length": str(len(form))}
        with self.raw("POST" if form is not None else "GET", url, headers, form) as resp:
            return resp.status, resp.read(MAX_ERROR_BODY)

    def request(self, method: str, path: str, scope: str, *, expect: tuple[int, ...] = (200,),
                headers: dict[str, str] | None = None, body: Body = None,
                what: str = "") -> Response:
        """A request with auth, redirects and errors handled; returns an expected response."""
        self._probe()
        url = urljoin(self.base, path)
        if self.auth.knows_scheme():
            self.auth.prepare(scope, self.token_fetch)
        for attempt in range(2):
            resp = self._follow(method, url, scope, dict(headers or {}), body)
            if resp.status != 401 or attempt:
                break
            challenge = resp.header("WWW-Authenticate") or ""
            resp.close()
            if not self.auth.respond(challenge, scope, self.token_fetch):
                break
        if resp.status in expect:
            return resp
        with resp:
            raise self._error(resp, what or f"{method} {path}")

    def _follow(self, method: str, url: str, scope: str, headers: dict[str, str],
                body: Body) -> Response:
        origin = urlsplit(url).netloc
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if urlsplit(url).netloc == origin:
                token = self.auth.header(scope)
                if token:
                    sent["Authorization"] = token
            resp = self.raw(method, url, sent, body)
            if method not in ("GET", "HEAD") or resp.status not in (301, 302, 303, 307, 308):
                return resp
            location = resp.header("Location")
            resp.close()
            if not location:
                raise RegistryError(f"{method} {url}: redirect without a Location")
            url = urljoin(url, location)
        raise RegistryError(f"{method} {url}: too many redirects")

    def _error(self, resp: Response, what: str) -> RegistryError:
        body = b"" if resp.status in (204, 304) else resp.read(MAX_ERROR_BODY)
        codes, message = _error_codes(body)
        creds = self.auth.creds
        if resp.status == 401:
            return unauthorized(self.registry, creds, what=what,
                                token=self.auth.uses_bearer())
        if resp.status == 403:
            return unauthorized(self.registry, creds, denied=True, what=what)
        if resp.status == 404 or "NAME_UNKNOWN" in codes or "MANIFEST_UNKNOWN" in codes:
            err: RegistryError = RegistryNotFoundError(f"{what}: not found"
                                                       f"{': ' + message if message else ''}")
        elif resp.status == 415 or ("MANIFEST_INVALID" in codes and "media" in message):
            err = UnsupportedMediaTypeError(f"{what}: the registry refused the media type"
                                            f"{': ' + message if message else ''}")
        elif resp.status == 429:
            err = RegistryError(f"{what}: the registry is rate limiting requests (HTTP 429)")
        else:
            detail = message or (body[:200].decode("utf-8", "replace").strip().splitlines()
                                 or [""])[0]
            err = RegistryError(f"{what}: the registry answered HTTP {resp.status}"
                                f"{': ' + detail if detail else ''}")
        err.codes = codes  # type: ignore[attr-defined]
        return err


def _error_codes(body: bytes) -> tuple[list[str], str]:
    """Distribution error codes and their first message from an error body."""
    try:
        obj = json.loads(body)
        errors = obj.get("errors") if isinstance(obj, dict) else None
    except ValueError:
        errors = None
    if not isinstance(errors, list):
        return [], ""
    codes = [str(e.get("code", "")) for e in errors if isinstance(e, dict)]
    messages = [str(e.get("message", "")) for e in errors if isinstance(e, dict)]
    return codes, (messages[0] if messages else "")


def error_codes(err: BaseException) -> list[str]:
    """The distribution error codes carried by an error from ``Transport.request``."""
    codes = getattr(err, "codes", [])
    return list(codes) if isinstance(codes, list) else []
