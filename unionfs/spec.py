"""What to mount: the overlay option string parsed and checked into a frozen MountSpec.

The option syntax is the kernel's and fuse-overlayfs's: ``lowerdir=TOP:...:BOTTOM``,
``upperdir=U``, ``workdir=W``; ``\\:`` and ``\\,`` escape a colon or a comma inside a path.
Everything a mount needs is decided here, once: errors are :class:`SpecError` with a one-line
message naming the thing that is wrong.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from unionfs.whiteout import KERNEL_FORMAT, USERXATTR_FORMAT, WhiteoutFormat


class SpecError(Exception):
    """A bad command line or layer set; the message is one line for the user."""


# Options passed through to the FUSE mount as they are (mount flags libfuse understands).
FUSE_MOUNT_FLAGS = frozenset({
    "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async", "dirsync",
    "noatime", "atime", "relatime", "norelatime", "strictatime", "nodiratime", "diratime",
})
# Kernel overlayfs options accepted for command-line compatibility: value -> accepted values.
KERNEL_COMPAT = {
    "index": {"on", "off"},
    "redirect_dir": {"off", "nofollow", "follow"},
    "metacopy": {"off"},
    "xino": {"off", "auto", "on"},
    "nfs_export": {"off"},
    "uuid": {"on", "off", "null", "auto"},
}
_FLAGS = {"ro", "rw", "allow_other", "allow_root", "default_permissions", "debug",
          "userxattr", "volatile", "noacl", "suppress_timeouts"}


@dataclass(frozen=True)
class MountSpec:
    """A checked union: lowers top first, optional upper and work dirs, and options."""

    lowers: tuple[bytes, ...]
    upper: bytes | None
    work: bytes | None
    mountpoint: bytes
    read_only: bool = False
    allow_other: bool = False
    debug: bool = False
    fsync: bool = True
    background_sync: bool = True
    """Copied regular files are named at once and synced by a worker thread, under a pending
    record (unionfs.syncer), instead of synced inside the request before their rename."""
    timeout: float = 300.0
    writeback: bool = False
    """Kernel writeback cache: small writes are batched in the page cache."""
    whiteout: WhiteoutFormat = KERNEL_FORMAT
    fuse_flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def writable(self) -> bool:
        return self.upper is not None and not self.read_only


def split_escaped(text: str, sep: str) -> list[str]:
    """Split on ``sep`` except where a backslash escapes it; backslashes are removed."""
    parts: list[str] = []
    cur: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            cur.append(nxt)
        elif ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _split_options(option_strings: list[str]) -> list[str]:
    """Comma-separated options; a backslash keeps an escape for the later colon split."""
    items: list[str] = []
    for text in option_strings:
        cur: list[str] = []
        chars = iter(text)
        for ch in chars:
            if ch == "\\":
                nxt = next(chars, "")
                cur.append(nxt if nxt == "," else "\\" + nxt)
            elif ch == ",":
                items.append("".join(cur))
                cur = []
            else:
                cur.append(ch)
        items.append("".join(cur))
    return [item for item in items if item]


def parse(option_strings: list[str], mountpoint: str, is_root: bool | None = None) -> MountSpec:
    """Parse ``-o`` strings for ``mountpoint`` and check the layers; raises SpecError."""
    if is_root is None:
        is_root = os.geteuid() == 0
    values: dict[str, str] = {}
    flags: set[str] = set()
    fuse_flags: list[str] = []
    warnings: list[str] = []
    for item in _split_options(option_strings):
        key, eq, value = item.partition("=")
        if key in ("lowerdir", "upperdir", "workdir", "fsync", "timeout", "writeback",
                   "copyup_sync"):
            if not eq or not value:
                raise SpecError(f"option '{key}' needs a value")
            values[key] = value
        elif key in FUSE_MOUNT_FLAGS:
            fuse_flags.append(key)
        elif key in KERNEL_COMPAT:
            if value not in KERNEL_COMPAT[key]:
                raise SpecError(f"option '{item}' is not supported (accepted: "
                                f"{', '.join(sorted(KERNEL_COMPAT[key]))})")
        elif key in _FLAGS and not eq:
            flags.add(key)
        else:
            raise SpecError(f"unknown option '{item}'")
    if "lowerdir" not in values:
        raise SpecError("missing lowerdir= (the read-only layers, top first)")
    lowers = [p for p in split_escaped(values["lowerdir"], ":")]
    if any(not p for p in lowers):
        raise SpecError("empty path in lowerdir= (data-only '::' layers are not supported)")
    upper, work = values.get("upperdir"), values.get("workdir")
    if (upper is None) != (work is None):
        raise SpecError("upperdir= and workdir= go together: give both or neither")
    timeout = _number(values.get("timeout", "300"), "timeout")
    if "suppress_timeouts" in flags:
        timeout = 0.0
    fsync = _switch(values.get("fsync", "1"), "fsync") and "volatile" not in flags
    writeback = _switch(values.get("writeback", "0"), "writeback")
    copyup_sync = values.get("copyup_sync", "background")
    if copyup_sync not in ("background", "inline"):
        raise SpecError(f"option 'copyup_sync={copyup_sync}' is not supported "
                        "(accepted: background, inline)")
    fmt = USERXATTR_FORMAT if "userxattr" in flags or not is_root else KERNEL_FORMAT
    if not is_root and upper is not None:
        fmt = WhiteoutFormat(fmt.xattr_prefix, dot_wh=True)
        warnings.append("not root: whiteouts are written as .wh. files")
    spec = MountSpec(
        lowers=tuple(os.fsencode(os.path.abspath(p)) for p in lowers),
        upper=os.fsencode(os.path.abspath(upper)) if upper else None,
        work=os.fsencode(os.path.abspath(work)) if work else None,
        mountpoint=os.fsencode(os.path.abspath(mountpoint)),
        read_only="ro" in flags or upper is None,
        allow_other=("allow_other" in flags or is_root),
        debug="debug" in flags,
        fsync=fsync,
        background_sync=copyup_sync == "background",
        timeout=timeout,
        writeback=writeback,
        whiteout=fmt,
        fuse_flags=tuple(fuse_flags),
        warnings=tuple(warnings),
    )
    check(spec)
    return spec


def _switch(text: str, name: str) -> bool:
    if text in ("1", "on", "yes", "true"):
        return True
    if text in ("0", "off", "no", "false"):
        return False
    raise SpecError(f"option '{name}={text}' must be 0 or 1")


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"option '{name}={text}' is not a number") from None
    if value < 0:
        raise SpecError(f"option '{name}={text}' must not be negative")
    return value


def _dir_stat(path: bytes, role: str) -> os.stat_result:
    shown = os.fsdecode(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SpecError(f"{role} '{shown}' does not exist") from None
    except OSError as exc:
        raise SpecError(f"{role} '{shown}': {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SpecError(f"{role} '{shown}' is not a directory")
    return st


def _inside(inner: bytes, outer: bytes) -> bool:
    """Whether ``inner`` is ``outer`` or below it (both absolute and real)."""
    return inner == outer or inner.startswith(outer.rstrip(b"/") + b"/")


def check(spec: MountSpec) -> None:
    """Check the directories of a spec exist and fit together; raises SpecError."""
    real = {p: os.path.realpath(p) for p in (*spec.lowers, spec.mountpoint)}
    for lower in spec.lowers:
        _dir_stat(lower, "lowerdir")
    _dir_stat(spec.mountpoint, "mountpoint")
    layer_dirs = list(spec.lowers)
    if spec.upper is not None and spec.work is not None:
        upper_st = _dir_stat(spec.upper, "upperdir")
        work_st = _dir_stat(spec.work, "workdir")
        if upper_st.st_dev != work_st.st_dev:
            raise SpecError(f"upperdir '{os.fsdecode(spec.upper)}' and workdir "
                            f"'{os.fsdecode(spec.work)}' are on different filesystems")
        up, wk = os.path.realpath(spec.upper), os.path.realpath(spec.work)
        if _inside(up, wk) or _inside(wk, up):
            raise SpecError("workdir and upperdir must not contain each other")
        for lower in spec.lowers:
            low = real[lower]
            if _inside(up, low) or _inside(low, up):
                raise SpecError(f"upperdir and lowerdir '{os.fsdecode(lower)}' overlap")
        real[spec.upper] = up
        real[spec.work] = wk
        layer_dirs += [spec.upper, spec.work]
    mnt = real[spec.mountpoint]
    for layer in layer_dirs:
        if mnt != real[layer] and _inside(mnt, real[layer]):
            raise SpecError(f"mountpoint '{os.fsdecode(spec.mountpoint)}' is inside layer "
                            f"'{os.fsdecode(layer)}': the mount would serve itself and hang")
