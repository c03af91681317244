"""The supervisor: the loop that runs beside a session, measures it, and stops it when the policy says so.

`fleetdispatch supervise` runs as the session pod's native sidecar, as the session's UID, in the pod's
shared process namespace. Each poll it samples the session (`probes`), asks the policy (`deadline`) and
acts: it rewrites the `deadline` file when the deadline moves, hands its figures to the Lease heartbeat
(`heartbeat`), and on a stop writes the outcome the session did not write, sends TERM to every session
process, waits `killGraceSeconds` and sends KILL to the survivors. It logs one JSON line to standard output
per judgement that changes something (start, extension, stop, signals, exit), never one per quiet poll.

It exits (code 0) once it has seen session processes and none is left, so it also works as an ordinary
container where native sidecars are unavailable; an empty scan is confirmed by a second one first. In the
pod's own PID namespace (`--pid-namespace=pod`, the operator's pod) it does not: there it is a native
sidecar, which the kubelet stops once the session container has exited, and a session container that is
running but shows no process yet (between two execs, say) is looked for again, up to the deadline. Before
the session appears it waits (the session container starts after the sidecar), but the deadline counts
from its own start: if it passes before any session process appeared, it logs that and exits. On SIGTERM
(suspend, the pod is being deleted) it writes its report, with the session's last resume token, and exits
at once without signalling the session: the kubelet does that.

A restarted supervisor (the kubelet restarts a native sidecar that exits or is killed) continues the
attempt instead of starting a fresh budget: when the `deadline` file was written while the session's
oldest process has been alive, that deadline holds, and the cap counts from the attempt's start, taken as
the earliest of its own start and that process's start (the operator's backstop counts from the session's
start too). In the pod's namespace the cap always counts from there, so a session that kills the
supervisor and removes the file gets no new cap. The deadline file is the session's to write as well: it
can only shorten its own budget, never pass the cap.

State files are read through `protocol`'s guarded readers (no FIFO, symlink or file over 64 KiB is read);
what they ignore is logged as a warning. The session's `usage.json` (`usage`) is read for each heartbeat
(the Lease's `usage` annotation) and once more for the report (its `usage` object), so the operator can
account for the attempt and hold it to the dispatch's budget.

It is marked non-dumpable at start (`nondumpable`: `fleetdispatch supervise` does it before any other
import), so the session, which runs as the same UID, cannot read its memory, environment or heartbeat token
through `/proc`. The window left is the interpreter's start; a startup probe that holds the session back
until then would close it (not done: the dev node runs no probes).

The loop is synchronous and simple; clocks and sleep are constructor parameters so that tests drive it
without waiting. Its concurrency is plain threads (the heartbeat's, the name resolver's) and a signal
handler that wakes the loop's sleep, not anyio: in a prototype on anyio (the loop, the heartbeat and the
signals as tasks), the event loop (asyncio) raised the supervisor's peak RSS from 24.7 to 28.4 MiB (a
stop with the Lease heartbeat on; 22.4 to 26.6 MiB without a session), over the 25 MiB budget of
`fleetdispatch supervise`, and it replaced no thread (the heartbeat's requests block, so they ran in
anyio's worker thread) and no timing the loop does not already own (`next_check`).

Deliberately not here: any judgement (`deadline`), reading `/proc` (`probes`), HTTP (`heartbeat`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TextIO

from fleetdispatch.session import protocol
from fleetdispatch.session.config import SupervisorConfig
from fleetdispatch.session.deadline import (
    Continue,
    ProcessKey,
    Sample,
    State,
    Stop,
    WallClock,
    cap,
    decide,
    initial_state,
    next_check,
    resumed_state,
)
from fleetdispatch.session.heartbeat import Heartbeat, LeaseStatus
from fleetdispatch.session.nondumpable import set_non_dumpable
from fleetdispatch.session.probes import YOUNG_SECONDS, SessionProbe
from fleetdispatch.session.usage import REPORT_USAGE, UsageReader, encode

# While waiting for stopped processes to exit, look this often (or each poll, when polls are shorter).
EXIT_POLL_SECONDS = 0.2
# A resume token longer than this is left out of the outcome: with it the outcome would exceed the
# kubelet's 4096-byte termination message and arrive cut.
MAX_RESUME_TOKEN_BYTES = protocol.MAX_RESUME_TOKEN_BYTES
RESUME_TOKEN_FIELD = protocol.REPORT_RESUME_TOKEN


class Probe(Protocol):
    def sample(self) -> Sample: ...
    def session_processes(self) -> list[ProcessKey]: ...
    def session_age(self) -> float | None: ...
    def signal(self, key: ProcessKey, signum: int) -> bool: ...


class Beat(Protocol):
    def update(self, status: LeaseStatus) -> None: ...


class JsonLog:
    """One JSON object per line, safe to call from the heartbeat thread too."""

    def __init__(self, out: TextIO, wall: Callable[[], float] = time.time) -> None:
        self._out = out
        self._wall = wall
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        now = self._wall()
        line = json.dumps(
            {"time": protocol.format_time(now), "event": event, **fields}, separators=(",", ":")
        )
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


class Supervisor:
    """One attempt's supervision; `run()` returns the exit code."""

    def __init__(
        self,
        config: SupervisorConfig,
        *,
        probe: Probe | None = None,
        heartbeat: Beat | None = None,
        log: Callable[..., None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self._config = config
        self._state_dir = Path(config.state_dir)
        self._extensions, self._extended_seconds = 0, 0.0  # this supervisor's, for its report
        self._log = log or JsonLog(sys.stdout, wall)
        self._probe: Probe = probe or session_probe(config, self._warn)
        self._heartbeat = heartbeat
        self._monotonic = monotonic
        self._wall = wall
        self._terminated = threading.Event()
        # The default sleep wakes up early on terminate(), so SIGTERM is honoured at once.
        self._sleep = sleep or self._terminated.wait
        self._clock = WallClock(0.0)
        # The session's `usage.json`, read for each heartbeat and for the report (`usage`).
        self._usage = UsageReader(self._state_dir, self._warn)

    def _warn(self, message: str) -> None:
        self._log("warning", message=message)

    def terminate(self) -> None:
        """Stop supervising at once, without signalling the session (SIGTERM: the pod is going away)."""
        self._terminated.set()

    def _epoch(self, instant: float | None) -> str | None:
        return None if instant is None else protocol.format_time(self._clock.epoch(instant))

    def _figures(self, of: State | Stop) -> dict[str, str]:
        """The supervisor's report (`protocol.report`) of a state, or of the stop it decided."""
        deadline_cap = of.cap if isinstance(of, Stop) else cap(self._config, of)
        return protocol.report(
            self._clock.epoch(of.deadline),
            self._clock.epoch(deadline_cap),
            None if of.last_activity is None else self._clock.epoch(of.last_activity),
            of.activity_reason,
            None if of.last_output is None else self._clock.epoch(of.last_output),
        )

    def _publish_deadline(self, deadline: float) -> None:
        try:
            protocol.write_atomic(
                self._state_dir / protocol.DEADLINE_FILE,
                protocol.format_deadline(self._clock.epoch(deadline)),
            )
        except OSError as error:
            self._log("error", error=f"cannot write the deadline file: {error}")

    def _beat(self, state: State) -> None:
        if self._heartbeat is None:
            return
        self._heartbeat.update(
            LeaseStatus(
                deadline=self._clock.epoch(state.deadline),
                last_activity=None if state.last_activity is None else self._clock.epoch(state.last_activity),
                activity_reason=state.activity_reason,
                last_output=None if state.last_output is None else self._clock.epoch(state.last_output),
                usage=None if (usage := self._usage.read()) is None else encode(usage),
            )
        )

    def _initial_state(self, now: float) -> tuple[State, bool]:
        """The state at start, and whether it continues an earlier supervisor's attempt (a restart)."""
        config = self._config
        age = self._probe.session_age()
        session_start = None if age is None else now - age
        restarted_deadline = None
        if session_start is not None:
            path = self._state_dir / protocol.DEADLINE_FILE
            try:
                info = os.lstat(path)
            except OSError:
                info = None
            # Written while this session ran: a stale file from an earlier run by hand is no restart.
            written_since = info is not None and info.st_mtime >= self._clock.epoch(session_start) - 1
            if info is not None and stat.S_ISREG(info.st_mode) and written_since:
                restarted_deadline = protocol.read_deadline(self._state_dir, self._warn)
        pod = config.pid_namespace == "pod"
        start = now
        if session_start is not None and (restarted_deadline is not None or pod):
            start = min(now, session_start)
        if restarted_deadline is not None:
            return resumed_state(config, start, restarted_deadline - self._clock.offset), True
        return initial_state(config, start), False

    def run(self) -> int:
        config = self._config
        now = self._monotonic()
        self._clock = WallClock.capture(now, self._wall())
        state, restarted = self._initial_state(now)
        with contextlib.suppress(OSError):
            self._state_dir.mkdir(parents=True, exist_ok=True)
        self._publish_deadline(state.deadline)
        self._log(
            "start",
            dispatch=config.dispatch,
            attempt=config.attempt,
            deadline=self._epoch(state.deadline),
            cap=self._epoch(cap(config, state)),
            **({"restarted": True, "attemptStart": self._epoch(state.start)} if restarted else {}),
        )
        # In the pod's namespace the kubelet ends the sidecar after the session; elsewhere, no process left
        # is the end (confirmed by a second scan: a process may be between fork and exec).
        exit_when_gone = config.pid_namespace != "pod"
        while not self._terminated.is_set():
            now = self._monotonic()
            sample = self._probe.sample()
            state, judgement = decide(config, state, sample, now)
            if (
                exit_when_gone
                and state.session_seen
                and not sample.processes
                and not self._probe.session_processes()
            ):
                self._report(state)
                self._log("exit", reason="no session process is left")
                return 0
            if isinstance(judgement, Stop):
                if not state.session_seen:
                    self._log(
                        "exit",
                        reason=f"{judgement.reason}: no session process appeared before the deadline",
                        deadline=self._epoch(judgement.deadline),
                    )
                    return 0
                return self._stop(judgement, state)
            self._beat(state)
            if isinstance(judgement, Continue) and judgement.extended_from is not None:
                self._extensions += 1
                self._extended_seconds += state.deadline - judgement.extended_from
                self._publish_deadline(state.deadline)
                self._log(
                    "extended",
                    deadline=self._epoch(state.deadline),
                    previous=self._epoch(judgement.extended_from),
                    activityReason=state.activity_reason,
                    atCap=state.deadline >= cap(config, state),
                )
            wake = min(now + config.poll_seconds, next_check(config, state))
            self._sleep(max(0.0, wake - self._monotonic()))
        # The usual end (the session exited and the kubelet TERMs its sidecar), a suspend or a deletion:
        # report, with the last resume token, even if no session process was seen (a pod deleted early).
        self._report(state)
        self._log("exit", reason="terminated: the session is left to the kubelet")
        return 0

    def _report(self, state: State, outcome: dict[str, Any] | None = None) -> None:
        """The final figures, for the operator to mirror into the dispatch's status (`--report-file`), with
        the outcome of a stop this supervisor decided, and how often it extended the deadline (for the
        operator's metrics).

        The outcome must be here, in the supervisor's own termination message: the kubelet bind-mounts a
        file of the session container's own at the session's `terminationMessagePath`, so the
        `outcome.json` the supervisor writes into the shared volume never becomes the session's message.
        """
        if self._config.report_file is None:
            return
        # The state's figures, never an outcome's: a figure the state does not know is left out.
        rest = {k: v for k, v in (outcome or {}).items() if k not in protocol.REPORT_FIELDS}
        report = {**rest, **self._figures(state)}
        report[protocol.REPORT_EXTENSIONS] = self._extensions
        report[protocol.REPORT_EXTENDED_SECONDS] = round(self._extended_seconds, 3)
        if RESUME_TOKEN_FIELD not in report:
            # The session's last resume token, so that a TERM (suspend, deletion) does not lose it.
            token = self._resume_token()
            if token is not None:
                report[RESUME_TOKEN_FIELD] = token
        usage = self._usage.read()
        if usage is not None:
            report[REPORT_USAGE] = usage
        text = json.dumps({k: v for k, v in report.items() if v is not None}) + "\n"
        if len(text.encode()) > protocol.MAX_OUTCOME_BYTES and usage is not None:
            # Never the case within the protocol's bounds; a cut report would be no JSON at all.
            self._warn("the report leaves out the usage: with it, it would exceed the termination message")
            report.pop(REPORT_USAGE)
            text = json.dumps({k: v for k, v in report.items() if v is not None}) + "\n"
        try:
            # In place, not by rename: the kubelet bind-mounts this one file into the container.
            with open(self._config.report_file, "w", encoding="utf-8") as file:
                file.write(text)
        except OSError as error:
            self._log("error", error=f"cannot write the report: {error}")

    # -- stopping --------------------------------------------------------------------------------------

    def _message(self, stop: Stop) -> str:
        config = self._config
        if stop.reason == protocol.IDLE_TIMEOUT:
            return (
                f"no output for {stop.idle_seconds or 0:.0f}s "
                f"(idleOutputSeconds {config.idle_output_seconds}); "
                f"last output {self._epoch(stop.last_output)}"
            )
        activity = (
            f"last activity {self._epoch(stop.last_activity)} ({stop.activity_reason})"
            if stop.last_activity is not None
            else "no activity seen"
        )
        at_cap = " (the cap)" if stop.deadline >= stop.cap else ""
        return f"the deadline {self._epoch(stop.deadline)}{at_cap} passed; {activity}"

    def _outcome(self, stop: Stop) -> dict[str, Any]:
        outcome: dict[str, Any] = {
            "reason": stop.reason,
            "message": self._message(stop),
            **self._figures(stop),
        }
        token = protocol.read_resume_token(self._state_dir, self._warn)
        if token is not None and len(token.encode()) <= MAX_RESUME_TOKEN_BYTES:
            outcome[RESUME_TOKEN_FIELD] = token
        elif token is not None:
            outcome["message"] += f"; the resume token ({len(token.encode())} bytes) is too long to report"
        return outcome

    def _resume_token(self) -> str | None:
        token = protocol.read_resume_token(self._state_dir, self._warn)
        if token is not None and len(token.encode()) > MAX_RESUME_TOKEN_BYTES:
            self._warn(f"the resume token ({len(token.encode())} bytes) is too long to report")
            return None
        return token

    def _write_outcome(self, outcome: dict[str, Any]) -> bool:
        """Write the stop's outcome unless the session wrote its own; True when this one was written."""
        if protocol.read_outcome(self._state_dir, self._warn) is not None:
            return False
        text = json.dumps({k: v for k, v in outcome.items() if v is not None}) + "\n"
        path = self._state_dir / protocol.OUTCOME_FILE
        try:
            # Never over a session's outcome, even one written a moment ago; a junk file is replaced.
            written = protocol.write_atomic(path, text, replace=False)
            if not written and protocol.read_outcome(self._state_dir, self._warn) is None:
                written = protocol.write_atomic(path, text)
        except OSError as error:
            self._log("error", error=f"cannot write the outcome: {error}")
            return False
        return written

    def _signal_all(self, signum: int) -> int:
        return sum(self._probe.signal(key, signum) for key in self._probe.session_processes())

    def _wait_for_exit(self, seconds: float | None) -> bool:
        """Wait until no session process is left (True) or `seconds` pass (False); None waits forever.

        A rescan each round, not `psutil.wait_procs`: that waits for a process that is not our child (no
        session process is) until it is reaped, a zombie included, and never sees what a dying session
        forks; the injected sleep also keeps the grace on the injected clock and wakes at once on SIGTERM.
        """
        end = None if seconds is None else self._monotonic() + seconds
        interval = min(self._config.poll_seconds, EXIT_POLL_SECONDS)
        while not self._terminated.is_set():
            if not self._probe.session_processes():
                return True
            if end is not None and self._monotonic() >= end:
                return False
            self._sleep(interval if end is None else max(0.0, min(interval, end - self._monotonic())))
        return False

    def _stop(self, stop: Stop, state: State) -> int:
        outcome = self._outcome(stop)
        written = self._write_outcome(outcome)
        self._report(state, outcome if written else None)
        self._log(
            "stop",
            reason=stop.reason,
            message=self._message(stop),
            **self._figures(stop),
            outcomeWritten=written,
        )
        self._log("signalled", signal="TERM", processes=self._signal_all(signal.SIGTERM))
        if not self._wait_for_exit(self._config.kill_grace_seconds):
            while not self._terminated.is_set():
                # KILL again until none is left: a process may fork while its siblings die.
                killed = self._signal_all(signal.SIGKILL)
                if killed:
                    self._log("signalled", signal="KILL", processes=killed)
                if self._wait_for_exit(1.0):
                    break
        if self._terminated.is_set():
            self._log("exit", reason="terminated: the session is left to the kubelet")
        else:
            self._log("exit", reason=f"session stopped: {stop.reason}")
        return 0


def session_probe(config: SupervisorConfig, warn: Callable[[str], object]) -> SessionProbe:
    """The probe of `config`'s session; a young marker-less process is re-read for at least a poll."""
    return SessionProbe(
        config.dispatch,
        config.attempt,
        api_endpoints=config.api_endpoints,
        output_paths=config.output_paths,
        state_dir=config.state_dir,
        pid_namespace=config.pid_namespace,
        young_seconds=max(YOUNG_SECONDS, 2 * config.poll_seconds),
        log=warn,
    )


def supervise(config: SupervisorConfig) -> int:
    """The `fleetdispatch supervise` command: supervise until the session is gone; the exit code."""
    log = JsonLog(sys.stdout)
    if not set_non_dumpable():
        log("warning", message="could not mark the supervisor non-dumpable (prctl unavailable)")
    heartbeat = Heartbeat.from_config(
        pod_name=config.pod_name,
        pod_uid=config.pod_uid,
        dispatch=config.dispatch,
        attempt=config.attempt,
        namespace=config.namespace,
        server=config.api_server,
        token_file=config.token_file,
        ca_file=config.ca_file,
        interval=config.heartbeat_seconds,
        log=log,
    )
    probe = session_probe(config, lambda message: log("warning", message=message))
    probe.start_resolving()
    supervisor = Supervisor(config, probe=probe, heartbeat=heartbeat, log=log)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        supervisor.terminate()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if heartbeat is not None:
        heartbeat.start()
    code = supervisor.run()
    # The kubelet TERMs a native sidecar as soon as the session has exited, which is also when the supervisor
    # returns. Python restores the default handlers while it shuts down, so a TERM then would report a clean
    # exit as 143; once the decision is made, a late TERM is ignored.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code
