"""The heartbeat: a `coordination.k8s.io/v1` Lease, named after the pod, that the supervisor renews.

It tells the operator that the supervisor is alive and what it currently enforces: the Lease's annotations
carry the supervisor's report (`protocol.report`: the effective deadline, the last activity and its reason,
and the last output) and the session's usage so far (`session.usage`), which the operator watches (by the
dispatch label) and mirrors into the dispatch's status while the attempt runs (`core.live`; the usage is held
against the dispatch's budget, not mirrored); a Lease no longer renewed for three periods ends the attempt as
`SupervisorLost`. The operator trusts only the Lease this module writes: named after the pod and held by it
(`holderIdentity`), owned by the pod (an owner reference to its uid, which also has the garbage collector
delete it with the pod) and labelled with the dispatch and the attempt, all of which every write repeats.
It is optional (on only when a service account token is mounted into the supervisor) and never in the way:
requests run in a daemon thread with short timeouts, the supervision loop only hands over its latest
figures, and errors are logged with an exponential backoff, never raised. If the API is unreachable the
supervisor goes on enforcing locally; the session never depends on this.

Requests go through `http.client` with the standard `ssl` module, one connection per request and never
through a proxy (a proxy variable in the pod must not route the pod's credentials elsewhere). Not the
Kubernetes client, which would multiply the supervisor's memory, and not `urllib.request`, whose
redirects, proxies and handlers the Lease never needs and which cost the supervisor 0.7 to 1.1 MiB of
its 25 MiB budget (peak RSS 22.4 against 21.3 MiB imported, 24.7 against 24.0 at a stop with the Lease
heartbeat on). The token is re-read for every request (projected tokens rotate). Plain `http://` servers
work too.

A daemon thread, not an anyio task: anyio's event loop (asyncio) would take the supervisor over its
budget (see `supervisor`), and the requests would still run in a worker thread (`http.client` blocks).

Rate: one write every `interval` seconds, the renewal, with the latest figures (so a change reaches the
Lease within `interval`); the first as soon as the supervisor has figures. A failed request is tried again
at the next renewal, not later: a backoff past three intervals would make a supervisor that lived through a
short API outage look lost; only the error log backs off (the 1st, 2nd, 4th, 8th ... failure in a row).
`leaseDurationSeconds` is three intervals, so one lost request does not make the supervisor look lost.

Deliberately not here: reading Leases back (that is the operator's business) and leader election.
"""

from __future__ import annotations

import http.client
import json
import math
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from fleetdispatch.api import names
from fleetdispatch.session import protocol

ANNOTATION_PREFIX = f"{names.GROUP}/"
# The Lease's annotation (after the prefix) for each report field it carries.
ANNOTATIONS = {
    protocol.REPORT_DEADLINE: "deadline",
    protocol.REPORT_LAST_ACTIVITY: "last-activity",
    protocol.REPORT_ACTIVITY_REASON: "activity-reason",
    protocol.REPORT_LAST_OUTPUT: "last-output",
}
# The session's usage so far (`session.usage`, compact JSON), for the operator's budget.
USAGE_ANNOTATION = "usage"
REQUEST_TIMEOUT_SECONDS = 5.0

Log = Callable[..., None]


def _server_url(server: str) -> SplitResult | None:
    """The API server's URL, when it is one the heartbeat can use."""
    url = urlsplit(server)
    try:
        url.port  # noqa: B018 (a bad port raises here)
    except ValueError:
        return None
    return url if url.scheme in ("http", "https") and url.hostname else None


class LeaseRequestError(Exception):
    """The API server answered a Lease request with an error status (other than 404 and 409)."""


