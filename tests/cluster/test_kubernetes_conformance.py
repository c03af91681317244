"""What a real kube-apiserver checks of fleet-dispatch, through kubectl as the cluster admin.

The dev cluster is a real control plane (kube-apiserver, etcd, the controller manager's garbage collector,
the scheduler, Pod Security admission), so what used to be argued from the manifests is shown here: the
CRDs are accepted without warnings and established, kubectl's discovery-driven commands (explain,
server-side apply, field selectors) work on them, the garbage collector removes a deleted dispatch's pods,
and the pods the operator builds pass Pod Security `restricted`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleetdispatch.api.names import GROUP
from fleetdispatch.devcluster.stack import BackgroundCluster
from kubectl import Kubectl, needs_kubectl
from operators import Namespace
from waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
MINIMAL = ROOT / "examples" / "minimal.yaml"
_LAST_APPLIED = "is missing the kubectl.kubernetes.io/last-applied-configuration annotation"
FAST = {"activity": {"pollSeconds": 1}, "retry": {"maxAttempts": 1}}

pytestmark = needs_kubectl


@pytest.fixture
def kubectl(cluster: BackgroundCluster, ns: Namespace, tmp_path: Path) -> Kubectl:
    """kubectl with the admin's kubeconfig, its namespace the test's (enforcing Pod Security restricted)."""
    return Kubectl(cluster.write_kubeconfig(tmp_path / "kubeconfig", ns.name))


def _session(script: str) -> dict[str, Any]:
    container = {"name": "session", "image": "busybox", "command": ["sh", "-c", script]}
    return {"template": {"spec": {"containers": [container]}}, **FAST}


def test_the_crds_apply_without_warnings_and_are_established(kubectl: Kubectl) -> None:
    # Server-side apply sends the whole CRD to the server, which answers any doubt about it as a warning.
    applied = kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    assert "Warning:" not in applied.stdout + applied.stderr, applied.stderr
    assert sorted(applied.stdout.splitlines()) == [
        f"customresourcedefinition.apiextensions.k8s.io/fleetcampaigns.{GROUP} serverside-applied",
        f"customresourcedefinition.apiextensions.k8s.io/fleetdispatches.{GROUP} serverside-applied",
        f"customresourcedefinition.apiextensions.k8s.io/quotapools.{GROUP} serverside-applied",
    ]
    # The client-side apply's path too; kubectl's own note that the CRDs were not created by a client-side
    # apply (the dev cluster applies them server-side) is no judgement of the server's.
    dry = kubectl.run("apply", "--dry-run=server", "-f", str(CRDS))
    warnings = [line for line in dry.stderr.splitlines() if "Warning:" in line]
    assert [line for line in warnings if _LAST_APPLIED not in line] == [], dry.stderr
    for name in ("fleetdispatches", "fleetcampaigns", "quotapools"):
        crd = json.loads(kubectl.run("get", "crd", f"{name}.{GROUP}", "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == conditions["NamesAccepted"] == "True", conditions
        assert conditions.get("NonStructuralSchema", "False") == "False"


def test_kubectl_explain_reads_the_published_schema(kubectl: Kubectl) -> None:
    explained = kubectl.run("explain", "fleetdispatch.spec.timeouts").stdout
    assert f"GROUP:      {GROUP}" in explained
    for field in ("deadlineSeconds", "maxExtensionSeconds", "idleOutputSeconds", "killGraceSeconds"):
        assert field in explained
    assert "maxAttempts" in kubectl.run("explain", "fd.spec.retry").stdout  # the short name too


def test_server_side_apply_of_a_dispatch_which_succeeds_under_pod_security_restricted(
    kubectl: Kubectl, ns: Namespace
) -> None:
    labels = ns.kube.get(f"/api/v1/namespaces/{ns.name}")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    applied = kubectl.run("apply", "--server-side", "-f", str(MINIMAL))
    assert applied.stdout.strip() == f"fleetdispatch.{GROUP}/hello serverside-applied"
    assert "Warning:" not in applied.stderr
    dispatch = json.loads(kubectl.run("get", "fd", "hello", "-o", "json", "--show-managed-fields").stdout)
    assert dispatch["spec"]["timeouts"]["deadlineSeconds"] == 3600  # defaulted by the schema
    assert "kubectl" in {entry["manager"] for entry in dispatch["metadata"]["managedFields"]}
    # The operator's pod (the supervisor as a native sidecar, the hardened session) is admitted ...
    status = ns.wait_phase("hello", "Succeeded", 90)
    assert status["attempts"][0]["outcome"] == "Completed"
    pod = ns.pod("hello-1")
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert "hello from a supervised session" in ns.logs("hello-1")
    # ... and applying the same manifest again conflicts with nothing the operator owns.
    again = kubectl.run("apply", "--server-side", "-f", str(MINIMAL))
    assert again.stdout.strip() == f"fleetdispatch.{GROUP}/hello serverside-applied"


def test_kubectl_create_namespace(kubectl: Kubectl, ns: Namespace) -> None:
    name = f"{ns.name}-made"
    assert kubectl.run("create", "namespace", name).stdout.strip() == f"namespace/{name} created"
    phase = kubectl.run("get", "namespace", name, "-o", "jsonpath={.status.phase}").stdout
    assert phase == "Active"
    kubectl.run("delete", "namespace", name, "--wait=false")


def test_dispatches_are_selectable_by_phase(kubectl: Kubectl, ns: Namespace) -> None:
    ns.create("fails", _session("exit 3"))
    ns.create("passes", _session("echo done"))
    ns.wait_phase("fails", "Failed", 60)
    ns.wait_phase("passes", "Succeeded", 60)
    failed = kubectl.run("get", "fd", "--field-selector", "status.phase=Failed", "-o", "name").stdout
    assert failed.split() == [f"fleetdispatch.{GROUP}/fails"]
    others = kubectl.run("get", "fd", "--field-selector", "status.phase!=Failed", "-o", "name").stdout
    assert others.split() == [f"fleetdispatch.{GROUP}/passes"]
    refused = kubectl.run("get", "fd", "--field-selector", "status.reason=x", check=False)
    assert refused.returncode != 0 and "field label not supported" in refused.stderr


def test_deleting_a_dispatch_removes_its_pods_through_the_garbage_collector(
    kubectl: Kubectl, ns: Namespace
) -> None:
    ns.create("long", _session("echo started; exec sleep 600"))
    eventually(lambda: ns.pods() and ns.pod("long-1")["status"].get("phase") == "Running", 60, "long-1 runs")
    [owner] = ns.pod("long-1")["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("FleetDispatch", "long", True)
    kubectl.run("delete", "fd", "long", "--timeout=60s")
    eventually(lambda: not ns.pods(), 60, "the dispatch's pods deleted")
    # Not the operator: it never deleted a pod; the owner reference did it, by the garbage collector.
    assert [write for write in ns.operator_writes() if write.startswith("DELETE") and "/pods" in write] == []
