"""Tests for the mounttool CLI: every command, and one-line errors that change nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mt_helpers import compress, snapshot
from mt_images import build, write_docker_archive, write_layout
from test_mt_images import BASE, OTHER, TOP

from mounttool.cli import build_parser, main


class Run:
    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root, self.capsys = root, capsys

    def __call__(self, *argv: str, code: int = 0) -> str:
        self.capsys.readouterr()
        got = main(["--root", str(self.root), *argv])
        out, err = self.capsys.readouterr()
        assert got == code, (argv, out, err)
        if code:
            assert err.count("\n") == 1 and err.startswith("mounttool: "), err
            assert "Traceback" not in err
            return err
        return out


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(tmp_path / "store", capsys)


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    a = build([BASE, TOP])
    b = build([BASE, OTHER], "zstd", labels={"tier": "db"}, created="2023-05-01T00:00:00Z")
    return write_layout(tmp_path / "lay", [("docker.io/library/app:1", a), ("quay.io/x/b:2", b)])


def test_parser_has_every_command() -> None:
    text = build_parser().format_help()
    for cmd in ("load", "import", "save", "images", "history", "inspect", "tag", "rmi", "df",
                "prune"):
        assert cmd in text


def test_workflow(run: Run, layout: Path, tmp_path: Path) -> None:
    out = run("load", "--input", str(layout))
    assert out == "Loaded image: app:1\nLoaded image: quay.io/x/b:2\n"
    out = run("images")
    lines = out.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert lines[1].split()[:2] == ["app", "1"] and lines[2].split()[:2] == ["quay.io/x/b", "2"]
    assert len(run("images", "-q").split()) == 2
    assert "quay.io/x/b" in run("images", "-f", "label=tier=db")
    assert "app" not in run("images", "-f", "label=tier")
    assert "quay.io" not in run("images", "-f", "since=quay.io/x/b:2")
    assert "app" not in run("images", "-f", "before=app:1")
    assert "quay.io" not in run("images", "--filter", "reference=app*")
    assert "sha256:" in run("images", "--digests", "--no-trunc")
    assert run("images", "--format", "{{.Repository}}:{{.Tag}}").split() == [
        "app:1", "quay.io/x/b:2"]
    assert "unknown field .Nope" in run("images", "--format", "{{.Nope}}", code=2)
    assert "only {{.Field}}" in run("images", "--format", "{{json .}}", code=2)
    hist = run("history", "app:1").splitlines()
    assert hist[0].split()[0] == "IMAGE" and "<missing>" in hist[2]
    assert "/bin/sh -c step 1" in hist[1]
    info = json.loads(run("inspect", "app:1"))
    assert info[0]["RepoTags"] == ["app:1"] and len(info[0]["RootFS"]["Layers"]) == 2
    run("tag", "app:1", "localhost:5000/app:v2")
    assert "localhost:5000/app" in run("images")
    assert run("rmi", "localhost:5000/app:v2") == "Untagged: localhost:5000/app:v2\n"
    df = run("df")
    assert df.splitlines()[2].split()[:3] == ["Layers", "3", "3"]  # the base is shared
    per_image = run("df", "-v").splitlines()
    assert per_image[0].split()[5:8] == ["SIZE", "SHARED", "SIZE"]
    app, b = per_image[1].split(), per_image[2].split()
    assert app[0] == "app" and b[0] == "quay.io/x/b" and app[-3] == b[-3] != "0B"  # shared
    run("save", "app:1", "-o", str(tmp_path / "a.tar"))
    run("save", "app:1", "quay.io/x/b:2", "--format", "oci-archive", "-o", str(tmp_path / "o.tar"))
    run("save", "app:1", "--format", "oci-dir", "-o", str(tmp_path / "odir"))
    out = run("rmi", "quay.io/x/b:2")
    assert out.startswith("Untagged: quay.io/x/b:2\nDeleted: sha256:")
    run("rmi", "app:1")
    assert run("images", "-q") == ""
    assert run("load", "-i", str(tmp_path / "o.tar")).count("Loaded image") == 2
    run("rmi", "app:1", "quay.io/x/b:2")
    assert run("prune").startswith("Total reclaimed space:")
    assert run("df").splitlines()[2].split()[:2] == ["Layers", "0"]


def test_load_stdin_and_dangling(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                 ) -> None:
    arch = write_docker_archive(tmp_path / "d.tar", [(["old:1"], build([OTHER], ""))])
    gz = tmp_path / "d.tar.gz"
    gz.write_bytes(compress(arch.read_bytes(), "gzip"))
    with open(gz, "rb") as f:
        monkeypatch.setattr("sys.stdin", type("S", (), {"buffer": f, "isatty": lambda s: False})())
        assert run("load") == "Loaded image: old:1\n"
    newer = write_docker_archive(tmp_path / "e.tar", [(["old:1"], build([BASE], ""))])
    run("load", "-i", str(newer))
    assert "<none>" in run("images", "-f", "dangling=true")
    out = run("prune")
    assert out.startswith("Deleted Images:\ndeleted: sha256:")
    assert "<none>" not in run("images")


def test_import(run: Run, tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs" / "hello").write_text("hi")
    out = run("import", str(tmp_path / "rootfs"), "myroot:v1", "-m", "from a dir")
    assert out.startswith("sha256:")
    assert "myroot" in run("images")
    assert "from a dir" in run("history", "myroot:v1")


def test_errors_are_one_line_and_change_nothing(run: Run, layout: Path, tmp_path: Path) -> None:
    run("load", "--input", str(layout))
    run("tag", "app:1", "two:1")
    (tmp_path / "store" / "containers" / "c1").mkdir(parents=True)
    app_id = json.loads(run("inspect", "quay.io/x/b:2"))[0]["Id"]
    (tmp_path / "store" / "containers" / "c1" / "container.json").write_text(
        json.dumps({"image": app_id}))
    app1_id = json.loads(run("inspect", "app:1"))[0]["Id"]
    before = snapshot(tmp_path / "store")
    cases = [
        (("load", "-i", str(tmp_path / "nope.tar")), 1, "no such file"),
        (("load", "--input", str(tmp_path)), 1, "not an image archive"),
        (("images", "-f", "dangling=maybe"), 2, "dangling"),
        (("images", "-f", "colour=red"), 2, "invalid filter"),
        (("images", "-f", "nokey"), 2, "KEY=VALUE"),
        (("history", "nope"), 1, "no such image: nope"),
        (("inspect", "app:1", "nope:2"), 1, "no such image"),
        (("tag", "nope", "x"), 1, "no such image"),
        (("tag", "app:1", "Bad:Name"), 2, "lowercase"),
        (("tag", "app:1", "x@sha256:" + "0" * 64), 2, "digest"),
        (("rmi", "app"), 1, "no such image: app"),
        (("rmi", app_id), 1, "in use by container"),
        (("rmi", "quay.io/x/b:2"), 1, "in use by container"),
        (("rmi", app1_id[7:19]), 1, "multiple repositories"),
        (("rmi", "two:1", "nope"), 1, "no such image: nope"),
        (("save", "app:1", "-o", str(tmp_path / "no" / "dir" / "x.tar")), 1, "No such file"),
        (("save", "app:1", "--format", "oci-dir", "-o", str(layout)), 1, "not an empty"),
        (("import", str(tmp_path / "missing")), 1, "no such file"),
        (("images", "--bogus"), 2, "unrecognized arguments: --bogus"),
        (("tag", "app:1"), 2, "required: TARGET"),
        (("save", "app:1", "--format", "zip"), 2, "invalid choice"),
    ]
    for argv, code, why in cases:
        err = run(*argv, code=code)
        assert why in err, (argv, err)
        assert snapshot(tmp_path / "store") == before, argv
    assert "two" in run("images")  # the failed multi-rmi removed nothing


def test_images_survives_a_damaged_image(run: Run, layout: Path, tmp_path: Path) -> None:
    run("load", "--input", str(layout))
    info = json.loads(run("inspect", "quay.io/x/b:2"))[0]
    blob = tmp_path / "store/blobs/sha256" / info["Manifest"]["Digest"].split(":")[1]
    blob.unlink()
    out = run("images")
    assert "app" in out and "quay.io" not in out
    assert "not in the store" in run("inspect", "quay.io/x/b:2", code=1)


def test_pipes(run: Run, layout: Path, tmp_path: Path) -> None:
    """save to stdout, load from stdin, import from stdin: as shell pipelines."""
    import subprocess
    import sys
    run("load", "--input", str(layout))
    mt = [sys.executable, "-m", "mounttool", "--root", str(run.root)]
    cwd = Path(__file__).parents[2]
    saved = subprocess.run([*mt, "save", "app:1"], capture_output=True, check=True, cwd=cwd)
    assert saved.stdout[:512].rstrip(b"\0")  # a tar stream
    other = [sys.executable, "-m", "mounttool", "--root", str(tmp_path / "other")]
    res = subprocess.run([*other, "load"], input=saved.stdout, capture_output=True, cwd=cwd,
                         check=False)
    assert res.returncode == 0 and res.stdout == b"Loaded image: app:1\n", res.stderr
    res = subprocess.run([*other, "import", "-", "piped:1"], input=BASE, capture_output=True,
                         cwd=cwd, check=False)
    assert res.returncode == 0 and res.stdout.startswith(b"sha256:"), res.stderr
    res = subprocess.run([*other, "load"], input=b"garbage" * 100, capture_output=True,
                         cwd=cwd, check=False)
    assert res.returncode == 1 and res.stderr.count(b"\n") == 1, res.stderr
