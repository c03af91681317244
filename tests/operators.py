"""Test support: the real operator (`fleetdispatch operator`) as a process against the dev cluster.

The operator is started the way a user starts it, with a kubeconfig of its own identity (the chart's
ServiceAccount, bound to exactly the chart's RBAC), and talks to the real kube-apiserver; tests read and
write the cluster as its admin (`Kube`). What the operator did is read from the API server's audit log.
`OperatorProcess.kill()` is SIGKILL: no cleanup, as when a node dies.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fleetdispatch.api.names import API_VERSION, GROUP, VERSION
from fleetdispatch.devcluster.nodeagent import RUNTIME_ANNOTATION
from fleetdispatch.devcluster.stack import (
    OPERATOR_USER,
    AuditWatch,
    BackgroundCluster,
    audit_events,
    start_operator,
    stop_operator,
)
from fleetdispatch.session import protocol
from kube import ApiError, Kube
from waiting import eventually

DISPATCHES = f"/apis/{GROUP}/{VERSION}"
_METHODS = {
    "create": "POST",
    "patch": "PATCH",
    "update": "PUT",
    "delete": "DELETE",
    "deletecollection": "DELETE",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OperatorProcess:
    """`fleetdispatch operator` in a subprocess; its log is kept for the failure message."""

    def __init__(
        self,
        cluster: BackgroundCluster,
        workdir: Path,
        *args: str,
        kubeconfig: Path | None = None,
        user: str = OPERATOR_USER,
    ) -> None:
        """By default as the dev cluster's operator identity; `kubeconfig` and `user` give it another."""
        self.cluster = cluster
        self.kubeconfig = kubeconfig or cluster.dev.operator_kubeconfig
        self.log_path = workdir / "operator.log"
        self.args = args
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.user = user
        self.process: subprocess.Popen[bytes] | None = None
        self._watches = AuditWatch(cluster.dev.audit_log, user)

    def start(self) -> OperatorProcess:
        self.process = start_operator(
            self.cluster.dev,
            self.log_path,
            f"--metrics-port={self.metrics_port}",
            f"--health-port={self.health_port}",
            *self.args,
            kubeconfig=self.kubeconfig,
            user=self.user,
        )
        return self

    def watching(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.log()}")
        return {"fleetdispatches", "pods"} <= self._watches.open_watches()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        """SIGKILL, then wait until the API server has ended its watches (the audit log says so)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        eventually(lambda: not self._watches.open_watches(), 20, "the killed operator's watches closed")

    def stop(self) -> None:
        if self.process is not None:
            stop_operator(self.process)

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port if path == '/metrics' else self.health_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()


@contextlib.contextmanager
def running_operator(
    cluster: BackgroundCluster,
    workdir: Path,
    *args: str,
    kubeconfig: Path | None = None,
    user: str = OPERATOR_USER,
) -> Iterator[OperatorProcess]:
    """An operator process for a test module: started, and stopped whatever happens."""
    process = OperatorProcess(cluster, workdir, *args, kubeconfig=kubeconfig, user=user)
    process.start()
    try:
        yield process
    finally:
        process.stop()


class Namespace:
    """One test's namespace in the shared cluster: its dispatches, pods and Events.

    It enforces Pod Security `restricted` (so every pod the operator builds must pass it), and its
    dispatches' pods run on the node agent's `runtime`: `local` (real processes in namespaces),
    `instant` (completed at once) or `none` (left alone: the test writes their status as a kubelet would).
    """

    def __init__(
        self,
        cluster: BackgroundCluster,
        name: str,
        runtime: str = "local",
        pod_security: str = "restricted",
        *,
        existing: bool = False,
    ) -> None:
        """`existing`: a namespace created otherwise (by a README's commands), taken as it is."""
        self.cluster, self.name, self.runtime = cluster, name, runtime
        self.kube = Kube(cluster.dev)
        labels = {f"pod-security.kubernetes.io/{mode}": pod_security for mode in ("enforce", "warn")}
        if not existing:
            self.kube.create("/api/v1/namespaces", {"metadata": {"name": name, "labels": labels}})
        # Pods are refused until the namespace's default ServiceAccount exists (the ServiceAccount admission).
        eventually(self._account, 30, f"the default ServiceAccount of {name}")
        self._audit_offset = 0

    def _account(self) -> bool:
        try:
            self.kube.get(f"/api/v1/namespaces/{self.name}/serviceaccounts/default")
        except ApiError:
            return False
        return True

    @property
    def path(self) -> str:
        return f"{DISPATCHES}/namespaces/{self.name}/fleetdispatches"

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        spec = json.loads(json.dumps(spec))
        if self.runtime != "local" and isinstance(spec.get("template"), dict):
            metadata = spec["template"].setdefault("metadata", {})
            metadata.setdefault("annotations", {})[RUNTIME_ANNOTATION] = self.runtime
        body = {"apiVersion": API_VERSION, "kind": "FleetDispatch", "metadata": {"name": name}, "spec": spec}
        return self.kube.create(self.path, body)

    def dispatch(self, name: str) -> dict[str, Any]:
        return self.kube.get(f"{self.path}/{name}")

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.dispatch(name).get("status") or {})

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), None)

    def patch_spec(self, name: str, patch: dict[str, Any]) -> None:
        self.kube.patch(f"{self.path}/{name}", {"spec": patch})

    def pods(self) -> list[dict[str, Any]]:
        return sorted(
            self.kube.items(f"/api/v1/namespaces/{self.name}/pods"), key=lambda p: str(p["metadata"]["name"])
        )

    def pod(self, name: str) -> dict[str, Any]:
        return self.kube.get(f"/api/v1/namespaces/{self.name}/pods/{name}")

    def pod_status(self, name: str, status: dict[str, Any]) -> None:
        """Write a pod's status as its kubelet would (for pods of the `none` runtime)."""
        self.kube.patch(f"/api/v1/namespaces/{self.name}/pods/{name}/status", {"status": status})

    def delete_pod(self, name: str, grace: int | None = None) -> None:
        options = {} if grace is None else {"gracePeriodSeconds": grace}
        self.kube.delete(f"/api/v1/namespaces/{self.name}/pods/{name}", **options)

    def logs(self, pod: str, container: str = "session") -> str:
        """What `kubectl logs` shows: the kubelet's log, through the API server."""
        query = urllib.parse.urlencode({"container": container})
        url = f"{self.kube.url}/api/v1/namespaces/{self.name}/pods/{pod}/log?{query}"
        with urllib.request.urlopen(url, context=self.kube._context, timeout=30) as response:
            return str(response.read().decode(errors="replace"))

    def events(self) -> list[tuple[str, str]]:
        """The Events about dispatches (not the kubelet's about pods), oldest first."""
        events = self.kube.items(f"/api/v1/namespaces/{self.name}/events")
        # Creation order: etcd's revisions increase (timestamps have one-second precision).
        events.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
        return [(e["reason"], e["message"]) for e in events if e["involvedObject"]["kind"] == "FleetDispatch"]

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

    def operator_writes(self) -> list[str]:
        """The operator's write requests in this namespace (`POST /api/v1/...`), from the audit log."""
        events, _ = audit_events(self.cluster.dev.audit_log)
        writes = []
        for event in events:
            if event.get("stage") != "ResponseComplete" or event.get("verb") not in _METHODS:
                continue
            if (event.get("user") or {}).get("username") != OPERATOR_USER:
                continue
            if (event.get("objectRef") or {}).get("namespace") != self.name:
                continue
            writes.append(f"{_METHODS[event['verb']]} {event['requestURI'].split('?')[0]}")
        return writes


def running(started: str, supervisor: bool = True) -> dict[str, Any]:
    """A pod status as a kubelet writes it once the session runs (for the `none` runtime)."""
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


def now_rfc3339(offset: float = 0) -> str:
    """Now (plus `offset` seconds) as the API server writes a time."""
    return protocol.format_time(time.time() + offset)


def dispatch_spec(**overrides: Any) -> dict[str, Any]:
    """A small spec that runs `true`, retried at once: override what a test is about."""
    spec: dict[str, Any] = {
        "template": {"spec": {"containers": [{"name": "session", "image": "busybox", "command": ["true"]}]}},
        "retry": {"maxAttempts": 3, "backoff": {"baseSeconds": 1, "maxSeconds": 1, "jitterPercent": 0}},
    }
    spec.update(overrides)
    return spec
