"""The functions a CEL rule may call beyond cel-python's own: cel-go's semantics and Kubernetes' libraries.

:data:`FUNCTIONS` is handed to every compiled rule. It overrides cel-python's equality with cel-go's
heterogeneous equality (``1 == 1.0``, ``1 != 'a'`` instead of an error) and its ordering with cel-go's
cross-type numeric comparisons, and adds of the Kubernetes CEL libraries the string functions
``charAt``, ``indexOf``, ``lastIndexOf``, ``lowerAscii``, ``upperAscii``, ``replace``, ``split``,
``substring``, ``trim``, ``join`` and the list functions ``isSorted``, ``sum``, ``min``, ``max``.

Deliberately not here (a known difference from a real API server): the other Kubernetes libraries; a rule
calling anything else (``quantity()``, ``url()``, ``format()``...) reports an evaluation error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from celpy import celtypes
from celpy.evaluation import CELEvalError, base_functions

__all__ = ["FUNCTIONS"]


# -- cel-go behaviour cel-python lacks: heterogeneous equality, cross-type numeric ordering --


def _is_number(value: object) -> bool:
    return isinstance(value, celtypes.IntType | celtypes.UintType | celtypes.DoubleType) and not isinstance(
        value, celtypes.BoolType
    )


def _cel_equal(a: Any, b: Any) -> bool:
    """cel-go's equality of two CEL values: numbers across types, never an error."""
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


# -- the Kubernetes CEL library functions provided (strings and lists) --


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


def _extremum(pick: Callable[[list[Any]], Any], name: str) -> Callable[..., Any]:
    """The library's ``min``/``max``: of a list, or of the arguments."""

    def extremum(items: Any, *more: Any) -> Any:
        values = [*items, *more] if isinstance(items, celtypes.ListType) else [items, *more]
        if not values:
            raise ValueError(f"{name} called on an empty list")
        return pick(values)

    return extremum


FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
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
    "min": _extremum(min, "min"),
    "max": _extremum(max, "max"),
}
