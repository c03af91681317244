"""`lifecycle.reconcile`: the state machine of a dispatch, driven by pods fed through `observe` and a clock.

The first part walks each path of design section 5 step by step; the last part is a simulated cluster
(hypothesis's stateful testing) that checks the invariants after every step of random histories.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fleetdispatch.api.models import AttemptRecord, FleetDispatchSpec, FleetDispatchStatus
from fleetdispatch.api.names import SUPERVISOR_CONTAINER
from fleetdispatch.core import backoff
from fleetdispatch.core.lifecycle import TERMINAL, Decision, Dispatch, Event, Limits, backstop_at, reconcile
from fleetdispatch.core.podspec import AttemptRequest, pod_name
from fleetdispatch.core.podstatus import observe
from pods import T0, exited, make_pod, outcome, running, supervisor_report, terminated, ts, waiting

UID = "uid-1"
NO_JITTER = {"baseSeconds": 10, "maxSeconds": 600, "jitterPercent": 0}
# Defaults: deadline 3600 s + extension 7200 s + kill grace 30 s, and the operator's margin of 60 s.
BACKSTOP = timedelta(seconds=3600 + 7200 + 30 + 60)


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def spec_of(**parts: Any) -> FleetDispatchSpec:
    raw: dict[str, Any] = {"template": {"spec": {"containers": [{"name": "session", "image": "agent:1"}]}}}
    raw.update(parts)
    return FleetDispatchSpec.model_validate(raw)


def retry(**fields: Any) -> dict[str, Any]:
    return {"backoff": NO_JITTER, **fields}


@dataclass
class Flow:
    """One dispatch whose status is carried from decision to decision, as the shell writes it."""

    spec: FleetDispatchSpec | None
    status: FleetDispatchStatus = field(default_factory=FleetDispatchStatus)
    generation: int = 1
    limits: Limits = field(default_factory=Limits)
    invalid: str | None = None
    gone_pod_report: tuple[str, str] | None = None

    def dispatch(self) -> Dispatch:
        return Dispatch(
            "job",
            "default",
            UID,
            self.generation,
            self.spec,
            self.status,
            self.invalid,
            gone_pod_report=self.gone_pod_report,
        )

    def step(self, now: datetime, *pods: dict[str, Any]) -> Decision:
        decision = reconcile(self.dispatch(), [observe(p) for p in pods], now, self.limits)
        assert decision.status.observed_generation == self.generation
        self.status = decision.status
        return decision

    def settled(self, now: datetime, *pods: dict[str, Any]) -> None:
        """Reconciling again changes nothing: no create, no delete, no events, the same status."""
        before = self.status.model_copy(deep=True)
        decision = self.step(now, *pods)
        assert (decision.create, decision.delete, decision.events, decision.outcomes) == (None, (), (), ())
        assert decision.status == before

    def update(self, **spec: Any) -> None:
        assert self.spec is not None
        self.spec = self.spec.model_copy(update=spec)
        self.generation += 1


def conds(status: FleetDispatchStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def transitions(status: FleetDispatchStatus) -> dict[str, datetime]:
    return {c.type: c.last_transition_time for c in status.conditions}


def true_conditions(status: FleetDispatchStatus) -> set[str]:
    return {c.type for c in status.conditions if c.status == "True"}


# --- pods of dispatch `job`, at each stage ------------------------------------------------------------------


def created(n: int) -> dict[str, Any]:
    return make_pod(f"job-{n}", n, phase="Pending")


def scheduled(
    n: int, at: datetime, reason: str = "ContainerCreating", message: str | None = None
) -> dict[str, Any]:
    return make_pod(
        f"job-{n}", n, phase="Pending", started=at, supervisor=running(at), session=waiting(reason, message)
    )


def active(n: int, at: datetime, **extra: Any) -> dict[str, Any]:
    """Supervisor started at `at`, session two seconds later."""
    return make_pod(
        f"job-{n}",
        n,
        phase="Running",
        started=at,
        supervisor=running(at),
        session=running(at + s(2)),
        **extra,
    )


def started_flow(spec: FleetDispatchSpec, now: datetime = T0, **flow: Any) -> Flow:
    """A flow whose first attempt's pod has just been created."""
    f = Flow(spec, **flow)
    assert f.step(now).create == AttemptRequest(1, False, None)
    return f


# --- the happy path -----------------------------------------------------------------------------------------


def test_happy_path_pending_running_succeeded() -> None:
    flow = Flow(spec_of())
    d = flow.step(T0)
    st_ = d.status
    assert d.create == AttemptRequest(attempt=1, resume=False, resume_token=None)
    assert (st_.phase, st_.attempt, st_.pod_name, st_.reason) == ("Pending", 1, "job-1", "Created")
    assert st_.observed_generation == 1
    assert d.events == ()  # the pod's creation is told by the attempt's Started Event, once it runs
    assert d.delete == ()
    assert d.wake_at is None
    assert conds(st_) == {
        "Ready": ("False", "Pending"),
        "Reconciling": ("True", "Pending"),
        "Stalled": ("False", "Pending"),
        "Requeued": ("False", "Pending"),
        "Suspended": ("False", "Pending"),
    }
    assert all(c.observed_generation == 1 and c.last_transition_time == T0 for c in st_.conditions)
    assert set(transitions(st_).values()) == {T0}

    # The pod appears in the cache, not yet scheduled; then its session waits for its image.
    flow.settled(T0 + s(1), created(1))
    t1 = T0 + s(5)
    d = flow.step(t1, scheduled(1, t1, "ContainerCreating"))
    assert (d.create, d.delete, d.events) == (None, (), ())
    # Routine waiting is not mirrored, and the budget is written with Running: writes saved per attempt.
    assert (d.status.phase, d.status.reason) == ("Pending", "Created")
    assert d.status.start_time is None and d.status.deadline is None
    assert d.wake_at == t1 + BACKSTOP
    flow.settled(t1 + s(1), scheduled(1, t1, "ContainerCreating"))

    # The session runs: mirrored from the pod, with the attempt's one Event before its end.
    t2 = t1 + s(10)
    d = flow.step(t2, active(1, t1))
    assert (d.status.phase, d.status.reason, d.status.message) == (
        "Running",
        "Running",
        "session running in pod job-1",
    )
    assert d.events == (Event("Normal", "Started", "attempt 1 running in pod job-1"),)
    assert d.status.start_time == t1 + s(2)  # the session's start, which the supervisor's budget covers
    assert d.status.deadline == t1 + s(2 + 3600)
    assert d.status.deadline_cap == t1 + s(2 + 3600 + 7200)
    assert d.wake_at == t1 + s(2) + BACKSTOP
    assert conds(d.status)["Reconciling"] == ("True", "Running")
    assert transitions(d.status)["Reconciling"] == T0
    flow.settled(t2 + s(100), active(1, t1))

    # The session completes; its supervisor is still stopping, so the pod is still live.
    t3 = t2 + s(600)
    report = {"deadline": ts(t1 + s(4000)), "lastActivityTime": ts(t3), "activityReason": "output"}
    stopping = exited(1, 0, outcome("Completed", message="done", **report), at=t1, end=t3, stopping=True)
    # Judged once the supervisor has stopped too, so that its final figures are known.
    assert flow.step(t3, stopping).status.phase == "Running"
    done = exited(1, 0, outcome("Completed", message="done", **report), at=t1, end=t3)
    d = flow.step(t3, done)
    st_ = d.status
    assert (st_.phase, st_.reason, st_.message) == ("Succeeded", "Completed", "attempt 1 completed")
    assert st_.completion_time == t3
    assert st_.failure_class is None
    assert st_.attempts == [
        AttemptRecord(
            attempt=1,
            pod_name="job-1",
            start_time=t1 + s(2),
            end_time=t3,
            outcome="Completed",
            exit_code=0,
            message="done",
        )
    ]
    assert (st_.deadline, st_.last_activity_time, st_.activity_reason) == (t1 + s(4000), t3, "output")
    assert d.events == (Event("Normal", "Succeeded", "attempt 1 completed"),)
    assert d.delete == ()  # the pod stops on its own; deleting it would lose its logs
    assert d.wake_at is None
    assert true_conditions(st_) == {"Ready"}
    assert conds(st_)["Ready"] == ("True", "Succeeded")
    assert transitions(st_)["Ready"] == t3
    assert transitions(st_)["Reconciling"] == t3
    [o] = d.outcomes
    assert o.succeeded

    # Succeeded is final: the pod that finishes stopping is left alone, and nothing changes any more.
    flow.settled(t3 + s(1), done)
    flow.settled(t3 + s(2), exited(1, 0, outcome("Completed"), at=t1, end=t3))
    flow.settled(t3 + s(3))


