"""The dev cluster's pod runtime: a "kubelet" that runs the pods of the in-memory API as local processes.

:class:`LocalRuntime` shares the :class:`~.store.Store`'s event loop and watches every pod through a store
subscription, so no HTTP is involved. A new pod is bound to the runtime's node (``spec.nodeName``, which is
also what makes the store delete it gracefully later) and then run:

* **Containers are processes.** ``command`` + ``args`` are executed directly, each container in a session
  (and so a process group) of its own, so that a signal reaches the children a shell starts, and whatever a
  container leaves behind when its main process ends is killed, as a container's processes die with its
  init process. stdout and stderr go to one log file per container (:meth:`LocalRuntime.log_path`, which is
  what ``kubectl logs`` reads through the server).
* **Order as the kubelet's.** Init containers run in spec order: a native sidecar (``restartPolicy:
  Always``) is started and left running, an ordinary init container must exit 0 before the next one starts
  (a failure fails the pod). Then the main containers start together. When they have all exited, the
  sidecars are stopped (TERM, KILL after ``terminationGracePeriodSeconds``) and the phase becomes
  ``Succeeded`` when every main container exited 0, else ``Failed``.
* **The container's filesystem is a set of rewrites.** There is no mount namespace, so a volume is a local
  directory and the container's paths are rewritten to it: every occurrence of a mount path (as a whole
  path prefix) in ``command``, ``args``, env values, ``workingDir`` and ``terminationMessagePath`` is
  replaced by the local directory. ``FLEET_STATE_DIR=/var/run/fleet`` thus names the pod's state directory,
  and ``sh -c "echo x > /var/run/fleet/out"`` writes into it. A path a program computes or reads from a file
  at run time is not rewritten. ``emptyDir`` is a per-pod directory; ``secret`` and ``configMap`` volumes
  are materialised as files; a ``persistentVolumeClaim`` is a directory per claim under the work directory,
  shared by the pods that mount it and kept after them (so a resumed attempt finds its workspace); other
  volume types are ignored with a warning event. A ``terminationMessagePath`` outside every mount (the
  default ``/dev/termination-log``) becomes a per-container file. ``workingDir`` is used when the directory
  exists here after the rewrite; otherwise, as when it is absent, the container runs in the pod directory.
* **The environment is the pod's, not the host's.** A process gets a minimal base (``PATH``: the directory
  of the running Python, so this environment's ``fleetdispatch`` is found as the operator image would
  provide it, then the host's ``PATH``; ``HOME`` = the pod directory; ``LANG``; ``HOSTNAME`` = the pod
  name) plus the container's ``envFrom`` and ``env`` (literal values with ``$(VAR)`` expansion, Secret and
  ConfigMap keys, the downward API's ``fieldRef``), so host secrets and the host's own ``FLEET_*`` variables
  never leak into a session. A missing required reference leaves the container waiting with
  ``CreateContainerConfigError`` and is retried, as the kubelet retries.
* **Status as the kubelet writes it**, through the status subresource: ``phase``, ``conditions``
  (PodScheduled, Initialized, ContainersReady, Ready), ``startTime``, ``hostIP``/``podIP`` 127.0.0.1, and
  ``initContainerStatuses``/``containerStatuses`` with ``waiting``/``running``/``terminated`` states; a
  terminated state carries ``exitCode`` (128 + N for a process killed by signal N, with ``signal``),
  ``reason`` (``Completed``, ``Error``, ``StartError`` when the program cannot be executed), the termination
  message (the last 4096 bytes of the file, or with ``FallbackToLogsOnError`` the log's tail when the file
  is empty and the exit code is not 0), ``startedAt`` and ``finishedAt``.
* **Deletion with grace.** A pod marked for deletion has its main containers, then its sidecars, sent TERM,
  and what still runs after ``deletionGracePeriodSeconds`` is KILLed; the runtime then records the final
  status and finishes the deletion (``grace_seconds=0``), as a kubelet does. A pod removed outright (no
  grace) is KILLed at once. The pod's directory (logs included) is removed when the pod is gone.
* **Instant mode** runs nothing: a pod is bound and completed at once, its session container (named
  ``session``, else the first) exiting with the code of the annotation :data:`EXIT_CODE_ANNOTATION`
  (default 0) and the message of :data:`TERMINATION_MESSAGE_ANNOTATION`, the other containers with 0. It
  serves benchmarks of the operator alone.

What it deliberately does not do: pull or even look at images (a container without ``command`` cannot start,
and says so with ``CreateContainerError``), enforce resources or report ``resourceFieldRef`` values, run
probes (a running container is ready and started at once), restart containers (``restartPolicy``
``OnFailure`` and ``Always`` are treated as ``Never``, and a sidecar that exits early stays exited),
isolate anything (processes share the host's network, PID namespace, filesystem and UID; ``readOnly`` and
``securityContext`` are ignored), or survive a restart (the cluster is in memory: :meth:`LocalRuntime.close`
stops every process it started and removes the pods' directories, without writing the pods' status,
because the store is going away too).
A process that leaves its process group (``setsid``) escapes the group signals and is not tracked.

One difference matters to fleet-dispatch: a real kubelet bind-mounts a fresh per-container file at
``terminationMessagePath``, so a termination message path inside a shared volume is *not* shared with the
other containers there. Here it is the volume's file, shared by every container that mounts the volume.
Code that relies on another container seeing (or writing) a container's termination message file works
here and fails on a cluster; the operator reads each container's own termination message instead.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from fleetdispatch.api import SESSION_CONTAINER
from fleetdispatch.devcluster import patches
from fleetdispatch.devcluster.resources import EVENTS, PODS
from fleetdispatch.devcluster.store import DELETED, ApiError, Clock, Object, Store, Subscription, timestamp

Mode = Literal["local", "instant"]

DEFAULT_NODE = "fleetdispatch-dev"
HOST_IP = "127.0.0.1"
EXIT_CODE_ANNOTATION = "dev.fleet.dispatch.dev/exit-code"
TERMINATION_MESSAGE_ANNOTATION = "dev.fleet.dispatch.dev/termination-message"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
DEFAULT_TERMINATION_GRACE_SECONDS = 30
# The kubelet's limits: the last 4 KiB of the termination message file, or the log's last 80 lines / 2 KiB.
MAX_TERMINATION_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
START_ERROR_EXIT_CODE = 128
NO_COMMAND = (
    "the dev runtime runs containers as local processes and does not pull images, so there is no image "
    "entrypoint to fall back on: set {field}.command (and args) to a program available on this machine"
)
# A KILLed process is gone within milliseconds; the bound only keeps a process stuck in the kernel (D state)
# from hanging the runtime's shutdown.
_KILL_WAIT_SECONDS = 5.0
# A container path is rewritten where it is a whole path prefix: not preceded by a path character (nor "/",
# which would make it the tail of a longer path) and not followed by a file name character.
_BEFORE_PATH = r"(?<![\w.\-/])"
_AFTER_PATH = r"(?![\w.\-])"
T = TypeVar("T")

logger = logging.getLogger(__name__)

Role = Literal["sidecar", "init", "main"]


class _ContainerError(Exception):
    """Why a container cannot be started yet: its waiting ``reason`` and ``message``; retried later."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class _View:
    """A container's filesystem as local paths: each container path (a mount, a file) and where it is here."""

    paths: Mapping[str, Path]

    def rewrite(self, text: str) -> str:
        """``text`` with every container path that appears in it as a whole path prefix made local.

        One pass over the longest paths first, so a nested mount wins over its parent and a rewritten path
        is never rewritten again. The boundaries keep ``/var/run/fleetx`` and ``/x/var/run/fleet`` intact.
        """
        if not self.paths:
            return text
        alternatives = "|".join(re.escape(path) for path in sorted(self.paths, key=len, reverse=True))
        pattern = f"{_BEFORE_PATH}(?:{alternatives}){_AFTER_PATH}"
        return re.sub(pattern, lambda match: str(self.paths[match.group(0)]), text)


