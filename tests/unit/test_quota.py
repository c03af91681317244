"""The QuotaPool rules as pure functions: shared exhaustion, admission in creation order, counts."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

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


# --- pacing: resumesPerSecond ------------------------------------------------------------------------------

SECONDS = st.integers(min_value=0, max_value=20).map(lambda n: NOW + timedelta(seconds=n))


@given(
    held=st.dictionaries(SECONDS, st.integers(min_value=0, max_value=5), max_size=20),
    rate=st.integers(min_value=1, max_value=5),
    earliest=st.integers(min_value=0, max_value=20_000_000).map(lambda us: NOW + timedelta(microseconds=us)),
)
def test_resume_at_is_the_first_second_from_the_earliest_with_room(
    held: dict[datetime, int], rate: int, earliest: datetime
) -> None:
    gate = quota.Gate("p", resumes_per_second=rate, resumes=held)
    at = quota.resume_at(gate, earliest)
    assert at >= earliest and at.microsecond == 0 and at - earliest < timedelta(seconds=22)
    assert held.get(at, 0) < rate
    second = at - timedelta(seconds=1)
    while second >= earliest:  # every whole second before it, from the earliest on, is full
        assert held.get(second, 0) >= rate
        second -= timedelta(seconds=1)


def test_resume_at_year_9999_full_is_the_last_second() -> None:
    last = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert quota.resume_at(quota.Gate("p", resumes_per_second=1, resumes={last: 1}), last) == last
    # Rounding up past the last second does not raise either: the last second it is.
    assert quota.resume_at(quota.Gate("p"), last.replace(microsecond=500_000)) == last


def test_the_gate_counts_the_seconds_other_members_hold() -> None:
    ahead, past = NOW + timedelta(seconds=3), NOW - timedelta(seconds=3)
    members = [
        quota.Member("a", "1", False, False, True, ahead),
        quota.Member("b", "2", False, False, True, ahead),
        quota.Member("me", "3", False, False, True, ahead),  # its own second is free for it
        quota.Member("c", "4", False, True, True, past),  # a second gone by: never looked at again
        quota.Member("d", "5", False, True),
    ]
    pool = quota.Pool("p", resumes_per_second=7, exhausted_until=NOW + timedelta(seconds=1))
    gate = quota.gate(pool, "p", members, "me", NOW)
    assert (gate.resumes, gate.resumes_per_second) == ({ahead: 2, past: 1}, 7)
    bounded = quota.Pool("p", max_concurrent=9)
    assert quota.gate(bounded, "p", members, "me", NOW).resumes == {ahead: 2, past: 1}
    counted = {ahead: 5}  # as the controller keeps them
    assert quota.gate(bounded, "p", members, "me", NOW, resumes=counted).resumes == counted


def test_members_stopping_for_one_reset_are_given_paced_seconds() -> None:
    """Five members of a pool of 2 per second stop for the same reset, each decided knowing the seconds
    the ones before took: two per second from the reset on, whatever the order."""
    reset = NOW + timedelta(seconds=120)
    pod = observe(exited(1, 75, outcome("QuotaExhausted", resetAt=reset.strftime("%Y-%m-%dT%H:%M:%SZ"))))
    pool = quota.Pool("p", resumes_per_second=2)
    members: list[quota.Member] = []
    seconds = []
    for n in range(5):
        name = f"job{n}"
        running = lifecycle.reconcile(_dispatch(quota.Gate("p")), [], NOW).status
        gate = quota.gate(pool, "p", members, name, NOW + timedelta(seconds=10))
        d = lifecycle.reconcile(
            dataclasses.replace(_dispatch(gate, running), name=name), [pod], NOW + timedelta(seconds=10)
        )
        assert d.status.phase == "Requeued" and d.status.requeue_at is not None
        assert d.status.message.endswith(f"next attempt at {d.status.requeue_at.isoformat()}")
        seconds.append(d.status.requeue_at)
        members.append(quota.Member(name, str(n), False, False, True, d.status.requeue_at))
    assert [(s - reset).total_seconds() for s in seconds] == [0, 0, 1, 1, 2]


def test_members_held_by_an_exhausted_pool_are_given_paced_seconds() -> None:
    until = NOW + timedelta(seconds=60)
    pool = quota.Pool("p", exhausted_until=until, resumes_per_second=1)
    members: list[quota.Member] = []
    for n in range(3):
        gate = quota.gate(pool, "p", members, f"job{n}", NOW)
        d = lifecycle.reconcile(dataclasses.replace(_dispatch(gate), name=f"job{n}"), [], NOW)
        assert (d.status.phase, d.status.reason) == ("Requeued", "QuotaPoolExhausted")
        assert d.status.requeue_at == until + timedelta(seconds=n) and d.wake_at == d.status.requeue_at
        members.append(quota.Member(f"job{n}", str(n), False, False, True, d.status.requeue_at))
