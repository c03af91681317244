"""Usage accounting and `spec.budget` in the pure lifecycle (`lifecycle.reconcile`, `core.usage`).

Pods go through the real `podstatus.observe`, Leases through the real `live.observe`, and the supervisor's
report is the JSON its termination message carries; the status is carried from decision to decision as the
shell writes it. The properties (hypothesis) drive whole dispatches of random attempts, usages, resets and
budgets: no attempt ever starts past a budget, no wait outlasts `totalSeconds`, and a running attempt past
a budget never survives a decision that sees it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fleetdispatch.api.models import Budget, FleetDispatchSpec, FleetDispatchStatus, Usage
from fleetdispatch.api.names import ATTEMPT_LABEL, DISPATCH_LABEL
from fleetdispatch.controller.metrics import Metrics
from fleetdispatch.core import live, usage
from fleetdispatch.core.lifecycle import BUDGET_EXCEEDED, TERMINAL, WAITING, Decision, Dispatch, reconcile
from fleetdispatch.core.podstatus import observe
from fleetdispatch.session import heartbeat
from fleetdispatch.session.protocol import format_micro_time
from fleetdispatch.validation import manifests
from pods import T0, make_pod, outcome, running, terminated, ts

NO_JITTER = {"baseSeconds": 10, "maxSeconds": 600, "jitterPercent": 0}


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def spec_of(budget: dict[str, Any] | None = None, **parts: Any) -> FleetDispatchSpec:
    raw: dict[str, Any] = {"template": {"spec": {"containers": [{"name": "session", "image": "agent:1"}]}}}
    retry = {"backoff": NO_JITTER, "maxRequeues": 100, "maxAttempts": 100, "maxResumes": 100}
    raw.update({"retry": retry}, **parts)
    if budget is not None:
        raw["budget"] = budget
    return FleetDispatchSpec.model_validate(raw)


def report(**figures: Any) -> str:
    """The supervisor's termination message with a `usage` object."""
    return json.dumps({"deadline": ts(T0 + s(3600)), "usage": figures})


def ended(
    n: int, code: int, at: datetime, *, usage_: dict[str, Any] | None, session_message: str | None = None
) -> dict[str, Any]:
    """Attempt `n`'s pod, its session exited with `code`, its supervisor's report carrying `usage_`."""
    return make_pod(
        f"job-{n}",
        n,
        phase="Succeeded" if code == 0 else "Failed",
        started=at,
        supervisor=terminated(0, started=at, message=None if usage_ is None else report(**usage_)),
        session=terminated(code, message=session_message, started=at + s(1), finished=at + s(5)),
    )


def quota_stop(n: int, at: datetime, reset: datetime, usage_: dict[str, Any] | None) -> dict[str, Any]:
    message = outcome("QuotaExhausted", resetAt=ts(reset))
    return ended(n, 75, at, usage_=usage_, session_message=message)


def runs(n: int, at: datetime) -> dict[str, Any]:
    return make_pod(
        f"job-{n}", n, phase="Running", started=at, supervisor=running(at), session=running(at + s(1))
    )


def lease(n: int, renewed: datetime, usage_: dict[str, Any] | None) -> dict[str, Any]:
    """The Lease attempt `n`'s supervisor writes (trusted: named after, held by and owned by its pod)."""
    name = f"job-{n}"
    annotations = {heartbeat.ANNOTATION_PREFIX + "deadline": ts(T0 + s(3600))}
    if usage_ is not None:
        annotations[heartbeat.ANNOTATION_PREFIX + heartbeat.USAGE_ANNOTATION] = json.dumps(usage_)
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {DISPATCH_LABEL: "job", ATTEMPT_LABEL: str(n)},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": f"uid-{name}"}],
        },
        "spec": {"holderIdentity": name, "renewTime": format_micro_time(renewed)},
    }


@dataclass
class Flow:
    spec: FleetDispatchSpec
    status: FleetDispatchStatus = field(default_factory=FleetDispatchStatus)
    gone: tuple[str, str] | None = None

    def step(
        self, now: datetime, *pods: dict[str, Any], lease_body: dict[str, Any] | None = None
    ) -> Decision:
        beat = None
        if lease_body is not None:
            beat = live.Live(
                lease=live.observe(lease_body),
                visible_since=T0 - s(3600),
                period_seconds=10,
                write_interval_seconds=0,
            )
        dispatch = Dispatch(
            "job", "default", "uid-1", 1, self.spec, self.status, heartbeat=beat, gone_pod_report=self.gone
        )
        decision = reconcile(dispatch, [observe(p) for p in pods], now)
        self.status = decision.status
        return decision


