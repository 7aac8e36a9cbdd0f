"""Starting and ending unionfs from another program: the ``--ready-fd`` handshake and the
workdir lock.

``python -m unionfs -f --ready-fd N ...`` writes one line to fd N once the mount is live.
:func:`wait_ready` is the other end: it waits for that line with a deadline (no sleeps, no
polling of /proc/mounts), and tells a mount that came up from one that died or hung.

A daemon holds an exclusive flock on its workdir until it has finished (its last copy-up
synced); :func:`lock_within` takes that lock with a deadline, to wait for a daemon to end.
"""

from __future__ import annotations

import fcntl
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


def lock_within(fd: int, timeout: float) -> bool:
    """flock ``fd`` exclusively, retrying until ``timeout`` seconds have passed; False if it
    stayed taken (flock has no timeout of its own)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
