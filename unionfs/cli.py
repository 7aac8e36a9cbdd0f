"""The ``unionfs`` command line, compatible with ``mount -t overlay`` and fuse-overlayfs:

    unionfs -o lowerdir=TOP:...:BOTTOM[,upperdir=U,workdir=W] [-f] [-d] MOUNTPOINT

An optional first positional (the "source", as ``mount.fuse3`` passes it) is accepted and
ignored, so ``mount -t fuse.unionfs unionfs MNT -o ...`` works.  Errors are one line on stderr
and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import sys

from unionfs import __version__
from unionfs.mount import MountError, serve
from unionfs.spec import SpecError, parse

EXIT_USAGE = 2
EXIT_FAILURE = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unionfs",
        description="Mount a union of read-only lower directories and one writable upper "
                    "directory, with kernel overlayfs semantics and on-disk format.",
        epilog="example: unionfs -o lowerdir=/img/top:/img/base,upperdir=/c/upper,"
               "workdir=/c/work /mnt/rootfs")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                        help="comma-separated: lowerdir=TOP:...:BOTTOM, upperdir=DIR, "
                             "workdir=DIR, ro, allow_other, userxattr, fsync=0, "
                             "copyup_sync=inline, timeout=SECS, writeback=1, debug, and the "
                             "usual mount flags (nosuid, nodev, noatime, ...)")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay in the foreground (default: daemonize once mounted)")
    parser.add_argument("-d", "--debug", action="store_true",
                        help="log every request (implies -f)")
    parser.add_argument("--ready-fd", type=int, metavar="FD",
                        help="write a line to FD once the mount is live")
    parser.add_argument("--version", action="version", version=f"unionfs {__version__}")
    parser.add_argument("paths", nargs="+", metavar="[SOURCE] MOUNTPOINT")
    return parser


def _configure_logging(debug: bool, foreground: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING
    if foreground:
        logging.basicConfig(level=level, format="unionfs: %(levelname)s %(name)s: %(message)s")
        return
    try:
        handler: logging.Handler = logging.handlers.SysLogHandler(address="/dev/log")
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("unionfs[%(process)d]: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.paths) > 2:
        parser.error("too many paths: give [SOURCE] MOUNTPOINT")
    mountpoint = args.paths[-1]
    options = list(args.options)
    if args.debug:
        options.append("debug")
    try:
        spec = parse(options, mountpoint)
    except SpecError as exc:
        print(f"unionfs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    foreground = args.foreground or spec.debug
    _configure_logging(spec.debug, foreground)
    for warning in spec.warnings:
        print(f"unionfs: warning: {warning}", file=sys.stderr)
    try:
        serve(spec, foreground=foreground, ready_fd=args.ready_fd)
    except (MountError, OSError) as exc:
        print(f"unionfs: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return 0
