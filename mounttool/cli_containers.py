"""The container half of the CLI: create, mount, umount, ps, rm, diff, commit, export.

Same rules as cli.py: small ``cmd_<name>(args) -> int`` handlers over library calls; errors
are raised as MountToolError and printed by ``cli.main``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from mounttool import mounting
from mounttool.changes import changes
from mounttool.commit import commit, export
from mounttool.containers import Container, Containers
from mounttool.display import ago, human_size, render, table
from mounttool.errors import ConflictError, MountToolError, UsageError
from mounttool.fsutil import syncfs
from mounttool.images import ImageStore
from mounttool.mounting import live_mounts
from mounttool.overlayview import OverlayView
from mounttool.refs import parse_tagged
from mounttool.store import Store, atomic_output, atomic_write


def _ctx(args: argparse.Namespace) -> tuple[ImageStore, Containers]:
    store = Store(args.root)
    return ImageStore(store), Containers(store)


def is_mounted(c: Container) -> bool:
    return bool(c.mountpoint) and c.mountpoint in live_mounts()


def flush(c: Container) -> None:
    """Push a mounted container's cached writes into its upper dir before reading it: syncfs
    for the kernel's caches, and an fsync of the mount's root, which unionfs answers once the
    copy-ups it is still syncing are durable."""
    if is_mounted(c):
        syncfs(Path(c.mountpoint))
        fd = os.open(c.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _image_mount_record(store: Store, mnt: Path) -> Path:
    key = hashlib.sha256(os.fsencode(mnt)).hexdigest()[:32]
    return store.root / "imagemounts" / f"{key}.json"


def _record_image_mount(store: Store, image: str, mnt: Path) -> None:
    """Remember a read-only image mount, so rmi and prune leave its layers alone."""
    record = _image_mount_record(store, mnt)
    record.parent.mkdir(exist_ok=True)
    atomic_write(record, json.dumps({"image": image, "mountpoint": str(mnt)}).encode())


def cmd_create(args: argparse.Namespace) -> int:
    images, containers = _ctx(args)
    print(containers.create(images, args.image, args.name).id)
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    images, containers = _ctx(args)
    if args.image:
        target = args.mountpoint or args.container  # argparse fills the first positional
        if not target or (args.mountpoint and args.container):
            raise UsageError("mount --image IMAGE MOUNTPOINT: give one mountpoint")
        mnt = Path(target).absolute()
        with images.store.locked(exclusive=False):
            cat = images.load()
            info = images.info(cat, images.resolve(cat, args.image))
            lowers = [images.layers.diff_dir(c) for c in reversed(info.chain_ids)]
            mounting.mount(lowers, None, None, mnt)
            _record_image_mount(images.store, str(info.record.id), mnt)
        print(mnt)
        return 0
    if not args.container:
        raise UsageError("mount CONTAINER [MOUNTPOINT] or mount --image IMAGE MOUNTPOINT")
    with images.store.locked(exclusive=True):
        c = containers.get(args.container)
        if is_mounted(c):
            print(c.mountpoint)
            return 0
        mnt = Path(args.mountpoint).absolute() if args.mountpoint else containers.dir(c) / "merged"
        mounting.mount(containers.lowers(images, c), containers.upper(c), containers.work(c), mnt)
        containers.save(replace(c, mountpoint=str(mnt)))
    print(mnt)
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    images, containers = _ctx(args)
    with images.store.locked(exclusive=True):
        for word in args.targets:
            try:
                c = containers.get(word)
            except MountToolError:
                path = str(Path(word).absolute())
                if path not in live_mounts():
                    raise
                mounting.umount(Path(path))
                _image_mount_record(containers.store, Path(path)).unlink(missing_ok=True)
                print(path)
                continue
            if is_mounted(c):
                mounting.umount(Path(c.mountpoint), containers.work(c))
            containers.save(replace(c, mountpoint=""))
            print(c.name)
    return 0


PS_FIELDS = ("ID", "Image", "RunningFor", "Status", "Size", "Names", "CreatedAt", "Mounts")


def cmd_ps(args: argparse.Namespace) -> int:
    _, containers = _ctx(args)
    rows = []
    with containers.store.locked(exclusive=False):
        for c in containers.all():
            mounted = is_mounted(c)
            if not (mounted or args.all):
                continue
            status = f"Mounted at {c.mountpoint}" if mounted else "Created"
            ident = c.id if args.no_trunc else c.id[:12]
            if args.quiet:
                rows.append([ident])
                continue
            rows.append([ident, c.image_ref, ago(c.created), status,
                         human_size(containers.size(c)), c.name, c.created, c.mountpoint])
    if args.format:
        render(args.format, dict.fromkeys(PS_FIELDS, ""))
        for row in rows:
            print(render(args.format, dict(zip(PS_FIELDS, row, strict=True))))
        return 0
    rows = [r[:6] for r in rows]
    if args.quiet:
        if rows:
            print("\n".join(r[0] for r in rows))
        return 0
    print(table(["CONTAINER ID", "IMAGE", "CREATED", "STATUS", "SIZE", "NAMES"], rows))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    _, containers = _ctx(args)
    with containers.store.locked(exclusive=True):
        doomed = [containers.get(w) for w in args.containers]
        for c in doomed:
            if is_mounted(c) and not args.force:
                raise ConflictError(f"container {c.name} is mounted at {c.mountpoint}: umount "
                                    "it first or use -f")
        for c in doomed:
            if is_mounted(c):
                mounting.umount(Path(c.mountpoint), containers.work(c))
            containers.remove(c)
            print(c.name)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    images, containers = _ctx(args)
    with images.store.locked(exclusive=False):
        c = containers.get(args.container)
        flush(c)
        view = OverlayView(containers.lowers(images, c))
        for change in changes(containers.upper(c), view):
            print(change)
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    images, containers = _ctx(args)
    names = [str(parse_tagged(args.ref))] if args.ref else []
    c = containers.get(args.container)
    flush(c)
    loaded = commit(images, containers, c, names, args.message or "", args.author or "",
                    args.change or [])
    print(loaded.id)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    images, containers = _ctx(args)
    dest = args.output or "-"
    if dest == "-" and sys.stdout.isatty():
        raise UsageError("export: give -o (refusing to write a tar to a terminal)")
    with images.store.locked(exclusive=False):
        c = containers.get(args.container)
        flush(c)
        layers = [containers.upper(c), *containers.lowers(images, c)]
        if dest == "-":
            export(layers, sys.stdout.buffer)
            return 0
        with atomic_output(Path(dest)) as f:
            export(layers, f)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("create", help="create a container (an upper layer over an image)")
    p.add_argument("image")
    p.add_argument("--name")
    p.set_defaults(func=cmd_create)
    p = sub.add_parser("mount", help="mount a container (or --image, read-only)")
    p.add_argument("container", nargs="?")
    p.add_argument("mountpoint", nargs="?")
    p.add_argument("--image", metavar="IMAGE", help="mount an image read-only, no container")
    p.set_defaults(func=cmd_mount)
    p = sub.add_parser("umount", help="unmount containers or image mounts")
    p.add_argument("targets", nargs="+", metavar="CONTAINER|MOUNTPOINT")
    p.set_defaults(func=cmd_umount)
    p = sub.add_parser("ps", help="list containers (mounted ones; -a for all)")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("--format", metavar="TEMPLATE",
                   help="e.g. '{{.Names}} {{.Status}}' (fields: " + ", ".join(PS_FIELDS) + ")")
    p.set_defaults(func=cmd_ps)
    p = sub.add_parser("rm", help="remove containers")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.add_argument("-f", "--force", action="store_true", help="unmount first if mounted")
    p.set_defaults(func=cmd_rm)
    p = sub.add_parser("diff", help="files added (A), changed (C), deleted (D) in a container")
    p.add_argument("container")
    p.set_defaults(func=cmd_diff)
    p = sub.add_parser("commit", help="make an image from a container's changes")
    p.add_argument("container")
    p.add_argument("ref", nargs="?", metavar="REF")
    p.add_argument("-m", "--message")
    p.add_argument("-a", "--author")
    p.add_argument("-c", "--change", action="append", metavar="'INSTR ARGS'")
    p.set_defaults(func=cmd_commit)
    p = sub.add_parser("tree", help="the merged tree and the layer each entry comes from")
    p.add_argument("target", metavar="IMAGE|CONTAINER")
    p.add_argument("path", nargs="?", metavar="PATH", help="only below this path")
    p.set_defaults(func=cmd_tree)
    p = sub.add_parser("export", help="a container's merged rootfs as a tar")
    p.add_argument("container")
    p.add_argument("-o", "--output", metavar="FILE")
    p.set_defaults(func=cmd_export)


def cmd_tree(args: argparse.Namespace) -> int:
    """Each entry of an image's or container's merged tree, with the layer that provides it."""
    images, containers = _ctx(args)
    with images.store.locked(exclusive=False):
        layers, labels = _layers_of(images, containers, args.target)
        view = OverlayView(layers)
        start = tuple(p.encode() for p in Path("/" + (args.path or "")).parts[1:])
        if start and view.lookup(start) is None:
            raise MountToolError(f"{args.path}: not in {args.target}")
        by_root = {os.fsencode(p): lab for p, lab in zip(layers, labels, strict=True)}
        rows = [[by_root[e.layer], "/" + os.fsdecode(b"/".join(e.parts))]
                for e in view.walk(start)]
    print(table(["LAYER", "PATH"], rows))
    return 0


def _layers_of(images: ImageStore, containers: Containers,
               word: str) -> tuple[list[Path], list[str]]:
    """Layers top first, and labels: ``upper`` and ``#N <chain id>`` (#1 is the base)."""
    try:
        c = containers.get(word)
    except MountToolError:
        c = None
    cat = images.load()
    image = images.resolve(cat, c.image if c else word)
    chains = images.info(cat, image).chain_ids
    layers = [images.layers.diff_dir(ch) for ch in reversed(chains)]
    labels = [f"#{len(chains) - i} {ch.short}" for i, ch in enumerate(reversed(chains))]
    if c is not None:
        return [containers.upper(c), *layers], ["upper", *labels]
    return layers, labels
