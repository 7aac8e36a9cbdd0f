#!/usr/bin/env python3
"""Differential test campaign: kernel overlayfs vs unionfs on random trees and op sequences.

    python scripts/difftest.py --seeds 0-5000 --ops 60       # a long campaign
    python scripts/difftest.py --against kernel              # self-test of the harness
    python scripts/difftest.py --seeds 17 --ops 60 --keep-ops=3,9,12   # replay a reproducer

Needs root (kernel overlay mounts, trusted xattrs, mknod) and /dev/fuse.  Exit status 0 when
no difference was found.  See tests/differential/__init__.py for what is compared.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support

from tests.differential.runner import main

if __name__ == "__main__":
    sys.exit(main())
