#!/usr/bin/env python3
"""Benchmark unionfs against kernel overlayfs and fuse-overlayfs on the same layers, in one run.

As root, from the repository root:

    .venv/bin/python scripts/bench.py --quick           # < 2 minutes: small dataset, 3 reps
    .venv/bin/python scripts/bench.py                   # full: 20-30 min, 5 reps, ~4 GiB data
    .venv/bin/python scripts/bench.py --only unionfs,fuse-overlayfs --workloads git-status,chmod
    .venv/bin/python scripts/bench.py --quick --compare bench-results/OLD.json
    .venv/bin/python scripts/bench.py --load NEW.json --compare OLD.json   # no run, compare
    .venv/bin/python scripts/bench.py --unionfs-opts timeout=0 --reps 7

Needs root (kernel overlay mounts, char 0/0 whiteouts, trusted.* xattrs, drop_caches), /dev/fuse,
fusermount3 and fuse-overlayfs (Debian package), and git (installed from apt when missing).
Stdlib only; the unionfs under test is this checkout's (``sys.executable -m unionfs`` run from the
repository root), with ``--unionfs-opts`` appended to its ``-o``.

Dataset (``--data``, default /var/tmp/unionfs-bench; ``quick/`` and ``full/`` are kept side by
side and reused while their recorded parameters match, rebuilt otherwise or with ``--rebuild``):
three lower layers ``l2:l1:l0``.  ``l0/tree`` is a seeded, realistic source-like tree (nested
directories, mostly small files); ``l1`` and ``l2`` override some of its files, delete some with
char 0/0 whiteouts (one whole directory too), add files, and ``l1`` has one opaque directory.
``l0`` also holds a committed git repository (``repo/``), copies of pure-Python stdlib packages
(``py/``), PATH-like command directories (``bin/`` across l0 and l1), a flat directory per
``rm -rf`` run (``rm/``), file sets for copy-up, chmod and rename, and large files (``big/``).
The 100k-file tree for the RSS measurement is a separate lower built on first use.

                       full                  --quick
    tree/ files        20000 (~300 MB)       2000
    repo/ files        3000                  400
    copy-up, chmod,    2 x 2000 each         2 x 150 each
      rename sets
    rm -rf dirs        2 x 5000 entries      2 x 400
    big/ files         3 x 1 GiB             3 x 64 MiB
    files created      10000                 600
    lookup rounds      20 x 200 names        4 x 200 names
    RSS tree           100000 files          10000
    repetitions        5                     3 (fewer if the 105 s budget runs out)

Method. For every repetition, workload and filesystem, the layers are mounted afresh on a fresh,
empty upper/work; the page cache is dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``) and the
workload is timed ("cold"); then it is timed again on the same mount ("warm"). Workloads that
consume lower state (copy-up, chmod, rename, rm -rf, compileall, one-byte change of a large file)
have two disjoint, identical target sets: the cold run uses one, and the warm run uses the other
after an untimed read-only pass over it (stat and read every file) on the same mount, and a
``sync`` so that the cold run's dirty data is not being written back meanwhile. seq-write creates a
new file each run and is timed to ``close()`` (data handed to the filesystem, no fsync). Medians
over the repetitions are reported; repetitions interleave the filesystems so drift hits all of them
alike, and each repetition starts with the next one in turn, so no filesystem always runs right
after the same other one. Ratios are unionfs / peer on times (throughputs are inverted: time for
the fixed byte count), so lower is better everywhere; the geometric mean is over every time and
throughput cell where both have a result (memory is reported, not averaged). A workload that fails
or exceeds ``--timeout`` on one filesystem (the FUSE daemon is killed to unblock it) is reported as
failed with its error; the run goes on. Every mount is unmounted on exit, on error and on Ctrl-C;
stale mounts of an earlier killed run are removed at start.

Caveat: on a VM whose host reclaims free guest memory (balloon / free page reporting), fresh
page-cache pages fault in from the host, so seq-write, modify-big and other data-heavy cells
vary with what ran just before; look at the samples in the JSON before trusting one cell.

Output: a Markdown table on stdout and JSON (``--json``, default
bench-results/<UTC timestamp>.json) that ``--compare`` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import random
import select
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
FILESYSTEMS = ("kernel", "fuse-overlayfs", "unionfs")
NOSYNC = "unionfs-nosync"
"""unionfs with -o fsync=0: copy-ups not synced, fuse-overlayfs's durability (opt in with
--only ...,unionfs-nosync); its own ratio column shows the cost of the kernel's durable
copy-up in the same run."""
INLINE = "unionfs-inline"
"""unionfs with -o copyup_sync=inline: each copy-up synced before its rename inside its request,
as the kernel does (opt in); its column shows what syncing in the background buys."""
VARIANTS = {NOSYNC: ("fsync=0", "nosync"), INLINE: ("copyup_sync=inline", "inline")}
"""Opt-in unionfs variants: their mount option and the short name of their ratio keys."""
ALL_FILESYSTEMS = (*FILESYSTEMS, *VARIANTS)
GENERATOR_VERSION = 3
SEED = 20261122
MiB = 1 << 20
GiB = 1 << 30
FIXED_MTIME = 1_600_000_000  # every generated file: deterministic, and never "racily clean"
READY_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0
JSON_VERSION = 1

# --------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class DataParams:
    """Everything the dataset depends on; recorded next to it and compared before reuse."""
    mode: str
    seed: int
    tree_files: int
    repo_files: int
    set_files: int          # files per copy-up / chmod / rename set (two sets each)
    rm_entries: int         # entries per rm -rf directory (two of them)
    big_bytes: int
    py_packages: tuple[str, ...]
    path_dirs: int
    path_commands: int      # commands that exist (as many again are searched and missing)
    python: str
    generator: int = GENERATOR_VERSION


@dataclass(frozen=True)
class RunParams:
    reps: int
    budget: float           # seconds for the whole run; no repetition starts past it (0: none)
    create_files: int
    lookup_rounds: int
    rss_files: int
    timeout: float


STDLIB_FULL = ("asyncio", "email", "json", "http", "logging", "xml", "urllib", "concurrent",
               "importlib", "unittest", "html", "xmlrpc", "wsgiref", "multiprocessing",
               "sqlite3", "dbm", "tomllib", "zoneinfo")
STDLIB_QUICK = ("json", "email", "logging")


def data_params(quick: bool) -> DataParams:
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    if quick:
        return DataParams("quick", SEED, tree_files=2000, repo_files=400, set_files=150,
                          rm_entries=400, big_bytes=64 * MiB, py_packages=STDLIB_QUICK,
                          path_dirs=10, path_commands=100, python=py)
    return DataParams("full", SEED, tree_files=20000, repo_files=3000, set_files=2000,
                      rm_entries=5000, big_bytes=GiB, py_packages=STDLIB_FULL,
                      path_dirs=10, path_commands=100, python=py)


def run_params(quick: bool, reps: int | None, timeout: float | None,
               budget: float | None) -> RunParams:
    if quick:
        return RunParams(reps=reps or 3, budget=105.0 if budget is None else budget,
                         create_files=600, lookup_rounds=4, rss_files=10000,
                         timeout=timeout or 60.0)
    return RunParams(reps=reps or 5, budget=budget or 0.0, create_files=10000, lookup_rounds=20,
                     rss_files=100000,
                     timeout=timeout or 900.0)


# --------------------------------------------------------------------------------------------
# Small helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_cmd(cmd: Sequence[str], timeout: float = 120.0,
            **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True,
                          timeout=timeout, **kw)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def rmtree(path: Path) -> None:
    """Remove ``path`` without ever descending into a mount (a failed unmount is detached
    first; ``rm --one-file-system`` refuses to cross into anything left)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if not path.exists():
        return
    for point, _ in reversed(mountpoints()):
        if point == str(path) or point.startswith(str(path) + "/"):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    # A kernel overlay workdir holds a mode-000 "work" directory; root may remove it.
    run_cmd(["rm", "-rf", "--one-file-system", str(path)], timeout=600)


