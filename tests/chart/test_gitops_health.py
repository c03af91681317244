"""GitOps health of a FleetDispatch: what Argo CD, Flux and `helm --wait` see in each phase.

Argo CD: the chart's health check (`charts/fleet-dispatch/health/fleetdispatch.lua`) runs in a Lua 5.1
interpreter (lupa, as Argo CD runs gopher-lua) with only the base library, over sample objects and over
objects the real operator wrote through the dev cluster's kube-apiserver, whose pods the node agent leaves
alone (runtime `none`): the test writes their status as a kubelet would, so that every phase is reached on
demand.

Flux and Helm: `kstatus.compute` (tests/kstatus.py: the real sigs.k8s.io/cli-utils kstatus, built with Go
by `make tools`) over the same objects, and over the CRDs the dev cluster serves. kstatus has no Suspended:
a suspended dispatch reads InProgress (its Ready condition is False), so a `wait: true` or `helm --wait` on
it waits until its timeout. That is the honest answer (the dispatch has not done its work, and it has not
failed) and is kept; Argo CD shows Suspended itself. Without the built kstatus the tests that ask it skip
(outside CI).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import kstatus
from argocd import DISPATCH_HEALTH, health
from fleetdispatch.devcluster.stack import BackgroundCluster
from kstatus import needs_kstatus
from kube import Kube
from operators import Namespace, OperatorProcess, running, terminated
from waiting import eventually

ROOT = Path(__file__).resolve().parents[2]

# What each phase looks like to each tool. kstatus has no Suspended: see the module docstring.
EXPECTED = {
    "Pending": ("Progressing", kstatus.IN_PROGRESS),
    "Running": ("Progressing", kstatus.IN_PROGRESS),
    "Backoff": ("Progressing", kstatus.IN_PROGRESS),
    "Requeued": ("Progressing", kstatus.IN_PROGRESS),
    "Suspended": ("Suspended", kstatus.IN_PROGRESS),
    "Succeeded": ("Healthy", kstatus.CURRENT),
    "Failed": ("Degraded", kstatus.FAILED),
}


def argocd_health(obj: dict[str, Any]) -> tuple[str, str]:
    """Run the chart's fleetdispatch.lua over `obj`: (hs.status, hs.message)."""
    return health(DISPATCH_HEALTH, obj)


# --- sample objects --------------------------------------------------------------------------------------


def _condition(type_: str, true: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if true else "False",
        "observedGeneration": 1,
        "lastTransitionTime": "2026-11-24T14:00:00Z",
        "reason": reason,
        "message": message,
    }


def _sample(phase: str | None, message: str = "", generation: int = 1, observed: int = 1) -> dict[str, Any]:
    """A dispatch whose status says `phase`, with the conditions of the README's phase table."""
    obj: dict[str, Any] = {
        "apiVersion": "fleet.dispatch.dev/v1alpha1",
        "kind": "FleetDispatch",
        "metadata": {"name": "sample", "namespace": "default", "generation": generation},
        "spec": {"template": {"spec": {"containers": [{"name": "session", "image": "busybox"}]}}},
    }
    if phase is None:
        return obj
    waiting = phase in ("Pending", "Running", "Backoff", "Requeued")
    obj["status"] = {
        "observedGeneration": observed,
        "phase": phase,
        "attempt": 2,
        "reason": phase,
        "message": message,
        "conditions": [
            _condition("Ready", phase == "Succeeded", phase, message),
            _condition("Reconciling", waiting, phase, message if waiting else ""),
            _condition("Stalled", phase == "Failed", phase, message if phase == "Failed" else ""),
            _condition("Requeued", phase == "Requeued", phase, message if phase == "Requeued" else ""),
            _condition("Suspended", phase == "Suspended", phase, message if phase == "Suspended" else ""),
        ],
    }
    return obj


@needs_kstatus
@pytest.mark.parametrize("phase", list(EXPECTED))
def test_each_phase_maps_to_argocd_health_and_kstatus(phase: str) -> None:
    obj = _sample(phase, message=f"what happened in {phase}")
    health, status = EXPECTED[phase]
    hs_status, hs_message = argocd_health(obj)
    assert hs_status == health
    assert f"what happened in {phase}" in hs_message
    assert kstatus.compute(obj).status == status


