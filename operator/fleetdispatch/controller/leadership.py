"""Leader election's shell: the Lease read and written through `KubeApi`; the operator runs only as leader.

`run_elected` is what `fleetdispatch operator` runs with `--leader-election=true` (the chart's default):

1. As a standby it serves `/healthz` itself (a standby is healthy: 200, `{"leader": false, ...}`) and tries
   the Lease every retry period (jittered as client-go does), logging each change of holder.
2. Once it holds the Lease it stops that server and starts the controller (`operate`: kopf, its handlers and
   the work queue; kopf then serves `/healthz`), renewing the Lease every retry period.
3. If it cannot renew by its hold deadline (`core.leadership`), it stops acting at once: `on_lost` (by
   default: log, then `os._exit(1)`, no cleanup that could still write) so that the pod restarts.
4. On SIGTERM or SIGINT the controller stops first; then the Lease is released (client-go's
   ReleaseOnCancel: an empty holder), so that a standby takes over at its next try.

The decisions (acquire, renew, wait, release) are `core.leadership`'s; every write is conditional on the
resourceVersion read. An Event on the Lease says who became the leader (as client-go records one), when the
operator may create Events there.

Deliberately not here: kopf peering (it needs cluster-wide CRDs of its own); a metric of leadership (a
standby serves no `/metrics`, so a gauge would only ever say 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from fleetdispatch.api.names import EVENTS, LEASES
from fleetdispatch.api.settings import OperatorSettings
from fleetdispatch.client.kubeapi import ApiError, KubeApi
from fleetdispatch.core.leadership import LeaseRecord, Seen, Timing, Wait, Write, decide, leads, release
from fleetdispatch.session import protocol

logger = logging.getLogger("fleetdispatch.leadership")

JITTER_FACTOR = 1.2  # client-go's: a standby retries after 1 to 2.2 retry periods


def identity(environ: dict[str, str] | None = None) -> str:
    """The holder identity: the pod's name (the downward API's POD_NAME, else the host name, which is the
    pod's in Kubernetes) and a random suffix, so that a restarted pod is a new holder."""
    environ = dict(os.environ) if environ is None else environ
    return f"{environ.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


def _exit_lost() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(1)


