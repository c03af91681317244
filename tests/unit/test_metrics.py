"""The metrics' conventions and the counting itself, without a cluster.

- The exposition: no `_created` series, no empty label value, the process and Python collectors,
  `fleetdispatch_build_info`, and exactly the `fleetdispatch_` metrics of `EXPORTED` (the README's table
  lists the same).
- `request_kind`: the API server's verbs and RBAC resource names, as its audit log records them.
- `api_trace` on a real aiohttp session against a real local HTTP server: responses by code, a refused
  connection as `error`.
- `record` fed by the real lifecycle (`lifecycle.reconcile` on pods through `podstatus.observe`): an
  attempt's end with the extensions its supervisor reported, a session's start latency, a requeue's
  lateness.

The end-to-end values, against the real control plane and the real operator process, are in
tests/cluster/test_operator_metrics.py.
"""

from __future__ import annotations

import asyncio
import json
import platform
from datetime import timedelta

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from fleetdispatch import __version__
from fleetdispatch.api.models import FleetDispatchSpec, FleetDispatchStatus
from fleetdispatch.controller.metrics import Metrics, PoolState, api_trace, request_kind
from fleetdispatch.controller.workqueue import Progress
from fleetdispatch.core import lifecycle
from fleetdispatch.core.podstatus import observe
from metrics_names import sample_names
from pods import T0, make_pod, running, supervisor_report, terminated, ts

UID = "uid-job"
SPEC = FleetDispatchSpec.model_validate(
    {
        "template": {"spec": {"containers": [{"name": "session", "image": "agent:1"}]}},
        "retry": {"maxAttempts": 3, "backoff": {"baseSeconds": 1, "maxSeconds": 1, "jitterPercent": 0}},
    }
)


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_the_exposition_follows_the_conventions() -> None:
    metrics = Metrics()
    metrics.count_phases = lambda: {"Running": 2}
    metrics.pool_states = lambda: [PoolState("ns", "shared", 1, 2, 3, T0), PoolState("ns", "narrow", 0, 0, 0)]
    metrics.count_request("GET", "/api/v1/pods", False, 200)
    metrics.attempts_ended.labels("Completed", "None").inc()
    text = metrics.render().decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    assert not [s.name for s in samples if s.name.endswith("_created")]
    assert not [(s.name, s.labels) for s in samples if "" in s.labels.values()]
    names = {s.name for s in samples}
    assert {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    } <= names
    assert {"python_info", "python_gc_objects_collected_total"} <= names
    build = [s for s in samples if s.name == "fleetdispatch_build_info"]
    assert [(b.labels, b.value) for b in build] == [
        ({"version": __version__, "python": platform.python_version()}, 1.0)
    ]
    assert _value(metrics, "fleetdispatch_dispatches", phase="Running") == 2
    assert _value(metrics, "fleetdispatch_dispatches", phase="Pending") == 0
    shared = {"namespace": "ns", "pool": "shared"}
    assert _value(metrics, "fleetdispatch_quota_pool_running", **shared) == 1
    assert _value(metrics, "fleetdispatch_quota_pool_waiting", **shared) == 2
    assert _value(metrics, "fleetdispatch_quota_pool_requeued", **shared) == 3
    exhausted = "fleetdispatch_quota_pool_exhausted_until_timestamp_seconds"
    assert _value(metrics, exhausted, **shared) == T0.timestamp()
    # A pool never exhausted has no such sample (not a 0 that reads as 1970).
    assert metrics.registry.get_sample_value(exhausted, {"namespace": "ns", "pool": "narrow"}) is None
    # Before the controller exists: an empty queue, no worker.
    assert _value(metrics, "fleetdispatch_workers") == 0
    metrics.progress = lambda: Progress(100.0, 3, 1, 40.0, 90.0, workers=16, workers_alive=15)
    assert _value(metrics, "fleetdispatch_workqueue_depth") == 3
    assert _value(metrics, "fleetdispatch_workqueue_longest_wait_seconds") == 60.0
    assert _value(metrics, "fleetdispatch_workqueue_idle_seconds") == 10.0
    assert _value(metrics, "fleetdispatch_workers") == 15
    # Every stop reason is exported from the start, at 0.
    assert _value(metrics, "fleetdispatch_stops_total", reason="SupervisorLost") == 0
    assert {n for n in sample_names(metrics.registry) if n.startswith("fleetdispatch_")} == EXPORTED


