"""The chart's high availability, rendered: replicas with leader election, rolled; a PodDisruptionBudget; the
leader election's Role (the one Lease, in the release namespace only).

`helm template` as tests/chart/test_chart.py runs it; what the operator makes of the rendered environment is
read with its own settings model. tests/cluster/test_operator_leader.py runs the rendered Role for real.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetdispatch.api.settings import ENV_PREFIX, OperatorSettings, SettingsError
from kubectl import run_tool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "fleet-dispatch"
HELM = ROOT / ".tools" / "bin" / "helm"
RELEASE, RELEASE_NAMESPACE = "fd", "fleet-system"
FULLNAME = f"{RELEASE}-fleet-dispatch"

pytestmark = pytest.mark.skipif(
    not HELM.exists() and not os.environ.get("CI"), reason="helm not installed: run `make tools`"
)


def helm_template(*sets: str, check: bool = True) -> tuple[int, str]:
    args = [str(HELM) if HELM.exists() else "helm", "template", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE]
    for setting in sets:
        args += ["--set", setting]
    result = run_tool(args, check=check)
    return result.returncode, result.stdout + result.stderr


@functools.cache
def _rendered(sets: tuple[str, ...]) -> str:
    return helm_template(*sets)[1]


def render(*sets: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(_rendered(sets)) if d]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def deployment_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = of_kind(docs, "Deployment")
    return dict(deployment["spec"])


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    [container] = deployment_spec(docs)["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def leader_election_roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in of_kind(docs, "Role") if r["metadata"]["name"] == f"{FULLNAME}-leader-election"]


def test_by_default_two_replicas_elect_a_leader_on_the_releases_lease_and_are_rolled() -> None:
    docs = render()
    spec = deployment_spec(docs)
    assert spec["replicas"] == 2
    # Rolled: a new pod stands by before an old one goes, so one is always there to lead.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    env = env_of(docs)
    settings = OperatorSettings.from_env(env)
    assert settings.leader_election is True
    assert settings.leader_election_lease == FULLNAME
    assert settings.leader_election_namespace == RELEASE_NAMESPACE
    assert (
        settings.leader_election_lease_duration_seconds,
        settings.leader_election_renew_deadline_seconds,
        settings.leader_election_retry_period_seconds,
    ) == (15, 10, 2)
    assert all(name.startswith(ENV_PREFIX) for name in env)


def test_the_durations_are_values_and_the_operator_refuses_ones_that_cannot_work() -> None:
    env = env_of(render("leaderElection.leaseDurationSeconds=30", "leaderElection.renewDeadlineSeconds=20"))
    settings = OperatorSettings.from_env(env)
    assert (
        settings.leader_election_lease_duration_seconds,
        settings.leader_election_renew_deadline_seconds,
    ) == (
        30,
        20,
    )
    bad = env_of(render("leaderElection.renewDeadlineSeconds=15"))
    with pytest.raises(SettingsError, match="renew deadline must be shorter than the lease duration"):
        OperatorSettings.from_env(bad)


def test_one_replica_without_leader_election_is_replaced_not_rolled() -> None:
    docs = render("replicas=1", "leaderElection.enabled=false")
    spec = deployment_spec(docs)
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert not [name for name in env_of(docs) if name.startswith(f"{ENV_PREFIX}LEADER_ELECTION")]
    assert OperatorSettings.from_env(env_of(docs)).leader_election is False
    assert leader_election_roles(docs) == []
    assert of_kind(docs, "PodDisruptionBudget") == []


def test_several_replicas_without_leader_election_are_refused() -> None:
    code, output = helm_template("replicas=2", "leaderElection.enabled=false", check=False)
    assert code != 0
    assert "replicas > 1 needs leaderElection.enabled" in output


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("replicas=0", "replicas"),
        ("leaderElection.leaseDurationSeconds=0", "leaseDurationSeconds"),
        ("leaderElection.elect=true", "elect"),
        ("podDisruptionBudget.maxUnavailable=1", "maxUnavailable"),
    ],
)
def test_the_schema_refuses_wrong_high_availability_values(setting: str, message: str) -> None:
    code, output = helm_template(setting, check=False)
    assert code != 0 and message in output, output


def test_a_disruption_budget_keeps_one_operator_pod_when_there_are_several() -> None:
    docs = render()
    [budget] = of_kind(docs, "PodDisruptionBudget")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert budget["spec"]["minAvailable"] == 1
    selector = deployment_spec(docs)["selector"]
    assert budget["spec"]["selector"] == selector
    assert of_kind(render("replicas=3"), "PodDisruptionBudget")[0]["spec"]["minAvailable"] == 1
    # One replica: a budget of one would block every node drain. Off: none.
    assert of_kind(render("replicas=1"), "PodDisruptionBudget") == []
    assert of_kind(render("podDisruptionBudget.enabled=false"), "PodDisruptionBudget") == []


@pytest.mark.parametrize(
    "sets",
    [(), ("watch.namespaces={team-a,team-b}",), ("watch.allNamespaces=true",)],
    ids=["release-namespace", "namespaces", "all-namespaces"],
)
def test_the_lease_rights_are_a_role_in_the_release_namespace_for_the_one_lease(
    sets: tuple[str, ...],
) -> None:
    docs = render(*sets)
    [role] = leader_election_roles(docs)
    assert role["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [FULLNAME],
            "verbs": ["get", "update"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]
    [binding] = [b for b in of_kind(docs, "RoleBinding") if b["metadata"]["name"] == role["metadata"]["name"]]
    assert binding["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": f"{FULLNAME}-leader-election",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NAMESPACE}
    ]
    # Nothing cluster-wide may write Leases: the ClusterRole (all namespaces) only reads them, if at all.
    for cluster_role in of_kind(docs, "ClusterRole"):
        for rule in cluster_role["rules"]:
            if "leases" in rule["resources"]:
                assert not {"create", "update", "patch", "delete"} & set(rule["verbs"]), rule
    # The Lease the operator is told to use is the one the Role names.
    assert OperatorSettings.from_env(env_of(docs)).leader_election_lease == FULLNAME
