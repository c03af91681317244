"""QuotaPool cost: N dispatches of one pool all hit the quota; what the pool mechanism costs, and how late
the new attempts start after their `requeueAt`.

    .venv/bin/python bench/quota_pool.py                 # pools of 100 and 500 dispatches
    .venv/bin/python bench/quota_pool.py --sizes 500

Per size, on the dev cluster's real control plane, with the real operator in a child process (the chart's
identity): N dispatches of one QuotaPool each get a pod, which the node agent leaves alone (the pod
template's runtime `none`: this script plays the kubelet, writing pod statuses as the admin); then every
session ends `QuotaExhausted` (exit 75) with the same reset 5 s ahead, as when a shared API key runs dry.
It prints the operator's writes during that phase from the audit log (its user, stage ResponseComplete,
verbs create/patch/update/delete), the pool's own (QuotaPool status patches) apart from the rest, per
dispatch, so sizes can be compared (linear growth: a constant per dispatch), and, per dispatch, how long
after its `requeueAt` this script's watch saw its next attempt's pod (median, 99th percentile, max;
`requeueAt` has whole seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit
from benchkit import Operator, Tracker, admin, audit_size, make_namespace, percentile, quiet, requests_of
from fleetdispatch.api.names import API_VERSION, GROUP, VERSION
from fleetdispatch.client.kubeapi import MERGE_PATCH, KubeApi
from fleetdispatch.devcluster.stack import OPERATOR_USER, BackgroundCluster

NAMESPACE = "bench"
POOL = "shared"
RESET_AHEAD = 5
GROUP_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}"
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
CONCURRENCY = 16


def _body(index: int) -> dict[str, Any]:
    container = {"name": "session", "image": "agent", "command": ["agent"]}
    retry = {"backoff": {"baseSeconds": 1, "jitterPercent": 20}}
    return benchkit.dispatch_body(index, "none", container, quotaPool=POOL, retry=retry)


def _dispatch(obj: dict[str, Any]) -> tuple[str, str, str]:
    status = obj.get("status") or {}
    return str(status.get("phase")), str(status.get("podName") or ""), str(status.get("requeueAt") or "")


async def _each(api: KubeApi, calls: list[tuple[str, str, Any, str]]) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(method: str, path: str, body: Any, content_type: str) -> None:
        async with gate:
            await api.request(method, path, body, content_type=content_type)

    await asyncio.gather(*(one(*call) for call in calls))


async def measure(cluster: BackgroundCluster, operator: Operator, size: int, ahead: int) -> None:
    api = admin(cluster)
    try:
        async with (
            Tracker(api, f"{GROUP_PATH}/fleetdispatches", _dispatch) as dispatches,
            Tracker(api, PODS, lambda pod: True) as pods,
        ):
            pool = {"apiVersion": API_VERSION, "kind": "QuotaPool", "metadata": {"name": POOL}, "spec": {}}
            await api.request("POST", f"{GROUP_PATH}/quotapools", pool)
            creates = f"{GROUP_PATH}/fleetdispatches"
            await _each(api, [("POST", creates, _body(i), "application/json") for i in range(size)])
            await dispatches.wait(
                lambda s: bool(s[1]), size, timeout=60 + size * 0.5, what="have a pod", alive=operator.alive
            )
            await pods.wait(lambda _: True, size, timeout=60, what="pods seen", alive=operator.alive)
            await asyncio.sleep(1.5)  # the pool's debounced status write
            await quiet(cluster.dev.audit_log)
            offset = audit_size(cluster)

            second = pods.when("second attempt", lambda _: True)
            requeued = dispatches.when("requeued", lambda s: s[0] == "Requeued" and bool(s[2]))
            reset_at = int(time.time()) + ahead
            reset = datetime.fromtimestamp(reset_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            exhausting = time.time()
            outcome = json.dumps({"reason": "QuotaExhausted", "resetAt": reset})
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            state = {"terminated": {"exitCode": 75, "reason": "Error", "message": outcome, "startedAt": now}}
            status = {"phase": "Failed", "containerStatuses": [{"name": "session", "state": state}]}
            await _each(
                api,
                [
                    ("PATCH", f"{PODS}/d{i:05d}-1/status", {"status": status}, MERGE_PATCH)
                    for i in range(size)
                ],
            )
            exhausted_in = time.time() - exhausting
            started = [f"d{i:05d}-2" for i in range(size)]
            deadline = time.monotonic() + ahead + 60
            while sum(1 for pod in started if pod in second) < size:
                operator.alive()
                if time.monotonic() > deadline:
                    got = sum(1 for pod in started if pod in second)
                    raise RuntimeError(f"only {got} of {size} second attempts started")
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.5)
            await quiet(cluster.dev.audit_log)
            requeue_at = {
                name: datetime.fromisoformat(s[2]).timestamp()
                for name, s in dispatches.first["requeued"].items()
            }
            # perf_counter -> wall clock: the watch recorded perf_counter times
            shift = time.time() - time.perf_counter()
            late = sorted(
                second[f"{name}-2"] + shift - at for name, at in requeue_at.items() if f"{name}-2" in second
            )
            all_requeued = max(requeued.values()) + shift - reset_at if requeued else float("nan")
            spread = max(requeue_at.values(), default=float("nan")) - reset_at
            resumed = max((second[pod] for pod in started), default=float("nan")) + shift - reset_at
    finally:
        await api.close()
    events = requests_of(cluster, OPERATOR_USER, offset)
    ours = [e for e in events if e.get("verb") in ("create", "patch", "update", "delete")]
    pool_writes = [e for e in ours if (e.get("objectRef") or {}).get("resource") == "quotapools"]
    print(f"pool of {size} dispatches, all QuotaExhausted with one reset {ahead} s ahead")
    print(f"  pod statuses written by this script in {exhausted_in:5.1f} s")
    print(f"  last dispatch Requeued               {all_requeued:+6.1f} s from the reset")
    print(f"  last requeueAt                        {spread:+6.1f} s from the reset (paced)")
    print(f"  last next attempt's pod               {resumed:+6.1f} s from the reset")
    print(f"  operator writes, whole phase          {len(ours):>7}   {len(ours) / size:6.2f} per dispatch")
    share = len(pool_writes) / size
    print(f"  of which QuotaPool status patches     {len(pool_writes):>7}   {share:6.2f} per dispatch")
    if late:
        print(
            f"  next attempt after requeueAt: median {statistics.median(late) * 1000:6.0f} ms,"
            f" p99 {percentile(late, 0.99) * 1000:6.0f} ms, max {late[-1] * 1000:6.0f} ms"
            f"  ({len(late)} dispatches)"
        )


def run(size: int, workdir: Path, reset_ahead: int) -> None:
    with BackgroundCluster(runtime="instant") as cluster:
        make_namespace(cluster, NAMESPACE)
        operator = Operator(cluster, workdir)
        operator.start()
        try:
            ahead = reset_ahead if reset_ahead else RESET_AHEAD + size // 50
            asyncio.run(measure(cluster, operator, size, ahead))
        finally:
            operator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument(
        "--reset-ahead",
        type=int,
        default=0,
        help=f"seconds from the exhaustion to the reset (default {RESET_AHEAD} + 1 per 50 dispatches)",
    )
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="fleetdispatch-bench-") as workdir:
            run(size, Path(workdir), args.reset_ahead)


if __name__ == "__main__":
    main()
