"""Chaos bench: N dispatches on the real control plane while the operator is SIGKILLed at random moments
(some right after a pod create) and restarted, through a fault proxy, with a kube-apiserver and an etcd
restart; then what went wrong.

    .venv/bin/python bench/chaos.py                          # 120 dispatches, 6 kills, seed 1, no proxy
    .venv/bin/python bench/chaos.py --dispatches 500 --kills 20 --proxy http --restarts
    .venv/bin/python bench/chaos.py --proxy tcp              # the TCP proxy: latency, cut connections

Dispatches, by index mod 3 (the node agent's `instant` runtime, the outcome from the pod template's
exit-code and termination-message annotations, so every attempt of a dispatch ends the same way), and every
25th a real session (the `local` runtime: the supervisor and `sh -c "sleep 0.5"` as processes):
  success  exit 0                                   -> Succeeded, attempt 1, failures 0, requeues 0
  logic    exit 1, retry.maxAttempts 3              -> Failed BackoffLimitExceeded, attempt 3, failures 3
  quota    exit 75, QuotaExhausted, resetAt passed,
           retry.maxRequeues 2                      -> Failed RequeueLimitExceeded, attempt 3, requeues 2
  real     sleep 0.5, exit 0                        -> Succeeded, attempt 1, failures 0, requeues 0
The operator runs as the chart's identity (`fleetdispatch operator`, the dev cluster's operator
kubeconfig; with `--proxy`, a copy that points at bench/faultproxy.py: `tcp` delays bytes and cuts
connections, `http` terminates TLS and injects 5xx before and after a write commits, 409, 429, latency and
cut watches). The proxy's faults come in seeded windows (on for about 6 s, off for about 3 s), and are off
while the operator starts. Kills come at seeded random times spread over the expected run; every other one
waits for the next pod ADDED event on the bench's watch, then kills at once (a kill right after a pod
create); after each the operator is started again, once the API server shows its watches. With
`--restarts`, kube-apiserver (at a third of the kills' span) and etcd (at two thirds) are stopped (TERM,
KILL after 5 s) and started again on the same ports and data (`ControlPlane.restart_component`).

Printed: lost (not terminal within the time limit), duplicate pods (two pod uids for one dispatch and
attempt), attempts beyond limits (a pod or a status attempt past what the limits allow), runs after a
terminal phase (a pod created after the status's completionTime, both whole seconds, so strictly later),
wrong phases or counters (final status against the table above, and one attempt record per attempt); the
faults injected; and the operator's API requests per second, over the run, in the seconds with faults
(a proxy window, or a kill or restart and 5 s after it) and in those without, and its busiest second of
each (counted at the HTTP proxy, which also sees the requests it answered itself; else from the audit
log). A request storm is a second with more than 250 requests, or twice the fault-free rate during faults
(see STORM_CEILING). `--limit` is the time the dispatches get after the last kill or restart.

Deliberately not here: faults of the node (the node agent's own connection is direct, not proxied, and
it retries), and of the bench's own watches (direct too: they are the referee).
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit
from benchkit import admin, audit_size, make_namespace, requests_of
from faultproxy import FaultProxy, HttpFaults
from fleetdispatch.api.names import ATTEMPT_LABEL, DISPATCH_LABEL, GROUP, VERSION
from fleetdispatch.client.kubeapi import ApiError, KubeApi
from fleetdispatch.devcluster.nodeagent import EXIT_CODE_ANNOTATION, TERMINATION_MESSAGE_ANNOTATION
from fleetdispatch.devcluster.stack import OPERATOR_USER, BackgroundCluster, start_operator, stop_operator
from fleetdispatch.session import protocol

NAMESPACE = "chaos"
DISPATCHES = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/fleetdispatches"
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
KINDS = ("success", "logic", "quota")
REAL_EVERY = 25  # every 25th dispatch is a real session (the node agent's `local` runtime)
REAL_COMMAND = ["sh", "-c", "sleep 0.5"]
MAX_ATTEMPTS = 3
MAX_REQUEUES = 2
TERMINAL = ("Succeeded", "Failed")
# kind -> (phase, reason or None, attempt, failures, requeues)
EXPECTED: dict[str, tuple[str, str | None, int, int, int]] = {
    "success": ("Succeeded", None, 1, 0, 0),
    "logic": ("Failed", "BackoffLimitExceeded", MAX_ATTEMPTS, MAX_ATTEMPTS, 0),
    "quota": ("Failed", "RequeueLimitExceeded", MAX_REQUEUES + 1, 0, MAX_REQUEUES),
    "real": ("Succeeded", None, 1, 0, 0),
}
PODS_OF = {"success": 1, "logic": MAX_ATTEMPTS, "quota": MAX_REQUEUES + 1, "real": 1}
# After a kill or a restart, the seconds still counted as "during faults" (the operator's relist and
# catch-up after it, which is what a storm would follow).
AFTERMATH = 5.0
RESTARTS = ("kube-apiserver", "etcd")
FAULT_WINDOW = (6.0, 3.0)  # HTTP/TCP proxy faults: on for about 6 s, then off for about 3 s, seeded


def kind_of(index: int) -> str:
    if index % REAL_EVERY == REAL_EVERY - 1:
        return "real"
    return KINDS[index % len(KINDS)]


def expected_pods(count: int) -> int:
    return sum(PODS_OF[kind_of(i)] for i in range(count))


def body(index: int) -> dict[str, Any]:
    kind = kind_of(index)
    retry = {
        "maxAttempts": MAX_ATTEMPTS,
        "maxRequeues": MAX_REQUEUES,
        "backoff": {"baseSeconds": 1, "maxSeconds": 2, "jitterPercent": 0},
    }
    if kind == "real":
        container = {"name": "session", "image": "busybox", "command": REAL_COMMAND}
        return benchkit.dispatch_body(index, "local", container, retry=retry)
    container = {"name": "session", "image": "busybox"}
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
        # ClientError: the stream ended mid-chunk (the API server restarted)
        except (TimeoutError, ApiError, OSError, aiohttp.ClientError):
            await asyncio.sleep(0.2)


@dataclass
class Figures:
    lost: list[str] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)
    beyond: list[str] = field(default_factory=list)
    after_terminal: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)


def last_pod(seen: Seen, name: str) -> str:
    """What became of a dispatch's last pod, as the bench's watch last saw it (why it is not terminal)."""
    pods = [
        pod for pod in seen.pods.values() if (pod["metadata"].get("labels") or {}).get(DISPATCH_LABEL) == name
    ]
    if not pods:
        return "no pod"
    last = max(pods, key=lambda pod: str(pod["metadata"]["creationTimestamp"]))
    metadata, phase = last["metadata"], (last.get("status") or {}).get("phase")
    deleted = " (deleted)" if metadata.get("deletionTimestamp") else ""
    return f"its last pod {metadata['name']} {phase} on {last['spec'].get('nodeName')}{deleted}"


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
            figures.lost.append(
                f"{name} ({kind}): {status.get('phase')} attempt {status.get('attempt')}"
                f", {last_pod(seen, name)}"
            )
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
        # exit codes of the times it ended by itself (restarted, as a Deployment does)
        self.exits: list[int] = []

    def start(self) -> None:
        # No faults while it starts: a cut during its first login makes it exit (see the README's section).
        with self.proxy.paused() if self.proxy is not None else contextlib.nullcontext():
            self.process = start_operator(
                self.cluster.dev,
                self.log_path,
                f"--metrics-port={benchkit.free_port()}",
                f"--health-port={benchkit.free_port()}",
                kubeconfig=self.kubeconfig,
                timeout=90,
            )

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
            stop_operator(self.process, grace=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@dataclass
class Timeline:
    """When faults were on (wall-clock seconds): proxy windows, kills and restarts with their aftermath."""

    faults: list[tuple[float, float]] = field(default_factory=list)
    restarts: dict[str, float] = field(default_factory=dict)  # component -> seconds it was not serving

    def faulty(self, second: int) -> bool:
        return any(start < second + 1 and end > second for start, end in self.faults)


async def fault_windows(proxy: FaultProxy, timeline: Timeline, rng: random.Random) -> None:
    """Proxy faults on and off in seeded windows (so the run has seconds with faults and without)."""
    on, off = FAULT_WINDOW
    try:
        while True:
            proxy.faults(True)
            began = time.time()
            try:
                await asyncio.sleep(rng.uniform(0.5, 1.5) * on)
            finally:
                timeline.faults.append((began, time.time()))
            proxy.faults(False)
            await asyncio.sleep(rng.uniform(0.5, 1.5) * off)
    finally:
        proxy.faults(True)


def plan(rng: random.Random, count: int, kills: int, restarts: Sequence[str]) -> list[tuple[float, str]]:
    """(seconds after the first create, action): kills spread over the expected run (30 dispatches take
    ~12 s, 500 about 140 s here), every other one right after a pod create; the restarts (components)
    evenly over the kills' span (two: at a third and at two thirds)."""
    expected = 4 + count * 0.1
    actions = [
        (rng.uniform(0.5, expected), "kill" if n % 2 == 0 else "kill after create") for n in range(kills)
    ]
    actions += [
        (expected * (n + 1) / (len(restarts) + 1), f"restart {component}")
        for n, component in enumerate(restarts)
    ]
    return sorted(actions)


