"""Image sources: every archive or layout format behind one ``ImageSource`` protocol.

A source yields ``SourceImage`` values: names, config bytes, manifest bytes when the format has
one, and openers for layer blobs.  Nothing here trusts a digest: images.py verifies every byte
it stores.  ``open_source`` picks the reader: docker-archive when ``manifest.json`` is present
(always following its paths), OCI layout or archive when ``oci-layout`` is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from mounttool.digest import Digest
from mounttool.errors import InvalidImageError


@dataclass(frozen=True, slots=True)
class LayerSource:
    media_type: str
    digest: Digest | None
    """The blob digest when the format states one (verified on store), else None."""
    size: int | None
    open: Callable[[], BinaryIO]
    what: str


@dataclass(frozen=True, slots=True)
class SourceImage:
    names: list[str]
    config: bytes
    layers: list[LayerSource]
    manifest: bytes | None = None
    config_digest: Digest | None = None
    manifest_digest: Digest | None = None
    extra: dict[str, str] = field(default_factory=dict)


class ImageSource(Protocol):
    description: str

    def images(self) -> list[SourceImage]: ...

    def close(self) -> None: ...


def open_source(path: Path, spool_dir: Path) -> ImageSource:
    """An ImageSource for an archive file or a layout directory."""
    from mounttool.formats.archive import open_fs
    from mounttool.formats.docker_archive import DockerArchiveSource
    from mounttool.formats.oci_layout import OCILayoutSource

    fs = open_fs(path, spool_dir)
    try:
        if fs.exists("manifest.json"):
            return DockerArchiveSource(fs)
        if fs.exists("oci-layout"):
            return OCILayoutSource(fs)
    except BaseException:
        fs.close()
        raise
    fs.close()
    raise InvalidImageError(f"{path}: not an image archive or layout (no manifest.json and no "
                            "oci-layout)")
