"""Tests for loading images (OCI layout/archive, docker-archive), the catalogue and save."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mt_helpers import OPQ, D, F, H, S, W, make_tar, read_tree, snapshot
from mt_images import Img, build, sha, tar_dir, write_docker_archive, write_layout

from mounttool.digest import Digest
from mounttool.errors import MountToolError
from mounttool.formats.save import SaveItem, save
from mounttool.images import ImageStore
from mounttool.ingest import import_path, load_path
from mounttool.store import Store

BASE = make_tar([D("etc"), F("etc/os-release", b"ID=test\n"), D("bin"), F("bin/sh", b"sh",
                 mode=0o755), H("bin/ash", "bin/sh"), D("tmp", mode=0o1777),
                 D("var"), D("var/cache"), F("var/cache/x", b"x")])
TOP = make_tar([W("etc/os-release"), F("etc/new", b"new"), OPQ("var/cache"),
                F("var/cache/y", b"y"), S("bin/link", "sh"), F("tmp/f", b"f")])
OTHER = make_tar([F("other", b"o")])


def same_tree(a: Path, b: Path) -> bool:
    ta, tb = read_tree(a), read_tree(b)
    ta["."], tb["."] = ta["."][:-1], tb["."][:-1]  # an implicit root's mtime is the unpack time
    return ta == tb


def images(store: Store) -> ImageStore:
    return ImageStore(store)


def test_load_oci_layout_and_share_layers(store: Store, tmp_path: Path) -> None:
    a, b = build([BASE, TOP]), build([BASE, OTHER], "zstd")
    write_layout(tmp_path / "lay", [("docker.io/library/app:1", a), ("quay.io/x/b:2", b)])
    ims = images(store)
    loaded = load_path(ims, tmp_path / "lay")
    assert [str(x.id) for x in loaded] == [a.id, b.id]
    cat = ims.load()
    assert cat.tags == {"docker.io/library/app:1": Digest.parse(a.id),
                        "quay.io/x/b:2": Digest.parse(b.id)}
    assert cat.images[Digest.parse(a.id)].manifest == Digest.parse(a.digest)
    ia, ib = ims.info(cat, Digest.parse(a.id)), ims.info(cat, Digest.parse(b.id))
    assert ia.chain_ids[0] == ib.chain_ids[0]  # same base (gzip vs zstd): unpacked once
    assert len(ims.layers.all()) == 3
    top = read_tree(ims.layers.diff_dir(ia.chain_ids[1]), times=False)
    assert top["etc/os-release"][4] == (0, 0)
    assert top["var/cache"][5] == {"trusted.overlay.opaque": b"y"}
    assert top["tmp"][1] == 0o1777  # implicit parent took the lower's mode
    assert ims.resolve(cat, "app:1") == Digest.parse(a.id)
    assert ims.resolve(cat, a.id.split(":")[1][:8]) == Digest.parse(a.id)
    assert ims.resolve(cat, f"app@{a.digest}") == Digest.parse(a.id)


def test_load_is_idempotent(store: Store, tmp_path: Path) -> None:
    a = build([BASE])
    write_layout(tmp_path / "lay", [("app:1", a)])
    ims = images(store)
    load_path(ims, tmp_path / "lay")
    before = snapshot(store.root)
    load_path(ims, tmp_path / "lay")
    after = snapshot(store.root)
    assert before.keys() == after.keys()


def test_docker_archive_legacy_and_oci_archive(store: Store, tmp_path: Path) -> None:
    a = build([BASE, TOP], "")
    arch = write_docker_archive(tmp_path / "d.tar", [(["app:1", "app:latest"], a)])
    ims = images(store)
    (loaded,) = load_path(ims, arch)
    assert str(loaded.id) == a.id
    cat = ims.load()
    assert sorted(cat.tags) == ["docker.io/library/app:1", "docker.io/library/app:latest"]
    info = ims.info(cat, loaded.id)
    assert info.manifest.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert [str(d.digest) for d in info.manifest.layers] == [sha(BASE), sha(TOP)]
    oci_tar = tar_dir(write_layout(tmp_path / "lay", [("b:1", build([BASE, TOP]))]),
                      tmp_path / "o.tar", gz=True)
    (b,) = load_path(ims, oci_tar)
    assert ims.info(ims.load(), b.id).chain_ids == info.chain_ids  # same layers, shared


def test_docker_archive_with_oci_layout_inside(store: Store, tmp_path: Path) -> None:
    a = build([BASE], "")
    lay = write_layout(tmp_path / "m", [("docker.io/library/app:1", a)])
    (lay / "manifest.json").write_text(json.dumps([{
        "Config": f"blobs/sha256/{a.id.split(':')[1]}", "RepoTags": ["app:1"],
        "Layers": [f"blobs/sha256/{sha(BASE).split(':')[1]}"]}]))
    ims = images(store)
    (loaded,) = load_path(ims, tar_dir(lay, tmp_path / "m.tar"))
    assert ims.load().images[loaded.id].manifest == Digest.parse(a.digest)


def test_index_picks_host_platform(store: Store, tmp_path: Path) -> None:
    arm, amd = build([OTHER], arch="arm64"), build([BASE], arch="amd64")
    lay = write_layout(tmp_path / "lay", [("", arm), ("", amd)])
    nested = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
              "manifests": [
                  {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "digest": img.digest, "size": len(img.manifest),
                   "platform": {"os": "linux", "architecture": arch}}
                  for img, arch in ((arm, "arm64"), (amd, "amd64"))]}
    data = json.dumps(nested).encode()
    (lay / "blobs/sha256" / sha(data).split(":")[1]).write_bytes(data)
    (lay / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": nested["mediaType"], "digest": sha(data), "size": len(data),
        "annotations": {"io.containerd.image.name": "multi:1"}}]}))
    ims = images(store)
    (loaded,) = load_path(ims, lay)
    assert str(loaded.id) == amd.id and loaded.names == ["docker.io/library/multi:1"]


def test_save_roundtrips(store: Store, tmp_path: Path) -> None:
    a = build([BASE, TOP, BASE])  # the same layer twice in one manifest is valid
    ims = images(store)
    (loaded,) = load_path(ims, write_layout(tmp_path / "lay", [("app:1", a)]))
    cat = ims.load()
    item = SaveItem(ims.info(cat, loaded.id), ["docker.io/library/app:1"])
    with store.locked(False):
        for fmt, dest in (("oci-archive", "o.tar"), ("oci-dir", "odir"),
                          ("docker-archive", "d.tar")):
            save(ims.blobs, [item], fmt, str(tmp_path / dest))
    for dest in ("o.tar", "odir", "d.tar"):
        other = ImageStore(Store(tmp_path / f"s-{dest}"))
        (again,) = load_path(other, tmp_path / dest)
        c2 = other.load()
        assert again.id == loaded.id and c2.tags == cat.tags
        assert c2.images[again.id].manifest == cat.images[loaded.id].manifest  # all formats
        for chain in ims.info(cat, loaded.id).chain_ids:
            assert same_tree(other.layers.diff_dir(chain), ims.layers.diff_dir(chain))
    # a docker-archive saved from a docker-archive load keeps its manifest digest
    d1 = ImageStore(Store(tmp_path / "s-d.tar"))
    c1 = d1.load()
    with d1.store.locked(False):
        save(d1.blobs, [SaveItem(d1.info(c1, loaded.id), [])], "docker-archive",
             str(tmp_path / "d2.tar"))
    d2 = ImageStore(Store(tmp_path / "s-d2"))
    (x,) = load_path(d2, tmp_path / "d2.tar")
    assert d2.load().images[x.id].manifest == c1.images[loaded.id].manifest


def test_import_file_and_dir(store: Store, tmp_path: Path) -> None:
    ims = images(store)
    tarball = tmp_path / "rootfs.tar.gz"
    from mt_helpers import compress
    tarball.write_bytes(compress(BASE, "gzip"))
    a = import_path(ims, tarball, ["docker.io/library/rootfs:latest"], "hello")
    info = ims.info(ims.load(), a.id)
    assert info.config.diff_ids == (Digest.parse(sha(BASE)),)
    assert info.config.history()[0].comment == "hello"
    tree = read_tree(ims.layers.diff_dir(info.chain_ids[0]))
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo")
    (src / "f").write_bytes(b"data")
    os.link(src / "f", src / "g")
    os.setxattr(src / "f", "user.k", b"v")
    b = import_path(ims, src, [])
    bi = ims.info(ims.load(), b.id)
    t2 = read_tree(ims.layers.diff_dir(bi.chain_ids[0]))
    assert t2["f"][4:6] == (b"data", {"user.k": b"v"}) and t2["fifo"][0] == 0o010000
    d = ims.layers.diff_dir(bi.chain_ids[0])
    assert os.stat(d / "f").st_ino == os.stat(d / "g").st_ino
    assert tree["etc/os-release"][4] == b"ID=test\n"


# -- bad inputs: each one a clear error and an unchanged store ----------------------------------

def _bad_layouts(tmp: Path) -> list[tuple[Path, str]]:
    out = []
    a = build([BASE, TOP])
    lay = write_layout(tmp / "missing-blob", [("app:1", a)])
    top_blob = json.loads(a.manifest)["layers"][1]["digest"].split(":")[1]
    (lay / "blobs/sha256" / top_blob).unlink()
    out.append((lay, "not in the archive"))
    lay = write_layout(tmp / "corrupt-blob", [("app:1", a)])
    p = lay / "blobs/sha256" / top_blob
    blob = bytearray(p.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    p.write_bytes(bytes(blob))
    out.append((lay, "digest|size|gzip"))
    lay = write_layout(tmp / "bad-diffid", [("app:1", build([BASE], diff_ids=[sha(b"x")]))])
    out.append((lay, "does not match"))
    lay = write_layout(tmp / "count", [("app:1", build([BASE], diff_ids=[]))])
    out.append((lay, "1 layers but the config lists 0"))
    lay = write_layout(tmp / "unsafe", [("app:1", build([BASE, make_tar([F("../x")])]))])
    out.append((lay, "escapes"))
    lay = write_layout(tmp / "trunc", [("app:1", build([BASE, make_tar([F("a", b"1" * 4000)])
                                                        [:2000]], ""))])
    out.append((lay, "truncated|does not match"))
    lay = write_layout(tmp / "cfg", [("app:1", a)])
    (lay / "blobs/sha256" / a.id.split(":")[1]).write_bytes(b"{}")
    out.append((lay, "does not match its digest"))
    lay = write_layout(tmp / "version", [("app:1", a)])
    (lay / "oci-layout").write_text('{"imageLayoutVersion": "9"}')
    out.append((lay, "imageLayoutVersion"))
    lay = write_layout(tmp / "index", [("app:1", a)])
    (lay / "index.json").write_text("{")
    out.append((lay, "index.json: not valid JSON"))
    lay = write_layout(tmp / "empty", [], {"schemaVersion": 2, "manifests": []})
    out.append((lay, "no image manifest"))
    (tmp / "none").mkdir()
    out.append((tmp / "none", "not an image archive"))
    (tmp / "junk.tar").write_bytes(b"junk" * 300)
    out.append((tmp / "junk.tar", "not a valid tar|not an image"))
    img = build([BASE], "")
    out.append((write_docker_archive(tmp / "d1.tar", [(["app:1"], img)], {"x": 1}),
                "non-empty list"))
    out.append((write_docker_archive(tmp / "d2.tar", [(["App:1"], img)]), "lowercase"))
    out.append((write_docker_archive(tmp / "d3.tar", [(["a:1"], img)],
                                     [{"Config": "../etc/passwd", "Layers": []}]),
                "leaves the archive"))
    d4 = write_docker_archive(tmp / "d4.tar", [(["a:1"], img)])
    out.append((write_docker_archive(d4, [(["a:1"], img)], skip={
        (json.loads(Path(d4).read_bytes()[0:0] or b"0") and "") or
        f"{sha(BASE).split(':')[1][:16]}0/layer.tar"}), "missing from the archive"))
    layer0 = f"{sha(BASE).split(':')[1][:16]}0/layer.tar"
    out.append((write_docker_archive(tmp / "d5.tar", [(["a:1"], img)],
                                     links={layer0: "../../../etc/passwd"}),
                "links to a missing member"))
    (tmp / "gz.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40)
    out.append((tmp / "gz.tar.gz", "corrupt or truncated"))
    return out


def test_bad_inputs_leave_store_unchanged(store: Store, tmp_path: Path) -> None:
    ims = images(store)
    load_path(ims, write_layout(tmp_path / "good", [("good:1", build([OTHER]))]))
    before = snapshot(store.root)
    (tmp_path / "bad").mkdir()
    for path, why in _bad_layouts(tmp_path / "bad"):
        with pytest.raises(MountToolError, match=why):
            load_path(ims, path)
            pytest.fail(f"{path} loaded")
        assert snapshot(store.root) == before, path
        assert list(store.tmp.iterdir()) == [], path


def test_unnamed_oci_ref_name_tag(store: Store, tmp_path: Path) -> None:
    a = build([OTHER])
    lay = write_layout(tmp_path / "lay", [("", a)])
    idx = json.loads((lay / "index.json").read_text())
    idx["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
    (lay / "index.json").write_text(json.dumps(idx))
    (loaded,) = load_path(images(store), lay)
    assert loaded.names == []


def test_img_helpers_consistent() -> None:
    img: Img = build([BASE])
    assert img.digest == sha(img.manifest)


def test_interrupted_load_leaves_nothing(store: Store, tmp_path: Path) -> None:
    """A load killed just before its catalogue write: the next writer removes its leftovers."""
    import subprocess
    import sys
    ims = images(store)
    load_path(ims, write_layout(tmp_path / "good", [("good:1", build([OTHER]))]))
    before = snapshot(store.root)
    lay = write_layout(tmp_path / "lay", [("app:1", build([BASE, TOP]))])
    code = ("import os, sys\n"
            "from pathlib import Path\n"
            "from mounttool.images import ImageStore\n"
            "from mounttool.ingest import load_path\n"
            "from mounttool.store import Store\n"
            "ImageStore.save = lambda self, cat: os._exit(9)  # die like kill -9, no cleanup\n"
            "load_path(ImageStore(Store(Path(sys.argv[1]))), Path(sys.argv[2]))\n")
    res = subprocess.run([sys.executable, "-c", code, str(store.root), str(lay)],
                         cwd=Path(__file__).parents[2], check=False)
    assert res.returncode == 9
    assert len(ims.layers.all()) > 1  # the killed load had published layers...
    assert ims.load().tags.keys() == {"docker.io/library/good:1"}  # ...but no image
    fresh = ImageStore(Store(store.root))
    with fresh.store.locked(exclusive=True):
        pass
    assert snapshot(store.root) == before


def test_concurrent_loads_are_safe(store: Store, tmp_path: Path) -> None:
    import subprocess
    import sys
    lays = [write_layout(tmp_path / f"l{i}", [(f"app:{i}", build([BASE, make_tar(
        [F(f"f{i}", b"%d" % i)])]))]) for i in range(3)]
    code = ("import sys\nfrom pathlib import Path\n"
            "from mounttool.images import ImageStore\nfrom mounttool.ingest import load_path\n"
            "from mounttool.store import Store\n"
            "load_path(ImageStore(Store(Path(sys.argv[1]))), Path(sys.argv[2]))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(store.root), str(lay)],
                              cwd=Path(__file__).parents[2]) for lay in lays]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    cat = images(store).load()
    assert sorted(cat.tags) == [f"docker.io/library/app:{i}" for i in range(3)]
    assert len(images(store).layers.all()) == 4  # the base once, shared


def test_index_entries_without_media_type(store: Store, tmp_path: Path) -> None:
    a = build([OTHER])
    lay = write_layout(tmp_path / "lay", [("app:1", a)])
    idx = json.loads((lay / "index.json").read_text())
    del idx["manifests"][0]["mediaType"]
    (lay / "index.json").write_text(json.dumps(idx))
    (loaded,) = load_path(images(store), lay)
    assert str(loaded.id) == a.id


def test_docker_archive_with_symlinked_layer(store: Store, tmp_path: Path) -> None:
    a = build([BASE, BASE, TOP], "")  # the same layer twice, the second a symlink
    first = f"{sha(BASE).split(':')[1][:16]}0/layer.tar"
    second = f"{sha(BASE).split(':')[1][:16]}1/layer.tar"
    arch = write_docker_archive(tmp_path / "d.tar", [(["app:1"], a)],
                                links={second: f"../{first}"})
    (loaded,) = load_path(images(store), arch)
    assert str(loaded.id) == a.id


def test_every_hostile_layer_leaves_store_unchanged(store: Store, tmp_path: Path) -> None:
    """Each bad layer of the unpack tests, inside a real image: one error, nothing stored."""
    from test_mt_unpack import HOSTILE

    ims = images(store)
    load_path(ims, write_layout(tmp_path / "good", [("good:1", build([BASE]))]))
    before = snapshot(store.root)
    for i, (entries, err, why) in enumerate(HOSTILE):
        for compression in ("", "gzip"):
            lay = write_layout(tmp_path / f"h{i}{compression}",
                               [("bad:1", build([BASE, make_tar(entries)], compression))])
            with pytest.raises(err, match=why):
                load_path(ims, lay)
            assert snapshot(store.root) == before, entries
            assert list(store.tmp.iterdir()) == []


def test_very_deep_trees(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                         ) -> None:
    """Depth beyond Python's recursion limit: load, walk, remove; a bad one leaves nothing."""
    from mounttool.cli import main
    deep = "/".join(["d"] * 1100) + "/f"  # deeper than the recursion limit
    ims = images(store)
    load_path(ims, write_layout(tmp_path / "good", [("good:1", build([OTHER]))]))
    before = snapshot(store.root)
    bad = write_layout(tmp_path / "bad", [("bad:1", build([make_tar([F(deep), F("../x")])]))])
    with pytest.raises(MountToolError, match="escapes"):
        load_path(ims, bad)
    assert snapshot(store.root) == before
    too_long = write_layout(tmp_path / "long", [("l:1", build([make_tar([F("d/" * 1800)])]))])
    with pytest.raises(MountToolError, match="longer than"):
        load_path(ims, too_long)
    load_path(ims, write_layout(tmp_path / "ok", [("deep:1", build([make_tar([F(deep)])]))]))
    root = ["--root", str(store.root)]
    assert main([*root, "df"]) == 0
    assert main([*root, "tree", "deep:1"]) == 0
    assert capsys.readouterr().out.count("/d") > 1100
    assert main([*root, "rmi", "deep:1"]) == 0
    assert snapshot(store.root) == before


