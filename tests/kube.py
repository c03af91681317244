"""Test support: a small synchronous client of the dev cluster's kube-apiserver, as cluster admin.

The tests read and write the cluster the way `kubectl` does (JSON over HTTPS, the admin's client
certificate); a response that is not 2xx raises `ApiError` with the server's `Status` message.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

# The operator's own error, so that a test catches one ApiError class whichever client raised it.
from fleetdispatch.client.kubeapi import ApiError
from fleetdispatch.devcluster.stack import DevCluster

__all__ = ["MERGE", "ApiError", "Kube"]

MERGE = "application/merge-patch+json"


class Kube:
    """The cluster as its admin sees it."""

    def __init__(self, cluster: DevCluster) -> None:
        plane = cluster.plane
        self.url = plane.url
        self._context = ssl.create_default_context(cafile=str(plane.ca))
        self._context.load_cert_chain(str(plane.admin.certificate), str(plane.admin.key))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        url = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, context=self._context, timeout=30) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {}
            payload = payload if isinstance(payload, dict) else {}
            raise ApiError(
                error.code,
                str(payload.get("reason") or error.reason),
                str(payload.get("message") or raw[:300]),
            ) from None
        decoded = json.loads(raw) if raw else {}
        return decoded if isinstance(decoded, dict) else {}

    def get(self, path: str, **params: str) -> dict[str, Any]:
        return self.request("GET", path, params=params or None)

    def items(self, path: str, **params: str) -> list[dict[str, Any]]:
        return list(self.get(path, **params).get("items") or [])

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, dict(body))

    def patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, dict(patch), content_type=MERGE)

    def delete(self, path: str, **options: Any) -> dict[str, Any]:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", **options} if options else None
        return self.request("DELETE", path, body)
