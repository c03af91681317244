"""Offline admission of custom resources: what the API server does to a CR on create and update.

Given a CRD (``apiextensions.k8s.io/v1``) and a manifest, :func:`admit` reproduces the API server's request
path for custom resources, in the server's own order, each step in its own module:

1. **Unknown fields** (:mod:`.pruning`): fields the structural schema does not declare are dropped. With
   ``strict=True`` (what ``kubectl apply`` asks for, ``fieldValidation=Strict``) each one is reported as
   ``unknown field "spec.foo"``.
2. **Defaulting** (:mod:`.defaults`): a property's ``default`` fills it in when it is missing, recursively.
3. **Identity** (:mod:`.objectmeta`): ``apiVersion``/``kind`` must name a served version of the CRD (checked
   first of all: it picks the schema), then the object's name and namespace as ObjectMeta validation
   checks them.
4. **Validation** (:func:`validate`): the OpenAPI v3 value validations (:mod:`.schema`, formats in
   :mod:`.formats`), then the ``x-kubernetes-list-type`` ``set``/``map`` uniqueness checks
   (:mod:`.listtypes`), then the CEL ``x-kubernetes-validations`` rules (:mod:`.cel`). Like the server, CEL
   rules do not run at all when a *blocking* error was found (wrong type or format, unsupported enum value,
   missing required field, too long, too many); a placeholder error then says so.

Errors are :class:`~.messages.FieldError`; ``str()`` gives exactly the line the API server puts in its 422
response, paths included (:mod:`.messages` has the wording, and ``kubectl``'s and the Status message's
renderings of a list). Errors come in the server's phase order (unknown fields, metadata, schema,
list-type, CEL) and, within a phase, in the order of the object's fields.

Known differences from a real API server, each detailed in the module named:

* No validation ratcheting: an update is validated as fully as a create, whereas the server (1.30+)
  tolerates invalid values an update leaves unchanged.
* CEL (:mod:`.cel`, :mod:`.cel_library`): no ``messageExpression``, no cost budgets, no type checking of
  rules when the CRD is written, no ``optionalOldSelf``, no timestamps or durations, only some of the
  Kubernetes CEL libraries.
* ``anyOf``/``oneOf`` sub-errors, and the order of errors in different properties (:mod:`.schema`).
* A few formats approximated or always accepted (:mod:`.formats`).
* ObjectMeta: only name, generateName and namespace (:mod:`.objectmeta`). With a status subresource a
  main-resource write leaves ``status`` alone, as on the server: it is neither validated nor stored.
* With ``strict=True`` the server answers unknown fields with a 400 before it validates anything; ``admit``
  reports the unknown fields *and* goes on validating the pruned object, which is more useful to a linter.
* Objects nested more than 100 levels deep or holding more than 100,000 values (:mod:`.values`) are
  refused whole (``<nil>: Forbidden: ...``); the server allows 10,000 levels and any size up to its 3 MiB
  request limit.
* YAML timestamps (``datetime``/``date`` objects from a YAML loader) are turned back into RFC 3339 strings;
  the original spelling cannot be recovered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetdispatch.validation.cel import CelValidator
from fleetdispatch.validation.defaults import default_in_place
from fleetdispatch.validation.listtypes import validate_list_types
from fleetdispatch.validation.messages import (
    CEL_SKIPPED,
    FORBIDDEN,
    INVALID,
    NIL_PATH,
    UNKNOWN_FIELD,
    Collector,
    FieldError,
)
from fleetdispatch.validation.objectmeta import metadata_errors, served_version
from fleetdispatch.validation.pruning import prune
from fleetdispatch.validation.schema import SchemaValidator
from fleetdispatch.validation.values import Schema, mapping, plain, shape_problem

__all__ = ["admit", "validate"]


def _validate(
    schema: Schema, obj: Any, old: Any | None, out: Collector, *, resource_root: bool
) -> list[FieldError]:
    SchemaValidator(out).node(schema, obj, "")
    lists = Collector()
    validate_list_types(schema, obj, lists)
    if old is not None and lists.errors:
        previous = Collector()
        validate_list_types(schema, old, previous)
        if previous.errors:  # the server only checks the new lists when the old ones were sound
            lists = Collector()
    out.merge(lists)
    if out.blocking:
        out.add(FieldError(NIL_PATH, INVALID, CEL_SKIPPED, None))
    else:
        CelValidator(out).node(schema, obj, old, "", root=resource_root)
    return out.errors


def validate(
    schema: Mapping[str, Any], obj: Any, old: Any | None = None, *, resource_root: bool = True
) -> list[FieldError]:
    """Validate an (already defaulted) object against a structural schema, CEL rules included.

    ``old`` is the stored object of an update: it turns on the transition rules. ``resource_root`` says
    ``obj`` is a whole resource, whose CEL ``self`` also shows ``apiVersion``, ``kind`` and
    ``metadata.name``/``generateName``. Errors are returned, never raised.
    """
    for value in (obj, old):
        problem = shape_problem(value)
        if problem is not None:
            return [FieldError(NIL_PATH, FORBIDDEN, problem)]
    plain_old = plain(old) if old is not None else None
    return _validate(schema, plain(obj), plain_old, Collector(), resource_root=resource_root)


def admit(
    crd: Mapping[str, Any],
    obj: Mapping[str, Any],
    old: Mapping[str, Any] | None = None,
    *,
    strict: bool = True,
) -> tuple[dict[str, Any], list[FieldError]]:
    """Admit ``obj`` (a create, or with ``old`` an update) as the API server would, offline.

    Returns the object as the server would store it (pruned and defaulted) and the errors it would report;
    an empty list means the server would accept it. With ``strict`` unknown fields are errors, otherwise
    they are dropped silently. A malformed CRD raises :class:`ValueError`; a bad object never raises: one
    too deep or too large to walk (:func:`~.values.shape_problem`) is refused whole, unwalked.
    """
    for value in (obj, old):
        problem = shape_problem(value)
        if problem is not None:
            return dict(obj), [FieldError(NIL_PATH, FORBIDDEN, problem)]
    version, errors = served_version(crd, obj)
    if version is None:
        return plain(obj), errors
    schema = mapping(mapping(version.get("schema")).get("openAPIV3Schema"))
    pruned, unknown = prune(schema, obj)
    if strict:
        errors.extend(FieldError(path, UNKNOWN_FIELD, "") for path in unknown)
    stored = default_in_place(schema, pruned)
    previous = default_in_place(schema, prune(schema, old)[0]) if old is not None else None
    if "status" in mapping(version.get("subresources")):
        # A write to the main resource leaves the status alone (the strategy's PrepareForCreate drops it,
        # PrepareForUpdate keeps the stored one), before validation: only /status writes change it.
        stored.pop("status", None)
        if previous is not None and "status" in previous:
            stored["status"] = previous["status"]
    namespaced = mapping(crd.get("spec")).get("scope", "Namespaced") == "Namespaced"
    out = Collector()
    for error in metadata_errors(stored, previous, namespaced=namespaced):
        out.add(error)
    _validate(schema, stored, previous, out, resource_root=True)
    return _stored_numbers(stored), errors + out.errors


def _stored_numbers(value: Any) -> Any:
    """A value as it reads back from etcd: a number without a fraction is an integer there (the server
    writes float64 60 as ``60``, which decodes as int64), whatever the manifest spelt."""
    if isinstance(value, dict):
        return {k: _stored_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stored_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value
