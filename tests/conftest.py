"""Shared fixtures: real session processes that are always reaped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sessions import Sessions, sessions


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Sessions]:
    with sessions(tmp_path / "fleet") as running:
        yield running
