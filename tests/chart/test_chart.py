"""The Helm chart (charts/fleet-dispatch) and the image (Dockerfile).

`helm lint --strict` and `helm template` (the helm that `make tools` installs) with each values file in the
chart's ci/ folder; the rendered built-in kinds against Kubernetes' own schemas (kubernetes-validate,
strict, at the oldest and the newest supported Kubernetes), our CRDs against crds/, the ServiceMonitor
against the Service it scrapes. The RBAC is checked twice: as rules (exact verbs, no wildcards, Roles per
namespace unless all namespaces are watched), and on the dev cluster's real kube-apiserver, which enforces
it: the operator, as the chart installs it for one namespace and for all, and the supervisor's heartbeat
run as the chart's ServiceAccounts bound to the rendered roles, and the audit log shows that none of their
requests is refused. Each knob users expect (affinity, topology spread, extra env and args, the
ServiceAccount, rbac.create, the security contexts, name overrides, log level and format, the supervisor's
resources, the metrics Service's port) is rendered and checked, and its wrong values refused by name.
checkov scans the rendered chart and the Dockerfile, hadolint lints the Dockerfile,
and the build context that .dockerignore lets through builds the package; these need no cluster or Docker.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import fleetdispatch
from fleetdispatch.api.names import API_VERSION
from fleetdispatch.api.settings import DEFAULT_IMAGE, ENV_PREFIX, OperatorSettings, SettingsError
from fleetdispatch.core import podspec
from fleetdispatch.devcluster import controlplane
from fleetdispatch.devcluster.stack import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    OPERATOR_USER,
    AuditWatch,
    BackgroundCluster,
    audit_events,
)
from fleetdispatch.session import protocol
from fleetdispatch.session.heartbeat import ANNOTATION_PREFIX, Heartbeat, LeaseStatus
from fleetdispatch.validation import manifests
from kube import ApiError, Kube
from kubectl import run_tool
from operators import Namespace, running, running_operator, terminated
from waiting import eventually
from wheels import build_wheel

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "fleet-dispatch"
TOOLS = ROOT / ".tools" / "bin"
HELM = TOOLS / "helm"
CHECKOV = TOOLS / "checkov"
CI_VALUES = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
RELEASE, RELEASE_NAMESPACE = "fd", "fleet-system"
FULLNAME = f"{RELEASE}-fleet-dispatch"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion, the CRDs' CEL) and the newest known.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())

# CI installs the tools (`make test` runs `make tools`); elsewhere a missing tool skips, rather than fails.
needs_helm = pytest.mark.skipif(
    not HELM.exists() and not os.environ.get("CI"), reason="helm not installed: run `make tools`"
)
needs_checkov = pytest.mark.skipif(
    not CHECKOV.exists() and not os.environ.get("CI"),
    reason="checkov not installed: run `make tools` (it goes into its own virtualenv under .tools/)",
)

# What the operator may do in a watched namespace (or, watching all namespaces, cluster-wide): exactly the
# requests it makes. `get` on dispatches: a status write that conflicts re-reads the dispatch; `get` on
# pods: a create that conflicts reads the existing pod; `delete` on pods: suspension and the backstop.
OPERATOR_RULES = {
    # create, patch (spec.suspend) and delete: a FleetCampaign's dispatches; delete: a dispatch past its
    # ttlSecondsAfterFinished (tests/cluster/test_ttl_retry.py).
    ("fleet.dispatch.dev", "fleetdispatches"): {"get", "list", "watch", "create", "patch", "delete"},
    ("fleet.dispatch.dev", "fleetdispatches/status"): {"patch"},
    # The API server asks for it before it accepts a pod whose ownerReference sets blockOwnerDeletion.
    ("fleet.dispatch.dev", "fleetdispatches/finalizers"): {"update"},
    ("fleet.dispatch.dev", "fleetcampaigns"): {"list", "watch"},
    ("fleet.dispatch.dev", "fleetcampaigns/status"): {"patch"},
    # As for pods: the campaign's dispatches block its deletion (ownerReferences blockOwnerDeletion).
    ("fleet.dispatch.dev", "fleetcampaigns/finalizers"): {"update"},
    ("fleet.dispatch.dev", "quotapools"): {"list", "watch"},
    ("fleet.dispatch.dev", "quotapools/status"): {"patch"},
    ("", "pods"): {"get", "list", "watch", "create", "delete"},
    # spec.workspace: a dispatch's claim, created before its first pod (get: a create that conflicts).
    ("", "persistentvolumeclaims"): {"create", "get"},
    # Core v1 Events only: kopf posts there too (kopf/_core/engines/posting.py, references.EVENTS).
    ("", "events"): {"create"},
}
SUPERVISOR_RULES = {("coordination.k8s.io", "leases"): {"get", "create", "patch"}}
# With the heartbeat (on by default) the operator watches the supervisors' Leases, and lists stale ones again.
OPERATOR_RULES = {**OPERATOR_RULES, ("coordination.k8s.io", "leases"): {"list", "watch"}}
# --- rendering ---------------------------------------------------------------------------------------------


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_tool([str(HELM) if HELM.exists() else "helm", *args], check=check)


def template_args(values: str | None = None, *sets: str, monitoring: bool = False) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE]
    if values is not None:
        args += ["--values", str(CHART / "ci" / values)]
    for setting in sets:
        args += ["--set", setting]
    if monitoring:
        args += ["--api-versions", "monitoring.coreos.com/v1"]
    return args


@functools.cache
def _rendered(values: str | None, sets: tuple[str, ...], monitoring: bool) -> str:
    return helm(*template_args(values, *sets, monitoring=monitoring)).stdout


def render(values: str | None = None, *sets: str, monitoring: bool = False) -> list[dict[str, Any]]:
    """The chart's manifests (fresh copies), as `helm template` renders them."""
    return [d for d in yaml.safe_load_all(_rendered(values, sets, monitoring)) if d]


def of_kind(docs: Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [dict(d) for d in docs if d["kind"] == kind]


def deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [found] = of_kind(docs, "Deployment")
    return found


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = deployment(docs)["spec"]["template"]["spec"]["containers"]
    return dict(container)


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in operator_container(docs)["env"]}


