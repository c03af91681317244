"""Attempt accounting survives any lost write: the real reconciler against an API server that fails.

The operator's reconcile step (`controller.reconciler.Reconciler`, carrying out `core.lifecycle.reconcile`)
runs against an in-memory API server with the semantics it relies on: resourceVersion preconditions on
status writes (409 when stale), AlreadyExists (409) on a repeated pod create, deterministic pod names. Every
request may fail before it commits (500), fail after it commits (the 500 a proxy or an API server restart
returns for a write that was stored), or be where the operator is killed (before or after the commit; the
operator then restarts with an empty cache). The watch delivers late or not at all, and a simulated
kubelet runs each pod to a drawn exit code (0 success, 1 logic failure, 75 quota stop, 143 with a
`DeadlineExceeded` outcome: a timeout, whose resume is created in the same decision).

Whatever happens, these hold:
- a pod is created only while the stored status names it as the current, non-terminal attempt (so never
  after a terminal phase, never from a decision made on an older status);
- at most one live pod at a time;
- never more attempts than the limits allow;
- in the end the dispatch is terminal and every attempt that had a pod has exactly one record, in order,
  and the counters agree with the records.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetdispatch.api import names
from fleetdispatch.api.names import SESSION_CONTAINER, SUPERVISOR_CONTAINER
from fleetdispatch.api.settings import OperatorSettings
from fleetdispatch.client.kubeapi import ApiError, KubeApi
from fleetdispatch.controller.metrics import Metrics
from fleetdispatch.controller.reconciler import Reconciler
from fleetdispatch.core.lifecycle import TERMINAL
from fleetdispatch.core.podstatus import observe
from pods import T0, ts

NAMESPACE, NAME, UID = "default", "job", "uid-job"
KEY = (NAMESPACE, NAME)
MAX_ATTEMPTS, MAX_REQUEUES, MAX_RESUMES = 3, 2, 2
HISTORY_LIMIT = OperatorSettings().history_limit
QUOTA_STOP = 75
TIMED_OUT = 143  # stopped by its supervisor at the deadline, which wrote the outcome
TICK = timedelta(seconds=2)  # longer than the backoff: a waiting dispatch goes on at the next reconcile
SPEC = {
    "template": {"spec": {"containers": [{"name": SESSION_CONTAINER, "image": "agent:1"}]}},
    "retry": {
        "maxAttempts": MAX_ATTEMPTS,
        "maxRequeues": MAX_REQUEUES,
        "maxResumes": MAX_RESUMES,
        "backoff": {"baseSeconds": 1, "maxSeconds": 1, "jitterPercent": 0},
    },
}
STATUS_PATH = names.FLEET_DISPATCHES.path(NAMESPACE, NAME, "status")
DISPATCH_PATH = names.FLEET_DISPATCHES.path(NAMESPACE, NAME)
PODS_PATH = names.PODS.path(NAMESPACE)
EVENTS_PATH = names.EVENTS.path(NAMESPACE)
# What may happen to one request: it works, fails before or after it is stored, or the operator dies there.
FAULTS = ("ok", "ok", "ok", "ok", "fail-before", "fail-after", "kill-before", "kill-after")


class Killed(Exception):
    """The operator process died here."""


class Cluster:
    """The API server and the kubelet, in memory; `faults` decides the fate of each request in turn."""

    def __init__(self, faults: list[str]) -> None:
        self.faults = faults
        self.now = T0
        self.version = 1
        self.dispatch: dict[str, Any] = {
            "apiVersion": names.API_VERSION,
            "kind": "FleetDispatch",
            "metadata": {
                "name": NAME,
                "namespace": NAMESPACE,
                "uid": UID,
                "generation": 1,
                "resourceVersion": "1",
                "creationTimestamp": ts(T0),
            },
            "spec": SPEC,
            "status": {},
        }
        self.pods: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []  # every pod ever created, in order
        self.exit_codes: dict[int, int] = {}

    # --- the API server ----------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        decode: bool = True,
    ) -> dict[str, Any]:
        fault = self.faults.pop(0) if self.faults else "ok"
        if fault == "fail-before":
            raise ApiError(500, "InternalError", "injected before the commit")
        if fault == "kill-before":
            raise Killed
        result = self.apply(method, path, body)
        if fault == "fail-after":
            raise ApiError(500, "InternalError", "injected after the commit")
        if fault == "kill-after":
            raise Killed
        return result

    def apply(self, method: str, path: str, body: Any) -> dict[str, Any]:
        if (method, path) == ("PATCH", STATUS_PATH):
            wanted = body["metadata"].get("resourceVersion")
            if wanted is not None and wanted != self.dispatch["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", "the object has been modified")
            status = dict(self.dispatch["status"])
            for field, value in body["status"].items():
                if value is None:
                    status.pop(field, None)
                else:
                    status[field] = copy.deepcopy(value)
            if status != self.dispatch["status"]:
                self.dispatch["status"] = status
                self.version += 1
                self.dispatch["metadata"]["resourceVersion"] = str(self.version)
            return copy.deepcopy(self.dispatch)
        if (method, path) == ("GET", DISPATCH_PATH):
            return copy.deepcopy(self.dispatch)
        if (method, path) == ("POST", PODS_PATH):
            name = body["metadata"]["name"]
            if name in self.pods:
                raise ApiError(409, "AlreadyExists", f'pods "{name}" already exists')
            self.check_create(body)
            pod = copy.deepcopy(body)
            pod["metadata"].update(uid=f"uid-{name}", creationTimestamp=ts(self.now))
            pod["status"] = {"phase": "Pending"}
            self.pods[name] = pod
            self.created.append(name)
            return copy.deepcopy(pod)
        if (method, path) == ("POST", EVENTS_PATH):
            return {}
        pod_name = path.rpartition("/")[2]
        if path == names.PODS.path(NAMESPACE, pod_name):
            if pod_name not in self.pods:
                raise ApiError(404, "NotFound", f'pods "{pod_name}" not found')
            if method == "DELETE":
                self.pods[pod_name]["metadata"]["deletionTimestamp"] = ts(self.now)
            return copy.deepcopy(self.pods[pod_name])
        raise AssertionError(f"unexpected request {method} {path}")

    def check_create(self, pod: dict[str, Any]) -> None:
        """The invariants of a pod create, against the status stored at this moment."""
        status = self.dispatch["status"]
        attempt = int(pod["metadata"]["labels"][names.ATTEMPT_LABEL])
        assert status.get("phase") not in TERMINAL, f"pod {pod['metadata']['name']} created after {status}"
        assert (status.get("attempt"), status.get("podName")) == (attempt, pod["metadata"]["name"]), (
            f"pod {pod['metadata']['name']} created while the stored status names "
            f"{status.get('podName')} (attempt {status.get('attempt')})"
        )
        live = [p for p in self.pods.values() if p["status"]["phase"] not in ("Succeeded", "Failed")]
        assert live == [], f"pod {pod['metadata']['name']} created while {live[0]['metadata']['name']} lives"

    # --- the kubelet -------------------------------------------------------------------------------

    def kubelet(self) -> None:
        """Every pod one step further: started, then ended with its attempt's exit code; a deleted pod
        stops (137) and then goes away."""
        at = ts(self.now)
        for name, pod in list(self.pods.items()):
            status, deleting = pod["status"], "deletionTimestamp" in pod["metadata"]
            phase = status["phase"]
            if phase in ("Succeeded", "Failed"):
                if deleting:
                    del self.pods[name]
                continue
            if phase == "Pending" and not deleting:
                status.update(
                    phase="Running",
                    startTime=at,
                    initContainerStatuses=[
                        {"name": SUPERVISOR_CONTAINER, "state": {"running": {"startedAt": at}}}
                    ],
                    containerStatuses=[{"name": SESSION_CONTAINER, "state": {"running": {"startedAt": at}}}],
                )
                continue
            attempt = int(pod["metadata"]["labels"][names.ATTEMPT_LABEL])
            code = 137 if deleting else self.exit_codes.get(attempt, 0)
            started = status.get("startTime", at)
            status.update(
                phase="Succeeded" if code == 0 else "Failed",
                startTime=started,
                initContainerStatuses=[
                    {
                        "name": SUPERVISOR_CONTAINER,
                        "state": {"terminated": {"exitCode": 0, "startedAt": started, "finishedAt": at}},
                    }
                ],
                containerStatuses=[
                    {
                        "name": SESSION_CONTAINER,
                        "state": {
                            "terminated": {
                                "exitCode": code,
                                "reason": "Completed" if code == 0 else "Error",
                                "startedAt": started,
                                "finishedAt": at,
                                **(
                                    {"message": '{"reason": "DeadlineExceeded"}'} if code == TIMED_OUT else {}
                                ),
                            }
                        },
                    }
                ],
            )


class Operator:
    """The reconciler as a process: killed, it restarts with an empty cache, listing what is stored."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.index: list[dict[str, Any]] = []
        self.reconciler = self.start()

    def start(self) -> Reconciler:
        api: KubeApi = self.cluster  # type: ignore[assignment]
        reconciler = Reconciler(
            OperatorSettings(),
            api,
            Metrics(),
            pods=lambda key: [observe(p) for p in self.index],
            clock=lambda: self.cluster.now,
        )
        self.index = copy.deepcopy(list(self.cluster.pods.values()))
        reconciler.saw_dispatch(copy.deepcopy(self.cluster.dispatch))
        return reconciler

    def watch(self) -> None:
        """The watches catch up: the dispatch and the pods as stored."""
        self.index = copy.deepcopy(list(self.cluster.pods.values()))
        for pod in self.index:
            self.reconciler.saw_pod(NAMESPACE, pod["metadata"]["name"], NAME)
        self.reconciler.saw_dispatch(copy.deepcopy(self.cluster.dispatch))

    async def reconcile(self) -> None:
        try:
            await self.reconciler.reconcile(KEY)
        except ApiError:
            pass  # the workers retry the key
        except Killed:
            self.reconciler = self.start()


