"""`helm install` of charts/fleet-dispatch on the dev cluster, as the README's "Install with Helm on the dev
cluster" tells a user: the operator then runs as the chart's Deployment, a pod on the node agent.

The node pulls no image: the chart's container gives only `args`, and the node runs the project image's
entrypoint (`fleetdispatch`, the machine's) as a container runtime would. The operator logs in with the
pod's projected ServiceAccount token and the `KUBERNETES_SERVICE_HOST` the node gives the pod, as uid 65532,
in namespaces that enforce Pod Security `restricted`. What it did is read from the API server's audit log
(each request with its user, the pod its token is bound to, and the answer) and from its log (`kubectl
logs`, through the node's kubelet API).

The dev cluster has applied the CRDs itself and made `fleet-system/fleet-dispatch` (the identity of
`fleetdispatch operator`), so the release goes into a namespace of its own and adopts the CRDs, as the chart
README's "CRDs applied earlier" says. Not covered here: leader election and the PodDisruptionBudget (the
chart's high availability has tests of its own), image pulls (the node has none), readOnlyRootFilesystem
(the node does not model it: a container's root is the host's folders, bound read-write, so uid 65532 may
write there whatever the host lets any user write; the chart's /tmp is an emptyDir, as on a real node).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from fleetdispatch.api.names import GROUP
from fleetdispatch.devcluster.nodeagent import PROJECT_IMAGE, image_repository
from fleetdispatch.devcluster.stack import AuditWatch, BackgroundCluster, audit_events
from fleetdispatch.session import protocol
from kube import ApiError, Kube
from kubectl import ROOT, Kubectl, run_tool
from operators import Namespace, dispatch_spec, free_port
from waiting import eventually

HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "charts" / "fleet-dispatch"
RELEASE = "fleet-dispatch"
RELEASE_NAMESPACE = "fleet-helm"
TEAM_A, TEAM_B = "team-a", "team-b"
OPERATOR_USER = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"
CRDS = (f"fleetdispatches.{GROUP}", f"fleetcampaigns.{GROUP}", f"quotapools.{GROUP}")
SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
# What the kubelet's projected token carries, and the audit log shows with each request it authenticates.
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"

needs_helm = pytest.mark.skipif(
    not HELM.exists() and not os.environ.get("CI"), reason="helm not installed: run `make tools`"
)
# The dev node runs this machine's `fleetdispatch` in the operator pod, whose chart mounts an emptyDir at
# /tmp: a checkout under /tmp is hidden from the container (seen: "exec: 'fleetdispatch': No such file or
# directory"), so the install cannot run from there; the README says to keep the checkout elsewhere.
PROGRAM = shutil.which("fleetdispatch", path=str(Path(sys.executable).parent))
outside_tmp = pytest.mark.skipif(
    PROGRAM is None or Path(PROGRAM).is_relative_to("/tmp"),
    reason=f"{PROGRAM} is under /tmp, which the chart's operator pod mounts over (an emptyDir)",
)


class Helm:
    """The `helm` that `make tools` installs, as the cluster's admin."""

    def __init__(self, kubeconfig: Path, home: Path) -> None:
        # Helm's caches and configuration in the test's folder, never the user's.
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        self.binary = str(HELM) if HELM.exists() else shutil.which("helm") or "helm"

    def run(self, *args: str) -> str:
        result = run_tool([self.binary, *args], env=self.env)
        return result.stdout + result.stderr


def operator_pods(kube: Kube) -> list[dict[str, Any]]:
    path = f"/api/v1/namespaces/{RELEASE_NAMESPACE}/pods"
    # A pod that ended (an operator that exited, replaced by its ReplicaSet) is not one of them.
    return [
        p
        for p in kube.items(path, labelSelector=SELECTOR)
        if not p["metadata"].get("deletionTimestamp")
        and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]


