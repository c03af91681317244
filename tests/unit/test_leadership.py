"""Leader election's decision (`core.leadership`): client-go's semantics, and never two leaders.

The exhaustive part is a model: replicas that read and write one Lease on a linearizable store with
optimistic concurrency, each on its own clock (any offset, rates within 1 ± DRIFT of real time, varying from
step to step), with requests delayed, reordered against other replicas', answered, lost (applied but never
answered) or dropped, replicas cut off from the API server and reconnected, replicas that crash with a
request on the wire (and come back as new replicas), and replicas that stop and release.
Hypothesis picks the interleaving; at every moment a replica starts to lead, no other may still lead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fleetdispatch.core.leadership import (
    RELEASED_DURATION_SECONDS,
    LeaseRecord,
    Seen,
    Timing,
    Wait,
    Write,
    decide,
    leads,
    release,
)

TIMING = Timing()  # client-go's defaults: 15 s, 10 s, 2 s
# The bound the module docstring states: renew_deadline * (1 + d) < lease_duration * (1 - d), d < 0.2.
DRIFT = 0.19
WALL = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def record(holder: str, version: str = "7", transitions: int = 0, duration: int = 15) -> LeaseRecord:
    return LeaseRecord(version, holder, duration, WALL, WALL, transitions)


# ---- the decision, case by case ---------------------------------------------------------------------------


def test_no_lease_is_created_with_no_transition_and_held_for_the_renew_deadline() -> None:
    decision, seen = decide(None, me="a", now=100.0, wall=WALL, seen=None, timing=TIMING)
    assert isinstance(decision, Write)
    assert (decision.action, decision.base, decision.takeover, decision.hold_until) == (
        "acquire",
        None,
        False,
        110,
    )
    assert decision.record.spec() == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "leaseTransitions": 0,
        "acquireTime": "2026-12-01T12:00:00.000000Z",
        "renewTime": "2026-12-01T12:00:00.000000Z",
    }
    assert seen is None


def test_a_lease_held_by_another_is_waited_for_a_lease_duration_from_when_it_was_first_seen() -> None:
    held = record("b", version="7", transitions=3)
    decision, seen = decide(held, me="a", now=100.0, wall=WALL, seen=None, timing=TIMING)
    assert decision == Wait("b", 115.0)
    assert seen == Seen("7", 100.0)
    # Reading the same version again does not restart the wait; its renewTime (any clock) is never compared.
    later = WALL + timedelta(days=365)
    decision, seen = decide(held, me="a", now=114.9, wall=later, seen=seen, timing=TIMING)
    assert decision == Wait("b", 115.0)
    decision, seen = decide(held, me="a", now=115.0, wall=later, seen=seen, timing=TIMING)
    assert isinstance(decision, Write) and decision.action == "acquire" and decision.takeover
    assert decision.base == "7" and decision.record.transitions == 4 and decision.record.holder == "a"
    assert decision.record.acquire_time == later


def test_a_renewed_lease_restarts_the_wait() -> None:
    _, seen = decide(record("b", version="7"), me="a", now=100.0, wall=WALL, seen=None, timing=TIMING)
    decision, seen = decide(record("b", version="8"), me="a", now=112.0, wall=WALL, seen=seen, timing=TIMING)
    assert decision == Wait("b", 127.0) and seen == Seen("8", 112.0)


def test_the_holder_s_own_duration_is_waited_not_the_waiter_s() -> None:
    decision, _ = decide(record("b", duration=40), me="a", now=100.0, wall=WALL, seen=None, timing=TIMING)
    assert decision == Wait("b", 140.0)


def test_the_holder_renews_keeping_its_acquire_time_and_transitions() -> None:
    held = record("a", version="9", transitions=2)
    later = WALL + timedelta(seconds=2)
    decision, _ = decide(held, me="a", now=50.0, wall=later, seen=Seen("9", 48.0), timing=TIMING)
    assert isinstance(decision, Write)
    assert (decision.action, decision.base, decision.takeover, decision.hold_until) == (
        "renew",
        "9",
        False,
        60.0,
    )
    assert decision.record.acquire_time == WALL and decision.record.renew_time == later
    assert decision.record.transitions == 2


def test_a_released_lease_is_taken_at_once_and_counts_a_transition() -> None:
    released = release(record("b", transitions=5), "b", WALL)
    assert released is not None
    assert released.spec()["holderIdentity"] == "" and released.duration_seconds == RELEASED_DURATION_SECONDS
    assert released.transitions == 5
    decision, _ = decide(
        LeaseRecord("8", "", 1, WALL, WALL, 5), me="a", now=0.0, wall=WALL, seen=None, timing=TIMING
    )
    assert isinstance(decision, Write) and decision.action == "acquire" and not decision.takeover
    assert decision.record.transitions == 6


def test_only_the_holder_releases() -> None:
    assert release(record("b"), "a", WALL) is None


def test_a_lease_is_read_from_the_api_object() -> None:
    lease = {
        "metadata": {"name": "x", "resourceVersion": "42"},
        "spec": {
            "holderIdentity": "pod-1_abc",
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-12-01T12:00:00.000000Z",
            "renewTime": "2026-12-01T12:00:02.500000Z",
            "leaseTransitions": 3,
        },
    }
    read = LeaseRecord.read(lease)
    assert read == LeaseRecord("42", "pod-1_abc", 15, WALL, WALL + timedelta(seconds=2.5), 3)
    assert read.spec() == lease["spec"]
    assert LeaseRecord.read({"metadata": {"resourceVersion": "1"}, "spec": {}}) == LeaseRecord("1")


def test_leadership_ends_at_the_hold_deadline() -> None:
    assert leads(110.0, 109.999) and not leads(110.0, 110.0) and not leads(None, 0.0)


@pytest.mark.parametrize(
    ("timing", "drift", "problem"),
    [
        (Timing(15, 15, 2), 0.0, "renew deadline must be shorter"),
        (Timing(15, 10, 2), 0.2, "renew deadline must be shorter"),
        (Timing(15, 2, 2), 0.0, "1.2 retry periods"),
        (Timing(15, 10, 0), 0.0, "retry period must be positive"),
    ],
)
def test_durations_that_cannot_work_are_refused(timing: Timing, drift: float, problem: str) -> None:
    assert any(problem in found for found in timing.problems(drift))
    assert Timing().problems(DRIFT) == []


# ---- the model: never two leaders -------------------------------------------------------------------------


@dataclass
class Request:
    kind: str  # "get", "create", "update"
    base: str | None = None
    body: LeaseRecord | None = None
    decision: Write | None = None
    releasing: bool = False
    applied: bool = False
    answer: object = None  # for a get: the record or None; for a write: the new version or None (refused)


@dataclass
class Replica:
    name: str
    clock: float
    seen: Seen | None = None
    hold_until: float | None = None
    request: Request | None = None
    crashed: bool = False
    stopping: bool = False  # stopped acting; releases on its next round
    stopped: bool = False
    partitioned: bool = False  # cut off from the API server: its requests are dropped
    led_at: list[float] = field(default_factory=list)


@dataclass
class Store:
    """A Lease on a linearizable API server: conditional writes, a new resourceVersion each."""

    lease: LeaseRecord | None = None
    revision: int = 0

    def apply(self, request: Request) -> object:
        if request.kind == "get":
            return self.lease
        assert request.body is not None
        if request.kind == "create":
            if self.lease is not None:
                return None  # 409 AlreadyExists
        elif self.lease is None or self.lease.version != request.base:
            return None  # 404 or 409 Conflict
        self.revision += 1
        self.lease = LeaseRecord(
            str(self.revision),
            request.body.holder,
            request.body.duration_seconds,
            request.body.acquire_time,
            request.body.renew_time,
            request.body.transitions,
        )
        return self.lease.version


class World:
    def __init__(self, clocks: list[float], timing: Timing = TIMING) -> None:
        self.timing = timing
        self.now = 0.0
        self.store = Store()
        self.replicas = [Replica(f"r{i}", offset) for i, offset in enumerate(clocks)]
        self.acquisitions = 0
        self.generation = 0

    def leaders(self) -> list[str]:
        return [r.name for r in self.replicas if not r.crashed and leads(r.hold_until, r.clock)]

    def advance(self, seconds: float, rates: list[float]) -> None:
        self.now += seconds
        for replica, rate in zip(self.replicas, rates, strict=True):
            replica.clock += seconds * rate

    def send(self, replica: Replica) -> None:
        """A round: read the Lease (or, stopping, read it to release it)."""
        if replica.request is None and not replica.crashed and not replica.stopped:
            replica.request = Request("get", releasing=replica.stopping)

    def apply(self, replica: Replica) -> None:
        request = replica.request
        if request is not None and replica.partitioned:
            replica.request = None  # dropped on the way: never applied, the replica sees an error
        elif request is not None and not request.applied:
            request.applied, request.answer = True, self.store.apply(request)
            if replica.crashed:
                replica.request = None  # it was on the wire when the replica died; nobody hears the answer

    def deliver(self, replica: Replica, lost: bool) -> None:
        request = replica.request
        if request is None or not request.applied or replica.crashed:
            return
        replica.request = None
        wall = WALL + timedelta(seconds=self.now)
        if request.kind == "get":
            if lost:
                return
            lease = request.answer if isinstance(request.answer, LeaseRecord) else None
            if request.releasing:
                released = release(lease, replica.name, wall) if lease is not None else None
                replica.stopped = True
                if released is not None and lease is not None:
                    replica.request = Request("update", lease.version, released)
                return
            decision, replica.seen = decide(
                lease, me=replica.name, now=replica.clock, wall=wall, seen=replica.seen, timing=self.timing
            )
            if isinstance(decision, Write):
                kind = "create" if decision.base is None else "update"
                replica.request = Request(kind, decision.base, decision.record, decision)
            return
        if lost or request.answer is None or request.decision is None:
            return  # refused, or applied without the replica hearing it: no longer hold than before
        replica.seen = Seen(str(request.answer), replica.clock)
        if replica.stopping or not leads(request.decision.hold_until, replica.clock):
            return
        was_leading = leads(replica.hold_until, replica.clock)
        replica.hold_until = request.decision.hold_until
        if not was_leading:
            others = [name for name in self.leaders() if name != replica.name]
            assert not others, f"{replica.name} leads at {self.now:.3f} while {others} still lead"
            replica.led_at.append(self.now)
            self.acquisitions += 1

    def stop(self, replica: Replica) -> None:
        """SIGTERM: stop acting at once, then release on the next round."""
        replica.stopping, replica.hold_until = True, None

    def crash(self, replica: Replica) -> None:
        replica.crashed, replica.hold_until = True, None

    def restart(self, index: int) -> None:
        """A new replica in the place of a crashed or stopped one: a new identity, the same clock; the old
        one's request, if it was on the wire, may still be applied."""
        old = self.replicas[index]
        if old.request is not None and not old.request.applied:
            self.store.apply(old.request)
        self.generation += 1
        self.replicas[index] = Replica(f"r{index}.{self.generation}", old.clock)


