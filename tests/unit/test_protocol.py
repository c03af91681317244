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


# --- hostile state files: each reader runs in a child process under a timeout, so a regression (a blocking
# open of a FIFO, a read of /dev/zero without end) fails the test instead of hanging or exhausting memory.

READERS = {
    protocol.DEADLINE_FILE: "read_deadline",
    protocol.RESUME_TOKEN_FILE: "read_resume_token",
    protocol.OUTCOME_FILE: "read_outcome",
}
READ_IN_A_CHILD = """
import json, resource, sys
from pathlib import Path
from fleetdispatch.session import protocol
resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
ignored = []
value = getattr(protocol, sys.argv[2])(Path(sys.argv[1]), ignored.append)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would be the parent's (pytest's) peak.
status = Path("/proc/self/status").read_text().splitlines()
peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"value": value, "ignored": ignored, "peak_kib": peak_kib}))
"""


def read_in_a_child(state_dir: Path, name: str) -> dict[str, object]:
    import sys

    done = subprocess.run(
        [sys.executable, "-c", READ_IN_A_CHILD, str(state_dir), READERS[name]],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", sorted(READERS))
def test_a_fifo_state_file_is_ignored_without_blocking(tmp_path: Path, name: str) -> None:
    import os

    os.mkfifo(tmp_path / name)  # no writer: a blocking open would wait for one forever
    read = read_in_a_child(tmp_path, name)
    assert read["value"] is None
    [line] = read["ignored"]  # type: ignore[misc]
    assert "not a regular file" in line and name in line


@pytest.mark.parametrize("name", sorted(READERS))
def test_a_symlink_to_dev_zero_is_not_followed(tmp_path: Path, name: str) -> None:
    (tmp_path / name).symlink_to("/dev/zero")
    read = read_in_a_child(tmp_path, name)
    assert read["value"] is None
    [line] = read["ignored"]  # type: ignore[misc]
    assert "cannot open" in line


def test_a_symlink_to_a_regular_file_is_not_followed_either(tmp_path: Path) -> None:
    # Else a session could have the supervisor report a file only the supervisor can read (its token).
    secret = tmp_path / "secret"
    secret.write_text("the heartbeat token\n")
    (tmp_path / protocol.RESUME_TOKEN_FILE).symlink_to(secret)
    ignored: list[str] = []
    assert protocol.read_resume_token(tmp_path, ignored.append) is None
    assert len(ignored) == 1


@pytest.mark.parametrize("name", sorted(READERS))
def test_a_300_mb_state_file_is_ignored_not_read(tmp_path: Path, name: str) -> None:
    with open(tmp_path / name, "wb") as file:
        file.write(b"1" * 1024)
        file.truncate(300 << 20)  # sparse: 300 MB as far as any reader can tell
    read = read_in_a_child(tmp_path, name)
    assert read["value"] is None
    [line] = read["ignored"]  # type: ignore[misc]
    assert "over the 65536-byte limit" in line
    assert int(read["peak_kib"]) < 64 << 10  # type: ignore[call-overload]  # KiB: the file was never read


def test_a_state_file_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    token = "t" * protocol.MAX_STATE_FILE_BYTES
    (tmp_path / protocol.RESUME_TOKEN_FILE).write_text(token)
    assert protocol.read_resume_token(tmp_path) == token
    (tmp_path / protocol.RESUME_TOKEN_FILE).write_text(token + "t")
    ignored: list[str] = []
    assert protocol.read_resume_token(tmp_path, ignored.append) is None
    assert ignored


def test_a_directory_or_a_missing_file_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / protocol.OUTCOME_FILE).mkdir()
    ignored: list[str] = []
    assert protocol.read_outcome(tmp_path, ignored.append) is None
    assert protocol.read_deadline(tmp_path, ignored.append) is None  # missing: nothing to say
    assert len(ignored) == 1


def test_the_resume_token_of_a_report_is_read_back_only_when_it_is_one() -> None:
    assert protocol.read_report_resume_token({"resumeToken": "step-3", "deadline": "x"}) == "step-3"
    too_long = "t" * (protocol.MAX_RESUME_TOKEN_BYTES + 1)
    for value in ({}, {"resumeToken": ""}, {"resumeToken": 5}, {"resumeToken": too_long}, ["resumeToken"]):
        assert protocol.read_report_resume_token(value) is None
