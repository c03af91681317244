"""The work queue the controller's workers take dispatches from, its rate limiter, and its workers.

client-go's work queue (`k8s.io/client-go/util/workqueue`), in asyncio:

- **`add`** puts a key on the queue once: a key already waiting is not added again, a key is never handed to
  two workers at once, and a key added while a worker has it gets exactly one more pass when that worker is
  `done`. Level-triggered: a pass reads the latest state, so any number of events coalesce into one.
- **`add_rate_limited`** retries a key that failed after its backoff, `Backoff.delay(failures)`: per-item
  exponential (base, 2 base, 4 base ...) up to a cap, computed with bounded exponents so that no failure count
  overflows. `forget` resets the count once a pass succeeds.
- **The backoff holds.** While a key waits out its backoff, `add` (a watch event) and `add_after` do not
  bring it forward: it is worked on when the backoff ends, once, however many events came meanwhile.
- **`add_after`** is the key's one pending wake-up (a timer): setting it again replaces it.
- **`Workers`** take keys off the queue; a worker never dies of an exception: it reports the error, the key
  is retried with its backoff, and the worker takes the next key.
- **Progress** (`WorkQueue.progress`, `Progress.stalled`): a key that has waited, ready, longer than
  `STALL_SECONDS` while no worker finished anything means the workers are stuck; the liveness probe says so.

Time is the event loop's monotonic clock, or an injected `Clock` (tests drive one by hand). Deliberately not
here: what a key is or what working on it means (the reconciler), and any Kubernetes knowledge.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

logger = logging.getLogger("fleetdispatch.controller")

K = TypeVar("K", bound=Hashable)

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0
# Generous: one reconcile makes a few API requests of at most 60 s each, so a slow API server alone never
# looks like stuck workers; only workers that finish nothing for this long do.
STALL_SECONDS = 300.0


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic time and timers on it: an asyncio event loop is one."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[..., object], /, *args: Any) -> Timer: ...


@dataclass(frozen=True)
class Backoff:
    """client-go's per-item exponential failure rate limiter: `base * 2**(failures - 1)`, at most `cap`."""

    base: float = BACKOFF_BASE_SECONDS
    cap: float = BACKOFF_CAP_SECONDS

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap < math.inf):
            raise ValueError(f"a backoff needs 0 < base <= cap < inf, not {self.base}, {self.cap}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` consecutive failures (none after none)."""
        if failures <= 0:
            return 0.0
        # Past the doublings that stay within the cap the delay is the cap: no power of two is computed that
        # could overflow (2.0 ** 1024 raises OverflowError), nor a ratio (cap / base) that could be infinite.
        if failures - 1 > self.doublings:
            return self.cap
        return math.ldexp(self.base, failures - 1)

    @property
    def doublings(self) -> int:
        """The most doublings of `base` that stay within `cap`, exactly: from the floats' binary exponents."""
        base_mantissa, base_exponent = math.frexp(self.base)
        cap_mantissa, cap_exponent = math.frexp(self.cap)
        return cap_exponent - base_exponent - (1 if cap_mantissa < base_mantissa else 0)


@dataclass(frozen=True)
class Progress:
    """A snapshot of the queue for the liveness probe (times on the queue's clock)."""

    now: float
    ready: int  # keys waiting for a worker
    working: int  # keys a worker has
    oldest_ready_since: float | None  # when the key that has waited longest became ready
    last_finished: float  # when a worker last finished a key (or the queue started)
    waking: int = 0  # pending wake-ups (timers and backoffs)
    workers: int = 0  # how many workers should run
    workers_alive: int = 0

    def stalled(self, threshold: float = STALL_SECONDS) -> str | None:
        """Why the workers are not making progress, or None while they are.

        A backlog is not a stall: workers that keep finishing keys are alive however long the queue. An
        empty queue is not either, however long ago the last key was finished.
        """
        if self.workers_alive < self.workers:
            return f"{self.workers - self.workers_alive} of {self.workers} workers have ended"
        if self.oldest_ready_since is None:
            return None
        waited, idle = self.now - self.oldest_ready_since, self.now - self.last_finished
        if waited > threshold and idle > threshold:
            return (
                f"a key has waited {waited:.0f} s for a worker and no worker finished anything for "
                f"{idle:.0f} s ({self.working} working, {self.ready} ready)"
            )
        return None

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "ready": self.ready,
            "working": self.working,
            "waking": self.waking,
            "workers": self.workers_alive,
            "oldestReadySeconds": None
            if self.oldest_ready_since is None
            else round(self.now - self.oldest_ready_since, 3),
            "sinceLastFinishedSeconds": round(self.now - self.last_finished, 3),
        }


