"""`lifecycle.reconcile` at its limits: a pod refused by the API server (`FailedCreate`), a session that does
not start within `timeouts.startSeconds` (`StartTimeout`), and `retry.maxInfrastructureFailures`.

Pods are fed through `observe` as in tests/unit/test_lifecycle.py; the status is carried from decision to
decision as the shell writes it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fleetdispatch.api.models import FleetDispatchSpec, FleetDispatchStatus
from fleetdispatch.core.lifecycle import Decision, Dispatch, Event, reconcile
from fleetdispatch.core.podspec import AttemptRequest
from fleetdispatch.core.podstatus import observe
from pods import T0, exited, make_pod, running, ts, waiting

NO_JITTER = {"baseSeconds": 10, "maxSeconds": 600, "jitterPercent": 0}
REFUSED = (
    'the API server refused the pod for attempt 1: pods "job-1" is forbidden: exceeded quota: pods, '
    "requested: pods=1, used: pods=0, limited: pods=0"
)


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def spec_of(**parts: Any) -> FleetDispatchSpec:
    raw: dict[str, Any] = {"template": {"spec": {"containers": [{"name": "session", "image": "agent:1"}]}}}
    raw.update({"retry": {"backoff": NO_JITTER}}, **parts)
    return FleetDispatchSpec.model_validate(raw)


class Flow:
    def __init__(self, spec: FleetDispatchSpec) -> None:
        self.spec = spec
        self.status = FleetDispatchStatus()

    def step(self, now: datetime, *pods: dict[str, Any], refused: str | None = None) -> Decision:
        dispatch = Dispatch("job", "default", "uid-1", 1, self.spec, self.status, create_refused=refused)
        decision = reconcile(dispatch, [observe(p) for p in pods], now)
        self.status = decision.status
        return decision


def born(pod: dict[str, Any], at: datetime) -> dict[str, Any]:
    pod["metadata"]["creationTimestamp"] = ts(at)
    return pod


def pulling(n: int, created: datetime) -> dict[str, Any]:
    """Scheduled, its supervisor running, the session's image not pulled."""
    pod = make_pod(
        f"job-{n}",
        n,
        started=created + s(1),
        supervisor=running(created + s(1)),
        session=waiting("ImagePullBackOff", 'Back-off pulling image "agent:1"'),
    )
    return born(pod, created)


def unschedulable(n: int, created: datetime) -> dict[str, Any]:
    pod = born(make_pod(f"job-{n}", n), created)
    pod["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient cpu.",
            "lastTransitionTime": ts(created),
        }
    ]
    return pod


def condition(status: FleetDispatchStatus, type_: str) -> tuple[str, str, str] | None:
    found = next((c for c in status.conditions if c.type == type_), None)
    return None if found is None else (found.status, found.reason, found.message)


# --- a refused pod creation ---------------------------------------------------------------------------------


def test_a_refused_create_waits_with_its_reason_and_goes_on_once_admitted() -> None:
    flow = Flow(spec_of())
    d = flow.step(T0, refused=REFUSED)
    st = d.status
    assert d.create is None
    assert (st.phase, st.attempt, st.pod_name, st.reason, st.message) == (
        "Pending",
        1,
        "job-1",
        "FailedCreate",
        REFUSED,
    )
    assert d.events == (Event("Warning", "FailedCreate", REFUSED),)
    assert condition(st, "PodCreateFailed") == ("True", "FailedCreate", REFUSED)
    assert condition(st, "Ready") == ("False", "Pending", REFUSED)
    assert condition(st, "Stalled")[0::2] == ("False", "")  # type: ignore[index]
    assert st.failures == st.infrastructure_failures == 0 and st.attempts == []

    # Refused again: the same attempt is asked for, the status stays, one more Event says so.
    before = st.model_copy(deep=True)
    d = flow.step(T0 + s(1), refused=REFUSED)
    assert (d.create, d.status, d.events) == (None, before, (Event("Warning", "FailedCreate", REFUSED),))

    # Admitted: the same attempt's pod, and the condition says the refusal is over.
    d = flow.step(T0 + s(3))
    assert d.create == AttemptRequest(1, False, None)
    assert (d.status.reason, d.status.message) == ("Created", "created pod job-1 for attempt 1")
    assert d.events == (Event("Normal", "Created", "created pod job-1 for attempt 1"),)
    assert condition(d.status, "PodCreateFailed") == ("False", "Created", "")
    d = flow.step(T0 + s(10), exited(1, 0))
    assert d.status.phase == "Succeeded"
    assert d.status.attempts[-1].attempt == 1


