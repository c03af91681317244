"""Tests for fleetdispatch.validation.schema: the OpenAPI value validations, as the API server words them."""

from __future__ import annotations

from typing import Any

import pytest

from fleetdispatch.validation.defaults import apply_defaults
from schemas import CEL_SKIPPED, errors_of, root, spec_of


@pytest.mark.parametrize(
    ("prop", "value", "expected"),
    [
        (
            {"type": "integer"},
            "x",
            'spec.x: Invalid value: "string": spec.x in body must be of type integer: "string"',
        ),
        (
            {"type": "string"},
            3,
            'spec.x: Invalid value: "integer": spec.x in body must be of type string: "integer"',
        ),
        (
            {"type": "object"},
            [1],
            'spec.x: Invalid value: "array": spec.x in body must be of type object: "array"',
        ),
        (
            {"type": "integer", "minimum": 1},
            0,
            "spec.x: Invalid value: 0: spec.x in body should be greater than or equal to 1",
        ),
        (
            {"type": "integer", "maximum": 604800},
            604801,
            "spec.x: Invalid value: 604801: spec.x in body should be less than or equal to 604800",
        ),
        (
            {"type": "integer", "minimum": 0, "exclusiveMinimum": True},
            0,
            "spec.x: Invalid value: 0: spec.x in body should be greater than 0",
        ),
        (
            {"type": "integer", "maximum": 5, "exclusiveMaximum": True},
            5,
            "spec.x: Invalid value: 5: spec.x in body should be less than 5",
        ),
        (
            {"type": "number", "minimum": 0.5},
            0.25,
            "spec.x: Invalid value: 0.25: spec.x in body should be greater than or equal to 0.5",
        ),
        (
            {"type": "number", "maximum": 1000000},
            2.5e6,
            "spec.x: Invalid value: 2.5e+06: spec.x in body should be less than or equal to 1e+06",
        ),
        (
            {"type": "integer", "multipleOf": 5},
            7,
            "spec.x: Invalid value: 7: spec.x in body should be a multiple of 5",
        ),
        ({"type": "string", "maxLength": 253}, "a" * 254, "spec.x: Too long: may not be more than 253 bytes"),
        ({"type": "string", "maxLength": 1}, "ab", "spec.x: Too long: may not be more than 1 byte"),
        (
            {"type": "string", "minLength": 1},
            "",
            'spec.x: Invalid value: "": spec.x in body should be at least 1 chars long',
        ),
        (
            {"type": "array", "maxItems": 32, "items": {"type": "integer"}},
            list(range(40)),
            "spec.x: Too many: 40: must have at most 32 items",
        ),
        (
            {"type": "array", "minItems": 1, "items": {"type": "integer"}},
            [],
            "spec.x: Invalid value: 0: spec.x in body should have at least 1 items",
        ),
        (
            {"type": "object", "maxProperties": 64, "additionalProperties": {"type": "string"}},
            {f"k{i}": "v" for i in range(70)},
            "spec.x: Too many: 70: must have at most 64 items",
        ),
        (
            {"type": "object", "minProperties": 2, "additionalProperties": {"type": "string"}},
            {"a": "b"},
            "spec.x: Invalid value: 1: spec.x in body should have at least 2 properties",
        ),
        (
            {"type": "string", "enum": ["Fail", "Retry"]},
            "Foo",
            'spec.x: Unsupported value: "Foo": supported values: "Fail", "Retry"',
        ),
        ({"type": "integer", "enum": [1, 2]}, 3, 'spec.x: Unsupported value: 3: supported values: "1", "2"'),
        (
            {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
            "Bad_Name",
            'spec.x: Invalid value: "Bad_Name": '
            "spec.x in body should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
        ),
        (
            {"type": "string", "format": "date-time"},
            "yesterday",
            'spec.x: Invalid value: "yesterday": spec.x in body must be of type date-time: "yesterday"',
        ),
        (
            {"type": "string", "format": "date"},
            "2024-02-30",
            'spec.x: Invalid value: "2024-02-30": spec.x in body must be of type date: "2024-02-30"',
        ),
        (
            {"type": "integer"},
            None,
            'spec.x: Invalid value: "null": spec.x in body must be of type integer: "null"',
        ),
    ],
)
def test_schema_error_messages(prop: dict[str, Any], value: Any, expected: str) -> None:
    errors = errors_of(spec_of(x=prop), {"x": value})
    assert errors[0] == expected
    assert len(errors) <= 2  # plus the CEL placeholder after a blocking error


def test_required_value() -> None:
    schema = root(
        {"type": "object", "required": ["template"], "properties": {"template": {"type": "object"}}}
    )
    assert errors_of(schema, {}) == ["spec.template: Required value", CEL_SKIPPED]


def test_int_or_string() -> None:
    schema = spec_of(x={"x-kubernetes-int-or-string": True})
    assert errors_of(schema, {"x": 3}) == errors_of(schema, {"x": "50%"}) == []
    assert errors_of(schema, {"x": True})[0] == (
        'spec.x: Invalid value: "boolean": spec.x in body must be of type integer,string: "boolean"'
    )


def test_nullable() -> None:
    schema = spec_of(x={"type": "string", "nullable": True}, y={"type": "string"})
    assert errors_of(schema, {"x": None}) == []
    # A null for a non-nullable field is treated as absent: defaulting drops it before validation.
    assert apply_defaults(schema, {"spec": {"y": None}}) == {"spec": {}}


def test_all_errors_are_reported_in_field_order() -> None:
    schema = spec_of(
        a={"type": "integer", "minimum": 1},
        b={"type": "string", "pattern": "^x"},
        c={"type": "object", "properties": {"d": {"type": "integer", "maximum": 3}}},
    )
    assert errors_of(schema, {"c": {"d": 4}, "a": 0, "b": "y"}) == [
        "spec.c.d: Invalid value: 4: spec.c.d in body should be less than or equal to 3",
        "spec.a: Invalid value: 0: spec.a in body should be greater than or equal to 1",
        "spec.b: Invalid value: \"y\": spec.b in body should match '^x'",
    ]


def test_nested_list_paths_and_map_keys() -> None:
    schema = spec_of(
        rules={
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"action": {"type": "string", "enum": ["Fail", "Retry"]}},
            },
        },
        labels={"type": "object", "additionalProperties": {"type": "string", "maxLength": 2}},
    )
    assert errors_of(schema, {"rules": [{"action": "Fail"}, {"action": "Foo"}], "labels": {"team": "abc"}})[
        :2
    ] == [
        'spec.rules[1].action: Unsupported value: "Foo": supported values: "Fail", "Retry"',
        "spec.labels.team: Too long: may not be more than 2 bytes",
    ]


def test_any_of_reports_like_kube_openapi() -> None:
    schema = root(
        {
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
            "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
        }
    )
    assert errors_of(schema, {"a": "x"}) == []
    assert errors_of(schema, {}) == [
        '<nil>: Invalid value: "": "spec" must validate at least one schema (anyOf)',
        "spec.a: Required value",
        CEL_SKIPPED,
    ]
