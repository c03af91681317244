"""Shared fixtures: real session processes that are always reaped, and the dev cluster.

One control plane for the whole test session (`cluster`), a namespace per test (`ns`): starting
kube-apiserver, etcd and the controllers takes seconds, a namespace milliseconds.
"""

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


@pytest.fixture(scope="session")
def cluster() -> Iterator[BackgroundCluster]:
    """The dev cluster (real control plane, the node agent, our CRDs) for the whole test session."""
    with BackgroundCluster(runtime="local") as running_cluster:
        yield running_cluster


# The operator tests: a module may define `operator_args` and `runtime` (the node agent's runtime for its
# dispatches' pods: local, instant or none); these fixtures give it the real operator process and a
# namespace per test.


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return ()


@pytest.fixture(scope="module")
def runtime() -> str:
    return "local"


@pytest.fixture(scope="module")
def operator(
    cluster: BackgroundCluster, operator_args: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    with running_operator(cluster, tmp_path_factory.mktemp("operator"), *operator_args) as process:
        yield process


@pytest.fixture
def ns(
    cluster: BackgroundCluster, operator: OperatorProcess, runtime: str, request: pytest.FixtureRequest
) -> Namespace:
    prefix = request.module.__name__.removeprefix("test_").replace("_", "-")
    return Namespace(cluster, f"{prefix}-{next(_namespaces)}", runtime=runtime)
