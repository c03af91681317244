"""The dev cluster's pod runtime, with real processes: what a kubelet reports, and nothing left behind."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from fleetdispatch.devcluster.resources import PODS, ResourceType
from fleetdispatch.devcluster.runtime import (
    EXIT_CODE_ANNOTATION,
    TERMINATION_MESSAGE_ANNOTATION,
    LocalRuntime,
    Mode,
)
from fleetdispatch.devcluster.store import DELETED, ApiError, Object, Store, Subscription

pytestmark = pytest.mark.anyio
T = TypeVar("T")
STATE_MOUNT = [{"name": "fleet-state", "mountPath": "/var/run/fleet"}]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Node:
    store: Store
    runtime: LocalRuntime
    workdir: Path

    def create(self, name: str, spec: Object, **metadata: Any) -> Object:
        return self.store.create(PODS, "default", {"metadata": {"name": name, **metadata}, "spec": spec}).obj

    def pod(self, name: str) -> Object | None:
        try:
            return self.store.get(PODS, "default", name)
        except ApiError:
            return None

    def kind(self, plural: str) -> ResourceType:
        kind = self.store.kind("", "v1", plural)
        assert kind is not None
        return kind

    def log(self, pod: str, container: str | None = None) -> str:
        path = self.runtime.log_path("default", pod, container)
        assert path is not None
        return path.read_text() if path.exists() else ""

    def watch(self) -> Subscription:
        """Every later pod event, queued: the history of states a test asserts on afterwards."""
        _, subscription = self.store.subscribe(PODS, "default", lambda obj: True, None)
        return subscription


async def _node(workdir: Path, mode: Mode) -> AsyncIterator[Node]:
    store = Store()
    runtime = LocalRuntime(store, workdir, mode=mode, retry_seconds=0.05, shutdown_grace_seconds=1.0)
    task = asyncio.create_task(runtime.run())
    try:
        yield Node(store, runtime, workdir)
    finally:
        await runtime.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async for running in _node(tmp_path, "local"):
        yield running


@pytest.fixture
async def instant(tmp_path: Path) -> AsyncIterator[Node]:
    async for running in _node(tmp_path, "instant"):
        yield running


async def eventually(check: Callable[[], T | None], what: str, timeout: float = 5.0) -> T:
    """The first truthy ``check()``, polled every 20 ms; fails the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def phase(node: Node, name: str, wanted: str) -> Callable[[], Object | None]:
    def check() -> Object | None:
        pod = node.pod(name)
        return pod if pod is not None and pod["status"].get("phase") == wanted else None

    return check


def drained(subscription: Subscription) -> list[tuple[str, Object]]:
    events = []
    while not subscription.events.empty():
        events.append(subscription.events.get_nowait())
    return events


def terminated(status: Object) -> Object:
    state: Object = status["state"]["terminated"]
    return state


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def container_pid(pod: Object, name: str) -> int:
    statuses = [*pod["status"].get("initContainerStatuses", []), *pod["status"]["containerStatuses"]]
    status = next(s for s in statuses if s["name"] == name)
    return int(status["containerID"].removeprefix("local://"))


