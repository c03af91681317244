"""Tests for fleetdispatch.validation.admission: offline emulation of the API server's CR admission."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest

from fleetdispatch.validation.admission import (
    DUPLICATE,
    INVALID,
    REQUIRED,
    UNKNOWN_FIELD,
    FieldError,
    admit,
    apply_defaults,
    format_invalid,
    invalid_status_message,
    prune,
    validate,
)

GROUP = "fleet.dispatch.dev"
API_VERSION = f"{GROUP}/v1"
CEL_SKIPPED = (
    "<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)


def root(spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A resource schema whose spec is ``spec``."""
    return {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            **extra,
        },
    }


def spec_of(**properties: Any) -> dict[str, Any]:
    return root({"type": "object", "properties": properties})


def errors_of(schema: dict[str, Any], spec: Any, old_spec: Any = None) -> list[str]:
    old = {"spec": old_spec} if old_spec is not None else None
    return [str(e) for e in validate(schema, {"spec": spec}, old)]


def crd(schema: dict[str, Any], *, scope: str = "Namespaced") -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"fleetdispatches.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {"kind": "FleetDispatch", "plural": "fleetdispatches"},
            "versions": [
                {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}},
                {"name": "v0", "served": False, "storage": False},
            ],
        },
    }


def manifest(spec: Any = None, name: str | None = "demo", **meta: Any) -> dict[str, Any]:
    metadata = {**({"name": name} if name is not None else {}), **meta}
    obj: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "FleetDispatch", "metadata": metadata}
    if spec is not None:
        obj["spec"] = spec
    return obj


# --------------------------------------------------------------------------------------------------------
# Schema validation messages
# --------------------------------------------------------------------------------------------------------


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


def test_field_error_str_for_each_kind() -> None:
    assert str(FieldError("spec.x", REQUIRED, "")) == "spec.x: Required value"
    assert (
        str(FieldError("spec.x", "Forbidden", "not allowed", "ignored")) == "spec.x: Forbidden: not allowed"
    )
    assert str(FieldError("spec.x", DUPLICATE, "", "a\tb")) == 'spec.x: Duplicate value: "a\\tb"'
    assert str(FieldError("spec.x", INVALID, "bad", True)) == "spec.x: Invalid value: true: bad"
    assert str(FieldError("spec.x", INVALID, "bad", [1, "a", None])) == (
        'spec.x: Invalid value: [1,"a",null]: bad'
    )
    assert str(FieldError("spec.foo", UNKNOWN_FIELD, "")) == 'unknown field "spec.foo"'


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("date-time", "2024-05-01T10:00:00Z", "2024-05-01 10:00"),
        ("date-time", "2024-05-01T10:00:00.123+02:00", "2024-05-01T25:00:00Z"),
        ("uuid", "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "not-a-uuid"),
        ("ipv4", "10.0.0.1", "10.0.0.256"),
        ("ipv6", "fe80::1", "10.0.0.1"),
        ("cidr", "10.0.0.0/8", "10.0.0.0"),
        ("byte", "aGVsbG8=", "not base64!"),
        ("duration", "1h30m", "soon"),
        ("hostname", "node-1.example.com", "-bad-.com"),
    ],
)
def test_formats(fmt: str, good: str, bad: str) -> None:
    schema = spec_of(x={"type": "string", "format": fmt})
    assert errors_of(schema, {"x": good}) == []
    assert errors_of(schema, {"x": bad})[0] == (
        f'spec.x: Invalid value: "{bad}": spec.x in body must be of type {fmt}: "{bad}"'
    )


def test_unsupported_formats_are_ignored() -> None:
    schema = spec_of(x={"type": "integer", "format": "uint32"}, y={"type": "string", "format": "made-up"})
    assert errors_of(schema, {"x": 2**40, "y": "anything"}) == []