@dataclass(frozen=True)
class LeaseStatus:
    """The figures the Lease carries; instants are epoch seconds."""

    deadline: float
    last_activity: float | None = None
    activity_reason: str | None = None
    last_output: float | None = None
    usage: str | None = None  # `session.usage.encode` of the session's usage.json

    def annotations(self) -> dict[str, str]:
        report = protocol.report(
            self.deadline, None, self.last_activity, self.activity_reason, self.last_output
        )
        annotations = {ANNOTATION_PREFIX + ANNOTATIONS[field]: value for field, value in report.items()}
        if self.usage is not None:
            annotations[ANNOTATION_PREFIX + USAGE_ANNOTATION] = self.usage
        return annotations


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
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self._pod_uid = pod_uid
        self._labels = dict(labels or {})
        url = _server_url(server)
        if url is None:
            raise ValueError(f"the API server {server!r}: expected http(s)://host[:port]")
        self._host, self._port, self._prefix = url.hostname or "", url.port, url.path.rstrip("/")
        # Verified against the service account's CA (else the system's), the server's name included.
        self._tls = (
            ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if url.scheme == "https"
            else None
        )
        self._namespace = namespace
        self._name = name
        self._token_file = token_file
        self._interval = interval
        self._log = log
        self._wall = wall
        self._timeout = timeout
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
        dispatch: str | None = None,
        attempt: str | None = None,
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
        if _server_url(server) is None:
            log("heartbeat-off", reason=f"the API server {server!r} is not http(s)://host[:port]")
            return None
        ca = Path(ca_file) if ca_file else token.parent / "ca.crt"
        labels = {}
        if dispatch:
            # The operator finds the Lease by its dispatch label: the name (the marker is `namespace/name`).
            labels[names.DISPATCH_LABEL] = dispatch.rpartition("/")[2]
        if attempt:
            labels[names.ATTEMPT_LABEL] = attempt
        return cls(
            server=server,
            namespace=namespace,
            name=pod_name,
            pod_uid=pod_uid,
            labels=labels,
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
        sent = False
        failures = 0
        while True:
            with self._lock:
                status = self._latest
            if status is None:
                # No figures yet: the first write goes out as soon as there are.
                self._changed.wait(timeout=self._interval)
                self._changed.clear()
                continue
            self._changed.clear()
            began = time.monotonic()
            try:
                self._send(status)
            except Exception as error:  # whatever goes wrong, supervision goes on
                failures += 1
                if failures & (failures - 1) == 0:  # the 1st, 2nd, 4th, 8th ... failure in a row
                    self._log(
                        "heartbeat-error",
                        error=f"{type(error).__name__}: {error}",
                        failures=failures,
                        retrySeconds=self._interval,
                    )
            else:
                if failures or not sent:
                    self._log("heartbeat", lease=f"{self._namespace}/{self._name}")
                failures, sent = 0, True
            # The next renewal one interval after this one began, whatever the request took.
            time.sleep(max(0.0, self._interval - (time.monotonic() - began)))

    def _request(self, method: str, path: str, body: dict[str, Any] | None, content_type: str) -> int:
        """One request on a fresh connection; the status, when it is a success, 404 or 409."""
        token = self._token_file.read_text(encoding="utf-8").strip()
        connection = (
            http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=self._tls)
            if self._tls is not None
            else http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        )
        try:
            connection.request(
                method,
                self._prefix + path,
                body=None if body is None else json.dumps(body).encode(),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Accept": "application/json",
                    "Content-Type": content_type,
                },
            )
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        if 200 <= response.status < 300 or response.status in (404, 409):
            return response.status
        raise LeaseRequestError(f"{method} {path}: HTTP {response.status} {response.reason}")

    def _send(self, status: LeaseStatus) -> None:
        now = protocol.format_micro_time(self._wall())
        spec = {
            "holderIdentity": self._name,
            "leaseDurationSeconds": max(1, math.ceil(3 * self._interval)),
            "renewTime": now,
        }
        collection = names.LEASES.path(self._namespace)
        item = names.LEASES.path(self._namespace, self._name)
        if self._exists is None:
            self._exists = self._request("GET", item, None, "application/json") != 404
        # Every write says whose Lease it is (labels, owner): the operator trusts it only then, so a Lease
        # someone created first under the pod's name is made the supervisor's own, or else ignored.
        identity: dict[str, Any] = {"labels": self._labels} if self._labels else {}
        if self._pod_uid:
            # Owned by the pod, so the garbage collector deletes the Lease with it: one Lease per attempt
            # would otherwise pile up in the namespace.
            owner = {"apiVersion": "v1", "kind": "Pod", "name": self._name, "uid": self._pod_uid}
            identity["ownerReferences"] = [owner]
        if self._exists:
            patch = {"metadata": {"annotations": status.annotations(), **identity}, "spec": spec}
            if self._request("PATCH", item, patch, "application/merge-patch+json") != 404:
                return
        metadata: dict[str, Any] = {
            "name": self._name,
            "namespace": self._namespace,
            "annotations": status.annotations(),
            **identity,
        }
        lease = {
            "apiVersion": f"{names.LEASES.group}/{names.LEASES.version}",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {**spec, "acquireTime": now},
        }
        code = self._request("POST", collection, lease, "application/json")
        # 409: created meanwhile (a restarted supervisor racing its predecessor); the next round patches it.
        self._exists = True
        if code == 409:
            self._changed.set()
