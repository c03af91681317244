"""The OpenAPI v3 value validations of a structural schema, as kube-openapi's validator reports them.

:class:`SchemaValidator` walks a (pruned, defaulted) object along its schema and reports, in the
validator's order at each node: ``type`` (and ``x-kubernetes-int-or-string``, ``nullable``),
``allOf``/``anyOf``/``oneOf``/``not``, string lengths, ``pattern`` and ``format``, number bounds and
``multipleOf`` (and an integer's range for its format), item counts, ``enum``, property counts, the members
and ``required``. Errors are worded as kube-openapi's errors package words them and converted as
apiextensions converts them (a plain error, such as a failed ``anyOf``, lands at the nil path).

Deliberately not done (each a known difference from a real API server):

* ``anyOf``/``oneOf``: when every alternative fails, the sub-errors shown are those of the alternative with
  the fewest errors; kube-openapi picks by a match count that usually, not always, agrees.
* Errors in different properties of one object come in the object's field order; the server's order varies
  from request to request (kube-openapi walks the schema's properties, a Go map), so compare them as a set.

``pattern`` uses RE2 (``google-re2``), as Go does. The list-type checks and CEL rules are the next phases
(:mod:`.listtypes`, :mod:`.cel`).
"""

from __future__ import annotations

import functools
import math
import operator
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeGuard

from fleetdispatch.validation.formats import conforms, fits_integer, supported_format
from fleetdispatch.validation.messages import (
    INVALID,
    NIL_PATH,
    REQUIRED,
    TOO_LONG,
    TOO_MANY,
    UNSUPPORTED,
    Collector,
    FieldError,
    at_most,
    child_path,
    go_float,
    go_json,
    go_quote,
    openapi_path,
)
from fleetdispatch.validation.values import Schema, json_type, mapping, members, schema_type

try:  # Go's regexp is RE2; cel-python depends on google-re2, so it is normally present.
    import re2 as _re2  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - fallback for an unusual install
    _re2 = re

__all__ = ["SchemaValidator"]


@functools.lru_cache(maxsize=256)
def _pattern(pattern: str) -> tuple[Any, str]:
    """A compiled RE2 pattern, or None and the compile error."""
    try:
        return _re2.compile(pattern), ""
    except Exception as exc:  # re2 raises its own error type
        message = exc.args[0] if exc.args else exc
        if isinstance(message, bytes):
            message = message.decode(errors="replace")
        return None, f"error parsing regexp: {message}"


def _json_equal(a: object, b: object) -> bool:
    """Equality of decoded JSON values that keeps booleans apart from numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _is_number(value: object) -> TypeGuard[int | float]:
    """A JSON number (not a boolean)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


# The bounds of a number: keyword, its exclusive flag, the relation a value must have, and the test of a
# value beyond it.
_BOUNDS: Final[tuple[tuple[str, str, str, Callable[[Any, Any], bool]], ...]] = (
    ("minimum", "exclusiveMinimum", "greater than", operator.lt),
    ("maximum", "exclusiveMaximum", "less than", operator.gt),
)


def _json_integer(number: float) -> bool:
    """go-openapi's swag.IsFloat64AJSONInteger, which decides whether a float64 may stand for an integer:
    within +-(2**53 - 1), and integral up to a relative error of 1e-9 (for a positive number: Go's uint64
    of a negative one is far from it, so a negative one must be integral exactly)."""
    if not math.isfinite(number) or abs(number) > 2**53 - 1:
        return False
    if number.is_integer():
        return True
    truncated = float(math.trunc(number))
    if number < 0 or truncated == 0:
        return False
    return abs(number - truncated) / min(number + truncated, sys.float_info.max) < 1e-9


