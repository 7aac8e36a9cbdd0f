"""Serving a union: open the layers, mount with FUSE, run the trio loop, unmount.

The layers are opened *before* the mount exists, so the union reaches them through file
descriptors even when the mountpoint covers one of them.  The mount is live when
``pyfuse3.init`` returns: that is when ``--ready-fd`` is told and when a background daemon
detaches from its parent.  SIGTERM, SIGINT and SIGHUP end the loop and unmount.
"""

from __future__ import annotations

import logging
import os
import resource
import signal

import pyfuse3
import trio

from unionfs import cachedir, requestloop
from unionfs.core import UnionFS
from unionfs.operations import Operations
from unionfs.spec import MountSpec

log = logging.getLogger(__name__)


class MountError(Exception):
    """The mount could not be made; the message is one line for the user."""


def fuse_options(spec: MountSpec) -> set[str]:
    options = set(pyfuse3.default_options)  # default_permissions: the kernel checks access
    options |= {"fsname=unionfs", "subtype=unionfs"}
    if spec.allow_other:
        options.add("allow_other")
    if spec.read_only:
        options.add("ro")
    if spec.debug:
        options.add("debug")
    if os.geteuid() == 0:
        # Like kernel overlayfs (and unlike libfuse's default), a root mount honours device
        # nodes and set-ID bits: a container rootfs needs both.  nodev/nosuid still apply.
        flags = set(spec.fuse_flags)
        options.update(flag for flag, opposite in (("dev", "nodev"), ("suid", "nosuid"))
                       if opposite not in flags)
    options.update(spec.fuse_flags)
    return options


def raise_fd_limit() -> None:
    """Use the hard fd limit: one daemon serves every open file of the mount."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def check_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse does not exist: load the fuse module (modprobe fuse) "
                         "or run where FUSE is available")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise MountError("/dev/fuse is not readable and writable by this user")


def daemonize() -> None:
    """Detach from the terminal once the mount is live (the parent exits 0)."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


async def _serve_with_trio_signals() -> None:
    """pyfuse3's own loop; stop signals come through trio (the fallback loop)."""
    async with trio.open_nursery() as nursery:
        async def watch_signals() -> None:
            with trio.open_signal_receiver(*_STOP_SIGNALS) as sigs:
                # Held back since before the mount went live; any that came are handled now.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
                async for signum in sigs:
                    log.info("signal %d: unmounting", signum)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(watch_signals)
        await pyfuse3.main(min_tasks=1, max_tasks=1)
        nursery.cancel_scope.cancel()


def _run_loop() -> None:
    stops = requestloop.StopSignals()
    if not requestloop.install(stops):
        log.warning("this pyfuse3 has no request-loop hook: using its own (slower) loop")
        trio.run(_serve_with_trio_signals)
        return
    stops.install(_STOP_SIGNALS)
    # Held back since before the mount went live; any that came are handled now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    try:
        trio.run(pyfuse3.main, 1, 1)
    finally:
        stops.restore()
    if stops.signum is not None:
        log.info("signal %d: unmounting", stops.signum)
    log.debug("%d directory listings left to the kernel's cache", cachedir.replies())


def serve(spec: MountSpec, foreground: bool, ready_fd: int | None = None) -> None:
    """Mount ``spec`` and serve it until it is unmounted or signalled."""
    check_fuse()
    raise_fd_limit()
    os.umask(0)
    fs = UnionFS(spec)
    ops = Operations(fs)
    # A stop signal between the mount going live and the loop running would kill the daemon
    # and leave a dead mount behind: hold such signals until the loop can unmount cleanly.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        pyfuse3.init(ops, os.fsdecode(spec.mountpoint), fuse_options(spec))
    except RuntimeError as exc:
        fs.close()
        raise MountError(f"cannot mount on '{os.fsdecode(spec.mountpoint)}': {exc}") from None
    if not foreground:
        daemonize()
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    try:
        _run_loop()
    finally:
        pyfuse3.close(unmount=True)
        fs.close()
