"""Every manifest in examples/ is admitted by the CRD (schema and CEL) and read by the models, and the
README's walkthrough of examples/local runs on the dev cluster as the README says.

The schema check runs twice: once with an independent JSON-schema validator over the CRD's openAPIV3Schema,
once through `admission` (which also applies defaults and CEL rules as the API server would). The walkthrough
applies examples/local with kubectl, as the cluster's admin, for the real operator and the node agent to run.
"""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fleetdispatch import cli
from fleetdispatch.api import names
from fleetdispatch.devcluster.stack import BackgroundCluster
from fleetdispatch.validation import manifests
from kubectl import Kubectl, needs_kubectl
from operators import Namespace, OperatorProcess
from waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))
OURS = [
    (path, index, doc)
    for path in EXAMPLES
    for index, doc in enumerate(manifests.documents(path.read_text(encoding="utf-8")))
    if str(doc.get("apiVersion", "")).startswith(names.GROUP + "/")
]


def _json_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = manifests.crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_examples_cover_every_kind_and_feature() -> None:
    kinds = {doc["kind"] for _, _, doc in OURS}
    assert kinds == {"FleetDispatch", "QuotaPool", "FleetCampaign"}
    specs = [doc["spec"] for _, _, doc in OURS if doc["kind"] == "FleetDispatch"]
    assert any("failurePolicy" in s for s in specs) and any("quotaPool" in s for s in specs)
    assert any("outputPaths" in s.get("activity", {}) for s in specs)
    assert len(OURS) >= 8


@pytest.mark.parametrize(("path", "index", "doc"), OURS, ids=lambda v: v.name if isinstance(v, Path) else "")
def test_example_is_valid(path: Path, index: int, doc: dict[str, Any]) -> None:
    jsonschema.Draft4Validator(_json_schema(doc["kind"])).validate(doc)
    verdict = manifests.check(doc)
    assert verdict.valid, verdict.explain()
    assert not verdict.skipped


def test_campaign_kustomization_lists_existing_dispatches() -> None:
    folder = ROOT / "examples" / "campaign"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    kinds = [manifests.documents((folder / name).read_text(encoding="utf-8"))[0]["kind"] for name in listed]
    assert sorted(kinds) == ["FleetCampaign"] + ["FleetDispatch"] * 3 + ["QuotaPool"]
    pools = {
        doc["spec"].get("quotaPool")
        for name in listed
        for doc in manifests.documents((folder / name).read_text(encoding="utf-8"))
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
        '-: The FleetDispatch "broken" is invalid: spec.template.spec.containers: Invalid value: '
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
        verdict = manifests.check(broken)
        assert not verdict.valid and verdict.api_errors and verdict.model_error


# --- the README's walkthrough, for real ------------------------------------------------------------------


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@needs_kubectl
def test_the_local_examples_run_as_the_readme_says(
    cluster: BackgroundCluster, operator: OperatorProcess, tmp_path: Path
) -> None:
    # A namespace that, like `default` where the README applies them, enforces no Pod Security: the plain
    # pod runs as root.
    ns = Namespace(cluster, "examples-local", pod_security="privileged")
    kubectl = Kubectl(cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace=ns.name))
    applied = kubectl.run("apply", "-f", str(ROOT / "examples" / "local")).stdout
    assert sorted(applied.split()) == sorted(
        [
            "fleetdispatch.fleet.dispatch.dev/busy",
            "fleetdispatch.fleet.dispatch.dev/quota",
            "fleetdispatch.fleet.dispatch.dev/silent",
            "pod/hello-pod",
            *["created"] * 4,
        ]
    )

    # hello-pod: main reads what the sidecar wrote; the sidecar ends on TERM, not after the 30 s grace.
    def hello_done() -> dict[str, Any] | None:
        status = ns.pod("hello-pod")["status"]
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    hello = eventually(hello_done, 30, "hello-pod ended")
    assert hello["phase"] == "Succeeded", hello
    assert ns.logs("hello-pod", "main") == "hello from a local pod\nwritten by the sidecar\n"
    main = hello["containerStatuses"][0]["state"]["terminated"]
    sidecar = hello["initContainerStatuses"][0]["state"]["terminated"]
    assert (main["exitCode"], sidecar["exitCode"]) == (0, 0), hello
    assert (_time(sidecar["finishedAt"]) - _time(main["finishedAt"])).total_seconds() <= 5, hello

    # quota: Requeued until the reset, then resumed with its token, and Succeeded.
    quota = ns.wait_phase("quota", "Succeeded", 60)
    assert [a["outcome"] for a in quota["attempts"]] == ["QuotaExhausted", "Completed"], quota
    logs = kubectl.run("logs", "quota-2", "-c", "session").stdout
    assert logs == "attempt 2 resumes session session-42 after the quota reset\n"

    # silent: stopped for idle output, resumed once, then Failed.
    silent = ns.wait_phase("silent", "Failed", 60)
    assert [a["outcome"] for a in silent["attempts"]] == ["IdleTimeout", "IdleTimeout"], silent
    assert silent["reason"] == "ResumeLimitExceeded"
    described = kubectl.run("describe", "fd", "silent").stdout
    assert "ResumeLimitExceeded" in described and "Events:" in described

    # busy: outlives its 10 s budget, extended by the supervisor, and completes on its own.
    kubectl.run("wait", "--for=condition=Ready", "fd/busy", "--timeout=60s")
    busy = ns.status("busy")
    assert busy["phase"] == "Succeeded" and [a["outcome"] for a in busy["attempts"]] == ["Completed"], busy
    started = _time(busy["attempts"][0]["startTime"])
    deadline = _time(busy["deadline"])
    assert 10 < (deadline - started).total_seconds() <= 10 + 30, busy
    output = ns.logs("busy-1", "session").splitlines()
    assert output[0] == "working for 25 s on a 10 s budget"
    assert output[1].startswith("done; the live deadline was "), output
    assert int(output[1].rpartition(" ")[2]) > started.timestamp() + 10, output
