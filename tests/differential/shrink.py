"""Delta debugging: the shortest op sequence that still fails the same way.

Classic ddmin over the failing case's operations (the tree stays the seed's): split the ops in
``n`` chunks, try every complement (and, for small ``n``, every chunk), keep the first that
still fails with the same :meth:`Failure.signature`, else refine.  All candidates of a round run
in one batch (one pair of mounts), so shrinking costs a few mounts, not hundreds.  Ops after the
failing step are dropped first: they cannot matter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .harness import Case, Failure

RunMany = Callable[[Sequence[Case]], list[Failure | None]]


def cut(failure: Failure) -> list[int]:
    """The case's op indices up to and including the failing step."""
    return list(failure.case.keep[: failure.step + 1])


def shrink(failure: Failure, run_many: RunMany, *, max_rounds: int = 60) -> Failure:
    """Return the smallest failure found with the same signature as ``failure``."""
    best = failure
    keep = cut(failure)
    if len(keep) < len(failure.case.ops):
        first = run_many([failure.case.with_ops(keep)])[0]
        if first is not None and first.signature() == failure.signature():
            best = first
            keep = cut(first)
    n = 2
    for _ in range(max_rounds):
        if len(keep) <= 1:
            break
        n = min(n, len(keep))
        size = -(-len(keep) // n)
        chunks = [keep[i:i + size] for i in range(0, len(keep), size)]
        candidates = [[i for c in chunks[:j] + chunks[j + 1:] for i in c]
                      for j in range(len(chunks))]
        if len(chunks) <= 3:
            candidates = [*chunks, *candidates]
        candidates = [c for c in candidates if c]
        results = run_many([failure.case.with_ops(c) for c in candidates])
        hit = next((r for r in results if r is not None
                    and r.signature() == failure.signature()), None)
        if hit is not None:
            best = hit
            keep = cut(hit)
            n = max(n - 1, 2)
            continue
        if n >= len(keep):
            break
        n = min(len(keep), 2 * n)
    return best
