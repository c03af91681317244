"""Checking manifests offline, twice: as the API server would admit them, and as the operator would read them.

The first check runs the packaged CRDs through `admission` (defaults, structural schema, CEL rules), so a
user or a CI job learns before `kubectl apply` exactly what the API server would answer. The second parses
the defaulted object with the `api` models, which is what the operator does with whatever reaches it. A
manifest is valid when both agree; a disagreement between them is a bug in this project, and the test suite
checks that they agree on every example and on a corpus of invalid manifests.

Deliberately not here: reading files or printing (the command line does that), and kinds that are not ours
(they are reported as skipped: only a real API server knows how to check them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from fleetdispatch.api import models, names
from fleetdispatch.validation.admission import admit
from fleetdispatch.validation.messages import FieldError, format_invalid

CRD_FILES = ("fleetdispatches.yaml", "quotapools.yaml")


@cache
def crds() -> dict[str, dict[str, Any]]:
    """The packaged CRDs by kind (`FleetDispatch`, `QuotaPool`)."""
    folder = resources.files("fleetdispatch.api") / "crds"
    loaded = {}
    for name in CRD_FILES:
        crd = yaml.safe_load((folder / name).read_text(encoding="utf-8"))
        loaded[crd["spec"]["names"]["kind"]] = crd
    return loaded


@dataclass(frozen=True)
class Verdict:
    """One manifest judged: `api_errors` as the API server words them, `model_error` as the operator."""

    kind: str
    name: str
    skipped: bool = False
    api_errors: tuple[FieldError, ...] = ()
    model_error: str | None = None
    defaulted: Mapping[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.skipped or (not self.api_errors and self.model_error is None)

    def explain(self) -> str:
        """The API server's answer when there is one, as kubectl would print it; else the operator's."""
        if self.api_errors:
            return format_invalid(self.kind, self.name, self.api_errors)
        return self.model_error or ""


def check(manifest: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> Verdict:
    """Admit `manifest` (updating `old`, if given) as the API server would; read it as the operator does."""
    kind = str(manifest.get("kind", ""))
    name = _name(manifest)
    group = str(manifest.get("apiVersion", "")).partition("/")[0]
    if group != names.GROUP or kind not in crds():
        return Verdict(kind=kind or "?", name=name, skipped=True)
    defaulted, errors = admit(crds()[kind], manifest, old)
    # The manifest as written, not as admitted: the models must refuse what the API server prunes.
    model_error = _model_error(kind, manifest, old)
    if model_error is not None and not errors:
        # The API server accepts it, and the operator reads what the server stores: a null it dropped or
        # defaulted, a 60.0 it stores as 60, are no error.
        stored_old = admit(crds()[kind], old)[0] if old is not None else None
        model_error = _model_error(kind, defaulted, stored_old)
    return Verdict(
        kind=kind, name=name, api_errors=tuple(errors), model_error=model_error, defaulted=defaulted
    )


def _model_error(kind: str, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> str | None:
    """What the operator's models say of `obj` (updating `old`, if given): None when they accept it."""
    try:
        _parse(kind, obj, old)
    except models.InvalidSpec as error:
        return str(error)
    return None


def _parse(kind: str, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
    if kind == "QuotaPool":
        models.parse_quota_pool_spec(obj.get("spec"))
        return
    models.check_name(_name(obj))
    spec = models.parse_spec(obj.get("spec"))
    if old is not None:
        models.check_update(models.parse_spec(old.get("spec")), spec)


def _name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    return str(metadata.get("name", "")) if isinstance(metadata, Mapping) else ""


def documents(text: str) -> list[Mapping[str, Any]]:
    """The YAML documents of a file that are objects; `ValueError` when it is not YAML."""
    try:
        return [document for document in yaml.safe_load_all(text) if isinstance(document, Mapping)]
    except yaml.YAMLError as error:
        raise ValueError(f"not valid YAML: {error}".replace("\n", " ")) from None
