"""Usage accounting, session side: the `usage.json` a session keeps current, read as hostile input.

A session may keep `$FLEET_STATE_DIR/usage.json` current: a JSON object with the optional integers
`inputTokens`, `outputTokens`, `cacheReadTokens` and `cacheWriteTokens`, a decimal `cost` (a string such
as `"0.4213"`; a JSON number is taken too, exponent and all, as jq writes `1.2e-05`), its `currency`
(three capital letters, `USD` when a cost comes without one) and the `model`. The figures are cumulative
within the attempt: each write replaces the last (atomically, by a rename, as every state file).

`parse(value)` is the one definition of what a usage is, shared by the supervisor (which reads the file)
and the operator (which reads the supervisor's report and Lease): it keeps each field that is valid and
says which were not. An integer is at most `MAX_TOKENS`; a cost has at most `MAX_COST_DIGITS` digits
before the point and `MAX_COST_DECIMALS` after it (rounded down past them, since nobody should be charged
a digit that was not reported); a model is printable ASCII of at most `MAX_MODEL_LENGTH` characters. So a
usage's JSON is at most a few hundred bytes, and the supervisor's 4096-byte report has room for it beside
the resume token.

`UsageReader` reads the file through `protocol.read_state_file` (no FIFO, no symlink, nothing over 64 KiB)
and tells what it ignored in one log line, once per distinct complaint, so a session that writes junk
every second is not logged every poll.

Standard library only and no `decimal` (half a MiB of the supervisor's 25 MiB): costs stay strings,
normalised by digit arithmetic. Deliberately not here: adding usages up and judging budgets (the
operator's `core.usage`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from fleetdispatch.session import protocol

USAGE_FILE: Final = "usage.json"
# The supervisor's report (termination message) and its Lease annotation carry the usage under this name.
REPORT_USAGE: Final = "usage"

INPUT_TOKENS: Final = "inputTokens"
OUTPUT_TOKENS: Final = "outputTokens"
CACHE_READ_TOKENS: Final = "cacheReadTokens"
CACHE_WRITE_TOKENS: Final = "cacheWriteTokens"
TOKEN_FIELDS: Final = (INPUT_TOKENS, OUTPUT_TOKENS, CACHE_READ_TOKENS, CACHE_WRITE_TOKENS)
COST: Final = "cost"
CURRENCY: Final = "currency"
MODEL: Final = "model"
FIELDS: Final = (*TOKEN_FIELDS, COST, CURRENCY, MODEL)

DEFAULT_CURRENCY: Final = "USD"
MAX_TOKENS: Final = 10**15
MAX_COST_DIGITS: Final = 12
MAX_COST_DECIMALS: Final = 12
MAX_MODEL_LENGTH: Final = 128
# The decimal string the status holds (the CRD's pattern too): no sign, no exponent, no leading zeros.
COST_PATTERN: Final = rf"^(0|[1-9][0-9]{{0,{MAX_COST_DIGITS - 1}}})(\.[0-9]{{1,{MAX_COST_DECIMALS}}})?$"
CURRENCY_PATTERN: Final = r"^[A-Z]{3}$"
MODEL_PATTERN: Final = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"

_NUMBER = re.compile(r"^(?P<whole>[0-9]+)(\.(?P<fraction>[0-9]+))?([eE](?P<exponent>[+-]?[0-9]{1,4}))?$")
_CURRENCY = re.compile(CURRENCY_PATTERN)
_MODEL = re.compile(MODEL_PATTERN)

Usage = dict[str, Any]
"""A valid usage as JSON: a subset of `FIELDS`, integers for the tokens, strings for the rest."""


class _Number(str):
    """A JSON number's text, kept as written (`json.loads(parse_float=...)`), so no float rounds it."""


