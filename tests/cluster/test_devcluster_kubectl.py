"""The dev cluster as kubectl sees it: the kubectl installed by `make tools`, against the real API server.

No operator runs in this module: the dispatches are only stored (and their status written by the test, as
the operator would), which is what kubectl's table, validation, wait and dry-run paths are about.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from fleetdispatch.devcluster.stack import BackgroundCluster
from kubectl import Kubectl, needs_kubectl
from operators import Namespace

ROOT = Path(__file__).resolve().parents[2]

pytestmark = needs_kubectl
_names = itertools.count()

RUNNING_POD = """
apiVersion: v1
kind: Pod
metadata: {name: %(name)s}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 5
  containers:
    - name: main
      image: busybox
      command: [sh, -c, "echo hello from %(name)s; %(then)s"]
"""


@pytest.fixture
def namespace(cluster: BackgroundCluster) -> Namespace:
    # Its pods run as root (Pod Security `privileged`); the dispatches are never run here.
    return Namespace(cluster, f"kubectl-{next(_names)}", pod_security="privileged")


@pytest.fixture
def kubectl(cluster: BackgroundCluster, namespace: Namespace, tmp_path: Path) -> Kubectl:
    return Kubectl(cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace.name))


def test_apply_get_and_reapply(kubectl: Kubectl) -> None:
    created = kubectl.run("apply", "-f", str(ROOT / "examples" / "minimal.yaml"))
    assert "fleetdispatch.fleet.dispatch.dev/hello" in created.stdout
    again = kubectl.run("apply", "-f", str(ROOT / "examples" / "minimal.yaml"))
    assert again.stdout.strip() == "fleetdispatch.fleet.dispatch.dev/hello unchanged"
    table = kubectl.run("get", "fd", "-o", "wide").stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "PHASE",
        "ATTEMPT",
        "DEADLINE",
        "REQUEUE-AT",
        "READY",
        "AGE",
        "REASON",
        "POD",
    ]
    assert table[1].split()[0] == "hello"
    shown = kubectl.run("get", "fd", "hello", "-o", "jsonpath={.spec.timeouts.deadlineSeconds}")
    assert shown.stdout == "3600"  # defaulted by the CRD schema
    kubectl.run("delete", "-f", str(ROOT / "examples" / "minimal.yaml"))


def test_an_invalid_manifest_is_refused_with_the_servers_message(kubectl: Kubectl, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        (ROOT / "examples" / "minimal.yaml").read_text().replace("name: hello", "name: bad-one")
        + "  timeouts:\n    deadlineSeconds: 0\n"
    )
    refused = kubectl.run("apply", "-f", str(manifest), check=False)
    assert refused.returncode != 0
    assert (
        'The FleetDispatch "bad-one" is invalid: spec.timeouts.deadlineSeconds: Invalid value: 0'
        in refused.stderr
    )


def test_wait_for_a_condition_set_later_and_watch_the_change(kubectl: Kubectl, namespace: Namespace) -> None:
    kubectl.run("apply", "-f", str(ROOT / "examples" / "minimal.yaml"))
    waiting = kubectl.start("wait", "--for=condition=Ready", "fd/hello", "--timeout=20s")
    watching = kubectl.start("get", "fd", "hello", "-w", "--request-timeout=4s")
    time.sleep(1)
    status = (
        '{"status":{"phase":"Succeeded","conditions":[{"type":"Ready","status":"True","reason":"Succeeded",'
        '"message":"done","lastTransitionTime":"2026-11-24T12:00:00Z"}]}}'
    )
    kubectl.run("patch", "fd", "hello", "--subresource=status", "--type=merge", "-p", status)
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert out.strip() == "fleetdispatch.fleet.dispatch.dev/hello condition met"
    seen, _ = watching.communicate(timeout=30)
    assert "Succeeded" in seen.splitlines()[-1]
    kubectl.run("delete", "fd", "hello")
    assert kubectl.run("get", "fd").stderr.strip() == f"No resources found in {namespace.name} namespace."


def test_a_pod_runs_and_its_logs_and_exit_code_show(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", "-", stdin=RUNNING_POD % {"name": "greeter", "then": "exit 3"})
    kubectl.run("wait", "--for=jsonpath={.status.phase}=Failed", "pod/greeter", "--timeout=20s")
    assert kubectl.run("logs", "greeter").stdout == "hello from greeter\n"
    code = kubectl.run(
        "get", "pod", "greeter", "-o", "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}"
    )
    assert code.stdout == "3"
    kubectl.run("delete", "pod", "greeter")


def test_deleting_a_running_pod_stops_it(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", "-", stdin=RUNNING_POD % {"name": "sleeper", "then": "exec sleep 60"})
    kubectl.run("wait", "--for=jsonpath={.status.phase}=Running", "pod/sleeper", "--timeout=20s")
    started = time.monotonic()
    kubectl.run("delete", "pod", "sleeper", "--grace-period=1")
    assert time.monotonic() - started < 10
    assert kubectl.run("get", "pod", "sleeper", check=False).returncode != 0


def test_namespaces_from_manifests(kubectl: Kubectl, namespace: Namespace) -> None:
    team = f"{namespace.name}-team"
    kubectl.run("apply", "-f", "-", stdin=f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {team}}}\n")
    kubectl.run("apply", "-n", team, "-f", str(ROOT / "examples" / "minimal.yaml"))
    listed = [line.split()[:2] for line in kubectl.run("get", "fd", "-A").stdout.splitlines()]
    assert [team, "hello"] in listed
    kubectl.run("delete", "namespace", team, "--timeout=60s")  # the namespace controller empties it first
    assert team not in kubectl.run("get", "namespaces").stdout


def test_a_server_dry_run_answers_without_storing(kubectl: Kubectl, tmp_path: Path) -> None:
    # kubectl diff and `apply --dry-run=server` send dryRun=All: the answer, never a change.
    manifest = (ROOT / "examples" / "minimal.yaml").read_text()
    kubectl.run("apply", "-f", "-", stdin=manifest)
    before = kubectl.run("get", "fd", "hello", "-o", "jsonpath={.metadata.resourceVersion}").stdout
    changed = manifest + "  retry:\n    maxAttempts: 7\n"
    dry = kubectl.run(
        "apply", "--dry-run=server", "-f", "-", "-o", "jsonpath={.spec.retry.maxAttempts}", stdin=changed
    )
    assert dry.stdout == "7"
    diff = kubectl.run("diff", "-f", "-", stdin=changed, check=False)
    assert diff.returncode == 1 and "maxAttempts: 7" in diff.stdout
    kubectl.run("delete", "--dry-run=server", "fd", "hello")
    after = kubectl.run(
        "get", "fd", "hello", "-o", "jsonpath={.metadata.resourceVersion} {.spec.retry.maxAttempts}"
    )
    assert after.stdout == f"{before} 3"
    kubectl.run("delete", "fd", "hello")
