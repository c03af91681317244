"""A TCP fault proxy on loopback, in front of the dev cluster's kube-apiserver: TLS passes through untouched
(the client still verifies the API server's certificate, issued for 127.0.0.1), so it can only delay bytes
and cut connections.

Faults: every chunk forwarded in either direction waits a random latency up to `latency` seconds; every
`cut_every` seconds (on average) one open connection, picked at random by the seeded generator, is closed
both ways. A cut watch is a watch the server ended early; a cut request is a response lost, before or after
the server committed the write (the client cannot tell which, which is the point).

Deliberately not here: HTTP-level faults (injected 5xx before or after the write commits, 409, 429). They
need a TLS-terminating proxy that re-signs with the dev cluster's CA and forwards the client's identity
(the operator authenticates with a client certificate, which a terminating proxy cannot pass on without an
impersonating identity of its own); that is left for later.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass
class FaultCounts:
    connections: int = 0
    cuts: int = 0
    delayed_chunks: int = 0


@dataclass
class FaultProxy:
    """`with FaultProxy(upstream_port, seed=...) as proxy:` listens on 127.0.0.1:proxy.port, on a thread."""

    upstream_port: int
    seed: int = 0
    latency: float = 0.02
    cut_every: float = 2.0
    counts: FaultCounts = field(default_factory=FaultCounts)
    port: int = 0
    _enabled: bool = True
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = field(default_factory=set)

    def faults(self, enabled: bool) -> None:
        """Turn latency and cuts on or off (the proxy keeps forwarding either way)."""
        self._enabled = enabled

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rng: random.Random
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                if self._enabled and self.latency > 0:
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
            if not self._enabled or not self._open:
                continue
            victim = rng.choice(sorted(self._open, key=id))
            self.counts.cuts += 1
            for writer in victim:
                with contextlib.suppress(Exception):
                    transport = writer.transport
                    transport.abort()  # a reset, as a dropped connection looks to both ends

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(server.sockets[0].getsockname()[1])
        cutter = asyncio.create_task(self._cutter())
        self._ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            cutter.cancel()
            server.close()
            for pair in list(self._open):
                for writer in pair:
                    writer.transport.abort()

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
