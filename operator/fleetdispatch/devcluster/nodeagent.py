"""The dev cluster's node agent: a kubelet that talks to the real API server and runs pods in namespaces.

:class:`NodeAgent` registers the Node ``fleetdispatch-dev`` (Ready, capacity, its Lease in
``kube-node-lease`` renewed every 10 s), watches the pods the scheduler binds to it
(``fieldSelector=spec.nodeName=<node>``) and runs them, as the node's identity ``system:node:<node>``
(so the Node authorizer and NodeRestriction admit exactly what a kubelet may do):

* **Containers run in Linux namespaces** (:mod:`.sandbox`, one launcher per container): a mount namespace
  per container in which every ``volumeMount`` is at its real ``mountPath`` and the container's own
  termination message file is bind-mounted at its ``terminationMessagePath``; one PID namespace per pod
  with a pause process as PID 1 when ``shareProcessNamespace: true`` (else one per container);
  ``runAsUser``/``runAsGroup``/supplemental groups, no new privileges and dropped capabilities as the pod
  asks. Images are not pulled: a container runs this machine's programs, with ``PATH`` starting at this
  Python's scripts folder (where the operator image has ``fleetdispatch``). A container without
  ``command`` runs its image's entrypoint, as a container runtime would, only for the images of
  :data:`IMAGE_ENTRYPOINTS` (by repository, any tag or digest: the project's image runs ``fleetdispatch``,
  its Dockerfile's ``ENTRYPOINT``; ``NodeAgent(images=...)`` gives another table); for any other image
  ``command`` is required. Everything a container starts, daemonised or not, stays in its mount namespace
  and dies with it.
* **Order as the kubelet's**: init containers in spec order (a native sidecar, ``restartPolicy: Always``,
  is started and left running; an ordinary one must exit 0), then the main containers together; when they
  have all exited the sidecars are stopped (TERM, KILL after ``terminationGracePeriodSeconds``), last.
* **Volumes**: ``emptyDir``, ``secret``, ``configMap``, ``downwardAPI``, ``projected`` (service account
  tokens from the TokenRequest API, bound to the pod; ConfigMaps; Secrets; the downward API), ``hostPath``
  and ``persistentVolumeClaim`` (the claim's bound PersistentVolume's ``hostPath`` or ``local`` folder, as
  the dev cluster's provisioner in :mod:`.storage` makes them; the pod waits while the claim is unbound).
* **Status as the kubelet writes it**, through ``pods/status``: phase, conditions (PodScheduled,
  Initialized, ContainersReady, Ready), per-container states with exit code (128 + N for signal N),
  reason (``Completed``, ``Error``, ``StartError``, ``ContainerStatusUnknown``) and the termination
  message (its last 4096 bytes, read without blocking; or the log's tail with ``FallbackToLogsOnError``).
* **Graceful deletion**: main containers, then sidecars, TERM, the pod's grace, KILL; the final status;
  then the delete with grace 0, as a kubelet finishes it.
* **The kubelet API** (HTTPS, client certificates of the cluster's CA): ``/containerLogs`` for ``kubectl
  logs`` (``follow``, ``tailLines``, ``limitBytes``) and ``/healthz``. No ``exec``.
* **Instant mode** (the benches) runs nothing: a bound pod completes at once, its session container
  exiting with the code of the annotation :data:`EXIT_CODE_ANNOTATION`.

Not done: pulling images, resource limits, probes (a running container is ready at once), container
restarts (``restartPolicy`` other than ``Never`` for main containers is treated as ``Never``), pod
networking (pods share the host's loopback; the README says so). Projected tokens are renewed at 80 % of
their lifetime (or after a day), as the kubelet renews them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import os
import platform
import re
import shutil
import signal
import ssl
import stat
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp
from aiohttp import web

from fleetdispatch.api import names
from fleetdispatch.api.names import session_container
from fleetdispatch.client.kubeapi import ApiError, KubeApi
from fleetdispatch.devcluster import sandbox
from fleetdispatch.session import protocol

Object = dict[str, Any]
Mode = Literal["local", "instant"]
T = TypeVar("T")

DEFAULT_NODE = "fleetdispatch-dev"
KUBELET_VERSION = "v1.37.2"
HOST_IP = "127.0.0.1"
EXIT_CODE_ANNOTATION = "dev.fleet.dispatch.dev/exit-code"
# A pod may pick its runtime on this node: local, instant, or none (left alone: whoever created it writes its
# status, as the tests of the operator's judgement do). One cluster then serves every kind of test.
RUNTIME_ANNOTATION = "dev.fleet.dispatch.dev/runtime"
RUNTIMES = ("local", "instant", "none")
NODE_LEASE_NAMESPACE = "kube-node-lease"
TERMINATION_MESSAGE_ANNOTATION = "dev.fleet.dispatch.dev/termination-message"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
DEFAULT_TERMINATION_GRACE_SECONDS = 30
MAX_TERMINATION_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
START_ERROR_EXIT_CODE = 128
LEASE_SECONDS = 40
LEASE_RENEW_SECONDS = 10.0
NODE_STATUS_SECONDS = 60.0
STATUS_WRITE_TRIES = 120  # a pod status write, retried every retry_seconds through an outage
CAPACITY = {"cpu": "64", "memory": "256Gi", "pods": "100000", "ephemeral-storage": "1Ti"}
NO_COMMAND = (
    "the dev cluster's node runs this machine's programs and does not pull images, so it knows the "
    "entrypoint of no image but {known}: set {field}.command (and args) to a program available on this "
    "machine"
)
_KILL_WAIT_SECONDS = 5.0
_READY_WAIT_SECONDS = 10.0
Role = Literal["sidecar", "init", "main"]


@dataclasses.dataclass(frozen=True)
class ImageEntrypoint:
    """What an image runs when a container gives no ``command``: its ``ENTRYPOINT`` and ``CMD``."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()

    def argv(self, command: list[str], args: list[str]) -> list[str]:
        """The container's command line, by Kubernetes' rule: ``command`` replaces the entrypoint and the
        image's ``CMD``; ``args`` alone replace the ``CMD``."""
        if command:
            return [*command, *args]
        return [*self.entrypoint, *(args or self.cmd)]


# The images whose entrypoint the node knows, by repository: the node pulls nothing, so it cannot read an
# image's configuration; it runs the machine's program of the same name instead, whatever the tag or digest
# (this machine's version of it). The project's image (the chart's `image.repository`): the Dockerfile's
# ENTRYPOINT ["fleetdispatch"] and CMD ["--help"].
PROJECT_IMAGE = "ghcr.io/fleet-dispatch/fleet-dispatch"
IMAGE_ENTRYPOINTS: Mapping[str, ImageEntrypoint] = {
    PROJECT_IMAGE: ImageEntrypoint(entrypoint=("fleetdispatch",), cmd=("--help",)),
}

logger = logging.getLogger(__name__)


def now() -> str:
    return protocol.format_time(time.time())


def micro_now() -> str:
    return protocol.format_micro_time(time.time())


