"""What the operator reads from an attempt's pod: a small, immutable view of its status.

`observe(pod)` turns a pod as the API returns it into a `PodView` holding only what the lifecycle and the
classification look at: the attempt it belongs to, whether it is still live, when supervision started,
how the session container ended (exit code, reason, termination message), the supervisor's own termination
message, why a container is waiting, and whether the pod was disrupted (evicted, preempted, node lost).
The operator keeps one view per pod in memory instead of the whole object, which is most of what a pod
costs it at 10,000 dispatches.

A pod is *live* until its phase is `Succeeded` or `Failed`: a pod being deleted still runs processes until
the kubelet has stopped them, so it still counts against "one live pod per dispatch".

Deliberately not here: judging the outcome (`classify`) and any I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleetdispatch.api.names import ATTEMPT_LABEL, SESSION_CONTAINER, SUPERVISOR_CONTAINER, session_container
from fleetdispatch.session.protocol import parse_time

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class Termination:
    """How a container's last run ended."""

    exit_code: int
    reason: str | None = None
    message: str | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class PodView:
    name: str
    attempt: int | None
    phase: str = "Pending"
    deleting: bool = False
    pod_started_at: datetime | None = None
    supervisor_started_at: datetime | None = None
    session_started_at: datetime | None = None
    session: Termination | None = None
    supervisor_message: str | None = None
    # The supervisor is still running: its final figures (its termination message) are still to come.
    supervisor_running: bool = False
    waiting_reason: str | None = None
    waiting_message: str | None = None
    # Pod-level: `Evicted` with the kubelet's message, or a DisruptionTarget condition's reason.
    disruption: str | None = None
    disruption_message: str | None = None
    # The uid of the dispatch that owns the pod (its controller owner reference): a dispatch deleted and
    # created again under the same name must not take its predecessor's pods for its own.
    owner_uid: str | None = None
    # When the pod was created (the start timeout runs from it), and why it is not scheduled yet, if so.
    created_at: datetime | None = None
    unschedulable: str | None = None
    unschedulable_message: str | None = None
    # The pod's own uid: its supervisor's Lease is owned by it (`live.distrust`).
    uid: str | None = None

    @property
    def live(self) -> bool:
        return self.phase not in TERMINAL_PHASES

    @property
    def supervision_started_at(self) -> datetime | None:
        """When the attempt's budget started, never earlier than the supervisor's first start: the
        supervisor counts its deadline from its own start, which is never before the pod's start.

        Once the session runs, its start is the answer: it comes after the supervisor's first start and,
        unlike the supervisor's (a native sidecar is restarted whenever it exits), it never moves, so a
        crash-looping supervisor cannot push the backstop further out on every restart."""
        if self.session_started_at is not None:
            return max(t for t in (self.pod_started_at, self.session_started_at) if t)
        starts = [t for t in (self.pod_started_at, self.supervisor_started_at) if t]
        return max(starts) if starts else None


def _statuses(status: Mapping[str, Any], field: str) -> dict[str, Mapping[str, Any]]:
    items = status.get(field) or []
    return {str(item.get("name")): item for item in items if isinstance(item, Mapping)}


def _session_name(spec: Mapping[str, Any]) -> str:
    names = [str(c.get("name")) for c in spec.get("containers") or [] if isinstance(c, Mapping)]
    index = session_container(names)
    return SESSION_CONTAINER if index is None else names[index]


def _started_at(container: Mapping[str, Any] | None) -> datetime | None:
    if not container:
        return None
    state = container.get("state") or {}
    for key in ("running", "terminated"):
        started = parse_time((state.get(key) or {}).get("startedAt"))
        if started:
            return started
    return None


def _termination(container: Mapping[str, Any] | None) -> Termination | None:
    if not container:
        return None
    terminated = (container.get("state") or {}).get("terminated")
    if not isinstance(terminated, Mapping) or not isinstance(terminated.get("exitCode"), int):
        return None
    return Termination(
        exit_code=terminated["exitCode"],
        reason=terminated.get("reason") or None,
        message=terminated.get("message") or None,
        finished_at=parse_time(terminated.get("finishedAt")),
    )


def _attempt(labels: Mapping[str, Any]) -> int | None:
    value = labels.get(ATTEMPT_LABEL)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def observe(pod: Mapping[str, Any]) -> PodView:
    """The view of one pod; tolerant of missing fields, because a pod's status fills in over time."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    containers = _statuses(status, "containerStatuses")
    init_containers = _statuses(status, "initContainerStatuses")
    session = containers.get(_session_name(spec))
    supervisor = init_containers.get(SUPERVISOR_CONTAINER)
    waiting = ((session or {}).get("state") or {}).get("waiting") or {}
    disruption = disruption_message = None
    if status.get("reason") == "Evicted":
        disruption, disruption_message = "Evicted", status.get("message")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            disruption = disruption or condition.get("reason") or "DisruptionTarget"
            disruption_message = disruption_message or condition.get("message")
    unschedulable = unschedulable_message = None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            unschedulable = condition.get("reason") or "Unschedulable"
            unschedulable_message = condition.get("message") or None
    supervisor_end = _termination(supervisor)
    return PodView(
        name=str(metadata.get("name")),
        attempt=_attempt(metadata.get("labels") or {}),
        phase=str(status.get("phase") or "Pending"),
        deleting=bool(metadata.get("deletionTimestamp")),
        pod_started_at=parse_time(status.get("startTime")),
        supervisor_started_at=_started_at(supervisor),
        session_started_at=_started_at(session),
        session=_termination(session),
        supervisor_message=supervisor_end.message if supervisor_end else None,
        supervisor_running=isinstance(((supervisor or {}).get("state") or {}).get("running"), Mapping),
        waiting_reason=waiting.get("reason") or None,
        waiting_message=waiting.get("message") or None,
        disruption=disruption,
        disruption_message=disruption_message,
        owner_uid=_controller_uid(metadata.get("ownerReferences") or []),
        created_at=parse_time(metadata.get("creationTimestamp")),
        unschedulable=unschedulable,
        unschedulable_message=unschedulable_message,
        uid=str(metadata["uid"]) if metadata.get("uid") else None,
    )


def _controller_uid(references: Any) -> str | None:
    for reference in references:
        if isinstance(reference, Mapping) and reference.get("controller"):
            uid = reference.get("uid")
            return str(uid) if uid else None
    return None
