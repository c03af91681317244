"""The `fleetdispatch` command as users run it, in real subprocesses: credentials that are missing or bad
give one line on standard error and exit 1 (never a traceback), in text or as one JSON log object; and
`fleetdispatch supervise` runs a real short session without importing the operator's heavy modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

CANNOT = "fleetdispatch operator: cannot log in:"
# The supervisor's memory budget is 25 MiB: each of these would take a large part of it (asyncio is anyio's
# event loop; urllib.request, which the heartbeat does without, pulls in much of the standard library).
HEAVY = ("pydantic", "kopf", "kubernetes", "aiohttp", "yaml", "celpy", "asyncio", "anyio", "psutil")
SESSION = {
    f"fleetdispatch.session{part}"
    for part in ("", *(f".{p.stem}" for p in (ROOT / "operator/fleetdispatch/session").glob("*.py")))
}
FAILING_PLUGIN = """#!/bin/sh
echo "error: no SSO session: run aws sso login" >&2
exit 3
"""


def fleetdispatch(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetdispatch.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine with no kubeconfig, outside any cluster."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
    }
    environment["HOME"] = str(tmp_path / "home")
    return environment


def write_kubeconfig(path: Path, users: dict[str, dict[str, object]]) -> Path:
    """A context per user, all at one cluster (nothing listens there: these tests never get that far)."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": name, "user": user} for name, user in users.items()],
        "contexts": [{"name": name, "context": {"cluster": "c", "user": name}} for name in users],
        "current-context": next(iter(users)),
    }
    path.write_text(yaml.safe_dump(document))
    return path


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


def test_no_credentials_at_all(env: dict[str, str]) -> None:
    line = one_line_failure(fleetdispatch("operator", env=env))
    assert line == (
        "fleetdispatch operator: cannot log in: no credentials: not in a cluster "
        "(no $KUBERNETES_SERVICE_HOST and service account token), no $KUBECONFIG, and no ~/.kube/config; "
        "give one with --kubeconfig"
    )


def test_a_kubeconfig_that_is_missing_or_unreadable(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "nowhere.kubeconfig"
    line = one_line_failure(fleetdispatch("operator", "--kubeconfig", str(missing), env=env))
    assert line == f"{CANNOT} cannot read kubeconfig {missing}: No such file or directory"
    # As root no permission bits make a file unreadable; a folder and bytes that are not text are.
    line = one_line_failure(fleetdispatch("operator", "--kubeconfig", str(tmp_path), env=env))
    assert line == f"fleetdispatch operator: cannot log in: cannot read kubeconfig {tmp_path}: Is a directory"
    binary = tmp_path / "binary.kubeconfig"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    line = one_line_failure(fleetdispatch("operator", "--kubeconfig", str(binary), env=env))
    assert line.startswith(f"fleetdispatch operator: cannot log in: cannot read kubeconfig {binary}: 'utf-8'")
    # $KUBECONFIG naming only files that do not exist.
    line = one_line_failure(fleetdispatch("operator", env={**env, "KUBECONFIG": str(missing)}))
    assert line == f"{CANNOT} no kubeconfig: none of the files in $KUBECONFIG ({missing}) exists"


def test_an_unknown_context(tmp_path: Path, env: dict[str, str]) -> None:
    path = write_kubeconfig(tmp_path / "config", {"alice": {"token": "a"}, "bob": {"token": "b"}})
    line = one_line_failure(
        fleetdispatch("operator", "--kubeconfig", str(path), "--context", "carol", env=env)
    )
    assert line == (f"{CANNOT} kubeconfig {path} has no context 'carol' (it has: alice, bob)")
    # --context alone applies to $KUBECONFIG.
    line = one_line_failure(
        fleetdispatch("operator", "--context", "carol", env={**env, "KUBECONFIG": str(path)})
    )
    assert line.endswith(f"$KUBECONFIG ({path}) has no context 'carol' (it has: alice, bob)")


def test_a_failing_exec_plugin(tmp_path: Path, env: dict[str, str]) -> None:
    plugin = tmp_path / "aws-get-token"
    plugin.write_text(FAILING_PLUGIN)
    plugin.chmod(0o755)
    exec_user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin)}}
    path = write_kubeconfig(tmp_path / "config", {"eks": exec_user})
    line = one_line_failure(fleetdispatch("operator", "--kubeconfig", str(path), env=env))
    assert line == (
        f"fleetdispatch operator: cannot log in: kubeconfig {path}, context 'eks': the credential plugin "
        f"'{plugin}' failed: exec: process returned 3. error: no SSO session: run aws sso login"
    )
    missing = write_kubeconfig(
        tmp_path / "missing", {"gke": {"exec": {**exec_user["exec"], "command": "no-such-plugin-x"}}}
    )
    line = one_line_failure(fleetdispatch("operator", "--kubeconfig", str(missing), env=env))
    assert "the credential plugin 'no-such-plugin-x' failed: " in line
    assert "No such file or directory" in line


def test_in_json_the_failure_is_one_log_object(tmp_path: Path, env: dict[str, str]) -> None:
    path = write_kubeconfig(tmp_path / "config", {"alice": {"token": "a"}})
    result = fleetdispatch(
        "operator", "--kubeconfig", str(path), "--context", "nobody", "--log-format", "json", env=env
    )
    entry = json.loads(one_line_failure(result))
    assert set(entry) == {"time", "level", "logger", "message"}
    assert (entry["level"], entry["logger"]) == ("ERROR", "fleetdispatch.operator")
    assert entry["message"] == f"cannot log in: kubeconfig {path} has no context 'nobody' (it has: alice)"
    assert entry["time"].endswith("Z")


def test_log_flags_are_checked(env: dict[str, str]) -> None:
    result = fleetdispatch("operator", "--log-format", "xml", env=env)
    assert result.returncode == 2
    assert "argument --log-format: invalid choice: 'xml'" in result.stderr
    result = fleetdispatch("operator", "--log-level", "chatty", env=env)
    assert result.returncode == 2
    assert "argument --log-level: invalid choice: 'CHATTY'" in result.stderr
    # Case does not matter; the level is accepted, then the missing credentials are the problem.
    assert one_line_failure(fleetdispatch("operator", "--log-level", "debug", env=env)).startswith(
        "fleetdispatch operator: cannot log in: no credentials"
    )


def test_supervise_runs_a_session_without_the_operators_modules(tmp_path: Path, env: dict[str, str]) -> None:
    dispatch = f"test/{uuid.uuid4().hex[:12]}"
    marked = {**env, "FLEET_DISPATCH": dispatch, "FLEET_ATTEMPT": "1"}
    session = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"], env=marked)
    try:
        result = fleetdispatch(
            "supervise",
            f"--dispatch={dispatch}",
            "--attempt=1",
            f"--state-dir={tmp_path}",
            "--poll-seconds=0.1",
            "--no-api-endpoints",
            env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
        )
    finally:
        session.kill()
        session.wait()
    events = [json.loads(line)["event"] for line in result.stdout.splitlines()]
    assert (result.returncode, events[0], events[-1]) == (0, "start", "exit"), result
    # -X importtime's lines: "import time: self [us] | cumulative | imported package"
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "fleetdispatch.session.supervisor" in imported
    assert not sorted(m for m in imported if m.split(".")[0] in HEAVY or m == "urllib.request")
    # Of fleet-dispatch, the session side alone (and the API's names, standard library only, it shares).
    ours = {m for m in imported if m.startswith("fleetdispatch.")}
    assert not sorted(ours - {"fleetdispatch.api", "fleetdispatch.api.names"} - SESSION), sorted(ours)
