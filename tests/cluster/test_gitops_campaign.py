"""A campaign kept in Git and applied the way a GitOps tool applies it: `kubectl apply -k`, again and again.

The real operator runs against the dev cluster (a real kube-apiserver; the node agent runs the sessions as
processes: tests/gitops/campaign holds a QuotaPool, `quick`, which completes at once, and `long`, which runs
until stopped). Each test copies the campaign into a Git checkout of its own (`tmp_path`), applies it with
the admin's kubeconfig into a namespace of its own, and checks what Argo CD and Flux rely on:

- re-applying the same manifests is a no-op: nothing is written, no pod is started again;
- the operator never writes what Git owns (spec, labels, annotations): no drift once a dispatch has run;
- removing a dispatch from Git (`kubectl apply --prune`) deletes it, and its running pod with it;
- a changed template is refused by the CRD with the server's message, and the two ways to re-run work:
  a new name, or deleting and creating the dispatch again (Argo CD `Force=true,Replace=true`, Flux
  `kustomize.toolkit.fluxcd.io/force: enabled`, `kubectl replace --force`), while `Replace=true` alone is
  refused like an apply.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetdispatch.devcluster.stack import BackgroundCluster
from kubectl import Kubectl, needs_kubectl
from operators import Namespace
from waiting import eventually

pytestmark = needs_kubectl

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGN = ROOT / "tests" / "gitops" / "campaign"
SELECTOR = "fleet.dispatch.dev/campaign=gitops-test"
PRUNE = (
    "--prune",
    "-l",
    SELECTOR,
    "--prune-allowlist=fleet.dispatch.dev/v1alpha1/FleetDispatch",
    "--prune-allowlist=fleet.dispatch.dev/v1alpha1/QuotaPool",
)
# The API server's 422 as kubectl prints it (since Kubernetes 1.35 an object's value is left out).
IMMUTABLE = (
    'The FleetDispatch "quick" is invalid: spec.template: Invalid value: template is immutable; '
    "create a new FleetDispatch (a new name) to run a different session"
)
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


@dataclass
class Campaign:
    """The campaign applied from a Git checkout into a namespace of its own."""

    ns: Namespace
    kubectl: Kubectl
    git: Path

    def apply(self, *args: str, check: bool = True) -> Any:
        return self.kubectl.run("apply", "-k", str(self.git), *args, check=check)

    def manifests(self) -> list[dict[str, Any]]:
        """What Git says: the kustomization as a GitOps tool renders it."""
        rendered = self.kubectl.run("kustomize", str(self.git)).stdout
        return [doc for doc in yaml.safe_load_all(rendered) if doc]

    def live(self) -> dict[str, dict[str, Any]]:
        items = json.loads(self.kubectl.run("get", "fleetdispatches,quotapools", "-o", "json").stdout)[
            "items"
        ]
        return {f"{o['kind']}/{o['metadata']['name']}": o for o in items}

    def pool_counts(self) -> tuple[int, int, int]:
        status = self.live()["QuotaPool/gitops-quota"].get("status") or {}
        return (status.get("running", 0), status.get("waiting", 0), status.get("requeued", 0))

    def pods(self) -> dict[str, str]:
        return {p["metadata"]["name"]: p["metadata"]["uid"] for p in self.ns.pods()}

    def log(self, pod: str) -> str:
        return self.ns.logs(pod, "session")

    def commit(self, path: str, old: str, new: str) -> None:
        """An edit to a file of the checkout, as a commit to the Git repository would make it."""
        file = self.git / path
        text = file.read_text()
        assert old in text, (path, old)
        file.write_text(text.replace(old, new))


@pytest.fixture
def campaign(cluster: BackgroundCluster, ns: Namespace, tmp_path: Path) -> Campaign:
    git = tmp_path / "git"
    shutil.copytree(CAMPAIGN, git)
    kubectl = Kubectl(cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace=ns.name))
    applied = Campaign(ns, kubectl, git)
    applied.apply()
    ns.wait_phase("quick", "Succeeded")
    ns.wait_phase("long", "Running")
    # The pool's counts are written (debounced, within a second) once they change: then all is quiet.
    eventually(lambda: applied.pool_counts() == (1, 0, 0), 10, "the pool counts long as running")
    return applied


def _within(wanted: Any, live: Any) -> bool:
    """Whether every field of `wanted` is in `live` with the same value (defaults may add others)."""
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(k in live and _within(v, live[k]) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(live, list) and len(wanted) == len(live) and all(map(_within, wanted, live))
    return bool(wanted == live)


def _settled(campaign: Campaign) -> dict[str, Any]:
    """The campaign's objects (resourceVersion, generation) and pods once two looks agree."""

    def look() -> dict[str, Any]:
        objects = {
            k: (o["metadata"]["resourceVersion"], o["metadata"]["generation"])
            for k, o in campaign.live().items()
        }
        return {"objects": objects, "pods": campaign.pods()}

    previous: list[dict[str, Any]] = [look()]

    def stable() -> dict[str, Any] | None:
        time.sleep(0.3)
        now = look()
        same = now == previous[0]
        previous[0] = now
        return now if same else None

    return dict(eventually(stable, 10, "the campaign settles"))


