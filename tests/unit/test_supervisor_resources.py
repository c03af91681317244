"""The supervisor sidecar's requests and limits: operator settings (`FLEETDISPATCH_SUPERVISOR_*`), put on the
supervisor of every pod the operator builds, and refused when a limit is below its request (the API server
would refuse every pod)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from fleetdispatch.api import models, names
from fleetdispatch.api.settings import OperatorSettings, SettingsError, quantity
from fleetdispatch.core import podspec
from fleetdispatch.core.podspec import AttemptRequest, DispatchRef

TEMPLATE = {"spec": {"containers": [{"name": "session", "image": "example/agent:1", "command": ["agent"]}]}}


def supervisor_resources_of(settings: OperatorSettings) -> dict[str, Any]:
    pod = podspec.build_pod(
        DispatchRef("job", "team", "uid-1"),
        models.parse_spec({"template": TEMPLATE}),
        TEMPLATE,
        AttemptRequest(attempt=1, resume=False, resume_token=None),
        1_800_000_000.0,
        settings,
    )
    [supervisor] = [c for c in pod["spec"]["initContainers"] if c["name"] == names.SUPERVISOR_CONTAINER]
    resources: dict[str, Any] = supervisor["resources"]
    return resources


def test_by_default_a_small_request_a_memory_limit_and_no_cpu_limit() -> None:
    assert supervisor_resources_of(OperatorSettings()) == {
        "requests": {"cpu": "10m", "memory": "32Mi"},
        "limits": {"memory": "64Mi"},
    }


def test_each_setting_comes_from_its_variable_and_reaches_the_supervisor() -> None:
    settings = OperatorSettings.from_env(
        {
            "FLEETDISPATCH_SUPERVISOR_CPU_REQUEST": "50m",
            "FLEETDISPATCH_SUPERVISOR_MEMORY_REQUEST": "48Mi",
            "FLEETDISPATCH_SUPERVISOR_MEMORY_LIMIT": "128Mi",
            "FLEETDISPATCH_SUPERVISOR_CPU_LIMIT": "0.5",
        }
    )
    assert supervisor_resources_of(settings) == {
        "requests": {"cpu": "50m", "memory": "48Mi"},
        "limits": {"memory": "128Mi", "cpu": "0.5"},
    }


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"FLEETDISPATCH_SUPERVISOR_MEMORY_LIMIT": "16Mi"},
            "FLEETDISPATCH_SUPERVISOR_MEMORY_LIMIT: 16Mi is less than "
            "FLEETDISPATCH_SUPERVISOR_MEMORY_REQUEST 32Mi",
        ),
        (
            {"FLEETDISPATCH_SUPERVISOR_CPU_REQUEST": "1", "FLEETDISPATCH_SUPERVISOR_CPU_LIMIT": "500m"},
            "FLEETDISPATCH_SUPERVISOR_CPU_LIMIT: 500m is less than FLEETDISPATCH_SUPERVISOR_CPU_REQUEST 1",
        ),
        ({"FLEETDISPATCH_SUPERVISOR_CPU_REQUEST": "a lot"}, "FLEETDISPATCH_SUPERVISOR_CPU_REQUEST: String"),
        ({"FLEETDISPATCH_SUPERVISOR_MEMORY_LIMIT": "64MB"}, "FLEETDISPATCH_SUPERVISOR_MEMORY_LIMIT: String"),
    ],
)
def test_a_limit_below_its_request_or_a_malformed_quantity_is_refused_by_name(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        OperatorSettings.from_env(environ)


def test_a_limit_equal_to_its_request_is_accepted_across_suffixes() -> None:
    settings = OperatorSettings(supervisor_memory_request="64Mi", supervisor_memory_limit="67108864")
    assert supervisor_resources_of(settings)["limits"]["memory"] == "67108864"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10m", Decimal("0.01")),
        ("1", Decimal(1)),
        ("1.5", Decimal("1.5")),
        ("2k", Decimal(2000)),
        ("64Mi", Decimal(64 * 2**20)),
        ("1G", Decimal(10**9)),
        ("1Gi", Decimal(2**30)),
        ("3Ei", Decimal(3 * 2**60)),
    ],
)
def test_quantities_are_compared_as_numbers(text: str, value: Decimal) -> None:
    assert quantity(text) == value
