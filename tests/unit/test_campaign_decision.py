"""The campaign's pure decision (core/campaign.py): creates, deletes, suspends and the status it reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetdispatch.api import names
from fleetdispatch.api.models import (
    FleetCampaignSpec,
    FleetCampaignStatus,
    InvalidSpec,
    Phase,
    parse_campaign_spec,
)
from fleetdispatch.core import campaign as core
from fleetdispatch.core.campaign import Campaign, Member

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PHASES: tuple[Phase | None, ...] = (None, *get_args(Phase))
TEMPLATE = {
    "spec": {
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "session",
                        "image": "x",
                        "command": ["run"],
                        "env": [{"name": "A", "value": "t"}],
                    },
                    {"name": "helper", "image": "y", "command": ["help"]},
                ]
            }
        }
    }
}


def spec(items: list[str], **fields: Any) -> FleetCampaignSpec:
    return parse_campaign_spec({"template": TEMPLATE, "items": [{"name": i} for i in items], **fields})


def decide(
    campaign_spec: FleetCampaignSpec, members: list[Member], status: FleetCampaignStatus | None = None
) -> core.Decision:
    return core.decide(Campaign("c", 3, campaign_spec, status or FleetCampaignStatus()), members, NOW)


def member(item: str, phase: Phase | None, **fields: Any) -> Member:
    return Member(name=f"c-{item}", owned=fields.pop("owned", True), phase=phase, **fields)


def conditions(status: FleetCampaignStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_a_new_campaign_creates_every_item_in_order_and_counts_them_pending() -> None:
    decision = decide(spec(["a", "b", "c"]), [])
    assert [item.name for item in decision.create] == ["a", "b", "c"]
    assert decision.status.counts.total == decision.status.counts.pending == 3
    assert decision.status.phase == "Running"
    assert decision.status.start_time == NOW
    assert conditions(decision.status) == {
        "Ready": ("False", "Running"),
        "Reconciling": ("True", "Running"),
        "Stalled": ("False", "Running"),
    }


def test_parallelism_counts_every_live_dispatch_hand_written_ones_too() -> None:
    members = [
        member("a", "Running"),
        member("b", "Succeeded"),
        Member("by-hand", owned=False, phase="Requeued"),
    ]
    decision = decide(spec(["a", "b", "c", "d", "e"], parallelism=3), members)
    assert [item.name for item in decision.create] == ["c"]
    decision = decide(spec(["a", "b", "c", "d", "e"], parallelism=2), members)
    assert decision.create == ()


def test_a_removed_item_deletes_its_unfinished_dispatch_and_keeps_a_finished_one() -> None:
    members = [member("a", "Running"), member("b", "Succeeded"), member("c", "Failed")]
    decision = decide(spec([]), members)
    assert decision.delete == ("c-a",)
    assert decision.status.counts.total == 2  # b and c are kept, and counted
    assert decision.status.phase == "Running"  # a is still going away
    # Once it is gone, the campaign is finished.
    assert decide(spec([]), members[1:]).status.phase == "Succeeded"


def test_hand_written_dispatches_are_counted_never_deleted_or_suspended() -> None:
    members = [Member("mine", owned=False, phase="Running"), Member("done", owned=False, phase="Succeeded")]
    decision = decide(spec([], suspend=True), members)
    assert decision.delete == () and decision.suspend == ()
    assert (decision.status.counts.total, decision.status.counts.running) == (2, 1)


def test_a_hand_written_dispatch_with_an_items_name_stands_for_that_item() -> None:
    decision = decide(spec(["a"]), [member("a", "Running", owned=False)])
    assert decision.create == ()
    assert decision.status.counts.total == 1


def test_suspend_follows_the_campaign_on_unfinished_owned_dispatches_and_creates_nothing() -> None:
    members = [member("a", "Running"), member("b", "Succeeded"), member("c", "Suspended", suspended=True)]
    decision = decide(spec(["a", "b", "c", "d"], suspend=True), members)
    assert decision.create == ()
    assert decision.suspend == (("c-a", True),)
    assert decision.status.phase == "Suspended"
    assert conditions(decision.status)["Reconciling"] == ("False", "Suspended")
    resumed = decide(spec(["a", "b", "c", "d"]), members)
    assert resumed.suspend == (("c-c", False),)
    assert [item.name for item in resumed.create] == ["d"]


@pytest.mark.parametrize(
    ("max_failed", "failed", "over"),
    [
        (0, 1, True),
        (1, 1, False),
        ("10%", 1, False),
        ("10%", 2, True),
        ("20%", 2, False),
        ("20%", 3, True),
        ("100%", 9, False),
    ],
)
def test_max_failed_as_a_count_or_a_percentage_of_the_total(
    max_failed: int | str, failed: int, over: bool
) -> None:
    members = [member(str(i), "Failed") for i in range(failed)]
    decision = decide(spec([str(i) for i in range(10)], maxFailed=max_failed), members)
    assert (decision.status.phase == "Failed") is over
    assert (decision.create == ()) is over
    if over:
        assert conditions(decision.status)["Stalled"] == ("True", core.MAX_FAILED_EXCEEDED)
        assert "more than maxFailed" in (decision.status.message or "")


def test_finished_within_max_failed_is_ready_with_a_completion_time_kept_across_reconciles() -> None:
    members = [member("a", "Succeeded"), member("b", "Failed")]
    first = decide(spec(["a", "b"], maxFailed=1), members)
    assert first.status.phase == "Succeeded" and first.status.completion_time == NOW
    assert conditions(first.status)["Ready"] == ("True", "Succeeded")
    assert first.status.message == "all 2 dispatches finished: 1 succeeded, 1 failed (of 2)"
    later = core.decide(
        Campaign("c", 3, spec(["a", "b"], maxFailed=1), first.status), members, NOW + timedelta(1)
    )
    assert later.status == first.status
    # A new item reopens it.
    reopened = decide(spec(["a", "b", "c"], maxFailed=1), members, first.status)
    assert reopened.status.completion_time is None and reopened.status.phase == "Running"


def test_failed_campaign_completes_once_its_running_dispatches_end() -> None:
    running = decide(spec(["a", "b"], maxFailed=0), [member("a", "Failed"), member("b", "Running")])
    assert running.status.phase == "Failed" and running.status.completion_time is None
    ended = decide(spec(["a", "b"], maxFailed=0), [member("a", "Failed"), member("b", "Succeeded")])
    assert ended.status.completion_time == NOW


def test_dispatch_for_an_item() -> None:
    campaign_spec = parse_campaign_spec(
        {
            "template": {**TEMPLATE, "metadata": {"labels": {"team": "a"}, "annotations": {"note": "n"}}},
            "items": [{"name": "x", "env": {"A": "item", "B": "2"}}, {"name": "y"}],
            "suspend": True,
        }
    )
    body = core.dispatch_for("c", "uid-1", campaign_spec, campaign_spec.items[0])
    # The bodies share the template's unchanged parts: building the next one changes none of this one.
    other = core.dispatch_for("c", "uid-1", campaign_spec, campaign_spec.items[1])
    other_session = other["spec"]["template"]["spec"]["containers"][0]
    assert other_session["env"][-1] == {"name": "FLEET_ITEM", "value": "y"}
    assert body["metadata"]["name"] == "c-x"
    assert body["metadata"]["labels"] == {"team": "a", names.CAMPAIGN_LABEL: "c", names.ITEM_LABEL: "x"}
    assert body["metadata"]["annotations"] == {"note": "n"}
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert body["metadata"]["ownerReferences"][0]["controller"] is True
    session, helper = body["spec"]["template"]["spec"]["containers"]
    assert session["env"] == [
        {"name": "FLEET_ITEM", "value": "x"},
        {"name": "A", "value": "item"},
        {"name": "B", "value": "2"},
    ]
    assert "env" not in helper
    assert body["spec"]["suspend"] is True
    # The campaign's spec is not changed by building a dispatch from it.
    assert campaign_spec.template.spec == TEMPLATE["spec"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"items": [{"name": "a"}, {"name": "a"}]}, "duplicate item name 'a'"),
        ({"items": [{"name": "A"}]}, "spec.items[0].name"),
        ({"items": [{"name": "a", "env": {"FLEET_X": "1"}}]}, "FLEET_X"),
        ({"maxFailed": "101%"}, "spec.maxFailed"),
        ({"parallelism": 0}, "spec.parallelism"),
        ({"template": {"spec": {}}}, "spec.template.spec: template: Field required"),
    ],
)
def test_invalid_specs_name_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_campaign_spec({"template": TEMPLATE, **raw})


def test_an_invalid_spec_stalls_the_campaign_and_keeps_its_counts() -> None:
    before = decide(spec(["a"]), [member("a", "Running")]).status
    status = core.invalid(before, 4, "spec.items[0].name: bad", NOW)
    assert status.counts == before.counts and status.observed_generation == 4
    assert conditions(status) == {
        "Ready": ("False", core.INVALID_SPEC),
        "Reconciling": ("False", core.INVALID_SPEC),
        "Stalled": ("True", core.INVALID_SPEC),
    }


def test_status_writes_are_spaced_by_the_interval() -> None:
    assert core.write_at(False, None, 10.0, 5.0) is None
    assert core.write_at(True, None, 10.0, 5.0) == 10.0
    assert core.write_at(True, 8.0, 10.0, 5.0) == 13.0
    assert core.write_at(True, 5.0, 10.0, 5.0) == 10.0


item_names = st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=8)


@st.composite
def situations(draw: st.DrawFn) -> tuple[FleetCampaignSpec, list[Member]]:
    items = draw(item_names)
    fields: dict[str, Any] = {"suspend": draw(st.booleans())}
    if draw(st.booleans()):
        fields["parallelism"] = draw(st.integers(1, 5))
    if draw(st.booleans()):
        fields["maxFailed"] = draw(
            st.one_of(st.integers(0, 4), st.sampled_from(["0%", "25%", "50%", "100%"]))
        )
    members = [
        Member(
            name=f"c-{name}",
            owned=draw(st.booleans()),
            phase=draw(st.sampled_from(PHASES)),
            suspended=draw(st.booleans()),
            deleting=draw(st.booleans()),
        )
        for name in draw(st.lists(st.sampled_from("abcdefghij"), unique=True, max_size=10))
    ]
    return spec(items, **fields), members


@settings(max_examples=400, deadline=None)
@given(situations())
def test_decisions_keep_the_campaign_rules(situation: tuple[FleetCampaignSpec, list[Member]]) -> None:
    campaign_spec, members = situation
    decision = decide(campaign_spec, members)
    status, counts = decision.status, decision.status.counts
    by_name = {m.name: m for m in members}
    live = sum(1 for m in members if not m.finished)
    # Creates: only missing items, in spec order, never when suspended or failed, within parallelism.
    created = [f"c-{item.name}" for item in decision.create]
    assert not any(name in by_name for name in created)
    order = [f"c-{item.name}" for item in campaign_spec.items]
    assert created == [name for name in order if name in created]
    if campaign_spec.suspend or status.phase == "Failed":
        assert created == []
    if campaign_spec.parallelism is not None and created:
        assert live + len(created) <= campaign_spec.parallelism
    # Deletes: only owned, unfinished dispatches whose item is gone, not already going.
    for name in decision.delete:
        gone = by_name[name]
        assert gone.owned and not gone.finished and not gone.deleting and name not in order
    # Suspends: only owned unfinished dispatches, towards the campaign's suspend.
    for name, value in decision.suspend:
        target = by_name[name]
        assert target.owned and not target.finished and value == campaign_spec.suspend != target.suspended
    # Counts add up; finished means nothing left to run.
    buckets = (counts.pending, counts.running, counts.backoff, counts.requeued, counts.suspended)
    assert counts.total == sum(buckets) + counts.succeeded + counts.failed
    if status.phase == "Succeeded":
        assert sum(buckets) == 0 and decision.create == () and decision.delete == ()
        assert status.completion_time == NOW
    ready = {c.type: c.status for c in status.conditions}
    assert (ready["Ready"] == "True") is (status.phase == "Succeeded")
    assert (ready["Stalled"] == "True") is (status.phase == "Failed")
    assert (ready["Reconciling"] == "True") is (status.phase == "Running")
    assert status.observed_generation == 3
    # Deciding again on the same view decides the same (the shell may reconcile any number of times).
    assert decide(campaign_spec, members, status) == decide(campaign_spec, members, status)
