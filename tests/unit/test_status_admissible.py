"""Every status the operator writes is one the API server admits, whatever its pods report.

A kubelet reports any int32 exit code (-1, 256, a Windows NTSTATUS such as -1073741819), reasons and
messages of any length, and any date (a node clock in year 9999). Arbitrary pods go through the real
`podstatus.observe`, `classify.judge` and `lifecycle.reconcile`, and the status written (as the reconciler
serialises it) is checked against the CRD's status schema and rules by `fleetdispatch.validation`: a
refused status write leaves the dispatch where it was for ever.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetdispatch.api.models import FleetDispatchSpec, FleetDispatchStatus
from fleetdispatch.api.names import ATTEMPT_LABEL, DISPATCH_LABEL, SESSION_CONTAINER, SUPERVISOR_CONTAINER
from fleetdispatch.controller.reconciler import status_patch
from fleetdispatch.core import classify
from fleetdispatch.core.lifecycle import Dispatch, Limits, backstop_at, reconcile
from fleetdispatch.core.podstatus import observe
from fleetdispatch.validation import admission
from fleetdispatch.validation.manifests import crds
from pods import T0, make_pod, running, terminated

INT32 = st.integers(-(2**31), 2**31 - 1)
EXIT_CODES = st.one_of(
    st.sampled_from([0, 1, 75, 137, 255, 256, -1, 2**31 - 1, -(2**31), -1073741819]), INT32
)
TEXT = st.one_of(st.text(max_size=40), st.text(min_size=100, max_size=2000), st.just("x" * 40000))
OFFSETS = st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-14))])
DATES = st.one_of(
    st.sampled_from(["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "9999-12-31T23:00:00-14:00", "garbage"]),
    st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30), timezones=OFFSETS).map(
        lambda d: d.replace(microsecond=0).isoformat()
    ),
    st.just(T0.strftime("%Y-%m-%dT%H:%M:%SZ")),
)
REASONS = st.one_of(st.sampled_from(["Error", "OOMKilled", "Completed", "StartError", "Evicted"]), TEXT)


@st.composite
def messages(draw: st.DrawFn) -> str:
    """A termination message: a log tail, or an outcome.json with arbitrary fields."""
    if draw(st.booleans()):
        return draw(TEXT)
    fields = {
        "reason": draw(st.one_of(st.sampled_from(["QuotaExhausted", "DeadlineExceeded", "Completed"]), TEXT)),
        "message": draw(TEXT),
        "resetAt": draw(DATES),
        "resumeToken": draw(TEXT),
        "deadline": draw(DATES),
        "deadlineCap": draw(DATES),
        "lastActivityTime": draw(DATES),
        "activityReason": draw(st.sampled_from(["cpu", "output", "bogus"])),
    }
    return json.dumps({k: v for k, v in fields.items() if draw(st.booleans())} | {"reason": fields["reason"]})


@st.composite
def container_states(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["waiting", "running", "terminated"]))
    if kind == "waiting":
        return {"waiting": {"reason": draw(REASONS), "message": draw(TEXT)}}
    if kind == "running":
        return {"running": {"startedAt": draw(DATES)}}
    return {
        "terminated": {
            "exitCode": draw(EXIT_CODES),
            "reason": draw(REASONS),
            "message": draw(messages()),
            "startedAt": draw(DATES),
            "finishedAt": draw(DATES),
        }
    }


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    """A pod of attempt 1 of dispatch `job` in any state a kubelet (or a hostile one) can report."""
    pod = make_pod("job-1", 1, phase=draw(st.sampled_from(["Pending", "Running", "Succeeded", "Failed"])))
    pod["metadata"]["labels"] = {DISPATCH_LABEL: "job", ATTEMPT_LABEL: "1"}
    pod["metadata"]["creationTimestamp"] = draw(DATES)
    pod["metadata"]["ownerReferences"][0].update(uid="uid-job", controller=True)
    if draw(st.booleans()):
        pod["metadata"]["deletionTimestamp"] = draw(DATES)
    status = pod["status"]
    status["startTime"] = draw(DATES)
    status["containerStatuses"] = [{"name": SESSION_CONTAINER, "state": draw(container_states())}]
    status["initContainerStatuses"] = [{"name": SUPERVISOR_CONTAINER, "state": draw(container_states())}]
    if draw(st.booleans()):
        status["reason"], status["message"] = "Evicted", draw(TEXT)
    if draw(st.booleans()):
        status["conditions"].append(
            {"type": "DisruptionTarget", "status": "True", "reason": draw(REASONS), "message": draw(TEXT)}
        )
    if draw(st.booleans()):
        status["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": draw(REASONS), "message": draw(TEXT)}
        ]
    return pod


SPECS = st.sampled_from(
    [
        {},
        {"retry": {"maxAttempts": 1, "maxResumes": 0, "maxRequeues": 0, "maxInfrastructureFailures": 0}},
        # Fail on whatever exit code or reason: a pod's own reason can become the terminal one.
        {
            "failurePolicy": {
                "rules": [{"action": "Fail", "onExitCodes": {"operator": "NotIn", "values": [1]}}]
            }
        },
        {"failurePolicy": {"rules": [{"action": "Fail", "onOutcome": {"reasons": ["Evicted", "Error"]}}]}},
        {"timeouts": {"deadlineSeconds": 604800, "maxExtensionSeconds": 604800, "killGraceSeconds": 3600}},
    ]
)
STATUSES = st.sampled_from(
    [
        {"phase": "Pending", "attempt": 1, "podName": "job-1"},
        {"phase": "Running", "attempt": 1, "podName": "job-1", "deadline": "2025-03-01T13:00:00Z"},
    ]
)


def _status_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crds()["FleetDispatch"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["status"]  # type: ignore[no-any-return]


def stored(before: dict[str, Any], status: FleetDispatchStatus) -> dict[str, Any]:
    """The status the API server stores after the reconciler's merge patch."""
    merged = {**before, **status_patch(before, status)}
    return {k: v for k, v in merged.items() if v is not None}


