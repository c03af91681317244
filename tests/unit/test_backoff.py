"""`backoff`: exponential, capped, with jitter that depends only on the seed."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetdispatch.api.models import Backoff
from fleetdispatch.core.backoff import delay, requeue_jitter


def test_without_jitter_the_delay_doubles_up_to_the_cap() -> None:
    b = Backoff(base_seconds=10, max_seconds=100, jitter_percent=0)
    assert [delay(b, n, "uid/1") for n in range(1, 8)] == [10, 20, 40, 80, 100, 100, 100]


def test_the_defaults() -> None:
    b = Backoff(jitter_percent=0)
    assert (b.base_seconds, b.max_seconds) == (10, 600)
    assert delay(b, 1, "s") == 10
    assert delay(b, 7, "s") == 600


@pytest.mark.parametrize("failures", [0, -3])
def test_no_failure_yet_counts_as_the_first(failures: int) -> None:
    b = Backoff(base_seconds=7, max_seconds=100, jitter_percent=0)
    assert delay(b, failures, "s") == 7


@pytest.mark.parametrize("failures", [31, 32, 33, 64, 10**6])
def test_a_huge_failure_count_is_the_cap_without_overflow(failures: int) -> None:
    b = Backoff(base_seconds=3600, max_seconds=86400, jitter_percent=0)
    assert delay(b, failures, "s") == 86400


def test_jitter_is_deterministic_per_seed_and_spreads_seeds() -> None:
    b = Backoff(base_seconds=100, max_seconds=1000, jitter_percent=50)
    assert delay(b, 1, "uid-a/1") == delay(b, 1, "uid-a/1")
    spread = {delay(b, 1, f"uid-{i}/1") for i in range(50)}
    assert len(spread) > 10
    assert min(spread) >= 100
    assert max(spread) <= 150


def test_requeue_jitter() -> None:
    b = Backoff(base_seconds=60, max_seconds=600, jitter_percent=20)
    values = {requeue_jitter(b, f"uid-{i}/3") for i in range(50)}
    assert min(values) >= 0
    assert max(values) <= 12
    assert len(values) > 3
    assert requeue_jitter(b, "uid-1/3") == requeue_jitter(b, "uid-1/3")
    assert requeue_jitter(Backoff(jitter_percent=0), "uid-1/3") == 0


backoffs = st.builds(
    lambda base, extra, jitter: Backoff(base_seconds=base, max_seconds=base + extra, jitter_percent=jitter),
    st.integers(1, 3600),
    st.integers(0, 86400 - 3600),
    st.integers(0, 100),
)


@settings(max_examples=200, deadline=None)
@given(b=backoffs, failures=st.integers(-2, 100), seed=st.text(max_size=40))
def test_delay_is_bounded(b: Backoff, failures: int, seed: str) -> None:
    d = delay(b, failures, seed)
    assert isinstance(d, int)
    assert b.base_seconds <= d <= math.ceil(b.max_seconds * (1 + b.jitter_percent / 100))
    assert d == delay(b, failures, seed)


@settings(max_examples=200, deadline=None)
@given(b=backoffs, failures=st.integers(1, 60), seed=st.text(max_size=40))
def test_delay_never_shrinks_as_failures_grow(b: Backoff, failures: int, seed: str) -> None:
    assert delay(b, failures, seed) <= delay(b, failures + 1, seed)


@settings(max_examples=200, deadline=None)
@given(b=backoffs, seed=st.text(max_size=40))
def test_requeue_jitter_is_bounded(b: Backoff, seed: str) -> None:
    j = requeue_jitter(b, seed)
    assert isinstance(j, int)
    assert 0 <= j <= math.ceil(b.base_seconds * b.jitter_percent / 100)