class _ContainerError(Exception):
    """Why a container cannot be started yet: its waiting ``reason`` and ``message``; retried later."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclasses.dataclass(eq=False)
class _Container:
    name: str
    spec: Object
    role: Role
    state: Object = dataclasses.field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    process: asyncio.subprocess.Process | None = None
    namespace: str | None = None  # its mount namespace, while held open (so its identifier is its own)
    namespace_fd: int | None = None
    watcher: asyncio.Task[None] | None = None
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    killed: bool = False  # the node KILLed it (the grace ran out): its end is 137 whatever else is known

    @property
    def running(self) -> bool:
        return self.watcher is not None and not self.watcher.done()

    def hold(self, launcher: int, namespace: str) -> None:
        """Keep the container's mount namespace (the launcher's) open until :meth:`release`."""
        self.namespace_fd = sandbox.hold_namespace(launcher, namespace)
        self.namespace = None if self.namespace_fd is None else namespace

    def kill_all(self, host: str) -> None:
        """KILL every process left in its mount namespace (while held: never a later container's)."""
        if self.namespace is not None:
            with contextlib.suppress(ValueError):
                sandbox.kill_namespace(self.namespace, host=host)

    def release(self) -> None:
        if self.namespace_fd is not None:
            os.close(self.namespace_fd)
        self.namespace, self.namespace_fd = None, None

    @property
    def exit_code(self) -> int | None:
        terminated = self.state.get("terminated")
        return None if terminated is None else int(terminated["exitCode"])

    @property
    def ready(self) -> bool:
        if self.role == "init":
            return self.exit_code == 0
        return "running" in self.state

    def status(self) -> Object:
        status: Object = {
            "name": self.name,
            "image": str(self.spec.get("image") or ""),
            "imageID": "",
            "ready": self.ready,
            "started": "running" in self.state,
            "restartCount": 0,
            "state": dict(self.state),
            "lastState": {},
        }
        if self.process is not None:
            status["containerID"] = f"fleetdispatch://{self.process.pid}"
        return status


class NodeAgent:
    """The dev cluster's node: runs (``local``) or completes (``instant``) the pods bound to it."""

    def __init__(
        self,
        api: KubeApi,
        workdir: Path,
        *,
        api_url: str,
        serving: tuple[Path, Path] | None = None,
        client_ca: Path | None = None,
        node_name: str = DEFAULT_NODE,
        mode: Mode = "local",
        retry_seconds: float = 1.0,
        shutdown_grace_seconds: float = 2.0,
        images: Mapping[str, ImageEntrypoint] = IMAGE_ENTRYPOINTS,
    ) -> None:
        if mode == "local" and os.geteuid() != 0:
            raise RuntimeError(
                "the local runtime runs pods in Linux namespaces and needs root; "
                "use --runtime instant to run no processes"
            )
        self.api = api
        self.workdir = Path(workdir)
        self.api_url = api_url
        self.node_name = node_name
        self.mode = mode
        self.retry_seconds = retry_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.images = dict(images)
        self._serving = serving
        self._client_ca = client_ca
        self.port = 0
        self.host_namespace = sandbox.mount_namespace("self")
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._runs: set[_Pod] = set()
        self._finished: set[str] = set()  # uids of pods completed (instant) or given up
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        self._site: web.AppRunner | None = None
        self._node_uid = ""
        self.registered = asyncio.Event()

    # ---- public interface -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the kubelet API, register, then follow the node's pods until cancelled."""
        try:
            await self._serve()
            await self._register()
            self.spawn(self._heartbeat(), "node lease")
            await self._follow_pods()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop every container it started (TERM, then KILL after the shutdown grace); idempotent."""
        self._closed = True
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._shutdown(), name="fleetdispatch-node-close")
        await asyncio.shield(self._close_task)

    def log_path(self, namespace: str, pod: str, container: str | None) -> Path | None:
        run = self._pods.get((namespace, pod))
        if run is None:
            return None
        if container is None:
            annotations = run.pod["metadata"].get("annotations") or {}
            container = annotations.get("kubectl.kubernetes.io/default-container") or run.mains[0].name
        if container not in run.containers:
            return None
        return run.log_file(container)

    # ---- the node ---------------------------------------------------------------------------------------

    def _node_status(self) -> Object:
        stamp = now()
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return {
            "capacity": CAPACITY,
            "allocatable": CAPACITY,
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "fleetdispatch dev node",
                "containerRuntimeVersion": f"fleetdispatch-{self.mode}://0",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "conditions": [
                {
                    "type": kind,
                    "status": status,
                    "reason": reason,
                    "message": f"fleetdispatch node agent: {reason}",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
                for kind, status, reason in conditions
            ],
        }

    async def _register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
        }
        while True:
            try:
                node = await self.api.request("POST", names.NODES.path(), body)
                break
            except ApiError as error:
                if error.status == 409:
                    node = await self.api.request("GET", names.NODES.path(name=self.node_name))
                    break
                logger.warning("node agent: registering the node failed, retrying: %s", error)
                await asyncio.sleep(self.retry_seconds)
        self._node_uid = node["metadata"]["uid"]
        await self.api.request(
            "PATCH",
            names.NODES.path(name=self.node_name, subresource="status"),
            {"status": self._node_status()},
            content_type="application/merge-patch+json",
        )
        self.registered.set()

    async def _heartbeat(self) -> None:
        path = names.LEASES.path(NODE_LEASE_NAMESPACE, self.node_name)
        lease: Object = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.node_name,
                "namespace": NODE_LEASE_NAMESPACE,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self._node_uid}
                ],
            },
            "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_SECONDS},
        }
        loop = asyncio.get_running_loop()
        status_at = loop.time() + NODE_STATUS_SECONDS
        while not self._closed:
            lease["spec"]["renewTime"] = micro_now()
            try:
                try:
                    await self.api.request(
                        "PATCH", path, {"spec": lease["spec"]}, content_type="application/merge-patch+json"
                    )
                except ApiError as error:
                    if error.status != 404:
                        raise
                    await self.api.request("POST", names.LEASES.path(NODE_LEASE_NAMESPACE), lease)
                if loop.time() >= status_at:
                    status_at = loop.time() + NODE_STATUS_SECONDS
                    await self.api.request(
                        "PATCH",
                        names.NODES.path(name=self.node_name, subresource="status"),
                        {"status": self._node_status()},
                        content_type="application/merge-patch+json",
                    )
            except (TimeoutError, ApiError, OSError, aiohttp.ClientError) as error:
                logger.warning("node agent: heartbeat failed: %s", error)
            await asyncio.sleep(LEASE_RENEW_SECONDS)

    # ---- the kubelet API --------------------------------------------------------------------------------

    async def _serve(self) -> None:
        if self._serving is None:
            return
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self._client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(str(self._serving[0]), str(self._serving[1]))
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._logs)
        self._site = web.AppRunner(app, access_log=None)
        await self._site.setup()
        site = web.TCPSite(self._site, HOST_IP, 0, ssl_context=context)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        run = self._pods.get((info["namespace"], info["pod"]))
        if run is None or info["container"] not in run.containers:
            return web.Response(
                status=404,
                text=f"container {info['container']} of pod {info['namespace']}/{info['pod']} is not here",
            )
        if request.query.get("previous") in ("true", "1"):
            return web.Response(
                status=400,
                text="previous terminated container not found (containers are never restarted here)",
            )
        container = run.containers[info["container"]]
        path = run.log_file(container.name)
        try:
            tail = int(request.query["tailLines"]) if "tailLines" in request.query else None
            limit = int(request.query["limitBytes"]) if "limitBytes" in request.query else None
        except ValueError:
            return web.Response(status=400, text="tailLines and limitBytes must be integers")
        if (tail is not None and tail < 0) or (limit is not None and limit < 1):
            return web.Response(status=400, text="tailLines must be at least 0 and limitBytes at least 1")
        follow = request.query.get("follow") in ("true", "1")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        # In chunks from an offset, never the whole file in memory: a session's log may be large.
        offset = _tail_offset(path, tail) if tail is not None else 0
        sent = 0
        while limit is None or sent < limit:
            try:
                with path.open("rb") as file:
                    file.seek(offset)
                    chunk = file.read(65536 if limit is None else min(65536, limit - sent))
            except OSError:
                chunk = b""
            if chunk:
                offset += len(chunk)
                sent += len(chunk)
                await response.write(chunk)
                continue
            if not follow or container.exit_code is not None or self._pods.get(run.key) is not run:
                break
            await asyncio.sleep(0.2)
        await response.write_eof()
        return response

    # ---- pods -------------------------------------------------------------------------------------------

    async def _follow_pods(self) -> None:
        """List, then watch, the pods bound to this node; relist when the watch is too old."""
        selector = {"fieldSelector": f"spec.nodeName={self.node_name}"}
        version: str | None = None
        while not self._closed:
            try:
                if version is None:
                    listing = await self.api.request("GET", names.PODS.path(), params=selector)
                    version = str(listing["metadata"]["resourceVersion"])
                    listed = set()
                    for pod in listing.get("items") or []:
                        listed.add((pod["metadata"]["namespace"], pod["metadata"]["name"]))
                        self._on_event("ADDED", pod, relisted=True)
                    for key, run in list(self._pods.items()):
                        if key not in listed:
                            self._forget(run)
                params = {
                    **selector,
                    "watch": "1",
                    "resourceVersion": version,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": "300",
                }
                async for event in self.api.watch(names.PODS.path(), params):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            version = None
                        break
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind != "BOOKMARK":
                        self._on_event(str(kind), obj)
            # ClientError: the API server ended the stream mid-chunk (a restart, a cut connection)
            except (TimeoutError, ApiError, OSError, ValueError, aiohttp.ClientError) as error:
                if isinstance(error, ApiError) and error.status == 410:
                    version = None
                logger.warning("node agent: pod watch failed, resuming: %s", error)
                await asyncio.sleep(self.retry_seconds)

    def _on_event(self, event_type: str, pod: Object, *, relisted: bool = False) -> None:
        if self._closed:
            return
        try:
            self._react(event_type, pod, relisted)
        except Exception:
            metadata = pod.get("metadata") or {}
            logger.exception(
                "node agent: %s of pod %s/%s failed",
                event_type,
                metadata.get("namespace"),
                metadata.get("name"),
            )

    def _react(self, event_type: str, pod: Object, relisted: bool) -> None:
        metadata = pod["metadata"]
        key = (metadata["namespace"], metadata["name"])
        uid = metadata["uid"]
        run = self._pods.get(key)
        if run is not None and run.uid != uid:
            self._forget(run)
            run = None
        if event_type == "DELETED":
            if run is not None:
                self._forget(run)
            self._finished.discard(uid)
            return
        if metadata.get("deletionTimestamp"):
            if run is not None:
                run.pod = pod
                run.delete(int(metadata.get("deletionGracePeriodSeconds") or 0))
            elif uid not in self._finished or metadata.get("deletionGracePeriodSeconds") is not None:
                self._finished.add(uid)
                self.spawn(self._finish_deletion(metadata), f"delete {key}")
            return
        if run is not None:
            run.pod = pod
            return
        if uid in self._finished:
            return
        status = pod.get("status") or {}
        phase = status.get("phase", "Pending")
        if phase in ("Succeeded", "Failed"):
            self._finished.add(uid)
            return
        if relisted and (status.get("startTime") or phase == "Running"):
            # Started by an earlier run of this agent, whose processes are gone: as a kubelet that lost
            # its containers, report them unknown rather than run the pod twice.
            self._finished.add(uid)
            self.spawn(self._lost(pod), f"lost {key}")
            return
        mode = (metadata.get("annotations") or {}).get(RUNTIME_ANNOTATION, self.mode)
        if mode not in RUNTIMES:
            mode = self.mode
        if mode == "none":
            self._finished.add(uid)
            return
        if mode == "instant":
            self._finished.add(uid)
            self.spawn(self._complete_instantly(pod), f"complete {key}")
            return
        run = _Pod(self, pod)
        self._pods[key] = run
        self._runs.add(run)
        run.start()

    def _forget(self, run: _Pod) -> None:
        if self._pods.get(run.key) is run:
            del self._pods[run.key]
        self.spawn(run.remove(), f"remove {run.key}")

    async def _finish_deletion(self, metadata: Object) -> None:
        with contextlib.suppress(ApiError):
            await self.api.request(
                "DELETE",
                names.PODS.path(metadata["namespace"], metadata["name"]),
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": metadata["uid"]},
                },
            )

    async def _lost(self, pod: Object) -> None:
        stamp = now()

        def unknown(container: Object) -> Object:
            state = {
                "exitCode": 137,
                "reason": "ContainerStatusUnknown",
                "message": "The container could not be located when the pod was terminated",
                "finishedAt": stamp,
            }
            return _terminated_status(container, state)

        spec = pod["spec"]
        status: Object = {
            "phase": "Failed",
            "containerStatuses": [unknown(c) for c in spec["containers"]],
        }
        if spec.get("initContainers"):
            status["initContainerStatuses"] = [unknown(c) for c in spec["initContainers"]]
        await self.write_status(pod["metadata"]["namespace"], pod["metadata"]["name"], status)

    # ---- instant mode -----------------------------------------------------------------------------------

    async def _complete_instantly(self, pod: Object) -> None:
        metadata, spec = pod["metadata"], pod["spec"]
        annotations = metadata.get("annotations") or {}
        stamp = now()
        containers = spec["containers"]
        index = session_container([c["name"] for c in containers])
        session = containers[0 if index is None else index]["name"]
        code, message = _instant_outcome(annotations)

        def terminated(container: Object, exit_code: int, text: str | None) -> Object:
            state: Object = {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": stamp,
                "finishedAt": stamp,
            }
            if text:
                state["message"] = text
            return _terminated_status(container, state)

        status: Object = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
                {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
                *(
                    {"type": kind, "status": "False", "reason": "PodCompleted", "lastTransitionTime": stamp}
                    for kind in ("ContainersReady", "Ready")
                ),
            ],
            **_addresses(),
            "startTime": stamp,
            "containerStatuses": [
                terminated(c, code, message) if c["name"] == session else terminated(c, 0, None)
                for c in containers
            ],
        }
        if spec.get("initContainers"):
            status["initContainerStatuses"] = [terminated(c, 0, None) for c in spec["initContainers"]]
        await self.write_status(metadata["namespace"], metadata["name"], status)

    # ---- shared helpers ---------------------------------------------------------------------------------

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coroutine, name=f"fleetdispatch-node: {name}")
        self._tasks.add(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        _log_failure(task)

    async def event(
        self, pod: Object, kind: str, reason: str, message: str, field_path: str | None = None
    ) -> None:
        """A v1 Event about a pod, as ``kubectl describe pod`` shows the kubelet's; best effort."""
        metadata = pod["metadata"]
        involved: Object = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": metadata["namespace"],
            "name": metadata["name"],
            "uid": metadata["uid"],
        }
        if field_path:
            involved["fieldPath"] = field_path
        stamp = now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{metadata['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": metadata["namespace"],
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "kubelet", "host": self.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.api.request("POST", names.EVENTS.path(metadata["namespace"]), body)
        except (TimeoutError, ApiError, OSError) as error:
            logger.debug("node agent: event %s for pod %s not recorded: %s", reason, metadata["name"], error)

    async def lookup(self, plural: str, namespace: str, name: str) -> Object | None:
        try:
            return await self.api.request("GET", names.Resource("", "v1", plural).path(namespace, name))
        except ApiError as error:
            if error.status in (403, 404):  # the Node authorizer says 403 for what no pod here references
                return None
            raise

    async def token(self, pod: Object, audience: str | None, seconds: int) -> str:
        metadata = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        spec: Object = {
            "expirationSeconds": seconds,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": metadata["name"],
                "uid": metadata["uid"],
            },
        }
        if audience:
            spec["audiences"] = [audience]
        try:
            answer = await self.api.request(
                "POST",
                names.SERVICE_ACCOUNTS.path(metadata["namespace"], account, "token"),
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
            )
        except ApiError as error:
            raise _ContainerError("ContainerCreating", f"failed to fetch token: {error.message}") from error
        return str(answer["status"]["token"])

    async def write_status(self, namespace: str, name: str, status: Object) -> None:
        # Retried while the API server is unreachable or answers 5xx/429 (a restart), as the kubelet's
        # status manager keeps syncing: a status lost here would leave the pod running forever.
        for _ in range(STATUS_WRITE_TRIES):
            try:
                await self.api.request(
                    "PATCH",
                    names.PODS.path(namespace, name, "status"),
                    {"status": status},
                    content_type="application/merge-patch+json",
                )
                return
            except ApiError as error:
                if error.status < 500 and error.status != 429:
                    if error.status != 404:
                        logger.warning(
                            "node agent: status of pod %s/%s not written: %s", namespace, name, error
                        )
                    return
                problem: Exception = error
            except (TimeoutError, OSError, aiohttp.ClientError) as error:
                problem = error
            if self._closed:
                return
            logger.warning(
                "node agent: status of pod %s/%s not written, retrying: %s", namespace, name, problem
            )
            await asyncio.sleep(self.retry_seconds)

    def removed(self, run: _Pod) -> None:
        self._runs.discard(run)

    async def _shutdown(self) -> None:
        runs = list(self._runs)
        self._pods.clear()
        for run in runs:
            run.silent = True
        await asyncio.gather(
            *(run.terminate(self.shutdown_grace_seconds) for run in runs), return_exceptions=True
        )
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(run.remove() for run in runs), return_exceptions=True)
        if self._site is not None:
            await self._site.cleanup()


