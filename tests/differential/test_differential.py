"""Pytest entries: the harness proven against itself, then unionfs against kernel overlayfs.

The kernel-vs-kernel tests show the harness finds nothing where nothing differs, and does find
(and shrink) a difference planted in the semantics (``redirect_dir=on`` on one side) and one
planted in a lower layer.  ``test_unionfs_matches_kernel`` is the CI-sized campaign.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from support.filesystems import placement_missing

from .build import build_layer
from .harness import Case, Failure, make_case
from .model import Dir, File, Layer, Meta, TreeGenerator, Whiteout
from .mounts import KernelOverlay, Mounted
from .report import format_failure
from .runner import run_campaign
from .shrink import shrink
from .snapshot import Difference, diff, snapshot


def _overlay_supported() -> bool:
    try:
        return "overlay" in Path("/proc/filesystems").read_text()
    except OSError:
        return False


NOT_ROOT = os.geteuid() != 0
NO_OVERLAY = not _overlay_supported()
NO_FUSE = not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None

needs_root = pytest.mark.skipif(NOT_ROOT, reason="needs root (overlay mounts, trusted xattrs)")
needs_overlay = pytest.mark.skipif(NO_OVERLAY, reason="kernel has no overlayfs")
needs_fuse = pytest.mark.skipif(NO_FUSE, reason="needs /dev/fuse and fusermount3")

CI_SEEDS = range(300)
CI_OPS = 30


def campaign_report(failures: Sequence[Failure], problems: Sequence[str], against: str,
                    flags: str = "") -> str:
    """The reproducers; ``flags`` are the difftest.py options that select the same cases."""
    parts = [format_failure(f, nops=CI_OPS, against=against, flags=flags) for f in failures]
    return "\n\n".join([*parts, *problems])


# -- pure-python parts -------------------------------------------------------------------------

def test_generation_is_reproducible_and_prefix_stable() -> None:
    assert make_case(5, 40) == make_case(5, 40)
    assert make_case(5, 40).ops[:30] == make_case(5, 30).ops
    assert make_case(5, 30) != make_case(6, 30)
    sizes = [len(make_case(s, 30).stack.lowers) for s in range(40)]
    assert set(sizes) == {2, 3, 4}


def test_shrinker_finds_the_two_ops_that_matter() -> None:
    case = make_case(1, 40)
    marker = Difference("x", "mode", 1, 2)

    def run_many(cases: Sequence[Case]) -> list[Failure | None]:
        out: list[Failure | None] = []
        for c in cases:
            hit = 3 in c.keep and 17 in c.keep
            out.append(Failure(c, c.keep.index(17), "tree", marker) if hit else None)
        return out

    first = run_many([case])[0]
    assert first is not None
    assert shrink(first, run_many).case.keep == (3, 17)


# -- snapshots of real directories (root: trusted xattrs, mknod) -------------------------------

@needs_root
@pytest.mark.root
def test_upper_snapshot_sees_whiteouts_and_opaque_markers(tmp_path: Path) -> None:
    meta = Meta(0o755, 0, 0, 10**18)
    layer: Layer = {
        "d": Dir(meta, opaque=True), "d/f": File(meta, ((0, b"x"),), 1), "w": Whiteout(),
    }
    a, b = tmp_path / "a", tmp_path / "b"
    build_layer(str(a), layer)
    build_layer(str(b), layer)
    assert diff(snapshot(str(a), upper=True), snapshot(str(b), upper=True)) is None
    os.removexattr(b / "d", "trusted.overlay.opaque")
    found = diff(snapshot(str(a), upper=True), snapshot(str(b), upper=True))
    assert found is not None
    assert (found.path, found.field) == ("d", "opaque")
    os.setxattr(b / "d", "trusted.overlay.opaque", b"y")
    (b / "w").unlink()
    (b / "w").write_bytes(b"")
    found = diff(snapshot(str(a), upper=True), snapshot(str(b), upper=True))
    assert found is not None
    assert (found.path, found.field) == ("w", "kind")


@needs_root
@pytest.mark.root
def test_random_layers_build_identically(tmp_path: Path) -> None:
    for seed in range(20):
        stack = TreeGenerator(random.Random(seed)).stack(3)
        for i, layer in enumerate(stack.lowers):
            build_layer(str(tmp_path / f"a{seed}" / str(i)), layer)
            build_layer(str(tmp_path / f"b{seed}" / str(i)), layer)
            assert diff(snapshot(str(tmp_path / f"a{seed}" / str(i)), upper=True),
                        snapshot(str(tmp_path / f"b{seed}" / str(i)), upper=True)) is None


# -- kernel vs kernel: the harness proves itself -----------------------------------------------

@needs_root
@needs_overlay
@pytest.mark.root
def test_kernel_vs_kernel_finds_no_difference(tmp_path: Path) -> None:
    cases = [make_case(s, CI_OPS) for s in range(40)]
    out = run_campaign(cases, KernelOverlay(), KernelOverlay(name="kernel-b"),
                       workdir=str(tmp_path))
    if out.failures or out.problems:
        pytest.fail(campaign_report(out.failures, out.problems, "kernel"), pytrace=False)


@needs_root
@needs_overlay
@pytest.mark.root
def test_planted_semantic_difference_is_found_and_shrunk(tmp_path: Path) -> None:
    """Side b renames merged directories (redirect_dir=on) where side a says EXDEV."""
    planted = KernelOverlay(extra="redirect_dir=on,metacopy=off", name="redirect")
    cases = [make_case(s, CI_OPS) for s in range(60)]
    out = run_campaign(cases, KernelOverlay(), planted, max_failures=1,
                       workdir=str(tmp_path))
    assert len(out.failures) == 1, "the planted difference went unnoticed"
    failure = out.failures[0]
    assert failure.stage == "result"
    assert len(failure.case.ops) <= 3, format_failure(failure, nops=CI_OPS, against="redirect")
    op = failure.case.ops[failure.step]
    assert type(op).__name__ == "Rename"
    assert failure.difference.a == ("EXDEV", None)


class TamperingOverlay(KernelOverlay):
    """A kernel overlay whose bottom layer's regular files get an extra xattr before mounting."""

    def mount(self, lowers: list[str], upper: str, work: str, mnt: str) -> Mounted:
        for dirpath, _, files in os.walk(lowers[-1]):
            for name in files:
                path = os.path.join(dirpath, name)
                if stat.S_ISREG(os.lstat(path).st_mode):
                    os.setxattr(path, "user.planted", b"1")
        return super().mount(lowers, upper, work, mnt)


