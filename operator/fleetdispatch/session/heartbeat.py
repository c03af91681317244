"""The heartbeat: a `coordination.k8s.io/v1` Lease, named after the pod, that the supervisor renews.

It tells the operator that the supervisor is alive and what it currently enforces: the Lease's annotations
carry the effective deadline, the last activity and its reason, and the last output, which the operator
mirrors into the dispatch's status. It is optional (on only when a service account token is mounted into
the supervisor) and never in the way: requests run in a daemon thread with short timeouts, the supervision
loop only hands over its latest figures, and errors are logged with an exponential backoff, never raised.
If the API is unreachable the supervisor goes on enforcing locally; the session never depends on this.

Requests go through `urllib` with the standard `ssl` module, not the Kubernetes client, which would
multiply the supervisor's memory. The token is re-read for every request (projected tokens rotate).
Plain `http://` servers work too (the local dev cluster serves plain HTTP).

Rate: at most one write per `interval` seconds, sent when the figures changed or when the Lease is due for
renewal (every `interval` seconds); `leaseDurationSeconds` is three intervals, so one lost request does not
make the supervisor look lost.

Deliberately not here: reading Leases back (that is the operator's business) and leader election.
"""

from __future__ import annotations

import json
import math
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetdispatch.session import protocol

ANNOTATION_PREFIX = "fleet.dispatch.dev/"
REQUEST_TIMEOUT_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 300.0

Log = Callable[..., None]


@dataclass(frozen=True)
class LeaseStatus:
    """The figures the Lease carries; instants are epoch seconds."""

    deadline: float
    last_activity: float | None = None
    activity_reason: str | None = None
    last_output: float | None = None

    def annotations(self) -> dict[str, str]:
        values = {
            "deadline": protocol.format_time(self.deadline),
            "last-activity": None if self.last_activity is None else protocol.format_time(self.last_activity),
            "activity-reason": self.activity_reason,
            "last-output": None if self.last_output is None else protocol.format_time(self.last_output),
        }
        return {ANNOTATION_PREFIX + key: value for key, value in values.items() if value is not None}


class Heartbeat:
    """Creates, then renews, one Lease from a daemon thread; `update()` never blocks."""

    def __init__(
        self,
        *,
        server: str,
        namespace: str,
        name: str,
        token_file: Path,
        ca_file: Path | None,
        interval: float,
        log: Log,
        wall: Callable[[], float] = time.time,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
        pod_uid: str | None = None,
    ) -> None:
        self._pod_uid = pod_uid
        self._url = f"{server.rstrip('/')}/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self._namespace = namespace
        self._name = name
        self._token_file = token_file
        self._interval = interval
        self._log = log
        self._wall = wall
        self._timeout = timeout
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        # No proxies: a proxy variable in the pod must not route the pod's credentials elsewhere.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        self._latest: LeaseStatus | None = None
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._exists: bool | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(
        cls,
        *,
        pod_name: str | None,
        namespace: str | None,
        pod_uid: str | None = None,
        server: str | None,
        token_file: str,
        ca_file: str | None,
        interval: float,
        log: Log,
    ) -> Heartbeat | None:
        """A heartbeat when a token is mounted and the pod, namespace and server are known; else None."""
        token = Path(token_file)
        if not token.is_file():
            return None
        if namespace is None:
            try:
                namespace = (token.parent / "namespace").read_text(encoding="utf-8").strip() or None
            except OSError:
                namespace = None
        missing = [
            what
            for what, value in (("pod name", pod_name), ("namespace", namespace), ("API server", server))
            if not value
        ]
        if missing:
            log("heartbeat-off", reason=f"a token is mounted but the {', '.join(missing)} is unknown")
            return None
        assert pod_name and namespace and server
        ca = Path(ca_file) if ca_file else token.parent / "ca.crt"
        return cls(
            server=server,
            namespace=namespace,
            name=pod_name,
            pod_uid=pod_uid,
            token_file=token,
            ca_file=ca if ca.is_file() else None,
            interval=interval,
            log=log,
        )

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
            self._thread.start()

    def update(self, status: LeaseStatus) -> None:
        """Hand over the latest figures; the thread sends them when the rate allows."""
        with self._lock:
            changed = status != self._latest
            self._latest = status
        if changed:
            self._changed.set()

    # -- the thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        sent: LeaseStatus | None = None
        failures = 0
        while True:
            # Wake on a change, or when the Lease is due for renewal anyway.
            self._changed.wait(timeout=self._interval)
            self._changed.clear()
            with self._lock:
                status = self._latest
            if status is None:
                continue
            try:
                self._send(status)
            except Exception as error:  # whatever goes wrong, supervision goes on
                failures += 1
                backoff = min(self._interval * 2**failures, MAX_BACKOFF_SECONDS)
                self._log("heartbeat-error", error=f"{type(error).__name__}: {error}", retrySeconds=backoff)
                time.sleep(backoff)
                continue
            if failures or sent is None:
                self._log("heartbeat", lease=f"{self._namespace}/{self._name}")
            failures, sent = 0, status
            time.sleep(self._interval)

    def _request(self, method: str, url: str, body: dict[str, Any] | None, content_type: str) -> int:
        token = self._token_file.read_text(encoding="utf-8").strip()
        request = urllib.request.Request(
            url,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "Content-Type": content_type,
            },
        )
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as error:
            if error.code in (404, 409):
                return error.code
            raise

    def _send(self, status: LeaseStatus) -> None:
        now = protocol.format_micro_time(self._wall())
        spec = {
            "holderIdentity": self._name,
            "leaseDurationSeconds": max(1, math.ceil(3 * self._interval)),
            "renewTime": now,
        }
        item = f"{self._url}/{self._name}"
        if self._exists is None:
            self._exists = self._request("GET", item, None, "application/json") != 404
        if self._exists:
            patch = {"metadata": {"annotations": status.annotations()}, "spec": spec}
            if self._request("PATCH", item, patch, "application/merge-patch+json") != 404:
                return
        metadata: dict[str, Any] = {
            "name": self._name,
            "namespace": self._namespace,
            "annotations": status.annotations(),
        }
        if self._pod_uid:
            # Owned by the pod, so the garbage collector deletes the Lease with it: one Lease per attempt
            # would otherwise pile up in the namespace.
            owner = {"apiVersion": "v1", "kind": "Pod", "name": self._name, "uid": self._pod_uid}
            metadata["ownerReferences"] = [owner]
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {**spec, "acquireTime": now},
        }
        code = self._request("POST", self._url, lease, "application/json")
        # 409: created meanwhile (a restarted supervisor racing its predecessor); the next round patches it.
        self._exists = True
        if code == 409:
            self._changed.set()