# The README's list (a new metric is added to both).
EXPORTED = {
    "fleetdispatch_build_info",
    "fleetdispatch_dispatches",
    "fleetdispatch_quota_pool_running",
    "fleetdispatch_quota_pool_waiting",
    "fleetdispatch_quota_pool_requeued",
    "fleetdispatch_quota_pool_exhausted_until_timestamp_seconds",
    "fleetdispatch_attempts_total",
    "fleetdispatch_attempts_ended_total",
    "fleetdispatch_stops_total",
    "fleetdispatch_requeues_total",
    "fleetdispatch_tokens_total",
    "fleetdispatch_cost_total",
    "fleetdispatch_deadline_extensions_total",
    "fleetdispatch_deadline_extension_seconds_total",
    "fleetdispatch_api_requests_total",
    "fleetdispatch_reconcile_errors_total",
    "fleetdispatch_workqueue_depth",
    "fleetdispatch_workqueue_longest_wait_seconds",
    "fleetdispatch_workqueue_idle_seconds",
    "fleetdispatch_workers",
    *(
        f"fleetdispatch_{histogram}_{suffix}"
        for histogram in (
            "attempt_duration_seconds",
            "attempt_start_latency_seconds",
            "requeue_lateness_seconds",
            "reconcile_duration_seconds",
        )
        for suffix in ("bucket", "sum", "count")
    ),
}


@pytest.mark.parametrize(
    ("method", "path", "watch", "expected"),
    [
        ("GET", "/api/v1/namespaces/ns/pods", False, ("list", "pods")),
        ("GET", "/api/v1/namespaces/ns/pods", True, ("watch", "pods")),
        ("GET", "/api/v1/pods", False, ("list", "pods")),
        ("GET", "/api/v1/namespaces/ns/pods/job-1", False, ("get", "pods")),
        ("POST", "/api/v1/namespaces/ns/pods", False, ("create", "pods")),
        ("DELETE", "/api/v1/namespaces/ns/pods/job-1", False, ("delete", "pods")),
        ("DELETE", "/api/v1/namespaces/ns/pods", False, ("deletecollection", "pods")),
        (
            "PATCH",
            "/apis/fleet.dispatch.dev/v1alpha1/namespaces/ns/fleetdispatches/d/status",
            False,
            ("patch", "fleetdispatches/status"),
        ),
        (
            "PUT",
            "/apis/fleet.dispatch.dev/v1alpha1/namespaces/ns/quotapools/p",
            False,
            ("update", "quotapools"),
        ),
        ("GET", "/apis/fleet.dispatch.dev/v1alpha1/fleetdispatches", True, ("watch", "fleetdispatches")),
        ("GET", "/api/v1/watch/namespaces/ns/pods", False, ("watch", "pods")),
        ("GET", "/api/v1/namespaces", False, ("list", "namespaces")),
        ("GET", "/api/v1/namespaces/ns", False, ("get", "namespaces")),
        ("GET", "/api", False, ("get", "discovery")),
        ("GET", "/api/v1", False, ("get", "discovery")),
        ("GET", "/apis", False, ("get", "discovery")),
        ("GET", "/apis/fleet.dispatch.dev/v1alpha1", False, ("get", "discovery")),
        ("GET", "/version", False, ("get", "nonresource")),
    ],
)
def test_requests_are_named_as_the_api_server_names_them(
    method: str, path: str, watch: bool, expected: tuple[str, str]
) -> None:
    assert request_kind(method, path, watch) == expected


def test_the_trace_counts_every_response_and_every_request_that_got_none() -> None:
    async def scenario() -> Metrics:
        metrics = Metrics()

        async def pods(request: web.Request) -> web.Response:
            return web.json_response({"items": []})

        async def missing(request: web.Request) -> web.Response:
            return web.json_response({"reason": "NotFound"}, status=404)

        app = web.Application()
        app.router.add_get("/api/v1/namespaces/ns/pods", pods)
        app.router.add_patch("/api/v1/namespaces/ns/pods/gone", missing)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession(trace_configs=[api_trace(metrics)]) as session:
                for query in ("", "?watch=true", "?watch=1&resourceVersion=5"):
                    async with session.get(f"{base}/api/v1/namespaces/ns/pods{query}") as response:
                        await response.read()
                async with session.patch(f"{base}/api/v1/namespaces/ns/pods/gone", json={}) as response:
                    await response.read()
                with pytest.raises(aiohttp.ClientConnectionError):
                    await session.post("http://127.0.0.1:1/api/v1/namespaces/ns/events", json={})
        finally:
            await runner.cleanup()
        return metrics

    metrics = asyncio.run(scenario())
    requests = "fleetdispatch_api_requests_total"
    assert _value(metrics, requests, verb="list", resource="pods", code="200") == 1
    assert _value(metrics, requests, verb="watch", resource="pods", code="200") == 2
    assert _value(metrics, requests, verb="patch", resource="pods", code="404") == 1
    assert _value(metrics, requests, verb="create", resource="events", code="error") == 1