# `run-pod`: the kubelet starts and ends the pods, and the watches tell, between two reconciles.
STEPS = st.lists(
    st.sampled_from(["reconcile", "reconcile", "run-pod", "kubelet", "watch", "tick"]), max_size=60
)


async def run(cluster: Cluster, steps: list[str]) -> None:
    operator = Operator(cluster)
    for step in steps:
        if step == "reconcile":
            await operator.reconcile()
        elif step == "kubelet":
            cluster.kubelet()
        elif step == "run-pod":
            cluster.kubelet()
            cluster.kubelet()
            operator.watch()
        elif step == "watch":
            operator.watch()
        else:
            cluster.now += TICK
    # Then no more faults: the dispatch must reach its end by itself.
    cluster.faults.clear()
    for _ in range(200):
        if cluster.dispatch["status"].get("phase") in TERMINAL and not any(
            p["status"]["phase"] not in ("Succeeded", "Failed") for p in cluster.pods.values()
        ):
            break
        cluster.kubelet()
        operator.watch()
        cluster.now += TICK
        await operator.reconcile()


def check_records(cluster: Cluster) -> None:
    status = cluster.dispatch["status"]
    assert status.get("phase") in TERMINAL, status
    records = status.get("attempts", [])
    numbers = [r["attempt"] for r in records]
    created = [int(name.rpartition("-")[2]) for name in cluster.created]
    assert created == list(range(1, len(created) + 1)), created
    # The history keeps the newest `history_limit` attempts (seen: 11 attempts, records of 2 to 11).
    assert numbers == created[-HISTORY_LIMIT:], (numbers, created)
    if len(created) > HISTORY_LIMIT:
        assert status["attempt"] == len(created)
        return  # the counters below are checked against the records, which no longer hold them all
    logic = sum(1 for r in records if r.get("failureClass") == "Logic")
    quota = sum(1 for r in records if r.get("failureClass") == "Quota")
    assert status.get("failures", 0) == logic <= MAX_ATTEMPTS
    over = 1 if status.get("reason") == "RequeueLimitExceeded" else 0
    assert status.get("requeues", 0) == quota - over <= MAX_REQUEUES
    streak = longest = 0
    for record in records:
        streak = streak + 1 if record.get("failureClass") == "Timeout" else 0
        longest = max(longest, streak)
    assert longest <= MAX_RESUMES + 1, records
    # Each attempt's drawn outcome, then successes: an attempt run twice or skipped would show here.
    assert len(created) <= len(cluster.exit_codes) + 1
    last = records[-1]
    assert (status["phase"] == "Succeeded") == (last["outcome"] == "Completed"), (status, last)
    assert status["attempt"] == len(created)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    faults=st.lists(st.sampled_from(FAULTS), max_size=80),
    steps=STEPS,
    codes=st.lists(st.sampled_from([0, 1, QUOTA_STOP, TIMED_OUT, TIMED_OUT]), max_size=10),
)
def test_no_attempt_is_lost_run_twice_or_over_the_limits_whatever_write_is_lost(
    faults: list[str], steps: list[str], codes: list[int]
) -> None:
    cluster = Cluster(faults)
    cluster.exit_codes = {n: code for n, code in enumerate(codes, start=1)}
    asyncio.run(run(cluster, steps))
    check_records(cluster)


