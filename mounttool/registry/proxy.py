"""HTTP proxies from the environment (``https_proxy``, ``http_proxy``, ``no_proxy``).

HTTPS goes through a ``CONNECT`` tunnel (the proxy never sees the traffic); plain HTTP is sent
to the proxy with absolute request targets.  Proxy credentials in the URL become a
``Proxy-Authorization`` header and are never logged or shown.
"""

from __future__ import annotations

import base64
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True, slots=True)
class Proxy:
    netloc: str
    """``host:port`` of the proxy."""
    headers: dict[str, str] = field(default_factory=dict, repr=False)


def proxy_for(scheme: str, host: str, port: int | None) -> Proxy | None:
    """The proxy to use for ``scheme://host:port``, or None for a direct connection."""
    url = urllib.request.getproxies().get(scheme)
    if not url:
        return None
    target = f"{host}:{port}" if port else host
    if urllib.request.proxy_bypass(target) or urllib.request.proxy_bypass(host):
        return None
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    netloc = f"{parts.hostname}:{parts.port or 80}"
    headers = {}
    if parts.username is not None:
        raw = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(raw).decode()
    return Proxy(netloc, headers)