def totals(status: FleetDispatchStatus) -> dict[str, Any]:
    assert status.usage is not None
    return status.usage.model_dump(by_alias=True, exclude_none=True)


# --- accounting ---------------------------------------------------------------------------------------


def test_usage_is_recorded_per_attempt_and_added_up_over_a_quota_requeue() -> None:
    flow = Flow(spec_of())
    assert flow.step(T0).create is not None
    first = {"inputTokens": 100, "outputTokens": 50, "cacheReadTokens": 7, "cost": "0.10"}
    decision = flow.step(T0 + s(10), quota_stop(1, T0, T0 + s(20), first))
    assert decision.status.phase == "Requeued"
    # As reported, the cost normalised ("0.10" is 0.1).
    assert decision.status.attempts[0].usage == Usage.model_validate(
        {**first, "cost": "0.1", "currency": "USD"}
    )
    later = decision.status.requeue_at
    assert later is not None
    assert flow.step(later, quota_stop(1, T0, T0 + s(20), first)).create is not None
    second = {"inputTokens": 200, "outputTokens": 10, "cacheWriteTokens": 3, "cost": "0.25", "model": "m-2"}
    decision = flow.step(later + s(30), ended(2, 0, later, usage_=second))
    assert decision.status.phase == "Succeeded"
    assert [a.usage is not None for a in decision.status.attempts] == [True, True]
    assert totals(decision.status) == {
        "inputTokens": 300,
        "outputTokens": 60,
        "cacheReadTokens": 7,
        "cacheWriteTokens": 3,
        "cost": "0.35",
        "currency": "USD",
        "model": "m-2",
    }
    # Decided again on the same inputs: nothing is added twice.
    assert totals(flow.step(later + s(40), ended(2, 0, later, usage_=second)).status)["inputTokens"] == 300


def test_costs_add_up_exactly_and_another_currency_is_kept_out_of_the_totals() -> None:
    total: Usage | None = None
    for _ in range(10):
        total = usage.add(total, Usage(cost="0.1", currency="USD"))
    assert total is not None and total.cost == "1"  # 0.1 ten times as floats is 0.9999999999999999
    total = usage.add(total, Usage(cost="5", currency="EUR", input_tokens=4))
    assert total is not None and (total.cost, total.currency, total.input_tokens) == ("1", "USD", 4)
    huge = Usage(cost="999999999999.5")
    assert usage.add(huge, huge) == Usage(cost="9" * 12 + "." + "9" * 12)  # held at the largest, not wrapped


def test_a_report_that_is_no_usage_is_none() -> None:
    for message in (None, "", "junk", "[]", '{"usage": 3}', '{"usage": {"inputTokens": -1}}'):
        assert usage.from_report(message) is None
    assert usage.from_report('{"usage": {"inputTokens": 5, "bad": 1}}') == Usage(input_tokens=5)


def test_a_pod_removed_before_its_final_status_is_accounted_from_its_deleted_event() -> None:
    flow = Flow(spec_of())
    flow.step(T0)
    flow.step(T0 + s(2), runs(1, T0))
    flow.gone = ("job-1", report(outputTokens=42))
    decision = flow.step(T0 + s(5))  # the pod is gone: PodDeleted, an infrastructure retry
    assert decision.status.attempts[-1].outcome == "PodDeleted"
    assert totals(decision.status) == {"outputTokens": 42}


def test_a_suspended_attempts_usage_is_taken_once_its_report_shows() -> None:
    flow = Flow(spec_of())
    flow.step(T0)
    flow.step(T0 + s(2), runs(1, T0))
    flow.spec = spec_of(suspend=True)
    decision = flow.step(T0 + s(5), runs(1, T0))
    assert decision.status.phase == "Suspended" and decision.delete == ("job-1",)
    assert decision.status.usage is None
    stopped = ended(1, 143, T0, usage_={"inputTokens": 9, "cost": "0.01"})
    metrics = Metrics()
    before = flow.status
    decision = flow.step(T0 + s(8), stopped)
    metrics.record(before, decision, [], T0, namespace="default")
    assert decision.status.attempts[-1].usage == Usage(input_tokens=9, cost="0.01", currency="USD")
    for _ in range(3):
        before = flow.status
        decision = flow.step(T0 + s(9), stopped)
        metrics.record(before, decision, [], T0, namespace="default")
    assert totals(decision.status) == {"inputTokens": 9, "cost": "0.01", "currency": "USD"}
    value = metrics.registry.get_sample_value(
        "fleetdispatch_tokens_total", {"kind": "input", "namespace": "default", "pool": "None"}
    )
    assert value == 9


