"""Copy-ups named at once, synced in the background, and recovered after a crash.

The kernel fsyncs every copy-up before it renames it into the upper layer, so a name in the
upper layer never has partial data.  That fsync (a journal commit) costs more than the rest of a
chmod.  unionfs keeps both the guarantee and the upper layer current without waiting for it:

1. the request builds the copy in the work dir (data, owner, mode, xattrs, times);
2. it writes a *pending record* for the copy: one ``fsetxattr`` on a slot file of
   ``WORKDIR/unionfs-pending/`` (boot id, upper path, upper inode and file handle, the lower
   file's path, size and mtime);
3. it renames the copy into the upper layer and answers: the upper directory seen from outside
   (``podman diff``, backup tools, kernel overlayfs after the unmount) is current at once;
4. a worker thread fsyncs the copy, then clears the record and frees the slot.

Journaling filesystems (ext4, xfs) commit metadata changes in order, so the record is on disk
no later than the rename.  At the next mount :meth:`Syncer.recover` reads what is left: after a
crash of the daemon alone (same boot) the data is in the page cache, and a ``syncfs`` of the
upper makes it durable; after a power loss (another boot id) the data of each recorded copy is
written again from its lower file, if that file is unchanged (else the copy is reported).  What
can be lost is what any unsynced change can lose; what cannot happen is an upper name whose
data is neither the lower file's nor a later write's.

``fsync``/``fsyncdir`` through the mount, the unmount, and a full pool of slots wait for the
worker (:meth:`settle`).  Where a record cannot be written (a work dir without xattrs, a record
too long for one) the copy is synced inline before its rename, as the kernel does.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from unionfs.filehandles import OverlayHandle, decode, handle_of, open_handle
from unionfs.layers import at
from unionfs.syscalls import syncfs

log = logging.getLogger(__name__)

QUEUE_LIMIT = 64
"""Copies waiting for their fsync at most (one slot file and one fd each); the next copy-up
waits for the worker first."""

PENDING_DIR = b"unionfs-pending"
_VERSION = b"unionfs-pending-1"


def sync_copy(fd: int) -> None:
    """The worker's fsync of one copy (tests hold it to look at the state in between)."""
    os.fsync(fd)


def boot_id() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return f.read().strip()
    except OSError:
        return b"unknown"


@dataclass(frozen=True, slots=True)
class Record:
    """What a slot says about a copy whose data may not be on disk yet."""

    boot: bytes
    rel: bytes
    """The copy's path in the upper layer when it was made."""
    ino: int
    handle: OverlayHandle | None
    """The copy's file handle in the upper filesystem (finds it after a rename)."""
    lower: bytes
    """The absolute path of the lower file it was copied from."""
    size: int
    mtime_ns: int

    def encode(self) -> bytes:
        handle = self.handle.encode().hex().encode() if self.handle else b""
        return b"\0".join([_VERSION, self.boot, self.rel, b"%d" % self.ino, handle, self.lower,
                           b"%d" % self.size, b"%d" % self.mtime_ns])

    @classmethod
    def decode(cls, raw: bytes) -> Record | None:
        parts = raw.split(b"\0")
        if len(parts) != 8 or parts[0] != _VERSION:
            return None
        try:
            handle = decode(bytes.fromhex(parts[4].decode())) if parts[4] else None
            return cls(parts[1], parts[2], int(parts[3]), handle, parts[5], int(parts[6]),
                       int(parts[7]))
        except ValueError:
            return None


@dataclass(eq=False, slots=True)
class _Pending:
    slot: int
    fd: int
    """The worker's own fd on the copy (closed by the worker)."""
    rel: bytes


