"""The API server's words for a refused object: error kinds, field paths, printed values, the 422 texts.

Here: :class:`FieldError` (k8s.io/apimachinery's ``field.Error``) and its kinds; the field paths as the
server spells them (``spec.rules[0].action``, ``<nil>`` for the object as a whole, kube-openapi's error
names turned into paths); Go's printing of a bad value; :class:`Collector`, the errors of one admission in
report order and whether one of them stops CEL evaluation; and the two renderings of a list of errors,
:func:`format_invalid` as ``kubectl`` prints a 422 and :func:`invalid_status_message` as the server words
the Status message.

The messages follow Kubernetes 1.35 and later (tests/cluster/test_admission_agreement.py holds them against
the dev cluster's kube-apiserver): a failed CEL rule prints the offending value when it is a scalar
(``spec.name: Invalid value: "x": message``) and no value for an object or an array (``spec: Invalid
value: message``); other bad values print as Go's ``%v``/``%q`` for scalars and as JSON otherwise
(``Duplicate value: {"name":"session"}``, ``Invalid value: null``). Releases up to 1.34 printed the
schema type of a CEL rule's value (``"object"``) and Go syntax for maps (``map[string]interface {}{...}``).

Deliberately not here: deciding what is wrong (the validators do), and the order of the errors (each phase
adds them in the object's field order; :mod:`.admission` runs the phases in the server's order).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

__all__ = [
    "CEL_SKIPPED",
    "DUPLICATE",
    "FORBIDDEN",
    "INTERNAL",
    "INVALID",
    "NIL_PATH",
    "OMITTED",
    "REQUIRED",
    "TOO_LONG",
    "TOO_MANY",
    "UNKNOWN_FIELD",
    "UNSUPPORTED",
    "Collector",
    "FieldError",
    "at_most",
    "child_path",
    "format_invalid",
    "go_float",
    "go_json",
    "go_quote",
    "invalid_status_message",
    "openapi_path",
    "render_path",
]

# The error kinds, spelled as k8s.io/apimachinery/pkg/util/validation/field prints them.
INVALID: Final = "Invalid value"
REQUIRED: Final = "Required value"
UNSUPPORTED: Final = "Unsupported value"
TOO_LONG: Final = "Too long"
TOO_MANY: Final = "Too many"
DUPLICATE: Final = "Duplicate value"
FORBIDDEN: Final = "Forbidden"
INTERNAL: Final = "Internal error"
UNKNOWN_FIELD: Final = "unknown field"  # a strict-decoding error, not a field.Error

# Kinds printed without the bad value (field.Error.ErrorBody).
_VALUELESS_KINDS: Final = frozenset({REQUIRED, FORBIDDEN, TOO_LONG, INTERNAL})
# Kinds that stop CEL evaluation (apiextensions strategy.hasBlockingErr); wrong-type errors also block, but
# print as "Invalid value", so the schema pass says so itself.
_BLOCKING_KINDS: Final = frozenset({UNSUPPORTED, REQUIRED, TOO_LONG, TOO_MANY})
# The detail of the placeholder error that stands for the CEL rules a blocking error kept from running.
CEL_SKIPPED: Final = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)
NIL_PATH: Final = "<nil>"


class _Omit:
    """The bad value of an error that prints none (field.OmitValueType)."""

    def __repr__(self) -> str:
        return "<omitted>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Omit)

    def __hash__(self) -> int:
        return 0


OMITTED: Final = _Omit()


@dataclass(frozen=True)
class FieldError:
    """One validation error, as k8s.io/apimachinery's ``field.Error``.

    ``path`` is the field path (``spec.rules[0].action``, or ``<nil>`` for the object as a whole), ``kind``
    one of the module's kind constants, ``detail`` the message after the kind, ``value`` the offending value
    (printed for all kinds but Required, Forbidden and Too long).
    """

    path: str
    kind: str
    detail: str
    value: object = None

    def __str__(self) -> str:
        if self.kind == UNKNOWN_FIELD:
            return f"unknown field {go_quote(self.path)}"
        if self.kind in _VALUELESS_KINDS or isinstance(self.value, _Omit):
            body = self.kind
        else:
            body = f"{self.kind}: {_go_value(self.value)}"
        if self.detail:
            body += f": {self.detail}"
        return f"{self.path}: {body}"


class Collector:
    """Errors in report order, and whether any of them stops CEL evaluation."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []
        self.blocking = False

    def add(self, error: FieldError, *, blocking: bool = False) -> None:
        self.errors.append(error)
        if blocking or error.kind in _BLOCKING_KINDS:
            self.blocking = True

    def merge(self, other: Collector) -> None:
        self.errors.extend(other.errors)
        self.blocking = self.blocking or other.blocking


