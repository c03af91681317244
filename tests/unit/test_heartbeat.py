"""The Lease heartbeat against a real (tiny) HTTP server, and against one that never answers."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fleetdispatch.devcluster.pki import Authority
from fleetdispatch.session.config import SupervisorConfig
from fleetdispatch.session.heartbeat import Heartbeat, LeaseStatus
from supervision import Clock, ScriptedProbe, scripted_supervisor
from waiting import eventually

LEASES = "/apis/coordination.k8s.io/v1/namespaces/team/leases"


class FakeApiServer(ThreadingHTTPServer):
    """Records requests; a Lease exists once POSTed."""

    def __init__(self, scheme: str = "http") -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.scheme = scheme
        self.requests: list[tuple[str, str, str | None, Any]] = []
        self.lease: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FakeApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.requests.append((self.command, self.path, self.headers.get("Authorization"), body))
        if self.command == "POST":
            self.server.lease = body
            self._reply(201, body)
        elif self.server.lease is None:
            self._reply(404, {"kind": "Status", "code": 404})
        else:
            self._reply(200, self.server.lease)

    def _reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = _handle  # noqa: N815 (http.server's names)


def serving(server: FakeApiServer) -> Iterator[FakeApiServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    yield from serving(FakeApiServer())


@pytest.fixture
def tls_api_server(tmp_path: Path) -> Iterator[FakeApiServer]:
    """Over HTTPS, with a certificate for 127.0.0.1 from a CA whose `ca.crt` lies beside the token."""
    authority = Authority(tmp_path)
    pair = authority.issue("server", "127.0.0.1", server_names=("127.0.0.1",), client=False)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.certificate, pair.key)
    server = FakeApiServer(scheme="https")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield from serving(server)


def heartbeat(tmp_path: Path, server: str, **options: Any) -> Heartbeat:
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    (tmp_path / "namespace").write_text("team\n")
    events: list[dict[str, Any]] = options.pop("events", [])
    made = Heartbeat.from_config(
        pod_name="job-1",
        pod_uid=options.pop("pod_uid", None),
        namespace=None,
        server=server,
        token_file=str(token),
        ca_file=None,
        interval=options.pop("interval", 0.1),
        log=lambda event, **fields: events.append({"event": event, **fields}),
    )
    assert made is not None
    return made


def test_the_lease_is_created_then_renewed(tmp_path: Path, api_server: FakeApiServer) -> None:
    beat = heartbeat(tmp_path, api_server.url)
    beat.start()
    beat.update(LeaseStatus(deadline=1_800_000_000, last_activity=1_799_999_990, activity_reason="cpu"))
    eventually(lambda: len(api_server.requests) >= 3, 10, "GET, POST, PATCH")
    beat.update(LeaseStatus(deadline=1_800_000_060, activity_reason="output", last_output=1_800_000_000))
    eventually(lambda: api_server.lease is not None and len(api_server.requests) >= 5, 10, "two more writes")
    methods = [(method, path) for method, path, _, _ in api_server.requests]
    assert methods[:3] == [("GET", f"{LEASES}/job-1"), ("POST", LEASES), ("PATCH", f"{LEASES}/job-1")]
    assert all(auth == "Bearer secret-token" for _, _, auth, _ in api_server.requests)
    created = api_server.requests[1][3]
    assert created["metadata"]["name"] == "job-1"
    assert created["spec"]["holderIdentity"] == "job-1"
    assert created["spec"]["leaseDurationSeconds"] == 1
    assert created["metadata"]["annotations"] == {
        "fleet.dispatch.dev/deadline": "2027-01-15T08:00:00Z",
        "fleet.dispatch.dev/last-activity": "2027-01-15T07:59:50Z",
        "fleet.dispatch.dev/activity-reason": "cpu",
    }
    patches = [body for method, _, _, body in api_server.requests if method == "PATCH"]
    assert patches[-1]["metadata"]["annotations"]["fleet.dispatch.dev/deadline"] == "2027-01-15T08:01:00Z"
    assert patches[-1]["metadata"]["annotations"]["fleet.dispatch.dev/last-output"] == "2027-01-15T08:00:00Z"
    assert patches[-1]["spec"]["renewTime"].endswith("Z")


def test_over_https_the_server_is_verified_against_the_ca_beside_the_token(
    tmp_path: Path, tls_api_server: FakeApiServer
) -> None:
    beat = heartbeat(tmp_path, tls_api_server.url)
    beat.start()
    beat.update(LeaseStatus(deadline=1_800_000_000))
    eventually(lambda: tls_api_server.lease is not None, 10, "the Lease created over HTTPS")
    # Another CA: the same server is refused, and the heartbeat only logs it.
    other = tmp_path / "other"
    other.mkdir()
    Authority(other / "pki")
    (other / "ca.crt").write_bytes((other / "pki" / "ca.crt").read_bytes())
    events: list[dict[str, Any]] = []
    untrusting = heartbeat(other, tls_api_server.url, events=events)
    untrusting.start()
    untrusting.update(LeaseStatus(deadline=1_800_000_000))
    eventually(lambda: any(e["event"] == "heartbeat-error" for e in events), 10, "a refused certificate")
    assert "CERTIFICATE_VERIFY_FAILED" in str(events[0]["error"])
    assert {e["event"] for e in events} == {"heartbeat-error"}


def test_the_request_rate_is_bounded(tmp_path: Path, api_server: FakeApiServer) -> None:
    beat = heartbeat(tmp_path, api_server.url, interval=0.5)
    beat.start()
    end = time.monotonic() + 1.6
    second = 0
    while time.monotonic() < end:
        second += 1
        beat.update(LeaseStatus(deadline=1_800_000_000 + second))  # a change every few milliseconds
        time.sleep(0.005)
    # GET + POST, then at most one write per half second: never one per update.
    assert 2 <= len(api_server.requests) <= 2 + 4


def test_no_token_no_heartbeat(tmp_path: Path) -> None:
    assert (
        Heartbeat.from_config(
            pod_name="job-1",
            namespace="team",
            server="http://127.0.0.1:1",
            token_file=str(tmp_path / "missing"),
            ca_file=None,
            interval=1,
            log=lambda event, **fields: None,
        )
        is None
    )


def test_an_unreachable_api_server_does_not_delay_supervision(tmp_path: Path) -> None:
    # A server that accepts connections and never answers: each request hangs until its timeout.
    silent = socket.create_server(("127.0.0.1", 0))
    events: list[dict[str, Any]] = []
    try:
        beat = heartbeat(
            tmp_path, f"http://127.0.0.1:{silent.getsockname()[1]}", interval=0.01, events=events
        )
        beat.start()
        clock = Clock()
        probe = ScriptedProbe(clock, cpu_share=1.0)
        config = SupervisorConfig(
            deadline_seconds=10,
            max_extension_seconds=20,
            poll_seconds=1,
            state_dir=str(tmp_path / "state"),
            dispatch="ns/d",
            attempt="1",
        )
        started = time.monotonic()
        assert scripted_supervisor(config, clock, probe, heartbeat=beat).run() == 0
        assert time.monotonic() - started < 1.0  # 30 polls, while one request waits 5 s for its answer
        assert probe.signals and probe.signals[0][0] == 130.0
    finally:
        silent.close()


def test_the_lease_is_owned_by_its_pod_when_the_uid_is_known(
    tmp_path: Path, api_server: FakeApiServer
) -> None:
    # Collected with the pod: without the owner, every attempt would leave a Lease behind.
    beat = heartbeat(tmp_path, api_server.url, pod_uid="uid-123")
    beat.start()
    beat.update(LeaseStatus(deadline=1_800_000_000))
    eventually(lambda: len(api_server.requests) >= 2, 10, "GET, POST")
    created = api_server.requests[1][3]
    assert created["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "job-1", "uid": "uid-123"}
    ]
