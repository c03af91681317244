"""FleetCampaign on the real control plane, with the real operator: many dispatches from one manifest.

Each campaign is also judged as Argo CD (`health/fleetcampaign.lua`), kstatus (the real library: Flux's
`wait`, `helm --wait`) and the README's Flux `healthCheckExprs` would judge it, on the objects the operator
wrote. Dispatches run on the node agent's `instant` runtime (a bound pod completes at once with the exit
code of its template's annotation) or `none` (the pod is left Pending: a dispatch that stays live). The
operator writes a campaign's status at most once per 0.5 s here (`--campaign-status-interval-seconds`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import flux
import kstatus
from argocd import CAMPAIGN_HEALTH, health
from fleetdispatch.api.names import API_VERSION, CAMPAIGN_LABEL, GROUP, ITEM_LABEL, VERSION
from fleetdispatch.devcluster.nodeagent import EXIT_CODE_ANNOTATION, RUNTIME_ANNOTATION
from fleetdispatch.devcluster.stack import BackgroundCluster
from kube import ApiError
from kubectl import Kubectl, needs_kubectl
from operators import Namespace, dispatch_spec
from waiting import eventually

CAMPAIGNS = f"/apis/{GROUP}/{VERSION}"


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return ("--campaign-status-interval-seconds=0.5",)


@pytest.fixture(scope="module")
def runtime() -> str:
    return "instant"


@pytest.fixture
def kubectl(cluster: BackgroundCluster, ns: Namespace, tmp_path: Path) -> Kubectl:
    return Kubectl(cluster.write_kubeconfig(tmp_path / "kubeconfig", ns.name))


def template(runtime: str = "instant", exit_code: int = 0) -> dict[str, Any]:
    spec = dispatch_spec(retry={"maxAttempts": 1})
    spec["template"]["metadata"] = {
        "annotations": {RUNTIME_ANNOTATION: runtime, EXIT_CODE_ANNOTATION: str(exit_code)}
    }
    return {"metadata": {"labels": {"team": "docs"}}, "spec": spec}


FLUX = flux.expressions("FleetCampaign")


def create_campaign(ns: Namespace, name: str, **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": API_VERSION, "kind": "FleetCampaign", "metadata": {"name": name}, "spec": spec}
    return ns.kube.create(f"{CAMPAIGNS}/namespaces/{ns.name}/fleetcampaigns", body)


def campaign(ns: Namespace, name: str) -> dict[str, Any]:
    return ns.kube.get(f"{CAMPAIGNS}/namespaces/{ns.name}/fleetcampaigns/{name}")


def patch_campaign(ns: Namespace, name: str, spec: dict[str, Any]) -> None:
    ns.kube.patch(f"{CAMPAIGNS}/namespaces/{ns.name}/fleetcampaigns/{name}", {"spec": spec})


def dispatches(ns: Namespace) -> dict[str, dict[str, Any]]:
    listed = ns.kube.get(ns.path)["items"]
    return {d["metadata"]["name"]: d for d in listed}


def in_phase(ns: Namespace, name: str, phase: str) -> dict[str, Any] | None:
    body = campaign(ns, name)
    return body if (body.get("status") or {}).get("phase") == phase else None


def conditions(body: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in (body.get("status") or {}).get("conditions", [])}


def conditions_messages(body: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["message"] for c in (body.get("status") or {}).get("conditions", [])}


def items(*names: str) -> list[dict[str, Any]]:
    return [{"name": name, "env": {"TOPIC": f"topic {name}"}} for name in names]


@needs_kubectl
@kstatus.needs_kstatus
def test_a_campaign_runs_every_item_within_its_parallelism_and_says_so(
    ns: Namespace, kubectl: Kubectl
) -> None:
    created = create_campaign(ns, "docs", template=template(), items=items(*"abcdefgh"), parallelism=3)
    most_live = 0

    def finished() -> dict[str, Any] | None:
        nonlocal most_live
        owned = dispatches(ns)
        live = [
            d for d in owned.values() if (d.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]
        most_live = max(most_live, len(live))
        body = campaign(ns, "docs")
        return body if (body.get("status") or {}).get("phase") == "Succeeded" else None

    body = eventually(finished, 90, "the campaign Succeeded", interval=0.05)
    assert 1 <= most_live <= 3, most_live
    status = body["status"]
    assert status["counts"] == {
        "total": 8, "pending": 0, "running": 0, "backoff": 0, "requeued": 0, "suspended": 0,
        "succeeded": 8, "failed": 0,
    }  # fmt: skip
    assert status["observedGeneration"] == body["metadata"]["generation"]
    assert status["startTime"] <= status["completionTime"]
    assert conditions(body) == {
        "Ready": ("True", "Succeeded"),
        "Reconciling": ("False", "Succeeded"),
        "Stalled": ("False", "Succeeded"),
    }
    # One dispatch per item, named after it, labelled and owned, with the item's variables.
    owned = dispatches(ns)
    assert sorted(owned) == [f"docs-{item}" for item in "abcdefgh"]
    one = owned["docs-c"]
    assert one["metadata"]["labels"] == {"team": "docs", CAMPAIGN_LABEL: "docs", ITEM_LABEL: "c"}
    [owner] = one["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "FleetCampaign",
        created["metadata"]["uid"],
        True,
    )
    [session] = one["spec"]["template"]["spec"]["containers"]
    assert session["env"] == [{"name": "FLEET_ITEM", "value": "c"}, {"name": "TOPIC", "value": "topic c"}]

    table = kubectl.run("get", "fc").stdout
    header, row = table.splitlines()
    assert header.split() == ["NAME", "SUCCEEDED", "FAILED", "RUNNING", "TOTAL", "READY", "AGE"]
    assert row.split()[:6] == ["docs", "8", "0", "0", "8", "True"]
    kubectl.run("wait", "--for=condition=Ready", "fc/docs", "--timeout=5s")
    assert health(CAMPAIGN_HEALTH, body) == ("Healthy", status["message"])
    assert flux.health(FLUX, body) == "Current"
    assert kstatus.compute(body).status == kstatus.CURRENT


@kstatus.needs_kstatus
def test_past_max_failed_the_campaign_fails_and_starts_no_more(ns: Namespace) -> None:
    create_campaign(
        ns, "strict", template=template(exit_code=1), items=items("a", "b", "c"), parallelism=1, maxFailed=0
    )
    body = eventually(lambda: in_phase(ns, "strict", "Failed"), 60, "the campaign Failed")
    status = body["status"]
    assert (status["counts"]["failed"], status["counts"]["pending"], status["counts"]["total"]) == (1, 2, 3)
    assert conditions(body)["Stalled"] == ("True", "MaxFailedExceeded")
    assert conditions(body)["Ready"] == ("False", "MaxFailedExceeded")
    assert "more than maxFailed" in status["message"]
    assert health(CAMPAIGN_HEALTH, body) == ("Degraded", conditions_messages(body)["Stalled"])
    assert flux.health(FLUX, body) == "Failed"
    assert kstatus.compute(body).status == kstatus.FAILED
    assert status.get("completionTime")  # nothing of it runs any more
    time.sleep(1.5)  # three status intervals: no second dispatch is started
    assert sorted(dispatches(ns)) == ["strict-a"]
    events = ns.kube.items(f"/api/v1/namespaces/{ns.name}/events")
    told = [(e["type"], e["reason"]) for e in events if e["involvedObject"]["kind"] == "FleetCampaign"]
    assert told == [("Warning", "MaxFailedExceeded")]


def test_hand_written_dispatches_with_the_label_count_and_are_left_alone(ns: Namespace) -> None:
    create_campaign(ns, "view", template=template(), items=[], maxFailed="50%")
    failing = dispatch_spec(retry={"maxAttempts": 1})
    failing["template"]["metadata"] = {"annotations": {EXIT_CODE_ANNOTATION: "1"}}
    for name, spec in (("by-hand-1", dispatch_spec()), ("by-hand-2", failing)):
        body = {
            "apiVersion": API_VERSION,
            "kind": "FleetDispatch",
            "metadata": {"name": name, "labels": {CAMPAIGN_LABEL: "view"}},
            "spec": spec,
        }
        spec["template"].setdefault("metadata", {}).setdefault("annotations", {})[RUNTIME_ANNOTATION] = (
            "instant"
        )
        ns.kube.create(ns.path, body)

    def counted() -> dict[str, Any] | None:
        body = campaign(ns, "view")
        counts = (body.get("status") or {}).get("counts") or {}
        return body if (counts.get("succeeded"), counts.get("failed")) == (1, 1) else None

    body = eventually(counted, 60, "both dispatches counted")
    assert body["status"]["phase"] == "Succeeded"  # 1 of 2 failed: within 50 %
    assert health(CAMPAIGN_HEALTH, body)[0] == "Healthy"  # one failed dispatch does not degrade it
    assert conditions(body)["Ready"] == ("True", "Succeeded")
    assert sorted(dispatches(ns)) == ["by-hand-1", "by-hand-2"]
    assert all("ownerReferences" not in d["metadata"] for d in dispatches(ns).values())


@kstatus.needs_kstatus
def test_removed_items_go_unless_finished_and_suspend_reaches_every_live_dispatch(ns: Namespace) -> None:
    mixed = template()
    create_campaign(ns, "mixed", template=mixed, items=items("done"))
    eventually(lambda: (campaign(ns, "mixed").get("status") or {}).get("phase") == "Succeeded", 60, "done")
    # New items whose pods are left Pending by the node (runtime none): live dispatches.
    patch_campaign(ns, "mixed", {"template": template(runtime="none"), "items": items("done", "x", "y")})
    eventually(lambda: sorted(dispatches(ns)) == ["mixed-done", "mixed-x", "mixed-y"], 30, "x and y created")
    reopened = campaign(ns, "mixed")
    running = eventually(lambda: in_phase(ns, "mixed", "Running"), 10, "reopened")
    assert health(CAMPAIGN_HEALTH, running)[0] == "Progressing"
    assert flux.health(FLUX, running) == "InProgress"
    assert kstatus.compute(running).status == kstatus.IN_PROGRESS
    # The spec changed, not yet observed: in progress whatever the old status says.
    stale = {**running, "metadata": {**running["metadata"], "generation": 99}}
    assert (health(CAMPAIGN_HEALTH, stale)[0], flux.health(FLUX, stale)) == ("Progressing", "InProgress")
    assert kstatus.compute(stale).status == kstatus.IN_PROGRESS
    assert reopened["metadata"]["generation"] == 2

    patch_campaign(ns, "mixed", {"suspend": True})

    def suspended() -> bool:
        found = dispatches(ns)
        return all(found[n]["spec"].get("suspend") is True for n in ("mixed-x", "mixed-y"))

    eventually(suspended, 30, "x and y suspended")
    assert dispatches(ns)["mixed-done"]["spec"].get("suspend") is not True  # finished: left as it was
    body = eventually(lambda: in_phase(ns, "mixed", "Suspended"), 30, "the campaign Suspended")
    assert body["status"]["counts"]["suspended"] + body["status"]["counts"]["pending"] == 2
    assert health(CAMPAIGN_HEALTH, body)[0] == "Suspended"
    assert flux.health(FLUX, body) == "InProgress"  # not done, not failed
    assert kstatus.compute(body).status == kstatus.IN_PROGRESS

    # Removing every item: the unfinished x and y go, the finished one stays.
    patch_campaign(ns, "mixed", {"items": items("done"), "suspend": False})
    eventually(lambda: sorted(dispatches(ns)) == ["mixed-done"], 30, "x and y deleted")
    eventually(
        lambda: (campaign(ns, "mixed").get("status") or {}).get("phase") == "Succeeded", 30, "done again"
    )


@needs_kubectl
def test_the_api_server_refuses_a_campaign_whose_dispatch_names_would_be_too_long(
    ns: Namespace, kubectl: Kubectl
) -> None:
    with pytest.raises(ApiError) as refused:
        create_campaign(ns, "a" * 50, template=template(), items=[{"name": "b" * 20}])
    assert "at most 63 characters" in str(refused.value)
    with pytest.raises(ApiError) as refused:
        create_campaign(ns, "dup", template=template(), items=[{"name": "a"}, {"name": "a"}])
    assert "Duplicate value" in str(refused.value)
    with pytest.raises(ApiError) as refused:
        create_campaign(ns, "bad", template=template(), items=[{"name": "a", "env": {"FLEET_ITEM": "x"}}])
    assert "FLEET_" in str(refused.value)
    explained = kubectl.run("explain", "fleetcampaign.spec.maxFailed").stdout
    assert "percentage" in explained