def mountpoints() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount, from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = left.split()[4].encode().decode("unicode_escape")
            out.append((point, right.split()[0]))
    return out


def is_mounted(path: Path) -> bool:
    p = str(path)
    return any(m == p for m, _ in mountpoints())


def vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms" if s < 0.1 else f"{s * 1e3:.0f} ms"
    return f"{s:.2f} s"


def geomean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v > 0]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


# --------------------------------------------------------------------------------------------
# Dataset


WORDS = ("core", "util", "net", "fs", "mem", "io", "test", "doc", "lib", "src", "api", "cfg",
         "data", "sched", "drv", "arch", "include", "tools", "scripts", "parser", "render",
         "model", "view", "http", "auth", "cache", "store", "queue", "event", "log", "crypto",
         "proto", "codec", "image", "font", "input", "power", "timer", "sound", "video")
EXTS = (".c", ".h", ".py", ".txt", ".md", ".json", ".rs", ".go", ".js", ".html", ".yaml", "")
# (weight, low, high) bytes: mostly small, like a source tree (mean ~15 KiB)
SIZE_MIX = ((0.60, 0, 2048), (0.30, 2048, 16384), (0.09, 16384, 131072), (0.01, 131072, MiB))


class Gen:
    """Seeded generator of names, sizes and contents."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.pool = self.rng.randbytes(4 * MiB)

    def size(self, mix: Sequence[tuple[float, int, int]] = SIZE_MIX) -> int:
        r = self.rng.random()
        for weight, lo, hi in mix:
            if r < weight:
                if lo == 0:
                    return self.rng.randrange(hi)
                return int(lo * (hi / lo) ** self.rng.random())  # log-uniform in the bucket
            r -= weight
        return mix[-1][2]

    def content(self, size: int) -> bytes:
        if size <= len(self.pool):
            off = self.rng.randrange(len(self.pool) - size + 1)
            return self.pool[off:off + size]
        reps = size // len(self.pool) + 1
        return (self.pool * reps)[:size]

    def name(self, taken: set[str], ext: bool) -> str:
        while True:
            base = self.rng.choice(WORDS)
            if self.rng.random() < 0.7:
                base += "_" + self.rng.choice(WORDS)
            if self.rng.random() < 0.5:
                base += str(self.rng.randrange(100))
            n = base + (self.rng.choice(EXTS) if ext else "")
            if n not in taken:
                taken.add(n)
                return n


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.utime(path, (FIXED_MTIME, FIXED_MTIME))


def gen_tree(gen: Gen, root: Path, nfiles: int, max_depth: int = 6,
             mix: Sequence[tuple[float, int, int]] = SIZE_MIX) -> list[str]:
    """A nested tree of ``nfiles`` files under ``root``; returns their relative paths."""
    root.mkdir(parents=True, exist_ok=True)
    dirs: list[tuple[str, int]] = [("", 0)]
    names: dict[str, set[str]] = {"": set()}
    ndirs = max(1, nfiles // 12)
    while len(dirs) < ndirs:
        # prefer growing shallow directories, like real trees
        parent, depth = dirs[min(int(gen.rng.expovariate(1.0 / max(1, len(dirs) / 3))),
                                 len(dirs) - 1)]
        if depth >= max_depth:
            continue
        rel = (parent + "/" if parent else "") + gen.name(names[parent], ext=False)
        names[rel] = set()
        dirs.append((rel, depth + 1))
        (root / rel).mkdir()
    files = []
    weights = [gen.rng.paretovariate(1.5) for _ in dirs]
    for d, _ in gen.rng.choices(dirs, weights=weights, k=nfiles):
        rel = (d + "/" if d else "") + gen.name(names[d], ext=True)
        write_file(root / rel, gen.content(gen.size(mix)))
        files.append(rel)
    return files


def whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def build_layers(gen: Gen, data: Path, p: DataParams) -> dict[str, int]:
    """l0/tree plus l1 and l2 overriding, deleting and adding files; one opaque directory."""
    l0, l1, l2 = (data / "layers" / n for n in ("l0", "l1", "l2"))
    for layer in (l0, l1, l2):
        (layer / "tree").mkdir(parents=True)
    files = gen_tree(gen, l0 / "tree", p.tree_files)
    dirs = sorted({f.rsplit("/", 1)[0] for f in files if "/" in f})
    # one opaque directory in l1: a directory with subdirectories, replaced by new content
    candidates = [d for d in dirs if d.count("/") == 1 and any(x.startswith(d + "/") and
                                                                 x.count("/") > 2 for x in files)]
    opaque = gen.rng.choice(candidates or dirs)
    (l1 / "tree" / opaque).mkdir(parents=True)
    os.setxattr(l1 / "tree" / opaque, "trusted.overlay.opaque", b"y")
    taken: set[str] = set()
    for _ in range(10):
        write_file(l1 / "tree" / opaque / gen.name(taken, True), gen.content(gen.size()))
    # a whole directory whited out in l2 (a leaf directory outside the opaque one)
    leaves = [d for d in dirs if not d.startswith(opaque + "/") and d != opaque and
              not any(x.startswith(d + "/") for x in dirs)]
    gone_dir = gen.rng.choice(leaves)
    whiteout(l2 / "tree" / gone_dir)
    eligible = [f for f in files if not f.startswith(opaque + "/") and
                not f.startswith(gone_dir + "/")]
    counts = {"tree_files_l0": len(files)}
    for layer, over, dele, add in ((l1, 0.05, 0.02, 0.02), (l2, 0.03, 0.01, 0.01)):
        picked = gen.rng.sample(eligible, int(len(eligible) * (over + dele)))
        n_over = int(len(eligible) * over)
        for rel in picked[:n_over]:
            (layer / "tree" / rel).parent.mkdir(parents=True, exist_ok=True)
            write_file(layer / "tree" / rel, gen.content(gen.size()))
        for rel in picked[n_over:]:
            whiteout(layer / "tree" / rel)
        dele_set = set(picked[n_over:])
        eligible = [f for f in eligible if f not in dele_set]
        for d in gen.rng.choices(dirs, k=int(len(files) * add)):
            if d.startswith(opaque) or d.startswith(gone_dir):
                continue
            (layer / "tree" / d).mkdir(parents=True, exist_ok=True)
            write_file(layer / "tree" / d / ("new_" + gen.name(taken, True)),
                       gen.content(gen.size()))
        counts[f"overrides_{layer.name}"] = n_over
        counts[f"whiteouts_{layer.name}"] = len(dele_set)
    return counts


def build_repo(gen: Gen, root: Path, nfiles: int) -> None:
    mix = ((0.7, 200, 8192), (0.3, 8192, 40960))
    gen_tree(gen, root, nfiles, max_depth=5, mix=mix)
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(root.parent),
           "GIT_AUTHOR_DATE": "2020-09-13T12:26:40Z", "GIT_COMMITTER_DATE": "2020-09-13T12:26:40Z"}
    git = ["git", "-C", str(root), "-c", "user.name=bench", "-c", "user.email=bench@invalid",
           "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]
    run_cmd([*git, "init", "-q"], env=env)
    run_cmd([*git, "add", "-A"], env=env, timeout=600)
    run_cmd([*git, "commit", "-q", "-m", "bench dataset"], env=env, timeout=600)
    time.sleep(1.1)  # the index must be newer than every file (no racily-clean entries)
    run_cmd([*git, "status", "--porcelain"], env=env, timeout=600)


def build_sets(gen: Gen, l0: Path, p: DataParams) -> None:
    for kind in ("copyup", "chmod", "rename"):
        for tag in ("cold", "warm"):
            d = l0 / kind / tag
            d.mkdir(parents=True)
            for i in range(p.set_files):
                write_file(d / f"f{i:05d}.dat", gen.content(gen.rng.randrange(256, 16384)))
    for tag in ("cold", "warm"):
        d = l0 / "rm" / tag
        d.mkdir(parents=True)
        for i in range(p.rm_entries):
            write_file(d / f"entry{i:05d}", gen.content(gen.rng.randrange(0, 1024)))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    ignore = shutil.ignore_patterns("__pycache__", "test", "tests", "idle_test", "*.pyc")
    for tag in ("cold", "warm"):
        for pkg in p.py_packages:
            if (stdlib / pkg).is_dir():
                shutil.copytree(stdlib / pkg, l0 / "py" / tag / pkg, ignore=ignore)
    # PATH-like command directories: bin/b0..b9 in l0, a few of them also in l1
    for i in range(p.path_dirs):
        (l0 / "bin" / f"b{i}").mkdir(parents=True)
    for i in range(p.path_commands):
        bd = f"b{(i * 7) % p.path_dirs}"
        write_file(l0 / "bin" / bd / f"cmd-{i:03d}", b"#!/bin/sh\n", 0o755)
        if i % 10 == 0:
            (l0.parent / "l1" / "bin" / bd).mkdir(parents=True, exist_ok=True)
            write_file(l0.parent / "l1" / "bin" / bd / f"cmd-{i:03d}", b"#!/bin/sh\n:\n", 0o755)
    # large files: one to read, two to change one byte of
    big = l0 / "big"
    big.mkdir()
    block = gen.rng.randbytes(MiB)
    for name in ("read.bin", "mod-cold.bin", "mod-warm.bin"):
        with open(big / name, "wb") as f:
            for i in range(p.big_bytes // MiB):
                f.write(i.to_bytes(8, "little") + block[8:])
        os.utime(big / name, (FIXED_MTIME, FIXED_MTIME))


def ensure_git() -> None:
    if shutil.which("git"):
        return
    log("git missing: installing from apt")
    run_cmd(["apt-get", "install", "-y", "git"], timeout=600,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_dataset(base: Path, p: DataParams, rebuild: bool) -> Path:
    data = base / p.mode
    stamp = data / "params.json"
    want = asdict(p)
    want["py_packages"] = list(p.py_packages)
    if not rebuild and stamp.exists():
        try:
            if json.loads(stamp.read_text()).get("params") == want:
                return data
        except (OSError, ValueError):
            pass
        log(f"dataset parameters changed: rebuilding {data}")
    ensure_git()
    tmp = base / (p.mode + ".building")
    rmtree(tmp)
    rmtree(data)
    t0 = time.monotonic()
    log(f"building the {p.mode} dataset in {data} ...")
    gen = Gen(p.seed)
    counts = build_layers(gen, tmp, p)
    l0 = tmp / "layers" / "l0"
    build_repo(Gen(p.seed + 1), l0 / "repo", p.repo_files)
    build_sets(Gen(p.seed + 2), l0, p)
    (tmp / "params.json").write_text(json.dumps({"params": want, "counts": counts}, indent=1))
    os.sync()
    tmp.rename(data)
    log(f"dataset built in {time.monotonic() - t0:.1f} s: {counts}")
    return data


def ensure_rss_tree(base: Path, nfiles: int) -> Path:
    """A separate lower of ``nfiles`` empty files (100 per directory), built on first use."""
    root = base / f"rss-{nfiles}"
    if (root / "done").exists():
        return root / "l0"
    rmtree(root)
    t0 = time.monotonic()
    log(f"building the {nfiles}-file tree for the RSS measurement ...")
    l0 = root / "l0"
    for i in range(nfiles):
        d = l0 / f"d{i // 10000:02d}" / f"s{(i // 100) % 100:02d}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        os.close(os.open(d / f"file{i:06d}", os.O_WRONLY | os.O_CREAT, 0o644))
    (root / "done").touch()
    log(f"built in {time.monotonic() - t0:.1f} s")
    return l0


def fingerprint(roots: Sequence[Path]) -> str:
    """Path, mode, size, mtime and ctime of everything under ``roots``: the lower layers must
    come out of a run exactly as they went in."""
    h = hashlib.sha256()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                st = os.lstat(os.path.join(dirpath, name))
                h.update(f"{dirpath}/{name}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0"
                         f"{st.st_ctime_ns}\n".encode(errors="surrogateescape"))
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Mounts


class MountFailed(Exception):
    pass


class Mount:
    """A live mount of one filesystem under test; ``close()`` always unmounts."""

    name = ""

    def __init__(self, mnt: Path) -> None:
        self.mnt = mnt
        self.proc: subprocess.Popen[bytes] | None = None
        self.errlog: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def kill(self) -> None:
        """Unblock a hung workload: kill the daemon (its requests fail with ENOTCONN)."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True, check=False)

    def stderr_tail(self) -> str:
        if self.errlog and self.errlog.exists():
            return self.errlog.read_text(errors="replace")[-2000:].strip()
        return ""

    def close(self) -> str:
        """Unmount; returns daemon complaints (non-zero exit, tracebacks) or ''."""
        if self.proc is None:
            if is_mounted(self.mnt):
                r = subprocess.run(["umount", str(self.mnt)], capture_output=True, check=False)
                if r.returncode != 0:
                    subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True,
                                   check=False)
            return ""
        subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True, check=False)
        try:
            self.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True,
                           check=False)
            subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True, check=False)
        err = self.stderr_tail()
        problems = []
        if self.proc.returncode not in (0, -signal.SIGKILL):
            problems.append(f"{self.name} exited {self.proc.returncode}")
        if "Traceback" in err or "unexpected" in err:
            problems.append(err[-800:])
        return "; ".join(problems)