def test_metrics_count_each_ended_attempt_once_by_kind_namespace_and_pool() -> None:
    flow = Flow(spec_of(quotaPool="shared"))
    metrics = Metrics()
    flow.step(T0)
    spent = {
        "inputTokens": 10,
        "outputTokens": 20,
        "cacheReadTokens": 30,
        "cacheWriteTokens": 40,
        "cost": "1.5",
    }
    pod = ended(1, 0, T0, usage_=spent)
    for _ in range(3):  # the same end seen again (a repeated reconcile, a restart): counted once
        before = flow.status
        decision = flow.step(T0 + s(10), pod)
        metrics.record(before, decision, [], T0, namespace="team", pool="shared")
    labels = {"namespace": "team", "pool": "shared"}
    by_kind = {
        kind: metrics.registry.get_sample_value("fleetdispatch_tokens_total", {"kind": kind, **labels})
        for kind in usage.TOKEN_KINDS
    }
    assert by_kind == {"input": 10, "output": 20, "cacheRead": 30, "cacheWrite": 40}
    assert metrics.registry.get_sample_value("fleetdispatch_cost_total", {**labels, "currency": "USD"}) == 1.5


# --- budgets --------------------------------------------------------------------------------------------


def test_a_spent_tokens_budget_fails_the_dispatch_instead_of_requeueing() -> None:
    flow = Flow(spec_of({"tokens": 1000}))
    flow.step(T0)
    decision = flow.step(T0 + s(10), quota_stop(1, T0, T0 + s(20), {"inputTokens": 600, "outputTokens": 400}))
    assert (decision.status.phase, decision.status.reason) == ("Failed", BUDGET_EXCEEDED)
    assert decision.status.message is not None and "budget.tokens is spent: 1000 tokens used, of 1000" in (
        decision.status.message
    )
    assert decision.create is None and decision.status.requeue_at is None
    assert any(e.reason == BUDGET_EXCEEDED for e in decision.events)


def test_a_cost_budget_names_the_cost() -> None:
    flow = Flow(spec_of({"cost": "0.50"}))
    flow.step(T0)
    decision = flow.step(T0 + s(10), ended(1, 1, T0, usage_={"cost": "0.5", "currency": "EUR"}))
    assert decision.status.reason == BUDGET_EXCEEDED
    assert "budget.cost is spent: 0.5 EUR used, of 0.50" in (decision.status.message or "")


def test_a_success_is_a_success_even_past_the_budget() -> None:
    flow = Flow(spec_of({"tokens": 10}))
    flow.step(T0)
    decision = flow.step(T0 + s(10), ended(1, 0, T0, usage_={"outputTokens": 500}))
    assert decision.status.phase == "Succeeded"


def test_a_budget_lowered_while_waiting_fails_at_the_next_decision() -> None:
    flow = Flow(spec_of({"tokens": 10_000}))
    flow.step(T0)
    flow.step(T0 + s(10), ended(1, 1, T0, usage_={"outputTokens": 500}))
    assert flow.status.phase == "Backoff"
    flow.spec = spec_of({"tokens": 400})
    decision = flow.step(T0 + s(11), ended(1, 1, T0, usage_={"outputTokens": 500}))
    assert (decision.status.phase, decision.status.reason) == ("Failed", BUDGET_EXCEEDED)
    assert decision.create is None


def test_a_running_attempt_past_the_budget_by_its_heartbeat_is_stopped() -> None:
    flow = Flow(spec_of({"tokens": 1000}))
    flow.step(T0)
    flow.step(T0 + s(2), runs(1, T0))
    decision = flow.step(T0 + s(5), runs(1, T0), lease_body=lease(1, T0 + s(4), {"inputTokens": 999}))
    assert decision.status.phase == "Running" and decision.delete == ()
    live_usage = {"inputTokens": 999, "outputTokens": 1}
    decision = flow.step(T0 + s(6), runs(1, T0), lease_body=lease(1, T0 + s(5), live_usage))
    assert decision.delete == ("job-1",)
    assert (decision.status.phase, decision.status.reason) == ("Failed", BUDGET_EXCEEDED)
    assert "budget.tokens is spent" in (decision.status.message or "")
    assert decision.status.attempts[-1].outcome == BUDGET_EXCEEDED
    assert totals(decision.status) == live_usage  # the heartbeat's last figures