def test_a_pending_pod_reports_why_it_waits() -> None:
    flow = started_flow(spec_of())
    d = flow.step(T0 + s(30), scheduled(1, T0, "ImagePullBackOff", 'Back-off pulling image "agent:1"'))
    assert (d.status.phase, d.status.reason) == ("Pending", "ImagePullBackOff")
    assert d.status.message == 'pod job-1: ImagePullBackOff: Back-off pulling image "agent:1"'


# --- logic failures -----------------------------------------------------------------------------------------


def test_logic_failures_back_off_then_fail_at_max_attempts() -> None:
    flow = started_flow(spec_of(retry=retry(maxAttempts=3)))
    tail = "Traceback (most recent call last):\nValueError: no\n"

    d = flow.step(T0 + s(100), exited(1, 1, tail))
    st_ = d.status
    assert (st_.phase, st_.failures, st_.failure_class, st_.reason) == ("Backoff", 1, "Logic", "BackOff")
    assert st_.requeue_at == T0 + s(110)
    assert d.wake_at == T0 + s(110)
    assert d.events == (
        Event("Warning", "BackOff", f"attempt 1 ended: Failed: {tail}; next attempt in 10 s"),
    )
    assert st_.attempts[-1] == AttemptRecord(
        attempt=1,
        pod_name="job-1",
        start_time=T0 + s(2),
        end_time=T0 + s(100),
        outcome="Failed",
        exit_code=1,
        failure_class="Logic",
        message=tail,
    )
    assert conds(st_)["Reconciling"] == ("True", "Backoff")
    assert true_conditions(st_) == {"Reconciling"}
    flow.settled(T0 + s(109), exited(1, 1, tail))

    # The backoff is over: a fresh attempt, not a resumed one.
    d = flow.step(T0 + s(110), exited(1, 1, tail))
    assert d.create == AttemptRequest(2, False, None)
    assert (d.status.phase, d.status.attempt, d.status.pod_name, d.status.requeue_at) == (
        "Pending",
        2,
        "job-2",
        None,
    )

    d = flow.step(T0 + s(200), exited(1, 1), exited(2, 1, at=T0 + s(111)))
    assert (d.status.phase, d.status.failures, d.status.requeue_at) == ("Backoff", 2, T0 + s(220))
    d = flow.step(T0 + s(220), exited(1, 1), exited(2, 1))
    assert d.create == AttemptRequest(3, False, None)

    d = flow.step(
        T0 + s(300), exited(1, 1), exited(2, 1), exited(3, 2, outcome("Failed", message="bad input"))
    )
    st_ = d.status
    assert (st_.phase, st_.failures, st_.reason) == ("Failed", 3, "BackoffLimitExceeded")
    assert st_.message == "3 attempts failed (retry.maxAttempts: 3); attempt 3 ended: Failed: bad input"
    assert st_.completion_time == T0 + s(300)
    assert st_.requeue_at is None
    assert d.events == (Event("Warning", "BackoffLimitExceeded", st_.message),)
    assert d.wake_at is None
    assert true_conditions(st_) == {"Stalled"}
    assert conds(st_)["Stalled"] == ("True", "BackoffLimitExceeded")
    assert conds(st_)["Ready"] == ("False", "Failed")
    assert [a.attempt for a in st_.attempts] == [1, 2, 3]
    # The earlier attempts' pods go once their ends are recorded; the last one stays for its logs.
    assert d.delete == ("job-1", "job-2")
    flow.settled(T0 + s(5000), exited(3, 2))


def test_the_backoff_uses_the_deterministic_jitter_of_the_dispatch_and_attempt() -> None:
    spec = spec_of(retry={"backoff": {"baseSeconds": 30, "maxSeconds": 600, "jitterPercent": 50}})
    flow = started_flow(spec)
    d = flow.step(T0 + s(60), exited(1, 9))
    expected = backoff.delay(spec.retry.backoff, 1, f"{UID}/1")
    assert 30 <= expected <= 45
    assert d.status.requeue_at == T0 + s(60 + expected)


def test_max_attempts_1_fails_on_the_first_logic_failure() -> None:
    flow = started_flow(spec_of(retry=retry(maxAttempts=1)))
    d = flow.step(T0 + s(10), exited(1, 1))
    assert (d.status.phase, d.status.reason) == ("Failed", "BackoffLimitExceeded")


def test_max_attempts_lowered_while_backing_off_fails_when_the_wait_ends() -> None:
    flow = started_flow(spec_of(retry=retry(maxAttempts=5)))
    flow.step(T0 + s(10), exited(1, 1))
    flow.step(T0 + s(20), exited(1, 1))
    d = flow.step(T0 + s(30), exited(1, 1), exited(2, 1))
    assert (d.status.phase, d.status.failures) == ("Backoff", 2)
    flow.update(retry=flow.spec.retry.model_copy(update={"max_attempts": 2}))  # type: ignore[union-attr]
    d = flow.step(T0 + s(35), exited(1, 1), exited(2, 1))
    assert d.status.phase == "Backoff"
    assert d.status.observed_generation == 2
    d = flow.step(T0 + s(100), exited(1, 1), exited(2, 1))
    assert d.create is None
    assert (d.status.phase, d.status.reason) == ("Failed", "BackoffLimitExceeded")


def test_a_fail_rule_ends_the_dispatch_at_once() -> None:
    spec = spec_of(
        failurePolicy={"rules": [{"action": "Fail", "onExitCodes": {"operator": "In", "values": [2]}}]}
    )
    flow = started_flow(spec)
    d = flow.step(T0 + s(10), exited(1, 2, outcome("InvalidRecipe", message="no such recipe")))
    assert (d.status.phase, d.status.reason, d.status.failure_class, d.status.failures) == (
        "Failed",
        "InvalidRecipe",
        "Logic",
        0,
    )
    assert d.status.message == "attempt 1 ended: InvalidRecipe: no such recipe"
    assert conds(d.status)["Stalled"] == ("True", "InvalidRecipe")
    assert d.events == (Event("Warning", "InvalidRecipe", d.status.message),)


# --- timeouts -----------------------------------------------------------------------------------------------


def stop(reason: str, token: str | None = None) -> str:
    """The outcome the supervisor writes when it stops the session."""
    fields: dict[str, Any] = {"message": "the deadline passed; no activity seen"}
    if token is not None:
        fields["resumeToken"] = token
    return outcome(reason, **fields)


