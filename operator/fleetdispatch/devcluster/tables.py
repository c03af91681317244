"""Server-side printing: the ``meta.k8s.io/v1`` Table that ``kubectl get`` asks for.

``kubectl get`` sends ``Accept: application/json;as=Table;...`` and prints whatever columns the server
returns; that is how a CRD's ``additionalPrinterColumns`` reach the terminal. Custom resources get their
columns (``NAME`` plus the printer columns, or ``NAME``/``AGE`` when they declare none), with the server's
JSONPath subset (``.a.b``, ``.a[0]``, ``.a[?(@.k=="v")].b``) and ``date`` columns rendered as ages
(``5s``, ``3m``, ``2h``). Pods, namespaces and events get the columns a real server prints for them (a
useful subset); every other built-in kind gets ``NAME``/``AGE``.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable
from typing import Any

from fleetdispatch.devcluster.resources import ResourceType

Object = dict[str, Any]
Cell = str | int | float | bool | None

_STEP = re.compile(r"""\.([A-Za-z0-9_-]+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_.-]+)\s*==\s*["']([^"']*)["']\)\]""")


def json_path(obj: Any, path: str) -> Any:
    """The value at a printer-column JSONPath, or None when any step is missing."""
    values: list[Any] = [obj]
    text = path.strip().removeprefix("{").removesuffix("}").removeprefix("$")
    position = 0
    while position < len(text):
        step = _STEP.match(text, position)
        if step is None:
            return None
        position = step.end()
        name, index, filter_key, filter_value = step.groups()
        found: list[Any] = []
        for value in values:
            if name is not None and isinstance(value, dict) and name in value:
                found.append(value[name])
            elif index is not None and isinstance(value, list) and int(index) < len(value):
                found.append(value[int(index)])
            elif filter_key is not None and isinstance(value, list):
                found.extend(
                    item
                    for item in value
                    if isinstance(item, dict) and str(json_path(item, "." + filter_key)) == filter_value
                )
        values = found
    return values[0] if values else None


def age(since: str | None, now: datetime.datetime) -> str:
    """A timestamp as an age, as ``kubectl`` prints it: ``42s``, ``5m``, ``3h``, ``2d``."""
    if not since:
        return "<unknown>"
    try:
        moment = datetime.datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    seconds = int((now - moment).total_seconds())
    if seconds < 0:
        return "<invalid>"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _column(name: str, kind: str = "string", *, priority: int = 0, description: str = "") -> Object:
    return {
        "name": name,
        "type": kind,
        "format": "name" if name == "Name" else "",
        "description": description,
        "priority": priority,
    }


def _pod_status(pod: Object) -> str:
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        for phase in ("waiting", "terminated"):
            if reason := (state.get(phase) or {}).get("reason"):
                return str(reason)
    return str(status.get("phase") or "Pending")


def _pod_ready(pod: Object) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    total = len((pod.get("spec") or {}).get("containers") or [])
    return f"{sum(1 for status in statuses if status.get('ready'))}/{total}"


def _pod_restarts(pod: Object) -> int:
    return sum(
        int(s.get("restartCount") or 0) for s in (pod.get("status") or {}).get("containerStatuses") or []
    )


def _involved(event: Object) -> str:
    involved = event.get("involvedObject") or {}
    return f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}"


Row = Callable[[Object, datetime.datetime], list[Cell]]


def _builtin_columns(kind: ResourceType) -> tuple[list[Object], Row]:
    created: Callable[[Object, datetime.datetime], str] = lambda o, now: age(  # noqa: E731
        o["metadata"].get("creationTimestamp"), now
    )
    if (kind.group, kind.plural) == ("", "pods"):
        return (
            [
                _column("Name"),
                _column("Ready"),
                _column("Status"),
                _column("Restarts", "integer"),
                _column("Age"),
                _column("Node", priority=1),
            ],
            lambda o, now: [
                o["metadata"]["name"],
                _pod_ready(o),
                _pod_status(o),
                _pod_restarts(o),
                created(o, now),
                (o.get("spec") or {}).get("nodeName"),
            ],
        )
    if (kind.group, kind.plural) == ("", "namespaces"):
        return (
            [_column("Name"), _column("Status"), _column("Age")],
            lambda o, now: [o["metadata"]["name"], (o.get("status") or {}).get("phase"), created(o, now)],
        )
    if (kind.group, kind.plural) == ("", "events"):
        return (
            [_column("Last Seen"), _column("Type"), _column("Reason"), _column("Object"), _column("Message")],
            lambda o, now: [
                age(
                    o.get("lastTimestamp") or o.get("eventTime") or o["metadata"].get("creationTimestamp"),
                    now,
                ),
                o.get("type"),
                o.get("reason"),
                _involved(o),
                o.get("message"),
            ],
        )
    return [_column("Name"), _column("Age")], lambda o, now: [o["metadata"]["name"], created(o, now)]


def _custom_columns(kind: ResourceType) -> tuple[list[Object], Row]:
    if not kind.columns:
        return _builtin_columns(kind)
    definitions = [_column("Name", description="Name must be unique within a namespace.")] + [
        _column(c.name, c.type, priority=c.priority, description=c.description) for c in kind.columns
    ]

    def cells(obj: Object, now: datetime.datetime) -> list[Cell]:
        row: list[Cell] = [obj["metadata"]["name"]]
        for column in kind.columns:
            value = json_path(obj, column.json_path)
            if value is None:
                row.append(None)
            elif column.type == "date":
                row.append(age(str(value), now))
            elif isinstance(value, dict | list):
                row.append(str(value))
            else:
                row.append(value)
        return row

    return definitions, cells


def table(
    kind: ResourceType, objects: Iterable[Object], now: datetime.datetime, resource_version: str
) -> Object:
    """A Table of ``objects``, each row carrying its object (as ``includeObject=Object`` asks)."""
    definitions, cells = _custom_columns(kind) if kind.crd is not None else _builtin_columns(kind)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": [{"cells": cells(obj, now), "object": obj} for obj in objects],
    }


def wants_table(accept: str) -> bool:
    return "as=Table" in accept
