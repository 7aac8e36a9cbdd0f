"""The command line: option parsing, and a one-line error with a non-zero status for every
bad command line or layer set (never a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from unionfs.cli import main
from unionfs.spec import SpecError, parse, split_escaped


@pytest.fixture
def dirs(tmp_path: Path) -> Path:
    for sub in ("l1", "l2", "u", "w", "m", "a:b"):
        (tmp_path / sub).mkdir()
    (tmp_path / "file").write_bytes(b"")
    return tmp_path


def test_parse_layers_top_first_with_escaped_colon(dirs: Path) -> None:
    spec = parse([f"lowerdir={dirs}/a\\:b:{dirs}/l1,upperdir={dirs}/u,workdir={dirs}/w"],
                 str(dirs / "m"), is_root=True)
    assert spec.lowers == (os.fsencode(f"{dirs}/a:b"), os.fsencode(f"{dirs}/l1"))
    assert spec.writable and spec.allow_other and spec.fsync


def test_parse_flags(dirs: Path) -> None:
    spec = parse([f"lowerdir={dirs}/l1", "ro,nosuid,noatime,index=on,timeout=5,fsync=0"],
                 str(dirs / "m"), is_root=True)
    assert spec.read_only and not spec.writable
    assert set(spec.fuse_flags) == {"nosuid", "noatime"}
    assert spec.timeout == 5 and not spec.fsync


def test_split_escaped() -> None:
    assert split_escaped("a\\:b:c", ":") == ["a:b", "c"]


@pytest.mark.parametrize("options, message", [
    ("upperdir={d}/u,workdir={d}/w", "missing lowerdir="),
    ("lowerdir={d}/nope", "lowerdir '{d}/nope' does not exist"),
    ("lowerdir={d}/file", "lowerdir '{d}/file' is not a directory"),
    ("lowerdir={d}/l1,upperdir={d}/u", "upperdir= and workdir= go together"),
    ("lowerdir={d}/l1,upperdir={d}/u,workdir={d}/u", "must not contain each other"),
    ("lowerdir={d}/l1,upperdir={d}/l1,workdir={d}/w", "overlap"),
    ("lowerdir={d}/l1,frobnicate", "unknown option 'frobnicate'"),
    ("lowerdir={d}/l1,redirect_dir=on", "is not supported"),
    ("lowerdir={d}/l1::{d}/l2", "empty path in lowerdir="),
    ("lowerdir={d}/l1,timeout=soon", "is not a number"),
])
def test_bad_specs_say_what_is_wrong(dirs: Path, options: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.format(d=dirs).replace("(", r"\(")):
        parse([options.format(d=dirs)], str(dirs / "m"), is_root=True)


def test_mountpoint_inside_a_layer_is_refused(dirs: Path) -> None:
    (dirs / "l1" / "mnt").mkdir()
    with pytest.raises(SpecError, match="would serve itself"):
        parse([f"lowerdir={dirs}/l1"], str(dirs / "l1" / "mnt"), is_root=True)


def test_upper_and_work_on_different_filesystems(dirs: Path) -> None:
    if os.stat("/dev/shm").st_dev == os.stat(dirs).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the temp dir here")
    with pytest.raises(SpecError, match="different filesystems"):
        parse([f"lowerdir={dirs}/l1,upperdir={dirs}/u,workdir=/dev/shm"], str(dirs / "m"),
              is_root=True)


def test_main_prints_one_line_and_exits_2(dirs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-o", f"lowerdir={dirs}/missing", str(dirs / "m")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("unionfs: lowerdir")


def test_command_line_errors_have_no_traceback(dirs: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "unionfs", "-o", "lowerdir=/nonexistent",
                          str(dirs / "m")], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr == "unionfs: lowerdir '/nonexistent' does not exist\n"


def test_missing_dev_fuse_is_one_clear_line(dirs: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import unionfs.mount

    real_exists = os.path.exists
    monkeypatch.setattr(unionfs.mount.os.path, "exists",
                        lambda p: False if p == "/dev/fuse" else real_exists(p))
    assert main(["-f", "-o", f"lowerdir={dirs}/l1", str(dirs / "m")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("unionfs: /dev/fuse does not exist") and err.count("\n") == 1