def test_timeouts_resume_up_to_max_resumes_with_the_resume_token() -> None:
    flow = started_flow(spec_of(retry=retry(maxResumes=2, maxAttempts=1)))
    p1 = exited(1, 143, stop("DeadlineExceeded", "tok-1"))
    d = flow.step(T0 + s(4000), p1)
    st_ = d.status
    assert d.create == AttemptRequest(2, True, "tok-1")
    assert (st_.phase, st_.attempt, st_.pod_name, st_.resumes, st_.failures) == ("Pending", 2, "job-2", 1, 0)
    assert (st_.failure_class, st_.resume_token, st_.reason) == ("Timeout", "tok-1", "Created")
    assert [e.reason for e in d.events] == ["Resuming"]
    assert d.events[0] == Event(
        "Normal",
        "Resuming",
        "attempt 1 ended: DeadlineExceeded: the deadline passed; no activity seen; resuming",
    )
    assert st_.message == "created pod job-2 for attempt 2 (resuming)"
    assert st_.attempts[-1].outcome == "DeadlineExceeded"
    assert st_.attempts[-1].failure_class == "Timeout"

    # The second stop reports no token: the one the dispatch has is passed on.
    p2 = exited(2, 137, stop("IdleTimeout"), at=T0 + s(4001))
    d = flow.step(T0 + s(6000), p1, p2)
    assert d.create == AttemptRequest(3, True, "tok-1")
    assert d.status.resumes == 2

    p3 = exited(3, 143, stop("DeadlineExceeded", "tok-3"), at=T0 + s(6001))
    d = flow.step(T0 + s(9000), p1, p2, p3)
    st_ = d.status
    assert d.create is None
    assert (st_.phase, st_.reason, st_.resumes) == ("Failed", "ResumeLimitExceeded", 2)
    assert st_.message == (
        "3 timeouts in a row (retry.maxResumes: 2); attempt 3 ended: DeadlineExceeded: "
        "the deadline passed; no activity seen"
    )
    assert conds(st_)["Stalled"] == ("True", "ResumeLimitExceeded")
    assert d.delete == ("job-1", "job-2")  # the earlier attempts' pods; the last one stays
    flow.settled(T0 + s(9001), p3)


def test_max_resumes_0_fails_on_the_first_timeout() -> None:
    flow = started_flow(spec_of(retry=retry(maxResumes=0)))
    d = flow.step(T0 + s(4000), exited(1, 143, stop("IdleTimeout")))
    assert (d.status.phase, d.status.reason) == ("Failed", "ResumeLimitExceeded")


def test_a_logic_failure_breaks_the_run_of_timeouts() -> None:
    flow = started_flow(spec_of(retry=retry(maxResumes=1)))
    p1 = exited(1, 143, stop("DeadlineExceeded"))
    assert flow.step(T0 + s(100), p1).status.resumes == 1
    p2 = exited(2, 1)
    d = flow.step(T0 + s(200), p1, p2)
    assert (d.status.phase, d.status.resumes, d.status.failures) == ("Backoff", 0, 1)
    d = flow.step(T0 + s(300), p1, p2)
    assert d.create == AttemptRequest(3, False, None)
    d = flow.step(T0 + s(400), p1, p2, exited(3, 143, stop("DeadlineExceeded")))
    assert (d.status.phase, d.status.resumes) == ("Pending", 1)


def test_a_resume_waits_for_the_stopping_pod_before_creating_the_next() -> None:
    flow = started_flow(spec_of())
    # Both containers have ended, but the kubelet has not set the pod's phase yet: it is still live.
    stopping = make_pod(
        "job-1",
        1,
        phase="Running",
        started=T0,
        supervisor=terminated(0, started=T0),
        session=terminated(143, message=stop("DeadlineExceeded", "t"), started=T0 + s(2)),
    )
    d = flow.step(T0 + s(4000), stopping)
    assert d.create is None
    assert d.delete == ()
    assert (d.status.phase, d.status.pod_name, d.status.resumes) == ("Pending", None, 1)
    assert [e.reason for e in d.events] == ["Resuming"]
    flow.settled(T0 + s(4001), stopping)
    d = flow.step(T0 + s(4002), exited(1, 143, stop("DeadlineExceeded", "t")))
    assert d.create == AttemptRequest(2, True, "t")


# --- quota --------------------------------------------------------------------------------------------------


def test_quota_requeues_until_the_reset_without_spending_max_attempts() -> None:
    spec = spec_of(
        retry={"maxAttempts": 1, "maxRequeues": 2, "backoff": {"baseSeconds": 60, "jitterPercent": 20}}
    )
    flow = started_flow(spec)
    reset = T0 + timedelta(hours=5)
    p1 = exited(1, 75, outcome("QuotaExhausted", resetAt=ts(reset), resumeToken="sess-1", message="5h limit"))
    d = flow.step(T0 + s(100), p1)
    st_ = d.status
    jitter = backoff.requeue_jitter(spec.retry.backoff, f"{UID}/1")
    assert 0 <= jitter <= 12
    until = reset + s(jitter)
    assert (st_.phase, st_.requeues, st_.failures, st_.failure_class) == ("Requeued", 1, 0, "Quota")
    assert (st_.requeue_at, st_.reason, st_.resume_token) == (until, "QuotaExhausted", "sess-1")
    assert st_.message == (
        f"attempt 1 ended: QuotaExhausted: 5h limit; the quota resets at {reset.isoformat()}; "
        f"next attempt at {until.isoformat()}"
    )
    assert d.events == (Event("Normal", "Requeued", st_.message),)
    assert d.wake_at == until
    assert conds(st_)["Requeued"] == ("True", "QuotaExhausted")
    assert true_conditions(st_) == {"Reconciling", "Requeued"}
    flow.settled(until - s(1), p1)

    d = flow.step(until, p1)
    assert d.create == AttemptRequest(2, True, "sess-1")
    assert conds(d.status)["Requeued"] == ("False", "Pending")

    # exit 75 alone: the reset time is unknown, so the requeue backs off.
    p2 = exited(2, 75, at=until)
    now = until + s(100)
    d = flow.step(now, p1, p2)
    assert (d.status.phase, d.status.requeues) == ("Requeued", 2)
    wait = backoff.delay(spec.retry.backoff, 2, f"{UID}/2")
    assert d.status.requeue_at == now + s(wait)
    assert "the quota reset time is unknown" in (d.status.message or "")
    d = flow.step(now + s(wait), p1, p2)
    assert d.create == AttemptRequest(3, True, "sess-1")

    d = flow.step(now + s(wait + 100), p1, p2, exited(3, 75, outcome("QuotaExhausted")))
    assert (d.status.phase, d.status.reason, d.status.requeues) == ("Failed", "RequeueLimitExceeded", 2)
    assert d.status.message is not None
    assert d.status.message.startswith("3 quota stops (retry.maxRequeues: 2)")


def test_a_reset_time_in_the_past_requeues_from_now() -> None:
    spec = spec_of(retry={"backoff": {"baseSeconds": 60, "jitterPercent": 50}})
    flow = started_flow(spec)
    now = T0 + s(500)
    d = flow.step(now, exited(1, 75, outcome("QuotaExhausted", resetAt=ts(T0))))
    assert d.status.requeue_at == now + s(backoff.requeue_jitter(spec.retry.backoff, f"{UID}/1"))


