"""The CRDs would be accepted by a real API server: the checks apiextensions makes when a CRD is written.

No cluster is available to `kubectl apply -f crds/` against, so the rules that would make it fail are
checked here: a structural schema (a type on every node), defaults that are themselves valid, map-list keys
that are required, CEL rules that compile, `fieldPath`s that name declared fields, and `reason`s the API
knows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import celpy
import pytest

from fleetdispatch.validation import admission, defaults
from fleetdispatch.validation.manifests import crds

KINDS = ["FleetDispatch", "QuotaPool"]
REASONS = {"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"}


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def _schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(kind: str) -> None:
    # An int-or-string node (a quantity) is the one kind a structural schema leaves without a type.
    untyped = [
        path
        for path, node in _nodes(_schema(kind))
        if "type" not in node and node.get("x-kubernetes-int-or-string") is not True
    ]
    assert untyped == []
    metadata = _schema(kind)["properties"]["metadata"]
    assert metadata == {"type": "object"}, "root metadata may only be `type: object`"


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_are_valid_for_their_own_schema(kind: str) -> None:
    for path, node in _nodes(_schema(kind)):
        if "default" in node:
            defaulted = defaults.apply_defaults(node, node["default"])
            errors = admission.validate(node, defaulted, resource_root=False)
            assert errors == [], f"default of {path} is invalid: {errors}"


@pytest.mark.parametrize("kind", KINDS)
def test_map_list_keys_are_required(kind: str) -> None:
    for path, node in _nodes(_schema(kind)):
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), path


@pytest.mark.parametrize("kind", KINDS)
def test_cel_rules_compile_and_point_at_declared_fields(kind: str) -> None:
    environment = celpy.Environment()
    for path, node in _nodes(_schema(kind)):
        for rule in node.get("x-kubernetes-validations", []):
            environment.compile(rule["rule"])
            assert rule.get("message"), f"{path}: a rule without a message leaves the user guessing"
            assert rule.get("reason", "FieldValueInvalid") in REASONS
            target = node
            for part in rule.get("fieldPath", "").split(".")[1:]:
                assert part in target.get("properties", {}), (
                    f"{path}: fieldPath {rule['fieldPath']} is undeclared"
                )
                target = target["properties"][part]


def test_transition_rules_sit_outside_atomic_lists() -> None:
    # The API server cannot correlate old and new items of a list that is not a map list, so it refuses
    # transition rules (those using oldSelf) below one.
    def walk(node: dict[str, Any], in_list: bool, path: str) -> Iterator[str]:
        for rule in node.get("x-kubernetes-validations", []):
            if "oldSelf" in rule["rule"] and in_list:
                yield path
        for name, child in node.get("properties", {}).items():
            yield from walk(child, in_list, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            atomic = node.get("x-kubernetes-list-type") != "map"
            yield from walk(node["items"], in_list or atomic, f"{path}[]")

    for kind in KINDS:
        assert list(walk(_schema(kind), False, kind)) == []
