"""Types of the C module unionfs._cachedir (source: _cachedir.c)."""

CACHE_DIR_FLAG: int

def replies() -> int: ...

def without_opendir() -> bool: ...
