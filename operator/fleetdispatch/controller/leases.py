"""The supervisors' Leases as the operator sees them: a list, then a watch, of those with the dispatch label.

`LeaseWatch` keeps one `live.LeaseView` per Lease (a few hundred bytes per running attempt) and tells the
reconciler which dispatch a change is about (`on_change(namespace, dispatch)`), so the dispatch is reconciled
with the Lease as plain data. It is the controller's own watch, not kopf's: the lost-supervisor judgement
needs to know since when its view is unbroken (`visible_since`, reset by every full listing: at start, after
a watch error or an expired resourceVersion), which kopf does not say, and with the heartbeat off nothing is
watched at all (no RBAC on Leases is needed then).

The list and watch are an `informer.Informer` (one watch per watched namespace, cluster-wide when the
operator watches all): a watch that the server ends is resumed and stays unbroken; a failed one is listed
again after a growing pause, which resets `visible_since`. `read(namespace, name)` lists one
Lease again, for the reconciler to confirm a Lease that looks stale before it ends an attempt (a watch that
stalled silently must not end healthy sessions).

Deliberately not here: trusting or judging a Lease (`core.live`) and anything about dispatches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from fleetdispatch.api.names import DISPATCH_LABEL, LEASES
from fleetdispatch.client.kubeapi import KubeApi
from fleetdispatch.controller.informer import Informer, Key
from fleetdispatch.core import live
from fleetdispatch.core.live import LeaseView


class LeaseWatch:
    """The labelled Leases of `namespaces` (all namespaces when empty), kept up to date by `start()`."""

    def __init__(
        self,
        api: KubeApi,
        namespaces: Sequence[str],
        on_change: Callable[[str, str], None],
        *,
        timeout_seconds: int = 300,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api, self.on_change = api, on_change
        self.informer: Informer[LeaseView] = Informer(
            api,
            LEASES,
            namespaces,
            live.observe,
            self._changed,
            label_selector=DISPATCH_LABEL,
            timeout_seconds=timeout_seconds,
            clock=clock,
        )

    def __len__(self) -> int:
        return len(self.informer)

    def get(self, namespace: str, name: str) -> LeaseView | None:
        return self.informer.get(namespace, name)

    def visible_since(self, namespace: str) -> datetime | None:
        """Since when the view of `namespace`'s Leases is unbroken; None before its first listing."""
        return self.informer.visible_since(namespace)

    async def read(self, namespace: str, name: str) -> LeaseView | None:
        """The Lease as the API server has it now (kept, too); None when it does not exist.

        A list of that one name, not a get: the operator's RBAC on Leases is list and watch only."""
        params = {"labelSelector": DISPATCH_LABEL, "fieldSelector": f"metadata.name={name}"}
        listing = await self.api.request("GET", LEASES.path(namespace), params=params)
        items = listing.get("items") or []
        if not items:
            self.informer.drop(namespace, name)
            return None
        return self.informer.keep(items[0])

    def start(self) -> None:
        self.informer.start()

    async def stop(self) -> None:
        await self.informer.stop()

    def _changed(
        self, key: Key, view: LeaseView | None, before: LeaseView | None, body: Mapping[str, Any] | None
    ) -> None:
        last = view if view is not None else before
        if last is not None and last.dispatch and view != before:
            self.on_change(key[0], last.dispatch)
