"""`fleetdispatch supervise`'s memory: its peak RSS and which heavy modules it loads, beside the supervisor
called directly and the bare imports, so that what the command line costs and what the session side costs
can be told apart.

    .venv/bin/python bench/supervise_memory.py [--session-seconds 3] [--poll-seconds 0.2]

Rows:

- `python`: a bare interpreter, the floor;
- `import anyio`, `import psutil`: the session side's two dependencies, each alone;
- `import supervisor`: `python -c 'from fleetdispatch.session import supervisor'`, the session side's code;
- `+ psutil`, `+ anyio.run`: that, with psutil imported or an (empty) anyio event loop run, which is what
  the session side would add by using them;
- `supervisor direct`: `supervisor.supervise(config)` called directly over a short real session;
- `fleetdispatch supervise`: the console script, as the sidecar runs it, over the same kind of session.

The session is real: a process carrying the attempt's marker that writes to its transcript (an output
path) every 0.1 s and exits after `--session-seconds`; the supervisor exits once it is gone. The peak is
VmHWM from /proc/PID/status, read every 20 ms while the process runs (an import row waits on standard input
once imported, to be read). (Not wait4's ru_maxrss: it counts the forked child before its exec, which is a
copy of this process, so small processes show this script's size.) A second,
identical run under `-X importtime` (PYTHONPROFILEIMPORTTIME) lists the heavy modules each imported.
Target: `fleetdispatch supervise` at most 25 MiB, with none of pydantic, kopf, kubernetes, aiohttp, yaml
and celpy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Never in the sidecar: the operator's and the validator's.
FORBIDDEN = ("pydantic", "kopf", "kubernetes", "aiohttp", "yaml", "celpy")
# The session side's own dependencies: allowed, and worth seeing.
SESSION_DEPENDENCIES = ("anyio", "psutil")
READY = "import ready"
WAIT_FOR_STDIN = f"; import sys; print({READY!r}, flush=True); sys.stdin.read()"
SESSION = """
import sys, time
end = time.monotonic() + float(sys.argv[1])
with open("transcript", "a") as transcript:
    while time.monotonic() < end:
        transcript.write("working\\n")
        transcript.flush()
        time.sleep(0.1)
