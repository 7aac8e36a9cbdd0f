"""The ``mounttool`` command: argparse wiring and printing; the work is in library modules.

Every command is a small ``cmd_<name>(args) -> int``.  ``main`` is the one error boundary: a
MountToolError or OSError becomes one line on stderr and a non-zero exit code; anything else is
a bug, reported in one line too (the traceback with ``--debug``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, cast

from mounttool import cli_containers, cli_registry, imageops
from mounttool.containers import Containers
from mounttool.display import ago, human_size, render, short_id, table, truncate
from mounttool.errors import MountToolError, NotFoundError, UsageError, run_reported
from mounttool.formats.save import FORMATS, SaveItem, save
from mounttool.images import Catalogue, ImageInfo, ImageStore
from mounttool.ingest import import_path, load_path
from mounttool.refs import Reference, parse_reference, parse_tagged
from mounttool.store import Store, default_root

log = logging.getLogger("mounttool")
Handler = Callable[[argparse.Namespace], int]


def _images(args: argparse.Namespace) -> ImageStore:
    return ImageStore(Store(args.root))


def cmd_load(args: argparse.Namespace) -> int:
    src = args.input or args.input_file or "-"
    for item in load_path(_images(args), Path(src)):
        for name, old in item.replaced:
            print(f"The image {parse_reference(name).familiar} already exists, renaming the "
                  f"old one with ID {old} to empty string", file=sys.stderr)
        if args.quiet:
            continue
        for name in item.names:
            print(f"Loaded image: {parse_reference(name).familiar}")
        if not item.names:
            print(f"Loaded image ID: {item.id}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    names = [str(parse_tagged(args.ref))] if args.ref else []
    loaded = import_path(_images(args), Path(args.source), names, args.message or "")
    print(loaded.id)
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    images = _images(args)
    dest = args.output or "-"
    if dest == "-" and (args.format == "oci-dir" or sys.stdout.isatty()):
        raise UsageError("save: give -o (refusing to write an archive to a terminal)")
    with images.store.locked(exclusive=False):
        cat = images.load()
        items = []
        for word in args.images:
            image = images.resolve(cat, word)
            name = imageops._is_name(cat, word)
            items.append(SaveItem(images.info(cat, image), [name] if name else []))
        save(images.blobs, items, args.format, dest, sys.stdout.buffer)
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    images = _images(args)
    with images.store.locked(exclusive=False):
        cat = images.load()
        infos = []
        for image in cat.images:
            try:
                infos.append(images.info(cat, image))
            except MountToolError as exc:  # one damaged image must not hide the others
                log.warning("image %s is damaged: %s", image.short, exc)
        infos = imageops.filter_images(images, cat, infos, args.filter or [])
    infos.sort(key=lambda i: (i.config.created, str(i.record.id)), reverse=True)
    if args.repository:
        infos = [i for i in infos if any(imageops._ref_matches(n, args.repository)
                                         for n in i.names)]
    if args.quiet:
        seen = dict.fromkeys(short_id(i.record.id, args.no_trunc) for i in infos)
        if seen:
            print("\n".join(seen))
        return 0
    if args.format:
        render(args.format, dict.fromkeys(IMAGE_FIELDS, ""))  # a bad template fails even empty
        for info in infos:
            for fields in _image_fields(info, args):
                print(render(args.format, fields))
        return 0
    headers = ["REPOSITORY", "TAG", *(["DIGEST"] if args.digests else []), "IMAGE ID",
               "CREATED", "SIZE"]
    print(table(headers, [row for i in infos for row in _image_rows(i, args)]))
    return 0


IMAGE_FIELDS = ("Repository", "Tag", "ID", "Digest", "CreatedSince", "CreatedAt", "Size")


def _image_fields(info: ImageInfo, args: argparse.Namespace) -> list[dict[str, str]]:
    """docker's ``images --format`` fields, one dict per name."""
    refs: list[Reference | None] = [parse_reference(n) for n in info.names] or [None]
    return [{"Repository": ref.familiar_name if ref else "<none>",
             "Tag": (ref.tag or "<none>") if ref else "<none>",
             "ID": short_id(info.record.id, args.no_trunc), "Digest": str(info.record.manifest),
             "CreatedSince": ago(info.config.created), "CreatedAt": info.config.created,
             "Size": human_size(info.size)} for ref in refs]


