"""Run cases (a generated stack + an op sequence) on two mounts side by side and compare.

To keep a run cheap, one pair of mounts serves a whole *batch* of cases with the same number of
lowers: case ``k`` lives in directory ``c<k>`` of every layer (a merged directory, exactly like
a mount's root), operates only below it (symlink targets never climb, see model.py) and is
compared only there.  Per case: compare the initial trees, then for every operation compare
its outcome (errno, observed value) and both whole trees, finally close all handles and compare
the two uppers' ``c<k>``.  If a mount dies, the rest of the batch moves to fresh mounts.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from support.filesystems import Roots, placed

from .build import build_layer
from .model import Stack, TreeGenerator
from .mounts import Mounted, Mounter, MountError
from .opgen import OpGenerator
from .ops import Context, Op, Outcome
from .snapshot import Difference, Tree, diff, snapshot


@dataclass(frozen=True)
class Case:
    seed: int
    stack: Stack
    ops: tuple[Op, ...]
    keep: tuple[int, ...] = ()
    """Indices of ``ops`` in the seed's full sequence (for the reproducer command)."""
    full: tuple[Op, ...] = ()
    """The seed's full sequence."""

    def with_ops(self, keep: Sequence[int]) -> Case:
        return dataclasses.replace(self, ops=tuple(self.full[i] for i in keep), keep=tuple(keep))


def make_case(seed: int, nops: int, *, wh_names: bool = True, hardlinks: bool = True) -> Case:
    """The case of ``seed``: 2..4 lowers, maybe an upper, ``nops`` operations."""
    rng = random.Random(seed)
    gen = TreeGenerator(rng, wh_names=wh_names, hardlinks=hardlinks)
    stack = gen.stack(rng.randint(2, 4))
    ops = OpGenerator(rng, stack).sequence(nops)
    return Case(seed, stack, tuple(ops), tuple(range(nops)), tuple(ops))


class Failure(NamedTuple):
    case: Case
    step: int
    """Index into ``case.ops``; -1 before any op, ``len(ops)`` for the final upper check."""
    stage: str
    """"initial", "result", "tree", "upper", "mount" or "hang"."""
    difference: Difference
    note: str = ""
    outcomes: tuple[Outcome, ...] = ()
    """What side a's operations returned, up to the failing step."""

    def signature(self) -> tuple[str, str, str]:
        op = self.case.ops[self.step] if 0 <= self.step < len(self.case.ops) else None
        kind = type(op).__name__ if op is not None and self.stage == "result" else ""
        return self.stage, self.difference.field, kind


def op_paths(ops: Sequence[Op]) -> list[str]:
    """Every path the ops name (looking inside wrappers such as AsUser)."""
    out: list[str] = []
    for op in ops:
        for f in dataclasses.fields(op):
            value = getattr(op, f.name)
            if f.name in ("path", "src", "dst"):
                out.append(value)
            elif isinstance(value, Op):
                out.extend(op_paths([value]))
    return out


