"""The quota guard: the pure plan table by table, the shell on real files with an injected clock and sleep,
the command lines and the hook script in real processes, and the standard-library-only promise."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fleetdispatch import cli
from fleetdispatch.core import classify
from fleetdispatch.core.podstatus import PodView, Termination
from fleetdispatch.session import protocol, quotaguard
from fleetdispatch.session.quotaguard import Plan, parse_reset_at, parse_reset_in, plan

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "examples" / "hooks" / "quota-hook.sh"
T = 1_800_000_000.0  # 2027-01-15T08:00:00Z
GUARD = f"{sys.executable} -m fleetdispatch.session.quotaguard"

# --- the plan ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reset_at", "deadline", "buffer", "expected"),
    [
        # reset ahead: wait until reset + buffer, if the deadline allows
        (T + 300, T + 3600, 60, Plan(wait=360, fits=True, remaining=3600)),
        (T + 300, T + 360, 60, Plan(wait=360, fits=True, remaining=360)),  # ends exactly at the deadline
        (T + 300, T + 359, 60, Plan(wait=360, fits=False, remaining=359)),
        (T + 7200, T + 3600, 60, Plan(wait=7260, fits=False, remaining=3600)),
        (T + 300, T + 3600, 0, Plan(wait=300, fits=True, remaining=3600)),
        # unknown reset: the buffer alone
        (None, T + 3600, 60, Plan(wait=60, fits=True, remaining=3600)),
        (None, T + 30, 60, Plan(wait=60, fits=False, remaining=30)),
        (None, T + 30, 0, Plan(wait=0, fits=True, remaining=30)),
        # reset in the past: what is left of the buffer after it, possibly nothing
        (T - 10, T + 3600, 60, Plan(wait=50, fits=True, remaining=3600)),
        (T - 10, T + 49, 60, Plan(wait=50, fits=False, remaining=49)),
        (T - 60, T + 3600, 60, Plan(wait=0, fits=True, remaining=3600)),
        (T - 86400, T + 3600, 60, Plan(wait=0, fits=True, remaining=3600)),
        # the deadline has passed: any wait is too long, but no wait is no quota problem
        (T + 10, T - 5, 60, Plan(wait=70, fits=False, remaining=-5)),
        (T - 600, T - 5, 60, Plan(wait=0, fits=True, remaining=-5)),
        # no deadline known: fail open, whatever the wait
        (T + 300, None, 60, Plan(wait=360, fits=True, remaining=None)),
        (T + 10 * 86400, None, 60, Plan(wait=10 * 86400 + 60, fits=True, remaining=None)),
        (None, None, 60, Plan(wait=60, fits=True, remaining=None)),
    ],
)
def test_plan(reset_at: float | None, deadline: float | None, buffer: float, expected: Plan) -> None:
    assert plan(reset_at, T, deadline, buffer) == expected


def test_plan_default_buffer_is_the_original_tools_60_seconds() -> None:
    assert plan(T + 100, T, None).wait == 160
    assert plan(None, T, None).wait == 60


@pytest.mark.parametrize("buffer", [-1, float("nan"), float("inf")])
def test_plan_refuses_a_buffer_only_a_bug_can_pass(buffer: float) -> None:
    with pytest.raises(ValueError, match="buffer"):
        plan(T, T, None, buffer)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2027-01-15T08:00:00Z", T),
        ("2027-01-15T09:30:00+01:30", T),
        ("2027-01-15T08:00:00", T),  # no offset: UTC
        ("2027-01-15T08:00:00.5Z", T + 0.5),
        (" 2027-01-15T08:00:00Z\n", T),
        ("1800000000", T),
        ("1800000000.5", T + 0.5),
    ],
)
def test_parse_reset_at(text: str, expected: float) -> None:
    assert parse_reset_at(text) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("soon", "expected RFC 3339"),
        ("", "expected RFC 3339"),
        ("18:00", "expected RFC 3339"),
        ("-5", "positive"),
        ("0", "positive"),
        ("nan", "positive"),
        ("inf", "positive"),
        ("1800000000000", "milliseconds"),
    ],
)
def test_parse_reset_at_names_what_it_expected(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_reset_at(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90", 90),
        ("90.5", 90.5),
        ("0", 0),
        ("-5", -5),  # a reset just passed
        ("90s", 90),
        ("1.5m", 90),
        ("2m30s", 150),
        ("1h30m", 5400),
        ("6m0s", 360),  # as some rate-limit headers report it
        ("1h0m0s", 3600),
        ("250ms", 0.25),
        ("1m250ms", 60.25),
    ],
)
def test_parse_reset_in(text: str, expected: float) -> None:
    assert parse_reset_in(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "5d", "1m1h", "ms", "s", "1 h", "nan", "inf", "1e999"])
def test_parse_reset_in_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_reset_in(text)


# --- the shell: real files, injected clock and sleep ------------------------------------------------------


class Run:
    """One `guard` call's observable effects."""

    def __init__(self, state: Path, **kwargs: Any) -> None:
        self.sleeps: list[float] = []
        self.out, self.err = io.StringIO(), io.StringIO()
        kwargs.setdefault("environ", {})
        self.code = quotaguard.guard(
            state_dir=state,
            now=lambda: T,
            sleep=self.sleeps.append,
            out=self.out,
            err=self.err,
            **kwargs,
        )
        self.outcome_path = state / protocol.OUTCOME_FILE

    @property
    def slept(self) -> float:
        return sum(self.sleeps)

    @property
    def outcome(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.outcome_path.read_text(encoding="utf-8"))
        return value


