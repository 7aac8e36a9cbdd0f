"""Helpers shared by the mounttool tests (a module name that cannot clash)."""

from __future__ import annotations

import os
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path under a store (except the lock and tmp/) with mode, size and content."""
    out: dict[str, tuple[int, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == "tmp" or rel_dir.startswith("tmp/"):
            continue
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel in ("lock", "tmp"):
                continue
            st = os.lstat(p)
            data = b""
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    data = f.read()
            out[rel] = (st.st_mode, st.st_size, data)
    return out