REPLICAS = 3
# Weighted towards steps (a request sent, applied, answered) and whole rounds, so that rounds complete and
# leaders change; a replica may be cut off (its requests dropped) and reconnected; a crashed or stopped
# replica comes back as a new one (a new pod: a new identity) at its next step.
KINDS = ["step"] * 8 + ["round"] * 4 + ["advance"] * 6 + ["lose"] * 2 + ["partition"] * 2 + ["crash", "stop"]
RATES = (1 - DRIFT, 1.0, 1 + DRIFT)  # the extremes are the adversary's best; each step picks one per replica
operations = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, REPLICAS - 1), st.integers(0, 80)),
    min_size=150,
    max_size=400,
)


def run(world: World, steps: list[tuple[str, int, int]]) -> None:
    for kind, index, amount in steps:
        replica = world.replicas[index]
        if kind == "advance":  # 0 to 8 s of real time, each replica's clock at one of the RATES
            pattern = [RATES[(amount // 3**i) % 3] for i in range(REPLICAS)]
            world.advance(amount / 10, pattern)
        elif kind == "step":  # the replica's next move: send a request, have it applied, hear the answer
            if replica.crashed or replica.stopped:
                world.restart(index)
            elif replica.request is None:
                world.send(replica)
            elif not replica.request.applied:
                world.apply(replica)
            else:
                world.deliver(replica, lost=False)
        elif kind == "round":
            _round(world, replica)
        elif kind == "partition":  # cut off, or reconnected
            replica.partitioned = not replica.partitioned
        elif kind == "lose":
            world.apply(replica)
            world.deliver(replica, lost=True)
        elif kind == "crash":
            world.crash(replica)
        elif kind == "stop":
            world.stop(replica)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    clocks=st.lists(st.floats(-1e6, 1e6), min_size=REPLICAS, max_size=REPLICAS),
    steps=operations,
)
def test_never_two_leaders_under_any_interleaving_with_drift_within_the_bound(
    clocks: list[float], steps: list[tuple[str, int, int]]
) -> None:
    world = World(clocks)
    run(world, steps)
    assert len(world.leaders()) <= 1
    transitions = world.store.lease.transitions if world.store.lease is not None else 0
    event(f"leaderships begun: {min(world.acquisitions, 4)}")
    event(f"transitions: {min(transitions, 3)}")


def _round(world: World, replica: Replica) -> None:
    """One read-decide-write round with prompt answers."""
    world.send(replica)
    world.apply(replica)
    world.deliver(replica, lost=False)
    world.apply(replica)
    world.deliver(replica, lost=False)


def test_the_model_finds_two_leaders_when_clocks_drift_beyond_the_bound() -> None:
    """The checker can fail: a leader whose clock runs slow and a standby whose clock runs fast."""
    world = World([0.0, 0.0])
    leader, standby = world.replicas
    _round(world, leader)
    _round(world, standby)  # sees the leader's version: waits
    world.advance(9.0, [0.6, 1.4])  # leader counts 5.4 s, standby 12.6 s
    with pytest.raises(AssertionError, match="still lead"):
        world.advance(2.0, [0.6, 1.4])
        _round(world, standby)


def test_a_standby_takes_over_a_crashed_leader_a_lease_duration_after_its_last_renewal_was_seen() -> None:
    world = World([0.0, 500.0])
    leader, standby = world.replicas
    _round(world, leader)
    _round(world, standby)
    for _ in range(5):  # the leader renews every retry period; the standby keeps waiting
        world.advance(2.0, [1.0, 1.0])
        _round(world, leader)
        _round(world, standby)
    assert world.leaders() == ["r0"]
    world.crash(leader)
    world.advance(14.0, [1.0, 1.0])
    _round(world, standby)
    assert world.leaders() == []
    world.advance(1.0, [1.0, 1.0])
    _round(world, standby)
    assert world.leaders() == ["r1"]
    assert world.store.lease is not None and world.store.lease.transitions == 1


def test_a_released_lease_is_taken_at_the_next_round() -> None:
    world = World([0.0, 0.0])
    leader, standby = world.replicas
    _round(world, leader)
    _round(world, standby)
    world.stop(leader)
    _round(world, leader)  # reads, then writes the release
    assert world.store.lease is not None and world.store.lease.holder == ""
    _round(world, standby)
    assert world.leaders() == ["r1"]


def test_a_leader_that_cannot_renew_stops_at_its_renew_deadline() -> None:
    world = World([0.0])
    (leader,) = world.replicas
    _round(world, leader)
    world.advance(9.99, [1.0])
    assert world.leaders() == ["r0"]
    world.advance(0.02, [1.0])
    assert world.leaders() == []


def test_a_leader_cut_off_has_stopped_acting_before_a_standby_takes_over() -> None:
    world = World([0.0, -42.0])
    leader, standby = world.replicas
    _round(world, leader)
    leader.partitioned = True
    _round(world, standby)  # sees the leader's version at once
    for _ in range(4):  # the leader's renewals are dropped
        world.advance(2.0, [1.0, 1.0])
        _round(world, leader)
    assert world.leaders() == ["r0"]
    world.advance(2.01, [1.0, 1.0])  # 10.01 s: past its renew deadline
    assert world.leaders() == []
    world.advance(4.9, [1.0, 1.0])
    _round(world, standby)  # 14.91 s after it saw the version: still waits
    assert world.leaders() == []
    world.advance(0.1, [1.0, 1.0])
    _round(world, standby)
    assert world.leaders() == ["r1"]
