"""`kopf run` of the controller module works as well as `fleetdispatch operator` (the issue asks for both)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fleetdispatch.devcluster.stack import BackgroundCluster
from operators import Namespace


def test_kopf_run_of_the_controller_module_drives_a_dispatch_to_success(tmp_path: Path) -> None:
    with BackgroundCluster(runtime="instant", bookmark_seconds=0.5) as cluster:
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "FLEETDISPATCH_METRICS_PORT": "0",
            "FLEETDISPATCH_HEALTH_PORT": "0",
        }
        command = [
            sys.executable,
            "-m",
            "kopf",
            "run",
            "--standalone",
            "-A",
            "-m",
            "fleetdispatch.controller",
        ]
        with (tmp_path / "kopf.log").open("w") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            ns = Namespace(cluster, "kopf-run")
            ns.create(
                "plain",
                {"template": {"spec": {"containers": [{"name": "s", "image": "b", "command": ["true"]}]}}},
            )
            status = ns.wait_phase("plain", "Succeeded", 30)
            assert status["attempt"] == 1
        finally:
            process.terminate()
            process.wait(15)