def _image_rows(info: ImageInfo, args: argparse.Namespace) -> list[list[str]]:
    refs: list[Reference | None] = [parse_reference(n) for n in info.names] or [None]
    rows = []
    for ref in refs:
        repo, tag = (ref.familiar_name, ref.tag or "<none>") if ref else ("<none>", "<none>")
        digest = [str(info.record.manifest)] if args.digests else []
        rows.append([repo, tag, *digest, short_id(info.record.id, args.no_trunc),
                     ago(info.config.created), human_size(info.size)])
    return rows


def cmd_history(args: argparse.Namespace) -> int:
    images = _images(args)
    with images.store.locked(exclusive=False):
        cat = images.load()
        info = images.info(cat, images.resolve(cat, args.image))
        rows = imageops.history(images, info)
    if args.quiet:
        print("\n".join(short_id(r.image, args.no_trunc) if r.image else "<missing>"
                        for r in rows))
        return 0
    width = 10**6 if args.no_trunc else 45
    print(table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], [
        [short_id(r.image, args.no_trunc) if r.image else "<missing>", ago(r.created),
         truncate(r.created_by.replace("\n", " "), width), human_size(r.size), r.comment]
        for r in rows]))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    images = _images(args)
    with images.store.locked(exclusive=False):
        cat = images.load()
        out = [_inspect_one(images, cat, w) for w in args.names]
    print(json.dumps(out, indent=4))
    return 0


def _inspect_one(images: ImageStore, cat: Catalogue, word: str) -> dict[str, Any]:
    try:
        image = images.resolve(cat, word)
    except NotFoundError:
        containers = Containers(images.store)
        try:
            c = containers.get(word)
        except NotFoundError:
            raise NotFoundError(f"no such image or container: {word}") from None
        return {"Id": c.id, "Name": c.name, "Image": c.image, "ImageName": c.image_ref,
                "Created": c.created, "Mounted": cli_containers.is_mounted(c),
                "MountPoint": c.mountpoint,
                "GraphDriver": {"Name": "unionfs", "Data": {
                    "UpperDir": str(containers.upper(c)), "WorkDir": str(containers.work(c)),
                    "LowerDir": ":".join(str(p) for p in containers.lowers(images, c))}}}
    return imageops.inspect(images, images.info(cat, image))


def cmd_tag(args: argparse.Namespace) -> int:
    imageops.tag(_images(args), args.source, args.target)
    return 0


def cmd_rmi(args: argparse.Namespace) -> int:
    for line in imageops.remove(_images(args), args.images, args.force):
        print(line)
    return 0


def cmd_df(args: argparse.Namespace) -> int:
    if args.verbose_df:
        return _df_images(args)
    rows = []
    for u in imageops.usage(_images(args)):
        pct = f" ({round(100 * u.reclaimable / u.size)}%)" if u.size else ""
        rows.append([u.kind, str(u.total), str(u.active), human_size(u.size),
                     human_size(u.reclaimable) + pct])
    print(table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], rows))
    return 0


def _df_images(args: argparse.Namespace) -> int:
    rows = []
    for u in imageops.image_usage(_images(args)):
        refs = [parse_reference(n) for n in u.info.names]
        repo, tag = (refs[0].familiar_name, refs[0].tag or "<none>") if refs else ("<none>",
                                                                                   "<none>")
        rows.append([repo, tag, u.info.record.id.short, ago(u.info.config.created),
                     human_size(u.size), human_size(u.shared), human_size(u.size - u.shared),
                     str(u.containers)])
    print(table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE",
                 "UNIQUE SIZE", "CONTAINERS"], rows))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    deleted, freed = imageops.prune(_images(args), args.all)
    if deleted:
        print("Deleted Images:")
        for image in deleted:
            print(f"deleted: {image}")
        print()
    print(f"Total reclaimed space: {human_size(freed)}")
    return 0


