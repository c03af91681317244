"""The session protocol: the names and file formats a session, the supervisor and the quota guard share.

A session learns its budget from the environment and from files in the shared state directory, and tells
how it ended through `outcome.json`. This module holds those names, the `deadline` file format and the few
helpers every party needs to read and write the files safely. It is standard library only, because the
quota guard imports it inside arbitrary session images and the supervisor must stay small.

The `deadline` file holds integer epoch seconds followed by a newline, so a shell reads it with
`$(cat "$FLEET_STATE_DIR/deadline")`. Every file is replaced atomically (a temporary file in the same
directory, then a rename), so a reader sees the old content or the new one, never half of either.

The state directory is writable by the session, so its files are read as hostile input (`read_state_file`):
opened with `O_NONBLOCK` (a FIFO never blocks the reader) and `O_NOFOLLOW` (a symlink to `/dev/zero`, or
to the supervisor's own heartbeat token, is not followed), only a regular file (`fstat`), and at most
`MAX_STATE_FILE_BYTES` (a 300 MB file is not read whole). Anything else reads as no file, and the
readers' optional `on_ignored` callback gets one line saying why.

Deliberately not here: any policy (when a deadline moves, how an outcome is classified) and any clock read.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

ENV_DISPATCH = "FLEET_DISPATCH"
ENV_ATTEMPT = "FLEET_ATTEMPT"
ENV_SESSION_DEADLINE = "FLEET_SESSION_DEADLINE"
ENV_STATE_DIR = "FLEET_STATE_DIR"
ENV_RESUME = "FLEET_RESUME"
ENV_RESUME_TOKEN = "FLEET_RESUME_TOKEN"

DEFAULT_STATE_DIR = "/var/run/fleet"
DEADLINE_FILE = "deadline"
RESUME_TOKEN_FILE = "resume-token"
OUTCOME_FILE = "outcome.json"

COMPLETED: Final = "Completed"
QUOTA_EXHAUSTED: Final = "QuotaExhausted"
FAILED: Final = "Failed"
DEADLINE_EXCEEDED: Final = "DeadlineExceeded"
IDLE_TIMEOUT: Final = "IdleTimeout"

# EX_TEMPFAIL: a session (the quota guard) exits with it when its upstream quota ran out; without an
# outcome that says otherwise, the operator reads it as QuotaExhausted.
QUOTA_EXIT_CODE: Final = 75

# The supervisor's report: the figures it adds to its termination message (and to a stop's outcome), which
# the operator mirrors into the dispatch's status under the same names. Times are RFC 3339 (`format_time`).
REPORT_DEADLINE: Final = "deadline"
REPORT_DEADLINE_CAP: Final = "deadlineCap"
REPORT_LAST_ACTIVITY: Final = "lastActivityTime"
REPORT_ACTIVITY_REASON: Final = "activityReason"
REPORT_LAST_OUTPUT: Final = "lastOutputTime"
REPORT_FIELDS: Final = (
    REPORT_DEADLINE,
    REPORT_DEADLINE_CAP,
    REPORT_LAST_ACTIVITY,
    REPORT_ACTIVITY_REASON,
    REPORT_LAST_OUTPUT,
)
REPORT_TIMES: Final = (REPORT_DEADLINE, REPORT_DEADLINE_CAP, REPORT_LAST_ACTIVITY, REPORT_LAST_OUTPUT)
# The session's last resume token, in a stop's outcome and in every report (so a TERM does not lose it);
# not a figure the status mirrors, so not among REPORT_FIELDS. At most this long, so the message fits.
REPORT_RESUME_TOKEN: Final = "resumeToken"
MAX_RESUME_TOKEN_BYTES: Final = 2048
# How many times the supervisor moved the deadline, and by how many seconds in all: in its termination
# message only, as JSON numbers (so not among REPORT_FIELDS), for the operator's metrics. A restarted
# supervisor counts from its own start.
REPORT_EXTENSIONS: Final = "deadlineExtensions"
REPORT_EXTENDED_SECONDS: Final = "deadlineExtendedSeconds"
# What kept a session alive last: its CPU, a connection to the API endpoint, or its output growing.
ACTIVITY_REASONS: Final = ("cpu", "api-connection", "output")

# The kubelet keeps at most 4096 bytes of a termination message; a longer outcome would arrive cut, which
# is no longer JSON. Writers keep their outcome below this.
MAX_OUTCOME_BYTES = 4096
# A state file (deadline, resume token, outcome) larger than this is ignored rather than read.
MAX_STATE_FILE_BYTES = 64 * 1024
_STATE_OPEN_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
)

Ignored = Callable[[str], object]
"""Told, in one line, why a state file was ignored (it is a FIFO, a symlink, too large, ...)."""


def read_state_file(path: Path, on_ignored: Ignored | None = None) -> bytes | None:
    """The bytes of a regular file of at most `MAX_STATE_FILE_BYTES`; None when it is missing or anything
    else (a FIFO, a device, a symlink, a directory, a larger file), which `on_ignored` hears about.

    Never blocks and never raises `OSError`.
    """

    def ignored(why: str) -> None:
        if on_ignored is not None:
            on_ignored(f"{path}: {why}: ignored")

    try:
        fd = os.open(path, _STATE_OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as error:  # ELOOP: a symlink (O_NOFOLLOW); ENXIO: a FIFO without a writer, ...
        ignored(f"cannot open ({os.strerror(error.errno) if error.errno else error})")
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            ignored("not a regular file")
            return None
        if info.st_size > MAX_STATE_FILE_BYTES:
            ignored(f"{info.st_size} bytes, over the {MAX_STATE_FILE_BYTES}-byte limit")
            return None
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_STATE_FILE_BYTES:  # the file may grow after the fstat
            chunk = os.read(fd, MAX_STATE_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_STATE_FILE_BYTES:
            ignored(f"over the {MAX_STATE_FILE_BYTES}-byte limit")
            return None
        return b"".join(chunks)
    except OSError as error:
        ignored(f"cannot read ({error})")
        return None
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str, *, replace: bool = True) -> bool:
    """Write `text` to `path` so that readers never see a partial file.

    With `replace=False` an existing file is left untouched (the new file is linked in, which fails if the
    name exists) and False is returned: the supervisor uses it so it never overwrites a session's outcome.
    """
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        # Readable by the session's other users too: the session and the supervisor share a UID, but a
        # session image may run helpers under another one.
        os.chmod(temporary, 0o644)
        if replace:
            os.replace(temporary, path)
            return True
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def format_deadline(epoch_seconds: float) -> str:
    """The `deadline` file's content: whole epoch seconds, rounded down so nobody counts on a late second."""
    return f"{math.floor(epoch_seconds)}\n"


