"""Live status: what the supervisor's Lease says about a running attempt, and when the operator acts on it.

The supervisor of each pod renews a `coordination.k8s.io/v1` Lease (`session.heartbeat`) every heartbeat
period, carrying its figures (the deadline as extended, the last activity and its reason, the last output)
and the session's usage so far as annotations. This module is the operator's pure judgement of such a Lease:

- **`observe(body)`** reads a Lease as the API returns it into a small `LeaseView` (as `podstatus.observe`
  does for pods), tolerant of anything missing or malformed.
- **Trust** (`distrust`): the heartbeat's Role may create, get and patch every Lease of its namespace (RBAC
  cannot restrict `create` by name or label), so a Lease counts only when it is the one the current
  attempt's supervisor writes: named after the attempt's pod, held by it (`holderIdentity`), owned by that
  very pod (an owner reference to its uid, so a Lease left by an earlier pod of the same name is not it),
  and labelled with the dispatch and the attempt. Anything else is ignored.
- **The live figures** (`changes`): the status fields that differ from the Lease's, to mirror while the
  attempt runs; a write of them is due at most once per `write_interval_seconds` (`write_at`).
- **A lost supervisor** (`lost_at`): the Lease not renewed for `LOST_PERIODS` heartbeat periods. The Lease's
  `renewTime` is the node's clock, read against the operator's, so `Live.tolerance_seconds` (the operator's
  `clock_tolerance_seconds` setting) is added for their skew; and the time counts only from when the
  operator could see: from the Lease's renewal, never from before the Lease first appeared (a supervisor
  still starting has none, and is never lost), and not within `LOST_PERIODS` periods of the operator's view
  of Leases (re)starting (`visible_since`: a restart, a broken watch or an API outage, during which the
  supervisors may have renewed unseen or been unable to).

Deliberately not here: watching Leases and reading them again before acting (`controller.leases`, the
reconciler), the lifecycle's use of the verdict (`lifecycle`), and any clock or I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fleetdispatch.api.models import Usage
from fleetdispatch.api.names import ATTEMPT_LABEL, DISPATCH_LABEL
from fleetdispatch.api.settings import OperatorSettings
from fleetdispatch.core import usage
from fleetdispatch.core.podstatus import PodView
from fleetdispatch.session import heartbeat, protocol
from fleetdispatch.session.protocol import parse_time

# A Lease not renewed for this many heartbeat periods means its supervisor is lost (`leaseDurationSeconds`
# is as many periods, so one or two lost requests never look like it).
LOST_PERIODS = 3
# The skew allowed between a node's clock (the Lease's renewTime) and the operator's, by default (the
# operator's setting; one definition of it).
CLOCK_TOLERANCE_SECONDS: float = OperatorSettings.model_fields["clock_tolerance_seconds"].default
# The status fields the Lease carries (their aliases), each with the FleetDispatchStatus attribute.
LIVE_FIELDS: Mapping[str, str] = {
    protocol.REPORT_DEADLINE: "deadline",
    protocol.REPORT_LAST_ACTIVITY: "last_activity_time",
    protocol.REPORT_ACTIVITY_REASON: "activity_reason",
    protocol.REPORT_LAST_OUTPUT: "last_output_time",
}


@dataclass(frozen=True)
class LeaseView:
    """What the operator reads of one Lease."""

    name: str
    namespace: str = ""
    dispatch: str | None = None  # the dispatch label
    attempt: int | None = None  # the attempt label
    holder: str | None = None
    owner_uids: tuple[str, ...] = ()  # the uids of the Pods that own it
    renew_time: datetime | None = None
    deadline: datetime | None = None
    last_activity: datetime | None = None
    activity_reason: str | None = None
    last_output: datetime | None = None
    # The session's usage so far (the `usage` annotation), for the dispatch's budget.
    usage: Usage | None = None

    def figures(self) -> dict[str, Any]:
        """The live figures the Lease carries, by status attribute; what it does not say is left out."""
        values: dict[str, Any] = {
            "deadline": self.deadline,
            "last_activity_time": self.last_activity,
            "activity_reason": self.activity_reason
            if self.activity_reason in protocol.ACTIVITY_REASONS
            else None,
            "last_output_time": self.last_output,
        }
        return {key: value for key, value in values.items() if value is not None}


def _whole_seconds(value: object) -> datetime | None:
    parsed = parse_time(value)
    return None if parsed is None else parsed.replace(microsecond=0)


def observe(body: Mapping[str, Any]) -> LeaseView:
    """The view of one Lease; fields that are missing or unreadable are None."""
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    attempt = labels.get(ATTEMPT_LABEL)

    def annotation(field: str) -> object:
        return annotations.get(heartbeat.ANNOTATION_PREFIX + heartbeat.ANNOTATIONS[field])

    reason = annotation(protocol.REPORT_ACTIVITY_REASON)
    owners = tuple(
        str(reference["uid"])
        for reference in metadata.get("ownerReferences") or []
        if isinstance(reference, Mapping)
        and reference.get("kind") == "Pod"
        and reference.get("apiVersion") == "v1"
        and reference.get("uid")
    )
    holder = spec.get("holderIdentity")
    annotation_usage = annotations.get(heartbeat.ANNOTATION_PREFIX + heartbeat.USAGE_ANNOTATION)
    return LeaseView(
        name=str(metadata.get("name") or ""),
        namespace=str(metadata.get("namespace") or ""),
        dispatch=labels.get(DISPATCH_LABEL) if isinstance(labels.get(DISPATCH_LABEL), str) else None,
        attempt=int(attempt) if isinstance(attempt, str) and attempt.isdigit() else None,
        holder=holder if isinstance(holder, str) else None,
        owner_uids=owners,
        # MicroTime: kept to the microsecond, so a renewal within the same second is a change too.
        renew_time=parse_time(spec.get("renewTime")),
        deadline=_whole_seconds(annotation(protocol.REPORT_DEADLINE)),
        last_activity=_whole_seconds(annotation(protocol.REPORT_LAST_ACTIVITY)),
        activity_reason=reason if isinstance(reason, str) and reason in protocol.ACTIVITY_REASONS else None,
        last_output=_whole_seconds(annotation(protocol.REPORT_LAST_OUTPUT)),
        usage=usage.from_annotation(annotation_usage),
    )


def distrust(lease: LeaseView, pod: PodView, dispatch: str, attempt: int) -> str | None:
    """Why `lease` is not the one the supervisor of `pod` (attempt `attempt` of `dispatch`) writes; None
    when it is."""
    if lease.name != pod.name:
        return f"it is not named after the pod {pod.name}"
    if lease.holder != pod.name:
        return f"its holderIdentity is {lease.holder!r}, not the pod {pod.name}"
    if pod.uid is None or pod.uid not in lease.owner_uids:
        return f"it is not owned by the pod {pod.name} (uid {pod.uid})"
    if lease.dispatch != dispatch:
        return f"its dispatch label is {lease.dispatch!r}, not {dispatch!r}"
    if lease.attempt != attempt or pod.attempt != attempt:
        return f"its attempt label is {lease.attempt!r}, not the current attempt {attempt}"
    return None


@dataclass(frozen=True)
class Live:
    """What the lifecycle needs to follow the current attempt's heartbeat (all from the operator)."""

    # The Lease named after the current attempt's pod, when the operator sees one (trusted or not).
    lease: LeaseView | None
    # Since when the operator's view of Leases has been unbroken (its watch's last full listing).
    visible_since: datetime
    period_seconds: float
    write_interval_seconds: float
    # When the operator last wrote live figures of this dispatch (it keeps that in memory only).
    last_write: datetime | None = None
    tolerance_seconds: float = CLOCK_TOLERANCE_SECONDS


