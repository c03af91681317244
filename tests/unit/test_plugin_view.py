"""`kubectl fleet`'s pure side: kubectl's durations, the remaining budget, the status summary and text, the
list's rows, sorting and table, and which pod and container `logs` reads."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetdispatch.api import models, names
from fleetdispatch.plugin import view
from fleetdispatch.session import protocol

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return protocol.format_time(NOW + timedelta(seconds=seconds))


def dispatch(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A dispatch as the API server returns it: the CRD's defaults filled in."""
    full_spec: dict[str, Any] = {
        "template": {"spec": {"containers": [{"name": "session", "image": "busybox"}]}},
        "timeouts": {
            "deadlineSeconds": 600,
            "maxExtensionSeconds": 1200,
            "idleOutputSeconds": 300,
            "killGraceSeconds": 30,
            "startSeconds": 600,
        },
        "retry": {"maxAttempts": 3, "maxResumes": 3, "maxRequeues": 10, "maxInfrastructureFailures": 10},
        "suspend": False,
        **spec,
    }
    return {
        "metadata": {"namespace": "team", "name": "busy", "creationTimestamp": at(-300)},
        "spec": full_spec,
        "status": status or {},
    }


# --- kubectl's durations ----------------------------------------------------------------------------------

# apimachinery's own cases (k8s.io/apimachinery/pkg/util/duration), so AGE reads as `kubectl get` prints it.
KUBECTL_CASES = [
    (1, "1s"),
    (70, "70s"),
    (190, "3m10s"),
    (180, "3m"),
    (70 * 60, "70m"),
    (47 * 3600, "47h"),
    (49 * 3600, "2d1h"),
    ((8 * 24 + 2) * 3600, "8d"),
    (367 * 24 * 3600, "367d"),
    ((365 * 2 * 24 + 25) * 3600, "2y1d"),
    ((365 * 8 * 24 + 2) * 3600, "8y"),
    (-1, "0s"),
    (-2, "<invalid>"),
    (5 * 3600 + 7 * 60, "5h7m"),
]


@pytest.mark.parametrize(("seconds", "shown"), KUBECTL_CASES)
def test_human_duration_is_kubectls(seconds: int, shown: str) -> None:
    assert view.human_duration(seconds) == shown


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "y": 365 * 86400}


@given(st.integers(min_value=0, max_value=20 * 365 * 86400))
def test_human_duration_never_overstates_and_loses_less_than_its_smallest_unit(seconds: int) -> None:
    shown = view.human_duration(seconds)
    parts = re.fullmatch(r"(?:(\d+)y)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", shown)
    assert parts is not None and shown, shown
    values = dict(zip("ydhms", parts.groups(), strict=True))
    total = sum(int(v) * UNITS[u] for u, v in values.items() if v is not None)
    smallest = min(UNITS[u] for u, v in values.items() if v is not None)
    assert total <= seconds < total + smallest


@given(st.integers(min_value=-(10**8), max_value=10**8))
def test_remaining_and_relative_say_which_side_of_now(seconds: int) -> None:
    assert view.remaining(seconds).startswith("-") == (seconds < 0)
    assert view.relative(seconds).endswith(" ago") == (seconds < 0)
    assert view.human_duration(abs(seconds)) in view.remaining(seconds)


# --- the remaining budget ---------------------------------------------------------------------------------


@given(
    left=st.integers(min_value=-7200, max_value=7200),
    extension=st.integers(min_value=0, max_value=7200),
    output_ago=st.integers(min_value=0, max_value=3600),
    idle=st.integers(min_value=0, max_value=3600),
)
def test_a_running_attempts_budget(left: int, extension: int, output_ago: int, idle: int) -> None:
    timeouts = {"deadlineSeconds": 600, "maxExtensionSeconds": extension, "idleOutputSeconds": idle}
    status = {"phase": "Running", "deadline": at(left), "lastOutputTime": at(-output_ago)}
    found = view.budget(dispatch(status, timeouts=timeouts), NOW)
    assert found["deadline"] == at(left)
    assert found["remainingSeconds"] == left
    # No cap in the status: the deadline plus what it may still be extended by.
    assert found["deadlineCap"] == at(left + extension)
    assert found["capRemainingSeconds"] == left + extension
    if idle:
        assert found["idleStopAt"] == at(idle - output_ago)
        assert found["idleRemainingSeconds"] == idle - output_ago
    else:
        assert found["idleStopAt"] is None and found["idleOutputSeconds"] is None