def test_a_lease_that_is_not_the_supervisors_own_stops_nothing() -> None:
    flow = Flow(spec_of({"tokens": 10}))
    flow.step(T0)
    flow.step(T0 + s(2), runs(1, T0))
    forged = lease(1, T0 + s(4), {"inputTokens": 10**9})
    forged["metadata"]["ownerReferences"] = []
    decision = flow.step(T0 + s(5), runs(1, T0), lease_body=forged)
    assert decision.status.phase == "Running" and decision.delete == ()


def test_a_running_attempt_is_stopped_when_total_seconds_run_out() -> None:
    flow = Flow(spec_of({"totalSeconds": 100}))
    flow.step(T0)
    decision = flow.step(T0 + s(2), runs(1, T0))
    first_start = decision.status.start_time
    assert first_start is not None
    assert decision.wake_at is not None and decision.wake_at <= first_start + s(100)
    assert flow.step(first_start + s(99), runs(1, T0)).delete == ()
    decision = flow.step(first_start + s(100), runs(1, T0))
    assert decision.delete == ("job-1",)
    assert (decision.status.phase, decision.status.reason) == ("Failed", BUDGET_EXCEEDED)
    assert "budget.totalSeconds is spent: 100 s since the first start" in (decision.status.message or "")


def test_a_requeue_whose_reset_lies_past_total_seconds_fails_at_once() -> None:
    flow = Flow(spec_of({"totalSeconds": 3600}))
    flow.step(T0)
    flow.step(T0 + s(2), runs(1, T0))
    start = flow.status.start_time
    assert start is not None
    decision = flow.step(T0 + s(60), quota_stop(1, T0, start + s(7200), None))
    assert (decision.status.phase, decision.status.reason) == ("Failed", BUDGET_EXCEEDED)
    assert decision.status.requeue_at is None and decision.create is None
    assert "budget.totalSeconds (3600 s) runs out at" in (decision.status.message or "")
    # A reset within the budget waits, as ever.
    flow = Flow(spec_of({"totalSeconds": 3600}))
    flow.step(T0)
    flow.step(T0 + s(2), runs(1, T0))
    assert flow.step(T0 + s(60), quota_stop(1, T0, T0 + s(600), None)).status.phase == "Requeued"


def test_the_budget_may_change_after_creation_and_is_checked_by_validate() -> None:
    stored = {
        "apiVersion": "fleet.dispatch.dev/v1alpha1",
        "kind": "FleetDispatch",
        "metadata": {"name": "job"},
        "spec": {
            "template": {"spec": {"containers": [{"name": "session", "image": "agent:1"}]}},
            "budget": {"tokens": 1000},
        },
    }
    update = json.loads(json.dumps(stored))
    update["spec"]["budget"] = {"tokens": 5000, "cost": "2.5", "totalSeconds": 60}
    assert manifests.check(update, old=stored).valid
    update["spec"]["budget"]["cost"] = "0"
    verdict = manifests.check(update, old=stored)
    assert not verdict.valid and "budget.cost must be greater than 0" in verdict.explain()


# --- properties -----------------------------------------------------------------------------------------

usages = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "inputTokens": st.integers(0, 3000),
        "outputTokens": st.integers(0, 3000),
        "cacheReadTokens": st.integers(0, 3000),
        "cost": st.decimals(0, 2, places=2).map(lambda d: format(d, "f")),
    },
)
endings = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["quota", "failed", "timeout", "done"]),
        "runs": st.integers(1, 2000),  # seconds the session runs
        "reset": st.integers(0, 5000),  # a quota stop's reset, seconds after its end
        "live": usages,  # what its heartbeat carries while it runs
        "final": usages,  # what its supervisor reports at its end
    }
)
budgets = st.fixed_dictionaries(
    {},
    optional={
        "totalSeconds": st.integers(1, 8000),
        "tokens": st.integers(1, 10000),
        "cost": st.sampled_from(["0.5", "1", "3.25"]),
    },
)


