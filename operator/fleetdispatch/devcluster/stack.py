"""The whole dev cluster in one place: a real control plane, the node agent, the CRDs and the operator.

:class:`DevCluster` is what ``fleetdispatch dev`` runs and what the test fixtures start: the
:class:`~.controlplane.ControlPlane` (etcd, kube-apiserver, kube-controller-manager, kube-scheduler on
loopback), the :class:`~.nodeagent.NodeAgent` (``local`` pods in namespaces, ``instant`` pods for the
benches, or ``none``) or, for ``containers``, a real kubelet with containerd
(:class:`~.kubelet.ContainersNode`), the default StorageClass ``fleet-local`` and its provisioner
(:mod:`.storage`, as cluster admin), fleet-dispatch's CRDs applied and established, and the operator's
identity: the chart's ServiceAccount and exactly the chart's RBAC (``helm template`` of
``charts/fleet-dispatch`` with ``watch.allNamespaces``), with a token for it in ``operator.kubeconfig``, and
the supervisors' heartbeat identity (the chart's ServiceAccount, Role and RoleBinding of ``heartbeat.yaml``)
in the ``default`` namespace (:func:`heartbeat_identity` renders it for others; :func:`serve` gives it to
every namespace as it appears). The operator itself is a separate process (``fleetdispatch operator``),
started by :func:`serve` (with the heartbeat on, as the chart's default) or by the tests.

:class:`BackgroundCluster` runs one in a thread with its own event loop, for synchronous callers (pytest).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import yaml

from fleetdispatch.api import names
from fleetdispatch.client.credentials import Credentials
from fleetdispatch.client.kubeapi import KubeApi
from fleetdispatch.devcluster.controlplane import (
    ControlPlane,
    ControlPlaneError,
    free_port,
    kubeconfig,
    tools_folder,
)
from fleetdispatch.devcluster.kubelet import ContainersNode
from fleetdispatch.devcluster.kubelet import unavailable as containers_unavailable
from fleetdispatch.devcluster.nodeagent import IMAGE_ENTRYPOINTS, ImageEntrypoint, NodeAgent
from fleetdispatch.devcluster.storage import STORAGE_CLASS, LocalProvisioner
from fleetdispatch.validation import manifests

# containers: a real kubelet with containerd and runc (:mod:`.kubelet`) instead of the node agent.
RuntimeMode = Literal["local", "instant", "none", "containers"]
OPERATOR_NAMESPACE = "fleet-system"
OPERATOR_RELEASE = "fleet-dispatch"
OPERATOR_ACCOUNT = "fleet-dispatch"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
# The chart's default heartbeat account (heartbeat.serviceAccountName); `fleetdispatch dev` gives it to the
# `default` namespace and runs the operator with it.
HEARTBEAT_ACCOUNT = "fleet-dispatch-supervisor"
DEV_NAMESPACE = "default"
_REPOSITORY = Path(__file__).resolve().parents[3]
CHART = _REPOSITORY / "charts" / "fleet-dispatch"


def chart_rbac(namespace: str = OPERATOR_NAMESPACE, *values: str) -> list[dict[str, Any]]:
    """The chart's ServiceAccount and RBAC for the operator, rendered by ``helm template``."""
    return _render_chart(
        namespace,
        ("watch.allNamespaces=true", *values),
        ("templates/serviceaccount.yaml", "templates/rbac.yaml"),
    )


def heartbeat_identity(*namespaces: str) -> list[dict[str, Any]]:
    """The chart's heartbeat ServiceAccount, Role and RoleBinding for `namespaces` (``helm template``)."""
    listed = ",".join(namespaces)
    return _render_chart(
        OPERATOR_NAMESPACE,
        ("watch.allNamespaces=true", "heartbeat.enabled=true", f"heartbeat.namespaces={{{listed}}}"),
        ("templates/heartbeat.yaml",),
    )


