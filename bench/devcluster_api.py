"""How much the dev cluster's API server sustains, so later operator figures can be read against it.

Prints, for one run on this machine:
- create and merge-patch requests per second from concurrent HTTP clients (the operator's main traffic),
- status patches per second with W watchers open on the kind (watch fan-out), and
- the median and 95th-percentile latency from a patch's response to its event at a watcher.

Run: `.venv/bin/python bench/devcluster_api.py [--objects N] [--watchers W] [--concurrency C]`.
The server runs in a child process, as in `fleetdispatch dev`, so the clients' own work does not count
against it. The figures are for comparison within one run (machine noise), not targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import aiohttp

from fleetdispatch import validation
from fleetdispatch.devcluster.server import ApiServer

DISPATCHES = "/apis/fleet.dispatch.dev/v1alpha1/namespaces/default/fleetdispatches"
MERGE = {"Content-Type": "application/merge-patch+json"}


def _dispatch(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "fleet.dispatch.dev/v1alpha1",
        "kind": "FleetDispatch",
        "metadata": {"name": f"bench-{index}"},
        "spec": {"template": {"spec": {"containers": [{"name": "session", "image": "busybox"}]}}},
    }


async def _run_all(concurrency: int, jobs: list[Any]) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Any) -> None:
        async with gate:
            await job()

    started = time.perf_counter()
    await asyncio.gather(*(one(job) for job in jobs))
    return time.perf_counter() - started


async def _watch(url: str, arrivals: dict[str, float], ready: asyncio.Event) -> None:
    async with (
        aiohttp.ClientSession(base_url=url) as session,
        session.get(f"{DISPATCHES}?watch=true&resourceVersion=0") as response,
    ):
        ready.set()
        async for line in response.content:
            event = json.loads(line)
            tag = (event["object"].get("status") or {}).get("message", "")
            if tag.startswith(("t", "l")):
                arrivals.setdefault(tag, time.perf_counter())


async def serve() -> None:
    async with ApiServer() as server:
        print(server.url, flush=True)
        await asyncio.Event().wait()


async def main(objects: int, watchers: int, concurrency: int) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    url = (await child.stdout.readline()).decode().strip()
    try:
        await measure(url, objects, watchers, concurrency)
    finally:
        child.terminate()
        await child.wait()


async def measure(url: str, objects: int, watchers: int, concurrency: int) -> None:
    async with aiohttp.ClientSession(base_url=url) as http:
        for crd in validation.crds().values():
            await http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)

        async def create(index: int) -> None:
            async with http.post(DISPATCHES, json=_dispatch(index)) as response:
                assert response.status == 201, await response.text()

        elapsed = await _run_all(concurrency, [lambda i=i: create(i) for i in range(objects)])
        print(f"create (CRD validated):   {objects / elapsed:8.0f} requests/s ({objects} objects)")

        async def label(index: int) -> None:
            body = {"metadata": {"labels": {"round": "1"}}}
            async with http.patch(f"{DISPATCHES}/bench-{index}", json=body, headers=MERGE) as response:
                assert response.status == 200

        elapsed = await _run_all(concurrency, [lambda i=i: label(i) for i in range(objects)])
        print(f"merge patch, no watcher: {objects / elapsed:8.0f} requests/s")

        arrivals: dict[str, float] = {}
        readies = [asyncio.Event() for _ in range(watchers)]
        tasks = [
            asyncio.create_task(_watch(url, arrivals if i == 0 else {}, readies[i])) for i in range(watchers)
        ]
        await asyncio.gather(*(ready.wait() for ready in readies))
        await asyncio.sleep(0.5)
        sent: dict[str, float] = {}

        async def status(index: int) -> None:
            tag = f"t{index}"
            body = {"status": {"message": tag}}
            async with http.patch(f"{DISPATCHES}/bench-{index}/status", json=body, headers=MERGE) as response:
                sent[tag] = time.perf_counter()
                assert response.status == 200, await response.text()

        elapsed = await _run_all(concurrency, [lambda i=i: status(i) for i in range(objects)])
        print(f"status patch, {watchers:3d} watchers: {objects / elapsed:6.0f} requests/s")
        # Latency: one patch at a time, from just before it is sent until watcher 0 has parsed its event.
        lags = []
        for index in range(min(objects, 200)):
            tag = f"l{index}"
            before = time.perf_counter()
            async with http.patch(
                f"{DISPATCHES}/bench-{index}/status", json={"status": {"message": tag}}, headers=MERGE
            ):
                pass
            while tag not in arrivals:
                await asyncio.sleep(0.0005)
            lags.append(arrivals[tag] - before)
        lags.sort()
        print(
            f"watch latency (patch sent -> event parsed, {watchers} watchers): "
            f"median {statistics.median(lags) * 1000:.1f} ms, "
            f"p95 {lags[int(len(lags) * 0.95) - 1] * 1000:.1f} ms"
        )
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--watchers", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        asyncio.run(serve())
    else:
        asyncio.run(main(options.objects, options.watchers, options.concurrency))
