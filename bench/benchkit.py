"""What the benches share: the dev cluster's real control plane, an admin client, the operator as a process,
the audit log read as the request log, and CPU and memory readings of processes.

Not a bench itself. The cluster is a `BackgroundCluster` (kube-apiserver, etcd, kube-controller-manager and
kube-scheduler as processes, the node agent on a thread of this process); the bench's own client is an
asyncio `KubeApi` as the cluster admin, on this process's main thread, over kept-alive connections. The
admin's reads are not audited (controlplane.AUDIT_POLICY), so the audit log holds the operator's requests,
the admin's writes and the Job controller's requests, and nothing the bench polls.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from fleetdispatch.api.names import API_VERSION
from fleetdispatch.client.kubeapi import ApiError, Credentials, KubeApi
from fleetdispatch.devcluster.nodeagent import RUNTIME_ANNOTATION
from fleetdispatch.devcluster.stack import (
    BackgroundCluster,
    audit_events,
    start_operator,
    stop_operator,
)

MIB = 1024 * 1024
POLL_SECONDS = 0.2
WRITE_VERBS = ("create", "patch", "update", "delete", "deletecollection")
JOB_CONTROLLER = "system:serviceaccount:kube-system:job-controller"
Summary = Callable[[dict[str, Any]], Any]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def mem(size: float) -> str:
    return f"{size / MIB:.0f} MiB ({size / 1e6:.0f} MB)"


def row(label: str, value: str, target: str = "", ok: bool | None = None) -> None:
    tail = "" if ok is None else f"  {target:<16} {'PASS' if ok else 'over'}"
    print(f"  {label:<40} {value:>26}{tail}", flush=True)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# --- the cluster -----------------------------------------------------------------------------------------


def dispatch_body(index: int, runtime: str, container: Mapping[str, Any], **spec: Any) -> dict[str, Any]:
    """FleetDispatch `dNNNNN` whose pods the dev node runs as `runtime` (instant, none), one container."""
    return {
        "apiVersion": API_VERSION,
        "kind": "FleetDispatch",
        "metadata": {"name": f"d{index:05d}"},
        "spec": {
            "template": {
                "metadata": {"annotations": {RUNTIME_ANNOTATION: runtime}},
                "spec": {"containers": [dict(container)]},
            },
            **spec,
        },
    }


def admin(cluster: BackgroundCluster) -> KubeApi:
    """An asyncio client as the cluster admin (client certificate), for the bench's writes and watches."""
    plane = cluster.dev.plane
    return KubeApi(
        Credentials(
            server=plane.url,
            ca_file=str(plane.ca),
            certificate_file=str(plane.admin.certificate),
            key_file=str(plane.admin.key),
        ),
        user_agent="fleetdispatch-bench",
    )


def make_namespace(cluster: BackgroundCluster, name: str, timeout: float = 60.0) -> None:
    """A namespace, once its default ServiceAccount exists (pods are refused before)."""
    plane = cluster.dev.plane
    status, body = plane.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    if status not in (201, 409):
        raise RuntimeError(f"namespace {name}: {status} {body.get('message')}")
    deadline = time.monotonic() + timeout
    while plane.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no default ServiceAccount in {name} after {timeout} s")
        time.sleep(0.1)


async def create_all(
    api: KubeApi, path: str, bodies: Iterable[dict[str, Any]], concurrency: int
) -> dict[str, float]:
    """POST every body to `path`, `concurrency` at a time; each name -> the perf_counter of its response."""
    gate = asyncio.Semaphore(concurrency)
    created: dict[str, float] = {}

    async def one(body: dict[str, Any]) -> None:
        async with gate:
            for attempt in range(5):
                try:
                    await api.request("POST", path, body)
                    break
                except ApiError as error:
                    if error.status != 429 or attempt == 4:
                        raise
                    await asyncio.sleep(0.5)
            created[body["metadata"]["name"]] = time.perf_counter()

    await asyncio.gather(*(one(body) for body in bodies))
    return created


