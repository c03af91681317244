"""The FleetCampaign controller: carries out `core.campaign.decide` for each campaign that changed.

A campaign is reconciled when it changes and when one of its dispatches does (the operator's watch of
dispatches, `watches.Watches`, tells it of each dispatch labelled `fleet.dispatch.dev/campaign`, and it keeps
a `MemberView` of each). One pass: parse the spec (an invalid
one stalls the campaign, with an Event), decide, create the missing dispatches (deterministic names: a
second create is a 409, never a second dispatch), delete those of removed items (with the dispatch's uid
as a precondition), set `spec.suspend` where it differs, and write the status when it changed, at most
once per `campaign_status_interval_seconds` whatever the number of dispatches that moved.

Created dispatches are expected until the watch shows them (60 s at most), as a ReplicaSet's
expectations: a pass that runs before the watch delivers them counts them live, so `parallelism` holds.
A pass is O(dispatches), so the dispatches' events start one at most every 0.5 s (a spec change at once),
and it creates at most 200 dispatches (16 requests at a time) before it writes the status and goes on.

Deliberately not here: what to do (`core.campaign`), and the dispatches' own lifecycle (`reconciler`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleetdispatch.api import names
from fleetdispatch.api.models import (
    CampaignItem,
    FleetCampaignSpec,
    FleetCampaignStatus,
    InvalidSpec,
    Phase,
    check_campaign_names,
    parse_campaign_spec,
)
from fleetdispatch.client.kubeapi import MERGE_PATCH, ApiError, KubeApi
from fleetdispatch.controller.cache import Key
from fleetdispatch.controller.reconciler import COMPONENT, status_patch
from fleetdispatch.controller.workqueue import Workers, WorkQueue
from fleetdispatch.core import campaign as core
from fleetdispatch.session.protocol import format_time

logger = logging.getLogger(__name__)

EXPECTATION_SECONDS = 60.0
# A pass is O(dispatches): the events of a campaign's dispatches start one at most this often (the status is
# written at most every few seconds anyway), and a spec change at once.
MEMBER_DEBOUNCE_SECONDS = 0.5
# Dispatches created per pass, this many requests at a time: the status is written between batches, and a
# campaign of thousands of items does not hold a worker for minutes.
CREATES_PER_PASS = 200
CREATE_CONCURRENCY = 16


@dataclass(frozen=True)
class MemberView:
    """What the campaigns keep of a dispatch labelled with a campaign."""

    name: str
    uid: str
    owner_uid: str | None  # the uid of the FleetCampaign that controls it
    phase: Phase | None
    suspended: bool
    deleting: bool


def member_view(body: Mapping[str, Any]) -> MemberView:
    meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    owner = next(
        (
            ref.get("uid")
            for ref in meta.get("ownerReferences") or []
            if ref.get("kind") == "FleetCampaign" and ref.get("controller")
        ),
        None,
    )
    phase = status.get("phase")
    return MemberView(
        name=str(meta.get("name")),
        uid=str(meta.get("uid")),
        owner_uid=str(owner) if owner else None,
        phase=phase if phase in core.PHASES else None,
        suspended=spec.get("suspend") is True,
        deleting=bool(meta.get("deletionTimestamp")),
    )


def _live(view: MemberView | None) -> int:
    return int(view is not None and view.phase not in core.TERMINAL)


@dataclass
class Stored:
    """The last seen campaign: enough to decide and to write its status."""

    uid: str
    generation: int
    spec: Any
    status: dict[str, Any]
    expected: dict[str, float] = field(default_factory=dict)  # created dispatch -> when (monotonic)
    last_write: float | None = None
    parsed: FleetCampaignSpec | InvalidSpec | None = None  # the spec of this generation, parsed once
    # The last pass had nothing left to create, delete or suspend: a member's event can only change counts.
    settled: bool = False


class Campaigns:
    def __init__(
        self,
        api: KubeApi,
        *,
        status_interval: float,
        workers: int = 2,
        instance: str = "",
    ) -> None:
        self.api, self.status_interval, self._instance = api, status_interval, instance
        self._members: dict[Key, dict[str, MemberView]] = {}  # campaign -> its dispatches
        self._live: dict[Key, int] = {}  # campaign -> how many of its members have not finished
        self.queue: WorkQueue[Key] = WorkQueue()
        self.stored: dict[Key, Stored] = {}
        self.workers = Workers(self.queue, self.reconcile, workers, failed=self._failed, name="campaign")
        self._debounced: set[Key] = set()

    def start(self) -> None:
        self.workers.start()

    async def stop(self) -> None:
        await self.workers.stop()

    def saw_campaign(self, body: Mapping[str, Any], deleted: bool) -> None:
        meta = body.get("metadata") or {}
        key: Key = (str(meta.get("namespace")), str(meta.get("name")))
        if deleted:
            self.stored.pop(key, None)
            self.queue.discard(key)
            return
        old = self.stored.get(key)
        stored = Stored(
            uid=str(meta.get("uid")),
            generation=int(meta.get("generation") or 0),
            spec=body.get("spec"),
            status=dict(body.get("status") or {}),
        )
        if old is not None and old.uid == stored.uid:
            stored.expected, stored.last_write = old.expected, old.last_write
            if old.generation == stored.generation:
                stored.parsed = old.parsed
        self.stored[key] = stored
        self.queue.add(key)

    def saw_member(self, namespace: str, campaign: str, name: str, body: Mapping[str, Any] | None) -> None:
        """Dispatch `name` labelled with `campaign` changed (`body`), or went or left it (None)."""
        key = (namespace, campaign)
        members = self._members.setdefault(key, {})
        before = members.pop(name, None)
        view = member_view(body) if body is not None else None
        if view is not None:
            members[name] = view
        elif not members:
            del self._members[key]
        live = self._live.get(key, 0) + _live(view) - _live(before)
        if live:
            self._live[key] = live
        else:
            self._live.pop(key, None)
        stored = self.stored.get(key)
        if stored is None or key in self._debounced:
            return
        self._debounced.add(key)
        self.queue.add_after(key, self._debounce(stored, before, view, live))

    def _debounce(
        self, stored: Stored, before: MemberView | None, view: MemberView | None, live: int
    ) -> float:
        """How soon a member's event starts a pass. A pass is O(members): while nothing is left to create
        (no free slot to fill) an event can only change the counts, which are written once per status
        interval anyway, so it waits that long, unless it can change the phase: a failure (maxFailed), a
        member gone or new, or the last live member finishing."""
        if not stored.settled or before is None or view is None or view.phase == "Failed":
            return MEMBER_DEBOUNCE_SECONDS
        if live == 0 and view.phase in core.TERMINAL and before.phase not in core.TERMINAL:
            return MEMBER_DEBOUNCE_SECONDS
        return max(MEMBER_DEBOUNCE_SECONDS, self.status_interval)

    async def reconcile(self, key: Key) -> None:
        self._debounced.discard(key)
        stored = self.stored.get(key)
        if stored is None:
            return
        namespace, name = key
        now, clock = datetime.now(UTC), time.monotonic()
        old_status = FleetCampaignStatus.model_validate(stored.status)
        if stored.parsed is None:
            try:
                stored.parsed = parse_campaign_spec(stored.spec)
                check_campaign_names(name, stored.parsed)
            except InvalidSpec as error:
                stored.parsed = error
        spec = stored.parsed
        if isinstance(spec, InvalidSpec):
            status = core.invalid(old_status, stored.generation, str(spec), now)
            await self._write_status(key, stored, status, clock, urgent=True)
            return
        views = list(self._members.get(key, {}).values())
        seen = {view.name for view in views}
        stored.expected = {
            n: at for n, at in stored.expected.items() if n not in seen and clock - at < EXPECTATION_SECONDS
        }
        members = [
            core.Member(
                name=view.name,
                owned=view.owner_uid == stored.uid,
                phase=view.phase,
                suspended=view.suspended,
                deleting=view.deleting,
            )
            for view in views
        ] + [core.Member(name=n, owned=True, phase=None, suspended=spec.suspend) for n in stored.expected]
        decision = core.decide(core.Campaign(name, stored.generation, spec, old_status), members, now)

        path = names.FLEET_DISPATCHES.path(namespace)
        batch = decision.create[:CREATES_PER_PASS]
        gate = asyncio.Semaphore(CREATE_CONCURRENCY)

        async def create(item: CampaignItem) -> None:
            body = core.dispatch_for(name, stored.uid, spec, item)
            async with gate:
                try:
                    await self.api.request("POST", path, body, decode=False)
                except ApiError as error:
                    if error.status != 409:
                        raise
            stored.expected[body["metadata"]["name"]] = clock

        results = await asyncio.gather(*(create(item) for item in batch), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            raise failure
        if len(decision.create) > len(batch):
            self.queue.add(key)  # the next batch, once this pass has written the status
        missing = spec.parallelism is not None and len(views) + len(stored.expected) < len(spec.items)
        stored.settled = not (decision.create or decision.delete or decision.suspend or missing)
        uids = {view.name: view.uid for view in views}
        for dispatch in decision.delete:
            options = {"preconditions": {"uid": uids[dispatch]}, "propagationPolicy": "Background"}
            await self._ignore_gone(
                self.api.request("DELETE", names.FLEET_DISPATCHES.path(namespace, dispatch), options)
            )
        for dispatch, suspend in decision.suspend:
            patch = {"spec": {"suspend": suspend}}
            await self._ignore_gone(
                self.api.request(
                    "PATCH",
                    names.FLEET_DISPATCHES.path(namespace, dispatch),
                    patch,
                    content_type=MERGE_PATCH,
                )
            )
        await self._write_status(key, stored, decision.status, clock, urgent=False)

    async def _write_status(
        self, key: Key, stored: Stored, status: FleetCampaignStatus, clock: float, *, urgent: bool
    ) -> None:
        patch = status_patch(stored.status, status)
        if not patch:
            return
        previous = stored.status.get("phase")
        # A new phase is written at once (and told in an Event); counts at most once per interval.
        interval = 0.0 if urgent or status.phase != previous else self.status_interval
        when = core.write_at(True, stored.last_write, clock, interval)
        if when is None:
            return
        if when > clock:
            self.queue.add_after(key, when - clock)
            return
        namespace, name = key
        try:
            result = await self.api.request(
                "PATCH",
                names.FLEET_CAMPAIGNS.path(namespace, name, "status"),
                {"status": patch},
                content_type=MERGE_PATCH,
            )
        except ApiError as error:
            if error.status == 404:
                return
            raise
        stored.status = dict(result.get("status") or {})
        stored.last_write = clock
        # An Event for each new phase (not the first Running) and for a newly invalid spec.
        moved = status.phase != previous and (previous is not None or status.phase != "Running")
        if moved or (urgent and "reason" in patch):
            await self._event(key, stored, status)

    async def _event(self, key: Key, stored: Stored, status: FleetCampaignStatus) -> None:
        namespace, name = key
        warning = status.phase == "Failed" or status.reason == core.INVALID_SPEC
        stamp = format_time(datetime.now(UTC))
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": names.API_VERSION,
                "kind": "FleetCampaign",
                "name": name,
                "namespace": namespace,
                "uid": stored.uid,
            },
            "type": "Warning" if warning else "Normal",
            "reason": status.reason or status.phase or "Running",
            "message": (status.message or "")[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.api.request("POST", names.EVENTS.path(namespace), body, decode=False)
        except (TimeoutError, ApiError, OSError) as error:
            logger.warning("cannot post an Event for campaign %s/%s: %s", namespace, name, error)

    @staticmethod
    async def _ignore_gone(request: Any) -> None:
        try:
            await request
        except ApiError as error:
            if error.status not in (404, 409):  # gone already, or another dispatch by that name now
                raise

    def _failed(self, key: Key, error: BaseException, retry_in: float) -> None:
        logger.warning("campaign %s/%s: %s; again in %.1f s", *key, error, retry_in)
