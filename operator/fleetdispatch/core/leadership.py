"""Leader election on a coordination.k8s.io/v1 Lease: the decision of one replica, as a pure function.

The semantics are client-go's `leaderelection` package: a replica reads the Lease, `decide`s, and carries out
the decision with a write conditional on the `resourceVersion` it read (optimistic concurrency: a write
based on a stale read is refused with 409 and decided again from a fresh read).

- A Lease nobody holds (none yet, or `holderIdentity` empty after a release) is acquired at once.
- A Lease this replica holds is renewed (every retry period); `leaseTransitions` and `acquireTime` are kept.
- A Lease another replica holds is waited for: expired only `leaseDurationSeconds` (the holder's own, from
  the record) after this replica first *saw* its current version, on this replica's own clock. The record's
  `renewTime` is never compared with this replica's clock (it is only for people), so the clocks of the
  replicas need not agree at all. Taking it over counts a transition.
- A leader leads until `renew_deadline` after it *sent* its last successful write (`Hold.until`); one that
  cannot renew by then stops acting. client-go counts its deadline from the start of a renewal round, which
  begins a retry period after the previous success; counting from the last success's send time is
  stricter, and makes the bound below hold whatever the network's delays.
- A release (client-go's ReleaseOnCancel) writes an empty holder and a one-second duration, after the
  replica has stopped acting, so a standby takes over at its next retry.

**Why there are never two leaders** (tests/unit/test_leadership.py checks it under arbitrary interleavings):
time is each replica's own monotonic clock; clocks may be offset by any amount and run at any rate within
``1 ± drift`` of real time, as long as ``renew_deadline * (1 + drift) < lease_duration * (1 - drift)``
(with the defaults 10 s and 15 s: any drift under 20 %). Requests may be delayed, reordered or lose their
response. Say A's latest successful write before time T was sent at s_A: A leads at most until
s_A + renew_deadline (its clock), i.e. real s_A + RD/(1-drift). Any later write by another replica B is
conditional on a version written after A's write; B wrote it either (a) after waiting the lease duration
from the moment it saw a version held by someone else (at or after A's write: real time at least
s_A + LD/(1+drift), later than A's end), or (b) on a version B itself wrote or a released one, both of which
by induction come after A's end, or after A stopped acting. So B leads only after A's end.

Deliberately not here: reading and writing the Lease, sleeping, signals (the shell, `controller.leadership`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from fleetdispatch.session import protocol

# What client-go writes on a release: a holder of nobody, for one second.
RELEASED_DURATION_SECONDS = 1


@dataclass(frozen=True)
class Timing:
    """client-go's three durations, in seconds; `problems` says what must hold between them (as the
    operator's settings check)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def problems(self, drift: float = 0.0) -> list[str]:
        """What is wrong with these durations (empty: usable), for a clock drift bound `drift`."""
        found = []
        if self.retry_period <= 0:
            found.append("the retry period must be positive")
        if self.renew_deadline * (1 + drift) >= self.lease_duration * (1 - drift):
            found.append("the renew deadline must be shorter than the lease duration")
        if self.retry_period * 1.2 >= self.renew_deadline:  # client-go's JitterFactor
            found.append("the renew deadline must be longer than 1.2 retry periods")
        return found


@dataclass(frozen=True)
class LeaseRecord:
    """A Lease's spec as read, and its resourceVersion (the condition of the next write)."""

    version: str
    holder: str = ""
    duration_seconds: int = 0
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0

    @classmethod
    def read(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        duration = spec.get("leaseDurationSeconds")
        transitions = spec.get("leaseTransitions")
        return cls(
            version=str((lease.get("metadata") or {}).get("resourceVersion") or ""),
            holder=str(spec.get("holderIdentity") or ""),
            duration_seconds=duration if isinstance(duration, int) else 0,
            acquire_time=protocol.parse_time(spec.get("acquireTime")),
            renew_time=protocol.parse_time(spec.get("renewTime")),
            transitions=transitions if isinstance(transitions, int) else 0,
        )

    def spec(self) -> dict[str, Any]:
        """The Lease spec that writes this record."""
        spec: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration_seconds,
            "leaseTransitions": self.transitions,
        }
        for field, value in (("acquireTime", self.acquire_time), ("renewTime", self.renew_time)):
            if value is not None:
                spec[field] = protocol.format_micro_time(value)
        return spec


@dataclass(frozen=True)
class Seen:
    """What a replica remembers of the Lease: the version last read, and when (its clock) it first saw it."""

    version: str
    since: float


@dataclass(frozen=True)
class Write:
    """Acquire or renew: write `record`, creating the Lease (`base` None) or updating version `base`.

    Once the write succeeds, the replica leads until `hold_until` (sent at `now`, plus the renew deadline)."""

    action: Literal["acquire", "renew"]
    record: LeaseRecord
    base: str | None
    hold_until: float
    takeover: bool  # another replica held it: a transition


@dataclass(frozen=True)
class Wait:
    """Another replica holds the Lease: try again later. `until` is when its hold runs out unless renewed."""

    holder: str
    until: float


Decision = Write | Wait


def decide(
    lease: LeaseRecord | None, *, me: str, now: float, wall: datetime, seen: Seen | None, timing: Timing
) -> tuple[Decision, Seen | None]:
    """What replica `me` does, having read `lease` (None: there is none) at `now` (its monotonic clock,
    taken after the read and before any write) and `wall` (the time written into the record, for people).

    Returns the decision and what the replica remembers of the Lease from now on."""
    hold_until = now + timing.renew_deadline
    duration = max(1, round(timing.lease_duration))
    if lease is None:
        record = LeaseRecord("", me, duration, wall, wall, 0)
        return Write("acquire", record, None, hold_until, takeover=False), None
    if seen is None or seen.version != lease.version:
        seen = Seen(lease.version, now)
    if lease.holder == me:
        record = replace(lease, duration_seconds=duration, renew_time=wall)
        return Write("renew", record, lease.version, hold_until, takeover=False), seen
    expires = seen.since + max(lease.duration_seconds, 1)
    if lease.holder and now < expires:
        return Wait(lease.holder, expires), seen
    record = LeaseRecord("", me, duration, wall, wall, lease.transitions + 1)
    return Write("acquire", record, lease.version, hold_until, takeover=bool(lease.holder)), seen


def leads(hold_until: float | None, now: float) -> bool:
    """Whether a replica whose last successful write gave it `hold_until` still leads at `now`."""
    return hold_until is not None and now < hold_until


def release(lease: LeaseRecord, me: str, wall: datetime) -> LeaseRecord | None:
    """The record that gives up the Lease (client-go's ReleaseOnCancel); None when `me` does not hold it."""
    if lease.holder != me:
        return None
    return LeaseRecord("", "", RELEASED_DURATION_SECONDS, wall, wall, lease.transitions)