@pytest.fixture
def state(tmp_path: Path) -> Path:
    folder = tmp_path / "fleet"
    folder.mkdir()
    return folder


def deadline_in(state: Path, seconds: float) -> None:
    protocol.write_atomic(state / protocol.DEADLINE_FILE, protocol.format_deadline(T + seconds))


def test_waits_when_the_wait_fits(state: Path) -> None:
    deadline_in(state, 3600)
    run = Run(state, reset_in="300")
    assert run.code == 0
    assert run.slept == 360
    # In steps, each followed by a line: a sleeping session must not look idle to the supervisor.
    assert max(run.sleeps) <= quotaguard.PROGRESS_SECONDS
    lines = run.err.getvalue().splitlines()
    assert lines[0] == (
        "quota guard: the quota resets at 2027-01-15T08:05:00Z; waiting 360 s; 3600 s of budget left"
    )
    assert lines[1:] == [f"quota guard: {left} s left to wait" for left in range(330, 0, -30)]
    assert run.out.getvalue() == ""
    assert not run.outcome_path.exists()


def test_print_tells_the_wait_and_does_not_sleep(state: Path) -> None:
    deadline_in(state, 3600)
    run = Run(state, reset=protocol.format_time(T + 300.2), print_only=True)
    assert (run.code, run.sleeps, run.out.getvalue()) == (0, [], "360\n")
    run = Run(state, reset_in="0.5", print_only=True)
    assert run.out.getvalue() == "61\n"  # whole seconds, rounded up, for `sleep "$(...)"`
    assert not run.outcome_path.exists()


def test_exits_75_with_the_outcome_when_the_wait_does_not_fit(state: Path) -> None:
    deadline_in(state, 1200)
    (state / protocol.RESUME_TOKEN_FILE).write_text("session-42\n", encoding="utf-8")
    run = Run(state, reset="2027-01-15T09:00:00Z", print_only=True)
    assert run.code == quotaguard.QUOTA_EXIT_CODE == 75
    assert run.sleeps == [] and run.out.getvalue() == ""
    message = (
        "quota exhausted until 2027-01-15T09:00:00Z; waiting 3660 s does not fit the remaining budget of "
        "1200 s (deadline 2027-01-15T08:20:00Z)"
    )
    assert run.outcome == {
        "reason": "QuotaExhausted",
        "resetAt": "2027-01-15T09:00:00Z",
        "resumeToken": "session-42",
        "message": message,
    }
    assert run.err.getvalue() == f"quota guard: {message}; exiting 75\n"
    assert sorted(p.name for p in state.iterdir()) == ["deadline", "outcome.json", "resume-token"]


