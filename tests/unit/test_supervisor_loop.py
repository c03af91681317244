"""The supervision loop with injected clocks and a scripted probe: no waiting, exact instants."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from fleetdispatch.session import protocol
from fleetdispatch.session.config import SupervisorConfig
from supervision import WALL_START, Beats, Clock, ScriptedProbe, scripted_supervisor


def config(tmp_path: Path, **values: Any) -> SupervisorConfig:
    defaults: dict[str, Any] = {
        "deadline_seconds": 10,
        "max_extension_seconds": 20,
        "idle_output_seconds": 0,
        "kill_grace_seconds": 3,
        "poll_seconds": 1,
        "state_dir": str(tmp_path),
        "dispatch": "ns/d",
        "attempt": "1",
    }
    return SupervisorConfig(**{**defaults, **values})


@pytest.mark.parametrize("step", [-3600.0, 3600.0], ids=["backwards", "forwards"])
def test_a_wall_clock_step_neither_extends_nor_kills(tmp_path: Path, step: float) -> None:
    clock = Clock()
    probe = ScriptedProbe(clock)
    published: list[int | None] = []

    def watch() -> None:
        if clock.now >= 104:
            clock.wall_step = step
        published.append(protocol.read_deadline(tmp_path))

    clock.on_sleep.append(watch)
    assert scripted_supervisor(config(tmp_path), clock, probe).run() == 0
    assert probe.signals[0] == (110.0, signal.SIGTERM)  # the monotonic deadline, exactly
    assert set(published) == {int(WALL_START + 10)}


def test_the_deadline_file_follows_every_extension(tmp_path: Path) -> None:
    # The original tool's fourth bug: the session saw only a static deadline. Here it is rewritten live.
    clock = Clock()
    probe = ScriptedProbe(clock, cpu_share=1.0)
    published: list[int | None] = []
    clock.on_sleep.append(lambda: published.append(protocol.read_deadline(tmp_path)))
    beats = Beats()
    events: list[dict[str, Any]] = []
    assert scripted_supervisor(config(tmp_path), clock, probe, heartbeat=beats, events=events).run() == 0
    moves = sorted({d for d in published if d is not None})
    assert moves[0] == int(WALL_START + 10) and moves[-1] == int(WALL_START + 30)
    assert len(moves) >= 15
    assert probe.signals[0] == (130.0, signal.SIGTERM)  # the cap, though the session never rested
    extended = [e for e in events if e["event"] == "extended"]
    assert len(extended) == len(moves) - 1 and extended[-1]["atCap"] is True
    assert beats.statuses[-1].deadline == WALL_START + 30
    assert beats.statuses[-1].activity_reason == "cpu"


def test_kill_follows_term_after_the_grace(tmp_path: Path) -> None:
    clock = Clock()
    probe = ScriptedProbe(clock, ignores_term=True)
    assert scripted_supervisor(config(tmp_path, kill_grace_seconds=3), clock, probe).run() == 0
    assert probe.signals == [(110.0, signal.SIGTERM), (113.0, signal.SIGKILL)]


def test_terminate_ends_the_loop_without_signalling(tmp_path: Path) -> None:
    clock = Clock()
    probe = ScriptedProbe(clock)
    events: list[dict[str, Any]] = []
    loop = scripted_supervisor(config(tmp_path), clock, probe, events=events)
    clock.on_sleep.append(lambda: loop.terminate() if clock.now >= 103 else None)
    assert loop.run() == 0
    assert probe.signals == [] and probe.alive
    assert clock.now < 110
    assert "terminated" in events[-1]["reason"]


def test_a_quiet_loop_logs_only_what_changes(tmp_path: Path) -> None:
    clock = Clock()
    probe = ScriptedProbe(clock)
    events: list[dict[str, Any]] = []
    assert scripted_supervisor(config(tmp_path), clock, probe, events=events).run() == 0
    assert [e["event"] for e in events] == ["start", "stop", "signalled", "exit"]


def test_the_final_figures_are_reported_on_every_exit_after_the_session_was_seen(tmp_path: Path) -> None:
    # The session ends on its own while busy: its last extended deadline is what the operator mirrors.
    clock = Clock()
    probe = ScriptedProbe(clock, cpu_share=1.0)
    clock.on_sleep.append(lambda: setattr(probe, "alive", clock.now < 115))
    report = tmp_path / "termination-log"
    assert scripted_supervisor(config(tmp_path, report_file=str(report)), clock, probe).run() == 0
    figures = json.loads(report.read_text())
    assert figures["activityReason"] == "cpu"
    assert figures["deadlineCap"] == protocol.format_time(WALL_START + 30)
    assert figures["deadline"] > protocol.format_time(WALL_START + 10)  # extended past the initial budget
    # Stopped at the deadline: reported too. Terminated (the kubelet's TERM) after the session was seen: too.
    for ending in ("stop", "terminate"):
        clock, report = Clock(), tmp_path / f"{ending}.log"
        probe = ScriptedProbe(clock)
        loop = scripted_supervisor(config(tmp_path, report_file=str(report)), clock, probe)
        if ending == "terminate":
            clock.on_sleep.append(
                lambda loop=loop, clock=clock: loop.terminate() if clock.now >= 103 else None
            )
        assert loop.run() == 0
        assert json.loads(report.read_text())["deadline"] == protocol.format_time(WALL_START + 10)


def test_in_the_pods_namespace_the_budget_counts_from_the_sessions_start(tmp_path: Path) -> None:
    # A supervisor (re)started 5 s into a running session, its deadline file gone (the session removed
    # it): the budget and the cap still count from the session's start, not from a fresh one.
    clock = Clock()
    probe = ScriptedProbe(clock, cpu_share=1.0)
    probe.age = 5.0
    events: list[dict[str, Any]] = []
    supervisor = scripted_supervisor(config(tmp_path, pid_namespace="pod"), clock, probe, events=events)
    assert supervisor.run() == 0
    assert probe.signals[0] == (125.0, signal.SIGTERM)  # 100 - 5 + 10 + 20: the cap, from the session's start
    assert "restarted" not in events[0]


def test_elsewhere_a_session_older_than_the_supervisor_gets_the_full_budget(tmp_path: Path) -> None:
    clock = Clock()
    probe = ScriptedProbe(clock)
    probe.age = 5.0
    assert scripted_supervisor(config(tmp_path), clock, probe).run() == 0
    assert probe.signals[0] == (110.0, signal.SIGTERM)
