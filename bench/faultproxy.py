"""Fault proxies on loopback, in front of the dev cluster's kube-apiserver, for the chaos bench.

Two modes, one class (`FaultProxy`), each on a thread with its own event loop:

- **TCP** (the default): TLS passes through untouched (the client still verifies the API server's own
  certificate), so it can only delay bytes and cut connections. Every chunk forwarded in either direction
  waits a random latency up to `latency` seconds; every `cut_every` seconds (on average) one open
  connection, picked by the seeded generator, is reset both ways: a watch the server ended early, or a
  response lost before or after the server committed the write (the client cannot tell which).
- **HTTP** (`serving=` a key pair): it terminates TLS with a serving certificate the dev cluster's CA issued
  for 127.0.0.1 (so the client's kubeconfig keeps its CA and only changes its server), reads each request
  and forwards it over TLS to the real API server, then injects seeded faults per request (`HttpFaults`):
  a 500/503 BEFORE forwarding (the write never happens), a 500/503 AFTER the upstream answered (a write is
  committed, its response dropped), 409 Conflict without forwarding (patches and updates, where a real
  server answers it to a stale write), 429 with `Retry-After`, latency, and cut watches (a streaming
  watch response ended early: half of them a clean end, as the server's own timeout ends one, half a
  reset mid-stream). Watch responses stream through chunk by chunk, as the server sends them.

The identity in HTTP mode: the request's `Authorization` header is forwarded as it came, and the
upstream connection carries no client certificate of its own, so the API server authenticates,
authorizes and audits every request as the client itself. The dev cluster's operator kubeconfig holds
the chart ServiceAccount's token (a TokenRequest, `stack.DevCluster._setup`), so the operator keeps its
exact identity and RBAC through the proxy without impersonation (which would need a second, more powerful
identity that may impersonate, and would audit every request under it). For a client that authenticates
with a certificate instead, `upstream_identity` takes a key pair the same CA issued for the same user and
groups (`pki.Authority.issue`), presented upstream (the API server's x509 authenticator runs before its
token authenticators, so it is only given when there is no token to pass on).

The HTTP mode counts every request it receives (`requests_by_second`, whole seconds of `time.time()`),
including the ones it answered itself, which never reach the API server's audit log: that is the
operator's request rate. When the API server is down (a restart), a request is answered 503, as a load
balancer in front of a stopped server answers.

Deliberately not here: faults in request bodies (a corrupted JSON, a truncated object) and in TLS itself;
the proxy never changes what the API server answered, it only drops, delays or replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from fleetdispatch.devcluster.pki import KeyPair

CHUNK = 65536
FAULT_HEADER = "X-Fault-Proxy"  # on an answer the proxy made up: which fault (the client may log it)
WRITES = ("POST", "PUT", "PATCH", "DELETE")
# Not forwarded either way: the connection's own headers (the proxy has its own connections).
HOP_HEADERS = frozenset(
    h.lower()
    for h in ("Host", "Connection", "Keep-Alive", "Transfer-Encoding", "Content-Length", "Upgrade", "TE")
)


@dataclass
class FaultCounts:
    connections: int = 0
    cuts: int = 0
    delayed_chunks: int = 0
    requests: int = 0
    upstream_down: int = 0
    injected: Counter[str] = field(default_factory=Counter)  # fault kind -> how many


@dataclass(frozen=True)
class HttpFaults:
    """The share of requests each fault hits (HTTP mode), drawn per request in this order."""

    before_5xx: float = 0.02  # any request
    after_5xx: float = 0.03  # writes only: forwarded, committed, its answer replaced
    conflict: float = 0.02  # PATCH and PUT only
    throttle: float = 0.02  # any request: 429, Retry-After
    retry_after: int = 1
    watch_cut_every: float = 8.0  # mean seconds a watch lives before the proxy ends it


def _status(code: int, reason: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message}
    body |= {"reason": reason, "code": code}
    return web.Response(status=code, text=json.dumps(body), content_type="application/json", headers=headers)


@dataclass
class FaultProxy:
    """`with FaultProxy(upstream_port, seed=...) as proxy:` listens on 127.0.0.1:proxy.port, on a thread."""

    upstream_port: int
    seed: int = 0
    latency: float = 0.02
    cut_every: float = 2.0  # TCP mode
    serving: KeyPair | None = None  # HTTP mode: the proxy's serving certificate
    ca: Path | None = None  # HTTP mode: the CA that verifies the upstream API server
    upstream_identity: KeyPair | None = None  # HTTP mode, for clients that have no token to pass on
    http_faults: HttpFaults = field(default_factory=HttpFaults)
    trace: Path | None = None  # HTTP mode: one line per request (time, method, path, fault, status, seconds)
    counts: FaultCounts = field(default_factory=FaultCounts)
    requests_by_second: Counter[int] = field(default_factory=Counter)
    port: int = 0
    _enabled: bool = True
    _paused: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = field(default_factory=set)
    _session: aiohttp.ClientSession | None = None
    _trace: Any = None

    @property
    def http(self) -> bool:
        return self.serving is not None

    @property
    def active(self) -> bool:
        return self._enabled and self._paused == 0

    def faults(self, enabled: bool) -> None:
        """Turn the faults on or off (the proxy keeps forwarding either way)."""
        self._enabled = enabled

    @contextlib.contextmanager
    def paused(self) -> Any:
        """No faults inside the block, whatever `faults` says (nested blocks count)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    # ---- TCP mode -----------------------------------------------------------------------------------------

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rng: random.Random
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                if self.active and self.latency > 0:
                    self.counts.delayed_chunks += 1
                    await asyncio.sleep(rng.uniform(0, self.latency))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.counts.connections += 1
        rng = random.Random(f"{self.seed}/{self.counts.connections}")
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            self.counts.upstream_down += 1
            client_writer.close()
            return
        pair = (client_writer, upstream_writer)
        self._open.add(pair)
        try:
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer, rng),
                self._pipe(upstream_reader, client_writer, rng),
            )
        finally:
            self._open.discard(pair)

    async def _cutter(self) -> None:
        rng = random.Random(f"{self.seed}/cuts")
        while True:
            await asyncio.sleep(rng.expovariate(1 / self.cut_every))
            if not self.active or not self._open:
                continue
            victim = rng.choice(sorted(self._open, key=id))
            self.counts.cuts += 1
            for writer in victim:
                with contextlib.suppress(Exception):
                    transport = writer.transport
                    transport.abort()  # a reset, as a dropped connection looks to both ends

    # ---- HTTP mode ----------------------------------------------------------------------------------------

    def _fault(self, rng: random.Random, method: str, watch: bool) -> str | None:
        """Which fault this request gets, if any (one draw per kind, so each share holds on its own)."""
        faults = self.http_faults
        draws = [
            ("before_5xx", faults.before_5xx, True),
            ("after_5xx", faults.after_5xx, method in WRITES),
            ("conflict", faults.conflict, method in ("PATCH", "PUT")),
            ("throttle", faults.throttle, not watch),
        ]
        for name, share, applies in draws:
            if rng.random() < share and applies:
                return name
        return None

    async def _http(self, request: web.BaseRequest) -> web.StreamResponse:
        began = time.time()
        response = await self._forward(request)
        if self._trace is not None:
            fault = response.headers.get(FAULT_HEADER, "-")
            line = f"{began:.3f} {request.method} {request.rel_url} {fault} {response.status}"
            self._trace.write(f"{line} {time.time() - began:.3f}\n")
        return response

    async def _forward(self, request: web.BaseRequest) -> web.StreamResponse:
        self.counts.requests += 1
        self.requests_by_second[int(time.time())] += 1
        rng = random.Random(f"{self.seed}/request/{self.counts.requests}")
        watch = request.query.get("watch", "").lower() in ("1", "true")
        active = self.active
        fault = self._fault(rng, request.method, watch) if active else None
        if active and self.latency > 0:
            await asyncio.sleep(rng.uniform(0, self.latency))
        if fault is not None:
            self.counts.injected[fault] += 1
        marked = {FAULT_HEADER: fault} if fault else {}
        if fault == "before_5xx":
            code = rng.choice((500, 503))
            return _status(code, "InternalError", f"fault proxy: {code} before forwarding", marked)
        if fault == "conflict":
            message = "fault proxy: the object has been modified; please try again"
            return _status(409, "Conflict", message, marked)
        if fault == "throttle":
            retry = str(self.http_faults.retry_after)
            return _status(429, "TooManyRequests", "fault proxy: slow down", {"Retry-After": retry} | marked)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        assert self._session is not None
        url = f"https://127.0.0.1:{self.upstream_port}{request.rel_url}"
        timeout = aiohttp.ClientTimeout(total=None if watch else 120, connect=10)
        try:
            upstream = await self._session.request(
                request.method, url, data=body or None, headers=headers, timeout=timeout
            )
        except (aiohttp.ClientError, OSError, TimeoutError):
            self.counts.upstream_down += 1
            down = {FAULT_HEADER: "upstream_down"}
            return _status(503, "ServiceUnavailable", "fault proxy: the API server is not reachable", down)
        try:
            answer = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
            if not watch or upstream.status >= 300:
                data = await upstream.read()
                if fault == "after_5xx":
                    code = rng.choice((500, 503))
                    message = f"fault proxy: {code} after the API server answered {upstream.status}"
                    return _status(code, "InternalError", message, marked)
                return web.Response(status=upstream.status, body=data, headers=answer)
            return await self._stream(request, upstream, answer, rng)
        except (aiohttp.ClientError, OSError, TimeoutError):
            self.counts.upstream_down += 1
            return _status(503, "ServiceUnavailable", "fault proxy: the API server went away mid-answer")
        finally:
            upstream.release()

    async def _stream(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        headers: dict[str, str],
        rng: random.Random,
    ) -> web.StreamResponse:
        """A watch, chunk by chunk as the server sends it, until it ends or its seeded lifetime is up."""
        response = web.StreamResponse(status=upstream.status, headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        ends = time.monotonic() + rng.expovariate(1 / self.http_faults.watch_cut_every)
        reset = rng.random() < 0.5
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(
                        upstream.content.readany(), max(0.0, ends - time.monotonic())
                    )
                except TimeoutError:
                    if not self.active:  # the faults are off now: the watch lives on, for another while
                        ends = time.monotonic() + rng.expovariate(1 / self.http_faults.watch_cut_every)
                        continue
                    self.counts.injected["cut_watch"] += 1
                    if reset and request.transport is not None:
                        request.transport.abort()
                        return response
                    break
                if not chunk:
                    break
                await response.write(chunk)
        except (ConnectionError, OSError):
            return response
        with contextlib.suppress(ConnectionError, OSError):
            await response.write_eof()
        return response

    def _ssl_contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        assert self.serving is not None and self.ca is not None
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(str(self.serving.certificate), str(self.serving.key))
        upstream = ssl.create_default_context(cafile=str(self.ca))
        if self.upstream_identity is not None:
            upstream.load_cert_chain(str(self.upstream_identity.certificate), str(self.upstream_identity.key))
        return server, upstream

    # ---- both ---------------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        cutter = None
        if self.http:
            server_context, upstream_context = self._ssl_contexts()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=upstream_context, limit=0),
                auto_decompress=False,  # the client gets the server's bytes, Content-Encoding and all
            )
            handler = web.Server(self._http, handler_cancellation=True)
            server: asyncio.Server = await loop.create_server(handler, "127.0.0.1", 0, ssl=server_context)
        else:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            cutter = asyncio.create_task(self._cutter())
        self.port = int(server.sockets[0].getsockname()[1])
        self._trace = self.trace.open("a", buffering=1) if self.trace is not None else None
        self._ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            if cutter is not None:
                cutter.cancel()
            server.close()
            for pair in list(self._open):
                for writer in pair:
                    writer.transport.abort()
            if self._trace is not None:
                self._trace.close()
            if self.http:
                await handler.shutdown(1.0)
                assert self._session is not None
                await self._session.close()

    def __enter__(self) -> FaultProxy:
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            task = self._loop.create_task(self._serve())
            with contextlib.suppress(asyncio.CancelledError):
                self._loop.run_until_complete(task)
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        loop = self._loop

        def cancel() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()

        loop.call_soon_threadsafe(cancel)
        self._thread.join(10)
