"""The OCI distribution API of one registry: manifests, blobs, uploads, mounts, catalog.

``RegistryClient`` speaks the protocol (``/v2/<name>/manifests/<ref>``, ``/blobs/<digest>``,
``/blobs/uploads/``, ``/_catalog``) over a ``Transport``; it knows nothing of the store.
Manifests are fetched with content negotiation for OCI and Docker schema 2 types and checked
against the digest the request or the registry named; blob bodies are returned as streams for
the caller to verify while they flow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin, urlsplit

from mounttool import oci
from mounttool.digest import Digest
from mounttool.errors import DigestMismatchError, InvalidDigestError
from mounttool.refs import Reference
from mounttool.registry.errors import (
    RegistryError,
    RegistryNotFoundError,
    UnsupportedMediaTypeError,
)
from mounttool.registry.transport import Response, Stream, Transport, error_codes

ACCEPT = ", ".join([oci.OCI_INDEX, oci.OCI_MANIFEST, oci.DOCKER_LIST, oci.DOCKER_MANIFEST])
MAX_MANIFEST = 4 << 20
SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
           "application/vnd.docker.distribution.manifest.v1+prettyjws")
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: Digest

    @property
    def is_index(self) -> bool:
        return self.media_type in oci.INDEX_TYPES


def _media_type(content_type: str | None, data: bytes) -> str:
    declared = (content_type or "").split(";")[0].strip()
    if declared in oci.MANIFEST_TYPES | oci.INDEX_TYPES:
        return declared
    try:
        obj = json.loads(data)
    except ValueError:
        obj = None
    inner = obj.get("mediaType") if isinstance(obj, dict) else None
    if isinstance(inner, str) and inner:
        return inner
    if declared in ("", "application/json", "text/plain") and isinstance(obj, dict):
        return oci.OCI_INDEX if "manifests" in obj else oci.OCI_MANIFEST
    return declared


def _pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def _push_scope(repo: str, mount_from: str | None = None) -> str:
    scope = f"repository:{repo}:pull,push"
    return scope + (f" repository:{mount_from}:pull" if mount_from else "")


class RegistryClient:
    def __init__(self, transport: Transport) -> None:
        self.t = transport
        self.registry = transport.registry

    def ping(self) -> None:
        """``GET /v2/``: reachable, a registry, and (with credentials) we may log in."""
        with self.t.request("GET", "/v2/", "", what=f"registry {self.registry}"):
            pass

    # -- manifests -----------------------------------------------------------------------------

    def get_manifest(self, ref: Reference, reference: str) -> FetchedManifest:
        """A manifest or index by tag or digest, verified against the digest we know."""
        what = f"{ref.name}:{reference}" if ":" not in reference else f"{ref.name}@{reference}"
        try:
            resp = self.t.request("GET", f"/v2/{ref.path}/manifests/{reference}",
                                  _pull_scope(ref.path), headers={"Accept": ACCEPT},
                                  what=f"manifest {what}")
        except RegistryNotFoundError as exc:
            raise self._not_found(exc, ref, what) from None
        with resp:
            data = resp.read(MAX_MANIFEST + 1)
            if len(data) > MAX_MANIFEST:
                raise RegistryError(f"manifest {what}: larger than {MAX_MANIFEST} bytes")
            media = _media_type(resp.header("Content-Type"), data)
            header_digest = resp.header("Docker-Content-Digest")
        if media in SCHEMA1:
            raise UnsupportedMediaTypeError(f"manifest {what}: unsupported media type {media} "
                                            "(Docker schema 1 manifests are obsolete)")
        if media not in oci.MANIFEST_TYPES | oci.INDEX_TYPES:
            raise UnsupportedMediaTypeError(f"manifest {what}: unsupported media type "
                                            f"{media or '(none)'}")
        return FetchedManifest(data, media, _check_manifest_digest(data, reference,
                                                                   header_digest, what))

    def put_manifest(self, ref: Reference, reference: str, data: bytes,
                     media_type: str) -> Digest:
        resp = self.t.request("PUT", f"/v2/{ref.path}/manifests/{reference}",
                              _push_scope(ref.path), expect=(201, 200), body=data,
                              headers={"Content-Type": media_type,
                                       "Content-Length": str(len(data))},
                              what=f"push manifest {ref.name}:{reference}")
        with resp:
            told = resp.header("Docker-Content-Digest")
        ours = Digest.of_bytes(data)
        if told and told != str(ours):
            raise RegistryError(f"push manifest {ref.name}:{reference}: the registry stored "
                                f"{told}, expected {ours}")
        return ours

    def _not_found(self, exc: RegistryNotFoundError, ref: Reference,
                   what: str) -> RegistryNotFoundError:
        """Unknown repository or unknown tag?  (distribution says MANIFEST_UNKNOWN for both.)"""
        codes = error_codes(exc)
        if "NAME_UNKNOWN" not in codes:
            try:
                self.t.request("GET", f"/v2/{ref.path}/tags/list?n=1", _pull_scope(ref.path),
                               what=f"tags of {ref.name}").close()
            except RegistryNotFoundError as tags_exc:
                codes = error_codes(tags_exc)
            except RegistryError:
                pass
        if "NAME_UNKNOWN" in codes:
            return RegistryNotFoundError(f"repository {ref.name} not found on the registry")
        return RegistryNotFoundError(f"manifest unknown: {what} not found on the registry")

    # -- blobs ---------------------------------------------------------------------------------

    def blob_exists(self, ref: Reference, digest: Digest, push: bool = False) -> bool:
        scope = _push_scope(ref.path) if push else _pull_scope(ref.path)
        resp = self.t.request("HEAD", f"/v2/{ref.path}/blobs/{digest}", scope,
                              expect=(200, 404), what=f"blob {ref.name}@{digest}")
        resp.close()
        return resp.status == 200

    def get_blob(self, ref: Reference, digest: Digest, offset: int = 0) -> Response:
        """A blob body; from ``offset`` when the registry honours ranges (status 206)."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            return self.t.request("GET", f"/v2/{ref.path}/blobs/{digest}",
                                  _pull_scope(ref.path), expect=(200, 206), headers=headers,
                                  what=f"blob {ref.name}@{digest}")
        except RegistryNotFoundError:
            raise RegistryNotFoundError(f"blob {digest} is missing from {ref.name} on the "
                                        "registry") from None

    def mount_blob(self, ref: Reference, digest: Digest, source: str) -> str | None:
        """Cross-repository mount; None when mounted, else an upload location to use."""
        query = urlencode({"mount": str(digest), "from": source})
        resp = self.t.request("POST", f"/v2/{ref.path}/blobs/uploads/?{query}",
                              _push_scope(ref.path, source), expect=(201, 202),
                              headers={"Content-Length": "0"}, body=b"",
                              what=f"mount blob {digest} from {source}")
        with resp:
            return None if resp.status == 201 else self._location(resp)

    def start_upload(self, ref: Reference) -> str:
        resp = self.t.request("POST", f"/v2/{ref.path}/blobs/uploads/", _push_scope(ref.path),
                              expect=(202,), headers={"Content-Length": "0"}, body=b"",
                              what=f"start upload to {ref.name}")
        with resp:
            return self._location(resp)

    def _location(self, resp: Response) -> str:
        loc = resp.header("Location")
        if not loc:
            raise RegistryError(f"registry {self.registry}: upload without a Location")
        return urljoin(self.t.base + "/", loc)

    def upload_chunk(self, ref: Reference, location: str, body: Callable[[], Stream],
                     start: int, length: int) -> str:
        """PATCH one chunk; returns the location for the next request."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length),
                   "Content-Range": f"{start}-{start + length - 1}"}
        resp = self.t.request("PATCH", _path_of(location), _push_scope(ref.path),
                              expect=(202,), headers=headers, body=body,
                              what=f"upload to {ref.name}")
        with resp:
            return self._location(resp)

    def finish_upload(self, ref: Reference, location: str, digest: Digest,
                      body: Callable[[], Stream] | None, length: int) -> None:
        """PUT ``?digest=``: with the whole blob (monolithic) or empty after chunks."""
        sep = "&" if "?" in location else "?"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        resp = self.t.request("PUT", _path_of(location) + f"{sep}digest={digest}",
                              _push_scope(ref.path), expect=(201, 204), headers=headers,
                              body=body if body is not None else b"",
                              what=f"upload blob {digest} to {ref.name}")
        resp.close()

    # -- catalog -------------------------------------------------------------------------------

    def catalog(self, page: int = 100) -> Iterator[str]:
        """Every repository name, following ``Link: <...>; rel="next"`` pages."""
        path: str | None = f"/v2/_catalog?n={page}"
        while path:
            try:
                resp = self.t.request("GET", path, "registry:catalog:*",
                                      what=f"catalog of {self.registry}")
            except RegistryNotFoundError:
                raise RegistryError(f"registry {self.registry} does not offer a catalog "
                                    "(search needs /v2/_catalog)") from None
            with resp:
                body = resp.read(MAX_MANIFEST)
                link = resp.header("Link") or ""
            try:
                names = json.loads(body).get("repositories") or []
            except (ValueError, AttributeError):
                raise RegistryError(f"catalog of {self.registry}: not valid JSON") from None
            yield from (str(n) for n in names)
            m = _LINK_NEXT.search(link)
            path = _path_of(m.group(1)) if m else None


def _path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _check_manifest_digest(data: bytes, reference: str, header: str | None,
                           what: str) -> Digest:
    try:
        want = Digest.parse(reference) if ":" in reference else None
        told = Digest.parse(header) if header else None
    except InvalidDigestError as exc:
        raise RegistryError(f"manifest {what}: {exc}") from None
    ours = Digest.of_bytes(data, (want or told or Digest.of_bytes(b"")).algorithm)
    for expected in (want, told):
        if expected is not None and ours != expected:
            raise DigestMismatchError(f"manifest {what}: digest mismatch: content is {ours}, "
                                      f"expected {expected}")
    return Digest.of_bytes(data) if ours.algorithm != "sha256" else ours
