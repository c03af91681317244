"""The reconcile step alone against the real kube-apiserver: no kopf, no workers, no operator process.

A `Reconciler` in the test's event loop, with the admin's credentials, is told what a watch would tell it
(`saw_dispatch`) and reconciles one key at a time, so each test shows one rule of the step: the pod and the
status written, read-your-own-writes, the refused write of a stale view, and a dispatch gone meanwhile.
The pods run on the `none` runtime: nothing happens to them unless a test says so.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from fleetdispatch.api.settings import OperatorSettings
from fleetdispatch.client.kubeapi import ApiError, Credentials, KubeApi
from fleetdispatch.controller.metrics import Metrics
from fleetdispatch.controller.reconciler import Reconciler
from fleetdispatch.devcluster.stack import BackgroundCluster
from operators import Namespace, dispatch_spec

T = TypeVar("T")
_names = itertools.count()


@pytest.fixture
def ns(cluster: BackgroundCluster) -> Namespace:
    # No operator runs in this module: the test's reconciler is the only one that acts on the namespace.
    return Namespace(cluster, f"reconciler-{next(_names)}", runtime="none")


def with_reconciler(cluster: BackgroundCluster, step: Callable[[Reconciler], Awaitable[T]]) -> T:
    plane = cluster.dev.plane
    credentials = Credentials(
        server=plane.url,
        ca_file=str(plane.ca),
        certificate_file=str(plane.admin.certificate),
        key_file=str(plane.admin.key),
    )

    async def run() -> T:
        reconciler = Reconciler(OperatorSettings(), KubeApi(credentials), Metrics())
        try:
            return await step(reconciler)
        finally:
            await reconciler.stop()

    return asyncio.run(run())


async def one_pass(reconciler: Reconciler, key: tuple[str, str]) -> None:
    """What a worker does: take the key off the queue, reconcile it, say it is done."""
    assert await reconciler.queue.get() == key
    try:
        await reconciler.reconcile(key)
    finally:
        reconciler.queue.done(key)


def test_one_step_creates_the_attempts_pod_writes_the_status_and_keeps_the_response(
    cluster: BackgroundCluster, ns: Namespace
) -> None:
    ns.create("job", dispatch_spec())
    key = (ns.name, "job")

    async def step(reconciler: Reconciler) -> None:
        reconciler.saw_dispatch(ns.dispatch("job"))
        await one_pass(reconciler, key)
        stored = ns.dispatch("job")
        cached = reconciler.cache.get(key)
        assert cached is not None
        # Read your own writes: the cache holds the write's response, before any watch event.
        assert cached.resource_version == stored["metadata"]["resourceVersion"]
        assert cached.status == stored["status"]
        assert [pod.name for pod in reconciler.pods.of(key, cached.uid)] == ["job-1"]
        # The watch event of that write, when it comes, is no news: not queued again.
        reconciler.saw_dispatch(stored)
        assert len(reconciler.queue) == 0
        assert reconciler.metrics.registry.get_sample_value("fleetdispatch_attempts_total") == 1.0

    with_reconciler(cluster, step)
    status = ns.status("job")
    assert (status["phase"], status["podName"], status["attempt"]) == ("Pending", "job-1", 1)
    assert [pod["metadata"]["name"] for pod in ns.pods()] == ["job-1"]
    assert status["message"] == "created pod job-1 for attempt 1"
    assert ns.events() == []  # the creation is told by the attempt's Started Event, once it runs


def test_a_decision_made_on_a_stale_view_is_refused_and_made_again_on_the_fresh_one(
    cluster: BackgroundCluster, ns: Namespace
) -> None:
    ns.create("stale", dispatch_spec())
    key = (ns.name, "stale")

    async def step(reconciler: Reconciler) -> None:
        reconciler.saw_dispatch(ns.dispatch("stale"))
        # Someone changes the object after the reconciler's view of it was taken.
        ns.kube.patch(f"{ns.path}/stale", {"metadata": {"labels": {"team": "b"}}})
        await one_pass(reconciler, key)
        # The status write carried the old resourceVersion: refused (409), nothing written from the old view;
        # the object was read again and the key queued for a decision on the fresh one.
        assert ns.status("stale") == {}
        cached = reconciler.cache.get(key)
        assert cached is not None
        assert cached.resource_version == ns.dispatch("stale")["metadata"]["resourceVersion"]
        await one_pass(reconciler, key)
        assert len(reconciler.queue) == 0

    with_reconciler(cluster, step)
    status = ns.status("stale")
    assert (status["phase"], status["podName"]) == ("Pending", "stale-1")
    assert [pod["metadata"]["name"] for pod in ns.pods()] == ["stale-1"]  # the pod of the first pass, adopted


def test_a_dispatch_deleted_before_its_status_is_written_is_no_error(
    cluster: BackgroundCluster, ns: Namespace
) -> None:
    ns.create("gone", dispatch_spec())
    key = (ns.name, "gone")

    async def step(reconciler: Reconciler) -> None:
        reconciler.saw_dispatch(ns.dispatch("gone"))
        ns.kube.request("DELETE", f"{ns.path}/gone")
        await one_pass(reconciler, key)  # the status write finds no object (404): nothing to do
        assert len(reconciler.queue) == 0
        reconciler.saw_dispatch({"metadata": {"namespace": ns.name, "name": "gone"}}, deleted=True)
        assert reconciler.cache.get(key) is None

    with_reconciler(cluster, step)


def test_an_answer_not_decoded_is_empty_and_a_refusal_still_says_why(
    cluster: BackgroundCluster, ns: Namespace
) -> None:
    """`KubeApi.request(decode=False)`, as the Events and deletes use it: a success gives `{}` (the object
    is created all the same), an error the API server's reason and message."""

    async def step(reconciler: Reconciler) -> None:
        about = {"kind": "Pod", "name": "p", "namespace": ns.name}
        event = {"metadata": {"name": "probe"}, "involvedObject": about}
        path = f"/api/v1/namespaces/{ns.name}/events"
        assert await reconciler.api.request("POST", path, event, decode=False) == {}
        with pytest.raises(ApiError) as refused:
            await reconciler.api.request("POST", path, event, decode=False)
        assert (refused.value.status, refused.value.reason) == (409, "AlreadyExists")
        assert "probe" in refused.value.message

    with_reconciler(cluster, step)
    assert ns.kube.request("GET", f"/api/v1/namespaces/{ns.name}/events/probe")["metadata"]["name"] == "probe"
