"""The operator's Prometheus metrics, and the `/metrics` endpoint that serves them.

kopf has no metrics of its own, so the operator exports what an admin of a campaign asks: how many
dispatches are in each phase, each QuotaPool's state, how many attempts started and how they ended, how
long they took to start and to run, how late requeued dispatches start again, deadline extensions, stops
by reason, every API request (kopf's lists and watches too), and how long a reconcile takes.

The Prometheus conventions: a `fleetdispatch_` prefix, `_total` counters, base units (seconds, unix
timestamps), no `_created` twin of any series (`disable_created_metrics`, process-wide: the operator's
process serves only this registry), no empty label value (a success's `failure_class` is `None`, a
request that got no response has the code `error`), the process and Python collectors, and
`fleetdispatch_build_info`.

- **At scrape time**, from the controller's view (so they cannot drift from what it holds): the dispatches
  per phase, the pools' gauges and the work queue's (what the liveness probe judges). Everything else is
  counted as it happens (`record`, `api_trace`).
- **API requests** are counted from the HTTP sessions themselves, by an aiohttp `TraceConfig`
  (`api_trace`): the operator's own client and the session kopf uses for its lists, watches and Events
  (the login handler hands kopf a session carrying it), by the API server's verbs (`list`, `watch`,
  `patch`, ...), its RBAC resource name (`pods`, `fleetdispatches/status`; `discovery` for the API
  discovery paths) and the response code, as the API server's audit log records them.
- **Deadline extensions** are counted one per extension, from the count the supervisor reports when the
  attempt ends (its termination message), so a busy hour-long session adds its extensions when it ends.
- **Usage** (`fleetdispatch_tokens_total` by kind, `fleetdispatch_cost_total` by currency; both by
  namespace and QuotaPool, `None` for a dispatch in none) is counted once per ended attempt, from the
  decision that records its usage (`attempts[].usage` set where the status before had none). Restart-safe
  by the same rule as every counter here: a restarted operator decides from the stored status, which
  already holds that usage, so nothing is counted twice; a crash between the status write and the count
  loses that one attempt's count (at most once, never twice). The counters start at 0 in each process, as
  Prometheus counters do after a restart; `status.usage` is the durable total.
- Everything lives in a registry of its own: importing this module twice (tests run several operators)
  does not collide with the global registry.

Deliberately not here: deciding what happened (the controller reports it, `record` only counts it).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fleetdispatch import __version__
from fleetdispatch.api.models import FleetDispatchStatus, Phase
from fleetdispatch.controller.workqueue import Progress
from fleetdispatch.core import lifecycle, quota, usage
from fleetdispatch.core.podstatus import PodView
from fleetdispatch.session import protocol

PHASES: tuple[Phase, ...] = ("Pending", "Running", "Succeeded", "Failed", "Requeued", "Backoff", "Suspended")
# Stopped by supervision (the `fleetdispatch_stops_total` reasons).
STOP_REASONS = ("DeadlineExceeded", "IdleTimeout", "SupervisorLost")
NO_FAILURE_CLASS = "None"  # a success's `failure_class` label: a value, never an empty one
NO_POOL = "None"  # the `pool` label of a dispatch in no QuotaPool (a pool name is lowercase: no clash)
NO_RESPONSE = "error"  # the `code` of a request that got no response (refused, reset, timed out)
DISCOVERY = "discovery"  # the `resource` of /api, /apis, /apis/GROUP and /apis/GROUP/VERSION
NON_RESOURCE = "nonresource"  # the `resource` of any other path that names no resource (/version, ...)

# Seconds. Reconciles take milliseconds; starts seconds to minutes (an image pull); attempts minutes to
# days (the deadline cap is at most two weeks); lateness is a wake-up's margin, or a wait for a slot.
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
START_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
ATTEMPT_BUCKETS = (1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 259200, 604800)
LATENESS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def request_kind(method: str, path: str, watch: bool = False) -> tuple[str, str]:
    """The API server's verb and RBAC resource name of a request (as its audit log names them).

    `GET` is `get` for one object, `list` for a collection, `watch` with `?watch=true` (or the legacy
    `/watch/` prefix); `DELETE` of a collection is `deletecollection`. A subresource joins its resource
    (`pods/status`); paths that name no resource are `discovery` (the API groups and versions) or
    `nonresource`.
    """
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["api"]:
        rest = parts[2:]  # /api/v1/...
    elif parts[:1] == ["apis"]:
        rest = parts[3:]  # /apis/GROUP/VERSION/...
    else:
        return method.lower(), NON_RESOURCE
    if not rest:
        return method.lower(), DISCOVERY
    if rest[0] == "watch":
        watch, rest = True, rest[1:]
        if not rest:
            return method.lower(), NON_RESOURCE
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]  # namespaces/NAME/RESOURCE/...: a namespaced resource
    resource, named = rest[0], len(rest) >= 2
    if len(rest) >= 3:
        resource = f"{resource}/{rest[2]}"
    upper = method.upper()
    if upper == "GET":
        verb = "watch" if watch else "get" if named else "list"
    elif upper == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = _VERBS.get(upper, method.lower())
    return verb, resource


@dataclass(frozen=True)
class PoolState:
    """One QuotaPool as the controller sees it now (`PoolBook.states`)."""

    namespace: str
    name: str
    running: int
    waiting: int
    requeued: int
    exhausted_until: datetime | None = None


def pool_states(states: Iterable[tuple[tuple[str, str], quota.Counts, datetime | None]]) -> list[PoolState]:
    """`PoolBook.states()` as the collector reads them."""
    return [
        PoolState(key[0], key[1], counts.running, counts.waiting, counts.requeued, until)
        for key, counts, until in states
    ]


class _ViewCollector(Collector):
    """The gauges computed from the controller's view at each scrape: phases, the work queue, pools."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "fleetdispatch_dispatches", "FleetDispatches the operator sees, by phase.", labels=["phase"]
        )
        counts = self._metrics.count_phases()
        for phase in PHASES:
            gauge.add_metric([phase], counts.get(phase, 0))
        yield gauge
        labels = ["namespace", "pool"]
        running = GaugeMetricFamily(
            "fleetdispatch_quota_pool_running", "A QuotaPool's members holding a slot.", labels=labels
        )
        waiting = GaugeMetricFamily(
            "fleetdispatch_quota_pool_waiting",
            "A QuotaPool's members waiting to start (not requeued).",
            labels=labels,
        )
        requeued = GaugeMetricFamily(
            "fleetdispatch_quota_pool_requeued", "A QuotaPool's members requeued.", labels=labels
        )
        exhausted = GaugeMetricFamily(
            "fleetdispatch_quota_pool_exhausted_until_timestamp_seconds",
            "When a QuotaPool's exhaustion ends (unix time); no sample for a pool never exhausted.",
            labels=labels,
        )
        yield from self._queue()
        for pool in sorted(self._metrics.pool_states(), key=lambda p: (p.namespace, p.name)):
            key = [pool.namespace, pool.name]
            running.add_metric(key, pool.running)
            waiting.add_metric(key, pool.waiting)
            requeued.add_metric(key, pool.requeued)
            if pool.exhausted_until is not None:
                exhausted.add_metric(key, pool.exhausted_until.timestamp())
        yield from (running, waiting, requeued, exhausted)

    def _queue(self) -> Iterator[GaugeMetricFamily]:
        progress = self._metrics.progress()
        ready = 0 if progress is None else progress.ready
        waited = idle = 0.0
        if progress is not None:
            since = progress.oldest_ready_since
            waited = 0.0 if since is None else max(0.0, progress.now - since)
            idle = max(0.0, progress.now - progress.last_finished)
        yield GaugeMetricFamily(
            "fleetdispatch_workqueue_depth", "Dispatches waiting for a worker.", value=ready
        )
        yield GaugeMetricFamily(
            "fleetdispatch_workqueue_longest_wait_seconds",
            "How long the dispatch that has waited longest for a worker has waited (0: none waits).",
            value=waited,
        )
        yield GaugeMetricFamily(
            "fleetdispatch_workqueue_idle_seconds",
            "Seconds since a worker last finished a reconcile.",
            value=idle,
        )
        yield GaugeMetricFamily(
            "fleetdispatch_workers",
            "Workers running (the liveness probe fails when fewer run than started).",
            value=0 if progress is None else progress.workers_alive,
        )


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        # Set by the controller once it exists; until then no dispatch and no pool is known.
        self.count_phases: Callable[[], Mapping[str, int]] = dict
        self.pool_states: Callable[[], Iterable[PoolState]] = tuple
        self.progress: Callable[[], Progress | None] = lambda: None
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        r.register(_ViewCollector(self))
        self.build_info = Gauge(
            "fleetdispatch_build_info",
            "The operator's version and Python's; always 1.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.attempts = Counter("fleetdispatch_attempts", "Attempts started (pods created).", registry=r)
        self.attempts_ended = Counter(
            "fleetdispatch_attempts_ended",
            "Attempts ended, by outcome reason and failure class (None for a success).",
            ["outcome", "failure_class"],
            registry=r,
        )
        self.attempt_seconds = Histogram(
            "fleetdispatch_attempt_duration_seconds",
            "How long attempts ran: from their session's start to their end.",
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self.start_seconds = Histogram(
            "fleetdispatch_attempt_start_latency_seconds",
            "From an attempt's pod created to its session container running.",
            buckets=START_BUCKETS,
            registry=r,
        )
        self.requeue_lateness = Histogram(
            "fleetdispatch_requeue_lateness_seconds",
            "From a waiting dispatch's requeueAt to its next attempt's pod created, by the phase it waited "
            "in (Requeued, Backoff).",
            ["phase"],
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.stops = Counter(
            "fleetdispatch_stops",
            "Sessions stopped by supervision: DeadlineExceeded, IdleTimeout, SupervisorLost.",
            ["reason"],
            registry=r,
        )
        self.requeues = Counter("fleetdispatch_requeues", "Quota requeues.", registry=r)
        self.deadline_extensions = Counter(
            "fleetdispatch_deadline_extensions",
            "Deadline extensions, one per extension, as the supervisors report them when attempts end.",
            registry=r,
        )
        self.deadline_extension_seconds = Counter(
            "fleetdispatch_deadline_extension_seconds",
            "Seconds the supervisors added to attempts' deadlines, reported when attempts end.",
            registry=r,
        )
        self.api_requests = Counter(
            "fleetdispatch_api_requests",
            "Requests to the API server, the operator's and kopf's, by verb, resource and response code.",
            ["verb", "resource", "code"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "fleetdispatch_reconcile_errors", "Reconciles that failed and were retried.", registry=r
        )
        self.reconcile_seconds = Histogram(
            "fleetdispatch_reconcile_duration_seconds",
            "Time to reconcile one dispatch, API calls included.",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "fleetdispatch_tokens",
            "Tokens the sessions reported (usage.json), by kind (input, output, cacheRead, cacheWrite), "
            "namespace and QuotaPool, counted when each attempt ends.",
            ["kind", "namespace", "pool"],
            registry=r,
        )
        self.cost = Counter(
            "fleetdispatch_cost",
            "Cost the sessions reported (usage.json), by namespace, QuotaPool and currency, counted when "
            "each attempt ends.",
            ["namespace", "pool", "currency"],
            registry=r,
        )
        for reason in STOP_REASONS:  # every stop reason is exported, at 0 until it happens
            self.stops.labels(reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # --- what happened -------------------------------------------------------------------------------

    def count_request(self, method: str, path: str, watch: bool, code: int | str) -> None:
        verb, resource = request_kind(method, path, watch)
        self.api_requests.labels(verb, resource, str(code)).inc()

    def record(
        self,
        before: FleetDispatchStatus,
        decision: lifecycle.Decision,
        pods: Iterable[PodView],
        now: datetime,
        *,
        namespace: str = "",
        pool: str | None = None,
    ) -> None:
        """Count what one carried-out decision did, from the status before it (`before`) and after it.

        Called once per decision the controller carried out: an attempt's end (its outcome, duration and
        the extensions its supervisor reported), a session that started running, and a waiting dispatch's
        next pod (`decision.create`, created by then; the pod itself is counted when it is created). A
        restart re-decides nothing already stored, so nothing is counted twice.
        """
        after = decision.status
        for outcome in decision.outcomes:
            self.attempts_ended.labels(outcome.reason, outcome.failure_class or NO_FAILURE_CLASS).inc()
            if outcome.reason in STOP_REASONS:
                self.stops.labels(outcome.reason).inc()
            if outcome.verdict == "Requeue" and after.phase == "Requeued":
                self.requeues.inc()
        self._count_usage(before, after, namespace, pool)
        by_name = {pod.name: pod for pod in pods}
        known = {record.attempt for record in before.attempts}
        for record in after.attempts:
            if record.attempt in known:
                continue
            if record.start_time is not None and record.end_time is not None:
                self.attempt_seconds.observe(max(0.0, (record.end_time - record.start_time).total_seconds()))
            ended = by_name.get(record.pod_name or "")
            if ended is not None:
                count, seconds = protocol.read_report_extensions(_decoded(ended.supervisor_message))
                if count:
                    self.deadline_extensions.inc(count)
                    self.deadline_extension_seconds.inc(seconds)
        if before.phase == "Pending" and after.phase == "Running" and after.pod_name is not None:
            started = by_name.get(after.pod_name)
            if started is not None and started.created_at and started.session_started_at:
                latency = (started.session_started_at - started.created_at).total_seconds()
                self.start_seconds.observe(max(0.0, latency))
        waited = before.phase in ("Requeued", "Backoff") and before.requeue_at is not None
        if decision.create is not None and waited and before.requeue_at is not None:
            late = (now - before.requeue_at).total_seconds()
            self.requeue_lateness.labels(before.phase).observe(max(0.0, late))

    def _count_usage(
        self, before: FleetDispatchStatus, after: FleetDispatchStatus, namespace: str, pool: str | None
    ) -> None:
        """The usage of every attempt whose record got its usage in this decision (a new record, or a
        suspended attempt's once its report showed)."""
        counted = {record.attempt for record in before.attempts if record.usage is not None}
        for record in after.attempts:
            if record.usage is None or record.attempt in counted:
                continue
            labels = (namespace or "None", pool or NO_POOL)
            for kind, attribute in zip(usage.TOKEN_KINDS, usage.TOKEN_ATTRIBUTES, strict=True):
                count = getattr(record.usage, attribute)
                if count:
                    self.tokens.labels(kind, *labels).inc(count)
            spent = usage.cost(record.usage)
            if spent > 0:
                self.cost.labels(*labels, record.usage.currency or "USD").inc(float(spent))


def _decoded(message: str | None) -> Any:
    if not message:
        return None
    try:
        return json.loads(message)
    except ValueError:
        return None


def api_trace(metrics: Metrics) -> aiohttp.TraceConfig:
    """An aiohttp `TraceConfig` that counts every request of the sessions it is given to
    (`fleetdispatch_api_requests_total`): a response by its code, a request that got none as `error`
    (a cancelled one, such as a watch kopf stops, is not counted)."""

    async def ended(
        _: aiohttp.ClientSession, __: SimpleNamespace, sent: aiohttp.TraceRequestEndParams
    ) -> None:
        metrics.count_request(sent.method, sent.url.path, _watching(sent.url.query), sent.response.status)

    async def failed(
        _: aiohttp.ClientSession, __: SimpleNamespace, sent: aiohttp.TraceRequestExceptionParams
    ) -> None:
        if isinstance(sent.exception, Exception):  # not a cancellation
            metrics.count_request(sent.method, sent.url.path, _watching(sent.url.query), NO_RESPONSE)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(ended)
    trace.on_request_exception.append(failed)
    return trace


def _watching(query: Mapping[str, str]) -> bool:
    return query.get("watch", "").lower() in ("true", "1")


async def serve(metrics: Metrics, port: int, host: str = "0.0.0.0") -> web.AppRunner:
    """Serve `/metrics` on `port` until the returned runner is cleaned up."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