async def chaos(
    cluster: BackgroundCluster,
    operator: Operator,
    *,
    count: int,
    kills: int,
    seed: int,
    limit: float,
    restarts: Sequence[str] = (),
    restart_grace: float = 5.0,
) -> tuple[Figures, dict[str, Any]]:
    rng = random.Random(seed)
    api = admin(cluster)
    seen = Seen()
    timeline = Timeline()

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
    proxy = operator.proxy
    if proxy is not None:
        tasks.append(asyncio.create_task(fault_windows(proxy, timeline, random.Random(f"{seed}/windows"))))
    actions = plan(rng, count, kills, restarts)
    offset = audit_size(cluster)
    started, wall_started = time.monotonic(), time.time()
    killed = 0
    all_done = time.time()
    try:
        await benchkit.create_all(api, DISPATCHES, (body(i) for i in range(count)), 16)

        def done() -> int:
            return sum(
                1 for d in seen.dispatches.values() if ((d.get("status") or {}).get("phase")) in TERMINAL
            )

        for at, action in actions:
            while time.monotonic() - started < at:
                await operator.keep_alive()
                await asyncio.sleep(0.05)
            if action.startswith("restart"):
                component = action.split()[1]
                began = time.time()
                timeline.restarts[component] = await asyncio.to_thread(
                    cluster.dev.plane.restart_component, component, grace=restart_grace
                )
                timeline.faults.append((began, time.time() + AFTERMATH))
                continue
            if action == "kill after create":
                seen.pod_added.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(seen.pod_added.wait(), 10)
            if done() == count:
                break
            began = time.time()
            operator.kill()
            killed += 1
            await asyncio.sleep(rng.uniform(0, 1.0))
            await asyncio.to_thread(operator.start)
            timeline.faults.append((began, time.time() + AFTERMATH))
        deadline = time.monotonic() + limit  # after the last kill or restart
        while done() < count and time.monotonic() < deadline:
            await operator.keep_alive()
            await asyncio.sleep(0.2)
        all_done = time.time()
        await asyncio.sleep(2.0)  # a pod created late, after a terminal status, shows up now
        elapsed = time.monotonic() - started
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
    events = requests_of(cluster, OPERATOR_USER, offset)
    if proxy is not None and proxy.http:
        # what the operator sent, the requests the proxy answered itself too (never audited)
        by_second: Counter[int] = Counter(proxy.requests_by_second)
        source = "proxy"
    else:
        by_second = Counter(
            int(protocol.parse_time(e["requestReceivedTimestamp"]).timestamp())  # type: ignore[union-attr]
            for e in events
        )
        source = "audit log"
    rates: dict[str, Any] = {
        "kills": killed,
        "seconds": elapsed,
        "requests": sum(by_second.values()),
        "audited requests": len(events),
        "request source": source,
        "per_second": sum(by_second.values()) / elapsed,
        "busiest_second": max(by_second.values(), default=0),
        "pods": len(seen.pods),
        "exits": len(operator.exits),
        "restarts": timeline.restarts,
    }
    rates |= split_rates(by_second, timeline, int(wall_started), int(all_done))
    return judge(count, seen), rates


