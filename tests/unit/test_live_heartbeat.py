"""The heartbeat's Lease is the one the operator trusts, and a failing API server is tried every period.

Against a real (tiny) HTTP server that keeps the Lease as an API server would (a merge patch on PATCH),
so that what `core.live` reads back is exactly what the supervisor's heartbeat wrote.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fleetdispatch.core import live
from fleetdispatch.core.podstatus import PodView
from fleetdispatch.session.heartbeat import Heartbeat, LeaseStatus
from waiting import eventually


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


class LeaseServer(ThreadingHTTPServer):
    def __init__(self, failing: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), LeaseHandler)
        self.failing = failing
        self.lease: dict[str, Any] | None = None
        self.requests: list[tuple[float, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class LeaseHandler(BaseHTTPRequestHandler):
    server: LeaseServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.requests.append((time.monotonic(), self.command))
        if self.server.failing:
            self._reply(503, {"kind": "Status", "code": 503})
        elif self.command == "POST":
            self.server.lease = body
            self._reply(201, body)
        elif self.server.lease is None:
            self._reply(404, {"kind": "Status", "code": 404})
        elif self.command == "PATCH":
            self.server.lease = merge(self.server.lease, body)
            self._reply(200, self.server.lease)
        else:
            self._reply(200, self.server.lease)

    def _reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = _handle  # noqa: N815 (http.server's names)


def serve(server: LeaseServer) -> Iterator[LeaseServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def lease_server() -> Iterator[LeaseServer]:
    yield from serve(LeaseServer())


@pytest.fixture
def failing_server() -> Iterator[LeaseServer]:
    yield from serve(LeaseServer(failing=True))


def beat(tmp_path: Path, server: str, events: list[str], interval: float = 0.1) -> Heartbeat:
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    made = Heartbeat.from_config(
        pod_name="job-3",
        pod_uid="uid-job-3",
        dispatch="team/job",
        attempt="3",
        namespace="team",
        server=server,
        token_file=str(token),
        ca_file=None,
        interval=interval,
        log=lambda event, **fields: events.append(event),
    )
    assert made is not None
    return made


POD = PodView(name="job-3", attempt=3, phase="Running", uid="uid-job-3")


def test_the_lease_the_heartbeat_writes_is_trusted_for_its_pod(
    tmp_path: Path, lease_server: LeaseServer
) -> None:
    heartbeat = beat(tmp_path, lease_server.url, [])
    heartbeat.start()
    heartbeat.update(LeaseStatus(deadline=1_800_000_000, last_activity=1_799_999_990, activity_reason="cpu"))
    eventually(lambda: lease_server.lease is not None, 10, "the Lease created")
    heartbeat.update(
        LeaseStatus(deadline=1_800_000_060, last_activity=1_800_000_050, activity_reason="output")
    )

    def renewed() -> live.LeaseView | None:
        view = live.observe(lease_server.lease or {})
        return view if view.activity_reason == "output" else None

    view = eventually(renewed, 10, "the Lease patched with the new figures")
    assert live.distrust(view, POD, "job", 3) is None
    assert view.figures()["deadline"].timestamp() == 1_800_000_060
    assert view.renew_time is not None
    # Someone else's pod of the same name, or the status on another attempt: not trusted.
    assert live.distrust(view, PodView(name="job-3", attempt=3, uid="uid-other"), "job", 3) is not None
    assert live.distrust(view, POD, "job", 4) is not None


def test_a_lease_created_by_someone_else_is_made_the_supervisors_own(
    tmp_path: Path, lease_server: LeaseServer
) -> None:
    # A Lease under the pod's name that the supervisor did not create: its first write (a patch) repeats
    # the labels and the owner, so the operator trusts it from then on.
    lease_server.lease = {
        "metadata": {"name": "job-3", "labels": {"x": "y"}},
        "spec": {"holderIdentity": "evil"},
    }
    heartbeat = beat(tmp_path, lease_server.url, [])
    heartbeat.start()
    heartbeat.update(LeaseStatus(deadline=1_800_000_000))

    def patched() -> live.LeaseView | None:
        view = live.observe(lease_server.lease or {})
        return view if view.holder == "job-3" else None

    view = eventually(patched, 10, "the Lease patched")
    assert live.distrust(view, POD, "job", 3) is None


def test_a_failing_api_server_is_tried_every_period_and_the_log_backs_off(
    tmp_path: Path, failing_server: LeaseServer
) -> None:
    events: list[str] = []
    heartbeat = beat(tmp_path, failing_server.url, events, interval=0.05)
    heartbeat.start()
    heartbeat.update(LeaseStatus(deadline=1_800_000_000))
    eventually(lambda: len(failing_server.requests) >= 16, 10, "sixteen tries")
    times = [at for at, _ in failing_server.requests[:16]]
    # Never a pause past the period's order (an exponential backoff would wait 0.1, 0.2, ... 3 s).
    assert max(b - a for a, b in itertools.pairwise(times)) < 0.5
    # Logged on the 1st, 2nd, 4th, 8th, 16th failure in a row, not on each.
    assert 4 <= events.count("heartbeat-error") <= 6, events
