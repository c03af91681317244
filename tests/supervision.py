"""Test doubles for driving the supervisor's loop without waiting: a clock that moves only when the loop
sleeps, a scripted session probe and a recording heartbeat, and the `Supervisor` wired to them.

Shared by the loop's tests and the heartbeat's; real session processes are in `sessions`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from fleetdispatch.session.config import SupervisorConfig
from fleetdispatch.session.deadline import Counters, ProcessKey, Sample
from fleetdispatch.session.heartbeat import LeaseStatus
from fleetdispatch.session.supervisor import Beat, Supervisor

WALL_START = 1_800_000_000.0
"""The wall clock when `Clock` starts (its monotonic clock reads 100 then)."""
SESSION: ProcessKey = (41, 1000)
"""The one session process `ScriptedProbe` shows."""


class Clock:
    """Monotonic time that moves only when the loop sleeps; the wall clock may be stepped by the test."""

    def __init__(self) -> None:
        self.now = 100.0
        self.wall_step = 0.0
        self.on_sleep: list[Callable[[], object]] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_START + (self.now - 100.0) + self.wall_step

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for hook in self.on_sleep:
            hook()


class ScriptedProbe:
    """One session process using `cpu_share` of a core; it exits on the first signal it gets (on the first
    KILL only, if it `ignores_term`), and the test may end it by setting `alive`."""

    def __init__(self, clock: Clock, cpu_share: float = 0.0, ignores_term: bool = False) -> None:
        self.clock = clock
        self.cpu_share = cpu_share
        self.ignores_term = ignores_term
        self.alive = True
        self.signals: list[tuple[float, int]] = []
        # How long ago the session started, as `SessionProbe.session_age` tells (None: unknown).
        self.age: float | None = None

    def sample(self) -> Sample:
        if not self.alive:
            return Sample()
        return Sample({SESSION: Counters(cpu_seconds=self.cpu_share * self.clock.now, write_chars=0)})

    def session_processes(self) -> list[ProcessKey]:
        return [SESSION] if self.alive else []

    def session_age(self) -> float | None:
        return self.age if self.alive else None

    def signal(self, key: ProcessKey, signum: int) -> bool:
        if not self.alive:
            return False
        self.signals.append((self.clock.now, signum))
        if signum == signal.SIGKILL or not self.ignores_term:
            self.alive = False
        return True


class Beats:
    """A heartbeat that records every status the loop hands over."""

    def __init__(self) -> None:
        self.statuses: list[LeaseStatus] = []

    def update(self, status: LeaseStatus) -> None:
        self.statuses.append(status)


def scripted_supervisor(
    config: SupervisorConfig,
    clock: Clock,
    probe: ScriptedProbe,
    *,
    heartbeat: Beat | None = None,
    events: list[dict[str, Any]] | None = None,
) -> Supervisor:
    """The supervisor on `clock` and `probe`; its log lines go to `events` (as dicts), if given."""
    log = events if events is not None else []
    return Supervisor(
        config,
        probe=probe,
        heartbeat=heartbeat,
        log=lambda event, **fields: log.append({"event": event, **fields}),
        monotonic=clock.monotonic,
        wall=clock.wall,
        sleep=clock.sleep,
    )
