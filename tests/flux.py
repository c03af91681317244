"""Flux's view of an object through a Kustomization's `healthCheckExprs`, evaluated as kustomize-controller
does: the object's top-level fields are the CEL variables; `inProgress`, then `failed`, then `current` are
tried in that order, and an object none of them matches (or whose expressions cannot be evaluated yet, a
field still missing) is in progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import yaml

KUSTOMIZATION = Path(__file__).resolve().parents[1] / "examples" / "gitops" / "flux-kustomization.yaml"


def expressions(kind: str, path: Path = KUSTOMIZATION) -> dict[str, str]:
    """The `healthCheckExprs` entry for `kind` in a Flux Kustomization file."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))["spec"]
    entry = next(e for e in spec["healthCheckExprs"] if e["kind"] == kind)
    return {key: entry[key] for key in ("inProgress", "failed", "current") if key in entry}


def health(exprs: dict[str, str], obj: dict[str, Any]) -> str:
    """`InProgress`, `Failed` or `Current`."""
    environment = celpy.Environment()
    activation = {key: celpy.json_to_cel(value) for key, value in obj.items()}
    for key, result in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        if key not in exprs:
            continue
        program = environment.program(environment.compile(exprs[key]))
        try:
            value = program.evaluate(activation)
        except celpy.CELEvalError:
            return "InProgress"
        if isinstance(value, celpy.CELEvalError):
            return "InProgress"
        if bool(value):
            return result
    return "InProgress"