def overlay_opts(lowers: Sequence[Path], upper: Path, work: Path) -> str:
    return f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"


def mount_fs(fs: str, lowers: Sequence[Path], upper: Path, work: Path, mnt: Path,
             unionfs_opts: str, logdir: Path) -> Mount:
    opts = overlay_opts(lowers, upper, work)
    m = Mount(mnt)
    m.name = fs
    if fs == "kernel":
        r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)],
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise MountFailed(f"mount -t overlay: {r.stderr.strip()}")
        return m
    m.errlog = logdir / f"{fs}.stderr"
    errf = open(m.errlog, "wb")  # noqa: SIM115 -- handed to the child
    try:
        if fs == "fuse-overlayfs":
            m.proc = subprocess.Popen(["fuse-overlayfs", "-f", "-o", opts, str(mnt)],
                                      stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
                                      start_new_session=True)
            deadline = time.monotonic() + READY_TIMEOUT
            while not is_mounted(mnt):
                if m.proc.poll() is not None or time.monotonic() > deadline:
                    m.kill()
                    m.close()
                    raise MountFailed(f"fuse-overlayfs did not come up: {m.stderr_tail()}")
                time.sleep(0.005)
            return m
        if unionfs_opts:
            opts += "," + unionfs_opts
        if fs in VARIANTS:
            opts += "," + VARIANTS[fs][0]
        rfd, wfd = os.pipe()
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        m.proc = subprocess.Popen(
            [sys.executable, "-m", "unionfs", "-f", "--ready-fd", str(wfd), "-o", opts,
             str(mnt)], pass_fds=(wfd,), stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
            cwd=REPO_ROOT, env=env, start_new_session=True)
        os.close(wfd)
        try:
            ready, _, _ = select.select([rfd], [], [], READY_TIMEOUT)
            line = os.read(rfd, 64) if ready else b""
        finally:
            os.close(rfd)
        if not line:
            m.kill()
            m.close()
            raise MountFailed(f"unionfs did not come up within {READY_TIMEOUT:.0f} s: "
                              f"{m.stderr_tail()}")
        return m
    finally:
        errf.close()


