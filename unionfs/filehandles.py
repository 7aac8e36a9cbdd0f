"""Kernel overlayfs file handles: what ``trusted.overlay.origin`` holds and ``index/`` names.

Kernel overlayfs (``index=on``) names the copy-up of a lower hardlink after the lower file's
handle: ``workdir/index/<hex of struct ovl_fb>``, where ``ovl_fb`` is version 0, magic 0xfb,
its own length, flags, the handle type, the UUID of the lower file's filesystem (its
``s_uuid``, which ``FS_IOC_GETFSUUID`` reads; all zeros where that filesystem has none, or with
overlay's ``uuid=off``) and the handle bytes from ``name_to_handle_at``.  The kernel follows a
handle only into a layer whose filesystem has that UUID, so getting it right matters as soon as
a lower layer is on a filesystem with one (tmpfs has a random one since Linux 6.8).  These
helpers encode and decode that, through the syscalls the standard library lacks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
from dataclasses import dataclass

_MAGIC = 0xFB
_HEADER = 21  # version, magic, len, flags, type, uuid[16]
_MAX_HANDLE = 128
_AT_EMPTY_PATH = 0x1000
_FS_IOC_GETFSUUID = 0x80111500  # _IOR(0x15, 0, struct fsuuid2 { u8 len; u8 uuid[16]; })

NULL_UUID = bytes(16)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * _MAX_HANDLE)]


_libc.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_FileHandle),
                                    ctypes.POINTER(ctypes.c_int), ctypes.c_int]
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.POINTER(_FileHandle), ctypes.c_int]


@dataclass(frozen=True, slots=True)
class OverlayHandle:
    """A decoded ``ovl_fb``: the handle of a real file, as overlayfs records it."""

    handle_type: int
    fid: bytes
    flags: int = 0
    uuid: bytes = NULL_UUID

    def encode(self) -> bytes:
        """The ``ovl_fb`` bytes (the value of ``trusted.overlay.origin``)."""
        return bytes([0, _MAGIC, _HEADER + len(self.fid), self.flags, self.handle_type]) + \
            self.uuid + self.fid

    def index_name(self) -> bytes:
        """The name of the kernel's index entry for the file this handle points to."""
        return self.encode().hex().encode()


def decode(raw: bytes) -> OverlayHandle | None:
    """Parse ``ovl_fb`` bytes; None if they are not one."""
    if len(raw) < _HEADER or raw[0] != 0 or raw[1] != _MAGIC or raw[2] != len(raw):
        return None
    return OverlayHandle(raw[4], bytes(raw[_HEADER:]), raw[3], bytes(raw[5:_HEADER]))


def decode_index_name(name: bytes) -> OverlayHandle | None:
    try:
        return decode(bytes.fromhex(name.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        return None


def fs_uuid(fd: int) -> bytes:
    """The UUID of the filesystem of ``fd`` (not O_PATH) as the kernel records it in handles;
    all zeros if it has none or the kernel cannot say (before Linux 6.9)."""
    buf = bytearray(17)
    try:
        fcntl.ioctl(fd, _FS_IOC_GETFSUUID, buf)
    except OSError:
        return NULL_UUID
    length = min(buf[0], 16)
    return bytes(buf[1:1 + length]).ljust(16, b"\0")


def handle_of(fd: int, uuid: bytes = NULL_UUID) -> OverlayHandle:
    """The overlay handle of the file open as ``fd`` (an O_PATH fd is enough), on a
    filesystem whose UUID is ``uuid`` (see :func:`fs_uuid`)."""
    fh = _FileHandle()
    fh.handle_bytes = _MAX_HANDLE
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(fd, b"", ctypes.byref(fh), ctypes.byref(mount_id),
                               _AT_EMPTY_PATH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return OverlayHandle(fh.handle_type, bytes(fh.f_handle[:fh.handle_bytes]), uuid=uuid)


def open_handle(mount_fd: int, handle: OverlayHandle) -> int:
    """Open (O_PATH) the file a handle points to, on the filesystem of ``mount_fd``."""
    fh = _FileHandle()
    fh.handle_bytes = len(handle.fid)
    fh.handle_type = handle.handle_type
    ctypes.memmove(fh.f_handle, handle.fid, len(handle.fid))
    fd = int(_libc.open_by_handle_at(mount_fd, ctypes.byref(fh), os.O_PATH | os.O_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd
