"""The operator process against a real control plane without a kubelet: the test plays the kubelet.

Writing pod statuses by hand (as admin, through pods/status) makes every phase reachable on demand, so
these tests kill the operator with SIGKILL in each phase, change the world while it is down, and check that
the restarted operator neither duplicates a pod nor loses a transition. They also cover what only a
kubelet-less cluster can show exactly: evictions, the backstop (`SupervisorLost`), an invalid spec that
slipped past the CRD, and the write budget of one dispatch (from the API server's audit log).

The module has a cluster of its own: its FleetDispatch CRD has no schema (what an old or hand-edited
install may serve), so an invalid spec reaches the operator. Its node runtime is `none`: no node agent,
so the scheduler never binds these pods and nothing runs them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fleetdispatch.devcluster.stack import BackgroundCluster
from fleetdispatch.session.protocol import parse_time
from fleetdispatch.validation import manifests
from kube import Kube
from operators import Namespace, OperatorProcess, dispatch_spec, now_rfc3339, running, terminated
from waiting import eventually


def _schemaless_crd() -> dict[str, Any]:
    """Our CRD with its schema and CEL rules removed: what an old or hand-edited install may serve."""
    crd: dict[str, Any] = json.loads(json.dumps(manifests.crds()["FleetDispatch"]))
    for version in crd["spec"]["versions"]:
        version.pop("selectableFields", None)  # they must name fields of the schema
        version["schema"] = {
            "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        }
    return crd


@pytest.fixture(scope="module")
def cluster() -> Iterator[BackgroundCluster]:
    crds = [_schemaless_crd(), manifests.crds()["QuotaPool"]]
    with BackgroundCluster(runtime="none", crds=False) as running_cluster:
        running_cluster.dev.plane.apply(crds)
        for crd in crds:
            running_cluster.dev._wait_established(crd["metadata"]["name"])
        yield running_cluster


@pytest.fixture(scope="module")
def runtime() -> str:
    return "none"


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return ("--backstop-margin-seconds=1",)


def _pod_names(ns: Namespace) -> list[str]:
    return [p["metadata"]["name"] for p in ns.pods()]


def test_one_successful_dispatch_costs_at_most_six_writes(
    cluster: BackgroundCluster, operator: OperatorProcess, ns: Namespace
) -> None:
    ns.create("budget", dispatch_spec())
    eventually(lambda: _pod_names(ns) == ["budget-1"], what="the first pod")
    started = now_rfc3339()
    ns.pod_status("budget-1", running(started))
    ns.wait_phase("budget", "Running")
    ns.pod_status("budget-1", terminated(started, 0, reason="Completed"))
    status = ns.wait_phase("budget", "Succeeded")
    time.sleep(0.5)  # anything late would show up now
    writes = ns.operator_writes()
    assert len(writes) <= 6, writes
    assert status["observedGeneration"] == 1
    eventually(lambda: [r for r, _ in ns.events()] == ["Started", "Succeeded"], 5, "the Events")
    pod = ns.pod("budget-1")
    assert pod["metadata"]["ownerReferences"][0]["uid"] == ns.dispatch("budget")["metadata"]["uid"]


def test_eviction_is_retried_without_spending_attempts(operator: OperatorProcess, ns: Namespace) -> None:
    ns.create(
        "evicted", dispatch_spec(retry={"maxAttempts": 1, "backoff": {"baseSeconds": 1, "jitterPercent": 0}})
    )
    eventually(lambda: _pod_names(ns) == ["evicted-1"])
    ns.pod_status(
        "evicted-1",
        {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."},
    )
    eventually(lambda: ns.status("evicted").get("podName") == "evicted-2", 10, "a second attempt")
    status = ns.status("evicted")
    assert status["failures"] == 0
    assert status["attempts"][0]["outcome"] == "Evicted"
    assert status["attempts"][0]["failureClass"] == "Infrastructure"


def test_a_pod_running_past_its_cap_is_deleted_as_supervisor_lost(
    operator: OperatorProcess, ns: Namespace
) -> None:
    timeouts = {"deadlineSeconds": 1, "maxExtensionSeconds": 0, "killGraceSeconds": 0, "idleOutputSeconds": 0}
    ns.create("lost", dispatch_spec(timeouts=timeouts, activity={"pollSeconds": 1}))
    eventually(lambda: _pod_names(ns) == ["lost-1"])
    ns.pod_status("lost-1", running(now_rfc3339()))  # a supervisor that never stops the session
    status = ns.wait_phase("lost", "Backoff", 10)
    assert status["attempts"][0]["outcome"] == "SupervisorLost"
    # One listing: the pod may be gone between a listing and a read of it.
    left = [p for p in ns.pods() if p["metadata"]["name"] == "lost-1"]
    assert all(p["metadata"].get("deletionTimestamp") for p in left), left


def test_an_invalid_spec_that_slipped_past_the_crd_stalls_once_without_a_retry_storm(
    cluster: BackgroundCluster, operator: OperatorProcess, ns: Namespace
) -> None:
    ns.create("broken", dispatch_spec(timeouts={"deadlineSeconds": "an hour"}))
    status = ns.wait_phase("broken", "Failed")
    stalled = ns.condition("broken", "Stalled")
    assert stalled is not None and stalled["status"] == "True" and stalled["reason"] == "InvalidSpec"
    assert "spec.timeouts.deadlineSeconds" in stalled["message"]
    assert status["reason"] == "InvalidSpec"
    time.sleep(2)
    writes = ns.operator_writes()
    assert len(writes) == 2, writes  # the status, one Event; no pod, no retries
    assert _pod_names(ns) == []


def test_restart_while_pending_creates_no_second_pod(operator: OperatorProcess, ns: Namespace) -> None:
    ns.create("pending", dispatch_spec())
    eventually(lambda: _pod_names(ns) == ["pending-1"])
    ns.wait_phase("pending", "Pending")
    operator.kill()
    operator.start()
    time.sleep(1)
    assert _pod_names(ns) == ["pending-1"]
    assert ns.status("pending")["attempt"] == 1


def _fail_while_down(operator: OperatorProcess, ns: Namespace, name: str) -> None:
    """Dispatch `name`'s first attempt runs, the operator is killed, and the session exits 3 meanwhile."""
    ns.create(name, dispatch_spec())
    eventually(lambda: _pod_names(ns) == [f"{name}-1"])
    started = now_rfc3339()
    ns.pod_status(f"{name}-1", running(started))
    ns.wait_phase(name, "Running")
    operator.kill()
    ns.pod_status(f"{name}-1", terminated(started, 3))