def test_a_past_reset_without_jitter_starts_the_next_attempt_at_once() -> None:
    flow = started_flow(spec_of(retry={"backoff": NO_JITTER}))
    d = flow.step(T0 + s(500), exited(1, 75, outcome("QuotaExhausted", resetAt=ts(T0), resumeToken="r")))
    assert d.create == AttemptRequest(2, True, "r")
    assert [e.reason for e in d.events] == ["Requeued"]


def test_max_requeues_0_fails_on_the_first_quota_stop() -> None:
    flow = started_flow(spec_of(retry=retry(maxRequeues=0)))
    d = flow.step(T0 + s(10), exited(1, 75))
    assert (d.status.phase, d.status.reason) == ("Failed", "RequeueLimitExceeded")


def test_the_resume_token_does_not_outlive_a_fresh_start() -> None:
    flow = started_flow(spec_of(retry=retry(maxAttempts=5)))
    p1 = exited(1, 75, outcome("QuotaExhausted", resetAt=ts(T0), resumeToken="old-session"))
    d = flow.step(T0 + s(100), p1)
    assert d.create == AttemptRequest(2, True, "old-session")
    p2 = exited(2, 1)
    flow.step(T0 + s(200), p1, p2)
    d = flow.step(T0 + s(300), p1, p2)
    assert d.create == AttemptRequest(3, False, None)
    assert d.status.resume_token is None
    # The fresh session times out without reporting a token: its successor must not get the old session's.
    d = flow.step(T0 + s(400), p1, p2, exited(3, 143, stop("DeadlineExceeded")))
    assert d.create == AttemptRequest(4, True, None)


# --- infrastructure -----------------------------------------------------------------------------------------


def test_infrastructure_failures_retry_without_spending_max_attempts() -> None:
    flow = started_flow(spec_of(retry=retry(maxAttempts=1)))
    flow.step(T0 + s(10), active(1, T0))

    # The pod vanished while its session ran.
    d = flow.step(T0 + s(50))
    st_ = d.status
    assert (st_.phase, st_.failures, st_.failure_class, st_.requeue_at) == (
        "Backoff",
        0,
        "Infrastructure",
        T0 + s(60),
    )
    assert st_.attempts[-1].outcome == "PodDeleted"
    assert (
        st_.attempts[-1].message == "pod job-1 disappeared before its session finished (deleted by someone?)"
    )
    assert st_.attempts[-1].start_time is None
    d = flow.step(T0 + s(60))
    assert d.create == AttemptRequest(2, True, None)

    # A kubelet eviction; infrastructure failures in a row back off longer.
    evicted = make_pod(
        "job-2",
        2,
        phase="Failed",
        started=T0 + s(61),
        evicted="The node was low on resource: memory.",
        supervisor=terminated(0),
        session=terminated(137),
    )
    d = flow.step(T0 + s(100), evicted)
    assert (d.status.phase, d.status.failures, d.status.requeue_at) == ("Backoff", 0, T0 + s(120))
    assert d.status.attempts[-1].outcome == "Evicted"
    assert d.status.attempts[-1].message == "The node was low on resource: memory."
    d = flow.step(T0 + s(120), evicted)
    assert d.create == AttemptRequest(3, True, None)
    assert d.delete == ()  # the earlier attempt's pod goes once attempt 3 runs
    d = flow.step(T0 + s(121), evicted, active(3, T0 + s(121)))
    assert d.delete == ("job-2",)  # its end recorded

    # Deleted by someone: the pod is still stopping, and the operator does not delete it again.
    deleting = active(3, T0 + s(121), deleting=T0 + s(200))
    d = flow.step(T0 + s(200), deleting)
    assert (d.status.phase, d.status.requeue_at, d.delete) == ("Backoff", T0 + s(240), ())
    assert d.status.attempts[-1].outcome == "PodDeleted"
    assert [a.failure_class for a in d.status.attempts] == ["Infrastructure"] * 3
    flow.settled(T0 + s(240), deleting)  # waits for the deleted pod to go
    d = flow.step(T0 + s(241))
    assert d.create == AttemptRequest(4, True, None)

    d = flow.step(T0 + s(300), exited(4, 0))
    assert d.status.phase == "Succeeded"
    assert d.status.failures == 0


def test_an_infrastructure_failure_after_a_logic_one_starts_its_own_backoff_run() -> None:
    flow = started_flow(spec_of(retry=retry(maxAttempts=5)))
    p1 = exited(1, 1)
    flow.step(T0 + s(10), p1)
    flow.step(T0 + s(20), p1)
    d = flow.step(T0 + s(30), p1, make_pod("job-2", 2, phase="Failed", evicted="gone"))
    assert d.status.requeue_at == T0 + s(40)


def test_a_pod_that_is_missing_right_after_its_creation_is_asked_for_again_not_taken_for_deleted() -> None:
    # The pod cache lags behind the status write that follows a create.
    flow = started_flow(spec_of())
    before = flow.status.model_copy(deep=True)
    d = flow.step(T0 + s(1))
    assert d.create == AttemptRequest(1, False, None)
    assert (d.delete, d.events, d.outcomes) == ((), (), ())
    assert d.status == before
    # Seen and then gone before it started (deleted while pending): still nothing was lost.
    flow.step(T0 + s(2), created(1))
    assert flow.step(T0 + s(3)).create == AttemptRequest(1, False, None)
    # Its supervisor started but not its session, then gone: asked for again, nothing of it ran.
    flow.step(T0 + s(4), scheduled(1, T0 + s(4)))
    assert flow.step(T0 + s(4)).create == AttemptRequest(1, False, None)
    # Its session seen running, then gone: that is a deletion.
    flow.step(T0 + s(4), active(1, T0 + s(4)))
    d = flow.step(T0 + s(5))
    assert d.create is None
    assert d.status.attempts[-1].outcome == "PodDeleted"


def test_a_missing_pod_is_not_asked_for_while_another_still_stops() -> None:
    flow = started_flow(spec_of())
    stray = make_pod("job-0", 0, phase="Running", started=T0, supervisor=running(T0), session=terminated(1))
    d = flow.step(T0 + s(1), stray)
    assert (d.create, d.delete) == (None, ())


# --- the backstop -------------------------------------------------------------------------------------------


def test_the_backstop_deletes_a_pod_running_past_its_cap() -> None:
    flow = started_flow(spec_of(retry=retry()))
    pod = active(1, T0)
    limit = T0 + s(2) + BACKSTOP  # from the session's start
    assert limit == backstop_at(flow.spec, T0 + s(2), 60)  # type: ignore[arg-type]
    d = flow.step(limit - s(1), pod)
    assert (d.delete, d.wake_at, d.status.phase) == ((), limit, "Running")

    d = flow.step(limit, pod)
    st_ = d.status
    assert d.delete == ("job-1",)
    assert (st_.phase, st_.failure_class, st_.failures) == ("Backoff", "Infrastructure", 0)
    assert st_.attempts[-1].outcome == "SupervisorLost"
    assert st_.attempts[-1].message == (
        "pod job-1 was still running 90 s after its deadline cap: the supervisor did not stop the session, "
        "so the pod was deleted"
    )
    assert [e.reason for e in d.events] == ["BackOff"]
    [o] = d.outcomes
    assert o.reason == "SupervisorLost"

    # The pod goes away slowly: nothing more is decided about it.
    going = active(1, T0, deleting=limit)
    flow.settled(limit + s(5), going)
    d = flow.step(limit + s(10), going)
    assert d.create is None
    d = flow.step(limit + s(11))
    assert d.create == AttemptRequest(2, True, None)