def parse_deadline(text: str) -> int | None:
    """Epoch seconds from a `deadline` file's or `FLEET_SESSION_DEADLINE`'s text; None when unreadable."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return math.floor(value) if math.isfinite(value) and value > 0 else None


def read_deadline(state_dir: Path, on_ignored: Ignored | None = None) -> int | None:
    """The live deadline from `state_dir/deadline`, or None when the file is missing or unreadable."""
    data = read_state_file(state_dir / DEADLINE_FILE, on_ignored)
    if data is None:
        return None
    try:
        return parse_deadline(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None


def read_outcome(state_dir: Path, on_ignored: Ignored | None = None) -> dict[str, Any] | None:
    """The outcome a session wrote, when `outcome.json` is a JSON object with a string `reason`; else None.

    Never raises: a missing, half-written or junk file is as good as no outcome.
    """
    data = read_state_file(state_dir / OUTCOME_FILE, on_ignored)
    if data is None:
        return None
    try:
        outcome = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if isinstance(outcome, dict) and isinstance(outcome.get("reason"), str) and outcome["reason"]:
        return outcome
    return None


def read_resume_token(state_dir: Path, on_ignored: Ignored | None = None) -> str | None:
    """The session's current resume token (surrounding whitespace removed), or None when there is none."""
    data = read_state_file(state_dir / RESUME_TOKEN_FILE, on_ignored)
    if data is None:
        return None
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    return token or None


# --- time: the one definition of how every part of fleet-dispatch writes and reads a time ---------------


def _epoch(moment: float | datetime) -> float:
    return moment.timestamp() if isinstance(moment, datetime) else float(moment)


def format_time(moment: float | datetime) -> str:
    """A metav1.Time as Kubernetes writes it: UTC, whole seconds (rounded down), `Z`."""
    return datetime.fromtimestamp(math.floor(_epoch(moment)), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(moment: float | datetime) -> str:
    """A metav1.MicroTime (a Lease's renewTime, an Event's eventTime): UTC, microseconds, `Z`."""
    return datetime.fromtimestamp(_epoch(moment), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 time (a metav1.Time, an outcome's `resetAt`) as an aware datetime; None when missing or
    unreadable. A time without an offset is read as UTC."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def report(
    deadline: float | None,
    deadline_cap: float | None,
    last_activity: float | None,
    activity_reason: str | None,
    last_output: float | None,
) -> dict[str, str]:
    """The supervisor's report from epoch seconds, as JSON fields; what is unknown is left out."""
    values = {
        REPORT_DEADLINE: None if deadline is None else format_time(deadline),
        REPORT_DEADLINE_CAP: None if deadline_cap is None else format_time(deadline_cap),
        REPORT_LAST_ACTIVITY: None if last_activity is None else format_time(last_activity),
        REPORT_ACTIVITY_REASON: activity_reason,
        REPORT_LAST_OUTPUT: None if last_output is None else format_time(last_output),
    }
    return {key: value for key, value in values.items() if value is not None}


def read_report_resume_token(value: object) -> str | None:
    """The resume token of a decoded termination message or outcome (`resumeToken`), if it has one."""
    if not isinstance(value, dict):
        return None
    token = value.get(REPORT_RESUME_TOKEN)
    if not isinstance(token, str) or not token or len(token.encode()) > MAX_RESUME_TOKEN_BYTES:
        return None
    return token


def read_report_extensions(value: object) -> tuple[int, float]:
    """The deadline extensions a decoded termination message reports, and their seconds; (0, 0.0) when it
    reports none (an older supervisor, no report, values that are not non-negative numbers)."""
    if not isinstance(value, dict):
        return 0, 0.0
    count, seconds = value.get(REPORT_EXTENSIONS), value.get(REPORT_EXTENDED_SECONDS)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return 0, 0.0
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not math.isfinite(seconds):
        return count, 0.0
    return count, max(0.0, float(seconds))


def read_report(value: object) -> dict[str, str]:
    """The report fields of a decoded termination message or outcome; anything else in it is ignored."""
    if not isinstance(value, dict):
        return {}
    return {key: value[key] for key in REPORT_FIELDS if isinstance(value.get(key), str)}