class Mounts:
    """Every mount made, so that all of them are unmounted however the run ends."""

    def __init__(self) -> None:
        self.live: list[Mount] = []

    @contextlib.contextmanager
    def mounted(self, fs: str, lowers: Sequence[Path], upper: Path, work: Path, mnt: Path,
                unionfs_opts: str, logdir: Path, notes: list[str]) -> Iterator[Mount]:
        m = mount_fs(fs, lowers, upper, work, mnt, unionfs_opts, logdir)
        self.live.append(m)
        try:
            yield m
        finally:
            self.live.remove(m)
            problem = m.close()
            if problem:
                notes.append(problem)

    def close_all(self) -> None:
        while self.live:
            m = self.live.pop()
            with contextlib.suppress(Exception):
                m.close()


def clean_stale(run_dir: Path) -> None:
    for point, fstype in reversed(mountpoints()):
        if point.startswith(str(run_dir) + "/"):
            log(f"removing stale mount {point} ({fstype})")
            if fstype.startswith("fuse"):
                subprocess.run(["fusermount3", "-uz", point], capture_output=True, check=False)
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


class Watchdog:
    """Kills the daemon of ``mount`` if the timed block overruns, so a hang becomes an error."""

    def __init__(self, seconds: float, mount: Mount) -> None:
        self.fired = False
        self.mount = mount
        self.timer = threading.Timer(seconds, self._fire)
        self.seconds = seconds

    def _fire(self) -> None:
        self.fired = True
        self.mount.kill()

    def __enter__(self) -> Watchdog:
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()
        if self.fired:
            raise TimeoutError(f"timed out after {self.seconds:.0f} s (daemon killed)")


# --------------------------------------------------------------------------------------------
# Workloads


def walk_stat(root: str) -> int:
    n = 0
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                st = os.lstat(e.path)
                n += 1
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
    return n


def walk_readdir(root: str) -> int:
    n = 0
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                n += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return n


def read_all(paths: Sequence[str]) -> int:
    buf = bytearray(MiB)
    total = 0
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            while (n := os.readv(fd, [buf])) > 0:
                total += n
        finally:
            os.close(fd)
    return total


def files_under(root: str) -> list[str]:
    out = []
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    out.append(e.path)
    return out


@dataclass
class Ctx:
    """What a workload needs: the mount point, the bottom lower (to list targets without
    touching the mount), and the run parameters."""
    mnt: str
    l0: Path
    data: DataParams
    run: RunParams
    notes: list[str]


@dataclass
class Workload:
    name: str
    kind: str  # "read": same run cold then warm | "write": cold set, primed warm set | "rss"
    run: Callable[[Ctx, str], int]
    prime: Callable[[Ctx, str], object] | None = None
    throughput: bool = False
    help: str = ""


_LISTINGS: dict[Path, list[str]] = {}
SET_KINDS = ("copyup", "chmod", "rename")


def _set_paths(ctx: Ctx, kind: str, tag: str) -> list[str]:
    """The target set's files, listed from the bottom lower once (outside any timing)."""
    d = ctx.l0 / kind / tag
    if d not in _LISTINGS:
        _LISTINGS[d] = sorted(os.listdir(d))
    return [f"{ctx.mnt}/{kind}/{tag}/{n}" for n in _LISTINGS[d]]


def _prime_set(kind: str) -> Callable[[Ctx, str], object]:
    def prime(ctx: Ctx, tag: str) -> object:
        paths = _set_paths(ctx, kind, tag)
        for p in paths:
            os.lstat(p)
        return read_all(paths)
    return prime


