"""The uniqueness checks of ``x-kubernetes-list-type: set`` and ``map`` lists (apiextensions' listtype).

A ``set`` may not hold a value twice; a ``map`` list's items must be objects whose
``x-kubernetes-list-map-keys`` are unique. Each repeat is reported at its second appearance, as
``Duplicate value`` with the value (a set) or the key fields (a map list). Paths name map keys
``spec.labels[key]``, as this phase of the server does (the schema phase writes ``spec.labels.key``).

Deliberately not here: the schema's own checks of the items (:mod:`.schema`), and the rule that an update
is checked only when the old object's lists were sound (:mod:`.admission` applies it, having both objects).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from fleetdispatch.validation.messages import DUPLICATE, INVALID, Collector, FieldError, child_path
from fleetdispatch.validation.values import Schema, members

__all__ = ["validate_list_types"]

_UNSPECIFIED: Final = ("unspecified key",)


def _unique_key(value: object) -> object:
    if isinstance(value, Mapping | list):
        return ("compound", json.dumps(value, sort_keys=True, separators=(",", ":")))
    if value is _UNSPECIFIED:
        return value
    return ("scalar", type(value).__name__, value)


def _non_unique(values: Sequence[object]) -> list[int]:
    """Indices of the second appearance of each repeated value (listtype.validateListSet)."""
    seen: dict[object, int] = {}
    repeated: list[int] = []
    for index, value in enumerate(values):
        key = _unique_key(value)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 2:
            repeated.append(index)
    return repeated


def validate_list_types(schema: Schema, value: Any, out: Collector) -> None:
    """Report the repeats in every set and map list of ``value`` to ``out``."""
    _walk(schema, value, "", out)


def _walk(schema: Schema, value: Any, path: str, out: Collector) -> None:
    if isinstance(value, Mapping):
        for key, item, member, declared in members(schema, value):
            _walk(member, item, child_path(path, key) if declared else f"{path}[{key}]", out)
        return
    if not isinstance(value, list):
        return
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set":
        for index in _non_unique(value):
            out.add(FieldError(f"{path}[{index}]", DUPLICATE, "", value[index]))
    elif list_type == "map":
        _list_map(schema, value, path, out)
    items = schema.get("items")
    if isinstance(items, Mapping):
        for index, item in enumerate(value):
            _walk(items, item, f"{path}[{index}]", out)


def _list_map(schema: Schema, value: list[Any], path: str, out: Collector) -> None:
    for index, item in enumerate(value):
        if item is not None and not isinstance(item, Mapping):
            out.add(
                FieldError(
                    f"{path}[{index}]", INVALID, "must be an object for an array of list-type map", item
                )
            )
            return
    key_fields = [k for k in schema.get("x-kubernetes-list-map-keys") or [] if isinstance(k, str)]
    if len(value) <= 1 or not key_fields:
        return
    keys: list[object] = []
    for item in value:
        if len(key_fields) == 1:
            keys.append(item[key_fields[0]] if item is not None and key_fields[0] in item else _UNSPECIFIED)
        else:
            keys.append({k: item[k] for k in key_fields if item is not None and k in item})
    for index in _non_unique(keys):
        key = keys[index]
        shown = key if isinstance(key, dict) else ({} if key is _UNSPECIFIED else {key_fields[0]: key})
        out.add(FieldError(f"{path}[{index}]", DUPLICATE, "", shown))