class _Pod:
    """One pod this node runs: its sandbox, its containers and the status they add up to."""

    def __init__(self, agent: NodeAgent, pod: Object) -> None:
        self.agent = agent
        self.pod = pod
        metadata = pod["metadata"]
        self.key: tuple[str, str] = (metadata["namespace"], metadata["name"])
        self.uid: str = metadata["uid"]
        self.directory = agent.workdir / "pods" / f"{self.key[0]}_{self.key[1]}_{self.uid[:8]}"
        spec = pod["spec"]
        self.inits = [
            _Container(c["name"], c, "sidecar" if c.get("restartPolicy") == "Always" else "init")
            for c in spec.get("initContainers") or []
        ]
        for container in self.inits:
            container.state = {
                "waiting": {"reason": "PodInitializing" if container.role == "init" else "ContainerCreating"}
            }
        self.mains = [_Container(c["name"], c, "main") for c in spec["containers"]]
        if self.inits:
            for container in self.mains:
                container.state = {"waiting": {"reason": "PodInitializing"}}
        self.containers = {c.name: c for c in [*self.inits, *self.mains]}
        self.volumes: dict[str, Path | None] = {}
        self.start_time = now()
        self.initialized = not self.inits
        self.phase: str | None = None
        self.failure: tuple[str, str] | None = None
        self.silent = False
        self.pause: asyncio.subprocess.Process | None = None
        self.pid_namespace: str | None = None
        self._transitions: dict[str, tuple[str, str]] = {}
        self._lifecycle: asyncio.Task[None] | None = None
        self._deletion: asyncio.Task[None] | None = None
        self._reported: set[str] = set()
        self._status: Object | None = None
        self._dirty = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        # Projected service account tokens (file, audience, lifetime), renewed by `_rotation`.
        self._tokens: list[tuple[Path, str | None, int]] = []
        self._rotation: asyncio.Task[None] | None = None

    @property
    def sidecars(self) -> list[_Container]:
        return [c for c in self.inits if c.role == "sidecar"]

    def log_file(self, container: str) -> Path:
        return self.directory / "logs" / f"{container}.log"

    # ---- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        self._writer = self.agent.spawn(self._write_statuses(), f"status {self.key}")
        self.publish()
        self._lifecycle = self.agent.spawn(self._live(), f"run {self.key}")

    async def _live(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.exception("node agent: pod %s/%s failed in the node agent", *self.key)
            self._kill(self.containers.values())
            await self._wait(self.containers.values(), _KILL_WAIT_SECONDS)
            self.failure = ("NodeAgentError", f"the dev node failed to run the pod: {error}")
            self.phase = "Failed"
            self.publish()

    async def _run(self) -> None:
        (self.directory / "logs").mkdir(parents=True, exist_ok=True)
        await self._retry(self._mount_volumes, list(self.containers.values()), "FailedMount")
        if self.pod["spec"].get("shareProcessNamespace"):
            await self._start_pause()
        for container in self.inits:
            await self._start(container)
            if container.role == "sidecar":
                if container.exit_code is not None:
                    await self._finish(failed=True)
                    return
                continue
            await container.done.wait()
            if container.exit_code != 0:
                await self._finish(failed=True)
                return
        self.initialized = True
        for container in self.mains:
            container.state = {"waiting": {"reason": "ContainerCreating"}}
        self.publish()
        await asyncio.gather(*(self._start(container) for container in self.mains))
        for container in self.mains:
            await container.done.wait()
        await self._finish(failed=any(c.exit_code != 0 for c in self.mains))

    async def _start_pause(self) -> None:
        folder = self.directory / "pause"
        folder.mkdir(parents=True, exist_ok=True)
        ready = folder / "ready.json"
        self.pause = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fleetdispatch.devcluster.sandbox",
            "--pause",
            str(ready),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        info = await _read_json_when_ready(ready, self.pause)
        if info is None:
            raise RuntimeError("the pod's pause process did not start")
        self.pid_namespace = str(info["pidNamespace"])

    async def _finish(self, *, failed: bool) -> None:
        grace = int(self.pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_SECONDS))
        await self._stop([c for c in self.inits if c.running], grace)
        await self._stop_pause()
        self.phase = "Failed" if failed else "Succeeded"
        self.publish()

    async def _stop_pause(self) -> None:
        if self.pause is not None and self.pause.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.pause.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pause.wait(), _KILL_WAIT_SECONDS)
            if self.pause.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.pause.kill()
                await self.pause.wait()

    def delete(self, grace: int) -> None:
        if self._deletion is None:
            self._deletion = self.agent.spawn(self._delete(grace), f"delete {self.key}")

    async def _delete(self, grace: int) -> None:
        await self.terminate(grace)
        await self._flush()
        await self.agent._finish_deletion(self.pod["metadata"])

    async def terminate(self, grace: float) -> None:
        await self._cancel_lifecycle()
        if any(c.running for c in self.containers.values()):
            self.event("Normal", "Killing", f"Stopping the pod's containers (grace {grace}s)")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        await self._stop([c for c in self.containers.values() if c.role != "sidecar" and c.running], grace)
        await self._stop([c for c in self.sidecars if c.running], max(0.0, deadline - loop.time()))
        await self._stop_pause()
        if self.phase is None:
            self.phase = "Succeeded" if all(c.exit_code == 0 for c in self.mains) else "Failed"
            self.publish()

    async def remove(self) -> None:
        """The pod is gone: KILL what is left at once and remove its folder."""
        self.silent = True
        tasks = [t for t in (self._deletion, self._lifecycle, self._writer, self._rotation) if t is not None]
        for task in tasks:
            task.cancel()
        self._kill(self.containers.values())
        if self.pause is not None and self.pause.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.pause.kill()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._wait(self.containers.values(), _KILL_WAIT_SECONDS)
        for container in self.containers.values():
            container.release()
        if self.pause is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pause.wait(), _KILL_WAIT_SECONDS)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.agent.removed(self)

    async def _cancel_lifecycle(self) -> None:
        if self._lifecycle is not None:
            self._lifecycle.cancel()
            await asyncio.gather(self._lifecycle, return_exceptions=True)

    # ---- processes --------------------------------------------------------------------------------------

    async def _stop(self, containers: list[_Container], grace: float) -> None:
        if not containers:
            return
        for container in containers:
            if container.process is not None and container.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    container.process.send_signal(signal.SIGTERM)  # the launcher forwards it
        await self._wait(containers, grace)
        survivors = [c for c in containers if c.running]
        if survivors:
            logger.info(
                "node agent: pod %s/%s: KILL %s after %ss", *self.key, [c.name for c in survivors], grace
            )
            self._kill(survivors)
            await self._wait(survivors, _KILL_WAIT_SECONDS)

    def _kill(self, containers: Iterable[_Container]) -> None:
        for container in containers:
            container.killed = True
            container.kill_all(self.agent.host_namespace)
            if container.process is not None and container.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    container.process.kill()

    @staticmethod
    async def _wait(containers: Iterable[_Container], timeout: float) -> None:
        watchers = {c.watcher for c in containers if c.watcher is not None and not c.watcher.done()}
        if watchers and timeout > 0:
            await asyncio.wait(watchers, timeout=timeout)

    async def _start(self, container: _Container) -> None:
        folder = self.directory / "containers" / container.name
        spec = await self._retry(lambda: self._launch(container, folder), [container], "Failed")
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in ("ready.json", "exit.json"):
            (folder / leftover).unlink(missing_ok=True)
        spec_file = folder / "spec.json"
        spec_file.write_text(json.dumps(spec), encoding="utf-8")
        spec_file.chmod(0o600)
        log = self.log_file(container.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        started = now()
        with log.open("ab") as output:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fleetdispatch.devcluster.sandbox",
                str(spec_file),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        container.process = process
        info = await _read_json_when_ready(folder / "ready.json", process)
        if info is not None:
            container.hold(process.pid, str(info["mountNamespace"]))
        exit_info = _read_json(folder / "exit.json")
        if exit_info is not None and exit_info.get("error"):
            await process.wait()
            container.kill_all(self.agent.host_namespace)
            container.release()
            message = str(exit_info["error"])
            self.event("Warning", "Failed", message, container)
            self._terminated(container, START_ERROR_EXIT_CODE, "StartError", message, started=started)
            return
        container.state = {"running": {"startedAt": started}}
        container.watcher = asyncio.create_task(
            self._watch(container, folder, started), name=f"fleetdispatch-node: {self.key} {container.name}"
        )
        container.watcher.add_done_callback(_log_failure)
        self.event("Normal", "Started", f"Started container {container.name}", container)
        self.publish()

    async def _watch(self, container: _Container, folder: Path, started: str) -> None:
        assert container.process is not None
        returncode = await container.process.wait()
        container.kill_all(self.agent.host_namespace)  # the launcher was KILLed: what it left dies now
        container.release()
        info = _read_json(folder / "exit.json") or {}
        if info.get("error"):
            self._terminated(
                container, START_ERROR_EXIT_CODE, "StartError", str(info["error"]), started=started
            )
            return
        if "code" in info:
            code, killed_by = int(info["code"]), info.get("signal")
        elif container.killed:
            # KILLed with its launcher, which could write nothing. Said from what the node did, not from
            # the launcher's wait status: asyncio has been seen to report an unknown 255 for it.
            code, killed_by = 128 + signal.SIGKILL, signal.SIGKILL
        else:
            code = 128 - returncode if returncode < 0 else returncode
            killed_by = -returncode if returncode < 0 else None
        message = _read_tail(folder / "termination-log", MAX_TERMINATION_MESSAGE_BYTES)
        if (
            not message
            and code != 0
            and container.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            message = _log_tail(self.log_file(container.name))
        self._terminated(
            container,
            code,
            "Completed" if code == 0 else "Error",
            message,
            started=started,
            killed_by=killed_by,
        )

    def _terminated(
        self,
        container: _Container,
        code: int,
        reason: str,
        message: str,
        *,
        started: str,
        killed_by: int | None = None,
    ) -> None:
        state: Object = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now()}
        if message:
            state["message"] = message
        if killed_by is not None:
            state["signal"] = int(killed_by)
        container.state = {"terminated": state}
        container.done.set()
        self.publish()

    async def _retry(
        self, attempt: Callable[[], Coroutine[Any, Any, T]], containers: list[_Container], reason: str
    ) -> T:
        """``attempt()`` until it stops raising :class:`_ContainerError`, the containers waiting meanwhile."""
        while True:
            try:
                return await attempt()
            except _ContainerError as error:
                for container in containers:
                    container.state = {"waiting": {"reason": error.reason, "message": error.message}}
                if error.message not in self._reported:
                    self._reported.add(error.message)
                    self.event(
                        "Warning", reason, error.message, containers[0] if len(containers) == 1 else None
                    )
                self.publish()
            await asyncio.sleep(self.agent.retry_seconds)

    def _field(self, container: _Container) -> str:
        return f"spec.{'containers' if container.role == 'main' else 'initContainers'}{{{container.name}}}"

    def event(self, kind: str, reason: str, message: str, container: _Container | None = None) -> None:
        if not self.silent:
            field = None if container is None else self._field(container)
            self.agent.spawn(self.agent.event(self.pod, kind, reason, message, field), f"event {self.key}")

    # ---- volumes ----------------------------------------------------------------------------------------

    async def _mount_volumes(self) -> None:
        for volume in self.pod["spec"].get("volumes") or []:
            name = volume["name"]
            if name in self.volumes:
                continue
            local = self.directory / "volumes" / name
            if "emptyDir" in volume:
                local.mkdir(parents=True, exist_ok=True)
                local.chmod(0o777)  # as the kubelet makes it: any container user may write
            elif "persistentVolumeClaim" in volume:
                local = await self._claimed(name, volume["persistentVolumeClaim"]["claimName"])
            elif "hostPath" in volume:
                local = Path(volume["hostPath"]["path"])
            elif "secret" in volume or "configMap" in volume:
                await self._materialise(name, volume, local)
            elif "projected" in volume or "downwardAPI" in volume:
                await self._project(name, volume, local)
            else:
                kinds = ", ".join(sorted(k for k in volume if k != "name")) or "no source"
                message = f'volume "{name}" ({kinds}) is not supported by the dev node and is not mounted'
                logger.warning("node agent: pod %s/%s: %s", *self.key, message)
                self.event("Warning", "VolumeNotSupported", message)
                self.volumes[name] = None
                continue
            self.volumes[name] = local

    async def _claimed(self, name: str, claim_name: str) -> Path:
        """The folder of a ``persistentVolumeClaim`` volume: the claim's bound volume's ``hostPath`` (or
        ``local``) path, as the dev cluster's provisioner (:mod:`.storage`) makes them."""
        claim = await self.agent.lookup("persistentvolumeclaims", self.key[0], claim_name)
        volume_name = ((claim or {}).get("spec") or {}).get("volumeName")
        if claim is None or not volume_name or (claim.get("status") or {}).get("phase") != "Bound":
            raise _ContainerError(
                "ContainerCreating", f'volume "{name}": persistentvolumeclaim "{claim_name}" is not bound'
            )
        try:
            bound = await self.agent.api.request("GET", names.PERSISTENT_VOLUMES.path(name=volume_name))
        except ApiError as error:
            raise _ContainerError(
                "ContainerCreating", f'volume "{name}": persistentvolume "{volume_name}": {error.message}'
            ) from error
        source = (bound.get("spec") or {}).get("hostPath") or (bound.get("spec") or {}).get("local") or {}
        if not source.get("path") or not Path(source["path"]).is_dir():
            raise _ContainerError(
                "ContainerCreating",
                f'volume "{name}": persistentvolume "{volume_name}" has no hostPath or local folder here',
            )
        return Path(source["path"])

    async def _materialise(self, name: str, volume: Object, local: Path) -> None:
        is_secret = "secret" in volume
        source = volume["secret" if is_secret else "configMap"]
        object_name = source.get("secretName" if is_secret else "name", "")
        data = await self._data(is_secret, object_name)
        if data is None:
            if source.get("optional"):
                local.mkdir(parents=True, exist_ok=True)
                return
            kind = "secret" if is_secret else "configmap"
            raise _ContainerError(
                "ContainerCreating",
                f'MountVolume.SetUp failed for volume "{name}": {kind} "{object_name}" not found',
            )
        files = self._items(name, source, data, object_name)
        _write_files(local, files, int(source.get("defaultMode", 0o644)))

    def _items(
        self, volume: str, source: Object, data: Mapping[str, bytes], object_name: str
    ) -> dict[str, tuple[bytes, int | None]]:
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        files: dict[str, tuple[bytes, int | None]] = {}
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise _ContainerError(
                    "ContainerCreating",
                    f'MountVolume.SetUp failed for volume "{volume}": no key {item["key"]} in {object_name}',
                )
            mode = item.get("mode")
            files[item["path"]] = (data[item["key"]], None if mode is None else int(mode))
        return files

    async def _project(self, name: str, volume: Object, local: Path) -> None:
        """``projected`` and ``downwardAPI`` volumes: every source's files in one folder."""
        if "downwardAPI" in volume:
            sources, default_mode = (
                [{"downwardAPI": volume["downwardAPI"]}],
                volume["downwardAPI"].get("defaultMode"),
            )
        else:
            sources, default_mode = (
                volume["projected"].get("sources") or [],
                volume["projected"].get("defaultMode"),
            )
        files: dict[str, tuple[bytes, int | None]] = {}
        for source in sources:
            if "serviceAccountToken" in source:
                token = source["serviceAccountToken"]
                seconds = int(token.get("expirationSeconds") or 3600)
                files[token["path"]] = (
                    (await self.agent.token(self.pod, token.get("audience"), seconds)).encode(),
                    0o600,
                )
                self._tokens.append((local / token["path"], token.get("audience"), seconds))
            elif "configMap" in source or "secret" in source:
                is_secret = "secret" in source
                ref = source["secret" if is_secret else "configMap"]
                data = await self._required_data(
                    is_secret, ref, "ContainerCreating", f'MountVolume.SetUp failed for volume "{name}": '
                )
                if data is None:
                    continue
                files.update(self._items(name, ref, data, ref.get("name", "")))
            elif "downwardAPI" in source:
                for item in source["downwardAPI"].get("items") or []:
                    if "fieldRef" not in item:
                        raise _ContainerError(
                            "ContainerCreating",
                            f"downwardAPI {item.get('path')}: only fieldRef is supported here",
                        )
                    value = _field_value(self.pod, str(item["fieldRef"].get("fieldPath", "")))
                    if value is None:
                        raise _ContainerError(
                            "ContainerCreating",
                            f"fieldRef {item['fieldRef'].get('fieldPath')!r} is not supported here",
                        )
                    files[item["path"]] = (value.encode(), item.get("mode"))
        mode = 0o644 if default_mode is None else int(default_mode)
        _write_files(local, files, mode, owner=self._token_owner())
        if self._tokens and self._rotation is None:
            self._rotation = self.agent.spawn(self._rotate_tokens(), f"tokens {self.key}")
        for path, (_, file_mode) in files.items():
            if file_mode == 0o600 and default_mode is not None:
                (local / path).chmod(int(default_mode))

    async def _rotate_tokens(self) -> None:
        """Renew each projected token at 80 % of its lifetime or after a day, as the kubelet does, replacing
        the file atomically (a session reading it never sees it missing or half written)."""
        loop = asyncio.get_running_loop()

        def renew_after(seconds: int) -> float:
            return min(0.8 * seconds, 86400.0)

        due = {path: loop.time() + renew_after(seconds) for path, _, seconds in self._tokens}
        while True:
            path, audience, seconds = min(self._tokens, key=lambda t: due[t[0]])
            await asyncio.sleep(max(0.0, due[path] - loop.time()))
            try:
                token = await self.agent.token(self.pod, audience, seconds)
            except _ContainerError as error:
                logger.warning("node agent: pod %s/%s: token not renewed: %s", *self.key, error.message)
                due[path] = loop.time() + min(60.0, 0.1 * seconds)
                continue
            temporary = path.with_name(f".{path.name}.renewing")
            temporary.write_bytes(token.encode())
            temporary.chmod(path.stat().st_mode & 0o777 if path.exists() else 0o600)
            owner = self._token_owner()
            if owner is not None:
                os.chown(temporary, owner, -1)
            os.replace(temporary, path)
            due[path] = loop.time() + renew_after(seconds)

    def _token_owner(self) -> int | None:
        """Who owns a projected token file: the pod's user, so a non-root container reads its 0600 token."""
        security = self.pod["spec"].get("securityContext") or {}
        uid = security.get("runAsUser")
        return None if uid is None else int(uid)

    async def _required_data(
        self, is_secret: bool, ref: Mapping[str, Any], reason: str, where: str = ""
    ) -> dict[str, bytes] | None:
        """A Secret's or ConfigMap's data; None when it is missing and `optional`, else the error."""
        data = await self._data(is_secret, ref.get("name", ""))
        if data is None and not ref.get("optional"):
            kind = "secret" if is_secret else "configmap"
            raise _ContainerError(reason, f'{where}{kind} "{ref.get("name")}" not found')
        return data

    async def _data(self, is_secret: bool, name: str) -> dict[str, bytes] | None:
        obj = await self.agent.lookup("secrets" if is_secret else "configmaps", self.key[0], name)
        if obj is None:
            return None
        data: dict[str, bytes] = {}
        if is_secret:
            for key, value in (obj.get("data") or {}).items():
                try:
                    data[key] = base64.b64decode(str(value), validate=True)
                except binascii.Error:
                    data[key] = str(value).encode()
        else:
            for key, value in (obj.get("binaryData") or {}).items():
                data[key] = base64.b64decode(str(value))
            for key, value in (obj.get("data") or {}).items():
                data[key] = str(value).encode()
        return data

    # ---- a container's launch -------------------------------------------------------------------------

    def _security(self, container: _Container) -> Object:
        pod_security = self.pod["spec"].get("securityContext") or {}
        security = container.spec.get("securityContext") or {}

        def pick(name: str) -> Any:
            value = security.get(name)
            return pod_security.get(name) if value is None else value

        uid = int(pick("runAsUser") or 0)  # no image, so no image user: root
        gid = int(pick("runAsGroup") or 0)
        if pick("runAsNonRoot") and uid == 0:
            raise _ContainerError(
                "CreateContainerConfigError",
                f"Error: container has runAsNonRoot and image will run as root (pod: "
                f'"{self.key[1]}_{self.key[0]}({self.uid})", container: {container.name})',
            )
        groups = [int(g) for g in pod_security.get("supplementalGroups") or []]
        if pod_security.get("fsGroup") is not None:
            groups.append(int(pod_security["fsGroup"]))
        capabilities = security.get("capabilities") or {}
        escalation = security.get("allowPrivilegeEscalation")
        return {
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "drop": list(capabilities.get("drop") or []),
            "allowPrivilegeEscalation": True if escalation is None else bool(escalation),
        }

    async def _launch(self, container: _Container, folder: Path) -> Object:
        spec = container.spec
        field = self._field(container)
        command = [str(part) for part in spec.get("command") or []]
        args = [str(part) for part in spec.get("args") or []]
        image = self.agent.images.get(image_repository(str(spec.get("image") or "")))
        if image is not None:
            words = image.argv(command, args)
        elif command:
            words = [*command, *args]
        else:
            known = ", ".join(sorted(self.agent.images)) or "none"
            raise _ContainerError("CreateContainerError", NO_COMMAND.format(field=field, known=known))
        security = self._security(container)
        env = await self._env(container)
        argv = [_expand(part, env) for part in words]
        mounts: list[Object] = []
        for mount in spec.get("volumeMounts") or []:
            local = self.volumes.get(mount["name"])
            target = str(mount.get("mountPath", "")).rstrip("/")
            if local is None or not target:
                continue
            if mount.get("subPath"):
                local = local / mount["subPath"]
                local.mkdir(parents=True, exist_ok=True)
            mounts.append(
                {
                    "source": str(local),
                    "target": target,
                    "readOnly": bool(mount.get("readOnly")),
                    "file": local.is_file(),
                }
            )
        mounts.sort(key=lambda m: m["target"].count("/"))
        termination = folder / "termination-log"
        folder.mkdir(parents=True, exist_ok=True)
        termination.touch()
        termination.chmod(0o666)
        path = str(spec.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH)
        mounts.append({"source": str(termination), "target": path, "file": True})
        base = {
            "PATH": _base_path(),
            "HOSTNAME": self.key[1],
            "HOME": "/root" if security["uid"] == 0 else "/",
            "LANG": "C.UTF-8",
            **self._service_env(),
        }
        return {
            "argv": argv,
            "env": {**base, **env},
            "workingDir": _expand(str(spec.get("workingDir") or ""), env) or "/",
            "security": security,
            "mounts": mounts,
            "pidNamespace": self.pid_namespace,
        }

    def _service_env(self) -> dict[str, str]:
        """The ``kubernetes`` Service's variables, as the kubelet gives every pod: the API server, here."""
        port = self.agent.api_url.rsplit(":", 1)[-1].rstrip("/")
        return {
            "KUBERNETES_SERVICE_HOST": HOST_IP,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://{HOST_IP}:{port}",
            f"KUBERNETES_PORT_{port}_TCP": f"tcp://{HOST_IP}:{port}",
            f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
            f"KUBERNETES_PORT_{port}_TCP_PORT": port,
            f"KUBERNETES_PORT_{port}_TCP_ADDR": HOST_IP,
        }

    async def _env(self, container: _Container) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.spec.get("envFrom") or []:
            prefix = str(source.get("prefix") or "")
            for is_secret, ref in ((True, source.get("secretRef")), (False, source.get("configMapRef"))):
                if ref is None:
                    continue
                data = await self._required_data(is_secret, ref, "CreateContainerConfigError")
                if data is None:
                    continue
                for key, raw in data.items():
                    env[prefix + key] = raw.decode(errors="replace")
        for variable in container.spec.get("env") or []:
            name = variable["name"]
            if "valueFrom" in variable:
                value = await self._value_from(variable["valueFrom"])
                if value is None:
                    continue
                env[name] = value
            else:
                env[name] = _expand(str(variable.get("value") or ""), env)
        return env

    async def _value_from(self, source: Object) -> str | None:
        for field, is_secret in (("secretKeyRef", True), ("configMapKeyRef", False)):
            ref = source.get(field)
            if ref is None:
                continue
            name, key = ref.get("name", ""), ref.get("key", "")
            kind = "Secret" if is_secret else "ConfigMap"
            data = await self._data(is_secret, name)
            if data is not None and key in data:
                return data[key].decode(errors="replace")
            if ref.get("optional"):
                return None
            if data is None:
                raise _ContainerError("CreateContainerConfigError", f'{kind.lower()} "{name}" not found')
            raise _ContainerError(
                "CreateContainerConfigError", f"couldn't find key {key} in {kind} {self.key[0]}/{name}"
            )
        if "fieldRef" in source:
            path = str(source["fieldRef"].get("fieldPath", ""))
            value = _field_value(self.pod, path)
            if value is None:
                raise _ContainerError(
                    "CreateContainerConfigError", f"fieldRef {path!r} is not supported by the dev node"
                )
            return value
        raise _ContainerError(
            "CreateContainerConfigError",
            f"valueFrom {', '.join(sorted(source)) or '{}'} is not supported by the dev node "
            "(it enforces no resources)",
        )

    # ---- status -----------------------------------------------------------------------------------------

    def publish(self) -> None:
        """Queue the pod's current status for writing (the writer sends the latest, in order)."""
        if not self.silent:
            self._status = self.status()
            self._dirty.set()

    async def _write_statuses(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            status = self._status
            if status is not None:
                await self.agent.write_status(self.key[0], self.key[1], status)

    async def _flush(self) -> None:
        """Until the latest status is written (before the final delete)."""
        if self._status is not None and not self.silent:
            await self.agent.write_status(self.key[0], self.key[1], self._status)

    def status(self) -> Object:
        status: Object = {
            "phase": self._phase(),
            "conditions": self._conditions(),
            **_addresses(),
            "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.mains],
        }
        if self.inits:
            status["initContainerStatuses"] = [c.status() for c in self.inits]
        if self.failure is not None:
            status["reason"], status["message"] = self.failure
        return status

    def _phase(self) -> str:
        if self.phase is not None:
            return self.phase
        if self.initialized and any("waiting" not in c.state for c in self.mains):
            return "Running"
        return "Pending"

    def _conditions(self) -> list[Object]:
        incomplete = [
            c.name for c in self.inits if (c.exit_code != 0 if c.role == "init" else "waiting" in c.state)
        ]
        unready = [c.name for c in [*self.sidecars, *self.mains] if not c.ready]
        wanted: list[tuple[str, bool, str, str]] = [
            ("PodScheduled", True, "", ""),
            (
                "Initialized",
                self.initialized,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(incomplete)}]",
            ),
        ]
        for kind in ("ContainersReady", "Ready"):
            if self.phase is not None:
                wanted.append((kind, False, "PodCompleted", ""))
            else:
                wanted.append(
                    (
                        kind,
                        not unready,
                        "ContainersNotReady",
                        f"containers with unready status: [{' '.join(unready)}]",
                    )
                )
        conditions = []
        for kind, true, reason, message in wanted:
            status = "True" if true else "False"
            previous = self._transitions.get(kind)
            if previous is None or previous[0] != status:
                self._transitions[kind] = previous = (status, now())
            condition: Object = {"type": kind, "status": status, "lastTransitionTime": previous[1]}
            if not true:
                if reason:
                    condition["reason"] = reason
                if message:
                    condition["message"] = message
            conditions.append(condition)
        return conditions


