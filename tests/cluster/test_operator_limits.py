"""The operator at its limits, on the real control plane: a pod the API server refuses (a ResourceQuota of
`pods: 0`, Pod Security `restricted`), a session that never starts (`timeouts.startSeconds`), and
`retry.maxInfrastructureFailures`.

The pods' runtime is `none` (the node agent leaves them alone): the test plays the kubelet.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from fleetdispatch.api.names import API_VERSION, GROUP, VERSION
from operators import Namespace, dispatch_spec, now_rfc3339, terminated
from waiting import eventually


@pytest.fixture(scope="module")
def runtime() -> str:
    return "none"


def _pod_names(ns: Namespace) -> list[str]:
    return [p["metadata"]["name"] for p in ns.pods()]


def _failed_creates(ns: Namespace) -> list[str]:
    return [message for reason, message in ns.events() if reason == "FailedCreate"]


def _refused(ns: Namespace, name: str) -> dict[str, Any] | None:
    status = ns.status(name)
    return status if status.get("reason") == "FailedCreate" else None


def test_a_pod_refused_by_a_resource_quota_waits_and_runs_once_the_quota_is_lifted(ns: Namespace) -> None:
    quotas = f"/api/v1/namespaces/{ns.name}/resourcequotas"
    ns.kube.create(quotas, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})
    ns.create("held", dispatch_spec())

    status = eventually(lambda: _refused(ns, "held"), 30, "the refusal in the status")
    assert (status["phase"], status["attempt"], status["podName"]) == ("Pending", 1, "held-1")
    assert "forbidden" in status["message"] and "quota" in status["message"], status["message"]
    condition = ns.condition("held", "PodCreateFailed")
    assert condition is not None and (condition["status"], condition["reason"]) == ("True", "FailedCreate")
    assert condition["message"] == status["message"]
    events = eventually(lambda: _failed_creates(ns), 10, "a FailedCreate Event")
    first_seen = time.monotonic()
    assert "quota" in events[0]
    assert _pod_names(ns) == []

    # Retried with a growing backoff (1, then 2 s ...), not in a storm: the third refusal comes about 3 s
    # after the first, never at once (waited for, not slept through).
    eventually(lambda: len(_failed_creates(ns)) >= 3, 20, "two retries of the create")
    assert time.monotonic() - first_seen >= 2.0, _failed_creates(ns)
    assert len(_failed_creates(ns)) <= 4, _failed_creates(ns)
    assert ns.status("held")["attempt"] == 1  # the same attempt asked for again, nothing counted

    ns.kube.delete(f"{quotas}/no-pods")
    eventually(lambda: _pod_names(ns) == ["held-1"], 60, "the pod, once the quota is lifted")
    condition = eventually(
        lambda: (c := ns.condition("held", "PodCreateFailed")) and c["status"] == "False" and c, 20, "lifted"
    )
    assert condition["reason"] == "Created"
    started = now_rfc3339()
    ns.pod_status("held-1", terminated(started, 0))
    status = ns.wait_phase("held", "Succeeded")
    assert (status["attempt"], status["failures"], status["infrastructureFailures"]) == (1, 0, 0)


def test_a_pod_refused_by_pod_security_says_why(ns: Namespace) -> None:
    # A valid pod that "restricted" forbids (an added capability): refused with 403, not invalid (422).
    capable = dispatch_spec()
    capable["template"]["spec"]["containers"][0]["securityContext"] = {"capabilities": {"add": ["NET_ADMIN"]}}
    ns.create("loud", capable)
    try:
        status = eventually(lambda: _refused(ns, "loud"), 30, "the refusal in the status")
    except AssertionError:
        raise AssertionError(f"not refused: {ns.status('loud')}") from None
    assert 'violates PodSecurity "restricted' in status["message"], status["message"]
    assert any("PodSecurity" in message for message in _failed_creates(ns))
    assert status["phase"] == "Pending" and _pod_names(ns) == []

    # The namespace's policy relaxed: the same attempt's pod is admitted.
    labels = {f"pod-security.kubernetes.io/{mode}": "privileged" for mode in ("enforce", "warn")}
    ns.kube.patch(f"/api/v1/namespaces/{ns.name}", {"metadata": {"labels": labels}})
    eventually(lambda: _pod_names(ns) == ["loud-1"], 60, "the pod, once Pod Security allows it")


def test_a_session_that_never_starts_times_out_and_the_limit_fails_the_dispatch(ns: Namespace) -> None:
    spec = dispatch_spec(timeouts={"startSeconds": 2})
    spec["retry"]["maxInfrastructureFailures"] = 1
    ns.create("stuck", spec)
    eventually(lambda: "stuck-1" in _pod_names(ns), 20, "the first pod")
    waiting = {"state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling "busybox"'}}}
    ns.pod_status("stuck-1", {"containerStatuses": [{"name": "session", **waiting}]})

    def timed_out() -> dict[str, Any] | None:
        status = ns.status("stuck")
        return status if status.get("infrastructureFailures") == 1 else None

    status = eventually(timed_out, 20, "the first start timeout")
    record = status["attempts"][0]
    assert (record["outcome"], record["failureClass"]) == ("StartTimeout", "Infrastructure")
    assert "ImagePullBackOff" in record["message"] and "timeouts.startSeconds" in record["message"]
    eventually(lambda: "stuck-1" not in _pod_names(ns), 20, "the timed-out pod deleted")

    # The second attempt never starts either: past maxInfrastructureFailures, the dispatch fails.
    status = ns.wait_phase("stuck", "Failed", 30)
    assert (status["reason"], status["infrastructureFailures"], status["attempt"]) == (
        "InfrastructureLimitExceeded",
        2,
        2,
    )
    assert [a["outcome"] for a in status["attempts"]] == ["StartTimeout", "StartTimeout"]
    eventually(lambda: _pod_names(ns) == [], 20, "every pod deleted")


def test_a_start_timeout_frees_the_quota_pool_slot(ns: Namespace) -> None:
    pool = {"apiVersion": API_VERSION, "kind": "QuotaPool", "metadata": {"name": "one"}}
    ns.kube.create(
        f"/apis/{GROUP}/{VERSION}/namespaces/{ns.name}/quotapools", {**pool, "spec": {"maxConcurrent": 1}}
    )
    stuck = dispatch_spec(quotaPool="one", timeouts={"startSeconds": 3})
    stuck["retry"]["maxInfrastructureFailures"] = 0
    ns.create("stuck", stuck)
    eventually(lambda: "stuck-1" in _pod_names(ns), 20, "the first member's pod")
    ns.create("next", dispatch_spec(quotaPool="one"))
    assert ns.wait_phase("next", "Pending")["reason"] == "QuotaPoolFull"

    status = ns.wait_phase("stuck", "Failed", 30)
    assert (status["reason"], status["attempts"][0]["outcome"]) == (
        "InfrastructureLimitExceeded",
        "StartTimeout",
    )
    eventually(lambda: "next-1" in _pod_names(ns), 20, "the next member admitted to the freed slot")
