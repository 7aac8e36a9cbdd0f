"""scripts/bench.py without mounting anything: the seeded generator, and the report maths
(ratios with throughputs inverted, the geometric mean, failures, --compare)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses resolve their module
    spec.loader.exec_module(module)
    return module


def listing(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


def test_tree_is_reproducible(bench: ModuleType, tmp_path: Path) -> None:
    a = bench.gen_tree(bench.Gen(7), tmp_path / "a", 300)
    b = bench.gen_tree(bench.Gen(7), tmp_path / "b", 300)
    assert a == b and len(a) == len(set(a)) == 300
    assert listing(tmp_path / "a") == listing(tmp_path / "b")
    assert any("/" in f for f in a)  # nested
    assert (tmp_path / "a" / a[0]).read_bytes() == (tmp_path / "b" / a[0]).read_bytes()


def doc(bench: ModuleType, unionfs_write: float, failed: bool = False) -> dict[str, object]:
    names = {"stat-walk", "seq-write", "peak-rss"}
    workloads = [w for w in bench.WORKLOADS if w.name in names]
    res = bench.Results(bench.FILESYSTEMS, workloads)
    for fs, walk, write, rss in (("kernel", 1.0, 0.5, None),
                                 ("fuse-overlayfs", 2.0, 1.0, 1000.0),
                                 ("unionfs", 4.0, unionfs_write, 4000.0)):
        for mode in ("cold", "warm"):
            res.cell("stat-walk", mode, fs).samples += [walk, walk * 3, walk / 2]
            res.cell("seq-write", mode, fs).samples.append(write)
        if rss is not None:
            res.cell("peak-rss", "peak", fs).samples.append(rss)
    if failed:
        res.cell("stat-walk", "warm", "unionfs").errors.append("OSError: boom")
    params = bench.data_params(True)
    meta = {"timestamp": "T", "data": {"big_bytes": params.big_bytes},
            "run": {"reps": 3}, "cpus": 2, "loadavg_start": [0.0], "loadavg_end": [0.0]}
    result: dict[str, object] = bench.to_json(res, meta)
    return result


def test_ratios_and_geomean(bench: ModuleType) -> None:
    d = doc(bench, unionfs_write=0.5)
    cells = {(c["workload"], c["mode"]): c for c in d["cells"]}  # type: ignore[attr-defined]
    assert cells["stat-walk", "cold"]["ratio_fuse"] == pytest.approx(2.0)
    assert cells["stat-walk", "cold"]["ratio_kernel"] == pytest.approx(4.0)
    # seq-write: unionfs takes half the time of fuse-overlayfs, i.e. twice its throughput
    assert cells["seq-write", "cold"]["ratio_fuse"] == pytest.approx(0.5)
    assert cells["peak-rss", "peak"]["ratio_fuse"] == pytest.approx(4.0)
    # memory is not averaged: (2 * 2 * 0.5 * 0.5) ** (1/4) == 1
    assert d["geomean_unionfs_fuse"] == pytest.approx(1.0)
    table = bench.markdown(d)
    assert "| seq-write | cold | " in table and "MiB/s" in table
    assert "| peak-rss | peak | n/a | 1.0 MiB | 3.9 MiB | 4.00x |" in table


def test_failures_and_compare(bench: ModuleType) -> None:
    old = doc(bench, unionfs_write=2.0)
    new = doc(bench, unionfs_write=1.0, failed=True)
    table = bench.markdown(new)
    assert "stat-walk warm on unionfs: OSError: boom" in table
    assert "†" in table  # the median stands, some repetitions failed
    report = bench.compare(old, new)
    assert "(0.50x)" in report  # unionfs seq-write took half as long
    assert "Geometric mean unionfs/fuse-overlayfs: 2.00x → 1.41x" in report


def test_parse_list(bench: ModuleType) -> None:
    assert bench.parse_list("unionfs,kernel", bench.FILESYSTEMS, "fs") == ["kernel", "unionfs"]
    assert bench.parse_list(None, bench.FILESYSTEMS, "fs") == list(bench.FILESYSTEMS)
    with pytest.raises(SystemExit):
        bench.parse_list("ext4", bench.FILESYSTEMS, "fs")
