"""`kubectl fleet`, the plugin, as a user runs it: the real kubectl finds `kubectl-fleet` on PATH (the
virtual environment's bin, where the package installs it) and runs it against the dev cluster, on
dispatches the real operator runs (pods of the `local` runtime: real sessions; `instant` where a test needs
only a finished dispatch)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetdispatch.api.names import API_VERSION, DISPATCH_LABEL, GROUP, VERSION
from fleetdispatch.devcluster.nodeagent import RUNTIME_ANNOTATION
from fleetdispatch.devcluster.stack import BackgroundCluster
from kubectl import Kubectl, needs_kubectl
from operators import Namespace, OperatorProcess, dispatch_spec
from waiting import eventually

pytestmark = needs_kubectl

# Where pip put this interpreter's scripts: `fleetdispatch`, and `kubectl-fleet`.
SCRIPTS = Path(sys.executable).parent


class Fleet:
    """`kubectl fleet ...` with PATH holding the plugin, as the admin of the dev cluster."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubectl = Kubectl(kubeconfig)
        self.kubectl.env["PATH"] = f"{SCRIPTS}{os.pathsep}{self.kubectl.env.get('PATH', '')}"

    def run(self, *args: str, check: bool = True) -> Any:
        return self.kubectl.run("fleet", *args, check=check)

    def lines(self, *args: str) -> dict[str, str]:
        """`kubectl fleet status`'s `Label: value` lines."""
        text = self.run("status", *args).stdout
        return {
            label: value.strip()
            for label, _, value in (line.partition(":") for line in text.splitlines())
            if not label.startswith(" ")
        }

    def data(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)


@pytest.fixture
def fleet(cluster: BackgroundCluster, ns: Namespace, tmp_path: Path) -> Fleet:
    # The context's namespace is the test's: no -n needed.
    return Fleet(cluster.write_kubeconfig(tmp_path / "kubeconfig", ns.name))


def _session(script: str, **overrides: Any) -> dict[str, Any]:
    spec = dispatch_spec(**overrides)
    spec["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", script]
    return spec


def _instant(spec: dict[str, Any]) -> dict[str, Any]:
    spec["template"].setdefault("metadata", {}).setdefault("annotations", {})[RUNTIME_ANNOTATION] = "instant"
    return spec


def _create_pool(ns: Namespace, name: str, **spec: Any) -> None:
    body = {"apiVersion": API_VERSION, "kind": "QuotaPool", "metadata": {"name": name}, "spec": spec}
    ns.kube.create(f"/apis/{GROUP}/{VERSION}/namespaces/{ns.name}/quotapools", body)


def test_kubectl_finds_the_installed_plugin(fleet: Fleet) -> None:
    listed = fleet.kubectl.run("plugin", "list").stdout
    assert str(SCRIPTS / "kubectl-fleet") in listed
    assert "usage: kubectl fleet" in fleet.run("--help").stdout


def test_status_of_a_running_dispatch_in_a_pool(ns: Namespace, fleet: Fleet) -> None:
    _create_pool(ns, "shared", maxConcurrent=2)
    timeouts = {"deadlineSeconds": 600, "maxExtensionSeconds": 900, "idleOutputSeconds": 0}
    ns.create("busy", _session("echo started busy; sleep 120", quotaPool="shared", timeouts=timeouts))
    status = ns.wait_phase("busy", "Running", 60)
    pool_path = f"/apis/{GROUP}/{VERSION}/namespaces/{ns.name}/quotapools/shared"
    eventually(lambda: (ns.kube.get(pool_path).get("status") or {}).get("running") == 1, 30, "pool counts")

    shown = fleet.lines("busy")
    assert shown["Name"] == f"{ns.name}/busy"
    assert shown["Phase"] == "Running (Running)"
    assert shown["Message"] == "session running in pod busy-1"
    assert shown["Attempt"] == "1 (pod busy-1)"
    assert shown["Suspend"] == "false"
    assert shown["Deadline"].startswith(f"{status['deadline']} (") and shown["Deadline"].endswith(" left)")
    assert shown["Timeouts"] == "deadlineSeconds 600, maxExtensionSeconds 900, idleOutputSeconds 0"
    assert shown["Counters"].split() == [
        *("failures", "0/3", "requeues", "0/10", "resumes", "0/3", "infrastructureFailures", "0/10")
    ]
    assert shown["Pool"] == "shared: running 1/2, waiting 0, requeued 0, not exhausted"

    summary = fleet.data("status", "busy")
    assert (summary["namespace"], summary["name"], summary["phase"]) == (ns.name, "busy", "Running")
    assert summary["budget"]["deadline"] == status["deadline"]
    assert 0 < summary["budget"]["remainingSeconds"] <= 600
    assert 600 < summary["budget"]["capRemainingSeconds"] <= 1500
    assert summary["counters"]["failures"] == {"count": 0, "limit": 3, "of": "maxAttempts"}
    assert summary["pool"]["running"] == 1 and summary["pool"]["maxConcurrent"] == 2
    as_yaml = yaml.safe_load(fleet.run("status", "busy", "-o", "yaml").stdout)
    assert as_yaml.keys() == summary.keys()
    assert as_yaml["budget"]["deadline"] == status["deadline"] and as_yaml["pool"] == summary["pool"]

    logs = eventually(lambda: fleet.run("logs", "busy").stdout, 20, "the session's log")
    assert logs == "started busy\n"


