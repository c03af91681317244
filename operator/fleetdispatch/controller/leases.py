"""The supervisors' Leases as the operator sees them: a list, then a watch, of those with the dispatch label.

`LeaseWatch` keeps one `live.LeaseView` per Lease (a few hundred bytes per running attempt) and tells the
reconciler which dispatch a change is about (`on_change(namespace, dispatch)`), so the dispatch is reconciled
with the Lease as plain data. It is the controller's own watch, not kopf's: the lost-supervisor judgement
needs to know since when its view is unbroken (`visible_since`, reset by every full listing: at start, after
a watch error or an expired resourceVersion), which kopf does not say, and with the heartbeat off nothing is
watched at all (no RBAC on Leases is needed then).

One watch per watched namespace (cluster-wide when the operator watches all). A watch that the server ends
(its `timeoutSeconds`) is resumed from its last resourceVersion and stays unbroken; a failed one is listed
again after a growing pause (1 s to 30 s), which resets `visible_since`. `read(namespace, name)` lists one
Lease again, for the reconciler to confirm a Lease that looks stale before it ends an attempt (a watch that
stalled silently must not end healthy sessions).

Deliberately not here: trusting or judging a Lease (`core.live`) and anything about dispatches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from fleetdispatch.api.names import DISPATCH_LABEL, LEASES
from fleetdispatch.client.kubeapi import KubeApi
from fleetdispatch.core import live
from fleetdispatch.core.live import LeaseView

logger = logging.getLogger("fleetdispatch.controller")

Key = tuple[str, str]  # (namespace, Lease name)
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


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
        self.api, self.on_change, self.clock = api, on_change, clock
        self._scopes: tuple[str | None, ...] = tuple(namespaces) or (None,)
        self._timeout = timeout_seconds
        self._leases: dict[Key, LeaseView] = {}
        self._visible_since: dict[str | None, datetime] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        return len(self._leases)

    def get(self, namespace: str, name: str) -> LeaseView | None:
        return self._leases.get((namespace, name))

    def visible_since(self, namespace: str) -> datetime | None:
        """Since when the view of `namespace`'s Leases is unbroken; None before its first listing."""
        scope = namespace if namespace in self._visible_since else None
        return self._visible_since.get(scope)

    async def read(self, namespace: str, name: str) -> LeaseView | None:
        """The Lease as the API server has it now (kept, too); None when it does not exist.

        A list of that one name, not a get: the operator's RBAC on Leases is list and watch only."""
        params = {"labelSelector": DISPATCH_LABEL, "fieldSelector": f"metadata.name={name}"}
        listing = await self.api.request("GET", LEASES.path(namespace), params=params)
        items = listing.get("items") or []
        if not items:
            self._leases.pop((namespace, name), None)
            return None
        view = live.observe(items[0])
        self._leases[(namespace, name)] = view
        return view

    # --- running -------------------------------------------------------------------------------------

    def start(self) -> None:
        for scope in self._scopes:
            self._tasks.append(asyncio.create_task(self._follow(scope), name=f"fleetdispatch-leases-{scope}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _follow(self, scope: str | None) -> None:
        failures = 0
        while True:
            try:
                version: str | None = await self._list(scope)
                failures = 0
                while version is not None:
                    version = await self._watch(scope, version)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the API server is down, forbidden, a broken connection: list again
                pause = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                logger.warning(
                    "watching Leases in %s failed (again in %g s): %s", scope or "all", pause, error
                )
                await asyncio.sleep(pause)

    def _keep(self, view: LeaseView) -> None:
        key = (view.namespace, view.name)
        before = self._leases.get(key)
        self._leases[key] = view
        if view.dispatch and view != before:
            self.on_change(view.namespace, view.dispatch)

    def _drop(self, view: LeaseView) -> None:
        if self._leases.pop((view.namespace, view.name), None) is not None and view.dispatch:
            self.on_change(view.namespace, view.dispatch)

    async def _list(self, scope: str | None) -> str:
        listing = await self.api.request("GET", LEASES.path(scope), params={"labelSelector": DISPATCH_LABEL})
        seen = set()
        for item in listing.get("items") or []:
            view = live.observe(item)
            seen.add((view.namespace, view.name))
            self._keep(view)
        for key, view in list(self._leases.items()):
            if (scope is None or key[0] == scope) and key not in seen:
                self._drop(view)
        self._visible_since[scope] = self.clock()
        return str((listing.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, scope: str | None, version: str) -> str | None:
        """One watch request from `version`; the version to resume from, or None to list again."""
        params = {
            "watch": "1",
            "labelSelector": DISPATCH_LABEL,
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self._timeout),
        }
        async for event in self.api.watch(LEASES.path(scope), params):
            kind, body = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                return None  # 410 Gone, most often: the version is too old
            version = str((body.get("metadata") or {}).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            view = live.observe(body)
            if kind == "DELETED":
                self._drop(view)
            else:
                self._keep(view)
        return version
