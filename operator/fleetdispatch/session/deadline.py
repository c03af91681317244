"""The deadline policy: from what the probes saw, decide whether a session lives on, and until when.

`decide(config, state, sample, now) -> (state, judgement)` is a pure function: the supervisor's loop
measures (`probes`) and acts (signals, files), this module only judges. One attempt's rules:

- Activity in a poll interval is any session process above `cpu_percent_threshold` percent of one core, an
  ESTABLISHED connection to an `api_endpoints` entry, or output (a session process wrote bytes, or an
  `output_paths` file changed size). The first sighting of a process only primes its baseline, because a
  counter without an earlier reading says nothing about this interval.
- CPU share is CPU time over the monotonic time that really elapsed since the previous sample, so a late
  poll (a loaded node, a slow scan) dilutes the share instead of inflating it.
- When active: `deadline = max(deadline, min(now + 2 * poll, start + deadline_seconds +
  max_extension_seconds))`. Extension follows `now`, never shrinks the deadline and never passes the cap,
  so a session that is always busy is still stopped at the cap (the original tool extended from its first
  deadline, and so only once).
- The deadline passing stops the session with `DeadlineExceeded`; no output for `idle_output_seconds`
  stops it with `IdleTimeout` (0 disables it). The two timers are separate: an open API connection or CPU
  keeps the deadline moving but is not output, so a client idling on an open connection is still stopped.
  When both are due, the deadline wins, as in the original tool.
- The idle timer starts when the first session process is seen, because nothing can write before the
  session container starts (an image pull may take longer than the idle limit); the deadline counts from
  the supervisor's start. A restarted supervisor continues the attempt (`resumed_state`): the deadline it
  had published, under the cap of the attempt's start.

Time: every instant here is on the monotonic clock the caller passes in, so a wall clock stepped backwards
or forwards (NTP, a suspended VM) neither extends nor kills. The shell converts to epoch seconds only to
express an instant (the `deadline` file, the outcome, the Lease), with one offset captured at start
(`WallClock`): the deadline it publishes is the one it enforces, and a later clock step does not move it.

The configuration it judges by (`SupervisorConfig`) and the supervisor's command line are in `config`.

Deliberately not here: reading `/proc`, clocks, sleeping, signals, files, HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from fleetdispatch.session import protocol
from fleetdispatch.session.config import SupervisorConfig

ActivityReason = Literal["cpu", "api-connection", "output"]
StopReason = Literal["DeadlineExceeded", "IdleTimeout"]

ProcessKey = tuple[int, int]
"""A process as (pid, start time in clock ticks since boot): unique even when the pid is reused."""


@dataclass(frozen=True)
class Counters:
    """Cumulative counters of one process; `write_chars` is None when its `/proc/PID/io` is unreadable."""

    cpu_seconds: float
    write_chars: int | None = None


@dataclass(frozen=True)
class Sample:
    """What the probes saw in one poll."""

    processes: Mapping[ProcessKey, Counters] = field(default_factory=dict)
    api_connection: bool = False
    output_sizes: Mapping[str, int] = field(default_factory=dict)
    """Sizes of the `output_paths` files that exist; a missing file counts as empty."""


@dataclass(frozen=True)
class State:
    """One attempt's judgement so far; instants are monotonic seconds."""

    start: float
    deadline: float
    last_sample: float | None = None
    baselines: Mapping[ProcessKey, Counters] = field(default_factory=dict)
    output_sizes: Mapping[str, int] | None = None
    session_seen: bool = False
    last_activity: float | None = None
    activity_reason: ActivityReason | None = None
    last_output: float | None = None


@dataclass(frozen=True)
class Continue:
    """The session lives on; `extended_from` is the previous deadline when this poll moved it."""

    extended_from: float | None = None


@dataclass(frozen=True)
class Stop:
    """The session must be stopped, and why, with the figures behind the judgement."""

    reason: StopReason
    deadline: float
    cap: float
    last_activity: float | None
    activity_reason: ActivityReason | None
    last_output: float | None
    idle_seconds: float | None = None


Judgement = Continue | Stop
"""What the policy rules for one poll."""