def test_a_dispatch_never_refused_has_no_create_failed_condition() -> None:
    flow = Flow(spec_of())
    d = flow.step(T0)
    assert d.create == AttemptRequest(1, False, None)
    assert condition(d.status, "PodCreateFailed") is None


def test_the_next_attempt_refused_after_a_retry_keeps_its_attempt_number() -> None:
    flow = Flow(spec_of())
    flow.step(T0)
    flow.step(T0 + s(5), exited(1, 1))
    d = flow.step(T0 + s(15), exited(1, 1), refused=REFUSED)
    assert d.create is None
    assert (d.status.phase, d.status.attempt, d.status.reason, d.status.failures) == (
        "Pending",
        2,
        "FailedCreate",
        1,
    )
    d = flow.step(T0 + s(16), exited(1, 1))
    assert d.create == AttemptRequest(2, False, None)


# --- timeouts.startSeconds ----------------------------------------------------------------------------------


def test_a_session_that_does_not_start_in_time_ends_as_start_timeout_and_its_pod_is_deleted() -> None:
    flow = Flow(spec_of(timeouts={"startSeconds": 60}))
    assert flow.step(T0).create == AttemptRequest(1, False, None)
    d = flow.step(T0 + s(30), pulling(1, T0))
    assert (d.delete, d.wake_at, d.status.phase) == ((), T0 + s(60), "Pending")
    assert d.status.reason == "ImagePullBackOff"

    d = flow.step(T0 + s(60), pulling(1, T0))
    st = d.status
    assert d.delete == ("job-1",)
    assert (st.phase, st.failure_class, st.failures, st.infrastructure_failures) == (
        "Backoff",
        "Infrastructure",
        0,
        1,
    )
    record = st.attempts[-1]
    assert record.outcome == "StartTimeout"
    assert record.message == (
        "the session in pod job-1 did not start within 60 s (timeouts.startSeconds): "
        'ImagePullBackOff: Back-off pulling image "agent:1"'
    )
    assert [o.reason for o in d.outcomes] == ["StartTimeout"]
    # The next attempt, once the pod is gone and the backoff is over, resumes (an infrastructure failure).
    assert flow.step(T0 + s(70)).create == AttemptRequest(2, True, None)


def test_an_unschedulable_pod_times_out_with_the_schedulers_message() -> None:
    flow = Flow(spec_of(timeouts={"startSeconds": 5}))
    flow.step(T0)
    d = flow.step(T0 + s(5), unschedulable(1, T0))
    assert d.delete == ("job-1",)
    assert d.status.attempts[-1].message == (
        "the session in pod job-1 did not start within 5 s (timeouts.startSeconds): "
        "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."
    )


def test_a_session_that_started_in_time_is_not_held_to_start_seconds() -> None:
    flow = Flow(spec_of(timeouts={"startSeconds": 5}))
    flow.step(T0)
    pod = born(
        make_pod("job-1", 1, phase="Running", started=T0, supervisor=running(T0), session=running(T0 + s(4))),
        T0,
    )
    d = flow.step(T0 + s(100), pod)
    assert (d.delete, d.status.phase, d.status.attempts) == ((), "Running", [])


