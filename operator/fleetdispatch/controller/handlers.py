"""The kopf wiring: which watches and activities the operator registers, and how they reach the reconciler.

Run it with `fleetdispatch operator`, or with kopf itself: `kopf run --standalone -A -m
fleetdispatch.controller` (registration happens at import, at module level).

- **kopf for the operator's life, its own watches for the volume.** kopf runs the start-up, the login
  (credentials, renewed), the liveness probe, the clean-up and the FleetCampaigns' events (a few objects).
  The dispatches, their pods and the QuotaPools are followed by the operator's own list-then-watch
  (`watches.Watches`, started at the first login): kopf keeps a memo, a diff base, a throttler and index
  and daemon memories per watched object and runs each event through its registry, which was most of the
  operator's memory and half its CPU per dispatch at 10,000 dispatches. The reconciler's workers start
  once those watches have listed everything, so after a restart no dispatch is judged against a partial
  picture of its pods (what kopf's indices gave before).
- **Events, not causes.** The campaigns' handler is `kopf.on.event`, not kopf's create/update/resume
  handlers: those keep kopf's bookkeeping in annotations (one more write per change) and run per cause,
  where a controller wants the whole picture at once. kopf's own annotations, should a future handler need
  them, are under our prefix.
- **Leases through the reconciler's own watch** (`leases.LeaseWatch`, only with the heartbeat on).
- **Liveness.** kopf serves `/healthz`; its probe handler here fails it (500) when the workers make no
  progress (`workqueue.Progress.stalled`), so that Kubernetes restarts a stuck operator.

Deliberately not here: the reconcile step (`reconciler`), the queue (`workqueue`), metrics (`metrics`).
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from fleetdispatch.api import names
from fleetdispatch.api.names import FLEET_CAMPAIGNS
from fleetdispatch.api.settings import OperatorSettings
from fleetdispatch.client import credentials
from fleetdispatch.client.credentials import Credentials
from fleetdispatch.client.kubeapi import KubeApi
from fleetdispatch.controller.campaigns import Campaigns
from fleetdispatch.controller.metrics import Metrics, api_trace, pool_states
from fleetdispatch.controller.metrics import serve as serve_metrics
from fleetdispatch.controller.reconciler import COMPONENT, Reconciler
from fleetdispatch.controller.watches import PodIndex, PoolIndex, Watches
from fleetdispatch.controller.workqueue import STALL_SECONDS, Progress


def liveness(progress: Progress | None, threshold: float = STALL_SECONDS) -> dict[str, Any]:
    """What `/healthz` shows of the workers; raises `kopf.PermanentError` (kopf answers 500) when they are
    stuck. `progress` is None before the first event has created the reconciler: healthy."""
    if progress is None:
        return {"started": False}
    stalled = progress.stalled(threshold)
    if stalled is not None:
        raise kopf.PermanentError(f"the workers make no progress: {stalled}")
    return {"started": True, **progress.as_dict()}


# --- kopf registration: module level, so `kopf run -m fleetdispatch.controller` works too -------------


@dataclass
class Runtime:
    """The operator's shared state, in kopf's memo (every object's memo is a shallow copy of it)."""

    options: OperatorSettings
    metrics: Metrics
    credentials: Credentials | None = None
    reconciler: Reconciler | None = None
    campaigns: Campaigns | None = None
    watches: Watches | None = None
    metrics_runner: Any = None
    kopf_session: tuple[Any, Any] | None = None  # the last login's ConnectionInfo and kopf.AiohttpSession
    # The watched namespaces (empty: all), where the supervisors' Leases are watched too.
    namespaces: tuple[str, ...] = ()
    _starting: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Once logged in: the watches, then (once they have listed everything) the workers."""
        if self.reconciler is not None:
            return
        assert self.credentials is not None
        kube = KubeApi(
            self.credentials,
            user_agent=f"{COMPONENT}/{names.VERSION}",
            trace_configs=[api_trace(self.metrics)],
        )
        pods, pools = PodIndex(), PoolIndex()
        self.reconciler = Reconciler(
            self.options, kube, self.metrics, pods=pods, pools=pools, lease_namespaces=self.namespaces
        )
        self.campaigns = Campaigns(kube, status_interval=self.options.campaign_status_interval_seconds)
        self.watches = Watches(
            kube,
            self.namespaces,
            reconciler=self.reconciler,
            campaigns=self.campaigns,
            pods=pods,
            pools=pools,
            timeout_seconds=self.options.watch_timeout_seconds,
        )
        self.watches.start()
        self._starting = asyncio.create_task(self._start_workers(), name="fleetdispatch-start")

    async def _start_workers(self) -> None:
        assert self.watches is not None and self.reconciler is not None and self.campaigns is not None
        await self.watches.ready()
        self.reconciler.start()
        self.campaigns.start()

    async def stop(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        if self.watches is not None:
            await self.watches.stop()
        if self.campaigns is not None:
            await self.campaigns.stop()
        if self.reconciler is not None:
            await self.reconciler.stop()


class _NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """No diff base: the operator has no change-detecting handlers (only event and index handlers), yet kopf
    builds one for every watch event, deep-copying the whole object twice; skipping it saves about a
    quarter of the operator's CPU per dispatch (bench/operator_dispatch.py)."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return None


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    options = getattr(memo, "options", None) or OperatorSettings.from_env()
    settings.peering.standalone = True
    # The chart grants no cluster-wide reads of CRDs or namespaces (least privilege): declare that restricted
    # mode, so kopf does not retry the forbidden list of CRDs for a minute, logging errors, at every start.
    # The CRDs are found by the initial discovery; the namespaces are the watched ones, by exact name.
    settings.scanning.disabled = True
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = _NoDiffBase(prefix=names.GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{names.GROUP}/kopf-finalizer"
    settings.persistence.consistency_timeout = 30
    settings.watching.server_timeout = options.watch_timeout_seconds
    settings.watching.client_timeout = options.watch_timeout_seconds + 30
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = COMPONENT
    metrics = getattr(memo, "metrics", None) or Metrics()  # the caller's, which counts its own requests too
    runtime = Runtime(options, metrics, namespaces=tuple(getattr(memo, "namespaces", None) or ()))
    runtime.metrics.count_phases = lambda: (
        runtime.reconciler.cache.phase_counts() if runtime.reconciler else {}
    )
    runtime.metrics.pool_states = lambda: (
        pool_states(runtime.reconciler.pools.states()) if runtime.reconciler else ()
    )
    runtime.metrics.progress = lambda: runtime.reconciler.progress() if runtime.reconciler else None
    if options.metrics_port:
        runtime.metrics_runner = await serve_metrics(runtime.metrics, options.metrics_port)
    memo.runtime = runtime


@kopf.on.login()
async def _login(memo: Any, **_: Any) -> Any:
    """The credentials `fleetdispatch operator` selected (--kubeconfig, --context), else found the same way
    (under `kopf run -m`); kopf calls this again when they expire, so a plugin renews them (in a thread).

    kopf gets them as an aiohttp session built as kopf builds its own (`kopf.AiohttpSession`, kopf's
    documented custom session), with the metrics' request tracing on it: kopf's lists, watches and Events
    are counted with the operator's own requests."""
    server = getattr(memo, "server", None)  # `fleetdispatch dev`: its own API server, no credentials
    found = Credentials(server=server) if server else await asyncio.to_thread(credentials.selected)
    memo.runtime.credentials = found
    memo.runtime.start()
    info = await asyncio.to_thread(found.connection_info)
    last = memo.runtime.kopf_session
    if last is not None and last[0] == info:
        # The same credentials: the same session object, so kopf knows them for the ones it may have found
        # refused (401) and ends with LoginError, as it does with its own sessions, instead of retrying.
        return last[1]
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
        trace_configs=[api_trace(memo.runtime.metrics)],
    )
    context = kopf.AiohttpSession(
        server=info.server,
        default_namespace=info.default_namespace,
        expiration=info.expiration,
        aiohttp_session=session,
    )
    memo.runtime.kopf_session = (info, context)
    return context


@kopf.on.event(names.GROUP, names.VERSION, FLEET_CAMPAIGNS.plural)
async def _campaign_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    campaigns = memo.runtime.campaigns
    if campaigns is None:
        raise kopf.TemporaryError("not logged in yet", delay=1)
    campaigns.saw_campaign(event["object"], deleted=event.get("type") == "DELETED")


@kopf.on.probe(id="workers")
def _workers_probe(memo: Any, **_: Any) -> dict[str, Any]:
    runtime: Runtime | None = getattr(memo, "runtime", None)
    reconciler = runtime.reconciler if runtime is not None else None
    return liveness(reconciler.progress() if reconciler is not None else None)


@kopf.on.cleanup()
async def _cleanup(memo: Any, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    await runtime.stop()
    if runtime.metrics_runner is not None:
        await runtime.metrics_runner.cleanup()


async def run(
    options: OperatorSettings,
    *,
    namespaces: Sequence[str] = (),
    server: str | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    metrics: Metrics | None = None,
) -> None:
    """Run the operator in this event loop until `stop_flag` is set (or a signal, when it is None).

    `server` skips the login (kubeconfig or in-cluster service account) and talks to that URL without
    credentials, as `fleetdispatch dev` does with its own API server. `metrics`: the registry to export
    (the leader election's requests are counted in it too); a new one by default.
    """
    endpoint = f"http://0.0.0.0:{options.health_port}/healthz" if options.health_port else None
    identity: Any = _identity()  # kopf's Identity (a str), which kopf does not export
    await kopf.operator(
        identity=identity,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        standalone=True,
        liveness_endpoint=endpoint,
        memo=kopf.Memo(options=options, server=server, namespaces=tuple(namespaces), metrics=metrics),
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def _identity() -> str | None:
    """None (kopf makes its own: $POD_ID, else the login name, host, time) unless kopf would fail to:
    kopf asks for the login name (`getpass.getuser`), which raises for a uid with no passwd entry, as a
    pod's `runAsUser` may be on an image that does not list it (the dev node's host lists no 65532)."""
    if os.environ.get("POD_ID"):
        return None
    try:
        getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}@{socket.gethostname()}/{os.getpid()}"
    return None
