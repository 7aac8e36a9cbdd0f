"""The bundled demo image: deterministic build, loads, and shows its whiteouts and opaque dir."""

from __future__ import annotations

import json
from pathlib import Path

from mt_helpers import merge_layers
from test_mt_cli import Run

from mounttool.demo import NAME, write_archive


def test_demo_image(tmp_path: Path, capsys: object) -> None:
    write_archive(tmp_path / "a.tar")
    write_archive(tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    run = Run(tmp_path / "store", capsys)  # type: ignore[arg-type]
    assert run("load", "-i", str(tmp_path / "a.tar")) == f"Loaded image: {NAME}\n"
    info = json.loads(run("inspect", NAME))[0]
    layers = [Path(p) for p in info["GraphDriver"]["Data"]["LowerDir"].split(":")]
    tree = merge_layers(layers)
    assert "etc/motd" not in tree and "usr/share/doc/demo" not in tree
    assert tree["etc/app.conf"][4] == b"greeting=bonjour\n"
    assert [k for k in tree if k.startswith("var/lib/demo/")] == ["var/lib/demo/state"]
    assert tree["bin/hello"][1] == 0o755
    out = run("tree", NAME, "/etc").splitlines()
    assert out[1].split()[0] == "#3" and out[1].endswith("/etc/app.conf")
    assert len(run("history", NAME).splitlines()) == 4
