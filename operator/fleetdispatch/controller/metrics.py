"""The operator's Prometheus metrics, and the `/metrics` endpoint that serves them.

kopf has no metrics of its own, so the operator exports what an admin of a campaign asks: how many
dispatches are in each phase, how many attempts started and how they ended, requeues, deadline extensions,
stops by reason, API requests, and how long a reconcile takes. Names follow the Prometheus conventions
(`fleetdispatch_` prefix, `_total` counters, base units).

The per-phase gauge is computed when scraped, from the controller's view of the dispatches, so it cannot
drift from what the cluster holds. Everything lives in a registry of its own: importing this module twice
(tests run several operators) does not collide with the global registry.

Deliberately not here: deciding what happened (the controller reports it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fleetdispatch.api.models import Phase

PHASES: tuple[Phase, ...] = ("Pending", "Running", "Succeeded", "Failed", "Requeued", "Backoff", "Suspended")


class _PhaseCollector(Collector):
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


class Metrics:
    def __init__(self) -> None:
        # Set by the controller once it exists; until then no dispatch is known.
        self.count_phases: Callable[[], Mapping[str, int]] = dict
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.registry.register(_PhaseCollector(self))
        self.attempts = Counter("fleetdispatch_attempts", "Attempts started (pods created).", registry=r)
        self.attempts_ended = Counter(
            "fleetdispatch_attempts_ended",
            "Attempts ended, by outcome reason and failure class (empty for a success).",
            ["outcome", "failure_class"],
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
            "Attempts whose deadline the supervisor extended past the initial budget.",
            registry=r,
        )
        self.deadline_extension_seconds = Counter(
            "fleetdispatch_deadline_extension_seconds",
            "Seconds added to attempts' deadlines by activity.",
            registry=r,
        )
        self.api_requests = Counter(
            "fleetdispatch_api_requests",
            "Requests the operator made, by verb and code.",
            ["verb", "code"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "fleetdispatch_reconcile_errors", "Reconciles that failed and were retried.", registry=r
        )
        self.reconcile_seconds = Histogram(
            "fleetdispatch_reconcile_duration_seconds",
            "Time to reconcile one dispatch, API calls included.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


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