def test_a_kill_between_the_status_write_and_the_create_creates_exactly_the_named_pod() -> None:
    cluster = Cluster([])
    cluster.exit_codes = {1: 1}

    async def scenario() -> None:
        operator = Operator(cluster)
        await operator.reconcile()  # attempt 1: its status, then job-1
        assert cluster.created == ["job-1"]
        cluster.kubelet()
        cluster.kubelet()  # job-1 failed
        operator.watch()
        await operator.reconcile()  # attempt 1 ended: Backoff, recorded
        assert cluster.dispatch["status"]["phase"] == "Backoff"
        cluster.now += TICK
        cluster.faults[:] = ["kill-after"]  # the status naming attempt 2 is stored; the operator dies
        await operator.reconcile()
        assert (cluster.dispatch["status"]["podName"], cluster.created) == ("job-2", ["job-1"])
        # After the restart: the status write, then the create commits and its answer is lost.
        cluster.faults[:] = ["ok", "fail-after"]
        await operator.reconcile()
        assert cluster.created == ["job-1", "job-2"]
        await operator.reconcile()  # the create again: AlreadyExists, adopted; nothing else
        assert cluster.created == ["job-1", "job-2"]
        assert "deletionTimestamp" not in cluster.pods["job-1"]["metadata"]
        cluster.kubelet()  # job-2 runs: job-1, whose end is recorded, goes
        operator.watch()
        await operator.reconcile()
        assert "deletionTimestamp" in cluster.pods["job-1"]["metadata"]
        assert [r["attempt"] for r in cluster.dispatch["status"]["attempts"]] == [1]
        assert cluster.dispatch["status"]["attempt"] == 2

    asyncio.run(scenario())
