"""The supervisor's cost: CPU per poll and memory, against the original tool's naive probes, in one run.

    .venv/bin/python bench/supervisor_probe.py [--counts 10 100 500] [--polls 20]

For each count N it starts N idle `sleep` processes carrying a session marker, then measures in this
process, alternately so that machine noise hits both alike:

- ours: `SessionProbe.sample()` and the policy's `decide()`, all probes on: CPU, output (`wchar` and an
  output file) and connections (every session process's descriptors are listed each poll; this script holds
  an ESTABLISHED connection to an endpoint, which must not count, since it is not a session process);
- psutil: the same scan as ours (the marker read once per process, CPU time, `wchar`, zombies left out,
  the name watched for an exec) through `psutil.process_iter()` and `oneshot()` instead of reading `/proc`
  directly, with ours' connection check; it finds the same processes. This is the column that decides
  where the supervisor reads `/proc` itself: on the hot path, only where psutil costs more;
- naive: the original's poll: `children(recursive=True)` from the session's root, `cpu_percent()` and
  `net_connections()` on every process, the output file's size.

It prints CPU milliseconds per poll for the three and the ratio ours/naive (target: at most 1.0), then
starts a real `fleetdispatch supervise` over the same processes and prints its peak RSS (VmHWM; target: at
most 25 MiB) and its CPU per poll.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from fleetdispatch.session.config import SupervisorConfig
from fleetdispatch.session.deadline import Counters, ProcessKey, Sample, decide, initial_state
from fleetdispatch.session.probes import SessionProbe

DISPATCH = f"bench/{os.getpid()}"


def spawn(count: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "FLEET_DISPATCH": DISPATCH, "FLEET_ATTEMPT": "1"}
    return [subprocess.Popen(["sleep", "600"], env=env) for _ in range(count)]


def naive_poll(root: psutil.Process, cache: dict[int, psutil.Process], output: Path) -> bool:
    active = False
    for child in root.children(recursive=True):
        process = cache.setdefault(child.pid, child)
        try:
            if process.cpu_percent(None) > 10:
                active = True
            for connection in process.net_connections(kind="tcp"):
                if (
                    connection.status == psutil.CONN_ESTABLISHED
                    and connection.raddr
                    and connection.raddr[1] == 443
                ):
                    active = True
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    output.stat()
    return active


class PsutilScan:
    """Ours' process scan, through psutil: what the supervisor would do per poll if psutil read `/proc`."""

    def __init__(self, dispatch: str, attempt: str) -> None:
        self._marker = {"FLEET_DISPATCH": dispatch, "FLEET_ATTEMPT": attempt}
        me = psutil.Process()
        self._excluded = {me, *me.parents()}
        self._known: dict[psutil.Process, tuple[str, bool]] = {}

    def sample(self) -> dict[ProcessKey, Counters]:
        found: dict[ProcessKey, Counters] = {}
        known: dict[psutil.Process, tuple[str, bool]] = {}
        for process in psutil.process_iter():
            if process in self._excluded:
                continue
            try:
                with process.oneshot():
                    name = process.name()
                    entry = self._known.get(process)
                    if entry is None or (not entry[1] and entry[0] != name):
                        environ = process.environ()
                        entry = (name, all(environ.get(k) == v for k, v in self._marker.items()))
                    known[process] = entry
                    if not entry[1] or process.status() == psutil.STATUS_ZOMBIE:
                        continue
                    cpu = process.cpu_times()
                    found[(process.pid, int(process.create_time()))] = Counters(
                        cpu.user + cpu.system, process.io_counters().write_chars
                    )
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self._known = known
        return found