class Tracker:
    """One watch of a collection as admin: every object's `summary`, and when each first passed a test.

    The watch starts without a resourceVersion (the existing objects arrive as ADDED) and is restarted
    from the last resourceVersion if the server ends it.
    """

    def __init__(self, api: KubeApi, path: str, summary: Summary) -> None:
        self.api, self.path, self.summary = api, path, summary
        self.objects: dict[str, Any] = {}
        self.events = 0
        self._tests: dict[str, tuple[Callable[[Any], bool], dict[str, float]]] = {}
        self.first: dict[str, dict[str, Any]] = {}  # label -> name -> the summary that first passed
        self._task: asyncio.Task[None] | None = None
        self._version = ""

    def when(self, label: str, test: Callable[[Any], bool]) -> dict[str, float]:
        """name -> the perf_counter at which its summary first passed `test` (filled as events arrive)."""
        seen: dict[str, float] = {}
        self._tests[label] = (test, seen)
        self.first[label] = {}
        return seen

    def count(self, test: Callable[[Any], bool]) -> int:
        return sum(1 for summary in self.objects.values() if test(summary))

    async def _run(self) -> None:
        while True:
            params = {"watch": "1", "timeoutSeconds": "3600", "allowWatchBookmarks": "true"}
            if self._version:
                params["resourceVersion"] = self._version
            try:
                async for event in self.api.watch(self.path, params):
                    kind, obj = event.get("type"), event.get("object") or {}
                    metadata = obj.get("metadata") or {}
                    self._version = str(metadata.get("resourceVersion") or self._version)
                    if kind == "ERROR":
                        self._version = ""
                        break
                    if kind == "BOOKMARK":
                        continue
                    self.events += 1
                    name = str(metadata.get("name"))
                    if kind == "DELETED":
                        self.objects.pop(name, None)
                        continue
                    summary = self.summary(obj)
                    self.objects[name] = summary
                    now = time.perf_counter()
                    for label, (test, seen) in self._tests.items():
                        if name not in seen and test(summary):
                            seen[name] = now
                            self.first[label][name] = summary
            # ClientError: the stream ended mid-chunk (the API server restarted)
            except (TimeoutError, ApiError, OSError, aiohttp.ClientError):
                await asyncio.sleep(0.2)

    async def __aenter__(self) -> Tracker:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def wait(
        self, test: Callable[[Any], bool], count: int, *, timeout: float, what: str, alive: Callable[[], None]
    ) -> float:
        """Until `count` objects pass `test`; the perf_counter then. `alive` raises if a part has died."""
        deadline = time.monotonic() + timeout
        while self.count(test) < count:
            alive()
            if time.monotonic() > deadline:
                seen = Counter(str(s) for s in self.objects.values()).most_common(5)
                raise RuntimeError(f"{self.count(test)} of {count} {what} after {timeout:.0f} s: {seen}")
            await asyncio.sleep(POLL_SECONDS)
        return time.perf_counter()


async def quiet(path: Path, seconds: float = 1.0, timeout: float = 120.0) -> None:
    """Until the audit log has not grown for `seconds` (the operator's tail: Events, late writes)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        size = path.stat().st_size
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
        await asyncio.sleep(0.1)


def audit_size(cluster: BackgroundCluster) -> int:
    return cluster.dev.audit_log.stat().st_size


def requests_of(cluster: BackgroundCluster, user: str, offset: int) -> list[dict[str, Any]]:
    """The completed requests of `user` in the audit log from byte `offset`."""
    events, _ = audit_events(cluster.dev.audit_log, offset)
    return [
        e
        for e in events
        if e.get("stage") == "ResponseComplete" and (e.get("user") or {}).get("username") == user
    ]


def resource(event: Mapping[str, Any]) -> str:
    ref = event.get("objectRef") or {}
    name = str(ref.get("resource") or "(non-resource)")
    return name + (f"/{ref['subresource']}" if ref.get("subresource") else "")


def report_requests(events: list[dict[str, Any]], count: int, what: str) -> tuple[int, int]:
    """Print one user's requests per `what` by verb, resource and status; returns (reads, writes)."""
    writes = [e for e in events if e.get("verb") in WRITE_VERBS]
    reads = [e for e in events if e.get("verb") in ("get", "list")]
    watches = [e for e in events if e.get("verb") == "watch"]
    breakdown = Counter(
        (str(e.get("verb")), resource(e), int((e.get("responseStatus") or {}).get("code") or 0))
        for e in events
    )
    print(f"  requests by verb, resource and status (per {what}, total):")
    for (verb, name, status), number in sorted(breakdown.items(), key=lambda x: (-x[1], x[0])):
        print(f"    {verb:<8} {name:<28} {status:>4} {number / count:8.2f} {number:8d}")
    if watches:
        print(f"  ({len(watches)} watches ended during the run; the ones still open are not counted)")
    return len(reads), len(writes)


