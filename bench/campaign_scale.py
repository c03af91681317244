"""A FleetCampaign at scale on the real control plane: N items with instant pods, against the same N plain
dispatches on the same control plane and operator.

Prints, for one run on this machine, with the real `fleetdispatch operator` in a child process (the chart's
identity and RBAC) against the dev cluster's kube-apiserver, the node agent completing pods at once:

- run P, plain: N FleetDispatches created by this script: the time until all are `Succeeded` and the
  operator's CPU per dispatch;
- run C, campaign: one FleetCampaign of N items (no parallelism limit): the time from its create until it is
  `Succeeded` (every dispatch Succeeded and the status says so), the operator's CPU per dispatch (the
  campaign's work included: creating its dispatches and writing its status), the ratio to run P's, and the
  campaign's status writes (the audit log's patches of fleetcampaigns/status) against the bound: at most one
  per `--campaign-status-interval-seconds` of the run, plus one per phase change.

Run: `.venv/bin/python bench/campaign_scale.py [--items N] [--interval S]`. The operator's CPU is read from
its process (user + system), from just before the creates until the audit log is quiet.
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit
from benchkit import Operator, Tracker, admin, audit_size, create_all, make_namespace, quiet, requests_of, row
from fleetdispatch.api.names import API_VERSION, GROUP, VERSION
from fleetdispatch.devcluster.nodeagent import RUNTIME_ANNOTATION
from fleetdispatch.devcluster.stack import OPERATOR_USER, BackgroundCluster, start_operator

PLAIN = "bench-plain"
CAMPAIGN = "bench-campaign"
TARGET_RATIO = 1.2  # campaign CPU per dispatch within 20 % of a plain dispatch's


def path(namespace: str, plural: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}"


def phase(obj: dict[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase"))


def campaign_body(items: int) -> dict[str, Any]:
    container = {"name": "session", "image": "busybox", "command": ["true"]}
    return {
        "apiVersion": API_VERSION,
        "kind": "FleetCampaign",
        "metadata": {"name": "scale"},
        "spec": {
            "items": [{"name": f"i{index:05d}"} for index in range(items)],
            "template": {
                "spec": {
                    "template": {
                        "metadata": {"annotations": {RUNTIME_ANNOTATION: "instant"}},
                        "spec": {"containers": [container]},
                    }
                }
            },
        },
    }


class CampaignOperator(Operator):
    """The bench's operator, with the campaign's status interval set."""

    def __init__(self, cluster: BackgroundCluster, workdir: Path, interval: float, profile: bool) -> None:
        super().__init__(cluster, workdir, profile=profile)
        self.interval = interval

    def start(self, timeout: float = 60.0) -> None:
        self.process = start_operator(
            self.cluster.dev,
            self.log_path,
            f"--metrics-port={self.metrics_port}",
            f"--health-port={self.health_port}",
            f"--campaign-status-interval-seconds={self.interval}",
            python_args=["-m", "cProfile", "-o", str(self.profile_path)] if self.profile_path else [],
            timeout=timeout,
        )
        self.ps = psutil.Process(self.process.pid)


async def plain(cluster: BackgroundCluster, operator: Operator, items: int) -> float:
    api = admin(cluster)
    try:
        async with Tracker(api, path(PLAIN, "fleetdispatches"), phase) as tracker:
            await asyncio.sleep(0.5)
            cpu0 = operator.cpu()
            started = time.perf_counter()
            bodies = (
                benchkit.dispatch_body(i, "instant", {"name": "session", "image": "busybox"})
                for i in range(items)
            )
            await create_all(api, path(PLAIN, "fleetdispatches"), bodies, 16)
            done = await tracker.wait(
                lambda s: s == "Succeeded",
                items,
                timeout=120 + items * 0.3,
                what="Succeeded",
                alive=operator.alive,
            )
            await quiet(cluster.dev.audit_log)
            cpu1 = operator.cpu()
    finally:
        await api.close()
    cpu_ms = (cpu1 - cpu0) * 1000 / items
    row("run P: all Succeeded after", f"{done - started:.2f} s ({items / (done - started):.0f} dispatches/s)")
    row("run P: operator CPU per dispatch", f"{cpu_ms:.2f} ms")
    return cpu_ms


async def campaign(
    cluster: BackgroundCluster, operator: CampaignOperator, items: int, plain_ms: float
) -> None:
    api = admin(cluster)
    try:
        async with Tracker(api, path(CAMPAIGN, "fleetcampaigns"), phase) as campaigns:
            await asyncio.sleep(0.5)
            offset = audit_size(cluster)
            cpu0 = operator.cpu()
            started = time.perf_counter()
            await api.request("POST", path(CAMPAIGN, "fleetcampaigns"), campaign_body(items))
            done = await campaigns.wait(
                lambda s: s == "Succeeded",
                1,
                timeout=120 + items * 0.5,
                what="Succeeded",
                alive=operator.alive,
            )
            await quiet(cluster.dev.audit_log)
            cpu1 = operator.cpu()
        body = await api.request("GET", path(CAMPAIGN, "fleetcampaigns") + "/scale")
    finally:
        await api.close()
    elapsed = done - started
    cpu_ms = (cpu1 - cpu0) * 1000 / items
    events = requests_of(cluster, OPERATOR_USER, offset)
    status_writes = sum(
        1 for e in events if e.get("verb") == "patch" and benchkit.resource(e) == "fleetcampaigns/status"
    )
    creates = sum(
        1 for e in events if e.get("verb") == "create" and benchkit.resource(e) == "fleetdispatches"
    )
    benchkit.report_requests(events, items, "dispatch")
    bound = int(elapsed / operator.interval) + 1 + 3  # one per interval, plus the phase changes
    counts = body["status"]["counts"]
    row("run C: campaign Succeeded after", f"{elapsed:.2f} s ({items / elapsed:.0f} dispatches/s)")
    row(
        "run C: counts",
        f"total {counts['total']}, succeeded {counts['succeeded']}, failed {counts['failed']}",
    )
    row("run C: dispatches created by the operator", f"{creates}")
    row("run C: operator CPU per dispatch", f"{cpu_ms:.2f} ms")
    ratio = cpu_ms / plain_ms if plain_ms else float("inf")
    row("run C / run P CPU per dispatch", f"{ratio:.2f}", f"<= {TARGET_RATIO:g}", ratio <= TARGET_RATIO)
    row(
        "run C: campaign status writes",
        f"{status_writes} over {elapsed:.0f} s",
        f"<= {bound} (1 per {operator.interval:g} s + phases)",
        status_writes <= bound,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=2000, help="dispatches of each run")
    parser.add_argument("--interval", type=float, default=5.0, help="--campaign-status-interval-seconds")
    parser.add_argument("--plain", action=argparse.BooleanOptionalAction, default=True, help="run P too")
    parser.add_argument(
        "--profile", action="store_true", help="the operator under cProfile; its top functions"
    )
    parser.add_argument("--log", type=Path, help="keep the operator's log there")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {psutil.cpu_count()} CPUs, load {psutil.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="fleetdispatch-bench-") as temporary:
        started = time.perf_counter()
        with BackgroundCluster(runtime="instant") as cluster:
            print(
                f"  (control plane and node agent started in {time.perf_counter() - started:.1f} s)",
                flush=True,
            )
            make_namespace(cluster, PLAIN)
            make_namespace(cluster, CAMPAIGN)
            operator = CampaignOperator(cluster, Path(temporary), args.interval, args.profile)
            try:
                operator.start()
                plain_ms = 0.0
                if args.plain:
                    print(f"Run P: {args.items} plain dispatches at once, instant pods")
                    plain_ms = asyncio.run(plain(cluster, operator, args.items))
                print(f"Run C: one campaign of {args.items} items, instant pods")
                asyncio.run(campaign(cluster, operator, args.items, plain_ms))
            except BaseException:
                print(f"--- operator log (tail) ---\n{operator.log()}", file=sys.stderr)
                raise
            finally:
                operator.stop()
                if args.log:
                    args.log.write_text(operator.log_path.read_text(errors="replace"))
            if operator.profile_path is not None and operator.profile_path.exists():
                stats = pstats.Stats(str(operator.profile_path), stream=sys.stdout)
                stats.sort_stats("tottime").print_stats(25)
                stats.sort_stats("cumulative").print_stats(45)
                # What the campaign adds: its controller, its decision and the watch that tells it.
                stats.sort_stats("cumulative").print_stats(r"campaigns\.py|core/campaign\.py|watches\.py", 30)


if __name__ == "__main__":
    main()
