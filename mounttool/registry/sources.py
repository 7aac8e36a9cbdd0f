"""Where blobs came from: ``<store>/registry-sources.json``, for cross-repository mounts.

Each pull or push records, per blob digest, the ``registry/repository`` names known to hold it
(most recent first, a few at most).  A later push of that blob to another repository of the same
registry asks the registry to mount it from one of them instead of uploading it again.  The file
is only a hint: a lost update costs an upload, never correctness.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from mounttool.digest import Digest
from mounttool.refs import Reference
from mounttool.store import Store, atomic_write

log = logging.getLogger(__name__)
KEEP = 4


class BlobSources:
    def __init__(self, store: Store) -> None:
        self.path = store.root / "registry-sources.json"

    def _load(self) -> dict[str, list[str]]:
        try:
            obj = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return {}
        if not isinstance(obj, dict):
            return {}
        return {str(k): [str(r) for r in v] for k, v in obj.items() if isinstance(v, list)}

    def repos_for(self, digest: Digest, ref: Reference) -> list[str]:
        """Repositories on ``ref``'s registry, other than ``ref``'s own, that hold the blob."""
        prefix = ref.domain + "/"
        return [name[len(prefix):] for name in self._load().get(str(digest), [])
                if name.startswith(prefix) and name != ref.name]

    def record(self, digests: Iterable[Digest], ref: Reference) -> None:
        data = self._load()
        for digest in digests:
            names = [n for n in data.get(str(digest), []) if n != ref.name]
            data[str(digest)] = [ref.name, *names][:KEEP]
        try:
            atomic_write(self.path, json.dumps(data, indent=0, sort_keys=True).encode())
        except OSError as exc:
            log.warning("could not record blob sources in %s: %s", self.path, exc.strerror)
