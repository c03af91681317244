"""`fleetdispatch supervise` end to end, as a real process against real session processes.

Budgets are a second or two and polls a tenth of a second, so each test takes seconds; the margins are
generous because a shared 2-core machine may be busy with other test runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetdispatch.session import protocol
from sessions import BUSY, SLEEP, Sessions, alive, exited, flags, in_pid_namespace, pid_namespace_available
from waiting import eventually

# A CPU threshold no process reaches: isolates the signal a test is about from the interpreter's start-up.
NO_CPU = 10000
SLACK = 1.5  # seconds a stop may come after its due time on a loaded machine (one poll is 0.1 s)


def outcome(session: Sessions) -> dict[str, object]:
    return json.loads((session.state_dir / "outcome.json").read_text())  # type: ignore[no-any-return]


def published_deadline(session: Sessions) -> int | None:
    return protocol.read_deadline(session.state_dir)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    # A connection completes in the listen backlog: ESTABLISHED without the server ever accepting it.
    server = socket.create_server(("127.0.0.1", 0))
    yield server
    server.close()


def test_a_busy_session_is_extended_then_stopped_at_the_cap(session: Sessions) -> None:
    busy = session.spawn(BUSY)
    started = time.monotonic()
    supervisor = session.supervise(*flags(deadline_seconds=1, max_extension_seconds=1, idle_output_seconds=0))
    eventually(lambda: published_deadline(session) is not None, 10)
    initial = published_deadline(session)
    eventually(exited(busy), 2 + 10)
    lived = time.monotonic() - started
    assert lived >= 2.0, "stopped before the cap: the extension did not happen"
    assert lived <= 2.0 + SLACK + 1.0  # + the supervisor's own start-up
    assert busy.returncode == -signal.SIGTERM
    assert supervisor.wait() == 0
    assert initial is not None and published_deadline(session) == initial + 1, "the deadline file is live"
    extended = supervisor.named("extended")
    assert extended and all(e["activityReason"] == "cpu" for e in extended)
    assert extended[-1]["atCap"] is True
    [stop] = supervisor.named("stop")
    assert stop["reason"] == "DeadlineExceeded"
    written = outcome(session)
    assert written["reason"] == "DeadlineExceeded"
    assert written["deadline"] == written["deadlineCap"]
    assert written["activityReason"] == "cpu"
    assert "(the cap)" in str(written["message"])


def test_a_sleeping_session_is_stopped_at_the_deadline_and_nothing_else_is_signalled(
    session: Sessions,
) -> None:
    (session.state_dir / "resume-token").write_text("agent-session-42\n")
    sleeper = session.spawn(SLEEP)
    other_attempt = session.spawn(SLEEP, attempt="2")
    unmarked = session.spawn(SLEEP, marker=False)
    started = time.monotonic()
    supervisor = session.supervise(
        *flags(
            deadline_seconds=1, max_extension_seconds=10, idle_output_seconds=0, cpu_percent_threshold=NO_CPU
        )
    )
    eventually(exited(sleeper), 10)
    assert 1.0 <= time.monotonic() - started <= 1.0 + SLACK + 1.0
    assert supervisor.wait() == 0
    assert supervisor.named("extended") == []
    assert other_attempt.poll() is None and unmarked.poll() is None
    written = outcome(session)
    assert written["reason"] == "DeadlineExceeded"
    assert written["resumeToken"] == "agent-session-42"
    assert written["deadline"] == protocol.format_time(published_deadline(session) or 0)
    assert "lastActivityTime" not in written
    assert "no activity seen" in str(written["message"])
    assert [e["processes"] for e in supervisor.named("signalled")] == [1]


@pytest.mark.parametrize("same_port", [True, False], ids=["api-endpoint", "another-port"])
def test_an_established_connection_to_an_api_endpoint_counts_as_active(
    session: Sessions, listener: socket.socket, same_port: bool
) -> None:
    port = listener.getsockname()[1]
    other = socket.create_server(("127.0.0.1", 0))
    endpoint = port if same_port else other.getsockname()[1]
    try:
        connected = session.spawn(
            f"import signal, socket; s = socket.create_connection(('127.0.0.1', {port})); signal.pause()"
        )
        supervisor = session.supervise(
            *flags(
                deadline_seconds=1,
                max_extension_seconds=1,
                idle_output_seconds=0,
                cpu_percent_threshold=NO_CPU,
                api_endpoint=f"127.0.0.1:{endpoint}",
            )
        )
        assert supervisor.wait() == 0
    finally:
        other.close()
    assert connected.poll() is not None
    extended = supervisor.named("extended")
    if same_port:
        assert extended and {e["activityReason"] for e in extended} == {"api-connection"}
        assert outcome(session)["deadline"] == outcome(session)["deadlineCap"]
    else:
        assert extended == []
        assert outcome(session)["deadline"] != outcome(session)["deadlineCap"]


def test_an_open_api_connection_does_not_keep_an_idle_session_alive(
    session: Sessions, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    session.spawn(
        f"import signal, socket; s = socket.create_connection(('127.0.0.1', {port})); signal.pause()"
    )
    supervisor = session.supervise(
        *flags(
            deadline_seconds=1,
            max_extension_seconds=30,
            idle_output_seconds=1,
            cpu_percent_threshold=NO_CPU,
            api_endpoint=f":{port}",
        )
    )
    assert supervisor.wait() == 0
    assert supervisor.named("extended"), "the connection moves the deadline"
    written = outcome(session)
    assert written["reason"] == "IdleTimeout"
    assert written["activityReason"] == "api-connection"
    assert "lastOutputTime" in written


WRITE_FOR_TWO_SECONDS = """
import os, signal, time
end = time.monotonic() + 2.0
out = os.open({target!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
while time.monotonic() < end:
    os.write(out, b"line\\n")
    time.sleep(0.2)
signal.pause()
"""


@pytest.mark.parametrize("target", ["transcript", "/dev/null"], ids=["output-path", "wchar"])
def test_output_resets_the_idle_timer(session: Sessions, target: str) -> None:
    writer = session.spawn(WRITE_FOR_TWO_SECONDS.format(target=target))
    started = time.monotonic()
    supervisor = session.supervise(
        *flags(
            deadline_seconds=30, idle_output_seconds=1, cpu_percent_threshold=NO_CPU, output_path="transcript"
        )
    )
    eventually(exited(writer), 15)
    assert time.monotonic() - started >= 2.0 + 1.0 - 0.3, "stopped while the session was still writing"
    assert supervisor.wait() == 0
    written = outcome(session)
    assert written["reason"] == "IdleTimeout"
    assert written["activityReason"] == "output"


DAEMON = """
import os, signal, sys
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open("grandchild.pid", "w") as f:
            f.write(str(os.getpid()))
        signal.pause()
    os._exit(0)
os.wait()
"""


def test_a_daemonised_grandchild_is_found_and_stopped(session: Sessions) -> None:
    parent = session.spawn(DAEMON)
    pid_file = session.state_dir / "grandchild.pid"
    eventually(lambda: pid_file.exists() and pid_file.read_text() != "", 10)
    grandchild = int(pid_file.read_text())
    session.adopt(grandchild)
    parent.wait(timeout=10)  # the session's own process is gone: only the daemon is left
    supervisor = session.supervise(
        *flags(
            deadline_seconds=1, max_extension_seconds=0, idle_output_seconds=0, cpu_percent_threshold=NO_CPU
        )
    )
    assert supervisor.wait() == 0
    assert not alive(grandchild)
    assert [e["processes"] for e in supervisor.named("signalled")] == [1]


def test_a_session_that_ignores_term_is_killed_after_the_grace(session: Sessions) -> None:
    stubborn = session.spawn(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); open('ready', 'w').close(); "
        "signal.pause()"
    )
    eventually((session.state_dir / "ready").exists, 10)
    supervisor = session.supervise(
        *flags(deadline_seconds=1, max_extension_seconds=0, idle_output_seconds=0, kill_grace_seconds=1)
    )
    eventually(lambda: bool(supervisor.named("stop")), 10)
    stopped = time.monotonic()
    eventually(exited(stubborn), 10)
    assert 1.0 - 0.2 <= time.monotonic() - stopped <= 1.0 + SLACK
    assert stubborn.returncode == -signal.SIGKILL
    assert supervisor.wait() == 0
    assert [(e["signal"], e["processes"]) for e in supervisor.named("signalled")] == [
        ("TERM", 1),
        ("KILL", 1),
    ]


def test_the_supervisor_waits_for_the_session_and_exits_when_none_is_left(session: Sessions) -> None:
    supervisor = session.supervise(*flags(deadline_seconds=30, idle_output_seconds=0))
    time.sleep(0.6)
    assert supervisor.process.poll() is None, "it waits for a session that has not started yet"
    session.spawn("import time; time.sleep(0.8)")
    assert supervisor.wait() == 0
    assert supervisor.named("exit")[-1]["reason"] == "no session process is left"
    assert not (session.state_dir / "outcome.json").exists()
    assert supervisor.named("signalled") == []


def test_a_deadline_that_passes_before_any_session_appears_ends_the_supervisor(session: Sessions) -> None:
    supervisor = session.supervise(*flags(deadline_seconds=1))
    assert supervisor.wait(timeout=10) == 0
    assert "no session process appeared" in str(supervisor.named("exit")[-1]["reason"])


def test_the_outcome_a_session_wrote_is_left_alone(session: Sessions) -> None:
    own = '{"reason": "QuotaExhausted", "resetAt": "2030-01-01T00:00:00Z"}\n'
    (session.state_dir / "outcome.json").write_text(own)
    session.spawn(SLEEP)
    supervisor = session.supervise(
        *flags(
            deadline_seconds=1, max_extension_seconds=0, idle_output_seconds=0, cpu_percent_threshold=NO_CPU
        )
    )
    assert supervisor.wait() == 0
    assert (session.state_dir / "outcome.json").read_text() == own
    assert supervisor.named("stop")[0]["outcomeWritten"] is False


def test_sigterm_ends_the_supervisor_at_once_and_leaves_the_session_to_the_kubelet(session: Sessions) -> None:
    sleeper = session.spawn(SLEEP)
    supervisor = session.supervise(*flags(deadline_seconds=30, poll_seconds=5))
    eventually(lambda: bool(supervisor.named("start")), 10)
    time.sleep(0.3)  # into its first sleep between polls
    signalled = time.monotonic()
    supervisor.process.send_signal(signal.SIGTERM)
    eventually(exited(supervisor.process), 5)
    assert time.monotonic() - signalled < 1.0
    assert supervisor.process.returncode == 0
    assert sleeper.poll() is None
    assert "terminated" in str(supervisor.named("exit")[-1]["reason"])


def test_the_supervisor_marks_itself_non_dumpable(session: Sessions) -> None:
    # PR_GET_DUMPABLE (3) in a fresh interpreter, after the call the supervisor makes at start.
    probe = (
        "import ctypes; from fleetdispatch.session.nondumpable import set_non_dumpable; "
        "assert set_non_dumpable(); print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"
    )
    checked = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert checked.stdout == "0\n"
    session.spawn(SLEEP)
    supervisor = session.supervise(*flags(deadline_seconds=30))
    eventually(lambda: bool(supervisor.named("start")), 10)
    supervisor.process.send_signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    assert supervisor.named("warning") == []


# --- hostile state files, restarts, TERM ----------------------------------------------------------------


def test_fifos_for_the_resume_token_and_the_outcome_do_not_hang_the_stop(session: Sessions) -> None:
    # A blocking open() of a FIFO without a writer waits forever: the stop would never come.
    os.mkfifo(session.state_dir / protocol.RESUME_TOKEN_FILE)
    os.mkfifo(session.state_dir / protocol.OUTCOME_FILE)
    sleeper = session.spawn(SLEEP)
    supervisor = session.supervise(
        *flags(
            deadline_seconds=1, max_extension_seconds=0, idle_output_seconds=0, cpu_percent_threshold=NO_CPU
        )
    )
    assert supervisor.wait(timeout=20) == 0
    assert sleeper.wait(timeout=5) == -signal.SIGTERM
    warnings = [str(w["message"]) for w in supervisor.named("warning")]
    assert any(protocol.RESUME_TOKEN_FILE in w and "not a regular file" in w for w in warnings), warnings
    assert any(protocol.OUTCOME_FILE in w and "not a regular file" in w for w in warnings), warnings
    # The junk outcome is replaced by the supervisor's (a FIFO is no session's outcome).
    assert outcome(session)["reason"] == "DeadlineExceeded"


def test_a_resume_token_linked_to_dev_zero_is_not_read(session: Sessions) -> None:
    (session.state_dir / protocol.RESUME_TOKEN_FILE).symlink_to("/dev/zero")
    session.spawn(SLEEP)
    supervisor = session.supervise(
        *flags(
            deadline_seconds=1, max_extension_seconds=0, idle_output_seconds=0, cpu_percent_threshold=NO_CPU
        )
    )
    assert supervisor.wait(timeout=20) == 0
    assert "resumeToken" not in outcome(session)
    assert any(protocol.RESUME_TOKEN_FILE in str(w["message"]) for w in supervisor.named("warning"))


def test_a_restarted_supervisor_continues_the_attempts_deadline(session: Sessions) -> None:
    sleeper = session.spawn(SLEEP)
    # A cap far out (the session is never active): the cap counts from the session's start, which comes
    # before the first supervisor's, so a cap of 4 s could come before the first supervisor's deadline.
    quiet = flags(
        deadline_seconds=4, max_extension_seconds=60, idle_output_seconds=0, cpu_percent_threshold=NO_CPU
    )
    first = session.supervise(*quiet)
    eventually(lambda: bool(first.named("start")), 10)
    deadline = published_deadline(session)
    assert deadline is not None
    first.process.kill()  # as the OOM killer, or the session itself (same UID), would
    first.wait()
    time.sleep(1.5)
    second = session.supervise(*quiet)
    eventually(lambda: bool(second.named("start")), 10)
    [start] = second.named("start")
    assert start["restarted"] is True
    assert protocol.parse_time(start["deadline"]) == protocol.parse_time(protocol.format_time(deadline))
    eventually(exited(sleeper), 10)
    assert time.time() < deadline + 1 + SLACK, "stopped at the first supervisor's deadline, not a fresh one"
    assert second.wait() == 0
    assert second.named("stop")[0]["reason"] == "DeadlineExceeded"


def test_a_deadline_file_the_session_pushed_out_does_not_pass_the_cap(session: Sessions) -> None:
    sleeper = session.spawn(SLEEP)
    started = time.time()
    time.sleep(0.3)
    # A session that kills the supervisor and rewrites the file: the restarted one still holds the cap,
    # counted from the session's start (deadline 3 s + extension 1 s).
    protocol.write_atomic(
        session.state_dir / protocol.DEADLINE_FILE, protocol.format_deadline(started + 3600)
    )
    supervisor = session.supervise(
        *flags(
            deadline_seconds=3, max_extension_seconds=1, idle_output_seconds=0, cpu_percent_threshold=NO_CPU
        )
    )
    eventually(exited(sleeper), 15)
    assert time.time() - started <= 4 + SLACK
    assert supervisor.wait() == 0
    [start] = supervisor.named("start")
    assert start["restarted"] is True and start["deadline"] == start["cap"]


def test_a_stale_deadline_file_from_an_earlier_run_is_no_restart(session: Sessions) -> None:
    protocol.write_atomic(
        session.state_dir / protocol.DEADLINE_FILE, protocol.format_deadline(time.time() - 60)
    )
    os.utime(session.state_dir / protocol.DEADLINE_FILE, (time.time() - 60, time.time() - 60))
    time.sleep(0.1)
    sleeper = session.spawn(SLEEP)
    supervisor = session.supervise(*flags(deadline_seconds=30, cpu_percent_threshold=NO_CPU))
    eventually(lambda: bool(supervisor.named("start")), 10)
    assert "restarted" not in supervisor.named("start")[0]
    time.sleep(0.5)
    assert sleeper.poll() is None
    supervisor.process.send_signal(signal.SIGTERM)
    assert supervisor.wait() == 0


def test_sigterm_reports_the_last_resume_token(session: Sessions, tmp_path: Path) -> None:
    report = tmp_path / "termination-log"
    session.spawn(SLEEP)
    supervisor = session.supervise(*flags(deadline_seconds=30, report_file=report))
    eventually(lambda: bool(supervisor.named("start")), 10)
    time.sleep(0.3)  # seen the session
    protocol.write_atomic(session.state_dir / protocol.RESUME_TOKEN_FILE, "step-41\n")
    supervisor.process.send_signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    message = json.loads(report.read_text())
    assert message["resumeToken"] == "step-41"
    assert "deadline" in message


# --- in a PID namespace of its own, as in the session pod -------------------------------------------------

needs_pid_namespace = pytest.mark.skipif(
    not pid_namespace_available(), reason="needs `unshare --pid --fork --mount-proc` (root)"
)

# PID 1 (the pause process) starts sessions that shed the marker, then the real `fleetdispatch supervise
# --pid-namespace=pod`, and waits for it; it reports how each session process ended and the supervisor's log.
POD_SUPERVISE = r"""
import json, os, signal, subprocess, sys, tempfile, time
state = tempfile.mkdtemp()
SLEEP = "import signal; signal.pause()"
marked = {**os.environ, "FLEET_DISPATCH": "ns/d", "FLEET_ATTEMPT": "1", "FLEET_STATE_DIR": state}
mode = sys.argv[1]
if mode == "stop":
    sessions = [
        subprocess.Popen(["env", "-i", sys.executable, "-c", SLEEP]),
        subprocess.Popen(["sh", "-c", f"exec env -i FLEET_ATTEMPT=2 {sys.executable} -c '{SLEEP}'"]),
    ]
    budget = ["--deadline-seconds=2", "--max-extension-seconds=0"]
else:  # "exit": a session that ends by itself
    sessions = [subprocess.Popen(["env", "-i", "sleep", "1"])]
    budget = ["--deadline-seconds=30"]
log = open(os.path.join(state, "supervisor.log"), "w+")
supervisor = subprocess.Popen(
    [sys.executable, "-m", "fleetdispatch.cli", "supervise", "--pid-namespace=pod", "--dispatch=ns/d",
     "--attempt=1", f"--state-dir={state}", "--poll-seconds=0.1", "--idle-output-seconds=0",
     "--cpu-percent-threshold=10000", f"--report-file={state}/report", *budget],
    stdout=log, env={k: v for k, v in marked.items() if not k.startswith("FLEET_")},
)
codes = [p.wait(timeout=30) for p in sessions]
running_after_session = None
if mode == "exit":
    time.sleep(1.5)
    running_after_session = supervisor.poll() is None
    supervisor.send_signal(signal.SIGTERM)
supervisor.wait(timeout=30)
log.seek(0)
print(json.dumps({
    "codes": codes,
    "running_after_session": running_after_session,
    "events": [json.loads(line) for line in log if line.strip()],
}))
"""


@needs_pid_namespace
def test_in_a_pod_namespace_sessions_without_the_marker_are_stopped() -> None:
    result = in_pid_namespace(POD_SUPERVISE, "stop")
    assert result["codes"] == [-signal.SIGTERM, -signal.SIGTERM]
    events: list[dict[str, Any]] = result["events"]  # type: ignore[assignment]
    assert [e["processes"] for e in events if e["event"] == "signalled"] == [2]
    assert [e["reason"] for e in events if e["event"] == "stop"] == ["DeadlineExceeded"]


@needs_pid_namespace
def test_in_a_pod_namespace_the_supervisor_keeps_looking_until_the_kubelet_stops_it() -> None:
    result = in_pid_namespace(POD_SUPERVISE, "exit")
    assert result["codes"] == [0]
    assert result["running_after_session"] is True, "it exited when the session did, not when TERMed"
    events: list[dict[str, Any]] = result["events"]  # type: ignore[assignment]
    assert "terminated" in events[-1]["reason"]
    assert not [e for e in events if e["event"] == "signalled"]