def running_operator_pod(kube: Kube, other_than: str = "") -> dict[str, Any]:
    """The one operator pod, once Running and not `other_than` (the one an upgrade replaces)."""

    def one() -> dict[str, Any] | None:
        pods = [p for p in operator_pods(kube) if p["metadata"]["name"] != other_than]
        if len(pods) == 1 and (pods[0].get("status") or {}).get("phase") == "Running":
            return pods[0]
        return None

    return dict(eventually(one, 45, "the operator pod Running"))


def container_env(pod: dict[str, Any]) -> dict[str, str]:
    [container] = pod["spec"]["containers"]
    return {e["name"]: str(e.get("value", "")) for e in container.get("env") or []}


def metrics(port: int) -> str | None:
    """/metrics on the host's loopback (pods share it on the dev node); None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def operator_process(pod: dict[str, Any]) -> psutil.Process:
    """The operator pod's process on the host: the child of the node's launcher, which the container's
    ID names (`fleetdispatch://<pid>`)."""
    [status] = pod["status"]["containerStatuses"]
    try:
        launcher = psutil.Process(int(status["containerID"].removeprefix("fleetdispatch://")))
        [child] = launcher.children()
    except psutil.NoSuchProcess:
        raise AssertionError(f"the operator pod's container has ended: {status}") from None
    return child


def operator_log(kubectl: Kubectl, pod: str) -> str:
    """`kubectl logs` of an operator pod (the node's kubelet API, through the API server)."""
    return kubectl.run("logs", "-n", RELEASE_NAMESPACE, pod).stdout


def logged(kubectl: Kubectl, pod: str, line: str) -> str | None:
    log = operator_log(kubectl, pod)
    return log if line in log else None


def finished(namespace: Namespace, pod: str) -> dict[str, Any] | None:
    found = namespace.pod(pod)
    return found if (found.get("status") or {}).get("phase") == "Succeeded" else None


def operator_requests(cluster: BackgroundCluster, offset: int) -> list[dict[str, Any]]:
    events, _ = audit_events(cluster.dev.audit_log, offset)
    return [
        e
        for e in events
        if e.get("stage") == "ResponseComplete" and (e.get("user") or {}).get("username") == OPERATOR_USER
    ]


def received(event: dict[str, Any]) -> datetime:
    at = protocol.parse_time(event["requestReceivedTimestamp"])
    assert at is not None, event
    return at


def grants_revoked(cluster: BackgroundCluster, offset: int) -> datetime | None:
    """When `helm uninstall` first deleted a Role or RoleBinding of the release (the audit log says)."""
    events, _ = audit_events(cluster.dev.audit_log, offset)
    times = [
        received(e)
        for e in events
        if e.get("stage") == "ResponseComplete"
        and e.get("verb") == "delete"
        and (e.get("objectRef") or {}).get("resource") in ("roles", "rolebindings")
        and (e.get("objectRef") or {}).get("namespace") in (RELEASE_NAMESPACE, TEAM_A)
    ]
    return min(times, default=None)


@pytest.fixture
def teams(cluster: BackgroundCluster, tmp_path: Path) -> Iterator[tuple[Namespace, Namespace, Namespace]]:
    """The release's namespace and team-a and team-b, each enforcing Pod Security `restricted`, and the
    CRDs ready for the release to adopt; afterwards the namespaces are deleted (with whatever the release
    left in them) and the CRDs are the dev cluster's again, as the other tests of the session expect."""
    made = [Namespace(cluster, name) for name in (RELEASE_NAMESPACE, TEAM_A, TEAM_B)]
    kubectl = Kubectl(cluster.write_kubeconfig(tmp_path / "admin.kubeconfig"))
    adopt_crds(kubectl)
    try:
        yield made[0], made[1], made[2]
    finally:
        for crd in CRDS:
            kubectl.run("label", "crd", crd, "app.kubernetes.io/managed-by-")
            kubectl.run(
                "annotate", "crd", crd, "meta.helm.sh/release-name-", "meta.helm.sh/release-namespace-"
            )
        kube = Kube(cluster.dev)
        for namespace in made:
            try:
                kube.delete(f"/api/v1/namespaces/{namespace.name}")
            except ApiError as error:
                if error.status != 404:
                    raise


def adopt_crds(kubectl: Kubectl) -> None:
    """The chart README's commands that let the release take over the CRDs the dev cluster applied."""
    for crd in CRDS:
        kubectl.run("label", "crd", crd, "app.kubernetes.io/managed-by=Helm", "--overwrite")
        kubectl.run(
            "annotate",
            "crd",
            crd,
            f"meta.helm.sh/release-name={RELEASE}",
            f"meta.helm.sh/release-namespace={RELEASE_NAMESPACE}",
            "--overwrite",
        )


@needs_helm
@outside_tmp
def test_helm_install_upgrade_and_uninstall_on_the_dev_cluster(
    cluster: BackgroundCluster, teams: tuple[Namespace, Namespace, Namespace], tmp_path: Path
) -> None:
    _, team_a, team_b = teams
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    kubectl, helm, kube = Kubectl(kubeconfig), Helm(kubeconfig, tmp_path / "helm"), Kube(cluster.dev)
    offset = audit_events(cluster.dev.audit_log)[1]
    watches = AuditWatch(cluster.dev.audit_log, OPERATOR_USER)
    # Pods share the host's loopback on the dev node: ports of their own, not the chart's 8080 and 8081, and
    # one replica (a second would want the same ports).
    metrics_port, health_port = free_port(), free_port()

    # ---- install ------------------------------------------------------------------------------------
    output = helm.run(
        "install", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE,
        "--set", f"watch.namespaces={{{TEAM_A}}}",
        "--set", f"metrics.port={metrics_port}",
        "--set", f"operator.healthPort={health_port}",
        "--set", "replicas=1",
        "--wait", "--timeout", "60s",
    )  # fmt: skip
    # The namespaces warn as well as enforce `restricted`: a Deployment that would violate it is warned of.
    assert "PodSecurity" not in output, output
    pod = running_operator_pod(kube)
    pod_name = pod["metadata"]["name"]
    [container] = pod["spec"]["containers"]
    assert "command" not in container  # the image's entrypoint, which the node knows: `fleetdispatch`
    args = container["args"]
    assert args[0] == "operator"
    assert [value for flag, value in itertools.pairwise(args) if flag == "-n"] == [TEAM_A]
    # On the host: the machine's `fleetdispatch` (the image's entrypoint; the node's PATH starts beside
    # this Python) with the container's args, as the pod's user, under the node's launcher.
    process = operator_process(pod)
    assert process.uids().effective == 65532
    assert process.cmdline()[1:] == [
        shutil.which("fleetdispatch", path=str(Path(sys.executable).parent)),
        *args,
    ]
    # Logged in with the pod's projected token at the address the node gives every pod.
    login = f"as {OPERATOR_USER} with in-cluster service account"
    log = eventually(lambda: logged(kubectl, pod_name, login), 30, "the operator's in-cluster login")
    assert f"logged in to https://127.0.0.1:{cluster.url.rsplit(':', 1)[1]} {login}" in log, log
    try:
        eventually(lambda: {"fleetdispatches", "pods"} <= watches.open_watches(), 30, "the operator watching")
    except AssertionError as error:
        raise AssertionError(f"{error}; its log:\n{operator_log(kubectl, pod_name)[-5000:]}") from None
    assert "fleetdispatch_" in (eventually(lambda: metrics(metrics_port), 20, "/metrics") or "")

    # ---- a dispatch in the watched namespace runs; one in another is left alone -----------------------
    work = ["sh", "-c", "echo session ran as $(id -u)"]
    template = {"spec": {"containers": [{"name": "session", "image": "busybox", "command": work}]}}
    team_a.create("work", dispatch_spec(template=template))
    team_b.create("elsewhere", dispatch_spec())
    status = team_a.wait_phase("work", "Succeeded", 40)
    [session_pod] = team_a.pods()  # admitted where `restricted` is enforced
    assert session_pod["metadata"]["name"] == status["podName"]
    # The dispatch succeeds with its session container; the pod once the node has stopped the sidecar.
    session_pod = eventually(lambda: finished(team_a, status["podName"]), 20, "the session pod Succeeded")
    assert "session ran as 65532" in team_a.logs(status["podName"])
    # The supervisor sidecar the operator injected runs the chart's image, which the node runs as well.
    [supervisor] = session_pod["status"]["initContainerStatuses"]
    assert image_repository(supervisor["image"]) == PROJECT_IMAGE
    assert supervisor["state"]["terminated"]["startedAt"]  # it ran, and was stopped after the session
    assert team_b.status("elsewhere") == {}
    assert team_b.pods() == []

    # Its log before the upgrade replaces the pod (the node keeps no log of a deleted pod): never refused.
    log = operator_log(kubectl, pod_name)
    assert "forbidden" not in log.lower(), log[-3000:]

    # ---- upgrade: a changed value, a new pod that runs with it ----------------------------------------
    new_metrics_port = free_port()
    helm.run(
        "upgrade", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--reuse-values",
        "--set", f"metrics.port={new_metrics_port}",
        "--wait", "--timeout", "60s",
    )  # fmt: skip
    upgraded = running_operator_pod(kube, other_than=pod_name)
    assert container_env(upgraded)["FLEETDISPATCH_METRICS_PORT"] == str(new_metrics_port)
    assert "fleetdispatch_" in (eventually(lambda: metrics(new_metrics_port), 30, "/metrics, moved") or "")
    eventually(lambda: metrics(metrics_port) is None, 30, "the replaced pod's /metrics gone")
    team_a.create("after-upgrade", dispatch_spec())
    team_a.wait_phase("after-upgrade", "Succeeded", 40)
    log = operator_log(kubectl, upgraded["metadata"]["name"])
    assert "forbidden" not in log.lower(), log[-3000:]

    # ---- uninstall: the operator goes, the CRDs and the dispatches stay -------------------------------
    helm.run("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--timeout", "60s")
    eventually(lambda: operator_pods(kube) == [], 30, "the operator pod gone")
    eventually(lambda: not watches.open_watches(), 30, "the operator's watches ended")
    assert kube.items(f"/apis/apps/v1/namespaces/{RELEASE_NAMESPACE}/deployments") == []
    accounts = kube.items(f"/api/v1/namespaces/{RELEASE_NAMESPACE}/serviceaccounts")
    assert [a["metadata"]["name"] for a in accounts] == ["default"]
    assert kube.items(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{TEAM_A}/roles") == []
    for crd in CRDS:  # adopted by the release, and kept by its policy
        found = kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
        assert found["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert team_a.status("work")["phase"] == "Succeeded"
    assert team_b.dispatch("elsewhere")["metadata"]["name"] == "elsewhere"

    # ---- what the operator asked the API server, by the audit log -------------------------------------
    requests = operator_requests(cluster, offset)
    assert requests
    # Never refused while its grants exist. `helm uninstall` deletes its Roles and bindings while its pod
    # is still shutting down (a leader releases its Lease then): what it asks after that may be refused.
    revoked = grants_revoked(cluster, offset)
    refused = [
        f"{r['requestReceivedTimestamp']} {r['verb']} {r['requestURI']}"
        for r in requests
        if r["responseStatus"]["code"] == 403 and (revoked is None or received(r) < revoked)
    ]
    assert refused == [], f"its grants were revoked at {revoked}"
    assert [r["requestURI"] for r in requests if f"/namespaces/{TEAM_B}/" in r["requestURI"]] == []
    # Every request carried a token bound to one of the release's two pods (the kubelet's projection).
    bound = {tuple((r["user"].get("extra") or {}).get(POD_NAME_EXTRA) or ["-"]) for r in requests}
    assert bound == {(pod_name,), (upgraded["metadata"]["name"],)}, json.dumps(sorted(bound))
