"""Shared fixtures: real session processes that are always reaped, and the dev cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetdispatch.devcluster.stack import BackgroundCluster
from sessions import Sessions, sessions


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Sessions]:
    with sessions(tmp_path / "fleet") as running:
        yield running


@pytest.fixture
def dev_cluster() -> Iterator[BackgroundCluster]:
    """A dev cluster (API server, local pod runtime, our CRDs) on a thread of its own, torn down after."""
    with BackgroundCluster(runtime="local", bookmark_seconds=1.0) as cluster:
        yield cluster