def test_an_integer_must_fit_its_format_and_have_no_fraction() -> None:
    # kube-openapi's range check is a plain error, which apiextensions reports at the nil path.
    schema = spec_of(x={"type": "integer", "format": "int32"}, y={"type": "integer"})
    assert errors_of(schema, {"x": 2**31 - 1, "y": 60.0}) == []
    assert errors_of(schema, {"x": 2**31}) == [
        '<nil>: Invalid value: "": Checked value must be of type integer with format int32 in spec.x'
    ]
    assert errors_of(schema, {"y": 1.5}) == [
        'spec.y: Invalid value: "number": spec.y in body must be of type integer: "number"',
        '<nil>: Invalid value: "": Checked value must be of type integer (default format) in spec.y',
        CEL_SKIPPED,
    ]


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


# --------------------------------------------------------------------------------------------------------
# x-kubernetes-list-type
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Defaulting
# --------------------------------------------------------------------------------------------------------


DEFAULTS = spec_of(
    timeouts={
        "type": "object",
        "default": {},
        "properties": {
            "deadlineSeconds": {"type": "integer", "default": 3600},
            "idleOutputSeconds": {"type": "integer", "default": 600},
        },
    },
    failurePolicy={
        "type": "object",
        "properties": {
            "rules": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "action": {"type": "string", "default": "Fail"},
                        "backoff": {
                            "type": "object",
                            "default": {},
                            "properties": {"seconds": {"type": "integer", "default": 30}},
                        },
                    },
                },
            }
        },
    },
    mode={"type": "string", "default": "Batch"},
    labels={"type": "object", "additionalProperties": {"type": "string", "default": "x"}},
)


def test_defaults_nested_and_in_lists() -> None:
    obj = {
        "spec": {"timeouts": {"deadlineSeconds": 10}, "failurePolicy": {"rules": [{}, {"action": "Retry"}]}}
    }
    original = copy.deepcopy(obj)
    defaulted = apply_defaults(DEFAULTS, obj)
    assert obj == original  # the input is not mutated
    assert defaulted["spec"] == {
        "timeouts": {"deadlineSeconds": 10, "idleOutputSeconds": 600},
        "failurePolicy": {
            "rules": [
                {"action": "Fail", "backoff": {"seconds": 30}},
                {"action": "Retry", "backoff": {"seconds": 30}},
            ]
        },
        "mode": "Batch",
    }


def test_defaulted_object_gets_its_childrens_defaults() -> None:
    defaulted = apply_defaults(DEFAULTS, {"spec": {}})
    assert defaulted["spec"]["timeouts"] == {"deadlineSeconds": 3600, "idleOutputSeconds": 600}


def test_defaults_do_not_create_missing_parents() -> None:
    assert "failurePolicy" not in apply_defaults(DEFAULTS, {"spec": {}})["spec"]
    assert apply_defaults(DEFAULTS, {}) == {}


def test_null_is_defaulted_unless_nullable() -> None:
    assert apply_defaults(DEFAULTS, {"spec": {"mode": None}})["spec"]["mode"] == "Batch"
    assert apply_defaults(DEFAULTS, {"spec": {"labels": {"a": None}}})["spec"]["labels"] == {"a": "x"}
    nullable = spec_of(mode={"type": "string", "nullable": True, "default": "Batch"})
    assert apply_defaults(nullable, {"spec": {"mode": None}}) == {"spec": {"mode": None}}


# --------------------------------------------------------------------------------------------------------
# Pruning and unknown fields
# --------------------------------------------------------------------------------------------------------


