"""The README's Helm quick start, run verbatim on `fleetdispatch dev --runtime containers`: a real kubelet
with containerd and runc runs every pod in containers from the images `make image` built here.

The quick start's `sh` block is read from README.md and run by bash as a user would, with the one addition
the README prescribes until an image is published (`--set image.repository=...`, here the local
`localhost/fleet-dispatch`; its tag is the chart's appVersion, which `make image` tags too). Then the three
examples/local behaviours run in the watched namespace: extension (busy), idle stop (silent) and quota
requeue (quota), each session in the examples' own image (`busybox:1.36`, built here from Debian's
busybox-static) and each supervisor in the operator's image.

The dev cluster starts without its CRDs and without `fleetdispatch operator`'s identity in `fleet-system`
(deleted here), as a fresh cluster would be, so that the release installs both itself. The README's commands
create the watched namespace `team-a` too, enforcing Pod Security `restricted`. Skipped, with the one line
`fleetdispatch dev` prints, where this machine cannot run the containers runtime.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from fleetdispatch.api import names
from fleetdispatch.devcluster import kubelet
from fleetdispatch.devcluster.controlplane import resource_path
from fleetdispatch.devcluster.stack import DEV_NAMESPACE, BackgroundCluster, chart_rbac, heartbeat_identity
from kube import ApiError, Kube
from kubectl import ROOT, Kubectl
from operators import Namespace
from waiting import eventually

UNAVAILABLE = kubelet.unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))

TOOLS = ROOT / ".tools" / "bin"
IMAGE_REPOSITORY = "localhost/fleet-dispatch"
README_INSTALL = "helm install fleet-dispatch charts/fleet-dispatch"


def quick_start_block() -> str:
    """The README's Helm quick start: the first `sh` block after "Install the operator with Helm"."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    after = readme[readme.index("Install the operator with Helm") :]
    match = re.search(r"```sh\n(.*?)```", after, re.DOTALL)
    assert match is not None, "no sh block after 'Install the operator with Helm' in README.md"
    return match.group(1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[BackgroundCluster]:
    """A dev cluster on the containers runtime, without CRDs and without the dev operator's identity."""
    with BackgroundCluster(runtime="containers", crds=False) as running:
        kube = Kube(running.dev)
        for document in [*chart_rbac(), *heartbeat_identity(DEV_NAMESPACE)]:
            try:
                kube.delete(resource_path(document))
            except ApiError as error:
                if error.status != 404:
                    raise
        yield running


def bash(script: str, kubeconfig: Path, home: Path, timeout: float = 900) -> str:
    env = {
        **os.environ,
        "PATH": f"{TOOLS}:{os.environ.get('PATH', '')}",
        "KUBECONFIG": str(kubeconfig),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"the quick start failed:\n{script}\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def image_id(archive: str) -> str:
    """The image ID (as the kubelet reports it) of the image `make image` saved in `archive`.tar: one image
    under several names, of which containerd reports any one as `image`, so the ID is what tells."""
    first = (kubelet.images_folder() / f"{archive}.ids").read_text(encoding="utf-8").split()
    return f"sha256:{first[1]}"


def statuses(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    status = pod.get("status") or {}
    every = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    return {s["name"]: s for s in every}


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_a_pod_runs_in_containers_with_a_pause_process(cluster: BackgroundCluster, tmp_path: Path) -> None:
    kube = Kube(cluster.dev)
    namespace = Namespace(cluster, "containers-plain", pod_security="baseline")
    pod = {
        "metadata": {"name": "plain"},
        "spec": {
            "restartPolicy": "Never",
            "shareProcessNamespace": True,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox:1.36",
                    "command": [
                        "sh",
                        "-c",
                        "tr '\\0' '\\n' < /proc/1/cmdline; test -f /dev/termination-log && echo ok",
                    ],
                }
            ],
        },
    }
    kube.create(f"/api/v1/namespaces/{namespace.name}/pods", pod)

    def ended() -> dict[str, Any] | None:
        found = namespace.pod("plain")
        return found if (found.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

    done = eventually(ended, 120, "the plain pod ended")
    main = statuses(done)["main"]
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert main["containerID"].startswith("containerd://"), main
    assert main["imageID"] == image_id("session"), main
    assert re.fullmatch(r"10\.244\.\d+\.\d+", done["status"]["podIP"]), done["status"]
    # PID 1 of the shared PID namespace is the sandbox's pause; the kubelet mounted the termination log.
    assert namespace.logs("plain", "main") == "/pause\nok\n"


def test_the_readme_helm_quick_start_runs_verbatim(cluster: BackgroundCluster, tmp_path: Path) -> None:
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    kubectl = Kubectl(kubeconfig)
    block = quick_start_block()
    assert README_INSTALL in block, block
    script = block.replace(README_INSTALL, f"{README_INSTALL} --set image.repository={IMAGE_REPOSITORY}", 1)
    bash(script, kubeconfig, tmp_path / "helm")
    ns = Namespace(cluster, "team-a", existing=True)  # the README made it, enforcing PSS restricted
    labels = ns.kube.get("/api/v1/namespaces/team-a")["metadata"].get("labels") or {}
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", labels

    kube = Kube(cluster.dev)
    project_id, session_id = image_id("fleet-dispatch"), image_id("session")
    # The chart's replicas (a leader and a standby), each in a container of the local image.
    operators = [
        p
        for p in kube.items("/api/v1/namespaces/fleet-system/pods")
        if p["metadata"]["name"].startswith("fleet-dispatch-")
    ]
    assert operators
    for operator in operators:
        [operator_container] = operator["spec"]["containers"]
        assert operator_container["image"] == f"{IMAGE_REPOSITORY}:0.1.0", operator_container
        [operator_status] = operator["status"]["containerStatuses"]
        assert operator_status["containerID"].startswith("containerd://"), operator_status
        assert operator_status["imageID"] == project_id, operator_status

    # hello: Ready; its session ran in the examples' image, its supervisor in the operator's.
    team_a = "/api/v1/namespaces/team-a/pods"
    [hello] = [p for p in kube.items(team_a) if p["metadata"]["name"].startswith("hello-")]
    containers = statuses(hello)
    assert containers["session"]["imageID"] == session_id, containers
    assert containers[names.SUPERVISOR_CONTAINER]["imageID"] == project_id, containers
    assert all(s["containerID"].startswith("containerd://") for s in containers.values()), containers
    session_log = kubectl.run("logs", "-n", "team-a", hello["metadata"]["name"], "-c", "session").stdout
    assert session_log == "hello from a supervised session\ndone\n"

    examples = ROOT / "examples" / "local"
    for example in ("busy-session.yaml", "silent-session.yaml", "quota-session.yaml"):
        kubectl.run("apply", "-n", "team-a", "-f", str(examples / example))

    # quota: Requeued until the reset, then resumed with its token, and Succeeded.
    quota = ns.wait_phase("quota", "Succeeded", 120)
    assert [a["outcome"] for a in quota["attempts"]] == ["QuotaExhausted", "Completed"], quota
    assert ns.logs("quota-2") == "attempt 2 resumes session session-42 after the quota reset\n"

    # silent: stopped for idle output, resumed once, then Failed.
    silent = ns.wait_phase("silent", "Failed", 120)
    assert [a["outcome"] for a in silent["attempts"]] == ["IdleTimeout", "IdleTimeout"], silent
    assert silent["reason"] == "ResumeLimitExceeded"

    # busy: outlives its 10 s budget, extended by the supervisor, and completes on its own.
    busy = ns.wait_phase("busy", "Succeeded", 120)
    assert [a["outcome"] for a in busy["attempts"]] == ["Completed"], busy
    started = _time(busy["attempts"][0]["startTime"])
    assert 10 < (_time(busy["deadline"]) - started).total_seconds() <= 10 + 30, busy
    output = ns.logs("busy-1").splitlines()
    assert output[0] == "working for 25 s on a 10 s budget"
    assert int(output[1].rpartition(" ")[2]) > started.timestamp() + 10, output
    # The pods the operator keeps (a resumed attempt's pod is replaced by the next one's) ran in containers.
    kept = {p["metadata"]["name"]: statuses(p) for p in kube.items(team_a)}
    assert {"busy-1", "quota-2"} <= set(kept), sorted(kept)
    for pod in kept.values():
        assert pod["session"]["containerID"].startswith("containerd://"), pod
        assert pod["session"]["imageID"] == session_id, pod
        assert pod[names.SUPERVISOR_CONTAINER]["imageID"] == project_id, pod
