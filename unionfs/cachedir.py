"""Kernel-cached directory listings: loading ``unionfs._cachedir`` ahead of pyfuse3.

With a listing cached by the kernel (FOPEN_CACHE_DIR), a warm walk of a directory costs no
READDIRPLUS request.  pyfuse3 cannot ask for that; the C module ``_cachedir`` (see its source)
can, two ways.  Normally the mount answers OPENDIR with ENOSYS: the kernel then opens every
directory itself with the listing cached and never sends OPENDIR or RELEASEDIR again, so a warm
walk costs nothing; ``_cachedir`` wraps pyfuse3's readdirplus so such requests carry the
directory's inode (:func:`without_opendir`).  Failing that, ``_cachedir`` supplies the
``fuse_reply_open`` pyfuse3 binds to and sets the flag for directory handles carrying
:data:`flag` (a warm walk then costs OPENDIR + RELEASEDIR per directory, as fuse-overlayfs).

The module must be in the global symbol scope before pyfuse3's extension is loaded, so
``unionfs/__init__.py`` calls :func:`load` first thing.  Without it (not built, or pyfuse3
already imported) everything works the same, only uncached: :data:`flag` is then 0.

Caching a listing is safe because every change to a directory's entries goes through the
mount, and the kernel drops a cached listing itself on each such change (and whenever the
directory's mtime moves): the layers below are not to be changed while mounted, as with
kernel overlayfs.
"""

from __future__ import annotations

import os
import sys

flag = 0
"""Or-ed into an opendir file handle: the kernel may cache this listing (0 when unavailable)."""


def load() -> None:
    global flag
    if flag or "pyfuse3" in sys.modules:
        return  # loaded already, or too late: pyfuse3 is bound to libfuse's own function
    saved = sys.getdlopenflags()
    sys.setdlopenflags(saved | os.RTLD_GLOBAL)
    try:
        from unionfs import _cachedir
    except ImportError:
        return
    finally:
        sys.setdlopenflags(saved)
    flag = int(_cachedir.CACHE_DIR_FLAG)


def strip(fh: int) -> int:
    """The directory handle without :data:`flag` (whether or not the kernel saw it)."""
    return fh & ~flag if flag else fh


def without_opendir() -> bool:
    """Whether OPENDIR may be answered ENOSYS, the kernel then opening directories itself
    (listings cached): this process's FUSE session has the readdirplus wrapper in front of
    pyfuse3's, and the kernel said at init that it can do without OPENDIR (Linux 5.1+)."""
    if not flag:
        return False
    from unionfs import _cachedir

    return _cachedir.without_opendir()


def replies() -> int:
    """How many opendir replies asked for a cached listing so far (0 without the module)."""
    if not flag:
        return 0
    from unionfs import _cachedir

    return int(_cachedir.replies())