def test_the_pool_is_applied_before_the_dispatches_that_name_it(campaign: Campaign) -> None:
    def told() -> list[tuple[str, str]] | None:
        events = campaign.ns.events()
        return events if any(reason in ("Started", "Succeeded") for reason, _ in events) else None

    events = eventually(told, 10, "the dispatches' Events")
    assert not [message for reason, message in events if reason == "QuotaPoolMissing"], events


def test_reapplying_the_same_manifests_changes_nothing_and_starts_nothing(campaign: Campaign) -> None:
    before = _settled(campaign)
    events = campaign.ns.events()
    result = campaign.apply()
    assert sorted(result.stdout.split()) == sorted(
        [
            "fleetdispatch.fleet.dispatch.dev/long",
            "fleetdispatch.fleet.dispatch.dev/quick",
            "quotapool.fleet.dispatch.dev/gitops-quota",
            *["unchanged"] * 3,
        ]
    )
    time.sleep(0.5)  # a write or a new pod caused by the apply would show up now
    assert _settled(campaign) == before
    assert campaign.ns.events() == events
    assert campaign.ns.status("quick")["attempt"] == 1


def test_the_operator_writes_nothing_git_owns(campaign: Campaign) -> None:
    live = campaign.live()
    for manifest in campaign.manifests():
        obj = live[f"{manifest['kind']}/{manifest['metadata']['name']}"]
        metadata = obj["metadata"]
        assert metadata["generation"] == 1, metadata  # nobody wrote the spec since it was created
        assert metadata.get("labels") == manifest["metadata"]["labels"]
        annotations = {k: v for k, v in metadata["annotations"].items() if k != LAST_APPLIED}
        assert annotations == manifest["metadata"]["annotations"]
        assert not metadata.get("finalizers") and not metadata.get("ownerReferences"), metadata
        # The API server adds the CRD's defaults to the spec; every field Git sets is as Git sets it.
        assert _within(manifest["spec"], obj["spec"]), (manifest["spec"], obj["spec"])
    # The API server's audit log: the operator writes only the status of what Git owns.
    writes = campaign.ns.operator_writes()
    owned = [w for w in writes if "/fleetdispatches/" in w or "/quotapools/" in w]
    assert owned and all(w.startswith("PATCH ") and w.endswith("/status") for w in owned), writes
    # What Argo CD's and Flux's drift detection amount to: a server-side dry-run of the apply changes nothing.
    diff = campaign.kubectl.run("diff", "-k", str(campaign.git), check=False)
    assert (diff.returncode, diff.stdout) == (0, ""), diff.stdout + diff.stderr


def test_removing_a_dispatch_from_git_prunes_it_and_stops_its_pod(campaign: Campaign) -> None:
    quick = campaign.live()["FleetDispatch/quick"]["metadata"]["resourceVersion"]
    assert "long-1" in campaign.pods()
    (campaign.git / "long.yaml").unlink()
    campaign.commit("kustomization.yaml", "  - long.yaml\n", "")
    result = campaign.apply(*PRUNE)
    assert "fleetdispatch.fleet.dispatch.dev/long pruned" in result.stdout
    eventually(lambda: list(campaign.pods()) == ["quick-1"], 30, "long's pod garbage-collected")
    assert "FleetDispatch/long" not in campaign.live()
    assert campaign.live()["FleetDispatch/quick"]["metadata"]["resourceVersion"] == quick