def measure(count: int, polls: int, state_dir: Path, port: int) -> tuple[float, float, float]:
    config = SupervisorConfig(
        dispatch=DISPATCH,
        attempt="1",
        api_endpoints=(f":{port}", ":443"),
        output_paths=("transcript",),
        state_dir=str(state_dir),
    )
    probe = SessionProbe(
        DISPATCH,
        "1",
        api_endpoints=config.api_endpoints,
        output_paths=config.output_paths,
        state_dir=state_dir,
    )
    state = initial_state(config, time.monotonic())
    psutil_probe = PsutilScan(DISPATCH, "1")
    psutil_state = initial_state(config, time.monotonic())
    root, cache = psutil.Process(), {}
    ours = with_psutil = naive = 0.0
    for _ in range(polls):
        before = time.process_time()
        state, _ = decide(config, state, probe.sample(), time.monotonic())
        ours += time.process_time() - before
        before = time.process_time()
        processes = psutil_probe.sample()
        # Only the process scan differs: the connection check and the output sizes are ours in both.
        psutil_sample = Sample(
            processes=processes,
            api_connection=probe._api_connection(processes),
            output_sizes=probe._output_sizes(),
        )
        psutil_state, _ = decide(config, psutil_state, psutil_sample, time.monotonic())
        with_psutil += time.process_time() - before
        before = time.process_time()
        naive_poll(root, cache, state_dir / "transcript")
        naive += time.process_time() - before
    sample = probe.sample()
    assert len(sample.processes) == count, f"found {len(sample.processes)} session processes of {count}"
    assert len(psutil_probe.sample()) == count, "the psutil scan finds another set of processes"
    assert not sample.api_connection, "a connection of a process outside the session counted"
    return ours / polls * 1000, with_psutil / polls * 1000, naive / polls * 1000


def real_supervisor(state_dir: Path, poll: float, seconds: float) -> tuple[float, float]:
    command = [
        sys.executable,
        "-m",
        "fleetdispatch.cli",
        "supervise",
        f"--dispatch={DISPATCH}",
        "--attempt=1",
        f"--state-dir={state_dir}",
        f"--poll-seconds={poll}",
        "--output-path=transcript",
        "--api-endpoint=:443",
    ]
    with open(os.devnull, "wb") as quiet:
        supervisor = psutil.Popen(command, stdout=quiet)
    try:
        time.sleep(2 * poll + 1)  # start-up and the first polls
        start = sum(supervisor.cpu_times()[:2])
        time.sleep(seconds)
        per_poll = (sum(supervisor.cpu_times()[:2]) - start) / (seconds / poll) * 1000
        status = Path(f"/proc/{supervisor.pid}/status").read_text()
        peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    finally:
        supervisor.terminate()
        supervisor.wait(10)
    return peak, per_poll


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--polls", type=int, default=20)
    parser.add_argument("--supervisor-seconds", type=float, default=5.0)
    args = parser.parse_args()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held = socket.create_connection(
        ("127.0.0.1", port)
    )  # an ESTABLISHED match, held by a non-session process
    columns = (
        "processes",
        "ours ms/poll",
        "psutil ms/poll",
        "naive ms/poll",
        "ratio",
        "supervise RSS MiB",
        "supervise ms/poll",
    )
    print("  ".join(f"{name:>{len(name)}}" for name in columns))
    with tempfile.TemporaryDirectory() as temporary:
        state_dir = Path(temporary)
        (state_dir / "transcript").write_text("")
        for count in args.counts:
            sessions = spawn(count)
            try:
                time.sleep(0.5)
                ours, with_psutil, naive = measure(count, args.polls, state_dir, port)
                rss, per_poll = real_supervisor(state_dir, poll=1.0, seconds=args.supervisor_seconds)
            finally:
                for process in sessions:
                    process.kill()
                for process in sessions:
                    process.wait()
            figures = (
                f"{count}",
                f"{ours:.2f}",
                f"{with_psutil:.2f}",
                f"{naive:.2f}",
                f"{ours / naive:.2f}",
                f"{rss:.1f}",
                f"{per_poll:.1f}",
            )
            print("  ".join(f"{figure:>{len(name)}}" for figure, name in zip(figures, columns, strict=True)))
    held.close()
    server.close()


if __name__ == "__main__":
    main()
