"""Pods as the API server returns them, for the tests of the operator's core: `make_pod` and the container
states, so that every test of the core goes through the real `podstatus.observe`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from fleetdispatch.api.names import ATTEMPT_LABEL, DISPATCH_LABEL, SESSION_CONTAINER, SUPERVISOR_CONTAINER

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def ts(at: datetime) -> str:
    """A metav1.Time as the API server writes it."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def running(at: datetime) -> dict[str, Any]:
    return {"running": {"startedAt": ts(at)}}


def waiting(reason: str, message: str | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"reason": reason}
    if message is not None:
        state["message"] = message
    return {"waiting": state}


def terminated(
    exit_code: int,
    *,
    reason: str | None = None,
    message: str | None = None,
    started: datetime | None = T0,
    finished: datetime | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
    }
    if message is not None:
        state["message"] = message
    if started is not None:
        state["startedAt"] = ts(started)
    if finished is not None:
        state["finishedAt"] = ts(finished)
    return {"terminated": state}


def outcome(reason: str, **fields: Any) -> str:
    """An `outcome.json` as a session or the supervisor writes it (the termination message's text)."""
    return json.dumps({"reason": reason, **fields}) + "\n"


def supervisor_report(resume_token: str | None = None, **fields: Any) -> str:
    """The supervisor's termination message: its final figures and, on TERM, the last resume token."""
    report = {**fields, **({"resumeToken": resume_token} if resume_token is not None else {})}
    return json.dumps(report)


def make_pod(
    name: str = "job-1",
    attempt: int | str | None = 1,
    *,
    phase: str | None = "Pending",
    started: datetime | None = None,
    supervisor: dict[str, Any] | None = None,
    session: dict[str, Any] | None = None,
    supervisor_restarts: int = 0,
    deleting: datetime | None = None,
    evicted: str | None = None,
    disruption: str | None = None,
    disruption_message: str | None = None,
    containers: tuple[str, ...] = (SESSION_CONTAINER,),
    session_name: str = SESSION_CONTAINER,
    user_init: bool = False,
) -> dict[str, Any]:
    """A pod of dispatch `job` as the API server returns it; `None` arguments leave the field out."""
    labels = {DISPATCH_LABEL: name.rsplit("-", 1)[0]}
    if attempt is not None:
        labels[ATTEMPT_LABEL] = str(attempt)
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": "default",
        "uid": f"uid-{name}",
        "labels": labels,
        "ownerReferences": [
            {"apiVersion": "fleet.dispatch.dev/v1alpha1", "kind": "FleetDispatch", "name": "job"}
        ],
    }
    if deleting is not None:
        metadata["deletionTimestamp"] = ts(deleting)
        metadata["deletionGracePeriodSeconds"] = 30
    init_specs: list[dict[str, Any]] = [
        {
            "name": SUPERVISOR_CONTAINER,
            "image": "ghcr.io/fleet-dispatch/fleet-dispatch:0.1.0",
            "restartPolicy": "Always",
            "command": ["fleetdispatch", "supervise"],
        }
    ]
    if user_init:
        init_specs.append({"name": "fetch", "image": "busybox"})
    spec = {
        "restartPolicy": "Never",
        "shareProcessNamespace": True,
        "initContainers": init_specs,
        "containers": [
            {
                "name": c,
                "image": "agent:1",
                **(
                    {
                        "terminationMessagePath": "/var/run/fleet/outcome.json",
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                    }
                    if c == session_name
                    else {}
                ),
            }
            for c in containers
        ],
    }
    status: dict[str, Any] = {"qosClass": "BestEffort"}
    if phase is not None:
        status["phase"] = phase
    if started is not None:
        status["startTime"] = ts(started)
    conditions = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": ts(T0)}]
    if evicted is not None:
        status["reason"] = "Evicted"
        status["message"] = evicted
    if disruption is not None:
        conditions.append(
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": disruption,
                "message": disruption_message or "",
                "lastTransitionTime": ts(T0),
            }
        )
    status["conditions"] = conditions
    if supervisor is not None:
        init_statuses = [
            {
                "name": SUPERVISOR_CONTAINER,
                "image": "ghcr.io/fleet-dispatch/fleet-dispatch:0.1.0",
                "ready": "running" in supervisor,
                "restartCount": supervisor_restarts,
                "started": "running" in supervisor,
                "state": supervisor,
            }
        ]
        if user_init:
            init_statuses.append(
                {
                    "name": "fetch",
                    "ready": False,
                    "restartCount": 0,
                    "state": terminated(0, message="fetched"),
                }
            )
        status["initContainerStatuses"] = init_statuses
    if session is not None:
        status["containerStatuses"] = [
            {
                "name": c,
                "image": "agent:1",
                "ready": c == session_name and "running" in session,
                "restartCount": 0,
                "state": session if c == session_name else running(T0),
            }
            for c in containers
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}


def exited(
    n: int,
    code: int,
    message: str | None = None,
    *,
    at: datetime = T0,
    end: datetime | None = None,
    stopping: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A pod whose session exited; `stopping`: its supervisor still runs, so the pod is still live."""
    return make_pod(
        f"job-{n}",
        n,
        phase="Running" if stopping else ("Succeeded" if code == 0 else "Failed"),
        started=at,
        supervisor=running(at) if stopping else terminated(0, started=at),
        session=terminated(code, message=message, started=at + timedelta(seconds=2), finished=end),
        **extra,
    )
