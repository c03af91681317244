"""`scripts/install-tools.sh controlplane`: what a user without Go, or with envtest's binaries, gets.

The script is run from a copy of the repository's scripts (its root is the copy's), so these tests never
touch the real .tools/ and build nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "scripts", root / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _run(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / "scripts" / "install-tools.sh"), "controlplane"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_go_one_line_says_what_to_install_or_set(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    assert shutil.which("go", path=env["PATH"]) is None, (
        "this machine has go in /usr/bin: the test needs it off PATH"
    )
    result = _run(root, env)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1
    assert "Go is not installed" in errors[0] and "KUBEBUILDER_ASSETS" in errors[0]
    assert not (root / ".tools" / "controlplane" / "current").exists()


def test_kubebuilder_assets_are_used_and_nothing_is_built(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    assets = tmp_path / "assets"
    assets.mkdir()
    for name in BINARIES:
        binary = assets / name
        binary.write_text(f"#!/bin/sh\necho '{name} from the assets'\n")
        binary.chmod(0o755)
    # No Go on PATH: were anything built, the script would fail.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBEBUILDER_ASSETS": str(assets)}
    result = _run(root, env)
    assert result.returncode == 0, result.stderr
    current = root / ".tools" / "controlplane" / "current"
    assert current.resolve() == assets.resolve()
    assert "kube-apiserver from the assets" in result.stdout


def test_assets_missing_a_binary_are_refused_by_name(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "kube-apiserver").write_text("#!/bin/sh\n")
    (assets / "kube-apiserver").chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBEBUILDER_ASSETS": str(assets)}
    result = _run(root, env)
    assert result.returncode != 0
    assert "lacks kube-controller-manager kube-scheduler etcd" in result.stderr


def test_a_complete_build_is_never_rebuilt(tmp_path: Path) -> None:
    """A folder marked complete is linked as it is: a second `make tools` builds nothing (no Go needed)."""
    root = _copy(tmp_path)
    version = subprocess.run(
        ["bash", str(root / "scripts" / "install-tools.sh"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    ).stdout
    key = next(
        line.split("into ", 1)[1].strip()
        for line in version.splitlines()
        if "/controlplane/kubernetes-" in line
    )
    built = Path(key)
    built.mkdir(parents=True)
    for name in BINARIES:
        (built / name).write_text(f"#!/bin/sh\necho '{name} built before'\n")
        (built / name).chmod(0o755)
    (built / ".complete").touch()
    result = _run(root, {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "building" not in result.stderr
    assert "kube-apiserver built before" in result.stdout