def test_the_default_start_timeout_is_600_seconds() -> None:
    flow = Flow(spec_of())
    flow.step(T0)
    assert flow.step(T0 + s(599), pulling(1, T0)).delete == ()
    assert flow.step(T0 + s(600), pulling(1, T0)).delete == ("job-1",)


# --- retry.maxInfrastructureFailures ------------------------------------------------------------------------


def lose_attempt(flow: Flow, n: int, at: datetime) -> Decision:
    """Attempt `n` runs and its pod vanishes (PodDeleted); returns the decision that saw it gone."""
    d = flow.step(at)
    assert d.create is not None and d.create.attempt == n, d.status
    active = make_pod(f"job-{n}", n, phase="Running", started=at, supervisor=running(at), session=running(at))
    flow.step(at + s(1), active)
    return flow.step(at + s(2))


def test_infrastructure_failures_past_the_limit_fail_the_dispatch() -> None:
    flow = Flow(spec_of(retry={"maxInfrastructureFailures": 2, "maxAttempts": 1, "backoff": NO_JITTER}))
    at = T0
    for n in (1, 2):
        d = lose_attempt(flow, n, at)
        assert (d.status.phase, d.status.infrastructure_failures) == ("Backoff", n)
        at = d.status.requeue_at or at
    d = lose_attempt(flow, 3, at)
    st = d.status
    assert (st.phase, st.reason, st.infrastructure_failures, st.failures) == (
        "Failed",
        "InfrastructureLimitExceeded",
        3,
        0,
    )
    assert st.message is not None and st.message.startswith(
        "3 infrastructure failures (retry.maxInfrastructureFailures: 2); attempt 3 ended: PodDeleted"
    )
    assert d.events[-1] == Event("Warning", "InfrastructureLimitExceeded", st.message)
    assert condition(st, "Stalled") == ("True", "InfrastructureLimitExceeded", st.message)


def test_max_infrastructure_failures_0_fails_on_the_first_and_an_ignore_rule_counts() -> None:
    ignore_2 = {"rules": [{"action": "Ignore", "onExitCodes": {"operator": "In", "values": [2]}}]}
    flow = Flow(spec_of(retry={"maxInfrastructureFailures": 0, "backoff": NO_JITTER}, failurePolicy=ignore_2))
    flow.step(T0)
    d = flow.step(T0 + s(5), exited(1, 2))
    assert (d.status.phase, d.status.reason, d.status.infrastructure_failures) == (
        "Failed",
        "InfrastructureLimitExceeded",
        1,
    )


def test_logic_failures_and_quota_stops_do_not_count_as_infrastructure_failures() -> None:
    flow = Flow(spec_of(retry={"maxInfrastructureFailures": 0, "backoff": NO_JITTER}))
    flow.step(T0)
    d = flow.step(T0 + s(5), exited(1, 1))
    assert (d.status.phase, d.status.failures, d.status.infrastructure_failures) == ("Backoff", 1, 0)


def test_max_infrastructure_failures_lowered_while_backing_off_fails_when_the_wait_ends() -> None:
    flow = Flow(spec_of(retry={"maxInfrastructureFailures": 5, "backoff": NO_JITTER}))
    d = lose_attempt(flow, 1, T0)
    assert d.status.phase == "Backoff" and d.status.requeue_at is not None
    until = d.status.requeue_at
    retry = flow.spec.retry.model_copy(update={"max_infrastructure_failures": 0})
    flow.spec = flow.spec.model_copy(update={"retry": retry})
    assert flow.step(until - s(1)).status.phase == "Backoff"
    d = flow.step(until)
    assert (d.create, d.status.phase, d.status.reason) == (None, "Failed", "InfrastructureLimitExceeded")


def test_the_new_fields_default() -> None:
    spec = spec_of()
    assert (spec.timeouts.start_seconds, spec.retry.max_infrastructure_failures) == (600, 10)
    assert FleetDispatchStatus().infrastructure_failures == 0
