"""Whiteouts and opaque directories: the one module that knows their on-disk formats.

The kernel's format (what unionfs writes by default, and what kernel overlayfs reads):

* a *whiteout* is a character device 0/0 with the name of the entry it hides;
* an *opaque* directory carries the xattr ``trusted.overlay.opaque = "y"`` (``user.overlay.opaque``
  with ``-o userxattr``, as the kernel does for unprivileged mounts), and hides every entry of the
  same directory in the layers below it.

Where device nodes cannot be made (no CAP_MKNOD), the OCI/fuse-overlayfs fallback is used instead:
an empty file ``.wh.<name>`` hides ``<name>`` and a file ``.wh..wh..opq`` makes its directory
opaque.  In that format names starting with ``.wh.`` are markers, never ordinary entries; in the
kernel format they are ordinary names, exactly as kernel overlayfs treats them.

Everything here works on a directory file descriptor plus a name, so both the filesystem and the
image unpacker (mounttool) share it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
OPAQUE_VALUE = b"y"


@dataclass(frozen=True, slots=True)
class WhiteoutFormat:
    """How whiteouts and opaque markers are written (and which forms are read) on one mount."""

    xattr_prefix: bytes = b"trusted.overlay."
    """Namespace of the overlay-private xattrs: ``trusted.overlay.`` or ``user.overlay.``."""
    dot_wh: bool = False
    """Use ``.wh.<name>`` files instead of char 0/0 devices (no CAP_MKNOD)."""

    @property
    def opaque_xattr(self) -> bytes:
        return self.xattr_prefix + b"opaque"

    def is_private_xattr(self, name: bytes) -> bool:
        """True for the xattrs that belong to the overlay format and never show through."""
        return name.startswith(self.xattr_prefix)

    def describe(self) -> str:
        markers = ".wh. files" if self.dot_wh else "char 0/0 devices"
        return f"whiteouts as {markers}, opaque xattr {self.opaque_xattr.decode()}"


KERNEL_FORMAT = WhiteoutFormat()
USERXATTR_FORMAT = WhiteoutFormat(xattr_prefix=b"user.overlay.")


def is_whiteout_stat(st: os.stat_result) -> bool:
    """A whiteout in the kernel format: a character device with device number 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def whiteout_file_name(name: bytes) -> bytes:
    """The ``.wh.`` fallback marker that hides ``name``."""
    return WHITEOUT_PREFIX + name


def hidden_by_marker(marker: bytes) -> bytes | None:
    """For a ``.wh.<name>`` marker, the ``<name>`` it hides; None for other names.

    The opaque marker ``.wh..wh..opq`` hides no single name and returns None.
    """
    if not marker.startswith(WHITEOUT_PREFIX) or marker == OPAQUE_MARKER:
        return None
    hidden = marker[len(WHITEOUT_PREFIX):]
    return hidden or None


def proc_path(dir_fd: int, rel: bytes) -> bytes:
    """A path that reaches ``rel`` below an open directory, for calls that take no dir_fd.

    The xattr syscalls have no ``*at`` form; ``/proc/self/fd/N/rel`` resolves through the open
    directory without crossing back into any mount on top of it.
    """
    if rel in (b"", b"."):
        # "/." makes the directory itself the last component, so calls that do not follow
        # symlinks act on it and not on the /proc magic link.
        return b"/proc/self/fd/%d/." % dir_fd
    return b"/proc/self/fd/%d/%s" % (dir_fd, rel)


def make_whiteout(dir_fd: int, name: bytes, fmt: WhiteoutFormat) -> None:
    """Create a whiteout for ``name`` in the directory ``dir_fd`` (which must not hold ``name``)."""
    if fmt.dot_wh:
        fd = os.open(whiteout_file_name(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600,
                     dir_fd=dir_fd)
        os.close(fd)
    else:
        os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=dir_fd)  # mode 0, as the kernel


def remove_whiteout(dir_fd: int, name: bytes, fmt: WhiteoutFormat) -> bool:
    """Remove the whiteout hiding ``name``, in either form; True if there was one."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None and is_whiteout_stat(st):
        os.unlink(name, dir_fd=dir_fd)
        return True
    if fmt.dot_wh:
        try:
            os.unlink(whiteout_file_name(name), dir_fd=dir_fd)
            return True
        except FileNotFoundError:
            pass
    return False


def has_whiteout_marker(dir_fd: int, rel_dir: bytes, name: bytes) -> bool:
    """Whether a ``.wh.<name>`` marker file exists in ``rel_dir`` (fallback format only)."""
    path = whiteout_file_name(name) if rel_dir in (b"", b".") else (
        rel_dir + b"/" + whiteout_file_name(name))
    try:
        os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def is_opaque(dir_fd: int, rel: bytes, fmt: WhiteoutFormat) -> bool:
    """Whether the directory ``rel`` below ``dir_fd`` is opaque (xattr, or the marker file)."""
    try:
        value = os.getxattr(proc_path(dir_fd, rel), fmt.opaque_xattr, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES):
            raise
        value = b""
    if value == OPAQUE_VALUE:
        return True
    if fmt.dot_wh:
        marker = OPAQUE_MARKER if rel in (b"", b".") else rel + b"/" + OPAQUE_MARKER
        try:
            os.stat(marker, dir_fd=dir_fd, follow_symlinks=False)
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False
    return False


def set_opaque(dir_fd: int, rel: bytes, fmt: WhiteoutFormat) -> None:
    """Mark the directory ``rel`` below ``dir_fd`` opaque, in the mount's format."""
    if fmt.dot_wh:
        marker = OPAQUE_MARKER if rel in (b"", b".") else rel + b"/" + OPAQUE_MARKER
        fd = os.open(marker, os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=dir_fd)
        os.close(fd)
        return
    os.setxattr(proc_path(dir_fd, rel), fmt.opaque_xattr, OPAQUE_VALUE, follow_symlinks=False)


def is_marker_name(name: bytes, fmt: WhiteoutFormat) -> bool:
    """Names that are format markers in this mount and never listed as entries."""
    return fmt.dot_wh and name.startswith(WHITEOUT_PREFIX)
