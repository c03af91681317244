"""Offline admission of custom resources: what the API server does to a CR on create and update.

Given a CRD (``apiextensions.k8s.io/v1``) and a manifest, :func:`admit` reproduces the API server's request
path for custom resources, in the server's own order:

1. **Unknown fields** (:func:`prune`): fields the structural schema does not declare are dropped. With
   ``strict=True`` (what ``kubectl apply`` asks for, ``fieldValidation=Strict``) each one is reported as
   ``unknown field "spec.foo"``. ``x-kubernetes-preserve-unknown-fields`` keeps undeclared fields (declared
   ones below it are still pruned and validated), ``additionalProperties`` (a schema, or ``true``) declares
   maps, and ``apiVersion``/``kind``/``metadata`` are kept at the root and in embedded resources.
2. **Defaulting** (:func:`apply_defaults`): a property's ``default`` fills it in when it is missing (or null
   and not ``nullable``), recursively, so a defaulted object receives its children's defaults, in list items
   too. A ``null`` for a non-nullable property without a default is removed, as the server does: null stands
   for "absent". (Null list items and map values are not removed; they fail validation.)
3. **Validation** (:func:`validate`): the OpenAPI v3 value validations as the server's kube-openapi
   validator reports them (type, ``format``, ``enum``, ``pattern``, lengths, bounds, ``multipleOf``, item and
   property counts, ``required``, ``allOf``/``anyOf``/``oneOf``/``not``), then the
   ``x-kubernetes-list-type`` ``set``/``map`` uniqueness checks, then the CEL ``x-kubernetes-validations``
   rules, evaluated with ``cel-python``. Like the server, CEL rules do not run at all when a *blocking* error
   was found (wrong type or format, unsupported enum value, missing required field, too long, too many); a
   placeholder error then says so. Transition rules (rules that use ``oldSelf``) run only on update, and only
   where the old object has a value at the same place, correlated through object properties, map keys and
   the keys of ``x-kubernetes-list-type: map`` lists (never through other lists).
4. ``admit`` also checks the object's identity the way the server's ObjectMeta validation does:
   ``apiVersion``/``kind`` must name a served version of the CRD, ``metadata.name`` (or ``generateName``)
   must be a DNS-1123 subdomain, a namespaced object's ``metadata.namespace`` a DNS-1123 label, and on update
   name and namespace are immutable.

Errors are :class:`FieldError`; ``str()`` gives exactly the line the API server puts in its 422 response
(``spec.x: Invalid value: 0: spec.x in body should be greater than or equal to 1``), paths included: the
schema validator names map keys ``spec.labels.key`` while list-type and CEL errors use ``spec.labels[key]``,
and an error about the object as a whole has the path ``<nil>``, all as the server prints them.
:func:`format_invalid` renders a list the way ``kubectl`` prints a 422, :func:`invalid_status_message` the
way the server words the Status message. Errors come in the server's phase order (unknown fields, metadata,
schema, list-type, CEL) and, within a phase, in the order of the object's fields.

The messages follow Kubernetes 1.35 and later (tests/test_admission_agreement.py holds them against the
dev cluster's kube-apiserver): a failed CEL rule prints the offending value when it is a scalar
(``spec.name: Invalid value: "x": message``) and no value for an object or an array (``spec: Invalid
value: message``); other bad values print as Go's ``%v``/``%q`` for scalars and as JSON otherwise
(``Duplicate value: {"name":"session"}``, ``Invalid value: null``). Releases up to 1.34 printed the
schema type of a CEL rule's value (``"object"``) and Go syntax for maps (``map[string]interface {}{...}``).

Deliberately not done (each a known difference from a real API server):

* No validation ratcheting: an update is validated as fully as a create, whereas the server (1.30+)
  tolerates invalid values an update leaves unchanged.
* CEL: no ``messageExpression`` (``message`` or ``failed rule: <rule>`` is used), no cost budgets, no type
  checking of rules when the CRD is written (a rule that does not compile or does not return a bool is
  reported against the object). Rules with ``optionalOldSelf: true`` are skipped: cel-python has no optional
  types. Date-time and duration strings stay strings in CEL (the server turns ``format: date-time`` into
  timestamps). Sets and map lists compare as ordinary lists in CEL. Of the Kubernetes CEL libraries only the
  string functions ``charAt``, ``indexOf``, ``lastIndexOf``, ``lowerAscii``, ``upperAscii``, ``replace``,
  ``split``, ``substring``, ``trim``, ``join`` and the list functions ``isSorted``, ``sum``, ``min``, ``max``
  are provided, plus cel-go's cross-type numeric comparisons and heterogeneous equality. A rule calling
  anything else (``quantity()``, ``url()``, ``format()``...) reports an evaluation error.
* ``anyOf``/``oneOf``: when every alternative fails, the sub-errors shown are those of the alternative with
  the fewest errors; kube-openapi picks by a match count that usually, not always, agrees.
* Formats: the server's supported formats are checked except ``isbn``, ``isbn10``, ``isbn13`` and
  ``creditcard`` (always accepted); ``email``, ``uri`` and ``hostname`` are close approximations of
  govalidator's rules. Formats the server strips as unsupported (``uint32`` on an integer, ``made-up``...)
  are ignored, as the server ignores them; ``int32``/``int64`` bound an integer's range. ``pattern`` uses
  RE2 (``google-re2``), as Go does.
* ObjectMeta: only name, generateName and namespace are checked, not labels, annotations, finalizers or
  owner references; the metadata of embedded resources is not checked. (With a status subresource a
  main-resource write leaves ``status`` alone, as on the server: it is neither validated nor stored.)
* Errors in different properties of one object come in the object's field order; the server's order varies
  from request to request (kube-openapi walks the schema's properties, a Go map), so compare them as a set.
* With ``strict=True`` the server answers unknown fields with a 400 before it validates anything; ``admit``
  reports the unknown fields *and* goes on validating the pruned object, which is more useful to a linter.
* YAML timestamps (``datetime``/``date`` objects from a YAML loader) are turned back into RFC 3339 strings;
  the original spelling cannot be recovered.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import celpy
from celpy import celtypes
from celpy.evaluation import CELEvalError, base_functions

try:  # Go's regexp is RE2; cel-python depends on google-re2, so it is normally present.
    import re2 as _re2  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - fallback for an unusual install
    _re2 = re

__all__ = [
    "DUPLICATE",
    "FORBIDDEN",
    "INVALID",
    "OMITTED",
    "REQUIRED",
    "TOO_LONG",
    "TOO_MANY",
    "UNKNOWN_FIELD",
    "UNSUPPORTED",
    "FieldError",
    "admit",
    "apply_defaults",
    "format_invalid",
    "invalid_status_message",
    "prune",
    "validate",
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
# print as "Invalid value", so the schema pass tracks them itself.
_BLOCKING_KINDS: Final = frozenset({UNSUPPORTED, REQUIRED, TOO_LONG, TOO_MANY})
_CEL_SKIPPED: Final = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)
_NIL_PATH: Final = "<nil>"
_META_FIELDS: Final = ("apiVersion", "kind", "metadata")

Schema = Mapping[str, Any]


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
            return f"unknown field {_go_quote(self.path)}"
        if self.kind in _VALUELESS_KINDS or isinstance(self.value, _Omit):
            body = self.kind
        else:
            body = f"{self.kind}: {_go_value(self.value)}"
        if self.detail:
            body += f": {self.detail}"
        return f"{self.path}: {body}"


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


def _go_quote(text: str) -> str:
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


def _go_float(number: float) -> str:
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
    encoding/json for the rest (objects, arrays, null)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return _go_quote(value)
    return _go_marshal(value)


def _go_json_float(number: float) -> str:
    """encoding/json's float64: %f-like between 1e-6 and 1e21, else the shortest %e with a short exponent."""
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


