"""The session's `usage.json`, session side: the reader against hostile files, the format's bounds, and the
supervisor reporting it in its final report (within the termination message's 4096 bytes) and its
heartbeat (the Lease's `usage` annotation)."""

from __future__ import annotations

import json
import os
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetdispatch.session import heartbeat, protocol
from fleetdispatch.session import usage as session_usage
from fleetdispatch.session.config import SupervisorConfig
from fleetdispatch.session.heartbeat import LeaseStatus
from fleetdispatch.session.usage import UsageReader
from supervision import Beats, Clock, ScriptedProbe, scripted_supervisor

FULL = {
    "inputTokens": 1200,
    "outputTokens": 5400,
    "cacheReadTokens": 88000,
    "cacheWriteTokens": 3100,
    "cost": "0.4213",
    "currency": "EUR",
    "model": "claude-sonnet-4-5",
}


def reader(tmp_path: Path) -> tuple[UsageReader, list[str]]:
    lines: list[str] = []
    return UsageReader(tmp_path, lines.append), lines


def write(tmp_path: Path, content: Any) -> None:
    text = content if isinstance(content, str | bytes) else json.dumps(content)
    path = tmp_path / session_usage.USAGE_FILE
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


# --- the reader ---------------------------------------------------------------------------------------


def test_a_full_usage_is_read_as_written(tmp_path: Path) -> None:
    usage_reader, lines = reader(tmp_path)
    write(tmp_path, FULL)
    assert usage_reader.read() == FULL
    assert lines == []


def test_no_file_is_no_usage_and_no_complaint(tmp_path: Path) -> None:
    usage_reader, lines = reader(tmp_path)
    assert usage_reader.read() is None
    assert lines == []


def test_a_fifo_is_not_waited_for(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / session_usage.USAGE_FILE)
    usage_reader, lines = reader(tmp_path)
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(usage_reader.read()), daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "reading a FIFO blocked"
    assert result == [None]
    assert len(lines) == 1 and "usage.json" in lines[0]


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(FULL))
    (tmp_path / session_usage.USAGE_FILE).symlink_to(target)
    usage_reader, lines = reader(tmp_path)
    assert usage_reader.read() is None
    assert len(lines) == 1 and "ignored" in lines[0]


def test_a_huge_file_is_not_read(tmp_path: Path) -> None:
    write(tmp_path, '{"inputTokens": 1' + " " * (protocol.MAX_STATE_FILE_BYTES + 10) + "}")
    usage_reader, lines = reader(tmp_path)
    assert usage_reader.read() is None
    assert len(lines) == 1 and "limit" in lines[0]


def test_a_directory_is_ignored(tmp_path: Path) -> None:
    (tmp_path / session_usage.USAGE_FILE).mkdir()
    usage_reader, lines = reader(tmp_path)
    assert usage_reader.read() is None
    assert len(lines) == 1


@pytest.mark.parametrize("junk", ["{", "not json", b"\xff\xfe", "[1, 2]", '"text"', "null", "[" * 100000])
def test_bad_json_is_ignored_with_one_line(tmp_path: Path, junk: str | bytes) -> None:
    write(tmp_path, junk)
    usage_reader, lines = reader(tmp_path)
    assert usage_reader.read() is None
    assert len(lines) == 1 and lines[0].endswith("ignored")


def test_the_same_complaint_is_logged_once_and_again_after_a_good_read(tmp_path: Path) -> None:
    usage_reader, lines = reader(tmp_path)
    write(tmp_path, "{")
    for _ in range(5):
        assert usage_reader.read() is None
    assert len(lines) == 1
    write(tmp_path, {"inputTokens": 1})
    assert usage_reader.read() == {"inputTokens": 1}
    write(tmp_path, "{")
    usage_reader.read()
    assert len(lines) == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("inputTokens", -1),
        ("outputTokens", 1.5),
        ("cacheReadTokens", "12"),
        ("cacheWriteTokens", True),
        ("inputTokens", session_usage.MAX_TOKENS + 1),
        ("inputTokens", int("9" * 40)),
        ("cost", "-0.5"),
        ("cost", "1e400"),
        ("cost", "NaN"),
        ("cost", "0x10"),
        ("cost", "1" * 13),
        ("cost", None),
        ("currency", "usd"),
        ("currency", "DOLLARS"),
        ("model", "x" * 129),
        ("model", "line\nbreak"),
        ("model", "émoji"),
        ("model", ""),
    ],
)
def test_a_bad_field_is_left_out_and_the_rest_kept(tmp_path: Path, field: str, value: Any) -> None:
    good = {"outputTokens": 7, "inputTokens": 3}
    write(tmp_path, {**good, field: value})
    usage_reader, lines = reader(tmp_path)
    assert usage_reader.read() == {k: v for k, v in good.items() if k != field}
    assert len(lines) == 1 and field in lines[0]


