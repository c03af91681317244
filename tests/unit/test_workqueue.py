"""The controller's work queue: coalescing, one worker per key, backoff that holds, wake-ups, progress.

Time is a hand-driven clock (`clocks.ManualClock`), so every rule is checked at exact instants without
sleeping. The workers run on a real event loop.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clocks import ManualClock
from fleetdispatch.controller.workqueue import STALL_SECONDS, Backoff, Progress, Workers, WorkQueue


def working_on_a(base: float) -> tuple[ManualClock, WorkQueue[str]]:
    """A queue (backoff from `base` seconds, capped at 300) whose worker has just taken key `a`."""
    clock = ManualClock()
    queue: WorkQueue[str] = WorkQueue(Backoff(base, 300.0), clock)
    queue.add("a")
    ready(queue)
    return clock, queue


def ready(queue: WorkQueue[str]) -> list[str]:
    """Take every ready key off the queue (the caller must `done` them), in order."""

    async def drain() -> list[str]:
        return [await queue.get() for _ in range(len(queue))]

    return asyncio.run(drain())


# --- the backoff -----------------------------------------------------------------------------------------


def test_the_backoff_doubles_from_its_base_up_to_its_cap() -> None:
    backoff = Backoff(base=1.0, cap=300.0)
    assert [backoff.delay(n) for n in range(0, 11)] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300]


def test_a_huge_failure_count_is_the_cap_not_an_overflow() -> None:
    assert Backoff().delay(10**6) == 300.0
    with pytest.raises(OverflowError):
        2.0 ** (10**6 - 1)  # what a naive formula would compute


def test_a_backoff_must_have_a_positive_base_within_a_finite_cap() -> None:
    for base, cap in ((0.0, 1.0), (2.0, 1.0), (1.0, math.inf), (-1.0, 1.0)):
        with pytest.raises(ValueError):
            Backoff(base, cap)


bases = st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False)


@given(bases, bases, st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10**9))
def test_the_backoff_never_exceeds_its_cap_and_grows_with_failures(
    a: float, b: float, failures: int, more: int
) -> None:
    base, cap = min(a, b), max(a, b)
    backoff = Backoff(base, cap)
    delay = backoff.delay(failures)
    assert 0.0 <= delay <= cap
    assert backoff.delay(failures + more) >= delay
    if failures >= 1:
        assert delay >= min(base, cap)


@given(st.floats(min_value=5e-324, max_value=1.7e308), st.integers(min_value=1, max_value=4000))
def test_the_backoff_doubles_exactly_until_it_reaches_the_cap(cap: float, failures: int) -> None:
    backoff = Backoff(5e-324, cap)  # the smallest base: the most doublings a float allows
    delay = backoff.delay(failures)
    if delay < cap:
        assert delay == math.ldexp(5e-324, failures - 1)
    assert backoff.delay(failures + 1) == min(2 * delay, cap)


# --- adding and working --------------------------------------------------------------------------------


def test_adds_of_a_waiting_key_coalesce_into_one_pass() -> None:
    queue: WorkQueue[str] = WorkQueue(clock=ManualClock())
    for key in ("a", "b", "a", "a", "b"):
        queue.add(key)
    assert ready(queue) == ["a", "b"]


def test_a_key_worked_on_is_not_handed_out_again_and_an_add_meanwhile_gives_one_more_pass() -> None:
    queue: WorkQueue[str] = WorkQueue(clock=ManualClock())
    queue.add("a")
    assert ready(queue) == ["a"]
    queue.add("a")
    queue.add("a")
    assert len(queue) == 0  # the worker has it: nobody else gets it
    queue.done("a")
    assert ready(queue) == ["a"]  # exactly one more pass
    queue.done("a")
    assert len(queue) == 0


def test_a_key_not_added_while_worked_on_is_not_worked_on_again() -> None:
    queue: WorkQueue[str] = WorkQueue(clock=ManualClock())
    queue.add("a")
    ready(queue)
    queue.done("a")
    assert len(queue) == 0


# --- backoff on the queue ------------------------------------------------------------------------------


def test_a_failed_key_is_retried_after_its_backoff_which_doubles_until_it_succeeds() -> None:
    clock = ManualClock()
    queue: WorkQueue[str] = WorkQueue(Backoff(1.0, 300.0), clock)
    delays = []
    queue.add("a")
    for _ in range(4):
        ready(queue)
        delays.append(queue.add_rate_limited("a"))
        queue.done("a")
        clock.advance(delays[-1] - 0.001)
        assert len(queue) == 0, "retried before its backoff ended"
        clock.advance(0.001)
        assert len(queue) == 1
    assert delays == [1, 2, 4, 8]
    ready(queue)
    queue.forget("a")  # it succeeded
    queue.done("a")
    assert queue.failures("a") == 0
    queue.add("a")
    ready(queue)
    assert queue.add_rate_limited("a") == 1  # from the start again


def test_an_event_for_a_key_in_backoff_waits_for_the_backoff_then_gives_one_pass() -> None:
    clock, queue = working_on_a(base=1.0)
    queue.add_rate_limited("a")
    queue.add_rate_limited("a")
    queue.add_rate_limited("a")  # the third failure: 4 s
    queue.done("a")
    clock.advance(1.0)
    for _ in range(5):
        queue.add("a")  # watch events during the backoff
    queue.add_after("a", 0.5)  # a wake-up asked for during the backoff
    clock.advance(2.9)
    assert len(queue) == 0
    clock.advance(0.1)
    assert ready(queue) == ["a"]
    queue.done("a")
    clock.advance(100)
    assert len(queue) == 0  # once, however many events came meanwhile


def test_an_event_while_a_key_is_worked_on_and_then_fails_waits_for_the_backoff() -> None:
    clock, queue = working_on_a(base=2.0)
    queue.add("a")  # an event while the pass runs...
    queue.add_rate_limited("a")  # ...and the pass fails
    queue.done("a")
    assert len(queue) == 0
    clock.advance(2.0)
    assert ready(queue) == ["a"]


def test_cancelling_a_wake_up_keeps_the_end_of_a_backoff() -> None:
    clock, queue = working_on_a(base=1.0)
    queue.add_rate_limited("a")
    queue.done("a")
    queue.cancel_wake("a")
    queue.add("a")
    clock.advance(1.0)
    assert ready(queue) == ["a"]  # not lost: the event was held, not dropped


def test_a_discarded_key_has_no_wake_up_no_backoff_and_no_failures() -> None:
    clock, queue = working_on_a(base=1.0)
    queue.add_rate_limited("a")
    queue.done("a")
    queue.discard("a")
    assert queue.failures("a") == 0
    clock.advance(10)
    assert len(queue) == 0
    queue.add("a")  # a new object of the same name: at once
    assert ready(queue) == ["a"]


# --- wake-ups ------------------------------------------------------------------------------------------


def test_a_key_has_one_pending_wake_up_the_last_one_set() -> None:
    clock = ManualClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add_after("a", 10)
    queue.add_after("a", 30)
    assert clock.pending() == [clock.now + 30]
    clock.advance(29)
    assert len(queue) == 0
    clock.advance(1)
    assert ready(queue) == ["a"]
    queue.done("a")
    queue.add_after("a", 5)
    queue.cancel_wake("a")
    clock.advance(10)
    assert len(queue) == 0


def test_a_wake_up_due_now_adds_the_key_at_once() -> None:
    clock = ManualClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add_after("a", 20)
    queue.add_after("a", -1)
    assert ready(queue) == ["a"]
    assert clock.pending() == []


def test_close_cancels_every_wake_up() -> None:
    clock = ManualClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add_after("a", 1)
    queue.add_after("b", 2)
    queue.close()
    clock.advance(5)
    assert len(queue) == 0


# --- progress ------------------------------------------------------------------------------------------


def test_progress_is_stalled_only_when_a_key_waited_and_no_worker_finished_for_the_threshold() -> None:
    def at(now: float, oldest: float | None, finished: float) -> Progress:
        return Progress(now, 1, 1, oldest, finished, workers=2, workers_alive=2)

    assert at(1000, None, 0).stalled(60) is None  # nothing to do: idle, not stuck
    assert at(1000, 900, 990).stalled(60) is None  # a backlog, but workers finish keys
    assert at(1000, 990, 0).stalled(60) is None  # the key has not waited long
    reason = at(1000, 900, 900).stalled(60)
    assert reason is not None and "waited 100 s" in reason
    assert Progress(1000, 0, 0, None, 999, workers=2, workers_alive=1).stalled(60) == (
        "1 of 2 workers have ended"
    )


def test_the_queue_reports_how_long_its_oldest_ready_key_has_waited() -> None:
    clock = ManualClock(now=0.0)
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add("a")
    clock.advance(5)
    queue.add("b")
    clock.advance(STALL_SECONDS)
    progress = queue.progress(workers=1, workers_alive=1)
    assert (progress.ready, progress.oldest_ready_since, progress.last_finished) == (2, 0.0, 0.0)
    assert progress.stalled() is not None
    [first] = asyncio.run(_take(queue, 1))
    queue.done(first)
    progress = queue.progress(workers=1, workers_alive=1)
    assert progress.oldest_ready_since == 5.0
    assert progress.stalled() is None  # a worker just finished one
    assert progress.as_dict()["oldestReadySeconds"] == STALL_SECONDS


async def _take(queue: WorkQueue[str], count: int) -> list[str]:
    return [await queue.get() for _ in range(count)]


# --- workers -------------------------------------------------------------------------------------------


def test_a_worker_survives_a_failing_pass_counts_it_and_the_key_is_retried_with_backoff() -> None:
    failures: list[tuple[str, str, float]] = []
    passes: list[str] = []
    durations: list[float] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue: WorkQueue[str] = WorkQueue(Backoff(0.05, 1.0), loop)

        async def process(key: str) -> None:
            passes.append(key)
            if key == "bad" and passes.count("bad") <= 2:
                raise RuntimeError("the API server is down")
            if key == "cancelled" and passes.count("cancelled") == 1:
                raise asyncio.CancelledError  # from inside the pass (say, a library's timeout)

        workers = Workers(
            queue,
            process,
            1,
            failed=lambda key, error, delay: failures.append((key, str(error), delay)),
            finished=durations.append,
        )
        workers.start()
        for key in ("bad", "good", "cancelled"):
            queue.add(key)
        async with asyncio.timeout(5):
            while passes.count("bad") < 3 or passes.count("cancelled") < 2:
                await asyncio.sleep(0.01)
        assert workers.alive == 1
        assert workers.progress().stalled() is None
        await workers.stop()
        assert workers.alive == 0

    asyncio.run(scenario())
    assert [(key, delay) for key, _, delay in failures] == [("bad", 0.05), ("cancelled", 0.05), ("bad", 0.1)]
    assert failures[0][1] == "the API server is down"
    assert passes[:3] == ["bad", "good", "cancelled"]
    assert len(durations) == len(passes)


def test_a_worker_survives_a_failing_report() -> None:
    passes: list[str] = []

    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(Backoff(0.01, 0.01))

        async def process(key: str) -> None:
            passes.append(key)
            raise RuntimeError("boom")

        def failed(key: str, error: BaseException, delay: float) -> None:
            raise ValueError("the report itself fails")

        workers = Workers(queue, process, 1, failed=failed)
        workers.start()
        queue.add("a")
        async with asyncio.timeout(5):
            while len(passes) < 3:
                await asyncio.sleep(0.005)
        assert workers.alive == 1
        await workers.stop()

    asyncio.run(scenario())


def test_no_two_workers_have_the_same_key_at_once() -> None:
    active: set[str] = set()
    overlaps: list[str] = []
    passes: list[str] = []

    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()

        async def process(key: str) -> None:
            if key in active:
                overlaps.append(key)
            active.add(key)
            passes.append(key)
            await asyncio.sleep(0.02)
            active.discard(key)

        workers = Workers(queue, process, 4)
        workers.start()
        for _ in range(10):
            for key in ("a", "b"):
                queue.add(key)
            await asyncio.sleep(0.005)
        async with asyncio.timeout(5):
            while len(queue) or active:
                await asyncio.sleep(0.01)
        await workers.stop()

    asyncio.run(scenario())
    assert overlaps == []
    assert 2 <= passes.count("a") < 10  # coalesced, yet the events during a pass gave one more
