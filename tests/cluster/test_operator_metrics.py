"""The operator's metrics, by value: the real operator process on the dev cluster, scraped over HTTP.

Each value is held against what the cluster shows independently of the operator's counting: the API
server's audit log (every request the operator's identity made, kopf's lists and watches among them), the
supervisor's own log (one `extended` line per extension), the dispatches' and pools' stored statuses, the
pods' times, and the operator process itself (its start time, its Python).

Pods in the `none` runtime's namespace are left alone by the node agent: the test writes their status as a
kubelet would, so a session starts and ends exactly when the test says (start latency, a quota stop).
Counters are compared as differences between two scrapes: the operator is shared by this module's tests.
"""

from __future__ import annotations

import itertools
import json
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

import fleetdispatch
from fleetdispatch.api.names import API_VERSION, GROUP, VERSION
from fleetdispatch.devcluster.stack import OPERATOR_USER, BackgroundCluster, audit_events
from fleetdispatch.session import protocol
from operators import (
    Namespace,
    OperatorProcess,
    dispatch_spec,
    now_rfc3339,
    running,
    running_operator,
    terminated,
)
from waiting import eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
_none_namespaces = itertools.count()


@pytest.fixture(scope="module")
def audit_offset(cluster: BackgroundCluster) -> int:
    """Where the audit log ends before this module's operator starts: its requests come after."""
    path = cluster.dev.audit_log
    return path.stat().st_size if path.exists() else 0


