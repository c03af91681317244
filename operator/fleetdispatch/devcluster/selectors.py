"""Label and field selectors, as the API server parses and matches them on list and watch.

Label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists) and ``!k``
(does not exist), comma-separated, all of which must hold. Field selectors: ``path=v``, ``path==v`` and
``path!=v`` over dotted paths (``metadata.name``, ``status.phase``, ``spec.nodeName``); a missing field
compares as the empty string. Unlike a real server, every path is selectable on every kind: the dev cluster
is permissive where a real server would refuse an unsupported field with a 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Matcher = Callable[[Mapping[str, Any]], bool]

_TERMS = re.compile(r",(?![^()]*\))")
_SET_TERM = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_KEY = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$")


class SelectorError(ValueError):
    """A selector that does not parse; the server answers it with a 400."""


def _terms(selector: str) -> list[str]:
    return [term.strip() for term in _TERMS.split(selector) if term.strip()]


def _key(text: str, selector: str) -> str:
    key = text.strip()
    if not _KEY.match(key):
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r} in {selector!r}")
    return key


def _label_term(term: str, selector: str) -> Callable[[Mapping[str, str]], bool]:
    if match := _SET_TERM.match(term):
        key, operator = _key(match.group(1), selector), match.group(2)
        values = frozenset(value.strip() for value in match.group(3).split(","))
        if operator == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if "!=" in term:
        key, value = (part.strip() for part in term.split("!=", 1))
        key = _key(key, selector)
        return lambda labels: labels.get(key) != value
    if "=" in term:
        key, value = (part.strip() for part in re.split(r"==?", term, maxsplit=1))
        key = _key(key, selector)
        return lambda labels: labels.get(key) == value
    if term.startswith("!"):
        key = _key(term[1:], selector)
        return lambda labels: key not in labels
    key = _key(term, selector)
    return lambda labels: key in labels


def labels_matcher(selector: str | None) -> Callable[[Mapping[str, str]], bool]:
    """A predicate over a label map; raises :class:`SelectorError` on a malformed selector."""
    tests = [_label_term(term, selector or "") for term in _terms(selector or "")]
    return lambda labels: all(test(labels) for test in tests)


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _field_term(term: str, selector: str) -> Matcher:
    negate = "!=" in term
    parts = re.split(r"!=|==?", term, maxsplit=1)
    if len(parts) != 2 or not parts[0].strip():
        raise SelectorError(f"invalid field selector: {selector!r}")
    path, value = parts[0].strip(), parts[1].strip()
    if negate:
        return lambda obj: _field_value(obj, path) != value
    return lambda obj: _field_value(obj, path) == value


def fields_matcher(selector: str | None) -> Matcher:
    """A predicate over a whole object; raises :class:`SelectorError` on a malformed selector."""
    tests = [_field_term(term, selector or "") for term in _terms(selector or "")]
    return lambda obj: all(test(obj) for test in tests)


def object_matcher(label_selector: str | None, field_selector: str | None) -> Matcher:
    """Both selectors over one object (labels read from ``metadata.labels``)."""
    labels = labels_matcher(label_selector)
    fields = fields_matcher(field_selector)

    def matches(obj: Mapping[str, Any]) -> bool:
        metadata = obj.get("metadata") or {}
        return labels(metadata.get("labels") or {}) and fields(obj)

    return matches
