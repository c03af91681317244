"""The dev cluster's HTTP front: the Kubernetes REST API over real HTTP, backed by :class:`.store.Store`.

It serves what kopf, the ``kubernetes`` client and ``kubectl`` ask of an API server: version and health,
discovery (``/api``, ``/apis`` and each group version, including kinds registered by creating a CRD), the
minimal ``/openapi/v3`` that ``kubectl apply`` needs to choose server-side field validation, and the
resource verbs (get, list, watch, create, update, patch, delete) on namespaced and cluster-scoped paths,
with ``/status`` and ``pods/log``. Lists and watches honour label and field selectors; ``kubectl get`` gets
server-side Tables (:mod:`.tables`). Watches stream ``application/json`` lines: the starting events, a
BOOKMARK marking the end of the initial events when ``sendInitialEvents=true`` (what ``kubectl wait`` needs),
then every change, periodic BOOKMARKs when allowed, until ``timeoutSeconds``; a resource version the history
no longer reaches gives the ERROR event with a 410 Status that makes clients relist.

A bounded log of requests (:attr:`ApiServer.requests`) and unbounded per-verb counters let tests and
benchmarks count exactly what a client did; the log is a ring, so a long session stays cheap.

Not served: authentication and authorisation (anyone on the loopback may do anything: the server binds
127.0.0.1 by default), protobuf and CBOR bodies (415), server-side apply (415), deletecollection, the legacy
``/watch/`` paths, and OpenAPI schemas beyond what ``kubectl`` needs to start.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from fleetdispatch import __version__
from fleetdispatch.devcluster import patches, tables
from fleetdispatch.devcluster.resources import PODS, ResourceType
from fleetdispatch.devcluster.selectors import SelectorError, object_matcher
from fleetdispatch.devcluster.store import WARN, ApiError, Object, Store, bad_request

LogSource = Callable[[str, str, str | None], Path | None]
"""Where the runtime keeps a container's output: (namespace, pod, container or None) -> file, if any."""

KUBERNETES_VERSION = ("1", "36")
_CORE = ("api", "v1")
_BODYLESS = ("GET", "DELETE")


@dataclass(frozen=True)
class RequestRecord:
    """One served request, as tests assert on it."""

    method: str
    path: str
    query: str
    status: int
    user_agent: str

    @property
    def is_watch(self) -> bool:
        return "watch=true" in self.query or "watch=1" in self.query


@dataclass(frozen=True)
class Target:
    """What a resource path names: a kind, maybe a namespace, a name and a subresource."""

    kind: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(error: ApiError) -> web.Response:
    return _json(error.status(), error.code)