def split_rates(by_second: Counter[int], timeline: Timeline, first: int, last: int) -> dict[str, Any]:
    """Requests per second and the busiest second, in the seconds with faults and in those without, from
    the first create until every dispatch was terminal (the idle tail would flatter the quiet seconds)."""
    faulty = [by_second[s] for s in range(first, last + 1) if timeline.faulty(s)]
    quiet = [by_second[s] for s in range(first, last + 1) if not timeline.faulty(s)]
    return {
        "faulty seconds": len(faulty),
        "quiet seconds": len(quiet),
        "per_second faulty": sum(faulty) / max(1, len(faulty)),
        "per_second quiet": sum(quiet) / max(1, len(quiet)),
        "busiest faulty": max(faulty, default=0),
        "busiest quiet": max(quiet, default=0),
    }


# A request storm, either of two:
# - a burst: a second with more than STORM_CEILING requests. The issue's storm (#14) was 360 pod creates in
#   1.4 s, about 250 a second before their status writes; the busiest second of fault-free runs here is
#   55 to 130 (the creates when the dispatches arrive), and 250 is about what this machine's API server
#   serves of writes a second (bench/devcluster_api.py), so a second past it is the operator asking for
#   more than the server can give.
# - a sustained rise: more than STORM_FACTOR times the requests per second with faults as without (given
#   at least 5 fault-free seconds). Faults add retries (each injected fault costs a request or two), and a
#   restarted operator relists; a feedback loop multiplies instead.
STORM_CEILING = 250
STORM_FACTOR = 2.0


