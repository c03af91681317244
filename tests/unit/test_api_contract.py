"""The CRDs and the pydantic models describe one API: same field names, types, bounds, enums and defaults.

Both sides are walked as JSON schemas (the CRD's openAPIV3Schema, and the models' generated schema), so a
field added, renamed, re-typed, re-bounded or re-defaulted on one side only fails here with its path.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from fleetdispatch.api import models
from fleetdispatch.validation import defaults
from fleetdispatch.validation.manifests import crds

# Keywords whose values must be equal on both sides wherever either side states them.
BOUNDS = ("minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "maxProperties")
JSON_TYPES = {"integer", "string", "boolean", "array", "object", "number"}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The model side of a node: `$ref`s followed, `X | None` unwrapped, `const` read as a one-value enum."""
    if "$ref" in node:
        return _resolve(
            {**defs[node["$ref"].split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}}, defs
        )
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        assert len(branches) == 1, f"unexpected union {node}"
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _resolve({**branches[0], **rest}, defs)
    if "const" in node:
        return {**{k: v for k, v in node.items() if k != "const"}, "enum": [node["const"]]}
    return node


def _walk(
    crd: dict[str, Any], model: dict[str, Any], defs: dict[str, Any], path: str, problems: list[str]
) -> None:
    model = _resolve(model, defs)
    crd_type, model_type = crd.get("type"), model.get("type")
    if model_type is None and "enum" in model:
        model_type = "string"
    if crd_type != model_type:
        problems.append(f"{path}: CRD type {crd_type}, model type {model_type}")
        return
    for keyword in BOUNDS:
        if crd.get(keyword) != model.get(keyword):
            problems.append(
                f"{path}: {keyword} is {crd.get(keyword)!r} in the CRD, {model.get(keyword)!r} in the model"
            )
    if sorted(crd.get("enum", [])) != sorted(model.get("enum", [])):
        problems.append(f"{path}: enum {crd.get('enum')} in the CRD, {model.get('enum')} in the model")
    if crd_type == "array":
        _walk(crd["items"], model["items"], defs, f"{path}[]", problems)
    if crd_type == "object" and "properties" in crd:
        crd_fields, model_fields = set(crd["properties"]), set(model.get("properties", {}))
        if crd_fields != model_fields:
            problems.append(
                f"{path}: fields only in the CRD {sorted(crd_fields - model_fields)}, "
                f"only in the model {sorted(model_fields - crd_fields)}"
            )
        if set(crd.get("required", [])) != set(model.get("required", [])):
            problems.append(
                f"{path}: required {crd.get('required')} in the CRD, {model.get('required')} in the model"
            )
        for name in crd_fields & model_fields:
            _walk(crd["properties"][name], model["properties"][name], defs, f"{path}.{name}", problems)
    elif crd_type == "object" and "additionalProperties" in crd:
        _walk(crd["additionalProperties"], model["additionalProperties"], defs, f"{path}{{}}", problems)


def _schema(kind: str, part: str) -> dict[str, Any]:
    schema: dict[str, Any] = crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"][part]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("kind", "part", "model"),
    [
        ("FleetDispatch", "spec", models.FleetDispatchSpec),
        ("FleetDispatch", "status", models.FleetDispatchStatus),
        ("QuotaPool", "spec", models.QuotaPoolSpec),
        ("QuotaPool", "status", models.QuotaPoolStatus),
    ],
)
def test_crd_and_model_agree_on_fields_types_and_bounds(kind: str, part: str, model: type[BaseModel]) -> None:
    model_schema = model.model_json_schema(by_alias=True)
    crd_schema = _schema(kind, part)
    if part == "status":
        # Status bounds are the API server's business; the operator reads status leniently
        # (see models._Status).
        crd_schema = _strip_bounds(crd_schema)
        model_schema = _strip_bounds(model_schema)
    problems: list[str] = []
    _walk(crd_schema, model_schema, model_schema.get("$defs", {}), f"{kind}.{part}", problems)
    assert problems == []


