"""Docker image references: ``[registry[:port]/][namespace/]repo[:tag|@digest]``.

Parsing and normalisation follow docker's distribution/reference: a first component with a dot,
a colon or ``localhost`` is a registry, otherwise ``docker.io``; single-component docker.io names
get ``library/``; no tag and no digest means ``:latest``.  ``familiar`` is how docker displays a
name (``busybox:latest``, ``quay.io/x/y:1``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mounttool.digest import Digest
from mounttool.errors import InvalidDigestError, InvalidReferenceError

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
                     r"|\[[0-9a-fA-F:]+\](?::[0-9]+)?")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_HEX64 = re.compile(r"[a-f0-9]{64}")
NAME_MAX = 255


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised reference; ``tag`` and ``digest`` may both be set (``name:tag@digest``)."""

    domain: str
    path: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def name(self) -> str:
        """The full repository name, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository as docker shows it, e.g. ``busybox`` or ``quay.io/a/b``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        path = self.path
        if path.startswith(OFFICIAL_PREFIX) and "/" not in path[len(OFFICIAL_PREFIX):]:
            path = path[len(OFFICIAL_PREFIX):]
        return path

    def _suffix(self) -> str:
        out = f":{self.tag}" if self.tag else ""
        return out + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()

    @property
    def familiar(self) -> str:
        return self.familiar_name + self._suffix()

    def with_default_tag(self) -> Reference:
        """``:latest`` added when neither tag nor digest is given (docker's TagNameOnly)."""
        if self.tag is None and self.digest is None:
            return Reference(self.domain, self.path, DEFAULT_TAG)
        return self



def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"
                   and first.lower() == first):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    return domain, remainder


def parse_reference(text: str) -> Reference:
    """Parse and normalise a reference; raise InvalidReferenceError with docker-like wording."""
    if not text:
        raise InvalidReferenceError("invalid reference format: empty reference")
    rest, digest = text, None
    if "@" in rest:
        rest, _, dpart = rest.partition("@")
        try:
            digest = Digest.parse(dpart)
        except InvalidDigestError as exc:
            raise InvalidReferenceError(f"invalid reference format: {text!r}: {exc}") from None
    tag = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise InvalidReferenceError(f"invalid reference format: bad tag {tag!r} in {text!r}")
    if not rest:
        raise InvalidReferenceError(f"invalid reference format: {text!r}")
    if _HEX64.fullmatch(rest):
        raise InvalidReferenceError(
            f"invalid repository name {rest!r}: cannot specify 64-byte hexadecimal strings")
    domain, path = _split_domain(rest)
    if len(domain) + 1 + len(path) > NAME_MAX:
        raise InvalidReferenceError(f"invalid reference format: repository name longer than "
                                    f"{NAME_MAX} characters")
    if not _DOMAIN.fullmatch(domain):
        raise InvalidReferenceError(f"invalid reference format: bad registry {domain!r}")
    for comp in path.split("/"):
        if _PATH_COMPONENT.fullmatch(comp):
            continue
        if _PATH_COMPONENT.fullmatch(comp.lower()):
            raise InvalidReferenceError(
                f"invalid reference format: repository name ({path}) must be lowercase")
        raise InvalidReferenceError(f"invalid reference format: {text!r}")
    return Reference(domain, path, tag, digest)


def parse_tagged(text: str) -> Reference:
    """A reference for naming an image: digest not allowed, ``:latest`` by default."""
    ref = parse_reference(text)
    if ref.digest is not None:
        raise InvalidReferenceError(f"refusing to create a tag with a digest reference: {text}")
    return ref.with_default_tag()