def _over(
    budget: Budget, status: FleetDispatchStatus, now: datetime, running: Usage | None = None
) -> str | None:
    return usage.spent(budget, usage.add(status.usage, running), status.start_time, now)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=budgets, attempts=st.lists(endings, min_size=1, max_size=8))
def test_never_an_attempt_past_a_budget_and_never_a_wait_past_total_seconds(
    budget: dict[str, Any], attempts: list[dict[str, Any]]
) -> None:
    flow = Flow(spec_of(budget, timeouts={"deadlineSeconds": 604800, "maxExtensionSeconds": 0}))
    limits = Budget.model_validate(budget)
    now = T0

    def check(decision: Decision, at: datetime, running: Usage | None = None) -> None:
        status = decision.status
        if decision.create is not None:
            assert _over(limits, status, at) is None, "an attempt started past a budget"
        if status.phase in WAITING:
            limit = usage.time_limit(limits, status.start_time)
            assert status.requeue_at is not None
            assert limit is None or status.requeue_at < limit, "a wait outlasts totalSeconds"
        if status.phase == "Running" and not decision.delete:
            assert _over(limits, status, at, running) is None, "a running attempt past a budget survived"
        if status.phase in TERMINAL:
            what = (
                (status.message or "").split("budget.")[-1].split(" ")[0] if status.phase == "Failed" else ""
            )
            event(f"{status.phase} {what}{' (stopped)' if decision.delete else ''}")
        if status.phase == "Failed":
            assert status.reason == BUDGET_EXCEEDED, status.message
            assert status.message and "budget." in status.message

    previous: list[dict[str, Any]] = []  # the last attempt's ended pod, which stays
    for n, ending in enumerate(attempts, start=1):
        decision = flow.step(now, *previous)
        check(decision, now)
        if decision.create is None and decision.status.phase in WAITING:
            assert decision.status.requeue_at is not None
            now = decision.status.requeue_at  # the wake-up
            decision = flow.step(now, *previous)
            check(decision, now)
        if decision.status.phase in TERMINAL:
            return
        assert decision.create is not None and decision.create.attempt == n
        started = now
        decision = flow.step(now + s(1), runs(n, started))
        check(decision, now + s(1))
        if decision.status.phase in TERMINAL:
            return
        halfway = now + s(1 + ending["runs"] // 2)
        body = lease(n, halfway, ending["live"])
        live_usage = usage.of(ending["live"]) if ending["live"] is not None else None
        decision = flow.step(halfway, runs(n, started), lease_body=body)
        check(decision, halfway, live_usage)
        if decision.status.phase in TERMINAL:
            return
        end = now + s(2 + ending["runs"])
        if ending["kind"] == "quota":
            pod = quota_stop(n, started, end + s(ending["reset"]), ending["final"])
        else:
            code = {"failed": 1, "timeout": 143, "done": 0}[ending["kind"]]
            message = outcome("DeadlineExceeded") if ending["kind"] == "timeout" else None
            pod = ended(n, code, started, usage_=ending["final"], session_message=message)
        decision = flow.step(end, pod)
        check(decision, end)
        limit = usage.time_limit(limits, decision.status.start_time)
        if ending["kind"] == "quota" and limit is not None and end + s(ending["reset"]) >= limit:
            # A requeue whose reset lies past totalSeconds fails in the decision that sees the stop.
            assert (decision.status.phase, decision.status.reason) == ("Failed", BUDGET_EXCEEDED)
            event("a requeue past totalSeconds failed at once")
        if decision.status.phase in TERMINAL:
            return
        previous, now = [pod], end


@given(budget=budgets, spent=usages, first_start=st.integers(0, 10000), now=st.integers(0, 20000))
def test_spent_names_a_budget_exactly_when_one_is_reached(
    budget: dict[str, Any], spent: dict[str, Any] | None, first_start: int, now: int
) -> None:
    limits = Budget.model_validate(budget)
    total = usage.of(spent) if spent is not None else None
    start = T0 + s(first_start)
    verdict = usage.spent(limits, total, start, T0 + s(now))
    reached = (
        (limits.tokens is not None and usage.tokens(total) >= limits.tokens)
        or (limits.cost is not None and usage.cost(total) >= Decimal(limits.cost))
        or (limits.total_seconds is not None and now - first_start >= limits.total_seconds)
    )
    assert (verdict is not None) == reached
