"""kopf and the `kubernetes` client against the dev cluster: a real `kopf run` process over real HTTP.

The operator is tests/devcluster/smoke_operator.py: create handler (an owned pod created with the
`kubernetes` client), a timer, and a delete handler, which makes kopf manage a finalizer. This is what
failed on plain kmock (see the [devcluster] note), so it guards the emulator for the real operator.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from fleetdispatch.devcluster.resources import PODS
from fleetdispatch.devcluster.stack import BackgroundCluster

HERE = Path(__file__).resolve().parent
GROUP, VERSION, PLURAL = "fleet.dispatch.dev", "v1alpha1", "fleetdispatches"


def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, kubernetes.client.ApiException):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {check}")
        time.sleep(0.1)


@pytest.fixture
def operator_cluster(tmp_path: Path) -> Iterator[tuple[BackgroundCluster, kubernetes.client.ApiClient]]:
    with BackgroundCluster(runtime="instant") as cluster:
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        command = [
            sys.executable,
            "-m",
            "kopf",
            "run",
            "--standalone",
            "-A",
            str(HERE / "devcluster" / "smoke_operator.py"),
        ]
        log = (tmp_path / "kopf.log").open("w")
        kopf_process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield cluster, kubernetes.config.new_client_from_config(str(kubeconfig))
        finally:
            kopf_process.send_signal(signal.SIGTERM)
            try:
                kopf_process.wait(15)
            except subprocess.TimeoutExpired:
                kopf_process.kill()
                kopf_process.wait()
            log.close()


def test_kopf_handles_create_timer_finalizer_and_delete(
    operator_cluster: tuple[BackgroundCluster, kubernetes.client.ApiClient],
) -> None:
    cluster, client = operator_cluster
    custom = kubernetes.client.CustomObjectsApi(client)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FleetDispatch",
        "metadata": {"name": "smoke"},
        "spec": {"template": {"spec": {"containers": [{"name": "session", "image": "busybox"}]}}},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)

    def dispatch() -> dict[str, Any]:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "smoke")
        return obj

    eventually(lambda: dispatch().get("status", {}).get("attempt") == 1)  # create handler, then the timer
    assert dispatch()["status"]["podName"] == "smoke-1"
    assert dispatch()["metadata"]["finalizers"]
    pods = kubernetes.client.CoreV1Api(client).list_namespaced_pod("default").items
    assert [pod.metadata.owner_references[0].name for pod in pods] == ["smoke"]
    events = kubernetes.client.CoreV1Api(client).list_namespaced_event("default").items
    assert "PodCreated" in {event.reason for event in events}

    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "smoke")

    def gone() -> bool:
        try:
            dispatch()
        except kubernetes.client.ApiException as error:
            return error.status == 404
        return False

    eventually(gone)  # kopf ran the delete handler and removed its finalizer
    assert cluster.call(lambda c: list(c.store.objects(PODS))) == []  # the owned pod was collected