@dataclasses.dataclass(frozen=True)
class _Launch:
    """A container resolved into what a process needs."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    termination_file: Path


@dataclasses.dataclass(eq=False)
class _Container:
    name: str
    spec: Object
    role: Role
    state: Object = dataclasses.field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    process: asyncio.subprocess.Process | None = None
    watcher: asyncio.Task[None] | None = None
    # Set once the container has a terminated state, whether it ran or could not be started.
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    @property
    def running(self) -> bool:
        return self.watcher is not None and not self.watcher.done()

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
            status["containerID"] = f"local://{self.process.pid}"
        return status


class LocalRuntime:
    """The dev cluster's node: binds new pods and runs them (``local``) or completes them (``instant``)."""

    def __init__(
        self,
        store: Store,
        workdir: Path,
        *,
        node_name: str = DEFAULT_NODE,
        mode: Mode = "local",
        clock: Clock | None = None,
        retry_seconds: float = 1.0,
        shutdown_grace_seconds: float = 2.0,
    ) -> None:
        self._store = store
        self.workdir = Path(workdir)
        self.node_name = node_name
        self.mode = mode
        self._clock = clock or store.now
        self.retry_seconds = retry_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self._pods: dict[tuple[str, str], _Pod] = {}  # by name: the pods in the store
        self._runs: set[_Pod] = set()  # every pod that may still have processes, being removed included
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None

    # ---- public interface -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch pods and act on them until cancelled; cancellation stops every process, as :meth:`close`."""
        initial, subscription = self._store.subscribe(PODS, None, lambda obj: True, None)
        try:
            for event_type, pod in initial:
                self._on_event(event_type, pod)
            await self._follow(subscription)
        finally:
            self._store.unsubscribe(subscription)
            await self.close()

    async def close(self) -> None:
        """Stop every process it started (TERM, then KILL after the shutdown grace); idempotent."""
        self._closed = True
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._shutdown(), name="fleetdispatch-dev-runtime-close")
        await asyncio.shield(self._close_task)

    def log_path(self, namespace: str, pod: str, container: str | None) -> Path | None:
        """Where a container's output is written (None: unknown pod or container, or an instant pod).

        Without a container, the pod's ``kubectl.kubernetes.io/default-container`` or first main container.
        """
        run = self._pods.get((namespace, pod))
        if run is None:
            return None
        if container is None:
            annotations = run.pod["metadata"].get("annotations") or {}
            container = annotations.get("kubectl.kubernetes.io/default-container") or run.mains[0].name
        if container not in run.containers:
            return None
        return run.log_file(container)

    # ---- events -----------------------------------------------------------------------------------------

    async def _follow(self, subscription: Subscription) -> None:
        while True:
            event_type, pod = await subscription.events.get()
            self._on_event(event_type, pod)

    def _on_event(self, event_type: str, pod: Object) -> None:
        """Act on one pod event; a failure here is logged, never allowed to end the watch."""
        if self._closed:
            return
        try:
            self._react(event_type, pod)
        except Exception:
            metadata = pod.get("metadata") or {}
            logger.exception(
                "dev runtime: %s of pod %s/%s failed",
                event_type,
                metadata.get("namespace"),
                metadata.get("name"),
            )

    def _react(self, event_type: str, pod: Object) -> None:
        metadata = pod["metadata"]
        key = (metadata["namespace"], metadata["name"])
        run = self._pods.get(key)
        if run is not None and run.uid != metadata["uid"]:
            # The pod of that name was replaced: whatever is left of the old one goes.
            self._forget(run)
            run = None
        if event_type == DELETED:
            if run is not None:
                self._forget(run)
            return
        # Act on the pod as it stands, not on the event's snapshot: the runtime's own writes queue events
        # that are stale by the time they are read (a bound pod still Pending, though already completed).
        try:
            pod = self._store.get(PODS, key[0], key[1])
        except ApiError:
            return  # deleted meanwhile: its DELETED event follows
        if pod["metadata"]["uid"] != metadata["uid"]:
            return
        metadata = pod["metadata"]
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        if metadata.get("deletionTimestamp"):
            if run is not None:
                run.pod = pod
                run.delete(int(metadata.get("deletionGracePeriodSeconds") or 0))
            elif node == self.node_name and metadata.get("deletionGracePeriodSeconds"):
                # Nothing of ours runs for it (an instant pod, or bound before this runtime): finish at once.
                self._finish_deletion(metadata)
            return
        if run is not None:
            run.pod = pod
            return
        if node not in (None, "", self.node_name):
            return  # another node's (a test may run two runtimes on one store)
        if (pod.get("status") or {}).get("phase", "Pending") != "Pending":
            return
        # Unbound, or bound to this node by its author (or before this runtime started): run it.
        if not node:
            pod = self._store.patch(
                PODS, key[0], key[1], patches.MERGE, {"spec": {"nodeName": self.node_name}}
            ).obj
        if self.mode == "instant":
            self._complete_instantly(pod)
            return
        run = _Pod(self, pod)
        self._pods[key] = run
        self._runs.add(run)
        if not node:
            run.event("Normal", "Scheduled", f"Successfully assigned {key[0]}/{key[1]} to {self.node_name}")
        run.start()

    def _forget(self, run: _Pod) -> None:
        if self._pods.get(run.key) is run:
            del self._pods[run.key]
        self.spawn(run.remove(), f"remove {run.key}")

    def _finish_deletion(self, metadata: Object) -> None:
        with contextlib.suppress(ApiError):
            self._store.delete(
                PODS,
                metadata["namespace"],
                metadata["name"],
                grace_seconds=0,
                preconditions={"uid": metadata["uid"]},
            )

    # ---- instant mode -----------------------------------------------------------------------------------

    def _complete_instantly(self, pod: Object) -> None:
        metadata, spec = pod["metadata"], pod["spec"]
        annotations = metadata.get("annotations") or {}
        now = timestamp(self._clock())
        containers = spec["containers"]
        session = next(
            (c["name"] for c in containers if c.get("name") == SESSION_CONTAINER), containers[0]["name"]
        )
        code, message = 0, annotations.get(TERMINATION_MESSAGE_ANNOTATION)
        raw = annotations.get(EXIT_CODE_ANNOTATION)
        if raw is not None:
            try:
                code = int(raw)
            except ValueError:
                code, message = 1, f"{EXIT_CODE_ANNOTATION}: {raw!r} is not an integer exit code"

        def terminated(container: Object, exit_code: int, text: str | None) -> Object:
            state: Object = {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": now,
                "finishedAt": now,
            }
            if text:
                state["message"] = text
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

        phase = "Succeeded" if code == 0 else "Failed"
        status: Object = {
            "phase": phase,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                *(
                    {"type": kind, "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}
                    for kind in ("ContainersReady", "Ready")
                ),
            ],
            **_addresses(),
            "startTime": now,
            "containerStatuses": [
                terminated(c, code, message) if c["name"] == session else terminated(c, 0, None)
                for c in containers
            ],
        }
        if spec.get("initContainers"):
            status["initContainerStatuses"] = [terminated(c, 0, None) for c in spec["initContainers"]]
        self._store.patch(
            PODS,
            metadata["namespace"],
            metadata["name"],
            patches.MERGE,
            {"status": status},
            subresource="status",
        )

    # ---- shared helpers ---------------------------------------------------------------------------------

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task the runtime owns: awaited on close, its failure logged rather than lost."""
        task: asyncio.Task[None] = asyncio.create_task(coroutine, name=f"fleetdispatch-dev-runtime: {name}")
        self._tasks.add(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        _log_failure(task)

    def now(self) -> str:
        return timestamp(self._clock())

    def event(self, pod: Object, kind: str, reason: str, message: str, field_path: str | None = None) -> None:
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
        now = self.now()
        body = {
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
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._store.create(EVENTS, metadata["namespace"], body)
        except ApiError as error:  # e.g. the namespace is being deleted
            logger.debug("dev runtime: event %s for pod %s not recorded: %s", reason, metadata["name"], error)

    def lookup(self, plural: str, namespace: str, name: str) -> Object | None:
        kind = self._store.kind("", "v1", plural)
        assert kind is not None, f"the store serves no {plural}"
        try:
            return self._store.get(kind, namespace, name)
        except ApiError as error:
            if error.code == 404:
                return None
            raise

    def write_status(self, pod: _Pod, status: Object) -> None:
        try:
            self._store.patch(
                PODS, pod.key[0], pod.key[1], patches.MERGE, {"status": status}, subresource="status"
            )
        except ApiError as error:
            if error.code != 404:  # gone: its DELETED event is on its way and tidies up
                logger.warning("dev runtime: status of pod %s/%s not written: %s", *pod.key, error)

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
        # Whatever a cancelled task left running (a deletion in the middle of its grace) dies now.
        await asyncio.gather(*(run.remove() for run in runs), return_exceptions=True)


class _Pod:
    """One pod this node runs: its containers, their processes and the status they add up to."""

    def __init__(self, runtime: LocalRuntime, pod: Object) -> None:
        self.runtime = runtime
        self.pod = pod
        metadata = pod["metadata"]
        self.key: tuple[str, str] = (metadata["namespace"], metadata["name"])
        self.uid: str = metadata["uid"]
        self.directory = runtime.workdir / "pods" / f"{self.key[0]}_{self.key[1]}_{self.uid[:8]}"
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
        self.volumes: dict[str, Path | None] = {}  # None: a volume type not supported, not mounted
        self.start_time = runtime.now()
        self.initialized = not self.inits
        self.phase: str | None = None  # the final phase, once decided
        self.failure: tuple[str, str] | None = None  # pod-level (reason, message) of an internal error
        self.silent = False  # set on shutdown: the store is going away, write nothing more
        self._transitions: dict[str, tuple[str, str]] = {}
        self._lifecycle: asyncio.Task[None] | None = None
        self._deletion: asyncio.Task[None] | None = None
        self._reported: set[str] = set()

    @property
    def sidecars(self) -> list[_Container]:
        return [c for c in self.inits if c.role == "sidecar"]

    def log_file(self, container: str) -> Path:
        return self.directory / "logs" / f"{container}.log"

    # ---- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        self.publish()
        self._lifecycle = self.runtime.spawn(self._live(), f"run {self.key}")

    async def _live(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.exception("dev runtime: pod %s/%s failed in the runtime", *self.key)
            self._signal(self.containers.values(), signal.SIGKILL)
            await self._wait(self.containers.values(), _KILL_WAIT_SECONDS)
            self.failure = ("DevRuntimeError", f"the dev runtime failed to run the pod: {error}")
            self.phase = "Failed"
            self.publish()

    async def _run(self) -> None:
        (self.directory / "logs").mkdir(parents=True, exist_ok=True)
        await self._retry(self._mount_volumes, list(self.containers.values()), "FailedMount")
        for container in self.inits:
            await self._start(container)
            if container.role == "sidecar":
                if container.exit_code is not None:  # it could not start: the pod cannot initialise
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

    async def _finish(self, *, failed: bool) -> None:
        """The main containers are done (or initialisation failed): stop the sidecars, then the phase."""
        grace = int(self.pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_SECONDS))
        await self._stop([c for c in self.inits if c.running], grace)
        self.phase = "Failed" if failed else "Succeeded"
        self.publish()

    def delete(self, grace: int) -> None:
        """The pod is marked for deletion: stop it within ``grace`` seconds, then finish the deletion."""
        if self._deletion is None:
            self._deletion = self.runtime.spawn(self._delete(grace), f"delete {self.key}")

    async def _delete(self, grace: int) -> None:
        await self.terminate(grace)
        self.runtime._finish_deletion(self.pod["metadata"])

    async def terminate(self, grace: float) -> None:
        """Stop what runs: main containers first, then sidecars, all KILLed once ``grace`` is over."""
        await self._cancel_lifecycle()
        if any(c.running for c in self.containers.values()):
            self.event("Normal", "Killing", f"Stopping the pod's containers (grace {grace}s)")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        await self._stop([c for c in self.containers.values() if c.role != "sidecar" and c.running], grace)
        # One grace for the whole pod: the sidecars get what the main containers left of it.
        await self._stop([c for c in self.sidecars if c.running], max(0.0, deadline - loop.time()))
        if self.phase is None:
            self.phase = "Succeeded" if all(c.exit_code == 0 for c in self.mains) else "Failed"
            self.publish()

    async def remove(self) -> None:
        """The pod is gone from the store: KILL what is left at once and remove its directory."""
        self.silent = True
        # Cancelled and KILLed before the first await: even if this is cancelled too, nothing survives.
        tasks = [task for task in (self._deletion, self._lifecycle) if task is not None]
        for task in tasks:
            task.cancel()
        self._signal(self.containers.values(), signal.SIGKILL)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._wait(self.containers.values(), _KILL_WAIT_SECONDS)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.runtime.removed(self)

    async def _cancel_lifecycle(self) -> None:
        if self._lifecycle is not None:
            self._lifecycle.cancel()
            await asyncio.gather(self._lifecycle, return_exceptions=True)

    # ---- processes --------------------------------------------------------------------------------------

    async def _stop(self, containers: list[_Container], grace: float) -> None:
        """TERM, then KILL what still runs after ``grace`` seconds; returns once they have all exited."""
        if not containers:
            return
        self._signal(containers, signal.SIGTERM)
        await self._wait(containers, grace)
        survivors = [c for c in containers if c.running]
        if survivors:
            logger.info(
                "dev runtime: pod %s/%s: KILL %s after %ss", *self.key, [c.name for c in survivors], grace
            )
            self._signal(survivors, signal.SIGKILL)
            await self._wait(survivors, _KILL_WAIT_SECONDS)

    @staticmethod
    def _signal(containers: Iterable[_Container], number: signal.Signals) -> None:
        for container in containers:
            # Not reaped yet, so its pid (the group's id) cannot have been reused by another process.
            if container.process is not None and container.process.returncode is None:
                _kill_group(container.process.pid, number)

    @staticmethod
    async def _wait(containers: Iterable[_Container], timeout: float) -> None:
        watchers = {c.watcher for c in containers if c.watcher is not None and not c.watcher.done()}
        if watchers and timeout > 0:
            await asyncio.wait(watchers, timeout=timeout)

    async def _start(self, container: _Container) -> None:
        """Resolve the container (retrying while it cannot be) and start its process."""
        launch = await self._retry(lambda: self._launch(container), [container], "Failed")
        log = self.log_file(container.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        started = self.runtime.now()
        try:
            with log.open("ab") as output:
                process = await asyncio.create_subprocess_exec(
                    *launch.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=launch.cwd,
                    env=launch.env,
                    start_new_session=True,
                )
        except OSError as error:
            message = f"failed to start {launch.argv[0]!r}: {error.strerror or error}"
            self.event("Warning", "Failed", message, container)
            self._terminated(container, START_ERROR_EXIT_CODE, "StartError", message, started=started)
            return
        container.process = process
        container.state = {"running": {"startedAt": started}}
        # Not a task of the runtime's: cancelling the runtime's tasks must not lose track of the process.
        container.watcher = asyncio.create_task(
            self._watch(container, launch, started),
            name=f"fleetdispatch-dev-runtime: {self.key} {container.name}",
        )
        container.watcher.add_done_callback(_log_failure)
        self.event("Normal", "Started", f"Started container {container.name}", container)
        self.publish()

    async def _watch(self, container: _Container, launch: _Launch, started: str) -> None:
        assert container.process is not None
        returncode = await container.process.wait()
        # What the container's main process leaves behind dies with it, as in a container.
        _kill_group(container.process.pid, signal.SIGKILL)
        code = 128 - returncode if returncode < 0 else returncode
        message = _read_tail(launch.termination_file, MAX_TERMINATION_MESSAGE_BYTES)
        if (
            not message
            and code != 0
            and container.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            message = _log_tail(self.log_file(container.name))
        reason = "Completed" if code == 0 else "Error"
        killed_by = -returncode if returncode < 0 else None
        self._terminated(container, code, reason, message, started=started, killed_by=killed_by)

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
        state: Object = {
            "exitCode": code,
            "reason": reason,
            "startedAt": started,
            "finishedAt": self.runtime.now(),
        }
        if message:
            state["message"] = message
        if killed_by is not None:
            state["signal"] = killed_by
        container.state = {"terminated": state}
        container.done.set()
        self.publish()

    async def _retry(self, attempt: Callable[[], T], containers: list[_Container], reason: str) -> T:
        """``attempt()`` until it stops raising :class:`_ContainerError`, the containers waiting meanwhile.

        The kubelet retries too: a Secret created after the pod lets it start. A warning event is
        recorded once per distinct error, not once per attempt.
        """
        while True:
            try:
                return attempt()
            except _ContainerError as error:
                for container in containers:
                    container.state = {"waiting": {"reason": error.reason, "message": error.message}}
                if error.message not in self._reported:
                    self._reported.add(error.message)
                    self.event(
                        "Warning", reason, error.message, containers[0] if len(containers) == 1 else None
                    )
                self.publish()
            await asyncio.sleep(self.runtime.retry_seconds)

    def _field(self, container: _Container) -> str:
        return f"spec.{'containers' if container.role == 'main' else 'initContainers'}{{{container.name}}}"

    def event(self, kind: str, reason: str, message: str, container: _Container | None = None) -> None:
        if not self.silent:
            self.runtime.event(
                self.pod, kind, reason, message, None if container is None else self._field(container)
            )

    # ---- volumes and the container's view of them -------------------------------------------------------

    def _mount_volumes(self) -> None:
        for volume in self.pod["spec"].get("volumes") or []:
            name = volume["name"]
            if name in self.volumes:
                continue
            local = self.directory / "volumes" / name
            if "emptyDir" in volume:
                local.mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                local = self.runtime.workdir / "claims" / self.key[0] / claim
                local.mkdir(parents=True, exist_ok=True)
            elif "secret" in volume or "configMap" in volume:
                self._materialise(name, volume, local)
            else:
                kinds = ", ".join(sorted(k for k in volume if k != "name")) or "no source"
                message = f'volume "{name}" ({kinds}) is not supported by the dev runtime and is not mounted'
                logger.warning("dev runtime: pod %s/%s: %s", *self.key, message)
                self.event("Warning", "VolumeNotSupported", message)
                self.volumes[name] = None  # noted, so not warned about again
                continue
            self.volumes[name] = local

    def _materialise(self, name: str, volume: Object, local: Path) -> None:
        """A Secret or ConfigMap volume: one file per key (or per ``items`` entry)."""
        is_secret = "secret" in volume
        source = volume["secret" if is_secret else "configMap"]
        object_name = source.get("secretName" if is_secret else "name", "")
        data = self._data(is_secret, object_name)
        if data is None:
            if source.get("optional"):
                local.mkdir(parents=True, exist_ok=True)
                return
            kind = "secret" if is_secret else "configmap"
            raise _ContainerError(
                "ContainerCreating",
                f'MountVolume.SetUp failed for volume "{name}": {kind} "{object_name}" not found',
            )
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        default_mode = int(source.get("defaultMode", 0o644))
        local.mkdir(parents=True, exist_ok=True)
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise _ContainerError(
                    "ContainerCreating",
                    f'MountVolume.SetUp failed for volume "{name}": no key {item["key"]} in {object_name}',
                )
            target = local / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)  # an earlier attempt may have left it read-only
            target.write_bytes(data[item["key"]])
            target.chmod(int(item.get("mode", default_mode)))

    def _data(self, is_secret: bool, name: str) -> dict[str, bytes] | None:
        """A Secret's or ConfigMap's keys as bytes, or None when it does not exist."""
        obj = self.runtime.lookup("secrets" if is_secret else "configmaps", self.key[0], name)
        if obj is None:
            return None
        data: dict[str, bytes] = {}
        if is_secret:
            for key, value in (obj.get("data") or {}).items():
                try:
                    data[key] = base64.b64decode(str(value), validate=True)
                except binascii.Error:
                    data[key] = str(value).encode()
            # The dev store keeps stringData as written, where a real API server folds it into data.
            for key, value in (obj.get("stringData") or {}).items():
                data[key] = str(value).encode()
        else:
            for key, value in (obj.get("binaryData") or {}).items():
                data[key] = base64.b64decode(str(value))
            for key, value in (obj.get("data") or {}).items():
                data[key] = str(value).encode()
        return data

    def _view(self, container: _Container) -> tuple[_View, Path]:
        """The container's mounts as local paths, and its termination message file."""
        paths: dict[str, Path] = {}
        for mount in container.spec.get("volumeMounts") or []:
            local = self.volumes.get(mount["name"])
            mount_path = str(mount.get("mountPath", "")).rstrip("/")
            if local is None or not mount_path:  # an unsupported volume, or one over "/": nothing to rewrite
                continue
            if mount.get("subPath"):
                local = local / mount["subPath"]
                if not local.exists():
                    local.mkdir(parents=True, exist_ok=True)
            paths[mount_path] = local
        path = str(container.spec.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH)
        mounted = _View(paths).rewrite(path)
        if mounted != path:
            return _View(paths), Path(mounted)
        termination = self.directory / "containers" / container.name / "termination-log"
        termination.parent.mkdir(parents=True, exist_ok=True)
        termination.touch()
        paths[path] = termination
        return _View(paths), termination

    # ---- a container's process --------------------------------------------------------------------------

    def _launch(self, container: _Container) -> _Launch:
        spec = container.spec
        field = self._field(container)
        command = [str(part) for part in spec.get("command") or []]
        if not command:
            raise _ContainerError("CreateContainerError", NO_COMMAND.format(field=field))
        view, termination = self._view(container)
        defined = self._env(container, view)
        argv = [_expand(view.rewrite(str(part)), defined) for part in [*command, *(spec.get("args") or [])]]
        env = {
            "PATH": _base_path(),
            "HOME": str(self.directory),
            "LANG": "C.UTF-8",
            "HOSTNAME": self.key[1],
            **defined,
        }
        cwd = self.directory
        if spec.get("workingDir"):
            wanted = Path(_expand(view.rewrite(str(spec["workingDir"])), defined))
            if wanted.is_dir():
                cwd = wanted
        return _Launch(argv, env, cwd, termination)

    def _env(self, container: _Container, view: _View) -> dict[str, str]:
        """The variables the pod defines for the container, in order (later ones see earlier ones)."""
        env: dict[str, str] = {}
        for source in container.spec.get("envFrom") or []:
            prefix = str(source.get("prefix") or "")
            for is_secret, ref in ((True, source.get("secretRef")), (False, source.get("configMapRef"))):
                if ref is None:
                    continue
                data = self._data(is_secret, ref.get("name", ""))
                if data is None:
                    if ref.get("optional"):
                        continue
                    kind = "secret" if is_secret else "configmap"
                    raise _ContainerError(
                        "CreateContainerConfigError", f'{kind} "{ref.get("name")}" not found'
                    )
                for key, raw in data.items():
                    env[prefix + key] = raw.decode(errors="replace")
        for variable in container.spec.get("env") or []:
            name = variable["name"]
            if "valueFrom" in variable:
                value = self._value_from(variable["valueFrom"])
                if value is None:
                    continue
                env[name] = view.rewrite(value)
            else:
                env[name] = _expand(view.rewrite(str(variable.get("value") or "")), env)
        return env

    def _value_from(self, source: Object) -> str | None:
        """A ``valueFrom`` reference resolved; None for a missing optional one."""
        for field, is_secret in (("secretKeyRef", True), ("configMapKeyRef", False)):
            ref = source.get(field)
            if ref is None:
                continue
            name, key = ref.get("name", ""), ref.get("key", "")
            kind = "Secret" if is_secret else "ConfigMap"
            data = self._data(is_secret, name)
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
                    "CreateContainerConfigError", f"fieldRef {path!r} is not supported by the dev runtime"
                )
            return value
        raise _ContainerError(
            "CreateContainerConfigError",
            f"valueFrom {', '.join(sorted(source)) or '{}'} is not supported by the dev runtime "
            "(it enforces no resources)",
        )

    # ---- status -----------------------------------------------------------------------------------------

    def publish(self) -> None:
        if not self.silent:
            self.runtime.write_status(self, self.status())

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
                message = f"containers with unready status: [{' '.join(unready)}]"
                wanted.append((kind, not unready, "ContainersNotReady", message))
        conditions = []
        for kind, true, reason, message in wanted:
            status = "True" if true else "False"
            previous = self._transitions.get(kind)
            if previous is None or previous[0] != status:
                self._transitions[kind] = previous = (status, self.runtime.now())
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
    """The downward API's ``fieldRef`` paths this runtime can answer (None: unsupported)."""
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


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("dev runtime: %s failed", task.get_name(), exc_info=task.exception())


def _kill_group(pid: int, number: signal.Signals) -> None:
    """Signal a container's process group (its pid: each container starts a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, number)


def _read_tail(path: Path, limit: int) -> str:
    """The last ``limit`` bytes of a file, as text ('' when it is missing or unreadable)."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - limit))
            return file.read().decode(errors="replace")
    except OSError:
        return ""


def _log_tail(path: Path) -> str:
    """``FallbackToLogsOnError``: the log's last lines, within the kubelet's bounds."""
    lines = _read_tail(path, FALLBACK_LOG_BYTES * 4).splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
    return "".join(lines).encode()[-FALLBACK_LOG_BYTES:].decode(errors="replace")


__all__ = [
    "DEFAULT_NODE",
    "EXIT_CODE_ANNOTATION",
    "TERMINATION_MESSAGE_ANNOTATION",
    "LocalRuntime",
    "Mode",
]