def test_the_status_cap_wins_over_the_spec_arithmetic() -> None:
    status = {"phase": "Running", "deadline": at(90), "deadlineCap": at(1000)}
    found = view.budget(dispatch(status), NOW)
    assert (found["deadlineCap"], found["capRemainingSeconds"]) == (at(1000), 1000)


@pytest.mark.parametrize(
    "phase", ["Pending", "Succeeded", "Failed", "Requeued", "Backoff", "Suspended", None]
)
def test_an_attempt_that_does_not_run_has_no_budget_left(phase: str | None) -> None:
    status = {"phase": phase, "deadline": at(90), "lastOutputTime": at(-5)}
    found = view.budget(dispatch(status), NOW)
    assert found["deadline"] == at(90)  # the last one, shown as it was
    assert found["remainingSeconds"] is None and found["capRemainingSeconds"] is None
    assert found["idleStopAt"] is None


def test_a_subsecond_time_left_rounds_toward_the_past() -> None:
    status = {"phase": "Running", "deadline": at(10)}
    assert view.budget(dispatch(status), NOW + timedelta(seconds=0.5))["remainingSeconds"] == 9


# --- the status summary -----------------------------------------------------------------------------------

RUNNING = {
    "phase": "Running",
    "reason": "Running",
    "message": "session running in pod busy-2",
    "attempt": 2,
    "podName": "busy-2",
    "failures": 1,
    "requeues": 0,
    "resumes": 1,
    "infrastructureFailures": 0,
    "startTime": at(-200),
    "deadline": at(252),
    "deadlineCap": at(1500),
    "lastActivityTime": at(-4),
    "activityReason": "cpu",
    "lastOutputTime": at(-20),
    "attempts": [
        {
            "attempt": 1,
            "podName": "busy-1",
            "startTime": at(-200),
            "endTime": at(-80),
            "outcome": "IdleOutput",
            "exitCode": 143,
            "failureClass": "Timeout",
            "message": "no output for 300 s",
        }
    ],
    "conditions": [{"type": "Ready", "status": "False", "reason": "Running"}],
}
POOL = {
    "metadata": {"name": "shared"},
    "spec": {"maxConcurrent": 4},
    "status": {"running": 2, "waiting": 1, "requeued": 3, "exhaustedUntil": at(60), "exhaustedBy": "other"},
}


def _fields(text: str) -> dict[str, str]:
    """`Label: value` lines (not the attempts table's) by label."""
    return dict(line.split(":", 1) for line in text.splitlines() if not line.startswith(" "))


def test_summary_of_a_running_dispatch_in_a_pool() -> None:
    summary = view.summarize(dispatch(RUNNING, quotaPool="shared"), NOW, POOL)
    assert summary["phase"] == "Running" and summary["attempt"] == 2 and summary["podName"] == "busy-2"
    assert summary["budget"]["remainingSeconds"] == 252
    assert summary["activity"] == {
        "lastActivityTime": at(-4),
        "lastActivitySecondsAgo": 4,
        "activityReason": "cpu",
        "lastOutputTime": at(-20),
        "lastOutputSecondsAgo": 20,
    }
    assert summary["counters"] == {
        "failures": {"count": 1, "limit": 3, "of": "maxAttempts"},
        "requeues": {"count": 0, "limit": 10, "of": "maxRequeues"},
        "resumes": {"count": 1, "limit": 3, "of": "maxResumes"},
        "infrastructureFailures": {"count": 0, "limit": 10, "of": "maxInfrastructureFailures"},
    }
    [first] = summary["attempts"]
    assert first["outcome"] == "IdleOutput" and first["durationSeconds"] == 120
    pool = summary["pool"]
    assert pool["found"] and pool["exhausted"] and pool["exhaustedRemainingSeconds"] == 60
    assert (pool["running"], pool["maxConcurrent"], pool["waiting"], pool["requeued"]) == (2, 4, 1, 3)
    assert summary["ready"] == "False"


