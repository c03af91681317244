"""The whole dev cluster in one place: API server, pod runtime and CRDs, started and stopped together.

:class:`DevCluster` is what ``fleetdispatch dev`` runs and what the test fixtures start: the
:class:`~.server.ApiServer` on a loopback port, the :class:`~.runtime.LocalRuntime` (processes, or
``instant`` pods for benchmarks, or none), fleet-dispatch's CRDs installed, and a kubeconfig that points
``kubectl`` and kopf at it. Stopping it stops the runtime first, which kills every process it started, then
the server, whose open watches end at once.

:class:`BackgroundCluster` runs one in a thread with its own event loop, for synchronous callers: pytest
tests that drive ``kubectl`` or a kopf operator in a subprocess, and scripts. Code that needs the store
calls :meth:`BackgroundCluster.call`, which runs a function on the cluster's loop, because the store is not
thread-safe (one loop owns it, as one process owns a real API server's state).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import yaml

from fleetdispatch import validation
from fleetdispatch.api import GROUP, VERSION
from fleetdispatch.devcluster.resources import CRDS, PODS
from fleetdispatch.devcluster.runtime import LocalRuntime
from fleetdispatch.devcluster.server import ApiServer
from fleetdispatch.devcluster.store import Store

RuntimeMode = Literal["local", "instant", "none"]
T = TypeVar("T")


def kubeconfig(url: str, namespace: str = "default") -> str:
    """A kubeconfig for the dev cluster: no credentials, because the server asks for none."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fleetdispatch-dev", "cluster": {"server": url}}],
        "users": [{"name": "fleetdispatch-dev", "user": {}}],
        "contexts": [
            {
                "name": "fleetdispatch-dev",
                "context": {
                    "cluster": "fleetdispatch-dev",
                    "user": "fleetdispatch-dev",
                    "namespace": namespace,
                },
            }
        ],
        "current-context": "fleetdispatch-dev",
    }
    return yaml.safe_dump(config, sort_keys=False)


class DevCluster:
    """API server + runtime + CRDs in the running event loop: ``async with DevCluster() as cluster``."""

    def __init__(
        self,
        *,
        port: int = 0,
        runtime: RuntimeMode = "local",
        workdir: Path | None = None,
        crds: Iterable[dict[str, Any]] | None = None,
        bookmark_seconds: float = 30.0,
    ) -> None:
        self.store = Store()
        self._workdir = workdir
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        self._mode = runtime
        self.runtime: LocalRuntime | None = None
        self.server = ApiServer(self.store, port=port, bookmark_seconds=bookmark_seconds)
        self._crds = list(validation.crds().values() if crds is None else crds)
        self._runtime_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> None:
        for crd in self._crds:
            self.store.create(CRDS, None, crd)
        if self._mode != "none":
            if self._workdir is None:
                self._temporary = tempfile.TemporaryDirectory(prefix="fleetdispatch-dev-")
                self._workdir = Path(self._temporary.name)
            self.runtime = LocalRuntime(self.store, workdir=self._workdir, mode=self._mode)
            self.server.logs = self.runtime.log_path
            self._runtime_task = asyncio.create_task(self.runtime.run(), name="fleetdispatch-dev-runtime")
        await self.server.start()

    async def stop(self) -> None:
        if self.runtime is not None:
            await self.runtime.close()
        if self._runtime_task is not None:
            self._runtime_task.cancel()
            await asyncio.gather(self._runtime_task, return_exceptions=True)
        await self.server.stop()
        if self._temporary is not None:
            self._temporary.cleanup()

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
    def url(self) -> str:
        assert self.cluster is not None
        return self.cluster.url

    def _submit(self, coroutine: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def call(self, function: Callable[[DevCluster], T], timeout: float = 30.0) -> T:
        """Run ``function(cluster)`` on the cluster's loop (where the store may be touched) and return."""

        async def run() -> T:
            assert self.cluster is not None
            return function(self.cluster)

        result: T = self._submit(run()).result(timeout)
        return result

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(kubeconfig(self.url, namespace), encoding="utf-8")
        return path

    def __enter__(self) -> BackgroundCluster:
        self._thread.start()

        async def start() -> DevCluster:
            cluster = DevCluster(**self._options)
            await cluster.start()
            return cluster

        self.cluster = self._submit(start()).result(30)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            if self.cluster is not None:
                self._submit(self.cluster.stop()).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


async def _operator_watching(cluster: DevCluster, task: asyncio.Task[None]) -> None:
    """Until the operator watches dispatches and pods (or has died, which the caller reports)."""
    dispatches = cluster.store.kind(GROUP, VERSION, "fleetdispatches")
    kinds = [PODS] if dispatches is None else [PODS, dispatches]
    while not task.done() and not all(cluster.store.watching(kind) for kind in kinds):
        await asyncio.sleep(0.05)


async def serve(
    *,
    kubeconfig_path: Path,
    port: int,
    runtime: RuntimeMode,
    announce: Callable[[str], None],
    stop: asyncio.Event | None = None,
    operator: bool = True,
) -> None:
    """What ``fleetdispatch dev`` does: serve until ``stop`` is set (by default on SIGINT or SIGTERM).

    With ``operator``, the operator runs in the same event loop, talking to the API server over HTTP like
    any client, and ``ready`` is announced only once it watches.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    async with DevCluster(port=port, runtime=runtime) as cluster:
        kubeconfig_path.write_text(kubeconfig(cluster.url), encoding="utf-8")
        announce(f"fleetdispatch dev: API server at {cluster.url}, pod runtime: {runtime}")
        announce(f"export KUBECONFIG={kubeconfig_path.resolve()}")
        operator_stop = asyncio.Event()
        task: asyncio.Task[None] | None = None
        if operator:
            from fleetdispatch import controller
            from fleetdispatch.settings import OperatorSettings

            options = OperatorSettings(metrics_port=0, health_port=0)
            task = asyncio.create_task(
                controller.run(options, server=cluster.url, stop_flag=operator_stop),
                name="fleetdispatch-operator",
            )
            await _operator_watching(cluster, task)
            if task.done():
                await task  # its error, rather than a dev cluster that silently runs nothing
            # kopf installs its own SIGINT/SIGTERM handlers; ours stop the operator, then everything else.
            for signal_number in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signal_number, stop.set)
        what = "CRDs served, operator watching" if operator else "CRDs served, no operator"
        announce(f"ready: {what}; state is in memory and goes away on exit (Ctrl-C to stop)")
        await stop.wait()
        announce("stopping: killing session processes, closing the API server")
        if task is not None:
            # kopf's graceful stop waits for its watch requests to end; the API server is ours and about
            # to close, so after a short grace the operator is cancelled instead (it holds no state).
            operator_stop.set()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 1.0)
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signal_number)