# ---- pure helpers -----------------------------------------------------------------------------------------


def _addresses() -> Object:
    return {"hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}], "podIP": HOST_IP, "podIPs": [{"ip": HOST_IP}]}


def image_repository(image: str) -> str:
    """An image reference without its tag and digest: ``registry/name:tag@sha256:...`` -> ``registry/name``
    (a registry's port, ``host:5000/name``, is not a tag)."""
    name = image.partition("@")[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _base_path() -> str:
    """This Python's scripts first (the operator image's ``fleetdispatch``), then the host's ``PATH``."""
    entries = [str(Path(sys.executable).parent), *os.environ.get("PATH", os.defpath).split(os.pathsep)]
    return os.pathsep.join(dict.fromkeys(entry for entry in entries if entry))


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` is a literal ``$``, rest stays."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            follower = text[i + 1]
            if follower == "$":
                out.append("$")
                i += 2
                continue
            if follower == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env[name] if name in env else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


_INDEXED_FIELD = re.compile(r"^metadata\.(labels|annotations)\['([^']*)'\]$")


def _field_value(pod: Object, path: str) -> str | None:
    metadata, spec = pod["metadata"], pod.get("spec") or {}
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": HOST_IP,
        "status.hostIPs": HOST_IP,
        "status.podIP": HOST_IP,
        "status.podIPs": HOST_IP,
    }
    if path in simple:
        return str(simple[path] or "")
    match = _INDEXED_FIELD.match(path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    return None


def _write_files(
    folder: Path, files: Mapping[str, tuple[bytes, int | None]], default_mode: int, owner: int | None = None
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for relative, (content, mode) in files.items():
        if relative.startswith("/") or ".." in Path(relative).parts:
            raise _ContainerError(
                "ContainerCreating", f"volume item path {relative!r} must be relative, without '..'"
            )
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        target.write_bytes(content)
        target.chmod(default_mode if mode is None else mode)
        if owner is not None and mode == 0o600:
            os.chown(target, owner, -1)


def _terminated_status(container: Object, state: Object) -> Object:
    """A container's status once it has ended (``state``: its ``terminated`` state)."""
    return {
        "name": container["name"],
        "image": str(container.get("image") or ""),
        "imageID": "",
        "ready": False,
        "started": False,
        "restartCount": 0,
        "state": {"terminated": state},
        "lastState": {},
    }


def _instant_outcome(annotations: Mapping[str, str]) -> tuple[int, str | None]:
    """The exit code and termination message an instant pod's annotations ask for; an exit code that is
    not an int32 (what a pod status holds) ends the session with 1 and a message that says why, and the
    message is cut to its last 4096 bytes, as the kubelet cuts it."""
    code, message = 0, annotations.get(TERMINATION_MESSAGE_ANNOTATION)
    raw = annotations.get(EXIT_CODE_ANNOTATION)
    if raw is not None:
        try:
            code = int(raw)
        except ValueError:
            code, message = 1, f"{EXIT_CODE_ANNOTATION}: {raw[:64]!r} is not an integer exit code"
        else:
            if not -(2**31) <= code < 2**31:
                code, message = 1, f"{EXIT_CODE_ANNOTATION}: {code} is not a 32-bit exit code"
    if message is not None:
        message = message.encode()[-MAX_TERMINATION_MESSAGE_BYTES:].decode(errors="replace")
    return code, message


def _tail_offset(path: Path, lines: int) -> int:
    """Where the last ``lines`` lines of a file start (a final newline ends a line; it starts none), read
    backwards in blocks; 0 when the file has fewer lines or cannot be read."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            if lines == 0:
                return size
            position, found = size, 0
            while position > 0:
                step = min(65536, position)
                position -= step
                file.seek(position)
                block = file.read(step)
                for index in range(len(block) - 1, -1, -1):
                    if block[index] == 0x0A and position + index != size - 1:
                        found += 1
                        if found == lines:
                            return position + index + 1
    except OSError:
        pass
    return 0


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("node agent: %s failed", task.get_name(), exc_info=task.exception())


def _read_json(path: Path) -> Object | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


async def _read_json_when_ready(path: Path, process: asyncio.subprocess.Process) -> Object | None:
    """The launcher's ``ready.json`` once written; None if the launcher exits (or hangs) first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _READY_WAIT_SECONDS
    while loop.time() < deadline:
        value = _read_json(path)
        if value is not None:
            return value
        if process.returncode is not None:
            return None
        await asyncio.sleep(0.01)
    return None


def _read_tail(path: Path, limit: int) -> str:
    """The last ``limit`` bytes of a regular file, never blocking on a FIFO or a device ('' otherwise)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return ""
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            return ""
        os.lseek(descriptor, max(0, info.st_size - limit), os.SEEK_SET)
        return os.read(descriptor, limit).decode(errors="replace")
    except OSError:
        return ""
    finally:
        os.close(descriptor)


def _log_tail(path: Path) -> str:
    lines = _read_tail(path, FALLBACK_LOG_BYTES * 4).splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
    return "".join(lines).encode()[-FALLBACK_LOG_BYTES:].decode(errors="replace")


__all__ = [
    "DEFAULT_NODE",
    "EXIT_CODE_ANNOTATION",
    "IMAGE_ENTRYPOINTS",
    "PROJECT_IMAGE",
    "RUNTIME_ANNOTATION",
    "TERMINATION_MESSAGE_ANNOTATION",
    "ImageEntrypoint",
    "Mode",
    "NodeAgent",
    "image_repository",
]
