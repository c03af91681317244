"""The deadline policy, exhaustively: extension follows now, never shrinks, is capped; idle output is its own
timer; first sightings only prime; CPU share is judged over the real interval. The configuration and its
command line are in test_supervisor_config.py."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetdispatch.session.config import SupervisorConfig
from fleetdispatch.session.deadline import (
    Continue,
    Counters,
    Sample,
    State,
    Stop,
    WallClock,
    cap,
    decide,
    initial_state,
    next_check,
)

CONFIG = SupervisorConfig(
    deadline_seconds=100,
    max_extension_seconds=200,
    idle_output_seconds=50,
    poll_seconds=10,
    cpu_percent_threshold=10,
    dispatch="ns/d",
    attempt="1",
)
NO_IDLE = dataclasses.replace(CONFIG, idle_output_seconds=0)
SESSION = (41, 1000)
START = 5000.0


def sample(cpu: float = 0.0, wchar: int | None = 0, api: bool = False, **outputs: int) -> Sample:
    return Sample(processes={SESSION: Counters(cpu, wchar)}, api_connection=api, output_sizes=outputs)


def run(config: SupervisorConfig, samples: list[tuple[float, Sample]]) -> tuple[State, list[object]]:
    state = initial_state(config, START)
    judgements: list[object] = []
    for now, seen in samples:
        state, judgement = decide(config, state, seen, now)
        judgements.append(judgement)
    return state, judgements


def test_the_initial_deadline_is_the_budget_and_nothing_happens_before_it() -> None:
    state = initial_state(CONFIG, START)
    assert state.deadline == START + 100
    assert cap(CONFIG, state) == START + 300
    state, judgement = decide(CONFIG, state, sample(), START + 99)
    assert judgement == Continue()
    assert state.deadline == START + 100


def test_the_first_sighting_of_a_process_only_primes_it() -> None:
    # A process first seen with a lot of CPU time and bytes written: that history is not this interval's.
    _, judgements = run(CONFIG, [(START + 10, sample(cpu=9.0, wchar=10**6))])
    assert judgements == [Continue()]
    # A second process appearing later is primed too, while the first one stays idle.
    newcomer = Sample(processes={SESSION: Counters(9.0, 10**6), (42, 2000): Counters(50.0, 10**7)})
    state, judgements = run(CONFIG, [(START + 10, sample(cpu=9.0, wchar=10**6)), (START + 20, newcomer)])
    assert judgements == [Continue(), Continue()]
    assert state.last_activity is None


def test_cpu_above_the_threshold_extends_from_now() -> None:
    state, judgements = run(NO_IDLE, [(START + 10, sample(cpu=1.0)), (START + 95, sample(cpu=10.0))])
    assert judgements[1] == Continue(extended_from=START + 100)
    assert state.deadline == START + 95 + 2 * 10
    assert (state.last_activity, state.activity_reason) == (START + 95, "cpu")


def test_extension_follows_now_not_the_first_deadline() -> None:
    # The original tool's first bug: it extended from the first deadline it saw, so only once.
    samples = [(START + t, sample(cpu=t)) for t in range(10, 200, 10)]
    state, judgements = run(NO_IDLE, samples)
    assert all(isinstance(d, Continue) for d in judgements)
    assert state.deadline == START + 190 + 20
    moved = [d for d in judgements if isinstance(d, Continue) and d.extended_from is not None]
    assert len(moved) >= 10


def test_cpu_share_is_judged_over_the_interval_that_really_elapsed() -> None:
    # 1.5 s of CPU: 15 % of a 10 s poll (active), but only 7.5 % of a 20 s late poll (not active).
    on_time, _ = run(CONFIG, [(START + 10, sample(cpu=0)), (START + 20, sample(cpu=1.5))])
    late, _ = run(CONFIG, [(START + 10, sample(cpu=0)), (START + 30, sample(cpu=1.5))])
    assert on_time.activity_reason == "cpu"
    assert late.activity_reason is None and late.deadline == START + 100


def test_an_established_api_connection_extends() -> None:
    state, _ = run(CONFIG, [(START + 10, sample()), (START + 95, sample(api=True))])
    assert (state.deadline, state.activity_reason) == (START + 115, "api-connection")


def test_written_bytes_and_output_files_are_output() -> None:
    config = dataclasses.replace(CONFIG, output_paths=("transcript",))
    wrote, _ = run(config, [(START + 10, sample(wchar=100)), (START + 20, sample(wchar=150))])
    assert (wrote.last_output, wrote.activity_reason) == (START + 20, "output")
    grew, _ = run(config, [(START + 10, sample(transcript=5)), (START + 20, sample(transcript=9))])
    assert (grew.last_output, grew.activity_reason) == (START + 20, "output")
    created, _ = run(config, [(START + 10, sample()), (START + 20, sample(transcript=1))])
    assert created.last_output == START + 20
    same, _ = run(config, [(START + 10, sample(transcript=5)), (START + 20, sample(transcript=5))])
    assert same.last_output == START + 10 and same.activity_reason is None
    unreadable, _ = run(config, [(START + 10, sample(wchar=None)), (START + 20, sample(wchar=None))])
    assert unreadable.last_output == START + 10


def test_an_always_active_session_is_stopped_at_the_cap_within_one_poll() -> None:
    state = initial_state(CONFIG, START)
    now, cpu = START, 0.0
    while True:
        now += CONFIG.poll_seconds
        cpu += CONFIG.poll_seconds  # one full core, and output, and a connection: as active as it gets
        state, judgement = decide(
            CONFIG, state, Sample({SESSION: Counters(cpu, int(cpu))}, api_connection=True), now
        )
        if isinstance(judgement, Stop):
            break
        assert state.deadline <= cap(CONFIG, state)
    assert judgement.reason == "DeadlineExceeded"
    assert judgement.deadline == judgement.cap == START + 300
    assert START + 300 <= now < START + 300 + CONFIG.poll_seconds


def test_max_extension_zero_disables_extension() -> None:
    config = dataclasses.replace(CONFIG, max_extension_seconds=0)
    samples = [(START + t, sample(cpu=t, api=True)) for t in range(10, 100, 10)]
    state, judgements = run(config, [*samples, (START + 100, sample(cpu=100, api=True))])
    assert state.deadline == START + 100
    assert isinstance(judgements[-1], Stop) and judgements[-1].reason == "DeadlineExceeded"


def test_idle_output_is_judged_apart_from_an_open_api_connection() -> None:
    # The original tool's eighth bug: a client idling on an open connection must not live forever.
    samples = [(START + t, sample(api=True)) for t in range(10, 70, 10)]
    state, judgements = run(CONFIG, samples)
    assert state.deadline > START + 100 - 1  # the connection does move the deadline...
    stop = judgements[-1]
    assert isinstance(stop, Stop) and stop.reason == "IdleTimeout"  # ...but is not output
    assert stop.last_output == START + 10 and stop.idle_seconds == 50
    assert stop.activity_reason == "api-connection"


def test_idle_zero_disables_the_idle_stop() -> None:
    config = dataclasses.replace(CONFIG, idle_output_seconds=0)
    _, judgements = run(config, [(START + t, sample()) for t in range(10, 100, 10)])
    assert all(d == Continue() for d in judgements)
    assert next_check(config, initial_state(config, START)) == START + 100


def test_the_idle_timer_starts_when_the_session_appears() -> None:
    # The session container starts after the sidecar; nothing can write output before it exists.
    empty = Sample()
    state, judgements = run(CONFIG, [(START + t, empty) for t in range(10, 90, 10)])
    assert all(d == Continue() for d in judgements) and state.last_output is None
    state, judgement = decide(CONFIG, state, sample(), START + 90)
    assert judgement == Continue() and state.last_output == START + 90


def test_the_deadline_wins_when_both_are_due() -> None:
    config = dataclasses.replace(CONFIG, idle_output_seconds=90)
    _, judgements = run(config, [(START + 10, sample()), (START + 100, sample())])
    assert isinstance(judgements[-1], Stop) and judgements[-1].reason == "DeadlineExceeded"


def test_next_check_is_the_earlier_of_deadline_and_idle_limit() -> None:
    state, _ = run(CONFIG, [(START + 10, sample())])
    assert next_check(CONFIG, state) == START + 60
    state, _ = run(CONFIG, [(START + 10, sample()), (START + 70, sample(wchar=1))])
    assert next_check(CONFIG, state) == START + 100


def test_each_run_has_its_own_baselines() -> None:
    # The original tool's second bug: a module-global CPU baseline shared between concurrent dispatches.
    first = initial_state(CONFIG, START)
    second = initial_state(CONFIG, START)
    first, _ = decide(CONFIG, first, sample(cpu=0), START + 10)
    second, _ = decide(CONFIG, second, sample(cpu=5), START + 20)  # primes only its own baseline
    first, _ = decide(CONFIG, first, sample(cpu=5), START + 20)
    assert first.activity_reason == "cpu"
    assert second.activity_reason is None


def test_wall_clock_offset_is_taken_once() -> None:
    clock = WallClock.capture(monotonic_now=100.0, wall_now=1_800_000_000.0)
    assert clock.epoch(160.0) == 1_800_000_060.0


# -- properties -----------------------------------------------------------------------------------------

intervals = st.floats(min_value=0.0, max_value=40.0, allow_nan=False)
events = st.tuples(
    intervals,
    st.floats(min_value=0, max_value=60, allow_nan=False),  # CPU seconds spent in the interval
    st.integers(min_value=0, max_value=3),  # bytes written
    st.booleans(),  # an API connection
    st.booleans(),  # the process is replaced by a new one (first sighting)
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(events, max_size=80),
    st.integers(min_value=1, max_value=200),
    st.integers(min_value=0, max_value=400),
    st.integers(min_value=0, max_value=100),
    st.floats(min_value=0.5, max_value=30),
)
def test_the_deadline_never_shrinks_never_passes_the_cap_and_stops_are_due(
    steps: list[tuple[float, float, int, bool, bool]],
    deadline_seconds: int,
    max_extension_seconds: int,
    idle_output_seconds: int,
    poll_seconds: float,
) -> None:
    config = dataclasses.replace(
        CONFIG,
        deadline_seconds=deadline_seconds,
        max_extension_seconds=max_extension_seconds,
        idle_output_seconds=idle_output_seconds,
        poll_seconds=poll_seconds,
    )
    state = initial_state(config, START)
    now, cpu, wchar, pid = START, 0.0, 0, 1
    for interval, spent, written, connected, replaced in steps:
        now += interval
        cpu, wchar = cpu + spent, wchar + written
        if replaced:
            pid += 1
        before = state
        state, judgement = decide(
            config, state, Sample({(pid, 0): Counters(cpu, wchar)}, api_connection=connected), now
        )
        assert state.deadline >= before.deadline
        assert state.deadline <= cap(config, state)
        if state.deadline > before.deadline:
            assert state.deadline <= now + 2 * poll_seconds
            assert state.activity_reason is not None and state.last_activity == now
        if isinstance(judgement, Stop):
            if judgement.reason == "DeadlineExceeded":
                assert now >= state.deadline
            else:
                assert state.last_output is not None
                assert idle_output_seconds and now - state.last_output >= idle_output_seconds
            break
        assert now < state.deadline
        assert (
            not idle_output_seconds
            or state.last_output is None
            or (now - state.last_output < idle_output_seconds)
        )
