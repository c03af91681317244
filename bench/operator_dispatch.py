"""What the operator costs per dispatch, end to end against the dev cluster, and its memory at scale.

Prints, for one run on this machine, with the real `fleetdispatch operator` in a child process talking to
a dev cluster in this one over HTTP:

- run A: N dispatches created at once, on a cluster whose pods complete at once with exit code 0 (the
  `instant` runtime): the wall time from the first create until all are `Succeeded` (and dispatches/s), the
  operator process's own CPU per dispatch, its peak RSS, and the API requests it made per dispatch, reads
  and writes apart and by verb and resource, so that one sees where the writes go;
- run B: M dispatches each waiting on a pod that never runs (runtime `none`: the steady state of a long
  campaign), and the operator's RSS once every one has its pod.

Run: `.venv/bin/python bench/operator_dispatch.py [--dispatches N] [--idle M] [--workers W] [--profile]`.
Dispatches are created directly in the dev cluster's store (100 per call on its loop), so no HTTP client
of this script's competes with the operator; the store's admission (CRD schema and CEL, about 3 ms each)
still runs, on the dev cluster's loop. The operator's CPU is read from its process (user + system), from
when it watches until it has gone quiet, so kopf's start-up is excluded and the dev cluster's speed does
not enter it (bench/devcluster_api.py reports that apart). Each figure is printed against its target; the
targets are the issue's, for a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from fleetdispatch.api import API_VERSION, GROUP, VERSION
from fleetdispatch.devcluster.resources import NAMESPACES, PODS, ResourceType
from fleetdispatch.devcluster.server import RequestRecord
from fleetdispatch.devcluster.stack import BackgroundCluster, DevCluster

NAMESPACE = "bench"
BATCH = 100
POLL_SECONDS = 0.2
MIB = 1024 * 1024
WRITES = ("POST", "PUT", "PATCH", "DELETE")
OPERATOR_AGENTS = ("fleet-dispatch", "kopf")

TARGET_RATE = 40.0  # dispatches/s end to end, at least
TARGET_CPU_MS = 20.0  # operator CPU per dispatch, at most
TARGET_WRITES = 6.0  # writes per single-attempt successful dispatch, at most
TARGET_RSS_BYTES = 250e6  # operator RSS with 10,000 dispatches, at most (250 MB = 238 MiB)
LATER_SECONDS = 10.0  # kopf ends an object's idle worker after 5 s; RSS is read again after this


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _dispatches(cluster: DevCluster) -> ResourceType:
    kind = cluster.store.kind(GROUP, VERSION, "fleetdispatches")
    assert kind is not None
    return kind


def _body(index: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "FleetDispatch",
        "metadata": {"name": f"d{index:05d}"},
        "spec": {"template": {"spec": {"containers": [{"name": "session", "image": "busybox"}]}}},
    }


def _mem(size: float) -> str:
    return f"{size / MIB:.0f} MiB ({size / 1e6:.0f} MB)"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "over"


def _row(label: str, value: str, target: str = "", ok: bool | None = None) -> None:
    tail = "" if ok is None else f"  {target:<16} {_verdict(ok)}"
    print(f"  {label:<38} {value:>24}{tail}", flush=True)


class Operator:
    """`fleetdispatch operator` in a child process, optionally under cProfile; its log goes to a file."""

    def __init__(self, cluster: BackgroundCluster, workdir: Path, workers: int | None, profile: bool) -> None:
        self.cluster = cluster
        self.kubeconfig = cluster.write_kubeconfig(workdir / "kubeconfig")
        self.log_path = workdir / "operator.log"
        self.profile_path = workdir / "operator.prof" if profile else None
        self.metrics_port = _free_port()
        self.health_port = _free_port()
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    def start(self, timeout: float = 60.0) -> None:
        prefix = ["-m", "cProfile", "-o", str(self.profile_path)] if self.profile_path else []
        command = [
            sys.executable,
            *prefix,
            "-m",
            "fleetdispatch.cli",
            "operator",
            f"--metrics-port={self.metrics_port}",
            f"--health-port={self.health_port}",
            *([f"--workers={self.workers}"] if self.workers else []),
        ]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.process.pid)
        deadline = time.monotonic() + timeout
        while not self.watching():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the operator does not watch after {timeout} s")
            time.sleep(0.05)

    def watching(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"the operator exited with code {self.process.returncode}")
        return bool(
            self.cluster.call(lambda c: c.store.watching(_dispatches(c)) >= 1 and c.store.watching(PODS) >= 1)
        )

    def cpu(self) -> float:
        assert self.ps is not None
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        assert self.ps is not None
        return int(self.ps.memory_info().rss)

    def hwm(self) -> int:
        """The peak RSS the kernel recorded (VmHWM), in bytes."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) * 1024

    def metrics(self) -> dict[str, float]:
        """The operator's own /metrics, summed over labels: `name` -> value."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        values: dict[str, float] = collections.defaultdict(float)
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                base = name.partition("{")[0]
                values[base] += float(value)
                if base != name:
                    values[name] += float(value)
        return values

    def log(self, size: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-size:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class PeakRss:
    """Samples a process's RSS every POLL_SECONDS on a thread, keeping the largest."""

    def __init__(self, sample: Callable[[], int]) -> None:
        self.peak = 0
        self._sample = sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._sample())
            except psutil.Error:
                return
            self._stop.wait(POLL_SECONDS)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the cluster side ----------------------------------------------------------------------------------


