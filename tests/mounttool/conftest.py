"""Shared fixtures for the mounttool tests: a fresh store and a whole-store snapshot."""

from __future__ import annotations

from pathlib import Path

import pytest

from mounttool.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store")
    s.ensure()
    return s
