"""The reconcile step's pure parts: the status patch it writes and the Events it posts. The step itself,
against the real API server, is in tests/cluster/test_reconciler.py."""

from __future__ import annotations

from datetime import UTC, datetime

from fleetdispatch.api.models import FleetDispatchStatus
from fleetdispatch.controller.reconciler import COMPONENT, event_body, status_patch
from fleetdispatch.core import lifecycle

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def stored(**fields: object) -> dict[str, object]:
    """A status as the operator wrote it (with its defaults)."""
    status = FleetDispatchStatus.model_validate(fields)
    return status.model_dump(by_alias=True, mode="json", exclude_none=True)


def test_the_status_patch_has_the_changed_fields_and_clears_the_dropped_ones() -> None:
    before = stored(phase="Running", attempt=1, podName="job-1", message="attempt 1 is running")
    wanted = FleetDispatchStatus.model_validate(
        {**before, "phase": "Backoff", "podName": None, "failures": 1}
    )
    assert status_patch(before, wanted) == {"phase": "Backoff", "failures": 1, "podName": None}


def test_a_status_unchanged_needs_no_patch_and_unknown_fields_are_left_alone() -> None:
    before = {**stored(phase="Running", attempt=1), "fromANewerOperator": {"x": 1}}
    wanted = FleetDispatchStatus.model_validate({"phase": "Running", "attempt": 1})
    assert status_patch(before, wanted) == {}


def test_defaults_are_written_once_into_an_empty_status() -> None:
    patch = status_patch({}, FleetDispatchStatus.model_validate({"phase": "Pending"}))
    assert patch["phase"] == "Pending"
    assert all(value is not None for value in patch.values())


def test_an_event_is_about_the_dispatch_from_the_operator_and_its_message_fits_the_api() -> None:
    dispatch = lifecycle.Dispatch(
        name="job", namespace="team", uid="u1", generation=1, spec=None, status=FleetDispatchStatus()
    )
    body = event_body(dispatch, lifecycle.Event("Warning", "BackoffLimitExceeded", "x" * 5000), NOW, "host-1")
    assert body["metadata"] == {"generateName": "job.", "namespace": "team"}
    assert body["involvedObject"] == {
        "apiVersion": "fleet.dispatch.dev/v1alpha1",
        "kind": "FleetDispatch",
        "name": "job",
        "namespace": "team",
        "uid": "u1",
    }
    assert (body["type"], body["reason"], len(body["message"])) == ("Warning", "BackoffLimitExceeded", 1024)
    assert body["source"] == {"component": COMPONENT}
    assert (body["reportingComponent"], body["reportingInstance"]) == (COMPONENT, "host-1")
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2025-03-01T12:00:00Z"