def wl_stat_walk(ctx: Ctx, tag: str) -> int:
    return walk_stat(ctx.mnt)


def wl_readdir(ctx: Ctx, tag: str) -> int:
    return walk_readdir(ctx.mnt)


def wl_read_small(ctx: Ctx, tag: str) -> int:
    files = files_under(ctx.mnt + "/tree")
    read_all(files)
    return len(files)


def wl_seq_read(ctx: Ctx, tag: str) -> int:
    return read_all([ctx.mnt + "/big/read.bin"])


_BLOCK = random.Random(SEED).randbytes(MiB)


def wl_seq_write(ctx: Ctx, tag: str) -> int:
    block = _BLOCK
    fd = os.open(f"{ctx.mnt}/out-{tag}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(ctx.data.big_bytes // MiB):
            os.write(fd, block)
    finally:
        os.close(fd)
    return ctx.data.big_bytes


def lookup_names(p: DataParams) -> list[str]:
    names = [f"cmd-{i:03d}" for i in range(p.path_commands)]
    names += [f"cmd-{i:03d}" for i in range(p.path_commands, 2 * p.path_commands)]
    random.Random(p.seed).shuffle(names)
    return names


def wl_lookups(ctx: Ctx, tag: str) -> int:
    dirs = [f"{ctx.mnt}/bin/b{i}/" for i in range(ctx.data.path_dirs)]
    names = lookup_names(ctx.data)
    found = 0
    for _ in range(ctx.run.lookup_rounds):
        for name in names:
            for d in dirs:
                try:
                    os.stat(d + name)
                except FileNotFoundError:
                    continue
                found += 1
                break
    return found


GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_OPTIONAL_LOCKS": "1"}


def wl_git_status(ctx: Ctx, tag: str) -> int:
    env = {**os.environ, **GIT_ENV, "HOME": "/nonexistent"}
    r = run_cmd(["git", "-c", "safe.directory=*", "-C", f"{ctx.mnt}/repo", "status",
                 "--porcelain"], env=env, timeout=ctx.run.timeout)
    changed = len(r.stdout.splitlines())
    if changed:
        ctx.notes.append(f"git status ({tag}) listed {changed} changed paths, e.g. "
                         f"{r.stdout.splitlines()[0]!r}")
    return changed


def wl_append(ctx: Ctx, tag: str) -> int:
    paths = _set_paths(ctx, "copyup", tag)
    for p in paths:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
    return len(paths)


def wl_modify_big(ctx: Ctx, tag: str) -> int:
    fd = os.open(f"{ctx.mnt}/big/mod-{tag}.bin", os.O_WRONLY)
    try:
        os.pwrite(fd, b"x", ctx.data.big_bytes // 2 + 12345)
    finally:
        os.close(fd)
    return 1


def wl_create(ctx: Ctx, tag: str) -> int:
    top = f"{ctx.mnt}/new-{tag}"
    os.mkdir(top)
    per_dir = 1000
    payload = b"x" * 100
    n = ctx.run.create_files
    for d in range((n + per_dir - 1) // per_dir):
        sub = f"{top}/d{d:02d}"
        os.mkdir(sub)
        for i in range(min(per_dir, n - d * per_dir)):
            fd = os.open(f"{sub}/f{i:04d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, payload)
            finally:
                os.close(fd)
    return n


def wl_rm(ctx: Ctx, tag: str) -> int:
    run_cmd(["rm", "-rf", f"{ctx.mnt}/rm/{tag}"], timeout=ctx.run.timeout)
    if os.path.lexists(f"{ctx.mnt}/rm/{tag}"):
        raise RuntimeError("rm -rf left the directory behind")
    return ctx.data.rm_entries


def prime_rm(ctx: Ctx, tag: str) -> object:
    return walk_stat(f"{ctx.mnt}/rm/{tag}")


def wl_rename(ctx: Ctx, tag: str) -> int:
    paths = _set_paths(ctx, "rename", tag)
    for p in paths:
        os.rename(p, p + ".moved")
    return len(paths)


def wl_chmod(ctx: Ctx, tag: str) -> int:
    paths = _set_paths(ctx, "chmod", tag)
    for p in paths:
        os.chmod(p, 0o600)
    return len(paths)


def wl_compileall(ctx: Ctx, tag: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    run_cmd([sys.executable, "-m", "compileall", "-q", f"{ctx.mnt}/py/{tag}"], env=env,
            timeout=ctx.run.timeout)
    return 0


def prime_py(ctx: Ctx, tag: str) -> object:
    files = files_under(f"{ctx.mnt}/py/{tag}")
    return read_all(files)


def prime_big(ctx: Ctx, tag: str) -> object:
    return read_all([f"{ctx.mnt}/big/mod-{tag}.bin"])


def wl_rss(ctx: Ctx, tag: str) -> int:
    return walk_stat(ctx.mnt)


WORKLOADS = [
    Workload("stat-walk", "read", wl_stat_walk, help="lstat every entry of the whole union"),
    Workload("readdir", "read", wl_readdir, help="recursive listing (d_type), no stat"),
    Workload("read-small", "read", wl_read_small, help="read every file under tree/"),
    Workload("seq-read", "read", wl_seq_read, throughput=True,
             help="sequential read of a large lower file (1 MiB reads)"),
    Workload("seq-write", "write", wl_seq_write, throughput=True,
             help="sequential write of a new large file, timed to close()"),
    Workload("missing-lookup", "read", wl_lookups,
             help="PATH-like search of 200 names over 10 dirs (half missing), repeated"),
    Workload("git-status", "read", wl_git_status, help="git status in the lower repository"),
    Workload("append-copyup", "write", wl_append, _prime_set("copyup"),
             help="append one byte to each lower file of a set (copy-up)"),
    Workload("modify-big", "write", wl_modify_big, prime_big,
             help="change one byte in the middle of a large lower file"),
    Workload("create-small", "write", wl_create, help="create small files (1000 per dir)"),
    Workload("rm-tree", "write", wl_rm, prime_rm, help="rm -rf of a flat lower directory"),
    Workload("rename", "write", wl_rename, _prime_set("rename"),
             help="rename each lower file of a set"),
    Workload("chmod", "write", wl_chmod, _prime_set("chmod"),
             help="chmod each lower file of a set"),
    Workload("compileall", "write", wl_compileall, prime_py,
             help="python -m compileall -q over lower stdlib packages"),
    Workload("peak-rss", "rss", wl_rss,
             help="daemon peak RSS (VmHWM) after a stat-walk of a separate lower of 100k "
                  "files (10k with --quick)"),
]
WORKLOAD_NAMES = [w.name for w in WORKLOADS]


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class Cell:
    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    items: list[int] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


class Results:
    def __init__(self, filesystems: Sequence[str], workloads: Sequence[Workload]) -> None:
        self.filesystems = list(filesystems)
        self.workloads = list(workloads)
        self.cells: dict[tuple[str, str, str], Cell] = {}
        self.notes: dict[str, list[str]] = {}
        self.hwm: dict[tuple[str, str], list[int]] = {}
        self.extra: dict[str, Any] = {}

    def cell(self, wl: str, mode: str, fs: str) -> Cell:
        return self.cells.setdefault((wl, mode, fs), Cell())

    def note(self, key: str, msg: str) -> None:
        lst = self.notes.setdefault(key, [])
        if msg not in lst:
            lst.append(msg)


def modes_of(w: Workload) -> tuple[str, ...]:
    return ("peak",) if w.kind == "rss" else ("cold", "warm")


def unit_of(w: Workload) -> str:
    return "KiB" if w.kind == "rss" else "s"


def to_json(res: Results, meta: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for w in res.workloads:
        for mode in modes_of(w):
            entry: dict[str, Any] = {"workload": w.name, "mode": mode, "unit": unit_of(w),
                                     "kind": "memory" if w.kind == "rss" else
                                     ("throughput" if w.throughput else "time"),
                                     "bytes": meta["data"]["big_bytes"] if w.throughput else None,
                                     "results": {}}
            for fs in res.filesystems:
                c = res.cells.get((w.name, mode, fs))
                if c is None:
                    continue
                entry["results"][fs] = {"median": c.median, "samples": c.samples,
                                        "errors": c.errors, "items": c.items}
            entry["ratio_fuse"] = ratio(entry, "fuse-overlayfs")
            entry["ratio_kernel"] = ratio(entry, "kernel")
            for variant, (_, short) in VARIANTS.items():
                entry[f"ratio_{short}_fuse"] = ratio(entry, "fuse-overlayfs", variant)
            rows.append(entry)

    def mean_of(key: str) -> float | None:
        return geomean([r[key] for r in rows if r["kind"] != "memory" and r[key]])

    return {"version": JSON_VERSION, "meta": meta, "filesystems": res.filesystems,
            "cells": rows, "geomean_unionfs_fuse": mean_of("ratio_fuse"),
            "geomean_unionfs_kernel": mean_of("ratio_kernel"),
            **{f"geomean_{short}_fuse": mean_of(f"ratio_{short}_fuse")
               for _, short in VARIANTS.values()},
            "notes": res.notes,
            "daemon_hwm_kib": {f"{w}/{fs}": v for (w, fs), v in res.hwm.items()},
            "extra": res.extra}


def ratio(entry: dict[str, Any], peer: str, ours: str = "unionfs") -> float | None:
    u = entry["results"].get(ours, {}).get("median")
    p = entry["results"].get(peer, {}).get("median")
    if u is None or not p:
        return None
    return float(u) / float(p)


def fmt_value(entry: dict[str, Any], fs: str) -> str:
    r = entry["results"].get(fs)
    if r is None:
        return "n/a" if entry["kind"] == "memory" and fs == "kernel" else "—"
    med = r["median"]
    if med is None:
        return "FAILED" if r["errors"] else "—"
    mark = " †" if r["errors"] else ""
    if entry["kind"] == "memory":
        return f"{med / 1024:.1f} MiB{mark}"
    if entry["kind"] == "throughput":
        return f"{entry['bytes'] / med / MiB:.0f} MiB/s{mark}"
    return fmt_time(med) + mark


def fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def markdown(doc: dict[str, Any]) -> str:
    fss = doc["filesystems"]
    head = ["workload", "mode", *fss]
    columns = [(f"{ours}/{peer}", key) for ours, peer, key in (
        ("unionfs", "fuse-overlayfs", "ratio_fuse"), ("unionfs", "kernel", "ratio_kernel"),
        *((v, "fuse-overlayfs", f"ratio_{short}_fuse") for v, (_, short) in VARIANTS.items()))
        if ours in fss and peer in fss]
    head += [title for title, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in doc["cells"]:
        row = [e["workload"], e["mode"], *(fmt_value(e, fs) for fs in fss)]
        row += [fmt_ratio(e.get(key)) for _, key in columns]
        lines.append("| " + " | ".join(row) + " |")
    out = "\n".join(lines) + "\n\n"
    out += "Times are medians (lower is better); seq-read/seq-write show throughput, their "
    out += "ratios are inverted (time for the same bytes); peak-rss is the daemon's VmHWM.\n"
    for key, label in (("geomean_unionfs_fuse", "unionfs/fuse-overlayfs"),
                       ("geomean_unionfs_kernel", "unionfs/kernel"),
                       *((f"geomean_{short}_fuse", f"{v}/fuse-overlayfs")
                         for v, (_, short) in VARIANTS.items())):
        if doc.get(key):
            out += (f"\n**Geometric mean {label}: {doc[key]:.2f}x** "
                    "(all time and throughput cells, cold and warm)")
    failures: dict[tuple[str, str, str], list[str]] = {}
    for e in doc["cells"]:
        for fs, r in e["results"].items():
            for err in r["errors"][:1]:
                failures.setdefault((e["workload"], fs, err), []).append(e["mode"])
    failure_lines = [f"- {wl} {'+'.join(modes)} on {fs}: {err}"
                     for (wl, fs, err), modes in failures.items()]
    if failure_lines:
        out += "\n\nFailures († = some repetitions failed):\n" + "\n".join(failure_lines)
    hwm = doc.get("daemon_hwm_kib", {})
    for fs in ("unionfs", *VARIANTS, "fuse-overlayfs"):
        peaks = {k.split("/")[0]: max(v) for k, v in hwm.items() if k.endswith("/" + fs) and v}
        if peaks:
            top = max(peaks, key=lambda k: peaks[k])
            out += (f"\n\n{fs} daemon peak RSS over the other workloads' mounts: "
                    f"{peaks[top] / 1024:.1f} MiB (after {top})")
    meta = doc["meta"]
    if "loadavg_start" in meta:
        out += (f"\n\nLoad average (1 min) at start / end: {meta['loadavg_start'][0]:.2f} / "
                f"{meta['loadavg_end'][0]:.2f} on {meta.get('cpus')} CPUs; "
                f"{doc.get('extra', {}).get('reps_done', meta['run']['reps'])} of "
                f"{meta['run']['reps']} repetitions; unionfs {meta.get('unionfs_commit')}"
                + (f" -o {meta['unionfs_opts']}" if meta.get("unionfs_opts") else ""))
    if doc["meta"].get("interrupted"):
        out += "\n\n**Interrupted: partial results.**"
    notes = [f"- {k}: {m}" for k, msgs in doc.get("notes", {}).items() for m in msgs[:3]]
    if notes:
        out += "\n\nNotes:\n" + "\n".join(notes)
    return out + "\n"


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    old_cells = {(e["workload"], e["mode"]): e for e in old["cells"]}
    fss = [fs for fs in new["filesystems"] if fs in old["filesystems"]]
    head = ["workload", "mode", *(f"{fs} old → new" for fs in fss)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in new["cells"]:
        o = old_cells.get((e["workload"], e["mode"]))
        if o is None:
            continue
        row = [e["workload"], e["mode"]]
        for fs in fss:
            a = o["results"].get(fs, {}).get("median")
            b = e["results"].get(fs, {}).get("median")
            if a is None or b is None:
                row.append(f"{fmt_value(o, fs)} → {fmt_value(e, fs)}")
            else:
                row.append(f"{fmt_value(o, fs)} → {fmt_value(e, fs)} ({b / a:.2f}x)")
        lines.append("| " + " | ".join(row) + " |")
    out = (f"Change against {old['meta'].get('timestamp', '?')} "
           f"(unionfs {old['meta'].get('unionfs_commit', '?')}); "
           "new/old, lower is better:\n\n" + "\n".join(lines) + "\n")
    for key, label in (("geomean_unionfs_fuse", "fuse-overlayfs"),
                       ("geomean_unionfs_kernel", "kernel")):
        a, b = old.get(key), new.get(key)
        if a and b:
            out += f"\nGeometric mean unionfs/{label}: {a:.2f}x → {b:.2f}x"
    if old["meta"].get("data") != new["meta"].get("data"):
        out += "\n\n(warning: the two runs used different datasets)"
    return out + "\n"


# --------------------------------------------------------------------------------------------
# Runner


class Runner:
    def __init__(self, args: argparse.Namespace, data_dir: Path, dp: DataParams, rp: RunParams,
                 filesystems: Sequence[str], workloads: Sequence[Workload]) -> None:
        self.args = args
        self.data = data_dir
        self.dp = dp
        self.rp = rp
        self.filesystems = list(filesystems)
        self.workloads = list(workloads)
        self.run_dir = Path(args.data) / "run"
        self.mounts = Mounts()
        self.res = Results(filesystems, workloads)
        self.skip: set[tuple[str, str]] = set()
        self.t_start = time.monotonic()

    def lowers(self, w: Workload) -> tuple[list[Path], Path]:
        if w.kind == "rss":
            l0 = ensure_rss_tree(Path(self.args.data), self.rp.rss_files)
            return [l0], l0
        layers = self.data / "layers"
        return [layers / "l2", layers / "l1", layers / "l0"], layers / "l0"

    def timed(self, m: Mount, fn: Callable[[Ctx, str], int], ctx: Ctx, tag: str,
              limit: float) -> tuple[float, int]:
        with Watchdog(limit, m):
            t0 = time.perf_counter()
            items = fn(ctx, tag)
            return time.perf_counter() - t0, items

    def one(self, w: Workload, fs: str, rep: int) -> None:
        base = self.run_dir / fs
        rmtree(base)
        upper, work, mnt = base / "upper", base / "work", base / "mnt"
        for d in (upper, work, mnt):
            d.mkdir(parents=True)
        lowers, l0 = self.lowers(w)
        notes: list[str] = []
        ctx = Ctx(str(mnt), l0, self.dp, self.rp, notes)
        modes = modes_of(w)
        try:
            with self.mounts.mounted(fs, lowers, upper, work, mnt, self.args.unionfs_opts,
                                     base, notes) as m:
                drop_caches()
                try:
                    secs, items = self.timed(m, w.run, ctx, "cold", self.rp.timeout)
                except Exception as exc:
                    self.fail(w, fs, modes, exc, m)
                    return
                if w.kind == "rss":
                    hwm = vm_hwm_kib(m.pid) if m.pid else None
                    if hwm is None:
                        raise RuntimeError("daemon gone: no VmHWM")
                    self.res.cell(w.name, "peak", fs).samples.append(float(hwm))
                    self.res.extra.setdefault(f"rss-walk-seconds/{fs}", []).append(secs)
                    self.res.cell(w.name, "peak", fs).items.append(items)
                    return
                cold = self.res.cell(w.name, "cold", fs)
                cold.samples.append(secs)
                cold.items.append(items)
                warm = self.res.cell(w.name, "warm", fs)
                try:
                    if w.prime is not None:
                        with Watchdog(self.rp.timeout, m):
                            w.prime(ctx, "warm")
                    if w.kind == "write":
                        os.sync()  # the cold run's dirty data must not be written back now
                    secs, items = self.timed(m, w.run, ctx,
                                             "cold" if w.kind == "read" else "warm",
                                             self.rp.timeout)
                    warm.samples.append(secs)
                    warm.items.append(items)
                except Exception as exc:
                    self.fail(w, fs, ("warm",), exc, m)
                if m.pid:
                    hwm = vm_hwm_kib(m.pid)
                    if hwm:
                        self.res.hwm.setdefault((w.name, fs), []).append(hwm)
        except MountFailed as exc:
            self.fail(w, fs, modes, exc, None)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            self.fail(w, fs, modes, exc, None)
        finally:
            for n in notes:
                self.res.note(f"{w.name} on {fs}", n)
            rmtree(base)

    def fail(self, w: Workload, fs: str, modes: Sequence[str], exc: BaseException,
             m: Mount | None) -> None:
        msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:400]
        if m is not None and m.proc is not None and m.proc.poll() is not None:
            msg += f" [daemon exited {m.proc.returncode}: {m.stderr_tail()[-300:]}]"
        if self.args.verbose:
            traceback.print_exception(exc)
        log(f"FAILED {w.name} on {fs}: {msg}")
        for mode in modes:
            self.res.cell(w.name, mode, fs).errors.append(msg)
        self.skip.add((w.name, fs))

    def run(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        clean_stale(self.run_dir)
        layers = self.data / "layers"
        roots = [layers / n for n in ("l0", "l1", "l2")]
        if any(w.kind == "rss" for w in self.workloads):
            roots.append(ensure_rss_tree(Path(self.args.data), self.rp.rss_files))
        before = fingerprint(roots)
        for kind in SET_KINDS:
            for tag in ("cold", "warm"):
                _set_paths(Ctx("", layers / "l0", self.dp, self.rp, []), kind, tag)
        t_start = time.monotonic()
        try:
            self._loop()
        finally:
            if fingerprint(roots) != before:
                msg = ("the lower layers were MODIFIED during the run (a filesystem wrote "
                       "through to a lower): the dataset will be rebuilt next time")
                log("ERROR: " + msg)
                self.res.note("dataset", msg)
                (self.data / "params.json").unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    (Path(self.args.data) / f"rss-{self.rp.rss_files}" / "done").unlink()
        self.res.extra["elapsed_seconds"] = time.monotonic() - t_start

    def _loop(self) -> None:
        self.res.extra["reps_done"] = 0
        for rep in range(self.rp.reps):
            elapsed = time.monotonic() - self.t_start
            if rep and self.rp.budget and elapsed + elapsed / rep > self.rp.budget:
                log(f"time budget ({self.rp.budget:.0f} s): stopping after {rep} repetitions")
                break
            # Each repetition starts with the next filesystem: whatever the one before leaves
            # behind (the host's cache of the shared lower files, dirty pages being written
            # back) falls on each of them in turn rather than always on the same one.
            shift = rep % len(self.filesystems)
            order = self.filesystems[shift:] + self.filesystems[:shift]
            for w in self.workloads:
                for fs in order:
                    if w.kind == "rss" and fs == "kernel":
                        continue
                    if (w.name, fs) in self.skip:
                        continue
                    t0 = time.monotonic()
                    self.one(w, fs, rep)
                    c = self.res.cells.get((w.name, modes_of(w)[0], fs))
                    shown = "" if c is None or not c.samples else (
                        f"{c.samples[-1] / 1024:.0f} MiB" if w.kind == "rss"
                        else fmt_time(c.samples[-1]))
                    log(f"rep {rep + 1}/{self.rp.reps} {w.name:15s} {fs:15s} {shown:>10s} "
                        f"({time.monotonic() - t0:.1f} s)")
            self.res.extra["reps_done"] = rep + 1
        # the same view everywhere? (item counts of the read workloads must agree)
        for w in self.workloads:
            if w.kind != "read":
                continue
            seen = {fs: sorted(set(c.items)) for (wn, mode, fs), c in self.res.cells.items()
                    if wn == w.name and mode == "cold" and c.items}
            if len({tuple(v) for v in seen.values()}) > 1:
                self.res.note(w.name, f"filesystems disagree on the result: {seen}")


def unionfs_commit() -> str:
    try:
        head = run_cmd(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]).stdout
        dirty = run_cmd(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--",
                         "unionfs"]).stdout
        return head.strip() + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def fuse_overlayfs_version() -> str:
    try:
        r = subprocess.run(["fuse-overlayfs", "--version"], capture_output=True, text=True,
                           timeout=10, check=False)
    except OSError:
        return "missing"
    return (r.stdout.splitlines() or ["?"])[0]


def parse_list(value: str | None, allowed: Sequence[str], what: str) -> list[str]:
    if not value:
        return list(allowed)
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SystemExit(f"bench: unknown {what}: {', '.join(bad)} "
                         f"(choose from {', '.join(allowed)})")
    return [a for a in allowed if a in items]


def build_parser() -> argparse.ArgumentParser:
    wl_help = "\n".join(f"  {w.name:15s} {w.help}" for w in WORKLOADS)
    p = argparse.ArgumentParser(
        prog="bench.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(__doc__ or "").split("\n\n")[0].strip() + "\n\n" +
        "\n\n".join((__doc__ or "").split("\n\n")[1:3]),
        epilog=f"workloads:\n{wl_help}\n\nfilesystems: {', '.join(FILESYSTEMS)} (default), "
        f"{', '.join(VARIANTS)} (opt in)\n\n"
        "Run as root.  See the module docstring (scripts/bench.py) for the method.")
    p.add_argument("--data", default="/var/tmp/unionfs-bench",
                   help="dataset and scratch directory (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="small dataset, 3 repetitions: under two minutes")
    p.add_argument("--reps", type=int, help="repetitions (default 5; 3 with --quick)")
    p.add_argument("--only", metavar="FS,FS", help="filesystems to run (default: all three)")
    p.add_argument("--workloads", metavar="W,W", help="workloads to run (default: all)")
    p.add_argument("--unionfs-opts", default="", metavar="OPTS",
                   help="extra -o options for unionfs, e.g. timeout=0")
    p.add_argument("--json", metavar="FILE",
                   help="write results here (default: bench-results/<timestamp>.json)")
    p.add_argument("--compare", metavar="OLD.json", help="also print the change per cell")
    p.add_argument("--load", metavar="NEW.json",
                   help="do not run: print the table of a saved run (and --compare it)")
    p.add_argument("--timeout", type=float,
                   help="seconds per timed run before the daemon is killed (900; 60 quick)")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="start no further repetition once it would end past SECONDS from "
                        "the start (default: 105 with --quick, none otherwise; 0: none)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the dataset")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks of failures")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_main = time.monotonic()
    if args.load:
        doc = json.loads(Path(args.load).read_text())
        print(markdown(doc))
        if args.compare:
            print(compare(json.loads(Path(args.compare).read_text()), doc))
        return 0
    if os.geteuid() != 0:
        print("bench: run as root (kernel overlay mounts, whiteouts, drop_caches)",
              file=sys.stderr)
        return 2
    filesystems = (parse_list(args.only, ALL_FILESYSTEMS, "filesystem") if args.only
                   else list(FILESYSTEMS))
    names = parse_list(args.workloads, WORKLOAD_NAMES, "workload")
    workloads = [w for w in WORKLOADS if w.name in names]
    if "fuse-overlayfs" in filesystems and not shutil.which("fuse-overlayfs"):
        print("bench: fuse-overlayfs not found (apt-get install fuse-overlayfs), or use "
              "--only kernel,unionfs", file=sys.stderr)
        return 2
    old = json.loads(Path(args.compare).read_text()) if args.compare else None
    dp = data_params(args.quick)
    rp = run_params(args.quick, args.reps, args.timeout, args.budget)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.json) if args.json else REPO_ROOT / "bench-results" / f"{stamp}.json"

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    base = Path(args.data)
    base.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    runner: Runner | None = None
    interrupted = False
    try:
        data_dir = ensure_dataset(base, dp, args.rebuild)
        runner = Runner(args, data_dir, dp, rp, filesystems, workloads)
        runner.t_start = t_main  # the time budget counts the dataset build too
        runner.run()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: unmounting")
    finally:
        if runner is not None:
            runner.mounts.close_all()
            clean_stale(runner.run_dir)
    if runner is None:
        return 130
    meta = {"timestamp": stamp, "argv": sys.argv[1:], "quick": args.quick,
            "unionfs_commit": unionfs_commit(), "unionfs_opts": args.unionfs_opts,
            "kernel": platform.release(), "python": sys.version.split()[0],
            "cpus": os.cpu_count(), "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "fuse_overlayfs": fuse_overlayfs_version(),
            "data": asdict(dp), "run": asdict(rp), "interrupted": interrupted}
    doc = to_json(runner.res, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    if old is not None:
        print(compare(old, doc))
    log(f"results written to {out}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
