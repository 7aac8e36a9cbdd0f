"""Differential tests against real tools: umoci builds a multi-layer corpus, skopeo converts it.

The reference tree is umoci's own unpack of the final image; mounttool's unpacked layers,
merged with overlay rules, must show exactly that tree (types, modes, owners, contents, link
targets, xattrs, times), whether loaded from the OCI layout, an oci-archive or a docker-archive.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mt_helpers import kernel_view, merge_layers, plain_tree

from mounttool.digest import Digest
from mounttool.images import ImageStore
from mounttool.ingest import load_path
from mounttool.store import Store

TOOLS = {t: shutil.which(t) for t in ("umoci", "skopeo")}
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (umoci unpack, mknod, xattrs)"),
    pytest.mark.skipif(not TOOLS["umoci"],
                       reason="umoci not installed (apt-get install umoci)"),
]


def sh(*argv: str | Path, cwd: Path | None = None) -> str:
    res = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                         check=False, timeout=120)
    assert res.returncode == 0, (argv, res.stderr)
    return res.stdout


def _layer1(r: Path) -> None:
    for d in ("etc", "usr/bin", "usr/share/doc", "var/lib/x/deep", "dev", "home/u"):
        (r / d).mkdir(parents=True, exist_ok=True)
    (r / "etc/passwd").write_text("root:x:0:0\n")
    (r / "etc/f").write_text("file that becomes a dir")
    (r / "usr/bin/busybox").write_bytes(b"\x7fELF" * 100)
    (r / "usr/bin/busybox").chmod(0o755)
    os.link(r / "usr/bin/busybox", r / "usr/bin/ls")
    os.symlink("busybox", r / "usr/bin/sh")
    (r / "usr/share/doc/README").write_text("docs")
    (r / "var/lib/x/deep/old").write_text("old")
    (r / "usr/bin/su").write_text("su")
    os.chown(r / "usr/bin/su", 1000, 1000)
    (r / "usr/bin/su").chmod(0o4755)
    os.mkfifo(r / "dev/fifo")
    os.mknod(r / "dev/null", 0o20666, os.makedev(1, 3))
    os.setxattr(r / "etc/passwd", "user.k", b"v1")
    os.setxattr(r / "usr/bin/busybox", "security.capability",
                b"\x01\x00\x00\x02" + b"\x00\x04\x00\x00" + bytes(12))
    os.chown(r / "home/u", 1000, 100)


def _layer2(r: Path) -> None:
    (r / "etc/passwd").unlink()                          # deleted file
    shutil.rmtree(r / "var/lib/x")                       # deleted and recreated directory
    (r / "var/lib/x").mkdir()
    (r / "var/lib/x/new").write_text("new")
    (r / "etc/f").unlink()                               # file → directory
    (r / "etc/f").mkdir()
    (r / "etc/f/inside").write_text("inside")
    shutil.rmtree(r / "usr/share/doc")                   # directory → file
    (r / "usr/share/doc").write_text("now a file")
    (r / "usr/bin/su").chmod(0o755)                      # mode and owner change
    os.chown(r / "home/u", 1001, 1001)
    os.setxattr(r / "usr/bin/busybox", "user.added", b"x")  # xattr change
    os.link(r / "usr/bin/busybox", r / "usr/bin/cat")    # another hardlink
    (r / "usr/bin/sh").unlink()                          # deleted symlink


def _layer3(r: Path) -> None:
    shutil.rmtree(r / "etc")                             # whole tree gone
    (r / "dev/fifo").unlink()
    os.symlink("/usr/bin/busybox", r / "usr/bin/sh")     # recreated as a different symlink
    (r / ".wh-looking").write_text("not a whiteout")     # a name close to the prefix


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An OCI layout with tags l1..l3 (one layer each on the last), and umoci's own unpack."""
    root = tmp_path_factory.mktemp("umoci")
    lay = root / "layout"
    sh("umoci", "init", "--layout", lay)
    sh("umoci", "new", "--image", f"{lay}:l0")
    prev = "l0"
    for i, change in enumerate((_layer1, _layer2, _layer3), 1):
        bundle = root / f"b{i}"
        sh("umoci", "unpack", "--image", f"{lay}:{prev}", bundle)
        change(bundle / "rootfs")
        sh("umoci", "repack", "--image", f"{lay}:l{i}", bundle)
        prev = f"l{i}"
    ref = root / "ref"
    sh("umoci", "unpack", "--image", f"{lay}:l3", ref)
    return lay, ref / "rootfs"


