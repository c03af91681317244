"""Test support: a monotonic clock that moves only when a test says so, with timers on it.

`ManualClock` is what an asyncio event loop offers the work queue (`time`, `call_at`), so the queue's rules
can be checked at exact instants without sleeping: `advance` runs the timers that fall due, in order.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Callable
from typing import Any


class _Timer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A monotonic clock that moves only when told to, with timers on it (the `Clock` protocol)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._timers: list[tuple[float, int, _Timer, Callable[[], object]]] = []  # a heap, by time
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., object], /, *args: Any) -> _Timer:
        timer = _Timer()
        heapq.heappush(self._timers, (when, next(self._order), timer, functools.partial(callback, *args)))
        return timer

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self._timers and self._timers[0][0] <= end:
            when, _, timer, callback = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not timer.cancelled:
                callback()
        self.now = end

    def pending(self) -> list[float]:
        return sorted(when for when, _, timer, _ in self._timers if not timer.cancelled)
