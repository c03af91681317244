"""`podstatus.observe`: what the operator reads from a pod, from pods shaped as the API server returns them.

The builders (`make_pod` and the container states, in tests/pods.py) are shared with the classification and
lifecycle tests, so that every test of the core goes through the real `observe`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from fleetdispatch.api.names import SESSION_CONTAINER
from fleetdispatch.core.podstatus import PodView, Termination, observe
from fleetdispatch.session.protocol import parse_time
from pods import T0, make_pod, outcome, running, terminated, waiting

# --- parse_time -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-01T12:00:00Z", T0),
        ("2025-03-01T12:00:00+00:00", T0),
        ("2025-03-01T14:00:00+02:00", T0),
        ("2025-03-01T12:00:00", T0),  # no offset: read as UTC
        ("2025-03-01T12:00:00.250000Z", T0 + timedelta(microseconds=250000)),
    ],
)
def test_parse_time_reads_rfc3339(text: str, expected: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed is not None and parsed.tzinfo is not None


@pytest.mark.parametrize("value", [None, "", "yesterday", "2025-13-01T00:00:00Z", 1740830400, ["2025"]])
def test_parse_time_returns_none_for_missing_or_unreadable(value: Any) -> None:
    assert parse_time(value) is None


# --- observe ----------------------------------------------------------------------------------------------


def test_a_pod_just_created_has_no_status_yet() -> None:
    pod = make_pod(phase=None)
    del pod["status"]
    view = observe(pod)
    assert view == PodView(name="job-1", attempt=1, uid="uid-job-1")
    assert view.phase == "Pending"
    assert view.live
    assert not view.deleting
    assert view.supervision_started_at is None


def test_labels_give_the_attempt() -> None:
    assert observe(make_pod("job-12", 12)).attempt == 12
    assert observe(make_pod("job-1", None)).attempt is None
    assert observe(make_pod("job-1", "one")).attempt is None
    assert observe(make_pod("job-1", "-1")).attempt is None
    pod = make_pod()
    pod["metadata"]["labels"] = None
    assert observe(pod).attempt is None


@pytest.mark.parametrize(
    ("phase", "live"),
    [("Pending", True), ("Running", True), ("Unknown", True), ("Succeeded", False), ("Failed", False)],
)
def test_a_pod_is_live_until_its_phase_is_terminal(phase: str, live: bool) -> None:
    assert observe(make_pod(phase=phase)).live is live


def test_a_pod_being_deleted_is_still_live() -> None:
    view = observe(make_pod(phase="Running", deleting=T0))
    assert view.deleting
    assert view.live


def test_a_pending_pod_reports_why_the_session_waits() -> None:
    view = observe(
        make_pod(
            phase="Pending",
            started=T0,
            supervisor=running(T0 + timedelta(seconds=2)),
            session=waiting("ImagePullBackOff", 'Back-off pulling image "agent:1"'),
        )
    )
    assert view.waiting_reason == "ImagePullBackOff"
    assert view.waiting_message == 'Back-off pulling image "agent:1"'
    assert view.session is None
    assert view.session_started_at is None
    assert view.pod_started_at == T0
    assert view.supervisor_started_at == T0 + timedelta(seconds=2)


def test_a_running_pod_gives_each_start() -> None:
    view = observe(
        make_pod(
            phase="Running",
            started=T0,
            supervisor=running(T0 + timedelta(seconds=1)),
            session=running(T0 + timedelta(seconds=3)),
        )
    )
    assert view.pod_started_at == T0
    assert view.supervisor_started_at == T0 + timedelta(seconds=1)
    assert view.session_started_at == T0 + timedelta(seconds=3)
    assert view.session is None
    assert view.waiting_reason is None


def test_supervision_starts_with_the_latest_start_known_before_the_session_runs() -> None:
    # The supervisor counts from its own start, which comes after the pod's.
    view = observe(make_pod(phase="Pending", started=T0, supervisor=running(T0 + timedelta(seconds=40))))
    assert view.supervision_started_at == T0 + timedelta(seconds=40)
    assert observe(make_pod(phase="Pending", started=T0)).supervision_started_at == T0


def test_supervision_start_does_not_move_when_the_supervisor_restarts() -> None:
    # A native sidecar restarts when it exits; its new start must not push the backstop further out, or a
    # crash-looping supervisor would never be caught.
    view = observe(
        make_pod(
            phase="Running",
            started=T0,
            supervisor=running(T0 + timedelta(hours=2)),
            supervisor_restarts=3,
            session=running(T0 + timedelta(seconds=5)),
        )
    )
    assert view.supervision_started_at == T0 + timedelta(seconds=5)


def test_a_terminated_session_gives_its_exit_code_reason_and_message() -> None:
    message = outcome("Completed", message="all done")
    view = observe(
        make_pod(
            phase="Succeeded",
            started=T0,
            supervisor=terminated(0, finished=T0 + timedelta(seconds=61)),
            session=terminated(
                0, message=message, started=T0 + timedelta(seconds=1), finished=T0 + timedelta(seconds=60)
            ),
        )
    )
    assert view.session == Termination(
        exit_code=0, reason="Completed", message=message, finished_at=T0 + timedelta(seconds=60)
    )
    assert view.session_started_at == T0 + timedelta(seconds=1)
    assert view.supervisor_message is None
    assert not view.live


def test_the_supervisor_termination_message_is_read_from_init_container_statuses() -> None:
    message = outcome("DeadlineExceeded")
    view = observe(
        make_pod(
            phase="Failed",
            supervisor=terminated(0, message=message),
            session=terminated(143),
            user_init=True,
        )
    )
    assert view.supervisor_message == message
    assert view.session == Termination(exit_code=143, reason="Error")


def test_the_session_is_the_container_named_session_among_several() -> None:
    view = observe(
        make_pod(
            phase="Failed",
            session=terminated(3, message="boom"),
            containers=("proxy", SESSION_CONTAINER, "logger"),
        )
    )
    assert view.session is not None
    assert view.session.exit_code == 3


def test_the_only_container_is_the_session_whatever_its_name() -> None:
    view = observe(
        make_pod(phase="Failed", session=terminated(4), containers=("agent",), session_name="agent")
    )
    assert view.session is not None
    assert view.session.exit_code == 4


def test_a_kubelet_eviction_is_a_disruption() -> None:
    message = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi."
    view = observe(make_pod(phase="Failed", evicted=message, session=terminated(137)))
    assert view.disruption == "Evicted"
    assert view.disruption_message == message


@pytest.mark.parametrize(
    "reason",
    ["PreemptionByScheduler", "DeletionByTaintManager", "EvictionByEvictionAPI", "TerminationByKubelet"],
)
def test_a_disruption_target_condition_is_a_disruption(reason: str) -> None:
    view = observe(make_pod(phase="Running", disruption=reason, disruption_message="going away"))
    assert view.disruption == reason
    assert view.disruption_message == "going away"


def test_a_disruption_target_condition_that_is_not_true_is_ignored() -> None:
    pod = make_pod(phase="Running", disruption="PreemptionByScheduler")
    pod["status"]["conditions"][-1]["status"] = "False"
    assert observe(pod).disruption is None


def test_a_disruption_target_without_reason_is_still_one() -> None:
    pod = make_pod(phase="Running", disruption="x")
    del pod["status"]["conditions"][-1]["reason"]
    assert observe(pod).disruption == "DisruptionTarget"


def test_an_eviction_reason_wins_over_a_disruption_condition() -> None:
    view = observe(
        make_pod(
            phase="Failed", evicted="low on memory", disruption="TerminationByKubelet", disruption_message="x"
        )
    )
    assert (view.disruption, view.disruption_message) == ("Evicted", "low on memory")


@pytest.mark.parametrize(
    "status",
    [
        {"phase": "Running", "containerStatuses": None, "initContainerStatuses": None, "conditions": None},
        {"phase": "Running", "containerStatuses": [{"name": "session"}]},
        {"phase": "Running", "containerStatuses": [{"name": "session", "state": None}]},
        {"phase": "Running", "containerStatuses": [{"name": "session", "state": {"running": None}}]},
        {"phase": "Running", "containerStatuses": ["junk", {"name": "session", "state": {"waiting": None}}]},
        {
            "phase": "Failed",
            "containerStatuses": [{"name": "session", "state": {"terminated": {"reason": "X"}}}],
        },
    ],
)
def test_observe_tolerates_a_status_that_is_still_filling_in(status: dict[str, Any]) -> None:
    pod = make_pod()
    pod["status"] = status
    view = observe(pod)
    assert view.session is None
    assert view.session_started_at is None
    assert view.waiting_reason is None


def test_observe_tolerates_nulls_everywhere() -> None:
    view = observe({"metadata": None, "spec": None, "status": None})
    assert view.attempt is None
    assert view.phase == "Pending"


def test_empty_reason_and_message_read_as_none() -> None:
    pod = make_pod(phase="Failed", session=terminated(1))
    pod["status"]["containerStatuses"][0]["state"]["terminated"].update(reason="", message="")
    assert observe(pod).session == Termination(exit_code=1)
