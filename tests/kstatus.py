"""Test support: what kstatus says about an object, the way Flux and `helm --wait=watcher` compute it.

kstatus is the status library of sigs.k8s.io/cli-utils (`pkg/kstatus/status`): Flux's kustomize-controller
health checks (`wait: true`, `healthChecks`) and Helm 4's `--wait` (`watcher`, its default) wait on it. This
module repeats the rules of `status.Compute` that apply to a custom resource, in their order, so that tests
can prove what those tools will see for each phase of a FleetDispatch without a Go toolchain:

1. `metadata.deletionTimestamp` set: **Terminating**.
2. `status.observedGeneration` present and different from `metadata.generation`: **InProgress**
   (`checkGeneration`; an absent observedGeneration skips the check).
3. The first of the standard conditions that is `True`, in list order: `Reconciling` gives **InProgress**,
   `Stalled` gives **Failed**, with that condition's message (`checkGenericProperties`).
4. Built-in kinds have rules of their own (`legacyTypes`); a custom resource has none.
5. A `Ready` condition: `True` gives **Current**, `False` or `Unknown` gives **InProgress** with its reason
   and message (`checkReadyCondition`).
6. Nothing of the above: **Current** ("Resource is current"), which is why an object the controller has not
   written a status for yet reads as Current.

kstatus has no Suspended status. How a waiting tool ends, given the statuses (`aggregate` is
`aggregator.AggregateStatus`): Helm's watcher stops once every resource that is not Failed is Current,
then reports the Failed ones as errors; anything InProgress keeps it waiting until its timeout. Flux's
kustomize-controller waits for every resource to be Current, or times out and lists the others' statuses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

IN_PROGRESS = "InProgress"
FAILED = "Failed"
CURRENT = "Current"
TERMINATING = "Terminating"
NOT_FOUND = "NotFound"
UNKNOWN = "Unknown"


@dataclass(frozen=True)
class Result:
    status: str
    message: str


def compute(obj: Mapping[str, Any]) -> Result:
    """`status.Compute` for a custom resource (an object as the API server serves it)."""
    metadata = obj.get("metadata") or {}
    status = obj.get("status") or {}
    if metadata.get("deletionTimestamp"):
        return Result(TERMINATING, "Resource scheduled for deletion")
    generation = metadata.get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        kind = obj.get("kind", "")
        return Result(
            IN_PROGRESS, f"{kind} generation is {generation}, but latest observed generation is {observed}"
        )
    conditions = status.get("conditions") or []
    for condition in conditions:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Reconciling":
            return Result(IN_PROGRESS, str(condition.get("message") or ""))
        if condition.get("type") == "Stalled":
            return Result(FAILED, str(condition.get("message") or ""))
    for condition in conditions:
        if condition.get("type") != "Ready":
            continue
        if condition.get("status") == "True":
            return Result(CURRENT, "Resource is Ready")
        if condition.get("status") in ("False", "Unknown"):
            return Result(IN_PROGRESS, str(condition.get("message") or condition.get("reason") or ""))
    return Result(CURRENT, "Resource is current")


def aggregate(statuses: Iterable[str], desired: str = CURRENT) -> str:
    """`aggregator.AggregateStatus`: the desired status when all have it, else the first that blocks it."""
    seen = list(statuses)
    if not seen:
        return desired
    if any(s == FAILED for s in seen):
        return FAILED
    if any(s == UNKNOWN for s in seen):
        return UNKNOWN
    if all(s == desired for s in seen):
        return desired
    return IN_PROGRESS


def helm_wait_ends(statuses: Iterable[str]) -> tuple[bool, bool]:
    """Helm 4's status watcher: (whether it stops waiting now, whether it then reports success).

    Failed resources are left out of the aggregate (they need an intervention, so waiting on is pointless),
    and reported as errors once the others are Current.
    """
    seen = list(statuses)
    rest = [s for s in seen if s != FAILED]
    done = aggregate(rest) == CURRENT
    return done, done and len(rest) == len(seen)
