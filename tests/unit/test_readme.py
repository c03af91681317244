"""The README's generated sections (configuration tables, CEL rules, a refused manifest) match the CRDs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("api_reference", ROOT / "scripts" / "api_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _generator()
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("section", sorted(GENERATOR.SECTIONS))
def test_generated_section_matches(section: str) -> None:
    expected = GENERATOR.SECTIONS[section]()
    assert GENERATOR.embedded(README, section) == expected, (
        f"README section {section!r} is stale: run `python scripts/api_reference.py --write`"
    )


def test_every_spec_field_is_in_the_configuration_table() -> None:
    table = GENERATOR.embedded(README, "api-reference")
    for field in (
        "spec.timeouts.idleOutputSeconds",
        "spec.activity.apiEndpoints",
        "spec.retry.maxRequeues",
        "spec.failurePolicy.rules[].onExitCodes.values",
        "spec.quotaPool",
        "spec.suspend",
        "spec.maxConcurrent",
    ):
        assert f"| `{field}` |" in table


def test_readme_names_the_commands_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci and "make test" in README and "make demo" in README
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^test:", makefile, re.M) and re.search(r"^demo:", makefile, re.M)
