"""QuotaPool bookkeeping: which dispatches are members of which pool, when members are judged again, and the
pool's status (`running`, `waiting`, `requeued`, `exhaustedUntil`), written at most once a second.

- **Membership** follows the cache: a dispatch is a member of the pool its spec names (`moved`, `left`).
- **Judged again only when the gate changed.** A pool's watch event wakes its members only when what gates
  them (`maxConcurrent`, `exhaustedUntil`) changed, not for the counts we wrote ourselves; a member that
  leaves a slot wakes the members the freed slot admits (`changed`).
- **Debounced writes.** The counts are written at most once every `write_seconds` per pool, and only when
  they differ from what the pool shows, so a pool's cost grows with its changes, not with its members
  squared. A reset one member reported (`exhaustedUntil`) is written at once, and once: the members that
  stop next for the same reset do not write it again.
- **One member of a bounded pool at a time** (`lock`): admission reads the members' statuses, so the slot
  a member takes must be in its status before the next member is judged.

Deliberately not here: whether a member may start (that is `core.quota`, which the reconciler asks).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from fleetdispatch.api import names
from fleetdispatch.client.kubeapi import ApiError
from fleetdispatch.controller.cache import Cached, DispatchCache, Key
from fleetdispatch.core import lifecycle, quota
from fleetdispatch.session.protocol import format_time, parse_time

logger = logging.getLogger("fleetdispatch.controller")

POOL_WRITE_SECONDS = 1.0


# Merge-patches a pool's status at the path given: `KubeApi.request("PATCH", ...)` in the operator.
PatchStatus = Callable[[str, dict[str, Any]], Awaitable[Any]]
Plan = tuple[str | None, datetime | None]  # a decided status's phase and requeueAt


def member(name: str, cached: Cached, now: datetime, resume_at: datetime | None = None) -> quota.Member:
    """Dispatch `name` as its pool's gate sees it, from its cached status, holding `resume_at` (the
    book's account of the second it holds, which may be decided and not yet stored)."""
    st = cached.status
    phase, pod, until = st.get("phase"), st.get("podName"), st.get("requeueAt")
    at = parse_time(until) if until is not None else None
    running = phase in lifecycle.IN_FLIGHT and pod is not None and st.get("reason") != "QuotaPoolFull"
    due = at is None or at <= now
    waiting = phase is None or (phase == "Pending" and not running) or (phase in lifecycle.WAITING and due)
    if cached.parsed.spec is not None and cached.parsed.spec.suspend:
        waiting = False
    return quota.Member(name, cached.created, running, waiting, phase == "Requeued", resume_at)


