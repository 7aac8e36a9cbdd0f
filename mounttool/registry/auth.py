"""Registry authentication: ``WWW-Authenticate`` challenges, basic auth and bearer tokens.

A registry answers 401 with a challenge.  ``Basic`` means "send the credentials on every
request"; ``Bearer realm=...,service=...,scope=...`` means "fetch a token from the realm (with
the credentials as basic auth, or anonymously) and send that".  Tokens are cached per scope
until they expire.  ``Credentials`` never show their secret in a repr, a log line or an error.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from mounttool.registry.errors import RegistryError, UnauthorizedError

log = logging.getLogger(__name__)

_CHALLENGE = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s+')
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')
DEFAULT_TOKEN_LIFETIME = 60.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and a secret (a password or an identity token)."""

    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __str__(self) -> str:
        return f"credentials for {self.username}"


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str
    """Lower-cased: ``basic`` or ``bearer``."""
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value (possibly several challenges)."""
    out: list[Challenge] = []
    pos = 0
    while pos < len(header):
        m = _CHALLENGE.match(header, pos)
        if not m:
            scheme = header[pos:].strip().strip(",")
            if scheme:
                out.append(Challenge(scheme.lower(), {}))
            break
        pos = m.end()
        params: dict[str, str] = {}
        while pos < len(header):
            p = _PARAM.match(header, pos)
            if not p or not p.group(0).strip():
                break
            value = p.group(2) if p.group(2) is not None else p.group(3)
            params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = p.end()
        out.append(Challenge(m.group(1).lower(), params))
    return out


TokenFetcher = Callable[[str, dict[str, str], bytes | None], tuple[int, bytes]]
"""GET (or, with a body, POST a form to) an absolute URL; returns (status, body).  Supplied by
the transport."""
IDENTITY_TOKEN_USER = "<token>"
"""docker's username for an identity (OAuth2 refresh) token in place of a password."""


class Authenticator:
    """Per-registry auth state, shared by the threads of one command."""

    def __init__(self, registry: str, creds: Credentials | None,
                 plain_http_ok: bool = False) -> None:
        self.registry = registry
        self.creds = creds
        self.plain_http_ok = plain_http_ok
        self._lock = threading.Lock()
        self._basic = False
        self._bearer: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}

    def header(self, scope: str) -> str | None:
        """The Authorization header to send for a scope, if we know one."""
        with self._lock:
            if self._basic and self.creds is not None:
                return self.creds.basic_header()
            cached = self._tokens.get(scope)
            if cached and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
        return None

    def uses_bearer(self) -> bool:
        with self._lock:
            return self._bearer is not None

    def knows_scheme(self) -> bool:
        with self._lock:
            return self._basic or self._bearer is not None

    def respond(self, header: str, scope: str, fetch: TokenFetcher) -> bool:
        """Handle a 401 challenge; True if a retry can succeed with what we now have."""
        challenges = {c.scheme: c for c in parse_challenges(header)}
        if not challenges:
            return False  # a bare 401: report it as unauthorized
        if "bearer" in challenges and "realm" in challenges["bearer"].params:
            with self._lock:
                self._bearer = challenges["bearer"]
            self._fetch_token(scope, challenges["bearer"], fetch)
            return True
        if "basic" in challenges:
            with self._lock:
                self._basic = True
            return self.creds is not None
        raise RegistryError(f"registry {self.registry}: unsupported authentication scheme "
                            f"({', '.join(challenges) or 'none'})")

    def prepare(self, scope: str, fetch: TokenFetcher) -> None:
        """Get a token for a scope ahead of a request, once the registry's scheme is known."""
        with self._lock:
            bearer = self._bearer
            cached = self._tokens.get(scope)
        if bearer is not None and not (cached and cached[1] > time.monotonic()):
            self._fetch_token(scope, bearer, fetch)

    def _fetch_token(self, scope: str, challenge: Challenge, fetch: TokenFetcher) -> None:
        realm = challenge.params["realm"]
        if self.creds is not None and not realm.startswith("https://") and \
                not self.plain_http_ok:
            raise RegistryError(f"registry {self.registry}: refusing to send credentials to "
                                f"the token server {realm} over plain HTTP "
                                "(--tls-verify=false allows it)")
        log.debug("fetching a token from %s for %s", realm, scope)
        if self.creds is not None and self.creds.username == IDENTITY_TOKEN_USER:
            status, body = fetch(realm, {}, _refresh_form(challenge, scope, self.creds))
        else:
            status, body = fetch(_token_url(realm, challenge, scope, self.creds),
                                 {"Authorization": self.creds.basic_header()}
                                 if self.creds else {}, None)
        if status in (401, 403):
            raise UnauthorizedError(_denied(self.registry, self.creds))
        if status != 200:
            raise RegistryError(f"registry {self.registry}: token server {realm} answered "
                                f"HTTP {status}")
        token, lifetime = _parse_token(body, self.registry)
        with self._lock:
            self._tokens[scope] = (token, time.monotonic() + max(lifetime - 5.0, 1.0))


def _token_url(realm: str, challenge: Challenge, scope: str,
               creds: Credentials | None) -> str:
    query: list[tuple[str, str]] = []
    if challenge.params.get("service"):
        query.append(("service", challenge.params["service"]))
    query.extend(("scope", s) for s in scope.split(" ") if s)
    if creds is not None:
        query.append(("account", creds.username))
    return realm + ("&" if "?" in realm else "?") + urlencode(query)


def _refresh_form(challenge: Challenge, scope: str, creds: Credentials) -> bytes:
    """The OAuth2 form that trades an identity token for an access token (docker's way)."""
    form = [("grant_type", "refresh_token"), ("refresh_token", creds.password),
            ("client_id", "mounttool"), ("service", challenge.params.get("service", ""))]
    form.extend(("scope", s) for s in scope.split(" ") if s)
    return urlencode(form).encode()


def _parse_token(body: bytes, registry: str) -> tuple[str, float]:
    try:
        obj = json.loads(body)
        token = obj.get("token") or obj.get("access_token")
        lifetime = float(obj.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
    except (ValueError, AttributeError, TypeError):
        token, lifetime = None, 0.0
    if not isinstance(token, str) or not token:
        raise RegistryError(f"registry {registry}: the token server sent no usable token")
    return token, lifetime


def _denied(registry: str, creds: Credentials | None) -> str:
    if creds is None:
        return (f"unauthorized: {registry} requires authentication "
                f"(run 'mounttool login {registry}')")
    return (f"unauthorized: {registry} refused the credentials for {creds.username!r} "
            "(wrong username or password, or no access)")


def unauthorized(registry: str, creds: Credentials | None, denied: bool = False,
                 what: str = "", token: bool = False) -> UnauthorizedError:
    """The one-line error for a 401 (or, with ``denied``, a 403; ``token``: a token was
    granted but does not cover the request, as Docker Hub answers for unknown repositories)."""
    if token:
        if creds is None:
            return UnauthorizedError(f"unauthorized: {what}: access denied: the repository does "
                                     "not exist or needs a login (mounttool login "
                                     f"{registry})")
        return UnauthorizedError(f"unauthorized: {what}: access denied for {creds.username!r}: "
                                 "the repository does not exist or is not yours to use")
    if denied:
        who = f" for {creds.username!r}" if creds else ""
        return UnauthorizedError(f"denied: {what or registry}: access refused{who}")
    return UnauthorizedError(_denied(registry, creds))
