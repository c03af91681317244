"""Small schemas, CRDs and manifests for the tests of offline validation (tests/unit/test_admission.py and
tests/unit/test_validation_*.py), and the expected text of the error that stands for skipped CEL rules."""

from __future__ import annotations

from typing import Any

from fleetdispatch.validation.admission import validate

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
    """A resource schema whose spec is an object of these properties."""
    return root({"type": "object", "properties": properties})


def errors_of(schema: dict[str, Any], spec: Any, old_spec: Any = None) -> list[str]:
    """The errors, as printed, of an object with this spec (an update of ``old_spec``, if given)."""
    old = {"spec": old_spec} if old_spec is not None else None
    return [str(e) for e in validate(schema, {"spec": spec}, old)]


def crd(schema: dict[str, Any], *, scope: str = "Namespaced") -> dict[str, Any]:
    """A FleetDispatch CRD serving v1 with this schema (and v0, not served)."""
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
    """A FleetDispatch of the CRD above: this spec (none if None), this name (none if None), more metadata."""
    metadata = {**({"name": name} if name is not None else {}), **meta}
    obj: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "FleetDispatch", "metadata": metadata}
    if spec is not None:
        obj["spec"] = spec
    return obj
