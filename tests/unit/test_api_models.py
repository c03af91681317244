"""The models the operator reads specs with: defaults, kept pod fields, readable errors, update rules."""

from __future__ import annotations

from typing import Any

import pytest

from fleetdispatch.api import models


def _spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": {"spec": {"containers": [{"name": "session", "image": "busybox", "command": ["true"]}]}}
    }
    spec.update(overrides)
    return spec


def test_pod_fields_the_operator_does_not_check_are_kept_as_written() -> None:
    raw = _spec()
    raw["template"]["spec"]["nodeSelector"] = {"pool": "agents"}
    raw["template"]["spec"]["containers"][0]["resources"] = {"limits": {"memory": "1Gi"}}
    spec = models.parse_spec(raw)
    dumped = spec.template.spec.model_dump(by_alias=True)
    assert dumped["nodeSelector"] == {"pool": "agents"}
    assert dumped["containers"][0]["resources"] == {"limits": {"memory": "1Gi"}}
    assert dumped["containers"][0]["command"] == ["true"]


def test_session_container_is_the_only_one_or_the_one_named_session() -> None:
    only = models.parse_spec(_spec(template={"spec": {"containers": [{"name": "agent", "image": "a"}]}}))
    assert only.template.spec.session_container.name == "agent"
    two = [{"name": "proxy", "image": "p"}, {"name": "session", "image": "s"}]
    several = models.parse_spec(_spec(template={"spec": {"containers": two}}))
    assert several.template.spec.session_container.image == "s"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"timeouts": {"deadlineSeconds": "60"}},
            "spec.timeouts.deadlineSeconds: Input should be a valid integer",
        ),
        ({"suspend": "true"}, "spec.suspend: Input should be a valid boolean"),
        ({"retry": {"maxAttempts": 0}}, "spec.retry.maxAttempts: Input should be greater than or equal to 1"),
        ({"retrys": {}}, "spec.retrys: unknown field; check its spelling and the API reference"),
        (
            {"activity": {"pollSeconds": 30}, "timeouts": {"idleOutputSeconds": 20}},
            "spec: timeouts.idleOutputSeconds (20) must be 0 (disabled) or at least "
            "activity.pollSeconds (30), because output growth is measured once per poll",
        ),
    ],
)
def test_invalid_spec_names_the_field_and_the_fix(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(models.InvalidSpec) as caught:
        models.parse_spec(_spec(**overrides))
    assert str(caught.value) == message


def test_a_spec_that_is_not_an_object_is_invalid_not_a_crash() -> None:
    for raw in (None, "spec", 3, []):
        with pytest.raises(models.InvalidSpec):
            models.parse_spec(raw)


def test_idle_output_zero_disables_the_check_against_the_poll() -> None:
    spec = models.parse_spec(_spec(timeouts={"idleOutputSeconds": 0}, activity={"pollSeconds": 600}))
    assert spec.timeouts.idle_output_seconds == 0


def test_only_suspend_and_retry_may_change_after_creation() -> None:
    old = models.parse_spec(_spec())
    models.check_update(old, models.parse_spec(_spec(suspend=True, retry={"maxAttempts": 9})))
    with pytest.raises(models.InvalidSpec) as caught:
        models.check_update(old, models.parse_spec(_spec(timeouts={"deadlineSeconds": 60}, quotaPool="pool")))
    assert str(caught.value).startswith("spec.timeouts, spec.quotaPool: immutable after creation")


def test_defaulted_and_explicit_specs_are_equal() -> None:
    # The API server stores the defaulted spec; an update compares against it, so defaults must not count
    # as a change.
    explicit = models.parse_spec(_spec(timeouts={"deadlineSeconds": 3600, "killGraceSeconds": 30}))
    models.check_update(models.parse_spec(_spec()), explicit)


def test_name_must_fit_a_label_value() -> None:
    models.check_name("a" * 63)
    with pytest.raises(models.InvalidSpec, match="at most 63 characters"):
        models.check_name("a" * 64)


def test_status_reads_leniently() -> None:
    status = models.FleetDispatchStatus.model_validate(
        {"phase": "Requeued", "requeueAt": "2026-11-24T18:00:00Z", "futureField": 1, "attempt": 2}
    )
    assert status.phase == "Requeued" and status.attempt == 2
    assert status.requeue_at is not None and status.requeue_at.hour == 18
