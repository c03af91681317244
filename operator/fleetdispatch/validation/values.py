"""Objects and schemas as plain data, read defensively: what every admission phase needs to walk them.

Here: :func:`shape_problem` (an object too deep or too large to walk, checked before any phase walks it),
:func:`plain` (the deep copy each phase works on, YAML timestamps back as RFC 3339 strings, integers beyond
int64 as the server decodes them),
:func:`json_type` (a decoded value's JSON schema type), and the reading of a schema node that may be
malformed: :func:`mapping`, :func:`schema_type`, and :func:`members`, an object's members in the order the
server's validators walk them.

Deliberately not here: any judgement of a value (the phases make them), and the original spelling of a
YAML timestamp, which a loader has already lost.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping
from typing import Any, Final

__all__ = [
    "MAX_DEPTH",
    "MAX_VALUES",
    "META_FIELDS",
    "Schema",
    "json_type",
    "mapping",
    "members",
    "plain",
    "schema_type",
    "server_integer",
    "shape_problem",
]

Schema = Mapping[str, Any]

# Kept as they are at a resource's root and in embedded resources: the schema need not declare them.
META_FIELDS: Final = ("apiVersion", "kind", "metadata")


# The most any phase walks: every phase recurses through the object, and CEL converts it whole. The API
# server allows 10,000 levels (its JSON decoding); no manifest of ours comes near either limit.
MAX_DEPTH: Final = 100
MAX_VALUES: Final = 100_000
_INT64: Final = range(-(2**63), 2**63)


def shape_problem(value: Any) -> str | None:
    """Why ``value`` is too deep (more than MAX_DEPTH nested objects and arrays) or too large (more than
    MAX_VALUES values, shared ones counted each time, cycles ending there) to be walked; None when it is
    not. Iterative: it cannot itself exhaust the stack."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while pending:
        item, depth = pending.pop()
        seen += 1
        if seen > MAX_VALUES:
            return f"more than {MAX_VALUES} values"
        kind = type(item)
        if kind is str or kind is int or kind is float or kind is bool or item is None:
            continue  # most values, answered before the slower abstract checks
        if isinstance(item, Mapping | list | tuple):
            if depth > MAX_DEPTH:
                return f"nested more than {MAX_DEPTH} levels deep"
            children = item.values() if isinstance(item, Mapping) else item
            pending.extend((child, depth + 1) for child in children)
    return None


def server_integer(value: int) -> int | float | str:
    """An integer as the API server decodes it: beyond int64 a float64, and beyond float64 (where kubectl's
    YAML reader already gives up on it as a number) its digits, as a string."""
    if value in _INT64:
        return value
    try:
        return float(value)
    except OverflowError:
        try:
            return str(value)
        except ValueError:  # more digits than Python prints
            return f"an integer of {value.bit_length()} bits"


def plain(value: Any) -> Any:
    """A deep copy made of dicts, lists and JSON scalars (YAML timestamps become RFC 3339 strings, integers
    beyond int64 what the server makes of them). Call it on what :func:`shape_problem` accepts."""
    kind = type(value)
    if kind is str or kind is float or kind is bool or value is None:  # most values, answered first
        return value
    if kind is int:
        return value if -(2**63) <= value < 2**63 else server_integer(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime.datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, int) and not isinstance(value, bool):
        return server_integer(value)
    return value


def json_type(value: object) -> str:
    """The JSON schema type of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def mapping(value: object) -> Schema:
    """``value`` if it is a mapping (a schema node, an object), else an empty one."""
    return value if isinstance(value, Mapping) else {}


def schema_type(schema: Schema) -> str:
    """The node's ``type``, or "" when it has none."""
    value = schema.get("type")
    return value if isinstance(value, str) else ""


def members(schema: Schema, value: Mapping[str, Any]) -> Iterator[tuple[str, Any, Schema, bool]]:
    """An object's members that have a schema: ``(key, value, schema, declared)``.

    In the order the server's validators walk them: the keys ``additionalProperties`` covers first, then the
    declared properties (``declared`` is true for those), each in the object's order. Members with no schema
    are left out.
    """
    props = mapping(schema.get("properties"))
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        for key, item in value.items():
            if key not in props:
                yield key, item, extra, False
    for key, item in value.items():
        if key in props:
            yield key, item, mapping(props[key]), True