def test_a_changed_template_is_refused_and_runs_under_a_new_name(campaign: Campaign) -> None:
    before = campaign.live()["FleetDispatch/quick"]
    campaign.commit("quick.yaml", 'echo \\"quick: attempt', 'echo \\"quick, second take: attempt')
    refused = campaign.apply(check=False)
    assert refused.returncode != 0
    assert IMMUTABLE in refused.stderr
    # A drift check (`kubectl diff`, a server-side dry-run) shows the same refusal before anything is applied.
    diff = campaign.kubectl.run("diff", "-k", str(campaign.git), check=False)
    assert diff.returncode > 1 and IMMUTABLE in diff.stderr, diff.stdout + diff.stderr
    # Argo CD's Replace=true is `kubectl replace`: an update like any other, refused the same way.
    quick = [m for m in campaign.manifests() if m["metadata"]["name"] == "quick"]
    replaced = campaign.kubectl.run("replace", "-f", "-", stdin=json.dumps(quick[0]), check=False)
    assert replaced.returncode != 0 and IMMUTABLE in replaced.stderr
    after = campaign.live()["FleetDispatch/quick"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert campaign.pods()["quick-1"]

    # The re-run: the same file under a new name. Pruning removes the old dispatch and its finished pod.
    campaign.commit("quick.yaml", "name: quick\n", "name: quick-2\n")
    campaign.apply(*PRUNE)
    campaign.ns.wait_phase("quick-2", "Succeeded")
    eventually(lambda: sorted(campaign.pods()) == ["long-1", "quick-2-1"], 30, "quick pruned")
    assert campaign.log("quick-2-1").strip() == "quick, second take: attempt 1"


def test_a_changed_template_reruns_when_the_tool_deletes_and_creates_the_dispatch(campaign: Campaign) -> None:
    long = campaign.pods()["long-1"]
    old = campaign.live()["FleetDispatch/quick"]["metadata"]["uid"]
    campaign.commit("quick.yaml", 'echo \\"quick: attempt', 'echo \\"quick, second take: attempt')
    quick = [m for m in campaign.manifests() if m["metadata"]["name"] == "quick"]
    # What Argo CD does for `argocd.argoproj.io/sync-options: Force=true,Replace=true`; Flux's force (and
    # `kubectl apply --force`) delete and create the same way when an apply is refused as invalid.
    result = campaign.kubectl.run("replace", "--force", "-f", "-", stdin=json.dumps(quick[0]))
    assert "fleetdispatch.fleet.dispatch.dev/quick replaced" in result.stdout
    assert campaign.live()["FleetDispatch/quick"]["metadata"]["uid"] != old
    status = campaign.ns.wait_phase("quick", "Succeeded")
    assert [a["attempt"] for a in status["attempts"]] == [1]
    assert campaign.log("quick-1").strip() == "quick, second take: attempt 1"
    assert campaign.pods()["long-1"] == long  # the rest of the campaign is left alone


def test_a_recreated_dispatch_does_not_adopt_its_predecessors_pods(campaign: Campaign) -> None:
    # The old pod outlives its dispatch: the garbage collector orphans it (removes its owner reference).
    campaign.kubectl.run("delete", "fleetdispatch", "quick", "--cascade=orphan")
    assert not campaign.ns.pod("quick-1")["metadata"].get("ownerReferences")
    campaign.commit("quick.yaml", 'echo \\"quick: attempt', 'echo \\"quick, second take: attempt')
    campaign.apply()
    time.sleep(0.5)
    assert campaign.ns.status("quick").get("phase") != "Succeeded"  # the finished orphan is not its attempt
    campaign.ns.delete_pod("quick-1")  # someone cleans the orphan up
    status = campaign.ns.wait_phase("quick", "Succeeded")
    assert "second take" in campaign.log("quick-1"), f"Succeeded without running its session: {status}"