class Watchdog:
    """Aborts the mounts if one step (an op and its comparison) takes longer than ``seconds``:
    a hung filesystem then fails its requests (ENOTCONN) instead of hanging the test run."""

    def __init__(self, mounts: Sequence[Mounted], seconds: float) -> None:
        self.mounts = mounts
        self.seconds = seconds
        self.fired = False
        self.steps = 0
        self.delay = 0.0

    def fire(self) -> None:
        self.fired = True
        for mount in self.mounts:
            mount.abort()

    @contextmanager
    def step(self) -> Iterator[None]:
        self.steps += 1
        timer = threading.Timer(self.seconds, self.fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()


STEP_TIMEOUT = 60.0


class Side(NamedTuple):
    base: str
    """The side's own directory: its mountpoint is there."""
    mounter: Mounter
    lower_root: str
    """Where the side's lower layers are (a filesystem of the batch's placement)."""
    upper_root: str
    """Where its upper and work directories are (maybe another filesystem)."""

    def layer(self, i: int) -> str:
        return os.path.join(self.lower_root, f"l{i}")

    @property
    def upper(self) -> str:
        return os.path.join(self.upper_root, "u")

    @property
    def work(self) -> str:
        return os.path.join(self.upper_root, "w")

    @property
    def mnt(self) -> str:
        return os.path.join(self.base, "m")

    def nlowers(self) -> int:
        return len([n for n in os.listdir(self.lower_root) if n.startswith("l")])

    def swapped(self, mounter: Mounter) -> Side:
        return self._replace(mounter=mounter)


class Batch:
    """Run ``cases`` (all with the same number of lowers) on fresh mounts of ``a`` and ``b``.

    With ``cross``, after the cases ran the mounts are swapped: b mounts the layers and upper
    that a wrote, a mounts b's, and every case that passed must show the same final tree again
    (an upper written by one implementation reads back identically through the other)."""

    def __init__(self, a: Mounter, b: Mounter, workdir: str | None = None,
                 ignore: frozenset[str] = frozenset(), *, cross: bool = False,
                 delay: float = 0.0, placement: str = "one-fs") -> None:
        self.mounters = (a, b)
        self.workdir = workdir
        self.placement = placement
        """Where lowers and uppers live (tests/support/filesystems.py): one filesystem or two."""
        self.ignore = ignore
        self.delay = delay
        """Seconds to wait before each op (lets the kernel's FUSE caches expire; off in CI)."""
        self.cross = cross
        self.problems: list[str] = []
        """Teardown problems (unclean unmount, bad exit status): the runner reports them."""
        self.steps = 0
        """Steps (an op and the comparison after it) run so far."""

    def run(self, cases: Sequence[Case], *, probes: bool = True) -> list[Failure | None]:
        results: list[Failure | None] = []
        while len(results) < len(cases):
            results.extend(self.run_some(cases[len(results):], probes))
        return results

    def run_some(self, cases: Sequence[Case], probes: bool) -> list[Failure | None]:
        """Run cases until one kills a mount; return results for those that ran."""
        base = tempfile.mkdtemp(prefix="difftest-", dir=self.workdir)
        try:
            with placed(self.placement, Path(base)) as roots:
                return self.run_placed(cases, probes, base, roots)
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def run_placed(self, cases: Sequence[Case], probes: bool, base: str,
                   roots: Roots) -> list[Failure | None]:
        sides = [Side(os.path.join(base, n), m, os.path.join(roots.lower, f"{n}-lower"),
                      os.path.join(roots.upper, f"{n}-upper"))
                 for n, m in zip("ab", self.mounters, strict=True)]
        for side in sides:
            prepare(side, cases)
        results: list[CaseResult] = []
        with self.mounted(sides) as mounts:
            dog = Watchdog(mounts, STEP_TIMEOUT + self.delay)
            dog.delay = self.delay
            for k, case in enumerate(cases):
                results.append(run_case(case, f"c{k}", sides, probes, self.ignore, dog))
                self.steps += dog.steps
                dog.steps = 0
                if not all(m.alive() for m in mounts):
                    if results[-1].failure is None:
                        results[-1] = CaseResult(Failure(
                            case, len(case.ops), "mount", Difference("", "alive", True, False)))
                    return [r.failure for r in results]
        if self.cross:
            self.cross_check(sides, results, probes)
        return [r.failure for r in results]

    def cross_check(self, sides: list[Side], results: list[CaseResult], probes: bool) -> None:
        """Remount each side's directories with the other mounter; compare final trees."""
        swapped = [sides[0].swapped(sides[1].mounter), sides[1].swapped(sides[0].mounter)]
        try:
            self.compare_swapped(swapped, results, probes)
        except MountError as exc:
            self.problems.append(f"cross-mount (each side's dirs by the other mounter): {exc}")

    def compare_swapped(self, swapped: list[Side], results: list[CaseResult],
                        probes: bool) -> None:
        with self.mounted(swapped) as mounts:
            dog = Watchdog(mounts, STEP_TIMEOUT)
            for k, res in enumerate(results):
                case = res.case
                if res.failure or case is None or res.final_a is None or res.final_b is None:
                    continue
                probe_paths = sorted(set(op_paths(case.ops))) if probes else []
                for side, written, stage in ((swapped[0], res.final_a, "cross-a"),
                                             (swapped[1], res.final_b, "cross-b")):
                    with dog.step():
                        seen = snapshot(os.path.join(side.mnt, f"c{k}"), probes=probe_paths)
                    if d := diff(written, seen, self.ignore):
                        results[k] = CaseResult(Failure(case, len(case.ops), stage, d,
                                                        outcomes=res.outcomes))
                        break

    @contextmanager
    def mounted(self, sides: list[Side]) -> Iterator[list[Mounted]]:
        with ExitStack() as stack:
            mounts = []
            for side in sides:
                lowers = [side.layer(i) for i in range(side.nlowers())]
                mount = side.mounter.mount(lowers, side.upper, side.work, side.mnt)
                stack.callback(self.teardown, side.mounter.name, mount)
                mounts.append(mount)
            yield mounts

    def teardown(self, name: str, mount: Mounted) -> None:
        problem = mount.unmount()
        if problem:
            self.problems.append(f"{name}: {problem}")


class CaseResult(NamedTuple):
    failure: Failure | None
    case: Case | None = None
    final_a: Tree | None = None
    final_b: Tree | None = None
    outcomes: tuple[Outcome, ...] = ()


def prepare(side: Side, cases: Sequence[Case]) -> None:
    nlowers = len(cases[0].stack.lowers)
    for path in (side.upper, side.work, side.mnt, *(side.layer(i) for i in range(nlowers))):
        os.makedirs(path)
    for k, case in enumerate(cases):
        assert len(case.stack.lowers) == nlowers, "a batch needs one number of lowers"
        for i, layer in enumerate(case.stack.lowers):
            build_layer(side.layer(i), layer, prefix=f"c{k}")
        if case.stack.upper:
            build_layer(side.upper, case.stack.upper, prefix=f"c{k}")


def run_case(case: Case, label: str, sides: list[Side], probes: bool,
             ignore: frozenset[str], dog: Watchdog) -> CaseResult:
    a, b = (Context(os.path.join(s.mnt, label)) for s in sides)
    probe_paths = sorted(set(op_paths(case.ops))) if probes else []

    trees: list[Tree] = []

    def compare() -> Difference | None:
        trees[:] = [snapshot(a.root, probes=probe_paths), snapshot(b.root, probes=probe_paths)]
        return diff(trees[0], trees[1], ignore)

    outcomes: list[Outcome] = []

    def fail(step: int, stage: str, d: Difference) -> CaseResult:
        return CaseResult(Failure(case, step, stage, d, outcomes=tuple(outcomes)))

    try:
        with dog.step():
            d = compare()
        if d:
            return fail(-1, "initial", d)
        for step, op in enumerate(case.ops):
            if dog.delay:
                time.sleep(dog.delay)
            with dog.step():
                oa, ob = op.run(a), op.run(b)
                d = compare() if oa == ob else None
            outcomes.append(oa)
            if dog.fired:
                return fail(step, "hang", Difference(str(op), "timeout", "", ""))
            if oa != ob:
                return fail(step, "result", Difference(str(op), "outcome", oa, ob))
            if d:
                return fail(step, "tree", d)
            with dog.step():  # the upper seen from outside, after each request: no lag
                d = diff(snapshot(os.path.join(sides[0].upper, label), upper=True),
                         snapshot(os.path.join(sides[1].upper, label), upper=True), ignore)
            if d:
                return fail(step, "upper-now", d)
    finally:
        a.close_all()
        b.close_all()
    ua, ub = (os.path.join(s.upper, label) for s in sides)
    if d := diff(snapshot(ua, upper=True), snapshot(ub, upper=True), ignore):
        return fail(len(case.ops), "upper", d)
    return CaseResult(None, case, trees[0], trees[1], tuple(outcomes))