PRUNING = spec_of(
    known={"type": "string"},
    nested={"type": "object", "properties": {"a": {"type": "integer"}}},
    items={"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
    env={"type": "object", "additionalProperties": {"type": "string"}},
    anything={"type": "object", "additionalProperties": True},
    raw={
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {"typed": {"type": "object", "properties": {"n": {"type": "integer"}}}},
    },
)


def test_prune_drops_unknown_fields_and_reports_their_paths() -> None:
    obj = manifest(
        {
            "known": "k",
            "foo": 1,
            "nested": {"a": 1, "b": 2},
            "items": [{"name": "x", "extra": True}],
            "env": {"A": "1"},
            "anything": {"deep": {"ly": "kept"}},
            "raw": {"free": {"form": 1}, "typed": {"n": 1, "dropped": 2}},
        }
    )
    obj["status"] = {"phase": "Running"}
    pruned, unknown = prune(PRUNING, obj)
    assert unknown == ["spec.foo", "spec.nested.b", "spec.items[0].extra", "spec.raw.typed.dropped", "status"]
    assert pruned["spec"] == {
        "known": "k",
        "nested": {"a": 1},
        "items": [{"name": "x"}],
        "env": {"A": "1"},
        "anything": {"deep": {"ly": "kept"}},
        "raw": {"free": {"form": 1}, "typed": {"n": 1}},
    }
    assert pruned["metadata"] == {"name": "demo"}  # root apiVersion, kind, metadata are left alone
    assert "foo" in obj["spec"]  # the input is not mutated


def test_preserve_unknown_fields_still_validates_declared_properties() -> None:
    errors = errors_of(PRUNING, {"raw": {"free": "x", "typed": {"n": "one"}}})
    assert errors[0] == (
        'spec.raw.typed.n: Invalid value: "string": '
        'spec.raw.typed.n in body must be of type integer: "string"'
    )


def test_admit_strict_reports_unknown_fields_and_lenient_prunes_them() -> None:
    definition = crd(PRUNING)
    obj = manifest({"known": "k", "foo": 1, "nested": {"b": 2}})
    stored, errors = admit(definition, obj)
    assert [str(e) for e in errors] == ['unknown field "spec.foo"', 'unknown field "spec.nested.b"']
    assert stored["spec"] == {"known": "k", "nested": {}}
    stored, errors = admit(definition, obj, strict=False)
    assert errors == []
    assert stored["spec"] == {"known": "k", "nested": {}}


# --------------------------------------------------------------------------------------------------------
# CEL rules
# --------------------------------------------------------------------------------------------------------


def cel_spec(*rules: dict[str, Any], **properties: Any) -> dict[str, Any]:
    return root({"type": "object", "properties": properties, "x-kubernetes-validations": list(rules)})


TIMEOUTS = {
    "type": "object",
    "properties": {"deadlineSeconds": {"type": "integer"}, "idleOutputSeconds": {"type": "integer"}},
}


def test_cel_rule_pass_and_fail_with_message() -> None:
    schema = cel_spec(
        {
            "rule": "self.timeouts.idleOutputSeconds < self.timeouts.deadlineSeconds",
            "message": "idle must be shorter",
        },
        timeouts=TIMEOUTS,
    )
    assert errors_of(schema, {"timeouts": {"deadlineSeconds": 60, "idleOutputSeconds": 10}}) == []
    assert errors_of(schema, {"timeouts": {"deadlineSeconds": 60, "idleOutputSeconds": 90}}) == [
        "spec: Invalid value: idle must be shorter"
    ]


def test_cel_rule_without_message_and_with_field_path() -> None:
    schema = cel_spec(
        {"rule": "  self.timeouts.idleOutputSeconds < self.timeouts.deadlineSeconds "},
        {
            "rule": "self.timeouts.idleOutputSeconds <= 3600",
            "message": "at most an hour",
            "fieldPath": ".timeouts.idleOutputSeconds",
        },
        timeouts=TIMEOUTS,
    )
    assert errors_of(schema, {"timeouts": {"deadlineSeconds": 60, "idleOutputSeconds": 7200}}) == [
        "spec: Invalid value: failed rule: self.timeouts.idleOutputSeconds < self.timeouts.deadlineSeconds",
        "spec.timeouts.idleOutputSeconds: Invalid value: at most an hour",
    ]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("FieldValueForbidden", "spec.quotaPool: Forbidden: quotaPool needs a queue"),
        ("FieldValueRequired", "spec.quotaPool: Required value: quotaPool needs a queue"),
        ("FieldValueDuplicate", "spec.quotaPool: Duplicate value"),
        ("FieldValueInvalid", "spec.quotaPool: Invalid value: quotaPool needs a queue"),
    ],
)
def test_cel_rule_reasons(reason: str, expected: str) -> None:
    rule = {
        "rule": "!has(self.quotaPool) || has(self.queue)",
        "message": "quotaPool needs a queue",
        "fieldPath": ".quotaPool",
        "reason": reason,
    }
    schema = cel_spec(rule, quotaPool={"type": "string"}, queue={"type": "string"})
    assert errors_of(schema, {"quotaPool": "p"}) == [expected]