class SchemaValidator:
    """One pass of kube-openapi's SchemaValidator over a value; errors go to ``out``."""

    def __init__(self, out: Collector) -> None:
        self.out = out

    # -- error constructors (message texts from k8s.io/kube-openapi/pkg/validation/errors) --

    def _type_error(self, name: str, type_name: str, value: object) -> None:
        if isinstance(value, str):
            message = f"{name} in body must be of type {type_name}: {go_quote(value)}"
        else:
            message = f"{name} in body must be of type {type_name}"
        shown = "" if value is None else value
        self.out.add(FieldError(openapi_path(name), INVALID, message, shown), blocking=True)

    def _invalid(self, name: str, value: object, message: str) -> None:
        self.out.add(FieldError(openapi_path(name), INVALID, message, "" if value is None else value))

    def _composite(self, message: str) -> None:
        # errors.New(...) errors are not *Validation: apiextensions reports them at the nil path.
        self.out.add(FieldError(NIL_PATH, INVALID, message, ""))

    # -- the validators, in SchemaValidator order --

    def node(self, schema: Schema, data: Any, name: str) -> None:
        """Validate ``data`` against ``schema``; ``name`` is its kube-openapi name ("" at the root)."""
        types = ["integer", "string"] if schema.get("x-kubernetes-int-or-string") is True else []
        if not types and schema_type(schema):
            types = [schema_type(schema)]
        fmt = supported_format(schema)
        if data is None:
            if types and "null" not in types and not schema.get("nullable", False):
                self._type_error(name, ",".join(types), "null")
            self._enum(schema, data, name)
            return
        if types or fmt:
            self._type(types, fmt, data, name)
        self._composition(schema, data, name)
        kind = json_type(data)
        if kind == "string":
            self._string(schema, data, name)
            if not conforms(fmt, data):
                self._type_error(name, fmt, data)
        elif kind in ("integer", "number"):
            self._number(schema, data, name)
        elif kind == "array":
            self._array(schema, data, name)
        self._enum(schema, data, name)
        if kind == "object":
            self._object(schema, data, name)

    def _type(self, types: list[str], fmt: str, data: Any, name: str) -> None:
        kind = json_type(data)
        data_format = {"integer": "int64", "number": "float64"}.get(kind, "")
        is_float_int = kind == "number" and _json_integer(float(data)) and "integer" in types
        is_int_float = kind == "integer" and "number" in types
        matches = kind in types or is_float_int or is_int_float
        if kind not in ("string", "array") and fmt and not (matches or data_format == fmt):
            self._type_error(name, fmt, data_format)
            return
        if "number" not in types and "integer" not in types and fmt and kind in ("string", "array"):
            return
        if not matches:
            self._type_error(name, ",".join(types), kind)

    def _composition(self, schema: Schema, data: Any, name: str) -> None:
        def run(sub: object) -> Collector:
            result = Collector()
            SchemaValidator(result).node(mapping(sub), data, name)
            return result

        any_of = schema.get("anyOf")
        if isinstance(any_of, list) and any_of:
            results = [run(sub) for sub in any_of]
            if not any(not r.errors for r in results):
                self._composite(f"{go_quote(name)} must validate at least one schema (anyOf)")
                self.out.merge(min(results, key=lambda r: len(r.errors)))
        one_of = schema.get("oneOf")
        if isinstance(one_of, list) and one_of:
            results = [run(sub) for sub in one_of]
            valid = sum(1 for r in results if not r.errors)
            if valid != 1:
                found = "Found none valid" if valid == 0 else f"Found {valid} valid alternatives"
                self._composite(f"{go_quote(name)} must validate one and only one schema (oneOf). {found}")
                if valid == 0:
                    self.out.merge(min(results, key=lambda r: len(r.errors)))
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            results = [run(sub) for sub in all_of]
            for result in results:
                self.out.merge(result)
            valid = sum(1 for r in results if not r.errors)
            if valid != len(results):
                suffix = ". None validated" if valid == 0 else ""
                self._composite(f"{go_quote(name)} must validate all the schemas (allOf){suffix}")
        not_schema = schema.get("not")
        if isinstance(not_schema, Mapping) and not run(not_schema).errors:
            self._composite(f"{go_quote(name)} must not validate the schema (not)")

    def _string(self, schema: Schema, data: str, name: str) -> None:
        max_length = schema.get("maxLength")
        if isinstance(max_length, int) and len(data) > max_length:
            noun = "byte" if max_length == 1 else "bytes"
            self.out.add(
                FieldError(openapi_path(name), TOO_LONG, f"may not be more than {max_length} {noun}", data)
            )
            return
        min_length = schema.get("minLength")
        if isinstance(min_length, int) and len(data) < min_length:
            self._invalid(name, data, f"{name} in body should be at least {min_length} chars long")
            return
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and pattern:
            compiled, error = _pattern(pattern)
            if compiled is None:
                self._invalid(
                    name, data, f"{name} in body should match '{pattern}, but pattern is invalid: {error}'"
                )
            elif compiled.search(data) is None:
                self._invalid(name, data, f"{name} in body should match '{pattern}'")

    def _number(self, schema: Schema, data: int | float, name: str) -> None:
        is_int = isinstance(data, int)
        if schema_type(schema) == "integer" and not fits_integer(data, supported_format(schema)):
            fmt = supported_format(schema)
            kind = f"with format {fmt}" if fmt else "(default format)"
            self._composite(f"Checked value must be of type integer {kind} in {name}")

        def bound(limit: int | float) -> tuple[int | float, str]:
            # Integers are compared with the bound truncated to an int64, as MinimumNativeType does.
            if is_int:
                return int(limit), str(int(limit))
            return float(limit), go_float(float(limit))

        multiple = schema.get("multipleOf")
        if _is_number(multiple) and multiple != 0:
            if is_int and int(multiple) != 0:
                factor_text, bad = str(int(multiple)), data % int(multiple) != 0
            else:
                ratio = (1 / multiple) * data if multiple < 1 else data / multiple
                factor_text, bad = (
                    go_float(float(multiple)),
                    abs(ratio - round(ratio)) > 1e-9 * max(1.0, abs(ratio)),
                )
            if bad:
                self._invalid(name, data, f"{name} in body should be a multiple of {factor_text}")
        for keyword, exclusive_keyword, relation, beyond in _BOUNDS:
            bound_value = schema.get(keyword)
            if _is_number(bound_value):
                limit, text = bound(bound_value)
                exclusive = schema.get(exclusive_keyword) is True
                if beyond(data, limit) or (exclusive and data == limit):
                    wording = relation if exclusive else f"{relation} or equal to"
                    self._invalid(name, data, f"{name} in body should be {wording} {text}")

    def _array(self, schema: Schema, data: list[Any], name: str) -> None:
        items = schema.get("items")
        if isinstance(items, Mapping):
            for index, item in enumerate(data):
                self.node(items, item, f"{name}[{index}]")
        min_items = schema.get("minItems")
        if isinstance(min_items, int) and len(data) < min_items:
            self._invalid(name, len(data), f"{name} in body should have at least {min_items} items")
        max_items = schema.get("maxItems")
        if isinstance(max_items, int) and len(data) > max_items:
            self.out.add(FieldError(openapi_path(name), TOO_MANY, at_most(max_items), len(data)))

    def _enum(self, schema: Schema, data: Any, name: str) -> None:
        values = schema.get("enum")
        if not isinstance(values, list) or not values:
            return
        if data is not None and any(_json_equal(data, v) for v in values):
            return
        supported = ", ".join(go_quote(v if isinstance(v, str) else go_json(v)) for v in values)
        self.out.add(FieldError(openapi_path(name), UNSUPPORTED, f"supported values: {supported}", data))

    def _object(self, schema: Schema, data: Mapping[str, Any], name: str) -> None:
        min_props = schema.get("minProperties")
        if isinstance(min_props, int) and len(data) < min_props:
            self._invalid(name, len(data), f"{name} in body should have at least {min_props} properties")
            return
        max_props = schema.get("maxProperties")
        if isinstance(max_props, int) and len(data) > max_props:
            self.out.add(FieldError(openapi_path(name), TOO_MANY, at_most(max_props), len(data)))
            return
        for key, value, member, declared in members(schema, data):
            self.node(member, value, child_path(name, key) if declared else f"{name}.{key}")
        required = schema.get("required")
        if isinstance(required, list):
            for key in required:
                if key not in data:
                    self.out.add(FieldError(openapi_path(f"{name}.{key}"), REQUIRED, ""))
