"""What a FleetCampaign does next, as a pure function of its spec and its dispatches.

A campaign is one manifest for many sessions: one FleetDispatch per item, named `<campaign>-<item>`,
owned by the campaign, plus any dispatch written by hand that carries the campaign's label. `decide` takes
the campaign (spec, stored status) and its members (the controller's view of those dispatches) and returns
which dispatches to create, which to delete, whose `spec.suspend` to set, and the status: counts by phase,
phase, start and completion times, and `Ready`/`Reconciling`/`Stalled` conditions as kstatus, `kubectl
wait` and Argo CD read them. `dispatch_for` builds an item's dispatch. The rules:

- An item's dispatch is created while the campaign is neither suspended nor failed, and while fewer than
  `parallelism` of its dispatches are live (not Succeeded or Failed), in the order of `spec.items`.
- An item removed from the spec takes its dispatch with it, unless that dispatch has finished: then it is
  kept (and counted) until the campaign goes (owner references: the garbage collector deletes it).
- A dispatch written by hand with the label is counted, never created, deleted or suspended.
- The campaign's `suspend` is its dispatches' `suspend`: owned dispatches that are not finished follow it.
- More failed dispatches than `maxFailed` (a count, or a percentage of the total rounded down) make the
  campaign `Failed`: no dispatch is created any more; those running go on to their end.
- Items not created yet count as pending. The campaign is finished when every item's dispatch exists and
  every dispatch has finished: `Succeeded` (and `Ready`) when failures stay within `maxFailed`.

Deliberately not here: the API calls, and how often the status is written (`write_at` says when the
shell may, at most once per interval).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

from fleetdispatch.api import names
from fleetdispatch.api.models import (
    CampaignCounts,
    CampaignItem,
    CampaignPhase,
    Condition,
    FleetCampaignSpec,
    FleetCampaignStatus,
    Phase,
)
from fleetdispatch.core import conditions

PHASES: frozenset[Phase] = frozenset(get_args(Phase))
TERMINAL: frozenset[Phase] = frozenset({"Succeeded", "Failed"})
MAX_FAILED_EXCEEDED = "MaxFailedExceeded"
INVALID_SPEC = "InvalidSpec"


@dataclass(frozen=True)
class Member:
    """A dispatch that counts in a campaign, as the controller sees it."""

    name: str
    owned: bool  # controlled by this campaign (its ownerReference)
    phase: Phase | None  # None: no status yet
    suspended: bool = False  # its spec.suspend
    deleting: bool = False  # its deletionTimestamp is set

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL


@dataclass(frozen=True)
class Campaign:
    name: str
    generation: int
    spec: FleetCampaignSpec
    status: FleetCampaignStatus


@dataclass(frozen=True)
class Decision:
    create: tuple[CampaignItem, ...]  # items whose dispatch to create, in spec order
    delete: tuple[str, ...]  # dispatch names
    suspend: tuple[tuple[str, bool], ...]  # (dispatch name, the spec.suspend to set)
    status: FleetCampaignStatus


def dispatch_name(campaign: str, item: str) -> str:
    return f"{campaign}-{item}"


def decide(campaign: Campaign, members: Sequence[Member], now: datetime) -> Decision:
    spec, name = campaign.spec, campaign.name
    by_name = {member.name: member for member in members}
    item_names = [dispatch_name(name, item.name) for item in spec.items]
    wanted = set(item_names)
    missing = tuple(item for item, n in zip(spec.items, item_names, strict=True) if n not in by_name)
    # Owned dispatches whose item is gone: deleted unless finished (then kept and counted).
    removed = [m for m in members if m.owned and m.name not in wanted and not m.finished]
    delete = tuple(m.name for m in removed if not m.deleting)
    going = {m.name for m in removed}
    counted = [m for m in members if m.name not in going and not (m.deleting and m.name not in wanted)]

    buckets = {"pending": len(missing)}
    for member in counted:
        bucket = (member.phase or "Pending").lower()
        buckets[bucket] = buckets.get(bucket, 0) + 1
    counts = CampaignCounts(total=len(counted) + len(missing), **buckets)

    limit = spec.failure_limit(counts.total)
    over = limit is not None and counts.failed > limit
    live = sum(1 for m in members if not m.finished)
    create: tuple[CampaignItem, ...] = ()
    if not over and not spec.suspend:
        slots = len(missing) if spec.parallelism is None else max(0, spec.parallelism - live)
        create = missing[:slots]
    suspend = tuple(
        (m.name, spec.suspend)
        for m in counted
        if m.owned and not m.deleting and not m.finished and m.suspended != spec.suspend
    )

    finished = not missing and all(m.finished for m in counted) and not removed
    phase: CampaignPhase
    if over:
        phase, reason = "Failed", MAX_FAILED_EXCEEDED
        message = (
            f"{counts.failed} of {counts.total} dispatches failed, more than maxFailed "
            f"({spec.max_failed}: {limit}); no more dispatches are started"
        )
    elif finished:
        phase, reason = "Succeeded", "Succeeded"
        message = f"all {counts.total} dispatches finished: {_summary(counts)}"
    elif spec.suspend:
        phase, reason = "Suspended", "Suspended"
        message = f"suspended: {_summary(counts)}"
    else:
        phase, reason = "Running", "Running"
        message = _summary(counts)

    old = campaign.status
    status = FleetCampaignStatus(
        observed_generation=campaign.generation,
        phase=phase,
        counts=counts,
        start_time=old.start_time or now,
        completion_time=(old.completion_time or now) if finished or (over and live == 0) else None,
        reason=reason,
        message=message,
        conditions=_conditions(old, phase, reason, message, generation=campaign.generation, now=now),
    )
    return Decision(create=create, delete=delete, suspend=suspend, status=status)


def invalid(
    campaign_status: FleetCampaignStatus, generation: int, message: str, now: datetime
) -> FleetCampaignStatus:
    """The status of a campaign whose spec the operator cannot act on: Stalled, nothing created or deleted;
    its counts stay as last seen, and a fixed spec (a new generation) lets it go on."""
    status = campaign_status.model_copy(deep=True)
    status.observed_generation = generation
    status.reason, status.message = INVALID_SPEC, message
    table = ((conditions.READY, False), (conditions.RECONCILING, False), (conditions.STALLED, True))
    status.conditions = _set_conditions(status.conditions, table, INVALID_SPEC, message, generation, now)
    return status


def _summary(counts: CampaignCounts) -> str:
    parts = [
        f"{value} {label}"
        for label, value in (
            ("succeeded", counts.succeeded),
            ("failed", counts.failed),
            ("running", counts.running),
            ("pending", counts.pending),
            ("in backoff", counts.backoff),
            ("requeued", counts.requeued),
            ("suspended", counts.suspended),
        )
        if value
    ]
    return f"{', '.join(parts) or 'nothing to run'} (of {counts.total})"


def _conditions(
    old: FleetCampaignStatus,
    phase: CampaignPhase,
    reason: str,
    message: str,
    *,
    generation: int,
    now: datetime,
) -> list[Condition]:
    table = (
        (conditions.READY, phase == "Succeeded"),
        (conditions.RECONCILING, phase == "Running"),
        (conditions.STALLED, phase == "Failed"),
    )
    return _set_conditions(old.conditions, table, reason, message, generation, now)


def _set_conditions(  # noqa: PLR0917 - the one loop both statuses share
    current: list[Condition],
    table: tuple[tuple[str, bool], ...],
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[Condition]:
    result = list(current)
    for type_, true in table:
        result = conditions.set_condition(
            result,
            type_,
            status="True" if true else "False",
            reason=reason,
            # As a dispatch's: a false condition explains nothing beyond its reason, except Ready.
            message=message if true or type_ == conditions.READY else "",
            generation=generation,
            now=now,
        )
    return result


def dispatch_for(campaign: str, uid: str, spec: FleetCampaignSpec, item: CampaignItem) -> dict[str, Any]:
    """The FleetDispatch of one item: the template's metadata and spec, the campaign's labels and owner
    reference, the item's variables (and `FLEET_ITEM`) in the session container, the campaign's suspend.

    Only the path to the session container's `env` is copied (a deep copy per item was a sixth of a
    campaign's own cost at 2,000 items): the rest is the template's, shared, so the body is to be
    serialised, not changed."""
    template = spec.template
    assert template is not None, "validated: a campaign with items has a template"
    body = {**template.spec, "suspend": spec.suspend}
    pod_template = body.get("template")
    pod_spec = pod_template.get("spec") if isinstance(pod_template, dict) else None
    containers = pod_spec.get("containers") if isinstance(pod_spec, dict) else None
    if isinstance(pod_template, dict) and isinstance(pod_spec, dict) and isinstance(containers, list):
        index = names.session_container([str(c.get("name", "")) for c in containers])
        if index is not None:
            added = {names.ITEM_ENV: item.name, **item.env}
            session = containers[index]
            env = [e for e in session.get("env") or [] if e.get("name") not in added]
            containers = list(containers)
            containers[index] = {**session, "env": env + [{"name": k, "value": v} for k, v in added.items()]}
            body["template"] = {**pod_template, "spec": {**pod_spec, "containers": containers}}
    return {
        "apiVersion": names.API_VERSION,
        "kind": "FleetDispatch",
        "metadata": {
            "name": dispatch_name(campaign, item.name),
            "labels": {
                **template.metadata.labels,
                names.CAMPAIGN_LABEL: campaign,
                names.ITEM_LABEL: item.name,
            },
            **({"annotations": dict(template.metadata.annotations)} if template.metadata.annotations else {}),
            "ownerReferences": [
                {
                    "apiVersion": names.API_VERSION,
                    "kind": "FleetCampaign",
                    "name": campaign,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": body,
    }


def write_at(changed: bool, last_write: float | None, now: float, interval: float) -> float | None:
    """When the shell may write a changed status: now, or once `interval` has passed since the last write
    (however many dispatches changed meanwhile); None when nothing changed."""
    if not changed:
        return None
    if last_write is None or now - last_write >= interval:
        return now
    return last_write + interval
