"""The dev cluster as a whole: `fleetdispatch dev` as a user runs it, and a supervised pod run in it.

`fleetdispatch dev` starts its own control plane (etcd, kube-apiserver, the controller manager, the
scheduler), the node agent and the operator, so each start costs seconds: the scenarios share starts.

The supervised pod is built by hand the way design section 2 describes the operator's pod (the supervisor as
a native sidecar, the shared state volume, the session's marker environment), so the supervisor and the
node agent are shown to fit without the operator.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from fleetdispatch.devcluster.nodeagent import KUBELET_VERSION
from fleetdispatch.devcluster.stack import BackgroundCluster
from fleetdispatch.session.config import SupervisorConfig
from kubectl import Kubectl, needs_kubectl
from operators import Namespace
from waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
FLEETDISPATCH = Path(sys.executable).parent / "fleetdispatch"  # the console script a user runs
_names = itertools.count()


class Dev:
    """`fleetdispatch dev` in a subprocess, its output read line by line."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.kubeconfig = tmp_path / "dev.kubeconfig"
        command = [str(FLEETDISPATCH), "dev", "--kubeconfig", str(self.kubeconfig), *args]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, text: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line with {text!r} after {timeout} s:\n{''.join(self.output)}"
                ) from None
            if line is None:
                raise AssertionError(
                    f"fleetdispatch dev exited ({self.process.wait()}):\n{''.join(self.output)}"
                )
            self.output.append(line)
            if text in line:
                return line

    def kubectl(self) -> Kubectl:
        return Kubectl(self.kubeconfig)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def dev(tmp_path: Path, *args: str) -> Iterator[Dev]:
    running = Dev(tmp_path, *args)
    try:
        yield running
    finally:
        running.stop()


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below ``pid``, from /proc/PID/task/*/children recursively (before a signal)."""
    found: list[psutil.Process] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    with contextlib.suppress(psutil.NoSuchProcess):
                        found.append(psutil.Process(int(child)))  # remembers its start time: no PID reuse
                    pending.append(int(child))
    return found


def left(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{process.pid} {' '.join(process.cmdline())[:200]}")
    return alive


@needs_kubectl
def test_fleetdispatch_dev_serves_stops_cleanly_keeps_its_data_dir_and_survives_a_taken_port(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with dev(tmp_path, "--port", "0", "--data-dir", str(data)) as first:
        ready = first.wait_for("ready")
        assert "operator watching" in ready and str(data) in ready
        assert f"export KUBECONFIG={first.kubeconfig.resolve()}\n" in first.output
        kubectl = first.kubectl()
        version = json.loads(kubectl.run("version", "-o", "json").stdout)
        assert version["serverVersion"]["gitVersion"] == KUBELET_VERSION == "v1.37.2"
        livez = kubectl.run("get", "--raw", "/livez?verbose").stdout
        assert "[+]etcd ok" in livez and "livez check passed" in livez
        # A dispatch for the operator, and a pod whose processes run until the end.
        kubectl.run("apply", "-f", str(ROOT / "examples" / "minimal.yaml"))
        kubectl.run("apply", "-f", str(ROOT / "examples" / "local" / "hello-pod.yaml"))
        kubectl.run("wait", "--for=jsonpath={.status.phase}=Running", "pod/hello-pod", "--timeout=60s")
        kubectl.run("wait", "--for=jsonpath={.status.phase}=Running", "fd/hello", "--timeout=60s")
        children = descendants(first.process.pid)
        commands = " ".join(" ".join(c.cmdline()) for c in children)
        for part in (
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "operator",
            "sandbox",
        ):
            assert part in commands, part
        stopping = time.monotonic()
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(15) == 0, "".join(first.output)
        assert time.monotonic() - stopping < 10
        assert left(children) == []
    # Restarted on a port that is taken (never fatal: it takes another), without the operator.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with dev(tmp_path, "--port", str(busy), "--data-dir", str(data), "--no-operator") as second:
            ready = second.wait_for("ready")
            assert (
                f"fleetdispatch dev: port {busy} is in use: the API server takes another\n" in second.output
            )
            assert "no operator (--no-operator)" in ready
            kubectl = second.kubectl()
            server = kubectl.run("config", "view", "-o", "jsonpath={.clusters[0].cluster.server}").stdout
            assert server.startswith("https://127.0.0.1:") and not server.endswith(f":{busy}")
            kept = kubectl.run(
                "get", "fd", "hello", "-o", "jsonpath={.spec.template.spec.containers[0].image}"
            )
            assert kept.stdout == "busybox:1.36"  # kept across the restart by etcd's data dir
            children = descendants(second.process.pid)
            assert not [c for c in children if "operator" in c.cmdline()]
            second.process.send_signal(signal.SIGTERM)
            assert second.process.wait(15) == 0
            assert left(children) == []


# ---- a supervised pod, built by hand ----------------------------------------------------------------------


def _supervised_pod(config: SupervisorConfig, session_command: list[str]) -> dict[str, Any]:
    state = {"name": "fleet-state", "mountPath": "/var/run/fleet"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
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
    cluster: BackgroundCluster,
) -> None:
    space = Namespace(cluster, f"stack-{next(_names)}", pod_security="privileged")
    config = SupervisorConfig(
        deadline_seconds=60,
        max_extension_seconds=0,
        idle_output_seconds=2,
        kill_grace_seconds=1,
        poll_seconds=0.2,
        state_dir="/var/run/fleet",
        dispatch=f"{space.name}/demo",
        attempt="1",
    )
    started = time.monotonic()
    space.kube.create(
        f"/api/v1/namespaces/{space.name}/pods",
        _supervised_pod(config, ["sh", "-c", "echo thinking; exec sleep 300"]),
    )

    def finished() -> dict[str, Any] | None:
        status = space.pod("demo-1").get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    final = eventually(finished, 60, "the supervised pod finished")
    elapsed = time.monotonic() - started
    [session] = final["containerStatuses"]
    [supervisor] = final["initContainerStatuses"]
    decisions = [json.loads(line) for line in space.logs("demo-1", "fleet-supervisor").splitlines()]
    assert final["phase"] == "Failed"
    assert session["state"]["terminated"]["exitCode"] == 128 + signal.SIGTERM
    assert supervisor["state"]["terminated"]["exitCode"] == 0, (supervisor, decisions)
    assert 2 <= elapsed < 20
    assert [d for d in decisions if d.get("reason") == "IdleTimeout"], decisions