def storm(rates: dict[str, Any]) -> bool:
    if rates["busiest_second"] > STORM_CEILING:
        return True
    if rates["quiet seconds"] < 5:
        return False
    return bool(rates["per_second faulty"] > STORM_FACTOR * rates["per_second quiet"])


def proxy_kubeconfig(cluster: BackgroundCluster, workdir: Path, port: int) -> Path:
    """A copy of the operator's kubeconfig (its token, the dev CA) with the proxy as its server."""
    kubeconfig = workdir / "operator-proxied.kubeconfig"
    text = cluster.dev.operator_kubeconfig.read_text()
    kubeconfig.write_text(text.replace(cluster.dev.plane.url, f"https://127.0.0.1:{port}"))
    kubeconfig.chmod(0o600)
    return kubeconfig


def run(
    workdir: Path,
    *,
    count: int,
    kills: int,
    seed: int,
    limit: float,
    proxy: str | None,
    restarts: Sequence[str] = (),
    restart_grace: float = 5.0,
    cut_every: float = 1.0,
    latency: float = 0.02,
    http_faults: HttpFaults | None = None,
) -> tuple[Figures, dict[str, Any]]:
    """One run on a cluster of its own; `proxy`: None, "tcp" or "http" (see faultproxy.py)."""
    # `local`: the real sessions run as processes; every other pod asks for `instant` itself
    # its folder in `workdir`, kept with it: the components' logs and the audit log, to look into after
    with BackgroundCluster(runtime="local", workdir=workdir / "cluster") as cluster:
        make_namespace(cluster, NAMESPACE)
        plane = cluster.dev.plane
        port = int(plane.url.rsplit(":", 1)[1])
        fault: FaultProxy | None = None
        if proxy == "tcp":
            fault = FaultProxy(port, seed=seed, latency=latency, cut_every=cut_every)
        elif proxy == "http":
            serving = plane.pki.issue(
                "faultproxy", "fleetdispatch-faultproxy", server_names=("127.0.0.1",), client=False
            )
            faults = http_faults or HttpFaults()
            fault = FaultProxy(
                port,
                seed=seed,
                latency=latency,
                serving=serving,
                ca=plane.ca,
                http_faults=faults,
                trace=workdir / "proxy.log",
            )
        elif proxy is not None:
            raise ValueError(f"no proxy mode {proxy!r}")
        kubeconfig = cluster.dev.operator_kubeconfig
        if fault is not None:
            fault.__enter__()
            kubeconfig = proxy_kubeconfig(cluster, workdir, fault.port)
        operator = Operator(cluster, workdir, kubeconfig, fault)
        try:
            operator.start()
            figures, rates = asyncio.run(
                chaos(
                    cluster,
                    operator,
                    count=count,
                    kills=kills,
                    seed=seed,
                    limit=limit,
                    restarts=restarts,
                    restart_grace=restart_grace,
                )
            )
        finally:
            operator.stop()
            if fault is not None:
                fault.__exit__()
        if fault is not None:
            rates |= {
                "proxy connections": fault.counts.connections,
                "proxy cuts": fault.counts.cuts,
                "proxy requests": fault.counts.requests,
                "proxy upstream down": fault.counts.upstream_down,
                "injected": dict(fault.counts.injected),
            }
        rates["storm"] = storm(rates)
        return figures, rates


