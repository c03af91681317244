"""The node agent (the dev cluster's kubelet) as the API server shows it: plain pods, real processes.

Every test creates pods as the cluster admin in a fresh namespace of the session's cluster, lets the
scheduler bind them to the node `fleetdispatch-dev`, and asserts what a kubelet makes observable: the pod
status the node writes through pods/status, the containers' logs through the API server's /log
subresource (or `kubectl logs`), and, where it is the point, the host's processes. A pod that runs as root
needs a namespace enforcing Pod Security `privileged`; the security tests run in one enforcing
`restricted`, which admits only hardened pods.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from fleetdispatch.devcluster.nodeagent import DEFAULT_NODE, MAX_TERMINATION_MESSAGE_BYTES, _read_tail
from fleetdispatch.devcluster.stack import BackgroundCluster
from kube import ApiError
from kubectl import Kubectl, needs_kubectl
from operators import Namespace
from waiting import eventually

_names = itertools.count()
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# What Pod Security `restricted` demands of every pod and container.
RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


class Space:
    """A fresh namespace and the pods of one test, as its admin sees them."""

    def __init__(self, cluster: BackgroundCluster, pod_security: str) -> None:
        self.namespace = Namespace(
            cluster, f"nodeagent-{next(_names)}", runtime="local", pod_security=pod_security
        )
        self.name = self.namespace.name
        self.kube = self.namespace.kube

    def create(self, name: str, *containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": list(containers), **spec},
        }
        return self.kube.create(f"/api/v1/namespaces/{self.name}/pods", body)

    def pod(self, name: str) -> dict[str, Any]:
        return self.namespace.pod(name)

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.pod(name).get("status") or {})

    def wait(self, name: str, *phases: str, timeout: float = 60.0) -> dict[str, Any]:
        """The pod once its phase is one of ``phases`` (by default: finished)."""
        wanted = phases or ("Succeeded", "Failed")

        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") in wanted else None

        try:
            return dict(eventually(reached, timeout, f"{name} {wanted}"))
        except AssertionError:
            raise AssertionError(
                f"{self.name}/{name} not {wanted} after {timeout} s: {json.dumps(self.status(name))[:3000]}"
            ) from None

    def container(self, name: str, container: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
        status = self.status(name) if status is None else status
        every = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        return next(c for c in every if c["name"] == container)

    def state(self, name: str, container: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
        """The container's state's one entry (``terminated``, ``running`` or ``waiting``) with its kind."""
        [(kind, state)] = self.container(name, container, status)["state"].items()
        return {"kind": kind, **state}

    def running(self, name: str, container: str, timeout: float = 60.0) -> dict[str, Any]:
        def started() -> dict[str, Any] | None:
            with contextlib.suppress(StopIteration):
                state = self.state(name, container)
                if state["kind"] != "waiting":
                    return state
            return None

        return dict(eventually(started, timeout, f"{name}/{container} started"))

    def logs(self, pod: str, container: str) -> str:
        return self.namespace.logs(pod, container)

    def gone(self, name: str) -> bool:
        try:
            self.pod(name)
        except ApiError as error:
            return error.status == 404
        return False

    def delete(self, name: str, grace: int | None = None) -> None:
        self.namespace.delete_pod(name, grace)

    def close(self) -> None:
        with contextlib.suppress(ApiError):
            self.kube.delete(f"/api/v1/namespaces/{self.name}")


@contextlib.contextmanager
def _space(cluster: BackgroundCluster, pod_security: str) -> Iterator[Space]:
    space = Space(cluster, pod_security)
    try:
        yield space
    finally:
        space.close()


@pytest.fixture
def root(cluster: BackgroundCluster) -> Iterator[Space]:
    """A namespace whose pods may run as root (Pod Security `privileged`)."""
    with _space(cluster, "privileged") as space:
        yield space


@pytest.fixture
def restricted(cluster: BackgroundCluster) -> Iterator[Space]:
    """A namespace enforcing Pod Security `restricted`."""
    with _space(cluster, "restricted") as space:
        yield space


def sh(name: str, script: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "command": ["sh", "-c", script], **fields}


def python(name: str, script: str, **fields: Any) -> dict[str, Any]:
    """A container running a Python script (the node runs this machine's programs: `python` is on PATH)."""
    return {"name": name, "image": "python", "command": ["python", "-c", script], **fields}


def host_path(path: Path) -> dict[str, Any]:
    return {"name": "out", "hostPath": {"path": str(path), "type": "Directory"}}


OUT = [{"name": "out", "mountPath": "/out"}]
SHARED = [{"name": "shared", "mountPath": "/shared"}]
EMPTY_DIR = {"name": "shared", "emptyDir": {}}


def launcher_pid(container_status: dict[str, Any]) -> int:
    """The host PID of a container's launcher (the node agent's container ID is `fleetdispatch://PID`)."""
    return int(str(container_status["containerID"]).removeprefix("fleetdispatch://"))


def in_mount_namespace(namespace: str) -> dict[int, str]:
    """The host's processes in a mount namespace, with their command lines."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{entry}/ns/mnt") == namespace:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    found[int(entry)] = cmdline.read().replace(b"\0", b" ").decode().strip()
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class PodWatch:
    """Every event of one pod from now on (a watch through the API server), until it is DELETED."""

    def __init__(self, space: Space, name: str) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        version = space.pod(name)["metadata"]["resourceVersion"]
        query = urllib.parse.urlencode(
            {"watch": "1", "fieldSelector": f"metadata.name={name}", "resourceVersion": version}
        )
        self._url = f"{space.kube.url}/api/v1/namespaces/{space.name}/pods?{query}"
        self._context: ssl.SSLContext = space.kube._context
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        with urllib.request.urlopen(self._url, context=self._context, timeout=90) as response:
            for line in response:
                event = json.loads(line)
                self.events.append((event["type"], event["object"]))
                if event["type"] == "DELETED":
                    return

    def deleted(self, timeout: float) -> list[tuple[str, dict[str, Any]]]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"no DELETED event after {timeout} s: {self.events}"
        return self.events


# ---- status: phase, conditions, exit codes, termination messages ------------------------------------------


def test_a_pod_runs_and_reports_phase_conditions_exit_codes_and_logs(root: Space) -> None:
    root.create(
        "runner",
        sh("fails", 'echo "pid $$$$"; sleep 2; echo "bye" > /dev/termination-log; exit 3'),
        sh("passes", "sleep 2; echo fine"),
    )

    def ready() -> dict[str, Any] | None:
        status = root.status("runner")
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
        return status if conditions.get("Ready") == "True" else None

    # Running once a container has started; Ready once both have.
    running = eventually(ready, 60, "the pod Ready")
    assert running["phase"] == "Running"
    conditions = {c["type"]: c["status"] for c in running["conditions"]}
    assert conditions == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    assert root.state("runner", "fails", running)["kind"] == "running"
    assert root.pod("runner")["spec"]["nodeName"] == DEFAULT_NODE  # bound by the real scheduler

    final = root.wait("runner")
    assert final["phase"] == "Failed"
    fails, passes = root.state("runner", "fails", final), root.state("runner", "passes", final)
    assert (fails["kind"], fails["exitCode"], fails["reason"], fails["message"]) == (
        "terminated",
        3,
        "Error",
        "bye\n",
    )
    assert (passes["kind"], passes["exitCode"], passes["reason"]) == ("terminated", 0, "Completed")
    assert "message" not in passes
    after = {c["type"]: (c["status"], c.get("reason")) for c in final["conditions"]}
    assert after["Ready"] == after["ContainersReady"] == ("False", "PodCompleted")
    # Without shareProcessNamespace each container is PID 1 of its own PID namespace.
    assert root.logs("runner", "fails") == "pid 1\n"
    assert root.logs("runner", "passes") == "fine\n"


def test_a_container_killed_by_a_signal_exits_with_128_plus_its_number(root: Space) -> None:
    # (`$$$$`: Kubernetes expands `$$` in a command to `$`.) In a shared PID namespace the container's
    # process is not PID 1 (the pause is), so a signal kills it.
    root.create("signalled", sh("main", "kill -KILL $$$$"), shareProcessNamespace=True)
    state = root.state("signalled", "main", root.wait("signalled"))
    assert (state["exitCode"], state["reason"], state.get("signal")) == (128 + signal.SIGKILL, "Error", 9)


def test_a_termination_message_is_cut_to_its_last_4096_bytes(root: Space) -> None:
    script = "open('/dev/termination-log', 'w').write('a' * 1000 + 'b' * 4093 + 'end')"
    custom = "open('/tmp/outcome', 'w').write('custom path')"
    root.create(
        "talkative",
        python("long", script),
        python("custom", custom, terminationMessagePath="/tmp/outcome"),
    )
    final = root.wait("talkative")
    message = root.state("talkative", "long", final)["message"]
    assert len(message.encode()) == MAX_TERMINATION_MESSAGE_BYTES
    assert message == "b" * 4093 + "end"
    assert root.state("talkative", "custom", final)["message"] == "custom path"


def test_the_termination_log_cannot_be_made_a_fifo_and_a_fifo_never_blocks_the_node(
    root: Space, tmp_path: Path
) -> None:
    # The container's message file is a bind mount: it cannot be removed, so no FIFO takes its place ...
    script = (
        "rm /dev/termination-log 2>/dev/null; echo rm=$?; "
        "mkfifo /dev/termination-log 2>/dev/null; echo mkfifo=$?; "
        "if [ -p /dev/termination-log ]; then echo fifo; else echo regular; fi; "
        "echo still-mine > /dev/termination-log; exit 1"
    )
    root.create("fifo", sh("main", script))
    state = root.state("fifo", "main", root.wait("fifo"))
    assert (state["exitCode"], state["message"]) == (1, "still-mine\n")
    log = root.logs("fifo", "main").split()
    assert log[0] != "rm=0" and log[1] != "mkfifo=0" and log[2] == "regular", log
    # ... and the node reads a message without blocking, whatever the file is: a FIFO with no writer gives ''.
    fifo = tmp_path / "termination-log"
    os.mkfifo(fifo)
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(_read_tail(fifo, 4096)), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive() and result == [""]


def test_fallback_to_logs_on_error_uses_the_logs_tail_only_for_a_failure_without_a_message(
    root: Space,
) -> None:
    fallback = {"terminationMessagePolicy": "FallbackToLogsOnError"}
    root.create(
        "fallback",
        sh("fails", "echo step one; echo something broke >&2; exit 2", **fallback),
        sh("explains", "echo noise; echo 'my own words' > /dev/termination-log; exit 2", **fallback),
        sh("passes", "echo all good", **fallback),
        sh("file-policy", "echo not a message; exit 2"),
    )
    final = root.wait("fallback")
    assert root.state("fallback", "fails", final)["message"] == "step one\nsomething broke\n"
    assert root.state("fallback", "explains", final)["message"] == "my own words\n"
    assert "message" not in root.state("fallback", "passes", final)
    assert "message" not in root.state("fallback", "file-policy", final)


def test_a_missing_command_ends_as_a_start_error_not_a_hang(root: Space) -> None:
    root.create("missing", {"name": "main", "image": "busybox", "command": ["/no/such/program", "--flag"]})
    final = root.wait("missing", timeout=30)
    state = root.state("missing", "main", final)
    assert final["phase"] == "Failed"
    assert (state["kind"], state["exitCode"], state["reason"]) == ("terminated", 128, "StartError")
    assert "/no/such/program" in state["message"]


# ---- order: init containers, native sidecars ---------------------------------------------------------------


def test_init_containers_run_in_order_before_the_main_containers(root: Space) -> None:
    root.create(
        "ordered",
        sh("main", "cat /shared/order", volumeMounts=SHARED),
        initContainers=[
            sh("first", "sleep 1; echo first >> /shared/order", volumeMounts=SHARED),
            sh("second", "echo second >> /shared/order", volumeMounts=SHARED),
        ],
        volumes=[EMPTY_DIR],
    )
    final = root.wait("ordered")
    assert final["phase"] == "Succeeded"
    assert root.logs("ordered", "main") == "first\nsecond\n"
    assert [c["state"]["terminated"]["reason"] for c in final["initContainerStatuses"]] == ["Completed"] * 2


def test_a_failed_init_container_fails_the_pod_and_nothing_after_it_runs(root: Space) -> None:
    root.create(
        "broken-init",
        sh("main", "echo should not run"),
        initContainers=[sh("broken", "exit 4"), sh("later", "echo should not run")],
    )
    final = root.wait("broken-init")
    assert final["phase"] == "Failed"
    assert root.state("broken-init", "broken", final)["exitCode"] == 4
    assert root.state("broken-init", "later", final)["kind"] == "waiting"
    assert root.state("broken-init", "main", final)["kind"] == "waiting"
    initialized = next(c for c in final["conditions"] if c["type"] == "Initialized")
    assert initialized["status"] == "False"


def test_a_native_sidecar_starts_first_and_stops_last(root: Space) -> None:
    sidecar = sh(
        "sidecar",
        "echo up > /shared/sidecar; "
        "trap 'if [ -e /shared/main ]; then echo stopped after main; fi; exit 0' TERM; "
        "while :; do sleep 0.1; done",
        restartPolicy="Always",
        volumeMounts=SHARED,
    )
    main = sh(
        "main",
        "if [ -e /shared/sidecar ]; then echo sidecar was up; fi; sleep 1; echo done > /shared/main",
        volumeMounts=SHARED,
    )
    root.create(
        "sidecar", main, initContainers=[sidecar], volumes=[EMPTY_DIR], terminationGracePeriodSeconds=10
    )
    final = root.wait("sidecar")
    assert final["phase"] == "Succeeded"
    assert root.logs("sidecar", "main") == "sidecar was up\n"
    assert root.logs("sidecar", "sidecar") == "stopped after main\n"
    stopped = root.state("sidecar", "sidecar", final)
    assert (stopped["kind"], stopped["exitCode"]) == ("terminated", 0)
    assert stopped["finishedAt"] >= root.state("sidecar", "main", final)["finishedAt"]


# ---- namespaces: processes, mounts ------------------------------------------------------------------------

LIST_PROCESSES = """
import json, os, time

def processes():
    found = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/cmdline' % entry, 'rb') as cmdline:
                    found[int(entry)] = cmdline.read().replace(b'\\0', b' ').decode().strip()
            except OSError:
                pass
    return found

deadline = time.time() + 30
while time.time() < deadline and 'sleep 30' not in processes().values():
    time.sleep(0.1)
print(json.dumps(sorted(processes().items())))
"""


def test_share_process_namespace_gives_the_pod_one_pid_namespace(root: Space) -> None:
    root.create(
        "shared-pids",
        {"name": "sleeper", "image": "busybox", "command": ["sleep", "30"]},
        python("looker", LIST_PROCESSES),
        shareProcessNamespace=True,
        terminationGracePeriodSeconds=1,
    )
    root.wait("shared-pids", "Running")
    looker = root.state(
        "shared-pids", "looker", eventually(lambda: _terminated(root, "shared-pids", "looker"), 60)
    )
    assert looker["exitCode"] == 0
    seen = dict(json.loads(root.logs("shared-pids", "looker")))
    # Exactly the pod's processes: the pause as PID 1, the sibling's, and its own.
    assert "--pause" in seen.pop(1)
    assert sorted(seen.values()) == sorted(["sleep 30", f"python -c {LIST_PROCESSES}".strip()])
    root.delete("shared-pids", grace=1)
    eventually(lambda: root.gone("shared-pids"), 30, "the pod deleted")


def _terminated(space: Space, pod: str, container: str) -> dict[str, Any] | None:
    status = space.status(pod)
    with contextlib.suppress(StopIteration):
        if space.state(pod, container, status)["kind"] == "terminated":
            return status
    return None


SELF_REVIEW = f"""
import json, os, ssl, urllib.request
folder = '{SERVICE_ACCOUNT_DIR}'
token = open(folder + '/token').read()
context = ssl.create_default_context(cafile=folder + '/ca.crt')
url = 'https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews' % (
    os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT'])
body = json.dumps({{'apiVersion': 'authentication.k8s.io/v1', 'kind': 'SelfSubjectReview'}}).encode()
request = urllib.request.Request(url, data=body, method='POST', headers={{
    'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json'}})
with urllib.request.urlopen(request, context=context, timeout=20) as response:
    print('user', json.load(response)['status']['userInfo']['username'])
print('namespace', open(folder + '/namespace').read())
"""


def test_volumes_are_at_their_mount_paths_and_the_token_authenticates_as_the_pods_account(
    root: Space,
) -> None:
    kube, namespace = root.kube, root.name
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "runner"}})
    kube.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "creds"}, "stringData": {"password": "hunter2"}},
    )
    kube.create(
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"metadata": {"name": "settings"}, "data": {"mode": "fast"}},
    )
    mounts = [
        *SHARED,
        {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
        {"name": "settings", "mountPath": "/opt/settings"},
    ]
    reader = sh(
        "reader",
        "cat /shared/from-init /etc/creds/password; echo; cat /opt/settings/mode; echo; "
        "if touch /etc/creds/new 2>/dev/null; then echo writable; else echo read-only; fi; "
        'python -c "$SCRIPT"',
        env=[{"name": "SCRIPT", "value": SELF_REVIEW}],
        volumeMounts=mounts,
    )
    eventually(lambda: _exists(root, "serviceaccounts/runner"), 30, "the ServiceAccount")
    root.create(
        "volumes",
        reader,
        initContainers=[sh("writer", "echo written by init > /shared/from-init", volumeMounts=SHARED)],
        serviceAccountName="runner",
        volumes=[
            EMPTY_DIR,
            {"name": "creds", "secret": {"secretName": "creds"}},
            {"name": "settings", "configMap": {"name": "settings"}},
        ],
    )
    final = root.wait("volumes")
    log = root.logs("volumes", "reader")
    assert final["phase"] == "Succeeded", log
    assert log.splitlines() == [
        "written by init",
        "hunter2",
        "fast",
        "read-only",
        f"user system:serviceaccount:{namespace}:runner",
        f"namespace {namespace}",
    ]
    # The API server injected the token as a projected volume (the ServiceAccount admission), not the node.
    volumes = root.pod("volumes")["spec"]["volumes"]
    assert any(
        "serviceAccountToken" in source
        for v in volumes
        for source in (v.get("projected") or {}).get("sources", [])
    )
    assert (
        not Path("/etc/creds").exists() and not Path("/opt/settings/mode").exists()
    )  # the host is not written


def _exists(space: Space, path: str) -> bool:
    try:
        space.kube.get(f"/api/v1/namespaces/{space.name}/{path}")
    except ApiError:
        return False
    return True


def test_the_termination_message_file_is_each_containers_own_even_in_a_shared_volume(root: Space) -> None:
    path = {"terminationMessagePath": "/shared/outcome", "volumeMounts": SHARED}
    root.create(
        "outcomes",
        sh("first", "echo from first > /shared/outcome; sleep 2; cat /shared/outcome", **path),
        sh("second", "sleep 1; echo from second > /shared/outcome", **path),
        volumes=[EMPTY_DIR],
    )
    final = root.wait("outcomes")
    assert root.state("outcomes", "first", final)["message"] == "from first\n"
    assert root.state("outcomes", "second", final)["message"] == "from second\n"
    assert root.logs("outcomes", "first") == "from first\n"  # the other container's write did not reach it


# ---- security contexts ------------------------------------------------------------------------------------


def test_run_as_user_and_group_no_new_privileges_and_dropped_capabilities(restricted: Space) -> None:
    security = {**RESTRICTED_POD, "runAsUser": 1000, "runAsGroup": 3000, "supplementalGroups": [4000]}
    script = "id -u; id -g; id -G; grep -E '^(NoNewPrivs|CapBnd|CapEff|CapPrm):' /proc/self/status"
    restricted.create(
        "hardened", sh("main", script, securityContext=RESTRICTED_CONTAINER), securityContext=security
    )
    final = restricted.wait("hardened")
    assert final["phase"] == "Succeeded"
    lines = [line.replace("\t", " ").split() for line in restricted.logs("hardened", "main").splitlines()]
    assert lines[:3] == [["1000"], ["3000"], ["3000", "4000"]]
    fields = dict((key.rstrip(":"), value) for key, value in lines[3:])
    assert fields == {
        "NoNewPrivs": "1",
        "CapBnd": "0000000000000000",
        "CapEff": "0000000000000000",
        "CapPrm": "0000000000000000",
    }


def test_a_root_container_without_no_new_privs_keeps_its_privileges(root: Space) -> None:
    # The contrast: nothing asked, nothing dropped (so the test above can fail).
    root.create("plain", sh("main", "id -u; grep -E '^(NoNewPrivs|CapBnd):' /proc/self/status"))
    root.wait("plain")
    uid, *fields = [line.split() for line in root.logs("plain", "main").splitlines()]
    status = {key.rstrip(":"): value for key, value in fields}
    assert uid == ["0"] and status["NoNewPrivs"] == "0" and status["CapBnd"] != "0000000000000000"


def test_run_as_non_root_without_a_user_is_a_create_container_config_error(restricted: Space) -> None:
    restricted.create(
        "rootless",
        sh("main", "echo never", securityContext=RESTRICTED_CONTAINER),
        securityContext=RESTRICTED_POD,
    )

    def waiting() -> dict[str, Any] | None:
        with contextlib.suppress(StopIteration):
            state = restricted.state("rootless", "main")
            if state.get("reason") == "CreateContainerConfigError":
                return state
        return None

    state = eventually(waiting, 60, "CreateContainerConfigError")
    assert "runAsNonRoot" in state["message"]
    assert restricted.status("rootless")["phase"] == "Pending"
    restricted.delete("rootless")
    eventually(lambda: restricted.gone("rootless"), 30, "the pod deleted")


# ---- deletion and what a pod leaves behind ----------------------------------------------------------------


def test_graceful_deletion_sends_term_then_finishes_the_delete(root: Space, tmp_path: Path) -> None:
    script = "trap 'echo got TERM > /out/polite; exit 0' TERM; while :; do sleep 0.1; done"
    root.create("polite", sh("main", script, volumeMounts=OUT), volumes=[host_path(tmp_path)])
    launcher = launcher_pid(root.container("polite", "main", root.wait("polite", "Running")))
    watch = PodWatch(root, "polite")
    started = time.monotonic()
    root.delete("polite")  # the pod's grace: the default 30 s
    events = watch.deleted(30)
    assert time.monotonic() - started < 15
    assert (tmp_path / "polite").read_text() == "got TERM\n"
    last_status = [obj["status"] for kind, obj in events if kind == "MODIFIED"][-1]
    state = root.state("polite", "main", last_status)
    assert (state["kind"], state["exitCode"]) == ("terminated", 0)
    assert events[-1][0] == "DELETED"
    eventually(lambda: not alive(launcher), 10, "the container's launcher gone")


def test_a_process_ignoring_term_is_killed_after_the_grace_period(root: Space, tmp_path: Path) -> None:
    script = "trap 'echo got TERM >> /out/stubborn' TERM; while :; do sleep 0.1; done"
    root.create(
        "stubborn",
        sh("main", script, volumeMounts=OUT),
        volumes=[host_path(tmp_path)],
        terminationGracePeriodSeconds=3,
    )
    launcher = launcher_pid(root.container("stubborn", "main", root.wait("stubborn", "Running")))
    watch = PodWatch(root, "stubborn")
    started = time.monotonic()
    root.delete("stubborn")
    events = watch.deleted(40)
    elapsed = time.monotonic() - started
    assert 3 <= elapsed < 20, elapsed
    assert "got TERM" in (tmp_path / "stubborn").read_text()  # it had the TERM, and carried on
    last_status = [obj["status"] for kind, obj in events if kind == "MODIFIED"][-1]
    state = root.state("stubborn", "main", last_status)
    assert (state["kind"], state["exitCode"]) == ("terminated", 128 + signal.SIGKILL)
    assert not alive(launcher)


def test_a_daemonised_child_does_not_outlive_its_container(root: Space, tmp_path: Path) -> None:
    # setsid and a double fork: the daemon is reparented to the pod's pause (a shared PID namespace, so the
    # kernel does not end it with the container's PID 1); the container's end must still end it.
    script = (
        "setsid sh -c '(exec sleep 301 &)'; echo started; while [ ! -e /out/go ]; do sleep 0.1; done; exit 0"
    )
    root.create(
        "daemon",
        sh("daemoniser", script, volumeMounts=OUT),
        sh("bystander", "trap 'exit 0' TERM; while :; do sleep 0.1; done"),
        volumes=[host_path(tmp_path)],
        shareProcessNamespace=True,
        terminationGracePeriodSeconds=2,
    )
    status = root.wait("daemon", "Running")
    launcher = launcher_pid(root.container("daemon", "daemoniser", status))
    namespace = os.readlink(f"/proc/{launcher}/ns/mnt")
    assert namespace != os.readlink("/proc/self/ns/mnt")
    daemons = eventually(
        lambda: [pid for pid, command in in_mount_namespace(namespace).items() if command == "sleep 301"],
        30,
        "the daemon running",
    )
    [daemon] = daemons
    assert psutil.Process(daemon).ppid() != launcher  # reparented: no longer the container's child
    (tmp_path / "go").touch()
    eventually(lambda: _terminated(root, "daemon", "daemoniser"), 30, "the daemoniser finished")
    assert root.status("daemon")["phase"] == "Running"  # the pod (and its PID namespace) lives on
    assert root.state("daemon", "daemoniser")["exitCode"] == 0
    eventually(lambda: not alive(daemon), 10, "the daemon gone with its container")
    eventually(lambda: in_mount_namespace(namespace) == {}, 10, "nothing left in its mount namespace")
    root.delete("daemon")
    eventually(lambda: root.gone("daemon"), 30, "the pod deleted")


# ---- the kubelet API and the node -------------------------------------------------------------------------


@needs_kubectl
def test_kubectl_logs_reads_the_nodes_logs_through_the_api_server(
    root: Space, cluster: BackgroundCluster, tmp_path: Path
) -> None:
    kubectl = Kubectl(cluster.write_kubeconfig(tmp_path / "kubeconfig", root.name))
    root.create("chatty", sh("main", "echo one; echo two; sleep 2; echo three"), sh("other", "echo other"))
    root.wait("chatty", "Running")
    followed = kubectl.run("logs", "-f", "chatty", "-c", "main")  # returns when the container ends
    assert followed.stdout == "one\ntwo\nthree\n"
    root.wait("chatty")
    assert kubectl.run("logs", "chatty", "-c", "main", "--tail=1").stdout == "three\n"
    assert kubectl.run("logs", "chatty", "-c", "other").stdout == "other\n"
    assert kubectl.run("logs", "chatty").stdout == "one\ntwo\nthree\n"  # the first container by default
    missing = kubectl.run("logs", "chatty", "-c", "nobody", check=False)
    assert missing.returncode != 0 and "nobody" in missing.stderr


def test_a_large_log_is_served_by_tail_and_limit_without_reading_it_whole(
    root: Space, cluster: BackgroundCluster, tmp_path: Path
) -> None:
    """Three blocks of the node's 64 KiB reads: the tail is found backwards, limitBytes stops the stream,
    and a negative tailLines (which kubectl never sends, a direct client may) is refused."""
    kubectl = Kubectl(cluster.write_kubeconfig(tmp_path / "kubeconfig", root.name))
    root.create("large", sh("main", "seq 1 40000"))
    root.wait("large")
    assert kubectl.run("logs", "large", "--tail=2").stdout == "39999\n40000\n"
    assert kubectl.run("logs", "large", "--tail=0").stdout == ""
    assert kubectl.run("logs", "large", "--limit-bytes=6").stdout == "1\n2\n3\n"
    whole = kubectl.run("logs", "large").stdout.splitlines()
    assert len(whole) == 40000 and whole[-1] == "40000"
    agent = cluster.dev.agent
    assert agent is not None
    url = f"https://127.0.0.1:{agent.port}/containerLogs/{root.name}/large/main?tailLines=-1"
    context = ssl.create_default_context(cafile=str(cluster.dev.plane.ca))
    context.load_cert_chain(str(cluster.dev.plane.admin.certificate), str(cluster.dev.plane.admin.key))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, context=context, timeout=10)
    assert refused.value.code == 400


@pytest.mark.parametrize(
    ("annotation", "code", "message"),
    [
        ("3", 3, None),
        ("2147483648", 1, "2147483648 is not a 32-bit exit code"),
        ("-2147483649", 1, "-2147483649 is not a 32-bit exit code"),
        ("three", 1, "'three' is not an integer exit code"),
    ],
)
def test_an_instant_pod_exits_with_its_annotation_and_a_bad_one_is_explained(
    root: Space, annotation: str, code: int, message: str | None
) -> None:
    name = f"instant-{next(_names)}"
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "annotations": {
                "dev.fleet.dispatch.dev/runtime": "instant",
                "dev.fleet.dispatch.dev/exit-code": annotation,
                # Longer than the kubelet keeps: only its last 4096 bytes are reported.
                **({} if message else {"dev.fleet.dispatch.dev/termination-message": "x" * 5000 + "end"}),
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "session", "image": "none", "command": ["true"]}],
        },
    }
    root.kube.create(f"/api/v1/namespaces/{root.name}/pods", body)
    status = root.wait(name)
    state = root.state(name, "session", status)
    assert (status["phase"], state["exitCode"]) == ("Failed", code)
    if message is None:
        assert len(state["message"]) == MAX_TERMINATION_MESSAGE_BYTES and state["message"].endswith("end")
    else:
        assert message in state["message"]


def test_the_node_is_ready_and_renews_its_lease(root: Space) -> None:
    node = root.kube.get(f"/api/v1/nodes/{DEFAULT_NODE}")
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.37.2"
    assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] > 0
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{DEFAULT_NODE}"
    first = root.kube.get(lease_path)["spec"]
    assert first["holderIdentity"] == DEFAULT_NODE
    renewed = eventually(
        lambda: (spec := root.kube.get(lease_path)["spec"])["renewTime"] != first["renewTime"] and spec,
        30,
        "the Lease renewed",
    )
    assert renewed["renewTime"] > first["renewTime"]
