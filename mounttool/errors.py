"""The error vocabulary of mounttool: every user-facing failure is a MountToolError.

Library code raises these (or OSError, which the CLI converts); the CLI prints ``str(err)`` as
one line on stderr and returns ``err.exit_code``.  Anything else escaping is a bug.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class MountToolError(Exception):
    """A failure the user can act on: one clear line, one exit code."""

    exit_code: int = 1

    def __init__(self, msg: str, exit_code: int | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.msg


class UsageError(MountToolError):
    """Bad command-line usage or arguments."""

    exit_code = 2


class InvalidReferenceError(MountToolError):
    """An image reference that does not parse like docker's."""

    exit_code = 2


class InvalidDigestError(MountToolError):
    """A malformed ``algorithm:hex`` digest string."""


class DigestMismatchError(MountToolError):
    """Content whose digest or size differs from what its descriptor promised."""


class InvalidImageError(MountToolError):
    """A manifest, index, config or archive layout that is malformed or inconsistent."""


class UnsafeLayerError(MountToolError):
    """A layer tar that tries to escape its directory or is otherwise hostile."""


class CorruptLayerError(MountToolError):
    """A layer tar that cannot be read: truncated, bad compression, bad headers."""


class NotFoundError(MountToolError):
    """An image, container, blob or layer that is not in the store."""


class ConflictError(MountToolError):
    """An operation refused because of the store's state (image in use, name taken...)."""


class StoreError(MountToolError):
    """The store itself is unusable (permissions, lock, corrupt catalogue)."""


def run_reported(prefix: str, body: Callable[[], int]) -> int:
    """The error boundary of a command: any expected failure is one line on stderr, after
    ``prefix``, and an exit status; never a traceback."""
    try:
        return body()
    except MountToolError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{prefix}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