class Syncer:
    """The pool of pending-record slots and the worker that fsyncs copies and clears them."""

    def __init__(self, workdir_fd: int, upper_fd: int, xattr: bytes) -> None:
        self._upper_fd = upper_fd
        self.xattr = xattr
        """The record's xattr name (``trusted.unionfs.pending``, ``user.`` when unprivileged)."""
        try:
            os.mkdir(PENDING_DIR, 0o700, dir_fd=workdir_fd)
            os.fsync(workdir_fd)
        except FileExistsError:
            pass
        self._dir_fd = os.open(PENDING_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                               dir_fd=workdir_fd)
        self._slots: list[int] = []
        """An fd on each slot file (O_RDONLY is enough for fsetxattr)."""
        self._boot = boot_id()
        self._cond = threading.Condition()
        self._free: list[int] = []
        self._queue: deque[_Pending] = deque()
        self._busy = 0
        """Submitted and not yet synced (read without the lock: an int is read whole)."""
        self._closing = False
        self._thread: threading.Thread | None = None
        """Started by the first submission: the daemon forks after the union is built, and a
        thread does not survive a fork."""
        self.recordable = True
        """False once the work dir refused a record: every copy is then synced inline."""

    # -- the pool ---------------------------------------------------------------------------

    def _open_slots(self) -> None:
        created = False
        for i in range(QUEUE_LIMIT):
            name = b"slot-%d" % i
            try:
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self._dir_fd)
            except FileNotFoundError:
                fd = os.open(name, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                             0o600, dir_fd=self._dir_fd)
                created = True
            self._slots.append(fd)
        if created:
            os.fsync(self._dir_fd)
        self._free = list(range(QUEUE_LIMIT - 1, -1, -1))

    def record(self, copy_fd: int, rel: bytes, lower: bytes, size: int,
               mtime_ns: int) -> int | None:
        """Write the pending record of the copy open as ``copy_fd`` (to be named ``rel``);
        returns its slot, or None when no record can be written (sync the copy inline)."""
        if not self.recordable:
            return None
        if not self._slots:
            self._open_slots()
        with self._cond:
            while not self._free:
                self._cond.wait()
            slot = self._free.pop()
        st = os.fstat(copy_fd)
        try:
            handle: OverlayHandle | None = handle_of(copy_fd)
        except OSError:
            handle = None
        raw = Record(self._boot, rel, st.st_ino, handle, lower, size, mtime_ns).encode()
        try:
            os.setxattr(self._slots[slot], self.xattr, raw)
        except OSError as exc:
            self._release(slot)
            if exc.errno in (errno.ENOTSUP, errno.EPERM):
                log.warning("the work dir cannot hold pending records (%s): copy-ups are "
                            "synced before they are named", exc.strerror)
                self.recordable = False
            elif exc.errno not in (errno.ENOSPC, errno.E2BIG, errno.ERANGE):
                raise
            return None
        return slot

    def cancel(self, slot: int) -> None:
        """The copy recorded in ``slot`` never got its name: clear the record."""
        try:
            os.removexattr(self._slots[slot], self.xattr)
        finally:
            self._release(slot)

    def _release(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify_all()

    def submit(self, slot: int, copy_fd: int, rel: bytes) -> None:
        """Have the worker fsync the copy open as ``copy_fd`` (named now), then clear ``slot``.
        """
        if self._thread is None:
            self._start()
        pending = _Pending(slot, os.dup(copy_fd), rel)
        with self._cond:
            self._queue.append(pending)
            self._busy += 1
            self._cond.notify_all()

    def settle(self) -> None:
        """Wait until every copy submitted so far is synced."""
        if not self._busy:
            return
        with self._cond:
            while self._busy:
                self._cond.wait()

    def close(self) -> None:
        """Sync what is pending and stop the worker."""
        self.settle()
        if self._thread is not None:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join()
        for fd in self._slots:
            os.close(fd)
        self._slots = []
        os.close(self._dir_fd)

    # -- the worker -------------------------------------------------------------------------

    def _start(self) -> None:
        # Stop signals must reach the request loop's thread, never this one: it starts with
        # every signal blocked (a thread inherits the mask of the thread that starts it).
        thread = threading.Thread(target=self._run, name="unionfs-sync", daemon=True)
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
                pending = self._queue.popleft()
            free = False
            try:
                free = self._sync(pending)
            except BaseException as exc:  # never lose the thread: settle() would wait forever
                log.error("syncing the copy-up of %r: %r", pending.rel, exc)
            finally:
                with self._cond:
                    self._busy -= 1
                    if free:  # else the record stays for the next mount (the slot is lost)
                        self._free.append(pending.slot)
                    self._cond.notify_all()

    def _sync(self, pending: _Pending) -> bool:
        """fsync a copy and clear its record; False if the record must stay."""
        try:
            sync_copy(pending.fd)
        except OSError as exc:
            # The copy stays recorded: the next mount syncs or rewrites it.
            log.error("copy-up of %r could not be synced: %s", pending.rel, exc.strerror)
            return False
        finally:
            os.close(pending.fd)
        try:
            os.removexattr(self._slots[pending.slot], self.xattr)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                log.warning("clearing the pending record of %r: %s", pending.rel, exc.strerror)
                return False
        return True

    # -- recovery ---------------------------------------------------------------------------

    def recover(self, copy_data: Callable[[int, int, os.stat_result], None]) -> int:
        """Make durable what an earlier daemon left pending; returns how many records it found.

        ``copy_data(src_fd, dst_fd, st)`` writes a lower file's data again (after a power loss).
        """
        records = []
        for name in os.listdir(self._dir_fd):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self._dir_fd)
            except OSError:
                continue
            try:
                raw = os.getxattr(fd, self.xattr)
            except OSError:
                os.close(fd)
                continue
            records.append((fd, Record.decode(raw)))
        if not records:
            return 0
        for _, rec in records:
            if rec is not None and rec.boot != self._boot:  # a power loss, or a reboot
                self._rewrite(rec, copy_data)
        syncfs(self._upper_fd)  # same boot: the page cache has it all; now the disk does
        for fd, _ in records:
            try:
                os.removexattr(fd, self.xattr)
            finally:
                os.close(fd)
        log.info("recovered %d copy-ups an earlier mount had not synced", len(records))
        return len(records)

    def _find(self, rec: Record) -> int | None:
        """An O_RDWR fd on the recorded copy, wherever it is now; None if it is gone."""
        if rec.handle is not None:
            try:
                path_fd = open_handle(self._upper_fd, rec.handle)
            except OSError:
                path_fd = -1
            if path_fd >= 0:
                try:
                    return os.open(b"/proc/self/fd/%d" % path_fd, os.O_RDWR | os.O_CLOEXEC)
                except OSError:
                    return None
                finally:
                    os.close(path_fd)
        try:
            fd = os.open(at(rec.rel), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=self._upper_fd)
        except OSError:
            return None
        if os.fstat(fd).st_ino != rec.ino:
            os.close(fd)
            return None
        return fd

    def _rewrite(self, rec: Record, copy_data: Callable[[int, int, os.stat_result], None]) -> None:
        fd = self._find(rec)
        if fd is None:
            return  # removed (or replaced) since: nothing of it is left to repair
        try:
            try:
                src = os.open(rec.lower, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                log.error("copy-up of %r may be incomplete after a crash, and its lower file "
                          "%r is gone: %s", rec.rel, rec.lower, exc.strerror)
                return
            try:
                st = os.fstat(src)
                if (st.st_size, st.st_mtime_ns) != (rec.size, rec.mtime_ns):
                    log.error("copy-up of %r may be incomplete after a crash, and its lower file "
                              "%r has changed since: not repaired", rec.rel, rec.lower)
                    return
                mode = os.fstat(fd)
                copy_data(src, fd, st)
                os.ftruncate(fd, st.st_size)
                os.utime(fd, ns=(mode.st_atime_ns, mode.st_mtime_ns))
                os.fsync(fd)
                log.warning("copy-up of %r written again from %r after a crash", rec.rel,
                            rec.lower)
            finally:
                os.close(src)
        finally:
            os.close(fd)
