"""The QuotaPool rules as pure functions: shared exhaustion, admission in creation order, counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleetdispatch.api.models import FleetDispatchStatus, parse_spec
from fleetdispatch.core import lifecycle, quota
from fleetdispatch.core.podstatus import observe
from pods import exited, outcome

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def member(name: str, created: str, *, running: bool = False, waiting: bool = False) -> quota.Member:
    return quota.Member(name, created, running, waiting)


def test_a_missing_pool_holds_nothing_back() -> None:
    gate = quota.gate(None, "p", [], "me", NOW)
    assert gate.missing and gate.open


def test_an_exhausted_pool_holds_every_member_until_the_reset() -> None:
    pool = quota.Pool("p", exhausted_until=NOW + timedelta(seconds=30))
    gate = quota.gate(pool, "p", [], "me", NOW)
    assert gate.exhausted_until == NOW + timedelta(seconds=30) and not gate.open
    assert quota.gate(pool, "p", [], "me", NOW + timedelta(seconds=30)).open  # the reset has come


def test_max_concurrent_admits_the_oldest_waiting_first() -> None:
    pool = quota.Pool("p", max_concurrent=2)
    members = [
        member("a", "2026-11-24T10:00:00Z", running=True),
        member("c", "2026-11-24T10:00:02Z", waiting=True),
        member("b", "2026-11-24T10:00:01Z", waiting=True),
        member("d", "2026-11-24T10:00:01Z", waiting=True),
    ]
    assert quota.next_admitted(pool, members) == ["b"]  # one free slot; then name breaks the tie
    assert quota.gate(pool, "p", members, "b", NOW).open
    assert quota.gate(pool, "p", members, "d", NOW).full
    assert quota.gate(pool, "p", members, "c", NOW).full
    full = [*members[:1], member("e", "2026-11-24T09:00:00Z", running=True)]
    assert quota.next_admitted(pool, full) == []


def test_counts() -> None:
    members = [
        member("a", "1", running=True),
        member("b", "2", waiting=True),
        quota.Member("c", "3", running=False, waiting=False, requeued=True),
    ]
    assert quota.counts(members) == quota.Counts(running=1, waiting=1, requeued=1)


def _dispatch(gate: quota.Gate | None, status: FleetDispatchStatus | None = None) -> lifecycle.Dispatch:
    spec = parse_spec(
        {
            "template": {"spec": {"containers": [{"name": "session", "image": "i", "command": ["true"]}]}},
            "quotaPool": "p",
            "retry": {"backoff": {"baseSeconds": 1, "jitterPercent": 0}},
        }
    )
    return lifecycle.Dispatch("job", "ns", "uid", 1, spec, status or FleetDispatchStatus(), gate=gate)


def test_the_lifecycle_waits_requeued_while_the_pool_is_exhausted_and_starts_after() -> None:
    gate = quota.Gate("p", exhausted_until=NOW + timedelta(seconds=60))
    d = lifecycle.reconcile(_dispatch(gate), [], NOW)
    assert d.create is None
    assert (d.status.phase, d.status.reason) == ("Requeued", "QuotaPoolExhausted")
    assert d.status.requeue_at == NOW + timedelta(seconds=60)
    assert d.wake_at == NOW + timedelta(seconds=60)
    assert [e.reason for e in d.events] == ["Requeued"]
    again = lifecycle.reconcile(_dispatch(gate, d.status), [], NOW + timedelta(seconds=1))
    assert again.events == () and again.status == d.status.model_copy(
        update={"conditions": again.status.conditions}
    )
    later = lifecycle.reconcile(_dispatch(quota.Gate("p"), d.status), [], NOW + timedelta(seconds=61))
    assert later.create is not None and later.status.requeues == 0


def test_the_lifecycle_waits_pending_for_a_slot_and_says_so_once() -> None:
    gate = quota.Gate("p", full=True, max_concurrent=2)
    d = lifecycle.reconcile(_dispatch(gate), [], NOW)
    assert d.create is None
    assert (d.status.phase, d.status.reason) == ("Pending", "QuotaPoolFull")
    assert [e.reason for e in d.events] == ["QuotaPoolFull"]
    again = lifecycle.reconcile(_dispatch(gate, d.status), [], NOW + timedelta(seconds=5))
    assert again.events == () and again.create is None


def test_an_attempt_started_without_its_pool_says_so_in_a_warning() -> None:
    d = lifecycle.reconcile(_dispatch(quota.gate(None, "p", [], "job", NOW)), [], NOW)
    assert d.create is not None
    note = "(its QuotaPool 'p' does not exist: the attempt is not held back)"
    assert d.status.message == f"created pod job-1 for attempt 1 {note}"
    assert [(e.type, e.reason, e.message) for e in d.events] == [
        ("Warning", "QuotaPoolMissing", d.status.message)
    ]
    assert lifecycle.reconcile(_dispatch(quota.Gate("p"), FleetDispatchStatus()), [], NOW).events == ()


def test_a_quota_stop_in_a_pool_reports_the_reset_for_the_pool() -> None:
    gate = quota.Gate("p")
    started = lifecycle.reconcile(_dispatch(gate), [], NOW)
    reset = NOW + timedelta(seconds=120)
    pod = exited(1, 75, outcome("QuotaExhausted", resetAt=reset.strftime("%Y-%m-%dT%H:%M:%SZ")))
    d = lifecycle.reconcile(_dispatch(gate, started.status), [observe(pod)], NOW + timedelta(seconds=10))
    assert d.status.phase == "Requeued"
    assert d.pool_exhausted_until == reset
