"""A corpus of manifests a user could write by mistake, each refused with the exact message they would see.

Each file in tests/invalid/ opens with comment lines: a description, then `# api: ...` for every error the
API server answers (schema and CEL rules, as `admission` emulates them) and `# operator: ...` for the message
the operator's models give the same manifest (what a `Stalled` condition would say if it slipped past).
Files under updates/ hold two documents, the stored object and the update that must be refused.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from fleetdispatch import cli
from fleetdispatch.validation import manifests

FOLDER = Path(__file__).resolve().parents[1] / "invalid"
CREATES = sorted(FOLDER.glob("*.yaml"))
UPDATES = sorted((FOLDER / "updates").glob("*.yaml"))


def _expected(path: Path) -> tuple[list[str], str]:
    api_lines, operator = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# api: "):
            api_lines.append(line.removeprefix("# api: "))
        elif line.startswith("# operator: "):
            operator = line.removeprefix("# operator: ")
    assert api_lines and operator, f"{path.name} states no expected message"
    return api_lines, operator


def _documents(path: Path) -> list[Any]:
    return list(manifests.documents(path.read_text(encoding="utf-8")))


def test_the_corpus_is_large_enough() -> None:
    assert len(CREATES) + len(UPDATES) >= 25


@pytest.mark.parametrize("path", CREATES, ids=lambda p: p.stem)
def test_refused_on_create_with_a_readable_message(path: Path) -> None:
    api_lines, operator = _expected(path)
    [manifest] = _documents(path)
    verdict = manifests.check(manifest)
    assert not verdict.valid
    assert [str(error) for error in verdict.api_errors] == api_lines
    assert verdict.model_error == operator


@pytest.mark.parametrize("path", UPDATES, ids=lambda p: p.stem)
def test_refused_on_update_with_a_readable_message(path: Path) -> None:
    api_lines, operator = _expected(path)
    stored, update = _documents(path)
    assert manifests.check(stored).valid, "the stored object itself must be valid"
    verdict = manifests.check(update, old=stored)
    assert [str(error) for error in verdict.api_errors] == api_lines
    assert verdict.model_error == operator


@pytest.mark.parametrize("path", UPDATES, ids=lambda p: p.stem)
def test_suspend_and_retry_may_change_after_creation(path: Path) -> None:
    stored, _ = _documents(path)
    update = copy.deepcopy(stored)
    update["spec"]["suspend"] = True
    update["spec"]["retry"] = {"maxAttempts": 7, "backoff": {"baseSeconds": 5}}
    verdict = manifests.check(update, old=stored)
    assert verdict.valid, verdict.explain()


def test_validate_command_reports_every_invalid_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", *map(str, CREATES)]) == 1
    out = capsys.readouterr().out
    assert f"{len(CREATES)} fleet.dispatch.dev manifests checked, {len(CREATES)} invalid" in out
    assert 'The FleetDispatch "bad" is invalid: spec.timeouts.deadlineSeconds: Invalid value: 0' in out