def _strip_bounds(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_bounds(v) for k, v in node.items() if k not in (*BOUNDS, "required", "format")}
    if isinstance(node, list):
        return [_strip_bounds(v) for v in node]
    return node


def test_crd_and_model_defaults_are_equal() -> None:
    # Defaulting a bare spec with the CRD gives exactly what the model fills in for the same bare spec.
    template = {"spec": {"containers": [{"name": "session", "image": "busybox"}]}}
    by_crd = defaults.apply_defaults(_schema("FleetDispatch", "spec"), {"template": template})
    by_model = models.FleetDispatchSpec.model_validate({"template": template}).model_dump(
        by_alias=True, exclude_none=True, exclude={"template"}
    )
    assert {k: v for k, v in by_crd.items() if k != "template"} == by_model

    pool_by_crd = defaults.apply_defaults(_schema("QuotaPool", "spec"), {})
    assert pool_by_crd == models.QuotaPoolSpec().model_dump(by_alias=True, exclude_none=True)


def test_defaults_are_the_design_defaults() -> None:
    # The original tool's defaults (design notes, section 1), so a user moving from it sees no change.
    spec = models.parse_spec({"template": {"spec": {"containers": [{"name": "s", "image": "i"}]}}})
    assert (spec.timeouts.deadline_seconds, spec.timeouts.max_extension_seconds) == (3600, 7200)
    assert (spec.timeouts.idle_output_seconds, spec.timeouts.kill_grace_seconds) == (1800, 30)
    assert (spec.activity.cpu_percent_threshold, spec.activity.api_endpoints) == (10, [":443"])
    assert spec.retry.max_resumes == 3
    assert spec.suspend is False


def test_walk_reports_drift() -> None:
    # The comparison itself must be able to fail: a bound changed on one side only is reported.
    crd = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 1}}, "required": []}
    model = {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0}, "b": {"type": "string"}},
    }
    problems: list[str] = []
    _walk(crd, model, {}, "x", problems)
    assert problems == [
        "x: fields only in the CRD [], only in the model ['b']",
        "x.a: minimum is 1 in the CRD, 0 in the model",
    ]


def test_printer_columns_and_names() -> None:
    dispatch = crds()["FleetDispatch"]["spec"]
    assert dispatch["names"]["shortNames"] == ["fd"] and dispatch["names"]["categories"] == ["fleet"]
    assert crds()["QuotaPool"]["spec"]["names"]["shortNames"] == ["qp"]
    columns = {c["name"]: c for c in dispatch["versions"][0]["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "Attempt", "Deadline", "Requeue-At", "Ready", "Age", "Reason", "Pod"]
    assert {name for name, c in columns.items() if c.get("priority") == 1} == {"Reason", "Pod"}
    # Future timestamps in a `date` column print as "<invalid>", so these two are strings.
    assert columns["Deadline"]["type"] == columns["Requeue-At"]["type"] == "string"
    for crd in crds().values():
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def _strings_and_lists(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("type") in ("string", "array"):
            found.append((path, node))
        for key, value in node.items():
            found += _strings_and_lists(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _strings_and_lists(value, f"{path}/{index}")
    return found


@pytest.mark.parametrize("kind", ["FleetDispatch", "QuotaPool"])
def test_every_string_and_list_is_bounded(kind: str) -> None:
    # CEL cost stays bounded only when every string has a maxLength and every list a maxItems
    # (enums and date-times are bounded by their nature). apiVersion and kind are the API server's.
    schema = crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    unbounded = [
        path
        for path, node in _strings_and_lists(schema)
        if not path.endswith(("/apiVersion", "/kind"))
        and not any(key in node for key in ("maxLength", "maxItems", "enum"))
        and node.get("format") != "date-time"
    ]
    assert unbounded == []


def test_operator_module_is_the_standard_library() -> None:
    # The source folder is called operator/; it must never shadow the standard library's `operator`.
    import operator

    assert operator.add(2, 3) == 5
    assert not hasattr(operator, "fleetdispatch")
