"""The dev cluster's HTTP API, over real HTTP: discovery, verbs, watches, errors, the request log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from fleetdispatch import validation
from fleetdispatch.devcluster.server import ApiServer
from fleetdispatch.devcluster.store import Store

pytestmark = pytest.mark.anyio
DISPATCHES = "/apis/fleet.dispatch.dev/v1alpha1/namespaces/default/fleetdispatches"
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[ApiServer]:
    async with ApiServer(request_log_size=50, bookmark_seconds=0.2) as served:
        yield served


@pytest.fixture
async def http(server: ApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=server.url) as session:
        yield session


async def _install_crds(http: aiohttp.ClientSession) -> None:
    for crd in validation.crds().values():
        async with http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd) as response:
            assert response.status == 201, await response.text()


def _dispatch(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "fleet.dispatch.dev/v1alpha1",
        "kind": "FleetDispatch",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"template": {"spec": {"containers": [{"name": "session", "image": "busybox"}]}}},
    }


async def _get(http: aiohttp.ClientSession, path: str, **headers: str) -> tuple[int, Any]:
    async with http.get(path, headers=headers) as response:
        return response.status, await response.json()


async def test_discovery_serves_builtins_and_kinds_registered_by_posting_a_crd(
    http: aiohttp.ClientSession,
) -> None:
    status, groups = await _get(http, "/apis")
    assert "fleet.dispatch.dev" not in {group["name"] for group in groups["groups"]}
    await _install_crds(http)
    status, groups = await _get(http, "/apis")
    assert "fleet.dispatch.dev" in {group["name"] for group in groups["groups"]}
    status, resources = await _get(http, "/apis/fleet.dispatch.dev/v1alpha1")
    names = {entry["name"]: entry for entry in resources["resources"]}
    assert names["fleetdispatches"]["shortNames"] == ["fd"]
    assert names["fleetdispatches/status"]["verbs"] == ["get", "patch", "update"]
    status, core = await _get(http, "/api/v1")
    assert {"pods", "pods/status", "pods/log", "namespaces", "events"} <= {
        r["name"] for r in core["resources"]
    }
    status, openapi = await _get(http, "/openapi/v3/apis/fleet.dispatch.dev/v1alpha1")
    assert status == 200
    assert any("fleetdispatches/{name}" in path for path in openapi["paths"])


async def test_errors_are_status_objects(http: aiohttp.ClientSession) -> None:
    await _install_crds(http)
    status, body = await _get(http, f"{DISPATCHES}/missing")
    assert (status, body["kind"], body["reason"]) == (404, "Status", "NotFound")
    assert body["message"] == 'fleetdispatches.fleet.dispatch.dev "missing" not found'
    async with http.patch(
        f"{DISPATCHES}/x", data="{}", headers={"Content-Type": "application/apply-patch+yaml"}
    ) as response:
        assert response.status == 415
    async with http.post(
        DISPATCHES, data="not json", headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400


async def test_create_patch_status_and_list_with_selectors(http: aiohttp.ClientSession) -> None:
    await _install_crds(http)
    for name, team in (("a", "red"), ("b", "blue")):
        async with http.post(DISPATCHES, json=_dispatch(name, {"team": team})) as response:
            assert response.status == 201
    async with http.patch(
        f"{DISPATCHES}/a/status", json={"status": {"phase": "Running"}}, headers=MERGE
    ) as response:
        assert (await response.json())["status"]["phase"] == "Running"
    _, listed = await _get(http, f"{DISPATCHES}?labelSelector=team%3Dred")
    assert listed["kind"] == "FleetDispatchList"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["a"]
    _, listed = await _get(http, f"{DISPATCHES}?fieldSelector=metadata.name%3Db")
    assert [item["metadata"]["name"] for item in listed["items"]] == ["b"]
    _status, table = await _get(http, DISPATCHES, Accept="application/json;as=Table;v=v1;g=meta.k8s.io")
    assert table["kind"] == "Table"
    assert [column["name"] for column in table["columnDefinitions"]][:3] == ["Name", "Phase", "Attempt"]
    assert table["rows"][0]["cells"][:2] == ["a", "Running"]


async def _events(response: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    events = []
    while len(events) < count:
        line = await asyncio.wait_for(response.content.readline(), 5)
        assert line, f"the watch ended after {events}"
        events.append(json.loads(line))
    return events


async def test_watch_streams_initial_events_bookmark_then_changes(http: aiohttp.ClientSession) -> None:
    await _install_crds(http)
    async with http.post(DISPATCHES, json=_dispatch("a")) as response:
        assert response.status == 201
    query = "?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
    async with http.get(DISPATCHES + query) as watch:
        assert watch.headers["Content-Type"] == "application/json"
        added, bookmark = await _events(watch, 2)
        assert (added["type"], added["object"]["metadata"]["name"]) == ("ADDED", "a")
        assert bookmark["type"] == "BOOKMARK"
        assert bookmark["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
        async with http.patch(f"{DISPATCHES}/a", json={"spec": {"suspend": True}}, headers=MERGE):
            pass
        async with http.delete(f"{DISPATCHES}/a"):
            pass
        seen = [e for e in await _events(watch, 4) if e["type"] != "BOOKMARK"]
        assert [e["type"] for e in seen[:2]] == ["MODIFIED", "DELETED"]


async def test_watch_resumes_from_a_resource_version_and_times_out(http: aiohttp.ClientSession) -> None:
    await _install_crds(http)
    async with http.post(DISPATCHES, json=_dispatch("a")) as response:
        version = (await response.json())["metadata"]["resourceVersion"]
    async with http.post(DISPATCHES, json=_dispatch("b")):
        pass
    async with http.get(f"{DISPATCHES}?watch=true&resourceVersion={version}&timeoutSeconds=1") as watch:
        lines = [json.loads(line) for line in (await asyncio.wait_for(watch.text(), 5)).splitlines()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [("ADDED", "b")]


async def test_watch_from_a_forgotten_version_sends_a_410_error_event() -> None:
    async with ApiServer(Store(history=2)) as small, aiohttp.ClientSession(base_url=small.url) as client:
        for index in range(5):
            body = {"metadata": {"name": f"cm{index}"}, "data": {}}
            async with client.post("/api/v1/namespaces/default/configmaps", json=body):
                pass
        async with client.get("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=5") as watch:
            [error] = [json.loads(line) for line in (await watch.text()).splitlines()]
    assert error["type"] == "ERROR"
    assert error["object"]["code"] == 410


async def test_request_log_is_bounded_and_counts_are_kept(
    server: ApiServer, http: aiohttp.ClientSession
) -> None:
    for _ in range(80):
        await _get(http, "/version")
    assert len(server.requests) == 50
    assert server.counts["GET"] == 80
    assert server.requests[-1].path == "/version"


async def test_malformed_parameters_are_400s_not_server_errors(http: aiohttp.ClientSession) -> None:
    await _install_crds(http)
    async with http.post(DISPATCHES, json=_dispatch("a")):
        pass
    async with http.get(f"{DISPATCHES}?watch=true&timeoutSeconds=soon") as response:
        assert response.status == 400
        assert "timeoutSeconds" in (await response.json())["message"]
    async with http.delete(f"{DISPATCHES}/a?gracePeriodSeconds=x") as response:
        assert response.status == 400
    async with http.put(f"{DISPATCHES}/a", json={"metadata": "a"}) as response:
        assert response.status == 400
    async with http.post("/api/v1", json={}) as response:
        assert response.status == 405
    async with http.get(f"{DISPATCHES}?labelSelector=bad%20key%3D1") as response:
        assert response.status == 400
