"""Progress for pull and push: live per-layer bars on a terminal, plain lines otherwise.

``TTYProgress`` redraws one line per layer plus a total (at most ten times a second);
``LineProgress`` prints a line when a layer starts and when it ends, for logs and pipes;
``QuietProgress`` (``-q``) prints nothing.  All are safe to call from download threads.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Protocol, TextIO


class Progress(Protocol):
    def start(self, key: str, total: int, note: str, done: int = 0) -> None: ...

    def advance(self, key: str, n: int) -> None: ...

    def finish(self, key: str, note: str) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}GB"


class QuietProgress:
    def start(self, key: str, total: int, note: str, done: int = 0) -> None:
        pass

    def advance(self, key: str, n: int) -> None:
        pass

    def finish(self, key: str, note: str) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress:
    """One line per event: ``<id>: Downloading 1.2MB`` ... ``<id>: Pull complete``."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._lock = threading.Lock()

    def _print(self, text: str) -> None:
        with self._lock:
            self.out.write(text + "\n")
            self.out.flush()

    def start(self, key: str, total: int, note: str, done: int = 0) -> None:
        if note == "Waiting":
            return
        extra = f" (resuming at {human(done)})" if done else ""
        self._print(f"{key}: {note} {human(total)}{extra}")

    def advance(self, key: str, n: int) -> None:
        pass

    def finish(self, key: str, note: str) -> None:
        self._print(f"{key}: {note}")

    def message(self, text: str) -> None:
        self._print(text)

    def close(self) -> None:
        pass


@dataclass(slots=True)
class _Row:
    note: str
    done: int
    total: int


class TTYProgress:
    """Redrawn bars: one per layer, then the total."""

    WIDTH = 30

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._lock = threading.Lock()
        self._rows: dict[str, _Row] = {}
        self._drawn = 0
        self._last = 0.0

    def start(self, key: str, total: int, note: str, done: int = 0) -> None:
        with self._lock:
            self._rows[key] = _Row(note, done, total)
            self._draw(force=True)

    def advance(self, key: str, n: int) -> None:
        with self._lock:
            row = self._rows.get(key)
            if row is not None:
                row.done += n
            self._draw(force=False)

    def finish(self, key: str, note: str) -> None:
        with self._lock:
            row = self._rows.setdefault(key, _Row(note, 0, 0))
            row.note, row.done = note, row.total
            self._draw(force=True)

    def message(self, text: str) -> None:
        with self._lock:
            self._clear()
            self.out.write(text + "\n")
            self._drawn = 0
            self._draw(force=True)

    def close(self) -> None:
        with self._lock:
            self._draw(force=True)

    def _clear(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F")
            self.out.write("\x1b[J")

    def _line(self, key: str, note: str, done: int, total: int) -> str:
        if total <= 0 or done >= total or note not in ("Downloading", "Uploading"):
            return f"{key}: {note}"
        filled = self.WIDTH * done // total
        bar = "=" * filled + (">" if filled < self.WIDTH else "") + " " * (self.WIDTH - filled - 1)
        return f"{key}: {note:<12} [{bar}] {human(done)}/{human(total)}"

    def _draw(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        self._clear()
        lines = [self._line(k, r.note, r.done, r.total) for k, r in self._rows.items()]
        if self._rows:
            done = sum(r.done for r in self._rows.values())
            total = sum(r.total for r in self._rows.values())
            lines.append(f"total: {human(done)}/{human(total)}")
        for line in lines:
            self.out.write(line + "\n")
        self._drawn = len(lines)
        self.out.flush()


def make_progress(quiet: bool, out: TextIO | None = None) -> Progress:
    """The right display for ``out`` (stdout by default): bars on a TTY, lines otherwise."""
    stream = out or sys.stdout
    if quiet:
        return QuietProgress()
    if stream.isatty():
        return TTYProgress(stream)
    return LineProgress(stream)
