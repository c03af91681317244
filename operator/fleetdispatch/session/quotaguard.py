"""The quota guard: wait for an upstream quota to reset when the session's budget allows it, else end cleanly.

A session that runs out of its upstream API's quota (a rate limit, a usage window) has two sound moves: wait
for the reset and carry on, or stop and let fleet-dispatch requeue it until the reset. Waiting is right only
when the reset comes before the deadline; otherwise the session sleeps into its own timeout, is stopped
`DeadlineExceeded`, and its resumption walks straight back into the exhausted quota. `plan` decides; `guard`
reads the budget and acts; `main` is the command line (`fleetdispatch quota-guard`).

- **The wait** is `reset - now + buffer` (the buffer, 60 s, absorbs the clock skew between the session and
  the provider), never negative: when the reset has passed, what is left of the buffer after it, possibly
  nothing, which lets a caller hand over a stale reset time without being held up. An unknown reset time
  waits the buffer alone.
- **The budget** is the live deadline in `$FLEET_STATE_DIR/deadline`, which the supervisor moves while the
  session is active; `FLEET_SESSION_DEADLINE` (the initial deadline) only when the file is missing or
  unreadable. With neither, the guard fails open: it waits.
- **It fits** when `now + wait <= deadline`, or when there is nothing to wait for (a deadline that has
  passed is the supervisor's business, not the quota's): the guard sleeps (with `--print` it prints the
  seconds for its caller to sleep instead) and exits 0. Otherwise it writes the `QuotaExhausted` outcome
  (`resetAt`, the session's resume token, a message saying why) and exits 75 (EX_TEMPFAIL): the operator
  requeues the dispatch until the reset and then resumes it.

The plan is made once, against the deadline of that moment. The deadline never shrinks, so a wait that fits
when it starts still fits when it ends; re-reading the file while asleep could change nothing. While it
sleeps, the guard writes a line to standard error every `PROGRESS_SECONDS`: a sleeping process writes
nothing, and the supervisor's idle-output timer (`idleOutputSeconds`) would otherwise stop a session that is
only waiting, as its budget allows, for its quota. The wait is still bounded by the deadline it planned with.

An outcome the supervisor already wrote for a stop (`DeadlineExceeded`, `IdleTimeout`) is left in place:
that stop is under way, and its outcome carries the supervisor's figures. The guard never crashes on its
input: an unparsable reset time counts as unknown (with a warning), an unreadable deadline falls back as
above, and an outcome it cannot write leaves the exit code (75, which alone means `QuotaExhausted`) to
speak. A usage error on the command line exits 2, as argparse does.

Standard library only (`protocol` is too), so a session image can copy `protocol.py` and this file into a
`fleetdispatch/` folder on its `PYTHONPATH` and run `python -m fleetdispatch.quotaguard`. Deliberately
not here: learning that the quota is exhausted and when it resets (the agent CLI or the provider's response
tells the caller; see `examples/hooks/`), retrying the call that hit the limit, and anything the operator
decides afterwards (`classify`, `lifecycle`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from . import protocol  # relative: this file and protocol.py also work copied alone into a session image

QUOTA_EXIT_CODE = protocol.QUOTA_EXIT_CODE
DEFAULT_BUFFER_SECONDS = 60.0
# While sleeping, one line on standard error this often keeps the idle-output timer from firing.
PROGRESS_SECONDS = 30.0
# A number this large is not a reset in epoch seconds: more likely epoch milliseconds (year 5138 and on).
_LARGEST_EPOCH_SECONDS = 1e11
# Supervisor stops whose outcome the guard leaves in place (see the module docstring).
_SUPERVISOR_STOPS = frozenset({protocol.DEADLINE_EXCEEDED, protocol.IDLE_TIMEOUT})
_NUMBER = r"\d+(?:\.\d+)?"
_DURATION = re.compile(rf"(?:({_NUMBER})h)?(?:({_NUMBER})m(?!s))?(?:({_NUMBER})s)?(?:({_NUMBER})ms)?")
_DURATION_UNITS = (3600.0, 60.0, 1.0, 0.001)


@dataclass(frozen=True)
class Plan:
    """What to do about an exhausted quota at one moment."""

    wait: float
    """Seconds to wait before calling the upstream API again (0 or more)."""
    fits: bool
    """The wait ends no later than the deadline; always True when there is no wait, or no deadline is known
    (fail open)."""
    remaining: float | None
    """Seconds left before the deadline (negative once it has passed); None when no deadline is known."""


def plan(reset_at: float | None, now: float, deadline: float | None, buffer: float = 60) -> Plan:
    """Wait until `reset_at + buffer` (the buffer alone when the reset is unknown) if that fits the deadline.

    All times are epoch seconds. A reset in the past needs only what remains of the buffer after it.
    """
    if not math.isfinite(buffer) or buffer < 0:
        raise ValueError(f"the buffer must be a finite number of seconds, at least 0: {buffer!r}")
    wait = buffer if reset_at is None else max(0.0, reset_at + buffer - now)
    if deadline is None:
        return Plan(wait=wait, fits=True, remaining=None)
    # Nothing to wait for always fits: a deadline that has passed is the supervisor's to act on, not a quota.
    return Plan(wait=wait, fits=wait == 0 or now + wait <= deadline, remaining=deadline - now)


def parse_reset_at(text: str) -> float:
    """Epoch seconds from an RFC 3339 time (`2026-11-24T18:00:00Z`; no offset means UTC) or epoch seconds.

    Raises ValueError, naming what was expected, for anything else.
    """
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"not a time: {text!r} (expected RFC 3339, like 2026-11-24T18:00:00Z, or epoch seconds)"
            ) from None
        return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"not a time: {text!r} (epoch seconds must be a positive number)")
    if value >= _LARGEST_EPOCH_SECONDS:
        raise ValueError(f"not a time: {text!r} (epoch seconds expected; this looks like milliseconds)")
    return value


def parse_reset_in(text: str) -> float:
    """Seconds from `90`, `90s`, `1.5m`, `1h30m` or `250ms` (Go-style durations, as some APIs report them).

    Raises ValueError, naming what was expected, for anything else.
    """
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        match = _DURATION.fullmatch(text)
        if not text or match is None:
            raise ValueError(
                f"not a duration: {text!r} (expected seconds, like 90, or a duration, like 90s or 1h30m)"
            ) from None
        return sum(
            float(part) * unit for part, unit in zip(match.groups(), _DURATION_UNITS, strict=True) if part
        )
    if not math.isfinite(value):
        raise ValueError(f"not a duration: {text!r}")
    return value


def _budget(state_dir: Path, environ: Mapping[str, str]) -> float | None:
    """The live deadline, else the initial one from the environment, else None (fail open)."""
    live = protocol.read_deadline(state_dir)
    if live is not None:
        return live
    return protocol.parse_deadline(environ.get(protocol.ENV_SESSION_DEADLINE, ""))


def _outcome(reset_at: float | None, verdict: Plan, deadline: float, state_dir: Path) -> dict[str, Any]:
    until = f"until {protocol.format_time(reset_at)}" if reset_at is not None else "(reset time unknown)"
    budget = max(0, math.floor(verdict.remaining or 0))
    message = (
        f"quota exhausted {until}; waiting {math.ceil(verdict.wait)} s does not fit the remaining budget "
        f"of {budget} s (deadline {protocol.format_time(deadline)})"
    )
    outcome: dict[str, Any] = {"reason": protocol.QUOTA_EXHAUSTED}
    if reset_at is not None:
        outcome["resetAt"] = protocol.format_time(reset_at)
    token = protocol.read_resume_token(state_dir)
    if token is not None:
        if len(json.dumps({**outcome, "resumeToken": token, "message": message}).encode()) < (
            protocol.MAX_OUTCOME_BYTES
        ):
            outcome["resumeToken"] = token
        else:
            # Cut, the termination message would no longer be JSON and the whole outcome would be lost.
            message += f"; the resume token ({len(token.encode())} bytes) is too long to report"
    outcome["message"] = message
    return outcome


def _write_outcome(outcome: dict[str, Any], state_dir: Path, err: TextIO) -> None:
    existing = protocol.read_outcome(state_dir)
    if existing is not None and existing["reason"] in _SUPERVISOR_STOPS:
        err.write(f"quota guard: the supervisor is already stopping the session ({existing['reason']})\n")
        return
    try:
        protocol.write_atomic(state_dir / protocol.OUTCOME_FILE, json.dumps(outcome) + "\n")
    except OSError as error:
        err.write(f"quota guard: cannot write the outcome ({error}); the exit code alone reports the stop\n")


def _reset(reset_at: str | None, reset_in: str | None, now: float, err: TextIO) -> float | None:
    """The reset as epoch seconds; None when not given, empty, or unparsable (the last with a warning)."""
    try:
        if reset_in is not None and reset_in.strip():
            value = now + parse_reset_in(reset_in)
        elif reset_at is not None and reset_at.strip():
            value = parse_reset_at(reset_at)
        else:
            return None
        if not 0 < value < _LARGEST_EPOCH_SECONDS:
            given = reset_in if reset_in is not None and reset_in.strip() else reset_at
            raise ValueError(f"a reset at {given!r} is beyond any real quota window")
    except ValueError as error:
        err.write(f"quota guard: {error}; treating the reset time as unknown\n")
        return None
    return value


def guard(
    reset: str | None = None,
    *,
    reset_in: str | None = None,
    buffer: float = DEFAULT_BUFFER_SECONDS,
    state_dir: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    now: Callable[[], float] = time.time,
    sleep: Callable[[float], object] = time.sleep,
    print_only: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Wait for the quota (`reset`: `--reset-at` text, or `reset_in`: `--reset-in`) or end the session.

    Returns the exit code: 0 after waiting (with `print_only`, after printing the seconds to wait), or
    `QUOTA_EXIT_CODE` after writing the `QuotaExhausted` outcome, when the wait does not fit the budget.
    """
    env = os.environ if environ is None else environ
    out = out or sys.stdout
    err = err or sys.stderr
    folder = Path(state_dir or env.get(protocol.ENV_STATE_DIR) or protocol.DEFAULT_STATE_DIR)
    start = now()
    reset_at = _reset(reset, reset_in, start, err)
    deadline = _budget(folder, env)
    verdict = plan(reset_at, start, deadline, buffer)
    if deadline is None:
        err.write(
            f"quota guard: no deadline in {folder / protocol.DEADLINE_FILE} or "
            f"{protocol.ENV_SESSION_DEADLINE}; waiting without a budget\n"
        )
    if not verdict.fits:
        assert deadline is not None  # a plan without a deadline always fits
        outcome = _outcome(reset_at, verdict, deadline, folder)
        _write_outcome(outcome, folder, err)
        err.write(f"quota guard: {outcome['message']}; exiting {QUOTA_EXIT_CODE}\n")
        err.flush()
        return QUOTA_EXIT_CODE
    seconds = math.ceil(verdict.wait)
    if print_only:
        out.write(f"{seconds}\n")
        out.flush()
        return 0
    if seconds > 0:
        until = protocol.format_time(reset_at) if reset_at is not None else "an unknown time"
        budget = "" if verdict.remaining is None else f"; {math.floor(verdict.remaining)} s of budget left"
        err.write(f"quota guard: the quota resets at {until}; waiting {seconds} s{budget}\n")
        err.flush()
    left = verdict.wait
    while left > 0:
        step = min(left, PROGRESS_SECONDS)
        sleep(step)
        left -= step
        if left > 0:
            err.write(f"quota guard: {math.ceil(left)} s left to wait\n")
            err.flush()
    return 0


