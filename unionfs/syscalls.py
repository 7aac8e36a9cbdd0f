"""Linux system calls the standard library lacks: renameat2 (exchange, noreplace, whiteout),
syncfs.

Kept apart so the rest of unionfs reads as plain ``os`` calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_uint]
_renameat2.restype = ctypes.c_int


def renameat2(src_dir_fd: int, src: bytes, dst_dir_fd: int, dst: bytes, flags: int) -> None:
    """renameat2(2); raises OSError with the errno on failure."""
    if _renameat2(src_dir_fd, src, dst_dir_fd, dst, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), src, None, dst)


_syncfs = _libc.syncfs
_syncfs.argtypes = [ctypes.c_int]
_syncfs.restype = ctypes.c_int


def syncfs(fd: int) -> None:
    """syncfs(2): write out everything of the filesystem ``fd`` is on."""
    if _syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
