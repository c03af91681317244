"""What one dispatch costs the cluster to keep, for the model of where one operator ends (bench/README.md,
"100,000 dispatches on paper").

    .venv/bin/python bench/footprint.py                  # 2,000 dispatches
    .venv/bin/python bench/footprint.py --dispatches 5000

On the dev cluster's real control plane, with the real operator in a child process (the chart's identity):
N dispatches with instant pods run to `Succeeded`; then, per dispatch, what stays: the JSON of a stored
dispatch and of its pod as a client reads them (`managedFields` included, as the API server keeps them),
the Events the operator wrote, etcd's database in use (`etcd_mvcc_db_total_size_in_use_in_bytes`, after a
compaction of everything but the latest revision and a defragmentation, so that old revisions do not
count), kube-apiserver's RSS (its watch cache holds every object) and the operator's RSS, each as the
growth from before the creates divided by N. And the time a fresh list takes: what a restarted operator (or
a new leader) reads before it starts working, in pages of 500 as the informers read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import Operator, Tracker, admin, create_all, dispatch_body, make_namespace, mem, quiet, row
from fleetdispatch.api.names import GROUP, VERSION
from fleetdispatch.client.kubeapi import KubeApi
from fleetdispatch.devcluster.stack import BackgroundCluster

NAMESPACE = "bench"
DISPATCHES = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/fleetdispatches"
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
EVENTS = f"/api/v1/namespaces/{NAMESPACE}/events"
CONTAINER = {"name": "session", "image": "busybox", "command": ["true"]}


def _etcd(url: str, path: str, body: dict[str, Any]) -> Any:
    """A call of etcd's JSON gateway (the dev cluster's etcd serves plain HTTP on loopback)."""
    request = urllib.request.Request(url + path, data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"{}")


def etcd_in_use(url: str) -> int:
    """etcd's database in use after compacting all but the latest revision and defragmenting."""
    header = _etcd(url, "/v3/kv/range", {"key": "Lw=="}).get("header") or {}  # "/", for the revision
    revision = int(header.get("revision", 0))
    _etcd(url, "/v3/kv/compaction", {"revision": revision, "physical": True})
    _etcd(url, "/v3/maintenance/defragment", {})
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    found = re.search(r"^etcd_mvcc_db_total_size_in_use_in_bytes (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


async def _list_seconds(api: KubeApi, path: str) -> tuple[float, int]:
    """A full list in pages of 500: its wall time and the bytes of JSON it read."""
    started, size, token = time.perf_counter(), 0, ""
    while True:
        params = {"limit": "500", **({"continue": token} if token else {})}
        page = await api.request("GET", path, params=params)
        size += len(json.dumps(page))
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            return time.perf_counter() - started, size


async def measure(cluster: BackgroundCluster, operator: Operator, count: int) -> None:
    api = admin(cluster)
    apiserver = next(c for c in cluster.dev.plane.components if c.name == "kube-apiserver")
    assert apiserver.process is not None
    server = psutil.Process(apiserver.process.pid)
    etcd_url = cluster.dev.plane.etcd_url
    try:
        async with Tracker(api, DISPATCHES, lambda obj: (obj.get("status") or {}).get("phase")) as tracker:
            await asyncio.sleep(0.5)
            etcd0, server0, operator0 = etcd_in_use(etcd_url), server.memory_info().rss, operator.rss()
            bodies = (dispatch_body(i, "instant", CONTAINER) for i in range(count))
            await create_all(api, DISPATCHES, bodies, 16)
            await tracker.wait(
                lambda phase: phase == "Succeeded",
                count,
                timeout=120 + count * 0.5,
                what="Succeeded",
                alive=operator.alive,
            )
            await quiet(cluster.dev.audit_log)
            await asyncio.sleep(2.0)
            etcd1, server1, operator1 = etcd_in_use(etcd_url), server.memory_info().rss, operator.rss()
        one = await api.request("GET", f"{DISPATCHES}/d00000")
        pod = await api.request("GET", f"{PODS}/d00000-1")
        events = await api.request("GET", EVENTS)
        dispatch_list = await _list_seconds(api, DISPATCHES)
        pod_list = await _list_seconds(api, PODS)
    finally:
        await api.close()
    print(f"{count} dispatches, each one attempt with an instant pod, all Succeeded; per dispatch:")
    row("a dispatch's JSON (managedFields included)", f"{len(json.dumps(one)):,} bytes")
    row("its pod's JSON", f"{len(json.dumps(pod)):,} bytes")
    row("Events in the namespace", f"{len(events.get('items') or []) / count:.2f} per dispatch")
    row("etcd in use (compacted)", f"{(etcd1 - etcd0) / count:,.0f} bytes")
    row("kube-apiserver RSS", f"{(server1 - server0) / count / 1024:.1f} KiB")
    row("operator RSS", f"{(operator1 - operator0) / count / 1024:.1f} KiB")
    print("in all, after:")
    row("etcd in use", mem(etcd1))
    row("kube-apiserver RSS", mem(server1))
    row("operator RSS", mem(operator1))
    for what, (seconds, size) in (("dispatches", dispatch_list), ("pods", pod_list)):
        row(f"a full list of the {what}, pages of 500", f"{seconds:.2f} s, {mem(size)} of JSON")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dispatches", type=int, default=2000)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}")
    with (
        tempfile.TemporaryDirectory(prefix="fleetdispatch-bench-") as workdir,
        BackgroundCluster(runtime="instant") as cluster,
    ):
        make_namespace(cluster, NAMESPACE)
        operator = Operator(cluster, Path(workdir))
        operator.start()
        try:
            asyncio.run(measure(cluster, operator, args.dispatches))
        finally:
            operator.stop()


if __name__ == "__main__":
    main()