def at_most(limit: int) -> str:
    """The detail of a Too many error."""
    return f"must have at most {limit} {'item' if limit == 1 else 'items'}"


# --------------------------------------------------------------------------------------------------------
# Field paths
# --------------------------------------------------------------------------------------------------------


def child_path(path: str, name: str) -> str:
    """The path of property ``name`` below ``path``."""
    return f"{path}.{name}" if path else name


def render_path(path: str) -> str:
    """A field.Path rendered; the root (a nil path) prints as ``<nil>``."""
    return path or NIL_PATH


def openapi_path(name: str) -> str:
    """The field path apiextensions derives from a kube-openapi error name."""
    trimmed = name[1:] if name.startswith(".") else name
    return trimmed if name and name != "." else NIL_PATH


# --------------------------------------------------------------------------------------------------------
# Go value formatting (fmt %v, %q, %#v as field.Error uses them)
# --------------------------------------------------------------------------------------------------------

_GO_ESCAPES: Final = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def go_quote(text: str) -> str:
    """strconv.Quote."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def go_float(number: float) -> str:
    """fmt's %v for a float64: the shortest digits, in %e form for exponents below -4 or from 6 up."""
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    if number == 0:
        return "-0" if math.copysign(1.0, number) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(number)).as_tuple()
    assert isinstance(exponent, int)
    point = len(digit_tuple) + exponent  # value = 0.<digits> * 10**point
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    power = point - 1
    prefix = "-" if sign else ""
    if power < -4 or power >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'+' if power >= 0 else '-'}{abs(power):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return prefix + digits + "0" * (point - len(digits))
    return f"{prefix}{digits[:point]}.{digits[point:]}"


def _go_value(value: object) -> str:
    """How field.Error.ErrorBody prints a bad value: %v for numbers and booleans, %q for strings, and
    encoding/json for the rest (objects, arrays, null); booleans and integers print alike both ways."""
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return go_quote(value)
    return _go_marshal(value)


def _go_json_float(number: float) -> str:
    """encoding/json's float64: %f-like between 1e-6 and 1e21, else the shortest %e with a short exponent.

    JSON has no infinities or NaN (encoding/json refuses them, and so a value with one never reaches a
    server); they print as %v does."""
    if not math.isfinite(number):
        return go_float(number)
    if number == 0 or 1e-6 <= abs(number) < 1e21:
        text = repr(number)
        if "e" in text or "E" in text:
            text = format(Decimal(text), "f")
        return text[:-2] if text.endswith(".0") else text
    mantissa, _, exponent = repr(number).partition("e")
    power = int(exponent)
    return f"{mantissa.removesuffix('.0')}e{'-' if power < 0 else '+'}{abs(power):d}"


def _go_marshal(value: object) -> str:
    """encoding/json.Marshal of an unstructured value: sorted keys, no spaces, HTML characters escaped."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_json_float(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
            text = text.replace(char, escaped)
        return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    if isinstance(value, Mapping):
        items = ",".join(f"{_go_marshal(str(k))}:{_go_marshal(value[k])}" for k in sorted(value, key=str))
        return "{" + items + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_go_marshal(v) for v in value) + "]"
    return _go_marshal(str(value))


def go_json(value: object) -> str:
    """encoding/json.Marshal, near enough for enum values."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


# --------------------------------------------------------------------------------------------------------
# Rendering a list of errors
# --------------------------------------------------------------------------------------------------------


def format_invalid(kind: str, name: str, errors: Sequence[FieldError]) -> str:
    """The message ``kubectl`` prints for a 422, without its final newline.

    One error: ``The FleetDispatch "demo" is invalid: spec.x: ...``; several: a header line ending in
    ``is invalid: `` followed by one ``* <error>`` line each.
    """
    header = f"The {kind} {go_quote(name)} is invalid"
    if not errors:
        return header
    if len(errors) == 1:
        return f"{header}: {errors[0]}"
    return "\n".join([f"{header}: ", *(f"* {error}" for error in errors)])


def invalid_status_message(qualified_kind: str, name: str, errors: Sequence[FieldError]) -> str:
    """The ``message`` of the API server's 422 Status (``errors.NewInvalid``).

    ``qualified_kind`` is ``Kind.group`` (``FleetDispatch.fleet.dispatch.dev``). Several errors are listed
    in brackets, duplicates once, as an apimachinery aggregate prints them.
    """
    texts = list(dict.fromkeys(str(error) for error in errors))
    if not texts:
        aggregate = "<nil>"
    elif len(errors) == 1 or len(texts) == 1:
        aggregate = texts[0]
    else:
        aggregate = "[" + ", ".join(texts) + "]"
    return f"{qualified_kind} {go_quote(name)} is invalid: {aggregate}"
