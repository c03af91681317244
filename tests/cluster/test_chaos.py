"""A small seeded run of the chaos bench (bench/chaos.py) in the suite: 30 dispatches (quick successes,
retried logic failures, quota requeues, one real session) on a control plane of its own, the operator
SIGKILLed three times (one right after a pod create) and restarted, through the HTTP fault proxy (5xx
before and after the write commits, 409, 429, latency, cut watches), and one etcd restart (KILLed: a crash,
which costs about a second; a kube-apiserver restart costs 10 to 20 s here, so only the bench makes one).

Asserts the bench's zero figures: nothing lost, no duplicate pod, no attempt past the limits, no pod created
after a terminal status, every final phase and counter as the dispatch's scripted outcomes imply, no
request storm; and that the faults happened (each kind of HTTP fault injected, the restart done), so that
a quiet proxy cannot pass for a survived one. The bench is loaded from its file (bench/ is not a package);
nothing of it is replaced.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from fleetdispatch.devcluster.controlplane import ControlPlane
from fleetdispatch.devcluster.nodeagent import RUNTIME_ANNOTATION
from fleetdispatch.devcluster.stack import BackgroundCluster
from waiting import eventually

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos_bench", BENCH / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_kills_http_faults_and_an_etcd_restart_lose_nothing_and_run_nothing_twice(tmp_path: Path) -> None:
    chaos = _chaos()
    figures, rates = chaos.run(
        tmp_path,
        count=30,
        kills=3,
        seed=7,
        limit=60,
        proxy="http",
        restarts=("etcd",),
        restart_grace=0,
        # higher shares than the bench's, and shorter watches, so that every kind is injected in a run this
        # short (about 400 requests, 150 of them status patches) whatever the order of its requests
        http_faults=chaos.HttpFaults(
            before_5xx=0.04, after_5xx=0.06, conflict=0.08, throttle=0.04, watch_cut_every=3.0
        ),
    )
    print(rates)
    assert rates["kills"] == 3
    assert set(rates["restarts"]) == {"etcd"}
    injected = rates["injected"]
    for kind in ("before_5xx", "after_5xx", "conflict", "throttle", "cut_watch"):
        assert injected.get(kind, 0) > 0, (kind, injected)
    assert figures.lost == []
    assert figures.duplicate == []
    assert figures.beyond == []
    assert figures.after_terminal == []
    assert figures.wrong == []
    assert not rates["storm"], rates
    # 30 dispatches: 9 successes and one real session (1 pod each), 10 logic failures and 10 quota stops
    # (3 pods each)
    assert rates["pods"] == chaos.expected_pods(30) == 70


def _instant_pod(plane: ControlPlane, name: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": {RUNTIME_ANNOTATION: "instant"}},
        "spec": {"containers": [{"name": "main", "image": "busybox"}], "restartPolicy": "Never"},
    }
    status, answer = plane.request("POST", "/api/v1/namespaces/default/pods", pod)
    assert status == 201, answer


def _phase(plane: ControlPlane, name: str) -> Any:
    status, pod = plane.request("GET", f"/api/v1/namespaces/default/pods/{name}")
    return (pod.get("status") or {}).get("phase") if status == 200 else None


def test_a_kube_apiserver_and_an_etcd_restart_leave_the_dev_cluster_as_it_was(tmp_path: Path) -> None:
    """The bench's restarts: the same URL, the objects kept, no component reported failed, and the node
    agent (whose watch the restart ends mid-stream) still runs the pods created after them."""
    with BackgroundCluster(runtime="instant", workdir=tmp_path / "cluster") as cluster:
        plane = cluster.dev.plane
        url = plane.url
        eventually(
            lambda: plane.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            60,
            "the default ServiceAccount",
        )
        _instant_pod(plane, "before")
        eventually(lambda: _phase(plane, "before") == "Succeeded", 60, "the pod before the restarts")
        for component in ("kube-apiserver", "etcd"):
            down = plane.restart_component(component, grace=0)
            assert down > 0
            assert cluster.dev.failed() is None, component
        assert plane.url == url
        assert _phase(plane, "before") == "Succeeded"  # etcd kept its data
        _instant_pod(plane, "after")
        eventually(lambda: _phase(plane, "after") == "Succeeded", 60, "the pod after the restarts")
        assert cluster.dev.failed() is None