def test_without_a_resume_token_the_outcome_has_none(state: Path) -> None:
    deadline_in(state, 10)
    run = Run(state, reset_in="3600")
    assert run.code == 75 and "resumeToken" not in run.outcome


def test_an_unknown_reset_that_does_not_fit_reports_no_reset_time(state: Path) -> None:
    deadline_in(state, 30)
    run = Run(state)
    assert run.code == 75
    assert run.outcome == {
        "reason": "QuotaExhausted",
        "message": "quota exhausted (reset time unknown); waiting 60 s does not fit the remaining budget "
        "of 30 s (deadline 2027-01-15T08:00:30Z)",
    }


def test_an_extended_deadline_in_the_live_file_wins_over_the_environment(state: Path) -> None:
    deadline_in(state, 7200)
    environ = {protocol.ENV_SESSION_DEADLINE: str(int(T + 100))}
    run = Run(state, reset_in="3600", environ=environ)
    assert (run.code, run.slept) == (0, 3660)


@pytest.mark.parametrize("broken", ["missing", "empty", "junk", "negative", "folder", "binary"])
def test_an_unreadable_deadline_file_falls_back_to_the_environment(state: Path, broken: str) -> None:
    path = state / protocol.DEADLINE_FILE
    match broken:
        case "empty":
            path.write_text("")
        case "junk":
            path.write_text("soon\n")
        case "negative":
            path.write_text("-1\n")
        case "folder":
            path.mkdir()
        case "binary":
            path.write_bytes(b"\xff\xfe\x00")
    small = Run(state, reset_in="3600", environ={protocol.ENV_SESSION_DEADLINE: str(int(T + 100))})
    assert small.code == 75 and "remaining budget of 100 s" in small.outcome["message"]
    large = Run(state, reset_in="3600", environ={protocol.ENV_SESSION_DEADLINE: str(int(T + 7200))})
    assert (large.code, large.slept) == (0, 3660)


@pytest.mark.parametrize("environ", [{}, {protocol.ENV_SESSION_DEADLINE: "tomorrow"}])
def test_no_deadline_at_all_fails_open_and_waits(state: Path, environ: dict[str, str]) -> None:
    run = Run(state, reset_in="86400", environ=environ)
    assert (run.code, run.slept) == (0, 86460)
    assert "waiting without a budget" in run.err.getvalue().splitlines()[0]
    assert not run.outcome_path.exists()


def test_an_unknown_reset_waits_the_buffer(state: Path) -> None:
    deadline_in(state, 3600)
    assert Run(state).slept == 60
    assert Run(state, buffer=5).slept == 5
    assert Run(state, reset="  ", reset_in="").slept == 60  # an empty value from a shell variable
    run = Run(state, reset="", buffer=0)
    assert (run.code, run.sleeps, run.err.getvalue()) == (0, [], "")


@pytest.mark.parametrize(
    ("reset", "reset_in", "warning"),
    [
        ("soon", None, "not a time: 'soon'"),
        ("1800000000000", None, "looks like milliseconds"),
        (None, "a while", "not a duration: 'a while'"),
        (None, "1e300", "beyond any real quota window"),
        ("9999-12-31T23:59:59Z", None, "beyond any real quota window"),
    ],
)
def test_an_unparsable_reset_is_an_unknown_one_with_a_warning(
    state: Path, reset: str | None, reset_in: str | None, warning: str
) -> None:
    deadline_in(state, 3600)
    run = Run(state, reset=reset, reset_in=reset_in)
    assert (run.code, run.slept) == (0, 60)
    first = run.err.getvalue().splitlines()[0]
    assert warning in first and first.endswith("treating the reset time as unknown")