def test_progressing_messages_show_the_phase_and_attempt() -> None:
    obj = _sample("Requeued", message="quota exhausted; next attempt at 2026-11-24T18:00:00Z")
    assert argocd_health(obj) == (
        "Progressing",
        "Requeued (attempt 2): quota exhausted; next attempt at 2026-11-24T18:00:00Z",
    )


@needs_kstatus
def test_no_status_yet_is_progressing_for_argocd_but_current_for_kstatus() -> None:
    obj = _sample(None)
    assert argocd_health(obj) == ("Progressing", "waiting for the operator to pick up the dispatch")
    # kstatus's documented corner case: without observedGeneration or conditions it assumes Current. A
    # Flux or Helm wait that polls before the operator's first status write (or with no operator running)
    # passes at once.
    assert kstatus.compute(obj) == kstatus.Result(kstatus.CURRENT, "Resource is current")


@needs_kstatus
def test_an_unobserved_generation_is_progressing_whatever_the_phase() -> None:
    obj = _sample("Succeeded", message="attempt 1 completed", generation=3, observed=2)
    assert argocd_health(obj) == ("Progressing", "waiting for the operator to observe generation 3")
    result = kstatus.compute(obj)
    assert result.status == kstatus.IN_PROGRESS
    assert result.message == "FleetDispatch generation is 3, but latest observed generation is 2"
    # A status without observedGeneration (not the operator's: it writes one every time) proves nothing.
    del obj["status"]["observedGeneration"]
    assert argocd_health(obj) == ("Progressing", "waiting for the operator to observe generation 3")


@needs_kstatus
def test_failed_without_a_status_message_takes_the_stalled_message() -> None:
    obj = _sample("Failed", message="")
    obj["status"]["conditions"][2]["message"] = "spec.timeouts.deadlineSeconds: not an integer"
    assert argocd_health(obj) == ("Degraded", "spec.timeouts.deadlineSeconds: not an integer")
    assert kstatus.compute(obj) == kstatus.Result(
        kstatus.FAILED, "spec.timeouts.deadlineSeconds: not an integer"
    )


def test_an_unknown_phase_is_unknown_to_argocd() -> None:
    obj = _sample("Hibernating")
    assert argocd_health(obj) == ("Unknown", "unknown phase Hibernating")


@needs_kstatus
def test_a_dispatch_being_deleted_is_terminating_for_kstatus() -> None:
    obj = _sample("Running")
    obj["metadata"]["deletionTimestamp"] = "2026-11-24T14:00:00Z"
    assert kstatus.compute(obj).status == kstatus.TERMINATING


@needs_kstatus
def test_kstatus_answers_a_batch_in_order_with_its_own_messages_and_errors() -> None:
    suspended_quietly = _sample("Suspended")
    bad_generation = _sample("Running")
    bad_generation["metadata"]["generation"] = "1"
    results = kstatus.compute_all(
        [_sample("Failed", "exit 3"), suspended_quietly, bad_generation, _sample(None)]
    )
    assert [r.status for r in results] == [
        kstatus.FAILED,
        kstatus.IN_PROGRESS,
        kstatus.UNKNOWN,
        kstatus.CURRENT,
    ]
    assert results[0].message == "exit 3"
    # A Ready condition that is False gives its message, never its reason: an empty one stays empty.
    assert results[1] == kstatus.Result(kstatus.IN_PROGRESS, "")
    # A field of the wrong type is Compute's error, which the pollers of Flux and Helm report as Unknown.
    assert "metadata.generation" in results[2].error


def test_what_a_wait_on_a_campaign_does() -> None:
    done, ok = kstatus.helm_wait_ends([kstatus.CURRENT, kstatus.CURRENT])
    assert (done, ok) == (True, True)
    # A Failed dispatch does not keep Helm waiting: it stops once the rest is Current, and fails.
    assert kstatus.helm_wait_ends([kstatus.CURRENT, kstatus.FAILED]) == (True, False)
    # Running, waiting or suspended ones keep it waiting until its timeout.
    assert kstatus.helm_wait_ends([kstatus.CURRENT, kstatus.IN_PROGRESS])[0] is False
    assert kstatus.aggregate([kstatus.CURRENT, kstatus.IN_PROGRESS, kstatus.FAILED]) == kstatus.FAILED