@needs_root
@needs_overlay
@pytest.mark.root
def test_planted_layer_difference_is_found(tmp_path: Path) -> None:
    cases = [make_case(s, CI_OPS) for s in range(10)]
    out = run_campaign(cases, KernelOverlay(), TamperingOverlay(name="tampered"),
                       max_failures=1, workdir=str(tmp_path))
    assert out.failures, "the planted xattr went unnoticed"
    assert out.failures[0].stage == "initial"
    assert out.failures[0].difference.field == "xattrs"


class UpperTampering(KernelOverlay):
    """A kernel overlay that, once unmounted, leaves an extra xattr on its upper's files: only
    the cross-mount stage (each side's upper read by the other mounter) can see that."""

    def mount(self, lowers: list[str], upper: str, work: str, mnt: str) -> Mounted:
        inner = super().mount(lowers, upper, work, mnt)

        class Tampered:
            def alive(self) -> bool:
                return inner.alive()

            def abort(self) -> None:
                inner.abort()

            def unmount(self) -> str | None:
                problem = inner.unmount()
                for dirpath, _, files in os.walk(upper):
                    for name in files:
                        path = os.path.join(dirpath, name)
                        if stat.S_ISREG(os.lstat(path).st_mode):
                            os.setxattr(path, "user.planted", b"1")
                return problem

        return Tampered()


@needs_root
@needs_overlay
@pytest.mark.root
def test_planted_upper_difference_is_found_by_the_cross_mount(tmp_path: Path) -> None:
    cases = [make_case(s, CI_OPS) for s in range(20)]
    out = run_campaign(cases, KernelOverlay(), UpperTampering(name="tampered-upper"),
                       max_failures=1, shrink_failures=False, workdir=str(tmp_path))
    assert out.failures, "the planted upper xattr went unnoticed"
    assert out.failures[0].stage == "cross-b"
    assert out.failures[0].difference.field == "xattrs"


# -- the real thing -----------------------------------------------------------------------------

@needs_root
@needs_overlay
@needs_fuse
@pytest.mark.root
@pytest.mark.fuse
@pytest.mark.parametrize("placement, seeds", [
    ("one-fs", CI_SEEDS),
    ("upper-tmpfs", range(300, 400)),
    ("lower-tmpfs-upper-ext4", range(400, 500)),
])
def test_unionfs_matches_kernel(tmp_path: Path, placement: str, seeds: range) -> None:
    """Random sequences of 30 operations: unionfs must do what kernel overlayfs does, with lower
    and upper on one filesystem (300 seeds) and on two (100 seeds each).

    Compared after every step: each operation's outcome and the whole merged tree; at the end
    the upper directories, and each side's upper mounted by the other implementation (kernel
    overlayfs reads what unionfs wrote, hardlink index included, and the other way round).
    """
    from .mounts import Unionfs

    if missing := placement_missing(placement):
        pytest.skip(missing)
    cases = [make_case(s, CI_OPS) for s in seeds]
    out = run_campaign(cases, KernelOverlay(), Unionfs(), max_failures=3,
                       workdir=str(tmp_path), cross=True, placement=placement)
    if out.failures or out.problems:
        pytest.fail(campaign_report(out.failures, out.problems, "unionfs"), pytrace=False)