def watched_namespaces(docs: list[dict[str, Any]]) -> list[str]:
    args = operator_container(docs)["args"]
    assert args[0] == "operator"
    return [args[i + 1] for i, arg in enumerate(args) if arg == "-n"]


def rules_of(role: Mapping[str, Any]) -> dict[tuple[str, str], set[str]]:
    """A Role's rules as (group, resource) -> verbs, refusing the shapes least privilege never needs."""
    rules: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, no URLs
        for value in (*rule["apiGroups"], *rule["resources"], *rule["verbs"]):
            assert "*" not in value, f"a wildcard in {role['metadata']['name']}: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                verbs = rules.setdefault((group, resource), set())
                assert not verbs & set(rule["verbs"]), f"{group}/{resource} granted twice"
                verbs.update(rule["verbs"])
    return rules


def crd_files() -> list[str]:
    return sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))


# --- the chart's identity -----------------------------------------------------------------------------


def test_the_charts_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == fleetdispatch.__version__
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # The default image is the one the operator defaults its supervisor to.
    assert f"{values['image']['repository']}:{chart['appVersion']}" == DEFAULT_IMAGE


def test_the_charts_crd_files_are_the_top_level_crds() -> None:
    assert crd_files() == sorted(manifests.CRD_FILES)
    assert sorted(p.name for p in (CHART / "files" / "crds").glob("*")) == crd_files()
    for name in crd_files():
        assert (CHART / "files" / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/fleet-dispatch/files/crds/{name} differs from crds/{name}: cp crds/*.yaml "
            "charts/fleet-dispatch/files/crds/"
        )


@needs_helm
def test_the_rendered_crds_are_the_top_level_crds_kept_on_uninstall() -> None:
    expected = {name: yaml.safe_load((ROOT / "crds" / name).read_text()) for name in crd_files()}
    by_name = {f"{c['spec']['names']['plural']}.yaml": c for c in expected.values()}
    kept = of_kind(render(), "CustomResourceDefinition")
    assert len(kept) == len(expected)
    for crd in kept:
        assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
        assert crd == by_name[f"{crd['spec']['names']['plural']}.yaml"]
    unkept = of_kind(render(None, "crds.keep=false"), "CustomResourceDefinition")
    assert sorted(unkept, key=str) == sorted(expected.values(), key=str)
    assert of_kind(render(None, "crds.install=false"), "CustomResourceDefinition") == []


# --- lint, schemas, validation ------------------------------------------------------------------------


@needs_helm
@pytest.mark.parametrize("values", [None, *CI_VALUES])
def test_helm_lint_strict(values: str | None) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", RELEASE_NAMESPACE]
    if values is not None:
        args += ["--values", str(CHART / "ci" / values)]
    helm(*args)


@needs_helm
@pytest.mark.parametrize("values", CI_VALUES)
def test_every_rendered_manifest_is_valid(values: str) -> None:
    docs = render(values, monitoring=True)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ServiceAccount"} <= kinds
    assert kinds <= {
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "ServiceMonitor",
        "NetworkPolicy",
        "PodDisruptionBudget",
    }
    crds = {yaml.dump(yaml.safe_load((ROOT / "crds" / n).read_text())) for n in crd_files()}
    for doc in docs:
        where = f"{doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] == "CustomResourceDefinition":
            doc["metadata"].pop("annotations", None)
            assert yaml.dump(doc) in crds, f"{where} is not one of crds/"
        elif doc["kind"] == "ServiceMonitor":
            check_service_monitor(doc, of_kind(docs, "Service"))
        else:
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    raise AssertionError(f"{values}: {where} is invalid on {version}: {error}") from None
        if doc["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"].get("namespace"), f"{where} has no namespace: it would land anywhere"
        # None of ours (FleetDispatch, QuotaPool) is rendered; if one were, it would have to be valid.
        assert manifests.check(doc).valid


def check_service_monitor(monitor: Mapping[str, Any], services: list[dict[str, Any]]) -> None:
    """Our own check of the one kind without a schema here: it selects the metrics Service and its port."""
    [service] = services
    spec = monitor["spec"]
    assert set(spec) == {"selector", "namespaceSelector", "endpoints"}
    labels = service["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    [endpoint] = spec["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}


def test_the_values_schema_refuses_unknown_keys_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: Mapping[str, Any], where: str) -> Iterator[str]:
        if node.get("type") == "object" and where != "global":
            extra = node.get("additionalProperties")
            # Fixed keys: nothing else; a map (labels, annotations, nodeSelector): string values only.
            if not (extra is False or extra == {"type": "string"}):
                yield where or "(top)"
            if extra is False:
                assert node.get("properties"), f"{where}: an object that allows nothing"
        for key, child in (node.get("properties") or {}).items():
            yield from walk(child, f"{where}.{key}".lstrip("."))
        for key in ("items", "anyOf"):
            children = node.get(key)
            for child in children if isinstance(children, list) else [children] if children else []:
                yield from walk(child, f"{where}[]")

    assert list(walk(schema, "")) == []
    # Kubernetes' own kinds the chart passes through (affinity, security contexts, EnvVars), strict too.
    definitions = schema["definitions"]
    assert {"k8s.Affinity", "k8s.SecurityContext", "k8s.PodSecurityContext", "k8s.EnvVar"} <= set(definitions)
    assert [bad for name, child in definitions.items() for bad in walk(child, f"definitions.{name}")] == []

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, child in node.items():
                yield from [child] if key == "$ref" else refs(child)
        elif isinstance(node, list):
            for child in node:
                yield from refs(child)

    assert {ref.removeprefix("#/definitions/") for ref in refs(schema)} == set(
        definitions
    )  # all used, all there
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # Every value the chart has is in the schema (and the other way round).
    assert set(values) | {"global"} == set(schema["properties"])


@needs_helm
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("watchNamespace=team-a", "watchNamespace"),
        ("operator.historyLimit=21", "historyLimit"),
        ("watch.namespaces={team-*}", "namespaces"),
        ("resources.limits.gpu=1", "gpu"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
    ],
)
def test_a_wrong_value_is_refused_by_name(setting: str, message: str) -> None:
    refused = helm(*template_args(None, setting), check=False)
    assert refused.returncode != 0
    assert "values don't meet the specifications of the schema" in refused.stderr, refused.stderr
    assert message in refused.stderr


@needs_helm
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("watch.allNamespaces=true", "watch.namespaces={team-a}"), "leave watch.namespaces empty"),
        (("supervisor.image.tag=1.0",), "supervisor.image.repository"),
        (("metrics.port=8081",), "metrics.port and operator.healthPort must differ"),
    ],
)
def test_contradicting_values_fail_with_a_message(sets: tuple[str, ...], message: str) -> None:
    refused = helm(*template_args(None, *sets), check=False)
    assert refused.returncode != 0
    assert message in refused.stderr, refused.stderr


# --- RBAC ----------------------------------------------------------------------------------------------


@needs_helm
def test_by_default_a_role_in_the_release_namespace_and_nothing_cluster_wide() -> None:
    docs = render()
    assert of_kind(docs, "ClusterRole") == of_kind(docs, "ClusterRoleBinding") == []
    # The operator's own (the heartbeat's account, Role and binding are the next test's).
    [role] = [r for r in of_kind(docs, "Role") if r["metadata"]["name"] == FULLNAME]
    assert role["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert rules_of(role) == OPERATOR_RULES
    [binding] = [b for b in of_kind(docs, "RoleBinding") if b["metadata"]["name"] == FULLNAME]
    assert binding["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
    [account] = [a for a in of_kind(docs, "ServiceAccount") if a["metadata"]["name"] == FULLNAME]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": RELEASE_NAMESPACE}
    ]
    assert watched_namespaces(docs) == [RELEASE_NAMESPACE]


@needs_helm
def test_a_role_per_watched_namespace() -> None:
    docs = render("heartbeat-servicemonitor-networkpolicy-values.yaml")
    assert watched_namespaces(docs) == ["team-a", "team-b"]
    operator_roles = [r for r in of_kind(docs, "Role") if r["metadata"]["name"] == FULLNAME]
    assert sorted(r["metadata"]["namespace"] for r in operator_roles) == ["team-a", "team-b"]
    assert all(rules_of(r) == OPERATOR_RULES for r in operator_roles)
    bindings = [b for b in of_kind(docs, "RoleBinding") if b["metadata"]["name"] == FULLNAME]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["subjects"][0]["namespace"] == RELEASE_NAMESPACE for b in bindings)
    assert of_kind(docs, "ClusterRole") == []


@needs_helm
def test_all_namespaces_is_a_cluster_role_and_no_namespace_flag() -> None:
    docs = render("all-namespaces-values.yaml")
    [role] = of_kind(docs, "ClusterRole")
    assert rules_of(role) == OPERATOR_RULES
    [binding] = of_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["kind"] == "ClusterRole"
    assert binding["subjects"][0] == {
        "kind": "ServiceAccount",
        "name": FULLNAME,
        "namespace": RELEASE_NAMESPACE,
    }
    # Only the leader election's, in the release namespace: nothing else is namespaced.
    roles = of_kind(docs, "Role")
    assert [(r["metadata"]["name"], r["metadata"]["namespace"]) for r in roles] == [
        (f"{FULLNAME}-leader-election", RELEASE_NAMESPACE)
    ]
    assert watched_namespaces(docs) == []
    assert "--verbose" in operator_container(docs)["args"]


@needs_helm
def test_the_heartbeat_account_may_only_write_leases_in_each_dispatch_namespace() -> None:
    docs = render("heartbeat-servicemonitor-networkpolicy-values.yaml")
    name = "fleet-dispatch-supervisor"
    assert env_of(docs)[f"{ENV_PREFIX}HEARTBEAT_SERVICE_ACCOUNT"] == name
    accounts = [a for a in of_kind(docs, "ServiceAccount") if a["metadata"]["name"] == name]
    assert sorted(a["metadata"]["namespace"] for a in accounts) == ["team-a", "team-b"]
    assert all(a["automountServiceAccountToken"] is False for a in accounts)
    roles = [r for r in of_kind(docs, "Role") if r["metadata"]["name"] == name]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert all(rules_of(r) == SUPERVISOR_RULES for r in roles)
    for binding in (b for b in of_kind(docs, "RoleBinding") if b["metadata"]["name"] == name):
        namespace = binding["metadata"]["namespace"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    # On by default; off: no account, and the operator runs pods without one.
    assert env_of(render())[f"{ENV_PREFIX}HEARTBEAT_SERVICE_ACCOUNT"] == name
    assert f"{ENV_PREFIX}HEARTBEAT_SERVICE_ACCOUNT" not in env_of(render(None, "heartbeat.enabled=false"))
    cluster_wide = render(
        "all-namespaces-values.yaml", "heartbeat.enabled=true", "heartbeat.namespaces={x,y}"
    )
    supervisor_roles = [r for r in of_kind(cluster_wide, "Role") if r["metadata"]["name"] == name]
    assert sorted(r["metadata"]["namespace"] for r in supervisor_roles) == ["x", "y"]
    # Watching all namespaces without a list: no account anywhere (pods run without the heartbeat).
    anywhere = of_kind(render("all-namespaces-values.yaml"), "ServiceAccount")
    assert [a for a in anywhere if a["metadata"]["name"] == name] == []


# --- the operator's Deployment -------------------------------------------------------------------------


@needs_helm
def test_the_defaults_are_the_operators_own() -> None:
    docs = render()
    settings = OperatorSettings.from_env(env_of(docs))
    # The heartbeat and leader election are the chart's defaults (the operator alone cannot know the
    # account's name, nor that it runs as several replicas, nor its release's Lease).
    assert settings == OperatorSettings(
        heartbeat_service_account="fleet-dispatch-supervisor",
        leader_election=True,
        leader_election_lease=FULLNAME,
        leader_election_namespace=RELEASE_NAMESPACE,
    )
    assert all(name.startswith(ENV_PREFIX) for name in env_of(docs))


@needs_helm
def test_every_operator_setting_is_a_value() -> None:
    docs = render("heartbeat-servicemonitor-networkpolicy-values.yaml")
    env = env_of(docs)
    assert {name.removeprefix(ENV_PREFIX).lower() for name in env} == set(OperatorSettings.model_fields)
    settings = OperatorSettings.from_env(env)
    assert settings.supervisor_image == "registry.example.com/fleet/supervisor:0.1.0-custom"
    assert settings.supervisor_image_pull_policy == "Always"
    assert settings.supervisor_cpu_limit == "500m"
    assert operator_container(docs)["image"].endswith(
        "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    tuned = env_of(render("all-namespaces-values.yaml", "operator.maxQuotaWaitSeconds=1000000"))
    assert OperatorSettings.from_env(tuned).max_quota_wait_seconds == 1_000_000
    assert OperatorSettings.from_env(tuned).workers == 32


@needs_helm
def test_one_replica_without_leader_election_is_replaced_not_rolled() -> None:
    spec = deployment(render(None, "replicas=1", "leaderElection.enabled=false"))["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


@needs_helm
@pytest.mark.parametrize("values", CI_VALUES)
def test_the_operator_pod_meets_the_restricted_pod_security_standard(values: str) -> None:
    pod = deployment(render(values))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    assert all("emptyDir" in v for v in pod["volumes"])
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["readOnlyRootFilesystem"] is True
        assert security["runAsNonRoot"] is True
        assert not security.get("privileged")
        assert container["resources"]["limits"]["memory"]
        assert container["resources"]["requests"]["cpu"]


@needs_helm
def test_probes_and_metrics_use_the_operators_ports() -> None:
    docs = render(None, "operator.healthPort=9001", "metrics.port=9002")
    container, env = operator_container(docs), env_of(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 9001, "metrics": 9002}
    assert env[f"{ENV_PREFIX}HEALTH_PORT"] == "9001"
    assert env[f"{ENV_PREFIX}METRICS_PORT"] == "9002"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    [service] = of_kind(docs, "Service")
    # The Service's own port (metrics.service.port) forwards to the container's, by name.
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    [moved] = of_kind(render(None, "metrics.service.port=9100"), "Service")
    assert moved["spec"]["ports"] == [
        {"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert (
        service["spec"]["selector"].items()
        <= deployment(docs)["spec"]["template"]["metadata"]["labels"].items()
    )
    off = render(None, "metrics.enabled=false", "metrics.serviceMonitor.enabled=true", monitoring=True)
    assert env_of(off)[f"{ENV_PREFIX}METRICS_PORT"] == "0"
    assert of_kind(off, "Service") == of_kind(off, "ServiceMonitor") == []


# --- the knobs users expect ----------------------------------------------------------------------------

RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    **RESTRICTED_POD,
}


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(deployment(docs)["spec"]["template"]["spec"])


def valid_on_every_version(doc: dict[str, Any]) -> None:
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


@needs_helm
def test_affinity_and_topology_spread_are_the_pods_and_a_constraint_gets_the_pods_selector() -> None:
    assert {"affinity", "topologySpreadConstraints"}.isdisjoint(pod_spec(render()))
    anti = {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}
            ]
        }
    }
    zone = "topology.kubernetes.io/zone"
    own = {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}
    docs = render(
        None,
        "affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight=100",
        "affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].podAffinityTerm"
        ".topologyKey=kubernetes.io/hostname",
        f"topologySpreadConstraints[0].topologyKey={zone}",
        "topologySpreadConstraints[0].maxSkew=1",
        "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        "topologySpreadConstraints[1].topologyKey=kubernetes.io/hostname",
        "topologySpreadConstraints[1].maxSkew=2",
        "topologySpreadConstraints[1].whenUnsatisfiable=DoNotSchedule",
        "topologySpreadConstraints[1].labelSelector.matchExpressions[0].key=tier",
        "topologySpreadConstraints[1].labelSelector.matchExpressions[0].operator=Exists",
    )
    spec = pod_spec(docs)
    assert spec["affinity"] == anti
    selector = deployment(docs)["spec"]["selector"]
    assert spec["topologySpreadConstraints"] == [
        {"maxSkew": 1, "topologyKey": zone, "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": selector},
        {
            "maxSkew": 2,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": own,
        },
    ]
    valid_on_every_version(deployment(docs))
    refused = helm(*template_args(None, "affinity.podAntiAffinity.bogus=1"), check=False)
    assert refused.returncode != 0 and "bogus" in refused.stderr, refused.stderr


@needs_helm
def test_extra_env_and_args_come_after_the_charts_own() -> None:
    plain = operator_container(render())
    docs = render(
        None,
        "extraEnv[0].name=HTTPS_PROXY",
        "extraEnv[0].value=http://proxy:3128",
        "extraEnv[1].name=NODE",
        "extraEnv[1].valueFrom.fieldRef.fieldPath=spec.nodeName",
        "extraArgs={--context,ops}",
    )
    container = operator_container(docs)
    assert container["env"][: len(plain["env"])] == plain["env"]
    assert container["env"][len(plain["env"]) :] == [
        {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ]
    assert container["args"] == [*plain["args"], "--context", "ops"]
    valid_on_every_version(deployment(docs))
    refused = helm(*template_args(None, "extraEnv[0].value=x"), check=False)
    assert refused.returncode != 0 and "name" in refused.stderr, refused.stderr


@needs_helm
def test_the_service_account_is_created_named_and_annotated_or_an_existing_one_is_used() -> None:
    [account] = [a for a in of_kind(render(), "ServiceAccount") if a["metadata"]["name"] == FULLNAME]
    assert "annotations" not in account["metadata"]
    docs = render(
        None,
        "serviceAccount.name=ops",
        "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::1:role/ops",
    )
    [account] = [a for a in of_kind(docs, "ServiceAccount") if a["metadata"]["name"] == "ops"]
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/ops"}
    assert pod_spec(docs)["serviceAccountName"] == "ops"
    existing = render(None, "serviceAccount.create=false", "serviceAccount.name=platform-ops")
    assert [a["metadata"]["name"] for a in of_kind(existing, "ServiceAccount")] == [
        "fleet-dispatch-supervisor"  # the heartbeat's, not the operator's
    ]
    assert pod_spec(existing)["serviceAccountName"] == "platform-ops"
    bound = {
        s["name"]
        for b in of_kind(existing, "RoleBinding")
        if b["metadata"]["name"].startswith(FULLNAME)
        for s in b["subjects"]
    }
    assert bound == {"platform-ops"}
    # Never the namespace's default account: every pod running as it would get the operator's rules.
    refused = helm(*template_args(None, "serviceAccount.create=false"), check=False)
    assert refused.returncode != 0
    assert "name the existing ServiceAccount" in refused.stderr, refused.stderr


@needs_helm
@pytest.mark.parametrize("values", CI_VALUES)
def test_rbac_create_false_renders_no_role_or_binding_anywhere(values: str) -> None:
    with_rbac = render(values, "heartbeat.enabled=true", "heartbeat.namespaces={x}")
    rbac = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    assert rbac & {d["kind"] for d in with_rbac}
    docs = render(values, "heartbeat.enabled=true", "heartbeat.namespaces={x}", "rbac.create=false")
    assert not rbac & {d["kind"] for d in docs}
    # The rest is as it was: the accounts, the Deployment.
    assert [d for d in with_rbac if d["kind"] not in rbac] == docs


@needs_helm
def test_the_security_contexts_are_restricted_by_default_and_overridable() -> None:
    spec = pod_spec(render())
    assert spec["securityContext"] == RESTRICTED_POD
    [container] = spec["containers"]
    assert container["securityContext"] == RESTRICTED_CONTAINER
    docs = render(
        None,
        "podSecurityContext.fsGroup=2000",
        "podSecurityContext.runAsUser=1000",
        "securityContext.runAsUser=1000",
        "securityContext.readOnlyRootFilesystem=null",
    )
    spec = pod_spec(docs)
    # Merged: the keys given change, the rest of the restricted default stays; null removes a key.
    assert spec["securityContext"] == {**RESTRICTED_POD, "fsGroup": 2000, "runAsUser": 1000}
    [container] = spec["containers"]
    expected = {k: v for k, v in RESTRICTED_CONTAINER.items() if k != "readOnlyRootFilesystem"}
    assert container["securityContext"] == {**expected, "runAsUser": 1000}
    valid_on_every_version(deployment(docs))
    refused = helm(*template_args(None, "securityContext.runAsUsr=1"), check=False)
    assert refused.returncode != 0 and "runAsUsr" in refused.stderr, refused.stderr


@needs_helm
def test_name_and_fullname_overrides_name_every_resource() -> None:
    def names_of(docs: list[dict[str, Any]]) -> set[str]:
        return {
            d["metadata"]["name"]
            for d in docs
            if d["kind"] != "CustomResourceDefinition"
            and d["metadata"]["name"] != "fleet-dispatch-supervisor"
        }

    assert all(name.startswith(FULLNAME) for name in names_of(render()))
    renamed = render(None, "nameOverride=dispatcher")
    assert all(name.startswith(f"{RELEASE}-dispatcher") for name in names_of(renamed))
    assert deployment(renamed)["metadata"]["labels"]["app.kubernetes.io/name"] == "dispatcher"
    assert deployment(renamed)["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "dispatcher"
    full = render(None, "fullnameOverride=fleet")
    assert names_of(full) and all(
        name.startswith("fleet") and not name.startswith(RELEASE) for name in names_of(full)
    )
    assert deployment(full)["metadata"]["name"] == "fleet"
    assert pod_spec(full)["serviceAccountName"] == "fleet"
    refused = helm(*template_args(None, "fullnameOverride=Not_A_Name"), check=False)
    assert refused.returncode != 0 and "fullnameOverride" in refused.stderr, refused.stderr


@needs_helm
def test_the_log_level_and_format_are_the_operators_flags_and_it_takes_them(tmp_path: Path) -> None:
    assert not [a for a in operator_container(render())["args"] if a.startswith("--log-")]
    args = operator_container(render(None, "operator.logLevel=WARNING", "operator.logFormat=json"))["args"]
    assert args[-2:] == ["--log-level=WARNING", "--log-format=json"]
    # The operator as the chart runs it, with no cluster to log in to: its one fatal line is JSON.
    result = subprocess.run(
        [str(Path(sys.executable).parent / "fleetdispatch"), *args, f"--kubeconfig={tmp_path / 'none'}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert json.loads(line)["level"] == "ERROR", line
    refused = helm(*template_args(None, "operator.logFormat=xml"), check=False)
    assert refused.returncode != 0 and "logFormat" in refused.stderr, refused.stderr


@needs_helm
def test_the_supervisor_resources_reach_the_pods_the_operator_builds() -> None:
    default = OperatorSettings.from_env(env_of(render()))
    assert podspec.supervisor_resources(default) == podspec.supervisor_resources(OperatorSettings())
    tuned = OperatorSettings.from_env(
        env_of(
            render(
                None,
                "supervisor.resources.requests.cpu=50m",
                "supervisor.resources.requests.memory=48Mi",
                "supervisor.resources.limits.memory=128Mi",
                "supervisor.resources.limits.cpu=1",
            )
        )
    )
    assert podspec.supervisor_resources(tuned) == {
        "requests": {"cpu": "50m", "memory": "48Mi"},
        "limits": {"memory": "128Mi", "cpu": "1"},
    }
    # A limit below its request: the operator refuses to start, naming the setting.
    with pytest.raises(SettingsError, match="SUPERVISOR_MEMORY_LIMIT: 16Mi is less than"):
        OperatorSettings.from_env(env_of(render(None, "supervisor.resources.limits.memory=16Mi")))
    refused = helm(*template_args(None, "supervisor.resources.limits.memory=lots"), check=False)
    assert refused.returncode != 0 and "memory" in refused.stderr, refused.stderr


@needs_helm
def test_the_service_monitor_only_where_the_cluster_serves_it() -> None:
    values = "heartbeat-servicemonitor-networkpolicy-values.yaml"
    assert of_kind(render(values), "ServiceMonitor") == []
    [monitor] = of_kind(render(values, monitoring=True), "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert of_kind(render(None, monitoring=True), "ServiceMonitor") == []  # not enabled


@needs_helm
def test_the_network_policy_admits_probes_and_scrapes_and_reaches_only_the_api_server() -> None:
    assert of_kind(render(), "NetworkPolicy") == []
    docs = render("heartbeat-servicemonitor-networkpolicy-values.yaml")
    [policy] = of_kind(docs, "NetworkPolicy")
    spec = policy["spec"]
    assert (
        spec["podSelector"]["matchLabels"].items()
        <= deployment(docs)["spec"]["template"]["metadata"]["labels"].items()
    )
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    health, metrics = spec["ingress"]
    assert health == {"ports": [{"port": "health", "protocol": "TCP"}]}
    assert metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert spec["egress"] == [
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 6443, "protocol": "TCP"}]}
    ]


# --- RBAC on the real API server ------------------------------------------------------------------------
# The dev cluster's kube-apiserver enforces RBAC: the operator, and the supervisor's heartbeat, run as the
# chart's ServiceAccounts bound to exactly the chart's rendered roles, and every request they make is in
# the audit log with the answer it got. None may be refused (403): least privilege that still suffices.


def serviceaccount_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def identity_docs(docs: list[dict[str, Any]], account: str) -> list[dict[str, Any]]:
    """The chart's ServiceAccount `account` and the roles and bindings that name it, as rendered."""
    bound = [
        b
        for b in of_kind(docs, "RoleBinding") + of_kind(docs, "ClusterRoleBinding")
        if any(s["name"] == account for s in b["subjects"])
    ]
    roles = {(b["metadata"].get("namespace"), b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bound}
    return [
        *(a for a in of_kind(docs, "ServiceAccount") if a["metadata"]["name"] == account),
        *(
            r
            for r in of_kind(docs, "Role") + of_kind(docs, "ClusterRole")
            if (r["metadata"].get("namespace"), r["kind"], r["metadata"]["name"]) in roles
        ),
        *bound,
    ]


def install_identity(cluster: BackgroundCluster, docs: list[dict[str, Any]]) -> None:
    """What `helm install` creates of the identity, applied as the cluster's admin."""
    cluster.dev.plane.apply(docs)


def token_for(cluster: BackgroundCluster, namespace: str, account: str) -> str:
    """A token of a ServiceAccount, from the TokenRequest API (what the kubelet projects into a pod)."""
    status, body = cluster.dev.plane.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    assert status == 201, body
    return str(body["status"]["token"])


def audit_offset(cluster: BackgroundCluster) -> int:
    return audit_events(cluster.dev.audit_log)[1]


def requests_of(cluster: BackgroundCluster, user: str, offset: int) -> list[dict[str, Any]]:
    """The completed requests of `user` since `offset`, from the API server's audit log."""
    events, _ = audit_events(cluster.dev.audit_log, offset)
    return [
        e
        for e in events
        if e.get("stage") == "ResponseComplete" and (e.get("user") or {}).get("username") == user
    ]


def refused(requests: Iterable[Mapping[str, Any]]) -> list[str]:
    return [
        f"{r['verb']} {r['requestURI']}: {r['responseStatus'].get('message', '')}"
        for r in requests
        if r["responseStatus"]["code"] == 403
    ]


# What every authenticated user may do without a grant (the `system:basic-user` ClusterRole): the
# operator's login check at start-up asks the API server who it is, as `kubectl auth whoami` does.
ALWAYS_ALLOWED = {("authentication.k8s.io", "selfsubjectreviews", "create")}


def used_rules(requests: Iterable[Mapping[str, Any]]) -> set[tuple[str, str, str]]:
    """(group, resource[/subresource], verb) of the resource requests (discovery has no objectRef) that
    need a grant."""
    used = set()
    for request in requests:
        ref = request.get("objectRef")
        if ref:
            resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            used.add((ref.get("apiGroup", ""), resource, request["verb"]))
    return used - ALWAYS_ALLOWED


def assert_used_exactly_the_grants(requests: Iterable[Mapping[str, Any]]) -> None:
    """Every grant the operator used is in the chart's rules, and every rule but those only a conflict or
    an admission plugin needs was used."""
    used = used_rules(requests)
    granted = {(g, r, v) for (g, r), verbs in OPERATOR_RULES.items() for v in verbs}
    assert used <= granted
    assert granted - used <= RULES_NOT_EXERCISED, granted - used


# The grants only a conflict needs (a status write that conflicts re-reads the dispatch, a create that
# conflicts reads the pod), and the one only a cluster with the OwnerReferencesPermissionEnforcement
# admission plugin checks (the dev cluster runs the default plugins, which do not include it).
RULES_NOT_EXERCISED = {
    ("fleet.dispatch.dev", "fleetdispatches", "get"),
    ("", "pods", "get"),
    ("fleet.dispatch.dev", "fleetdispatches/finalizers", "update"),
    # Only with the heartbeat, whose account the chart passes in the operator's environment, not its args
    # (these tests run the operator with the args); tests/cluster/test_operator_live.py exercises them.
    ("coordination.k8s.io", "leases", "list"),
    ("coordination.k8s.io", "leases", "watch"),
    # Only with a FleetCampaign, which these tests do not create; tests/cluster/test_operator_campaign.py
    # runs the operator with this chart's RBAC and exercises them.
    ("fleet.dispatch.dev", "fleetdispatches", "create"),
    ("fleet.dispatch.dev", "fleetdispatches", "patch"),
    # (and by a dispatch past its ttlSecondsAfterFinished: tests/cluster/test_ttl_retry.py)
    ("fleet.dispatch.dev", "fleetdispatches", "delete"),
    ("fleet.dispatch.dev", "fleetcampaigns/status", "patch"),
    ("fleet.dispatch.dev", "fleetcampaigns/finalizers", "update"),
    # Only with spec.workspace, which these tests do not set; tests/cluster/test_workspace.py runs the
    # operator with this chart's RBAC and exercises them.
    ("", "persistentvolumeclaims", "create"),
    ("", "persistentvolumeclaims", "get"),
}


def _now(offset: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec(**overrides: Any) -> dict[str, Any]:
    container = {"name": "session", "image": "busybox", "command": ["true"]}
    backoff = {"baseSeconds": 1, "maxSeconds": 1, "jitterPercent": 0}
    return {"template": {"spec": {"containers": [container]}}, "retry": {"backoff": backoff}, **overrides}


def drive_dispatches(ns: Namespace) -> None:
    """Dispatches through the operator's every kind of request: pods created and deleted, statuses of
    dispatches and of a pool, Events; one runs to Succeeded. The test plays the kubelet (runtime none)."""
    pools = f"/apis/{API_VERSION}/namespaces/{ns.name}/quotapools"
    ns.kube.create(pools, {"apiVersion": API_VERSION, "kind": "QuotaPool", "metadata": {"name": "pool"}})
    ns.create("done", _spec())
    ns.create("pooled", _spec(quotaPool="pool"))
    ns.create("held", _spec())
    attempts = {"done-1", "pooled-1", "held-1"}
    eventually(lambda: attempts <= {p["metadata"]["name"] for p in ns.pods()}, 30, "the three pods")
    started = _now()
    for pod in sorted(attempts):
        ns.pod_status(pod, running(started))
    ns.wait_phase("held", "Running")
    ns.pod_status("done-1", terminated(started, 0, reason="Completed"))
    ns.wait_phase("done", "Succeeded")
    outcome = {"reason": "QuotaExhausted", "resetAt": _now(3600)}
    ns.pod_status("pooled-1", terminated(started, 75, json.dumps(outcome)))
    ns.wait_phase("pooled", "Requeued")
    ns.patch_spec("held", {"suspend": True})
    ns.wait_phase("held", "Suspended")
    pool = f"{pools}/pool"
    eventually(lambda: (ns.kube.get(pool).get("status") or {}).get("exhaustedUntil"), 15, "the pool's status")
    eventually(lambda: "Succeeded" in [reason for reason, _ in ns.events()], 10, "the Events")


def run_and_audit(
    cluster: BackgroundCluster, ns: Namespace, workdir: Path, args: list[str], *, kubeconfig: Path, user: str
) -> list[dict[str, Any]]:
    """The operator as `user` drives dispatches in `ns`; its requests once its watches have ended."""
    offset = audit_offset(cluster)
    watches = AuditWatch(cluster.dev.audit_log, user)
    watches.open_watches()
    with running_operator(cluster, workdir, *args, kubeconfig=kubeconfig, user=user):
        drive_dispatches(ns)
    # A watch is audited when it ends: the stopped operator's watches have ended when the log says so.
    eventually(lambda: not watches.open_watches(), 30, "the stopped operator's watches ended")
    return requests_of(cluster, user, offset)


@needs_helm
def test_the_operator_watching_one_namespace_is_never_refused(
    cluster: BackgroundCluster, tmp_path: Path
) -> None:
    ns = Namespace(cluster, "chart-rbac-team", runtime="none")
    # One replica acting alone: this test runs the operator without leader election.
    docs = render(None, f"watch.namespaces={{{ns.name}}}", "replicas=1", "leaderElection.enabled=false")
    identity = identity_docs(docs, FULLNAME)
    assert sorted(d["kind"] for d in identity) == ["Role", "RoleBinding", "ServiceAccount"]
    assert {d["metadata"]["namespace"] for d in identity if d["kind"] != "ServiceAccount"} == {ns.name}
    install_identity(cluster, identity)
    user = serviceaccount_user(RELEASE_NAMESPACE, FULLNAME)
    kubeconfig = tmp_path / "operator.kubeconfig"
    token = token_for(cluster, RELEASE_NAMESPACE, FULLNAME)
    kubeconfig.write_text(controlplane.kubeconfig(cluster.url, cluster.dev.plane.ca, user, token=token))
    args = operator_container(docs)["args"][1:]
    assert args == ["-n", ns.name]
    requests = run_and_audit(cluster, ns, tmp_path, args, kubeconfig=kubeconfig, user=user)
    assert refused(requests) == []
    # Everything it asked for was in its namespace: the Role there is all it has, and all it needs.
    elsewhere = {
        r["requestURI"]
        for r in requests
        if r.get("objectRef")
        and r["objectRef"].get("namespace") != ns.name
        and (r["objectRef"].get("apiGroup", ""), r["objectRef"]["resource"], r["verb"]) not in ALWAYS_ALLOWED
    }
    assert elsewhere == set()
    assert_used_exactly_the_grants(requests)


@needs_helm
def test_the_operator_watching_all_namespaces_is_never_refused(
    cluster: BackgroundCluster, tmp_path: Path
) -> None:
    # The dev cluster's operator identity is the chart's, rendered with watch.allNamespaces: the same
    # ClusterRole as all-namespaces-values.yaml renders, bound cluster-wide to its ServiceAccount.
    docs = render("all-namespaces-values.yaml")
    [rendered] = of_kind(docs, "ClusterRole")
    bindings = Kube(cluster.dev).items("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings")
    [binding] = [
        b
        for b in bindings
        if {"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}
        in (b.get("subjects") or [])
    ]
    role = Kube(cluster.dev).get(
        f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{binding['roleRef']['name']}"
    )
    assert rules_of(role) == rules_of(rendered) == OPERATOR_RULES
    assert not [
        b
        for b in Kube(cluster.dev).items("/apis/rbac.authorization.k8s.io/v1/rolebindings")
        if any(s.get("name") == OPERATOR_ACCOUNT for s in b.get("subjects") or [])
    ]
    ns = Namespace(cluster, "chart-rbac-anywhere", runtime="none")
    args = operator_container(docs)["args"][1:]
    assert args == ["--verbose"]
    requests = run_and_audit(
        cluster, ns, tmp_path, args, kubeconfig=cluster.dev.operator_kubeconfig, user=OPERATOR_USER
    )
    assert refused(requests) == []
    assert_used_exactly_the_grants(requests)


@needs_helm
def test_the_supervisor_heartbeat_under_the_charts_role_is_never_refused(
    cluster: BackgroundCluster, tmp_path: Path
) -> None:
    ns = Namespace(cluster, "chart-rbac-heartbeat", runtime="none")
    docs = render(None, f"watch.namespaces={{{ns.name}}}", "heartbeat.enabled=true")
    account = env_of(docs)[f"{ENV_PREFIX}HEARTBEAT_SERVICE_ACCOUNT"]
    identity = identity_docs(docs, account)
    assert sorted(d["kind"] for d in identity) == ["Role", "RoleBinding", "ServiceAccount"]
    assert {d["metadata"]["namespace"] for d in identity} == {ns.name}
    install_identity(cluster, identity)
    # The supervisor of a pod in that namespace, with a token of the supervisor's account where the
    # kubelet projects it (the namespace beside it).
    token = tmp_path / "token"
    token.write_text(token_for(cluster, ns.name, account) + "\n")
    (tmp_path / "namespace").write_text(ns.name)
    logged: list[tuple[str, dict[str, Any]]] = []
    offset = audit_offset(cluster)
    beat = Heartbeat.from_config(
        pod_name="job-1",
        namespace=None,
        server=cluster.url,
        token_file=str(token),
        ca_file=str(cluster.dev.plane.ca),
        interval=0.1,
        log=lambda event, **fields: logged.append((event, fields)),
    )
    assert beat is not None
    lease = f"/apis/coordination.k8s.io/v1/namespaces/{ns.name}/leases/job-1"

    def renewed_with(deadline: float) -> bool:
        try:
            annotations = Kube(cluster.dev).get(lease)["metadata"]["annotations"]
        except ApiError:
            return False
        return bool(annotations.get(f"{ANNOTATION_PREFIX}deadline") == protocol.format_time(deadline))

    try:
        beat.start()
        for second in range(3):
            beat.update(LeaseStatus(deadline=1_800_000_000 + second))
            time.sleep(0.25)
        eventually(lambda: renewed_with(1_800_000_002), 10, "the Lease renewed with the last deadline")
        reported = list(logged)
    finally:
        # The heartbeat thread cannot be stopped: without its token it sends nothing more.
        token.unlink()
    assert [event for event, _ in reported] == ["heartbeat"], reported  # "heartbeat-error" on a refusal
    requests = requests_of(cluster, serviceaccount_user(ns.name, account), offset)
    assert refused(requests) == []
    assert used_rules(requests) == {("coordination.k8s.io", "leases", v) for v in ("get", "create", "patch")}


# --- checkov, the image ----------------------------------------------------------------------------------


@needs_helm
@needs_checkov
def test_checkov_finds_nothing_that_is_not_explained(tmp_path: Path) -> None:
    for values in CI_VALUES:
        (tmp_path / values).write_text(_rendered(values, (), True))
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    result = subprocess.run(
        [
            str(CHECKOV if CHECKOV.exists() else "checkov"),
            "--directory",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "dockerfile",
            "--output",
            "json",
            "--skip-download",  # no network: no guideline links, nothing else lost
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}, result.stderr[-3000:]
    assert [r["results"]["parsing_errors"] for r in reports] == [[], []]
    assert sum(r["summary"]["resource_count"] for r in reports) > len(CI_VALUES) * 5
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}"
        for report in reports
        for check in report["results"]["failed_checks"]
    ]
    assert failed == [], "\n".join(failed)
    skipped = {
        check["check_id"]: check["check_result"]["suppress_comment"]
        for report in reports
        for check in report["results"]["skipped_checks"]
    }
    explained = (CHART / "README.md").read_text()
    assert skipped, "checkov skipped nothing: is it reading the annotations?"
    for check_id, reason in skipped.items():
        assert reason.strip(), f"{check_id} is skipped without a reason"
        assert check_id in explained, f"{check_id} is skipped but not explained in the chart README"
    assert result.returncode == 0, result.stderr[-3000:]


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(
    hadolint() is None and not os.environ.get("CI"), reason="hadolint not installed: pip install -e '.[test]'"
)
def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = subprocess.run(
        [hadolint() or "hadolint", "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_image_runs_fleetdispatch_as_a_numeric_non_root_user() -> None:
    steps = instructions()
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    # The base is a build argument (`make image` passes a debootstrapped Debian); its default is python's.
    assert final[0] == ("FROM", "${BASE_IMAGE}:${BASE_TAG}")
    assert steps[:2] == [("ARG", "BASE_IMAGE=python"), ("ARG", "BASE_TAG=3.11-slim")]
    [user] = [arg for op, arg in final if op == "USER"]
    assert user.split(":")[0] == "65532"
    assert ("ENTRYPOINT", '["fleetdispatch"]') in final
    # The UID the operator gives sessions and supervisors by default is the image's.
    assert OperatorSettings().default_run_as_user == 65532
    assert any(op == "RUN" and "pip install --no-cache-dir ." in arg for op, arg in steps)


def docker_context() -> list[Path]:
    """The files .dockerignore lets into the build context (Docker's rules: the last match decides, and a
    pattern that matches a folder matches everything in it)."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def matches(pattern: str, path: str) -> bool:
        pattern = pattern.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            return any(fnmatch.fnmatchcase(p, pattern[3:]) for p in parts)
        return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)

    included = []
    for path in sorted(ROOT.rglob("*")):
        relative = path.relative_to(ROOT).as_posix()
        if path.is_dir() or relative.startswith((".git/", ".venv/", ".tools/")):
            continue
        keep = True
        for pattern in patterns:
            if matches(pattern.removeprefix("!"), relative):
                keep = pattern.startswith("!")
        if keep:
            included.append(path)
    return included


def test_the_docker_context_holds_what_the_build_reads_and_builds_the_package(tmp_path: Path) -> None:
    context = docker_context()
    relative = {p.relative_to(ROOT).as_posix() for p in context}
    assert {"pyproject.toml", "README.md", "crds/fleetdispatches.yaml"} <= relative
    assert not [p for p in relative if p.startswith(("tests/", "charts/", "bench/", "build/"))]
    assert not [p for p in relative if "__pycache__" in p or p.endswith(".kubeconfig")]
    # Every COPY source of the Dockerfile is in the context.
    for op, arg in instructions():
        if op == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert any(r == source or r.startswith(source.rstrip("/") + "/") for r in relative), source
    # What `pip install .` does in the image, from the context alone (the CRD symlinks resolve there too).
    build = tmp_path / "context"
    for path in context:
        target = build / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            target.symlink_to(os.readlink(path))
        else:
            shutil.copy2(path, target)
    wheel = build_wheel(build, tmp_path)
    assert wheel.name.startswith(f"fleet_dispatch-{fleetdispatch.__version__}-")
