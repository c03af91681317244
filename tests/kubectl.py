"""Test support: the kubectl that `make tools` installs from PyPI, run against a dev cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"

# CI installs kubectl (`make test` runs `make tools`); elsewhere a missing kubectl skips, rather than fails.
needs_kubectl = pytest.mark.skipif(
    not KUBECTL.exists() and not os.environ.get("CI"), reason="kubectl not installed: run `make tools`"
)


def run_tool(
    command: list[str], *, stdin: str | None = None, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """A tool (kubectl, helm) run to its end within a minute; with `check`, a failure fails the test with
    its output."""
    result = subprocess.run(
        command, input=stdin, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        name = Path(command[0]).name
        raise AssertionError(f"{name} {' '.join(command[1:])} failed:\n{result.stdout}{result.stderr}")
    return result


class Kubectl:
    def __init__(self, kubeconfig: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        self.binary = str(KUBECTL) if KUBECTL.exists() else shutil.which("kubectl") or "kubectl"

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run_tool([self.binary, *args], stdin=stdin, env=self.env, check=check)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [self.binary, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