def _reset_request_log(cluster: BackgroundCluster, size: int) -> None:
    """An empty request log holding `size` records (DevCluster does not pass request_log_size)."""

    def reset(c: DevCluster) -> None:
        c.server.requests = collections.deque(maxlen=size)
        c.server.counts.clear()

    cluster.call(reset)


def _requests(cluster: BackgroundCluster) -> tuple[list[RequestRecord], int]:
    """The logged requests, and how many were served in all (more than logged if the ring overflowed)."""
    return cluster.call(lambda c: (list(c.server.requests), sum(c.server.counts.values())))


def _create(cluster: BackgroundCluster, count: int, progress: bool = False) -> float:
    """Create `count` dispatches in the store, BATCH per call on the cluster's loop; the seconds it took."""
    cluster.call(lambda c: c.store.create(NAMESPACES, None, {"metadata": {"name": NAMESPACE}}))
    started = time.perf_counter()
    for first in range(0, count, BATCH):
        indices = range(first, min(first + BATCH, count))

        def batch(c: DevCluster, indices: range = indices) -> None:
            kind = _dispatches(c)
            for index in indices:
                c.store.create(kind, NAMESPACE, _body(index))

        cluster.call(batch, timeout=120)
        if progress and (indices.stop % 1000 == 0 or indices.stop == count):
            print(
                f"    created {indices.stop:>6} / {count}  ({time.perf_counter() - started:5.1f} s)",
                flush=True,
            )
    return time.perf_counter() - started


def _count(cluster: BackgroundCluster, test: Callable[[dict[str, Any]], bool]) -> int:
    return cluster.call(
        lambda c: sum(1 for d in c.store.objects(_dispatches(c)) if test(d.get("status") or {}))
    )


def _phases(cluster: BackgroundCluster) -> Counter[str]:
    return cluster.call(
        lambda c: Counter(str((d.get("status") or {}).get("phase")) for d in c.store.objects(_dispatches(c)))
    )


def _wait(
    cluster: BackgroundCluster,
    operator: Operator,
    count: int,
    test: Callable[[dict[str, Any]], bool],
    *,
    timeout: float,
    what: str,
) -> float:
    """Poll until `count` dispatches pass `test`; the perf_counter time when seen."""
    deadline = time.monotonic() + timeout
    while _count(cluster, test) < count:
        operator.watching()  # raises if the operator died
        if time.monotonic() > deadline:
            raise RuntimeError(f"not all {what} after {timeout:.0f} s: phases {dict(_phases(cluster))}")
        time.sleep(POLL_SECONDS)
    return time.perf_counter()


