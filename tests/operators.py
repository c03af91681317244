"""Test support: the real operator (`fleetdispatch operator`) as a process against a dev cluster.

The operator is started the way a user starts it, with a kubeconfig, and talks to the dev cluster's API
server over HTTP; tests read and write the cluster through the store (`cluster.call`), which is the API
server's own state. `OperatorProcess.kill()` is SIGKILL: no cleanup, as when a node dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fleetdispatch.api import API_VERSION, GROUP, VERSION
from fleetdispatch.devcluster.resources import EVENTS, NAMESPACES, PODS, ResourceType
from fleetdispatch.devcluster.stack import BackgroundCluster, DevCluster

MERGE = "application/merge-patch+json"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {what or check}")
        time.sleep(0.05)


def dispatches(cluster: DevCluster) -> ResourceType:
    kind = cluster.store.kind(GROUP, VERSION, "fleetdispatches")
    assert kind is not None
    return kind


class OperatorProcess:
    """`fleetdispatch operator` in a subprocess; its log is kept for the failure message."""

    def __init__(self, cluster: BackgroundCluster, workdir: Path, *args: str) -> None:
        self.cluster = cluster
        self.kubeconfig = cluster.write_kubeconfig(workdir / "kubeconfig")
        self.log_path = workdir / "operator.log"
        self.args = args
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        command = [
            sys.executable,
            "-m",
            "fleetdispatch.cli",
            "operator",
            f"--metrics-port={self.metrics_port}",
            f"--health-port={self.health_port}",
            *self.args,
        ]
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        eventually(self.watching, 30, "the operator watches dispatches and pods")
        return self

    def watching(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.log()}")
        return bool(
            self.cluster.call(lambda c: c.store.watching(dispatches(c)) >= 1 and c.store.watching(PODS) >= 1)
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        """SIGKILL, then wait until the API server has noticed its watches are gone."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        eventually(
            lambda: self.cluster.call(
                lambda c: c.store.watching(dispatches(c)) == 0 and c.store.watching(PODS) == 0
            ),
            10,
            "the killed operator's watches closed",
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port if path == '/metrics' else self.health_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()


@contextlib.contextmanager
def running_operator(cluster: BackgroundCluster, workdir: Path, *args: str) -> Iterator[OperatorProcess]:
    """An operator process for a test module: started, and stopped whatever happens."""
    process = OperatorProcess(cluster, workdir, *args)
    process.start()
    try:
        yield process
    finally:
        process.stop()


class Namespace:
    """One test's namespace in a shared cluster: its dispatches, pods and Events."""

    def __init__(self, cluster: BackgroundCluster, name: str) -> None:
        self.cluster, self.name = cluster, name
        cluster.call(lambda c: c.store.create(NAMESPACES, None, {"metadata": {"name": name}}))

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": API_VERSION, "kind": "FleetDispatch", "metadata": {"name": name}, "spec": spec}
        return dict(self.cluster.call(lambda c: c.store.create(dispatches(c), self.name, body)).obj)

    def dispatch(self, name: str) -> dict[str, Any]:
        return dict(self.cluster.call(lambda c: c.store.get(dispatches(c), self.name, name)))

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.dispatch(name).get("status") or {})

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), None)

    def patch_spec(self, name: str, patch: dict[str, Any]) -> None:
        self.cluster.call(lambda c: c.store.patch(dispatches(c), self.name, name, MERGE, {"spec": patch}))

    def pods(self) -> list[dict[str, Any]]:
        return sorted(
            (
                dict(p)
                for p in self.cluster.call(lambda c: list(c.store.objects(PODS)))
                if p["metadata"]["namespace"] == self.name
            ),
            key=lambda p: str(p["metadata"]["name"]),
        )

    def pod(self, name: str) -> dict[str, Any]:
        return dict(self.cluster.call(lambda c: c.store.get(PODS, self.name, name)))

    def pod_status(self, name: str, status: dict[str, Any]) -> None:
        self.cluster.call(
            lambda c: c.store.patch(PODS, self.name, name, MERGE, {"status": status}, subresource="status")
        )

    def delete_pod(self, name: str) -> None:
        self.cluster.call(lambda c: c.store.delete(PODS, self.name, name))

    def events(self) -> list[tuple[str, str]]:
        """The Events about dispatches (not the kubelet's about pods), oldest first."""
        events = self.cluster.call(lambda c: list(c.store.objects(EVENTS)))
        return [
            (e["reason"], e["message"])
            for e in events
            if e["metadata"]["namespace"] == self.name and e["involvedObject"]["kind"] == "FleetDispatch"
        ]

    def wait_phase(self, name: str, phase: str, timeout: float = 20.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") == phase else None

        try:
            return dict(eventually(reached, timeout, f"{name} {phase}"))
        except AssertionError:
            raise AssertionError(
                f"{self.name}/{name} not {phase} after {timeout} s: {json.dumps(self.status(name))[:3000]}"
            ) from None

    def operator_writes(self, requests: list[Any]) -> list[str]:
        """The operator's write requests in this namespace, from the API server's request log."""
        return [
            f"{r.method} {r.path}"
            for r in requests
            if r.user_agent.startswith("fleet-dispatch")
            and r.method != "GET"
            and f"/namespaces/{self.name}/" in r.path
        ]


def running(started: str, supervisor: bool = True) -> dict[str, Any]:
    """A pod status as a kubelet writes it once the session runs (for the runtime-less cluster)."""
    status: dict[str, Any] = {
        "phase": "Running",
        "startTime": started,
        "containerStatuses": [{"name": "session", "state": {"running": {"startedAt": started}}}],
    }
    if supervisor:
        status["initContainerStatuses"] = [
            {"name": "fleet-supervisor", "state": {"running": {"startedAt": started}}}
        ]
    return status


def terminated(
    started: str, exit_code: int, message: str | None = None, reason: str = "Error"
) -> dict[str, Any]:
    state: dict[str, Any] = {"exitCode": exit_code, "reason": reason, "startedAt": started}
    if message is not None:
        state["message"] = message
    return {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "startTime": started,
        "containerStatuses": [{"name": "session", "state": {"terminated": state}}],
    }
