"""Human-readable reproducers: the seed, the shrunk op list, the first differing field, the
layer entries the ops touch, and the command that replays exactly this sequence."""

from __future__ import annotations

from .harness import Failure, op_paths
from .model import Dir, File, Hardlink, Layer, Node, Symlink, Whiteout


def describe_node(node: Node) -> str:
    if isinstance(node, Whiteout):
        return "whiteout (char 0/0)"
    if isinstance(node, Hardlink):
        return f"hardlink to {node.target!r}"
    meta = node.meta
    text = f"{oct(meta.mode)} {meta.uid}:{meta.gid}"
    if meta.xattrs:
        text += " xattrs=" + ",".join(name for name, _ in meta.xattrs)
    if isinstance(node, File):
        text = f"file size={node.size} {text}"
    elif isinstance(node, Dir):
        text = f"dir {text}" + (" OPAQUE" if node.opaque else "")
    elif isinstance(node, Symlink):
        text = f"symlink -> {node.target!r}"
    else:
        text = f"fifo {text}"
    return text


def related(path: str, wanted: set[str]) -> bool:
    """``path`` is one of ``wanted``, an ancestor of one, or a direct child of one."""
    return any(path == w or w.startswith(path + "/") or path.rpartition("/")[0] == w
               for w in wanted)


def describe_layer(name: str, layer: Layer, wanted: set[str]) -> list[str]:
    wanted = wanted | {n.target for p, n in layer.items()
                       if isinstance(n, Hardlink) and related(p, wanted)}
    lines = []
    for path in sorted(layer):
        node = layer[path]
        if related(path, wanted) or (isinstance(node, Hardlink) and related(node.target, wanted)):
            lines.append(f"    {name}: {path!r}: {describe_node(node)}")
    return lines


def format_failure(failure: Failure, *, nops: int, against: str, flags: str = "") -> str:
    case = failure.case
    stack = case.stack
    stage = {
        "cross-a": "the kernel's final tree != b mounting the kernel's layers+upper+workdir",
        "cross-b": "b's final tree != the kernel mounting b's layers+upper+workdir",
    }.get(failure.stage, failure.stage)
    lines = [
        f"DIFFERENCE seed={case.seed} lowers={len(stack.lowers)} "
        f"upper={'pre-populated' if stack.upper else 'empty'} stage={stage} "
        f"step={failure.step}",
        f"  first difference: {failure.difference}",
        *([f"  NOTE: {failure.note}"] if failure.note else []),
        f"  sequence ({len(case.ops)} ops; 'a' is the kernel, 'b' is {against}):",
    ]
    for i, op in enumerate(case.ops):
        mark = "  <-- differs here" if i == failure.step else ""
        if i < len(failure.outcomes) and i != failure.step:
            err, value = failure.outcomes[i]
            mark = f"  -> {err or 'ok'}" + (f" {value!r}" if value is not None else "")
        lines.append(f"    [{case.keep[i]}] {op}{mark}")
    wanted = set(op_paths(case.ops))
    if failure.stage not in ("result", "hang", "mount"):
        wanted.add(failure.difference.path)
    layers = [("upper", stack.upper)] if stack.upper else []
    layers += [(f"lower{i}", layer) for i, layer in enumerate(stack.lowers)]
    lines.append("  layer entries on those paths (lower0 is the top lower):")
    for name, layer in layers:
        lines.extend(describe_layer(name, layer, wanted))
    keep = ",".join(str(i) for i in case.keep)
    lines.append(f"  replay: python scripts/difftest.py --against {against} --seeds {case.seed} "
                 f"--ops {nops} --keep-ops={keep}{flags}")
    return "\n".join(lines)