def test_a_reset_in_the_past_waits_what_is_left_of_the_buffer(state: Path) -> None:
    deadline_in(state, 3600)
    assert Run(state, reset=protocol.format_time(T - 10)).slept == 50
    run = Run(state, reset=protocol.format_time(T - 3600))
    assert (run.code, run.sleeps, run.err.getvalue()) == (0, [], "")
    # Even past the deadline: nothing to wait for is not a quota stop.
    deadline_in(state, -30)
    assert Run(state, reset_in="-120").code == 0
    assert not (state / protocol.OUTCOME_FILE).exists()


def test_the_state_folder_comes_from_the_environment(state: Path) -> None:
    deadline_in(state, 10)
    out, err = io.StringIO(), io.StringIO()
    environ = {protocol.ENV_STATE_DIR: str(state)}
    code = quotaguard.guard(reset_in="3600", environ=environ, now=lambda: T, sleep=print, out=out, err=err)
    assert code == 75 and protocol.read_outcome(state) is not None


def test_a_supervisor_stop_under_way_keeps_its_outcome(state: Path) -> None:
    deadline_in(state, -1)
    stop = {
        "reason": "DeadlineExceeded",
        "message": "the deadline passed",
        "deadline": "2027-01-15T07:59:59Z",
    }
    (state / protocol.OUTCOME_FILE).write_text(json.dumps(stop))
    run = Run(state, reset_in="3600")
    assert run.code == 75
    assert run.outcome == stop
    assert "already stopping the session (DeadlineExceeded)" in run.err.getvalue()


@pytest.mark.parametrize("earlier", ['{"reason": "Failed", "message": "an earlier try"}', "{half"])
def test_an_earlier_or_broken_outcome_of_the_session_is_replaced(state: Path, earlier: str) -> None:
    deadline_in(state, 10)
    (state / protocol.OUTCOME_FILE).write_text(earlier)
    run = Run(state, reset_in="3600")
    assert run.code == 75 and run.outcome["reason"] == "QuotaExhausted"


def test_an_outcome_that_cannot_be_written_still_exits_75(tmp_path: Path) -> None:
    environ = {protocol.ENV_SESSION_DEADLINE: str(int(T + 10))}
    run = Run(tmp_path / "missing", reset_in="3600", environ=environ)
    assert run.code == 75
    assert "cannot write the outcome" in run.err.getvalue()


def test_a_resume_token_too_long_for_a_termination_message_is_left_out(state: Path) -> None:
    deadline_in(state, 10)
    (state / protocol.RESUME_TOKEN_FILE).write_text("x" * 4000)
    run = Run(state, reset_in="3600")
    assert run.code == 75
    assert "resumeToken" not in run.outcome
    assert run.outcome["message"].endswith("; the resume token (4000 bytes) is too long to report")
    assert len(run.outcome_path.read_bytes()) < protocol.MAX_OUTCOME_BYTES


@pytest.mark.parametrize("exit_code", [75, 0])
def test_the_operator_requeues_on_the_guards_outcome(state: Path, exit_code: int) -> None:
    """The outcome is the session's termination message; it decides even when the agent CLI exits 0."""
    deadline_in(state, 10)
    (state / protocol.RESUME_TOKEN_FILE).write_text("session-42")
    assert Run(state, reset="2027-01-15T09:00:00Z").code == 75
    message = (state / protocol.OUTCOME_FILE).read_text(encoding="utf-8")
    pod = PodView(name="d-1", attempt=1, phase="Failed", session=Termination(exit_code, message=message))
    outcome = classify.judge(None, pod)
    assert outcome is not None
    assert (outcome.reason, outcome.verdict, outcome.failure_class) == ("QuotaExhausted", "Requeue", "Quota")
    assert outcome.reset_at == datetime(2027, 1, 15, 9, tzinfo=UTC)
    assert outcome.resume_token == "session-42"