# --- processes -------------------------------------------------------------------------------------------


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def hwm(pid: int) -> int:
    """The peak RSS the kernel recorded (VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) * 1024


@dataclass
class Components:
    """CPU of the control plane's processes (from /proc/<pid>/stat, via psutil) and of this process (the
    node agent and the bench's client), between `mark` and `delta`."""

    cluster: BackgroundCluster
    processes: dict[str, psutil.Process] = field(default_factory=dict)
    _marked: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for component in self.cluster.dev.plane.components:
            assert component.process is not None
            self.processes[component.name] = psutil.Process(component.process.pid)
        self.processes["node agent + bench client (this process)"] = psutil.Process()

    def mark(self) -> None:
        self._marked = {name: cpu_seconds(p) for name, p in self.processes.items()}

    def delta(self) -> dict[str, float]:
        return {name: cpu_seconds(p) - self._marked[name] for name, p in self.processes.items()}


def report_components(delta: Mapping[str, float], count: int, what: str) -> None:
    print(f"  CPU of the cluster's processes, per {what}:")
    for name, seconds in delta.items():
        print(f"    {name:<44} {seconds * 1000 / count:7.2f} ms")


class PeakRss:
    """Samples a process's RSS every POLL_SECONDS on a thread, keeping the largest."""

    def __init__(self, process: psutil.Process) -> None:
        self.peak = 0
        self._process = process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, int(self._process.memory_info().rss))
            except psutil.Error:
                return
            self._stop.wait(POLL_SECONDS)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the operator ----------------------------------------------------------------------------------------


class Operator:
    """`fleetdispatch operator` in a child process as the chart's identity (the dev cluster's operator
    kubeconfig), optionally under cProfile; its log goes to a file."""

    def __init__(
        self, cluster: BackgroundCluster, workdir: Path, workers: int | None = None, profile: bool = False
    ) -> None:
        self.cluster = cluster
        self.log_path = workdir / "operator.log"
        self.profile_path = workdir / "operator.prof" if profile else None
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.process = start_operator(
            self.cluster.dev,
            self.log_path,
            f"--metrics-port={self.metrics_port}",
            f"--health-port={self.health_port}",
            *([f"--workers={self.workers}"] if self.workers else []),
            python_args=["-m", "cProfile", "-o", str(self.profile_path)] if self.profile_path else [],
            timeout=timeout,
        )
        self.ps = psutil.Process(self.process.pid)

    def alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"the operator exited with code {self.process.returncode}:\n{self.log()}")
        died = self.cluster.dev.failed()
        if died is not None:
            raise RuntimeError(died)

    def cpu(self) -> float:
        assert self.ps is not None
        return cpu_seconds(self.ps)

    def rss(self) -> int:
        assert self.ps is not None
        return int(self.ps.memory_info().rss)

    def hwm(self) -> int:
        assert self.process is not None
        return hwm(self.process.pid)

    def metrics(self) -> dict[str, float]:
        """The operator's own /metrics, summed over labels: `name` -> value."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        values: dict[str, float] = collections.defaultdict(float)
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name.partition("{")[0]] += float(value)
        return values

    def log(self, size: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None:
            stop_operator(self.process, grace=20)
