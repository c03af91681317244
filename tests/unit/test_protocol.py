"""The session protocol's files: atomic writes, a shell-friendly deadline, readers that never raise."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fleetdispatch.session import protocol


def test_deadline_file_is_integer_epoch_seconds_and_a_newline(tmp_path: Path) -> None:
    protocol.write_atomic(tmp_path / protocol.DEADLINE_FILE, protocol.format_deadline(1_800_000_000.9))
    assert (tmp_path / "deadline").read_text() == "1800000000\n"
    assert protocol.read_deadline(tmp_path) == 1_800_000_000
    shell = subprocess.run(
        ["sh", "-c", 'echo $(( $(cat "$0/deadline") + 1 ))', str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert shell.stdout == "1800000001\n"


@pytest.mark.parametrize("text", ["", "soon", "-5", "nan", "inf", "\0\0"])
def test_an_unreadable_deadline_is_none(tmp_path: Path, text: str) -> None:
    (tmp_path / "deadline").write_text(text)
    assert protocol.read_deadline(tmp_path) is None
    assert protocol.read_deadline(tmp_path / "missing") is None


def test_a_fractional_deadline_is_read_rounded_down(tmp_path: Path) -> None:
    (tmp_path / "deadline").write_text(" 1800000000.7 \n")
    assert protocol.read_deadline(tmp_path) == 1_800_000_000


@pytest.mark.parametrize(
    "content", [b"", b"{", b"[]", b'"Completed"', b'{"reason": 3}', b'{"reason": ""}', b"\xff\xfe", b"null"]
)
def test_a_junk_outcome_reads_as_none(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "outcome.json").write_bytes(content)
    assert protocol.read_outcome(tmp_path) is None


def test_an_outcome_with_a_reason_is_read(tmp_path: Path) -> None:
    outcome = {"reason": "QuotaExhausted", "resetAt": "2026-11-24T18:00:00Z"}
    (tmp_path / "outcome.json").write_text(json.dumps(outcome))
    assert protocol.read_outcome(tmp_path) == outcome
    assert protocol.read_outcome(tmp_path / "missing") is None


def test_write_atomic_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "deadline"
    assert protocol.write_atomic(path, "1\n")
    assert protocol.write_atomic(path, "2\n")
    assert path.read_text() == "2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["deadline"]


def test_write_atomic_without_replace_keeps_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "outcome.json"
    path.write_text('{"reason": "Completed"}')
    assert not protocol.write_atomic(path, '{"reason": "DeadlineExceeded"}', replace=False)
    assert path.read_text() == '{"reason": "Completed"}'
    assert [p.name for p in tmp_path.iterdir()] == ["outcome.json"]
    fresh = tmp_path / "fresh.json"
    assert protocol.write_atomic(fresh, "{}", replace=False)
    assert fresh.read_text() == "{}"


def test_resume_token_is_stripped_and_empty_means_none(tmp_path: Path) -> None:
    assert protocol.read_resume_token(tmp_path) is None
    (tmp_path / "resume-token").write_text("  session-42\n")
    assert protocol.read_resume_token(tmp_path) == "session-42"
    (tmp_path / "resume-token").write_text("\n")
    assert protocol.read_resume_token(tmp_path) is None


def test_rfc3339_is_utc_whole_seconds() -> None:
    assert protocol.format_time(0.9) == "1970-01-01T00:00:00Z"
    assert protocol.format_time(1_800_000_000) == "2027-01-15T08:00:00Z"
