"""Tests for fleetdispatch.validation.cel: CEL rules, their errors, and transition rules on update."""

from __future__ import annotations

from typing import Any

import pytest

from fleetdispatch.validation.admission import admit, validate
from schemas import CEL_SKIPPED, crd, errors_of, manifest, root, spec_of


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