def test_cel_rule_on_a_scalar_reports_its_value() -> None:
    schema = spec_of(
        name={"type": "string", "x-kubernetes-validations": [{"rule": "self.startsWith('fd-')"}]}
    )
    assert errors_of(schema, {"name": "x"}) == [
        "spec.name: Invalid value: \"x\": failed rule: self.startsWith('fd-')"
    ]


def test_cel_rules_on_list_items_and_map_values() -> None:
    schema = spec_of(
        steps={
            "type": "array",
            "items": {"type": "integer", "x-kubernetes-validations": [{"rule": "self > 0"}]},
        },
        env={
            "type": "object",
            "additionalProperties": {"type": "string", "x-kubernetes-validations": [{"rule": "self != ''"}]},
        },
    )
    assert errors_of(schema, {"steps": [1, 0], "env": {"A": ""}}) == [
        "spec.steps[1]: Invalid value: 0: failed rule: self > 0",
        "spec.env[A]: Invalid value: \"\": failed rule: self != ''",
    ]


def test_cel_rule_at_the_root_sees_metadata_name() -> None:
    schema = root({"type": "object"})
    schema["x-kubernetes-validations"] = [
        {"rule": "self.metadata.name.size() <= 5", "message": "name too long"}
    ]
    assert [str(e) for e in validate(schema, manifest({}, name="abc"))] == []
    assert [str(e) for e in validate(schema, manifest({}, name="abcdef"))] == [
        "<nil>: Invalid value: name too long"
    ]


def test_cel_skipped_after_a_blocking_schema_error() -> None:
    schema = cel_spec({"rule": "self.a > 5"}, a={"type": "integer"}, b={"type": "string"})
    assert errors_of(schema, {"a": 1, "b": 3}) == [
        'spec.b: Invalid value: "integer": spec.b in body must be of type string: "integer"',
        CEL_SKIPPED,
    ]


def test_cel_runs_after_a_non_blocking_schema_error() -> None:
    schema = cel_spec({"rule": "self.a > 5"}, a={"type": "integer", "minimum": 3})
    assert errors_of(schema, {"a": 1}) == [
        "spec.a: Invalid value: 1: spec.a in body should be greater than or equal to 3",
        "spec: Invalid value: failed rule: self.a > 5",
    ]


def test_cel_evaluation_error_is_reported_not_raised() -> None:
    schema = cel_spec(
        {"rule": "self.missing == 1", "message": "needs missing"},
        {"rule": "self.a / 0 == 1"},
        {"rule": "self.a + 'x' == 'y'"},
        {"rule": "self.a"},
        {"rule": "self.a >"},
        a={"type": "integer"},
        missing={"type": "integer"},
    )
    assert errors_of(schema, {"a": 1}) == [
        'spec: Invalid value: "object": no such key: missing evaluating rule: needs missing',
        'spec: Invalid value: "object": division by zero evaluating rule: self.a / 0 == 1',
        'spec: Invalid value: "object": '
        "'no such overload': call arguments did not match a supported operator, "
        "function or macro signature for rule: self.a + 'x' == 'y'",
        'spec: Invalid value: "object": rule compile error: rule must evaluate to a bool, not IntType',
        'spec: Invalid value: "object": rule compile error: compilation failed: self.a >',
    ]


