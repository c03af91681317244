"""Tests for fleetdispatch.validation.defaults: structural defaulting."""

from __future__ import annotations

import copy

from fleetdispatch.validation.defaults import apply_defaults
from schemas import spec_of

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