def test_status_text_shows_each_part() -> None:
    text = view.render_status(view.summarize(dispatch(RUNNING, quotaPool="shared"), NOW, POOL))
    lines = _fields(text)
    assert lines["Name"].strip() == "team/busy"
    assert lines["Phase"].strip() == "Running (Running)"
    assert lines["Message"].strip() == "session running in pod busy-2"
    assert lines["Attempt"].strip() == "2 (pod busy-2)"
    assert lines["Deadline"].strip() == f"{at(252)} (4m12s left)"
    assert lines["Deadline cap"].strip() == f"{at(1500)} (25m left)"
    assert lines["Idle stop"].strip() == f"{at(280)} (in 4m40s)"
    assert lines["Last activity"].strip() == f"{at(-4)} (4s ago), cpu"
    assert lines["Last output"].strip() == f"{at(-20)} (20s ago)"
    assert lines["Counters"].split() == [
        *("failures", "1/3", "requeues", "0/10", "resumes", "1/3", "infrastructureFailures", "0/10")
    ]
    assert lines["Pool"].strip() == (
        f"shared: running 2/4, waiting 1, requeued 3, exhausted until {at(60)} (in 60s) by other"
    )
    table = text.split("Attempts:\n", 1)[1].splitlines()
    assert table[0].split() == [
        "ATTEMPT",
        "POD",
        "STARTED",
        "DURATION",
        "OUTCOME",
        "EXIT",
        "CLASS",
        "MESSAGE",
    ]
    assert table[1].split()[:7] == ["1", "busy-1", at(-200), "2m", "IdleOutput", "143", "Timeout"]
    assert table[1].endswith("no output for 300 s")


def test_status_text_of_a_deadline_that_has_passed_and_of_a_finished_attempt() -> None:
    passed = {**RUNNING, "deadline": at(-4)}
    lines = _fields(view.render_status(view.summarize(dispatch(passed), NOW)))
    assert lines["Deadline"].strip() == f"{at(-4)} (passed 4s ago)"
    assert "Requeue at" not in lines
    requeued = {**RUNNING, "phase": "Requeued", "requeueAt": at(95)}
    summary = view.summarize(dispatch(requeued), NOW)
    assert (summary["requeueAt"], summary["requeueInSeconds"]) == (at(95), 95)
    assert _fields(view.render_status(summary))["Requeue at"].strip() == f"{at(95)} (in 95s)"
    ended = {**RUNNING, "phase": "Failed", "reason": "RetryLimitExceeded", "message": "3 attempts failed"}
    text = view.render_status(view.summarize(dispatch(ended), NOW))
    lines = _fields(text)
    assert lines["Phase"].strip() == "Failed (RetryLimitExceeded)"
    assert lines["Message"].strip() == "3 attempts failed"
    assert lines["Deadline"].strip() == at(252)  # as it was when the attempt ended: nothing is left of it
    assert "Deadline cap" not in lines and "Idle stop" not in lines


def test_status_text_of_a_new_dispatch_and_a_missing_pool() -> None:
    summary = view.summarize(dispatch({}, quotaPool="gone"), NOW, None)
    text = view.render_status(summary)
    assert "Phase:" in text and "Deadline:" in text
    lines = _fields(text)
    assert lines["Phase"].strip() == "-"
    assert lines["Deadline"].strip() == "-"
    assert lines["Last activity"].strip() == "-"
    assert lines["Pool"].strip() == "gone (not found)"
    assert lines["Attempts"].strip() == "none"
    assert summary["pool"] == {"name": "gone", "found": False}


