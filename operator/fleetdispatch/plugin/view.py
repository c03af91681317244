"""What `kubectl fleet` shows, as pure functions over the JSON objects the API server returns.

`summarize` turns a FleetDispatch (and its QuotaPool, if any) into the summary that `status -o json|yaml`
prints and `render_status` lays out as text: the phase, the attempt, the live deadline and what is left of
the budget, the last activity, the counters against their limits, the attempt history and the pool.
`list_row`, `sort_rows` and `render_table` are `kubectl fleet list`. `human_duration` is kubectl's own
(apimachinery's `HumanDuration`, the AGE column), so that both tools print the same ages.

The remaining budget, while an attempt runs: until `status.deadline` (what the supervisor last extended it
to), until the deadline cap (`status.deadlineCap`: the deadline can never pass it; the initial deadline plus
`timeouts.maxExtensionSeconds` when the status has no cap), and, when `timeouts.idleOutputSeconds` is set
and output was seen, until the idle-output stop. A finished or waiting attempt has no remaining budget.

Field names are the CRDs' (camelCase); a unit test holds them against `api.models`, which is not imported
here (pydantic costs the plugin a tenth of a second for nothing). Deliberately not here: any I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from fleetdispatch.api import names
from fleetdispatch.session import protocol

# (status counter, spec.retry limit): the counters the operator keeps and the limit each runs against.
COUNTERS = (
    ("failures", "maxAttempts"),
    ("requeues", "maxRequeues"),
    ("resumes", "maxResumes"),
    ("infrastructureFailures", "maxInfrastructureFailures"),
)
# The attempt's activity fields, as the supervisor reports them (the heartbeat keeps them live).
ACTIVITY_FIELDS = ("lastActivityTime", "activityReason", "lastOutputTime")
POOL_FIELDS = ("running", "waiting", "requeued", "exhaustedUntil", "exhaustedBy")
SORT_KEYS = ("name", "remaining", "age", "phase")
NONE = "-"


def human_duration(seconds: float) -> str:
    """kubectl's age format (apimachinery `duration.HumanDuration`): `45s`, `5m10s`, `15m`, `2h5m`, `3d4h`."""
    whole = math.floor(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    years = days // 365
    if hours < 24 * 365 * 8:
        rest = days % 365
        return f"{years}y{rest}d" if rest else f"{years}y"
    return f"{years}y"


def remaining(seconds: float) -> str:
    """A time left, which may be past: `4m12s`, or `-30s` when it passed 30 s ago."""
    return human_duration(seconds) if seconds >= 0 else f"-{human_duration(-seconds)}"


def relative(seconds: float) -> str:
    """A moment from now: `in 4m12s`, `30s ago`."""
    return f"in {human_duration(seconds)}" if seconds >= 0 else f"{human_duration(-seconds)} ago"


def _seconds(moment: datetime | None, now: datetime) -> int | None:
    """Whole seconds from `now` to `moment` (negative: past), rounded toward the past as kubectl does."""
    return None if moment is None else math.floor((moment - now).total_seconds())


def _time(value: datetime | None) -> str | None:
    return None if value is None else protocol.format_time(value)


def _section(obj: Mapping[str, Any], *path: str) -> Mapping[str, Any]:
    """A nested mapping of an object (`spec`, `timeouts`), empty when absent or not a mapping."""
    for key in path:
        value = obj.get(key)
        obj = value if isinstance(value, Mapping) else {}
    return obj


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def budget(dispatch: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The live deadline and what is left of the attempt's budget (see the module's docstring)."""
    status, timeouts = _section(dispatch, "status"), _section(dispatch, "spec", "timeouts")
    deadline = protocol.parse_time(status.get("deadline"))
    running = status.get("phase") == "Running"
    cap = protocol.parse_time(status.get("deadlineCap"))
    extension = _int(timeouts.get("maxExtensionSeconds"))
    if cap is None and deadline is not None and extension is not None and running:
        # An older status without the cap: the deadline has not been extended yet, or not by much.
        cap = deadline + timedelta(seconds=extension)
    idle = _int(timeouts.get("idleOutputSeconds")) or 0
    last_output = protocol.parse_time(status.get("lastOutputTime"))
    idle_stop = None
    if running and idle and last_output is not None:
        idle_stop = last_output + timedelta(seconds=idle)
    return {
        "deadline": _time(deadline),
        "remainingSeconds": _seconds(deadline, now) if running else None,
        "deadlineCap": _time(cap),
        "capRemainingSeconds": _seconds(cap, now) if running else None,
        "deadlineSeconds": _int(timeouts.get("deadlineSeconds")),
        "maxExtensionSeconds": extension,
        "idleOutputSeconds": idle or None,
        "idleStopAt": _time(idle_stop),
        "idleRemainingSeconds": _seconds(idle_stop, now),
    }


def _pool(name: str, pool: Mapping[str, Any] | None, error: str | None, now: datetime) -> dict[str, Any]:
    if pool is None:
        return {"name": name, "found": False, **({"error": error} if error else {})}
    status = _section(pool, "status")
    summary: dict[str, Any] = {"name": name, "found": True}
    summary["maxConcurrent"] = _int(_section(pool, "spec").get("maxConcurrent"))
    for field in POOL_FIELDS:
        summary[field] = status.get(field)
    until = protocol.parse_time(status.get("exhaustedUntil"))
    seconds = _seconds(until, now)
    summary["exhausted"] = seconds is not None and seconds > 0
    summary["exhaustedRemainingSeconds"] = seconds if summary["exhausted"] else None
    summary["conditions"] = [
        {k: c.get(k) for k in ("type", "status", "reason", "message")}
        for c in status.get("conditions") or ()
        if isinstance(c, Mapping)
    ]
    return summary


def summarize(
    dispatch: Mapping[str, Any],
    now: datetime,
    pool: Mapping[str, Any] | None = None,
    pool_error: str | None = None,
) -> dict[str, Any]:
    """`kubectl fleet status`: everything it shows, as JSON-ready data (`-o json|yaml` prints it as is).

    `pool` is the QuotaPool the spec names (None: not found, or `pool_error` says why it was not read)."""
    metadata, status = _section(dispatch, "metadata"), _section(dispatch, "status")
    spec, retry = _section(dispatch, "spec"), _section(dispatch, "spec", "retry")
    ready = next(
        (c for c in status.get("conditions") or () if isinstance(c, Mapping) and c.get("type") == "Ready"),
        None,
    )
    last_activity = protocol.parse_time(status.get("lastActivityTime"))
    last_output = protocol.parse_time(status.get("lastOutputTime"))
    requeue_at = protocol.parse_time(status.get("requeueAt"))
    summary: dict[str, Any] = {
        "namespace": metadata.get("namespace"),
        "name": metadata.get("name"),
        "phase": status.get("phase"),
        "reason": status.get("reason"),
        "message": status.get("message"),
        "ready": ready.get("status") if ready is not None else None,
        "suspend": bool(spec.get("suspend", False)),
        "attempt": _int(status.get("attempt")) or 0,
        "podName": status.get("podName"),
        "startTime": status.get("startTime"),
        "completionTime": status.get("completionTime"),
        "requeueAt": _time(requeue_at),
        "requeueInSeconds": _seconds(requeue_at, now),
        "budget": budget(dispatch, now),
        "activity": {
            "lastActivityTime": _time(last_activity),
            "lastActivitySecondsAgo": None if last_activity is None else -(_seconds(last_activity, now) or 0),
            "activityReason": status.get("activityReason"),
            "lastOutputTime": _time(last_output),
            "lastOutputSecondsAgo": None if last_output is None else -(_seconds(last_output, now) or 0),
        },
        "counters": {
            counter: {"count": _int(status.get(counter)) or 0, "limit": _int(retry.get(limit)), "of": limit}
            for counter, limit in COUNTERS
        },
        "attempts": [
            _attempt(record) for record in status.get("attempts") or () if isinstance(record, Mapping)
        ],
        "creationTimestamp": metadata.get("creationTimestamp"),
    }
    pool_name = spec.get("quotaPool")
    summary["pool"] = _pool(str(pool_name), pool, pool_error, now) if pool_name else None
    return summary


ATTEMPT_FIELDS = (
    "attempt",
    "podName",
    "startTime",
    "endTime",
    "outcome",
    "exitCode",
    "failureClass",
    "message",
)


def _attempt(record: Mapping[str, Any]) -> dict[str, Any]:
    entry = {field: record.get(field) for field in ATTEMPT_FIELDS}
    start, end = protocol.parse_time(record.get("startTime")), protocol.parse_time(record.get("endTime"))
    entry["durationSeconds"] = _seconds(end, start) if start is not None and end is not None else None
    return entry


def _or_none(value: object) -> str:
    return NONE if value is None or value == "" else str(value)


def _moment(value: str | None, seconds: int | None, ago: bool = False) -> str:
    if value is None:
        return NONE
    if seconds is None:
        return value
    return f"{value} ({relative(-seconds if ago else seconds)})"


def _budget_left(moment: str | None, seconds: int | None) -> str:
    """`<time> (4m12s left)`, `<time> (passed 4s ago)`, or the time alone when nothing runs against it."""
    if moment is None or seconds is None:
        return _or_none(moment)
    return (
        f"{moment} ({human_duration(seconds)} left)"
        if seconds >= 0
        else f"{moment} (passed {relative(seconds)})"
    )


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns as kubectl prints them: left-aligned, three spaces apart, no trailing blanks."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in (header, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def render_status(summary: Mapping[str, Any]) -> str:
    """`kubectl fleet status` as text, from `summarize`'s data."""
    b, activity = summary["budget"], summary["activity"]
    phase = _or_none(summary["phase"])
    if summary.get("reason"):
        phase += f" ({summary['reason']})"
    lines = [
        ("Name", f"{summary['namespace']}/{summary['name']}"),
        ("Phase", phase),
        ("Message", _or_none(summary["message"])),
        ("Ready", _or_none(summary["ready"])),
        ("Suspend", "true" if summary["suspend"] else "false"),
        ("Attempt", f"{summary['attempt']}" + (f" (pod {summary['podName']})" if summary["podName"] else "")),
    ]
    lines.append(("Deadline", _budget_left(b["deadline"], b["remainingSeconds"])))
    if b["deadlineCap"] is not None and b["capRemainingSeconds"] is not None:
        lines.append(("Deadline cap", _budget_left(b["deadlineCap"], b["capRemainingSeconds"])))
    limits = []
    if b["deadlineSeconds"] is not None:
        limits.append(f"deadlineSeconds {b['deadlineSeconds']}")
    if b["maxExtensionSeconds"] is not None:
        limits.append(f"maxExtensionSeconds {b['maxExtensionSeconds']}")
    limits.append(f"idleOutputSeconds {b['idleOutputSeconds'] or 0}")
    lines.append(("Timeouts", ", ".join(limits)))
    if b["idleStopAt"] is not None:
        lines.append(("Idle stop", _moment(b["idleStopAt"], b["idleRemainingSeconds"])))
    last = _moment(activity["lastActivityTime"], activity["lastActivitySecondsAgo"], ago=True)
    if activity["activityReason"]:
        last += f", {activity['activityReason']}"
    lines.append(("Last activity", last))
    lines.append(
        ("Last output", _moment(activity["lastOutputTime"], activity["lastOutputSecondsAgo"], ago=True))
    )
    if summary["requeueAt"] is not None:
        lines.append(("Requeue at", _moment(summary["requeueAt"], summary["requeueInSeconds"])))
    counters = summary["counters"]
    lines.append(
        (
            "Counters",
            "  ".join(f"{name} {c['count']}/{_or_none(c['limit'])}" for name, c in counters.items()),
        )
    )
    lines.append(("Pool", _render_pool(summary["pool"])))
    width = max(len(label) for label, _ in lines) + 2
    text = "".join(f"{(label + ':').ljust(width)}{value}\n" for label, value in lines)
    attempts = summary["attempts"]
    if not attempts:
        return text + "Attempts:".ljust(width) + "none\n"
    rows = [
        [
            str(a["attempt"]),
            _or_none(a["podName"]),
            _or_none(a["startTime"]),
            NONE if a["durationSeconds"] is None else human_duration(a["durationSeconds"]),
            _or_none(a["outcome"]),
            _or_none(a["exitCode"]),
            _or_none(a["failureClass"]),
            _or_none(a["message"]),
        ]
        for a in attempts
    ]
    header = ["ATTEMPT", "POD", "STARTED", "DURATION", "OUTCOME", "EXIT", "CLASS", "MESSAGE"]
    table = render_table(header, rows)
    return text + "Attempts:\n" + "".join(f"  {line}\n" for line in table.splitlines())


def _render_pool(pool: Mapping[str, Any] | None) -> str:
    if pool is None:
        return "none"
    if not pool["found"]:
        return f"{pool['name']} (" + (f"not read: {pool['error']})" if pool.get("error") else "not found)")
    running = f"running {pool['running'] or 0}"
    if pool["maxConcurrent"] is not None:
        running += f"/{pool['maxConcurrent']}"
    parts = [running, f"waiting {pool['waiting'] or 0}", f"requeued {pool['requeued'] or 0}"]
    if pool["exhausted"]:
        by = f" by {pool['exhaustedBy']}" if pool.get("exhaustedBy") else ""
        parts.append(
            f"exhausted until {_moment(pool['exhaustedUntil'], pool['exhaustedRemainingSeconds'])}{by}"
        )
    else:
        parts.append("not exhausted")
    return f"{pool['name']}: " + ", ".join(parts)


# --- kubectl fleet list -----------------------------------------------------------------------------------


def list_row(dispatch: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """One dispatch of `kubectl fleet list`, as JSON-ready data."""
    metadata, status = _section(dispatch, "metadata"), _section(dispatch, "status")
    created = protocol.parse_time(metadata.get("creationTimestamp"))
    return {
        "namespace": metadata.get("namespace"),
        "name": metadata.get("name"),
        "phase": status.get("phase"),
        "attempt": _int(status.get("attempt")) or 0,
        "deadline": status.get("deadline"),
        "remainingSeconds": budget(dispatch, now)["remainingSeconds"],
        "creationTimestamp": metadata.get("creationTimestamp"),
        "ageSeconds": None if created is None else -(_seconds(created, now) or 0),
    }


def sort_rows(rows: Sequence[Mapping[str, Any]], by: str) -> list[Mapping[str, Any]]:
    """`--sort-by`: name (namespace, then name), remaining (least first; none last), age (oldest first, as
    kubectl's `--sort-by=.metadata.creationTimestamp`) or phase (alphabetical; none last); ties by name."""
    if by not in SORT_KEYS:
        raise ValueError(f"--sort-by must be one of {', '.join(SORT_KEYS)}, not {by!r}")

    def name(row: Mapping[str, Any]) -> tuple[str, str]:
        return (str(row.get("namespace") or ""), str(row.get("name") or ""))

    def key(row: Mapping[str, Any]) -> tuple[Any, ...]:
        if by == "remaining":
            value = row.get("remainingSeconds")
            return (value is None, value if value is not None else 0, name(row))
        if by == "age":
            value = row.get("ageSeconds")
            return (value is None, -(value if value is not None else 0), name(row))
        if by == "phase":
            return (row.get("phase") is None, str(row.get("phase") or ""), name(row))
        return name(row)

    return sorted(rows, key=key)


def render_list(rows: Sequence[Mapping[str, Any]], all_namespaces: bool) -> str:
    header = ["NAME", "PHASE", "ATTEMPT", "REMAINING", "AGE"]
    cells = [
        [
            str(row["name"]),
            _or_none(row["phase"]),
            str(row["attempt"]),
            NONE if row["remainingSeconds"] is None else remaining(row["remainingSeconds"]),
            "<unknown>" if row["ageSeconds"] is None else human_duration(row["ageSeconds"]),
        ]
        for row in rows
    ]
    if all_namespaces:
        header = ["NAMESPACE", *header]
        cells = [[str(row["namespace"]), *line] for row, line in zip(rows, cells, strict=True)]
    return render_table(header, cells)


# --- kubectl fleet logs -----------------------------------------------------------------------------------


def attempt_pod(pods: Sequence[Mapping[str, Any]], attempt: int) -> Mapping[str, Any] | None:
    """The pod of the current or last attempt: the one labelled `attempt`, else the latest earlier one
    (the current attempt's pod may not exist yet, or was deleted)."""
    best: tuple[int, Mapping[str, Any]] | None = None
    for pod in pods:
        labels = _section(pod, "metadata", "labels")
        try:
            number = int(str(labels.get(names.ATTEMPT_LABEL)))
        except ValueError:
            continue
        if number <= attempt and (best is None or number > best[0]):
            best = (number, pod)
    return None if best is None else best[1]


def session_container(pod: Mapping[str, Any]) -> str | None:
    """The name of a pod's session container (`names.session_container`), None when there is none."""
    containers = [c for c in _section(pod, "spec").get("containers") or () if isinstance(c, Mapping)]
    index = names.session_container([str(c.get("name")) for c in containers])
    return None if index is None else str(containers[index].get("name"))
