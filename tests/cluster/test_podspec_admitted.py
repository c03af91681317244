"""A built pod in the dev cluster: the real kube-apiserver admits it under Pod Security `restricted`, the node
agent runs the supervisor and the session, and the session reads its protocol environment and the
supervisor's deadline file."""

from __future__ import annotations

import re
import time
from typing import Any

from fleetdispatch.api import models
from fleetdispatch.api.settings import OperatorSettings
from fleetdispatch.core import podspec
from fleetdispatch.core.podspec import AttemptRequest, DispatchRef
from fleetdispatch.devcluster.stack import BackgroundCluster
from operators import Namespace
from waiting import eventually

SETTINGS = OperatorSettings()

# Waits (boundedly) for the supervisor's first deadline file: the runtime starts the session right after it.
WAIT_FOR_DEADLINE = (
    "for i in 1 2 3 4 5 6 7 8 9 10; do for j in 1 2 3 4 5 6 7 8 9 10; do "
    '[ -s "$FLEET_STATE_DIR/deadline" ] && break 2; sleep 0.1; done; done'
)


def test_a_built_pod_runs_in_the_dev_cluster_and_the_session_sees_its_protocol(
    cluster: BackgroundCluster,
) -> None:
    # No operator in this module: the test creates the attempt's pod itself, as the operator would.
    ns = Namespace(cluster, "podspec-live")
    command = [
        "sh",
        "-c",
        'echo "$FLEET_DISPATCH $FLEET_ATTEMPT $FLEET_RESUME $FLEET_RESUME_TOKEN"; '
        f'{WAIT_FOR_DEADLINE}; cat "$FLEET_STATE_DIR/deadline"',
    ]
    dispatch = ns.create(
        "podspec-live",
        {
            "template": {"spec": {"containers": [{"name": "agent", "image": "busybox", "command": command}]}},
            "timeouts": {"deadlineSeconds": 30, "idleOutputSeconds": 0, "killGraceSeconds": 1},
            "activity": {"pollSeconds": 1},
        },
    )
    metadata = dispatch["metadata"]
    ref = DispatchRef(metadata["name"], metadata["namespace"], metadata["uid"])
    # `$(FLEET_ATTEMPT)` would be expanded by the kubelet if the builder did not escape it.
    token = "sess-$(FLEET_ATTEMPT)-$$"
    now = time.time()
    pod = podspec.build_pod(
        ref,
        models.parse_spec(dispatch["spec"]),
        dispatch["spec"]["template"],
        AttemptRequest(attempt=2, resume=True, resume_token=token),
        now,
        SETTINGS,
    )
    # The namespace enforces Pod Security `restricted`: the API server admits the built pod.
    ns.kube.create(f"/api/v1/namespaces/{ns.name}/pods", pod)

    def finished() -> dict[str, Any] | None:
        current = ns.pod("podspec-live-2")
        return current if current["status"].get("phase") in ("Succeeded", "Failed") else None

    final = eventually(finished, 60, "podspec-live-2 ended")
    lines = ns.logs("podspec-live-2", "agent").splitlines()
    assert final["status"]["phase"] == "Succeeded", (final["status"], lines)
    assert lines[0] == f"{ns.name}/podspec-live 2 1 {token}"
    assert re.fullmatch(r"[0-9]+", lines[1]), lines
    assert int(now) <= int(lines[1]) <= int(now) + 30 + 5
