"""Tests for fleetdispatch.validation.listtypes: the uniqueness of set and map lists."""

from __future__ import annotations

from fleetdispatch.validation.admission import validate
from schemas import errors_of, root, spec_of


def test_list_type_set_duplicates() -> None:
    schema = spec_of(x={"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "integer"}})
    assert errors_of(schema, {"x": [1, 5, 5, 5, 2, 2]}) == [
        "spec.x[2]: Duplicate value: 5",
        "spec.x[5]: Duplicate value: 2",
    ]
    assert errors_of(schema, {"x": [1, 2, 3]}) == []


def test_list_type_map_duplicate_keys() -> None:
    conditions = {
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {"type": "object", "properties": {"type": {"type": "string"}, "status": {"type": "string"}}},
    }
    schema = root({"type": "object"}, status={"type": "object", "properties": {"conditions": conditions}})
    obj = {
        "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Ready", "status": "False"}]}
    }
    assert [str(e) for e in validate(schema, obj)] == [
        'status.conditions[1]: Duplicate value: {"type":"Ready"}'
    ]


def test_list_type_map_with_two_keys() -> None:
    schema = spec_of(
        ports={
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["port", "protocol"],
            "items": {
                "type": "object",
                "properties": {"port": {"type": "integer"}, "protocol": {"type": "string"}},
            },
        }
    )
    ports = [
        {"port": 80, "protocol": "TCP"},
        {"port": 80, "protocol": "UDP"},
        {"protocol": "TCP", "port": 80},
    ]
    assert errors_of(schema, {"ports": ports}) == [
        'spec.ports[2]: Duplicate value: {"port":80,"protocol":"TCP"}'
    ]
