"""The real supervisor in a real pod of the dev cluster (the node agent gives the pod a PID namespace of its
own, its pause process PID 1): a session that sheds its environment is still found and stopped, and a
deleted pod's supervisor reports the session's last resume token in its termination message.

No operator here: the test creates the attempt's pod itself, as the operator would (`podspec.build_pod`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from fleetdispatch.api import models, names
from fleetdispatch.api.settings import OperatorSettings
from fleetdispatch.core import podspec
from fleetdispatch.core.podspec import AttemptRequest, DispatchRef
from fleetdispatch.devcluster.stack import BackgroundCluster
from kube import ApiError
from operators import Namespace
from waiting import eventually

SETTINGS = OperatorSettings()


# Keeps a deleted pod (its final container states) until the test has read it.
KEEP = "test.fleet.dispatch.dev/keep"


def start_attempt(
    ns: Namespace, name: str, command: list[str], timeouts: dict[str, int], *, keep: bool = False
) -> str:
    dispatch = ns.create(
        name,
        {
            "template": {"spec": {"containers": [{"name": "agent", "image": "busybox", "command": command}]}},
            "timeouts": timeouts,
            "activity": {"pollSeconds": 1, "cpuPercentThreshold": 100},
        },
    )
    metadata = dispatch["metadata"]
    ref = DispatchRef(metadata["name"], metadata["namespace"], metadata["uid"])
    pod = podspec.build_pod(
        ref,
        models.parse_spec(dispatch["spec"]),
        dispatch["spec"]["template"],
        AttemptRequest(attempt=1, resume=False, resume_token=None),
        time.time(),
        SETTINGS,
    )
    if keep:
        pod["metadata"]["finalizers"] = [KEEP]
    ns.kube.create(f"/api/v1/namespaces/{ns.name}/pods", pod)
    return str(pod["metadata"]["name"])


def supervisor_end(ns: Namespace, pod: str) -> dict[str, Any] | None:
    """The supervisor container's `terminated` state, once it has one."""
    try:
        statuses = ns.pod(pod)["status"].get("initContainerStatuses") or []
    except ApiError:  # the pod is gone already
        return None
    for status in statuses:
        if status["name"] == names.SUPERVISOR_CONTAINER:
            terminated = (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get(
                "terminated"
            )
            return terminated if isinstance(terminated, dict) else None
    return None


def test_a_session_that_clears_its_environment_is_still_stopped_at_the_deadline(
    cluster: BackgroundCluster,
) -> None:
    ns = Namespace(cluster, "supervisor-env-i")
    # `exec env -i`: the session's only process carries no FLEET_* variable at all.
    command = ["sh", "-c", "exec env -i sleep 600"]
    pod = start_attempt(
        ns,
        "env-i",
        command,
        {"deadlineSeconds": 3, "maxExtensionSeconds": 0, "idleOutputSeconds": 0, "killGraceSeconds": 1},
    )

    def finished() -> dict[str, Any] | None:
        current = ns.pod(pod)
        return current if current["status"].get("phase") in ("Succeeded", "Failed") else None

    final = eventually(finished, 90, f"{pod} ended")
    log = ns.logs(pod, names.SUPERVISOR_CONTAINER)
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert [e["reason"] for e in events if e["event"] == "stop"] == ["DeadlineExceeded"], log
    assert next(e for e in events if e["event"] == "signalled")["processes"] == 1, log
    session = next(s for s in final["status"]["containerStatuses"] if s["name"] == "agent")
    assert session["state"]["terminated"]["exitCode"] != 0, session


def test_a_deleted_pods_supervisor_reports_the_last_resume_token(cluster: BackgroundCluster) -> None:
    ns = Namespace(cluster, "supervisor-term")
    command = ["sh", "-c", 'echo step-7 > "$FLEET_STATE_DIR/resume-token"; exec env -i sleep 600']
    pod = start_attempt(ns, "term", command, {"deadlineSeconds": 600, "killGraceSeconds": 1}, keep=True)
    eventually(
        lambda: (
            '"start"' in ns.logs(pod, names.SUPERVISOR_CONTAINER)
            and ns.pod(pod)["status"].get("phase") == "Running"
        ),
        90,
        f"{pod} running",
    )
    time.sleep(2)  # a poll or two: the supervisor has seen the session
    ns.delete_pod(pod, grace=10)
    try:
        end = eventually(lambda: supervisor_end(ns, pod), 60, "the supervisor's termination state")
    finally:
        ns.kube.patch(f"/api/v1/namespaces/{ns.name}/pods/{pod}", {"metadata": {"finalizers": None}})
    message = json.loads(end.get("message") or "{}")
    assert message.get("resumeToken") == "step-7", end
