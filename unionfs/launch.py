"""Starting unionfs from another program: the ``--ready-fd`` handshake.

``python -m unionfs -f --ready-fd N ...`` writes one line to fd N once the mount is live.
:func:`wait_ready` is the other end: it waits for that line with a deadline (no sleeps, no
polling of /proc/mounts), and tells a mount that came up from one that died or hung.
"""

from __future__ import annotations

import os
import select
import time


def wait_ready(fd: int, timeout: float) -> bool:
    """True once a line arrives on ``fd``; False on EOF (the daemon died) or at the deadline."""
    deadline = time.monotonic() + timeout
    got = b""
    while b"\n" not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            return False
        chunk = os.read(fd, 4096)
        if not chunk:
            return bool(got)
        got += chunk
    return True
