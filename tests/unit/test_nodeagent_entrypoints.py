"""The node agent's rule for a container without `command`: the entrypoints of the images it knows.

Pure: the table against the Dockerfile and the chart it stands for, and Kubernetes' rule for combining an
image's ENTRYPOINT and CMD with a container's `command` and `args`. tests/cluster/test_nodeagent_images.py
runs such containers on the node.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from fleetdispatch.devcluster.nodeagent import (
    IMAGE_ENTRYPOINTS,
    PROJECT_IMAGE,
    ImageEntrypoint,
    image_repository,
)

ROOT = Path(__file__).resolve().parents[2]
REPO = "ghcr.io/fleet-dispatch/fleet-dispatch"


def dockerfile_instruction(name: str) -> list[str]:
    """The final stage's exec-form `name` instruction (`ENTRYPOINT ["..."]`) of the Dockerfile."""
    found = re.findall(rf"^{name}\s+(\[.*\])\s*$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert found, f"no exec-form {name} in the Dockerfile"
    return list(json.loads(found[-1]))


def test_the_project_image_runs_what_its_dockerfile_says() -> None:
    known = IMAGE_ENTRYPOINTS[PROJECT_IMAGE]
    assert list(known.entrypoint) == dockerfile_instruction("ENTRYPOINT")
    assert list(known.cmd) == dockerfile_instruction("CMD")


def test_the_project_image_is_the_charts() -> None:
    values = yaml.safe_load((ROOT / "charts" / "fleet-dispatch" / "values.yaml").read_text())
    assert values["image"]["repository"] == PROJECT_IMAGE


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        (REPO + ":0.1.0", REPO),
        (REPO + "@sha256:" + "0" * 64, REPO),
        (
            REPO + ":1.2@sha256:" + "a" * 64,
            REPO,
        ),
        (REPO, REPO),
        ("registry.local:5000/fleet-dispatch", "registry.local:5000/fleet-dispatch"),
        ("registry.local:5000/fleet-dispatch:dev", "registry.local:5000/fleet-dispatch"),
        ("busybox:1.36", "busybox"),
        ("", ""),
    ],
)
def test_an_image_reference_without_its_tag_and_digest(image: str, repository: str) -> None:
    assert image_repository(image) == repository


IMAGE = ImageEntrypoint(entrypoint=("fleetdispatch",), cmd=("--help",))


@pytest.mark.parametrize(
    ("command", "args", "argv"),
    [
        ([], [], ["fleetdispatch", "--help"]),  # the image's ENTRYPOINT and CMD
        ([], ["operator", "-n", "team-a"], ["fleetdispatch", "operator", "-n", "team-a"]),  # args replace CMD
        (["sh", "-c"], [], ["sh", "-c"]),  # command replaces both; the image's CMD is not appended
        (["sh", "-c"], ["echo hi"], ["sh", "-c", "echo hi"]),
    ],
)
def test_command_and_args_combine_with_the_image_as_kubernetes_says(
    command: list[str], args: list[str], argv: list[str]
) -> None:
    assert IMAGE.argv(command, args) == argv
