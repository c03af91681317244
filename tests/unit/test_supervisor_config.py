"""The supervisor's configuration and command line: every spec default is the CRD's (the CRD is their
source; `SupervisorConfig`, its flags and the README's flag table are copies), `to_args` round-trips,
flags left out come from the environment, and a bad command line names its flag."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetdispatch.api import names
from fleetdispatch.session import protocol
from fleetdispatch.session.config import SPEC_NUMBERS, SupervisorConfig, add_arguments

ROOT = Path(__file__).resolve().parents[2]
MARKER = ["--dispatch=ns/d", "--attempt=1"]
# The spec's lists, beside the numbers (config.SPEC_NUMBERS): flag, spec field, SupervisorConfig field.
SPEC_LISTS = (
    ("api-endpoint", "activity.apiEndpoints", "api_endpoints"),
    ("output-path", "activity.outputPaths", "output_paths"),
)
# Spec fields the operator alone enforces: the supervisor has no flag for them.
OPERATOR_ONLY = frozenset({"timeouts.startSeconds"})


def crd_spec() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / "fleetdispatches.yaml").read_text())
    spec: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec


def crd_default(spec_field: str) -> Any:
    """The CRD's default of `timeouts.deadlineSeconds` and the like."""
    node = crd_spec()
    for part in spec_field.split("."):
        node = node["properties"][part]
    assert "default" in node, f"the CRD states no default for {spec_field}"
    return node["default"]


def flag_fields() -> dict[str, tuple[str, str]]:
    """Each spec flag (without `--`) with its spec field and its SupervisorConfig field."""
    fields = {number.flag: (number.spec_field, number.dest) for number in SPEC_NUMBERS}
    fields.update({flag: (spec_field, dest) for flag, spec_field, dest in SPEC_LISTS})
    return fields


def as_config_value(dest: str, value: Any) -> Any:
    return tuple(value) if dest in ("api_endpoints", "output_paths") else value


def test_every_field_of_timeouts_and_activity_has_a_flag() -> None:
    spec = crd_spec()
    in_crd = {
        f"{group}.{name}"
        for group in ("timeouts", "activity")
        for name in spec["properties"][group]["properties"]
    } - OPERATOR_ONLY
    assert {spec_field for spec_field, _ in flag_fields().values()} == in_crd


def test_the_configurations_defaults_are_the_crds() -> None:
    default = SupervisorConfig()
    for flag, (spec_field, dest) in flag_fields().items():
        assert getattr(default, dest) == as_config_value(dest, crd_default(spec_field)), flag
    assert default.state_dir == protocol.DEFAULT_STATE_DIR == names.STATE_DIR


def test_the_flags_defaults_are_the_crds() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, {})
    for number in SPEC_NUMBERS:
        assert parser.get_default(number.dest) == crd_default(number.spec_field), number.flag
        assert f"(default {crd_default(number.spec_field)})" in " ".join(parser.format_help().split())
    # What a command line without the spec's flags gives, the lists included.
    parsed = SupervisorConfig.parse(MARKER, environ={})
    for flag, (spec_field, dest) in flag_fields().items():
        assert getattr(parsed, dest) == as_config_value(dest, crd_default(spec_field)), flag


README_ROW = re.compile(
    r"^\| `--(?P<flag>[a-z-]+)`(?: \(repeatable\))? "
    r"\| `(?P<field>[A-Za-z.]+)(?:\[\])?` \| (?P<default>[^|]+) \|$"
)


def test_the_readmes_flag_table_states_the_crds_defaults() -> None:
    rows = {
        match["flag"]: (match["field"], match["default"].strip())
        for line in (ROOT / "README.md").read_text().splitlines()
        if (match := README_ROW.match(line)) and match["field"].startswith(("timeouts.", "activity."))
    }
    fields = flag_fields()
    assert set(rows) == set(fields)
    for flag, (spec_field, shown) in rows.items():
        assert spec_field == fields[flag][0], flag
        expected = crd_default(spec_field)
        if isinstance(expected, list):
            assert shown == (" ".join(f"`{item}`" for item in expected) or "none"), flag
        else:
            assert shown == str(expected), flag


def test_to_args_round_trips() -> None:
    config = SupervisorConfig(
        deadline_seconds=100,
        max_extension_seconds=200,
        idle_output_seconds=50,
        poll_seconds=0.25,
        cpu_percent_threshold=10,
        api_endpoints=("models.example.com:443", "[::1]:8443", ":80"),
        output_paths=("transcript.jsonl", "logs/out.txt"),
        state_dir="/tmp/fleet",
        dispatch="ns/d",
        attempt="1",
        pod_name="d-1",
        pod_uid="uid-1",
        namespace="ns",
        api_server="http://127.0.0.1:8080",
        token_file="/run/token",
        ca_file="/run/ca.crt",
        heartbeat_seconds=5,
        report_file="/dev/termination-log",
    )
    assert SupervisorConfig.parse(config.to_args(), environ={}) == config
    plain = SupervisorConfig(dispatch="ns/d", attempt="1")
    assert SupervisorConfig.parse(plain.to_args(), environ={}) == plain
    # activity.apiEndpoints: [] means no endpoint, not the default one.
    no_endpoints = dataclasses.replace(config, api_endpoints=())
    assert SupervisorConfig.parse(no_endpoints.to_args(), environ={}).api_endpoints == ()


def test_marker_and_state_dir_come_from_the_environment() -> None:
    environ = {
        "FLEET_DISPATCH": "team/job",
        "FLEET_ATTEMPT": "3",
        "FLEET_STATE_DIR": "/state",
        "POD_NAME": "job-3",
        "KUBERNETES_SERVICE_HOST": "fd00::1",
        "KUBERNETES_SERVICE_PORT": "6443",
    }
    config = SupervisorConfig.parse([], environ=environ)
    assert (config.dispatch, config.attempt, config.state_dir) == ("team/job", "3", "/state")
    assert (config.pod_name, config.api_server) == ("job-3", "https://[fd00::1]:6443")
    assert config.api_endpoints == (":443",)
    assert SupervisorConfig.parse(["--attempt=4"], environ=environ).attempt == "4"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--dispatch and --attempt"),
        (["--dispatch=a/b"], "--dispatch and --attempt"),
        ([*MARKER, "--api-endpoint=example.com"], "--api-endpoint"),
        ([*MARKER, "--output-path=/etc/passwd"], "--output-path"),
        ([*MARKER, "--output-path=a/../../x"], "--output-path"),
        ([*MARKER, "--deadline-seconds=0"], "--deadline-seconds"),
        ([*MARKER, "--poll-seconds=soon"], "--poll-seconds"),
        ([*MARKER, "--no-api-endpoints", "--api-endpoint=:443"], "contradict"),
    ],
)
def test_a_bad_command_line_names_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        SupervisorConfig.parse(argv, environ={})
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