async def test_a_native_sidecar_and_the_session_share_the_state_dir_and_report_their_exits(
    node: Node,
) -> None:
    events = node.watch()
    node.create(
        "shared",
        {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "volumes": [{"name": "fleet-state", "emptyDir": {}}],
            "initContainers": [
                {
                    "name": "fleet-supervisor",
                    "image": "fleetdispatch",
                    "restartPolicy": "Always",
                    "command": [
                        "sh",
                        "-c",
                        'echo supervised > /var/run/fleet/ready; trap "echo stopping; exit 0" TERM; '
                        "while true; do sleep 0.05; done",
                    ],
                    "volumeMounts": STATE_MOUNT,
                }
            ],
            "containers": [
                {
                    "name": "session",
                    "image": "busybox",
                    "command": ["sh", "-c"],
                    "args": [
                        'while [ ! -f "$FLEET_STATE_DIR/ready" ]; do sleep 0.02; done; '
                        'cat "$FLEET_STATE_DIR/ready"; echo "$FLEET_STATE_DIR"; '
                        'printf \'{"reason": "Completed"}\' > /var/run/fleet/outcome.json'
                    ],
                    "env": [{"name": "FLEET_STATE_DIR", "value": "/var/run/fleet"}],
                    "terminationMessagePath": "/var/run/fleet/outcome.json",
                    "volumeMounts": STATE_MOUNT,
                }
            ],
        },
    )
    pod = await eventually(phase(node, "shared", "Succeeded"), "the pod to succeed")

    assert pod["spec"]["nodeName"] == "fleetdispatch-dev"
    status = pod["status"]
    assert status["podIP"] == status["hostIP"] == "127.0.0.1"
    assert status["startTime"]
    [session] = status["containerStatuses"]
    assert session["name"] == "session" and session["image"] == "busybox" and session["imageID"] == ""
    assert session["restartCount"] == 0 and session["ready"] is False and session["started"] is False
    assert terminated(session)["exitCode"] == 0
    assert terminated(session)["reason"] == "Completed"
    assert terminated(session)["message"] == '{"reason": "Completed"}'
    assert terminated(session)["startedAt"] and terminated(session)["finishedAt"]
    [supervisor] = status["initContainerStatuses"]
    assert supervisor["name"] == "fleet-supervisor"
    assert terminated(supervisor)["exitCode"] == 0, "its TERM trap ran when the session was done"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["PodScheduled"]["status"] == conditions["Initialized"]["status"] == "True"
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "PodCompleted"

    # The session read what the sidecar wrote, through a state dir that is local, not /var/run/fleet.
    supervised, state_dir = node.log("shared", "session").splitlines()
    assert supervised == "supervised"
    assert state_dir.startswith(str(node.workdir)) and (Path(state_dir) / "outcome.json").is_file()
    assert node.log("shared", "fleet-supervisor").endswith("stopping\n"), "TERM reached the sidecar"
    assert node.log("shared") == node.log("shared", "session"), "the first main container is the default"

    # On the way: Pending, then Running with the sidecar started and ready beside the running session.
    statuses = [obj["status"] for _, obj in drained(events) if "containerStatuses" in obj["status"]]
    phases = [s["phase"] for s in statuses]
    assert phases[0] == "Pending" and phases[-1] == "Succeeded" and "Running" in phases
    assert phases.index("Running") < phases.index("Succeeded")
    both_running = [
        s
        for s in statuses
        if "running" in s["containerStatuses"][0]["state"]
        and "running" in s["initContainerStatuses"][0]["state"]
    ]
    assert both_running, "the sidecar runs while the session does"
    assert both_running[0]["initContainerStatuses"][0]["ready"] is True
    assert both_running[0]["initContainerStatuses"][0]["started"] is True
    assert any(c["type"] == "Ready" and c["status"] == "True" for s in both_running for c in s["conditions"])


async def test_a_failing_container_fails_the_pod_with_its_exit_code_and_message(node: Node) -> None:
    node.create(
        "failing",
        {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "session",
                    "image": "x",
                    "command": ["sh", "-c", 'echo step one; echo "it broke" >&2; exit 7'],
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                },
                # The default termination message path works too: it is a file of the container's own.
                {"name": "helper", "image": "x", "command": ["sh", "-c", "echo done > /dev/termination-log"]},
                # "$$" is Kubernetes' escape for "$": the shell gets "kill -9 $$", as it would in a cluster.
                {"name": "killed", "image": "x", "command": ["sh", "-c", "kill -9 $$$$"]},
                {"name": "missing", "image": "x", "command": ["/nonexistent/program"]},
            ],
        },
    )
    pod = await eventually(phase(node, "failing", "Failed"), "the pod to fail")

    session, helper, killed, missing = pod["status"]["containerStatuses"]
    assert terminated(session)["exitCode"] == 7
    assert terminated(session)["reason"] == "Error"
    assert terminated(session)["message"] == "step one\nit broke\n", "the log's tail, stdout and stderr"
    assert terminated(helper) | {"startedAt": "", "finishedAt": ""} == {
        "exitCode": 0,
        "reason": "Completed",
        "message": "done\n",
        "startedAt": "",
        "finishedAt": "",
    }
    assert terminated(killed)["exitCode"] == 137 and terminated(killed)["signal"] == 9
    assert terminated(missing)["exitCode"] == 128 and terminated(missing)["reason"] == "StartError"
    assert "/nonexistent/program" in terminated(missing)["message"]