# --- record: fed by the real lifecycle ---------------------------------------------------------------------


def _dispatch(status: FleetDispatchStatus) -> lifecycle.Dispatch:
    return lifecycle.Dispatch("job", "default", UID, 1, SPEC, status)


def test_an_attempts_end_counts_its_extensions_its_duration_and_its_outcome() -> None:
    metrics = Metrics()
    created = make_pod("job-1", phase="Pending")
    created["metadata"]["creationTimestamp"] = ts(T0)
    first = lifecycle.reconcile(_dispatch(FleetDispatchStatus()), [], T0)
    assert first.create is not None
    # The session runs 4 s after its pod was created: the start latency.
    started = make_pod(
        "job-1", phase="Running", supervisor=running(T0), session=running(T0 + timedelta(seconds=4))
    )
    started["metadata"]["creationTimestamp"] = ts(T0)
    before = first.status
    running_now = lifecycle.reconcile(_dispatch(before), [observe(started)], T0 + timedelta(seconds=5))
    assert running_now.status.phase == "Running"
    metrics.record(before, running_now, [observe(started)], T0 + timedelta(seconds=5))
    assert _value(metrics, "fleetdispatch_attempt_start_latency_seconds_count") == 1
    assert _value(metrics, "fleetdispatch_attempt_start_latency_seconds_sum") == 4.0

    # It ends 600 s after its session started; its supervisor reports 7 extensions, 123.5 s in all.
    report = supervisor_report(deadlineExtensions=7, deadlineExtendedSeconds=123.5)
    ended = make_pod(
        "job-1",
        phase="Succeeded",
        supervisor=terminated(0, message=report, started=T0),
        session=terminated(0, started=T0 + timedelta(seconds=4)),
    )
    ended["metadata"]["creationTimestamp"] = ts(T0)
    end = T0 + timedelta(seconds=604)
    done = lifecycle.reconcile(_dispatch(running_now.status), [observe(ended)], end)
    assert done.status.phase == "Succeeded"
    metrics.record(running_now.status, done, [observe(ended)], end)
    assert _value(metrics, "fleetdispatch_deadline_extensions_total") == 7
    assert _value(metrics, "fleetdispatch_deadline_extension_seconds_total") == 123.5
    assert _value(metrics, "fleetdispatch_attempt_duration_seconds_count") == 1
    assert _value(metrics, "fleetdispatch_attempt_duration_seconds_sum") == 600.0
    assert (
        _value(metrics, "fleetdispatch_attempts_ended_total", outcome="Completed", failure_class="None") == 1
    )
    # The same decision again (a repeated reconcile of the stored status) counts nothing more.
    again = lifecycle.reconcile(_dispatch(done.status), [observe(ended)], end)
    metrics.record(done.status, again, [observe(ended)], end)
    assert _value(metrics, "fleetdispatch_deadline_extensions_total") == 7
    assert _value(metrics, "fleetdispatch_attempt_duration_seconds_count") == 1


def test_a_requeued_dispatchs_next_pod_measures_its_lateness() -> None:
    metrics = Metrics()
    requeue_at = T0 + timedelta(seconds=30)
    waiting = FleetDispatchStatus.model_validate(
        {"phase": "Requeued", "attempt": 1, "requeues": 1, "requeueAt": ts(requeue_at), "podName": "job-1"}
    )
    old = make_pod("job-1", phase="Failed", supervisor=terminated(0), session=terminated(75))
    now = requeue_at + timedelta(seconds=2)
    decision = lifecycle.reconcile(_dispatch(waiting), [observe(old)], now)
    assert decision.create is not None and decision.create.attempt == 2
    metrics.record(waiting, decision, [observe(old)], now)
    lateness = "fleetdispatch_requeue_lateness_seconds"
    assert _value(metrics, f"{lateness}_count", phase="Requeued") == 1
    assert _value(metrics, f"{lateness}_sum", phase="Requeued") == 2.0
    assert _value(metrics, f"{lateness}_bucket", phase="Requeued", le="2.5") == 1
    assert _value(metrics, f"{lateness}_bucket", phase="Requeued", le="1.0") == 0


def test_a_report_without_extensions_counts_none() -> None:
    from fleetdispatch.session import protocol

    assert protocol.read_report_extensions(json.loads(supervisor_report())) == (0, 0.0)
    assert protocol.read_report_extensions({"deadlineExtensions": True}) == (0, 0.0)
    assert protocol.read_report_extensions({"deadlineExtensions": -1}) == (0, 0.0)
    assert protocol.read_report_extensions({"deadlineExtensions": 2, "deadlineExtendedSeconds": "x"}) == (
        2,
        0.0,
    )
    assert protocol.read_report_extensions(None) == (0, 0.0)
