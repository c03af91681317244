"""QuotaPools with the real operator process: shared exhaustion, `maxConcurrent`, a deleted pool.

The pods' runtime is `none` (the node agent leaves them alone): the test plays the kubelet, so sessions end
exactly when and how the test says (see test_operator_restarts.py, whose helpers these tests share).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from fleetdispatch.api.names import API_VERSION, GROUP, VERSION
from operators import Namespace, dispatch_spec, now_rfc3339, terminated
from waiting import eventually


@pytest.fixture(scope="module")
def runtime() -> str:
    return "none"


def _pools(ns: Namespace) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{ns.name}/quotapools"


def _create_pool(ns: Namespace, name: str, **spec: Any) -> None:
    body = {"apiVersion": API_VERSION, "kind": "QuotaPool", "metadata": {"name": name}, "spec": spec}
    ns.kube.create(_pools(ns), body)


def _pool_status(ns: Namespace, name: str) -> dict[str, Any]:
    return dict(ns.kube.get(f"{_pools(ns)}/{name}").get("status") or {})


def _live_pods(ns: Namespace) -> list[str]:
    return [
        p["metadata"]["name"]
        for p in ns.pods()
        if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
        and not p["metadata"].get("deletionTimestamp")
    ]


def _pooled(pool: str, **overrides: Any) -> dict[str, Any]:
    return dispatch_spec(quotaPool=pool, **overrides)


def test_one_members_exhaustion_holds_the_pool_until_the_reset(ns: Namespace) -> None:
    _create_pool(ns, "shared")
    ns.create("first", _pooled("shared"))
    eventually(lambda: _live_pods(ns) == ["first-1"], what="the first pod")
    outcome = {"reason": "QuotaExhausted", "resetAt": now_rfc3339(4), "resumeToken": "s-1"}
    ns.pod_status("first-1", terminated(now_rfc3339(), 75, json.dumps(outcome)))
    ns.wait_phase("first", "Requeued")
    eventually(lambda: _pool_status(ns, "shared").get("exhaustedUntil"), 5, "the pool records the reset")
    assert _pool_status(ns, "shared")["exhaustedBy"] == "first"

    ns.create("second", _pooled("shared"))
    status = ns.wait_phase("second", "Requeued")
    assert status["reason"] == "QuotaPoolExhausted"
    requeued = ns.condition("second", "Requeued")
    assert (
        requeued is not None and requeued["status"] == "True" and requeued["reason"] == "QuotaPoolExhausted"
    )
    time.sleep(1)
    assert "second-1" not in [p["metadata"]["name"] for p in ns.pods()]  # no attempt before the reset
    eventually(lambda: {"first-2", "second-1"} <= set(_live_pods(ns)), 10, "both start after the reset")
    first = ns.pod("first-2")["spec"]["containers"][0]["env"]
    assert {"name": "FLEET_RESUME_TOKEN", "value": "s-1"} in first
    assert ns.status("second")["requeues"] == 0  # the pool's wait spends nothing of its own


def test_max_concurrent_admits_in_creation_order_and_never_runs_more(ns: Namespace) -> None:
    _create_pool(ns, "narrow", maxConcurrent=2)
    for index in range(5):
        ns.create(f"d{index}", _pooled("narrow"))
    eventually(lambda: len(_live_pods(ns)) == 2, what="two admitted")
    time.sleep(1)
    assert sorted(_live_pods(ns)) == ["d0-1", "d1-1"]
    assert ns.status("d4")["reason"] == "QuotaPoolFull"
    eventually(lambda: _pool_status(ns, "narrow").get("running") == 2, 5, "the pool counts")
    assert _pool_status(ns, "narrow")["waiting"] == 3
    finished: list[str] = []
    for _ in range(5):
        live = sorted(_live_pods(ns))
        assert len(live) <= 2, live
        if not live:
            break
        oldest = live[0]
        ns.pod_status(oldest, terminated(now_rfc3339(), 0, reason="Completed"))
        finished.append(oldest)
        eventually(lambda: oldest not in _live_pods(ns), 5, f"{oldest} ended")  # noqa: B023 (called now)
        eventually(lambda: len(_live_pods(ns)) == min(2, 5 - len(finished)), 10, "the next admitted")
    assert finished == ["d0-1", "d1-1", "d2-1", "d3-1", "d4-1"]
    for index in range(5):
        ns.wait_phase(f"d{index}", "Succeeded")


def test_deleting_a_pool_releases_its_dispatches(ns: Namespace) -> None:
    _create_pool(ns, "gone", maxConcurrent=1)
    ns.create("a", _pooled("gone"))
    ns.create("b", _pooled("gone"))
    eventually(lambda: _live_pods(ns) == ["a-1"], what="one admitted")
    ns.wait_phase("b", "Pending")
    ns.kube.delete(f"{_pools(ns)}/gone")
    eventually(lambda: "b-1" in _live_pods(ns), 10, "b released")
    # The pod is created before the status write that says why: wait for the write.
    eventually(lambda: "does not exist" in ns.status("b").get("message", ""), 10, "b's message")


def test_a_reset_too_far_away_is_waited_for_the_longest_wait_only(ns: Namespace) -> None:
    ns.create("far", dispatch_spec())
    eventually(lambda: _live_pods(ns) == ["far-1"])
    outcome = {"reason": "QuotaExhausted", "resetAt": "2099-01-01T00:00:00Z"}
    ns.pod_status("far-1", terminated(now_rfc3339(), 75, json.dumps(outcome)))
    status = ns.wait_phase("far", "Requeued")
    # Within the operator's longest wait (24 h by default), not at the session's far-away reset.
    assert now_rfc3339(23 * 3600) < status["requeueAt"] <= now_rfc3339(24 * 3600 + 60)
    assert "longest quota wait" in status["message"]