def _check(store_root: Path, source: Path, ref: Path, want_layers: int = 3) -> None:
    images = ImageStore(Store(store_root))
    loaded = load_path(images, source)
    cat = images.load()
    tops = [images.info(cat, x.id) for x in loaded]
    info = max(tops, key=lambda i: len(i.chain_ids))
    assert len(info.chain_ids) == want_layers
    layers = [images.layers.diff_dir(c) for c in reversed(info.chain_ids)]
    got, want = merge_layers(layers), plain_tree(ref)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], key


def test_umoci_layout_matches_umoci_unpack(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    lay, ref = corpus
    _check(tmp_path / "s", lay, ref)


@pytest.mark.skipif(not TOOLS["skopeo"], reason="skopeo not installed (apt-get install skopeo)")
@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive"])
def test_skopeo_archives_match(corpus: tuple[Path, Path], tmp_path: Path,
                               transport: str) -> None:
    lay, ref = corpus
    out = tmp_path / "img.tar"
    sh("skopeo", "--insecure-policy", "copy", f"oci:{lay}:l3",
       f"{transport}:{out}:example.com/corpus:l3")
    _check(tmp_path / "s", out, ref)
    images = ImageStore(Store(tmp_path / "s"))
    assert "example.com/corpus:l3" in images.load().tags


@pytest.mark.skipif(not TOOLS["skopeo"], reason="skopeo not installed (apt-get install skopeo)")
def test_mounttool_save_is_accepted_by_skopeo(corpus: tuple[Path, Path], tmp_path: Path
                                              ) -> None:
    from mounttool.formats.save import SaveItem, save
    lay, _ = corpus
    images = ImageStore(Store(tmp_path / "s"))
    loaded = load_path(images, lay)
    cat = images.load()
    top = max(loaded, key=lambda x: len(images.info(cat, x.id).chain_ids))
    info = images.info(cat, top.id)
    for fmt, transport in (("docker-archive", "docker-archive"), ("oci-archive", "oci-archive"),
                           ("oci-dir", "oci")):
        dest = tmp_path / f"out-{fmt}"
        with images.store.locked(False):
            save(images.blobs, [SaveItem(info, ["example.com/x:1"])], fmt, str(dest))
        back = tmp_path / f"back-{fmt}"
        suffix = ":example.com/x:1" if transport == "docker-archive" else ":1"  # ref.name = tag
        # same transport back (a docker→OCI conversion would rewrite the config, and the id)
        target = f"docker-archive:{back}:example.com/x:1" if fmt == "docker-archive" \
            else f"oci:{back}:r"
        sh("skopeo", "--insecure-policy", "copy", f"{transport}:{dest}{suffix}", target)
        res = ImageStore(Store(tmp_path / f"s-{fmt}"))
        (again,) = load_path(res, back)
        assert again.id == Digest.parse(str(info.record.id)), fmt


@pytest.mark.skipif(not TOOLS["skopeo"], reason="skopeo not installed (apt-get install skopeo)")
@pytest.mark.parametrize("fmt", ["zstd", "gzip"])
def test_skopeo_recompressed_layouts_match(corpus: tuple[Path, Path], tmp_path: Path,
                                           fmt: str) -> None:
    lay, ref = corpus
    out = tmp_path / "lay"
    sh("skopeo", "--insecure-policy", "copy", "--dest-compress", "--dest-compress-format", fmt,
       f"oci:{lay}:l3", f"oci:{out}:l3")
    _check(tmp_path / "s", out, ref)


@pytest.mark.fuse
@pytest.mark.skipif(not (os.path.exists("/dev/fuse") and shutil.which("fusermount3")),
                    reason="needs /dev/fuse and fusermount3")
def test_mounted_image_matches_umoci_unpack(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    """Through a real unionfs mount: the image shows exactly umoci's own unpack."""
    from mounttool.cli import main
    from mounttool.mounting import umount
    lay, ref = corpus
    images = ImageStore(Store(tmp_path / "s"))
    loaded = load_path(images, lay)
    cat = images.load()
    top = max(loaded, key=lambda x: len(images.info(cat, x.id).chain_ids))
    mnt = tmp_path / "mnt"
    assert main(["--root", str(tmp_path / "s"), "mount", "--image", str(top.id), str(mnt)]) == 0
    try:
        got, want = plain_tree(mnt), plain_tree(ref)
        assert sorted(got) == sorted(want)
        for key in want:
            assert got[key] == want[key], key
    finally:
        umount(mnt)


@pytest.mark.root
def test_kernel_viewfs_reads_our_layers_like_umoci(corpus: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    """The on-disk format is the kernel's: kernel overlayfs over our layers = umoci's unpack."""
    lay, ref = corpus
    images = ImageStore(Store(tmp_path / "s"))
    loaded = load_path(images, lay)
    cat = images.load()
    info = max((images.info(cat, x.id) for x in loaded), key=lambda i: len(i.chain_ids))
    layers = [images.layers.diff_dir(c) for c in reversed(info.chain_ids)]
    with kernel_view(layers, tmp_path / "kmnt") as mnt:
        got, want = plain_tree(mnt), plain_tree(ref)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], key
    assert merge_layers(layers) == got


@pytest.fixture(scope="module")
def inserted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Layers as ``umoci insert`` writes them: a last member's data not padded to a block and
    no end-of-archive blocks, a layer that is one whiteout header, an opaque directory."""
    root = tmp_path_factory.mktemp("umoci-insert")
    lay = root / "layout"
    sh("umoci", "init", "--layout", lay)
    sh("umoci", "new", "--image", f"{lay}:t")
    src = root / "src"
    (src / "etc/sub").mkdir(parents=True)
    (src / "etc/f").write_text("hi\n")  # 3 bytes, the last member: unpadded
    (src / "etc/sub/keep").write_text("k")
    (src / "etc/sub/gone").write_text("g")
    sh("umoci", "insert", "--image", f"{lay}:t", src / "etc", "/etc")
    sh("umoci", "insert", "--image", f"{lay}:t", "--whiteout", "/etc/f")
    fresh = root / "fresh"
    fresh.mkdir()
    (fresh / "new").write_text("only this")
    sh("umoci", "insert", "--image", f"{lay}:t", "--opaque", fresh, "/etc/sub")
    ref = root / "ref"
    sh("umoci", "unpack", "--image", f"{lay}:t", ref)
    return lay, ref / "rootfs"


def test_umoci_insert_layers_load_in_every_form(inserted: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    lay, ref = inserted
    assert sorted(p.relative_to(ref).as_posix() for p in ref.rglob("*")) == \
        ["etc", "etc/sub", "etc/sub/new"]
    _check(tmp_path / "layout", lay, ref)
    if not TOOLS["skopeo"]:
        pytest.skip("skopeo not installed (apt-get install skopeo): archive forms not checked")
    for transport in ("oci-archive", "docker-archive"):
        out = tmp_path / f"{transport}.tar"
        sh("skopeo", "--insecure-policy", "copy", f"oci:{lay}:t",
           f"{transport}:{out}:example.com/inserted:t")
        _check(tmp_path / transport, out, ref)


@pytest.mark.fuse
@pytest.mark.skipif(not (os.path.exists("/dev/fuse") and shutil.which("fusermount3")),
                    reason="needs /dev/fuse and fusermount3")
def test_mounted_umoci_insert_image_matches_umoci_unpack(inserted: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    from mounttool.cli import main
    from mounttool.mounting import umount
    lay, ref = inserted
    images = ImageStore(Store(tmp_path / "s"))
    (top,) = load_path(images, lay)
    mnt = tmp_path / "mnt"
    assert main(["--root", str(tmp_path / "s"), "mount", "--image", str(top.id), str(mnt)]) == 0
    try:
        assert plain_tree(mnt) == plain_tree(ref)
    finally:
        umount(mnt)
