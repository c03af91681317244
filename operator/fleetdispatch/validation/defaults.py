"""Structural defaulting: what the API server fills in from a schema's ``default`` before it validates.

A property's ``default`` fills it in when it is missing (or null and not ``nullable``), recursively, so a
defaulted object receives its children's defaults, in list items and map values too. A ``null`` for a
non-nullable property without a default is removed, as the server does: null stands for "absent".

Deliberately not here: removing null list items and map values (they fail validation, as on the server),
and creating a missing parent to hold a default (the server does not either).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetdispatch.validation.values import Schema, mapping, plain

__all__ = ["apply_defaults", "default_in_place"]


def _has_default(schema: Schema) -> bool:
    return schema.get("default") is not None


def _non_nullable_null(value: object, schema: Schema) -> bool:
    return value is None and not schema.get("nullable", False)


def _filled(schema: Schema, value: Any) -> Any:
    """A list item or map value: its schema's default when it is a null that may not be one."""
    return plain(schema["default"]) if _non_nullable_null(value, schema) and _has_default(schema) else value


def default_in_place(schema: Schema, value: Any) -> Any:
    """Structural defaulting on a plain copy (mutated in place and returned)."""
    if isinstance(value, dict):
        props = mapping(schema.get("properties"))
        for name, declared in props.items():
            prop = mapping(declared)
            if _has_default(prop) and (name not in value or _non_nullable_null(value[name], prop)):
                value[name] = plain(prop["default"])
        for name in [k for k, v in value.items() if v is None]:
            found = props.get(name)
            if isinstance(found, Mapping) and not _has_default(found) and not found.get("nullable", False):
                del value[name]  # PruneNonNullableNullsWithoutDefaults
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if name in props:
                value[name] = default_in_place(mapping(props[name]), item)
            elif isinstance(extra, Mapping):
                value[name] = default_in_place(extra, _filled(extra, item))
        return value
    if isinstance(value, list):
        items = mapping(schema.get("items"))
        for index, item in enumerate(value):
            value[index] = default_in_place(items, _filled(items, item))
    return value


def apply_defaults(schema: Mapping[str, Any], obj: Any) -> Any:
    """Return a copy of ``obj`` with the schema's defaults applied; ``obj`` is not modified.

    A missing property with a ``default`` gets it (a null one too, unless ``nullable``), and the defaulted
    value gets its own children's defaults. Null values of non-nullable properties without a default are
    removed, as the API server does before defaulting.
    """
    return default_in_place(schema, plain(obj))