def test_the_backstop_counts_from_the_first_start_when_the_supervisor_restarts() -> None:
    flow = started_flow(
        spec_of(timeouts={"deadlineSeconds": 100, "maxExtensionSeconds": 0, "killGraceSeconds": 5})
    )
    flow.limits = Limits(backstop_margin_seconds=0)
    crash_looping = make_pod(
        "job-1",
        1,
        phase="Running",
        started=T0,
        supervisor=running(T0 + s(100)),
        supervisor_restarts=4,
        session=running(T0 + s(1)),
    )
    d = flow.step(T0 + s(106), crash_looping)
    assert d.delete == ("job-1",)
    assert d.status.attempts[-1].outcome == "SupervisorLost"


def test_a_policy_can_fail_a_lost_supervisor() -> None:
    spec = spec_of(
        failurePolicy={"rules": [{"action": "Fail", "onOutcome": {"reasons": ["SupervisorLost"]}}]}
    )
    flow = started_flow(spec)
    d = flow.step(T0 + s(2) + BACKSTOP, active(1, T0))
    assert d.delete == ("job-1",)
    assert (d.status.phase, d.status.reason) == ("Failed", "SupervisorLost")


def test_no_backstop_before_the_pod_started() -> None:
    flow = started_flow(spec_of())
    d = flow.step(T0 + timedelta(days=3), created(1))
    assert (d.delete, d.wake_at, d.status.phase) == ((), None, "Pending")


# --- suspend ------------------------------------------------------------------------------------------------


def test_suspending_a_running_attempt_deletes_its_pod_and_resumes_it_later() -> None:
    flow = started_flow(spec_of())
    flow.step(T0 + s(10), active(1, T0))
    flow.update(suspend=True)
    d = flow.step(T0 + s(20), active(1, T0))
    st_ = d.status
    assert d.delete == ("job-1",)
    assert (st_.phase, st_.reason, st_.message, st_.observed_generation) == (
        "Suspended",
        "Suspended",
        "spec.suspend is true",
        2,
    )
    assert st_.attempts[-1] == AttemptRecord(
        attempt=1,
        pod_name="job-1",
        start_time=T0 + s(2),
        end_time=T0 + s(20),
        outcome="Suspended",
        message="suspended (spec.suspend); the next attempt resumes it",
    )
    assert st_.failures == st_.resumes == 0
    assert d.events == (
        Event("Normal", "Suspended", "spec.suspend is true: no attempt runs until it is false"),
    )
    assert true_conditions(st_) == {"Suspended"}
    assert all(c.observed_generation == 2 for c in st_.conditions)
    stopping = active(1, T0, deleting=T0 + s(20))
    flow.settled(T0 + s(25), stopping)
    flow.settled(T0 + s(3600))

    # Unsuspended while the pod still stops: wait for it, then resume.
    flow.update(suspend=False)
    d = flow.step(T0 + s(4000), stopping)
    assert (d.create, d.status.phase, d.status.pod_name) == (None, "Pending", None)
    assert d.events == (Event("Normal", "Resumed", "spec.suspend is false: attempts continue"),)
    assert d.status.observed_generation == 3
    flow.settled(T0 + s(4001), stopping)
    d = flow.step(T0 + s(4002))
    assert d.create == AttemptRequest(2, True, None)


def stopped_by_term(n: int, at: datetime, token: str | None) -> dict[str, Any]:
    """Attempt `n`'s pod after its deletion's TERM: both containers ended, the supervisor's report says
    the last resume token; the kubelet removes the pod right after."""
    return make_pod(
        f"job-{n}",
        n,
        phase="Failed",
        started=at,
        supervisor=terminated(0, started=at, message=supervisor_report(token)),
        session=terminated(143, started=at + s(2)),
        deleting=at + s(20),
    )


def test_a_suspended_attempt_passes_the_token_its_supervisor_reported_on_term_to_the_next() -> None:
    flow = started_flow(spec_of())
    flow.step(T0 + s(10), active(1, T0))
    flow.update(suspend=True)
    d = flow.step(T0 + s(20), active(1, T0))
    assert (d.delete, d.status.phase, d.status.resume_token) == (("job-1",), "Suspended", None)
    # The supervisor's TERM report arrives after the suspension was recorded.
    d = flow.step(T0 + s(25), stopped_by_term(1, T0, "tok-suspended"))
    assert (d.status.phase, d.status.resume_token, d.create, d.delete) == (
        "Suspended",
        "tok-suspended",
        None,
        (),
    )
    assert d.status.attempts[-1].outcome == "Suspended"
    flow.settled(T0 + s(26), stopped_by_term(1, T0, "tok-suspended"))
    flow.settled(T0 + s(3600))  # the pod is gone: the token stays
    flow.update(suspend=False)
    d = flow.step(T0 + s(4000))
    assert d.create == AttemptRequest(2, True, "tok-suspended")
    assert d.status.resume_token == "tok-suspended"


def test_a_suspended_pod_removed_before_a_reconcile_saw_its_report_still_passes_the_token() -> None:
    # The kubelet writes the final status and removes the pod at once: the operator has only the pod's
    # DELETED event, whose object holds the supervisor's report (the shell passes it as gone_pod_report).
    flow = started_flow(spec_of())
    flow.step(T0 + s(10), active(1, T0))
    flow.update(suspend=True)
    assert flow.step(T0 + s(20), active(1, T0)).status.phase == "Suspended"
    flow.gone_pod_report = ("job-2", supervisor_report("tok-other-pod"))
    assert flow.step(T0 + s(25)).status.resume_token is None  # another pod's report is not this attempt's
    flow.gone_pod_report = ("job-1", supervisor_report("tok-from-the-deleted-event"))
    d = flow.step(T0 + s(26))
    assert (d.status.phase, d.status.resume_token) == ("Suspended", "tok-from-the-deleted-event")
    flow.update(suspend=False)
    assert flow.step(T0 + s(30)).create == AttemptRequest(2, True, "tok-from-the-deleted-event")


def test_a_token_reported_after_unsuspending_still_reaches_the_next_attempt() -> None:
    flow = started_flow(spec_of())
    flow.step(T0 + s(10), active(1, T0))
    flow.status.resume_token = "tok-old"  # from an earlier stop of the same line of attempts
    flow.update(suspend=True)
    flow.step(T0 + s(20), active(1, T0))
    flow.update(suspend=False)
    stopping = active(1, T0, deleting=T0 + s(20))
    d = flow.step(T0 + s(21), stopping)
    assert (d.create, d.status.phase, d.status.resume_token) == (None, "Pending", "tok-old")
    d = flow.step(T0 + s(22), stopped_by_term(1, T0, "tok-new"))
    assert d.create == AttemptRequest(2, True, "tok-new")


def test_a_suspended_pod_gone_before_its_report_was_seen_keeps_the_last_token() -> None:
    flow = started_flow(spec_of())
    flow.step(T0 + s(10), active(1, T0))
    flow.status.resume_token = "tok-old"
    flow.update(suspend=True)
    flow.step(T0 + s(20), active(1, T0))
    flow.update(suspend=False)
    assert flow.step(T0 + s(30)).create == AttemptRequest(2, True, "tok-old")
    # A report of the suspended attempt's pod seen after the next attempt started changes nothing.
    d = flow.step(T0 + s(31), stopped_by_term(1, T0, "tok-late"), created(2))
    assert d.status.resume_token == "tok-old"


def test_a_report_without_a_token_keeps_the_last_one() -> None:
    flow = started_flow(spec_of())
    flow.step(T0 + s(10), active(1, T0))
    flow.status.resume_token = "tok-old"
    flow.update(suspend=True)
    flow.step(T0 + s(20), active(1, T0))
    d = flow.step(T0 + s(25), stopped_by_term(1, T0, None))
    assert d.status.resume_token == "tok-old"


