"""An object's identity, checked as the server checks it before the schema: its type and its ObjectMeta.

:func:`served_version` finds the CRD version an object's ``apiVersion``/``kind`` name (or the errors saying
they name no served one); :func:`metadata_errors` checks what ObjectMeta validation checks of a custom
resource: ``metadata.name`` (or ``generateName``) a DNS-1123 subdomain, a namespaced object's
``metadata.namespace`` a DNS-1123 label, and on update name and namespace immutable.

Deliberately not done (a known difference from a real API server): only name, generateName and namespace
are checked, not labels, annotations, finalizers or owner references, and the metadata of embedded
resources is not checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from fleetdispatch.validation.messages import INVALID, REQUIRED, UNSUPPORTED, FieldError, go_quote
from fleetdispatch.validation.values import Schema, json_type, mapping

__all__ = ["metadata_errors", "served_version"]

_DNS1123_LABEL: Final = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN: Final = _DNS1123_LABEL + "(\\." + _DNS1123_LABEL + ")*"
_SUBDOMAIN_MESSAGE: Final = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    f"'{_DNS1123_SUBDOMAIN}')"
)
_LABEL_MESSAGE: Final = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    f"and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    f"'{_DNS1123_LABEL}')"
)


def _dns1123(value: str, pattern: str, limit: int, message: str) -> list[str]:
    """apimachinery's IsDNS1123Subdomain/IsDNS1123Label: the length problem, then the pattern problem."""
    problems = []
    if len(value) > limit:
        problems.append(f"must be no more than {limit} characters")
    if not re.fullmatch(pattern, value):
        problems.append(message)
    return problems


def _dns1123_subdomain(value: str) -> list[str]:
    return _dns1123(value, _DNS1123_SUBDOMAIN, 253, _SUBDOMAIN_MESSAGE)


def _dns1123_label(value: str) -> list[str]:
    return _dns1123(value, _DNS1123_LABEL, 63, _LABEL_MESSAGE)


def _mask_trailing_dash(name: str) -> str:
    """What the server checks of a generateName prefix (apimachinery's maskTrailingDash, quirk included)."""
    return name[:-2] + "a" if len(name) > 1 and name.endswith("-") else name


def metadata_errors(
    obj: Mapping[str, Any], old: Mapping[str, Any] | None, *, namespaced: bool
) -> list[FieldError]:
    """The ObjectMeta errors of a create, or with ``old`` of an update."""
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, Mapping):
        return [FieldError("metadata", INVALID, "must be an object", json_type(meta))]
    meta = meta or {}
    name, generate_name = meta.get("name"), meta.get("generateName")
    namespace = meta.get("namespace")
    errors: list[FieldError] = []
    if old is not None:
        old_meta = mapping(old.get("metadata"))
        for field in ("name", "namespace"):
            if meta.get(field) != old_meta.get(field):
                errors.append(FieldError(f"metadata.{field}", INVALID, "field is immutable", meta.get(field)))
        return errors
    if generate_name:
        for problem in _dns1123_subdomain(_mask_trailing_dash(str(generate_name))):
            errors.append(FieldError("metadata.generateName", INVALID, problem, generate_name))
    if not name:
        if not generate_name:
            errors.append(FieldError("metadata.name", REQUIRED, "name or generateName is required"))
    else:
        for problem in _dns1123_subdomain(str(name)):
            errors.append(FieldError("metadata.name", INVALID, problem, name))
    if namespaced and namespace:
        for problem in _dns1123_label(str(namespace)):
            errors.append(FieldError("metadata.namespace", INVALID, problem, namespace))
    return errors


def served_version(crd: Mapping[str, Any], obj: Mapping[str, Any]) -> tuple[Schema | None, list[FieldError]]:
    """The CRD version (its entry in ``spec.versions``) ``obj`` names, or None and the errors saying it
    names no served one. A malformed CRD raises :class:`ValueError`."""
    spec = crd.get("spec")
    if not isinstance(spec, Mapping):
        raise ValueError("not a CustomResourceDefinition: no spec")
    group = spec.get("group")
    kind = mapping(spec.get("names")).get("kind")
    versions = spec.get("versions")
    if not isinstance(group, str) or not isinstance(kind, str) or not isinstance(versions, list):
        raise ValueError(
            "not an apiextensions.k8s.io/v1 CustomResourceDefinition: need group, names.kind, versions"
        )
    served = {
        f"{group}/{v['name']}": v
        for v in versions
        if isinstance(v, Mapping) and v.get("served") and v.get("name")
    }
    errors: list[FieldError] = []
    api_version = obj.get("apiVersion")
    supported = ", ".join(go_quote(v) for v in served)
    if not api_version:
        errors.append(FieldError("apiVersion", REQUIRED, ""))
    elif not isinstance(api_version, str) or api_version not in served:
        errors.append(FieldError("apiVersion", UNSUPPORTED, f"supported values: {supported}", api_version))
    if not obj.get("kind"):
        errors.append(FieldError("kind", REQUIRED, ""))
    elif obj.get("kind") != kind:
        errors.append(FieldError("kind", UNSUPPORTED, f"supported values: {go_quote(kind)}", obj.get("kind")))
    if errors:
        return None, errors
    return served[str(api_version)], []
