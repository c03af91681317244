"""QuotaPools: dispatches that share one upstream quota, judged together (design section 5).

Two rules, as pure functions over plain data:

- **Exhaustion is shared.** When one dispatch of a pool stops with `QuotaExhausted` and a reset time, the
  pool records it (`status.exhaustedUntil`, the latest reset reported); no dispatch of the pool starts a new
  attempt before then. They wait `Requeued` (reason `QuotaPoolExhausted`) instead of each discovering the
  exhaustion by starting, hitting the limit and stopping. Running sessions are left alone: they meet the
  limit themselves and their quota guard decides.
- **`maxConcurrent` bounds running sessions**, admitted in creation order (then name), so the oldest
  dispatch waiting for a slot gets the next one. A dispatch holds a slot from the moment its attempt's pod
  is created until the attempt ends. The others wait `Pending` (reason `QuotaPoolFull`).
- **Resumptions are paced** (`resumesPerSecond`): a member waiting for a reset is given a `requeueAt` second
  that fewer than that many other members hold (`resume_at`), the earliest at or after its own, so the
  members do not all start in the second the quota resets, hitting the upstream API and the Kubernetes API
  at once, and each one's `requeueAt` says when its next attempt starts (within the operator's create
  rate). A member keeps the second it was given.

`gate(pool, members, me, now)` says whether `me` may start an attempt now, and carries the seconds the other
members hold; `counts(members)` is the pool's
status; `next_admitted(pool, members)` names the waiting dispatches a freed slot should wake, so the shell
wakes at most as many dispatches as there are free slots, not the whole pool.

A dispatch whose pool does not exist (never created, or deleted) is not held back: deleting a pool
releases its dispatches, and the gate says so (`missing`), for the dispatch's status and Events.

Deliberately not here: reading or writing pools (the controller), what a dispatch does while it waits
(`lifecycle`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from fleetdispatch.api.models import QuotaPoolSpec

# The default of `spec.resumesPerSecond` (one definition: the model's; the CRD's agrees: test_api_contract).
RESUMES_PER_SECOND: int = QuotaPoolSpec.model_fields["resumes_per_second"].default


@dataclass(frozen=True)
class Pool:
    name: str
    max_concurrent: int | None = None
    exhausted_until: datetime | None = None
    resumes_per_second: int = RESUMES_PER_SECOND


@dataclass(frozen=True)
class Member:
    """One dispatch of a pool as the gate sees it."""

    name: str
    created: str  # creationTimestamp (RFC 3339 sorts as text) then name: the admission order
    running: bool  # holds a slot: its attempt's pod exists and the attempt has not ended
    waiting: bool  # wants to start an attempt (not terminal, not suspended, not holding a slot)
    requeued: bool = False
    resume_at: datetime | None = None  # the `requeueAt` it holds while it waits Requeued


@dataclass(frozen=True)
class Gate:
    pool: str
    missing: bool = False
    exhausted_until: datetime | None = None  # set while the pool's quota is exhausted
    full: bool = False  # no free slot for this dispatch (maxConcurrent)
    max_concurrent: int | None = None
    resumes_per_second: int = RESUMES_PER_SECOND
    resumes: Mapping[datetime, int] = field(default_factory=dict)  # the other members' requeueAt seconds

    @property
    def open(self) -> bool:
        return self.missing or (self.exhausted_until is None and not self.full)


def _order(member: Member) -> tuple[str, str]:
    return (member.created, member.name)


def next_admitted(pool: Pool, members: Iterable[Member]) -> list[str]:
    """The waiting dispatches that the pool's free slots admit now, oldest first."""
    members = list(members)
    if pool.max_concurrent is None:
        return sorted((m.name for m in members if m.waiting), key=lambda n: n)
    free = pool.max_concurrent - sum(m.running for m in members)
    if free <= 0:
        return []
    waiting = sorted((m for m in members if m.waiting), key=_order)
    return [m.name for m in waiting[:free]]


def gate(
    pool: Pool | None,
    pool_name: str,
    members: Iterable[Member],
    me: str,
    now: datetime,
    *,
    resumes: Mapping[datetime, int] | None = None,
) -> Gate:
    """May dispatch `me` of pool `pool_name` start an attempt now? `pool` is None when it does not exist.
    `resumes`: the requeueAt seconds the other members hold (by default counted from `members`; the
    controller keeps them counted, and passes the members only for `maxConcurrent`)."""
    if pool is None:
        return Gate(pool_name, missing=True)
    members = list(members)
    rate, held = pool.resumes_per_second, held_seconds(members, me) if resumes is None else resumes
    if pool.exhausted_until is not None and now < pool.exhausted_until:
        return Gate(
            pool_name,
            exhausted_until=pool.exhausted_until,
            max_concurrent=pool.max_concurrent,
            resumes_per_second=rate,
            resumes=held,
        )
    if pool.max_concurrent is None:
        return Gate(pool_name, resumes_per_second=rate, resumes=held)
    others = [m for m in members if m.name != me]
    candidate = Member(me, next((m.created for m in members if m.name == me), ""), False, True)
    admitted = next_admitted(pool, [*others, candidate])
    return Gate(
        pool_name,
        full=me not in admitted,
        max_concurrent=pool.max_concurrent,
        resumes_per_second=rate,
        resumes=held,
    )


def held_seconds(members: Iterable[Member], me: str) -> dict[datetime, int]:
    """How many members other than `me` hold each `requeueAt` second."""
    return dict(Counter(m.resume_at for m in members if m.name != me and m.resume_at is not None))


def resume_at(gate: Gate, earliest: datetime) -> datetime:
    """The first whole second from `earliest` on that fewer than the pool's `resumesPerSecond` other
    members hold as their `requeueAt`."""
    moment = earliest.replace(microsecond=0)
    try:
        if moment < earliest:
            moment += timedelta(seconds=1)
        while gate.resumes.get(moment, 0) >= gate.resumes_per_second:
            moment += timedelta(seconds=1)
    except OverflowError:  # past year 9999: a clock or a kubelet may report any date
        pass
    return moment


@dataclass(frozen=True)
class Counts:
    running: int
    waiting: int
    requeued: int


def counts(members: Iterable[Member]) -> Counts:
    members = list(members)
    return Counts(
        running=sum(m.running for m in members),
        waiting=sum(m.waiting and not m.requeued for m in members),
        requeued=sum(m.requeued for m in members),
    )