def test_suspending_a_pending_attempt() -> None:
    flow = started_flow(spec_of())
    flow.update(suspend=True)
    pod = scheduled(1, T0)
    d = flow.step(T0 + s(5), pod)
    assert (d.delete, d.status.phase) == (("job-1",), "Suspended")
    assert d.status.attempts[-1].outcome == "Suspended"


def test_suspending_before_the_pod_is_in_the_cache_deletes_it_when_it_shows_up() -> None:
    flow = started_flow(spec_of())
    flow.update(suspend=True)
    d = flow.step(T0 + s(1))
    assert (d.create, d.delete, d.status.phase) == (None, (), "Suspended")
    d = flow.step(T0 + s(2), created(1))
    assert d.delete == ("job-1",)
    assert d.events == ()


def test_a_dispatch_created_suspended_starts_nothing_until_unsuspended() -> None:
    flow = Flow(spec_of(suspend=True))
    d = flow.step(T0)
    assert (d.create, d.status.phase, d.status.attempt) == (None, "Suspended", 0)
    assert d.status.attempts == []
    flow.settled(T0 + s(100))
    flow.update(suspend=False)
    d = flow.step(T0 + s(200))
    assert d.create == AttemptRequest(1, False, None)
    assert [e.reason for e in d.events] == ["Resumed"]


@pytest.mark.parametrize(
    ("code", "message", "phase"), [(1, None, "Backoff"), (75, outcome("QuotaExhausted"), "Requeued")]
)
def test_suspending_while_waiting_keeps_the_wait(code: int, message: str | None, phase: str) -> None:
    flow = started_flow(spec_of(retry=retry()))
    pod = exited(1, code, message)
    d = flow.step(T0 + s(10), pod)
    assert d.status.phase == phase
    until = d.status.requeue_at
    assert until is not None
    flow.update(suspend=True)
    d = flow.step(T0 + s(11), pod)
    assert (d.status.phase, d.status.requeue_at, d.delete, d.create) == ("Suspended", until, (), None)
    assert len(d.status.attempts) == 1
    flow.settled(until + s(1), pod)  # no attempt while suspended, even once the wait is over
    # Unsuspended before the wait is over: back to waiting; after it: the next attempt.
    flow.update(suspend=False)
    d = flow.step(until - s(1) if until - s(1) > T0 + s(11) else T0 + s(12), pod)
    if until - s(1) > T0 + s(11):
        assert (d.status.phase, d.create) == (phase, None)
        assert d.wake_at == until
        d = flow.step(until, pod)
    assert d.create == AttemptRequest(2, phase == "Requeued", None)


def test_suspending_when_the_attempt_ends_records_the_end_first() -> None:
    flow = started_flow(spec_of(retry=retry()))
    flow.update(suspend=True)
    d = flow.step(T0 + s(10), exited(1, 1))
    assert d.status.phase == "Suspended"
    assert d.status.failures == 1
    assert [a.outcome for a in d.status.attempts] == ["Failed"]
    assert [e.reason for e in d.events] == ["BackOff", "Suspended"]


@pytest.mark.parametrize("code", [0, 1])
def test_suspending_a_finished_dispatch_changes_nothing(code: int) -> None:
    flow = started_flow(spec_of(retry=retry(maxAttempts=1)))
    pod = exited(1, code)
    flow.step(T0 + s(10), pod)
    assert flow.status.phase in TERMINAL
    flow.update(suspend=True)
    before = flow.status.model_copy(deep=True)
    d = flow.step(T0 + s(20), pod)
    assert (d.create, d.delete, d.events) == (None, (), ())
    assert d.status.phase == before.phase
    assert d.status.observed_generation == 2


# --- invalid spec -------------------------------------------------------------------------------------------

INVALID = "spec.timeouts.idleOutputSeconds (5) must be 0 (disabled) or at least activity.pollSeconds (10)"


def test_an_invalid_spec_fails_at_once_without_a_pod() -> None:
    flow = Flow(None, invalid=INVALID)
    d = flow.step(T0)
    st_ = d.status
    assert d.create is None
    assert (st_.phase, st_.reason, st_.message, st_.failure_class) == ("Failed", "InvalidSpec", INVALID, None)
    assert st_.completion_time == T0
    assert d.events == (Event("Warning", "InvalidSpec", INVALID),)
    assert true_conditions(st_) == {"Stalled"}
    assert conds(st_)["Stalled"] == ("True", "InvalidSpec")
    assert st_.observed_generation == 1
    flow.settled(T0 + s(60))


def test_a_spec_found_invalid_later_stops_the_running_attempt() -> None:
    flow = started_flow(spec_of())
    flow.step(T0 + s(10), active(1, T0))
    flow.spec, flow.invalid, flow.generation = None, INVALID, 2
    d = flow.step(T0 + s(20), active(1, T0))
    assert d.delete == ("job-1",)
    assert (d.status.phase, d.status.reason, d.status.observed_generation) == ("Failed", "InvalidSpec", 2)
    flow.settled(T0 + s(21), active(1, T0, deleting=T0 + s(20)))


# --- adoption after a crash ---------------------------------------------------------------------------------


def test_a_pod_of_a_later_attempt_is_adopted_not_created_again() -> None:
    # Attempt 1 failed and backed off; the operator created job-2 and died before writing the status.
    flow = started_flow(spec_of(retry=retry()))
    p1 = exited(1, 1)
    flow.step(T0 + s(5), active(1, T0))
    flow.step(T0 + s(10), p1)
    assert flow.status.deadline is not None  # attempt 1's
    d = flow.step(T0 + s(30), p1, created(2))
    st_ = d.status
    assert (d.create, d.delete) == (None, ())  # not created again; job-1 goes once job-2 runs
    assert (st_.phase, st_.attempt, st_.pod_name, st_.requeue_at, st_.failures) == (
        "Pending",
        2,
        "job-2",
        None,
        1,
    )
    assert (st_.reason, st_.deadline, st_.deadline_cap) == ("Adopted", None, None)
    d = flow.step(T0 + s(40), p1, active(2, T0 + s(31)))
    assert (d.status.phase, d.status.deadline, d.delete) == ("Running", T0 + s(33 + 3600), ("job-1",))
    flow.settled(T0 + s(41), active(2, T0 + s(31)))


def test_adoption_keeps_the_end_of_the_attempt_the_lost_status_had_decided() -> None:
    # The decision that resumed attempt 1 (and created job-2) was never written: decide attempt 1's end again.
    flow = started_flow(spec_of(retry=retry(maxResumes=1)))
    flow.step(T0 + s(10), active(1, T0))
    p1 = exited(1, 143, stop("DeadlineExceeded", "tok"))
    d = flow.step(T0 + s(4000), p1, created(2))
    st_ = d.status
    assert d.create is None
    assert (st_.phase, st_.attempt, st_.pod_name, st_.resumes, st_.resume_token) == (
        "Pending",
        2,
        "job-2",
        1,
        "tok",
    )
    assert [(a.attempt, a.outcome) for a in st_.attempts] == [(1, "DeadlineExceeded")]
    # So the limit still holds: the next timeout is the last.
    d = flow.step(T0 + s(8000), p1, exited(2, 143, stop("DeadlineExceeded")))
    assert (d.status.phase, d.status.reason) == ("Failed", "ResumeLimitExceeded")


