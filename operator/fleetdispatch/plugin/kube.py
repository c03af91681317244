"""The plugin's Kubernetes client: a few synchronous requests over the standard library's HTTP.

The credentials are the ones kubectl would use (`client.credentials`, so exec plugins, token files and
merged `$KUBECONFIG`s work as they do for the operator), found in kubectl's order: `--kubeconfig`, else
`$KUBECONFIG`, else `~/.kube/config`, else the in-cluster service account. Every failure is a `KubeError`
whose message is one line (`NotFound` for a 404), for the command to print without a traceback.

Not aiohttp (`client.kubeapi`): a command that makes two or three requests and exits gains nothing from an
event loop, and the import alone would cost it half a second. Deliberately not here: retries, watches.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fleetdispatch.client import credentials as found_credentials
from fleetdispatch.client.credentials import Credentials, CredentialsError

USER_AGENT = "kubectl-fleet"
MERGE_PATCH = "application/merge-patch+json"
TIMEOUT_SECONDS = 30.0


class KubeError(Exception):
    """A request that failed, or credentials that cannot be used; the message is one line."""


class NotFound(KubeError):
    pass


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def load_credentials(
    kubeconfig: str | None, context: str | None, environ: Mapping[str, str] | None = None
) -> Credentials:
    """kubectl's order (a kubeconfig before the in-cluster account, unlike the operator's `load`)."""
    environ = os.environ if environ is None else environ
    try:
        if kubeconfig is None and not environ.get("KUBECONFIG"):
            home = Path(found_credentials.DEFAULT_KUBECONFIG).expanduser()
            if home.exists() or not found_credentials.in_cluster_available(environ):
                return found_credentials.from_kubeconfig(None, context, environ)
        return found_credentials.load(kubeconfig, context, environ)
    except CredentialsError as error:
        raise KubeError(str(error)) from None


def _ssl_context(credentials: Credentials) -> ssl.SSLContext | None:
    """The cluster's CA and the client certificate; None for plain http."""
    context = credentials.ssl_context()
    if context is False:
        # insecure-skip-tls-verify: the server's certificate is not checked, but the client certificate is
        # still shown, as kubectl does (`ssl_context` gives aiohttp's False, which would leave it out).
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        if credentials.certificate_file:
            context.load_cert_chain(credentials.certificate_file, credentials.key_file)
    return context if isinstance(context, ssl.SSLContext) else None


class Client:
    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        try:
            context = _ssl_context(credentials)
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            raise KubeError(f"{credentials.source}: unusable certificates: {_one_line(error)}") from None
        handlers: list[urllib.request.BaseHandler] = []
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    def _open(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        *,
        timeout: float | None = TIMEOUT_SECONDS,
        accept: str = "application/json",
    ) -> http.client.HTTPResponse:
        url = self.credentials.server + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": accept, "User-Agent": USER_AGENT}
        authorization = self.credentials.authorization()
        if authorization:
            headers["Authorization"] = authorization
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = MERGE_PATCH if method == "PATCH" else "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            response: http.client.HTTPResponse = self._opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as error:
            raise _api_error(error) from None
        except (OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", None) or error
            raise KubeError(
                f"cannot reach the API server at {self.credentials.server}: {_one_line(reason)}"
            ) from None
        return response

    def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self._json(self._open("GET", path, params))

    def patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386)."""
        return self._json(self._open("PATCH", path, body=body))

    def stream(self, path: str, params: Mapping[str, str], *, follow: bool) -> Iterator[bytes]:
        """A plain-text response (a pod's log) as it arrives; with `follow`, until the server ends it."""
        response = self._open("GET", path, params, timeout=None if follow else TIMEOUT_SECONDS, accept="*/*")
        with response:
            try:
                while chunk := response.read1(65536):
                    yield chunk
            except (OSError, http.client.HTTPException) as error:
                raise KubeError(
                    f"the log stream from {self.credentials.server} broke: {_one_line(error)}"
                ) from None

    def _json(self, response: http.client.HTTPResponse) -> dict[str, Any]:
        with response:
            try:
                payload = json.loads(response.read() or b"{}")
            except (OSError, http.client.HTTPException, ValueError) as error:
                raise KubeError(
                    f"unreadable answer from {self.credentials.server}: {_one_line(error)}"
                ) from None
        return payload if isinstance(payload, dict) else {}


def _api_error(error: urllib.error.HTTPError) -> KubeError:
    """The API server's `Status` message, as kubectl prints it: `Error from server (Reason): message`."""
    try:
        payload = json.loads(error.read() or b"{}")
    except (OSError, ValueError, http.client.HTTPException):
        payload = {}
    payload = payload if isinstance(payload, dict) else {}
    reason = str(payload.get("reason") or error.reason or error.code)
    message = _one_line(payload.get("message") or error.reason or "")
    kind = NotFound if error.code == 404 else KubeError
    return kind(f"Error from server ({reason}): {message}")
