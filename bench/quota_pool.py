"""QuotaPool cost: N dispatches of one pool all hit the quota; what the pool mechanism costs, and how late
the new attempts start after their `requeueAt`.

    .venv/bin/python bench/quota_pool.py                 # pools of 100 and 500 dispatches
    .venv/bin/python bench/quota_pool.py --sizes 500

Per size, on a dev cluster without a pod runtime (this script plays the kubelet), with the real operator in
a child process: N dispatches of one QuotaPool each get a pod; then every session ends `QuotaExhausted`
(exit 75) with the same reset 5 s ahead, as when a shared API key runs dry. It prints the operator's
requests during that phase, the pool's own (QuotaPool status patches) apart from the rest, per dispatch, so
sizes can be compared (linear growth: a constant per dispatch), and, per dispatch, how long after its
`requeueAt` the API server had its next attempt's pod (median, 99th percentile, max; polled every 50 ms,
and `requeueAt` has whole seconds, so a figure under 50 ms is noise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleetdispatch.api import API_VERSION
from fleetdispatch.devcluster.resources import NAMESPACES, PODS
from fleetdispatch.devcluster.stack import BackgroundCluster, DevCluster
from operator_dispatch import NAMESPACE, Operator, _dispatches, _requests, _reset_request_log

POOL = "shared"
RESET_AHEAD = 5


def _pool_kind(c: DevCluster) -> Any:
    return c.store.kind("fleet.dispatch.dev", "v1alpha1", "quotapools")


def _body(index: int) -> dict[str, Any]:
    container = {"name": "session", "image": "agent", "command": ["agent"]}
    return {
        "apiVersion": API_VERSION,
        "kind": "FleetDispatch",
        "metadata": {"name": f"d{index:05d}"},
        "spec": {
            "template": {"spec": {"containers": [container]}},
            "quotaPool": POOL,
            "retry": {"backoff": {"baseSeconds": 1, "jitterPercent": 20}},
        },
    }


def _statuses(cluster: BackgroundCluster) -> dict[str, dict[str, Any]]:
    return cluster.call(
        lambda c: {
            d["metadata"]["name"]: dict(d.get("status") or {}) for d in c.store.objects(_dispatches(c))
        }
    )


def _pods(cluster: BackgroundCluster) -> set[str]:
    return cluster.call(lambda c: {p["metadata"]["name"] for p in c.store.objects(PODS)})


def run(size: int, workdir: Path) -> None:
    with BackgroundCluster(runtime="none", bookmark_seconds=5.0) as cluster:
        operator = Operator(cluster, workdir, None, False)
        operator.start()
        try:

            def setup(c: DevCluster) -> None:
                c.store.create(NAMESPACES, None, {"metadata": {"name": NAMESPACE}})
                pool = {
                    "apiVersion": API_VERSION,
                    "kind": "QuotaPool",
                    "metadata": {"name": POOL},
                    "spec": {},
                }
                c.store.create(_pool_kind(c), NAMESPACE, pool)
                for index in range(size):
                    c.store.create(_dispatches(c), NAMESPACE, _body(index))

            cluster.call(setup, timeout=120)
            deadline = time.monotonic() + 120
            while sum(1 for s in _statuses(cluster).values() if s.get("podName")) < size:
                if time.monotonic() > deadline:
                    raise RuntimeError("not every dispatch got its first pod")
                time.sleep(0.2)
            time.sleep(1.5)  # the pool's debounced status write
            _reset_request_log(cluster, 1_000_000)

            reset = datetime.fromtimestamp(int(time.time()) + RESET_AHEAD, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            outcome = json.dumps({"reason": "QuotaExhausted", "resetAt": reset})

            def exhaust(c: DevCluster) -> None:
                now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                state = {
                    "terminated": {"exitCode": 75, "reason": "Error", "message": outcome, "startedAt": now}
                }
                for index in range(size):
                    status = {"phase": "Failed", "containerStatuses": [{"name": "session", "state": state}]}
                    c.store.patch(
                        PODS,
                        NAMESPACE,
                        f"d{index:05d}-1",
                        "application/merge-patch+json",
                        {"status": status},
                        subresource="status",
                    )

            cluster.call(exhaust, timeout=120)
            requeue_at: dict[str, float] = {}
            seen: dict[str, float] = {}
            deadline = time.monotonic() + RESET_AHEAD + 60
            while len(seen) < size:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(seen)} of {size} second attempts started")
                for name, status in _statuses(cluster).items():
                    if (
                        name not in requeue_at
                        and status.get("phase") == "Requeued"
                        and status.get("requeueAt")
                    ):
                        requeue_at[name] = datetime.fromisoformat(status["requeueAt"]).timestamp()
                now = time.time()
                for pod in _pods(cluster):
                    if pod.endswith("-2") and pod[:-2] not in seen:
                        seen[pod[:-2]] = now
                time.sleep(0.05)
            time.sleep(1.5)
            records, served = _requests(cluster)
        finally:
            operator.stop()
    ours = [r for r in records if r.user_agent.startswith(("fleet-dispatch", "kopf")) and r.method != "GET"]
    pool_writes = [r for r in ours if "/quotapools/" in r.path]
    late = sorted(seen[name] - requeue_at[name] for name in seen if name in requeue_at)
    print(f"pool of {size} dispatches, all QuotaExhausted with one reset {RESET_AHEAD} s ahead")
    print(f"  operator writes, whole phase          {len(ours):>7}   {len(ours) / size:6.2f} per dispatch")
    share = len(pool_writes) / size
    print(f"  of which QuotaPool status patches     {len(pool_writes):>7}   {share:6.2f} per dispatch")
    if late:
        p99 = late[min(len(late) - 1, int(0.99 * len(late)))]
        print(
            f"  next attempt after requeueAt: median {statistics.median(late) * 1000:6.0f} ms,"
            f" p99 {p99 * 1000:6.0f} ms, max {late[-1] * 1000:6.0f} ms  ({len(late)} dispatches)"
        )
    print(f"  (requests served in all during the phase: {served})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="fleetdispatch-bench-") as workdir:
            run(size, Path(workdir))


if __name__ == "__main__":
    main()
