"""A small asynchronous Kubernetes API client for the operator's writes: pods, status, Events.

kopf watches and logs in; this client carries out the lifecycle's decisions on the same event loop, so no
call blocks it (the `kubernetes` package's client is synchronous). It speaks JSON over aiohttp (a kopf
dependency already), with the credentials kopf's login found (`Credentials.from_connection`): a bearer
token (re-read from its file, so a rotated service account token keeps working), a client certificate,
or none, and the cluster's CA.

Every request is counted by verb and status code (`counts`), which the metrics export and the benchmark
reads; a response that is not 2xx raises `ApiError` with the server's `Status` message.

`watch` streams a watch's events, for the dev cluster's node agent (the operator watches through kopf).

Deliberately not here: retries and what a failure means (the controller decides).
"""

from __future__ import annotations

import contextlib
import json
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
TOKEN_REREAD_SECONDS = 60.0
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


@dataclass(frozen=True)
class Credentials:
    server: str
    token: str | None = None
    token_file: str | None = None
    ca_file: str | None = None
    ca_data: str | None = None
    insecure: bool = False
    certificate_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_connection(cls, info: Any, token_file: str | None = None) -> Credentials:
        """From a `kopf.ConnectionInfo`: its files as paths, its inline data written to private files.

        `token_file` is where the token came from, to be re-read: a projected service account token is
        rotated by the kubelet while the operator runs.
        """

        def as_file(path: Any, data: Any, suffix: str) -> str | None:
            if path:
                return str(path)
            if not data:
                return None
            file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept for the process lifetime
                prefix="fleetdispatch-", suffix=suffix, delete=False
            )
            file.write(data if isinstance(data, bytes) else str(data).encode())
            file.close()
            return file.name

        ca_data = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
        return cls(
            server=str(info.server).rstrip("/"),
            token=info.token,
            token_file=token_file,
            ca_file=str(info.ca_path) if info.ca_path else None,
            ca_data=ca_data,
            insecure=bool(info.insecure),
            certificate_file=as_file(info.certificate_path, info.certificate_data, ".crt"),
            key_file=as_file(info.private_key_path, info.private_key_data, ".key"),
        )


class KubeApi:
    def __init__(
        self,
        credentials: Credentials,
        *,
        user_agent: str = "fleet-dispatch",
        on_response: Callable[[str, int], None] | None = None,
    ) -> None:
        self.credentials = credentials
        self._on_response = on_response
        self.counts: Counter[tuple[str, int]] = Counter()
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._token = credentials.token
        self._token_read = time.monotonic()

    def _ssl(self) -> ssl.SSLContext | bool:
        c = self.credentials
        if not c.server.startswith("https"):
            return True
        if c.insecure:
            return False
        context = ssl.create_default_context(cafile=c.ca_file, cadata=c.ca_data)
        if c.certificate_file:
            context.load_cert_chain(c.certificate_file, c.key_file)
        return context

    def _headers(self) -> dict[str, str]:
        c = self.credentials
        if c.token_file and time.monotonic() - self._token_read > TOKEN_REREAD_SECONDS:
            # On a read error, keep the token we have; kopf's own re-login reports a lasting problem.
            with contextlib.suppress(OSError):
                self._token = Path(c.token_file).read_text(encoding="utf-8").strip()
            self._token_read = time.monotonic()
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=64)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=60, connect=15)
            )
        return self._session

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch request (``watch=1`` in ``params``), decoded, until the server ends it."""
        timeout = aiohttp.ClientTimeout(
            total=None, connect=15, sock_read=float(params.get("timeoutSeconds", 300)) + 30
        )
        async with self._client().get(
            self.credentials.server + path, headers=self._headers(), params=params, timeout=timeout
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
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
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
    ) -> dict[str, Any]:
        headers = self._headers()
        if body is not None:
            headers["Content-Type"] = content_type
        async with self._client().request(
            method, self.credentials.server + path, json=body, headers=headers, params=params
        ) as response:
            self.counts[(method, response.status)] += 1
            if self._on_response is not None:
                self._on_response(method, response.status)
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

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
