"""Unpacked layers, keyed by chain id: ``layers/sha256/<chain>/{diff/,layer.json}``.

Each layer is unpacked once (verified against its diff_id while streaming, in ``tmp/``, renamed
into place only when complete) and then shared, read-only, by every image whose layer stack has
that chain id.  Chain ids rather than bare diff_ids keep one stack's ``lowerdir=`` free of
duplicate directories even when a manifest lists the same layer twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mounttool.digest import Digest
from mounttool.errors import InvalidDigestError, StoreError
from mounttool.fsutil import disk_usage, remove_tree, syncfs
from mounttool.store import Store, Transaction, atomic_write
from mounttool.unpack import UnpackOptions, unpack_into

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LayerMeta:
    chain_id: Digest
    diff_id: Digest
    parent: Digest | None
    size: int
    """Bytes of the uncompressed layer tar."""


class LayerStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = store.layers_dir / "sha256"

    def path(self, chain: Digest) -> Path:
        return self.root / chain.hex

    def diff_dir(self, chain: Digest) -> Path:
        return self.path(chain) / "diff"

    def has(self, chain: Digest) -> bool:
        return (self.path(chain) / "layer.json").is_file()

    def meta(self, chain: Digest) -> LayerMeta:
        try:
            obj = json.loads((self.path(chain) / "layer.json").read_bytes())
            return LayerMeta(Digest.parse(obj["chain_id"]), Digest.parse(obj["diff_id"]),
                             Digest.parse(obj["parent"]) if obj.get("parent") else None,
                             int(obj["size"]))
        except (OSError, ValueError, KeyError, InvalidDigestError) as exc:
            raise StoreError(f"layer {chain} is damaged in the store: {exc}") from None

    def ensure(self, chains: list[Digest], diff_ids: list[Digest], index: int,
               opener: Callable[[], BinaryIO], txn: Transaction,
               opts: UnpackOptions | None = None) -> bool:
        """Make layer ``index`` of a stack present; False if it already was."""
        chain = chains[index]
        if self.has(chain):
            return False
        self.store.require_exclusive()
        base = opts or UnpackOptions()
        lowers = tuple(self.diff_dir(c) for c in reversed(chains[:index]))
        opts = dataclasses.replace(base, lowers=lowers)
        log.info("unpacking layer %d/%d (%s)", index + 1, len(chains), diff_ids[index].short)
        tmp = self.store.mkdtemp("layer-")
        try:
            try:
                self._unpack(tmp, chains, diff_ids, index, opener, opts)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                raise StoreError(
                    f"cannot write overlay whiteouts or opaque markers in {self.root}: "
                    f"{exc.strerror}; the store needs a filesystem with trusted.* xattrs and "
                    "device nodes (ext4, xfs, btrfs, tmpfs, not overlayfs): choose it with "
                    "--root") from None
            if self.path(chain).exists():  # a half-removed layer: replace it
                remove_tree(self.path(chain))
            os.rename(tmp, self.path(chain))
        except BaseException:
            with contextlib.suppress(OSError):
                remove_tree(tmp)
            raise
        txn.created(self.path(chain))
        return True

    def _unpack(self, tmp: Path, chains: list[Digest], diff_ids: list[Digest], index: int,
                opener: Callable[[], BinaryIO], opts: UnpackOptions) -> None:
        os.chmod(tmp, 0o755)
        (tmp / "diff").mkdir(mode=0o755)
        with opener() as src:
            res = unpack_into(src, tmp / "diff", diff_ids[index], opts,
                              what=f"layer {diff_ids[index]}")
        meta = {"chain_id": str(chains[index]), "diff_id": str(res.diff_id), "size": res.size,
                "parent": str(chains[index - 1]) if index else None}
        atomic_write(tmp / "layer.json", json.dumps(meta, sort_keys=True).encode())
        syncfs(tmp)

    def all(self) -> list[Digest]:
        out = []
        for entry in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            try:
                out.append(Digest("sha256", entry.name))
            except InvalidDigestError:
                continue
        return out

    def remove(self, chain: Digest) -> int:
        """Delete an unpacked layer; returns the bytes it used."""
        self.store.require_exclusive()
        path = self.path(chain)
        if not path.exists():
            return 0
        size = disk_usage(path)
        # Rename first so a crash never leaves a half-deleted layer under its real name.
        doomed = self.store.mkdtemp("rm-") / "layer"
        os.rename(path, doomed)
        remove_tree(doomed.parent)
        return size
