"""`core.live` and its use by `lifecycle.reconcile`: the supervisor's Lease as plain data.

Leases are built as the real heartbeat writes them (`heartbeat.LeaseStatus.annotations`, the same labels,
holder and owner reference), pods through the real `podstatus.observe`.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetdispatch.api.models import FleetDispatchSpec, FleetDispatchStatus
from fleetdispatch.api.names import ATTEMPT_LABEL, DISPATCH_LABEL
from fleetdispatch.core import live
from fleetdispatch.core.lifecycle import Dispatch, reconcile
from fleetdispatch.core.podstatus import observe
from fleetdispatch.session import protocol
from fleetdispatch.session.heartbeat import LeaseStatus
from pods import T0, make_pod, running

PERIOD = 15.0
INTERVAL = 15.0
SLACK = live.CLOCK_TOLERANCE_SECONDS
LONG_AGO = T0 - timedelta(hours=1)


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def lease_body(
    *,
    name: str = "job-1",
    renewed: datetime | None = T0,
    deadline: datetime = T0 + timedelta(hours=1),
    activity: datetime | None = None,
    reason: str | None = None,
    output: datetime | None = None,
    dispatch: str | None = "job",
    attempt: str | None = "1",
    holder: str | None = "job-1",
    owner_uid: str | None = "uid-job-1",
) -> dict[str, Any]:
    """A Lease as the supervisor of pod `job-1` writes it (each argument can forge one part)."""
    labels = {k: v for k, v in ((DISPATCH_LABEL, dispatch), (ATTEMPT_LABEL, attempt)) if v is not None}
    status = LeaseStatus(
        deadline=deadline.timestamp(),
        last_activity=activity.timestamp() if activity else None,
        activity_reason=reason,
        last_output=output.timestamp() if output else None,
    )
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": "default",
        "labels": labels,
        "annotations": status.annotations(),
    }
    if owner_uid is not None:
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": "job-1", "uid": owner_uid}]
    spec: dict[str, Any] = {"leaseDurationSeconds": 45}
    if holder is not None:
        spec["holderIdentity"] = holder
    if renewed is not None:
        spec["renewTime"] = protocol.format_micro_time(renewed)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def pod_running(at: datetime = T0) -> dict[str, Any]:
    return make_pod("job-1", 1, phase="Running", started=at, supervisor=running(at), session=running(at))


def heartbeat(
    lease: dict[str, Any] | None, *, since: datetime = LONG_AGO, last_write: datetime | None = None
) -> live.Live:
    return live.Live(
        lease=None if lease is None else live.observe(lease),
        visible_since=since,
        period_seconds=PERIOD,
        write_interval_seconds=INTERVAL,
        last_write=last_write,
    )


SPEC = FleetDispatchSpec.model_validate(
    {"template": {"spec": {"containers": [{"name": "session", "image": "agent:1"}]}}}
)
RUNNING = FleetDispatchStatus(
    phase="Running",
    attempt=1,
    pod_name="job-1",
    start_time=T0,
    deadline=T0 + s(3600),
    deadline_cap=T0 + s(3600 + 7200),
)


def decide(now: datetime, beat: live.Live | None, status: FleetDispatchStatus = RUNNING) -> Any:
    dispatch = Dispatch("job", "default", "uid-dispatch", 1, SPEC, status, heartbeat=beat)
    return reconcile(dispatch, [observe(pod_running())], now)


# --- reading and trusting a Lease ------------------------------------------------------------------------


def test_the_heartbeats_lease_reads_back_as_its_figures() -> None:
    body = lease_body(activity=T0 + s(5), reason="cpu", output=T0 + s(3), deadline=T0 + s(4000))
    view = live.observe(body)
    assert (view.name, view.dispatch, view.attempt, view.holder) == ("job-1", "job", 1, "job-1")
    assert view.owner_uids == ("uid-job-1",)
    assert view.renew_time == T0
    assert view.figures() == {
        "deadline": T0 + s(4000),
        "last_activity_time": T0 + s(5),
        "activity_reason": "cpu",
        "last_output_time": T0 + s(3),
    }


def test_a_lease_with_junk_reads_as_nothing_known() -> None:
    body = {"metadata": {"name": "x", "labels": {ATTEMPT_LABEL: "one"}, "annotations": {"a": 1}}, "spec": []}
    view = live.observe(
        {"metadata": body["metadata"], "spec": {"renewTime": "yesterday", "holderIdentity": 3}}
    )
    assert (view.attempt, view.holder, view.renew_time, view.figures()) == (None, None, None, {})


def test_only_the_current_pods_own_lease_is_trusted() -> None:
    pod = observe(pod_running())
    assert live.distrust(live.observe(lease_body()), pod, "job", 1) is None
    forged = {
        "name": lease_body(name="job-1-x"),
        "holder": lease_body(holder="someone"),
        "owner": lease_body(owner_uid="uid-of-an-earlier-pod"),
        "no owner": lease_body(owner_uid=None),
        "dispatch label": lease_body(dispatch="other"),
        "no labels": lease_body(dispatch=None, attempt=None),
        "attempt label": lease_body(attempt="2"),
    }
    for what, body in forged.items():
        assert live.distrust(live.observe(body), pod, "job", 1) is not None, what
    # The right Lease, but the status is on another attempt: not this one's.
    assert live.distrust(live.observe(lease_body()), pod, "job", 2) is not None


# --- when a supervisor is lost, when a write is due --------------------------------------------------------

instants = st.integers(min_value=0, max_value=10**6).map(lambda n: T0 + s(n / 10))


@settings(max_examples=300, deadline=None)
@given(renewed=instants, since=instants, period=st.integers(1, 120))
def test_a_lease_is_lost_only_three_periods_after_its_renewal_and_after_the_view_began(
    renewed: datetime, since: datetime, period: int
) -> None:
    beat = dataclasses.replace(heartbeat(lease_body(renewed=renewed), since=since), period_seconds=period)
    assert beat.lease is not None
    at = live.lost_at(beat, beat.lease)
    # Never before three periods plus the clock tolerance after the renewal, nor within three periods of
    # the operator's view (re)starting; exactly the later of the two.
    assert at >= renewed + s(3 * period + SLACK)
    assert at >= since + s(3 * period)
    assert at == max(renewed + s(3 * period + SLACK), since + s(3 * period))


def test_a_lease_never_renewed_counts_from_when_the_view_began() -> None:
    beat = heartbeat(lease_body(renewed=None), since=T0)
    assert beat.lease is not None
    assert live.lost_at(beat, beat.lease) == T0 + s(3 * PERIOD)


@settings(max_examples=300, deadline=None)
@given(last=st.none() | instants, now=instants, interval=st.integers(0, 60))
def test_a_live_write_is_due_at_most_once_per_interval(
    last: datetime | None, now: datetime, interval: int
) -> None:
    beat = dataclasses.replace(heartbeat(None, last_write=last), write_interval_seconds=interval)
    due = live.write_at(beat, now)
    assert due >= now
    if last is not None and interval > 0:  # 0: no limit
        assert due >= last + s(interval)
    if last is None or interval == 0 or now >= last + s(interval):
        assert due == now


# --- in the lifecycle ------------------------------------------------------------------------------------


def test_a_running_attempt_mirrors_its_supervisors_lease() -> None:
    body = lease_body(renewed=T0 + s(50), deadline=T0 + s(4000), activity=T0 + s(49), reason="cpu")
    decision = decide(T0 + s(55), heartbeat(body))
    status = decision.status
    assert (status.deadline, status.last_activity_time, status.activity_reason) == (
        T0 + s(4000),
        T0 + s(49),
        "cpu",
    )
    assert status.phase == "Running" and decision.delete == ()
    # Next look: when the Lease would be lost.
    assert decision.wake_at == T0 + s(50 + 3 * PERIOD + SLACK)


def test_a_forged_lease_changes_nothing() -> None:
    now = T0 + s(1000)  # long after the forged renewal: it is not even lost
    for body in (
        lease_body(renewed=T0, name="job-1-x", deadline=T0 + s(9999)),
        lease_body(renewed=T0, owner_uid="uid-someone", deadline=T0 + s(9999)),
        lease_body(renewed=T0, dispatch="other", deadline=T0 + s(9999)),
        lease_body(renewed=T0, holder="someone", deadline=T0 + s(9999)),
    ):
        without = decide(now, None)
        decision = decide(now, heartbeat(body))
        assert decision == without


def test_live_figures_wait_for_the_write_interval() -> None:
    body = lease_body(renewed=T0 + s(50), deadline=T0 + s(4000))
    decision = decide(T0 + s(55), heartbeat(body, last_write=T0 + s(45)))
    assert decision.status.deadline == RUNNING.deadline  # not yet: the last write was 10 s ago
    assert decision.wake_at == T0 + s(60)
    later = decide(T0 + s(60), heartbeat(body, last_write=T0 + s(45)))
    assert later.status.deadline == T0 + s(4000)


def test_a_lease_not_renewed_for_three_periods_ends_the_attempt_as_supervisor_lost() -> None:
    body = lease_body(renewed=T0 + s(100))
    at = T0 + s(100 + 3 * PERIOD + SLACK)
    assert decide(at - s(1), heartbeat(body)).status.phase == "Running"
    decision = decide(at, heartbeat(body))
    assert decision.delete == ("job-1",)
    record = decision.status.attempts[-1]
    assert (record.outcome, record.failure_class) == ("SupervisorLost", "Infrastructure")
    assert "Lease job-1 was last renewed" in (record.message or "")
    assert decision.status.infrastructure_failures == 1
    assert [o.reason for o in decision.outcomes] == ["SupervisorLost"]


def test_no_lease_is_no_loss_and_a_new_view_waits_three_periods() -> None:
    # A supervisor still starting has no Lease: never lost, however long (the backstop stays).
    assert decide(T0 + s(3000), heartbeat(None)).status.phase == "Running"
    # The operator (re)started listing at T0 + 1000: a Lease renewed long before is judged 3 periods later.
    body = lease_body(renewed=T0 + s(10))
    since = T0 + s(1000)
    assert decide(since + s(3 * PERIOD - 1), heartbeat(body, since=since)).delete == ()
    assert decide(since + s(3 * PERIOD), heartbeat(body, since=since)).delete == ("job-1",)


def test_a_session_that_ended_is_judged_by_its_pod_not_its_lease() -> None:
    # The session exited and its supervisor is stopping: the Lease's staleness says nothing then.
    pod = make_pod(
        "job-1",
        1,
        phase="Running",
        started=T0,
        supervisor=running(T0),
        session={"terminated": {"exitCode": 0}},
    )
    dispatch = Dispatch("job", "default", "uid-dispatch", 1, SPEC, RUNNING, heartbeat=heartbeat(lease_body()))
    decision = reconcile(dispatch, [observe(pod)], T0 + s(3000))
    assert decision.delete == () and decision.outcomes == ()


@settings(max_examples=200, deadline=None)
@given(renewed=st.integers(0, 500), now=st.integers(0, 1000))
def test_supervisor_lost_exactly_when_the_lease_is_stale(renewed: int, now: int) -> None:
    body = lease_body(renewed=T0 + s(renewed))
    decision = decide(T0 + s(now), heartbeat(body))
    stale = now >= renewed + 3 * PERIOD + SLACK
    assert (decision.delete == ("job-1",)) == stale
    if not stale:
        assert decision.wake_at is not None and decision.wake_at <= T0 + s(renewed + 3 * PERIOD + SLACK)


def test_a_stale_lease_of_a_pod_not_shown_running_waits_without_spinning() -> None:
    # The kubelet has not reported the pod Running (its status lags): no verdict, and no wake-up in the past.
    pod = make_pod("job-1", 1, phase="Pending", started=T0, supervisor=running(T0), session=running(T0))
    dispatch = Dispatch("job", "default", "uid-dispatch", 1, SPEC, RUNNING, heartbeat=heartbeat(lease_body()))
    now = T0 + s(3000)
    decision = reconcile(dispatch, [observe(pod)], now)
    assert decision.delete == () and decision.outcomes == ()
    assert decision.wake_at is None or decision.wake_at > now
