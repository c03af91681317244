"""Usage accounting and budgets, operator side: the pure arithmetic the lifecycle decides with.

- **Reading** (`from_report`, `from_annotation`): an attempt's usage from its supervisor's report (the
  termination message's `usage` object) or from its Lease's `usage` annotation, through the one parser of
  the format (`session.usage.parse`), so whatever a session wrote reaches the status only within bounds.
- **Adding up** (`add`): the dispatch's totals over its attempts. Token counts add up per kind; costs add up
  as `Decimal`s, exactly, in the currency of the first cost reported: a cost in another currency is kept in
  its attempt's record but left out of the totals (adding dollars to euros would be no total). The totals'
  model is the last one an attempt reported.
- **Budgets** (`spent`, `time_limit`): `spec.budget` against the totals. `tokens` counts all four kinds
  (input, output, cache reads, cache writes): each is a token the model processed. `cost` compares the
  total cost as reported, whatever its currency. `totalSeconds` runs from the dispatch's first start
  (`status.startTime`) across attempts, backoffs and requeues. A budget is spent once the figure reaches it.

Deliberately not here: when the lifecycle looks (`lifecycle`), reading the file (`session.usage`).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from fleetdispatch.api.models import Budget, Usage
from fleetdispatch.session import usage as session_usage
from fleetdispatch.session.protocol import format_time

# The status attribute of each token kind (the wire name's snake_case), in the wire order.
TOKEN_ATTRIBUTES = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
# The kinds as the metrics label them.
TOKEN_KINDS = ("input", "output", "cacheRead", "cacheWrite")


def of(value: object) -> Usage | None:
    """A usage object (as the session wrote it) as the status model; None when nothing in it is valid."""
    parsed, _ = session_usage.parse(value)
    return None if parsed is None else Usage.model_validate(parsed)


def from_report(message: str | None) -> Usage | None:
    """The usage in a supervisor's termination message (its `usage` object), if it has one."""
    if not message:
        return None
    try:
        report = json.loads(message)
    except (ValueError, RecursionError):
        return None
    return of(report.get(session_usage.REPORT_USAGE)) if isinstance(report, dict) else None


def from_annotation(text: object) -> Usage | None:
    """The usage in a Lease's `usage` annotation (`session.usage.encode`), if it is one."""
    if not isinstance(text, str) or len(text) > 4096:
        return None
    parsed, _ = session_usage.decode(text)
    return None if parsed is None else Usage.model_validate(parsed)


def _decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def cost_text(value: Decimal) -> str:
    """A Decimal as the status's cost string (`session.usage.decimal_text`: no exponent, bounded)."""
    text = session_usage.decimal_text(format(value, "f"))
    if text is None:  # past 10^12 (a thousand attempts at the largest cost): held at the largest
        return "9" * session_usage.MAX_COST_DIGITS + "." + "9" * session_usage.MAX_COST_DECIMALS
    return text


def add(total: Usage | None, part: Usage | None) -> Usage | None:
    """`total` with `part` added; either may be None (nothing reported)."""
    if part is None:
        return total
    if total is None:
        return part.model_copy()
    values: dict[str, object] = {}
    for attribute in TOKEN_ATTRIBUTES:
        mine, theirs = getattr(total, attribute), getattr(part, attribute)
        values[attribute] = None if mine is None and theirs is None else (mine or 0) + (theirs or 0)
    cost, currency = total.cost, total.currency
    extra = _decimal(part.cost)
    if extra is not None and (currency is None or part.currency is None or part.currency == currency):
        cost = cost_text((_decimal(cost) or Decimal(0)) + extra)
        currency = currency or part.currency
    values.update(cost=cost, currency=currency, model=part.model or total.model)
    return Usage.model_validate(values)


def tokens(usage: Usage | None) -> int:
    """All the tokens a usage counts, every kind."""
    if usage is None:
        return 0
    return sum(getattr(usage, attribute) or 0 for attribute in TOKEN_ATTRIBUTES)


def cost(usage: Usage | None) -> Decimal:
    return (_decimal(usage.cost) if usage is not None else None) or Decimal(0)


def time_limit(budget: Budget | None, first_start: datetime | None) -> datetime | None:
    """When `budget.totalSeconds` runs out, counted from the dispatch's first start; None without one."""
    if budget is None or budget.total_seconds is None or first_start is None:
        return None
    try:
        return first_start + timedelta(seconds=budget.total_seconds)
    except OverflowError:
        return None


def spent(
    budget: Budget | None, usage: Usage | None, first_start: datetime | None, now: datetime
) -> str | None:
    """Which budget `usage` (the totals, a running attempt's included) or the time has spent, as a message
    naming it; None while every budget has some left."""
    if budget is None:
        return None
    used = tokens(usage)
    if budget.tokens is not None and used >= budget.tokens:
        return f"budget.tokens is spent: {used} tokens used, of {budget.tokens}"
    if budget.cost is not None and cost(usage) >= Decimal(budget.cost):
        currency = f" {usage.currency}" if usage is not None and usage.currency else ""
        return f"budget.cost is spent: {cost_text(cost(usage))}{currency} used, of {budget.cost}"
    limit = time_limit(budget, first_start)
    if limit is not None and now >= limit:
        assert first_start is not None and budget.total_seconds is not None
        return (
            f"budget.totalSeconds is spent: {budget.total_seconds} s since the first start at "
            f"{format_time(first_start)}"
        )
    return None


def wait_message(budget: Budget, limit: datetime, until: datetime) -> str:
    """Why a wait that would end at `until` fails the dispatch at once: it ends after `totalSeconds`."""
    return (
        f"budget.totalSeconds ({budget.total_seconds} s) runs out at {format_time(limit)}, before the next "
        f"attempt could start at {format_time(until)}"
    )