# --- objects the real operator wrote ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime() -> str:
    return "none"


def _now(offset: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec(max_attempts: int = 3) -> dict[str, Any]:
    return {
        "template": {"spec": {"containers": [{"name": "session", "image": "busybox", "command": ["true"]}]}},
        # Waits long enough that Backoff and Requeued hold while the test looks at them.
        "retry": {
            "maxAttempts": max_attempts,
            "backoff": {"baseSeconds": 600, "maxSeconds": 600, "jitterPercent": 0},
        },
    }


def _drive(ns: Namespace, phase: str) -> dict[str, Any]:
    """A dispatch brought to `phase` by the real operator, as the API server serves it."""
    name = phase.lower()
    ns.create(name, _spec(max_attempts=1 if phase == "Failed" else 3))
    pod = f"{name}-1"
    eventually(lambda: pod in [p["metadata"]["name"] for p in ns.pods()], what=f"pod {pod}")
    started = _now()
    if phase == "Running":
        ns.pod_status(pod, running(started))
    elif phase == "Succeeded":
        ns.pod_status(pod, terminated(started, 0, reason="Completed"))
    elif phase in ("Backoff", "Failed"):
        ns.pod_status(pod, terminated(started, 3))
    elif phase == "Requeued":
        outcome = {"reason": "QuotaExhausted", "resetAt": _now(600)}
        ns.pod_status(pod, terminated(started, 75, json.dumps(outcome)))
    elif phase == "Suspended":
        ns.pod_status(pod, running(started))
        ns.wait_phase(name, "Running")
        ns.patch_spec(name, {"suspend": True})
    ns.wait_phase(name, phase)
    return ns.dispatch(name)


@needs_kstatus
def test_the_crds_the_dev_cluster_serves_are_current_for_kstatus(cluster: BackgroundCluster) -> None:
    # Flux's `wait: true` waits on the CRDs it applies too; kstatus has rules of its own for them (the
    # Established and NamesAccepted conditions), which need the kind that a list's items leave out.
    kube = Kube(cluster.dev)
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    names = [c["metadata"]["name"] for c in kube.items(crds) if c["spec"]["group"] == "fleet.dispatch.dev"]
    assert "fleetdispatches.fleet.dispatch.dev" in names
    results = kstatus.compute_all(kube.get(f"{crds}/{name}") for name in names)
    assert results == [kstatus.Result(kstatus.CURRENT, "CRD is established")] * len(names)


@needs_kstatus
@pytest.mark.parametrize("phase", list(EXPECTED))
def test_real_statuses_map_to_argocd_health_and_kstatus(ns: Namespace, phase: str) -> None:
    obj = _drive(ns, phase)
    health, status = EXPECTED[phase]
    hs_status, hs_message = argocd_health(obj)
    assert (hs_status, phase) == (health, phase)
    result = kstatus.compute(obj)
    assert (result.status, phase) == (status, phase)
    message = obj["status"]["message"]
    assert message and message in hs_message
    if phase == "Failed":
        assert result.message == message  # the Stalled condition's message, for `flux events`
    if phase == "Suspended":
        assert obj["metadata"]["generation"] == obj["status"]["observedGeneration"] == 2
        assert result.message == "spec.suspend is true"  # what a timed-out wait reports


@needs_kstatus
def test_a_spec_change_the_operator_has_not_seen_is_progressing(
    ns: Namespace, operator: OperatorProcess
) -> None:
    obj = _drive(ns, "Running")
    name = obj["metadata"]["name"]
    operator.kill()
    try:
        ns.patch_spec(name, {"suspend": True})
        lagging = ns.dispatch(name)
        assert lagging["status"]["phase"] == "Running"
        assert argocd_health(lagging) == ("Progressing", "waiting for the operator to observe generation 2")
        assert kstatus.compute(lagging).status == kstatus.IN_PROGRESS
    finally:
        operator.start()
    ns.wait_phase(name, "Suspended")
    assert argocd_health(ns.dispatch(name))[0] == "Suspended"
