"""The probes against real processes and real sockets, plus the `/proc/net/tcp` reader on known tables."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from fleetdispatch.session.deadline import Counters
from fleetdispatch.session.probes import SessionProbe, established_inodes
from sessions import SLEEP, Sessions, in_pid_namespace, pid_namespace_available
from waiting import eventually

CONNECT = "import signal, socket; s = socket.create_connection(('127.0.0.1', {port})); signal.pause()"


def probe_for(session: Sessions, **options: object) -> SessionProbe:
    return SessionProbe(session.dispatch, session.attempt, state_dir=session.state_dir, **options)  # type: ignore[arg-type]


def pids(probe: SessionProbe) -> set[int]:
    return {pid for pid, _ in probe.sample().processes}


def test_session_processes_are_those_with_this_attempts_marker(session: Sessions) -> None:
    mine = session.spawn(SLEEP)
    other_attempt = session.spawn(SLEEP, attempt="2")
    unmarked = session.spawn(SLEEP, marker=False)
    probe = probe_for(session)
    eventually(lambda: mine.pid in pids(probe), 10)
    found = pids(probe)
    assert other_attempt.pid not in found and unmarked.pid not in found
    assert os.getpid() not in found


WORK_ON_SIGNAL = """
import os, signal, time
while not os.path.exists("go"):
    time.sleep(0.02)
end = time.process_time() + 0.3  # CPU time, not wall time: the machine may be busy
while time.process_time() < end:
    pass
