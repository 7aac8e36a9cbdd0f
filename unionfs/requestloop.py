"""The request loop: read a FUSE request, answer it, read the next, with nothing in between.

pyfuse3's loop waits for each request through trio: ``trio.Lock`` plus ``wait_readable`` cost
an ``epoll_ctl`` and two ``epoll_wait`` calls and two scheduler passes per request, on top of
the ``read`` and ``writev`` that are the real work: three extra system calls for every FUSE
request, a third of a warm round trip.  Our handlers never suspend (every operation is
synchronous) and the mount serves one request at a time, so there is nothing for trio to
schedule between requests: this module lets the loop block in ``read(2)`` on ``/dev/fuse``
directly, as libfuse's own single-threaded loop and fuse-overlayfs do.

The one thing trio did for us there was waking the loop for stop signals.  Here the stop
signals get a plain handler that records the stop and makes sure a blocked ``read`` returns:
signals interrupt it (Python installs handlers without ``SA_RESTART``), and a short interval
timer repeats the interruption in case the signal landed between the stop check and the
``read``.  pyfuse3 then calls the waiter again, which reports the stop.

The hook is ``pyfuse3._wait_fuse_readable``, which pyfuse3's loop looks up as a module global
on every request (pyfuse3 3.x).  If a pyfuse3 version lacks it, :func:`install` says so and
the mount runs on pyfuse3's own loop.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from types import FrameType

import pyfuse3

_HOOK = "_wait_fuse_readable"
_REPEAT_SECONDS = 0.05


class StopSignals:
    """Records a stop signal and keeps interrupting a blocked ``read`` until the loop ends."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            signal.setitimer(signal.ITIMER_REAL, _REPEAT_SECONDS, _REPEAT_SECONDS)

    def install(self, signums: Iterable[int]) -> None:
        for signum in signums:
            signal.signal(signum, self.handle)
        signal.signal(signal.SIGALRM, _interrupt_only)

    def restore(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _interrupt_only(signum: int, frame: FrameType | None) -> None:
    """SIGALRM exists to make a blocked ``read`` return EINTR; nothing else to do."""


def install(stops: StopSignals) -> bool:
    """Make pyfuse3's loop read requests back to back; False if this pyfuse3 has no hook."""
    if not hasattr(pyfuse3, _HOOK):
        return False

    async def ready_for_next_request() -> bool:
        return stops.signum is None

    setattr(pyfuse3, _HOOK, ready_for_next_request)
    return True
