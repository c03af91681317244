"""Clean-up and retry in place, as `lifecycle.reconcile` decides them: `spec.ttlSecondsAfterFinished`
deletes a finished dispatch, the pods of earlier attempts go once their ends are recorded, and a new
`fleet.dispatch.dev/retry` value starts a Failed dispatch's new line of attempts, once per value.

Pods go through the real `podstatus.observe`; the status is carried from decision to decision as the
reconciler stores it, so a "restart" is a decision made again on the stored status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetdispatch.api import names
from fleetdispatch.api.models import AttemptRecord, FleetDispatchSpec, FleetDispatchStatus
from fleetdispatch.core import lifecycle
from fleetdispatch.core.lifecycle import Decision, Dispatch, reconcile, retry_mark
from fleetdispatch.core.podspec import AttemptRequest
from fleetdispatch.core.podstatus import observe
from pods import T0, exited, make_pod, running

NO_JITTER = {"baseSeconds": 10, "maxSeconds": 600, "jitterPercent": 0}


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def spec_of(**parts: Any) -> FleetDispatchSpec:
    raw: dict[str, Any] = {"template": {"spec": {"containers": [{"name": "session", "image": "agent:1"}]}}}
    raw.update(parts)
    return FleetDispatchSpec.model_validate(raw)


def once(**parts: Any) -> FleetDispatchSpec:
    """A dispatch that fails at its first logic failure."""
    return spec_of(retry={"maxAttempts": 1, "backoff": NO_JITTER}, **parts)


def active(n: int, at: datetime) -> dict[str, Any]:
    return make_pod(
        f"job-{n}", n, phase="Running", started=at, supervisor=running(at), session=running(at + s(2))
    )


@dataclass
class Flow:
    spec: FleetDispatchSpec | None
    status: FleetDispatchStatus = field(default_factory=FleetDispatchStatus)
    retry: str | None = None
    invalid: str | None = None

    def decide(self, now: datetime, *pods: dict[str, Any]) -> Decision:
        """A decision on the stored status, not stored (what a restarted operator would decide)."""
        dispatch = Dispatch(
            "job", "default", "uid-1", 1, self.spec, self.status, self.invalid, retry_request=self.retry
        )
        return reconcile(dispatch, [observe(p) for p in pods], now)

    def step(self, now: datetime, *pods: dict[str, Any]) -> Decision:
        decision = self.decide(now, *pods)
        self.status = decision.status
        return decision


def failed_flow(spec: FleetDispatchSpec) -> Flow:
    """Attempt 1 ran and failed at T0 + 100 s: the dispatch is Failed (maxAttempts 1)."""
    at = T0 + s(100)
    flow = Flow(spec)
    assert flow.step(T0).create == AttemptRequest(1, False, None)
    flow.step(T0 + s(5), active(1, T0))
    d = flow.step(at, exited(1, 1))
    assert (d.status.phase, d.status.completion_time) == ("Failed", at)
    return flow


def reasons(decision: Decision) -> list[str]:
    return [event.reason for event in decision.events]


# --- ttlSecondsAfterFinished -------------------------------------------------------------------------------


def test_a_finished_dispatch_is_deleted_its_ttl_after_it_finished() -> None:
    flow = Flow(spec_of(ttlSecondsAfterFinished=30))
    flow.step(T0)
    flow.step(T0 + s(5), active(1, T0))
    d = flow.step(T0 + s(50), exited(1, 0))
    assert d.status.phase == "Succeeded"
    # The end is written first (its status and Event); the deletion waits for a decision on it.
    assert (d.delete_dispatch, d.wake_at) == (False, T0 + s(80))
    d = flow.step(T0 + s(79), exited(1, 0))
    assert (d.delete_dispatch, d.wake_at) == (False, T0 + s(80))
    d = flow.step(T0 + s(80), exited(1, 0))
    assert (d.delete_dispatch, d.delete, d.events) == (True, (), ())
    # Restart-safe: made again on the stored status, at any later time, the decision is the same.
    assert flow.decide(T0 + s(5000), exited(1, 0)).delete_dispatch


def test_a_failed_dispatch_goes_too_and_ttl_zero_deletes_right_after_the_end_is_stored() -> None:
    flow = failed_flow(once(ttlSecondsAfterFinished=0))
    assert flow.status.phase == "Failed"
    d = flow.step(T0 + s(100), exited(1, 1))
    assert d.delete_dispatch


def test_the_finishing_decision_itself_wakes_at_once_with_ttl_zero() -> None:
    flow = Flow(once(ttlSecondsAfterFinished=0))
    flow.step(T0)
    flow.step(T0 + s(5), active(1, T0))
    d = flow.step(T0 + s(100), exited(1, 1))
    assert (d.status.phase, d.delete_dispatch, d.wake_at) == ("Failed", False, T0 + s(100))


def test_without_a_ttl_or_with_an_invalid_spec_a_finished_dispatch_is_kept() -> None:
    flow = failed_flow(once())
    d = flow.step(T0 + s(10**7), exited(1, 1))
    assert (d.delete_dispatch, d.wake_at) == (False, None)
    invalid = Flow(None, invalid="spec.x: bad")
    invalid.step(T0)
    assert invalid.status.phase == "Failed"
    assert invalid.step(T0 + s(10**7)).delete_dispatch is False


def test_a_status_without_completion_time_counts_from_the_end_condition() -> None:
    flow = failed_flow(once(ttlSecondsAfterFinished=60))
    flow.status.completion_time = None
    assert lifecycle.finished_at(flow.status) == T0 + s(100)  # Stalled's lastTransitionTime
    assert lifecycle.expires_at(flow.spec, flow.status) == T0 + s(160)
    assert flow.decide(T0 + s(160), exited(1, 1)).delete_dispatch


def test_a_running_dispatch_has_no_expiry() -> None:
    flow = Flow(spec_of(ttlSecondsAfterFinished=0))
    flow.step(T0)
    d = flow.step(T0 + s(5), active(1, T0))
    assert d.status.phase == "Running"
    assert not d.delete_dispatch
    assert lifecycle.expires_at(flow.spec, flow.status) is None


# --- the pods of earlier attempts ------------------------------------------------------------------------


def test_an_earlier_attempts_pod_goes_once_the_next_attempt_runs_and_the_last_stays() -> None:
    flow = Flow(spec_of(retry={"maxAttempts": 3, "backoff": NO_JITTER}))
    flow.step(T0)
    flow.step(T0 + s(5), active(1, T0))
    d = flow.step(T0 + s(50), exited(1, 1))
    # Attempt 1 is the last one while the dispatch backs off: its pod stays.
    assert (d.status.phase, d.delete) == ("Backoff", ())
    d = flow.step(T0 + s(60), exited(1, 1))
    assert d.create == AttemptRequest(2, False, None)
    # Attempt 2 is starting: the clean-up waits (many attempts starting at once wait for no delete).
    assert d.delete == ()
    assert flow.step(T0 + s(61), exited(1, 1), make_pod("job-2", 2, phase="Pending")).delete == ()
    d = flow.step(T0 + s(62), exited(1, 1), active(2, T0 + s(61)))
    assert (d.status.phase, d.delete) == ("Running", ("job-1",))
    d = flow.step(T0 + s(70), exited(2, 0, at=T0 + s(61)))
    assert (d.status.phase, d.delete) == ("Succeeded", ())


def test_an_earlier_attempts_pod_goes_when_the_next_attempt_ends_before_it_ran() -> None:
    flow = Flow(spec_of(retry={"maxAttempts": 3, "backoff": NO_JITTER}))
    flow.step(T0)
    flow.step(T0 + s(5), active(1, T0))
    flow.step(T0 + s(50), exited(1, 1))
    assert flow.step(T0 + s(60), exited(1, 1)).create == AttemptRequest(2, False, None)
    d = flow.step(T0 + s(70), exited(1, 1), exited(2, 1, at=T0 + s(61)))
    assert (d.status.phase, d.delete) == ("Backoff", ("job-1",))


def test_a_pod_whose_end_is_not_recorded_is_not_deleted() -> None:
    # Attempt 2 has a pod but no record (its end was never decided); attempt 3 is current.
    status = FleetDispatchStatus(
        phase="Running",
        attempt=3,
        pod_name="job-3",
        attempts=[AttemptRecord(attempt=1, pod_name="job-1", outcome="Failed", end_time=T0)],
    )
    flow = Flow(spec_of(), status=status)
    d = flow.step(T0 + s(100), exited(1, 1), exited(2, 1), active(3, T0 + s(50)))
    assert d.delete == ("job-1",)


def test_an_attempt_older_than_the_bounded_history_counts_as_recorded() -> None:
    records = [AttemptRecord(attempt=n, pod_name=f"job-{n}", outcome="Failed") for n in range(3, 13)]
    status = FleetDispatchStatus(phase="Running", attempt=13, pod_name="job-13", attempts=records)
    d = Flow(spec_of(), status=status).step(T0 + s(100), exited(1, 1), exited(12, 1), active(13, T0))
    assert d.delete == ("job-1", "job-12")


def test_a_suspended_attempts_pod_is_not_taken_for_an_earlier_one() -> None:
    flow = Flow(spec_of())
    flow.step(T0)
    flow.step(T0 + s(5), active(1, T0))
    flow.spec = spec_of(suspend=True)
    d = flow.step(T0 + s(10), active(1, T0))
    assert d.delete == ("job-1",)  # suspension deletes it (its supervisor reports the token on TERM)
    assert flow.status.attempts[-1].outcome == "Suspended"
    # Recorded Suspended, still attempt 1: no clean-up decision about it while its report may come.
    stopping = make_pod("job-1", 1, phase="Running", deleting=T0 + s(10), supervisor=running(T0))
    assert flow.step(T0 + s(11), stopping).delete == ()


# --- retry in place --------------------------------------------------------------------------------------


def test_a_new_retry_value_on_a_failed_dispatch_starts_a_new_line_of_attempts() -> None:
    flow = failed_flow(once())
    before = flow.status.model_copy(deep=True)
    flow.retry = "2026-01-01T00:00:00.000001Z"
    d = flow.step(T0 + s(200), exited(1, 1))
    st_ = d.status
    assert reasons(d) == ["Retried"]
    assert d.events[0].type == "Normal"
    assert d.events[0].message == (
        f"retried ({names.RETRY_ANNOTATION}=2026-01-01T00:00:00.000001Z): a new line of attempts from "
        "attempt 2, its counters started over"
    )
    assert d.create == AttemptRequest(2, False, None)  # after a logic failure: afresh
    assert (st_.phase, st_.attempt, st_.pod_name, st_.failures, st_.completion_time) == (
        "Pending",
        2,
        "job-2",
        0,
        None,
    )
    assert st_.retry_handled == "2026-01-01T00:00:00.000001Z"
    assert st_.attempts == before.attempts  # the history stays
    assert st_.start_time == before.start_time
    # The same value again (the next decision, or a restarted operator's): no second retry.
    d = flow.step(T0 + s(201), exited(1, 1), active(2, T0 + s(200)))
    assert (d.status.phase, reasons(d), d.create) == ("Running", ["Started"], None)
    assert d.delete == ("job-1",)  # the previous line's last pod is an earlier attempt's now
    d = flow.step(T0 + s(300), exited(2, 1, at=T0 + s(200)))
    assert (d.status.phase, d.status.failures, [a.attempt for a in d.status.attempts]) == (
        "Failed",
        1,
        [1, 2],
    )
    d = flow.step(T0 + s(400), exited(2, 1, at=T0 + s(200)))
    assert (d.status.phase, reasons(d)) == ("Failed", [])
    flow.retry = "again"
    assert flow.step(T0 + s(500), exited(2, 1)).create == AttemptRequest(3, False, None)


def test_a_retry_starts_every_exhausted_counter_over_and_resumes_as_after_its_last_end() -> None:
    status = FleetDispatchStatus(
        phase="Failed",
        reason="ResumeLimitExceeded",
        attempt=4,
        failures=2,
        resumes=3,
        requeues=5,
        infrastructure_failures=1,
        resume_token="tok",
        completion_time=T0,
        attempts=[
            AttemptRecord(attempt=4, pod_name="job-4", outcome="DeadlineExceeded", failure_class="Timeout")
        ],
    )
    flow = Flow(spec_of(), status=status, retry="1")
    d = flow.step(T0 + s(10))
    st_ = d.status
    assert (st_.failures, st_.resumes, st_.requeues, st_.infrastructure_failures) == (0, 0, 0, 0)
    # The work of the timed-out line goes on: the new attempt resumes with its token.
    assert d.create == AttemptRequest(5, True, "tok")


def test_a_retry_value_on_a_dispatch_that_is_not_failed_is_recorded_and_ignored() -> None:
    flow = Flow(once())
    flow.step(T0)
    flow.step(T0 + s(5), active(1, T0))
    flow.retry = "early"
    d = flow.step(T0 + s(6), active(1, T0))
    assert d.status.retry_handled == "early"
    assert [(e.type, e.reason, e.message) for e in d.events] == [
        (
            "Warning",
            "RetryIgnored",
            f"{names.RETRY_ANNOTATION}=early ignored: it is Running, not Failed; only a Failed dispatch is "
            "retried",
        )
    ]
    # The attempt then fails: the value asked for nothing then, so it does not retry now.
    d = flow.step(T0 + s(100), exited(1, 1))
    assert (d.status.phase, reasons(d)) == ("Failed", ["BackoffLimitExceeded"])
    assert flow.step(T0 + s(101), exited(1, 1)).create is None


def test_a_dispatch_created_with_the_annotation_records_it_silently() -> None:
    flow = Flow(once(), retry="from-git")
    d = flow.step(T0)
    assert (d.status.retry_handled, reasons(d)) == ("from-git", [])


def test_an_invalid_failed_dispatch_is_not_retried() -> None:
    flow = Flow(None, invalid="spec.x: bad")
    flow.step(T0)
    flow.retry = "1"
    d = flow.step(T0 + s(1))
    assert (d.status.phase, d.create, reasons(d)) == ("Failed", None, ["RetryIgnored"])
    assert "its spec is invalid" in d.events[0].message


def test_a_retry_comes_before_the_ttl() -> None:
    flow = failed_flow(once(ttlSecondsAfterFinished=0))
    flow.retry = "1"
    d = flow.step(T0 + s(1000), exited(1, 1))
    assert (d.delete_dispatch, d.status.phase, d.create) == (False, "Pending", AttemptRequest(2, False, None))


def test_a_long_value_is_recorded_as_its_digest() -> None:
    long = "x" * 5000
    assert retry_mark(long).startswith("sha256:") and len(retry_mark(long)) == 71
    assert retry_mark(long) != retry_mark(long + "y")
    assert retry_mark("short") == "short"
    flow = failed_flow(once())
    flow.retry = long
    d = flow.step(T0 + s(200), exited(1, 1))
    assert d.status.retry_handled == retry_mark(long)
    assert reasons(flow.step(T0 + s(201), exited(1, 1))) == []


# One history: annotation values set at random moments, attempts failing, and decisions made again on the
# stored status (an operator restart, a duplicate event).
ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("annotate"), st.sampled_from(["a", "b", "c"])),
        st.tuples(st.just("end"), st.just("")),
        st.tuples(st.just("again"), st.just("")),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ACTIONS)
def test_each_new_value_on_a_failed_dispatch_retries_once_whatever_the_history(
    actions: list[tuple[str, str]],
) -> None:
    flow = Flow(once())
    pods: dict[str, dict[str, Any]] = {}
    now = T0
    handled: str | None = None
    retries = 0

    def decide() -> Decision:
        nonlocal now, handled, retries
        now += s(10)
        stored = flow.status.model_copy(deep=True)
        new_value = flow.retry is not None and flow.retry != stored.retry_handled
        d = flow.step(now, *pods.values())
        if stored.phase is not None and new_value:
            handled = flow.retry
        retried = reasons(d).count("Retried")
        # A retry happens exactly when a value not handled yet meets a stored Failed dispatch.
        assert retried == (1 if new_value and stored.phase == "Failed" else 0)
        retries += retried
        if retried:
            assert d.status.attempts == stored.attempts  # the history stays
            assert d.create is not None and d.create.attempt == stored.attempt + 1
        for name in d.delete:
            pods.pop(name, None)
        if d.create is not None:
            pods[f"job-{d.create.attempt}"] = active(d.create.attempt, now)
        # Made again on what was stored, the decision retries nothing more: restart-safe.
        assert "Retried" not in reasons(flow.decide(now, *pods.values()))
        return d

    decide()
    for action, value in actions:
        if action == "annotate":
            flow.retry = value
        elif action == "end" and flow.status.pod_name in pods:
            n = flow.status.attempt
            pods[f"job-{n}"] = exited(n, 1, at=now)
        decide()
        assert len([p for p in pods.values() if observe(p).live]) <= 1
    assert flow.status.failures <= 1
    assert flow.status.attempt == 1 + retries
    if handled is not None:
        assert flow.status.retry_handled == handled