def test_a_pool_that_could_not_be_read_says_why() -> None:
    summary = view.summarize(dispatch({}, quotaPool="p"), NOW, None, "Error from server (Forbidden): no")
    lines = _fields(view.render_status(summary))
    assert lines["Pool"].strip() == "p (not read: Error from server (Forbidden): no)"
    assert summary["pool"] == {"name": "p", "found": False, "error": "Error from server (Forbidden): no"}


def test_no_pool_and_a_pool_whose_reset_has_passed() -> None:
    assert view.summarize(dispatch({}), NOW)["pool"] is None
    passed = {**POOL, "status": {**POOL["status"], "exhaustedUntil": at(-1)}}
    pool = view.summarize(dispatch({}, quotaPool="shared"), NOW, passed)["pool"]
    assert not pool["exhausted"] and pool["exhaustedRemainingSeconds"] is None
    assert "not exhausted" in view.render_status(view.summarize(dispatch({}, quotaPool="s"), NOW, passed))


# --- the names are the API's -------------------------------------------------------------------------------


def _wire(model: type[models.BaseModel]) -> set[str]:
    return {info.alias or name for name, info in model.model_fields.items()}


def test_the_fields_read_are_the_apis() -> None:
    status, retry = _wire(models.FleetDispatchStatus), _wire(models.Retry)
    for counter, limit in view.COUNTERS:
        assert counter in status and limit in retry
    assert set(view.ACTIVITY_FIELDS) <= status
    assert {"deadline", "deadlineCap", "phase", "attempt", "podName", "requeueAt", "attempts"} <= status
    assert set(view.ATTEMPT_FIELDS) <= _wire(models.AttemptRecord)
    assert set(view.POOL_FIELDS) <= _wire(models.QuotaPoolStatus)
    assert {"maxConcurrent"} <= _wire(models.QuotaPoolSpec)
    timeouts = _wire(models.Timeouts)
    assert {"deadlineSeconds", "maxExtensionSeconds", "idleOutputSeconds"} <= timeouts
    assert {"quotaPool", "suspend", "timeouts", "retry"} <= _wire(models.FleetDispatchSpec)


# --- kubectl fleet list -----------------------------------------------------------------------------------


def _row(name: str, namespace: str = "team", **fields: Any) -> dict[str, Any]:
    row = {"namespace": namespace, "name": name, "phase": "Running", "attempt": 1}
    return {**row, "deadline": None, "remainingSeconds": None, "ageSeconds": 10, **fields}


def test_list_row_of_a_running_dispatch() -> None:
    row = view.list_row(dispatch({"phase": "Running", "attempt": 3, "deadline": at(75)}), NOW)
    assert row == {
        "namespace": "team",
        "name": "busy",
        "phase": "Running",
        "attempt": 3,
        "deadline": at(75),
        "remainingSeconds": 75,
        "creationTimestamp": at(-300),
        "ageSeconds": 300,
    }


def test_list_table_with_and_without_namespaces() -> None:
    rows = [_row("a", remainingSeconds=75, ageSeconds=300), _row("bb", phase=None, attempt=0)]
    assert view.render_list(rows, False).splitlines() == [
        "NAME   PHASE     ATTEMPT   REMAINING   AGE",
        "a      Running   1         75s         5m",
        "bb     -         0         -           10s",
    ]
    assert view.render_list(rows, True).splitlines()[0].split() == [
        *("NAMESPACE", "NAME", "PHASE", "ATTEMPT", "REMAINING", "AGE")
    ]
    assert view.render_list(rows, True).splitlines()[1].split()[:2] == ["team", "a"]