async def test_an_init_container_that_fails_fails_the_pod_before_the_main_containers(node: Node) -> None:
    node.create(
        "badinit",
        {
            "initContainers": [{"name": "setup", "image": "x", "command": ["sh", "-c", "exit 3"]}],
            "containers": [{"name": "session", "image": "x", "command": ["sh", "-c", "echo ran"]}],
        },
    )
    pod = await eventually(phase(node, "badinit", "Failed"), "the pod to fail")

    [setup] = pod["status"]["initContainerStatuses"]
    assert terminated(setup)["exitCode"] == 3
    assert pod["status"]["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert node.log("badinit", "session") == ""


async def test_the_environment_is_the_pods_own_with_references_and_rewritten_paths(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_HOST_MARKER", "host")
    monkeypatch.setenv("HOST_SECRET", "do-not-leak")
    node.store.create(
        node.kind("secrets"),
        "default",
        {"metadata": {"name": "creds"}, "data": {"token": base64.b64encode(b"s3cr3t").decode()}},
    )
    node.store.create(
        node.kind("configmaps"), "default", {"metadata": {"name": "settings"}, "data": {"mode": "fast"}}
    )
    created = node.create(
        "envpod",
        {
            "volumes": [{"name": "fleet-state", "emptyDir": {}}],
            "containers": [
                {
                    "name": "session",
                    "image": "x",
                    "command": ["sh", "-c", "env; echo PWD_IS=$(pwd)"],
                    "workingDir": "/var/run/fleet",
                    "volumeMounts": STATE_MOUNT,
                    "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CM_"}],
                    "env": [
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                        {
                            "name": "MODE",
                            "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}},
                        },
                        {
                            "name": "ABSENT",
                            "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x", "optional": True}},
                        },
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {
                            "name": "POD_NAMESPACE",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                        },
                        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "GREETING", "value": "hello $(POD_NAME), $$(POD_NAME) stays"},
                        {"name": "FLEET_STATE_DIR", "value": "/var/run/fleet"},
                        {"name": "OUTCOME", "value": "/var/run/fleet/outcome.json"},
                        {"name": "NOT_A_MOUNT", "value": "/var/run/fleetx"},
                    ],
                }
            ],
        },
    )
    await eventually(phase(node, "envpod", "Succeeded"), "the pod to succeed")

    env = dict(line.split("=", 1) for line in node.log("envpod").splitlines() if "=" in line)
    assert env["TOKEN"] == "s3cr3t" and env["MODE"] == "fast" and env["CM_mode"] == "fast"
    assert "ABSENT" not in env
    assert env["POD_NAME"] == env["HOSTNAME"] == "envpod"
    assert env["POD_NAMESPACE"] == "default" and env["POD_UID"] == created["metadata"]["uid"]
    assert env["NODE"] == "fleetdispatch-dev"
    assert env["GREETING"] == "hello envpod, $(POD_NAME) stays"
    state_dir = Path(env["FLEET_STATE_DIR"])
    assert state_dir.is_dir() and state_dir.is_relative_to(node.workdir)
    assert env["OUTCOME"] == f"{state_dir}/outcome.json"
    assert env["NOT_A_MOUNT"] == "/var/run/fleetx"
    assert env["PWD_IS"] == str(state_dir), "workingDir goes through the mount too"
    assert Path(env["HOME"]).is_relative_to(node.workdir)
    assert "FLEET_HOST_MARKER" not in env and "HOST_SECRET" not in env
    assert "PATH" in env and "LANG" in env


async def test_a_missing_secret_leaves_the_container_waiting_until_it_exists(node: Node) -> None:
    node.create(
        "waits",
        {
            "containers": [
                {
                    "name": "session",
                    "image": "x",
                    "command": ["sh", "-c", 'echo "$TOKEN"'],
                    "env": [
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}}
                    ],
                }
            ]
        },
    )

    def waiting() -> Object | None:
        pod = node.pod("waits")
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or [{}]
        state = statuses[0].get("state", {}).get("waiting", {})
        return state if state.get("reason") == "CreateContainerConfigError" else None

    state = await eventually(waiting, "CreateContainerConfigError")
    assert state["message"] == 'secret "later" not found'
    assert node.pod("waits")["status"]["phase"] == "Pending"  # type: ignore[index]

    node.store.create(
        node.kind("secrets"), "default", {"metadata": {"name": "later"}, "stringData": {"token": "now"}}
    )
    await eventually(phase(node, "waits", "Succeeded"), "the pod to start once the secret exists")
    assert node.log("waits") == "now\n"