def test_cel_typing_follows_the_schema() -> None:
    schema = cel_spec(
        {"rule": "self.ratio > 0.5 && self.ratio == 1"},
        {"rule": "self.x__dash__y == 'v' && self.__namespace__ == 'n'"},
        {"rule": "self.owner.lowerAscii() == 'ops' && ['a', 'b'].join('-') == 'a-b'"},
        ratio={"type": "number"},
        owner={"type": "string"},
        namespace={"type": "string"},
        **{"x-y": {"type": "string"}},
    )
    assert errors_of(schema, {"ratio": 1, "owner": "OPS", "namespace": "n", "x-y": "v"}) == []


# --------------------------------------------------------------------------------------------------------
# Transition rules
# --------------------------------------------------------------------------------------------------------


IMMUTABLE = spec_of(
    quotaPool={
        "type": "string",
        "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "quotaPool is immutable"}],
    },
    workers={
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
        "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "size": {
                    "type": "integer",
                    "x-kubernetes-validations": [{"rule": "self >= oldSelf", "message": "cannot shrink"}],
                },
            },
        },
    },
    steps={
        "type": "array",
        "items": {
            "type": "integer",
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "frozen"}],
        },
    },
)


def test_transition_rule_only_on_update() -> None:
    assert errors_of(IMMUTABLE, {"quotaPool": "b"}) == []
    assert errors_of(IMMUTABLE, {"quotaPool": "a"}, old_spec={"quotaPool": "a"}) == []
    assert errors_of(IMMUTABLE, {"quotaPool": "b"}, old_spec={"quotaPool": "a"}) == [
        'spec.quotaPool: Invalid value: "b": quotaPool is immutable'
    ]


def test_transition_rule_skipped_without_an_old_value_at_that_path() -> None:
    assert errors_of(IMMUTABLE, {"quotaPool": "b"}, old_spec={"workers": []}) == []


def test_transition_rules_correlate_map_lists_by_key_but_not_other_lists() -> None:
    old = {"workers": [{"name": "a", "size": 3}, {"name": "b", "size": 3}], "steps": [1, 2]}
    new = {
        "workers": [{"name": "c", "size": 1}, {"name": "b", "size": 2}, {"name": "a", "size": 3}],
        "steps": [9, 9],
    }
    assert errors_of(IMMUTABLE, new, old_spec=old) == [
        "spec.workers[1].size: Invalid value: 2: cannot shrink"
    ]


def test_admit_update_runs_transition_rules_and_keeps_the_name() -> None:
    definition = crd(IMMUTABLE)
    old = manifest({"quotaPool": "a"})
    _, errors = admit(definition, manifest({"quotaPool": "b"}, name="other"), old)
    assert [str(e) for e in errors] == [
        'metadata.name: Invalid value: "other": field is immutable',
        'spec.quotaPool: Invalid value: "b": quotaPool is immutable',
    ]


# --------------------------------------------------------------------------------------------------------
# admit: identity and metadata
# --------------------------------------------------------------------------------------------------------


SIMPLE = root(
    {
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": {"type": "string", "minLength": 1},
            "retries": {"type": "integer", "minimum": 0, "default": 3},
        },
    }
)


def test_admit_accepts_and_defaults() -> None:
    obj = manifest({"image": "busybox"})
    stored, errors = admit(crd(SIMPLE), obj)
    assert errors == []
    assert stored["spec"] == {"image": "busybox", "retries": 3}
    assert "retries" not in obj["spec"]


def test_admit_refuses_wrong_api_version_and_kind() -> None:
    definition = crd(SIMPLE)
    _, errors = admit(definition, {**manifest({"image": "x"}), "apiVersion": f"{GROUP}/v0"})
    assert [str(e) for e in errors] == [
        f'apiVersion: Unsupported value: "{GROUP}/v0": supported values: "{API_VERSION}"'
    ]
    _, errors = admit(definition, {**manifest({"image": "x"}), "apiVersion": "other.dev/v1", "kind": "Pod"})
    assert [str(e) for e in errors] == [
        f'apiVersion: Unsupported value: "other.dev/v1": supported values: "{API_VERSION}"',
        'kind: Unsupported value: "Pod": supported values: "FleetDispatch"',
    ]


