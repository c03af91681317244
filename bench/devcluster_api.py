"""How much the dev cluster's kube-apiserver sustains here, so the operator's figures can be read against it.

Prints, for one run on this machine, against the real control plane (kube-apiserver and etcd as processes,
audit log on, as the operator benches run it):
- FleetDispatch creates per second from concurrent requests (schema and CEL validated by the API server),
- merge patches per second, and status patches per second with W watchers open on the kind (fan-out),
- the median and 95th-percentile latency from sending a status patch to a watcher having parsed its event,
- the CPU of kube-apiserver and etcd per write.

Run: `.venv/bin/python bench/devcluster_api.py [--objects N] [--watchers W] [--concurrency C]`.
The clients are this process's (asyncio, the cluster admin's certificate, kept-alive connections); the
server's processes are its own. The figures are for comparison within one run (machine noise), not targets.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import Components, admin, make_namespace, percentile
from fleetdispatch.api.names import API_VERSION, GROUP, VERSION
from fleetdispatch.client.kubeapi import MERGE_PATCH, KubeApi
from fleetdispatch.devcluster.stack import BackgroundCluster

NAMESPACE = "bench"
DISPATCHES = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/fleetdispatches"


def _dispatch(index: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "FleetDispatch",
        "metadata": {"name": f"bench-{index}"},
        "spec": {"template": {"spec": {"containers": [{"name": "session", "image": "busybox"}]}}},
    }


async def _run_all(concurrency: int, jobs: list[Callable[[], Awaitable[None]]]) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    started = time.perf_counter()
    await asyncio.gather(*(one(job) for job in jobs))
    return time.perf_counter() - started


async def _watch(api: KubeApi, arrivals: dict[str, float] | None, ready: asyncio.Event) -> None:
    params = {"watch": "1", "timeoutSeconds": "3600", "resourceVersion": "0"}
    ready.set()
    async for event in api.watch(DISPATCHES, params):
        tag = ((event.get("object") or {}).get("status") or {}).get("message", "")
        if arrivals is not None and tag.startswith(("t", "l")):
            arrivals.setdefault(tag, time.perf_counter())


async def measure(cluster: BackgroundCluster, objects: int, watchers: int, concurrency: int) -> None:
    api = admin(cluster)
    components = Components(cluster)
    client = "node agent + bench client (this process)"

    def cpu(label: str, writes: int) -> str:
        delta = components.delta()
        parts = [f"{name} {delta[name] * 1000 / writes:.2f} ms" for name in ("kube-apiserver", "etcd")]
        return f"CPU per {label}: {', '.join(parts)}; the clients {delta[client] * 1000 / writes:.2f} ms"

    try:
        components.mark()

        async def create(index: int) -> None:
            await api.request("POST", DISPATCHES, _dispatch(index))

        elapsed = await _run_all(concurrency, [functools.partial(create, i) for i in range(objects)])
        print(f"create (CRD validated):   {objects / elapsed:8.0f} requests/s ({objects} objects)")
        print(f"  {cpu('create', objects)}")

        async def label(index: int) -> None:
            body = {"metadata": {"labels": {"round": "1"}}}
            await api.request("PATCH", f"{DISPATCHES}/bench-{index}", body, content_type=MERGE_PATCH)

        components.mark()
        elapsed = await _run_all(concurrency, [functools.partial(label, i) for i in range(objects)])
        print(f"merge patch, no watcher:  {objects / elapsed:8.0f} requests/s")
        print(f"  {cpu('patch', objects)}")

        arrivals: dict[str, float] = {}
        readies = [asyncio.Event() for _ in range(watchers)]
        watching = [admin(cluster) for _ in range(watchers)]
        tasks = [
            asyncio.create_task(_watch(client, arrivals if i == 0 else None, readies[i]))
            for i, client in enumerate(watching)
        ]
        await asyncio.gather(*(ready.wait() for ready in readies))
        await asyncio.sleep(1.0)

        async def status(index: int) -> None:
            body = {"status": {"message": f"t{index}"}}
            await api.request("PATCH", f"{DISPATCHES}/bench-{index}/status", body, content_type=MERGE_PATCH)

        components.mark()
        elapsed = await _run_all(concurrency, [functools.partial(status, i) for i in range(objects)])
        print(f"status patch, {watchers:3d} watchers: {objects / elapsed:6.0f} requests/s")
        print(f"  {cpu('status patch', objects)}")
        # Latency: one patch at a time, from just before it is sent until watcher 0 has parsed its event.
        lags = []
        for index in range(min(objects, 200)):
            tag = f"l{index}"
            before = time.perf_counter()
            path = f"{DISPATCHES}/bench-{index}/status"
            await api.request("PATCH", path, {"status": {"message": tag}}, content_type=MERGE_PATCH)
            while tag not in arrivals:
                await asyncio.sleep(0.0005)
            lags.append(arrivals[tag] - before)
        print(
            f"watch latency (patch sent -> event parsed, {watchers} watchers): "
            f"median {statistics.median(lags) * 1000:.1f} ms, p95 {percentile(lags, 0.95) * 1000:.1f} ms"
        )
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for watcher in watching:
            await watcher.close()
    finally:
        await api.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--watchers", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=20)
    options = parser.parse_args()
    with BackgroundCluster(runtime="none") as cluster:
        make_namespace(cluster, NAMESPACE)
        asyncio.run(measure(cluster, options.objects, options.watchers, options.concurrency))


if __name__ == "__main__":
    main()