def decimal_text(value: object) -> str | None:
    """`value` (a decimal string, a JSON number's text or an int) as the normalised non-negative decimal
    string a cost is, rounded down to `MAX_COST_DECIMALS` places; None when it is not one or too large."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    match = _NUMBER.match(text) if len(text) <= 64 else None
    if match is None:
        return None
    digits = match["whole"] + (match["fraction"] or "")
    point = len(match["whole"]) + int(match["exponent"] or 0)  # where the point falls among the digits
    if point <= 0:
        digits, point = "0" * (1 - point) + digits, 1
    elif point > len(digits):
        digits += "0" * (point - len(digits))
    whole = digits[:point].lstrip("0") or "0"
    fraction = digits[point:][:MAX_COST_DECIMALS].rstrip("0")
    if len(whole) > MAX_COST_DIGITS:
        return None
    return whole + (f".{fraction}" if fraction else "")


def parse(value: object) -> tuple[Usage | None, list[str]]:
    """The valid fields of a usage object, and the names of those that were not (with why).

    The usage is None when `value` is not a JSON object (the complaint says so) or holds no valid field.
    """
    if not isinstance(value, dict):
        return None, ["not a JSON object"]
    usage: Usage = {}
    bad: list[str] = []
    for field in TOKEN_FIELDS:
        if field not in value:
            continue
        count = value[field]
        if isinstance(count, int) and not isinstance(count, bool) and 0 <= count <= MAX_TOKENS:
            usage[field] = count
        else:
            bad.append(f"{field} (an integer from 0 to {MAX_TOKENS})")
    if COST in value:
        cost = decimal_text(value[COST])
        if cost is None:
            bad.append(f"{COST} (a non-negative decimal string below 10^{MAX_COST_DIGITS})")
        else:
            usage[COST] = cost
    if CURRENCY in value:
        currency = value[CURRENCY]
        if isinstance(currency, str) and _CURRENCY.match(currency):
            usage[CURRENCY] = currency
        else:
            bad.append(f"{CURRENCY} (three capital letters, as USD)")
    if COST in usage and CURRENCY not in usage:
        usage[CURRENCY] = DEFAULT_CURRENCY
    if MODEL in value:
        model = value[MODEL]
        if isinstance(model, str) and len(model) <= MAX_MODEL_LENGTH and _MODEL.match(model):
            usage[MODEL] = model
        else:
            bad.append(f"{MODEL} (printable ASCII, at most {MAX_MODEL_LENGTH} characters)")
    return (usage or None), bad


def decode(data: bytes | str) -> tuple[Usage | None, list[str]]:
    """`parse` of a usage's JSON text; a JSON number keeps its exact text (for the cost)."""
    try:
        value = json.loads(data, parse_float=_Number, parse_int=_integer)
    except (ValueError, RecursionError):
        return None, ["not JSON"]
    return parse(value)


def _integer(text: str) -> int | _Number:
    # A 4301-digit integer would raise (int's string limit); no valid figure is that long anyway.
    return int(text) if len(text) <= 20 else _Number(text)


def encode(usage: Usage) -> str:
    """A usage as compact JSON (the Lease annotation's value)."""
    return json.dumps({field: usage[field] for field in FIELDS if field in usage}, separators=(",", ":"))


class UsageReader:
    """Reads `usage.json` in a state directory; `read()` never raises and never blocks."""

    def __init__(self, state_dir: Path | str, log: Callable[[str], object] | None = None) -> None:
        self._path = Path(state_dir) / USAGE_FILE
        self._log = log
        self._last_complaint: str | None = None

    def _complain(self, message: str | None) -> None:
        # One line per distinct complaint, and one again once the file is fine and then bad again.
        if message != self._last_complaint and message is not None and self._log is not None:
            self._log(message)
        self._last_complaint = message

    def read(self) -> Usage | None:
        """The session's current usage, or None when there is no (usable) file."""
        complaints: list[str] = []
        data = protocol.read_state_file(self._path, complaints.append)
        if data is None:
            self._complain(complaints[0] if complaints else None)
            return None
        usage, bad = decode(data)
        if bad:
            what = "; ".join(bad)
            self._complain(f"{self._path}: {what}: ignored" if usage is None else f"{self._path}: {what}")
        else:
            self._complain(None)
        return usage
