"""Real session processes for the probe and supervisor tests, all killed at teardown.

Every test gets its own dispatch name, so session processes of concurrent test runs never look alike.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SLEEP = "import signal; signal.pause()"
BUSY = "while True: pass"


class Sessions:
    """Starts marked processes (and the supervisor) and leaves none behind."""

    def __init__(self, state_dir: Path) -> None:
        self.dispatch = f"test/{uuid.uuid4().hex[:12]}"
        self.attempt = "1"
        self.state_dir = state_dir
        self._started: list[subprocess.Popen[bytes]] = []
        self._pids: list[int] = []

    def env(self, marker: bool = True, attempt: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("FLEET_DISPATCH", "FLEET_ATTEMPT"):
            env.pop(name, None)
        if marker:
            env["FLEET_DISPATCH"] = self.dispatch
            env["FLEET_ATTEMPT"] = attempt or self.attempt
            env["FLEET_STATE_DIR"] = str(self.state_dir)
        return env

    def spawn(self, code: str, *, marker: bool = True, attempt: str | None = None) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-c", code], env=self.env(marker, attempt), cwd=self.state_dir
        )
        self._started.append(process)
        return process

    def adopt(self, pid: int) -> None:
        """Kill `pid` at teardown too (a daemonised grandchild), if it is still one of ours."""
        self._pids.append(pid)

    def supervise(self, *flags: str, poll: float = 0.1) -> Supervised:
        log = self.state_dir.parent / f"supervisor-{uuid.uuid4().hex[:6]}.log"
        command = [
            sys.executable,
            "-m",
            "fleetdispatch.cli",
            "supervise",
            f"--dispatch={self.dispatch}",
            f"--attempt={self.attempt}",
            f"--state-dir={self.state_dir}",
            f"--poll-seconds={poll}",
            *flags,
        ]
        with open(log, "wb") as out:
            process = subprocess.Popen(command, stdout=out, env=self.env(marker=False))
        self._started.append(process)
        return Supervised(process, log)

    def close(self) -> None:
        for process in self._started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        for pid in self._pids:
            if _environ_has(pid, self.dispatch):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


class Supervised:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    def events(self) -> list[dict[str, object]]:
        import json

        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def named(self, event: str) -> list[dict[str, object]]:
        return [e for e in self.events() if e["event"] == event]

    def wait(self, timeout: float = 15) -> int:
        return self.process.wait(timeout=timeout)


def _environ_has(pid: int, dispatch: str) -> bool:
    try:
        return f"FLEET_DISPATCH={dispatch}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def exited(process: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: process.poll() is not None


@contextlib.contextmanager
def sessions(state_dir: Path) -> Iterator[Sessions]:
    state_dir.mkdir(parents=True, exist_ok=True)
    running = Sessions(state_dir)
    try:
        yield running
    finally:
        running.close()


def flags(**values: object) -> Sequence[str]:
    return [f"--{name.replace('_', '-')}={value}" for name, value in values.items()]


UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc")


def pid_namespace_available() -> bool:
    """Whether `unshare --pid --fork --mount-proc` works here (as root): a new PID namespace, like a pod's."""
    import shutil

    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run([*UNSHARE, "true"], check=False, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def in_pid_namespace(script: str, *args: str, timeout: float = 60) -> dict[str, object]:
    """Run `script` (Python) as PID 1 of a new PID namespace with its own /proc, the way a pod's pause
    process is PID 1 of the pod's namespace; returns the JSON object it prints last. Everything in the
    namespace is killed when it ends, so no process outlives the test."""
    import json

    done = subprocess.run(
        [*UNSHARE, sys.executable, "-c", script, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
