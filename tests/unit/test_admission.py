"""Tests for fleetdispatch.validation.admission: admit, the API server's request path for a CR, offline: the
object's identity and metadata, the phases in order, and the object as it would be stored."""

from __future__ import annotations

import datetime

import pytest

from fleetdispatch.validation.admission import admit
from schemas import API_VERSION, CEL_SKIPPED, GROUP, crd, manifest, root, spec_of

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