class WorkQueue(Generic[K]):
    """Keys to work on, each at most once at a time; see the module docstring for the rules."""

    def __init__(self, backoff: Backoff | None = None, clock: Clock | None = None) -> None:
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        # When each key on `_ready` became ready, in the same order (a deque gives its memory back as keys
        # are taken; a dict keeps its largest table).
        self._ready_times: deque[float] = deque()
        self._dirty: set[K] = set()  # keys that need a pass: ready, or waiting for their worker to finish
        self._working: set[K] = set()
        self._wakes: dict[K, Timer] = {}
        self._failures: dict[K, int] = {}
        self._backing_off: dict[K, float] = {}  # key -> when its backoff ends; its wake is then pending
        self._last_finished = self._now()

    def _now(self) -> float:
        return self.clock.time()

    @property
    def clock(self) -> Clock:
        if self._clock is None:
            self._clock = asyncio.get_running_loop()
        return self._clock

    def __len__(self) -> int:
        return self._ready.qsize()

    # --- adding --------------------------------------------------------------------------------------

    def add(self, key: K) -> None:
        """Work on `key` soon: once, however often it is added, and not before its backoff ends."""
        if key in self._dirty or key in self._backing_off:
            return
        self._dirty.add(key)
        if key not in self._working:
            self._push(key)

    def add_after(self, key: K, seconds: float) -> None:
        """Work on `key` in `seconds`, replacing its pending wake-up; never before its backoff ends."""
        when = self._now() + max(seconds, 0.0)
        backoff_ends = self._backing_off.get(key)
        if backoff_ends is not None:
            when = max(when, backoff_ends)
        elif seconds <= 0:
            self.cancel_wake(key)
            self.add(key)
            return
        self._set_wake(key, when)

    def add_rate_limited(self, key: K) -> float:
        """`key` failed: work on it again after its backoff (returned, in seconds); until then, it waits."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = self.backoff.delay(failures)
        ends = self._now() + delay
        self._backing_off[key] = ends
        self._set_wake(key, ends)
        return delay

    def forget(self, key: K) -> None:
        """`key` succeeded: its next failure backs off from the start again."""
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def cancel_wake(self, key: K) -> None:
        """Drop `key`'s pending wake-up; the end of a backoff is kept (the key must be worked on then)."""
        backoff_ends = self._backing_off.get(key)
        if backoff_ends is not None:
            self._set_wake(key, backoff_ends)
            return
        timer = self._wakes.pop(key, None)
        if timer is not None:
            timer.cancel()

    def discard(self, key: K) -> None:
        """`key`'s object is gone: no wake-up, no backoff, no failures (a pass already due still runs)."""
        self._backing_off.pop(key, None)
        self._failures.pop(key, None)
        self.cancel_wake(key)

    def close(self) -> None:
        """Cancel every pending wake-up."""
        for timer in self._wakes.values():
            timer.cancel()
        self._wakes.clear()

    # --- working -------------------------------------------------------------------------------------

    async def get(self) -> K:
        """The next key to work on; the caller must call `done` with it."""
        key = await self._ready.get()
        self._ready_times.popleft()
        self._dirty.discard(key)
        self._working.add(key)
        return key

    def done(self, key: K) -> None:
        """The pass over `key` ended: if it was added meanwhile, it is ready again (after any backoff)."""
        self._working.discard(key)
        self._last_finished = self._now()
        if key in self._dirty:
            if key in self._backing_off:
                self._dirty.discard(key)  # its backoff's wake-up adds it
            else:
                self._push(key)

    def progress(self, workers: int = 0, workers_alive: int = 0) -> Progress:
        oldest = self._ready_times[0] if self._ready_times else None
        return Progress(
            now=self._now(),
            ready=len(self),
            working=len(self._working),
            oldest_ready_since=oldest,
            last_finished=self._last_finished,
            waking=len(self._wakes),
            workers=workers,
            workers_alive=workers_alive,
        )

    # --- internals -----------------------------------------------------------------------------------

    def _push(self, key: K) -> None:
        self._ready_times.append(self._now())
        self._ready.put_nowait(key)

    def _set_wake(self, key: K, when: float) -> None:
        timer = self._wakes.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._wakes[key] = self.clock.call_at(when, self._woken, key)  # no closure: one per dispatch adds up

    def _woken(self, key: K) -> None:
        self._wakes.pop(key, None)
        # No wake-up is ever set before a backoff's end, so the backoff is over.
        self._backing_off.pop(key, None)
        self.add(key)


class Workers(Generic[K]):
    """`count` tasks that take keys off `queue` and `process` them, until `stop`.

    A pass that raises is reported to `failed(key, error, retry_in)` and retried with the key's backoff; one
    that returns resets the key's failures. `finished(seconds)` is told how long every pass took.
    """

    def __init__(
        self,
        queue: WorkQueue[K],
        process: Callable[[K], Awaitable[None]],
        count: int,
        *,
        failed: Callable[[K, BaseException, float], None] = lambda key, error, delay: None,
        finished: Callable[[float], None] = lambda seconds: None,
        name: str = "worker",
    ) -> None:
        self.queue, self.count, self.name = queue, count, name
        self._process, self._failed, self._finished = process, failed, finished
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for number in range(self.count):
            self._tasks.append(asyncio.create_task(self._work(), name=f"{self.name}-{number}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.queue.close()

    @property
    def alive(self) -> int:
        return sum(not task.done() for task in self._tasks)

    def progress(self) -> Progress:
        return self.queue.progress(workers=len(self._tasks), workers_alive=self.alive)

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self._one(key)
            except Exception:  # the bookkeeping itself failed (a reporting hook): keep working
                logger.exception("a worker's bookkeeping failed for %s", key)

    async def _one(self, key: K) -> None:
        started = time.perf_counter()
        try:
            await self._process(key)
        except asyncio.CancelledError as error:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # the worker is being stopped
            self._failed(key, error, self.queue.add_rate_limited(key))  # a cancellation from inside the pass
        except Exception as error:
            self._failed(key, error, self.queue.add_rate_limited(key))
        else:
            self.queue.forget(key)
        finally:
            self.queue.done(key)
            self._finished(time.perf_counter() - started)