def _quiet(cluster: BackgroundCluster, seconds: float = 1.0, timeout: float = 60.0) -> None:
    """Until the API server has served no request for `seconds` (the operator's tail: Events, late writes)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        served = cluster.call(lambda c: sum(c.server.counts.values()))
        if served != last:
            last, since = served, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
        time.sleep(0.1)


# --- reading the request log ---------------------------------------------------------------------------


def _resource(path: str) -> tuple[str, bool]:
    """`pods`, `fleetdispatches/status`, ... for a request path, and whether it names one object."""
    parts = [part for part in path.split("/") if part]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:] if parts[:1] == ["apis"] else []
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    if not rest:
        return "(discovery)", False
    return rest[0] + (f"/{rest[2]}" if len(rest) > 2 else ""), len(rest) > 1


def _verb(record: RequestRecord) -> str:
    if record.method == "GET":
        _, named = _resource(record.path)
        return "watch" if record.is_watch else "get" if named else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[record.method]


def _report_requests(records: list[RequestRecord], served: int, count: int) -> float:
    """Print the operator's requests per dispatch; returns its writes per dispatch."""
    mine = [r for r in records if r.user_agent.startswith(OPERATOR_AGENTS)]
    others = len(records) - len(mine)
    reads = sum(1 for r in mine if r.method == "GET")
    writes = sum(1 for r in mine if r.method in WRITES)
    if served > len(records):
        print(f"  (request log overflowed: {served - len(records)} requests not logged)")
    _row("operator reads per dispatch", f"{reads / count:.2f}  ({reads})")
    _row(
        "operator writes per dispatch",
        f"{writes / count:.2f}  ({writes})",
        f"<= {TARGET_WRITES:g}",
        writes / count <= TARGET_WRITES,
    )
    if others:
        _row("requests by other clients", str(others))
    breakdown = Counter((r.user_agent.split("/")[0], _verb(r), _resource(r.path)[0], r.status) for r in mine)
    print("  by client, verb, resource and status (per dispatch, total):")
    for (agent, verb, resource, status), number in sorted(breakdown.items(), key=lambda x: (-x[1], x[0])):
        print(f"    {agent:<15} {verb:<7} {resource:<26} {status:>4} {number / count:8.2f} {number:8d}")
    print("  (watches are logged when they end: the ones open through the run are not counted)")
    return writes / count


# --- the runs ------------------------------------------------------------------------------------------


@dataclass
class Options:
    dispatches: int
    idle: int
    workers: int | None
    keep_log: bool
    profile: bool


def _operator_line(options: Options) -> str:
    workers = f"--workers={options.workers}" if options.workers else "default workers"
    return f"operator: {workers}{', under cProfile (CPU figures inflated)' if options.profile else ''}"


def run_busy(options: Options, workdir: Path) -> None:
    count = options.dispatches
    print(f"Run A: {count} dispatches created at once, instant pods (exit 0); {_operator_line(options)}")
    with BackgroundCluster(runtime="instant") as cluster:
        operator = Operator(cluster, workdir, options.workers, options.profile)
        try:
            operator.start()
            time.sleep(0.5)  # let kopf's start-up settle before sampling
            _reset_request_log(cluster, 100 * count + 10_000)
            this = psutil.Process()
            cpu0, own0 = operator.cpu(), sum(this.cpu_times()[:2])
            with PeakRss(operator.rss) as peak:
                started = time.perf_counter()
                created = _create(cluster, count)
                done = _wait(
                    cluster,
                    operator,
                    count,
                    lambda s: s.get("phase") == "Succeeded",
                    timeout=60 + count * 0.2,
                    what="Succeeded",
                )
                cpu_done = operator.cpu()
                _quiet(cluster)
                cpu1, own1 = operator.cpu(), sum(this.cpu_times()[:2])
            records, served = _requests(cluster)
            metrics = operator.metrics()
            hwm = operator.hwm()
            elapsed = done - started
            cpu_ms = (cpu1 - cpu0) * 1000 / count
            _row("created in the store in", f"{created:.2f} s")
            _row("all Succeeded after", f"{elapsed:.2f} s")
            _row(
                "dispatches per second, end to end",
                f"{count / elapsed:.1f}",
                f">= {TARGET_RATE:g}",
                count / elapsed >= TARGET_RATE,
            )
            _row(
                "operator CPU per dispatch",
                f"{cpu_ms:.1f} ms",
                f"<= {TARGET_CPU_MS:g} ms",
                cpu_ms <= TARGET_CPU_MS,
            )
            _row("  of which after all Succeeded", f"{(cpu1 - cpu_done) * 1000 / count:.1f} ms")
            _row("operator CPU use while running", f"{(cpu_done - cpu0) / elapsed * 100:.0f} % of a core")
            _row("dev cluster + this script CPU", f"{(own1 - own0) * 1000 / count:.1f} ms per dispatch")
            _row("operator peak RSS (sampled)", _mem(peak.peak))
            _row("operator peak RSS (VmHWM)", _mem(hwm))
            reconciles = metrics.get("fleetdispatch_reconcile_duration_seconds_count", 0.0)
            seconds = metrics.get("fleetdispatch_reconcile_duration_seconds_sum", 0.0)
            _row("reconciles per dispatch", f"{reconciles / count:.2f}")
            if reconciles:
                _row("mean reconcile (wall, API included)", f"{seconds / reconciles * 1000:.1f} ms")
            _row("reconcile errors", f"{metrics.get('fleetdispatch_reconcile_errors_total', 0):.0f}")
            _row("attempts (pods created)", f"{metrics.get('fleetdispatch_attempts_total', 0):.0f}")
            _report_requests(records, served, count)
        except BaseException:
            if options.keep_log:
                print(f"--- operator log (tail) ---\n{operator.log()}", file=sys.stderr)
            raise
        finally:
            operator.stop()
    if operator.profile_path is not None and operator.profile_path.exists():
        print("  operator profile (cProfile, main thread only; sync kopf handlers run on threads):")
        stats = pstats.Stats(str(operator.profile_path), stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)


