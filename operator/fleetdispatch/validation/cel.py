"""The CEL ``x-kubernetes-validations`` rules of a schema, evaluated with ``cel-python`` as the server would.

:class:`CelValidator` walks an object along its schema and runs every node's rules with ``self`` bound to
the node's value as CEL sees it (declared properties only, names escaped, a JSON ``1`` in a
``number`` field a double; at a resource's root also ``apiVersion``, ``kind`` and
``metadata.name``/``generateName``). Rules are compiled once each (cached by their text) in one
environment with the functions of :mod:`.cel_library`. A failed rule reports its ``message`` (or
``failed rule: <rule>``) at the node, or at its ``fieldPath``, with the kind its ``reason`` names; a rule
that does not compile, does not return a bool or fails to evaluate is reported against the node, worded as
cel-go words it. Transition rules (rules that use ``oldSelf``) run only on update, and only where the old
object has a value at the same place, correlated through object properties, map keys and the keys of
``x-kubernetes-list-type: map`` lists (never through other lists).

Deliberately not done (each a known difference from a real API server): no ``messageExpression``
(``message`` or ``failed rule: <rule>`` is used), no cost estimates or budgets, no type checking of rules
when the CRD is written (a rule that does not compile or does not return a bool is reported against the
object). Rules with ``optionalOldSelf: true`` are skipped: cel-python has no optional types. Date-time and
duration strings stay strings in CEL (the server turns ``format: date-time`` into timestamps). Sets and
map lists compare as ordinary lists. Whether the rules run at all (not after a blocking schema error) is
decided by :mod:`.admission`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import celpy
from celpy import celtypes
from celpy.evaluation import CELEvalError

from fleetdispatch.validation.cel_library import FUNCTIONS
from fleetdispatch.validation.messages import (
    DUPLICATE,
    FORBIDDEN,
    INVALID,
    OMITTED,
    REQUIRED,
    Collector,
    FieldError,
    child_path,
    render_path,
)
from fleetdispatch.validation.values import (
    META_FIELDS,
    Schema,
    mapping,
    members,
    schema_type,
    server_integer,
)

__all__ = ["CelValidator"]

# fmt: off
_CEL_RESERVED: Final = frozenset({
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
    "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"
})
# fmt: on
_CEL_ESCAPED: Final = re.compile(r"(__|[^a-zA-Z0-9_])")
_CEL_ESCAPES: Final = {"__": "__underscores__", ".": "__dot__", "-": "__dash__", "/": "__slash__"}
_OLD_SELF: Final = re.compile(r"\boldSelf\b")
_CEL_STRINGS: Final = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


# --------------------------------------------------------------------------------------------------------
# Values as CEL sees them
# --------------------------------------------------------------------------------------------------------


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
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return celtypes.IntType(value)
    if isinstance(value, int):  # beyond CEL's int: what the server's decoding makes of it
        return _cel_dyn(server_integer(value))
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
    if isinstance(value, int) and not isinstance(value, bool) and schema_type(schema) == "number":
        return celtypes.DoubleType(float(value))  # a JSON 1 in a `number` field is a CEL double
    if isinstance(value, list):
        items = mapping(schema.get("items"))
        return celtypes.ListType([_to_cel(items, v) for v in value])
    if not isinstance(value, Mapping):
        return _cel_dyn(value)
    props = mapping(schema.get("properties"))
    extra = schema.get("additionalProperties")
    embedded = root or schema.get("x-kubernetes-embedded-resource") is True
    if props or embedded:
        fields: dict[Any, Any] = {}
        for key, item in value.items():
            if embedded and key in META_FIELDS:
                if key == "metadata" and isinstance(item, Mapping):
                    meta = {k: item[k] for k in ("name", "generateName") if isinstance(item.get(k), str)}
                    fields[celtypes.StringType(key)] = _cel_dyn(meta)
                elif isinstance(item, str):
                    fields[celtypes.StringType(key)] = celtypes.StringType(item)
                continue
            cel_name = _cel_escape(key) if key in props else None
            if cel_name is not None:
                fields[celtypes.StringType(cel_name)] = _to_cel(mapping(props[key]), item)
        return celtypes.MapType(fields)
    if isinstance(extra, Mapping):
        return celtypes.MapType({celtypes.StringType(k): _to_cel(extra, v) for k, v in value.items()})
    return _cel_dyn(value)


# --------------------------------------------------------------------------------------------------------
# Compiling rules, wording their errors
# --------------------------------------------------------------------------------------------------------


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
        program = env.program(env.compile(rule), functions=FUNCTIONS)
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
        props = mapping(node.get("properties"))
        extra = node.get("additionalProperties")
        if props:
            if name not in props:
                return None
            path, node = child_path(path, name), mapping(props[name])
        elif isinstance(extra, Mapping):
            path, node = f"{path}[{name}]", extra
        else:
            return None
    return path or None


def _map_key(item: Mapping[str, Any], key_fields: Iterable[Any]) -> tuple[str, ...]:
    return tuple(json.dumps(item.get(k), sort_keys=True) if k in item else "\0" for k in key_fields)


# --------------------------------------------------------------------------------------------------------
# Running the rules of a tree
# --------------------------------------------------------------------------------------------------------


class CelValidator:
    """Runs the rules of every node of a value (and the old value of an update); errors go to ``out``."""

    def __init__(self, out: Collector) -> None:
        self.out = out

    def node(self, schema: Schema, value: Any, old: Any, path: str, *, root: bool = False) -> None:
        """Run the rules at and below ``path``; ``root`` says ``value`` is a whole resource."""
        if value is None:
            return
        rules = schema.get("x-kubernetes-validations")
        if isinstance(rules, list) and rules:
            self._rules(schema, rules, value, old, path, root=root)
        all_of = schema.get("allOf")
        if isinstance(all_of, list):
            for sub in all_of:
                self.node(mapping(sub), value, old, path, root=root)
        if isinstance(value, list):
            self._array(schema, value, old, path)
        elif isinstance(value, Mapping):
            old_map = old if isinstance(old, Mapping) else {}
            correlatable = schema.get("x-kubernetes-map-type") in (None, "granular", "atomic")
            for key, item, member, declared in members(schema, value):
                old_item = old_map.get(key) if correlatable else None
                self.node(member, item, old_item, child_path(path, key) if declared else f"{path}[{key}]")

    def _array(self, schema: Schema, value: list[Any], old: Any, path: str) -> None:
        items = mapping(schema.get("items"))
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
        type_name = schema_type(schema)
        here = render_path(path)
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