def _render_chart(namespace: str, values: Sequence[str], templates: Sequence[str]) -> list[dict[str, Any]]:
    helm = shutil.which("helm") or str(tools_folder() / "bin" / "helm")
    if not os.access(helm, os.X_OK):
        raise ControlPlaneError(
            "helm is needed to render the chart's RBAC: run `make tools` (or put helm on PATH)"
        )
    rendered = subprocess.run(
        [
            helm,
            "template",
            OPERATOR_RELEASE,
            str(CHART),
            "--namespace",
            namespace,
            *(part for value in values for part in ("--set", value)),
            *(part for template in templates for part in ("--show-only", template)),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


class DevCluster:
    """Control plane + node agent + CRDs + the operator's identity: ``async with DevCluster() as cluster``."""

    def __init__(
        self,
        *,
        port: int = 0,
        runtime: RuntimeMode = "local",
        workdir: Path | None = None,
        data_dir: Path | None = None,
        crds: bool = True,
        images: Mapping[str, ImageEntrypoint] = IMAGE_ENTRYPOINTS,
    ) -> None:
        """``images``: the entrypoints the node agent runs for a container with no ``command``."""
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="fleetdispatch-dev-")
            workdir = Path(self._temporary.name)
        self.workdir = workdir
        self.plane = ControlPlane(workdir / "controlplane", port=port, data_dir=data_dir)
        self._mode = runtime
        self._crds = crds
        self._images = images
        self.agent: NodeAgent | None = None
        self.node: ContainersNode | None = None
        self._agent_api: KubeApi | None = None
        self._agent_task: asyncio.Task[None] | None = None
        self._storage_api: KubeApi | None = None
        self._storage_task: asyncio.Task[None] | None = None
        self.operator_kubeconfig = workdir / "operator.kubeconfig"

    @property
    def url(self) -> str:
        return self.plane.url

    @property
    def audit_log(self) -> Path:
        return self.plane.audit_log

    def admin_kubeconfig(self, namespace: str = "default") -> str:
        return self.plane.admin_kubeconfig(namespace)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.plane.start)
        try:
            await loop.run_in_executor(None, self._setup)
            self._start_storage()
            if self._mode == "containers":
                self.node = ContainersNode(self.plane, self.workdir / "containers")
                await loop.run_in_executor(None, self.node.start)
            elif self._mode != "none":
                client, serving = self.plane.node_credentials()
                self._agent_api = KubeApi(
                    Credentials(
                        server=self.url,
                        ca_file=str(self.plane.ca),
                        certificate_file=str(client.certificate),
                        key_file=str(client.key),
                    ),
                    user_agent="fleetdispatch-node",
                )
                self.agent = NodeAgent(
                    self._agent_api,
                    self.workdir / "node",
                    api_url=self.url,
                    serving=(serving.certificate, serving.key),
                    client_ca=self.plane.ca,
                    mode=self._mode,
                    images=self._images,
                )
                self._agent_task = asyncio.create_task(self.agent.run(), name="fleetdispatch-node-agent")
                registered = asyncio.create_task(self.agent.registered.wait())
                await asyncio.wait(
                    {registered, self._agent_task}, timeout=60, return_when=asyncio.FIRST_COMPLETED
                )
                if self._agent_task.done():
                    await self._agent_task
                if not registered.done():
                    registered.cancel()
                    raise ControlPlaneError("the node agent did not register its Node within 60 s")
        except BaseException:
            await self.stop()
            raise

    def _start_storage(self) -> None:
        """The default StorageClass's provisioner, as cluster admin, with its volumes in the node's folder."""
        self._storage_api = KubeApi(
            Credentials(
                server=self.url,
                ca_file=str(self.plane.ca),
                certificate_file=str(self.plane.admin.certificate),
                key_file=str(self.plane.admin.key),
            ),
            user_agent="fleetdispatch-dev-storage",
        )
        provisioner = LocalProvisioner(self._storage_api, self.workdir / "node" / "persistent-volumes")
        self._storage_task = asyncio.create_task(provisioner.run(), name="fleetdispatch-dev-storage")

    def _setup(self) -> None:
        """CRDs established, and the operator's ServiceAccount with the chart's RBAC and a token."""
        if self._crds:
            crds = list(manifests.crds().values())
            self.plane.apply(crds)
            for crd in crds:
                self._wait_established(crd["metadata"]["name"])
        self.plane.apply(
            [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}]
        )
        self.plane.apply(chart_rbac())
        self.plane.apply([STORAGE_CLASS])
        # The supervisors' heartbeat identity where `fleetdispatch dev` users create dispatches by default.
        self.plane.apply(heartbeat_identity(DEV_NAMESPACE))
        status, body = self.plane.request(
            "POST",
            names.SERVICE_ACCOUNTS.path(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, "token"),
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 31536000},
            },
        )
        if status != 201:
            raise ControlPlaneError(
                f"no token for the operator's service account: {status} {body.get('message')}"
            )
        self.operator_kubeconfig.write_text(
            kubeconfig(self.url, self.plane.ca, OPERATOR_USER, token=str(body["status"]["token"])),
            encoding="utf-8",
        )
        self.operator_kubeconfig.chmod(0o600)

    async def grant_heartbeat(self, stop: asyncio.Event, every: float = 1.0) -> None:
        """Give each namespace the heartbeat identity as it appears, until `stop`: ``fleetdispatch dev``'s
        operator watches all namespaces, as the chart's would with ``heartbeat.namespaces`` listing them all.
        A dispatch whose pod is created before that (within ``every``) runs without the heartbeat."""
        loop = asyncio.get_running_loop()
        granted = {DEV_NAMESPACE}
        while not stop.is_set():
            status, body = await loop.run_in_executor(
                None, self.plane.request, "GET", names.NAMESPACES.path()
            )
            fresh = sorted(
                str(item["metadata"]["name"])
                for item in body.get("items") or []
                if status == 200
                and item["metadata"]["name"] not in granted
                and not item["metadata"].get("deletionTimestamp")
                and not str(item["metadata"]["name"]).startswith("kube-")
                and item["metadata"]["name"] != OPERATOR_NAMESPACE
            )
            if fresh:
                try:
                    await loop.run_in_executor(None, self.plane.apply, heartbeat_identity(*fresh))
                except ControlPlaneError:
                    pass  # a namespace being deleted meanwhile: tried again next round
                else:
                    granted.update(fresh)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    def _wait_established(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, crd = self.plane.request("GET", names.CUSTOM_RESOURCE_DEFINITIONS.path(name=name))
            conditions = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
            if conditions.get("Established") == "True":
                return
            time.sleep(0.05)
        raise ControlPlaneError(f"CRD {name} not established after {timeout} s")

    async def stop(self) -> None:
        if self.agent is not None:
            await self.agent.close()
        if self._agent_task is not None:
            self._agent_task.cancel()
            await asyncio.gather(self._agent_task, return_exceptions=True)
        if self._agent_api is not None:
            await self._agent_api.close()
        if self._storage_task is not None:
            self._storage_task.cancel()
            await asyncio.gather(self._storage_task, return_exceptions=True)
        if self._storage_api is not None:
            await self._storage_api.close()
        if self.node is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.node.stop)
        await asyncio.get_running_loop().run_in_executor(None, self.plane.stop)
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None

    def failed(self) -> str | None:
        """Which part has died, if one has."""
        component = self.plane.failed()
        if component is not None:
            return f"{component.name} exited with {component.exited()}:\n{component.tail(1500)}"
        if self._agent_task is not None and self._agent_task.done():
            return "the node agent stopped"
        if self.node is not None and (died := self.node.failed()) is not None:
            return died
        if self._storage_task is not None and self._storage_task.done():
            return "the dev storage provisioner stopped"
        return None

    async def __aenter__(self) -> DevCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class BackgroundCluster:
    """A :class:`DevCluster` on a thread of its own: ``with BackgroundCluster() as cluster: ...``."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleetdispatch-dev", daemon=True)
        self.cluster: DevCluster | None = None

    @property
    def dev(self) -> DevCluster:
        assert self.cluster is not None
        return self.cluster

    @property
    def url(self) -> str:
        return self.dev.url

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """The cluster admin's kubeconfig (what a user's ``kubectl`` gets)."""
        path.write_text(self.dev.admin_kubeconfig(namespace), encoding="utf-8")
        path.chmod(0o600)
        return path

    def _submit(self, coroutine: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def __enter__(self) -> BackgroundCluster:
        self._thread.start()

        async def start() -> DevCluster:
            cluster = DevCluster(**self._options)
            await cluster.start()
            return cluster

        try:
            self.cluster = self._submit(start()).result(180)
        except BaseException:
            self._end_loop()
            raise
        return self

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            if self.cluster is not None:
                self._submit(self.cluster.stop()).result(60)
        finally:
            self._end_loop()


# ---- the operator as a process ---------------------------------------------------------------------------


def audit_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The audit log's events from byte ``offset`` (complete lines only), and the offset after them."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events, offset + end


class AuditWatch:
    """Follows the audit log: which watches a user has open now (started and not completed)."""

    def __init__(self, path: Path, user: str) -> None:
        self.path, self.user = path, user
        self._offset = 0
        self._open: dict[str, str] = {}  # auditID -> resource

    def open_watches(self) -> set[str]:
        events, self._offset = audit_events(self.path, self._offset)
        for event in events:
            if event.get("verb") != "watch" or (event.get("user") or {}).get("username") != self.user:
                continue
            resource = str((event.get("objectRef") or {}).get("resource") or "")
            if event.get("stage") == "ResponseStarted":
                self._open[event["auditID"]] = resource
            elif event.get("stage") in ("ResponseComplete", "Panic"):
                self._open.pop(event["auditID"], None)
        return set(self._open.values())


def start_operator(
    cluster: DevCluster,
    log: Path,
    *args: str,
    kubeconfig: Path | None = None,
    user: str = OPERATOR_USER,
    python_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> subprocess.Popen[bytes]:
    """``fleetdispatch operator`` (as the chart's identity unless ``kubeconfig``/``user`` say otherwise),
    returned once the audit log shows it watching dispatches and pods; stopped and raised when it exits
    or does not watch within ``timeout``. ``python_args`` go to the interpreter (``-m cProfile ...``)."""
    watches = AuditWatch(cluster.audit_log, user)
    watches.open_watches()  # what is open now is someone else's (a killed predecessor's)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig or cluster.operator_kubeconfig)}
    command = [sys.executable, *python_args, "-m", "fleetdispatch.cli", "operator", *args]
    with log.open("ab") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not {"fleetdispatches", "pods"} <= watches.open_watches():
        problem = None
        if process.poll() is not None:
            problem = f"the operator exited with {process.returncode}"
        elif time.monotonic() > deadline:
            problem = f"the operator does not watch after {timeout} s"
        if problem is not None:
            stop_operator(process)
            raise ControlPlaneError(f"{problem}:\n{_tail(log)}")
        time.sleep(0.05)
    return process


def stop_operator(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """TERM, then KILL after ``grace`` seconds; returns once it has exited."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def operator_process(cluster: DevCluster, log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """:func:`start_operator` for a ``with`` block: stopped at its end."""
    process = start_operator(cluster, log, *args)
    try:
        yield process
    finally:
        stop_operator(process)


def _tail(path: Path) -> str:
    try:
        return path.read_bytes()[-4000:].decode(errors="replace")
    except OSError:
        return ""


async def serve(
    *,
    kubeconfig_path: Path,
    port: int,
    runtime: RuntimeMode,
    announce: Callable[[str], None],
    stop: asyncio.Event | None = None,
    operator: bool = True,
    data_dir: Path | None = None,
    operator_args: Sequence[str] = (),
) -> int:
    """What ``fleetdispatch dev`` does: serve until ``stop`` is set (by default on SIGINT or SIGTERM).

    Returns 0 on a requested stop, 1 when a component died (which is announced, and the rest stopped).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if runtime == "containers" and (problem := containers_unavailable()) is not None:
        announce(f"fleetdispatch dev: {problem}; the local node agent runs pods instead")
        runtime = "local"
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    code = 0
    try:
        async with DevCluster(port=port, runtime=runtime, data_dir=data_dir) as cluster:
            kubeconfig_path.write_text(cluster.admin_kubeconfig(), encoding="utf-8")
            kubeconfig_path.chmod(0o600)
            for note in cluster.plane.notes:
                announce(f"fleetdispatch dev: {note}")
            announce(f"fleetdispatch dev: kube-apiserver at {cluster.url}, node runtime: {runtime}")
            announce(f"export KUBECONFIG={kubeconfig_path.resolve()}")
            with contextlib.ExitStack() as stack:
                process: subprocess.Popen[bytes] | None = None
                if operator:
                    log = cluster.workdir / "operator.log"
                    args = [
                        "--metrics-port",
                        str(free_port()),
                        "--health-port",
                        str(free_port()),
                        # Live status, as the chart installs it (heartbeat.enabled); every namespace gets the
                        # heartbeat's account (`grant_heartbeat`).
                        f"--heartbeat-service-account={HEARTBEAT_ACCOUNT}",
                        *operator_args,
                    ]
                    process = await loop.run_in_executor(
                        None, lambda: stack.enter_context(operator_process(cluster, log, *args))
                    )
                    announce(f"operator log: {log}")
                granting = asyncio.create_task(
                    cluster.grant_heartbeat(stop), name="fleetdispatch-dev-heartbeat"
                )
                what = "operator watching" if operator else "no operator (--no-operator)"
                kept = f"state kept in {data_dir}" if data_dir else "state goes away on exit"
                announce(f"ready: CRDs established, {what}; {kept} (Ctrl-C to stop)")
                while not stop.is_set():
                    died = cluster.failed()
                    if died is None and process is not None and process.poll() is not None:
                        died = f"the operator exited with {process.returncode}"
                    if died is not None:
                        announce(f"fleetdispatch dev: {died}; stopping the rest")
                        code = 1
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.5)
                granting.cancel()
                await asyncio.gather(granting, return_exceptions=True)
                announce("stopping: the operator, the node's pods, the control plane")
                await loop.run_in_executor(None, stack.close)
    finally:
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signal_number)
    return code