def run_idle(options: Options, workdir: Path) -> None:
    count = options.idle
    print(f"Run B: {count} dispatches waiting on pods that never run; {_operator_line(options)}")
    with BackgroundCluster(runtime="none") as cluster:
        operator = Operator(cluster, workdir, options.workers, profile=False)
        try:
            operator.start()
            time.sleep(0.5)
            _reset_request_log(cluster, 20 * count + 10_000)
            rss0, cpu0 = operator.rss(), operator.cpu()
            with PeakRss(operator.rss) as peak:
                started = time.perf_counter()
                created = _create(cluster, count, progress=True)
                done = _wait(
                    cluster,
                    operator,
                    count,
                    lambda s: bool(s.get("podName")),
                    timeout=120 + count * 0.1,
                    what="have a pod",
                )
                time.sleep(2.0)
                _quiet(cluster)
                rss, cpu1 = operator.rss(), operator.cpu()
                records, served = _requests(cluster)
                time.sleep(LATER_SECONDS)
                later = operator.rss()
            hwm = operator.hwm()
            target = f"<= {TARGET_RSS_BYTES / 1e6:.0f} MB"
            judged = count >= 10_000  # the target is for 10,000 dispatches

            def fits(size: float) -> bool | None:
                return size <= TARGET_RSS_BYTES if judged else None

            _row("created in the store in", f"{created:.1f} s")
            _row("all have a pod after", f"{done - started:.1f} s")
            _row("phases", ", ".join(f"{k} {v}" for k, v in sorted(_phases(cluster).items())))
            _row("operator RSS before creating", _mem(rss0))
            _row(f"operator RSS at {count} (2 s after)", _mem(rss), target, fits(rss))
            _row(f"  {LATER_SECONDS:g} s later", _mem(later), target, fits(later))
            _row("operator peak RSS (sampled)", _mem(max(peak.peak, later)))
            _row("operator peak RSS (VmHWM)", _mem(hwm), target, fits(hwm))
            _row("RSS per dispatch (above start)", f"{(rss - rss0) / count / 1024:.1f} KiB")
            _row("operator CPU per dispatch", f"{(cpu1 - cpu0) * 1000 / count:.1f} ms")
            _report_requests(records, served, count)
        except BaseException:
            if options.keep_log:
                print(f"--- operator log (tail) ---\n{operator.log()}", file=sys.stderr)
            raise
        finally:
            operator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dispatches", type=int, default=1000, help="run A's dispatches (0: skip)")
    parser.add_argument("--idle", type=int, default=10_000, help="run B's dispatches (0: skip)")
    parser.add_argument("--workers", type=int, default=None, help="the operator's --workers")
    parser.add_argument("--keep-log", action="store_true", help="print the operator's log tail on failure")
    parser.add_argument(
        "--profile", action="store_true", help="run A's operator under cProfile and print its top functions"
    )
    args = parser.parse_args()
    options = Options(args.dispatches, args.idle, args.workers, args.keep_log, args.profile)
    print(f"python {sys.version.split()[0]}, {psutil.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="fleetdispatch-bench-") as temporary:
        if options.dispatches:
            busy = Path(temporary) / "busy"
            busy.mkdir()
            run_busy(options, busy)
        if options.idle:
            idle = Path(temporary) / "idle"
            idle.mkdir()
            run_idle(options, idle)


if __name__ == "__main__":
    main()