class Elector:
    """One replica's side of the election on the Lease `namespace/name`."""

    def __init__(
        self,
        kube: KubeApi,
        namespace: str,
        name: str,
        me: str,
        timing: Timing,
        *,
        on_lost: Callable[[], None] = _exit_lost,
    ) -> None:
        self.kube, self.namespace, self.name, self.me, self.timing = kube, namespace, name, me, timing
        self.on_lost = on_lost
        self.hold_until: float | None = None
        self.holder = ""  # as last read
        self._seen: Seen | None = None
        self._lost_timer: asyncio.TimerHandle | None = None
        self._released = False

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    def leading(self) -> bool:
        return leads(self.hold_until, asyncio.get_running_loop().time())

    async def _read(self) -> LeaseRecord | None:
        try:
            return LeaseRecord.read(await self.kube.request("GET", LEASES.path(self.namespace, self.name)))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def try_once(self) -> bool:
        """One round: read, decide, write; whether this replica leads after it."""
        loop = asyncio.get_running_loop()
        lease = await self._read()
        now = loop.time()  # after the read (when it was seen), before the write (when the hold starts)
        decision, self._seen = decide(
            lease, me=self.me, now=now, wall=datetime.now(UTC), seen=self._seen, timing=self.timing
        )
        if isinstance(decision, Wait):
            if decision.holder != self.holder:
                logger.info(
                    "standing by: the Lease %s is held by %s (taken over if not renewed for %.0f s)",
                    self.where,
                    decision.holder,
                    decision.until - now,
                )
            self.holder = decision.holder
            return False
        written = await self._write(decision)
        version = str((written.get("metadata") or {}).get("resourceVersion") or "")
        self._seen = Seen(version, loop.time())
        self.holder = self.me
        if not leads(decision.hold_until, loop.time()):
            return False  # the answer came too late to act on
        was_leading = self.leading()
        self.hold_until = decision.hold_until
        self._arm(loop)
        if not was_leading:
            logger.info(
                "became the leader as %s: the Lease %s, transition %d%s",
                self.me,
                self.where,
                decision.record.transitions,
                f" (taken over from {lease.holder})" if decision.takeover and lease is not None else "",
            )
            await self._event(f"{self.me} became leader")
        return True

    async def _write(self, decision: Write) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": decision.record.spec(),
        }
        if decision.base is None:
            return await self.kube.request("POST", LEASES.path(self.namespace), body)
        body["metadata"]["resourceVersion"] = decision.base  # refused with 409 if it changed since the read
        return await self.kube.request("PUT", LEASES.path(self.namespace, self.name), body)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop at the hold deadline, whatever the event loop is doing then (a renewal may hang)."""
        if self._lost_timer is not None:
            self._lost_timer.cancel()
        assert self.hold_until is not None
        self._lost_timer = loop.call_at(self.hold_until, self._lose)

    def _lose(self) -> None:
        self.hold_until = None
        logger.error(
            "lost the Lease %s: not renewed within %.0f s; stopping at once (exit 1)",
            self.where,
            self.timing.renew_deadline,
        )
        self.on_lost()

    async def _try(self, timeout: float) -> bool:
        try:
            return await asyncio.wait_for(self.try_once(), timeout)
        except ApiError as error:
            level = logging.DEBUG if error.status == 409 else logging.WARNING
            logger.log(level, "the Lease %s: %s", self.where, error)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            logger.warning(
                "the Lease %s: %s", self.where, " ".join(str(error).split()) or type(error).__name__
            )
        return False

    async def acquire(self) -> None:
        """Until this replica leads: a try every retry period, jittered."""
        while not await self._try(self.timing.renew_deadline):
            await asyncio.sleep(self.timing.retry_period * (1 + random.random() * JITTER_FACTOR))

    async def keep(self) -> None:
        """Renew every retry period until cancelled; losing the Lease ends the process (`on_lost`)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.timing.retry_period)
            while self.hold_until is not None and not await self._try(
                max(self.hold_until - loop.time(), 0.01)
            ):
                await asyncio.sleep(min(self.timing.retry_period, max(self.hold_until - loop.time(), 0.01)))

    async def release(self) -> None:
        """Give the Lease up (once the controller has stopped): an empty holder, which a standby takes at
        once."""
        if self._lost_timer is not None:
            self._lost_timer.cancel()
        if self.hold_until is None or self._released:
            return
        self.hold_until = None
        self._released = True
        try:
            lease = await self._read()
            released = release(lease, self.me, datetime.now(UTC)) if lease is not None else None
            if released is None or lease is None:
                return
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.name,
                    "namespace": self.namespace,
                    "resourceVersion": lease.version,
                },
                "spec": released.spec(),
            }
            await asyncio.wait_for(self.kube.request("PUT", LEASES.path(self.namespace, self.name), body), 5)
            logger.info("released the Lease %s", self.where)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as error:
            logger.warning("the Lease %s was not released (it expires instead): %s", self.where, error)

    async def _event(self, message: str) -> None:
        now = protocol.format_time(datetime.now(UTC))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.name}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "name": self.name,
                "namespace": self.namespace,
            },
            "reason": "LeaderElection",
            "message": message,
            "type": "Normal",
            "source": {"component": "fleet-dispatch"},
            "reportingComponent": "fleet-dispatch",
            "reportingInstance": self.me,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with contextlib.suppress(ApiError, aiohttp.ClientError, OSError, TimeoutError):
            await asyncio.wait_for(self.kube.request("POST", EVENTS.path(self.namespace), event), 5)


async def _standby_health(port: int, elector: Elector) -> web.AppRunner:
    async def health(_: web.Request) -> web.Response:
        body = {"leader": False, "lease": elector.where, "holder": elector.holder, "identity": elector.me}
        return web.Response(text=json.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port, reuse_address=True).start()
    return runner


async def run_elected(
    options: OperatorSettings,
    kube: KubeApi,
    default_namespace: str | None,
    operate: Callable[[], Awaitable[None]],
    *,
    me: str | None = None,
    on_lost: Callable[[], None] = _exit_lost,
) -> None:
    """Stand by until this replica holds the Lease (or SIGTERM, SIGINT), then `operate()` (which stops on
    SIGTERM, SIGINT); then release the Lease."""
    loop = asyncio.get_running_loop()
    timing = Timing(
        options.leader_election_lease_duration_seconds,
        options.leader_election_renew_deadline_seconds,
        options.leader_election_retry_period_seconds,
    )
    namespace = options.leader_election_namespace or default_namespace or "default"
    elector = Elector(
        kube, namespace, options.leader_election_lease, me or identity(), timing, on_lost=on_lost
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    health = await _standby_health(options.health_port, elector) if options.health_port else None
    logger.info("leader election on the Lease %s as %s", elector.where, elector.me)
    try:
        acquiring = asyncio.create_task(elector.acquire())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not acquiring.done():
            acquiring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquiring
            logger.info("stopped as a standby")
            return
        acquiring.result()
    finally:
        if health is not None:
            await health.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    # kopf handles SIGTERM and SIGINT from here (it installs its own handlers as it starts; given a stop
    # flag too, it would wait 5 s for that flag's waiter at every stop). A signal in the moment before
    # it does ends the process as by default: the Lease then expires instead of being released.
    keeping = asyncio.create_task(elector.keep())
    try:
        await operate()
    finally:
        keeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping
        await elector.release()