def _add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("load", help="load images from a docker-archive, OCI archive or layout")
    p.add_argument("-i", "--input-file", dest="input_file", metavar="FILE",
                   help="archive to read (default: standard input)")
    p.add_argument("--input", metavar="DIR", help="an OCI image layout directory")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_load)
    p = sub.add_parser("import", help="make a one-layer image from a rootfs tarball or dir")
    p.add_argument("source", metavar="FILE|DIR", help="tarball (plain/gzip/zstd), dir, or -")
    p.add_argument("ref", nargs="?", metavar="REF")
    p.add_argument("-m", "--message", help="history comment")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("save", help="write images to an archive")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", metavar="FILE")
    p.add_argument("--format", choices=FORMATS, default="docker-archive")
    p.set_defaults(func=cmd_save)
    p = sub.add_parser("images", help="list images")
    p.add_argument("repository", nargs="?")
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids")
    p.add_argument("-a", "--all", action="store_true", help="all images (the default here)")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("--digests", action="store_true")
    p.add_argument("-f", "--filter", action="append", metavar="KEY=VALUE")
    p.add_argument("--format", metavar="TEMPLATE",
                   help="e.g. '{{.Repository}}:{{.Tag}} {{.ID}}' (fields: Repository, Tag, ID, "
                        "Digest, CreatedSince, CreatedAt, Size)")
    p.set_defaults(func=cmd_images)
    p = sub.add_parser("history", help="show the history of an image")
    p.add_argument("image")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_history)
    p = sub.add_parser("inspect", help="JSON details of images or containers")
    p.add_argument("names", nargs="+", metavar="IMAGE|CONTAINER")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("tag", help="give an image another name")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("target", metavar="TARGET")
    p.set_defaults(func=cmd_tag)
    p = sub.add_parser("rmi", help="remove images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-f", "--force", action="store_true")
    p.set_defaults(func=cmd_rmi)
    p = sub.add_parser("df", help="disk usage of the store")
    p.add_argument("-v", "--verbose", dest="verbose_df", action="store_true",
                   help="per image: size, size shared with other images, unique size")
    p.set_defaults(func=cmd_df)
    p = sub.add_parser("prune", help="remove dangling images and unused data")
    p.add_argument("-a", "--all", action="store_true", help="all images no container uses")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt (never does)")
    p.set_defaults(func=cmd_prune)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line too: ``mounttool: <what is wrong> (see 'mounttool CMD -h')``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mounttool: {message} (see '{self.prog} -h')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mounttool", description="Container images as unionfs-mounted root filesystems.")
    parser.add_argument("--root", type=Path, default=None,
                        help="store directory (default: $MOUNTTOOL_ROOT, /var/lib/mounttool "
                             "as root, $XDG_DATA_HOME/mounttool otherwise)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    parser.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    sub = cast("argparse._SubParsersAction[argparse.ArgumentParser]", parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True))
    _add_commands(sub)
    cli_containers.add_commands(sub)
    cli_registry.add_registry_commands(sub)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mounttool: %(levelname)s: %(message)s"))
    root = logging.getLogger("mounttool")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one-line usage error
        return exc.code if isinstance(exc.code, int) else 2
    _setup_logging(args)
    args.root = (args.root or default_root()).absolute()  # mounts run from / once daemonized
    try:
        return run_reported("mounttool", lambda: int(args.func(args)))
    except Exception as exc:  # a bug: still one line, the traceback with --debug
        log.debug("internal error", exc_info=True)
        print(f"mounttool: internal error: {type(exc).__name__}: {exc} (--debug shows more)",
              file=sys.stderr)
        return 70