def test_adoption_deletes_the_old_pod_if_it_still_runs() -> None:
    flow = started_flow(spec_of())
    flow.step(T0 + s(10), active(1, T0))
    d = flow.step(T0 + s(20), active(1, T0), created(2))
    assert (d.status.attempt, d.delete) == (2, ("job-1",))


def test_a_pod_of_another_attempt_that_never_ran_is_deleted() -> None:
    flow = started_flow(spec_of())
    flow.step(T0 + s(1), created(1))
    d = flow.step(T0 + s(2), created(1), make_pod("job-0", 0, phase="Pending"))
    assert d.delete == ("job-0",)
    finished_elsewhere = make_pod("job-0", 0, phase="Running", supervisor=running(T0), session=terminated(0))
    d = flow.step(T0 + s(3), created(1), finished_elsewhere)
    assert d.delete == ()


def test_a_pod_without_an_attempt_label_is_never_adopted() -> None:
    flow = started_flow(spec_of())
    d = flow.step(T0 + s(2), created(1), make_pod("job-x", None, phase="Pending"))
    assert (d.status.attempt, d.delete) == (1, ("job-x",))


# --- idempotence and bounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pods",
    [
        [],
        [created(1)],
        [scheduled(1, T0)],
        [active(1, T0)],
        [exited(1, 0)],
        [exited(1, 0, stopping=True)],
        [exited(1, 1)],
        [exited(1, 75, outcome("QuotaExhausted", resetAt=ts(T0 + s(9000))))],
        [exited(1, 143, stop("DeadlineExceeded"), stopping=True)],
        [make_pod("job-1", 1, phase="Failed", evicted="x")],
        [active(1, T0, deleting=T0)],
    ],
)
def test_reconciling_the_decision_again_decides_nothing_new(pods: list[dict[str, Any]]) -> None:
    flow = started_flow(spec_of())
    flow.step(T0 + s(1), created(1))
    now = T0 + s(100)
    first = flow.step(now, *pods)
    decided = first.status.model_copy(deep=True)
    again = reconcile(flow.dispatch(), [observe(p) for p in pods], now, flow.limits)
    assert again.status == decided
    assert (again.events, again.outcomes) == ((), ())
    assert again.create in (None, first.create)  # a create repeated is the same pod (same name)
    assert set(again.delete) <= set(first.delete)


def test_the_attempts_history_is_bounded_newest_last() -> None:
    flow = started_flow(spec_of(retry=retry(maxAttempts=10)), limits=Limits(history_limit=3))
    now = T0
    for attempt in range(1, 6):
        pods = [exited(n, 1) for n in range(1, attempt + 1)]
        now += s(1000)
        d = flow.step(now, *pods)
        assert d.status.failures == attempt
        now += s(1000)
        d = flow.step(now, *pods)
        assert d.create == AttemptRequest(attempt + 1, False, None)
    assert [a.attempt for a in flow.status.attempts] == [3, 4, 5]


def test_reconcile_reads_the_status_without_changing_it() -> None:
    flow = started_flow(spec_of())
    before = flow.status.model_copy(deep=True)
    dispatch = flow.dispatch()
    reconcile(dispatch, [observe(exited(1, 1))], T0 + s(100))
    assert dispatch.status == before


def test_now_is_taken_to_the_second() -> None:
    flow = Flow(spec_of())
    d = flow.step(T0 + timedelta(microseconds=700_000))
    assert {c.last_transition_time for c in d.status.conditions} == {T0}


# --- a simulated cluster ------------------------------------------------------------------------------------

EXIT_CODES = [0, 0, 1, 2, 3, 75, 137, 143]
OUTCOMES = [
    None,
    "Completed",
    "Failed",
    "QuotaExhausted",
    "DeadlineExceeded",
    "IdleTimeout",
    "RateLimited",
    "tail",
]
RULES = [
    None,
    {"action": "Fail", "onExitCodes": {"operator": "In", "values": [2]}},
    {"action": "Requeue", "onOutcome": {"reasons": ["RateLimited"]}},
    {"action": "Resume", "onExitCodes": {"operator": "In", "values": [3]}},
    {"action": "Retry", "onOutcome": {"reasons": ["PodDeleted", "Evicted"]}},
    {"action": "Fail", "onOutcome": {"reasons": ["SupervisorLost"]}},
]


# The arguments of a pod's next stage: `image_pull` also makes an exit 137 an `OOMKilled`.
progress = rule(
    image_pull=st.booleans(),
    code=st.sampled_from(EXIT_CODES),
    kind=st.sampled_from(OUTCOMES),
    reset=st.sampled_from([None, -600, 0, 600, 20000]),
    token=st.sampled_from([None, "tok-a", "tok-b"]),
)