def _buffer(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, at least 0: {text!r}")
    return value


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line of `fleetdispatch quota-guard` and `python -m fleetdispatch.session.quotaguard`."""
    command = argparse.ArgumentParser(
        prog=prog,
        description="Wait for an upstream quota to reset if the session's remaining budget allows it; "
        f"otherwise write the QuotaExhausted outcome and exit {QUOTA_EXIT_CODE}, so fleet-dispatch "
        "requeues the session until the reset. Without a reset flag the reset time is unknown: the wait "
        "is the buffer alone.",
        epilog=f"Exit codes: 0 waited (with --print: the wait fits), {QUOTA_EXIT_CODE} the wait does not "
        f"fit (the outcome is in $FLEET_STATE_DIR/outcome.json), 2 a usage error.",
    )
    reset = command.add_mutually_exclusive_group()
    reset.add_argument(
        "--reset-at",
        metavar="TIME",
        help="when the quota resets: RFC 3339 (2026-11-24T18:00:00Z) or epoch seconds",
    )
    reset.add_argument(
        "--reset-in",
        metavar="DURATION",
        help="how long until the quota resets: seconds (90) or a duration (90s, 5m, 1h30m, 250ms)",
    )
    command.add_argument(
        "--buffer",
        type=_buffer,
        default=DEFAULT_BUFFER_SECONDS,
        metavar="SECONDS",
        help="extra seconds to wait after the reset (default %(default)g)",
    )
    command.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        help="print the whole seconds to wait and exit 0 instead of sleeping, for a caller that waits itself",
    )
    command.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"the session's state folder (default: ${protocol.ENV_STATE_DIR}, else "
        f"{protocol.DEFAULT_STATE_DIR})",
    )
    return command


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    return guard(
        args.reset_at,
        reset_in=args.reset_in,
        buffer=args.buffer,
        state_dir=args.state_dir,
        print_only=args.print_only,
    )


if __name__ == "__main__":
    sys.exit(main(prog="python -m fleetdispatch.quotaguard"))
