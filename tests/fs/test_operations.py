"""The FUSE adapter's error boundary: OSError becomes its errno, a bug becomes EIO (logged),
and the mount goes on."""

from __future__ import annotations

import errno
import logging
from types import SimpleNamespace

import pyfuse3
import pytest

from unionfs.operations import Guard


def guard() -> Guard:
    tree = SimpleNamespace(stale=set(), tidy=lambda: None)
    return Guard("lookup", tree)  # type: ignore[arg-type]


def test_oserror_becomes_its_errno() -> None:
    with pytest.raises(pyfuse3.FUSEError) as exc, guard():
        raise FileNotFoundError(errno.ENOENT, "gone")
    assert exc.value.errno == errno.ENOENT


def test_a_bug_is_logged_and_answered_eio(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(pyfuse3.FUSEError) as exc, guard():
        raise KeyError("bug")
    assert exc.value.errno == errno.EIO
    assert "unexpected error in lookup" in caplog.text and "KeyError" in caplog.text


def test_fuse_errors_pass_through() -> None:
    with pytest.raises(pyfuse3.FUSEError) as exc, guard():
        raise pyfuse3.FUSEError(errno.EXDEV)
    assert exc.value.errno == errno.EXDEV