def test_suspend_and_resume(ns: Namespace, fleet: Fleet) -> None:
    ns.create("held", _session("echo attempt $FLEET_ATTEMPT; sleep 120"))
    ns.wait_phase("held", "Running", 60)
    assert fleet.run("suspend", "held").stdout == f"fleetdispatch.{GROUP}/held suspended\n"
    assert ns.dispatch("held")["spec"]["suspend"] is True
    ns.wait_phase("held", "Suspended", 60)
    shown = fleet.lines("held")
    assert shown["Suspend"] == "true" and shown["Phase"].startswith("Suspended")
    # No budget left while suspended: the deadline alone, without "(... left)" or "(passed ...)".
    assert shown["Deadline"] and "(" not in shown["Deadline"]

    assert fleet.run("resume", "held").stdout == f"fleetdispatch.{GROUP}/held resumed\n"
    assert ns.dispatch("held")["spec"]["suspend"] is False
    resumed = ns.wait_phase("held", "Running", 60)
    assert resumed["attempt"] == 2
    # The history has the suspended attempt, and logs reads the new one's pod.
    summary = fleet.data("status", "held")
    assert (summary["attempt"], summary["podName"]) == (2, "held-2")
    history = summary["attempts"]
    assert [a["attempt"] for a in history][:1] == [1] and history[0]["endTime"]
    assert eventually(lambda: fleet.run("logs", "held").stdout, 20, "attempt 2's log") == "attempt 2\n"


def test_logs_of_the_running_attempt_and_follow_until_it_ends(ns: Namespace, fleet: Fleet) -> None:
    ns.create("chatty", _session("echo one; sleep 8; echo two", timeouts={"idleOutputSeconds": 0}))
    ns.wait_phase("chatty", "Running", 60)
    assert eventually(lambda: fleet.run("logs", "chatty").stdout, 20, "the first line") == "one\n"
    started = time.monotonic()
    followed = fleet.run("logs", "chatty", "-f")
    assert followed.stdout == "one\ntwo\n"  # "two" is written only 8 s in: -f waited for it
    assert time.monotonic() - started > 1
    ns.wait_phase("chatty", "Succeeded", 30)
    assert fleet.run("logs", "chatty").stdout == "one\ntwo\n"  # the last attempt's pod is kept


