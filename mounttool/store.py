"""The store's root directory: where it is, its layout, its lock, and all-or-nothing changes.

Layout under the root (``--root``, ``MOUNTTOOL_ROOT``, ``/var/lib/mounttool`` as root,
``$XDG_DATA_HOME/mounttool`` otherwise)::

    lock                      flock: shared for readers, exclusive for writers
    tmp/                      staging on the same filesystem; emptied by each exclusive locker
    blobs/sha256/<hex>        content-addressed blobs (blobs.py)
    layers/sha256/<chain>/    unpacked layers by chain id (layerstore.py)
    images.json               the image catalogue (images.py)

A ``Transaction`` records everything a command creates, so that a failure removes it all and
leaves the store exactly as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from mounttool.errors import StoreError

log = logging.getLogger(__name__)
ENV_ROOT = "MOUNTTOOL_ROOT"


def default_root(environ: dict[str, str] | None = None) -> Path:
    """The store root when ``--root`` is not given."""
    env = os.environ if environ is None else environ
    if env.get(ENV_ROOT):
        return Path(env[ENV_ROOT])
    if os.geteuid() == 0:
        return Path("/var/lib/mounttool")
    data = env.get("XDG_DATA_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"),
                                                     ".local", "share")
    return Path(data) / "mounttool"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A file to write that appears at ``path`` only whole: written under a temporary name in
    the same directory, fsynced, then renamed over ``path``; removed if the block fails."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never a mix."""
    with atomic_output(path) as f:
        f.write(data)


def remove_path(path: Path) -> None:
    """Remove a file or a whole tree, without following symlinks; missing is fine."""
    from mounttool.fsutil import remove_tree
    remove_tree(path)


class Transaction:
    """Paths created by one command; ``rollback`` removes them newest first."""

    def __init__(self) -> None:
        self._created: list[Path] = []

    def created(self, path: Path) -> None:
        self._created.append(path)

    def rollback(self) -> None:
        for path in reversed(self._created):
            try:
                remove_path(path)
            except OSError as exc:
                log.warning("could not remove %s while rolling back: %s", path, exc)
        self._created.clear()


class Store:
    """A store root: paths and locking.  Sub-stores (blobs, layers, images) hang off it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.blobs_dir = root / "blobs"
        self.layers_dir = root / "layers"
        self.catalogue = root / "images.json"
        self.marker = root / "transaction"
        self._lock_fd: int | None = None
        self._exclusive = False
        self.recovery: Callable[[], None] | None = None
        """Called under the exclusive lock when a transaction was interrupted (kill, crash):
        it removes what that command had published but never recorded (images.py sets it)."""

    def ensure(self) -> None:
        try:
            for d in (self.root, self.tmp, self.blobs_dir / "sha256",
                      self.layers_dir / "sha256"):
                d.mkdir(mode=0o700 if d == self.root else 0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store at {self.root}: {exc.strerror}") from None

    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[Store]:
        """Hold the store lock; an exclusive holder also clears stale staging files."""
        self.ensure()
        if self._lock_fd is not None:
            if exclusive and not self._exclusive:
                raise StoreError("internal: cannot upgrade a shared store lock")
            yield self
            return
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("waiting for another mounttool command on %s", self.root)
                fcntl.flock(fd, mode)
            self._lock_fd, self._exclusive = fd, exclusive
            if exclusive:
                self._clear_tmp()
                self._recover()
            yield self
        finally:
            self._lock_fd, self._exclusive = None, False
            os.close(fd)

    def _clear_tmp(self) -> None:
        for entry in self.tmp.iterdir():
            log.debug("removing stale staging entry %s", entry)
            remove_path(entry)

    def _recover(self) -> None:
        if not self.marker.exists() or self.recovery is None:
            return
        log.warning("an earlier command on %s was interrupted; removing what it left",
                    self.root)
        self.recovery()
        self.marker.unlink()
        fsync_dir(self.root)

    def require_exclusive(self) -> None:
        if self._lock_fd is None or not self._exclusive:
            raise StoreError("internal: store changed without the exclusive lock")

    def mkdtemp(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """All-or-nothing: every path recorded is removed again if the block fails."""
        self.require_exclusive()
        txn = Transaction()
        atomic_write(self.marker, b"")
        try:
            yield txn
        except BaseException:
            txn.rollback()
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.marker.unlink()
