"""The node agent runs a container without `command` as its image would, for the images it knows.

The node pulls no image: for the project's image (any tag or digest) it runs the machine's `fleetdispatch`,
the Dockerfile's ENTRYPOINT, with the container's `args` or else the image's CMD (`--help`); for an image
it knows nothing of, such a container waits with CreateContainerError, saying why. Observed as a user
does: the pod's status and its log through the API server. The rule itself:
tests/unit/test_nodeagent_entrypoints.py.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

import fleetdispatch
from fleetdispatch.devcluster.nodeagent import PROJECT_IMAGE
from fleetdispatch.devcluster.stack import BackgroundCluster
from kube import ApiError
from operators import Namespace
from waiting import eventually

_names = itertools.count()
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


@pytest.fixture
def space(cluster: BackgroundCluster) -> Iterator[Namespace]:
    namespace = Namespace(cluster, f"nodeagent-images-{next(_names)}")
    try:
        yield namespace
    finally:
        with contextlib.suppress(ApiError):
            namespace.kube.delete(f"/api/v1/namespaces/{namespace.name}")


def create(space: Namespace, name: str, **container: Any) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": RESTRICTED_POD,
            "containers": [{"name": "main", "securityContext": RESTRICTED_CONTAINER, **container}],
        },
    }
    space.kube.create(f"/api/v1/namespaces/{space.name}/pods", body)


def phase(space: Namespace, name: str) -> str | None:
    found = str((space.pod(name).get("status") or {}).get("phase"))
    return found if found in ("Succeeded", "Failed") else None


def waiting(space: Namespace, name: str) -> dict[str, Any] | None:
    statuses = (space.pod(name).get("status") or {}).get("containerStatuses") or []
    state = statuses[0]["state"].get("waiting") if statuses else None
    return state if state and state.get("reason") == "CreateContainerError" else None


def test_the_project_image_runs_its_entrypoint_and_an_unknown_one_needs_a_command(
    space: Namespace,
) -> None:
    create(space, "with-args", image=f"{PROJECT_IMAGE}:9.9.9", args=["--version"])
    create(space, "with-nothing", image=f"{PROJECT_IMAGE}@sha256:{'0' * 64}")
    create(space, "with-command", image=f"{PROJECT_IMAGE}:9.9.9", command=["echo"], args=["own"])
    create(space, "unknown", image="busybox:1.36", args=["echo", "hello"])
    for name in ("with-args", "with-nothing", "with-command"):
        assert eventually(lambda name=name: phase(space, name), 60, f"{name} finished") == "Succeeded"
    # The machine's fleetdispatch, whatever the tag says: the node has no other.
    assert space.logs("with-args", "main").strip() == f"fleetdispatch {fleetdispatch.__version__}"
    assert space.logs("with-nothing", "main").startswith("usage: fleetdispatch")  # the image's CMD
    assert space.logs("with-command", "main").strip() == "own"  # `command` replaces the entrypoint
    state = eventually(lambda: waiting(space, "unknown"), 30, "unknown waits with CreateContainerError")
    assert "spec.containers{main}.command" in state["message"]
    assert PROJECT_IMAGE in state["message"]  # the images it does know
