"""`kubectl fleet`'s command line without a cluster: its flags, what it imports, and the one-line errors of
credentials that cannot be used and of an API server that cannot be reached."""

from __future__ import annotations

import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from fleetdispatch.plugin import cli

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_installs_the_kubectl_plugin_command() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    # kubectl runs `kubectl-<name>` from PATH for `kubectl <name>`.
    assert scripts["kubectl-fleet"] == "fleetdispatch.plugin.cli:main"


def test_it_imports_nothing_heavy() -> None:
    heavy = ["pydantic", "kopf", "aiohttp", "kubernetes", "yaml", "celpy", "fleetdispatch.api.models"]
    code = f"import sys, fleetdispatch.plugin.cli; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv",
    [
        ["-n", "a", "--context", "c", "--kubeconfig", "k", "status", "x"],
        ["status", "x", "-n", "a", "--context", "c", "--kubeconfig", "k"],
        ["--namespace", "a", "--context", "c", "status", "--kubeconfig", "k", "x"],
    ],
)
def test_connection_flags_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = cli._parser().parse_args(argv)
    assert (args.namespace, args.context, args.kubeconfig, args.name) == ("a", "c", "k", "x")


def test_a_flag_after_the_subcommand_wins() -> None:
    args = cli._parser().parse_args(["-n", "before", "list", "-n", "after"])
    assert args.namespace == "after"
    args = cli._parser().parse_args(["list"])
    assert args.namespace is None and args.sort_by == "name" and not args.all_namespaces


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "--sort-by", "size"],
        ["status", "x", "-o", "wide"],
        ["logs", "x", "-o", "json"],
        ["status"],
        ["retry"],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "usage: kubectl fleet" in capsys.readouterr().err


def _kubeconfig(path: Path, server: str, namespace: str = "team") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": namespace}}],
        "current-context": "x",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    "command", [["status", "x"], ["list"], ["logs", "x"], ["suspend", "x"], ["retry", "x"]]
)
def test_an_unreachable_api_server_is_one_line(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = _kubeconfig(tmp_path / "config", f"https://127.0.0.1:{_closed_port()}")
    assert cli.main([*command, "--kubeconfig", str(kubeconfig)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: cannot reach the API server at https://127.0.0.1:")


def test_missing_credentials_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "--kubeconfig", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: cannot read kubeconfig {tmp_path / 'none'}: No such file or directory\n"
    kubeconfig = _kubeconfig(tmp_path / "config", "https://127.0.0.1:1")
    assert cli.main(["list", "--kubeconfig", str(kubeconfig), "--context", "nope"]) == 1
    assert capsys.readouterr().err == f"error: kubeconfig {kubeconfig} has no context 'nope' (it has: x)\n"