def initial_state(config: SupervisorConfig, now: float) -> State:
    """The state at the supervisor's start: the deadline is the initial budget."""
    return State(start=now, deadline=now + config.deadline_seconds)


def resumed_state(config: SupervisorConfig, start: float, deadline: float) -> State:
    """The state of a restarted supervisor: the attempt began at `start`, its deadline (as published in the
    `deadline` file) is `deadline`, never past the cap that `start` sets, whoever wrote the file."""
    return State(start=start, deadline=min(deadline, start + config.cap_seconds))


def cap(config: SupervisorConfig, state: State) -> float:
    """The latest instant the deadline may ever reach."""
    return state.start + config.cap_seconds


def next_check(config: SupervisorConfig, state: State) -> float:
    """The earliest instant a decision could change without new activity, so the loop can wake for it."""
    due = state.deadline
    if config.idle_output_seconds and state.last_output is not None:
        due = min(due, state.last_output + config.idle_output_seconds)
    return due


def _activity(
    config: SupervisorConfig, state: State, sample: Sample, now: float
) -> tuple[ActivityReason | None, bool]:
    """The reason this interval counts as active (None if it does not), and whether it produced output."""
    elapsed = None if state.last_sample is None else now - state.last_sample
    busy = wrote = False
    for key, counters in sample.processes.items():
        before = state.baselines.get(key)
        if before is None:
            continue
        if elapsed is not None and elapsed > 0:
            busy = busy or (counters.cpu_seconds - before.cpu_seconds) / elapsed * 100 > (
                config.cpu_percent_threshold
            )
        if counters.write_chars is not None and before.write_chars is not None:
            wrote = wrote or counters.write_chars > before.write_chars
    if state.output_sizes is not None:
        wrote = wrote or any(
            sample.output_sizes.get(path, 0) != state.output_sizes.get(path, 0)
            for path in config.output_paths
        )
    if wrote:
        return "output", True
    if busy:
        return "cpu", False
    if sample.api_connection:
        return "api-connection", False
    return None, False


def decide(config: SupervisorConfig, state: State, sample: Sample, now: float) -> tuple[State, Judgement]:
    """Judge one sample taken at `now` (monotonic seconds); returns the new state and what to do."""
    reason, output = _activity(config, state, sample, now)
    first_sighting = not state.session_seen and bool(sample.processes)
    last_output = now if output or first_sighting else state.last_output
    deadline = state.deadline
    extended_from = None
    if reason is not None:
        extended = max(deadline, min(now + 2 * config.poll_seconds, cap(config, state)))
        if extended > deadline:
            extended_from, deadline = deadline, extended
    state = State(
        start=state.start,
        deadline=deadline,
        last_sample=now,
        baselines=dict(sample.processes),
        output_sizes=dict(sample.output_sizes),
        session_seen=state.session_seen or bool(sample.processes),
        last_activity=now if reason is not None else state.last_activity,
        activity_reason=reason if reason is not None else state.activity_reason,
        last_output=last_output,
    )

    def stop(why: StopReason, idle_seconds: float | None = None) -> Stop:
        return Stop(
            reason=why,
            deadline=state.deadline,
            cap=cap(config, state),
            last_activity=state.last_activity,
            activity_reason=state.activity_reason,
            last_output=state.last_output,
            idle_seconds=idle_seconds,
        )

    if now >= state.deadline:
        return state, stop(protocol.DEADLINE_EXCEEDED)
    if config.idle_output_seconds and last_output is not None:
        idle = now - last_output
        if idle >= config.idle_output_seconds:
            return state, stop(protocol.IDLE_TIMEOUT, idle)
    return state, Continue(extended_from=extended_from)


@dataclass(frozen=True)
class WallClock:
    """Expresses monotonic instants as epoch seconds, with the offset between the clocks taken once."""

    offset: float

    @classmethod
    def capture(cls, monotonic_now: float, wall_now: float) -> WallClock:
        return cls(offset=wall_now - monotonic_now)

    def epoch(self, monotonic_instant: float) -> float:
        return monotonic_instant + self.offset
