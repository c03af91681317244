"""Objects and schemas as plain data, read defensively: what every admission phase needs to walk them.

Here: :func:`plain` (the deep copy each phase works on, YAML timestamps back as RFC 3339 strings),
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

__all__ = ["META_FIELDS", "Schema", "json_type", "mapping", "members", "plain", "schema_type"]

Schema = Mapping[str, Any]

# Kept as they are at a resource's root and in embedded resources: the schema need not declare them.
META_FIELDS: Final = ("apiVersion", "kind", "metadata")


def plain(value: Any) -> Any:
    """A deep copy made of dicts, lists and JSON scalars (YAML timestamps become RFC 3339 strings)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime.datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, datetime.date):
        return value.isoformat()
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
