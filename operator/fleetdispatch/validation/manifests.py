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

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Final, NoReturn

import yaml

from fleetdispatch.api import models, names
from fleetdispatch.validation.admission import admit
from fleetdispatch.validation.messages import FieldError, format_invalid
from fleetdispatch.validation.values import MAX_DEPTH, MAX_VALUES, server_integer

CRD_FILES = ("fleetdispatches.yaml", "quotapools.yaml", "fleetcampaigns.yaml")


@cache
def crds() -> dict[str, dict[str, Any]]:
    """The packaged CRDs by kind (`FleetDispatch`, `QuotaPool`, `FleetCampaign`)."""
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
    if kind == "FleetCampaign":
        models.check_campaign_names(_name(obj), models.parse_campaign_spec(obj.get("spec")))
        return
    models.check_name(_name(obj))
    spec = models.parse_spec(obj.get("spec"))
    if old is not None:
        models.check_update(models.parse_spec(old.get("spec")), spec)


def _name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    return str(metadata.get("name", "")) if isinstance(metadata, Mapping) else ""


def documents(text: str) -> list[Mapping[str, Any]]:
    """The YAML documents of a file that are objects; `ValueError`, with a one-line reason, when it is not
    YAML, or is YAML that no API server would be sent (the limits below)."""
    if len(text) > MAX_FILE_CHARACTERS:
        raise ValueError(f"larger than {MAX_FILE_CHARACTERS // 2**20} MiB, the API server's request limit")
    try:
        _within_limits(text)
        return [document for document in yaml.load_all(text, Loader=_Loader) if isinstance(document, Mapping)]
    except yaml.YAMLError as error:
        raise ValueError(f"not valid YAML: {error}".replace("\n", " ")) from None


# What `documents` reads, and why its limits: kubectl expands aliases (go-yaml refuses "excessive
# aliasing" and an anchor that contains itself) and sends JSON, which has no infinities; the API server
# takes at most 3 MiB a request and decodes an integer beyond int64 as a float64. The depth and value
# limits are admission's own (values.MAX_DEPTH, MAX_VALUES), checked here on the events, before any
# object is built: an alias bomb is refused before it is expanded.
MAX_FILE_CHARACTERS: Final = 3 * 2**20


def _refuse(problem: str, mark: Any) -> NoReturn:
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    raise ValueError(problem + where)


def _within_limits(text: str) -> None:
    """Refuse, from the event stream alone (before anything is built), a file nested deeper than
    MAX_DEPTH or holding more than MAX_VALUES values once its aliases are expanded, and an anchor that
    contains itself."""
    # Per open collection: [anchor, values in it so far, depth of the collections in it].
    open_nodes: list[list[Any]] = []
    anchored: dict[str, tuple[int, int]] = {}  # anchor -> (values, depth) of what it names
    values = 0
    aliases = False

    def add(count: int, depth: int, mark: Any) -> None:
        nonlocal values
        values += count
        if values > MAX_VALUES:
            if aliases:
                _refuse(
                    f"not valid YAML: document contains excessive aliasing (more than {MAX_VALUES} "
                    "values once its aliases are expanded)",
                    mark,
                )
            _refuse(f"more than {MAX_VALUES} values", mark)
        if len(open_nodes) + depth > MAX_DEPTH:
            _refuse(f"nested more than {MAX_DEPTH} levels deep", mark)
        if open_nodes:
            open_nodes[-1][1] += count
            open_nodes[-1][2] = max(open_nodes[-1][2], depth)

    for event in yaml.parse(text, Loader=_Loader):
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.CollectionStartEvent):
            add(1, 1, event.start_mark)
            open_nodes.append([anchor, 0, 0])
        elif isinstance(event, yaml.CollectionEndEvent):
            name, count, depth = open_nodes.pop()
            if name is not None:
                anchored[name] = (count + 1, depth + 1)
            if open_nodes:  # what the collection held counts in the one around it too
                open_nodes[-1][1] += count
                open_nodes[-1][2] = max(open_nodes[-1][2], depth + 1)
        elif isinstance(event, yaml.ScalarEvent):
            add(1, 0, event.start_mark)
            if anchor is not None:
                anchored[anchor] = (1, 0)
        elif isinstance(event, yaml.AliasEvent):
            if any(node[0] == anchor for node in open_nodes):
                _refuse(f"not valid YAML: anchor {anchor!r} value contains itself", event.start_mark)
            aliases = True
            count, depth = anchored.get(str(anchor), (1, 0))  # an unknown one: the loader says so
            add(count, depth, event.start_mark)


def _int64(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | float | str:
    """An integer as the API server reads it (`values.server_integer`)."""
    try:
        value = loader.construct_yaml_int(node)
    except ValueError:  # more digits than Python reads: far beyond float64, kubectl reads the text
        return str(node.value)
    return server_integer(value)


def _json_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    """A float, refused when JSON cannot carry it (kubectl's YAML-to-JSON conversion refuses it so)."""
    value = loader.construct_yaml_float(node)
    if not math.isfinite(value):
        spelt = "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
        _refuse(f"error converting YAML to JSON: json: unsupported value: {spelt}", node.start_mark)
    return value


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (libyaml's when there is one) with integers and floats read as the server does."""


_Loader.add_constructor("tag:yaml.org,2002:int", _int64)
_Loader.add_constructor("tag:yaml.org,2002:float", _json_float)