def test_a_failure_while_the_operator_is_down_is_not_lost(operator: OperatorProcess, ns: Namespace) -> None:
    _fail_while_down(operator, ns, "down")
    operator.start()
    eventually(lambda: ns.status("down").get("podName") == "down-2", 10, "attempt 2 after the backoff")
    status = ns.status("down")
    assert status["failures"] == 1
    assert [a["exitCode"] for a in status["attempts"]] == [3]
    # Attempt 2's pod, named first; attempt 1's is deleted once its end is recorded and attempt 2 runs.
    assert sorted(_pod_names(ns)) == ["down-1", "down-2"]
    ns.pod_status("down-2", running(now_rfc3339()))
    eventually(lambda: _pod_names(ns) == ["down-2"], 10, "attempt 2's pod, attempt 1's deleted")


def test_a_pod_created_just_before_a_crash_is_adopted(operator: OperatorProcess, ns: Namespace) -> None:
    _fail_while_down(operator, ns, "adopt")
    # As if the operator had created attempt 2's pod and died before writing the status.
    pod = ns.pod("adopt-1")
    clone = {
        "metadata": {
            "name": "adopt-2",
            "labels": {**pod["metadata"]["labels"], "fleet.dispatch.dev/attempt": "2"},
            "annotations": pod["metadata"].get("annotations") or {},
            "ownerReferences": pod["metadata"]["ownerReferences"],
        },
        "spec": pod["spec"],
    }
    Kube(ns.cluster.dev).create(f"/api/v1/namespaces/{ns.name}/pods", clone)
    operator.start()
    eventually(lambda: ns.status("adopt").get("attempt") == 2, 10, "attempt 2 adopted")
    time.sleep(1.5)  # past the backoff: a duplicate would be created now
    assert sorted(_pod_names(ns)) == ["adopt-1", "adopt-2"]
    # adopt-1 goes once adopt-2 runs: its end is recorded (the adopting decision ended it first).
    ns.pod_status("adopt-2", running(now_rfc3339()))
    eventually(lambda: _pod_names(ns) == ["adopt-2"], 10, "adopt-2 only")


