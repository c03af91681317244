"""`metav1.Condition` helpers over the status model, in the way Kueue's workload helpers are.

`set_condition` replaces one condition by type and keeps its `lastTransitionTime` unless its status
changed, which is what `kubectl wait`, kstatus and Argo CD rely on to tell a transition from a refresh.

Deliberately not here: which conditions a phase implies (`lifecycle`).
"""

from __future__ import annotations

from datetime import datetime

from fleetdispatch.api.models import Condition, ConditionStatus

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
REQUEUED = "Requeued"
SUSPENDED = "Suspended"
# Set once the API server refused an attempt's pod (True while it does), like a ReplicaSet's ReplicaFailure.
POD_CREATE_FAILED = "PodCreateFailed"
ORDER = (READY, RECONCILING, STALLED, REQUEUED, SUSPENDED, POD_CREATE_FAILED)


def find(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: list[Condition],
    type_: str,
    *,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[Condition]:
    """The conditions with `type_` set; the list is new, ordered by `ORDER`, other types kept."""
    old = find(conditions, type_)
    transition = old.last_transition_time if old is not None and old.status == status else now
    new = Condition(
        type=type_,
        status=status,
        observed_generation=generation,
        last_transition_time=transition,
        reason=reason,
        message=message,
    )
    kept = [c for c in conditions if c.type != type_] + [new]
    rank = {name: index for index, name in enumerate(ORDER)}
    return sorted(kept, key=lambda c: rank.get(c.type, len(ORDER)))