def test_admit_rejects_a_malformed_crd() -> None:
    with pytest.raises(ValueError, match="CustomResourceDefinition"):
        admit({"spec": {"group": GROUP}}, manifest({}))


def test_admit_checks_metadata_name() -> None:
    definition = crd(SIMPLE)
    _, errors = admit(definition, manifest({"image": "x"}, name=None))
    assert [str(e) for e in errors] == [
        "metadata.name: Required value: name or generateName is required",
        CEL_SKIPPED,
    ]
    _, errors = admit(definition, manifest({"image": "x"}, name=None, generateName="demo-"))
    assert errors == []
    _, errors = admit(definition, manifest({"image": "x"}, name="Bad_Name"))
    assert [str(e) for e in errors] == [
        'metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of lower case '
        "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. "
        "'example.com', regex used for validation is "
        "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    ]
    _, errors = admit(definition, manifest({"image": "x"}, name="a" * 254))
    assert (
        str(errors[0]) == f'metadata.name: Invalid value: "{"a" * 254}": must be no more than 253 characters'
    )


def test_admit_checks_namespace_of_namespaced_kinds_only() -> None:
    obj = manifest({"image": "x"}, namespace="Team_A")
    _, errors = admit(crd(SIMPLE), obj)
    assert [e.path for e in errors] == ["metadata.namespace"]
    assert admit(crd(SIMPLE, scope="Cluster"), obj)[1] == []


def test_admit_reports_every_phase_in_order() -> None:
    obj = manifest({"image": "", "retries": -1, "color": "red"})
    _, errors = admit(crd(SIMPLE), obj)
    assert [str(e) for e in errors] == [
        'unknown field "spec.color"',
        'spec.image: Invalid value: "": spec.image in body should be at least 1 chars long',
        "spec.retries: Invalid value: -1: spec.retries in body should be greater than or equal to 0",
    ]


def test_admit_accepts_yaml_timestamps() -> None:
    schema = spec_of(start={"type": "string", "format": "date-time"})
    when = datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.UTC)
    stored, errors = admit(crd(schema), manifest({"start": when}))
    assert errors == []
    assert stored["spec"]["start"] == "2024-05-01T10:00:00Z"


# --------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------


ERRORS = [
    FieldError(
        "spec.timeouts.deadlineSeconds",
        INVALID,
        "spec.timeouts.deadlineSeconds in body should be greater than or equal to 1",
        0,
    ),
    FieldError("spec.template", REQUIRED, ""),
]


def test_format_invalid_one_error() -> None:
    assert format_invalid("FleetDispatch", "demo", ERRORS[1:]) == (
        'The FleetDispatch "demo" is invalid: spec.template: Required value'
    )


def test_format_invalid_several_errors() -> None:
    assert format_invalid("FleetDispatch", "demo", ERRORS) == (
        'The FleetDispatch "demo" is invalid: \n'
        "* spec.timeouts.deadlineSeconds: Invalid value: 0: spec.timeouts.deadlineSeconds in body should be "
        "greater than or equal to 1\n"
        "* spec.template: Required value"
    )


def test_invalid_status_message() -> None:
    qualified = f"FleetDispatch.{GROUP}"
    assert invalid_status_message(qualified, "demo", ERRORS[1:]) == (
        f'{qualified} "demo" is invalid: spec.template: Required value'
    )
    assert invalid_status_message(qualified, "demo", [*ERRORS, ERRORS[1]]) == (
        f'{qualified} "demo" is invalid: [spec.timeouts.deadlineSeconds: Invalid value: 0: '
        "spec.timeouts.deadlineSeconds in body should be greater than or equal to 1, "
        "spec.template: Required value]"
    )