def test_the_quota_exit_code_is_the_one_the_operator_classifies() -> None:
    assert quotaguard.QUOTA_EXIT_CODE == classify.QUOTA_EXIT_CODE


# --- standard library only --------------------------------------------------------------------------------


def test_two_vendored_files_run_without_the_package(tmp_path: Path) -> None:
    """A session image copies protocol.py and quotaguard.py into a folder; no install, no site-packages."""
    vendored = tmp_path / "vendor" / "fleetdispatch"
    vendored.mkdir(parents=True)
    for name in ("protocol.py", "quotaguard.py"):
        shutil.copy(ROOT / "operator" / "fleetdispatch" / "session" / name, vendored / name)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(vendored.parent)}
    where = subprocess.run(
        [sys.executable, "-S", "-c", "import fleetdispatch.quotaguard as q; print(q.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip() == str(vendored / "quotaguard.py")
    run = subprocess.run(
        [sys.executable, "-S", "-m", "fleetdispatch.quotaguard", "--reset-in", "5", "--print"],
        env={**env, protocol.ENV_STATE_DIR: str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (run.returncode, run.stdout) == (0, "65\n")


# --- the command lines, in real processes -----------------------------------------------------------------


def _env(state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return {**env, protocol.ENV_STATE_DIR: str(state), **extra}


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "fleetdispatch.cli", "quota-guard"],
        [sys.executable, "-m", "fleetdispatch.quotaguard"],
        [sys.executable, "-m", "fleetdispatch.session.quotaguard"],
    ],
    ids=["fleetdispatch quota-guard", "python -m fleetdispatch.quotaguard", "the module itself"],
)
def test_command_line_end_to_end(state: Path, command: list[str]) -> None:
    now = datetime.now(UTC).timestamp()
    protocol.write_atomic(state / protocol.DEADLINE_FILE, protocol.format_deadline(now + 600))
    (state / protocol.RESUME_TOKEN_FILE).write_text("session-42\n")
    reset = protocol.format_time(now + 3600)
    stop = subprocess.run(
        [*command, "--reset-at", reset], env=_env(state), capture_output=True, text=True, check=False
    )
    assert stop.returncode == 75, stop.stderr
    assert stop.stdout == "" and "does not fit the remaining budget" in stop.stderr
    outcome = json.loads((state / protocol.OUTCOME_FILE).read_text())
    assert (outcome["reason"], outcome["resetAt"], outcome["resumeToken"]) == (
        "QuotaExhausted",
        reset,
        "session-42",
    )
    (state / protocol.OUTCOME_FILE).unlink()

    told = subprocess.run(
        [*command, "--reset-in", "90s", "--print"],
        env=_env(state),
        capture_output=True,
        text=True,
        check=False,
    )
    assert (told.returncode, told.stdout) == (0, "150\n")
    # A real (short) sleep: --buffer 0.2 with the reset now.
    waited = subprocess.run(
        [*command, "--reset-in", "0", "--buffer", "0.2", "--state-dir", str(state)],
        env=_env(state.parent / "elsewhere"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert waited.returncode == 0, waited.stderr
    assert "waiting 1 s; " in waited.stderr
    assert not (state / protocol.OUTCOME_FILE).exists()

    usage = subprocess.run(
        [*command, "--buffer", "-1"], env=_env(state), capture_output=True, text=True, check=False
    )
    assert usage.returncode == 2 and "--buffer" in usage.stderr
    both = subprocess.run(
        [*command, "--reset-at", reset, "--reset-in", "5"], capture_output=True, text=True, check=False
    )
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_the_cli_delegates_to_the_guard(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deadline_in(state, 10)
    assert cli.main(["quota-guard", "--reset-in", "5", "--print", "--state-dir", str(state)]) == 0
    assert capsys.readouterr().out == "65\n"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["quota-guard", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: fleetdispatch quota-guard ")


# --- the hook script --------------------------------------------------------------------------------------

CLAUDE_INPUT = json.dumps(
    {
        "session_id": "9f1c2d3e-aaaa-bbbb-cccc-1234567890ab",
        "transcript_path": "/home/agent/.claude/projects/w/9f1c.jsonl",
        "cwd": "/workspace",
        "hook_event_name": "PreToolUse",
        "tool_name": "Bash",
        "tool_input": {"command": 'grep -r "session_id" .', "session_id": "not-this-one"},
    }
)


def hook(state: Path, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    environment = _env(state, **{"FLEET_QUOTA_GUARD": GUARD, **env})
    return subprocess.run(
        ["sh", str(HOOK)], input=stdin, env=environment, capture_output=True, text=True, check=False
    )


@pytest.fixture
def live_state(state: Path) -> Callable[[float], None]:
    """Set the live deadline `seconds` from the real now (the hook runs real processes)."""

    def set_deadline(seconds: float) -> None:
        now = datetime.now(UTC).timestamp()
        protocol.write_atomic(state / protocol.DEADLINE_FILE, protocol.format_deadline(now + seconds))

    return set_deadline


def test_hook_does_nothing_while_the_quota_is_not_known_to_be_exhausted(state: Path) -> None:
    run = hook(state, CLAUDE_INPUT, FLEET_QUOTA_GUARD="false")  # the guard would fail if it ran
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    assert sorted(p.name for p in state.iterdir()) == []


def test_hook_stops_claude_code_and_reports_its_session_id(
    state: Path, live_state: Callable[[float], None]
) -> None:
    live_state(600)
    (state / "quota-reset").write_text("2099-01-01T00:00:00Z\n")
    run = hook(state, CLAUDE_INPUT)
    assert run.returncode == 0, run.stderr  # Claude Code reads the answer on stdout only after exit 0
    answer = json.loads(run.stdout)
    assert answer["continue"] is False and "quota exhausted" in answer["stopReason"]
    assert answer["hookSpecificOutput"]["permissionDecision"] == "deny"
    outcome = protocol.read_outcome(state)
    assert outcome is not None
    assert (outcome["reason"], outcome["resetAt"]) == ("QuotaExhausted", "2099-01-01T00:00:00Z")
    assert outcome["resumeToken"] == "9f1c2d3e-aaaa-bbbb-cccc-1234567890ab"


def test_hook_exits_75_for_other_callers(state: Path, live_state: Callable[[float], None]) -> None:
    live_state(600)
    run = hook(state, QUOTA_RESET_AT="2099-01-01T00:00:00Z")
    assert (run.returncode, run.stdout) == (75, "")
    assert "does not fit the remaining budget" in run.stderr
    run = hook(state, CLAUDE_INPUT, QUOTA_RESET_AT="4070908800", QUOTA_HOOK_STYLE="exit")
    assert run.returncode == 75
    outcome = protocol.read_outcome(state)
    assert outcome is not None and outcome["resetAt"] == "2099-01-01T00:00:00Z"


def test_hook_lets_the_tool_run_once_the_reset_has_passed(
    state: Path, live_state: Callable[[float], None]
) -> None:
    live_state(600)
    passed = protocol.format_time(datetime.now(UTC).timestamp() - 120)
    (state / "quota-reset").write_text(f" {passed}\r\n")  # as an editor on another system might leave it
    run = hook(state, CLAUDE_INPUT, QUOTA_HOOK_SESSION_TOKEN="0")
    assert (run.returncode, run.stdout) == (0, ""), run.stderr
    assert sorted(p.name for p in state.iterdir()) == ["deadline"]  # the reset file is done with