@pytest.fixture(scope="module")
def operator(
    cluster: BackgroundCluster, audit_offset: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    with running_operator(cluster, tmp_path_factory.mktemp("operator")) as process:
        yield process


@pytest.fixture
def kubelet_ns(cluster: BackgroundCluster, operator: OperatorProcess) -> Namespace:
    """A namespace whose pods the test runs by hand (the `none` runtime)."""
    return Namespace(cluster, f"operator-metrics-none-{next(_none_namespaces)}", runtime="none")


def scrape(operator: OperatorProcess) -> Samples:
    code, text = operator.get("/metrics")
    assert code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_until(operator: OperatorProcess, holds: Callable[[Samples], bool], what: str) -> Samples:
    """The first scrape for which `holds` (the operator counts after its status write)."""
    found: list[Samples] = []

    def check() -> bool:
        found[:] = [scrape(operator)]
        return holds(found[0])

    eventually(check, 10, what)
    return found[0]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def _pools(ns: Namespace) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{ns.name}/quotapools"


def _create_pool(ns: Namespace, name: str, **spec: Any) -> None:
    body = {"apiVersion": API_VERSION, "kind": "QuotaPool", "metadata": {"name": name}, "spec": spec}
    ns.kube.create(_pools(ns), body)


def _time(text: str) -> datetime:
    parsed = protocol.parse_time(text)
    assert parsed is not None, text
    return parsed


# --- the exposition ---------------------------------------------------------------------------------------


def test_the_exposition_has_no_created_series_no_empty_label_and_the_process_metrics(
    operator: OperatorProcess,
) -> None:
    samples = scrape(operator)
    assert not [name for name, _ in samples if name.endswith("_created")]
    assert not [(name, dict(labels)) for name, labels in samples if any(v == "" for _, v in labels)]
    assert operator.process is not None
    process = psutil.Process(operator.process.pid)
    # The process collector reads the operator's own process: its start time, to the second.
    assert abs(value(samples, "process_start_time_seconds") - process.create_time()) < 1.5
    assert value(samples, "process_resident_memory_bytes") > 10 * 2**20
    assert value(samples, "process_open_fds") > 0
    python = platform.python_version()  # the operator runs on this interpreter (tests/operators.py)
    python_info = [dict(labels) for name, labels in samples if name == "python_info"]
    assert [info["version"] for info in python_info] == [python]
    assert value(samples, "python_gc_collections_total", generation="0") > 0
    build = {"version": fleetdispatch.__version__, "python": python}
    assert value(samples, "fleetdispatch_build_info", **build) == 1
    assert [name for name, _ in samples if name == "fleetdispatch_build_info"] == ["fleetdispatch_build_info"]


# --- counted as it happens --------------------------------------------------------------------------------


def test_each_extension_is_counted_once_as_the_supervisor_logs_it(
    operator: OperatorProcess, ns: Namespace
) -> None:
    # Busy for 5 s on a 1 s budget, polled each second: the supervisor extends the deadline several times.
    script = 'end=$(( $(date +%s) + 5 )); while [ "$(date +%s)" -lt "$end" ]; do :; done; echo done'
    container = {"name": "session", "image": "busybox", "command": ["sh", "-c", script]}
    spec = dispatch_spec(
        template={"spec": {"containers": [container]}},
        activity={"pollSeconds": 1},
        timeouts={
            "deadlineSeconds": 1,
            "maxExtensionSeconds": 30,
            "idleOutputSeconds": 0,
            "killGraceSeconds": 1,
        },
    )
    before = scrape(operator)
    ns.create("busy", spec)
    status = ns.wait_phase("busy", "Succeeded", 60)
    lines = [
        json.loads(line)
        for line in ns.logs("busy-1", "fleet-supervisor").splitlines()
        if line.startswith("{")
    ]
    extended = [line for line in lines if line.get("event") == "extended"]
    assert len(extended) >= 2, lines
    ended = {"outcome": "Completed", "failure_class": "None"}
    after = scrape_until(
        operator,
        lambda s: grew(before, s, "fleetdispatch_attempts_ended_total", **ended) == 1,
        "the attempt's end counted",
    )
    assert grew(before, after, "fleetdispatch_deadline_extensions_total") == len(extended)
    # The seconds the deadline moved, from the log's times (whole seconds there, so within one per line).
    logged = sum((_time(e["deadline"]) - _time(e["previous"])).total_seconds() for e in extended)
    added = grew(before, after, "fleetdispatch_deadline_extension_seconds_total")
    assert abs(added - logged) <= len(extended), (added, logged)
    # The attempt's duration: from its record's start to its end, as stored.
    [record] = status["attempts"]
    duration = (_time(record["endTime"]) - _time(record["startTime"])).total_seconds()
    assert grew(before, after, "fleetdispatch_attempt_duration_seconds_count") == 1
    assert grew(before, after, "fleetdispatch_attempt_duration_seconds_sum") == duration
    assert grew(before, after, "fleetdispatch_attempts_total") == 1


def test_start_latency_is_from_the_pods_creation_to_the_session_running(
    operator: OperatorProcess, kubelet_ns: Namespace
) -> None:
    ns = kubelet_ns
    before = scrape(operator)
    ns.create("slow", dispatch_spec())
    eventually(lambda: [p["metadata"]["name"] for p in ns.pods()] == ["slow-1"], what="the pod")
    created = _time(ns.pod("slow-1")["metadata"]["creationTimestamp"])
    started = created + timedelta(seconds=3)
    time.sleep(max(0.0, started.timestamp() - time.time()))
    ns.pod_status("slow-1", running(protocol.format_time(started)))
    ns.wait_phase("slow", "Running")
    after = scrape_until(
        operator,
        lambda s: grew(before, s, "fleetdispatch_attempt_start_latency_seconds_count") == 1,
        "the start observed",
    )
    assert grew(before, after, "fleetdispatch_attempt_start_latency_seconds_sum") == 3.0
    bucket = "fleetdispatch_attempt_start_latency_seconds_bucket"
    assert grew(before, after, bucket, le="2.5") == 0
    assert grew(before, after, bucket, le="5.0") == 1
    ns.pod_status("slow-1", terminated(protocol.format_time(started), 0, reason="Completed"))
    ns.wait_phase("slow", "Succeeded")


def test_stops_by_supervision_are_counted_by_reason(operator: OperatorProcess, kubelet_ns: Namespace) -> None:
    ns = kubelet_ns
    before = scrape(operator)
    ns.create("stopped", dispatch_spec())
    eventually(lambda: [p["metadata"]["name"] for p in ns.pods()] == ["stopped-1"], what="the pod")
    started = now_rfc3339()
    ns.pod_status("stopped-1", running(started))
    ns.wait_phase("stopped", "Running")
    # The supervisor stopped the session at its deadline: the session's outcome says so (exit 143, TERM).
    outcome = {"reason": "DeadlineExceeded", "message": "the deadline passed"}
    ns.pod_status("stopped-1", terminated(started, 143, json.dumps(outcome)))
    eventually(lambda: "stopped-2" in [p["metadata"]["name"] for p in ns.pods()], 15, "the resume")
    ended = {"outcome": "DeadlineExceeded", "failure_class": "Timeout"}
    after = scrape_until(
        operator,
        lambda s: grew(before, s, "fleetdispatch_attempts_ended_total", **ended) == 1,
        "the stop counted",
    )
    assert grew(before, after, "fleetdispatch_stops_total", reason="DeadlineExceeded") == 1
    assert grew(before, after, "fleetdispatch_stops_total", reason="IdleTimeout") == 0
    assert grew(before, after, "fleetdispatch_attempts_total") == 2
    assert grew(before, after, "fleetdispatch_requeues_total") == 0


def test_pool_gauges_and_requeue_lateness_follow_the_pools(
    operator: OperatorProcess, kubelet_ns: Namespace
) -> None:
    ns = kubelet_ns
    _create_pool(ns, "narrow", maxConcurrent=1)
    ns.create("first", dispatch_spec(quotaPool="narrow"))
    ns.create("second", dispatch_spec(quotaPool="narrow"))
    narrow = {"namespace": ns.name, "pool": "narrow"}

    def shows(pool: dict[str, str], running: int, waiting: int, requeued: int) -> Samples | None:
        samples = scrape(operator)
        got = tuple(
            value(samples, f"fleetdispatch_quota_pool_{what}", **pool)
            for what in ("running", "waiting", "requeued")
        )
        return samples if got == (running, waiting, requeued) else None

    eventually(lambda: shows(narrow, 1, 1, 0), 10, "one running, one waiting")
    status = eventually(lambda: ns.kube.get(f"{_pools(ns)}/narrow").get("status"), 10, "the pool's status")
    eventually(lambda: ns.kube.get(f"{_pools(ns)}/narrow")["status"].get("waiting") == 1, 10, "its status")
    assert (status.get("running"), status.get("exhaustedUntil")) == (1, None)
    exhausted = "fleetdispatch_quota_pool_exhausted_until_timestamp_seconds"
    assert (exhausted, frozenset(narrow.items())) not in scrape(operator)  # never exhausted: no sample

    # A quota stop in another pool: its reset is the pool's exhaustion, its member requeued until then.
    _create_pool(ns, "shared")
    shared = {"namespace": ns.name, "pool": "shared"}
    ns.create("quota", dispatch_spec(quotaPool="shared"))
    eventually(lambda: "quota-1" in [p["metadata"]["name"] for p in ns.pods()], what="the pod")
    before = scrape(operator)
    reset = now_rfc3339(4)
    outcome = {"reason": "QuotaExhausted", "resetAt": reset}
    ns.pod_status("quota-1", terminated(now_rfc3339(), 75, json.dumps(outcome)))
    requeued = ns.wait_phase("quota", "Requeued")
    # The counts follow the member's status write; the reset is recorded by the same reconcile just after.
    samples = eventually(
        lambda: (found := shows(shared, 0, 0, 1)) and value(found, exhausted, **shared) and found,
        10,
        "the member requeued, the pool's reset recorded",
    )
    assert value(samples, exhausted, **shared) == _time(reset).timestamp()
    stored = eventually(
        lambda: ns.kube.get(f"{_pools(ns)}/shared").get("status", {}).get("exhaustedUntil"), 10
    )
    assert _time(stored).timestamp() == value(samples, exhausted, **shared)
    assert grew(before, samples, "fleetdispatch_requeues_total") == 1
    assert (
        grew(
            before,
            samples,
            "fleetdispatch_attempts_ended_total",
            outcome="QuotaExhausted",
            failure_class="Quota",
        )
        == 1
    )

    # After the reset, the next attempt's pod: how late after requeueAt it was created.
    eventually(lambda: "quota-2" in [p["metadata"]["name"] for p in ns.pods()], 15, "the next attempt")
    lateness = "fleetdispatch_requeue_lateness_seconds"
    after = scrape_until(
        operator,
        lambda s: grew(before, s, f"{lateness}_count", phase="Requeued") == 1,
        "the lateness observed",
    )
    late = grew(before, after, f"{lateness}_sum", phase="Requeued")
    created = _time(ns.pod("quota-2")["metadata"]["creationTimestamp"])  # whole seconds
    expected = (created - _time(requeued["requeueAt"])).total_seconds()
    assert 0 <= late < 2 and expected - 1 <= late <= expected + 1, (late, expected)


def test_the_phase_gauge_agrees_with_the_dispatches_stored(operator: OperatorProcess, ns: Namespace) -> None:
    ns.create("counted", dispatch_spec())
    ns.wait_phase("counted", "Succeeded", 30)

    def agrees() -> bool:
        stored = Counter(
            (d.get("status") or {}).get("phase") or "Pending"
            for d in ns.kube.items(f"/apis/{GROUP}/{VERSION}/fleetdispatches")
        )
        samples = scrape(operator)
        shown = {
            dict(labels)["phase"]: v
            for (name, labels), v in samples.items()
            if name == "fleetdispatch_dispatches"
        }
        return all(shown.get(phase, 0) == stored.get(phase, 0) for phase in {*shown, *stored})

    eventually(agrees, 15, "the phase gauge agrees with the stored phases")


# --- API requests, against the audit log ------------------------------------------------------------------


def _audited(cluster: BackgroundCluster, offset: int) -> Counter[tuple[str, str, str]]:
    """The operator identity's requests since `offset`, as (verb, resource[/subresource], code): watches once
    they started, every other request once complete; paths without a resource as `discovery` or
    `nonresource`. The login check before the operator starts (a SelfSubjectReview, before any metric
    exists) is left out."""
    events, _ = audit_events(cluster.dev.audit_log, offset)
    counted: Counter[tuple[str, str, str]] = Counter()
    for event in events:
        if (event.get("user") or {}).get("username") != OPERATOR_USER:
            continue
        ref = event.get("objectRef")
        if ref and ref.get("resource") == "selfsubjectreviews":
            continue
        stage = "ResponseStarted" if event.get("verb") == "watch" else "ResponseComplete"
        if event.get("stage") != stage:
            continue
        if ref:
            resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        else:  # no resource: the API discovery (/api, /apis, /apis/GROUP[/VERSION]) or another path
            parts = event["requestURI"].split("?")[0].strip("/").split("/")
            resource = "discovery" if parts[0] in ("api", "apis") and len(parts) <= 3 else "nonresource"
        counted[(event["verb"], resource, str((event.get("responseStatus") or {}).get("code")))] += 1
    return counted


def test_api_requests_are_counted_as_the_audit_log_records_them_kopfs_included(
    cluster: BackgroundCluster, operator: OperatorProcess, audit_offset: int, ns: Namespace
) -> None:
    ns.create("audited", dispatch_spec())
    ns.wait_phase("audited", "Succeeded", 30)
    compared: dict[str, Any] = {}

    def agree() -> bool:
        samples = scrape(operator)
        counted = Counter(
            {
                (labels["verb"], labels["resource"], labels["code"]): int(v)
                for name, frozen in samples
                if name == "fleetdispatch_api_requests_total" and (labels := dict(frozen))["code"] != "error"
                for v in [samples[(name, frozen)]]
            }
        )
        audited = _audited(cluster, audit_offset)
        compared.update(counted=counted, audited=audited)
        return counted == audited

    try:
        eventually(agree, 30, "the request counts agree with the audit log")
    except AssertionError:
        counted, audited = compared["counted"], compared["audited"]
        raise AssertionError(
            f"counted - audited: {counted - audited}; audited - counted: {audited - counted}"
        ) from None
    counted = compared["counted"]
    # kopf's own requests are among them: the lists and watches that feed its indices and events.
    for resource in ("fleetdispatches", "pods", "quotapools"):
        assert counted[("list", resource, "200")] >= 1, resource
        assert counted[("watch", resource, "200")] >= 1, resource
    # And the operator's: the pod, the status writes, the Event.
    assert counted[("create", "pods", "201")] >= 1
    assert counted[("patch", "fleetdispatches/status", "200")] >= 1
    assert counted[("create", "events", "201")] >= 1
    samples = scrape(operator)
    assert (
        value(samples, "fleetdispatch_api_requests_total", verb="get", resource="discovery", code="200") >= 1
    )
    # After the module's dispatches, attempts and pools, still no `_created` series and no empty label.
    assert not [name for name, _ in samples if name.endswith("_created")]
    assert not [(name, dict(labels)) for name, labels in samples if any(v == "" for _, v in labels)]