def admitted(status: dict[str, Any]) -> list[str]:
    return [
        f"{e.path}: {e.detail}" for e in admission.validate(_status_schema(), status, resource_root=False)
    ]


def template() -> dict[str, Any]:
    return {"spec": {"containers": [{"name": SESSION_CONTAINER, "image": "agent:1"}]}}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pod=pods(), spec=SPECS, before=STATUSES, minutes=st.integers(0, 10**7))
def test_every_status_written_for_any_pod_is_admitted(
    pod: dict[str, Any], spec: dict[str, Any], before: dict[str, Any], minutes: int
) -> None:
    parsed = FleetDispatchSpec.model_validate({"template": template(), **spec})
    view = observe(pod)
    classify.judge(parsed.failure_policy, view)  # never raises, whatever the pod says
    now = T0 + timedelta(minutes=minutes)
    current = before
    # Two rounds: the first ends or follows the attempt, the second acts on what the first stored.
    for _ in range(2):
        dispatch = Dispatch(
            "job", "default", "uid-job", 1, parsed, FleetDispatchStatus.model_validate(current)
        )
        decision = reconcile(dispatch, [view], now, Limits(history_limit=20))
        current = stored(current, decision.status)
        assert admitted(current) == [], (current, view)


def test_the_property_can_fail() -> None:
    # The check refuses what the old schema and an unbounded status would have written.
    assert admitted({"attempts": [{"attempt": 1, "exitCode": 2**31}]}) != []
    assert admitted({"reason": "x" * 129}) != []
    assert (
        admitted(
            {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "not a reason",
                        "message": "",
                        "lastTransitionTime": "2025-03-01T12:00:00Z",
                    }
                ]
            }
        )
        != []
    )


def _finished(code: int, **fields: Any) -> dict[str, Any]:
    pod = make_pod(
        "job-1",
        1,
        phase="Failed",
        started=T0,
        supervisor=terminated(0, started=T0),
        session=terminated(code, started=T0, finished=T0 + timedelta(seconds=5), **fields),
    )
    pod["metadata"]["ownerReferences"][0].update(uid="uid-job", controller=True)
    return pod


def _decide(
    pod: dict[str, Any], spec: dict[str, Any] | None = None, phase: str = "Running"
) -> dict[str, Any]:
    parsed = FleetDispatchSpec.model_validate({"template": template(), **(spec or {})})
    before = {"phase": phase, "attempt": 1, "podName": "job-1"}
    decision = reconcile(
        Dispatch("job", "default", "uid-job", 1, parsed, FleetDispatchStatus.model_validate(before)),
        [observe(pod)],
        T0 + timedelta(minutes=1),
    )
    return stored(before, decision.status)


def test_int32_exit_codes_are_recorded_as_reported() -> None:
    for code in (-1, 256, 2**31 - 1, -(2**31), -1073741819):
        status = _decide(_finished(code))
        assert status["attempts"][-1]["exitCode"] == code
        assert status["phase"] == "Backoff"
        assert admitted(status) == []


def test_over_long_reasons_and_messages_are_cut_to_the_crd_bounds() -> None:
    reason = "Disrupted" + "X" * 200
    pod = _finished(1)
    pod["status"]["conditions"].append(
        {"type": "DisruptionTarget", "status": "True", "reason": reason, "message": "m" * 5000}
    )
    status = _decide(pod)
    assert status["phase"] == "Backoff"  # a disruption is retried, under its own (cut) reason
    record = status["attempts"][-1]
    assert record["outcome"] == reason[:128]
    assert len(record["message"]) == 1024
    assert admitted(status) == []

    waiting = make_pod(
        "job-1", 1, phase="Pending", session={"waiting": {"reason": "W" * 300, "message": "m" * 40000}}
    )
    waiting["metadata"]["ownerReferences"][0].update(uid="uid-job", controller=True)
    status = _decide(waiting, phase="Pending")
    assert (status["phase"], status["reason"]) == ("Pending", "W" * 128)
    assert len(status["message"]) == 32768
    assert admitted(status) == []


def test_a_year_9999_start_does_not_raise_and_is_admitted() -> None:
    spec = FleetDispatchSpec.model_validate({"template": template()})
    last = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert backstop_at(spec, datetime(9999, 12, 31, 23, tzinfo=UTC), 60) == last
    pod = make_pod("job-1", 1, phase="Running", started=T0, supervisor=running(T0), session=running(T0))
    pod["metadata"]["ownerReferences"][0].update(uid="uid-job", controller=True)
    for container in (*pod["status"]["containerStatuses"], *pod["status"]["initContainerStatuses"]):
        container["state"] = {"running": {"startedAt": "9999-12-31T23:00:00Z"}}
    pod["status"]["startTime"] = "9999-12-31T22:00:00Z"
    pod["metadata"]["creationTimestamp"] = "9999-12-31T22:00:00Z"
    status = _decide(pod, phase="Pending")
    assert (status["phase"], status["deadline"]) == ("Running", "9999-12-31T23:59:59Z")
    assert admitted(status) == []
