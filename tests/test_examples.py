"""Every manifest in examples/ is admitted by the CRD (schema and CEL) and read by the models.

The schema check runs twice: once with an independent JSON-schema validator over the CRD's openAPIV3Schema,
once through `admission` (which also applies defaults and CEL rules as the API server would).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fleetdispatch import api, cli, validation

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))
OURS = [
    (path, index, doc)
    for path in EXAMPLES
    for index, doc in enumerate(validation.documents(path.read_text(encoding="utf-8")))
    if str(doc.get("apiVersion", "")).startswith(api.GROUP + "/")
]


def _json_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = validation.crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_examples_cover_every_kind_and_feature() -> None:
    kinds = {doc["kind"] for _, _, doc in OURS}
    assert kinds == {"FleetDispatch", "QuotaPool"}
    specs = [doc["spec"] for _, _, doc in OURS if doc["kind"] == "FleetDispatch"]
    assert any("failurePolicy" in s for s in specs) and any("quotaPool" in s for s in specs)
    assert any("outputPaths" in s.get("activity", {}) for s in specs)
    assert len(OURS) >= 8


@pytest.mark.parametrize(("path", "index", "doc"), OURS, ids=lambda v: v.name if isinstance(v, Path) else "")
def test_example_is_valid(path: Path, index: int, doc: dict[str, Any]) -> None:
    jsonschema.Draft4Validator(_json_schema(doc["kind"])).validate(doc)
    verdict = validation.check(doc)
    assert verdict.valid, verdict.explain()
    assert not verdict.skipped


def test_campaign_kustomization_lists_existing_dispatches() -> None:
    folder = ROOT / "examples" / "campaign"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    kinds = [validation.documents((folder / name).read_text(encoding="utf-8"))[0]["kind"] for name in listed]
    assert sorted(kinds) == ["FleetDispatch"] * 3 + ["QuotaPool"]
    pools = {
        doc["spec"].get("quotaPool")
        for name in listed
        for doc in validation.documents((folder / name).read_text(encoding="utf-8"))
        if doc["kind"] == "FleetDispatch"
    }
    assert pools == {"campaign-quota"}


def test_validate_command_accepts_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", str(ROOT / "examples")]) == 0
    out = capsys.readouterr().out
    assert f"{len(OURS)} fleet.dispatch.dev manifests checked, 0 invalid" in out


def test_validate_reads_standard_input_and_reports_what_the_api_server_would(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `kubectl kustomize dir | fleetdispatch validate -`, as a GitOps pipeline would run it.
    manifest = (ROOT / "examples" / "minimal.yaml").read_text(encoding="utf-8")
    broken = manifest.replace("name: session", "name: fleet-supervisor")
    stdin = io.StringIO(f"{manifest}---\n{broken.replace('name: hello', 'name: broken')}")
    assert cli.validate(["-"], stdin=stdin) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "-: FleetDispatch 'hello' is valid"
    assert out[1] == (
        '-: The FleetDispatch "broken" is invalid: spec.template.spec.containers: Invalid value: "array": '
        "the container name 'fleet-supervisor' is reserved for the injected supervisor sidecar"
    )
    assert out[-1] == "2 fleet.dispatch.dev manifests checked, 1 invalid"


def test_validate_reports_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("a: [unclosed\n", encoding="utf-8")
    assert cli.main(["validate", str(tmp_path / "bad.yaml"), str(tmp_path / "missing.yaml")]) == 1
    out = capsys.readouterr().out
    assert "bad.yaml: cannot read:" in out and "missing.yaml: cannot read:" in out


def test_a_manifest_of_the_wrong_shape_is_refused_not_a_crash() -> None:
    for broken in (
        {"apiVersion": "fleet.dispatch.dev/v1alpha1", "kind": "FleetDispatch", "metadata": "x", "spec": []},
        {"apiVersion": "fleet.dispatch.dev/v1alpha1", "kind": "FleetDispatch"},
        {
            "apiVersion": "fleet.dispatch.dev/v1alpha1",
            "kind": "QuotaPool",
            "metadata": {"name": "p"},
            "spec": 3,
        },
    ):
        verdict = validation.check(broken)
        assert not verdict.valid and verdict.api_errors and verdict.model_error
