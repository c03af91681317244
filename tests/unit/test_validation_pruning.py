"""Tests for fleetdispatch.validation.pruning: unknown fields, dropped and reported."""

from __future__ import annotations

from fleetdispatch.validation.admission import admit
from fleetdispatch.validation.pruning import prune
from schemas import crd, errors_of, manifest, spec_of

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
