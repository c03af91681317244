"""The kinds the dev cluster serves: a small built-in set, plus every CRD that is created in it.

A :class:`ResourceType` is what discovery advertises and what the store keys objects by. The built-ins are
the kinds fleet-dispatch, kopf and ``kubectl`` touch (namespaces, pods, events, leases, secrets, config maps,
service accounts, persistent volume claims, CRDs); anything else is a 404, as on a cluster without it.
Custom resources get their type from the CRD object (:func:`from_crd`) and keep the CRD for validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class PrinterColumn:
    """One column of ``kubectl get`` (a CRD's ``additionalPrinterColumns`` entry)."""

    name: str
    type: str
    json_path: str
    priority: int = 0
    description: str = ""


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    crd: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    columns: tuple[PrinterColumn, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        """Objects are stored per (group, plural): one served version per kind here."""
        return (self.group, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version_path(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def qualified(self) -> str:
        """``pods`` or ``fleetdispatches.fleet.dispatch.dev``, as the server names a resource in errors."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def discovery(self) -> list[dict[str, Any]]:
        """Its entries in an ``APIResourceList``: the resource and its subresources."""
        entry: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular or self.kind.lower(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(VERBS),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        entries = [entry]
        if self.status_subresource:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        if (self.group, self.plural) == ("", "pods"):
            entries.append(
                {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]}
            )
        return entries


def _builtin(
    group: str, version: str, plural: str, kind: str, *, namespaced: bool = True, **extra: Any
) -> ResourceType:
    return ResourceType(group, version, plural, kind, namespaced, singular=kind.lower(), **extra)


CRDS = _builtin(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    "CustomResourceDefinition",
    namespaced=False,
    short_names=("crd", "crds"),
    status_subresource=True,
)
NAMESPACES = _builtin(
    "", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",), status_subresource=True
)
PODS = _builtin("", "v1", "pods", "Pod", short_names=("po",), categories=("all",), status_subresource=True)
EVENTS = _builtin("", "v1", "events", "Event", short_names=("ev",))
LEASES = _builtin("coordination.k8s.io", "v1", "leases", "Lease")

BUILTINS: tuple[ResourceType, ...] = (
    NAMESPACES,
    PODS,
    EVENTS,
    _builtin("", "v1", "secrets", "Secret"),
    _builtin("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _builtin(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        short_names=("pvc",),
        status_subresource=True,
    ),
    LEASES,
    CRDS,
)


def from_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    """The served versions of a CRD (``ValueError`` when it lacks what the server requires)."""
    spec = crd.get("spec")
    if not isinstance(spec, Mapping):
        raise ValueError("spec: Required value")
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not (
        isinstance(group, str) and group and isinstance(plural, str) and plural and isinstance(kind, str)
    ):
        raise ValueError("spec.group, spec.names.plural and spec.names.kind are required")
    types = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        columns = tuple(
            PrinterColumn(
                name=column["name"],
                type=column.get("type", "string"),
                json_path=column["jsonPath"],
                priority=int(column.get("priority", 0)),
                description=column.get("description", ""),
            )
            for column in version.get("additionalPrinterColumns") or []
        )
        types.append(
            ResourceType(
                group=group,
                version=version["name"],
                plural=plural,
                kind=kind,
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular") or kind.lower(),
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                status_subresource="status" in (version.get("subresources") or {}),
                crd=crd,
                columns=columns,
            )
        )
    if not types:
        raise ValueError("spec.versions: Required value: at least one served version")
    return types
