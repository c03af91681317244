"""A small asynchronous Kubernetes API client for the operator's writes: pods, status, Events.

kopf watches and logs in; this client carries out the lifecycle's decisions on the same event loop, so no
call blocks it (the `kubernetes` package's client is synchronous). It speaks JSON over aiohttp (a kopf
dependency already), with `Credentials` (see `credentials`): every request asks them for a fresh
Authorization header, so a rotated token file or a renewed exec plugin token is used as soon as there is
one; a renewal that runs a plugin runs in a thread, one at a time, never on the event loop.

Every request is counted by verb and status code (`counts`), which the benchmark reads; the operator's
metrics count them through the aiohttp `trace_configs` given (`controller.metrics.api_trace`). A response
that is not 2xx raises `ApiError` with the server's `Status` message.

`watch` streams a watch's events, for the dev cluster's node agent (the operator watches through kopf).
`whoami` asks who the credentials authenticate as (`kubectl auth whoami`), so a command can refuse to start
with credentials the API server rejects.

Deliberately not here: retries and what a failure means (the controller decides).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import aiohttp

from fleetdispatch.api import names

# Where they were before `credentials` held them; the controller imports them from here.
from fleetdispatch.client.credentials import SERVICE_ACCOUNT_TOKEN, Credentials

__all__ = ["MERGE_PATCH", "SERVICE_ACCOUNT_TOKEN", "ApiError", "Credentials", "KubeApi"]

MERGE_PATCH = "application/merge-patch+json"
SELF_SUBJECT_REVIEWS = names.Resource("authentication.k8s.io", "v1", "selfsubjectreviews", namespaced=False)


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


class KubeApi:
    def __init__(
        self,
        credentials: Credentials,
        *,
        user_agent: str = "fleet-dispatch",
        on_response: Callable[[str, int], None] | None = None,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        self.credentials = credentials
        self._on_response = on_response
        self._trace_configs = list(trace_configs)  # aiohttp's request tracing (the operator's metrics)
        self.counts: Counter[tuple[str, int]] = Counter()
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._renewing = asyncio.Lock()

    async def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        if self.credentials.renewal_due():
            # A renewal may run an exec plugin for seconds: in a thread, and once, the others waiting for it.
            async with self._renewing:
                authorization = await asyncio.to_thread(self.credentials.authorization)
        else:
            authorization = self.credentials.authorization()
        if authorization:
            headers["Authorization"] = authorization
        return headers

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context(), limit=64)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=60, connect=15),
                trace_configs=self._trace_configs or None,
            )
        return self._session

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch request (``watch=1`` in ``params``), decoded, until the server ends it."""
        timeout = aiohttp.ClientTimeout(
            total=None, connect=15, sock_read=float(params.get("timeoutSeconds", 300)) + 30
        )
        async with self._client().get(
            self.credentials.server + path, headers=await self._headers(), params=params, timeout=timeout
        ) as response:
            self.counts[("WATCH", response.status)] += 1
            if response.status >= 400:
                payload = await response.json(content_type=None)
                payload = payload if isinstance(payload, dict) else {}
                raise ApiError(
                    response.status,
                    str(payload.get("reason") or response.reason),
                    str(payload.get("message") or response.reason),
                )
            partial = b""
            async for chunk in response.content.iter_any():
                # One split per chunk: a listing's burst of events arrives as large chunks, and splitting
                # off one line at a time would copy the rest of the chunk once per event.
                *lines, partial = (partial + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        event = json.loads(line)
                        if isinstance(event, dict):
                            yield event

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        decode: bool = True,
    ) -> dict[str, Any]:
        """The API server's answer, decoded; with `decode=False` an answer that succeeded is read and
        dropped (`{}`: the caller needs only that it succeeded, and a 4 KB object costs a decode)."""
        headers = await self._headers()
        if body is not None:
            headers["Content-Type"] = content_type
        async with self._client().request(
            method, self.credentials.server + path, json=body, headers=headers, params=params
        ) as response:
            self.counts[(method, response.status)] += 1
            if self._on_response is not None:
                self._on_response(method, response.status)
            if not decode and response.status < 400:
                await response.read()
                return {}
            try:
                payload = await response.json(content_type=None)
            except ValueError:
                payload = None
            if response.status >= 400:
                payload = payload if isinstance(payload, dict) else {}
                raise ApiError(
                    response.status,
                    str(payload.get("reason") or response.reason),
                    str(payload.get("message") or response.reason),
                )
            return payload if isinstance(payload, dict) else {}

    async def whoami(self) -> str | None:
        """The user name the credentials authenticate as (a SelfSubjectReview, which every authenticated
        user may create); None where the API server does not say (before Kubernetes 1.28, or forbidden).
        Credentials it rejects raise `ApiError` 401."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        try:
            answer = await self.request("POST", SELF_SUBJECT_REVIEWS.path(), review)
        except ApiError as error:
            if error.status == 401:
                raise
            return None
        name = ((answer.get("status") or {}).get("userInfo") or {}).get("username")
        return str(name) if name else None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