def report(count: int, figures: Figures, rates: dict[str, Any]) -> None:
    print(
        f"{count} dispatches, {rates['kills']} operator kills, {rates['seconds']:.0f} s, {rates['pods']} pods"
        f" (expected {expected_pods(count)})"
    )
    for component, seconds in rates["restarts"].items():
        print(f"  {'restart of ' + component + ' (s down)':<40} {seconds:>8.1f}")
    print(f"  {'operator exits by itself (restarted)':<40} {rates['exits']:>8}")
    for key in ("proxy connections", "proxy cuts", "proxy requests", "proxy upstream down"):
        if rates.get(key):
            print(f"  {key:<40} {rates[key]:>8}")
    for kind, number in sorted(rates.get("injected", {}).items()):
        print(f"  {'injected ' + kind:<40} {number:>8}")
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
        f"  ({rates['requests']} in all, from the {rates['request source']})"
    )
    faulty, quiet = rates["per_second faulty"], rates["per_second quiet"]
    print(
        f"  {'  during faults / without':<40} {faulty:>8.1f} / {quiet:.1f}"
        f"  ({rates['faulty seconds']} s / {rates['quiet seconds']} s)"
    )
    busiest = f"{rates['busiest faulty']:>8} / {rates['busiest quiet']}"
    print(f"  {'  busiest second: faults / without':<40} {busiest}")
    print(
        f"  {'request storm':<40} {'yes' if rates['storm'] else 'no':>8}"
        f"  (a second over {STORM_CEILING}, or over {STORM_FACTOR:.0f}x the fault-free rate with faults)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dispatches", type=int, default=120)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--limit",
        type=float,
        default=300,
        help="seconds after the chaos until a non-terminal dispatch is lost",
    )
    parser.add_argument(
        "--proxy", choices=("tcp", "http"), help="through the fault proxy: tcp (latency, cuts) or http (all)"
    )
    parser.add_argument(
        "--restarts",
        action="store_const",
        const=RESTARTS,
        default=(),
        help="one kube-apiserver, one etcd restart",
    )
    parser.add_argument("--cut-every", type=float, default=1.0, help="tcp: mean seconds between cuts")
    parser.add_argument("--latency", type=float, default=0.02, help="most seconds a proxied chunk waits")
    parser.add_argument(
        "--keep", type=Path, help="work in this (new) folder and keep it: logs, audit log, proxy.log"
    )
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, seed {args.seed}")
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True)
            workdir = str(args.keep)
        else:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fleetdispatch-chaos-"))
        figures, rates = run(
            Path(workdir),
            count=args.dispatches,
            kills=args.kills,
            seed=args.seed,
            limit=args.limit,
            proxy=args.proxy,
            restarts=args.restarts,
            cut_every=args.cut_every,
            latency=args.latency,
        )
    report(args.dispatches, figures, rates)


if __name__ == "__main__":
    main()