class Cluster(RuleBasedStateMachine):
    """One dispatch, its pods as mutable dicts, and a clock; the operator reconciles after every event.

    A deleted pod lingers live (being deleted) until the kubelet step removes it; an exited session's pod
    stays live until the kubelet step finishes it. A crash loses the status write of one decision (its
    create and deletes are carried out), and a stale cache hides the pod the last decision created.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.pods: dict[str, dict[str, Any]] = {}
        self.unseen: set[str] = set()
        self.crash_next = self.stale_next = False
        self.generation = 1
        self.status = FleetDispatchStatus()
        self.terminal: str | None = None
        self.spec = spec_of()
        self.limits = Limits()

    @initialize(
        attempts=st.integers(1, 4),
        resumes=st.integers(0, 3),
        requeues=st.integers(0, 3),
        base=st.integers(1, 60),
        jitter=st.integers(0, 50),
        deadline=st.integers(60, 3600),
        extension=st.integers(0, 3600),
        grace=st.integers(0, 30),
        rule=st.sampled_from(RULES),
        history=st.integers(1, 5),
        margin=st.integers(0, 120),
        suspend=st.sampled_from([False, False, False, True]),
    )
    def setup(
        self,
        *,
        attempts: int,
        resumes: int,
        requeues: int,
        base: int,
        jitter: int,
        deadline: int,
        extension: int,
        grace: int,
        rule: dict[str, Any] | None,
        history: int,
        margin: int,
        suspend: bool,
    ) -> None:
        self.spec = spec_of(
            timeouts={
                "deadlineSeconds": deadline,
                "maxExtensionSeconds": extension,
                "killGraceSeconds": grace,
                "idleOutputSeconds": 0,
            },
            retry={
                "maxAttempts": attempts,
                "maxResumes": resumes,
                "maxRequeues": requeues,
                "backoff": {"baseSeconds": base, "maxSeconds": base * 8, "jitterPercent": jitter},
            },
            failurePolicy={"rules": [rule] if rule else []},
            suspend=suspend,
        )
        self.limits = Limits(history_limit=history, backstop_margin_seconds=margin)
        self.reconcile()

    # --- the operator ---------------------------------------------------------------------------------------

    def reconcile(self) -> None:
        visible = [p for name, p in self.pods.items() if not (self.stale_next and name in self.unseen)]
        views = [observe(p) for p in visible]
        dispatch = Dispatch("job", "default", UID, self.generation, self.spec, self.status)
        decision = reconcile(dispatch, views, self.now, self.limits)
        st_ = decision.status
        assert st_.observed_generation == self.generation

        again = reconcile(dataclasses.replace(dispatch, status=st_), views, self.now, self.limits)
        assert again.status == st_
        assert (again.events, again.outcomes) == ((), ())
        assert again.create in (None, decision.create)
        assert set(again.delete) <= set(decision.delete)

        if decision.create is not None:
            assert not self.spec.suspend
            assert st_.phase == "Pending"
            assert not any(v.live for v in views)
            name = pod_name("job", decision.create.attempt)
            assert (st_.attempt, st_.pod_name) == (decision.create.attempt, name)
        if not self.stale_next:
            self.unseen.clear()
        if decision.create is not None and name not in self.pods:  # else: AlreadyExists
            self.pods[name] = make_pod(name, decision.create.attempt, phase="Pending")
            self.unseen.add(name)
        for name in decision.delete:
            if name in self.pods:
                self.mark_deleted(self.pods[name])
        if not self.crash_next:
            self.status = st_
        self.crash_next = self.stale_next = False

    # --- what happens to pods -------------------------------------------------------------------------------

    def newest(self) -> dict[str, Any] | None:
        live = [p for p in self.pods.values() if observe(p).live]
        return (
            max(live, key=lambda p: int(p["metadata"]["labels"]["fleet.dispatch.dev/attempt"]))
            if live
            else None
        )

    @staticmethod
    def session(pod: dict[str, Any]) -> dict[str, Any] | None:
        statuses = pod["status"].get("containerStatuses") or []
        return statuses[0] if statuses else None

    def mark_deleted(self, pod: dict[str, Any]) -> None:
        pod["metadata"].setdefault("deletionTimestamp", ts(self.now))

    @rule(seconds=st.sampled_from([1, 5, 30, 300, 3600, 20000]))
    def time_passes(self, seconds: int) -> None:
        self.now += s(seconds)
        self.reconcile()

    @rule()
    def kubelet(self) -> None:
        """Deleted pods go; pods whose session exited finish."""
        for name, pod in list(self.pods.items()):
            view = observe(pod)
            if view.deleting:
                del self.pods[name]
            elif view.live and view.session is not None:
                pod["status"]["phase"] = "Succeeded" if view.session.exit_code == 0 else "Failed"
                pod["status"]["initContainerStatuses"][0]["state"] = terminated(
                    0, started=view.pod_started_at
                )
        self.reconcile()

    def advance(
        self, image_pull: bool, code: int, kind: str | None, reset: int | None, token: str | None
    ) -> None:
        """The newest live pod moves one stage: scheduled, session started, session exited."""
        pod = self.newest()
        if pod is None or observe(pod).deleting:
            return
        status, session = pod["status"], self.session(pod)
        if session is None:
            status["startTime"] = ts(self.now)
            status["initContainerStatuses"] = [
                {"name": SUPERVISOR_CONTAINER, "restartCount": 0, "state": running(self.now)}
            ]
            reason = "ImagePullBackOff" if image_pull else "ContainerCreating"
            status["containerStatuses"] = [{"name": "session", "restartCount": 0, "state": waiting(reason)}]
        elif "waiting" in session["state"]:
            status["phase"] = "Running"
            session["state"] = running(self.now)
        elif "running" in session["state"]:
            fields: dict[str, Any] = {}
            if reset is not None:
                fields["resetAt"] = ts(self.now + s(reset))
            if token is not None:
                fields["resumeToken"] = token
            message = None if kind is None else ("log tail\n" if kind == "tail" else outcome(kind, **fields))
            session["state"] = terminated(
                code,
                reason="OOMKilled" if code == 137 and image_pull else None,
                message=message,
                started=observe(pod).session_started_at,
                finished=self.now,
            )

    @progress
    def pod_progresses(
        self, image_pull: bool, code: int, kind: str | None, reset: int | None, token: str | None
    ) -> None:
        self.advance(image_pull, code, kind, reset, token)
        self.reconcile()

    @progress
    def pod_progresses_twice(
        self, image_pull: bool, code: int, kind: str | None, reset: int | None, token: str | None
    ) -> None:
        self.advance(image_pull, code, kind, reset, token)
        self.reconcile()
        self.advance(image_pull, code, kind, reset, token)
        self.reconcile()

    @rule(
        how=st.sampled_from(["evicted", "evicted by the API", "deleted", "deleted at once"]),
        chance=st.integers(0, 2),
    )
    def pod_disrupted(self, how: str, chance: int) -> None:
        pod = self.newest()
        if chance == 0 and pod is not None and not observe(pod).deleting:
            if how == "evicted by the API":
                pod["status"]["conditions"].append(
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "EvictionByEvictionAPI",
                        "message": "drain",
                    }
                )
                self.mark_deleted(pod)
            elif how == "evicted":
                pod["status"].update(phase="Failed", reason="Evicted", message="The node was low on memory.")
                if (session := self.session(pod)) is not None and "terminated" not in session["state"]:
                    session["state"] = terminated(137, started=None)
            elif how == "deleted":
                self.mark_deleted(pod)
            else:
                del self.pods[pod["metadata"]["name"]]
        self.reconcile()

    @rule(chance=st.integers(0, 2))
    def suspend_toggled(self, chance: int) -> None:
        if chance == 0 or self.spec.suspend:
            self.spec = self.spec.model_copy(update={"suspend": not self.spec.suspend})
            self.generation += 1
        self.reconcile()

    @rule()
    def operator_crashes_before_writing_the_status(self) -> None:
        self.crash_next = True
        self.reconcile()

    @precondition(lambda self: bool(self.unseen))
    @rule()
    def cache_lags(self) -> None:
        self.stale_next = True
        self.reconcile()

    # --- what must always hold ------------------------------------------------------------------------------

    @invariant()
    def one_live_pod_at_most(self) -> None:
        assert sum(observe(p).live for p in self.pods.values()) <= 1

    @invariant()
    def a_terminal_phase_is_never_left(self) -> None:
        if self.terminal is not None:
            assert self.status.phase == self.terminal
        elif self.status.phase in TERMINAL:
            self.terminal = self.status.phase

    @invariant()
    def counters_stay_within_their_limits(self) -> None:
        st_, r = self.status, self.spec.retry
        assert st_.failures <= r.max_attempts
        assert st_.resumes <= r.max_resumes
        assert st_.requeues <= r.max_requeues
        # The one past the limit is counted, and it is the terminal one.
        assert st_.infrastructure_failures <= r.max_infrastructure_failures + (st_.phase == "Failed")
        assert len(st_.attempts) <= self.limits.history_limit
        numbers = [a.attempt for a in st_.attempts]
        assert numbers == sorted(set(numbers))
        assert all(n <= st_.attempt for n in numbers)

    @invariant()
    def conditions_follow_the_phase(self) -> None:
        st_ = self.status
        if st_.phase is None:
            return
        true = true_conditions(st_)
        assert ("Ready" in true) == (st_.phase == "Succeeded")
        assert ("Stalled" in true) == (st_.phase == "Failed")
        assert ("Requeued" in true) == (st_.phase == "Requeued")
        assert ("Suspended" in true) == (st_.phase == "Suspended")
        assert ("Reconciling" in true) == (st_.phase in {"Pending", "Running", "Backoff", "Requeued"})
        assert (st_.requeue_at is not None) <= (st_.phase in {"Backoff", "Requeued", "Suspended"})


TestCluster = Cluster.TestCase
TestCluster.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_a_creation_time_without_a_utc_form_does_not_stop_the_running_transition() -> None:
    # Year 9999 at -14:00 is year 10000 in UTC (found by test_status_admissible's hypothesis search).
    flow = Flow(spec_of())
    flow.step(T0)
    pod = active(1, T0)
    pod["metadata"]["creationTimestamp"] = "9999-12-31T23:00:00-14:00"
    d = flow.step(T0 + s(10), pod)
    assert d.status.phase == "Running"
    assert d.events == (
        Event("Normal", "Started", "attempt 1 running in pod job-1, created 9999-12-31T23:00:00-14:00"),
    )