"""
DIRECT = (
    "import sys; from fleetdispatch.session import config, supervisor; "
    "sys.exit(supervisor.supervise(config.SupervisorConfig.parse(sys.argv[1:])))"
)


@dataclass(frozen=True)
class Measured:
    vm_hwm_kib: int
    seconds: float
    code: int


def vm_hwm(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)


def measure(command: list[str], env: dict[str, str], cwd: Path, stderr_to: Path | None = None) -> Measured:
    """Run `command` to its end, reading its VmHWM as it runs; an import row is released once it is ready."""
    waits = command[-1].endswith(WAIT_FOR_STDIN) if command[1:2] == ["-c"] else False
    started = time.monotonic()
    with open(stderr_to or os.devnull, "wb") as stderr:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE if waits else subprocess.DEVNULL,
            stdout=subprocess.PIPE if waits else subprocess.DEVNULL,
            stderr=stderr,
        )
        peak = 0
        if waits:
            assert process.stdout is not None and process.stdin is not None
            assert process.stdout.readline().decode().strip() == READY
            peak = vm_hwm(process.pid) or 0
            process.stdin.close()
        while True:
            reading = vm_hwm(process.pid)  # None once it has exited (a zombie has no memory left)
            if reading is None:
                break
            peak = max(peak, reading)
            time.sleep(0.02)
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
    return Measured(peak, time.monotonic() - started, process.returncode)


def imported(command: list[str], env: dict[str, str], cwd: Path) -> list[str]:
    """The heavy modules (forbidden and the session side's) that `command` imports, from -X importtime."""
    log = cwd / f"importtime-{uuid.uuid4().hex[:8]}.log"
    measure(command, {**env, "PYTHONPROFILEIMPORTTIME": "1"}, cwd, stderr_to=log)
    names = set()
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            module = line.rsplit("|", 1)[1].strip()
            if module.split(".")[0] in (*FORBIDDEN, *SESSION_DEPENDENCIES):
                names.add(module.split(".")[0])
    log.unlink()
    return sorted(names)


@contextlib.contextmanager
def real_session(state_dir: Path, seconds: float) -> Iterator[str]:
    """A session process of a fresh attempt, running for `seconds`; its marker's dispatch."""
    dispatch = f"bench/{uuid.uuid4().hex[:12]}"
    marked = {**os.environ, "FLEET_DISPATCH": dispatch, "FLEET_ATTEMPT": "1"}
    session = subprocess.Popen([sys.executable, "-c", SESSION, str(seconds)], env=marked, cwd=state_dir)
    try:
        yield dispatch
    finally:
        session.kill()
        session.wait()


def supervised(
    label: str, supervisor: list[str], state_dir: Path, seconds: float, poll: float
) -> tuple[str, Measured, list[str]]:
    """`supervisor` over a real session, measured; then over another one, for its imports."""
    unmarked = {k: v for k, v in os.environ.items() if k not in ("FLEET_DISPATCH", "FLEET_ATTEMPT")}

    def command(dispatch: str) -> list[str]:
        flags = ["--attempt=1", f"--state-dir={state_dir}", f"--poll-seconds={poll}", "--no-api-endpoints"]
        return [*supervisor, f"--dispatch={dispatch}", "--output-path=transcript", *flags]

    with real_session(state_dir, seconds) as dispatch:
        measured = measure(command(dispatch), unmarked, state_dir)
    with real_session(state_dir, seconds) as dispatch:
        modules = imported(command(dispatch), unmarked, state_dir)
    return label, measured, modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--session-seconds", type=float, default=3.0)
    parser.add_argument("--poll-seconds", type=float, default=0.2)
    args = parser.parse_args()
    python = sys.executable
    console_script = shutil.which("fleetdispatch", path=str(Path(python).parent))
    cli = (
        [console_script, "supervise"] if console_script else [python, "-m", "fleetdispatch.cli", "supervise"]
    )
    rows: list[tuple[str, Measured, list[str]]] = []
    with tempfile.TemporaryDirectory(prefix="supervise-memory-") as temporary:
        state_dir = Path(temporary)
        for label, code in (
            ("python", "pass"),
            ("import anyio", "import anyio"),
            ("import psutil", "import psutil"),
            ("import supervisor", "from fleetdispatch.session import supervisor"),
            ("  + psutil", "from fleetdispatch.session import supervisor; import psutil"),
            (
                "  + anyio.run",
                "from fleetdispatch.session import supervisor; import anyio; anyio.run(anyio.sleep, 0)",
            ),
        ):
            command = [python, "-c", code + WAIT_FOR_STDIN]
            environment = dict(os.environ)
            rows.append(
                (label, measure(command, environment, state_dir), imported(command, environment, state_dir))
            )
        for label, supervisor in (
            ("supervisor direct", [python, "-c", DIRECT]),
            ("fleetdispatch supervise", cli),
        ):
            rows.append(supervised(label, supervisor, state_dir, args.session_seconds, args.poll_seconds))
    print(f"{'':24}  {'VmHWM MiB':>9}  {'exit':>4}  {'seconds':>7}  heavy modules imported")
    for label, measured, modules in rows:
        forbidden = [m for m in modules if m in FORBIDDEN]
        shown = ", ".join(modules) or "none"
        if forbidden:
            shown += f"  (FORBIDDEN in the sidecar: {', '.join(forbidden)})"
        print(
            f"{label:24}  {measured.vm_hwm_kib / 1024:9.1f}  "
            f"{measured.code:4}  {measured.seconds:7.1f}  {shown}"
        )
    final = rows[-1][1]
    verdict = (
        "within"
        if final.vm_hwm_kib <= 25 * 1024 and not [m for m in rows[-1][2] if m in FORBIDDEN]
        else "NOT within"
    )
    print(f"fleetdispatch supervise: {final.vm_hwm_kib / 1024:.1f} MiB peak, {verdict} the 25 MiB budget")


if __name__ == "__main__":
    main()
