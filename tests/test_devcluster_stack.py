"""The dev cluster as a whole: `fleetdispatch dev` started and stopped, and a supervised pod run in it.

The supervised pod is built by hand the way design section 2 describes the operator's pod (the supervisor as
a native sidecar, the shared state volume, the session's marker environment), so the supervisor and the
runtime are proven to fit before the operator builds such pods itself.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import yaml

from fleetdispatch.deadline import SupervisorConfig
from fleetdispatch.devcluster.resources import PODS
from fleetdispatch.devcluster.stack import BackgroundCluster

ROOT = Path(__file__).resolve().parent.parent


def _lines(stream: Any) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def _request(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"still false after {timeout} s")


def test_fleetdispatch_dev_serves_runs_pods_and_stops_without_leftovers(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    command = [
        sys.executable,
        "-m",
        "fleetdispatch.cli",
        "dev",
        "--port",
        "0",
        "--kubeconfig",
        str(kubeconfig),
    ]
    dev = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        lines = _lines(dev.stdout)
        seen = []
        while not any("ready" in line for line in seen):
            seen.append(lines.get(timeout=30))
        url = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        assert f"export KUBECONFIG={kubeconfig.resolve()}\n" in seen
        names = {item["name"] for item in _request(f"{url}/apis/fleet.dispatch.dev/v1alpha1")["resources"]}
        assert {"fleetdispatches", "quotapools"} <= names
        pod = yaml.safe_load((ROOT / "examples" / "local" / "hello-pod.yaml").read_text())
        pod["spec"]["containers"][0]["command"] = ["sh", "-c", "echo started; exec sleep 300"]
        _request(f"{url}/api/v1/namespaces/default/pods", "POST", pod)
        pods = f"{url}/api/v1/namespaces/default/pods/hello-pod"
        _eventually(lambda: _request(pods)["status"]["phase"] == "Running")
        children = psutil.Process(dev.pid).children(recursive=True)
        assert len(children) >= 2  # the sidecar's and the main container's processes
        stopping = time.monotonic()
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(15) == 0
        assert time.monotonic() - stopping < 5
        assert not [
            child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        ]
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()


def _supervised_pod(config: SupervisorConfig, session_command: list[str]) -> dict[str, Any]:
    state = {"name": "fleet-state", "mountPath": "/var/run/fleet"}
    return {
        "metadata": {"name": "demo-1"},
        "spec": {
            "restartPolicy": "Never",
            "shareProcessNamespace": True,
            "volumes": [{"name": "fleet-state", "emptyDir": {}}],
            "initContainers": [
                {
                    "name": "fleet-supervisor",
                    "image": "fleet-dispatch",
                    "restartPolicy": "Always",
                    "command": ["fleetdispatch", "supervise", *config.to_args()],
                    "volumeMounts": [state],
                }
            ],
            "containers": [
                {
                    "name": "session",
                    "image": "busybox",
                    "command": session_command,
                    "env": [
                        {"name": "FLEET_DISPATCH", "value": config.dispatch},
                        {"name": "FLEET_ATTEMPT", "value": str(config.attempt)},
                        {"name": "FLEET_STATE_DIR", "value": "/var/run/fleet"},
                    ],
                    "volumeMounts": [state],
                }
            ],
        },
    }


def test_a_supervised_pod_with_a_silent_session_is_stopped_for_idle_output(
    dev_cluster: BackgroundCluster,
) -> None:
    config = SupervisorConfig(
        deadline_seconds=60,
        max_extension_seconds=0,
        idle_output_seconds=2,
        kill_grace_seconds=1,
        poll_seconds=0.2,
        state_dir="/var/run/fleet",
        dispatch="default/demo",
        attempt=1,
    )
    pod = _supervised_pod(config, ["sh", "-c", "echo thinking; exec sleep 300"])
    cluster = dev_cluster
    started = time.monotonic()
    cluster.call(lambda c: c.store.create(PODS, "default", pod))

    def finished() -> dict[str, Any] | None:
        current = cluster.call(lambda c: c.store.get(PODS, "default", "demo-1"))
        done = current["status"]["phase"] in ("Succeeded", "Failed")
        return current if done and current["status"].get("initContainerStatuses") else None

    final = _eventually(finished)
    elapsed = time.monotonic() - started
    [session] = final["status"]["containerStatuses"]
    [supervisor] = final["status"]["initContainerStatuses"]
    log_path = cluster.call(lambda c: c.runtime.log_path("default", "demo-1", "fleet-supervisor"))
    decisions = [json.loads(line) for line in Path(log_path).read_text().splitlines()]
    assert final["status"]["phase"] == "Failed"
    assert session["state"]["terminated"]["exitCode"] == 128 + signal.SIGTERM
    assert supervisor["state"]["terminated"]["exitCode"] == 0, (supervisor, decisions)
    assert 2 <= elapsed < 10
    stops = [decision for decision in decisions if decision.get("reason") == "IdleTimeout"]
    assert stops, decisions
