"""The operator's own watches at volume, and whom each event tells: dispatches, their pods and QuotaPools.

Each is an `informer.Informer` keeping a small view per object:
- **dispatches**: the campaign label only (the `Reconciler` caches what it needs of the body itself, and the
  `Campaigns` keep a `MemberView` of each campaign's members);
- **pods** labelled `fleet.dispatch.dev/dispatch`: a `PodView` per pod, indexed by its dispatch
  (`PodIndex`), which the reconciler reads as the dispatch's pods; a deleted pod's last supervisor report
  is handed on (the resume token of a suspended attempt);
- **QuotaPools**: a `quota.Pool` per pool (`PoolIndex`).

`ready()` waits until all three have listed every watched namespace once: the reconciler's and the
campaigns' workers start only then, so that after a restart no dispatch is judged against a partial picture
of its pods or its pool, and no campaign against a partial list of its members.

Deliberately not here: the list/watch mechanics (`informer`), deciding (`reconciler`, `campaigns`), kopf.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fleetdispatch.api.names import CAMPAIGN_LABEL, DISPATCH_LABEL, FLEET_DISPATCHES, PODS, QUOTA_POOLS
from fleetdispatch.client.kubeapi import KubeApi
from fleetdispatch.controller.campaigns import Campaigns
from fleetdispatch.controller.informer import Informer, Key
from fleetdispatch.controller.reconciler import Reconciler
from fleetdispatch.core import podstatus, quota
from fleetdispatch.core.podstatus import PodView
from fleetdispatch.session.protocol import parse_time

PodEntry = tuple[str, PodView]  # (its dispatch, the pod's view)


class PodIndex:
    """The labelled pods by their dispatch: what `Reconciler(pods=...)` reads."""

    def __init__(self) -> None:
        self._by_dispatch: dict[Key, dict[str, PodView]] = {}

    def __call__(self, key: Key) -> Iterable[PodView]:
        return tuple(self._by_dispatch.get(key, {}).values())

    def put(self, namespace: str, dispatch: str, view: PodView) -> None:
        self._by_dispatch.setdefault((namespace, dispatch), {})[view.name] = view

    def remove(self, namespace: str, dispatch: str, pod: str) -> None:
        pods = self._by_dispatch.get((namespace, dispatch))
        if pods is not None:
            pods.pop(pod, None)
            if not pods:
                del self._by_dispatch[(namespace, dispatch)]


class PoolIndex:
    """The QuotaPools as the quota core reads them: what `Reconciler(pools=...)` reads."""

    def __init__(self) -> None:
        self.pools: dict[Key, quota.Pool] = {}

    def __call__(self, key: Key) -> quota.Pool | None:
        return self.pools.get(key)


def observe_pod(body: Mapping[str, Any]) -> PodEntry:
    labels = (body.get("metadata") or {}).get("labels") or {}
    return str(labels.get(DISPATCH_LABEL) or ""), podstatus.observe(body)


def observe_pool(body: Mapping[str, Any]) -> quota.Pool:
    meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    maximum, rate = spec.get("maxConcurrent"), spec.get("resumesPerSecond")
    return quota.Pool(
        name=str(meta.get("name")),
        max_concurrent=maximum if isinstance(maximum, int) else None,
        exhausted_until=parse_time(status.get("exhaustedUntil")),
        # The schema defaults and bounds it; a pool stored before the field existed has none.
        resumes_per_second=rate if isinstance(rate, int) and rate >= 1 else quota.RESUMES_PER_SECOND,
    )


def campaign_of(body: Mapping[str, Any]) -> str:
    """The campaign a dispatch is labelled with, "" for none."""
    return str(((body.get("metadata") or {}).get("labels") or {}).get(CAMPAIGN_LABEL) or "")


class Watches:
    def __init__(
        self,
        api: KubeApi,
        namespaces: Sequence[str],
        *,
        reconciler: Reconciler,
        campaigns: Campaigns,
        pods: PodIndex,
        pools: PoolIndex,
        timeout_seconds: int,
    ) -> None:
        self.reconciler, self.campaigns, self.pod_index, self.pool_index = reconciler, campaigns, pods, pools
        self.dispatches: Informer[str] = Informer(
            api, FLEET_DISPATCHES, namespaces, campaign_of, self._dispatch, timeout_seconds=timeout_seconds
        )
        self.pods: Informer[PodEntry] = Informer(
            api,
            PODS,
            namespaces,
            observe_pod,
            self._pod,
            label_selector=DISPATCH_LABEL,
            timeout_seconds=timeout_seconds,
        )
        self.pools: Informer[quota.Pool] = Informer(
            api, QUOTA_POOLS, namespaces, observe_pool, self._pool, timeout_seconds=timeout_seconds
        )
        self._informers = (self.dispatches, self.pods, self.pools)

    def start(self) -> None:
        for informer in self._informers:
            informer.start()

    async def ready(self) -> None:
        await asyncio.gather(*(informer.synced.wait() for informer in self._informers))

    async def stop(self) -> None:
        await asyncio.gather(*(informer.stop() for informer in self._informers))

    def _dispatch(
        self, key: Key, campaign: str | None, before: str | None, body: Mapping[str, Any] | None
    ) -> None:
        namespace, name = key
        deleted = campaign is None
        self.reconciler.saw_dispatch(body or {"metadata": {"namespace": namespace, "name": name}}, deleted)
        if before and before != campaign:
            self.campaigns.saw_member(namespace, before, name, None)
        if campaign and body is not None:
            self.campaigns.saw_member(namespace, campaign, name, body)

    def _pod(
        self, key: Key, entry: PodEntry | None, before: PodEntry | None, body: Mapping[str, Any] | None
    ) -> None:
        namespace, name = key
        if before is not None and (entry is None or entry[0] != before[0]):
            self.pod_index.remove(namespace, before[0], name)
            if entry is not None:
                self.reconciler.saw_pod(namespace, name, before[0])
        if entry is not None:
            self.pod_index.put(namespace, entry[0], entry[1])
            self.reconciler.saw_pod(namespace, name, entry[0])
        elif before is not None:
            # A deleted pod leaves the index at once: keep what its supervisor last reported (a resume token).
            last = podstatus.observe(body) if body is not None else before[1]
            self.reconciler.saw_pod(namespace, name, before[0], last.supervisor_message)

    def _pool(
        self, key: Key, pool: quota.Pool | None, before: quota.Pool | None, body: Mapping[str, Any] | None
    ) -> None:
        if pool is None:
            self.pool_index.pools.pop(key, None)
        else:
            self.pool_index.pools[key] = pool
        self.reconciler.saw_pool(key[0], key[1], body or {}, deleted=pool is None)