async def test_a_container_without_a_command_cannot_start_and_says_why(node: Node) -> None:
    node.create("imageonly", {"containers": [{"name": "session", "image": "busybox"}]})

    def waiting() -> Object | None:
        pod = node.pod("imageonly")
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or [{}]
        state = statuses[0].get("state", {}).get("waiting", {})
        return state if state.get("reason") == "CreateContainerError" else None

    state = await eventually(waiting, "CreateContainerError")
    assert "does not pull images" in state["message"]
    assert "spec.containers{session}.command" in state["message"]
    assert node.pod("imageonly")["status"]["phase"] == "Pending"  # type: ignore[index]


async def test_deleting_a_running_pod_stops_its_processes_and_the_pod_goes(node: Node) -> None:
    node.create(
        "sleeper",
        {
            "terminationGracePeriodSeconds": 10,
            "containers": [
                {"name": "session", "image": "x", "command": ["sh", "-c", "echo up; exec sleep 30"]}
            ],
        },
    )
    pod = await eventually(phase(node, "sleeper", "Running"), "the pod to run")
    await eventually(lambda: node.log("sleeper") == "up\n", "the session's output")
    pid = container_pid(pod, "session")
    directory = node.runtime.log_path("default", "sleeper", None)
    assert directory is not None and alive(pid)

    loop = asyncio.get_running_loop()
    began = loop.time()
    node.store.delete(PODS, "default", "sleeper")
    assert node.pod("sleeper")["metadata"]["deletionTimestamp"]  # type: ignore[index]
    await eventually(lambda: node.pod("sleeper") is None, "the pod to be gone")
    assert loop.time() - began < 2, "sleep exits on TERM, long before the grace is over"
    assert not alive(pid)
    await eventually(lambda: not directory.exists(), "the pod's directory to be removed")
    assert node.runtime.log_path("default", "sleeper", None) is None


async def test_a_process_that_ignores_term_is_killed_when_the_grace_is_over(node: Node) -> None:
    events = node.watch()
    node.create(
        "stubborn",
        {
            "containers": [
                {
                    "name": "session",
                    "image": "x",
                    "command": ["sh", "-c", 'trap "" TERM; echo up; while true; do sleep 0.05; done'],
                }
            ]
        },
    )
    pod = await eventually(phase(node, "stubborn", "Running"), "the pod to run")
    await eventually(lambda: node.log("stubborn") == "up\n", "the trap to be set")
    pid = container_pid(pod, "session")

    loop = asyncio.get_running_loop()
    began = loop.time()
    node.store.delete(PODS, "default", "stubborn", grace_seconds=1)
    await eventually(lambda: node.pod("stubborn") is None, "the pod to be gone")
    assert 0.9 <= loop.time() - began < 3
    assert not alive(pid)

    history = drained(events)
    assert history[-1][0] == DELETED
    final = history[-1][1]["status"]
    assert final["phase"] == "Failed"
    assert terminated(final["containerStatuses"][0]) | {"startedAt": "", "finishedAt": ""} == {
        "exitCode": 137,
        "signal": 9,
        "reason": "Error",
        "startedAt": "",
        "finishedAt": "",
    }


async def test_instant_mode_completes_pods_without_running_anything(instant: Node) -> None:
    instant.create(
        "quota",
        {
            "containers": [
                {"name": "other", "image": "x", "command": ["false"]},
                {"name": "session", "image": "x"},
            ]
        },
        annotations={
            EXIT_CODE_ANNOTATION: "75",
            TERMINATION_MESSAGE_ANNOTATION: '{"reason": "QuotaExhausted"}',
        },
    )
    instant.create("plain", {"containers": [{"name": "c", "image": "x"}]})

    quota = await eventually(phase(instant, "quota", "Failed"), "the pod to fail")
    other, session = quota["status"]["containerStatuses"]
    assert terminated(session)["exitCode"] == 75 and terminated(session)["reason"] == "Error"
    assert terminated(session)["message"] == '{"reason": "QuotaExhausted"}'
    assert terminated(other)["exitCode"] == 0 and "message" not in terminated(other)
    plain = await eventually(phase(instant, "plain", "Succeeded"), "the pod to succeed")
    assert terminated(plain["status"]["containerStatuses"][0])["reason"] == "Completed"
    assert instant.runtime.log_path("default", "quota", "session") is None
    assert not psutil.Process().children(recursive=True)

    instant.store.delete(PODS, "default", "quota")
    assert instant.pod("quota") is None, "a completed pod is deleted at once"