def test_a_kill_between_the_status_and_the_create_creates_exactly_the_named_pod(
    operator: OperatorProcess, ns: Namespace
) -> None:
    _fail_while_down(operator, ns, "named")
    # What the operator stores before it creates attempt 2's pod (the status first), and then it died.
    recorded = {
        "attempt": 1,
        "podName": "named-1",
        "outcome": "Failed",
        "exitCode": 3,
        "failureClass": "Logic",
    }
    status = {"phase": "Pending", "attempt": 2, "podName": "named-2", "failures": 1, "attempts": [recorded]}
    status |= {"deadline": None, "deadlineCap": None, "requeueAt": None}  # the new attempt has none yet
    ns.kube.patch(f"{ns.path}/named/status", {"status": status})
    operator.start()
    eventually(lambda: "named-2" in _pod_names(ns), 10, "attempt 2's pod, as the stored status names it")
    time.sleep(1.5)  # a second decision on the same status must create nothing more
    assert sorted(_pod_names(ns)) == ["named-1", "named-2"]
    # named-1 goes once named-2 runs: its end is recorded.
    ns.pod_status("named-2", running(now_rfc3339()))
    eventually(lambda: _pod_names(ns) == ["named-2"], 10, "named-2 only")
    stored = ns.status("named")
    assert (stored["attempt"], stored["failures"]) == (2, 1)
    assert [a["attempt"] for a in stored["attempts"]] == [1]


def test_requeued_and_suspended_survive_a_restart(operator: OperatorProcess, ns: Namespace) -> None:
    ns.create("quota", dispatch_spec())
    eventually(lambda: _pod_names(ns) == ["quota-1"])
    started = now_rfc3339()
    outcome = {"reason": "QuotaExhausted", "resetAt": now_rfc3339(3), "resumeToken": "tok-1"}
    ns.pod_status("quota-1", terminated(started, 75, json.dumps(outcome)))
    status = ns.wait_phase("quota", "Requeued")
    requeued = ns.condition("quota", "Requeued")
    assert requeued is not None and requeued["status"] == "True" and requeued["reason"] == "QuotaExhausted"
    operator.kill()
    operator.start()
    eventually(lambda: ns.status("quota").get("podName") == "quota-2", 10, "attempt 2 after the reset")
    # The status names attempt 2 before its pod is created (so no attempt is lost): wait for the pod too.
    eventually(lambda: "quota-2" in _pod_names(ns), 10, "attempt 2's pod")
    # The restarted operator kept the requeue: attempt 2 started at its requeueAt, not before (seconds).
    created = parse_time(ns.pod("quota-2")["metadata"]["creationTimestamp"])
    requeue_at = parse_time(status["requeueAt"])
    assert created is not None and requeue_at is not None
    assert created >= requeue_at.replace(microsecond=0), (created, requeue_at)
    env = {e["name"]: e.get("value") for e in ns.pod("quota-2")["spec"]["containers"][0]["env"]}
    assert env["FLEET_RESUME"] == "1" and env["FLEET_RESUME_TOKEN"] == "tok-1"
    assert ns.status("quota")["failures"] == 0

    ns.patch_spec("quota", {"suspend": True})
    ns.wait_phase("quota", "Suspended")
    eventually(lambda: "quota-2" not in _pod_names(ns), 5, "the suspended attempt's pod deleted")
    operator.kill()
    operator.start()
    time.sleep(1)
    assert ns.status("quota")["phase"] == "Suspended"
    assert _pod_names(ns) == []  # quota-1 went when attempt 2 started (its end recorded); none created
    ns.patch_spec("quota", {"suspend": False})
    eventually(lambda: "quota-3" in _pod_names(ns), 10, "attempt 3 after unsuspending")


def test_a_finished_dispatch_stays_finished_across_a_restart(
    cluster: BackgroundCluster, operator: OperatorProcess, ns: Namespace
) -> None:
    ns.create("done", dispatch_spec())
    eventually(lambda: _pod_names(ns) == ["done-1"])
    ns.pod_status("done-1", terminated(now_rfc3339(), 0, reason="Completed"))
    ns.wait_phase("done", "Succeeded")
    before = ns.dispatch("done")["metadata"]["resourceVersion"]
    operator.kill()
    operator.start()
    time.sleep(1)
    assert ns.dispatch("done")["metadata"]["resourceVersion"] == before
    assert _pod_names(ns) == ["done-1"]


def test_metrics_and_liveness_are_served(operator: OperatorProcess, ns: Namespace) -> None:
    ns.create("seen", dispatch_spec())
    eventually(lambda: _pod_names(ns) == ["seen-1"])
    code, text = operator.get("/metrics")
    assert code == 200
    assert "fleetdispatch_attempts_total" in text
    assert 'fleetdispatch_dispatches{phase="Pending"}' in text
    assert "fleetdispatch_reconcile_duration_seconds_bucket" in text
    code, text = operator.get("/healthz")
    assert code == 200
    workers = json.loads(text)["workers"]  # the probe of the workers' progress
    assert workers["started"] and workers["workers"] == 16
