"""Test support: what kstatus says about an object, computed by the real library, as Flux and Helm do.

kstatus is the status library of sigs.k8s.io/cli-utils (`pkg/kstatus/status`): Flux's kustomize-controller
health checks (`wait: true`, `healthChecks`) and Helm 4's `--wait` (`watcher`, its default) wait on it.
`compute` asks `.tools/bin/kstatus`, the Go program in scripts/kstatus/ that `make tools` builds against
cli-utils v0.37.2 and that prints `status.Compute` for each object it reads. Flux and Helm 4.3.1 build the
fork github.com/fluxcd/cli-utils (Helm 4.3.1: v1.2.2), whose `pkg/kstatus/status` is the same code.

One kstatus process serves the whole test session: started by the first `compute`, it is sent one object
(or a list, `compute_all`) a line and answers one line per object; it ends when its standard input closes,
at exit or when the test process dies. Without the built tool, `needs_kstatus` skips a test (outside CI,
as `needs_kubectl` does) and `compute` fails saying how to build it.

kstatus has no Suspended status. What a waiting tool does with the statuses is not `status.Compute`, and is
written out here: `aggregate` is cli-utils' `aggregator.AggregateStatus` (pkg/kstatus/polling/aggregator),
`helm_wait_ends` Helm 4's `statusObserver` (pkg/kube/statuswait.go): the watcher stops once every resource
that is not Failed is Current, then reports the Failed ones as errors; anything InProgress keeps it waiting
until its timeout. Flux's kustomize-controller waits for every resource to be Current, or times out and
lists the others' statuses.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
KSTATUS = ROOT / ".tools" / "bin" / "kstatus"

IN_PROGRESS = "InProgress"
FAILED = "Failed"
CURRENT = "Current"
TERMINATING = "Terminating"
NOT_FOUND = "NotFound"
UNKNOWN = "Unknown"

# CI builds kstatus (`make test` runs `make tools`); elsewhere a missing kstatus skips, rather than fails.
needs_kstatus = pytest.mark.skipif(
    not KSTATUS.exists() and not os.environ.get("CI"),
    reason="kstatus not built: run `make tools` (builds sigs.k8s.io/cli-utils kstatus with Go 1.26+)",
)


@dataclass(frozen=True)
class Result:
    status: str
    message: str
    error: str = ""  # status.Compute's error (status is then Unknown)


class _Kstatus:
    """The one kstatus process, started on first use; requests are serialised."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None

    def _started(self) -> subprocess.Popen[str]:
        if self._process is None or self._process.poll() is not None:
            if not KSTATUS.exists():
                raise RuntimeError(f"{KSTATUS} is missing: run `make tools` (it builds kstatus with Go)")
            self._process = subprocess.Popen(
                [str(KSTATUS)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
            )
        return self._process

    def compute(self, objects: Sequence[Mapping[str, Any]]) -> list[Result]:
        if not objects:
            return []
        with self._lock:
            process = self._started()
            stdin: IO[str] | None = process.stdin
            stdout: IO[str] | None = process.stdout
            assert stdin is not None and stdout is not None
            # One JSON array: kstatus reads all of it before it answers, so neither side blocks the other.
            stdin.write(json.dumps(list(objects)) + "\n")
            stdin.flush()
            lines = [stdout.readline() for _ in objects]
            if not all(lines):
                raise RuntimeError(f"kstatus ended (exit status {process.wait()}): {self._stderr(process)}")
        answers = [json.loads(line) for line in lines]
        return [Result(a["status"], a["message"], a.get("error", "")) for a in answers]

    @staticmethod
    def _stderr(process: subprocess.Popen[str]) -> str:
        return process.stderr.read().strip() if process.stderr else ""

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()


_KSTATUS = _Kstatus()
atexit.register(_KSTATUS.close)


def compute(obj: Mapping[str, Any]) -> Result:
    """`status.Compute` over an object as the API server serves it (a dict of its JSON)."""
    return _KSTATUS.compute([obj])[0]


def compute_all(objects: Iterable[Mapping[str, Any]]) -> list[Result]:
    """`status.Compute` over each object, in order, in one request."""
    return _KSTATUS.compute(list(objects))


def aggregate(statuses: Iterable[str], desired: str = CURRENT) -> str:
    """`aggregator.AggregateStatus`: the desired status when all have it, else the first that blocks it."""
    seen = list(statuses)
    if not seen:
        return desired
    if any(s == FAILED for s in seen):
        return FAILED
    if any(s == UNKNOWN for s in seen):
        return UNKNOWN
    if all(s == desired for s in seen):
        return desired
    return IN_PROGRESS


def helm_wait_ends(statuses: Iterable[str]) -> tuple[bool, bool]:
    """Helm 4's status watcher: (whether it stops waiting now, whether it then reports success).

    Failed resources are left out of the aggregate (they need an intervention, so waiting on is pointless),
    and reported as errors once the others are Current.
    """
    seen = list(statuses)
    rest = [s for s in seen if s != FAILED]
    done = aggregate(rest) == CURRENT
    return done, done and len(rest) == len(seen)