def test_negative_numbers_never_reach_the_report(tmp_path: Path) -> None:
    write(tmp_path, {"inputTokens": -5, "outputTokens": -1, "cost": "-3"})
    usage_reader, lines = reader(tmp_path)
    assert usage_reader.read() is None
    assert len(lines) == 1 and "inputTokens" in lines[0] and "cost" in lines[0]


@pytest.mark.parametrize(
    ("written", "cost"),
    [
        ('{"cost": 0.0123}', "0.0123"),
        ('{"cost": 1.2e-05}', "0.000012"),
        ('{"cost": 3E2}', "300"),
        ('{"cost": 5}', "5"),
        ('{"cost": "007.50"}', "7.5"),
        ('{"cost": "0.1234567890123456"}', "0.123456789012"),  # rounded down past 12 places
        ('{"cost": "0"}', "0"),
        ('{"cost": 1e-20}', "0"),
    ],
)
def test_a_cost_is_a_normalised_decimal_string_in_usd_by_default(
    tmp_path: Path, written: str, cost: str
) -> None:
    write(tmp_path, written)
    usage_reader, _ = reader(tmp_path)
    assert usage_reader.read() == {"cost": cost, "currency": "USD"}


@given(
    st.decimals(min_value=0, max_value=10**11, allow_nan=False, allow_infinity=False, places=12).filter(
        lambda d: not d.is_signed()
    )
)
def test_decimal_text_is_exact_for_any_decimal(value: Decimal) -> None:
    text = session_usage.decimal_text(format(value, "f"))
    assert text is not None and Decimal(text) == value
    assert session_usage.decimal_text(f"{value:e}") is not None  # the exponent form is taken too


# --- the supervisor -----------------------------------------------------------------------------------


def config(tmp_path: Path, **values: Any) -> SupervisorConfig:
    defaults: dict[str, Any] = {
        "deadline_seconds": 5,
        "max_extension_seconds": 0,
        "idle_output_seconds": 0,
        "kill_grace_seconds": 1,
        "poll_seconds": 1,
        "state_dir": str(tmp_path),
        "dispatch": "ns/d",
        "attempt": "1",
    }
    return SupervisorConfig(**{**defaults, **values})


def test_the_final_report_and_the_heartbeat_carry_the_usage(tmp_path: Path) -> None:
    clock = Clock()
    probe = ScriptedProbe(clock)
    beats = Beats()
    report = tmp_path / "termination-log"

    def session_works() -> None:  # the session writes more as it goes
        write(tmp_path, {"inputTokens": int(clock.now), "cost": "0.01"})
        probe.alive = clock.now < 103

    clock.on_sleep.append(session_works)
    loop = scripted_supervisor(config(tmp_path, report_file=str(report)), clock, probe, heartbeat=beats)
    assert loop.run() == 0
    final = json.loads(report.read_text())
    assert final[session_usage.REPORT_USAGE] == {"inputTokens": 103, "cost": "0.01", "currency": "USD"}
    carried = [json.loads(s.usage) for s in beats.statuses if s.usage is not None]
    assert carried and carried[-1]["inputTokens"] == 102
    assert [c["inputTokens"] for c in carried] == sorted(c["inputTokens"] for c in carried)


def test_a_stop_with_the_longest_token_and_usage_fits_the_termination_message(tmp_path: Path) -> None:
    (tmp_path / protocol.RESUME_TOKEN_FILE).write_text("t" * protocol.MAX_RESUME_TOKEN_BYTES)
    biggest = {
        **{field: session_usage.MAX_TOKENS for field in session_usage.TOKEN_FIELDS},
        "cost": "9" * 12 + "." + "9" * 12,
        "currency": "USD",
        "model": "~" * session_usage.MAX_MODEL_LENGTH,
    }
    write(tmp_path, biggest)
    clock = Clock()
    probe = ScriptedProbe(clock, ignores_term=True)
    report = tmp_path / "termination-log"
    assert scripted_supervisor(config(tmp_path, report_file=str(report)), clock, probe).run() == 0
    data = report.read_bytes()
    assert len(data) <= protocol.MAX_OUTCOME_BYTES
    final = json.loads(data)
    assert final["reason"] == protocol.DEADLINE_EXCEEDED
    assert final[session_usage.REPORT_USAGE] == biggest
    assert final[protocol.REPORT_RESUME_TOKEN] == "t" * protocol.MAX_RESUME_TOKEN_BYTES


def test_the_lease_annotation_is_the_compact_usage() -> None:
    status = LeaseStatus(deadline=1_800_000_000.0, usage=session_usage.encode(FULL))
    annotations = status.annotations()
    value = annotations[heartbeat.ANNOTATION_PREFIX + heartbeat.USAGE_ANNOTATION]
    assert json.loads(value) == FULL and " " not in value
    assert (
        heartbeat.ANNOTATION_PREFIX + heartbeat.USAGE_ANNOTATION
        not in LeaseStatus(deadline=1.0).annotations()
    )
