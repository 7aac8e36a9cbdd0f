"""Publishing copy-ups in the background: fsync, then rename into the upper layer.

A copy-up of a regular file is built in the work dir by the request that needs it; making it
durable (fsync: a journal commit, hundreds of microseconds) and giving it its upper name is
left to one worker thread, so the request is answered as soon as the copy exists.  Until its
name is published the node reaches the copy through an fd, so its data and attributes already
are the upper copy's.

The crash guarantee is the kernel's: the name appears in the upper layer only after the copy
is synced, so a crash leaves either no upper copy or a complete one (what is lost is a change
not yet published, like any change not yet synced).

Everything else in the upper layer waits: the upper :class:`~unionfs.layers.Layer` calls
:meth:`Publisher.settle` before it hands out its directory fd, so no listing, rename, unlink
or parent-time read ever sees the upper layer between a copy and its publication, and nothing
but the worker changes the upper layer while one is in flight.  An lstat (what lookups and
attribute reads do) waits only when a publication in flight is of that very path or into it.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from unionfs.layers import at, split
from unionfs.nodes import Key, Node
from unionfs.syscalls import RENAME_WHITEOUT, renameat2

QUEUE_LIMIT = 16
"""Copies waiting for publication at most; the next copy-up waits for the worker first (this
also bounds how long after the last change the upper directory is complete: a few fsyncs)."""


@dataclass(eq=False, slots=True)
class Publication:
    """One built copy waiting for its upper name."""

    node: Node
    tmp: bytes
    """Its name in the work dir."""
    rel: bytes
    """Its name in the upper layer."""
    fd: int
    """The node's fd on the copy (``node.fd`` until the publication is tidied away)."""
    key: Key
    """The copy's (device, inode)."""
    lower_layer: int
    """Where the node came from, to go back to if the publication fails."""
    sync_fd: int = -1
    """The worker's own fd on the copy (a dup), closed by the worker."""
    error: OSError | None = None
    """Set when the rename failed: the copy never got its upper name."""
    warnings: list[str] = field(default_factory=list)
    """What went wrong short of failing (a sync or a time restore), logged when tidied."""
    move_to: bytes | None = None
    """A rename that came right after the copy-up: once named, the copy moves here."""
    whiteout: bool = False
    """The move leaves a whiteout at ``rel`` (``RENAME_WHITEOUT``)."""
    move_error: OSError | None = None
    """Set when the move failed: the copy is named ``rel``; ``finish_move`` is then done."""
    finish_move: Callable[[], None] | None = None
    """The request's own way to make the move (with its fallbacks), run between requests."""
    paths: tuple[bytes, ...] = ()
    """The upper paths this publication changes (see ``Publisher.settle_name``)."""
    sealed: bool = False
    """The worker has named the copy and taken its move: too late to amend."""