class PoolBook:
    """The pools' members and status writes. `lookup` is kopf's index of the pools (None: no such pool),
    `enqueue` puts a dispatch on the work queue."""

    def __init__(
        self,
        cache: DispatchCache,
        patch_status: PatchStatus,
        lookup: Callable[[Key], quota.Pool | None],
        enqueue: Callable[[Key], None],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        write_seconds: float = POOL_WRITE_SECONDS,
    ) -> None:
        self.cache, self.patch_status, self.lookup, self.enqueue = cache, patch_status, lookup, enqueue
        self.clock, self.write_seconds = clock, write_seconds
        self._members: dict[Key, set[str]] = {}  # (namespace, pool) -> dispatch names
        self._seen: dict[Key, tuple[Any, ...]] = {}  # (gates, counts) of the pool's last watch event
        self._exhausted: dict[Key, datetime] = {}  # resets this operator has recorded
        self._writes: dict[Key, asyncio.TimerHandle] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        self._plans: dict[Key, Plan] = {}  # dispatch -> the phase and requeueAt decided, being written
        # The requeueAt seconds held, counted as they change (a gate reads them without a pass over the
        # members: a pass per reconcile made a pool's cost its members squared).
        self._holding: dict[Key, tuple[Key, datetime]] = {}  # dispatch -> (its pool, the second it holds)
        self._held: dict[Key, Counter[datetime]] = {}  # pool -> how many members hold each second
        self._background: set[asyncio.Task[None]] = set()

    # --- membership ----------------------------------------------------------------------------------

    def moved(self, key: Key, before: str | None, after: str | None) -> None:
        """Dispatch `key`'s spec named pool `before` and now names `after` (either may be None)."""
        namespace, name = key
        if before is not None and before != after:
            self._members.get((namespace, before), set()).discard(name)
        if after is not None:
            self._members.setdefault((namespace, after), set()).add(name)

    def left(self, key: Key, pool: str) -> None:
        """Dispatch `key` of `pool` was deleted: its slot, if it held one, is free."""
        self._members.get((key[0], pool), set()).discard(key[1])
        self._plans.pop(key, None)
        self._hold(key, None, None)
        self.changed((key[0], pool))

    def planned(self, key: Key, pool: str, phase: str | None, requeue_at: datetime | None) -> None:
        """The status just decided for member `key` of `pool`, until the cache holds it (`written`): the
        members decided meanwhile see the `requeueAt` second it took (the pacing of resumptions)."""
        self._plans[key] = (phase, requeue_at)
        self._hold(key, (key[0], pool), requeue_at if phase == "Requeued" else None)

    def written(self, key: Key, cached: Cached | None) -> None:
        """The cache now holds `cached` for `key`: the second it holds follows it, unless a status decided
        since is still being written (a plan the cache does not show yet)."""
        if cached is None or cached.pool is None:
            self._plans.pop(key, None)
            self._hold(key, None, None)
            return
        phase, at = cached.status.get("phase"), parse_time(cached.status.get("requeueAt"))
        plan = self._plans.get(key)
        if plan is not None:
            if plan != (phase, at):
                return
            del self._plans[key]
        self._hold(key, (key[0], cached.pool), at if phase == "Requeued" else None)

    def _hold(self, key: Key, pool_key: Key | None, at: datetime | None) -> None:
        before = self._holding.pop(key, None)
        if before is not None:
            counts = self._held[before[0]]
            counts[before[1]] -= 1
            if counts[before[1]] <= 0:
                del counts[before[1]]
        if pool_key is not None and at is not None:
            self._holding[key] = (pool_key, at)
            self._held.setdefault(pool_key, Counter())[at] += 1

    def resumes(self, pool_key: Key, key: Key) -> dict[datetime, int]:
        """The requeueAt seconds the members of the pool other than `key` hold, and how many each."""
        held = dict(self._held.get(pool_key, ()))
        mine = self._holding.get(key)
        if mine is not None and mine[0] == pool_key:
            held[mine[1]] -= 1
            if held[mine[1]] <= 0:
                del held[mine[1]]
        return held

    def member_names(self, pool_key: Key) -> set[str]:
        return set(self._members.get(pool_key, ()))

    def members(self, pool_key: Key, now: datetime) -> list[quota.Member]:
        """The pool's members as its gate sees them (members not in the cache are skipped)."""
        found = []
        for name in self._members.get(pool_key, ()):
            key = (pool_key[0], name)
            cached = self.cache.get(key)
            if cached is not None:
                holding = self._holding.get(key)
                found.append(member(name, cached, now, holding[1] if holding is not None else None))
        return found

    def lock(self, pool_key: Key) -> asyncio.Lock:
        return self._locks.setdefault(pool_key, asyncio.Lock())

    # --- what changed --------------------------------------------------------------------------------

    def saw(self, pool_key: Key, body: Mapping[str, Any], deleted: bool = False) -> None:
        """A QuotaPool's watch event: its members are judged again only if what gates them changed."""
        spec, status = body.get("spec") or {}, body.get("status") or {}
        gates = None if deleted else (spec.get("maxConcurrent"), status.get("exhaustedUntil"))
        counts = (status.get("running"), status.get("waiting"), status.get("requeued"))
        previous = self._seen.get(pool_key)
        if deleted:
            self._seen.pop(pool_key, None)
        else:
            self._seen[pool_key] = (gates, counts)
        if previous is None or previous[0] != gates:
            for name in sorted(self._members.get(pool_key, ())):
                self.enqueue((pool_key[0], name))
        if not deleted:
            self.schedule_write(pool_key)

    def changed(self, pool_key: Key) -> None:
        """A member's phase changed: wake the dispatches a freed slot admits, and recount the pool. A pool
        without `maxConcurrent` has no slots: its waiting members wait for their own time or the pool's."""
        pool = self.lookup(pool_key)
        if pool is not None and pool.max_concurrent is not None:
            for name in quota.next_admitted(pool, self.members(pool_key, self.clock())):
                self.enqueue((pool_key[0], name))
        self.schedule_write(pool_key)

    # --- the pool's status ---------------------------------------------------------------------------

    def schedule_write(self, pool_key: Key) -> None:
        """Write the pool's counts in `write_seconds`, unless a write is already due."""
        if pool_key in self._writes:
            return
        loop = asyncio.get_running_loop()

        def write() -> None:
            self._writes.pop(pool_key, None)
            task = loop.create_task(self.write(pool_key))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        self._writes[pool_key] = loop.call_later(self.write_seconds, write)

    def status(
        self, pool_key: Key, pool: quota.Pool, exhausted: tuple[datetime, str] | None = None
    ) -> dict[str, Any] | None:
        """The status to write now, or None when the pool shows it already. `exhausted` is a reset a member
        reported, with the member's name; it is remembered at once."""
        c = quota.counts(self.members(pool_key, self.clock()))
        status: dict[str, Any] = {"running": c.running, "waiting": c.waiting, "requeued": c.requeued}
        known = max(
            (t for t in (pool.exhausted_until, self._exhausted.get(pool_key)) if t is not None), default=None
        )
        if exhausted is not None and (known is None or exhausted[0] > known):
            # Remembered at once: the members that stop next for the same reset do not write it again.
            self._exhausted[pool_key] = exhausted[0]
            status["exhaustedUntil"] = format_time(exhausted[0])
            status["exhaustedBy"] = exhausted[1]
        elif exhausted is not None:
            return None  # already recorded; the counts follow with the debounced write
        seen = self._seen.get(pool_key)
        if (
            "exhaustedUntil" not in status
            and seen is not None
            and seen[1] == (c.running, c.waiting, c.requeued)
        ):
            return None
        return status

    async def write(self, pool_key: Key, exhausted: tuple[datetime, str] | None = None) -> None:
        """Write the pool's status if it changed; a pool deleted meanwhile is no error, others are logged."""
        pool = self.lookup(pool_key)
        if pool is None:
            return
        status = self.status(pool_key, pool, exhausted)
        if status is None:
            return
        path = names.QUOTA_POOLS.path(pool_key[0], pool_key[1], "status")
        try:
            await self.patch_status(path, {"status": status})
        except ApiError as error:
            if error.status != 404:
                logger.warning("cannot update quota pool %s/%s: %s", *pool_key, error)

    def states(self) -> list[tuple[Key, quota.Counts, datetime | None]]:
        """Each pool seen, its counts now and its reset (for the metrics; the status write is debounced)."""
        found = []
        for pool_key in list(self._seen):
            pool = self.lookup(pool_key)
            if pool is None:
                continue
            resets = (t for t in (pool.exhausted_until, self._exhausted.get(pool_key)) if t is not None)
            counts = quota.counts(self.members(pool_key, self.clock()))
            found.append((pool_key, counts, max(resets, default=None)))
        return found

    def close(self) -> None:
        """Cancel the writes not yet due."""
        for handle in self._writes.values():
            handle.cancel()
        self._writes.clear()