async def test_close_leaves_no_process_behind(node: Node) -> None:
    node.create(
        "busy",
        {
            "initContainers": [
                {
                    "name": "sidecar",
                    "image": "x",
                    "restartPolicy": "Always",
                    "command": ["sh", "-c", 'trap "" TERM; while true; do sleep 0.05; done'],
                }
            ],
            "containers": [
                {"name": "session", "image": "x", "command": ["sh", "-c", "sleep 30 & sleep 30 & wait"]}
            ],
        },
    )
    await eventually(phase(node, "busy", "Running"), "the pod to run")

    # Two shells, their sleeps: the grandchildren too, which outlive their shell unless killed as a group.
    def started() -> list[psutil.Process] | None:
        found = psutil.Process().children(recursive=True)
        return found if len(found) >= 4 else None

    descendants = await eventually(started, "the processes to start")
    pids = [process.pid for process in descendants]

    await node.runtime.close()
    await node.runtime.close()  # idempotent

    assert not [pid for pid in pids if alive(pid)]
    assert not psutil.Process().children(recursive=True)
    assert not list((node.workdir / "pods").iterdir())


async def test_a_pod_removed_without_grace_is_killed_at_once(node: Node) -> None:
    node.create(
        "forced",
        {
            "containers": [
                {"name": "session", "image": "x", "command": ["sh", "-c", 'trap "" TERM; exec sleep 30']}
            ]
        },
    )
    pod = await eventually(phase(node, "forced", "Running"), "the pod to run")
    pid = container_pid(pod, "session")

    node.store.delete(PODS, "default", "forced", grace_seconds=0)
    assert node.pod("forced") is None, "no grace: the store removes it outright"
    await eventually(lambda: not alive(pid), "the process to be killed", timeout=2)


async def test_secret_and_config_map_volumes_are_files_and_unsupported_ones_are_reported(node: Node) -> None:
    node.store.create(
        node.kind("secrets"),
        "default",
        {"metadata": {"name": "creds"}, "data": {"token": base64.b64encode(b"s3cr3t").decode()}},
    )
    node.store.create(
        node.kind("configmaps"), "default", {"metadata": {"name": "settings"}, "data": {"mode": "fast"}}
    )
    node.create(
        "volumes",
        {
            "volumes": [
                {"name": "creds", "secret": {"secretName": "creds"}},
                {
                    "name": "settings",
                    "configMap": {"name": "settings", "items": [{"key": "mode", "path": "m/mode"}]},
                },
                {"name": "host", "hostPath": {"path": "/srv"}},
                {"name": "work", "persistentVolumeClaim": {"claimName": "workspace"}},
            ],
            "containers": [
                {
                    "name": "session",
                    "image": "x",
                    "command": [
                        "sh",
                        "-c",
                        "cat /etc/creds/token /etc/settings/m/mode; echo; echo /srv/data; "
                        "echo kept > /work/file",
                    ],
                    "volumeMounts": [
                        {"name": "creds", "mountPath": "/etc/creds"},
                        {"name": "settings", "mountPath": "/etc/settings/"},
                        {"name": "host", "mountPath": "/srv"},
                        {"name": "work", "mountPath": "/work"},
                    ],
                }
            ],
        },
    )
    await eventually(phase(node, "volumes", "Succeeded"), "the pod to succeed")

    assert node.log("volumes") == "s3cr3tfast\n/srv/data\n", "an unsupported volume's path is left alone"
    assert (node.workdir / "claims" / "default" / "workspace" / "file").read_text() == "kept\n"
    events = node.store.select(node.kind("events"), "default", lambda obj: True)
    [warning] = [e for e in events if e["reason"] == "VolumeNotSupported"]
    assert warning["type"] == "Warning" and '"host" (hostPath)' in warning["message"]
    assert warning["involvedObject"]["name"] == "volumes"
