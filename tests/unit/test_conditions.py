"""`conditions.set_condition`: metav1.Condition semantics (transition time moves only on a status change)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleetdispatch.api.models import Condition
from fleetdispatch.core import conditions
from fleetdispatch.core.conditions import find, set_condition

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_a_new_condition_starts_its_transition_now() -> None:
    result = set_condition([], "Ready", status="False", reason="Pending", message="m", generation=1, now=T0)
    assert result == [
        Condition(
            type="Ready",
            status="False",
            observed_generation=1,
            last_transition_time=T0,
            reason="Pending",
            message="m",
        )
    ]


def test_the_same_status_keeps_the_transition_time_and_refreshes_the_rest() -> None:
    before = set_condition(
        [], "Reconciling", status="True", reason="Pending", message="a", generation=1, now=T0
    )
    after = set_condition(
        before, "Reconciling", status="True", reason="Running", message="b", generation=2, now=T1
    )
    (condition,) = after
    assert condition.last_transition_time == T0
    assert (condition.reason, condition.message, condition.observed_generation) == ("Running", "b", 2)


def test_a_status_change_moves_the_transition_time() -> None:
    before = set_condition([], "Ready", status="False", reason="Running", message="", generation=1, now=T0)
    after = set_condition(
        before, "Ready", status="True", reason="Succeeded", message="", generation=1, now=T1
    )
    assert after[0].last_transition_time == T1
    assert after[0].status == "True"


def test_setting_twice_is_idempotent() -> None:
    once = set_condition(
        [], "Stalled", status="True", reason="InvalidSpec", message="x", generation=3, now=T0
    )
    twice = set_condition(
        once, "Stalled", status="True", reason="InvalidSpec", message="x", generation=3, now=T1
    )
    assert twice == once


def test_other_conditions_are_kept_in_a_stable_order_and_the_input_is_not_changed() -> None:
    foreign = Condition(type="example.com/Audited", status="True", last_transition_time=T0, reason="Done")
    start = [foreign]
    result = start
    for type_ in reversed(conditions.ORDER):
        result = set_condition(
            result, type_, status="False", reason="Pending", message="", generation=1, now=T0
        )
    assert [c.type for c in result] == [*conditions.ORDER, "example.com/Audited"]
    assert start == [foreign]
    assert find(result, "Requeued") is result[3]
    assert find(result, "Missing") is None
    again = set_condition(
        result, "Ready", status="True", reason="Succeeded", message="", generation=1, now=T1
    )
    assert [c.type for c in again] == [c.type for c in result]
    assert result[0].status == "False"
