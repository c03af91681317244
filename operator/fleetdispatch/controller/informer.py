"""The controller's own list-then-watch of one resource: what an informer is in client-go, for the few kinds
the operator follows at volume (its dispatches, their pods, the supervisors' Leases).

`Informer` lists the resource (in pages of 500) in each watched namespace (or cluster-wide), keeps one small
*view* per object (`observe(body)`, e.g. a `PodView`: never the whole object) and its resourceVersion, tells
`on_event(key, view, before, body)` of every change (`view` None: deleted; `before` the view it replaces,
None for a new object; `body` the object, None for a delete found by a listing), then watches from the
listing's version with bookmarks. A watch the server ends (its `timeoutSeconds`) is resumed from the last
version; an expired version (410, an ERROR event) or a failed request lists again after a growing pause (1 s
to 30 s), and that listing tells of every object that changed or went away meanwhile.

Why not kopf's watches: kopf keeps, per watched object, its memo, a diff base, a throttler, an indexing
memory and a daemons memory, and runs each event through its handler registry: for 10,000 dispatches and
their pods that was most of the operator's memory and about half of its CPU per dispatch (bench/README.md,
[scale]). `synced` says when every namespace has been listed once, so that no dispatch is judged against a
partial picture of its pods after a restart (as kopf's indices did), and `visible_since` since when the view
of a namespace is unbroken (the lost-supervisor rule needs it).

Deliberately not here: what a change means (the callers), and the HTTP client (`client.kubeapi`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from fleetdispatch.api.names import Resource
from fleetdispatch.client.kubeapi import KubeApi

logger = logging.getLogger("fleetdispatch.controller")

Key = tuple[str, str]  # (namespace, name)
View = TypeVar("View")
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
PAGE_SIZE = 500


class Informer(Generic[View]):
    """The objects of `resource` in `namespaces` (all when empty) matching `label_selector`, as views."""

    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        namespaces: Sequence[str],
        observe: Callable[[Mapping[str, Any]], View],
        on_event: Callable[[Key, View | None, View | None, Mapping[str, Any] | None], None],
        *,
        label_selector: str | None = None,
        timeout_seconds: int = 300,
        page_size: int = PAGE_SIZE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api, self.resource, self.observe, self.on_event = api, resource, observe, on_event
        self.clock, self._page_size = clock, page_size
        self._scopes: tuple[str | None, ...] = tuple(namespaces) or (None,)
        self._selector = {"labelSelector": label_selector} if label_selector else {}
        self._timeout = timeout_seconds
        self._views: dict[Key, View] = {}
        self._versions: dict[Key, str] = {}
        self._visible_since: dict[str | None, datetime] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.synced = asyncio.Event()

    def __len__(self) -> int:
        return len(self._views)

    def get(self, namespace: str, name: str) -> View | None:
        return self._views.get((namespace, name))

    def visible_since(self, namespace: str) -> datetime | None:
        """Since when the view of `namespace` is unbroken; None before its first listing."""
        scope = namespace if namespace in self._visible_since else None
        return self._visible_since.get(scope)

    def keep(self, body: Mapping[str, Any]) -> View:
        """Take `body` as the object's latest state (a listing of one, or our own write's response)."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name")))
        view = self.observe(body)
        self._views[key] = view
        self._versions[key] = str(meta.get("resourceVersion") or "")
        return view

    def drop(self, namespace: str, name: str) -> None:
        """The object is known to be gone (a listing of one found nothing)."""
        self._views.pop((namespace, name), None)
        self._versions.pop((namespace, name), None)

    # --- running -------------------------------------------------------------------------------------

    def start(self) -> None:
        for scope in self._scopes:
            self._tasks.append(
                asyncio.create_task(self._follow(scope), name=f"fleetdispatch-{self.resource.plural}-{scope}")
            )

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
                    "watching %s in %s failed (again in %g s): %s",
                    self.resource.plural,
                    scope or "all namespaces",
                    pause,
                    error,
                )
                await asyncio.sleep(pause)

    def _changed(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name")))
        version = str(meta.get("resourceVersion") or "")
        if key in self._versions and self._versions[key] == version:
            return  # a listing after a broken watch: nothing new about this one
        view = self.observe(body)
        before = self._views.get(key)
        self._views[key] = view
        self._versions[key] = version
        self.on_event(key, view, before, body)

    def _deleted(self, key: Key, body: Mapping[str, Any] | None) -> None:
        before = self._views.pop(key, None)
        self._versions.pop(key, None)
        if before is None and body is not None:
            before = self.observe(body)
        if before is not None:
            self.on_event(key, None, before, body)

    async def _list(self, scope: str | None) -> str:
        path = self.resource.path(scope)
        seen: set[Key] = set()
        params: dict[str, str] = {**self._selector, "limit": str(self._page_size)}
        while True:
            listing = await self.api.request("GET", path, params=params)
            for item in listing.get("items") or []:
                meta = item.get("metadata") or {}
                seen.add((str(meta.get("namespace") or ""), str(meta.get("name"))))
                self._changed(item)
            meta = listing.get("metadata") or {}
            if not meta.get("continue"):
                break
            params["continue"] = str(meta["continue"])
        for key in [k for k in self._views if (scope is None or k[0] == scope) and k not in seen]:
            self._deleted(key, None)
        self._visible_since[scope] = self.clock()
        if len(self._visible_since) == len(self._scopes):
            self.synced.set()
        return str(meta.get("resourceVersion") or "")

    async def _watch(self, scope: str | None, version: str) -> str | None:
        """One watch request from `version`; the version to resume from, or None to list again."""
        params = {
            **self._selector,
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self._timeout),
        }
        async for event in self.api.watch(self.resource.path(scope), params):
            kind, body = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                return None  # 410 Gone, most often: the version is too old
            meta = body.get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            if kind == "DELETED":
                self._deleted((str(meta.get("namespace") or ""), str(meta.get("name"))), body)
            else:
                self._changed(body)
        return version