def test_sorting_examples() -> None:
    rows = [
        _row("c", remainingSeconds=None, ageSeconds=5, phase="Succeeded"),
        _row("a", remainingSeconds=300, ageSeconds=50, phase="Running"),
        _row("b", remainingSeconds=-20, ageSeconds=500, phase=None),
        _row("a", namespace="other", remainingSeconds=10, ageSeconds=1, phase="Backoff"),
    ]

    def order(by: str) -> list[str]:
        return [f"{r['namespace']}/{r['name']}" for r in view.sort_rows(rows, by)]

    assert order("name") == ["other/a", "team/a", "team/b", "team/c"]
    assert order("remaining") == ["team/b", "other/a", "team/a", "team/c"]
    assert order("age") == ["team/b", "team/a", "team/c", "other/a"]
    assert order("phase") == ["other/a", "team/a", "team/c", "team/b"]
    with pytest.raises(ValueError, match="--sort-by must be one of"):
        view.sort_rows(rows, "size")


rows_strategy = st.lists(
    st.builds(
        _row,
        name=st.text("abc", min_size=1, max_size=3),
        namespace=st.sampled_from(["x", "y"]),
        remainingSeconds=st.none() | st.integers(-100, 100),
        ageSeconds=st.none() | st.integers(0, 1000),
        phase=st.none() | st.sampled_from(["Running", "Pending", "Failed"]),
    ),
    max_size=12,
)


@given(rows_strategy, st.sampled_from(view.SORT_KEYS))
def test_sorting_is_a_permutation_ordered_by_its_key(rows: list[dict[str, Any]], by: str) -> None:
    ordered = view.sort_rows(rows, by)
    assert sorted(map(repr, ordered)) == sorted(map(repr, rows))
    field = {"remaining": "remainingSeconds", "age": "ageSeconds", "phase": "phase"}.get(by)
    if field is None:
        keys = [(r["namespace"], r["name"]) for r in ordered]
        assert keys == sorted(keys)
        return
    values = [r[field] for r in ordered]
    known = [v for v in values if v is not None]
    assert values == known + [None] * (len(values) - len(known)), "the rows without a value come last"
    assert known == sorted(known, reverse=by == "age")


@given(st.lists(st.lists(st.text("ab-", max_size=6), min_size=3, max_size=3), max_size=5))
def test_table_columns_line_up(cells: list[list[str]]) -> None:
    header = ["ONE", "TWO", "THREE"]
    lines = view.render_table(header, cells).splitlines()
    assert len(lines) == len(cells) + 1
    starts = [lines[0].index("TWO"), lines[0].index("THREE")]
    for line, row in zip(lines[1:], cells, strict=True):
        assert line == line.rstrip()
        assert line[: len(row[0])] == row[0]
        assert line[starts[0] : starts[0] + len(row[1])] == row[1]
        assert line[starts[1] :] == row[2]


# --- kubectl fleet logs -----------------------------------------------------------------------------------


def _pod(name: str, attempt: object, containers: tuple[str, ...] = ("session",)) -> dict[str, Any]:
    labels = {names.DISPATCH_LABEL: "busy", names.ATTEMPT_LABEL: str(attempt)}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": c} for c in containers]},
    }


def test_the_pod_of_the_current_or_last_attempt() -> None:
    pods = [_pod("busy-1", 1), _pod("busy-3", 3), _pod("busy-2", 2), _pod("odd", "x")]
    assert view.attempt_pod(pods, 3) == pods[1]
    assert view.attempt_pod(pods, 2) == pods[2]
    assert view.attempt_pod([_pod("busy-1", 1)], 4)["metadata"]["name"] == "busy-1"  # type: ignore[index]
    assert view.attempt_pod(pods[3:], 1) is None and view.attempt_pod([], 1) is None


def test_the_session_container() -> None:
    assert view.session_container(_pod("p", 1, ("main",))) == "main"
    assert (
        view.session_container(_pod("p", 1, ("sidecar", "session", names.SUPERVISOR_CONTAINER))) == "session"
    )
    assert view.session_container(_pod("p", 1, ("a", "b"))) is None
