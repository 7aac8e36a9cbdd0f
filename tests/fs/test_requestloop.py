"""The request loop hook, in-process (the real loop is exercised by every mount test)."""

from __future__ import annotations

import signal

import pyfuse3
import pytest
import trio

from unionfs import requestloop


def test_the_hook_reports_ready_until_a_stop_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyfuse3, "_wait_fuse_readable", None, raising=False)
    stops = requestloop.StopSignals()
    previous = signal.getsignal(signal.SIGALRM)
    stops.install([])  # only the SIGALRM no-op: the test's own signals stay as they are
    assert requestloop.install(stops)
    wait = pyfuse3._wait_fuse_readable  # type: ignore[attr-defined]
    assert trio.run(wait) is True
    try:
        stops.handle(signal.SIGTERM, None)
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0  # keeps interrupting read(2)
        assert trio.run(wait) is False
    finally:
        stops.restore()
        signal.signal(signal.SIGALRM, previous)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_without_the_hook_pyfuse3_keeps_its_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(pyfuse3, "_wait_fuse_readable", raising=False)
    assert not requestloop.install(requestloop.StopSignals())
    assert not hasattr(pyfuse3, "_wait_fuse_readable")