class ApiServer:
    """The HTTP server: ``async with ApiServer() as server:`` serves on ``server.url`` inside the block."""

    def __init__(
        self,
        store: Store | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        request_log_size: int = 2000,
        bookmark_seconds: float = 30.0,
        logs: LogSource | None = None,
    ) -> None:
        self.store = store or Store()
        self.host = host
        self.port = port
        self.requests: deque[RequestRecord] = deque(maxlen=request_log_size)
        self.counts: Counter[str] = Counter()
        self.bookmark_seconds = bookmark_seconds
        self.logs = logs
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._watches: set[asyncio.Queue[tuple[str, Object]]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the bound port, when 0 asked for any
        return self.url

    async def stop(self) -> None:
        self._closing.set()
        for queue in list(self._watches):
            queue.put_nowait(("CLOSE", {}))
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- dispatch ---------------------------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        try:
            response = await self._route(request)
        except ApiError as error:
            response = _error(error)
        except SelectorError as error:
            response = _error(bad_request(str(error)))
        self.requests.append(
            RequestRecord(
                request.method,
                request.path,
                request.query_string,
                response.status,
                request.headers.get("User-Agent", ""),
            )
        )
        self.counts[request.method] += 1
        return response

    async def _route(self, request: web.Request) -> web.StreamResponse:
        parts = [part for part in request.path.split("/") if part]
        if request.method == "GET":
            static = self._static(parts)
            if static is not None:
                return static
        if parts[:2] == list(_CORE):
            prefix, rest = ("", "v1"), parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            prefix, rest = (parts[1], parts[2]), parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest and request.method == "GET":
            return self._group_version(*prefix)
        return await self._resource(request, self._target(prefix, rest))

    def _static(self, parts: list[str]) -> web.StreamResponse | None:
        path = "/".join(parts)
        if path in ("healthz", "livez", "readyz"):
            return web.Response(text="ok")
        if path == "version":
            return _json(
                {
                    "major": KUBERNETES_VERSION[0],
                    "minor": KUBERNETES_VERSION[1],
                    "gitVersion": f"v{'.'.join(KUBERNETES_VERSION)}.0+fleetdispatch.dev.{__version__}",
                    "platform": "linux/amd64",
                }
            )
        if path == "api":
            return _json(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.url}],
                }
            )
        if path == "apis":
            return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": self._groups()})
        if len(parts) == 2 and parts[0] == "apis":
            group = next((g for g in self._groups() if g["name"] == parts[1]), None)
            if group is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json({"kind": "APIGroup", "apiVersion": "v1", **group})
        if parts[:2] == ["openapi", "v3"]:
            return _json(self._openapi(parts[2:]))
        return None

    def _groups(self) -> list[Object]:
        versions: dict[str, list[str]] = {}
        for kind in self.store.kinds():
            if kind.group and kind.version not in versions.setdefault(kind.group, []):
                versions[kind.group].append(kind.version)
        return [
            {
                "name": group,
                "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in served],
                "preferredVersion": {"groupVersion": f"{group}/{served[0]}", "version": served[0]},
            }
            for group, served in sorted(versions.items())
        ]

    def _group_version(self, group: str, version: str) -> web.Response:
        kinds = [k for k in self.store.kinds() if (k.group, k.version) == (group, version)]
        if not kinds:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return _json(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": [entry for kind in kinds for entry in kind.discovery()],
            }
        )

    def _openapi(self, rest: list[str]) -> Object:
        """Just enough OpenAPI v3 for ``kubectl apply``: each kind's PATCH advertises ``fieldValidation``."""
        by_path: dict[str, list[ResourceType]] = {}
        for kind in self.store.kinds():
            by_path.setdefault(kind.group_version_path.lstrip("/"), []).append(kind)
        if not rest:
            return {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}"} for gv in by_path}}
        paths: Object = {}
        for kind in by_path.get("/".join(rest), []):
            scope = "/namespaces/{namespace}" if kind.namespaced else ""
            gvk = {"group": kind.group, "version": kind.version, "kind": kind.kind}
            paths[f"{kind.group_version_path}{scope}/{kind.plural}/{{name}}"] = {
                "patch": {
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                    "responses": {},
                }
            }
        return {
            "openapi": "3.0.0",
            "info": {"title": "fleetdispatch dev cluster", "version": "v1"},
            "paths": paths,
        }

    def _target(self, prefix: tuple[str, str], rest: list[str]) -> Target:
        group, version = prefix
        namespace: str | None = None
        if not rest:
            raise ApiError(
                405, "MethodNotAllowed", "the server does not allow this method on a group version"
            )
        if rest[0] == "namespaces" and not (
            group == "" and (len(rest) <= 2 or rest[2] in ("status", "finalize"))
        ):
            if len(rest) < 3:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            namespace, rest = rest[1], rest[2:]
        kind = self.store.kind(group, version, rest[0])
        if kind is None or len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if kind.namespaced is False and namespace is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if subresource is not None and not (
            (subresource == "status" and kind.status_subresource) or (subresource == "log" and kind == PODS)
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return Target(kind, namespace, name, subresource)

    # ---- verbs ------------------------------------------------------------------------------------------

    async def _resource(self, request: web.Request, target: Target) -> web.StreamResponse:
        kind, namespace, name = target.kind, target.namespace, target.name
        query = request.query
        if request.method == "GET" and name is None:
            matches = object_matcher(query.get("labelSelector"), query.get("fieldSelector"))
            if query.get("watch") in ("true", "1"):
                return await self._watch(request, target)
            items = sorted(self.store.select(kind, namespace, matches), key=_sort_key)
            return self._collection(request, kind, items)
        if request.method == "GET":
            assert name is not None
            if target.subresource == "log":
                return await self._log(request, target)
            obj = self.store.get(kind, namespace, name)
            if tables.wants_table(request.headers.get("Accept", "")):
                return _json(tables.table(kind, [obj], self.store.now(), obj["metadata"]["resourceVersion"]))
            return _json(obj)
        body = await self._body(request)
        validation = query.get("fieldValidation", WARN)
        dry_run = query.get("dryRun") == "All"  # kubectl diff, --dry-run=server: answered, not stored
        if request.method == "POST" and name is None:
            written = self.store.create(kind, namespace, body, field_validation=validation, dry_run=dry_run)
            return _json(written.obj, 201, _warnings(written.warnings))
        if name is None:
            raise ApiError(
                405, "MethodNotAllowed", f"the server does not allow this method on {kind.qualified}"
            )
        if request.method == "PUT":
            written = self.store.update(
                kind,
                namespace,
                name,
                body,
                subresource=target.subresource,
                field_validation=validation,
                dry_run=dry_run,
            )
            return _json(written.obj, 200, _warnings(written.warnings))
        if request.method == "PATCH":
            content_type = request.content_type
            if content_type not in patches.SUPPORTED:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format: {content_type}",
                )
            written = self.store.patch(
                kind,
                namespace,
                name,
                content_type,
                body,
                subresource=target.subresource,
                field_validation=validation,
                dry_run=dry_run,
            )
            return _json(written.obj, 200, _warnings(written.warnings))
        in_options = isinstance(body, dict) and "All" in (body.get("dryRun") or [])
        if request.method == "DELETE" and (dry_run or in_options):
            return _json(self.store.get(kind, namespace, name))  # kubectl sends it in DeleteOptions
        if request.method == "DELETE":
            options = body if isinstance(body, dict) else {}
            grace = query.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
            obj = self.store.delete(
                kind,
                namespace,
                name,
                grace_seconds=None if grace is None else _integer("gracePeriodSeconds", grace),
                propagation=str(
                    query.get("propagationPolicy", options.get("propagationPolicy") or "Background")
                ),
                preconditions=options.get("preconditions"),
            )
            return _json(obj)
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on {kind.qualified}")

    async def _body(self, request: web.Request) -> Any:
        if not request.can_read_body:
            if request.method in _BODYLESS:
                return None
            raise bad_request("the request has no body")
        if request.content_type.startswith(("application/vnd.kubernetes.protobuf", "application/cbor")):
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format")
        if request.content_type == patches.APPLY:
            raise ApiError(415, "UnsupportedMediaType", "server-side apply is not served by the dev cluster")
        try:
            return json.loads(await request.read())
        except ValueError as error:
            raise bad_request(f"the request body is not JSON: {error}") from None

    def _collection(self, request: web.Request, kind: ResourceType, items: list[Object]) -> web.Response:
        version = str(self.store.resource_version)
        if tables.wants_table(request.headers.get("Accept", "")):
            return _json(tables.table(kind, items, self.store.now(), version))
        return _json(
            {
                "apiVersion": kind.api_version,
                "kind": f"{kind.kind}List",
                "metadata": {"resourceVersion": version},
                "items": items,
            }
        )

    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        query = request.query
        kind = target.kind
        matches = object_matcher(query.get("labelSelector"), query.get("fieldSelector"))
        since_text = query.get("resourceVersion", "")
        initial_events = query.get("sendInitialEvents") == "true"
        since = None if initial_events or since_text in ("", "0") else _resource_version(since_text)
        timeout = _integer("timeoutSeconds", query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        as_table = tables.wants_table(request.headers.get("Accept", ""))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)

        async def send(event_type: str, obj: Object) -> None:
            if as_table and event_type in ("ADDED", "MODIFIED", "DELETED"):
                obj = tables.table(kind, [obj], self.store.now(), obj["metadata"]["resourceVersion"])
            line = json.dumps({"type": event_type, "object": obj}, separators=(",", ":"))
            await response.write(line.encode() + b"\n")

        try:
            initial, subscription = self.store.subscribe(kind, target.namespace, matches, since)
        except ApiError as error:
            await send("ERROR", error.status())
            return response
        self._watches.add(subscription.events)
        try:
            for event_type, obj in initial:
                await send(event_type, obj)
            if initial_events:
                await send("BOOKMARK", self._bookmark(kind, {"k8s.io/initial-events-end": "true"}))
            await self._stream(request, kind, subscription.events, send, timeout)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watches.discard(subscription.events)
            self.store.unsubscribe(subscription)
        return response

    async def _stream(
        self,
        request: web.Request,
        kind: ResourceType,
        events: asyncio.Queue[tuple[str, Object]],
        send: Callable[[str, Object], Any],
        timeout: int | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        ends = None if timeout is None else loop.time() + timeout
        bookmarks = request.query.get("allowWatchBookmarks") == "true"
        while not self._closing.is_set():
            wait = self.bookmark_seconds if ends is None else min(self.bookmark_seconds, ends - loop.time())
            if wait <= 0:
                return
            try:
                event_type, obj = await asyncio.wait_for(events.get(), wait)
            except TimeoutError:
                if bookmarks and (ends is None or ends - loop.time() > 0):
                    await send("BOOKMARK", self._bookmark(kind, {}))
                continue
            if event_type == "CLOSE":
                return
            await send(event_type, obj)

    def _bookmark(self, kind: ResourceType, annotations: dict[str, str]) -> Object:
        metadata: Object = {"resourceVersion": str(self.store.resource_version)}
        if annotations:
            metadata["annotations"] = annotations
        return {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": metadata}

    async def _log(self, request: web.Request, target: Target) -> web.StreamResponse:
        """A container's output as the runtime recorded it; ``follow`` streams it until the pod is gone."""
        assert target.name is not None and target.namespace is not None
        self.store.get(target.kind, target.namespace, target.name)
        container = request.query.get("container")
        path = self.logs(target.namespace, target.name, container) if self.logs else None
        if path is None or not path.exists():
            raise bad_request(
                f'container "{container or target.name}" in pod "{target.name}" has no logs yet'
            )
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        position = 0
        with path.open("rb") as output:
            while True:
                chunk = output.read(65536)
                if chunk:
                    position += len(chunk)
                    await response.write(chunk)
                    continue
                if request.query.get("follow") != "true" or self._closing.is_set() or self._finished(target):
                    break
                await asyncio.sleep(0.2)
        return response

    def _finished(self, target: Target) -> bool:
        assert target.name is not None
        try:
            pod = self.store.get(target.kind, target.namespace, target.name)
        except ApiError:
            return True
        return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _warnings(warnings: tuple[str, ...]) -> dict[str, str] | None:
    if not warnings:
        return None
    return {"Warning": ", ".join(f'299 - "{warning}"' for warning in warnings)}


def _integer(name: str, value: object) -> int:
    """A numeric query or DeleteOptions parameter; a bad one is the client's error (400), not ours."""
    try:
        return int(str(value))
    except ValueError:
        raise bad_request(f"{name}: invalid value {value!r}: must be an integer") from None


def _resource_version(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise bad_request(f"invalid resource version {text!r}") from None


def _sort_key(obj: Object) -> tuple[str, str]:
    metadata = obj["metadata"]
    return (metadata.get("namespace") or "", metadata["name"])
