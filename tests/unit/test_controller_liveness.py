"""`/healthz` and the workers' progress: healthy while they finish keys or have none, failing when a key has
waited for longer than the threshold and no worker finished anything (here: every worker is stuck)."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from clocks import ManualClock
from fleetdispatch.api.settings import OperatorSettings
from fleetdispatch.client.kubeapi import Credentials, KubeApi
from fleetdispatch.controller import handlers
from fleetdispatch.controller.metrics import Metrics
from fleetdispatch.controller.reconciler import Reconciler
from fleetdispatch.controller.workqueue import STALL_SECONDS, Progress, Workers, WorkQueue


def test_before_the_first_event_the_operator_is_healthy() -> None:
    assert handlers.liveness(None) == {"started": False}


def test_the_probe_shows_the_queue_while_the_workers_progress() -> None:
    shown = handlers.liveness(Progress(100.0, 2, 1, 90.0, 99.0, waking=3, workers=4, workers_alive=4))
    assert shown == {
        "started": True,
        "ready": 2,
        "working": 1,
        "waking": 3,
        "workers": 4,
        "oldestReadySeconds": 10.0,
        "sinceLastFinishedSeconds": 1.0,
    }


def test_stuck_workers_fail_the_probe_once_a_key_has_waited_past_the_threshold() -> None:
    async def scenario() -> None:
        clock = ManualClock(now=0.0)
        queue: WorkQueue[str] = WorkQueue(clock=clock)
        stuck = asyncio.Event()

        async def process(key: str) -> None:
            await stuck.wait()  # a call that never returns

        workers = Workers(queue, process, 1)
        workers.start()
        queue.add("a")
        queue.add("b")
        await asyncio.sleep(0.01)  # the worker takes "a" and hangs; "b" waits
        assert handlers.liveness(workers.progress())["working"] == 1
        clock.advance(STALL_SECONDS)
        handlers.liveness(workers.progress())  # not yet past the threshold
        clock.advance(1)
        with pytest.raises(kopf.PermanentError, match=r"no progress.*waited 301 s"):
            handlers.liveness(workers.progress())
        stuck.set()  # the call returns: the workers finish "a", then "b"
        await asyncio.sleep(0.01)
        assert handlers.liveness(workers.progress())["ready"] == 0
        await workers.stop()

    asyncio.run(scenario())


def test_the_kopf_probe_handler_reads_the_running_reconciler() -> None:
    async def scenario() -> None:
        api = KubeApi(Credentials(server="http://127.0.0.1:9"))  # never called: no key is queued
        reconciler = Reconciler(OperatorSettings(workers=2), api, Metrics())
        runtime = handlers.Runtime(OperatorSettings(), Metrics(), reconciler=reconciler)
        memo = kopf.Memo(runtime=runtime)
        assert handlers._workers_probe(memo=memo)["workers"] == 0  # not started
        reconciler.start()
        assert handlers._workers_probe(memo=memo)["workers"] == 2
        await reconciler.stop()
        assert handlers._workers_probe(
            memo=kopf.Memo(runtime=handlers.Runtime(OperatorSettings(), Metrics()))
        ) == {"started": False}

    asyncio.run(scenario())
