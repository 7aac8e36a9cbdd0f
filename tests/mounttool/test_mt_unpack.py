"""Tests for unpack.py: layer tar → overlay-format directory, safety and form."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from mt_helpers import MTIME, OPQ, D, E, F, H, S, W, compress, describe, make_tar, read_tree

from mounttool.digest import Digest
from mounttool.errors import CorruptLayerError, DigestMismatchError, UnsafeLayerError
from mounttool.unpack import UnpackOptions, unpack_into, unpack_layer

NS = MTIME * 10**9
OPAQUE = {"trusted.overlay.opaque": b"y"}
CAP = b"\x01\x00\x00\x02" + b"\x00\x04\x00\x00" + bytes(12)  # cap_net_bind_service+ep


def unpack(tmp_path: Path, data: bytes, expected: Digest | None = None,
           opts: UnpackOptions | None = None) -> Path:
    dest = tmp_path / "layer"
    dest.mkdir(exist_ok=True)
    unpack_into(io.BytesIO(data), dest, expected, opts)
    return dest


RICH = [
    D("etc", mtime=MTIME + 5),
    F("etc/passwd", b"root:x:0:0\n", mode=0o644),
    F("etc/shadow", b"secret", mode=0o640, gid=42),
    F("usr/bin/su", b"\x7fELF", mode=0o4755, uid=1000, gid=1000),
    S("usr/bin/sh", "busybox", uid=7),
    F("usr/bin/busybox", b"bb", mode=0o755),
    H("usr/bin/ls", "usr/bin/busybox"),
    E("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
    E("dev/loop0", tarfile.BLKTYPE, mode=0o660, dev=(7, 0), gid=6),
    E("run/fifo", tarfile.FIFOTYPE, mode=0o600),
    F("x", b"xa", xattrs={"user.a": b"1", "trusted.t": b"\xff\x00b",
                          "security.capability": CAP}),
    D("etc/sub", mode=0o700, uid=5, xattrs={"user.d": b"dir"}),
    D("etc/sub", mode=0o750, uid=5, mtime=MTIME + 9),
    D("./", mode=0o711, mtime=MTIME + 1),
]


def test_rich_layer(tmp_path: Path) -> None:
    data = make_tar(RICH)
    dest = tmp_path / "layer"
    dest.mkdir()
    res = unpack_into(io.BytesIO(data), dest, Digest.of_bytes(data))
    assert res.diff_id == Digest.of_bytes(data) and res.entries == len(RICH)
    t = read_tree(dest)
    assert t["etc/passwd"] == (stat.S_IFREG, 0o644, 0, 0, b"root:x:0:0\n", {}, NS)
    assert t["etc/shadow"][1:4] == (0o640, 0, 42)
    assert t["usr/bin/su"][1:4] == (0o4755, 1000, 1000)
    assert t["usr/bin/sh"][:5] == (stat.S_IFLNK, 0o777, 7, 0, b"busybox")
    assert os.stat(dest / "usr/bin/ls").st_ino == os.stat(dest / "usr/bin/busybox").st_ino
    assert t["dev/null"][:5] == (stat.S_IFCHR, 0o666, 0, 0, (1, 3))
    assert t["dev/loop0"][:5] == (stat.S_IFBLK, 0o660, 0, 6, (7, 0))
    assert t["run/fifo"][:2] == (stat.S_IFIFO, 0o600)
    assert t["x"][5] == {"security.capability": CAP, "trusted.t": b"\xff\x00b",
                         "user.a": b"1"}
    assert t["etc"][1] == 0o755 and t["etc"][6] == NS + 5 * 10**9  # set after its children
    assert t["etc/sub"][1:4] == (0o750, 5, 0) and t["etc/sub"][5] == {"user.d": b"dir"}
    assert t["etc/sub"][6] == NS + 9 * 10**9
    assert t["usr"][1] == 0o755 and t["usr"][2] == 0  # implicit parent
    assert t["."][1] == 0o711 and t["."][6] == NS + 10**9


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_layers_have_same_tree_and_diff_id(tmp_path: Path, compression: str) -> None:
    raw = make_tar([D(".", mode=0o755), D("usr"), D("usr/bin"), D("dev"), D("run"), *RICH])
    (tmp_path / "p").mkdir()
    plain = read_tree(unpack(tmp_path / "p", raw))
    blob = compress(raw, compression)
    dest = tmp_path / "c"
    dest.mkdir()
    res = unpack_into(io.BytesIO(blob), dest, Digest.of_bytes(raw))
    assert res.compression == compression and res.diff_id == Digest.of_bytes(raw)
    assert read_tree(dest) == plain


def test_multi_member_gzip_and_multi_frame_zstd(tmp_path: Path) -> None:
    raw = make_tar([F("a", b"1" * 5000), F("b", b"2" * 5000)])
    half = len(raw) // 2 // 512 * 512
    for i, blob in enumerate([compress(raw[:half], "gzip") + compress(raw[half:], "gzip"),
                              compress(raw[:half], "zstd") + compress(raw[half:], "zstd")]):
        dest = tmp_path / str(i)
        dest.mkdir()
        unpack_into(io.BytesIO(blob), dest, Digest.of_bytes(raw))
        assert (dest / "b").read_bytes() == b"2" * 5000


def test_whiteouts_become_overlay_format(tmp_path: Path) -> None:
    data = make_tar([
        F("keep/a", b"a"),
        OPQ("keep"),                       # after its sibling: still opaque, sibling kept
        OPQ("opq2"), F("opq2/b", b"b"),    # before its sibling
        W("etc/gone"),                     # parent created implicitly
        E("etc/.wh.owned", mode=0o600, uid=3, gid=4),
        W("f"), F("f", b"new file"),       # re-created in this layer: just a file
        W("d"), F("d/child", b"c"),        # re-created as a dir: opaque
        F("e/x", b"x"), W("e"),            # whiteout after the dir: still opaque, kept
        W("keep/old"),                     # inside an opaque dir: redundant, not written
        W("d/deep/zz"),                    # inside a dir made opaque by its own whiteout
    ])
    t = read_tree(unpack(tmp_path, data), times=False)
    assert t["keep"][5] == OPAQUE and t["keep/a"][4] == b"a"
    assert t["opq2"][5] == OPAQUE and "opq2/.wh..wh..opq" not in t
    assert t["etc/gone"][:5] == (stat.S_IFCHR, 0, 0, 0, (0, 0))
    assert t["etc/owned"][2:4] == (3, 4)
    assert t["f"][4] == b"new file" and t["f"][5] == {}
    assert t["d"][5] == OPAQUE and t["d/child"][4] == b"c"
    assert t["e"][5] == OPAQUE and t["e/x"][4] == b"x"
    assert "keep/old" not in t and "d/deep" not in t
    assert not any(".wh." in k for k in t)


def test_opaque_root(tmp_path: Path) -> None:
    t = read_tree(unpack(tmp_path, make_tar([OPQ(""), F("a")])), times=False)
    assert t["."][5] == OPAQUE


HOSTILE: list[tuple[list[E], type[Exception], str]] = [
    ([F("../evil")], UnsafeLayerError, "escapes"),
    ([F("a/../../evil")], UnsafeLayerError, "escapes"),
    ([S("link", "/"), F("link/evil")], UnsafeLayerError, "symlink"),
    ([S("link", "../.."), F("link/evil")], UnsafeLayerError, "symlink"),
    ([D("a"), S("a/l", "/tmp"), F("a/l/b/evil")], UnsafeLayerError, "symlink"),
    ([H("h", "/etc/passwd")], UnsafeLayerError, "not in this layer"),
    ([H("h", "../outside")], UnsafeLayerError, "escapes"),
    ([S("l", "/etc"), H("h", "l/passwd")], UnsafeLayerError, "symlink"),
    ([D("d"), H("h", "d")], UnsafeLayerError, "directory"),
    ([H("h", "h")], UnsafeLayerError, "invalid target"),
    ([F("a"), F("a/b")], CorruptLayerError, "not a directory"),
    ([D("a"), F("a/x"), S("a", "/tmp"), F("a/y")], UnsafeLayerError, "symlink"),
    ([D("a/b"), F("a/b/x"), S("a", "/tmp"), F("a/b/y")], UnsafeLayerError, "symlink"),
    ([D("a"), F("a/x"), F("a"), F("a/y")], CorruptLayerError, "not a directory"),
    ([E("dev/zero", tarfile.CHRTYPE, dev=(0, 0))], CorruptLayerError, "whiteout"),
    ([F("x/.wh.")], CorruptLayerError, "invalid whiteout"),
    ([F("x/.wh...")], CorruptLayerError, "invalid whiteout"),
    ([F(".wh.x/y")], CorruptLayerError, "whiteout marker"),
    ([D(".wh.x")], CorruptLayerError, "must not be a directory"),
    ([E("v", tarfile.GNUTYPE_LONGNAME[:0] + b"V")], CorruptLayerError, "unsupported"),
    ([S("./", "x")], CorruptLayerError, "root"),
]


@pytest.mark.parametrize(("entries", "err", "why"), HOSTILE)
def test_hostile_or_broken_entries(tmp_path: Path, entries: list[E], err: type[Exception],
                                   why: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(err, match=why):
        unpack(tmp_path, make_tar(entries))
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_devices_skipped_when_not_allowed(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    t = read_tree(unpack(tmp_path, make_tar([E("dev/null", tarfile.CHRTYPE, dev=(1, 3)),
                                             F("dev/keep")]),
                         opts=UnpackOptions(allow_devices=False)), times=False)
    assert "dev/null" not in t and "dev/keep" in t
    assert "skipping device node dev/null" in caplog.text


def test_overlay_private_xattrs_are_dropped(tmp_path: Path) -> None:
    data = make_tar([D("d", xattrs={"trusted.overlay.redirect": b"/etc",
                                   "trusted.overlay.opaque": b"y", "user.overlay.x": b"1",
                                   "user.ok": b"1"})])
    assert read_tree(unpack(tmp_path, data))["d"][5] == {"user.ok": b"1"}


def test_lenient_form(tmp_path: Path) -> None:
    data = make_tar([F("/abs/file", b"1"), F("./dot/./file", b"2"), F("a/../b", b"3"),
                     F("dup", b"old"), F("dup", b"new"),
                     F("f2d", b"x"), D("f2d"), F("f2d/in", b"y"),
                     D("d2f"), F("d2f/in"), F("d2f", b"file now"),
                     S("s", "t1"), S("s", "t2")], end_blocks=False)
    t = read_tree(unpack(tmp_path, data), times=False)
    assert t["abs/file"][4] == b"1" and t["dot/file"][4] == b"2" and t["b"][4] == b"3"
    assert t["dup"][4] == b"new"
    assert t["f2d"][0] == stat.S_IFDIR and t["f2d/in"][4] == b"y"
    assert t["d2f"][:1] == (stat.S_IFREG,) and t["d2f"][4] == b"file now"
    assert t["s"][4] == b"t2"


def test_non_utf8_names(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9/\xff\xfe")
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        dest = tmp_path / str(fmt)
        dest.mkdir()
        unpack_into(io.BytesIO(make_tar([F(name, b"z"), W(os.fsdecode(b"caf\xe9/\xfa"))],
                                        fmt=fmt)), dest)
        assert (dest / os.fsdecode(b"caf\xe9/\xff\xfe")).read_bytes() == b"z"
        assert describe(os.fsencode(dest) + b"/caf\xe9/\xfa")[4] == (0, 0)


def test_empty_stream_is_an_empty_layer(tmp_path: Path) -> None:
    assert read_tree(unpack(tmp_path, b""))["."][0] == stat.S_IFDIR
    assert len(read_tree(unpack(tmp_path, make_tar([])))) == 1


def _cut(data: bytes, n: int) -> bytes:
    return data[:n]


@pytest.mark.parametrize(("blob", "why"), [
    (_cut(make_tar([F("a", b"x" * 3000)]), 1500), "truncated tar"),
    (_cut(make_tar([F("a", b"1"), F("b", b"x" * 3000)]), 2048 + 1024), "truncated"),
    (_cut(make_tar([F("a", b"1"), F("b", b"2")]), 1024 + 100), "truncated tar .ends inside a hea"),
    (make_tar([F("a", b"1")], end_blocks=False) + b"garbage!" * 64, "invalid header"),
    (b"not a tar at all" * 40, "not a tar"),
    (_cut(compress(make_tar([F("a", os.urandom(4000))]), "gzip"), 600), "gzip data"),
    (_cut(compress(make_tar([F("a", os.urandom(4000))]), "zstd"), 600), "zstd data"),
    (b"\x1f\x8b" + b"\x00" * 100, "gzip data"),
    (b"\x28\xb5\x2f\xfd" + b"\xff" * 100, "zstd data"),
])
def test_corrupt_streams(tmp_path: Path, blob: bytes, why: str) -> None:
    with pytest.raises(CorruptLayerError, match=why):
        unpack(tmp_path, blob)


def test_diff_id_mismatch(tmp_path: Path) -> None:
    with pytest.raises(DigestMismatchError, match="uncompressed"):
        unpack(tmp_path, make_tar([F("a")]), Digest.of_bytes(b"other"))


def test_unpack_layer_is_all_or_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "final"
    with pytest.raises(UnsafeLayerError):
        unpack_layer(io.BytesIO(make_tar([F("ok", b"1"), F("../evil")])), dest)
    with pytest.raises(DigestMismatchError):
        unpack_layer(io.BytesIO(make_tar([F("ok", b"1")])), dest, Digest.of_bytes(b"x"))
    assert list(tmp_path.iterdir()) == []
    data = make_tar([F("ok", b"1")])
    res = unpack_layer(io.BytesIO(data), dest, Digest.of_bytes(data))
    assert res.diff_id == Digest.of_bytes(data) and (dest / "ok").read_bytes() == b"1"
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


def test_limits(tmp_path: Path) -> None:
    with pytest.raises(CorruptLayerError, match="more than 2 entries"):
        unpack(tmp_path, make_tar([F("a"), F("b"), F("c")]), opts=UnpackOptions(max_entries=2))
    bomb = compress(make_tar([F("zeros", bytes(8 << 20))]), "zstd")
    assert len(bomb) < 4096
    with pytest.raises(CorruptLayerError, match="limit"):
        unpack(tmp_path / "b" if (tmp_path / "b").mkdir() is None else tmp_path, bomb,
               opts=UnpackOptions(max_bytes=1 << 20))


def test_huge_size_claim_is_truncation(tmp_path: Path) -> None:
    ti = tarfile.TarInfo("huge")
    ti.size = 1 << 40
    header = ti.tobuf(tarfile.PAX_FORMAT)
    with pytest.raises(CorruptLayerError, match="truncated"):
        unpack(tmp_path, header + b"x" * 4096)


def test_many_entries_stream(tmp_path: Path) -> None:
    entries = [F(f"d{i % 50}/f{i}", b"%d" % i) for i in range(3000)]
    t = read_tree(unpack(tmp_path, make_tar(entries, "gzip")), times=False)
    assert len(t) == 3000 + 50 + 1 and t["d7/f2057"][4] == b"2057"


def test_implicit_parents_inherit_from_lowers(tmp_path: Path) -> None:
    lower = unpack(tmp_path / "l" if (tmp_path / "l").mkdir() is None else tmp_path,
                   make_tar([D("tmp", mode=0o1777, mtime=MTIME + 3), D("opt", uid=9),
                             S("lnk", "/etc"), D("etc", mode=0o700)]))
    dest = tmp_path / "upper"
    dest.mkdir()
    unpack_into(io.BytesIO(make_tar([F("tmp/x"), F("opt/y"), F("lnk/z"), F("new/w")])), dest,
                opts=UnpackOptions(lowers=(lower,)))
    t = read_tree(dest)
    assert t["tmp"][1] == 0o1777 and t["tmp"][6] == NS + 3 * 10**9
    assert t["opt"][2] == 9
    assert t["lnk"][1] == 0o755 and t["new"][1] == 0o755  # a symlink below is not followed


def test_aufs_metadata_is_skipped(tmp_path: Path) -> None:
    data = make_tar([D(".wh..wh.plnk"), F(".wh..wh.plnk/123.456", b"x"), F(".wh..wh.aufs"),
                     F("a/.wh..wh.orph"), F("keep", b"k")])
    t = read_tree(unpack(tmp_path, data), times=False)
    assert sorted(t) == [".", "keep"]


@pytest.mark.skipif(not shutil.which("tar"), reason="GNU tar not installed")
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_gnu_tar_sparse_files(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big", "wb") as f:
        f.truncate(4 << 20)
        f.seek(3 << 20)
        f.write(b"data in the middle")
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "-cf", str(tmp_path / "s.tar"),
                    "-C", str(src), "big"], check=True)
    with open(tmp_path / "s.tar", "rb") as f:
        data = f.read()
    dest = unpack(tmp_path, data, Digest.of_bytes(data))
    assert (dest / "big").read_bytes() == (src / "big").read_bytes()


def test_rmtree_at_any_shape(tmp_path: Path) -> None:
    from mounttool.fsutil import remove_tree
    top = tmp_path / "t"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for _ in range(1200):  # deeper than Python's recursion limit
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    os.close(fd)
    for name in (".rm-1", ".rm-2"):  # names the flattening itself uses
        (top / name).mkdir()
    (top / ".rm-3").write_text("f")
    os.symlink("/etc", top / "link")
    ro = top / "ro" / "sub"
    ro.mkdir(parents=True)
    (ro / "g").write_text("g")
    ro.chmod(0o500)
    (top / "ro").chmod(0o500)
    remove_tree(top)
    assert not top.exists() and Path("/etc/passwd").exists()
    remove_tree(top)  # missing: fine


def test_fuzzed_entries_give_only_clear_errors(tmp_path: Path) -> None:
    """Random names, types, links, ids, times, devices and PAX records: never a traceback."""
    import random
    rng = random.Random(7)
    names = ["a", "a/b", "../x", "/abs", "a/../../y", ".wh.a", "a/.wh..wh..opq", "l", "l/in",
             ".", "./", "dev/n", "x" * 300, "a//b", "\udcff\udcfe", "a/.wh.", "h", ""]
    kinds = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
             tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, b"V"]
    pax = ["mtime", "atime", "uid", "SCHILY.xattr.user.q", "SCHILY.xattr.",
           "SCHILY.xattr.trusted.overlay.opaque"]
    values = ["abc", "-1", "1e400", "99999999999999999999", "", "0.5", "\udcff"]
    outcomes: set[str] = set()
    for i in range(250):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                          encoding="utf-8", errors="surrogateescape") as tar:
            for _ in range(rng.randint(1, 5)):
                ti = tarfile.TarInfo(rng.choice(names))
                ti.type, ti.linkname = rng.choice(kinds), rng.choice(names)
                ti.mode = rng.choice([0o644, 0o7777, 0])
                ti.uid, ti.mtime = rng.choice([0, 2**21 - 1]), rng.choice([0, 2**40, 1.5])
                ti.devmajor, ti.devminor = rng.choice([(1, 3), (2**20, 5)])
                if rng.random() < 0.4:
                    ti.pax_headers = {rng.choice(pax): rng.choice(values)}
                tar.addfile(ti, io.BytesIO(b"") if ti.isreg() else None)
        dest = tmp_path / str(i)
        dest.mkdir()
        try:
            unpack_into(io.BytesIO(buf.getvalue()), dest)
            outcomes.add("ok")
        except (CorruptLayerError, UnsafeLayerError) as exc:
            outcomes.add(type(exc).__name__)
    assert outcomes == {"ok", "CorruptLayerError", "UnsafeLayerError"}


def test_writer_quirks_that_go_and_umoci_accept(tmp_path: Path) -> None:
    """As Go's archive/tar reads them: no end-of-archive blocks, one zero block, a last
    member's data not padded to a whole block (``umoci insert`` writes all of these)."""
    full = make_tar([F("a", b"1"), F("b", b"hi\n")], end_blocks=False)
    for i, blob in enumerate((full, full + bytes(512), full[:-509],
                              make_tar([W("x")], end_blocks=False))):
        (tmp_path / str(i)).mkdir()
        assert len(read_tree(unpack(tmp_path / str(i), blob))) > 1
    (tmp_path / "unpadded").mkdir()
    assert (unpack(tmp_path / "unpadded", full[:-509]) / "b").read_bytes() == b"hi\n"
    (tmp_path / "short").mkdir()
    with pytest.raises(CorruptLayerError, match="ends inside the data of"):  # cut short
        unpack(tmp_path / "short", full[:-510])