class Publisher:
    """A worker thread that syncs built copies and renames them into the upper layer, in the
    order they were submitted."""

    def __init__(self, upper_fd: int, work_fd: int) -> None:
        self._upper_fd = upper_fd
        self._work_fd = work_fd
        self._cond = threading.Condition()
        self._queue: deque[Publication] = deque()
        self._busy = 0
        """Submitted and not yet finished (read without the lock: an int is read whole)."""
        self._done: list[Publication] = []
        self._names: dict[bytes, int] = {}
        """How many publications in flight change each upper path: their own names and the
        directories they are published in (whose times move until restored)."""
        self._closing = False
        self._current: Publication | None = None
        """The publication the worker is on."""
        self.last: Publication | None = None
        """The publication submitted last (a rename right after it may amend it)."""
        self._thread: threading.Thread | None = None
        """Started by the first submission: the daemon forks after the union is built, and a
        thread does not survive a fork."""

    @property
    def finished(self) -> bool:
        """Some publications finished and are waiting for :meth:`take_finished`."""
        return bool(self._done)

    def submit(self, pub: Publication) -> None:
        if self._thread is None:
            self._start()
        pub.sync_fd = os.dup(pub.fd)
        with self._cond:
            self._queue.append(pub)
            self._busy += 1
            self._watch(pub, (pub.rel, split(pub.rel)[0]))
            self.last = pub
            self._cond.notify_all()
        if self._busy > QUEUE_LIMIT:
            self.settle()

    def amend_move(self, pub: Publication, move_to: bytes, whiteout: bool,
                   finish_move: Callable[[], None]) -> bool:
        """Have ``pub``, once named, move to ``move_to`` (leaving a whiteout at its name if
        asked): both steps leave a complete state.  False if the worker has started it."""
        with self._cond:
            if pub.sealed or not (pub is self._current or pub in self._queue):
                return False
            pub.move_to, pub.whiteout, pub.finish_move = move_to, whiteout, finish_move
            self._watch(pub, (move_to, split(move_to)[0]))
            return True

    def _watch(self, pub: Publication, paths: tuple[bytes, ...]) -> None:
        """Count ``paths`` as changed by ``pub`` until it is finished (under the lock)."""
        pub.paths += paths
        for name in paths:
            self._names[name] = self._names.get(name, 0) + 1

    def settle(self) -> None:
        """Wait until every submitted copy is published (or has failed)."""
        if not self._busy:
            return
        with self._cond:
            while self._busy:
                self._cond.wait()

    def settle_name(self, rel: bytes) -> None:
        """Wait for the publications in flight if one changes what an lstat of ``rel`` shows
        (a dict lookup otherwise: lookups of other names need not wait)."""
        if self._busy and rel in self._names:
            self.settle()

    def take_finished(self) -> list[Publication]:
        """The publications finished since the last call (the caller tidies the nodes)."""
        with self._cond:
            done, self._done = self._done, []
        return done

    def close(self) -> None:
        """Publish what is pending and stop the worker."""
        self.settle()
        if self._thread is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def _start(self) -> None:
        # Stop signals must reach the request loop's thread, never this one: it starts with
        # every signal blocked (a thread inherits the mask of the thread that starts it).
        thread = threading.Thread(target=self._run, name="unionfs-publish", daemon=True)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._thread = thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                pub = self._current = self._queue.popleft()
            try:
                self._publish(pub)
            except BaseException as exc:  # never lose the thread: record it as a failure
                pub.error = exc if isinstance(exc, OSError) else OSError(errno.EIO, repr(exc))
            finally:
                try:
                    os.close(pub.sync_fd)
                except OSError as exc:  # never lose the thread: settle() would wait forever
                    pub.warnings.append(f"closing the copy of {pub.rel!r}: {exc.strerror}")
                with self._cond:
                    self._current = None
                    self._busy -= 1
                    for name in pub.paths:
                        left = self._names[name] - 1
                        if left:
                            self._names[name] = left
                        else:
                            del self._names[name]
                    self._done.append(pub)
                    self._cond.notify_all()

    def _publish(self, pub: Publication) -> None:
        try:
            os.fsync(pub.sync_fd)
        except OSError as exc:
            # The copy is complete in the page cache, so the mount still shows it; only its
            # durability is in doubt, as for any write whose writeback failed.
            pub.warnings.append(f"copy-up of {pub.rel!r} could not be synced: {exc.strerror}")
        parent = at(split(pub.rel)[0])
        upper = self._upper_fd
        times = os.stat(parent, dir_fd=upper)
        try:
            os.rename(pub.tmp, pub.rel, src_dir_fd=self._work_fd, dst_dir_fd=upper)
        except OSError as exc:
            pub.error = exc
            return
        try:
            # A copy-up is no change to the directory: keep its times, as the kernel does.
            os.utime(parent, ns=(times.st_atime_ns, times.st_mtime_ns), dir_fd=upper)
        except OSError as exc:
            pub.warnings.append(f"times of {parent!r} not restored after copy-up: "
                                f"{exc.strerror}")
        with self._cond:
            pub.sealed = True  # a rename asked for from here on waits and makes the move
        if pub.move_to is not None:
            try:
                renameat2(upper, pub.rel, upper, pub.move_to,
                          RENAME_WHITEOUT if pub.whiteout else 0)
            except OSError as exc:
                pub.move_error = exc
