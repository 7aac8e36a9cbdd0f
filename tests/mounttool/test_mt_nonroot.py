"""mounttool without root: owners not kept, devices skipped, opaque dirs in user.overlay.*."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mt_helpers import OPQ, D, E, F, W, make_tar
from mt_images import build, write_layout

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody")


@pytest.fixture
def world() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="mt-nonroot-"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d)


_CHILD = """
import os, sys
import mounttool.cli, mounttool.cli_containers, mounttool.formats.docker_archive
import mounttool.formats.oci_layout, mounttool.formats.archive, mounttool.ingest
import mounttool.tarwriter, tempfile, shutil, gzip, zstandard, json, tarfile
os.setgroups([]); os.setgid(UID); os.setuid(UID)
sys.exit(mounttool.cli.main(sys.argv[1:]))
""".replace("UID", str(NOBODY))


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as nobody (modules imported first: /root's interpreter is not readable)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    return subprocess.run([sys.executable, "-c", _CHILD, *argv], env=env,
                          cwd=Path(__file__).parents[2], capture_output=True, text=True,
                          check=False, timeout=120)


def test_load_diff_commit_without_root(world: Path) -> None:
    base = make_tar([D("etc"), F("etc/a", b"a", uid=1000), D("var/cache"), F("var/cache/x"),
                     E("dev/null", tarfile_chr(), dev=(1, 3))])
    top = make_tar([W("etc/a"), OPQ("var/cache"), F("var/cache/y", b"y")])
    lay = write_layout(world / "lay", [("app:1", build([base, top]))])
    for p in [lay, *lay.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    store = world / "store"
    res = as_nobody("--root", str(store), "load", "--input", str(lay))
    assert res.returncode == 0, res.stderr
    assert "skipping device node dev/null" in res.stderr
    assert "app" in as_nobody("--root", str(store), "images").stdout
    layers = sorted((store / "layers/sha256").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    bottom, upper_layer = layers[0] / "diff", layers[1] / "diff"
    assert (bottom / "etc/a").stat().st_uid == NOBODY and not (bottom / "dev/null").exists()
    wh = os.lstat(upper_layer / "etc/a")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(upper_layer / "var/cache", "user.overlay.opaque") == b"y"
    res = as_nobody("--root", str(store), "create", "--name", "c", "app:1")
    assert res.returncode == 0, res.stderr
    upper = next((store / "containers").iterdir()) / "upper"
    os.makedirs(upper / "etc")
    (upper / "etc/new").write_text("n")
    shutil.chown(upper / "etc", NOBODY, NOBODY)
    shutil.chown(upper / "etc/new", NOBODY, NOBODY)
    res = as_nobody("--root", str(store), "diff", "c")
    assert res.stdout.splitlines() == ["C /etc", "A /etc/new"], res.stderr
    res = as_nobody("--root", str(store), "commit", "c", "app:2")
    assert res.returncode == 0 and res.stdout.startswith("sha256:"), res.stderr


def tarfile_chr() -> bytes:
    import tarfile
    return tarfile.CHRTYPE
