"""Chaos bench: N dispatches on the real control plane while the operator is SIGKILLed at random moments
(some right after a pod create) and restarted, optionally through a TCP fault proxy; then what went wrong.

    .venv/bin/python bench/chaos.py                          # 120 dispatches, 6 kills, seed 1
    .venv/bin/python bench/chaos.py --dispatches 500 --kills 20 --proxy

Dispatches, by index mod 3 (the node agent's `instant` runtime, the outcome from the pod template's
exit-code and termination-message annotations, so every attempt of a dispatch ends the same way):
  success  exit 0                                   -> Succeeded, attempt 1, failures 0, requeues 0
  logic    exit 1, retry.maxAttempts 3              -> Failed BackoffLimitExceeded, attempt 3, failures 3
  quota    exit 75, QuotaExhausted, resetAt passed,
           retry.maxRequeues 2                      -> Failed RequeueLimitExceeded, attempt 3, requeues 2
The operator runs as the chart's identity (`fleetdispatch operator`, the dev cluster's operator
kubeconfig; with `--proxy`, a copy that points at bench/faultproxy.py: latency and cut connections). Kills
come at seeded random times spread over the expected run; every other one waits for the next pod ADDED event
on the bench's watch, then kills at once (a kill right after a pod create). After each kill the operator is
started again, once the API server shows its watches.

Printed: lost (not terminal within the time limit), duplicate pods (two pod uids for one dispatch and
attempt), attempts beyond limits (a pod or a status attempt past what the limits allow), runs after a
terminal phase (a pod created after the status's completionTime, both whole seconds, so strictly later),
wrong phases or counters (final status against the table above, and one attempt record per attempt),
and the operator's API requests per second over the run and in its busiest second (the audit log).

Deliberately not here: kube-apiserver and etcd restarts, and HTTP-level faults (5xx before and after a write
commits, 409, 429): see faultproxy.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit
from benchkit import admin, audit_size, make_namespace, requests_of
from faultproxy import FaultProxy
from fleetdispatch.api.names import ATTEMPT_LABEL, DISPATCH_LABEL, GROUP, VERSION
from fleetdispatch.client.kubeapi import ApiError, KubeApi
from fleetdispatch.devcluster.nodeagent import EXIT_CODE_ANNOTATION, TERMINATION_MESSAGE_ANNOTATION
from fleetdispatch.devcluster.stack import OPERATOR_USER, BackgroundCluster, start_operator
from fleetdispatch.session import protocol

NAMESPACE = "chaos"
DISPATCHES = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/fleetdispatches"
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
KINDS = ("success", "logic", "quota")
MAX_ATTEMPTS = 3
MAX_REQUEUES = 2
TERMINAL = ("Succeeded", "Failed")
# kind -> (phase, reason or None, attempt, failures, requeues)
EXPECTED: dict[str, tuple[str, str | None, int, int, int]] = {
    "success": ("Succeeded", None, 1, 0, 0),
    "logic": ("Failed", "BackoffLimitExceeded", MAX_ATTEMPTS, MAX_ATTEMPTS, 0),
    "quota": ("Failed", "RequeueLimitExceeded", MAX_REQUEUES + 1, 0, MAX_REQUEUES),
}


def kind_of(index: int) -> str:
    return KINDS[index % len(KINDS)]


def body(index: int) -> dict[str, Any]:
    kind = kind_of(index)
    container = {"name": "session", "image": "busybox"}
    retry = {
        "maxAttempts": MAX_ATTEMPTS,
        "maxRequeues": MAX_REQUEUES,
        "backoff": {"baseSeconds": 1, "maxSeconds": 2, "jitterPercent": 0},
    }
    dispatch = benchkit.dispatch_body(index, "instant", container, retry=retry)
    annotations = dispatch["spec"]["template"]["metadata"]["annotations"]
    if kind == "logic":
        annotations[EXIT_CODE_ANNOTATION] = "1"
    elif kind == "quota":
        annotations[EXIT_CODE_ANNOTATION] = "75"
        reset = protocol.format_time(time.time() - 60)
        annotations[TERMINATION_MESSAGE_ANNOTATION] = json.dumps(
            {"reason": "QuotaExhausted", "resetAt": reset}
        )
    return dispatch


@dataclass
class Seen:
    """Everything the bench's watches saw: each dispatch's last object, every pod ever (deleted ones too)."""

    dispatches: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> the pod as last seen
    pod_added: asyncio.Event = field(default_factory=asyncio.Event)


async def watch(api: KubeApi, path: str, on_event: Any) -> None:
    version = ""
    while True:
        params = {"watch": "1", "timeoutSeconds": "3600", "allowWatchBookmarks": "true"}
        if version:
            params["resourceVersion"] = version
        try:
            async for event in api.watch(path, params):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    version = ""
                    break
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind != "BOOKMARK":
                    on_event(kind, obj)
        except (TimeoutError, ApiError, OSError):
            await asyncio.sleep(0.2)


@dataclass
class Figures:
    lost: list[str] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)
    beyond: list[str] = field(default_factory=list)
    after_terminal: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)


def judge(count: int, seen: Seen) -> Figures:
    figures = Figures()
    pods_by: dict[tuple[str, int], set[str]] = defaultdict(set)
    created_by: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for uid, pod in seen.pods.items():
        labels = pod["metadata"].get("labels") or {}
        name, attempt = labels.get(DISPATCH_LABEL, "?"), int(labels.get(ATTEMPT_LABEL, "0") or 0)
        pods_by[(name, attempt)].add(uid)
        created = protocol.parse_time(pod["metadata"]["creationTimestamp"])
        assert created is not None
        created_by[name].append((created.timestamp(), pod["metadata"]["name"]))
    for (name, attempt), uids in sorted(pods_by.items()):
        if len(uids) > 1:
            figures.duplicate.append(f"{name} attempt {attempt}: {len(uids)} pods")
    for index in range(count):
        name, kind = f"d{index:05d}", kind_of(index)
        phase, reason, attempt, failures, requeues = EXPECTED[kind]
        status = (seen.dispatches.get(name) or {}).get("status") or {}
        if status.get("phase") not in TERMINAL:
            figures.lost.append(f"{name} ({kind}): {status.get('phase')} attempt {status.get('attempt')}")
            continue
        attempts = [a for (n, a) in pods_by if n == name]
        if max(attempts, default=0) > attempt or int(status.get("attempt") or 0) > attempt:
            figures.beyond.append(
                f"{name} ({kind}): pods for attempts {sorted(attempts)}, status {status.get('attempt')}"
            )
        completion = protocol.parse_time(status.get("completionTime"))
        if completion is not None:
            late = [pod for at, pod in created_by[name] if at > completion.timestamp()]
            if late:
                figures.after_terminal.append(f"{name}: {late} created after {status.get('completionTime')}")
        got = (
            status.get("phase"),
            status.get("reason") if reason is not None else None,
            status.get("attempt"),
            status.get("failures", 0),
            status.get("requeues", 0),
        )
        records = [r.get("attempt") for r in status.get("attempts") or []]
        if got != (phase, reason, attempt, failures, requeues) or records != list(range(1, attempt + 1)):
            figures.wrong.append(f"{name} ({kind}): {got} records {records}, expected {EXPECTED[kind]}")
        if completion is None:
            figures.wrong.append(f"{name} ({kind}): {status.get('phase')} without completionTime")
    return figures


class Operator:
    """The operator as a child process, started and SIGKILLed by the bench (its log appended to one file)."""

    def __init__(
        self, cluster: BackgroundCluster, workdir: Path, kubeconfig: Path, proxy: FaultProxy | None
    ) -> None:
        self.cluster, self.kubeconfig, self.proxy = cluster, kubeconfig, proxy
        self.log_path = workdir / "operator.log"
        self.process: Any = None
        self.exits: list[
            int
        ] = []  # exit codes of the times it ended by itself (restarted, as a Deployment does)

    def start(self) -> None:
        # No faults while it starts: a cut during its first login makes it exit (see the README's section).
        if self.proxy is not None:
            self.proxy.faults(False)
        try:
            self.process = start_operator(
                self.cluster.dev,
                self.log_path,
                f"--metrics-port={benchkit.free_port()}",
                f"--health-port={benchkit.free_port()}",
                kubeconfig=self.kubeconfig,
                timeout=90,
            )
        finally:
            if self.proxy is not None:
                self.proxy.faults(True)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    async def keep_alive(self) -> None:
        """Restarts the operator if it ended by itself (recorded in `exits`); raises if the cluster died."""
        died = self.cluster.dev.failed()
        if died is not None:
            raise RuntimeError(died)
        assert self.process is not None
        if self.process.poll() is not None:
            self.exits.append(int(self.process.returncode))
            await asyncio.to_thread(self.start)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            benchkit.stop_operator(self.process, grace=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


async def chaos(
    cluster: BackgroundCluster, operator: Operator, *, count: int, kills: int, seed: int, limit: float
) -> tuple[Figures, dict[str, float]]:
    rng = random.Random(seed)
    api = admin(cluster)
    seen = Seen()

    def on_dispatch(kind: str, obj: dict[str, Any]) -> None:
        if kind != "DELETED":
            seen.dispatches[obj["metadata"]["name"]] = obj

    def on_pod(kind: str, obj: dict[str, Any]) -> None:
        uid = obj["metadata"]["uid"]
        if kind == "ADDED" and uid not in seen.pods:
            seen.pod_added.set()
        seen.pods[uid] = obj

    tasks = [
        asyncio.create_task(watch(api, DISPATCHES, on_dispatch)),
        asyncio.create_task(watch(api, PODS, on_pod)),
    ]
    # kills spread over well within the run (30 dispatches take ~12 s, 500 about 140 s here)
    expected = 4 + count * 0.1
    times = sorted(rng.uniform(0.5, expected) for _ in range(kills))
    offset = audit_size(cluster)
    started = time.monotonic()
    killed = 0
    try:
        await benchkit.create_all(api, DISPATCHES, (body(i) for i in range(count)), 16)

        def done() -> int:
            return sum(
                1 for d in seen.dispatches.values() if ((d.get("status") or {}).get("phase")) in TERMINAL
            )

        for number, at in enumerate(times):
            while time.monotonic() - started < at:
                await operator.keep_alive()
                await asyncio.sleep(0.05)
            if number % 2 == 1:  # right after the next pod create the bench sees
                seen.pod_added.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(seen.pod_added.wait(), 10)
            if done() == count:
                break
            operator.kill()
            killed += 1
            await asyncio.sleep(rng.uniform(0, 1.0))
            await asyncio.to_thread(operator.start)
        deadline = started + limit
        while done() < count and time.monotonic() < deadline:
            await operator.keep_alive()
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # a pod created late, after a terminal status, shows up now
        elapsed = time.monotonic() - started
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
    events = requests_of(cluster, OPERATOR_USER, offset)
    per_second = Counter(
        int(protocol.parse_time(e["requestReceivedTimestamp"]).timestamp())  # type: ignore[union-attr]
        for e in events
    )
    rates = {
        "kills": killed,
        "seconds": elapsed,
        "requests": len(events),
        "per_second": len(events) / elapsed,
        "busiest_second": max(per_second.values(), default=0),
        "pods": len(seen.pods),
        "exits": len(operator.exits),
    }
    return judge(count, seen), rates


def run(
    workdir: Path,
    *,
    count: int,
    kills: int,
    seed: int,
    limit: float,
    proxy: bool,
    cut_every: float = 1.0,
    latency: float = 0.02,
) -> tuple[Figures, dict[str, Any]]:
    with BackgroundCluster(runtime="instant") as cluster:
        make_namespace(cluster, NAMESPACE)
        kubeconfig = cluster.dev.operator_kubeconfig
        port = int(cluster.dev.plane.url.rsplit(":", 1)[1])
        fault = FaultProxy(port, seed=seed, latency=latency, cut_every=cut_every) if proxy else None
        if fault is not None:
            fault.__enter__()
            kubeconfig = workdir / "operator-proxied.kubeconfig"
            text = cluster.dev.operator_kubeconfig.read_text()
            kubeconfig.write_text(text.replace(cluster.dev.plane.url, f"https://127.0.0.1:{fault.port}"))
            kubeconfig.chmod(0o600)
        operator = Operator(cluster, workdir, kubeconfig, fault)
        try:
            operator.start()
            figures, rates = asyncio.run(
                chaos(cluster, operator, count=count, kills=kills, seed=seed, limit=limit)
            )
        finally:
            operator.stop()
            if fault is not None:
                fault.__exit__()
        if fault is not None:
            rates |= {"proxy connections": fault.counts.connections, "proxy cuts": fault.counts.cuts}
        return figures, rates


def report(count: int, figures: Figures, rates: dict[str, Any]) -> None:
    print(
        f"{count} dispatches, {rates['kills']} operator kills, {rates['seconds']:.0f} s, {rates['pods']} pods"
    )
    print(f"  {'operator exits by itself (restarted)':<40} {rates['exits']:>8}")
    for key in ("proxy connections", "proxy cuts"):
        if key in rates:
            print(f"  {key:<40} {rates[key]:>8}")
    for label, items in (
        ("lost (not terminal in time)", figures.lost),
        ("duplicate pods (one attempt)", figures.duplicate),
        ("attempts beyond limits", figures.beyond),
        ("runs after a terminal phase", figures.after_terminal),
        ("wrong phases or counters", figures.wrong),
    ):
        print(f"  {label:<40} {len(items):>8}")
        for item in items[:5]:
            print(f"      {item}")
    print(
        f"  {'operator requests/s over the run':<40} {rates['per_second']:>8.1f}"
        f"  ({rates['requests']} in all)"
    )
    print(f"  {'operator requests in its busiest second':<40} {rates['busiest_second']:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dispatches", type=int, default=120)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--limit", type=float, default=240, help="seconds until a non-terminal dispatch is lost"
    )
    parser.add_argument("--proxy", action="store_true", help="through the TCP fault proxy (latency, cuts)")
    parser.add_argument("--cut-every", type=float, default=1.0, help="mean seconds between proxy cuts")
    parser.add_argument("--latency", type=float, default=0.02, help="most seconds a proxied chunk waits")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, seed {args.seed}")
    with tempfile.TemporaryDirectory(prefix="fleetdispatch-chaos-") as workdir:
        figures, rates = run(
            Path(workdir),
            count=args.dispatches,
            kills=args.kills,
            seed=args.seed,
            limit=args.limit,
            proxy=args.proxy,
            cut_every=args.cut_every,
            latency=args.latency,
        )
    report(args.dispatches, figures, rates)


if __name__ == "__main__":
    main()