def test_list_sorts_and_spans_namespaces(
    cluster: BackgroundCluster, ns: Namespace, fleet: Fleet, tmp_path: Path
) -> None:
    # Created a second apart (creationTimestamp has whole seconds): zeta, mid, alpha.
    ns.create("zeta", _session("sleep 120", timeouts={"deadlineSeconds": 300, "idleOutputSeconds": 0}))
    time.sleep(1.1)
    ns.create("mid", _instant(dispatch_spec()))
    time.sleep(1.1)
    ns.create("alpha", _session("sleep 120", timeouts={"deadlineSeconds": 900, "idleOutputSeconds": 0}))
    for name, phase in (("zeta", "Running"), ("mid", "Succeeded"), ("alpha", "Running")):
        ns.wait_phase(name, phase, 60)

    table = fleet.run("list").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "ATTEMPT", "REMAINING", "AGE"]
    rows = [line.split() for line in table[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("alpha", "Running", "1"),
        ("mid", "Succeeded", "1"),
        ("zeta", "Running", "1"),
    ]
    remaining = {r[0]: r[3] for r in rows}
    assert remaining["mid"] == "-" and remaining["zeta"].endswith(("m", "s"))

    def order(by: str) -> list[str]:
        return [line.split()[0] for line in fleet.run("list", "--sort-by", by).stdout.splitlines()[1:]]

    # (`--sort-by name` is the default, whose order the table above shows.)
    assert order("remaining") == ["zeta", "alpha", "mid"]
    assert order("age") == ["zeta", "mid", "alpha"]
    assert order("phase") == ["alpha", "zeta", "mid"]

    items = {item["name"]: item for item in fleet.data("list")["items"]}
    assert set(items) == {"alpha", "mid", "zeta"}
    assert 0 < items["zeta"]["remainingSeconds"] <= 300 < items["alpha"]["remainingSeconds"] <= 900
    assert items["mid"]["remainingSeconds"] is None and items["mid"]["phase"] == "Succeeded"
    assert yaml.safe_load(fleet.run("list", "-o", "yaml").stdout)["items"][0]["name"] == "alpha"

    other = Namespace(cluster, f"{ns.name}-other", runtime="instant")
    other.create("elsewhere", dispatch_spec())
    other.wait_phase("elsewhere", "Succeeded", 60)
    assert [line.split()[0] for line in fleet.run("list", "-n", other.name).stdout.splitlines()[1:]] == [
        "elsewhere"
    ]
    assert fleet.lines("elsewhere", "-n", other.name)["Phase"].startswith("Succeeded")
    everywhere = fleet.run("list", "-A").stdout.splitlines()
    assert everywhere[0].split() == ["NAMESPACE", "NAME", "PHASE", "ATTEMPT", "REMAINING", "AGE"]
    ours = [line.split()[:3] for line in everywhere[1:] if line.split()[0] in (ns.name, other.name)]
    assert ours == [
        [ns.name, "alpha", "Running"],
        [ns.name, "mid", "Succeeded"],
        [ns.name, "zeta", "Running"],
        [other.name, "elsewhere", "Succeeded"],
    ]
    spanned = {(i["namespace"], i["name"]) for i in fleet.data("list", "--all-namespaces")["items"]}
    assert {(ns.name, "mid"), (other.name, "elsewhere")} <= spanned


def test_a_dispatch_that_does_not_exist_is_one_line(ns: Namespace, fleet: Fleet) -> None:
    for command in ("status", "logs", "suspend", "resume"):
        result = fleet.run(command, "nope", check=False)
        assert result.returncode == 1, command
        assert result.stdout == ""
        assert result.stderr == (
            f'Error from server (NotFound): fleetdispatch "nope" not found in namespace "{ns.name}"\n'
        ), command
    empty = fleet.run("list")
    assert (empty.returncode, empty.stdout) == (0, "")
    assert empty.stderr == f"No fleetdispatches found in {ns.name} namespace.\n"
    assert fleet.data("list") == {"items": []}


def test_logs_of_a_dispatch_whose_pods_are_gone(ns: Namespace, fleet: Fleet) -> None:
    ns.create("done", _instant(dispatch_spec()))
    ns.wait_phase("done", "Succeeded", 60)
    for pod in ns.kube.items(f"/api/v1/namespaces/{ns.name}/pods?labelSelector={DISPATCH_LABEL}%3Ddone"):
        ns.delete_pod(pod["metadata"]["name"], grace=0)
    eventually(lambda: not ns.pods(), 30, "the pods deleted")
    gone = fleet.run("logs", "done", check=False)
    assert gone.returncode == 1
    assert gone.stderr == "error: fleetdispatch 'done': no pod of attempt 1 or earlier is left\n"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_kubeconfig_and_context_flags_and_an_unreachable_server(
    cluster: BackgroundCluster, ns: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    ns.create("here", _instant(dispatch_spec()))
    ns.wait_phase("here", "Succeeded", 60)
    config = yaml.safe_load(cluster.dev.admin_kubeconfig(ns.name))
    [good] = config["contexts"]
    broken = {"name": "broken", "cluster": {"server": f"https://127.0.0.1:{_closed_port()}"}}
    config["clusters"].append(broken)
    config["contexts"].append({"name": "broken", "context": {**good["context"], "cluster": "broken"}})
    config["current-context"] = "broken"
    path = tmp_path / "two-contexts"
    path.write_text(yaml.safe_dump(config))

    # No $KUBECONFIG: the file comes from --kubeconfig only.
    fleet = Fleet(tmp_path / "unused")
    del fleet.kubectl.env["KUBECONFIG"]
    fleet.kubectl.env["HOME"] = str(tmp_path)  # and no ~/.kube/config to fall back on
    down = fleet.run("status", "here", "--kubeconfig", str(path), check=False)
    assert down.returncode == 1 and down.stdout == ""
    assert down.stderr.startswith(f"error: cannot reach the API server at {broken['cluster']['server']}")
    assert down.stderr.count("\n") == 1 and "Traceback" not in down.stderr
    shown = fleet.lines("here", "--kubeconfig", str(path), "--context", good["name"])
    assert shown["Name"] == f"{ns.name}/here" and shown["Phase"].startswith("Succeeded")
    missing = fleet.run("list", check=False)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("error: no credentials")


def test_the_servers_certificate_is_checked_unless_the_kubeconfig_says_not_to(
    cluster: BackgroundCluster, ns: Namespace, tmp_path: Path
) -> None:
    ns.create("here", _instant(dispatch_spec()))
    config = yaml.safe_load(cluster.dev.admin_kubeconfig(ns.name))
    [entry] = config["clusters"]
    server = entry["cluster"]["server"]
    entry["cluster"] = {"server": server}  # no CA: the system's, which do not know the dev cluster's
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(config))
    fleet = Fleet(path)
    untrusted = fleet.run("status", "here", check=False)
    assert untrusted.returncode == 1 and untrusted.stderr.count("\n") == 1
    assert untrusted.stderr.startswith(f"error: cannot reach the API server at {server}: ")
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    entry["cluster"] = {"server": server, "insecure-skip-tls-verify": True}
    path.write_text(yaml.safe_dump(config))
    assert fleet.lines("here")["Name"] == f"{ns.name}/here"


# What the README says a user of the plugin needs, and nothing more.
USER_RULES = [
    {"apiGroups": [GROUP], "resources": ["fleetdispatches"], "verbs": ["get", "list", "patch"]},
    {"apiGroups": [GROUP], "resources": ["quotapools"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]


def _user_kubeconfig(
    cluster: BackgroundCluster, ns: Namespace, name: str, rules: list[dict[str, Any]], path: Path
) -> Path:
    """A kubeconfig for a ServiceAccount of `ns` allowed `rules` there, by a Role (and its token)."""
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns.name}"
    ns.kube.create(f"/api/v1/namespaces/{ns.name}/serviceaccounts", {"metadata": {"name": name}})
    ns.kube.create(f"{rbac}/roles", {"metadata": {"name": name}, "rules": rules})
    binding = {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns.name}],
    }
    ns.kube.create(f"{rbac}/rolebindings", binding)
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    token = ns.kube.create(f"/api/v1/namespaces/{ns.name}/serviceaccounts/{name}/token", request)
    config = yaml.safe_load(cluster.dev.admin_kubeconfig(ns.name))
    [user] = config["users"]
    user["user"] = {"token": token["status"]["token"]}
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_permissions_the_readme_names_are_enough(
    cluster: BackgroundCluster, ns: Namespace, tmp_path: Path
) -> None:
    _create_pool(ns, "shared")
    ns.create("mine", _session("echo hello; sleep 120", quotaPool="shared"))
    ns.wait_phase("mine", "Running", 60)
    user = Fleet(_user_kubeconfig(cluster, ns, "fleet-user", USER_RULES, tmp_path / "user"))
    assert user.lines("mine")["Pool"].startswith("shared: running")
    assert [i["name"] for i in user.data("list")["items"]] == ["mine"]
    assert eventually(lambda: user.run("logs", "mine").stdout, 20, "the log") == "hello\n"

    # Without the log's permission: one line from the API server, exit 1.
    fewer = [rule for rule in USER_RULES if rule["resources"] != ["pods/log"]]
    blind = Fleet(_user_kubeconfig(cluster, ns, "no-logs", fewer, tmp_path / "blind"))
    refused = blind.run("logs", "mine", check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("Error from server (Forbidden): ")
    assert refused.stderr.count("\n") == 1
    # Without the pool's: the dispatch is still shown, and the pool says why it is not.
    poolless = [rule for rule in fewer if rule["resources"] != ["quotapools"]]
    partial = Fleet(_user_kubeconfig(cluster, ns, "no-pools", poolless, tmp_path / "partial"))
    assert partial.lines("mine")["Pool"].startswith("shared (not read: Error from server (Forbidden): ")
    # Last, as it stops the session: the patch that suspend (and resume, the same request) sends.
    user.run("suspend", "mine")
    assert ns.dispatch("mine")["spec"]["suspend"] is True
