"""`kopf run` of the controller module works as well as `fleetdispatch operator` (the issue asks for both).

It runs as the chart's identity (the operator's kubeconfig: its ServiceAccount, exactly the chart's RBAC)
against the session's real control plane, and drives a dispatch whose pod the node agent completes at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetdispatch.devcluster.stack import OPERATOR_USER, BackgroundCluster, audit_events
from operators import Namespace


@pytest.fixture(scope="module")
def runtime() -> str:
    return "instant"


def test_kopf_run_of_the_controller_module_drives_a_dispatch_to_success(
    cluster: BackgroundCluster, runtime: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.dev.operator_kubeconfig),
        "FLEETDISPATCH_METRICS_PORT": "0",
        "FLEETDISPATCH_HEALTH_PORT": "0",
    }
    command = [sys.executable, "-m", "kopf", "run", "--standalone", "-A", "-m", "fleetdispatch.controller"]
    log_path = tmp_path / "kopf.log"
    _, start = audit_events(cluster.dev.audit_log)  # earlier operators of the session are someone else's
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ns = Namespace(cluster, "kopf-run", runtime=runtime)
        ns.create(
            "plain",
            {"template": {"spec": {"containers": [{"name": "s", "image": "b", "command": ["true"]}]}}},
        )
        try:
            status = ns.wait_phase("plain", "Succeeded", 60)
        except AssertionError as error:
            raise AssertionError(f"{error}\nkopf run's log:\n{log_path.read_text()[-6000:]}") from None
        assert status["attempt"] == 1
        assert status["attempts"][0]["outcome"] == "Completed"
        assert "POST /api/v1/namespaces/kopf-run/pods" in ns.operator_writes()  # as the chart's identity
        assert process.poll() is None, log_path.read_text()[-6000:]
        # The chart's RBAC covers every request it makes: none refused (kopf's scanning of CRDs and
        # namespaces, which the chart does not grant, is declared off rather than retried into errors).
        events, _ = audit_events(cluster.dev.audit_log, start)
        refused = [
            f"{e['verb']} {e['requestURI']}: {e['responseStatus'].get('code')}"
            for e in events
            if e.get("stage") == "ResponseComplete"
            and (e.get("user") or {}).get("username") == OPERATOR_USER
            and (e.get("responseStatus") or {}).get("code") in (401, 403)
        ]
        assert refused == []
        assert "[ERROR" not in log_path.read_text()
    finally:
        process.terminate()
        process.wait(15)
