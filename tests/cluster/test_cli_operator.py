"""`fleetdispatch operator --kubeconfig K --context C` logs in to the real dev cluster as the context says.

One kubeconfig of several contexts, all at the session's control plane: `operator` (the chart's identity,
its ServiceAccount token), `exec` (the same token handed out by an exec credential plugin, as EKS, GKE and
AKS hand out theirs), `rejected` (a token the API server refuses) and `nobody-home` (its current context:
nothing listens at its server). Whoever watches is read from the API server's audit log, so a login with
the wrong context would show up as no watch by the operator's user. `$KUBECONFIG` points somewhere
useless, so nothing but the flags can make a login work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetdispatch.client import credentials
from fleetdispatch.client.kubeapi import KubeApi
from fleetdispatch.devcluster.stack import OPERATOR_USER, BackgroundCluster, start_operator, stop_operator
from operators import free_port

PLUGIN = """#!/bin/sh
# An exec credential plugin that gives the operator's token (and counts its runs).
echo run >> {runs}
cat <<EOF
{{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
  "status": {{"token": "{token}", "expirationTimestamp": "2099-01-01T00:00:00Z"}}}}
EOF
"""


@pytest.fixture(scope="module")
def contexts(cluster: BackgroundCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli-operator")
    operator: dict[str, Any] = yaml.safe_load(cluster.dev.operator_kubeconfig.read_text())
    [real_cluster] = operator["clusters"]
    [user] = operator["users"]
    token = user["user"]["token"]
    plugin = folder / "get-token"
    plugin.write_text(PLUGIN.format(runs=folder / "plugin-runs", token=token))
    plugin.chmod(0o755)
    unreachable = {**real_cluster["cluster"], "server": f"https://127.0.0.1:{free_port()}"}
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [real_cluster, {"name": "unreachable", "cluster": unreachable}],
        "users": [
            {"name": "operator", "user": {"token": token}},
            {
                "name": "plugin",
                "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin)}},
            },
            {"name": "impostor", "user": {"token": "not-a-token-the-api-server-issued"}},
        ],
        "contexts": [
            {"name": "operator", "context": {"cluster": real_cluster["name"], "user": "operator"}},
            {"name": "exec", "context": {"cluster": real_cluster["name"], "user": "plugin"}},
            {"name": "rejected", "context": {"cluster": real_cluster["name"], "user": "impostor"}},
            {"name": "nobody-home", "context": {"cluster": "unreachable", "user": "operator"}},
        ],
        "current-context": "nobody-home",
    }
    path = folder / "contexts.kubeconfig"
    path.write_text(yaml.safe_dump(document))
    (folder / "useless.kubeconfig").write_text("")
    return path


def useless(contexts: Path) -> Path:
    return contexts.parent / "useless.kubeconfig"


def operator_flags() -> list[str]:
    return [f"--metrics-port={free_port()}", f"--health-port={free_port()}"]


@pytest.mark.parametrize("context", ["operator", "exec"])
def test_the_operator_logs_in_with_the_context_given_and_watches(
    cluster: BackgroundCluster, contexts: Path, context: str, tmp_path: Path
) -> None:
    runs = contexts.parent / "plugin-runs"
    runs.unlink(missing_ok=True)
    log = tmp_path / "operator.log"
    flags = ["--kubeconfig", str(contexts), "--context", context, *operator_flags()]
    # Returns once the audit log shows the operator's user watching dispatches and pods.
    process = start_operator(cluster.dev, log, *flags, kubeconfig=useless(contexts))
    try:
        assert process.poll() is None
    finally:
        stop_operator(process)
    text = log.read_text()
    # The API server's word for who logged in: the context's user, not $KUBECONFIG's nor the current one.
    assert f"as {OPERATOR_USER} with kubeconfig {contexts}, context {context!r}" in text
    assert "Traceback" not in text
    if context == "exec":
        # Run once: kopf's login and the operator's own client share the one token until it is due.
        assert runs.read_text().splitlines() == ["run"]


def test_json_logs_are_one_object_a_line(cluster: BackgroundCluster, contexts: Path, tmp_path: Path) -> None:
    log = tmp_path / "operator.log"
    flags = [
        "--kubeconfig",
        str(contexts),
        "--context",
        "operator",
        "--log-format",
        "json",
        *operator_flags(),
    ]
    process = start_operator(cluster.dev, log, *flags, kubeconfig=useless(contexts))
    stop_operator(process)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert entries
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    loggers = {entry["logger"] for entry in entries}
    assert "fleetdispatch.operator" in loggers
    assert any(name.startswith("kopf") for name in loggers), loggers


def run_operator(contexts: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetdispatch.cli", "operator", "--kubeconfig", str(contexts), *flags],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": str(useless(contexts))},
        stdin=subprocess.DEVNULL,
    )


def test_a_wrong_context_is_one_line_and_exit_1(cluster: BackgroundCluster, contexts: Path) -> None:
    result = run_operator(contexts, "--context", "operater", *operator_flags())
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"fleetdispatch operator: cannot log in: kubeconfig {contexts} has no context 'operater' "
        "(it has: operator, exec, rejected, nobody-home)"
    ]


def test_a_token_the_api_server_refuses_is_one_line_and_exit_1(
    cluster: BackgroundCluster, contexts: Path
) -> None:
    result = run_operator(contexts, "--context", "rejected", "--log-level", "error", *operator_flags())
    assert result.returncode == 1, result.stderr[-3000:]
    [line] = result.stderr.splitlines()
    assert line == (
        f"fleetdispatch operator: cannot log in: the API server at {cluster.url} rejects "
        f"kubeconfig {contexts}, context 'rejected' (user impostor): 401 Unauthorized: Unauthorized"
    )


def test_an_api_server_that_cannot_be_reached_is_one_line_and_exit_1(
    cluster: BackgroundCluster, contexts: Path
) -> None:
    result = run_operator(contexts, *operator_flags())  # the current context, nobody-home
    assert result.returncode == 1, result.stderr[-3000:]
    [line] = result.stderr.splitlines()
    assert line.startswith(
        "fleetdispatch operator: cannot log in: cannot reach the API server at https://127.0.0.1:"
    )
    assert f"of kubeconfig {contexts}, context 'nobody-home' (user operator): Cannot connect to host" in line


class LateForwarder:
    """A TCP forwarder to the API server that starts listening only `after` seconds: an API server that
    is still starting, or a connection cut while the operator logs in."""

    def __init__(self, target: tuple[str, int], after: float) -> None:
        self.port = free_port()
        self.target = target
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(after,), daemon=True)
        self._thread.start()

    def _serve(self, after: float) -> None:
        if self._stop.wait(after):
            return
        with socket.create_server(("127.0.0.1", self.port)) as server:
            server.settimeout(0.1)
            while not self._stop.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(self.target)
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_an_api_server_that_answers_a_moment_late_is_logged_in_to(
    cluster: BackgroundCluster, contexts: Path, tmp_path: Path
) -> None:
    url = urllib.parse.urlsplit(cluster.url)
    forwarder = LateForwarder((str(url.hostname), int(url.port or 443)), after=3.0)
    try:
        document: dict[str, Any] = yaml.safe_load(contexts.read_text())
        [real] = [c for c in document["clusters"] if c["name"] != "unreachable"]
        late = {**real["cluster"], "server": f"https://127.0.0.1:{forwarder.port}"}
        document["clusters"].append({"name": "late", "cluster": late})
        document["contexts"].append({"name": "late", "context": {"cluster": "late", "user": "operator"}})
        kubeconfig = tmp_path / "late.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(document))
        log = tmp_path / "operator.log"
        flags = ["--kubeconfig", str(kubeconfig), "--context", "late", *operator_flags()]
        # Returns once it watches: the first login attempts found nothing listening, a later one did.
        process = start_operator(cluster.dev, log, *flags, kubeconfig=useless(contexts))
        stop_operator(process)
        assert "Traceback" not in log.read_text()
    finally:
        forwarder.close()


def test_insecure_skip_tls_verify_keeps_the_client_certificate(
    cluster: BackgroundCluster, tmp_path: Path
) -> None:
    """`insecure-skip-tls-verify` turns off the server's verification, not the client's identity: without
    its certificate the API server would take the caller for system:anonymous."""
    document: dict[str, Any] = yaml.safe_load(cluster.dev.admin_kubeconfig())
    for entry in document["clusters"]:
        entry["cluster"].pop("certificate-authority-data", None)
        entry["cluster"]["insecure-skip-tls-verify"] = True
    path = tmp_path / "insecure.kubeconfig"
    path.write_text(yaml.safe_dump(document))
    found = credentials.from_kubeconfig(str(path), environ={})
    assert found.insecure

    async def whoami() -> str | None:
        api = KubeApi(found)
        try:
            return await api.whoami()
        finally:
            await api.close()

    assert asyncio.run(whoami()) == "fleetdispatch-admin"
