"""The campaign driver behind ``scripts/difftest.py`` and the pytest entries.

``run_campaign`` generates the cases of a seed range, groups them by number of lowers into
batches (one pair of mounts per batch), runs them, shrinks each failure and returns the shrunk
failures plus any teardown problems.  ``main`` is the command line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from support.filesystems import PLACEMENTS, placement_missing

from .harness import Batch, Case, Failure, make_case
from .mounts import KernelOverlay, Mounter, MountError, Unionfs
from .report import format_failure
from .shrink import shrink


@dataclass
class Outcome:
    failures: list[Failure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    cases: int = 0
    steps: int = 0
    seconds: float = 0.0


def parse_seeds(text: str) -> list[int]:
    """``"0-299"``, ``"5"``, ``"1,4,10-12"`` -> a list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def batches(cases: Sequence[Case], size: int) -> list[list[Case]]:
    groups: dict[int, list[Case]] = {}
    for case in cases:
        groups.setdefault(len(case.stack.lowers), []).append(case)
    return [g[i:i + size] for _, g in sorted(groups.items()) for i in range(0, len(g), size)]


def run_campaign(
    cases: Sequence[Case], a: Mounter, b: Mounter, *, batch_size: int = 100,
    shrink_failures: bool = True, max_failures: int = 10, probes: bool = True,
    workdir: str | None = None, log: bool = False, ignore: frozenset[str] = frozenset(),
    cross: bool = True, delay: float = 0.0, placement: str = "one-fs",
) -> Outcome:
    start = time.monotonic()
    runner = Batch(a, b, workdir, ignore, cross=cross, delay=delay, placement=placement)
    out = Outcome(cases=len(cases))
    for group in batches(cases, batch_size):
        for failure in runner.run(group, probes=probes):
            if failure is None:
                continue
            if log:
                print(f"difftest: seed {failure.case.seed} differs ({failure.stage}: "
                      f"{failure.difference}); shrinking", file=sys.stderr, flush=True)
            if shrink_failures and failure.stage != "mount":
                failure = shrink(failure, lambda cs: runner.run(cs, probes=probes))
                again = runner.run([failure.case], probes=probes)[0]
                if again is None or again.signature() != failure.signature():
                    failure = failure._replace(
                        note="did not reproduce on a rerun: timing-dependent (cache timeouts?)")
            out.failures.append(failure)
            if len(out.failures) >= max_failures:
                break
        if len(out.failures) >= max_failures:
            break
    out.problems = runner.problems
    out.steps = runner.steps
    out.seconds = time.monotonic() - start
    return out


def summary(failures: Sequence[Failure]) -> list[str]:
    """One line per kind of difference: stage, field, the op at the failing step; with seeds."""
    kinds: dict[str, list[int]] = {}
    for f in failures:
        op = f.case.ops[f.step] if 0 <= f.step < len(f.case.ops) else None
        key = f"{f.stage:7} {f.difference.field:8} after {type(op).__name__ if op else '-'}"
        kinds.setdefault(key, []).append(f.case.seed)
    return [f"  {len(seeds):4}x {key}  seeds {', '.join(map(str, seeds[:8]))}"
            for key, seeds in sorted(kinds.items(), key=lambda kv: -len(kv[1]))]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Differential test: kernel overlayfs vs unionfs.")
    p.add_argument("--seeds", default="0-299", help="seed range/list, e.g. 0-5000 or 3,7,10-20")
    p.add_argument("--ops", type=int, default=30, help="operations per sequence")
    p.add_argument("--against", choices=("unionfs", "kernel"), default="unionfs",
                   help="side b: unionfs (default) or a second kernel overlay (self-test)")
    p.add_argument("--keep-ops", default=None,
                   help="replay only these op indices (comma list) of each seed's sequence")
    p.add_argument("--batch", type=int, default=100, help="cases per pair of mounts")
    p.add_argument("--max-failures", type=int, default=10)
    p.add_argument("--no-shrink", action="store_true")
    p.add_argument("--no-cross", action="store_true",
                   help="skip remounting each side's upper with the other implementation")
    p.add_argument("--no-probes", action="store_true", help="skip lstat of unlisted op paths")
    p.add_argument("--no-wh-names", action="store_true", help="no '.wh.*' names in layers")
    p.add_argument("--ignore", action="append", default=[], metavar="FIELD",
                   help="skip a compared field (mode, nlink, mtime, opaque, xattrs, links, ...) "
                        "or dir-FIELD for directories only, to look past a known difference; "
                        "repeatable")
    p.add_argument("--no-hardlinks", action="store_true",
                   help="no hardlinks in the generated layers (ops may still make some)")
    p.add_argument("--step-delay", type=float, default=0.0, metavar="SECONDS",
                   help="wait before each op so the kernel's FUSE entry/attr caches expire "
                        "(replays timing-dependent differences; slow)")
    p.add_argument("--workdir", default=None, help="where the layer copies go (default /tmp)")
    p.add_argument("--placement", choices=PLACEMENTS, default="one-fs",
                   help="lower and upper on one filesystem, or on two (a tmpfs, a loop ext4)")
    return p


def terminate(signum: int, _frame: object) -> None:
    """SIGTERM/SIGHUP (``timeout``, a cancelled CI job) unwind like Ctrl-C: mounts come down."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, terminate)
    args = build_parser().parse_args(argv)
    if missing := placement_missing(args.placement):
        print(f"difftest: {missing}", file=sys.stderr)
        return 2
    cases = [make_case(s, args.ops, wh_names=not args.no_wh_names,
                       hardlinks=not args.no_hardlinks) for s in parse_seeds(args.seeds)]
    if args.keep_ops is not None:
        keep = [int(i) for i in args.keep_ops.split(",") if i.strip()]
        cases = [c.with_ops(keep) for c in cases]
    b: Mounter = Unionfs() if args.against == "unionfs" else KernelOverlay(name="kernel-b")
    kernel = KernelOverlay()
    try:
        out = run_campaign(
            cases, kernel, b, batch_size=args.batch,
            shrink_failures=not args.no_shrink, max_failures=args.max_failures,
            probes=not args.no_probes, workdir=args.workdir, log=True,
            ignore=frozenset(args.ignore), cross=not args.no_cross,
            delay=args.step_delay, placement=args.placement,
        )
    except MountError as exc:
        print(f"difftest: cannot mount: {exc}", file=sys.stderr)
        return 2
    flags = "".join(f" --ignore {f}" for f in args.ignore)
    flags += " --no-wh-names" if args.no_wh_names else ""
    flags += " --no-hardlinks" if args.no_hardlinks else ""
    flags += " --no-cross" if args.no_cross else ""
    flags += f" --step-delay {args.step_delay}" if args.step_delay else ""
    flags += f" --placement {args.placement}" if args.placement != "one-fs" else ""
    for failure in out.failures:
        print(format_failure(failure, nops=args.ops, against=args.against, flags=flags),
              flush=True)
    for problem in out.problems:
        print(f"PROBLEM {problem}")
    if len(out.failures) > 1:
        print("difftest: kinds of difference found:")
        print("\n".join(summary(out.failures)))
    index = "index=on" if kernel.index else "index=off (kernel refused index=on)"
    print(f"difftest: {out.cases} sequences x {args.ops} ops, kernel ({index}) vs "
          f"{args.against}: {len(out.failures)} differences, {len(out.problems)} problems, "
          f"{out.steps} steps in {out.seconds:.1f}s")
    return 1 if out.failures or out.problems else 0