def _later(moment: datetime, seconds: float) -> datetime:
    try:
        return moment + timedelta(seconds=seconds)
    except OverflowError:
        return datetime.max.replace(tzinfo=moment.tzinfo)


def lost_at(live: Live, lease: LeaseView) -> datetime:
    """When the supervisor of `lease` counts as lost, on the operator's clock, unless it renews first."""
    lost_after = LOST_PERIODS * live.period_seconds
    seen = _later(live.visible_since, lost_after)
    if lease.renew_time is None:
        # A Lease without a renewTime was never renewed: it counts from when it was first seen.
        return seen
    return max(_later(lease.renew_time, lost_after + live.tolerance_seconds), seen)


def changes(lease: LeaseView, current: Mapping[str, Any]) -> dict[str, Any]:
    """The live figures of `lease` that differ from `current` (status attributes to values)."""
    return {key: value for key, value in lease.figures().items() if current.get(key) != value}


def write_at(live: Live, now: datetime) -> datetime:
    """When live figures may be written next: `now`, unless the last write was under the interval ago."""
    if live.last_write is None or live.write_interval_seconds <= 0:
        return now
    return max(now, _later(live.last_write, live.write_interval_seconds))


def lost_message(live: Live, lease: LeaseView, now: datetime) -> str:
    """Why the attempt of `lease` ended as `SupervisorLost`."""
    renewed = (
        "never renewed"
        if lease.renew_time is None
        else f"last renewed at {protocol.format_time(lease.renew_time)}"
    )
    ago = (
        "" if lease.renew_time is None else f", {math.floor((now - lease.renew_time).total_seconds())} s ago"
    )
    return (
        f"the supervisor's Lease {lease.name} was {renewed}{ago} ({LOST_PERIODS} heartbeat periods of "
        f"{live.period_seconds:g} s, plus {live.tolerance_seconds:g} s for clock skew): the supervisor is "
        "lost, so the pod was deleted"
    )