os.write(os.open(os.devnull, os.O_WRONLY), b"x" * 4096)
open("done", "w").close()
signal.pause()
"""


def test_counters_grow_with_cpu_and_writes(session: Sessions) -> None:
    worker = session.spawn(WORK_ON_SIGNAL)
    probe = probe_for(session)
    eventually(lambda: worker.pid in pids(probe), 10)

    def counters() -> Counters:
        return next(c for (pid, _), c in probe.sample().processes.items() if pid == worker.pid)

    before = counters()
    (session.state_dir / "go").touch()
    eventually((session.state_dir / "done").exists, 10)
    after = counters()
    assert after.cpu_seconds - before.cpu_seconds >= 0.2
    assert before.write_chars is not None and after.write_chars is not None
    assert after.write_chars - before.write_chars >= 4096


def test_a_vanished_process_is_skipped_and_a_zombie_is_gone(session: Sessions) -> None:
    short = session.spawn("import time; time.sleep(0.3)")
    probe = probe_for(session)
    eventually(lambda: short.pid in pids(probe), 10)
    eventually(lambda: short.pid not in pids(probe), 10)  # exited, a zombie until reaped
    short.wait()
    assert short.pid not in pids(probe)


def test_a_connection_to_an_endpoint_is_found_through_the_socket_table(session: Sessions) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    other = socket.create_server(("127.0.0.1", 0))
    try:
        port, other_port = server.getsockname()[1], other.getsockname()[1]
        client = session.spawn(CONNECT.format(port=port))
        by_address = probe_for(session, api_endpoints=[f"127.0.0.1:{port}"])
        by_port = probe_for(session, api_endpoints=[f":{port}"])
        by_name = probe_for(
            session, api_endpoints=[f"api.test:{port}"], resolver=lambda host, port: ["127.0.0.1"]
        )
        elsewhere = probe_for(session, api_endpoints=[f"127.0.0.1:{other_port}", f"[::1]:{port}"])
        eventually(lambda: by_address.sample().api_connection, 10)
        assert by_port.sample().api_connection
        assert not by_name.sample().api_connection  # the name is not resolved yet: it matches nothing
        by_name.resolve()
        assert by_name.sample().api_connection
        assert not elsewhere.sample().api_connection
        client.kill()
        client.wait()
        assert not by_address.sample().api_connection
    finally:
        server.close()
        other.close()


def test_a_failing_resolver_keeps_the_addresses_it_had(session: Sessions) -> None:
    answers: list[list[str] | None] = [["127.0.0.1"], None]

    def resolver(host: str, port: int) -> list[str]:
        answer = answers.pop(0)
        if answer is None:
            raise socket.gaierror("temporary failure")
        return answer

    server = socket.create_server(("127.0.0.1", 0))
    try:
        port = server.getsockname()[1]
        session.spawn(CONNECT.format(port=port))
        probe = probe_for(session, api_endpoints=[f"api.test:{port}"], resolver=resolver)
        probe.resolve()
        eventually(lambda: probe.sample().api_connection, 10)
        probe.resolve()
        assert probe.sample().api_connection
    finally:
        server.close()


def test_output_paths_are_measured_relative_to_the_state_dir(session: Sessions) -> None:
    (session.state_dir / "logs").mkdir()
    (session.state_dir / "logs" / "out.txt").write_text("12345")
    probe = probe_for(session, output_paths=["logs/out.txt", "missing.txt"])
    assert probe.sample().output_sizes == {"logs/out.txt": 5}


def test_signal_reaches_only_session_processes(session: Sessions) -> None:
    mine = session.spawn(SLEEP)
    unmarked = session.spawn(SLEEP, marker=False)
    probe = probe_for(session)
    eventually(lambda: mine.pid in pids(probe), 10)
    [key] = [key for key in probe.session_processes() if key[0] == mine.pid]
    assert not probe.signal((unmarked.pid, key[1]), signal.SIGTERM)
    assert not probe.signal((mine.pid, key[1] + 1), signal.SIGTERM)  # same pid, another process
    assert unmarked.poll() is None and mine.poll() is None
    assert probe.signal(key, signal.SIGTERM)
    assert mine.wait(timeout=10) == -signal.SIGTERM


def test_a_marked_parent_of_the_supervisor_is_never_a_session_process(session: Sessions) -> None:
    # The supervisor started through a shell that carries the marker must not count (or signal) the shell.
    code = (
        "import sys; from fleetdispatch.session.probes import SessionProbe; "
        f"p = SessionProbe({session.dispatch!r}, {session.attempt!r}); "
        "import os; print(sorted(pid for pid, _ in p.sample().processes))"
    )
    shell = session.spawn(
        f"import subprocess, sys; r = subprocess.run([sys.executable, '-c', {code!r}], capture_output=True, "
        "text=True); open('found', 'w').write(r.stdout + r.stderr)"
    )
    shell.wait(timeout=20)
    assert (session.state_dir / "found").read_text() == "[]\n"


REST = "00000000:00000000 00:00000000 00000000  1000  0"


def write_table(path: Path, rows: list[str]) -> Path:
    header = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    )
    path.write_text(header + "".join(f"{row}\n" for row in rows))
    return path


def test_the_socket_table_reader_matches_remote_addresses_and_ports(tmp_path: Path) -> None:
    little = sys.byteorder == "little"
    loopback = "0100007F" if little else "7F000001"
    mapped = "0000000000000000FFFF00000100007F" if little else "00000000000000000000FFFF7F000001"
    v6_loopback = "00000000000000000000000001000000" if little else "00000000000000000000000000000001"
    tcp = write_table(
        tmp_path / "tcp",
        [
            f"   0: {loopback}:A0B4 {loopback}:01BB 01 {REST} 111 1",
            f"   1: {loopback}:A0B5 {loopback}:01BB 06 {REST} 112 1",
            f"   2: {loopback}:A0B6 {loopback}:0050 01 {REST} 113 1",
        ],
    )
    tcp6 = write_table(
        tmp_path / "tcp6",
        [
            f"   0: {mapped}:A0B7 {mapped}:1F90 01 {REST} 114 1",
            f"   1: {v6_loopback}:A0B8 {v6_loopback}:1F90 01 {REST} 115 1",
        ],
    )
    tables = [tcp, tcp6, tmp_path / "missing"]
    # Port 443 from any host: only the ESTABLISHED (01) one, not TIME_WAIT (06), not port 80.
    assert established_inodes(tables, {443}, set()) == {111}
    ipv4 = (b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1]), 8080)
    ipv6 = (b"\0" * 15 + b"\1", 8080)
    assert established_inodes(tables, set(), {ipv4}) == {114}
    assert established_inodes(tables, set(), {ipv6}) == {115}
    assert established_inodes(tables, {8080}, set()) == {114, 115}


def test_a_child_forked_before_its_exec_is_not_cached_as_not_a_session(session: Sessions) -> None:
    # The fork/exec race: the child is first seen with its parent's environment (no marker) under the same
    # name it keeps after the exec, which brings the marker. A cached "not a session" would miss it forever.
    marked = session.env()
    late = session.spawn(
        "import os, sys, time; time.sleep(0.6); "
        f"os.execve(sys.executable, [sys.executable, '-c', {SLEEP!r}], {marked!r})",
        marker=False,
    )
    probe = probe_for(session)
    assert late.pid not in pids(probe), "seen before its exec: the test proves nothing"
    name = Path(f"/proc/{late.pid}/comm").read_text()
    eventually(lambda: late.pid in pids(probe), 10, "the exec'd child is found")
    assert Path(f"/proc/{late.pid}/comm").read_text() == name, "the name did not change over the exec"


def test_an_output_path_that_is_not_a_regular_file_is_ignored_with_a_log_line(session: Sessions) -> None:
    os.mkfifo(session.state_dir / "pipe")
    (session.state_dir / "zero").symlink_to("/dev/zero")
    lines: list[str] = []
    probe = probe_for(session, output_paths=["pipe", "zero"], log=lines.append)
    assert probe.sample().output_sizes == {}
    assert probe.sample().output_sizes == {}
    assert len(lines) == 2 and all("not a regular file" in line for line in lines)


# --- in a PID namespace of its own, as in the session pod -------------------------------------------------

needs_pid_namespace = pytest.mark.skipif(
    not pid_namespace_available(), reason="needs `unshare --pid --fork --mount-proc` (root)"
)

# PID 1 of the namespace (the pod's pause process) starts session processes that shed or change the
# marker in every way a session can, then a probe in a process of its own (the supervisor), which starts a
# child of its own too; the probe's process prints what it found.
POD_PROBE = r"""
import json, os, subprocess, sys, time
SLEEP = "import signal; signal.pause()"
marked = {**os.environ, "FLEET_DISPATCH": "ns/d", "FLEET_ATTEMPT": "1"}
sessions = {
    "marked": subprocess.Popen([sys.executable, "-c", SLEEP], env=marked),
    "env -i": subprocess.Popen(["env", "-i", "sleep", "60"], env=marked),
    "exec env -i": subprocess.Popen(["sh", "-c", "exec env -i sleep 60"], env=marked),
    "other attempt": subprocess.Popen(["sleep", "60"], env={**marked, "FLEET_ATTEMPT": "9"}),
}
daemon = subprocess.run(
    ["sh", "-c", "env -i setsid sleep 60 >/dev/null 2>&1 & echo $!"],
    capture_output=True, text=True, env=marked,
)
pids = {name: p.pid for name, p in sessions.items()}
pids["daemonised grandchild"] = int(daemon.stdout)
PROBE = '''
import json, subprocess, sys, time
from fleetdispatch.session.probes import SessionProbe
own_child = subprocess.Popen(["sleep", "60"])
probe = SessionProbe("ns/d", "1", pid_namespace=sys.argv[1])
time.sleep(0.3)
found = sorted(pid for pid, _ in probe.sample().processes)
own_child.kill()
print(json.dumps({"found": found, "own_child": own_child.pid, "self": __import__("os").getpid()}))
'''
time.sleep(0.3)
result = {}
for mode in ("pod", "any"):
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    result[mode] = json.loads(done.stdout)
result["sessions"] = pids
print(json.dumps(result))
"""


@needs_pid_namespace
def test_in_the_pods_pid_namespace_every_process_but_pid_1_and_the_supervisors_is_the_sessions() -> None:
    result = in_pid_namespace(POD_PROBE)
    sessions: dict[str, int] = result["sessions"]  # type: ignore[assignment]
    pod: dict[str, Any] = result["pod"]  # type: ignore[assignment]
    assert set(pod["found"]) == set(sessions.values()), (pod, sessions)
    assert 1 not in pod["found"] and pod["self"] not in pod["found"] and pod["own_child"] not in pod["found"]
    # Outside a pod the marker decides, and every process that shed it is lost: what the flag is for.
    marker: dict[str, Any] = result["any"]  # type: ignore[assignment]
    assert marker["found"] == [sessions["marked"]]
