"""The session the login handler hands kopf (`kopf.AiohttpSession`, with the metrics' request tracing) in
kopf's own credentials vault: requests through it are counted, and credentials the API server refused end
the operator with `LoginError` as kopf's own sessions do, rather than a login loop.

The vault is kopf's internal one (`kopf._cogs.structs.credentials.Vault`): the behaviour under test is
kopf's, given our objects; the API server is a real local HTTP server that refuses every request (401).
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from aiohttp import web
from kopf._cogs.clients.auth import APIContext
from kopf._cogs.structs.credentials import Vault

from fleetdispatch.api.settings import OperatorSettings
from fleetdispatch.controller import handlers
from fleetdispatch.controller.metrics import Metrics


async def _refusing_server() -> tuple[web.AppRunner, str]:
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized"}, status=401)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def test_kopfs_requests_are_counted_and_refused_credentials_end_in_login_error() -> None:
    async def scenario() -> None:
        runner, server = await _refusing_server()
        metrics = Metrics()
        memo: Any = kopf.Memo(server=server, runtime=handlers.Runtime(OperatorSettings(), metrics))
        try:
            first = await handlers._login(memo=memo)
            assert isinstance(first, kopf.AiohttpSession) and first.server == server
            vault = Vault()
            await vault.populate({"login": first})
            async for found in vault.extended(APIContext, "contexts"):
                key, info, context = found
                async with context.session.get(f"{server}/api/v1/namespaces/ns/pods?watch=true") as response:
                    assert response.status == 401
                break
            sample = {"verb": "watch", "resource": "pods", "code": "401"}
            assert metrics.registry.get_sample_value("fleetdispatch_api_requests_total", sample) == 1
            # kopf invalidates the refused credentials and logs in again: the same ones come back.
            invalidating = asyncio.create_task(vault.invalidate(key, info, exc=RuntimeError("401")))
            await vault.wait_for_emptiness()
            again = await handlers._login(memo=memo)
            assert again is first
            await vault.populate({"login": again})
            with pytest.raises(kopf.LoginError):
                await invalidating
            assert first.aiohttp_session.closed  # kopf closed the refused session
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_new_credentials_get_a_new_session() -> None:
    async def scenario() -> None:
        metrics = Metrics()
        memo: Any = kopf.Memo(
            server="http://127.0.0.1:1", runtime=handlers.Runtime(OperatorSettings(), metrics)
        )
        first = await handlers._login(memo=memo)
        memo.server = "http://127.0.0.1:2"
        second = await handlers._login(memo=memo)
        assert second is not first and second.aiohttp_session is not first.aiohttp_session
        for context in (first, second):
            await context.aiohttp_session.close()

    asyncio.run(scenario())
