"""What the containers node hands containerd, and how it says it cannot run: no root, no daemons needed.

containerd's configuration is read back with a TOML parser, as containerd reads it: every state folder and
socket is in the node's folder (none in /var/lib/containerd or /etc), the sandbox is the locally built pause
image, and the settings this machine needs are there. `unavailable()` is one line naming what it checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from fleetdispatch.devcluster import kubelet
from fleetdispatch.devcluster.controlplane import ControlPlane


def test_containerd_runs_from_the_nodes_folder_with_the_local_pause_image(tmp_path: Path) -> None:
    node = kubelet.ContainersNode(ControlPlane(tmp_path / "controlplane"), tmp_path / "node")
    config = tomllib.loads(node._containerd_config())
    assert config["version"] == 2
    assert config["root"] == str(tmp_path / "node" / "containerd" / "root")
    assert config["state"] == str(tmp_path / "node" / "containerd" / "state")
    assert config["grpc"]["address"] == str(node.socket)
    assert node.socket.is_relative_to(tmp_path / "node")
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == kubelet.PAUSE_IMAGE
    # The machine refuses a lower oom_score_adj than containerd's own.
    assert cri["restrict_oom_score_adj"] is True
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is False
    assert Path(runc["options"]["Root"]).is_relative_to(tmp_path / "node")
    assert cri["cni"]["conf_dir"] == str(tmp_path / "node" / "cni" / "net.d")
    assert cri["cni"]["bin_dir"] == str(kubelet.CNI_PLUGINS)


def test_without_the_tools_on_path_it_says_so_in_one_line_naming_what_it_checked() -> None:
    # A fresh interpreter whose PATH holds none of containerd's tools: the environment differs, not the code.
    program = "from fleetdispatch.devcluster import kubelet; print(kubelet.unavailable())"
    result = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, "PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [line] = result.stdout.splitlines()
    assert line.startswith("runtime containers unavailable: "), line
    assert "no containerd, containerd-shim-runc-v2, ctr, runc, iptables on PATH" in line, line
    assert line.endswith(
        "(checked: root, containerd/runc/ctr/iptables, CNI bridge/host-local/loopback, the kubelet, cgroups, "
        "images)"
    ), line