def test_artifacts_beside_images_are_skipped(store: Store, tmp_path: Path) -> None:
    a = build([OTHER])
    lay = write_layout(tmp_path / "lay", [("app:1", a)])
    blob = b'{"predicateType": "x"}'
    art_cfg = b"{}"
    man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.in-toto+json",
                                 "digest": sha(art_cfg), "size": len(art_cfg)},
                      "layers": [{"mediaType": "application/vnd.in-toto+json",
                                  "digest": sha(blob), "size": len(blob)}]}).encode()
    for data in (blob, art_cfg, man):
        (lay / "blobs/sha256" / sha(data).split(":")[1]).write_bytes(data)
    idx = json.loads((lay / "index.json").read_text())
    idx["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                             "digest": sha(man), "size": len(man)})
    (lay / "index.json").write_text(json.dumps(idx))
    (loaded,) = load_path(images(store), lay)
    assert str(loaded.id) == a.id


def test_archive_truncated_inside_its_last_member(store: Store, tmp_path: Path) -> None:
    import io
    import tarfile
    big = make_tar([F("big", bytes(range(256)) * 4000)])
    img = build([big], "")
    lay = write_layout(tmp_path / "lay", [("app:1", img)])
    layer = lay / "blobs/sha256" / json.loads(img.manifest)["layers"][0]["digest"][7:]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(lay.rglob("*"), key=lambda p: p == layer):  # the big layer last
            tar.add(p, arcname=str(p.relative_to(lay)), recursive=False)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(buf.getvalue()[:len(buf.getvalue()) - 600_000])
    before = snapshot(store.root)
    with pytest.raises(MountToolError, match=r"truncated|unexpected end of data"):
        load_path(images(store), cut)
    assert snapshot(store.root) == before


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount overlayfs")
def test_store_on_a_filesystem_without_overlay_xattrs(tmp_path: Path) -> None:
    """A store on overlayfs cannot hold overlay markers: one clear error, nothing left."""
    import subprocess
    for d in ("l", "u", "w", "m"):
        (tmp_path / d).mkdir()
    opts = f"lowerdir={tmp_path / 'l'},upperdir={tmp_path / 'u'},workdir={tmp_path / 'w'}"
    res = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(tmp_path / "m")],
                         capture_output=True, text=True, check=False)
    if res.returncode:
        pytest.skip(f"kernel overlayfs not available here: {res.stderr.strip()}")
    try:
        store = Store(tmp_path / "m" / "store")
        ims = images(store)
        load_path(ims, write_layout(tmp_path / "good", [("good:1", build([OTHER]))]))
        before = snapshot(store.root)
        with pytest.raises(MountToolError, match="needs a filesystem with trusted"):
            load_path(ims, write_layout(tmp_path / "lay", [("app:1", build([BASE, TOP]))]))
        assert snapshot(store.root) == before
    finally:
        subprocess.run(["umount", str(tmp_path / "m")], check=False)