def _go_json(value: object) -> str:
    """encoding/json.Marshal, near enough for enum values."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


# --------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A deep copy made of dicts, lists and JSON scalars (YAML timestamps become RFC 3339 strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime.datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def _json_type(value: object) -> str:
    """The JSON schema type of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


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


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _field(path: str) -> str:
    """A field.Path rendered; the root (a nil path) prints as ``<nil>``."""
    return path or _NIL_PATH


def _schema_type(schema: Schema) -> str:
    value = schema.get("type")
    return value if isinstance(value, str) else ""


def _mapping(value: object) -> Schema:
    return value if isinstance(value, Mapping) else {}


# --------------------------------------------------------------------------------------------------------
# Formats (the apiextensions list of supported formats, checked as kube-openapi's strfmt does)
# --------------------------------------------------------------------------------------------------------

_DATE_TIME_CLOCK: Final = re.compile(
    r"^([0-9]{2}):([0-9]{2}):([0-9]{2})(.[0-9]+)?(z|([+-][0-9]{2}:[0-9]{2}))$"
)
_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_UUID: Final = re.compile(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$")
_UUID3: Final = re.compile(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?3[0-9a-f]{3}-?[0-9a-f]{4}-?[0-9a-f]{12}$")
_UUID4: Final = re.compile(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$")
_UUID5: Final = re.compile(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?5[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$")
_BASE64: Final = re.compile(
    r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"
)
_MAC: Final = re.compile(
    r"^(?:[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){7}"
    r"|[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){19}|[0-9A-Fa-f]{4}(?:\.[0-9A-Fa-f]{4}){2}"
    r"|[0-9A-Fa-f]{4}(?:\.[0-9A-Fa-f]{4}){3}|[0-9A-Fa-f]{4}(?:\.[0-9A-Fa-f]{4}){9})$"
)
_HOST_CHAR: Final = r"[^\W_]"  # letters and digits, any script (strfmt also allows symbols)
_HOSTNAME: Final = re.compile(
    rf"^({_HOST_CHAR}((-?{_HOST_CHAR}{{0,62}})?)|({_HOST_CHAR}((({_HOST_CHAR}|-){{0,61}}{_HOST_CHAR})?)(\.)){{1,}}"
    rf"({_HOST_CHAR})(-?{_HOST_CHAR}){{1,62}})$"
)
_GO_DURATION: Final = re.compile(r"^[-+]?(?:0|(?:[0-9]*\.?[0-9]+(?:ns|us|µs|μs|ms|s|m|h))+)$")
_LOOSE_DURATION: Final = re.compile(r"([0-9]+)\s*([A-Za-zµ]+)")
_DURATION_UNITS: Final = _words(
    "ns nano nanos nanosec nanosecs nanosecond nanoseconds us µs micro micros microsec microsecs "
    "microsecond microseconds ms milli millis millisec millisecs millisecond milliseconds s sec "
    "secs second seconds m min mins minute minutes h hr hrs hour hours d day days w wk wks week "
    "weeks"
)
_HEXCOLOR: Final = re.compile(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_RGBCOLOR: Final = re.compile(
    r"^rgb\(\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,"
    r"\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*\)$"
)
_SSN: Final = re.compile(r"^\d{3}[- ]?\d{2}[- ]?\d{4}$")
_BSON_OBJECT_ID: Final = re.compile(r"^[0-9a-fA-F]{24}$")
_EMAIL: Final = re.compile(r"^[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+$")
_URI_SCHEME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


def _is_date(text: str) -> bool:
    """time.Parse("2006-01-02", text) succeeds."""
    if not _DATE.fullmatch(text):
        return False
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _is_date_time(text: str) -> bool:
    if len(text) < 4:
        return False
    parts = text.lower().split("t")
    if len(parts) < 2 or not _is_date(parts[0]):
        return False
    match = _DATE_TIME_CLOCK.search(parts[1])
    return match is not None and match[1] <= "23" and match[2] <= "59" and match[3] <= "59"


def _is_ip(text: str, marker: str) -> bool:
    if "%" in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return marker in text


def _is_cidr(text: str) -> bool:
    if "/" not in text or "%" in text:
        return False
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _is_hostname(text: str) -> bool:
    return (
        _HOSTNAME.search(text) is not None
        and len(text.encode()) <= 255
        and all(len(p.encode()) <= 63 for p in text.split("."))
    )


def _is_duration(text: str) -> bool:
    if _GO_DURATION.match(text):
        return True
    return any(unit.lower() in _DURATION_UNITS for _, unit in _LOOSE_DURATION.findall(text))


def _is_byte(text: str) -> bool:
    if not _BASE64.match(text):
        return False
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _is_uri(text: str) -> bool:
    return _URI_SCHEME.match(text) is not None or (
        text.startswith("/") and not any(c.isspace() for c in text)
    )


_FORMAT_CHECKS: Final[dict[str, Callable[[str], bool]]] = {
    "bsonobjectid": lambda s: _BSON_OBJECT_ID.match(s) is not None,
    "uri": _is_uri,
    "email": lambda s: _EMAIL.match(s) is not None,
    "hostname": _is_hostname,
    "ipv4": lambda s: _is_ip(s, "."),
    "ipv6": lambda s: _is_ip(s, ":"),
    "cidr": _is_cidr,
    "mac": lambda s: _MAC.match(s) is not None,
    "uuid": lambda s: _UUID.match(s) is not None,
    "uuid3": lambda s: _UUID3.match(s) is not None,
    "uuid4": lambda s: _UUID4.match(s) is not None,
    "uuid5": lambda s: _UUID5.match(s) is not None,
    "isbn": lambda _: True,
    "isbn10": lambda _: True,
    "isbn13": lambda _: True,
    "creditcard": lambda _: True,
    "ssn": lambda s: _SSN.match(s) is not None,
    "hexcolor": lambda s: _HEXCOLOR.match(s) is not None,
    "rgbcolor": lambda s: _RGBCOLOR.match(s) is not None,
    "byte": _is_byte,
    "password": lambda _: True,
    "date": _is_date,
    "duration": _is_duration,
    "datetime": _is_date_time,
}


def _supported_format(schema: Schema) -> str:
    """The schema's format, or "" when apiextensions strips it as unsupported."""
    name = schema.get("format")
    if not isinstance(name, str) or not name:
        return ""
    kind = _schema_type(schema)
    if kind == "integer":
        return name if name in ("int32", "int64") else ""
    if kind == "number":
        return name if name in ("float", "double") else ""
    if kind in ("", "string"):
        return name if name.replace("-", "") in _FORMAT_CHECKS else ""
    return ""


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


# --------------------------------------------------------------------------------------------------------
# Defaulting
# --------------------------------------------------------------------------------------------------------


_INTEGER_RANGES: Final = {
    "int32": (-(2**31), 2**31 - 1),
    "": (-(2**63), 2**63 - 1),
    "int64": (-(2**63), 2**63 - 1),
}


def _fits_integer(value: int | float, fmt: str) -> bool:
    """kube-openapi's IsValueValidAgainstRange for an integer schema: the value, printed as Go's
    FormatFloat(v, 'f', -1, 64) or FormatInt prints it, parses as an integer of the format's size."""
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return False
        value = int(value)
    low, high = _INTEGER_RANGES.get(fmt, _INTEGER_RANGES[""])
    return low <= value <= high


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


def _has_default(schema: Schema) -> bool:
    return schema.get("default") is not None


def _non_nullable_null(value: object, schema: Schema) -> bool:
    return value is None and not schema.get("nullable", False)


def _default(schema: Schema, value: Any) -> Any:
    """Structural defaulting on a plain copy (mutated in place and returned)."""
    if isinstance(value, dict):
        props = _mapping(schema.get("properties"))
        for name, declared in props.items():
            prop = _mapping(declared)
            if _has_default(prop) and (name not in value or _non_nullable_null(value[name], prop)):
                value[name] = _plain(prop["default"])
        for name in [k for k, v in value.items() if v is None]:
            found = props.get(name)
            if isinstance(found, Mapping) and not _has_default(found) and not found.get("nullable", False):
                del value[name]  # PruneNonNullableNullsWithoutDefaults
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if name in props:
                value[name] = _default(_mapping(props[name]), item)
            elif isinstance(extra, Mapping):
                filled = (
                    _plain(extra["default"])
                    if _non_nullable_null(item, extra) and _has_default(extra)
                    else item
                )
                value[name] = _default(extra, filled)
        return value
    if isinstance(value, list):
        items = _mapping(schema.get("items"))
        for index, item in enumerate(value):
            filled = (
                _plain(items["default"]) if _non_nullable_null(item, items) and _has_default(items) else item
            )
            value[index] = _default(items, filled)
    return value


def apply_defaults(schema: Mapping[str, Any], obj: Any) -> Any:
    """Return a copy of ``obj`` with the schema's defaults applied; ``obj`` is not modified.

    A missing property with a ``default`` gets it (a null one too, unless ``nullable``), and the defaulted
    value gets its own children's defaults. Null values of non-nullable properties without a default are
    removed, as the API server does before defaulting.
    """
    return _default(schema, _plain(obj))


# --------------------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------------------


def _prune(schema: Schema | None, value: Any, path: str, unknown: list[str], *, root: bool) -> Any:
    """Structural pruning of a plain copy, in place (k8s.io/apiextensions-apiserver/.../pruning)."""
    if schema is not None and schema.get("x-kubernetes-preserve-unknown-fields") is True:
        return _skip_prune(schema, value, path, unknown)
    if isinstance(value, dict):
        if schema is None:
            unknown.extend(_child(path, name) for name in value)
            value.clear()
            return value
        props = _mapping(schema.get("properties"))
        extra = schema.get("additionalProperties")
        embedded = schema.get("x-kubernetes-embedded-resource") is True
        for name in list(value):
            if (root or embedded) and name in _META_FIELDS and (name == "metadata" or name not in props):
                continue  # kept as is (the server prunes metadata to ObjectMeta; we leave it alone)
            if name in props:
                value[name] = _prune(
                    _mapping(props[name]), value[name], _child(path, name), unknown, root=False
                )
            elif isinstance(extra, Mapping):
                value[name] = _prune(extra, value[name], _child(path, name), unknown, root=False)
            elif extra is True:
                continue
            else:
                unknown.append(_child(path, name))
                del value[name]
        return value
    if isinstance(value, list):
        items = schema.get("items") if schema is not None else None
        item_schema = items if isinstance(items, Mapping) else None
        for index, item in enumerate(value):
            value[index] = _prune(item_schema, item, f"{path}[{index}]", unknown, root=False)
    return value


def _skip_prune(schema: Schema, value: Any, path: str, unknown: list[str]) -> Any:
    """Below x-kubernetes-preserve-unknown-fields: keep unknown fields, still prune declared ones."""
    if isinstance(value, dict):
        props = _mapping(schema.get("properties"))
        extra = schema.get("additionalProperties")
        embedded = schema.get("x-kubernetes-embedded-resource") is True
        for name in list(value):
            if embedded and name in _META_FIELDS:
                continue
            if name in props:
                value[name] = _prune(
                    _mapping(props[name]), value[name], _child(path, name), unknown, root=False
                )
            elif isinstance(extra, Mapping):
                value[name] = _prune(extra, value[name], _child(path, name), unknown, root=False)
    elif isinstance(value, list):
        items = _mapping(schema.get("items"))
        for index, item in enumerate(value):
            value[index] = _skip_prune(items, item, f"{path}[{index}]", unknown)
    return value


def prune(schema: Mapping[str, Any], obj: Any, *, resource_root: bool = True) -> tuple[Any, list[str]]:
    """Return a copy of ``obj`` without the fields ``schema`` does not declare, and their paths.

    Paths are spelled as the API server's strict field validation spells them (``spec.items[0].foo``).
    With ``resource_root`` (the default) the top-level ``apiVersion``, ``kind`` and ``metadata`` are kept.
    """
    unknown: list[str] = []
    return _prune(schema, _plain(obj), "", unknown, root=resource_root), unknown


# --------------------------------------------------------------------------------------------------------
# OpenAPI schema validation (kube-openapi's validator, through apiextensions' error conversion)
# --------------------------------------------------------------------------------------------------------


def _openapi_path(name: str) -> str:
    """The field path apiextensions derives from a kube-openapi error name."""
    trimmed = name[1:] if name.startswith(".") else name
    return trimmed if name and name != "." else _NIL_PATH


class _Collector:
    """Errors in report order, and whether any of them stops CEL evaluation."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []
        self.blocking = False

    def add(self, error: FieldError, *, blocking: bool = False) -> None:
        self.errors.append(error)
        if blocking or error.kind in _BLOCKING_KINDS:
            self.blocking = True

    def merge(self, other: _Collector) -> None:
        self.errors.extend(other.errors)
        self.blocking = self.blocking or other.blocking


class _SchemaValidator:
    """One pass of kube-openapi's SchemaValidator over a value."""

    def __init__(self, out: _Collector) -> None:
        self.out = out

    # -- error constructors (message texts from k8s.io/kube-openapi/pkg/validation/errors) --

    def _type_error(self, name: str, type_name: str, value: object) -> None:
        if isinstance(value, str):
            message = f"{name} in body must be of type {type_name}: {_go_quote(value)}"
        else:
            message = f"{name} in body must be of type {type_name}"
        shown = "" if value is None else value
        self.out.add(FieldError(_openapi_path(name), INVALID, message, shown), blocking=True)

    def _invalid(self, name: str, value: object, message: str) -> None:
        self.out.add(FieldError(_openapi_path(name), INVALID, message, "" if value is None else value))

    def _composite(self, message: str) -> None:
        # errors.New(...) errors are not *Validation: apiextensions reports them at the nil path.
        self.out.add(FieldError(_NIL_PATH, INVALID, message, ""))

    # -- the validators, in SchemaValidator order --

    def node(self, schema: Schema, data: Any, name: str) -> None:
        types = ["integer", "string"] if schema.get("x-kubernetes-int-or-string") is True else []
        if not types and _schema_type(schema):
            types = [_schema_type(schema)]
        fmt = _supported_format(schema)
        if data is None:
            if types and "null" not in types and not schema.get("nullable", False):
                self._type_error(name, ",".join(types), "null")
            self._enum(schema, data, name)
            return
        if types or fmt:
            self._type(types, fmt, data, name)
        self._composition(schema, data, name)
        kind = _json_type(data)
        if kind == "string":
            self._string(schema, data, name)
            check = _FORMAT_CHECKS.get(fmt.replace("-", ""))
            if check is not None and not check(data):
                self._type_error(name, fmt, data)
        elif kind in ("integer", "number"):
            self._number(schema, data, name)
        elif kind == "array":
            self._array(schema, data, name)
        self._enum(schema, data, name)
        if kind == "object":
            self._object(schema, data, name)

    def _type(self, types: list[str], fmt: str, data: Any, name: str) -> None:
        kind = _json_type(data)
        data_format = {"integer": "int64", "number": "float64"}.get(kind, "")
        is_float_int = kind == "number" and float(data).is_integer() and "integer" in types
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
        def run(sub: object) -> _Collector:
            result = _Collector()
            _SchemaValidator(result).node(_mapping(sub), data, name)
            return result

        any_of = schema.get("anyOf")
        if isinstance(any_of, list) and any_of:
            results = [run(sub) for sub in any_of]
            if not any(not r.errors for r in results):
                self._composite(f"{_go_quote(name)} must validate at least one schema (anyOf)")
                self.out.merge(min(results, key=lambda r: len(r.errors)))
        one_of = schema.get("oneOf")
        if isinstance(one_of, list) and one_of:
            results = [run(sub) for sub in one_of]
            valid = sum(1 for r in results if not r.errors)
            if valid != 1:
                found = "Found none valid" if valid == 0 else f"Found {valid} valid alternatives"
                self._composite(f"{_go_quote(name)} must validate one and only one schema (oneOf). {found}")
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
                self._composite(f"{_go_quote(name)} must validate all the schemas (allOf){suffix}")
        not_schema = schema.get("not")
        if isinstance(not_schema, Mapping) and not run(not_schema).errors:
            self._composite(f"{_go_quote(name)} must not validate the schema (not)")

    def _string(self, schema: Schema, data: str, name: str) -> None:
        max_length = schema.get("maxLength")
        if isinstance(max_length, int) and len(data) > max_length:
            noun = "byte" if max_length == 1 else "bytes"
            self.out.add(
                FieldError(_openapi_path(name), TOO_LONG, f"may not be more than {max_length} {noun}", data)
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
        if _schema_type(schema) == "integer" and not _fits_integer(data, _supported_format(schema)):
            fmt = _supported_format(schema)
            kind = f"with format {fmt}" if fmt else "(default format)"
            self._composite(f"Checked value must be of type integer {kind} in {name}")

        def bound(limit: int | float) -> tuple[int | float, str]:
            # Integers are compared with the bound truncated to an int64, as MinimumNativeType does.
            if is_int:
                return int(limit), str(int(limit))
            return float(limit), _go_float(float(limit))

        multiple = schema.get("multipleOf")
        if isinstance(multiple, int | float) and not isinstance(multiple, bool) and multiple != 0:
            if is_int and int(multiple) != 0:
                factor_text, bad = str(int(multiple)), data % int(multiple) != 0
            else:
                ratio = (1 / multiple) * data if multiple < 1 else data / multiple
                factor_text, bad = (
                    _go_float(float(multiple)),
                    abs(ratio - round(ratio)) > 1e-9 * max(1.0, abs(ratio)),
                )
            if bad:
                self._invalid(name, data, f"{name} in body should be a multiple of {factor_text}")
        minimum = schema.get("minimum")
        if isinstance(minimum, int | float) and not isinstance(minimum, bool):
            limit, text = bound(minimum)
            exclusive = schema.get("exclusiveMinimum") is True
            if data < limit or (exclusive and data <= limit):
                relation = "greater than" if exclusive else "greater than or equal to"
                self._invalid(name, data, f"{name} in body should be {relation} {text}")
        maximum = schema.get("maximum")
        if isinstance(maximum, int | float) and not isinstance(maximum, bool):
            limit, text = bound(maximum)
            exclusive = schema.get("exclusiveMaximum") is True
            if data > limit or (exclusive and data >= limit):
                relation = "less than" if exclusive else "less than or equal to"
                self._invalid(name, data, f"{name} in body should be {relation} {text}")

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
            self.out.add(FieldError(_openapi_path(name), TOO_MANY, _at_most(max_items), len(data)))

    def _enum(self, schema: Schema, data: Any, name: str) -> None:
        values = schema.get("enum")
        if not isinstance(values, list) or not values:
            return
        if data is not None and any(_json_equal(data, v) for v in values):
            return
        supported = ", ".join(_go_quote(v if isinstance(v, str) else _go_json(v)) for v in values)
        self.out.add(FieldError(_openapi_path(name), UNSUPPORTED, f"supported values: {supported}", data))

    def _object(self, schema: Schema, data: Mapping[str, Any], name: str) -> None:
        min_props = schema.get("minProperties")
        if isinstance(min_props, int) and len(data) < min_props:
            self._invalid(name, len(data), f"{name} in body should have at least {min_props} properties")
            return
        max_props = schema.get("maxProperties")
        if isinstance(max_props, int) and len(data) > max_props:
            self.out.add(FieldError(_openapi_path(name), TOO_MANY, _at_most(max_props), len(data)))
            return
        props = _mapping(schema.get("properties"))
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key, value in data.items():
                if key not in props:
                    self.node(extra, value, f"{name}.{key}")
        for key, value in data.items():
            if key in props:
                self.node(_mapping(props[key]), value, _child(name, key))
        required = schema.get("required")
        if isinstance(required, list):
            for key in required:
                if key not in data:
                    self.out.add(FieldError(_openapi_path(f"{name}.{key}"), REQUIRED, ""))


def _at_most(limit: int) -> str:
    return f"must have at most {limit} {'item' if limit == 1 else 'items'}"


# --------------------------------------------------------------------------------------------------------
# x-kubernetes-list-type set / map
# --------------------------------------------------------------------------------------------------------

_UNSPECIFIED: Final = ("unspecified key",)


def _unique_key(value: object) -> object:
    if isinstance(value, Mapping | list):
        return ("compound", json.dumps(value, sort_keys=True, separators=(",", ":")))
    if value is _UNSPECIFIED:
        return value
    return ("scalar", type(value).__name__, value)


def _non_unique(values: Sequence[object]) -> list[int]:
    """Indices of the second appearance of each repeated value (listtype.validateListSet)."""
    seen: dict[object, int] = {}
    repeated: list[int] = []
    for index, value in enumerate(values):
        key = _unique_key(value)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 2:
            repeated.append(index)
    return repeated


def _list_types(schema: Schema, value: Any, path: str, out: _Collector) -> None:
    if isinstance(value, Mapping):
        props = _mapping(schema.get("properties"))
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key, item in value.items():
                if key not in props:
                    _list_types(extra, item, f"{path}[{key}]", out)
        for key, item in value.items():
            if key in props:
                _list_types(_mapping(props[key]), item, _child(path, key), out)
        return
    if not isinstance(value, list):
        return
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set":
        for index in _non_unique(value):
            out.add(FieldError(f"{path}[{index}]", DUPLICATE, "", value[index]))
    elif list_type == "map":
        _list_map(schema, value, path, out)
    items = schema.get("items")
    if isinstance(items, Mapping):
        for index, item in enumerate(value):
            _list_types(items, item, f"{path}[{index}]", out)


def _list_map(schema: Schema, value: list[Any], path: str, out: _Collector) -> None:
    for index, item in enumerate(value):
        if item is not None and not isinstance(item, Mapping):
            out.add(
                FieldError(
                    f"{path}[{index}]", INVALID, "must be an object for an array of list-type map", item
                )
            )
            return
    key_fields = [k for k in schema.get("x-kubernetes-list-map-keys") or [] if isinstance(k, str)]
    if len(value) <= 1 or not key_fields:
        return
    keys: list[object] = []
    for item in value:
        if len(key_fields) == 1:
            keys.append(item[key_fields[0]] if item is not None and key_fields[0] in item else _UNSPECIFIED)
        else:
            keys.append({k: item[k] for k in key_fields if item is not None and k in item})
    for index in _non_unique(keys):
        key = keys[index]
        shown = key if isinstance(key, dict) else ({} if key is _UNSPECIFIED else {key_fields[0]: key})
        out.add(FieldError(f"{path}[{index}]", DUPLICATE, "", shown))


# --------------------------------------------------------------------------------------------------------
# CEL
# --------------------------------------------------------------------------------------------------------

_CEL_RESERVED: Final = _words(
    "true false null in as break const continue else for function if import let loop package "
    "namespace return var void while"
)
_CEL_ESCAPED: Final = re.compile(r"(__|[^a-zA-Z0-9_])")
_CEL_ESCAPES: Final = {"__": "__underscores__", ".": "__dot__", "-": "__dash__", "/": "__slash__"}
_OLD_SELF: Final = re.compile(r"\boldSelf\b")
_CEL_STRINGS: Final = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _cel_escape(name: str) -> str | None:
    """The CEL name of a property (apiserver/schema/cel escaping), or None if CEL cannot see it."""
    if not name or name[0].isdigit():
        return None
    if name in _CEL_RESERVED:
        return f"__{name}__"
    ok = True

    def replace(match: re.Match[str]) -> str:
        nonlocal ok
        if match[0] not in _CEL_ESCAPES:
            ok = False
        return _CEL_ESCAPES.get(match[0], "")

    escaped = _CEL_ESCAPED.sub(replace, name)
    return escaped if ok else None


def _cel_dyn(value: Any) -> Any:
    """A value with no schema (below x-kubernetes-preserve-unknown-fields) as CEL sees it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, list):
        return celtypes.ListType([_cel_dyn(v) for v in value])
    if isinstance(value, Mapping):
        return celtypes.MapType({celtypes.StringType(k): _cel_dyn(v) for k, v in value.items()})
    return celtypes.StringType(str(value))


def _to_cel(schema: Schema, value: Any, *, root: bool = False) -> Any:
    """A value as a CEL rule on ``schema`` sees it: declared properties only, escaped names, typed numbers."""
    if isinstance(value, int) and not isinstance(value, bool) and _schema_type(schema) == "number":
        return celtypes.DoubleType(float(value))  # a JSON 1 in a `number` field is a CEL double
    if isinstance(value, list):
        items = _mapping(schema.get("items"))
        return celtypes.ListType([_to_cel(items, v) for v in value])
    if not isinstance(value, Mapping):
        return _cel_dyn(value)
    props = _mapping(schema.get("properties"))
    extra = schema.get("additionalProperties")
    embedded = root or schema.get("x-kubernetes-embedded-resource") is True
    if props or embedded:
        fields: dict[Any, Any] = {}
        for key, item in value.items():
            if embedded and key in _META_FIELDS:
                if key == "metadata" and isinstance(item, Mapping):
                    meta = {k: item[k] for k in ("name", "generateName") if isinstance(item.get(k), str)}
                    fields[celtypes.StringType(key)] = _cel_dyn(meta)
                elif isinstance(item, str):
                    fields[celtypes.StringType(key)] = celtypes.StringType(item)
                continue
            cel_name = _cel_escape(key) if key in props else None
            if cel_name is not None:
                fields[celtypes.StringType(cel_name)] = _to_cel(_mapping(props[key]), item)
        return celtypes.MapType(fields)
    if isinstance(extra, Mapping):
        return celtypes.MapType({celtypes.StringType(k): _to_cel(extra, v) for k, v in value.items()})
    return _cel_dyn(value)


# -- cel-go behaviour cel-python lacks: heterogeneous equality, cross-type numeric ordering --


def _is_number(value: object) -> bool:
    return isinstance(value, celtypes.IntType | celtypes.UintType | celtypes.DoubleType) and not isinstance(
        value, celtypes.BoolType
    )


def _cel_equal(a: Any, b: Any) -> bool:
    if isinstance(a, celtypes.BoolType) or isinstance(b, celtypes.BoolType):
        return isinstance(a, celtypes.BoolType) and isinstance(b, celtypes.BoolType) and bool(a) == bool(b)
    if _is_number(a) and _is_number(b):
        return bool(a == b) if type(a) is type(b) else float(a) == float(b)
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, celtypes.ListType) and isinstance(b, celtypes.ListType):
        return len(a) == len(b) and all(_cel_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, celtypes.MapType) and isinstance(b, celtypes.MapType):
        return len(a) == len(b) and all(k in b and _cel_equal(v, b[k]) for k, v in a.items())
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:
        return False


def _cel_eq(a: Any, b: Any) -> Any:
    if isinstance(a, CELEvalError):
        return a
    if isinstance(b, CELEvalError):
        return b
    return celtypes.BoolType(_cel_equal(a, b))


def _cel_ne(a: Any, b: Any) -> Any:
    result = _cel_eq(a, b)
    return result if isinstance(result, CELEvalError) else celtypes.BoolType(not result)


def _numeric_relation(name: str) -> Callable[[Any, Any], Any]:
    base = base_functions[name]

    def relation(a: Any, b: Any) -> Any:
        if _is_number(a) and _is_number(b) and type(a) is not type(b):
            a, b = celtypes.DoubleType(float(a)), celtypes.DoubleType(float(b))
        return base(a, b)

    return relation


# -- a few Kubernetes CEL library functions (strings and lists) --


def _cel_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("no such overload")
    return str(value)


def _ext_char_at(text: Any, index: Any) -> Any:
    text = _cel_str(text)
    if not 0 <= int(index) <= len(text):
        raise IndexError(f"index out of range: {int(index)}")
    return celtypes.StringType(text[int(index) : int(index) + 1])


def _ext_index_of(target: Any, item: Any, start: Any = 0) -> Any:
    if isinstance(target, celtypes.ListType):
        return celtypes.IntType(next((i for i, v in enumerate(target) if _cel_equal(v, item)), -1))
    return celtypes.IntType(_cel_str(target).find(_cel_str(item), int(start)))


def _ext_last_index_of(target: Any, item: Any, end: Any = None) -> Any:
    if isinstance(target, celtypes.ListType):
        found = [i for i, v in enumerate(target) if _cel_equal(v, item)]
        return celtypes.IntType(found[-1] if found else -1)
    text = _cel_str(target)
    limit = len(text) if end is None else int(end) + len(_cel_str(item))
    return celtypes.IntType(text.rfind(_cel_str(item), 0, limit))


def _ext_lower_ascii(text: Any) -> Any:
    return celtypes.StringType("".join(c.lower() if c.isascii() else c for c in _cel_str(text)))


def _ext_upper_ascii(text: Any) -> Any:
    return celtypes.StringType("".join(c.upper() if c.isascii() else c for c in _cel_str(text)))


def _ext_replace(text: Any, old: Any, new: Any, count: Any = -1) -> Any:
    return celtypes.StringType(_cel_str(text).replace(_cel_str(old), _cel_str(new), int(count)))


def _ext_split(text: Any, separator: Any, limit: Any = -1) -> Any:
    text, separator, limit = _cel_str(text), _cel_str(separator), int(limit)
    if limit == 0:
        return celtypes.ListType([])
    if separator == "":
        parts = list(text)
        if limit > 0 and len(parts) > limit:
            parts = [*parts[: limit - 1], "".join(parts[limit - 1 :])]
    else:
        parts = text.split(separator, limit - 1 if limit > 0 else -1)
    return celtypes.ListType([celtypes.StringType(p) for p in parts])


def _ext_substring(text: Any, start: Any, end: Any = None) -> Any:
    text = _cel_str(text)
    stop = len(text) if end is None else int(end)
    if not 0 <= int(start) <= stop <= len(text):
        raise IndexError("index out of range")
    return celtypes.StringType(text[int(start) : stop])


def _ext_trim(text: Any) -> Any:
    return celtypes.StringType(_cel_str(text).strip())


def _ext_join(items: Any, separator: Any = "") -> Any:
    return celtypes.StringType(_cel_str(separator).join(_cel_str(v) for v in items))


def _ext_is_sorted(items: Any) -> Any:
    return celtypes.BoolType(all(a <= b for a, b in zip(items, list(items)[1:], strict=False)))


def _ext_sum(items: Any) -> Any:
    values = list(items)
    if not values:
        return celtypes.IntType(0)
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


def _ext_min(items: Any, *more: Any) -> Any:
    values = [*items, *more] if isinstance(items, celtypes.ListType) else [items, *more]
    if not values:
        raise ValueError("min called on an empty list")
    return min(values)


def _ext_max(items: Any, *more: Any) -> Any:
    values = [*items, *more] if isinstance(items, celtypes.ListType) else [items, *more]
    if not values:
        raise ValueError("max called on an empty list")
    return max(values)


_CEL_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    "_==_": _cel_eq,
    "_!=_": _cel_ne,
    "_<_": _numeric_relation("_<_"),
    "_<=_": _numeric_relation("_<=_"),
    "_>_": _numeric_relation("_>_"),
    "_>=_": _numeric_relation("_>=_"),
    "charAt": _ext_char_at,
    "indexOf": _ext_index_of,
    "lastIndexOf": _ext_last_index_of,
    "lowerAscii": _ext_lower_ascii,
    "upperAscii": _ext_upper_ascii,
    "replace": _ext_replace,
    "split": _ext_split,
    "substring": _ext_substring,
    "trim": _ext_trim,
    "join": _ext_join,
    "isSorted": _ext_is_sorted,
    "sum": _ext_sum,
    "min": _ext_min,
    "max": _ext_max,
}


@dataclass(frozen=True)
class _Rule:
    program: Any  # celpy.Runner, or None when the rule does not compile
    error: str
    uses_old_self: bool


@functools.lru_cache(maxsize=1)
def _cel_environment() -> celpy.Environment:
    return celpy.Environment()


@functools.lru_cache(maxsize=1024)
def _compile_rule(rule: str) -> _Rule:
    """Compile a rule once (cached by its text)."""
    uses_old_self = _OLD_SELF.search(_CEL_STRINGS.sub("''", rule)) is not None
    env = _cel_environment()
    try:
        program = env.program(env.compile(rule), functions=_CEL_FUNCTIONS)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _Rule(None, f"compilation failed: {first_line}", uses_old_self)
    return _Rule(program, "", uses_old_self)


def _evaluation_message(exc: BaseException) -> str:
    """A cel-python evaluation error worded as cel-go words it, where the two differ."""
    args = exc.args
    message = str(args[0]) if args else type(exc).__name__
    cause = args[1] if len(args) > 1 else None
    key = re.match(r"no such member in mapping: '(.*)'$", message)
    if key:
        return f"no such key: {key[1]}"
    if message.startswith("found no matching overload") or message.startswith("no such overload"):
        return "no such overload"
    if message == "modulus or divide by zero":
        return "division by zero"
    if message == "invalid_argument" and cause is IndexError:
        return "index out of bounds"
    if message == "return error for overflow" and len(args) > 2 and args[2] == ("overflow",):
        return "integer overflow"
    return message.split(" (in activation", 1)[0]


def _field_path(schema: Schema, field_path: str) -> str | None:
    """A rule's fieldPath as a field path relative to the rule's node (cel.ValidFieldPath), or None."""
    tokens = re.findall(r"\.([^.\[\]]+)|\['((?:[^'\\]|\\.)*)'\]|(.)", field_path)
    path = ""
    node = schema
    for dotted, quoted, junk in tokens:
        if junk:
            return None
        name = dotted or re.sub(r"\\(.)", r"\1", quoted)
        props = _mapping(node.get("properties"))
        extra = node.get("additionalProperties")
        if props:
            if name not in props:
                return None
            path, node = _child(path, name), _mapping(props[name])
        elif isinstance(extra, Mapping):
            path, node = f"{path}[{name}]", extra
        else:
            return None
    return path or None


class _CelValidator:
    def __init__(self, out: _Collector) -> None:
        self.out = out

    def node(self, schema: Schema, value: Any, old: Any, path: str, *, root: bool = False) -> None:
        if value is None:
            return
        rules = schema.get("x-kubernetes-validations")
        if isinstance(rules, list) and rules:
            self._rules(schema, rules, value, old, path, root=root)
        all_of = schema.get("allOf")
        if isinstance(all_of, list):
            for sub in all_of:
                self.node(_mapping(sub), value, old, path, root=root)
        if isinstance(value, list):
            self._array(schema, value, old, path)
        elif isinstance(value, Mapping):
            old_map = old if isinstance(old, Mapping) else {}
            correlatable = schema.get("x-kubernetes-map-type") in (None, "granular", "atomic")
            props = _mapping(schema.get("properties"))
            extra = schema.get("additionalProperties")
            if isinstance(extra, Mapping):
                for key, item in value.items():
                    if key not in props:
                        self.node(extra, item, old_map.get(key) if correlatable else None, f"{path}[{key}]")
            for key, item in value.items():
                if key in props:
                    old_item = old_map.get(key) if correlatable else None
                    self.node(_mapping(props[key]), item, old_item, _child(path, key))

    def _array(self, schema: Schema, value: list[Any], old: Any, path: str) -> None:
        items = _mapping(schema.get("items"))
        old_items: dict[tuple[str, ...], Any] = {}
        key_fields = schema.get("x-kubernetes-list-map-keys") or []
        correlatable = schema.get("x-kubernetes-list-type") == "map" and isinstance(old, list) and key_fields
        if correlatable:
            for item in old:
                if isinstance(item, Mapping):
                    old_items.setdefault(_map_key(item, key_fields), item)
        for index, item in enumerate(value):
            old_item = None
            if correlatable and isinstance(item, Mapping):
                old_item = old_items.get(_map_key(item, key_fields))
            self.node(items, item, old_item, f"{path}[{index}]")

    def _rules(
        self, schema: Schema, rules: list[Any], value: Any, old: Any, path: str, *, root: bool
    ) -> None:
        type_name = _schema_type(schema)
        here = _field(path)
        self_value: Any = None
        old_value: Any = None
        converted = False
        for rule in rules:
            if not isinstance(rule, Mapping):
                continue
            text = str(rule.get("rule", "")).strip()
            if not text:
                continue
            message = str(rule.get("message") or "").strip()
            described = message or text
            compiled = _compile_rule(text)
            if compiled.program is None:
                self.out.add(FieldError(here, INVALID, f"rule compile error: {compiled.error}", type_name))
                continue
            if rule.get("optionalOldSelf") is True:
                continue  # needs CEL optionals, which cel-python lacks
            if compiled.uses_old_self and old is None:
                continue  # a transition rule, and nothing to compare with
            if not converted:
                self_value = _to_cel(schema, value, root=root)
                old_value = _to_cel(schema, old, root=root) if old is not None else None
                converted = True
            activation = {"self": self_value}
            if compiled.uses_old_self:
                activation["oldSelf"] = old_value
            try:
                result = compiled.program.evaluate(activation)
                if isinstance(result, CELEvalError):
                    raise result
            except Exception as exc:
                reason = _evaluation_message(exc)
                if reason == "no such overload":
                    detail = (
                        "'no such overload': call arguments did not match a supported operator, function or "
                        f"macro signature for rule: {described}"
                    )
                else:
                    detail = f"{reason} evaluating rule: {described}"
                self.out.add(FieldError(here, INVALID, detail, type_name))
                continue
            if not isinstance(result, celtypes.BoolType):
                detail = f"rule compile error: rule must evaluate to a bool, not {type(result).__name__}"
                self.out.add(FieldError(here, INVALID, detail, type_name))
                continue
            if result:
                continue
            # The value that broke the rule is printed when it is a scalar (Kubernetes 1.35 and later).
            bad = OMITTED if type_name in ("object", "array") else value
            self._failure(schema, rule, here, path, detail=message or f"failed rule: {text}", value=bad)

    def _failure(
        self, schema: Schema, rule: Mapping[str, Any], here: str, path: str, *, detail: str, value: object
    ) -> None:
        field_path = rule.get("fieldPath")
        if isinstance(field_path, str) and field_path:
            relative = _field_path(schema, field_path)
            if relative is not None:
                here = f"{path}.{relative}" if path and not relative.startswith("[") else path + relative
        reason = rule.get("reason")
        if reason == "FieldValueForbidden":
            self.out.add(FieldError(here, FORBIDDEN, detail))
        elif reason == "FieldValueRequired":
            self.out.add(FieldError(here, REQUIRED, detail))
        elif reason == "FieldValueDuplicate":
            self.out.add(FieldError(here, DUPLICATE, "", value))
        else:
            self.out.add(FieldError(here, INVALID, detail, value))


def _map_key(item: Mapping[str, Any], key_fields: Iterable[Any]) -> tuple[str, ...]:
    return tuple(json.dumps(item.get(k), sort_keys=True) if k in item else "\0" for k in key_fields)


# --------------------------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------------------------


def _validate(
    schema: Schema, obj: Any, old: Any | None, out: _Collector, *, resource_root: bool
) -> list[FieldError]:
    _SchemaValidator(out).node(schema, obj, "")
    lists = _Collector()
    _list_types(schema, obj, "", lists)
    if old is not None and lists.errors:
        previous = _Collector()
        _list_types(schema, old, "", previous)
        if previous.errors:  # the server only checks the new lists when the old ones were sound
            lists = _Collector()
    out.merge(lists)
    if out.blocking:
        out.add(FieldError(_NIL_PATH, INVALID, _CEL_SKIPPED, None))
    else:
        _CelValidator(out).node(schema, obj, old, "", root=resource_root)
    return out.errors


def validate(
    schema: Mapping[str, Any], obj: Any, old: Any | None = None, *, resource_root: bool = True
) -> list[FieldError]:
    """Validate an (already defaulted) object against a structural schema, CEL rules included.

    ``old`` is the stored object of an update: it turns on the transition rules. ``resource_root`` says
    ``obj`` is a whole resource, whose CEL ``self`` also shows ``apiVersion``, ``kind`` and
    ``metadata.name``/``generateName``. Errors are returned, never raised.
    """
    plain_old = _plain(old) if old is not None else None
    return _validate(schema, _plain(obj), plain_old, _Collector(), resource_root=resource_root)


# --------------------------------------------------------------------------------------------------------
# admit
# --------------------------------------------------------------------------------------------------------

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


def _metadata_errors(
    obj: Mapping[str, Any], old: Mapping[str, Any] | None, *, namespaced: bool
) -> list[FieldError]:
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, Mapping):
        return [FieldError("metadata", INVALID, "must be an object", _json_type(meta))]
    meta = meta or {}
    name, generate_name = meta.get("name"), meta.get("generateName")
    namespace = meta.get("namespace")
    errors: list[FieldError] = []
    if old is not None:
        old_meta = _mapping(old.get("metadata"))
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


def _crd_version(crd: Mapping[str, Any], obj: Mapping[str, Any]) -> tuple[Schema | None, list[FieldError]]:
    """The schema of the CRD version ``obj`` names, or the errors saying it names none."""
    spec = crd.get("spec")
    if not isinstance(spec, Mapping):
        raise ValueError("not a CustomResourceDefinition: no spec")
    group = spec.get("group")
    kind = _mapping(spec.get("names")).get("kind")
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
    supported = ", ".join(_go_quote(v) for v in served)
    if not api_version:
        errors.append(FieldError("apiVersion", REQUIRED, ""))
    elif api_version not in served:
        errors.append(FieldError("apiVersion", UNSUPPORTED, f"supported values: {supported}", api_version))
    if not obj.get("kind"):
        errors.append(FieldError("kind", REQUIRED, ""))
    elif obj.get("kind") != kind:
        errors.append(
            FieldError("kind", UNSUPPORTED, f"supported values: {_go_quote(kind)}", obj.get("kind"))
        )
    if errors:
        return None, errors
    version = served[str(api_version)]
    return _mapping(_mapping(version.get("schema")).get("openAPIV3Schema")), []


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
    they are dropped silently. A malformed CRD raises :class:`ValueError`; a bad object never raises.
    """
    schema, errors = _crd_version(crd, obj)
    if schema is None:
        return _plain(obj), errors
    pruned, unknown = prune(schema, obj)
    if strict:
        errors.extend(FieldError(path, UNKNOWN_FIELD, "") for path in unknown)
    stored = _default(schema, pruned)
    previous = _default(schema, prune(schema, old)[0]) if old is not None else None
    if _status_subresource(crd, obj):
        # A write to the main resource leaves the status alone (the strategy's PrepareForCreate drops it,
        # PrepareForUpdate keeps the stored one), before validation: only /status writes change it.
        stored.pop("status", None)
        if previous is not None and "status" in previous:
            stored["status"] = previous["status"]
    namespaced = _mapping(crd.get("spec")).get("scope", "Namespaced") == "Namespaced"
    out = _Collector()
    for error in _metadata_errors(stored, previous, namespaced=namespaced):
        out.add(error)
    _validate(schema, stored, previous, out, resource_root=True)
    return _stored_numbers(stored), errors + out.errors


def _status_subresource(crd: Mapping[str, Any], obj: Mapping[str, Any]) -> bool:
    """Whether the CRD version ``obj`` names has the status subresource."""
    versions = _mapping(crd.get("spec")).get("versions")
    version = str(obj.get("apiVersion", "")).rpartition("/")[2]
    for served in versions if isinstance(versions, list) else []:
        if isinstance(served, Mapping) and served.get("name") == version:
            return "status" in _mapping(served.get("subresources"))
    return False


# --------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------


def format_invalid(kind: str, name: str, errors: Sequence[FieldError]) -> str:
    """The message ``kubectl`` prints for a 422, without its final newline.

    One error: ``The FleetDispatch "demo" is invalid: spec.x: ...``; several: a header line ending in
    ``is invalid: `` followed by one ``* <error>`` line each.
    """
    header = f"The {kind} {_go_quote(name)} is invalid"
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
    return f"{qualified_kind} {_go_quote(name)} is invalid: {aggregate}"
