"""Shared fixtures: real session processes that are always reaped, and the dev cluster."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetdispatch.devcluster.stack import BackgroundCluster
from operators import Namespace, OperatorProcess, running_operator
from sessions import Sessions, sessions

_namespaces = itertools.count()


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Sessions]:
    with sessions(tmp_path / "fleet") as running:
        yield running


@pytest.fixture
def dev_cluster() -> Iterator[BackgroundCluster]:
    """A dev cluster (API server, local pod runtime, our CRDs) on a thread of its own, torn down after."""
    with BackgroundCluster(runtime="local", bookmark_seconds=1.0) as cluster:
        yield cluster


# The operator tests: a module defines `cluster` (a BackgroundCluster with the runtime it needs), and may
# define `operator_args`; these fixtures give it the real operator process and a namespace per test.


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return ()


@pytest.fixture(scope="module")
def operator(
    cluster: BackgroundCluster, operator_args: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    with running_operator(cluster, tmp_path_factory.mktemp("operator"), *operator_args) as process:
        yield process


@pytest.fixture
def ns(cluster: BackgroundCluster, operator: OperatorProcess, request: pytest.FixtureRequest) -> Namespace:
    prefix = request.module.__name__.removeprefix("test_").replace("_", "-")
    return Namespace(cluster, f"{prefix}-{next(_namespaces)}")
