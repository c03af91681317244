"""Structural pruning: the fields a schema does not declare, dropped (k8s.io/apiextensions-apiserver pruning).

:func:`prune` returns the pruned copy and the paths of what it dropped, spelled as the server's strict field
validation spells them (``spec.items[0].foo``), which :mod:`.admission` turns into ``unknown field`` errors.
``x-kubernetes-preserve-unknown-fields`` keeps undeclared fields (declared ones below it are still pruned),
``additionalProperties`` (a schema, or ``true``) declares maps, and ``apiVersion``/``kind``/``metadata`` are
kept at the root and in embedded resources.

Deliberately not here: pruning ``metadata`` to ObjectMeta's fields (it is kept as it is), and refusing the
request, which the server does with a 400 before it validates anything when unknown fields are strict
errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetdispatch.validation.messages import child_path
from fleetdispatch.validation.values import META_FIELDS, Schema, mapping, plain

__all__ = ["prune"]


def _prune(schema: Schema | None, value: Any, path: str, unknown: list[str], *, root: bool) -> Any:
    """Structural pruning of a plain copy, in place."""
    if schema is not None and schema.get("x-kubernetes-preserve-unknown-fields") is True:
        return _skip_prune(schema, value, path, unknown)
    if isinstance(value, dict):
        if schema is None:
            unknown.extend(child_path(path, name) for name in value)
            value.clear()
            return value
        props = mapping(schema.get("properties"))
        embedded = schema.get("x-kubernetes-embedded-resource") is True
        open_map = schema.get("additionalProperties") is True  # any undeclared field is kept
        for name in list(value):
            if (root or embedded) and name in META_FIELDS and (name == "metadata" or name not in props):
                continue  # kept as is (the server prunes metadata to ObjectMeta; we leave it alone)
            if not _prune_member(schema, value, name, path, unknown) and not open_map:
                unknown.append(child_path(path, name))
                del value[name]
        return value
    if isinstance(value, list):
        items = schema.get("items") if schema is not None else None
        item_schema = items if isinstance(items, Mapping) else None
        for index, item in enumerate(value):
            value[index] = _prune(item_schema, item, f"{path}[{index}]", unknown, root=False)
    return value


def _skip_prune(schema: Schema, value: Any, path: str, unknown: list[str]) -> Any:
    """Below x-kubernetes-preserve-unknown-fields: keep unknown fields, still prune declared ones."""
    if isinstance(value, dict):
        embedded = schema.get("x-kubernetes-embedded-resource") is True
        for name in list(value):
            if not (embedded and name in META_FIELDS):
                _prune_member(schema, value, name, path, unknown)
    elif isinstance(value, list):
        items = mapping(schema.get("items"))
        for index, item in enumerate(value):
            value[index] = _skip_prune(items, item, f"{path}[{index}]", unknown)
    return value


def _prune_member(schema: Schema, value: dict[str, Any], name: str, path: str, unknown: list[str]) -> bool:
    """Prune ``value[name]`` by its schema (a declared property, or ``additionalProperties``); False when
    the schema has none for it."""
    props = mapping(schema.get("properties"))
    extra = schema.get("additionalProperties")
    if name in props:
        member = mapping(props[name])
    elif isinstance(extra, Mapping):
        member = extra
    else:
        return False
    value[name] = _prune(member, value[name], child_path(path, name), unknown, root=False)
    return True


def prune(schema: Mapping[str, Any], obj: Any, *, resource_root: bool = True) -> tuple[Any, list[str]]:
    """Return a copy of ``obj`` without the fields ``schema`` does not declare, and their paths.

    Paths are spelled as the API server's strict field validation spells them (``spec.items[0].foo``).
    With ``resource_root`` (the default) the top-level ``apiVersion``, ``kind`` and ``metadata`` are kept.
    """
    unknown: list[str] = []
    return _prune(schema, plain(obj), "", unknown, root=resource_root), unknown
