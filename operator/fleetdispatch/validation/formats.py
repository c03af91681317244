"""The ``format`` of a schema node: which formats the server keeps, and whether a value conforms to one.

apiextensions keeps the formats of its supported list and strips the others when a CRD is written;
:func:`supported_format` says what is left of a node's ``format``. :func:`conforms` checks a string as
kube-openapi's strfmt registry does (``date-time``, ``uuid``, ``ipv4``, ``cidr``, ``byte``, ``duration``...),
:func:`fits_integer` an integer against ``int32``/``int64`` (or the default, int64).

Deliberately not done (each a known difference from a real API server):

* ``isbn``, ``isbn10``, ``isbn13`` and ``creditcard`` are always accepted; ``email``, ``uri`` and
  ``hostname`` are close approximations of govalidator's rules.
* Formats the server strips as unsupported (``uint32`` on an integer, ``made-up``...) are ignored, as the
  server ignores them.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import math
import re
from collections.abc import Callable
from typing import Final

from fleetdispatch.validation.values import Schema, schema_type

__all__ = ["conforms", "fits_integer", "supported_format"]

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
# fmt: off
_DURATION_UNITS: Final = frozenset({
    "ns", "nano", "nanos", "nanosec", "nanosecs", "nanosecond", "nanoseconds", "us", "µs", "micro", "micros",
    "microsec", "microsecs", "microsecond", "microseconds", "ms", "milli", "millis", "millisec", "millisecs",
    "millisecond", "milliseconds", "s", "sec", "secs", "second", "seconds", "m", "min", "mins", "minute",
    "minutes", "h", "hr", "hrs", "hour", "hours", "d", "day", "days", "w", "wk", "wks", "week", "weeks"
})
# fmt: on
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


# The string formats apiextensions supports, by name without dashes (strfmt's lookup ignores them).
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


def supported_format(schema: Schema) -> str:
    """The schema's format, or "" when apiextensions strips it as unsupported."""
    name = schema.get("format")
    if not isinstance(name, str) or not name:
        return ""
    kind = schema_type(schema)
    if kind == "integer":
        return name if name in ("int32", "int64") else ""
    if kind == "number":
        return name if name in ("float", "double") else ""
    if kind in ("", "string"):
        return name if name.replace("-", "") in _FORMAT_CHECKS else ""
    return ""


def conforms(fmt: str, text: str) -> bool:
    """Whether a string is of format ``fmt`` (a supported format, or ""); formats of numbers pass."""
    check = _FORMAT_CHECKS.get(fmt.replace("-", ""))
    return check is None or check(text)


_INTEGER_RANGES: Final = {
    "int32": (-(2**31), 2**31 - 1),
    "": (-(2**63), 2**63 - 1),
    "int64": (-(2**63), 2**63 - 1),
}


def fits_integer(value: int | float, fmt: str) -> bool:
    """kube-openapi's IsValueValidAgainstRange for an integer schema: the value, printed as Go's
    FormatFloat(v, 'f', -1, 64) or FormatInt prints it, parses as an integer of the format's size."""
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return False
        value = int(value)
    low, high = _INTEGER_RANGES.get(fmt, _INTEGER_RANGES[""])
    return low <= value <= high
