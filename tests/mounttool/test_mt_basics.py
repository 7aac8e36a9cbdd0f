"""Tests for errors, digests, OCI models and docker references."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from mounttool import oci
from mounttool.digest import Digest, VerifyingReader, chain_ids
from mounttool.errors import (
    DigestMismatchError,
    InvalidDigestError,
    InvalidImageError,
    InvalidReferenceError,
    MountToolError,
    UsageError,
)
from mounttool.refs import parse_reference, parse_tagged

H = hashlib.sha256(b"hello").hexdigest()


def test_error_exit_codes() -> None:
    assert MountToolError("x").exit_code == 1
    assert MountToolError("x", 7).exit_code == 7
    assert UsageError("bad").exit_code == 2
    assert str(UsageError("bad")) == "bad"


def test_digest_parse_and_str() -> None:
    d = Digest.parse(f"sha256:{H}")
    assert str(d) == f"sha256:{H}" and d.short == H[:12]
    assert Digest.of_bytes(b"hello") == d


@pytest.mark.parametrize("bad", ["", "sha256", f"md5:{H}", "sha256:abc", f"sha256:{H.upper()}",
                                 f"sha256:{H}0", "sha256:" + "g" * 64])
def test_digest_rejects(bad: str) -> None:
    with pytest.raises(InvalidDigestError):
        Digest.parse(bad)


def test_verifying_reader_ok_and_mismatch() -> None:
    r = VerifyingReader(io.BytesIO(b"hello"), Digest.of_bytes(b"hello"), 5)
    assert r.read(2) == b"he"
    assert r.verify() == Digest.of_bytes(b"hello")
    bad = VerifyingReader(io.BytesIO(b"hellx"), Digest.of_bytes(b"hello"), what="blob X")
    with pytest.raises(DigestMismatchError, match="blob X: digest"):
        bad.verify()
    short = VerifyingReader(io.BytesIO(b"hell"), None, 5)
    with pytest.raises(DigestMismatchError, match="size 4"):
        short.verify()
    long = VerifyingReader(io.BytesIO(b"hello!"), None, 5)
    with pytest.raises(DigestMismatchError, match="more than"):
        long.verify()


def test_chain_ids() -> None:
    a, b = Digest.of_bytes(b"a"), Digest.of_bytes(b"b")
    ids = chain_ids([a, b])
    assert ids[0] == a
    assert ids[1] == Digest.of_bytes(f"{a} {b}".encode())


@pytest.mark.parametrize(("text", "full", "familiar"), [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("user/app:v1", "docker.io/user/app:v1", "user/app:v1"),
    ("docker.io/library/a/b", "docker.io/library/a/b:latest", "library/a/b:latest"),
    ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
    ("localhost:5000/a/b:t", "localhost:5000/a/b:t", "localhost:5000/a/b:t"),
    ("quay.io/org/img:1.0", "quay.io/org/img:1.0", "quay.io/org/img:1.0"),
    ("my-reg.example.com:443/x", "my-reg.example.com:443/x:latest",
     "my-reg.example.com:443/x:latest"),
    ("a__b/c-d.e", "docker.io/a__b/c-d.e:latest", "a__b/c-d.e:latest"),
])
def test_reference_normalisation(text: str, full: str, familiar: str) -> None:
    ref = parse_tagged(text)
    assert str(ref) == full
    assert ref.familiar == familiar


def test_reference_with_digest() -> None:
    ref = parse_reference(f"busybox@sha256:{H}")
    assert ref.tag is None and ref.digest == Digest.parse(f"sha256:{H}")
    assert ref.familiar == f"busybox@sha256:{H}"
    both = parse_reference(f"quay.io/a/b:1@sha256:{H}")
    assert str(both) == f"quay.io/a/b:1@sha256:{H}"
    with pytest.raises(InvalidReferenceError, match="digest"):
        parse_tagged(f"busybox@sha256:{H}")


@pytest.mark.parametrize(("bad", "why"), [
    ("", "empty"), ("Busybox", "lowercase"), ("user/App", "lowercase"), ("a:b:c", "format"),
    ("busybox:", "bad tag"), ("busybox:-x", "bad tag"), ("a//b", "format"), ("/a", "format"),
    (H, "64-byte"), ("busybox@sha256:12", "invalid"), ("a/" + "b" * 260, "longer"),
    ("a b", "format"), ("-reg.io/a", "registry"),
])
def test_reference_rejects(bad: str, why: str) -> None:
    with pytest.raises(InvalidReferenceError, match=why):
        parse_reference(bad)


def _desc(media: str, data: bytes, **extra: object) -> dict[str, object]:
    return {"mediaType": media, "digest": str(Digest.of_bytes(data)), "size": len(data), **extra}


def test_manifest_and_index_parse_roundtrip() -> None:
    m = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
         "config": _desc(oci.OCI_CONFIG, b"{}"), "layers": [_desc(oci.OCI_LAYER_GZIP, b"x")]}
    man = oci.Manifest.parse(json.dumps(m).encode())
    assert man.layers[0].media_type == oci.OCI_LAYER_GZIP
    assert oci.Manifest.parse(man.to_json()) == man
    idx = {"schemaVersion": 2, "manifests": [
        _desc(oci.OCI_MANIFEST, b"1", platform={"os": "linux", "architecture": "arm64",
                                                "variant": "v8"}),
        _desc(oci.OCI_MANIFEST, b"2", platform={"os": "linux", "architecture": "amd64"})]}
    index = oci.Index.parse(json.dumps(idx).encode())
    pick = oci.select_platform(index, oci.Platform("linux", "amd64"))
    assert pick.digest == Digest.of_bytes(b"2")
    with pytest.raises(InvalidImageError, match="no image for platform linux/s390x"):
        oci.select_platform(index, oci.Platform("linux", "s390x"))


@pytest.mark.parametrize(("doc", "why"), [
    (b"not json", "not valid JSON"), (b"[]", "JSON object"),
    (b'{"schemaVersion": 1}', "schemaVersion"),
    (b'{"schemaVersion": 2, "mediaType": "x"}', "not an image manifest"),
    (b'{"schemaVersion": 2, "config": 3, "layers": []}', "descriptor"),
    (json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:1", "size": 1},
                 "layers": []}).encode(), "sha256"),
    (json.dumps({"schemaVersion": 2, "config": _desc(oci.OCI_CONFIG, b"{}"),
                 "layers": [_desc("text/plain", b"")]}).encode(), "unsupported media type"),
    (json.dumps({"schemaVersion": 2, "config": _desc(oci.OCI_CONFIG, b"{}") | {"size": -1},
                 "layers": []}).encode(), "non-negative"),
])
def test_manifest_rejects(doc: bytes, why: str) -> None:
    with pytest.raises(InvalidImageError, match=why):
        oci.Manifest.parse(doc)


def test_config_parse() -> None:
    cfg = {"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
           "config": {"Labels": {"a": "b"}},
           "rootfs": {"type": "layers", "diff_ids": [str(Digest.of_bytes(b"x"))]},
           "history": [{"created_by": "RUN x", "empty_layer": True}]}
    c = oci.ImageConfig.parse(json.dumps(cfg).encode())
    assert c.diff_ids == (Digest.of_bytes(b"x"),)
    assert c.labels == {"a": "b"} and c.history()[0].empty_layer
    with pytest.raises(InvalidImageError, match="rootfs"):
        oci.ImageConfig.parse(b'{"architecture": "amd64"}')


def _paths(obj: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _replaced(obj: object, path: tuple[object, ...], value: object) -> object:
    import copy
    new = copy.deepcopy(obj)
    node = new
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    return new


def test_malformed_json_fields_give_clear_errors() -> None:
    """Every field of a manifest, an index and a config, replaced by every JSON type."""
    d = _desc(oci.OCI_LAYER_GZIP, b"x", annotations={"a": "b"}, urls=["u"],
              platform={"os": "linux", "architecture": "amd64"})
    docs = [
        (oci.Manifest.parse, {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                              "config": _desc(oci.OCI_CONFIG, b"{}"), "layers": [d],
                              "annotations": {"k": "v"}}),
        (oci.Index.parse, {"schemaVersion": 2, "manifests": [d], "annotations": {"k": "v"}}),
        (oci.ImageConfig.parse, {"architecture": "amd64", "os": "linux",
                                 "config": {"Labels": {"a": "b"}, "Env": ["A=1"]},
                                 "rootfs": {"type": "layers", "diff_ids": [str(Digest.of_bytes(
                                     b"x"))]}, "history": [{"created_by": "x"}]}),
    ]
    for parse, doc in docs:
        for path in _paths(doc):
            for value in (None, 1, -1, "x", [], {}, True, [1], {"a": 1}):
                data = json.dumps(_replaced(doc, path, value)).encode()
                try:
                    parsed = parse(data)
                except InvalidImageError:
                    continue
                if isinstance(parsed, oci.ImageConfig):
                    parsed.labels, parsed.history(), parsed.platform, parsed.created
